//! Test harness: a real Postgres (started once per test process unless `DATABASE_URL` names one),
//! a database per test, the real `agentpool` binary for stub agents and end-to-end runs, and an
//! in-process API server per test on a free port.

pub mod fakes;
pub mod faults;
pub mod lambda_api;
pub mod latency;
pub mod outside;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rand::distributions::{Alphanumeric, DistString};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use agentpool::AppState;
use agentpool_core::access::{self, Records};
use agentpool_core::calls::Tally;
use agentpool_core::config::Secret;
use agentpool_core::db::embedded::{create_database, EmbeddedPostgres};
use agentpool_core::domain::{Instance, InstanceStatus};
use agentpool_core::providers::local::LocalProvider;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::providers::Provider;
use agentpool_core::tick::{self, Mode, TickReport};
use agentpool_core::{db, instances, Pool, Settings};

const PG_DIR_PREFIX: &str = "agentpool-test-pg-";

/// URL of a server where tests may create databases.
fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        sweep_stale_clusters();
        let root = tempfile::Builder::new()
            .prefix(PG_DIR_PREFIX)
            .tempdir()
            .expect("temp dir for test postgres")
            .keep();
        let server = EmbeddedPostgres::start(&root).expect("start test postgres");
        let url = server.url("postgres");
        // The server lives as long as this test process; its parent-death signal stops it after.
        std::mem::forget(server);
        url
    })
}

/// Removes clusters left by earlier test processes (their servers died with them).
fn sweep_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PG_DIR_PREFIX));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        let server_alive = std::fs::read_to_string(path.join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if is_ours && old && !server_alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn random_name(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric
            .sample_string(&mut rand::thread_rng(), 12)
            .to_ascii_lowercase()
    )
}

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let db = Self::empty().await;
        db::migrate(&db.pool).await.expect("migrate");
        db
    }

    /// A fresh database with no tables yet.
    pub async fn empty() -> Self {
        let admin = admin_url();
        let name = random_name("t_");
        create_database(admin, &name)
            .await
            .expect("create test database");
        let (base, _) = admin.rsplit_once('/').expect("database url has a path");
        let url = format!("{base}/{name}");
        let pool = db::connect(&url, 20)
            .await
            .expect("connect to test database");
        Self { url, pool }
    }
}

/// The `agentpool-scheduler` binary, next to `agentpool`.
pub fn scheduler_bin() -> PathBuf {
    agentpool_bin().with_file_name("agentpool-scheduler")
}

/// The `agentpool` (and `agentpool-scheduler`) binary, built once per test process.
pub fn agentpool_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("AGENTPOOL_BIN") {
            return PathBuf::from(bin);
        }
        // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>
        let exe = std::env::current_exe().expect("current exe");
        let mut profile_dir = exe.parent().expect("exe has a directory").to_path_buf();
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir.pop();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "-q",
            "-p",
            "agentpool",
            "-p",
            "agentpool-scheduler",
            "--bins",
            // As this crate builds them (see Cargo.toml): one build of the library, and the
            // failpoint sweep's replicas.
            "--features",
            "agentpool/failpoints",
        ]);
        // Cargo sets these for the test process; passed on, they make the build look dirty and
        // relink what the outer `cargo test` just built.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            let per_crate = name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_CRATE_")
                || name.starts_with("CARGO_BIN_")
                || matches!(
                    name.as_str(),
                    "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                );
            if per_crate {
                build.env_remove(&name);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building agentpool failed");
        profile_dir.join("agentpool")
    })
}

/// A command with nothing from this environment but PATH, HOME and TMPDIR (no stray
/// DATABASE_URL), logging warnings only.
pub fn clean(bin: &Path) -> Command {
    let mut command = Command::new(bin);
    command.env_clear();
    for var in ["PATH", "HOME", "TMPDIR"] {
        if let Some(value) = std::env::var_os(var) {
            command.env(var, value);
        }
    }
    command.env("RUST_LOG", "warn");
    command
}

