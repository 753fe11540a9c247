//! What `drc-lab up` writes to `DIR/lab.json`: every process of the lab,
//! its addresses, files and credentials. Field names are a contract for
//! scripts: add, never rename or remove.

use std::path::PathBuf;

use drc_tls::TlsFiles;
use serde::{Deserialize, Serialize};

use super::netns;

/// One coordinator in `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    pub id: u64,
    pub region: String,
    /// host:port of its gRPC (admin) endpoint.
    pub endpoint: String,
    /// host:port where it takes Raft messages from its peers.
    #[serde(default)]
    pub raft_endpoint: String,
    /// host:port of its HTTP listener: /healthz, /readyz, /metrics
    /// (https when the lab has TLS; a viewer's certificate reads metrics).
    #[serde(default)]
    pub http_endpoint: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Its certificate (drc://lab/peer/ID) and key.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The JSON-lines file it appends the audit trail to.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
}

/// One database member in `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: String,
    pub cluster: String,
    /// "postgres" or "redis".
    pub kind: String,
    pub region: String,
    pub host: String,
    pub port: u16,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub agent_pid: u32,
    pub agent_config: PathBuf,
    pub agent_log: PathBuf,
    /// Its agent's certificate (drc://lab/agent/ID) and key.
    #[serde(default)]
    pub agent_tls: Option<TlsFiles>,
    /// host:port of its agent's HTTP listener: /healthz, /readyz, /metrics.
    #[serde(default)]
    pub agent_http_endpoint: String,
    /// Its agent starts and owns the database (`[supervise]`); `pid` is
    /// then 0: the server is the agent's child and dies with it.
    #[serde(default)]
    pub supervised: bool,
}

/// One S3-compatible server in `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct S3Info {
    pub region: String,
    /// Base URL, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub pid: u32,
    pub root: PathBuf,
    pub log: PathBuf,
}

/// A TCP forwarder (`drc-proxy`) in `lab.json`: one stable address per
/// cluster that follows the coordinators' `WatchPrimary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwarderInfo {
    pub cluster: String,
    pub host: String,
    pub port: u16,
    pub pid: u32,
    pub log: PathBuf,
    /// Its certificate (drc://lab/viewer/proxy-CLUSTER) and key.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// host:port of its HTTP listener: /healthz, /readyz, /metrics.
    #[serde(default)]
    pub http_endpoint: String,
}

/// The lab's certificates in `lab.json`: its CA, and client certificates
/// for drctl (`--ca --cert --key`, or `DRC_CA`, `DRC_CERT`, `DRC_KEY`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabTls {
    /// The CA certificate every component trusts.
    pub ca: PathBuf,
    /// Where the CA's key and every certificate are.
    pub dir: PathBuf,
    /// An on-call engineer: every command (drc://lab/operator/on-call).
    pub operator: TlsFiles,
    /// Read-only: status, watch, history, lists (drc://lab/viewer/dashboard).
    pub viewer: TlsFiles,
}

/// What `drc-lab up` writes to `DIR/lab.json`. Field names are a contract
/// for scripts: add, never rename or remove.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabInfo {
    pub dir: PathBuf,
    pub drctl: PathBuf,
    /// Comma-separated coordinator endpoints, for `DRC_ENDPOINTS`.
    pub endpoints: String,
    pub coordinators: Vec<CoordinatorInfo>,
    pub members: Vec<MemberInfo>,
    /// S3-compatible servers (s3s-fs), one per region, each with its own
    /// credentials and bucket.
    pub s3: Vec<S3Info>,
    /// One forwarder per cluster: clients connect here, not to a member.
    #[serde(default)]
    pub forwarders: Vec<ForwarderInfo>,
    /// The age key pair backups are encrypted to (identity: the private key
    /// file, given to every agent so that any may run recovery tests).
    #[serde(default)]
    pub backup: BackupKeys,
    /// The PostgreSQL cluster's `policy.synchronous_replicas` (0: asynchronous).
    #[serde(default)]
    pub synchronous_replicas: u32,
    /// "loopback" (every process on 127.0.0.1) or "netns" (every node in a
    /// network namespace of its own; see `net`).
    #[serde(default = "loopback")]
    pub mode: String,
    /// The namespaces, their addresses and the bridge (netns mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<netns::NetInfo>,
    /// The lab's CA and client certificates (absent in labs made before TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<LabTls>,
    /// With `--db-tls`: PostgreSQL serves TLS only to agents that check it
    /// (verify-full against this CA), and standbys read the replication
    /// password from `passfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_tls: Option<DbTlsInfo>,
    /// With `--prometheus`: a real Prometheus scraping every component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<super::prometheus::PrometheusInfo>,
}

pub(super) fn loopback() -> String {
    "loopback".into()
}

/// The lab's database TLS (`--db-tls`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DbTlsInfo {
    /// The CA that signed the database servers' certificate.
    pub ca: PathBuf,
    /// PostgreSQL's server certificate and key (every member's).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The libpq password file of the replication role.
    pub passfile: PathBuf,
}

/// The lab's backup encryption keys in `lab.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackupKeys {
    pub identity_file: PathBuf,
    pub recipient: String,
}
