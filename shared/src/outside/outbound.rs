//! Outbound HTTP to the real world: the one way every provider and tool talks to a SaaS API.
//!
//! - Every attempt has a timeout; requests to one host are bounded in number at once.
//! - 5xx, timeouts and dropped connections are retried with jittered exponential backoff — but a
//!   request whose effect is unknown after such a failure (it may have been carried out) is sent
//!   again only if the caller says replaying it is safe ([`Replay`]). The caller of an unsafe one
//!   decides (look the resource up by name, say).
//! - 429 is retried after its `Retry-After` (capped); a refused connection is always retried, since
//!   nothing reached the server.
//! - GraphQL errors inside a 200 are recognised: not found, rate limits said in words (Railway's
//!   "You are creating volumes too quickly"), anything else a refusal.
//! - Only an explicit not-found is [`Failure::NotFound`]; everything else is an error, never "gone".
//!
//! Nothing here logs a credential or a URL's query: failures carry a kind, not the server's words.
//! The server's words (an error's message or body) go to the debug log only through [`Sent`],
//! which blanks everything the request carried: an API may quote its input back, and that input
//! holds gateway tokens and tool keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::header::RETRY_AFTER;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::config::Secret;

pub use crate::calls::{Failure, Tally};

/// Strings shorter than this are not taken for secrets: every token and key is longer, and
/// blanking short words would blank the message.
const SHORTEST_SECRET: usize = 12;

/// How much of a server's error text the log keeps.
const LOGGED_TEXT: usize = 300;

/// What a request carried, to be blanked from anything the server says back before it is
/// logged: its bearer token and every string it sent (body fields, GraphQL variables, query
/// values), since any of them may be a secret.
#[derive(Debug, Default)]
pub struct Sent(Vec<String>);

impl Sent {
    /// Secrets known by name (a gateway token), besides what a request carried.
    pub fn of<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut sent = Self::default();
        for secret in secrets {
            sent.add(secret);
        }
        sent
    }

    fn add(&mut self, text: &str) {
        if text.len() >= SHORTEST_SECRET && !self.0.iter().any(|s| s == text) {
            self.0.push(text.to_string());
        }
    }

    fn add_leaves(&mut self, value: &Value) {
        match value {
            Value::String(text) => self.add(text),
            Value::Array(items) => items.iter().for_each(|v| self.add_leaves(v)),
            Value::Object(map) => map.values().for_each(|v| self.add_leaves(v)),
            _ => {}
        }
    }

    fn of_request(request: &reqwest::Request) -> Self {
        let mut sent = Self::default();
        if let Some(auth) = request
            .headers()
            .get(reqwest::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            sent.add(auth.strip_prefix("Bearer ").unwrap_or(auth));
        }
        for (_, value) in request.url().query_pairs() {
            sent.add(&value);
        }
        if let Some(body) = request.body().and_then(|b| b.as_bytes()) {
            match serde_json::from_slice::<Value>(body) {
                Ok(json) => sent.add_leaves(&json),
                Err(_) => sent.add(&String::from_utf8_lossy(body)),
            }
        }
        sent
    }

    /// `text` with everything sent blanked, then cut to a length fit for a log line (in that
    /// order: a cut could leave half a secret that no longer matches).
    pub fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<&String> = self.0.iter().collect();
        // A secret inside a longer one is blanked with it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut text = text.to_string();
        for secret in secrets {
            text = text.replace(secret.as_str(), "[redacted]");
        }
        text.chars().take(LOGGED_TEXT).collect()
    }
}

/// One failed attempt, and what it tells about retrying.
struct Attempt {
    failure: Failure,
    retry_after: Option<Duration>,
    /// Whether the request may have reached the server (a refused connection did not).
    sent: bool,
}

impl Attempt {
    fn sent(failure: Failure) -> Self {
        Self {
            failure,
            retry_after: None,
            sent: true,
        }
    }

    /// Whether to try again: always when nothing was carried out (not sent, or rate limited);
    /// after a failure that may have been carried out, only if replaying is safe.
    fn retry(&self, replay: Replay) -> bool {
        match self.failure {
            Failure::RateLimited => true,
            Failure::Connection | Failure::TimedOut | Failure::Status(500..=599) => {
                !self.sent || replay == Replay::Safe
            }
            _ => false,
        }
    }
}

