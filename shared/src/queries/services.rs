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

/// Who made a resource: the instance's creation (it belongs to the clean instance and stays
/// through a recycle) or a claim (the user's: a recycle destroys it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadeBy {
    Creation,
    Claim,
}

pub async fn record(
    db: &PgPool,
    instance_id: &str,
    tool_id: &str,
    resource_id: &str,
    config: &Value,
    made_by: MadeBy,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO instance_services (instance_id, tool_id, resource_id, config, made_at_claim)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (instance_id, tool_id, resource_id) DO UPDATE SET status = 'active'",
    )
    .bind(instance_id)
    .bind(tool_id)
    .bind(resource_id)
    .bind(config)
    .bind(made_by == MadeBy::Claim)
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

/// The tool resources a claim made on an instance (not those it was created with), for a
/// recycle to destroy.
pub async fn made_at_claim(db: &PgPool, instance_id: &str) -> Result<Vec<Owned>> {
    Ok(sqlx::query_as(
        "SELECT instance_id, tool_id, resource_id FROM instance_services
          WHERE instance_id = $1 AND made_at_claim
          ORDER BY id",
    )
    .bind(instance_id)
    .fetch_all(db)
    .await?)
}

/// Forgets a claim-time resource a recycle destroyed, fenced by the recycle's `status_since`:
/// false if the row moved on meanwhile (then its new owner, the teardown, forgets it).
pub async fn forget_recycled(
    db: &PgPool,
    instance_id: &str,
    since: chrono::DateTime<chrono::Utc>,
    tool_id: &str,
    resource_id: &str,
) -> Result<bool> {
    let forgotten: Option<String> = sqlx::query_scalar(
        "WITH i AS (
           SELECT id FROM instances
            WHERE id = $1 AND status = 'recycling' AND status_since = $2
            FOR UPDATE
         ),
         d AS (
           DELETE FROM instance_services s
            USING i
            WHERE s.instance_id = i.id AND s.tool_id = $3 AND s.resource_id = $4
           RETURNING s.instance_id
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT d.instance_id, 'recycling', 'recycling',
                  $3 || ' destroyed: made by the previous claim', 'operator'
             FROM d
         )
         SELECT id FROM i",
    )
    .bind(instance_id)
    .bind(since)
    .bind(tool_id)
    .bind(resource_id)
    .fetch_optional(db)
    .await?;
    Ok(forgotten.is_some())
}

/// Gives up a resource whose tool is not configured: it leaves the instance (whose teardown may
/// then finish) for `abandoned_resources`, where operators see it, in one statement.
pub async fn abandon(
    db: &PgPool,
    instance_id: &str,
    tool_id: &str,
    resource_id: &str,
) -> Result<()> {
    sqlx::query(
        "WITH d AS (
           DELETE FROM instance_services
            WHERE instance_id = $1 AND tool_id = $2 AND resource_id = $3
           RETURNING instance_id, tool_id, resource_id, config
         ),
         a AS (
           INSERT INTO abandoned_resources (instance_id, instance_name, tool_id, resource_id, config)
           SELECT d.instance_id, i.name, d.tool_id, d.resource_id, d.config
             FROM d JOIN instances i ON i.id = d.instance_id
           ON CONFLICT (tool_id, resource_id) DO NOTHING
         )
         INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
         SELECT d.instance_id, i.status, i.status,
                $2 || ' ' || $3 || ' abandoned: the tool is not configured', 'tick'
           FROM d JOIN instances i ON i.id = d.instance_id",
    )
    .bind(instance_id)
    .bind(tool_id)
    .bind(resource_id)
    .execute(db)
    .await?;
    Ok(())
}

/// A tool resource given up at teardown, as operators see it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Abandoned {
    pub tool_id: String,
    pub resource_id: String,
    /// The instance it belonged to, and the name (tag) the resource carries.
    pub instance_id: String,
    pub instance_name: String,
    pub abandoned_at: chrono::DateTime<chrono::Utc>,
}

/// Every abandoned resource, oldest first.
pub async fn abandoned(db: &PgPool) -> Result<Vec<Abandoned>> {
    Ok(sqlx::query_as(
        "SELECT tool_id, resource_id, instance_id, instance_name, abandoned_at
           FROM abandoned_resources ORDER BY abandoned_at, id",
    )
    .fetch_all(db)
    .await?)
}

/// Forgets an abandoned resource that is gone after all (its tool came back and destroyed it).
pub async fn forget_abandoned(db: &PgPool, tool_id: &str, resource_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM abandoned_resources WHERE tool_id = $1 AND resource_id = $2")
        .bind(tool_id)
        .bind(resource_id)
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
