use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::Request;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use agentpool_core::config::{ProviderKind, RailwayLayout, RailwaySource};
use agentpool_core::creation;
use agentpool_core::domain::{Actor, Instance, InstanceStatus};
use agentpool_core::gate::Gate;
use agentpool_core::heartbeat::{self, Round};
use agentpool_core::operator;
use agentpool_core::overview::{self, Cursor, PublicAgent};
use agentpool_core::tick::{self, Mode, TickReport};
use agentpool_core::Pool;
use tokio_util::sync::CancellationToken;

use crate::auth::{identify, Caller, Presented};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, OptionalJsonBody, Query};
use crate::state::AppState;

/// The most instances one replenish or drain request may ask for.
const MAX_BATCH: u32 = 100;

/// Instances by status; every status is there, with 0 if none.
pub type Counts = BTreeMap<InstanceStatus, i64>;

async fn counts_of(state: &AppState) -> ApiResult<Counts> {
    Ok(overview::counts(&state.pool).await?)
}

/// `GET /api/pool/counts` (public).
#[utoipa::path(get, path = "/api/pool/counts", tag = "pool",
    responses((status = 200, description = "Instances by status", body = BTreeMap<InstanceStatus, i64>)))]
pub async fn counts(State(state): State<AppState>) -> ApiResult<Json<Counts>> {
    counts_of(&state).await.map(Json)
}

/// An instance as an operator sees it. Never the gateway token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    id: String,
    name: String,
    url: Option<String>,
    status: InstanceStatus,
    status_since: DateTime<Utc>,
    agent_name: Option<String>,
    instructions: Option<String>,
    join_url: Option<String>,
    conversation_id: Option<String>,
    invite_url: Option<String>,
    template_id: Option<String>,
    health_failures: i32,
    destroy_attempts: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    claimed_at: Option<DateTime<Utc>>,
}

impl From<&Instance> for InstanceView {
    fn from(i: &Instance) -> Self {
        Self {
            id: i.id.clone(),
            name: i.name.clone(),
            url: i.url.clone(),
            status: i.status,
            status_since: i.status_since,
            agent_name: i.agent_name.clone(),
            instructions: i.instructions.clone(),
            join_url: i.join_url.clone(),
            conversation_id: i.conversation_id.clone(),
            invite_url: i.invite_url.clone(),
            template_id: i.template_id.clone(),
            health_failures: i.health_failures,
            destroy_attempts: i.destroy_attempts,
            last_error: i.last_error.clone(),
            created_at: i.created_at,
            claimed_at: i.claimed_at,
        }
    }
}

/// What anyone may see of an agent: its name, state and times. Closed to other fields, so that
/// the document tells it apart from an [`InstanceView`] (which has all of these and more).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicAgentView {
    agent_name: Option<String>,
    status: InstanceStatus,
    status_since: DateTime<Utc>,
    created_at: DateTime<Utc>,
    claimed_at: Option<DateTime<Utc>>,
}

impl From<&PublicAgent> for PublicAgentView {
    fn from(a: &PublicAgent) -> Self {
        Self {
            agent_name: a.agent_name.clone(),
            status: a.status,
            status_since: a.status_since,
            created_at: a.created_at,
            claimed_at: a.claimed_at,
        }
    }
}

/// One entry of `GET /api/pool/agents`: the operator's view with the API key, else the public one.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AgentView {
    Operator(Box<InstanceView>),
    Public(PublicAgentView),
}

/// A page of agents grouped by status. The fields are in alphabetical order, the order the reply
/// had when it was built as a JSON map.
#[derive(Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentsPage {
    claimed: Vec<AgentView>,
    claiming: Vec<AgentView>,
    crashed: Vec<AgentView>,
    destroying: Vec<AgentView>,
    idle: Vec<AgentView>,
    /// Pass as `after` for the next page; `null` on the last one.
    next_cursor: Option<String>,
    recycling: Vec<AgentView>,
    starting: Vec<AgentView>,
}

impl AgentsPage {
    fn push(&mut self, status: InstanceStatus, view: AgentView) {
        let group = match status {
            InstanceStatus::Starting => &mut self.starting,
            InstanceStatus::Idle => &mut self.idle,
            InstanceStatus::Claiming => &mut self.claiming,
            InstanceStatus::Claimed => &mut self.claimed,
            InstanceStatus::Crashed => &mut self.crashed,
            InstanceStatus::Destroying => &mut self.destroying,
            InstanceStatus::Recycling => &mut self.recycling,
        };
        group.push(view);
    }
}

