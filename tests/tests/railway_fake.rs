//! The Railway fake, spoken to in raw GraphQL over HTTP (no provider in between), so the
//! provider's tests can trust what it answers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use agentpool_tests::fakes::{Controls, FakeConfig, Fault, RailwayFake, Scope};
use agentpool_tests::{process_alive, wait_until};

const TOKEN: &str = "railway-test-token";

const SERVICE_CREATE: &str =
    "mutation($input: ServiceCreateInput!) { serviceCreate(input: $input) { id name } }";
const DOMAIN_CREATE: &str =
    "mutation($input: ServiceDomainCreateInput!) { serviceDomainCreate(input: $input) { domain } }";
const VOLUME_CREATE: &str =
    "mutation($input: VolumeCreateInput!) { volumeCreate(input: $input) { id } }";
const VOLUME_DELETE: &str = "mutation($volumeId: String!) { volumeDelete(volumeId: $volumeId) }";
const COMMIT: &str = "mutation($environmentId: String!, $patch: EnvironmentConfig!, $commitMessage: String) { environmentPatchCommit(environmentId: $environmentId, patch: $patch, commitMessage: $commitMessage) }";
const SERVICE_DELETE: &str = "mutation($id: String!) { serviceDelete(id: $id) }";
const PROJECT_CREATE: &str = "mutation($input: ProjectCreateInput!) { projectCreate(input: $input) { id name environments { edges { node { id name } } } } }";
const PROJECT_DELETE: &str = "mutation($id: String!) { projectDelete(id: $id) }";
const SERVICE_FIELDS: &str = "id name createdAt serviceInstances { edges { node { environmentId domains { serviceDomains { domain } } source { image } } } } deployments(first: 1) { edges { node { id status } } }";

fn project_query() -> String {
    format!(
        "query($id: String!, $after: String) {{ project(id: $id) {{ services(first: 500, after: $after) {{ edges {{ node {{ {SERVICE_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}"
    )
}

fn workspace_query() -> String {
    format!(
        "query($workspaceId: String!, $after: String) {{ workspace(workspaceId: $workspaceId) {{ projects(first: 100, after: $after) {{ edges {{ node {{ id name environments {{ edges {{ node {{ id name }} }} }} services(first: 10) {{ edges {{ node {{ {SERVICE_FIELDS} }} }} }} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}"
    )
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    fn new(fake: &RailwayFake) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: fake.url(),
            token: TOKEN.into(),
        }
    }

    fn request(&self, query: &str, variables: Value) -> reqwest::RequestBuilder {
        self.http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({"query": query, "variables": variables}))
    }

    /// Status, headers and JSON body; transport errors are the caller's to judge.
    async fn raw(
        &self,
        query: &str,
        variables: Value,
    ) -> reqwest::Result<(StatusCode, reqwest::header::HeaderMap, String)> {
        let response = self.request(query, variables).send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Ok((status, headers, body))
    }

    /// The `data` of a successful answer.
    async fn data(&self, query: &str, variables: Value) -> Value {
        let (status, _, body) = self.raw(query, variables).await.expect("request");
        assert_eq!(status, StatusCode::OK, "{body}");
        let body: Value = serde_json::from_str(&body).expect("json");
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// The message of a GraphQL error (HTTP 200, `data: null`).
    async fn error(&self, query: &str, variables: Value) -> String {
        let (status, _, body) = self.raw(query, variables).await.expect("request");
        assert_eq!(status, StatusCode::OK, "{body}");
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["data"], Value::Null, "{body}");
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}"))
            .to_string()
    }

    async fn create_service(&self, project_id: &str, environment_id: &str, name: &str) -> String {
        let data = self
            .data(
                SERVICE_CREATE,
                json!({"input": {"projectId": project_id, "environmentId": environment_id, "name": name}}),
            )
            .await;
        assert_eq!(data["serviceCreate"]["name"], name);
        data["serviceCreate"]["id"]
            .as_str()
            .expect("service id")
            .to_string()
    }

    async fn create_domain(&self, service_id: &str, environment_id: &str) -> String {
        let data = self
            .data(
                DOMAIN_CREATE,
                json!({"input": {"serviceId": service_id, "environmentId": environment_id}}),
            )
            .await;
        data["serviceDomainCreate"]["domain"]
            .as_str()
            .expect("domain")
            .to_string()
    }

    async fn commit(&self, environment_id: &str, service_id: &str, variables: Value) {
        let patch = json!({"services": {service_id: {
            "source": {"image": "ghcr.io/example/agent:1"},
            "deploy": {"startCommand": "/app/start"},
            "variables": variables,
        }}});
        let data = self
            .data(
                COMMIT,
                json!({"environmentId": environment_id, "patch": patch, "commitMessage": "deploy"}),
            )
            .await;
        assert!(data["environmentPatchCommit"].is_string(), "{data}");
    }

    /// Every service node of a project, walking all pages.
    async fn services(&self, project_id: &str) -> Vec<Value> {
        let mut nodes = Vec::new();
        let mut after = Value::Null;
        loop {
            let data = self
                .data(&project_query(), json!({"id": project_id, "after": after}))
                .await;
            let services = &data["project"]["services"];
            for edge in services["edges"].as_array().expect("edges") {
                nodes.push(edge["node"].clone());
            }
            if services["pageInfo"]["hasNextPage"] != json!(true) {
                return nodes;
            }
            after = services["pageInfo"]["endCursor"].clone();
        }
    }

    /// The latest deployment's status of one service, as the listing shows it.
    async fn status(&self, project_id: &str, service_id: &str) -> Option<String> {
        let services = self.services(project_id).await;
        let node = services.iter().find(|n| n["id"] == service_id)?;
        node["deployments"]["edges"][0]["node"]["status"]
            .as_str()
            .map(String::from)
    }

    async fn wait_status(&self, project_id: &str, service_id: &str, want: &str) {
        wait_until(Duration::from_secs(30), || async {
            self.status(project_id, service_id).await.as_deref() == Some(want)
        })
        .await;
    }
}

