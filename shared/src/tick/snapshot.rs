//! Reads the state the tick decides on: rows, then the provider's resources, then runtime health.
//!
//! Rows are read before resources on purpose: every resource's row is committed before the
//! resource is created, so a resource listed without a row in the snapshot really is an orphan.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::Instrument;

use crate::domain::{Instance, InstanceStatus, INSTANCE_COLUMNS};
use crate::error::Result;
use crate::providers::{ObservedResource, ResourceStatus};
use crate::runtime::Health;
use crate::Pool;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Row {
    #[sqlx(flatten)]
    pub instance: Instance,
    pub resource_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub rows: Vec<Row>,
    pub resources: Vec<ObservedResource>,
    /// Health of runtimes that were asked, by instance id.
    pub health: HashMap<String, Health>,
}

pub async fn take(pool: &Pool) -> Result<Snapshot> {
    let (now, rows) = read_rows(pool).await?;
    let resources = pool.provider.list(&pool.settings.pool_name_prefix).await?;
    let health = check_health(pool, &rows, &resources).await;
    Ok(Snapshot {
        now,
        rows,
        resources,
        health,
    })
}

async fn read_rows(pool: &Pool) -> Result<(DateTime<Utc>, Vec<Row>)> {
    let columns = INSTANCE_COLUMNS
        .split(", ")
        .map(|c| format!("i.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {columns}, f.resource_id
           FROM instances i LEFT JOIN instance_infra f ON f.instance_id = i.id
          ORDER BY i.created_at, i.id"
    ))
    .fetch_all(&pool.db)
    .await?;
    // The database's clock, so that ages compare like with like across replicas.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool.db)
        .await?;
    Ok((now, rows))
}

/// Asks every runtime that should answer, `HEALTH_CONCURRENCY` at a time, each within
/// `HEALTH_TIMEOUT_MS`.
async fn check_health(
    pool: &Pool,
    rows: &[Row],
    resources: &[ObservedResource],
) -> HashMap<String, Health> {
    let running: std::collections::HashSet<&str> = resources
        .iter()
        .filter(|r| r.status == ResourceStatus::Running)
        .map(|r| r.name.as_str())
        .collect();
    let targets: Vec<(String, String)> = rows
        .iter()
        .filter(|row| {
            matches!(
                row.instance.status,
                InstanceStatus::Starting | InstanceStatus::Idle | InstanceStatus::Claimed
            ) && running.contains(row.instance.name.as_str())
        })
        .filter_map(|row| Some((row.instance.id.clone(), row.instance.url.clone()?)))
        .collect();
    futures::stream::iter(targets)
        .map(|(id, url)| {
            let span = tracing::debug_span!("health", instance_id = %id);
            async move {
                let health = pool.runtime.health(&url).await;
                tracing::debug!(?health);
                (id, health)
            }
            .instrument(span)
        })
        .buffer_unordered(pool.settings.health_concurrency)
        .collect()
        .await
}
