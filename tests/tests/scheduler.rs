//! `agentpool-scheduler`: TICK_CRON, each slot ticked once by any number of schedulers, ticking
//! over HTTP, and its start-up errors.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use agentpool_core::domain::InstanceStatus;
use agentpool_core::instances;
use agentpool_core::providers::local::LocalProvider;
use agentpool_tests::{
    agentpool_bin, clean, free_port, scheduler_bin, wait_until, Guarded, Remote, TestDb,
};

const KEY: &str = "scheduler-test-key-0123456789";

/// Kills the stub agents of a state directory when the test ends.
struct KillAgents(LocalProvider);

impl Drop for KillAgents {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

fn local_agents(dir: &std::path::Path) -> KillAgents {
    KillAgents(
        LocalProvider::new(dir.to_path_buf(), agentpool_bin().to_path_buf(), vec![]).unwrap(),
    )
}

/// A process whose JSON log lines (stderr) are collected as they come; killed if still running
/// when dropped.
struct Logged {
    child: Option<Child>,
    pid: u32,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logged {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "agentpool_scheduler=info,warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let parsed = serde_json::from_str(&line).unwrap_or(Value::String(line));
                    lines.lock().unwrap().push(parsed);
                }
            }
        });
        Self {
            pid: child.id(),
            child: Some(child),
            lines,
            reader: Some(reader),
        }
    }

    fn alive(&self) -> bool {
        agentpool_tests::process_alive(self.pid as i32)
    }

    /// The `fields` of every log line with this message.
    fn events(&self, message: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line["fields"]["message"] == message)
            .map(|line| line["fields"].clone())
            .collect()
    }

    fn text(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn terminate(&self) {
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).unwrap();
    }

    /// Waits for the process to exit and for its last log line to be read.
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("not waited for yet");
        let reader = self.reader.take();
        tokio::task::spawn_blocking(move || {
            let status = wait_exit(&mut child, Duration::from_secs(30));
            if let Some(reader) = reader {
                let _ = reader.join();
            }
            status
        })
        .await
        .unwrap()
    }

    /// SIGTERM, then the exit status.
    async fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate();
        self.exit_status().await
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(fields: &Value, name: &str) -> u64 {
    fields[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {fields}"))
}

/// Slots every scheduler fired for, with what each did: (pid, fields of its `tick` line).
fn slots_of(schedulers: &[Logged]) -> BTreeMap<String, Vec<(u32, Value)>> {
    let mut slots: BTreeMap<String, Vec<(u32, Value)>> = BTreeMap::new();
    for scheduler in schedulers {
        for fields in scheduler.events("tick") {
            let slot = fields["slot"].as_str().unwrap().to_string();
            slots.entry(slot).or_default().push((scheduler.pid, fields));
        }
    }
    slots.retain(|_, lines| {
        let mut pids: Vec<u32> = lines.iter().map(|(pid, _)| *pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids.len() == schedulers.len()
    });
    slots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_run_each_slot_once() {
    let db = TestDb::new().await;
    let agents = tempfile::tempdir().unwrap();
    let _cleanup = local_agents(agents.path());
    let mut schedulers: Vec<Logged> = (0..3)
        .map(|_| {
            let mut command = clean(&scheduler_bin());
            command
                .env("DATABASE_URL", &db.url)
                .env("LOCAL_STATE_DIR", agents.path())
                .env("LOCAL_AGENT_BIN", agentpool_bin())
                .env("TICK_CRON", "* * * * * *");
            Logged::spawn(command)
        })
        .collect();

    wait_until(Duration::from_secs(90), || async {
        slots_of(&schedulers).len() >= 5
            && instances::counts(&db.pool).await.unwrap()[&InstanceStatus::Idle] == 3
    })
    .await;

    for scheduler in &schedulers {
        scheduler.terminate();
    }
    for scheduler in &mut schedulers {
        let status = scheduler.exit_status().await;
        assert!(
            status.success(),
            "exited with {status}: {}",
            scheduler.text()
        );
    }
    let slots = slots_of(&schedulers);
    let failures: Vec<Value> = schedulers
        .iter()
        .flat_map(|s| s.events("tick failed"))
        .collect();
    assert!(failures.is_empty(), "{failures:?}");

    for (slot, lines) in &slots {
        // Each scheduler fired once for the slot, one of them took it, the others found it taken.
        assert_eq!(lines.len(), 3, "{slot}: {lines:?}");
        let takers: Vec<&(u32, Value)> = lines
            .iter()
            .filter(|(_, fields)| fields["skipped_because"] != "slot_taken")
            .collect();
        assert_eq!(takers.len(), 1, "{slot} ticked by more than one: {lines:?}");
        let (taker, fields) = takers[0];
        let (runner, outcome): (String, String) = sqlx::query_as(
            "SELECT runner, outcome FROM tick_runs
              WHERE to_char(slot AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' = $1",
        )
        .bind(slot)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            runner.starts_with(&format!("agentpool-scheduler {taker}@")),
            "{slot}: taken by {runner}, logged by {taker}"
        );
        let expected = if fields["skipped"] == true {
            "locked"
        } else {
            "ran"
        };
        assert_eq!(outcome, expected, "{slot}: {fields}");
    }

    // Every instance was created by exactly one logged tick: three, for a pool of three.
    let created: u64 = schedulers
        .iter()
        .flat_map(|s| s.events("tick"))
        .map(|fields| count(&fields, "created"))
        .sum();
    let creations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instance_events WHERE from_status IS NULL AND to_status = 'starting'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((created, creations), (3, 3));
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM tick_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let ticked: usize = schedulers
        .iter()
        .flat_map(|s| s.events("tick"))
        .filter(|fields| fields["skipped_because"] != "slot_taken")
        .count();
    assert_eq!(runs as usize, ticked, "one row per slot taken");
}

/// `agentpool serve` on a free port of its own, ticking only when asked.
fn serve(db: &TestDb, agents: &std::path::Path, port: u16, min_idle: &str) -> Guarded {
    Guarded(
        clean(agentpool_bin())
            .arg("serve")
            .env("DATABASE_URL", &db.url)
            .env("POOL_API_KEY", KEY)
            .env("PORT", port.to_string())
            .env("TICK_INTERVAL_MS", "0")
            .env("POOL_MIN_IDLE", min_idle)
            .env("LOCAL_STATE_DIR", agents)
            .env("LOCAL_AGENT_BIN", agentpool_bin())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn http_scheduler(base: &str, key: &str) -> Logged {
    let mut command = clean(&scheduler_bin());
    command
        .env("POOL_URL", base)
        .env("POOL_API_KEY", key)
        .env("TICK_CRON", "* * * * * *");
    Logged::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_ticks_a_serve_over_http_and_a_refused_tick_is_not_fatal() {
    let db = TestDb::new().await;
    let agents = tempfile::tempdir().unwrap();
    let _cleanup = local_agents(agents.path());
    let port = free_port();
    let _serve = serve(&db, agents.path(), port, "2");
    let remote = Remote::new(format!("http://127.0.0.1:{port}"), KEY);
    remote.wait_healthy().await;
    let base = &remote.base;

    let good = http_scheduler(base, KEY);
    // serve's own timer is off: only the scheduler's ticks can fill the pool.
    wait_until(Duration::from_secs(60), || async {
        remote.counts().await["idle"] == 2
    })
    .await;
    // Started once the pool is full: from the same address, its wrong keys would soon have the
    // good scheduler's right key refused too (429 while the address waits out its wrong keys).
    let refused = http_scheduler(base, "not-the-key-0123456789");
    wait_until(Duration::from_secs(30), || async {
        !refused.events("tick failed").is_empty()
    })
    .await;
    assert!(
        refused.alive(),
        "a refused tick stopped the scheduler: {}",
        refused.text()
    );

    let ticks = good.events("tick");
    assert!(ticks.iter().all(|t| t["mode"] == "http"), "{ticks:?}");
    let created: u64 = ticks.iter().map(|t| count(t, "created")).sum();
    assert_eq!(created, 2, "{ticks:?}");
    let failed = refused.events("tick failed");
    // Refused, and after the second wrong key in a row throttled (the API's growing delay).
    assert!(
        failed.iter().all(|f| f["mode"] == "http"
            && ["401 Unauthorized", "429 Too Many Requests"]
                .iter()
                .any(|said| f["error"].as_str().unwrap().contains(said))),
        "{failed:?}"
    );
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("unauthorized"));
    assert!(refused.events("tick").is_empty(), "{}", refused.text());
    assert!(!refused.text().contains("not-the-key"), "the key leaked");

    // The slots went with the requests: the API ran each for one of them.
    let api_runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tick_runs WHERE runner LIKE 'api %'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let taken = ticks
        .iter()
        .filter(|t| t["skipped_because"] != "slot_taken")
        .count();
    assert!(
        api_runs >= 1 && api_runs as usize >= taken,
        "{api_runs} rows, {ticks:?}"
    );

    for mut scheduler in [good, refused] {
        let status = scheduler.stop().await;
        assert!(
            status.success(),
            "exited with {status}: {}",
            scheduler.text()
        );
    }
}

/// What the stand-in API saw of a tick request, and how to answer it.
struct HeldTick {
    headers: HeaderMap,
    body: Value,
    answer: oneshot::Sender<Value>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_tick_over_http_in_flight_end() {
    // A stand-in API that holds each tick request until the test answers it.
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<HeldTick>();
    let app = Router::new()
        .route(
            "/api/pool/tick",
            post(
                |State(held): State<mpsc::UnboundedSender<HeldTick>>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    let (answer, answered) = oneshot::channel();
                    let _ = held.send(HeldTick {
                        headers,
                        body,
                        answer,
                    });
                    Json(answered.await.unwrap_or(Value::Null))
                },
            ),
        )
        .with_state(held_tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut scheduler = http_scheduler(&format!("{base}/"), KEY);
    let held = tokio::time::timeout(Duration::from_secs(30), held_rx.recv())
        .await
        .expect("a tick request")
        .unwrap();
    assert_eq!(held.headers["authorization"], format!("Bearer {KEY}"));
    let slot: chrono::DateTime<chrono::Utc> = held.body["slot"].as_str().unwrap().parse().unwrap();
    assert_eq!(slot.timestamp_subsec_nanos(), 0, "a slot is a whole second");

    scheduler.terminate();
    wait_until(Duration::from_secs(30), || async {
        !scheduler
            .events("stopping: letting the running tick end")
            .is_empty()
    })
    .await;
    held.answer
        .send(json!({"skipped": false, "created": ["a", "b"], "destroyed": [], "transitions": [], "errors": []}))
        .unwrap();
    let status = scheduler.exit_status().await;
    assert!(
        status.success(),
        "exited with {status}: {}",
        scheduler.text()
    );
    let ticks = scheduler.events("tick");
    assert_eq!(ticks.len(), 1, "{}", scheduler.text());
    assert_eq!(count(&ticks[0], "created"), 2);
    assert!(
        scheduler.events("tick failed").is_empty(),
        "{}",
        scheduler.text()
    );
    server.abort();
}

#[test]
fn bad_scheduler_settings_stop_start_up_with_one_line_naming_them() {
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("DATABASE_URL", "postgres://127.0.0.1:1/none"),
                ("TICK_CRON", "*/30 * * * *"),
            ],
            "TICK_CRON",
        ),
        (
            &[
                ("DATABASE_URL", "postgres://127.0.0.1:1/none"),
                ("TICK_CRON", "0 0 0 30 2 *"),
            ],
            "TICK_CRON",
        ),
        (
            &[
                ("DATABASE_URL", "postgres://127.0.0.1:1/none"),
                ("POOL_URL", "http://127.0.0.1:1"),
                ("POOL_API_KEY", KEY),
            ],
            "POOL_URL",
        ),
        (&[("POOL_URL", "http://127.0.0.1:1")], "POOL_API_KEY"),
        (&[], "DATABASE_URL"),
    ];
    for (vars, setting) in cases {
        let mut command = clean(&scheduler_bin());
        command.envs(vars.iter().copied());
        let output = command.output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{vars:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid setting {setting}")),
            "{vars:?}: {stderr}"
        );
        assert!(!stderr.contains(KEY), "the key leaked: {stderr}");
    }
}
