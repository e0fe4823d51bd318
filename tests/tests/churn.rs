//! Churn in railway mode with every tool, over several replicas, while every fake injects faults
//! of every kind into about a fifth of its requests: once the faults stop and the pool settles,
//! nothing is left in any fake and no row points at a missing resource.

use std::sync::Arc;
use std::time::Duration;

use agentpool_core::creation::{self, Outcome};
use agentpool_core::domain::Actor;
use agentpool_core::gate::Gate;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::tick::{self, Mode};
use agentpool_core::{instances, Pool, Settings};
use agentpool_tests::fakes::{
    AgentMailConfig, AgentMailFake, Controls, FakeConfig, Fault, OpenRouterConfig, OpenRouterFake,
    RailwayFake, Scope, TelnyxConfig, TelnyxFake,
};
use agentpool_tests::{wait_until, TestDb};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "churn-railway-token";
const REPLICAS: usize = 3;
const ROUNDS: usize = 10;
const PER_ROUND: u32 = 20;

/// Faults of every kind, each on about 1 in 30 requests: about a fifth in all.
fn faults() -> Vec<Fault> {
    vec![
        Fault::ServerError,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        Fault::RateLimitMessage,
        Fault::GraphqlError,
        Fault::Slow { ms: 200 },
        Fault::Drop,
        Fault::LostReply,
    ]
}

// Ignored until a race it found is fixed: when an order for a Telnyx number fails in a way that
// leaves its effect unknown, the client looks the number up and takes it as its own. If another
// instance ordered that same number meanwhile, both record it, and when one is destroyed the other
// points at a released number. Run it with `cargo test -p agentpool-tests --test churn --
// --ignored`; it passed 6 of 8 runs here.
#[ignore = "Telnyx lost-order race: two instances can record one number (issue 8)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_churn_under_faults_leaves_nothing_behind() {
    let railway = RailwayFake::start(FakeConfig {
        tokens: vec![TOKEN.into()],
        ..FakeConfig::default()
    })
    .await;
    let openrouter = OpenRouterFake::start(OpenRouterConfig::default()).await;
    let agentmail = AgentMailFake::start(AgentMailConfig::default()).await;
    let telnyx = TelnyxFake::start(TelnyxConfig {
        available: 400,
        ..TelnyxConfig::default()
    })
    .await;
    let ids = railway.shared_ids();
    let db = TestDb::new().await;
    let prefix = "churn-";
    let vars: Vec<(String, String)> = [
        ("DATABASE_URL", db.url.clone()),
        ("POOL_API_KEY", "churn-key-0123456789".into()),
        ("POOL_PROVIDER", "railway".into()),
        ("POOL_NAME_PREFIX", prefix.into()),
        ("POOL_MIN_IDLE", "0".into()),
        ("POOL_MAX_TOTAL", "60".into()),
        ("HEALTH_GRACE_MS", "0".into()),
        ("HEALTH_FAILURE_THRESHOLD", "1".into()),
        ("HEALTH_TIMEOUT_MS", "2000".into()),
        ("OUTBOUND_TIMEOUT_MS", "3000".into()),
        ("RAILWAY_API_URL", railway.url()),
        ("RAILWAY_API_TOKEN", TOKEN.into()),
        ("RAILWAY_PROJECT_ID", ids.project_id.clone()),
        ("RAILWAY_ENVIRONMENT_ID", ids.environment_id.clone()),
        ("RAILWAY_PUBLIC_SCHEME", "http".into()),
        ("OPENROUTER_API_URL", openrouter.url()),
        (
            "OPENROUTER_MANAGEMENT_KEY",
            openrouter.management_key().into(),
        ),
        ("AGENTMAIL_API_URL", agentmail.url()),
        ("AGENTMAIL_API_KEY", agentmail.api_key().into()),
        ("AGENTMAIL_DOMAIN", agentmail.domain().into()),
        ("TELNYX_API_URL", telnyx.url()),
        ("TELNYX_API_KEY", telnyx.api_key().into()),
        (
            "TELNYX_MESSAGING_PROFILE_ID",
            telnyx.messaging_profile_id().into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let settings = Settings::from_vars(vars).unwrap();
    // Replicas: each its own provider and clients, one database.
    let replicas: Vec<Pool> = (0..REPLICAS)
        .map(|_| {
            let provider = Arc::new(RailwayProvider::from_settings(&settings).unwrap());
            Pool::new(db.pool.clone(), settings.clone(), provider)
        })
        .collect();

    for (i, fault) in faults().into_iter().enumerate() {
        let scope = |salt: u64| Scope::Rate {
            per_mille: 30,
            seed: 1000 * salt + i as u64,
        };
        railway.inject(fault.clone(), scope(1));
        openrouter.inject(fault.clone(), scope(2));
        agentmail.inject(fault.clone(), scope(3));
        telnyx.inject(fault, scope(4));
    }

    let stop = CancellationToken::new();
    let mut attempted = 0;
    let mut created = 0;
    for round in 0..ROUNDS {
        // Creations on every replica at once, and their ticks racing them.
        let creations = replicas.iter().enumerate().map(|(i, pool)| {
            let stop = stop.clone();
            async move {
                let share =
                    PER_ROUND / REPLICAS as u32 + u32::from(i == 0) * (PER_ROUND % REPLICAS as u32);
                let rows = creation::reserve(pool, share, Actor::Operator, "churn")
                    .await
                    .unwrap_or_default();
                let n = rows.len();
                let outcomes = creation::create_all(pool, rows, &Gate::until(stop)).await;
                let ok = outcomes
                    .iter()
                    .filter(|(_, o)| matches!(o, Outcome::Created))
                    .count();
                let _ = tick::run(pool, Mode::Full).await;
                (n, ok)
            }
        });
        for (n, ok) in futures::future::join_all(creations).await {
            attempted += n;
            created += ok;
        }
        // Every other round hands everything back at once; the last one leaves its instances
        // alive, to be checked against the fakes.
        if round % 2 == 0 && round + 1 < ROUNDS {
            sqlx::query(
                "UPDATE instances SET status = 'destroying', status_since = now(), next_attempt_at = now(),
                        claim_token = NULL
                  WHERE status <> 'destroying'",
            )
            .execute(&db.pool)
            .await
            .unwrap();
        }
        let ticks = replicas.iter().map(|pool| tick::run(pool, Mode::Full));
        futures::future::join_all(ticks).await;
    }
    let stats = [
        ("railway", railway.stats()),
        ("openrouter", openrouter.stats()),
        ("agentmail", agentmail.stats()),
        ("telnyx", telnyx.stats()),
    ];
    let injected: u64 = stats
        .iter()
        .map(|(_, s)| s.faults.values().sum::<u64>())
        .sum();
    let requests: u64 = stats
        .iter()
        .map(|(_, s)| s.requests.values().sum::<u64>())
        .sum();
    assert!(attempted >= 150, "attempted {attempted}");
    assert!(injected > 0);

    // The faults stop; everything is handed back and the pool settles.
    railway.clear_faults();
    openrouter.clear_faults();
    agentmail.clear_faults();
    telnyx.clear_faults();
    // First the instances still alive: once the pool settles, every row's resources exist and
    // every resource of ours in a fake is some row's.
    wait_until(Duration::from_secs(240), || async {
        sqlx::query("UPDATE instances SET next_attempt_at = now() WHERE status = 'destroying'")
            .execute(&db.pool)
            .await
            .unwrap();
        tick::run(&replicas[0], Mode::Full).await.unwrap();
        let settling: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM instances WHERE status IN ('destroying', 'starting')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        settling == 0 && consistent(&db, prefix, &railway, &openrouter, &agentmail, &telnyx).await
    })
    .await;
    let alive = instances::counts(&db.pool)
        .await
        .unwrap()
        .values()
        .sum::<i64>();

    sqlx::query(
        "UPDATE instances SET status = 'destroying', status_since = now(), next_attempt_at = now(),
                claim_token = NULL",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until(Duration::from_secs(240), || async {
        // Retries wait for their backoff; an operator in a hurry makes them due now.
        sqlx::query("UPDATE instances SET next_attempt_at = now() WHERE status = 'destroying'")
            .execute(&db.pool)
            .await
            .unwrap();
        let report = tick::run(&replicas[0], Mode::Full).await.unwrap();
        let rows = instances::counts(&db.pool)
            .await
            .unwrap()
            .values()
            .sum::<i64>();
        let left = (
            railway
                .services()
                .iter()
                .filter(|s| s.name.starts_with(prefix))
                .count(),
            openrouter.keys().len(),
            agentmail.inboxes().len(),
            telnyx.numbers().len(),
        );
        eprintln!(
            "settling: {rows} rows, left {left:?}, errors {:?}",
            report.errors.len()
        );
        rows == 0 && left == (0, 0, 0, 0)
    })
    .await;
    let services: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_services")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(services, 0);
    eprintln!(
        "churn: {attempted} instances attempted, {created} created, {alive} alive when settled, {requests} requests, {injected} faults injected: {:?}",
        stats
            .iter()
            .map(|(name, s)| (*name, s.faults.clone()))
            .collect::<Vec<_>>()
    );
}

