//! `POOL_PROVIDER=railway` end to end, against the stateful Railway fake: instances are services
//! (or projects) whose deployments are real stub agents, so health checks and claims run for real.

use std::sync::Arc;

use agentpool_core::calls::Tally;
use agentpool_core::creation;
use agentpool_core::domain::Actor;
use agentpool_core::domain::InstanceStatus::*;
use agentpool_core::gate::Gate;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::providers::Provider;
use agentpool_core::tick::Mode;
use agentpool_core::Settings;
use agentpool_tests::fakes::{Controls, FakeConfig, Fault, RailwayFake, Scope};
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::outside::Outside;
use agentpool_tests::{set_vars, TestPool};
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "railway-test-token-0123456789";

fn provider(fake: &RailwayFake, layout: &str, prefix: &str, tally: &Tally) -> Arc<RailwayProvider> {
    let ids = fake.shared_ids();
    let settings = Settings::from_vars(
        [
            ("POOL_PROVIDER", "railway"),
            ("POOL_NAME_PREFIX", prefix),
            ("RAILWAY_API_URL", &fake.url()),
            ("RAILWAY_API_TOKENS", TOKEN),
            ("RAILWAY_LAYOUT", layout),
            ("RAILWAY_PROJECT_ID", &ids.project_id),
            ("RAILWAY_ENVIRONMENT_ID", &ids.environment_id),
            ("RAILWAY_TEAM_ID", &ids.workspace_id),
            ("RAILWAY_PUBLIC_SCHEME", "http"),
            ("OUTBOUND_TIMEOUT_MS", "2000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    Arc::new(
        RailwayProvider::from_settings(&settings.providers.railway, &settings.outbound, tally)
            .unwrap(),
    )
}

async fn fake() -> RailwayFake {
    RailwayFake::start(FakeConfig {
        tokens: vec![TOKEN.into()],
        ..FakeConfig::default()
    })
    .await
}

/// Names of ours the fake still holds: services (in any project) and projects. In the
/// project-per-agent layout a project and its service share the instance's name.
fn left(fake: &RailwayFake, prefix: &str) -> Vec<String> {
    let names: std::collections::BTreeSet<String> = fake
        .services()
        .into_iter()
        .map(|s| s.name)
        .chain(fake.projects().into_iter().map(|p| p.name))
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.into_iter().collect()
}

async fn lifecycle(layout: &str) {
    let fake = fake().await;
    let prefix = "ap-";
    let t = TestPool::with_provider(
        &[("POOL_MIN_IDLE", "0"), ("POOL_NAME_PREFIX", prefix)],
        &[],
        |_, tally| provider(&fake, layout, prefix, tally),
    )
    .await;
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 2})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(left(&fake, prefix).len(), 2);
    agentpool_tests::wait_until(std::time::Duration::from_secs(20), || async {
        t.tick().await;
        t.count(Idle).await == 2
    })
    .await;

    let (status, claimed) = t.claim("railway-agent").await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert!(claimed["gatewayUrl"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    let id = claimed["instanceId"].as_str().unwrap();

    let (status, _) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = t.post("/api/pool/drain", json!({"count": 10})).await;
    assert_eq!(status, StatusCode::OK);
    let report = t.tick().await;
    assert_eq!(report.destroyed.len(), 2, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(left(&fake, prefix).is_empty(), "{:?}", left(&fake, prefix));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
        .fetch_one(&t.pool.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_project_lifecycle_leaves_nothing_behind() {
    lifecycle("shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_per_agent_lifecycle_leaves_nothing_behind() {
    lifecycle("project").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_whose_reply_was_lost_is_found_not_made_twice() {
    for layout in ["shared", "project"] {
        let fake = fake().await;
        let prefix = "lost-";
        let op = if layout == "shared" {
            "serviceCreate"
        } else {
            "projectCreate"
        };
        fake.inject(
            Fault::LostReply,
            Scope::Next {
                op: Some(op.into()),
                count: 1,
            },
        );
        let t = TestPool::with_provider(
            &[("POOL_MIN_IDLE", "0"), ("POOL_NAME_PREFIX", prefix)],
            &[],
            |_, tally| provider(&fake, layout, prefix, tally),
        )
        .await;
        let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["created"].as_array().unwrap().len(),
            1,
            "{layout}: {body}"
        );
        assert_eq!(fake.stats().faults_of("LostReply"), 1, "{layout}");
        assert_eq!(
            left(&fake, prefix).len(),
            1,
            "{layout}: {:?}",
            left(&fake, prefix)
        );
        assert_eq!(fake.stats().requests_for(op), 1, "{layout}: created once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_rolls_back_what_the_earlier_steps_made() {
    let fake = fake().await;
    let prefix = "rb-";
    // The deploy commit fails for good (a GraphQL error is not retried).
    fake.inject(
        Fault::GraphqlError,
        Scope::Next {
            op: Some("environmentPatchCommit".into()),
            count: 1,
        },
    );
    let t = TestPool::with_provider(
        &[("POOL_MIN_IDLE", "0"), ("POOL_NAME_PREFIX", prefix)],
        &[],
        |_, tally| provider(&fake, "shared", prefix, tally),
    )
    .await;
    let (_, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(body["errors"][0]["code"], "provider_failed", "{body}");
    assert_eq!(
        body["errors"][0]["message"], "creating: railway railway-deploy failed: request refused",
        "the provider and the step are named: {body}"
    );
    assert!(left(&fake, prefix).is_empty(), "{:?}", left(&fake, prefix));
    assert!(!body.to_string().contains(TOKEN));
    t.tick().await;
    assert_eq!(t.count(Destroying).await + t.count(Starting).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_is_listed_in_one_request_per_page() {
    let fake = fake().await;
    let prefix = "many-";
    let railway = provider(&fake, "shared", prefix, &Tally::default());
    let project = fake.shared_ids().project_id;
    let mut figures = Vec::new();
    let mut made = 0;
    for fleet in [10, 100, 1000] {
        while made < fleet {
            fake.create_service_behind_our_back(&project, &format!("{prefix}{made:05}"));
            made += 1;
        }
        let before = fake.stats().requests_for("project");
        let listed = railway.list(prefix).await.unwrap();
        assert_eq!(listed.len(), fleet);
        figures.push((fleet, fake.stats().requests_for("project") - before));
    }
    // 500 services a page.
    assert_eq!(figures, vec![(10, 1), (100, 1), (1000, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_deployment_crashes_the_claimed_agent_and_orphans_are_deleted() {
    let fake = fake().await;
    let (t, id) = one_claimed(&fake, "cr-", "fragile").await;
    let service = fake
        .services()
        .into_iter()
        .find(|s| s.name == t.name_of(&id))
        .unwrap();
    assert!(fake.kill_process(&service.id).await);
    let orphan = fake.create_service_behind_our_back(&fake.shared_ids().project_id, "cr-orphan");
    let report = t.tick_with(Mode::Reconcile).await;
    assert!(
        report
            .transitions
            .iter()
            .any(|m| m.id == id && m.to == Crashed),
        "{report:?}"
    );
    assert_eq!(
        report.orphans_deleted,
        vec!["cr-orphan".to_string()],
        "{report:?}"
    );
    assert!(fake.service(&orphan).is_none());
}

/// Railway and every tool at the real services' pace (scaled), with CREATE_TIMEOUT_MS shorter
/// than the queue of a large replenish: what is queued or slow must not be taken for abandoned.
async fn slow_outside(create_timeout_ms: &str) -> (Outside, TestPool) {
    let profile = LatencyProfile::for_tests();
    let outside = Outside::start(60).await;
    outside.set_latency(&profile);
    let mut vars = outside.settings();
    set_vars(&mut vars, profile.pool_settings());
    set_vars(
        &mut vars,
        [
            ("POOL_MIN_IDLE", "0"),
            ("POOL_MAX_TOTAL", "40"),
            ("POOL_NAME_PREFIX", "q-"),
            ("CREATE_TIMEOUT_MS", create_timeout_ms),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let settings = Settings::from_vars(vars.clone()).unwrap();
    let overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let t = TestPool::with_provider(&overrides, &[], |_, tally| {
        Arc::new(
            RailwayProvider::from_settings(&settings.providers.railway, &settings.outbound, tally)
                .unwrap(),
        )
    })
    .await;
    (outside, t)
}

async fn interrupted(t: &TestPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT instance_id FROM instance_events
          WHERE from_status = 'starting' AND to_status = 'destroying'
            AND reason LIKE 'creation interrupted%'",
    )
    .fetch_all(&t.pool.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replenish_longer_than_the_create_timeout_loses_nothing_to_the_tick() {
    // 20 creations, 8 at a time, each a few tool calls and Railway calls: the last wave starts
    // well after CREATE_TIMEOUT_MS (15 s for real, scaled) from the reservation.
    let (outside, t) = slow_outside("300").await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let replenish = async {
        let reply = t.post("/api/pool/replenish", json!({"count": 20})).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        reply
    };
    let ticking = async {
        // Other replicas' ticks, all along.
        let mut ticks = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            t.tick().await;
            ticks += 1;
        }
        ticks
    };
    let ((status, body), ticks) = tokio::join!(replenish, ticking);
    assert!(ticks > 1, "the replenish outlasted {ticks} tick(s)");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(interrupted(&t).await, Vec::<String>::new(), "{body}");
    assert_eq!(body["created"].as_array().map(Vec::len), Some(20), "{body}");
    // Each becomes idle, or (a deploy that fails, which a loaded machine sees) is destroyed.
    agentpool_tests::wait_until(std::time::Duration::from_secs(60), || async {
        t.tick().await;
        t.count(Starting).await == 0 && t.count(Destroying).await == 0
    })
    .await;
    let deploys_failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instance_events
          WHERE to_status = 'destroying' AND reason = 'deploy failed'",
    )
    .fetch_one(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(t.count(Idle).await + deploys_failed, 20);
    assert_eq!(interrupted(&t).await, Vec::<String>::new());
    outside.agrees_with(&t.pool.db, "q-").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rows_of_a_killed_creator_are_still_reaped() {
    let (outside, t) = slow_outside("300").await;
    let pool = t.pool.clone();
    let creator = tokio::spawn(async move {
        let batch = creation::reserve(&pool, 12, Actor::Operator, "about to be killed")
            .await
            .unwrap();
        creation::create_all(&pool, batch, &Gate::until(CancellationToken::new())).await
    });
    // Killed mid-batch: some creations done, some half-way, some not started.
    agentpool_tests::wait_until(std::time::Duration::from_secs(30), || async {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_infra")
            .fetch_one(&t.pool.db)
            .await
            .unwrap();
        recorded >= 2
    })
    .await;
    creator.abort();
    assert!(creator.await.unwrap_err().is_cancelled());
    agentpool_tests::wait_until(std::time::Duration::from_secs(60), || async {
        t.tick().await;
        t.count(Starting).await == 0
            && t.count(Destroying).await == 0
            && outside.agrees_with(&t.pool.db, "q-").await.is_ok()
    })
    .await;
    assert!(
        !interrupted(&t).await.is_empty(),
        "the rows the killed creator left without a resource were reaped"
    );
}

/// Seeds 001 and 003: each service built from a repo directory, the build taking its time at the
/// fake (scaled down further than the profile's minutes: the flow is under test, not the wait).
async fn from_source(prefix: &str) -> (RailwayFake, TestPool) {
    let mut profile = LatencyProfile::for_tests();
    profile.railway_build = agentpool_tests::latency::Between {
        low_ms: 100.0,
        high_ms: 300.0,
    };
    let fake = fake().await;
    fake.set_latency(&profile);
    let ids = fake.shared_ids();
    let url = fake.url();
    let mut vars: Vec<(String, String)> = profile.pool_settings();
    set_vars(
        &mut vars,
        [
            ("POOL_PROVIDER", "railway"),
            ("POOL_MIN_IDLE", "0"),
            ("POOL_NAME_PREFIX", prefix),
            ("RAILWAY_API_URL", url.as_str()),
            ("RAILWAY_API_TOKENS", TOKEN),
            ("RAILWAY_PROJECT_ID", ids.project_id.as_str()),
            ("RAILWAY_ENVIRONMENT_ID", ids.environment_id.as_str()),
            ("RAILWAY_PUBLIC_SCHEME", "http"),
            ("RAILWAY_VOLUME_MOUNT", "/data"),
            ("RAILWAY_SOURCE_REPO", "xmtplabs/convos-agent-pool-manager"),
            ("RAILWAY_SOURCE_BRANCH", "staging"),
            ("RAILWAY_SOURCE_ROOT_DIR", "agent"),
            ("OPENCLAW_GIT_REF", "v2026.2.1"),
            // The build's minutes within the creation, the creation within the tick's budget:
            // the settings refuse less (see `Settings::check_across`).
            ("RAILWAY_BUILD_TIMEOUT_MS", "5000"),
            ("CREATE_TIMEOUT_MS", "8000"),
            ("TICK_BUDGET_MS", "8000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let settings = Settings::from_vars(vars.clone()).unwrap();
    let overrides: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(k, _)| k != "POOL_PROVIDER")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let t = TestPool::with_provider(&overrides, &[], |_, tally| {
        Arc::new(
            RailwayProvider::from_settings(&settings.providers.railway, &settings.outbound, tally)
                .unwrap(),
        )
    })
    .await;
    (fake, t)
}

async fn rows(t: &TestPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT id, status FROM instances ORDER BY created_at")
        .fetch_all(&t.pool.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_built_from_source_sees_its_settings_and_becomes_idle() {
    let prefix = "src-";
    let (fake, t) = from_source(prefix).await;
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"].as_array().unwrap().len(), 1, "{body}");
    let [service] = fake.services().try_into().unwrap();
    // One build, from the branch and directory asked, seeing every variable: the build-time
    // OPENCLAW_GIT_REF, and the domain made before it.
    let [build] = service.builds.clone().try_into().unwrap();
    assert_eq!(build.repo, "xmtplabs/convos-agent-pool-manager");
    assert_eq!(build.branch.as_deref(), Some("staging"));
    assert_eq!(build.root_directory.as_deref(), Some("agent"));
    for variable in [
        "OPENCLAW_GIT_REF",
        "OPENCLAW_GATEWAY_TOKEN",
        "RAILWAY_PUBLIC_URL",
    ] {
        assert!(build.variables.iter().any(|v| v == variable), "{build:?}");
    }
    assert_eq!(service.variables["OPENCLAW_GIT_REF"], "v2026.2.1");
    assert_eq!(service.deployments, 1, "{service:?}");
    // Built, then disconnected: a push to the branch rebuilds no agent.
    assert_eq!(service.repo, None, "{service:?}");
    assert_eq!(service.image, None, "{service:?}");
    assert_eq!(fake.volumes().len(), 1);
    agentpool_tests::wait_until(std::time::Duration::from_secs(20), || async {
        t.tick().await;
        t.count(Idle).await == 1
    })
    .await;
    let (status, claimed) = t.claim("built-from-source").await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_is_a_failed_creation_that_leaves_nothing_behind() {
    let prefix = "bf-";
    let (fake, t) = from_source(prefix).await;
    fake.fail_builds(1);
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["created"].as_array().unwrap().is_empty(), "{body}");
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["code"], "provider_failed", "{body}");
    // The creation removed its service and its volume itself.
    assert!(fake.services().is_empty(), "{:?}", fake.services());
    assert!(fake.volumes().is_empty(), "{:?}", fake.volumes());
    let [(id, status)] = rows(&t).await.try_into().unwrap();
    assert_eq!(status, "destroying");
    // The next tick forgets the row, and builds anew (this build passes).
    let report = t.tick().await;
    assert_eq!(report.destroyed, vec![id], "{report:?}");
    assert!(rows(&t).await.is_empty());
    let stats = fake.stats();
    assert_eq!(stats.requests_for("serviceDelete"), 1, "{stats:?}");
    assert_eq!(stats.requests_for("volumeDelete"), 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_claimed_service_survives_reconcile_and_a_real_orphan_does_not() {
    let fake = fake().await;
    let (t, id) = one_claimed(&fake, "rn-", "Trip Planner").await;
    let service_id: String =
        sqlx::query_scalar("SELECT resource_id FROM instance_infra WHERE instance_id = $1")
            .bind(&id)
            .fetch_one(&t.pool.db)
            .await
            .unwrap();
    // The claim's answer did not wait for the rename: the service still has its first name.
    assert_eq!(fake.service(&service_id).unwrap().name, t.name_of(&id));

    // A rename that fails is not the claim's business, and the next tick makes it.
    fake.inject(
        Fault::GraphqlError,
        Scope::Next {
            op: Some("serviceUpdate".into()),
            count: 1,
        },
    );
    let report = t.tick_with(Mode::Reconcile).await;
    assert!(report.renamed.is_empty(), "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.instance_id.as_deref() == Some(id.as_str())),
        "{report:?}"
    );
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(report.renamed, vec![id.clone()], "{report:?}");
    let renamed = format!("rn-trip-planner-{id}");
    assert_eq!(fake.service(&service_id).unwrap().name, renamed);

    let orphan = fake.create_service_behind_our_back(&fake.shared_ids().project_id, "rn-orphan");
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(
        report.orphans_deleted,
        vec!["rn-orphan".to_string()],
        "{report:?}"
    );
    assert!(report.renamed.is_empty(), "renamed once: {report:?}");
    assert!(report.transitions.is_empty(), "{report:?}");
    assert!(fake.service(&orphan).is_none());
    assert_eq!(fake.service(&service_id).unwrap().name, renamed);
    assert_eq!(t.count(Claimed).await, 1);
    // Still the user's, under its new name, through the full tick too.
    let report = t.tick().await;
    assert!(report.transitions.iter().all(|m| m.id != id), "{report:?}");
    assert!(report.orphans_deleted.is_empty(), "{report:?}");
    assert!(fake.service(&service_id).is_some());
}

/// A pool of one Railway agent on `fake`, with names under `prefix`, claimed as `agent`: the
/// pool and the instance's id.
async fn one_claimed(fake: &RailwayFake, prefix: &str, agent: &str) -> (TestPool, String) {
    let t = TestPool::with_provider(
        &[("POOL_MIN_IDLE", "1"), ("POOL_NAME_PREFIX", prefix)],
        &[],
        |_, tally| provider(fake, "shared", prefix, tally),
    )
    .await;
    agentpool_tests::wait_until(std::time::Duration::from_secs(20), || async {
        t.tick().await;
        t.count(Idle).await == 1
    })
    .await;
    let (status, claimed) = t.claim(agent).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let id = claimed["instanceId"].as_str().unwrap().to_string();
    (t, id)
}
