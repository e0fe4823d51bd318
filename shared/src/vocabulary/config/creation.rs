//! Creation (`creation`): how long one instance's creation may take, and what every instance is
//! handed besides its tools.

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, Component, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct CreationSettings {
    /// How long creating one instance's resources may take. A `starting` row that has no resource
    /// recorded after this was left by a creator that died or was cut off, and is destroyed.
    #[serde(default = "CreationSettings::default_create_timeout_ms")]
    pub create_timeout_ms: u64,
    /// The XMTP network instances join.
    #[serde(default = "CreationSettings::default_xmtp_env")]
    pub xmtp_env: String,
    pub openclaw_primary_model: Option<String>,
}

impl CreationSettings {
    fn default_create_timeout_ms() -> u64 {
        120_000
    }
    fn default_xmtp_env() -> String {
        "dev".into()
    }

    pub fn create_timeout(&self) -> Duration {
        Duration::from_millis(self.create_timeout_ms)
    }
}

impl Component for CreationSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("CREATE_TIMEOUT_MS", self.create_timeout_ms)
    }
}