async fn start() -> RailwayFake {
    start_with(FakeConfig::default()).await
}

async fn start_with(config: FakeConfig) -> RailwayFake {
    RailwayFake::start(FakeConfig {
        tokens: vec![TOKEN.into()],
        ..config
    })
    .await
}

fn gateway_vars(token: &str) -> Value {
    json!({"OPENCLAW_GATEWAY_TOKEN": {"value": token}, "AGENT_NAME": {"value": "x"}})
}

/// Names of a process's environment variables.
fn environ_names(pid: u32) -> BTreeSet<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            entry.split_once('=').map(|(name, _)| name.to_string())
        })
        .collect()
}

/// Deploys one service in the shared project; returns its id and domain once it is SUCCESS.
async fn deployed_service(fake: &RailwayFake, client: &Client, name: &str) -> (String, String) {
    let ids = fake.shared_ids();
    let id = client
        .create_service(&ids.project_id, &ids.environment_id, name)
        .await;
    let domain = client.create_domain(&id, &ids.environment_id).await;
    client
        .commit(&ids.environment_id, &id, gateway_vars("secret-token"))
        .await;
    client.wait_status(&ids.project_id, &id, "SUCCESS").await;
    (id, domain)
}

#[tokio::test]
async fn a_committed_service_runs_a_stub_at_its_domain_until_deleted() {
    let fake = start_with(FakeConfig {
        stub_env: vec![("STUB_PROVISION_DELAY_MS".into(), "0".into())],
        ..FakeConfig::default()
    })
    .await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();
    let id = client
        .create_service(&ids.project_id, &ids.environment_id, "pool-abc")
        .await;
    // Before any deploy: listed, with no deployment and no image.
    let listed = client.services(&ids.project_id).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["deployments"]["edges"], json!([]));

    let domain = client.create_domain(&id, &ids.environment_id).await;
    assert!(domain.starts_with("127.0.0.1:"), "{domain}");
    client
        .commit(&ids.environment_id, &id, gateway_vars("secret-token"))
        .await;
    client.wait_status(&ids.project_id, &id, "SUCCESS").await;

    let node = client.services(&ids.project_id).await.remove(0);
    let instance = &node["serviceInstances"]["edges"][0]["node"];
    assert_eq!(instance["environmentId"], ids.environment_id.as_str());
    assert_eq!(
        instance["domains"]["serviceDomains"][0]["domain"],
        domain.as_str()
    );
    assert_eq!(instance["source"]["image"], "ghcr.io/example/agent:1");

    let health = reqwest::get(format!("http://{domain}/pool/health"))
        .await
        .expect("health request");
    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().await.expect("health json");
    assert_eq!(health["ready"], true);

    let view = fake.service(&id).expect("service view");
    assert_eq!(view.status.as_deref(), Some("SUCCESS"));
    assert_eq!(view.start_command.as_deref(), Some("/app/start"));
    let debug = format!("{view:?}");
    assert!(debug.contains("OPENCLAW_GATEWAY_TOKEN") && !debug.contains("secret-token"));
    // Exactly the committed variables and the fake's STUB_* settings: nothing of ours leaks in.
    let pid = view.pid.expect("a running process");
    assert_eq!(
        environ_names(pid),
        [
            "AGENT_NAME",
            "OPENCLAW_GATEWAY_TOKEN",
            "STUB_PROVISION_DELAY_MS"
        ]
        .map(String::from)
        .into()
    );

    let data = client.data(SERVICE_DELETE, json!({"id": id})).await;
    assert_eq!(data["serviceDelete"], true);
    wait_until(Duration::from_secs(10), || async {
        !process_alive(pid as i32)
    })
    .await;
    assert!(client.services(&ids.project_id).await.is_empty());
    assert!(fake.services().is_empty());
}

