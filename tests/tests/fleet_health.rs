//! Health work that follows what changed, not the fleet: a tick asks only the runtimes due
//! (`HEALTH_INTERVAL_MS`), and a runtime may push its own heartbeat instead of being asked.

use std::time::Duration;

use agentpool_core::domain::InstanceStatus::*;
use agentpool_tests::{wait_until, TestPool};
use reqwest::StatusCode;
use serde_json::json;

const HOUR_MS: &str = "3600000";

/// Pretends the pool last heard from `id` two hours ago (by a check and by any sign of life).
async fn forget(t: &TestPool, id: &str) {
    sqlx::query(
        "UPDATE instances SET last_checked_at = now() - interval '2 hours',
                              last_ok_at = now() - interval '2 hours'
          WHERE id = $1",
    )
    .bind(id)
    .execute(&t.pool.db)
    .await
    .expect("forget");
}

async fn asked(t: &TestPool, id: &str) -> u64 {
    t.stub_stats(id).await["healthAsked"]
        .as_u64()
        .expect("healthAsked")
}

/// Whether `id` gave a sign of life in the last minute.
async fn heard_lately(t: &TestPool, id: &str) -> bool {
    sqlx::query_scalar(
        "SELECT last_ok_at > now() - interval '1 minute' FROM instances WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&t.pool.db)
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

async fn beat(t: &TestPool, id: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut request = t
        .http
        .post(t.url(&format!("/api/instances/{id}/heartbeat")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("heartbeat");
    let status = response.status();
    (status, response.json().await.expect("json reply"))
}

#[tokio::test]
async fn a_tick_asks_only_the_due_runtimes() {
    let t = TestPool::with(&[("HEALTH_INTERVAL_MS", HOUR_MS)], &[]).await;
    t.fill(3).await;
    let idle = t.ids(Idle).await;
    let mut before = Vec::new();
    for id in &idle {
        before.push(asked(&t, id).await);
    }

    // Each was asked when it became idle: none is due within the hour.
    let report = t.tick().await;
    assert_eq!(report.health_checked, Some(0), "{report:?}");
    forget(&t, &idle[1]).await;
    let report = t.tick().await;
    assert_eq!(report.health_checked, Some(1), "{report:?}");

    let mut after = Vec::new();
    for id in &idle {
        after.push(asked(&t, id).await);
    }
    assert_eq!(after, [before[0], before[1] + 1, before[2]]);
    // Its answer was recorded: it is not due again.
    let report = t.tick().await;
    assert_eq!(report.health_checked, Some(0), "{report:?}");
    assert_eq!(t.count(Idle).await, 3);
}

#[tokio::test]
async fn a_runtime_that_pushes_is_not_asked_and_one_that_stops_is_asked_and_judged() {
    let t = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "1"),
            ("HEALTH_INTERVAL_MS", "120000"),
            ("RUNTIME_HEARTBEAT_URL", "{base}"),
        ],
        &[("STUB_HEARTBEAT_EVERY_MS", "50")],
    )
    .await;
    t.fill(1).await;
    let id = t.ids(Idle).await.remove(0);

    // Not asked for two hours, but it pushes: its beat is written and it is spared the pull.
    forget(&t, &id).await;
    wait_until(Duration::from_secs(10), || heard_lately(&t, &id)).await;
    let before = asked(&t, &id).await;
    let report = t.tick().await;
    assert_eq!(report.health_checked, Some(0), "{report:?}");
    assert_eq!(asked(&t, &id).await, before);
    assert_eq!(t.instance(&id).await.unwrap().status, Idle);

    // It stops pushing: once due, it is asked again (a beat still on its way may spare it one
    // more tick), and a good answer keeps it.
    t.fault(&id, json!({"heartbeat": "fail"})).await;
    wait_until(Duration::from_secs(10), || async {
        forget(&t, &id).await;
        t.tick().await.health_checked == Some(1)
    })
    .await;
    assert_eq!(t.instance(&id).await.unwrap().status, Idle);
    assert!(asked(&t, &id).await > before);

    // Then it stops answering: judged by the evidence rules (here one failure, no grace).
    t.fault(&id, json!({"health": "fail"})).await;
    forget(&t, &id).await;
    let report = t.tick().await;
    assert_eq!(report.health_checked, Some(1), "{report:?}");
    assert_eq!(report.destroyed, vec![id.clone()], "{report:?}");
}

#[tokio::test]
async fn a_beat_needs_its_own_token_a_known_instance_and_a_running_row() {
    let t = TestPool::with(&[("HEALTH_INTERVAL_MS", "120000")], &[]).await;
    t.fill(2).await;
    let idle = t.ids(Idle).await;
    let token = t.gateway_token(&idle[0]).await;
    let other = t.gateway_token(&idle[1]).await;
    forget(&t, &idle[0]).await;

    let (status, body) = beat(&t, &idle[0], Some(&other)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "bad_runtime_token");
    let (status, body) = beat(&t, &idle[0], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = beat(&t, "nosuchinstance", Some(&token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");

    // A row on its way out: the beat is accepted and changes nothing. It goes in the same write
    // as a good beat, so once that one is written, this one was too.
    let (status, _) = t.delete(&format!("/api/pool/instances/{}", idle[1])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    forget(&t, &idle[1]).await;
    let (status, _) = beat(&t, &idle[1], Some(&other)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = beat(&t, &idle[0], Some(&token)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"ok": true}));
    wait_until(Duration::from_secs(10), || heard_lately(&t, &idle[0])).await;
    let gone = t.instance(&idle[1]).await.unwrap();
    assert_eq!(gone.status, Destroying);
    assert!(!heard_lately(&t, &idle[1]).await);
    // The refused beats wrote nothing either: the good one came after them.
    assert_eq!(t.instance(&idle[0]).await.unwrap().health_failures, 0);
}
