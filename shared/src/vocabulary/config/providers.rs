//! Compute providers (`providers`): which one, and each one's own settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{
    nonzero, read, variables, Component, ConfigError, ProviderKind, RailwayLayout, Secret, Vars,
};

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
    /// The image every instance runs. Unset: [`RailwaySettings::DEFAULT_IMAGE`], unless instances
    /// are built from `RAILWAY_SOURCE_REPO` (exactly one of the two says where instances come from).
    pub railway_runtime_image: Option<String>,
    /// `owner/name` of a GitHub repo each instance's service is built from (seeds 001, 003), in
    /// place of an image.
    pub railway_source_repo: Option<String>,
    /// The branch built; unset: the repo's default branch.
    pub railway_source_branch: Option<String>,
    /// The directory of the repo holding the Dockerfile (seed 003's `agent`).
    pub railway_source_root_dir: Option<String>,
    /// How long one build from source may take before its creation fails (seeds see ~5 min).
    #[serde(default = "RailwaySettings::default_build_timeout_ms")]
    pub railway_build_timeout_ms: u64,
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
    pub const DEFAULT_IMAGE: &'static str = "ghcr.io/xmtplabs/convos-runtime:latest";

    fn default_build_timeout_ms() -> u64 {
        600_000
    }

    pub fn build_timeout(&self) -> Duration {
        Duration::from_millis(self.railway_build_timeout_ms)
    }

    /// Where instances come from: the image, or the repo they are built from.
    pub fn source(&self) -> RailwaySource {
        match &self.railway_source_repo {
            Some(repo) => RailwaySource::Repo {
                repo: repo.clone(),
                branch: self.railway_source_branch.clone(),
                root_dir: self.railway_source_root_dir.clone(),
            },
            None => RailwaySource::Image(
                self.railway_runtime_image
                    .clone()
                    .unwrap_or_else(|| Self::DEFAULT_IMAGE.into()),
            ),
        }
    }
    fn default_public_scheme() -> String {
        "https".into()
    }
}

/// Where Railway instances come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RailwaySource {
    Image(String),
    /// Built by Railway from a GitHub repo, which takes minutes.
    Repo {
        repo: String,
        branch: Option<String>,
        root_dir: Option<String>,
    },
}

impl Component for RailwaySettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("RAILWAY_BUILD_TIMEOUT_MS", self.railway_build_timeout_ms)?;
        match &self.railway_source_repo {
            Some(_) if self.railway_runtime_image.is_some() => Err(ConfigError::new(
                "RAILWAY_SOURCE_REPO",
                "and RAILWAY_RUNTIME_IMAGE are both set; instances come from one of them",
            )),
            Some(repo) => {
                let parts: Vec<&str> = repo.split('/').collect();
                if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                    return Err(ConfigError::new(
                        "RAILWAY_SOURCE_REPO",
                        format!("{repo:?} is not a GitHub repo as owner/name"),
                    ));
                }
                Ok(())
            }
            None => {
                for (setting, value) in [
                    ("RAILWAY_SOURCE_BRANCH", &self.railway_source_branch),
                    ("RAILWAY_SOURCE_ROOT_DIR", &self.railway_source_root_dir),
                ] {
                    if value.is_some() {
                        return Err(ConfigError::new(
                            setting,
                            "is set but RAILWAY_SOURCE_REPO is not; it says what to build",
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

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
