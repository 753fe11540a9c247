//! `drc-bench`: benchmarks that print numbers (never asserted in tests).
//!
//! `drc-bench raft` — on a 3-node coordinator cluster on loopback with fsync
//! on: commit latency of admin writes (p50/p99 over `--writes`) and the time
//! from SIGKILL of the leader to the first successful write on a new leader
//! (median over `--trials`).
//!
//! `drc-bench failover` — in a fresh lab per trial, a continuous writer
//! through the cluster's stable endpoint (drc-proxy); a fault; the time from
//! the fault to the first acknowledged write, and the acknowledged writes
//! missing from the new primary afterwards.
//!
//! `drc-bench backup` — in one lab, a pgbench database of `--scale` (70 is
//! about 1 GiB): drc's backup (pg_basebackup | zstd | age | S3 multipart,
//! hashed) against a plain `pg_basebackup | zstd | aws s3 cp -` to the same
//! bucket (after one warm-up round that is printed but not counted), and
//! drc's recovery test against a plain streaming restore
//! (`aws s3 cp - | age -d | zstd -d | tar -x`, start, first query).
//!
//! Build in release for meaningful numbers:
//! `cargo build --release --workspace --bins && target/release/drc-bench raft`
use clap::{Parser, Subcommand};
use drc_tests::bench::{agents, archive, backup, chaos, failover, pgbackrest, raft};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Commit latency and leader-failover time of the coordinator cluster.
    Raft {
        #[arg(long, default_value_t = 1000)]
        writes: u32,
        #[arg(long, default_value_t = 5)]
        trials: u32,
        /// Plaintext coordinators (insecure = true) instead of mutual TLS.
        #[arg(long)]
        insecure: bool,
    },
    /// N agent streams at one sample per second against a 3-node cluster:
    /// the leader's CPU and RSS, and sample-to-status staleness.
    Agents {
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        counts: Vec<usize>,
        /// Measurement window per count.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The coordinators' Raft tick (election timeout = 10 ticks).
        #[arg(long, default_value = "100ms")]
        tick_interval: String,
        /// Agent streams per HTTP/2 connection. 1 (the default) is what
        /// real agents do; more lets one 2-core machine generate 10,000
        /// streams without starving the coordinator it measures.
        #[arg(long, default_value_t = 1)]
        streams_per_connection: usize,
        /// Mutual TLS: every agent with a certificate of its own (and so a
        /// connection of its own), the admin client with an operator's.
        #[arg(long)]
        tls: bool,
        /// How often each agent sends a sample (real agents: their
        /// probe_interval, 250ms by default).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        sample_interval: std::time::Duration,
        /// Lower the load generator's priority by this much (renice, once the
        /// coordinators run) so that the leader's CPU shows what it needs,
        /// not what a saturated machine leaves it. 0: as before.
        #[arg(long, default_value_t = 0)]
        generator_nice: i32,
        /// Keep the load generator on CPU 0 and the coordinators on the
        /// others (taskset), so that the leader's figures are its own, not
        /// those of a core it shares with 10,000 TLS clients.
        #[arg(long)]
        pin: bool,
    },
    /// Random schedules of gray and clean faults against a lab in network
    /// namespaces (root only), with writers through the stable endpoint and
    /// straight to every member, and a checker: no two members taking
    /// writes at once, no acknowledged write lost but those in flight, no
    /// failover while only links flap. A failing trial prints its replay.
    Chaos {
        #[arg(long, default_value_t = 10)]
        trials: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Faults per trial, one after another.
        #[arg(long, default_value_t = 3)]
        faults: u32,
    },
    /// Fault -> first acknowledged write (sent after the fault) through the
    /// lab's stable endpoint, and acknowledged writes lost.
    Failover {
        #[arg(long, default_value_t = 10)]
        trials: u32,
        /// pg-crash (postmaster SIGKILL), pg-node (server and agent),
        /// redis-node (server and agent), region (everything in region a),
        /// region-leader (the same, with the coordinator leader moved into
        /// region a first: the worst case); pg-freeze and redis-freeze (a
        /// hung node: server and agent SIGSTOPped, connections left open);
        /// pg-hang (the server alone frozen, its agent running: a storage hang);
        /// region-blackhole (every packet into and out of region a dropped)
        /// and region-one-way (region a's packets to b dropped), in a lab
        /// of network namespaces (root only).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "pg-crash,pg-node,redis-node,region,region-leader,pg-freeze,redis-freeze,region-blackhole,region-one-way"
        )]
        faults: Vec<String>,
        /// The PostgreSQL policy's `synchronous_replicas` (0: asynchronous,
        /// the default).
        #[arg(long, default_value_t = 0)]
        synchronous_replicas: u32,
        /// drc's own connections in plaintext (insecure = true) instead of
        /// mutual TLS.
        #[arg(long)]
        insecure: bool,
    },
    /// WAL archive lag under a steady write load, per commit rate.
    Archive {
        /// How long each rate runs.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Commits per second, one run each.
        #[arg(long, value_delimiter = ',', default_value = "50,500,2000")]
        rates: Vec<u32>,
        /// Bytes of each row written.
        #[arg(long, default_value_t = 200)]
        row_bytes: usize,
    },
    /// drc and pgBackRest side by side on one primary: full backup, archive lag per rate, restore to a time.
    Pgbackrest {
        /// How long each rate runs.
        #[arg(long, default_value_t = 90)]
        seconds: u64,
        /// Commits per second, one run each.
        #[arg(long, value_delimiter = ',', default_value = "50,500,2000")]
        rates: Vec<u32>,
        #[arg(long, default_value_t = 200)]
        row_bytes: usize,
        /// pgbench scale of the database backed up.
        #[arg(long, default_value_t = 30)]
        scale: u32,
        /// pgBackRest's process-max.
        #[arg(long, default_value_t = 2)]
        process_max: u32,
    },
    /// Backup throughput and recovery-test time against plain pipelines.
    Backup {
        /// pgbench scale factor (about 15 MiB each).
        #[arg(long, default_value_t = 70)]
        scale: u32,
        #[arg(long, default_value_t = 2)]
        trials: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().bench {
        Bench::Raft { writes, trials, insecure } => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(raft::run(writes, trials, insecure))
        }
        Bench::Failover { trials, faults, synchronous_replicas, insecure } => {
            failover::run(trials, &faults, synchronous_replicas, insecure)
        }
        Bench::Chaos { trials, seed, faults } => chaos::run(trials, seed, faults),
        Bench::Backup { scale, trials } => backup::run(scale, trials),
        Bench::Archive { seconds, rates, row_bytes } => archive::run(seconds, &rates, row_bytes),
        Bench::Pgbackrest { seconds, rates, row_bytes, scale, process_max } => {
            pgbackrest::run_bench(pgbackrest::Options { seconds, rates, row_bytes, scale, process_max })
        }
        Bench::Agents { counts, seconds, tick_interval, streams_per_connection, tls, sample_interval, generator_nice, pin } => {
            let tick: &'static str = Box::leak(tick_interval.into_boxed_str());
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(agents::run(agents::Options {
                counts,
                seconds,
                tick_interval: tick,
                per: streams_per_connection.max(1),
                tls,
                every: sample_interval,
                nice: generator_nice,
                pin,
            }))
        }
    }
}
