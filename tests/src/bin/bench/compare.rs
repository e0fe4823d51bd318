//! Regressions: this run's ratios against the last committed report's. Ratios, not absolute
//! figures: both sides of a ratio were measured in the same run on the same machine, so a ratio
//! carries from one machine (or one busy afternoon) to the next where claims a second do not.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::Report;

/// A ratio that fell by more than this share of its last value is a regression.
pub const TOLERANCE: f64 = 0.15;

pub struct Last {
    pub commit: String,
    pub ratios: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Regression {
    pub ratio: String,
    pub was: f64,
    pub now: f64,
}

/// The report committed at `HEAD` (`git show`), else the one in `out`.
pub fn last_committed(out: &Path) -> Option<Last> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = std::process::Command::new("git")
        .args(["show", "HEAD:docs/benchmarks.json"])
        .current_dir(&repo)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let text = committed.or_else(|| std::fs::read_to_string(out.join("benchmarks.json")).ok())?;
    let json: Value = serde_json::from_str(&text).ok()?;
    Some(Last {
        commit: json["machine"]["commit"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        ratios: ratios_of(&json),
    })
}

pub fn ratios(report: &Report) -> BTreeMap<String, f64> {
    serde_json::to_value(report)
        .map(|json| ratios_of(&json))
        .unwrap_or_default()
}

/// Every ratio a report holds, by a name that stays the same from run to run.
fn ratios_of(json: &Value) -> BTreeMap<String, f64> {
    let mut ratios = BTreeMap::new();
    for (cells, placement) in [
        ("limit", ""),
        ("limitPostgresApart", ", Postgres on a core of its own"),
    ] {
        for cell in json[cells].as_array().into_iter().flatten() {
            let clients = cell["clients"].as_u64().unwrap_or(0);
            for (field, what) in [
                ("claimSqlShare", "claim SQL ÷ minimal claim"),
                ("httpShare", "HTTP claims ÷ minimal claim"),
                ("httpCeilingShare", "HTTP claims ÷ ceiling"),
            ] {
                if let Some(share) = cell[field].as_f64() {
                    ratios.insert(format!("{what}, {clients} clients{placement}"), share);
                }
            }
        }
    }
    ratios
}

pub fn regressions(was: &BTreeMap<String, f64>, now: &BTreeMap<String, f64>) -> Vec<Regression> {
    was.iter()
        .filter_map(|(ratio, &was)| {
            let now = *now.get(ratio)?;
            (now < was * (1.0 - TOLERANCE)).then(|| Regression {
                ratio: ratio.clone(),
                was,
                now,
            })
        })
        .collect()
}

/// Says it where nobody can miss it: on stderr, framed, one line per ratio.
pub fn shout(regressions: &[Regression], compared: usize, commit: &str) {
    if compared == 0 {
        eprintln!("bench: the report of {commit} has none of this run's ratios to compare with");
        return;
    }
    if regressions.is_empty() {
        eprintln!(
            "bench: no ratio fell by more than {:.0} % since the report of {commit}",
            TOLERANCE * 100.0
        );
        return;
    }
    let rule = "!".repeat(78);
    eprintln!("{rule}");
    eprintln!(
        "!! REGRESSION: {} ratio(s) fell by more than {:.0} % since the report of {commit}",
        regressions.len(),
        TOLERANCE * 100.0
    );
    for r in regressions {
        eprintln!(
            "!!   {}: {:.3} → {:.3} ({:+.0} %)",
            r.ratio,
            r.was,
            r.now,
            (r.now / r.was - 1.0) * 100.0
        );
    }
    eprintln!("{rule}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_falls_beyond_the_tolerance_are_regressions() {
        let was = BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 0.5)]);
        let now = BTreeMap::from([("a".to_string(), 0.86), ("b".to_string(), 0.4)]);
        let found = regressions(&was, &now);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ratio, "b");
        // A ratio the last report did not have is not compared.
        assert!(regressions(&BTreeMap::new(), &now).is_empty());
    }
}
