//! A stateful fake of Railway's GraphQL API (`POST /graphql/v2`), for the Railway provider's
//! tests.
//!
//! It keeps what it was asked to create (projects → environments, services, domains, volumes,
//! variables, deployments; a volume outlives its service, as at Railway) so a test can assert
//! that nothing was left behind, and it really "deploys": a commit starts `agentpool stub-agent`
//! on the service's loopback port with exactly the committed variables, so health checks and
//! provisioning reach a live runtime at the domain the API returned. Faults are injected per
//! request ([`Fault`], [`Scope`]) from the test or over HTTP (`POST /_fake/faults`).
//!
//! A service connected to a repo (`serviceConnect`) is built first: BUILDING for the profile's
//! build time ([`LatencyProfile::railway_build`]), then deployed as above, or FAILED when the test
//! asked for failed builds ([`RailwayFake::fail_builds`]).
//!
//! Operations are recognised by their root field and answered with a fixed, full shape (the
//! fields the provider selects and a few more); selections are not evaluated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use super::faults::{
    apply, bearer_in, control_routes, detached, new_id, now, unpoisoned, Controls, Fake, Faults,
    Server,
};
pub use super::faults::{FakeStats, Fault, Scope};
use super::graphql;
use crate::latency::{Draws, LatencyProfile};

/// Deployment statuses the fake sets itself (Railway has more; tests may set any with
/// [`RailwayFake::set_status`]).
pub const BUILDING: &str = "BUILDING";
pub const DEPLOYING: &str = "DEPLOYING";
pub const SUCCESS: &str = "SUCCESS";
pub const CRASHED: &str = "CRASHED";
pub const FAILED: &str = "FAILED";
pub const REMOVED: &str = "REMOVED";

/// Log lines kept per deployment: enough to see why a stub did not start.
const LOG_LINES: usize = 200;

#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Bearer tokens accepted; any other (or none) is answered 401.
    pub tokens: Vec<String>,
    /// The one workspace: `projectCreate` and `workspace(...)` accept only this id.
    pub workspace_id: String,
    /// The pre-seeded shared project (one service per agent) and its environment.
    pub project_id: String,
    pub environment_id: String,
    pub project_name: String,
    /// Largest page of `project.services` and `workspace.projects`, whatever `first` asks:
    /// small values make a test walk several pages.
    pub page_size: usize,
    /// Handed to every stub agent besides the committed variables (`STUB_READY_DELAY_MS`, ...).
    pub stub_env: Vec<(String, String)>,
    /// The `agentpool` binary to deploy; `None` = the harness's [`crate::agentpool_bin`].
    pub agent_bin: Option<PathBuf>,
    /// 0 = any free port.
    pub port: u16,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            workspace_id: uuid::Uuid::new_v4().to_string(),
            project_id: uuid::Uuid::new_v4().to_string(),
            environment_id: uuid::Uuid::new_v4().to_string(),
            project_name: "agentpool".into(),
            page_size: 500,
            stub_env: Vec::new(),
            agent_bin: None,
            port: 0,
        }
    }
}

/// The ids the fake was seeded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedIds {
    pub workspace_id: String,
    pub project_id: String,
    pub environment_id: String,
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub id: String,
    pub project_id: String,
    pub environment_id: String,
    pub name: String,
    pub domain: Option<String>,
    pub port: Option<u16>,
    pub image: Option<String>,
    /// The repo it is connected to, and its branch.
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub root_directory: Option<String>,
    /// Every repo it was built from (a disconnected service keeps what it was built from).
    pub builds: Vec<Build>,
    pub start_command: Option<String>,
    /// Values are secrets (gateway tokens): serialized and printed by name only.
    #[serde(serialize_with = "names_only")]
    pub variables: BTreeMap<String, String>,
    /// The latest deployment's status; `None` before the first deploy.
    pub status: Option<String>,
    pub deployments: usize,
    /// The latest deployment's process while it runs.
    pub pid: Option<u32>,
}

fn names_only<S: serde::Serializer>(
    variables: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(variables.keys())
}

impl std::fmt::Debug for ServiceView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceView")
            .field("id", &self.id)
            .field("project_id", &self.project_id)
            .field("environment_id", &self.environment_id)
            .field("name", &self.name)
            .field("domain", &self.domain)
            .field("port", &self.port)
            .field("image", &self.image)
            .field("repo", &self.repo)
            .field("branch", &self.branch)
            .field("root_directory", &self.root_directory)
            .field("builds", &self.builds)
            .field("start_command", &self.start_command)
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("status", &self.status)
            .field("deployments", &self.deployments)
            .field("pid", &self.pid)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub workspace_id: String,
    /// `(id, name)`.
    pub environments: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    pub id: String,
    pub project_id: String,
    pub service_id: String,
    pub environment_id: String,
    pub mount_path: String,
}

/// What one build was made from, as the builder saw it when it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    pub repo: String,
    pub branch: Option<String>,
    pub root_directory: Option<String>,
    /// The variables the build saw, by name (their values are secrets).
    pub variables: Vec<String>,
}

struct Environment {
    id: String,
    name: String,
}

struct Project {
    seq: u64,
    id: String,
    name: String,
    workspace_id: String,
    created_at: String,
    environments: Vec<Environment>,
}

struct Deployment {
    id: String,
    status: String,
    created_at: String,
    pid: Option<u32>,
    /// Turns true once the process has exited (or never started): a redeploy waits for it
    /// before binding the same port.
    exited: watch::Receiver<bool>,
    logs: Vec<String>,
}

struct Service {
    seq: u64,
    id: String,
    name: String,
    project_id: String,
    environment_id: String,
    created_at: String,
    /// Allocated by the first domain create or deploy; the stub listens here.
    port: Option<u16>,
    domain: Option<String>,
    image: Option<String>,
    repo: Option<String>,
    branch: Option<String>,
    root_directory: Option<String>,
    builds: Vec<Build>,
    start_command: Option<String>,
    variables: BTreeMap<String, String>,
    /// Oldest first.
    deployments: Vec<Deployment>,
}