#[tokio::test]
async fn a_second_commit_redeploys_on_the_same_domain() {
    let fake = start().await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();
    let (id, domain) = deployed_service(&fake, &client, "pool-redeploy").await;
    let old_pid = fake.service(&id).and_then(|s| s.pid).expect("pid");

    client
        .commit(&ids.environment_id, &id, json!({"EXTRA": {"value": "1"}}))
        .await;
    wait_until(Duration::from_secs(30), || async {
        fake.service(&id)
            .is_some_and(|s| s.deployments == 2 && s.status.as_deref() == Some("SUCCESS"))
    })
    .await;
    assert!(!process_alive(old_pid as i32));
    let view = fake.service(&id).expect("service");
    // Variables accumulate across commits.
    assert_eq!(
        view.variables.keys().cloned().collect::<Vec<_>>(),
        ["AGENT_NAME", "EXTRA", "OPENCLAW_GATEWAY_TOKEN"]
    );
    let health = reqwest::get(format!("http://{domain}/pool/health"))
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_stub_that_cannot_start_crashes_and_kills_show_up_as_crashed() {
    let fake = start().await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();

    // No gateway token: the stub refuses to start.
    let broken = client
        .create_service(&ids.project_id, &ids.environment_id, "pool-broken")
        .await;
    client
        .commit(
            &ids.environment_id,
            &broken,
            json!({"OTHER": {"value": "1"}}),
        )
        .await;
    client
        .wait_status(&ids.project_id, &broken, "CRASHED")
        .await;
    // Deployed without a domain: it got a port all the same, and no domain is listed.
    let view = fake.service(&broken).expect("service");
    assert!(view.port.is_some() && view.domain.is_none());

    let (id, _) = deployed_service(&fake, &client, "pool-victim").await;
    let pid = fake.service(&id).and_then(|s| s.pid).expect("pid");
    assert!(fake.kill_process(&id).await);
    assert!(!process_alive(pid as i32));
    assert_eq!(
        client.status(&ids.project_id, &id).await.as_deref(),
        Some("CRASHED")
    );

    assert!(fake.set_status(&id, "SLEEPING"));
    assert_eq!(
        client.status(&ids.project_id, &id).await.as_deref(),
        Some("SLEEPING")
    );

    let orphan = fake.create_service_behind_our_back(&ids.project_id, "pool-orphan");
    let listed = client.services(&ids.project_id).await;
    let node = listed
        .iter()
        .find(|n| n["id"] == orphan.as_str())
        .expect("orphan listed");
    assert_eq!(node["name"], "pool-orphan");
    assert_eq!(node["deployments"]["edges"], json!([]));
}

#[tokio::test]
async fn project_per_agent_create_list_delete() {
    let fake = start().await;
    let client = Client::new(&fake);
    let workspace_id = fake.shared_ids().workspace_id;

    let data = client
        .data(
            PROJECT_CREATE,
            json!({"input": {"name": "pool-agent-1", "workspaceId": workspace_id}}),
        )
        .await;
    let project = &data["projectCreate"];
    let project_id = project["id"].as_str().expect("project id").to_string();
    let environment = &project["environments"]["edges"][0]["node"];
    assert_eq!(environment["name"], "production");
    let environment_id = environment["id"].as_str().expect("env id").to_string();

    let service_id = client
        .create_service(&project_id, &environment_id, "agent")
        .await;
    let domain = client.create_domain(&service_id, &environment_id).await;
    let data = client
        .data(
            VOLUME_CREATE,
            json!({"input": {"projectId": project_id, "serviceId": service_id, "mountPath": "/data", "environmentId": environment_id}}),
        )
        .await;
    assert!(data["volumeCreate"]["id"].is_string());
    client
        .commit(&environment_id, &service_id, gateway_vars("t"))
        .await;
    client
        .wait_status(&project_id, &service_id, "SUCCESS")
        .await;
    let pid = fake.service(&service_id).and_then(|s| s.pid).expect("pid");

    let data = client
        .data(
            &workspace_query(),
            json!({"workspaceId": workspace_id, "after": null}),
        )
        .await;
    let projects = &data["workspace"]["projects"];
    assert_eq!(projects["pageInfo"]["hasNextPage"], false);
    let node = projects["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| &e["node"])
        .find(|n| n["id"] == project_id.as_str())
        .expect("project listed");
    assert_eq!(node["name"], "pool-agent-1");
    assert_eq!(
        node["environments"]["edges"][0]["node"]["id"],
        environment_id.as_str()
    );
    let service = &node["services"]["edges"][0]["node"];
    assert_eq!(service["id"], service_id.as_str());
    assert_eq!(
        service["deployments"]["edges"][0]["node"]["status"],
        "SUCCESS"
    );
    assert_eq!(
        service["serviceInstances"]["edges"][0]["node"]["domains"]["serviceDomains"][0]["domain"],
        domain.as_str()
    );

    let data = client.data(PROJECT_DELETE, json!({"id": project_id})).await;
    assert_eq!(data["projectDelete"], true);
    wait_until(Duration::from_secs(10), || async {
        !process_alive(pid as i32)
    })
    .await;
    assert!(fake.volumes().is_empty());
    assert!(fake.services().is_empty());
    assert!(fake.projects().iter().all(|p| p.id != project_id));
    assert_eq!(
        client
            .error(&project_query(), json!({"id": project_id, "after": null}))
            .await,
        "Project not found"
    );
    assert_eq!(
        client
            .error(
                PROJECT_CREATE,
                json!({"input": {"name": "x", "workspaceId": "someone-else"}})
            )
            .await,
        "Workspace not found"
    );
}

#[tokio::test]
async fn listings_are_paginated_by_cursor() {
    let fake = start_with(FakeConfig {
        page_size: 2,
        ..FakeConfig::default()
    })
    .await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            client
                .create_service(&ids.project_id, &ids.environment_id, &format!("pool-{i}"))
                .await,
        );
    }

    let mut pages = Vec::new();
    let mut after = Value::Null;
    loop {
        let data = client
            .data(
                &project_query(),
                json!({"id": ids.project_id, "after": after}),
            )
            .await;
        let services = data["project"]["services"].clone();
        pages.push(
            services["edges"]
                .as_array()
                .expect("edges")
                .iter()
                .map(|e| e["node"]["id"].as_str().expect("id").to_string())
                .collect::<Vec<_>>(),
        );
        if services["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = services["pageInfo"]["endCursor"].clone();
        assert!(after.is_string());
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), created);

    // `first` below the page size is honoured.
    let one = client
        .data(
            "query($id: String!) { project(id: $id) { services(first: 1) { edges { node { id } } pageInfo { hasNextPage endCursor } } } }",
            json!({"id": ids.project_id}),
        )
        .await;
    assert_eq!(
        one["project"]["services"]["edges"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(one["project"]["services"]["pageInfo"]["hasNextPage"], true);

    // Projects page the same way: the shared one and three more make two pages.
    for i in 0..3 {
        client
            .data(
                PROJECT_CREATE,
                json!({"input": {"name": format!("agent-{i}"), "workspaceId": ids.workspace_id}}),
            )
            .await;
    }
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let data = client
            .data(
                &workspace_query(),
                json!({"workspaceId": ids.workspace_id, "after": after}),
            )
            .await;
        let projects = data["workspace"]["projects"].clone();
        for edge in projects["edges"].as_array().expect("edges") {
            seen.push(edge["node"]["name"].as_str().expect("name").to_string());
        }
        if projects["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = projects["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen, ["agentpool", "agent-0", "agent-1", "agent-2"]);
    assert_eq!(fake.stats().requests_for("workspace"), 2);
}

#[tokio::test]
async fn a_bad_or_missing_token_is_401() {
    let fake = start().await;
    let http = reqwest::Client::new();
    let body = json!({"query": project_query(), "variables": {"id": fake.shared_ids().project_id}});
    for request in [
        http.post(fake.url()).bearer_auth("wrong").json(&body),
        http.post(fake.url()).json(&body),
    ] {
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body, json!({"errors": [{"message": "Not Authorized"}]}));
    }
    assert_eq!(fake.stats().unauthorized, 2);
    assert!(fake.stats().requests.is_empty());
}

#[tokio::test]
async fn missing_things_are_named_in_the_error() {
    let fake = start().await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();
    let nobody = "00000000-0000-0000-0000-000000000000";
    assert_eq!(
        client.error(SERVICE_DELETE, json!({"id": nobody})).await,
        "Service not found"
    );
    assert_eq!(
        client.error(PROJECT_DELETE, json!({"id": nobody})).await,
        "Project not found"
    );
    assert_eq!(
        client
            .error(VOLUME_DELETE, json!({"volumeId": nobody}))
            .await,
        "Volume not found"
    );
    assert_eq!(
        client
            .error(
                DOMAIN_CREATE,
                json!({"input": {"serviceId": nobody, "environmentId": ids.environment_id}})
            )
            .await,
        "Service not found"
    );
    assert_eq!(
        client
            .error(
                SERVICE_CREATE,
                json!({"input": {"projectId": nobody, "environmentId": ids.environment_id, "name": "x"}})
            )
            .await,
        "Project not found"
    );
    let patch = json!({"services": {nobody: {"source": {"image": "x"}}}});
    assert_eq!(
        client
            .error(
                COMMIT,
                json!({"environmentId": ids.environment_id, "patch": patch})
            )
            .await,
        "Service not found"
    );
    // A request the fake cannot read is an error, not a panic.
    assert!(client
        .error(SERVICE_CREATE, json!({"input": "not an object"}))
        .await
        .contains("input"));
}

#[tokio::test]
async fn http_level_faults() {
    let fake = start().await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();
    let create = || json!({"input": {"projectId": ids.project_id, "environmentId": ids.environment_id, "name": "pool-x"}});

    fake.inject(Fault::ServerError, Scope::Next { op: None, count: 1 });
    let (status, _, _) = client.raw(SERVICE_CREATE, create()).await.expect("reply");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    fake.inject(
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        Scope::Next { op: None, count: 1 },
    );
    let (status, headers, _) = client.raw(SERVICE_CREATE, create()).await.expect("reply");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[reqwest::header::RETRY_AFTER], "7");

    // The connection closes before any status line: `send` itself fails, as on a real drop.
    fake.inject(Fault::Drop, Scope::Next { op: None, count: 1 });
    let dropped = client.request(SERVICE_CREATE, create()).send().await;
    assert!(
        dropped.as_ref().is_err_and(reqwest::Error::is_request),
        "a dropped connection answered: {dropped:?}"
    );

    // None of those did anything.
    assert!(fake.services().is_empty());
    let stats = fake.stats();
    assert_eq!(stats.requests_for("serviceCreate"), 3);
    for kind in ["ServerError", "RateLimited", "Drop"] {
        assert_eq!(stats.faults_of(kind), 1, "{kind}");
    }

    fake.inject(Fault::LostReply, Scope::Next { op: None, count: 1 });
    let lost = client.request(SERVICE_CREATE, create()).send().await;
    assert!(
        lost.as_ref().is_err_and(reqwest::Error::is_request),
        "a lost reply arrived: {lost:?}"
    );
    // ...yet the service was made: a retry would make a second one.
    assert_eq!(fake.services().len(), 1);
    client
        .create_service(&ids.project_id, &ids.environment_id, "pool-x")
        .await;
    assert_eq!(fake.services().len(), 2);
}

