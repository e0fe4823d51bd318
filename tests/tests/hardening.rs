//! Failure paths that lose or strand real agents (issue 7): each test here failed on the code
//! before the fix.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentpool::state::Kicker;
use agentpool_core::claim::{self, ClaimRequest};
use agentpool_core::domain::InstanceStatus::*;
use agentpool_core::gate::CutShort;
use agentpool_core::instances;
use agentpool_core::tick::{self, Mode, TICK_LOCK_KEY};
use agentpool_tests::faults::FaultyProvider;
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::{wait_until, TestPool};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A pool whose provider is wrapped in a [`FaultyProvider`], and a handle on the wrapper.
async fn faulty(overrides: &[(&str, &str)]) -> (TestPool, Arc<FaultyProvider>) {
    let mut handle = None;
    let t = TestPool::with_provider(overrides, &[], |local, _| {
        let faulty = Arc::new(FaultyProvider::new(local));
        handle = Some(faulty.clone());
        faulty
    })
    .await;
    (t, handle.expect("wrapped"))
}

/// Rows in `status` and whether the provider still runs their resources.
async fn resources_alive(t: &TestPool) -> Vec<(String, bool)> {
    let mut alive = Vec::new();
    for status in [Starting, Idle] {
        for id in t.ids(status).await {
            let running = t.pid_of(&id).is_some();
            alive.push((id, running));
        }
    }
    alive
}

// 1. No resource with a row is ever deleted as an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creations_racing_a_slow_listing_are_never_taken_for_orphans() {
    let (t, provider) = faulty(&[("POOL_MAX_TOTAL", "40"), ("POOL_MIN_IDLE", "0")]).await;
    // Each listing takes a while, and what it returns is as of its end: creations that commit
    // their row and start their resource meanwhile are in it.
    provider.slow_lists(Duration::from_millis(150));
    let creating = {
        let t = &t;
        async move {
            for _ in 0..6 {
                let (status, body) = t.post("/api/pool/replenish", json!({"count": 3})).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
    };
    let ticking = {
        let t = &t;
        async move {
            let mut reports = Vec::new();
            for _ in 0..8 {
                reports.push(t.tick_with(Mode::Reconcile).await);
            }
            reports
        }
    };
    let ((), reports) = tokio::join!(creating, ticking);
    for report in &reports {
        assert!(report.orphans_deleted.is_empty(), "{report:?}");
    }
    let alive = resources_alive(&t).await;
    assert_eq!(alive.len(), 18, "{alive:?}");
    assert!(alive.iter().all(|(_, running)| *running), "{alive:?}");
}

/// The backend holding the tick's advisory lock in this test's database.
async fn lock_holder(t: &TestPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks
          WHERE locktype = 'advisory' AND granted
            AND classid::int8 = ($1 >> 32) AND objid::int8 = ($1 & 4294967295)
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(TICK_LOCK_KEY)
    .fetch_optional(&t.pool.db)
    .await
    .unwrap()
}

// 2. A tick that loses its lock stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_loses_its_lock_writes_nothing_more() {
    let (t, provider) = faulty(&[]).await;
    t.fill(3).await;
    let idle = t.ids(Idle).await;
    // Work the tick would do: destroy one (failing its checks) and replace it.
    t.fault(&idle[0], json!({"health": "fail"})).await;
    let events_before = t.event_count().await;
    let checked_before = t.instance(&idle[0]).await.unwrap().last_checked_at;

    provider.hold_lists();
    let running = tokio::spawn({
        let pool = t.pool.clone();
        async move { tick::run(&pool, Mode::Full).await.unwrap() }
    });
    wait_until(Duration::from_secs(10), || async {
        provider.held.load(Ordering::SeqCst) == 1
    })
    .await;
    let holder = lock_holder(&t).await.expect("the tick holds its lock");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holder)
        .fetch_one(&t.pool.db)
        .await
        .unwrap();
    assert!(terminated);
    provider.release_lists();
    let report = running.await.unwrap();

    assert_eq!(report.cut_short, Some(CutShort::LockLost), "{report:?}");
    assert!(
        report.transitions.is_empty() && report.created.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        t.event_count().await,
        events_before,
        "a write after the lock was lost"
    );
    let doomed = t.instance(&idle[0]).await.unwrap();
    assert_eq!((doomed.status, doomed.health_failures), (Idle, 0));
    assert_eq!(
        doomed.last_checked_at, checked_before,
        "health recorded without the lock"
    );

    // The lock went with its connection: the next tick runs and does the work.
    let report = t.tick().await;
    assert!(!report.skipped);
    assert_eq!(report.destroyed, vec![idle[0].clone()], "{report:?}");
}

