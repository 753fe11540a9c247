//! The local three-region lab: real PostgreSQL 15 and Redis members, an agent
//! per member and a coordinator per region, on loopback with ports chosen at
//! run time, or (`--netns`) each node in a network namespace of its own
//! where faults can drop packets ([`netns`]). `drc-lab up` and the
//! end-to-end tests share this code.
//!
//! Region `a` holds the primaries; `b` and `c` hold streaming replicas (with
//! replication slots for PostgreSQL). Every process is started in its own
//! session so that `drc-lab up` can return and leave the lab running;
//! [`Lab::down`] (and dropping an owned [`Lab`]) stops every process listed in
//! `lab.json` and leaves none behind.

mod dbtls;
pub mod delay;
mod info;
pub mod netcut;
pub mod netns;
pub mod postgres;
mod process;
pub mod prometheus;
pub mod redis;
mod report;
mod supervise;
pub mod writer;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use crate::pki::{self, Pki};
use crate::{bin, drctl, free_port, json_output, wait_for, Creds};
use drc_tls::Role;
pub use info::{BackupKeys, CoordinatorInfo, DbTlsInfo, ForwarderInfo, LabInfo, LabTls, MemberInfo, S3Info};
pub use process::{alive, kill_tree, signal, signal_tree, spawn_detached, stop_pid};

pub const REGIONS: [&str; 3] = ["a", "b", "c"];
pub const PG_CLUSTER: &str = "app-pg";
pub const REDIS_CLUSTER: &str = "app-redis";

/// The drc cluster id of every lab.
pub const DRC_CLUSTER: &str = "lab";

/// The table every recovery test of the lab's PostgreSQL counts.
pub const CHECK_TABLE: &str = "public.lab_orders";
/// A Redis key the lab sets, which the Redis recovery test's check reads.
pub const MARKER_KEY: &str = "lab:marker";
pub const MARKER_VALUE: &str = "drc-lab";

/// A running lab. Dropping it stops everything (unless [`Lab::detach`]ed).
pub struct Lab {
    pub info: LabInfo,
    owned: bool,
}

/// How a lab is set up.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The coordinators keep their leader out of the primaries' region
    /// (`failover.leader_placement`, on by default).
    pub leader_placement: bool,
    /// How many replicas each PostgreSQL commit waits for (0, the default:
    /// asynchronous replication).
    pub synchronous_replicas: u32,
    /// Every node in a network namespace of its own (root only).
    pub netns: bool,
    /// PostgreSQL with TLS: agents check the server (verify-full) and
    /// standbys stream over TLS, reading the replication password from a
    /// passfile.
    pub db_tls: bool,
    /// drc's own connections in plaintext (`insecure = true`), to measure
    /// what TLS costs; no CA, and `tls` absent from lab.json.
    pub insecure: bool,
    /// The coordinators write JSON log lines (`log_format = "json"`).
    pub json_logs: bool,
    /// A real Prometheus scrapes every component, with drc's rules.
    pub prometheus: bool,
    /// Every agent supervises its database: the lab makes the data and
    /// stops the servers, the agents start them (`[supervise]`).
    pub supervise: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            leader_placement: true,
            synchronous_replicas: 0,
            netns: false,
            db_tls: false,
            insecure: false,
            json_logs: false,
            prometheus: false,
            supervise: false,
        }
    }
}

/// A drc configuration with its certificate section, or, without one,
/// `insecure = true` (a top-level key: before every table).
fn with_tls(text: String, tls: Option<&drc_tls::TlsFiles>) -> String {
    match tls {
        Some(t) => text + &pki::config_section(t),
        None => format!("insecure = true\n{text}"),
    }
}

