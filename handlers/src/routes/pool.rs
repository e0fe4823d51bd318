use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::Request;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use agentpool_core::config::ProviderKind;
use agentpool_core::creation::{self, Outcome};
use agentpool_core::domain::{Actor, Instance, InstanceStatus};
use agentpool_core::gate::Gate;
use agentpool_core::instances;
use agentpool_core::listing::{self, Cursor, PublicAgent};
use agentpool_core::pool_size;
use agentpool_core::tick::{self, Mode, TickReport};
use agentpool_core::Pool;
use tokio_util::sync::CancellationToken;

use crate::auth::{identify, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, OptionalJsonBody, Query};
use crate::state::AppState;

/// The most instances one replenish or drain request may ask for.
const MAX_BATCH: u32 = 100;

async fn counts_json(state: &AppState) -> ApiResult<BTreeMap<InstanceStatus, i64>> {
    Ok(instances::counts(&state.pool.db).await?)
}

/// `GET /api/pool/counts` (public).
pub async fn counts(
    State(state): State<AppState>,
) -> ApiResult<Json<BTreeMap<InstanceStatus, i64>>> {
    counts_json(&state).await.map(Json)
}

/// An instance as an operator sees it. Never the gateway token.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceView<'a> {
    id: &'a str,
    name: &'a str,
    url: Option<&'a str>,
    status: InstanceStatus,
    status_since: DateTime<Utc>,
    agent_name: Option<&'a str>,
    instructions: Option<&'a str>,
    join_url: Option<&'a str>,
    conversation_id: Option<&'a str>,
    invite_url: Option<&'a str>,
    template_id: Option<&'a str>,
    health_failures: i32,
    destroy_attempts: i32,
    last_error: Option<&'a str>,
    created_at: DateTime<Utc>,
    claimed_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a Instance> for InstanceView<'a> {
    fn from(i: &'a Instance) -> Self {
        Self {
            id: &i.id,
            name: &i.name,
            url: i.url.as_deref(),
            status: i.status,
            status_since: i.status_since,
            agent_name: i.agent_name.as_deref(),
            instructions: i.instructions.as_deref(),
            join_url: i.join_url.as_deref(),
            conversation_id: i.conversation_id.as_deref(),
            invite_url: i.invite_url.as_deref(),
            template_id: i.template_id.as_deref(),
            health_failures: i.health_failures,
            destroy_attempts: i.destroy_attempts,
            last_error: i.last_error.as_deref(),
            created_at: i.created_at,
            claimed_at: i.claimed_at,
        }
    }
}

/// What anyone may see of an agent: its name, state and times.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublicAgentView<'a> {
    agent_name: Option<&'a str>,
    status: InstanceStatus,
    status_since: DateTime<Utc>,
    created_at: DateTime<Utc>,
    claimed_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a PublicAgent> for PublicAgentView<'a> {
    fn from(a: &'a PublicAgent) -> Self {
        Self {
            agent_name: a.agent_name.as_deref(),
            status: a.status,
            status_since: a.status_since,
            created_at: a.created_at,
            claimed_at: a.claimed_at,
        }
    }
}

/// `?limit=N&after=<nextCursor>` of the listings. Strings, so that a bad value gets our message.
#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

impl PageQuery {
    fn parse(&self) -> ApiResult<(Option<Cursor>, u32)> {
        let limit = match self.limit.as_deref() {
            None => listing::DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=listing::MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!(
                            "limit must be an integer between 1 and {}",
                            listing::MAX_LIMIT
                        ),
                    )
                })?,
        };
        let after = self.after.as_deref().map(Cursor::decode).transpose()?;
        Ok((after, limit))
    }
}

fn status_groups() -> BTreeMap<InstanceStatus, Vec<Value>> {
    InstanceStatus::ALL
        .into_iter()
        .map(|s| (s, Vec::new()))
        .collect()
}

/// `GET /api/pool/agents` (public): a page of instances, grouped by status, and `nextCursor`.
/// With the API key, the operator's view of each.
pub async fn agents(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
    request: Request<axum::body::Body>,
) -> ApiResult<Json<Value>> {
    let caller = identify(&state, &request, false)?;
    let (after, limit) = query.parse()?;
    let mut grouped = status_groups();
    let next = match caller {
        Caller::Operator => {
            let page = listing::operator_page(&state.pool.db, after.as_ref(), limit).await?;
            for instance in &page.items {
                if let (Ok(entry), Some(group)) = (
                    serde_json::to_value(InstanceView::from(instance)),
                    grouped.get_mut(&instance.status),
                ) {
                    group.push(entry);
                }
            }
            page.next
        }
        Caller::Anonymous => {
            let page = listing::public_page(&state.pool.db, after.as_ref(), limit).await?;
            for agent in &page.items {
                if let (Ok(entry), Some(group)) = (
                    serde_json::to_value(PublicAgentView::from(agent)),
                    grouped.get_mut(&agent.status),
                ) {
                    group.push(entry);
                }
            }
            page.next
        }
    };
    let mut body = json!(grouped);
    body["nextCursor"] = json!(next.map(|cursor| cursor.encode()));
    Ok(Json(body))
}

