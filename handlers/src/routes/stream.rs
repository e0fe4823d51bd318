//! `GET /api/pool/replenish/stream?count=N`: creates N instances and streams progress as SSE,
//! for the admin dashboard's "+ Add" button.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use agentpool_core::domain::Actor;
use agentpool_core::{instances, tick};

use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct StreamQuery {
    count: Option<String>,
}

/// Tools this build provisions nothing for; reported as `skip` so an operator sees them.
const UNCONFIGURED_TOOLS: [&str; 3] = ["openrouter", "agentmail", "telnyx"];

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
    // The work runs to its end whether or not the client stays to watch.
    tokio::spawn(async move {
        let pool = &state.pool;
        let settings = &pool.settings;
        let provider_step = pool.provider.kind().as_str();
        let reserved = match instances::reserve(
            &pool.db,
            count,
            settings.pool_max_total,
            &settings.pool_name_prefix,
            Actor::Operator,
            "replenish requested (stream)",
        )
        .await
        {
            Ok(reserved) => reserved,
            Err(e) => {
                let _ = tx.send(json!({"type": "error", "message": e.to_string()}));
                return;
            }
        };
        let (mut created, mut failed) = (0, count as usize - reserved.len());
        for (index, row) in reserved.into_iter().enumerate() {
            let instance_num = index + 1;
            let step = |step: &str, status: &str, message: String| json!({"type": "step", "instanceNum": instance_num, "step": step, "status": status, "message": message});
            for tool in UNCONFIGURED_TOOLS {
                let _ = tx.send(step(tool, "skip", format!("{tool} is not configured")));
            }
            let _ = tx.send(step(
                provider_step,
                "active",
                format!("creating {}", row.name),
            ));
            let id = row.id.clone();
            let outcome = tick::execute::create_reserved(pool, vec![row]).await;
            match outcome.into_iter().next() {
                Some((_, Ok(()))) => {
                    created += 1;
                    let _ = tx.send(step(provider_step, "ok", "created".into()));
                    let _ = tx.send(step("done", "ok", "starting".into()));
                    let _ = tx.send(json!({"type": "instance", "instanceNum": instance_num, "instance": {"id": id, "status": "starting"}}));
                }
                Some((_, Err(e))) => {
                    failed += 1;
                    let _ = tx.send(step(provider_step, "fail", e.to_string()));
                }
                None => failed += 1,
            }
        }
        let counts = instances::counts(&pool.db).await.ok();
        let _ = tx.send(
            json!({"type": "complete", "created": created, "failed": failed, "counts": counts}),
        );
        state.kicker.kick();
    });
    let events = UnboundedReceiverStream::new(rx)
        .map(|message| Ok(Event::default().data(message.to_string())));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
