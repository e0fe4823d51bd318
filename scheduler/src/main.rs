//! `agentpool-scheduler`: runs the tick every `TICK_INTERVAL_MS` against `DATABASE_URL`.
//!
//! Run as many as you like next to any number of `agentpool serve` replicas: the tick's advisory
//! lock lets one of them work and the others skip.

use std::process::ExitCode;

use tokio_cron_scheduler::{Job, JobScheduler};

use agentpool_core::tick::{self, Mode};
use agentpool_core::{Pool, Settings};

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
        .max(std::time::Duration::from_secs(1));
    let pool = Pool::connect(settings).await?;
    let scheduler = JobScheduler::new().await?;
    scheduler
        .add(Job::new_repeated_async(
            interval,
            move |_id, _scheduler| {
                let pool = pool.clone();
                Box::pin(async move {
                    match tick::run(&pool, Mode::Full).await {
                        Ok(report) if report.skipped => {
                            tracing::debug!("tick skipped: another process holds the lock")
                        }
                        Ok(report) => tracing::info!(
                            duration_ms = report.duration_ms,
                            created = report.created.len(),
                            destroyed = report.destroyed.len(),
                            transitions = report.transitions.len(),
                            errors = report.errors.len(),
                            "tick"
                        ),
                        Err(e) => tracing::warn!(error = %e, "tick failed"),
                    }
                })
            },
        )?)
        .await?;
    scheduler.start().await?;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "scheduler started"
    );
    agentpool_core::shutdown_signal().await;
    let mut scheduler = scheduler;
    scheduler.shutdown().await?;
    Ok(())
}
