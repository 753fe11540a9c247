//! The agent as its database's supervisor (`[supervise]` in its
//! configuration): it starts PostgreSQL or Redis itself, as its own child,
//! and only in the role [`rule::boot`] allows, so that a restart of the
//! agent, its container or its machine cannot undo a fence. The child
//! dies with the agent (parent-death signal), as it would with a
//! container; an exit the agent did not ask for is a crash, and the
//! server is started again by the same rule.
//!
//! This module starts, watches and stops the process; what role it may
//! take is the actor's business (`actions::supervised`).

pub mod redis;
pub mod rule;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::{AgentConfig, Kind};

/// How long a start may take before it counts as failed (as `pg_ctl -t 60`).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Supervisor {
    cfg: Arc<AgentConfig>,
    running: Mutex<Option<Running>>,
    /// The server should be running: an exit while set is a crash.
    wanted: AtomicBool,
    /// Bumped at every exit of a server this supervisor started.
    exits: watch::Sender<u64>,
    /// A Redis server runs on no TCP port yet (see [`redis`]).
    closed: AtomicBool,
}

/// The supervisor's own (the agent's `actions` imports this module).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Running {
    pid: u32,
    /// `Some(status)` once the process has exited (and was reaped).
    done: watch::Receiver<Option<String>>,
}

impl Supervisor {
    pub fn new(cfg: Arc<AgentConfig>) -> Supervisor {
        Supervisor {
            cfg,
            running: Mutex::new(None),
            wanted: AtomicBool::new(false),
            exits: watch::channel(0).0,
            closed: AtomicBool::new(false),
        }
    }

    /// Exits of servers this supervisor started, counted.
    pub fn exits(&self) -> watch::Receiver<u64> {
        self.exits.subscribe()
    }

    /// Whether the server this supervisor started still runs.
    pub fn is_running(&self) -> bool {
        lock(&self.running).as_ref().is_some_and(|r| r.done.borrow().is_none())
    }

