//! Tools against their stateful fakes: provisioned before the compute resource, recorded at once,
//! rolled back when a later step fails, destroyed with the instance, and found as orphans when no
//! row owns them.

use agentpool_core::domain::InstanceStatus::*;
use agentpool_core::tick::{self, Mode};
use agentpool_core::Pool;
use agentpool_tests::fakes::{
    AgentMailConfig, AgentMailFake, Controls, Fault, OpenRouterConfig, OpenRouterFake, Scope,
    TelnyxConfig, TelnyxFake,
};
use agentpool_tests::TestPool;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Tools {
    openrouter: OpenRouterFake,
    agentmail: AgentMailFake,
    telnyx: TelnyxFake,
}

impl Tools {
    async fn start(telnyx: TelnyxConfig) -> Self {
        Self {
            openrouter: OpenRouterFake::start(OpenRouterConfig::default()).await,
            agentmail: AgentMailFake::start(AgentMailConfig::default()).await,
            telnyx: TelnyxFake::start(telnyx).await,
        }
    }

    fn settings(&self) -> Vec<(String, String)> {
        [
            ("OPENROUTER_API_URL", self.openrouter.url()),
            (
                "OPENROUTER_MANAGEMENT_KEY",
                self.openrouter.management_key().to_string(),
            ),
            ("OPENROUTER_KEY_LIMIT", "20".into()),
            // These tests are about every tool made at creation.
            ("TOOLS_AT_CREATION", "all".into()),
            ("AGENTMAIL_API_URL", self.agentmail.url()),
            ("AGENTMAIL_API_KEY", self.agentmail.api_key().to_string()),
            ("AGENTMAIL_DOMAIN", self.agentmail.domain().to_string()),
            ("TELNYX_API_URL", self.telnyx.url()),
            ("TELNYX_API_KEY", self.telnyx.api_key().to_string()),
            (
                "TELNYX_MESSAGING_PROFILE_ID",
                self.telnyx.messaging_profile_id().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![
            self.openrouter.management_key().to_string(),
            self.agentmail.api_key().to_string(),
            self.telnyx.api_key().to_string(),
        ];
        secrets.extend(self.openrouter.keys().into_iter().map(|k| k.key));
        secrets
    }

    /// What the fakes still hold for instances named with `prefix`.
    fn left(&self, prefix: &str) -> (usize, usize, usize) {
        (
            self.openrouter
                .keys()
                .iter()
                .filter(|k| k.name.starts_with(prefix))
                .count(),
            self.agentmail
                .inboxes()
                .iter()
                .filter(|i| i.inbox_id.starts_with(prefix))
                .count(),
            self.telnyx
                .numbers()
                .iter()
                .filter(|n| n.tags.iter().any(|t| t.starts_with(prefix)))
                .count(),
        )
    }
}

async fn pool(tools: &Tools, extra: &[(&str, &str)]) -> TestPool {
    let settings = tools.settings();
    let mut overrides: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    overrides.push(("POOL_MIN_IDLE", "0"));
    overrides.extend_from_slice(extra);
    TestPool::with(&overrides, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_provisioned_recorded_and_destroyed_with_their_instance() {
    let tools = Tools::start(TelnyxConfig::default()).await;
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 2})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(tools.left(&prefix), (2, 2, 2));
    for id in t.ids(Starting).await {
        assert_eq!(
            t.tool_ids(&id).await,
            vec!["email", "openrouter", "sms", "wallet"]
        );
        let key = tools
            .openrouter
            .keys()
            .into_iter()
            .find(|k| k.name == t.name_of(&id))
            .unwrap();
        assert_eq!(key.limit, Some(20.0));
    }
    t.fill(2).await;
    let (status, claimed) = t.claim("tooled").await;
    assert_eq!(status, StatusCode::OK, "{claimed}");

    // Nothing secret in what the API shows.
    let (_, listing) = t.get("/api/pool/status").await;
    let (_, public) = t.get_public("/api/pool/agents").await;
    let (_, info) = t.get_public("/api/pool/info").await;
    for text in [listing.to_string(), public.to_string(), info.to_string()] {
        for secret in tools.secrets() {
            assert!(!text.contains(&secret), "a secret in a reply: {text}");
        }
    }

    let (status, _) = t.post("/api/pool/drain", json!({"count": 10})).await;
    assert_eq!(status, StatusCode::OK);
    let id = claimed["instanceId"].as_str().unwrap();
    let (status, _) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let report = t.tick().await;
    assert_eq!(report.destroyed.len(), 2, "{report:?}");
    assert_eq!(tools.left(&prefix), (0, 0, 0));
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM instance_events WHERE instance_id = $1 AND reason LIKE '% destroyed'",
    )
    .bind(id)
    .fetch_all(&t.pool.db)
    .await
    .unwrap();
    assert!(
        reasons.contains(&"openrouter destroyed".to_string()),
        "{reasons:?}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_services")
        .fetch_one(&t.pool.db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// The SSE stream's events, once it completes.
async fn stream(t: &TestPool, count: u32) -> Vec<Value> {
    let text = t
        .http
        .get(t.url(&format!("/api/pool/replenish/stream?count={count}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_reports_skipped_and_failed_steps_and_rolls_back() {
    // No number for sale: Telnyx fails. Bankr is not configured: skipped.
    let tools = Tools::start(TelnyxConfig {
        available: 0,
        ..TelnyxConfig::default()
    })
    .await;
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    let events = stream(&t, 2).await;
    for n in [1, 2] {
        let steps: Vec<(String, String)> = events
            .iter()
            .filter(|e| e["type"] == "step" && e["instanceNum"] == n)
            .map(|e| {
                (
                    e["step"].as_str().unwrap().to_string(),
                    e["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("bankr", "skip"),
            ("openrouter", "active"),
            ("openrouter", "ok"),
            ("agentmail", "active"),
            ("agentmail", "ok"),
            ("telnyx", "active"),
            ("telnyx", "fail"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(steps, expected, "instance {n}: {events:?}");
    }
    assert!(events.iter().all(|e| e["type"] != "instance"), "{events:?}");
    let complete = events.last().unwrap();
    assert_eq!(
        (
            complete["type"].as_str(),
            complete["created"].as_u64(),
            complete["failed"].as_u64()
        ),
        (Some("complete"), Some(0), Some(2))
    );
    // What the earlier steps made was destroyed at once.
    assert_eq!(tools.left(&prefix), (0, 0, 0));
    t.tick().await;
    assert_eq!(t.count(Destroying).await + t.count(Starting).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_openrouter_reply_leaves_no_stray_key() {
    let tools = Tools::start(TelnyxConfig::default()).await;
    tools.openrouter.inject(
        Fault::LostReply,
        Scope::Next {
            op: Some("POST /api/v1/keys".into()),
            count: 1,
        },
    );
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(tools.openrouter.stats().faults_of("LostReply"), 1);
    // The key whose secret was lost is gone; the one recorded is the one that exists.
    let keys = tools.openrouter.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let recorded: String = sqlx::query_scalar(
        "SELECT resource_id FROM instance_services WHERE tool_id = 'openrouter'",
    )
    .fetch_one(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(keys[0].hash, recorded);
    assert_eq!(tools.left(&prefix), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teardown_cut_off_between_destroying_a_tool_and_forgetting_it_completes() {
    let tools = Tools::start(TelnyxConfig::default()).await;
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    let (status, _) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK);
    t.fill(1).await;
    // A teardown destroyed the key, and its replica died before it deleted the record.
    let key = tools.openrouter.keys().remove(0);
    assert!(tools.openrouter.delete_key_behind_our_back(&key.hash));
    let (status, _) = t.post("/api/pool/drain", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let report = t.tick().await;
    assert_eq!(report.destroyed.len(), 1, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(tools.left(&prefix), (0, 0, 0));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_services")
        .fetch_one(&t.pool.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_resources_no_row_owns_are_deleted_by_the_tick() {
    let tools = Tools::start(TelnyxConfig::default()).await;
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    let (status, _) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let ghost = format!("{prefix}ghost0000001");
    tools.openrouter.create_key_behind_our_back(&ghost);
    tools.agentmail.create_inbox_behind_our_back(&ghost);
    tools.telnyx.order_behind_our_back(&[&ghost]);
    // A creator that died between ordering a number and tagging it: only the order names it.
    let untagged = tools
        .telnyx
        .order_untagged(&format!("{prefix}dead00000001"));
    // Someone else's resources, without our prefix, are none of our business.
    tools
        .openrouter
        .create_key_behind_our_back("someone-elses-key");
    let theirs = tools.telnyx.order_behind_our_back(&[]);
    assert_eq!(tools.left(&prefix), (2, 2, 2));

    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(report.tool_orphans_deleted.len(), 4, "{report:?}");
    assert_eq!(tools.left(&prefix), (1, 1, 1), "the instance's own stay");
    assert_eq!(tools.openrouter.keys().len(), 2);
    let numbers: Vec<String> = tools
        .telnyx
        .numbers()
        .into_iter()
        .map(|n| n.phone_number)
        .collect();
    assert!(!numbers.contains(&untagged.phone_number), "{numbers:?}");
    assert!(numbers.contains(&theirs.phone_number), "{numbers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untagged_number_is_judged_by_its_newest_order() {
    let tools = Tools::start(TelnyxConfig {
        available: 1,
        ..TelnyxConfig::default()
    })
    .await;
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    // One of ours bought the only number and released it; someone else bought it since.
    let ours = tools
        .telnyx
        .order_untagged(&format!("{prefix}gone00000001"));
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(report.tool_orphans_deleted.len(), 1, "{report:?}");
    let theirs = tools.telnyx.order_behind_our_back(&[]);
    assert_eq!(theirs.phone_number, ours.phone_number);

    let report = t.tick_with(Mode::Reconcile).await;
    assert!(report.tool_orphans_deleted.is_empty(), "{report:?}");
    assert_eq!(tools.telnyx.numbers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_never_takes_the_number_another_instance_bought() {
    let tools = Tools::start(TelnyxConfig {
        available: 2,
        ..TelnyxConfig::default()
    })
    .await;
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    let other = format!("{prefix}other0000001");
    tools.telnyx.outbid_next(&other);
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"].as_array().unwrap().len(), 1, "{body}");

    let recorded: Value =
        sqlx::query_scalar("SELECT config FROM instance_services WHERE tool_id = 'sms'")
            .fetch_one(&t.pool.db)
            .await
            .unwrap();
    let ours = recorded["phoneNumber"].as_str().unwrap();
    let numbers = tools.telnyx.numbers();
    assert_eq!(numbers.len(), 2, "{numbers:?}");
    let theirs = numbers.iter().find(|n| n.phone_number != ours);
    assert_eq!(
        theirs.map(|n| n.tags.clone()),
        Some(vec![other]),
        "the other instance keeps its number, and ours is another: {numbers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teardown_whose_tool_is_no_longer_configured_finishes_and_shows_what_it_left() {
    let tools = Tools::start(TelnyxConfig::default()).await;
    let t = pool(&tools, &[]).await;
    let prefix = t.pool.settings.pool.pool_name_prefix.clone();
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    t.fill(1).await;
    let id = t.ids(Idle).await.remove(0);
    let number: String = sqlx::query_scalar(
        "SELECT resource_id FROM instance_services WHERE instance_id = $1 AND tool_id = 'sms'",
    )
    .bind(&id)
    .fetch_one(&t.pool.db)
    .await
    .unwrap();
    assert!(t.pid_of(&id).is_some());

    // The operator removes TELNYX_API_KEY; a replica started so tears the instance down.
    let mut settings = (*t.pool.settings).clone();
    settings.tools.telnyx.telnyx_api_key = None;
    let without = Pool::new(
        t.pool.db.clone(),
        settings,
        t.pool.provider.clone(),
        t.pool.tally.clone(),
    );
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let report = tick::run(&without, Mode::Reconcile).await.unwrap();
    assert!(report.destroyed.contains(&id), "{report:?}");
    let abandoned = format!("sms:{number}");
    assert_eq!(report.tool_resources_abandoned, vec![abandoned.clone()]);
    assert_eq!(report.abandoned, Some(1), "{report:?}");
    assert!(t.instance(&id).await.is_none(), "the teardown finished");
    assert!(t.pid_of(&id).is_none(), "the compute is gone");
    assert_eq!(tools.left(&prefix), (0, 0, 1), "only the number is left");

    // Shown: /metrics, the dashboard.
    let metrics = agentpool_core::overview::metrics(&t.pool).await.unwrap();
    assert!(
        metrics.contains("agentpool_abandoned_tool_resources{tool=\"sms\"} 1"),
        "{metrics}"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(t.url("/admin/login"))
        .form(&[("key", t.key.as_str()), ("next", "/admin")])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let dashboard = http
        .get(t.url("/admin"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        dashboard.contains("Abandoned tool resources"),
        "{dashboard}"
    );
    assert!(dashboard.contains(&number), "{dashboard}");
    assert!(dashboard.contains(&t.name_of(&id)), "{dashboard}");

    // The tool configured again, the next tick deletes it.
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(report.tool_orphans_deleted, vec![abandoned], "{report:?}");
    assert_eq!(report.abandoned, Some(0));
    assert_eq!(tools.left(&prefix), (0, 0, 0));
}
