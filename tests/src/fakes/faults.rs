//! Fault injection shared by every fake: what goes wrong ([`Fault`]), which requests it hits
//! ([`Scope`]), the counts a test reads back ([`FakeStats`]), how a fault is played out on one
//! request ([`apply`]), and the control routes ([`control_routes`]).
//!
//! Every request a fake accepts is named by an **op**, the name [`Scope::Next`] matches and
//! [`FakeStats::requests`] counts under:
//! - GraphQL fakes (Railway): the root field, `serviceCreate`.
//! - REST fakes: the method, a space and the route's path template as the fake declares it, with
//!   path parameters in braces rather than the ids of the request: `POST /api/v1/keys`,
//!   `PATCH /api/v1/keys/{hash}`, `DELETE /v0/inboxes/{inbox_id}`,
//!   `PATCH /v2/phone_numbers/{id}`. [`rest_gate`] derives it from axum's matched path.
//!
//! Control routes (not authenticated, never faulted, not counted):
//! - `POST /_fake/faults` `{"fault": <Fault>, "scope": <Scope>}`; `DELETE /_fake/faults` clears;
//! - `GET /_fake/stats` → [`FakeStats`]; `GET /_fake/state` → what the fake holds.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::latency::Draws;

/// What goes wrong with a request. JSON (`POST /_fake/faults`): `{"kind": "RateLimited",
/// "retryAfterSecs": 2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum Fault {
    /// HTTP 503 with an HTML body, as a proxy in front of the API answers.
    ServerError,
    /// HTTP 429 with `Retry-After` and the API's error body.
    RateLimited { retry_after_secs: u64 },
    /// A rate limit the API words in its own body: for GraphQL HTTP 200 whose error says so
    /// ("You are creating volumes too quickly" for `volumeCreate`, "Rate limit exceeded"
    /// otherwise); for REST HTTP 429 with the API's error body and no `Retry-After`. Nothing is
    /// done.
    RateLimitMessage,
    /// An internal error in the API's own shape: for GraphQL HTTP 200 with the error "Internal
    /// error"; for REST HTTP 500 with the API's JSON error body. Nothing is done.
    GraphqlError,
    /// The operation runs and is answered after this delay. It runs even if the client gave up
    /// meanwhile, as a real server finishes what it started.
    Slow { ms: u64 },
    /// The connection closes without any response. Nothing is done.
    Drop,
    /// The operation is carried out, then the connection closes without a response.
    LostReply,
    /// A listing answered as if there were nothing: every list in the reply empty, no further
    /// page. What was asked is read, nothing is changed.
    EmptyPage,
    /// A reply whose data is null (Railway's `{"data": {"project": null}}`, a REST `{"data":
    /// null}`), HTTP 200, no error.
    NullData,
    /// An error inside an HTTP 200: the API's error body with a success status. Nothing is done.
    ErrorIn200,
    /// A page of an offset-paged listing (OpenRouter's keys, Telnyx's numbers) read as if `by`
    /// items before it had been deleted meanwhile: the page starts `by` items later, so the items
    /// it should have started with are never seen.
    ShiftedPage { by: usize },
    /// Refused with an error whose message quotes the request back, as some APIs do with a bad
    /// input: for GraphQL HTTP 200 whose error quotes the variables; for REST HTTP 422 whose
    /// error quotes the body. Nothing is done. A client that logs the message unredacted logs
    /// every secret it sent.
    EchoError,
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::ServerError => "ServerError",
            Fault::RateLimited { .. } => "RateLimited",
            Fault::RateLimitMessage => "RateLimitMessage",
            Fault::GraphqlError => "GraphqlError",
            Fault::Slow { .. } => "Slow",
            Fault::Drop => "Drop",
            Fault::LostReply => "LostReply",
            Fault::EchoError => "EchoError",
            Fault::EmptyPage => "EmptyPage",
            Fault::NullData => "NullData",
            Fault::ErrorIn200 => "ErrorIn200",
            Fault::ShiftedPage { .. } => "ShiftedPage",
        }
    }
}

/// Which requests a fault hits. JSON: `{"kind": "Next", "op": "serviceCreate", "count": 1}`,
/// `{"kind": "Next", "op": "POST /api/v1/keys", "count": 1}` or
/// `{"kind": "Rate", "perMille": 100, "seed": 7}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum Scope {
    /// The next `count` requests, or the next `count` of one op (see the module docs).
    Next {
        #[serde(default)]
        op: Option<String>,
        count: u32,
    },
    /// This fraction of all requests, drawn from a generator seeded with `seed`, so the same
    /// sequence of requests meets the same faults.
    Rate { per_mille: u32, seed: u64 },
}

