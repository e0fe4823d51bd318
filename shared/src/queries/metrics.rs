//! What `/metrics` reports, read from Postgres at scrape time so that every replica reports the
//! same truth: instances by status now; the history's totals (creations, failures, claims,
//! crashes, destructions, every transition) and claim durations, folded from `instance_events`;
//! claim misses; the last tick; and errors of outside calls by service and kind.
//!
//! Writers of history write their events and nothing more: the totals are brought up to date by
//! [`fold`], which the tick and every scrape run, off the writers' transactions. A scrape is a few
//! small queries whatever the fleet's size or the history's length: a fold reads only the events
//! written since the last one.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::calls::Tally;
use crate::error::{Error, Result};
use crate::instances;

/// What `GET /metrics` answers with: the OpenMetrics text format, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the claim duration buckets, in seconds.
const CLAIM_BUCKETS: [f64; 13] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    f64::INFINITY,
];

/// Spreads counter rows so that concurrent writers rarely wait on one row.
const SHARDS: f64 = 32.0;

/// Writes the call errors counted so far; on failure they are kept for the next attempt.
pub async fn flush_call_errors(db: &PgPool, tally: &Tally) -> Result<()> {
    let pending = tally.take();
    if pending.is_empty() {
        return Ok(());
    }
    let labels: Vec<String> = pending
        .keys()
        .map(|(service, kind)| format!("{service}/{kind}"))
        .collect();
    let counts: Vec<i64> = pending.values().copied().collect();
    let written = sqlx::query(
        "INSERT INTO pool_counters (name, labels, shard, n)
         SELECT 'call_errors', l, floor(random() * $3)::int, n
           FROM unnest($1::text[], $2::bigint[]) AS c(l, n)
         ON CONFLICT (name, labels, shard) DO UPDATE SET n = pool_counters.n + EXCLUDED.n",
    )
    .bind(&labels)
    .bind(&counts)
    .bind(SHARDS)
    .execute(db)
    .await;
    if let Err(e) = written {
        tally.put_back(pending);
        return Err(e.into());
    }
    Ok(())
}

/// Counts a claim that found no idle instance, and records when (`claim_misses`: the sizing
/// policy's demand).
pub async fn count_claim_miss(db: &PgPool) -> Result<()> {
    sqlx::query(
        "WITH m AS (INSERT INTO claim_misses DEFAULT VALUES)
         INSERT INTO pool_counters (name, shard, n) VALUES ('claim_misses', floor(random() * $1)::int, 1)
         ON CONFLICT (name, labels, shard) DO UPDATE SET n = pool_counters.n + 1",
    )
    .bind(SHARDS)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a tick that ran to the end. Ticks hold the tick lock, so this row is never contended.
pub async fn record_tick(db: &PgPool, duration: Duration, full: bool) -> Result<()> {
    sqlx::query(
        "INSERT INTO tick_stats (id, ticks, last_success_at, last_duration_s, full_ticks, last_full_at)
         VALUES (1, 1, now(), $1, $2::int, CASE WHEN $2 THEN now() END)
         ON CONFLICT (id) DO UPDATE
            SET ticks = tick_stats.ticks + 1, last_success_at = now(), last_duration_s = $1,
                full_ticks = tick_stats.full_ticks + $2::int,
                last_full_at = CASE WHEN $2 THEN now() ELSE tick_stats.last_full_at END",
    )
    .bind(duration.as_secs_f64())
    .bind(full)
    .execute(db)
    .await?;
    Ok(())
}

/// A histogram whose buckets were counted elsewhere (in Postgres): encoded as read.
#[derive(Debug)]
struct StoredHistogram {
    sum: f64,
    count: u64,
    /// `(upper bound, count in this bucket)`, not cumulative.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for StoredHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type Labels = Vec<(&'static str, String)>;

/// The transitions that have a name of their own: (from, to) → counter.
const NAMED: [(&str, &str, &str, &str); 6] = [
    (
        "",
        "starting",
        "instances_created",
        "Instances whose creation began",
    ),
    (
        "starting",
        "destroying",
        "creations_failed",
        "Creations that failed, timed out or were cut off",
    ),
    ("claiming", "claimed", "claims", "Agents handed out"),
    (
        "claiming",
        "destroying",
        "claims_failed",
        "Claims whose runtime refused or timed out (the instance is replaced)",
    ),
    (
        "claimed",
        "crashed",
        "crashes",
        "Claimed agents whose runtime died",
    ),
    (
        "destroying",
        "deleted",
        "instances_destroyed",
        "Instances whose resources were destroyed",
    ),
];

/// Adds the events written since the last fold to the totals; returns how many it added.
///
/// Events are taken by the transaction that wrote them (`migrations/0007_metrics_fold.sql`): those
/// of every transaction below the oldest one still running, all of which have ended, so none can
/// still appear below the new watermark. An event of a transaction still running waits for a later
/// fold. Folders queue on the watermark's row, and the second statement's snapshot is taken once
/// the lock is held, so it sees the watermark the previous folder left: no event counts twice.
pub async fn fold(db: &PgPool) -> Result<u64> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT 1 FROM metrics_folded WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let buckets: Vec<f64> = CLAIM_BUCKETS.to_vec();
    let folded: i64 = sqlx::query_scalar(
        "WITH w AS (
           SELECT upto AS lo, greatest(upto, pg_snapshot_xmin(pg_current_snapshot())) AS hi
             FROM metrics_folded WHERE id = 1
         ),
         new AS (
           SELECT e.id, e.instance_id, e.from_status, e.to_status, e.at
             FROM instance_events e, w
            WHERE e.xid >= w.lo AND e.xid < w.hi
         ),
         totals AS (
           INSERT INTO event_totals (from_status, to_status, shard, n)
           SELECT coalesce(from_status, ''), to_status, 0, count(*) FROM new GROUP BY 1, 2
           ON CONFLICT (from_status, to_status, shard) DO UPDATE SET n = event_totals.n + EXCLUDED.n
         ),
         claimed AS (
           SELECT extract(epoch FROM c.at - s.at)::float8 AS seconds
             FROM new c
             CROSS JOIN LATERAL (
               SELECT e.at FROM instance_events e
                WHERE e.instance_id = c.instance_id AND e.id < c.id AND e.to_status = 'claiming'
                ORDER BY e.id DESC LIMIT 1
             ) s
            WHERE c.from_status = 'claiming' AND c.to_status = 'claimed'
         ),
         durations AS (
           INSERT INTO claim_durations (le, shard, n, sum_seconds)
           SELECT (SELECT min(le) FROM unnest($1::float8[]) le WHERE seconds <= le) AS bucket,
                  0, count(*), sum(seconds)
             FROM claimed GROUP BY bucket
           ON CONFLICT (le, shard) DO UPDATE
              SET n = claim_durations.n + EXCLUDED.n,
                  sum_seconds = claim_durations.sum_seconds + EXCLUDED.sum_seconds
         ),
         advance AS (
           UPDATE metrics_folded f SET upto = w.hi FROM w WHERE f.id = 1 AND w.hi > w.lo
         )
         SELECT count(*) FROM new",
    )
    .bind(&buckets)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(folded).unwrap_or(0))
}

