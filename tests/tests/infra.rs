//! The deployment files in `infra/` start the service as this build has it: each process they
//! declare runs a real command, sets only variables the code reads, to values start-up accepts
//! (a provider this build has), names its credentials without writing them down, and is probed at
//! `/healthz` where it serves HTTP (and nowhere else). Beyond each process, each kind of file is
//! checked for what holds it together: the compose file's nginx reaches exactly its `serve`
//! replicas, the replicas of the local provider share what its agents need, the Kubernetes objects
//! name each other, the SAM template routes HTTP and a schedule to the binary, nginx never resends
//! a claim. `cfn-lint` validates the SAM template and `kubernetes-validate` the manifests against
//! Kubernetes' schemas, where they are installed (`.ci/run` installs both).
//!
//! And the compose topology runs: two `serve` replicas, the scheduler and real nginx with
//! `infra/nginx.conf`, as plain processes on the harness's Postgres, through 200 claims while one
//! replica is SIGKILLed (`the_compose_topology_survives_a_replica_killed_mid_claims`).
//!
//! Every file in `infra/` must be checked here: a file of a kind this test does not know fails it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use agentpool_core::Settings;

fn infra_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One process a deployment file starts.
#[derive(Debug, Default)]
struct Process {
    /// File and service, for messages.
    at: String,
    argv: Vec<String>,
    /// Name and value; `None` where the value is the operator's to supply.
    env: Vec<(String, Option<String>)>,
    /// The HTTP paths its health checks probe; a check that is not HTTP is listed whole.
    health_checks: Vec<String>,
    /// The database image's own variables are allowed here.
    is_postgres: bool,
    /// Compose only: the service's name, `network_mode`, `pid` and volume mounts.
    service: String,
    network_mode: Option<String>,
    pid_mode: Option<String>,
    volumes: Vec<String>,
}

/// `ENTRYPOINT`, `CMD` and `ENV` of the image `infra/Dockerfile` builds (its last stage).
#[derive(Debug, Default, Clone)]
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, Option<String>)>,
    health_checks: Vec<String>,
}

/// Exec form (a JSON array) or shell form.
fn dockerfile_argv(rest: &str) -> Vec<String> {
    serde_json::from_str(rest)
        .unwrap_or_else(|_| rest.split_whitespace().map(String::from).collect())
}

fn parse_dockerfile(text: &str) -> Image {
    let mut image = Image::default();
    let joined = text.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match instruction.to_ascii_uppercase().as_str() {
            // Only the last stage is the image that runs.
            "FROM" => image = Image::default(),
            "ENTRYPOINT" => image.entrypoint = dockerfile_argv(rest),
            "CMD" => image.cmd = dockerfile_argv(rest),
            "ENV" => {
                if rest.contains('=') {
                    for pair in rest.split_whitespace() {
                        let (name, value) = pair.split_once('=').expect("ENV name=value");
                        image
                            .env
                            .push((name.to_string(), Some(value.trim_matches('"').to_string())));
                    }
                } else {
                    let (name, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    image
                        .env
                        .push((name.to_string(), Some(value.trim().to_string())));
                }
            }
            "HEALTHCHECK" if !rest.eq_ignore_ascii_case("NONE") => {
                image.health_checks.push(rest.to_string())
            }
            _ => {}
        }
    }
    image
}

fn the_image() -> Image {
    parse_dockerfile(&read(&infra_dir().join("Dockerfile")))
}

/// The image's variables with a container's on top: a variable set in both has the container's value.
fn overlay(
    image: &[(String, Option<String>)],
    env: Vec<(String, Option<String>)>,
) -> Vec<(String, Option<String>)> {
    let mut merged: Vec<(String, Option<String>)> = image
        .iter()
        .filter(|(name, _)| !env.iter().any(|(n, _)| n == name))
        .cloned()
        .collect();
    merged.extend(env);
    merged
}

/// What runs, the way Docker and Kubernetes combine an override with the image: a new
/// entrypoint drops the image's command too.
fn effective_argv(
    image: &Image,
    entrypoint: Option<Vec<String>>,
    command: Option<Vec<String>>,
) -> Vec<String> {
    match (entrypoint, command) {
        (Some(entrypoint), command) => [entrypoint, command.unwrap_or_default()].concat(),
        (None, Some(command)) => [image.entrypoint.clone(), command].concat(),
        (None, None) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

/// A compose or Kubernetes argv: a list, or a string to split.
fn argv_of(value: Option<&Value>) -> Option<Vec<String>> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.split_whitespace().map(String::from).collect()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        other => panic!("a command is a list or a string, not {other}"),
    }
}

/// Compose interpolation: `${NAME:-default}` is its default; `${NAME}` and `${NAME:?message}`
/// are the operator's to supply.
fn compose_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let Some(start) = text.find("${") else {
        return Some(text);
    };
    let end = start + text[start..].find('}')?;
    let inner = &text[start + 2..end];
    let default = inner
        .split_once(":-")
        .or_else(|| inner.split_once('-'))
        .map(|(_, default)| default)?;
    Some(format!("{}{default}{}", &text[..start], &text[end + 1..]))
}

fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    yaml_serde::Deserializer::from_str(text)
        .map(|document| {
            let mut value = yaml_serde::Value::deserialize(document).expect("valid YAML");
            value.apply_merge().expect("YAML merge keys");
            serde_json::to_value(value).expect("YAML as JSON")
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// What a compose service is.
#[derive(Debug, PartialEq)]
enum ComposeRole {
    Postgres,
    /// The image `infra/Dockerfile` builds, running a process of the pool.
    Pool,
    /// The image `infra/Dockerfile` builds, doing nothing but hold namespaces for others.
    NamespaceHolder,
    Nginx,
}

fn compose_role(file: &str, name: &str, service: &Value) -> ComposeRole {
    let image = service["image"].as_str().unwrap_or_default();
    let built_here = service["build"]["dockerfile"]
        .as_str()
        .is_some_and(|dockerfile| dockerfile.ends_with("infra/Dockerfile"));
    if image.starts_with("postgres") && !built_here {
        ComposeRole::Postgres
    } else if image.starts_with("nginx") && !built_here {
        ComposeRole::Nginx
    } else if built_here
        && argv_of(service.get("entrypoint")).is_some_and(|argv| argv == ["sleep", "infinity"])
    {
        ComposeRole::NamespaceHolder
    } else if built_here {
        ComposeRole::Pool
    } else {
        panic!(
            "{file}: service {name} runs neither Postgres, nginx nor the image infra/Dockerfile builds"
        )
    }
}

fn compose_services(text: &str) -> serde_json::Map<String, Value> {
    let documents = yaml_documents(text);
    let compose = documents.first().expect("a compose document");
    compose["services"].as_object().expect("services").clone()
}

fn compose_environment(file: &str, name: &str, service: &Value) -> Vec<(String, Option<String>)> {
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    match &service["environment"] {
        Value::Object(map) => env.extend(map.iter().map(|(k, v)| (k.clone(), compose_value(v)))),
        Value::Array(items) => {
            for item in items {
                let item = item.as_str().expect("NAME=value");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                env.push((k.to_string(), compose_value(&Value::String(v.into()))));
            }
        }
        Value::Null => {}
        other => panic!("{file}: environment of {name} is {other}"),
    }
    env
}

/// The processes of the pool and its database; nginx and the namespace holder are checked by
/// [`compose_problems`].
fn compose_processes(file: &str, text: &str) -> Vec<Process> {
    let image = the_image();
    compose_services(text)
        .iter()
        .filter_map(|(name, service)| {
            let role = compose_role(file, name, service);
            if !matches!(role, ComposeRole::Postgres | ComposeRole::Pool) {
                return None;
            }
            let is_postgres = role == ComposeRole::Postgres;
            let mut env = compose_environment(file, name, service);
            // Docker runs the image's HEALTHCHECK unless the service replaces or disables it.
            let health_checks = match &service["healthcheck"] {
                check if check["disable"] == Value::Bool(true) => Vec::new(),
                check if !check["test"].is_null() => vec![check["test"].to_string()],
                _ if is_postgres => Vec::new(),
                _ => image.health_checks.clone(),
            };
            let argv = if is_postgres {
                Vec::new()
            } else {
                env = overlay(&image.env, env);
                effective_argv(
                    &image,
                    argv_of(service.get("entrypoint")),
                    argv_of(service.get("command")),
                )
            };
            Some(Process {
                at: format!("{file}: service {name}"),
                argv,
                env,
                health_checks,
                is_postgres,
                service: name.clone(),
                network_mode: service["network_mode"].as_str().map(String::from),
                pid_mode: service["pid"].as_str().map(String::from),
                volumes: service["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            })
        })
        .collect()
}

/// The value a process gives a variable, the image's default included; `None` if unset or the
/// operator's to supply.
fn env_value<'a>(process: &'a Process, name: &str) -> Option<&'a str> {
    process
        .env
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

fn is_serve(process: &Process) -> bool {
    process.argv.get(1).is_some_and(|a| a == "serve")
}

/// Where nginx must find each `serve` service of a compose file: `host:PORT`.
fn compose_upstreams(processes: &[Process], nginx: &Value) -> Vec<(String, String)> {
    processes
        .iter()
        .filter(|p| is_serve(p))
        .map(|p| {
            let port = env_value(p, "PORT").unwrap_or("3001");
            let shared = p.network_mode.is_some()
                && p.network_mode.as_deref() == nginx["network_mode"].as_str();
            let host = if shared {
                "127.0.0.1"
            } else {
                p.service.as_str()
            };
            (p.service.clone(), format!("{host}:{port}"))
        })
        .collect()
}

/// How a compose file holds together beyond each process: its nginx serves `infra/nginx.conf`
/// and reaches exactly the `serve` replicas; replicas of the local provider share the network
/// and PID namespaces and the state directory its agents need; a namespace holder holds still.
fn compose_problems(file: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let services = compose_services(text);
    let processes = compose_processes(file, text);
    let pool: Vec<&Process> = processes.iter().filter(|p| !p.is_postgres).collect();
    for (name, service) in &services {
        match compose_role(file, name, service) {
            ComposeRole::Nginx => {
                let mounts_conf = service["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| {
                        v.as_str()
                            .is_some_and(|v| v.starts_with("./nginx.conf:/etc/nginx/nginx.conf"))
                    });
                if !mounts_conf {
                    problems.push(format!(
                        "{file}: service {name} does not mount ./nginx.conf as /etc/nginx/nginx.conf"
                    ));
                    continue;
                }
                let conf = nginx_conf(&read(&infra_dir().join("nginx.conf")));
                let mut found = conf.upstream_servers();
                found.sort();
                let mut wanted: Vec<String> = compose_upstreams(&processes, service)
                    .into_iter()
                    .map(|(_, address)| address)
                    .collect();
                wanted.sort();
                if found != wanted {
                    problems.push(format!(
                        "{file}: nginx.conf sends requests to {found:?}, but the serve replicas are at {wanted:?}"
                    ));
                }
            }
            ComposeRole::NamespaceHolder => {
                if !service["environment"].is_null() {
                    problems.push(format!(
                        "{file}: {name} holds namespaces and needs no settings"
                    ));
                }
                if service["healthcheck"]["disable"] != Value::Bool(true) {
                    problems.push(format!(
                        "{file}: {name} serves nothing; the image's /healthz check must be disabled"
                    ));
                }
                if !service["restart"].is_null() {
                    problems.push(format!(
                        "{file}: {name} must never restart: the containers in its namespaces would lose them"
                    ));
                }
            }
            ComposeRole::Postgres | ComposeRole::Pool => {}
        }
    }
    // The local provider's agents are processes on loopback with a record in LOCAL_STATE_DIR:
    // every process of the pool must reach them, see their pids and read their records.
    let local = pool
        .iter()
        .any(|p| env_value(p, "POOL_PROVIDER").unwrap_or("local") == "local");
    if local && pool.len() > 1 {
        let holder = |mode: &Option<String>| {
            mode.as_deref()
                .and_then(|m| m.strip_prefix("service:"))
                .filter(|s| {
                    services.get(*s).is_some_and(|service| {
                        compose_role(file, s, service) == ComposeRole::NamespaceHolder
                    })
                })
                .map(String::from)
        };
        let first = pool[0];
        for p in &pool {
            let Some(state_dir) = env_value(p, "LOCAL_STATE_DIR") else {
                problems.push(format!("{}: no LOCAL_STATE_DIR", p.at));
                continue;
            };
            let volume = p
                .volumes
                .iter()
                .find(|v| v.split(':').nth(1) == Some(state_dir))
                .map(|v| v.split(':').next().unwrap_or_default().to_string());
            let first_volume = first
                .volumes
                .iter()
                .find(|v| v.split(':').nth(1) == env_value(first, "LOCAL_STATE_DIR"))
                .map(|v| v.split(':').next().unwrap_or_default().to_string());
            let shares = holder(&p.network_mode).is_some()
                && holder(&p.network_mode) == holder(&first.network_mode)
                && holder(&p.pid_mode) == holder(&p.network_mode)
                && volume.is_some()
                && volume == first_volume;
            if !shares {
                problems.push(format!(
                    "{}: with the local provider every process of the pool shares one holder's network and PID namespaces and the volume at LOCAL_STATE_DIR",
                    p.at
                ));
            }
        }
    }
    problems
}

fn k8s_processes(file: &str, text: &str) -> Vec<Process> {
    let image = the_image();
    let mut processes = Vec::new();
    for document in yaml_documents(text) {
        let pod = match document["kind"].as_str() {
            Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job") => {
                &document["spec"]["template"]["spec"]
            }
            Some("CronJob") => &document["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            Some("Pod") => &document["spec"],
            _ => continue,
        };
        let workload = document["metadata"]["name"].as_str().unwrap_or("?");
        let containers = pod["containers"].as_array().into_iter().flatten();
        let init = pod["initContainers"].as_array().into_iter().flatten();
        for container in containers.chain(init) {
            let name = container["name"].as_str().unwrap_or("?");
            let env = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|var| {
                    let name = var["name"].as_str().expect("env name").to_string();
                    // valueFrom (a secret, a field): the operator's to supply.
                    let value = var["value"].as_str().map(String::from);
                    (name, value)
                });
            let health_checks = ["readinessProbe", "livenessProbe", "startupProbe"]
                .iter()
                .filter_map(|probe| container.get(*probe))
                .map(|probe| match probe["httpGet"]["path"].as_str() {
                    Some(path) => path.to_string(),
                    None => probe.to_string(),
                })
                .collect();
            processes.push(Process {
                at: format!("{file}: {workload}/{name}"),
                argv: effective_argv(
                    &image,
                    argv_of(container.get("command")),
                    argv_of(container.get("args")),
                ),
                env: overlay(&image.env, env.collect()),
                health_checks,
                is_postgres: false,
                ..Process::default()
            });
        }
    }
    processes
}

fn railway_processes(file: &str, text: &str) -> Vec<Process> {
    let image = the_image();
    let config: Value = serde_json::from_str(text).expect("railway.json is JSON");
    let deploy = &config["deploy"];
    // Railway runs a start command in place of the image's entrypoint, in exec form.
    let argv = effective_argv(&image, argv_of(deploy.get("startCommand")), None);
    let health_checks = deploy["healthcheckPath"]
        .as_str()
        .map(String::from)
        .into_iter()
        .collect();
    vec![Process {
        at: file.to_string(),
        argv,
        env: image.env.clone(),
        health_checks,
        is_postgres: false,
        ..Process::default()
    }]
}

fn dockerfile_processes(file: &str, text: &str) -> Vec<Process> {
    let image = parse_dockerfile(text);
    vec![Process {
        at: file.to_string(),
        argv: effective_argv(&image, None, None),
        env: image.env.clone(),
        health_checks: image.health_checks.clone(),
        is_postgres: false,
        ..Process::default()
    }]
}

/// How a Kubernetes file holds together: credentials come from Secret keys named like the
/// variable, the Service and the HPA name the `serve` Deployment, every pool container runs as a
/// non-root user with resources, and every `serve` has readiness and liveness probes.
fn k8s_problems(file: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let documents = yaml_documents(text);
    let deployments: Vec<&Value> = documents
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .collect();
    let serves_http = |deployment: &Value| {
        deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| argv_of(c.get("args")).is_some_and(|a| a == ["serve"]))
    };
    for deployment in &deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap_or("?");
        let pod = &deployment["spec"]["template"]["spec"];
        for container in pod["containers"].as_array().into_iter().flatten() {
            let at = format!(
                "{file}: {name}/{}",
                container["name"].as_str().unwrap_or("?")
            );
            if !container["envFrom"].is_null() {
                problems.push(format!(
                    "{at}: envFrom hides which variables are set; name each one in env"
                ));
            }
            for var in container["env"].as_array().into_iter().flatten() {
                let reference = &var["valueFrom"]["secretKeyRef"];
                if !reference.is_null() && reference["key"] != var["name"] {
                    problems.push(format!(
                        "{at}: {} comes from secret key {}; name the key like the variable",
                        var["name"], reference["key"]
                    ));
                }
            }
            let non_root = [&pod["securityContext"], &container["securityContext"]]
                .iter()
                .any(|context| context["runAsNonRoot"] == Value::Bool(true));
            if !non_root {
                problems.push(format!("{at}: runAsNonRoot is not set"));
            }
            let resources = &container["resources"];
            if resources["requests"].is_null() || resources["limits"]["memory"].is_null() {
                problems.push(format!("{at}: no resource requests or memory limit"));
            }
            let serve = argv_of(container.get("args")).is_some_and(|a| a == ["serve"]);
            if serve
                && (container["readinessProbe"].is_null() || container["livenessProbe"].is_null())
            {
                problems.push(format!(
                    "{at}: serve needs a readiness and a liveness probe"
                ));
            }
        }
    }
    for document in &documents {
        let name = document["metadata"]["name"].as_str().unwrap_or("?");
        match document["kind"].as_str() {
            Some("Service") => {
                let selector = &document["spec"]["selector"];
                let target = deployments.iter().find(|d| {
                    let labels = &d["spec"]["template"]["metadata"]["labels"];
                    selector
                        .as_object()
                        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
                });
                match target {
                    Some(deployment) if serves_http(deployment) => {
                        let ports: Vec<&Value> = deployment["spec"]["template"]["spec"]
                            ["containers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                            .collect();
                        for port in document["spec"]["ports"].as_array().into_iter().flatten() {
                            let target = &port["targetPort"];
                            if !ports
                                .iter()
                                .any(|p| &p["name"] == target || &p["containerPort"] == target)
                            {
                                problems.push(format!(
                                    "{file}: Service {name} targets port {target}, which no container declares"
                                ));
                            }
                        }
                    }
                    _ => problems.push(format!(
                        "{file}: Service {name} selects no Deployment that serves HTTP"
                    )),
                }
            }
            Some("HorizontalPodAutoscaler") => {
                let target = &document["spec"]["scaleTargetRef"];
                let scales_serve = target["kind"] == "Deployment"
                    && deployments
                        .iter()
                        .any(|d| d["metadata"]["name"] == target["name"] && serves_http(d));
                if !scales_serve {
                    problems.push(format!(
                        "{file}: HPA {name} scales {target}, not a Deployment of this file that serves"
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// A CloudFormation value as the pool would see it: a literal, a parameter's default, or `None`
/// when it is the operator's (a parameter without default, a dynamic reference).
fn cfn_value(value: &Value, parameters: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.contains("{{resolve:") => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(map) if map.len() == 1 => {
            let (function, argument) = map.iter().next().expect("one entry");
            match function.trim_start_matches('!') {
                "Ref" => {
                    let parameter = argument.as_str()?;
                    parameters[parameter]
                        .get("Default")
                        .and_then(|d| cfn_value(d, parameters))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn sam_functions(text: &str) -> (Value, Vec<(String, Value)>) {
    let documents = yaml_documents(text);
    let template = documents.into_iter().next().expect("a template");
    let functions = template["Resources"]
        .as_object()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect();
    (template, functions)
}

/// Each Lambda function runs the `agentpool` binary as `bootstrap`, which serves (the default
/// command) unless a scheduled event asks for a tick.
fn sam_processes(file: &str, text: &str) -> Vec<Process> {
    let (template, functions) = sam_functions(text);
    let parameters = &template["Parameters"];
    functions
        .iter()
        .map(|(name, function)| {
            let variables = &function["Properties"]["Environment"]["Variables"];
            Process {
                at: format!("{file}: {name}"),
                argv: vec!["agentpool".into(), "serve".into()],
                env: variables
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), cfn_value(v, parameters)))
                    .collect(),
                ..Process::default()
            }
        })
        .collect()
}

/// The function is the binary on Lambda's OS-only runtime, an HTTP API and a schedule invoke it,
/// and every credential is a Secrets Manager dynamic reference.
fn sam_problems(file: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (template, functions) = sam_functions(text);
    if template["Transform"] != "AWS::Serverless-2016-10-31" {
        problems.push(format!("{file}: not a SAM template"));
    }
    if functions.is_empty() {
        problems.push(format!("{file}: no AWS::Serverless::Function"));
    }
    let secrets = secret_variables();
    for (name, function) in &functions {
        let properties = &function["Properties"];
        let runtime = properties["Runtime"].as_str().unwrap_or_default();
        if !runtime.starts_with("provided.al2") || properties["Handler"] != "bootstrap" {
            problems.push(format!(
                "{file}: {name} must run `bootstrap` on provided.al2023, not {runtime}"
            ));
        }
        let events: Vec<&str> = properties["Events"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, e)| e["Type"].as_str())
            .collect();
        if !events.contains(&"HttpApi") || !events.iter().any(|e| e.starts_with("Schedule")) {
            problems.push(format!(
                "{file}: {name} needs an HttpApi and a Schedule event, has {events:?}"
            ));
        }
        let variables = &properties["Environment"]["Variables"];
        problems.extend(sam_timing_problems(file, name, &template, function));
        for (variable, value) in variables.as_object().into_iter().flatten() {
            let text = value.to_string();
            if secrets.contains(variable) && !text.contains("{{resolve:secretsmanager:") {
                problems.push(format!(
                    "{file}: {name} takes {variable} from {text}, not from Secrets Manager"
                ));
            }
        }
    }
    problems
}

/// The function's timeout bounds what one invocation does: a scheduled tick ends within
/// `Settings::tick_bound` (its budget plus one call's timeout), a claim by its deadline
/// (`CLAIM_TIMEOUT_MS`). The settings are read by the code's own reader, from the literal values
/// the template gives (the others are defaults).
fn sam_timing_problems(file: &str, name: &str, template: &Value, function: &Value) -> Vec<String> {
    let parameters = &template["Parameters"];
    let timeout = function["Properties"]["Timeout"]
        .as_u64()
        .or_else(|| template["Globals"]["Function"]["Timeout"].as_u64())
        .unwrap_or(3);
    let timeout = std::time::Duration::from_secs(timeout);
    let variables = &function["Properties"]["Environment"]["Variables"];
    let times: Vec<(String, String)> = variables
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.ends_with("_MS") || k.as_str() == "CLAIM_MAX_ATTEMPTS")
        .filter_map(|(k, v)| Some((k.clone(), cfn_value(v, parameters)?)))
        .collect();
    let settings = match Settings::from_vars(times) {
        Ok(settings) => settings,
        Err(e) => return vec![format!("{file}: {name}: {e}")],
    };
    let mut problems = Vec::new();
    if settings.tick_bound() >= timeout {
        problems.push(format!(
            "{file}: {name}: a tick may take {:?} (TICK_BUDGET_MS + the longer of \
             OUTBOUND_TIMEOUT_MS and HEALTH_TIMEOUT_MS), not within the function's {timeout:?}",
            settings.tick_bound()
        ));
    }
    if settings.claim.claim_timeout() >= timeout {
        problems.push(format!(
            "{file}: {name}: a claim may take {:?} (CLAIM_TIMEOUT_MS), not within the \
             function's {timeout:?}",
            settings.claim.claim_timeout()
        ));
    }
    problems
}

/// One directive of an nginx configuration, with its block if it has one.
#[derive(Debug, Clone)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

struct NginxConf(Vec<Directive>);

/// Parses nginx's syntax: words, quoted strings, `;`, blocks and `#` comments.
fn nginx_conf(text: &str) -> NginxConf {
    // Quoted strings are marked with a leading NUL so that a quoted `;` stays a word.
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            '{' | '}' | ';' => {
                tokens.push(c.to_string());
                chars.next();
            }
            '\'' | '"' => {
                chars.next();
                let mut word = String::from('\u{0}');
                for next in chars.by_ref() {
                    if next == c {
                        break;
                    }
                    word.push(next);
                }
                tokens.push(word);
            }
            _ => {
                let mut word = String::new();
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, '{' | '}' | ';') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    fn block(tokens: &mut std::vec::IntoIter<String>) -> Vec<Directive> {
        let mut directives = Vec::new();
        let mut words: Vec<String> = Vec::new();
        while let Some(token) = tokens.next() {
            match token.as_str() {
                ";" | "{" => {
                    assert!(
                        !words.is_empty(),
                        "nginx.conf: `{token}` without a directive"
                    );
                    let name = words.remove(0);
                    let args = std::mem::take(&mut words);
                    let inner = if token == "{" {
                        block(tokens)
                    } else {
                        Vec::new()
                    };
                    directives.push(Directive {
                        name,
                        args,
                        block: inner,
                    });
                }
                "}" => break,
                _ => words.push(token.trim_start_matches('\u{0}').to_string()),
            }
        }
        assert!(words.is_empty(), "nginx.conf: {words:?} without `;`");
        directives
    }
    NginxConf(block(&mut tokens.into_iter()))
}

impl NginxConf {
    /// Every directive, depth first.
    fn all(&self) -> Vec<&Directive> {
        fn walk<'a>(directives: &'a [Directive], out: &mut Vec<&'a Directive>) {
            for directive in directives {
                out.push(directive);
                walk(&directive.block, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out
    }

    fn named(&self, name: &str) -> Vec<&Directive> {
        self.all().into_iter().filter(|d| d.name == name).collect()
    }

    /// `host:port` of every `server` of every upstream.
    fn upstream_servers(&self) -> Vec<String> {
        self.named("upstream")
            .iter()
            .flat_map(|u| u.block.iter().filter(|d| d.name == "server"))
            .filter_map(|d| d.args.first().cloned())
            .collect()
    }
}

/// nginx passes everything to the upstream of replicas, moves a request to another replica only
/// on a connection error or timeout and never resends a claim, and streams the SSE route.
fn nginx_problems(file: &str, text: &str) -> Vec<String> {
    let conf = nginx_conf(text);
    let mut problems = Vec::new();
    let upstreams: Vec<String> = conf
        .named("upstream")
        .iter()
        .filter_map(|u| u.args.first().cloned())
        .collect();
    if conf.upstream_servers().len() < 2 {
        problems.push(format!("{file}: fewer than two replicas upstream"));
    }
    let passes = conf.named("proxy_pass");
    if passes.is_empty() {
        problems.push(format!("{file}: no proxy_pass"));
    }
    for pass in passes {
        let target = pass.args.first().cloned().unwrap_or_default();
        if !upstreams
            .iter()
            .any(|name| target.strip_prefix("http://") == Some(name.as_str()))
        {
            problems.push(format!(
                "{file}: proxy_pass {target} is not an upstream of replicas"
            ));
        }
    }
    let next_upstream = conf.named("proxy_next_upstream");
    for directive in &next_upstream {
        if directive
            .args
            .iter()
            .any(|a| !["error", "timeout"].contains(&a.as_str()))
        {
            problems.push(format!(
                "{file}: proxy_next_upstream {:?}: only `error timeout`; `non_idempotent` would resend claims, http_5xx would hide the API's own answers",
                directive.args
            ));
        }
    }
    if next_upstream.is_empty() {
        problems.push(format!(
            "{file}: say `proxy_next_upstream error timeout;` where the retries are decided"
        ));
    }
    let streams_sse = conf.named("location").iter().any(|location| {
        location
            .args
            .last()
            .is_some_and(|a| a == "/api/pool/replenish/stream")
            && location
                .block
                .iter()
                .any(|d| d.name == "proxy_buffering" && d.args == ["off"])
    });
    if !streams_sse {
        problems.push(format!(
            "{file}: the SSE route /api/pool/replenish/stream needs `proxy_buffering off`"
        ));
    }
    if conf.named("listen").is_empty() {
        problems.push(format!("{file}: nginx listens nowhere"));
    }
    let host = conf.named("proxy_set_header");
    if !host.iter().any(|d| d.args == ["Host", "$http_host"]) {
        problems.push(format!(
            "{file}: `proxy_set_header Host $http_host;`: the replicas compare Origin with Host, port included"
        ));
    }
    for log in conf.named("access_log") {
        if log.args.first().is_some_and(|a| a == "off") {
            continue;
        }
        // Without a format of ours, nginx's `combined` logs `$request`, query string and all.
        let text: String = match log.args.get(1) {
            None => "$request $http_referer".into(),
            Some(name) => conf
                .named("log_format")
                .iter()
                .filter(|f| f.args.first() == Some(name))
                .flat_map(|f| f.args.iter().skip(1).cloned())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let leaks = [
            "$request",
            "$request_uri",
            "$args",
            "$query_string",
            "$http_referer",
        ]
        .iter()
        .any(|var| names_variable(&text, var))
            || text.contains("$arg_");
        if leaks {
            problems.push(format!(
                "{file}: access_log {:?} logs query strings (`?key=`, `?csrf=`)",
                log.args
            ));
        }
    }
    problems
}

/// Whether `text` uses the nginx variable `var` itself (`$request`, not `$request_method`).
fn names_variable(text: &str, var: &str) -> bool {
    text.match_indices(var).any(|(at, _)| {
        text[at + var.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// infra/README.md tells how to use every file next to it, and the top README links to it.
fn readme_problems(file: &str, text: &str) -> Vec<String> {
    let mut problems: Vec<String> = infra_files()
        .into_iter()
        .filter(|f| f != file)
        .filter(|f| !text.contains(f.as_str()))
        .map(|f| format!("infra/{file} does not say how to use infra/{f}"))
        .collect();
    let top = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"));
    if !top.contains("infra/README.md") {
        problems.push("README.md does not link infra/README.md".into());
    }
    problems
}

/// Every file under `infra/`, relative to it.
fn infra_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("infra/ is readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).expect("under infra/");
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let root = infra_dir();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    files
}

/// The processes a file starts, and what else is wrong with it.
fn check_file(file: &str) -> (Vec<Process>, Vec<String>) {
    let text = read(&infra_dir().join(file));
    let name = Path::new(file)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(file);
    let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
    if name == "Dockerfile" {
        (dockerfile_processes(file, &text), Vec::new())
    } else if name.starts_with("railway") && name.ends_with(".json") {
        (railway_processes(file, &text), Vec::new())
    } else if name.starts_with("docker-compose") || name.starts_with("compose") {
        (
            compose_processes(file, &text),
            compose_problems(file, &text),
        )
    } else if file.starts_with("k8s/") && yaml {
        (k8s_processes(file, &text), k8s_problems(file, &text))
    } else if file.starts_with("aws/") && yaml {
        (sam_processes(file, &text), sam_problems(file, &text))
    } else if name == "nginx.conf" {
        (Vec::new(), nginx_problems(file, &text))
    } else if file == "README.md" {
        (Vec::new(), readme_problems(file, &text))
    } else {
        panic!("infra/{file}: no check for this kind of file; add one to tests/tests/infra.rs")
    }
}

/// Settings that hold credentials (`Option<Secret>` in shared/src/vocabulary/config/), from
/// their source, so the list cannot go stale.
fn secret_variables() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src/vocabulary/config");
    let source: String = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| read(&entry.expect("config entry").path()))
        .collect();
    let names: Vec<String> = source
        .lines()
        .filter_map(|line| {
            let field = line.trim().strip_prefix("pub ")?;
            let (name, kind) = field.split_once(':')?;
            (kind.trim() == "Option<Secret>,").then(|| name.trim().to_ascii_uppercase())
        })
        .collect();
    assert!(
        names.contains(&"POOL_API_KEY".to_string()) && names.contains(&"DATABASE_URL".to_string()),
        "secret settings not found in shared/src/vocabulary/config/: {names:?}"
    );
    names
}

/// A credential is named, never written: its value is the operator's to supply (an environment
/// variable without default, a Secret, a Secrets Manager reference).
fn check_secrets(process: &Process, secrets: &[String]) -> Result<(), String> {
    let written: Vec<&str> = process
        .env
        .iter()
        .filter(|(name, value)| secrets.contains(name) && value.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    if written.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: writes the value of {written:?} in the file; take it from the operator",
            process.at
        ))
    }
}

/// `STUB_*` variables the reference agent reads, from its source, so the list cannot go stale.
fn stub_variables() -> Vec<String> {
    let source = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src/stub_agent.rs"));
    let names: Vec<String> = source
        .split('"')
        .filter(|token| {
            token.starts_with("STUB_")
                && token
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(String::from)
        .collect();
    assert!(
        !names.is_empty(),
        "no STUB_ variables found in stub_agent.rs"
    );
    names
}

/// Every variable some binary reads: the settings, plus what is read outside them.
fn known_variables() -> Vec<String> {
    let mut names = Settings::variables();
    names.extend(
        [
            "RUST_LOG",
            "LOG_FORMAT",
            "AWS_LAMBDA_RUNTIME_API",
            "OPENCLAW_GATEWAY_TOKEN",
            // `dev` looks for the PostgreSQL server binaries there.
            "POSTGRES_BIN_DIR",
        ]
        .map(String::from),
    );
    names.extend(stub_variables());
    names
}

/// `agentpool <subcommand>` for the subcommands a deployment may run, or the scheduler.
fn check_command(process: &Process) -> Result<(), String> {
    let program = process
        .argv
        .first()
        .map(|p| p.rsplit('/').next().unwrap_or(p));
    let args: Vec<&str> = process.argv.iter().skip(1).map(String::as_str).collect();
    match (program, args.as_slice()) {
        (Some("agentpool"), ["serve" | "migrate"] | ["tick"] | ["tick", "--reconcile"]) => Ok(()),
        (Some("agentpool-scheduler"), []) => Ok(()),
        _ => Err(format!(
            "{}: runs {:?}, not `agentpool serve|migrate|tick` or `agentpool-scheduler`",
            process.at, process.argv
        )),
    }
}

fn check_variables(process: &Process, known: &[String]) -> Result<(), String> {
    let unknown: Vec<&str> = process
        .env
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| !known.iter().any(|k| k == name))
        .filter(|name| !(process.is_postgres && name.starts_with("POSTGRES_")))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: sets {unknown:?}, which no code reads",
            process.at
        ))
    }
}

/// The settings given, with the values the file fixes, are accepted at start-up, and the
/// provider they name is one this build can start. What the operator supplies (a secret, a
/// variable without default) is taken to be there.
fn check_settings(process: &Process, scratch: &Path) -> Result<(), String> {
    if process.is_postgres {
        return Ok(());
    }
    let settings = Settings::variables();
    let mut vars: Vec<(String, String)> = process
        .env
        .iter()
        .filter(|(name, _)| settings.contains(name))
        // Paths inside the container mean nothing here.
        .filter(|(name, _)| !name.starts_with("LOCAL_"))
        .map(|(name, value)| {
            let value = value.clone().unwrap_or_else(|| match name.as_str() {
                "DATABASE_URL" => "postgres://operator@db.invalid/agentpool".into(),
                _ => "supplied-by-the-operator".into(),
            });
            (name.clone(), value)
        })
        .collect();
    vars.push((
        "LOCAL_STATE_DIR".into(),
        scratch.join("agents").display().to_string(),
    ));
    let settings = Settings::from_vars(vars).map_err(|e| format!("{}: {e}", process.at))?;
    agentpool_core::providers::from_settings(&settings, &Default::default())
        .map(drop)
        .map_err(|e| format!("{}: {e}", process.at))
}

/// A health check asks `/healthz`, directly or through `agentpool healthcheck` (which does).
fn probes_healthz(check: &str) -> bool {
    let words: Vec<&str> = check
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '[' | ']'))
        .filter(|w| !w.is_empty())
        .collect();
    check.contains("/healthz") || words.windows(2).any(|w| w == ["agentpool", "healthcheck"])
}

/// A `serve` is probed at /healthz, if at all; a process that serves no HTTP is not probed.
fn check_health_checks(process: &Process) -> Result<(), String> {
    if process.is_postgres {
        return Ok(());
    }
    if !is_serve(process) {
        return match process.health_checks.first() {
            None => Ok(()),
            Some(check) => Err(format!(
                "{}: runs {:?}, which serves no HTTP, yet is health-checked by {check}",
                process.at, process.argv
            )),
        };
    }
    match process
        .health_checks
        .iter()
        .find(|check| !probes_healthz(check))
    {
        None => Ok(()),
        Some(check) => Err(format!(
            "{}: health check {check} does not probe /healthz",
            process.at
        )),
    }
}

#[test]
fn every_infra_file_starts_a_real_command_with_settings_the_code_reads() {
    let scratch = tempfile::tempdir().unwrap();
    let known = known_variables();
    let secrets = secret_variables();
    let files = infra_files();
    assert!(files.len() >= 8, "infra/ files: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let (processes, file_problems) = check_file(file);
        problems.extend(file_problems);
        let configures_others = file == "nginx.conf" || file == "README.md";
        if !configures_others && !processes.iter().any(|p| !p.is_postgres) {
            problems.push(format!("infra/{file} runs no agentpool process"));
        }
        for process in &processes {
            if !process.is_postgres {
                problems.extend(check_command(process).err());
            }
            problems.extend(check_variables(process, &known).err());
            problems.extend(check_settings(process, scratch.path()).err());
            problems.extend(check_health_checks(process).err());
            problems.extend(check_secrets(process, &secrets).err());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The parsers this test relies on see what they must: otherwise a broken parser would pass
/// every file.
#[test]
fn the_infra_checks_catch_what_they_are_for() {
    let scratch = tempfile::tempdir().unwrap();
    let known = known_variables();
    let compose = r#"
services:
  db: { image: "postgres:16", environment: { POSTGRES_PASSWORD: x } }
  api:
    build: { context: .., dockerfile: infra/Dockerfile }
    entrypoint: ["agentpool-scheduler"]
    environment: &env
      POOL_PROVIDER: ${POOL_PROVIDER:-sprites}
      SPRITES_GHOST_TOKEN: ${SPRITES_GHOST_TOKEN}
      POSTGRES_PASSWORD: x
    healthcheck: { test: ["CMD", "curl", "-f", "http://localhost:3001/health"] }
  worker:
    build: { context: .., dockerfile: infra/Dockerfile }
    command: ["stub-agent"]
    environment: *env
"#;
    let processes = compose_processes("compose", compose);
    let service = |name: &str| {
        processes
            .iter()
            .find(|p| p.at.ends_with(&format!("service {name}")))
            .unwrap_or_else(|| panic!("no {name} in {processes:?}"))
    };
    let (db, api, worker) = (service("db"), service("api"), service("worker"));
    assert!(check_variables(db, &known).is_ok());
    assert_eq!(api.argv, ["agentpool-scheduler"]);
    assert!(check_command(api).is_ok());
    let unknown = check_variables(api, &known).unwrap_err();
    assert!(unknown.contains("SPRITES_GHOST_TOKEN") && unknown.contains("POSTGRES_PASSWORD"));
    assert!(check_settings(api, scratch.path())
        .unwrap_err()
        .contains("POOL_PROVIDER"));
    assert!(check_health_checks(api).is_err());
    assert_eq!(worker.argv, ["agentpool", "stub-agent"]);
    assert!(check_command(worker).is_err());

    let k8s = r#"
apiVersion: v1
kind: Service
metadata: { name: s }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: d }
spec:
  template:
    spec:
      containers:
        - name: c
          args: ["serve"]
          env: [{ name: POOL_PROVIDER, value: local }, { name: TICK_INTERVAL, value: "1" }]
          livenessProbe: { httpGet: { path: /health, port: http } }
"#;
    let processes = k8s_processes("k8s", k8s);
    let [c] = processes.as_slice() else {
        panic!("{processes:?}")
    };
    assert_eq!(c.argv, ["agentpool", "serve"]);
    assert!(check_command(c).is_ok());
    assert!(check_settings(c, scratch.path()).is_ok());
    assert!(check_variables(c, &known)
        .unwrap_err()
        .contains("TICK_INTERVAL"));
    assert!(check_health_checks(c).is_err());

    let railway = r#"{"deploy": {"startCommand": "agentpool dev", "healthcheckPath": "/healthz"}}"#;
    let [r] = railway_processes("railway", railway).try_into().unwrap();
    assert!(check_command(&r).is_err());
    let railway =
        r#"{"deploy": {"startCommand": "agentpool serve", "healthcheckPath": "/healthz"}}"#;
    let [r] = railway_processes("railway", railway).try_into().unwrap();
    assert!(check_command(&r).is_ok());
    assert!(check_health_checks(&r).is_ok());
    let railway =
        r#"{"deploy": {"startCommand": "agentpool-scheduler", "healthcheckPath": "/healthz"}}"#;
    let [r] = railway_processes("railway", railway).try_into().unwrap();
    assert!(check_command(&r).is_ok());
    assert!(check_health_checks(&r).is_err());

    let dockerfile = "FROM a AS build\nENV BUILD_ONLY=1\nFROM b\nENV PORT=3001 \\\n    NOPE=1\nENTRYPOINT [\"agentpool\"]\nCMD [\"serve\"]\nHEALTHCHECK CMD wget -q http://localhost:3001/\n";
    let [d] = dockerfile_processes("Dockerfile", dockerfile)
        .try_into()
        .unwrap();
    assert_eq!(d.argv, ["agentpool", "serve"]);
    assert_eq!(
        d.env.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["PORT", "NOPE"]
    );
    assert!(check_variables(&d, &known).is_err());
    assert!(check_health_checks(&d).is_err());
}

// The compose topology, run as plain processes.

/// nginx from the distribution (`.ci/run` installs it): `$NGINX`, the usual places, or `PATH`.
fn nginx_bin() -> PathBuf {
    let found = std::env::var_os("NGINX")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/sbin/nginx", "/usr/local/sbin/nginx"].map(PathBuf::from))
        .chain(
            std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|dir| dir.join("nginx")),
        )
        .find(|path| path.is_file());
    found.expect("nginx is not installed: apt-get install nginx-light (.ci/run does)")
}

/// `infra/nginx.conf` as the test runs it: the same file with each replica's address (as the
/// compose file places it) swapped for the port its process listens on, the listen address for
/// a free loopback port, and nginx's temporary files in `dir`.
fn render_nginx_conf(text: &str, replicas: &[(String, u16)], listen: u16, dir: &Path) -> String {
    let mut conf = text.to_string();
    let mut swap = |from: String, to: String| {
        assert_eq!(
            conf.matches(&from).count(),
            1,
            "nginx.conf: `{from}` must appear exactly once"
        );
        conf = conf.replacen(&from, &to, 1);
    };
    for (address, port) in replicas {
        swap(
            format!("server {address} "),
            format!("server 127.0.0.1:{port} "),
        );
    }
    let listens = nginx_conf(text).named("listen").len();
    assert_eq!(listens, 1, "nginx.conf: one listen directive expected");
    let address = nginx_conf(text).named("listen")[0].args[0].clone();
    swap(
        format!("listen {address};"),
        format!("listen 127.0.0.1:{listen};"),
    );
    let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("\n    {kind}_temp_path {};", dir.join(kind).display()))
        .collect();
    swap("http {".into(), format!("http {{{temp}"));
    conf
}

/// A child stopped with SIGTERM (nginx's master then stops its workers) and reaped, then
/// SIGKILLed if it lingers.
struct Terminated(std::process::Child);

impl Drop for Terminated {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the stub agents the topology's processes started, when the test ends.
struct KillAgents(agentpool_core::providers::local::LocalProvider);

impl Drop for KillAgents {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

/// One claim request through nginx.
#[derive(Debug)]
struct Attempt {
    client: usize,
    started: std::time::Instant,
    ended: std::time::Instant,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    Claimed(String),
    /// `503 no_idle_instance`: the pool is refilling; the claim is asked again.
    NothingIdle,
    Failed(String),
}

/// Runs `agentpool healthcheck` against a port, as the image's HEALTHCHECK does.
fn healthcheck(port: u16) -> bool {
    agentpool_tests::clean(agentpool_tests::agentpool_bin())
        .arg("healthcheck")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run agentpool healthcheck")
        .success()
}

/// The topology of `infra/docker-compose.yml` (two `serve` replicas, the scheduler, nginx with
/// `infra/nginx.conf`) as plain processes on the harness's Postgres and the local provider, 200
/// claims through nginx by 8 clients, one replica SIGKILLed half-way. Only claims in flight at
/// the kill may fail, and no instance is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_topology_survives_a_replica_killed_mid_claims() {
    use std::process::Stdio;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use agentpool_tests::{agentpool_bin, clean, free_port, scheduler_bin, wait_until, Guarded};

    const CLAIMS: usize = 200;
    const CLIENTS: usize = 8;
    /// A claim answered `503 no_idle_instance` is asked again, up to this many times.
    const MAX_WAITS: usize = 600;

    let file = "docker-compose.yml";
    let text = read(&infra_dir().join(file));
    let processes = compose_processes(file, &text);
    let services = compose_services(&text);
    let nginx_service = services
        .iter()
        .find(|(name, service)| compose_role(file, name, service) == ComposeRole::Nginx)
        .map(|(_, service)| service)
        .expect("the compose file runs nginx");
    let serves: Vec<&Process> = processes.iter().filter(|p| is_serve(p)).collect();
    assert_eq!(serves.len(), 2, "two serve replicas in {file}");
    let scheduler = processes
        .iter()
        .find(|p| p.argv.first().is_some_and(|a| a == "agentpool-scheduler"))
        .expect("the compose file runs agentpool-scheduler");
    let addresses: std::collections::HashMap<String, String> =
        compose_upstreams(&processes, nginx_service)
            .into_iter()
            .collect();

    let db = agentpool_tests::TestDb::new().await;
    let agents_dir = tempfile::Builder::new()
        .prefix("agentpool-topology-agents-")
        .tempdir()
        .unwrap();
    let _agents = KillAgents(
        agentpool_core::providers::local::LocalProvider::new(
            agents_dir.path().to_path_buf(),
            agentpool_bin().to_path_buf(),
            Vec::new(),
        )
        .unwrap(),
    );
    let logs = tempfile::Builder::new()
        .prefix("agentpool-topology-logs-")
        .tempdir()
        .unwrap();
    let key = "topology-key-0123456789abcdef";
    let prefix = format!("topo{}-", std::process::id());
    // What compose fixes for each process, with what differs on this machine: the database, the
    // key and the paths, and the operator's knobs (`${NAME:-default}` in the file) set for a
    // busier pool and a quicker scheduler.
    let settings = Settings::variables();
    let env_of = |process: &Process, port: Option<u16>| -> Vec<(String, String)> {
        let fixed = process
            .env
            .iter()
            .filter(|(name, _)| settings.contains(name) || name == "LOG_FORMAT")
            .filter(|(name, _)| {
                !name.starts_with("LOCAL_")
                    && !["DATABASE_URL", "POOL_API_KEY", "PORT"].contains(&name.as_str())
            })
            .filter_map(|(name, value)| Some((name.clone(), value.clone()?)));
        let here = [
            ("DATABASE_URL", db.url.clone()),
            ("POOL_API_KEY", key.to_string()),
            ("LOCAL_STATE_DIR", agents_dir.path().display().to_string()),
            ("LOCAL_AGENT_BIN", agentpool_bin().display().to_string()),
            ("POOL_NAME_PREFIX", prefix.clone()),
            ("POOL_MIN_IDLE", "40".to_string()),
            ("POOL_MAX_TOTAL", "100".to_string()),
            // Every claim takes a while at the agent (the local provider hands STUB_* variables
            // on to the agents it starts), so that claims are in flight when the replica dies.
            ("STUB_PROVISION_DELAY_MS", "300".to_string()),
            // Each request's path at debug level: the log shows which replica served claims.
            (
                "RUST_LOG",
                "warn,agentpool::routes=info,tower_http=debug".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v));
        let mut env: Vec<(String, String)> = fixed.chain(here).collect();
        if process.argv[0] == "agentpool-scheduler" {
            env.retain(|(name, _)| name != "TICK_INTERVAL_MS");
            env.push(("TICK_INTERVAL_MS".into(), "1000".into()));
        }
        if let Some(port) = port {
            env.push(("PORT".into(), port.to_string()));
        }
        env
    };
    let spawn = |process: &Process, port: Option<u16>| -> Guarded {
        let program = match process.argv[0].as_str() {
            "agentpool" => agentpool_bin().to_path_buf(),
            "agentpool-scheduler" => scheduler_bin(),
            other => panic!("{}: runs {other}", process.at),
        };
        let log =
            std::fs::File::create(logs.path().join(format!("{}.log", process.service))).unwrap();
        Guarded(
            clean(&program)
                .args(&process.argv[1..])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env_of(process, port))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", process.at)),
        )
    };
    let log_of = |service: &str| {
        std::fs::read_to_string(logs.path().join(format!("{service}.log"))).unwrap_or_default()
    };

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let answers = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    let mut replicas = Vec::new();
    for serve in &serves {
        let port = free_port();
        replicas.push((serve.service.clone(), port, spawn(serve, Some(port))));
    }
    for (service, port, _) in &replicas {
        wait_until(Duration::from_secs(60), || {
            answers(format!("http://127.0.0.1:{port}/healthz"))
        })
        .await;
        assert!(
            healthcheck(*port),
            "agentpool healthcheck fails on {service}"
        );
    }
    let _scheduler = spawn(scheduler, None);

    let nginx_dir = tempfile::Builder::new()
        .prefix("agentpool-topology-nginx-")
        .tempdir()
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // nginx's workers run as an unprivileged user when it starts as root.
        std::fs::set_permissions(nginx_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let nginx_port = free_port();
    let upstream_ports: Vec<(String, u16)> = replicas
        .iter()
        .map(|(service, port, _)| (addresses[service].clone(), *port))
        .collect();
    let conf = render_nginx_conf(
        &read(&infra_dir().join("nginx.conf")),
        &upstream_ports,
        nginx_port,
        nginx_dir.path(),
    );
    let conf_path = nginx_dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let nginx_log = std::fs::File::create(logs.path().join("nginx.log")).unwrap();
    let _nginx = Terminated(
        std::process::Command::new(nginx_bin())
            .arg("-p")
            .arg(nginx_dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "stderr", "-g"])
            .arg(format!(
                "daemon off; master_process on; pid {};",
                nginx_dir.path().join("nginx.pid").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(nginx_log)
            .spawn()
            .expect("start nginx"),
    );
    let base = format!("http://127.0.0.1:{nginx_port}");
    wait_until(Duration::from_secs(30), || {
        let url = format!("{base}/healthz");
        let nginx_says = log_of("nginx");
        assert!(
            !nginx_says.contains("[emerg]"),
            "nginx refused the configuration: {nginx_says}"
        );
        answers(url)
    })
    .await;

    // The pool filled by the replicas' and the scheduler's ticks.
    let idle = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM instances WHERE status = 'idle'")
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(90), || async { idle().await >= 40 }).await;

    let tickets = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let waits = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (http, base) = (http.clone(), base.clone());
        let (tickets, attempts, waits) = (tickets.clone(), attempts.clone(), waits.clone());
        clients.push(tokio::spawn(async move {
            while tickets.fetch_add(1, Ordering::SeqCst) < CLAIMS {
                for wait in 0.. {
                    let started = Instant::now();
                    let sent = http
                        .post(format!("{base}/api/pool/claim"))
                        .bearer_auth(key)
                        .json(&serde_json::json!({
                            "agentName": format!("topology-{client}"),
                            "instructions": "Be helpful.",
                        }))
                        .send()
                        .await;
                    let answer = match sent {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.text().await {
                                Ok(text) => Ok((status, text)),
                                Err(e) => Err(format!("reading the reply: {e}")),
                            }
                        }
                        Err(e) => Err(format!("sending: {e}")),
                    };
                    let ended = Instant::now();
                    let json = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_default();
                    let outcome = match answer {
                        Ok((200, text)) => match json(&text)["instanceId"].as_str() {
                            Some(instance) => Outcome::Claimed(instance.to_string()),
                            None => Outcome::Failed(format!("200 without instanceId: {text}")),
                        },
                        Ok((503, text))
                            if json(&text)["code"] == "no_idle_instance" && wait < MAX_WAITS =>
                        {
                            Outcome::NothingIdle
                        }
                        Ok((status, text)) => Outcome::Failed(format!("{status}: {text}")),
                        Err(e) => Outcome::Failed(e),
                    };
                    let done = !matches!(outcome, Outcome::NothingIdle);
                    if let Outcome::Claimed(instance) = &outcome {
                        // Released at once, so that the pool keeps churning.
                        let _ = http
                            .delete(format!("{base}/api/pool/instances/{instance}"))
                            .bearer_auth(key)
                            .send()
                            .await;
                    }
                    attempts.lock().unwrap().push(Attempt {
                        client,
                        started,
                        ended,
                        outcome,
                    });
                    if done {
                        break;
                    }
                    // The pool is refilling: ask again.
                    waits.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }

    // Half-way, SIGKILL the first replica.
    wait_until(Duration::from_secs(120), || async {
        tickets.load(Ordering::SeqCst) >= CLAIMS / 2
    })
    .await;
    let (victim, victim_port, mut victim_process) = replicas.remove(0);
    let kill_started = Instant::now();
    victim_process.0.kill().expect("SIGKILL the replica");
    victim_process.0.wait().expect("reap the replica");
    let kill_ended = Instant::now();
    let claims_served_by_victim = log_of(&victim)
        .lines()
        .filter(|line| line.contains("/api/pool/claim") && line.contains("finished processing"))
        .count();

    for client in clients {
        client.await.unwrap();
    }
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let in_flight = |a: &&Attempt| a.started <= kill_ended && a.ended >= kill_started;
    // A client has one request out at a time: requests it sent before the replica died and that
    // were answered after the kill began. (Those sent after it died are refused at connect and
    // nginx passes them to the other replica.)
    let clients_at_kill: std::collections::HashSet<usize> = attempts
        .iter()
        .filter(in_flight)
        .map(|a| a.client)
        .collect();
    let at_kill = clients_at_kill.len();
    let failed: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Failed(_)))
        .collect();
    let claimed: Vec<&str> = attempts
        .iter()
        .filter_map(|a| match &a.outcome {
            Outcome::Claimed(instance) => Some(instance.as_str()),
            _ => None,
        })
        .collect();
    let after_kill = attempts
        .iter()
        .filter(|a| a.started > kill_ended && matches!(a.outcome, Outcome::Claimed(_)))
        .count();
    println!(
        "topology: {} claims through nginx ({} requests), {} claimed, {} failed, {} clients with a request in flight at the kill, {} claimed after it, {} answers of no idle instance; {} claims served by {victim} before its kill",
        claimed.len() + failed.len(),
        attempts.len(),
        claimed.len(),
        failed.len(),
        at_kill,
        after_kill,
        waits.load(Ordering::SeqCst),
        claims_served_by_victim
    );
    for attempt in &failed {
        if let Outcome::Failed(why) = &attempt.outcome {
            println!("  failed: {why}");
        }
    }

    assert_eq!(claimed.len() + failed.len(), CLAIMS);
    assert!(
        at_kill > 0,
        "no claim was in flight when the replica was killed"
    );
    assert!(
        claims_served_by_victim > 0,
        "nginx sent no claim to {victim} before it was killed"
    );
    for attempt in &failed {
        assert!(
            in_flight(attempt),
            "a claim failed that was not in flight at the kill: {:?}\nnginx: {}",
            attempt.outcome,
            log_of("nginx")
        );
    }
    let mut failing_clients: Vec<usize> = failed.iter().map(|a| a.client).collect();
    failing_clients.sort();
    failing_clients.dedup();
    assert_eq!(
        failing_clients.len(),
        failed.len(),
        "a client had more than one claim cut by the kill"
    );
    assert!(failed.len() <= at_kill && at_kill <= CLIENTS);
    assert!(after_kill > 0, "no claim was made after the kill");
    // The killed replica no longer answers the image's health check; the other one does.
    assert!(!healthcheck(victim_port));
    assert!(healthcheck(replicas[0].1));

    // Nothing handed out twice: each reply names another instance, and each instance was taken
    // (claiming → claimed) once, according to instance_events.
    let mut distinct = claimed.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "an instance was handed out twice"
    );
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT instance_id, count(*) FROM instance_events
          WHERE from_status = 'claiming' AND to_status = 'claimed'
          GROUP BY instance_id HAVING count(*) > 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT instance_id) FROM instance_events
          WHERE from_status = 'claiming' AND to_status = 'claimed' AND instance_id = ANY($1)",
    )
    .bind(&claimed)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded as usize,
        claimed.len(),
        "a reply without its claimed event"
    );
}

/// The checks of how each kind of file holds together fail where they must.
#[test]
fn the_file_checks_catch_what_they_are_for() {
    let scratch = tempfile::tempdir().unwrap();
    let secrets = secret_variables();

    // nginx: a claim resent, a proxy_pass elsewhere, SSE buffered.
    let nginx = "http { upstream pool { server a:1; server b:1; }\n server { listen 80;\n proxy_next_upstream error timeout non_idempotent;\n location / { proxy_pass http://elsewhere; } } }";
    let problems = nginx_problems("nginx.conf", nginx).join("\n");
    for wanted in ["non_idempotent", "http://elsewhere", "proxy_buffering off"] {
        assert!(problems.contains(wanted), "{wanted} not caught: {problems}");
    }
    let conf = nginx_conf("a 'b; c' d;\nx { y z; } # w;\n");
    assert_eq!(conf.0.len(), 2);
    assert_eq!(conf.0[0].args, ["b; c", "d"]);
    assert_eq!(conf.0[1].block[0].args, ["z"]);
    let rendered = render_nginx_conf(
        &read(&infra_dir().join("nginx.conf")),
        &[
            ("127.0.0.1:3001".into(), 41001),
            ("127.0.0.1:3002".into(), 41002),
        ],
        41000,
        scratch.path(),
    );
    let rendered = nginx_conf(&rendered);
    assert_eq!(
        rendered.upstream_servers(),
        ["127.0.0.1:41001", "127.0.0.1:41002"]
    );
    assert_eq!(rendered.named("listen")[0].args, ["127.0.0.1:41000"]);
    assert!(probes_healthz(r#"["agentpool","healthcheck"]"#));
    assert!(probes_healthz("CMD curl -f http://localhost:3001/healthz"));
    assert!(!probes_healthz("CMD curl -f http://localhost:3001/health"));

    // compose: nginx aims at a port no replica has; a second pool process that does not share
    // the first one's PID namespace; a scheduler probed over HTTP; a key written down.
    let compose = r#"
services:
  pod:
    build: { context: .., dockerfile: infra/Dockerfile }
    entrypoint: ["sleep", "infinity"]
    healthcheck: { disable: true }
  api-1:
    build: { context: .., dockerfile: infra/Dockerfile }
    network_mode: service:pod
    pid: service:pod
    volumes: [agents:/var/lib/agentpool/agents]
    environment: { PORT: "3001", POOL_API_KEY: "written-down-0123456789" }
  api-2:
    build: { context: .., dockerfile: infra/Dockerfile }
    network_mode: service:pod
    volumes: [agents:/var/lib/agentpool/agents]
    environment: { PORT: "3003" }
  scheduler:
    build: { context: .., dockerfile: infra/Dockerfile }
    entrypoint: ["agentpool-scheduler"]
    network_mode: service:pod
    pid: service:pod
    volumes: [agents:/var/lib/agentpool/agents]
  nginx:
    image: nginx:1
    network_mode: service:pod
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
"#;
    let problems = compose_problems("compose", compose).join("\n");
    assert!(problems.contains("127.0.0.1:3003"), "{problems}");
    assert!(
        problems.contains("service api-2: with the local provider"),
        "{problems}"
    );
    assert!(!problems.contains("service api-1:"), "{problems}");
    let processes = compose_processes("compose", compose);
    let by_service = |name: &str| processes.iter().find(|p| p.service == name).unwrap();
    assert!(check_health_checks(by_service("scheduler"))
        .unwrap_err()
        .contains("serves no HTTP"));
    assert!(check_health_checks(by_service("api-2")).is_ok());
    assert!(check_secrets(by_service("api-1"), &secrets)
        .unwrap_err()
        .contains("POOL_API_KEY"));
    assert!(check_secrets(by_service("api-2"), &secrets).is_ok());

    // Kubernetes: variables hidden behind envFrom, a key named otherwise, root, an HPA and a
    // Service aimed at nothing.
    let k8s = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: api }
spec:
  template:
    metadata: { labels: { app: a } }
    spec:
      containers:
        - name: c
          args: ["serve"]
          ports: [{ containerPort: 3001, name: http }]
          envFrom: [{ secretRef: { name: s } }]
          env: [{ name: DATABASE_URL, valueFrom: { secretKeyRef: { name: s, key: db } } }]
          resources: { requests: { cpu: 1m } }
---
apiVersion: v1
kind: Service
metadata: { name: svc }
spec: { selector: { app: b }, ports: [{ port: 80, targetPort: http }] }
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: { name: hpa }
spec: { scaleTargetRef: { kind: Deployment, name: apis } }
"#;
    let problems = k8s_problems("k8s", k8s).join("\n");
    for wanted in [
        "envFrom",
        "secret key \"db\"",
        "runAsNonRoot",
        "memory limit",
        "readiness",
        "Service svc",
        "HPA hpa",
    ] {
        assert!(problems.contains(wanted), "{wanted} not caught: {problems}");
    }

    // SAM: a credential written down, no schedule, another runtime, a tick (20 s + the default
    // 30 s call timeout) and a claim (the default 120 s) longer than the function may run.
    let sam = r#"
Transform: AWS::Serverless-2016-10-31
Parameters: { Env: { Type: String, Default: staging } }
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: nodejs22.x
      Handler: index.handler
      Timeout: 30
      Environment:
        Variables:
          TICK_BUDGET_MS: "20000"
          DATABASE_URL: postgres://u:p@h/db
          POOL_API_KEY: !Sub "{{resolve:secretsmanager:${Env}-key}}"
          POOL_ENVIRONMENT: !Ref Env
      Events: { Api: { Type: HttpApi } }
"#;
    let problems = sam_problems("sam", sam).join("\n");
    for wanted in [
        "provided.al2023",
        "Schedule",
        "DATABASE_URL",
        "a tick may take 50s",
        "a claim may take 120s",
    ] {
        assert!(problems.contains(wanted), "{wanted} not caught: {problems}");
    }
    assert!(!problems.contains("POOL_API_KEY"), "{problems}");
    let [function] = sam_processes("sam", sam).try_into().unwrap();
    assert_eq!(env_value(&function, "POOL_ENVIRONMENT"), Some("staging"));
    assert_eq!(env_value(&function, "POOL_API_KEY"), None);
    assert!(check_secrets(&function, &secrets)
        .unwrap_err()
        .contains("DATABASE_URL"));
}

/// An offline validator `.ci/run` installs and names in `variable`; elsewhere it is used from
/// `PATH` when there, and the test says it was skipped. On CI (`CI` set) it must be there.
fn validator(variable: &str, program: &str) -> Option<PathBuf> {
    let found = std::env::var_os(variable).map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run {program}: .ci/run installs it and sets {variable}"
        );
        eprintln!("skipped: {program} is not installed (.ci/run installs it)");
    }
    found
}

/// Runs a validator on a file; its verdict and what it said.
fn validate(validator: &Path, args: &[&str], file: &Path) -> (bool, String) {
    let output = std::process::Command::new(validator)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", validator.display()));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// `cfn-lint` (with the SAM translator) accepts the SAM template, and rejects a broken copy, which
/// shows that it transforms SAM rather than skipping it.
#[test]
fn the_sam_template_passes_cfn_lint() {
    let Some(linter) = validator("CFN_LINT", "cfn-lint") else {
        return;
    };
    let template = infra_dir().join("aws/template.yaml");
    let (ok, said) = validate(&linter, &[], &template);
    assert!(ok, "cfn-lint: {said}");
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("template.yaml");
    std::fs::write(
        &broken,
        read(&template).replace("Type: Schedule", "Type: Schedulee"),
    )
    .unwrap();
    let (ok, _) = validate(&linter, &[], &broken);
    assert!(
        !ok,
        "cfn-lint accepted an event type SAM does not have: is its SAM translator installed?"
    );
}

/// The Kubernetes manifests match Kubernetes' own schemas (strictly: no field it does not have),
/// and a copy missing a required field does not.
#[test]
fn the_k8s_manifests_pass_kubernetes_validate() {
    let Some(validator) = validator("KUBERNETES_VALIDATE", "kubernetes-validate") else {
        return;
    };
    let manifests = infra_dir().join("k8s/agentpool.yaml");
    let (ok, said) = validate(&validator, &["--strict"], &manifests);
    assert!(ok, "kubernetes-validate: {said}");
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("agentpool.yaml");
    let text = read(&manifests);
    assert!(text.contains("maxReplicas:"));
    std::fs::write(&broken, text.replace("maxReplicas:", "maxReplica:")).unwrap();
    let (ok, said) = validate(&validator, &["--strict"], &broken);
    assert!(
        !ok,
        "kubernetes-validate accepted an HPA without maxReplicas: {said}"
    );
}

/// The dashboard behind the shipped nginx on a port other than 80 (the browser's `Origin` names
/// the port), with real nginx and `infra/nginx.conf`: a login and a session's writes go through,
/// and neither `?key=` nor `?csrf=` reaches nginx's access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_behind_nginx_and_no_key_reaches_its_log() {
    use std::process::Stdio;
    use std::time::Duration;

    use agentpool_tests::{free_port, wait_until, TestPool};
    use reqwest::StatusCode;

    let t = TestPool::with(
        &[("POOL_MIN_IDLE", "0"), ("TRUSTED_PROXIES", "127.0.0.1")],
        &[],
    )
    .await;
    let api_port: u16 = t.base.rsplit(':').next().unwrap().parse().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("agentpool-dashboard-nginx-")
        .tempdir()
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // nginx's workers run as an unprivileged user when it starts as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = free_port();
    // Both replicas of the compose file are this one server.
    let conf = render_nginx_conf(
        &read(&infra_dir().join("nginx.conf")),
        &[
            ("127.0.0.1:3001".to_string(), api_port),
            ("127.0.0.1:3002".to_string(), api_port),
        ],
        port,
        dir.path(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let access = dir.path().join("access.log");
    let errors = dir.path().join("error.log");
    let _nginx = Terminated(
        std::process::Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "stderr", "-g"])
            .arg(format!(
                "daemon off; master_process on; pid {};",
                dir.path().join("nginx.pid").display()
            ))
            .stdin(Stdio::null())
            // `access_log /dev/stdout`, as in the container.
            .stdout(std::fs::File::create(&access).unwrap())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .expect("start nginx"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    wait_until(Duration::from_secs(30), || async {
        let said = std::fs::read_to_string(&errors).unwrap_or_default();
        assert!(
            !said.contains("[emerg]"),
            "nginx refused the configuration: {said}"
        );
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    // What a browser sends from a page at http://127.0.0.1:<port>.
    let login = http
        .post(format!("{base}/admin/login"))
        .header("origin", &base)
        .form(&[("key", t.key.as_str()), ("next", "/admin")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        login.status(),
        StatusCode::SEE_OTHER,
        "{:?}",
        login.text().await
    );
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = http
        .get(format!("{base}/admin"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = html
        .split_once("name=\"csrf-token\" content=\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .expect("the dashboard has a CSRF token")
        .to_string();
    let write = http
        .post(format!("{base}/api/pool/drain"))
        .header("cookie", &cookie)
        .header("origin", &base)
        .header("x-csrf-token", &csrf)
        .json(&serde_json::json!({"count": 1}))
        .send()
        .await
        .unwrap();
    let status = write.status();
    assert_eq!(status, StatusCode::OK, "{}", write.text().await.unwrap());

    // The SSE stream with its credentials in the query, as EventSource sends them.
    for query in [
        format!("count=1&key={}", t.key),
        format!("count=1&csrf={csrf}"),
    ] {
        let stream = http
            .get(format!("{base}/api/pool/replenish/stream?{query}"))
            .header("cookie", &cookie)
            .header("origin", &base)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        assert!(stream
            .text()
            .await
            .unwrap()
            .contains(r#""type":"complete""#));
    }
    wait_until(Duration::from_secs(10), || async {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .matches("/api/pool/replenish/stream")
            .count()
            >= 2
    })
    .await;
    let log = std::fs::read_to_string(&access).unwrap();
    for secret in [&t.key, &csrf] {
        if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
            panic!("a credential in nginx's access log: {line}");
        }
    }
}
