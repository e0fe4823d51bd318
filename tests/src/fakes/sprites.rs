//! A stateful fake of the Fly.io Sprites API (DESIGN.md, "Fly.io Sprites"), for the sprites
//! provider's tests and for `agentpool dev` in sprites mode on a laptop.
//!
//! It keeps every sprite it made, so a test can assert that none was left behind, and it really
//! runs something: a sprite's service with an HTTP port is an `agentpool stub-agent` on the
//! sprite's own loopback port (its public URL), started with the variables of the env file the
//! setup wrote ([`ENV_FILE`]). A sprite's disk is a map of files: execs write and read it,
//! checkpoints copy it, a restore puts a copy back, kills the service and starts it again (clean:
//! the stub agent keeps its conversation in memory). A restore is asynchronous, as at Sprites:
//! execs fail until the sprite is back.
//!
//! Wire format as the real API: JSON REST with `Authorization: Bearer`; checkpoint and restore
//! answer `application/x-ndjson` events (`{type: info|error|complete, data|error, time}`, the id
//! only inside an info line's text, `ID: v0`); exec is a WebSocket whose binary frames start with
//! a stream byte (0 stdin, 1 stdout, 2 stderr, 3 exit + code, 4 stdin EOF). Errors are
//! `{error: code, message, retry_after_seconds}` with `Retry-After`: at most
//! [`SpritesConfig::max_concurrent`] sprites live at once (`concurrent_sprite_limit_exceeded`),
//! and at most [`SpritesConfig::creations_per_minute`] creations a minute
//! (`sprite_creation_rate_limited`).
//!
//! Execs understand what the sprites provider sends: `sh -c 'cat > PATH'` (stdin to a file),
//! `test -f PATH`, `true`; any other command is a build step that takes a draw of the build
//! latency and succeeds (or fails, see [`SpritesFake::fail_next_execs`]).
//!
//! Ops for faults and stats: `POST /v1/sprites`, `GET /v1/sprites`, `GET /v1/sprites/{name}`,
//! `PUT /v1/sprites/{name}`, `DELETE /v1/sprites/{name}`, `PUT /v1/sprites/{name}/services/{svc}`,
//! `POST /v1/sprites/{name}/checkpoint`, `GET /v1/sprites/{name}/checkpoints`,
//! `POST /v1/sprites/{name}/checkpoints/{id}/restore`, `GET /v1/sprites/{name}/exec`.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use super::faults::{bearer_in, now, unpoisoned, Controls, Fake, Faults, Server};
use super::rest::{json_body, random_hex, Params};
use crate::latency::{Draws, LatencyProfile};

/// Where the fake reads the runtime's variables from when it starts a service: the file the
/// sprites provider's setup writes (`SPRITES_ENV_FILE`'s default).
pub const ENV_FILE: &str = "/home/sprite/.agentpool.env";

#[derive(Debug, Clone)]
pub struct SpritesConfig {
    /// The one token accepted as Bearer.
    pub token: String,
    /// The organisation in every sprite's URL.
    pub org: String,
    /// Sprites alive at once; a create beyond is `concurrent_sprite_limit_exceeded`.
    pub max_concurrent: usize,
    /// Creations accepted per rolling minute; beyond is `sprite_creation_rate_limited`.
    pub creations_per_minute: usize,
    /// Handed to every stub agent besides the env file's variables.
    pub stub_env: Vec<(String, String)>,
    /// `None` = the harness's [`crate::agentpool_bin`].
    pub agent_bin: Option<PathBuf>,
    /// A sprite with no exec and no API request for this long shows `warm`, three times as long
    /// `cold` (the status only: its service keeps running).
    pub sleep_after: Duration,
    /// 0 = any free port.
    pub port: u16,
}

impl Default for SpritesConfig {
    fn default() -> Self {
        Self {
            token: "fake-sprite-token".into(),
            org: "fake".into(),
            max_concurrent: 1000,
            creations_per_minute: 10_000,
            stub_env: Vec::new(),
            agent_bin: None,
            sleep_after: Duration::from_secs(30),
            port: 0,
        }
    }
}

