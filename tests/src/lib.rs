//! Test harness: starts real drc binaries on loopback ports chosen at run
//! time, drives them with the real `drctl`, and cleans everything up when
//! dropped — also when a test panics.
//!
//! The binaries are taken from the Cargo target dir next to the test
//! executable (`target/debug`), or from `DRC_BIN_DIR`; `scripts/test` builds
//! them before running the tests.

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod bench;
pub mod http;
pub mod lab;
pub mod pki;

use anyhow::{anyhow, bail, Context as _};
use drc_tls::{Role, TlsFiles};
use serde_json::Value;

/// Directory holding the drc binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("DRC_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a drc binary; panics with the command to build it if missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} not found; build it first with `cargo build --workspace --bins`", p.display());
    p
}

/// A loopback port that was free a moment ago, and that this process has
/// not handed out before: the kernel may give a port just released to the
/// next `bind(0)`, and two nodes of one test would then share it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0");
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks for `period` that a property keeps holding: `check` answers
/// `None` when the state could not be read (a poll that failed),
/// `Some(Err(why))` when the property is broken. A window in which the
/// state could hardly be read proves nothing, so at least half of the polls,
/// and at least three, must have been answered.
pub fn holds_for(what: &str, period: Duration, mut check: impl FnMut() -> Option<Result<(), String>>) -> anyhow::Result<()> {
    let start = Instant::now();
    let (mut polls, mut answered) = (0u32, 0u32);
    while start.elapsed() < period {
        polls += 1;
        match check() {
            Some(Ok(())) => answered += 1,
            Some(Err(why)) => bail!("{what} broke after {:.1} s: {why}", start.elapsed().as_secs_f64()),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if answered < 3 || answered * 2 < polls {
        bail!("{what}: only {answered} of {polls} polls could read the state in {period:?}; nothing was proved");
    }
    Ok(())
}

/// Kills the child when the test process's spawning thread dies, so that a
/// test killed mid-run leaves no orphan behind.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Options of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub nodes: u64,
    pub snapshot_entries: u64,
    pub write_timeout: &'static str,
    pub tick_interval: &'static str,
    /// Plaintext and unauthenticated (`insecure = true`) instead of mutual TLS.
    pub insecure: bool,
    /// `raft.piece_bytes` (0: the default).
    pub piece_bytes: usize,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts { nodes: 3, snapshot_entries: 1000, write_timeout: "5s", tick_interval: "100ms", insecure: false, piece_bytes: 0 }
    }
}

/// How a client (drctl, a test) presents itself to the coordinators.
#[derive(Clone, Debug)]
pub enum Creds {
    Tls(TlsFiles),
    Insecure,
}

impl Creds {
    /// drctl's flags for these credentials.
    pub fn drctl_args(&self) -> Vec<std::ffi::OsString> {
        match self {
            Creds::Tls(files) => pki::drctl_args(files),
            Creds::Insecure => vec!["--insecure".into()],
        }
    }

    /// The same credentials for a Rust gRPC client.
    pub fn security(&self) -> anyhow::Result<drc_tls::Security> {
        Ok(match self {
            Creds::Tls(files) => drc_tls::Security::new(Some(files.clone()), false)?,
            Creds::Insecure => drc_tls::Security::Insecure,
        })
    }
}

/// One coordinator process.
pub struct Node {
    pub id: u64,
    pub address: String,
    /// The node's own Raft listener, if it has one.
    pub raft_address: Option<String>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The node's audit trail file (`audit_log`).
    pub audit_log: PathBuf,
    /// Its HTTP listener (`http_listen`): /healthz, /readyz, /metrics.
    pub http_address: String,
    child: Option<Child>,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The node's log output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A node's addresses in the configuration files.
struct Peer {
    id: u64,
    address: String,
    raft_address: Option<String>,
}

/// A coordinator cluster on loopback in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cluster_id: String,
    pub opts: ClusterOpts,
    pub nodes: BTreeMap<u64, Node>,
    /// The cluster's CA (none when insecure).
    pub pki: Option<pki::Pki>,
    /// An operator's credentials, which `drctl` and the helpers use.
    pub creds: Creds,
}

