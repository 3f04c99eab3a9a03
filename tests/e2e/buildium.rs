//! Buildium end to end: the Buildium emulator posts signed webhooks to lease-sync, whose
//! workers read the leases back from the emulator's API, resolve tenants by email in the
//! OpenApp sandbox and make its building users match. Real HTTP both ways, real Redis.

use std::time::Duration;

use lease_sync::config::{
    BuildiumSettings, PropertySettings, Secret, Settings, SourceKind, SourceSettings,
};
use lease_sync_sandbox::NewUser;
use lease_sync_sandbox::buildium::{
    BuildiumOptions, BuildiumSandbox, LeaseUpdate, MoveOut, NewLease, NewTenant, TenantStatus,
};
use lease_sync_testkit::BuildiumServer;
use time::{Date, Duration as Days};

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);
/// The Buildium source's name: `POST /webhooks/buildium`.
const BUILDIUM: &str = "buildium";
/// The webhook signing key of the emulator and the source.
const SIGNING_KEY: &str = "buildium-signing-key-0123456789";
const CLIENT_ID: &str = "client-id-1";
const CLIENT_SECRET: &str = "client-secret-1";
/// The Buildium property mapped to the test integration.
const PROPERTY_ID: i32 = 23;

/// Redis, the OpenApp sandbox, the Buildium emulator posting to lease-sync, and `serve` with a
/// Buildium source for property 23 in New York.
struct Loop {
    _redis: RedisServer,
    openapp: FakeOpenApp,
    buildium: BuildiumSandbox,
    _buildium_server: BuildiumServer,
    app: TestApp,
}

async fn start() -> Loop {
    start_with(|_| {}).await
}

/// As [`start`], with `edit` applied to the settings after the Buildium source is added.
async fn start_with(edit: impl FnOnce(&mut Settings)) -> Loop {
    let buildium = BuildiumSandbox::new(BuildiumOptions {
        secret: SIGNING_KEY.into(),
        credentials: Some(lease_sync_sandbox::buildium::Credentials {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }),
        // Buildium's 1 min / 10 min / 1 h retries, a thousand times faster.
        retry_scale: 1000.0,
        ..BuildiumOptions::default()
    });
    let buildium_server = BuildiumServer::start(&buildium).await;
    let base_url = format!("http://{}", buildium_server.addr());
    let (redis, openapp, app) = serve_with(move |settings| {
        let mut property = PropertySettings::new(PROPERTY_ID.to_string(), ORG, INTEGRATION);
        property.timezone = "America/New_York".into();
        settings.sources.push(SourceSettings {
            kind: SourceKind::Buildium,
            secrets: vec![lease_sync::config::SourceSecret::plain(SIGNING_KEY)],
            buildium: Some(BuildiumSettings {
                base_url: base_url.parse().expect("url"),
                allow_insecure_http: true,
                client_id: CLIENT_ID.into(),
                client_secret: Some(Secret::new(CLIENT_SECRET)),
                ..BuildiumSettings::default()
            }),
            properties: vec![property],
            ..SourceSettings::named(BUILDIUM)
        });
        edit(settings);
    })
    .await;
    buildium.set_webhook_url(Some(app.webhook_url(BUILDIUM)));
    Loop {
        _redis: redis,
        openapp,
        buildium,
        _buildium_server: buildium_server,
        app,
    }
}

impl Loop {
    fn user(&self, name: &str, email: &str) -> String {
        self.openapp
            .sandbox
            .add_user(ORG, NewUser::new(name, email))
            .expect("add user")
            .id
    }

    fn present(&self, user: &str) -> bool {
        self.openapp.sandbox.members(INTEGRATION).contains_key(user)
    }

    async fn wait_presence(&self, user: &str, want: bool) {
        let what = format!("{user} to be {}", if want { "present" } else { "absent" });
        wait_until(&what, LIMIT, || async {
            (self.present(user) == want).then_some(())
        })
        .await;
    }

