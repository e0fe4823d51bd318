//! A stateful fake of AgentMail's inbox API (`/v0/inboxes`), for the per-agent inbox
//! provisioning's tests.
//!
//! It keeps every inbox it made so a test can assert that none was left behind. As on AgentMail,
//! a create naming a `client_id` that an inbox already has returns that inbox (so a retried
//! create makes no second one), a username taken by another inbox is a 409, and an `inbox_id`
//! (`username@domain`) in a path may come URL-encoded (`%40`) or not. Usernames and domains are
//! case-insensitive and kept lowercase. The listing pages by an opaque cursor in creation order,
//! so a delete between two pages neither skips nor repeats an inbox.
//!
//! Ops for faults and stats: `POST /v0/inboxes`, `GET /v0/inboxes`,
//! `GET /v0/inboxes/{inbox_id}`, `DELETE /v0/inboxes/{inbox_id}`.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use super::faults::{bearer_in, new_id, now, unpoisoned, Controls, Fake, Faults, Server};
use super::rest::{json_body, opt_str, random_hex, Params};

#[derive(Debug, Clone)]
pub struct AgentMailConfig {
    /// The one API key accepted as Bearer; any other (or none) is answered 401.
    pub api_key: String,
    /// The domain of an inbox created without one.
    pub domain: String,
    /// The pod every inbox is in.
    pub pod_id: String,
    /// Largest page of `GET /v0/inboxes`, whatever `limit` asks.
    pub page_size: usize,
    /// 0 = any free port.
    pub port: u16,
}

impl Default for AgentMailConfig {
    fn default() -> Self {
        Self {
            api_key: "fake-agentmail-api-key".into(),
            domain: "agentmail.to".into(),
            pod_id: new_id(),
            page_size: 100,
            port: 0,
        }
    }
}

