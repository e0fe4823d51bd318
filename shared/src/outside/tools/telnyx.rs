//! A Telnyx phone number per instance: search, order one picked at random (concurrent
//! provisioners collide), search again when someone else took it, tag it with the instance's name
//! (a fresh order answers 404 for a few seconds), release it on destroy.
//!
//! Each order carries the instance's name as its `customer_reference`. That is how an order whose
//! reply was lost is found again (the number alone cannot say whose order bought it: another
//! instance may have bought it after ours failed), and how the orphan pass finds a number whose
//! creator died before tagging it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::SecondsFormat;
use rand::seq::SliceRandom;
use serde_json::{json, Value};

use super::{Listed, Provisioned, Rest, Target, Tool};
use crate::config::TelnyxSettings;
use crate::error::{Error, Result};
use crate::outbound::{Failure, Outbound, Replay};

const SERVICE: &str = "telnyx";
/// Searches and orders before giving up on finding a free number.
const ORDER_TRIES: usize = 3;
/// How long a fresh number may answer 404 before it can be tagged.
const TAG_PATIENCE: Duration = Duration::from_secs(10);
/// How far back the orphan pass reads orders for numbers bought but never tagged. A creator that
/// dies between ordering and tagging is found by the next tick, so a day is ample, and it bounds a
/// history that only grows.
const ORDER_LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::days(1);

pub struct Telnyx {
    rest: Rest,
    api: String,
    messaging_profile_id: Option<String>,
}

impl Telnyx {
    pub fn from_settings(
        settings: &TelnyxSettings,
        out: impl FnOnce() -> Arc<Outbound>,
    ) -> Option<Self> {
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

    /// Orders a free number for the instance `reference` names; returns it (`+1…`).
    async fn order(&self, reference: &str) -> Result<String> {
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
            let mut body = json!({
                "phone_numbers": [{"phone_number": number}],
                "customer_reference": reference,
            });
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
                // The order may have gone through: if one of ours did, keep its number. Owning
                // `number` proves nothing, another instance may have ordered it since.
                Err(Failure::TimedOut | Failure::Connection | Failure::Status(500..=599)) => {
                    if let Some(ordered) = self.ordered_for(reference).await? {
                        return Ok(ordered);
                    }
                }
                Err(failure) => return Err(Error::outbound(SERVICE, "telnyx", failure)),
            }
        }
        Err(Error::outbound(SERVICE, "telnyx", Failure::Status(422)))
    }

    /// `GET /number_orders` with these query parameters.
    async fn number_orders(&self, step: &'static str, query: &[(&str, &str)]) -> Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}/number_orders", self.api), query)
            .map_err(|_| Error::outbound(SERVICE, step, Failure::BadReply))?;
        self.rest
            .call(step, Replay::Safe, reqwest::Method::GET, url.as_str(), None)
            .await
            .map_err(|f| Error::outbound(SERVICE, step, f))
    }

    /// The number an order with this `customer_reference` bought, if any did.
    async fn ordered_for(&self, reference: &str) -> Result<Option<String>> {
        let reply = self
            .number_orders("telnyx", &[("filter[customer_reference]", reference)])
            .await?;
        let number = orders(&reply)
            .find(|line| line.reference == reference)
            .map(|line| line.number.to_string());
        Ok(number)
    }

    /// For each number recent orders bought: the `customer_reference` of its newest order.
    async fn newest_orders(&self) -> Result<HashMap<String, String>> {
        let since =
            (chrono::Utc::now() - ORDER_LOOKBACK).to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut newest: HashMap<String, (String, String)> = HashMap::new();
        let mut page = 1u32;
        loop {
            let page_number = page.to_string();
            let reply = self
                .number_orders(
                    "telnyx-list",
                    &[
                        ("filter[created_at][gt]", since.as_str()),
                        ("page[number]", &page_number),
                        ("page[size]", "250"),
                    ],
                )
                .await?;
            for line in orders(&reply) {
                // Telnyx writes every `created_at` in one format, so text order is time order.
                let entry = newest
                    .entry(line.number.to_string())
                    .or_insert_with(|| (line.created_at.to_string(), line.reference.to_string()));
                if line.created_at > entry.0.as_str() {
                    *entry = (line.created_at.to_string(), line.reference.to_string());
                }
            }
            if !more_pages(&reply, page) {
                return Ok(newest
                    .into_iter()
                    .map(|(number, (_, reference))| (number, reference))
                    .collect());
            }
            page += 1;
        }
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
        let number = self.order(target.name).await?;
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
        let mut untagged = Vec::new();
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
            for n in numbers {
                let (Some(id), Some(number)) = (n["id"].as_str(), n["phone_number"].as_str())
                else {
                    continue;
                };
                let tag = n["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|t| t.starts_with(prefix));
                match tag {
                    Some(name) => listed.push(Listed {
                        resource_id: id.to_string(),
                        name: name.to_string(),
                    }),
                    None => untagged.push((id.to_string(), number.to_string())),
                }
            }
            if numbers.is_empty() || !more_pages(&reply, page) {
                break;
            }
            page += 1;
        }
        // An untagged number is ours if our order bought it and its creator died before tagging
        // it. Orders are read after the numbers, so each number listed has its newest order in
        // them; an older order is about an earlier owner of a number released since.
        if !untagged.is_empty() {
            let bought = self.newest_orders().await?;
            listed.extend(untagged.into_iter().filter_map(|(id, number)| {
                let name = bought.get(&number)?;
                name.starts_with(prefix).then(|| Listed {
                    resource_id: id,
                    name: name.clone(),
                })
            }));
        }
        Ok(Some(listed))
    }
}

/// A number a `GET /number_orders` reply says an order bought.
struct OrderLine<'a> {
    /// Empty when the order has none.
    reference: &'a str,
    number: &'a str,
    created_at: &'a str,
}

/// The numbers each order of a `GET /number_orders` reply bought; failed ones are left out.
fn orders(reply: &Value) -> impl Iterator<Item = OrderLine<'_>> {
    reply["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|order| order["status"].as_str() != Some("failure"))
        .flat_map(|order| {
            let reference = order["customer_reference"].as_str().unwrap_or_default();
            let created_at = order["created_at"].as_str().unwrap_or_default();
            order["phone_numbers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|line| line["status"].as_str() != Some("failure"))
                .filter_map(move |line| {
                    Some(OrderLine {
                        reference,
                        number: line["phone_number"].as_str()?,
                        created_at,
                    })
                })
        })
}

/// Whether a paged Telnyx listing has a page after `page`.
fn more_pages(reply: &Value, page: u32) -> bool {
    reply["meta"]["total_pages"]
        .as_u64()
        .is_some_and(|pages| u64::from(page) < pages)
}