#[derive(Clone)]
struct Checkpoint {
    id: String,
    comment: String,
    create_time: String,
    files: BTreeMap<String, String>,
}

#[derive(Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub cmd: String,
    pub args: Vec<String>,
    pub http_port: Option<u16>,
}

/// A service's process while it runs.
struct Running {
    pid: Option<u32>,
    exited: watch::Receiver<bool>,
}

struct Sprite {
    id: String,
    name: String,
    url_auth: String,
    created_at: String,
    /// The loopback port of its public URL, where its HTTP service listens.
    port: u16,
    files: BTreeMap<String, String>,
    checkpoints: Vec<Checkpoint>,
    services: Vec<ServiceView>,
    running: Option<Running>,
    last_active: Instant,
    /// A restore in progress: execs fail until it is over.
    restoring: bool,
    /// Its machine is lost ([`SpritesFake::lose`]): execs fail and its service stays down.
    lost: bool,
    /// Bumped at every start and stop, so a late start of an older generation does nothing.
    generation: u64,
}

/// A sprite as a test sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SpriteView {
    pub name: String,
    pub url: String,
    pub url_auth: String,
    pub status: String,
    pub checkpoints: Vec<String>,
    pub services: Vec<String>,
    /// File names only: their contents hold secrets.
    pub files: Vec<String>,
    pub running: bool,
}

#[derive(Default)]
struct World {
    sprites: Vec<Sprite>,
    creations: VecDeque<Instant>,
}

struct Inner {
    config: SpritesConfig,
    agent_bin: PathBuf,
    world: Mutex<World>,
    faults: Faults,
    build: Mutex<Option<Arc<Draws>>>,
    restore: Mutex<Option<Arc<Draws>>>,
    stub_env: Mutex<Vec<(String, String)>>,
    fail_execs: Mutex<u32>,
    execs: Mutex<u64>,
}

impl Inner {
    fn world(&self) -> MutexGuard<'_, World> {
        unpoisoned(&self.world)
    }

    fn url_of(&self, sprite: &Sprite) -> String {
        format!("http://127.0.0.1:{}", sprite.port)
    }

    fn status_of(&self, sprite: &Sprite) -> &'static str {
        let idle = sprite.last_active.elapsed();
        if idle < self.config.sleep_after {
            "running"
        } else if idle < self.config.sleep_after * 3 {
            "warm"
        } else {
            "cold"
        }
    }

    fn json_of(&self, sprite: &Sprite) -> Value {
        json!({
            "id": sprite.id,
            "name": sprite.name,
            "status": self.status_of(sprite),
            "organization": self.config.org,
            "url": self.url_of(sprite),
            "url_settings": {"auth": sprite.url_auth},
            "created_at": sprite.created_at,
            "updated_at": sprite.created_at,
        })
    }

    fn draw(which: &Mutex<Option<Arc<Draws>>>) -> Duration {
        let draws = unpoisoned(which).clone();
        draws.map_or(Duration::ZERO, |d| d.next())
    }

    fn coded(&self, status: StatusCode, code: &str, message: &str) -> Response {
        (status, Json(json!({"error": code, "message": message}))).into_response()
    }

    fn not_found(&self, name: &str) -> Response {
        self.coded(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("sprite {name} not found"),
        )
    }

    fn limited(&self, code: &str, message: &str, retry_after: u64) -> Response {
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": code, "message": message, "retry_after_seconds": retry_after})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        response
    }
}

impl Fake for Inner {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_in(headers, std::slice::from_ref(&self.config.token))
    }

    fn error(&self, status: StatusCode, message: &str) -> Response {
        let code = match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::NOT_FOUND => "not_found",
            s if s.is_server_error() => "internal_error",
            _ => "bad_request",
        };
        self.coded(status, code, message)
    }

    fn state(&self) -> Value {
        let world = self.world();
        json!({"sprites": world.sprites.iter().map(|s| view(self, s)).collect::<Vec<_>>()})
    }
}

