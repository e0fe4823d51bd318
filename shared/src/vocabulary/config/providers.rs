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
    pub sprites: SpritesSettings,
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
            sprites: read(vars)?,
        })
    }

    pub fn variables() -> Vec<String> {
        [
            variables::<Choice>(),
            variables::<LocalSettings>(),
            variables::<RailwaySettings>(),
            variables::<SpritesSettings>(),
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
    /// Recycle a used agent (restart it with a clean state) instead of destroying it, as the
    /// Sprites provider restores its golden checkpoint: `agentpool dev` shows the path.
    #[serde(default)]
    pub local_recycle: bool,
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

/// Fly.io Sprites (seed 002): one sprite per instance, built once, recycled from its golden
/// checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct SpritesSettings {
    pub sprite_token: Option<Secret>,
    #[serde(default = "SpritesSettings::default_api_url")]
    pub sprites_api_url: String,
    /// The setup, one exec per command (each retried), run after the env file is written and
    /// with its variables set: a JSON array of shell commands.
    #[serde(default = "SpritesSettings::default_setup_commands")]
    pub sprites_setup_commands: String,
    /// The runtime, registered as the sprite's service on `SPRITES_HTTP_PORT`.
    #[serde(default = "SpritesSettings::default_start_command")]
    pub sprites_start_command: String,
    #[serde(default = "SpritesSettings::default_http_port")]
    pub sprites_http_port: u16,
    /// Where the setup writes the instance's variables inside the sprite (mode 600).
    #[serde(default = "SpritesSettings::default_env_file")]
    pub sprites_env_file: String,
    /// How long one exec may take (a build step is minutes long).
    #[serde(default = "SpritesSettings::default_exec_timeout_ms")]
    pub sprites_exec_timeout_ms: u64,
}

impl SpritesSettings {
    fn default_api_url() -> String {
        "https://api.sprites.dev".into()
    }
    fn default_setup_commands() -> String {
        r#"["git clone --depth 1 --branch \"$OPENCLAW_GIT_REF\" https://github.com/xmtplabs/openclaw /home/sprite/openclaw", "cd /home/sprite/openclaw && pnpm install && pnpm build"]"#.into()
    }
    fn default_start_command() -> String {
        "cd /home/sprite/openclaw && exec node openclaw.mjs gateway --port 8080".into()
    }
    fn default_http_port() -> u16 {
        8080
    }
    fn default_env_file() -> String {
        "/home/sprite/.agentpool.env".into()
    }
    fn default_exec_timeout_ms() -> u64 {
        600_000
    }

    /// The setup commands, in order.
    pub fn setup_commands(&self) -> Result<Vec<String>, ConfigError> {
        serde_json::from_str(&self.sprites_setup_commands).map_err(|e| {
            ConfigError::new(
                "SPRITES_SETUP_COMMANDS",
                format!("must be a JSON array of strings: {e}"),
            )
        })
    }
}

impl Component for SpritesSettings {
    fn check(&self) -> Result<(), ConfigError> {
        self.setup_commands().map(|_| ())?;
        super::nonzero("SPRITES_EXEC_TIMEOUT_MS", self.sprites_exec_timeout_ms)
    }
}
