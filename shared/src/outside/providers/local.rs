//! The local provider: each instance is an `agentpool stub-agent` process on a free loopback port.
//!
//! Processes are detached (own process group) so that they outlive the replica that started them,
//! as a Railway service outlives the replica that created it. Every replica on the host sees the
//! same fleet through the state directory: one `<name>.json` record per process, written by the
//! agent itself as soon as it listens, so that an agent whose starter died at once is still found
//! (and, without a row, deleted as an orphan).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{CreateSpec, Created, Provider, ResourceRef};
use crate::config::{LocalSettings, ProviderKind};
use crate::domain::{ObservedResource, ResourceStatus};
use crate::error::{Error, Result};
use crate::progress::StepStatus;

const KIND: &str = "local";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    pid: i32,
    url: String,
}

/// Written by `agentpool stub-agent --record <path>` once it listens.
pub fn write_record(path: &Path, name: &str, url: &str) -> std::io::Result<()> {
    let record = Record {
        name: name.to_string(),
        pid: std::process::id() as i32,
        url: url.to_string(),
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&record)?)?;
    std::fs::rename(&tmp, path)
}

pub struct LocalProvider {
    state_dir: PathBuf,
    agent_bin: PathBuf,
    /// `STUB_*` settings and `RUNTIME_PROTOCOL` of this process, passed on to the agents it
    /// starts, so they speak what the pool speaks (and nothing else: an agent never sees the
    /// pool's own secrets).
    stub_env: Vec<(String, String)>,
    /// Whether a used agent is restarted clean rather than destroyed ([`Provider::recycle`]).
    recycle: bool,
}

impl LocalProvider {
    pub fn from_settings(settings: &LocalSettings) -> Result<Self> {
        let state_dir = settings
            .local_state_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("agentpool-local"));
        let agent_bin = match &settings.local_agent_bin {
            Some(bin) => bin.clone(),
            None => default_agent_bin()?,
        };
        let stub_env = std::env::vars()
            .filter(|(k, _)| k.starts_with("STUB_") || k == "RUST_LOG" || k == "RUNTIME_PROTOCOL")
            .collect();
        let mut provider = Self::new(state_dir, agent_bin, stub_env)?;
        provider.recycle = settings.local_recycle;
        Ok(provider)
    }

    /// Offers recycling (see `LOCAL_RECYCLE`).
    pub fn recycling(mut self) -> Self {
        self.recycle = true;
        self
    }

    pub fn new(
        state_dir: PathBuf,
        agent_bin: PathBuf,
        stub_env: Vec<(String, String)>,
    ) -> Result<Self> {
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            Error::io(
                format!("creating local state dir {}", state_dir.display()),
                e,
            )
        })?;
        Ok(Self {
            state_dir,
            agent_bin,
            stub_env,
            recycle: false,
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.json"))
    }

    /// The variables an agent was started with, kept (mode 600) to start it again clean when it
    /// is recycled: the local "golden checkpoint".
    fn env_path(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.env"))
    }

    fn keep_env(&self, spec: &CreateSpec) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.env_path(&spec.name);
        let bytes = serde_json::to_vec(&spec.env)
            .map_err(|e| Error::provider(KIND, format!("encoding env: {e}")))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        file.write_all(&bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Stops an agent's process (SIGTERM, then SIGKILL after a grace) if it runs.
    async fn stop(&self, record: &Record) -> Result<()> {
        if is_alive(record)? {
            let pid = Pid::from_raw(record.pid);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while is_alive(record)? && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if is_alive(record)? {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        Ok(())
    }

    /// The record of `name`: `None` only if there is none. A record that cannot be read is an
    /// error, never "no agent": an agent taken for gone would be replaced and its process leaked.
    fn read_record(&self, name: &str) -> Result<Option<Record>> {
        read_record_at(&self.record_path(name))
    }

    fn records(&self) -> Result<Vec<Record>> {
        let entries = std::fs::read_dir(&self.state_dir)
            .map_err(|e| Error::io(format!("reading {}", self.state_dir.display()), e))?;
        let mut records = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io(format!("reading {}", self.state_dir.display()), e))?
                .path();
            if path.extension().is_some_and(|ext| ext == "json") {
                // Removed since the directory was read: destroyed, explicitly.
                records.extend(read_record_at(&path)?);
            }
        }
        Ok(records)
    }

    /// Stops every agent this state directory knows of. Used by `agentpool dev` on shutdown.
    pub async fn destroy_all(&self) -> Result<usize> {
        let records = self.records()?;
        let count = records.len();
        for record in records {
            self.destroy(&ResourceRef {
                name: record.name,
                resource_id: None,
                details: serde_json::Value::Null,
            })
            .await?;
        }
        Ok(count)
    }

    /// Kills every agent this state directory knows of at once, without waiting. For teardown
    /// paths that cannot wait (a test's `Drop`).
    pub fn kill_all(&self) {
        for record in self.records().unwrap_or_default() {
            if is_alive(&record).unwrap_or(false) {
                let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
            }
        }
    }

    /// The pid of a live agent, for tests that kill one behind the pool's back.
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.read_record(name)
            .ok()
            .flatten()
            .filter(|record| is_alive(record).unwrap_or(false))
            .map(|record| record.pid)
    }

    async fn spawn(&self, spec: &CreateSpec) -> Result<Record> {
        let log = std::fs::File::create(self.state_dir.join(format!("{}.log", spec.name)))
            .map_err(|e| Error::io("creating agent log", e))?;
        let mut command = tokio::process::Command::new(&self.agent_bin);
        command
            .args([
                "stub-agent",
                "--name",
                &spec.name,
                "--port",
                "0",
                "--record",
            ])
            .arg(self.record_path(&spec.name))
            .env_clear()
            .envs(self.stub_env.iter().map(|(k, v)| (k, v)))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the pool does not reach the fleet.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|e| {
            Error::provider(KIND, format!("starting {}: {e}", self.agent_bin.display()))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| Error::provider(KIND, "agent exited at once"))? as i32;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::provider(KIND, "agent stdout not captured"))?;
        let mut first_line = String::new();
        let read = tokio::time::timeout(
            START_TIMEOUT,
            BufReader::new(stdout).read_line(&mut first_line),
        )
        .await;
        let listening = matches!(read, Ok(Ok(_))) && first_line.starts_with("LISTENING ");
        if !listening {
            let _ = child.start_kill();
            return Err(Error::provider(
                KIND,
                format!("agent {} did not report its address", spec.name),
            ));
        }
        // The handle is dropped; tokio reaps the process when it exits.
        drop(child);
        // The agent wrote its record before announcing itself.
        self.read_record(&spec.name)?
            .filter(|record| record.pid == pid)
            .ok_or_else(|| Error::provider(KIND, format!("agent {} left no record", spec.name)))
    }
}