/// Counts since start: requests by op, injected faults by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FakeStats {
    pub requests: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    /// Requests refused for their token (not counted in `requests`).
    pub unauthorized: u64,
}

impl FakeStats {
    pub fn requests_for(&self, op: &str) -> u64 {
        self.requests.get(op).copied().unwrap_or(0)
    }

    pub fn faults_of(&self, kind: &str) -> u64 {
        self.faults.get(kind).copied().unwrap_or(0)
    }
}

enum RuleScope {
    Next { op: Option<String>, remaining: u32 },
    Rate { per_mille: u32, rng: Box<StdRng> },
}

struct Rule {
    fault: Fault,
    scope: RuleScope,
}

#[derive(Default)]
struct Rules {
    rules: Vec<Rule>,
    stats: FakeStats,
}

/// A fake's fault rules and counts, behind their own lock (never held across an await), and the
/// latency every request it accepts waits before it is carried out.
#[derive(Default)]
pub struct Faults(Mutex<Rules>, Mutex<Option<Arc<Draws>>>);

impl Faults {
    /// Every request from now on waits a draw of `latency` first (`None`: none).
    pub fn set_latency(&self, latency: Option<Draws>) {
        *unpoisoned(&self.1) = latency.map(Arc::new);
    }

    /// How long the next request waits before it is carried out.
    pub fn latency(&self) -> Duration {
        let draws = unpoisoned(&self.1).clone();
        draws.map_or(Duration::ZERO, |d| d.next())
    }

    /// The rules, also after a panic elsewhere (a failed test must still be able to clean up).
    fn lock(&self) -> MutexGuard<'_, Rules> {
        unpoisoned(&self.0)
    }

    pub fn inject(&self, fault: Fault, scope: Scope) {
        let scope = match scope {
            Scope::Next { op, count } => RuleScope::Next {
                op,
                remaining: count,
            },
            Scope::Rate { per_mille, seed } => RuleScope::Rate {
                per_mille,
                rng: Box::new(StdRng::seed_from_u64(seed)),
            },
        };
        self.lock().rules.push(Rule { fault, scope });
    }

    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    pub fn stats(&self) -> FakeStats {
        self.lock().stats.clone()
    }

    /// Counts a request refused for its token.
    pub fn unauthorized(&self) {
        self.lock().stats.unauthorized += 1;
    }

    /// Counts a request under `op` without giving it a fault (one the fake could not read).
    pub fn count(&self, op: &str) {
        *self.lock().stats.requests.entry(op.into()).or_default() += 1;
    }

    /// Counts a request under `op` and picks its fault, counted by kind: the first rule whose
    /// scope takes it. Every rate rule draws on every request, so each one's sequence depends
    /// only on its seed and the requests, not on other rules.
    pub fn admit(&self, op: &str) -> Option<Fault> {
        let mut guard = self.lock();
        let Rules { rules, stats } = &mut *guard;
        *stats.requests.entry(op.into()).or_default() += 1;
        let mut chosen = None;
        for rule in rules.iter_mut() {
            match &mut rule.scope {
                RuleScope::Rate { per_mille, rng } => {
                    let hit = rng.gen_range(0..1000) < *per_mille;
                    if hit && chosen.is_none() {
                        chosen = Some(rule.fault.clone());
                    }
                }
                RuleScope::Next {
                    op: only,
                    remaining,
                } => {
                    if chosen.is_none()
                        && *remaining > 0
                        && only.as_deref().is_none_or(|only| only == op)
                    {
                        *remaining -= 1;
                        chosen = Some(rule.fault.clone());
                    }
                }
            }
        }
        rules.retain(|rule| !matches!(rule.scope, RuleScope::Next { remaining: 0, .. }));
        if let Some(fault) = &chosen {
            *stats.faults.entry(fault.kind().into()).or_default() += 1;
        }
        chosen
    }
}

