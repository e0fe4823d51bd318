//! `GET /metrics`: Prometheus text computed from Postgres, the same from every replica.

use std::collections::HashMap;

use agentpool::AppState;
use agentpool_core::config::Secret;
use agentpool_tests::fakes::{Controls, Fault, OpenRouterConfig, OpenRouterFake, Scope};
use agentpool_tests::TestPool;
use reqwest::StatusCode;
use serde_json::json;

/// `name{labels}` → value, from the exposition text.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(http: &reqwest::Client, base: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = http.get(format!("{base}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Another replica: a second API server over the same database.
async fn replica(t: &TestPool) -> String {
    let state = AppState::new(t.pool.clone(), Secret::new(t.key.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, agentpool::router(state))
            .await
            .unwrap();
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_every_replica_says_the_same() {
    let openrouter = OpenRouterFake::start(OpenRouterConfig::default()).await;
    // The first key creation fails once: an outside call error to count.
    openrouter.inject(
        Fault::ServerError,
        Scope::Next {
            op: Some("POST /api/v1/keys".into()),
            count: 1,
        },
    );
    let t = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "2"),
            ("POOL_MAX_TOTAL", "3"),
            ("OPENROUTER_API_URL", &openrouter.url()),
            ("OPENROUTER_MANAGEMENT_KEY", openrouter.management_key()),
        ],
        &[],
    )
    .await;
    t.fill(2).await;
    for name in ["first", "second"] {
        let (status, body) = t.claim(name).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Nothing idle until the tick refills: a miss.
    let (status, _) = t.claim("third").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = t.post("/api/pool/tick", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // A fold waits for every older transaction on the server, other tests' too.
    fold_everything(&t.pool.db).await;

    let (status, text) = scrape(&t.http, &t.base, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    let m = samples(&text);
    let get = |name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(get(r#"agentpool_instances{status="claimed"}"#), 2.0);
    assert_eq!(get("agentpool_claims_total"), 2.0);
    assert_eq!(get("agentpool_claim_misses_total"), 1.0);
    assert_eq!(get("agentpool_claim_duration_seconds_count"), 2.0);
    assert!(get("agentpool_claim_duration_seconds_sum") > 0.0);
    assert_eq!(
        get(r#"agentpool_claim_duration_seconds_bucket{le="+Inf"}"#),
        2.0
    );
    let created = get("agentpool_instances_created_total");
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instance_events WHERE from_status IS NULL AND to_status = 'starting'",
    )
    .fetch_one(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(created, rows as f64);
    assert_eq!(
        get(r#"agentpool_transitions_total{from="idle",to="claiming"}"#),
        2.0
    );
    assert!(get("agentpool_ticks_total") >= 1.0);
    assert!(get("agentpool_tick_last_success_timestamp_seconds") > 1.7e9);
    assert!(
        get(r#"agentpool_outbound_errors_total{service="openrouter",kind="server_error"}"#) >= 1.0
    );

    // Another replica, over the same database, reports the same numbers.
    let other = replica(&t).await;
    let (_, again) = scrape(&t.http, &other, None).await;
    let mut mine = samples(&text);
    let mut theirs = samples(&again);
    // Call errors are process-wide, and tests share this process: compare the rest.
    for samples in [&mut mine, &mut theirs] {
        samples.retain(|name, _| !name.starts_with("agentpool_outbound_errors"));
    }
    assert_eq!(mine, theirs);
}

#[tokio::test]
async fn metrics_can_ask_for_a_token() {
    let t = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "0"),
            ("METRICS_TOKEN", "metrics-token-0123456789"),
        ],
        &[],
    )
    .await;
    let (status, body) = scrape(&t.http, &t.base, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "unauthorized");
    let (status, _) = scrape(&t.http, &t.base, Some("wrong-token-0123456789")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, text) = scrape(&t.http, &t.base, Some("metrics-token-0123456789")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("agentpool_instances"));
}

#[tokio::test]
async fn every_reply_carries_a_request_id() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    let response = t.http.get(t.url("/healthz")).send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let response = t
        .http
        .get(t.url("/api/pool/status"))
        .header("x-request-id", "req-from-client-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["x-request-id"], "req-from-client-7");
    // An implausible id is replaced, not echoed.
    let response = t
        .http
        .get(t.url("/healthz"))
        .header("x-request-id", "x".repeat(500))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 36);
}

/// `(from, to)` → total, as the folded totals say.
async fn totals(db: &sqlx::PgPool) -> HashMap<(String, String), i64> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT from_status, to_status, sum(n)::bigint FROM event_totals GROUP BY 1, 2",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter().map(|(f, t, n)| ((f, t), n)).collect()
}

/// `(from, to)` → events in the history.
async fn history(db: &sqlx::PgPool) -> HashMap<(String, String), i64> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT coalesce(from_status, ''), to_status, count(*) FROM instance_events GROUP BY 1, 2",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter().map(|(f, t, n)| ((f, t), n)).collect()
}

/// Folds until every event written so far is in the totals. Transactions of other tests on the
/// same server may hold the fold back for a moment: a fold waits for every older transaction.
async fn fold_everything(db: &sqlx::PgPool) {
    agentpool_tests::wait_until(std::time::Duration::from_secs(30), || async {
        agentpool_core::metrics::fold(db).await.unwrap();
        totals(db).await == history(db).await
    })
    .await;
}

const EVENT: &str =
    "INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
                     VALUES ($1, 'idle', 'claiming', 'test', 'claim')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_writes_its_events_and_nothing_more() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1"), ("POOL_MAX_TOTAL", "1")], &[]).await;
    t.fill(1).await;
    fold_everything(&t.pool.db).await;
    let before = totals(&t.pool.db).await;
    let (status, body) = t.claim("quiet").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        totals(&t.pool.db).await,
        before,
        "a claim changed the totals itself"
    );
    fold_everything(&t.pool.db).await;
    let after = totals(&t.pool.db).await;
    let claims = |m: &HashMap<(String, String), i64>| {
        m.get(&("claiming".into(), "claimed".into()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(claims(&after), claims(&before) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_transaction_commits_late_is_counted_once() {
    let db = agentpool_tests::TestDb::new().await;
    let fold = || agentpool_core::metrics::fold(&db.pool);
    // The first event's transaction stays open while a later one commits.
    let mut early = db.pool.begin().await.unwrap();
    sqlx::query(EVENT)
        .bind("early")
        .execute(&mut *early)
        .await
        .unwrap();
    sqlx::query(EVENT)
        .bind("late")
        .execute(&db.pool)
        .await
        .unwrap();
    // The committed event waits behind the open transaction: folding it now would move the
    // watermark past the open one's event.
    assert_eq!(fold().await.unwrap(), 0);
    assert!(totals(&db.pool).await.is_empty());
    early.commit().await.unwrap();
    fold_everything(&db.pool).await;
    assert_eq!(fold().await.unwrap(), 0);
    assert_eq!(
        totals(&db.pool).await,
        HashMap::from([(("idle".to_string(), "claiming".to_string()), 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_folds_and_scrapes_count_every_event_exactly_once() {
    let db = agentpool_tests::TestDb::new().await;
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let db = db.pool.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    // Some transactions write two events and stay open across a yield, so that
                    // commits land out of the order their ids and transaction ids were given.
                    let mut tx = db.begin().await.unwrap();
                    sqlx::query(EVENT)
                        .bind(format!("w{w}-{i}"))
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                        sqlx::query(EVENT)
                            .bind(format!("w{w}-{i}b"))
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let folders: Vec<_> = (0..4)
        .map(|f| {
            let (db, stop) = (db.pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut folded = 0;
                while !stop.is_cancelled() {
                    if f % 2 == 0 {
                        folded += agentpool_core::metrics::fold(&db).await.unwrap();
                    } else {
                        agentpool_core::metrics::render(&db, &Default::default())
                            .await
                            .unwrap();
                    }
                }
                folded
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    stop.cancel();
    for folder in folders {
        folder.await.unwrap();
    }
    let written = history(&db.pool).await;
    assert_eq!(written.values().sum::<i64>(), 6 * 40 + 6 * 14);
    // Equal, not only at least: a double count would stay above the history for good.
    fold_everything(&db.pool).await;
    assert_eq!(totals(&db.pool).await, written);
}
