//! `POOL_PROVIDER=sprites` end to end, against the stateful Sprites fake (REST, NDJSON
//! checkpoint and restore streams, the exec WebSocket's stream-byte framing), whose sprites run
//! real stub agents; and recycling, the path a used instance takes back to the pool on any
//! provider that can restore (the local provider too).

use std::sync::Arc;
use std::time::Duration;

use agentpool_core::calls::Tally;
use agentpool_core::domain::InstanceStatus::{self, *};
use agentpool_core::heartbeat::{self, Round};
use agentpool_core::providers::sprites::SpritesProvider;
use agentpool_core::Settings;
use agentpool_tests::fakes::{
    AgentMailConfig, AgentMailFake, Controls, Fault, Scope, SpritesConfig, SpritesFake,
};
use agentpool_tests::{clean, scheduler_bin, wait_until, Guarded, TestPool};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PREFIX: &str = "ap-";

fn provider(fake: &SpritesFake, tally: &Tally) -> Arc<SpritesProvider> {
    let settings = Settings::from_vars(
        [
            ("POOL_PROVIDER", "sprites"),
            ("POOL_NAME_PREFIX", PREFIX),
            ("SPRITES_API_URL", &fake.url()),
            ("SPRITE_TOKEN", fake.token()),
            (
                "SPRITES_SETUP_COMMANDS",
                r#"["echo build one", "echo build two"]"#,
            ),
            ("OUTBOUND_TIMEOUT_MS", "2000"),
            ("SPRITES_EXEC_TIMEOUT_MS", "10000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("sprites settings");
    Arc::new(
        SpritesProvider::from_settings(
            &settings.providers.sprites,
            &settings.outbound,
            "dev",
            Duration::from_secs(10),
            tally,
        )
        .expect("sprites provider"),
    )
}

async fn pool(fake: &SpritesFake, overrides: &[(&str, &str)]) -> TestPool {
    let mut settings = vec![
        ("POOL_MIN_IDLE", "0"),
        ("POOL_NAME_PREFIX", PREFIX),
        ("RECYCLE_TIMEOUT_MS", "10000"),
    ];
    settings.extend_from_slice(overrides);
    TestPool::with_provider(&settings, &[], |_, tally| provider(fake, tally)).await
}

async fn wait_status(t: &TestPool, id: &str, status: InstanceStatus) {
    wait_until(Duration::from_secs(20), || async {
        t.instance(id).await.map(|i| i.status) == Some(status)
    })
    .await;
}

/// The runtime's own word on its conversation (`/pool/health`).
async fn conversation_of(t: &TestPool, id: &str) -> Value {
    let url = t.instance(id).await.and_then(|i| i.url).expect("url");
    let health: Value = t
        .http
        .get(format!("{url}/pool/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("health json");
    health["conversationId"].clone()
}

async fn golden_of(t: &TestPool, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT details->>'golden' FROM instance_infra WHERE instance_id = $1")
        .bind(id)
        .fetch_optional(&t.pool.db)
        .await
        .expect("infra")
        .flatten()
}

/// Seed 002's whole path: create (public URL read from the API, setup execs, the runtime as a
/// service, ready and clean, golden checkpoint) → idle → claim → recycle → idle → claim again,
/// the second user seeing nothing of the first: not the conversation, not the instructions on
/// disk, not the gateway token the first user was handed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_sprite_comes_back_clean_and_serves_a_second_user() {
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    let t = pool(&fake, &[]).await;
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = t.ids(Starting).await.pop().expect("a starting row");
    let sprite_name = format!("dev-{PREFIX}{id}");
    let sprite = fake.sprite(&sprite_name).expect("the sprite exists");
    assert_eq!(sprite.url_auth, "public");
    assert_eq!(sprite.checkpoints, vec!["v0"], "golden checkpoint taken");
    assert_eq!(golden_of(&t, &id).await.as_deref(), Some("v0"));
    assert_eq!(
        t.instance(&id).await.unwrap().url.as_deref(),
        Some(sprite.url.as_str())
    );
    t.tick().await;
    assert_eq!(t.instance(&id).await.unwrap().status, Idle);

    let (status, first) = t.claim("first").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["instanceId"], id.as_str());
    let first_conversation = first["conversationId"].clone();
    assert_eq!(conversation_of(&t, &id).await, first_conversation);
    // What the first user's agent wrote to its disk.
    assert!(fake.write_file(&sprite_name, "/home/sprite/INSTRUCTIONS.md", "plan a trip"));
    let first_token = first["gatewayToken"].as_str().unwrap().to_string();
    let (status, listed) = t.delete("/api/pool/instances").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["instanceIds"], json!([id]));

    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "recycling");
    assert_eq!(body["previousStatus"], "claimed");
    // Asked again meanwhile (a double click): the recycle goes on, nothing is destroyed.
    let (status, again) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["status"], "recycling", "{again}");
    wait_status(&t, &id, Idle).await;

    assert_eq!(conversation_of(&t, &id).await, Value::Null);
    assert_eq!(
        fake.file(&sprite_name, "/home/sprite/INSTRUCTIONS.md"),
        None,
        "the restore took the first user's files away"
    );
    let row = t.instance(&id).await.unwrap();
    assert_eq!(row.agent_name, None);
    assert_eq!(row.instructions, None);
    assert_eq!(row.conversation_id, None);
    assert_ne!(
        t.gateway_token(&id).await,
        first_token,
        "a new gateway token"
    );
    // The token the first user was handed opens nothing any more.
    let url = row.url.clone().unwrap();
    let refused = t
        .http
        .post(format!("{url}/pool/provision"))
        .bearer_auth(&first_token)
        .json(&json!({"agentName": "intruder", "instructions": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let (status, second) = t.claim("second").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["instanceId"], id.as_str(), "the recycled instance");
    assert_ne!(second["conversationId"], first_conversation);
    let to: Vec<String> = t.events(&id).await.into_iter().map(|(_, to)| to).collect();
    assert_eq!(
        to,
        [
            "starting",
            "idle",
            "claiming",
            "claimed",
            "recycling",
            "idle",
            "claiming",
            "claimed"
        ]
    );
    // One sprite built, once: the recycle restored, it did not rebuild.
    assert_eq!(fake.sprites().len(), 1);

    // Churn's end: destroy always destroys, and nothing is left at Sprites.
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}/destroy")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "destroying");
    t.tick().await;
    assert!(fake.sprites().is_empty(), "{:?}", fake.sprites());
}

/// A restore that fails never returns a dirty instance: it is destroyed instead, and the pool
/// refills with a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_destroys_instead_of_returning_a_dirty_instance() {
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    let t = pool(&fake, &[("POOL_MIN_IDLE", "1")]).await;
    t.fill(1).await;
    let (status, claimed) = t.claim("first").await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let id = claimed["instanceId"].as_str().unwrap().to_string();
    fake.inject(
        Fault::ServerError,
        Scope::Next {
            op: Some("POST /v1/sprites/{name}/checkpoints/{id}/restore".into()),
            count: 10,
        },
    );
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_status(&t, &id, Destroying).await;
    let to: Vec<String> = t.events(&id).await.into_iter().map(|(_, to)| to).collect();
    assert_eq!(to.last().map(String::as_str), Some("destroying"));
    assert!(!to[4..].contains(&"idle".to_string()), "{to:?}");
    fake.clear_faults();
    t.tick().await;
    assert!(t.instance(&id).await.is_none(), "destroyed");
    assert!(fake.sprite(&format!("dev-{PREFIX}{id}")).is_none());
    t.fill(1).await;
}

