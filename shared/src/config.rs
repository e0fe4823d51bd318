//! Settings, read once from the environment into one flat struct.
//!
//! Names and defaults follow the seed documents (`POOL_MIN_IDLE`, `POOL_STUCK_TIMEOUT_MS`, ...).
//! A missing or malformed value stops start-up with one line naming the setting.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A value that must never reach a log line, a page or a public endpoint.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn secrets_match(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Railway,
    Sprites,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Railway => "railway",
            ProviderKind::Sprites => "sprites",
        }
    }
}

/// `POOL_MAX_TOTAL_CAP` when unset (unless `POOL_MAX_TOTAL` is larger).
const DEFAULT_MAX_TOTAL_CAP: u32 = 100;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default = "defaults::port")]
    pub port: u16,
    pub pool_api_key: Option<Secret>,
    #[serde(default = "defaults::min_idle")]
    pub pool_min_idle: u32,
    #[serde(default = "defaults::max_total")]
    pub pool_max_total: u32,
    /// The most `maxTotal` an operator may set at run time (`PUT /api/pool/settings`); by default
    /// 100, or `POOL_MAX_TOTAL` if that is larger.
    pub pool_max_total_cap: Option<u32>,
    /// How long a dashboard login lasts.
    #[serde(default = "defaults::admin_session_ttl_ms")]
    pub admin_session_ttl_ms: u64,
    /// A header that a trusted proxy in front of every replica sets to the client's address
    /// (`x-forwarded-for`: its last entry), so that wrong keys are throttled per client rather than
    /// per proxy. Unset: the peer address of the connection.
    pub client_ip_header: Option<String>,
    #[serde(default = "defaults::stuck_timeout_ms")]
    pub pool_stuck_timeout_ms: u64,
    /// `serve` and `agentpool-scheduler` tick this often; `0` turns `serve`'s own timer off (for
    /// deployments that tick with `agentpool-scheduler` or a Lambda schedule).
    #[serde(default = "defaults::tick_interval_ms")]
    pub tick_interval_ms: u64,
    /// A tick starts no new work once this much time has passed (waiting for the tick lock,
    /// listings, health checks, destroys and creations all count), and ends within it plus one
    /// call's timeout (`OUTBOUND_TIMEOUT_MS` or `HEALTH_TIMEOUT_MS`, the longer).
    #[serde(default = "defaults::tick_budget_ms")]
    pub tick_budget_ms: u64,
    /// When `agentpool-scheduler` ticks: a cron expression with seconds
    /// (`sec min hour day-of-month month day-of-week`, UTC), as tokio-cron-scheduler reads it.
    /// Unset: every `TICK_INTERVAL_MS`.
    pub tick_cron: Option<String>,
    /// The API `agentpool-scheduler` ticks over HTTP (`POST {POOL_URL}/api/pool/tick`, with
    /// `POOL_API_KEY`), for deployments where only the API reaches the database.
    pub pool_url: Option<String>,
    pub database_url: Option<Secret>,
    #[serde(default = "defaults::database_max_connections")]
    pub database_max_connections: u32,
    /// A `claiming` row older than this was left by a replica that died mid-claim.
    #[serde(default = "defaults::claim_timeout_ms")]
    pub claim_timeout_ms: u64,
    /// How many idle instances one claim may try before answering 502.
    #[serde(default = "defaults::claim_max_attempts")]
    pub claim_max_attempts: u32,
    #[serde(default = "defaults::provision_timeout_ms")]
    pub provision_timeout_ms: u64,
    #[serde(default = "defaults::health_timeout_ms")]
    pub health_timeout_ms: u64,
    #[serde(default = "defaults::health_concurrency")]
    pub health_concurrency: usize,
    /// Consecutive failed health checks before an idle instance is replaced or a claimed one is
    /// declared crashed. One blip is not a death.
    #[serde(default = "defaults::health_failure_threshold")]
    pub health_failure_threshold: u32,
    /// Failed checks only condemn an instance whose last good check is older than this, and a
    /// resource missing from the provider's listing is gone only once it is missing this long.
    /// Ticks come as fast as claims kick them; time is what makes a failure lasting.
    #[serde(default = "defaults::health_grace_ms")]
    pub health_grace_ms: u64,
    /// How long creating one instance's resources may take. A `starting` row that has no resource
    /// recorded after this was left by a creator that died or was cut off, and is destroyed.
    #[serde(default = "defaults::create_timeout_ms")]
    pub create_timeout_ms: u64,
    #[serde(default = "defaults::provider")]
    pub pool_provider: ProviderKind,
    #[serde(default = "defaults::environment")]
    pub pool_environment: String,
    /// Prefix of every provider resource this pool creates; resources with it and no row are orphans.
    #[serde(default = "defaults::name_prefix")]
    pub pool_name_prefix: String,
    /// Where the local provider keeps one record per stub agent it started.
    pub local_state_dir: Option<PathBuf>,
    /// The `agentpool` binary the local provider starts as `agentpool stub-agent`.
    pub local_agent_bin: Option<PathBuf>,
    pub openclaw_primary_model: Option<String>,
    pub railway_git_branch: Option<String>,
    /// Timeout of one attempt of a call to an outside API (Railway, tools).
    #[serde(default = "defaults::outbound_timeout_ms")]
    pub outbound_timeout_ms: u64,
    pub railway_api_token: Option<Secret>,
    /// Several tokens, comma-separated, used in rotation when one is rate-limited.
    pub railway_api_tokens: Option<Secret>,
    #[serde(default = "defaults::railway_api_url")]
    pub railway_api_url: String,
    #[serde(default)]
    pub railway_layout: RailwayLayout,
    pub railway_project_id: Option<String>,
    pub railway_environment_id: Option<String>,
    pub railway_team_id: Option<String>,
    #[serde(default = "defaults::railway_runtime_image")]
    pub railway_runtime_image: String,
    pub railway_start_command: Option<String>,
    /// Mount path of a volume for each instance; none when unset.
    pub railway_volume_mount: Option<String>,
    /// `https` for Railway's domains; `http` against a local fake.
    #[serde(default = "defaults::railway_public_scheme")]
    pub railway_public_scheme: String,
    /// Makes one OpenRouter key per instance; none when unset.
    pub openrouter_management_key: Option<Secret>,
    /// Credit limit of each key (USD).
    pub openrouter_key_limit: Option<f64>,
    /// `daily`, `weekly` or `monthly`.
    pub openrouter_key_limit_reset: Option<String>,
    #[serde(default = "defaults::openrouter_api_url")]
    pub openrouter_api_url: String,
    /// Makes one AgentMail inbox per instance; none when unset.
    pub agentmail_api_key: Option<Secret>,
    pub agentmail_domain: Option<String>,
    #[serde(default = "defaults::agentmail_api_url")]
    pub agentmail_api_url: String,
    /// Orders one Telnyx number per instance; none when unset.
    pub telnyx_api_key: Option<Secret>,
    pub telnyx_messaging_profile_id: Option<String>,
    #[serde(default = "defaults::telnyx_api_url")]
    pub telnyx_api_url: String,
    /// Handed to each instance for Bankr; none when unset.
    pub bankr_api_key: Option<Secret>,
    /// When set, `GET /metrics` asks for it as `Authorization: Bearer`; public otherwise.
    pub metrics_token: Option<Secret>,
    /// The XMTP network instances join.
    #[serde(default = "defaults::xmtp_env")]
    pub xmtp_env: String,
}

