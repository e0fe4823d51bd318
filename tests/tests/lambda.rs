//! The real `agentpool` binary as an AWS Lambda function, against a stand-in for the Lambda
//! Runtime API: API Gateway HTTP events reach the router, EventBridge scheduled events tick.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use agentpool_core::domain::InstanceStatus;
use agentpool_core::instances;
use agentpool_core::providers::local::LocalProvider;
use agentpool_tests::lambda_api::{http_event, scheduled_event, Outcome, RuntimeApi};
use agentpool_tests::{agentpool_bin, clean, Guarded, TestDb};

const KEY: &str = "lambda-test-key-0123456789abcdef";
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

struct KillAgents(LocalProvider);

impl Drop for KillAgents {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

fn response(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Response(value) => value,
        Outcome::Error(error) => panic!("the invocation failed: {error}"),
    }
}

/// The JSON body of an API Gateway response, after checking how it is framed.
fn gateway_body(reply: &Value, status: u16) -> Value {
    assert_eq!(reply["statusCode"], status, "{reply}");
    assert_eq!(reply["isBase64Encoded"], false, "{reply}");
    assert_eq!(
        reply["headers"]["content-type"], "application/json",
        "{reply}"
    );
    serde_json::from_str(reply["body"].as_str().expect("a text body")).expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_serves_http_events_and_ticks_on_a_schedule() {
    let db = TestDb::new().await;
    let agents = tempfile::tempdir().unwrap();
    let _cleanup = KillAgents(
        LocalProvider::new(
            agents.path().to_path_buf(),
            agentpool_bin().to_path_buf(),
            vec![],
        )
        .unwrap(),
    );
    let api = RuntimeApi::start().await;
    let _function = Guarded(
        clean(agentpool_bin())
            .envs(api.function_env())
            .env("DATABASE_URL", &db.url)
            .env("POOL_API_KEY", KEY)
            .env("POOL_MIN_IDLE", "1")
            .env("LOCAL_STATE_DIR", agents.path())
            .env("LOCAL_AGENT_BIN", agentpool_bin())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The first scheduled event creates the one instance the pool needs.
    let first = "2025-01-01T00:00:00Z";
    let report = response(
        api.invoke(scheduled_event(first), ANSWER_WITHIN)
            .await
            .unwrap(),
    );
    assert_eq!(report["skipped"], false, "{report}");
    assert_eq!(report["slot"], first, "{report}");
    assert_eq!(report["created"].as_array().unwrap().len(), 1, "{report}");
    let created = report["created"][0].as_str().unwrap().to_string();

    // EventBridge may deliver an event twice: the second delivery finds its slot taken.
    let again = response(
        api.invoke(scheduled_event(first), ANSWER_WITHIN)
            .await
            .unwrap(),
    );
    assert_eq!(
        again,
        json!({
            "skipped": true, "skippedBecause": "slot_taken", "slot": first,
            "transitions": [], "destroyed": [], "orphansDeleted": [], "toolOrphansDeleted": [],
            "toolResourcesAbandoned": [], "created": [], "creating": [], "renamed": [],
            "errors": []
        })
    );

    // Later slots bring the instance to idle once its agent is ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut minute = 1;
    while instances::counts(&db.pool).await.unwrap()[&InstanceStatus::Idle] < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instance never became idle"
        );
        let slot = format!("2025-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60);
        let report = response(
            api.invoke(scheduled_event(&slot), ANSWER_WITHIN)
                .await
                .unwrap(),
        );
        assert_eq!(report["skipped"], false, "{report}");
        assert!(report["errors"].as_array().unwrap().is_empty(), "{report}");
        minute += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let claim = http_event(
        "POST",
        "/api/pool/claim",
        &[
            ("Authorization", &format!("Bearer {KEY}")),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"agentName":"lambda-agent","instructions":"Be helpful."}"#),
    );
    let reply = response(api.invoke(claim, ANSWER_WITHIN).await.unwrap());
    let claimed = gateway_body(&reply, 200);
    assert_eq!(claimed["instanceId"], created.as_str(), "{claimed}");
    assert!(
        claimed["inviteUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://"),
        "{claimed}"
    );
    assert_eq!(
        claimed["gatewayToken"].as_str().unwrap().len(),
        64,
        "{claimed}"
    );
    assert_eq!(
        instances::get(&db.pool, &created).await.unwrap().status,
        InstanceStatus::Claimed
    );

    let bad_key = http_event(
        "POST",
        "/api/pool/claim",
        &[
            ("Authorization", "Bearer not-the-key-0123456789"),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"agentName":"intruder","instructions":"x"}"#),
    );
    let reply = response(api.invoke(bad_key, ANSWER_WITHIN).await.unwrap());
    assert_eq!(
        gateway_body(&reply, 401),
        json!({"error": "invalid API key", "code": "unauthorized"})
    );

    // Anything that is neither HTTP nor a schedule fails the invocation, saying why.
    let other = json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {}});
    match api.invoke(other, ANSWER_WITHIN).await.unwrap() {
        Outcome::Error(error) => assert!(
            error["errorMessage"]
                .as_str()
                .unwrap()
                .contains("unsupported event: source Some(\"aws.s3\")"),
            "{error}"
        ),
        Outcome::Response(value) => panic!("answered {value}"),
    }
    assert!(api.init_errors().is_empty(), "{:?}", api.init_errors());
}

#[test]
fn lambda_refuses_to_start_without_the_runtime_environment() {
    let output = clean(agentpool_bin())
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
        .env("AWS_LAMBDA_FUNCTION_NAME", "agentpool")
        .env("POOL_API_KEY", KEY)
        .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid setting AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
        "{stderr}"
    );
}
