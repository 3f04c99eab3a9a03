//! The `/_sandbox` control API.

use serde_json::json;

use super::*;

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn delete(uri: &str) -> Request<Body> {
    Request::delete(uri).body(Body::empty()).expect("request")
}

#[tokio::test(start_paused = true)]
async fn a_lease_goes_through_its_life_over_http() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(options(), &poster);
    let created = call(
        &sandbox,
        control(
            "POST",
            "/_sandbox/leases",
            &json!({
                "PropertyId": 5,
                "UnitId": 501,
                "UnitNumber": "501",
                "LeaseFromDate": "2024-03-01",
                "LeaseToDate": "2099-02-28",
                "LeaseType": "Fixed",
                "Tenants": [
                    { "FirstName": "Ann", "LastName": "Lee", "Email": "ann@example.com" },
                    { "FirstName": "Ben", "LastName": "Lee", "Email": "ben@example.com", "MoveInDate": "2024-03-15" }
                ],
                "Cosigners": [{ "FirstName": "Cy", "LastName": "Lee", "Email": "cy@example.com" }]
            }),
        ),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    let lease_id = created.json["Id"].as_i64().expect("Id");
    let ann = created.json["Tenants"][0]["Id"].as_i64().expect("Id");
    let ben = created.json["Tenants"][1]["Id"].as_i64().expect("Id");
    assert_eq!(created.json["Tenants"][1]["MoveInDate"], "2024-03-15");
    assert_eq!(created.json["LeaseStatus"], "Active");
    let lease_uri = format!("/_sandbox/leases/{lease_id}");

    // Renewal: the same lease, a later end.
    let renewed = call(
        &sandbox,
        control("PATCH", &lease_uri, &json!({ "LeaseToDate": "2100-02-28" })),
    )
    .await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.json);
    assert_eq!(renewed.json["Id"], lease_id);
    assert_eq!(renewed.json["LeaseToDate"], "2100-02-28");
    assert!(
        renewed.json["LastUpdatedDateTime"].as_str() > created.json["LastUpdatedDateTime"].as_str()
    );

    // Ben gives notice and leaves in the past: moved out.
    let moved = call(
        &sandbox,
        control(
            "POST",
            &format!("{lease_uri}/moveouts"),
            &json!({ "TenantId": ben, "MoveOutDate": "2024-06-30", "NoticeGivenDate": "2024-05-31" }),
        ),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.json);
    assert_eq!(
        moved.json["MoveOutData"],
        json!([{ "TenantId": ben, "MoveOutDate": "2024-06-30", "NoticeGivenDate": "2024-05-31" }])
    );
    assert_eq!(moved.json["Tenants"][1]["Status"], "MovedOut");
    assert_eq!(
        moved.json["CurrentTenants"]
            .as_array()
            .expect("array")
            .len(),
        1
    );

    // Ann gives notice for a date far ahead: still current.
    let notice = call(
        &sandbox,
        control(
            "POST",
            &format!("{lease_uri}/moveouts"),
            &json!({ "TenantId": ann, "MoveOutDate": "2100-01-31" }),
        ),
    )
    .await;
    assert_eq!(notice.json["Tenants"][0]["Status"], "Current");
    assert_eq!(
        notice.json["MoveOutData"][1]["NoticeGivenDate"],
        date_format_text(today())
    );

    // A new tenant joins, then is taken off again.
    let added = call(
        &sandbox,
        control(
            "POST",
            &format!("{lease_uri}/tenants"),
            &json!({ "FirstName": "Dee", "LastName": "Lee", "Email": "dee@example.com" }),
        ),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.json);
    let dee = added.json["Tenants"][2]["Id"].as_i64().expect("Id");
    assert_eq!(
        added.json["Tenants"][2]["MoveInDate"],
        date_format_text(today())
    );

    let email = call(
        &sandbox,
        control(
            "PATCH",
            &format!("/_sandbox/tenants/{dee}"),
            &json!({ "Email": "dee@new.example.com" }),
        ),
    )
    .await;
    assert_eq!(email.status, StatusCode::OK, "{}", email.json);
    assert_eq!(email.json["Email"], "dee@new.example.com");
    assert_eq!(email.json["Leases"][0]["Id"], lease_id);

    let removed = call(&sandbox, delete(&format!("{lease_uri}/tenants/{dee}"))).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.json);
    assert_eq!(removed.json["Tenants"].as_array().expect("array").len(), 2);
    // Dee was on no other lease: gone.
    assert!(sandbox.tenant(i32::try_from(dee).expect("i32")).is_none());

    let gone = call(&sandbox, delete(&lease_uri)).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let after = call(&sandbox, read(&format!("/v1/leases/{lease_id}"))).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);

    let deliveries = sandbox
        .wait_for_deliveries(14, GUARD)
        .await
        .expect("settled");
    assert_eq!(
        event_names(&deliveries),
        [
            "Lease.Created",
            "LeaseTenant.Created",
            "LeaseTenant.Created",
            "Lease.Updated",
            "Lease.MoveOut.Created",
            "Lease.Updated",
            "Lease.MoveOut.Created",
            "Lease.Updated",
            "LeaseTenant.Created",
            "Lease.Updated",
            "LeaseTenant.Updated",
            "LeaseTenant.Deleted",
            "Lease.Updated",
            "Lease.Deleted",
        ][..]
    );
    let recorded = call(&sandbox, get("/_sandbox/deliveries")).await;
    assert_eq!(recorded.json.as_array().expect("array").len(), 14);
    assert_eq!(recorded.json[0]["event"]["EventName"], "Lease.Created");
    assert_eq!(recorded.json[0]["state"], "delivered");
    assert_eq!(recorded.json[0]["attempts"][0]["outcome"], "status");
    assert_eq!(recorded.json[0]["attempts"][0]["status"], 200);
}

