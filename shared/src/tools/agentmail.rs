//! An AgentMail inbox per instance. The instance id is the inbox's `client_id`: the same
//! `client_id` returns the same inbox, so a creation is safe to send again after a lost reply.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Listed, Provisioned, Target, Tool};
use crate::config::{Secret, Settings};
use crate::error::{Error, Result};
use crate::outbound::{Call, Failure, Outbound, Replay};

const SERVICE: &str = "agentmail";

pub struct AgentMail {
    out: Arc<Outbound>,
    api: String,
    key: Secret,
    domain: Option<String>,
}

impl AgentMail {
    pub fn from_settings(settings: &Settings, out: impl FnOnce() -> Arc<Outbound>) -> Option<Self> {
        // Unconfigured, the tool costs nothing (no HTTP client, no TLS roots loaded).
        let key = settings.agentmail_api_key.clone()?;
        Some(Self {
            out: out(),
            api: settings.agentmail_api_url.trim_end_matches('/').to_string(),
            key,
            domain: settings.agentmail_domain.clone(),
        })
    }

    async fn call(
        &self,
        step: &'static str,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<Value>,
    ) -> std::result::Result<Value, Failure> {
        // Every call is safe to replay: creations are idempotent by client_id.
        let call = Call {
            service: SERVICE,
            step,
            replay: Replay::Safe,
        };
        self.out
            .json(call, url.as_str(), |http| {
                let request = http
                    .request(method.clone(), url.clone())
                    .bearer_auth(self.key.expose());
                match &body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await
    }

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
            "client_id": target.instance_id,
        });
        if let Some(domain) = &self.domain {
            body["domain"] = json!(domain);
        }
        let reply = self
            .call(
                "agentmail",
                reqwest::Method::POST,
                self.url(&["inboxes"])?,
                Some(body),
            )
            .await
            .map_err(|f| Error::outbound(SERVICE, "agentmail", f))?;
        let inbox = reply["inbox_id"]
            .as_str()
            .ok_or_else(|| Error::outbound(SERVICE, "agentmail", Failure::BadReply))?;
        Ok(Provisioned {
            resource_id: inbox.to_string(),
            config: json!({"inboxId": inbox}),
            env: vec![
                ("AGENTMAIL_INBOX_ID".into(), inbox.to_string()),
                ("AGENTMAIL_API_KEY".into(), self.key.expose().to_string()),
            ],
        })
    }

    async fn update(&self, _resource_id: &str, _config: &Value) -> Result<()> {
        // An inbox has nothing the pool configures after creation.
        Ok(())
    }

    async fn destroy(&self, resource_id: &str) -> Result<()> {
        match self
            .call(
                "agentmail-destroy",
                reqwest::Method::DELETE,
                self.url(&["inboxes", resource_id])?,
                None,
            )
            .await
        {
            Ok(_) | Err(Failure::NotFound) => Ok(()),
            Err(failure) => Err(Error::outbound(SERVICE, "agentmail-destroy", failure)),
        }
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
                .call("agentmail-list", reqwest::Method::GET, url, None)
                .await
                .map_err(|f| Error::outbound(SERVICE, "agentmail-list", f))?;
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
