//! `GET /api/v1/users/search`, `POST /api/v1/users` and their seeding.

use super::*;

impl Harness {
    fn search(&self, query: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}/api/v1/users/search?{query}", self.base))
            .bearer_auth(KEY)
    }

    fn create(&self, body: &Value) -> reqwest::RequestBuilder {
        self.authed(self.client.post(format!("{}/api/v1/users", self.base)))
            .json(body)
    }
}

fn emails(reply: &Reply) -> Vec<String> {
    reply.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|user| user["email"].as_str().expect("email").to_owned())
        .collect()
}

fn seed(sandbox: &Sandbox, org: &str, name: &str, email: &str) -> User {
    sandbox
        .add_user(org, NewUser::new(name, email))
        .expect("seeded")
}

#[tokio::test]
async fn search_is_a_case_insensitive_substring_match_on_name_and_email() {
    let h = start(options()).await;
    let alice = seed(&h.sandbox, ORG, "Alice Smith", "alice@example.com");
    seed(&h.sandbox, ORG, "Bob Jones", "bob@example.org");
    seed(&h.sandbox, ORG, "Carol Alison", "carol@example.com");
    seed(
        &h.sandbox,
        OTHER_ORG,
        "Alice Elsewhere",
        "alice@elsewhere.test",
    );

    let by_name = send(h.search(&format!("q=ALI&org_id={ORG}"))).await;
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.text);
    assert_eq!(emails(&by_name), ["alice@example.com", "carol@example.com"]);
    assert_eq!(by_name.json()["total"], json!(2));

    // A substring of the email; an exact email is one of possibly several hits.
    let by_email = send(h.search(&format!("q=%40EXAMPLE.COM&org_id={ORG}"))).await;
    assert_eq!(
        emails(&by_email),
        ["alice@example.com", "carol@example.com"]
    );

    // The user object per the spec: a ULID id, a localized name, roles by org.
    let first = &by_name.json()["items"][0];
    assert_eq!(first["id"], json!(alice.id));
    assert!(alice.id.parse::<ulid::Ulid>().is_ok(), "{}", alice.id);
    assert_eq!(first["name"], json!({ "en": "Alice Smith" }));
    assert_eq!(first["roles"], json!({ ORG: [] }));
    assert_eq!(first["metadata"], json!(null));
    assert!(first["created_at"].is_string());

    // X-Org instead of org_id; scope=all ignores the org.
    let by_header = send(h.search("q=alice").header("X-Org", OTHER_ORG)).await;
    assert_eq!(emails(&by_header), ["alice@elsewhere.test"]);
    let everyone = send(h.search("q=alice&scope=all")).await;
    assert_eq!(everyone.json()["total"], json!(2));

    // No org at all is a 400.
    let no_org = send(h.search("q=alice")).await;
    assert_error(
        &no_org,
        StatusCode::BAD_REQUEST,
        "Missing org: pass org_id or X-Org",
    );
    h.stop().await;
}

#[tokio::test]
async fn search_paginates_with_total_and_excludes_ids() {
    let h = start(options()).await;
    let ids: Vec<String> = (0..5)
        .map(|n| {
            seed(
                &h.sandbox,
                ORG,
                &format!("User {n}"),
                &format!("u{n}@example.com"),
            )
            .id
        })
        .collect();

    let page = send(h.search(&format!("org_id={ORG}&limit=2&offset=1"))).await;
    assert_eq!(emails(&page), ["u1@example.com", "u2@example.com"]);
    assert_eq!(page.json()["total"], json!(5));

    let past_the_end = send(h.search(&format!("org_id={ORG}&offset=9"))).await;
    assert!(emails(&past_the_end).is_empty());
    assert_eq!(past_the_end.json()["total"], json!(5));

    let excluded = send(h.search(&format!("org_id={ORG}&exclude_ids={},{}", ids[0], ids[4]))).await;
    assert_eq!(excluded.json()["total"], json!(3));

    let bad = send(h.search(&format!("org_id={ORG}&limit=-1"))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    h.stop().await;
}

#[tokio::test]
async fn search_needs_the_api_key() {
    let h = start(options()).await;
    let reply = send(
        h.client
            .get(format!("{}/api/v1/users/search?org_id={ORG}", h.base))
            .bearer_auth("wrong"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    h.stop().await;
}

#[tokio::test]
async fn create_answers_the_user_then_409_on_the_same_email() {
    let h = start(options()).await;
    let created = send(h.create(&json!({
        "name": { "en": "Dana Doe" },
        "email": "dana@example.com",
        "first_name": "Dana",
        "last_name": "Doe",
    })))
    .await;
    // The spec's only success code for create_user is 200.
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let user = created.json();
    assert!(
        user["id"]
            .as_str()
            .expect("id")
            .parse::<ulid::Ulid>()
            .is_ok()
    );
    assert_eq!(user["email"], json!("dana@example.com"));
    assert_eq!(user["name"], json!({ "en": "Dana Doe" }));
    assert_eq!(user["roles"], json!({ ORG: [] }));

    let stored = h.sandbox.users();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].first_name.as_deref(), Some("Dana"));

    // Found by search in the org of X-Org.
    let found = send(h.search(&format!("q=dana&org_id={ORG}"))).await;
    assert_eq!(found.json()["items"][0]["id"], user["id"]);

    let again = send(h.create(&json!({
        "name": { "en": "Someone Else" },
        "email": "DANA@example.com",
    })))
    .await;
    assert_error(
        &again,
        StatusCode::CONFLICT,
        "A user with this email already exists",
    );
    assert_eq!(h.sandbox.users().len(), 1);
    let calls = h.sandbox.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].path, "/api/v1/users");
    assert_eq!(calls[0].status, 200);
    h.stop().await;
}

