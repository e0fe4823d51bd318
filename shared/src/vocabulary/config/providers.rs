//! Compute providers (`providers`): which one, and each one's own settings.

use std::path::PathBuf;

use serde::Deserialize;

use super::{read, variables, Component, ConfigError, ProviderKind, RailwayLayout, Secret, Vars};

/// Which provider runs instances, and the settings of each (only the chosen one's are used).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub pool_provider: ProviderKind,
    pub local: LocalSettings,
    pub railway: RailwaySettings,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default = "Choice::default_provider")]
    pool_provider: ProviderKind,
}

impl Choice {
    fn default_provider() -> ProviderKind {
        ProviderKind::Local
    }
}

impl Component for Choice {}

impl ProviderSettings {
    pub fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            pool_provider: read::<Choice>(vars)?.pool_provider,
            local: read(vars)?,
            railway: read(vars)?,
        })
    }

    pub fn variables() -> Vec<String> {
        [
            variables::<Choice>(),
            variables::<LocalSettings>(),
            variables::<RailwaySettings>(),
        ]
        .concat()
    }
}

/// The local provider: stub agents started as child processes.
#[derive(Debug, Clone, Deserialize)]
pub struct LocalSettings {
    /// Where the local provider keeps one record per stub agent it started.
    pub local_state_dir: Option<PathBuf>,
    /// The `agentpool` binary the local provider starts as `agentpool stub-agent`.
    pub local_agent_bin: Option<PathBuf>,
}

impl Component for LocalSettings {}

#[derive(Debug, Clone, Deserialize)]
pub struct RailwaySettings {
    pub railway_api_token: Option<Secret>,
    /// Several tokens, comma-separated, used in rotation when one is rate-limited.
    pub railway_api_tokens: Option<Secret>,
    #[serde(default = "RailwaySettings::default_api_url")]
    pub railway_api_url: String,
    #[serde(default)]
    pub railway_layout: RailwayLayout,
    pub railway_project_id: Option<String>,
    pub railway_environment_id: Option<String>,
    pub railway_team_id: Option<String>,
    #[serde(default = "RailwaySettings::default_runtime_image")]
    pub railway_runtime_image: String,
    pub railway_start_command: Option<String>,
    /// Mount path of a volume for each instance; none when unset.
    pub railway_volume_mount: Option<String>,
    /// `https` for Railway's domains; `http` against a local fake.
    #[serde(default = "RailwaySettings::default_public_scheme")]
    pub railway_public_scheme: String,
}

impl RailwaySettings {
    fn default_api_url() -> String {
        "https://backboard.railway.com/graphql/v2".into()
    }
    fn default_runtime_image() -> String {
        "ghcr.io/xmtplabs/convos-runtime:latest".into()
    }
    fn default_public_scheme() -> String {
        "https".into()
    }
}

impl Component for RailwaySettings {}
