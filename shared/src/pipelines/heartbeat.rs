//! Keep-alive for providers whose instances sleep when left alone (seed 002: a sprite idle for
//! about 30 s is suspended, and its agent's XMTP connection dies with it).
//!
//! Every `HEARTBEAT_INTERVAL_MS` each replica calls [`beat`] (`serve`'s own timer, and
//! `agentpool-scheduler` in-process or through `POST /api/pool/keepalive` for deployments with no
//! long-running replica, such as Lambda); the interval is a numbered slot, and only the caller
//! whose insert of that slot into `heartbeat_rounds` wins pings the fleet, so three replicas and
//! a scheduler send as many beats as one. A ping is a request to the runtime through its
//! public URL (what keeps a sprite awake). Seed 002's escalation: after three failed pings in a
//! row the instance is woken (an exec of `true`) and pinged again; still silent, an idle one is
//! destroyed and a claimed one is crashed (the tick's usual rules take it from there).

use futures::StreamExt;
use serde::Serialize;

use crate::domain::{Actor, Health, InstanceStatus};
use crate::error::Result;
use crate::instances::{self, Move};
use crate::providers::ResourceRef;
use crate::Pool;

/// Failed pings in a row before the instance is woken.
const FAILED_PINGS: i32 = 3;
/// Pause between pings of a runtime just woken.
const WAKE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// What one round of beats did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Round {
    /// The interval's number: Unix time in ms divided by `HEARTBEAT_INTERVAL_MS`.
    pub slot: i64,
    pub pinged: usize,
    pub failed: usize,
    pub woken: usize,
    /// Instances still silent after waking: idle ones sent to `destroying`, claimed ones crashed.
    pub given_up: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct Target {
    id: String,
    name: String,
    url: String,
    gateway_token: String,
    status: InstanceStatus,
    status_since: chrono::DateTime<chrono::Utc>,
    resource_id: String,
    details: serde_json::Value,
}

