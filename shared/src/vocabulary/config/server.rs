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
    /// The header a trusted proxy sets to the client's address (default `x-forwarded-for`), so
    /// that wrong keys are throttled per client rather than per proxy. Read only on requests from
    /// `TRUSTED_PROXIES`.
    pub client_ip_header: Option<String>,
    /// Proxies whose forwarded client address is believed: addresses or CIDR blocks,
    /// comma-separated (`127.0.0.1, 10.0.0.0/8`). A request from one of them counts against the
    /// nearest address in `CLIENT_IP_HEADER` that is not itself a trusted proxy; from anyone else
    /// the header is ignored (it is the client's to forge). Unset: the peer address of the
    /// connection, always.
    pub trusted_proxies: Option<String>,
}

impl DashboardSettings {
    fn default_session_ttl_ms() -> u64 {
        12 * 3_600_000
    }

    pub fn admin_session_ttl(&self) -> Duration {
        Duration::from_millis(self.admin_session_ttl_ms)
    }

    /// `TRUSTED_PROXIES`, parsed (checked at start-up).
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .flat_map(|p| p.split(','))
            .filter_map(|entry| parse_net(entry.trim()).ok())
            .collect()
    }
}

/// A CIDR block, or one address as a block of its own.
fn parse_net(entry: &str) -> Result<ipnet::IpNet, std::net::AddrParseError> {
    entry
        .parse::<ipnet::IpNet>()
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
}

impl Component for DashboardSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("ADMIN_SESSION_TTL_MS", self.admin_session_ttl_ms)?;
        if let Some(proxies) = &self.trusted_proxies {
            for entry in proxies.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                parse_net(entry).map_err(|_| {
                    ConfigError::new(
                        "TRUSTED_PROXIES",
                        format!("{entry:?} is neither an IP address nor a CIDR block"),
                    )
                })?;
            }
        } else if self.client_ip_header.is_some() {
            return Err(ConfigError::new(
                "CLIENT_IP_HEADER",
                "needs TRUSTED_PROXIES: a forwarded address is believed only from a proxy named there",
            ));
        }
        Ok(())
    }
}

/// `GET /metrics` (`metrics`).
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    /// When set, `GET /metrics` asks for it as `Authorization: Bearer`; public otherwise.
    pub metrics_token: Option<Secret>,
}

impl Component for MetricsSettings {}
