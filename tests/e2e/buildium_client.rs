//! The Buildium API client against the Buildium emulator over real HTTP, and the request rate
//! every worker process shares through a real Redis: reads with the API key, deletions read
//! as `None`, pagination with `X-Total-Count` and filters, 429 and 401 classified for the
//! retry policy, and two "processes" (separate Redis connections and limiter handles on one
//! key) staying under Buildium's 10 requests per second together.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lease_sync::config::Secret;
use lease_sync::queue::connect;
use lease_sync::queue::rate_limit::{Permit, RateLimit, RateLimitError, RateLimiter};
use lease_sync::queue::{JobQueue, Keys};
use lease_sync::sources::buildium::client::{
    BuildiumClient, BuildiumClientOptions, BuildiumError, LeaseQuery, LeaseStatus,
    RATE_LIMIT_PER_SECOND, RATE_LIMITED_RETRY,
};
use lease_sync_sandbox::buildium::{NewLease, NewTenant, ReadFault};
use time::macros::date;

use crate::support::*;

/// A limiter handle of its own "process": its own Redis connection, the shared key.
fn process_limiter(redis: &RedisServer, namespace: &str, limit: RateLimit) -> RateLimiter {
    let settings = test_config(&redis.url(), namespace, "http://127.0.0.1:9/api/v1");
    let conn = connect(&settings.redis).expect("redis");
    RateLimiter::new(conn, &Keys::new(namespace), "buildium", limit)
}

#[tokio::test]
async fn reads_a_lease_and_a_tenant_with_the_api_key() {
    let buildium = FakeBuildium::start(0).await;
    let mut new = NewLease::new(17, 4, date!(2024 - 01 - 01), Some(date!(2099 - 12 - 31)))
        .with_tenant(NewTenant::new("Ada", "Lovelace", "ada@example.com"))
        .with_tenant(NewTenant::new("Alan", "Turing", "alan@example.com"));
    new.lease_status = Some(BuildiumLeaseStatus::Active);
    let id = i64::from(buildium.sandbox.create_lease(&new).expect("lease"));
    let client = buildium.client();

    let lease = client.get_lease(id).await.expect("read").expect("exists");
    assert_eq!((lease.id, lease.property_id), (id, 17));
    assert_eq!(lease.lease_status.as_deref(), Some("Active"));
    let emails: BTreeSet<_> = lease
        .current_tenants
        .iter()
        .filter_map(|t| t.email.clone())
        .collect();
    assert_eq!(
        emails,
        BTreeSet::from(["ada@example.com".to_owned(), "alan@example.com".to_owned()])
    );
    assert_eq!(lease.tenants.len(), 2);

    let tenant_id = lease.tenants[0].id;
    let tenant = client
        .get_tenant(tenant_id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(tenant.id, tenant_id);
    assert_eq!(tenant.leases.iter().map(|l| l.id).collect::<Vec<_>>(), [id]);

    let reads = buildium.sandbox.reads();
    assert_eq!(
        reads
            .iter()
            .map(|r| (r.path.clone(), r.status))
            .collect::<Vec<_>>(),
        [
            (format!("/v1/leases/{id}"), 200),
            (format!("/v1/leases/tenants/{tenant_id}"), 200)
        ]
    );
    assert!(
        reads
            .iter()
            .all(|r| r.client_id.as_deref() == Some(BUILDIUM_CLIENT_ID))
    );
}

#[tokio::test]
async fn wrong_credentials_are_a_retryable_auth_failure_that_never_shows_the_secret() {
    let buildium = FakeBuildium::start(0).await;
    let id = buildium.lease(17, 1, BuildiumLeaseStatus::Active);
    let wrong_secret = "not-the-secret-but-secret-looking";
    for client in [
        buildium.client_with(BUILDIUM_CLIENT_ID, wrong_secret),
        buildium.client_with("someone-else", BUILDIUM_CLIENT_SECRET),
    ] {
        let err = client.get_lease(id).await.expect_err("refused");
        assert_eq!(err.status(), Some(401), "{err}");
        assert!(err.is_auth_failure() && err.is_retryable(), "{err:?}");
        assert_eq!(err.error_code(), Some("Unauthorized"));
        let shown = format!("{err} {err:?}");
        for secret in [wrong_secret, BUILDIUM_CLIENT_SECRET] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(!shown.contains(&buildium.base_url), "{shown}");
    }
    let statuses: Vec<u16> = buildium.sandbox.reads().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401]);
}