fn date_format_text(date: Date) -> String {
    crate::buildium::model::date_format::text(date)
}

#[tokio::test(start_paused = true)]
async fn status_changes_carry_the_tenants_along() {
    let sandbox = scripted(options(), &ScriptedPoster::answering([]));
    let tomorrow = today().next_day().expect("tomorrow");
    let lease_id = sandbox
        .create_lease(
            &NewLease::new(1, 11, tomorrow, None).with_tenant(NewTenant::new(
                "Fay",
                "Future",
                "fay@example.com",
            )),
        )
        .expect("created");
    let lease = sandbox.lease(lease_id).expect("lease");
    assert_eq!(lease["LeaseStatus"], "Future");
    assert_eq!(lease["Tenants"][0]["Status"], "Future");
    // Future tenants are the lease's current tenants (not moved out).
    assert_eq!(lease["CurrentTenants"][0]["FirstName"], "Fay");

    // Dates alone bring the status they imply: starting yesterday, the lease is active.
    let yesterday = today().previous_day().expect("yesterday");
    sandbox
        .update_lease(
            lease_id,
            &LeaseUpdate {
                lease_from_date: Some(yesterday),
                ..LeaseUpdate::default()
            },
        )
        .expect("moved");
    let lease = sandbox.lease(lease_id).expect("lease");
    assert_eq!(lease["LeaseStatus"], "Active");
    assert_eq!(lease["Tenants"][0]["Status"], "Current");
    // An explicit status wins over the dates.
    let held_back = call(
        &sandbox,
        control(
            "PATCH",
            &format!("/_sandbox/leases/{lease_id}"),
            &json!({ "LeaseStatus": "Future", "LeaseToDate": "2100-01-01" }),
        ),
    )
    .await;
    assert_eq!(held_back.json["LeaseStatus"], "Future");

    for (status, tenant) in [("Active", "Current"), ("Past", "MovedOut")] {
        let answer = call(
            &sandbox,
            control(
                "PATCH",
                &format!("/_sandbox/leases/{lease_id}"),
                &json!({ "LeaseStatus": status }),
            ),
        )
        .await;
        assert_eq!(answer.json["LeaseStatus"], status);
        assert_eq!(answer.json["Tenants"][0]["Status"], tenant);
    }
    assert_eq!(
        sandbox.lease(lease_id).expect("lease")["CurrentTenants"],
        json!([])
    );
}

