//! When the scheduler ticks, and which slot each firing is for.
//!
//! A tokio-cron-scheduler job fires; the slot a firing is for is the scheduled time *nearest* to
//! the moment it fired, and always a later one than the slot of the firing before. Reading the
//! latest scheduled time not after the clock instead gave a timer that woke a few milliseconds
//! early the slot before, so one scheduler fired twice for one slot (the second firing found it
//! taken and skipped) and left the next slot unrun.

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
        // Slots are whole seconds, as cron's are (`tick_runs` keys on them), and
        // tokio-cron-scheduler counts repeats in whole seconds.
        Ok(Self::Every(every.max(Duration::from_secs(1))))
    }

    /// The first scheduled time after `now`, and after `last` (the slot fired before), so that
    /// slots only move forward: a clock read a moment before the slot it just slept until (a timer
    /// that woke early, a wall clock stepped back) still gives the next one.
    pub fn next_slot(&self, now: DateTime<Utc>, last: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let from = last.map_or(now, |last| last.max(now));
        match self {
            // croner keeps the fraction of a second it is given; occurrences are whole seconds.
            Self::Cron { cron, .. } => cron
                .find_next_occurrence(
                    &from.duration_trunc(TimeDelta::seconds(1)).unwrap_or(from),
                    false,
                )
                // An expression with no next occurrence (a date long past) never fires again.
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            Self::Every(every) => {
                let every = TimeDelta::from_std(*every).unwrap_or(TimeDelta::MAX);
                from.duration_trunc(every)
                    .ok()
                    .and_then(|start| start.checked_add_signed(every))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }

    /// The slot a firing at `now` is for: the scheduled time nearest to `now`, or, if that is not
    /// after `last` (the slot of this scheduler's previous firing), the first one after `last`.
    /// A firing a little early or late counts for the slot it was meant for; one late by more than
    /// half a period counts for the next, whose own firing then takes the one after.
    pub fn slot(&self, now: DateTime<Utc>, last: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let nearest = match self {
            Self::Cron { cron, .. } => {
                let whole_second = now.duration_trunc(TimeDelta::seconds(1)).unwrap_or(now);
                let before = cron.find_previous_occurrence(&whole_second, true).ok();
                let after = cron.find_next_occurrence(&whole_second, false).ok();
                match (before, after) {
                    (Some(before), Some(after)) if after - now < now - before => after,
                    (Some(before), _) => before,
                    (None, Some(after)) => after,
                    (None, None) => whole_second,
                }
            }
            Self::Every(every) => TimeDelta::from_std(*every)
                .ok()
                .and_then(|every| now.duration_round(every).ok())
                .unwrap_or(now),
        };
        match last {
            Some(last) if nearest <= last => self.next_slot(last, Some(last)),
            _ => nearest,
        }
    }

    /// The job that fires on this schedule. An interval job repeats from when it is added: add it
    /// at a slot's time (`next_slot`) so that its firings fall on the slots.
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
    fn each_firing_is_for_the_next_scheduled_time() {
        let cron = schedule(&[("TICK_CRON", "*/30 * * * * *")]);
        assert_eq!(
            cron.next_slot(at("2025-01-01T10:00:00.004Z"), None),
            at("2025-01-01T10:00:30Z")
        );
        let every = schedule(&[("TICK_INTERVAL_MS", "20000")]);
        assert_eq!(
            every.next_slot(at("2025-01-01T10:00:59.5Z"), None),
            at("2025-01-01T10:01:00Z")
        );
        assert_eq!(
            every.next_slot(at("2025-01-01T10:01:00Z"), None),
            at("2025-01-01T10:01:20Z"),
            "a slot is after now, never now"
        );
    }

    #[test]
    fn no_two_firings_are_for_one_slot_however_the_timer_wakes() {
        for vars in [
            [("TICK_INTERVAL_MS", "20000")],
            [("TICK_CRON", "*/20 * * * * *")],
        ] {
            let schedule = schedule(&vars);
            // A timer waking up to 3 ms early or late, as timers and stepped clocks do.
            let jitter = [3, -3, 0, -1, 2, -3, 3, -2];
            let mut last = None;
            let mut slots = Vec::new();
            for (n, ms) in (1..).zip(jitter) {
                let fired = at("2025-01-01T10:00:00Z")
                    + TimeDelta::seconds(20 * n)
                    + TimeDelta::milliseconds(ms);
                let slot = schedule.slot(fired, last);
                slots.push(slot);
                last = Some(slot);
            }
            let expected: Vec<DateTime<Utc>> = (1..=8)
                .map(|n| at("2025-01-01T10:00:00Z") + TimeDelta::seconds(20 * n))
                .collect();
            assert_eq!(slots, expected, "{vars:?}");
        }
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