/// What a fake shares with the fault machinery: its rules, its token check, the shape of its
/// errors and a dump of its state.
pub trait Fake: Send + Sync + 'static {
    fn faults(&self) -> &Faults;

    /// Whether the request carries an accepted credential.
    fn authorized(&self, headers: &HeaderMap) -> bool;

    /// An error answer in the API's own shape.
    fn error(&self, status: StatusCode, message: &str) -> Response;

    /// Everything the fake holds, for `GET /_fake/state`.
    fn state(&self) -> Value;

    /// The answer to [`Fault::RateLimitMessage`] for `op`.
    fn rate_limit_message(&self, _op: &str) -> Response {
        self.error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded")
    }

    /// A request the API refuses as malformed.
    fn bad_request(&self, message: &str) -> Response {
        self.error(StatusCode::BAD_REQUEST, message)
    }

    /// The answer to [`Fault::GraphqlError`].
    fn internal_error(&self) -> Response {
        self.error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
    }
}

/// A fake's state behind its lock, also after a panic elsewhere: a failed test must still be able
/// to clean up.
pub fn unpoisoned<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `headers` carry `Authorization: Bearer <one of tokens>`.
pub fn bearer_in(headers: &HeaderMap, tokens: &[String]) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| tokens.iter().any(|t| t == token))
}

/// A response hyper cannot send: its body fails before the first byte, so hyper aborts the
/// connection and the client sees it closed with no reply.
pub fn dropped_connection() -> Response {
    let body = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "injected fault: connection dropped",
        ))
    });
    Response::new(Body::from_stream(body))
}

/// Plays `fault` out on a request whose operation is `run` (not started unless the fault lets
/// it run).
pub async fn apply<A, F>(api: &A, fault: Option<Fault>, op: &str, run: F) -> Response
where
    A: Fake + ?Sized,
    F: Future<Output = Response>,
{
    match fault {
        None => run.await,
        Some(Fault::ServerError) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        )
            .into_response(),
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response = api.error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        Some(Fault::RateLimitMessage) => api.rate_limit_message(op),
        Some(Fault::GraphqlError) => api.internal_error(),
        Some(Fault::Slow { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            run.await
        }
        Some(Fault::Drop) => dropped_connection(),
        Some(Fault::LostReply) => {
            let _ = run.await;
            dropped_connection()
        }
        Some(Fault::EmptyPage) => reshape(run.await, emptied).await,
        Some(Fault::NullData) => reshape(run.await, nulled).await,
        Some(Fault::ErrorIn200) => {
            let mut response = api.error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error");
            *response.status_mut() = StatusCode::OK;
            response
        }
        // The handler of an offset-paged listing reads it from the request's extensions.
        Some(Fault::ShiftedPage { .. }) => run.await,
        // The request is not at hand here: the fake's front door quotes it ([`echo_error`]).
        Some(Fault::EchoError) => api.error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request"),
    }
}

/// `response` with its JSON body rewritten by `change` (a body that is not JSON is left).
async fn reshape(response: Response, change: fn(Value) -> Value) -> Response {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(body) => (status, Json(change(body))).into_response(),
        Err(_) => (status, bytes).into_response(),
    }
}

/// Every list empty, and no page after this one.
fn emptied(body: Value) -> Value {
    match body {
        Value::Array(_) => Value::Array(Vec::new()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match k.as_str() {
                    "hasNextPage" => (k, Value::Bool(false)),
                    "next_page_token" | "endCursor" => (k, Value::Null),
                    _ => (k, emptied(v)),
                })
                .collect(),
        ),
        other => other,
    }
}

/// GraphQL: every root field of `data` null; REST: every top-level field null.
fn nulled(body: Value) -> Value {
    let null_all = |map: serde_json::Map<String, Value>| -> Value {
        Value::Object(map.into_iter().map(|(k, _)| (k, Value::Null)).collect())
    };
    match body {
        Value::Object(mut map) => match map.remove("data") {
            Some(Value::Object(data)) => {
                map.insert("data".into(), null_all(data));
                Value::Object(map)
            }
            Some(data) => {
                map.insert("data".into(), data);
                null_all(map)
            }
            None => null_all(map),
        },
        other => other,
    }
}

/// How many items a page of an offset-paged listing skips for a [`Fault::ShiftedPage`].
pub fn shifted_by(fault: Option<axum::Extension<Fault>>) -> usize {
    match fault {
        Some(axum::Extension(Fault::ShiftedPage { by })) => by,
        _ => 0,
    }
}

/// The answer to [`Fault::EchoError`]: the error quotes what the request sent.
pub fn echo_error<A: Fake + ?Sized>(api: &A, sent: &str) -> Response {
    api.error(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("Invalid request: {sent}"),
    )
}

/// Runs `handle` on its own task, so a client that hangs up (a timeout, say) does not cancel an
/// operation halfway through a delay: a real server finishes what it started.
pub async fn detached<F>(handle: F) -> Response
where
    F: Future<Output = Response> + Send + 'static,
{
    match tokio::spawn(handle).await {
        Ok(response) => response,
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "fake: handler panicked").into_response(),
    }
}

