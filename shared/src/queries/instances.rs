//! Queries on `instances` shared by the API and the tick. Every transition is a compare-and-set
//! on the current status and writes its `instance_events` row in the same statement.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::{
    new_gateway_token, new_instance_id, Actor, Instance, InstanceStatus, INSTANCE_COLUMNS,
};
use crate::error::{Error, Result};

/// Serialises creations so that `POOL_MAX_TOTAL` holds across replicas.
const CREATE_LOCK_KEY: i64 = 0x6167_706f_6f6c_0002;

pub async fn counts(db: &PgPool) -> Result<BTreeMap<InstanceStatus, i64>> {
    let rows: Vec<(InstanceStatus, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM instances GROUP BY status")
            .fetch_all(db)
            .await?;
    let mut counts: BTreeMap<InstanceStatus, i64> =
        InstanceStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    counts.extend(rows);
    Ok(counts)
}

pub async fn get(db: &PgPool, id: &str) -> Result<Instance> {
    sqlx::query_as(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| Error::NotFound(id.to_string()))
}

/// One instance to move: its id, the `status_since` the decision was made on, and why.
#[derive(Debug, Clone)]
pub struct Move {
    pub id: String,
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// Moves each instance from `from` to `to` if it is still in `from` *since the same moment*:
/// an instance that left `from` and came back (claimed and recycled, say) is another incarnation,
/// and a decision made on the old one does not apply. Returns the ids moved. One statement
/// whatever the number of ids.
pub async fn transition(
    db: &PgPool,
    from: InstanceStatus,
    to: InstanceStatus,
    moves: &[Move],
    actor: Actor,
) -> Result<Vec<String>> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = moves.iter().map(|m| m.id.as_str()).collect();
    let since: Vec<DateTime<Utc>> = moves.iter().map(|m| m.since).collect();
    let reasons: Vec<&str> = moves.iter().map(|m| m.reason.as_str()).collect();
    let moved: Vec<String> = sqlx::query_scalar(
        "WITH v AS (
           SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS v(id, since, reason)
         ),
         t AS (
           UPDATE instances i
              SET status = $5, status_since = now(), health_failures = 0, claim_token = NULL,
                  absent_since = NULL, failing_since = NULL,
                  next_attempt_at = CASE WHEN $5 = 'destroying' THEN now() END
             FROM v
            WHERE i.id = v.id AND i.status = $4 AND i.status_since = v.since
           RETURNING i.id, v.reason
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, $4, $5, reason, $6 FROM t
         )
         SELECT id FROM t",
    )
    .bind(&ids)
    .bind(&since)
    .bind(&reasons)
    .bind(from)
    .bind(to)
    .bind(actor.as_str())
    .fetch_all(db)
    .await?;
    Ok(moved)
}

/// Sends one instance to `destroying` from any of `allowed` states, for an operator.
/// Unknown id → `NotFound`; any other state → `WrongState`.
pub async fn request_destroy(
    db: &PgPool,
    id: &str,
    allowed: &[InstanceStatus],
    expected: &'static str,
    reason: &str,
) -> Result<InstanceStatus> {
    let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
    crate::failpoint!(
        "teardown.request_destroy.before",
        return Err(crate::failpoint::db_error().into())
    );
    let row: Option<(InstanceStatus, bool)> = sqlx::query_as(
        "WITH old AS (SELECT id, status FROM instances WHERE id = $1 FOR UPDATE),
         t AS (
           UPDATE instances i
              SET status = 'destroying', status_since = now(), claim_token = NULL,
                  next_attempt_at = now()
             FROM old
            WHERE i.id = old.id AND old.status = ANY($2::text[])
           RETURNING i.id, old.status
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, status, 'destroying', $3, 'operator' FROM t
         )
         SELECT old.status, EXISTS (SELECT 1 FROM t) FROM old",
    )
    .bind(id)
    .bind(&allowed)
    .bind(reason)
    .fetch_optional(db)
    .await?;
    crate::failpoint!(
        "teardown.request_destroy.after",
        return Err(crate::failpoint::db_error().into())
    );
    match row {
        None => Err(Error::NotFound(id.to_string())),
        Some((status, true)) => Ok(status),
        Some((actual, false)) => Err(Error::WrongState {
            id: id.to_string(),
            actual,
            expected,
        }),
    }
}

/// Sends up to `count` idle instances (newest first: the oldest are claimed first) to `destroying`.
pub async fn drain(db: &PgPool, count: u32) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "WITH picked AS (
           SELECT id FROM instances WHERE status = 'idle'
            ORDER BY created_at DESC, id DESC LIMIT $1 FOR UPDATE SKIP LOCKED
         ),
         t AS (
           UPDATE instances i
              SET status = 'destroying', status_since = now(), next_attempt_at = now()
             FROM picked WHERE i.id = picked.id
           RETURNING i.id
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, 'idle', 'destroying', 'drained', 'operator' FROM t
         )
         SELECT id FROM t",
    )
    .bind(i64::from(count))
    .fetch_all(db)
    .await?)
}

/// A row inserted as `starting`, whose provider resource is still to be created.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reserved {
    pub id: String,
    pub name: String,
    pub gateway_token: String,
    pub status_since: DateTime<Utc>,
}