/// An `agentpool` started as a process (`serve`, `dev`), reached over HTTP.
pub struct Remote {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Remote {
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            key: key.into(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&self) {
        wait_until(Duration::from_secs(30), || async {
            self.http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
    }

    /// `/api/pool/counts`.
    pub async fn counts(&self) -> Value {
        self.http
            .get(format!("{}/api/pool/counts", self.base))
            .send()
            .await
            .expect("counts")
            .json()
            .await
            .expect("counts JSON")
    }

    /// A POST with the key.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// Ticks until `n` instances are idle.
    pub async fn fill(&self, n: i64) {
        wait_until(Duration::from_secs(60), || async {
            self.post("/api/pool/tick", serde_json::json!({})).await;
            self.counts().await["idle"].as_i64() >= Some(n)
        })
        .await;
    }
}

/// Sets each of `overrides` in `vars`, replacing an earlier value of the same name (settings are
/// read from a map: a name given twice is refused).
pub fn set_vars(
    vars: &mut Vec<(String, String)>,
    overrides: impl IntoIterator<Item = (String, String)>,
) {
    for (name, value) in overrides {
        vars.retain(|(n, _)| *n != name);
        vars.push((name, value));
    }
}

/// Settings for a test: small pool, fast failure detection, everything else default.
pub fn settings(database_url: &str, state_dir: &Path, overrides: &[(&str, &str)]) -> Settings {
    let mut vars: Vec<(String, String)> = vec![
        ("POOL_API_KEY".into(), random_name("key-")),
        ("DATABASE_URL".into(), database_url.into()),
        ("POOL_MIN_IDLE".into(), "3".into()),
        ("POOL_MAX_TOTAL".into(), "10".into()),
        ("HEALTH_FAILURE_THRESHOLD".into(), "1".into()),
        // Tests decide when time has passed: a failure or an absence counts at once (absence
        // still needs two listings).
        ("HEALTH_GRACE_MS".into(), "0".into()),
        ("HEALTH_TIMEOUT_MS".into(), "2000".into()),
        // Every runtime every tick, as tests expect unless they set an interval.
        ("HEALTH_INTERVAL_MS".into(), "0".into()),
        ("LOCAL_STATE_DIR".into(), state_dir.display().to_string()),
        (
            "LOCAL_AGENT_BIN".into(),
            agentpool_bin().display().to_string(),
        ),
    ];
    for (k, v) in overrides {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    Settings::from_vars(vars).expect("test settings")
}

/// One pool under test: its own database, its own stub agents, its own API server.
pub struct TestPool {
    pub db: TestDb,
    pub pool: Pool,
    pub local: Arc<LocalProvider>,
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
    _state_dir: tempfile::TempDir,
}

impl TestPool {
    pub async fn start() -> Self {
        Self::with(&[], &[]).await
    }

    /// `overrides` are settings; `stub_env` is handed to every stub agent started.
    pub async fn with(overrides: &[(&str, &str)], stub_env: &[(&str, &str)]) -> Self {
        Self::with_provider(overrides, stub_env, |local, _| local).await
    }

    /// As [`TestPool::with`], with the local provider wrapped by `wrap` (faults, delays) or
    /// replaced; a provider made here reports its failed calls to the pool's tally.
    pub async fn with_provider(
        overrides: &[(&str, &str)],
        stub_env: &[(&str, &str)],
        wrap: impl FnOnce(Arc<LocalProvider>, &Tally) -> Arc<dyn Provider>,
    ) -> Self {
        let db = TestDb::new().await;
        let state_dir = tempfile::Builder::new()
            .prefix("agentpool-test-agents-")
            .tempdir()
            .expect("state dir");
        // Bound before the settings are read: a setting may name this pool's own address as
        // `{base}` (`RUNTIME_HEARTBEAT_URL`).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let own = format!("http://{}", listener.local_addr().expect("addr"));
        let overrides: Vec<(&str, String)> = overrides
            .iter()
            .map(|(k, v)| (*k, v.replace("{base}", &own)))
            .collect();
        let overrides: Vec<(&str, &str)> =
            overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let overrides = overrides.as_slice();
        let settings = settings(&db.url, state_dir.path(), overrides);
        let key = settings
            .server
            .pool_api_key
            .as_ref()
            .map(|k| k.expose().to_string())
            .expect("key set");
        // The stub agents speak what the pool speaks, as `agentpool dev`'s do.
        let protocol = overrides
            .iter()
            .filter(|(k, _)| *k == "RUNTIME_PROTOCOL")
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let local = LocalProvider::new(
            state_dir.path().to_path_buf(),
            agentpool_bin().to_path_buf(),
            stub_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain(protocol)
                .collect(),
        )
        .expect("local provider");
        let local = Arc::new(if settings.providers.local.local_recycle {
            local.recycling()
        } else {
            local
        });
        let tally = Tally::default();
        let provider = wrap(local.clone(), &tally);
        let pool = Pool::new(db.pool.clone(), settings, provider, tally);
        let base = serve_on(
            listener,
            AppState::new(pool.clone(), Secret::new(key.clone())),
        );
        Self {
            db,
            pool,
            local,
            base,
            key,
            http: reqwest::Client::new(),
            _state_dir: state_dir,
        }
    }

    /// A pool on the Railway provider, whose settings (the fakes' addresses and keys among them)
    /// are `vars`, once `idle` instances are idle and none is starting.
    pub async fn on_railway(vars: &[(String, String)], idle: i64) -> Self {
        let settings = Settings::from_vars(vars.to_vec()).expect("railway settings");
        let idle_setting = idle.to_string();
        let mut overrides: Vec<(&str, &str)> =
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        overrides.push(("POOL_MIN_IDLE", &idle_setting));
        let t = Self::with_provider(&overrides, &[], |_, tally| {
            Arc::new(
                RailwayProvider::from_settings(
                    &settings.providers.railway,
                    &settings.outbound,
                    tally,
                )
                .expect("railway provider"),
            )
        })
        .await;
        wait_until(Duration::from_secs(60), || async {
            t.tick().await;
            t.count(InstanceStatus::Idle).await == idle
                && t.count(InstanceStatus::Starting).await == 0
        })
        .await;
        t
    }

    /// Another replica: its own API server over the same database and settings.
    pub async fn replica(&self) -> String {
        serve(AppState::new(
            self.pool.clone(),
            Secret::new(self.key.clone()),
        ))
        .await
    }

    /// Another replica that follows the records of wrong keys as `agentpool serve` does, once
    /// it knows them; with the set it keeps.
    pub async fn following_replica(&self) -> (String, Arc<Records>) {
        let state = AppState::new(self.pool.clone(), Secret::new(self.key.clone()));
        let records = state.records.clone();
        tokio::spawn({
            let (db, records) = (self.pool.db.clone(), records.clone());
            async move { access::follow_records(&db, &records, &CancellationToken::new()).await }
        });
        wait_until(Duration::from_secs(30), || async { records.known() }).await;
        (serve(state).await, records)
    }

    pub async fn tick(&self) -> TickReport {
        tick::run(&self.pool, Mode::Full).await.expect("tick")
    }

    /// Ticks until `n` instances are idle: one tick creates them, the next sees them ready.
    pub async fn fill(&self, n: i64) {
        for _ in 0..5 {
            if self.count(InstanceStatus::Idle).await >= n {
                return;
            }
            self.tick().await;
        }
        panic!(
            "pool did not reach {n} idle: {:?}",
            instances::counts(&self.pool.db).await
        );
    }

    pub async fn count(&self, status: InstanceStatus) -> i64 {
        instances::counts(&self.pool.db).await.expect("counts")[&status]
    }

    pub async fn instance(&self, id: &str) -> Option<Instance> {
        instances::get(&self.pool.db, id).await.ok()
    }

    pub async fn ids(&self, status: InstanceStatus) -> Vec<String> {
        sqlx::query_scalar("SELECT id FROM instances WHERE status = $1 ORDER BY created_at, id")
            .bind(status.as_str())
            .fetch_all(&self.pool.db)
            .await
            .expect("ids")
    }

    /// The tools whose resources are recorded against instance `id`, by id.
    pub async fn tool_ids(&self, id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT tool_id FROM instance_services WHERE instance_id = $1 ORDER BY tool_id",
        )
        .bind(id)
        .fetch_all(&self.pool.db)
        .await
        .expect("tool ids")
    }

    pub async fn gateway_token(&self, id: &str) -> String {
        sqlx::query_scalar("SELECT gateway_token FROM instances WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool.db)
            .await
            .expect("gateway token")
    }

    pub fn name_of(&self, id: &str) -> String {
        format!("{}{id}", self.pool.settings.pool.pool_name_prefix)
    }

    pub fn pid_of(&self, id: &str) -> Option<i32> {
        self.local.pid_of(&self.name_of(id))
    }

    /// Switches faults on a stub agent (`POST /stub/faults`).
    pub async fn fault(&self, id: &str, faults: Value) {
        let instance = self.instance(id).await.expect("instance exists");
        let url = instance.url.expect("instance has a url");
        let response = self
            .http
            .post(format!("{url}/stub/faults"))
            .bearer_auth(self.gateway_token(id).await)
            .json(&faults)
            .send()
            .await
            .expect("fault request");
        assert!(
            response.status().is_success(),
            "fault refused: {response:?}"
        );
    }

    /// Kills a stub agent behind the pool's back and waits until the provider sees it gone.
    pub async fn kill_agent(&self, id: &str) {
        let pid = self.pid_of(id).expect("agent is alive");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill agent");
        wait_until(Duration::from_secs(10), || async {
            self.pid_of(id).is_none()
        })
        .await;
    }

    pub async fn tick_with(&self, mode: Mode) -> TickReport {
        tick::run(&self.pool, mode).await.expect("tick")
    }

    /// Health checks a stub agent is answering right now.
    pub async fn health_in_flight(&self, id: &str) -> u64 {
        self.stub_stats(id).await["healthInFlight"]
            .as_u64()
            .expect("healthInFlight")
    }

    /// A stub agent's `GET /stub/stats`.
    pub async fn stub_stats(&self, id: &str) -> Value {
        let url = self.instance(id).await.and_then(|i| i.url).expect("url");
        self.http
            .get(format!("{url}/stub/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// A stub agent's `GET /stub/env` (asked with the instance's gateway token): the variables
    /// it was handed and those it was started with.
    pub async fn stub_env(&self, id: &str) -> Value {
        let url = self.instance(id).await.and_then(|i| i.url).expect("url");
        self.http
            .get(format!("{url}/stub/env"))
            .bearer_auth(self.gateway_token(id).await)
            .send()
            .await
            .expect("env")
            .json()
            .await
            .expect("env json")
    }

    /// Every row of `instance_events`, for "nothing was written" checks.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM instance_events")
            .fetch_one(&self.pool.db)
            .await
            .expect("event count")
    }

    pub async fn events(&self, id: &str) -> Vec<(Option<String>, String)> {
        sqlx::query_as(
            "SELECT from_status, to_status FROM instance_events WHERE instance_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool.db)
        .await
        .expect("events")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path)).bearer_auth(&self.key))
            .await
    }

    pub async fn get_public(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .bearer_auth(&self.key)
                .json(&body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(self.url(path)).bearer_auth(&self.key))
            .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends and reads the body as JSON; a body that is not JSON fails the test.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text}"));
        (status, json)
    }

    pub async fn claim(&self, name: &str) -> (StatusCode, Value) {
        self.post(
            "/api/pool/claim",
            serde_json::json!({"agentName": name, "instructions": "Be helpful."}),
        )
        .await
    }

    /// Ids claimed more than once, according to the event history.
    pub async fn double_claims(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT instance_id FROM instance_events
              WHERE from_status = 'claiming' AND to_status = 'claimed'
              GROUP BY instance_id HAVING count(*) > 1",
        )
        .fetch_all(&self.pool.db)
        .await
        .expect("double claims")
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.local.kill_all();
    }
}

/// Serves the API on a free loopback port, as `serve` does (with the peer's address); its base URL.
async fn serve(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    serve_on(listener, state)
}

fn serve_on(listener: tokio::net::TcpListener, state: AppState) -> String {
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app =
        agentpool::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

/// Awaits a condition, checking every few milliseconds; fails the test past `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields of `/proc/<pid>/stat` after the command name, from the state on: index 0 is the
/// state, 1 the parent pid, 11 and 12 user and system time.
pub fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after it do not.
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// True while a process with this pid exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    u32::try_from(pid)
        .ok()
        .and_then(proc_stat)
        .is_some_and(|fields| {
            fields
                .first()
                .is_some_and(|state| state != "Z" && state != "X")
        })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Has the kernel kill what `command` starts when the thread that starts it exits: a backstop to
/// [`Guarded`] and `kill_on_drop` for a test process killed outright (a sweep stopped by hand, a
/// timeout), which runs no destructor. Only for a command started on a thread that outlives its
/// child (a tokio runtime's worker, a test's own thread), never from `spawn_blocking`, whose
/// threads exit after seconds idle and would take the child with them.
pub fn dies_with_spawning_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// A child process killed and reaped when this is dropped, passed test or failed.
pub struct Guarded(pub std::process::Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
