//! One latency profile for the whole outside world of a test: every fake (Railway, OpenRouter,
//! AgentMail, Telnyx) and the stub agents answer as slowly as the real services do, scaled by one
//! time factor that scales the pool's timeouts and budgets too. The *ratios* between what the
//! outside takes and what the pool allows are those of production, while a test still ends in
//! seconds.
//!
//! Each delay is drawn from its range by a generator seeded with the profile's seed (each fake its
//! own stream, each stub agent its own, from the seed and its name), so a run can be repeated:
//! the same seed and the same order of requests give the same delays.
//!
//! | what | real (ms) | at `scaled(1/50)` |
//! |---|---|---|
//! | one Railway GraphQL request | 150–1 200 | 3–24 |
//! | Railway build and deploy until the runtime process starts | 15 000–45 000 | 300–900 |
//! | Railway build from source (`RAILWAY_SOURCE_REPO`), before that deploy | 120 000–420 000 | 2 400–8 400 |
//! | runtime boot: process start to `/pool/health` ready | 5 000–15 000 | 100–300 |
//! | one tool request (OpenRouter, AgentMail, Telnyx) | 500–3 000 | 10–60 |
//! | a health answer | 50–300 | 1–6 |
//! | `/pool/provision` (the agent joins its conversation) | 1 000–5 000 | 20–100 |
//! | one Sprites API request | 100–600 | 2–12 |
//! | Sprites build from source (seed 002's setup) | 240 000–360 000 | 4 800–7 200 |
//! | Sprites checkpoint restore and gateway restart | 10 000–20 000 | 200–400 |
//!
//! So a Railway service create plus its first deploy takes 20–60 s, scaled.

use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A range of delays in milliseconds (real time, before scaling).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Between {
    pub low_ms: f64,
    pub high_ms: f64,
}

const fn between(low_ms: f64, high_ms: f64) -> Between {
    Between { low_ms, high_ms }
}

impl Between {
    fn scaled(self, factor: f64) -> Self {
        between(self.low_ms * factor, self.high_ms * factor)
    }

    /// `LOW..HIGH` in whole milliseconds, as the stub agent reads it.
    fn stub_value(self) -> String {
        format!(
            "{}..{}",
            self.low_ms.round() as u64,
            self.high_ms.round().max(self.low_ms.round()) as u64
        )
    }
}

/// The pool's settings that are times, at their production defaults (see `config.rs`), scaled
/// with the outside world so that the ratios hold.
const POOL_TIMES: [(&str, f64); 9] = [
    ("CREATE_TIMEOUT_MS", 120_000.0),
    ("CLAIM_TIMEOUT_MS", 120_000.0),
    ("PROVISION_TIMEOUT_MS", 60_000.0),
    ("HEALTH_TIMEOUT_MS", 5_000.0),
    ("OUTBOUND_TIMEOUT_MS", 30_000.0),
    ("TICK_INTERVAL_MS", 30_000.0),
    ("TICK_BUDGET_MS", 25_000.0),
    ("POOL_STUCK_TIMEOUT_MS", 900_000.0),
    ("HEALTH_GRACE_MS", 60_000.0),
];

#[derive(Debug, Clone, PartialEq)]
pub struct LatencyProfile {
    /// Real time × this = test time.
    pub factor: f64,
    pub seed: u64,
    pub railway_call: Between,
    pub railway_deploy: Between,
    /// A build from a repo (seeds see about 5 minutes), before the deploy.
    pub railway_build: Between,
    pub runtime_boot: Between,
    pub tool_call: Between,
    pub health: Between,
    pub provision: Between,
    pub sprites_call: Between,
    pub sprites_build: Between,
    pub sprites_restore: Between,
}

impl LatencyProfile {
    /// The real services, unscaled.
    pub fn realistic() -> Self {
        Self {
            factor: 1.0,
            seed: 0x5eed,
            railway_call: between(150.0, 1_200.0),
            railway_deploy: between(15_000.0, 45_000.0),
            railway_build: between(120_000.0, 420_000.0),
            runtime_boot: between(5_000.0, 15_000.0),
            tool_call: between(500.0, 3_000.0),
            health: between(50.0, 300.0),
            provision: between(1_000.0, 5_000.0),
            sprites_call: between(100.0, 600.0),
            sprites_build: between(240_000.0, 360_000.0),
            sprites_restore: between(10_000.0, 20_000.0),
        }
    }

