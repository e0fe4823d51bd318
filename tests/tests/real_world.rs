//! What a real deployment meets in its first hour (issue 15, section 2): outside services that
//! answer oddly, operators behind proxies, old replicas serving during a migration. Each test here
//! failed on the code before its fix.

use std::sync::Arc;
use std::time::Duration;

use agentpool_core::domain::InstanceStatus::*;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::tick::{self, slots, Mode};
use agentpool_core::Settings;
use agentpool_tests::fakes::{Controls, FakeConfig, Fault, RailwayFake, Scope};
use agentpool_tests::{wait_until, TestPool};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "railway-real-world-token-0123456789";

async fn railway_fake() -> RailwayFake {
    RailwayFake::start(FakeConfig {
        tokens: vec![TOKEN.into()],
        ..FakeConfig::default()
    })
    .await
}

fn railway(fake: &RailwayFake, layout: &str, prefix: &str, extra: &[(&str, &str)]) -> Settings {
    let ids = fake.shared_ids();
    let url = fake.url();
    let mut vars: Vec<(String, String)> = [
        ("POOL_PROVIDER", "railway"),
        ("POOL_NAME_PREFIX", prefix),
        ("RAILWAY_API_URL", url.as_str()),
        ("RAILWAY_API_TOKENS", TOKEN),
        ("RAILWAY_LAYOUT", layout),
        ("RAILWAY_PROJECT_ID", ids.project_id.as_str()),
        ("RAILWAY_ENVIRONMENT_ID", ids.environment_id.as_str()),
        ("RAILWAY_TEAM_ID", ids.workspace_id.as_str()),
        ("RAILWAY_PUBLIC_SCHEME", "http"),
        ("OUTBOUND_TIMEOUT_MS", "1000"),
        // Every runtime every tick: these tests tick by hand, not on the interval.
        ("HEALTH_INTERVAL_MS", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    Settings::from_vars(vars).unwrap()
}

/// A pool on the Railway fake: `TestPool`'s settings, the provider built from `settings`.
async fn railway_pool(settings: Settings, prefix: &str, overrides: &[(&str, &str)]) -> TestPool {
    let mut all = vec![("POOL_MIN_IDLE", "0"), ("POOL_NAME_PREFIX", prefix)];
    all.extend_from_slice(overrides);
    TestPool::with_provider(&all, &[], |_, tally| {
        Arc::new(
            RailwayProvider::from_settings(&settings.providers.railway, &settings.outbound, tally)
                .unwrap(),
        )
    })
    .await
}

/// Names of ours the fake still holds (services and projects), with repeats.
fn ours(fake: &RailwayFake, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fake
        .services()
        .into_iter()
        .map(|s| s.name)
        .chain(fake.projects().into_iter().map(|p| p.name))
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

// 13. A claim that finds the pool empty on a later attempt: 503, not 502.
#[tokio::test]
async fn a_claim_that_runs_the_pool_dry_answers_503_no_idle_instance() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1"), ("CLAIM_MAX_ATTEMPTS", "3")], &[]).await;
    t.fill(1).await;
    let id = t.ids(Idle).await.remove(0);
    t.fault(&id, json!({"provision": "fail"})).await;
    let response = t
        .http
        .post(t.url("/api/pool/claim"))
        .bearer_auth(&t.key)
        .json(&json!({"agentName": "unlucky", "instructions": "Wait."}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response.headers().get("retry-after").cloned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "no_idle_instance", "{body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    assert_eq!(t.instance(&id).await.unwrap().status, Destroying);
}

// 13. A tick cut short is not a success: not in /metrics, not `ran` in `tick_runs`.
#[tokio::test]
async fn a_tick_cut_short_is_not_recorded_as_a_success() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    t.fill(1).await;
    let ticks = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(max(ticks), 0) FROM tick_stats")
            .fetch_one(&t.pool.db)
            .await
            .unwrap()
    };
    let before = ticks().await;
    assert!(before > 0, "whole ticks count");
    // Shutting down: the tick stops before its health checks.
    let stopped = CancellationToken::new();
    stopped.cancel();
    let report = tick::run_until(&t.pool, Mode::Full, &stopped)
        .await
        .unwrap();
    assert!(report.cut_short.is_some(), "{report:?}");
    assert_eq!(
        ticks().await,
        before,
        "a tick cut short counted as a success"
    );

    let slot = chrono::Utc::now();
    let report = slots::run(&t.pool, slot, "test", &stopped).await.unwrap();
    assert!(report.cut_short.is_some(), "{report:?}");
    let outcome: Option<String> =
        sqlx::query_scalar("SELECT outcome FROM tick_runs WHERE slot = $1")
            .bind(slot)
            .fetch_one(&t.pool.db)
            .await
            .unwrap();
    assert_eq!(outcome.as_deref(), Some("cut_short"));
    assert_eq!(ticks().await, before);

    let report = t.tick().await;
    assert!(report.cut_short.is_none(), "{report:?}");
    assert_eq!(ticks().await, before + 1);
}

// 13. A create whose answer is late is never sent twice: the first may still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_railway_create_never_leaves_a_second_service() {
    for (layout, op) in [("shared", "serviceCreate"), ("project", "projectCreate")] {
        let fake = railway_fake().await;
        let prefix = "slow-";
        // Answered after the client gave up (OUTBOUND_TIMEOUT_MS is 1000), and carried out then.
        fake.inject(
            Fault::Slow { ms: 2500 },
            Scope::Next {
                op: Some(op.into()),
                count: 1,
            },
        );
        let t = railway_pool(railway(&fake, layout, prefix, &[]), prefix, &[]).await;
        let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
        assert_eq!(status, StatusCode::OK, "{layout}: {body}");
        // The late create lands.
        wait_until(Duration::from_secs(10), || async {
            !ours(&fake, prefix).is_empty()
        })
        .await;
        assert_eq!(
            fake.stats().requests_for(op),
            1,
            "{layout}: a create sent twice: {:?}",
            ours(&fake, prefix)
        );
        // What the late create made is found by the row's name and destroyed with it.
        wait_until(Duration::from_secs(30), || async {
            t.tick().await;
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
                .fetch_one(&t.pool.db)
                .await
                .unwrap();
            rows == 0 && ours(&fake, prefix).is_empty()
        })
        .await;
    }
}

/// Inserts a row directly, `age` old, for listings that need many rows.
async fn insert_row(t: &TestPool, id: &str, status: &str, agent: Option<&str>, age_s: i64) {
    sqlx::query(
        "INSERT INTO instances (id, name, status, gateway_token, agent_name, created_at, status_since)
         VALUES ($1, 'ap-' || $1, $2, md5(random()::text) || md5(random()::text), $3,
                 now() - make_interval(secs => $4), now())",
    )
    .bind(id)
    .bind(status)
    .bind(agent)
    .bind(age_s as f64)
    .execute(&t.pool.db)
    .await
    .unwrap();
}

// 13. The public listing's cursor reveals no instance id; the public page finds live agents
// wherever they are in the table.
#[tokio::test]
async fn the_public_listing_hides_ids_and_finds_live_agents_anywhere() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    let mut ids = Vec::new();
    for n in 0..210 {
        let id = format!("idle{n:08}");
        insert_row(&t, &id, "idle", None, 1000 - n).await;
        ids.push(id);
    }
    // The newest row: after the first 200 in the table's order.
    insert_row(&t, "livelate0001", "claimed", Some("found-anywhere"), 1).await;
    ids.push("livelate0001".into());

    // Page through the public listing: no cursor names an id.
    let mut after: Option<String> = None;
    let mut seen = 0;
    loop {
        let path = match &after {
            Some(cursor) => format!("/api/pool/agents?limit=50&after={cursor}"),
            None => "/api/pool/agents?limit=50".to_string(),
        };
        let (status, page) = t.get_public(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for group in ["idle", "claimed"] {
            seen += page[group].as_array().map_or(0, Vec::len);
        }
        let Some(cursor) = page["nextCursor"].as_str() else {
            break;
        };
        let decoded = String::from_utf8(hex::decode(cursor).unwrap()).unwrap();
        for id in &ids {
            assert!(
                !decoded.contains(id.as_str()),
                "cursor {decoded} names {id}"
            );
        }
        after = Some(cursor.to_string());
    }
    assert_eq!(seen, ids.len(), "every row once");

    // Live agents only, wherever they are.
    let (status, page) = t
        .get_public("/api/pool/agents?limit=200&status=claiming,claimed,crashed")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["claimed"][0]["agentName"], "found-anywhere", "{page}");
    assert_eq!(page["idle"].as_array().unwrap().len(), 0);
    let html = t
        .http
        .get(t.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("found-anywhere"), "the public page misses it");
    let (status, body) = t.get_public("/api/pool/agents?status=alive").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

// 11. A volume outlives its service at Railway: a rollback and a teardown by name delete it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_railway_volume_is_left_by_a_rollback_or_a_teardown_by_name() {
    // The commit fails after the volume was made; the volume's own reply is lost.
    for (op, fault) in [
        ("environmentPatchCommit", Fault::GraphqlError),
        ("volumeCreate", Fault::LostReply),
    ] {
        let fake = railway_fake().await;
        let prefix = "vol-";
        let settings = railway(
            &fake,
            "shared",
            prefix,
            &[("RAILWAY_VOLUME_MOUNT", "/data")],
        );
        fake.inject(
            fault,
            Scope::Next {
                op: Some(op.into()),
                count: 1,
            },
        );
        let t = railway_pool(settings, prefix, &[]).await;
        let (_, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
        assert_eq!(body["errors"][0]["code"], "provider_failed", "{op}: {body}");
        assert_eq!(fake.stats().requests_for("volumeCreate"), 1, "{op}");
        assert!(
            ours(&fake, prefix).is_empty(),
            "{op}: {:?}",
            ours(&fake, prefix)
        );
        assert!(fake.volumes().is_empty(), "{op}: {:?}", fake.volumes());
    }

    // A creation whose creator died before recording its service: destroyed by name.
    let fake = railway_fake().await;
    let prefix = "byname-";
    let settings = railway(
        &fake,
        "shared",
        prefix,
        &[("RAILWAY_VOLUME_MOUNT", "/data")],
    );
    let t = railway_pool(settings, prefix, &[]).await;
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.volumes().len(), 1);
    sqlx::query("DELETE FROM instance_infra")
        .execute(&t.pool.db)
        .await
        .unwrap();
    sqlx::query("UPDATE instances SET status = 'destroying', status_since = now()")
        .execute(&t.pool.db)
        .await
        .unwrap();
    let report = t.tick().await;
    assert_eq!(report.destroyed.len(), 1, "{report:?}");
    assert!(ours(&fake, prefix).is_empty(), "{:?}", ours(&fake, prefix));
    assert!(fake.volumes().is_empty(), "{:?}", fake.volumes());
}