impl Service {
    fn latest(&self) -> Option<&Deployment> {
        self.deployments.last()
    }

    fn view(&self) -> ServiceView {
        ServiceView {
            id: self.id.clone(),
            project_id: self.project_id.clone(),
            environment_id: self.environment_id.clone(),
            name: self.name.clone(),
            domain: self.domain.clone(),
            port: self.port,
            image: self.image.clone(),
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            root_directory: self.root_directory.clone(),
            builds: self.builds.clone(),
            start_command: self.start_command.clone(),
            variables: self.variables.clone(),
            status: self.latest().map(|d| d.status.clone()),
            deployments: self.deployments.len(),
            pid: self.latest().and_then(|d| d.pid),
        }
    }
}

struct Volume {
    id: String,
    project_id: String,
    service_id: String,
    environment_id: String,
    mount_path: String,
}

#[derive(Default)]
struct World {
    next_seq: u64,
    projects: Vec<Project>,
    services: Vec<Service>,
    volumes: Vec<Volume>,
}

impl World {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn project(&self, id: &str) -> Result<&Project, String> {
        self.projects
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| "Project not found".to_string())
    }

    fn service_mut(&mut self, id: &str) -> Result<&mut Service, String> {
        self.services
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| "Service not found".to_string())
    }

    fn deployment_mut(&mut self, service_id: &str, deployment_id: &str) -> Option<&mut Deployment> {
        self.services
            .iter_mut()
            .find(|s| s.id == service_id)?
            .deployments
            .iter_mut()
            .find(|d| d.id == deployment_id)
    }

    /// The project an environment belongs to.
    fn project_of_environment(&self, environment_id: &str) -> Option<&Project> {
        self.projects
            .iter()
            .find(|p| p.environments.iter().any(|e| e.id == environment_id))
    }

    /// Removes a service, stopping its process. Its volumes stay, as at Railway: a volume is
    /// deleted by `volumeDelete` or with its project.
    fn remove_service(&mut self, id: &str) {
        if let Some(at) = self.services.iter().position(|s| s.id == id) {
            let mut service = self.services.remove(at);
            for deployment in &mut service.deployments {
                deployment.status = REMOVED.into();
                if let Some(pid) = deployment.pid {
                    kill(pid);
                }
            }
        }
    }
}

/// SIGKILL by pid. The pid is still ours: the runner that reaps a process clears it under the
/// same lock the callers hold.
fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A loopback port that was free a moment ago (the stub binds it later; a clash shows up as a
/// crashed deployment, as a port clash would).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("Internal error: no free port: {e}"))
}

struct Inner {
    config: FakeConfig,
    agent_bin: PathBuf,
    world: Mutex<World>,
    faults: Faults,
    /// How long a deployment builds before its process starts (DEPLOYING meanwhile).
    build: Mutex<Option<Arc<Draws>>>,
    /// How long a build from source takes before that (BUILDING meanwhile).
    source_build: Mutex<Option<Arc<Draws>>>,
    /// Builds from source still to fail.
    failing_builds: Mutex<u32>,
    /// The runtime's pace ([`LatencyProfile::stub_env`]), under the config's `stub_env`.
    stub_env: Mutex<Vec<(String, String)>>,
}

impl Inner {
    /// The state, also after a panic elsewhere (a failed test must still be able to clean up).
    fn world(&self) -> MutexGuard<'_, World> {
        unpoisoned(&self.world)
    }
}

impl Fake for Inner {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_in(headers, &self.config.tokens)
    }

    /// Railway's shape for errors sent with an HTTP error status (401, 429).
    fn error(&self, status: StatusCode, message: &str) -> Response {
        (status, Json(json!({"errors": [{"message": message}]}))).into_response()
    }

    fn state(&self) -> Value {
        let world = self.world();
        json!({
            "projects": world.projects.iter().map(project_view).collect::<Vec<_>>(),
            "services": world.services.iter().map(Service::view).collect::<Vec<_>>(),
            "volumes": world.volumes.iter().map(volume_view).collect::<Vec<_>>(),
        })
    }

    fn rate_limit_message(&self, op: &str) -> Response {
        graphql_error(if op == "volumeCreate" {
            "You are creating volumes too quickly"
        } else {
            "Rate limit exceeded"
        })
    }

    fn internal_error(&self) -> Response {
        graphql_error("Internal error")
    }
}

/// A running fake; every stub process it started is killed when it is dropped.
pub struct RailwayFake {
    inner: Arc<Inner>,
    server: Server,
}