fn make_world_readable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl Lab {
    /// Brings the whole lab up in `dir` and returns once every member is
    /// healthy with the right role.
    pub fn up(dir: &Path) -> anyhow::Result<Lab> {
        Lab::up_with(dir, LabOptions::default())
    }

    pub fn up_with(dir: &Path, opts: LabOptions) -> anyhow::Result<Lab> {
        postgres::check_installed()?;
        redis::check_installed()?;
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        make_world_readable(&dir)?;
        // A lab that fails half-way still cleans up what it started.
        let mut lab = Lab {
            info: LabInfo {
                dir: dir.clone(),
                drctl: bin("drctl"),
                endpoints: String::new(),
                coordinators: Vec::new(),
                members: Vec::new(),
                s3: Vec::new(),
                forwarders: Vec::new(),
                backup: BackupKeys::default(),
                synchronous_replicas: opts.synchronous_replicas,
                mode: if opts.netns { "netns".into() } else { info::loopback() },
                net: None,
                tls: None,
                db_tls: None,
                prometheus: None,
            },
            owned: true,
        };
        if opts.netns {
            lab.info.net = Some(netns::NetInfo::create(&lab.info.dir)?);
            lab.write_info()?;
        }
        lab.make_backup_keys()?;
        if !opts.insecure {
            lab.make_certificates()?;
        }
        if opts.db_tls {
            lab.make_db_tls()?;
        }
        lab.write_info()?;
        lab.start_coordinators(&opts)?;
        lab.write_info()?;
        lab.start_s3()?;
        lab.write_info()?;
        lab.start_databases()?;
        lab.write_info()?;
        lab.apply_topology()?;
        if opts.supervise {
            lab.hand_servers_to_agents()?;
        }
        lab.start_agents()?;
        lab.write_info()?;
        lab.wait_healthy(Duration::from_secs(60))?;
        if opts.leader_placement {
            // Tests start with the leader where it stays: out of region a.
            lab.wait_leader_outside("a", Duration::from_secs(60))?;
        }
        lab.start_forwarders()?;
        lab.write_info()?;
        if opts.prometheus {
            lab.info.prometheus = Some(prometheus::start(&lab.info)?);
            lab.write_info()?;
        }
        Ok(lab)
    }

    /// Attaches to a lab described by `DIR/lab.json`.
    pub fn attach(dir: &Path) -> anyhow::Result<Lab> {
        let text = fs::read_to_string(dir.join("lab.json")).with_context(|| format!("no lab in {}", dir.display()))?;
        Ok(Lab { info: serde_json::from_str(&text)?, owned: false })
    }

    /// Leaves the lab running when this value is dropped.
    pub fn detach(mut self) -> LabInfo {
        self.owned = false;
        self.info.clone()
    }

    /// Where `node` ("coord-a", or a member id) listens: its namespace's
    /// address, or loopback.
    pub fn host(&self, node: &str) -> String {
        self.info.net.as_ref().and_then(|n| n.node(node).ok()).map_or_else(|| "127.0.0.1".to_string(), |n| n.address.clone())
    }

    /// `cmd`, to run on `node` (in its namespace, in netns mode).
    fn on(&self, node: &str, cmd: Command) -> anyhow::Result<Command> {
        match &self.info.net {
            Some(net) => net.command(node, &cmd),
            None => Ok(cmd),
        }
    }

    /// Applies a network fault (netns mode only).
    pub fn fault(&self, fault: &netns::Fault) -> anyhow::Result<()> {
        self.info.net.as_ref().ok_or_else(|| anyhow!("network faults need a lab started with --netns"))?.apply(fault)
    }

    /// Applies `fault` and removes every fault, each for `every`, until
    /// `duration` has passed; then heals. How many times it was applied.
    pub fn flap(&self, fault: &netns::Fault, every: Duration, duration: Duration) -> anyhow::Result<u32> {
        let end = std::time::Instant::now() + duration;
        let mut flaps = 0;
        while std::time::Instant::now() < end {
            self.fault(fault)?;
            flaps += 1;
            std::thread::sleep(every);
            self.heal()?;
            std::thread::sleep(every);
        }
        Ok(flaps)
    }

    /// Delays every connection between `region` and the rest of the lab by
    /// `one_way` each way, until the [`delay::Delay`] is dropped (netns
    /// mode only).
    pub fn delay(&self, region: &str, one_way: Duration) -> anyhow::Result<delay::Delay> {
        let net = self.info.net.as_ref().ok_or_else(|| anyhow!("network faults need a lab started with --netns"))?;
        let i = &self.info;
        let mut services = Vec::new();
        let mut add = |region: &str, address: &str| -> anyhow::Result<()> {
            let address = address.trim_start_matches("http://").trim_end_matches('/');
            services.push(delay::Service {
                region: region.to_string(),
                address: address.parse().with_context(|| format!("a lab address {address:?}"))?,
            });
            Ok(())
        };
        for c in &i.coordinators {
            add(&c.region, &c.endpoint)?;
            if !c.raft_endpoint.is_empty() {
                add(&c.region, &c.raft_endpoint)?;
            }
        }
        for m in &i.members {
            add(&m.region, &format!("{}:{}", m.host, m.port))?;
        }
        for s in &i.s3 {
            add(&s.region, &s.endpoint)?;
        }
        delay::Delay::start(net, &services, region, one_way)
    }

    /// Removes every network fault.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.info.net.as_ref().ok_or_else(|| anyhow!("network faults need a lab started with --netns"))?.heal()
    }

    /// The coordinators' client ports (what an agent's stream connects to).
    pub fn coordinator_ports(&self) -> Vec<u16> {
        self.info.coordinators.iter().filter_map(|c| c.endpoint.rsplit_once(':').and_then(|(_, p)| p.parse().ok())).collect()
    }

    pub fn write_info(&self) -> anyhow::Result<()> {
        let tmp = self.info.dir.join("lab.json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(&self.info)?)?;
        fs::rename(&tmp, self.info.dir.join("lab.json"))?;
        Ok(())
    }

    fn start_coordinators(&mut self, opts: &LabOptions) -> anyhow::Result<()> {
        let hosts: Vec<String> = REGIONS.iter().map(|r| self.host(&format!("coord-{r}"))).collect();
        let addrs: Vec<String> = hosts.iter().map(|h| format!("{h}:{}", free_port())).collect();
        let raft: Vec<String> = hosts.iter().map(|h| format!("{h}:{}", free_port())).collect();
        let http: Vec<String> = hosts.iter().map(|h| format!("{h}:{}", free_port())).collect();
        for (i, region) in REGIONS.iter().enumerate() {
            let id = i as u64 + 1;
            let data_dir = self.info.dir.join(format!("coordinator-{region}"));
            let config = self.info.dir.join(format!("coordinator-{region}.toml"));
            let log = self.info.dir.join(format!("coordinator-{region}.log"));
            let audit_log = self.info.dir.join(format!("coordinator-{region}.audit.jsonl"));
            let mut text = format!(
                "cluster_id = \"lab\"\nnode_id = {id}\nlisten = {:?}\nraft_listen = {:?}\nhttp_listen = {:?}\ndata_dir = {:?}\naudit_log = {:?}\n",
                addrs[i],
                raft[i],
                http[i],
                data_dir.display().to_string(),
                audit_log.display().to_string()
            );
            if opts.json_logs {
                text.push_str("log_format = \"json\"\n");
            }
            // Every promotion appends the new endpoint to hooks.log.
            let hooks = self.info.dir.join("hooks.log");
            let line = format!("echo \"$DRC_CLUSTER $DRC_EPOCH $DRC_PRIMARY $DRC_PRIMARY_ADDRESS $DRC_KIND\" >> {}", hooks.display());
            text.push_str(&format!(
                "[failover]\nhook = [\"sh\", \"-c\", {line:?}]\nhook_timeout = \"5s\"\nleader_placement = {}\n",
                opts.leader_placement
            ));
            for (j, ((a, r), region)) in addrs.iter().zip(&raft).zip(REGIONS).enumerate() {
                text.push_str(&format!("[[peers]]\nid = {}\naddress = {a:?}\nraft_address = {r:?}\nregion = {region:?}\n", j + 1));
            }
            let tls = match &self.info.tls {
                Some(_) => Some(self.pki()?.issue(Role::Peer, &id.to_string(), &[&hosts[i], "127.0.0.1"])?),
                None => None,
            };
            let text = with_tls(text, tls.as_ref());
            fs::write(&config, text)?;
            let mut cmd = Command::new(bin("drc-coordinator"));
            cmd.arg("--config").arg(&config);
            let pid = spawn_detached(&mut self.on(&format!("coord-{region}"), cmd)?, &log)?;
            self.info.coordinators.push(CoordinatorInfo {
                id,
                region: region.to_string(),
                endpoint: addrs[i].clone(),
                raft_endpoint: raft[i].clone(),
                http_endpoint: http[i].clone(),
                pid,
                data_dir,
                config,
                log,
                tls,
                audit_log: Some(audit_log),
            });
        }
        self.info.endpoints = addrs.join(",");
        wait_for("a coordinator leader", Duration::from_secs(30), || {
            let s = self.status().ok()?;
            (s["leader_id"].as_u64()? != 0).then_some(())
        })
    }

    fn start_s3(&mut self) -> anyhow::Result<()> {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, region) in REGIONS.iter().enumerate() {
            let root = self.info.dir.join(format!("s3-{region}"));
            let log = self.info.dir.join(format!("s3-{region}.log"));
            fs::create_dir_all(&root)?;
            let port = free_port();
            let access_key = format!("lab-{region}");
            let secret_key = format!("{:032x}", seed.wrapping_mul(6364136223846793005).wrapping_add(i as u128 * 1442695040888963407));
            let bucket = format!("drc-backups-{region}");
            let host = self.host(&format!("coord-{region}"));
            let mut cmd = Command::new(bin("drc-s3-server"));
            cmd.args(["--host", &host, "--port", &port.to_string(), "--bucket", &bucket, "--root"]).arg(&root);
            cmd.env("DRC_S3_ACCESS_KEY", &access_key).env("DRC_S3_SECRET_KEY", &secret_key);
            let pid = spawn_detached(&mut self.on(&format!("coord-{region}"), cmd)?, &log)?;
            let address = format!("{host}:{port}");
            self.info.s3.push(S3Info {
                region: region.to_string(),
                endpoint: format!("http://{address}"),
                access_key,
                secret_key,
                bucket,
                pid,
                root,
                log,
            });
            wait_for(&format!("the S3 server of region {region}"), Duration::from_secs(20), || {
                std::net::TcpStream::connect(&address).ok()
            })?;
        }
        Ok(())
    }

    /// A CA and the client certificates of an operator and a viewer.
    fn make_certificates(&mut self) -> anyhow::Result<()> {
        let dir = self.info.dir.join("pki");
        let pki = Pki::create(&dir, DRC_CLUSTER)?;
        let operator = pki.issue(Role::Operator, "on-call", &[])?;
        let viewer = pki.issue(Role::Viewer, "dashboard", &[])?;
        self.info.tls = Some(LabTls { ca: pki.ca(), dir, operator, viewer });
        Ok(())
    }

    /// The lab's CA.
    pub fn pki(&self) -> anyhow::Result<Pki> {
        let tls = self.info.tls.as_ref().ok_or_else(|| anyhow!("this lab has no CA (made before TLS)"))?;
        Pki::open(&tls.dir, DRC_CLUSTER)
    }

    /// The operator's credentials, as drctl and the helpers use them.
    pub fn creds(&self) -> Creds {
        match &self.info.tls {
            Some(t) => Creds::Tls(t.operator.clone()),
            None => Creds::Insecure,
        }
    }

    /// An age key pair with `age-keygen` (Debian's age package).
    fn make_backup_keys(&mut self) -> anyhow::Result<()> {
        let identity = self.info.dir.join("backup.key");
        let out = Command::new("age-keygen").arg("-o").arg(&identity).output().context("running age-keygen (Debian package age)")?;
        anyhow::ensure!(out.status.success(), "age-keygen: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        let recipient = text
            .split_whitespace()
            .find(|w| w.starts_with("age1"))
            .ok_or_else(|| anyhow!("age-keygen printed no public key: {text}"))?
            .to_string();
        self.info.backup = BackupKeys { identity_file: identity, recipient };
        Ok(())
    }

    fn start_databases(&mut self) -> anyhow::Result<()> {
        let pg = postgres::start_cluster(&self.info.dir, PG_CLUSTER, self.info.net.as_ref(), self.info.db_tls.as_ref())?;
        self.info.members.extend(pg);
        let rd = redis::start_cluster(&self.info.dir, REDIS_CLUSTER, self.info.net.as_ref())?;
        self.info.members.extend(rd);
        // The table recovery tests count (check_tables in the topology),
        // and the key their Redis check reads.
        if let Some(primary) = self.info.members.iter().find(|m| m.kind == "postgres" && m.region == REGIONS[0]) {
            let sql = format!("CREATE TABLE IF NOT EXISTS {CHECK_TABLE} (id bigserial PRIMARY KEY, item text)");
            postgres::psql_at(&primary.host, primary.port, &sql)?;
        }
        if let Some(primary) = self.info.members.iter().find(|m| m.kind == "redis" && m.region == REGIONS[0]) {
            redis::cli_at(&primary.host, primary.port, &["SET", MARKER_KEY, MARKER_VALUE])?;
        }
        Ok(())
    }

    /// The topology document of the lab.
    pub fn topology(&self) -> String {
        let mut t = String::new();
        for (i, r) in REGIONS.iter().enumerate() {
            t.push_str(&format!("[regions.{r}]\npriority = {}\n", i + 1));
        }
        for r in REGIONS {
            t.push_str(&format!("[destinations.s3-{r}]\nregion = \"{r}\"\n"));
        }
        let destinations = REGIONS.iter().map(|r| format!("\"s3-{r}\"")).collect::<Vec<_>>().join(", ");
        for (name, kind) in [(PG_CLUSTER, "postgres"), (REDIS_CLUSTER, "redis")] {
            t.push_str(&format!(
                "[clusters.{name}]\nkind = \"{kind}\"\n[clusters.{name}.policy]\nrpo_max_lag_bytes = 16777216\nrpo_max_lag_time = \"10s\"\nanti_flap_window = \"5m\"\n"
            ));
            if kind == "postgres" && self.info.synchronous_replicas > 0 {
                t.push_str(&format!("synchronous_replicas = {}\n", self.info.synchronous_replicas));
            }
            let checks = if kind == "postgres" { format!("\"{CHECK_TABLE}\"") } else { String::new() };
            t.push_str(&format!(
                "[clusters.{name}.backup]\ndestinations = [{destinations}]\nrecipients = [{:?}]\ncheck_tables = [{checks}]\nkeep_last = 3\n",
                self.info.backup.recipient
            ));
            // An operator's own check on the restored instance.
            let (query, expect) = match kind {
                "postgres" => (format!("SELECT to_regclass('{CHECK_TABLE}') IS NOT NULL"), "t".to_string()),
                _ => (format!("GET {MARKER_KEY}"), MARKER_VALUE.to_string()),
            };
            t.push_str(&format!("[[clusters.{name}.backup.checks]]\nname = \"lab schema\"\nquery = {query:?}\nexpect = {expect:?}\n"));
        }
        for m in &self.info.members {
            t.push_str(&format!(
                "[[members]]\nid = {:?}\ncluster = {:?}\nregion = {:?}\naddress = \"{}:{}\"\n",
                m.id, m.cluster, m.region, m.host, m.port
            ));
        }
        t.push_str(&format!("[failover_groups.app]\nclusters = [\"{PG_CLUSTER}\", \"{REDIS_CLUSTER}\"]\n"));
        t
    }

    fn apply_topology(&self) -> anyhow::Result<()> {
        let path = self.info.dir.join("topology.toml");
        fs::write(&path, self.topology())?;
        json_output(drctl(&self.info.endpoints, &self.creds(), &["-o", "json", "apply", "-f", &path.display().to_string()]))?;
        Ok(())
    }

    /// Writes an agent config for `m` and starts the agent.
    pub fn start_agent(&mut self, index: usize) -> anyhow::Result<()> {
        self.start_agent_via(index, None)
    }

    /// Restarts member `id`'s agent so that it reaches its database through
    /// `via` (host:port, e.g. a [`netcut::CuttableLink`]) instead of directly.
    /// Starts coordinator `id` again (after a SIGKILL) with its own config,
    /// log and data dir, and records its new pid in `lab.json`.
    pub fn restart_coordinator(&mut self, id: u64) -> anyhow::Result<()> {
        let c = self.info.coordinators.iter_mut().find(|c| c.id == id).ok_or_else(|| anyhow!("no coordinator {id}"))?;
        stop_pid(c.pid, Duration::from_secs(3));
        let log = self.info.dir.join(format!("coordinator-{}.log", c.region));
        let mut cmd = Command::new(bin("drc-coordinator"));
        cmd.arg("--config").arg(&c.config);
        let node = format!("coord-{}", c.region);
        let mut cmd = match &self.info.net {
            Some(net) => net.command(&node, &cmd)?,
            None => cmd,
        };
        let pid = spawn_detached(&mut cmd, &log)?;
        if let Some(c) = self.info.coordinators.iter_mut().find(|c| c.id == id) {
            c.pid = pid;
        }
        self.write_info()
    }

    pub fn restart_agent_via(&mut self, id: &str, via: &str) -> anyhow::Result<()> {
        let index = self.info.members.iter().position(|m| m.id == id).ok_or_else(|| anyhow!("no member {id}"))?;
        stop_pid(self.info.members[index].agent_pid, Duration::from_secs(3));
        self.start_agent_via(index, Some(via))?;
        self.write_info()
    }

    fn start_agent_via(&mut self, index: usize, via: Option<&str>) -> anyhow::Result<()> {
        let m = &self.info.members[index];
        let direct = format!("{}:{}", m.host, m.port);
        let (host, port) = via.unwrap_or(&direct).rsplit_once(':').ok_or_else(|| anyhow!("bad address"))?;
        let config = self.info.dir.join(format!("agent-{}.toml", m.id));
        let log = self.info.dir.join(format!("agent-{}.log", m.id));
        let endpoints = self.info.coordinators.iter().map(|c| format!("{:?}", c.endpoint)).collect::<Vec<_>>().join(", ");
        let user = if m.kind == "postgres" { "user = \"postgres\"\n" } else { "" };
        // How the agent stops, starts and rewinds its PostgreSQL (failover).
        let control = if m.kind == "postgres" {
            let sock = self.info.dir.join(format!("{}.sock", m.id));
            let mut c = format!(
                "[postgres]\ndata_dir = {:?}\nrun_as = \"postgres\"\nstart_options = {:?}\nlog_file = {:?}\nreplication_user = \"postgres\"\n",
                m.data_dir.display().to_string(),
                format!("-p {} -k {}", m.port, sock.display()),
                m.log.display().to_string()
            );
            if let Some(t) = &self.info.db_tls {
                c = format!(
                    "[connection.tls]\nca = {:?}\n{c}replication_passfile = {:?}\n",
                    t.ca.display().to_string(),
                    t.passfile.display().to_string()
                );
            }
            c
        } else {
            String::new()
        };
        // The agent starts the server itself: PostgreSQL from [postgres],
        // Redis with the lab's own command line.
        // The cluster's member in region a is its first primary.
        let first = format!("first_primary = \"{}-{}\"\n", if m.kind == "postgres" { "pg" } else { "redis" }, REGIONS[0]);
        let control = match (m.supervised, m.kind.as_str()) {
            (false, _) => control,
            (true, "postgres") => format!("{control}[supervise]\n{first}"),
            (true, _) => format!(
                "{control}[supervise]\n{first}log_file = {:?}\ncommand = [\"redis-server\", \"--bind\", {:?}, \"--save\", \"\", \"--appendonly\", \"no\", \"--dir\", {:?}, \"--repl-diskless-sync-delay\", \"0\", \"--protected-mode\", \"no\"]\n",
                m.log.display().to_string(),
                m.host,
                m.data_dir.display().to_string()
            ),
        };
        // Every region's bucket, each with its own credentials (from files).
        let mut storage = String::new();
        for s in &self.info.s3 {
            let secret = self.info.dir.join(format!("s3-{}.secret", s.region));
            fs::write(&secret, &s.secret_key)?;
            storage.push_str(&format!(
                "[[destinations]]\nname = \"s3-{}\"\nendpoint = {:?}\nbucket = {:?}\naccess_key = {:?}\nsecret_key_file = {:?}\n",
                s.region,
                s.endpoint,
                s.bucket,
                s.access_key,
                secret.display().to_string()
            ));
        }
        storage.push_str(&format!(
            "[backup]\nidentity_file = {:?}\nscratch_dir = {:?}\nprogress_interval = \"250ms\"\n",
            self.info.backup.identity_file.display().to_string(),
            self.info.dir.join("scratch").display().to_string()
        ));
        // The WAL archiver's directory, one per member.
        storage.push_str(&format!(
            "[archive]\ndir = {:?}\nupload_timeout = \"5s\"\n",
            self.info.dir.join(format!("{}.wal", m.id)).display().to_string()
        ));
        // Kept across restarts, like the certificate.
        let http = if m.agent_http_endpoint.is_empty() { format!("{}:{}", m.host, free_port()) } else { m.agent_http_endpoint.clone() };
        let text = format!(
            "member_id = {:?}\ncluster = {:?}\nregion = {:?}\nkind = {:?}\nendpoints = [{endpoints}]\nprobe_interval = \"200ms\"\nprobe_timeout = \"1s\"\nstate_dir = {:?}\nhttp_listen = {http:?}\n[connection]\nhost = {:?}\nport = {}\n{user}{control}{storage}",
            m.id,
            m.cluster,
            m.region,
            m.kind,
            self.info.dir.display().to_string(),
            host,
            port
        );
        // The certificate is issued once and kept across restarts.
        let tls = match (&m.agent_tls, &self.info.tls) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(_)) => Some(self.pki()?.issue(Role::Agent, &m.id, &[&m.host, "127.0.0.1"])?),
            (None, None) => None,
        };
        let text = with_tls(text, tls.as_ref());
        fs::write(&config, text)?;
        let mut cmd = Command::new(bin("drc-agent"));
        cmd.arg("--config").arg(&config);
        let pid = spawn_detached(&mut self.on(&m.id, cmd)?, &log)?;
        let m = &mut self.info.members[index];
        m.agent_pid = pid;
        m.agent_config = config;
        m.agent_log = log;
        m.agent_tls = tls;
        m.agent_http_endpoint = http;
        Ok(())
    }

    fn start_forwarders(&mut self) -> anyhow::Result<()> {
        for cluster in [PG_CLUSTER, REDIS_CLUSTER] {
            let port = free_port();
            let http = format!("127.0.0.1:{}", free_port());
            let log = self.info.dir.join(format!("forwarder-{cluster}.log"));
            let tls = match &self.info.tls {
                Some(_) => Some(self.pki()?.issue(Role::Viewer, &format!("proxy-{cluster}"), &["127.0.0.1"])?),
                None => None,
            };
            let mut cmd = Command::new(bin("drc-proxy"));
            cmd.args(["--cluster", cluster, "--listen", &format!("127.0.0.1:{port}"), "--endpoints", &self.info.endpoints]);
            cmd.args(["--http-listen", &http]);
            match &tls {
                Some(t) => cmd.args(pki::drctl_args(t)),
                None => cmd.arg("--insecure"),
            };
            let pid = spawn_detached(&mut cmd, &log)?;
            self.info.forwarders.push(ForwarderInfo {
                cluster: cluster.into(),
                host: "127.0.0.1".into(),
                port,
                pid,
                log: log.clone(),
                tls,
                http_endpoint: http,
            });
            wait_for(&format!("the forwarder of {cluster} to know the primary"), Duration::from_secs(20), || {
                fs::read_to_string(&log).ok().filter(|t| t.contains("primary is")).map(|_| ())
            })?;
        }
        Ok(())
    }

    /// The forwarder of `cluster` as host:port.
    pub fn forwarder(&self, cluster: &str) -> anyhow::Result<String> {
        let f = self.info.forwarders.iter().find(|f| f.cluster == cluster).ok_or_else(|| anyhow!("no forwarder for {cluster}"))?;
        Ok(format!("{}:{}", f.host, f.port))
    }

    fn start_agents(&mut self) -> anyhow::Result<()> {
        for i in 0..self.info.members.len() {
            self.start_agent(i)?;
        }
        Ok(())
    }

    /// `drctl -o json status` against the lab.
    /// Runs `drctl -o json ARGS` against the lab; its JSON, or its error output.
    pub fn drctl_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        json_output(drctl(&self.info.endpoints, &self.creds(), &all))
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        json_output(drctl(&self.info.endpoints, &self.creds(), &["-o", "json", "status"]))
    }

    /// The region of the coordinator leader, if there is one.
    pub fn leader_region(&self) -> Option<String> {
        let leader = self.status().ok()?["leader_id"].as_u64()?;
        self.info.coordinators.iter().find(|c| c.id == leader).map(|c| c.region.clone())
    }

    /// Waits until the coordinator leader runs outside `region`.
    pub fn wait_leader_outside(&self, region: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("the coordinator leader outside region {region}"), timeout, || {
            self.leader_region().filter(|r| r != region).map(|_| ())
        })
    }

    /// Member health rows by member id, from the leader.
    pub fn members_health(&self) -> anyhow::Result<std::collections::BTreeMap<String, Value>> {
        let s = self.status()?;
        let mut out = std::collections::BTreeMap::new();
        for c in s["clusters"].as_array().into_iter().flatten() {
            for m in c["members"].as_array().into_iter().flatten() {
                out.insert(m["id"].as_str().unwrap_or_default().to_string(), m.clone());
            }
        }
        Ok(out)
    }

    /// Cluster `name` as `drctl status` shows it, if it can be read.
    pub fn cluster(&self, name: &str) -> Option<Value> {
        self.status().ok()?["clusters"].as_array()?.iter().find(|c| c["name"] == name).cloned()
    }

    /// The epoch of cluster `name`, if it can be read.
    pub fn epoch(&self, name: &str) -> Option<u64> {
        self.cluster(name)?["epoch"].as_u64()
    }

    /// Waits until every member is healthy with the role the lab gave it.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut last = String::new();
        let r = wait_for("every member healthy with its role", timeout, || {
            let health = self.members_health().ok()?;
            let ok = self.info.members.iter().all(|m| {
                let want = if m.region == "a" { "primary" } else { "replica" };
                health.get(&m.id).is_some_and(|h| h["healthy"] == true && h["role"] == want)
            });
            last = serde_json::to_string(&health).unwrap_or_default();
            ok.then_some(())
        });
        r.map_err(|e| anyhow!("{e}; last health: {last}"))
    }

    pub fn member(&self, id: &str) -> anyhow::Result<&MemberInfo> {
        self.info.members.iter().find(|m| m.id == id).ok_or_else(|| anyhow!("no member {id}"))
    }

    /// Stops every process of the lab. Idempotent.
    pub fn down(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.info.prometheus {
            stop_pid(p.pid, Duration::from_secs(5));
        }
        for f in &self.info.forwarders {
            stop_pid(f.pid, Duration::from_secs(3));
        }
        for m in &self.info.members {
            stop_pid(m.agent_pid, Duration::from_secs(3));
        }
        for c in &self.info.coordinators {
            stop_pid(c.pid, Duration::from_secs(5));
        }
        for s in &self.info.s3 {
            stop_pid(s.pid, Duration::from_secs(3));
        }
        let mut errors = Vec::new();
        for m in &self.info.members {
            let r = match m.kind.as_str() {
                "postgres" => postgres::stop(m),
                _ => {
                    stop_pid(m.pid, Duration::from_secs(3));
                    Ok(())
                }
            };
            if let Err(e) = r {
                errors.push(format!("{}: {e}", m.id));
            }
        }
        let left: Vec<u32> = self.pids().into_iter().filter(|p| alive(*p)).collect();
        if !left.is_empty() {
            errors.push(format!("processes still running: {left:?}"));
        }
        if let Some(net) = &self.info.net {
            net.destroy(&self.info.dir);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("drc-lab down: {}", errors.join("; "))
        }
    }

    /// Every pid the lab started.
    pub fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.info.coordinators.iter().map(|c| c.pid).collect();
        for m in &self.info.members {
            p.push(m.agent_pid);
            p.push(m.pid);
        }
        p.extend(self.info.s3.iter().map(|s| s.pid));
        p.extend(self.info.forwarders.iter().map(|f| f.pid));
        p.extend(self.info.prometheus.iter().map(|f| f.pid));
        p.retain(|p| *p != 0);
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_failure();
        }
        self.keep_logs();
        if self.owned {
            if let Err(e) = self.down() {
                eprintln!("{e}");
            }
        }
    }
}