fn default_agent_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating current executable", e))?;
    if exe.file_stem().is_some_and(|stem| stem == "agentpool") {
        return Ok(exe);
    }
    // agentpool-scheduler is installed next to agentpool.
    Ok(exe.with_file_name("agentpool"))
}

fn read_record_at(path: &Path) -> Result<Option<Record>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    // Records are written whole (write, then rename), so a record that does not parse is damage
    // to look at, not an agent to forget.
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::io(
            format!("parsing {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

/// Alive, not a zombie, and still the agent we started (pids get reused). A process that does not
/// exist is `false`; a `/proc` that cannot be read is an error.
fn is_alive(record: &Record) -> Result<bool> {
    let proc_dir = PathBuf::from(format!("/proc/{}", record.pid));
    let read = |file: &str| match std::fs::read(proc_dir.join(file)) {
        Ok(bytes) => Ok(Some(bytes)),
        // The process is gone (ESRCH shows when it exits while being read).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
            Ok(None)
        }
        Err(e) => Err(Error::io(format!("reading /proc/{}/{file}", record.pid), e)),
    };
    let Some(stat) = read("stat")? else {
        return Ok(false);
    };
    let stat = String::from_utf8_lossy(&stat);
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return Ok(false);
    }
    Ok(read("cmdline")?.is_some_and(|cmdline| {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.contains(&b"stub-agent".as_slice()) && args.contains(&record.name.as_bytes())
    }))
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        spec.progress
            .step(KIND, StepStatus::Active, &format!("starting {}", spec.name));
        let existing = match self.read_record(&spec.name)? {
            Some(record) if is_alive(&record)? => Some(record),
            _ => None,
        };
        if self.recycle {
            self.keep_env(spec)?;
        }
        let record = match existing {
            Some(record) => record,
            None => self.spawn(spec).await?,
        };
        spec.progress.step(KIND, StepStatus::Ok, "started");
        Ok(Created {
            resource_id: record.name.clone(),
            url: record.url,
            details: serde_json::json!({ "pid": record.pid }),
        })
    }

    async fn destroy(&self, resource: &ResourceRef) -> Result<()> {
        let Some(record) = self.read_record(&resource.name)? else {
            return Ok(());
        };
        self.stop(&record).await?;
        for path in [
            self.record_path(&resource.name),
            self.state_dir.join(format!("{}.log", resource.name)),
            self.env_path(&resource.name),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        Ok(())
    }

    fn can_recycle(&self) -> bool {
        self.recycle
    }

    async fn probe(&self, resource: &ResourceRef) -> Option<Result<serde_json::Value>> {
        Some((|| {
            let record = self.read_record(&resource.name)?;
            let alive = match &record {
                Some(record) => is_alive(record)?,
                None => false,
            };
            Ok(serde_json::json!({
                "record": record.as_ref().map(|r| serde_json::json!({"pid": r.pid, "url": r.url})),
                "processAlive": alive,
                "envKept": self.env_path(&resource.name).exists(),
            }))
        })())
    }

    async fn checkpoint(&self, _resource: &ResourceRef) -> Option<Result<serde_json::Value>> {
        // The kept variables are the checkpoint: a restart from them is clean.
        self.recycle
            .then(|| Ok(serde_json::json!({"golden": "clean start"})))
    }

    async fn recycle(
        &self,
        resource: &ResourceRef,
        replace: &[(String, String)],
    ) -> Option<Result<Created>> {
        if !self.recycle {
            return None;
        }
        Some(
            async {
                let path = self.env_path(&resource.name);
                let bytes = std::fs::read(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let mut env: Vec<(String, String)> = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::provider(KIND, format!("kept env unreadable: {e}")))?;
                super::replace_vars(&mut env, replace);
                if let Some(record) = self.read_record(&resource.name)? {
                    self.stop(&record).await?;
                }
                let spec = CreateSpec {
                    name: resource.name.clone(),
                    env,
                    progress: std::sync::Arc::new(crate::progress::Unwatched),
                };
                self.keep_env(&spec)?;
                let record = self.spawn(&spec).await?;
                Ok(Created {
                    resource_id: record.name.clone(),
                    url: record.url,
                    details: serde_json::json!({ "pid": record.pid, "golden": "clean start" }),
                })
            }
            .await,
        )
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObservedResource>> {
        let mut listed = Vec::new();
        for record in self.records()? {
            if record.name.starts_with(prefix) && is_alive(&record)? {
                listed.push(ObservedResource {
                    resource_id: record.name.clone(),
                    name: record.name,
                    status: ResourceStatus::Running,
                });
            }
        }
        Ok(listed)
    }
}
