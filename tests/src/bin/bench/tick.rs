//! Tick cost at 100, 1,000 and 10,000 instances: duration, database queries, memory. The provider
//! is an in-memory fake that lists every instance as running; every runtime is the shared stub,
//! which answers health checks at once, so the figures are the tick's own.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::PgPool;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use agentpool_core::calls::Tally;
use agentpool_core::config::ProviderKind;
use agentpool_core::domain::{ObservedResource, ResourceStatus};
use agentpool_core::providers::{CreateSpec, Created, Provider, ResourceRef};
use agentpool_core::tick::{self, Mode};
use agentpool_core::{db, Pool, Settings};

use crate::fleet::{proc_status_kib, SharedStub};
use crate::stats::ms;
use crate::Scale;

pub const PREFIX: &str = "bench-";

/// Counts the statements sqlx runs (its `sqlx::query` events) while switched on.
struct QueryCounter;

static COUNTING: AtomicBool = AtomicBool::new(false);
static QUERIES: AtomicUsize = AtomicUsize::new(0);

impl<S: Subscriber> Layer<S> for QueryCounter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == "sqlx::query" {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target() == "sqlx::query" && COUNTING.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            QUERIES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn install_query_counter() {
    let subscriber = tracing_subscriber::registry().with(QueryCounter);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// A provider that keeps its resources in memory and lists them all as running.
#[derive(Default)]
pub struct MemoryProvider {
    url: String,
    names: Mutex<BTreeSet<String>>,
}

impl MemoryProvider {
    fn names(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    async fn create(&self, spec: &CreateSpec) -> agentpool_core::Result<Created> {
        self.names().insert(spec.name.clone());
        Ok(Created {
            resource_id: spec.name.clone(),
            url: self.url.clone(),
            details: serde_json::Value::Null,
        })
    }

    async fn destroy(&self, resource: &ResourceRef) -> agentpool_core::Result<()> {
        self.names().remove(&resource.name);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> agentpool_core::Result<Vec<ObservedResource>> {
        Ok(self
            .names()
            .iter()
            .filter(|name| name.starts_with(prefix))
            .map(|name| ObservedResource {
                name: name.clone(),
                resource_id: name.clone(),
                status: ResourceStatus::Running,
            })
            .collect())
    }
}

/// An in-process pool on the benchmark database with the memory provider, production defaults
/// otherwise.
pub async fn pool_over(
    database_url: &str,
    min_idle: usize,
    max_total: usize,
    stub: &SharedStub,
    names: BTreeSet<String>,
) -> anyhow::Result<Pool> {
    let vars = [
        ("DATABASE_URL", database_url.to_string()),
        ("POOL_MIN_IDLE", min_idle.to_string()),
        ("POOL_MAX_TOTAL", max_total.to_string()),
        ("POOL_NAME_PREFIX", PREFIX.to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let settings = Settings::from_vars(vars)?;
    let db = db::connect(database_url, settings.db.database_max_connections).await?;
    let provider = MemoryProvider {
        url: stub.url.clone(),
        names: Mutex::new(names),
    };
    Ok(Pool::new(
        db,
        settings,
        Arc::new(provider),
        Tally::default(),
    ))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickCell {
    pub instances: usize,
    pub runs: usize,
    pub duration_ms: Vec<f64>,
    pub median_ms: f64,
    /// Statements per tick, each run.
    pub queries: Vec<usize>,
    pub health_checks: usize,
    /// Peak resident memory of the benchmark process during a tick, and how far above its
    /// resident memory before the tick that peak was.
    pub peak_rss_kib: u64,
    pub peak_growth_kib: u64,
    /// Transitions, creations or errors: a steady fleet needs none.
    pub changes: usize,
    /// One `/metrics` scrape over this fleet: its time and its statements.
    pub scrape_ms: f64,
    pub scrape_queries: usize,
}

/// A steady fleet of `count` instances: nine in ten idle, one in ten claimed, every one running.
pub async fn fill(
    db: &PgPool,
    stub: &SharedStub,
    count: usize,
) -> anyhow::Result<BTreeSet<String>> {
    sqlx::query("TRUNCATE instances, instance_events CASCADE")
        .execute(db)
        .await?;
    let names: Vec<String> = sqlx::query_scalar(
        "WITH i AS (
           INSERT INTO instances (id, name, url, status, gateway_token, created_at,
                                  claim_token, agent_name, instructions, conversation_id,
                                  invite_url, claimed_at)
           SELECT id, $4 || id, $1, s, $2, timestamptz '2026-01-01' + g * interval '1 millisecond',
                  NULL,
                  CASE WHEN s = 'claimed' THEN 'agent ' || g END,
                  CASE WHEN s = 'claimed' THEN 'Be helpful.' END,
                  CASE WHEN s = 'claimed' THEN 'c' || g END,
                  CASE WHEN s = 'claimed' THEN 'https://convos.example/v2?i=c' || g END,
                  CASE WHEN s = 'claimed' THEN now() END
             FROM generate_series(1, $3) g,
                  LATERAL (SELECT 't' || lpad(g::text, 11, '0') AS id,
                                  CASE WHEN g % 10 = 0 THEN 'claimed' ELSE 'idle' END AS s) x
           RETURNING id, name
         ),
         f AS (
           INSERT INTO instance_infra (instance_id, provider, resource_id)
           SELECT id, 'local', name FROM i
         )
         SELECT name FROM i",
    )
    .bind(&stub.url)
    .bind(&stub.token)
    .bind(count as i64)
    .bind(PREFIX)
    .fetch_all(db)
    .await?;
    sqlx::query("ANALYZE instances").execute(db).await?;
    Ok(names.into_iter().collect())
}

pub async fn measure(
    db: &PgPool,
    database_url: &str,
    stub: &SharedStub,
    scale: Scale,
) -> anyhow::Result<Vec<TickCell>> {
    let mut cells = Vec::new();
    for &count in scale.tick_sizes {
        let names = fill(db, stub, count).await?;
        let idle = count - count / 10;
        let pool = pool_over(database_url, idle, count, stub, names).await?;
        // Warm up: connections, the HTTP client's connections to the stub.
        tick::run(&pool, Mode::Full).await?;
        let mut cell = TickCell {
            instances: count,
            runs: scale.tick_runs,
            duration_ms: Vec::new(),
            median_ms: 0.0,
            queries: Vec::new(),
            health_checks: 0,
            peak_rss_kib: 0,
            peak_growth_kib: 0,
            changes: 0,
            scrape_ms: 0.0,
            scrape_queries: 0,
        };
        for _ in 0..scale.tick_runs {
            let before = proc_status_kib(std::process::id(), "VmRSS").unwrap_or(0);
            // Resets the peak (VmHWM) to the current resident size.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            QUERIES.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            let started = Instant::now();
            let report = tick::run(&pool, Mode::Full).await?;
            let elapsed = started.elapsed();
            COUNTING.store(false, Ordering::Relaxed);
            let peak = proc_status_kib(std::process::id(), "VmHWM").unwrap_or(0);
            anyhow::ensure!(!report.skipped, "the tick was skipped: is the lock held?");
            cell.duration_ms.push(ms(elapsed));
            cell.queries.push(QUERIES.load(Ordering::Relaxed));
            cell.health_checks = report.health_checked.unwrap_or(0);
            cell.peak_rss_kib = cell.peak_rss_kib.max(peak);
            cell.peak_growth_kib = cell.peak_growth_kib.max(peak.saturating_sub(before));
            cell.changes += report.transitions.len()
                + report.created.len()
                + report.destroyed.len()
                + report.orphans_deleted.len()
                + report.errors.len();
            if !report.errors.is_empty() {
                eprintln!("bench: tick errors: {:?}", report.errors);
            }
        }
        QUERIES.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let started = Instant::now();
        agentpool_core::overview::metrics(&pool).await?;
        cell.scrape_ms = ms(started.elapsed());
        COUNTING.store(false, Ordering::Relaxed);
        cell.scrape_queries = QUERIES.load(Ordering::Relaxed);
        let mut sorted = cell.duration_ms.clone();
        sorted.sort_by(f64::total_cmp);
        cell.median_ms = sorted[sorted.len() / 2];
        eprintln!(
            "bench: tick over {count:>5}: median {} ms, queries {:?}, peak growth {} KiB",
            cell.median_ms, cell.queries, cell.peak_growth_kib
        );
        pool.db.close().await;
        cells.push(cell);
    }
    Ok(cells)
}
