//! No credential reaches a log line. `agentpool serve` runs at trace level in railway mode with
//! every tool, through creation, a claim, a claim by template with the claimer's own credential
//! (`userConfig`, refused when incomplete), wrong keys, injected faults on every fake and teardown;
//! then every secret that existed on the way is looked for in what it wrote.

use std::time::Duration;

use agentpool_tests::fakes::{Controls, Fault, Scope};
use agentpool_tests::outside::{Outside, RAILWAY_TOKEN};
use agentpool_tests::{agentpool_bin, clean, free_port, wait_until, Guarded, Remote, TestDb};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{json, Value};

const API_KEY: &str = "log-scan-pool-api-key-0123456789";
/// A wrong key a client sends: it must not be echoed either.
const WRONG_KEY: &str = "wrong-guess-0123456789abcdef";
/// Handed to every instance (seeds 001–003), so it passes through creation's logs.
const ANTHROPIC_KEY: &str = "sk-ant-log-scan-0123456789abcdef";
/// A claimer's own credential for a template's `user` tool (`userConfig`).
const USER_KEY: &str = "user-config-bankr-0123456789abcdef";

/// Faults of every kind once on each fake, at the start of the next requests.
fn disturb(fakes: &[&dyn Controls]) {
    for fake in fakes {
        for fault in [
            Fault::ServerError,
            Fault::RateLimited {
                retry_after_secs: 1,
            },
            Fault::Drop,
            Fault::GraphqlError,
            Fault::LostReply,
        ] {
            fake.inject(fault, Scope::Next { op: None, count: 1 });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_appears_in_any_log_line() {
    let outside = Outside::start(50).await;
    let Outside {
        railway,
        openrouter,
        agentmail,
        telnyx,
    } = &outside;
    let fakes = outside.controls();
    let db = TestDb::new().await;
    let port = free_port();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();

    let mut serve = clean(agentpool_bin());
    serve
        .arg("serve")
        .env("RUST_LOG", "trace")
        .env("PORT", port.to_string())
        .env("DATABASE_URL", &db.url)
        .env("POOL_API_KEY", API_KEY)
        .env("INSTANCE_ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("POOL_MIN_IDLE", "0")
        .env("TICK_INTERVAL_MS", "0")
        .env("HEALTH_GRACE_MS", "0")
        .env("OUTBOUND_TIMEOUT_MS", "3000")
        .envs(outside.settings())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut serve = Guarded(serve.spawn().unwrap());
    let remote = Remote::new(format!("http://127.0.0.1:{port}"), API_KEY);
    remote.wait_healthy().await;
    let (base, http) = (&remote.base, &remote.http);

    // Creation through the SSE stream, whose key travels in the query string, under faults.
    disturb(&fakes);
    let stream = http
        .get(format!(
            "{base}/api/pool/replenish/stream?count=2&key={API_KEY}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let events = stream.text().await.unwrap();
    assert!(events.contains(r#""type":"complete""#), "{events}");

    // The pool settles (faults may have failed a creation), then an agent is claimed.
    let mut secrets: Vec<String> = Vec::new();
    wait_until(Duration::from_secs(60), || async {
        remote.post("/api/pool/tick", json!({})).await;
        let counts = remote.counts().await;
        if counts["starting"] == 0 && counts["idle"].as_i64() < Some(2) {
            remote
                .post("/api/pool/replenish", json!({"count": 1}))
                .await;
        }
        counts["idle"].as_i64() >= Some(2) && counts["starting"] == 0
    })
    .await;
    let claim = remote
        .post(
            "/api/pool/claim",
            json!({"agentName": "Scanner", "instructions": "Say hello."}),
        )
        .await;
    assert_eq!(claim.status(), StatusCode::OK);
    // A claim by template with the claimer's credential, refused twice (a missing field, a stray
    // one carrying the credential) and then served.
    let template = remote
        .post(
            "/api/templates",
            json!({"slug": "scanned", "agentName": "Scanned", "instructions": "Say hello.",
                   "tools": [{"id": "crypto", "provisioning": "user"}]}),
        )
        .await;
    assert_eq!(template.status(), StatusCode::CREATED);
    let template_id = template.json::<Value>().await.unwrap()["id"].clone();
    for user_config in [
        json!({}),
        json!({"bankrApiKey": USER_KEY, "stray": USER_KEY}),
    ] {
        let refused = remote
            .post(
                "/api/pool/claim",
                json!({"templateId": template_id, "userConfig": user_config}),
            )
            .await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert!(!refused.text().await.unwrap().contains(USER_KEY));
    }
    let by_template = remote
        .post(
            "/api/pool/claim",
            json!({"templateId": template_id, "userConfig": {"bankrApiKey": USER_KEY}}),
        )
        .await;
    assert_eq!(by_template.status(), StatusCode::OK);
    let by_template = by_template.text().await.unwrap();
    assert!(!by_template.contains(USER_KEY));
    let by_template: Value = serde_json::from_str(&by_template).unwrap();
    assert!(
        railway.services().iter().any(|service| service
            .variables
            .get("BANKR_API_KEY")
            .is_some_and(|value| value == USER_KEY)),
        "the claimer's credential reached its instance"
    );
    let unauthorized = http
        .get(format!("{base}/api/pool/status"))
        .bearer_auth(WRONG_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    let unauthorized = http
        .get(format!(
            "{base}/api/pool/replenish/stream?count=1&key={WRONG_KEY}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    // Two wrong keys in a row earn this client a delay (429 even for the right key): time passes.
    sqlx::query("DELETE FROM admin_login_attempts")
        .execute(&db.pool)
        .await
        .unwrap();

    // Every secret that exists now: the settings' and each instance's.
    secrets.extend(
        [
            API_KEY,
            WRONG_KEY,
            ANTHROPIC_KEY,
            USER_KEY,
            RAILWAY_TOKEN,
            openrouter.management_key(),
            agentmail.api_key(),
            telnyx.api_key(),
        ]
        .map(str::to_string),
    );
    secrets.extend(openrouter.keys().into_iter().map(|k| k.key));
    assert!(
        railway.services().iter().any(|service| service
            .variables
            .iter()
            .any(|(name, value)| name == "ANTHROPIC_API_KEY" && value == ANTHROPIC_KEY)),
        "the instances were handed INSTANCE_ANTHROPIC_API_KEY"
    );
    for service in railway.services() {
        secrets.extend(
            service
                .variables
                .iter()
                .filter(|(name, _)| ["KEY", "TOKEN", "SECRET"].iter().any(|s| name.contains(s)))
                .map(|(_, value)| value.clone()),
        );
    }
    let tokens: Vec<String> = sqlx::query_scalar("SELECT gateway_token FROM instances")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    secrets.extend(tokens);
    assert!(
        secrets.iter().any(|s| s.starts_with("0x")),
        "a wallet key among the secrets: the scan covers it"
    );

    // Teardown under faults.
    disturb(&fakes);
    let drain = remote.post("/api/pool/drain", json!({"count": 10})).await;
    assert_eq!(drain.status(), StatusCode::OK);
    let claimed = claim.json::<Value>().await.unwrap();
    for claimed in [&claimed, &by_template] {
        let id = claimed["instanceId"].as_str().unwrap();
        let killed = http
            .delete(format!("{base}/api/pool/instances/{id}"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(killed.status(), StatusCode::ACCEPTED);
    }
    wait_until(Duration::from_secs(60), || async {
        sqlx::query("UPDATE instances SET next_attempt_at = now() WHERE status = 'destroying'")
            .execute(&db.pool)
            .await
            .unwrap();
        remote.post("/api/pool/tick", json!({})).await;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        rows == 0
    })
    .await;
    kill(Pid::from_raw(serve.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || serve.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exited with {status}");

    let text = std::fs::read_to_string(&log_path).unwrap();
    let injected: u64 = fakes
        .iter()
        .map(|f| f.stats().faults.values().sum::<u64>())
        .sum();
    assert!(injected >= 10, "faults injected: {injected}");
    // The scan reads a log that saw the work and its failures, at every level.
    for expected in [
        "TRACE",
        "DEBUG",
        "retrying",
        "call failed",
        "/api/pool/claim",
    ] {
        assert!(text.contains(expected), "no {expected:?} in the log");
    }
    for secret in &secrets {
        assert!(secret.len() >= 16, "too short to scan for: {secret:?}");
        if let Some(line) = text.lines().find(|line| line.contains(secret.as_str())) {
            panic!("a credential in the log: {line}");
        }
    }
    eprintln!(
        "log scan: {} lines, {} secrets, {injected} faults injected",
        text.lines().count(),
        secrets.len()
    );
}

/// Every span field of a JSON log line (`span` and `spans`), by name.
fn span_fields(line: &Value) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let spans = line["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .chain(line.get("span").cloned());
    for span in spans {
        if let Some(map) = span.as_object() {
            for (k, v) in map {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                fields.push((k.clone(), v));
            }
        }
    }
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request_and_the_instance_on_every_line_about_them() {
    let db = TestDb::new().await;
    let agents = tempfile::tempdir().unwrap();
    let local = agentpool_core::providers::local::LocalProvider::new(
        agents.path().to_path_buf(),
        agentpool_bin().to_path_buf(),
        vec![],
    )
    .unwrap();
    let port = free_port();
    let log_path = agents.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut serve = clean(agentpool_bin());
    serve
        .arg("serve")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("PORT", port.to_string())
        .env("DATABASE_URL", &db.url)
        .env("POOL_API_KEY", API_KEY)
        .env("POOL_MIN_IDLE", "1")
        .env("TICK_INTERVAL_MS", "0")
        .env("LOCAL_STATE_DIR", agents.path())
        .env("LOCAL_AGENT_BIN", agentpool_bin())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut serve = Guarded(serve.spawn().unwrap());
    let remote = Remote::new(format!("http://127.0.0.1:{port}"), API_KEY);
    remote.wait_healthy().await;
    remote.fill(1).await;
    let (base, http) = (&remote.base, &remote.http);
    let claim = http
        .post(format!("{base}/api/pool/claim"))
        .bearer_auth(API_KEY)
        .header("x-request-id", "req-claim-0001")
        .json(&json!({"agentName": "Logged", "instructions": "Say hello."}))
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), StatusCode::OK);
    assert_eq!(claim.headers()["x-request-id"], "req-claim-0001");
    let claimed: Value = claim.json().await.unwrap();
    let id = claimed["instanceId"].as_str().unwrap().to_string();
    kill(Pid::from_raw(serve.0.id() as i32), Signal::SIGTERM).unwrap();
    tokio::task::spawn_blocking(move || serve.0.wait())
        .await
        .unwrap()
        .unwrap();
    local.kill_all();

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() > 5, "{text}");
    let of_claim: Vec<&Value> = lines
        .iter()
        .filter(|line| span_fields(line).contains(&("request_id".into(), "req-claim-0001".into())))
        .collect();
    assert!(
        !of_claim.is_empty(),
        "no line names the claim's request: {text}"
    );
    // The claim's own line ("claimed") names the instance as well as the request.
    let claimed_line = of_claim
        .iter()
        .find(|line| line["fields"]["message"] == "claimed")
        .unwrap_or_else(|| panic!("no \"claimed\" line: {text}"));
    assert!(
        span_fields(claimed_line).contains(&("instance_id".into(), id.clone())),
        "{claimed_line}"
    );
    // The creation of the instance, in a tick, names it too.
    assert!(
        lines.iter().any(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("creat"))
                && span_fields(line).iter().any(|(k, _)| k == "instance_id")
        }),
        "no creation line names its instance: {text}"
    );
}
