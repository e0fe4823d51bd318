//! Who this pool is, read by creation (names, the environment handed out), the tick (orphans by
//! prefix) and the faces (the environment badge).

use serde::Deserialize;

use super::{Component, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct PoolSettings {
    #[serde(default = "PoolSettings::default_environment")]
    pub pool_environment: String,
    /// Prefix of every provider resource this pool creates; resources with it and no row are orphans.
    #[serde(default = "PoolSettings::default_name_prefix")]
    pub pool_name_prefix: String,
}

impl PoolSettings {
    fn default_environment() -> String {
        "dev".into()
    }
    fn default_name_prefix() -> String {
        "agentpool-".into()
    }
}

impl Component for PoolSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let prefix_ok = !self.pool_name_prefix.is_empty()
            && self
                .pool_name_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !prefix_ok {
            // Sprites names are lowercase [0-9a-z-]; one rule for every provider.
            return Err(ConfigError::new(
                "POOL_NAME_PREFIX",
                "must be non-empty lowercase [0-9a-z-]",
            ));
        }
        Ok(())
    }
}
