//! Scheduled ticks: each slot's tick runs once, however many schedulers fire for it.
//!
//! A *slot* is the time a schedule meant a tick to run (a cron occurrence, an EventBridge
//! event's `time`). Every scheduler fires for every slot; whichever inserts the slot's row in
//! `tick_runs` first runs the tick, and the others skip. The advisory lock cannot decide this on
//! its own: it only keeps two ticks from running *at once*, so a scheduler that lost the race by
//! a moment would find the lock free again once the winner finished, and tick the slot twice.
//!
//! A runner that dies after taking its slot leaves the slot unrun; the next slot covers it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Mode, Skip, TickReport};
use crate::error::Result;
use crate::Pool;

/// Rows of `tick_runs` older than this are deleted: they are evidence for an operator, not state.
const KEEP_DAYS: i32 = 7;

/// Who is running a tick, for `tick_runs.runner`: `<role> <pid>@<host>`.
pub fn runner(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{role} {}@{host}", std::process::id())
}

/// Runs the full tick of `slot` unless another process has taken it; then the report says
/// `skipped` because `slot_taken`.
pub async fn run(
    pool: &Pool,
    slot: DateTime<Utc>,
    runner: &str,
    stop: &CancellationToken,
) -> Result<TickReport> {
    if !take(&pool.db, slot, runner).await? {
        let mut report = TickReport::skipped(Skip::SlotTaken);
        report.slot = Some(slot);
        return Ok(report);
    }
    let outcome = super::run_until(pool, Mode::Full, stop).await;
    if let Err(e) = finish(&pool.db, slot, outcome.as_ref().ok()).await {
        // The tick itself is done; only the evidence of it is missing.
        tracing::warn!(%slot, error = %e, "recording the slot's tick failed");
    }
    let mut report = outcome?;
    report.slot = Some(slot);
    Ok(report)
}

/// Takes `slot` for `runner`; false if another process already has.
pub async fn take(db: &PgPool, slot: DateTime<Utc>, runner: &str) -> Result<bool> {
    let taken = sqlx::query(
        "INSERT INTO tick_runs (slot, runner) VALUES ($1, $2) ON CONFLICT (slot) DO NOTHING",
    )
    .bind(slot)
    .bind(runner)
    .execute(db)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Records how the slot's tick ended (`None`: in an error), and forgets old slots.
pub async fn finish(db: &PgPool, slot: DateTime<Utc>, report: Option<&TickReport>) -> Result<()> {
    let outcome = match report {
        None => "failed",
        Some(r) if r.skipped => "locked",
        Some(_) => "ran",
    };
    let count =
        |f: fn(&TickReport) -> usize| report.map_or(0, |r| i32::try_from(f(r)).unwrap_or(i32::MAX));
    sqlx::query(
        "UPDATE tick_runs
            SET finished_at = now(), outcome = $2,
                created = $3, destroyed = $4, transitions = $5, errors = $6
          WHERE slot = $1",
    )
    .bind(slot)
    .bind(outcome)
    .bind(count(|r| r.created.len()))
    .bind(count(|r| r.destroyed.len()))
    .bind(count(|r| r.transitions.len()))
    .bind(count(|r| r.errors.len()))
    .execute(db)
    .await?;
    // By when the row was written, not by its slot: a slot may name any time (an EventBridge
    // event replayed from long ago), and its row must outlive the deliveries of that event.
    sqlx::query("DELETE FROM tick_runs WHERE claimed_at < now() - make_interval(days => $1)")
        .bind(KEEP_DAYS)
        .execute(db)
        .await?;
    Ok(())
}