#[tokio::test]
async fn graphql_level_faults() {
    let fake = start().await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();
    let service_id = client
        .create_service(&ids.project_id, &ids.environment_id, "pool-v")
        .await;
    let volume = json!({"input": {"projectId": ids.project_id, "serviceId": service_id, "mountPath": "/data", "environmentId": ids.environment_id}});

    fake.inject(Fault::RateLimitMessage, Scope::Next { op: None, count: 2 });
    assert_eq!(
        client.error(VOLUME_CREATE, volume.clone()).await,
        "You are creating volumes too quickly"
    );
    assert_eq!(
        client
            .error(SERVICE_DELETE, json!({"id": service_id}))
            .await,
        "Rate limit exceeded"
    );
    fake.inject(Fault::GraphqlError, Scope::Next { op: None, count: 1 });
    assert_eq!(
        client.error(VOLUME_CREATE, volume.clone()).await,
        "Internal error"
    );
    assert!(fake.volumes().is_empty());
    assert_eq!(fake.services().len(), 1);

    // Scoped to one operation: others pass untouched and do not use it up.
    fake.inject(
        Fault::GraphqlError,
        Scope::Next {
            op: Some("volumeCreate".into()),
            count: 1,
        },
    );
    client
        .data(&project_query(), json!({"id": ids.project_id}))
        .await;
    assert_eq!(
        client.error(VOLUME_CREATE, volume.clone()).await,
        "Internal error"
    );
    client.data(VOLUME_CREATE, volume).await;
    assert_eq!(fake.volumes().len(), 1);
    assert_eq!(fake.stats().faults_of("GraphqlError"), 2);
}