#[tokio::test]
async fn a_deleted_lease_or_unknown_tenant_reads_as_none_but_a_foreign_404_is_an_error() {
    let buildium = FakeBuildium::start(0).await;
    let id = buildium.lease(17, 1, BuildiumLeaseStatus::Active);
    let client = buildium.client();
    assert!(client.get_lease(id).await.expect("read").is_some());
    buildium
        .sandbox
        .delete_lease(i32::try_from(id).expect("i32"))
        .expect("deleted");
    assert_eq!(client.get_lease(id).await, Ok(None));
    assert_eq!(client.get_tenant(999_999).await, Ok(None));

    assert_eq!(client.verify_access().await, Ok(0));

    // A host that is not Buildium (the OpenApp sandbox): its 404 is no deletion.
    let openapp = FakeOpenApp::start().await;
    let elsewhere = BuildiumClient::new(BuildiumClientOptions {
        base_url: openapp.base_url.parse().expect("url"),
        allow_insecure_http: true,
        ..BuildiumClientOptions::new(BUILDIUM_CLIENT_ID, Secret::new(BUILDIUM_CLIENT_SECRET))
    })
    .expect("client");
    let err = elsewhere.get_lease(id).await.expect_err("not a deletion");
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(!err.is_retryable());

    // A wrong path under Buildium's host: Buildium answers its own 404 for any path, so a
    // read cannot tell; the access check can, as the lease list always exists.
    let wrong_path = BuildiumClient::new(BuildiumClientOptions {
        base_url: format!("{}/api", buildium.base_url).parse().expect("url"),
        allow_insecure_http: true,
        ..BuildiumClientOptions::new(BUILDIUM_CLIENT_ID, Secret::new(BUILDIUM_CLIENT_SECRET))
    })
    .expect("client");
    let err = wrong_path.verify_access().await.expect_err("no lease list");
    assert_eq!(err.status(), Some(404), "{err}");
}

#[tokio::test]
async fn lists_leases_page_by_page_with_filters_and_the_total() {
    let buildium = FakeBuildium::start(0).await;
    let mut wanted = Vec::new();
    for unit in 1..=5 {
        wanted.push(buildium.lease(17, unit, BuildiumLeaseStatus::Active));
    }
    wanted.push(buildium.lease(17, 6, BuildiumLeaseStatus::Future));
    // Neither listed: another property, a past lease.
    buildium.lease(23, 7, BuildiumLeaseStatus::Active);
    buildium.lease(17, 8, BuildiumLeaseStatus::Past);
    let client = buildium.client();

    let query = LeaseQuery {
        statuses: vec![LeaseStatus::Active, LeaseStatus::Future],
        property_ids: vec![17],
        updated_from: Some(time::OffsetDateTime::now_utc() - time::Duration::days(1)),
        page_size: Some(4),
    };
    let mut pages = client.list_leases(query);
    let mut seen = Vec::new();
    let mut progress = Vec::new();
    while let Some(page) = pages.next_page().await.expect("page") {
        assert_eq!(page.total, 6);
        assert!(page.invalid.is_empty(), "{:?}", page.invalid);
        assert_eq!(page.offset, seen.len() as u64);
        seen.extend(page.leases.iter().map(|l| l.id));
        progress.push(pages.progress().to_string());
    }
    assert!(pages.is_done());
    assert_eq!(seen, wanted);
    assert_eq!(
        progress,
        ["4 of 6 leases (1 pages)", "6 of 6 leases (2 pages)"]
    );
    // The filters, repeated as Buildium wants them, and the pages by offset.
    let queries: Vec<String> = buildium
        .sandbox
        .reads()
        .iter()
        .map(|r| r.query.clone().unwrap_or_default())
        .collect();
    assert_eq!(queries.len(), 2);
    for (query, offset) in queries.iter().zip([0, 4]) {
        for part in [
            "leasestatuses=Active",
            "leasestatuses=Future",
            "propertyids=17",
            "lastupdatedfrom=",
            "limit=4",
            &format!("offset={offset}"),
        ] {
            assert!(query.contains(part), "{part} not in {query}");
        }
    }

    // Nothing updated since tomorrow: one empty read ends the list.
    let mut none = client.list_leases(LeaseQuery {
        updated_from: Some(time::OffsetDateTime::now_utc() + time::Duration::days(1)),
        ..LeaseQuery::default()
    });
    assert_eq!(none.next_page().await, Ok(None));
    assert_eq!(none.progress().total, Some(0));
    // Everything, in one page of the default size.
    let mut all = client.list_leases(LeaseQuery::default());
    let page = all.next_page().await.expect("page").expect("leases");
    assert_eq!((page.leases.len(), page.total), (8, 8));
    assert_eq!(all.next_page().await, Ok(None));
}

