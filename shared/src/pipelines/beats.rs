//! Pushed heartbeats: a runtime says it is alive, with its own gateway token, instead of waiting
//! to be asked (README, the runtime contract). A runtime heard from within `HEALTH_INTERVAL_MS` is
//! not due (`tick::snapshot::health_targets`), so one that pushes is spared the pull.
//!
//! 100,000 runtimes beating every 30 s are 3,300 requests a second; they must not become 3,300
//! statements a second. So:
//! - a token is checked against Postgres once per instance and replica, then from memory (a
//!   gateway token never changes for its instance id, and ids are never reused);
//! - a beat is only noted in memory; the first beat after a write schedules the next, one second
//!   later, which writes every beat noted meanwhile in one statement (one at a time per replica);
//! - that statement writes only rows whose stored sign of life is older than a third of
//!   `HEALTH_INTERVAL_MS` (or that are failing): a runtime beating every quarter of the interval
//!   writes at most every other beat, and its row still never becomes due;
//! - rows another transaction holds (a claim, the tick's writes) are skipped rather than waited
//!   for, so a beat never delays a claim nor deadlocks with the tick.
//!
//! A beat lost with a dying replica, or skipped, only delays the evidence: the row becomes due
//! and is asked, and the evidence rules judge the answer as any other.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::Instrument;

use crate::config::secrets_match;
use crate::error::Result;
use crate::Pool;

/// How long beats gather in memory before they are written together.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Tokens remembered per replica before the memory is cleared (about 100 bytes each).
const MAX_KNOWN: usize = 500_000;

/// What became of one beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Noted; written with the next flush if its row is idle or claimed. A beat of any other row
    /// changes nothing: a starting runtime is still asked (to become idle), a crashed one too
    /// (to say which conversation it serves).
    Accepted,
    WrongToken,
    UnknownInstance,
}

/// One replica's beats, between flushes, and the tokens it has checked.
#[derive(Default)]
pub struct Beats {
    known: Mutex<HashMap<String, String>>,
    pending: Mutex<HashSet<String>>,
    /// A flush is scheduled: the beats noted meanwhile go with it.
    scheduled: AtomicBool,
}

impl Beats {
    /// Checks the token and notes the beat. Returns the flush to run [`FLUSH_EVERY`] from now
    /// when none is scheduled yet: the caller runs it where shutdown waits for it.
    pub async fn beat(
        self: &Arc<Self>,
        pool: &Pool,
        id: &str,
        token: Option<&str>,
    ) -> Result<(Beat, Option<BoxFuture<'static, ()>>)> {
        let known = lock(&self.known).get(id).cloned();
        let expected = match known {
            Some(expected) => expected,
            None => {
                let Some(expected) = token_of(pool, id).await? else {
                    return Ok((Beat::UnknownInstance, None));
                };
                let mut known = lock(&self.known);
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
                known.insert(id.to_string(), expected.clone());
                expected
            }
        };
        if !token.is_some_and(|given| secrets_match(given, &expected)) {
            return Ok((Beat::WrongToken, None));
        }
        lock(&self.pending).insert(id.to_string());
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return Ok((Beat::Accepted, None));
        }
        let (beats, pool) = (self.clone(), pool.clone());
        // One flush at a time per replica, however slow Postgres is: beats noted while one runs
        // wait for the next (the set keeps one entry per instance, so it stays bounded).
        let flush = async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                if let Err(e) = beats.flush(&pool).await {
                    tracing::warn!(error = %e, "writing heartbeats");
                }
                beats.scheduled.store(false, Ordering::Release);
                // A beat noted after the flush took the set, but that found this flush still
                // scheduled, is ours to write.
                let left = !lock(&beats.pending).is_empty();
                if !left || beats.scheduled.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
        }
        .instrument(tracing::debug_span!("heartbeats"));
        Ok((Beat::Accepted, Some(Box::pin(flush))))
    }

    /// Writes every beat noted so far; returns how many rows it changed.
    pub async fn flush(&self, pool: &Pool) -> Result<u64> {
        let ids: Vec<String> = std::mem::take(&mut *lock(&self.pending))
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let fresh_enough = pool.settings.health.health_interval().as_secs_f64() / 3.0;
        let written = record(pool, &ids, fresh_enough).await?;
        tracing::debug!(beats = ids.len(), written, "heartbeats written");
        Ok(written)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn token_of(pool: &Pool, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT gateway_token FROM instances WHERE id = $1")
            .bind(id)
            .fetch_optional(&pool.db)
            .await?,
    )
}

/// One statement for every beat of the last second: a good sign of life on each idle or claimed
/// row whose stored one is older than `fresh_enough` seconds (or that is failing). Rows locked
/// elsewhere are skipped, never waited for.
async fn record(pool: &Pool, ids: &[String], fresh_enough: f64) -> Result<u64> {
    let done = sqlx::query(
        "WITH due AS (
           SELECT id FROM instances
            WHERE id = ANY($1) AND status IN ('idle', 'claimed')
              AND (last_ok_at IS NULL OR last_ok_at < now() - make_interval(secs => $2)
                   OR health_failures > 0)
            ORDER BY id
              FOR UPDATE SKIP LOCKED)
         UPDATE instances i
            SET last_ok_at = now(), health_failures = 0, failing_since = NULL
           FROM due WHERE i.id = due.id",
    )
    .bind(ids)
    .bind(fresh_enough)
    .execute(&pool.db)
    .await?;
    Ok(done.rows_affected())
}
