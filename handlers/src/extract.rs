//! Extractors whose rejections are [`ApiError`]s, so that a client mistake in the body, the path
//! or the query string gets the same JSON 400 as any other. Handlers use these, never axum's own
//! `Json`, `Path` or `Query`, whose rejections are plain text.
//!
//! Body content type is not insisted on: `curl -d` sends form encoding by default, and the body
//! is what matters.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A required JSON body.
pub struct JsonBody<T>(pub T);

/// A JSON body that may be absent (empty or `null`), meaning `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("bad_json", format!("body is not valid JSON: {e}"))
        }
        Category::Data => ApiError::bad_request("invalid_request", e.to_string()),
    }
}

/// Every body of this API is a JSON object. Serde would also read a struct from an array of its
/// fields in order (`[null, null]` as `{}`), which no client means and the API document does not
/// allow, so anything but an object is refused before serde sees it.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(json_error)?;
        return Err(ApiError::bad_request(
            "invalid_request",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(json_error)
}

/// An empty body, or JSON `null`: no body.
fn absent(bytes: &[u8]) -> bool {
    bytes.trim_ascii().is_empty() || bytes.trim_ascii() == b"null"
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("bad_json", "a JSON body is required"));
        }
        parse(&bytes).map(JsonBody)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await?;
        if absent(&bytes) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse(&bytes).map(OptionalJsonBody)
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

/// Query parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::try_from_uri(&parts.uri)?;
        Ok(Query(value))
    }
}
