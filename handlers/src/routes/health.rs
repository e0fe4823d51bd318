use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use agentpool_core::config::secrets_match;
use agentpool_core::overview;

use crate::auth::bearer_token;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    ok: bool,
}

/// The process answers; says nothing about Postgres.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { ok: true })
}

#[derive(Serialize, ToSchema)]
pub struct VersionInfo {
    /// `POOL_ENVIRONMENT`.
    environment: String,
    version: &'static str,
}

#[utoipa::path(get, path = "/version", tag = "health",
    responses((status = 200, description = "The build and the environment", body = VersionInfo)))]
pub async fn version(State(state): State<AppState>) -> Json<VersionInfo> {
    Json(VersionInfo {
        environment: state.pool.settings.pool.pool_environment.clone(),
        version: crate::VERSION,
    })
}

/// Prometheus metrics, read from Postgres: every replica answers the same.
#[utoipa::path(get, path = "/metrics", tag = "health",
    description = "OpenMetrics text. Public unless `METRICS_TOKEN` is set; then it needs \
                   `Authorization: Bearer <METRICS_TOKEN>`.",
    security((), ("metricsToken" = [])),
    responses(
        (status = 200, description = "OpenMetrics exposition",
         content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "`METRICS_TOKEN` is set and was not given", body = ErrorBody),
        (status = 503, description = "Postgres unavailable", body = ErrorBody),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.pool.settings.metrics.metrics_token {
        let given = headers.get(AUTHORIZATION).and_then(bearer_token);
        if !given.is_some_and(|given| secrets_match(given, expected.expose())) {
            return Err(ApiError::unauthorized(
                "metrics need Authorization: Bearer <METRICS_TOKEN>",
            ));
        }
    }
    let text = overview::metrics(&state.pool).await?;
    Ok(([(CONTENT_TYPE, overview::CONTENT_TYPE)], text).into_response())
}
