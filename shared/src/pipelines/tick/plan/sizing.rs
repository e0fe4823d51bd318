//! The pool's target: how many idle (or starting) agents to have now, and how many to keep before
//! shrinking, from the sizing policy, the clock and the claims of the last hour. Pure: the tick and
//! `agentpool simulate` call it with their own clocks.

use chrono::{DateTime, DurationRound, Utc};
use serde::Serialize;

use crate::config::{RecentClaims, Sizing, DEMAND_WINDOWS};

/// The target the tick planned with, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Idle and starting agents to have: creation fills up to this.
    pub min_idle: u32,
    /// Idle and starting agents kept before shrinking: the highest scheduled level of the
    /// cool-down, so that a surplus is destroyed only once it has lasted that long.
    pub keep: u32,
    /// The pool's `minIdle`, in force outside every window.
    pub base: u32,
    /// The window in force, as its cron expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// What the claim rate asks for (0 without a demand reaction or without claims).
    pub demand: u32,
    pub reason: String,
}

/// The target at `now` for a pool whose base is `base`, within `max_total`.
pub fn target(
    sizing: &Sizing,
    base: u32,
    max_total: u32,
    now: DateTime<Utc>,
    claims: &RecentClaims,
) -> Target {
    let window = sizing.window_at(now);
    let scheduled = window.map_or(base, |w| w.min_idle);
    let (demand, rate) = demand(sizing, claims);
    let wanted = scheduled.max(demand);
    let min_idle = wanted.min(max_total);
    let mut reason = match window {
        Some(w) => format!("window `{}` ({}): {scheduled}", w.cron, sizing.timezone),
        None => format!("base: {base}"),
    };
    if let (Some(reaction), Some((claims, minutes))) = (sizing.demand, rate) {
        if demand > scheduled {
            reason = format!(
                "demand: {demand} ({claims} claims in {minutes} min × {} s boot × {}), above {reason}",
                reaction.boot_seconds, reaction.factor
            );
        }
    }
    if wanted > max_total {
        reason = format!("{reason}, capped by maxTotal {max_total}");
    }
    // The highest level over [now − cool-down, now). Windows are whole local hours, and every
    // time zone's hours start on a quarter of a UTC hour: a look at the start of the cool-down and
    // at each quarter after it meets every hour it overlaps.
    let level = |at| sizing.window_at(at).map_or(base, |w| w.min_idle);
    let cooldown = chrono::Duration::from_std(sizing.cooldown).unwrap_or_default();
    let quarter = chrono::Duration::minutes(15);
    let start = now - cooldown;
    let mut held = if start < now { level(start) } else { 0 };
    let mut then = start.duration_trunc(quarter).unwrap_or(start) + quarter;
    while then < now {
        held = held.max(level(then));
        then += quarter;
    }
    Target {
        min_idle,
        keep: held.min(max_total).max(min_idle),
        base,
        window: window.map(|w| w.cron.clone()),
        demand,
        reason,
    }
}