// 3. Health is judged over time, not over ticks.
#[tokio::test]
async fn a_claimed_agent_restarting_under_traffic_keeps_its_user() {
    let t = TestPool::with(&[("HEALTH_GRACE_MS", "60000")], &[]).await;
    t.fill(3).await;
    let (status, body) = t.claim("busy").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["instanceId"].as_str().unwrap().to_string();

    // Its runtime restarts; claims kick tick after tick meanwhile.
    t.fault(&id, json!({"health": "fail"})).await;
    for _ in 0..5 {
        let report = t.tick().await;
        assert!(report.transitions.iter().all(|m| m.id != id), "{report:?}");
    }
    let agent = t.instance(&id).await.unwrap();
    assert_eq!((agent.status, agent.health_failures), (Claimed, 5));
    t.fault(&id, json!({"health": "ok"})).await;
    t.tick().await;
    let agent = t.instance(&id).await.unwrap();
    assert_eq!((agent.status, agent.health_failures), (Claimed, 0));
}

#[tokio::test]
async fn a_crashed_agent_that_answers_again_goes_back_to_its_user() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let (status, body) = t.claim("phoenix").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["instanceId"].as_str().unwrap().to_string();
    t.fault(&id, json!({"health": "fail"})).await;
    t.tick().await;
    assert_eq!(t.instance(&id).await.unwrap().status, Crashed);

    t.fault(&id, json!({"health": "ok"})).await;
    let report = t.tick().await;
    assert!(
        report
            .transitions
            .iter()
            .any(|m| m.id == id && m.from == Crashed && m.to == Claimed),
        "{report:?}"
    );
    let agent = t.instance(&id).await.unwrap();
    assert_eq!(agent.status, Claimed);
    assert_eq!(
        agent.agent_name.as_deref(),
        Some("phoenix"),
        "still the user's agent"
    );
    let reason: String = sqlx::query_scalar(
        "SELECT reason FROM instance_events WHERE instance_id = $1 AND from_status = 'crashed'",
    )
    .bind(&id)
    .fetch_one(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(reason, "runtime answers again");
}

#[tokio::test]
async fn kicked_ticks_ask_only_starting_runtimes() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let idle = t.ids(Idle).await;
    t.fault(&idle[0], json!({"health": "fail"})).await;
    let report = t.tick_with(Mode::Kick).await;
    assert_eq!(report.health_checked, Some(0), "{report:?}");
    assert!(report.transitions.is_empty(), "{report:?}");

    // A kick replenishes, and brings what it started to idle.
    let (status, _) = t.post("/api/pool/drain", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let report = t.tick_with(Mode::Kick).await;
    assert_eq!(report.created.len(), 1, "{report:?}");
    let report = t.tick_with(Mode::Kick).await;
    assert_eq!(report.health_checked, Some(1), "{report:?}");
    assert_eq!(report.transitions.len(), 1, "{report:?}");
    // The failing idle one waits for the full tick on the interval.
    assert_eq!(t.instance(&idle[0]).await.unwrap().status, Idle);
    let report = t.tick_with(Mode::Full).await;
    assert!(report.destroyed.contains(&idle[0]), "{report:?}");
}