impl RailwayFake {
    pub async fn start(config: FakeConfig) -> Self {
        let agent_bin = config
            .agent_bin
            .clone()
            .unwrap_or_else(|| crate::agentpool_bin().to_path_buf());
        let mut world = World::default();
        let seq = world.seq();
        world.projects.push(Project {
            seq,
            id: config.project_id.clone(),
            name: config.project_name.clone(),
            workspace_id: config.workspace_id.clone(),
            created_at: now(),
            environments: vec![Environment {
                id: config.environment_id.clone(),
                name: "production".into(),
            }],
        });
        let port = config.port;
        let inner = Arc::new(Inner {
            config,
            agent_bin,
            world: Mutex::new(world),
            faults: Faults::default(),
            build: Mutex::new(None),
            source_build: Mutex::new(None),
            failing_builds: Mutex::new(0),
            stub_env: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/graphql/v2", post(graphql_route))
            .merge(control_routes())
            .with_state(inner.clone());
        let server = Server::start("railway", port, app).await;
        Self { inner, server }
    }

    /// The GraphQL endpoint.
    /// Railway at `profile`'s pace: each request, each build and deploy, and the runtimes it
    /// deploys (their boot, health answers and provisioning). Set before the first deploy: the
    /// runtimes' pace is part of the deployment's environment.
    pub fn set_latency(&self, profile: &LatencyProfile) {
        self.inner
            .faults
            .set_latency(Some(profile.draws(profile.railway_call, 1)));
        *unpoisoned(&self.inner.build) = Some(Arc::new(profile.draws(profile.railway_deploy, 5)));
        *self
            .inner
            .source_build
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(profile.draws(profile.railway_build, 6)));
        *self
            .inner
            .stub_env
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = profile.stub_env();
    }

    pub fn url(&self) -> String {
        format!("{}/graphql/v2", self.server.base_url())
    }

    pub fn shared_ids(&self) -> SharedIds {
        let config = &self.inner.config;
        SharedIds {
            workspace_id: config.workspace_id.clone(),
            project_id: config.project_id.clone(),
            environment_id: config.environment_id.clone(),
        }
    }

    /// Every live service, oldest first.
    pub fn services(&self) -> Vec<ServiceView> {
        self.inner
            .world()
            .services
            .iter()
            .map(Service::view)
            .collect()
    }

    pub fn service(&self, id: &str) -> Option<ServiceView> {
        let world = self.inner.world();
        world
            .services
            .iter()
            .find(|s| s.id == id)
            .map(Service::view)
    }

    pub fn projects(&self) -> Vec<ProjectView> {
        self.inner
            .world()
            .projects
            .iter()
            .map(project_view)
            .collect()
    }

    pub fn volumes(&self) -> Vec<VolumeView> {
        self.inner.world().volumes.iter().map(volume_view).collect()
    }

    /// The latest deployment's output (stdout and stderr lines), to see why it did not start.
    pub fn logs(&self, service_id: &str) -> Vec<String> {
        let world = self.inner.world();
        world
            .services
            .iter()
            .find(|s| s.id == service_id)
            .and_then(Service::latest)
            .map(|d| d.logs.clone())
            .unwrap_or_default()
    }

    /// Kills the latest deployment's process behind Railway's back and returns once the
    /// deployment shows CRASHED; false if it had no process.
    pub async fn kill_process(&self, service_id: &str) -> bool {
        let exited = {
            let world = self.inner.world();
            let Some(deployment) = world
                .services
                .iter()
                .find(|s| s.id == service_id)
                .and_then(Service::latest)
            else {
                return false;
            };
            let Some(pid) = deployment.pid else {
                return false;
            };
            kill(pid);
            deployment.exited.clone()
        };
        wait_exited(exited).await;
        true
    }

    /// The next `count` builds from source end FAILED (after their build time), as a build of a
    /// ref that does not compile does.
    pub fn fail_builds(&self, count: u32) {
        *self
            .inner
            .failing_builds
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = count;
    }

    /// Sets the latest deployment's status (e.g. SLEEPING); false if there is none.
    pub fn set_status(&self, service_id: &str, status: &str) -> bool {
        let mut world = self.inner.world();
        let Some(deployment) = world
            .services
            .iter_mut()
            .find(|s| s.id == service_id)
            .and_then(|s| s.deployments.last_mut())
        else {
            return false;
        };
        deployment.status = status.to_string();
        true
    }

    /// A service nobody asked this fake's API for (someone used the dashboard): never
    /// deployed, in the project's first environment. Panics on an unknown project.
    pub fn create_service_behind_our_back(&self, project_id: &str, name: &str) -> String {
        let mut world = self.inner.world();
        let environment_id = world
            .project(project_id)
            .ok()
            .and_then(|p| p.environments.first())
            .map(|e| e.id.clone())
            .unwrap_or_else(|| panic!("no project {project_id} in the fake"));
        let id = new_id();
        let seq = world.seq();
        world.services.push(Service {
            seq,
            id: id.clone(),
            name: name.to_string(),
            project_id: project_id.to_string(),
            environment_id,
            created_at: now(),
            port: None,
            domain: None,
            image: None,
            repo: None,
            branch: None,
            root_directory: None,
            builds: Vec::new(),
            start_command: None,
            variables: BTreeMap::new(),
            deployments: Vec::new(),
        });
        id
    }
}

impl RailwayFake {
    /// Deletes a service without the API (someone used the dashboard), stopping its process;
    /// false if there is no such service.
    pub fn delete_service_behind_our_back(&self, service_id: &str) -> bool {
        let mut world = self.inner.world();
        let found = world.services.iter().any(|s| s.id == service_id);
        world.remove_service(service_id);
        found
    }

