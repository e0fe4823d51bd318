//! Queries on `instance_services`: the tool resources each instance owns. A resource is recorded
//! the moment it exists and forgotten only once it is destroyed, each step an event in
//! `instance_events`.

use serde_json::Value;
use sqlx::PgPool;

use crate::error::Result;

/// A tool resource an instance owns.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Owned {
    pub instance_id: String,
    pub tool_id: String,
    pub resource_id: String,
}

pub async fn record(
    db: &PgPool,
    instance_id: &str,
    tool_id: &str,
    resource_id: &str,
    config: &Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO instance_services (instance_id, tool_id, resource_id, config)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (instance_id, tool_id, resource_id) DO UPDATE SET status = 'active'",
    )
    .bind(instance_id)
    .bind(tool_id)
    .bind(resource_id)
    .bind(config)
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets a destroyed resource, and says so in the instance's history.
pub async fn forget(
    db: &PgPool,
    instance_id: &str,
    tool_id: &str,
    resource_id: &str,
    why: &str,
) -> Result<()> {
    sqlx::query(
        "WITH d AS (
           DELETE FROM instance_services
            WHERE instance_id = $1 AND tool_id = $2 AND resource_id = $3
           RETURNING instance_id
         )
         INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
         SELECT d.instance_id, i.status, i.status, $2 || ' ' || $4, 'tick'
           FROM d JOIN instances i ON i.id = d.instance_id",
    )
    .bind(instance_id)
    .bind(tool_id)
    .bind(resource_id)
    .bind(why)
    .execute(db)
    .await?;
    Ok(())
}

/// The tool resources of these instances, in one query.
pub async fn owned_by(db: &PgPool, instance_ids: &[&str]) -> Result<Vec<Owned>> {
    Ok(sqlx::query_as(
        "SELECT instance_id, tool_id, resource_id FROM instance_services
          WHERE instance_id = ANY($1::text[]) AND status = 'active'
          ORDER BY id",
    )
    .bind(instance_ids)
    .fetch_all(db)
    .await?)
}