/// `?limit=N&after=<nextCursor>` of the listings. Strings, so that a bad value gets our message.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 5000 (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 5000)]
    limit: Option<String>,
    /// The `nextCursor` of the page before.
    #[param(min_length = 1)]
    after: Option<String>,
    /// Only instances in these statuses, comma-separated (`claiming,claimed,crashed`: the agents
    /// in use, wherever they are in the table). Pass the same value with every page.
    #[param(min_length = 1)]
    status: Option<String>,
}

impl PageQuery {
    /// The statuses asked for, if any.
    fn statuses(&self) -> ApiResult<Option<Vec<InstanceStatus>>> {
        let Some(raw) = self.status.as_deref() else {
            return Ok(None);
        };
        raw.split(',')
            .map(|s| {
                s.trim().parse::<InstanceStatus>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_request",
                        "status must be a comma-separated list of instance statuses",
                    )
                })
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Some)
    }

    fn parse(&self) -> ApiResult<(Option<Cursor>, u32)> {
        let limit = match self.limit.as_deref() {
            None => overview::DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=overview::MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!(
                            "limit must be an integer between 1 and {}",
                            overview::MAX_LIMIT
                        ),
                    )
                })?,
        };
        let after = self.after.as_deref().map(Cursor::decode).transpose()?;
        Ok((after, limit))
    }
}

/// `GET /api/pool/agents` (public): a page of instances, grouped by status, and `nextCursor`.
/// With the API key, the operator's view of each.
#[utoipa::path(get, path = "/api/pool/agents", tag = "pool",
    description = "A page of agents grouped by status. Public; with the API key, each entry is \
                   the operator's view of the instance.",
    params(PageQuery),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of agents", body = AgentsPage),
        (status = 400, description = "Bad `limit` or `after`", body = ErrorBody),
        (status = 401, description = "A wrong or malformed API key", body = ErrorBody),
    ))]
pub async fn agents(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
    request: Request<axum::body::Body>,
) -> ApiResult<Json<AgentsPage>> {
    let presented = Presented::of(&state, &request, false)?;
    let caller = identify(&state, presented).await?;
    let (after, limit) = query.parse()?;
    let only = query.statuses()?;
    let only = only.as_deref();
    let mut reply = AgentsPage::default();
    let next = match caller {
        Caller::Operator => {
            let page = overview::operator_page(&state.pool, after.as_ref(), limit, only).await?;
            for instance in &page.items {
                reply.push(
                    instance.status,
                    AgentView::Operator(Box::new(instance.into())),
                );
            }
            page.next
        }
        Caller::Anonymous => {
            let page = overview::public_page(&state.pool, after.as_ref(), limit, only).await?;
            for agent in &page.items {
                reply.push(agent.status, AgentView::Public(agent.into()));
            }
            page.next
        }
    };
    reply.next_cursor = next.map(|cursor| cursor.encode());
    Ok(Json(reply))
}

/// Railway's ids are not secrets (the token is, and is never here). Alphabetical, as in `PoolInfo`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RailwayInfo {
    environment_id: Option<String>,
    /// The image instances run; absent when they are built from `sourceRepo`.
    image: Option<String>,
    layout: RailwayLayout,
    project_id: Option<String>,
    /// The GitHub repo (`owner/name`) instances are built from, if they are.
    source_repo: Option<String>,
    team_id: Option<String>,
}

/// The pool's public facts. The fields are in alphabetical order, the order the reply had when it
/// was built as a JSON map.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolInfo {
    branch: Option<String>,
    environment: String,
    max_total: u32,
    min_idle: u32,
    model: Option<String>,
    /// `local`, `railway` or `sprites`.
    provider: &'static str,
    /// Set with the `railway` provider only.
    railway: Option<RailwayInfo>,
    tick_interval_ms: u64,
    version: &'static str,
}

/// `GET /api/pool/info` (public): nothing secret, by construction. The size is the one in force.
#[utoipa::path(get, path = "/api/pool/info", tag = "pool",
    responses((status = 200, description = "Version, environment, provider and size in force", body = PoolInfo)))]
