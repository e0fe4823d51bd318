//! `simulate --recommend`: searches fixed sizes, schedules fitted to the trace's profile, and
//! schedules with a demand reaction for the fewest idle instance-hours within the miss target.

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::config::{DemandReaction, ScheduleWindow, SizingPolicy};
use crate::error::Result;

use super::{run, Model, Outcome, Policy};

#[derive(Debug, Clone)]
pub struct Evaluated {
    pub name: String,
    pub policy: Policy,
    pub outcome: Outcome,
}

/// The best of each kind that meets the target, if any does.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub fixed: Option<Evaluated>,
    pub schedule: Option<Evaluated>,
    pub schedule_and_demand: Option<Evaluated>,
}

impl Search {
    /// The one with the fewest idle instance-hours.
    pub fn best(&self) -> Option<&Evaluated> {
        [&self.fixed, &self.schedule, &self.schedule_and_demand]
            .into_iter()
            .flatten()
            .min_by(|a, b| a.outcome.idle_hours.total_cmp(&b.outcome.idle_hours))
    }
}

const COOLDOWN_SECONDS: u32 = 600;

/// The smallest fixed `minIdle` whose miss rate meets `miss_target` (`None` if not even
/// `maxTotal` does).
pub fn cheapest_fixed(
    claims: &[DateTime<Utc>],
    model: &Model,
    miss_target: f64,
) -> Result<Option<Evaluated>> {
    // Misses fall as the size grows: a binary search over 0..=maxTotal.
    let (mut low, mut high) = (0u32, model.max_total);
    let mut best = None;
    while low <= high {
        let mid = low + (high - low) / 2;
        let policy = Policy::fixed(mid);
        let outcome = run(claims, &policy, model, false)?;
        if outcome.miss_rate() <= miss_target {
            best = Some(Evaluated {
                name: format!("fixed minIdle {mid}"),
                policy,
                outcome,
            });
            if mid == 0 {
                break;
            }
            high = mid - 1;
        } else {
            low = mid + 1;
        }
    }
    Ok(best)
}

pub fn search(claims: &[DateTime<Utc>], model: &Model, miss_target: f64) -> Result<Search> {
    let profile = Profile::of(claims, model);
    let fixed = cheapest_fixed(claims, model, miss_target)?;
    let mut schedules = Vec::new();
    for scale in [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5] {
        for base in 0..=4 {
            schedules.push(profile.policy(scale, base, None, model.max_total));
        }
    }
    let mut with_demand = Vec::new();
    for scale in [0.5, 0.7, 0.85, 1.0] {
        for base in 0..=2 {
            for factor in [1.0, 2.0, 3.0] {
                let demand = DemandReaction {
                    boot_seconds: model.boot.as_secs() as u32,
                    factor,
                };
                with_demand.push(profile.policy(scale, base, Some(demand), model.max_total));
            }
        }
    }
    Ok(Search {
        fixed,
        schedule: cheapest(claims, model, miss_target, "schedule", schedules)?,
        schedule_and_demand: cheapest(
            claims,
            model,
            miss_target,
            "schedule + demand",
            with_demand,
        )?,
    })
}

/// Replays each candidate (on every core) and keeps the cheapest that meets the target.
fn cheapest(
    claims: &[DateTime<Utc>],
    model: &Model,
    miss_target: f64,
    name: &str,
    candidates: Vec<Policy>,
) -> Result<Option<Evaluated>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = candidates.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<(Policy, Outcome)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = candidates
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|p| Ok((p.clone(), run(claims, p, model, false)?)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut best: Option<Evaluated> = None;
    for result in results {
        for (policy, outcome) in result? {
            let better = outcome.miss_rate() <= miss_target
                && best.as_ref().is_none_or(|b| {
                    (outcome.idle_hours, outcome.creations)
                        < (b.outcome.idle_hours, b.outcome.creations)
                });
            if better {
                best = Some(Evaluated {
                    name: name.to_string(),
                    policy,
                    outcome,
                });
            }
        }
    }
    Ok(best)
}

