//! A tick for 100,000 agents (`--fleet-tick`, also part of a full run): a fleet of 100,000 rows
//! whose runtimes all answer health checks after 100 ms (one shared stub answering for all, not
//! 100,000 processes), ticked in-process with production settings. Written to
//! `benchmarks-fleet.md` and `.json` beside the main report.
//!
//! - *every runtime every tick* (`HEALTH_INTERVAL_MS=0`): how the tick asked before
//!   `HEALTH_INTERVAL_MS` existed: all of them, least recently asked first, until the budget ends;
//! - *pulled*: the default interval, the fleet last heard from evenly over the last interval (a
//!   steady state): only the due runtimes are asked;
//! - *pushed*: a load generator sends the fleet's heartbeats (100,000 per 30 s) to one
//!   `agentpool serve` replica for two windows of 30 s (the first fills its token memory); the
//!   Postgres work they cause is counted, then a tick runs.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;

use agentpool_core::tick::{self, Mode};

use crate::fleet::{Replica, SharedStub};
use crate::report::Machine;
use crate::stats::ms;
use crate::tick::{fill, pool_with, COUNTING, QUERIES};

pub const FLEET: usize = 100_000;
const HEALTH_DELAY_MS: u64 = 100;
/// 100,000 beats per 30 s.
const BEATS_PER_SECOND: f64 = FLEET as f64 / 30.0;
const BEAT_WINDOW: Duration = Duration::from_secs(30);
const BEAT_WORKERS: usize = 128;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetTick {
    pub machine: Machine,
    pub instances: usize,
    pub health_delay_ms: u64,
    pub every_tick: TickFigures,
    pub pulled: TickFigures,
    pub pushed: Vec<BeatWindow>,
    pub after_pushes: TickFigures,
    pub total_seconds: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickFigures {
    pub duration_ms: f64,
    pub health_checked: usize,
    /// Runtimes due at the start of the tick.
    pub due: i64,
    /// Statements the tick ran (sqlx's count, in-process).
    pub queries: usize,
    /// Transactions Postgres committed meanwhile (`pg_stat_database.xact_commit`).
    pub transactions: i64,
    pub cut_short: Option<String>,
    /// After the tick: the oldest last-heard-from (check or beat) of any running runtime heard
    /// from, and how many were never heard from.
    pub oldest_answer_s: f64,
    pub never_heard: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BeatWindow {
    pub seconds: f64,
    pub beats_sent: usize,
    pub beats_accepted: usize,
    pub beats_per_second: f64,
    /// Rows of `instances` updated per second (`pg_stat_user_tables.n_tup_upd`).
    pub rows_written_per_second: f64,
    /// Transactions committed per second (the flushes, and the token look-ups of a cold replica).
    pub transactions_per_second: f64,
}

/// Transactions committed in this database, and rows of `instances` updated, so far.
async fn counters(db: &PgPool) -> anyhow::Result<(i64, i64)> {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(db)
        .await?;
    Ok(sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                (SELECT coalesce(n_tup_upd, 0) FROM pg_stat_user_tables WHERE relname = 'instances')",
    )
    .fetch_one(db)
    .await?)
}

/// Waits until Postgres has published the statistics of work just done (every backend flushes
/// them within a second of going idle).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
}

/// The oldest last-heard-from among running runtimes heard from at all, and how many were never.
async fn oldest_answer(db: &PgPool) -> anyhow::Result<(f64, i64)> {
    Ok(sqlx::query_as(
        "SELECT coalesce(extract(epoch FROM now() - min(greatest(last_checked_at, last_ok_at)))::float8, 0),
                count(*) FILTER (WHERE greatest(last_checked_at, last_ok_at) IS NULL)
           FROM instances WHERE status IN ('idle', 'claimed')",
    )
    .fetch_one(db)
    .await?)
}

async fn due(db: &PgPool, interval_s: f64, lookahead_s: f64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM instances
          WHERE status IN ('idle', 'claimed')
            AND (health_failures > 0 OR greatest(last_checked_at, last_ok_at) IS NULL
                 OR greatest(last_checked_at, last_ok_at)
                    <= now() - make_interval(secs => $1 - $2))",
    )
    .bind(interval_s)
    .bind(lookahead_s)
    .fetch_one(db)
    .await?)
}

