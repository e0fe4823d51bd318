//! Settings, read once from the environment: one small struct per component (claim, tick, each
//! provider, each tool, ...), in a file of its own here with its defaults and its checks, and
//! [`Settings`] composing them. A module is handed its own part (`settings.claim`,
//! `&settings.providers.railway`). Checks across components are in [`Settings::from_vars`].
//!
//! This is vocabulary: it depends on nothing else in the crate, so that any layer can name the
//! settings it takes.
//!
//! Names and defaults follow the seed documents (`POOL_MIN_IDLE`, `POOL_STUCK_TIMEOUT_MS`, ...).
//! A missing or malformed value stops start-up with one line naming the setting.

mod claim;
mod creation;
mod db;
mod outbound;
mod pool;
mod prompts;
mod providers;
mod runtime;
mod server;
mod size;
mod sizing;
mod tick;
mod tools;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use claim::ClaimSettings;
pub use creation::{CreationSettings, ToolsAtCreation};
pub use db::DbSettings;
pub use outbound::OutboundSettings;
pub use pool::PoolSettings;
pub use prompts::PromptSettings;
pub use providers::{
    LocalSettings, ProviderSettings, RailwaySettings, RailwaySource, SpritesSettings,
};
pub use runtime::{RuntimeProtocol, RuntimeSettings};
pub use server::{DashboardSettings, MetricsSettings, ServerSettings};
pub use size::SizeSettings;
pub use sizing::{
    DemandReaction, RecentClaims, ScheduleWindow, Sizing, SizingPolicy, Window, COOLDOWN_DEFAULT,
    DEMAND_WINDOWS,
};
pub use tick::{HealthSettings, SchedulerSettings, TickSettings};
pub use tools::{
    AgentMailSettings, BankrSettings, OpenRouterSettings, TelnyxSettings, ToolSettings,
};

/// A value that must never reach a log line, a page or a public endpoint.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

