//! The API's own description: OpenAPI 3.1 at `/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` attributes and reply types, and `/docs`, a page that renders it. The page's
//! script is served from the binary (`/assets/docs.js`): the CSP allows scripts from this origin
//! only, and where the pool runs there may be no internet to fetch a viewer from.
//!
//! Security and the replies every route of a group can give (401, 403, 429, 503) are added here, per
//! group of the router ([`Access`]), so that a route cannot be behind the key in the router and
//! open in the document, or the other way round.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder, SecurityRequirement};

use crate::error::{ApiError, ErrorBody};
use crate::web::session::{COOKIE_NAME, CSRF_HEADER};

/// Who may call a group of routes, and what that adds to each route's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; the route does not touch Postgres.
    Static,
    /// Anyone; the route reads Postgres.
    Public,
    /// The API key as `Authorization: Bearer`, or a dashboard session.
    Operator,
    /// As `Operator`, and also the key as `?key=` (`EventSource` cannot set headers).
    Stream,
}

/// Names of the security schemes, as operations refer to them.
pub const BEARER: &str = "bearer";
pub const QUERY_KEY: &str = "queryKey";
pub const SESSION: &str = "session";
pub const METRICS_TOKEN: &str = "metricsToken";
pub const RUNTIME_TOKEN: &str = "runtimeToken";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "agentpool",
        description = "A pool of pre-warmed AI agents: `POST /api/pool/claim` hands one out. \
                       Every error reply is an `ErrorBody`.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "pool", description = "Claiming, counts, listings, replenishing, ticks"),
        (name = "instances", description = "One instance: kill, dismiss"),
        (name = "settings", description = "The pool's size at run time"),
        (name = "templates", description = "Agent templates: the public catalog, and writing them"),
        (name = "prompts", description = "Agent instructions kept as Notion pages"),
        (name = "health", description = "Liveness, version, metrics"),
        (name = "docs", description = "This document and its page"),
    ),
)]
struct Base;

/// The document's frame: info, tags, the error schema and the security schemes. The paths come
/// from the router's groups.
pub fn base() -> OpenApi {
    let mut doc = <Base as utoipa::OpenApi>::openapi();
    doc.info.version = crate::VERSION.to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    let bearer = |description: &str| {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(description.to_string());
        SecurityScheme::Http(http)
    };
    components.add_security_scheme(BEARER, bearer("`Authorization: Bearer <POOL_API_KEY>`"));
    components.add_security_scheme(
        QUERY_KEY,
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "key",
            "`?key=<POOL_API_KEY>`, accepted on the event stream only",
        ))),
    );
    components.add_security_scheme(
        SESSION,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            COOKIE_NAME.to_string(),
            format!(
                "A dashboard session (log in at `/admin`). Its writes also need the session's \
                 CSRF token in `{CSRF_HEADER}` (`?csrf=` on the event stream)."
            ),
        ))),
    );
    components.add_security_scheme(
        RUNTIME_TOKEN,
        bearer("`Authorization: Bearer <the instance's OPENCLAW_GATEWAY_TOKEN>`: runtimes only"),
    );
    components.add_security_scheme(
        METRICS_TOKEN,
        bearer("`Authorization: Bearer <METRICS_TOKEN>`, when `METRICS_TOKEN` is set"),
    );
    doc
}

fn operations(doc: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

fn error_reply(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// Declares, on every operation of one group's document, who may call it and the errors that
/// follow from that. What a route declares itself stays.
pub fn restrict(doc: &mut OpenApi, access: Access) {
    let schemes: &[&str] = match access {
        Access::Static | Access::Public => &[],
        Access::Operator => &[BEARER, SESSION],
        Access::Stream => &[BEARER, QUERY_KEY, SESSION],
    };
    for operation in operations(doc) {
        let responses = &mut operation.responses.responses;
        if access != Access::Static {
            responses.entry("503".to_string()).or_insert_with(|| {
                error_reply("Postgres unavailable (`database_unavailable`)").into()
            });
        }
        if schemes.is_empty() {
            continue;
        }
        // One requirement per scheme: any one of them lets the caller in.
        operation.security = Some(
            schemes
                .iter()
                .map(|scheme| SecurityRequirement::new(*scheme, Vec::<String>::new()))
                .collect(),
        );
        responses
            .entry("401".to_string())
            .or_insert_with(|| error_reply("No key, a wrong key, or no live session").into());
        responses.entry("403".to_string()).or_insert_with(|| {
            error_reply("A session's write without its CSRF token, or from another origin").into()
        });
        // Wrong keys are throttled per client: while it waits, every key it sends is refused.
        responses.entry("429".to_string()).or_insert_with(|| {
            error_reply("Too many wrong keys from this client: try again after `Retry-After` seconds (`too_many_wrong_keys`)").into()
        });
    }
}

/// One server-sent event as a client's parser sees it. `data` is a JSON object whose `type` is
/// `step`, `instance`, `error` or `complete`; the last event is always `complete`.
#[derive(utoipa::ToSchema)]
pub struct ServerSentEvent {
    pub event: Option<String>,
    #[schema(content_media_type = "application/json")]
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

/// The finished document, shared by the `/openapi.json` handler.
#[derive(Clone)]
pub struct Document(pub Arc<OpenApi>);

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
pub async fn document(Extension(Document(doc)): Extension<Document>) -> Response {
    match serde_json::to_string(doc.as_ref()) {
        Ok(json) => ([(CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => {
            tracing::error!(%error, "serializing the API document");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }
    }
}

/// `GET /docs`: the document as a page. Its script (`/assets/docs.js`) fetches `/openapi.json`.
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "A page that renders this document", content_type = "text/html", body = String)))]
pub async fn page() -> Html<&'static str> {
    Html(include_str!("web/assets/docs.html"))
}
