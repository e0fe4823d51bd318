//! Calls to outside APIs (`outbound`), for every provider and tool.

use std::time::Duration;

use serde::Deserialize;

use super::Component;

#[derive(Debug, Clone, Deserialize)]
pub struct OutboundSettings {
    /// Timeout of one attempt of a call to an outside API (Railway, tools).
    #[serde(default = "OutboundSettings::default_timeout_ms")]
    pub outbound_timeout_ms: u64,
}

impl OutboundSettings {
    fn default_timeout_ms() -> u64 {
        30_000
    }

    pub fn outbound_timeout(&self) -> Duration {
        Duration::from_millis(self.outbound_timeout_ms)
    }
}

impl Component for OutboundSettings {}
