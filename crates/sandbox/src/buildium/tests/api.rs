//! The `/v1` reads.

use super::*;

/// Ids of a page of leases.
fn ids(answer: &Answer) -> Vec<i64> {
    answer
        .json
        .as_array()
        .expect("array")
        .iter()
        .map(|lease| lease["Id"].as_i64().expect("Id"))
        .collect()
}

fn total(answer: &Answer) -> String {
    answer
        .headers
        .get("x-total-count")
        .expect("X-Total-Count")
        .to_str()
        .expect("ASCII")
        .to_owned()
}

fn no_limit() -> BuildiumOptions {
    BuildiumOptions {
        rate_limit: 0,
        ..options()
    }
}

fn error_shape(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.json);
    assert_eq!(answer.json["ErrorCode"], code, "{}", answer.json);
    assert!(answer.json["UserMessage"].is_string(), "{}", answer.json);
    assert!(answer.json["Errors"].is_array(), "{}", answer.json);
}

#[tokio::test(start_paused = true)]
async fn lease_reads_answer_buildium_fields() {
    let sandbox = scripted(no_limit(), &ScriptedPoster::answering([]));
    let mut lease = lease_in(42, 4201);
    lease.unit_number = Some("4B".into());
    lease
        .cosigners
        .push(NewTenant::new("Gary", "Guarantor", "gary@example.com"));
    lease.tenants.push(NewTenant {
        email: None,
        ..NewTenant::new("No", "Email", "")
    });
    let lease_id = sandbox.create_lease(&lease).expect("created");

    let answer = call(&sandbox, read(&format!("/v1/leases/{lease_id}"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let lease = &answer.json;
    assert_eq!(lease["Id"], lease_id);
    assert_eq!(lease["PropertyId"], 42);
    assert_eq!(lease["UnitId"], 4201);
    assert_eq!(lease["UnitNumber"], "4B");
    assert_eq!(lease["LeaseFromDate"], "2024-01-01");
    assert_eq!(lease["LeaseToDate"], "2099-12-31");
    assert_eq!(lease["LeaseType"], "Fixed");
    assert_eq!(lease["LeaseStatus"], "Active");
    assert_eq!(lease["AutomaticallyMoveOutTenants"], false);
    assert_eq!(lease["CurrentNumberOfOccupants"], 2);
    let alice = &lease["CurrentTenants"][0];
    assert_eq!(alice["FirstName"], "Alice");
    assert_eq!(alice["LastName"], "Smith");
    assert_eq!(alice["Email"], "alice@example.com");
    assert_eq!(lease["CurrentTenants"][1]["Email"], Value::Null);
    assert_eq!(lease["Tenants"][0]["Id"], alice["Id"]);
    assert_eq!(lease["Tenants"][0]["Status"], "Current");
    assert_eq!(lease["Tenants"][0]["MoveInDate"], "2024-01-01");
    // Cosigners are a separate list, never tenants.
    assert_eq!(lease["Cosigners"][0]["FirstName"], "Gary");
    assert_eq!(lease["Tenants"].as_array().expect("array").len(), 2);
    assert_eq!(lease["MoveOutData"], serde_json::json!([]));
    for field in ["CreatedDateTime", "LastUpdatedDateTime"] {
        let text = lease[field].as_str().expect(field);
        assert!(
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{field}: {text}"
        );
    }

    // The tenant read lists the tenant's leases.
    let tenant_id = alice["Id"].as_i64().expect("id");
    let tenant = call(&sandbox, read(&format!("/v1/leases/tenants/{tenant_id}"))).await;
    assert_eq!(tenant.status, StatusCode::OK);
    assert_eq!(tenant.json["Email"], "alice@example.com");
    assert_eq!(tenant.json["Leases"][0]["Id"], lease_id);
}

#[tokio::test(start_paused = true)]
async fn unknown_ids_answer_404_with_buildium_errors() {
    let sandbox = scripted(no_limit(), &ScriptedPoster::answering([]));
    let lease_id = sandbox.create_lease(&lease_in(1, 11)).expect("created");
    for uri in [
        "/v1/leases/999999".to_owned(),
        "/v1/leases/not-a-number".to_owned(),
        "/v1/leases/tenants/424242".to_owned(),
        // A lease id is not a tenant id.
        format!("/v1/leases/tenants/{lease_id}"),
    ] {
        let answer = call(&sandbox, read(&uri)).await;
        error_shape(&answer, StatusCode::NOT_FOUND, "NotFound");
    }
    let unknown = call(&sandbox, read("/v1/rentals")).await;
    error_shape(&unknown, StatusCode::NOT_FOUND, "NotFound");
}

#[tokio::test(start_paused = true)]
async fn reads_need_both_credentials() {
    let sandbox = scripted(no_limit(), &ScriptedPoster::answering([]));
    let without = Request::get("/v1/leases")
        .body(Body::empty())
        .expect("request");
    error_shape(
        &call(&sandbox, without).await,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
    );
    let id_only = Request::get("/v1/leases")
        .header("x-buildium-client-id", CLIENT_ID)
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        call(&sandbox, id_only).await.status,
        StatusCode::UNAUTHORIZED
    );
    let wrong = Request::get("/v1/leases")
        .header("x-buildium-client-id", CLIENT_ID)
        .header("x-buildium-client-secret", "wrong")
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&sandbox, wrong).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&sandbox, read("/v1/leases")).await.status,
        StatusCode::OK
    );

    // Without configured credentials any non-empty pair passes.
    let open = scripted(
        BuildiumOptions {
            credentials: None,
            ..no_limit()
        },
        &ScriptedPoster::answering([]),
    );
    let any = Request::get("/v1/leases")
        .header("x-buildium-client-id", "x")
        .header("x-buildium-client-secret", "y")
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&open, any).await.status, StatusCode::OK);

    // Reads are recorded, without the secret.
    let reads = sandbox.reads();
    assert_eq!(reads.len(), 4);
    assert_eq!(reads[0].status, 401);
    assert_eq!(reads[3].client_id.as_deref(), Some(CLIENT_ID));
    assert!(!format!("{reads:?}").contains(CLIENT_SECRET));
}