/// Middleware for a REST fake's API routes (add it with `Router::route_layer`, so only matched
/// routes pass through it and the op is the matched template): checks the Bearer token, counts
/// the request under its op and plays out its fault around the handler.
pub async fn rest_gate<A: Fake>(
    State(api): State<Arc<A>>,
    path: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    if !api.authorized(request.headers()) {
        api.faults().unauthorized();
        return api.error(StatusCode::UNAUTHORIZED, "Invalid or missing API key");
    }
    // Every route layer call sees a matched path; the raw path is only a fallback.
    let template = match &path {
        Some(path) => path.as_str(),
        None => request.uri().path(),
    };
    let op = format!("{} {template}", request.method());
    let fault = api.faults().admit(&op);
    let latency = api.faults().latency();
    if fault == Some(Fault::EchoError) {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let sent = format!(
            "{}?{} {}",
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            String::from_utf8_lossy(&body)
        );
        return echo_error(&*api, &sent);
    }
    if let Some(fault) = &fault {
        request.extensions_mut().insert(fault.clone());
    }
    detached(async move {
        tokio::time::sleep(latency).await;
        apply(&*api, fault, &op, next.run(request)).await
    })
    .await
}

#[derive(Debug, Deserialize)]
struct FaultRequest {
    fault: Fault,
    scope: Scope,
}

/// `/_fake/faults` (POST adds a rule, DELETE clears them), `/_fake/stats` and `/_fake/state`.
pub fn control_routes<A: Fake>() -> Router<Arc<A>> {
    Router::new()
        .route(
            "/_fake/faults",
            post(inject_route::<A>).delete(clear_faults_route::<A>),
        )
        .route("/_fake/stats", get(stats_route::<A>))
        .route("/_fake/state", get(state_route::<A>))
}

async fn inject_route<A: Fake>(
    State(api): State<Arc<A>>,
    body: Result<Json<FaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => {
            api.faults().inject(request.fault, request.scope);
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": e.body_text()})),
        )
            .into_response(),
    }
}

async fn clear_faults_route<A: Fake>(State(api): State<Arc<A>>) -> Response {
    api.faults().clear();
    Json(json!({"ok": true})).into_response()
}

async fn stats_route<A: Fake>(State(api): State<Arc<A>>) -> Response {
    Json(api.faults().stats()).into_response()
}

async fn state_route<A: Fake>(State(api): State<Arc<A>>) -> Response {
    Json(api.state()).into_response()
}

/// A fake's HTTP server on loopback; it stops accepting when dropped, and its open connections
/// close once their requests are answered.
pub struct Server {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `127.0.0.1:port` (0 = any free port) and serves `app`. Panics if the port is taken:
    /// a fake that cannot start leaves the test nothing to do.
    pub async fn start(what: &str, port: u16, app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("bind the {what} fake on port {port}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{what} fake address: {e}"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }

    /// Serves a REST fake: `routes` behind its credential check and fault injection
    /// ([`rest_gate`]), beside the `/_fake/*` control routes.
    pub async fn rest<A: Fake>(what: &str, port: u16, api: Arc<A>, routes: Router<Arc<A>>) -> Self {
        let app = routes
            .route_layer(axum::middleware::from_fn_with_state(
                api.clone(),
                rest_gate::<A>,
            ))
            .merge(control_routes())
            .with_state(api);
        Self::start(what, port, app).await
    }

    /// Stops accepting now (dropping does it too).
    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Aborting the accept loop drops the listener and, with it, the signal every connection
        // task watches: each finishes its request in flight and closes.
        self.task.abort();
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What every fake offers the test that runs it: its control routes' address and its faults.
pub trait Controls {
    fn server(&self) -> &Server;
    fn faults(&self) -> &Faults;

    /// `http://127.0.0.1:PORT`, for the `/_fake/...` control routes.
    fn base_url(&self) -> String {
        self.server().base_url()
    }

    fn inject(&self, fault: Fault, scope: Scope) {
        self.faults().inject(fault, scope);
    }

    fn clear_faults(&self) {
        self.faults().clear();
    }

    /// Every request waits a draw of `latency` before it is carried out.
    fn set_latency(&self, latency: Option<Draws>) {
        self.faults().set_latency(latency);
    }

    fn stats(&self) -> FakeStats {
        self.faults().stats()
    }
}
