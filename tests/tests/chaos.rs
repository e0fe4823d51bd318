//! Many replicas under fire: 4 `agentpool serve` and 2 `agentpool-scheduler` processes on one
//! Postgres, 64 clients claiming, a replica SIGKILLed and restarted about once a second, and
//! Postgres restarted once in the middle. Afterwards the database and `instance_events` must show
//! that nothing was handed out twice and that the pool healed.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentpool_core::db;
use agentpool_core::db::embedded::{create_database, EmbeddedPostgres};
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::{agentpool_bin, free_port, process_alive, scheduler_bin, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

const SERVES: usize = 4;
const SCHEDULERS: usize = 2;
/// Slots never killed: one `serve` (slot 0) and one scheduler (the first after the serves) live
/// through the Postgres restart, and after the storm they alone must heal the pool, which they can
/// only do if they reconnected by themselves.
const VETERANS: [usize; 2] = [0, SERVES];
const CLIENTS: usize = 64;
const CLAIMS: usize = 2_000;
const MIN_IDLE: i64 = 24;
const CLAIM_TIMEOUT_MS: u64 = 4_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long past `CLAIM_TIMEOUT_MS` a `claiming` row may be seen before the tick reaps it: a
/// couple of tick intervals, a Postgres restart, and room for a loaded machine.
const REAP_GRACE: Duration = Duration::from_secs(10);
/// The whole storm stops here even if the claims are not all made.
const STORM_LIMIT: Duration = Duration::from_secs(150);

/// One replica slot: a process, restarted in place after each kill.
struct Slot {
    command: Vec<String>,
    port: Option<u16>,
    child: Child,
    /// From the decision to kill to the process being reaped: a request to this slot that
    /// overlaps one of these was cut by the test.
    kills: Vec<(Instant, Instant)>,
    /// Stopped on purpose after the storm.
    stopped: bool,
}

struct Fleet {
    env: Vec<(String, String)>,
    logs: std::path::PathBuf,
    slots: Vec<Slot>,
    /// Replicas found dead that the test did not kill: each one is a failure.
    exits: Vec<String>,
}

impl Fleet {
    fn spawn(&self, command: &[String], port: Option<u16>) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", port.unwrap_or(0))))
            .unwrap();
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(port) = port {
            cmd.env("PORT", port.to_string());
        }
        cmd.spawn().expect("spawn replica")
    }

    /// False, and the exit recorded as a failure, if the slot's process died without the test
    /// killing it.
    fn running(&mut self, index: usize) -> bool {
        match self.slots[index].child.try_wait() {
            Ok(Some(status)) => {
                self.exits
                    .push(format!("slot {index} exited by itself: {status}"));
                false
            }
            _ => true,
        }
    }

    fn kill(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let before = Instant::now();
        let _ = slot.child.kill();
        let _ = slot.child.wait();
        slot.kills.push((before, Instant::now()));
    }

    fn kill_and_restart(&mut self, index: usize) {
        self.running(index);
        self.kill(index);
        let (command, port) = (self.slots[index].command.clone(), self.slots[index].port);
        self.slots[index].child = self.spawn(&command, port);
    }

    /// Kills a slot for good (no restart).
    fn stop(&mut self, index: usize) {
        if self.running(index) {
            self.kill(index);
        }
        self.slots[index].stopped = true;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            let _ = slot.child.kill();
            let _ = slot.child.wait();
        }
    }
}

/// Stub agents of this pool that are running: name → pid, from /proc.
fn running_agents(prefix: &str) -> HashMap<String, i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.iter().any(|a| a == "stub-agent") || !process_alive(pid) {
                return None;
            }
            let name = args.iter().find(|a| a.starts_with(prefix))?.clone();
            Some((name, pid))
        })
        .collect()
}

/// Kills this pool's stub agents when the test ends, passed or failed.
struct KillAgents(String);

