use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use agentpool_core::domain::InstanceStatus;
use agentpool_core::{debug, operator, recycle};

use super::plausible_id;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Path;
use crate::state::AppState;

/// The reply to a recycle, a kill or a dismissal: the instance is on its way back to the pool or
/// out of it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    instance_id: String,
    previous_status: InstanceStatus,
    /// `recycling` (restoring its golden checkpoint, then idle) or `destroying`.
    status: InstanceStatus,
}

/// The claimed instances, for bulk actions.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedIds {
    instance_ids: Vec<String>,
}

/// `DELETE /api/pool/instances/:id`: let a launched instance go. On a provider that recycles
/// (`sprites`, `local` with `LOCAL_RECYCLE`) a claimed instance is recycled: its golden
/// checkpoint is restored and it goes back to the pool once its runtime answers ready and clean
/// (a failed or slow restore destroys it instead). Anything else is destroyed.
#[utoipa::path(delete, path = "/api/pool/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 202, description = "Sent to `recycling` or `destroying`", body = Released),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Already destroying (`wrong_state`)", body = ErrorBody),
    ))]
pub async fn release(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Released>)> {
    let id = plausible_id(&id)?;
    let released = recycle::release(&state.pool, id).await?;
    if let Some(work) = released.recycle {
        // Shutdown waits for it; a process that dies meanwhile leaves it to the tick.
        state.spawn(work);
    }
    state.kicker.kick();
    Ok(accepted(id, released.previous, released.status))
}

/// `DELETE /api/pool/instances/:id/destroy`: destroy an instance, whatever its state and
/// whatever the provider can do.
#[utoipa::path(delete, path = "/api/pool/instances/{id}/destroy", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 202, description = "Sent to `destroying`", body = Released),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Already destroying (`wrong_state`)", body = ErrorBody),
    ))]
pub async fn kill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Released>)> {
    let id = plausible_id(&id)?;
    let previous = operator::kill(&state.pool, id).await?;
    state.kicker.kick();
    Ok(accepted(id, previous, InstanceStatus::Destroying))
}

/// `DELETE /api/pool/instances`: seed 002's listing of the claimed instances' ids (it changes
/// nothing; the dashboard's bulk actions use it).
#[utoipa::path(delete, path = "/api/pool/instances", tag = "instances",
    responses(
        (status = 200, description = "The claimed instances' ids", body = ClaimedIds),
    ))]
pub async fn claimed(State(state): State<AppState>) -> ApiResult<Json<ClaimedIds>> {
    Ok(Json(ClaimedIds {
        instance_ids: recycle::claimed(&state.pool).await?,
    }))
}

/// `GET /api/pool/debug/:id`: seed 002's debug probe. What the pool recorded, the runtime's
/// answer, and what the provider can tell (for a sprite: processes, the runtime's status fetched
/// from inside, whether its env file exists, listening ports, its API record), every secret
/// redacted.
#[utoipa::path(get, path = "/api/pool/debug/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "What is known of the instance, secrets redacted", body = Object),
        (status = 404, description = "No such instance", body = ErrorBody),
    ))]
pub async fn probe(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = plausible_id(&id)?;
    Ok(Json(debug::probe(&state.pool, id).await?))
}

/// `DELETE /api/pool/crashed/:id`: dismiss a crashed agent.
#[utoipa::path(delete, path = "/api/pool/crashed/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 202, description = "Sent to `destroying`", body = Released),
        (status = 404, description = "No such instance", body = ErrorBody),
        (status = 409, description = "Not crashed (`wrong_state`)", body = ErrorBody),
    ))]
pub async fn dismiss(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Released>)> {
    let id = plausible_id(&id)?;
    let previous = operator::dismiss(&state.pool, id).await?;
    state.kicker.kick();
    Ok(accepted(id, previous, InstanceStatus::Destroying))
}

fn accepted(
    id: &str,
    previous: InstanceStatus,
    status: InstanceStatus,
) -> (StatusCode, Json<Released>) {
    (
        StatusCode::ACCEPTED,
        Json(Released {
            instance_id: id.to_string(),
            previous_status: previous,
            status,
        }),
    )
}
