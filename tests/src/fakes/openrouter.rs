//! A stateful fake of OpenRouter's key management API (`/api/v1/keys`, `/api/v1/credits`), for
//! the per-agent key provisioning's tests.
//!
//! It keeps every key it made so a test can assert that none was left behind. As on OpenRouter,
//! names are not unique (a create that is retried after a lost reply makes a second key, which
//! only a listing by name finds again), the secret key is shown once, in the create's answer,
//! and the listing pages by offset over the current keys in creation order (so a delete between
//! two pages shifts the later ones by one). Disabled keys are listed only with
//! `include_disabled=true`.
//!
//! Ops for faults and stats: `POST /api/v1/keys`, `GET /api/v1/keys`,
//! `GET /api/v1/keys/{hash}`, `PATCH /api/v1/keys/{hash}`, `DELETE /api/v1/keys/{hash}`,
//! `GET /api/v1/credits`.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::faults::{
    bearer_in, now, shifted_by, unpoisoned, Controls, Fake, Fault, Faults, Server,
};
use super::rest::{json_body, opt_str, random_hex, Change, Params};

#[derive(Debug, Clone)]
pub struct OpenRouterConfig {
    /// The one management key accepted as Bearer; any other (or none) is answered 401.
    pub management_key: String,
    /// Keys per page of `GET /api/v1/keys`.
    pub page_size: usize,
    /// `total_credits` of `GET /api/v1/credits`.
    pub total_credits: f64,
    /// 0 = any free port.
    pub port: u16,
}

impl Default for OpenRouterConfig {
    fn default() -> Self {
        Self {
            management_key: "fake-openrouter-management-key".into(),
            page_size: 100,
            total_credits: 100.0,
            port: 0,
        }
    }
}

/// A key as the fake holds it.
#[derive(Clone, Serialize)]
pub struct KeyView {
    pub hash: String,
    pub name: String,
    /// The masked key OpenRouter shows in listings (`sk-or-v1-abc...xyz`).
    pub label: String,
    pub limit: Option<f64>,
    pub limit_reset: Option<String>,
    pub disabled: bool,
    pub usage: f64,
    pub created_at: String,
    pub updated_at: Option<String>,
    /// The secret, as the create answered it: kept out of `/_fake/state` and `Debug`.
    #[serde(skip)]
    pub key: String,
}

