//! Connection pool and migrations. Queries live next to the code that uses them.

pub mod embedded;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::error::Result;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long start-up waits for an unreachable database before giving up: long enough to ride
/// out a Postgres restart or failover, short enough that a wrong address fails visibly.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Opens the pool and checks one connection. A database that is down or restarting is retried
/// with backoff for a while; a wrong URL, password or database name fails at once.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("agentpool");
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = PgPoolOptions::new()
            .max_connections(max_connections)
            // A request waits a little for a connection, then fails with a clear 503 instead of
            // hanging.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match connected {
            Ok(pool) => return Ok(pool),
            Err(e) if unavailable(&e) && tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "database unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The database is down, restarting or out of connections: worth retrying, and a client of the
/// API may simply retry too.
pub fn unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // Class 57 (operator intervention: shutdown, restart) and 08 (connection exception).
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("57") || code.starts_with("08")),
        _ => false,
    }
}

/// Runs pending migrations. sqlx holds a Postgres advisory lock while it migrates, so replicas
/// that start together apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
