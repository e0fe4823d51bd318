//! Creating instances: the same pipeline for the tick, `POST /api/pool/replenish {"count"}` and the
//! SSE stream.
//!
//! The row (`starting`) is inserted first, then the resource is created and recorded at once, so a
//! resource always has a row that knows how to destroy it. Whatever interrupts this leaves a state
//! the tick recovers: a failure sends the row to `destroying` (the tick removes whatever part
//! exists); a creator that dies leaves a `starting` row without a resource, which the tick finds
//! and destroys by name once the creator has been silent for `CREATE_TIMEOUT_MS`.
//!
//! A batch of creations has one [`Creator`], whose heartbeat (`creators.alive_at`) says it still
//! works: rows waiting their turn in a long batch, or a creation that is merely slow, are never
//! taken for abandoned.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::capacity;
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

/// The heartbeat's beats per `CREATE_TIMEOUT_MS`: a creator misses three in a row before its
/// rows may be reaped.
const BEATS_PER_TIMEOUT: u32 = 4;

/// One batch of creations in this process, alive (to every replica's tick) while its heartbeat
/// runs. Dropped without [`Creator::finish`] (the work was cancelled, the task aborted) it falls
/// silent, as a creator that died does.
pub struct Creator {
    id: Uuid,
    heartbeat: tokio::task::JoinHandle<()>,
    db: PgPool,
}

impl Creator {
    async fn start(pool: &Pool) -> Result<Self> {
        let id = Uuid::new_v4();
        crate::failpoint!(
            "creation.creator_start.before",
            return Err(crate::failpoint::db_error().into())
        );
        sqlx::query("INSERT INTO creators (id) VALUES ($1)")
            .bind(id)
            .execute(&pool.db)
            .await?;
        crate::failpoint!(
            "creation.creator_start.after",
            return Err(crate::failpoint::db_error().into())
        );
        let every = (pool.settings.creation.create_timeout() / BEATS_PER_TIMEOUT)
            .max(Duration::from_millis(10));
        let db = pool.db.clone();
        let heartbeat = tokio::spawn(async move {
            let mut timer = tokio::time::interval(every);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
            loop {
                timer.tick().await;
                crate::failpoint!("creation.heartbeat.before", continue);
                let beat = sqlx::query("UPDATE creators SET alive_at = now() WHERE id = $1")
                    .bind(id)
                    .execute(&db)
                    .await;
                crate::failpoint!("creation.heartbeat.after");
                if let Err(e) = beat {
                    // Missed beats let the tick reap this batch's rows without a resource; the
                    // resources made after that are found without a row and deleted as orphans.
                    tracing::warn!(creator = %id, error = %e, "creator heartbeat");
                }
            }
        });
        Ok(Self {
            id,
            heartbeat,
            db: pool.db.clone(),
        })
    }

    /// The batch is over: every row it reserved is created or sent to `destroying`.
    pub async fn finish(self) {
        self.heartbeat.abort();
        crate::failpoint!("creation.creator_finish.before", return);
        let gone = sqlx::query("DELETE FROM creators WHERE id = $1")
            .bind(self.id)
            .execute(&self.db)
            .await;
        crate::failpoint!("creation.creator_finish.after");
        if let Err(e) = gone {
            // A silent creator whose rows are all settled changes nothing; the tick drops it.
            tracing::warn!(creator = %self.id, error = %e, "removing a finished creator");
        }
    }
}

