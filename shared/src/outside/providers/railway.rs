//! The Railway provider, over Railway's GraphQL API, in two layouts:
//!
//! - **shared project** (`RAILWAY_PROJECT_ID`, `RAILWAY_ENVIRONMENT_ID`; seed 000): one service per
//!   instance in one project. Destroying deletes the service (and its volume).
//! - **project per agent** (`RAILWAY_TEAM_ID`; seed 004): one project per instance holding its one
//!   service. Destroying deletes the project, which removes everything in it.
//!
//! Creation: (project,) service, domain (before the first deploy, so the instance boots knowing
//! its URL), optional volume, then image + start command + every variable in one
//! `environmentPatchCommit`, so that the first (and only) deploy sees every variable. A creation
//! whose reply was lost is found again by name, and never sent twice: Railway would make a second
//! service, and a late answer may still be carried out. The whole fleet's status is one paginated
//! query per tick.
//!
//! **From source** (`RAILWAY_SOURCE_REPO`, seeds 001 and 003) the service is made without a source
//! as above, then given its root directory (`serviceInstanceUpdate`) and its variables
//! (`variableCollectionUpsert`, no deploy), and only then connected to the repo and branch
//! (`serviceConnect`), which starts the one build: it sees the directory, every variable (the
//! build-time `OPENCLAW_GIT_REF` among them) and the domain. Seed 003 passed the repo to
//! `serviceCreate` and found that it deploys the default branch at once, before the root directory
//! is set, and had to cancel that deployment and deploy again. The creation then waits for the
//! build (minutes, within `RAILWAY_BUILD_TIMEOUT_MS`): a build that fails fails the creation, and
//! what it made is removed like after any failed step. A built service is disconnected from the
//! repo, as seed 003 did, so that a push to the branch does not rebuild (and restart) every agent
//! at once.
//!
//! **Renaming** (a claimed agent after its name, seeds 001 and 003) changes a service's name (a
//! project's, in the project-per-agent layout) and nothing else: the tick knows its resources by
//! id, and the new name keeps the pool's prefix.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{CreateSpec, Created, Provider, ResourceRef};
use crate::config::{
    OutboundSettings, ProviderKind, RailwayLayout, RailwaySettings, RailwaySource, Secret,
};
use crate::domain::{ObservedResource, ResourceStatus};
use crate::error::{Error, Result};
use crate::outbound::{Call, Failure, Outbound, Policy, Replay, Tally, Tokens};
use crate::progress::StepStatus;

const SERVICE: &str = "railway";

const SERVICE_FIELDS: &str = "id name createdAt \
    serviceInstances { edges { node { environmentId domains { serviceDomains { domain } } source { image } } } } \
    deployments(first: 1) { edges { node { id status } } }";

/// Where the pool's instances live at Railway.
#[derive(Debug, Clone)]
enum Layout {
    Shared {
        project_id: String,
        environment_id: String,
    },
    ProjectPerAgent {
        workspace_id: String,
    },
}

pub struct RailwayProvider {
    out: Outbound,
    api: String,
    tokens: Tokens,
    layout: Layout,
    source: RailwaySource,
    build_timeout: Duration,
    start_command: Option<String>,
    volume_mount: Option<String>,
    scheme: String,
}

/// One service as the fleet query shows it.
#[derive(Debug, Clone)]
struct Service {
    id: String,
    name: String,
    project_id: String,
    status: ResourceStatus,
}

fn missing(setting: &str) -> Error {
    Error::Config(crate::config::ConfigError {
        setting: setting.into(),
        problem: "required with POOL_PROVIDER=railway".into(),
    })
}

