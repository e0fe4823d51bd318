//! The Fly.io Sprites provider (seed 002), over the Sprites REST API and its exec WebSocket.
//!
//! Creation: the sprite (named `{POOL_ENVIRONMENT}-{row name}`, so pools of several environments
//! share an organisation without taking each other's sprites for orphans), its URL made public
//! and read back from the API (never built), the instance's variables written to an env file by
//! an exec, the setup as one exec per command (each retried: a long exec can outlive its
//! connection), and the runtime registered as the sprite's service on the HTTP port. The pool then
//! waits for the runtime, checks it is clean and asks for the golden checkpoint
//! ([`Provider::checkpoint`]), whose id is recorded with the instance; a recycle restores it.
//!
//! A creation refused for capacity (`concurrent_sprite_limit_exceeded`,
//! `sprite_creation_rate_limited`) is [`Error::Capacity`] with the `Retry-After` it came with: a
//! limit to wait out, never retried here.

use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{CreateSpec, Created, Provider, ResourceRef};
use crate::config::{OutboundSettings, ProviderKind, Secret, SpritesSettings};
use crate::domain::{ObservedResource, ResourceStatus};
use crate::error::{Error, Result};
use crate::outbound::{Call, Failure, Outbound, Policy, Replay, Tally};
use crate::progress::StepStatus;

const SERVICE: &str = "sprites";
/// The name of the runtime's service inside each sprite.
const RUNTIME_SERVICE: &str = "agent";
const GOLDEN: &str = "golden";
/// Attempts of one setup exec.
const EXEC_ATTEMPTS: u32 = 3;
/// Pause between checks that a restored sprite takes execs again.
const BACK_POLL: Duration = Duration::from_millis(100);

pub struct SpritesProvider {
    out: Outbound,
    api: String,
    token: Secret,
    environment: String,
    setup: Vec<String>,
    start_command: String,
    http_port: u16,
    env_file: String,
    exec_timeout: Duration,
    /// How long a restored sprite may take to take execs again.
    back_timeout: Duration,
}

/// What an exec ended with.
#[derive(Debug)]
pub struct ExecOutput {
    pub code: u8,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

fn failed(message: impl Into<String>) -> Error {
    Error::provider(SERVICE, message.into())
}

impl SpritesProvider {
    pub fn from_settings(
        settings: &SpritesSettings,
        outbound: &OutboundSettings,
        environment: &str,
        recycle_timeout: Duration,
        tally: &Tally,
    ) -> Result<Self> {
        let token = settings.sprite_token.clone().ok_or_else(|| {
            Error::Config(crate::config::ConfigError::new(
                "SPRITE_TOKEN",
                "required with POOL_PROVIDER=sprites",
            ))
        })?;
        Ok(Self {
            out: Outbound::new(Policy::from_settings(outbound), tally.clone()),
            api: settings.sprites_api_url.trim_end_matches('/').to_string(),
            token,
            environment: environment.to_ascii_lowercase(),
            setup: settings.setup_commands().map_err(Error::Config)?,
            start_command: settings.sprites_start_command.clone(),
            http_port: settings.sprites_http_port,
            env_file: settings.sprites_env_file.clone(),
            exec_timeout: Duration::from_millis(settings.sprites_exec_timeout_ms),
            back_timeout: recycle_timeout,
        })
    }

    /// The sprite of a row: lowercase, from the row's name (the instance id) and the environment.
    pub fn sprite_name(&self, name: &str) -> String {
        format!("{}-{}", self.environment, name).to_ascii_lowercase()
    }

    /// The row's name of a sprite of this pool's environment.
    fn row_name<'a>(&self, sprite: &'a str) -> Option<&'a str> {
        sprite
            .strip_prefix(self.environment.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/sprites{path}", self.api)
    }

    async fn call(
        &self,
        step: &'static str,
        replay: Replay,
        url: String,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> std::result::Result<Value, Failure> {
        let token = self.token.expose();
        self.out
            .json(
                Call {
                    service: SERVICE,
                    step,
                    replay,
                },
                &url,
                |client| build(client, &url).bearer_auth(token),
            )
            .await
    }

    /// `GET /v1/sprites/{name}`; `None` when it does not exist.
    async fn get(&self, sprite: &str) -> Result<Option<Value>> {
        match self
            .call(
                "get",
                Replay::Safe,
                self.url(&format!("/{sprite}")),
                |c, u| c.get(u),
            )
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(Failure::NotFound) => Ok(None),
            Err(f) => Err(Error::outbound(SERVICE, "get", f)),
        }
    }

