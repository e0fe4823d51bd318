//! Creating instances: the same pipeline for the tick, `POST /api/pool/replenish {"count"}` and the
//! SSE stream.
//!
//! The row (`starting`) is inserted first, then the resource is created and recorded at once, so a
//! resource always has a row that knows how to destroy it. Whatever interrupts this leaves a state
//! the tick recovers: a failure sends the row to `destroying` (the tick removes whatever part
//! exists); a creator that dies leaves a `starting` row without a resource, which the tick finds
//! after `CREATE_TIMEOUT_MS` and destroys by name.

use std::sync::Arc;

use futures::StreamExt;
use tracing::Instrument;

use crate::domain::{Actor, InstanceStatus};
use crate::error::{Error, Result};
use crate::gate::{CutShort, Gate};
use crate::instances::{self, Move, Reserved};
use crate::outbound::Failure;
use crate::pool_size;
use crate::providers::{CreateSpec, ResourceRef};
use crate::services;
use crate::tools::{Target, Tool};
use crate::Pool;

pub use crate::progress::{Progress, StepStatus, Unwatched};

/// Provider creations in flight at once.
const CONCURRENCY: usize = 8;

/// Inserts up to `count` `starting` rows, within the pool's `maxTotal` (see [`pool_size`]). A
/// reservation racing a change of the size may use the size just replaced, once.
pub async fn reserve(pool: &Pool, count: u32, actor: Actor, reason: &str) -> Result<Vec<Reserved>> {
    let settings = &pool.settings;
    let size = pool_size::current(&pool.db, &settings.size).await?;
    instances::reserve(
        &pool.db,
        count,
        size.max_total,
        &settings.pool.pool_name_prefix,
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
            let outcome = create_gated(pool, &row, gate, Arc::new(Unwatched)).await;
            (row, outcome)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Creates one reserved row if the gate lets it start; otherwise sends it to `destroying`.
pub async fn create_gated(
    pool: &Pool,
    row: &Reserved,
    gate: &Gate<'_>,
    progress: Arc<dyn Progress>,
) -> Outcome {
    match gate.admit().await {
        Ok(()) => match create_one(pool, row, progress).await {
            Ok(()) => Outcome::Created,
            Err(e) => Outcome::Failed(e),
        },
        Err(why) => {
            abandon(pool, row, &format!("creation not started: {why:?}")).await;
            Outcome::NotStarted(why)
        }
    }
}

/// Creates one reserved row's tools, then its compute resource, recording each the moment it
/// exists. On failure what the earlier steps made is destroyed and the row goes to `destroying`;
/// whatever could not be destroyed at once is still recorded, and the tick finishes the job.
pub async fn create_one(pool: &Pool, row: &Reserved, progress: Arc<dyn Progress>) -> Result<()> {
    let span = tracing::info_span!("create", instance_id = %row.id);
    async {
        let result = provision(pool, row, progress.clone()).await;
        match &result {
            Ok(()) => progress.step("done", StepStatus::Ok, "starting"),
            Err(e) => {
                tracing::warn!(error = %e, "create failed");
                abandon(pool, row, &format!("create failed: {}", e.public_message())).await;
            }
        }
        result
    }
    .instrument(span)
    .await
}

async fn provision(pool: &Pool, row: &Reserved, progress: Arc<dyn Progress>) -> Result<()> {
    for step in &pool.tools.skipped {
        progress.step(step, StepStatus::Skip, &format!("{step} is not configured"));
    }
    let mut env = vec![
        ("OPENCLAW_GATEWAY_TOKEN".into(), row.gateway_token.clone()),
        ("INSTANCE_ID".into(), row.id.clone()),
        (
            "POOL_ENVIRONMENT".into(),
            pool.settings.pool.pool_environment.clone(),
        ),
        ("XMTP_ENV".into(), pool.settings.creation.xmtp_env.clone()),
    ];
    if let Some(model) = &pool.settings.creation.openclaw_primary_model {
        env.push(("OPENCLAW_PRIMARY_MODEL".into(), model.clone()));
    }
    let target = Target {
        instance_id: &row.id,
        name: &row.name,
    };
    let mut made: Vec<(Arc<dyn Tool>, String)> = Vec::new();
    for tool in &pool.tools.tools {
        progress.step(tool.step(), StepStatus::Active, "provisioning");
        match provision_tool(pool, tool, target).await {
            Ok(provisioned) => {
                progress.step(tool.step(), StepStatus::Ok, "provisioned");
                env.extend(provisioned.env);
                made.push((tool.clone(), provisioned.resource_id));
            }
            Err(e) => {
                progress.step(tool.step(), StepStatus::Fail, &e.public_message());
                roll_back(pool, &row.id, &made).await;
                return Err(e);
            }
        }
    }
    if let Err(e) = provision_resource(pool, row, env, progress.clone()).await {
        progress.step(
            e.step().unwrap_or(pool.provider.kind().as_str()),
            StepStatus::Fail,
            &e.public_message(),
        );
        roll_back(pool, &row.id, &made).await;
        return Err(e);
    }
    Ok(())
}

/// Creates one tool's resource and records it at once; a resource that cannot be recorded is
/// destroyed again, so none is left that no row knows.
async fn provision_tool(
    pool: &Pool,
    tool: &Arc<dyn Tool>,
    target: Target<'_>,
) -> Result<crate::tools::Provisioned> {
    let provisioned =
        tokio::time::timeout(pool.settings.creation.create_timeout(), tool.create(target))
            .await
            .map_err(|_| Error::outbound(tool.step(), tool.step(), Failure::TimedOut))??;
    let recorded = services::record(
        &pool.db,
        target.instance_id,
        tool.id(),
        &provisioned.resource_id,
        &provisioned.config,
    )
    .await;
    if let Err(e) = recorded {
        if let Err(undo) = tool.destroy(&provisioned.resource_id).await {
            tracing::warn!(tool = tool.id(), error = %undo, "removing an unrecorded tool resource failed; left to the orphan pass");
        }
        return Err(e);
    }
    tracing::info!(tool = tool.id(), resource_id = %provisioned.resource_id, "tool provisioned");
    Ok(provisioned)
}

/// Destroys the tools a failed creation made, forgetting each one destroyed. What fails stays
/// recorded; the tick destroys it with the row.
async fn roll_back(pool: &Pool, instance_id: &str, made: &[(Arc<dyn Tool>, String)]) {
    for (tool, resource_id) in made {
        match tool.destroy(resource_id).await {
            Ok(()) => {
                if let Err(e) =
                    services::forget(&pool.db, instance_id, tool.id(), resource_id, "rolled back")
                        .await
                {
                    tracing::warn!(tool = tool.id(), error = %e, "forgetting a rolled-back tool resource");
                }
            }
            Err(e) => {
                tracing::warn!(tool = tool.id(), error = %e, "rolling back a tool; the tick will destroy it")
            }
        }
    }
}

async fn provision_resource(
    pool: &Pool,
    row: &Reserved,
    env: Vec<(String, String)>,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let spec = CreateSpec {
        name: row.name.clone(),
        env,
        progress,
    };
    let kind = pool.provider.kind().as_str();
    let created = tokio::time::timeout(
        pool.settings.creation.create_timeout(),
        pool.provider.create(&spec),
    )
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
