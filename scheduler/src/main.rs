//! `agentpool-scheduler`: runs the tick every `TICK_INTERVAL_MS` against `DATABASE_URL`.
//!
//! Run as many as you like next to any number of `agentpool serve` replicas: the tick's advisory
//! lock lets one of them work and the others skip.

use std::process::ExitCode;

use tokio_cron_scheduler::{Job, JobScheduler};

use agentpool_core::tick::{self, Mode};
use agentpool_core::{Pool, Settings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    // tokio-cron-scheduler counts repeats in whole seconds: a shorter interval would not repeat.
    let interval = settings
        .tick_interval()
        .ok_or_else(|| anyhow::anyhow!("invalid setting TICK_INTERVAL_MS: 0 turns ticking off; the scheduler needs an interval"))?
        .max(std::time::Duration::from_secs(1));
    let pool = Pool::connect(settings).await?;
    let stop = CancellationToken::new();
    // Ticks run as tasks the scheduler can wait for: on SIGTERM the running one starts no new
    // work, finishes what it started, and only then does the process exit.
    let ticks = TaskTracker::new();
    let scheduler = JobScheduler::new().await?;
    scheduler
        .add(Job::new_repeated_async(interval, {
            let (stop, ticks) = (stop.clone(), ticks.clone());
            move |_id, _scheduler| {
                let (pool, stop) = (pool.clone(), stop.clone());
                let tick = ticks.spawn(async move { tick_once(&pool, &stop).await });
                Box::pin(async move {
                    let _ = tick.await;
                })
            }
        })?)
        .await?;
    scheduler.start().await?;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "scheduler started"
    );
    agentpool_core::shutdown_signal().await;
    tracing::info!("stopping: letting the running tick end");
    stop.cancel();
    let mut scheduler = scheduler;
    scheduler.shutdown().await?;
    ticks.close();
    ticks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

async fn tick_once(pool: &Pool, stop: &CancellationToken) {
    if stop.is_cancelled() {
        return;
    }
    match tick::run_until(pool, Mode::Full, stop).await {
        Ok(report) if report.skipped => {
            tracing::debug!("tick skipped: another process holds the lock")
        }
        Ok(report) => tracing::info!(
            duration_ms = report.duration_ms,
            created = report.created.len(),
            destroyed = report.destroyed.len(),
            transitions = report.transitions.len(),
            errors = report.errors.len(),
            cut_short = ?report.cut_short,
            "tick"
        ),
        Err(e) => tracing::warn!(error = %e, "tick failed"),
    }
}