/// Sends this interval's beats if no replica has yet; `None` when another did (or the provider
/// needs none).
pub async fn beat(pool: &Pool) -> Result<Option<Round>> {
    if !pool.provider.keeps_alive() {
        return Ok(None);
    }
    let interval = i64::try_from(pool.settings.tick.heartbeat_interval_ms).unwrap_or(i64::MAX);
    let slot: Option<i64> = sqlx::query_scalar(
        "INSERT INTO heartbeat_rounds (slot)
         VALUES (floor(extract(epoch FROM now()) * 1000 / $1)::bigint)
         ON CONFLICT DO NOTHING RETURNING slot",
    )
    .bind(interval)
    .fetch_optional(&pool.db)
    .await?;
    let Some(slot) = slot else {
        return Ok(None);
    };
    crate::failpoint!(
        "heartbeat.slot.after",
        return Err(crate::failpoint::db_error().into())
    );
    sqlx::query("DELETE FROM heartbeat_rounds WHERE slot < $1")
        .bind(slot - 1000)
        .execute(&pool.db)
        .await?;
    let targets: Vec<Target> = sqlx::query_as(
        "SELECT i.id, i.name, i.url, i.gateway_token, i.status, i.status_since, f.resource_id, f.details
           FROM instances i JOIN instance_infra f ON f.instance_id = i.id
          WHERE i.status IN ('idle', 'claimed') AND i.url IS NOT NULL",
    )
    .fetch_all(&pool.db)
    .await?;
    let mut round = Round {
        slot,
        pinged: targets.len(),
        ..Round::default()
    };
    let concurrency = pool.settings.health.health_concurrency.max(1);
    let outcomes: Vec<(Target, Outcome)> = futures::stream::iter(targets)
        .map(|target| async move {
            let outcome = keep_alive(pool, &target).await;
            (target, outcome)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (target, outcome) in outcomes {
        match outcome {
            Outcome::Alive => {}
            Outcome::Failed => round.failed += 1,
            Outcome::Woken => {
                round.failed += 1;
                round.woken += 1;
            }
            Outcome::Dead => {
                round.failed += 1;
                round.woken += 1;
                // One that cannot be given up now is pinged, woken and given up again next
                // round; the others still go.
                match give_up(pool, &target).await {
                    Ok(()) => round.given_up.push(target.id),
                    Err(e) => {
                        tracing::warn!(instance_id = %target.id, error = %e, "giving up a silent instance")
                    }
                }
            }
        }
    }
    Ok(Some(round))
}

enum Outcome {
    Alive,
    Failed,
    /// Silent three times, answered once woken.
    Woken,
    /// Silent even after waking.
    Dead,
}

async fn answers(pool: &Pool, target: &Target) -> bool {
    crate::failpoint!("heartbeat.ping.before", return false);
    let health = pool
        .runtime
        .health(&target.url, &target.gateway_token)
        .await;
    crate::failpoint!("heartbeat.ping.after", return false);
    !matches!(health, Health::Unreachable)
}

async fn keep_alive(pool: &Pool, target: &Target) -> Outcome {
    if answers(pool, target).await {
        if let Err(e) = set_failures(pool, &target.id, 0).await {
            tracing::warn!(instance_id = %target.id, error = %e, "recording a ping");
        }
        return Outcome::Alive;
    }
    let failures = match bump_failures(pool, &target.id).await {
        Ok(failures) => failures,
        Err(e) => {
            tracing::warn!(instance_id = %target.id, error = %e, "recording a failed ping");
            return Outcome::Failed;
        }
    };
    if failures < FAILED_PINGS {
        return Outcome::Failed;
    }
    let resource = ResourceRef {
        name: target.name.clone(),
        resource_id: Some(target.resource_id.clone()),
        details: target.details.clone(),
    };
    let woken = async {
        crate::failpoint!(
            "heartbeat.wake.before",
            return Some(Err(crate::error::Error::provider(
                pool.provider.kind().as_str(),
                "failpoint: wake failed",
            )))
        );
        let woken = pool.provider.wake(&resource).await;
        crate::failpoint!(
            "heartbeat.wake.after",
            return Some(Err(crate::error::Error::provider(
                pool.provider.kind().as_str(),
                "failpoint: wake failed",
            )))
        );
        woken
    }
    .await;
    if let Some(Err(e)) = woken {
        tracing::warn!(instance_id = %target.id, error = %e, "waking a silent instance");
    }
    // A woken runtime takes a moment to listen again: asked until one health timeout passed.
    let deadline = tokio::time::Instant::now() + pool.settings.health.health_timeout();
    loop {
        if answers(pool, target).await {
            if let Err(e) = set_failures(pool, &target.id, 0).await {
                tracing::warn!(instance_id = %target.id, error = %e, "recording a ping");
            }
            return Outcome::Woken;
        }
        if tokio::time::Instant::now() >= deadline {
            return Outcome::Dead;
        }
        tokio::time::sleep(WAKE_POLL).await;
    }
}

async fn set_failures(pool: &Pool, id: &str, failures: i32) -> Result<()> {
    sqlx::query("UPDATE instances SET ping_failures = $2 WHERE id = $1 AND ping_failures <> $2")
        .bind(id)
        .bind(failures)
        .execute(&pool.db)
        .await?;
    Ok(())
}

async fn bump_failures(pool: &Pool, id: &str) -> Result<i32> {
    Ok(sqlx::query_scalar(
        "UPDATE instances SET ping_failures = ping_failures + 1 WHERE id = $1 RETURNING ping_failures",
    )
    .bind(id)
    .fetch_optional(&pool.db)
    .await?
    .unwrap_or(0))
}

/// Idle → destroying, claimed → crashed, fenced by the status the round saw.
async fn give_up(pool: &Pool, target: &Target) -> Result<()> {
    let to = match target.status {
        InstanceStatus::Idle => InstanceStatus::Destroying,
        _ => InstanceStatus::Crashed,
    };
    let moves = [Move {
        id: target.id.clone(),
        since: target.status_since,
        reason: format!("silent to {FAILED_PINGS} keep-alive pings and after waking"),
    }];
    crate::failpoint!(
        "heartbeat.give_up.before",
        return Err(crate::failpoint::db_error().into())
    );
    instances::transition(&pool.db, target.status, to, &moves, Actor::Tick).await?;
    crate::failpoint!(
        "heartbeat.give_up.after",
        return Err(crate::failpoint::db_error().into())
    );
    tracing::warn!(instance_id = %target.id, %to, "keep-alive gave up");
    Ok(())
}
