//! The full tick's cadence under continuous claims (issue 15, 2.4): two `agentpool serve` replicas
//! with `TICK_INTERVAL_MS` = 1 s, the Railway and tool fakes at production latency / 30 (a
//! creation takes about as many ticks as it does for real), and clients that claim and hand back
//! agents without pause for [`DURATION`]. Measured:
//!
//! - when each full tick ended (`tick_stats.last_full_at`, polled): the gaps between them, against
//!   `TICK_INTERVAL_MS` ± one tick;
//! - how long the tick lock (`TICK_LOCK_KEY`) is held at a time (`pg_locks`, polled every 10 ms),
//!   against how long a creation takes (its row's `starting` → `idle` events): a creation that
//!   waited on the lock, or held it, would show as a hold at least as long as itself.
//!
//! `agentpool-bench --cadence-only` runs just this (about two minutes).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use agentpool_core::db;
use agentpool_core::tick::TICK_LOCK_KEY;
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::outside::Outside;
use agentpool_tests::{agentpool_bin, free_port, set_vars, Guarded};

use crate::fleet::API_KEY;

/// How long the claims run.
pub const DURATION: Duration = Duration::from_secs(90);
const CLIENTS: usize = 4;
const REPLICAS: usize = 2;
/// Production's defaults / 30: `TICK_INTERVAL_MS` = 1 000.
const SCALE: f64 = 1.0 / 30.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cadence {
    pub seconds: f64,
    pub replicas: usize,
    pub clients: usize,
    pub tick_interval_ms: u64,
    pub claims: usize,
    pub claims_failed: usize,
    pub ticks: i64,
    pub full_ticks: usize,
    /// Gaps between consecutive full ticks, ms.
    pub full_gap_p50_ms: f64,
    pub full_gap_p99_ms: f64,
    pub full_gap_max_ms: f64,
    /// Share of gaps within `TICK_INTERVAL_MS` + one tick.
    pub full_gaps_within: f64,
    /// Times the tick lock was seen held, and for how long each time (10 ms resolution).
    pub lock_holds: usize,
    pub lock_hold_p50_ms: f64,
    pub lock_hold_p99_ms: f64,
    pub lock_hold_max_ms: f64,
    pub creations: usize,
    /// A creation: its row's `starting` → `idle`.
    pub creation_p50_ms: f64,
    pub creation_min_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

pub async fn measure(url: &str) -> anyhow::Result<Cadence> {
    let profile = LatencyProfile::realistic().scaled(SCALE);
    let outside = Outside::start(2_000).await;
    outside.set_latency(&profile);
    let pool = db::open(url, 5).await?;
    let mut vars = outside.settings();
    set_vars(&mut vars, profile.pool_settings());
    set_vars(
        &mut vars,
        [
            ("DATABASE_URL", url.to_string()),
            ("POOL_API_KEY", API_KEY.to_string()),
            ("POOL_NAME_PREFIX", "cadence-".to_string()),
            ("POOL_MIN_IDLE", "6".to_string()),
            ("POOL_MAX_TOTAL", "60".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let interval: u64 = vars
        .iter()
        .find(|(k, _)| k == "TICK_INTERVAL_MS")
        .and_then(|(_, v)| v.parse().ok())
        .context("TICK_INTERVAL_MS")?;
    let mut replicas = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..REPLICAS {
        let port = free_port();
        let child = Command::new(agentpool_bin())
            .arg("serve")
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a replica")?;
        replicas.push(Guarded(child));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    let http = reqwest::Client::new();
    // The pool full before the claims start.
    let ready = Instant::now() + Duration::from_secs(120);
    loop {
        let idle: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE status = 'idle'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if idle >= 6 {
            break;
        }
        anyhow::ensure!(Instant::now() < ready, "the pool never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ticks_before: (i64,) = sqlx::query_as("SELECT coalesce(max(ticks), 0) FROM tick_stats")
        .fetch_one(&pool)
        .await?;
    let since: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;

    let started = Instant::now();
    let claims = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, bases, claims, failed) =
            (http.clone(), bases.clone(), claims.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while started.elapsed() < DURATION {
                let base = &bases[(c + n) % bases.len()];
                n += 1;
                let reply = http
                    .post(format!("{base}/api/pool/claim"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"agentName": "cadence", "instructions": "Bench."}))
                    .send()
                    .await;
                let claimed = match reply {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    Ok(r) => {
                        // An empty pool answers at once; wait a moment rather than spin.
                        let _ = r.bytes().await;
                        None
                    }
                    Err(_) => None,
                };
                let Some(id) = claimed.and_then(|v| v["instanceId"].as_str().map(String::from))
                else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                claims.fetch_add(1, Ordering::Relaxed);
                // Handed back at once: the teardown runs as continuously as the claims.
                let _ = http
                    .delete(format!("{base}/api/pool/instances/{id}"))
                    .bearer_auth(API_KEY)
                    .send()
                    .await;
            }
        }));
    }
    // The sampler: full ticks' ends and the tick lock.
    let mut full_ends: BTreeSet<DateTime<Utc>> = BTreeSet::new();
    let mut holds: Vec<f64> = Vec::new();
    let mut held_since: Option<Instant> = None;
    while started.elapsed() < DURATION {
        let (last_full, held): (Option<DateTime<Utc>>, bool) = sqlx::query_as(
            "SELECT (SELECT last_full_at FROM tick_stats WHERE id = 1),
                    EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                              AND ((classid::bigint << 32) | objid::bigint) = $1)",
        )
        .bind(TICK_LOCK_KEY)
        .fetch_one(&pool)
        .await?;
        if let Some(at) = last_full.filter(|at| *at > since) {
            full_ends.insert(at);
        }
        match (held, held_since) {
            (true, None) => held_since = Some(Instant::now()),
            (false, Some(from)) => {
                holds.push(from.elapsed().as_secs_f64() * 1000.0);
                held_since = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for client in clients {
        let _ = client.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ticks_after: (i64,) = sqlx::query_as("SELECT coalesce(max(ticks), 0) FROM tick_stats")
        .fetch_one(&pool)
        .await?;
    let creations: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM i.at - s.at)::float8 * 1000
           FROM instance_events s
           JOIN instance_events i ON i.instance_id = s.instance_id AND i.to_status = 'idle'
                                  AND i.from_status = 'starting'
          WHERE s.to_status = 'starting' AND s.at > $1",
    )
    .bind(since)
    .fetch_all(&pool)
    .await?;
    drop(replicas);
    pool.close().await;

    let ends: Vec<DateTime<Utc>> = full_ends.into_iter().collect();
    let gaps = sorted(
        ends.windows(2)
            .map(|w| (w[1] - w[0]).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            .collect(),
    );
    let within = if gaps.is_empty() {
        0.0
    } else {
        gaps.iter().filter(|g| **g <= (2 * interval) as f64).count() as f64 / gaps.len() as f64
    };
    let holds = sorted(holds);
    let creations = sorted(creations);
    Ok(Cadence {
        seconds,
        replicas: REPLICAS,
        clients: CLIENTS,
        tick_interval_ms: interval,
        claims: claims.load(Ordering::Relaxed),
        claims_failed: failed.load(Ordering::Relaxed),
        ticks: ticks_after.0 - ticks_before.0,
        full_ticks: ends.len(),
        full_gap_p50_ms: percentile(&gaps, 50.0),
        full_gap_p99_ms: percentile(&gaps, 99.0),
        full_gap_max_ms: gaps.last().copied().unwrap_or(0.0),
        full_gaps_within: within,
        lock_holds: holds.len(),
        lock_hold_p50_ms: percentile(&holds, 50.0),
        lock_hold_p99_ms: percentile(&holds, 99.0),
        lock_hold_max_ms: holds.last().copied().unwrap_or(0.0),
        creations: creations.len(),
        creation_p50_ms: percentile(&creations, 50.0),
        creation_min_ms: creations.first().copied().unwrap_or(0.0),
    })
}

/// The report's section.
pub fn markdown(c: &Cadence) -> String {
    let interval = c.tick_interval_ms as f64;
    format!(
        "## The full tick under continuous claims\n\n\
         {replicas} `agentpool serve` replicas, `TICK_INTERVAL_MS` = {interval:.0}, the Railway and \
         tool fakes at production latency / 30; {clients} clients claimed and handed back agents \
         without pause for {seconds:.0} s: {claims} claims ({failed} refused, mostly an empty pool \
         while it refilled), {ticks} ticks in all.\n\n\
         | figure | measured | target |\n|---|---|---|\n\
         | full ticks | {full} in {seconds:.0} s | one per interval at least |\n\
         | gap between full ticks, p50 / p99 / max | {g50:.0} / {g99:.0} / {gmax:.0} ms | ≤ {two:.0} ms (interval + one tick) |\n\
         | gaps within interval + one tick | {within:.1} % | 100 % |\n\
         | tick lock held at a time, p50 / p99 / max ({holds} holds, 10 ms samples) | {h50:.0} / {h99:.0} / {hmax:.0} ms | well under a creation |\n\
         | a creation (`starting` → `idle`), min / p50 ({creations} creations) | {cmin:.0} / {c50:.0} ms | — |\n\n\
         {verdict}\n",
        replicas = c.replicas,
        clients = c.clients,
        seconds = c.seconds,
        claims = c.claims,
        failed = c.claims_failed,
        ticks = c.ticks,
        full = c.full_ticks,
        g50 = c.full_gap_p50_ms,
        g99 = c.full_gap_p99_ms,
        gmax = c.full_gap_max_ms,
        two = 2.0 * interval,
        within = c.full_gaps_within * 100.0,
        holds = c.lock_holds,
        h50 = c.lock_hold_p50_ms,
        h99 = c.lock_hold_p99_ms,
        hmax = c.lock_hold_max_ms,
        creations = c.creations,
        cmin = c.creation_min_ms,
        c50 = c.creation_p50_ms,
        verdict = if c.lock_hold_max_ms < c.creation_min_ms {
            "The tick lock was never held for as long as the quickest creation took: creations run \
             after the tick that reserved them released it, so they neither wait on it nor hold it."
        } else {
            "**The tick lock was held, at least once, for as long as a creation takes**: see \
             whether a creation ran under it."
        },
    )
}
