//! What every handler shares. Nothing here matters for correctness: it is all in Postgres.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use agentpool_core::config::Secret;
use agentpool_core::tick::{self, Mode};
use agentpool_core::Pool;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub api_key: Secret,
    pub kicker: Kicker,
}

impl AppState {
    pub fn new(pool: Pool, api_key: Secret) -> Self {
        Self {
            pool,
            api_key,
            kicker: Kicker::default(),
        }
    }
}

/// The least time between the starts of two ticks of one loop.
const KICK_SPACING: Duration = Duration::from_millis(500);

/// Asks this process's tick loop for a tick soon (after a claim, a drain, a kill), so the pool
/// refills without waiting for the schedule. Kicks coalesce; without a running loop they are
/// no-ops, and the scheduler's tick does the work.
#[derive(Clone, Default)]
pub struct Kicker {
    notify: Arc<Notify>,
}

impl Kicker {
    pub fn kick(&self) {
        self.notify.notify_one();
    }

    /// Runs ticks on every kick and, with `every`, on a fixed interval, until `stop` turns true.
    /// A tick in progress is never cut short: stopping waits for it.
    pub async fn run_loop(
        &self,
        pool: Pool,
        every: Option<Duration>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let period = async {
                match every {
                    Some(period) => tokio::time::sleep(period).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = period => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let began = tokio::time::Instant::now();
            match tick::run(&pool, Mode::Full).await {
                Ok(report) if !report.skipped => tracing::debug!(
                    created = report.created.len(),
                    destroyed = report.destroyed.len(),
                    transitions = report.transitions.len(),
                    "tick"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "tick failed"),
            }
            // A burst of claims needs one tick, not one per claim: kicks that arrive meanwhile
            // coalesce into the next one.
            tokio::select! {
                _ = tokio::time::sleep_until(began + KICK_SPACING) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }
}
