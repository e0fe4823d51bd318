//! What only the faces read (`handlers/`, `agentpool-scheduler`): the port, the API key, the
//! dashboard, `/metrics`, and what `/api/pool/info` reports.

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, Component, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    #[serde(default = "ServerSettings::default_port")]
    pub port: u16,
    pub pool_api_key: Option<Secret>,
    /// Reported by `/api/pool/info` as `branch`.
    pub railway_git_branch: Option<String>,
}

impl ServerSettings {
    fn default_port() -> u16 {
        3001
    }
}

impl Component for ServerSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.pool_api_key {
            if key.expose().len() < 16 {
                return Err(ConfigError::new(
                    "POOL_API_KEY",
                    "must be at least 16 characters",
                ));
            }
        }
        Ok(())
    }
}

/// The dashboard's logins (`sessions`).
#[derive(Debug, Clone, Deserialize)]
pub struct DashboardSettings {
    /// How long a dashboard login lasts.
    #[serde(default = "DashboardSettings::default_session_ttl_ms")]
    pub admin_session_ttl_ms: u64,
    /// A header that a trusted proxy in front of every replica sets to the client's address
    /// (`x-forwarded-for`: its last entry), so that wrong keys are throttled per client rather than
    /// per proxy. Unset: the peer address of the connection.
    pub client_ip_header: Option<String>,
}

impl DashboardSettings {
    fn default_session_ttl_ms() -> u64 {
        12 * 3_600_000
    }

    pub fn admin_session_ttl(&self) -> Duration {
        Duration::from_millis(self.admin_session_ttl_ms)
    }
}

impl Component for DashboardSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("ADMIN_SESSION_TTL_MS", self.admin_session_ttl_ms)
    }
}

/// `GET /metrics` (`metrics`).
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// When set, `GET /metrics` asks for it as `Authorization: Bearer`; public otherwise.
    pub metrics_token: Option<Secret>,
}

impl Component for MetricsSettings {}
