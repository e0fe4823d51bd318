//! The tick: reconcile and replenish, against a real Postgres and real stub agents.

use std::time::Duration;

use agentpool_core::domain::InstanceStatus::*;
use agentpool_core::providers::{CreateSpec, Provider};
use agentpool_core::tick::{self, Mode, TICK_LOCK_KEY};
use agentpool_tests::{wait_until, TestPool};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

#[tokio::test]
async fn an_empty_pool_fills_to_the_minimum() {
    let t = TestPool::start().await;
    let report = t.tick().await;
    assert_eq!(report.created.len(), 3, "{report:?}");
    assert_eq!(t.count(Starting).await, 3);
    let report = t.tick().await;
    assert_eq!(report.transitions.len(), 3, "{report:?}");
    assert_eq!(t.count(Idle).await, 3);
    // Full: nothing more to do.
    let report = t.tick().await;
    assert!(
        report.created.is_empty() && report.transitions.is_empty(),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_claiming_row_left_by_a_dead_replica_is_recovered() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let id = t.ids(Idle).await.remove(0);
    // What a replica that died between taking the row and finishing the claim leaves behind.
    sqlx::query(
        "UPDATE instances SET status = 'claiming', claim_token = gen_random_uuid(),
                status_since = now() - interval '10 minutes' WHERE id = $1",
    )
    .bind(&id)
    .execute(&t.pool.db)
    .await
    .unwrap();

    let report = t.tick().await;
    assert!(
        report
            .transitions
            .iter()
            .any(|m| m.id == id && m.from == Claiming && m.to == Destroying),
        "{report:?}"
    );
    assert_eq!(report.destroyed, std::slice::from_ref(&id));
    assert!(t.instance(&id).await.is_none());
    assert!(t.pid_of(&id).is_none(), "its stub agent still runs");
    assert_eq!(t.count(Claiming).await, 0);
    assert_eq!(report.created.len(), 1, "replaced: {report:?}");
}

#[tokio::test]
async fn a_fresh_claiming_row_is_left_alone() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let id = t.ids(Idle).await.remove(0);
    sqlx::query(
        "UPDATE instances SET status = 'claiming', claim_token = gen_random_uuid() WHERE id = $1",
    )
    .bind(&id)
    .execute(&t.pool.db)
    .await
    .unwrap();
    let report = t.tick().await;
    assert!(report.transitions.is_empty(), "{report:?}");
    assert_eq!(t.instance(&id).await.unwrap().status, Claiming);
}

#[tokio::test]
async fn stuck_starting_instances_are_reaped_and_replaced() {
    // Agents that never become ready.
    let t = TestPool::with(&[], &[("STUB_READY_DELAY_MS", "3600000")]).await;
    t.tick().await;
    let stuck = t.ids(Starting).await;
    assert_eq!(stuck.len(), 3);
    let report = t.tick().await;
    assert!(report.transitions.is_empty(), "not stuck yet: {report:?}");

    sqlx::query("UPDATE instances SET status_since = now() - interval '16 minutes'")
        .execute(&t.pool.db)
        .await
        .unwrap();
    let report = t.tick().await;
    let mut destroyed = report.destroyed.clone();
    destroyed.sort();
    let mut expected = stuck.clone();
    expected.sort();
    assert_eq!(destroyed, expected, "{report:?}");
    assert_eq!(report.created.len(), 3);
    for id in &stuck {
        assert!(t.pid_of(id).is_none(), "stub agent of {id} still runs");
        assert_eq!(t.events(id).await.last().unwrap().1, "deleted");
    }
}

#[tokio::test]
async fn a_dead_idle_instance_is_replaced() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let idle = t.ids(Idle).await;

    // One process dies outright; another stops answering health checks (with no grace period,
    // one failed check condemns it).
    t.kill_agent(&idle[0]).await;
    t.fault(&idle[1], json!({"health": "fail"})).await;
    let report = t.tick().await;
    assert_eq!(report.destroyed, vec![idle[1].clone()], "{report:?}");
    assert_eq!(report.created.len(), 1);
    assert!(t.pid_of(&idle[1]).is_none());
    // A resource missing from one listing may be a blip; missing from a second, it is gone.
    let missing = t.instance(&idle[0]).await.unwrap();
    assert_eq!(missing.status, Idle);
    assert!(missing.absent_since.is_some());
    let report = t.tick().await;
    assert_eq!(report.destroyed, vec![idle[0].clone()], "{report:?}");
    assert_eq!(report.created.len(), 1);
    assert_eq!(t.instance(&idle[2]).await.unwrap().status, Idle);
}