#[tokio::test]
async fn a_429_from_buildium_is_retryable_after_a_short_wait() {
    // Buildium's own limit, one read a second here, met by a client without the limiter.
    let buildium = FakeBuildium::start(1).await;
    let id = buildium.lease(17, 1, BuildiumLeaseStatus::Active);
    let client = buildium.client();
    let mut refused = None;
    for _ in 0..50 {
        if let Err(e) = client.get_lease(id).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("reads back to back go over one a second");
    assert_eq!(err.status(), Some(429), "{err}");
    assert!(err.is_retryable() && err.is_rate_limited() && !err.is_auth_failure());
    assert_eq!(err.error_code(), Some("TooManyRequests"));
    // Buildium sends no Retry-After: a short default.
    assert_eq!(err.retry_after(), Some(RATE_LIMITED_RETRY));
    assert!(buildium.sandbox.reads().iter().any(|r| r.status == 429));

    // A scripted 503 is retryable too, without a wait of its own.
    buildium.sandbox.set_rate_limit(0);
    buildium.sandbox.push_read_fault(ReadFault::Status(503));
    let err = client.get_lease(id).await.expect_err("503");
    assert_eq!((err.status(), err.is_retryable()), (Some(503), true));
    assert_eq!(err.retry_after(), None);
}

/// Every `window` holds at most `max` of `times` (µs); `times` sorted.
fn most_in_any_window(times: &[i64], window: Duration) -> usize {
    let window = i64::try_from(window.as_micros()).expect("µs");
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < window)
                .count()
        })
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_limiters_share_one_rate_through_redis() {
    let redis = RedisServer::start().await;
    let namespace = namespace();
    let limit = RateLimit::per_second(RATE_LIMIT_PER_SECOND);
    let first = process_limiter(&redis, &namespace, limit);
    let second = process_limiter(&redis, &namespace, limit);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for limiter in [first, second] {
        for _ in 0..4 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let mut permits: Vec<Permit> = Vec::new();
                for _ in 0..5 {
                    permits.push(limiter.acquire().await.expect("slot"));
                }
                permits
            }));
        }
    }
    let mut granted = Vec::new();
    for task in tasks {
        granted.extend(task.await.expect("task").iter().map(|p| p.granted_at_us));
    }
    let elapsed = started.elapsed();
    granted.sort_unstable();
    assert_eq!(granted.len(), 40);
    // The limiter's own decisions, on Redis's clock: never more than the limit in a window
    // (which is a second plus the transit margin, so also never in any second).
    assert_eq!(most_in_any_window(&granted, limit.window), 10);
    assert!(most_in_any_window(&granted, Duration::from_secs(1)) <= 10);
    // 40 slots at 10 a window: the last group waits three windows after the first.
    let span = Duration::from_micros(u64::try_from(granted[39] - granted[0]).expect("sorted"));
    assert!(span >= limit.window * 3, "{span:?}");
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");

    // The key is the namespace's, and goes away by itself once idle.
    let mut conn =
        connect(&test_config(&redis.url(), &namespace, "http://127.0.0.1:9").redis).expect("redis");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(Keys::new(&namespace).rate_limit("buildium"))
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 0, "{ttl}");
}

#[tokio::test]
async fn a_limiter_gives_up_at_once_when_the_next_slot_is_beyond_its_wait() {
    let redis = RedisServer::start().await;
    let queue: JobQueue = queue_on(&redis);
    let limit = RateLimit {
        max_requests: std::num::NonZeroU32::MIN,
        window: Duration::from_secs(60),
    };
    let limiter = queue
        .rate_limiter("buildium", limit)
        .with_max_wait(Duration::from_secs(1));
    limiter.acquire().await.expect("the first slot");
    match limiter.acquire().await {
        Err(RateLimitError::Saturated(wait)) => assert_eq!(wait, Duration::from_secs(1)),
        other => panic!("expected saturation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_in_two_processes_stay_under_buildiums_rate_together() {
    let redis = RedisServer::start().await;
    // Buildium's limit, enforced by the emulator: a read over 10 in any second gets 429.
    let buildium = FakeBuildium::start(RATE_LIMIT_PER_SECOND).await;
    let id = buildium.lease(17, 1, BuildiumLeaseStatus::Active);
    let namespace = namespace();
    let limit = RateLimit::per_second(RATE_LIMIT_PER_SECOND);
    let clients = [
        buildium
            .client()
            .with_rate_limiter(process_limiter(&redis, &namespace, limit)),
        buildium
            .client()
            .with_rate_limiter(process_limiter(&redis, &namespace, limit)),
    ];

    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..4 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    let lease = client.get_lease(id).await.expect("no 429");
                    assert_eq!(lease.map(|l| l.id), Some(id));
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = started.elapsed();
    // All 40 answered: the emulator, counting over a sliding second, never saw more than 10.
    let reads = buildium.sandbox.reads();
    assert_eq!(reads.len(), 40);
    assert!(reads.iter().all(|r| r.status == 200), "{reads:?}");
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn without_redis_nothing_is_sent_and_the_error_is_retryable() {
    let buildium = FakeBuildium::start(0).await;
    let id = buildium.lease(17, 1, BuildiumLeaseStatus::Active);
    // Nothing listens on port 1.
    let settings = test_config("redis://127.0.0.1:1", &namespace(), "http://127.0.0.1:9");
    let limiter = RateLimiter::new(
        connect(&settings.redis).expect("lazy"),
        &Keys::new(&settings.redis.namespace),
        "buildium",
        RateLimit::per_second(10),
    );
    let client = buildium.client().with_rate_limiter(limiter);
    let err = client.get_lease(id).await.expect_err("no slot");
    assert!(matches!(err, BuildiumError::RateLimiter(_)), "{err:?}");
    assert!(err.is_retryable() && err.status().is_none());
    assert!(buildium.sandbox.reads().is_empty());
}
