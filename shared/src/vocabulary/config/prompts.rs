//! Prompts (`prompts`): agent instructions kept as Notion pages (seed 000's `/api/prompts/:pageId`).

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, Component, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
pub struct PromptSettings {
    /// The Notion integration's token; unset, no page can be read.
    pub notion_api_key: Option<Secret>,
    #[serde(default = "PromptSettings::default_api_url")]
    pub notion_api_url: String,
    /// How long a page's text is served from Postgres before Notion is asked again; every replica
    /// shares the one copy.
    #[serde(default = "PromptSettings::default_ttl_ms")]
    pub prompt_cache_ttl_ms: u64,
}

impl PromptSettings {
    fn default_api_url() -> String {
        "https://api.notion.com/v1".into()
    }
    fn default_ttl_ms() -> u64 {
        3_600_000
    }

    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.prompt_cache_ttl_ms)
    }
}

impl Component for PromptSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("PROMPT_CACHE_TTL_MS", self.prompt_cache_ttl_ms)
    }
}