#[tokio::test(start_paused = true)]
async fn reads_above_the_rate_limit_get_429_until_the_second_passes() {
    let sandbox = scripted(
        BuildiumOptions {
            rate_limit: 3,
            ..options()
        },
        &ScriptedPoster::answering([]),
    );
    for _ in 0..3 {
        assert_eq!(
            call(&sandbox, read("/v1/leases")).await.status,
            StatusCode::OK
        );
    }
    let limited = call(&sandbox, read("/v1/leases")).await;
    error_shape(&limited, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
    // Buildium documents no Retry-After.
    assert!(limited.headers.get("retry-after").is_none());
    // Refused reads do not count: after the window slides, three more pass.
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(
        call(&sandbox, read("/v1/leases")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    for _ in 0..3 {
        assert_eq!(
            call(&sandbox, read("/v1/leases")).await.status,
            StatusCode::OK
        );
    }
    // The control API is not limited.
    let control = Request::get("/_sandbox/leases")
        .body(Body::empty())
        .expect("request");
    assert_eq!(call(&sandbox, control).await.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_list_paginates_with_x_total_count() {
    let sandbox = scripted(no_limit(), &ScriptedPoster::answering([]));
    let created: Vec<i64> = (0..5)
        .map(|n| i64::from(sandbox.create_lease(&lease_in(1, 10 + n)).expect("created")))
        .collect();

    let all = call(&sandbox, read("/v1/leases")).await;
    assert_eq!(ids(&all), created);
    assert_eq!(total(&all), "5");

    let page = call(&sandbox, read("/v1/leases?limit=2&offset=1")).await;
    assert_eq!(ids(&page), created[1..3]);
    assert_eq!(total(&page), "5");

    let past_the_end = call(&sandbox, read("/v1/leases?offset=10")).await;
    assert!(ids(&past_the_end).is_empty());
    assert_eq!(total(&past_the_end), "5");

    // Above 1000 is lowered to 1000, not refused.
    let big = call(&sandbox, read("/v1/leases?limit=5000")).await;
    assert_eq!(ids(&big).len(), 5);

    for bad in [
        "limit=0",
        "limit=x",
        "offset=-1",
        "leasestatuses=Gone",
        "orderby=Rent",
    ] {
        let answer = call(&sandbox, read(&format!("/v1/leases?{bad}"))).await;
        error_shape(&answer, StatusCode::BAD_REQUEST, "BadRequest");
        assert!(answer.json["Errors"][0]["Key"].is_string(), "{bad}");
    }
    // Parameter names are case-sensitive: `Limit` is not `limit`, so it is ignored.
    let ignored = call(&sandbox, read("/v1/leases?Limit=1")).await;
    assert_eq!(ids(&ignored).len(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_list_filters_and_sorts() {
    let sandbox = scripted(no_limit(), &ScriptedPoster::answering([]));
    let today = today();
    let active = sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let future = sandbox
        .create_lease(&NewLease::new(
            2,
            21,
            today.next_day().expect("tomorrow"),
            None,
        ))
        .expect("created");
    let past = sandbox
        .create_lease(&NewLease::new(
            1,
            12,
            date!(2020 - 01 - 01),
            Some(date!(2020 - 12 - 31)),
        ))
        .expect("created");
    assert_eq!(
        sandbox.lease(future).expect("lease")["LeaseStatus"],
        "Future"
    );
    assert_eq!(sandbox.lease(past).expect("lease")["LeaseStatus"], "Past");

    let current = call(
        &sandbox,
        read("/v1/leases?leasestatuses=Active&leasestatuses=Future"),
    )
    .await;
    assert_eq!(ids(&current), [i64::from(active), i64::from(future)]);

    let property = call(&sandbox, read("/v1/leases?propertyids=2&propertyids=3")).await;
    assert_eq!(ids(&property), [i64::from(future)]);

    // lastupdatedfrom: only what changed at or after the instant.
    let stamp = sandbox.lease(past).expect("lease")["LastUpdatedDateTime"]
        .as_str()
        .expect("text")
        .to_owned();
    sandbox
        .update_lease(
            active,
            &LeaseUpdate {
                lease_to_date: Some(date!(2100 - 01 - 01)),
                ..LeaseUpdate::default()
            },
        )
        .expect("renewed");
    let encoded: String = form_urlencoded::byte_serialize(stamp.as_bytes()).collect();
    let recent = call(
        &sandbox,
        read(&format!("/v1/leases?lastupdatedfrom={encoded}")),
    )
    .await;
    assert_eq!(ids(&recent), [i64::from(active), i64::from(past)]);
    // The documented second-resolution form parses too.
    let by_second = call(
        &sandbox,
        read("/v1/leases?lastupdatedfrom=2000-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(total(&by_second), "3");

    let newest_first = call(
        &sandbox,
        read("/v1/leases?orderby=LastUpdatedDateTime%20desc,Id%20asc"),
    )
    .await;
    assert_eq!(
        ids(&newest_first),
        [i64::from(active), i64::from(past), i64::from(future)]
    );
    let by_property = call(&sandbox, read("/v1/leases?orderby=propertyid%20desc")).await;
    assert_eq!(
        ids(&by_property),
        [i64::from(future), i64::from(active), i64::from(past)]
    );
}

#[tokio::test(start_paused = true)]
async fn read_faults_answer_before_anything_else() {
    let sandbox = scripted(no_limit(), &ScriptedPoster::answering([]));
    sandbox.push_read_fault(ReadFault::Status(503));
    sandbox.push_read_fault(ReadFault::Status(429));
    // Even an unauthenticated read gets the fault.
    let unauthenticated = Request::get("/v1/leases")
        .body(Body::empty())
        .expect("request");
    error_shape(
        &call(&sandbox, unauthenticated).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
    );
    error_shape(
        &call(&sandbox, read("/v1/leases")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
    );
    assert_eq!(
        call(&sandbox, read("/v1/leases")).await.status,
        StatusCode::OK
    );

    sandbox.set_read_faults(ReadFaults {
        status: Some(500),
        rate: 1.0,
    });
    error_shape(
        &call(&sandbox, read("/v1/leases")).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
    );

    // A scripted delay answers normally, later.
    sandbox.set_read_faults(ReadFaults::default());
    sandbox.push_read_fault(ReadFault::Delay(Duration::from_secs(3)));
    let started = tokio::time::Instant::now();
    assert_eq!(
        call(&sandbox, read("/v1/leases")).await.status,
        StatusCode::OK
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn query_strings_over_4096_characters_get_500() {
    let sandbox = scripted(no_limit(), &ScriptedPoster::answering([]));
    let long = format!("/v1/leases?unitnumber={}", "x".repeat(4100));
    error_shape(
        &call(&sandbox, read(&long)).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerError",
    );
}
