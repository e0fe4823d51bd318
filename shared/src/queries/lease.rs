//! The tick's advisory lock, held as a lease that can be checked.
//!
//! `pg_try_advisory_xact_lock` lives as long as one transaction on one connection. If that
//! connection dies (Postgres restarts, an operator terminates the backend), the lock is gone and
//! another process may start a tick; nothing tells this one. So the executor checks the lease,
//! with a round trip on the lock's own connection, before each write: a dead connection fails
//! the check, and the tick stops starting work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::Mutex;

use crate::error::Result;

/// A check that takes longer than this counts as a lost lock: the connection may be half-open.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Lease {
    tx: Mutex<Option<Transaction<'static, Postgres>>>,
    lost: AtomicBool,
}

impl Lease {
    /// Takes the lock `key` if no one holds it; `None` if someone does.
    pub async fn try_acquire(db: &PgPool, key: i64) -> Result<Option<Self>> {
        let mut tx = db.begin().await?;
        // The transaction idles between checks; a server-wide idle-in-transaction timeout would
        // end every long tick. This one transaction is exempt.
        let (_, held): (String, bool) = sqlx::query_as(
            "SELECT set_config('idle_in_transaction_session_timeout', '0', true),
                    pg_try_advisory_xact_lock($1)",
        )
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        Ok(held.then(|| Self {
            tx: Mutex::new(Some(tx)),
            lost: AtomicBool::new(false),
        }))
    }

    /// Takes the lock `outer` if no one holds it (`None` if someone does), then waits up to
    /// `max_wait` for the lock `key` behind whoever holds it (`None` if it is not free by then).
    /// Both are held until the lease is released.
    pub async fn acquire_behind(
        db: &PgPool,
        outer: i64,
        key: i64,
        max_wait: Duration,
    ) -> Result<Option<Self>> {
        let mut tx = db.begin().await?;
        let (_, held): (String, bool) = sqlx::query_as(
            "SELECT set_config('idle_in_transaction_session_timeout', '0', true),
                    pg_try_advisory_xact_lock($1)",
        )
        .bind(outer)
        .fetch_one(&mut *tx)
        .await?;
        if !held {
            return Ok(None);
        }
        // Holding the outer lock, waiting for the inner one.
        crate::failpoint!(
            "tick.lease.behind",
            return Err(crate::failpoint::db_error().into())
        );
        let wait_ms = max_wait.as_millis().clamp(1, i32::MAX as u128).to_string();
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(&wait_ms)
            .execute(&mut *tx)
            .await?;
        match sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {}
            // lock_not_available: still held after `max_wait`. Dropping the transaction rolls it
            // back, and `outer` goes with it.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
        sqlx::query("SELECT set_config('lock_timeout', '0', true)")
            .execute(&mut *tx)
            .await?;
        Ok(Some(Self {
            tx: Mutex::new(Some(tx)),
            lost: AtomicBool::new(false),
        }))
    }

    /// Known lost, without asking the database.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Proves that the lock is still held: its transaction still answers. Once false, always
    /// false.
    pub async fn check(&self) -> bool {
        if self.is_lost() {
            return false;
        }
        let mut tx = self.tx.lock().await;
        let alive = match tx.as_mut() {
            Some(tx) => {
                let ping = sqlx::query("SELECT 1").execute(&mut **tx);
                matches!(tokio::time::timeout(CHECK_TIMEOUT, ping).await, Ok(Ok(_)))
            }
            None => false,
        };
        if !alive && !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!("tick lock lost: its connection no longer answers");
        }
        alive
    }

    /// Ends the transaction, and with it the lock.
    pub async fn release(self) {
        if let Some(tx) = self.tx.into_inner() {
            if let Err(e) = tx.commit().await {
                // The connection is gone, and the lock with it.
                tracing::debug!(error = %e, "releasing the tick lock");
            }
        }
    }
}
