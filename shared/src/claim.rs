//! The claim: hand one idle instance to a user.
//!
//! 1. One statement takes the oldest idle row (`FOR UPDATE SKIP LOCKED`), marks it `claiming` with
//!    a fresh claim token and records the event.
//! 2. The runtime's `/pool/provision` is called outside any transaction.
//! 3. One statement marks it `claimed`, fenced by the claim token: a claimer that stalled past
//!    `CLAIM_TIMEOUT_MS` finds the row already reaped and cannot overwrite that decision.
//!
//! A runtime that fails leaves its instance possibly half-configured, so it never goes back to
//! `idle`: it goes to `destroying`, and the claim tries the next idle instance.

use tracing::Instrument;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::runtime::ProvisionRequest;
use crate::Pool;

pub const MAX_AGENT_NAME: usize = 100;
pub const MAX_INSTRUCTIONS: usize = 32 * 1024;
pub const MAX_URL: usize = 2048;

/// A validated claim request.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    provision: ProvisionRequest,
}

impl ClaimRequest {
    pub fn new(
        agent_name: String,
        instructions: String,
        join_url: Option<String>,
        profile_image: Option<String>,
        metadata: Option<serde_json::Value>,
    ) -> Result<Self> {
        let agent_name = agent_name.trim().to_string();
        if agent_name.is_empty() {
            return Err(Error::Invalid(
                "agentName must be a non-empty string".into(),
            ));
        }
        if agent_name.chars().count() > MAX_AGENT_NAME {
            return Err(Error::Invalid(format!(
                "agentName must be at most {MAX_AGENT_NAME} characters"
            )));
        }
        if agent_name.chars().any(char::is_control) {
            return Err(Error::Invalid(
                "agentName must not contain control characters".into(),
            ));
        }
        if instructions.trim().is_empty() {
            return Err(Error::Invalid(
                "instructions must be a non-empty string".into(),
            ));
        }
        if instructions.len() > MAX_INSTRUCTIONS {
            return Err(Error::Invalid(format!(
                "instructions must be at most {MAX_INSTRUCTIONS} bytes"
            )));
        }
        for (field, value) in [("joinUrl", &join_url), ("profileImage", &profile_image)] {
            if let Some(url) = value {
                validate_http_url(field, url)?;
            }
        }
        Ok(Self {
            provision: ProvisionRequest {
                agent_name,
                instructions,
                join_url,
                profile_image,
                metadata,
            },
        })
    }

    pub fn agent_name(&self) -> &str {
        &self.provision.agent_name
    }
}

fn validate_http_url(field: &str, value: &str) -> Result<()> {
    let invalid = || Error::Invalid(format!("{field} must be an http(s) URL"));
    if value.len() > MAX_URL {
        return Err(Error::Invalid(format!(
            "{field} must be at most {MAX_URL} characters"
        )));
    }
    let url = reqwest::Url::parse(value).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(())
}

/// What the claimer gets back: seed 000's reply, field for field.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub instance_id: String,
    pub invite_url: Option<String>,
    pub conversation_id: Option<String>,
    pub joined: bool,
    pub gateway_token: String,
    pub gateway_url: String,
}

#[derive(sqlx::FromRow)]
struct Taken {
    id: String,
    url: Option<String>,
    gateway_token: String,
}

pub async fn claim(pool: &Pool, request: &ClaimRequest) -> Result<Claimed> {
    let attempts = pool.settings.claim_max_attempts;
    let mut last_failure = None;
    for attempt in 1..=attempts {
        let token = Uuid::new_v4();
        let Some(taken) = take_idle(pool, token).await? else {
            break;
        };
        let span = tracing::info_span!("claim", instance_id = %taken.id, attempt);
        match provision_taken(pool, request, token, &taken)
            .instrument(span.clone())
            .await?
        {
            Ok(claimed) => {
                span.in_scope(|| tracing::info!(agent_name = request.agent_name(), "claimed"));
                return Ok(claimed);
            }
            Err(message) => {
                span.in_scope(|| tracing::warn!(%message, "claim attempt failed"));
                last_failure = Some(message);
            }
        }
    }
    Err(match last_failure {
        None => Error::NoIdle,
        Some(last) => Error::ClaimFailed { attempts, last },
    })
}

