//! Recycling: a used instance goes back to the idle pool from its golden checkpoint instead of
//! being destroyed and rebuilt (seed 002: a Sprites restore takes about 15 s, a rebuild about
//! 5 minutes), on providers that can ([`crate::providers::Provider::can_recycle`]).
//!
//! `claimed → recycling` (an operator's `DELETE /api/pool/instances/:id`), then the provider
//! restores the checkpoint with a new gateway token (the previous user was handed the old one),
//! then the runtime must answer ready **and clean** (no conversation) before `recycling → idle`,
//! which also clears the user's fields: E2B's rule, a sandbox goes back only after a successful
//! reset. Any failure, or no success within `RECYCLE_TIMEOUT_MS`, sends the instance to
//! `destroying` and the pool refills. A recycler that dies leaves a `recycling` row; the tick
//! destroys it once it is older than `RECYCLE_TIMEOUT_MS` (`tick/plan/lifecycle.rs`). Every
//! write is fenced by the `status_since` of `recycling`, so a recycler that outlived its time
//! cannot bring back a row the tick already sent away.
//!
//! Nothing of the previous user survives, tool resources included: the resources the claim made
//! (a template's `pool` tools, recorded `made_at_claim`: the user's inbox, number, ...) are
//! destroyed and forgotten before the restore; those the instance was created with belong to the
//! clean instance and stay. One that cannot be destroyed sends the instance to `destroying`,
//! whose teardown destroys what is left, and `finish_recycle` refuses a row that still holds
//! one. The claim's variables never outlive the restore at the provider either: the providers
//! that recycle keep none (`Provider::add_env` is Railway's alone, which does not recycle), and a
//! restore brings back the variables of the checkpoint, with only a new gateway token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::domain::{new_gateway_token, Actor, Health, InstanceStatus};
use crate::error::{Error, Result};
use crate::instances::{self, Move};
use crate::providers::ResourceRef;
use crate::{services, Pool};

/// Pause between readiness checks of a runtime coming back.
const READY_POLL: Duration = Duration::from_millis(100);

/// What became of an instance an operator let go.
pub struct Released {
    pub previous: InstanceStatus,
    /// `recycling` (on its way back to the pool) or `destroying`.
    pub status: InstanceStatus,
    /// The recycle itself, for the caller to run to its end (a task its shutdown waits for):
    /// the answer does not wait for a restore.
    pub recycle: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>>,
}

