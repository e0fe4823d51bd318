use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use agentpool_core::config::secrets_match;

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

pub async fn version(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "version": crate::VERSION,
        "environment": state.pool.settings.pool_environment,
    }))
}

/// Prometheus metrics, read from Postgres: every replica answers the same.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.pool.settings.metrics_token {
        let given = headers.get(AUTHORIZATION).and_then(bearer_token);
        if !given.is_some_and(|given| secrets_match(given, expected.expose())) {
            return Err(ApiError::unauthorized(
                "metrics need Authorization: Bearer <METRICS_TOKEN>",
            ));
        }
    }
    let text = agentpool_core::metrics::render(&state.pool.db).await?;
    Ok((
        [(CONTENT_TYPE, agentpool_core::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}
