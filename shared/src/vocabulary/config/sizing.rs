//! The sizing policy (the pool-sizing component's run-time part, stored with the size): how many
//! idle agents to keep, hour by hour and as demand comes.
//!
//! The base is the pool's `minIdle`. On top of it, an operator may set **schedules** (Coder's
//! prebuild scheduling): windows written as cron expressions in one time zone, each with its own
//! `minIdle`, no two covering the same hour; outside every window the base applies. And a
//! **reaction to demand**: enough idle agents to cover the claims expected during one boot time,
//! at the claim rate of the last 5, 15 or 60 minutes, whichever is highest. The target is the
//! larger of the two, within `maxTotal`; with no claim history (a restart) the schedule and base
//! apply, never an empty pool.
//!
//! What is stored is [`SizingPolicy`], as the API takes it; what the tick plans with is the
//! validated [`Sizing`], with each window turned into the hours of the week it covers.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How long an idle surplus is kept before the tick destroys it, unless the policy says.
pub const COOLDOWN_DEFAULT: Duration = Duration::from_secs(15 * 60);
/// The longest cool-down a policy may set: a day.
pub const COOLDOWN_MAX_SECONDS: u32 = 86_400;
/// The claim-rate windows the demand reaction reads, shortest first.
pub const DEMAND_WINDOWS: [Duration; 3] = [
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(60 * 60),
];
const HOURS_A_WEEK: usize = 7 * 24;

/// Claims, served or missed, in each of [`DEMAND_WINDOWS`] up to a moment, shortest first.
pub type RecentClaims = [u32; 3];

/// The policy as an operator sets it (`PUT /api/pool/settings` `{"sizing": …}`) and as it is
/// stored. Every field may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SizingPolicy {
    /// The IANA time zone the schedules' hours and weekdays are in (`Europe/Berlin`); `UTC` if
    /// left out.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub schedules: Vec<ScheduleWindow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<DemandReaction>,
    /// How long idle agents above the target are kept before they are destroyed (default 900).
    #[serde(default = "cooldown_default")]
    pub cooldown_seconds: u32,
}

/// One window: while `cron` matches the current minute in the policy's time zone, keep
/// `minIdle` idle agents instead of the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleWindow {
    /// Five fields, minute hour day-of-month month day-of-week; minute, day of month and month
    /// must be `*` (a window is a set of hours on a set of weekdays): `* 8-17 * * 1-5`.
    pub cron: String,
    pub min_idle: u32,
}

/// Cover the claims expected during one boot: `ceil(factor × peak claim rate × bootSeconds)`,
/// the peak over the last 5, 15 and 60 minutes. The short window makes the target rise while a
/// burst happens; the long ones make it cool down over an hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DemandReaction {
    /// How long a new agent takes to become idle on this deployment's provider.
    pub boot_seconds: u32,
    /// Headroom over the expected claims (1 = exactly the expected count).
    pub factor: f64,
}

fn utc() -> String {
    "UTC".into()
}

fn cooldown_default() -> u32 {
    COOLDOWN_DEFAULT.as_secs() as u32
}

impl Default for SizingPolicy {
    fn default() -> Self {
        Self {
            timezone: utc(),
            schedules: Vec::new(),
            demand: None,
            cooldown_seconds: cooldown_default(),
        }
    }
}

/// A policy checked and ready to plan with.
#[derive(Debug, Clone)]
pub struct Sizing {
    pub timezone: Tz,
    pub windows: Vec<Window>,
    pub demand: Option<DemandReaction>,
    pub cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct Window {
    pub cron: String,
    pub min_idle: u32,
    /// Hours of the week it covers, Sunday 00:00 first.
    hours: Vec<bool>,
}

impl Window {
    pub fn covers(&self, hour_of_week: usize) -> bool {
        self.hours.get(hour_of_week).copied().unwrap_or(false)
    }
}

impl Default for Sizing {
    fn default() -> Self {
        Self {
            timezone: Tz::UTC,
            windows: Vec::new(),
            demand: None,
            cooldown: COOLDOWN_DEFAULT,
        }
    }
}

impl Sizing {
    /// The hour of the week (Sunday 00:00 = 0) that `at` falls in, in the policy's time zone.
    pub fn hour_of_week(&self, at: DateTime<Utc>) -> usize {
        let local = at.with_timezone(&self.timezone);
        local.weekday().num_days_from_sunday() as usize * 24 + local.hour() as usize
    }

