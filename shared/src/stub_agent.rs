//! The reference runtime: serves the agent runtime contract on loopback with injectable faults,
//! in each protocol of the seeds (`RUNTIME_PROTOCOL`: `pool`, `pool-status`, `convos`; see
//! [`crate::runtime`]). It serves the chosen protocol's routes only, so a pool that speaks another
//! one fails loudly.
//!
//! The local provider starts it as `agentpool stub-agent`; tests and benchmarks measure against
//! it. Settings come from the environment (the provider passes them explicitly, never the pool's
//! own environment):
//!
//! | variable | meaning |
//! |---|---|
//! | `OPENCLAW_GATEWAY_TOKEN` | required; Bearer token for every POST (and, as the Convos gateway, for `/convos/status`) |
//! | `RUNTIME_PROTOCOL` | `pool` (default), `pool-status` or `convos` |
//! | `STUB_READY_DELAY_MS` | readiness is refused until this long after start (default 0) |
//! | `STUB_PROVISION_DELAY_MS` | `/pool/provision` waits this long before answering (default 0) |
//! | `STUB_HEALTH_DELAY_MS` | a readiness check waits this long before answering (default 0) |
//! | `STUB_FAIL_PROVISION` | `true`: every provision answers 500 |
//! | `STUB_REFUSE_FIRST` | the first n provisions answer 503, as a gateway just booted does |
//! | `STUB_CONVERSATION` | a conversation already bound at start (an instance that is not clean) |
//! | `STUB_SHARED` | `true`: answers for many instances, a fresh conversation per provision (benchmarks) |
//! | `STUB_START_DELAY_MS` | wait this long before listening (a slow creation, default 0) |
//! | `STUB_SEED` | seeds the draws of delays given as ranges, mixed with `--name` (default random) |
//!
//! Every delay is a number of milliseconds or a range `LOW..HIGH`, drawn anew for each use (the
//! boot delays once) from a generator seeded with `STUB_SEED` and the agent's name: a test's
//! latency profile (`agentpool_tests::latency`) gives a fleet of stubs realistic, varied and
//! reproducible timings.
//!
//! Faults can also be switched at run time with `POST /stub/faults` (Bearer):
//! `{"provision": "fail"|"ok", "health": "fail"|"ok", "exit": true, "provisionDelayMs": n,
//! "healthDelayMs": n}`. `GET /stub/stats` says how many health checks are being answered, so a
//! test can wait for a tick to be in the middle of one, and how many provisions were refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use crate::config::{secrets_match, RuntimeProtocol};

/// A delay in milliseconds, fixed (`LOW == HIGH`) or drawn from `LOW..=HIGH` at each use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delay {
    pub low_ms: u64,
    pub high_ms: u64,
}

impl Delay {
    pub fn fixed(ms: u64) -> Self {
        Self {
            low_ms: ms,
            high_ms: ms,
        }
    }

    /// `250` or `50..300`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|e| format!("{t:?} is not a number of milliseconds: {e}"))
        };
        match text.split_once("..") {
            None => number(text).map(Self::fixed),
            Some((low, high)) => {
                let (low_ms, high_ms) = (number(low)?, number(high)?);
                if low_ms > high_ms {
                    return Err(format!("{text:?}: the range ends before it starts"));
                }
                Ok(Self { low_ms, high_ms })
            }
        }
    }

    fn draw(self, rng: &Mutex<StdRng>) -> Duration {
        if self.low_ms == self.high_ms {
            return Duration::from_millis(self.low_ms);
        }
        let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
        Duration::from_millis(rng.gen_range(self.low_ms..=self.high_ms))
    }
}

#[derive(Debug, Clone)]
pub struct StubSettings {
    pub gateway_token: String,
    pub ready_delay: Delay,
    pub provision_delay: Delay,
    pub health_delay: Delay,
    pub fail_provision: bool,
    pub shared: bool,
    pub start_delay: Delay,
    pub protocol: RuntimeProtocol,
    pub refuse_first: u64,
    pub conversation: Option<String>,
    pub seed: u64,
}

fn flag(name: &str) -> bool {
    matches!(std::env::var(name).as_deref(), Ok("true" | "1"))
}

