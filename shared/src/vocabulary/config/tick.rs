//! The tick (`tick`): how often, for how long, and when health checks condemn an instance.

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, parse_cron, Component, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct TickSettings {
    /// `serve` and `agentpool-scheduler` tick this often; `0` turns `serve`'s own timer off (for
    /// deployments that tick with `agentpool-scheduler` or a Lambda schedule).
    #[serde(default = "TickSettings::default_interval_ms")]
    pub tick_interval_ms: u64,
    /// A tick starts no new work once this much time has passed (waiting for the tick lock,
    /// listings, health checks, destroys and creations all count), and ends within it plus one
    /// call's timeout (`Settings::tick_overrun`).
    #[serde(default = "TickSettings::default_budget_ms")]
    pub tick_budget_ms: u64,
    #[serde(default = "TickSettings::default_stuck_timeout_ms")]
    pub pool_stuck_timeout_ms: u64,
    /// Keep-alive of providers whose instances sleep when left alone (Sprites): idle and claimed
    /// instances are pinged this often, once per interval across every replica.
    #[serde(default = "TickSettings::default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
}

impl TickSettings {
    fn default_interval_ms() -> u64 {
        30_000
    }
    fn default_budget_ms() -> u64 {
        25_000
    }
    fn default_stuck_timeout_ms() -> u64 {
        900_000
    }
    fn default_heartbeat_interval_ms() -> u64 {
        20_000
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// `None` when ticking on a timer is turned off.
    pub fn tick_interval(&self) -> Option<Duration> {
        (self.tick_interval_ms > 0).then(|| Duration::from_millis(self.tick_interval_ms))
    }
    pub fn tick_budget(&self) -> Duration {
        Duration::from_millis(self.tick_budget_ms)
    }
    pub fn stuck_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_stuck_timeout_ms)
    }
}

impl Component for TickSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("HEARTBEAT_INTERVAL_MS", self.heartbeat_interval_ms)?;
        nonzero("TICK_BUDGET_MS", self.tick_budget_ms)
    }
}

/// Health checks of the tick's snapshot, and when failures condemn an instance.
#[derive(Debug, Clone, Deserialize)]
pub struct HealthSettings {
    #[serde(default = "HealthSettings::default_timeout_ms")]
    pub health_timeout_ms: u64,
    #[serde(default = "HealthSettings::default_concurrency")]
    pub health_concurrency: usize,
    /// Consecutive failed health checks before an idle instance is replaced or a claimed one is
    /// declared crashed. One blip is not a death.
    #[serde(default = "HealthSettings::default_failure_threshold")]
    pub health_failure_threshold: u32,
    /// Failed checks only condemn an instance whose last good check is older than this, and a
    /// resource missing from the provider's listing is gone only once it is missing this long.
    /// Ticks come as fast as claims kick them; time is what makes a failure lasting.
    #[serde(default = "HealthSettings::default_grace_ms")]
    pub health_grace_ms: u64,
    /// Each running runtime is asked at least this often, and no more: a tick asks only the ones
    /// that would otherwise go longer than this without a good sign of life (a pushed heartbeat
    /// counts), oldest first, so health work follows what changed rather than the fleet's size.
    /// A failing runtime is asked every tick. `0`: every runtime, every tick.
    #[serde(default = "HealthSettings::default_interval_ms")]
    pub health_interval_ms: u64,
}

impl HealthSettings {
    fn default_timeout_ms() -> u64 {
        5_000
    }
    fn default_concurrency() -> usize {
        40
    }
    fn default_failure_threshold() -> u32 {
        3
    }
    fn default_grace_ms() -> u64 {
        60_000
    }
    /// Long enough for a runtime that pushes a heartbeat every 30 s to be spared every pull (see
    /// `pipelines::beats`), short enough that a silent one is asked within two minutes.
    fn default_interval_ms() -> u64 {
        120_000
    }

    pub fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms)
    }
    pub fn health_grace(&self) -> Duration {
        Duration::from_millis(self.health_grace_ms)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
}

impl Component for HealthSettings {
    fn check(&self) -> Result<(), ConfigError> {
        nonzero("HEALTH_TIMEOUT_MS", self.health_timeout_ms)?;
        nonzero("HEALTH_CONCURRENCY", self.health_concurrency as u64)?;
        nonzero(
            "HEALTH_FAILURE_THRESHOLD",
            self.health_failure_threshold.into(),
        )
    }
}

/// `agentpool-scheduler`: when it ticks, and whether over HTTP.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    /// When `agentpool-scheduler` ticks: a cron expression with seconds
    /// (`sec min hour day-of-month month day-of-week`, UTC), read by croner.
    /// Unset: every `TICK_INTERVAL_MS`.
    pub tick_cron: Option<String>,
    /// The API `agentpool-scheduler` ticks over HTTP (`POST {POOL_URL}/api/pool/tick`, with
    /// `POOL_API_KEY`), for deployments where only the API reaches the database.
    pub pool_url: Option<String>,
    /// Whether `agentpool-scheduler` also sends the keep-alive rounds, every
    /// `HEARTBEAT_INTERVAL_MS` (in-process, or `POST {POOL_URL}/api/pool/keepalive`): for
    /// deployments with no long-running replica whose timer sends them (Lambda). Unset: when the
    /// provider it is configured with (`POOL_PROVIDER`) keeps its instances alive.
    pub scheduler_keep_alive: Option<bool>,
}

impl SchedulerSettings {
    /// The scheduler's cron schedule, when `TICK_CRON` is set (checked at start-up).
    pub fn tick_cron(&self) -> Option<croner::Cron> {
        self.tick_cron.as_deref().and_then(|c| parse_cron(c).ok())
    }
}

impl Component for SchedulerSettings {
    fn check(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }
}
