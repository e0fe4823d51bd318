//! Notion prompts (seed 000's `GET /api/prompts/:pageId`) against the Notion fake: a page's text
//! read through nested blocks and pages of children, one fetch per page per TTL however many
//! replicas ask at once, the stale copy served while Notion fails, 404 for a page missing or not
//! shared, 429's Retry-After honoured, and a template whose instructions are a page.

use agentpool_core::domain::InstanceStatus::*;
use agentpool_tests::fakes::{Block, Controls, Fault, NotionConfig, NotionFake, Scope};
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::TestPool;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PAGE: &str = "0123456789abcdef0123456789abcdef";
const PAGE_DASHED: &str = "01234567-89ab-cdef-0123-456789abcdef";
const PAGE_OP: &str = "GET /v1/pages/{id}";

async fn with_notion() -> (NotionFake, TestPool) {
    // Small pages of children, so that reading a page takes several.
    let notion = NotionFake::start(NotionConfig {
        page_size: 3,
        ..NotionConfig::default()
    })
    .await;
    // Notion's pace, scaled as the other fakes are in tests.
    let profile = LatencyProfile::for_tests();
    notion.set_latency(Some(profile.draws(profile.tool_call, 11)));
    let url = notion.url();
    let t = TestPool::with(
        &[("NOTION_API_URL", &url), ("NOTION_API_KEY", notion.token())],
        &[],
    )
    .await;
    notion.put_page(
        PAGE,
        "Trip planner",
        vec![
            Block::new("heading_1", "Rules"),
            Block::new("paragraph", "Plan trips to Tokyo."),
            Block::new("bulleted_list_item", "Trains").with(vec![Block::new(
                "paragraph",
                "Prefer the Shinkansen.",
            )
            .with(vec![Block::new("quote", "Green car if asked.")])]),
            Block::new("to_do", "Book hotels"),
            Block::new("table", "").with(vec![
                Block::row(&["city", "days"]),
                Block::row(&["Kyoto", "2"]),
            ]),
            Block::new("paragraph", "Be brief."),
        ],
    );
    (notion, t)
}

async fn prompt(t: &TestPool, base: &str, page: &str) -> (StatusCode, Option<String>, Value) {
    let response = t
        .http
        .get(format!("{base}/api/prompts/{page}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let stale = response
        .headers()
        .get("x-prompt-stale")
        .map(|v| v.to_str().unwrap().to_string());
    (status, stale, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_asking_at_once_cost_notion_one_fetch() {
    let (notion, t) = with_notion().await;
    let bases = [t.base.clone(), t.replica().await, t.replica().await];
    let asks = bases.iter().map(|base| prompt(&t, base, PAGE_DASHED));
    let answers = futures::future::join_all(asks).await;
    for (status, stale, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(*stale, None);
        assert_eq!(body["text"], answers[0].2["text"]);
    }
    assert_eq!(
        answers[0].2["text"],
        "Trip planner\n# Rules\nPlan trips to Tokyo.\n- Trains\n  Prefer the Shinkansen.\n    > Green car if asked.\n[ ] Book hotels\n  city | days\n  Kyoto | 2\nBe brief."
    );
    let stats = notion.stats();
    assert_eq!(stats.requests_for(PAGE_OP), 1, "{stats:?}");
    // Six top-level blocks in pages of three: two calls, and one per nested level.
    assert_eq!(
        stats.requests_for("GET /v1/blocks/{id}/children"),
        5,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_is_served_while_notion_fails_and_a_missing_page_is_404() {
    let (notion, t) = with_notion().await;
    let (status, _, first) = prompt(&t, &t.base, PAGE).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // An hour passes; Notion answers 503 to everything.
    let age = || async {
        sqlx::query("UPDATE notion_prompts SET fetched_at = now() - interval '2 hours'")
            .execute(&t.pool.db)
            .await
            .unwrap();
    };
    age().await;
    notion.inject(
        Fault::ServerError,
        Scope::Next {
            op: None,
            count: 1000,
        },
    );
    let (status, stale, body) = prompt(&t, &t.base, PAGE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stale.as_deref(), Some("true"));
    assert_eq!(body["stale"], true);
    assert_eq!(body["text"], first["text"]);
    // With no copy at all, Notion's failure is the answer.
    let (status, _, body) = prompt(&t, &t.base, "ffffffffffffffffffffffffffffffff").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "notion_failed");
    notion.clear_faults();

    // A 429 is waited out (its Retry-After) and the fetch goes through.
    notion.inject(
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        Scope::Next {
            op: Some(PAGE_OP.into()),
            count: 1,
        },
    );
    let (status, stale, body) = prompt(&t, &t.base, PAGE).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stale, None);
    assert_eq!(notion.stats().faults_of("RateLimited"), 1);

    // Unshared (or deleted): 404 that says both, and the copy is forgotten.
    notion.remove_page(PAGE);
    age().await;
    let (status, _, body) = prompt(&t, &t.base, PAGE).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing or not shared with the integration"),
        "{body}"
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM notion_prompts")
        .fetch_one(&t.pool.db)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let (status, _, _) = prompt(&t, &t.base, "not-a-page").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_may_take_its_instructions_from_a_page() {
    let (_notion, t) = with_notion().await;
    let (status, template) = t
        .post(
            "/api/templates",
            json!({"slug": "from-notion", "agentName": "Planner", "instructionsPageId": PAGE_DASHED}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    t.fill(1).await;
    let (status, claimed) = t
        .post("/api/pool/claim", json!({"templateId": template["id"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let instance = t
        .instance(claimed["instanceId"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(instance.status, Claimed);
    assert!(instance
        .instructions
        .unwrap()
        .starts_with("Trip planner\n# Rules"));
    // A claim may name a page itself.
    t.fill(1).await;
    let (status, claimed) = t
        .post(
            "/api/pool/claim",
            json!({"agentName": "Direct", "instructionsPageId": PAGE}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
}