// 4. A provider error is never read as "gone".
#[tokio::test]
async fn an_unreadable_provider_record_destroys_nothing() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let id = t.ids(Idle).await.remove(0);
    let pid = t.pid_of(&id).unwrap();
    // The local provider cannot read this agent's record: an I/O error, not an absence.
    let record = t.local.state_dir().join(format!("{}.json", t.name_of(&id)));
    let kept = record.with_extension("kept");
    std::fs::rename(&record, &kept).unwrap();
    std::fs::create_dir(&record).unwrap();
    for _ in 0..3 {
        let report = t.tick().await;
        assert!(
            report.transitions.is_empty() && report.destroyed.is_empty(),
            "{report:?}"
        );
        assert!(report.orphans_deleted.is_empty(), "{report:?}");
        assert!(
            report.errors.iter().any(|e| e.code == "internal"),
            "{report:?}"
        );
        assert!(
            !serde_json::to_string(&report)
                .unwrap()
                .contains(&t.local.state_dir().display().to_string()),
            "a path in the report: {report:?}"
        );
    }
    let agent = t.instance(&id).await.unwrap();
    assert_eq!((agent.status, agent.absent_since), (Idle, None));
    assert!(agentpool_tests::process_alive(pid));

    std::fs::remove_dir(&record).unwrap();
    std::fs::rename(&kept, &record).unwrap();
    let report = t.tick().await;
    assert!(
        report.errors.is_empty() && report.transitions.is_empty(),
        "{report:?}"
    );
}

#[tokio::test]
async fn while_the_listing_fails_nothing_is_crashed_and_the_pool_still_fills() {
    let (t, provider) = faulty(&[]).await;
    t.fill(3).await;
    let (status, body) = t.claim("steady").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claimed = body["instanceId"].as_str().unwrap().to_string();
    provider.fail_lists(true);
    for _ in 0..3 {
        let report = t.tick().await;
        assert!(
            report.errors.iter().any(|e| e.code == "provider_failed"),
            "{report:?}"
        );
        assert!(
            report.destroyed.is_empty() && report.orphans_deleted.is_empty(),
            "{report:?}"
        );
    }
    assert_eq!(t.instance(&claimed).await.unwrap().status, Claimed);
    // Health checks and creation do not need the listing: the claimed one was replaced.
    assert_eq!(t.count(Idle).await, 3);
    provider.fail_lists(false);
    let report = t.tick().await;
    assert!(
        report.errors.is_empty() && report.transitions.is_empty(),
        "{report:?}"
    );
}

// 5. Interrupted work is recovered.
#[tokio::test]
async fn a_starting_row_whose_creator_died_is_destroyed_after_the_create_timeout() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let orphaned = row_of_a_dead_creator(&t).await;
    let report = t.tick().await;
    assert!(
        report.transitions.is_empty(),
        "its creator may still be at work: {report:?}"
    );
    silent_for_long(&t, &orphaned).await;
    let report = t.tick().await;
    let moved = report
        .transitions
        .iter()
        .find(|m| m.id == orphaned)
        .unwrap_or_else(|| panic!("not recovered: {report:?}"));
    assert_eq!((moved.from, moved.to), (Starting, Destroying));
    assert!(
        moved.reason.starts_with("creation interrupted"),
        "{moved:?}"
    );
    assert!(report.destroyed.contains(&orphaned), "{report:?}");
}

/// A row whose creator reserved it and died before creating anything: its heartbeat stopped.
async fn row_of_a_dead_creator(t: &TestPool) -> String {
    let batch = agentpool_core::creation::reserve(
        &t.pool,
        1,
        agentpool_core::domain::Actor::Operator,
        "creator about to die",
    )
    .await
    .unwrap();
    batch.rows[0].id.clone()
}

/// Dates the row and every creator back past CREATE_TIMEOUT_MS (2 minutes), far short of
/// POOL_STUCK_TIMEOUT_MS (15).
async fn silent_for_long(t: &TestPool, id: &str) {
    sqlx::query("UPDATE instances SET status_since = now() - interval '3 minutes' WHERE id = $1")
        .bind(id)
        .execute(&t.pool.db)
        .await
        .unwrap();
    sqlx::query("UPDATE creators SET alive_at = now() - interval '3 minutes'")
        .execute(&t.pool.db)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replenish_whose_client_goes_away_still_completes() {
    let t = TestPool::with(&[], &[("STUB_START_DELAY_MS", "1000")]).await;
    let impatient = t
        .http
        .post(t.url("/api/pool/replenish"))
        .bearer_auth(&t.key)
        .timeout(Duration::from_millis(200))
        .json(&json!({"count": 2}))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());
    // Both creations run to their end and record their resources.
    wait_until(Duration::from_secs(20), || async {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_infra")
            .fetch_one(&t.pool.db)
            .await
            .unwrap();
        recorded == 2
    })
    .await;
    let starting = t.ids(Starting).await;
    assert_eq!(starting.len(), 2);
    for id in &starting {
        assert!(t.pid_of(id).is_some(), "{id} has no agent");
    }
}