#[tokio::test]
async fn slow_answers_come_late_and_finish_even_when_the_client_gave_up() {
    let fake = start().await;
    let client = Client::new(&fake);
    let ids = fake.shared_ids();
    let create = json!({"input": {"projectId": ids.project_id, "environmentId": ids.environment_id, "name": "pool-slow"}});

    fake.inject(Fault::Slow { ms: 300 }, Scope::Next { op: None, count: 1 });
    let started = Instant::now();
    client.data(SERVICE_CREATE, create.clone()).await;
    assert!(started.elapsed() >= Duration::from_millis(300));

    fake.inject(Fault::Slow { ms: 500 }, Scope::Next { op: None, count: 1 });
    let timed_out = client
        .request(SERVICE_CREATE, create)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(timed_out.is_err_and(|e| e.is_timeout()));
    wait_until(Duration::from_secs(5), || async {
        fake.services().len() == 2
    })
    .await;
}

#[tokio::test]
async fn rate_faults_are_deterministic_by_seed() {
    async fn failures(seed: u64) -> Vec<usize> {
        let fake = start().await;
        let client = Client::new(&fake);
        fake.inject(
            Fault::ServerError,
            Scope::Rate {
                per_mille: 300,
                seed,
            },
        );
        let mut failed = Vec::new();
        for i in 0..40 {
            let (status, _, _) = client
                .raw(
                    &project_query(),
                    json!({"id": fake.shared_ids().project_id}),
                )
                .await
                .expect("reply");
            if status == StatusCode::SERVICE_UNAVAILABLE {
                failed.push(i);
            }
        }
        assert_eq!(fake.stats().faults_of("ServerError"), failed.len() as u64);
        failed
    }
    let first = failures(42).await;
    assert!(!first.is_empty() && first.len() < 40, "{first:?}");
    assert_eq!(first, failures(42).await);
    assert_ne!(first, failures(43).await);
}

