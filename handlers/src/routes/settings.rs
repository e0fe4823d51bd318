//! `GET/PUT /api/pool/settings`: the pool's size, changed at run time (see `pool_size`).

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;

use agentpool_core::domain::Actor;
use agentpool_core::pool_size::{self, SizeChange, SizeSetting};

use crate::auth::Via;
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::state::AppState;

pub async fn get(State(state): State<AppState>) -> ApiResult<Json<SizeSetting>> {
    Ok(Json(
        pool_size::get(&state.pool.db, &state.pool.settings).await?,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SizeBody {
    min_idle: Option<u32>,
    max_total: Option<u32>,
}

/// `PUT /api/pool/settings {"minIdle": N, "maxTotal": M}` (either may be left out). The tick
/// uses the new size from its next run, which this kicks.
pub async fn put(
    State(state): State<AppState>,
    Extension(via): Extension<Via>,
    JsonBody(body): JsonBody<SizeBody>,
) -> ApiResult<Json<SizeSetting>> {
    let change = SizeChange {
        min_idle: body.min_idle,
        max_total: body.max_total,
    };
    let saved = pool_size::set(
        &state.pool.db,
        &state.pool.settings,
        change,
        Actor::Operator,
        via.as_str(),
    )
    .await?;
    tracing::info!(
        min_idle = saved.size.min_idle,
        max_total = saved.size.max_total,
        via = via.as_str(),
        "pool size changed"
    );
    state.kicker.kick();
    Ok(Json(saved))
}
