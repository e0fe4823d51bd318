//! The pool's vocabulary: instance states, identifiers and the secrets minted per instance.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::distributions::{Alphanumeric, DistString};
use rand::RngCore;
use serde::Serialize;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// Where an instance is in its life.
///
/// `starting → idle → claiming → claimed`, `claimed → crashed` when its runtime dies,
/// any state `→ destroying` (worked off by the tick, then the row goes), and for providers that
/// restore a checkpoint `recycling → idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Starting,
    Idle,
    Claiming,
    Claimed,
    Crashed,
    Destroying,
    Recycling,
}

impl InstanceStatus {
    pub const ALL: [InstanceStatus; 7] = [
        InstanceStatus::Starting,
        InstanceStatus::Idle,
        InstanceStatus::Claiming,
        InstanceStatus::Claimed,
        InstanceStatus::Crashed,
        InstanceStatus::Destroying,
        InstanceStatus::Recycling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Starting => "starting",
            InstanceStatus::Idle => "idle",
            InstanceStatus::Claiming => "claiming",
            InstanceStatus::Claimed => "claimed",
            InstanceStatus::Crashed => "crashed",
            InstanceStatus::Destroying => "destroying",
            InstanceStatus::Recycling => "recycling",
        }
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown instance status {0:?}")]
pub struct UnknownStatus(String);

impl FromStr for InstanceStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

impl Type<Postgres> for InstanceStatus {
    fn type_info() -> PgTypeInfo {
        <&str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for InstanceStatus {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as Decode<Postgres>>::decode(value)?;
        Ok(text.parse()?)
    }
}

impl Encode<'_, Postgres> for InstanceStatus {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.as_str(), buf)
    }
}

/// Who caused a transition, as recorded in `instance_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Tick,
    Claim,
    Operator,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Tick => "tick",
            Actor::Claim => "claim",
            Actor::Operator => "operator",
        }
    }
}

/// 12 lowercase alphanumerics: short enough for a URL, valid in every provider's names.
pub fn new_instance_id() -> String {
    Alphanumeric
        .sample_string(&mut rand::thread_rng(), 12)
        .to_ascii_lowercase()
}

/// The name a claimed instance's resource takes at the provider, so that an operator finds it by
/// its agent there (seeds 001 and 003): the pool's prefix, the agent's name in lowercase letters,
/// digits and dashes, and the instance id, which keeps it unique and unlike any generated name
/// (`<prefix><id>` has no dash after the prefix). `None` for a name with nothing to show.
pub fn claimed_name(prefix: &str, agent_name: &str, instance_id: &str) -> Option<String> {
    let mut slug = String::new();
    for c in agent_name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 32 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    (!slug.is_empty()).then(|| format!("{prefix}{slug}-{instance_id}"))
}

/// The name of a tool resource a claim makes for the instance named `instance_name`: that name and
/// a mark of the claim. What one user was given (an inbox's address) is then never given again to
/// the next user of a recycled instance, and the tick still knows whose it is
/// ([`instance_name_of`]).
pub fn claim_resource_name(instance_name: &str, claim_token: uuid::Uuid) -> String {
    let mark = claim_token.simple().to_string();
    format!("{instance_name}-{}", &mark[..8])
}

/// The names of the instances a tool resource named `name` may belong to: its own name (made at
/// creation) or that name without a claim's mark ([`claim_resource_name`]).
pub fn instance_name_of(name: &str) -> [&str; 2] {
    [name, name.rsplit_once('-').map_or(name, |(base, _)| base)]
}

/// 32 random bytes as 64 hex chars.
pub fn new_gateway_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// One row of `instances`, as the API and the tick see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub url: Option<String>,
    pub status: InstanceStatus,
    pub status_since: DateTime<Utc>,
    pub agent_name: Option<String>,
    pub instructions: Option<String>,
    pub join_url: Option<String>,
    pub conversation_id: Option<String>,
    pub invite_url: Option<String>,
    pub template_id: Option<String>,
    pub health_failures: i32,
    pub destroy_attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub absent_since: Option<DateTime<Utc>>,
    /// The last good sign of life: a ready answer to a health check, or a pushed heartbeat.
    pub last_ok_at: Option<DateTime<Utc>>,
}

