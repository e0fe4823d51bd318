//! Tools (`tools`): each one's settings; a tool whose key is unset is skipped.

use serde::Deserialize;

use super::{read, variables, Component, ConfigError, Secret, Vars};

#[derive(Debug, Clone)]
pub struct ToolSettings {
    pub openrouter: OpenRouterSettings,
    pub agentmail: AgentMailSettings,
    pub telnyx: TelnyxSettings,
    pub bankr: BankrSettings,
}

impl ToolSettings {
    pub fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            openrouter: read(vars)?,
            agentmail: read(vars)?,
            telnyx: read(vars)?,
            bankr: read(vars)?,
        })
    }

    pub fn variables() -> Vec<String> {
        [
            variables::<OpenRouterSettings>(),
            variables::<AgentMailSettings>(),
            variables::<TelnyxSettings>(),
            variables::<BankrSettings>(),
        ]
        .concat()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OpenRouterSettings {
    /// Makes one OpenRouter key per instance; none when unset.
    pub openrouter_management_key: Option<Secret>,
    /// Credit limit of each key (USD).
    pub openrouter_key_limit: Option<f64>,
    /// `daily`, `weekly` or `monthly`.
    pub openrouter_key_limit_reset: Option<String>,
    #[serde(default = "OpenRouterSettings::default_api_url")]
    pub openrouter_api_url: String,
}

impl OpenRouterSettings {
    fn default_api_url() -> String {
        "https://openrouter.ai/api/v1".into()
    }
}

impl Component for OpenRouterSettings {}

#[derive(Debug, Clone, Deserialize)]
pub struct AgentMailSettings {
    /// Makes one AgentMail inbox per instance; none when unset.
    pub agentmail_api_key: Option<Secret>,
    pub agentmail_domain: Option<String>,
    #[serde(default = "AgentMailSettings::default_api_url")]
    pub agentmail_api_url: String,
}

impl AgentMailSettings {
    fn default_api_url() -> String {
        "https://api.agentmail.to/v0".into()
    }
}

impl Component for AgentMailSettings {}

#[derive(Debug, Clone, Deserialize)]
pub struct TelnyxSettings {
    /// Orders one Telnyx number per instance; none when unset.
    pub telnyx_api_key: Option<Secret>,
    pub telnyx_messaging_profile_id: Option<String>,
    #[serde(default = "TelnyxSettings::default_api_url")]
    pub telnyx_api_url: String,
}

impl TelnyxSettings {
    fn default_api_url() -> String {
        "https://api.telnyx.com/v2".into()
    }
}

impl Component for TelnyxSettings {}

#[derive(Debug, Clone, Deserialize)]
pub struct BankrSettings {
    /// Handed to each instance for Bankr; none when unset.
    pub bankr_api_key: Option<Secret>,
}

impl Component for BankrSettings {}