/// Everything logged while it is alive, at every level, on this thread (a `#[tokio::test]`
/// runtime runs every task of the test, the API server's too, on it).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

// 10. An outside error that quotes the request back reaches the log with every secret blanked.
#[tokio::test]
async fn an_outside_error_quoting_the_request_logs_no_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let outside = agentpool_tests::outside::Outside::start(5).await;
    let prefix = "echo-";
    let mut vars = outside.settings();
    vars.push(("POOL_NAME_PREFIX".into(), prefix.into()));
    vars.push(("OUTBOUND_TIMEOUT_MS".into(), "2000".into()));
    let settings = Settings::from_vars(vars.clone()).unwrap();
    let mut overrides: Vec<(&str, &str)> =
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    overrides.push(("POOL_MIN_IDLE", "0"));
    let t = TestPool::with_provider(&overrides, &[], |_, tally| {
        Arc::new(
            RailwayProvider::from_settings(&settings.providers.railway, &settings.outbound, tally)
                .unwrap(),
        )
    })
    .await;

    // The deploy commit carries the gateway token and every tool's key; Railway quotes it.
    outside.railway.inject(
        Fault::EchoError,
        Scope::Next {
            op: Some("environmentPatchCommit".into()),
            count: 1,
        },
    );
    let (_, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(body["errors"][0]["code"], "provider_failed", "{body}");
    assert_eq!(outside.railway.stats().faults_of("EchoError"), 1);
    let token: String = sqlx::query_scalar("SELECT gateway_token FROM instances")
        .fetch_one(&t.pool.db)
        .await
        .unwrap();

    let text = captured.text();
    for line in text.lines() {
        assert!(
            !line.contains(&token),
            "the gateway token in the log: {line}"
        );
        assert!(
            !line.contains(agentpool_tests::outside::RAILWAY_TOKEN),
            "the Railway token in the log: {line}"
        );
        // OpenRouter's keys are `sk-or-v1-` and 64 hex digits (listings show `sk-or-v1-abc...`).
        for (at, _) in line.match_indices("sk-or-v1-") {
            let rest = &line[at + "sk-or-v1-".len()..];
            let hex = rest.chars().take_while(char::is_ascii_hexdigit).count();
            assert!(hex < 16, "an OpenRouter key in the log: {line}");
        }
    }
    assert!(text.contains("graphql error"), "the message is logged");
    assert!(text.contains("Invalid input"), "what Railway said is kept");
    assert!(text.contains("[redacted]"), "what was sent is blanked");
}

