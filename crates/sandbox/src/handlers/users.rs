//! `GET /api/v1/users/search` and `POST /api/v1/users`, per the stored OpenApp spec
//! (`search_users`, `create_user`), plus the `/_sandbox/users` control endpoints.
//!
//! The spec's `User.name` is a `LocalizedString`, described as the JSON object
//! `{ [locale]: text }`; the sandbox answers that form and accepts it (or the schema's literal
//! `{"value": { [locale]: text }}` wrapper) in requests, and rejects a bare string with 422 so
//! that a client sending one finds out here. `create_user` answers `200` (the spec's only
//! success code), with the `UserResponse`.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiError, Incoming, clip, json_object_body, run_call, x_org};
use crate::users::{NewUser, User, UserError, insert_user};
use crate::{Sandbox, State as Inner};

/// Page size when `limit` is absent ("default from config" in the spec).
pub(super) const DEFAULT_SEARCH_LIMIT: usize = 50;
/// Largest page (`PaginationQuery`: "max 200"); bigger limits are lowered to it.
pub(super) const MAX_SEARCH_LIMIT: usize = 200;

/// Fields `CreateUserRequest` declares (in the stored spec or its later versions); others are
/// rejected so that client typos surface.
const CREATE_FIELDS: [&str; 8] = [
    "name",
    "email",
    "first_name",
    "last_name",
    "id",
    "password",
    "roles",
    "phone",
];

pub(super) fn routes(router: Router<Sandbox>) -> Router<Sandbox> {
    router
        .route("/api/v1/users/search", axum::routing::get(search_users))
        .route("/api/v1/users", axum::routing::post(create_user))
        .route(
            "/_sandbox/users",
            axum::routing::get(control_users).post(control_add_user),
        )
}

async fn search_users(State(sandbox): State<Sandbox>, request: Request) -> Response {
    let incoming = Incoming::read(request, false).await;
    let pending = incoming.pending(String::new(), None, None);
    let operation = |sandbox: &Sandbox| {
        sandbox.authenticate(&incoming.headers)?;
        let query = SearchQuery::parse(incoming.uri.query().unwrap_or_default())?;
        let org = match (&query.org_id, query.all) {
            (_, true) => None,
            (Some(org), false) => Some(org.clone()),
            (None, false) => Some(
                x_org(&incoming.headers)
                    .map_err(|_| ApiError::bad_request("Missing org: pass org_id or X-Org"))?
                    .to_owned(),
            ),
        };
        let state = sandbox.lock();
        let needle = query.q.as_deref().unwrap_or_default().to_lowercase();
        let matching: Vec<&User> = state
            .users
            .values()
            .filter(|user| !query.exclude_ids.contains(&user.id))
            .filter(|user| org.as_deref().is_none_or(|org| in_org(&state, user, org)))
            .filter(|user| user.matches(&needle))
            .collect();
        let total = matching.len();
        let items: Vec<Value> = matching
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .map(|user| user_response(&state, user))
            .collect();
        Ok(Json(json!({ "items": items, "total": total })).into_response())
    };
    run_call(sandbox, pending, &incoming.method, operation).await
}

async fn create_user(State(sandbox): State<Sandbox>, request: Request) -> Response {
    let incoming = Incoming::read(request, true).await;
    let pending = incoming.pending(String::new(), None, None);
    let operation = |sandbox: &Sandbox| {
        sandbox.authenticate(&incoming.headers)?;
        let org = x_org(&incoming.headers)?.to_owned();
        let user = parse_create_body(&incoming)?;
        let mut state = sandbox.lock();
        let user = insert_user(&mut state, &org, user).map_err(|error| match error {
            UserError::DuplicateEmail(_) => ApiError::new(
                StatusCode::CONFLICT,
                "A user with this email already exists",
            ),
            UserError::DuplicateId(_) => {
                ApiError::new(StatusCode::CONFLICT, "A user with this id already exists")
            }
            UserError::Invalid(reason) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason),
        })?;
        Ok((StatusCode::OK, Json(user_response(&state, &user))).into_response())
    };
    run_call(sandbox, pending, &incoming.method, operation).await
}

/// The query of `search_users`; unknown parameters are ignored.
struct SearchQuery {
    q: Option<String>,
    org_id: Option<String>,
    /// `scope=all`: every user, whatever the org.
    all: bool,
    limit: usize,
    offset: usize,
    exclude_ids: Vec<String>,
}

impl SearchQuery {
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut parsed = Self {
            q: None,
            org_id: None,
            all: false,
            limit: DEFAULT_SEARCH_LIMIT,
            offset: 0,
            exclude_ids: Vec::new(),
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "q" => parsed.q = Some(value.into_owned()),
                "org_id" if !value.trim().is_empty() => parsed.org_id = Some(value.into_owned()),
                "scope" => parsed.all = value == "all",
                "limit" => parsed.limit = count(&key, &value)?.min(MAX_SEARCH_LIMIT),
                "offset" => parsed.offset = count(&key, &value)?,
                "exclude_ids" => parsed.exclude_ids.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|id| !id.is_empty())
                        .map(str::to_owned),
                ),
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// A non-negative integer query parameter.
fn count(key: &str, value: &str) -> Result<usize, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::bad_request(format!(
            "Query parameter `{key}` must be a non-negative integer, got {:?}",
            clip(value)
        ))
    })
}