pub async fn info(State(state): State<AppState>) -> ApiResult<Json<PoolInfo>> {
    let s = &state.pool.settings;
    let size = overview::size_in_force(&state.pool).await?;
    let railway = &s.providers.railway;
    Ok(Json(PoolInfo {
        branch: s.server.railway_git_branch.clone(),
        environment: s.pool.pool_environment.clone(),
        max_total: size.max_total,
        min_idle: size.min_idle,
        model: s.creation.openclaw_primary_model.clone(),
        provider: s.providers.pool_provider.as_str(),
        railway: (s.providers.pool_provider == ProviderKind::Railway).then(|| RailwayInfo {
            environment_id: railway.railway_environment_id.clone(),
            image: match railway.source() {
                RailwaySource::Image(image) => Some(image),
                RailwaySource::Repo { .. } => None,
            },
            layout: railway.railway_layout,
            project_id: railway.railway_project_id.clone(),
            source_repo: railway.railway_source_repo.clone(),
            team_id: railway.railway_team_id.clone(),
        }),
        tick_interval_ms: s.tick.tick_interval_ms,
        version: crate::VERSION,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusPage {
    #[schema(value_type = BTreeMap<InstanceStatus, i64>)]
    counts: Counts,
    instances: Vec<InstanceView>,
    /// Pass as `after` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// `GET /api/pool/status`: counts, a page of instances and `nextCursor`.
#[utoipa::path(get, path = "/api/pool/status", tag = "pool",
    params(PageQuery),
    responses(
        (status = 200, description = "Counts and a page of instances", body = StatusPage),
        (status = 400, description = "Bad `limit` or `after`", body = ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<StatusPage>> {
    let (after, limit) = query.parse()?;
    let only = query.statuses()?;
    let page = overview::operator_page(&state.pool, after.as_ref(), limit, only.as_deref()).await?;
    Ok(Json(StatusPage {
        counts: counts_of(&state).await?,
        instances: page.items.iter().map(InstanceView::from).collect(),
        next_cursor: page.next.map(|cursor| cursor.encode()),
    }))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountBody {
    /// How many instances, 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    count: Option<u32>,
}

fn batch_size(count: Option<u32>) -> ApiResult<Option<u32>> {
    match count {
        Some(n) if n == 0 || n > MAX_BATCH => Err(ApiError::bad_request(
            "invalid_request",
            format!("count must be between 1 and {MAX_BATCH}"),
        )),
        other => Ok(other),
    }
}

/// What a tick (or a replenish) did, and the counts after it.
#[derive(Serialize, ToSchema)]
pub struct TickReply {
    #[schema(value_type = BTreeMap<InstanceStatus, i64>)]
    counts: Counts,
    #[serde(flatten)]
    report: TickReport,
}

async fn with_counts(state: &AppState, report: TickReport) -> ApiResult<Json<TickReply>> {
    Ok(Json(TickReply {
        counts: counts_of(state).await?,
        report,
    }))
}

/// `POST /api/pool/replenish`: a tick (poll + replenish), or with `{"count": N}` N new instances.
#[utoipa::path(post, path = "/api/pool/replenish", tag = "pool",
    description = "Without a body, a tick; with `{\"count\": N}`, N new instances now (within \
                   the pool's `maxTotal`).",
    request_body(content = Option<CountBody>, description = "Optional: empty, `null` or `{}` is a tick"),
    responses(
        (status = 200, description = "What was done", body = TickReply),
        (status = 400, description = "Bad body or count", body = ErrorBody),
    ))]
pub async fn replenish(
    State(state): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<CountBody>,
) -> ApiResult<Json<TickReply>> {
    let report = match batch_size(body.count)? {
        Some(count) => {
            let (pool, stop) = (state.pool.clone(), state.shutdown.clone());
            state
                .finish(async move { create_now(&pool, count, stop).await })
                .await??
        }
        None => run_tick(&state, Mode::Full).await?,
    };
    state.kicker.kick();
    with_counts(&state, report).await
}

/// Creates up to `count` instances now, within `POOL_MAX_TOTAL`; reports them like a tick.
async fn create_now(
    pool: &Pool,
    count: u32,
    stop: CancellationToken,
) -> agentpool_core::Result<TickReport> {
    let batch = creation::reserve(pool, count, Actor::Operator, "replenish requested").await?;
    let mut report = TickReport::default();
    report.creations(creation::create_all(pool, batch, &Gate::until(stop)).await);
    Ok(report)
}

/// A tick runs to its end even if the client goes away; shutdown makes it stop starting work.
async fn run_tick(state: &AppState, mode: Mode) -> ApiResult<TickReport> {
    let (pool, stop) = (state.pool.clone(), state.shutdown.clone());
    Ok(state
        .finish(async move { tick::run_until(&pool, mode, &stop).await })
        .await??)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drained {
    #[schema(value_type = BTreeMap<InstanceStatus, i64>)]
    counts: Counts,
    drained: usize,
    instance_ids: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// How many idle instances, 1 to 100. Optional for serde, so that a missing count gets the
    /// same message as one out of range.
    #[schema(value_type = u32, required = true, minimum = 1, maximum = 100)]
    count: Option<u32>,
}

/// `POST /api/pool/drain {"count": N}`: up to N idle instances go to `destroying`.
#[utoipa::path(post, path = "/api/pool/drain", tag = "pool",
    request_body = DrainBody,
    responses(
        (status = 200, description = "The instances sent to `destroying`", body = Drained),
        (status = 400, description = "Bad body, or count missing or out of range", body = ErrorBody),
    ))]
pub async fn drain(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<DrainBody>,
) -> ApiResult<Json<Drained>> {
    let count = batch_size(body.count)?
        .ok_or_else(|| ApiError::bad_request("invalid_request", "count is required"))?;
    let ids = operator::drain(&state.pool, count).await?;
    state.kicker.kick();
    Ok(Json(Drained {
        counts: counts_of(&state).await?,
        drained: ids.len(),
        instance_ids: ids,
    }))
}

/// `POST /api/pool/reconcile`: check the fleet against the provider, clean up orphans.
#[utoipa::path(post, path = "/api/pool/reconcile", tag = "pool",
    responses((status = 200, description = "What reconcile did", body = TickReply)))]
pub async fn reconcile(State(state): State<AppState>) -> ApiResult<Json<TickReply>> {
    let report = run_tick(&state, Mode::Reconcile).await?;
    with_counts(&state, report).await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TickBody {
    /// The scheduled time this tick is for (RFC 3339): a scheduler ticking over HTTP sends it,
    /// so that each slot ticks once however many schedulers fire for it.
    slot: Option<DateTime<Utc>>,
}

/// `POST /api/pool/tick`: one full tick, or `{"skipped": true}` if another one is running or,
/// with `{"slot"}`, if that slot's tick was already taken.
#[utoipa::path(post, path = "/api/pool/tick", tag = "pool",
    request_body(content = Option<TickBody>, description = "Optional; a scheduler names its slot"),
    responses(
        (status = 200, description = "What the tick did; `skipped` if another was running or the slot was taken", body = TickReply),
        (status = 400, description = "Bad body", body = ErrorBody),
    ))]
pub async fn tick(
    State(state): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<TickBody>,
) -> ApiResult<Json<TickReply>> {
    let report = match body.slot {
        Some(slot) => {
            let (pool, stop) = (state.pool.clone(), state.shutdown.clone());
            state
                .finish(async move {
                    tick::slots::run(&pool, slot, &tick::slots::runner("api"), &stop).await
                })
                .await??
        }
        None => run_tick(&state, Mode::Full).await?,
    };
    with_counts(&state, report).await
}

/// What `POST /api/pool/keepalive` did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveReply {
    /// No round sent: this interval's was already sent (by a replica's timer, a scheduler, an
    /// earlier call), or the provider's instances never sleep.
    skipped: bool,
    /// The round this call sent.
    round: Option<Round>,
}

/// `POST /api/pool/keepalive`: this interval's keep-alive round (`HEARTBEAT_INTERVAL_MS`), for
/// deployments with no long-running replica whose timer sends it (Lambda, with
/// `agentpool-scheduler` over HTTP). One round per interval whoever asks.
#[utoipa::path(post, path = "/api/pool/keepalive", tag = "pool",
    responses(
        (status = 200, description = "The round sent, or `skipped` if this interval's was already sent or the provider needs none", body = KeepAliveReply),
    ))]
pub async fn keep_alive(State(state): State<AppState>) -> ApiResult<Json<KeepAliveReply>> {
    let pool = state.pool.clone();
    // Runs to its end even if the client goes away: the slot is taken.
    let round = state
        .finish(async move { heartbeat::beat(&pool).await })
        .await??;
    Ok(Json(KeepAliveReply {
        skipped: round.is_none(),
        round,
    }))
}
