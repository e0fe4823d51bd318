//! The real binaries: `agentpool dev`, `serve`, `tick`, `migrate` and `agentpool-scheduler`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentpool_core::domain::InstanceStatus;
use agentpool_core::instances;
use agentpool_core::providers::local::LocalProvider;
use agentpool_tests::{
    agentpool_bin, clean, free_port, proc_stat, process_alive, scheduler_bin, wait_until, Guarded,
    Remote, TestDb,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::Value;

/// Every descendant of `pid`, from /proc.
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let child: i32 = entry.file_name().to_str()?.parse().ok()?;
            let parent = proc_stat(child as u32)?.get(1)?.parse().ok()?;
            Some((child, parent))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let current = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == current)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Kills the stub agents of a state directory when the test ends.
struct KillAgents<'a>(&'a LocalProvider);

impl Drop for KillAgents<'_> {
    fn drop(&mut self) {
        self.0.kill_all();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_claimable_agents_and_leaves_nothing_behind() {
    let mut dev = Guarded(
        clean(agentpool_bin())
            .arg("dev")
            .env("PORT", "0")
            // Seed 002/003's runtime: dev's stub agents speak what the pool speaks.
            .env("RUNTIME_PROTOCOL", "convos")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = dev.0.id() as i32;
    let stdout = dev.0.stdout.take().unwrap();
    let (base, key) = tokio::task::spawn_blocking(move || {
        let (mut base, mut key) = (None, None);
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                base = Some(rest.to_string());
            }
            if let Some(rest) = line.trim().strip_prefix("api key:") {
                key = rest.split_whitespace().next().map(str::to_string);
            }
            if base.is_some() && key.is_some() {
                break;
            }
        }
        // Keep reading so that dev never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (
            base.expect("dev printed its URL"),
            key.expect("dev printed its key"),
        )
    })
    .await
    .unwrap();
    assert_eq!(key.len(), 64, "a generated key");

    let remote = Remote::new(base.as_str(), key.as_str());
    let http = &remote.http;
    wait_until(Duration::from_secs(30), || async {
        remote.counts().await["idle"] == 3
    })
    .await;
    let response = http
        .post(format!("{base}/api/pool/claim"))
        .bearer_auth(&key)
        .body(r#"{"agentName":"demo","instructions":"Say hello."}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let claimed: Value = response.json().await.unwrap();
    assert!(claimed["inviteUrl"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    // The agent was bound through the Convos gateway's own route.
    let again = http
        .post(format!(
            "{}/convos/conversation",
            claimed["gatewayUrl"].as_str().unwrap()
        ))
        .bearer_auth(claimed["gatewayToken"].as_str().unwrap())
        .json(&serde_json::json!({"name": "x", "profileName": "x", "instructions": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    // The in-process loop refills the pool after the claim.
    wait_until(Duration::from_secs(30), || async {
        let counts = remote.counts().await;
        counts["idle"] == 3 && counts["claimed"] == 1
    })
    .await;

    let children = descendants(pid);
    assert!(
        children.len() >= 5,
        "postgres and 4 stub agents expected, found {children:?}"
    );
    kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut dev.0, Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(status.success(), "dev exited with {status}");
    let survivors: Vec<i32> = children.into_iter().filter(|p| process_alive(*p)).collect();
    assert!(
        survivors.is_empty(),
        "processes left behind by dev: {survivors:?}"
    );
}

#[test]
fn serve_refuses_to_start_without_an_api_key() {
    let output = clean(agentpool_bin())
        .arg("serve")
        .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("POOL_API_KEY"), "{stderr}");
}

#[test]
fn a_malformed_setting_stops_start_up_with_one_line_naming_it() {
    for (name, value) in [
        ("POOL_MIN_IDLE", "three"),
        ("PORT", "99999"),
        ("POOL_PROVIDER", "heroku"),
    ] {
        let output = clean(agentpool_bin())
            .arg("serve")
            .env(name, value)
            .env("POOL_API_KEY", "0123456789abcdef0123")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(name), "{stderr}");
    }
}

/// Every migration applied, each exactly once.
async fn assert_migrated_once(db: &TestDb) {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        agentpool_core::db::MIGRATOR.iter().count()
    );
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let db = TestDb::empty().await;
    let children: Vec<Child> = (0..4)
        .map(|_| {
            clean(agentpool_bin())
                .arg("migrate")
                .env("DATABASE_URL", &db.url)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        let status =
            tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(60)))
                .await
                .unwrap();
        assert!(status.success());
    }
    assert_migrated_once(&db).await;
}

#[tokio::test]
async fn tick_command_prints_its_report_and_the_scheduler_keeps_the_pool_full() {
    let db = TestDb::new().await;
    let agents = tempfile::tempdir().unwrap();
    let local = LocalProvider::new(
        agents.path().to_path_buf(),
        agentpool_bin().to_path_buf(),
        vec![],
    )
    .unwrap();
    let _cleanup = KillAgents(&local);
    let env = |command: &mut Command| {
        command
            .env("DATABASE_URL", &db.url)
            .env("LOCAL_STATE_DIR", agents.path())
            .env("LOCAL_AGENT_BIN", agentpool_bin());
    };

    let mut tick = clean(agentpool_bin());
    tick.arg("tick");
    env(&mut tick);
    let output = tick.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["skipped"], false);
    assert_eq!(report["created"].as_array().unwrap().len(), 3, "{report}");

    let mut scheduler = clean(&scheduler_bin());
    scheduler.env("TICK_INTERVAL_MS", "1000");
    env(&mut scheduler);
    let mut scheduler = Guarded(
        scheduler
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(30), || async {
        instances::counts(&db.pool).await.unwrap()[&InstanceStatus::Idle] == 3
    })
    .await;
    // A claim-like removal is refilled by the scheduler alone.
    let drained = instances::drain(&db.pool, 1).await.unwrap();
    assert_eq!(drained.len(), 1);
    wait_until(Duration::from_secs(30), || async {
        let counts = instances::counts(&db.pool).await.unwrap();
        counts[&InstanceStatus::Idle] == 3 && counts[&InstanceStatus::Destroying] == 0
    })
    .await;
    kill(Pid::from_raw(scheduler.0.id() as i32), Signal::SIGTERM).unwrap();
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut scheduler.0, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(status.success(), "scheduler exited with {status}");
}