/// Agents to cover the claims expected during one boot at the highest recent rate, and the
/// window that rate was read in (claims, minutes).
fn demand(sizing: &Sizing, claims: &RecentClaims) -> (u32, Option<(u32, u64)>) {
    let Some(reaction) = sizing.demand else {
        return (0, None);
    };
    let peak = DEMAND_WINDOWS
        .iter()
        .zip(claims)
        .filter(|(_, n)| **n > 0)
        .map(|(window, n)| {
            (
                f64::from(*n) / window.as_secs_f64(),
                *n,
                window.as_secs() / 60,
            )
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let Some((rate, n, minutes)) = peak else {
        return (0, None);
    };
    let expected = reaction.factor * rate * f64::from(reaction.boot_seconds);
    // Rounded up: a fraction of a claim expected is a claim that may come.
    let wanted = expected.ceil().clamp(0.0, f64::from(u32::MAX)) as u32;
    (wanted, Some((n, minutes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DemandReaction, ScheduleWindow, SizingPolicy};

    fn sizing(zone: &str, schedules: &[(&str, u32)], demand: Option<f64>) -> Sizing {
        SizingPolicy {
            timezone: zone.into(),
            schedules: schedules
                .iter()
                .map(|(cron, min_idle)| ScheduleWindow {
                    cron: (*cron).into(),
                    min_idle: *min_idle,
                })
                .collect(),
            demand: demand.map(|factor| DemandReaction {
                boot_seconds: 90,
                factor,
            }),
            cooldown_seconds: 600,
        }
        .compile(40)
        .unwrap()
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    const NONE: RecentClaims = [0, 0, 0];

    #[test]
    fn outside_every_window_the_base_applies() {
        let s = sizing("UTC", &[("* 9-17 * * 1-5", 10)], None);
        // Wednesday 2026-11-25.
        let t = target(&s, 2, 40, at("2026-11-25T08:59:00Z"), &NONE);
        assert_eq!((t.min_idle, t.window.as_deref()), (2, None));
        assert_eq!(t.reason, "base: 2");
        let t = target(&s, 2, 40, at("2026-11-25T09:00:00Z"), &NONE);
        assert_eq!(t.min_idle, 10);
        assert_eq!(t.window.as_deref(), Some("* 9-17 * * 1-5"));
        // Saturday: the weekday field leaves it out.
        assert_eq!(
            target(&s, 2, 40, at("2026-11-28T10:00:00Z"), &NONE).min_idle,
            2
        );
    }

    #[test]
    fn a_night_window_spans_midnight_into_the_next_weekday() {
        // Friday 22:00 to Saturday 06:00 is two windows' worth of hours in one expression per day.
        let s = sizing("UTC", &[("* 22-23,0-5 * * *", 1)], None);
        let base = 4;
        assert_eq!(
            target(&s, base, 40, at("2026-11-27T21:59:00Z"), &NONE).min_idle,
            4
        );
        assert_eq!(
            target(&s, base, 40, at("2026-11-27T23:30:00Z"), &NONE).min_idle,
            1
        );
        assert_eq!(
            target(&s, base, 40, at("2026-11-28T00:10:00Z"), &NONE).min_idle,
            1
        );
        assert_eq!(
            target(&s, base, 40, at("2026-11-28T06:00:00Z"), &NONE).min_idle,
            4
        );
    }

    #[test]
    fn windows_follow_the_time_zone_across_a_dst_change() {
        // 08:00–17:59 in Berlin: 07:00 UTC in winter (CET, +1), 06:00 UTC in summer (CEST, +2).
        let s = sizing("Europe/Berlin", &[("* 8-17 * * *", 10)], None);
        let level = |when: &str| target(&s, 1, 40, at(when), &NONE).min_idle;
        // Saturday 2026-03-28 is winter time, Monday 2026-03-30 summer time (the change is on
        // Sunday 29 March at 01:00 UTC).
        assert_eq!(level("2026-03-28T06:30:00Z"), 1);
        assert_eq!(level("2026-03-28T07:00:00Z"), 10);
        assert_eq!(level("2026-03-30T06:30:00Z"), 10);
        assert_eq!(level("2026-03-30T16:00:00Z"), 1);
        // The change itself: 00:59 UTC is 01:59 CET, 01:00 UTC is 03:00 CEST.
        let night = sizing("Europe/Berlin", &[("* 3 * * *", 5)], None);
        assert_eq!(
            target(&night, 1, 40, at("2026-03-29T00:59:00Z"), &NONE).min_idle,
            1
        );
        assert_eq!(
            target(&night, 1, 40, at("2026-03-29T01:00:00Z"), &NONE).min_idle,
            5
        );
        // A zone with a half-hour offset: 09:00 in Kolkata is 03:30 UTC.
        let india = sizing("Asia/Kolkata", &[("* 9 * * *", 7)], None);
        assert_eq!(
            target(&india, 0, 40, at("2026-11-25T03:29:00Z"), &NONE).min_idle,
            0
        );
        assert_eq!(
            target(&india, 0, 40, at("2026-11-25T03:30:00Z"), &NONE).min_idle,
            7
        );
    }

    #[test]
    fn demand_raises_the_target_during_a_burst_and_cools_down_over_the_hour() {
        let s = sizing("UTC", &[], Some(1.0));
        let now = at("2026-11-25T12:00:00Z");
        // No history (a restart): the base, never an empty pool.
        assert_eq!(target(&s, 3, 40, now, &NONE).min_idle, 3);
        // 30 claims in the last 5 minutes: 0.1/s × 90 s = 9.
        let burst = target(&s, 3, 40, now, &[30, 30, 30]);
        assert_eq!((burst.min_idle, burst.demand), (9, 9));
        assert!(burst.reason.starts_with("demand: 9 (30 claims in 5 min"));
        // Ten minutes later the 15-minute window still holds them: 30/900 s × 90 s = 3.
        assert_eq!(target(&s, 2, 40, now, &[0, 30, 30]).min_idle, 3);
        // Forty minutes later only the hour does: 0.75, rounded up to 1, below the base.
        let cooled = target(&s, 2, 40, now, &[0, 0, 30]);
        assert_eq!((cooled.min_idle, cooled.demand), (2, 1));
        assert_eq!(cooled.reason, "base: 2");
        // The factor is headroom.
        let s = sizing("UTC", &[], Some(2.0));
        assert_eq!(target(&s, 3, 40, now, &[30, 30, 30]).min_idle, 18);
    }

    #[test]
    fn the_target_never_exceeds_max_total() {
        let s = sizing("UTC", &[("* * * * *", 30)], Some(1.0));
        let t = target(&s, 3, 12, at("2026-11-25T12:00:00Z"), &[200, 200, 200]);
        assert_eq!((t.min_idle, t.keep, t.demand), (12, 12, 60));
        assert!(t.reason.ends_with("capped by maxTotal 12"), "{}", t.reason);
    }

    #[test]
    fn the_level_of_a_window_just_ended_is_kept_for_the_cool_down() {
        // Cool-down 10 minutes.
        let s = sizing("UTC", &[("* 9 * * *", 10)], None);
        let t = target(&s, 2, 40, at("2026-11-25T10:05:00Z"), &NONE);
        assert_eq!((t.min_idle, t.keep), (2, 10));
        let t = target(&s, 2, 40, at("2026-11-25T10:10:00Z"), &NONE);
        assert_eq!((t.min_idle, t.keep), (2, 2));
    }
}
