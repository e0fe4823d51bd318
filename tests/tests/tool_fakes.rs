//! The OpenRouter, AgentMail and Telnyx fakes, spoken to in raw HTTP (no client in between), so
//! the tests of the real clients can trust what they answer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use agentpool_tests::fakes::{
    AgentMailConfig, AgentMailFake, Controls, Fault, OpenRouterConfig, OpenRouterFake, Scope,
    TelnyxConfig, TelnyxFake,
};
use agentpool_tests::wait_until;

/// A bare REST client for one fake: base URL and Bearer token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An answer: status, headers and the body as JSON (`Null` when empty, a string when not
/// JSON).
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Api {
    fn new(base: String, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
            token: token.into(),
        }
    }

    fn request(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        match body {
            Some(body) => request.json(&body),
            None => request,
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let response = self
            .request(method, path, body)
            .send()
            .await
            .expect("a reply");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        // A proxy's HTML error page is kept as a string.
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PATCH, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }
}

fn str_of(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// OpenRouter

async fn openrouter(page_size: usize) -> (OpenRouterFake, Api) {
    let fake = OpenRouterFake::start(OpenRouterConfig {
        page_size,
        ..OpenRouterConfig::default()
    })
    .await;
    let api = Api::new(fake.url(), fake.management_key());
    (fake, api)
}

/// The hash of a new key.
async fn create_key(api: &Api, name: &str) -> String {
    let reply = api.post("/keys", json!({"name": name})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    str_of(&reply.body["data"]["hash"])
}

#[tokio::test]
async fn openrouter_keys_are_created_patched_and_deleted() {
    let (fake, api) = openrouter(100).await;
    let reply = api
        .post(
            "/keys",
            json!({"name": "pool-a", "limit": 5.0, "limit_reset": "monthly"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let data = &reply.body["data"];
    let hash = str_of(&data["hash"]);
    assert!(hash.len() >= 32 && hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(data["name"], "pool-a");
    assert_eq!(data["limit"], 5.0);
    assert_eq!(data["limit_reset"], "monthly");
    assert_eq!(data["disabled"], false);
    assert_eq!(data["usage"], 0.0);
    assert!(data["created_at"].is_string());
    let secret = str_of(&reply.body["key"]);
    assert!(secret.starts_with("sk-or-v1-"), "{secret}");
    assert_eq!(fake.key(&hash).expect("kept").key, secret);

    // The secret is shown only by the create.
    let reply = api.get(&format!("/keys/{hash}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["data"]["hash"], hash.as_str());
    assert!(reply.body.get("key").is_none());
    assert!(!reply.body.to_string().contains(&secret));

    // Names are not unique: a second create is a second key.
    let second = create_key(&api, "pool-a").await;
    assert_ne!(second, hash);
    assert_eq!(fake.keys().len(), 2);

    let reply = api
        .patch(&format!("/keys/{hash}"), json!({"limit": 9.5}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["data"]["limit"], 9.5);
    assert_eq!(reply.body["data"]["limit_reset"], "monthly");
    let reply = api
        .patch(&format!("/keys/{hash}"), json!({"disabled": true}))
        .await;
    assert_eq!(reply.body["data"]["disabled"], true);
    assert_eq!(fake.key(&hash).map(|k| k.disabled), Some(true));

    // Disabled keys are listed only when asked for.
    let listed = |body: &Value| -> BTreeSet<String> {
        body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|k| str_of(&k["hash"]))
            .collect()
    };
    assert_eq!(
        listed(&api.get("/keys").await.body),
        BTreeSet::from([second.clone()])
    );
    assert_eq!(
        listed(&api.get("/keys?include_disabled=true").await.body),
        BTreeSet::from([hash.clone(), second.clone()])
    );

    let reply = api.delete(&format!("/keys/{hash}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"data": {"success": true}}));
    assert!(fake.key(&hash).is_none());

    let not_found = json!({"error": {"code": 404, "message": "Key not found"}});
    for reply in [
        api.delete(&format!("/keys/{hash}")).await,
        api.get(&format!("/keys/{hash}")).await,
        api.patch(&format!("/keys/{hash}"), json!({"limit": 1}))
            .await,
    ] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.body, not_found);
    }
}

#[tokio::test]
async fn openrouter_lists_keys_in_pages_by_offset() {
    let (_fake, api) = openrouter(3).await;
    let mut made = Vec::new();
    for i in 0..7 {
        made.push(create_key(&api, &format!("pool-{i}")).await);
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    for offset in [0, 3, 6, 9] {
        let reply = api.get(&format!("/keys?offset={offset}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        let page = reply.body["data"].as_array().expect("data").clone();
        sizes.push(page.len());
        seen.extend(page.iter().map(|k| str_of(&k["hash"])));
    }
    assert_eq!(sizes, [3, 3, 1, 0]);
    assert_eq!(seen, made, "every key once, in creation order");

    let reply = api.get("/keys?offset=-1").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"]["code"], 400);
}

#[tokio::test]
async fn openrouter_refuses_other_keys_and_bad_input() {
    let (fake, api) = openrouter(100).await;
    let stranger = Api::new(fake.url(), "sk-or-v1-not-the-management-key");
    let reply = stranger.post("/keys", json!({"name": "x"})).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"]["code"], 401);
    assert!(reply.body["error"]["message"].is_string());
    assert_eq!(fake.stats().unauthorized, 1);

    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x", "limit": "lots"}),
        json!({"name": "x", "limit_reset": "yearly"}),
    ] {
        let reply = api.post("/keys", body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.body["error"]["code"], 400, "{body}");
    }
    let reply = api.send(Method::POST, "/keys", None).await.body.to_string();
    assert!(reply.contains("name"), "{reply}");
    assert!(fake.keys().is_empty());
}

#[tokio::test]
async fn openrouter_orphans_and_credits() {
    let (fake, api) = openrouter(100).await;
    let reply = api.get("/credits").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body,
        json!({"data": {"total_credits": 100.0, "total_usage": 0.0}})
    );

    let orphan = fake.create_key_behind_our_back("pool-orphan");
    let listed = api.get("/keys").await.body;
    assert_eq!(listed["data"][0]["hash"], orphan.hash.as_str());
    assert_eq!(listed["data"][0]["name"], "pool-orphan");

    assert!(fake.set_usage(&orphan.hash, 1.25));
    let mine = create_key(&api, "pool-mine").await;
    assert!(fake.set_usage(&mine, 0.5));
    assert_eq!(api.get("/credits").await.body["data"]["total_usage"], 1.75);
    // What a deleted key spent stays spent.
    api.delete(&format!("/keys/{}", orphan.hash)).await;
    assert_eq!(api.get("/credits").await.body["data"]["total_usage"], 1.75);
}

#[tokio::test]
async fn rest_faults_rate_limit_drop_and_lost_reply() {
    let (fake, api) = openrouter(100).await;
    let create = || api.request(Method::POST, "/keys", Some(json!({"name": "pool-f"})));

    fake.inject(
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        Scope::Next { op: None, count: 1 },
    );
    let reply = api.post("/keys", json!({"name": "pool-f"})).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers[reqwest::header::RETRY_AFTER], "7");
    assert_eq!(reply.body["error"]["code"], 429);

    fake.inject(Fault::ServerError, Scope::Next { op: None, count: 1 });
    let response = create().send().await.expect("reply");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    // In the API's own shape: a 429 without Retry-After, a 500 with a JSON error.
    fake.inject(Fault::RateLimitMessage, Scope::Next { op: None, count: 1 });
    let reply = api.post("/keys", json!({"name": "pool-f"})).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.get(reqwest::header::RETRY_AFTER).is_none());
    fake.inject(Fault::GraphqlError, Scope::Next { op: None, count: 1 });
    let reply = api.post("/keys", json!({"name": "pool-f"})).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body["error"]["code"], 500);

    // The connection closes before any status line: `send` itself fails, as on a real drop.
    fake.inject(Fault::Drop, Scope::Next { op: None, count: 1 });
    let dropped = create().send().await;
    assert!(
        dropped.as_ref().is_err_and(reqwest::Error::is_request),
        "a dropped connection answered: {dropped:?}"
    );
    assert!(fake.keys().is_empty(), "none of those made a key");

    // Scoped to one op (method and path template): others pass and do not use it up.
    fake.inject(
        Fault::LostReply,
        Scope::Next {
            op: Some("POST /api/v1/keys".into()),
            count: 1,
        },
    );
    assert_eq!(api.get("/keys").await.status, StatusCode::OK);
    let lost = create().send().await;
    assert!(
        lost.as_ref().is_err_and(reqwest::Error::is_request),
        "a lost reply arrived: {lost:?}"
    );
    // ...yet the key was made: a retried create makes a second one, and only a listing by name
    // finds the first.
    assert_eq!(fake.keys().len(), 1);
    create_key(&api, "pool-f").await;
    let named: Vec<Value> = api.get("/keys").await.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|k| k["name"] == "pool-f")
        .cloned()
        .collect();
    assert_eq!(named.len(), 2);

    let stats = fake.stats();
    assert_eq!(stats.requests_for("POST /api/v1/keys"), 7);
    assert_eq!(stats.requests_for("GET /api/v1/keys"), 2);
    for kind in [
        "RateLimited",
        "ServerError",
        "RateLimitMessage",
        "GraphqlError",
        "Drop",
        "LostReply",
    ] {
        assert_eq!(stats.faults_of(kind), 1, "{kind}");
    }
}

#[tokio::test]
async fn rest_slow_answers_finish_even_when_the_client_gave_up() {
    let (fake, api) = openrouter(100).await;
    fake.inject(Fault::Slow { ms: 500 }, Scope::Next { op: None, count: 1 });
    let timed_out = api
        .request(Method::POST, "/keys", Some(json!({"name": "pool-slow"})))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(timed_out.is_err_and(|e| e.is_timeout()));
    wait_until(Duration::from_secs(5), || async { fake.keys().len() == 1 }).await;
}

// ---------------------------------------------------------------------------------------------
// AgentMail

async fn agentmail(page_size: usize) -> (AgentMailFake, Api) {
    let fake = AgentMailFake::start(AgentMailConfig {
        domain: "mail.example.test".into(),
        page_size,
        ..AgentMailConfig::default()
    })
    .await;
    let api = Api::new(fake.url(), fake.api_key());
    (fake, api)
}

#[tokio::test]
async fn agentmail_inboxes_are_created_and_deleted_by_plain_or_encoded_id() {
    let (fake, api) = agentmail(100).await;
    let reply = api
        .post(
            "/inboxes",
            json!({"username": "pool-a", "display_name": "Agent A", "client_id": "pool-a-1"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["inbox_id"], "pool-a@mail.example.test");
    assert_eq!(reply.body["display_name"], "Agent A");
    assert_eq!(reply.body["client_id"], "pool-a-1");
    assert!(reply.body["pod_id"].is_string());
    assert!(reply.body["created_at"].is_string());

    // Another domain, and one with no username: AgentMail picks a name.
    let reply = api
        .post(
            "/inboxes",
            json!({"username": "pool-b", "domain": "other.example.test"}),
        )
        .await;
    assert_eq!(reply.body["inbox_id"], "pool-b@other.example.test");
    let reply = api.post("/inboxes", json!({})).await;
    assert!(str_of(&reply.body["inbox_id"]).ends_with("@mail.example.test"));
    assert_eq!(fake.inboxes().len(), 3);

    let reply = api.get("/inboxes/pool-a%40mail.example.test").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["inbox_id"], "pool-a@mail.example.test");

    let reply = api.delete("/inboxes/pool-a%40mail.example.test").await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = api.delete("/inboxes/pool-b@other.example.test").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(fake.inboxes().len(), 1);

    let not_found = json!({"name": "NotFoundError", "message": "Inbox not found"});
    for reply in [
        api.delete("/inboxes/pool-a%40mail.example.test").await,
        api.get("/inboxes/pool-b@other.example.test").await,
    ] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.body, not_found);
    }

    let stranger = Api::new(fake.url(), "nope");
    assert_eq!(
        stranger.get("/inboxes").await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = api.post("/inboxes", json!({"username": "no spaces"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["name"], "ValidationError");
}

#[tokio::test]
async fn agentmail_a_retried_create_with_the_same_client_id_returns_the_same_inbox() {
    let (fake, api) = agentmail(100).await;
    let create = json!({"username": "pool-r", "client_id": "pool-r-attempt"});
    let first = api.post("/inboxes", create.clone()).await;
    assert_eq!(first.status, StatusCode::OK);
    let again = api.post("/inboxes", create).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body);
    assert_eq!(fake.inboxes().len(), 1);

    // The username is taken by another client id, or by none.
    for body in [
        json!({"username": "pool-r", "client_id": "someone-else"}),
        json!({"username": "POOL-R"}),
    ] {
        let reply = api.post("/inboxes", body.clone()).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{body}");
        assert_eq!(reply.body["name"], "AlreadyExistsError");
        assert!(reply.body["message"].is_string());
    }
    assert_eq!(fake.inboxes().len(), 1);

    // Once the inbox is gone, its client id makes a new one.
    api.delete("/inboxes/pool-r%40mail.example.test").await;
    let reply = api
        .post(
            "/inboxes",
            json!({"username": "pool-r", "client_id": "pool-r-attempt"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_ne!(reply.body["created_at"], Value::Null);
    assert_eq!(fake.inboxes().len(), 1);

    // An inbox made behind our back holds its username too.
    let orphan = fake.create_inbox_behind_our_back("pool-orphan");
    assert_eq!(orphan, "pool-orphan@mail.example.test");
    let reply = api
        .post(
            "/inboxes",
            json!({"username": "pool-orphan", "client_id": "c"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn agentmail_lists_inboxes_by_page_token() {
    let (fake, api) = agentmail(2).await;
    for i in 0..5 {
        fake.create_inbox_behind_our_back(&format!("pool-{i}"));
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(token) => format!("/inboxes?limit=10&page_token={token}"),
            None => "/inboxes?limit=10".to_string(),
        };
        let reply = api.get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let page = reply.body["inboxes"].as_array().expect("inboxes").clone();
        assert_eq!(reply.body["count"], page.len());
        seen.extend(page.iter().map(|i| str_of(&i["inbox_id"])));
        pages += 1;
        // A delete between two pages neither skips nor repeats the others.
        if pages == 1 {
            api.delete("/inboxes/pool-0%40mail.example.test").await;
        }
        match reply.body.get("next_page_token") {
            Some(next) => token = Some(str_of(next)),
            None => break,
        }
    }
    assert_eq!(pages, 3, "the page size caps the limit asked for");
    let expected: Vec<String> = (0..5)
        .map(|i| format!("pool-{i}@mail.example.test"))
        .collect();
    assert_eq!(seen, expected);

    let reply = api.get("/inboxes?page_token=garbage").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["name"], "ValidationError");
}

#[tokio::test]
async fn faults_and_stats_over_http_name_rest_ops_by_template() {
    let (fake, api) = agentmail(100).await;
    let http = reqwest::Client::new();
    let control = format!("{}/_fake/faults", fake.base_url());
    let response = http
        .post(&control)
        .json(&json!({
            "fault": {"kind": "RateLimited", "retryAfterSecs": 3},
            "scope": {"kind": "Next", "op": "DELETE /v0/inboxes/{inbox_id}", "count": 1},
        }))
        .send()
        .await
        .expect("inject");
    assert_eq!(response.status(), StatusCode::OK);
    let inbox = fake.create_inbox_behind_our_back("pool-h");
    assert_eq!(api.get("/inboxes").await.status, StatusCode::OK);
    let reply = api.delete(&format!("/inboxes/{inbox}")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers[reqwest::header::RETRY_AFTER], "3");
    assert_eq!(reply.body["name"], "RateLimitError");
    assert_eq!(
        api.delete(&format!("/inboxes/{inbox}")).await.status,
        StatusCode::OK
    );

    http.post(&control)
        .json(&json!({"fault": {"kind": "ServerError"}, "scope": {"kind": "Rate", "perMille": 1000, "seed": 1}}))
        .send()
        .await
        .expect("inject");
    assert_eq!(
        api.get("/inboxes").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let cleared = http.delete(&control).send().await.expect("clear");
    assert_eq!(cleared.status(), StatusCode::OK);
    assert_eq!(api.get("/inboxes").await.status, StatusCode::OK);

    let stats: Value = http
        .get(format!("{}/_fake/stats", fake.base_url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    assert_eq!(stats["requests"]["GET /v0/inboxes"], 3);
    assert_eq!(stats["requests"]["DELETE /v0/inboxes/{inbox_id}"], 2);
    assert_eq!(stats["faults"]["RateLimited"], 1);
    assert_eq!(stats["faults"]["ServerError"], 1);

    fake.create_inbox_behind_our_back("pool-s");
    let state: Value = http
        .get(format!("{}/_fake/state", fake.base_url()))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("state json");
    assert_eq!(state["inboxes"][0]["inbox_id"], "pool-s@mail.example.test");
}

// ---------------------------------------------------------------------------------------------
// Telnyx

async fn telnyx(config: TelnyxConfig) -> (TelnyxFake, Api) {
    let fake = TelnyxFake::start(config).await;
    let api = Api::new(fake.url(), fake.api_key());
    (fake, api)
}

const SEARCH: &str =
    "/available_phone_numbers?filter[country_code]=US&filter[features][]=sms&filter[limit]=20";

async fn search(api: &Api) -> Vec<String> {
    let reply = api.get(SEARCH).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|n| str_of(&n["phone_number"]))
        .collect()
}

async fn order(api: &Api, number: &str, profile: &str) -> Reply {
    api.post(
        "/number_orders",
        json!({"phone_numbers": [{"phone_number": number}], "messaging_profile_id": profile}),
    )
    .await
}

#[tokio::test]
async fn telnyx_numbers_are_searched_ordered_tagged_listed_and_released() {
    let (fake, api) = telnyx(TelnyxConfig::default()).await;
    let profile = fake.messaging_profile_id().to_string();
    let found = search(&api).await;
    assert_eq!(found.len(), 20);
    assert_eq!(found[0], "+15550100001");
    assert_eq!(fake.available_count(), 50);

    let number = found[3].clone();
    let reply = order(&api, &number, &profile).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let data = &reply.body["data"];
    assert_eq!(data["status"], "success");
    assert!(data["id"].is_string());
    assert_eq!(data["phone_numbers"][0]["phone_number"], number.as_str());
    assert_eq!(data["phone_numbers"][0]["status"], "success");
    assert!(!search(&api).await.contains(&number));
    assert_eq!(fake.available_count(), 49);

    // Tagged by the number itself; the answer carries the phone number's id.
    let reply = api
        .patch(
            &format!("/phone_numbers/{}", number.replace('+', "%2B")),
            json!({"tags": ["agentpool", "pool-a"]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let id = str_of(&reply.body["data"]["id"]);
    assert_ne!(
        json!(id),
        data["phone_numbers"][0]["id"],
        "an order line is not a number"
    );
    assert_eq!(reply.body["data"]["tags"], json!(["agentpool", "pool-a"]));
    let owned = fake.numbers();
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].id, id);
    assert_eq!(owned[0].tags, ["agentpool", "pool-a"]);
    assert_eq!(
        owned[0].messaging_profile_id.as_deref(),
        Some(profile.as_str())
    );

    // Listed by tag, a page at a time.
    let other = fake.order_behind_our_back(&["agentpool", "pool-orphan"]);
    fake.order_behind_our_back(&["someone-elses"]);
    let reply = api
        .get("/phone_numbers?filter[tag]=agentpool&page[number]=1&page[size]=1")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["data"][0]["phone_number"], number.as_str());
    assert_eq!(reply.body["data"][0]["id"], id.as_str());
    assert_eq!(reply.body["meta"]["total_pages"], 2);
    assert_eq!(reply.body["meta"]["page_number"], 1);
    let reply = api
        .get("/phone_numbers?filter[tag]=agentpool&page[number]=2&page[size]=1")
        .await;
    assert_eq!(reply.body["data"][0]["id"], other.id.as_str());
    assert_eq!(
        reply.body["data"][0]["tags"],
        json!(["agentpool", "pool-orphan"])
    );
    let reply = api
        .get("/phone_numbers?filter[tag]=agentpool&page[number]=3&page[size]=1")
        .await;
    assert_eq!(reply.body["data"], json!([]));

    let reply = api.delete(&format!("/phone_numbers/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["data"]["phone_number"], number.as_str());
    assert_eq!(reply.body["data"]["status"], "deleted");
    assert_eq!(fake.numbers().len(), 2);
    assert!(search(&api).await.contains(&number), "back on sale");

    for reply in [
        api.delete(&format!("/phone_numbers/{id}")).await,
        api.patch(&format!("/phone_numbers/{id}"), json!({"tags": []}))
            .await,
    ] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.body["errors"][0]["code"], "10005");
        assert_eq!(reply.body["errors"][0]["title"], "Resource not found");
    }
    let stranger = Api::new(fake.url(), "nope");
    let reply = stranger.get("/phone_numbers").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.body["errors"][0]["code"].is_string());
}

#[tokio::test]
async fn telnyx_an_order_for_a_taken_number_is_422_and_steal_next_makes_a_rival_take_it() {
    let (fake, api) = telnyx(TelnyxConfig {
        steal_next: 1,
        ..TelnyxConfig::default()
    })
    .await;
    let profile = fake.messaging_profile_id().to_string();
    let found = search(&api).await;

    // A rival ordered the number between our search and our order.
    let reply = order(&api, &found[0], &profile).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["errors"][0]["code"], "10015");
    assert_eq!(reply.body["errors"][0]["title"], "Number unavailable");
    assert!(reply.body["errors"][0]["detail"].is_string());
    assert!(fake.numbers().is_empty());

    // Searching again finds it gone, and the next order goes through.
    let again = search(&api).await;
    assert!(!again.contains(&found[0]));
    let reply = order(&api, &again[0], &profile).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // Ordering a number we already own is no better.
    let reply = order(&api, &again[0], &profile).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["errors"][0]["code"], "10015");

    fake.steal_next(2);
    for _ in 0..2 {
        let number = search(&api).await[0].clone();
        assert_eq!(
            order(&api, &number, &profile).await.status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    assert!(fake.take_elsewhere("+15550100050"));
    assert!(!search(&api).await.contains(&"+15550100050".to_string()));
    assert_eq!(fake.numbers().len(), 1);
    // Three stolen, one ours, one taken by hand.
    assert_eq!(fake.available_count(), 50 - 3 - 1 - 1);
}

#[tokio::test]
async fn telnyx_a_fresh_order_answers_404_to_patch_for_a_while() {
    let (fake, api) = telnyx(TelnyxConfig {
        fresh_order_404_ms: 400,
        ..TelnyxConfig::default()
    })
    .await;
    let number = search(&api).await[0].clone();
    let ordered = Instant::now();
    let reply = order(&api, &number, fake.messaging_profile_id()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(fake.numbers().len(), 1, "owned from the order on");

    let path = format!("/phone_numbers/{number}");
    let reply = api.patch(&path, json!({"tags": ["pool-f"]})).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["errors"][0]["code"], "10005");
    assert!(fake.numbers()[0].tags.is_empty());

    // What a client does: try again until the order has settled.
    wait_until(Duration::from_secs(5), || async {
        api.patch(&path, json!({"tags": ["pool-f"]})).await.status == StatusCode::OK
    })
    .await;
    assert!(ordered.elapsed() >= Duration::from_millis(400));
    assert_eq!(fake.numbers()[0].tags, ["pool-f"]);
}

#[tokio::test]
async fn telnyx_messaging_profiles_and_bad_orders() {
    let (fake, api) = telnyx(TelnyxConfig {
        available: 3,
        ..TelnyxConfig::default()
    })
    .await;
    let reply = api.get("/messaging_profiles").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["data"][0]["id"], fake.messaging_profile_id());
    let reply = api
        .post("/messaging_profiles", json!({"name": "second"}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["data"]["name"], "second");
    assert_eq!(fake.messaging_profiles().len(), 2);
    assert_eq!(
        api.get("/messaging_profiles").await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    assert_eq!(search(&api).await.len(), 3);
    for body in [
        json!({"phone_numbers": []}),
        json!({"phone_numbers": [{"number": "+15550100001"}]}),
        json!({"phone_numbers": [{"phone_number": "+15550100001"}], "messaging_profile_id": "nope"}),
    ] {
        let reply = api.post("/number_orders", body.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_ne!(reply.body["errors"][0]["code"], "10015", "{body}");
    }
    // A number not in the pool is not for sale.
    let reply = order(&api, "+15550109999", fake.messaging_profile_id()).await;
    assert_eq!(reply.body["errors"][0]["code"], "10015");
    assert!(fake.numbers().is_empty());
    let reply = api
        .get("/available_phone_numbers?filter[country_code]=FR&filter[limit]=20")
        .await;
    assert_eq!(reply.body["data"], json!([]));
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dropping_a_fake_stops_its_server() {
    let openrouter = OpenRouterFake::start(OpenRouterConfig::default()).await;
    let agentmail = AgentMailFake::start(AgentMailConfig::default()).await;
    let telnyx = TelnyxFake::start(TelnyxConfig::default()).await;
    let addresses = [
        openrouter.base_url(),
        agentmail.base_url(),
        telnyx.base_url(),
    ]
    .map(|base| base.trim_start_matches("http://").to_string());
    for address in &addresses {
        tokio::net::TcpStream::connect(address)
            .await
            .expect("listening");
    }
    drop((openrouter, agentmail, telnyx));
    // The accept loops stop when the runtime next polls them.
    wait_until(Duration::from_secs(5), || async {
        for address in &addresses {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return false;
            }
        }
        true
    })
    .await;
}
