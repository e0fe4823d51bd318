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

use crate::config::Sizing;
use crate::creation::{self, Outcome};
use crate::domain::InstanceStatus;
use crate::error::{Error, Result};
use crate::gate::{CutShort, Gate};
use crate::instances::Reserved;
use crate::pool_size::{self, PoolSize};
use crate::samples;
pub use crate::samples::{Day, Sample};
use crate::Pool;

pub use plan::Mode;

pub const TICK_LOCK_KEY: i64 = 0x6167_706f_6f6c_0001;
/// Held by a full (or reconcile) tick around [`TICK_LOCK_KEY`]: a second full tick skips at once,
/// while a full tick that finds only a kicked one at work waits for it.
pub const FULL_TICK_LOCK_KEY: i64 = 0x6167_706f_6f6c_0003;

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
    /// Tool resources (keys, inboxes, numbers) that no row owned, or abandoned ones whose tool is
    /// configured again, deleted: as `<tool>:<resource id>`.
    pub tool_orphans_deleted: Vec<String>,
    /// Tool resources this tick gave up at teardown because their tool is no longer configured,
    /// as `<tool>:<resource id>`; every one still abandoned is in `abandoned`.
    pub tool_resources_abandoned: Vec<String>,
    /// How many abandoned tool resources wait for an operator (full ticks and reconciles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<usize>,
    pub created: Vec<String>,
    /// The rows of this tick's batch of creations when the batch had not ended by the tick's end
    /// (ids): each stays `starting` while its creator beats, and later ticks see how it went.
    pub creating: Vec<String>,
    /// Claimed agents whose resource this tick called after them (ids).
    pub renamed: Vec<String>,
    /// The pool's target this tick, and why (absent from a skipped tick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<plan::Target>,
    /// Creation paused: the provider is at capacity until then (absent when not paused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_paused: Option<crate::capacity::Pause>,
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

    /// Records what became of the rows of a batch of creations.
    pub fn creations(&mut self, outcomes: Vec<(Reserved, Outcome)>) {
        for (row, outcome) in outcomes {
            match outcome {
                Outcome::Created => self.created.push(row.id),
                Outcome::Failed(e) => self.error("creating", Some(&row.id), &e),
                Outcome::CutShort(why) => self.cut(why),
            }
        }
    }

    pub fn cut(&mut self, why: CutShort) {
        if self.cut_short.is_none() {
            tracing::warn!(?why, "tick cut short");
            self.cut_short = Some(why);
        }
    }
}

/// The plan's rules: the pool's size and sizing policy in force (stored or from the environment),
/// the rest from the settings.
/// The plan's rules; `renames`: whether the provider renames claimed agents' resources.
pub fn rules(
    settings: &crate::config::Settings,
    size: PoolSize,
    sizing: Sizing,
    renames: bool,
) -> plan::Rules {
    plan::Rules {
        min_idle: size.min_idle,
        max_total: size.max_total,
        stuck_timeout: settings.tick.stuck_timeout(),
        claim_timeout: settings.claim.claim_timeout(),
        create_timeout: settings.creation.create_timeout(),
        recycle_timeout: settings.creation.recycle_timeout(),
        health_failure_threshold: settings.health.health_failure_threshold,
        health_grace: settings.health.health_grace(),
        sizing,
        rename_with_prefix: renames.then(|| settings.pool.pool_name_prefix.clone()),
    }
}

/// What this full tick found and aimed at, for the dashboard's chart and `/metrics`.
fn sample(snapshot: &snapshot::Snapshot, target: &plan::Target) -> Sample {
    let count = |status| {
        snapshot
            .rows
            .iter()
            .filter(|r| r.instance.status == status)
            .count() as i32
    };
    Sample {
        at: snapshot.now,
        idle: count(InstanceStatus::Idle),
        starting: count(InstanceStatus::Starting),
        target: i32::try_from(target.min_idle).unwrap_or(i32::MAX),
        reason: target.reason.clone(),
    }
}

/// The last 24 hours of claims and of the ticks' targets, for the dashboard's chart.
pub async fn last_day(pool: &Pool) -> Result<Day> {
    samples::last_day(&pool.db).await
}

/// The last full tick's target and why, if a tick has run.
pub async fn latest_sample(pool: &Pool) -> Result<Option<Sample>> {
    samples::latest(&pool.db).await
}

/// Tool resources teardown gave up because their tool was no longer configured, oldest first:
/// what an operator is to clean by hand (or what the tick deletes once the tool is back).
pub async fn abandoned(pool: &Pool) -> Result<Vec<crate::services::Abandoned>> {
    crate::services::abandoned(&pool.db).await
}

/// Runs one tick, or reports `skipped` if another process holds the tick lock.
pub async fn run(pool: &Pool, mode: Mode) -> Result<TickReport> {
    run_until(pool, mode, &CancellationToken::new()).await
}

