//! The pool's size as the environment sets it (`pool_size`): the default until an operator sets
//! another at run time.

use serde::Deserialize;

use super::{Component, ConfigError};

/// `POOL_MAX_TOTAL_CAP` when unset (unless `POOL_MAX_TOTAL` is larger).
const DEFAULT_MAX_TOTAL_CAP: u32 = 100;

#[derive(Debug, Clone, Deserialize)]
pub struct SizeSettings {
    #[serde(default = "SizeSettings::default_min_idle")]
    pub pool_min_idle: u32,
    #[serde(default = "SizeSettings::default_max_total")]
    pub pool_max_total: u32,
    /// The most `maxTotal` an operator may set at run time (`PUT /api/pool/settings`); by default
    /// 100, or `POOL_MAX_TOTAL` if that is larger.
    pub pool_max_total_cap: Option<u32>,
}

impl SizeSettings {
    fn default_min_idle() -> u32 {
        3
    }
    fn default_max_total() -> u32 {
        10
    }

    /// The most `maxTotal` may be set to at run time.
    pub fn max_total_cap(&self) -> u32 {
        self.pool_max_total_cap
            .unwrap_or(DEFAULT_MAX_TOTAL_CAP.max(self.pool_max_total))
    }
}

impl Component for SizeSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.pool_min_idle > self.pool_max_total {
            return Err(ConfigError::new(
                "POOL_MIN_IDLE",
                format!(
                    "{} is larger than POOL_MAX_TOTAL ({})",
                    self.pool_min_idle, self.pool_max_total
                ),
            ));
        }
        if let Some(cap) = self.pool_max_total_cap {
            if cap < self.pool_max_total {
                return Err(ConfigError::new(
                    "POOL_MAX_TOTAL_CAP",
                    format!(
                        "{cap} is smaller than POOL_MAX_TOTAL ({})",
                        self.pool_max_total
                    ),
                ));
            }
        }
        Ok(())
    }
}
