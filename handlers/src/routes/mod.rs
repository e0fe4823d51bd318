//! Routes. Handlers stay thin: parse, call the library, shape the JSON.

mod claim;
mod health;
mod instances;
mod pool;
mod settings;
mod stream;

use axum::http::{Request, StatusCode};
use axum::middleware::from_fn;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth;
use crate::error::ApiError;
use crate::request_id;
use crate::state::AppState;

/// Large enough for 32 KiB of instructions plus metadata; anything bigger is a mistake.
const BODY_LIMIT: usize = 256 * 1024;

pub fn router(state: AppState) -> Router {
    let public = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/version", get(health::version))
        .route("/metrics", get(health::metrics))
        .route("/api/pool/counts", get(pool::counts))
        .route("/api/pool/agents", get(pool::agents))
        .route("/api/pool/info", get(pool::info));
    let operator = Router::new()
        .route("/api/pool/status", get(pool::status))
        .route("/api/pool/claim", post(claim::claim))
        .route("/api/pool/replenish", post(pool::replenish))
        .route("/api/pool/drain", post(pool::drain))
        .route("/api/pool/reconcile", post(pool::reconcile))
        .route("/api/pool/tick", post(pool::tick))
        .route("/api/pool/instances/{id}", delete(instances::kill))
        .route("/api/pool/crashed/{id}", delete(instances::dismiss))
        .route("/api/pool/settings", get(settings::get).put(settings::put))
        .route_layer(from_fn_with_state(state.clone(), auth::require_key));
    let sse = Router::new()
        .route("/api/pool/replenish/stream", get(stream::replenish))
        .route_layer(from_fn_with_state(state.clone(), auth::require_key_sse));

    Router::new()
        .merge(public)
        .merge(operator)
        .merge(sse)
        .merge(crate::web::routes(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn(crate::web::security_headers))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }))
        // The span names the path only: a query string may carry `?key=`.
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                tracing::info_span!(
                    "http",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = %request_id::of(request),
                )
            }),
        )
        // Outside the trace layer, so that its span sees the id.
        .layer(from_fn(request_id::assign))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::not_found("no such route").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
    .into_response()
}

/// Instance ids are 12 lowercase alphanumerics; anything else cannot name an instance.
fn plausible_id(id: &str) -> Result<&str, ApiError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("instance {id:?} not found")))
    }
}