/// May a request be sent again after a failure that leaves its effect unknown?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Reads, deletes, and writes that are idempotent (a `client_id`, a full config commit).
    Safe,
    /// Creations that would make a second resource: retried only when surely not carried out
    /// (a refused connection, a 429, a rate-limit error).
    Unsafe,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Per attempt.
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; a longer one ends the call as `RateLimited`.
    pub max_retry_after: Duration,
    /// Requests in flight at once to one host.
    pub per_host: usize,
}

impl Policy {
    /// The default policy with the operator's per-attempt timeout (`OUTBOUND_TIMEOUT_MS`).
    pub fn from_settings(settings: &crate::config::OutboundSettings) -> Self {
        Self {
            timeout: settings.outbound_timeout(),
            ..Self::default()
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            attempts: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            per_host: 8,
        }
    }
}

/// Bearer tokens used in rotation: a token that is rate-limited hands over to the next one.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<Secret>,
    current: AtomicUsize,
}

impl Tokens {
    pub fn new(tokens: Vec<Secret>) -> Self {
        Self {
            tokens,
            current: AtomicUsize::new(0),
        }
    }

    fn current(&self) -> Option<&Secret> {
        let n = self.tokens.len();
        (n > 0).then(|| &self.tokens[self.current.load(Ordering::Relaxed) % n])
    }

    fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Outbound {
    http: reqwest::Client,
    policy: Policy,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Where failed attempts are told; the pool that built this client writes them out.
    tally: Tally,
}

/// One call, for the log and the error: which service, which step.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub service: &'static str,
    pub step: &'static str,
    pub replay: Replay,
}

impl Outbound {
    pub fn new(policy: Policy, tally: Tally) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            http,
            policy,
            hosts: Mutex::new(HashMap::new()),
            tally,
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    fn limit(&self, url: &str) -> Arc<Semaphore> {
        let host = reqwest::Url::parse(url)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let mut hosts = match self.hosts.lock() {
            Ok(hosts) => hosts,
            Err(poisoned) => poisoned.into_inner(),
        };
        hosts
            .entry(host)
            .or_insert_with(|| Arc::new(Semaphore::new(self.policy.per_host)))
            .clone()
    }