/// Provisions a taken instance. The outer `Result` is the database; the inner one the runtime.
async fn provision_taken(
    pool: &Pool,
    request: &ClaimRequest,
    token: Uuid,
    taken: &Taken,
) -> Result<Result<Claimed, String>> {
    let Some(url) = taken.url.as_deref() else {
        let message = "idle instance has no URL".to_string();
        abandon(pool, &taken.id, token, &message).await?;
        return Ok(Err(message));
    };
    let reply = match pool
        .runtime
        .provision(url, &taken.gateway_token, &request.provision)
        .await
    {
        Ok(reply) => reply,
        Err(message) => {
            abandon(pool, &taken.id, token, &message).await?;
            return Ok(Err(message));
        }
    };
    let finished: Option<String> = sqlx::query_scalar(
        "WITH t AS (
           UPDATE instances
              SET status = 'claimed', claim_token = NULL, status_since = now(), claimed_at = now(),
                  agent_name = $3, instructions = $4, join_url = $5,
                  conversation_id = $6, invite_url = $7, health_failures = 0
            WHERE id = $1 AND claim_token = $2 AND status = 'claiming'
           RETURNING id
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, 'claiming', 'claimed', 'provisioned: conversation ' || coalesce($6, '-'), 'claim'
             FROM t
         )
         SELECT id FROM t",
    )
    .bind(&taken.id)
    .bind(token)
    .bind(&request.provision.agent_name)
    .bind(&request.provision.instructions)
    .bind(&request.provision.join_url)
    .bind(&reply.conversation_id)
    .bind(&reply.invite_url)
    .fetch_optional(&pool.db)
    .await?;
    if finished.is_none() {
        // The tick reaped this claim while we waited on the runtime; its decision stands.
        return Ok(Err(
            "claim fenced out: instance was reaped during provision".into(),
        ));
    }
    Ok(Ok(Claimed {
        instance_id: taken.id.clone(),
        invite_url: reply.invite_url,
        conversation_id: reply.conversation_id,
        joined: reply.joined,
        gateway_token: taken.gateway_token.clone(),
        gateway_url: url.to_string(),
    }))
}

async fn take_idle(pool: &Pool, token: Uuid) -> Result<Option<Taken>> {
    Ok(sqlx::query_as(
        "WITH t AS (
           UPDATE instances
              SET status = 'claiming', claim_token = $1, status_since = now()
            WHERE id = (SELECT id FROM instances WHERE status = 'idle'
                         ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
           RETURNING id, url, gateway_token
         ),
         e AS (
           INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
           SELECT id, 'idle', 'claiming', 'claim started', 'claim' FROM t
         )
         SELECT id, url, gateway_token FROM t",
    )
    .bind(token)
    .fetch_optional(&pool.db)
    .await?)
}

async fn abandon(pool: &Pool, id: &str, token: Uuid, message: &str) -> Result<()> {
    sqlx::query(
        "WITH t AS (
           UPDATE instances
              SET status = 'destroying', claim_token = NULL, status_since = now(),
                  next_attempt_at = now(), last_error = $3
            WHERE id = $1 AND claim_token = $2 AND status = 'claiming'
           RETURNING id
         )
         INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
         SELECT id, 'claiming', 'destroying', 'provision failed: ' || $3, 'claim' FROM t",
    )
    .bind(id)
    .bind(token)
    .bind(message)
    .execute(&pool.db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, instructions: &str, join: Option<&str>) -> Result<ClaimRequest> {
        ClaimRequest::new(
            name.into(),
            instructions.into(),
            join.map(Into::into),
            None,
            None,
        )
    }

    #[test]
    fn validates_fields() {
        assert!(request("trip-planner", "Plan trips.", None).is_ok());
        assert!(request("trip", "x", Some("https://dev.convos.org/v2?i=abc")).is_ok());
        assert!(matches!(request("  ", "x", None), Err(Error::Invalid(_))));
        assert!(matches!(request("a", " \n", None), Err(Error::Invalid(_))));
        assert!(matches!(
            request(&"n".repeat(MAX_AGENT_NAME + 1), "x", None),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            request("a", &"x".repeat(MAX_INSTRUCTIONS + 1), None),
            Err(Error::Invalid(_))
        ));
        for bad in [
            "ftp://x.org/a",
            "not a url",
            "javascript:alert(1)",
            "https://",
        ] {
            assert!(
                matches!(request("a", "x", Some(bad)), Err(Error::Invalid(_))),
                "{bad} accepted"
            );
        }
    }
}
