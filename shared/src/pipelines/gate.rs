//! When new work may start. Long-running work (a tick, a batch of creations) asks the gate before
//! each step that touches the outside, so that it stops starting work, and only that, when its
//! budget is spent, its lock is lost or the process is shutting down. Work already started runs
//! to its end: each step is bounded by its own timeout.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lease::Lease;

/// Why work stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CutShort {
    /// `TICK_BUDGET_MS` was spent; the rest waits for the next tick.
    Budget,
    /// The tick's advisory lock was lost (its connection died): another tick may be running.
    LockLost,
    /// The process is shutting down.
    Shutdown,
}

#[derive(Clone)]
pub struct Gate<'a> {
    deadline: Option<Instant>,
    lease: Option<&'a Lease>,
    stop: CancellationToken,
}

impl Gate<'static> {
    /// Closes only on shutdown: work a client asked for runs to its end otherwise.
    pub fn until(stop: CancellationToken) -> Self {
        Self {
            deadline: None,
            lease: None,
            stop,
        }
    }
}

impl<'a> Gate<'a> {
    /// For a tick: open while its lease is held, before `deadline`, until shutdown.
    pub fn tick(lease: &'a Lease, deadline: Instant, stop: CancellationToken) -> Self {
        Self {
            deadline: Some(deadline),
            lease: Some(lease),
            stop,
        }
    }

    /// The same gate closing `margin` before its deadline, for work that may take that long once
    /// started and must end within the deadline.
    pub fn closing_early(&self, margin: Duration) -> Self {
        Self {
            deadline: self
                .deadline
                .map(|d| d.checked_sub(margin).unwrap_or_else(Instant::now)),
            ..self.clone()
        }
    }

    /// Runs `work` (started while the gate was open) to its end, or cuts it `overrun` past the
    /// deadline: `None` then. A gate without a deadline never cuts. What is cut stops on
    /// whatever line it was at, as a process that dies there; every caller's work is recoverable
    /// from that (the next tick repeats an idempotent step, or reaps what was left).
    pub async fn bounded<T>(
        &self,
        overrun: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        // A delay here holds the work past its overrun, as an outside call that hangs would.
        // (Without the `failpoints` feature the block only awaits `work`.)
        #[allow(clippy::redundant_async_block)]
        let work = async {
            crate::failpoint!("gate.bounded");
            work.await
        };
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline + overrun, work).await.ok(),
            None => Some(work.await),
        }
    }

    /// Without a round trip: for reads (health checks), which a lost lock makes useless, not
    /// harmful.
    pub fn peek(&self) -> Result<(), CutShort> {
        if self.stop.is_cancelled() {
            return Err(CutShort::Shutdown);
        }
        if self.lease.is_some_and(Lease::is_lost) {
            return Err(CutShort::LockLost);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(CutShort::Budget);
        }
        Ok(())
    }

    /// Before a write: also proves that the lease is still held, with a round trip on its
    /// connection.
    pub async fn admit(&self) -> Result<(), CutShort> {
        self.peek()?;
        match self.lease {
            Some(lease) if !lease.check().await => Err(CutShort::LockLost),
            _ => Ok(()),
        }
    }
}