#[tokio::test]
async fn faults_can_be_injected_over_http() {
    let fake = start().await;
    let client = Client::new(&fake);
    let http = reqwest::Client::new();
    let control = format!("{}/_fake/faults", fake.base_url());
    let response = http
        .post(&control)
        .json(&json!({
            "fault": {"kind": "RateLimited", "retryAfterSecs": 3},
            "scope": {"kind": "Rate", "perMille": 1000, "seed": 1},
        }))
        .send()
        .await
        .expect("inject");
    assert_eq!(response.status(), StatusCode::OK);
    let query = project_query();
    let vars = json!({"id": fake.shared_ids().project_id});
    let (status, headers, _) = client.raw(&query, vars.clone()).await.expect("reply");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[reqwest::header::RETRY_AFTER], "3");

    let response = http.delete(&control).send().await.expect("clear");
    assert_eq!(response.status(), StatusCode::OK);
    client.data(&query, vars).await;

    let bad = http
        .post(&control)
        .json(&json!({"fault": {"kind": "Nope"}}))
        .send()
        .await
        .expect("bad inject");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let stats: Value = http
        .get(format!("{}/_fake/stats", fake.base_url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    assert_eq!(stats["requests"]["project"], 2);
    assert_eq!(stats["faults"]["RateLimited"], 1);
}

#[tokio::test]
async fn dropping_the_fake_stops_its_stubs() {
    let fake = start().await;
    let client = Client::new(&fake);
    let (id, _) = deployed_service(&fake, &client, "pool-left").await;
    let pid = fake.service(&id).and_then(|s| s.pid).expect("pid");
    drop(fake);
    wait_until(Duration::from_secs(10), || async {
        !process_alive(pid as i32)
    })
    .await;
}
