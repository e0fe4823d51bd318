//! A stand-in for the AWS Lambda Runtime API (version 2018-06-01), to run the real `agentpool`
//! binary as a Lambda function: start it with `AWS_LAMBDA_RUNTIME_API` = [`RuntimeApi::address`]
//! (and [`RuntimeApi::function_env`]), then [`RuntimeApi::invoke`] queues an event, hands it to
//! the function's long-polled `GET /runtime/invocation/next`, and returns what the function
//! posted back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:agentpool";

/// What the function answered for one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST /runtime/invocation/{id}/response`: the function's result.
    Response(Value),
    /// `POST /runtime/invocation/{id}/error`: `{errorType, errorMessage}`.
    Error(Value),
}

struct Queued {
    id: String,
    event: Value,
}

struct Shared {
    sender: mpsc::UnboundedSender<Queued>,
    /// One long poll takes the next event at a time, as a function instance polls one at a time.
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_errors: Mutex<Vec<Value>>,
    next_id: AtomicU64,
}

/// The stand-in, serving until dropped.
pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            sender,
            queue: tokio::sync::Mutex::new(receiver),
            waiting: Mutex::new(HashMap::new()),
            init_errors: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the runtime API stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    /// `AWS_LAMBDA_RUNTIME_API`: host and port, no scheme.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The environment Lambda gives a function, pointing at this stand-in.
    pub fn function_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_LAMBDA_RUNTIME_API", self.address()),
            ("AWS_LAMBDA_FUNCTION_NAME", "agentpool".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ]
    }

    /// Queues `event` and waits up to `limit` for the function's answer.
    pub async fn invoke(&self, event: Value, limit: Duration) -> anyhow::Result<Outcome> {
        let id = format!(
            "req-{:08}",
            self.shared.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        self.lock_waiting().insert(id.clone(), tx);
        self.shared
            .sender
            .send(Queued {
                id: id.clone(),
                event,
            })
            .map_err(|_| anyhow::anyhow!("the stand-in's queue is closed"))?;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => anyhow::bail!("invocation {id} was dropped"),
            Err(_) => {
                self.lock_waiting().remove(&id);
                anyhow::bail!("no answer to invocation {id} within {limit:?}")
            }
        }
    }

    /// What the function reported on `POST /runtime/init/error`, in order.
    pub fn init_errors(&self) -> Vec<Value> {
        self.shared
            .init_errors
            .lock()
            .map(|errors| errors.clone())
            .unwrap_or_default()
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Outcome>>> {
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    let Some(Queued { id, event }) = shared.queue.lock().await.recv().await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_secs(60);
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    put("Lambda-Runtime-Aws-Request-Id", id.clone());
    put(
        "Lambda-Runtime-Deadline-Ms",
        deadline.as_millis().to_string(),
    );
    put("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN.into());
    put(
        "Lambda-Runtime-Trace-Id",
        format!("Root=1-00000000-{id:0>24};Parent=0000000000000000;Sampled=0"),
    );
    put("Content-Type", "application/json".into());
    (headers, event.to_string()).into_response()
}

fn settle(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    let waiter = shared
        .waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(id);
    match waiter {
        Some(waiter) => {
            let _ = waiter.send(outcome);
            StatusCode::ACCEPTED
        }
        // As the real API does for an unknown or already answered request id.
        None => StatusCode::BAD_REQUEST,
    }
}

fn as_json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn respond(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    settle(&shared, &id, Outcome::Response(as_json(&body)))
}

async fn fail(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    settle(&shared, &id, Outcome::Error(as_json(&body)))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    shared
        .init_errors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(as_json(&body));
    StatusCode::ACCEPTED
}

/// An API Gateway HTTP API (payload 2.0) event for `method path`.
pub fn http_event(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Value {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.to_string())))
        .collect();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "agentpool",
            "domainName": "agentpool.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "agentpool",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "agentpool-tests"
            },
            "requestId": "apigw-request",
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2025:00:00:00 +0000",
            "timeEpoch": 1_735_689_600_000_i64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

/// An EventBridge scheduled event for the rule firing at `time` (RFC 3339).
pub fn scheduled_event(time: &str) -> Value {
    json!({
        "version": "0",
        "id": format!("schedule-{time}"),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time,
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/agentpool-tick"],
        "detail": {}
    })
}
