//! The agent runtime (`runtime`): which protocol instances speak, and how a claim waits for a
//! gateway that has just booted.

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, Component, ConfigError};

/// The runtime contracts of the seeds (DESIGN.md, "Runtime protocols").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeProtocol {
    /// Seed 000: `GET /pool/health`, `POST /pool/provision`.
    #[default]
    Pool,
    /// Seed 001's template: readiness at `GET /pool/status`, provision as `pool`.
    PoolStatus,
    /// OpenClaw's Convos gateway (seeds 002, 003): `/convos/status`, `/convos/conversation`,
    /// `/convos/join`.
    Convos,
}

impl RuntimeProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeProtocol::Pool => "pool",
            RuntimeProtocol::PoolStatus => "pool-status",
            RuntimeProtocol::Convos => "convos",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Pool, Self::PoolStatus, Self::Convos]
            .into_iter()
            .find(|p| p.as_str() == value)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeSettings {
    #[serde(default)]
    pub runtime_protocol: RuntimeProtocol,
    /// Spacing of a claim's attempts at a Convos gateway that is not answering yet (it refuses
    /// for a while after boot); the attempts stop at `PROVISION_TIMEOUT_MS`.
    #[serde(default = "RuntimeSettings::default_retry_interval_ms")]
    pub runtime_retry_interval_ms: u64,
    /// This pool's base URL as its runtimes reach it. When set, each runtime is given
    /// `POOL_HEARTBEAT_URL` (`{this}/api/instances/{id}/heartbeat`) and may push its heartbeat
    /// there, with its own `OPENCLAW_GATEWAY_TOKEN`, instead of being asked. Unset: runtimes are
    /// only asked.
    pub runtime_heartbeat_url: Option<String>,
}

impl RuntimeSettings {
    fn default_retry_interval_ms() -> u64 {
        1_000
    }

    pub fn retry_interval(&self) -> Duration {
        Duration::from_millis(self.runtime_retry_interval_ms)
    }

    /// Where the runtime of instance `id` pushes its heartbeat, when runtimes are told.
    pub fn heartbeat_url(&self, id: &str) -> Option<String> {
        let base = self.runtime_heartbeat_url.as_deref()?.trim_end_matches('/');
        Some(format!("{base}/api/instances/{id}/heartbeat"))
    }
}

impl Component for RuntimeSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("RUNTIME_RETRY_INTERVAL_MS", self.runtime_retry_interval_ms)?;
        if let Some(url) = &self.runtime_heartbeat_url {
            let scheme = reqwest::Url::parse(url).map(|u| u.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(ConfigError::new(
                    "RUNTIME_HEARTBEAT_URL",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        Ok(())
    }
}
