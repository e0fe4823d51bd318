//! API key checks. The key travels as `Authorization: Bearer <POOL_API_KEY>`; `?key=` is accepted
//! only on SSE routes, because `EventSource` cannot set headers. Keys are compared in constant time.
//! Without a key, a dashboard session (its cookie) stands in for it; a session's writes must also
//! carry its CSRF token (see [`crate::web::session`]).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
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

/// The key a request presents: `None` if it presents none.
fn presented_key(request: &Request, allow_query_key: bool) -> Result<Option<String>, ApiError> {
    if let Some(header) = request.headers().get(AUTHORIZATION) {
        return bearer_token(header)
            .map(|t| Some(t.to_string()))
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization must be `Bearer <POOL_API_KEY>`")
            });
    }
    match query_key(request) {
        Some(_) if !allow_query_key => Err(ApiError::unauthorized(
            "the key query parameter is accepted only on SSE routes; send Authorization: Bearer <POOL_API_KEY>",
        )),
        given => Ok(given),
    }
}

/// The key a request presents, and who presents it; read before anything is awaited (a request
/// cannot be held across an await in a handler's future).
pub struct Presented {
    key: Option<String>,
    client: String,
}

impl Presented {
    pub fn of(
        state: &AppState,
        request: &Request,
        allow_query_key: bool,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            key: presented_key(request, allow_query_key)?,
            client: session::client_id(
                state,
                request.headers(),
                request.extensions().get::<ConnectInfo<SocketAddr>>(),
            ),
        })
    }
}

/// Identifies the caller; a wrong or malformed key is an error, no key is `Anonymous`. Wrong keys
/// earn their client the dashboard login's growing delay (per client, across replicas), during
/// which even the right key is refused: a guess made then must not learn that it was right. A
/// right key costs no statement unless its client has a record; a wrong one is counted.
pub async fn identify(state: &AppState, presented: Presented) -> Result<Caller, ApiError> {
    let Presented { key, client } = presented;
    let Some(given) = key else {
        return Ok(Caller::Anonymous);
    };
    if secrets_match(&given, state.api_key.expose()) {
        session::let_right_key_in(state, &client).await?;
        return Ok(Caller::Operator);
    }
    tracing::warn!(client, "a wrong API key");
    Err(session::count_wrong_key(state, &client).await?)
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
    let presented = Presented::of(state, &request, sse)?;
    let via = match identify(state, presented).await? {
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