    /// A service deployed outside this fake's API whose deployment reports `SUCCESS` and runs
    /// nothing: a fleet for counting requests, whose runtimes live elsewhere. Panics on an
    /// unknown project.
    pub fn create_deployed_service_behind_our_back(&self, project_id: &str, name: &str) -> String {
        let id = self.create_service_behind_our_back(project_id, name);
        let mut world = self.inner.world();
        if let Some(service) = world.services.iter_mut().find(|s| s.id == id) {
            let (_, exited) = watch::channel(true);
            service.deployments.push(Deployment {
                id: new_id(),
                status: "SUCCESS".into(),
                created_at: now(),
                pid: None,
                exited,
                logs: Vec::new(),
            });
        }
        id
    }
}

impl Drop for RailwayFake {
    fn drop(&mut self) {
        // First, so no request deploys anything after the kills below.
        self.server.stop();
        let mut world = self.inner.world();
        for service in &mut world.services {
            for deployment in &mut service.deployments {
                if let Some(pid) = deployment.pid {
                    kill(pid);
                }
                // A runner that has not spawned yet must not start anything now.
                deployment.status = REMOVED.into();
            }
        }
    }
}

async fn wait_exited(mut exited: watch::Receiver<bool>) {
    // An error means the runner is gone, which it only is once the process is.
    let _ = exited.wait_for(|done| *done).await;
}

fn project_view(p: &Project) -> ProjectView {
    ProjectView {
        id: p.id.clone(),
        name: p.name.clone(),
        workspace_id: p.workspace_id.clone(),
        environments: p
            .environments
            .iter()
            .map(|e| (e.id.clone(), e.name.clone()))
            .collect(),
    }
}

fn volume_view(v: &Volume) -> VolumeView {
    VolumeView {
        id: v.id.clone(),
        project_id: v.project_id.clone(),
        service_id: v.service_id.clone(),
        environment_id: v.environment_id.clone(),
        mount_path: v.mount_path.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn errors_body(message: &str) -> Value {
    json!({"errors": [{"message": message}], "data": null})
}

/// An error the way Railway sends most of them: HTTP 200, `errors`, `data: null`.
fn graphql_error(message: &str) -> Response {
    (StatusCode::OK, Json(errors_body(message))).into_response()
}

async fn graphql_route(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    detached(handle(inner, headers, body)).await
}

/// A request as read: its root field, arguments resolved, and the whole document for nested
/// connection arguments.
struct Request {
    root: graphql::RootField,
    args: Map<String, Value>,
    query: String,
    variables: Map<String, Value>,
}

fn parse_request(body: &[u8]) -> Result<Request, String> {
    let body: Value =
        serde_json::from_slice(body).map_err(|e| format!("Body is not valid JSON: {e}"))?;
    let query = body
        .get("query")
        .and_then(Value::as_str)
        .ok_or("Must provide query string.")?
        .to_string();
    let variables = match body.get("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err("Variables must be provided as an Object".into()),
    };
    let root = graphql::root_field(&query)?;
    let args = graphql::resolve(&root.args, &variables)?;
    Ok(Request {
        root,
        args,
        query,
        variables,
    })
}

async fn handle(inner: Arc<Inner>, headers: HeaderMap, body: Bytes) -> Response {
    if !inner.authorized(&headers) {
        inner.faults.unauthorized();
        return inner.error(StatusCode::UNAUTHORIZED, "Not Authorized");
    }
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err(message) => {
            inner.faults.count("<invalid>");
            return (StatusCode::BAD_REQUEST, Json(errors_body(&message))).into_response();
        }
    };
    let op = request.root.name.clone();
    let fault = inner.faults.admit(&op);
    tokio::time::sleep(inner.faults.latency()).await;
    if fault == Some(Fault::EchoError) {
        // Railway's way: HTTP 200, the error quoting the input it refused.
        return graphql_error(&format!(
            "Invalid input: {}",
            Value::Object(request.variables.clone())
        ));
    }
    apply(&*inner, fault, &op, async {
        match execute(&inner, &request) {
            Ok(value) => {
                let mut data = Map::new();
                data.insert(request.root.response_key().to_string(), value);
                Json(json!({"data": data})).into_response()
            }
            Err(message) => graphql_error(&message),
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Operations: each returns the value of its root field, or the message of a GraphQL error.

fn execute(inner: &Arc<Inner>, request: &Request) -> Result<Value, String> {
    let args = &request.args;
    match request.root.name.as_str() {
        "serviceCreate" => service_create(inner, object_arg(args, "input")?),
        "serviceDomainCreate" => service_domain_create(inner, object_arg(args, "input")?),
        "volumeCreate" => volume_create(inner, object_arg(args, "input")?),
        "volumeDelete" => volume_delete(inner, str_arg(args, "volumeId")?),
        "environmentPatchCommit" => environment_patch_commit(
            inner,
            str_arg(args, "environmentId")?,
            args.get("patch").unwrap_or(&Value::Null),
        ),
        "serviceDelete" => service_delete(inner, str_arg(args, "id")?),
        "serviceInstanceUpdate" => service_instance_update(
            inner,
            str_arg(args, "serviceId")?,
            args.get("environmentId").and_then(Value::as_str),
            object_arg(args, "input")?,
        ),
        "variableCollectionUpsert" => variable_collection_upsert(inner, object_arg(args, "input")?),
        "serviceConnect" => {
            service_connect(inner, str_arg(args, "id")?, object_arg(args, "input")?)
        }
        "serviceDisconnect" => service_disconnect(inner, str_arg(args, "id")?),
        "serviceUpdate" => service_update(inner, str_arg(args, "id")?, object_arg(args, "input")?),
        "projectUpdate" => project_update(inner, str_arg(args, "id")?, object_arg(args, "input")?),
        "service" => service_query(inner, request, str_arg(args, "id")?),
        "projectCreate" => project_create(inner, object_arg(args, "input")?),
        "projectDelete" => project_delete(inner, str_arg(args, "id")?),
        "project" => project_query(inner, request, str_arg(args, "id")?),
        "workspace" => workspace_query(inner, request, str_arg(args, "workspaceId")?),
        other => Err(format!(
            "Cannot query field \"{other}\" on type \"{}\".",
            if request.root.mutation {
                "Mutation"
            } else {
                "Query"
            }
        )),
    }
}

fn object_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    match args.get(name) {
        Some(value @ Value::Object(_)) => Ok(value),
        _ => Err(format!("Argument \"{name}\" must be an input object")),
    }
}

fn str_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Argument \"{name}\" of type \"String!\" is required"))
}

fn str_field<'a>(input: &'a Value, name: &str) -> Result<&'a str, String> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("Field \"{name}\" of type \"String!\" is required"))
}

fn opt_str_field<'a>(input: &'a Value, name: &str) -> Result<Option<&'a str>, String> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("Field \"{name}\" must be a String")),
    }
}

fn service_create(inner: &Inner, input: &Value) -> Result<Value, String> {
    let project_id = str_field(input, "projectId")?;
    let environment_id = opt_str_field(input, "environmentId")?;
    let name = match opt_str_field(input, "name")? {
        Some(name) => name.to_string(),
        // Railway names an unnamed service itself.
        None => format!("service-{}", &new_id()[..8]),
    };
    let mut world = inner.world();
    let project = world.project(project_id)?;
    let environment_id = match environment_id {
        Some(id) => project
            .environments
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.id.clone())
            .ok_or("Environment not found")?,
        None => project
            .environments
            .first()
            .map(|e| e.id.clone())
            .ok_or("Environment not found")?,
    };
    let id = new_id();
    let seq = world.seq();
    let created_at = now();
    world.services.push(Service {
        seq,
        id: id.clone(),
        name: name.clone(),
        project_id: project_id.to_string(),
        environment_id,
        created_at: created_at.clone(),
        port: None,
        domain: None,
        image: None,
        repo: None,
        branch: None,
        root_directory: None,
        builds: Vec::new(),
        start_command: None,
        variables: BTreeMap::new(),
        deployments: Vec::new(),
    });
    Ok(json!({"id": id, "name": name, "projectId": project_id, "createdAt": created_at}))
}

