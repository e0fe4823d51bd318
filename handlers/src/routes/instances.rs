use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use agentpool_core::beats::Beat;
use agentpool_core::domain::InstanceStatus;
use agentpool_core::operator;

use super::plausible_id;
use crate::auth::bearer_token;
use crate::error::{ApiError, ApiResult, ErrorBody};
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

#[derive(Serialize, ToSchema)]
pub struct BeatAccepted {
    ok: bool,
}

/// `POST /api/instances/:id/heartbeat`: the instance's runtime says it is alive, with its own
/// gateway token. A runtime heard from within `HEALTH_INTERVAL_MS` is not asked by the tick.
#[utoipa::path(post, path = "/api/instances/{id}/heartbeat", tag = "instances",
    description = "Called by an instance's runtime, not by operators: `Authorization: Bearer \
                   <the instance's OPENCLAW_GATEWAY_TOKEN>`, no body. A beat of a row that is \
                   not idle or claimed is accepted and changes nothing.",
    security(("runtimeToken" = [])),
    params(("id" = String, Path, description = "Instance id (the runtime's `INSTANCE_ID`)")),
    responses(
        (status = 202, description = "Noted; written within a second", body = BeatAccepted),
        (status = 401, description = "No token, or not this instance's (`bad_runtime_token`)", body = ErrorBody),
        (status = 404, description = "No such instance", body = ErrorBody),
    ))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<BeatAccepted>)> {
    let id = plausible_id(&id)?;
    let token = headers.get(AUTHORIZATION).and_then(bearer_token);
    let (beat, flush) = state.beats.beat(&state.pool, id, token).await?;
    if let Some(flush) = flush {
        state.tasks.spawn(flush);
    }
    match beat {
        Beat::Accepted => Ok((StatusCode::ACCEPTED, Json(BeatAccepted { ok: true }))),
        Beat::WrongToken => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_runtime_token",
            "not this instance's gateway token",
        )),
        Beat::UnknownInstance => Err(ApiError::not_found(format!("instance {id:?} not found"))),
    }
}
