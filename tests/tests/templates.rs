//! Agents from templates (issue 17): the catalog, claims by template in railway mode with the
//! fakes (the template's pool tools made at claim time and no other, their variables saved at
//! Railway without a redeploy and handed to the running runtime), `userConfig` checked before
//! anything is taken, a failing tool rolled back, and a template's deletion leaving its instances
//! alone.

use agentpool_core::domain::InstanceStatus::*;
use agentpool_tests::fakes::{Controls, Fault, Scope};
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::outside::Outside;
use agentpool_tests::{set_vars, TestPool};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PREFIX: &str = "tp-";
const USER_SECRET: &str = "user-bankr-key-never-shown-0123456789";

/// A railway-mode pool over every fake, idle instances holding only their OpenRouter key and
/// wallet, `idle` of them ready.
async fn railway_pool(outside: &Outside, idle: i64) -> TestPool {
    let profile = LatencyProfile::for_tests();
    let mut vars = outside.settings();
    set_vars(&mut vars, profile.pool_settings());
    set_vars(
        &mut vars,
        [
            ("POOL_NAME_PREFIX".to_string(), PREFIX.to_string()),
            ("TOOLS_AT_CREATION".to_string(), "base".to_string()),
            (
                "BANKR_API_KEY".to_string(),
                "pool-bankr-key-0123456789".to_string(),
            ),
        ],
    );
    TestPool::on_railway(&vars, idle).await
}

/// A DELETE's status (204 has no body).
async fn delete(t: &TestPool, path: &str) -> StatusCode {
    t.http
        .delete(t.url(path))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .status()
}

