//! Creating instances: the same pipeline for the tick, `POST /api/pool/replenish {"count"}` and the
//! SSE stream.
//!
//! The row (`starting`) is inserted first, then the resource is created and recorded at once, so a
//! resource always has a row that knows how to destroy it. Whatever interrupts this leaves a state
//! the tick recovers: a failure sends the row to `destroying` (the tick removes whatever part
//! exists); a creator that dies leaves a `starting` row without a resource, which the tick finds
//! after `CREATE_TIMEOUT_MS` and destroys by name.

use futures::StreamExt;
use tracing::Instrument;

use crate::domain::{Actor, InstanceStatus};
use crate::error::{Error, Result};
use crate::gate::{CutShort, Gate};
use crate::instances::{self, Move, Reserved};
use crate::providers::{CreateSpec, ResourceRef};
use crate::Pool;

/// Provider creations in flight at once.
const CONCURRENCY: usize = 8;

/// Inserts up to `count` `starting` rows, within `POOL_MAX_TOTAL`.
pub async fn reserve(pool: &Pool, count: u32, actor: Actor, reason: &str) -> Result<Vec<Reserved>> {
    let settings = &pool.settings;
    instances::reserve(
        &pool.db,
        count,
        settings.pool_max_total,
        &settings.pool_name_prefix,
        actor,
        reason,
    )
    .await
}

/// What became of one reserved row.
#[derive(Debug)]
pub enum Outcome {
    Created,
    Failed(Error),
    /// Never started: the gate closed first. The row went to `destroying`.
    NotStarted(CutShort),
}

/// Creates the resources of reserved rows, `CONCURRENCY` at a time. A row whose turn comes after
/// the gate closed is not started and goes to `destroying` at once, rather than waiting for
/// `CREATE_TIMEOUT_MS` to be found.
pub async fn create_all(
    pool: &Pool,
    rows: Vec<Reserved>,
    gate: &Gate<'_>,
) -> Vec<(Reserved, Outcome)> {
    futures::stream::iter(rows)
        .map(|row| async move {
            let outcome = match gate.admit().await {
                Ok(()) => match create_one(pool, &row).await {
                    Ok(()) => Outcome::Created,
                    Err(e) => Outcome::Failed(e),
                },
                Err(why) => {
                    abandon(pool, &row, &format!("creation not started: {why:?}")).await;
                    Outcome::NotStarted(why)
                }
            };
            (row, outcome)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Creates one reserved row's resources and records them. On failure the row goes to
/// `destroying`, so that whatever part of it exists is cleaned up by the tick.
pub async fn create_one(pool: &Pool, row: &Reserved) -> Result<()> {
    let span = tracing::info_span!("create", instance_id = %row.id);
    async {
        let result = provision_resource(pool, row).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "create failed");
            abandon(pool, row, &format!("create failed: {}", e.public_message())).await;
        }
        result
    }
    .instrument(span)
    .await
}

async fn provision_resource(pool: &Pool, row: &Reserved) -> Result<()> {
    let spec = CreateSpec {
        name: row.name.clone(),
        env: vec![
            ("OPENCLAW_GATEWAY_TOKEN".into(), row.gateway_token.clone()),
            ("INSTANCE_ID".into(), row.id.clone()),
            (
                "POOL_ENVIRONMENT".into(),
                pool.settings.pool_environment.clone(),
            ),
        ],
    };
    let kind = pool.provider.kind().as_str();
    let created = tokio::time::timeout(pool.settings.create_timeout(), pool.provider.create(&spec))
        .await
        .map_err(|_| Error::provider(kind, "create timed out"))??;
    let recorded = instances::record_infra(
        &pool.db,
        &row.id,
        kind,
        &created.resource_id,
        &created.url,
        &created.details,
    )
    .await;
    if let Err(e) = recorded {
        // Without a record the resource would be found only as an orphan; remove it now. If that
        // fails too, the orphan pass will.
        if let Err(destroy) = pool
            .provider
            .destroy(&ResourceRef {
                name: row.name.clone(),
                resource_id: Some(created.resource_id),
                details: created.details,
            })
            .await
        {
            tracing::warn!(error = %destroy, "removing an unrecorded resource failed; left to the orphan pass");
        }
        return Err(e);
    }
    tracing::info!(url = %created.url, "created");
    Ok(())
}

/// Sends a reserved row that will not be (fully) created to `destroying`. A row that already left
/// `starting` (the tick found it first) is left as it is.
async fn abandon(pool: &Pool, row: &Reserved, reason: &str) {
    let moves = [Move {
        id: row.id.clone(),
        since: row.status_since,
        reason: reason.to_string(),
    }];
    if let Err(e) = instances::transition(
        &pool.db,
        InstanceStatus::Starting,
        InstanceStatus::Destroying,
        &moves,
        Actor::Tick,
    )
    .await
    {
        tracing::error!(instance_id = %row.id, error = %e, "could not send an unfinished creation to destroying; the tick will find it after CREATE_TIMEOUT_MS");
    }
}