// 7. A user's agent that answers is served, whatever its last deployment says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_agent_comes_back_whatever_its_last_deployment_says() {
    let fake = railway_fake().await;
    let prefix = "back-";
    let settings = railway(&fake, "shared", prefix, &[]);
    let t = railway_pool(settings, prefix, &[("POOL_MIN_IDLE", "1")]).await;
    wait_until(Duration::from_secs(20), || async {
        t.tick().await;
        t.count(Idle).await == 1
    })
    .await;
    let (status, claimed) = t.claim("steadfast").await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let id = claimed["instanceId"].as_str().unwrap().to_string();
    let service = fake
        .services()
        .into_iter()
        .find(|s| s.name == t.name_of(&id))
        .unwrap();
    // A redeploy failed; the deployment before it still serves.
    assert!(fake.set_status(&service.id, agentpool_tests::fakes::railway::FAILED));
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(t.instance(&id).await.unwrap().status, Claimed, "{report:?}");

    // Silent as well: crashed. Answering again: back to its user, the deployment still FAILED.
    t.fault(&id, json!({"health": "fail"})).await;
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(t.instance(&id).await.unwrap().status, Crashed, "{report:?}");
    t.fault(&id, json!({"health": "ok"})).await;
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(t.instance(&id).await.unwrap().status, Claimed, "{report:?}");
}