fn service_domain_create(inner: &Inner, input: &Value) -> Result<Value, String> {
    let service_id = str_field(input, "serviceId")?;
    let environment_id = str_field(input, "environmentId")?;
    let mut world = inner.world();
    let service = world.service_mut(service_id)?;
    if service.environment_id != environment_id {
        return Err("Environment not found".into());
    }
    // One loopback port per service, so a second create can only name the same place.
    let domain = match &service.domain {
        Some(domain) => domain.clone(),
        None => {
            let port = match service.port {
                Some(port) => port,
                None => free_port()?,
            };
            service.port = Some(port);
            let domain = format!("127.0.0.1:{port}");
            service.domain = Some(domain.clone());
            domain
        }
    };
    Ok(
        json!({"id": new_id(), "domain": domain, "environmentId": environment_id, "serviceId": service_id}),
    )
}

fn volume_create(inner: &Inner, input: &Value) -> Result<Value, String> {
    let project_id = str_field(input, "projectId")?;
    let service_id = opt_str_field(input, "serviceId")?;
    let mount_path = str_field(input, "mountPath")?;
    let environment_id = opt_str_field(input, "environmentId")?;
    let mut world = inner.world();
    let project = world.project(project_id)?;
    let environment_id = match environment_id {
        Some(id) if project.environments.iter().any(|e| e.id == id) => id.to_string(),
        Some(_) => return Err("Environment not found".into()),
        None => project
            .environments
            .first()
            .map(|e| e.id.clone())
            .ok_or("Environment not found")?,
    };
    let service_id = service_id.ok_or("Field \"serviceId\" is required by the fake")?;
    if !world
        .services
        .iter()
        .any(|s| s.id == service_id && s.project_id == project_id)
    {
        return Err("Service not found".into());
    }
    let id = new_id();
    world.volumes.push(Volume {
        id: id.clone(),
        project_id: project_id.to_string(),
        service_id: service_id.to_string(),
        environment_id,
        mount_path: mount_path.to_string(),
    });
    Ok(json!({"id": id, "name": format!("volume-{}", &id[..8])}))
}

fn volume_delete(inner: &Inner, volume_id: &str) -> Result<Value, String> {
    let mut world = inner.world();
    let before = world.volumes.len();
    world.volumes.retain(|v| v.id != volume_id);
    if world.volumes.len() == before {
        return Err("Volume not found".into());
    }
    Ok(json!(true))
}

/// One service's part of a patch, checked before anything is applied.
struct ServicePatch {
    service_id: String,
    image: Option<Option<String>>,
    start_command: Option<Option<String>>,
    /// `None` removes the variable.
    variables: Vec<(String, Option<String>)>,
}

fn read_service_patch(service_id: &str, patch: &Value) -> Result<ServicePatch, String> {
    let section = |name: &str| -> Result<Option<&Map<String, Value>>, String> {
        match patch.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(format!(
                "patch: services.{service_id}.{name} must be an object"
            )),
        }
    };
    let nullable_string =
        |map: &Map<String, Value>, key: &str| -> Result<Option<Option<String>>, String> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::Null) => Ok(Some(None)),
                Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
                Some(_) => Err(format!(
                    "patch: services.{service_id}: {key} must be a string"
                )),
            }
        };
    let image = match section("source")? {
        Some(source) => nullable_string(source, "image")?,
        None => None,
    };
    let start_command = match section("deploy")? {
        Some(deploy) => nullable_string(deploy, "startCommand")?,
        None => None,
    };
    let mut variables = Vec::new();
    if let Some(vars) = section("variables")? {
        for (name, value) in vars {
            let value = match value {
                Value::Null => None,
                Value::Object(v) => match v.get("value") {
                    Some(Value::String(s)) => Some(s.clone()),
                    _ => {
                        return Err(format!(
                            "patch: services.{service_id}.variables.{name}.value must be a string"
                        ))
                    }
                },
                _ => {
                    return Err(format!(
                        "patch: services.{service_id}.variables.{name} must be {{\"value\": ...}}"
                    ))
                }
            };
            variables.push((name.clone(), value));
        }
    }
    Ok(ServicePatch {
        service_id: service_id.to_string(),
        image,
        start_command,
        variables,
    })
}