/// Runs one tick that starts no new work once `stop` is cancelled (shutdown).
///
/// Kicked ticks come as fast as claims; they skip while any tick holds the lock. A full tick
/// skips only another full tick: one that finds a kicked tick at work waits for it (up to the
/// budget), so that kicks under steady claims cannot starve the fleet's health checks, listings
/// and clean-up. Creations run after the lock is released: the rows are reserved under it (so
/// the next tick counts them), and a tick waits on no provider's creation while it holds it, nor
/// on one past its bound.
pub async fn run_until(pool: &Pool, mode: Mode, stop: &CancellationToken) -> Result<TickReport> {
    // The wait for the lock counts against the budget too.
    let started = Instant::now();
    crate::failpoint!(
        "tick.lease.before",
        return Err(crate::failpoint::db_error().into())
    );
    let lease = match mode {
        Mode::Kick => lease::Lease::try_acquire(&pool.db, TICK_LOCK_KEY).await?,
        Mode::Full | Mode::Reconcile => {
            lease::Lease::acquire_behind(
                &pool.db,
                FULL_TICK_LOCK_KEY,
                TICK_LOCK_KEY,
                pool.settings.tick.tick_budget(),
            )
            .await?
        }
    };
    let Some(lease) = lease else {
        return Ok(TickReport::skipped(Skip::Locked));
    };
    let gate = Gate::tick(
        &lease,
        started + pool.settings.tick.tick_budget(),
        stop.clone(),
    );
    let span = tracing::info_span!("tick", ?mode);
    // Outside the work: rows it reserved are created even if the work is cut after reserving them
    // (else they would wait, creator silent, to be reaped).
    let mut batch = None;
    let reserved = &mut batch;
    let work = async {
        crate::failpoint!(
            "tick.lease.after",
            return Err(crate::failpoint::db_error().into())
        );
        let mut report = TickReport::default();
        let snapshot = snapshot::take(pool, mode, &gate, &mut report).await?;
        let (size, sizing) = pool_size::in_force(&pool.db, &pool.settings.size).await?;
        let plan = plan::decide(
            &snapshot,
            &rules(&pool.settings, size, sizing, pool.provider.can_rename()),
            mode,
        );
        report.instances = Some(snapshot.rows.len());
        report.health_checked = Some(snapshot.health.len());
        report.target = Some(plan.target.clone());
        report.creation_paused = snapshot.creation_paused.clone();
        if mode == Mode::Full {
            crate::failpoint!("tick.sample.before");
            if let Err(e) = samples::record(&pool.db, &sample(&snapshot, &plan.target)).await {
                report.error("recording the pool's target", None, &e);
            }
        }
        if let Err(why) =
            execute::run(pool, &snapshot, plan, mode, &gate, &mut report, reserved).await
        {
            report.cut(why);
        }
        Ok::<_, Error>(report)
    };
    // Everything under the lock ends within the tick's bound, whatever hangs (a statement, a
    // stalled step): a holder that hangs would otherwise stop every replica's ticks for as long.
    // What is cut stops on whatever line it was at, as a process dying there (see `Gate::bounded`).
    // Later than the steps' own cut (`Gate::bounded`, at the same bound), so that a step cut
    // there is still recorded (a failed destroy's backoff, the rows destroyed).
    let locked_until = started + pool.settings.tick_bound() + pool.settings.tick_overrun();
    let outcome = match tokio::time::timeout_at(
        locked_until,
        tracing::Instrument::instrument(work, span.clone()),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => {
            let mut report = TickReport::default();
            report.cut(CutShort::Budget);
            Ok(report)
        }
    };
    let succeeded = matches!(&outcome, Ok(report) if report.cut_short.is_none());
    let bookkeeping = async {
        // A tick cut short left work for the next one: it is not the success /metrics reports.
        if succeeded {
            // Under the lock still: one tick at a time writes this row.
            crate::failpoint!("tick.record.before");
            if let Err(e) =
                crate::metrics::record_tick(&pool.db, started.elapsed(), mode == Mode::Full).await
            {
                tracing::warn!(error = %e, "recording the tick for /metrics");
            }
        }
        // Keeps each scrape's fold small, however rarely /metrics is scraped; a kicked tick
        // leaves it to the next full one.
        if mode != Mode::Kick {
            crate::failpoint!("tick.fold.before");
            if let Err(e) = crate::metrics::fold(&pool.db).await {
                tracing::warn!(error = %e, "folding events into the metrics");
            }
        }
        if let Err(e) = crate::metrics::flush_call_errors(&pool.db, &pool.tally).await {
            tracing::warn!(error = %e, "writing call error counts");
        }
        crate::failpoint!("tick.flush.after");
    };
    // Bounded too, by one call's timeout: what it did not write, the next tick does.
    if tokio::time::timeout(pool.settings.tick_overrun(), bookkeeping)
        .await
        .is_err()
    {
        tracing::warn!("the tick's bookkeeping cut past one call's timeout");
    }
    drop(gate);
    lease.release().await;
    crate::failpoint!("tick.release.after");
    let mut report = outcome?;
    if let Some(batch) = batch {
        crate::failpoint!("tick.create_reserved.before");
        // A creation takes as long as its provider and tools do (a build from source: minutes),
        // not as long as the tick may: it goes on past the tick's end, its rows kept from the
        // reaper by its creator's heartbeat and each of its steps bounded by CREATE_TIMEOUT_MS,
        // and stops starting steps on shutdown. The tick reports it if it ends within the tick's
        // bound. (On Lambda what goes on is frozen with the function and reaped if not thawed.)
        let ids: Vec<String> = batch.rows.iter().map(|row| row.id.clone()).collect();
        let bound = started + pool.settings.tick_bound();
        let (pool, stop) = (pool.clone(), stop.clone());
        let creating = tokio::spawn(tracing::Instrument::instrument(
            async move { creation::create_all(&pool, batch, &Gate::until(stop)).await },
            span,
        ));
        match tokio::time::timeout_at(bound, creating).await {
            Ok(Ok(outcomes)) => report.creations(outcomes),
            Err(_) => report.creating = ids,
            // Its creator fell silent with it: the tick reaps its rows.
            Ok(Err(e)) => tracing::error!(error = %e, "a batch of creations panicked"),
        }
    }
    report.duration_ms = Some(started.elapsed().as_millis() as u64);
    Ok(report)
}
