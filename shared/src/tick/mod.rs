//! The tick: reconcile the fleet and replenish the pool.
//!
//! Whichever process takes `pg_try_advisory_xact_lock(TICK_LOCK_KEY)` runs it, holding the lock on
//! one connection for the whole tick; every other caller skips at once. A process that dies drops
//! its connection and with it the lock. The tick itself is snapshot → plan → execute: reading is
//! separate from deciding (a pure function, tested without a network) and from acting.

pub mod execute;
pub mod plan;
pub mod snapshot;

use std::time::Instant;

use serde::Serialize;

use crate::domain::{Actor, InstanceStatus};
use crate::error::Result;
use crate::{instances, Pool};

pub use plan::Mode;

pub const TICK_LOCK_KEY: i64 = 0x6167_706f_6f6c_0001;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    pub id: String,
    pub from: InstanceStatus,
    pub to: InstanceStatus,
    pub reason: String,
}

/// What a tick did, as `POST /api/pool/tick` and `agentpool tick` print it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickReport {
    pub skipped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_checked: Option<usize>,
    pub transitions: Vec<Moved>,
    pub destroyed: Vec<String>,
    pub orphans_deleted: Vec<String>,
    pub created: Vec<String>,
    pub errors: Vec<String>,
    pub budget_exhausted: bool,
}

impl TickReport {
    fn skipped() -> Self {
        Self {
            skipped: true,
            ..Self::default()
        }
    }

    fn error(&mut self, message: String) {
        tracing::warn!(%message, "tick error");
        self.errors.push(message);
    }
}

pub fn rules(settings: &crate::config::Settings) -> plan::Rules {
    plan::Rules {
        min_idle: settings.pool_min_idle,
        max_total: settings.pool_max_total,
        stuck_timeout: settings.stuck_timeout(),
        claim_timeout: settings.claim_timeout(),
        health_failure_threshold: settings.health_failure_threshold,
    }
}

/// Runs one tick, or reports `skipped` if another process holds the tick lock.
pub async fn run(pool: &Pool, mode: Mode) -> Result<TickReport> {
    let mut lock = pool.db.begin().await?;
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(TICK_LOCK_KEY)
        .fetch_one(&mut *lock)
        .await?;
    if !acquired {
        return Ok(TickReport::skipped());
    }
    let started = Instant::now();
    let deadline = started + pool.settings.tick_budget();
    let span = tracing::info_span!("tick", ?mode);
    let report = async {
        let snapshot = snapshot::take(pool).await?;
        let plan = plan::decide(&snapshot, &rules(&pool.settings), mode);
        let mut report = TickReport {
            instances: Some(snapshot.rows.len()),
            health_checked: Some(snapshot.health.len()),
            ..TickReport::default()
        };
        execute::run(pool, &snapshot, plan, deadline, &mut report).await;
        Ok::<_, crate::Error>(report)
    };
    let mut report = tracing::Instrument::instrument(report, span).await?;
    report.duration_ms = Some(started.elapsed().as_millis() as u64);
    // Ending the transaction releases the lock; if the connection is gone, so is the lock.
    let _ = lock.commit().await;
    Ok(report)
}

/// `POST /api/pool/replenish {"count": N}`: create up to N instances now, within `POOL_MAX_TOTAL`.
/// Returns the ids created and the errors met.
pub async fn create_now(pool: &Pool, count: u32) -> Result<TickReport> {
    let settings = &pool.settings;
    let reserved = instances::reserve(
        &pool.db,
        count,
        settings.pool_max_total,
        &settings.pool_name_prefix,
        Actor::Operator,
        "replenish requested",
    )
    .await?;
    let mut report = TickReport::default();
    for (id, result) in execute::create_reserved(pool, reserved).await {
        match result {
            Ok(()) => report.created.push(id),
            Err(e) => report.error(format!("creating {id}: {e}")),
        }
    }
    Ok(report)
}