/// Forwards connections from `listener` to `target` until dropped: the database "appearing" at
/// an address where nothing listened before.
async fn forward(listener: tokio::net::TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_a_database_that_is_not_up_yet() {
    let db = TestDb::empty().await;
    let real = db.url.parse::<reqwest::Url>().unwrap();
    let target = format!("127.0.0.1:{}", real.port().unwrap());
    // An address where nothing listens yet.
    let db_port = free_port();
    let mut late_url = real.clone();
    late_url.set_port(Some(db_port)).unwrap();
    let port = free_port();
    let agents = tempfile::tempdir().unwrap();
    let mut serve = Guarded(
        clean(agentpool_bin())
            .arg("serve")
            .env("DATABASE_URL", late_url.as_str())
            .env("POOL_API_KEY", "0123456789abcdef0123")
            .env("PORT", port.to_string())
            .env("POOL_MIN_IDLE", "0")
            .env("LOCAL_STATE_DIR", agents.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = serve.0.stderr.take().unwrap();
    let (warned_tx, warned_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut warned_tx = Some(warned_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("database unavailable") {
                if let Some(tx) = warned_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    // It has found the database missing and is waiting, not exiting.
    tokio::time::timeout(Duration::from_secs(30), warned_rx)
        .await
        .expect("serve said it is waiting for the database")
        .unwrap();
    assert!(serve.0.try_wait().unwrap().is_none(), "serve gave up");

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", db_port))
        .await
        .unwrap();
    let forwarder = tokio::spawn(forward(listener, target));
    let http = reqwest::Client::new();
    let counts = format!("http://127.0.0.1:{port}/api/pool/counts");
    wait_until(Duration::from_secs(30), || async {
        http.get(&counts)
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    // It migrated the database it waited for.
    assert_migrated_once(&db).await;
    drop(serve);
    forwarder.abort();
}

/// Starts `command` (a `serve` or a scheduler) on a pool whose agents take 2 s to start, waits
/// until its own timed tick is creating two of them, sends SIGTERM, and checks that the process
/// let those creations end (each recorded its resource) before exiting cleanly.
async fn sigterm_lets_the_running_tick_end(mut command: Command) {
    let db = TestDb::new().await;
    let agents = tempfile::tempdir().unwrap();
    let local = LocalProvider::new(
        agents.path().to_path_buf(),
        agentpool_bin().to_path_buf(),
        vec![],
    )
    .unwrap();
    let _cleanup = KillAgents(&local);
    let mut process = Guarded(
        command
            .env("DATABASE_URL", &db.url)
            .env("LOCAL_STATE_DIR", agents.path())
            .env("LOCAL_AGENT_BIN", agentpool_bin())
            .env("STUB_START_DELAY_MS", "2000")
            .env("POOL_MIN_IDLE", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Reserved is not yet creating: the tick reserves its rows under the lock and creates them
    // after releasing it, and a reserved row a shutdown reaches before its creation starts is
    // given up (new work). The local provider opens an agent's log as its creation starts.
    let creating = || {
        std::fs::read_dir(agents.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), || async {
        instances::counts(&db.pool).await.unwrap()[&InstanceStatus::Starting] == 2
            && creating() == 2
    })
    .await;
    kill(Pid::from_raw(process.0.id() as i32), Signal::SIGTERM).unwrap();
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut process.0, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(status.success(), "exited with {status}");
    let unrecorded: Vec<String> = sqlx::query_scalar(
        "SELECT i.id FROM instances i LEFT JOIN instance_infra f ON f.instance_id = i.id
          WHERE f.instance_id IS NULL",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        unrecorded.is_empty(),
        "creations cut off by the exit: {unrecorded:?}"
    );
    assert_eq!(
        instances::counts(&db.pool).await.unwrap()[&InstanceStatus::Starting],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ticks_on_its_own_timer_and_lets_the_tick_end_on_sigterm() {
    // No request reaches it: only its own timer can tick.
    let mut serve = clean(agentpool_bin());
    serve
        .arg("serve")
        .env("PORT", free_port().to_string())
        .env("POOL_API_KEY", "0123456789abcdef0123")
        .env("TICK_INTERVAL_MS", "500");
    sigterm_lets_the_running_tick_end(serve).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_lets_its_running_tick_end_on_sigterm() {
    let mut scheduler = clean(&scheduler_bin());
    scheduler.env("TICK_INTERVAL_MS", "1000");
    sigterm_lets_the_running_tick_end(scheduler).await;
}

/// The backstop the failpoint sweep, the fakes and the benchmark put on what they start: when the
/// thread that started a process is gone (as every thread is when the test process is killed
/// outright), the kernel kills the process.
#[test]
fn a_process_started_with_the_backstop_dies_with_its_starting_thread() {
    let started = std::thread::spawn(|| {
        let mut command = Command::new("sleep");
        command.arg("600");
        agentpool_tests::dies_with_spawning_thread(&mut command);
        command.spawn().unwrap()
    })
    .join()
    .unwrap();
    let mut child = Guarded(started);
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
}