/// An account's concurrent limit stops creation until its Retry-After, for every replica: each
/// creation asks once, the pause is recorded, and ticks that follow ask no more (no retry
/// storm), say so in their report, and `/metrics` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_limit_stops_creation_without_a_retry_storm() {
    let fake = SpritesFake::start(SpritesConfig {
        max_concurrent: 1,
        ..SpritesConfig::default()
    })
    .await;
    let t = pool(&fake, &[("POOL_MIN_IDLE", "3")]).await;
    t.tick().await;
    assert_eq!(fake.sprites().len(), 1);
    // Each creation asks once at most (one that starts after a refusal sees the pause first).
    let asked = fake.stats().requests_for("POST /v1/sprites");
    assert!((2..=3).contains(&asked), "{asked} creations asked");
    for _ in 0..3 {
        let report = t.tick().await;
        let paused = report.creation_paused.clone().expect("creation paused");
        assert_eq!(paused.code, "concurrent_sprite_limit_exceeded");
        assert!(report.created.is_empty(), "{report:?}");
    }
    assert_eq!(fake.stats().requests_for("POST /v1/sprites"), asked);
    let metrics = t
        .http
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let paused_line = metrics
        .lines()
        .find(|l| l.starts_with("agentpool_creation_paused_seconds"))
        .unwrap_or_else(|| panic!("no pause gauge in {metrics}"));
    let seconds: f64 = paused_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds > 0.0, "{paused_line}");
}