impl StubSettings {
    pub fn from_env() -> Result<Self, String> {
        let token = std::env::var("OPENCLAW_GATEWAY_TOKEN")
            .map_err(|_| "OPENCLAW_GATEWAY_TOKEN is required".to_string())?;
        if token.is_empty() {
            return Err("OPENCLAW_GATEWAY_TOKEN is empty".into());
        }
        let millis = |name: &str| -> Result<Delay, String> {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => Delay::parse(&v).map_err(|e| format!("{name}: {e}")),
                _ => Ok(Delay::default()),
            }
        };
        let seed = match std::env::var("STUB_SEED") {
            Ok(v) if !v.is_empty() => v.parse().map_err(|e| format!("STUB_SEED: {e}"))?,
            _ => rand::thread_rng().gen(),
        };
        Ok(Self {
            gateway_token: token,
            ready_delay: millis("STUB_READY_DELAY_MS")?,
            provision_delay: millis("STUB_PROVISION_DELAY_MS")?,
            health_delay: millis("STUB_HEALTH_DELAY_MS")?,
            fail_provision: flag("STUB_FAIL_PROVISION"),
            shared: flag("STUB_SHARED"),
            start_delay: millis("STUB_START_DELAY_MS")?,
            protocol: match std::env::var("RUNTIME_PROTOCOL") {
                Ok(v) if !v.is_empty() => RuntimeProtocol::parse(&v)
                    .ok_or_else(|| format!("RUNTIME_PROTOCOL: unknown protocol {v:?}"))?,
                _ => RuntimeProtocol::Pool,
            },
            refuse_first: match std::env::var("STUB_REFUSE_FIRST") {
                Ok(v) if !v.is_empty() => {
                    v.parse().map_err(|e| format!("STUB_REFUSE_FIRST: {e}"))?
                }
                _ => 0,
            },
            conversation: std::env::var("STUB_CONVERSATION")
                .ok()
                .filter(|v| !v.is_empty()),
            seed,
        })
    }

    /// Each agent draws its own delays: the seed mixed with its name (FNV-1a), reproducibly.
    pub fn for_agent(mut self, name: &str) -> Self {
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.seed ^= hash;
        self
    }
}

struct Stub {
    token: String,
    ready_at: Instant,
    fail_provision: AtomicBool,
    fail_health: AtomicBool,
    health_delay: Mutex<Delay>,
    provision_delay: Mutex<Delay>,
    rng: Mutex<StdRng>,
    health_in_flight: AtomicU64,
    /// Provisions still to refuse with 503, and how many were refused.
    refuse_left: AtomicU64,
    refused: AtomicU64,
    /// One conversation per agent: a second provision is refused, which makes a double claim loud.
    conversation: Mutex<Option<String>>,
    /// Standing in for many agents: every provision is a first one.
    shared: bool,
    protocol: RuntimeProtocol,
    exit: tokio::sync::Notify,
}

impl Stub {
    fn delay(&self, which: &Mutex<Delay>) -> Duration {
        let delay = *which.lock().unwrap_or_else(|e| e.into_inner());
        delay.draw(&self.rng)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| secrets_match(given, &self.token))
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"ok": false, "error": "bad gateway token"})),
    )
        .into_response()
}

/// Counts a health request in flight for as long as it lives (a dropped request included).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn health(State(stub): State<Arc<Stub>>, headers: HeaderMap) -> Response {
    // The Convos gateway asks for its token on `/convos/status` too; shared stubs stand in for
    // agents with many tokens.
    if stub.protocol == RuntimeProtocol::Convos && !stub.shared && !stub.authorized(&headers) {
        return unauthorized();
    }
    let _in_flight = InFlight::enter(&stub.health_in_flight);
    let delay = stub.delay(&stub.health_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let ready = Instant::now() >= stub.ready_at && !stub.fail_health.load(Ordering::Relaxed);
    let conversation = match stub.conversation.lock() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    // Shared stubs stand in for many agents: no one conversation is theirs.
    let conversation = if stub.shared { None } else { conversation };
    if stub.protocol == RuntimeProtocol::Convos {
        // The gateway answers 200 and says whether it is ready.
        return Json(json!({
            "ready": ready,
            "conversation": conversation.map(|id| json!({"id": id})),
            "streaming": ready,
        }))
        .into_response();
    }
    let body = json!({
        "ready": ready,
        "version": env!("CARGO_PKG_VERSION"),
        "runtime": "agentpool-stub",
        "conversationId": conversation,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProvisionBody {
    agent_name: String,
    #[allow(dead_code)] // Part of the contract; the stub has no model to instruct.
    instructions: String,
    join_url: Option<String>,
}

/// `POST /convos/conversation`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConvosCreateBody {
    #[allow(dead_code)] // The conversation's name; the stub has no conversation to name.
    name: String,
    profile_name: String,
    #[allow(dead_code)]
    instructions: String,
}

/// `POST /convos/join`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConvosJoinBody {
    invite_url: String,
    profile_name: String,
    #[allow(dead_code)]
    instructions: String,
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn failure(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"ok": false, "error": error}))).into_response()
}

