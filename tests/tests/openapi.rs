//! The API document: `/openapi.json` is OpenAPI 3.1, names every route the router serves with
//! its methods and access, and the router agrees with it; `/docs` renders it without the internet.

use std::collections::BTreeSet;

use agentpool_tests::TestPool;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone.
    Public,
    /// Anyone; a Bearer key, when given, must be right (it changes the view).
    OptionalKey,
    /// The API key as Bearer, or a dashboard session.
    Operator,
    /// As `Operator`, or the key as `?key=`.
    Stream,
    /// An instance's runtime, with its own gateway token as Bearer.
    Runtime,
}

/// The JSON API as README.md describes it: every route, its method and who may call it.
const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Access::Public),
    ("GET", "/version", Access::Public),
    ("GET", "/openapi.json", Access::Public),
    ("GET", "/docs", Access::Public),
    ("GET", "/metrics", Access::Public),
    ("GET", "/api/pool/counts", Access::Public),
    ("GET", "/api/pool/agents", Access::OptionalKey),
    ("GET", "/api/pool/info", Access::Public),
    ("GET", "/api/pool/templates", Access::Public),
    ("GET", "/api/pool/templates/{slug}", Access::Public),
    ("GET", "/api/prompts/{pageId}", Access::Public),
    ("GET", "/api/pool/status", Access::Operator),
    ("POST", "/api/pool/claim", Access::Operator),
    ("POST", "/api/pool/replenish", Access::Operator),
    ("POST", "/api/pool/drain", Access::Operator),
    ("POST", "/api/pool/reconcile", Access::Operator),
    ("POST", "/api/pool/tick", Access::Operator),
    ("POST", "/api/pool/keepalive", Access::Operator),
    ("DELETE", "/api/pool/instances", Access::Operator),
    ("DELETE", "/api/pool/instances/{id}", Access::Operator),
    (
        "DELETE",
        "/api/pool/instances/{id}/destroy",
        Access::Operator,
    ),
    ("GET", "/api/pool/debug/{id}", Access::Operator),
    ("DELETE", "/api/pool/crashed/{id}", Access::Operator),
    ("GET", "/api/pool/settings", Access::Operator),
    ("PUT", "/api/pool/settings", Access::Operator),
    ("GET", "/api/templates", Access::Operator),
    ("POST", "/api/templates", Access::Operator),
    ("GET", "/api/templates/{id}", Access::Operator),
    ("PUT", "/api/templates/{id}", Access::Operator),
    ("DELETE", "/api/templates/{id}", Access::Operator),
    ("GET", "/api/pool/replenish/stream", Access::Stream),
    ("POST", "/api/instances/{id}/heartbeat", Access::Runtime),
];

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn document(t: &TestPool) -> Value {
    let (status, doc) = t.get_public("/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

/// The names of the schemes in an operation's `security`, one list per alternative.
fn security(operation: &Value) -> Option<Vec<Vec<String>>> {
    operation["security"].as_array().map(|alternatives| {
        alternatives
            .iter()
            .map(|requirement| {
                requirement
                    .as_object()
                    .map(|r| r.keys().cloned().collect())
                    .unwrap_or_default()
            })
            .collect()
    })
}

#[tokio::test]
async fn document_is_openapi_3_1_with_every_route_and_its_access() {
    let t = TestPool::start().await;
    let doc = document(&t).await;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi: {version:?}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(documented, expected);

    // The claim's reply: seed 000's fields and seed 001's `qrDataUrl`, all named.
    let reply = doc["paths"]["/api/pool/claim"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"]
        .to_string();
    let components = doc["components"]["schemas"].to_string();
    for field in ["qrDataUrl", "inviteUrl", "conversationId", "instanceId"] {
        assert!(
            reply.contains(field) || components.contains(field),
            "{field} not in the claim reply's schema: {reply}"
        );
    }
    assert!(reply.contains("ClaimReply"), "{reply}");
    let claim_reply = &doc["components"]["schemas"]["ClaimReply"];
    assert!(
        claim_reply.to_string().contains("qrDataUrl")
            && claim_reply.to_string().contains("Claimed"),
        "{claim_reply}"
    );

    let schemes = doc["components"]["securitySchemes"].clone();
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["queryKey"]["type"], "apiKey");
    assert_eq!(schemes["queryKey"]["in"], "query");
    assert_eq!(schemes["queryKey"]["name"], "key");

    for (method, path, access) in ROUTES {
        let operation = &doc["paths"][path][method.to_lowercase()];
        let declared = security(operation);
        let offers = |scheme: &str| {
            declared
                .iter()
                .flatten()
                .any(|alternative| alternative == &[scheme.to_string()])
        };
        let optional = declared
            .iter()
            .flatten()
            .any(|alternative| alternative.is_empty());
        match access {
            Access::Public => assert!(
                declared.is_none() || optional,
                "{method} {path} is public but requires {declared:?}"
            ),
            Access::OptionalKey => assert!(optional && offers("bearer"), "{method} {path}"),
            Access::Operator => assert!(
                !optional && offers("bearer") && !offers("queryKey"),
                "{method} {path}: {declared:?}"
            ),
            Access::Stream => assert!(
                !optional && offers("bearer") && offers("queryKey"),
                "{method} {path}: {declared:?}"
            ),
            Access::Runtime => assert!(
                !optional && offers("runtimeToken") && !offers("bearer"),
                "{method} {path}: {declared:?}"
            ),
        }
        let responses = operation["responses"].as_object().expect("responses");
        if matches!(access, Access::Operator | Access::Stream | Access::Runtime) {
            assert!(responses.contains_key("401"), "{method} {path}");
        }
        // Every error reply is the one error schema.
        for (status, reply) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    reply["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

/// The router serves what the document says, and guards what it says is guarded: without
/// credentials an operator route is `401` (an unrouted path would be the fallback's 404, a wrong
/// method 405), and a public route answers.
#[tokio::test]
async fn router_serves_each_documented_route_with_its_access() {
    let t = TestPool::start().await;
    for (method, path, access) in ROUTES {
        let url = t.url(&path.replace("{id}", "nosuchinstance"));
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let response = t
            .http
            .request(method.clone(), &url)
            .send()
            .await
            .expect("sent");
        let status = response.status();
        let body = response.text().await.expect("body");
        match access {
            Access::Operator | Access::Stream => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
                let body: Value = serde_json::from_str(&body).expect("JSON error");
                assert_eq!(body["code"], "unauthorized", "{method} {path}");
            }
            // A public route of one thing (a template by slug, a Notion page) answers for a
            // thing that is not there with its own 404, not the fallback's.
            Access::Public if path.contains('{') => {
                assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
                assert!(!body.contains("no such route"), "{method} {path}: {body}");
            }
            Access::Public | Access::OptionalKey => {
                assert_eq!(status, StatusCode::OK, "{method} {path}: {body}")
            }
            // No such instance, whatever the token (`fleet_health.rs` tries the tokens).
            Access::Runtime => {
                assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
                let body: Value = serde_json::from_str(&body).expect("JSON error");
                assert_eq!(body["code"], "not_found", "{method} {path}");
            }
        }
        if *access == Access::OptionalKey {
            let (status, body) = t
                .send(t.http.request(method, &url).bearer_auth("wrong-key"))
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        }
    }
    // The stream's `?key=` is accepted: the route answers with the key in the query string.
    let (status, body) = t
        .send(
            t.http
                .get(t.url(&format!("/api/pool/replenish/stream?count=0&key={}", t.key))),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &Value::from("invalid_request"))
    );
}

#[tokio::test]
async fn docs_page_renders_the_document_with_a_script_from_the_binary() {
    let t = TestPool::start().await;
    let page = t.http.get(t.url("/docs")).send().await.expect("sent");
    assert_eq!(page.status(), StatusCode::OK);
    let content_type = page.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.expect("page");
    assert!(html.contains(r#"<script src="/assets/docs.js""#), "{html}");
    // Nothing from elsewhere: the CSP would block it, and there may be no internet.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    let script = t
        .http
        .get(t.url("/assets/docs.js"))
        .send()
        .await
        .expect("sent");
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.headers()["content-type"]
        .to_str()
        .is_ok_and(|c| c.starts_with("text/javascript")));
    let js = script.text().await.expect("script");
    assert!(js.contains(r#"fetch("/openapi.json")"#));
    assert!(
        !js.contains("innerHTML"),
        "text is set with textContent only"
    );
}
