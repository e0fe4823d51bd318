//! The deployment files in `infra/` start the service as this build has it: each process they
//! declare runs a real command, sets only variables the code reads, to values start-up accepts
//! (a provider this build has), and is probed at `/healthz` where a probe is declared.
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

fn compose_processes(file: &str, text: &str) -> Vec<Process> {
    let image = the_image();
    let documents = yaml_documents(text);
    let compose = documents.first().expect("a compose document");
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .map(|(name, service)| {
            let is_postgres = service["image"]
                .as_str()
                .is_some_and(|image| image.starts_with("postgres"));
            let built_here = service["build"]["dockerfile"]
                .as_str()
                .is_some_and(|dockerfile| dockerfile.ends_with("infra/Dockerfile"));
            assert!(
                is_postgres || built_here,
                "{file}: service {name} runs neither Postgres nor the image infra/Dockerfile builds"
            );
            let mut env: Vec<(String, Option<String>)> = Vec::new();
            match &service["environment"] {
                Value::Object(map) => {
                    env.extend(map.iter().map(|(k, v)| (k.clone(), compose_value(v))))
                }
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
            let health_checks = match &service["healthcheck"]["test"] {
                Value::Null => Vec::new(),
                test => vec![test.to_string()],
            };
            let argv = if is_postgres {
                Vec::new()
            } else {
                env = [image.env.clone(), env].concat();
                effective_argv(
                    &image,
                    argv_of(service.get("entrypoint")),
                    argv_of(service.get("command")),
                )
            };
            Process {
                at: format!("{file}: service {name}"),
                argv,
                env,
                health_checks,
                is_postgres,
            }
        })
        .collect()
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
                env: image.env.iter().cloned().chain(env).collect(),
                health_checks,
                is_postgres: false,
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
    }]
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

fn processes_of(file: &str) -> Vec<Process> {
    let text = read(&infra_dir().join(file));
    let name = Path::new(file)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(file);
    if name == "Dockerfile" {
        dockerfile_processes(file, &text)
    } else if name == "railway.json" {
        railway_processes(file, &text)
    } else if name.starts_with("docker-compose") || name.starts_with("compose") {
        compose_processes(file, &text)
    } else if file.starts_with("k8s/") && (name.ends_with(".yaml") || name.ends_with(".yml")) {
        k8s_processes(file, &text)
    } else {
        panic!("infra/{file}: no check for this kind of file; add one to tests/tests/infra.rs")
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
/// provider they name is one this build can start.
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
        .filter_map(|(name, value)| Some((name.clone(), value.clone()?)))
        .collect();
    vars.push((
        "LOCAL_STATE_DIR".into(),
        scratch.join("agents").display().to_string(),
    ));
    let settings = Settings::from_vars(vars).map_err(|e| format!("{}: {e}", process.at))?;
    agentpool_core::providers::from_settings(&settings)
        .map(drop)
        .map_err(|e| format!("{}: {e}", process.at))
}

fn check_health_checks(process: &Process) -> Result<(), String> {
    if process.is_postgres {
        return Ok(());
    }
    match process
        .health_checks
        .iter()
        .find(|check| !check.contains("/healthz"))
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
    let files = infra_files();
    assert!(files.len() >= 4, "infra/ files: {files:?}");
    let mut problems = Vec::new();
    let mut runs_agentpool = 0;
    for file in &files {
        let processes = processes_of(file);
        assert!(!processes.is_empty(), "infra/{file} declares no process");
        for process in &processes {
            if !process.is_postgres {
                runs_agentpool += 1;
                problems.extend(check_command(process).err());
            }
            problems.extend(check_variables(process, &known).err());
            problems.extend(check_settings(process, scratch.path()).err());
            problems.extend(check_health_checks(process).err());
        }
    }
    assert!(
        runs_agentpool >= files.len(),
        "some file runs no agentpool process"
    );
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
    assert!(check_health_checks(&r).is_ok());

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