    /// Sends the request `build` makes (anew for each attempt) and returns the body of a 2xx
    /// answer as JSON (`null` for an empty body).
    pub async fn json(
        &self,
        call: Call,
        url: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Value, Failure> {
        self.attempts(call, url, |attempt| {
            let request = build(&self.http);
            async move { self.once(call, attempt, request).await }
        })
        .await
    }

    /// A GraphQL request: `{query, variables}` with a token from `tokens`; returns `data`. A
    /// rate-limited token hands over to the next one.
    pub async fn graphql(
        &self,
        call: Call,
        url: &str,
        tokens: &Tokens,
        query: &str,
        variables: Value,
    ) -> Result<Value, Failure> {
        let body = serde_json::json!({"query": query, "variables": variables});
        self.attempts(call, url, |attempt| {
            let mut request = self.http.post(url).json(&body);
            let mut sent = Sent::default();
            sent.add_leaves(&variables);
            if let Some(token) = tokens.current() {
                request = request.bearer_auth(token.expose());
                sent.add(token.expose());
            }
            async move {
                let reply = self
                    .once(call, attempt, request)
                    .await
                    .and_then(|reply| graphql_data(reply, &sent));
                if matches!(&reply, Err(a) if a.failure == Failure::RateLimited) {
                    tokens.rotate();
                }
                reply
            }
        })
        .await
    }

    async fn attempts<F, Fut>(&self, call: Call, url: &str, attempt: F) -> Result<Value, Failure>
    where
        F: Fn(u32) -> Fut,
        Fut: std::future::Future<Output = Result<Value, Attempt>>,
    {
        let limit = self.limit(url);
        let mut n = 0;
        loop {
            n += 1;
            let outcome = {
                let _permit = limit.acquire().await;
                attempt(n).await
            };
            let failed = match outcome {
                Ok(value) => return Ok(value),
                Err(failed) => failed,
            };
            let (failure, retry_after) = (failed.failure.clone(), failed.retry_after);
            self.tally.failed(call.service, &failure);
            if !failed.retry(call.replay) || n >= self.policy.attempts {
                tracing::warn!(service = call.service, step = call.step, attempt = n, %failure, "call failed");
                return Err(failure);
            }
            let wait = match retry_after {
                Some(after) if after > self.policy.max_retry_after => {
                    tracing::warn!(
                        service = call.service,
                        step = call.step,
                        retry_after_s = after.as_secs(),
                        "rate limited for too long"
                    );
                    return Err(Failure::RateLimited);
                }
                Some(after) => after,
                None => self.backoff(n),
            };
            tracing::info!(service = call.service, step = call.step, attempt = n, %failure, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Exponential, capped, with full jitter so that a fleet of retries does not move in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .policy
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.policy.max_backoff);
        exp.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
    }

    async fn once(
        &self,
        call: Call,
        attempt: u32,
        request: RequestBuilder,
    ) -> Result<Value, Attempt> {
        let request = match request.timeout(self.policy.timeout).build() {
            Ok(request) => request,
            // A request that cannot be built (a bad URL) never left.
            Err(e) => {
                tracing::warn!(service = call.service, step = call.step, error = %e.without_url(), "request not built");
                return Err(Attempt::sent(Failure::Refused));
            }
        };
        let sent = Sent::of_request(&request);
        let response = match self.http.execute(request).await {
            Ok(response) => response,
            Err(e) => {
                let failure = if e.is_timeout() {
                    Failure::TimedOut
                } else {
                    Failure::Connection
                };
                // A connection that could not be made carried nothing.
                let sent = !e.is_connect() || e.is_timeout();
                tracing::debug!(service = call.service, step = call.step, attempt, error = %e.without_url(), "request failed");
                return Err(Attempt {
                    failure,
                    retry_after: None,
                    sent,
                });
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                let failure = if e.is_timeout() {
                    Failure::TimedOut
                } else {
                    Failure::Connection
                };
                tracing::debug!(service = call.service, step = call.step, attempt, error = %e.without_url(), "reply cut off");
                return Err(Attempt::sent(failure));
            }
        };
        let failure = match status {
            s if s.is_success() => {
                if body.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&body).map_err(|_| Attempt::sent(Failure::BadReply));
            }
            StatusCode::TOO_MANY_REQUESTS => Failure::RateLimited,
            StatusCode::NOT_FOUND => Failure::NotFound,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Failure::Unauthorized,
            s => Failure::Status(s.as_u16()),
        };
        tracing::debug!(
            service = call.service,
            step = call.step,
            attempt,
            %status,
            body = %sent.redact(&String::from_utf8_lossy(&body)),
            "answered with an error"
        );
        Err(Attempt {
            failure,
            retry_after,
            sent: true,
        })
    }
}

/// `data` of a GraphQL reply, or what its `errors` say (logged with what was `sent` blanked).
fn graphql_data(reply: Value, sent: &Sent) -> Result<Value, Attempt> {
    if let Some(errors) = reply.get("errors").and_then(Value::as_array) {
        if let Some(first) = errors.first() {
            let said = first
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let message = said.to_ascii_lowercase();
            let failure = if message.contains("not found") {
                Failure::NotFound
            } else if ["rate limit", "too quickly", "too many requests", "only one"]
                .iter()
                .any(|said| message.contains(said))
            {
                Failure::RateLimited
            } else if message.contains("not authorized") || message.contains("unauthorized") {
                Failure::Unauthorized
            } else {
                tracing::debug!(message = %sent.redact(said), "graphql error");
                Failure::Refused
            };
            return Err(Attempt::sent(failure));
        }
    }
    match reply.get("data") {
        Some(data) if !data.is_null() => Ok(data.clone()),
        _ => Err(Attempt::sent(Failure::BadReply)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};

    use super::*;

    /// The answer to the n-th request (1-based), given its `Authorization` header.
    type Answer = Arc<dyn Fn(u32, &str) -> Response + Send + Sync>;

    /// A server that answers with a script, and counts requests and the most in flight at once.
    #[derive(Clone)]
    struct Script {
        answer: Answer,
        seen: Arc<AtomicU32>,
        in_flight: Arc<AtomicU32>,
        most: Arc<AtomicU32>,
        delay: Duration,
    }

    async fn handle(State(script): State<Script>, headers: HeaderMap) -> Response {
        let n = script.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let now = script.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        script.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(script.delay).await;
        script.in_flight.fetch_sub(1, Ordering::SeqCst);
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (script.answer)(n, &bearer)
    }

    async fn serve(
        delay: Duration,
        answer: impl Fn(u32, &str) -> Response + Send + Sync + 'static,
    ) -> (String, Script) {
        let script = Script {
            answer: Arc::new(answer),
            seen: Arc::default(),
            in_flight: Arc::default(),
            most: Arc::default(),
            delay,
        };
        let app = Router::new()
            .route("/", post(handle))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, script)
    }

    fn fast() -> Outbound {
        Outbound::new(
            Policy {
                timeout: Duration::from_millis(300),
                attempts: 4,
                backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                max_retry_after: Duration::from_secs(2),
                per_host: 2,
            },
            Tally::default(),
        )
    }

    fn call(replay: Replay) -> Call {
        Call {
            service: "test",
            step: "step",
            replay,
        }
    }

    fn ok() -> Response {
        Json(serde_json::json!({"data": {"ok": true}})).into_response()
    }

    #[tokio::test]
    async fn server_errors_are_retried_only_when_replaying_is_safe() {
        let (url, script) = serve(Duration::ZERO, |n, _| {
            if n <= 2 {
                AxumStatus::SERVICE_UNAVAILABLE.into_response()
            } else {
                ok()
            }
        })
        .await;
        let out = fast();
        let post = |c: &reqwest::Client| c.post(&url);
        assert!(out.json(call(Replay::Safe), &url, post).await.is_ok());
        assert_eq!(script.seen.load(Ordering::SeqCst), 3);

        let (url, script) = serve(Duration::ZERO, |_, _| {
            AxumStatus::BAD_GATEWAY.into_response()
        })
        .await;
        let post = |c: &reqwest::Client| c.post(&url);
        assert_eq!(
            out.json(call(Replay::Unsafe), &url, post).await,
            Err(Failure::Status(502))
        );
        assert_eq!(
            script.seen.load(Ordering::SeqCst),
            1,
            "a creation is not replayed blind"
        );
    }

    #[tokio::test]
    async fn failed_attempts_are_told_to_the_clients_own_tally_only() {
        let (url, _script) = serve(Duration::ZERO, |n, _| {
            if n <= 2 {
                AxumStatus::SERVICE_UNAVAILABLE.into_response()
            } else {
                ok()
            }
        })
        .await;
        let (ours, theirs) = (Tally::default(), Tally::default());
        let out = Outbound::new(fast().policy, ours.clone());
        let _other = Outbound::new(fast().policy, theirs.clone());
        let post = |c: &reqwest::Client| c.post(&url);
        assert!(out.json(call(Replay::Safe), &url, post).await.is_ok());
        let told: Vec<_> = ours.take().into_iter().collect();
        assert_eq!(
            told,
            vec![(("test", "server_error"), 2)],
            "a success after retries still counts them"
        );
        assert!(
            theirs.take().is_empty(),
            "another pool's clients are not told"
        );
        assert!(ours.take().is_empty(), "taken once");
    }

    #[tokio::test]
    async fn a_429_waits_for_its_retry_after() {
        let (url, script) = serve(Duration::ZERO, |n, _| {
            if n == 1 {
                (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response()
            } else {
                ok()
            }
        })
        .await;
        let post = |c: &reqwest::Client| c.post(&url);
        let started = tokio::time::Instant::now();
        assert!(fast().json(call(Replay::Unsafe), &url, post).await.is_ok());
        assert_eq!(script.seen.load(Ordering::SeqCst), 2);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After not honoured"
        );
    }

    #[tokio::test]
    async fn graphql_errors_in_a_200_are_read() {
        let (url, _) = serve(Duration::ZERO, |_, _| {
            Json(serde_json::json!({"errors": [{"message": "Service not found"}], "data": null}))
                .into_response()
        })
        .await;
        let tokens = Tokens::new(vec![Secret::new("t1")]);
        let reply = fast()
            .graphql(
                call(Replay::Safe),
                &url,
                &tokens,
                "query { x }",
                Value::Null,
            )
            .await;
        assert_eq!(reply, Err(Failure::NotFound));

        let (url, _) = serve(Duration::ZERO, |_, _| {
            Json(serde_json::json!({"errors": [{"message": "Problem processing request"}]}))
                .into_response()
        })
        .await;
        let reply = fast()
            .graphql(
                call(Replay::Safe),
                &url,
                &tokens,
                "query { x }",
                Value::Null,
            )
            .await;
        assert_eq!(reply, Err(Failure::Refused));
    }

    #[tokio::test]
    async fn a_rate_limited_token_hands_over_to_the_next() {
        let (url, script) = serve(Duration::ZERO, |_, bearer| {
            if bearer == "Bearer first" {
                Json(serde_json::json!({"errors": [{"message": "You are creating volumes too quickly"}]}))
                    .into_response()
            } else {
                ok()
            }
        })
        .await;
        let tokens = Tokens::new(vec![Secret::new("first"), Secret::new("second")]);
        let reply = fast()
            .graphql(
                call(Replay::Unsafe),
                &url,
                &tokens,
                "mutation { x }",
                Value::Null,
            )
            .await;
        assert_eq!(reply, Ok(serde_json::json!({"ok": true})));
        assert_eq!(script.seen.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn what_surely_was_not_carried_out_is_retried_whatever_the_request() {
        let unsent = Attempt {
            failure: Failure::Connection,
            retry_after: None,
            sent: false,
        };
        assert!(unsent.retry(Replay::Unsafe));
        assert!(!Attempt::sent(Failure::Connection).retry(Replay::Unsafe));
        assert!(Attempt::sent(Failure::Connection).retry(Replay::Safe));
        assert!(Attempt::sent(Failure::RateLimited).retry(Replay::Unsafe));
        assert!(
            !Attempt::sent(Failure::NotFound).retry(Replay::Safe),
            "not found is final"
        );
        assert!(!Attempt::sent(Failure::Status(400)).retry(Replay::Safe));
    }

    #[tokio::test]
    async fn a_refused_connection_ends_as_a_connection_failure() {
        // Nothing listens there: nothing was carried out, so trying again is safe.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let post = |c: &reqwest::Client| c.post(&url);
        let reply = fast().json(call(Replay::Unsafe), &url, post).await;
        assert_eq!(reply, Err(Failure::Connection));
    }

    #[tokio::test]
    async fn a_timeout_is_not_replayed_for_a_creation() {
        let (url, script) = serve(Duration::from_secs(2), |_, _| ok()).await;
        let post = |c: &reqwest::Client| c.post(&url);
        assert_eq!(
            fast().json(call(Replay::Unsafe), &url, post).await,
            Err(Failure::TimedOut)
        );
        assert_eq!(script.seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn what_a_request_sent_is_blanked_from_what_the_server_says() {
        let secret = "0123456789abcdef0123456789abcdef";
        let request = reqwest::Client::new()
            .post("http://127.0.0.1:9/keys?token=query-secret-value")
            .bearer_auth("bearer-secret-value")
            .json(&serde_json::json!({"env": {"GATEWAY_TOKEN": secret}, "name": "ap-1"}))
            .build()
            .unwrap();
        let sent = Sent::of_request(&request);
        let said = format!(
            "Invalid input {{GATEWAY_TOKEN: {secret}}} with bearer-secret-value and \
             query-secret-value for ap-1"
        );
        assert_eq!(
            sent.redact(&said),
            "Invalid input {GATEWAY_TOKEN: [redacted]} with [redacted] and [redacted] for ap-1"
        );
        // Blanked before it is cut: half a secret at the end would not match any more.
        let long = format!("{}{secret}", "x".repeat(LOGGED_TEXT - 5));
        assert!(!sent.redact(&long).contains(&secret[..5]));
    }

    #[tokio::test]
    async fn requests_to_one_host_are_bounded() {
        let (url, script) = serve(Duration::from_millis(50), |_, _| ok()).await;
        let out = fast();
        let calls = (0..6).map(|_| out.json(call(Replay::Safe), &url, |c| c.post(&url)));
        for reply in futures::future::join_all(calls).await {
            assert!(reply.is_ok());
        }
        assert_eq!(script.most.load(Ordering::SeqCst), 2);
    }
}