impl Instance {
    /// A row as it is the moment it enters `status`, with nothing claimed, checked or failed yet
    /// (the tick's simulator and the plans' tests build fleets from it).
    pub fn new(
        id: &str,
        name: String,
        url: Option<String>,
        status: InstanceStatus,
        since: DateTime<Utc>,
    ) -> Self {
        Self {
            id: id.into(),
            name,
            url,
            status,
            status_since: since,
            agent_name: None,
            instructions: None,
            join_url: None,
            conversation_id: None,
            invite_url: None,
            template_id: None,
            health_failures: 0,
            destroy_attempts: 0,
            next_attempt_at: None,
            last_error: None,
            created_at: since,
            claimed_at: None,
            last_checked_at: None,
            failing_since: None,
            absent_since: None,
            last_ok_at: None,
        }
    }
}

/// The columns of [`Instance`], for `SELECT`s that read it.
pub const INSTANCE_COLUMNS: &str =
    "id, name, url, status, status_since, agent_name, instructions, \
     join_url, conversation_id, invite_url, template_id, health_failures, destroy_attempts, \
     next_attempt_at, last_error, created_at, claimed_at, last_checked_at, failing_since, \
     absent_since, last_ok_at";

/// What a runtime's `GET /pool/health` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// 200 with `{"ready": true}`; a runtime that knows its conversation says which.
    Ready { conversation_id: Option<String> },
    /// Answered, but not ready (503, or `ready: false`).
    NotReady,
    /// No answer: refused, timed out, or garbage.
    Unreachable,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready { .. })
    }
}

/// What a compute provider says of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceStatus {
    /// Deployed and running; its runtime can be health-checked.
    Running,
    /// Being built or deployed.
    Deploying,
    /// The provider reports a failed or crashed deployment.
    Failed,
}

/// A tool's resource (a key, an inbox, a number) as the tool lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResource {
    pub tool_id: String,
    pub resource_id: String,
    /// The name or tag it carries: the instance's name.
    pub name: String,
}

/// A tool resource a row records, as the tick reads it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordedTool {
    /// `instance_services.id`.
    pub id: i64,
    pub instance_id: String,
    pub tool_id: String,
    pub resource_id: String,
    /// Since when its tool's listings lack it; `None` if the last one showed it.
    pub absent_since: Option<DateTime<Utc>>,
}

/// One resource in a provider's listing.
#[derive(Debug, Clone)]
pub struct ObservedResource {
    pub name: String,
    pub resource_id: String,
    pub status: ResourceStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_text() {
        for status in InstanceStatus::ALL {
            assert_eq!(status.as_str().parse::<InstanceStatus>().unwrap(), status);
        }
        assert!("deleted".parse::<InstanceStatus>().is_err());
    }

    #[test]
    fn a_claimed_name_shows_the_agent_and_never_looks_generated() {
        assert_eq!(
            claimed_name("ap-", "Tokyo Trip Planner!", "abc123def456").as_deref(),
            Some("ap-tokyo-trip-planner-abc123def456")
        );
        // An agent named like an instance id still gets a name no generated one has.
        let id = new_instance_id();
        let named = claimed_name("ap-", &id, "abc123def456").unwrap();
        assert_ne!(named, format!("ap-{id}"));
        assert!(named.trim_start_matches("ap-").contains('-'));
        assert_eq!(claimed_name("ap-", "!!! ???", "abc123def456"), None);
        let long = claimed_name("ap-", &"x".repeat(500), "abc123def456").unwrap();
        assert!(long.len() <= "ap-".len() + 32 + 1 + 12, "{long}");
    }

    #[test]
    fn identifiers_have_the_promised_shape() {
        let id = new_instance_id();
        assert_eq!(id.len(), 12);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let token = new_gateway_token();
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(token, new_gateway_token());
    }
}
