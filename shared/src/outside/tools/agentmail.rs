//! An AgentMail inbox per instance, or per claim when a template's claim makes it. Its name is
//! the inbox's `client_id`: the same `client_id` returns the same inbox, so a creation is safe to
//! send again after a lost reply, and a claim's name (marked with the claim) makes a new inbox.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use super::{Listed, Provisioned, Rest, Target, Tool};
use crate::config::AgentMailSettings;
use crate::error::{Error, Result};
use crate::outbound::{Failure, Outbound, Replay};

const SERVICE: &str = "agentmail";

pub struct AgentMail {
    rest: Rest,
    api: String,
    domain: Option<String>,
}

impl AgentMail {
    pub fn from_settings(
        settings: &AgentMailSettings,
        out: impl FnOnce() -> Arc<Outbound>,
    ) -> Option<Self> {
        // Unconfigured, the tool costs nothing (no HTTP client, no TLS roots loaded).
        let key = settings.agentmail_api_key.clone()?;
        Some(Self {
            rest: Rest {
                out: out(),
                service: SERVICE,
                key,
            },
            api: settings.agentmail_api_url.trim_end_matches('/').to_string(),
            domain: settings.agentmail_domain.clone(),
        })
    }

    /// `segments` percent-encoded into the API's path (an inbox id holds an `@`).
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.api)
            .map_err(|_| Error::outbound(SERVICE, "agentmail", Failure::Refused))?;
        url.path_segments_mut()
            .map_err(|_| Error::outbound(SERVICE, "agentmail", Failure::Refused))?
            .extend(segments);
        Ok(url)
    }
}

#[async_trait]
impl Tool for AgentMail {
    fn id(&self) -> &'static str {
        "email"
    }

    fn step(&self) -> &'static str {
        "agentmail"
    }

    async fn create(&self, target: Target<'_>) -> Result<Provisioned> {
        let mut body = json!({
            "username": target.name,
            "display_name": target.name,
            "client_id": target.name,
        });
        if let Some(domain) = &self.domain {
            body["domain"] = json!(domain);
        }
        // Safe to send again: the same client_id returns the same inbox.
        let url = self.url(&["inboxes"])?;
        let reply = self
            .rest
            .fetch(
                "agentmail",
                Replay::Safe,
                Method::POST,
                url.as_str(),
                Some(&body),
            )
            .await?;
        let inbox = reply["inbox_id"]
            .as_str()
            .ok_or_else(|| Error::outbound(SERVICE, "agentmail", Failure::BadReply))?;
        Ok(Provisioned {
            resource_id: inbox.to_string(),
            config: json!({"inboxId": inbox}),
            env: vec![
                ("AGENTMAIL_INBOX_ID".into(), inbox.to_string()),
                (
                    "AGENTMAIL_API_KEY".into(),
                    self.rest.key.expose().to_string(),
                ),
            ],
        })
    }

    async fn update(&self, _resource_id: &str, _config: &Value) -> Result<()> {
        // An inbox has nothing the pool configures after creation.
        Ok(())
    }

    async fn destroy(&self, resource_id: &str) -> Result<()> {
        let url = self.url(&["inboxes", resource_id])?;
        self.rest.delete("agentmail-destroy", url.as_str()).await
    }

    async fn exists(&self, resource_id: &str) -> Option<Result<bool>> {
        let url = match self.url(&["inboxes", resource_id]) {
            Ok(url) => url,
            Err(e) => return Some(Err(e)),
        };
        Some(self.rest.exists("agentmail-list", url.as_str()).await)
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<Listed>>> {
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = self.url(&["inboxes"])?;
            url.query_pairs_mut().append_pair("limit", "100");
            if let Some(token) = &token {
                url.query_pairs_mut().append_pair("page_token", token);
            }
            let page = self
                .rest
                .fetch(
                    "agentmail-list",
                    Replay::Safe,
                    Method::GET,
                    url.as_str(),
                    None,
                )
                .await?;
            let inboxes = page["inboxes"]
                .as_array()
                .ok_or_else(|| Error::outbound(SERVICE, "agentmail-list", Failure::BadReply))?;
            listed.extend(inboxes.iter().filter_map(|inbox| {
                let id = inbox["inbox_id"].as_str()?;
                let username = id.split('@').next().filter(|u| u.starts_with(prefix))?;
                Some(Listed {
                    resource_id: id.to_string(),
                    name: username.to_string(),
                })
            }));
            match page["next_page_token"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => return Ok(Some(listed)),
            }
        }
    }
}