/// How instances are laid out at Railway.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RailwayLayout {
    /// One service per instance in `RAILWAY_PROJECT_ID` (seed 000).
    #[default]
    Shared,
    /// One project per instance in the workspace `RAILWAY_TEAM_ID` (seed 004).
    Project,
}

mod defaults {
    use super::ProviderKind;

    pub fn port() -> u16 {
        3001
    }
    pub fn min_idle() -> u32 {
        3
    }
    pub fn max_total() -> u32 {
        10
    }
    pub fn stuck_timeout_ms() -> u64 {
        900_000
    }
    pub fn admin_session_ttl_ms() -> u64 {
        12 * 3_600_000
    }
    pub fn tick_interval_ms() -> u64 {
        30_000
    }
    pub fn tick_budget_ms() -> u64 {
        25_000
    }
    pub fn database_max_connections() -> u32 {
        10
    }
    pub fn claim_timeout_ms() -> u64 {
        120_000
    }
    pub fn claim_max_attempts() -> u32 {
        3
    }
    pub fn provision_timeout_ms() -> u64 {
        60_000
    }
    pub fn health_timeout_ms() -> u64 {
        5_000
    }
    pub fn health_concurrency() -> usize {
        40
    }
    pub fn health_failure_threshold() -> u32 {
        3
    }
    pub fn health_grace_ms() -> u64 {
        60_000
    }
    pub fn create_timeout_ms() -> u64 {
        120_000
    }
    pub fn provider() -> ProviderKind {
        ProviderKind::Local
    }
    pub fn environment() -> String {
        "dev".into()
    }
    pub fn name_prefix() -> String {
        "agentpool-".into()
    }
    pub fn outbound_timeout_ms() -> u64 {
        30_000
    }
    pub fn railway_api_url() -> String {
        "https://backboard.railway.com/graphql/v2".into()
    }
    pub fn railway_runtime_image() -> String {
        "ghcr.io/xmtplabs/convos-runtime:latest".into()
    }
    pub fn railway_public_scheme() -> String {
        "https".into()
    }
    pub fn openrouter_api_url() -> String {
        "https://openrouter.ai/api/v1".into()
    }
    pub fn agentmail_api_url() -> String {
        "https://api.agentmail.to/v0".into()
    }
    pub fn telnyx_api_url() -> String {
        "https://api.telnyx.com/v2".into()
    }
    pub fn xmtp_env() -> String {
        "dev".into()
    }
}

