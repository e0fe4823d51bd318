//! The one mapping from errors to HTTP: `{"code": "<snake_case>", "error": "<message>"}`
//! ([`ErrorBody`]).
//!
//! A client mistake is a 4xx; a 5xx means the pool, a runtime or a provider failed. Internal
//! details (SQL errors and the like) are logged, not returned.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use agentpool_core::Error;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u32>,
    /// The instance a conflict is about (an agent already in the conversation).
    instance_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            instance_id: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// Seconds a client should wait before trying a claim again when nothing is idle.
const NO_IDLE_RETRY_AFTER: u32 = 5;

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) | Error::Missing(_) => StatusCode::NOT_FOUND,
            Error::SlugTaken(_) => StatusCode::CONFLICT,
            Error::Notion {
                retry_after: Some(seconds),
                ..
            } => {
                return Self::new(
                    StatusCode::BAD_GATEWAY,
                    error.code(),
                    error.public_message(),
                )
                .retry_after(*seconds)
            }
            Error::WrongState { .. } | Error::ConversationTaken { .. } | Error::ClaimInProgress => {
                StatusCode::CONFLICT
            }
            Error::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NoIdle => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_idle_instance",
                    "no idle instance available; the pool is refilling, try again shortly",
                )
                .retry_after(NO_IDLE_RETRY_AFTER)
            }
            Error::ClaimTimedOut => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "claim_timed_out",
                    "the claim did not finish within its deadline; try again",
                )
                .retry_after(1)
            }
            Error::Capacity { retry_after, .. } => {
                let seconds = u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX);
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.code(),
                    error.public_message(),
                )
                .retry_after(seconds);
            }
            Error::ClaimFailed { .. }
            | Error::ToolFailed { .. }
            | Error::Notion { .. }
            | Error::Provider { .. }
            | Error::Outbound { .. }
            | Error::ImplausibleListing { .. } => StatusCode::BAD_GATEWAY,
            Error::Db(db) if agentpool_core::error::unavailable(db) => {
                tracing::error!(%error, "database unavailable");
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "database unavailable, try again shortly",
                )
                .retry_after(1);
            }
            Error::Db(_) | Error::Migrate(_) | Error::Config(_) | Error::Io { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            // The whole of it for the operator; the client gets the short cause.
            tracing::error!(%error, code = error.code(), "request failed");
        }
        let mut reply = Self::new(status, error.code(), error.public_message());
        if let Error::ConversationTaken { instance_id, .. } = &error {
            reply.instance_id = Some(instance_id.clone());
        }
        if matches!(error, Error::ClaimInProgress) {
            reply = reply.retry_after(1);
        }
        reply
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        tracing::error!(%error, "request task failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(status, "body_too_large", "request body too large")
        } else {
            Self::bad_request("bad_body", rejection.body_text())
        }
    }
}

// The rejections' own texts name Rust types and repeat the raw input; the client gets a fixed
// message, the log gets the detail.
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        if rejection.status().is_server_error() {
            // A route whose parameters do not fit its handler: our mistake, not the client's.
            tracing::error!(rejection = %rejection.body_text(), "path extraction failed");
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
        tracing::debug!(rejection = %rejection.body_text(), "malformed path");
        Self::bad_request("invalid_request", "malformed path segment")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        tracing::debug!(rejection = %rejection.body_text(), "malformed query string");
        Self::bad_request(
            "invalid_request",
            "malformed query string: each parameter may appear once, with a value of its type",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            error: self.message,
            instance_id: self.instance_id,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Every error reply's body, as the API document describes it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What went wrong, in snake_case: `invalid_request`, `not_found`, `no_idle_instance`, …
    #[schema(example = "invalid_request")]
    code: &'static str,
    /// A sentence for a person.
    error: String,
    /// The instance a `409 conversation_taken` is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;
