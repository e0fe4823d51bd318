//! The runtime protocols of the seeds (`RUNTIME_PROTOCOL`: `pool`, `pool-status`, `convos`),
//! each spoken end to end by the pool and by stub agents that serve that protocol's routes only.

use agentpool_core::domain::InstanceStatus::*;
use agentpool_tests::TestPool;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A claim that creates a conversation and one that joins one, through `protocol`; then the
/// runtime itself, asked in its own protocol, says it is bound.
async fn claims_through(protocol: &str, create_path: &str, create_body: Value) {
    let t = TestPool::with(
        &[("RUNTIME_PROTOCOL", protocol), ("POOL_MIN_IDLE", "2")],
        &[],
    )
    .await;
    // Readiness is asked in the protocol too: nothing becomes idle otherwise.
    t.fill(2).await;

    let (status, created) = t.claim("tokyo-trip-planner").await;
    assert_eq!(status, StatusCode::OK, "{protocol}: {created}");
    assert_eq!(created["joined"], false, "{protocol}: {created}");
    let invite = created["inviteUrl"].as_str().expect("an invite URL");
    assert!(invite.starts_with("https://"), "{protocol}: {created}");
    let id = created["instanceId"].as_str().unwrap();
    let instance = t.instance(id).await.unwrap();
    assert_eq!(instance.status, Claimed);
    assert_eq!(
        instance.conversation_id.as_deref(),
        created["conversationId"].as_str()
    );

    let join = "https://dev.convos.org/v2?i=existing-conversation";
    let (status, joined) = t
        .post(
            "/api/pool/claim",
            json!({"agentName": "joiner", "instructions": "Join.", "joinUrl": join}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{protocol}: {joined}");
    assert_eq!(joined["joined"], true);
    assert_eq!(joined["inviteUrl"], join);
    assert_eq!(joined["conversationId"], "existing-conversation");
    assert_eq!(t.count(Claimed).await, 2);

    // The runtime was configured through its protocol: a second conversation is refused.
    let again = t
        .http
        .post(format!("{}{create_path}", instance.url.unwrap()))
        .bearer_auth(t.gateway_token(id).await)
        .json(&create_body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT, "{protocol}");
}

#[tokio::test]
async fn a_claim_creates_and_joins_through_the_pool_protocol() {
    claims_through(
        "pool",
        "/pool/provision",
        json!({"agentName": "x", "instructions": "y"}),
    )
    .await;
}

#[tokio::test]
async fn a_claim_creates_and_joins_through_the_pool_status_protocol() {
    claims_through(
        "pool-status",
        "/pool/provision",
        json!({"agentName": "x", "instructions": "y"}),
    )
    .await;
}

#[tokio::test]
async fn a_claim_creates_and_joins_through_the_convos_protocol() {
    claims_through(
        "convos",
        "/convos/conversation",
        json!({"name": "x", "profileName": "x", "instructions": "y"}),
    )
    .await;
}

async fn refused(t: &TestPool, id: &str) -> u64 {
    t.stub_stats(id).await["refused"].as_u64().unwrap()
}

/// A Convos gateway just booted refuses for a while; the claim tries it again, spaced out, and
/// the instance is handed out rather than thrown away.
#[tokio::test]
async fn a_convos_gateway_refusing_its_first_attempts_is_still_claimed() {
    let t = TestPool::with(
        &[
            ("RUNTIME_PROTOCOL", "convos"),
            ("RUNTIME_RETRY_INTERVAL_MS", "20"),
            ("POOL_MIN_IDLE", "1"),
        ],
        &[("STUB_REFUSE_FIRST", "3")],
    )
    .await;
    t.fill(1).await;
    let (status, body) = t.claim("patient").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["instanceId"].as_str().unwrap();
    assert_eq!(refused(&t, id).await, 3, "three refusals, then the claim");
    assert_eq!(t.count(Claimed).await, 1);
    assert_eq!(t.count(Destroying).await, 0, "no instance thrown away");
}

/// The retries end at the provision's deadline, with the outcome of any failed runtime: 502, the
/// instance destroyed.
#[tokio::test]
async fn a_convos_gateway_refusing_past_the_deadline_fails_like_any_runtime() {
    let t = TestPool::with(
        &[
            ("RUNTIME_PROTOCOL", "convos"),
            ("RUNTIME_RETRY_INTERVAL_MS", "20"),
            ("PROVISION_TIMEOUT_MS", "300"),
            ("CLAIM_MAX_ATTEMPTS", "1"),
            ("POOL_MIN_IDLE", "1"),
        ],
        &[("STUB_REFUSE_FIRST", "1000000")],
    )
    .await;
    t.fill(1).await;
    let id = t.ids(Idle).await.remove(0);
    let (status, body) = t.claim("doomed").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "runtime_failed");
    let instance = t.instance(&id).await.unwrap();
    assert_eq!(instance.status, Destroying);
    assert!(instance.last_error.unwrap().contains("503"));
    assert!(refused(&t, &id).await > 1, "it was tried again");
}

/// Outside Convos a refusal is not retried: provision may have acted, so the instance is
/// destroyed and the next one tried.
#[tokio::test]
async fn a_pool_runtime_refusing_is_not_retried() {
    let t = TestPool::with(
        // Two attempts for two agents: a third would find the pool dry and answer 503.
        &[
            ("RUNTIME_PROTOCOL", "pool"),
            ("POOL_MIN_IDLE", "2"),
            ("CLAIM_MAX_ATTEMPTS", "2"),
        ],
        &[("STUB_REFUSE_FIRST", "1")],
    )
    .await;
    t.fill(2).await;
    let (status, body) = t.claim("once").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(t.count(Destroying).await, 2);
    for id in t.ids(Destroying).await {
        assert_eq!(refused(&t, &id).await, 1);
    }
}

/// A Convos runtime whose status names a conversation is not clean: it never becomes idle, and
/// the tick destroys it.
#[tokio::test]
async fn a_convos_runtime_already_in_a_conversation_is_not_handed_out() {
    let t = TestPool::with(
        &[("RUNTIME_PROTOCOL", "convos"), ("POOL_MIN_IDLE", "2")],
        &[("STUB_CONVERSATION", "someone-elses")],
    )
    .await;
    let first = t.tick().await;
    assert_eq!(first.created.len(), 2, "{first:?}");
    t.tick().await;
    assert_eq!(t.count(Idle).await, 0);
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM instance_events WHERE from_status = 'starting' ORDER BY id",
    )
    .fetch_all(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    for reason in &reasons {
        assert!(
            reason.starts_with("not clean") && reason.contains("someone-elses"),
            "{reasons:?}"
        );
    }
    let (status, body) = t.claim("nobody").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}
