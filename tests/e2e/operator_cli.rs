//! The operator commands, run as the real binary against a serving lease-sync:
//! `dead-letters list|show|replay|purge` and `queue stats`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use lease_sync::config::Role;
use lease_sync::dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterSummary};
use lease_sync::event::EventType;
use lease_sync::retry::DeadReason;
use lease_sync_sandbox::Fault;
use serde_json::Value;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(10);

/// What one run of the binary printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts exit `code`.
    fn exits(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Parses stdout as JSON.
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}:\n{}", self.stdout))
    }
}

/// Runs `lease-sync <args…>` off the async runtime, stdin not a terminal.
async fn lease_sync(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_lease-sync"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run lease-sync");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("join")
}

/// Redis, the sandbox OpenApp, lease-sync serving, and its config in a file for the CLI.
struct Env {
    _redis: RedisServer,
    openapp: FakeOpenApp,
    app: TestApp,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    async fn start() -> Self {
        let redis = RedisServer::start().await;
        let openapp = FakeOpenApp::start().await;
        let config = test_config(&redis.url(), &namespace(), &openapp.base_url);
        let app = TestApp::start(&config, Role::Serve).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lease-sync.toml");
        write_config(&config, &path);
        Self {
            _redis: redis,
            openapp,
            app,
            _dir: dir,
            config: path,
        }
    }

    /// Runs `lease-sync <args…> --config <the config>`.
    async fn cli(&self, args: &[&str]) -> Run {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.push("--config".into());
        args.push(self.config.display().to_string());
        lease_sync(args).await
    }

    /// Makes OpenApp answer `status` to the next `calls` calls, posts an event for `user`
    /// and waits until its delivery is a dead letter; returns the dead letter's id.
    async fn dead_letter(
        &self,
        event_type: &str,
        lease: &str,
        user: &str,
        status: u16,
        calls: usize,
    ) -> String {
        for _ in 0..calls {
            self.openapp.sandbox.push_fault(Fault::Status {
                status,
                retry_after: None,
            });
        }
        let reply = post_event(
            &self.app,
            &format!("evt-{lease}-{user}"),
            event_body(event_type, lease, &[user]),
        )
        .await;
        assert_eq!(reply.status, 202, "{:?}", reply.json);
        let dls = self.app.dead_letters();
        wait_until(
            &format!("the delivery to {user} to be given up"),
            LIMIT,
            || async {
                let page = dls.list(&DeadLetterFilter::default(), 0, 100).await.ok()?;
                page.items
                    .into_iter()
                    .find(|d| d.user_id == user)
                    .map(|d| d.id)
            },
        )
        .await
    }

    async fn dead_count(&self) -> u64 {
        self.app.queue().counts().await.expect("counts").dead
    }

    async fn is_dead(&self, id: &str) -> bool {
        self.app
            .dead_letters()
            .get(id)
            .await
            .expect("get")
            .is_some()
    }

    async fn wait_member(&self, user: &str) {
        wait_until(&format!("{user} to be a building user"), LIMIT, || async {
            self.openapp
                .sandbox
                .members(INTEGRATION)
                .contains_key(user)
                .then_some(())
        })
        .await;
    }
}

fn ids(items: &[DeadLetterSummary]) -> Vec<&str> {
    let mut ids: Vec<&str> = items.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    ids
}

fn sorted(mut ids: Vec<&str>) -> Vec<&str> {
    ids.sort_unstable();
    ids
}