#[tokio::test(start_paused = true)]
async fn an_existing_tenant_can_join_another_lease() {
    let sandbox = scripted(options(), &ScriptedPoster::answering([]));
    let first = sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let second = sandbox
        .create_lease(&NewLease::new(1, 12, date!(2024 - 01 - 01), None))
        .expect("created");
    let alice = i32::try_from(
        sandbox.lease(first).expect("lease")["Tenants"][0]["Id"]
            .as_i64()
            .expect("id"),
    )
    .expect("i32");
    assert_eq!(
        sandbox
            .add_tenant(second, &NewTenant::existing(alice))
            .expect("added"),
        alice
    );
    assert_eq!(
        sandbox.add_tenant(second, &NewTenant::existing(alice)),
        Err(ChangeError::AlreadyOnLease {
            lease_id: second,
            tenant_id: alice
        })
    );
    let tenant = sandbox.tenant(alice).expect("tenant");
    assert_eq!(tenant["Leases"].as_array().expect("array").len(), 2);
    // Off the second lease, still on the first: LeaseTenant.Updated, the record stays.
    sandbox.remove_tenant(second, alice).expect("removed");
    assert!(sandbox.tenant(alice).is_some());
    let deliveries = sandbox
        .wait_for_deliveries(7, GUARD)
        .await
        .expect("settled");
    assert_eq!(
        event_names(&deliveries[3..]),
        [
            "LeaseTenant.Updated",
            "Lease.Updated",
            "LeaseTenant.Updated",
            "Lease.Updated"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn bad_changes_are_refused_with_reasons() {
    let sandbox = scripted(options(), &ScriptedPoster::answering([]));
    let lease_id = sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let cases = [
        (
            control("POST", "/_sandbox/leases", &json!({ "PropertyId": 1 })),
            StatusCode::BAD_REQUEST,
        ),
        (
            control(
                "POST",
                "/_sandbox/leases",
                &json!({ "PropertyId": 1, "UnitId": 2, "LeaseFromDate": "03/01/2024" }),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            control(
                "POST",
                "/_sandbox/leases",
                &json!({ "PropertyId": 1, "UnitId": 2, "LeaseFromDate": "2024-03-01", "LeaseToDate": "2024-02-01" }),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            control(
                "POST",
                "/_sandbox/leases",
                &json!({ "PropertyId": 1, "UnitId": 2, "LeaseFromDate": "2024-03-01", "Tenants": [{ "Email": "x@example.com" }] }),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            control(
                "PATCH",
                &format!("/_sandbox/leases/{lease_id}"),
                &json!({ "Rent": 100 }),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            control("PATCH", "/_sandbox/leases/4242", &json!({})),
            StatusCode::NOT_FOUND,
        ),
        (
            control(
                "POST",
                &format!("/_sandbox/leases/{lease_id}/moveouts"),
                &json!({ "TenantId": 4242, "MoveOutDate": "2024-06-30" }),
            ),
            StatusCode::CONFLICT,
        ),
        (delete("/_sandbox/leases/4242"), StatusCode::NOT_FOUND),
        (get("/_sandbox/nothing-here"), StatusCode::NOT_FOUND),
    ];
    for (request, status) in cases {
        let uri = request.uri().clone();
        let answer = call(&sandbox, request).await;
        assert_eq!(answer.status, status, "{uri}: {}", answer.json);
        assert!(answer.json["UserMessage"].is_string(), "{uri}");
    }
    // Refused changes emit nothing.
    let deliveries = sandbox
        .wait_for_deliveries(2, GUARD)
        .await
        .expect("settled");
    assert_eq!(deliveries.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn faults_are_set_over_http() {
    let poster = ScriptedPoster::answering([]);
    let sandbox = scripted(options(), &poster);
    let put = call(
        &sandbox,
        control(
            "PUT",
            "/_sandbox/faults",
            &json!({
                "reads": { "status": 503, "rate": 0.5 },
                "webhooks": { "drop_rate": 0.25, "duplicate_rate": 0, "max_delay_ms": 20 },
                "rate_limit": 4
            }),
        ),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    assert_eq!(put.json["reads"], json!({ "status": 503, "rate": 0.5 }));
    assert_eq!(put.json["webhooks"]["max_delay_ms"], 20);
    assert_eq!(put.json["rate_limit"], 4);
    let invalid = call(
        &sandbox,
        control(
            "PUT",
            "/_sandbox/faults",
            &json!({ "reads": { "status": 503, "rate": 2 } }),
        ),
    )
    .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Back to none.
    let reset = call(
        &sandbox,
        control(
            "PUT",
            "/_sandbox/faults",
            &json!({ "reads": {}, "webhooks": {}, "rate_limit": 0 }),
        ),
    )
    .await;
    assert_eq!(reset.json["reads"], json!({ "status": null, "rate": 0.0 }));

    // Scripted read faults.
    let queued = call(
        &sandbox,
        control(
            "POST",
            "/_sandbox/faults/reads",
            &json!({ "status": 502, "count": 2 }),
        ),
    )
    .await;
    assert_eq!(queued.status, StatusCode::NO_CONTENT);
    for expected in [502, 502, 200] {
        assert_eq!(
            call(&sandbox, read("/v1/leases")).await.status.as_u16(),
            expected
        );
    }

    // Scripted webhook faults, then hold and release reversed.
    let drop_one = call(
        &sandbox,
        control(
            "POST",
            "/_sandbox/faults/webhooks",
            &json!({ "fault": "drop" }),
        ),
    )
    .await;
    assert_eq!(drop_one.status, StatusCode::NO_CONTENT);
    let held = call(
        &sandbox,
        control("POST", "/_sandbox/webhooks/hold", &json!({})),
    )
    .await;
    assert_eq!(held.status, StatusCode::NO_CONTENT);
    sandbox.create_lease(&lease_in(1, 11)).expect("created");
    let faults = call(&sandbox, get("/_sandbox/faults")).await;
    assert_eq!(faults.json["holding_webhooks"], true);
    let released = call(
        &sandbox,
        control(
            "POST",
            "/_sandbox/webhooks/release",
            &json!({ "order": "reversed" }),
        ),
    )
    .await;
    assert_eq!(released.json, json!({ "released": 1 }));
    let deliveries = sandbox
        .wait_for_deliveries(2, GUARD)
        .await
        .expect("settled");
    assert_eq!(deliveries[0].state, DeliveryState::Dropped);
    assert_eq!(deliveries[1].state, DeliveryState::Delivered);

    let bad = call(
        &sandbox,
        control(
            "POST",
            "/_sandbox/faults/webhooks",
            &json!({ "fault": "explode" }),
        ),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