    /// `POST /v1/sprites`, once: a capacity refusal is a limit to wait out, and a lost reply is
    /// found again by name.
    async fn create_sprite(&self, sprite: &str) -> Result<()> {
        let body = json!({"name": sprite, "url_settings": {"auth": "public"}});
        let sent = self
            .out
            .client()
            .post(self.url(""))
            .bearer_auth(self.token.expose())
            .json(&body)
            .timeout(self.exec_timeout.min(Duration::from_secs(60)))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Perhaps made: the lookup by name that follows tells.
            Err(_) => return Ok(()),
        };
        let status = response.status();
        if status.is_success() || status.as_u16() == 409 {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        let code = reply["error"].as_str().unwrap_or("").to_string();
        let retry_after = retry_after.or_else(|| reply["retry_after_seconds"].as_u64());
        match code.as_str() {
            "concurrent_sprite_limit_exceeded" | "sprite_creation_rate_limited" => {
                Err(Error::Capacity {
                    provider: SERVICE,
                    code,
                    retry_after: Duration::from_secs(retry_after.unwrap_or(30)),
                })
            }
            // An existing name (400 at Sprites, sometimes): found by the lookup.
            _ if status.as_u16() == 400
                && reply["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("exist")) =>
            {
                Ok(())
            }
            _ if status.as_u16() == 429 => Err(Error::Capacity {
                provider: SERVICE,
                code: "rate_limited".into(),
                retry_after: Duration::from_secs(retry_after.unwrap_or(30)),
            }),
            _ => Err(Error::outbound(
                SERVICE,
                "create",
                if status.as_u16() == 401 || status.as_u16() == 403 {
                    Failure::Unauthorized
                } else {
                    Failure::Status(status.as_u16())
                },
            )),
        }
    }

    /// Runs one command in the sprite over the exec WebSocket: stdin (if any) as frames of
    /// stream 0 and an EOF frame (4); stdout (1) and stderr (2) collected until the exit frame
    /// (3, then the code).
    pub async fn exec(
        &self,
        sprite: &str,
        cmd: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<ExecOutput> {
        let mut url = reqwest::Url::parse(&self.url(&format!("/{sprite}/exec")))
            .map_err(|e| failed(format!("exec url: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            for part in cmd {
                query.append_pair("cmd", part);
            }
            query.append_pair("stdin", if stdin.is_some() { "true" } else { "false" });
        }
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|_| failed("exec url scheme"))?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| failed(format!("exec request: {e}")))?;
        let auth = format!("Bearer {}", self.token.expose())
            .parse()
            .map_err(|_| failed("token is not a header value"))?;
        request.headers_mut().insert("authorization", auth);
        let run = async {
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .map_err(|e| failed(format!("exec connect: {}", connect_error(&e))))?;
            if let Some(input) = stdin {
                for chunk in input.chunks(32 * 1024) {
                    let mut frame = Vec::with_capacity(chunk.len() + 1);
                    frame.push(0u8);
                    frame.extend_from_slice(chunk);
                    socket
                        .send(Message::Binary(frame.into()))
                        .await
                        .map_err(|e| failed(format!("exec stdin: {e}")))?;
                }
                socket
                    .send(Message::Binary(vec![4u8].into()))
                    .await
                    .map_err(|e| failed(format!("exec stdin eof: {e}")))?;
            }
            let mut output = ExecOutput {
                code: 255,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(message) = socket.next().await {
                let message = message.map_err(|e| failed(format!("exec: {e}")))?;
                let Message::Binary(data) = message else {
                    continue;
                };
                match data.first() {
                    Some(1) => output.stdout.extend_from_slice(&data[1..]),
                    Some(2) => output.stderr.extend_from_slice(&data[1..]),
                    Some(3) => {
                        output.code = data.get(1).copied().unwrap_or(255);
                        let _ = socket.close(None).await;
                        return Ok(output);
                    }
                    _ => {}
                }
            }
            Err(failed("exec connection closed before the exit code"))
        };
        tokio::time::timeout(self.exec_timeout, run)
            .await
            .map_err(|_| failed("exec timed out"))?
    }

    /// One setup step, tried up to [`EXEC_ATTEMPTS`] times; a non-zero exit is a failure too.
    async fn exec_retried(
        &self,
        sprite: &str,
        what: &str,
        cmd: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<()> {
        let mut last = None;
        for attempt in 1..=EXEC_ATTEMPTS {
            match self.exec(sprite, cmd, stdin).await {
                Ok(out) if out.code == 0 => return Ok(()),
                Ok(out) => {
                    // The command's own words may quote the env file: only its length is logged.
                    tracing::warn!(
                        sprite,
                        what,
                        attempt,
                        code = out.code,
                        stderr_bytes = out.stderr.len(),
                        "setup step failed"
                    );
                    last = Some(failed(format!("{what} exited {}", out.code)));
                }
                Err(e) => {
                    tracing::warn!(sprite, what, attempt, error = %e, "setup step failed");
                    last = Some(e);
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        Err(last.unwrap_or_else(|| failed(format!("{what} failed"))))
    }

    /// Writes the instance's variables to the env file, one exec (retried).
    async fn write_env(&self, sprite: &str, env: &[(String, String)]) -> Result<()> {
        let text: String = env
            .iter()
            .map(|(k, v)| format!("{k}={}\n", v.replace('\n', " ")))
            .collect();
        self.exec_retried(
            sprite,
            "env file",
            &["sh", "-c", &format!("cat > '{}'", self.env_file)],
            Some(text.as_bytes()),
        )
        .await
    }

    /// Registers (or restarts) the runtime as the sprite's service on the HTTP port.
    async fn register_service(&self, sprite: &str) -> Result<()> {
        let start = self.with_env(&format!("exec {}", self.start_command));
        self.events(
            "service",
            reqwest::Method::PUT,
            self.url(&format!("/{sprite}/services/{RUNTIME_SERVICE}")),
            json!({"cmd": "bash", "args": ["-lc", start], "needs": [], "http_port": self.http_port}),
        )
        .await
        .map(drop)
    }

    /// A command run with the instance's variables set.
    fn with_env(&self, command: &str) -> String {
        format!(
            "set -a; . '{}'; set +a; {command}",
            self.env_file.replace('\'', "")
        )
    }

    /// Reads an NDJSON event stream (checkpoint, restore, service): the events in order; an
    /// `error` event is a failure.
    async fn events(
        &self,
        step: &'static str,
        method: reqwest::Method,
        url: String,
        body: Value,
    ) -> Result<Vec<Value>> {
        let response = self
            .out
            .client()
            .request(method, &url)
            .bearer_auth(self.token.expose())
            .json(&body)
            .timeout(self.exec_timeout)
            .send()
            .await
            .map_err(|e| {
                Error::outbound(
                    SERVICE,
                    step,
                    if e.is_timeout() {
                        Failure::TimedOut
                    } else {
                        Failure::Connection
                    },
                )
            })?;
        let status = response.status();
        if status.as_u16() == 404 {
            return Err(Error::outbound(SERVICE, step, Failure::NotFound));
        }
        if !status.is_success() {
            return Err(Error::outbound(
                SERVICE,
                step,
                Failure::Status(status.as_u16()),
            ));
        }
        let text = response
            .text()
            .await
            .map_err(|_| Error::outbound(SERVICE, step, Failure::BadReply))?;
        let events: Vec<Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if let Some(error) = events.iter().find(|e| e["type"] == "error") {
            let message = error["error"]
                .as_str()
                .or_else(|| error["data"].as_str())
                .unwrap_or("error event");
            return Err(failed(format!("{step}: {message}")));
        }
        Ok(events)
    }

    /// Waits until the sprite takes execs again (a restore is asynchronous).
    async fn wait_back(&self, sprite: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.back_timeout;
        loop {
            if let Ok(out) = self.exec(sprite, &["true"], None).await {
                if out.code == 0 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failed("sprite not back after restore"));
            }
            tokio::time::sleep(BACK_POLL).await;
        }
    }

    fn resource_of(&self, value: &Value, sprite: &str) -> Result<Created> {
        let url = value["url"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| failed(format!("sprite {sprite} has no url")))?;
        Ok(Created {
            resource_id: sprite.to_string(),
            url: url.to_string(),
            details: json!({"spriteId": value["id"], "sprite": sprite}),
        })
    }
}

/// A connection error without the request (whose headers carry the token).
fn connect_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(response) => format!("HTTP {}", response.status().as_u16()),
        E::Io(io) => io.kind().to_string(),
        other => other.to_string(),
    }
}

/// The checkpoint id in the events of a checkpoint stream: only inside an info line's text,
/// `ID: v3`.
pub fn checkpoint_id(events: &[Value]) -> Option<String> {
    events.iter().find_map(|event| {
        let text = event["data"].as_str()?;
        let at = text.find("ID: ")?;
        let id: String = text[at + 4..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        (!id.is_empty()).then_some(id)
    })
}

#[async_trait]
impl Provider for SpritesProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Sprites
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        let sprite = self.sprite_name(&spec.name);
        spec.progress
            .step(SERVICE, StepStatus::Active, &format!("creating {sprite}"));
        self.create_sprite(&sprite).await?;
        if self.get(&sprite).await?.is_none() {
            return Err(failed(format!("sprite {sprite} was not created")));
        }
        // Public: the runtime checks its gateway token itself.
        let record = self
            .call(
                "public url",
                Replay::Safe,
                self.url(&format!("/{sprite}")),
                |c, u| c.put(u).json(&json!({"url_settings": {"auth": "public"}})),
            )
            .await
            .map_err(|f| Error::outbound(SERVICE, "public url", f))?;
        let record = if record["url"].is_string() {
            record
        } else {
            self.get(&sprite)
                .await?
                .ok_or_else(|| failed(format!("sprite {sprite} vanished")))?
        };
        let created = self.resource_of(&record, &sprite)?;
        spec.progress.step(SERVICE, StepStatus::Active, "setup");
        self.write_env(&sprite, &spec.env).await?;
        for (n, command) in self.setup.iter().enumerate() {
            let script = self.with_env(command);
            self.exec_retried(
                &sprite,
                &format!("setup step {}", n + 1),
                &["bash", "-lc", &script],
                None,
            )
            .await?;
        }
        spec.progress.step(SERVICE, StepStatus::Active, "service");
        self.register_service(&sprite).await?;
        spec.progress.step(SERVICE, StepStatus::Ok, "created");
        Ok(created)
    }

    async fn destroy(&self, resource: &ResourceRef) -> Result<()> {
        let sprite = self.sprite_name(&resource.name);
        match self
            .call(
                "delete",
                Replay::Safe,
                self.url(&format!("/{sprite}")),
                |c, u| c.delete(u),
            )
            .await
        {
            Ok(_) | Err(Failure::NotFound) => Ok(()),
            Err(f) => Err(Error::outbound(SERVICE, "delete", f)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObservedResource>> {
        let sprite_prefix = self.sprite_name(prefix);
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url =
                reqwest::Url::parse(&self.url("")).map_err(|e| failed(format!("list url: {e}")))?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("prefix", &sprite_prefix);
                query.append_pair("max_results", "50");
                if let Some(token) = &token {
                    query.append_pair("continuation_token", token);
                }
            }
            let page = self
                .call("list", Replay::Safe, url.to_string(), |c, u| c.get(u))
                .await
                .map_err(|f| Error::outbound(SERVICE, "list", f))?;
            let Some(sprites) = page["sprites"].as_array() else {
                return Err(Error::outbound(SERVICE, "list", Failure::BadReply));
            };
            for sprite in sprites {
                let Some(name) = sprite["name"].as_str() else {
                    return Err(Error::outbound(SERVICE, "list", Failure::BadReply));
                };
                if let Some(row) = self.row_name(name) {
                    // cold, warm and running all serve: a request wakes a sleeping sprite.
                    listed.push(ObservedResource {
                        resource_id: name.to_string(),
                        name: row.to_string(),
                        status: ResourceStatus::Running,
                    });
                }
            }
            let more = page["has_more"].as_bool().unwrap_or(false);
            match page["next_continuation_token"].as_str() {
                Some(next) if more && !next.is_empty() => token = Some(next.to_string()),
                _ if more => return Err(Error::outbound(SERVICE, "list", Failure::BadReply)),
                _ => return Ok(listed),
            }
        }
    }

    fn can_recycle(&self) -> bool {
        true
    }

    fn keeps_alive(&self) -> bool {
        true
    }

    async fn probe(&self, resource: &ResourceRef) -> Option<Result<Value>> {
        let sprite = self.sprite_name(&resource.name);
        let text = |out: Result<ExecOutput>| match out {
            Ok(out) => json!({
                "exitCode": out.code,
                "output": String::from_utf8_lossy(&out.stdout),
            }),
            Err(e) => json!({"error": e.public_message()}),
        };
        let record = match self.get(&sprite).await {
            Ok(record) => record.unwrap_or(Value::Null),
            Err(e) => return Some(Err(e)),
        };
        let processes = text(self.exec(&sprite, &["ps", "aux"], None).await);
        let ports = text(self.exec(&sprite, &["ss", "-tlnp"], None).await);
        let status_url = format!("http://localhost:{}/convos/status", self.http_port);
        let runtime = text(
            self.exec(&sprite, &["curl", "-s", "-m", "5", &status_url], None)
                .await,
        );
        let env_file = match self
            .exec(
                &sprite,
                &["sh", "-c", &format!("test -f '{}'", self.env_file)],
                None,
            )
            .await
        {
            Ok(out) => json!(out.code == 0),
            Err(e) => json!({"error": e.public_message()}),
        };
        Some(Ok(json!({
            "sprite": record,
            "processes": processes,
            "listeningPorts": ports,
            "runtimeFromInside": runtime,
            "envFileExists": env_file,
        })))
    }

    async fn wake(&self, resource: &ResourceRef) -> Option<Result<()>> {
        let sprite = self.sprite_name(&resource.name);
        Some(match self.exec(&sprite, &["true"], None).await {
            Ok(out) if out.code == 0 => Ok(()),
            Ok(out) => Err(failed(format!("wake exited {}", out.code))),
            Err(e) => Err(e),
        })
    }

    async fn checkpoint(&self, resource: &ResourceRef) -> Option<Result<Value>> {
        let sprite = self.sprite_name(&resource.name);
        Some(
            async {
                let events = self
                    .events(
                        "checkpoint",
                        reqwest::Method::POST,
                        self.url(&format!("/{sprite}/checkpoint")),
                        json!({"comment": GOLDEN}),
                    )
                    .await?;
                let id = match checkpoint_id(&events) {
                    Some(id) => id,
                    // The stream did not say: the newest golden one in the listing.
                    None => {
                        let list = self
                            .call(
                                "checkpoints",
                                Replay::Safe,
                                self.url(&format!("/{sprite}/checkpoints")),
                                |c, u| c.get(u),
                            )
                            .await
                            .map_err(|f| Error::outbound(SERVICE, "checkpoints", f))?;
                        list.as_array()
                            .and_then(|all| {
                                all.iter()
                                    .filter(|c| c["comment"] == GOLDEN)
                                    .filter_map(|c| c["id"].as_str())
                                    .next_back()
                                    .map(String::from)
                            })
                            .ok_or_else(|| failed("no checkpoint id"))?
                    }
                };
                Ok(json!({"golden": id}))
            }
            .await,
        )
    }

    async fn recycle(
        &self,
        resource: &ResourceRef,
        replace: &[(String, String)],
    ) -> Option<Result<Created>> {
        let sprite = self.sprite_name(&resource.name);
        Some(
            async {
                let golden = resource.details["golden"]
                    .as_str()
                    .ok_or_else(|| failed("no golden checkpoint recorded"))?;
                self.events(
                    "restore",
                    reqwest::Method::POST,
                    self.url(&format!("/{sprite}/checkpoints/{golden}/restore")),
                    json!({}),
                )
                .await?;
                self.wait_back(&sprite).await?;
                if !replace.is_empty() {
                    // The checkpoint's env file, with the new values, and the runtime restarted on it.
                    let kept = self
                        .exec(
                            &sprite,
                            &["sh", "-c", &format!("cat '{}'", self.env_file)],
                            None,
                        )
                        .await?;
                    if kept.code != 0 {
                        return Err(failed("env file missing after restore"));
                    }
                    let mut env: Vec<(String, String)> = String::from_utf8_lossy(&kept.stdout)
                        .lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    super::replace_vars(&mut env, replace);
                    self.write_env(&sprite, &env).await?;
                    self.register_service(&sprite).await?;
                }
                let record = self
                    .get(&sprite)
                    .await?
                    .ok_or_else(|| failed(format!("sprite {sprite} gone")))?;
                let mut created = self.resource_of(&record, &sprite)?;
                created.details["golden"] = json!(golden);
                Ok(created)
            }
            .await,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_id_is_read_from_an_info_line() {
        let events = vec![
            json!({"type": "info", "data": "Creating checkpoint...", "time": "t"}),
            json!({"type": "info", "data": "Checkpoint created. ID: v3", "time": "t"}),
            json!({"type": "complete", "data": "done", "time": "t"}),
        ];
        assert_eq!(checkpoint_id(&events).as_deref(), Some("v3"));
        assert_eq!(checkpoint_id(&events[..1]), None);
    }
}
