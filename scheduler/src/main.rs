//! `agentpool-scheduler`: runs the full tick on a schedule (`TICK_CRON`, or every
//! `TICK_INTERVAL_MS`), in this process against `DATABASE_URL` or over HTTP by the API at
//! `POOL_URL`.
//!
//! Run as many as you like next to any number of `agentpool serve` replicas: each scheduled slot
//! ticks once (`tick_runs`, see `agentpool_core::tick::slots`), and the tick's advisory lock keeps
//! any other tick from running at the same time.
//!
//! It also sends the keep-alive rounds every `HEARTBEAT_INTERVAL_MS` when the provider's
//! instances sleep (or `SCHEDULER_KEEP_ALIVE=true`): a deployment with no long-running replica
//! (Lambda) has no other timer to send them. One round per interval across every caller
//! (`heartbeat_rounds`, see `agentpool_core::heartbeat`).

mod schedule;
mod trigger;

use std::process::ExitCode;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use agentpool_core::Settings;
use schedule::Schedule;
use trigger::Trigger;

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "agentpool-scheduler: {}",
                agentpool_core::error::describe(e.as_ref())
            );
            ExitCode::from(2)
        }
    }
}

/// Logs on stderr, as `agentpool` writes them: `LOG_FORMAT=json` for machines, `RUST_LOG` to
/// filter.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let schedule = Arc::new(Schedule::from_settings(&settings)?);
    let (keep_alive, provider) = (
        settings.scheduler.scheduler_keep_alive,
        settings.providers.pool_provider,
    );
    let heartbeat_every = settings
        .tick
        .heartbeat_interval()
        .max(std::time::Duration::from_secs(1));
    let trigger = Arc::new(Trigger::from_settings(settings).await?);
    let keep_alive = keep_alive.unwrap_or_else(|| trigger.keeps_alive(provider));
    let stop = CancellationToken::new();
    // Ticks run as tasks the scheduler can wait for: on SIGTERM the running one starts no new
    // work (or its HTTP request is answered), and only then does the process exit. A slot whose
    // time comes while the tick before is still running starts its own (which skips while the
    // lock is held).
    let ticks = TaskTracker::new();
    tracing::info!(
        mode = trigger.mode(),
        target = %trigger.target(),
        schedule = %schedule.describe(),
        keep_alive_every_ms = keep_alive.then_some(heartbeat_every.as_millis() as u64),
        "scheduler started"
    );
    // Firings of one scheduler never share a slot: each takes the slot after the last one's.
    let last = Arc::new(std::sync::Mutex::new(None));
    let job = schedule.job(Box::new({
        let (schedule, trigger, stop, ticks) = (
            schedule.clone(),
            trigger.clone(),
            stop.clone(),
            ticks.clone(),
        );
        move |_id, _scheduler| {
            let slot = {
                let mut last = last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let slot = schedule.slot(chrono::Utc::now(), *last);
                *last = Some(slot);
                slot
            };
            let (trigger, stop) = (trigger.clone(), stop.clone());
            let tick = ticks.spawn(async move {
                if !stop.is_cancelled() {
                    tick_once(&trigger, slot, &stop).await;
                }
            });
            Box::pin(async move {
                let _ = tick.await;
            })
        }
    }))?;
    if let Schedule::Every(_) = *schedule {
        // An interval job repeats from when it is added; added at a slot's time, it fires on them.
        let first = schedule.next_slot(chrono::Utc::now(), None);
        let wait = (first - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = agentpool_core::shutdown_signal() => {
                tracing::info!("stopped");
                return Ok(());
            }
        }
    }
    let mut scheduler = JobScheduler::new().await?;
    scheduler.add(job).await?;
    if keep_alive {
        // No slot of its own to compute: the round's slot is taken in Postgres by whoever
        // calls first in the interval.
        let beats = Job::new_repeated_async(heartbeat_every, {
            let (trigger, stop, ticks) = (trigger.clone(), stop.clone(), ticks.clone());
            move |_id, _scheduler| {
                let (trigger, stop) = (trigger.clone(), stop.clone());
                let round = ticks.spawn(async move {
                    if !stop.is_cancelled() {
                        keep_alive_once(&trigger).await;
                    }
                });
                Box::pin(async move {
                    let _ = round.await;
                })
            }
        })?;
        scheduler.add(beats).await?;
        // The first round now rather than one interval after start-up.
        ticks.spawn({
            let trigger = trigger.clone();
            async move { keep_alive_once(&trigger).await }
        });
    }
    scheduler.start().await?;
    agentpool_core::shutdown_signal().await;
    tracing::info!("stopping: letting the running tick end");
    stop.cancel();
    scheduler.shutdown().await?;
    ticks.close();
    ticks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Runs one slot's tick and logs one line with its result.
async fn tick_once(
    trigger: &Trigger,
    slot: chrono::DateTime<chrono::Utc>,
    stop: &CancellationToken,
) {
    let began = Instant::now();
    let outcome = trigger.tick(slot, stop).await;
    let duration_ms = began.elapsed().as_millis() as u64;
    let mode = trigger.mode();
    match outcome {
        Ok(report) => {
            let count = |field: &str| report[field].as_array().map_or(0, Vec::len);
            tracing::info!(
                mode,
                %slot,
                skipped = report["skipped"].as_bool().unwrap_or(false),
                skipped_because = report["skippedBecause"].as_str(),
                created = count("created"),
                creating = count("creating"),
                destroyed = count("destroyed"),
                transitions = count("transitions"),
                errors = count("errors"),
                cut_short = report["cutShort"].as_str(),
                duration_ms,
                "tick"
            );
        }
        Err(e) => tracing::warn!(
            mode,
            %slot,
            error = %agentpool_core::error::describe(e.as_ref()),
            duration_ms,
            "tick failed"
        ),
    }
}

/// Sends one keep-alive round (or finds this interval's sent) and logs one line with its result.
async fn keep_alive_once(trigger: &Trigger) {
    let began = Instant::now();
    let outcome = trigger.keep_alive().await;
    let duration_ms = began.elapsed().as_millis() as u64;
    let mode = trigger.mode();
    match outcome {
        Ok(report) => {
            let round = &report["round"];
            tracing::info!(
                mode,
                skipped = report["skipped"].as_bool().unwrap_or(false),
                slot = round["slot"].as_i64(),
                pinged = round["pinged"].as_u64(),
                failed = round["failed"].as_u64(),
                woken = round["woken"].as_u64(),
                given_up = round["givenUp"].as_array().map(Vec::len),
                duration_ms,
                "keep-alive"
            );
        }
        Err(e) => tracing::warn!(
            mode,
            error = %agentpool_core::error::describe(e.as_ref()),
            duration_ms,
            "keep-alive failed"
        ),
    }
}