/// Reads a cron expression the way tokio-cron-scheduler does, so that what start-up accepts is
/// what the scheduler runs: six fields, seconds first; day of month and day of week both apply.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
        .map_err(|e| format!("{expression:?} is not a cron expression with seconds ({e})"))
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    fn new(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // An empty value means "not set", as it does in most .env files and compose files.
        let vars: Vec<(String, String)> = vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let settings: Settings = envy::from_iter(vars.clone()).map_err(|e| match e {
            envy::Error::MissingValue(field) => {
                ConfigError::new(&field.to_ascii_uppercase(), "missing")
            }
            envy::Error::Custom(message) => {
                // envy names the variable for number parse errors only; for the others, find
                // the one variable that fails on its own.
                let setting = message
                    .rsplit_once("provided by ")
                    .map(|(_, name)| name.trim().to_string())
                    .or_else(|| {
                        vars.iter()
                            .find(|pair| envy::from_iter::<_, Settings>([(*pair).clone()]).is_err())
                            .map(|(name, _)| name.clone())
                    })
                    .unwrap_or_else(|| "environment".into());
                ConfigError::new(&setting, message)
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.pool_min_idle > self.pool_max_total {
            return Err(ConfigError::new(
                "POOL_MIN_IDLE",
                format!(
                    "{} is larger than POOL_MAX_TOTAL ({})",
                    self.pool_min_idle, self.pool_max_total
                ),
            ));
        }
        if let Some(cap) = self.pool_max_total_cap {
            if cap < self.pool_max_total {
                return Err(ConfigError::new(
                    "POOL_MAX_TOTAL_CAP",
                    format!(
                        "{cap} is smaller than POOL_MAX_TOTAL ({})",
                        self.pool_max_total
                    ),
                ));
            }
        }
        if self.admin_session_ttl_ms == 0 {
            return Err(ConfigError::new(
                "ADMIN_SESSION_TTL_MS",
                "must be greater than 0",
            ));
        }
        if let Some(key) = &self.pool_api_key {
            if key.expose().len() < 16 {
                return Err(ConfigError::new(
                    "POOL_API_KEY",
                    "must be at least 16 characters",
                ));
            }
        }
        if self.claim_timeout_ms <= self.provision_timeout_ms {
            return Err(ConfigError::new(
                "CLAIM_TIMEOUT_MS",
                format!(
                    "must be longer than PROVISION_TIMEOUT_MS ({} ms), or live claims would be reaped",
                    self.provision_timeout_ms
                ),
            ));
        }
        if self.health_timeout_ms >= self.tick_budget_ms {
            return Err(ConfigError::new(
                "HEALTH_TIMEOUT_MS",
                format!(
                    "must be shorter than TICK_BUDGET_MS ({} ms), or no health check fits in a tick",
                    self.tick_budget_ms
                ),
            ));
        }
        if self.create_timeout_ms >= self.pool_stuck_timeout_ms {
            return Err(ConfigError::new(
                "CREATE_TIMEOUT_MS",
                format!(
                    "must be shorter than POOL_STUCK_TIMEOUT_MS ({} ms)",
                    self.pool_stuck_timeout_ms
                ),
            ));
        }
        for (name, value) in [
            ("CREATE_TIMEOUT_MS", self.create_timeout_ms),
            ("TICK_BUDGET_MS", self.tick_budget_ms),
            ("HEALTH_TIMEOUT_MS", self.health_timeout_ms),
            ("PROVISION_TIMEOUT_MS", self.provision_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::new(name, "must be greater than 0"));
            }
        }
        if self.health_concurrency == 0 {
            return Err(ConfigError::new(
                "HEALTH_CONCURRENCY",
                "must be greater than 0",
            ));
        }
        if self.health_failure_threshold == 0 {
            return Err(ConfigError::new(
                "HEALTH_FAILURE_THRESHOLD",
                "must be greater than 0",
            ));
        }
        if self.claim_max_attempts == 0 {
            return Err(ConfigError::new(
                "CLAIM_MAX_ATTEMPTS",
                "must be greater than 0",
            ));
        }
        if self.database_max_connections < 2 {
            // The tick holds one connection for its lock and needs another to work.
            return Err(ConfigError::new(
                "DATABASE_MAX_CONNECTIONS",
                "must be at least 2",
            ));
        }
        if let Some(cron) = &self.tick_cron {
            let parsed = parse_cron(cron).map_err(|e| ConfigError::new("TICK_CRON", e))?;
            // A pattern can parse and still never match (`0 0 0 30 2 *`): it would never tick.
            parsed
                .find_next_occurrence(&chrono::Utc::now(), false)
                .map_err(|_| ConfigError::new("TICK_CRON", format!("{cron:?} never fires")))?;
        }
        if let Some(url) = &self.pool_url {
            let scheme = reqwest::Url::parse(url).map(|u| u.scheme().to_string());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(ConfigError::new(
                    "POOL_URL",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        let prefix_ok = !self.pool_name_prefix.is_empty()
            && self
                .pool_name_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !prefix_ok {
            // Sprites names are lowercase [0-9a-z-]; one rule for every provider.
            return Err(ConfigError::new(
                "POOL_NAME_PREFIX",
                "must be non-empty lowercase [0-9a-z-]",
            ));
        }
        Ok(())
    }

    /// The most `maxTotal` may be set to at run time.
    pub fn max_total_cap(&self) -> u32 {
        self.pool_max_total_cap
            .unwrap_or(DEFAULT_MAX_TOTAL_CAP.max(self.pool_max_total))
    }
    pub fn admin_session_ttl(&self) -> Duration {
        Duration::from_millis(self.admin_session_ttl_ms)
    }
    pub fn stuck_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_stuck_timeout_ms)
    }
    pub fn claim_timeout(&self) -> Duration {
        Duration::from_millis(self.claim_timeout_ms)
    }
    /// `None` when ticking on a timer is turned off.
    pub fn tick_interval(&self) -> Option<Duration> {
        (self.tick_interval_ms > 0).then(|| Duration::from_millis(self.tick_interval_ms))
    }
    /// The scheduler's cron schedule, when `TICK_CRON` is set (checked at start-up).
    pub fn tick_cron(&self) -> Option<croner::Cron> {
        self.tick_cron.as_deref().and_then(|c| parse_cron(c).ok())
    }
    pub fn health_grace(&self) -> Duration {
        Duration::from_millis(self.health_grace_ms)
    }
    pub fn create_timeout(&self) -> Duration {
        Duration::from_millis(self.create_timeout_ms)
    }
    pub fn outbound_timeout(&self) -> Duration {
        Duration::from_millis(self.outbound_timeout_ms)
    }
    pub fn tick_budget(&self) -> Duration {
        Duration::from_millis(self.tick_budget_ms)
    }
    /// How long past its budget a tick may run: the longest single call it may have started
    /// just before the budget ran out (an outside API call, a health check). Whatever is still
    /// running then is cut, as a process that died there would be, and recovered the same way.
    pub fn tick_overrun(&self) -> Duration {
        self.outbound_timeout().max(self.health_timeout())
    }
    /// The longest a tick takes, from its call to its answer (a scheduled Lambda tick must end
    /// within the function's timeout).
    pub fn tick_bound(&self) -> Duration {
        self.tick_budget() + self.tick_overrun()
    }
    pub fn provision_timeout(&self) -> Duration {
        Duration::from_millis(self.provision_timeout_ms)
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_seed() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.port, 3001);
        assert_eq!(s.pool_min_idle, 3);
        assert_eq!(s.pool_max_total, 10);
        assert_eq!(s.pool_stuck_timeout_ms, 900_000);
        assert_eq!(s.tick_interval(), Some(Duration::from_secs(30)));
        assert_eq!(s.health_grace(), Duration::from_secs(60));
        let off = Settings::from_vars(vars(&[("TICK_INTERVAL_MS", "0")])).unwrap();
        assert_eq!(off.tick_interval(), None);
        assert_eq!(s.pool_provider, ProviderKind::Local);
        assert!(s.pool_api_key.is_none());
    }

    #[test]
    fn malformed_value_names_the_setting() {
        let err = Settings::from_vars(vars(&[("POOL_MIN_IDLE", "three")])).unwrap_err();
        assert_eq!(err.setting, "POOL_MIN_IDLE", "{err}");
        let err = Settings::from_vars(vars(&[("POOL_PROVIDER", "heroku")])).unwrap_err();
        assert_eq!(err.setting, "POOL_PROVIDER", "{err}");
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let err = Settings::from_vars(vars(&[("POOL_MIN_IDLE", "11"), ("POOL_MAX_TOTAL", "10")]))
            .unwrap_err();
        assert_eq!(err.setting, "POOL_MIN_IDLE");
        let err = Settings::from_vars(vars(&[("POOL_API_KEY", "short")])).unwrap_err();
        assert_eq!(err.setting, "POOL_API_KEY");
        assert!(!err.to_string().contains("short"), "the key leaked: {err}");
        let err = Settings::from_vars(vars(&[("CLAIM_TIMEOUT_MS", "1000")])).unwrap_err();
        assert_eq!(err.setting, "CLAIM_TIMEOUT_MS");
        let err = Settings::from_vars(vars(&[("TICK_BUDGET_MS", "5000")])).unwrap_err();
        assert_eq!(err.setting, "HEALTH_TIMEOUT_MS", "{err}");
        let err = Settings::from_vars(vars(&[("CREATE_TIMEOUT_MS", "0")])).unwrap_err();
        assert_eq!(err.setting, "CREATE_TIMEOUT_MS", "{err}");
        let err = Settings::from_vars(vars(&[("POOL_MAX_TOTAL_CAP", "5")])).unwrap_err();
        assert_eq!(err.setting, "POOL_MAX_TOTAL_CAP", "{err}");
    }

    #[test]
    fn the_cap_defaults_to_100_or_the_maximum() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.max_total_cap(), 100);
        let s = Settings::from_vars(vars(&[("POOL_MAX_TOTAL", "500")])).unwrap();
        assert_eq!(s.max_total_cap(), 500);
        let s = Settings::from_vars(vars(&[("POOL_MAX_TOTAL_CAP", "20")])).unwrap();
        assert_eq!(s.max_total_cap(), 20);
    }

    #[test]
    fn tick_cron_takes_seconds_and_must_fire() {
        let s = Settings::from_vars(vars(&[("TICK_CRON", "*/30 * * * * *")])).unwrap();
        assert!(s.tick_cron().is_some());
        for bad in [
            "*/30 * * * *",
            "every minute",
            "0 0 0 30 2 *",
            "61 * * * * *",
        ] {
            let err = Settings::from_vars(vars(&[("TICK_CRON", bad)])).unwrap_err();
            assert_eq!(err.setting, "TICK_CRON", "{bad}: {err}");
        }
        let err = Settings::from_vars(vars(&[("POOL_URL", "pool.example.com")])).unwrap_err();
        assert_eq!(err.setting, "POOL_URL", "{err}");
        assert!(Settings::from_vars(vars(&[("POOL_URL", "https://pool.example.com")])).is_ok());
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Settings::from_vars(vars(&[("POOL_API_KEY", "0123456789abcdef-secret")])).unwrap();
        assert!(!format!("{s:?}").contains("0123456789abcdef-secret"));
    }
}