/// Reads everything `/metrics` shows and encodes it.
pub async fn render(db: &PgPool, tally: &Tally) -> Result<String> {
    // What this replica counted is written first, so that this scrape includes it.
    if let Err(e) = flush_call_errors(db, tally).await {
        tracing::warn!(error = %e, "writing call error counts");
    }
    // A fold that fails leaves the totals as they were: still true, only late.
    if let Err(e) = fold(db).await {
        tracing::warn!(error = %e, "folding events into the metrics");
    }
    let counts = instances::counts(db).await?;
    let transitions: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT from_status, to_status, sum(n)::bigint FROM event_totals GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(db)
    .await?;
    let durations: Vec<(f64, i64, f64)> = sqlx::query_as(
        "SELECT le, sum(n)::bigint, sum(sum_seconds) FROM claim_durations GROUP BY le",
    )
    .fetch_all(db)
    .await?;
    let counters: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT name, labels, sum(n)::bigint FROM pool_counters GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(db)
    .await?;
    let tick: Option<(i64, f64, f64, i64, f64, Option<i32>)> = sqlx::query_as(
        "SELECT t.ticks, extract(epoch FROM t.last_success_at)::float8, t.last_duration_s,
                t.full_ticks, coalesce(extract(epoch FROM t.last_full_at), 0)::float8, s.target
           FROM tick_stats t
           LEFT JOIN LATERAL (SELECT target FROM pool_samples ORDER BY at DESC LIMIT 1) s ON true",
    )
    .fetch_optional(db)
    .await?;
    let abandoned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tool_id, count(*) FROM abandoned_resources GROUP BY tool_id ORDER BY tool_id",
    )
    .fetch_all(db)
    .await?;

    let mut registry = Registry::with_prefix("agentpool");
    let by_status = Family::<Labels, Gauge>::default();
    for (status, n) in counts {
        by_status
            .get_or_create(&vec![("status", status.as_str().to_string())])
            .set(n);
    }
    registry.register("instances", "Instances by status, now", by_status);
    let by_tool = Family::<Labels, Gauge>::default();
    for (tool, n) in abandoned {
        by_tool.get_or_create(&vec![("tool", tool)]).set(n);
    }
    registry.register(
        "abandoned_tool_resources",
        "Tool resources given up at teardown because their tool is no longer configured: clean \
         them by hand (see the dashboard) or configure the tool again",
        by_tool,
    );

    let total = |from: &str, to: &str| -> u64 {
        transitions
            .iter()
            .filter(|(f, t, _)| f == from && t == to)
            .map(|(_, _, n)| u64::try_from(*n).unwrap_or(0))
            .sum()
    };
    for (from, to, name, help) in NAMED {
        let counter = Counter::<u64>::default();
        counter.inc_by(total(from, to));
        registry.register(name, help, counter);
    }
    let all = Family::<Labels, Counter>::default();
    for (from, to, n) in transitions.iter().filter(|(f, t, _)| f != t) {
        all.get_or_create(&vec![("from", from.clone()), ("to", to.clone())])
            .inc_by(u64::try_from(*n).unwrap_or(0));
    }
    registry.register(
        "transitions",
        "Every change of status in the history (from \"\" = created)",
        all,
    );

    let misses = Counter::<u64>::default();
    let call_errors = Family::<Labels, Counter>::default();
    for (name, labels, n) in &counters {
        let n = u64::try_from(*n).unwrap_or(0);
        match (name.as_str(), labels.split_once('/')) {
            ("claim_misses", _) => {
                misses.inc_by(n);
            }
            ("call_errors", Some((service, kind))) => {
                call_errors
                    .get_or_create(&vec![
                        ("service", service.to_string()),
                        ("kind", kind.to_string()),
                    ])
                    .inc_by(n);
            }
            _ => {}
        }
    }
    registry.register("claim_misses", "Claims that found no idle instance", misses);
    registry.register(
        "outbound_errors",
        "Failed attempts of calls to providers and tools, by service and kind (not-found excluded)",
        call_errors,
    );

    let mut histogram = StoredHistogram {
        sum: 0.0,
        count: 0,
        buckets: CLAIM_BUCKETS.iter().map(|le| (*le, 0)).collect(),
    };
    for (le, n, sum) in durations {
        let n = u64::try_from(n).unwrap_or(0);
        if let Some(bucket) = histogram.buckets.iter_mut().find(|(b, _)| *b == le) {
            bucket.1 += n;
        }
        histogram.count += n;
        histogram.sum += sum;
    }
    registry.register(
        "claim_duration_seconds",
        "Time from taking an idle instance to its runtime accepting the agent",
        histogram,
    );

    let (ticks, last_success, last_duration, full_ticks, last_full, target) =
        tick.unwrap_or((0, 0.0, 0.0, 0, 0.0, None));
    if let Some(target) = target {
        let gauge = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        gauge.set(i64::from(target));
        registry.register(
            "pool_target_idle",
            "Idle and starting instances the last full tick aimed at (the sizing policy's target)",
            gauge,
        );
    }
    let full_total = Counter::<u64>::default();
    full_total.inc_by(u64::try_from(full_ticks).unwrap_or(0));
    registry.register(
        "full_ticks",
        "Full ticks (fleet health, listings, orphans) that ran to the end",
        full_total,
    );
    let last_full_gauge = Gauge::<f64, AtomicU64>::default();
    last_full_gauge.set(last_full);
    registry.register(
        "full_tick_last_success_timestamp_seconds",
        "When the last full tick that ran to the end ended (Unix time; 0 = never)",
        last_full_gauge,
    );
    let ticks_total = Counter::<u64>::default();
    ticks_total.inc_by(u64::try_from(ticks).unwrap_or(0));
    registry.register("ticks", "Ticks that ran to the end", ticks_total);
    let last = Gauge::<f64, AtomicU64>::default();
    last.set(last_success);
    registry.register(
        "tick_last_success_timestamp_seconds",
        "When the last tick that ran to the end ended (Unix time; 0 = never)",
        last,
    );
    let duration = Gauge::<f64, AtomicU64>::default();
    duration.set(last_duration);
    registry.register(
        "tick_duration_seconds",
        "How long the last tick that ran to the end took",
        duration,
    );

    // Seconds left of a creation pause (a provider at capacity), 0 when none is in force.
    let paused: Option<f64> = sqlx::query_scalar(
        "SELECT max(extract(epoch FROM until - now()))::float8 FROM creation_pauses WHERE until > now()",
    )
    .fetch_one(db)
    .await?;
    let paused_gauge = Gauge::<f64, AtomicU64>::default();
    paused_gauge.set(paused.unwrap_or(0.0));
    registry.register(
        "creation_paused_seconds",
        "Seconds until creation resumes: the provider refused for capacity (0 = not paused)",
        paused_gauge,
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| Error::io("encoding metrics", std::io::Error::other(e)))?;
    Ok(text)
}