/// Inserts up to `wanted` `starting` rows without exceeding `max_total` live (non-destroying)
/// instances, atomically across replicas. The rows exist before their resources do, so no
/// resource is ever created without a row that knows how to destroy it.
pub async fn reserve(
    db: &PgPool,
    wanted: u32,
    max_total: u32,
    name_prefix: &str,
    creator: Option<uuid::Uuid>,
    actor: Actor,
    reason: &str,
) -> Result<Vec<Reserved>> {
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CREATE_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE status <> 'destroying'")
            .fetch_one(&mut *tx)
            .await?;
    let room = (i64::from(max_total) - live).clamp(0, i64::from(wanted));
    let (mut ids, mut names, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..room {
        let id = new_instance_id();
        names.push(format!("{name_prefix}{id}"));
        ids.push(id);
        tokens.push(new_gateway_token());
    }
    let reserved: Vec<Reserved> = sqlx::query_as(
        "WITH t AS (
           INSERT INTO instances (id, name, status, gateway_token, creator_id)
           SELECT id, name, 'starting', token, $6
             FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, name, token)
           RETURNING id, name, gateway_token, status_since
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, NULL, 'starting', $4, $5 FROM t
         )
         SELECT id, name, gateway_token, status_since FROM t",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&tokens)
    .bind(reason)
    .bind(actor.as_str())
    .bind(creator)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reserved)
}

/// Records where a freshly created resource lives, as soon as it exists.
pub async fn record_infra(
    db: &PgPool,
    id: &str,
    provider: &str,
    resource_id: &str,
    url: &str,
    details: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "WITH f AS (
           INSERT INTO instance_infra (instance_id, provider, resource_id, details)
           VALUES ($1, $2, $3, $5)
           ON CONFLICT (instance_id) DO UPDATE SET resource_id = EXCLUDED.resource_id, details = EXCLUDED.details
         )
         UPDATE instances SET url = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(provider)
    .bind(resource_id)
    .bind(url)
    .bind(details)
    .execute(db)
    .await?;
    Ok(())
}

/// Adds to what the provider recorded of a resource (the golden checkpoint's id).
pub async fn add_infra_details(db: &PgPool, id: &str, details: &serde_json::Value) -> Result<()> {
    sqlx::query("UPDATE instance_infra SET details = details || $2 WHERE instance_id = $1")
        .bind(id)
        .bind(details)
        .execute(db)
        .await?;
    Ok(())
}

/// An instance's name and what its provider recorded (`None` before its resource exists).
pub async fn infra_of(
    db: &PgPool,
    id: &str,
) -> Result<Option<(String, String, serde_json::Value)>> {
    Ok(sqlx::query_as(
        "SELECT i.name, f.resource_id, f.details
           FROM instances i JOIN instance_infra f ON f.instance_id = i.id
          WHERE i.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// `claimed → recycling`, for an operator. Returns the new `status_since` (the recycler's
/// fence); unknown id → `NotFound`; another state → `WrongState`.
pub async fn start_recycle(db: &PgPool, id: &str) -> Result<DateTime<Utc>> {
    let row: Option<(InstanceStatus, Option<DateTime<Utc>>)> = sqlx::query_as(
        "WITH old AS (SELECT id, status FROM instances WHERE id = $1 FOR UPDATE),
         t AS (
           UPDATE instances i
              SET status = 'recycling', status_since = now(), health_failures = 0,
                  failing_since = NULL, absent_since = NULL
             FROM old
            WHERE i.id = old.id AND old.status = 'claimed'
           RETURNING i.id, i.status_since
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, 'claimed', 'recycling', 'recycled by operator', 'operator' FROM t
         )
         SELECT old.status, (SELECT status_since FROM t) FROM old",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    match row {
        None => Err(Error::NotFound(id.to_string())),
        Some((_, Some(since))) => Ok(since),
        Some((actual, None)) => Err(Error::WrongState {
            id: id.to_string(),
            actual,
            expected: "claimed",
        }),
    }
}

/// `recycling → idle` for the recycler that started it (same `status_since`): the user's fields
/// cleared, the new URL and gateway token recorded. False if the row moved meanwhile (the tick
/// destroyed a recycle past its time), or still holds a tool resource a claim made.
pub async fn finish_recycle(
    db: &PgPool,
    id: &str,
    since: DateTime<Utc>,
    url: &str,
    gateway_token: &str,
) -> Result<bool> {
    let moved: Option<String> = sqlx::query_scalar(
        "WITH t AS (
           UPDATE instances
              SET status = 'idle', status_since = now(), url = $3, gateway_token = $4,
                  agent_name = NULL, instructions = NULL, join_url = NULL,
                  conversation_id = NULL, invite_url = NULL, claimed_at = NULL,
                  health_failures = 0, failing_since = NULL, absent_since = NULL,
                  ping_failures = 0, template_id = NULL
            WHERE id = $1 AND status = 'recycling' AND status_since = $2
              -- Never idle with a resource of the previous claim (the recycler forgets each
              -- it destroyed; one left means it was not).
              AND NOT EXISTS (SELECT 1 FROM instance_services s
                               WHERE s.instance_id = $1 AND s.made_at_claim)
           RETURNING id
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, 'recycling', 'idle', 'restored from its golden checkpoint: ready and clean', 'operator' FROM t
         )
         SELECT id FROM t",
    )
    .bind(id)
    .bind(since)
    .bind(url)
    .bind(gateway_token)
    .fetch_optional(db)
    .await?;
    Ok(moved.is_some())
}

/// The ids of every claimed instance, oldest claim first (seed 002's `DELETE /api/pool/instances`).
pub async fn claimed_ids(db: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM instances WHERE status = 'claimed' ORDER BY claimed_at, id",
    )
    .fetch_all(db)
    .await?)
}

/// An instance's gateway token (to blank it wherever it might show).
pub async fn gateway_token(db: &PgPool, id: &str) -> Result<String> {
    sqlx::query_scalar("SELECT gateway_token FROM instances WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| Error::NotFound(id.to_string()))
}