// 6. The tick respects its budget, health checks included.
#[tokio::test]
async fn a_partitioned_fleet_ends_the_tick_by_its_budget_and_the_tail_goes_first_next_time() {
    let t = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "6"),
            ("HEALTH_TIMEOUT_MS", "300"),
            ("TICK_BUDGET_MS", "1000"),
            ("HEALTH_CONCURRENCY", "1"),
            ("HEALTH_GRACE_MS", "600000"),
        ],
        &[],
    )
    .await;
    t.fill(6).await;
    for id in t.ids(Idle).await {
        // Behind a partition: every check times out.
        t.fault(&id, json!({"healthDelayMs": 60000})).await;
    }
    let checked_at = || async {
        sqlx::query_as::<_, (String, Option<chrono::DateTime<chrono::Utc>>)>(
            "SELECT id, last_checked_at FROM instances ORDER BY id",
        )
        .fetch_all(&t.pool.db)
        .await
        .unwrap()
    };
    let before = checked_at().await;
    let report = t.tick().await;
    assert_eq!(report.cut_short, Some(CutShort::Budget), "{report:?}");
    let first = report.health_checked.unwrap();
    assert!(first > 0 && first < 6, "{report:?}");
    assert!(
        report.transitions.is_empty(),
        "no death within the grace: {report:?}"
    );

    let after_first = checked_at().await;
    let changed = |a: &[(String, Option<_>)], b: &[(String, Option<_>)]| -> HashSet<String> {
        a.iter()
            .zip(b)
            .filter(|(x, y)| x.1 != y.1)
            .map(|(x, _)| x.0.clone())
            .collect()
    };
    assert_eq!(changed(&before, &after_first).len(), first);
    // Every answer is recorded (a ready one at fill too): the ones this tick left out are those
    // whose time it did not move.
    let unchecked: HashSet<String> = after_first
        .iter()
        .zip(&before)
        .filter(|((_, at), (_, was))| at == was)
        .map(|((id, _), _)| id.clone())
        .collect();
    assert_eq!(unchecked.len(), 6 - first);
    t.tick().await;
    let second = changed(&after_first, &checked_at().await);
    // Those left out last time are asked first: either all of them were, or only they were.
    assert!(
        unchecked.is_subset(&second) || second.is_subset(&unchecked),
        "left out {unchecked:?}, asked next {second:?}"
    );
}

// 7. Lost updates closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_answer_about_an_instance_claimed_meanwhile_is_not_recorded() {
    let t = TestPool::with(
        &[("POOL_MIN_IDLE", "1"), ("HEALTH_FAILURE_THRESHOLD", "2")],
        &[],
    )
    .await;
    t.fill(1).await;
    let id = t.ids(Idle).await.remove(0);
    // Its check will time out (unreachable): a failure for the idle instance.
    t.fault(&id, json!({"healthDelayMs": 3000})).await;
    let running = tokio::spawn({
        let pool = t.pool.clone();
        async move { tick::run(&pool, Mode::Full).await.unwrap() }
    });
    wait_until(Duration::from_secs(10), || async {
        t.health_in_flight(&id).await > 0
    })
    .await;
    // Meanwhile a user claims it: a new incarnation, healthy.
    let (status, body) = t.claim("fresh").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["instanceId"], id.as_str());
    t.fault(&id, json!({"healthDelayMs": 0})).await;
    let report = running.await.unwrap();
    assert_eq!(report.health_checked, Some(1), "{report:?}");
    let agent = t.instance(&id).await.unwrap();
    assert_eq!(agent.status, Claimed);
    assert_eq!(
        agent.health_failures, 0,
        "the idle instance's failure landed on the claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_about_an_old_incarnation_is_not_applied() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    t.fill(1).await;
    let id = t.ids(Idle).await.remove(0);
    // The tick will find it failing and decide to destroy it.
    t.fault(&id, json!({"health": "fail", "healthDelayMs": 1000}))
        .await;
    let running = tokio::spawn({
        let pool = t.pool.clone();
        async move { tick::run(&pool, Mode::Full).await.unwrap() }
    });
    wait_until(Duration::from_secs(10), || async {
        t.health_in_flight(&id).await > 0
    })
    .await;
    // Meanwhile it leaves idle and comes back (claimed, then recycled): another incarnation.
    sqlx::query("UPDATE instances SET status_since = now() WHERE id = $1")
        .bind(&id)
        .execute(&t.pool.db)
        .await
        .unwrap();
    // The check still fails: the tick decides to destroy the incarnation it saw, not this one.
    let report = running.await.unwrap();
    assert!(report.transitions.is_empty(), "{report:?}");
    assert_eq!(t.instance(&id).await.unwrap().status, Idle);
}