fn environment_patch_commit(
    inner: &Arc<Inner>,
    environment_id: &str,
    patch: &Value,
) -> Result<Value, String> {
    let services = match patch.get("services") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err("patch: services must be an object".into()),
    };
    let patches = services
        .iter()
        .map(|(id, p)| read_service_patch(id, p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut world = inner.world();
    let project_id = world
        .project_of_environment(environment_id)
        .map(|p| p.id.clone())
        .ok_or("Environment not found")?;
    for patch in &patches {
        if !world
            .services
            .iter()
            .any(|s| s.id == patch.service_id && s.project_id == project_id)
        {
            return Err("Service not found".into());
        }
    }
    // All checked: apply every service, then deploy every one that has an image, so one
    // commit makes exactly one deployment per service, seeing all of its variables.
    for patch in patches {
        let service = world.service_mut(&patch.service_id)?;
        if let Some(image) = patch.image {
            service.image = image;
        }
        if let Some(command) = patch.start_command {
            service.start_command = command;
        }
        for (name, value) in patch.variables {
            match value {
                Some(value) => service.variables.insert(name, value),
                None => service.variables.remove(&name),
            };
        }
        if service.image.is_some() {
            deploy(inner, service)?;
        }
    }
    Ok(json!(new_id()))
}

/// What a deployment's runner needs to start its process.
struct Launch {
    service_id: String,
    deployment_id: String,
    name: String,
    port: u16,
    env: Vec<(String, String)>,
    /// Built from a repo first (BUILDING), which may fail.
    from_source: bool,
}

/// Starts a new deployment of `service`: the previous one is removed (its process killed), the
/// new one is DEPLOYING until its stub says it listens; BUILDING before that when it is built from
/// a repo.
fn deploy(inner: &Arc<Inner>, service: &mut Service) -> Result<(), String> {
    let from_source = service.repo.is_some();
    let port = match service.port {
        Some(port) => port,
        None => free_port()?,
    };
    service.port = Some(port);
    let previous = service.deployments.last_mut().map(|old| {
        old.status = REMOVED.into();
        if let Some(pid) = old.pid {
            kill(pid);
        }
        old.exited.clone()
    });
    let (exited_tx, exited_rx) = watch::channel(false);
    let deployment_id = new_id();
    service.deployments.push(Deployment {
        id: deployment_id.clone(),
        status: if from_source { BUILDING } else { DEPLOYING }.into(),
        created_at: now(),
        pid: None,
        exited: exited_rx,
        logs: Vec::new(),
    });
    let mut env = inner
        .stub_env
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    env.retain(|(name, _)| !inner.config.stub_env.iter().any(|(n, _)| n == name));
    env.extend(inner.config.stub_env.iter().cloned());
    // Committed variables win over the fake's defaults: they are what the service was given.
    env.retain(|(name, _)| !service.variables.contains_key(name));
    env.extend(
        service
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let launch = Launch {
        service_id: service.id.clone(),
        deployment_id,
        name: service.name.clone(),
        port,
        env,
        from_source,
    };
    tokio::spawn(run_deployment(inner.clone(), launch, exited_tx, previous));
    Ok(())
}

fn push_log(inner: &Inner, launch: &Launch, line: String) {
    let mut world = inner.world();
    if let Some(deployment) = world.deployment_mut(&launch.service_id, &launch.deployment_id) {
        if deployment.logs.len() >= LOG_LINES {
            deployment.logs.remove(0);
        }
        deployment.logs.push(line);
    }
}

async fn pump_logs(inner: Arc<Inner>, launch: Arc<Launch>, from: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        push_log(&inner, &launch, line);
    }
}

/// Owns one deployment's process from start to exit and keeps its status: SUCCESS once the
/// stub prints `LISTENING`, CRASHED when it exits unasked, FAILED if it cannot start.
async fn run_deployment(
    inner: Arc<Inner>,
    launch: Launch,
    exited: watch::Sender<bool>,
    previous: Option<watch::Receiver<bool>>,
) {
    // The same port: the old process must be gone before the new one binds it.
    if let Some(previous) = previous {
        wait_exited(previous).await;
    }
    if launch.from_source && !built(&inner, &launch).await {
        exited.send_replace(true);
        return;
    }
    let build = inner
        .build
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(build) = build {
        tokio::time::sleep(build.next()).await;
    }
    let launch = Arc::new(launch);
    let child = {
        // Spawned under the lock, so a delete that comes first is seen, and one that comes
        // after finds the pid to kill.
        let mut world = inner.world();
        let Some(deployment) = world.deployment_mut(&launch.service_id, &launch.deployment_id)
        else {
            return;
        };
        if deployment.status == REMOVED {
            return;
        }
        let mut command = tokio::process::Command::new(&inner.agent_bin);
        command
            .arg("stub-agent")
            .arg("--port")
            .arg(launch.port.to_string())
            .arg("--name")
            .arg(&launch.name)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A backstop to the kill in Drop: a runtime shutting down drops this runner.
            .kill_on_drop(true);
        // And if the test process dies outright, the kernel stops the stub with it.
        crate::dies_with_spawning_thread(command.as_std_mut());
        match command.spawn() {
            Ok(child) => {
                deployment.pid = child.id();
                child
            }
            Err(e) => {
                deployment.status = FAILED.into();
                deployment
                    .logs
                    .push(format!("starting {}: {e}", inner.agent_bin.display()));
                return;
            }
        }
    };
    let mut child = child;
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pump_logs(inner.clone(), launch.clone(), err)));
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        if let Ok(Some(first)) = lines.next_line().await {
            if first.starts_with("LISTENING ") {
                let mut world = inner.world();
                if let Some(d) = world.deployment_mut(&launch.service_id, &launch.deployment_id) {
                    if d.status == DEPLOYING {
                        d.status = SUCCESS.into();
                    }
                }
            }
            push_log(&inner, &launch, first);
        }
        // Read on to the end, so the stub never blocks on a full pipe.
        while let Ok(Some(line)) = lines.next_line().await {
            push_log(&inner, &launch, line);
        }
    }
    let status = child.wait().await;
    if let Some(stderr) = stderr {
        let _ = stderr.await;
    }
    {
        let mut world = inner.world();
        if let Some(d) = world.deployment_mut(&launch.service_id, &launch.deployment_id) {
            d.pid = None;
            if d.status != REMOVED {
                d.status = CRASHED.into();
            }
            d.logs.push(format!("exited: {status:?}"));
        }
    }
    exited.send_replace(true);
}

/// The build from source: BUILDING for its time, then DEPLOYING, or FAILED. False when it failed
/// or its deployment was removed meanwhile.
async fn built(inner: &Inner, launch: &Launch) -> bool {
    let time = inner
        .source_build
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(time) = time {
        tokio::time::sleep(time.next()).await;
    }
    let fails = {
        let mut failing = inner
            .failing_builds
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fails = *failing > 0;
        *failing = failing.saturating_sub(1);
        fails
    };
    let mut world = inner.world();
    let Some(deployment) = world.deployment_mut(&launch.service_id, &launch.deployment_id) else {
        return false;
    };
    if deployment.status != BUILDING {
        return false;
    }
    if fails {
        deployment.status = FAILED.into();
        deployment
            .logs
            .push("build failed: the Dockerfile did not build".into());
        return false;
    }
    deployment.status = DEPLOYING.into();
    true
}