fn view(inner: &Inner, sprite: &Sprite) -> SpriteView {
    SpriteView {
        name: sprite.name.clone(),
        url: inner.url_of(sprite),
        url_auth: sprite.url_auth.clone(),
        status: inner.status_of(sprite).into(),
        checkpoints: sprite.checkpoints.iter().map(|c| c.id.clone()).collect(),
        services: sprite.services.iter().map(|s| s.name.clone()).collect(),
        files: sprite.files.keys().cloned().collect(),
        running: sprite.running.as_ref().is_some_and(|r| r.pid.is_some()),
    }
}

/// A running fake; every process it started is killed when it is dropped.
pub struct SpritesFake {
    inner: Arc<Inner>,
    server: Server,
}

impl Controls for SpritesFake {
    fn server(&self) -> &Server {
        &self.server
    }

    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}

impl SpritesFake {
    pub async fn start(config: SpritesConfig) -> Self {
        let agent_bin = config
            .agent_bin
            .clone()
            .unwrap_or_else(|| crate::agentpool_bin().to_path_buf());
        let port = config.port;
        let inner = Arc::new(Inner {
            config,
            agent_bin,
            world: Mutex::new(World::default()),
            faults: Faults::default(),
            build: Mutex::new(None),
            restore: Mutex::new(None),
            stub_env: Mutex::new(Vec::new()),
            fail_execs: Mutex::new(0),
            execs: Mutex::new(0),
        });
        let routes = Router::new()
            .route("/v1/sprites", post(create).get(list))
            .route(
                "/v1/sprites/{name}",
                get(get_sprite).put(update).delete(delete),
            )
            .route("/v1/sprites/{name}/services/{svc}", put(put_service))
            .route("/v1/sprites/{name}/checkpoint", post(checkpoint))
            .route("/v1/sprites/{name}/checkpoints", get(checkpoints))
            .route("/v1/sprites/{name}/checkpoints/{id}/restore", post(restore))
            .route("/v1/sprites/{name}/exec", get(exec));
        let server = Server::rest("sprites", port, inner.clone(), routes).await;
        Self { inner, server }
    }

    /// Sprites at `profile`'s pace: each API request, each build step, each restore, and the
    /// stub agents (boot, health, provisioning).
    pub fn set_latency(&self, profile: &LatencyProfile) {
        self.inner
            .faults
            .set_latency(Some(profile.draws(profile.sprites_call, 11)));
        *unpoisoned(&self.inner.build) = Some(Arc::new(profile.draws(profile.sprites_build, 12)));
        *unpoisoned(&self.inner.restore) =
            Some(Arc::new(profile.draws(profile.sprites_restore, 13)));
        *self
            .inner
            .stub_env
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = profile.stub_env();
    }

    /// `http://127.0.0.1:PORT` (what `SPRITES_API_URL` takes).
    pub fn url(&self) -> String {
        self.server.base_url()
    }

    pub fn token(&self) -> &str {
        &self.inner.config.token
    }

    pub fn sprites(&self) -> Vec<SpriteView> {
        let world = self.inner.world();
        world.sprites.iter().map(|s| view(&self.inner, s)).collect()
    }

    pub fn sprite(&self, name: &str) -> Option<SpriteView> {
        self.sprites().into_iter().find(|s| s.name == name)
    }