/// A pool in railway mode with every tool, on the fakes of `outside`, `n` instances idle.
async fn outside_pool(
    outside: &agentpool_tests::outside::Outside,
    prefix: &str,
    n: i64,
) -> TestPool {
    let mut vars = outside.settings();
    vars.push(("POOL_NAME_PREFIX".into(), prefix.into()));
    vars.push(("OUTBOUND_TIMEOUT_MS".into(), "2000".into()));
    TestPool::on_railway(&vars, n).await
}

/// Two reconciling ticks, each after `disturb` (absence is believed from two listings; the tests'
/// grace period is 0), after which every instance idle before still is.
async fn two_listings(t: &TestPool, disturb: impl Fn()) {
    let idle = t.ids(Idle).await;
    let mut reports = Vec::new();
    for _ in 0..2 {
        disturb();
        reports.push(t.tick_with(Mode::Reconcile).await);
    }
    let still = t.ids(Idle).await;
    let lost: Vec<String> = idle.into_iter().filter(|id| !still.contains(id)).collect();
    assert!(lost.is_empty(), "{lost:?} lost: {reports:?}");
}

// 6. An implausible provider listing is not evidence of absence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_implausible_railway_listing_destroys_nothing() {
    let fake = railway_fake().await;
    let prefix = "list-";
    let settings = railway(&fake, "shared", prefix, &[]);
    let t = railway_pool(settings, prefix, &[("POOL_MIN_IDLE", "2")]).await;
    wait_until(Duration::from_secs(30), || async {
        t.tick().await;
        t.count(Idle).await == 2
    })
    .await;
    for fault in [Fault::EmptyPage, Fault::NullData, Fault::ErrorIn200] {
        two_listings(&t, || {
            fake.inject(
                fault.clone(),
                Scope::Next {
                    op: Some("project".into()),
                    count: 1,
                },
            )
        })
        .await;
    }
    // What really goes is still found: one service deleted behind the pool's back.
    let id = t.ids(Idle).await.remove(0);
    let service = fake
        .services()
        .into_iter()
        .find(|s| s.name == t.name_of(&id))
        .unwrap();
    assert!(fake.delete_service_behind_our_back(&service.id));
    wait_until(Duration::from_secs(10), || async {
        t.tick_with(Mode::Reconcile).await;
        t.instance(&id).await.is_none_or(|i| i.status != Idle)
    })
    .await;
}

