//! An OpenRouter API key per instance, made with the management key: `POST /keys` shows the key
//! once, so a creation whose reply was lost leaves a key nobody can use; it is found by name,
//! deleted, and made again.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Listed, Provisioned, Target, Tool};
use crate::config::{Secret, Settings};
use crate::error::{Error, Result};
use crate::outbound::{Call, Failure, Outbound, Replay};

const SERVICE: &str = "openrouter";

pub struct OpenRouter {
    out: Arc<Outbound>,
    api: String,
    key: Secret,
    limit: Option<f64>,
    limit_reset: Option<String>,
}

impl OpenRouter {
    pub fn from_settings(settings: &Settings, out: impl FnOnce() -> Arc<Outbound>) -> Option<Self> {
        // Unconfigured, the tool costs nothing (no HTTP client, no TLS roots loaded).
        let key = settings.openrouter_management_key.clone()?;
        Some(Self {
            out: out(),
            api: settings
                .openrouter_api_url
                .trim_end_matches('/')
                .to_string(),
            key,
            limit: settings.openrouter_key_limit,
            limit_reset: settings.openrouter_key_limit_reset.clone(),
        })
    }

    async fn call(
        &self,
        step: &'static str,
        replay: Replay,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> std::result::Result<Value, Failure> {
        let call = Call {
            service: SERVICE,
            step,
            replay,
        };
        self.out
            .json(call, &url, |http| {
                let request = http
                    .request(method.clone(), &url)
                    .bearer_auth(self.key.expose());
                match &body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await
    }

    async fn create_key(&self, name: &str) -> std::result::Result<Value, Failure> {
        let mut body = json!({"name": name});
        if let Some(limit) = self.limit {
            body["limit"] = json!(limit);
        }
        if let Some(reset) = &self.limit_reset {
            body["limit_reset"] = json!(reset);
        }
        self.call(
            "openrouter",
            Replay::Unsafe,
            reqwest::Method::POST,
            format!("{}/keys", self.api),
            Some(body),
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
        self.call(
            "openrouter-update",
            Replay::Safe,
            reqwest::Method::PATCH,
            format!("{}/keys/{resource_id}", self.api),
            Some(json!({"limit": config["limit"]})),
        )
        .await
        .map(drop)
        .map_err(|f| Error::outbound(SERVICE, "openrouter-update", f))
    }

    async fn destroy(&self, resource_id: &str) -> Result<()> {
        match self
            .call(
                "openrouter-destroy",
                Replay::Safe,
                reqwest::Method::DELETE,
                format!("{}/keys/{resource_id}", self.api),
                None,
            )
            .await
        {
            Ok(_) | Err(Failure::NotFound) => Ok(()),
            Err(failure) => Err(Error::outbound(SERVICE, "openrouter-destroy", failure)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<Listed>>> {
        let mut listed = Vec::new();
        let mut offset = 0usize;
        loop {
            let page = self
                .call(
                    "openrouter-list",
                    Replay::Safe,
                    reqwest::Method::GET,
                    format!("{}/keys?offset={offset}", self.api),
                    None,
                )
                .await
                .map_err(|f| Error::outbound(SERVICE, "openrouter-list", f))?;
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