    /// A file of a sprite's disk, as an exec would read it.
    pub fn file(&self, name: &str, path: &str) -> Option<String> {
        let world = self.inner.world();
        world
            .sprites
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.files.get(path).cloned())
    }

    /// Writes a file onto a sprite's disk, as its runtime would (the user's instructions).
    pub fn write_file(&self, name: &str, path: &str, contents: &str) -> bool {
        let mut world = self.inner.world();
        match world.sprites.iter_mut().find(|s| s.name == name) {
            Some(sprite) => {
                sprite.files.insert(path.into(), contents.into());
                true
            }
            None => false,
        }
    }

    /// The next `count` build execs exit 1.
    pub fn fail_next_execs(&self, count: u32) {
        *self
            .inner
            .fail_execs
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = count;
    }

    /// Exec sessions opened since start.
    pub fn execs(&self) -> u64 {
        *unpoisoned(&self.inner.execs)
    }

    /// Kills a sprite's service behind the API's back; false if none ran.
    pub fn kill_service(&self, name: &str) -> bool {
        let mut world = self.inner.world();
        match world.sprites.iter_mut().find(|s| s.name == name) {
            Some(sprite) => stop(sprite).is_some(),
            None => false,
        }
    }

    /// Stops a sprite's service for good, as when its machine is lost: its execs fail (so no
    /// wake brings it back) and nothing starts the service again; its other requests, its
    /// delete among them, are answered as before. False if there is no such sprite.
    pub fn lose(&self, name: &str) -> bool {
        let mut world = self.inner.world();
        match world.sprites.iter_mut().find(|s| s.name == name) {
            Some(sprite) => {
                sprite.lost = true;
                stop(sprite);
                true
            }
            None => false,
        }
    }

    /// A sprite nobody asked this fake for (another pool, or a create whose reply was lost).
    pub fn create_behind_our_back(&self, name: &str) -> Result<(), String> {
        let sprite = new_sprite(name)?;
        self.inner.world().sprites.push(sprite);
        Ok(())
    }
}

