//! `Idempotency-Key`: a claim retried with the same key (after a timeout, say) gets the reply the
//! first one got, for 24 hours, and never a second agent.
//!
//! The key's row is inserted `pending` before the claim starts. The claim's finishing statement
//! marks it `done` with the reply, in the same statement that marks the instance `claimed` (see
//! `provision_taken`), so there is no moment at which an agent was handed out and the key does
//! not know it. A claim that fails forgets its key. A `pending` row older than `CLAIM_TIMEOUT_MS`
//! belongs to a claim that can no longer finish (its deadline has passed, and its finishing
//! statement refuses a key that old), or to a claimer that died: a retry takes it over (the old
//! claimer, fenced out by the attempt id, gives back its instance; a dead one's is reaped by the
//! tick).

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::Pool;

use super::{ClaimRequest, Claimed};

const MAX_KEY_LEN: usize = 255;

/// A validated `Idempotency-Key` header value.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn new(key: &str) -> Result<Self> {
        let valid = !key.is_empty()
            && key.len() <= MAX_KEY_LEN
            && key.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(key.to_string()))
        } else {
            Err(Error::Invalid(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            )))
        }
    }
}

/// Who may finish the claim for a key: the attempt that inserted (or took over) its row.
pub(super) struct Fence {
    pub key: String,
    pub attempt: Uuid,
}

pub(super) enum Begun {
    Replay(Claimed),
    Run(Fence),
}

/// The same request gives the same fingerprint: the provision request serialises its fields in
/// one order, and JSON objects in `metadata` keep their keys sorted.
fn fingerprint(request: &ClaimRequest) -> Result<String> {
    let bytes =
        serde_json::to_vec(&request.identity()).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

pub(super) async fn begin(
    pool: &Pool,
    key: &IdempotencyKey,
    request: &ClaimRequest,
) -> Result<Begun> {
    let fingerprint = fingerprint(request)?;
    let attempt = Uuid::new_v4();
    let claim_timeout_ms = i64::try_from(pool.settings.claim.claim_timeout_ms).unwrap_or(i64::MAX);
    crate::failpoint!(
        "idempotency.begin.before",
        return Err(crate::failpoint::db_error().into())
    );
    let mine: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO claim_requests (key, fingerprint, attempt, status)
         VALUES ($1, $2, $3, 'pending')
         ON CONFLICT (key) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, attempt = EXCLUDED.attempt,
                status = 'pending', reply = NULL, instance_id = NULL, created_at = now()
          WHERE (claim_requests.status = 'pending'
                 AND claim_requests.created_at < now() - $4 * interval '1 millisecond')
             OR claim_requests.created_at < now() - interval '24 hours'
         RETURNING attempt",
    )
    .bind(&key.0)
    .bind(&fingerprint)
    .bind(attempt)
    .bind(claim_timeout_ms)
    .fetch_optional(&pool.db)
    .await?;
    crate::failpoint!(
        "idempotency.begin.after",
        return Err(crate::failpoint::db_error().into())
    );
    if mine == Some(attempt) {
        return Ok(Begun::Run(Fence {
            key: key.0.clone(),
            attempt,
        }));
    }
    let seen: Option<(String, Option<serde_json::Value>)> =
        sqlx::query_as("SELECT fingerprint, reply FROM claim_requests WHERE key = $1")
            .bind(&key.0)
            .fetch_optional(&pool.db)
            .await?;
    match seen {
        Some((seen, _)) if seen != fingerprint => Err(Error::IdempotencyKeyReused),
        Some((_, Some(reply))) => serde_json::from_value(reply)
            .map(Begun::Replay)
            .map_err(|e| Error::io("reading a stored claim reply", std::io::Error::other(e))),
        // Pending, or forgotten by a failed claim a moment ago: a retry will tell.
        _ => Err(Error::ClaimInProgress),
    }
}

/// A claim that handed out nothing forgets its key, so that a retry runs anew.
pub(super) async fn forget(pool: &Pool, fence: &Fence) {
    crate::failpoint!("idempotency.forget.before", return);
    let result = sqlx::query(
        "DELETE FROM claim_requests WHERE key = $1 AND attempt = $2 AND status = 'pending'",
    )
    .bind(&fence.key)
    .bind(fence.attempt)
    .execute(&pool.db)
    .await;
    crate::failpoint!("idempotency.forget.after");
    if let Err(e) = result {
        // The row stays pending; a retry takes it over after CLAIM_TIMEOUT_MS.
        tracing::warn!(error = %e, "forgetting a failed claim's idempotency key");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(IdempotencyKey::new("a3f1-retry-7").is_ok());
        for bad in ["", " ", "key with space", "ключ", &"k".repeat(256)] {
            assert!(IdempotencyKey::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_same_request_has_the_same_fingerprint() {
        let request = |instructions: &str| {
            ClaimRequest::new(
                "a".into(),
                instructions.into(),
                None,
                None,
                Some(serde_json::json!({"b": 1, "a": 2})),
            )
            .unwrap()
        };
        assert_eq!(
            fingerprint(&request("x")).unwrap(),
            fingerprint(&request("x")).unwrap()
        );
        assert_ne!(
            fingerprint(&request("x")).unwrap(),
            fingerprint(&request("y")).unwrap()
        );
    }
}
