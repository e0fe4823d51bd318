//! A Telnyx phone number per instance: search, order one picked at random (concurrent
//! provisioners collide), search again when someone else took it, tag it with the instance's name
//! (a fresh order answers 404 for a few seconds), release it on destroy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::seq::SliceRandom;
use serde_json::{json, Value};

use super::{Listed, Provisioned, Rest, Target, Tool};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::outbound::{Failure, Outbound, Replay};

const SERVICE: &str = "telnyx";
/// Searches and orders before giving up on finding a free number.
const ORDER_TRIES: usize = 3;
/// How long a fresh number may answer 404 before it can be tagged.
const TAG_PATIENCE: Duration = Duration::from_secs(10);

pub struct Telnyx {
    rest: Rest,
    api: String,
    messaging_profile_id: Option<String>,
}

impl Telnyx {
    pub fn from_settings(settings: &Settings, out: impl FnOnce() -> Arc<Outbound>) -> Option<Self> {
        // Unconfigured, the tool costs nothing (no HTTP client, no TLS roots loaded).
        let key = settings.telnyx_api_key.clone()?;
        Some(Self {
            rest: Rest {
                out: out(),
                service: SERVICE,
                key,
            },
            api: settings.telnyx_api_url.trim_end_matches('/').to_string(),
            messaging_profile_id: settings.telnyx_messaging_profile_id.clone(),
        })
    }

    /// Orders a free number; returns it (`+1…`).
    async fn order(&self) -> Result<String> {
        for _ in 0..ORDER_TRIES {
            let found = self.rest
                .call(
                    "telnyx",
                    Replay::Safe,
                    reqwest::Method::GET,
                    &format!(
                        "{}/available_phone_numbers?filter[country_code]=US&filter[features][]=sms&filter[limit]=20",
                        self.api
                    ),
                    None,
                )
                .await
                .map_err(|f| Error::outbound(SERVICE, "telnyx", f))?;
            let numbers: Vec<&str> = found["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["phone_number"].as_str())
                .collect();
            let Some(number) = numbers
                .choose(&mut rand::thread_rng())
                .map(|n| n.to_string())
            else {
                return Err(Error::outbound(SERVICE, "telnyx", Failure::NotFound));
            };
            let mut body = json!({"phone_numbers": [{"phone_number": number}]});
            if let Some(profile) = &self.messaging_profile_id {
                body["messaging_profile_id"] = json!(profile);
            }
            let ordered = self
                .rest
                .call(
                    "telnyx",
                    Replay::Unsafe,
                    reqwest::Method::POST,
                    &format!("{}/number_orders", self.api),
                    Some(&body),
                )
                .await;
            match ordered {
                Ok(_) => return Ok(number),
                // Someone else took it between the search and the order: search again.
                Err(Failure::Status(409 | 422)) => continue,
                // The order may have gone through: if the number is ours now, keep it.
                Err(Failure::TimedOut | Failure::Connection | Failure::Status(500..=599)) => {
                    if self.owned_id(&number).await?.is_some() {
                        return Ok(number);
                    }
                }
                Err(failure) => return Err(Error::outbound(SERVICE, "telnyx", failure)),
            }
        }
        Err(Error::outbound(SERVICE, "telnyx", Failure::Status(422)))
    }

    /// The id of `number` if this account owns it.
    async fn owned_id(&self, number: &str) -> Result<Option<String>> {
        let reply = self
            .rest
            .call(
                "telnyx",
                Replay::Safe,
                reqwest::Method::GET,
                &format!(
                    "{}/phone_numbers?filter[phone_number]={}",
                    self.api,
                    number.replace('+', "%2B")
                ),
                None,
            )
            .await
            .map_err(|f| Error::outbound(SERVICE, "telnyx", f))?;
        Ok(reply["data"][0]["id"].as_str().map(str::to_string))
    }

    /// Tags a number (by its id, or `+1…`) and returns its id.
    async fn tag(&self, number: &str, tags: Value) -> std::result::Result<String, Failure> {
        let deadline = tokio::time::Instant::now() + TAG_PATIENCE;
        loop {
            let tagged = self
                .rest
                .call(
                    "telnyx-tag",
                    Replay::Safe,
                    reqwest::Method::PATCH,
                    &format!("{}/phone_numbers/{}", self.api, number.replace('+', "%2B")),
                    Some(&json!({"tags": tags})),
                )
                .await;
            match tagged {
                // A fresh order is not visible at once.
                Err(Failure::NotFound) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(failure) => return Err(failure),
                Ok(reply) => {
                    return reply["data"]["id"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or(Failure::BadReply)
                }
            }
        }
    }
}

#[async_trait]
impl Tool for Telnyx {
    fn id(&self) -> &'static str {
        "sms"
    }

    fn step(&self) -> &'static str {
        "telnyx"
    }

    async fn create(&self, target: Target<'_>) -> Result<Provisioned> {
        let number = self.order().await?;
        let id = match self.tag(&number, json!([target.name])).await {
            Ok(id) => id,
            Err(failure) => {
                // Untagged, the orphan pass could not find it: release it now.
                if let Ok(Some(id)) = self.owned_id(&number).await {
                    let _ = self.destroy(&id).await;
                }
                return Err(Error::outbound(SERVICE, "telnyx-tag", failure));
            }
        };
        let mut env = vec![
            ("TELNYX_PHONE_NUMBER".into(), number.clone()),
            ("TELNYX_API_KEY".into(), self.rest.key.expose().to_string()),
        ];
        if let Some(profile) = &self.messaging_profile_id {
            env.push(("TELNYX_MESSAGING_PROFILE_ID".into(), profile.clone()));
        }
        Ok(Provisioned {
            resource_id: id,
            config: json!({"phoneNumber": number}),
            env,
        })
    }

    async fn update(&self, resource_id: &str, config: &Value) -> Result<()> {
        self.tag(resource_id, config["tags"].clone())
            .await
            .map(drop)
            .map_err(|f| Error::outbound(SERVICE, "telnyx-tag", f))
    }

    async fn destroy(&self, resource_id: &str) -> Result<()> {
        let url = format!("{}/phone_numbers/{resource_id}", self.api);
        self.rest.delete("telnyx-destroy", &url).await
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<Listed>>> {
        let mut listed = Vec::new();
        let mut page = 1u32;
        loop {
            let reply = self
                .rest
                .call(
                    "telnyx-list",
                    Replay::Safe,
                    reqwest::Method::GET,
                    &format!(
                        "{}/phone_numbers?page[number]={page}&page[size]=250",
                        self.api
                    ),
                    None,
                )
                .await
                .map_err(|f| Error::outbound(SERVICE, "telnyx-list", f))?;
            let numbers = reply["data"]
                .as_array()
                .ok_or_else(|| Error::outbound(SERVICE, "telnyx-list", Failure::BadReply))?;
            listed.extend(numbers.iter().filter_map(|n| {
                let tag = n["tags"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_str)
                    .find(|t| t.starts_with(prefix))?;
                Some(Listed {
                    resource_id: n["id"].as_str()?.to_string(),
                    name: tag.to_string(),
                })
            }));
            let pages = reply["meta"]["total_pages"].as_u64().unwrap_or(1);
            if numbers.is_empty() || u64::from(page) >= pages {
                return Ok(Some(listed));
            }
            page += 1;
        }
    }
}
