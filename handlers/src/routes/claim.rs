use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;

use agentpool_core::claim::{self, ClaimRequest, Claimed, IdempotencyKey};

use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    /// Seed 001 called it `agentId`.
    #[serde(alias = "agentId")]
    agent_name: String,
    instructions: String,
    join_url: Option<String>,
    profile_image: Option<String>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /api/pool/claim`, with an optional `Idempotency-Key` header.
pub async fn claim(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ClaimBody>,
) -> ApiResult<Json<Claimed>> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(IdempotencyKey::new(value.to_str().map_err(|_| {
            ApiError::bad_request("invalid_request", "Idempotency-Key must be visible ASCII")
        })?)?),
    };
    let request = ClaimRequest::new(
        body.agent_name,
        body.instructions,
        body.join_url,
        body.profile_image,
        body.metadata.map(serde_json::Value::Object),
    )?;
    // Run the claim to its end even if the client goes away: a claim dropped half-way would
    // leave a `claiming` row for the tick to reap, and a provisioned agent wasted.
    let pool = state.pool.clone();
    let claimed = state
        .finish(async move { claim::claim(&pool, &request, key.as_ref()).await })
        .await?;
    state.kicker.kick();
    Ok(Json(claimed?))
}
