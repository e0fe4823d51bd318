//! Client of the agent runtime contract (`/pool/health`, `/pool/provision`).
//!
//! Provision is not idempotent (it creates a conversation), so it is never retried: a failed or
//! timed-out provision sends the instance to `destroying` and the claim moves on. Health checks
//! are not retried either: the next tick asks again, and failures count only over time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthReply {
    ready: bool,
    conversation_id: Option<String>,
}

#[derive(Clone)]
pub struct RuntimeClient {
    http: reqwest::Client,
    health_timeout: Duration,
    provision_timeout: Duration,
}

impl RuntimeClient {
    pub fn new(health_timeout: Duration, provision_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(health_timeout))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            http,
            health_timeout,
            provision_timeout,
        }
    }

    pub async fn health(&self, base_url: &str) -> Health {
        let url = format!("{}/pool/health", base_url.trim_end_matches('/'));
        let response = match self
            .http
            .get(&url)
            .timeout(self.health_timeout)
            .send()
            .await
        {
            Ok(response) => response,
            Err(_) => return Health::Unreachable,
        };
        let status = response.status();
        match response.json::<HealthReply>().await {
            Ok(reply) if status.is_success() && reply.ready => Health::Ready {
                conversation_id: reply.conversation_id,
            },
            Ok(_) => Health::NotReady,
            Err(_) if status == reqwest::StatusCode::SERVICE_UNAVAILABLE => Health::NotReady,
            Err(_) => Health::Unreachable,
        }
    }

    /// Calls `POST /pool/provision`. What went wrong is logged here, in the caller's span; the
    /// error says only what kind of failure it was (and never carries the token).
    pub async fn provision(
        &self,
        base_url: &str,
        gateway_token: &str,
        request: &ProvisionRequest,
    ) -> Result<ProvisionReply, ProvisionError> {
        let url = format!("{}/pool/provision", base_url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .bearer_auth(gateway_token)
            .timeout(self.provision_timeout)
            .json(request)
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
            let body: String = body.chars().take(200).collect();
            tracing::warn!(%status, %body, "provision refused");
            return Err(ProvisionError::Status(status.as_u16()));
        }
        let reply: ProvisionReply = response.json().await.map_err(|e| {
            tracing::warn!(error = %e.without_url(), "provision reply unreadable");
            ProvisionError::BadReply
        })?;
        if !reply.ok {
            return Err(ProvisionError::Refused);
        }
        if reply.invite_url.is_none() && reply.conversation_id.is_none() {
            tracing::warn!("provision reply carries neither inviteUrl nor conversationId");
            return Err(ProvisionError::BadReply);
        }
        Ok(reply)
    }
}
