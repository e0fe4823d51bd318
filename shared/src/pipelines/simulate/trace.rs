//! Claim traces: one claim a line, an RFC 3339 timestamp, optionally `,templateId`. Blank lines and
//! lines starting with `#` are skipped.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Sorted.
    pub claims: Vec<DateTime<Utc>>,
    /// Claims per template, for lines that name one.
    pub templates: BTreeMap<String, u32>,
}

pub fn parse(text: &str) -> Result<Trace> {
    let mut trace = Trace::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (stamp, template) = match line.split_once(',') {
            Some((stamp, template)) => (stamp.trim(), Some(template.trim())),
            None => (line, None),
        };
        let at = DateTime::parse_from_rfc3339(stamp).map_err(|e| {
            Error::Invalid(format!(
                "line {}: {stamp:?} is not an RFC 3339 timestamp ({e})",
                n + 1
            ))
        })?;
        trace.claims.push(at.with_timezone(&Utc));
        if let Some(template) = template.filter(|t| !t.is_empty()) {
            *trace.templates.entry(template.to_string()).or_default() += 1;
        }
    }
    trace.claims.sort_unstable();
    Ok(trace)
}

/// The sample week: Monday 2026-11-23 to Sunday, UTC. Every day three bursts of 30 claims (around
/// 09:00, 13:00 and 16:00, each within one to three minutes), 22 claims an hour from 08:00 to
/// 20:00, and 2 an hour through the night: about 2,650 claims. The same `seed` gives the same
/// week.
pub fn sample_week(seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let monday = Utc
        .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut claims = Vec::new();
    for day in 0..7 {
        let midnight = monday + Duration::days(day);
        for hour in 0..24 {
            let per_hour = if (8..20).contains(&hour) { 22 } else { 2 };
            for _ in 0..per_hour {
                claims.push(
                    midnight + Duration::hours(hour) + Duration::seconds(rng.gen_range(0..3600)),
                );
            }
        }
        for hour in [9, 13, 16] {
            let start =
                midnight + Duration::hours(hour) + Duration::seconds(rng.gen_range(0..2400));
            let length = rng.gen_range(60..=180);
            for _ in 0..30 {
                claims.push(start + Duration::seconds(rng.gen_range(0..length)));
            }
        }
    }
    claims.sort_unstable();
    let mut text = String::from(
        "# agentpool sample claim trace: a bursty week (agentpool simulate --generate-sample)\n",
    );
    for at in claims {
        text.push_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_a_template_are_read_and_sorted() {
        let trace = parse(
            "# a comment\n2026-11-23T09:00:05Z,tpl-a\n\n2026-11-23T10:00:00+01:00\n2026-11-23T09:00:06Z, tpl-a\n",
        )
        .unwrap();
        assert_eq!(trace.claims.len(), 3);
        assert_eq!(
            trace.claims[0],
            Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
        );
        assert_eq!(trace.templates.get("tpl-a"), Some(&2));
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse("2026-11-23T09:00:05Z\nyesterday\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn the_sample_week_is_the_same_every_time() {
        let week = sample_week(7);
        assert_eq!(week, sample_week(7));
        let trace = parse(&week).unwrap();
        // 7 × (3 × 30 + 12 × 22 + 12 × 2).
        assert_eq!(trace.claims.len(), 2646);
    }
}
