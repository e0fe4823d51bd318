//! The browser side: the public page (`/`), the operator dashboard (`/admin`), its phone view
//! (`/admin/lite`), login and logout, the QR codes of invite URLs, and the static assets, all
//! built into the binary. Pages are rendered on the server with every piece of text escaped; their
//! scripts call the same JSON API as anyone else, with the session cookie and its CSRF token.

mod pages;
mod qr;
pub mod session;
mod sizing;

pub use pages::escape;

use axum::extract::Request;
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth;
use crate::error::ApiError;
use crate::extract::Path;
use crate::state::AppState;

pub fn routes(state: &AppState) -> Router<AppState> {
    let operator = Router::new()
        .route("/admin/qr.svg", get(qr::invite))
        .route("/admin/sizing.svg", get(sizing::chart))
        .route_layer(from_fn_with_state(state.clone(), auth::require_key));
    Router::new()
        .route("/", get(pages::public))
        .route("/admin", get(pages::dashboard))
        .route("/admin/lite", get(pages::lite))
        .route("/admin/login", post(pages::login))
        .route("/admin/logout", post(pages::logout))
        .route("/assets/{name}", get(asset))
        .merge(operator)
}

/// Scripts only from here (no inline script, no `eval`), nothing framed, nothing sniffed. Set on
/// every response: a JSON reply opened in a browser gets the same protection as a page.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let fixed: [(HeaderName, &'static str); 4] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the CSRF
        // check must refuse.
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Each asset, by the name pages use for it.
const ASSETS: [(&str, &str, &str); 7] = [
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/common.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/admin.js"),
    ),
    (
        "lite.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/lite.js"),
    ),
    (
        "public.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/public.js"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/docs.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                // Assets change with the binary: revalidate rather than run an old script.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such asset").into_response(),
    }
}
