//! Agents from templates (issue 17): what an idle instance holds when the tools come at claim time
//! instead of at creation, and what a claim by template with two pool tools costs. Railway mode
//! over every fake (`agentpool_tests::outside`): instances are created by the real pipeline (the
//! Railway fake deploys stub agents), then the fakes are set to the real services' pace
//! (`LatencyProfile::realistic`: a tool call 0.5–3 s, a Railway call 0.15–1.2 s) and claims are
//! timed in-process, one at a time, plain and by template.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use agentpool_core::calls::Tally;
use agentpool_core::claim::{self, ClaimInput, Redacted};
use agentpool_core::domain::InstanceStatus;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::template::TemplateInput;
use agentpool_core::tick::{self, Mode};
use agentpool_core::{catalog, db, instances, Pool, Settings};
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::outside::Outside;

use crate::stats::Latency;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateFigures {
    /// Tool resources held per idle instance, by tool, with `TOOLS_AT_CREATION=all` (before) and
    /// `base` (after).
    pub idle_resources_all: BTreeMap<String, f64>,
    pub idle_resources_base: BTreeMap<String, f64>,
    pub claims: usize,
    /// A claim without a template, and one by a template naming `email` and `sms` from the pool
    /// (AgentMail: one call; Telnyx: search, order, tag).
    pub plain_claim: Latency,
    pub template_claim: Latency,
}

async fn pool_with(database_url: &str, vars: &[(String, String)]) -> anyhow::Result<Pool> {
    let settings = Settings::from_vars(vars.to_vec())?;
    let tally = Tally::default();
    let provider = Arc::new(RailwayProvider::from_settings(
        &settings.providers.railway,
        &settings.outbound,
        &tally,
    )?);
    Ok(Pool::new(
        db::connect(database_url, settings.db.database_max_connections).await?,
        settings,
        provider,
        tally,
    ))
}

/// Ticks until `n` instances are idle.
async fn fill(pool: &Pool, n: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tick::run(pool, Mode::Full).await?;
        let idle = instances::counts(&pool.db).await?[&InstanceStatus::Idle];
        if idle >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pool did not fill: {idle} idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tool resources per idle instance of this pool (by its name prefix), by tool id.
async fn idle_resources(pool: &Pool) -> anyhow::Result<BTreeMap<String, f64>> {
    let prefix = format!("{}%", pool.settings.pool.pool_name_prefix);
    let idle: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE status = 'idle' AND name LIKE $1")
            .bind(&prefix)
            .fetch_one(&pool.db)
            .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.tool_id, count(*) FROM instance_services s
           JOIN instances i ON i.id = s.instance_id
          WHERE i.status = 'idle' AND i.name LIKE $1 GROUP BY s.tool_id ORDER BY s.tool_id",
    )
    .bind(&prefix)
    .fetch_all(&pool.db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tool, n)| (tool, n as f64 / idle.max(1) as f64))
        .collect())
}

