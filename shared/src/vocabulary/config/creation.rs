//! Creation (`creation`): how long one instance's creation may take, and what every instance is
//! handed besides its tools.

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, Component, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
pub struct CreationSettings {
    /// How long creating one instance's resources may take. A `starting` row that has no resource
    /// recorded after this was left by a creator that died or was cut off, and is destroyed.
    #[serde(default = "CreationSettings::default_create_timeout_ms")]
    pub create_timeout_ms: u64,
    /// How long a recycle (restore the golden checkpoint, the runtime ready and clean again) may
    /// take; past it the instance is destroyed instead, by its recycler or by the tick.
    #[serde(default = "CreationSettings::default_recycle_timeout_ms")]
    pub recycle_timeout_ms: u64,
    /// The XMTP network instances join (`XMTP_ENV` on each). Seeds 001–003 name it
    /// `INSTANCE_XMTP_ENV`; either may be set, and they must agree. Unset: from
    /// `POOL_ENVIRONMENT`, as the seeds do.
    pub xmtp_env: Option<String>,
    pub instance_xmtp_env: Option<String>,
    /// Handed to each instance as `ANTHROPIC_API_KEY` (seeds 001–003).
    pub instance_anthropic_api_key: Option<Secret>,
    /// The OpenClaw git ref each instance builds (seeds 002, 003). Unset: from `POOL_ENVIRONMENT`.
    pub openclaw_git_ref: Option<String>,
    pub openclaw_primary_model: Option<String>,
}

impl CreationSettings {
    fn default_create_timeout_ms() -> u64 {
        120_000
    }

    fn default_recycle_timeout_ms() -> u64 {
        120_000
    }

    pub fn recycle_timeout(&self) -> Duration {
        Duration::from_millis(self.recycle_timeout_ms)
    }

    pub fn create_timeout(&self) -> Duration {
        Duration::from_millis(self.create_timeout_ms)
    }

    /// `production` in production, `dev` elsewhere, unless set.
    pub fn xmtp_env(&self, pool_environment: &str) -> String {
        self.instance_xmtp_env
            .clone()
            .or_else(|| self.xmtp_env.clone())
            .unwrap_or_else(|| match pool_environment {
                "production" => "production".into(),
                _ => "dev".into(),
            })
    }

    /// `main` in production, `staging` elsewhere, unless set.
    pub fn openclaw_git_ref(&self, pool_environment: &str) -> String {
        self.openclaw_git_ref
            .clone()
            .unwrap_or_else(|| match pool_environment {
                "production" => "main".into(),
                _ => "staging".into(),
            })
    }
}

impl Component for CreationSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("CREATE_TIMEOUT_MS", self.create_timeout_ms)?;
        nonzero("RECYCLE_TIMEOUT_MS", self.recycle_timeout_ms)?;
        if let (Some(seeds), Some(ours)) = (&self.instance_xmtp_env, &self.xmtp_env) {
            if seeds != ours {
                return Err(ConfigError::new(
                    "INSTANCE_XMTP_ENV",
                    format!("says {seeds:?} but XMTP_ENV says {ours:?}; set one of them"),
                ));
            }
        }
        Ok(())
    }
}
