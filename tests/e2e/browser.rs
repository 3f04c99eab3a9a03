//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`; `scripts/ensure-chromium.sh` installs them) through the
//! flows operators use — sign in with the keyboard, filter dead letters, replay one, pause and
//! resume an integration, find a resident's history.
//!
//! With `CONSOLE_SCREENSHOTS=<dir>` the test also saves a screenshot of each page there; the
//! ones in `docs/console/` were made with `scripts/console-screenshots.sh`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use lease_sync_sandbox::Fault;
use serde_json::json;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver ({e}); run scripts/ensure-chromium.sh (apt-get install chromium chromium-driver)")
            });
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_until("chromedriver to answer", LIMIT, || async {
            let reply = reqwest::Client::new()
                .get(&status)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            reply.status().is_success().then_some(())
        })
        .await;
        Self { child, url }
    }

    /// A headless Chromium session, 1280×900.
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "args": [
                    "--headless=new",
                    // CI runs as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--lang=en-US",
                ]
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Saves a screenshot named `name` when `CONSOLE_SCREENSHOTS` names a directory.
async fn screenshot(browser: &Client, name: &str) {
    let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// Waits (bounded) until the page's `h1` reads `expected`: a click that navigates returns
/// before the next page is there.
async fn expect_heading(browser: &Client, expected: &str) {
    wait_until(&format!("the page headed `{expected}`"), LIMIT, || async {
        let h1 = browser.find(Locator::Css("h1")).await.ok()?;
        (h1.text().await.ok()? == expected).then_some(())
    })
    .await;
}

/// Waits (bounded) until the page's text contains `needle`.
async fn expect_text(browser: &Client, needle: &str) {
    wait_until(&format!("the page to say `{needle}`"), LIMIT, || async {
        let body = browser.find(Locator::Css("body")).await.ok()?;
        body.text().await.ok()?.contains(needle).then_some(())
    })
    .await;
}

/// Waits (bounded) until the address contains `needle`.
async fn expect_url(browser: &Client, needle: &str) {
    wait_until(
        &format!("the address to contain `{needle}`"),
        LIMIT,
        || async {
            let url = browser.current_url().await.ok()?;
            url.as_str().contains(needle).then_some(())
        },
    )
    .await;
}

/// The page's text (what a person reads).
async fn text(browser: &Client) -> String {
    browser
        .find(Locator::Css("body"))
        .await
        .expect("body")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_filters_and_replays_dead_letters_pauses_a_building_and_reads_a_history()
 {
    let (_redis, openapp, app) = serve().await;
    // A dead letter (OpenApp refuses the call for good) and a delivered resident.
    openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    let reply = post_event(
        &app,
        "evt-b1",
        event_body("lease.signed", "L-B1", &["user-b1"]),
    )
    .await;
    assert_eq!(reply.status, 202);
    wait_until("the dead letter", LIMIT, || async {
        (app.queue().counts().await.ok()?.dead == 1).then_some(())
    })
    .await;
    let reply = post_event(
        &app,
        "evt-b2",
        event_body("lease.signed", "L-B2", &["user-b2"]),
    )
    .await;
    assert_eq!(reply.status, 202);
    wait_drained(&app.queue(), LIMIT).await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let base = format!("http://{}", app.admin_addr.expect("admin listens"));

    // Sign in with the keyboard only: the token field has the focus, Enter submits.
    browser
        .goto(&format!("{base}/console"))
        .await
        .expect("open");
    expect_heading(&browser, "Sign in").await;
    screenshot(&browser, "sign-in").await;
    let focused = browser.active_element().await.expect("focus");
    assert_eq!(
        focused.attr("id").await.expect("id").as_deref(),
        Some("token")
    );
    let label = browser
        .find(Locator::Css("label[for=token]"))
        .await
        .expect("a label for the token field");
    assert_eq!(label.text().await.expect("label"), "Admin token");
    focused
        .send_keys(&format!("{ADMIN_TOKEN}{}", char::from(Key::Enter)))
        .await
        .expect("type the token");
    expect_heading(&browser, "Overview").await;
    let overview = text(&browser).await;
    assert!(overview.contains("Signed in as"), "{overview}");
    assert!(overview.contains(SOURCE), "{overview}");
    screenshot(&browser, "overview").await;
    // The first Tab reaches the skip link, whose target is the content.
    let body = browser.find(Locator::Css("body")).await.expect("body");
    body.send_keys(&char::from(Key::Tab).to_string())
        .await
        .expect("tab");
    let first = browser.active_element().await.expect("focus");
    assert_eq!(first.text().await.expect("text"), "Skip to content");

    // Dead letters: filter by reason with the form, open the one found, replay it.
    browser
        .find(Locator::LinkText("Dead letters"))
        .await
        .expect("nav link")
        .click()
        .await
        .expect("click");
    expect_heading(&browser, "Dead letters").await;
    browser
        .find(Locator::Css("#f-reason"))
        .await
        .expect("reason filter")
        .select_by_value("permanent")
        .await
        .expect("choose permanent");
    browser
        .find(Locator::Css("#f-since"))
        .await
        .expect("since filter")
        .send_keys("1h")
        .await
        .expect("type 1h");
    browser
        .find(Locator::XPath("//button[text()='Apply filter']"))
        .await
        .expect("apply")
        .click()
        .await
        .expect("click");
    expect_url(&browser, "reason=permanent").await;
    expect_heading(&browser, "Dead letters").await;
    let rows = browser
        .find_all(Locator::Css("tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    screenshot(&browser, "dead-letters").await;
    rows[0]
        .find(Locator::Css("a"))
        .await
        .expect("the entry's link")
        .click()
        .await
        .expect("open it");
    expect_heading(&browser, "Dead letter").await;
    assert!(text(&browser).await.contains("Attempt timeline"));
    screenshot(&browser, "dead-letter").await;
    browser
        .find(Locator::XPath("//button[text()='Replay']"))
        .await
        .expect("replay button")
        .click()
        .await
        .expect("replay");
    expect_text(&browser, "Dead letter replayed").await;
    wait_until("the replayed add to be delivered", LIMIT, || async {
        let posts = openapp
            .sandbox
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.user_id.as_deref() == Some("user-b1"))
            .count();
        (posts == 2).then_some(())
    })
    .await;

    // Integrations: pause, see it held, resume.
    browser
        .find(Locator::LinkText("Integrations"))
        .await
        .expect("nav link")
        .click()
        .await
        .expect("click");
    expect_heading(&browser, "Integrations").await;
    browser
        .find(Locator::Css(&format!(
            "button[aria-label='Pause {INTEGRATION}']"
        )))
        .await
        .expect("pause button")
        .click()
        .await
        .expect("pause");
    expect_text(&browser, "Integration paused").await;
    assert_eq!(
        app.queue()
            .counts()
            .await
            .expect("redis")
            .paused_integrations,
        1
    );
    screenshot(&browser, "integrations").await;
    browser
        .find(Locator::Css(&format!(
            "button[aria-label='Resume {INTEGRATION}']"
        )))
        .await
        .expect("resume button")
        .click()
        .await
        .expect("resume");
    expect_text(&browser, "Integration resumed").await;
    assert_eq!(
        app.queue()
            .counts()
            .await
            .expect("redis")
            .paused_integrations,
        0
    );

    // Residents: find one by lease id, open their history.
    browser
        .find(Locator::LinkText("Residents"))
        .await
        .expect("nav link")
        .click()
        .await
        .expect("click");
    browser
        .find(Locator::Css("#r-by"))
        .await
        .expect("search kind")
        .select_by_value("lease")
        .await
        .expect("by lease");
    browser
        .find(Locator::Css("#r-q"))
        .await
        .expect("search field")
        .send_keys(&format!("L-B2{}", char::from(Key::Enter)))
        .await
        .expect("search");
    browser
        .wait()
        .at_most(LIMIT)
        .for_element(Locator::LinkText("user-b2"))
        .await
        .expect("the resident found")
        .click()
        .await
        .expect("open");
    expect_heading(&browser, &format!("Resident user-b2 in {INTEGRATION}")).await;
    let page = text(&browser).await;
    for needle in [
        "present (a building user)",
        "lease L-B2 of acme-pms grants access",
        "POST answered 201",
        "integration paused by",
        "integration resumed by",
    ] {
        assert!(page.contains(needle), "{needle} missing:\n{page}");
    }
    screenshot(&browser, "resident").await;

    browser
        .find(Locator::LinkText("Conflicts"))
        .await
        .expect("nav link")
        .click()
        .await
        .expect("click");
    expect_heading(&browser, "Conflicts").await;
    screenshot(&browser, "conflicts").await;

    // Sign out.
    browser
        .find(Locator::XPath("//button[text()='Sign out']"))
        .await
        .expect("sign out")
        .click()
        .await
        .expect("click");
    expect_heading(&browser, "Sign in").await;
    browser.close().await.expect("close");
}
