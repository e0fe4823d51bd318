//! Reconcile repairs a database and an outside world made to disagree on purpose, in railway mode
//! with every tool: services and tool resources no row owns go, rows whose service or tool
//! resource is gone are replaced, a creation cut off long ago is cleaned up, and the healthy and the foreign are left
//! alone.

use std::sync::Arc;
use std::time::Duration;

use agentpool_core::creation;
use agentpool_core::domain::Actor;
use agentpool_core::domain::InstanceStatus::*;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::Settings;
use agentpool_tests::latency::LatencyProfile;
use agentpool_tests::outside::Outside;
use agentpool_tests::{set_vars, wait_until, TestPool};
use reqwest::StatusCode;
use serde_json::json;

const PREFIX: &str = "rc-";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_a_database_and_fakes_that_disagree() {
    // The real services' pace, scaled, and the pool's timeouts with it.
    let profile = LatencyProfile::for_tests();
    let outside = Outside::start(50).await;
    outside.set_latency(&profile);
    let mut vars = outside.settings();
    set_vars(&mut vars, profile.pool_settings());
    vars.push(("POOL_NAME_PREFIX".into(), PREFIX.into()));
    let settings = Settings::from_vars(vars.clone()).unwrap();
    let mut overrides: Vec<(&str, &str)> =
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    overrides.push(("POOL_MIN_IDLE", "3"));
    let t = TestPool::with_provider(&overrides, &[], |_, tally| {
        Arc::new(
            RailwayProvider::from_settings(&settings.providers.railway, &settings.outbound, tally)
                .unwrap(),
        )
    })
    .await;
    wait_until(Duration::from_secs(60), || async {
        t.tick().await;
        t.count(Idle).await == 3
    })
    .await;
    let (status, claimed) = t.claim("keeper").await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let keeper = claimed["instanceId"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(60), || async {
        t.tick().await;
        t.count(Idle).await == 3
    })
    .await;
    outside.agrees_with(&t.pool.db, PREFIX).await.unwrap();
    let idle = t.ids(Idle).await;
    let service_of = |id: &str| {
        let name = t.name_of(id);
        outside
            .railway
            .services()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .id
    };

    // The disagreements.
    // 1. An idle agent's service deleted in Railway's dashboard: its row points at nothing.
    let lost = idle[0].clone();
    assert!(outside
        .railway
        .delete_service_behind_our_back(&service_of(&lost)));
    // 2. Another idle agent's OpenRouter key revoked in OpenRouter's dashboard: its row records a
    //    key that no longer exists, and the agent cannot think without it.
    let keyless = idle[1].clone();
    let key = outside
        .openrouter
        .keys()
        .into_iter()
        .find(|k| k.name == t.name_of(&keyless))
        .unwrap();
    assert!(outside.openrouter.delete_key_behind_our_back(&key.hash));
    // 3. Services and tool resources named like ours that no row owns, one number bought by an
    //    order whose creator died before tagging it.
    let project = outside.railway.shared_ids().project_id;
    let ghost = format!("{PREFIX}ghost0000001");
    outside
        .railway
        .create_deployed_service_behind_our_back(&project, &ghost);
    let orphans = [
        format!(
            "openrouter:{}",
            outside.openrouter.create_key_behind_our_back(&ghost).hash
        ),
        format!(
            "email:{}",
            outside.agentmail.create_inbox_behind_our_back(&ghost)
        ),
        format!("sms:{}", outside.telnyx.order_behind_our_back(&[&ghost]).id),
        format!(
            "sms:{}",
            outside
                .telnyx
                .order_untagged(&format!("{PREFIX}dead00000001"))
                .id
        ),
    ];
    // 4. A creation whose replica died an hour ago, after its key and its service were made and
    //    before either was recorded.
    let creation::Batch {
        rows: reserved,
        creator,
    } = creation::reserve(&t.pool, 1, Actor::Operator, "cut off")
        .await
        .unwrap();
    // The replica dies: its creator falls silent.
    drop(creator);
    let cut_off = reserved[0].id.clone();
    let unrecorded_key = outside
        .openrouter
        .create_key_behind_our_back(&reserved[0].name);
    outside
        .railway
        .create_deployed_service_behind_our_back(&project, &reserved[0].name);
    sqlx::query(
        "UPDATE instances SET created_at = now() - interval '1 hour',
                status_since = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(&cut_off)
    .execute(&t.pool.db)
    .await
    .unwrap();
    sqlx::query("UPDATE creators SET alive_at = now() - interval '1 hour'")
        .execute(&t.pool.db)
        .await
        .unwrap();
    // 5. Someone else's, without our prefix: none of our business.
    let foreign = outside
        .railway
        .create_deployed_service_behind_our_back(&project, "someone-elses-service");
    let foreign_key = outside
        .openrouter
        .create_key_behind_our_back("someone-elses-key");
    assert!(outside.agrees_with(&t.pool.db, PREFIX).await.is_err());

    // Reconcile until the two agree again (an absence counts once two listings saw it).
    let reports = std::sync::Mutex::new(Vec::new());
    wait_until(Duration::from_secs(60), || async {
        let (status, report) = t.post("/api/pool/reconcile", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        reports.lock().unwrap().push(report);
        t.instance(&lost).await.is_none()
            && t.instance(&keyless).await.is_none()
            && t.instance(&cut_off).await.is_none()
            && t.count(Starting).await == 0
            && t.count(Destroying).await == 0
            && outside.agrees_with(&t.pool.db, PREFIX).await.is_ok()
    })
    .await;
    // Reconcile repairs; refilling is the periodic tick's.
    wait_until(Duration::from_secs(60), || async {
        t.tick().await;
        t.count(Idle).await == 3 && outside.agrees_with(&t.pool.db, PREFIX).await.is_ok()
    })
    .await;

    let kept = t.instance(&keeper).await.unwrap();
    assert_eq!(kept.status, Claimed, "the claimed agent was left alone");
    for id in &idle[2..] {
        assert_eq!(
            t.instance(id).await.unwrap().status,
            Idle,
            "a healthy agent stays"
        );
    }
    assert!(outside.railway.service(&foreign).is_some());
    assert!(outside.openrouter.key(&foreign_key.hash).is_some());
    let reports = reports.into_inner().unwrap();
    let deleted = |field: &str| -> Vec<String> {
        reports
            .iter()
            .flat_map(|r| r[field].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(deleted("orphansDeleted"), vec![ghost.clone()]);
    let mut tool_orphans = deleted("toolOrphansDeleted");
    tool_orphans.sort();
    let mut expected = orphans.to_vec();
    expected.push(format!("openrouter:{}", unrecorded_key.hash));
    expected.sort();
    assert_eq!(tool_orphans, expected);
}