impl Drop for Creator {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Rows reserved for creation, and the creator whose heartbeat keeps them from being reaped.
pub struct Batch {
    pub rows: Vec<Reserved>,
    pub creator: Creator,
}

/// Inserts up to `count` `starting` rows, within the pool's `maxTotal` (see [`pool_size`]), under
/// a new creator. A reservation racing a change of the size may use the size just replaced, once.
pub async fn reserve(pool: &Pool, count: u32, actor: Actor, reason: &str) -> Result<Batch> {
    let settings = &pool.settings;
    let size = pool_size::current(&pool.db, &settings.size).await?;
    let creator = Creator::start(pool).await?;
    crate::failpoint!("creation.reserve.before", {
        creator.finish().await;
        return Err(crate::failpoint::db_error().into());
    });
    let rows = instances::reserve(
        &pool.db,
        count,
        size.max_total,
        &settings.pool.pool_name_prefix,
        Some(creator.id),
        actor,
        reason,
    )
    .await;
    crate::failpoint!("creation.reserve.after", {
        creator.finish().await;
        return Err(crate::failpoint::db_error().into());
    });
    match rows {
        Ok(rows) => Ok(Batch { rows, creator }),
        Err(e) => {
            creator.finish().await;
            Err(e)
        }
    }
}

/// What became of one reserved row.
#[derive(Debug)]
pub enum Outcome {
    Created,
    Failed(Error),
    /// The gate closed (a tick's budget, shutdown) before it started or between two of its steps:
    /// what it had made is destroyed and the row went to `destroying`.
    CutShort(CutShort),
}

/// Why a creation did not finish.
enum Stopped {
    Failed(Error),
    Cut(CutShort),
}

impl From<Error> for Stopped {
    fn from(e: Error) -> Self {
        Stopped::Failed(e)
    }
}

/// Creates the resources of a batch's rows, `CONCURRENCY` at a time. A row whose turn comes after
/// the gate closed is not started and goes to `destroying` at once, rather than waiting to be
/// found.
pub async fn create_all(pool: &Pool, batch: Batch, gate: &Gate<'_>) -> Vec<(Reserved, Outcome)> {
    let Batch { rows, creator } = batch;
    let outcomes = futures::stream::iter(rows)
        .map(|row| async move {
            let outcome = create_gated(pool, &row, gate, Arc::new(Unwatched)).await;
            (row, outcome)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    creator.finish().await;
    outcomes
}

/// Creates one reserved row's tools, then its compute resource, recording each the moment it
/// exists; the gate is asked before each step, so that work bounded by a budget starts no step
/// past it. On failure (or a closed gate) what the earlier steps made is destroyed and the row
/// goes to `destroying`; whatever could not be destroyed at once is still recorded, and the tick
/// finishes the job.
pub async fn create_gated(
    pool: &Pool,
    row: &Reserved,
    gate: &Gate<'_>,
    progress: Arc<dyn Progress>,
) -> Outcome {
    if let Err(why) = gate.admit().await {
        abandon(pool, row, &format!("creation not started: {why:?}")).await;
        return Outcome::CutShort(why);
    }
    let span = tracing::info_span!("create", instance_id = %row.id);
    async {
        // A provider at capacity is not asked again before its Retry-After, by any replica.
        let kind = pool.provider.kind().as_str();
        match capacity::current(&pool.db, kind).await {
            Ok(Some(pause)) => {
                let e = Error::Capacity {
                    provider: pool.provider.kind().as_str(),
                    code: pause.code.clone(),
                    retry_after: (pause.until - chrono::Utc::now())
                        .to_std()
                        .unwrap_or_default(),
                };
                progress.step(kind, StepStatus::Skip, &e.public_message());
                abandon(
                    pool,
                    row,
                    &format!("creation paused: {}", e.public_message()),
                )
                .await;
                return Outcome::Failed(e);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the creation pause; creating anyway"),
        }
        match provision(pool, row, progress.clone(), gate).await {
            Ok(()) => {
                progress.step("done", StepStatus::Ok, "starting");
                Outcome::Created
            }
            Err(Stopped::Failed(e)) => {
                tracing::warn!(error = %e, "create failed");
                if let Error::Capacity {
                    code, retry_after, ..
                } = &e
                {
                    if let Err(db) = capacity::pause(&pool.db, kind, code, *retry_after).await {
                        tracing::error!(error = %db, "recording a capacity pause");
                    }
                }
                abandon(pool, row, &format!("create failed: {}", e.public_message())).await;
                Outcome::Failed(e)
            }
            Err(Stopped::Cut(why)) => {
                tracing::info!(?why, "creation cut short; rolled back");
                abandon(pool, row, &format!("creation cut short: {why:?}")).await;
                Outcome::CutShort(why)
            }
        }
    }
    .instrument(span)
    .await
}

/// What every instance is handed besides its identity and its tools, under the names the seeds'
/// runtimes read (seed 001's template and OpenClaw read `ANTHROPIC_API_KEY` and `XMTP_ENV`;
/// seeds 002 and 003 build OpenClaw at `OPENCLAW_GIT_REF`).
fn instance_variables(settings: &crate::Settings) -> Vec<(String, String)> {
    let creation = &settings.creation;
    let environment = &settings.pool.pool_environment;
    let mut env = vec![
        ("XMTP_ENV".into(), creation.xmtp_env(environment)),
        (
            "OPENCLAW_GIT_REF".into(),
            creation.openclaw_git_ref(environment),
        ),
    ];
    if let Some(key) = &creation.instance_anthropic_api_key {
        env.push(("ANTHROPIC_API_KEY".into(), key.expose().to_string()));
    }
    if let Some(model) = &creation.openclaw_primary_model {
        env.push(("OPENCLAW_PRIMARY_MODEL".into(), model.clone()));
    }
    env
}

async fn provision(
    pool: &Pool,
    row: &Reserved,
    progress: Arc<dyn Progress>,
    gate: &Gate<'_>,
) -> Result<(), Stopped> {
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
    ];
    if let Some(url) = pool.settings.runtime.heartbeat_url(&row.id) {
        env.push(("POOL_HEARTBEAT_URL".into(), url));
    }
    env.extend(instance_variables(&pool.settings));
    let target = Target {
        instance_id: &row.id,
        name: &row.name,
    };
    let mut made: Vec<(Arc<dyn Tool>, String)> = Vec::new();
    let at_creation = pool.settings.creation.tools_at_creation;
    for tool in &pool.tools.tools {
        if !at_creation.at_creation(tool.id()) {
            // Made at claim time, for the templates that name it (TOOLS_AT_CREATION=base).
            progress.step(tool.step(), StepStatus::Skip, "added at claim time");
            continue;
        }
        if let Err(why) = gate.peek() {
            roll_back(pool, &row.id, &made).await;
            return Err(Stopped::Cut(why));
        }
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
                return Err(e.into());
            }
        }
    }
    if let Err(why) = gate.peek() {
        roll_back(pool, &row.id, &made).await;
        return Err(Stopped::Cut(why));
    }
    if let Err(e) = provision_resource(pool, row, env, progress.clone()).await {
        progress.step(
            e.step().unwrap_or(pool.provider.kind().as_str()),
            StepStatus::Fail,
            &e.public_message(),
        );
        roll_back(pool, &row.id, &made).await;
        return Err(e.into());
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
    crate::failpoint!(
        "creation.tool_create.before",
        return Err(Error::outbound(
            tool.step(),
            tool.step(),
            Failure::Connection
        ))
    );
    let provisioned =
        tokio::time::timeout(pool.settings.creation.create_timeout(), tool.create(target))
            .await
            .map_err(|_| Error::outbound(tool.step(), tool.step(), Failure::TimedOut))??;
    crate::failpoint!(
        "creation.tool_create.after",
        return Err(Error::outbound(
            tool.step(),
            tool.step(),
            Failure::Connection
        ))
    );
    let recorded = services::record(
        &pool.db,
        target.instance_id,
        tool.id(),
        &provisioned.resource_id,
        &provisioned.config,
        services::MadeBy::Creation,
    )
    .await;
    crate::failpoint!("creation.tool_record.after", {
        return Err(crate::failpoint::db_error().into());
    });
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
        let destroyed = async {
            crate::failpoint!(
                "creation.roll_back.before",
                return Err(Error::outbound(tool.step(), "delete", Failure::Connection))
            );
            let destroyed = tool.destroy(resource_id).await;
            crate::failpoint!(
                "creation.roll_back.after",
                return Err(Error::outbound(tool.step(), "delete", Failure::TimedOut))
            );
            destroyed
        };
        match destroyed.await {
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
    crate::failpoint!(
        "creation.provider_create.before",
        return Err(Error::provider(kind, "failpoint: create failed"))
    );
    let created = tokio::time::timeout(
        pool.settings.creation.create_timeout(),
        pool.provider.create(&spec),
    )
    .await
    .map_err(|_| Error::provider(kind, "create timed out"))??;
    crate::failpoint!(
        "creation.provider_create.after",
        return Err(Error::provider(kind, "create timed out"))
    );
    let recorded = instances::record_infra(
        &pool.db,
        &row.id,
        kind,
        &created.resource_id,
        &created.url,
        &created.details,
    )
    .await;
    crate::failpoint!("creation.record_infra.after", {
        return Err(crate::failpoint::db_error().into());
    });
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
    if pool.provider.can_recycle() {
        let resource = ResourceRef {
            name: row.name.clone(),
            resource_id: Some(created.resource_id),
            details: created.details,
        };
        golden(pool, row, &resource, &created.url).await?;
    }
    Ok(())
}

/// Seed 002's last steps of a creation on a provider that recycles: the runtime ready, checked
/// clean (no conversation identity yet), then its golden checkpoint taken and its id recorded
/// with the resource. A failure leaves a recorded resource: the row goes to `destroying` and the
/// tick removes it.
async fn golden(pool: &Pool, row: &Reserved, resource: &ResourceRef, url: &str) -> Result<()> {
    let kind = pool.provider.kind().as_str();
    let limit = pool.settings.creation.create_timeout();
    tokio::time::timeout(
        limit,
        crate::recycle::ready_and_clean(pool, url, &row.gateway_token),
    )
    .await
    .map_err(|_| Error::provider(kind, "runtime not ready before its golden checkpoint"))??;
    let details = tokio::time::timeout(limit, pool.provider.checkpoint(resource))
        .await
        .map_err(|_| Error::provider(kind, "golden checkpoint timed out"))?
        .ok_or_else(|| Error::provider(kind, "no checkpoint from a provider that recycles"))??;
    instances::add_infra_details(&pool.db, &row.id, &details).await?;
    tracing::info!(%details, "golden checkpoint taken");
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
    crate::failpoint!("creation.abandon.before", return);
    if let Err(e) = instances::transition(
        &pool.db,
        InstanceStatus::Starting,
        InstanceStatus::Destroying,
        &moves,
        Actor::Tick,
    )
    .await
    {
        tracing::error!(instance_id = %row.id, error = %e, "could not send an unfinished creation to destroying; the tick will find it once its creator is silent");
    }
    crate::failpoint!("creation.abandon.after");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(vars: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        let settings =
            crate::Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .unwrap();
        instance_variables(&settings).into_iter().collect()
    }

    /// As seeds 002 and 003: production pools join XMTP production and build OpenClaw's `main`,
    /// the others `dev` and `staging`; a set value wins.
    #[test]
    fn instances_get_the_older_seeds_variables_with_their_defaults() {
        let dev = variables(&[]);
        assert_eq!(dev["XMTP_ENV"], "dev");
        assert_eq!(dev["OPENCLAW_GIT_REF"], "staging");
        assert!(!dev.contains_key("ANTHROPIC_API_KEY"));
        let production = variables(&[("POOL_ENVIRONMENT", "production")]);
        assert_eq!(production["XMTP_ENV"], "production");
        assert_eq!(production["OPENCLAW_GIT_REF"], "main");
        let set = variables(&[
            ("POOL_ENVIRONMENT", "production"),
            ("INSTANCE_XMTP_ENV", "dev"),
            ("OPENCLAW_GIT_REF", "v1.2"),
            ("INSTANCE_ANTHROPIC_API_KEY", "sk-ant-test-0123456789"),
        ]);
        assert_eq!(set["XMTP_ENV"], "dev");
        assert_eq!(set["OPENCLAW_GIT_REF"], "v1.2");
        assert_eq!(set["ANTHROPIC_API_KEY"], "sk-ant-test-0123456789");
        assert_eq!(
            variables(&[("XMTP_ENV", "production")])["XMTP_ENV"],
            "production"
        );
    }

    #[test]
    fn the_two_names_of_the_xmtp_network_must_agree() {
        let err = crate::Settings::from_vars([
            ("XMTP_ENV".to_string(), "dev".to_string()),
            ("INSTANCE_XMTP_ENV".to_string(), "production".to_string()),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "INSTANCE_XMTP_ENV", "{err}");
    }
}