    /// The scale the integration tests run at: a Railway creation and deploy in 0.4–1.2 s.
    pub fn for_tests() -> Self {
        Self::realistic().scaled(1.0 / 50.0)
    }

    /// Every latency (and, through [`LatencyProfile::pool_settings`], every pool timeout) × `factor`.
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            factor: self.factor * factor,
            railway_call: self.railway_call.scaled(factor),
            railway_deploy: self.railway_deploy.scaled(factor),
            railway_build: self.railway_build.scaled(factor),
            runtime_boot: self.runtime_boot.scaled(factor),
            tool_call: self.tool_call.scaled(factor),
            health: self.health.scaled(factor),
            provision: self.provision.scaled(factor),
            sprites_call: self.sprites_call.scaled(factor),
            sprites_build: self.sprites_build.scaled(factor),
            sprites_restore: self.sprites_restore.scaled(factor),
            ..self
        }
    }

    pub fn seeded(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// The pool's timeouts, budget and interval at their defaults × the factor, as settings; a
    /// test overrides what it is about.
    pub fn pool_settings(&self) -> Vec<(String, String)> {
        POOL_TIMES
            .iter()
            .map(|(name, ms)| {
                let scaled = (ms * self.factor).round().max(1.0) as u64;
                (name.to_string(), scaled.to_string())
            })
            .collect()
    }

    /// The environment that gives a stub agent this profile: its boot, health answers and
    /// provisioning.
    pub fn stub_env(&self) -> Vec<(String, String)> {
        vec![
            ("STUB_READY_DELAY_MS".into(), self.runtime_boot.stub_value()),
            ("STUB_HEALTH_DELAY_MS".into(), self.health.stub_value()),
            (
                "STUB_PROVISION_DELAY_MS".into(),
                self.provision.stub_value(),
            ),
            ("STUB_SEED".into(), self.seed.to_string()),
        ]
    }

    /// Draws of one range, seeded from the profile's seed and `stream` (one stream per fake).
    pub fn draws(&self, range: Between, stream: u64) -> Draws {
        Draws {
            range,
            rng: Mutex::new(StdRng::seed_from_u64(
                self.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )),
        }
    }
}

/// A seeded source of delays within one range.
pub struct Draws {
    range: Between,
    rng: Mutex<StdRng>,
}

impl Draws {
    pub fn next(&self) -> Duration {
        let Between { low_ms, high_ms } = self.range;
        if high_ms <= low_ms {
            return Duration::from_secs_f64(low_ms.max(0.0) / 1000.0);
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        Duration::from_secs_f64(rng.gen_range(low_ms..high_ms) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_the_ratios_between_the_outside_and_the_pool() {
        let real = LatencyProfile::realistic();
        let fast = real.clone().scaled(1.0 / 100.0);
        let setting = |p: &LatencyProfile, name: &str| -> f64 {
            p.pool_settings()
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .parse()
                .unwrap()
        };
        let ratio = |p: &LatencyProfile| setting(p, "HEALTH_TIMEOUT_MS") / p.health.high_ms;
        assert!((ratio(&real) - ratio(&fast)).abs() < 1e-9);
        assert_eq!(setting(&fast, "CREATE_TIMEOUT_MS"), 1_200.0);
        // A Railway creation and first deploy: 20–60 s for real.
        let deploy = |p: &LatencyProfile| {
            (
                p.railway_deploy.low_ms + p.runtime_boot.low_ms,
                p.railway_deploy.high_ms + p.runtime_boot.high_ms,
            )
        };
        assert_eq!(deploy(&real), (20_000.0, 60_000.0));
        assert_eq!(deploy(&fast), (200.0, 600.0));
    }

    #[test]
    fn the_same_seed_draws_the_same_delays() {
        let profile = LatencyProfile::for_tests();
        let a = profile.draws(profile.tool_call, 1);
        let b = profile.draws(profile.tool_call, 1);
        let c = profile.draws(profile.tool_call, 2);
        let (a, b, c): (Vec<_>, Vec<_>, Vec<_>) = (
            (0..20).map(|_| a.next()).collect(),
            (0..20).map(|_| b.next()).collect(),
            (0..20).map(|_| c.next()).collect(),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        let range = profile.tool_call;
        assert!(a.iter().all(|d| {
            let ms = d.as_secs_f64() * 1000.0;
            ms >= range.low_ms && ms < range.high_ms
        }));
    }
}