pub async fn measure(database_url: &str, claims: usize) -> anyhow::Result<TemplateFigures> {
    let outside = Outside::start(200).await;
    let base_vars = |tools: &str, prefix: &str, idle: usize| {
        let mut vars = outside.settings();
        vars.retain(|(k, _)| k != "TOOLS_AT_CREATION");
        vars.extend(
            [
                ("DATABASE_URL", database_url.to_string()),
                ("TOOLS_AT_CREATION", tools.to_string()),
                ("POOL_NAME_PREFIX", prefix.to_string()),
                ("POOL_MIN_IDLE", idle.to_string()),
                ("POOL_MAX_TOTAL", (2 * idle + 4).to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        vars
    };
    sqlx::query("TRUNCATE instances, instance_events, agent_templates CASCADE")
        .execute(&db::connect(database_url, 2).await?)
        .await?;

    // Before: every tool at creation.
    let before = pool_with(database_url, &base_vars("all", "bta-", 3)).await?;
    fill(&before, 3).await?;
    let idle_resources_all = idle_resources(&before).await?;
    // Out of the way of the next pool's counts and claims, whatever state they reached.
    sqlx::query(
        "UPDATE instances SET status = 'destroying', claim_token = NULL, next_attempt_at = now()",
    )
    .execute(&before.db)
    .await?;
    tick::run(&before, Mode::Full).await?;
    before.db.close().await;

    // After: only OpenRouter and the wallet; enough idle instances for both kinds of claim.
    let after = pool_with(database_url, &base_vars("base", "btb-", 2 * claims)).await?;
    fill(&after, 2 * claims as i64).await?;
    let idle_resources_base = idle_resources(&after).await?;
    let mut template: TemplateInput = serde_json::from_value(json!({
        "slug": "bench-two-tools", "agentName": "Bench", "instructions": "Answer at once.",
        "tools": [{"id": "email", "provisioning": "pool"}, {"id": "sms", "provisioning": "pool"}],
    }))?;
    template.check()?;
    let template = catalog::create(&after, template).await?;

    outside.set_latency(&LatencyProfile::realistic());
    let mut plain = Vec::new();
    let mut by_template = Vec::new();
    for i in 0..claims {
        for with_template in [false, true] {
            let input = ClaimInput {
                template_id: with_template.then(|| template.id.clone()),
                agent_name: Some(format!("bench-{i}")),
                instructions: (!with_template).then(|| "Answer at once.".to_string()),
                user_config: None::<Redacted>,
                ..ClaimInput::default()
            };
            let started = Instant::now();
            let request = claim::prepare(&after, input).await?;
            claim::claim(&after, &request, None).await?;
            let took = started.elapsed();
            if with_template {
                by_template.push(took);
            } else {
                plain.push(took);
            }
        }
    }
    after.db.close().await;
    let figures = TemplateFigures {
        idle_resources_all,
        idle_resources_base,
        claims,
        plain_claim: Latency::of(plain),
        template_claim: Latency::of(by_template),
    };
    eprintln!("bench: templates {figures:?}");
    Ok(figures)
}

/// The report's section.
pub fn markdown(f: &TemplateFigures) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(md, "## Agents from templates\n");
    let _ = writeln!(
        md,
        "Railway mode over every fake. Idle instances made by the real creation pipeline; then \
         the fakes at the real services' pace (a tool call 0.5–3 s, a Railway call 0.15–1.2 s) \
         and {} claims of each kind, one at a time, in-process (`claim::prepare` + \
         `claim::claim`; the runtime is a stub that answers at once). The template names `email` \
         and `sms` from the pool, made at claim time, their variables saved at Railway \
         (`variableCollectionUpsert`, `skipDeploys`) and handed to the runtime.\n",
        f.claims
    );
    let _ = writeln!(
        md,
        "| claim | p50 ms | p95 ms | max ms |\n|---|---|---|---|\n| plain | {} | {} | {} |\n| by template, two pool tools | {} | {} | {} |",
        f.plain_claim.p50_ms,
        f.plain_claim.p95_ms,
        f.plain_claim.max_ms,
        f.template_claim.p50_ms,
        f.template_claim.p95_ms,
        f.template_claim.max_ms
    );
    let tools: std::collections::BTreeSet<&String> = f
        .idle_resources_all
        .keys()
        .chain(f.idle_resources_base.keys())
        .collect();
    let _ = writeln!(
        md,
        "\nTool resources held per idle instance (OpenRouter key, inbox, number, wallet):\n\n| tool | `TOOLS_AT_CREATION=all` (before) | `base` (after, the default) |\n|---|---|---|"
    );
    for tool in tools {
        let at = |m: &BTreeMap<String, f64>| m.get(tool).copied().unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {tool} | {} | {} |",
            at(&f.idle_resources_all),
            at(&f.idle_resources_base)
        );
    }
    md
}
