//! What every handler shares. Nothing here matters for correctness: it is all in Postgres.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use agentpool_core::access::{Records, SessionKey};
use agentpool_core::beats::Beats;
use agentpool_core::config::Secret;
use agentpool_core::tick::{self, Mode};
use agentpool_core::Pool;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub api_key: Secret,
    /// Signs dashboard session cookies; derived from the API key, so a new key ends every session.
    pub session_key: SessionKey,
    pub kicker: Kicker,
    /// Work a request started that must end even if its client goes away (a claim, creations):
    /// it runs as a task here, and shutdown waits for these tasks.
    pub tasks: TaskTracker,
    /// Cancelled when the process starts shutting down: long work starts no new steps.
    pub shutdown: CancellationToken,
    /// Runtimes' pushed heartbeats, gathered here and written once a second.
    pub beats: Arc<Beats>,
    /// The clients with a record of wrong keys, while this process follows them
    /// ([`crate::serve::until_signal`]); a right key from any other client is let in unread.
    pub records: Arc<Records>,
}

impl AppState {
    pub fn new(pool: Pool, api_key: Secret) -> Self {
        Self {
            pool,
            session_key: SessionKey::derive(api_key.expose()),
            api_key,
            kicker: Kicker::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            beats: Arc::default(),
            records: Arc::default(),
        }
    }

    /// Runs `work` to its end whether or not the request that asked for it is still there, in
    /// the request's span (its logs keep the request id).
    pub async fn finish<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.spawn(work).await
    }

    /// Starts `work` as a task shutdown waits for, in the current span.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.tasks.spawn(tracing::Instrument::in_current_span(work))
    }

    /// Stops taking new work and waits for what requests started.
    pub async fn drain(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The least time between the starts of two ticks of one loop.
const KICK_SPACING: Duration = Duration::from_millis(500);

/// Asks this process's tick loop for a tick soon (after a claim, a drain, a kill), so the pool
/// refills without waiting for the schedule. Kicks coalesce; without a running loop they are
/// no-ops, and the scheduled tick does the work.
#[derive(Clone, Default)]
pub struct Kicker {
    notify: Arc<Notify>,
}

impl Kicker {
    pub fn kick(&self) {
        self.notify.notify_one();
    }

    /// Runs a full tick every `every` (if set) and a kicked one (replenish, no fleet-wide health
    /// checks) on each kick, until `stop` is cancelled; then waits for the ticks it started, which
    /// start no new work. Each tick runs as a task of its own: a tick waiting on creations (after
    /// it released the tick lock) puts off neither the next full tick nor the next kick.
    pub async fn run_loop(&self, pool: Pool, every: Option<Duration>, stop: CancellationToken) {
        let mut timer = every.map(|period| {
            let mut timer = tokio::time::interval(period);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        let running = TaskTracker::new();
        // A burst of claims needs one tick, not one per claim: kicks that arrive before this
        // coalesce into the next one. The timer does not wait for it.
        let mut next_kick = tokio::time::Instant::now();
        loop {
            let timed = async {
                match timer.as_mut() {
                    Some(timer) => timer.tick().await,
                    None => std::future::pending().await,
                }
            };
            // The interval first: under steady kicks the full tick is never put off by one.
            let mode = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = timed => Mode::Full,
                _ = async {
                    tokio::time::sleep_until(next_kick).await;
                    self.notify.notified().await
                } => Mode::Kick,
            };
            let began = tokio::time::Instant::now();
            if mode == Mode::Kick {
                next_kick = began + KICK_SPACING;
            }
            let (pool, tick_stop) = (pool.clone(), stop.clone());
            running.spawn(tracing::Instrument::in_current_span(async move {
                match tick::run_until(&pool, mode, &tick_stop).await {
                    Ok(report) if !report.skipped => tracing::debug!(
                        ?mode,
                        created = report.created.len(),
                        creating = report.creating.len(),
                        destroyed = report.destroyed.len(),
                        transitions = report.transitions.len(),
                        cut_short = ?report.cut_short,
                        "tick"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "tick failed"),
                }
            }));
        }
        running.close();
        running.wait().await;
    }
}
