//! An OpenRouter API key per instance, made with the management key: `POST /keys` shows the key
//! once, so a creation whose reply was lost leaves a key nobody can use; it is found by name,
//! deleted, and made again.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value};

use super::{Listed, Provisioned, Rest, Target, Tool};
use crate::config::OpenRouterSettings;
use crate::error::{Error, Result};
use crate::outbound::{Failure, Outbound, Replay};

const SERVICE: &str = "openrouter";

pub struct OpenRouter {
    rest: Rest,
    api: String,
    limit: Option<f64>,
    limit_reset: Option<String>,
}

impl OpenRouter {
    pub fn from_settings(
        settings: &OpenRouterSettings,
        out: impl FnOnce() -> Arc<Outbound>,
    ) -> Option<Self> {
        // Unconfigured, the tool costs nothing (no HTTP client, no TLS roots loaded).
        let key = settings.openrouter_management_key.clone()?;
        Some(Self {
            rest: Rest {
                out: out(),
                service: SERVICE,
                key,
            },
            api: settings
                .openrouter_api_url
                .trim_end_matches('/')
                .to_string(),
            limit: settings.openrouter_key_limit,
            limit_reset: settings.openrouter_key_limit_reset.clone(),
        })
    }

    async fn create_key(&self, name: &str) -> std::result::Result<Value, Failure> {
        let mut body = json!({"name": name});
        if let Some(limit) = self.limit {
            body["limit"] = json!(limit);
        }
        if let Some(reset) = &self.limit_reset {
            body["limit_reset"] = json!(reset);
        }
        let url = format!("{}/keys", self.api);
        self.rest
            .call(
                "openrouter",
                Replay::Unsafe,
                Method::POST,
                &url,
                Some(&body),
            )
            .await
    }
}

#[async_trait]
impl Tool for OpenRouter {
    fn id(&self) -> &'static str {
        "openrouter"
    }

    fn step(&self) -> &'static str {
        "openrouter"
    }

    async fn create(&self, target: Target<'_>) -> Result<Provisioned> {
        let reply = match self.create_key(target.name).await {
            Ok(reply) => reply,
            Err(Failure::TimedOut | Failure::Connection | Failure::Status(500..=599)) => {
                // The key may exist, but its secret was in the lost reply: remove it, make another.
                for stray in self.list(target.name).await?.unwrap_or_default() {
                    if stray.name == target.name {
                        self.destroy(&stray.resource_id).await?;
                    }
                }
                self.create_key(target.name)
                    .await
                    .map_err(|f| Error::outbound(SERVICE, "openrouter", f))?
            }
            Err(failure) => return Err(Error::outbound(SERVICE, "openrouter", failure)),
        };
        let (Some(hash), Some(key)) = (reply["data"]["hash"].as_str(), reply["key"].as_str())
        else {
            return Err(Error::outbound(SERVICE, "openrouter", Failure::BadReply));
        };
        Ok(Provisioned {
            resource_id: hash.to_string(),
            config: json!({"hash": hash, "name": target.name, "limit": self.limit}),
            env: vec![("OPENROUTER_API_KEY".into(), key.to_string())],
        })
    }

    async fn update(&self, resource_id: &str, config: &Value) -> Result<()> {
        let url = format!("{}/keys/{resource_id}", self.api);
        let body = json!({"limit": config["limit"]});
        self.rest
            .fetch(
                "openrouter-update",
                Replay::Safe,
                Method::PATCH,
                &url,
                Some(&body),
            )
            .await
            .map(drop)
    }

    async fn destroy(&self, resource_id: &str) -> Result<()> {
        let url = format!("{}/keys/{resource_id}", self.api);
        self.rest.delete("openrouter-destroy", &url).await
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<Listed>>> {
        let mut listed = Vec::new();
        let mut offset = 0usize;
        loop {
            let url = format!("{}/keys?offset={offset}", self.api);
            let page = self
                .rest
                .fetch("openrouter-list", Replay::Safe, Method::GET, &url, None)
                .await?;
            let keys = page["data"]
                .as_array()
                .ok_or_else(|| Error::outbound(SERVICE, "openrouter-list", Failure::BadReply))?;
            if keys.is_empty() {
                return Ok(Some(listed));
            }
            offset += keys.len();
            listed.extend(keys.iter().filter_map(|key| {
                let name = key["name"].as_str().filter(|n| n.starts_with(prefix))?;
                Some(Listed {
                    resource_id: key["hash"].as_str()?.to_string(),
                    name: name.to_string(),
                })
            }));
        }
    }
}
