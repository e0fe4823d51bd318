//! Agent templates (seed 004's `agent_templates`, with seed 000's slug): what an agent is for —
//! its name, instructions (literal or a Notion page), model, and the tools it needs, each
//! provisioned by the pool or from credentials the claimer supplies (`userConfig`).
//!
//! A template never holds a credential: a `user` tool's values come with each claim, are checked
//! against [`user_fields`] before any instance is taken, and go to the instance only.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::error::{Error, Result};

pub const MAX_SLUG: usize = 64;
pub const MAX_MODEL: usize = 200;
pub const MAX_USER_VALUE: usize = 4096;

/// Who provides a tool's resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provisioning {
    /// The pool creates it at claim time (an inbox, a number).
    Pool,
    /// The claimer supplies its credentials in `userConfig`.
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolChoice {
    /// A tool id: `email`, `sms`, `crypto` (seed 004's plugins).
    #[schema(example = "email")]
    pub id: String,
    pub provisioning: Provisioning,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelChoice {
    /// The model the agent runs; null: the instance's own default.
    #[schema(example = "anthropic/claude-sonnet-4")]
    pub default: Option<String>,
    /// Whether a claim may name another model.
    #[serde(default)]
    pub allow_override: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Private,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "private" => Some(Visibility::Private),
            "public" => Some(Visibility::Public),
            _ => None,
        }
    }
}

/// A template as stored and shown. Nothing in it is secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub id: String,
    pub slug: String,
    pub creator_id: Option<String>,
    pub agent_name: String,
    pub instructions: Option<String>,
    /// A Notion page whose text is the instructions (seed 000), instead of `instructions`.
    pub instructions_page_id: Option<String>,
    pub model: ModelChoice,
    pub tools: Vec<ToolChoice>,
    pub visibility: Visibility,
    /// For each `user` tool, the `userConfig` fields a claim must carry.
    pub user_fields: Vec<UserField>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A template as written: checked by [`TemplateInput::check`] before it is stored.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateInput {
    /// Lowercase letters, digits and dashes, 1–64 characters, unique.
    #[schema(example = "trip-planner", pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    pub slug: String,
    pub creator_id: Option<String>,
    #[schema(example = "tokyo-trip-planner", min_length = 1, max_length = 100)]
    pub agent_name: String,
    /// Exactly one of `instructions` and `instructionsPageId`.
    pub instructions: Option<String>,
    #[schema(pattern = "^[0-9a-fA-F-]{32,36}$")]
    pub instructions_page_id: Option<String>,
    #[serde(default)]
    pub model: ModelChoice,
    #[serde(default)]
    pub tools: Vec<ToolChoice>,
    #[serde(default = "TemplateInput::private")]
    pub visibility: Visibility,
}

impl TemplateInput {
    fn private() -> Visibility {
        Visibility::Private
    }

    /// Checks every field; `Error::Invalid` names the first one at fault.
    pub fn check(&mut self) -> Result<()> {
        let slug_ok = !self.slug.is_empty()
            && self.slug.len() <= MAX_SLUG
            && self
                .slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.slug.starts_with('-');
        if !slug_ok {
            return Err(Error::Invalid(format!(
                "slug must be 1 to {MAX_SLUG} lowercase letters, digits or dashes, not starting with a dash"
            )));
        }
        self.agent_name = self.agent_name.trim().to_string();
        check_agent_name(&self.agent_name)?;
        if let Some(creator) = &self.creator_id {
            if creator.len() > 256 || creator.chars().any(char::is_control) {
                return Err(Error::Invalid(
                    "creatorId must be at most 256 characters, no control characters".into(),
                ));
            }
        }
        match (&self.instructions, &self.instructions_page_id) {
            (Some(text), None) => check_instructions(text)?,
            (None, Some(page)) => {
                check_page_id(page)?;
            }
            _ => {
                return Err(Error::Invalid(
                    "exactly one of instructions and instructionsPageId must be given".into(),
                ))
            }
        }
        if let Some(model) = &self.model.default {
            check_model(model)?;
        }
        let mut seen = Vec::new();
        for tool in &self.tools {
            if needs(&tool.id).is_none() {
                return Err(Error::Invalid(format!(
                    "tools: {:?} is not a tool; known: {}",
                    tool.id,
                    TOOLS.iter().map(|t| t.id).collect::<Vec<_>>().join(", ")
                )));
            }
            if seen.contains(&tool.id) {
                return Err(Error::Invalid(format!(
                    "tools: {:?} is listed twice",
                    tool.id
                )));
            }
            seen.push(tool.id.clone());
        }
        Ok(())
    }
}

