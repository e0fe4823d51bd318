//! Routes. Handlers stay thin: parse, call the library, shape the JSON.
//!
//! Every JSON route is registered with `routes!`, which takes its path and method from the
//! handler's `#[utoipa::path]`: the router and the API document come from the same place, and
//! each group's access is declared once, for both (see [`crate::openapi::restrict`]).

mod claim;
mod health;
mod instances;
mod pool;
mod prompts;
mod settings;
mod stream;
mod templates;

use axum::http::{Request, StatusCode};
use axum::middleware::from_fn;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth;
use crate::error::ApiError;
use crate::openapi::{self, Access, Document};
use crate::request_id;
use crate::state::AppState;

/// Large enough for 32 KiB of instructions plus metadata; anything bigger is a mistake.
const BODY_LIMIT: usize = 256 * 1024;

/// One group of routes, its document marked with the group's access.
fn group(access: Access, mut routes: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    openapi::restrict(routes.get_openapi_mut(), access);
    routes
}

/// The JSON API (and its document's routes), with each group's access.
fn api(state: &AppState) -> OpenApiRouter<AppState> {
    let meta = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::version))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::page));
    let public = OpenApiRouter::new()
        .routes(routes!(health::metrics))
        .routes(routes!(pool::counts))
        .routes(routes!(pool::agents))
        .routes(routes!(pool::info))
        .routes(routes!(templates::catalog))
        .routes(routes!(templates::by_slug))
        .routes(routes!(prompts::prompt))
        .routes(routes!(instances::heartbeat));
    let operator = OpenApiRouter::new()
        .routes(routes!(pool::status))
        .routes(routes!(claim::claim))
        .routes(routes!(pool::replenish))
        .routes(routes!(pool::drain))
        .routes(routes!(pool::reconcile))
        .routes(routes!(pool::tick))
        .routes(routes!(pool::keep_alive))
        .routes(routes!(instances::release))
        .routes(routes!(instances::kill))
        .routes(routes!(instances::claimed))
        .routes(routes!(instances::probe))
        .routes(routes!(instances::dismiss))
        .routes(routes!(settings::get, settings::put))
        .routes(routes!(templates::list, templates::create))
        .routes(routes!(
            templates::get,
            templates::update,
            templates::delete
        ))
        .route_layer(from_fn_with_state(state.clone(), auth::require_key));
    let sse = OpenApiRouter::new()
        .routes(routes!(stream::replenish))
        .route_layer(from_fn_with_state(state.clone(), auth::require_key_sse));

    OpenApiRouter::with_openapi(openapi::base())
        .merge(group(Access::Static, meta))
        .merge(group(Access::Public, public))
        .merge(group(Access::Operator, operator))
        .merge(group(Access::Stream, sse))
}

pub fn router(state: AppState) -> Router {
    let (api, document) = api(&state).split_for_parts();
    api.layer(Extension(Document(Arc::new(document))))
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