struct Provisioned {
    conversation_id: String,
    invite_url: String,
    joined: bool,
}

/// What every protocol's provision does: auth, faults, one conversation per agent.
async fn provide(
    stub: &Stub,
    headers: &HeaderMap,
    agent_name: Option<&str>,
    join_url: Option<String>,
) -> Result<Provisioned, Response> {
    if !stub.authorized(headers) {
        return Err(unauthorized());
    }
    let Some(agent_name) = agent_name else {
        return Err(failure(StatusCode::BAD_REQUEST, "bad provision body"));
    };
    let refuse = stub
        .refuse_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refuse {
        stub.refused.fetch_add(1, Ordering::SeqCst);
        return Err(failure(StatusCode::SERVICE_UNAVAILABLE, "gateway starting"));
    }
    let delay = stub.delay(&stub.provision_delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if stub.fail_provision.load(Ordering::Relaxed) {
        return Err(failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected provision failure",
        ));
    }
    let mut conversation = match stub.conversation.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if conversation.is_some() && !stub.shared {
        return Err(failure(StatusCode::CONFLICT, "already provisioned"));
    }
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let fresh_id = hex::encode(bytes);
    let provisioned = match join_url {
        Some(join_url) => Provisioned {
            conversation_id: join_url
                .split_once("i=")
                .map(|(_, id)| id.to_string())
                .unwrap_or(fresh_id),
            invite_url: join_url,
            joined: true,
        },
        None => Provisioned {
            invite_url: format!("https://convos.example/v2?i={fresh_id}"),
            conversation_id: fresh_id,
            joined: false,
        },
    };
    *conversation = Some(provisioned.conversation_id.clone());
    tracing::info!(
        %agent_name,
        conversation_id = %provisioned.conversation_id,
        joined = provisioned.joined,
        "provisioned"
    );
    Ok(provisioned)
}

