//! Tools an instance gets at creation (seed 004's plugins): an OpenRouter key, an AgentMail inbox,
//! a Telnyx number, a wallet, Bankr. Each creates one resource for an instance and says what
//! variables the instance needs to use it; each destroy is idempotent (not found = done).
//!
//! A tool that is not configured is skipped, and the creation's progress says so. Every resource
//! is recorded in `instance_services` the moment it exists (see `creation`), so a resource always
//! has a row that knows how to destroy it; resources named with our prefix that no row records are
//! orphans (see the tick).

pub mod agentmail;
pub mod bankr;
pub mod openrouter;
pub mod telnyx;
pub mod wallet;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::{OutboundSettings, Secret, ToolSettings};
use crate::error::{Error, Result};
use crate::outbound::{Call, Failure, Outbound, Policy, Replay, Tally};

/// The instance a tool provisions for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub instance_id: &'a str,
    /// `<POOL_NAME_PREFIX><id>`: what the tool names or tags its resource with.
    pub name: &'a str,
}

/// What a tool made. `config` is public (shown to operators); `env` holds secrets for the
/// instance only, hence the hand-written `Debug`.
pub struct Provisioned {
    pub resource_id: String,
    pub config: Value,
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Provisioned")
            .field("resource_id", &self.resource_id)
            .field("config", &self.config)
            .field("env_keys", &keys)
            .finish()
    }
}

/// A resource a tool holds outside, as its listing shows it (for orphans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub resource_id: String,
    /// The name or tag it carries: `<prefix><instance id>`.
    pub name: String,
}

#[async_trait]
pub trait Tool: Send + Sync {
    /// `instance_services.tool_id` (seed 004: `openrouter`, `email`, `sms`, `wallet`, `crypto`).
    fn id(&self) -> &'static str;

    /// The creation step that reports it (seed 000: `openrouter`, `agentmail`, `telnyx`, ...).
    fn step(&self) -> &'static str;

    async fn create(&self, target: Target<'_>) -> Result<Provisioned>;

    /// Changes a resource's configuration (a key's credit limit, a number's tags).
    async fn update(&self, resource_id: &str, config: &Value) -> Result<()>;

    /// Destroys a resource; one already gone counts as destroyed.
    async fn destroy(&self, resource_id: &str) -> Result<()>;

    /// Every resource of ours (named or tagged with `prefix`); `None` for a tool that holds nothing
    /// outside (a wallet made here).
    async fn list(&self, prefix: &str) -> Result<Option<Vec<Listed>>>;

    /// Whether one resource exists, looked up by id: how an absence from a listing is confirmed,
    /// since a paged listing may skip a resource that moved while it was read. Only an explicit
    /// "not found" is `false`. `None`: this tool cannot look one up.
    async fn exists(&self, _resource_id: &str) -> Option<Result<bool>> {
        None
    }
}

impl fmt::Debug for dyn Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The tools this pool provisions, in creation order, and the steps of those not configured.
#[derive(Clone, Default)]
pub struct Toolbox {
    pub tools: Vec<Arc<dyn Tool>>,
    pub skipped: Vec<&'static str>,
}

impl Toolbox {
    pub fn from_settings(
        settings: &ToolSettings,
        outbound: &OutboundSettings,
        tally: &Tally,
    ) -> Self {
        // One client for every tool, made only if a tool needs it.
        let shared: std::cell::OnceCell<Arc<Outbound>> = std::cell::OnceCell::new();
        let out = || {
            shared
                .get_or_init(|| {
                    Arc::new(Outbound::new(
                        Policy::from_settings(outbound),
                        tally.clone(),
                    ))
                })
                .clone()
        };
        let mut toolbox = Toolbox::default();
        let mut offer = |step: &'static str, tool: Option<Arc<dyn Tool>>| match tool {
            Some(tool) => toolbox.tools.push(tool),
            None => toolbox.skipped.push(step),
        };
        offer(
            "openrouter",
            openrouter::OpenRouter::from_settings(&settings.openrouter, out)
                .map(|t| Arc::new(t) as Arc<dyn Tool>),
        );
        offer(
            "agentmail",
            agentmail::AgentMail::from_settings(&settings.agentmail, out)
                .map(|t| Arc::new(t) as Arc<dyn Tool>),
        );
        offer(
            "telnyx",
            telnyx::Telnyx::from_settings(&settings.telnyx, out)
                .map(|t| Arc::new(t) as Arc<dyn Tool>),
        );
        offer("wallet", Some(Arc::new(wallet::Wallet)));
        offer(
            "bankr",
            bankr::Bankr::from_settings(&settings.bankr).map(|t| Arc::new(t) as Arc<dyn Tool>),
        );
        toolbox
    }

    pub fn get(&self, tool_id: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.iter().find(|t| t.id() == tool_id)
    }
}

/// A JSON API behind a bearer key, the way every REST tool calls it.
struct Rest {
    out: Arc<Outbound>,
    service: &'static str,
    key: Secret,
}

impl Rest {
    async fn call(
        &self,
        step: &'static str,
        replay: Replay,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> std::result::Result<Value, Failure> {
        let call = Call {
            service: self.service,
            step,
            replay,
        };
        self.out
            .json(call, url, |http| {
                let request = http
                    .request(method.clone(), url)
                    .bearer_auth(self.key.expose());
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await
    }

    /// As [`Rest::call`], with a failure made an error that names the service and step.
    async fn fetch(
        &self,
        step: &'static str,
        replay: Replay,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        self.call(step, replay, method, url, body)
            .await
            .map_err(|f| Error::outbound(self.service, step, f))
    }

    /// Whether the resource at `url` exists: only a 404 says it does not.
    async fn exists(&self, step: &'static str, url: &str) -> Result<bool> {
        match self
            .call(step, Replay::Safe, reqwest::Method::GET, url, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(Failure::NotFound) => Ok(false),
            Err(failure) => Err(Error::outbound(self.service, step, failure)),
        }
    }

    /// Deletes a resource; one already gone counts as deleted.
    async fn delete(&self, step: &'static str, url: &str) -> Result<()> {
        match self
            .call(step, Replay::Safe, reqwest::Method::DELETE, url, None)
            .await
        {
            Ok(_) | Err(Failure::NotFound) => Ok(()),
            Err(failure) => Err(Error::outbound(self.service, step, failure)),
        }
    }
}