#[tokio::test]
async fn create_validates_the_request() {
    let h = start(options()).await;
    let cases = [
        (
            json!({ "email": "x@example.com" }),
            400,
            "Missing field `name`",
        ),
        (
            json!({ "name": { "en": "X" } }),
            400,
            "Missing field `email`",
        ),
        (
            json!({ "name": { "en": "X" }, "email": "x@example.com", "nick": "x" }),
            400,
            "Unknown field `nick`",
        ),
        (
            json!({ "name": { "en": "X" }, "email": "nope" }),
            422,
            "email must contain @",
        ),
    ];
    for (body, status, message) in cases {
        let reply = send(h.create(&body)).await;
        assert_error(
            &reply,
            StatusCode::from_u16(status).expect("status"),
            message,
        );
    }
    // A bare string is not a LocalizedString.
    let bare = send(h.create(&json!({ "name": "X", "email": "x@example.com" }))).await;
    assert_eq!(
        bare.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        bare.text
    );
    // The schema's literal wrapper is accepted too.
    let wrapped = send(h.create(&json!({
        "name": { "value": { "en": "Wrapped" } },
        "email": "wrapped@example.com",
    })))
    .await;
    assert_eq!(wrapped.status, StatusCode::OK, "{}", wrapped.text);
    assert_eq!(wrapped.json()["name"], json!({ "en": "Wrapped" }));

    // X-Org is required.
    let no_org = send(
        h.client
            .post(format!("{}/api/v1/users", h.base))
            .bearer_auth(KEY)
            .json(&json!({ "name": { "en": "Y" }, "email": "y@example.com" })),
    )
    .await;
    assert_error(&no_org, StatusCode::BAD_REQUEST, "Missing X-Org header");
    h.stop().await;
}

#[tokio::test]
async fn building_user_roles_show_in_the_user_and_its_org() {
    let h = start(options()).await;
    let user = seed(&h.sandbox, OTHER_ORG, "Erin", "erin@example.com");
    h.sandbox
        .add_member(ORG, INTEGRATION, &user.id, &role("resident"));
    let found = send(h.search(&format!("q=erin&org_id={ORG}"))).await;
    assert_eq!(
        found.json()["items"][0]["roles"],
        json!({ ORG: [role("resident")], OTHER_ORG: [] })
    );
    h.stop().await;
}

#[tokio::test]
async fn users_can_be_seeded_over_the_control_api() {
    let h = start(options()).await;
    let seeded = send(
        h.client
            .post(format!("{}/_sandbox/users", h.base))
            .json(&json!({
                "org_id": ORG, "name": "Frank", "email": "frank@example.com", "id": "user-frank",
            })),
    )
    .await;
    assert_eq!(seeded.status, StatusCode::CREATED, "{}", seeded.text);
    assert_eq!(seeded.json()["id"], json!("user-frank"));
    let duplicate = send(
        h.client
            .post(format!("{}/_sandbox/users", h.base))
            .json(&json!({
                "org_id": ORG, "name": "Frank", "email": "frank@example.com",
            })),
    )
    .await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    let listed = send(h.client.get(format!("{}/_sandbox/users", h.base))).await;
    assert_eq!(listed.json()[0]["email"], json!("frank@example.com"));
    // Control calls are not recorded.
    assert!(h.sandbox.calls().is_empty());
    h.stop().await;
}

#[test]
fn add_user_rejects_duplicates_and_blank_fields() {
    let sandbox = Sandbox::new(options());
    seed(&sandbox, ORG, "Gil", "gil@example.com");
    assert_eq!(
        sandbox.add_user(ORG, NewUser::new("Gil 2", " GIL@example.com ")),
        Err(UserError::DuplicateEmail("GIL@example.com".into()))
    );
    assert!(matches!(
        sandbox.add_user(ORG, NewUser::new(" ", "h@example.com")),
        Err(UserError::Invalid(_))
    ));
    let with_id = NewUser {
        id: Some("fixed".into()),
        ..NewUser::new("I", "i@example.com")
    };
    assert_eq!(
        sandbox.add_user(ORG, with_id.clone()).expect("added").id,
        "fixed"
    );
    assert_eq!(
        sandbox.add_user(
            ORG,
            NewUser {
                email: "j@example.com".into(),
                ..with_id
            }
        ),
        Err(UserError::DuplicateId("fixed".into()))
    );
}

#[tokio::test]
async fn a_deleted_user_loses_their_doors_and_cannot_be_added_again() {
    let h = start(options()).await;
    let user = seed(&h.sandbox, ORG, "Ada Lovelace", "ada@example.com");
    let added = send(h.add(&user.id, "resident")).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);

    assert!(h.sandbox.delete_user(&user.id));
    assert!(
        h.sandbox.members(INTEGRATION).is_empty(),
        "the door went with the user"
    );
    assert!(h.sandbox.users().is_empty());
    let again = send(h.add(&user.id, "resident")).await;
    assert_error(&again, StatusCode::NOT_FOUND, "User not found");
    // Ids the sandbox never knew are still accepted, so tests may make them up.
    let made_up = send(h.add("user-1", "resident")).await;
    assert_eq!(made_up.status, StatusCode::CREATED, "{}", made_up.text);
    // The email is free again.
    seed(&h.sandbox, ORG, "Ada Lovelace", "ada@example.com");
    h.stop().await;
}