    /// The window in force at `at`, if any.
    pub fn window_at(&self, at: DateTime<Utc>) -> Option<&Window> {
        let hour = self.hour_of_week(at);
        self.windows.iter().find(|w| w.covers(hour))
    }
}

impl SizingPolicy {
    /// Checks the policy against the pool's `maxTotal` and compiles it. Every refusal names the
    /// field and the reason (the API answers it with a 400).
    pub fn compile(&self, max_total: u32) -> Result<Sizing, String> {
        let timezone: Tz = self.timezone.parse().map_err(|_| {
            format!(
                "sizing.timezone: {:?} is not an IANA time zone (like \"Europe/Berlin\")",
                self.timezone
            )
        })?;
        let mut windows: Vec<Window> = Vec::with_capacity(self.schedules.len());
        for (i, schedule) in self.schedules.iter().enumerate() {
            let field = format!("sizing.schedules[{i}]");
            if schedule.min_idle > max_total {
                return Err(format!(
                    "{field}.minIdle ({}) must not be larger than maxTotal ({max_total})",
                    schedule.min_idle
                ));
            }
            let hours = hours_of(&schedule.cron)
                .map_err(|why| format!("{field}.cron {:?}: {why}", schedule.cron))?;
            if let Some((j, other)) = windows
                .iter()
                .enumerate()
                .find(|(_, w)| w.hours.iter().zip(&hours).any(|(a, b)| *a && *b))
            {
                let shared = (0..HOURS_A_WEEK)
                    .find(|&h| other.hours[h] && hours[h])
                    .unwrap_or(0);
                return Err(format!(
                    "{field}.cron {:?} overlaps sizing.schedules[{j}].cron {:?} (both cover {} \
                     {:02}:00); windows must not overlap",
                    schedule.cron,
                    other.cron,
                    WEEKDAYS[shared / 24],
                    shared % 24
                ));
            }
            windows.push(Window {
                cron: schedule.cron.clone(),
                min_idle: schedule.min_idle,
                hours,
            });
        }
        if let Some(demand) = self.demand {
            if !(demand.factor.is_finite() && (0.0..=100.0).contains(&demand.factor)) {
                return Err("sizing.demand.factor must be between 0 and 100".into());
            }
            if demand.boot_seconds > 3600 {
                return Err("sizing.demand.bootSeconds must be at most 3600".into());
            }
        }
        if self.cooldown_seconds > COOLDOWN_MAX_SECONDS {
            return Err(format!(
                "sizing.cooldownSeconds must be at most {COOLDOWN_MAX_SECONDS}"
            ));
        }
        Ok(Sizing {
            timezone,
            windows,
            demand: self.demand,
            cooldown: Duration::from_secs(self.cooldown_seconds.into()),
        })
    }
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// The hours of the week a window's cron expression covers.
fn hours_of(cron: &str) -> std::result::Result<Vec<bool>, String> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if fields.len() != 5 {
        return Err("needs five fields: minute hour day-of-month month day-of-week".into());
    }
    if fields[0] != "*" || fields[2] != "*" || fields[3] != "*" {
        return Err(
            "minute, day of month and month must be `*`: a window is hours on weekdays".into(),
        );
    }
    let parsed = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(cron)
        .map_err(|e| e.to_string())?;
    // With minute, day of month and month free, whether a minute matches depends only on its
    // weekday and hour: ask at the top of each hour of a week that starts on a Sunday.
    let sunday = Utc
        .with_ymd_and_hms(2023, 1, 1, 0, 0, 0)
        .single()
        .ok_or("no reference week")?;
    let hours = (0..HOURS_A_WEEK)
        .map(|h| {
            parsed
                .is_time_matching(&(sunday + chrono::Duration::hours(h as i64)))
                .map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<Vec<bool>, String>>()?;
    if !hours.contains(&true) {
        return Err("matches no hour".into());
    }
    Ok(hours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedules: &[(&str, u32)]) -> SizingPolicy {
        SizingPolicy {
            timezone: "Europe/Berlin".into(),
            schedules: schedules
                .iter()
                .map(|(cron, min_idle)| ScheduleWindow {
                    cron: (*cron).into(),
                    min_idle: *min_idle,
                })
                .collect(),
            ..SizingPolicy::default()
        }
    }

    fn refusal(policy: &SizingPolicy) -> String {
        match policy.compile(20) {
            Err(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_window_covers_its_hours_on_its_weekdays() {
        let sizing = policy(&[("* 8-17 * * 1-5", 10)]).compile(20).unwrap();
        let window = &sizing.windows[0];
        // Monday 08:00 and Friday 17:00 in; Monday 07:00, Monday 18:00, Saturday 10:00 out.
        assert!(window.covers(24 + 8));
        assert!(window.covers(5 * 24 + 17));
        assert!(!window.covers(24 + 7));
        assert!(!window.covers(24 + 18));
        assert!(!window.covers(6 * 24 + 10));
    }

    #[test]
    fn overlapping_windows_are_refused_naming_both_and_an_hour() {
        let why = refusal(&policy(&[("* 8-17 * * 1-5", 10), ("* 17-20 * * *", 4)]));
        assert!(why.contains("sizing.schedules[1].cron"), "{why}");
        assert!(why.contains("sizing.schedules[0].cron"), "{why}");
        assert!(why.contains("Mon 17:00"), "{why}");
        // Touching is not overlapping.
        assert!(policy(&[("* 8-17 * * 1-5", 10), ("* 18-20 * * *", 4)])
            .compile(20)
            .is_ok());
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        assert!(refusal(&policy(&[("0 8-17 * * *", 1)])).contains("minute"));
        assert!(refusal(&policy(&[("* 8-17 * *", 1)])).contains("five fields"));
        assert!(refusal(&policy(&[("* 25 * * *", 1)])).contains("schedules[0].cron"));
        assert!(refusal(&policy(&[("* 8 * * *", 21)])).contains("maxTotal"));
        let mut bad_zone = policy(&[]);
        bad_zone.timezone = "Mars/Olympus".into();
        assert!(refusal(&bad_zone).contains("sizing.timezone"));
        let mut bad_factor = policy(&[]);
        bad_factor.demand = Some(DemandReaction {
            boot_seconds: 90,
            factor: f64::NAN,
        });
        assert!(refusal(&bad_factor).contains("factor"));
    }

    #[test]
    fn the_stored_form_reads_back_with_defaults() {
        let read: SizingPolicy =
            serde_json::from_str(r#"{"schedules":[{"cron":"* 9 * * *","minIdle":3}]}"#).unwrap();
        assert_eq!(read.timezone, "UTC");
        assert_eq!(read.cooldown_seconds, 900);
        assert!(serde_json::from_str::<SizingPolicy>(r#"{"zone":"UTC"}"#).is_err());
    }
}
