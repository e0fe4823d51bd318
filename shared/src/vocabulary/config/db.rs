//! The database (`db`): where it is and how many connections a process holds.

use serde::Deserialize;

use super::{Component, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
pub struct DbSettings {
    pub database_url: Option<Secret>,
    #[serde(default = "DbSettings::default_max_connections")]
    pub database_max_connections: u32,
}

impl DbSettings {
    /// `DATABASE_MAX_CONNECTIONS` when unset.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

    fn default_max_connections() -> u32 {
        Self::DEFAULT_MAX_CONNECTIONS
    }
}

impl Component for DbSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.database_max_connections < 2 {
            // The tick holds one connection for its lock and needs another to work.
            return Err(ConfigError::new(
                "DATABASE_MAX_CONNECTIONS",
                "must be at least 2",
            ));
        }
        Ok(())
    }
}