/// For a secret read from the database (`#[sqlx(try_from = "String")]`).
impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl Secret {
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

/// Reads a cron expression the way the scheduler does, so that what start-up accepts is
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
    pub fn new(setting: &str, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

/// The environment as read at start-up, empty values left out.
pub type Vars = [(String, String)];

/// One component's settings: a struct whose fields are named after the variables it reads
/// (`claim_timeout_ms` ← `CLAIM_TIMEOUT_MS`), with its defaults and its own checks.
pub trait Component: DeserializeOwned {
    /// Checks that need only this component's values, naming the variable at fault. Checks
    /// across components belong to [`crate::Settings`].
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Reads one component from `vars` (its own variables only; the others are not its business)
/// and checks it. Each component is read in a pass of its own: envy parses numbers only in a
/// plain struct, not through `#[serde(flatten)]`, which hands every value over as a string.
pub fn read<T: Component>(vars: &Vars) -> Result<T, ConfigError> {
    let own = variables::<T>();
    let mine: Vec<(String, String)> = vars
        .iter()
        // envy matches names in any case; so does the choice of what to hand it.
        .filter(|(name, _)| own.iter().any(|o| o.eq_ignore_ascii_case(name)))
        .cloned()
        .collect();
    let component: T = envy::from_iter(mine.clone()).map_err(|e| match e {
        envy::Error::MissingValue(field) => {
            ConfigError::new(&field.to_ascii_uppercase(), "missing")
        }
        envy::Error::Custom(message) => {
            // envy names the variable for number parse errors only; for the others, find the
            // one variable that fails on its own.
            let setting = message
                .rsplit_once("provided by ")
                .map(|(_, name)| name.trim().to_string())
                .or_else(|| {
                    mine.iter()
                        .find(|pair| envy::from_iter::<_, T>([(*pair).clone()]).is_err())
                        .map(|(name, _)| name.clone())
                })
                .unwrap_or_else(|| "environment".into());
            ConfigError::new(&setting, message)
        }
    })?;
    component.check()?;
    Ok(component)
}

/// The variables a component reads, named by serde itself (the fields the struct asks a
/// deserializer for), so that a new setting cannot be left out of a list.
pub fn variables<T: DeserializeOwned>() -> Vec<String> {
    let fields = match T::deserialize(FieldNames) {
        Err(FieldsAsked(fields)) => fields,
        Ok(_) => &[],
    };
    fields.iter().map(|f| f.to_ascii_uppercase()).collect()
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

/// A count or a duration that must not be 0.
pub fn nonzero(name: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(name, "must be greater than 0"));
    }
    Ok(())
}

/// Every component's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub db: DbSettings,
    pub pool: PoolSettings,
    pub size: SizeSettings,
    pub claim: ClaimSettings,
    pub runtime: RuntimeSettings,
    pub creation: CreationSettings,
    pub tick: TickSettings,
    pub health: HealthSettings,
    pub scheduler: SchedulerSettings,
    pub dashboard: DashboardSettings,
    pub metrics: MetricsSettings,
    pub outbound: OutboundSettings,
    pub providers: ProviderSettings,
    pub tools: ToolSettings,
    pub prompts: PromptSettings,
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
        let settings = Settings {
            server: read(&vars)?,
            db: read(&vars)?,
            pool: read(&vars)?,
            size: read(&vars)?,
            claim: read(&vars)?,
            runtime: read(&vars)?,
            creation: read(&vars)?,
            tick: read(&vars)?,
            health: read(&vars)?,
            scheduler: read(&vars)?,
            dashboard: read(&vars)?,
            metrics: read(&vars)?,
            outbound: read(&vars)?,
            providers: ProviderSettings::read(&vars)?,
            tools: ToolSettings::read(&vars)?,
            prompts: read(&vars)?,
        };
        settings.check_across()?;
        Ok(settings)
    }

    /// Checks between components.
    fn check_across(&self) -> Result<(), ConfigError> {
        if self.health.health_timeout_ms >= self.tick.tick_budget_ms {
            return Err(ConfigError::new(
                "HEALTH_TIMEOUT_MS",
                format!(
                    "must be shorter than TICK_BUDGET_MS ({} ms), or no health check fits in a tick",
                    self.tick.tick_budget_ms
                ),
            ));
        }
        self.check_build_from_source()?;
        // A recycle keeps what the instance was created with: an inbox or a number made then
        // would pass, with its mail and messages, from one user to the next.
        let recycles = match self.providers.pool_provider {
            ProviderKind::Sprites => true,
            ProviderKind::Local => self.providers.local.local_recycle,
            ProviderKind::Railway => false,
        };
        if recycles && self.creation.tools_at_creation == ToolsAtCreation::All {
            return Err(ConfigError::new(
                "TOOLS_AT_CREATION",
                "must be base where used agents are recycled (POOL_PROVIDER=sprites, LOCAL_RECYCLE): an inbox or number made at creation would pass from one user to the next; with base a claim makes them and a recycle destroys them",
            ));
        }
        if self.creation.create_timeout_ms >= self.tick.pool_stuck_timeout_ms {
            return Err(ConfigError::new(
                "CREATE_TIMEOUT_MS",
                format!(
                    "must be shorter than POOL_STUCK_TIMEOUT_MS ({} ms)",
                    self.tick.pool_stuck_timeout_ms
                ),
            ));
        }
        Ok(())
    }

    /// A creation from source waits for its build (minutes), within `CREATE_TIMEOUT_MS`: shorter
    /// than the build, and no instance built from source ever becomes idle.
    fn check_build_from_source(&self) -> Result<(), ConfigError> {
        let railway = &self.providers.railway;
        if self.providers.pool_provider != ProviderKind::Railway
            || railway.railway_source_repo.is_none()
        {
            return Ok(());
        }
        let build = railway.railway_build_timeout_ms;
        let create = self.creation.create_timeout_ms;
        if create <= build {
            return Err(ConfigError::new(
                "CREATE_TIMEOUT_MS",
                format!(
                    "({create} ms) must be longer than RAILWAY_BUILD_TIMEOUT_MS ({build} ms): a creation from RAILWAY_SOURCE_REPO waits for its build"
                ),
            ));
        }
        Ok(())
    }

    /// How long past its budget a tick may run: the longest single call it may have started
    /// just before the budget ran out (an outside API call, a health check). Whatever is still
    /// running then is cut, as a process that died there would be, and recovered the same way.
    pub fn tick_overrun(&self) -> std::time::Duration {
        self.outbound
            .outbound_timeout()
            .max(self.health.health_timeout())
    }

    /// The longest a tick takes, from its call to its answer (a scheduled Lambda tick must end
    /// within the function's timeout).
    pub fn tick_bound(&self) -> std::time::Duration {
        self.tick.tick_budget() + self.tick_overrun()
    }

    /// The environment variables settings are read from, named by serde itself (the fields each
    /// component asks a deserializer for), so that a new setting cannot be left out. For checks
    /// of deployment files and of the README against what the code reads.
    pub fn variables() -> Vec<String> {
        [
            variables::<ServerSettings>(),
            variables::<DbSettings>(),
            variables::<PoolSettings>(),
            variables::<SizeSettings>(),
            variables::<ClaimSettings>(),
            variables::<RuntimeSettings>(),
            variables::<CreationSettings>(),
            variables::<TickSettings>(),
            variables::<HealthSettings>(),
            variables::<SchedulerSettings>(),
            variables::<DashboardSettings>(),
            variables::<MetricsSettings>(),
            variables::<OutboundSettings>(),
            ProviderSettings::variables(),
            ToolSettings::variables(),
            variables::<PromptSettings>(),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        assert_eq!(s.server.port, 3001);
        assert_eq!(s.size.pool_min_idle, 3);
        assert_eq!(s.size.pool_max_total, 10);
        assert_eq!(s.tick.pool_stuck_timeout_ms, 900_000);
        assert_eq!(s.tick.tick_interval(), Some(Duration::from_secs(30)));
        assert_eq!(s.health.health_grace(), Duration::from_secs(60));
        let off = Settings::from_vars(vars(&[("TICK_INTERVAL_MS", "0")])).unwrap();
        assert_eq!(off.tick.tick_interval(), None);
        assert_eq!(s.providers.pool_provider, ProviderKind::Local);
        assert!(s.server.pool_api_key.is_none());
    }

    /// Each component is read in its own pass, so numbers of every kind parse in every component
    /// (through `#[serde(flatten)]` they would arrive as strings and be refused).
    #[test]
    fn numbers_parse_in_every_component() {
        let s = Settings::from_vars(vars(&[
            ("PORT", "4000"),
            ("DATABASE_MAX_CONNECTIONS", "4"),
            ("POOL_MIN_IDLE", "5"),
            ("POOL_MAX_TOTAL_CAP", "50"),
            ("CLAIM_MAX_ATTEMPTS", "7"),
            ("CREATE_TIMEOUT_MS", "1000"),
            ("TICK_BUDGET_MS", "9000"),
            ("HEALTH_CONCURRENCY", "8"),
            ("ADMIN_SESSION_TTL_MS", "60000"),
            ("OUTBOUND_TIMEOUT_MS", "1500"),
            ("OPENROUTER_KEY_LIMIT", "2.5"),
            ("RAILWAY_LAYOUT", "project"),
        ]))
        .unwrap();
        assert_eq!(s.server.port, 4000);
        assert_eq!(s.db.database_max_connections, 4);
        assert_eq!((s.size.pool_min_idle, s.size.max_total_cap()), (5, 50));
        assert_eq!(s.claim.claim_max_attempts, 7);
        assert_eq!(s.creation.create_timeout(), Duration::from_secs(1));
        assert_eq!(s.tick.tick_budget(), Duration::from_secs(9));
        assert_eq!(s.health.health_concurrency, 8);
        assert_eq!(s.dashboard.admin_session_ttl(), Duration::from_secs(60));
        assert_eq!(s.outbound.outbound_timeout(), Duration::from_millis(1500));
        assert_eq!(s.tools.openrouter.openrouter_key_limit, Some(2.5));
        assert_eq!(s.providers.railway.railway_layout, RailwayLayout::Project);
    }

    /// Instances come from an image or from a repo, never both; a build takes minutes, which
    /// the creation's timeout and the tick's budget must hold.
    #[test]
    fn building_from_source_is_checked_against_the_timeouts() {
        let source = [
            ("POOL_PROVIDER", "railway"),
            ("RAILWAY_SOURCE_REPO", "xmtplabs/convos-agent-pool-manager"),
        ];
        let refused = |extra: &[(&str, &str)]| {
            let all: Vec<(&str, &str)> = source.iter().chain(extra).copied().collect();
            Settings::from_vars(vars(&all)).unwrap_err().setting
        };
        assert_eq!(
            refused(&[("RAILWAY_RUNTIME_IMAGE", "img")]),
            "RAILWAY_SOURCE_REPO"
        );
        assert_eq!(
            refused(&[]),
            "CREATE_TIMEOUT_MS",
            "2 min is no build's time"
        );
        // The tick's budget does not bound its creations: the default one goes with any build.
        let fits = [("CREATE_TIMEOUT_MS", "720000")];
        let all: Vec<(&str, &str)> = source.iter().chain(&fits).copied().collect();
        let s = Settings::from_vars(vars(&all)).unwrap();
        assert_eq!(
            s.providers.railway.source(),
            RailwaySource::Repo {
                repo: "xmtplabs/convos-agent-pool-manager".into(),
                branch: None,
                root_dir: None,
            }
        );
        let not_a_repo = Settings::from_vars(vars(&[("RAILWAY_SOURCE_REPO", "convos")]));
        assert_eq!(not_a_repo.unwrap_err().setting, "RAILWAY_SOURCE_REPO");
        let stray = Settings::from_vars(vars(&[("RAILWAY_SOURCE_ROOT_DIR", "agent")]));
        assert_eq!(stray.unwrap_err().setting, "RAILWAY_SOURCE_ROOT_DIR");
        // The checks are Railway's: the same values mean nothing to another provider.
        assert!(Settings::from_vars(vars(&source[1..])).is_ok());
        let image = Settings::from_vars(vars(&[]))
            .unwrap()
            .providers
            .railway
            .source();
        assert_eq!(
            image,
            RailwaySource::Image(RailwaySettings::DEFAULT_IMAGE.into())
        );
    }

    /// As before the split: envy reads a variable whatever the case of its name.
    #[test]
    fn names_are_read_in_any_case() {
        let s =
            Settings::from_vars(vars(&[("port", "4000"), ("Railway_Layout", "project")])).unwrap();
        assert_eq!(s.server.port, 4000);
        assert_eq!(s.providers.railway.railway_layout, RailwayLayout::Project);
    }

    #[test]
    fn malformed_value_names_the_setting() {
        let err = Settings::from_vars(vars(&[("POOL_MIN_IDLE", "three")])).unwrap_err();
        assert_eq!(err.setting, "POOL_MIN_IDLE", "{err}");
        let err = Settings::from_vars(vars(&[("POOL_PROVIDER", "heroku")])).unwrap_err();
        assert_eq!(err.setting, "POOL_PROVIDER", "{err}");
        // A bad value among good ones of the same component is the one named.
        let err = Settings::from_vars(vars(&[
            ("RAILWAY_PROJECT_ID", "p"),
            ("RAILWAY_LAYOUT", "sideways"),
        ]))
        .unwrap_err();
        assert_eq!(err.setting, "RAILWAY_LAYOUT", "{err}");
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
        let err = Settings::from_vars(vars(&[("CREATE_TIMEOUT_MS", "900000")])).unwrap_err();
        assert_eq!(err.setting, "CREATE_TIMEOUT_MS", "{err}");
        let err = Settings::from_vars(vars(&[("POOL_MAX_TOTAL_CAP", "5")])).unwrap_err();
        assert_eq!(err.setting, "POOL_MAX_TOTAL_CAP", "{err}");
        let err = Settings::from_vars(vars(&[("DATABASE_MAX_CONNECTIONS", "1")])).unwrap_err();
        assert_eq!(err.setting, "DATABASE_MAX_CONNECTIONS", "{err}");
        let err = Settings::from_vars(vars(&[("POOL_NAME_PREFIX", "Pool_")])).unwrap_err();
        assert_eq!(err.setting, "POOL_NAME_PREFIX", "{err}");
    }

    #[test]
    fn recycled_agents_get_their_users_tools_at_claim() {
        let recycling: [&[(&str, &str)]; 2] = [
            &[("POOL_PROVIDER", "local"), ("LOCAL_RECYCLE", "true")],
            &[
                ("POOL_PROVIDER", "sprites"),
                ("SPRITE_TOKEN", "sprite-token"),
            ],
        ];
        for provider in recycling {
            let all = [provider, &[("TOOLS_AT_CREATION", "all")]].concat();
            let err = Settings::from_vars(vars(&all)).unwrap_err();
            assert_eq!(err.setting, "TOOLS_AT_CREATION", "{provider:?}: {err}");
            Settings::from_vars(vars(provider)).unwrap();
        }
        Settings::from_vars(vars(&[("TOOLS_AT_CREATION", "all")])).unwrap();
    }

    #[test]
    fn the_cap_defaults_to_100_or_the_maximum() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.size.max_total_cap(), 100);
        let s = Settings::from_vars(vars(&[("POOL_MAX_TOTAL", "500")])).unwrap();
        assert_eq!(s.size.max_total_cap(), 500);
        let s = Settings::from_vars(vars(&[("POOL_MAX_TOTAL_CAP", "20")])).unwrap();
        assert_eq!(s.size.max_total_cap(), 20);
    }

    #[test]
    fn tick_cron_takes_seconds_and_must_fire() {
        let s = Settings::from_vars(vars(&[("TICK_CRON", "*/30 * * * * *")])).unwrap();
        assert!(s.scheduler.tick_cron().is_some());
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

    #[test]
    fn variables_are_the_settings_that_are_read() {
        let names = Settings::variables();
        for name in [
            "PORT",
            "DATABASE_URL",
            "POOL_API_KEY",
            "POOL_PROVIDER",
            "TICK_INTERVAL_MS",
            "RAILWAY_API_URL",
            "BANKR_API_KEY",
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

    /// A variable belongs to one component: two that read it could disagree on what it means.
    #[test]
    fn each_variable_is_read_by_one_component() {
        let names = Settings::variables();
        let mut seen = std::collections::HashSet::new();
        let twice: Vec<&String> = names.iter().filter(|n| !seen.insert(*n)).collect();
        assert!(twice.is_empty(), "read by two components: {twice:?}");
    }
}
