//! `agentpool simulate`: the command line over `agentpool_core::simulate` — reads the trace and
//! policy, prints the table (or JSON), the settings to apply, and draws the chart.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, DurationRound, Utc};
use serde_json::json;

use agentpool_core::simulate::recommend::{self, Evaluated};
use agentpool_core::simulate::{self, trace, Model, Policy};

use crate::chart::{idle_and_target, Chart};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The claim trace: one RFC 3339 timestamp a line, optionally `,templateId`.
    #[arg(long, required_unless_present = "generate_sample")]
    pub trace: Option<PathBuf>,
    /// Seconds from creating an agent to its being idle.
    #[arg(long, default_value_t = 90)]
    pub boot_seconds: u64,
    /// Seconds between full ticks (`TICK_INTERVAL_MS` / 1000).
    #[arg(long, default_value_t = 30)]
    pub tick_seconds: u64,
    /// The largest share of claims that may find no idle agent.
    #[arg(long, default_value_t = 0.01)]
    pub miss_target: f64,
    /// `maxTotal` for policies that do not set it.
    #[arg(long, default_value_t = 200)]
    pub max_total: u32,
    /// A policy to evaluate: the JSON body of `PUT /api/pool/settings`
    /// (`{"minIdle": 2, "sizing": {…}}`).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Search fixed sizes, fitted schedules and demand reactions for the fewest idle
    /// instance-hours within the miss target.
    #[arg(long)]
    pub recommend: bool,
    /// Print `{"claims", "policies", "recommended"}` instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Draw demand, idle agents and target over time (SVG) for the recommended policy (or the
    /// `--policy` one).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Write the sample bursty week to this file and exit.
    #[arg(long, conflicts_with = "trace")]
    pub generate_sample: Option<PathBuf>,
    /// The sample week's random seed (another seed: another week of the same shape).
    #[arg(long, default_value_t = 7, requires = "generate_sample")]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.generate_sample {
        std::fs::write(path, trace::sample_week(args.seed))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote a sample week of claims to {}", path.display());
        return Ok(());
    }
    let path = args.trace.as_ref().context("--trace is required")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let trace = trace::parse(&text)?;
    if !(0.0..=1.0).contains(&args.miss_target) {
        anyhow::bail!("--miss-target is a fraction between 0 and 1");
    }
    let model = Model {
        boot: Duration::from_secs(args.boot_seconds),
        tick_interval: Duration::from_secs(args.tick_seconds.max(1)),
        max_total: args.max_total,
    };
    let claims = &trace.claims;
    let mut evaluated: Vec<Evaluated> = Vec::new();
    if args.recommend {
        let search = recommend::search(claims, &model, args.miss_target)?;
        evaluated.extend(
            [search.fixed, search.schedule, search.schedule_and_demand]
                .into_iter()
                .flatten(),
        );
    } else if let Some(fixed) = recommend::cheapest_fixed(claims, &model, args.miss_target)? {
        evaluated.push(fixed);
    }
    if let Some(path) = &args.policy {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let policy: Policy = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a settings body", path.display()))?;
        let outcome = simulate::run(claims, &policy, &model, false)?;
        evaluated.push(Evaluated {
            name: format!("policy {}", path.display()),
            policy,
            outcome,
        });
    }
    let recommended = evaluated
        .iter()
        .filter(|e| e.outcome.miss_rate() <= args.miss_target)
        .min_by(|a, b| a.outcome.idle_hours.total_cmp(&b.outcome.idle_hours));
    if let Some(path) = &args.chart {
        let chosen = recommended
            .or(evaluated.last())
            .context("no policy to chart")?;
        let outcome = simulate::run(claims, &chosen.policy, &model, true)?;
        std::fs::write(path, chart(claims, &chosen.name, &outcome))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let policies: Vec<_> = evaluated
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "missRate": e.outcome.miss_rate(),
                    "idleHours": e.outcome.idle_hours,
                    "creations": e.outcome.creations,
                })
            })
            .collect();
        let recommended = recommended.map(|e| {
            json!({
                "name": e.name,
                "policy": e.policy,
                "missRate": e.outcome.miss_rate(),
                "idleHours": e.outcome.idle_hours,
            })
        });
        let claims = evaluated.first().map_or(0, |e| e.outcome.claims);
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"claims": claims, "policies": policies, "recommended": recommended})
            )?
        );
        return Ok(());
    }
    print!("{}", table(&evaluated, &model, args.miss_target));
    match recommended {
        Some(best) => {
            let fixed = evaluated.iter().find(|e| e.name.starts_with("fixed"));
            let saving = fixed
                .filter(|f| f.outcome.idle_hours > 0.0)
                .map(|f| {
                    format!(
                        " ({:.0} % fewer idle instance-hours than {})",
                        100.0 * (1.0 - best.outcome.idle_hours / f.outcome.idle_hours),
                        f.name
                    )
                })
                .unwrap_or_default();
            println!("\nrecommended: {}{saving}", best.name);
            println!(
                "apply it:\n  curl -X PUT \"$AGENTPOOL_URL/api/pool/settings\" \\\n    -H \"Authorization: Bearer $POOL_API_KEY\" -H 'Content-Type: application/json' \\\n    -d '{}'",
                serde_json::to_string(&best.policy)?
            );
        }
        None => println!(
            "\nno policy evaluated meets a miss rate of {:.2} %",
            100.0 * args.miss_target
        ),
    }
    Ok(())
}

fn table(evaluated: &[Evaluated], model: &Model, miss_target: f64) -> String {
    let mut out = String::new();
    let claims = evaluated.first().map_or(0, |e| e.outcome.claims);
    let _ = writeln!(
        out,
        "{claims} claims; boot {} s, a tick every {} s, miss target {:.2} %\n",
        model.boot.as_secs(),
        model.tick_interval.as_secs(),
        100.0 * miss_target
    );
    let _ = writeln!(
        out,
        "{:<32} {:>7} {:>7} {:>9} {:>10} {:>9} {:>12}",
        "policy", "claims", "misses", "miss rate", "idle hours", "creations", "destructions"
    );
    for e in evaluated {
        let o = &e.outcome;
        let _ = writeln!(
            out,
            "{:<32} {:>7} {:>7} {:>8.2}% {:>10.1} {:>9} {:>12}",
            e.name,
            o.claims,
            o.misses,
            100.0 * o.miss_rate(),
            o.idle_hours,
            o.creations,
            o.destructions
        );
    }
    out
}

fn chart(claims: &[DateTime<Utc>], name: &str, outcome: &simulate::Outcome) -> String {
    let hour = chrono::Duration::hours(1);
    let mut bars: Vec<(DateTime<Utc>, u32)> = Vec::new();
    for at in claims {
        let bucket = at.duration_trunc(hour).unwrap_or(*at);
        match bars.last_mut() {
            Some((b, n)) if *b == bucket => *n += 1,
            _ => bars.push((bucket, 1)),
        }
    }
    let start = bars.first().map_or(Utc::now(), |b| b.0);
    let end = bars.last().map_or(start, |b| b.0) + hour;
    let samples: Vec<_> = outcome
        .samples
        .iter()
        .filter(|s| s.at >= start)
        .map(|s| (s.at, s.idle, s.target))
        .collect();
    let title = format!("simulated: {name} (claims per hour, idle agents, target)");
    Chart {
        title: &title,
        start,
        end,
        bars: &bars,
        bar_width: hour,
        bar_label: "claims per hour",
        lines: idle_and_target(&samples),
    }
    .svg()
}
