//! Connection pool and migrations. Queries live next to the code that uses them.

pub mod embedded;

use std::future::Future;
use std::time::Duration;

use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::time::Instant;

use crate::error::Result;

pub use crate::error::unavailable;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long start-up waits for an unreachable database before giving up: long enough to ride
/// out a Postgres restart or failover, short enough that a wrong address fails visibly.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// A pooled connection idle this long is pinged before it is handed out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Opens the pool and checks one connection. A database that is down or restarting is retried
/// with backoff for a while; a wrong URL, password or database name fails at once.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    connect_until(url, max_connections, Instant::now() + CONNECT_PATIENCE).await
}

/// What every process does at start-up: connect, then migrate, riding out a database that goes
/// away in between (it may be restarting just then).
pub async fn open(url: &str, max_connections: u32) -> Result<PgPool> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let pool = connect_until(url, max_connections, deadline).await?;
    patiently("migrating", deadline, migration_unavailable, || {
        MIGRATOR.run(&pool)
    })
    .await?;
    Ok(pool)
}

async fn connect_until(url: &str, max_connections: u32, deadline: Instant) -> Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("agentpool");
    let pool = patiently("connecting", deadline, unavailable, || {
        PgPoolOptions::new()
            .max_connections(max_connections)
            // A request waits a little for a connection, then fails with a clear 503 instead of
            // hanging.
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings every connection it hands out: a round trip per statement. A connection
            // used within the last second is taken as alive; if it is not (Postgres restarted
            // just then) the statement fails as `database unavailable` and the connection is
            // dropped, which is what the ping would have found out anyway.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
    })
    .await?;
    Ok(pool)
}

/// Runs `attempt` until it succeeds, fails for a reason that is not `transient`, or the deadline
/// would pass before the next try.
async fn patiently<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    transient: fn(&E) -> bool,
    mut attempt: F,
) -> std::result::Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Err(e) if transient(&e) && Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what}: database unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

fn migration_unavailable(error: &MigrateError) -> bool {
    matches!(error, MigrateError::Execute(e) if unavailable(e))
}

/// Runs pending migrations. sqlx holds a Postgres advisory lock while it migrates, so replicas
/// that start together apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