fn service_delete(inner: &Inner, id: &str) -> Result<Value, String> {
    let mut world = inner.world();
    world.service_mut(id)?;
    world.remove_service(id);
    Ok(json!(true))
}

/// Settings of the service in an environment; none of them deploys.
fn service_instance_update(
    inner: &Inner,
    service_id: &str,
    environment_id: Option<&str>,
    input: &Value,
) -> Result<Value, String> {
    let root_directory = opt_str_field(input, "rootDirectory")?;
    let start_command = opt_str_field(input, "startCommand")?;
    let mut world = inner.world();
    let service = world.service_mut(service_id)?;
    if environment_id.is_some_and(|e| e != service.environment_id) {
        return Err("Environment not found".into());
    }
    if let Some(dir) = root_directory {
        service.root_directory = Some(dir.to_string());
    }
    if let Some(command) = start_command {
        service.start_command = Some(command.to_string());
    }
    Ok(json!(true))
}

/// Variables as a plain map of name to value. Without `skipDeploys`, a service that has a source
/// redeploys to see them, as at Railway.
fn variable_collection_upsert(inner: &Arc<Inner>, input: &Value) -> Result<Value, String> {
    let service_id = str_field(input, "serviceId")?;
    let environment_id = str_field(input, "environmentId")?;
    let variables = match input.get("variables") {
        Some(Value::Object(map)) => map.clone(),
        _ => {
            return Err("Field \"variables\" of type \"EnvironmentVariables!\" is required".into())
        }
    };
    let skip = input.get("skipDeploys").and_then(Value::as_bool) == Some(true);
    let mut world = inner.world();
    let service = world.service_mut(service_id)?;
    if service.environment_id != environment_id {
        return Err("Environment not found".into());
    }
    for (name, value) in variables {
        let Value::String(value) = value else {
            return Err(format!("variables.{name} must be a string"));
        };
        service.variables.insert(name, value);
    }
    if !skip && (service.image.is_some() || service.repo.is_some()) {
        deploy(inner, service)?;
    }
    Ok(json!(true))
}

/// Connects a repo (and branch) and builds it, as Railway does on connecting.
fn service_connect(inner: &Arc<Inner>, id: &str, input: &Value) -> Result<Value, String> {
    let repo = opt_str_field(input, "repo")?;
    let branch = opt_str_field(input, "branch")?;
    let image = opt_str_field(input, "image")?;
    let mut world = inner.world();
    let service = world.service_mut(id)?;
    match (repo, image) {
        (Some(repo), None) => {
            service.repo = Some(repo.to_string());
            service.branch = branch.map(str::to_string);
            service.image = None;
            service.builds.push(Build {
                repo: repo.to_string(),
                branch: service.branch.clone(),
                root_directory: service.root_directory.clone(),
                variables: service.variables.keys().cloned().collect(),
            });
        }
        (None, Some(image)) => {
            service.image = Some(image.to_string());
            service.repo = None;
        }
        _ => return Err("Either repo or image is required".into()),
    }
    deploy(inner, service)?;
    Ok(json!({"id": service.id, "name": service.name}))
}

/// Removes the source; what is deployed stays.
fn service_disconnect(inner: &Inner, id: &str) -> Result<Value, String> {
    let mut world = inner.world();
    let service = world.service_mut(id)?;
    service.repo = None;
    service.branch = None;
    Ok(json!({"id": service.id, "name": service.name}))
}

fn service_update(inner: &Inner, id: &str, input: &Value) -> Result<Value, String> {
    let name = opt_str_field(input, "name")?;
    let mut world = inner.world();
    let service = world.service_mut(id)?;
    if let Some(name) = name {
        service.name = name.to_string();
    }
    Ok(json!({"id": service.id, "name": service.name}))
}

fn project_update(inner: &Inner, id: &str, input: &Value) -> Result<Value, String> {
    let name = opt_str_field(input, "name")?;
    let mut world = inner.world();
    let project = world
        .projects
        .iter_mut()
        .find(|p| p.id == id)
        .ok_or("Project not found")?;
    if let Some(name) = name {
        project.name = name.to_string();
    }
    Ok(json!({"id": project.id, "name": project.name}))
}

fn project_create(inner: &Inner, input: &Value) -> Result<Value, String> {
    let workspace_id = str_field(input, "workspaceId")?;
    if workspace_id != inner.config.workspace_id {
        return Err("Workspace not found".into());
    }
    let name = match opt_str_field(input, "name")? {
        Some(name) => name.to_string(),
        None => format!("project-{}", &new_id()[..8]),
    };
    let mut world = inner.world();
    let seq = world.seq();
    let project = Project {
        seq,
        id: new_id(),
        name,
        workspace_id: workspace_id.to_string(),
        created_at: now(),
        environments: vec![Environment {
            id: new_id(),
            name: "production".into(),
        }],
    };
    let node = json!({
        "id": project.id,
        "name": project.name,
        "createdAt": project.created_at,
        "environments": environments_connection(&project),
    });
    world.projects.push(project);
    Ok(node)
}

fn project_delete(inner: &Inner, id: &str) -> Result<Value, String> {
    let mut world = inner.world();
    world.project(id)?;
    let services: Vec<String> = world
        .services
        .iter()
        .filter(|s| s.project_id == id)
        .map(|s| s.id.clone())
        .collect();
    for service in services {
        world.remove_service(&service);
    }
    world.volumes.retain(|v| v.project_id != id);
    world.projects.retain(|p| p.id != id);
    Ok(json!(true))
}

// ---------------------------------------------------------------------------------------------
// Queries

