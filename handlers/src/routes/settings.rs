//! `GET/PUT /api/pool/settings`: the pool's size and sizing policy, changed at run time (see
//! `pool_size` and `config::SizingPolicy`).

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;

use agentpool_core::config::SizingPolicy;
use agentpool_core::operator::{self, SizeChange};
use agentpool_core::overview::{self, SizeSetting};

use crate::auth::Via;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/pool/settings", tag = "settings",
    responses((status = 200, description = "The size in force and where it comes from", body = SizeSetting)))]
pub async fn get(State(state): State<AppState>) -> ApiResult<Json<SizeSetting>> {
    Ok(Json(overview::size(&state.pool).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SizeBody {
    min_idle: Option<u32>,
    max_total: Option<u32>,
    /// Replaces the whole sizing policy (schedules, demand reaction, cool-down); left out, it is
    /// kept.
    sizing: Option<SizingPolicy>,
}

/// `PUT /api/pool/settings {"minIdle": N, "maxTotal": M, "sizing": {…}}` (any may be left out).
/// The tick uses the new size from its next run, which this kicks.
#[utoipa::path(put, path = "/api/pool/settings", tag = "settings",
    request_body = SizeBody,
    responses(
        (status = 200, description = "The size now in force", body = SizeSetting),
        (status = 400, description = "Bad body, `maxTotal` above `POOL_MAX_TOTAL_CAP`, `minIdle` (or a window's) above `maxTotal`, an unknown time zone, a cron expression that is not a window of hours, or overlapping windows", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    Extension(via): Extension<Via>,
    JsonBody(body): JsonBody<SizeBody>,
) -> ApiResult<Json<SizeSetting>> {
    let change = SizeChange {
        min_idle: body.min_idle,
        max_total: body.max_total,
        sizing: body.sizing,
    };
    let saved = operator::resize(&state.pool, change, via.as_str()).await?;
    tracing::info!(
        min_idle = saved.size.min_idle,
        max_total = saved.size.max_total,
        via = via.as_str(),
        "pool size changed"
    );
    state.kicker.kick();
    Ok(Json(saved))
}
