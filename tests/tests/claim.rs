//! The claim path against a real Postgres and real stub agents.

use std::collections::HashSet;

use std::time::Duration;

use agentpool_core::domain::InstanceStatus::*;
use agentpool_tests::{wait_until, TestPool};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn claim_creates_a_conversation_and_returns_seed_000_fields() {
    let t = TestPool::start().await;
    t.fill(3).await;

    let (status, body) = t.claim("tokyo-trip-planner").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "conversationId",
            "gatewayToken",
            "gatewayUrl",
            "instanceId",
            "inviteUrl",
            "joined",
            "qrDataUrl"
        ]
    );
    assert_eq!(body["joined"], false);
    let id = body["instanceId"].as_str().unwrap();
    let token = body["gatewayToken"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(token, t.gateway_token(id).await);

    let instance = t.instance(id).await.unwrap();
    assert_eq!(instance.status, Claimed);
    assert_eq!(instance.agent_name.as_deref(), Some("tokyo-trip-planner"));
    assert_eq!(
        instance.conversation_id.as_deref(),
        body["conversationId"].as_str()
    );
    assert_eq!(instance.invite_url.as_deref(), body["inviteUrl"].as_str());
    assert_eq!(
        Some(body["gatewayUrl"].as_str().unwrap()),
        instance.url.as_deref()
    );
    assert!(instance.claimed_at.is_some());
    let events: Vec<String> = t.events(id).await.into_iter().map(|(_, to)| to).collect();
    assert_eq!(events, ["starting", "idle", "claiming", "claimed"]);

    // The runtime really was provisioned: a second provision is refused by the stub.
    let again = t
        .http
        .post(format!("{}/pool/provision", instance.url.unwrap()))
        .bearer_auth(token)
        .json(&json!({"agentName": "x", "instructions": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

/// Seed 001's reply: the invite as a QR code, a PNG drawn by the server, that scans back to the
/// invite URL.
#[tokio::test]
async fn the_claim_reply_carries_a_qr_code_of_the_invite() {
    use base64::Engine;
    let t = TestPool::start().await;
    t.fill(1).await;
    // Seed 001's client sends `agentId`.
    let (status, body) = t
        .post(
            "/api/pool/claim",
            json!({"agentId": "tokyo-trip-planner", "instructions": "Plan."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let png = body["qrDataUrl"]
        .as_str()
        .and_then(|url| url.strip_prefix("data:image/png;base64,"))
        .unwrap_or_else(|| panic!("a PNG data URL: {body}"));
    let png = base64::engine::general_purpose::STANDARD
        .decode(png)
        .expect("base64");
    let image = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
        .expect("a PNG")
        .to_luma8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        image.get_pixel(x as u32, y as u32)[0]
    });
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    assert_eq!(content, body["inviteUrl"].as_str().unwrap());
}

#[tokio::test]
async fn claim_with_join_url_joins_the_existing_conversation() {
    let t = TestPool::start().await;
    t.fill(1).await;
    let join = "https://dev.convos.org/v2?i=existing-conversation";
    let (status, body) = t
        .post(
            "/api/pool/claim",
            json!({"agentName": "joiner", "instructions": "Join.", "joinUrl": join}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["joined"], true);
    assert_eq!(body["conversationId"], "existing-conversation");
    assert_eq!(body["inviteUrl"], join);
    let instance = t
        .instance(body["instanceId"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(instance.join_url.as_deref(), Some(join));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_claims_on_ten_idle_instances() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "10"), ("POOL_MAX_TOTAL", "10")], &[]).await;
    t.fill(10).await;

    let claims = (0..50).map(|i| {
        let request = t
            .http
            .post(t.url("/api/pool/claim"))
            .bearer_auth(&t.key)
            .json(&json!({"agentName": format!("agent-{i}"), "instructions": "Go."}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body)
        }
    });
    let results = futures::future::join_all(claims).await;

    let ok: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .collect();
    let unavailable: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(ok.len(), 10, "{results:?}");
    assert_eq!(unavailable.len(), 40, "{results:?}");
    for (_, retry_after, body) in &unavailable {
        assert!(retry_after.is_some(), "503 without Retry-After");
        assert_eq!(body["code"], "no_idle_instance");
    }
    let handed_out: HashSet<&str> = ok
        .iter()
        .map(|(_, _, b)| b["instanceId"].as_str().unwrap())
        .collect();
    assert_eq!(handed_out.len(), 10, "an instance was handed out twice");
    let conversations: HashSet<&str> = ok
        .iter()
        .map(|(_, _, b)| b["conversationId"].as_str().unwrap())
        .collect();
    assert_eq!(conversations.len(), 10);
    assert_eq!(t.count(Claimed).await, 10);
    assert_eq!(t.count(Claiming).await, 0);
    assert!(t.double_claims().await.is_empty());
}

#[tokio::test]
async fn a_failing_runtime_is_destroyed_and_the_claim_moves_on() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let idle = t.ids(Idle).await;
    // The two oldest (claimed first) fail; the third answers.
    for id in &idle[..2] {
        t.fault(id, json!({"provision": "fail"})).await;
    }

    let (status, body) = t.claim("survivor").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["instanceId"], idle[2].as_str());
    for id in &idle[..2] {
        let instance = t.instance(id).await.unwrap();
        assert_eq!(
            instance.status, Destroying,
            "a failed runtime must never go back to idle"
        );
        assert!(instance.last_error.unwrap().contains("500"));
    }
    assert_eq!(t.count(Claiming).await, 0);
    assert_eq!(t.count(Claimed).await, 1);

    // The next tick destroys the failed ones and refills.
    let report = t.tick().await;
    assert_eq!(report.destroyed.len(), 2, "{report:?}");
    for id in &idle[..2] {
        assert!(t.instance(id).await.is_none());
        assert!(t.pid_of(id).is_none(), "stub agent of {id} still running");
    }
    assert_eq!(report.created.len(), 3, "{report:?}");
}

#[tokio::test]
async fn every_runtime_failing_answers_502_and_leaves_nothing_claiming() {
    let t = TestPool::with(
        &[("CLAIM_MAX_ATTEMPTS", "2")],
        &[("STUB_FAIL_PROVISION", "true")],
    )
    .await;
    t.fill(3).await;
    let (status, body) = t.claim("doomed").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "runtime_failed");
    assert_eq!(
        t.count(Destroying).await,
        2,
        "two attempts, two instances sent to destroying"
    );
    assert_eq!(t.count(Idle).await, 1);
    assert_eq!(t.count(Claiming).await, 0);
    assert_eq!(t.count(Claimed).await, 0);
}

#[tokio::test]
async fn a_stalled_claimer_cannot_overwrite_the_reaper() {
    // The runtime answers only after another replica's tick has reaped the claim.
    let t = TestPool::start().await;
    t.fill(3).await;
    let id = t.ids(Idle).await.remove(0);
    t.fault(&id, json!({"provisionDelayMs": 1000})).await;

    let claim = tokio::spawn({
        let request = t
            .http
            .post(t.url("/api/pool/claim"))
            .bearer_auth(&t.key)
            .json(&json!({"agentName": "slow", "instructions": "Wait."}));
        async move { request.send().await.unwrap() }
    });
    agentpool_tests::wait_until(std::time::Duration::from_secs(5), || async {
        t.count(Claiming).await == 1
    })
    .await;
    let since = t.instance(&id).await.unwrap().status_since;
    let reaped = agentpool_core::instances::transition(
        &t.pool.db,
        Claiming,
        Destroying,
        &[agentpool_core::instances::Move {
            id: id.clone(),
            since,
            reason: "claim timed out".into(),
        }],
        agentpool_core::domain::Actor::Tick,
    )
    .await
    .unwrap();
    assert_eq!(reaped, std::slice::from_ref(&id));

    // The fenced claim stops there: the reaper decided, and taking another instance would only
    // hold one more.
    let response = claim.await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "runtime_failed", "{body}");
    assert_eq!(t.count(Idle).await, 2, "nothing else taken");
    assert_eq!(
        t.instance(&id).await.unwrap().status,
        Destroying,
        "the reaper's decision stands"
    );
    let to: Vec<String> = t.events(&id).await.into_iter().map(|(_, to)| to).collect();
    assert!(!to.contains(&"claimed".to_string()), "{to:?}");
}

async fn claim_with_key(t: &TestPool, body: Value, key: &str) -> (StatusCode, Value) {
    t.send(
        t.http
            .post(t.url("/api/pool/claim"))
            .bearer_auth(&t.key)
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await
}

/// How many times instances were taken for a claim (`idle → claiming`).
async fn takes(t: &TestPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM instance_events WHERE to_status = 'claiming'")
        .fetch_one(&t.pool.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_ends_by_its_deadline_and_only_then_may_a_retry_take_its_key_over() {
    // Each attempt fits in PROVISION_TIMEOUT_MS, but two of them do not fit in CLAIM_TIMEOUT_MS:
    // a slow runtime that fails, then a slow one that would answer after the claim's deadline.
    let t = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "4"),
            ("CLAIM_TIMEOUT_MS", "5000"),
            ("PROVISION_TIMEOUT_MS", "4000"),
            ("CLAIM_MAX_ATTEMPTS", "3"),
        ],
        &[],
    )
    .await;
    t.fill(4).await;
    let idle = t.ids(Idle).await;
    let (failing, late) = (&idle[0], &idle[1]);
    t.fault(
        failing,
        json!({"provisionDelayMs": 3000, "provision": "fail"}),
    )
    .await;
    t.fault(late, json!({"provisionDelayMs": 3000})).await;
    let body = json!({"agentName": "patient", "instructions": "Wait."});

    let first = claim_with_key(&t, body.clone(), "order-9");
    // The client gives up and retries once the key may be taken over: CLAIM_TIMEOUT_MS after it
    // was written, by the database's clock (or once the first claim forgot it).
    let retry = async {
        let older = || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT created_at < now() - interval '5000 milliseconds' FROM claim_requests
                  WHERE key = 'order-9'",
            )
            .fetch_optional(&t.pool.db)
            .await
            .unwrap()
        };
        wait_until(Duration::from_secs(10), || async {
            older().await.is_some()
        })
        .await;
        wait_until(Duration::from_secs(20), || async {
            older().await.unwrap_or(true)
        })
        .await;
        claim_with_key(&t, body, "order-9").await
    };
    let ((status, answer), (retry_status, retried)) = tokio::join!(first, retry);
    assert_eq!(retry_status, StatusCode::OK, "{retried}");
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["code"], "runtime_failed", "{answer}");

    // The first claim's second runtime call was cut at its deadline, not answered after it.
    let late_row = t.instance(late).await.unwrap();
    assert_eq!(late_row.status, Destroying);
    assert_eq!(
        late_row.last_error.as_deref(),
        Some("runtime timed out"),
        "{late_row:?}"
    );
    // Nothing held after both answers: the failing and the late runtime by the first claim,
    // one by the retry, the fourth untouched.
    assert_eq!(t.count(Claiming).await, 0);
    assert_eq!(takes(&t).await, 3);
    assert_eq!(t.count(Claimed).await, 1);
    assert_eq!(t.count(Idle).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimer_fenced_out_stops_at_once_and_gives_back_the_conversation() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "3")], &[]).await;
    t.fill(3).await;
    let first_idle = t.ids(Idle).await.remove(0);
    t.fault(&first_idle, json!({"provisionDelayMs": 1500}))
        .await;
    let body = json!({
        "agentName": "joiner",
        "instructions": "Join.",
        "joinUrl": "https://convos.example/v2?i=fenced-conversation",
    });
    let first = claim_with_key(&t, body.clone(), "order-11");
    let takeover = async {
        wait_until(Duration::from_secs(10), || async {
            t.count(Claiming).await == 1
        })
        .await;
        // While its runtime answers, the key changes hands (as a takeover does).
        sqlx::query("UPDATE claim_requests SET attempt = gen_random_uuid() WHERE key = 'order-11'")
            .execute(&t.pool.db)
            .await
            .unwrap();
    };
    let ((status, answer), ()) = tokio::join!(first, takeover);
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["code"], "claim_in_progress", "{answer}");
    assert_eq!(takes(&t).await, 1, "nothing more taken once fenced out");
    assert_eq!(t.count(Claiming).await, 0, "what it took is given back");
    assert_eq!(t.instance(&first_idle).await.unwrap().status, Destroying);
    // The conversation's slot is free for the claim that now owns it.
    let (status, reply) = t.post("/api/pool/claim", body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}
