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

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::domain::{new_gateway_token, Actor, Health, InstanceStatus};
use crate::error::{Error, Result};
use crate::instances::{self, Move};
use crate::providers::ResourceRef;
use crate::Pool;

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
    let outcome = match tokio::time::timeout(limit, restore(pool, id)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::provider(
            pool.provider.kind().as_str(),
            format!("recycle not done within {} ms", limit.as_millis()),
        )),
    };
    let failure = match outcome {
        Ok((url, token)) => {
            match instances::finish_recycle(&pool.db, id, since, &url, &token).await {
                Ok(true) => {
                    tracing::info!("recycled: idle again");
                    return true;
                }
                Ok(false) => {
                    // Moved meanwhile (the tick gave up on it): its new owner decides.
                    tracing::info!("recycled, but the row moved on meanwhile");
                    return false;
                }
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    tracing::warn!(error = %failure, "recycle failed; destroying instead");
    let moves = [Move {
        id: id.to_string(),
        since,
        reason: format!("recycle failed: {}", failure.public_message()),
    }];
    if let Err(e) = instances::transition(
        &pool.db,
        InstanceStatus::Recycling,
        InstanceStatus::Destroying,
        &moves,
        Actor::Operator,
    )
    .await
    {
        tracing::error!(error = %e, "could not send a failed recycle to destroying; the tick will, past RECYCLE_TIMEOUT_MS");
    }
    false
}

/// Restores the golden checkpoint with a new gateway token and waits for the runtime to answer
/// ready and clean. Returns its URL and the new token.
async fn restore(pool: &Pool, id: &str) -> Result<(String, String)> {
    let kind = pool.provider.kind().as_str();
    let (name, resource_id, details) = instances::infra_of(&pool.db, id)
        .await?
        .ok_or_else(|| Error::provider(kind, "no resource recorded"))?;
    let resource = ResourceRef {
        name,
        resource_id: Some(resource_id),
        details,
    };
    let token = new_gateway_token();
    let created = pool
        .provider
        .recycle(
            &resource,
            &[("OPENCLAW_GATEWAY_TOKEN".to_string(), token.clone())],
        )
        .await
        .ok_or_else(|| Error::provider(kind, "this provider does not recycle"))??;
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