/// An inbox as the fake holds it.
#[derive(Debug, Clone, Serialize)]
pub struct InboxView {
    /// `username@domain`.
    pub inbox_id: String,
    pub pod_id: String,
    pub display_name: Option<String>,
    pub client_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl InboxView {
    fn json(&self) -> Value {
        json!({
            "inbox_id": self.inbox_id,
            "pod_id": self.pod_id,
            "display_name": self.display_name,
            "client_id": self.client_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

struct Inbox {
    seq: u64,
    view: InboxView,
}

#[derive(Default)]
struct World {
    next_seq: u64,
    /// Creation order.
    inboxes: Vec<Inbox>,
}

impl World {
    fn create(
        &mut self,
        pod_id: &str,
        inbox_id: String,
        display_name: Option<String>,
        client_id: Option<String>,
    ) -> InboxView {
        self.next_seq += 1;
        let created_at = now();
        let view = InboxView {
            inbox_id,
            pod_id: pod_id.to_string(),
            display_name,
            client_id,
            created_at: created_at.clone(),
            updated_at: created_at,
        };
        self.inboxes.push(Inbox {
            seq: self.next_seq,
            view: view.clone(),
        });
        view
    }
}

struct Inner {
    config: AgentMailConfig,
    world: Mutex<World>,
    faults: Faults,
}

impl Inner {
    /// The state, also after a panic elsewhere (a failed test must still be able to clean up).
    fn world(&self) -> MutexGuard<'_, World> {
        unpoisoned(&self.world)
    }

    fn not_found(&self) -> Response {
        self.error(StatusCode::NOT_FOUND, "Inbox not found")
    }
}

impl Fake for Inner {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_in(headers, std::slice::from_ref(&self.config.api_key))
    }

    /// AgentMail's errors: `{"name": "<Kind>Error", "message": ...}`.
    fn error(&self, status: StatusCode, message: &str) -> Response {
        let name = match status {
            StatusCode::BAD_REQUEST => "ValidationError",
            StatusCode::UNAUTHORIZED => "UnauthorizedError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::CONFLICT => "AlreadyExistsError",
            StatusCode::TOO_MANY_REQUESTS => "RateLimitError",
            _ => "ServerError",
        };
        (status, Json(json!({"name": name, "message": message}))).into_response()
    }

    fn state(&self) -> Value {
        let world = self.world();
        json!({"inboxes": world.inboxes.iter().map(|i| &i.view).collect::<Vec<_>>()})
    }
}

/// A running fake; its server stops when it is dropped.
pub struct AgentMailFake {
    inner: Arc<Inner>,
    server: Server,
}

impl AgentMailFake {
    pub async fn start(config: AgentMailConfig) -> Self {
        let port = config.port;
        let inner = Arc::new(Inner {
            config,
            world: Mutex::new(World::default()),
            faults: Faults::default(),
        });
        let routes = Router::new()
            .route("/v0/inboxes", get(list_inboxes).post(create_inbox))
            .route(
                "/v0/inboxes/{inbox_id}",
                get(get_inbox).delete(delete_inbox),
            );
        let server = Server::rest("agentmail", port, inner.clone(), routes).await;
        Self { inner, server }
    }

    /// The API base, `http://127.0.0.1:PORT/v0` (what `AGENTMAIL_API_URL` takes).
    pub fn url(&self) -> String {
        format!("{}/v0", self.server.base_url())
    }

    pub fn api_key(&self) -> &str {
        &self.inner.config.api_key
    }

    /// The default domain.
    pub fn domain(&self) -> &str {
        &self.inner.config.domain
    }

    /// Every live inbox, oldest first.
    pub fn inboxes(&self) -> Vec<InboxView> {
        self.inner
            .world()
            .inboxes
            .iter()
            .map(|i| i.view.clone())
            .collect()
    }

    pub fn inbox(&self, inbox_id: &str) -> Option<InboxView> {
        let inbox_id = inbox_id.to_lowercase();
        self.inner
            .world()
            .inboxes
            .iter()
            .find(|i| i.view.inbox_id == inbox_id)
            .map(|i| i.view.clone())
    }

    /// An inbox nobody asked this fake's API for (someone used the console), in the default
    /// domain and without a client id; returns its `inbox_id`. Panics if the username is taken.
    pub fn create_inbox_behind_our_back(&self, username: &str) -> String {
        let inbox_id = format!(
            "{}@{}",
            username.to_lowercase(),
            self.domain().to_lowercase()
        );
        let mut world = self.inner.world();
        assert!(
            !world.inboxes.iter().any(|i| i.view.inbox_id == inbox_id),
            "{inbox_id} already exists in the fake"
        );
        world
            .create(&self.inner.config.pod_id, inbox_id, None, None)
            .inbox_id
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// AgentMail's usernames: letters, digits, `.`, `_`, `-`, `+`.
fn valid_username(username: &str) -> bool {
    !username.is_empty()
        && username.len() <= 64
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_+".contains(c))
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.contains('.')
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
}

struct CreateRequest {
    username: String,
    domain: String,
    display_name: Option<String>,
    client_id: Option<String>,
}

fn read_create(inner: &Inner, body: &[u8]) -> Result<CreateRequest, String> {
    let body = json_body(body)?;
    let username = match opt_str(&body, "username")? {
        Some(username) => username.to_lowercase(),
        // AgentMail picks a name itself.
        None => format!("inbox-{}", random_hex(5)),
    };
    if !valid_username(&username) {
        return Err(format!("Invalid username: {username:?}"));
    }
    let domain = opt_str(&body, "domain")?
        .unwrap_or(&inner.config.domain)
        .to_lowercase();
    if !valid_domain(&domain) {
        return Err(format!("Invalid domain: {domain:?}"));
    }
    Ok(CreateRequest {
        username,
        domain,
        display_name: opt_str(&body, "display_name")?.map(str::to_string),
        client_id: opt_str(&body, "client_id")?.map(str::to_string),
    })
}

async fn create_inbox(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let request = match read_create(&inner, &body) {
        Ok(request) => request,
        Err(message) => return inner.bad_request(&message),
    };
    let mut world = inner.world();
    // The idempotency key: the inbox this client id made, whatever else the retry says.
    if let Some(client_id) = &request.client_id {
        if let Some(inbox) = world
            .inboxes
            .iter()
            .find(|i| i.view.client_id.as_ref() == Some(client_id))
        {
            return Json(inbox.view.json()).into_response();
        }
    }
    let inbox_id = format!("{}@{}", request.username, request.domain);
    if world.inboxes.iter().any(|i| i.view.inbox_id == inbox_id) {
        return inner.error(
            StatusCode::CONFLICT,
            &format!("Inbox {inbox_id} already exists"),
        );
    }
    let view = world.create(
        &inner.config.pod_id,
        inbox_id,
        request.display_name,
        request.client_id,
    );
    Json(view.json()).into_response()
}

/// The cursor of the page after the inbox with this sequence number.
fn page_token(seq: u64) -> String {
    format!("after-{seq}")
}

fn parse_page_token(token: &str) -> Result<u64, String> {
    token
        .strip_prefix("after-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("Invalid page_token: {token:?}"))
}

async fn list_inboxes(
    State(inner): State<Arc<Inner>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let read = || -> Result<(usize, Option<u64>), String> {
        let params = Params::read(query)?;
        let limit = match params.uint("limit")? {
            Some(0) => return Err("limit must be at least 1".into()),
            Some(limit) => limit.min(inner.config.page_size),
            None => inner.config.page_size,
        };
        let after = match params.get("page_token") {
            None | Some("") => None,
            Some(token) => Some(parse_page_token(token)?),
        };
        Ok((limit, after))
    };
    let (limit, after) = match read() {
        Ok(params) => params,
        Err(message) => return inner.bad_request(&message),
    };
    let world = inner.world();
    let rest: Vec<&Inbox> = world
        .inboxes
        .iter()
        .filter(|i| after.is_none_or(|after| i.seq > after))
        .collect();
    let page = &rest[..limit.min(rest.len())];
    let mut body = json!({
        "count": page.len(),
        "limit": limit,
        "inboxes": page.iter().map(|i| i.view.json()).collect::<Vec<_>>(),
    });
    if rest.len() > page.len() {
        if let Some(last) = page.last() {
            body["next_page_token"] = json!(page_token(last.seq));
        }
    }
    Json(body).into_response()
}

async fn get_inbox(
    State(inner): State<Arc<Inner>>,
    inbox_id: Result<Path<String>, PathRejection>,
) -> Response {
    // Path decodes `%40`, so an encoded and a plain `@` name the same inbox.
    let Ok(Path(inbox_id)) = inbox_id else {
        return inner.not_found();
    };
    let inbox_id = inbox_id.to_lowercase();
    let world = inner.world();
    match world.inboxes.iter().find(|i| i.view.inbox_id == inbox_id) {
        Some(inbox) => Json(inbox.view.json()).into_response(),
        None => inner.not_found(),
    }
}

async fn delete_inbox(
    State(inner): State<Arc<Inner>>,
    inbox_id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(inbox_id)) = inbox_id else {
        return inner.not_found();
    };
    let inbox_id = inbox_id.to_lowercase();
    let mut world = inner.world();
    let before = world.inboxes.len();
    world.inboxes.retain(|i| i.view.inbox_id != inbox_id);
    if world.inboxes.len() == before {
        return inner.not_found();
    }
    // AgentMail answers a delete with an empty 200.
    StatusCode::OK.into_response()
}

impl Controls for AgentMailFake {
    fn server(&self) -> &Server {
        &self.server
    }

    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
