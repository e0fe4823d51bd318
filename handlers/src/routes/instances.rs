use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use agentpool_core::domain::InstanceStatus;
use agentpool_core::instances;

use super::plausible_id;
use crate::error::ApiResult;
use crate::extract::Path;
use crate::state::AppState;

/// `DELETE /api/pool/instances/:id`: kill a launched instance, whatever its state. The tick
/// destroys its resources; the reply says it is on its way.
pub async fn kill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use InstanceStatus::*;
    let id = plausible_id(&id)?;
    let previous = instances::request_destroy(
        &state.pool.db,
        id,
        &[Starting, Idle, Claiming, Claimed, Crashed, Recycling],
        "not already destroying",
        "killed by operator",
    )
    .await?;
    state.kicker.kick();
    Ok(accepted(id, previous))
}

/// `DELETE /api/pool/crashed/:id`: dismiss a crashed agent.
pub async fn dismiss(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = plausible_id(&id)?;
    let previous = instances::request_destroy(
        &state.pool.db,
        id,
        &[InstanceStatus::Crashed],
        "crashed",
        "crashed agent dismissed",
    )
    .await?;
    state.kicker.kick();
    Ok(accepted(id, previous))
}

fn accepted(id: &str, previous: InstanceStatus) -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({"instanceId": id, "previousStatus": previous, "status": "destroying"})),
    )
}