    /// Runs `lease-sync reconcile --source buildium` (a pull) with `extra` arguments.
    async fn reconcile(&self, extra: &[&str]) -> std::process::Output {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("c.toml");
        write_config(&self.app.settings, &config);
        let mut args: Vec<String> = ["reconcile", "--config"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(config.to_str().expect("utf-8").to_owned());
        args.extend(["--source", BUILDIUM].iter().map(|s| (*s).to_owned()));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        run_lease_sync(args).await
    }

    fn removals(&self) -> usize {
        self.openapp
            .sandbox
            .calls()
            .iter()
            .filter(|c| c.method == "DELETE")
            .count()
    }
}

/// Today in the property's time zone (New York), where Buildium's dates are: a move-out
/// "yesterday" by UTC's calendar is still today in New York for five hours after midnight UTC.
fn today() -> Date {
    let local = jiff::Timestamp::now()
        .in_tz("America/New_York")
        .expect("time zone database")
        .date();
    Date::from_calendar_date(
        i32::from(local.year()),
        time::Month::try_from(u8::try_from(local.month()).expect("month")).expect("month"),
        u8::try_from(local.day()).expect("day"),
    )
    .expect("a date")
}

/// A Fixed lease of property 23 that started 30 days ago and ends in a year.
fn lease(tenants: Vec<NewTenant>) -> NewLease {
    let mut lease = NewLease::new(
        PROPERTY_ID,
        7,
        today() - Days::days(30),
        Some(today() + Days::days(365)),
    );
    lease.tenants = tenants;
    lease
}

fn tenant(first: &str, email: &str) -> NewTenant {
    NewTenant {
        move_in_date: Some(today() - Days::days(30)),
        status: Some(TenantStatus::Current),
        ..NewTenant::new(first, "Resident", email)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_grants_its_tenants_and_never_its_cosigner() {
    let l = start().await;
    let ada = l.user("Ada Resident", "ada@example.com");
    let alan = l.user("Alan Resident", "alan@example.com");
    let guarantor = l.user("Grace Guarantor", "grace@example.com");
    let mut new = lease(vec![
        tenant("Ada", "ada@example.com"),
        tenant("Alan", "alan@example.com"),
    ]);
    new.cosigners = vec![NewTenant::new("Grace", "Guarantor", "grace@example.com")];
    l.buildium.create_lease(&new).expect("create lease");

    l.wait_presence(&ada, true).await;
    l.wait_presence(&alan, true).await;
    wait_drained(&l.app.queue(), LIMIT).await;
    assert!(!l.present(&guarantor), "a cosigner never gets access");
    // Every delivery was answered 2xx: nothing left for Buildium to retry.
    assert!(
        l.buildium.deliveries().iter().all(|d| matches!(
            d.state,
            lease_sync_sandbox::buildium::DeliveryState::Delivered
        )),
        "{:?}",
        l.buildium.deliveries()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_out_removes_that_tenant_only_and_a_renewal_removes_nobody() {
    let l = start().await;
    let ada = l.user("Ada Resident", "ada@example.com");
    let alan = l.user("Alan Resident", "alan@example.com");
    let lease_id = l
        .buildium
        .create_lease(&lease(vec![
            tenant("Ada", "ada@example.com"),
            tenant("Alan", "alan@example.com"),
        ]))
        .expect("create lease");
    l.wait_presence(&ada, true).await;
    l.wait_presence(&alan, true).await;
    wait_drained(&l.app.queue(), LIMIT).await;

    // A renewal: the same lease, a later end. Nobody is removed and re-added.
    l.buildium
        .update_lease(
            lease_id,
            &LeaseUpdate {
                lease_to_date: Some(today() + Days::days(730)),
                ..LeaseUpdate::default()
            },
        )
        .expect("renew");
    let version_before = l
        .app
        .queue()
        .resident(INTEGRATION, &ada)
        .await
        .expect("redis")
        .expect("state")
        .leases[&lease_id.to_string()]
        .occurred_at;
    wait_until("the renewal to be folded", LIMIT, || async {
        let state = l.app.queue().resident(INTEGRATION, &ada).await.ok()??;
        (state.leases[&lease_id.to_string()].occurred_at > version_before).then_some(())
    })
    .await;
    wait_drained(&l.app.queue(), LIMIT).await;
    assert_eq!(l.removals(), 0, "a renewal never removes");

    // Alan moved out yesterday: his access ended at the end of that day in New York.
    let tenant_id = l.buildium.lease(lease_id).expect("lease")["Tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| {
            let id = t["Id"].as_i64();
            l.buildium
                .tenant(i32::try_from(id.unwrap_or(0)).unwrap_or(0))
                .is_some_and(|tenant| tenant["Email"] == "alan@example.com")
        })
        .and_then(|t| t["Id"].as_i64())
        .expect("Alan's tenant id");
    let yesterday = today() - Days::days(1);
    let reads_before = l.buildium.reads().len();
    l.buildium
        .move_out(
            lease_id,
            &MoveOut {
                tenant_id: i32::try_from(tenant_id).expect("id"),
                move_out_date: yesterday,
                notice_given_date: None,
                tenant_status: Some(TenantStatus::MovedOut),
            },
        )
        .expect("move out");
    l.wait_presence(&alan, false).await;
    wait_drained(&l.app.queue(), LIMIT).await;
    assert!(l.present(&ada), "the co-tenant keeps the door");
    // Alan's email left the lease with him; the user he was resolved to is remembered, so
    // his record is not read from Buildium.
    let tenant_reads: Vec<_> = l
        .buildium
        .reads()
        .into_iter()
        .skip(reads_before)
        .filter(|r| r.path.contains("/tenants/"))
        .collect();
    assert!(tenant_reads.is_empty(), "{tenant_reads:?}");
    let state = l
        .app
        .queue()
        .resident(INTEGRATION, &alan)
        .await
        .expect("redis")
        .expect("state");
    let record = &state.leases[&lease_id.to_string()];
    let zone = lease_sync::access::PropertyZone::new("America/New_York").expect("zone");
    let end_of_yesterday = zone
        .end_of(
            jiff::civil::Date::new(
                i16::try_from(yesterday.year()).expect("year"),
                i8::try_from(u8::from(yesterday.month())).expect("month"),
                i8::try_from(yesterday.day()).expect("day"),
            )
            .expect("date"),
        )
        .expect("end");
    assert_eq!(record.ends_at, Some(end_of_yesterday), "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_removes_its_tenants() {
    let l = start().await;
    let ada = l.user("Ada Resident", "ada@example.com");
    let lease_id = l
        .buildium
        .create_lease(&lease(vec![tenant("Ada", "ada@example.com")]))
        .expect("create lease");
    l.wait_presence(&ada, true).await;
    l.buildium.delete_lease(lease_id).expect("delete");
    l.wait_presence(&ada, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_email_is_a_conflict_until_the_user_exists() {
    let l = start().await;
    let lease_id = l
        .buildium
        .create_lease(&lease(vec![tenant("Nobody", "nobody@example.com")]))
        .expect("create lease");
    let conflicts = wait_until("a conflict", LIMIT, || async {
        let c = l.app.queue().conflicts(Some(BUILDIUM)).await.ok()?;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(
        conflicts[0].reason,
        lease_sync::identity::ConflictReason::NoOpenappUser
    );
    assert_eq!(conflicts[0].lease_id, lease_id.to_string());
    assert_eq!(conflicts[0].email.as_deref(), Some("nobody@example.com"));

    // The user appears in OpenApp; the next change at Buildium resolves the conflict.
    let nobody = l.user("Nobody Resident", "nobody@example.com");
    l.buildium
        .update_lease(
            lease_id,
            &LeaseUpdate {
                lease_to_date: Some(today() + Days::days(400)),
                ..LeaseUpdate::default()
            },
        )
        .expect("update");
    l.wait_presence(&nobody, true).await;
    assert!(
        l.app
            .queue()
            .conflicts(Some(BUILDIUM))
            .await
            .expect("redis")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_unsigned_buildium_webhooks_get_401_and_other_events_are_ignored() {
    let l = start().await;
    let body = br#"{"EventName":"Lease.Updated","EventDateTime":"2026-12-01T10:00:00.0000000Z","AccountId":123456,"LeaseId":1001}"#.to_vec();
    let now = u64::try_from(now()).expect("after 1970");
    let timestamp = now.to_string();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("utf-8");
    let signature =
        lease_sync_sandbox::buildium::sign("not-the-signing-key-000000", now, &text(&body));
    let headers = vec![
        ("content-type", "application/json".to_owned()),
        ("buildium-webhook-timestamp", timestamp.clone()),
        ("buildium-webhook-signature", signature),
    ];
    let forged = l.app.post(BUILDIUM, &headers, body.clone()).await;
    assert_eq!(
        (forged.status, forged.code()),
        (401, "invalid_signature"),
        "{forged:?}"
    );
    let unsigned = l.app.post(BUILDIUM, &headers[..1], body).await;
    assert_eq!(
        (unsigned.status, unsigned.code()),
        (401, "missing_signature"),
        "{unsigned:?}"
    );

    // Authentic but not about leases: acknowledged, nothing queued.
    let rental = br#"{"EventName":"Rental.Updated","EventDateTime":"2026-12-01T10:00:00.0000000Z","AccountId":123456,"PropertyId":23}"#.to_vec();
    let signed = lease_sync_sandbox::buildium::sign(SIGNING_KEY, now, &text(&rental));
    let reply = l
        .app
        .post(
            BUILDIUM,
            &[
                ("content-type", "application/json".to_owned()),
                ("buildium-webhook-timestamp", timestamp.clone()),
                ("buildium-webhook-signature", signed),
            ],
            rental,
        )
        .await;
    assert_eq!(
        (reply.status, reply.json["status"].as_str()),
        (202, Some("ignored")),
        "{reply:?}"
    );
    // Authentic but not a Buildium event: 422.
    let junk = br#"{"hello":"world"}"#.to_vec();
    let signed = lease_sync_sandbox::buildium::sign(SIGNING_KEY, now, &text(&junk));
    let reply = l
        .app
        .post(
            BUILDIUM,
            &[
                ("content-type", "application/json".to_owned()),
                ("buildium-webhook-timestamp", timestamp),
                ("buildium-webhook-signature", signed),
            ],
            junk,
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (422, "invalid_event"),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_from_buildium_is_retried_and_the_lease_still_converges() {
    let l = start().await;
    let ada = l.user("Ada Resident", "ada@example.com");
    l.buildium
        .push_read_fault(lease_sync_sandbox::buildium::ReadFault::Status(429));
    l.buildium
        .create_lease(&lease(vec![tenant("Ada", "ada@example.com")]))
        .expect("create lease");
    l.wait_presence(&ada, true).await;
    assert!(
        l.buildium.reads().iter().any(|r| r.status == 429),
        "the emulator answered 429 once"
    );
}

/// Webhooks Buildium never delivered (dropped after its retries) are caught by a pull; ones
/// delivered twice or newest first converge to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_duplicated_or_reordered_webhooks_converge_after_a_pull() {
    use lease_sync_sandbox::buildium::{ReleaseOrder, WebhookFaults};

    let l = start().await;
    let ada = l.user("Ada Resident", "ada@example.com");
    let alan = l.user("Alan Resident", "alan@example.com");
    let grace = l.user("Grace Resident", "grace@example.com");

    // Every webhook of Ada's and Alan's leases is lost.
    l.buildium.set_webhook_faults(WebhookFaults {
        drop_rate: 1.0,
        ..WebhookFaults::default()
    });
    l.buildium
        .create_lease(&lease(vec![tenant("Ada", "ada@example.com")]))
        .expect("create lease");
    l.buildium
        .create_lease(&lease(vec![tenant("Alan", "alan@example.com")]))
        .expect("create lease");
    l.buildium.set_webhook_faults(WebhookFaults::default());

    // Grace's lease: every webhook twice, and held back then sent newest first.
    l.buildium.set_webhook_faults(WebhookFaults {
        duplicate_rate: 1.0,
        ..WebhookFaults::default()
    });
    l.buildium.hold_webhooks();
    let lease_id = l
        .buildium
        .create_lease(&lease(vec![tenant("Grace", "grace@example.com")]))
        .expect("create lease");
    l.buildium
        .update_lease(
            lease_id,
            &LeaseUpdate {
                lease_to_date: Some(today() + Days::days(500)),
                ..LeaseUpdate::default()
            },
        )
        .expect("renew");
    l.buildium.release_webhooks(ReleaseOrder::Reversed);
    l.buildium.set_webhook_faults(WebhookFaults::default());
    l.wait_presence(&grace, true).await;
    wait_drained(&l.app.queue(), LIMIT).await;
    assert!(
        !l.present(&ada) && !l.present(&alan),
        "their webhooks never came"
    );

    // The pull (what the schedule runs) reads every Active and Future lease.
    let dry = l.reconcile(&["--json"]).await;
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert_eq!(plan["counts"]["add"], 2, "{plan}");
    assert_eq!(plan["from"], "buildium:buildium");
    assert!(
        text(&dry.stderr).contains("read 3 lease(s) from Buildium"),
        "{}",
        text(&dry.stderr)
    );
    assert!(!l.present(&ada), "a dry run changes nothing");

    let applied = l.reconcile(&["--apply"]).await;
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    l.wait_presence(&ada, true).await;
    l.wait_presence(&alan, true).await;
    assert!(l.present(&grace));
    assert_eq!(l.removals(), 0);
}

/// With `[reconcile] every` on a Buildium source and no `from`, `serve` pulls on its own: the
/// first run reads every lease, the next ones what changed since and the leases of open
/// conflicts, and webhooks that never came stop mattering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pulls_buildium_on_its_schedule() {
    use lease_sync_sandbox::buildium::WebhookFaults;

    let l = start_with(|settings| {
        settings.reconcile.every = Some("1s".into());
        settings.reconcile.source = Some(BUILDIUM.into());
        settings.reconcile.apply = true;
    })
    .await;
    let ada = l.user("Ada Resident", "ada@example.com");
    let alan = l.user("Alan Resident", "alan@example.com");
    l.buildium.set_webhook_faults(WebhookFaults {
        drop_rate: 1.0,
        ..WebhookFaults::default()
    });
    l.buildium
        .create_lease(&lease(vec![tenant("Ada", "ada@example.com")]))
        .expect("create lease");
    // The first run is a full pull.
    l.wait_presence(&ada, true).await;

    // Later runs read only the leases updated since the last pull began.
    l.buildium
        .create_lease(&lease(vec![tenant("Alan", "alan@example.com")]))
        .expect("create lease");
    l.wait_presence(&alan, true).await;
    let pulls = l
        .buildium
        .reads()
        .iter()
        .filter(|r| {
            r.path == "/v1/leases"
                && r.query
                    .as_deref()
                    .is_some_and(|q| q.contains("lastupdatedfrom"))
        })
        .count();
    assert!(pulls > 0, "an incremental pull asked for what changed");

    // Grace has no OpenApp user yet: a conflict. Once she has one, a later run reads her
    // lease again although nothing changed at Buildium.
    l.buildium
        .create_lease(&lease(vec![tenant("Grace", "grace@example.com")]))
        .expect("create lease");
    wait_until("Grace's conflict", LIMIT, || async {
        let conflicts = l.app.queue().conflicts(Some(BUILDIUM)).await.ok()?;
        (!conflicts.is_empty()).then_some(())
    })
    .await;
    let grace = l.user("Grace Resident", "grace@example.com");
    l.wait_presence(&grace, true).await;
    wait_until("the conflict to clear", LIMIT, || async {
        let conflicts = l.app.queue().conflicts(Some(BUILDIUM)).await.ok()?;
        conflicts.is_empty().then_some(())
    })
    .await;
    assert_eq!(l.removals(), 0);
}

/// A tenant's email is cached as an OpenApp user; when OpenApp no longer knows that user
/// (deleted, then registered again under a new id), the next add (here from a pull) answers
/// 404: lease-sync drops the cached mapping, reads the lease again and gives the door to the
/// user OpenApp knows now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_user_openapp_no_longer_knows_is_resolved_again() {
    let l = start().await;
    let ada = l.user("Ada Resident", "ada@example.com");
    l.buildium
        .create_lease(&lease(vec![tenant("Ada", "ada@example.com")]))
        .expect("create lease");
    l.wait_presence(&ada, true).await;
    wait_drained(&l.app.queue(), LIMIT).await;

    // Ada's account is deleted (and her door with it) and she signs up again: a new user id
    // for the same email. lease-sync still believes her cached id; the next pull adds it.
    assert!(l.openapp.sandbox.delete_user(&ada));
    let ada_again = l.user("Ada Resident", "ada@example.com");
    let pulled = l.reconcile(&["--apply"]).await;
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    l.wait_presence(&ada_again, true).await;
    assert!(!l.present(&ada));

    // The add for the old id failed for good, saying why.
    let dead = l
        .app
        .dead_letters()
        .list(&Default::default(), 0, 100)
        .await
        .expect("list");
    let entry = dead
        .items
        .iter()
        .find(|e| e.user_id == ada)
        .expect("a dead letter for the deleted user");
    let full = l
        .app
        .dead_letters()
        .get(&entry.id)
        .await
        .expect("redis")
        .expect("entry");
    let last = full.attempt_log.last().expect("an attempt");
    assert_eq!(last.status, Some(404));
    assert_eq!(
        last.error_code.as_deref(),
        Some("user_not_found"),
        "{last:?}"
    );
}

/// A lease moved to a unit of another mapped building: its tenant leaves the old building's
/// integration and joins the new one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moved_to_another_mapped_building_changes_integration() {
    const OTHER_PROPERTY: i32 = 24;
    const OTHER_INTEGRATION: &str = "01HINT0000000000000000000C";
    let l = start_with(|settings| {
        let source = settings
            .sources
            .iter_mut()
            .find(|s| s.name == BUILDIUM)
            .expect("the Buildium source");
        source.properties.push(PropertySettings::new(
            OTHER_PROPERTY.to_string(),
            ORG,
            OTHER_INTEGRATION,
        ));
    })
    .await;
    // The other building exists in OpenApp, with a resident lease-sync does not manage.
    l.openapp.sandbox.add_member(
        ORG,
        OTHER_INTEGRATION,
        "user-neighbour",
        &format!("virtual_access:integration:{OTHER_INTEGRATION}:resident"),
    );
    let ada = l.user("Ada Resident", "ada@example.com");
    let lease_id = l
        .buildium
        .create_lease(&lease(vec![tenant("Ada", "ada@example.com")]))
        .expect("create lease");
    l.wait_presence(&ada, true).await;

    l.buildium
        .update_lease(
            lease_id,
            &LeaseUpdate {
                property_id: Some(OTHER_PROPERTY),
                unit_id: Some(9),
                ..LeaseUpdate::default()
            },
        )
        .expect("move the lease");
    wait_until("Ada to be in the other building", LIMIT, || async {
        l.openapp
            .sandbox
            .members(OTHER_INTEGRATION)
            .contains_key(&ada)
            .then_some(())
    })
    .await;
    l.wait_presence(&ada, false).await;
    assert!(
        l.openapp
            .sandbox
            .members(OTHER_INTEGRATION)
            .contains_key("user-neighbour")
    );
}

/// Refreshes waiting together share their reads: a burst of 20 new leases (40 webhooks, a
/// `Lease.Created` and a `LeaseTenant.Created` each) arriving faster than the account's read
/// rate is read with a few lists of the leases changed since, not a read per webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_is_read_in_batches_not_one_read_per_webhook() {
    use lease_sync_sandbox::buildium::ReleaseOrder;

    // 2 reads/s: the burst outruns the rate at once, whatever the machine's speed.
    let l = start_with(|s| {
        s.worker.concurrency = std::num::NonZeroUsize::new(16).expect("16");
        let source = s.sources.last_mut().expect("source");
        source
            .buildium
            .as_mut()
            .expect("buildium")
            .rate_limit_per_sec = 2;
    })
    .await;
    let users: Vec<String> = (0..20)
        .map(|i| l.user(&format!("Resident {i}"), &format!("r{i}@example.com")))
        .collect();
    l.buildium.hold_webhooks();
    for i in 0..20 {
        l.buildium
            .create_lease(&lease(vec![tenant("R", &format!("r{i}@example.com"))]))
            .expect("create lease");
    }
    let reads_before = l.buildium.reads().len();
    let released = l.buildium.release_webhooks(ReleaseOrder::Emitted);
    assert_eq!(
        released, 40,
        "a Lease.Created and a LeaseTenant.Created per lease"
    );
    for user in &users {
        l.wait_presence(user, true).await;
    }
    wait_drained(&l.app.queue(), LIMIT).await;
    let reads: Vec<_> = l.buildium.reads().into_iter().skip(reads_before).collect();
    let described: Vec<String> = reads
        .iter()
        .map(|r| format!("{} {}", r.path, r.query.as_deref().unwrap_or("")))
        .collect();
    // One read per webhook would be 40 (20 s at this rate); lists serve many at once.
    assert!(
        reads.len() <= 10,
        "{} reads for 40 webhooks: {described:#?}",
        reads.len()
    );
    assert!(
        reads.iter().any(|r| r
            .query
            .as_deref()
            .is_some_and(|q| q.contains("lastupdatedfrom"))),
        "the leases were listed: {described:#?}"
    );
    assert!(reads.iter().all(|r| r.status == 200), "{described:#?}");
    // The two refreshes of each new lease fold it at the same moment; its tenant's email is
    // still searched for once.
    let searches = l
        .openapp
        .sandbox
        .calls()
        .iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/users/search"))
        .count();
    assert_eq!(searches, 20, "one OpenApp user search per new tenant");
}

/// Refreshes queued long ago — retried after a Buildium outage — are still read together:
/// the list reaches back to the oldest of them, at most one page per lease it looks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_retried_after_an_outage_are_read_in_batches() {
    use lease_sync::queue::{EnqueueLimits, Job, RefreshJob};
    use lease_sync::sources::buildium::webhook::Refresh;
    use lease_sync_sandbox::buildium::WebhookFaults;

    let l = start_with(|s| {
        s.worker.concurrency = std::num::NonZeroUsize::new(16).expect("16");
        let source = s.sources.last_mut().expect("source");
        source
            .buildium
            .as_mut()
            .expect("buildium")
            .rate_limit_per_sec = 2;
    })
    .await;
    let users: Vec<String> = (0..12)
        .map(|i| l.user(&format!("Resident {i}"), &format!("o{i}@example.com")))
        .collect();
    // Buildium's webhooks were lost while lease-sync could not read; what it has are the
    // refreshes it queued twenty minutes ago, now due again.
    l.buildium.set_webhook_faults(WebhookFaults {
        drop_rate: 1.0,
        ..WebhookFaults::default()
    });
    let mut jobs = Vec::new();
    for i in 0..12 {
        let lease_id = l
            .buildium
            .create_lease(&lease(vec![tenant("O", &format!("o{i}@example.com"))]))
            .expect("create lease");
        let mut job = RefreshJob::new(
            BUILDIUM,
            &format!("outage-{i}"),
            Refresh::Lease {
                lease_id: i64::from(lease_id),
            },
            None,
        );
        job.cued_at_ms = job.cued_at_ms.map(|ms| ms - 20 * 60 * 1000);
        jobs.push(Job::Refresh(job));
    }
    let reads_before = l.buildium.reads().len();
    let limits = EnqueueLimits {
        dedupe_ttl: Duration::from_secs(60),
        max_clock_skew: Duration::from_secs(300),
        timeout: Duration::from_secs(5),
    };
    l.app
        .queue()
        .enqueue_jobs(BUILDIUM, "outage", &serde_json::json!({}), &jobs, limits)
        .await
        .expect("enqueue");
    for user in &users {
        l.wait_presence(user, true).await;
    }
    let reads: Vec<_> = l.buildium.reads().into_iter().skip(reads_before).collect();
    let described: Vec<String> = reads
        .iter()
        .map(|r| format!("{} {}", r.path, r.query.as_deref().unwrap_or("")))
        .collect();
    assert!(
        reads.len() <= 6,
        "{} reads for 12 refreshes: {described:#?}",
        reads.len()
    );
}