async fn create_template(t: &TestPool, body: Value) -> Value {
    let (status, template) = t.post("/api/templates", body).await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    template
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_by_template_adds_exactly_its_pool_tools_to_a_running_instance() {
    let outside = Outside::start(20).await;
    let t = railway_pool(&outside, 2).await;

    // Idle instances hold what every agent needs, and nothing else.
    for id in t.ids(Idle).await {
        assert_eq!(t.tool_ids(&id).await, ["openrouter", "wallet"], "{id}");
    }
    assert!(outside.agentmail.inboxes().is_empty());
    assert!(outside.telnyx.numbers().is_empty());

    let template = create_template(
        &t,
        json!({
            "slug": "mailer", "agentName": "Mailer", "instructions": "Answer mail.",
            "model": {"default": "anthropic/claude-sonnet-4", "allow_override": false},
            "tools": [{"id": "email", "provisioning": "pool"}, {"id": "crypto", "provisioning": "user"}],
            "visibility": "public",
        }),
    )
    .await;
    let template_id = template["id"].as_str().unwrap();
    let services_before = outside.railway.services();

    let (status, claimed) = t
        .post(
            "/api/pool/claim",
            json!({"templateId": template_id, "userConfig": {"bankrApiKey": USER_SECRET}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert!(!claimed.to_string().contains(USER_SECRET));
    let id = claimed["instanceId"].as_str().unwrap().to_string();

    // The template's pool tool, and no other: one inbox, no number.
    assert_eq!(t.tool_ids(&id).await, ["email", "openrouter", "wallet"]);
    let inboxes = outside.agentmail.inboxes();
    assert_eq!(inboxes.len(), 1, "{inboxes:?}");
    assert!(inboxes[0].inbox_id.starts_with(&t.name_of(&id)));
    assert!(outside.telnyx.numbers().is_empty());
    let row = t.instance(&id).await.unwrap();
    assert_eq!(row.status, Claimed);
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT template_id FROM instances WHERE id = $1")
            .bind(&id)
            .fetch_one(&t.pool.db)
            .await
            .unwrap();
    assert_eq!(recorded.as_deref(), Some(template_id));

    // Saved at Railway, so a restart keeps them, without a redeploy. (Found by id: the tick the
    // claim kicks renames a claimed agent's service after it.)
    let name = t.name_of(&id);
    let before = services_before.iter().find(|s| s.name == name).unwrap();
    let after = outside
        .railway
        .services()
        .into_iter()
        .find(|s| s.id == before.id)
        .unwrap();
    assert_eq!(after.deployments, before.deployments, "redeployed");
    assert_eq!(after.variables["AGENTMAIL_INBOX_ID"], inboxes[0].inbox_id);
    assert_eq!(after.variables["BANKR_API_KEY"], USER_SECRET);
    assert!(!before.variables.contains_key("AGENTMAIL_INBOX_ID"));

    // And handed to the running runtime through the contract.
    let env = t.stub_env(&id).await;
    assert_eq!(
        env["env"]["AGENTMAIL_INBOX_ID"],
        inboxes[0].inbox_id.as_str()
    );
    assert_eq!(env["env"]["BANKR_API_KEY"], USER_SECRET);
    assert_eq!(env["model"], "anthropic/claude-sonnet-4");
    let started: Vec<&str> = env["startedWith"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(started, ["OPENROUTER_API_KEY", "PRIVATE_WALLET_KEY"]);

    // Nowhere to be read back: listings, the template, /metrics.
    for path in ["/api/pool/status", "/api/templates", "/metrics"] {
        let text = t
            .http
            .get(t.url(path))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(USER_SECRET), "{path} shows userConfig");
    }

    // Deleting the template leaves its agent running.
    let status = delete(&t, &format!("/api/templates/{template_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    t.tick().await;
    assert_eq!(t.instance(&id).await.unwrap().status, Claimed);
    assert!(outside.railway.services().iter().any(|s| s.id == before.id));
    assert_eq!(outside.agentmail.inboxes().len(), 1);
    outside.agrees_with(&t.pool.db, PREFIX).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_user_config_takes_nothing_and_a_failing_tool_is_rolled_back() {
    let outside = Outside::start(20).await;
    let t = railway_pool(&outside, 1).await;
    let template = create_template(
        &t,
        json!({
            "slug": "texter", "agentName": "Texter", "instructions": "Text people.",
            "tools": [{"id": "sms", "provisioning": "pool"}, {"id": "email", "provisioning": "pool"},
                      {"id": "crypto", "provisioning": "user"}],
        }),
    )
    .await;
    let template_id = template["id"].as_str().unwrap();
    let idle = t.ids(Idle).await;
    let events = t.event_count().await;

    // Without the user tool's credentials, or with a stray field: 400, nothing taken or made.
    for (user_config, field) in [
        (Value::Null, "bankrApiKey"),
        (json!({}), "bankrApiKey"),
        (
            json!({"bankrApiKey": USER_SECRET, "telnyxApiKey": USER_SECRET}),
            "telnyxApiKey",
        ),
        (json!({"bankrApiKey": 42}), "bankrApiKey"),
    ] {
        let mut body = json!({"templateId": template_id});
        if !user_config.is_null() {
            body["userConfig"] = user_config;
        }
        let (status, reply) = t.post("/api/pool/claim", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(reply["error"].as_str().unwrap().contains(field), "{reply}");
        assert!(!reply.to_string().contains(USER_SECRET), "{reply}");
    }
    assert_eq!(t.ids(Idle).await, idle);
    assert_eq!(t.event_count().await, events, "something was taken");
    assert!(outside.telnyx.numbers().is_empty());
    assert!(outside.agentmail.inboxes().is_empty());

    // A model the template does not allow, an unknown template: refused before anything too.
    let (status, reply) = t
        .post(
            "/api/pool/claim",
            json!({"templateId": template_id, "model": "other/model",
                   "userConfig": {"bankrApiKey": USER_SECRET}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let (status, reply) = t
        .post("/api/pool/claim", json!({"templateId": "tpl_nosuchthing0"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    assert_eq!(t.event_count().await, events, "something was taken");

    // AgentMail fails every create: the number made first is released, the instance is idle again
    // and the claim says which tool failed.
    outside.agentmail.inject(
        Fault::ServerError,
        Scope::Next {
            op: Some("POST /v0/inboxes".into()),
            count: 1000,
        },
    );
    let (status, reply) = t
        .post(
            "/api/pool/claim",
            json!({"templateId": template_id, "userConfig": {"bankrApiKey": USER_SECRET}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{reply}");
    assert_eq!(reply["code"], "tool_failed");
    assert!(
        reply["error"].as_str().unwrap().contains("email"),
        "{reply}"
    );
    assert!(outside.telnyx.numbers().is_empty(), "the number was kept");
    assert!(outside.agentmail.inboxes().is_empty());
    assert_eq!(t.ids(Idle).await, idle, "the instance was not given back");
    assert_eq!(t.tool_ids(&idle[0]).await, ["openrouter", "wallet"]);

    // Once AgentMail is back, the same instance serves the claim.
    outside.agentmail.clear_faults();
    let (status, reply) = t
        .post(
            "/api/pool/claim",
            json!({"templateId": template_id, "userConfig": {"bankrApiKey": USER_SECRET}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["instanceId"], idle[0].as_str());
    assert_eq!(
        t.tool_ids(&idle[0]).await,
        ["email", "openrouter", "sms", "wallet"]
    );
    outside.agrees_with(&t.pool.db, PREFIX).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_shows_public_templates_and_the_key_writes_them() {
    let t = TestPool::start().await;
    let public = create_template(
        &t,
        json!({"slug": "planner", "agentName": "Planner", "instructions": "Plan.",
               "tools": [{"id": "sms", "provisioning": "user"}], "visibility": "public"}),
    )
    .await;
    assert_eq!(public["userFields"][0]["field"], "telnyxApiKey");
    let private = create_template(
        &t,
        json!({"slug": "secret-ops", "agentName": "Ops", "instructions": "Operate."}),
    )
    .await;

    let (status, catalog) = t.get_public("/api/pool/templates").await;
    assert_eq!(status, StatusCode::OK);
    let slugs: Vec<&str> = catalog
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["planner"]);
    let (status, one) = t.get_public("/api/pool/templates/planner").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], public["id"]);
    let (status, _) = t.get_public("/api/pool/templates/secret-ops").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Writing needs the key.
    let response = t
        .http
        .post(t.url("/api/templates"))
        .json(&json!({"slug": "x", "agentName": "X", "instructions": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let (status, all) = t.get("/api/templates").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (status, reply) = t
        .post(
            "/api/templates",
            json!({"slug": "planner", "agentName": "Again", "instructions": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    let (status, reply) = t
        .post(
            "/api/templates",
            json!({"slug": "both", "agentName": "B", "instructions": "x",
                   "instructionsPageId": "0123456789abcdef0123456789abcdef"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let private_id = private["id"].as_str().unwrap();
    let (status, updated) = t
        .send(
            t.http
                .put(t.url(&format!("/api/templates/{private_id}")))
                .bearer_auth(&t.key)
                .json(
                    &json!({"slug": "ops", "agentName": "Ops", "instructions": "Operate.",
                              "visibility": "public"}),
                ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let (status, _) = t.get_public("/api/pool/templates/ops").await;
    assert_eq!(status, StatusCode::OK);

    // A claim by a local pool's template: the instance records it; deleting it leaves the agent.
    t.fill(1).await;
    let (status, claimed) = t
        .post("/api/pool/claim", json!({"templateId": private_id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let id = claimed["instanceId"].as_str().unwrap();
    let status = delete(&t, &format!("/api/templates/{private_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let status = delete(&t, &format!("/api/templates/{private_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    t.tick().await;
    assert_eq!(t.instance(id).await.unwrap().status, Claimed);
    assert_eq!(
        t.instance(id).await.unwrap().agent_name.as_deref(),
        Some("Ops")
    );
}