/// Every row's compute resource and tools exist in the fakes, and every resource of ours in a fake
/// belongs to a row.
async fn consistent(
    db: &TestDb,
    prefix: &str,
    railway: &RailwayFake,
    openrouter: &OpenRouterFake,
    agentmail: &AgentMailFake,
    telnyx: &TelnyxFake,
) -> bool {
    let services: std::collections::BTreeSet<String> = railway
        .services()
        .into_iter()
        .filter(|s| s.name.starts_with(prefix))
        .map(|s| s.id)
        .collect();
    let infra: std::collections::BTreeSet<String> =
        sqlx::query_scalar("SELECT resource_id FROM instance_infra")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut outside: std::collections::BTreeSet<(String, String)> = openrouter
        .keys()
        .into_iter()
        .map(|k| ("openrouter".to_string(), k.hash))
        .collect();
    outside.extend(
        agentmail
            .inboxes()
            .into_iter()
            .map(|i| ("email".to_string(), i.inbox_id)),
    );
    outside.extend(
        telnyx
            .numbers()
            .into_iter()
            .map(|n| ("sms".to_string(), n.id)),
    );
    let recorded: std::collections::BTreeSet<(String, String)> = sqlx::query_as(
        "SELECT tool_id, resource_id FROM instance_services WHERE tool_id IN ('openrouter', 'email', 'sms')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let same = services == infra && outside == recorded;
    if !same {
        eprintln!(
            "not yet: services {} vs infra {}, tools outside {} vs recorded {}",
            services.len(),
            infra.len(),
            outside.len(),
            recorded.len()
        );
    }
    same
}