impl Settings {
    /// The environment variables settings are read from, named by serde itself (the fields
    /// `Settings` asks a deserializer for), so that a new setting cannot be left out. For checks
    /// of deployment files against what the code reads.
    pub fn variables() -> Vec<String> {
        let fields = match Settings::deserialize(FieldNames) {
            Err(FieldsAsked(fields)) => fields,
            Ok(_) => &[],
        };
        fields.iter().map(|f| f.to_ascii_uppercase()).collect()
    }
}

/// A deserializer that answers every request with an error, carrying the field names of the
/// struct it was asked for.
struct FieldNames;

#[derive(Debug)]
struct FieldsAsked(&'static [&'static str]);

impl fmt::Display for FieldsAsked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for FieldsAsked {}

impl serde::de::Error for FieldsAsked {
    fn custom<T: fmt::Display>(_: T) -> Self {
        FieldsAsked(&[])
    }
}

impl<'de> serde::Deserializer<'de> for FieldNames {
    type Error = FieldsAsked;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, FieldsAsked> {
        Err(FieldsAsked(&[]))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, FieldsAsked> {
        Err(FieldsAsked(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod variables_tests {
    use super::*;

    #[test]
    fn variables_are_the_settings_that_are_read() {
        let names = Settings::variables();
        for name in [
            "PORT",
            "DATABASE_URL",
            "POOL_API_KEY",
            "POOL_PROVIDER",
            "TICK_INTERVAL_MS",
        ] {
            assert!(
                names.contains(&name.to_string()),
                "{name} missing: {names:?}"
            );
        }
        // Every name is one from_vars takes: a malformed value is refused naming it.
        for name in &names {
            if let Err(err) = Settings::from_vars([(name.clone(), "\u{1}not a value".into())]) {
                assert_eq!(&err.setting, name, "{err}");
            }
        }
        assert!(!names.contains(&"POOL_NOT_A_SETTING".to_string()));
    }
}