impl std::fmt::Debug for KeyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyView")
            .field("hash", &self.hash)
            .field("name", &self.name)
            .field("label", &self.label)
            .field("limit", &self.limit)
            .field("limit_reset", &self.limit_reset)
            .field("disabled", &self.disabled)
            .field("usage", &self.usage)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl KeyView {
    /// The key object of the API's answers (without the secret).
    fn json(&self) -> Value {
        json!({
            "hash": self.hash,
            "name": self.name,
            "label": self.label,
            "disabled": self.disabled,
            "limit": self.limit,
            "limit_remaining": self.limit.map(|limit| (limit - self.usage).max(0.0)),
            "limit_reset": self.limit_reset,
            "include_byok_in_limit": false,
            "usage": self.usage,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

#[derive(Default)]
struct World {
    /// Creation order.
    keys: Vec<KeyView>,
    /// Usage of deleted keys, still in the account's total.
    retired_usage: f64,
}

impl World {
    fn key_mut(&mut self, hash: &str) -> Option<&mut KeyView> {
        self.keys.iter_mut().find(|k| k.hash == hash)
    }

    fn create(&mut self, name: String, limit: Option<f64>, limit_reset: Option<String>) -> KeyView {
        let secret = random_hex(32);
        let key = KeyView {
            hash: random_hex(32),
            name,
            label: format!(
                "sk-or-v1-{}...{}",
                &secret[..3],
                &secret[secret.len() - 3..]
            ),
            limit,
            limit_reset,
            disabled: false,
            usage: 0.0,
            created_at: now(),
            updated_at: None,
            key: format!("sk-or-v1-{secret}"),
        };
        self.keys.push(key.clone());
        key
    }
}

struct Inner {
    config: OpenRouterConfig,
    world: Mutex<World>,
    faults: Faults,
}

impl Inner {
    /// The state, also after a panic elsewhere (a failed test must still be able to clean up).
    fn world(&self) -> MutexGuard<'_, World> {
        unpoisoned(&self.world)
    }

    fn not_found(&self) -> Response {
        self.error(StatusCode::NOT_FOUND, "Key not found")
    }
}

impl Fake for Inner {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_in(headers, std::slice::from_ref(&self.config.management_key))
    }

    fn error(&self, status: StatusCode, message: &str) -> Response {
        (
            status,
            Json(json!({"error": {"code": status.as_u16(), "message": message}})),
        )
            .into_response()
    }

    fn state(&self) -> Value {
        json!({"keys": self.world().keys})
    }
}

/// A running fake; its server stops when it is dropped.
pub struct OpenRouterFake {
    inner: Arc<Inner>,
    server: Server,
}

impl OpenRouterFake {
    pub async fn start(config: OpenRouterConfig) -> Self {
        let port = config.port;
        let inner = Arc::new(Inner {
            config,
            world: Mutex::new(World::default()),
            faults: Faults::default(),
        });
        let routes = Router::new()
            .route("/api/v1/keys", get(list_keys).post(create_key))
            .route(
                "/api/v1/keys/{hash}",
                get(get_key).patch(update_key).delete(delete_key),
            )
            .route("/api/v1/credits", get(credits));
        let server = Server::rest("openrouter", port, inner.clone(), routes).await;
        Self { inner, server }
    }

    /// The API base, `http://127.0.0.1:PORT/api/v1` (what `OPENROUTER_API_URL` takes).
    pub fn url(&self) -> String {
        format!("{}/api/v1", self.server.base_url())
    }

    pub fn management_key(&self) -> &str {
        &self.inner.config.management_key
    }

    /// Every live key, oldest first (disabled ones too).
    pub fn keys(&self) -> Vec<KeyView> {
        self.inner.world().keys.clone()
    }

    pub fn key(&self, hash: &str) -> Option<KeyView> {
        self.inner
            .world()
            .keys
            .iter()
            .find(|k| k.hash == hash)
            .cloned()
    }

    /// A key nobody asked this fake's API for (someone used the dashboard, or a create whose
    /// reply never came back).
    pub fn create_key_behind_our_back(&self, name: &str) -> KeyView {
        self.inner.world().create(name.to_string(), None, None)
    }

    /// Deletes a key without the API (someone revoked it in the dashboard); false if there is
    /// no such key.
    pub fn delete_key_behind_our_back(&self, hash: &str) -> bool {
        let mut world = self.inner.world();
        let before = world.keys.len();
        world.keys.retain(|k| k.hash != hash);
        world.keys.len() < before
    }

    /// Sets a key's usage in dollars (what its agent spent); false if there is no such key.
    pub fn set_usage(&self, hash: &str, usage: f64) -> bool {
        let mut world = self.inner.world();
        match world.key_mut(hash) {
            Some(key) => {
                key.usage = usage;
                true
            }
            None => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

fn limit_field(body: &Map<String, Value>) -> Result<Change<f64>, String> {
    match body.get("limit") {
        None => Ok(Change::Keep),
        Some(Value::Null) => Ok(Change::Clear),
        Some(value) => match value.as_f64() {
            Some(limit) if limit >= 0.0 => Ok(Change::Set(limit)),
            _ => Err("limit must be a non-negative number or null".into()),
        },
    }
}

fn limit_reset_field(body: &Map<String, Value>) -> Result<Change<String>, String> {
    match body.get("limit_reset") {
        None => Ok(Change::Keep),
        Some(Value::Null) => Ok(Change::Clear),
        Some(Value::String(reset)) if ["daily", "weekly", "monthly"].contains(&reset.as_str()) => {
            Ok(Change::Set(reset.clone()))
        }
        Some(_) => Err("limit_reset must be one of daily, weekly, monthly or null".into()),
    }
}

fn change<T>(slot: &mut Option<T>, change: Change<T>) {
    match change {
        Change::Keep => {}
        Change::Clear => *slot = None,
        Change::Set(value) => *slot = Some(value),
    }
}

async fn create_key(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let read = || -> Result<(String, Option<f64>, Option<String>), String> {
        let body = json_body(&body)?;
        let name = match opt_str(&body, "name")? {
            Some(name) if !name.trim().is_empty() => name.to_string(),
            _ => return Err("name is required".into()),
        };
        let mut limit = None;
        change(&mut limit, limit_field(&body)?);
        let mut limit_reset = None;
        change(&mut limit_reset, limit_reset_field(&body)?);
        Ok((name, limit, limit_reset))
    };
    let (name, limit, limit_reset) = match read() {
        Ok(fields) => fields,
        Err(message) => return inner.bad_request(&message),
    };
    let key = inner.world().create(name, limit, limit_reset);
    (
        StatusCode::CREATED,
        Json(json!({"data": key.json(), "key": key.key})),
    )
        .into_response()
}

async fn list_keys(
    State(inner): State<Arc<Inner>>,
    fault: Option<axum::Extension<Fault>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let read = || -> Result<(usize, bool), String> {
        let params = Params::read(query)?;
        let offset = params.uint("offset")?.unwrap_or(0);
        let include_disabled = match params.get("include_disabled") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "include_disabled must be true or false, not {other:?}"
                ))
            }
        };
        Ok((offset, include_disabled))
    };
    let (offset, include_disabled) = match read() {
        Ok(params) => params,
        Err(message) => return inner.bad_request(&message),
    };
    let world = inner.world();
    let page: Vec<Value> = world
        .keys
        .iter()
        .filter(|k| include_disabled || !k.disabled)
        .skip(offset + shifted_by(fault))
        .take(inner.config.page_size)
        .map(KeyView::json)
        .collect();
    Json(json!({"data": page})).into_response()
}

async fn get_key(
    State(inner): State<Arc<Inner>>,
    hash: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(hash)) = hash else {
        return inner.not_found();
    };
    let world = inner.world();
    match world.keys.iter().find(|k| k.hash == hash) {
        Some(key) => Json(json!({"data": key.json()})).into_response(),
        None => inner.not_found(),
    }
}

