//! AWS Lambda: the same router, served through `lambda_http` when `AWS_LAMBDA_RUNTIME_API` is set,
//! and the tick on an EventBridge schedule.
//!
//! API Gateway (REST and HTTP APIs) and function URL events become requests for the router. Any
//! other event reaches the service as `lambda_http`'s pass-through request (`POST /events` with the
//! event as its body): a scheduled event runs the full tick of its slot and answers the report;
//! anything else fails the invocation.

use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use lambda_http::request::RequestContext;
use lambda_http::{service_fn, Request, RequestExt};
use serde::Deserialize;
use tower::ServiceExt;

use agentpool_core::config::ConfigError;
use agentpool_core::tick::{self, Mode};

use crate::state::AppState;

/// What `lambda_runtime` reads at start-up besides `AWS_LAMBDA_RUNTIME_API`, and panics without.
const RUNTIME_VARIABLES: [&str; 3] = [
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// Refuses to start, naming the variable, where `lambda_runtime` would panic: Lambda always sets
/// these, so one missing means the binary was started by hand with a partial environment.
pub fn check_environment() -> Result<(), ConfigError> {
    for name in RUNTIME_VARIABLES {
        if std::env::var_os(name).is_none() {
            return Err(ConfigError {
                setting: name.into(),
                problem: "missing; Lambda sets it with AWS_LAMBDA_RUNTIME_API".into(),
            });
        }
    }
    Ok(())
}

pub async fn serve(state: AppState) -> Result<(), lambda_http::Error> {
    let router = crate::router(state.clone());
    lambda_http::run(service_fn(move |request: Request| {
        let (router, state) = (router.clone(), state.clone());
        async move {
            if matches!(
                request.request_context_ref(),
                Some(RequestContext::PassThrough)
            ) {
                return event(&state, &request).await;
            }
            let response = router.oneshot(with_source_ip(request)).await?;
            Ok::<_, lambda_http::Error>(response)
        }
    }))
    .await
}

/// The client's address as API Gateway saw it (from the connection, not from a header), where
/// `serve` has the peer's: wrong keys are then throttled per client, not all together.
fn with_source_ip(mut request: Request) -> Request {
    let source = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone(),
        Some(RequestContext::ApiGatewayV1(context)) => context.identity.source_ip.clone(),
        _ => None,
    };
    if let Some(ip) = source.and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(ip, 0)));
    }
    request
}

/// The fields of an EventBridge event that say what it is.
#[derive(Deserialize)]
struct Event {
    source: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: Option<String>,
    /// For a scheduled event, the time the rule fired for: the slot.
    time: Option<DateTime<Utc>>,
}

/// A non-HTTP event: a scheduled event runs the tick; anything else is an error.
async fn event(state: &AppState, request: &Request) -> Result<Response, lambda_http::Error> {
    let event: Event = serde_json::from_slice(request.body().as_ref())
        .map_err(|e| format!("unsupported event: not an HTTP or EventBridge event ({e})"))?;
    let scheduled = event.source.as_deref() == Some("aws.events")
        && event.detail_type.as_deref() == Some("Scheduled Event");
    if !scheduled {
        return Err(format!(
            "unsupported event: source {:?}, detail-type {:?}; expected an HTTP event or an \
             EventBridge \"Scheduled Event\"",
            event.source, event.detail_type
        )
        .into());
    }
    let request_id = request
        .lambda_context_ref()
        .map_or("unknown", |context| context.request_id.as_str());
    // EventBridge delivers an event at least once: the slot makes a second delivery skip.
    let report = match event.time {
        Some(slot) => {
            let runner = format!("lambda {request_id}");
            tick::slots::run(&state.pool, slot, &runner, &state.shutdown).await?
        }
        None => tick::run_until(&state.pool, Mode::Full, &state.shutdown).await?,
    };
    tracing::info!(
        slot = ?report.slot,
        skipped = report.skipped,
        skipped_because = ?report.skipped_because,
        created = report.created.len(),
        destroyed = report.destroyed.len(),
        transitions = report.transitions.len(),
        errors = report.errors.len(),
        duration_ms = report.duration_ms,
        "scheduled tick"
    );
    Ok(Json(report).into_response())
}