impl Drop for SpritesFake {
    fn drop(&mut self) {
        self.server.stop();
        let mut world = self.inner.world();
        for sprite in &mut world.sprites {
            stop(sprite);
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn new_sprite(name: &str) -> Result<Sprite, String> {
    if !valid_name(name) {
        return Err(format!(
            "invalid name {name:?}: lowercase letters, digits and '-' only"
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))?;
    Ok(Sprite {
        id: format!("sprite-{}", random_hex(8)),
        name: name.into(),
        url_auth: "sprite".into(),
        created_at: now(),
        port,
        files: BTreeMap::new(),
        checkpoints: Vec::new(),
        services: Vec::new(),
        running: None,
        last_active: Instant::now(),
        restoring: false,
        lost: false,
        generation: 0,
    })
}

/// Stops a sprite's service process (SIGKILL); what it returns is there to wait for its exit.
fn stop(sprite: &mut Sprite) -> Option<watch::Receiver<bool>> {
    sprite.generation += 1;
    let running = sprite.running.take()?;
    if let Some(pid) = running.pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Some(running.exited)
}

/// `KEY=VALUE` lines of the env file.
fn env_file(files: &BTreeMap<String, String>) -> Vec<(String, String)> {
    files
        .get(ENV_FILE)
        .map(|text| {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts the sprite's HTTP service (the stub agent) if it has one and it is not running.
fn start_service(inner: &Arc<Inner>, world: &mut World, name: &str) {
    let Some(sprite) = world.sprites.iter_mut().find(|s| s.name == name) else {
        return;
    };
    if sprite.running.is_some()
        || sprite.lost
        || !sprite.services.iter().any(|s| s.http_port.is_some())
    {
        return;
    }
    let stub_env = inner
        .stub_env
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut command = tokio::process::Command::new(&inner.agent_bin);
    command
        .arg("stub-agent")
        .arg("--port")
        .arg(sprite.port.to_string())
        .arg("--name")
        .arg(&sprite.name)
        .env_clear()
        .envs(inner.config.stub_env.iter().map(|(k, v)| (k, v)))
        .envs(stub_env.iter().map(|(k, v)| (k, v)))
        .envs(env_file(&sprite.files))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // And if the test process dies outright, the kernel stops the stub with it.
    crate::dies_with_spawning_thread(command.as_std_mut());
    let (done, exited) = watch::channel(false);
    let Ok(mut child) = command.spawn() else {
        return;
    };
    sprite.running = Some(Running {
        pid: child.id(),
        exited,
    });
    let generation = sprite.generation;
    let inner = inner.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        if let Some(stdout) = child.stdout.take() {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        }
        let _ = child.wait().await;
        let mut world = inner.world();
        if let Some(sprite) = world.sprites.iter_mut().find(|s| s.name == name) {
            // Exited unasked: the service is down (Sprites restarts it on the next wake).
            if sprite.generation == generation {
                sprite.running = None;
            }
        }
        done.send_replace(true);
    });
}

fn touch(world: &mut World, name: &str) -> bool {
    match world.sprites.iter_mut().find(|s| s.name == name) {
        Some(sprite) => {
            sprite.last_active = Instant::now();
            true
        }
        None => false,
    }
}

async fn create(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(e) => return inner.error(StatusCode::BAD_REQUEST, &e),
    };
    let Some(name) = body.get("name").and_then(Value::as_str) else {
        return inner.error(StatusCode::BAD_REQUEST, "name is required");
    };
    let auth = body
        .get("url_settings")
        .and_then(|u| u.get("auth"))
        .and_then(Value::as_str)
        .unwrap_or("sprite");
    if auth != "sprite" && auth != "public" {
        return inner.error(
            StatusCode::BAD_REQUEST,
            "url_settings.auth: sprite or public",
        );
    }
    let mut world = inner.world();
    if world.sprites.iter().any(|s| s.name == name) {
        return inner.coded(
            StatusCode::CONFLICT,
            "already_exists",
            &format!("sprite {name} already exists"),
        );
    }
    if world.sprites.len() >= inner.config.max_concurrent {
        return inner.limited(
            "concurrent_sprite_limit_exceeded",
            &format!(
                "your organization may run {} sprites at once",
                inner.config.max_concurrent
            ),
            30,
        );
    }
    let minute = Duration::from_secs(60);
    while world
        .creations
        .front()
        .is_some_and(|at| at.elapsed() >= minute)
    {
        world.creations.pop_front();
    }
    if world.creations.len() >= inner.config.creations_per_minute {
        let wait = world
            .creations
            .front()
            .map_or(1, |at| minute.saturating_sub(at.elapsed()).as_secs().max(1));
        return inner.limited(
            "sprite_creation_rate_limited",
            "too many sprites created recently",
            wait,
        );
    }
    let mut sprite = match new_sprite(name) {
        Ok(sprite) => sprite,
        Err(e) => return inner.error(StatusCode::BAD_REQUEST, &e),
    };
    sprite.url_auth = auth.into();
    world.creations.push_back(Instant::now());
    let reply = inner.json_of(&sprite);
    world.sprites.push(sprite);
    (StatusCode::CREATED, Json(reply)).into_response()
}

async fn list(
    State(inner): State<Arc<Inner>>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match Params::read(query) {
        Ok(params) => params,
        Err(e) => return inner.error(StatusCode::BAD_REQUEST, &e),
    };
    let max = match params.uint("max_results") {
        Ok(None) => 50,
        Ok(Some(n)) if (1..=50).contains(&n) => n,
        Ok(Some(_)) => return inner.error(StatusCode::BAD_REQUEST, "max_results: 1 to 50"),
        Err(e) => return inner.error(StatusCode::BAD_REQUEST, &e),
    };
    let prefix = params.get("prefix").unwrap_or("");
    // The token is the last name of the page before: names sort, so a page starts after it.
    let after = params.get("continuation_token").unwrap_or("");
    let world = inner.world();
    let mut names: Vec<&Sprite> = world
        .sprites
        .iter()
        .filter(|s| s.name.starts_with(prefix) && s.name.as_str() > after)
        .collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    let has_more = names.len() > max;
    let page: Vec<Value> = names.iter().take(max).map(|s| inner.json_of(s)).collect();
    let next = if has_more {
        names.get(max - 1).map(|s| s.name.clone())
    } else {
        None
    };
    Json(json!({"sprites": page, "has_more": has_more, "next_continuation_token": next}))
        .into_response()
}

async fn get_sprite(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    let world = inner.world();
    match world.sprites.iter().find(|s| s.name == name) {
        Some(sprite) => Json(inner.json_of(sprite)).into_response(),
        None => inner.not_found(&name),
    }
}

async fn update(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(e) => return inner.error(StatusCode::BAD_REQUEST, &e),
    };
    let auth = body
        .get("url_settings")
        .and_then(|u| u.get("auth"))
        .and_then(Value::as_str);
    let mut world = inner.world();
    let Some(sprite) = world.sprites.iter_mut().find(|s| s.name == name) else {
        return inner.not_found(&name);
    };
    match auth {
        Some(auth @ ("sprite" | "public")) => sprite.url_auth = auth.into(),
        Some(_) => {
            return inner.error(
                StatusCode::BAD_REQUEST,
                "url_settings.auth: sprite or public",
            )
        }
        None => {}
    }
    Json(inner.json_of(sprite)).into_response()
}

async fn delete(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    let mut world = inner.world();
    let Some(at) = world.sprites.iter().position(|s| s.name == name) else {
        return inner.not_found(&name);
    };
    let mut sprite = world.sprites.remove(at);
    stop(&mut sprite);
    StatusCode::NO_CONTENT.into_response()
}

async fn put_service(
    State(inner): State<Arc<Inner>>,
    Path((name, svc)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(e) => return inner.error(StatusCode::BAD_REQUEST, &e),
    };
    let Some(cmd) = body.get("cmd").and_then(Value::as_str) else {
        return inner.error(StatusCode::BAD_REQUEST, "cmd is required");
    };
    let args: Vec<String> = body
        .get("args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let http_port = body
        .get("http_port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    // A service defined again restarts, on the disk as it is then.
    let exited = {
        let mut world = inner.world();
        let Some(sprite) = world.sprites.iter_mut().find(|s| s.name == name) else {
            return inner.not_found(&name);
        };
        if http_port.is_some()
            && sprite
                .services
                .iter()
                .any(|s| s.name != svc && s.http_port.is_some())
        {
            return inner.coded(
                StatusCode::CONFLICT,
                "conflict",
                "another service owns the HTTP port",
            );
        }
        sprite.services.retain(|s| s.name != svc);
        sprite.services.push(ServiceView {
            name: svc.clone(),
            cmd: cmd.into(),
            args,
            http_port,
        });
        sprite.last_active = Instant::now();
        stop(sprite)
    };
    if let Some(mut exited) = exited {
        let _ = exited.wait_for(|done| *done).await;
    }
    start_service(&inner, &mut inner.world(), &name);
    ndjson(vec![
        event("info", &format!("service {svc} configured")),
        event("complete", &format!("service {svc} started")),
    ])
}

fn event(kind: &str, data: &str) -> Value {
    json!({"type": kind, "data": data, "time": now()})
}

fn ndjson(events: Vec<Value>) -> Response {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from(body),
    )
        .into_response()
}

async fn checkpoint(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let comment = json_body(&body)
        .ok()
        .and_then(|b| b.get("comment").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    // Taking one stops the services for a while.
    let pause = Inner::draw(&inner.restore) / 4;
    let id = {
        let mut world = inner.world();
        let Some(sprite) = world.sprites.iter_mut().find(|s| s.name == name) else {
            return inner.not_found(&name);
        };
        let id = format!("v{}", sprite.checkpoints.len());
        sprite.checkpoints.push(Checkpoint {
            id: id.clone(),
            comment,
            create_time: now(),
            files: sprite.files.clone(),
        });
        sprite.last_active = Instant::now();
        id
    };
    tokio::time::sleep(pause).await;
    ndjson(vec![
        event("info", "Creating checkpoint..."),
        event("info", &format!("Checkpoint created. ID: {id}")),
        event("complete", "done"),
    ])
}

async fn checkpoints(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    let world = inner.world();
    let Some(sprite) = world.sprites.iter().find(|s| s.name == name) else {
        return inner.not_found(&name);
    };
    let list: Vec<Value> = sprite
        .checkpoints
        .iter()
        .map(|c| json!({"id": c.id, "create_time": c.create_time, "comment": c.comment}))
        .collect();
    Json(list).into_response()
}

async fn restore(
    State(inner): State<Arc<Inner>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let exited = {
        let mut world = inner.world();
        let Some(sprite) = world.sprites.iter_mut().find(|s| s.name == name) else {
            return inner.not_found(&name);
        };
        let Some(checkpoint) = sprite.checkpoints.iter().find(|c| c.id == id).cloned() else {
            return inner.coded(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("checkpoint {id} not found"),
            );
        };
        sprite.files = checkpoint.files;
        sprite.restoring = true;
        sprite.last_active = Instant::now();
        stop(sprite)
    };
    // Asynchronous, as at Sprites: the answer comes now, the sprite is back later.
    let delay = Inner::draw(&inner.restore);
    let background = inner.clone();
    tokio::spawn(async move {
        if let Some(mut exited) = exited {
            let _ = exited.wait_for(|done| *done).await;
        }
        tokio::time::sleep(delay).await;
        let mut world = background.world();
        if let Some(sprite) = world.sprites.iter_mut().find(|s| s.name == name) {
            sprite.restoring = false;
        }
        start_service(&background, &mut world, &name);
    });
    ndjson(vec![
        event("info", &format!("Restoring checkpoint {id}...")),
        event("complete", "restore started"),
    ])
}

/// What one exec does with the sprite's disk, given its stdin.
enum Command {
    Write(String),
    Test(String),
    Cat(String),
    True,
    /// `ps aux`: the service's process, its command line with its variables (as `ps e` shows).
    Ps,
    /// `ss -tlnp`: the HTTP port while the service runs.
    Ports,
    /// `curl ... http://localhost:PORT/PATH`: the runtime asked from inside.
    Curl(String),
    Build,
}

fn parse_command(cmd: &[String]) -> Command {
    let script = match cmd {
        [shell, flag, script] if (shell == "sh" || shell == "bash") && flag.ends_with('c') => {
            script.trim().to_string()
        }
        _ => cmd.join(" "),
    };
    let unquote = |s: &str| s.trim().trim_matches('\'').trim_matches('"').to_string();
    if script == "true" {
        Command::True
    } else if let Some(path) = script.strip_prefix("cat > ") {
        Command::Write(unquote(path))
    } else if let Some(path) = script.strip_prefix("test -f ") {
        Command::Test(unquote(path))
    } else if let Some(path) = script.strip_prefix("cat ") {
        Command::Cat(unquote(path))
    } else if script.starts_with("ps ") {
        Command::Ps
    } else if script.starts_with("ss ") {
        Command::Ports
    } else if script.starts_with("curl ") {
        let url = cmd.last().cloned().unwrap_or_default();
        let path = url
            .strip_prefix("http://localhost")
            .and_then(|rest| rest.find('/').map(|at| rest[at..].to_string()))
            .unwrap_or_else(|| "/".into());
        Command::Curl(path)
    } else {
        Command::Build
    }
}

async fn exec(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let params = match Params::read(query) {
        Ok(params) => params,
        Err(e) => return inner.error(StatusCode::BAD_REQUEST, &e),
    };
    let cmd: Vec<String> = params.all("cmd").into_iter().map(String::from).collect();
    if cmd.is_empty() {
        return inner.error(StatusCode::BAD_REQUEST, "cmd is required");
    }
    {
        let mut world = inner.world();
        let Some(sprite) = world.sprites.iter().find(|s| s.name == name) else {
            return inner.not_found(&name);
        };
        if sprite.restoring {
            return inner.coded(
                StatusCode::SERVICE_UNAVAILABLE,
                "sprite_unavailable",
                "sprite is restoring",
            );
        }
        if sprite.lost {
            return inner.coded(
                StatusCode::SERVICE_UNAVAILABLE,
                "sprite_unavailable",
                "sprite's machine is lost",
            );
        }
        touch(&mut world, &name);
        // An exec wakes a sleeping sprite: its services start again.
        start_service(&inner, &mut world, &name);
    }
    *unpoisoned(&inner.execs) += 1;
    upgrade.on_upgrade(move |socket| run_exec(inner, name, parse_command(&cmd), socket))
}

async fn run_exec(inner: Arc<Inner>, name: String, command: Command, mut socket: WebSocket) {
    let (code, out): (u8, Vec<u8>) = match command {
        Command::Write(path) => {
            // stdin up to its EOF frame.
            let mut stdin = Vec::new();
            while let Some(Ok(message)) = socket.recv().await {
                if let Message::Binary(data) = message {
                    match data.first() {
                        Some(0) => stdin.extend_from_slice(&data[1..]),
                        Some(4) => break,
                        _ => {}
                    }
                }
            }
            let mut world = inner.world();
            match world.sprites.iter_mut().find(|s| s.name == name) {
                Some(sprite) => {
                    sprite
                        .files
                        .insert(path, String::from_utf8_lossy(&stdin).into_owned());
                    (0, Vec::new())
                }
                None => (1, b"sprite gone".to_vec()),
            }
        }
        Command::Test(path) => {
            let world = inner.world();
            let exists = world
                .sprites
                .iter()
                .find(|s| s.name == name)
                .is_some_and(|s| s.files.contains_key(&path));
            (u8::from(!exists), Vec::new())
        }
        Command::Cat(path) => {
            let world = inner.world();
            match world
                .sprites
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.files.get(&path))
            {
                Some(text) => (0, text.clone().into_bytes()),
                None => (1, Vec::new()),
            }
        }
        Command::True => (0, Vec::new()),
        Command::Ps => {
            let world = inner.world();
            let sprite = world.sprites.iter().find(|s| s.name == name);
            let line = sprite.and_then(|s| {
                let pid = s.running.as_ref()?.pid?;
                let env: Vec<String> = env_file(&s.files)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                Some(format!(
                    "{pid} sprite agentpool stub-agent --name {} {}\n",
                    s.name,
                    env.join(" ")
                ))
            });
            (
                0,
                format!("PID USER COMMAND\n{}", line.unwrap_or_default()).into_bytes(),
            )
        }
        Command::Ports => {
            let world = inner.world();
            let sprite = world.sprites.iter().find(|s| s.name == name);
            let line = sprite
                .filter(|s| s.running.is_some())
                .map(|s| format!("LISTEN 0 128 0.0.0.0:{} users:((\"agentpool\"))\n", s.port))
                .unwrap_or_default();
            (0, format!("State Recv-Q Send-Q Local\n{line}").into_bytes())
        }
        Command::Curl(path) => {
            let port = {
                let world = inner.world();
                world
                    .sprites
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.port)
            };
            let answer = match port {
                Some(port) => match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
                    Ok(response) => response.text().await.ok(),
                    Err(_) => None,
                },
                None => None,
            };
            match answer {
                Some(body) => (0, body.into_bytes()),
                None => (7, b"curl: (7) Failed to connect".to_vec()),
            }
        }
        Command::Build => {
            tokio::time::sleep(Inner::draw(&inner.build)).await;
            let mut left = unpoisoned(&inner.fail_execs);
            if *left > 0 {
                *left -= 1;
                (1, b"build failed".to_vec())
            } else {
                (0, b"ok\n".to_vec())
            }
        }
    };
    if !out.is_empty() {
        let stream = if code == 0 { 1 } else { 2 };
        let mut frame = vec![stream];
        frame.extend_from_slice(&out);
        let _ = socket.send(Message::Binary(frame.into())).await;
    }
    let _ = socket.send(Message::Binary(vec![3, code].into())).await;
    let _ = socket.send(Message::Close(None)).await;
}
