//! When the scheduler ticks, and which slot each firing is for.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use agentpool_core::config::ConfigError;
use agentpool_core::Settings;

pub enum Schedule {
    /// `TICK_CRON`, in UTC.
    Cron {
        expression: String,
        cron: Box<croner::Cron>,
    },
    /// `TICK_INTERVAL_MS`: slots are the intervals of Unix time, so that schedulers started at
    /// different moments agree on them.
    Every(Duration),
}

type Run =
    Box<dyn FnMut(Uuid, JobScheduler) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

impl Schedule {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        if let (Some(expression), Some(cron)) = (
            &settings.scheduler.tick_cron,
            settings.scheduler.tick_cron(),
        ) {
            return Ok(Self::Cron {
                expression: expression.clone(),
                cron: Box::new(cron),
            });
        }
        let every = settings.tick.tick_interval().ok_or_else(|| ConfigError {
            setting: "TICK_INTERVAL_MS".into(),
            problem: "0 turns ticking off; the scheduler needs an interval or TICK_CRON".into(),
        })?;
        // tokio-cron-scheduler counts repeats in whole seconds: a shorter interval would not repeat.
        Ok(Self::Every(every.max(Duration::from_secs(1))))
    }

    /// The slot a firing at `now` is for: the latest scheduled time not after `now`. A firing late
    /// by a whole period counts for the later slot, which the timely firing of that slot then
    /// finds taken: a slot may be missed, never run twice.
    pub fn slot(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let whole_second = now.duration_trunc(TimeDelta::seconds(1)).unwrap_or(now);
        match self {
            // croner keeps the fraction of a second it is given; occurrences are whole seconds.
            Self::Cron { cron, .. } => cron
                .find_previous_occurrence(&whole_second, true)
                .unwrap_or(whole_second),
            Self::Every(every) => TimeDelta::from_std(*every)
                .ok()
                .and_then(|every| now.duration_trunc(every).ok())
                .unwrap_or(whole_second),
        }
    }

    pub fn job(&self, run: Run) -> Result<Job, JobSchedulerError> {
        match self {
            Self::Cron { expression, .. } => Job::new_async(expression.as_str(), run),
            Self::Every(every) => Job::new_repeated_async(*every, run),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Cron { expression, .. } => format!("cron {expression:?} (UTC)"),
            Self::Every(every) => format!("every {} ms", every.as_millis()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn schedule(vars: &[(&str, &str)]) -> Schedule {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Schedule::from_settings(&Settings::from_vars(vars).unwrap()).unwrap()
    }

    #[test]
    fn a_firing_belongs_to_the_latest_scheduled_time() {
        let cron = schedule(&[("TICK_CRON", "*/30 * * * * *")]);
        assert_eq!(
            cron.slot(at("2025-01-01T10:00:30.004Z")),
            at("2025-01-01T10:00:30Z")
        );
        assert_eq!(
            cron.slot(at("2025-01-01T10:00:59.999Z")),
            at("2025-01-01T10:00:30Z")
        );
        let every = schedule(&[("TICK_INTERVAL_MS", "20000")]);
        assert_eq!(
            every.slot(at("2025-01-01T10:00:59.5Z")),
            at("2025-01-01T10:00:40Z")
        );
    }

    #[test]
    fn cron_wins_over_the_interval_and_an_interval_of_zero_is_refused() {
        let both = schedule(&[("TICK_CRON", "0 * * * * *"), ("TICK_INTERVAL_MS", "1000")]);
        assert!(matches!(both, Schedule::Cron { .. }));
        let vars = [("TICK_INTERVAL_MS".to_string(), "0".to_string())];
        let err = Schedule::from_settings(&Settings::from_vars(vars).unwrap())
            .err()
            .unwrap();
        assert_eq!(err.setting, "TICK_INTERVAL_MS");
    }
}
