//! The tick: reconcile the fleet and replenish the pool.
//!
//! Whichever process takes the advisory lock `TICK_LOCK_KEY` runs it, holding the lock as a
//! [`lease::Lease`] for the whole tick and checking it before each write; every other caller skips
//! at once. The tick itself is snapshot → plan → execute: reading is separate from deciding (pure
//! functions, tested without a network) and from acting.

pub mod execute;
pub use crate::lease;
mod mode;
pub mod plan;
pub mod slots;
pub mod snapshot;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::InstanceStatus;
use crate::error::{Error, Result};
use crate::gate::{CutShort, Gate};
use crate::pool_size::{self, PoolSize};
use crate::Pool;

pub use plan::Mode;

pub const TICK_LOCK_KEY: i64 = 0x6167_706f_6f6c_0001;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    pub id: String,
    pub from: InstanceStatus,
    pub to: InstanceStatus,
    pub reason: String,
}

/// One thing that went wrong, as a client may see it: a code and a short cause. The details are
/// in the log, on a line with the same instance id.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TickError {
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub message: String,
}

/// Why a tick did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// Another tick holds the advisory lock.
    Locked,
    /// Another process has already taken this scheduled slot ([`slots`]).
    SlotTaken,
}

/// What a tick did, as `POST /api/pool/tick` and `agentpool tick` print it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TickReport {
    pub skipped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_because: Option<Skip>,
    /// The scheduled slot this tick was for, when a schedule asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_checked: Option<usize>,
    pub transitions: Vec<Moved>,
    pub destroyed: Vec<String>,
    pub orphans_deleted: Vec<String>,
    /// Tool resources (keys, inboxes, numbers) that no row owned, as `<tool>:<resource id>`.
    pub tool_orphans_deleted: Vec<String>,
    pub created: Vec<String>,
    pub errors: Vec<TickError>,
    /// Set when the tick stopped starting work early; what it left waits for the next tick.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_short: Option<CutShort>,
}

impl TickReport {
    fn skipped(because: Skip) -> Self {
        Self {
            skipped: true,
            skipped_because: Some(because),
            ..Self::default()
        }
    }

    /// Records an error: the whole of it in the log, a code and a short cause in the report.
    pub fn error(&mut self, doing: &str, instance_id: Option<&str>, error: &Error) {
        tracing::warn!(instance_id, error = %error, "{doing} failed");
        self.errors.push(TickError {
            code: error.code(),
            instance_id: instance_id.map(str::to_string),
            message: format!("{doing}: {}", error.public_message()),
        });
    }

    pub fn cut(&mut self, why: CutShort) {
        if self.cut_short.is_none() {
            tracing::warn!(?why, "tick cut short");
            self.cut_short = Some(why);
        }
    }
}

/// The plan's rules: the pool's size in force (stored or from the environment), the rest from
/// the settings.
pub fn rules(settings: &crate::config::Settings, size: PoolSize) -> plan::Rules {
    plan::Rules {
        min_idle: size.min_idle,
        max_total: size.max_total,
        stuck_timeout: settings.tick.stuck_timeout(),
        claim_timeout: settings.claim.claim_timeout(),
        create_timeout: settings.creation.create_timeout(),
        health_failure_threshold: settings.health.health_failure_threshold,
        health_grace: settings.health.health_grace(),
    }
}

/// Runs one tick, or reports `skipped` if another process holds the tick lock.
pub async fn run(pool: &Pool, mode: Mode) -> Result<TickReport> {
    run_until(pool, mode, &CancellationToken::new()).await
}

/// Runs one tick that starts no new work once `stop` is cancelled (shutdown).
pub async fn run_until(pool: &Pool, mode: Mode, stop: &CancellationToken) -> Result<TickReport> {
    let Some(lease) = lease::Lease::try_acquire(&pool.db, TICK_LOCK_KEY).await? else {
        return Ok(TickReport::skipped(Skip::Locked));
    };
    let started = Instant::now();
    let gate = Gate::tick(
        &lease,
        started + pool.settings.tick.tick_budget(),
        stop.clone(),
    );
    let span = tracing::info_span!("tick", ?mode);
    let work = async {
        let mut report = TickReport::default();
        let snapshot = snapshot::take(pool, mode, &gate, &mut report).await?;
        let size = pool_size::current(&pool.db, &pool.settings.size).await?;
        let plan = plan::decide(&snapshot, &rules(&pool.settings, size), mode);
        report.instances = Some(snapshot.rows.len());
        report.health_checked = Some(snapshot.health.len());
        if let Err(why) = execute::run(pool, &snapshot, plan, mode, &gate, &mut report).await {
            report.cut(why);
        }
        Ok::<_, Error>(report)
    };
    let outcome = tracing::Instrument::instrument(work, span).await;
    if outcome.is_ok() {
        // Under the lock still: one tick at a time writes this row.
        if let Err(e) = crate::metrics::record_tick(&pool.db, started.elapsed()).await {
            tracing::warn!(error = %e, "recording the tick for /metrics");
        }
    }
    // Keeps each scrape's fold small, however rarely /metrics is scraped; a kicked tick leaves
    // it to the next full one.
    if mode != Mode::Kick {
        if let Err(e) = crate::metrics::fold(&pool.db).await {
            tracing::warn!(error = %e, "folding events into the metrics");
        }
    }
    if let Err(e) = crate::metrics::flush_call_errors(&pool.db).await {
        tracing::warn!(error = %e, "writing call error counts");
    }
    lease.release().await;
    let mut report = outcome?;
    report.duration_ms = Some(started.elapsed().as_millis() as u64);
    Ok(report)
}