/// Sprites of ours that no row owns (a create whose reply was lost) are found through the
/// listing's pages (continuation tokens) and deleted; other environments' sprites are not ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_found_across_pages_and_other_environments_left_alone() {
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    for n in 0..60 {
        fake.create_behind_our_back(&format!("dev-{PREFIX}orphan{n:02}"))
            .unwrap();
    }
    fake.create_behind_our_back(&format!("production-{PREFIX}theirs"))
        .unwrap();
    let t = pool(&fake, &[]).await;
    let report = t.tick().await;
    assert_eq!(report.orphans_deleted.len(), 60, "{report:?}");
    let left: Vec<String> = fake.sprites().into_iter().map(|s| s.name).collect();
    assert_eq!(left, vec![format!("production-{PREFIX}theirs")]);
}

/// The local provider recycles too (`LOCAL_RECYCLE`): the stub agent restarted clean, so
/// `agentpool dev` shows the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_recycles_by_restarting_its_agent_clean() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1"), ("LOCAL_RECYCLE", "true")], &[]).await;
    t.fill(1).await;
    let (status, first) = t.claim("first").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["instanceId"].as_str().unwrap().to_string();
    let pid = t.pid_of(&id).expect("running");
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "recycling");
    wait_status(&t, &id, Idle).await;
    assert_ne!(t.pid_of(&id), Some(pid), "restarted");
    let (status, second) = t.claim("second").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["instanceId"], id.as_str());
    assert_ne!(second["conversationId"], first["conversationId"]);
}