pub const MAX_AGENT_NAME: usize = 100;
pub const MAX_INSTRUCTIONS: usize = 32 * 1024;

pub fn check_agent_name(agent_name: &str) -> Result<()> {
    if agent_name.is_empty() {
        return Err(Error::Invalid(
            "agentName must be a non-empty string".into(),
        ));
    }
    if agent_name.chars().count() > MAX_AGENT_NAME {
        return Err(Error::Invalid(format!(
            "agentName must be at most {MAX_AGENT_NAME} characters"
        )));
    }
    if agent_name.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "agentName must not contain control characters".into(),
        ));
    }
    Ok(())
}

pub fn check_instructions(instructions: &str) -> Result<()> {
    if instructions.trim().is_empty() {
        return Err(Error::Invalid(
            "instructions must be a non-empty string".into(),
        ));
    }
    if instructions.len() > MAX_INSTRUCTIONS {
        return Err(Error::Invalid(format!(
            "instructions must be at most {MAX_INSTRUCTIONS} bytes"
        )));
    }
    Ok(())
}

pub fn check_model(model: &str) -> Result<()> {
    let ok = !model.is_empty()
        && model.len() <= MAX_MODEL
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "model must be 1 to {MAX_MODEL} letters, digits or / - _ . :"
        )))
    }
}

/// A Notion page id: 32 hex digits, with or without the dashes of a UUID. Returned without them.
pub fn check_page_id(page_id: &str) -> Result<String> {
    let bare: String = page_id.chars().filter(|c| *c != '-').collect();
    if bare.len() == 32 && bare.bytes().all(|b| b.is_ascii_hexdigit()) && page_id.len() <= 36 {
        Ok(bare.to_ascii_lowercase())
    } else {
        Err(Error::Invalid(
            "a Notion page id is 32 hexadecimal digits (dashes allowed)".into(),
        ))
    }
}

/// One credential a `user` tool needs from the claimer: the `userConfig` field, and the variable
/// the instance gets it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserField {
    pub tool: &'static str,
    pub field: &'static str,
    #[serde(skip)]
    pub variable: &'static str,
    pub label: &'static str,
    pub required: bool,
}

/// A tool a template may name, and what it needs from a claimer who supplies it.
pub struct ToolNeeds {
    pub id: &'static str,
    pub fields: &'static [UserField],
}

const fn field(
    tool: &'static str,
    field: &'static str,
    variable: &'static str,
    label: &'static str,
    required: bool,
) -> UserField {
    UserField {
        tool,
        field,
        variable,
        label,
        required,
    }
}

/// Every tool a template may name (seed 004's table; OpenRouter and the wallet come with every
/// instance, but a claimer may still bring their own).
pub const TOOLS: &[ToolNeeds] = &[
    ToolNeeds {
        id: "email",
        fields: &[
            field(
                "email",
                "agentmailApiKey",
                "AGENTMAIL_API_KEY",
                "AgentMail API key",
                true,
            ),
            field(
                "email",
                "agentmailInboxId",
                "AGENTMAIL_INBOX_ID",
                "AgentMail inbox id",
                true,
            ),
        ],
    },
    ToolNeeds {
        id: "sms",
        fields: &[
            field(
                "sms",
                "telnyxApiKey",
                "TELNYX_API_KEY",
                "Telnyx API key",
                true,
            ),
            field(
                "sms",
                "telnyxPhoneNumber",
                "TELNYX_PHONE_NUMBER",
                "Telnyx phone number",
                true,
            ),
            field(
                "sms",
                "telnyxMessagingProfileId",
                "TELNYX_MESSAGING_PROFILE_ID",
                "Telnyx messaging profile id",
                false,
            ),
        ],
    },
    ToolNeeds {
        id: "crypto",
        fields: &[field(
            "crypto",
            "bankrApiKey",
            "BANKR_API_KEY",
            "Bankr API key",
            true,
        )],
    },
    ToolNeeds {
        id: "openrouter",
        fields: &[field(
            "openrouter",
            "openrouterApiKey",
            "OPENROUTER_API_KEY",
            "OpenRouter API key",
            true,
        )],
    },
    ToolNeeds {
        id: "wallet",
        fields: &[field(
            "wallet",
            "privateWalletKey",
            "PRIVATE_WALLET_KEY",
            "Wallet private key",
            true,
        )],
    },
];

pub fn needs(tool_id: &str) -> Option<&'static ToolNeeds> {
    TOOLS.iter().find(|t| t.id == tool_id)
}

