//! The claim (`claim`): how long one may take and how many instances it may try.

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, Component, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct ClaimSettings {
    /// A `claiming` row older than this was left by a replica that died mid-claim.
    #[serde(default = "ClaimSettings::default_timeout_ms")]
    pub claim_timeout_ms: u64,
    /// How many idle instances one claim may try before answering 502.
    #[serde(default = "ClaimSettings::default_max_attempts")]
    pub claim_max_attempts: u32,
    /// Timeout of the runtime's `/pool/provision`, the claim's one outside call.
    #[serde(default = "ClaimSettings::default_provision_timeout_ms")]
    pub provision_timeout_ms: u64,
}

impl ClaimSettings {
    fn default_timeout_ms() -> u64 {
        120_000
    }
    fn default_max_attempts() -> u32 {
        3
    }
    fn default_provision_timeout_ms() -> u64 {
        60_000
    }

    pub fn claim_timeout(&self) -> Duration {
        Duration::from_millis(self.claim_timeout_ms)
    }
    pub fn provision_timeout(&self) -> Duration {
        Duration::from_millis(self.provision_timeout_ms)
    }
}

impl Component for ClaimSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.claim_timeout_ms <= self.provision_timeout_ms {
            return Err(ConfigError::new(
                "CLAIM_TIMEOUT_MS",
                format!(
                    "must be longer than PROVISION_TIMEOUT_MS ({} ms), or live claims would be reaped",
                    self.provision_timeout_ms
                ),
            ));
        }
        nonzero("PROVISION_TIMEOUT_MS", self.provision_timeout_ms)?;
        nonzero("CLAIM_MAX_ATTEMPTS", self.claim_max_attempts.into())
    }
}