// 6. A tool listing that shifts while it is read, or comes back empty, loses no live resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifting_or_empty_tool_listing_loses_no_agent() {
    let outside = agentpool_tests::outside::Outside::start(10).await;
    let t = outside_pool(&outside, "shift-", 3).await;
    for (fake, op) in [
        (&outside.openrouter as &dyn Controls, "GET /api/v1/keys"),
        (&outside.telnyx as &dyn Controls, "GET /v2/phone_numbers"),
    ] {
        for fault in [Fault::ShiftedPage { by: 1 }, Fault::EmptyPage] {
            two_listings(&t, || {
                fake.inject(
                    fault.clone(),
                    Scope::Next {
                        op: Some(op.into()),
                        count: 1,
                    },
                )
            })
            .await;
        }
        assert_eq!(fake.stats().faults_of("ShiftedPage"), 2, "{op}");
        assert_eq!(fake.stats().faults_of("EmptyPage"), 2, "{op}");
    }
    outside.agrees_with(&t.pool.db, "shift-").await.unwrap();
}

// Found by the failpoint sweep: a shifted key listing showed an orphan key on two pages, and the
// tick deleted it twice and reported it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_a_shifted_listing_shows_twice_is_deleted_once() {
    let outside = agentpool_tests::outside::Outside::start(10).await;
    let t = outside_pool(&outside, "twice-", 0).await;
    outside.openrouter.create_key_behind_our_back("twice-first");
    let second = outside
        .openrouter
        .create_key_behind_our_back("twice-second");
    // The first page starts one later ([second]), the next at offset 1 ([second] again).
    outside.openrouter.inject(
        Fault::ShiftedPage { by: 1 },
        Scope::Next {
            op: Some("GET /api/v1/keys".into()),
            count: 1,
        },
    );
    let report = t.tick_with(Mode::Reconcile).await;
    assert_eq!(
        report.tool_orphans_deleted,
        vec![format!("openrouter:{}", second.hash)],
        "{report:?}"
    );
    assert_eq!(
        outside
            .openrouter
            .stats()
            .requests_for("DELETE /api/v1/keys/{hash}"),
        1
    );
}

/// `GET /api/pool/status` with `key`, through a proxy that says the client is `forwarded`.
async fn status_as(t: &TestPool, key: &str, forwarded: &str) -> reqwest::Response {
    t.http
        .get(t.url("/api/pool/status"))
        .bearer_auth(key)
        .header("x-forwarded-for", forwarded)
        .send()
        .await
        .unwrap()
}

