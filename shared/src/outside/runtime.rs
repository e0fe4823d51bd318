//! Client of the agent runtime, in each protocol the seeds' runtimes speak (DESIGN.md, "Runtime
//! protocols"): `pool` (`/pool/health`, `/pool/provision`), `pool-status` (seed 001: readiness at
//! `/pool/status`) and `convos` (OpenClaw's gateway: `/convos/status`, `/convos/conversation`,
//! `/convos/join`). Whatever the protocol, a claim sees one [`ProvisionReply`] or one
//! [`ProvisionError`], so every runtime's failure has the same outcome.
//!
//! Provision is not idempotent (it creates a conversation), so a request the runtime may have
//! acted on is never retried: a failed or timed-out provision sends the instance to `destroying`
//! and the claim moves on. The one exception is a Convos gateway that has just booted: it refuses
//! connections or answers 5xx for a while, having done nothing, so those answers are retried
//! `RUNTIME_RETRY_INTERVAL_MS` apart until `PROVISION_TIMEOUT_MS`. (Should a 5xx come from a
//! gateway that did bind a conversation, the retry meets 409 and the instance is destroyed, never
//! handed out twice.) Health checks are not retried: the next tick asks again, and failures count
//! only over time.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::RuntimeProtocol;
use crate::domain::Health;

pub use crate::calls::ProvisionError;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionRequest {
    pub agent_name: String,
    pub instructions: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionReply {
    pub ok: bool,
    pub invite_url: Option<String>,
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub joined: bool,
    pub status: Option<String>,
}

/// `/pool/health` and `/pool/status`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolHealthReply {
    ready: bool,
    conversation_id: Option<String>,
}

/// `/convos/status`: a conversation already bound means the instance is not clean.
#[derive(Debug, Deserialize)]
struct ConvosStatusReply {
    ready: bool,
    conversation: Option<ConvosConversation>,
}