impl Cluster {
    /// Starts `opts.nodes` founding coordinators and waits for a leader.
    pub fn start(opts: ClusterOpts) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("drc-test-").tempdir()?;
        let cluster_id = format!("test-{}", dir.path().file_name().and_then(|n| n.to_str()).unwrap_or("x").trim_start_matches("drc-test-"));
        let (pki, creds) = if opts.insecure {
            (None, Creds::Insecure)
        } else {
            let pki = pki::Pki::create(&dir.path().join("pki"), &cluster_id)?;
            let operator = pki.issue(Role::Operator, "tester", &[])?;
            (Some(pki), Creds::Tls(operator))
        };
        let mut c = Cluster { dir, cluster_id, opts, nodes: BTreeMap::new(), pki, creds };
        // Founders serve Raft on a listener of their own (as production
        // deployments with many agents should); a joiner shares its listener.
        let peers: Vec<Peer> = (1..=c.opts.nodes)
            .map(|id| Peer { id, address: format!("127.0.0.1:{}", free_port()), raft_address: Some(format!("127.0.0.1:{}", free_port())) })
            .collect();
        for p in &peers {
            c.add_node_config(p, &peers, false)?;
        }
        for id in 1..=c.opts.nodes {
            c.spawn(id)?;
        }
        c.wait_leader(Duration::from_secs(30))?;
        Ok(c)
    }

    fn add_node_config(&mut self, me: &Peer, peers: &[Peer], join: bool) -> anyhow::Result<()> {
        let (id, address) = (me.id, me.address.as_str());
        let data_dir = self.dir.path().join(format!("node{id}"));
        let config = self.dir.path().join(format!("node{id}.toml"));
        let log = self.dir.path().join(format!("node{id}.log"));
        let audit_log = self.dir.path().join(format!("node{id}.audit.jsonl"));
        let mut text = format!(
            "cluster_id = {:?}\nnode_id = {id}\nlisten = {address:?}\ndata_dir = {:?}\njoin = {join}\naudit_log = {:?}\n",
            self.cluster_id,
            data_dir.display().to_string(),
            audit_log.display().to_string()
        );
        if let Some(raft) = &me.raft_address {
            text.push_str(&format!("raft_listen = {raft:?}\n"));
        }
        let http_address = format!("127.0.0.1:{}", free_port());
        text.push_str(&format!("http_listen = {http_address:?}\n"));
        for p in peers {
            text.push_str(&format!("\n[[peers]]\nid = {}\naddress = {:?}\n", p.id, p.address));
            if let Some(raft) = &p.raft_address {
                text.push_str(&format!("raft_address = {raft:?}\n"));
            }
        }
        text.push_str(&format!(
            "\n[raft]\ntick_interval = {:?}\nsnapshot_entries = {}\nwrite_timeout = {:?}\n",
            self.opts.tick_interval, self.opts.snapshot_entries, self.opts.write_timeout
        ));
        if self.opts.piece_bytes > 0 {
            text.push_str(&format!("piece_bytes = {}\n", self.opts.piece_bytes));
        }
        match &self.pki {
            Some(pki) => text.push_str(&pki::config_section(&pki.issue(Role::Peer, &id.to_string(), &["127.0.0.1"])?)),
            None => text = format!("insecure = true\n{text}"),
        }
        fs::write(&config, text)?;
        self.nodes.insert(
            id,
            Node {
                id,
                address: address.to_string(),
                raft_address: me.raft_address.clone(),
                data_dir,
                config,
                log,
                audit_log,
                http_address,
                child: None,
            },
        );
        Ok(())
    }

    /// Starts (or restarts) node `id` and waits until it accepts connections.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let log = fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let mut cmd = Command::new(bin("drc-coordinator"));
        cmd.arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", std::env::var("DRC_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        node.child = Some(cmd.spawn().context("spawning drc-coordinator")?);
        let address = node.address.clone();
        wait_for(&format!("node {id} to listen on {address}"), Duration::from_secs(20), || {
            let node = self.nodes.get_mut(&id)?;
            if !node.is_running() {
                return Some(Err(anyhow!("node {id} exited during start-up:\n{}", node.log_text())));
            }
            TcpStream::connect(&address).ok().map(|_| Ok(()))
        })?
    }

    /// Adds a new node started with `join = true` (not yet a member).
    pub fn spawn_joiner(&mut self, id: u64) -> anyhow::Result<String> {
        let address = format!("127.0.0.1:{}", free_port());
        let peers: Vec<Peer> =
            self.nodes.values().map(|n| Peer { id: n.id, address: n.address.clone(), raft_address: n.raft_address.clone() }).collect();
        self.add_node_config(&Peer { id, address: address.clone(), raft_address: None }, &peers, true)?;
        self.spawn(id)?;
        Ok(address)
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `id` and waits for it to exit; returns its exit status.
    pub fn terminate(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let mut child = self.nodes.get_mut(&id).and_then(|n| n.child.take())?;
        #[allow(unsafe_code)]
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let status = wait_for("coordinator to exit after SIGTERM", Duration::from_secs(15), || child.try_wait().ok().flatten());
        if status.is_err() {
            let _ = child.kill();
        }
        status.ok()
    }

    pub fn endpoints(&self) -> String {
        self.nodes.values().map(|n| n.address.clone()).collect::<Vec<_>>().join(",")
    }

    /// Runs drctl against every node's address (any reachable one answers).
    pub fn drctl(&self, args: &[&str]) -> Output {
        drctl(&self.endpoints(), &self.creds, args)
    }

    /// `drctl -o json ARGS` against one node; the parsed JSON on success.
    pub fn json_at(&self, id: u64, args: &[&str]) -> anyhow::Result<Value> {
        let addr = &self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?.address;
        json_output(drctl(addr, &self.creds, &[&["-o", "json"], args].concat()))
    }

    /// `drctl -o json ARGS` against all nodes.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        json_output(self.drctl(&[&["-o", "json"], args].concat()))
    }

    /// Waits until the running nodes agree on a leader; returns its id.
    pub fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        wait_for("a leader", timeout, || {
            let s = self.json(&["status"]).ok()?;
            let leader = s["leader_id"].as_u64()?;
            let nodes = s["nodes"].as_array()?;
            let is_leader = nodes.iter().any(|n| n["id"].as_u64() == Some(leader) && n["role"] == "leader");
            (leader != 0 && is_leader).then_some(leader)
        })
    }

    /// Applies a topology document; panics with drctl's output on failure.
    pub fn apply(&self, toml: &str) -> anyhow::Result<Value> {
        let path = self.dir.path().join(format!("topology-{}.toml", free_port()));
        fs::write(&path, toml)?;
        self.json(&["apply", "-f", path.to_str().unwrap_or_default()])
    }

    /// Waits until node `id` has applied at least `index`.
    pub fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("node {id} to apply index {index}"), timeout, || {
            let s = self.json_at(id, &["status"]).ok()?;
            let me = s["nodes"].as_array()?.iter().find(|n| n["id"].as_u64() == Some(id))?.clone();
            (me["applied_index"].as_u64()? >= index).then_some(())
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for node in self.nodes.values() {
                eprintln!("----- log of node {} -----\n{}", node.id, tail(&node.log_text(), 60));
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs drctl with `--endpoints endpoints` as `creds`.
pub fn drctl(endpoints: &str, creds: &Creds, args: &[&str]) -> Output {
    Command::new(bin("drctl"))
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--timeout")
        .arg("20s")
        .args(creds.drctl_args())
        .args(args)
        .env_remove("DRC_ENDPOINTS")
        .env_remove("DRC_CA")
        .env_remove("DRC_CERT")
        .env_remove("DRC_KEY")
        .env_remove("DRC_INSECURE")
        .output()
        .expect("run drctl")
}

/// Parses drctl's stdout as JSON, or returns its stderr as the error.
pub fn json_output(out: Output) -> anyhow::Result<Value> {
    if !out.status.success() {
        bail!("drctl failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("drctl printed no JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A small topology for tests that need no databases: one Redis cluster
/// `cache` of `redis-a` (region a) and `redis-b` (region b).
pub const CACHE_TOPOLOGY: &str = r#"
[regions.a]
[regions.b]
[clusters.cache]
kind = "redis"
[[members]]
id = "redis-a"
cluster = "cache"
region = "a"
address = "127.0.0.1:16379"
[[members]]
id = "redis-b"
cluster = "cache"
region = "b"
address = "127.0.0.1:16380"
"#;

/// An example three-region topology whose region `a` priority is `version`,
/// so that successive calls produce distinct writes.
pub fn example_topology(version: u32) -> String {
    format!(
        r#"
[regions.a]
priority = {version}
[regions.b]
priority = 2
[regions.c]
priority = 3

[clusters.n8n-pg]
kind = "postgres"
[clusters.n8n-pg.policy]
rpo_max_lag_bytes = 1048576
rpo_max_lag_time = "5s"
detection_window = "2s"
anti_flap_window = "5m"

[clusters.n8n-redis]
kind = "redis"

[[members]]
id = "pg-a"
cluster = "n8n-pg"
region = "a"
address = "127.0.0.1:15432"
[[members]]
id = "pg-b"
cluster = "n8n-pg"
region = "b"
address = "127.0.0.1:15433"
[[members]]
id = "pg-c"
cluster = "n8n-pg"
region = "c"
address = "127.0.0.1:15434"
[[members]]
id = "redis-a"
cluster = "n8n-redis"
region = "a"
address = "127.0.0.1:16379"
[[members]]
id = "redis-b"
cluster = "n8n-redis"
region = "b"
address = "127.0.0.1:16380"

[failover_groups.n8n]
clusters = ["n8n-pg", "n8n-redis"]
"#
    )
}

/// Path helper for messages.
pub fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The port of a host:port address.
pub fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("a port")
}

/// Runs one runbook block with bash (`set -euo pipefail`), drc's binaries
/// first on the PATH, drctl's endpoints and credentials in its environment
/// and `vars`; panics with the block and its output unless it succeeds.
/// Returns its stdout.
pub fn run_runbook_block(block: &str, endpoints: &str, creds: &Creds, vars: &[(&str, String)]) -> String {
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!("set -euo pipefail\n{block}")).env("PATH", path).env("DRC_ENDPOINTS", endpoints);
    match creds {
        Creds::Tls(f) => cmd.env("DRC_CA", &f.ca).env("DRC_CERT", &f.cert).env("DRC_KEY", &f.key),
        Creds::Insecure => cmd.env("DRC_INSECURE", "true"),
    };
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "runbook block failed:\n{block}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// The code blocks of `runbooks/<file>` fenced as ```` ```<tag> ````, in
/// order: what a test runs verbatim.
pub fn runbook_blocks(file: &str, tag: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut blocks = Vec::new();
    let mut inside: Option<String> = None;
    for line in text.lines() {
        match inside.as_mut() {
            Some(block) if line.starts_with("```") => {
                blocks.push(std::mem::take(block));
                inside = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None if line.strip_prefix("```") == Some(tag) => inside = Some(String::new()),
            None => {}
        }
    }
    blocks
}