#[tokio::test]
async fn one_failed_health_check_is_not_a_death_when_the_threshold_is_higher() {
    let t = TestPool::with(&[("HEALTH_FAILURE_THRESHOLD", "2")], &[]).await;
    t.fill(3).await;
    let id = t.ids(Idle).await.remove(0);
    t.fault(&id, json!({"health": "fail"})).await;
    t.tick().await;
    let instance = t.instance(&id).await.unwrap();
    assert_eq!((instance.status, instance.health_failures), (Idle, 1));
    t.fault(&id, json!({"health": "ok"})).await;
    t.tick().await;
    assert_eq!(t.instance(&id).await.unwrap().health_failures, 0);
}

#[tokio::test]
async fn a_dead_claimed_instance_crashes_and_is_dismissed() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let (status, body) = t.claim("doomed").await;
    assert_eq!(status, StatusCode::OK);
    let id = body["instanceId"].as_str().unwrap().to_string();

    t.kill_agent(&id).await;
    // A user's agent is asked whatever the listing says (it may serve while its last deployment
    // failed): silent over the grace period (0 here), it is crashed by its health alone, before a
    // second listing could say it is gone.
    let report = t.tick().await;
    assert!(
        report
            .transitions
            .iter()
            .any(|m| m.id == id && m.to == Crashed),
        "{report:?}"
    );
    assert_eq!(t.instance(&id).await.unwrap().status, Crashed);
    // Crashed instances wait for an operator.
    t.tick().await;
    assert_eq!(t.instance(&id).await.unwrap().status, Crashed);

    let idle = t.ids(Idle).await.remove(0);
    let (status, body) = t.delete(&format!("/api/pool/crashed/{idle}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "wrong_state");
    let (status, body) = t.delete("/api/pool/crashed/nosuchinstance").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = t.delete(&format!("/api/pool/crashed/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["previousStatus"], "crashed");
    let report = t.tick().await;
    assert_eq!(report.destroyed, std::slice::from_ref(&id));
    assert!(t.instance(&id).await.is_none());
    let (status, _) = t.delete(&format!("/api/pool/crashed/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn killing_an_instance_destroys_it() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let id = t.ids(Idle).await.remove(0);
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "already destroying: {body}");
    t.tick().await;
    assert!(t.instance(&id).await.is_none());
    assert!(t.pid_of(&id).is_none());
}

#[tokio::test]
async fn a_tick_skips_while_another_holds_the_lock() {
    let t = TestPool::start().await;
    let mut other = sqlx::PgConnection::connect(&t.db.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(TICK_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(held);
    assert!(t.tick().await.skipped);
    let (status, body) = t.post("/api/pool/tick", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["skipped"], true);
    assert_eq!(t.count(Starting).await, 0, "a skipped tick did work");
    tx.rollback().await.unwrap();
    assert!(!t.tick().await.skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ticks_at_once_one_runs_one_skips() {
    let t = TestPool::start().await;
    t.fill(3).await;
    // Slow health answers keep the first tick busy while the second one starts.
    let id = t.ids(Idle).await.remove(0);
    t.fault(&id, json!({"healthDelayMs": 1500})).await;

    let pool = t.pool.clone();
    let first = tokio::spawn(async move { tick::run(&pool, Mode::Full).await.unwrap() });
    wait_until(Duration::from_secs(5), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        )
        .fetch_one(&t.pool.db)
        .await
        .unwrap()
    })
    .await;
    let second = tick::run(&t.pool, Mode::Full).await.unwrap();
    let first = first.await.unwrap();
    assert!(second.skipped);
    assert!(!first.skipped);
}

#[tokio::test]
async fn orphans_are_deleted() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let orphan = format!("{}orphan000001", t.pool.settings.pool.pool_name_prefix);
    t.local
        .create(&CreateSpec {
            name: orphan.clone(),
            env: vec![("OPENCLAW_GATEWAY_TOKEN".into(), "x".repeat(64))],
            progress: std::sync::Arc::new(agentpool_core::creation::Unwatched),
        })
        .await
        .unwrap();
    assert!(t.local.pid_of(&orphan).is_some());
    let (status, body) = t.post("/api/pool/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["orphansDeleted"], json!([orphan]));
    assert!(t.local.pid_of(&orphan).is_none());
    assert_eq!(
        t.count(Idle).await,
        3,
        "reconcile touched healthy instances"
    );
}

#[tokio::test]
async fn replenish_and_drain_counts() {
    let t = TestPool::start().await;
    t.fill(3).await;

    let (status, body) = t.post("/api/pool/replenish", json!({"count": 4})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"].as_array().unwrap().len(), 4);
    assert_eq!(body["counts"]["starting"], 4);
    assert_eq!(body["counts"]["idle"], 3);

    // Without a count: a tick, which brings the new ones to idle.
    let (status, body) = t.post("/api/pool/replenish", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["counts"]["idle"], 7);

    // POOL_MAX_TOTAL (10) caps a direct replenish.
    let (_, body) = t.post("/api/pool/replenish", json!({"count": 5})).await;
    assert_eq!(body["created"].as_array().unwrap().len(), 3, "{body}");
    t.tick().await;
    assert_eq!(t.count(Idle).await, 10);

    let (status, body) = t.post("/api/pool/drain", json!({"count": 8})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["drained"], 8);
    assert_eq!(body["counts"]["idle"], 2);
    assert_eq!(body["counts"]["destroying"], 8);
    let drained: Vec<String> = serde_json::from_value(body["instanceIds"].clone()).unwrap();

    let report = t.tick().await;
    assert_eq!(report.destroyed.len(), 8, "{report:?}");
    assert_eq!(report.created.len(), 1, "back to POOL_MIN_IDLE: {report:?}");
    for id in &drained {
        assert!(t.pid_of(id).is_none());
    }

    // Draining more than there is drains what there is.
    t.tick().await;
    let (_, body) = t.post("/api/pool/drain", json!({"count": 50})).await;
    assert_eq!(body["drained"], 3);
}

/// Shrinking never takes an agent being claimed: the tick decides to destroy the two oldest idle
/// agents, a claim takes the oldest before the plan is carried out, and only the other goes (the
/// move is fenced by the `status_since` it was decided on).
#[tokio::test]
async fn a_claim_racing_a_shrink_keeps_its_agent() {
    use agentpool_core::config::SizingPolicy;
    use agentpool_core::domain::Actor;
    use agentpool_core::gate::Gate;
    use agentpool_core::pool_size::{self, SizeChange};
    use agentpool_core::tick::{execute, plan, snapshot, TickReport};

    let t = TestPool::start().await;
    t.fill(3).await;
    let change = SizeChange {
        min_idle: Some(1),
        max_total: None,
        sizing: Some(SizingPolicy {
            cooldown_seconds: 0,
            ..SizingPolicy::default()
        }),
    };
    pool_size::set(
        &t.pool.db,
        &t.pool.settings.size,
        change,
        Actor::Operator,
        "test",
    )
    .await
    .unwrap();
    let idle = t.ids(Idle).await;

    let gate = Gate::until(tokio_util::sync::CancellationToken::new());
    let mut report = TickReport::default();
    let snap = snapshot::take(&t.pool, Mode::Full, &gate, &mut report)
        .await
        .unwrap();
    let (size, sizing) = pool_size::in_force(&t.pool.db, &t.pool.settings.size)
        .await
        .unwrap();
    let plan = plan::decide(
        &snap,
        &tick::rules(&t.pool.settings, size, sizing, t.pool.provider.can_rename()),
        Mode::Full,
    );
    let shrinking: Vec<&str> = plan.transitions.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(shrinking, [idle[0].as_str(), idle[1].as_str()]);

    let (status, claimed) = t.claim("racer").await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["instanceId"], idle[0].as_str());

    // Rows a full tick reserves are created after it; this test is about the shrink only.
    let mut batch = None;
    execute::run(
        &t.pool,
        &snap,
        plan,
        Mode::Full,
        &gate,
        &mut report,
        &mut batch,
    )
    .await
    .unwrap();
    assert_eq!(report.destroyed, [idle[1].clone()], "{report:?}");
    assert_eq!(t.instance(&idle[0]).await.map(|i| i.status), Some(Claimed));
    assert_eq!(t.count(Idle).await, 1);
}