/// `GET /api/pool/info` (public): nothing secret, by construction. The size is the one in force.
pub async fn info(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let s = &state.pool.settings;
    let size = pool_size::current(&state.pool.db, s).await?;
    Ok(Json(json!({
        "version": crate::VERSION,
        "environment": s.pool_environment,
        "branch": s.railway_git_branch,
        "model": s.openclaw_primary_model,
        "provider": s.pool_provider.as_str(),
        "minIdle": size.min_idle,
        "maxTotal": size.max_total,
        "tickIntervalMs": s.tick_interval_ms,
        // Railway's ids are not secrets (the token is, and is never here).
        "railway": (s.pool_provider == ProviderKind::Railway).then(|| json!({
            "layout": s.railway_layout,
            "projectId": s.railway_project_id,
            "environmentId": s.railway_environment_id,
            "teamId": s.railway_team_id,
            "image": s.railway_runtime_image,
        })),
    })))
}

/// `GET /api/pool/status`: counts, a page of instances and `nextCursor`.
pub async fn status(
    State(state): State<AppState>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (after, limit) = query.parse()?;
    let page = listing::operator_page(&state.pool.db, after.as_ref(), limit).await?;
    let views: Vec<InstanceView> = page.items.iter().map(InstanceView::from).collect();
    Ok(Json(json!({
        "counts": counts_json(&state).await?,
        "instances": views,
        "nextCursor": page.next.map(|cursor| cursor.encode()),
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CountBody {
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

async fn with_counts(state: &AppState, report: TickReport) -> ApiResult<Json<Value>> {
    let mut body = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    body["counts"] = json!(counts_json(state).await?);
    Ok(Json(body))
}

/// `POST /api/pool/replenish`: a tick (poll + replenish), or with `{"count": N}` N new instances.
pub async fn replenish(
    State(state): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<CountBody>,
) -> ApiResult<Json<Value>> {
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
    let reserved = creation::reserve(pool, count, Actor::Operator, "replenish requested").await?;
    let mut report = TickReport::default();
    for (row, outcome) in creation::create_all(pool, reserved, &Gate::until(stop)).await {
        match outcome {
            Outcome::Created => report.created.push(row.id),
            Outcome::Failed(e) => report.error("creating", Some(&row.id), &e),
            Outcome::NotStarted(why) => report.cut(why),
        }
    }
    Ok(report)
}

/// A tick runs to its end even if the client goes away; shutdown makes it stop starting work.
async fn run_tick(state: &AppState, mode: Mode) -> ApiResult<TickReport> {
    let (pool, stop) = (state.pool.clone(), state.shutdown.clone());
    Ok(state
        .finish(async move { tick::run_until(&pool, mode, &stop).await })
        .await??)
}

/// `POST /api/pool/drain {"count": N}`: up to N idle instances go to `destroying`.
pub async fn drain(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CountBody>,
) -> ApiResult<Json<Value>> {
    let count = batch_size(body.count)?
        .ok_or_else(|| ApiError::bad_request("invalid_request", "count is required"))?;
    let ids = instances::drain(&state.pool.db, count).await?;
    state.kicker.kick();
    Ok(Json(json!({
        "drained": ids.len(),
        "instanceIds": ids,
        "counts": counts_json(&state).await?,
    })))
}

/// `POST /api/pool/reconcile`: check the fleet against the provider, clean up orphans.
pub async fn reconcile(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let report = run_tick(&state, Mode::Reconcile).await?;
    with_counts(&state, report).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TickBody {
    /// The scheduled time this tick is for (RFC 3339): a scheduler ticking over HTTP sends it,
    /// so that each slot ticks once however many schedulers fire for it.
    slot: Option<DateTime<Utc>>,
}

/// `POST /api/pool/tick`: one full tick, or `{"skipped": true}` if another one is running or,
/// with `{"slot"}`, if that slot's tick was already taken.
pub async fn tick(
    State(state): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<TickBody>,
) -> ApiResult<Json<Value>> {
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
