//! drctl's command line: every command and its flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "drctl", version, about = "Drive drc, the multi-region disaster-recovery coordinator")]
pub struct Cli {
    /// Coordinator addresses, comma-separated (host:port or http://host:port); any reachable one is used.
    #[arg(long, env = "DRC_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:7400", global = true)]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// How long to wait for an answer.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// The CA certificate(s), PEM, that signed the coordinators' certificates.
    #[arg(long, env = "DRC_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Your client certificate, PEM: it names you (drc://CLUSTER/operator/NAME or .../viewer/NAME).
    #[arg(long, env = "DRC_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// The private key of --cert, PEM.
    #[arg(long, env = "DRC_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Talk plaintext, to coordinators configured with insecure = true.
    #[arg(long, env = "DRC_INSECURE", global = true)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// How to reach the coordinators: the client certificate, or plaintext
    /// when asked for.
    pub fn security(&self) -> anyhow::Result<drc_tls::Security> {
        let files = drc_tls::files_from_flags(self.ca.as_deref(), self.cert.as_deref(), self.key.as_deref())?;
        drc_tls::Security::new(files, self.insecure).map_err(|e| match e {
            drc_tls::SecurityError::Unconfigured => anyhow::anyhow!(
                "no client certificate: give --ca, --cert and --key (or DRC_CA, DRC_CERT, DRC_KEY), or --insecure for coordinators configured with insecure = true"
            ),
            other => anyhow::anyhow!("{other}"),
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every coordinator's role and Raft indexes, member health and lag, and a topology summary.
    Status {
        /// Refresh in place, like `watch drctl status`, until interrupted.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        every: std::time::Duration,
    },
    /// Stream health changes (members turning healthy or not, roles, primaries) as they happen.
    Watch,
    /// Validate a topology file and make it the replicated topology.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The replicated topology.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// The coordinator nodes (Raft membership).
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Unplanned failover: fence the primary, promote the best (or the named) replica.
    Failover {
        #[arg(long)]
        cluster: String,
        /// The member to promote; default: the best candidate.
        #[arg(long)]
        to: Option<String>,
        /// Promote even beyond the RPO budget (recorded in the history).
        #[arg(long)]
        force: bool,
    },
    /// Move every primary out of a region (switchover if healthy, failover if down); failover groups land together.
    FailoverRegion {
        #[arg(long)]
        from: String,
        /// The region to move to; default: the best one for each cluster.
        #[arg(long)]
        to: Option<String>,
        /// Promote even beyond the RPO budget (recorded in the history).
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: the candidate catches up, then takes over; no acknowledged write is lost.
    Switchover {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Stop automatic failover of a cluster (or of every cluster) for maintenance.
    Pause {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Let automatic failover happen again.
    Resume {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Lift a cluster's anti-flap block after a failover.
    ClearBlock {
        #[arg(long)]
        cluster: String,
    },
    /// Every failover decision, newest first, with its evidence and steps.
    History {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// The audit trail: every state-changing request, who made it, through
    /// which coordinator, and its outcome; newest first.
    Audit {
        #[arg(long)]
        cluster: Option<String>,
        /// Only entries since then: a time (RFC 3339, e.g. 2026-12-06T17:00:00Z)
        /// or a duration before now (e.g. 2h).
        #[arg(long, value_parser = parse_since)]
        since: Option<u64>,
        /// At most this many, the newest.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Cross-region backups: take one, list the catalog, show one.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore a backup into a scratch instance, check it, measure RTO / RPO.
    RecoveryTest {
        #[command(subcommand)]
        command: RecoveryTestCommand,
    },
    /// Restore a PostgreSQL cluster to a point in time (a base backup plus the archived WAL) into a
    /// new data directory on an agent's host, and leave it running there, apart from the cluster;
    /// `restore list` and `restore show ID` read the restores done.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Restore {
        #[command(subcommand)]
        command: Option<RestoreCommand>,
        #[command(flatten)]
        run: RestoreRun,
    },
    /// Cron schedules of backups and recovery tests (UTC; 5 fields, or 6 with seconds first).
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Every schedule with its last and next occurrence.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Set a cluster's schedules; "off" removes one.
    Set {
        #[arg(long)]
        cluster: String,
        /// e.g. "0 3 * * *" (daily at 03:00 UTC)
        #[arg(long)]
        backup: Option<String>,
        /// e.g. "0 5 * * 0" (Sundays at 05:00 UTC)
        #[arg(long)]
        recovery_test: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Take a backup now (from a healthy replica, into a bucket in another region) and wait for it.
    Run {
        #[arg(long)]
        cluster: String,
        /// A destination by name; default: the cluster's first outside the source's region.
        #[arg(long)]
        destination: Option<String>,
        /// Answer once started instead of waiting for the end.
        #[arg(long)]
        no_wait: bool,
    },
    /// The backup catalog, newest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One backup with its manifest.
    Show { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum RecoveryTestCommand {
    /// Restore the newest (or the named) backup on an agent outside the primary's region, and wait for the result.
    Run {
        #[arg(long)]
        cluster: String,
        #[arg(long, conflicts_with = "random_point")]
        backup: Option<u64>,
        /// Replay the archived WAL to a random position between the oldest backup and the end of the
        /// archive (from the newest backup before it), instead of to the end.
        #[arg(long)]
        random_point: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// Recovery tests, newest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One recovery test with its checks.
    Show { id: u64 },
}

#[derive(clap::Args, Debug)]
pub struct RestoreRun {
    /// The PostgreSQL cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// To the end of the archived WAL.
    #[arg(long, conflicts_with_all = ["to_time", "to_lsn"])]
    pub latest: bool,
    /// To the last commit at or before this time: RFC 3339 (2026-12-07T01:02:03.25Z) or as
    /// PostgreSQL prints it (2026-12-07 01:02:03.250000+00).
    #[arg(long, conflicts_with = "to_lsn", value_parser = parse_time_us)]
    pub to_time: Option<i64>,
    /// To this WAL position (e.g. 0/5000060), inclusive.
    #[arg(long)]
    pub to_lsn: Option<drc_model::wal::Lsn>,
    /// latest (through every failover), current (the base backup's) or a timeline id.
    #[arg(long, default_value = "latest")]
    pub timeline: drc_model::job::Timeline,
    /// The member whose agent restores, on its host.
    #[arg(long)]
    pub on: Option<String>,
    /// The new data directory on that host: absolute, missing or empty.
    #[arg(long)]
    pub dir: Option<String>,
    /// The port the restored server listens on (127.0.0.1); default: a free one.
    #[arg(long)]
    pub port: Option<u16>,
    /// Answer once started instead of waiting for the end.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum RestoreCommand {
    /// Restores, newest first.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One restore and the point it reached.
    Show { id: u64 },
}

/// A time as µs since the Unix epoch: RFC 3339, or PostgreSQL's
/// `YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]`.
pub fn parse_time_us(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|t| t.timestamp_micros())
        .map_err(|_| format!("{s:?} is not a time: give RFC 3339 (2026-12-07T01:02:03.25Z) or 2026-12-07 01:02:03.25+00"))
}

#[derive(Subcommand, Debug)]
pub enum TopologyCommand {
    /// Print the topology (TOML that `drctl apply` accepts; JSON with -o json).
    Get,
}

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// List the coordinator nodes.
    List,
    /// Add a coordinator node (started with --join) to the Raft group.
    Add {
        #[arg(long)]
        id: u64,
        /// host:port the new node listens on.
        #[arg(long)]
        address: String,
        /// host:port of its separate Raft listener, if it has one (raft_listen).
        #[arg(long)]
        raft_address: Option<String>,
    },
    /// Remove a coordinator node from the Raft group.
    Remove {
        #[arg(long)]
        id: u64,
    },
    /// Hand Raft leadership to node ID (e.g. before maintenance of the
    /// leader's region); returns once it leads.
    Lead {
        #[arg(long)]
        id: u64,
    },
}

/// `--since`: an RFC 3339 time or a duration before now, as Unix milliseconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago =
                humantime::parse_duration(s).map_err(|_| format!("{s:?} is neither a time (2026-12-06T17:00:00Z) nor a duration (2h)"))?;
            std::time::SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{s:?} reaches before 1970"))?
        }
    };
    Ok(at.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{s:?} is before 1970"))?.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_time_reads_as_rfc_3339_or_as_postgresql_prints_it() {
        assert_eq!(parse_time_us("2026-12-06T23:33:20.123456Z"), Ok(1_796_600_000_123_456));
        assert_eq!(parse_time_us("2026-12-06 23:33:20.123456+00"), Ok(1_796_600_000_123_456));
        assert_eq!(parse_time_us("2026-12-07 00:33:20+01:00"), Ok(1_796_600_000_000_000));
        assert!(parse_time_us("yesterday").is_err_and(|e| e.contains("RFC 3339")));
        let cli = Cli::try_parse_from(["drctl", "restore", "--cluster", "c", "--latest", "--to-lsn", "0/1", "--on", "m", "--dir", "/d"]);
        assert!(cli.is_err(), "two points at once");
        let cli = Cli::try_parse_from(["drctl", "restore", "--cluster", "c", "--latest", "--timeline", "2", "--on", "m", "--dir", "/d"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Restore { command: None, .. })));
        let cli = Cli::try_parse_from(["drctl", "restore", "list", "--cluster", "c"]).map(|c| c.command);
        assert!(matches!(cli, Ok(Command::Restore { command: Some(RestoreCommand::List { .. }), .. })), "{cli:?}");
    }
}