#[derive(Debug, Deserialize)]
struct ConvosConversation {
    id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConvosCreate<'a> {
    name: &'a str,
    profile_name: &'a str,
    instructions: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ConvosJoin<'a> {
    invite_url: &'a str,
    profile_name: &'a str,
    instructions: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConvosReply {
    invite_url: Option<String>,
    conversation_id: Option<String>,
}

#[derive(Clone)]
pub struct RuntimeClient {
    http: reqwest::Client,
    protocol: RuntimeProtocol,
    health_timeout: Duration,
    provision_timeout: Duration,
    retry_interval: Duration,
}

impl RuntimeClient {
    pub fn new(
        protocol: RuntimeProtocol,
        health_timeout: Duration,
        provision_timeout: Duration,
        retry_interval: Duration,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(health_timeout))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            http,
            protocol,
            health_timeout,
            provision_timeout,
            retry_interval,
        }
    }

    pub fn protocol(&self) -> RuntimeProtocol {
        self.protocol
    }

    /// Readiness, asked with the instance's gateway token as every runtime route is (the Convos
    /// gateway refuses `/convos/status` without it).
    pub async fn health(&self, base_url: &str, gateway_token: &str) -> Health {
        let path = match self.protocol {
            RuntimeProtocol::Pool => "/pool/health",
            RuntimeProtocol::PoolStatus => "/pool/status",
            RuntimeProtocol::Convos => "/convos/status",
        };
        let url = format!("{}{path}", base_url.trim_end_matches('/'));
        let response = match self
            .http
            .get(&url)
            .bearer_auth(gateway_token)
            .timeout(self.health_timeout)
            .send()
            .await
        {
            Ok(response) => response,
            Err(_) => return Health::Unreachable,
        };
        let status = response.status();
        let reply = match self.protocol {
            RuntimeProtocol::Pool | RuntimeProtocol::PoolStatus => response
                .json::<PoolHealthReply>()
                .await
                .map(|r| (r.ready, r.conversation_id)),
            RuntimeProtocol::Convos => response
                .json::<ConvosStatusReply>()
                .await
                .map(|r| (r.ready, r.conversation.map(|c| c.id))),
        };
        match reply {
            Ok((true, conversation_id)) if status.is_success() => Health::Ready { conversation_id },
            Ok(_) => Health::NotReady,
            Err(_) if status == reqwest::StatusCode::SERVICE_UNAVAILABLE => Health::NotReady,
            Err(_) => Health::Unreachable,
        }
    }

    /// Hands the agent its name and instructions and creates or joins its conversation, giving up
    /// after `PROVISION_TIMEOUT_MS` or at `deadline` (the claim's), whichever comes first. What
    /// went wrong is logged here, in the caller's span; the error says only what kind of failure
    /// it was (and never carries the token).
    pub async fn provision(
        &self,
        base_url: &str,
        gateway_token: &str,
        request: &ProvisionRequest,
        deadline: tokio::time::Instant,
    ) -> Result<ProvisionReply, ProvisionError> {
        let base = base_url.trim_end_matches('/');
        match self.protocol {
            RuntimeProtocol::Pool | RuntimeProtocol::PoolStatus => {
                let url = format!("{base}/pool/provision");
                let timeout = self
                    .provision_timeout
                    .min(deadline.saturating_duration_since(Instant::now()));
                let reply: ProvisionReply =
                    self.post(&url, gateway_token, request, timeout).await?;
                if !reply.ok {
                    return Err(ProvisionError::Refused);
                }
                checked(reply)
            }
            RuntimeProtocol::Convos => {
                self.convos_provision(base, gateway_token, request, deadline)
                    .await
            }
        }
    }

    async fn convos_provision(
        &self,
        base: &str,
        gateway_token: &str,
        request: &ProvisionRequest,
        deadline: Instant,
    ) -> Result<ProvisionReply, ProvisionError> {
        let deadline = deadline.min(Instant::now() + self.provision_timeout);
        let mut attempt = 1u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = match &request.join_url {
                Some(invite_url) => self
                    .post::<_, ConvosReply>(
                        &format!("{base}/convos/join"),
                        gateway_token,
                        &ConvosJoin {
                            invite_url,
                            profile_name: &request.agent_name,
                            instructions: &request.instructions,
                        },
                        left,
                    )
                    .await
                    .map(|reply| ProvisionReply {
                        ok: true,
                        invite_url: Some(invite_url.clone()),
                        conversation_id: reply.conversation_id,
                        joined: true,
                        status: Some("joined".into()),
                    }),
                None => self
                    .post::<_, ConvosReply>(
                        &format!("{base}/convos/conversation"),
                        gateway_token,
                        &ConvosCreate {
                            name: &request.agent_name,
                            profile_name: &request.agent_name,
                            instructions: &request.instructions,
                        },
                        left,
                    )
                    .await
                    .map(|reply| ProvisionReply {
                        ok: true,
                        invite_url: reply.invite_url,
                        conversation_id: reply.conversation_id,
                        joined: false,
                        status: Some("created".into()),
                    }),
            };
            let booting = matches!(
                outcome,
                Err(ProvisionError::Unreachable | ProvisionError::Status(500..=599))
            );
            let next = Instant::now() + self.retry_interval;
            if !booting || next >= deadline {
                return outcome.and_then(checked);
            }
            tracing::info!(attempt, "convos gateway not answering yet; trying again");
            attempt += 1;
            tokio::time::sleep_until(next).await;
        }
    }

    async fn post<B: Serialize, R: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        gateway_token: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, ProvisionError> {
        let response = self
            .http
            .post(url)
            .bearer_auth(gateway_token)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                let failure = if e.is_timeout() {
                    ProvisionError::TimedOut
                } else {
                    ProvisionError::Unreachable
                };
                tracing::warn!(error = %e.without_url(), "provision request failed");
                failure
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            // A runtime may quote the request back: its token must not reach the log.
            let body = crate::outbound::Sent::of([gateway_token]).redact(&body);
            tracing::warn!(%status, %body, "provision refused");
            return Err(ProvisionError::Status(status.as_u16()));
        }
        response.json().await.map_err(|e| {
            tracing::warn!(error = %e.without_url(), "provision reply unreadable");
            ProvisionError::BadReply
        })
    }
}

fn checked(reply: ProvisionReply) -> Result<ProvisionReply, ProvisionError> {
    if reply.invite_url.is_none() && reply.conversation_id.is_none() {
        tracing::warn!("provision reply carries neither inviteUrl nor conversationId");
        return Err(ProvisionError::BadReply);
    }
    Ok(reply)
}