/// `first` and `after` of a connection field in the document (`first` capped at the page size).
fn connection_args(
    request: &Request,
    field: &str,
    page_size: usize,
) -> Result<(usize, Option<u64>), String> {
    let args = match graphql::field_args(&request.query, field)? {
        Some(args) => graphql::resolve(&args, &request.variables)?,
        None => Map::new(),
    };
    let first = match args.get("first") {
        None | Some(Value::Null) => page_size,
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("{field}: first must be a non-negative integer"))?
            .min(page_size),
    };
    let after = match args.get("after") {
        None | Some(Value::Null) => None,
        Some(Value::String(cursor)) => Some(parse_cursor(cursor)?),
        Some(_) => return Err(format!("{field}: after must be a string")),
    };
    Ok((first, after))
}

fn cursor(seq: u64) -> String {
    format!("cursor-{seq}")
}

fn parse_cursor(cursor: &str) -> Result<u64, String> {
    cursor
        .strip_prefix("cursor-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("Invalid cursor: {cursor}"))
}

/// One page of a connection over items in creation order. Cursors are creation sequence
/// numbers, so deleting an item between pages neither skips nor repeats the others.
fn connection<T>(
    items: &[T],
    seq: impl Fn(&T) -> u64,
    node: impl Fn(&T) -> Value,
    first: usize,
    after: Option<u64>,
) -> Value {
    let rest: Vec<&T> = items
        .iter()
        .filter(|item| after.is_none_or(|after| seq(item) > after))
        .collect();
    let page = &rest[..first.min(rest.len())];
    json!({
        "edges": page
            .iter()
            .map(|item| json!({"cursor": cursor(seq(item)), "node": node(item)}))
            .collect::<Vec<_>>(),
        "pageInfo": {
            "hasNextPage": rest.len() > page.len(),
            "endCursor": page.last().map(|item| cursor(seq(item))),
        },
    })
}

fn environments_connection(project: &Project) -> Value {
    json!({
        "edges": project
            .environments
            .iter()
            .map(|e| json!({"node": {"id": e.id, "name": e.name}}))
            .collect::<Vec<_>>(),
    })
}

fn service_node(service: &Service, deployments: usize) -> Value {
    json!({
        "id": service.id,
        "name": service.name,
        "projectId": service.project_id,
        "createdAt": service.created_at,
        "serviceInstances": {"edges": [{"node": {
            "serviceId": service.id,
            "environmentId": service.environment_id,
            "domains": {
                "serviceDomains": service
                    .domain
                    .iter()
                    .map(|d| json!({"domain": d}))
                    .collect::<Vec<_>>(),
                "customDomains": [],
            },
            "source": (service.image.is_some() || service.repo.is_some())
                .then(|| json!({"image": service.image, "repo": service.repo})),
            "rootDirectory": service.root_directory,
            "startCommand": service.start_command,
        }}]},
        // Newest first, as Railway lists them.
        "deployments": {"edges": service
            .deployments
            .iter()
            .rev()
            .take(deployments)
            .map(|d| json!({"node": {"id": d.id, "status": d.status, "createdAt": d.created_at}}))
            .collect::<Vec<_>>()},
    })
}

fn deployments_first(request: &Request) -> Result<usize, String> {
    connection_args(request, "deployments", usize::MAX).map(|(first, _)| {
        if first == usize::MAX {
            1
        } else {
            first
        }
    })
}

fn project_node(
    world: &World,
    project: &Project,
    services_first: usize,
    services_after: Option<u64>,
    deployments: usize,
) -> Value {
    let services: Vec<&Service> = world
        .services
        .iter()
        .filter(|s| s.project_id == project.id)
        .collect();
    json!({
        "id": project.id,
        "name": project.name,
        "createdAt": project.created_at,
        "environments": environments_connection(project),
        // Railway lists a project's volumes apart from its services, each with the service it is
        // mounted on (which may be gone).
        "volumes": {"edges": world
            .volumes
            .iter()
            .filter(|v| v.project_id == project.id)
            .map(|v| json!({"node": {
                "id": v.id,
                "name": format!("volume-{}", &v.id[..8]),
                "volumeInstances": {"edges": [{"node": {
                    "serviceId": v.service_id,
                    "environmentId": v.environment_id,
                    "mountPath": v.mount_path,
                }}]},
            }}))
            .collect::<Vec<_>>()},
        "services": connection(
            &services,
            |s| s.seq,
            |s| service_node(s, deployments),
            services_first,
            services_after,
        ),
    })
}

fn service_query(inner: &Inner, request: &Request, id: &str) -> Result<Value, String> {
    let deployments = deployments_first(request)?;
    let world = inner.world();
    let service = world
        .services
        .iter()
        .find(|s| s.id == id)
        .ok_or("Service not found")?;
    Ok(service_node(service, deployments))
}

fn project_query(inner: &Inner, request: &Request, id: &str) -> Result<Value, String> {
    let (first, after) = connection_args(request, "services", inner.config.page_size)?;
    let deployments = deployments_first(request)?;
    let world = inner.world();
    let project = world.project(id)?;
    Ok(project_node(&world, project, first, after, deployments))
}

fn workspace_query(inner: &Inner, request: &Request, workspace_id: &str) -> Result<Value, String> {
    if workspace_id != inner.config.workspace_id {
        return Err("Workspace not found".into());
    }
    let (first, after) = connection_args(request, "projects", inner.config.page_size)?;
    // Nested per project and not paginated further: `first` as asked.
    let (services_first, _) = connection_args(request, "services", usize::MAX)?;
    let deployments = deployments_first(request)?;
    let world = inner.world();
    let projects: Vec<&Project> = world
        .projects
        .iter()
        .filter(|p| p.workspace_id == workspace_id)
        .collect();
    let projects = connection(
        &projects,
        |p| p.seq,
        |p| project_node(&world, p, services_first, None, deployments),
        first,
        after,
    );
    Ok(json!({"id": workspace_id, "projects": projects}))
}

impl Controls for RailwayFake {
    fn server(&self) -> &Server {
        &self.server
    }

    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
