//! API key checks. The key travels as `Authorization: Bearer <POOL_API_KEY>`; `?key=` is accepted
//! only on SSE routes, because `EventSource` cannot set headers. Keys are compared in constant time.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use agentpool_core::config::secrets_match;

use crate::error::ApiError;
use crate::state::AppState;

/// What a request carried, judged against the configured key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Operator,
}

#[derive(serde::Deserialize)]
struct KeyParam {
    key: Option<String>,
}

fn query_key(request: &Request) -> Option<String> {
    axum::extract::Query::<KeyParam>::try_from_uri(request.uri())
        .ok()
        .and_then(|query| query.0.key)
}

/// The credentials of `Authorization: Bearer <token>`. Auth schemes are case-insensitive
/// (RFC 9110, section 11.1), so `bearer` and `BEARER` are the same scheme.
pub fn bearer_token(header: &HeaderValue) -> Option<&str> {
    let (scheme, token) = header.to_str().ok()?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Identifies the caller; a wrong or malformed key is an error, no key is `Anonymous`.
pub fn identify(
    state: &AppState,
    request: &Request,
    allow_query_key: bool,
) -> Result<Caller, ApiError> {
    let expected = state.api_key.expose();
    if let Some(header) = request.headers().get(AUTHORIZATION) {
        let given = bearer_token(header).ok_or_else(|| {
            ApiError::unauthorized("Authorization must be `Bearer <POOL_API_KEY>`")
        })?;
        return if secrets_match(given, expected) {
            Ok(Caller::Operator)
        } else {
            Err(ApiError::unauthorized("invalid API key"))
        };
    }
    match query_key(request) {
        Some(_) if !allow_query_key => Err(ApiError::unauthorized(
            "the key query parameter is accepted only on SSE routes; send Authorization: Bearer <POOL_API_KEY>",
        )),
        Some(given) if secrets_match(&given, expected) => Ok(Caller::Operator),
        Some(_) => Err(ApiError::unauthorized("invalid API key")),
        None => Ok(Caller::Anonymous),
    }
}

async fn require(
    state: &AppState,
    request: Request,
    next: Next,
    allow_query_key: bool,
) -> Result<Response, ApiError> {
    match identify(state, &request, allow_query_key)? {
        Caller::Operator => Ok(next.run(request).await),
        Caller::Anonymous => Err(ApiError::unauthorized(
            "missing API key: send Authorization: Bearer <POOL_API_KEY>",
        )),
    }
}

/// For every authenticated route except SSE.
pub async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, request, next, false).await
}

/// For SSE routes: the header or `?key=`.
pub async fn require_key_sse(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, request, next, true).await
}