async fn one_tick(
    db: &PgPool,
    pool: &agentpool_core::Pool,
    due_now: i64,
) -> anyhow::Result<TickFigures> {
    settle().await;
    let (xacts, _) = counters(db).await?;
    QUERIES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let report = tick::run(pool, Mode::Full).await?;
    let elapsed = started.elapsed();
    COUNTING.store(false, Ordering::Relaxed);
    anyhow::ensure!(!report.skipped, "the tick was skipped");
    if !report.errors.is_empty() {
        eprintln!(
            "bench: tick errors: {:?}",
            &report.errors[..report.errors.len().min(3)]
        );
    }
    settle().await;
    let (xacts_after, _) = counters(db).await?;
    let (oldest_answer_s, never_heard) = oldest_answer(db).await?;
    let figures = TickFigures {
        duration_ms: ms(elapsed),
        health_checked: report.health_checked.unwrap_or(0),
        due: due_now,
        queries: QUERIES.load(Ordering::Relaxed),
        // Less the two reads of the counters.
        transactions: xacts_after - xacts - 2,
        cut_short: report.cut_short.map(|c| format!("{c:?}")),
        oldest_answer_s,
        never_heard,
    };
    eprintln!("bench: fleet tick: {figures:?}");
    Ok(figures)
}

/// Sends `rate` beats a second for `window` to `base`, instance after instance.
async fn beat_window(
    db: &PgPool,
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ids: Arc<Vec<String>>,
    offset: usize,
) -> anyhow::Result<BeatWindow> {
    settle().await;
    let (xacts, updated) = counters(db).await?;
    let total = (BEATS_PER_SECOND * BEAT_WINDOW.as_secs_f64()) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..BEAT_WORKERS {
        let (next, accepted, ids) = (next.clone(), accepted.clone(), ids.clone());
        let (http, base, token) = (http.clone(), base.to_string(), token.to_string());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                tokio::time::sleep_until(
                    started + Duration::from_secs_f64(i as f64 / BEATS_PER_SECOND),
                )
                .await;
                let id = &ids[(offset + i) % ids.len()];
                let sent = http
                    .post(format!("{base}/api/instances/{id}/heartbeat"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // The last flush, a second after the last beat, and the statistics of it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    let (xacts_after, updated_after) = counters(db).await?;
    let window = BeatWindow {
        seconds,
        beats_sent: total,
        beats_accepted: accepted.load(Ordering::Relaxed),
        beats_per_second: accepted.load(Ordering::Relaxed) as f64 / seconds,
        rows_written_per_second: (updated_after - updated) as f64 / seconds,
        transactions_per_second: (xacts_after - xacts - 2) as f64 / seconds,
    };
    eprintln!("bench: heartbeats: {window:?}");
    Ok(window)
}

pub async fn measure(db: &PgPool, database_url: &str) -> anyhow::Result<FleetTick> {
    let started = Instant::now();
    let delay = HEALTH_DELAY_MS.to_string();
    let stub = SharedStub::start_with(&[("STUB_HEALTH_DELAY_MS", &delay)]).await?;
    eprintln!("bench: a fleet of {FLEET} rows");
    let names = fill(db, &stub, FLEET).await?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM instances ORDER BY id")
        .fetch_all(db)
        .await?;
    let idle = FLEET - FLEET / 10;

    // Every runtime every tick, as before HEALTH_INTERVAL_MS.
    let every = pool_with(
        database_url,
        idle,
        FLEET,
        &stub,
        names.clone(),
        &[("HEALTH_INTERVAL_MS", "0")],
    )
    .await?;
    let every_tick = one_tick(db, &every, FLEET as i64).await?;
    every.db.close().await;

    // The default interval over a steady fleet, last heard from evenly over one interval.
    let pool = pool_with(database_url, idle, FLEET, &stub, names, &[]).await?;
    let interval = pool.settings.health.health_interval().as_secs_f64();
    let lookahead = pool
        .settings
        .tick
        .tick_interval()
        .unwrap_or_default()
        .as_secs_f64();
    sqlx::query(
        "UPDATE instances
            SET last_checked_at = now() - make_interval(secs => $1 * random()),
                last_ok_at = NULL, health_failures = 0, failing_since = NULL",
    )
    .bind(interval)
    .execute(db)
    .await?;
    sqlx::query("UPDATE instances SET last_ok_at = last_checked_at")
        .execute(db)
        .await?;
    let due_now = due(db, interval, lookahead).await?;
    let pulled = one_tick(db, &pool, due_now).await?;

    // Pushed: stored signs of life spread over the last minute, as they are in steady state
    // (a row is written when its stored one is older than a third of the interval).
    sqlx::query(
        "UPDATE instances SET last_ok_at = now() - make_interval(secs => 60 * random()),
                              last_checked_at = now() - interval '1 hour'",
    )
    .execute(db)
    .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(BEAT_WORKERS)
        .build()?;
    let (replica, _) = Replica::spawn_with(
        database_url,
        &[],
        &[("TICK_INTERVAL_MS", "0"), ("RUST_LOG", "warn")],
        std::process::Stdio::null(),
    )?;
    replica.first_answer(&http).await?;
    let ids = Arc::new(ids);
    let mut pushed = Vec::new();
    for round in 0..2 {
        pushed.push(
            beat_window(
                db,
                &http,
                &replica.base,
                &stub.token,
                ids.clone(),
                round * 7,
            )
            .await?,
        );
    }
    drop(replica);
    let due_now = due(db, interval, lookahead).await?;
    let after_pushes = one_tick(db, &pool, due_now).await?;
    pool.db.close().await;
    drop(stub);
    sqlx::query("TRUNCATE instances, instance_events CASCADE")
        .execute(db)
        .await?;
    Ok(FleetTick {
        machine: Machine::detect(db).await,
        instances: FLEET,
        health_delay_ms: HEALTH_DELAY_MS,
        every_tick,
        pulled,
        pushed,
        after_pushes,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

pub fn write(out: &Path, figures: &FleetTick) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("benchmarks-fleet.json"),
        serde_json::to_string_pretty(figures)?,
    )?;
    let md = markdown(figures);
    std::fs::write(out.join("benchmarks-fleet.md"), &md).context("writing the fleet report")?;
    println!("{md}");
    Ok(())
}

fn markdown(f: &FleetTick) -> String {
    let m = &f.machine;
    let mut md = String::new();
    let _ = writeln!(md, "# A tick for 100,000 agents\n");
    let _ = writeln!(
        md,
        "Generated by `agentpool-bench --fleet-tick` (or a full run) — do not edit by hand. \
         Machine: {} × {}, PostgreSQL {} (local, fsync off), commit {}, {}; the run took {:.0} s.\n",
        m.cores,
        m.cpu,
        m.postgres,
        m.commit.as_deref().unwrap_or("unknown"),
        m.date,
        f.total_seconds
    );
    let _ = writeln!(
        md,
        "{} rows (nine in ten idle, one in ten claimed); every health answer takes {} ms (one \
         shared stub answers for all); production defaults: `HEALTH_CONCURRENCY` 40, \
         `TICK_BUDGET_MS` 25000, `HEALTH_INTERVAL_MS` 120000, `TICK_INTERVAL_MS` 30000.\n",
        f.instances, f.health_delay_ms
    );
    let _ = writeln!(
        md,
        "| tick | due | asked | duration | statements | transactions | cut short | oldest answer after | never heard from |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---:|---:|");
    for (label, t) in [
        (
            "every runtime every tick (`HEALTH_INTERVAL_MS=0`, as before)",
            &f.every_tick,
        ),
        ("pulled, steady fleet (default interval)", &f.pulled),
        ("after the pushed windows", &f.after_pushes),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {:.0} ms | {} | {} | {} | {:.0} s | {} |",
            t.due,
            t.health_checked,
            t.duration_ms,
            t.queries,
            t.transactions,
            t.cut_short.as_deref().unwrap_or("no"),
            t.oldest_answer_s,
            t.never_heard
        );
    }
    let _ = writeln!(
        md,
        "\nHeartbeats, {:.0} a second offered (100,000 per 30 s) to one replica:\n",
        BEATS_PER_SECOND
    );
    let _ = writeln!(
        md,
        "| window | beats accepted/s | rows written/s | transactions/s |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (i, w) in f.pushed.iter().enumerate() {
        let label = if i == 0 {
            "first 30 s (token look-ups: a cold replica)"
        } else {
            "next 30 s (steady)"
        };
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {:.0} | {:.1} |",
            w.beats_per_second, w.rows_written_per_second, w.transactions_per_second
        );
    }
    md
}
