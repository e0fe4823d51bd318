use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};

use agentpool_core::claim::{self, ClaimInput, Claimed, IdempotencyKey, Redacted};

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    /// A template (seed 004) that fills the agent's name, instructions and model and names its
    /// tools; the fields below, where given, win (the model only where the template allows it).
    #[schema(example = "tpl_0123456789ab")]
    template_id: Option<String>,
    /// The agent's name; required without a template. Seed 001 called it `agentId`, which is
    /// still accepted. Up to 100 characters, not blank, no control characters (surrounding blanks
    /// are trimmed).
    #[serde(alias = "agentId")]
    #[schema(
        example = "tokyo-trip-planner",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    agent_name: Option<String>,
    /// The agent's instructions: not blank, at most 32 KiB. Required without a template or an
    /// `instructionsPageId`.
    #[schema(min_length = 1, pattern = r"\S")]
    instructions: Option<String>,
    /// A Notion page whose text is the instructions (see `/api/prompts/{pageId}`).
    #[schema(pattern = "^[0-9a-fA-F-]{32,36}$")]
    instructions_page_id: Option<String>,
    /// The model, where the template allows another than its own.
    #[schema(max_length = 200, pattern = r"^[A-Za-z0-9/_.:-]+$")]
    model: Option<String>,
    /// Credentials for the template's `user` tools (its `userFields`), checked before any
    /// instance is taken; handed to the instance only, never shown or logged.
    #[schema(value_type = Option<Object>)]
    user_config: Option<serde_json::Map<String, serde_json::Value>>,
    /// An `http(s)` conversation URL for the agent to join; one agent per conversation.
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$")]
    join_url: Option<String>,
    /// An `http(s)` URL of the agent's picture.
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$")]
    profile_image: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The claim's reply: seed 000's fields, and seed 001's `qrDataUrl` beside them, so that a client
/// of either works unchanged.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimReply {
    #[serde(flatten)]
    claimed: Claimed,
    /// The invite URL as a QR code, a `data:image/png;base64,…` URL drawn by this server (seed
    /// 001); null without an invite URL.
    #[schema(example = "data:image/png;base64,iVBORw0KGgo...")]
    qr_data_url: Option<String>,
}

/// `POST /api/pool/claim`, with an optional `Idempotency-Key` header.
#[utoipa::path(post, path = "/api/pool/claim", tag = "pool",
    description = "Hands out an idle agent, named and instructed, and returns its invite URL.",
    request_body = ClaimBody,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "1–255 visible ASCII characters; the same key gets the same reply for 24 hours")),
    responses(
        (status = 200, description = "Claimed", body = ClaimReply),
        (status = 400, description = "Invalid body or Idempotency-Key, a model the template does not allow, a `userConfig` that lacks what the template's user tools need", body = ErrorBody),
        (status = 404, description = "No such template, or its Notion page is missing or not shared with the integration", body = ErrorBody),
        (status = 409, description = "`conversation_taken` (with `instanceId`) or `claim_in_progress`", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused` with a different request", body = ErrorBody),
        (status = 502, description = "Every runtime tried failed (`runtime_failed`), a template's tool failed (`tool_failed`, naming it), or Notion failed (`notion_failed`)", body = ErrorBody),
        (status = 503, description = "`no_idle_instance`, `claim_timed_out` (both with `Retry-After`) or Postgres unavailable", body = ErrorBody),
    ))]
pub async fn claim(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ClaimBody>,
) -> ApiResult<Json<ClaimReply>> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(IdempotencyKey::new(value.to_str().map_err(|_| {
            ApiError::bad_request("invalid_request", "Idempotency-Key must be visible ASCII")
        })?)?),
    };
    let input = ClaimInput {
        template_id: body.template_id,
        agent_name: body.agent_name,
        instructions: body.instructions,
        instructions_page_id: body.instructions_page_id,
        model: body.model,
        user_config: body.user_config.map(Redacted),
        join_url: body.join_url,
        profile_image: body.profile_image,
        metadata: body.metadata.map(serde_json::Value::Object),
    };
    // Everything the client can get wrong is found here, before any instance is taken.
    let request = claim::prepare(&state.pool, input).await?;
    // Run the claim to its end even if the client goes away: a claim dropped half-way would
    // leave a `claiming` row for the tick to reap, and a provisioned agent wasted.
    let pool = state.pool.clone();
    let claimed = state
        .finish(async move { claim::claim(&pool, &request, key.as_ref()).await })
        .await?;
    state.kicker.kick();
    let claimed = claimed?;
    let qr_data_url = claimed
        .invite_url
        .as_deref()
        .and_then(crate::web::qr::png_data_url);
    Ok(Json(ClaimReply {
        claimed,
        qr_data_url,
    }))
}
