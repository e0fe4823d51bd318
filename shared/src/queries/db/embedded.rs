//! A throwaway Postgres server from the installed server binaries, for `agentpool dev` and tests.
//!
//! `initdb` refuses to run as root, so when we are root the cluster is created and run as the
//! `postgres` system user. The server is started from a thread that lives exactly as long as the
//! server, with a parent-death signal, so it never outlives the process that started it.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};

use crate::error::{Error, Result};

const START_ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct EmbeddedPostgres {
    bin: PathBuf,
    root: PathBuf,
    user: Option<User>,
    data_dir: PathBuf,
    pid: Pid,
    port: u16,
    exited: mpsc::Receiver<ExitStatus>,
}

fn err(message: impl Into<String>) -> Error {
    Error::io("embedded postgres", std::io::Error::other(message.into()))
}

/// The directory holding `initdb` and `postgres`: `POSTGRES_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else whatever `PATH` has.
pub fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("POSTGRES_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .ok_or_else(|| {
            err("no PostgreSQL server binaries found (install `postgresql`, or set POSTGRES_BIN_DIR)")
        })
}

/// Who runs the server: us, or the `postgres` user when we are root.
fn server_user() -> Result<Option<User>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    User::from_name("postgres")
        .map_err(|e| err(format!("looking up the postgres user: {e}")))?
        .ok_or_else(|| err("running as root and there is no `postgres` user to run the server as"))
        .map(Some)
}

fn as_user(command: &mut Command, user: &Option<User>) {
    if let Some(user) = user {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
}

fn chown_tree(path: &Path, user: &Option<User>) -> Result<()> {
    if let Some(user) = user {
        nix::unistd::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| err(format!("chown {}: {e}", path.display())))?;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("finding a free port", e))?;
    Ok(listener
        .local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

impl EmbeddedPostgres {
    /// Creates a cluster in `root` (which must exist and be empty of a previous cluster) and starts
    /// it on a free loopback port. Blocking: call it from `spawn_blocking` in async code.
    pub fn start(root: &Path) -> Result<Self> {
        let bin = find_bin_dir()?;
        let user = server_user()?;
        let data_dir = root.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io("creating data dir", e))?;
        if user.is_some() {
            // The postgres user must be able to reach the data dir through its parents.
            let mut dir = Some(root);
            while let Some(d) = dir {
                if d.starts_with(std::env::temp_dir()) && d != std::env::temp_dir() {
                    let mut perms = std::fs::metadata(d)
                        .map_err(|e| Error::io("reading permissions", e))?
                        .permissions();
                    perms.set_mode(perms.mode() | 0o711);
                    std::fs::set_permissions(d, perms)
                        .map_err(|e| Error::io("setting permissions", e))?;
                }
                dir = d.parent();
            }
        }
        chown_tree(root, &user)?;
        chown_tree(&data_dir, &user)?;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("setting data dir permissions", e))?;

        let log_path = root.join("initdb.log");
        let log = File::create(&log_path).map_err(|e| Error::io("creating initdb log", e))?;
        chown_tree(&log_path, &user)?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::io("initdb log", e))?)
            .stderr(log);
        as_user(&mut initdb, &user);
        let status = initdb
            .status()
            .map_err(|e| Error::io(format!("running {}", bin.join("initdb").display()), e))?;
        if !status.success() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(err(format!("initdb failed ({status}): {log}")));
        }

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::launch(&bin, root, &data_dir, &user, free_port()?) {
                Ok(server) => return Ok(server),
                // Most likely another process took the port between our probe and the bind.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| err("could not start")))
    }

    fn launch(
        bin: &Path,
        root: &Path,
        data_dir: &Path,
        user: &Option<User>,
        port: u16,
    ) -> Result<Self> {
        let log_path = root.join("postgres.log");
        let log = File::create(&log_path).map_err(|e| Error::io("creating postgres log", e))?;
        chown_tree(&log_path, user)?;
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(data_dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(data_dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=128MB",
                // Throwaway data: durability buys nothing here.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::io("postgres log", e))?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal is ours to handle, in order.
            .process_group(0);
        as_user(&mut command, user);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGINT)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
            });
        }

        let (started_tx, started_rx) = mpsc::channel();
        let (exited_tx, exited_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("postgres-{port}"))
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = started_tx.send(Ok(child.id()));
                    if let Ok(status) = child.wait() {
                        let _ = exited_tx.send(status);
                    }
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::io("spawning postgres keeper thread", e))?;
        let pid = started_rx
            .recv()
            .map_err(|_| err("postgres keeper thread died"))?
            .map_err(|e| Error::io(format!("starting {}", bin.join("postgres").display()), e))?;
        let server = Self {
            bin: bin.to_path_buf(),
            root: root.to_path_buf(),
            user: user.clone(),
            data_dir: data_dir.to_path_buf(),
            pid: Pid::from_raw(pid as i32),
            port,
            exited: exited_rx,
        };
        server.wait_ready(&log_path)?;
        Ok(server)
    }

    fn wait_ready(&self, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(status) = self.exited.try_recv() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                return Err(err(format!("postgres exited ({status}): {log}")));
            }
            // The server writes "ready" into postmaster.pid once it accepts connections.
            let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid"));
            if pid_file.is_ok_and(|text| text.lines().any(|line| line.trim() == "ready")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = kill(self.pid, Signal::SIGKILL);
                return Err(err("postgres did not become ready in time"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// URL of a database on this server (trust authentication, loopback only).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server and starts it again on the same data and port, as an operator's restart
    /// would. Clients see their connections dropped and must reconnect.
    pub fn restart(self) -> Result<Self> {
        let (bin, root, user, data_dir, port) = (
            self.bin.clone(),
            self.root.clone(),
            self.user.clone(),
            self.data_dir.clone(),
            self.port,
        );
        self.stop()?;
        Self::launch(&bin, &root, &data_dir, &user, port)
    }

    /// Fast shutdown (disconnects clients), then waits for the server to exit.
    pub fn stop(self) -> Result<()> {
        let _ = kill(self.pid, Signal::SIGINT);
        match self.exited.recv_timeout(STOP_TIMEOUT) {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = self.exited.recv_timeout(STOP_TIMEOUT);
                Err(err("postgres did not stop in time and was killed"))
            }
        }
    }
}

/// Creates `name` on the server at `admin_url` unless it exists.
pub async fn create_database(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // Identifiers cannot be bound; the name is quoted and its quotes doubled.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}
