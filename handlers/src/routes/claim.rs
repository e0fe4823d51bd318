use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use agentpool_core::claim::{self, ClaimRequest};

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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReply {
    invite_url: Option<String>,
    conversation_id: Option<String>,
    instance_id: String,
    joined: bool,
    gateway_token: String,
    gateway_url: String,
}

/// `POST /api/pool/claim`.
pub async fn claim(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ClaimBody>,
) -> ApiResult<Json<ClaimReply>> {
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
    let claimed = tokio::spawn(async move { claim::claim(&pool, &request).await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "claim task failed");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })?;
    state.kicker.kick();
    let claimed = claimed?;
    Ok(Json(ClaimReply {
        invite_url: claimed.invite_url,
        conversation_id: claimed.conversation_id,
        instance_id: claimed.instance_id,
        joined: claimed.joined,
        gateway_token: claimed.gateway_token,
        gateway_url: claimed.gateway_url,
    }))
}