/// `2026-11-22T10:15:00Z` for ms since the epoch.
fn rfc3339_seconds(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).expect("timestamp");
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .expect("format")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_prints_a_table_or_json_and_filters() {
    let env = Env::start().await;
    let signed = env
        .dead_letter("lease.signed", "L-1", "user-1", 400, 1)
        .await;
    let ended = env
        .dead_letter("lease.ended", "L-2", "user-2", 400, 1)
        .await;
    let exhausted = env
        .dead_letter("lease.signed", "L-3", "user-3", 500, 4)
        .await;

    let run = env.cli(&["dead-letters", "list"]).await;
    let table = run.ok();
    for needle in [
        "ID",
        "DEAD AT",
        "REASON",
        "SOURCE",
        "TYPE",
        "LEASE",
        "USER",
        "ATTEMPTS",
        "LAST ERROR",
    ] {
        assert!(table.contains(needle), "header {needle}:\n{table}");
    }
    for needle in [
        signed.as_str(),
        ended.as_str(),
        exhausted.as_str(),
        "permanent",
        "exhausted",
        "lease.ended",
        SOURCE,
        "L-2",
        "user-3",
        "400: ",
        "500: ",
    ] {
        assert!(table.contains(needle), "{needle}:\n{table}");
    }
    assert!(!table.contains("more match"), "{table}");

    let all: Vec<DeadLetterSummary> = env.cli(&["dead-letters", "list", "--json"]).await.json();
    assert_eq!(
        ids(&all),
        sorted(vec![signed.as_str(), ended.as_str(), exhausted.as_str()]),
        "{all:#?}"
    );
    for entry in &all {
        assert!(
            table.contains(&rfc3339_seconds(entry.dead_at)),
            "dead-at of {} in RFC 3339 UTC:\n{table}",
            entry.id
        );
    }
    let by_id = |id: &str| all.iter().find(|d| d.id == id).expect("listed");
    assert_eq!(by_id(&exhausted).attempts, 4);
    assert_eq!(by_id(&exhausted).reason, DeadReason::Exhausted);
    assert_eq!(by_id(&ended).event_type, Some(EventType::LeaseEnded));

    let only = |args: &'static [&'static str]| {
        let env = &env;
        async move {
            let mut full = vec!["dead-letters", "list", "--json"];
            full.extend_from_slice(args);
            env.cli(&full).await.json::<Vec<DeadLetterSummary>>()
        }
    };
    assert_eq!(
        ids(&only(&["--reason", "exhausted"]).await),
        [exhausted.as_str()]
    );
    assert_eq!(
        ids(&only(&["--reason", "permanent"]).await),
        sorted(vec![signed.as_str(), ended.as_str()])
    );
    assert_eq!(
        ids(&only(&["--type", "lease.ended"]).await),
        [ended.as_str()]
    );
    assert_eq!(
        ids(&only(&["--type", "lease.signed", "--reason", "permanent"]).await),
        [signed.as_str()]
    );
    assert_eq!(only(&["--source", SOURCE, "--since", "1h"]).await.len(), 3);
    assert!(only(&["--source", "other-pms"]).await.is_empty());

    let none = env
        .cli(&["dead-letters", "list", "--source", "other-pms"])
        .await;
    assert_eq!(none.ok().trim(), "no dead letters match");

    let page = env.cli(&["dead-letters", "list", "--limit", "2"]).await;
    assert!(
        page.ok().contains("2 shown; more match (use --limit)"),
        "{}",
        page.stdout
    );
    let page: Vec<DeadLetterSummary> = env
        .cli(&["dead-letters", "list", "--limit", "2", "--json"])
        .await
        .json();
    assert_eq!(page.len(), 2);

    let bad = env
        .cli(&["dead-letters", "list", "--reason", "bored"])
        .await;
    assert!(bad.exits(2).stderr.contains("bored"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_show_prints_one_entry_and_unknown_ids_exit_1() {
    let env = Env::start().await;
    let id = env
        .dead_letter("lease.signed", "L-4", "user-4", 400, 1)
        .await;
    let call = env.openapp.sandbox.calls().pop().expect("one call");

    let run = env.cli(&["dead-letters", "show", &id]).await;
    let text = run.ok();
    let role = role();
    for needle in [
        id.as_str(),
        "permanent",
        SOURCE,
        "evt-L-4-user-4",
        "lease.signed",
        "L-4",
        PROPERTY,
        "user-4",
        ORG,
        INTEGRATION,
        role.as_str(),
        "add",
        "\"property_id\": \"P-17\"",
        "attempt 1: dead",
        "400",
        "Injected fault",
        "sandbox_fault",
        call.request_id.as_str(),
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
    assert!(!text.contains(API_KEY), "no secret is printed");

    let entry: DeadLetter = env
        .cli(&["dead-letters", "show", &id, "--json"])
        .await
        .json();
    assert_eq!(entry.summary.id, id);
    assert_eq!(entry.summary.reason, DeadReason::Permanent);
    let lease_sync::queue::Job::Converge(job) = &entry.job else {
        panic!("a convergence: {:?}", entry.job)
    };
    assert_eq!(job.org_id, ORG);
    assert_eq!(entry.event["lease"]["id"], "L-4");
    assert_eq!(entry.attempt_log.len(), 1);
    assert_eq!(entry.attempt_log[0].status, Some(400));

    let unknown = env.cli(&["dead-letters", "show", "01NOSUCHDELIVERY"]).await;
    assert!(
        unknown
            .exits(1)
            .stderr
            .contains("no dead letter with id 01NOSUCHDELIVERY"),
        "{}",
        unknown.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_one_dead_letter_delivers_it_once_openapp_recovers() {
    let env = Env::start().await;
    // Two faults: the first gives the delivery up, the second fails the first replay too.
    env.openapp.sandbox.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    let id = env
        .dead_letter("lease.signed", "L-5", "user-5", 400, 1)
        .await;

    let first = env.cli(&["dead-letters", "replay", &id]).await;
    assert!(
        first
            .ok()
            .contains("replayed 1; skipped 0 (not a dead letter any more); not found 0"),
        "{}",
        first.stdout
    );
    let dls = env.app.dead_letters();
    wait_until("the replay to be given up again", LIMIT, || async {
        let entry = dls.get(&id).await.ok()??;
        (entry.summary.replays == 1).then_some(())
    })
    .await;
    let text = env.cli(&["dead-letters", "show", &id]).await;
    assert!(
        text.ok().contains("replayed at ") && text.stdout.contains(" by cli:"),
        "the replay marker is shown:\n{}",
        text.stdout
    );

    // OpenApp has recovered: the next replay delivers.
    let second = env.cli(&["dead-letters", "replay", &id]).await;
    assert!(second.ok().contains("replayed 1;"), "{}", second.stdout);
    env.wait_member("user-5").await;
    let counts = wait_drained(&env.app.queue(), LIMIT).await;
    assert_eq!((counts.dead, counts.done), (0, 1));

    let audit = dls.recent_audit(10).await.expect("audit");
    assert_eq!(audit.len(), 2, "{audit:#?}");
    for record in &audit {
        assert_eq!(record.action, "replay");
        assert_eq!(record.ids, [id.as_str()]);
        assert_eq!(record.filter, None);
        assert!(record.actor.starts_with("cli:"), "{}", record.actor);
    }

    // Not a dead letter any more, and an id that never existed: both exit 1, no audit.
    let again = env.cli(&["dead-letters", "replay", &id]).await;
    assert!(
        again.exits(1).stdout.contains("replayed 0;"),
        "{}",
        again.stdout
    );
    let unknown = env
        .cli(&["dead-letters", "replay", "01NOSUCHDELIVERY"])
        .await;
    assert!(
        unknown.exits(1).stdout.contains("not found 1")
            && unknown
                .stderr
                .contains("no dead letter with id 01NOSUCHDELIVERY"),
        "{}\n{}",
        unknown.stdout,
        unknown.stderr
    );
    assert_eq!(dls.recent_audit(10).await.expect("audit").len(), 2);
    assert_eq!(
        env.openapp.sandbox.members(INTEGRATION).len(),
        1,
        "delivered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_with_a_filter_and_a_dry_run() {
    let env = Env::start().await;
    let a = env
        .dead_letter("lease.signed", "L-6", "user-6a", 400, 1)
        .await;
    let b = env
        .dead_letter("lease.signed", "L-7", "user-6b", 400, 1)
        .await;
    let ended = env
        .dead_letter("lease.ended", "L-8", "user-6c", 400, 1)
        .await;
    let calls = env.openapp.sandbox.calls().len();

    let dry = env
        .cli(&[
            "dead-letters",
            "replay",
            "--all",
            "--type",
            "lease.signed",
            "--dry-run",
        ])
        .await;
    let out = dry.ok();
    assert!(
        out.contains(&a) && out.contains(&b) && !out.contains(&ended),
        "{out}"
    );
    assert!(out.contains("would replay 2"), "{out}");
    let by_id = env
        .cli(&["dead-letters", "replay", &ended, "--dry-run"])
        .await;
    assert!(by_id.ok().contains("would replay 1"), "{}", by_id.stdout);
    assert_eq!(env.dead_count().await, 3, "a dry run changes nothing");
    assert!(env.is_dead(&a).await && env.is_dead(&b).await);
    assert!(
        env.app
            .dead_letters()
            .recent_audit(10)
            .await
            .expect("audit")
            .is_empty(),
        "a dry run writes no audit record"
    );
    assert_eq!(env.openapp.sandbox.calls().len(), calls);

    let run = env
        .cli(&[
            "dead-letters",
            "replay",
            "--all",
            "--type",
            "lease.signed",
            "--rate",
            "50",
        ])
        .await;
    assert!(
        run.ok()
            .contains("replayed 2; skipped 0 (not a dead letter any more); not found 0"),
        "{}",
        run.stdout
    );
    env.wait_member("user-6a").await;
    env.wait_member("user-6b").await;
    assert!(
        env.is_dead(&ended).await,
        "the filter left lease.ended alone"
    );
    assert_eq!(env.dead_count().await, 1);

    let audit = env
        .app
        .dead_letters()
        .recent_audit(10)
        .await
        .expect("audit");
    assert_eq!(audit.len(), 1, "one record for the whole bulk replay");
    assert_eq!(audit[0].action, "replay");
    assert_eq!(
        sorted(audit[0].ids.iter().map(String::as_str).collect()),
        sorted(vec![a.as_str(), b.as_str()])
    );
    assert_eq!(
        audit[0].filter,
        Some(DeadLetterFilter {
            event_type: Some(EventType::LeaseSigned),
            ..DeadLetterFilter::default()
        })
    );

    // Ids and --all are exclusive, one of them is required, and filters need --all.
    for args in [
        vec!["dead-letters", "replay", ended.as_str(), "--all"],
        vec!["dead-letters", "replay"],
        vec![
            "dead-letters",
            "replay",
            ended.as_str(),
            "--reason",
            "permanent",
        ],
    ] {
        env.cli(&args).await.exits(2);
    }
    assert!(env.is_dead(&ended).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_id_and_purge_all_which_needs_yes() {
    let env = Env::start().await;
    let a = env
        .dead_letter("lease.signed", "L-9", "user-9a", 400, 1)
        .await;
    let b = env
        .dead_letter("lease.signed", "L-10", "user-9b", 400, 1)
        .await;
    let c = env
        .dead_letter("lease.ended", "L-11", "user-9c", 400, 1)
        .await;
    let dls = env.app.dead_letters();

    let one = env.cli(&["dead-letters", "purge", &a]).await;
    assert_eq!(one.ok().trim(), "purged 1");
    assert!(!env.is_dead(&a).await);
    let audit = dls.recent_audit(10).await.expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].action.as_str(), &audit[0].ids, &audit[0].filter),
        ("purge", &vec![a.clone()], &None)
    );
    let gone = env.cli(&["dead-letters", "purge", &a]).await;
    assert!(
        gone.exits(1)
            .stderr
            .contains(&format!("no dead letter with id {a}")),
        "{}",
        gone.stderr
    );

    let refused = env.cli(&["dead-letters", "purge", "--all"]).await;
    assert!(
        refused
            .exits(1)
            .stderr
            .contains("refusing to purge 2 dead letters without --yes"),
        "{}",
        refused.stderr
    );
    assert_eq!(env.dead_count().await, 2, "nothing purged without --yes");

    let ended = env
        .cli(&[
            "dead-letters",
            "purge",
            "--all",
            "--type",
            "lease.ended",
            "--yes",
        ])
        .await;
    assert_eq!(ended.ok().trim(), "purged 1");
    assert!(!env.is_dead(&c).await && env.is_dead(&b).await);

    let rest = env.cli(&["dead-letters", "purge", "--all", "--yes"]).await;
    assert_eq!(rest.ok().trim(), "purged 1");
    assert_eq!(env.dead_count().await, 0);
    let audit = dls.recent_audit(10).await.expect("audit");
    assert_eq!(audit.len(), 3, "{audit:#?}");
    assert_eq!(audit[0].ids, [b.as_str()]);
    assert_eq!(audit[0].filter, Some(DeadLetterFilter::default()));
    assert_eq!(audit[1].ids, [c.as_str()]);
    assert!(audit.iter().all(|r| r.action == "purge"));

    let empty = env.cli(&["dead-letters", "purge", "--all", "--yes"]).await;
    assert_eq!(empty.ok().trim(), "no dead letters match");
    assert_eq!(dls.recent_audit(10).await.expect("audit").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_prints_depths_and_lifetime_counters() {
    let env = Env::start().await;
    env.dead_letter("lease.signed", "L-12", "user-12a", 400, 1)
        .await;
    let reply = post_event(
        &env.app,
        "evt-ok",
        event_body("lease.signed", "L-13", &["user-12b"]),
    )
    .await;
    assert_eq!(reply.status, 202);
    env.wait_member("user-12b").await;
    wait_drained(&env.app.queue(), LIMIT).await;

    let run = env.cli(&["queue", "stats"]).await;
    let text = run.ok();
    let line = |label: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line:\n{text}"))
            .trim_start()[label.len()..]
            .trim()
            .to_owned()
    };
    assert_eq!(line("ready"), "0");
    assert_eq!(line("in flight"), "0");
    assert_eq!(line("dead letters"), "1");
    assert_eq!(line("oldest ready age"), "-");
    assert_eq!(line("delivered"), "1");
    assert_eq!(line("dead-lettered"), "1");
    assert_eq!(line("OpenApp 401/403"), "0");

    let json: Value = env.cli(&["queue", "stats", "--json"]).await.json();
    assert_eq!(json["dead"], 1, "{json}");
    assert_eq!(json["done"], 1, "{json}");
    assert_eq!(json["dead_lettered"], 1, "{json}");
    assert_eq!(json["ready"], 0, "{json}");
    assert_eq!(json["oldest_ready_age_secs"], Value::Null, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_one_clear_line_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let port = free_port();
    write_config(
        &test_config(
            &format!("redis://:hunter2@127.0.0.1:{port}"),
            "ns",
            "http://127.0.0.1:9/api/v1",
        ),
        &path,
    );
    let config = path.display().to_string();
    for args in [vec!["dead-letters", "list"], vec!["queue", "stats"]] {
        let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        full.extend(["--config".to_owned(), config.clone()]);
        let run = lease_sync(full).await;
        run.exits(1);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("cannot reach Redis at redis://127.0.0.1:{port}")),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"));
    }
}