    /// Whether the server should be running: an exit now is a crash.
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }

    /// The caller is about to stop the server (a fence, a demotion, a
    /// rewind): its exit is not a crash.
    pub fn release(&self) {
        self.wanted.store(false, Ordering::SeqCst);
    }

    /// Whether the Redis server this supervisor started listens on no TCP
    /// port yet.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) && self.is_running()
    }

    /// Opens the Redis server's port: clients may reach it from now on.
    pub async fn open_port(&self, c: &mut ::redis::aio::MultiplexedConnection) -> Result<(), String> {
        if !self.closed() {
            return Ok(());
        }
        redis::open_port(c, &self.cfg.connection).await?;
        self.closed.store(false, Ordering::SeqCst);
        tracing::info!(port = self.cfg.connection.port, "the Redis server's port is open");
        Ok(())
    }

    /// The Redis server's socket, which the agent always talks through
    /// (see [`redis`]).
    pub fn redis_socket(&self) -> PathBuf {
        self.run_dir().join("redis.sock")
    }

    fn run_dir(&self) -> PathBuf {
        let state = self.cfg.state_dir.clone().unwrap_or_else(std::env::temp_dir);
        state.join(format!("{}.run", self.cfg.member_id))
    }

    /// Starts the server, unless the one this supervisor started runs, and
    /// waits until it accepts connections (PostgreSQL: `ready` or `standby`
    /// in its pid file; Redis: PING over its socket). `extra` is appended to
    /// the command (Redis: no port until its role is set).
    pub async fn start(&self, extra: &[String]) -> Result<(), String> {
        if self.is_running() {
            self.wanted.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let user = self.user()?;
        let mut cmd = match self.cfg.kind {
            Kind::Postgres => self.postgres_command()?,
            Kind::Redis => self.redis_command(extra, user)?,
        };
        cmd.stdin(std::process::Stdio::null());
        if let Some(path) = self.log_file() {
            let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p);
            let out = open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let err = out.try_clone().map_err(|e| format!("{}: {e}", path.display()))?;
            cmd.stdout(out).stderr(err);
        }
        // Only what a server needs from the agent's environment: never its
        // passwords or keys.
        cmd.env_clear();
        for var in ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        die_with_agent(&mut cmd);
        let mut child = tokio::process::Command::from(cmd).spawn().map_err(|e| format!("cannot start the {}: {e}", self.what()))?;
        let pid = child.id().ok_or("the server exited at once")?;
        let (tx, done) = watch::channel(None);
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = tx.send(Some(status));
            exits.send_modify(|n| *n += 1);
        });
        *lock(&self.running) = Some(Running { pid, done: done.clone() });
        self.closed.store(self.cfg.kind == Kind::Redis, Ordering::SeqCst);
        self.wanted.store(true, Ordering::SeqCst);
        tracing::info!(pid, "{} started", self.what());
        let ready = self.wait_ready(pid, done).await;
        if let Err(e) = &ready {
            self.release();
            self.kill().await;
            tracing::error!(error = %e, "{} did not come up", self.what());
        }
        ready
    }

    async fn wait_ready(&self, pid: u32, mut done: watch::Receiver<Option<String>>) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = done.borrow().clone() {
                return Err(format!("the {} exited while starting ({status}){}", self.what(), self.log_hint()));
            }
            let ready = match self.cfg.kind {
                Kind::Postgres => self.cfg.postgres.as_ref().is_some_and(|pg| postgres_ready(&pg.data_dir, pid)),
                Kind::Redis => redis::answers(&self.redis_socket(), &self.cfg.connection).await,
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the {} did not accept connections within {START_TIMEOUT:?}{}", self.what(), self.log_hint()));
            }
            // Woken early by an exit.
            let _ = tokio::time::timeout(Duration::from_millis(50), done.changed()).await;
        }
    }

    /// Stops the server for good (the agent is shutting down): PostgreSQL's
    /// fast shutdown or Redis's SIGTERM, then SIGKILL after `stop_timeout`.
    pub async fn stop(&self) {
        self.release();
        let Some((pid, mut done)) = lock(&self.running).as_ref().map(|r| (r.pid, r.done.clone())) else { return };
        if done.borrow().is_some() {
            return;
        }
        // SIGINT is PostgreSQL's fast shutdown; SIGTERM saves and exits Redis.
        let signal = match self.cfg.kind {
            Kind::Postgres => rustix::process::Signal::INT,
            Kind::Redis => rustix::process::Signal::TERM,
        };
        send(pid, signal);
        let timeout = self.cfg.supervise.as_ref().map(|s| s.stop_timeout).unwrap_or(Duration::from_secs(30));
        if tokio::time::timeout(timeout, done.wait_for(|d| d.is_some())).await.is_err() {
            tracing::warn!(pid, "the {} did not stop within {timeout:?}: killing it", self.what());
            self.kill().await;
        }
        tracing::info!("{} stopped", self.what());
    }

    /// SIGKILLs the server (and, for PostgreSQL, every process it started).
    async fn kill(&self) {
        let Some((pid, mut done)) = lock(&self.running).as_ref().map(|r| (r.pid, r.done.clone())) else { return };
        match (self.cfg.kind, self.cfg.postgres.as_ref()) {
            (Kind::Postgres, Some(pg)) => {
                if let Err(e) = crate::process::kill_postmaster(&pg.data_dir, Duration::from_secs(5)).await {
                    tracing::error!(error = %e, "cannot kill the postmaster");
                }
            }
            _ => send(pid, rustix::process::Signal::KILL),
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| d.is_some())).await;
    }

    fn what(&self) -> &'static str {
        match self.cfg.kind {
            Kind::Postgres => "PostgreSQL server",
            Kind::Redis => "Redis server",
        }
    }

    fn log_file(&self) -> Option<PathBuf> {
        let own = self.cfg.supervise.as_ref().and_then(|s| s.log_file.clone());
        own.or_else(|| self.cfg.postgres.as_ref().and_then(|pg| pg.log_file.clone()).filter(|_| self.cfg.kind == Kind::Postgres))
    }

    fn log_hint(&self) -> String {
        self.log_file().map(|p| format!("; see {}", p.display())).unwrap_or_default()
    }

    /// The OS user the server runs as, if not the agent's own.
    fn user(&self) -> Result<Option<(u32, u32)>, String> {
        let name =
            self.cfg.supervise.as_ref().and_then(|s| s.run_as.clone()).unwrap_or_else(|| match (self.cfg.kind, &self.cfg.postgres) {
                (Kind::Postgres, Some(pg)) => pg.run_as.clone(),
                _ => String::new(),
            });
        if name.is_empty() {
            return Ok(None);
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = std::process::Command::new("id").args([flag, &name]).output().map_err(|e| format!("cannot run id: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim().parse().map_err(|_| format!("supervise.run_as: no user {name:?} on this machine"))
        };
        Ok(Some((id("-u")?, id("-g")?)))
    }

    /// `postgres -D <data_dir> <start_options>`, through the shell as
    /// `pg_ctl` runs it (the options are shell words).
    fn postgres_command(&self) -> Result<std::process::Command, String> {
        let pg = self.cfg.postgres.as_ref().ok_or("supervise: PostgreSQL needs a [postgres] section")?;
        let quote = |p: &Path| format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"));
        let line = format!("exec {} -D {} {}", quote(&pg.bin_dir.join("postgres")), quote(&pg.data_dir), pg.start_options);
        let mut c = std::process::Command::new("/bin/sh");
        c.args(["-c", &line]);
        Ok(c)
    }

    /// The configured command, listening on no TCP port and on a socket in
    /// a directory only its user can enter.
    fn redis_command(&self, extra: &[String], user: Option<(u32, u32)>) -> Result<std::process::Command, String> {
        let command = self.cfg.supervise.as_ref().map(|s| s.command.clone()).unwrap_or_default();
        let (program, args) = command.split_first().ok_or("supervise.command: Redis needs the server's command")?;
        let dir = self.run_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if let Some((uid, gid)) = user {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            rustix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let _ = std::fs::remove_file(self.redis_socket());
        let mut c = std::process::Command::new(program);
        c.args(args).args(["--daemonize", "no", "--unixsocket"]).arg(self.redis_socket()).args(["--unixsocketperm", "700"]).args(extra);
        Ok(c)
    }
}

/// PostgreSQL's readiness as `pg_ctl -w` reads it: the pid file names our
/// process and says `ready` (a primary) or `standby` (a hot standby).
fn postgres_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else { return false };
    let lines: Vec<&str> = text.lines().collect();
    lines.first().and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid)
        && matches!(lines.get(7).map(|s| s.trim()), Some("ready" | "standby"))
}

fn send(pid: u32, signal: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        // Gone already (ESRCH) is fine.
        let _ = rustix::process::kill_process(p, signal);
    }
}

/// The server gets SIGKILL when the agent dies, however it dies, as every
/// process of a container does when its main process exits. Also its own
/// process group, so that a terminal's Ctrl-C reaches the agent only (it
/// then stops the server properly).
fn die_with_agent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent. It runs after the change of user (which would
    // clear it) and survives exec. It follows the spawning thread, a
    // runtime worker that lives as long as the agent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).map_err(Into::into));
    }
}
