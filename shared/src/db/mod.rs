//! Connection pool and migrations. Queries live next to the code that uses them.

pub mod embedded;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::error::Result;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // A request waits a little for a connection, then fails with a clear 503 instead of hanging.
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name("agentpool"))
        .await?;
    Ok(pool)
}

/// Runs pending migrations. sqlx holds a Postgres advisory lock while it migrates, so replicas
/// that start together apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
