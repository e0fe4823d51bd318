//! HTTP contract: JSON errors with the right status, auth rules, no secrets on public routes.

use agentpool_core::domain::InstanceStatus::*;
use agentpool_tests::TestPool;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn public_routes_answer_without_a_key() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let (status, body) = t.get_public("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true})));
    let (status, body) = t.get_public("/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["environment"], "dev");
    let (status, body) = t.get_public("/api/pool/counts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["idle"], 3);
    assert_eq!(body["claimed"], 0);
    let (status, body) = t.get_public("/api/pool/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["provider"], "local");
    assert_eq!(body["minIdle"], 3);
}

#[tokio::test]
async fn public_agents_show_names_status_and_times_only() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let (status, claim) = t.claim("public-agent").await;
    assert_eq!(status, StatusCode::OK);
    let token = claim["gatewayToken"].as_str().unwrap();

    let response = t.http.get(t.url("/api/pool/agents")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    for secret in [
        token,
        &t.key,
        claim["gatewayUrl"].as_str().unwrap(),
        claim["inviteUrl"].as_str().unwrap(),
    ] {
        assert!(
            !text.contains(secret),
            "public /api/pool/agents leaks {secret}: {text}"
        );
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    let claimed = body["claimed"].as_array().unwrap();
    assert_eq!(claimed.len(), 1);
    let mut keys: Vec<&str> = claimed[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agentName",
            "claimedAt",
            "createdAt",
            "status",
            "statusSince"
        ]
    );
    assert_eq!(claimed[0]["agentName"], "public-agent");

    // With the key: the operator's view, still without the gateway token.
    let (status, body) = t.get("/api/pool/agents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["claimed"][0]["inviteUrl"], claim["inviteUrl"]);
    assert!(!body.to_string().contains(token));
    let (_, status_body) = t.get("/api/pool/status").await;
    assert_eq!(status_body["counts"]["claimed"], 1);
    assert_eq!(status_body["instances"].as_array().unwrap().len(), 3);
    assert!(
        !status_body.to_string().contains(token),
        "status leaks a gateway token"
    );
}

#[tokio::test]
async fn operator_routes_need_the_key_in_the_header() {
    let t = TestPool::start().await;
    let routes: [(&str, &str); 10] = [
        ("GET", "/api/pool/status"),
        ("POST", "/api/pool/claim"),
        ("POST", "/api/pool/replenish"),
        ("POST", "/api/pool/drain"),
        ("POST", "/api/pool/reconcile"),
        ("POST", "/api/pool/tick"),
        ("POST", "/api/pool/keepalive"),
        ("DELETE", "/api/pool/instances/abc"),
        ("DELETE", "/api/pool/crashed/abc"),
        ("GET", "/api/pool/replenish/stream"),
    ];
    // Wrong keys in a row earn a delay (answered 429); here each is the first of its client.
    let time_passes = || async {
        sqlx::query("DELETE FROM admin_login_attempts")
            .execute(&t.pool.db)
            .await
            .unwrap();
    };
    for (method, path) in routes {
        let method: reqwest::Method = method.parse().unwrap();
        let (status, body) = t.send(t.http.request(method.clone(), t.url(path))).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        time_passes().await;
        let (status, body) = t
            .send(
                t.http
                    .request(method.clone(), t.url(path))
                    .bearer_auth("wrong-key-wrong-key"),
            )
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        let (status, body) = t
            .send(
                t.http
                    .request(method.clone(), t.url(path))
                    .header("authorization", format!("Basic {}", t.key)),
            )
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        if !path.ends_with("/stream") {
            let (status, body) = t
                .send(
                    t.http
                        .request(method, t.url(&format!("{path}?key={}", t.key))),
                )
                .await;
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
            assert!(body["error"].as_str().unwrap().contains("SSE"), "{body}");
        }
    }
    // A wrong key on a public route is refused too, rather than silently ignored.
    time_passes().await;
    let (status, body) = t
        .send(t.http.get(t.url("/api/pool/agents")).bearer_auth("nope"))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn the_sse_stream_accepts_the_key_in_the_query_and_streams_progress() {
    let t = TestPool::start().await;
    let response = t
        .http
        .get(t.url(&format!("/api/pool/replenish/stream?count=2&key={}", t.key)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let complete = events.last().unwrap();
    assert_eq!(complete["type"], "complete", "{text}");
    assert_eq!(complete["created"], 2);
    assert_eq!(complete["failed"], 0);
    assert_eq!(events.iter().filter(|e| e["type"] == "instance").count(), 2);
    assert!(events
        .iter()
        .any(|e| e["step"] == "openrouter" && e["status"] == "skip"));
    assert!(events
        .iter()
        .any(|e| e["step"] == "local" && e["status"] == "ok"));
    assert_eq!(t.count(Starting).await, 2);

    let (status, body) = t
        .send(t.http.get(t.url(&format!(
            "/api/pool/replenish/stream?count=zero&key={}",
            t.key
        ))))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn client_mistakes_get_4xx_json_and_change_nothing() {
    let t = TestPool::start().await;
    t.fill(3).await;
    let claim = |body: &'static str| {
        t.http
            .post(t.url("/api/pool/claim"))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: [(&str, &str); 12] = [
        ("{not json", "bad_json"),
        ("", "bad_json"),
        ("[1,2]", "invalid_request"),
        (r#"{"instructions": "x"}"#, "invalid_request"),
        (r#"{"agentName": "a"}"#, "invalid_request"),
        (
            r#"{"agentName": 7, "instructions": "x"}"#,
            "invalid_request",
        ),
        (
            r#"{"agentName": "", "instructions": "x"}"#,
            "invalid_request",
        ),
        (
            r#"{"agentName": "a", "instructions": "   "}"#,
            "invalid_request",
        ),
        (
            r#"{"agentName": "a", "instructions": "x", "joinUrl": "ftp://x"}"#,
            "invalid_request",
        ),
        (
            r#"{"agentName": "a", "instructions": "x", "joinUrl": 3}"#,
            "invalid_request",
        ),
        (
            r#"{"agentName": "a", "instructions": "x", "colour": "red"}"#,
            "invalid_request",
        ),
        (
            r#"{"agentName": "a", "instructions": "x", "metadata": "flat"}"#,
            "invalid_request",
        ),
    ];
    for (body, code) in cases {
        let (status, json) = t.send(claim(body)).await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, code);
    }
    let long_name = format!(
        r#"{{"agentName": "{}", "instructions": "x"}}"#,
        "n".repeat(101)
    );
    let (status, json) = t
        .send(
            t.http
                .post(t.url("/api/pool/claim"))
                .bearer_auth(&t.key)
                .body(long_name),
        )
        .await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "invalid_request");
    let huge = format!(
        r#"{{"agentName": "a", "instructions": "{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let (status, json) = t
        .send(
            t.http
                .post(t.url("/api/pool/claim"))
                .bearer_auth(&t.key)
                .body(huge),
        )
        .await;
    assert_error(
        status,
        &json,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    assert_eq!(
        t.count(Idle).await,
        3,
        "a rejected claim consumed an instance"
    );

    for (path, body) in [
        ("/api/pool/drain", json!({})),
        ("/api/pool/drain", json!({"count": 0})),
        ("/api/pool/drain", json!({"count": -1})),
        ("/api/pool/drain", json!({"count": "2"})),
        ("/api/pool/replenish", json!({"count": 101})),
        ("/api/pool/replenish", json!({"count": 1.5})),
    ] {
        let (status, json) = t.post(path, body.clone()).await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(t.count(Idle).await, 3);
    assert_eq!(t.count(Starting).await, 0);

    let (status, body) = t.get("/api/pool/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t.delete("/api/pool/instances/unknownid123").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t.delete("/api/pool/instances/..%2F..%2Fetc").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = t
        .send(t.http.put(t.url("/api/pool/claim")).bearer_auth(&t.key))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn nothing_idle_is_503_with_retry_after() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    let response = t
        .http
        .post(t.url("/api/pool/claim"))
        .bearer_auth(&t.key)
        .json(&json!({"agentName": "a", "instructions": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "no_idle_instance");
}

/// Status, content type and body of a reply, whatever the body is: a plain-text rejection must
/// fail an assertion here, not a JSON parse in the harness.
async fn reply(request: reqwest::RequestBuilder) -> (StatusCode, String, String) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, response.text().await.unwrap())
}

/// A JSON 400 with this code whose message gives away nothing of the server's insides.
async fn assert_json_400(request: reqwest::RequestBuilder, code: &str, what: &str) {
    let (status, content_type, text) = reply(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {text}");
    assert_eq!(content_type, "application/json", "{what}: {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_error(status, &body, StatusCode::BAD_REQUEST, code);
    let message = body["error"].as_str().unwrap();
    for internal in [
        "String",
        "u32",
        "deserialize",
        "Deserialize",
        "axum",
        "serde",
        "%FF",
        "\u{fffd}",
    ] {
        assert!(
            !message.contains(internal),
            "{what}: the message shows {internal:?}: {message}"
        );
    }
}

/// Inserts `n` `starting` rows (no resources: listings only read rows) in one statement, so they
/// share one `created_at` and only the id orders them.
async fn reserve(t: &TestPool, n: u32) {
    let rows = agentpool_core::instances::reserve(
        &t.pool.db,
        n,
        100,
        &t.pool.settings.pool.pool_name_prefix,
        None,
        agentpool_core::domain::Actor::Operator,
        "listing test",
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), n as usize);
}

/// Pages through `path` with `limit`, returning every page's body.
async fn pages(t: &TestPool, path: &str, limit: u32, public: bool) -> Vec<Value> {
    let mut bodies = Vec::new();
    let mut after: Option<String> = None;
    loop {
        assert!(bodies.len() <= 10, "paging {path} does not end");
        let mut url = format!("{path}?limit={limit}");
        if let Some(cursor) = &after {
            url.push_str(&format!("&after={cursor}"));
        }
        let (status, body) = if public {
            t.get_public(&url).await
        } else {
            t.get(&url).await
        };
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        let next = body
            .get("nextCursor")
            .unwrap_or_else(|| panic!("{url}: no nextCursor: {body}"));
        after = match next {
            Value::Null => None,
            Value::String(cursor) => Some(cursor.clone()),
            other => panic!("{url}: nextCursor is {other}"),
        };
        bodies.push(body);
        if after.is_none() {
            return bodies;
        }
    }
}

#[tokio::test]
async fn listings_page_through_every_instance_once_in_order() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    // Two batches: ties on created_at within a batch, and a later created_at after it.
    reserve(&t, 4).await;
    reserve(&t, 3).await;
    let expected: Vec<String> =
        sqlx::query_scalar("SELECT id FROM instances ORDER BY created_at, id")
            .fetch_all(&t.pool.db)
            .await
            .unwrap();
    assert_eq!(expected.len(), 7);
    // Agent names that say where each row stands, so the public view (which shows no ids) can
    // be checked for order too; instructions the public view must not show.
    sqlx::query(
        "UPDATE instances SET agent_name = 'agent-' || id, instructions = 'secret plan ' || id",
    )
    .execute(&t.pool.db)
    .await
    .unwrap();

    let status_pages = pages(&t, "/api/pool/status", 3, false).await;
    assert_eq!(status_pages.len(), 3, "7 instances in pages of 3");
    let mut seen = Vec::new();
    for page in &status_pages {
        assert_eq!(page["counts"]["starting"], 7, "{page}");
        let instances = page["instances"].as_array().unwrap();
        assert!(instances.len() <= 3, "{page}");
        seen.extend(
            instances
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string()),
        );
        assert!(!page.to_string().contains("gatewayToken"), "{page}");
    }
    assert_eq!(seen, expected, "/api/pool/status pages");
    assert!(status_pages[0]["instances"][0]["instructions"]
        .as_str()
        .unwrap()
        .starts_with("secret plan "));

    let names: Vec<String> = expected.iter().map(|id| format!("agent-{id}")).collect();
    for public in [true, false] {
        let agent_pages = pages(&t, "/api/pool/agents", 3, public).await;
        assert_eq!(agent_pages.len(), 3);
        let mut seen = Vec::new();
        for page in &agent_pages {
            let starting = page["starting"].as_array().unwrap();
            assert!(starting.len() <= 3, "{page}");
            assert_eq!(
                page["idle"],
                json!([]),
                "the groups keep their shape: {page}"
            );
            for agent in starting {
                seen.push(agent["agentName"].as_str().unwrap().to_string());
                assert_eq!(
                    agent.get("instructions").is_some(),
                    !public,
                    "public: {public}: {agent}"
                );
            }
            if public {
                assert!(!page.to_string().contains("secret plan"), "{page}");
            }
        }
        // The public listing orders rows made together by a hash, not by id (its cursors name
        // no id): every one once, in its own order.
        if public {
            seen.sort();
            let mut names = names.clone();
            names.sort();
            assert_eq!(seen, names, "/api/pool/agents pages (public)");
        } else {
            assert_eq!(seen, names, "/api/pool/agents pages (operator)");
        }
    }

    // A page exactly as large as what is left ends the listing; the default covers it all.
    let (_, body) = t.get("/api/pool/status?limit=7").await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 7);
    assert_eq!(body["nextCursor"], Value::Null);
    let (_, body) = t.get("/api/pool/status").await;
    assert_eq!(body["instances"].as_array().unwrap().len(), 7);
    assert_eq!(body["nextCursor"], Value::Null);
    let (status, body) = t.get_public("/api/pool/agents?limit=5000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["starting"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn listings_refuse_bad_limits_and_cursors() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0")], &[]).await;
    reserve(&t, 2).await;
    let (_, first) = t.get("/api/pool/status?limit=1").await;
    let cursor = first["nextCursor"].as_str().unwrap().to_string();
    for query in [
        "limit=0",
        "limit=5001",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=99999999999999999999",
        "after=",
        "after=not-a-cursor",
        "after=zz",
        "after=313a",
        "after=783a616263",
        "after=313a2f",
        &format!("after={cursor}0"),
        &format!("after={cursor}00"),
        &format!("after={cursor}2f"),
    ] {
        for path in ["/api/pool/status", "/api/pool/agents"] {
            let url = t.url(&format!("{path}?{query}"));
            assert_json_400(
                t.http.get(&url).bearer_auth(&t.key),
                "invalid_request",
                &url,
            )
            .await;
        }
        let url = t.url(&format!("/api/pool/agents?{query}"));
        assert_json_400(t.http.get(&url), "invalid_request", &url).await;
    }
    let (status, body) = t.get(&format!("/api/pool/status?after={cursor}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["instances"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_paths_and_queries_get_json_400() {
    let t = TestPool::start().await;
    for path in [
        "/api/pool/instances/%FF",
        "/api/pool/crashed/%FF",
        "/api/pool/instances/%C3%28",
    ] {
        assert_json_400(
            t.http.delete(t.url(path)).bearer_auth(&t.key),
            "invalid_request",
            path,
        )
        .await;
    }
    for path in [
        "/api/pool/replenish/stream?count=1&count=2",
        "/api/pool/status?limit=a&limit=b",
        "/api/pool/agents?after=a&after=b",
    ] {
        assert_json_400(
            t.http.get(t.url(path)).bearer_auth(&t.key),
            "invalid_request",
            path,
        )
        .await;
    }
    let path = format!("/api/pool/replenish/stream?count=1&count=2&key={}", t.key);
    assert_json_400(
        t.http.get(t.url(&path)),
        "invalid_request",
        "SSE, key in query",
    )
    .await;
    assert_json_400(
        t.http.get(t.url("/api/pool/agents?limit=a&limit=b")),
        "invalid_request",
        "public agents",
    )
    .await;
    assert_eq!(
        t.count(Starting).await,
        0,
        "a refused stream created instances"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let t = TestPool::start().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (status, body) = t
            .send(
                t.http
                    .get(t.url("/api/pool/status"))
                    .header("authorization", format!("{scheme} {}", t.key)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
        let (status, body) = t
            .send(
                t.http
                    .get(t.url("/api/pool/status"))
                    .header("authorization", format!("{scheme} wrong-key-wrong-key")),
            )
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (status, body) = t
        .send(
            t.http
                .get(t.url("/api/pool/agents"))
                .header("authorization", format!("bearer {}", t.key)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["idle"].is_array(),
        "the operator's view with a lowercase scheme: {body}"
    );
    for header in [
        format!("Bearer{}", t.key),
        format!("Bearerx {}", t.key),
        format!("Basic {}", t.key),
    ] {
        let (status, body) = t
            .send(
                t.http
                    .get(t.url("/api/pool/status"))
                    .header("authorization", header.clone()),
            )
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

/// Found by the fuzzer: serde reads a struct from an array of its fields, so `[null, null]` was
/// taken as `{}` by `PUT /api/pool/settings` (200) and an array was a claim. Bodies are objects.
#[tokio::test]
async fn bodies_that_are_not_json_objects_are_refused() {
    let t = TestPool::start().await;
    let send = |method: reqwest::Method, path: &str, body: &'static str| {
        t.http
            .request(method, t.url(path))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .body(body)
    };
    for (method, path, body) in [
        (reqwest::Method::PUT, "/api/pool/settings", "[null, null]"),
        (reqwest::Method::PUT, "/api/pool/settings", "[1, 2]"),
        (
            reqwest::Method::POST,
            "/api/pool/claim",
            r#"["array-agent", "instructions", null, null, null]"#,
        ),
        (reqwest::Method::POST, "/api/pool/drain", "[1]"),
        (reqwest::Method::POST, "/api/pool/replenish", "[1]"),
        (reqwest::Method::POST, "/api/pool/drain", "3"),
    ] {
        let (status, reply) = t.send(send(method.clone(), path, body)).await;
        assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            reply["error"], "the body must be a JSON object",
            "{method} {path} {body}"
        );
    }
    // Not JSON at all is still `bad_json`.
    let (status, reply) = t
        .send(send(reqwest::Method::PUT, "/api/pool/settings", "[1,"))
        .await;
    assert_error(status, &reply, StatusCode::BAD_REQUEST, "bad_json");
    let (_, settings) = t.get("/api/pool/settings").await;
    assert_eq!(settings["source"], "environment", "{settings}");
    assert_eq!(t.count(Claiming).await + t.count(Claimed).await, 0);
}

/// An optional body may be `null`, as the API document says: `POST /api/pool/replenish` with
/// `null` is a tick, like no body.
#[tokio::test]
async fn a_null_optional_body_is_no_body() {
    let t = TestPool::start().await;
    let (status, report) = t
        .send(
            t.http
                .post(t.url("/api/pool/replenish"))
                .bearer_auth(&t.key)
                .body("null"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["skipped"], false, "{report}");
    assert_eq!(
        report["created"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
}