impl Drop for KillAgents {
    fn drop(&mut self) {
        for pid in running_agents(&self.0).values() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Claimed {
        instance: String,
        conversation: String,
    },
    JsonError {
        status: u16,
        code: String,
    },
    /// The connection broke mid-request.
    Cut {
        replica: usize,
        started: Instant,
        ended: Instant,
        error: String,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_under_fire_never_hand_out_an_instance_twice() {
    let pg_root = tempfile::Builder::new()
        .prefix("agentpool-chaos-pg-")
        .tempdir()
        .unwrap();
    let root = pg_root.path().to_path_buf();
    let postgres = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&root))
        .await
        .unwrap()
        .expect("start chaos postgres");
    create_database(&postgres.url("postgres"), "chaos")
        .await
        .unwrap();
    let url = postgres.url("chaos");
    let pool = db::open(&url, 5).await.unwrap();

    let agents_dir = tempfile::Builder::new()
        .prefix("agentpool-chaos-agents-")
        .tempdir()
        .unwrap();
    let prefix = format!("chaos{}-", rand::thread_rng().gen_range(100_000..999_999));
    let _agents = KillAgents(prefix.clone());
    let key = "chaos-key-0123456789abcdef".to_string();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", url.as_str()),
        ("POOL_API_KEY", key.as_str()),
        ("POOL_MIN_IDLE", &MIN_IDLE.to_string()),
        ("POOL_MAX_TOTAL", "64"),
        ("CLAIM_TIMEOUT_MS", &CLAIM_TIMEOUT_MS.to_string()),
        // A `starting` row whose creator was killed before the resource existed waits this long.
        ("CREATE_TIMEOUT_MS", "10000"),
        ("POOL_STUCK_TIMEOUT_MS", "15000"),
        ("PROVISION_TIMEOUT_MS", "3000"),
        ("HEALTH_TIMEOUT_MS", "2000"),
        ("HEALTH_FAILURE_THRESHOLD", "2"),
        ("HEALTH_INTERVAL_MS", "4000"),
        ("TICK_INTERVAL_MS", "1000"),
        ("TICK_BUDGET_MS", "5000"),
        ("POOL_NAME_PREFIX", prefix.as_str()),
        ("LOCAL_STATE_DIR", &agents_dir.path().display().to_string()),
        ("LOCAL_AGENT_BIN", &agentpool_bin().display().to_string()),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    // The stub agents boot, answer health checks and provision at the real pace, scaled as the
    // settings above are (CLAIM_TIMEOUT_MS and TICK_INTERVAL_MS are the defaults / 30).
    .chain(LatencyProfile::realistic().scaled(1.0 / 30.0).stub_env())
    .collect();

    let logs = tempfile::Builder::new()
        .prefix("agentpool-chaos-logs-")
        .tempdir()
        .unwrap();
    let mut fleet = Fleet {
        env,
        logs: logs.path().to_path_buf(),
        slots: Vec::new(),
        exits: Vec::new(),
    };
    let ports: Vec<u16> = (0..SERVES).map(|_| free_port()).collect();
    for port in &ports {
        let command = vec![agentpool_bin().display().to_string(), "serve".to_string()];
        let child = fleet.spawn(&command, Some(*port));
        fleet.slots.push(Slot {
            command,
            port: Some(*port),
            child,
            kills: Vec::new(),
            stopped: false,
        });
    }
    for _ in 0..SCHEDULERS {
        let command = vec![scheduler_bin().display().to_string()];
        let child = fleet.spawn(&command, None);
        fleet.slots.push(Slot {
            command,
            port: None,
            child,
            kills: Vec::new(),
            stopped: false,
        });
    }
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    // No pooled connections: a request on a connection to a replica killed earlier would fail
    // for a reason a fresh connection does not have.
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let idle = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM instances WHERE status = 'idle'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), || async {
        idle(pool.clone()).await >= MIN_IDLE
    })
    .await;

    // The storm.
    let fleet = Arc::new(Mutex::new(fleet));
    let tickets = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, bases, key) = (http.clone(), bases.clone(), key.clone());
        let (tickets, outcomes) = (tickets.clone(), outcomes.clone());
        clients.push(tokio::spawn(async move {
            while tickets.fetch_add(1, Ordering::SeqCst) < CLAIMS && started.elapsed() < STORM_LIMIT
            {
                let outcome = claim_once(&http, &bases, &key).await;
                // Clients pace themselves so that the storm lasts about a minute and the kills
                // land among the claims.
                let pause = Duration::from_millis(rand::thread_rng().gen_range(1000..3000));
                if let Outcome::Claimed { instance, .. } = &outcome {
                    // Operators release agents over time, which keeps the pool churning.
                    release(&http, &bases, &key, instance).await;
                }
                outcomes.lock().unwrap().push(outcome);
                tokio::time::sleep(pause).await;
            }
        }));
    }
    // Watches for `claiming` rows that outlive the claim timeout.
    let oldest_claiming = {
        let (pool, tickets) = (pool.clone(), tickets.clone());
        tokio::spawn(async move {
            let mut oldest = Duration::ZERO;
            while tickets.load(Ordering::SeqCst) < CLAIMS && started.elapsed() < STORM_LIMIT {
                let age: Result<f64, _> = sqlx::query_scalar(
                    "SELECT coalesce(extract(epoch FROM max(now() - status_since)), 0)::float8
                       FROM instances WHERE status = 'claiming'",
                )
                .fetch_one(&pool)
                .await;
                // While Postgres restarts there is nothing to read; the rows wait for it.
                if let Ok(age) = age {
                    oldest = oldest.max(Duration::from_secs_f64(age.max(0.0)));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            oldest
        })
    };
    let killer = {
        let (fleet, tickets) = (fleet.clone(), tickets.clone());
        tokio::spawn(async move {
            let mut postgres = Some(postgres);
            let mut restarted_postgres = false;
            let mut kills = 0;
            while tickets.load(Ordering::SeqCst) < CLAIMS && started.elapsed() < STORM_LIMIT {
                let (pause, victim) = {
                    let mut rng = rand::thread_rng();
                    let victims: Vec<usize> = (0..SERVES + SCHEDULERS)
                        .filter(|slot| !VETERANS.contains(slot))
                        .collect();
                    (rng.gen_range(700..1300), *victims.choose(&mut rng).unwrap())
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let fleet = fleet.clone();
                tokio::task::spawn_blocking(move || fleet.lock().unwrap().kill_and_restart(victim))
                    .await
                    .unwrap();
                kills += 1;
                if !restarted_postgres && tickets.load(Ordering::SeqCst) >= CLAIMS / 2 {
                    let server = postgres.take().unwrap();
                    postgres = Some(
                        tokio::task::spawn_blocking(move || server.restart())
                            .await
                            .unwrap()
                            .expect("restart postgres"),
                    );
                    restarted_postgres = true;
                }
            }
            (postgres.unwrap(), kills, restarted_postgres)
        })
    };
    for client in clients {
        client.await.unwrap();
    }
    let (postgres, kills, restarted_postgres) = killer.await.unwrap();
    let storm = started.elapsed();

    let oldest_claiming = oldest_claiming.await.unwrap();
    assert!(
        oldest_claiming < Duration::from_millis(CLAIM_TIMEOUT_MS) + REAP_GRACE,
        "a claiming row lived {oldest_claiming:?}, past the claim timeout of {CLAIM_TIMEOUT_MS} ms"
    );

    // Only the veterans are left to heal the pool: no claim left in flight, the pool back at its
    // minimum, nothing left over.
    {
        let fleet = fleet.clone();
        tokio::task::spawn_blocking(move || {
            let mut fleet = fleet.lock().unwrap();
            for slot in 0..SERVES + SCHEDULERS {
                if !VETERANS.contains(&slot) {
                    fleet.stop(slot);
                }
            }
        })
        .await
        .unwrap();
    }
    let heal_deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM instances GROUP BY status")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        let counts: HashMap<String, i64> = rows.into_iter().collect();
        let get = |s: &str| counts.get(s).copied().unwrap_or(0);
        if get("idle") == MIN_IDLE
            && get("claiming") == 0
            && get("starting") == 0
            && get("destroying") == 0
        {
            break;
        }
        if Instant::now() > heal_deadline {
            let stuck: Vec<(String, String, Option<String>, i32)> = sqlx::query_as(
                "SELECT id, status, last_error, health_failures FROM instances WHERE status NOT IN ('idle', 'claimed')",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            panic!("the pool did not heal: {counts:?}; {stuck:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The veteran replica, up since before Postgres restarted, reads the database again.
    let status = http
        .get(format!("{}/api/pool/status", bases[VETERANS[0]]))
        .bearer_auth(&key)
        .send()
        .await
        .expect("veteran replica answers");
    assert_eq!(status.status(), 200, "{:?}", status.text().await);

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let (kill_times, exits) = {
        let mut fleet = fleet.lock().unwrap();
        for index in 0..fleet.slots.len() {
            if !fleet.slots[index].stopped {
                fleet.running(index);
            }
        }
        let kills: Vec<Vec<(Instant, Instant)>> =
            fleet.slots.iter().map(|s| s.kills.clone()).collect();
        (kills, fleet.exits.clone())
    };
    let logs_of = |port: Option<u16>| {
        let log = std::fs::read_to_string(logs.path().join(format!("{}.log", port.unwrap_or(0))))
            .unwrap_or_default();
        log.lines()
            .rev()
            .take(30)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(
        exits.is_empty(),
        "{exits:?}\nserve logs: {:#?}\nscheduler log: {:#?}",
        ports.iter().map(|p| logs_of(Some(*p))).collect::<Vec<_>>(),
        logs_of(None)
    );
    let mut claimed = HashMap::new();
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut cut = 0;
    for outcome in &outcomes {
        match outcome {
            Outcome::Claimed {
                instance,
                conversation,
            } => {
                assert!(
                    claimed
                        .insert(instance.clone(), conversation.clone())
                        .is_none(),
                    "instance {instance} was handed out twice"
                );
            }
            Outcome::JsonError { status, code } => {
                *errors.entry(format!("{status} {code}")).or_default() += 1
            }
            Outcome::Cut {
                replica,
                started,
                ended,
                error,
            } => {
                let killed = kill_times[*replica]
                    .iter()
                    .any(|(from, to)| started <= to && ended >= from);
                if !killed {
                    let tail = logs_of(Some(ports[*replica]));
                    panic!("request to replica {replica} failed without a kill: {error}\nlog tail: {tail:#?}");
                }
                cut += 1;
            }
        }
    }

    // From the history: every instance handed out (claiming → claimed; a crashed agent coming
    // back to its user is not a hand-out) at most once, each reply backed by one such
    // event naming its conversation.
    let history: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT instance_id, count(*), max(reason) FROM instance_events
          WHERE from_status = 'claiming' AND to_status = 'claimed' GROUP BY instance_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut backed = 0;
    for (instance, count, reason) in &history {
        assert_eq!(*count, 1, "instance {instance} claimed {count} times");
        if let Some(conversation) = claimed.get(instance) {
            assert_eq!(
                reason.as_deref(),
                Some(format!("provisioned: conversation {conversation}").as_str())
            );
            backed += 1;
        }
    }
    assert_eq!(
        backed,
        claimed.len(),
        "a successful reply without its claimed event"
    );
    let twice_claiming: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT instance_id FROM instance_events WHERE to_status = 'claiming'
           GROUP BY instance_id HAVING count(*) > 1) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(twice_claiming, 0);

    // No stub agent without a row, no row of a live instance without its agent.
    let rows: HashSet<String> = sqlx::query_scalar("SELECT name FROM instances")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let agents = running_agents(&prefix);
    let strays: Vec<&String> = agents.keys().filter(|name| !rows.contains(*name)).collect();
    assert!(
        strays.is_empty(),
        "stub agents running without a row: {strays:?}"
    );

    println!(
        "chaos: {} requests in {:.1}s, oldest claiming row {:.1}s, {} claimed, {} cut by kills, errors {:?}, {} replica kills, postgres restarted: {}",
        outcomes.len(),
        storm.as_secs_f64(),
        oldest_claiming.as_secs_f64(),
        claimed.len(),
        cut,
        errors,
        kills,
        restarted_postgres
    );
    assert!(
        restarted_postgres,
        "the storm ended before Postgres was restarted"
    );
    assert!(kills >= 5, "too few kills to mean anything: {kills}");
    assert!(
        claimed.len() >= 100,
        "too few claims succeeded: {}",
        claimed.len()
    );

    drop(fleet);
    drop(pool);
    tokio::task::spawn_blocking(move || postgres.stop())
        .await
        .unwrap()
        .unwrap();
}

/// Like a load balancer: a replica that refuses the connection is skipped; one that breaks it
/// mid-request is reported as cut.
async fn claim_once(http: &reqwest::Client, bases: &[String], key: &str) -> Outcome {
    let mut order: Vec<usize> = (0..bases.len()).collect();
    order.shuffle(&mut rand::thread_rng());
    let body = json!({"agentName": "chaos", "instructions": "Survive."});
    let mut last = None;
    for _ in 0..20 {
        for &replica in &order {
            let started = Instant::now();
            let sent = http
                .post(format!("{}/api/pool/claim", bases[replica]))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) if e.is_connect() => {
                    last = Some(e.to_string());
                    continue;
                }
                Err(e) => {
                    return Outcome::Cut {
                        replica,
                        started,
                        ended: Instant::now(),
                        error: format!("{e:?}"),
                    };
                }
            };
            let status = response.status().as_u16();
            let text = match response.text().await {
                Ok(text) => text,
                Err(e) => {
                    return Outcome::Cut {
                        replica,
                        started,
                        ended: Instant::now(),
                        error: e.to_string(),
                    }
                }
            };
            let json: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                panic!("replica {replica} answered {status} without JSON: {text}")
            });
            if status == 200 {
                return Outcome::Claimed {
                    instance: json["instanceId"].as_str().expect("instanceId").to_string(),
                    conversation: json["conversationId"]
                        .as_str()
                        .expect("conversationId")
                        .to_string(),
                };
            }
            let code = json["code"]
                .as_str()
                .unwrap_or_else(|| panic!("error without code: {json}"));
            assert!(json["error"].is_string(), "error without message: {json}");
            return Outcome::JsonError {
                status,
                code: code.to_string(),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no replica accepted a connection: {last:?}");
}

async fn release(http: &reqwest::Client, bases: &[String], key: &str, instance: &str) {
    for _ in 0..20 {
        let base = bases.choose(&mut rand::thread_rng()).unwrap().clone();
        let sent = http
            .delete(format!("{base}/api/pool/instances/{instance}"))
            .bearer_auth(key)
            .send()
            .await;
        if let Ok(response) = sent {
            // 202, or 409 if a retry follows a release that did land.
            if response.status().is_success() || response.status() == 409 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