/// A local recycling pool whose claims by template make an AgentMail inbox (a `pool` tool); the
/// wallet is the instance's own, from its creation.
async fn recycling_pool_with_mail(mail: &AgentMailFake) -> (TestPool, String) {
    let url = mail.url();
    let t = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "1"),
            ("LOCAL_RECYCLE", "true"),
            ("TOOLS_AT_CREATION", "base"),
            ("AGENTMAIL_API_URL", &url),
            ("AGENTMAIL_API_KEY", mail.api_key()),
            ("AGENTMAIL_DOMAIN", mail.domain()),
            ("OUTBOUND_TIMEOUT_MS", "2000"),
        ],
        &[],
    )
    .await;
    t.fill(1).await;
    let (status, template) = t
        .post(
            "/api/templates",
            json!({"slug": "mailer", "agentName": "Mailer", "instructions": "Answer mail.",
                   "tools": [{"id": "email", "provisioning": "pool"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    let template_id = template["id"].as_str().unwrap().to_string();
    (t, template_id)
}

async fn tools_of(t: &TestPool, id: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT tool_id, resource_id FROM instance_services WHERE instance_id = $1 ORDER BY tool_id",
    )
    .bind(id)
    .fetch_all(&t.pool.db)
    .await
    .unwrap()
}

/// Nothing of the previous user survives a recycle, tool resources included: the inbox the
/// claim made is destroyed at AgentMail and forgotten, the wallet the instance was built with
/// stays, the restarted runtime holds none of the claim's variables, and the next claim by the
/// same template gets a fresh inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycle_destroys_the_tools_the_claim_made_and_keeps_the_instance_s_own() {
    let mail = AgentMailFake::start(AgentMailConfig::default()).await;
    let (t, template_id) = recycling_pool_with_mail(&mail).await;
    let id = t.ids(Idle).await.pop().expect("idle");
    let built_with = tools_of(&t, &id).await;
    assert_eq!(
        built_with
            .iter()
            .map(|(tool, _)| tool.as_str())
            .collect::<Vec<_>>(),
        ["wallet"]
    );

    let (status, first) = t
        .post("/api/pool/claim", json!({"templateId": template_id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["instanceId"], id.as_str());
    let inboxes = mail.inboxes();
    assert_eq!(inboxes.len(), 1, "{inboxes:?}");
    let first_inbox = inboxes[0].inbox_id.clone();
    assert!(tools_of(&t, &id)
        .await
        .contains(&("email".to_string(), first_inbox.clone())));

    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_status(&t, &id, Idle).await;
    assert!(mail.inboxes().is_empty(), "{:?}", mail.inboxes());
    assert_eq!(
        tools_of(&t, &id).await,
        built_with,
        "only the instance's own"
    );
    // The restarted runtime was handed none of the claim's variables, nor started with them.
    let env = t.stub_env(&id).await;
    assert_eq!(env["env"], json!({}), "{env}");
    assert!(
        !env["startedWith"].to_string().contains("AGENTMAIL"),
        "{env}"
    );

    let (status, second) = t
        .post("/api/pool/claim", json!({"templateId": template_id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["instanceId"], id.as_str(), "the recycled instance");
    // A new inbox (the first one was deleted above), recorded against this claim, at an address
    // of its own: mail still sent to the previous user's address never reaches the next user.
    let inboxes = mail.inboxes();
    assert_eq!(inboxes.len(), 1, "{inboxes:?}");
    assert_ne!(
        inboxes[0].inbox_id, first_inbox,
        "the previous user's address"
    );
    let made: Vec<(String, String)> = sqlx::query_as(
        "SELECT tool_id, resource_id FROM instance_services WHERE instance_id = $1 AND made_at_claim",
    )
    .bind(&id)
    .fetch_all(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(made, [("email".to_string(), inboxes[0].inbox_id.clone())]);
}

/// A claim-time resource that cannot be destroyed keeps the instance from the pool: it goes to
/// `destroying` (whose teardown destroys what is left), never back to idle with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_s_tool_that_cannot_be_destroyed_destroys_the_instance_instead() {
    let mail = AgentMailFake::start(AgentMailConfig::default()).await;
    let (t, template_id) = recycling_pool_with_mail(&mail).await;
    let (status, first) = t
        .post("/api/pool/claim", json!({"templateId": template_id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["instanceId"].as_str().unwrap().to_string();
    let pid = t.pid_of(&id).expect("running");
    mail.inject(
        Fault::ServerError,
        Scope::Next {
            op: Some("DELETE /v0/inboxes/{inbox_id}".into()),
            count: 1000,
        },
    );
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "recycling");
    wait_status(&t, &id, Destroying).await;
    let to: Vec<String> = t.events(&id).await.into_iter().map(|(_, to)| to).collect();
    assert!(!to[4..].contains(&"idle".to_string()), "{to:?}");
    assert_eq!(t.pid_of(&id), Some(pid), "not restored for nothing");
    assert_eq!(mail.inboxes().len(), 1, "still there");
    mail.clear_faults();
    t.tick().await;
    assert!(t.instance(&id).await.is_none(), "destroyed");
    assert!(mail.inboxes().is_empty(), "{:?}", mail.inboxes());
}

/// Without recycling, `DELETE /api/pool/instances/:id` destroys, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_recycle_destroys_on_release() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    t.fill(1).await;
    let (_, claimed) = t.claim("first").await;
    let id = claimed["instanceId"].as_str().unwrap().to_string();
    let (status, body) = t.delete(&format!("/api/pool/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "destroying");
}

/// Keep-alive is driven from Postgres: one round of beats per interval whatever the number of
/// replicas, each idle and claimed sprite pinged once a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_send_as_many_beats_as_one() {
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    // An hour: every call below falls in one interval (or, across an hour's turn, two).
    let t = pool(
        &fake,
        &[("POOL_MIN_IDLE", "2"), ("HEARTBEAT_INTERVAL_MS", "3600000")],
    )
    .await;
    t.fill(2).await;
    let one: Vec<Round> = beats(&t, 1).await;
    let pinged: usize = one.iter().map(|r| r.pinged).sum();
    assert_eq!(pinged % 2, 0, "{one:?}");
    assert!(pinged >= 2, "{one:?}");
    // A new interval for the three replicas: a fresh slot table.
    sqlx::query("DELETE FROM heartbeat_rounds")
        .execute(&t.pool.db)
        .await
        .unwrap();
    let three: Vec<Round> = beats(&t, 3).await;
    assert_eq!(
        three.iter().map(|r| r.pinged).sum::<usize>(),
        pinged,
        "1 replica: {one:?}; 3 replicas: {three:?}"
    );
}

/// `replicas` replicas each beat five times, all at once; the rounds that ran.
async fn beats(t: &TestPool, replicas: usize) -> Vec<Round> {
    let calls = (0..replicas * 5).map(|_| {
        let pool = t.pool.clone();
        tokio::spawn(async move { heartbeat::beat(&pool).await.expect("beat") })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|r| r.expect("joined"))
        .collect()
}

/// Seed 002's escalation: three failed pings → woken with an exec → answering again: kept; a
/// sprite that cannot be woken: an idle one destroyed, a claimed one crashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sprites_are_woken_then_given_up() {
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    // A new interval at every call.
    let t = pool(
        &fake,
        &[("POOL_MIN_IDLE", "2"), ("HEARTBEAT_INTERVAL_MS", "1")],
    )
    .await;
    t.fill(2).await;
    let (_, claimed) = t.claim("user").await;
    let claimed_id = claimed["instanceId"].as_str().unwrap().to_string();
    let idle_id = t.ids(Idle).await.pop().unwrap();
    let sprite = |id: &str| format!("dev-{PREFIX}{id}");

    assert!(fake.kill_service(&sprite(&idle_id)));
    let first = rounds(&t, 3).await;
    assert_eq!(first[2].woken, 1, "{first:?}");
    assert!(first[2].given_up.is_empty(), "{first:?}");
    assert_eq!(t.instance(&idle_id).await.unwrap().status, Idle);

    // Execs refused: nothing wakes them.
    fake.inject(
        Fault::ServerError,
        Scope::Next {
            op: Some("GET /v1/sprites/{name}/exec".into()),
            count: 1000,
        },
    );
    assert!(fake.kill_service(&sprite(&idle_id)));
    assert!(fake.kill_service(&sprite(&claimed_id)));
    let second = rounds(&t, 3).await;
    let mut given_up = second[2].given_up.clone();
    given_up.sort();
    let mut expected = vec![idle_id.clone(), claimed_id.clone()];
    expected.sort();
    assert_eq!(given_up, expected, "{second:?}");
    assert_eq!(t.instance(&idle_id).await.unwrap().status, Destroying);
    assert_eq!(t.instance(&claimed_id).await.unwrap().status, Crashed);
}

/// Keep-alive where no replica runs a timer (Lambda): `agentpool-scheduler` over HTTP sends each
/// interval's round through `POST /api/pool/keepalive`. This pool's API has no keep-alive loop of
/// its own (the test's server is the router alone), so every round is the scheduler's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_sends_the_beats_where_no_replica_does() {
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    let t = pool(
        &fake,
        &[("POOL_MIN_IDLE", "1"), ("HEARTBEAT_INTERVAL_MS", "1000")],
    )
    .await;
    t.fill(1).await;
    let sent = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM heartbeat_rounds")
            .fetch_one(&t.pool.db)
            .await
            .unwrap()
    };
    assert_eq!(sent().await, 0, "no round without the scheduler");

    let log = tempfile::NamedTempFile::new().unwrap();
    let _scheduler = Guarded(
        clean(&scheduler_bin())
            .env("POOL_URL", &t.base)
            .env("POOL_API_KEY", &t.key)
            // Ticks far apart: this test is about the beats.
            .env("TICK_CRON", "0 0 0 1 1 *")
            .env("HEARTBEAT_INTERVAL_MS", "1000")
            .env("SCHEDULER_KEEP_ALIVE", "true")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let rounds = || {
        std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["fields"]["message"] == "keep-alive")
            .map(|line| line["fields"].clone())
            .collect::<Vec<Value>>()
    };
    wait_until(Duration::from_secs(30), || async {
        rounds()
            .iter()
            .filter(|r| r["skipped"] == false && r["pinged"] == 1)
            .count()
            >= 2
    })
    .await;
    let sent_by_scheduler = rounds().iter().filter(|r| r["skipped"] == false).count() as i64;
    assert!(sent().await >= sent_by_scheduler, "{:?}", rounds());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(!text.contains("keep-alive failed"), "{text}");
    assert!(!text.contains(&t.key), "the key in the log");
}

/// `n` rounds, each in its own interval.
async fn rounds(t: &TestPool, n: usize) -> Vec<Round> {
    let mut rounds = Vec::new();
    while rounds.len() < n {
        if let Some(round) = heartbeat::beat(&t.pool).await.expect("beat") {
            rounds.push(round);
        }
    }
    rounds
}

/// Seed 002's debug probe, every secret redacted: the gateway token appears nowhere, though the
/// process list shows the runtime's variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_probe_tells_what_it_can_and_no_secret() {
    let fake = SpritesFake::start(SpritesConfig::default()).await;
    let t = pool(&fake, &[("POOL_MIN_IDLE", "1")]).await;
    t.fill(1).await;
    let id = t.ids(Idle).await.pop().unwrap();
    let token = t.gateway_token(&id).await;
    let (status, body) = t.get(&format!("/api/pool/debug/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.to_string();
    assert!(!text.contains(&token), "{text}");
    assert!(!text.contains(fake.token()), "{text}");
    let probe = &body["resource"]["probe"];
    assert_eq!(probe["envFileExists"], true, "{body}");
    assert!(
        probe["processes"]["output"]
            .as_str()
            .unwrap()
            .contains("OPENCLAW_GATEWAY_TOKEN=[redacted]"),
        "{body}"
    );
    assert!(
        probe["listeningPorts"]["output"]
            .as_str()
            .unwrap()
            .contains("LISTEN"),
        "{body}"
    );
    assert_eq!(probe["sprite"]["name"], format!("dev-{PREFIX}{id}"));
    assert_eq!(body["runtime"]["state"], "ready");
    assert_eq!(body["resource"]["recorded"]["golden"], "v0");
    // Local instances: what the local provider can tell.
    let local = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    local.fill(1).await;
    let id = local.ids(Idle).await.pop().unwrap();
    let (status, body) = local.get(&format!("/api/pool/debug/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resource"]["probe"]["processAlive"], true, "{body}");
    assert!(!body.to_string().contains(&local.gateway_token(&id).await));
    let (status, _) = local.get("/api/pool/debug/unknownid123").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