impl RailwayProvider {
    pub fn from_settings(
        settings: &RailwaySettings,
        outbound: &OutboundSettings,
        tally: &Tally,
    ) -> Result<Self> {
        let mut tokens: Vec<Secret> = settings.railway_api_token.iter().cloned().collect();
        if let Some(many) = &settings.railway_api_tokens {
            tokens.extend(
                many.expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Secret::new),
            );
        }
        if tokens.is_empty() {
            return Err(missing("RAILWAY_API_TOKEN"));
        }
        let layout = match settings.railway_layout {
            RailwayLayout::Shared => Layout::Shared {
                project_id: settings
                    .railway_project_id
                    .clone()
                    .ok_or_else(|| missing("RAILWAY_PROJECT_ID"))?,
                environment_id: settings
                    .railway_environment_id
                    .clone()
                    .ok_or_else(|| missing("RAILWAY_ENVIRONMENT_ID"))?,
            },
            RailwayLayout::Project => Layout::ProjectPerAgent {
                workspace_id: settings
                    .railway_team_id
                    .clone()
                    .ok_or_else(|| missing("RAILWAY_TEAM_ID"))?,
            },
        };
        Ok(Self {
            out: Outbound::new(Policy::from_settings(outbound), tally.clone()),
            api: settings.railway_api_url.clone(),
            tokens: Tokens::new(tokens),
            layout,
            source: settings.source(),
            build_timeout: settings.build_timeout(),
            start_command: settings.railway_start_command.clone(),
            volume_mount: settings.railway_volume_mount.clone(),
            scheme: settings.railway_public_scheme.clone(),
        })
    }

    async fn gql(
        &self,
        step: &'static str,
        replay: Replay,
        query: &str,
        variables: Value,
    ) -> std::result::Result<Value, Failure> {
        let call = Call {
            service: SERVICE,
            step,
            replay,
        };
        self.out
            .graphql(call, &self.api, &self.tokens, query, variables)
            .await
    }

    /// Every node of a paginated connection: `query` takes `$after`, and `path` leads from the
    /// reply's data to the connection. One walk for the fleet and for every lookup by name, so
    /// none of them stops at the first page.
    async fn all_nodes(
        &self,
        step: &'static str,
        query: &str,
        mut variables: Value,
        path: [&str; 2],
    ) -> Result<Vec<Value>> {
        let mut nodes = Vec::new();
        loop {
            let data = self
                .gql(step, Replay::Safe, query, variables.clone())
                .await
                .map_err(|f| Error::outbound(SERVICE, step, f))?;
            let connection = &data[path[0]][path[1]];
            // `project: null` (Railway's answer for a project it cannot show just now) is no
            // empty project: an answer without the connection is not a listing.
            if !connection["edges"].is_array() {
                return Err(Error::outbound(SERVICE, step, Failure::BadReply));
            }
            nodes.extend(edges(connection).map(|e| e["node"].clone()));
            match next_page(connection) {
                Some(cursor) => variables["after"] = json!(cursor),
                None => return Ok(nodes),
            }
        }
    }

    /// Every service of the shared project, each with its status.
    async fn project_services(&self, step: &'static str, project_id: &str) -> Result<Vec<Service>> {
        let query = format!(
            "query($id: String!, $after: String) {{ project(id: $id) {{ services(first: 500, after: $after) {{ edges {{ node {{ {SERVICE_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}"
        );
        let nodes = self
            .all_nodes(
                step,
                &query,
                json!({"id": project_id, "after": null}),
                ["project", "services"],
            )
            .await?;
        Ok(nodes
            .iter()
            .filter_map(|node| parse_service(node, project_id))
            .collect())
    }

    /// Every project of the workspace, with its environments and its services.
    async fn workspace_projects(
        &self,
        step: &'static str,
        workspace_id: &str,
    ) -> Result<Vec<Value>> {
        let query = format!(
            "query($workspaceId: String!, $after: String) {{ workspace(workspaceId: $workspaceId) {{ projects(first: 100, after: $after) {{ edges {{ node {{ id name environments {{ edges {{ node {{ id name }} }} }} services(first: 10) {{ edges {{ node {{ {SERVICE_FIELDS} }} }} }} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}"
        );
        self.all_nodes(
            step,
            &query,
            json!({"workspaceId": workspace_id, "after": null}),
            ["workspace", "projects"],
        )
        .await
    }

    /// Every service of ours, in one paginated query (per page of projects, in the
    /// project-per-agent layout).
    async fn fleet(&self, prefix: &str) -> Result<Vec<Service>> {
        let mut services = match &self.layout {
            Layout::Shared { project_id, .. } => self.project_services("list", project_id).await?,
            Layout::ProjectPerAgent { workspace_id } => {
                let mut services = Vec::new();
                for project in self.workspace_projects("list", workspace_id).await? {
                    let (Some(id), Some(name)) = (project["id"].as_str(), project["name"].as_str())
                    else {
                        return Err(Error::outbound(SERVICE, "list", Failure::BadReply));
                    };
                    // The project is the resource; its one service says how it is doing. A
                    // project whose service is not there yet is still being created.
                    let service =
                        edges(&project["services"]).find_map(|e| parse_service(&e["node"], id));
                    services.push(Service {
                        id: service.as_ref().map_or_else(String::new, |s| s.id.clone()),
                        name: name.to_string(),
                        project_id: id.to_string(),
                        status: service.map_or(ResourceStatus::Deploying, |s| s.status),
                    });
                }
                services
            }
        };
        services.retain(|s| s.name.starts_with(prefix));
        Ok(services)
    }

    /// Creates `name` in `project_id`, unless a lost reply already did. A create whose answer
    /// never came is not sent again: it may still be carried out (a slow Railway answers after
    /// our timeout), and a second one would make a second service of the same name. If the
    /// service is not there yet, the creation fails; its row is destroyed by name, which finds
    /// the service whenever it lands (or the orphan sweep does, once the row is gone).
    async fn create_service(
        &self,
        project_id: &str,
        environment_id: &str,
        name: &str,
    ) -> Result<String> {
        let query =
            "mutation($input: ServiceCreateInput!) { serviceCreate(input: $input) { id name } }";
        let input = json!({"input": {"projectId": project_id, "environmentId": environment_id, "name": name}});
        match self
            .gql("railway-service", Replay::Unsafe, query, input)
            .await
        {
            Ok(data) => data["serviceCreate"]["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::outbound(SERVICE, "railway-service", Failure::BadReply)),
            Err(
                failure @ (Failure::TimedOut | Failure::Connection | Failure::Status(500..=599)),
            ) => self
                .services_named(project_id, name)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::outbound(SERVICE, "railway-service", failure)),
            Err(failure) => Err(Error::outbound(SERVICE, "railway-service", failure)),
        }
    }

    /// Ids of the services called `name` in a project.
    async fn services_named(&self, project_id: &str, name: &str) -> Result<Vec<String>> {
        Ok(self
            .project_services("railway-service", project_id)
            .await?
            .into_iter()
            .filter(|s| s.name == name)
            .map(|s| s.id)
            .collect())
    }

    /// Creates the project `name` in the workspace, unless a lost reply already did; returns its
    /// id and environment id. As for a service, a create whose answer never came is not sent
    /// again.
    async fn create_project(&self, workspace_id: &str, name: &str) -> Result<(String, String)> {
        let query = "mutation($input: ProjectCreateInput!) { projectCreate(input: $input) { id name environments { edges { node { id name } } } } }";
        let input = json!({"input": {"name": name, "workspaceId": workspace_id}});
        let project = match self
            .gql("railway-project", Replay::Unsafe, query, input)
            .await
        {
            Ok(data) => data["projectCreate"].clone(),
            Err(
                failure @ (Failure::TimedOut | Failure::Connection | Failure::Status(500..=599)),
            ) => self
                .projects_named(name)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::outbound(SERVICE, "railway-project", failure))?,
            Err(failure) => return Err(Error::outbound(SERVICE, "railway-project", failure)),
        };
        let id = project["id"].as_str();
        let environment = edges(&project["environments"])
            .find_map(|e| e["node"]["id"].as_str().map(str::to_string));
        match (id, environment) {
            (Some(id), Some(environment)) => Ok((id.to_string(), environment)),
            _ => Err(Error::outbound(
                SERVICE,
                "railway-project",
                Failure::BadReply,
            )),
        }
    }

    /// Projects called `name` in the workspace, with their environments.
    async fn projects_named(&self, name: &str) -> Result<Vec<Value>> {
        let Layout::ProjectPerAgent { workspace_id } = &self.layout else {
            return Ok(Vec::new());
        };
        let mut projects = self
            .workspace_projects("railway-project", workspace_id)
            .await?;
        projects.retain(|p| p["name"].as_str() == Some(name));
        Ok(projects)
    }

    /// Domain, volume and the one commit that deploys, for a service that exists.
    async fn configure(
        &self,
        spec: &CreateSpec,
        project_id: &str,
        environment_id: &str,
        service_id: &str,
    ) -> Result<(String, Option<String>)> {
        spec.progress
            .step("railway-domain", StepStatus::Active, "creating the domain");
        // Replaying makes at most a second domain, deleted with the service.
        let data = self
            .gql(
                "railway-domain",
                Replay::Safe,
                "mutation($input: ServiceDomainCreateInput!) { serviceDomainCreate(input: $input) { domain } }",
                json!({"input": {"serviceId": service_id, "environmentId": environment_id}}),
            )
            .await
            .map_err(|f| Error::outbound(SERVICE, "railway-domain", f))?;
        let domain = data["serviceDomainCreate"]["domain"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::outbound(SERVICE, "railway-domain", Failure::BadReply))?;
        spec.progress
            .step("railway-domain", StepStatus::Ok, &domain);
        let volume = match &self.volume_mount {
            None => None,
            Some(mount) => {
                let data = self
                    .gql(
                        "railway-volume",
                        Replay::Unsafe,
                        "mutation($input: VolumeCreateInput!) { volumeCreate(input: $input) { id } }",
                        json!({"input": {"projectId": project_id, "serviceId": service_id, "mountPath": mount, "environmentId": environment_id}}),
                    )
                    .await
                    .map_err(|f| Error::outbound(SERVICE, "railway-volume", f))?;
                data["volumeCreate"]["id"].as_str().map(str::to_string)
            }
        };
        let url = format!("{}://{domain}", self.scheme);
        let mut variables = spec.env.clone();
        variables.push(("RAILWAY_PUBLIC_URL".into(), url.clone()));
        match &self.source {
            RailwaySource::Image(image) => {
                self.deploy_image(spec, environment_id, service_id, image, &variables)
                    .await?
            }
            RailwaySource::Repo {
                repo,
                branch,
                root_dir,
            } => {
                let build = Build {
                    repo,
                    branch: branch.as_deref(),
                    root_dir: root_dir.as_deref(),
                };
                self.build(
                    spec,
                    project_id,
                    environment_id,
                    service_id,
                    build,
                    &variables,
                )
                .await?
            }
        }
        Ok((url, volume))
    }

    /// Image, start command and every variable in one commit: one deploy, seeing them all.
    async fn deploy_image(
        &self,
        spec: &CreateSpec,
        environment_id: &str,
        service_id: &str,
        image: &str,
        variables: &[(String, String)],
    ) -> Result<()> {
        let variables: serde_json::Map<String, Value> = variables
            .iter()
            .map(|(k, v)| (k.clone(), json!({"value": v})))
            .collect();
        let mut deploy = json!({});
        if let Some(command) = &self.start_command {
            deploy["startCommand"] = json!(command);
        }
        let patch = json!({"services": {service_id: {
            "source": {"image": image},
            "deploy": deploy,
            "variables": variables,
        }}});
        spec.progress.step(
            "railway-deploy",
            StepStatus::Active,
            "committing image and variables",
        );
        // The same full configuration committed twice is the same configuration.
        self.gql(
            "railway-deploy",
            Replay::Safe,
            "mutation($environmentId: String!, $patch: EnvironmentConfig!, $commitMessage: String) { environmentPatchCommit(environmentId: $environmentId, patch: $patch, commitMessage: $commitMessage) }",
            json!({"environmentId": environment_id, "patch": patch, "commitMessage": format!("agentpool: create {}", spec.name)}),
        )
        .await
        .map_err(|f| Error::outbound(SERVICE, "railway-deploy", f))?;
        spec.progress
            .step("railway-deploy", StepStatus::Ok, "deploying");
        Ok(())
    }

    /// Settings and variables first, then the repo, whose connection starts the one build; then
    /// the wait for it, and the disconnection.
    async fn build(
        &self,
        spec: &CreateSpec,
        project_id: &str,
        environment_id: &str,
        service_id: &str,
        build: Build<'_>,
        variables: &[(String, String)],
    ) -> Result<()> {
        let step = "railway-build";
        spec.progress
            .step(step, StepStatus::Active, "configuring the build");
        let mut instance = serde_json::Map::new();
        if let Some(dir) = build.root_dir {
            instance.insert("rootDirectory".into(), json!(dir));
        }
        if let Some(command) = &self.start_command {
            instance.insert("startCommand".into(), json!(command));
        }
        // Each of these sets a value: sent twice, it sets the same one. A service without a
        // source does not deploy on them.
        if !instance.is_empty() {
            self.gql(
                step,
                Replay::Safe,
                "mutation($serviceId: String!, $environmentId: String, $input: ServiceInstanceUpdateInput!) { serviceInstanceUpdate(serviceId: $serviceId, environmentId: $environmentId, input: $input) }",
                json!({"serviceId": service_id, "environmentId": environment_id, "input": instance}),
            )
            .await
            .map_err(|f| Error::outbound(SERVICE, step, f))?;
        }
        let variables: serde_json::Map<String, Value> = variables
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        self.gql(
            step,
            Replay::Safe,
            "mutation($input: VariableCollectionUpsertInput!) { variableCollectionUpsert(input: $input) }",
            json!({"input": {"projectId": project_id, "environmentId": environment_id, "serviceId": service_id, "variables": variables, "skipDeploys": true}}),
        )
        .await
        .map_err(|f| Error::outbound(SERVICE, step, f))?;
        spec.progress.step(
            step,
            StepStatus::Active,
            &format!("building {}", build.repo),
        );
        let mut connect = json!({"repo": build.repo});
        if let Some(branch) = build.branch {
            connect["branch"] = json!(branch);
        }
        // Sent twice, at most a second build of the same commit, which replaces the first.
        self.gql(
            step,
            Replay::Safe,
            "mutation($id: String!, $input: ServiceConnectInput!) { serviceConnect(id: $id, input: $input) { id } }",
            json!({"id": service_id, "input": connect}),
        )
        .await
        .map_err(|f| Error::outbound(SERVICE, step, f))?;
        self.wait_for_build(service_id).await?;
        self.gql(
            step,
            Replay::Safe,
            "mutation($id: String!) { serviceDisconnect(id: $id) { id } }",
            json!({"id": service_id}),
        )
        .await
        .map_err(|f| Error::outbound(SERVICE, step, f))?;
        spec.progress.step(step, StepStatus::Ok, "built; deploying");
        Ok(())
    }

    /// Polls the service's latest deployment until its build is over: DEPLOYING or later is
    /// built, a dead status is a failed build. A poll that fails for a moment (the outbound
    /// layer's retries spent) does not fail a build that may be going well; only the timeout does.
    async fn wait_for_build(&self, service_id: &str) -> Result<()> {
        let step = "railway-build";
        let deadline = tokio::time::Instant::now() + self.build_timeout;
        // About 120 looks over the whole timeout: every 5 s at the default 10 minutes.
        let every =
            (self.build_timeout / 120).clamp(Duration::from_millis(20), Duration::from_secs(10));
        loop {
            let status = self
                .gql(
                    step,
                    Replay::Safe,
                    "query($id: String!) { service(id: $id) { id deployments(first: 1) { edges { node { id status } } } } }",
                    json!({"id": service_id}),
                )
                .await;
            match status {
                Ok(data) => {
                    let latest = edges(&data["service"]["deployments"])
                        .next()
                        .and_then(|d| d["node"]["status"].as_str());
                    match latest {
                        Some("DEPLOYING" | "SUCCESS" | "SLEEPING") => return Ok(()),
                        Some(dead @ ("FAILED" | "CRASHED" | "REMOVED" | "SKIPPED")) => {
                            return Err(Error::provider(
                                "railway",
                                format!("the build of service {service_id} ended {dead}"),
                            ))
                        }
                        _ => {}
                    }
                }
                Err(
                    failure @ (Failure::TimedOut
                    | Failure::Connection
                    | Failure::RateLimited
                    | Failure::Status(500..=599)),
                ) => {
                    tracing::debug!(%failure, "polling a build");
                }
                Err(failure) => return Err(Error::outbound(SERVICE, step, failure)),
            }
            if tokio::time::Instant::now() + every > deadline {
                return Err(Error::outbound(SERVICE, step, Failure::TimedOut));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Removes what a failed creation made, its volume too (found by its service: the step that
    /// made it may have lost its reply). What this cannot remove, the tick does: the row goes to
    /// `destroying` and is destroyed by name.
    async fn roll_back(&self, name: &str, project_id: &str, service_id: Option<&str>) {
        let resource = match &self.layout {
            Layout::ProjectPerAgent { .. } => Some(project_id.to_string()),
            Layout::Shared { .. } => service_id.map(str::to_string),
        };
        let Some(resource_id) = resource else {
            return;
        };
        let undo = self
            .destroy(&ResourceRef {
                name: name.to_string(),
                resource_id: Some(resource_id),
                details: Value::Null,
            })
            .await;
        if let Err(e) = undo {
            tracing::warn!(error = %e, "rolling back a failed creation; the tick will destroy it by name");
        }
    }

    /// The volumes of `services`: the one the creation recorded, or, when no record says (a
    /// rollback, a creator that died before recording, a teardown by name) and this pool makes
    /// volumes, every volume of the project mounted on one of them.
    async fn volumes_of(
        &self,
        project_id: &str,
        services: &[String],
        details: &Value,
    ) -> Result<Vec<String>> {
        if let Some(recorded) = details.get("volumeId") {
            return Ok(recorded.as_str().map(str::to_string).into_iter().collect());
        }
        if self.volume_mount.is_none() || services.is_empty() {
            return Ok(Vec::new());
        }
        let data = self
            .gql(
                "destroy",
                Replay::Safe,
                "query($id: String!) { project(id: $id) { volumes { edges { node { id volumeInstances { edges { node { serviceId } } } } } } } }",
                json!({"id": project_id}),
            )
            .await
            .map_err(|f| Error::outbound(SERVICE, "destroy", f))?;
        let volumes = &data["project"]["volumes"];
        if !volumes["edges"].is_array() {
            return Err(Error::outbound(SERVICE, "destroy", Failure::BadReply));
        }
        Ok(edges(volumes)
            .filter(|v| {
                edges(&v["node"]["volumeInstances"]).any(|i| {
                    i["node"]["serviceId"]
                        .as_str()
                        .is_some_and(|id| services.iter().any(|s| s == id))
                })
            })
            .filter_map(|v| v["node"]["id"].as_str().map(str::to_string))
            .collect())
    }

    async fn delete(&self, step: &'static str, query: &str, variables: Value) -> Result<()> {
        match self.gql(step, Replay::Safe, query, variables).await {
            Ok(_) | Err(Failure::NotFound) => Ok(()),
            Err(failure) => Err(Error::outbound(SERVICE, step, failure)),
        }
    }
}

/// What a service from source is built from.
#[derive(Clone, Copy)]
struct Build<'a> {
    repo: &'a str,
    branch: Option<&'a str>,
    root_dir: Option<&'a str>,
}

fn edges(connection: &Value) -> impl Iterator<Item = &Value> {
    connection["edges"].as_array().into_iter().flatten()
}

fn next_page(connection: &Value) -> Option<String> {
    let info = &connection["pageInfo"];
    if info["hasNextPage"].as_bool() == Some(true) {
        info["endCursor"].as_str().map(str::to_string)
    } else {
        None
    }
}

/// Railway's deployment statuses: still starting, deployed, or dead. A sleeping service wakes on
/// a request: it is not dead for that.
fn status_of(deployment: Option<&str>) -> ResourceStatus {
    match deployment {
        Some("SUCCESS" | "SLEEPING") => ResourceStatus::Running,
        Some("FAILED" | "CRASHED" | "REMOVED" | "SKIPPED") => ResourceStatus::Failed,
        _ => ResourceStatus::Deploying,
    }
}

fn parse_service(node: &Value, project_id: &str) -> Option<Service> {
    let deployment = edges(&node["deployments"])
        .next()
        .and_then(|d| d["node"]["status"].as_str());
    Some(Service {
        id: node["id"].as_str()?.to_string(),
        name: node["name"].as_str()?.to_string(),
        project_id: project_id.to_string(),
        status: status_of(deployment),
    })
}

#[async_trait]
impl Provider for RailwayProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Railway
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        let (project_id, environment_id) = match &self.layout {
            Layout::Shared {
                project_id,
                environment_id,
            } => (project_id.clone(), environment_id.clone()),
            Layout::ProjectPerAgent { workspace_id } => {
                spec.progress.step(
                    "railway-project",
                    StepStatus::Active,
                    "creating the project",
                );
                let made = self.create_project(workspace_id, &spec.name).await?;
                spec.progress
                    .step("railway-project", StepStatus::Ok, "created");
                made
            }
        };
        spec.progress.step(
            "railway-service",
            StepStatus::Active,
            "creating the service",
        );
        let service_id = match self
            .create_service(&project_id, &environment_id, &spec.name)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                self.roll_back(&spec.name, &project_id, None).await;
                return Err(e);
            }
        };
        spec.progress
            .step("railway-service", StepStatus::Ok, "created");
        let (url, volume_id) = match self
            .configure(spec, &project_id, &environment_id, &service_id)
            .await
        {
            Ok(configured) => configured,
            Err(e) => {
                self.roll_back(&spec.name, &project_id, Some(&service_id))
                    .await;
                return Err(e);
            }
        };
        let resource_id = match &self.layout {
            Layout::Shared { .. } => service_id.clone(),
            Layout::ProjectPerAgent { .. } => project_id.clone(),
        };
        Ok(Created {
            resource_id,
            url,
            details: json!({
                "projectId": project_id,
                "environmentId": environment_id,
                "serviceId": service_id,
                "volumeId": volume_id,
            }),
        })
    }

    async fn destroy(&self, resource: &ResourceRef) -> Result<()> {
        match &self.layout {
            Layout::ProjectPerAgent { .. } => {
                let ids = match &resource.resource_id {
                    Some(id) => vec![id.clone()],
                    // Created, then its creator died before recording it: find it by name.
                    None => self
                        .projects_named(&resource.name)
                        .await?
                        .iter()
                        .filter_map(|p| p["id"].as_str().map(str::to_string))
                        .collect(),
                };
                for id in ids {
                    self.delete(
                        "destroy",
                        "mutation($id: String!) { projectDelete(id: $id) }",
                        json!({"id": id}),
                    )
                    .await?;
                }
            }
            Layout::Shared { project_id, .. } => {
                let ids = match &resource.resource_id {
                    Some(id) => vec![id.clone()],
                    None => self.services_named(project_id, &resource.name).await?,
                };
                // A volume outlives its service at Railway: it goes first, while the services it
                // is mounted on still say whose it is.
                for volume in self.volumes_of(project_id, &ids, &resource.details).await? {
                    self.delete(
                        "destroy",
                        "mutation($volumeId: String!) { volumeDelete(volumeId: $volumeId) }",
                        json!({"volumeId": volume}),
                    )
                    .await?;
                }
                for id in ids {
                    self.delete(
                        "destroy",
                        "mutation($id: String!) { serviceDelete(id: $id) }",
                        json!({"id": id}),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// `variableCollectionUpsert` with `skipDeploys`: the service's variables gain the new ones
    /// (a restart or the next deploy sees them) and the running deployment is left alone; the
    /// runtime gets them from the claim. Upserting the same values again changes nothing, so a
    /// replay is safe.
    async fn add_env(
        &self,
        resource: &ResourceRef,
        env: &[(String, String)],
    ) -> Option<Result<()>> {
        let ids = (
            resource.details["projectId"].as_str(),
            resource.details["environmentId"].as_str(),
            resource.details["serviceId"].as_str(),
        );
        let (Some(project_id), Some(environment_id), Some(service_id)) = ids else {
            return Some(Err(Error::provider(
                "railway",
                "the instance's Railway ids are not recorded",
            )));
        };
        let variables: serde_json::Map<String, Value> =
            env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let input = json!({
            "projectId": project_id,
            "environmentId": environment_id,
            "serviceId": service_id,
            "variables": variables,
            "skipDeploys": true,
        });
        Some(
            self.gql(
                "railway-variables",
                Replay::Safe,
                "mutation($input: VariableCollectionUpsertInput!) { variableCollectionUpsert(input: $input) }",
                json!({"input": input}),
            )
            .await
            .map(|_| ())
            .map_err(|f| Error::outbound(SERVICE, "railway-variables", f)),
        )
    }

    fn can_rename(&self) -> bool {
        true
    }

    async fn rename(&self, resource: &ResourceRef, name: &str) -> Option<Result<()>> {
        let Some(id) = resource.resource_id.clone() else {
            return Some(Err(Error::provider(
                "railway",
                "renaming needs the resource's id",
            )));
        };
        // The listed resource: the service, or in its own layout the project.
        let query = match &self.layout {
            Layout::Shared { .. } => {
                "mutation($id: String!, $input: ServiceUpdateInput!) { serviceUpdate(id: $id, input: $input) { id name } }"
            }
            Layout::ProjectPerAgent { .. } => {
                "mutation($id: String!, $input: ProjectUpdateInput!) { projectUpdate(id: $id, input: $input) { id name } }"
            }
        };
        // Setting a name twice sets the same name.
        let renamed = self
            .gql(
                "rename",
                Replay::Safe,
                query,
                json!({"id": id, "input": {"name": name}}),
            )
            .await
            .map(|_| ())
            .map_err(|f| Error::outbound(SERVICE, "rename", f));
        Some(renamed)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObservedResource>> {
        Ok(self
            .fleet(prefix)
            .await?
            .into_iter()
            .map(|service| ObservedResource {
                resource_id: match &self.layout {
                    Layout::Shared { .. } => service.id,
                    Layout::ProjectPerAgent { .. } => service.project_id,
                },
                name: service.name,
                status: service.status,
            })
            .collect())
    }

    async fn probe(&self, resource: &ResourceRef) -> Option<Result<Value>> {
        Some(self.fleet(&resource.name).await.map(|services| {
            match services.into_iter().find(|s| s.name == resource.name) {
                Some(service) => json!({
                    "service": {
                        "id": service.id,
                        "name": service.name,
                        "projectId": service.project_id,
                        "status": format!("{:?}", service.status),
                    }
                }),
                None => json!({"service": null}),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_statuses_map_to_resource_states() {
        for starting in [
            None,
            Some("QUEUED"),
            Some("WAITING"),
            Some("INITIALIZING"),
            Some("BUILDING"),
            Some("DEPLOYING"),
        ] {
            assert_eq!(
                status_of(starting),
                ResourceStatus::Deploying,
                "{starting:?}"
            );
        }
        for dead in ["FAILED", "CRASHED", "REMOVED", "SKIPPED"] {
            assert_eq!(status_of(Some(dead)), ResourceStatus::Failed, "{dead}");
        }
        assert_eq!(status_of(Some("SUCCESS")), ResourceStatus::Running);
        assert_eq!(
            status_of(Some("SLEEPING")),
            ResourceStatus::Running,
            "asleep is not dead"
        );
    }
}
