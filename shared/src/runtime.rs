//! Client of the agent runtime contract (`/pool/health`, `/pool/provision`).
//!
//! Provision is not idempotent (it creates a conversation), so it is never retried: a failed or
//! timed-out provision sends the instance to `destroying` and the claim moves on. Health checks
//! are not retried either: the next tick asks again, and only consecutive failures count.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// 200 with `{"ready": true}`.
    Ready,
    /// Answered, but not ready (503, or `ready: false`).
    NotReady,
    /// No answer: refused, timed out, or garbage.
    Unreachable,
}

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
struct HealthReply {
    ready: bool,
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
            Ok(reply) if status.is_success() && reply.ready => Health::Ready,
            Ok(_) => Health::NotReady,
            Err(_) if status == reqwest::StatusCode::SERVICE_UNAVAILABLE => Health::NotReady,
            Err(_) => Health::Unreachable,
        }
    }

    /// Calls `POST /pool/provision`. The error is a message fit for logs: it never carries the token.
    pub async fn provision(
        &self,
        base_url: &str,
        gateway_token: &str,
        request: &ProvisionRequest,
    ) -> Result<ProvisionReply, String> {
        let url = format!("{}/pool/provision", base_url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .bearer_auth(gateway_token)
            .timeout(self.provision_timeout)
            .json(request)
            .send()
            .await
            .map_err(|e| format!("provision request failed: {}", e.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            return Err(format!("provision answered {status}: {body}"));
        }
        let reply: ProvisionReply = response
            .json()
            .await
            .map_err(|e| format!("provision reply unreadable: {}", e.without_url()))?;
        if !reply.ok {
            return Err("provision answered ok=false".into());
        }
        if reply.invite_url.is_none() && reply.conversation_id.is_none() {
            return Err("provision reply carries neither inviteUrl nor conversationId".into());
        }
        Ok(reply)
    }
}