/// `POST /pool/provision` (protocols `pool` and `pool-status`).
async fn provision(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    body: Body<ProvisionBody>,
) -> Response {
    let body = body.ok().map(|Json(b)| b);
    let name = body.as_ref().map(|b| b.agent_name.as_str());
    let join_url = body.as_ref().and_then(|b| b.join_url.clone());
    match provide(&stub, &headers, name, join_url).await {
        Ok(p) => Json(json!({
            "ok": true,
            "inviteUrl": p.invite_url,
            "conversationId": p.conversation_id,
            "joined": p.joined,
            "status": if p.joined { "joined" } else { "created" },
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `POST /convos/conversation`.
async fn convos_create(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    body: Body<ConvosCreateBody>,
) -> Response {
    let name = body.as_ref().ok().map(|Json(b)| b.profile_name.as_str());
    match provide(&stub, &headers, name, None).await {
        Ok(p) => Json(json!({"inviteUrl": p.invite_url, "conversationId": p.conversation_id}))
            .into_response(),
        Err(response) => response,
    }
}

/// `POST /convos/join`.
async fn convos_join(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    body: Body<ConvosJoinBody>,
) -> Response {
    let body = body.ok().map(|Json(b)| b);
    let name = body.as_ref().map(|b| b.profile_name.as_str());
    let join_url = body.as_ref().map(|b| b.invite_url.clone());
    match provide(&stub, &headers, name, join_url).await {
        Ok(p) => Json(json!({"conversationId": p.conversation_id})).into_response(),
        Err(response) => response,
    }
}

async fn stats(State(stub): State<Arc<Stub>>) -> Response {
    Json(json!({
        "healthInFlight": stub.health_in_flight.load(Ordering::SeqCst),
        "refused": stub.refused.load(Ordering::SeqCst),
    }))
    .into_response()
}

async fn restart(State(stub): State<Arc<Stub>>, headers: HeaderMap) -> Response {
    if !stub.authorized(&headers) {
        return unauthorized();
    }
    Json(json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Faults {
    provision: Option<Switch>,
    health: Option<Switch>,
    provision_delay_ms: Option<u64>,
    health_delay_ms: Option<u64>,
    #[serde(default)]
    exit: bool,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Switch {
    Ok,
    Fail,
}

async fn faults(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    body: Result<Json<Faults>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !stub.authorized(&headers) {
        return unauthorized();
    }
    let Ok(Json(faults)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "bad faults body"})),
        )
            .into_response();
    };
    if let Some(switch) = faults.provision {
        stub.fail_provision
            .store(matches!(switch, Switch::Fail), Ordering::Relaxed);
    }
    if let Some(switch) = faults.health {
        stub.fail_health
            .store(matches!(switch, Switch::Fail), Ordering::Relaxed);
    }
    for (ms, delay) in [
        (faults.health_delay_ms, &stub.health_delay),
        (faults.provision_delay_ms, &stub.provision_delay),
    ] {
        if let Some(ms) = ms {
            *delay.lock().unwrap_or_else(|e| e.into_inner()) = Delay::fixed(ms);
        }
    }
    if faults.exit {
        stub.exit.notify_one();
    }
    Json(json!({"ok": true})).into_response()
}

/// Where a stub agent announces itself to the local provider.
pub struct Announce {
    pub name: String,
    pub record: std::path::PathBuf,
}

/// Binds `addr`, writes its record (if asked), prints `LISTENING <addr>` on stdout, serves until
/// asked to exit or killed.
pub async fn run(
    addr: SocketAddr,
    settings: StubSettings,
    announce: Option<Announce>,
) -> std::io::Result<()> {
    let rng = Mutex::new(StdRng::seed_from_u64(settings.seed));
    let start_delay = settings.start_delay.draw(&rng);
    let ready_delay = settings.ready_delay.draw(&rng);
    let stub = Arc::new(Stub {
        token: settings.gateway_token,
        ready_at: Instant::now() + ready_delay,
        fail_provision: AtomicBool::new(settings.fail_provision),
        fail_health: AtomicBool::new(false),
        health_delay: Mutex::new(settings.health_delay),
        provision_delay: Mutex::new(settings.provision_delay),
        rng,
        health_in_flight: AtomicU64::new(0),
        refuse_left: AtomicU64::new(settings.refuse_first),
        refused: AtomicU64::new(0),
        conversation: Mutex::new(settings.conversation),
        shared: settings.shared,
        protocol: settings.protocol,
        exit: tokio::sync::Notify::new(),
    });
    let app = match settings.protocol {
        RuntimeProtocol::Pool => Router::new()
            .route("/pool/health", get(health))
            .route("/pool/provision", post(provision))
            .route("/pool/restart", post(restart)),
        RuntimeProtocol::PoolStatus => Router::new()
            .route("/pool/status", get(health))
            .route("/pool/provision", post(provision))
            .route("/pool/restart", post(restart)),
        RuntimeProtocol::Convos => Router::new()
            .route("/convos/status", get(health))
            .route("/convos/conversation", post(convos_create))
            .route("/convos/join", post(convos_join)),
    };
    let app = app
        .route("/stub/faults", post(faults))
        .route("/stub/stats", get(stats))
        .with_state(stub.clone());
    tokio::time::sleep(start_delay).await;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    if let Some(announce) = announce {
        crate::providers::local::write_record(
            &announce.record,
            &announce.name,
            &format!("http://{local}"),
        )?;
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {local}")?;
        out.flush()?;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = stub.exit.notified() => {}
                _ = crate::shutdown_signal() => {}
            }
        })
        .await
}