/// The `userConfig` fields a template's `user` tools need.
pub fn user_fields(tools: &[ToolChoice]) -> Vec<UserField> {
    tools
        .iter()
        .filter(|t| t.provisioning == Provisioning::User)
        .filter_map(|t| needs(&t.id))
        .flat_map(|n| n.fields.iter().copied())
        .collect()
}

/// A claimer's credentials, checked against what the template's `user` tools need: the variables
/// the instance gets. Never shown: `Debug` names the variables only.
#[derive(Clone, Default)]
pub struct UserConfig(BTreeMap<&'static str, Secret>);

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl UserConfig {
    /// Checks `given` against `tools`: every required field of every `user` tool present, a
    /// non-empty string of printable characters, and no field that no `user` tool asks for. The
    /// messages name fields, never values.
    pub fn check(
        tools: &[ToolChoice],
        given: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Self> {
        let fields = user_fields(tools);
        let empty = serde_json::Map::new();
        let given = given.unwrap_or(&empty);
        if let Some(unknown) = given.keys().find(|k| !fields.iter().any(|f| f.field == *k)) {
            return Err(Error::Invalid(format!(
                "userConfig.{unknown} is not asked for by this template's user tools"
            )));
        }
        let mut values = BTreeMap::new();
        for f in &fields {
            match given.get(f.field) {
                None | Some(serde_json::Value::Null) if !f.required => {}
                None | Some(serde_json::Value::Null) => {
                    return Err(Error::Invalid(format!(
                        "userConfig.{} is required by the {} tool",
                        f.field, f.tool
                    )))
                }
                Some(serde_json::Value::String(value))
                    if !value.trim().is_empty()
                        && value.len() <= MAX_USER_VALUE
                        && !value.chars().any(char::is_control) =>
                {
                    values.insert(f.variable, Secret::new(value.trim()));
                }
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "userConfig.{} must be a non-empty string of at most {MAX_USER_VALUE} printable characters",
                        f.field
                    )))
                }
            }
        }
        Ok(Self(values))
    }

    /// The variables for the instance.
    pub fn variables(&self) -> impl Iterator<Item = (&'static str, &Secret)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(list: &[(&str, Provisioning)]) -> Vec<ToolChoice> {
        list.iter()
            .map(|(id, p)| ToolChoice {
                id: id.to_string(),
                provisioning: *p,
            })
            .collect()
    }

    #[test]
    fn user_config_is_checked_against_the_user_tools() {
        let t = tools(&[("email", Provisioning::Pool), ("sms", Provisioning::User)]);
        let ok = json!({"telnyxApiKey": "KEY0123456789", "telnyxPhoneNumber": "+15550001111"});
        let config = UserConfig::check(&t, ok.as_object()).unwrap();
        assert!(!format!("{config:?}").contains("KEY0123456789"));
        assert_eq!(config.variables().count(), 2);
        let missing = json!({"telnyxApiKey": "KEY0123456789"});
        let err = UserConfig::check(&t, missing.as_object()).unwrap_err();
        assert!(err.to_string().contains("telnyxPhoneNumber"), "{err}");
        assert!(UserConfig::check(&t, None).is_err());
        let stray = json!({"telnyxApiKey": "K", "telnyxPhoneNumber": "+1", "agentmailApiKey": "x"});
        let err = UserConfig::check(&t, stray.as_object()).unwrap_err();
        assert!(err.to_string().contains("agentmailApiKey"), "{err}");
        let bad = json!({"telnyxApiKey": 5, "telnyxPhoneNumber": "+1"});
        assert!(UserConfig::check(&t, bad.as_object()).is_err());
        // A template without user tools takes no userConfig at all.
        let pool_only = tools(&[("email", Provisioning::Pool)]);
        assert!(UserConfig::check(&pool_only, None).unwrap().is_empty());
    }

    #[test]
    fn templates_are_checked() {
        let mut input: TemplateInput = serde_json::from_value(json!({
            "slug": "trip-planner", "agentName": "Trip", "instructions": "Plan.",
            "tools": [{"id": "email", "provisioning": "pool"}]
        }))
        .unwrap();
        input.check().unwrap();
        let mut both = input.clone();
        both.instructions_page_id = Some("0123456789abcdef0123456789abcdef".into());
        assert!(both.check().is_err());
        let mut slug = input.clone();
        slug.slug = "Trip Planner".into();
        assert!(slug.check().is_err());
        let mut unknown = input.clone();
        unknown.tools.push(ToolChoice {
            id: "fax".into(),
            provisioning: Provisioning::Pool,
        });
        assert!(unknown.check().is_err());
        assert_eq!(
            check_page_id("01234567-89ab-cdef-0123-456789ABCDEF").unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        assert!(check_page_id("../etc").is_err());
    }
}
