use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use agentpool_core::domain::InstanceStatus;
use agentpool_core::operator;

use super::plausible_id;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Path;
use crate::state::AppState;

/// The reply to a kill or a dismissal: the instance is on its way out.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destroying {
    instance_id: String,
    previous_status: InstanceStatus,
    /// Always `destroying`.
    status: InstanceStatus,
}

/// `DELETE /api/pool/instances/:id`: kill a launched instance, whatever its state. The tick
/// destroys its resources; the reply says it is on its way.
#[utoipa::path(delete, path = "/api/pool/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 202, description = "Sent to `destroying`", body = Destroying),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Already destroying (`wrong_state`)", body = ErrorBody),
    ))]
pub async fn kill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Destroying>)> {
    let id = plausible_id(&id)?;
    let previous = operator::kill(&state.pool, id).await?;
    state.kicker.kick();
    Ok(accepted(id, previous))
}

/// `DELETE /api/pool/crashed/:id`: dismiss a crashed agent.
#[utoipa::path(delete, path = "/api/pool/crashed/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 202, description = "Sent to `destroying`", body = Destroying),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not crashed (`wrong_state`)", body = ErrorBody),
    ))]
pub async fn dismiss(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Destroying>)> {
    let id = plausible_id(&id)?;
    let previous = operator::dismiss(&state.pool, id).await?;
    state.kicker.kick();
    Ok(accepted(id, previous))
}

fn accepted(id: &str, previous: InstanceStatus) -> (StatusCode, Json<Destroying>) {
    (
        StatusCode::ACCEPTED,
        Json(Destroying {
            instance_id: id.to_string(),
            previous_status: previous,
            status: InstanceStatus::Destroying,
        }),
    )
}