/// For each hour of the day, on weekdays and on weekends (UTC): the most claims that came within
/// one boot plus one tick of each other starting in that hour — what the pool must hold at the
/// start of that hour for nothing to miss.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// `[weekdays, weekends][hour]`.
    pub need: [[u32; 24]; 2],
}

impl Profile {
    pub fn of(claims: &[DateTime<Utc>], model: &Model) -> Self {
        let reach = chrono::Duration::from_std(model.boot + model.tick_interval)
            .unwrap_or(chrono::Duration::zero());
        let mut need = [[0u32; 24]; 2];
        let mut end = 0;
        for (i, &at) in claims.iter().enumerate() {
            end = end.max(i);
            while end < claims.len() && claims[end] < at + reach {
                end += 1;
            }
            let class = usize::from(at.weekday().number_from_monday() >= 6);
            let slot = &mut need[class][at.hour() as usize];
            *slot = (*slot).max((end - i) as u32);
        }
        Self { need }
    }

    /// A policy whose windows hold `scale × need` (rounded up) wherever that is above `base`.
    pub fn policy(
        &self,
        scale: f64,
        base: u32,
        demand: Option<DemandReaction>,
        max_total: u32,
    ) -> Policy {
        let level = |n: u32| ((f64::from(n) * scale).ceil() as u32).min(max_total);
        let mut levels: Vec<u32> = self
            .need
            .iter()
            .flatten()
            .map(|&n| level(n))
            .filter(|&l| l > base)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        let mut schedules = Vec::new();
        for l in levels {
            let hours = |class: usize| -> Vec<u32> {
                (0..24u32)
                    .filter(|&h| level(self.need[class][h as usize]) == l)
                    .collect()
            };
            let (weekdays, weekends) = (hours(0), hours(1));
            if weekdays == weekends {
                schedules.push(window(&weekdays, "*", l));
            } else {
                if !weekdays.is_empty() {
                    schedules.push(window(&weekdays, "1-5", l));
                }
                if !weekends.is_empty() {
                    schedules.push(window(&weekends, "0,6", l));
                }
            }
        }
        Policy {
            min_idle: base.min(max_total),
            max_total: None,
            sizing: SizingPolicy {
                timezone: "UTC".into(),
                schedules,
                demand,
                cooldown_seconds: COOLDOWN_SECONDS,
            },
        }
    }
}

fn window(hours: &[u32], weekdays: &str, min_idle: u32) -> ScheduleWindow {
    ScheduleWindow {
        cron: format!("* {} * * {weekdays}", ranges(hours)),
        min_idle,
    }
}

/// `[0, 1, 2, 5, 7, 8]` → `0-2,5,7-8`.
fn ranges(hours: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < hours.len() {
        let mut j = i;
        while j + 1 < hours.len() && hours[j + 1] == hours[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            hours[i].to_string()
        } else {
            format!("{}-{}", hours[i], hours[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_written_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges(&[23]), "23");
    }

    #[test]
    fn a_fitted_policy_compiles_and_covers_its_busy_hours() {
        let trace = super::super::trace::parse(&super::super::trace::sample_week(7)).unwrap();
        let model = Model::default();
        let profile = Profile::of(&trace.claims, &model);
        // The bursts make the busy hours' need far above the night's.
        assert!(profile.need[0][9] >= 20, "{:?}", profile.need);
        assert!(profile.need[0][3] <= 2, "{:?}", profile.need);
        let policy = profile.policy(1.0, 1, None, model.max_total);
        let sizing = policy.sizing.compile(model.max_total).unwrap();
        let at_nine = sizing.windows.iter().find(|w| w.covers(24 + 9)).unwrap();
        assert_eq!(at_nine.min_idle, profile.need[0][9]);
    }
}
