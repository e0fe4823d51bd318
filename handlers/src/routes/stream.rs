//! `GET /api/pool/replenish/stream?count=N`: creates N instances and streams progress as SSE,
//! for the admin dashboard's "+ Add" button. Events: `step` (per instance and step: `active`, `ok`,
//! `fail` or `skip`), `instance` (id, name, status, url), and always a final `complete`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use agentpool_core::creation::{self, StepStatus};
use agentpool_core::domain::Actor;
use agentpool_core::gate::Gate;
use agentpool_core::overview;

use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// How many instances to create, 1 to 100 (default 1).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    count: Option<String>,
}

#[utoipa::path(get, path = "/api/pool/replenish/stream", tag = "pool",
    description = "Creates instances and streams their creation as server-sent events: `step`, \
                   `instance`, and a final `complete`. `EventSource` cannot set headers, so the \
                   key may come as `?key=` here (and only here).",
    params(StreamQuery),
    responses(
        (status = 200, description = "Server-sent events, each `data:` a JSON object",
         content_type = "text/event-stream", body = crate::openapi::ServerSentEvent),
        (status = 400, description = "Bad `count`", body = crate::error::ErrorBody),
    ))]
pub async fn replenish(
    State(state): State<AppState>,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let count: u32 = match query.count.as_deref() {
        None => 1,
        Some(raw) => raw
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_request",
                    "count must be an integer between 1 and 100",
                )
            })?,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    // The work runs to its end whether or not the client stays to watch (and shutdown waits).
    let worker = state.clone();
    state.spawn(async move { create_streaming(&worker, count, &tx).await });
    let events = UnboundedReceiverStream::new(rx)
        .map(|message| Ok(Event::default().data(message.to_string())));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Steps of one instance's creation, as `step` events.
struct Steps {
    tx: UnboundedSender<Value>,
    instance_num: usize,
}

impl creation::Progress for Steps {
    fn step(&self, step: &str, status: StepStatus, message: &str) {
        // A client that left makes sends fail; the work goes on.
        let _ = self.tx.send(json!({
            "type": "step", "instanceNum": self.instance_num,
            "step": step, "status": status, "message": message,
        }));
    }
}

async fn create_streaming(state: &AppState, count: u32, tx: &UnboundedSender<Value>) {
    let send = |event: Value| {
        let _ = tx.send(event);
    };
    let pool = &state.pool;
    let mut created = 0usize;
    let mut failed;
    match creation::reserve(pool, count, Actor::Operator, "replenish requested (stream)").await {
        Err(e) => {
            tracing::warn!(error = %e, "reserving instances for the stream");
            failed = count as usize;
            send(json!({"type": "error", "code": e.code(), "message": e.public_message()}));
        }
        Ok(batch) => {
            let creation::Batch { rows, creator } = batch;
            failed = count as usize - rows.len();
            let gate = Gate::until(state.shutdown.clone());
            for (index, row) in rows.into_iter().enumerate() {
                let instance_num = index + 1;
                let steps = Arc::new(Steps {
                    tx: tx.clone(),
                    instance_num,
                });
                // One at a time, so that the steps of one instance arrive together.
                match creation::create_gated(pool, &row, &gate, steps.clone()).await {
                    creation::Outcome::Created => {
                        created += 1;
                        let url = overview::instance(pool, &row.id)
                            .await
                            .ok()
                            .and_then(|i| i.url);
                        send(
                            json!({"type": "instance", "instanceNum": instance_num, "instance": {
                                "id": row.id, "name": row.name, "status": "starting", "url": url,
                            }}),
                        );
                    }
                    creation::Outcome::Failed(_) => failed += 1,
                    creation::Outcome::CutShort(_) => {
                        failed += 1;
                        creation::Progress::step(
                            steps.as_ref(),
                            "done",
                            StepStatus::Fail,
                            "stopped: shutting down",
                        );
                    }
                }
            }
            creator.finish().await;
        }
    }
    let counts = overview::counts(pool).await.ok();
    send(json!({"type": "complete", "created": created, "failed": failed, "counts": counts}));
    state.kicker.kick();
}