// 8. Claims for the same conversation are idempotent.
async fn claim_body(t: &TestPool, body: Value, key: Option<&str>) -> (StatusCode, Value) {
    let mut request = t
        .http
        .post(t.url("/api/pool/claim"))
        .bearer_auth(&t.key)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    t.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_for_one_conversation_at_once_make_one_agent() {
    let t = TestPool::with(
        &[("POOL_MIN_IDLE", "6")],
        &[("STUB_PROVISION_DELAY_MS", "200")],
    )
    .await;
    t.fill(6).await;
    let body = json!({
        "agentName": "joiner",
        "instructions": "Join.",
        "joinUrl": "https://convos.example/v2?i=shared-conversation",
    });
    let replies =
        futures::future::join_all((0..6).map(|_| claim_body(&t, body.clone(), None))).await;
    let winners: Vec<&Value> = replies
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(winners.len(), 1, "{replies:?}");
    let winner = winners[0]["instanceId"].as_str().unwrap();
    for (status, body) in replies.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "conversation_taken", "{body}");
        assert_eq!(body["instanceId"], winner, "{body}");
    }
    assert_eq!(t.count(Claimed).await, 1);
    assert_eq!(t.count(Idle).await, 5, "losers took nothing");

    // Once that agent is gone, the conversation may have a new one.
    let (status, _) = t.delete(&format!("/api/pool/instances/{winner}")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, reply) = claim_body(&t, body, None).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_returns_the_same_agent_to_every_retry() {
    let t = TestPool::with(
        &[("POOL_MIN_IDLE", "6")],
        &[("STUB_PROVISION_DELAY_MS", "200")],
    )
    .await;
    let body = json!({"agentName": "retrier", "instructions": "Be patient."});

    // Nothing idle yet: a failed claim forgets its key, so a retry may succeed later.
    let (status, reply) = claim_body(&t, body.clone(), Some("order-42")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    t.fill(6).await;

    let replies =
        futures::future::join_all((0..6).map(|_| claim_body(&t, body.clone(), Some("order-42"))))
            .await;
    assert_eq!(t.count(Claimed).await, 1, "{replies:?}");
    let mut first = None;
    for (status, reply) in &replies {
        match *status {
            StatusCode::OK => {
                let id = reply["instanceId"].as_str().unwrap().to_string();
                assert_eq!(first.get_or_insert(id.clone()), &id, "{replies:?}");
            }
            StatusCode::CONFLICT => assert_eq!(reply["code"], "claim_in_progress", "{reply}"),
            other => panic!("{other}: {reply}"),
        }
    }
    // A retry after the fact gets the very same reply.
    let (status, again) = claim_body(&t, body.clone(), Some("order-42")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let winner = replies
        .iter()
        .find(|(s, _)| *s == StatusCode::OK)
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| again.clone());
    assert_eq!(again, winner);
    assert_eq!(t.count(Claimed).await, 1);

    // The same key with another request is refused, not replayed.
    let other = json!({"agentName": "someone-else", "instructions": "Different."});
    let (status, reply) = claim_body(&t, other, Some("order-42")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert_eq!(reply["code"], "idempotency_key_reused");
    let (status, reply) = claim_body(&t, body, Some("has space")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(t.count(Claimed).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_left_pending_by_a_dead_claimer_is_taken_over_after_the_claim_timeout() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "2")], &[]).await;
    t.fill(2).await;
    let body = json!({"agentName": "orphaned", "instructions": "Carry on."});
    let (status, first) = claim_body(&t, body.clone(), Some("order-7")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // The claimer "dies" mid-claim: its key is pending, with no reply, from another attempt.
    let die = |age: &'static str| {
        let t = &t;
        async move {
            sqlx::query(&format!(
                "UPDATE claim_requests SET status = 'pending', reply = NULL, instance_id = NULL,
                        attempt = gen_random_uuid(), created_at = now() - interval '{age}'
                  WHERE key = 'order-7'"
            ))
            .execute(&t.pool.db)
            .await
            .unwrap();
        }
    };
    // Within the claim timeout the claimer may still be working: the retry waits its turn.
    die("0 seconds").await;
    let (status, reply) = claim_body(&t, body.clone(), Some("order-7")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    assert_eq!(reply["code"], "claim_in_progress");
    // Past it, the claimer is dead: the retry takes the key over and gets an agent.
    die("1 hour").await;
    let (status, taken_over) = claim_body(&t, body.clone(), Some("order-7")).await;
    assert_eq!(status, StatusCode::OK, "{taken_over}");
    assert_ne!(taken_over["instanceId"], first["instanceId"]);
    // And from then on, the key replays that reply.
    let (status, again) = claim_body(&t, body, Some("order-7")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, taken_over);
}

// 10. Tick reports, SSE events and API errors carry a code and a short cause, nothing internal.
#[tokio::test]
async fn provider_failures_are_reported_by_code_without_paths() {
    let missing = "/nonexistent/agentpool-private-dir/agentpool";
    let t = TestPool::with_provider(&[], &[], |local, _| {
        let broken = agentpool_core::providers::local::LocalProvider::new(
            local.state_dir().to_path_buf(),
            missing.into(),
            vec![],
        )
        .unwrap();
        Arc::new(broken)
    })
    .await;
    let report = t.tick().await;
    assert_eq!(report.errors.len(), 3, "{report:?}");
    for error in &report.errors {
        assert_eq!(error.code, "provider_failed");
        assert_eq!(error.message, "creating: provider local failed");
        assert!(error.instance_id.is_some());
    }
    let (_, replenished) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(
        replenished["errors"][0]["code"], "provider_failed",
        "{replenished}"
    );
    let stream = t
        .http
        .get(t.url("/api/pool/replenish/stream?count=1"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(stream.contains(r#""status":"fail""#), "{stream}");
    assert!(stream.contains(r#""type":"complete""#), "{stream}");
    for text in [
        serde_json::to_string(&report).unwrap(),
        replenished.to_string(),
        stream,
    ] {
        assert!(!text.contains("nonexistent"), "{text}");
    }
    let (_, status) = t.get("/api/pool/status").await;
    assert!(!status.to_string().contains("nonexistent"), "{status}");
}

// 11. The full tick keeps its interval under load.
async fn full_ticks(t: &TestPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce((SELECT full_ticks FROM tick_stats), 0)")
        .fetch_one(&t.pool.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_ticks_keep_their_interval_under_continuous_claims() {
    // Two replicas, each with its tick loop; creations as slow as Railway's (scaled), runtimes at
    // the real pace (scaled), and claims without a pause, each kicking both replicas.
    let profile = LatencyProfile::for_tests();
    let stub_env = profile.stub_env();
    let stub_env: Vec<(&str, &str)> = stub_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut handle = None;
    let t = TestPool::with_provider(
        &[
            ("POOL_MIN_IDLE", "3"),
            ("POOL_MAX_TOTAL", "12"),
            ("TICK_INTERVAL_MS", "600"),
            ("TICK_BUDGET_MS", "500"),
            ("HEALTH_TIMEOUT_MS", "100"),
        ],
        &stub_env,
        |local, _| {
            let faulty = Arc::new(FaultyProvider::new(local));
            handle = Some(faulty.clone());
            faulty
        },
    )
    .await;
    let faulty = handle.unwrap();
    wait_until(Duration::from_secs(30), || async {
        t.tick().await;
        t.count(Idle).await >= 3
    })
    .await;
    faulty.slow_creates(Duration::from_millis(400));
    let interval = Duration::from_millis(600);
    let stop = CancellationToken::new();
    let kickers: Vec<Kicker> = (0..2).map(|_| Kicker::default()).collect();
    let loops: Vec<_> = kickers
        .iter()
        .map(|kicker| {
            let (kicker, pool, stop) = (kicker.clone(), t.pool.clone(), stop.clone());
            tokio::spawn(async move { kicker.run_loop(pool, Some(interval), stop).await })
        })
        .collect();
    let before = full_ticks(&t).await;
    let started = tokio::time::Instant::now();
    let window = interval * 20;
    let claims = std::sync::atomic::AtomicUsize::new(0);
    let clients = (0..4).map(|i| {
        let (t, kickers, claims) = (&t, &kickers, &claims);
        async move {
            let request =
                ClaimRequest::new(format!("busy-{i}"), "Keep going.".into(), None, None, None)
                    .unwrap();
            while started.elapsed() < window {
                match claim::claim(&t.pool, &request, None).await {
                    Ok(claimed) => {
                        claims.fetch_add(1, Ordering::SeqCst);
                        kickers.iter().for_each(Kicker::kick);
                        let _ = instances::request_destroy(
                            &t.pool.db,
                            &claimed.instance_id,
                            &[Claimed],
                            "claimed",
                            "released",
                        )
                        .await;
                    }
                    // Nothing idle: the pool refills by the kicks; ask again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    });
    futures::future::join_all(clients).await;
    let elapsed = started.elapsed();
    let ran = full_ticks(&t).await - before;
    stop.cancel();
    for l in loops {
        l.await.unwrap();
    }
    let intervals = (elapsed.as_secs_f64() / interval.as_secs_f64()).floor() as i64;
    let claims = claims.into_inner();
    eprintln!("{claims} claims, {ran} full ticks in {intervals} intervals ({elapsed:?})");
    assert!(claims >= 20, "the load was light: {claims} claims");
    // Each replica's timer fires once an interval; one full tick per interval at least, give or
    // take one, must run however busy the kicks keep the pool.
    assert!(
        ran >= intervals - 1,
        "{ran} full ticks in {intervals} intervals under {claims} claims"
    );
}

// 12. The budget bounds the tick: its listings, and its wait for its creations, which go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_ends_within_its_budget_and_one_call_whatever_its_listing_and_creations_do() {
    let (t, faulty) = faulty(&[
        ("POOL_MIN_IDLE", "2"),
        ("TICK_BUDGET_MS", "500"),
        ("HEALTH_TIMEOUT_MS", "100"),
        ("OUTBOUND_TIMEOUT_MS", "300"),
        ("CREATE_TIMEOUT_MS", "2000"),
    ])
    .await;
    t.fill(2).await;
    // The provider's listing never answers.
    faulty.hold_lists();
    let report = t.tick().await;
    assert_eq!(report.cut_short, Some(CutShort::Budget), "{report:?}");
    assert_eq!(t.count(Idle).await, 2, "an unread listing judged nothing");
    faulty.release_lists();

    // Creations that never end: the tick that started them ends anyway and lists them as still
    // creating. Their rows stay `starting`, their creator beating, until the creation's own
    // timeout fails them.
    faulty.slow_creates(Duration::from_secs(3600));
    sqlx::query(
        "UPDATE instances SET status = 'destroying', next_attempt_at = now() + interval '1 hour'
          WHERE status = 'idle'",
    )
    .execute(&t.pool.db)
    .await
    .unwrap();
    let report = t.tick().await;
    assert!(report.created.is_empty(), "{report:?}");
    assert_eq!(report.creating.len(), 2, "{report:?}");
    let creating = t.ids(Starting).await;
    assert_eq!(creating.len(), 2);
    let report = t.tick().await;
    assert!(
        report.transitions.is_empty() && report.creating.is_empty(),
        "slow is not abandoned, and nothing more is wanted: {report:?}"
    );
    wait_until(Duration::from_secs(30), || async {
        t.count(Starting).await == 0
    })
    .await;
    let timed_out: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instance_events
          WHERE instance_id = ANY($1) AND from_status = 'starting' AND to_status = 'destroying'
            AND reason LIKE 'create failed:%'",
    )
    .bind(&creating)
    .fetch_one(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(timed_out, 2);
}

// 13. What a tick decided is written even when its listings took its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_whose_listing_takes_its_budget_still_applies_what_it_decided() {
    let (t, faulty) = faulty(&[
        ("POOL_MIN_IDLE", "2"),
        ("TICK_BUDGET_MS", "500"),
        ("HEALTH_TIMEOUT_MS", "100"),
        ("OUTBOUND_TIMEOUT_MS", "5000"),
    ])
    .await;
    t.fill(2).await;
    let orphaned = row_of_a_dead_creator(&t).await;
    silent_for_long(&t, &orphaned).await;
    // The provider's listing answers, past the whole budget but within one call's timeout (a
    // large Railway project, paged): the tick has its evidence and no budget left.
    faulty.slow_lists(Duration::from_millis(800));
    let report = t.tick().await;
    assert_eq!(report.cut_short, Some(CutShort::Budget), "{report:?}");
    assert!(
        report
            .transitions
            .iter()
            .any(|m| m.id == orphaned && (m.from, m.to) == (Starting, Destroying)),
        "decided and not written: {report:?}"
    );
    assert_eq!(t.ids(Destroying).await, vec![orphaned.clone()]);
    // Its destroy, outside work, waits for a tick with budget.
    assert!(report.destroyed.is_empty(), "{report:?}");
    faulty.slow_lists(Duration::ZERO);
    let report = t.tick().await;
    assert!(report.destroyed.contains(&orphaned), "{report:?}");
}

// 14. A tick whose health checks take its budget still refills the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_whose_health_checks_take_its_budget_still_creates_what_the_pool_lacks() {
    use agentpool_tests::fakes::{Fault, Scope};
    let outside = agentpool_tests::outside::Outside::start(40).await;
    // The tools on their fakes, the runtimes local.
    let tools: Vec<(String, String)> = outside
        .settings()
        .into_iter()
        .filter(|(k, _)| k != "POOL_PROVIDER" && !k.starts_with("RAILWAY_"))
        .collect();
    let mut overrides: Vec<(&str, &str)> = tools
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    overrides.extend([
        ("POOL_MIN_IDLE", "15"),
        ("POOL_MAX_TOTAL", "20"),
        ("TICK_BUDGET_MS", "4000"),
        ("HEALTH_TIMEOUT_MS", "300"),
        ("OUTBOUND_TIMEOUT_MS", "1000"),
        ("HEALTH_INTERVAL_MS", "0"),
        ("HEALTH_CONCURRENCY", "1"),
        ("HEALTH_GRACE_MS", "600000"),
    ]);
    let t = TestPool::with(&overrides, &[]).await;
    t.fill(15).await;
    assert_eq!(t.count(Idle).await, 15);
    // One is let go: the next tick destroys it and reserves its replacement.
    let gone = t.ids(Idle).await.remove(0);
    let (status, body) = t
        .delete(&format!("/api/pool/instances/{gone}/destroy"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The other fourteen answer their checks only at the timeout, one at a time: 4.2 s of checks
    // for a 4 s budget, as a large fleet that only pulls.
    for id in t.ids(Idle).await {
        t.fault(&id, json!({"healthDelayMs": 60000})).await;
    }
    // Each tool call takes 150 ms: a creation's three tools take 450 ms before its runtime.
    for (salt, tool) in outside.tools().into_iter().enumerate() {
        tool.inject(
            Fault::Slow { ms: 150 },
            Scope::Rate {
                per_mille: 1000,
                seed: salt as u64,
            },
        );
    }
    let report = t.tick().await;
    assert!(report.destroyed.contains(&gone), "{report:?}");
    let reserved: Vec<String> = report
        .created
        .iter()
        .chain(&report.creating)
        .cloned()
        .collect();
    assert_eq!(reserved.len(), 1, "its replacement reserved: {report:?}");
    // Its creation ends, within the tick or past it: the row gets its runtime, never given up.
    wait_until(Duration::from_secs(30), || async {
        t.instance(&reserved[0])
            .await
            .is_some_and(|i| i.url.is_some())
    })
    .await;
    assert_eq!(t.ids(Starting).await, reserved);
    assert_eq!(t.count(Destroying).await, 0);
}
