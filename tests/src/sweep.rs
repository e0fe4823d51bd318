//! The failpoint sweep (issue 15, section 3): for a failpoint and an action (an error, a delay past
//! the caller's timeout, the process dying on that line), one scenario on real Postgres with two
//! `agentpool serve` replicas and the stateful fakes at realistic latency (scaled): claims (with
//! `Idempotency-Key`s, retried on the other replica when a connection breaks; one by a template
//! whose two pool tools the claim makes on the instance it takes), a dashboard login
//! and logout, an operator's delete, a replenish, a kicked tick, and the replicas' own ticks; then
//! the situations the driving seldom brings to A, driven on A (`focus`: a claim whose tool or
//! runtime fails, a slow and a failing creation, a tick with orphans, a crashed runtime, abandoned
//! resources), met again until A reaches the case's failpoint when it is one they are there for.
//! Recycling and keep-alive (`recycle.*`, `heartbeat.*`) need a provider that restores and whose
//! instances sleep: those cases run on the Sprites fake (with its own focus situation instead of
//! Railway's: a sprite falling silent while only A sends keep-alive rounds), where the operator's
//! delete recycles the template's claim, a second release meets failing restores, and one idle
//! sprite falls silent.
//! Replica A runs with the failpoint; a killed A is restarted without it. Once the pool settles,
//! [`Verdict::violations`] lists every invariant broken:
//!
//! - no instance handed to two claims (the claim events; a recycled instance once per life),
//!   no conversation served by two agents;
//! - no resource of a claimed, healthy agent destroyed;
//! - every outside resource (service, volume, key, inbox, number) owned by a row or deleted;
//! - no row in a transient state past its timeout plus two ticks;
//! - every client answered (a success or a JSON error with a code) within the claim deadline.
//!
//! The list of failpoints is [`FAILPOINTS`]; `tests/tests/failpoints.rs` runs a fast subset, and
//! the whole sweep (`--ignored`) writes `docs/failpoints.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::fakes::{Controls, Fault, Scope, SpritesConfig, SpritesFake};
use crate::latency::LatencyProfile;
use crate::outside::Outside;
use crate::{agentpool_bin, free_port, set_vars, TestDb};

mod focus;
pub use focus::targeted as focused_failpoints;

/// Every failpoint in the code, by the step it marks (see `shared/src/vocabulary/failpoint.rs`).
/// `shared`'s test `every_failpoint_is_swept` keeps this list and the code in step.
pub const FAILPOINTS: &[&str] = &[
    // The claim.
    "claim.take.before",
    "claim.take.after",
    "claim.provision.before",
    "claim.provision.after",
    "claim.finish.before",
    "claim.finish.after",
    "claim.abandon.before",
    "claim.abandon.after",
    "claim.tool_create.before",
    "claim.tool_create.after",
    "claim.tool_record.before",
    "claim.tool_record.after",
    "claim.tool_rollback.before",
    "claim.give_back.before",
    "claim.give_back.after",
    "claim.save_variables.before",
    "claim.save_variables.after",
    "claim.count_miss.before",
    // Idempotency.
    "idempotency.begin.before",
    "idempotency.begin.after",
    "idempotency.forget.before",
    "idempotency.forget.after",
    // Creation.
    "creation.creator_start.before",
    "creation.creator_start.after",
    "creation.heartbeat.before",
    "creation.heartbeat.after",
    "creation.creator_finish.before",
    "creation.creator_finish.after",
    "creation.reserve.before",
    "creation.reserve.after",
    "creation.tool_create.before",
    "creation.tool_create.after",
    "creation.tool_record.after",
    "creation.provider_create.before",
    "creation.provider_create.after",
    "creation.record_infra.after",
    "creation.roll_back.before",
    "creation.roll_back.after",
    "creation.abandon.before",
    "creation.abandon.after",
    // Teardown.
    "teardown.request_destroy.before",
    "teardown.request_destroy.after",
    "teardown.services_abandon.before",
    "teardown.services_abandon.after",
    "teardown.tool_destroy.before",
    "teardown.tool_destroy.after",
    "teardown.services_forget.after",
    "teardown.provider_destroy.before",
    "teardown.provider_destroy.after",
    "teardown.row_delete.before",
    "teardown.row_delete.after",
    "teardown.record_failures.after",
    "teardown.abandoned_destroy.before",
    "teardown.abandoned_destroy.after",
    // The tick.
    "tick.lease.before",
    "tick.lease.behind",
    "tick.lease.after",
    "tick.provider_list.before",
    "tick.provider_list.after",
    "tick.tool_list.before",
    "tick.tool_list.after",
    "tick.tool_exists.before",
    "tick.health.before",
    "tick.health.after",
    "tick.observations.before",
    "tick.observations.after",
    "tick.transition.before",
    "tick.transition.after",
    "tick.orphan_delete.before",
    "tick.orphan_delete.after",
    "tick.tool_orphan_delete.before",
    "tick.tool_orphan_delete.after",
    "tick.forget_creators.before",
    "tick.forget_claim_requests.before",
    "tick.sample.before",
    "tick.record.before",
    "tick.fold.before",
    "tick.flush.after",
    "tick.release.after",
    "tick.create_reserved.before",
    "gate.bounded",
    // Recycling (sprites mode).
    "recycle.start.after",
    "recycle.tool_destroy.before",
    "recycle.tool_destroy.after",
    "recycle.tool_forget.after",
    "recycle.provider_recycle.before",
    "recycle.provider_recycle.after",
    "recycle.finish.before",
    "recycle.finish.after",
    "recycle.destroy_instead.before",
    "recycle.destroy_instead.after",
    // Keep-alive (sprites mode).
    "heartbeat.slot.after",
    "heartbeat.ping.before",
    "heartbeat.ping.after",
    "heartbeat.wake.before",
    "heartbeat.wake.after",
    "heartbeat.give_up.before",
    "heartbeat.give_up.after",
    // Sessions.
    "sessions.attempt.before",
    "sessions.attempt.after",
    "sessions.forget_attempts.before",
    "sessions.forget_attempts.after",
    "sessions.open.before",
    "sessions.open.after",
    "sessions.close.before",
    "sessions.close.after",
];