/// `DELETE /api/pool/instances/:id`: a claimed instance on a provider that recycles is recycled
/// (by the returned work; the answer says `recycling`), one already recycling is left to its
/// recycler; anything else is destroyed.
pub async fn release(pool: &Pool, id: &str) -> Result<Released> {
    if pool.provider.can_recycle() {
        match instances::start_recycle(&pool.db, id).await {
            Ok(since) => {
                crate::failpoint!(
                    "recycle.start.after",
                    return Err(crate::failpoint::db_error().into())
                );
                let pool = pool.clone();
                let id = id.to_string();
                let span = tracing::info_span!("recycle", instance_id = %id);
                let work = async move { run(&pool, &id, since).await }.instrument(span);
                return Ok(Released {
                    previous: InstanceStatus::Claimed,
                    status: InstanceStatus::Recycling,
                    recycle: Some(Box::pin(work)),
                });
            }
            // Asked twice (a double click, two operators): the recycle under way goes on.
            Err(Error::WrongState {
                actual: InstanceStatus::Recycling,
                ..
            }) => {
                return Ok(Released {
                    previous: InstanceStatus::Recycling,
                    status: InstanceStatus::Recycling,
                    recycle: None,
                })
            }
            Err(Error::WrongState { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Released {
        previous: crate::operator::kill(pool, id).await?,
        status: InstanceStatus::Destroying,
        recycle: None,
    })
}

/// Seed 002's `DELETE /api/pool/instances`: the claimed instances' ids, for bulk actions.
pub async fn claimed(pool: &Pool) -> Result<Vec<String>> {
    instances::claimed_ids(&pool.db).await
}

/// Recycles an instance that is `recycling` since `since`, or sends it to `destroying`.
/// Returns whether it went back to idle.
pub async fn run(pool: &Pool, id: &str, since: DateTime<Utc>) -> bool {
    let limit = pool.settings.creation.recycle_timeout();
    let outcome = match tokio::time::timeout(limit, restore(pool, id, since)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::provider(
            pool.provider.kind().as_str(),
            format!("recycle not done within {} ms", limit.as_millis()),
        )),
    };
    let failure = match outcome {
        Ok((url, token)) => {
            crate::failpoint!(
                "recycle.finish.before",
                return destroy_instead(pool, id, since, crate::failpoint::db_error().into()).await
            );
            let finished = instances::finish_recycle(&pool.db, id, since, &url, &token).await;
            crate::failpoint!(
                "recycle.finish.after",
                return destroy_instead(pool, id, since, crate::failpoint::db_error().into()).await
            );
            match finished {
                Ok(true) => {
                    tracing::info!("recycled: idle again");
                    return true;
                }
                Ok(false) => {
                    // Moved meanwhile (the tick gave up on it): its new owner decides. Or a
                    // claim-time resource is still recorded (forgotten by no one): never idle
                    // dirty, and the destroy below is fenced like the rest.
                    Error::provider(
                        pool.provider.kind().as_str(),
                        "the row moved on meanwhile, or still holds a claim's resource",
                    )
                }
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    destroy_instead(pool, id, since, failure).await
}

/// A recycle that failed: `recycling → destroying` (fenced: a row that moved on is left to its
/// new owner), whose teardown destroys every resource left. Returns false, for [`run`].
async fn destroy_instead(pool: &Pool, id: &str, since: DateTime<Utc>, failure: Error) -> bool {
    tracing::warn!(error = %failure, "recycle failed; destroying instead");
    let moves = [Move {
        id: id.to_string(),
        since,
        reason: format!("recycle failed: {}", failure.public_message()),
    }];
    crate::failpoint!("recycle.destroy_instead.before", return false);
    let moved = instances::transition(
        &pool.db,
        InstanceStatus::Recycling,
        InstanceStatus::Destroying,
        &moves,
        Actor::Operator,
    )
    .await;
    crate::failpoint!("recycle.destroy_instead.after", return false);
    if let Err(e) = moved {
        tracing::error!(error = %e, "could not send a failed recycle to destroying; the tick will, past RECYCLE_TIMEOUT_MS");
    }
    false
}

/// Destroys and forgets the tool resources the previous claim made, each forget fenced by the
/// recycle's `status_since`. Any that cannot be destroyed or forgotten is an error: the instance
/// is destroyed instead, never returned with the previous user's resource.
async fn drop_claim_tools(pool: &Pool, id: &str, since: DateTime<Utc>) -> Result<()> {
    let kind = pool.provider.kind().as_str();
    for owned in services::made_at_claim(&pool.db, id).await? {
        let Some(tool) = pool.tools.get(&owned.tool_id) else {
            // Its tool is not configured any more: only the teardown can abandon it for an
            // operator.
            return Err(Error::provider(
                kind,
                format!(
                    "claim-time {} cannot be destroyed: the tool is not configured",
                    owned.tool_id
                ),
            ));
        };
        crate::failpoint!(
            "recycle.tool_destroy.before",
            return Err(Error::outbound(
                tool.step(),
                "delete",
                crate::outbound::Failure::Connection
            ))
        );
        tool.destroy(&owned.resource_id).await?;
        crate::failpoint!(
            "recycle.tool_destroy.after",
            return Err(Error::outbound(
                tool.step(),
                "delete",
                crate::outbound::Failure::Connection
            ))
        );
        let forgotten =
            services::forget_recycled(&pool.db, id, since, &owned.tool_id, &owned.resource_id)
                .await?;
        crate::failpoint!(
            "recycle.tool_forget.after",
            return Err(crate::failpoint::db_error().into())
        );
        if !forgotten {
            return Err(Error::provider(kind, "the row moved on meanwhile"));
        }
        tracing::info!(tool = %owned.tool_id, resource_id = %owned.resource_id, "claim-time resource destroyed");
    }
    Ok(())
}

/// Restores the golden checkpoint with a new gateway token and waits for the runtime to answer
/// ready and clean. Returns its URL and the new token.
async fn restore(pool: &Pool, id: &str, since: DateTime<Utc>) -> Result<(String, String)> {
    let kind = pool.provider.kind().as_str();
    // First, so that a resource that will not go costs no restore.
    drop_claim_tools(pool, id, since).await?;
    let (name, resource_id, details) = instances::infra_of(&pool.db, id)
        .await?
        .ok_or_else(|| Error::provider(kind, "no resource recorded"))?;
    let resource = ResourceRef {
        name,
        resource_id: Some(resource_id),
        details,
    };
    let token = new_gateway_token();
    crate::failpoint!(
        "recycle.provider_recycle.before",
        return Err(Error::provider(kind, "failpoint: restore failed"))
    );
    let created = pool
        .provider
        .recycle(
            &resource,
            &[("OPENCLAW_GATEWAY_TOKEN".to_string(), token.clone())],
        )
        .await
        .ok_or_else(|| Error::provider(kind, "this provider does not recycle"))??;
    crate::failpoint!(
        "recycle.provider_recycle.after",
        return Err(Error::provider(kind, "failpoint: restore failed"))
    );
    ready_and_clean(pool, &created.url, &token).await?;
    Ok((created.url, token))
}

/// Waits until the runtime at `url` answers ready; a runtime that answers in a conversation is
/// not clean, and is an error at once. The caller bounds the wait.
pub async fn ready_and_clean(pool: &Pool, url: &str, gateway_token: &str) -> Result<()> {
    let kind = pool.provider.kind().as_str();
    loop {
        match pool.runtime.health(url, gateway_token).await {
            Health::Ready {
                conversation_id: None,
            } => return Ok(()),
            Health::Ready {
                conversation_id: Some(conversation),
            } => {
                return Err(Error::provider(
                    kind,
                    format!("not clean: the runtime is in conversation {conversation}"),
                ))
            }
            _ => tokio::time::sleep(READY_POLL).await,
        }
    }
}
