//! The dashboard over plain HTTP: the pool's size at run time, sessions and their CSRF checks,
//! logout on every replica, the growing delay after wrong keys, escaping and security headers.
//! (`dashboard.rs` drives the same pages in a real browser.)

use agentpool_core::domain::InstanceStatus::*;
use agentpool_tests::{wait_until, TestPool};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{redirect, Client, StatusCode};
use serde_json::{json, Value};

/// A client that shows redirects instead of following them.
fn browserless() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

async fn login_form(
    http: &Client,
    base: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http
        .post(format!("{base}/admin/login"))
        .form(&[("key", key), ("next", "/admin")]);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The `name=value` of the session cookie a login set.
fn session_cookie(headers: &HeaderMap) -> String {
    let set = headers
        .get(SET_COOKIE)
        .expect("a Set-Cookie")
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().to_string()
}

async fn login(t: &TestPool, base: &str) -> String {
    let response = login_form(&browserless(), base, &t.key, &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    session_cookie(response.headers())
}

async fn page(base: &str, path: &str, cookie: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut request = browserless().get(format!("{base}{path}"));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.text().await.unwrap())
}

fn csrf_of(html: &str) -> String {
    let (_, rest) = html
        .split_once("name=\"csrf-token\" content=\"")
        .expect("the page has a CSRF token");
    rest.split('"').next().unwrap().to_string()
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}")),
    )
}