/// What a failpoint does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Error,
    Delay,
    Kill,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Error, Action::Delay, Action::Kill];

    pub fn name(self) -> &'static str {
        match self {
            Action::Error => "error",
            Action::Delay => "delay",
            Action::Kill => "kill",
        }
    }

    /// fail-rs's configuration for replica A: a fault that happens a few times (once for a kill:
    /// the restarted replica runs without it), then goes away, as real ones do.
    fn config(self, delay: Duration) -> String {
        match self {
            Action::Error => "3*return(error)".into(),
            Action::Delay => format!("2*return(delay:{})", delay.as_millis()),
            Action::Kill => "1*return(kill)".into(),
        }
    }
}

/// The scale of the sweep: the pool's timeouts and the fakes' latencies are production's × this.
pub const SCALE: f64 = 1.0 / 50.0;
const MIN_IDLE: i64 = 4;
const API_KEY: &str = "sweep-key-0123456789abcdef";
/// However slow a settle, the case fails past this (the table records the real settle time).
const SETTLE_LIMIT: Duration = Duration::from_secs(45);

fn setting(profile: &LatencyProfile, name: &str) -> Duration {
    let ms: u64 = profile
        .pool_settings()
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub failpoint: &'static str,
    pub action: Action,
    /// Replica A logged the failpoint firing.
    pub fired: bool,
    pub violations: Vec<String>,
    /// From the end of the driving to a settled pool.
    pub settle: Option<Duration>,
    pub claims: usize,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// How one claim ended, as its client saw it.
#[derive(Debug)]
enum Answer {
    Claimed {
        instance: String,
        took: Duration,
    },
    Refused {
        took: Duration,
    },
    /// No answer (the connection broke on both replicas, or no reply in time).
    Silent(String),
}

struct Replica {
    port: u16,
    child: Child,
    log: PathBuf,
}

/// The two replicas; A carries the failpoint.
struct Replicas {
    bin: PathBuf,
    env: Vec<(String, String)>,
    logs: PathBuf,
    a: Replica,
    b: Replica,
    /// A was restarted after dying (a kill, or a crash that is then a violation).
    restarts: u32,
    unexpected_exits: Vec<String>,
    kill_expected: bool,
}

impl Replicas {
    fn spawn(
        bin: &std::path::Path,
        env: &[(String, String)],
        log: &std::path::Path,
        port: u16,
        failpoints: Option<&str>,
    ) -> Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("replica log");
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(spec) = failpoints {
            command.env("FAILPOINTS", spec);
        }
        // Started from the test's runtime (its thread, its workers), which lives as long as the
        // case: a sweep killed outright takes its replicas with it.
        crate::dies_with_spawning_thread(&mut command);
        command.spawn().expect("spawn replica")
    }

    fn base(&self, which: usize) -> String {
        let port = if which == 0 { self.a.port } else { self.b.port };
        format!("http://127.0.0.1:{port}")
    }

    /// Restarts A if it died; records any other death.
    fn watch(&mut self) {
        if let Ok(Some(status)) = self.a.child.try_wait() {
            if !self.kill_expected || self.restarts > 0 {
                self.unexpected_exits
                    .push(format!("replica A exited by itself: {status}"));
            }
            self.restarts += 1;
            self.a.child = Self::spawn(&self.bin, &self.env, &self.a.log, self.a.port, None);
        }
        if let Ok(Some(status)) = self.b.child.try_wait() {
            self.unexpected_exits
                .push(format!("replica B exited by itself: {status}"));
            self.b.child = Self::spawn(&self.bin, &self.env, &self.b.log, self.b.port, None);
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in [&mut self.a.child, &mut self.b.child] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The settings of a sweep's pool.
struct Times {
    claim_timeout: Duration,
    create_timeout: Duration,
    tick: Duration,
    delay: Duration,
    recycle_timeout: Duration,
    heartbeat_interval: Duration,
}

/// Runs one case. `bin` is an `agentpool` built with the `failpoints` feature.
pub async fn run_case(failpoint: &'static str, action: Action) -> Verdict {
    let profile = LatencyProfile::realistic().scaled(SCALE).seeded(
        failpoint
            .bytes()
            .fold(action as u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)),
    );
    let times = Times {
        claim_timeout: setting(&profile, "CLAIM_TIMEOUT_MS"),
        create_timeout: setting(&profile, "CREATE_TIMEOUT_MS"),
        tick: setting(&profile, "TICK_INTERVAL_MS"),
        // Past every caller's timeout: the claim's deadline, a creation's, the tick's budget.
        delay: setting(&profile, "CLAIM_TIMEOUT_MS") * 2,
        recycle_timeout: Duration::from_millis(120_000).mul_f64(SCALE),
        // Seed 002's 20 s, and a few times faster still: a silent sprite is given up by the
        // beats before the tick's health checks condemn it.
        heartbeat_interval: Duration::from_millis((20_000.0 / 2.0 * SCALE).round() as u64),
    };
    let case_started = Instant::now();
    let phase = |what: &str| {
        if std::env::var_os("SWEEP_VERBOSE").is_some() {
            eprintln!(
                "  {failpoint} × {}: {what} at {:.1?}",
                action.name(),
                case_started.elapsed()
            );
        }
    };
    let outside = Outside::start(100).await;
    outside.set_latency(&profile);
    // Recycling and keep-alive happen only on a provider that restores and whose instances
    // sleep: their failpoints' cases run on the Sprites fake (the tools' fakes as for the others).
    let sprites = if on_sprites(failpoint) {
        Some(
            SpritesFake::start(SpritesConfig {
                stub_env: profile.stub_env(),
                ..SpritesConfig::default()
            })
            .await,
        )
    } else {
        None
    };
    let db = TestDb::new().await;
    let prefix = format!("sw{}-", rand::thread_rng().gen_range(100_000u32..999_999));
    let mut vars = outside.settings();
    set_vars(&mut vars, profile.pool_settings());
    set_vars(
        &mut vars,
        [
            ("DATABASE_URL", db.url.clone()),
            ("POOL_API_KEY", API_KEY.into()),
            ("POOL_NAME_PREFIX", prefix.clone()),
            ("POOL_MIN_IDLE", MIN_IDLE.to_string()),
            // Room for the focus phase's claims and creations (`focus`) besides the driving's.
            ("POOL_MAX_TOTAL", "20".into()),
            ("RAILWAY_VOLUME_MOUNT", "/data".into()),
            // Idle instances hold the base tools; the template's are made by its claim.
            ("TOOLS_AT_CREATION", "base".into()),
            // `SWEEP_RUST_LOG` (e.g. `warn,agentpool_core::pipelines::tick=debug`) to follow a case.
            (
                "RUST_LOG",
                std::env::var("SWEEP_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let scaled = |ms: f64| ((ms * SCALE).round().max(1.0) as u64).to_string();
    if let Some(fake) = &sprites {
        set_vars(
            &mut vars,
            [
                ("POOL_PROVIDER", "sprites".to_string()),
                ("SPRITES_API_URL", fake.url()),
                ("SPRITE_TOKEN", fake.token().to_string()),
                ("SPRITES_SETUP_COMMANDS", r#"["echo build"]"#.to_string()),
                ("POOL_ENVIRONMENT", "dev".to_string()),
                (
                    "HEARTBEAT_INTERVAL_MS",
                    times.heartbeat_interval.as_millis().to_string(),
                ),
                ("RECYCLE_TIMEOUT_MS", scaled(120_000.0)),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
    }
    let logs = tempfile::Builder::new()
        .prefix("agentpool-sweep-")
        .tempdir()
        .expect("log dir");
    let bin = agentpool_bin().to_path_buf();
    let spec = format!("{failpoint}={}", action.config(times.delay));
    let (a_log, b_log) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let (a_port, b_port) = (free_port(), free_port());
    let replicas = Replicas {
        a: Replica {
            port: a_port,
            child: Replicas::spawn(&bin, &vars, &a_log, a_port, Some(&spec)),
            log: a_log.clone(),
        },
        b: Replica {
            port: b_port,
            child: Replicas::spawn(&bin, &vars, &b_log, b_port, None),
            log: b_log,
        },
        bin,
        env: vars,
        logs: logs.path().to_path_buf(),
        restarts: 0,
        unexpected_exits: Vec::new(),
        kill_expected: action == Action::Kill,
    };
    let _ = &replicas.logs;
    let replicas = Arc::new(Mutex::new(replicas));
    let mut violations = Vec::new();

    phase("spawned");
    // The watchers: A restarted when it dies, transient rows checked against their timeouts.
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (replicas, stop) = (replicas.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                replicas.lock().unwrap_or_else(|e| e.into_inner()).watch();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let overdue = {
        let (db, stop) = (db.pool.clone(), stop.clone());
        let limits = (
            times.claim_timeout + times.tick * 2,
            times.create_timeout + times.tick * 2,
            // A due destroy is done by one of the next two ticks, each of which may run its budget
            // and twice one call's timeout (its steps' cut, then the cut of what hangs under its
            // lock: `tick::run_until`).
            (times.tick
                + setting(&profile, "TICK_BUDGET_MS")
                + setting(&profile, "OUTBOUND_TIMEOUT_MS") * 2)
                * 2,
            // A created row waits for its runtime to be ready, up to `POOL_STUCK_TIMEOUT_MS`.
            setting(&profile, "POOL_STUCK_TIMEOUT_MS") + times.tick * 2,
            // A recycle ends within `RECYCLE_TIMEOUT_MS`, or the tick destroys it.
            times.recycle_timeout + times.tick * 2,
        );
        tokio::spawn(async move {
            // Each row once, at the oldest it was seen.
            let mut seen: BTreeMap<String, Overdue> = BTreeMap::new();
            while !stop.is_cancelled() {
                for row in transient_overdue(&db, limits).await {
                    match seen.get(&row.id) {
                        Some(known) if known.age > row.age => {}
                        _ => {
                            seen.insert(row.id.clone(), row);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen.into_values()
                .map(|row| {
                    let creator = match row.creator_silent {
                        Some(s) if row.status == "starting" => {
                            format!("; its creator silent for {s:.1} s")
                        }
                        None if row.status == "starting" => "; its creator forgotten".into(),
                        _ => String::new(),
                    };
                    format!(
                        "{} {} for {:.1} s, past its timeout plus two ticks (in that state {:.1} \
                         s{creator})",
                        row.id, row.status, row.age, row.in_state
                    )
                })
                .collect::<Vec<_>>()
        })
    };

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let bases = {
        let r = replicas.lock().unwrap_or_else(|e| e.into_inner());
        [r.base(0), r.base(1)]
    };
    // Both replicas up (A may already be dead and restarting: a kill during its first tick).
    for base in &bases {
        let up = wait_for(Duration::from_secs(30), || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        if !up {
            violations.push(format!("{base} never answered /healthz"));
        }
    }
    phase("healthy");
    // The pool fills through the replicas' ticks.
    let filled = wait_for(Duration::from_secs(60), || async {
        count(&db.pool, "status = 'idle'").await >= MIN_IDLE
    })
    .await;
    if !filled {
        violations.push("the pool never filled before the claims".into());
    }

    phase("filled");
    // A template whose two pool tools a claim makes on the instance it takes (issue 17), written
    // through B, which has no failpoint.
    let template = http
        .post(format!("{}/api/templates", bases[1]))
        .bearer_auth(API_KEY)
        .json(&json!({
            "slug": "sweep", "agentName": "Sweep", "instructions": "Sweep.",
            "tools": [{"id": "email", "provisioning": "pool"}, {"id": "sms", "provisioning": "pool"}],
            "visibility": "private",
        }))
        .send()
        .await;
    let template_id = match template {
        Ok(reply) => reply
            .json::<Value>()
            .await
            .ok()
            .and_then(|t| t["id"].as_str().map(str::to_string)),
        Err(_) => None,
    };
    if template_id.is_none() {
        violations.push("the sweep's template could not be made".into());
    }
    // The driving: everything at once, on both replicas, most claims first on A (which has the
    // failpoint); the third claim is by the template.
    let mut answers = Vec::new();
    let mut kept = BTreeSet::new();
    let claims = (0..4).map(|i| {
        let (http, bases) = (http.clone(), bases.clone());
        let limit = times.claim_timeout + times.tick * 2;
        let body = match (&template_id, i) {
            (Some(id), 2) => json!({"templateId": id}),
            _ => json!({"agentName": format!("sweep-key-{i}"), "instructions": "Sweep."}),
        };
        async move {
            claim(
                &http,
                &bases,
                usize::from(i == 3),
                &format!("key-{i}"),
                &body,
                limit,
            )
            .await
        }
    });
    let side = async {
        let mut notes = Vec::new();
        notes.extend(dashboard_round(&http, &bases[0]).await);
        notes.extend(dashboard_round(&http, &bases[1]).await);
        for (which, path, body) in [
            (0, "/api/pool/replenish", json!({"count": 1})),
            (1, "/api/pool/tick", json!({})),
            (0, "/api/pool/tick", json!({})),
        ] {
            let request = |base: &str| {
                http.post(format!("{base}{path}"))
                    .json(&body)
                    .bearer_auth(API_KEY)
            };
            if let Some(note) = answered_somewhere(&bases, which, request).await {
                notes.push(format!("POST {path}: {note}"));
            }
        }
        notes
    };
    let (claimed, side_notes) =
        futures::future::join(futures::future::join_all(claims), side).await;
    answers.extend(claimed);
    violations.extend(side_notes);
    phase("first claims");
    // An operator deletes one claimed instance; the others stay claimed, and healthy.
    let mut handed = Vec::new();
    for answer in &answers {
        if let Answer::Claimed { instance, .. } = answer {
            handed.push(instance.clone());
        }
    }
    if let Some(fake) = &sprites {
        let (notes, released) =
            recycle_round(&http, &bases, &db.pool, fake, &answers, &times).await;
        violations.extend(notes);
        kept.extend(handed.iter().filter(|i| !released.contains(i)).cloned());
    } else if let Some((deleted, rest)) = handed.split_first() {
        kept.extend(rest.iter().cloned());
        if let Some(note) = delete_on_a(&http, &bases, deleted).await {
            violations.push(format!("DELETE: {note}"));
        }
    }
    // A second round of claims while the pool refills and the teardown runs.
    let claims = (4..6).map(|i| {
        let (http, bases) = (http.clone(), bases.clone());
        let limit = times.claim_timeout + times.tick * 2;
        let body = json!({"agentName": format!("sweep-key-{i}"), "instructions": "Sweep."});
        async move { claim(&http, &bases, 0, &format!("key-{i}"), &body, limit).await }
    });
    let second = futures::future::join_all(claims).await;
    for answer in &second {
        if let Answer::Claimed { instance, .. } = answer {
            kept.insert(instance.clone());
        }
    }
    answers.extend(second);
    phase("second claims");
    // The situations the driving above seldom brings to A (see `focus`), its provider's.
    let focused = focus::drive(&focus::Focus {
        http: &http,
        bases: &bases,
        db: &db.pool,
        outside: &outside,
        prefix: &prefix,
        a_log: &a_log,
        failpoint,
        template_id: template_id.as_deref(),
        claim_limit: times.claim_timeout + times.tick * 2,
        sprites: sprites.as_ref(),
        heartbeat_interval: times.heartbeat_interval,
    })
    .await;
    answers.extend(focused.answers);
    kept.extend(focused.kept);
    violations.extend(focused.violations);

    if let Some(fake) = &sprites {
        silence_one(&http, &bases[0], &db.pool, fake, &prefix).await;
    }
    phase("driven");
    // The settling.
    let driven = Instant::now();
    let settled = wait_for(SETTLE_LIMIT, || async {
        settled(&db.pool, &outside, sprites.as_ref(), &prefix)
            .await
            .is_ok()
    })
    .await;
    let settle = settled.then(|| driven.elapsed());
    if !settled {
        let why = settled_why(&db.pool, &outside, sprites.as_ref(), &prefix).await;
        violations.push(format!("did not settle within {SETTLE_LIMIT:?}: {why}"));
    }
    stop.cancel();
    let _ = watcher.await;
    for found in overdue.await.unwrap_or_default() {
        violations.push(found);
    }

    // The invariants.
    violations.extend(double_claims(&db.pool).await);
    let limit = times.claim_timeout + times.tick * 2;
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Answer::Claimed { took, .. } | Answer::Refused { took, .. } if *took > limit => {
                violations.push(format!("claim {i} answered after {took:?}, past {limit:?}"))
            }
            Answer::Silent(why) => violations.push(format!("claim {i} got no answer: {why}")),
            _ => {}
        }
    }
    let claimed_ids: Vec<&str> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Claimed { instance, .. } => Some(instance.as_str()),
            _ => None,
        })
        .collect();
    // A recycled instance serves one claim per life (`double_claims` checks the lives).
    let recycled = recycled(&db.pool).await;
    let once: Vec<&str> = claimed_ids
        .iter()
        .copied()
        .filter(|id| !recycled.contains(*id))
        .collect();
    let distinct: BTreeSet<&str> = once.iter().copied().collect();
    if distinct.len() != once.len() {
        violations.push(format!("two claims got one instance: {claimed_ids:?}"));
    }
    for id in &kept {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM instances WHERE id = $1")
                .bind(id)
                .fetch_optional(&db.pool)
                .await
                .unwrap_or(None);
        if status.as_deref() != Some("claimed") {
            violations.push(format!(
                "claimed instance {id} (healthy, never released) is now {status:?}"
            ));
        }
    }
    let conversations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT conversation_id FROM instances
          WHERE status IN ('claimed', 'claiming') AND conversation_id IS NOT NULL
          GROUP BY conversation_id HAVING count(*) > 1) twice",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or(0);
    if conversations > 0 {
        violations.push(format!(
            "{conversations} conversations served by two agents"
        ));
    }
    let fired = focus::reached(&a_log, failpoint);
    {
        let r = replicas.lock().unwrap_or_else(|e| e.into_inner());
        violations.extend(r.unexpected_exits.iter().cloned());
        // Kept for whoever reads the failure, or asked for the replicas' logs.
        let asked = std::env::var_os("SWEEP_RUST_LOG").is_some();
        if !violations.is_empty() || asked {
            let kept_logs = std::env::temp_dir().join(format!(
                "agentpool-sweep-{}-{}",
                failpoint,
                action.name()
            ));
            let _ = std::fs::create_dir_all(&kept_logs);
            let _ = std::fs::copy(&r.a.log, kept_logs.join("a.log"));
            let _ = std::fs::copy(&r.b.log, kept_logs.join("b.log"));
            if !violations.is_empty() {
                violations.push(format!("logs in {}", kept_logs.display()));
            }
        }
    }
    Verdict {
        failpoint,
        action,
        fired,
        violations,
        settle,
        claims: answers.len(),
    }
}

/// Whether a failpoint's case runs on the Sprites fake: recycling and keep-alive need a provider
/// that restores and whose instances sleep.
fn on_sprites(failpoint: &str) -> bool {
    failpoint.starts_with("recycle.") || failpoint.starts_with("heartbeat.")
}

/// The operator's part in Sprites mode: the template's claim is released and recycled (its pool
/// tools destroyed, the checkpoint restored, idle again), then another claim is released with
/// every restore failing, so that recycle sends it to `destroying` instead. Returns notes of
/// requests not answered, and the instances released.
async fn recycle_round(
    http: &reqwest::Client,
    bases: &[String; 2],
    db: &PgPool,
    fake: &SpritesFake,
    answers: &[Answer],
    times: &Times,
) -> (Vec<String>, Vec<String>) {
    let mut notes = Vec::new();
    let mut released = Vec::new();
    let claimed: Vec<&String> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Claimed { instance, .. } => Some(instance),
            _ => None,
        })
        .collect();
    // The template's claim is the third; failing that, any.
    let template_claim = match answers.get(2) {
        Some(Answer::Claimed { instance, .. }) => Some(instance),
        _ => claimed.first().copied(),
    };
    if let Some(id) = template_claim {
        released.push(id.clone());
        if let Some(note) = delete_on_a(http, bases, id).await {
            notes.push(format!("DELETE (recycle): {note}"));
        }
        // Its recycle ends (idle, or destroyed) before the next one starts.
        wait_for(times.recycle_timeout + times.tick * 4, || async {
            count(db, &format!("id = '{id}' AND status = 'recycling'")).await == 0
        })
        .await;
    }
    if let Some(id) = claimed.iter().find(|i| !released.contains(i)) {
        released.push((*id).clone());
        fake.inject(
            Fault::ServerError,
            Scope::Next {
                op: Some("POST /v1/sprites/{name}/checkpoints/{id}/restore".into()),
                count: 20,
            },
        );
        if let Some(note) = delete_on_a(http, bases, id).await {
            notes.push(format!("DELETE (failed recycle): {note}"));
        }
        wait_for(times.recycle_timeout + times.tick * 4, || async {
            count(db, &format!("id = '{id}' AND status = 'recycling'")).await == 0
        })
        .await;
        fake.clear_faults();
    }
    (notes, released)
}

/// Keep-alive's escalation in Sprites mode: one idle sprite's runtime stops and execs fail for a
/// while, so the beats fail, wake it in vain and give it up (the pool then refills). Waits until
/// it has left `idle`, or a bounded while, asking replica A for rounds meanwhile.
async fn silence_one(
    http: &reqwest::Client,
    a: &str,
    db: &PgPool,
    fake: &SpritesFake,
    prefix: &str,
) {
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM instances WHERE status = 'idle' ORDER BY status_since, id LIMIT 1",
    )
    .fetch_optional(db)
    .await
    .unwrap_or(None);
    let Some(id) = id else { return };
    fake.inject(
        Fault::ServerError,
        Scope::Next {
            op: Some("GET /v1/sprites/{name}/exec".into()),
            count: 30,
        },
    );
    fake.kill_service(&format!("dev-{prefix}{id}"));
    // Rounds asked of A too (`POST /api/pool/keepalive`), as a scheduler would: the replicas'
    // own timers race for each interval's slot, and one whose timer runs a little behind the
    // other's would never win it, nor reach the failpoint.
    wait_for(Duration::from_secs(15), || async {
        let _ = http
            .post(format!("{a}/api/pool/keepalive"))
            .bearer_auth(API_KEY)
            .timeout(Duration::from_millis(500))
            .send()
            .await;
        count(db, &format!("id = '{id}' AND status = 'idle'")).await == 0
    })
    .await;
    fake.clear_faults();
}

/// Awaits a condition; false past `limit`.
async fn wait_for<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(db: &PgPool, condition: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM instances WHERE {condition}"))
        .fetch_one(db)
        .await
        .unwrap_or(-1)
}

/// A claim with its `Idempotency-Key`, on replica `first`; a broken connection is retried with
/// the same key on the other replica, a `claim_in_progress` on either, until `limit` from the
/// first try.
async fn claim(
    http: &reqwest::Client,
    bases: &[String; 2],
    first: usize,
    key: &str,
    body: &Value,
    limit: Duration,
) -> Answer {
    let started = Instant::now();
    let mut which = first;
    let mut last = String::new();
    while started.elapsed() < limit {
        let left = limit.saturating_sub(started.elapsed());
        let sent = http
            .post(format!("{}/api/pool/claim", bases[which]))
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", key)
            .timeout(left)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Answer::Silent(format!("no reply within {limit:?}"))
            }
            Err(e) => {
                last = format!("{}: {e}", bases[which]);
                which = 1 - which;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(e) => {
                // A reply cut mid-body: the replica died while answering.
                last = format!("{status}, body cut: {e}");
                which = 1 - which;
                continue;
            }
        };
        if status == 200 {
            return match body["instanceId"].as_str() {
                Some(instance) => Answer::Claimed {
                    instance: instance.to_string(),
                    took: started.elapsed(),
                },
                None => Answer::Silent(format!("200 without an instanceId: {body}")),
            };
        }
        let code = body["error"]["code"]
            .as_str()
            .or_else(|| body["code"].as_str())
            .map(str::to_string);
        match code {
            Some(code) if code == "claim_in_progress" => {
                // The first claim with this key may still finish, or be taken over after its
                // deadline: the client asks again, as the reply's Retry-After says.
                last = "claim_in_progress".into();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(code) => {
                let _ = code;
                return Answer::Refused {
                    took: started.elapsed(),
                };
            }
            None => return Answer::Silent(format!("{status} without an error code: {body}")),
        }
    }
    Answer::Silent(format!("no final answer within {limit:?}: {last}"))
}

/// As [`answered`], on replica `first`, then (the connection broken: it died) on the other one,
/// as an operator would.
async fn answered_somewhere(
    bases: &[String; 2],
    first: usize,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Option<String> {
    let note = answered(request(&bases[first])).await?;
    if !note.starts_with("no answer") {
        return Some(note);
    }
    answered(request(&bases[1 - first]))
        .await
        .map(|again| format!("{note}; then {again}"))
}

/// `DELETE /api/pool/instances/:id` on A (then B, if A died): `None` if answered, else why not.
async fn delete_on_a(http: &reqwest::Client, bases: &[String; 2], id: &str) -> Option<String> {
    let request = |base: &str| {
        http.delete(format!("{base}/api/pool/instances/{id}"))
            .bearer_auth(API_KEY)
    };
    answered_somewhere(bases, 0, request).await
}

/// `None` if a request got an answer (a success, or an error that says what it is); else why not.
async fn answered(request: reqwest::RequestBuilder) -> Option<String> {
    match request.timeout(Duration::from_secs(30)).send().await {
        Err(e) => Some(format!("no answer: {e}")),
        Ok(response) => {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status.is_success() || status.is_redirection() {
                return None;
            }
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let coded = value["error"]["code"].is_string() || value["code"].is_string();
            // The dashboard answers a person with a page; a page is an answer too.
            let page =
                text.contains("<html") || text.contains("<!doctype") || text.contains("<!DOCTYPE");
            (!coded && !page).then(|| format!("{status} that says nothing: {text}"))
        }
    }
}

/// A login with a wrong key, one with the right key, the dashboard, a logout.
async fn dashboard_round(http: &reqwest::Client, base: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let wrong = http
        .post(format!("{base}/admin/login"))
        .form(&[("key", "wrong-key-0123456789"), ("next", "/admin")]);
    if let Some(note) = answered(wrong).await {
        // A replica dying under it is the kill's doing; the watcher tells a death of its own.
        if !note.starts_with("no answer") {
            notes.push(format!("wrong login: {note}"));
        }
    }
    let right = http
        .post(format!("{base}/admin/login"))
        .form(&[("key", API_KEY), ("next", "/admin")])
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let cookie = match right {
        Ok(response) if response.status().is_redirection() => response
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string),
        Ok(response) => {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !text.contains("<") && !text.contains("code") {
                notes.push(format!("login: {status} that says nothing"));
            }
            None
        }
        // A replica dying under the login: the operator logs in again elsewhere.
        Err(_) => None,
    };
    let Some(cookie) = cookie else {
        return notes;
    };
    let page = http
        .get(format!("{base}/admin"))
        .header("cookie", &cookie)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let Ok(page) = page else { return notes };
    let html = page.text().await.unwrap_or_default();
    let Some(csrf) = html
        .split_once("name=\"csrf-token\" content=\"")
        .and_then(|(_, rest)| rest.split('"').next())
    else {
        return notes;
    };
    let out = http
        .post(format!("{base}/admin/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf)]);
    if let Some(note) = answered(out).await {
        if !note.starts_with("no answer") {
            notes.push(format!("logout: {note}"));
        }
    }
    notes
}

/// A row past its transient state's timeout plus two ticks. `age`: since its last sign of life
/// (its creator's, for a `starting` row without a resource).
#[derive(sqlx::FromRow)]
struct Overdue {
    id: String,
    status: String,
    age: f64,
    in_state: f64,
    creator_silent: Option<f64>,
}

/// Rows past their transient state's timeout plus two ticks, as the database's clock says.
async fn transient_overdue(
    db: &PgPool,
    limits: (Duration, Duration, Duration, Duration, Duration),
) -> Vec<Overdue> {
    let ms = |d: Duration| d.as_millis() as i64;
    sqlx::query_as(
        "SELECT i.id, i.status,
                extract(epoch FROM now() - CASE
                   WHEN i.status = 'starting' AND f.instance_id IS NULL
                        THEN greatest(i.status_since, c.alive_at)
                   WHEN i.status = 'destroying' THEN greatest(i.status_since, i.next_attempt_at)
                   ELSE i.status_since END)::float8 AS age,
                extract(epoch FROM now() - i.status_since)::float8 AS in_state,
                extract(epoch FROM now() - c.alive_at)::float8 AS creator_silent
           FROM instances i LEFT JOIN creators c ON c.id = i.creator_id
                LEFT JOIN instance_infra f ON f.instance_id = i.id
          WHERE (i.status = 'claiming'
                 AND i.status_since < now() - $1 * interval '1 millisecond')
             OR (i.status = 'starting' AND f.instance_id IS NULL
                 AND greatest(i.status_since, c.alive_at) < now() - $2 * interval '1 millisecond')
             OR (i.status = 'starting' AND f.instance_id IS NOT NULL
                 AND i.status_since < now() - $4 * interval '1 millisecond')
             OR (i.status = 'destroying'
                 AND greatest(i.status_since, i.next_attempt_at) < now() - $3 * interval '1 millisecond')
             OR (i.status = 'recycling'
                 AND i.status_since < now() - $5 * interval '1 millisecond')",
    )
    .bind(ms(limits.0))
    .bind(ms(limits.1))
    .bind(ms(limits.2))
    .bind(ms(limits.3))
    .bind(ms(limits.4))
    .fetch_all(db)
    .await
    .unwrap_or_default()
}

/// No transient row, the pool at its minimum, the fakes and the rows agreeing.
async fn settled(
    db: &PgPool,
    outside: &Outside,
    sprites: Option<&SpritesFake>,
    prefix: &str,
) -> Result<(), String> {
    let transient = count(
        db,
        "status IN ('claiming', 'starting', 'destroying', 'recycling')",
    )
    .await;
    if transient != 0 {
        return Err(format!("{transient} rows in a transient state"));
    }
    let idle = count(db, "status = 'idle'").await;
    if idle < MIN_IDLE {
        return Err(format!("{idle} idle"));
    }
    match sprites {
        Some(fake) => {
            let ours = format!("dev-{prefix}");
            let alive: BTreeSet<String> = fake
                .sprites()
                .into_iter()
                .map(|s| s.name)
                .filter(|n| n.starts_with(&ours))
                .collect();
            outside.agrees_with_compute(db, alive, prefix).await?;
        }
        None => outside.agrees_with(db, prefix).await?,
    }
    // An abandoned resource whose tool is configured is the tick's to delete.
    let abandoned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM abandoned_resources WHERE tool_id IN ('openrouter', 'email', 'sms')",
    )
    .fetch_one(db)
    .await
    .unwrap_or(-1);
    if abandoned != 0 {
        return Err(format!(
            "{abandoned} abandoned resources of configured tools"
        ));
    }
    let services: BTreeSet<String> = outside
        .railway
        .services()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let stray: Vec<String> = outside
        .railway
        .volumes()
        .into_iter()
        .filter(|v| !services.contains(&v.service_id))
        .map(|v| v.id)
        .collect();
    if !stray.is_empty() {
        return Err(format!("volumes of no service: {stray:?}"));
    }
    Ok(())
}

async fn settled_why(
    db: &PgPool,
    outside: &Outside,
    sprites: Option<&SpritesFake>,
    prefix: &str,
) -> String {
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM instances GROUP BY status")
            .fetch_all(db)
            .await
            .unwrap_or_default();
    let statuses: BTreeMap<String, i64> = statuses.into_iter().collect();
    let errors: Vec<Option<String>> =
        sqlx::query_scalar("SELECT last_error FROM instances WHERE status = 'destroying' LIMIT 3")
            .fetch_all(db)
            .await
            .unwrap_or_default();
    format!(
        "{:?}; rows {statuses:?}; destroy errors {errors:?}",
        settled(db, outside, sprites, prefix).await.err()
    )
}

/// Instances whose events show two claims handing them out: a second `claimed` with no
/// `recycling → idle` between them (a recycled instance serves its next user rightly).
async fn double_claims(db: &PgPool) -> Vec<String> {
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "WITH c AS (
           SELECT instance_id, id, lag(id) OVER (PARTITION BY instance_id ORDER BY id) AS before
             FROM instance_events WHERE to_status = 'claimed'
         )
         SELECT instance_id, count(*) FROM c
          WHERE before IS NOT NULL
            AND NOT EXISTS (
              SELECT 1 FROM instance_events r
               WHERE r.instance_id = c.instance_id AND r.from_status = 'recycling'
                 AND r.to_status = 'idle' AND r.id > c.before AND r.id < c.id)
          GROUP BY instance_id",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default();
    twice
        .into_iter()
        .map(|(id, n)| format!("instance {id} claimed again {n} times without a recycle between"))
        .collect()
}

/// The instances recycled back to idle at least once: each may serve more than one claim.
async fn recycled(db: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT DISTINCT instance_id FROM instance_events
          WHERE from_status = 'recycling' AND to_status = 'idle'",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default()
    .into_iter()
    .collect()
}

/// Runs `cases`, `jobs` at a time, each on its own fakes, database and replicas.
pub async fn run_all(cases: Vec<(&'static str, Action)>, jobs: usize) -> Vec<Verdict> {
    use futures::StreamExt;
    let total = cases.len();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    futures::stream::iter(cases)
        .map(|(failpoint, action)| {
            let done = done.clone();
            async move {
                let started = Instant::now();
                let verdict = tokio::spawn(run_case(failpoint, action))
                    .await
                    .unwrap_or_else(|e| Verdict {
                        failpoint,
                        action,
                        fired: false,
                        violations: vec![format!("the case panicked: {e}")],
                        settle: None,
                        claims: 0,
                    });
                let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                eprintln!(
                    "[{n}/{total}] {failpoint} × {}: {} (fired: {}, settle {:?}, case {:.1?}){}",
                    action.name(),
                    if verdict.passed() { "passed" } else { "FAILED" },
                    verdict.fired,
                    verdict.settle,
                    started.elapsed(),
                    if verdict.passed() {
                        String::new()
                    } else {
                        format!("\n    {}", verdict.violations.join("\n    "))
                    }
                );
                verdict
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await
}

/// The cases whose failpoint replica A never reached, as `failpoint × action`.
pub fn unreached(verdicts: &[Verdict]) -> Vec<String> {
    let mut unreached: Vec<(&str, Action)> = verdicts
        .iter()
        .filter(|v| !v.fired)
        .map(|v| (v.failpoint, v.action))
        .collect();
    unreached.sort();
    unreached
        .into_iter()
        .map(|(f, a)| format!("`{f}` × {}", a.name()))
        .collect()
}

/// The report: failpoints × actions, passed or failed, whether the failpoint fired, settle time.
pub fn report(verdicts: &[Verdict], elapsed: Duration) -> String {
    let mut by: HashMap<(&str, Action), &Verdict> = HashMap::new();
    for v in verdicts {
        by.insert((v.failpoint, v.action), v);
    }
    let passed = verdicts.iter().filter(|v| v.passed()).count();
    let fired = verdicts.iter().filter(|v| v.fired).count();
    let failpoints: BTreeSet<&str> = verdicts.iter().map(|v| v.failpoint).collect();
    let mut out = String::new();
    out.push_str("# The failpoint sweep\n\n");
    out.push_str(
        "Written by `cargo test -p agentpool-tests --test failpoints -- --ignored --nocapture` \
         (see `tests/src/sweep.rs`); do not edit by hand.\n\n",
    );
    out.push_str(&format!(
        "Each case: replica A of two `agentpool serve` replicas runs with one failpoint set to \
         one action (`error`: 3 times the site's natural error; `delay`: twice an asynchronous \
         wait of 2 × `CLAIM_TIMEOUT_MS`; `kill`: SIGKILL on that line, A restarted without the \
         failpoint), on real Postgres with the Railway, OpenRouter, AgentMail and Telnyx fakes at \
         production latency × {SCALE} (the pool's timeouts scaled alike). Six claims (with \
         `Idempotency-Key`s, retried on the other replica when a connection breaks; one by a \
         template whose two pool tools the claim makes), dashboard \
         logins and logouts, an operator's delete, a replenish and kicked ticks; then, on A, a \
         template claim whose inbox is refused, a claim whose next instance's runtime died, a \
         claim that finds every idle instance taken, a slow creation and one whose service is \
         refused, a full tick that finds an orphan service and key, a shifted key listing, a \
         crashed idle runtime, an abandoned inbox whose tool is back and an operator's delete \
         of an instance holding a resource of a tool no longer configured, and an operator's \
         delete of an idle instance (each met again, up to 4 times, in the cases of the \
         failpoints it is there for, until A reaches them); then the pool \
         settles and the invariants are checked: no instance handed to two claims (a \
         recycled one once per life), no \
         conversation served by two agents, no resource of a claimed healthy agent destroyed, \
         every service, volume, key, inbox and number owned by a row or deleted, no row in a \
         transient state past its timeout plus two ticks, every claim answered (a success or a \
         JSON error) within the claim deadline plus two ticks. The cases of `recycle.*` and \
         `heartbeat.*` run on the Sprites fake instead of Railway's, with a situation of their \
         own on A instead of those: the template's claim is recycled (its pool tools \
         destroyed), a second claim's recycle fails on its restore (destroyed instead); then, \
         the replicas' keep-alive timers held off, an idle sprite's machine is lost and A's \
         rounds fail its pings, wake it in vain and give it up (met again, up to 4 times, in \
         the cases of `heartbeat.*`, until A reaches them); and one idle sprite falls silent, \
         execs failing, so the racing replicas' beats wake it in vain and give it up; no row \
         may stay `recycling` past `RECYCLE_TIMEOUT_MS` plus two ticks.\n\n"
    ));
    out.push_str(&format!(
        "**{} failpoints, {} cases, {passed} passed, {} failed; {fired} cases reached their \
         failpoint.** Whole sweep: {:.0} s.\n\n",
        failpoints.len(),
        verdicts.len(),
        verdicts.len() - passed,
        elapsed.as_secs_f64()
    ));
    let unreached = unreached(verdicts);
    if unreached.is_empty() {
        out.push_str("Every case reached its failpoint on replica A.\n\n");
    } else {
        out.push_str(&format!(
            "**Not reached on replica A, so these cases tested nothing: {}.**\n\n",
            unreached.join(", ")
        ));
    }
    out.push_str("A cell: `passed`/`FAILED`, then the settle time (from the end of the driving to a settled pool); `(not reached)` when the scenario never came to that line on replica A.\n\n");
    out.push_str("| failpoint | error | delay | kill |\n|---|---|---|---|\n");
    for failpoint in FAILPOINTS {
        if !failpoints.contains(failpoint) {
            continue;
        }
        let cells: Vec<String> = Action::ALL
            .iter()
            .map(|action| match by.get(&(*failpoint, *action)) {
                None => "—".into(),
                Some(v) => format!(
                    "{} {}{}",
                    if v.passed() { "passed" } else { "**FAILED**" },
                    v.settle
                        .map(|s| format!("{:.1} s", s.as_secs_f64()))
                        .unwrap_or_else(|| "unsettled".into()),
                    if v.fired { "" } else { " (not reached)" }
                ),
            })
            .collect();
        out.push_str(&format!("| `{failpoint}` | {} |\n", cells.join(" | ")));
    }
    let failed: Vec<&Verdict> = verdicts.iter().filter(|v| !v.passed()).collect();
    if !failed.is_empty() {
        out.push_str("\n## Failures\n\n");
        for v in failed {
            out.push_str(&format!(
                "- `{}` × {}: {}\n",
                v.failpoint,
                v.action.name(),
                v.violations.join("; ")
            ));
        }
    }
    out
}
