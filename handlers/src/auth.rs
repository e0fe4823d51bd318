//! API key checks. The key travels as `Authorization: Bearer <POOL_API_KEY>`; `?key=` is accepted
//! only on SSE routes, because `EventSource` cannot set headers. Keys are compared in constant time.
//! Without a key, a dashboard session (its cookie) stands in for it; a session's writes must also
//! carry its CSRF token (see [`crate::web::session`]).

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use agentpool_core::config::secrets_match;

use crate::error::ApiError;
use crate::state::AppState;
use crate::web::session;

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

/// How an operator request was let in, for handlers that record who did what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ApiKey,
    Dashboard,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::ApiKey => "api",
            Via::Dashboard => "dashboard",
        }
    }
}

async fn require(
    state: &AppState,
    mut request: Request,
    next: Next,
    sse: bool,
) -> Result<Response, ApiError> {
    let via = match identify(state, &request, sse)? {
        Caller::Operator => Via::ApiKey,
        Caller::Anonymous => {
            let session = session::current(state, request.headers())
                .await?
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "missing API key: send Authorization: Bearer <POOL_API_KEY> (or log in at /admin)",
                    )
                })?;
            // The SSE stream creates instances although it is a GET (EventSource can do no other).
            if sse || !request.method().is_safe() {
                session::check_write(state, &session, request.headers(), request.uri(), sse)?;
            }
            Via::Dashboard
        }
    };
    request.extensions_mut().insert(via);
    Ok(next.run(request).await)
}

/// For every authenticated route except SSE.
pub async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, request, next, false).await
}

/// For SSE routes: the header or `?key=`, or a session with `?csrf=`.
pub async fn require_key_sse(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require(&state, request, next, true).await
}