#[tokio::test]
async fn pool_size_is_validated_stored_recorded_and_used_by_every_replica_and_the_tick() {
    let t = TestPool::with(
        &[
            ("POOL_MIN_IDLE", "1"),
            ("POOL_MAX_TOTAL", "5"),
            ("POOL_MAX_TOTAL_CAP", "8"),
        ],
        &[],
    )
    .await;
    let (status, body) = t.get("/api/pool/settings").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            &body["minIdle"],
            &body["maxTotal"],
            &body["maxTotalCap"],
            &body["source"]
        ),
        (&json!(1), &json!(5), &json!(8), &json!("environment"))
    );

    let url = t.url("/api/pool/settings");
    let bad: [(&str, &str); 7] = [
        (r#"{"minIdle": -1}"#, "invalid_request"),
        (r#"{"minIdle": "three"}"#, "invalid_request"),
        (r#"{"minIdle": 1.5}"#, "invalid_request"),
        (r#"{"maxTotal": 9}"#, "invalid_request"),
        (r#"{"minIdle": 6}"#, "invalid_request"),
        (r#"{"minIdle": 1, "other": 2}"#, "invalid_request"),
        ("not json", "bad_json"),
    ];
    for (body, code) in bad {
        let (status, reply) = send(
            t.http
                .put(&url)
                .bearer_auth(&t.key)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["code"], code, "{body}: {reply}");
    }
    let (status, _) = send(t.http.put(&url).json(&json!({"minIdle": 2}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, unchanged) = t.get("/api/pool/settings").await;
    assert_eq!(unchanged["source"], "environment", "{unchanged}");

    let (status, body) = send(
        t.http
            .put(&url)
            .bearer_auth(&t.key)
            .json(&json!({"minIdle": 4, "maxTotal": 6})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["minIdle"], &body["maxTotal"], &body["source"]),
        (&json!(4), &json!(6), &json!("operator"))
    );
    // Another replica, and the public info, see the new size at once.
    let replica = t.replica().await;
    let (_, other) = send(
        t.http
            .get(format!("{replica}/api/pool/settings"))
            .bearer_auth(&t.key),
    )
    .await;
    assert_eq!(
        (&other["minIdle"], &other["maxTotal"]),
        (&json!(4), &json!(6))
    );
    let (_, info) = t.get_public("/api/pool/info").await;
    assert_eq!(
        (&info["minIdle"], &info["maxTotal"]),
        (&json!(4), &json!(6))
    );

    // The tick fills to the stored minimum, not the environment's.
    let report = t.tick().await;
    assert_eq!(report.created.len(), 4, "{report:?}");
    // A maximum below the live count stops creation, a direct request included.
    let (status, _) = send(
        t.http
            .put(&url)
            .bearer_auth(&t.key)
            .json(&json!({"minIdle": 2, "maxTotal": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = t.post("/api/pool/replenish", json!({"count": 3})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], json!([]), "{body}");
    assert!(t.tick().await.created.is_empty());

    let events: Vec<(String, Value, String)> =
        sqlx::query_as("SELECT kind, detail, actor FROM pool_events ORDER BY id")
            .fetch_all(&t.pool.db)
            .await
            .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "size_changed");
    assert_eq!(events[0].1["from"], json!({"minIdle": 1, "maxTotal": 5}));
    assert_eq!(events[0].1["to"], json!({"minIdle": 4, "maxTotal": 6}));
    assert_eq!(events[0].1["via"], "api");
    assert_eq!(events[1].1["from"], json!({"minIdle": 4, "maxTotal": 6}));
    assert_eq!(events[0].2, "operator");
}

#[tokio::test]
async fn a_session_stands_in_for_the_key_and_its_writes_need_the_csrf_token() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "2")], &[]).await;
    t.fill(2).await;
    let http = browserless();

    let response = login_form(&http, &t.base, &t.key, &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/admin");
    let set = response.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(&t.key), "{set}");
    let over_https = login_form(&http, &t.base, &t.key, &[("x-forwarded-proto", "https")]).await;
    assert!(over_https.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("; Secure"));

    let cookie = session_cookie(response.headers());
    let (status, body) = send(
        http.get(t.url("/api/pool/status"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, html) = page(&t.base, "/admin", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&html);

    let drain = || {
        http.post(t.url("/api/pool/drain"))
            .header("cookie", &cookie)
            .json(&json!({"count": 1}))
    };
    let (status, body) = send(drain()).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("csrf_failed"))
    );
    let (status, body) = send(drain().header("x-csrf-token", "0".repeat(64))).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("csrf_failed"))
    );
    let (status, body) = send(
        drain()
            .header("x-csrf-token", &csrf)
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("cross_origin"))
    );
    assert_eq!(t.count(Idle).await, 2, "no refused write drained anything");
    let (status, body) = send(
        drain()
            .header("x-csrf-token", &csrf)
            .header("origin", &t.base),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["drained"], 1);

    // The SSE stream creates instances: without the token in its URL, a session may not open it.
    let (status, body) = send(
        http.get(t.url("/api/pool/replenish/stream?count=1"))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("csrf_failed"))
    );
    let stream = http
        .get(t.url(&format!("/api/pool/replenish/stream?count=1&csrf={csrf}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let events = stream.text().await.unwrap();
    assert!(
        events.contains("\"type\":\"complete\"") && events.contains("\"created\":1"),
        "{events}"
    );

    // A cookie whose MAC was tampered with is no session.
    let mut forged = cookie.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let (status, _) = send(
        http.get(t.url("/api/pool/status"))
            .header("cookie", &forged),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The API key is in no page and no script.
    for path in [
        "/",
        "/admin",
        "/admin/lite",
        "/assets/common.js",
        "/assets/admin.js",
        "/assets/lite.js",
        "/assets/public.js",
    ] {
        let (status, _, body) = page(&t.base, path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.contains(&t.key), "{path} shows the API key");
    }
}

#[tokio::test]
async fn logout_ends_the_session_on_every_replica() {
    let t = TestPool::start().await;
    let other = t.replica().await;
    let cookie = login(&t, &t.base).await;
    let status_on = |base: String, cookie: String| async move {
        browserless()
            .get(format!("{base}/api/pool/status"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(
        status_on(other.clone(), cookie.clone()).await,
        StatusCode::OK
    );

    let (_, _, html) = page(&t.base, "/admin", Some(&cookie)).await;
    let csrf = csrf_of(&html);
    // Without its token, a logout is refused: another site cannot end a session either.
    let refused = browserless()
        .post(format!("{other}/admin/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        status_on(t.base.clone(), cookie.clone()).await,
        StatusCode::OK
    );

    let out = browserless()
        .post(format!("{other}/admin/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // Logged out on the other replica; the first one no longer takes the cookie either.
    assert_eq!(
        status_on(t.base.clone(), cookie.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let (_, _, html) = page(&t.base, "/admin", Some(&cookie)).await;
    assert!(html.contains("action=\"/admin/login\""), "{html}");
}

#[tokio::test]
async fn wrong_keys_earn_a_growing_delay_per_client_across_replicas() {
    let t = TestPool::with(
        &[
            ("CLIENT_IP_HEADER", "x-forwarded-for"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
        &[],
    )
    .await;
    let other = t.replica().await;
    let http = browserless();
    // A proxy appends the address it saw; what comes before is the client's to forge.
    let from = |client: &'static str| [("x-forwarded-for", client)];
    let attempts = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT attempts FROM admin_login_attempts WHERE client = '203.0.113.1'",
        )
        .fetch_optional(&t.pool.db)
        .await
        .unwrap()
    };
    // Time passing, without waiting for it.
    let time_passes = || async {
        sqlx::query("UPDATE admin_login_attempts SET blocked_until = now() - interval '1 second'")
            .execute(&t.pool.db)
            .await
            .unwrap();
    };

    let first = login_form(&http, &t.base, "wrong-key-0123456789", &from("203.0.113.1")).await;
    assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
    let text = first.text().await.unwrap();
    assert!(
        text.contains("Wrong key") && !text.contains("Wait"),
        "{text}"
    );
    let second = login_form(
        &http,
        &other,
        "wrong-key-0123456789",
        &from("198.51.100.7, 203.0.113.1"),
    )
    .await;
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED);
    assert!(second
        .text()
        .await
        .unwrap()
        .contains("Wait 1 s before the next try"));
    // Now even the right key is not looked at, on either replica.
    let blocked = login_form(&http, &t.base, &t.key, &from("203.0.113.1")).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(blocked.headers()["retry-after"], "1");
    assert!(blocked
        .text()
        .await
        .unwrap()
        .contains("Too many wrong keys"));
    assert_eq!(attempts().await, Some(2));
    // Another client is not held back.
    let elsewhere = login_form(&http, &other, &t.key, &from("203.0.113.2")).await;
    assert_eq!(elsewhere.status(), StatusCode::SEE_OTHER);

    time_passes().await;
    let third = login_form(&http, &other, "wrong-key-0123456789", &from("203.0.113.1")).await;
    assert!(third
        .text()
        .await
        .unwrap()
        .contains("Wait 2 s before the next try"));
    time_passes().await;
    let right = login_form(&http, &t.base, &t.key, &from("203.0.113.1")).await;
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(attempts().await, None, "a right key clears the record");
}

#[tokio::test]
async fn pages_escape_agent_names_load_no_inline_script_and_keep_secrets_out() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1")], &[]).await;
    t.fill(1).await;
    let name = "<script>alert(1)</script>";
    let (status, claim) = t.claim(name).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let cookie = login(&t, &t.base).await;
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";

    let (status, headers, public) = page(&t.base, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(public.contains(escaped), "{public}");
    for secret in [
        t.key.as_str(),
        claim["gatewayToken"].as_str().unwrap(),
        claim["gatewayUrl"].as_str().unwrap(),
        claim["inviteUrl"].as_str().unwrap(),
    ] {
        assert!(!public.contains(secret), "the public page shows {secret}");
    }

    for path in ["/", "/admin", "/admin/lite"] {
        let (_, _, html) = page(&t.base, path, Some(&cookie)).await;
        assert!(!html.contains(name), "{path} has the name as markup");
        for tag in html.split("<script").skip(1) {
            assert!(tag.starts_with(" src=\"/assets/"), "{path}: inline script");
        }
    }
    let (_, _, dashboard) = page(&t.base, "/admin", Some(&cookie)).await;
    assert!(dashboard.contains(escaped));
    assert!(dashboard.contains(claim["inviteUrl"].as_str().unwrap()));
}

#[tokio::test]
async fn qr_codes_are_for_operators_and_bounded() {
    let t = TestPool::start().await;
    let path = "/admin/qr.svg?text=https%3A%2F%2Fexample.test%2Fv2%3Fi%3Dabc";
    let response = t
        .http
        .get(t.url(path))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    assert!(response.text().await.unwrap().contains("<svg"));
    let (status, _) = t.get_public(path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = t
        .get(&format!("/admin/qr.svg?text={}", "a".repeat(3000)))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = t.get("/admin/qr.svg").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The sizing policy through the API: refused with a 400 naming the field when it is wrong
/// (overlapping windows, an unknown zone, a cron that is not a window, a window above maxTotal),
/// stored and shown when right, planned with by the tick (its target and why in the report,
/// `/metrics` and the dashboard's chart), and followed down: once the window is gone and the
/// cool-down is zero, the idle surplus is destroyed oldest first.
#[tokio::test]
async fn sizing_policy_is_validated_stored_planned_with_and_followed_down() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "1"), ("POOL_MAX_TOTAL", "6")], &[]).await;
    let url = t.url("/api/pool/settings");
    let put = |body: Value| t.send(t.http.put(&url).bearer_auth(&t.key).json(&body));
    let window = |cron: &str, min_idle: u32| json!({"cron": cron, "minIdle": min_idle});
    let bad = [
        (
            json!({"sizing": {"schedules": [window("* 8-17 * * 1-5", 3), window("* 17-20 * * *", 2)]}}),
            "overlaps sizing.schedules[0].cron",
        ),
        (
            json!({"sizing": {"timezone": "Mars/Olympus"}}),
            "sizing.timezone",
        ),
        (
            json!({"sizing": {"schedules": [window("30 8 * * *", 2)]}}),
            "sizing.schedules[0].cron",
        ),
        (
            json!({"sizing": {"schedules": [window("* 8 * * *", 7)]}}),
            "maxTotal",
        ),
        (json!({"sizing": {"windows": []}}), "unknown field"),
    ];
    for (body, says) in bad {
        let (status, reply) = put(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["code"], "invalid_request", "{reply}");
        assert!(
            reply["error"].as_str().unwrap_or("").contains(says),
            "{body}: {reply}"
        );
    }
    let (_, unchanged) = t.get("/api/pool/settings").await;
    assert_eq!(unchanged["source"], "environment", "{unchanged}");
    assert_eq!(unchanged["sizing"]["schedules"], json!([]), "{unchanged}");
    // Documented: the body, the policy and the tick's target.
    let (_, doc) = t.get_public("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    for name in ["SizingPolicy", "ScheduleWindow", "DemandReaction", "Target"] {
        assert!(
            schemas.get(name).is_some(),
            "{name} missing from the OpenAPI document"
        );
    }
    assert!(schemas["SizeBody"]["properties"].get("sizing").is_some());

    // A window covering every hour, in a zone with a half-hour offset.
    let policy = json!({
        "timezone": "Asia/Kolkata",
        "schedules": [window("* * * * *", 3)],
        "demand": {"bootSeconds": 90, "factor": 1.5},
        "cooldownSeconds": 0,
    });
    let (status, saved) = put(json!({"sizing": policy})).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["sizing"], policy, "{saved}");
    assert_eq!(saved["minIdle"], 1);
    // Lowering maxTotal below a kept window is refused too.
    let (status, reply) = put(json!({"maxTotal": 2})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");

    let report = t.tick().await;
    let target = report.target.clone().expect("a target");
    assert_eq!((target.min_idle, target.base), (3, 1), "{target:?}");
    assert_eq!(target.window.as_deref(), Some("* * * * *"));
    assert!(target.reason.contains("Asia/Kolkata"), "{}", target.reason);
    assert_eq!(report.created.len(), 3, "{report:?}");
    t.fill(3).await;
    let metrics = t
        .http
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("agentpool_pool_target_idle 3"),
        "{metrics}"
    );
    let chart = t
        .http
        .get(t.url("/admin/sizing.svg"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(chart.status(), StatusCode::OK);
    assert_eq!(chart.headers()["content-type"], "image/svg+xml");
    let svg = chart.text().await.unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("claims per hour"),
        "{svg}"
    );
    // The claim-less day has no bars; the ticks' samples draw the idle and target lines.
    assert_eq!(svg.matches("<path").count(), 1 + 2 + 2, "{svg}");

    // The window gone: the base (1) applies and, with no cool-down, two idle agents go, oldest
    // first, through the fenced transition.
    let (status, _) = put(json!({"sizing": {"cooldownSeconds": 0}})).await;
    assert_eq!(status, StatusCode::OK);
    let idle_before = t.ids(Idle).await;
    let report = t.tick().await;
    let shrunk: Vec<&str> = report
        .transitions
        .iter()
        .filter(|m| m.reason.starts_with("surplus"))
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(
        shrunk,
        idle_before[..2]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(report.destroyed.len(), 2, "{report:?}");
    assert_eq!(t.count(Idle).await, 1);
}

/// Demand the pool did not meet counts: a claim that finds nothing idle is recorded with its time,
/// and the next tick's demand reaction covers it (1 claim in 5 minutes × 600 s boot = 2).
#[tokio::test]
async fn a_claim_that_misses_raises_the_demand_target() {
    let t = TestPool::with(&[("POOL_MIN_IDLE", "0"), ("POOL_MAX_TOTAL", "6")], &[]).await;
    let (status, saved) = t
        .send(
            t.http
                .put(t.url("/api/pool/settings"))
                .bearer_auth(&t.key)
                .json(&json!({"sizing": {"demand": {"bootSeconds": 600, "factor": 1.0}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    let report = t.tick().await;
    assert_eq!(report.target.as_ref().map(|t| t.min_idle), Some(0));
    let (status, body) = t.claim("early").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let report = t.tick().await;
    let target = report.target.clone().expect("a target");
    assert_eq!((target.min_idle, target.demand), (2, 2), "{target:?}");
    assert!(
        target.reason.starts_with("demand: 2 (1 claims in 5 min"),
        "{}",
        target.reason
    );
    assert_eq!(report.created.len(), 2, "{report:?}");
}

/// `GET /api/pool/status` on `base` with `key`, through the trusted proxy, from `client`.
async fn status_from(t: &TestPool, base: &str, key: &str, client: &str) -> StatusCode {
    t.http
        .get(format!("{base}/api/pool/status"))
        .bearer_auth(key)
        .header("x-forwarded-for", client)
        // Bounded, so that a request stuck behind the lock below fails the test instead of
        // hanging it.
        .timeout(std::time::Duration::from_secs(20))
        .send()
        .await
        .map(|response| response.status())
        .unwrap_or(StatusCode::GATEWAY_TIMEOUT)
}

/// A record of wrong keys that makes `client` wait an hour, written as another replica would.
async fn record_elsewhere(t: &TestPool, client: &str) {
    sqlx::query(
        "INSERT INTO admin_login_attempts (client, attempts, blocked_until)
         VALUES ($1, 5, now() + interval '1 hour')",
    )
    .bind(client)
    .execute(&t.pool.db)
    .await
    .unwrap();
}

/// How many connections follow the records of wrong keys.
async fn followers(t: &TestPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = $1",
    )
    .bind(agentpool_core::sessions::FOLLOWER_NAME)
    .fetch_one(&t.pool.db)
    .await
    .unwrap()
}

// A replica that follows the records of wrong keys lets a right key in without a statement when
// its client has none (the claim's third statement, gone); a record made anywhere, even while the
// replica's connection is lost, reaches it; its own wrong keys count at once.
#[tokio::test]
async fn a_following_replica_reads_no_record_for_a_right_key_unless_its_client_has_one() {
    let t = TestPool::with(
        &[("POOL_MIN_IDLE", "0"), ("TRUSTED_PROXIES", "127.0.0.1")],
        &[],
    )
    .await;
    let (follower, records) = t.following_replica().await;
    let wait = std::time::Duration::from_secs(30);

    // The table locked: any read of a record would wait for as long as the lock is held.
    let mut lock = t.pool.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE admin_login_attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    assert_eq!(
        status_from(&t, &follower, &t.key, "192.0.2.1").await,
        StatusCode::OK
    );
    lock.rollback().await.unwrap();

    // A record made elsewhere (another replica's counting) is heard, and so is its forgetting.
    record_elsewhere(&t, "192.0.2.7").await;
    wait_until(wait, || async {
        status_from(&t, &follower, &t.key, "192.0.2.7").await == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    sqlx::query("DELETE FROM admin_login_attempts WHERE client = $1")
        .bind("192.0.2.7")
        .execute(&t.pool.db)
        .await
        .unwrap();
    wait_until(wait, || async {
        status_from(&t, &follower, &t.key, "192.0.2.7").await == StatusCode::OK
    })
    .await;

    // Its own wrong key: the right key right after reads the record, heard or not (the record
    // made to last, so that the answer does not hang on how quickly the two requests come).
    let wrong = status_from(&t, &follower, "wrong-key-0123456789abcdef", "192.0.2.9").await;
    assert_eq!(wrong, StatusCode::UNAUTHORIZED);
    sqlx::query(
        "UPDATE admin_login_attempts SET blocked_until = now() + interval '1 hour'
          WHERE client = $1",
    )
    .bind("192.0.2.9")
    .execute(&t.pool.db)
    .await
    .unwrap();
    assert_eq!(
        status_from(&t, &follower, &t.key, "192.0.2.9").await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Its connection cut, and a record made at once (its announcement lost with the connection):
    // the replica reads while it does not know, and knows again, the record included, once it
    // follows anew.
    assert_eq!(followers(&t).await, 1);
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = $1",
    )
    .bind(agentpool_core::sessions::FOLLOWER_NAME)
    .execute(&t.pool.db)
    .await
    .unwrap();
    record_elsewhere(&t, "192.0.2.8").await;
    wait_until(wait, || async {
        status_from(&t, &follower, &t.key, "192.0.2.8").await == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    wait_until(wait, || async {
        followers(&t).await == 1 && records.known()
    })
    .await;
    assert_eq!(
        status_from(&t, &follower, &t.key, "192.0.2.8").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
