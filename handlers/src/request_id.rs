//! A request id on every request: the client's `x-request-id` when it is a plausible one (at most
//! 128 visible ASCII characters), a fresh UUID otherwise. It is echoed on the response and names
//! the request's span, so every log line of the request carries it.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

fn plausible(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn assign(mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| v.to_str().is_ok_and(plausible))
        .cloned();
    let id = match given {
        Some(id) => id,
        None => HeaderValue::try_from(uuid::Uuid::new_v4().to_string())
            .unwrap_or(HeaderValue::from_static("unassigned")),
    };
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
}

/// The id [`assign`] put on a request.
pub fn of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::plausible;

    #[test]
    fn only_short_visible_ids_are_taken_from_clients() {
        assert!(plausible("req-7f3a"));
        for bad in ["", "has space", "ünïcode", &"x".repeat(129)] {
            assert!(!plausible(bad), "{bad:?}");
        }
    }
}