async fn update_key(
    State(inner): State<Arc<Inner>>,
    hash: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let Ok(Path(hash)) = hash else {
        return inner.not_found();
    };
    type Patch = (Option<String>, Option<bool>, Change<f64>, Change<String>);
    let read = || -> Result<Patch, String> {
        let body = json_body(&body)?;
        let name = opt_str(&body, "name")?.map(str::to_string);
        let disabled = match body.get("disabled") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(disabled)) => Some(*disabled),
            Some(_) => return Err("disabled must be a boolean".into()),
        };
        Ok((
            name,
            disabled,
            limit_field(&body)?,
            limit_reset_field(&body)?,
        ))
    };
    let (name, disabled, limit, limit_reset) = match read() {
        Ok(patch) => patch,
        Err(message) => return inner.bad_request(&message),
    };
    let mut world = inner.world();
    let Some(key) = world.key_mut(&hash) else {
        return inner.not_found();
    };
    if let Some(name) = name {
        key.name = name;
    }
    if let Some(disabled) = disabled {
        key.disabled = disabled;
    }
    change(&mut key.limit, limit);
    change(&mut key.limit_reset, limit_reset);
    key.updated_at = Some(now());
    Json(json!({"data": key.json()})).into_response()
}

async fn delete_key(
    State(inner): State<Arc<Inner>>,
    hash: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(hash)) = hash else {
        return inner.not_found();
    };
    let mut world = inner.world();
    let Some(at) = world.keys.iter().position(|k| k.hash == hash) else {
        return inner.not_found();
    };
    let key = world.keys.remove(at);
    world.retired_usage += key.usage;
    Json(json!({"data": {"success": true}})).into_response()
}

async fn credits(State(inner): State<Arc<Inner>>) -> Response {
    let world = inner.world();
    let usage = world.retired_usage + world.keys.iter().map(|k| k.usage).sum::<f64>();
    Json(json!({"data": {
        "total_credits": inner.config.total_credits,
        "total_usage": usage,
    }}))
    .into_response()
}

impl Controls for OpenRouterFake {
    fn server(&self) -> &Server {
        &self.server
    }

    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