/// Whether `user` belongs to `org`: created or given roles there, or a building user of one
/// of its integrations.
fn in_org(state: &Inner, user: &User, org: &str) -> bool {
    user.orgs.contains(org)
        || state.integrations.values().any(|integration| {
            integration.org_id == org && integration.members.contains_key(&user.id)
        })
}

/// The user's roles by org: those granted at creation, every org it belongs to (possibly
/// without roles), and its building-user roles.
fn roles_of(state: &Inner, user: &User) -> BTreeMap<String, Vec<String>> {
    let mut roles = user.roles.clone();
    for org in &user.orgs {
        roles.entry(org.clone()).or_default();
    }
    for integration in state.integrations.values() {
        if let Some(role) = integration.members.get(&user.id) {
            let held = roles.entry(integration.org_id.clone()).or_default();
            if !held.contains(role) {
                held.push(role.clone());
            }
        }
    }
    roles
}

/// `UserResponse`: `User` (`id`, `name`, `email`, `metadata`), the nullable
/// `StorageFeatures`, and `roles`.
fn user_response(state: &Inner, user: &User) -> Value {
    json!({
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "metadata": null,
        "cache_hit": null,
        "cache_ttl": null,
        "created_at": user.created_at,
        "updated_at": user.created_at,
        "deleted_at": null,
        "hard_delete_at": null,
        "purge_at": null,
        "roles": roles_of(state, user),
    })
}

/// Validates a `CreateUserRequest` body: JSON object, declared fields only, `name` a
/// `LocalizedString`, `email` a string; 400 for shape errors, 422 for unusable values (as the
/// spec's codes suggest).
fn parse_create_body(incoming: &Incoming) -> Result<NewUser, ApiError> {
    let fields = json_object_body(&incoming.headers, incoming.body.as_ref())?;
    if let Some(extra) = fields
        .keys()
        .find(|key| !CREATE_FIELDS.contains(&key.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Unknown field `{}`",
            clip(extra)
        )));
    }
    let name = match fields.get("name") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("Missing field `name`")),
        Some(value) => localized(value)?,
    };
    let email = match fields.get("email") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("Missing field `email`")),
        Some(Value::String(email)) => email.clone(),
        Some(_) => return Err(ApiError::bad_request("Field `email` must be a string")),
    };
    let roles = match fields.get("roles") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(value) => serde_json::from_value::<BTreeMap<String, Vec<String>>>(value.clone())
            .map_err(|_| {
                ApiError::bad_request("Field `roles` must map org ids to lists of role names")
            })?,
    };
    Ok(NewUser {
        id: optional_string(&fields, "id")?,
        name,
        email,
        first_name: optional_string(&fields, "first_name")?,
        last_name: optional_string(&fields, "last_name")?,
        roles,
    })
}

/// A `LocalizedString`: `{ [locale]: text }`, or the schema's `{"value": { [locale]: text }}`.
fn localized(value: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapped {
        value: BTreeMap<String, String>,
    }
    let invalid = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"Field `name` must be a localized string: an object of locale to text, e.g. {"en": "Alice Smith"}"#,
        )
    };
    let map = serde_json::from_value::<BTreeMap<String, String>>(value.clone())
        .or_else(|_| serde_json::from_value::<Wrapped>(value.clone()).map(|wrapped| wrapped.value))
        .map_err(|_| invalid())?;
    if map.is_empty() || map.values().all(|text| text.trim().is_empty()) {
        return Err(invalid());
    }
    Ok(map)
}

fn optional_string(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "Field `{name}` must be a string or null"
        ))),
    }
}

// ---------------------------------------------------------------------------
// Control endpoints (no auth, not recorded, never faulted)

async fn control_users(State(sandbox): State<Sandbox>) -> Response {
    Json(sandbox.users()).into_response()
}

/// Body of `POST /_sandbox/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedUser {
    org_id: String,
    name: String,
    email: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
}

async fn control_add_user(State(sandbox): State<Sandbox>, body: axum::body::Bytes) -> Response {
    let seed: SeedUser = match serde_json::from_slice(&body) {
        Ok(seed) => seed,
        Err(error) => {
            let message = error.to_string();
            return ApiError::bad_request(format!(
                "Expected {{org_id, name, email, id?, first_name?, last_name?}}: {}",
                clip(&message)
            ))
            .into_response();
        }
    };
    let user = NewUser {
        id: seed.id,
        first_name: seed.first_name,
        last_name: seed.last_name,
        ..NewUser::new(seed.name, seed.email)
    };
    match sandbox.add_user(&seed.org_id, user) {
        Ok(user) => (StatusCode::CREATED, Json(user)).into_response(),
        Err(error @ (UserError::DuplicateEmail(_) | UserError::DuplicateId(_))) => {
            ApiError::new(StatusCode::CONFLICT, error.to_string()).into_response()
        }
        Err(error) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()).into_response()
        }
    }
}
