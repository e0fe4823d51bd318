//! Churn in railway mode with every tool, over several replicas, while every fake injects faults
//! of every kind into about a fifth of its requests: once the faults stop and the pool settles,
//! nothing is left in any fake and no row points at a missing resource.

use std::sync::Arc;
use std::time::Duration;

use agentpool_core::calls::Tally;
use agentpool_core::creation::{self, Outcome};
use agentpool_core::domain::Actor;
use agentpool_core::gate::Gate;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::tick::{self, Mode};
use agentpool_core::{instances, Pool, Settings};
use agentpool_tests::fakes::{Controls, Fault, Scope};
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::outside::Outside;
use agentpool_tests::{set_vars, wait_until, TestDb};
use tokio_util::sync::CancellationToken;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_churn_under_faults_leaves_nothing_behind() {
    // Every fake and every runtime at the pace of the real services, scaled; the pool's timeouts
    // and budget scaled alike.
    let profile = LatencyProfile::for_tests();
    let outside = Outside::start(400).await;
    outside.set_latency(&profile);
    let Outside {
        railway,
        openrouter,
        agentmail,
        telnyx,
    } = &outside;
    let db = TestDb::new().await;
    let prefix = "churn-";
    let mut vars = outside.settings();
    set_vars(&mut vars, profile.pool_settings());
    set_vars(
        &mut vars,
        [
            ("DATABASE_URL", db.url.clone()),
            ("POOL_API_KEY", "churn-key-0123456789".into()),
            ("POOL_NAME_PREFIX", prefix.into()),
            ("POOL_MIN_IDLE", "0".into()),
            ("POOL_MAX_TOTAL", "60".into()),
            ("HEALTH_GRACE_MS", "0".into()),
            ("HEALTH_FAILURE_THRESHOLD", "1".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let settings = Settings::from_vars(vars).unwrap();
    // Replicas: each its own provider and clients, one database.
    let replicas: Vec<Pool> = (0..REPLICAS)
        .map(|_| {
            let tally = Tally::default();
            let provider = Arc::new(
                RailwayProvider::from_settings(
                    &settings.providers.railway,
                    &settings.outbound,
                    &tally,
                )
                .unwrap(),
            );
            Pool::new(db.pool.clone(), settings.clone(), provider, tally)
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
                let Ok(batch) = creation::reserve(pool, share, Actor::Operator, "churn").await
                else {
                    return (0, 0);
                };
                let n = batch.rows.len();
                let outcomes = creation::create_all(pool, batch, &Gate::until(stop)).await;
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
        settling == 0
            && outside
                .agrees_with(&db.pool, prefix)
                .await
                .map_err(|difference| eprintln!("not yet: {difference}"))
                .is_ok()
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
        "churn: {attempted} instances attempted, {created} created, {alive} alive when settled \
         (database and fakes agreeing), {requests} requests, {injected} faults injected: {:?}; \
         left at the end: 0 services, 0 keys, 0 inboxes, 0 numbers, 0 tool records",
        stats
            .iter()
            .map(|(name, s)| (*name, s.faults.clone()))
            .collect::<Vec<_>>()
    );
}