// 9. Behind a trusted proxy, someone else's wrong keys lock nobody else out; wrong Bearer keys are
// throttled; a forwarded address is believed only from a trusted proxy.
#[tokio::test]
async fn wrong_bearer_keys_are_throttled_per_client_behind_a_trusted_proxy() {
    let t = TestPool::with(
        &[("POOL_MIN_IDLE", "0"), ("TRUSTED_PROXIES", "127.0.0.1")],
        &[],
    )
    .await;
    let wrong = "wrong-key-0123456789abcdef";
    // The proxy appends the address it saw; what comes before it is the client's to forge.
    let attacker = "198.51.100.1, 203.0.113.9";
    for _ in 0..2 {
        let refused = status_as(&t, wrong, attacker).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
    let blocked = status_as(&t, wrong, attacker).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(blocked.headers().contains_key("retry-after"));
    let body: Value = blocked.json().await.unwrap();
    assert_eq!(body["code"], "too_many_wrong_keys", "{body}");
    // Even the right key, from the client that is waiting.
    let right = status_as(&t, &t.key, "203.0.113.9").await;
    assert_eq!(right.status(), StatusCode::TOO_MANY_REQUESTS);
    // The operator behind the same proxy, and the one it says the attacker forged, get in.
    for operator in ["198.51.100.1", "192.0.2.44"] {
        let ok = status_as(&t, &t.key, operator).await;
        assert_eq!(ok.status(), StatusCode::OK, "{operator}");
    }
    let counted: Vec<String> = sqlx::query_scalar("SELECT client FROM admin_login_attempts")
        .fetch_all(&t.pool.db)
        .await
        .unwrap();
    assert_eq!(counted, vec!["203.0.113.9".to_string()]);

    // Without TRUSTED_PROXIES the header is the client's own word: not believed.
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    for _ in 0..2 {
        status_as(&t, wrong, "203.0.113.9").await;
    }
    let counted: Vec<String> = sqlx::query_scalar("SELECT client FROM admin_login_attempts")
        .fetch_all(&t.pool.db)
        .await
        .unwrap();
    assert_eq!(counted, vec!["127.0.0.1".to_string()]);
}

/// The project's migrations directory.
fn migrations_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

// 12. Every migration from 0008 on bounds how long it waits for a lock.
#[test]
fn every_new_migration_sets_a_lock_timeout_first() {
    let mut checked = 0;
    for entry in std::fs::read_dir(migrations_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let number: u32 = name.split('_').next().unwrap().parse().unwrap();
        // 0001–0007 landed before the rule; a landed migration is never edited.
        if number < 8 {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("--"))
            .unwrap_or_default();
        assert!(
            first.starts_with("SET LOCAL lock_timeout = '") && first.ends_with("';"),
            "{name}: its first statement must be `SET LOCAL lock_timeout = '...';`, not {first:?}"
        );
        checked += 1;
    }
    assert!(checked > 0);
}

/// The project's migrations and one more, `probe`, in a directory of their own.
async fn with_probe(probe: &str) -> (tempfile::TempDir, sqlx::migrate::Migrator) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(migrations_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("0900_probe.sql"), probe).unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    (dir, migrator)
}

// 12. A migration that needs a lock an old replica holds never holds claims up for longer than its
// lock_timeout: it gives up, claims go on, and it is applied once the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_go_on_while_a_migration_waits_for_a_lock() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    let (_dir, migrator) = with_probe(
        "SET LOCAL lock_timeout = '200ms';\nALTER TABLE instances ADD COLUMN probe INT;\n",
    )
    .await;
    // An old replica's long transaction that has read the instances table.
    let mut blocker = t.pool.db.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM instances")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let migrating = tokio::spawn({
        let db = t.pool.db.clone();
        async move { agentpool_core::db::migrate_with(&db, &migrator).await }
    });
    // The migration asks for its lock (and queues every claim behind it while it waits).
    wait_until(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE relation = 'instances'::regclass
              AND mode = 'AccessExclusiveLock'",
        )
        .fetch_one(&t.pool.db)
        .await
        .unwrap()
            > 0
    })
    .await;
    // Claims under load, the old transaction still open: each is answered (the pool is empty).
    let load = async {
        for _ in 0..30 {
            let (status, body) = t.claim("during-migrate").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("claims held up behind the migration's lock");
    assert!(
        !migrating.is_finished(),
        "the migration went ahead of the lock"
    );
    blocker.rollback().await.unwrap();
    migrating
        .await
        .unwrap()
        .expect("applied once the lock is free");
    let probe: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns
          WHERE table_name = 'instances' AND column_name = 'probe'",
    )
    .fetch_one(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(probe, 1);
}
