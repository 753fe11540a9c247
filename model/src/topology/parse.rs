//! Parsing and validation of a topology document (TOML).
//!
//! The document is walked by hand rather than through `serde` so that *every*
//! problem is reported at once, each with the key that is wrong
//! (`members[2].region`, `clusters.pg.policy.detection_window`), instead of
//! stopping at the first one. Nothing is returned unless the whole document
//! is valid, so a bad document can never be half-applied.
//!
//! ```toml
//! [regions.eu-west]
//! priority = 1
//!
//! [clusters.n8n-pg]
//! kind = "postgres"
//! [clusters.n8n-pg.policy]
//! rpo_max_lag_bytes = 16777216
//! rpo_max_lag_time = "10s"
//! detection_window = "1s"
//! crash_detection_window = "200ms"   # the primary's agent sees its process gone
//! anti_flap_window = "10m"
//! paused = false
//! synchronous_replicas = 1            # PostgreSQL: commits wait for one replica (default 0)
//!
//! [[members]]
//! id = "pg-eu-west"
//! cluster = "n8n-pg"
//! region = "eu-west"
//! address = "10.0.0.5:5432"
//! priority = 100
//!
//! [failover_groups.n8n]
//! clusters = ["n8n-pg", "n8n-redis"]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use toml::{Table, Value};

use super::{Cluster, ClusterKind, Destination, FailoverGroup, Member, Policy, Region, Topology};

/// Default priority of a region or member that does not declare one.
pub const DEFAULT_PRIORITY: u32 = 100;

/// One thing wrong with a document, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending key, e.g. `members[2].region`; empty for the
    /// document as a whole.
    pub key: String,
    pub message: String,
}

mod backup;

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidTopology {
    pub problems: Vec<Problem>,
}

impl fmt::Display for InvalidTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "invalid topology ({n} problem{}):", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Parses and validates a topology document.
pub fn parse_topology(text: &str) -> Result<Topology, InvalidTopology> {
    let table: Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            return Err(InvalidTopology {
                problems: vec![Problem { key: String::new(), message: format!("malformed TOML: {}", e.to_string().trim_end()) }],
            })
        }
    };
    let mut w = Walker::default();
    let topology = w.topology(&table);
    if w.problems.is_empty() {
        Ok(topology)
    } else {
        Err(InvalidTopology { problems: w.problems })
    }
}

/// Parses a human-readable, strictly positive duration such as `"500ms"` or `"2s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); write a positive duration like \"500ms\", \"2s\" or \"5m\""))?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

#[derive(Default)]
struct Walker {
    problems: Vec<Problem>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    v.type_str()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl Walker {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { key: key.into(), message: message.into() });
    }

    fn unknown_keys(&mut self, table: &Table, path: &str, allowed: &[&str]) {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                self.problem(join(path, key), format!("unknown key (expected one of: {})", allowed.join(", ")));
            }
        }
    }

    fn table<'a>(&mut self, v: &'a Value, path: &str) -> Option<&'a Table> {
        match v {
            Value::Table(t) => Some(t),
            other => {
                self.problem(path, format!("expected a table, found {}", type_name(other)));
                None
            }
        }
    }

    fn name(&mut self, name: &str, path: &str) {
        if !valid_name(name) {
            self.problem(path, format!("invalid name {name:?}: use 1-63 letters, digits, '-', '_' or '.'"));
        }
    }

    fn string(&mut self, t: &Table, path: &str, key: &str, required: bool) -> Option<String> {
        match t.get(key) {
            None if required => {
                self.problem(join(path, key), "missing (required)");
                None
            }
            None => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.problem(join(path, key), "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(join(path, key), format!("expected a string, found {}", type_name(other)));
                None
            }
        }
    }

    fn unsigned(&mut self, t: &Table, path: &str, key: &str, max: u64) -> Option<u64> {
        match t.get(key)? {
            Value::Integer(i) if *i >= 0 && (*i as u64) <= max => Some(*i as u64),
            Value::Integer(i) => {
                self.problem(join(path, key), format!("{i} is out of range (0..={max})"));
                None
            }
            other => {
                self.problem(join(path, key), format!("expected a non-negative integer, found {}", type_name(other)));
                None
            }
        }
    }

    fn duration(&mut self, t: &Table, path: &str, key: &str) -> Option<Duration> {
        match t.get(key)? {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problem(join(path, key), e);
                    None
                }
            },
            other => {
                self.problem(join(path, key), format!("expected a duration string like \"2s\", found {}", type_name(other)));
                None
            }
        }
    }

    fn boolean(&mut self, t: &Table, path: &str, key: &str) -> Option<bool> {
        match t.get(key)? {
            Value::Boolean(b) => Some(*b),
            other => {
                self.problem(join(path, key), format!("expected true or false, found {}", type_name(other)));
                None
            }
        }
    }

    fn topology(&mut self, doc: &Table) -> Topology {
        self.unknown_keys(doc, "", &["regions", "clusters", "members", "failover_groups", "destinations", "retention"]);
        let mut topo = Topology::default();
        if let Some(t) = doc.get("retention").and_then(|v| self.table(v, "retention")) {
            self.retention(t, &mut topo.retention);
        }
        if let Some(v) = doc.get("regions") {
            if let Some(regions) = self.table(v, "regions") {
                for (name, v) in regions {
                    let path = join("regions", name);
                    self.name(name, &path);
                    if let Some(t) = self.table(v, &path) {
                        self.unknown_keys(t, &path, &["priority"]);
                        let priority = self.unsigned(t, &path, "priority", u32::MAX as u64).unwrap_or(DEFAULT_PRIORITY as u64) as u32;
                        topo.regions.insert(name.clone(), Region { priority });
                    }
                }
            }
        }
        if let Some(v) = doc.get("destinations") {
            if let Some(dests) = self.table(v, "destinations") {
                for (name, v) in dests {
                    let path = join("destinations", name);
                    self.name(name, &path);
                    if let Some(t) = self.table(v, &path) {
                        self.unknown_keys(t, &path, &["region"]);
                        if let Some(region) = self.string(t, &path, "region", true) {
                            if topo.regions.contains_key(&region) {
                                topo.destinations.insert(name.clone(), Destination { region });
                            } else {
                                self.problem(join(&path, "region"), format!("unknown region {region:?}"));
                            }
                        }
                    }
                }
            }
        }
        if let Some(v) = doc.get("clusters") {
            if let Some(clusters) = self.table(v, "clusters") {
                for (name, v) in clusters {
                    let path = join("clusters", name);
                    self.name(name, &path);
                    if let Some(c) = self.table(v, &path).and_then(|t| self.cluster(t, &path, &topo.destinations)) {
                        topo.clusters.insert(name.clone(), c);
                    }
                }
            }
        }
        if let Some(v) = doc.get("members") {
            self.members(v, &mut topo);
        }
        for (name, c) in &topo.clusters {
            let wanted = c.policy.synchronous_replicas as usize;
            let replicas = topo.members.values().filter(|m| m.cluster == *name).count().saturating_sub(1);
            if wanted > replicas {
                self.problem(
                    format!("clusters.{name}.policy.synchronous_replicas"),
                    format!("{wanted} synchronous replicas wanted, but the cluster has {replicas} replica(s) besides its primary"),
                );
            }
        }
        if let Some(v) = doc.get("failover_groups") {
            self.failover_groups(v, &mut topo);
        }
        topo
    }

    /// `[retention]`: each count at least 1, so the newest record is
    /// always kept.
    fn retention(&mut self, t: &Table, r: &mut super::Retention) {
        let path = "retention";
        self.unknown_keys(t, path, &["decisions", "audit", "jobs", "max_age"]);
        for (key, field) in [("decisions", &mut r.decisions), ("audit", &mut r.audit), ("jobs", &mut r.jobs)] {
            match self.unsigned(t, path, key, u32::MAX as u64) {
                Some(0) => self.problem(join(path, key), "must be at least 1".to_string()),
                Some(n) => *field = n as u32,
                None => {}
            }
        }
        if let Some(age) = self.duration(t, path, "max_age") {
            r.max_age = age;
        }
    }

    fn cluster(&mut self, t: &Table, path: &str, destinations: &BTreeMap<String, Destination>) -> Option<Cluster> {
        self.unknown_keys(t, path, &["kind", "policy", "backup"]);
        let kind = match self.string(t, path, "kind", true).as_deref() {
            Some("postgres") => Some(ClusterKind::Postgres),
            Some("redis") => Some(ClusterKind::Redis),
            Some(other) => {
                self.problem(join(path, "kind"), format!("unknown kind {other:?} (expected \"postgres\" or \"redis\")"));
                None
            }
            None => None,
        };
        let mut policy = Policy::default();
        if let Some(v) = t.get("policy") {
            let ppath = join(path, "policy");
            if let Some(p) = self.table(v, &ppath) {
                self.unknown_keys(
                    p,
                    &ppath,
                    &[
                        "rpo_max_lag_bytes",
                        "rpo_max_lag_time",
                        "detection_window",
                        "crash_detection_window",
                        "anti_flap_window",
                        "paused",
                        "synchronous_replicas",
                    ],
                );
                if let Some(b) = self.unsigned(p, &ppath, "rpo_max_lag_bytes", i64::MAX as u64) {
                    policy.rpo_max_lag_bytes = b;
                }
                if let Some(d) = self.duration(p, &ppath, "rpo_max_lag_time") {
                    policy.rpo_max_lag_time = d;
                }
                if let Some(d) = self.duration(p, &ppath, "detection_window") {
                    policy.detection_window = d;
                }
                if let Some(d) = self.duration(p, &ppath, "crash_detection_window") {
                    policy.crash_detection_window = d;
                }
                if let Some(d) = self.duration(p, &ppath, "anti_flap_window") {
                    policy.anti_flap_window = d;
                }
                if let Some(b) = self.boolean(p, &ppath, "paused") {
                    policy.paused = b;
                }
                if let Some(n) = self.unsigned(p, &ppath, "synchronous_replicas", 16) {
                    if n > 0 && kind != Some(ClusterKind::Postgres) {
                        self.problem(
                            join(&ppath, "synchronous_replicas"),
                            "only PostgreSQL clusters replicate synchronously (Redis has no such mode)",
                        );
                    }
                    policy.synchronous_replicas = n as u32;
                }
            }
        }
        let backup = t.get("backup").map(|v| self.backup(v, &join(path, "backup"), kind, destinations)).unwrap_or_default();
        Some(Cluster { kind: kind?, policy, backup })
    }

    /// An optional array of strings.
    fn strings(&mut self, t: &Table, path: &str, key: &str) -> Vec<String> {
        match t.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            self.problem(format!("{}[{i}]", join(path, key)), format!("expected a string, found {}", type_name(other)))
                        }
                    }
                }
                out
            }
            Some(other) => {
                self.problem(join(path, key), format!("expected an array of strings, found {}", type_name(other)));
                Vec::new()
            }
        }
    }

    fn members(&mut self, v: &Value, topo: &mut Topology) {
        let Value::Array(items) = v else {
            self.problem("members", format!("expected an array of tables ([[members]]), found {}", type_name(v)));
            return;
        };
        let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("members[{i}]");
            let Some(t) = self.table(item, &path) else { continue };
            self.unknown_keys(t, &path, &["id", "cluster", "region", "address", "priority"]);
            let id = self.string(t, &path, "id", true);
            if let Some(id) = &id {
                self.name(id, &join(&path, "id"));
                if let Some(j) = first_seen.get(id) {
                    self.problem(join(&path, "id"), format!("duplicate member id {id:?} (also members[{j}])"));
                } else {
                    first_seen.insert(id.clone(), i);
                }
            }
            let cluster = self.string(t, &path, "cluster", true);
            if let Some(c) = &cluster {
                if !topo.clusters.contains_key(c) {
                    let declared = topo.clusters.keys().cloned().collect::<Vec<_>>().join(", ");
                    self.problem(join(&path, "cluster"), format!("unknown cluster {c:?} (declared: {declared})"));
                }
            }
            let region = self.string(t, &path, "region", true);
            if let Some(r) = &region {
                if !topo.regions.contains_key(r) {
                    let declared = topo.regions.keys().cloned().collect::<Vec<_>>().join(", ");
                    self.problem(join(&path, "region"), format!("undeclared region {r:?} (declared: {declared})"));
                }
            }
            let address = self.string(t, &path, "address", true);
            if let Some(a) = &address {
                if !valid_address(a) {
                    self.problem(join(&path, "address"), format!("invalid address {a:?}: expected host:port"));
                }
            }
            let priority = self.unsigned(t, &path, "priority", u32::MAX as u64).unwrap_or(DEFAULT_PRIORITY as u64) as u32;
            if let (Some(id), Some(cluster), Some(region), Some(address)) = (id, cluster, region, address) {
                topo.members.entry(id).or_insert(Member { cluster, region, address, priority });
            }
        }
    }

    fn failover_groups(&mut self, v: &Value, topo: &mut Topology) {
        let Some(groups) = self.table(v, "failover_groups") else { return };
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for (name, v) in groups {
            let path = join("failover_groups", name);
            self.name(name, &path);
            let Some(t) = self.table(v, &path) else { continue };
            self.unknown_keys(t, &path, &["clusters"]);
            let cpath = join(&path, "clusters");
            let clusters = match t.get("clusters") {
                Some(Value::Array(items)) => {
                    let mut out = Vec::new();
                    let mut seen = BTreeSet::new();
                    for (i, item) in items.iter().enumerate() {
                        let ipath = format!("{cpath}[{i}]");
                        match item {
                            Value::String(c) if !topo.clusters.contains_key(c) => self.problem(ipath, format!("unknown cluster {c:?}")),
                            Value::String(c) if !seen.insert(c.clone()) => self.problem(ipath, format!("cluster {c:?} listed twice")),
                            Value::String(c) => {
                                if let Some(other) = owner.insert(c.clone(), name.clone()) {
                                    self.problem(ipath, format!("cluster {c:?} is already in failover group {other:?}"));
                                }
                                out.push(c.clone());
                            }
                            other => self.problem(ipath, format!("expected a cluster name, found {}", type_name(other))),
                        }
                    }
                    if items.is_empty() {
                        self.problem(&cpath, "must list at least one cluster");
                    }
                    out
                }
                Some(other) => {
                    self.problem(&cpath, format!("expected an array of cluster names, found {}", type_name(other)));
                    continue;
                }
                None => {
                    self.problem(&cpath, "missing (required)");
                    continue;
                }
            };
            topo.failover_groups.insert(name.clone(), FailoverGroup { clusters });
        }
    }
}

/// `host:port` with a non-empty host and a port in 1..=65535.
pub fn valid_address(a: &str) -> bool {
    match a.rsplit_once(':') {
        Some((host, port)) => valid_host(host) && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// A host that is safe wherever drc writes it (libpq connection strings,
/// URLs, command lines): an IPv4 address, an IPv6 address in brackets, or a
/// DNS name of letters, digits and hyphens. Nothing else: a space, quote,
/// `=` or `@` would let a host add parameters of its own.
pub fn valid_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    h.parse::<std::net::Ipv4Addr>().is_ok() || (h.len() <= 253 && h.split('.').all(label))
}

#[cfg(test)]
pub(super) mod tests {
    #[test]
    fn the_cluster_index_lists_every_cluster_with_its_members_in_id_order() {
        let t = parse_topology(
            "[regions.a]\n[clusters.x]\nkind='redis'\n[clusters.empty]\nkind='redis'\n\
             [[members]]\nid='x2'\ncluster='x'\nregion='a'\naddress='h:2'\n[[members]]\nid='x1'\ncluster='x'\nregion='a'\naddress='h:1'\n",
        )
        .expect("valid");
        let index = t.by_cluster();
        assert_eq!(index.len(), 2);
        assert_eq!(index["x"], ["x1", "x2"]);
        assert!(index["empty"].is_empty());
        assert_eq!(t.members_of("x").map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["x1", "x2"]);
        assert_eq!(t.members_of("nope").count(), 0);
        assert_eq!(t.clone(), t, "the index does not take part in equality");
    }

    use super::*;

    #[test]
    fn only_plain_hosts_pass_so_none_can_smuggle_connection_parameters() {
        for ok in ["10.0.1.5:5432", "db-1.eu-west.internal:5432", "localhost:6379", "[::1]:5432", "[fd00::7]:6379"] {
            assert!(valid_address(ok), "{ok}");
        }
        for bad in [
            "h dbname=x:5432",
            "h' sslmode=disable:5432",
            "h=x:5432",
            "user@h:5432",
            "::1:5432",
            "[::1:5432",
            "-h:5432",
            "h_1:5432",
            ":5432",
            "h:0",
            "h:99999",
            "h/x:5432",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
    }

    pub(crate) const EXAMPLE: &str = r#"
[regions.a]
priority = 1
[regions.b]
priority = 2

[clusters.pg]
kind = "postgres"
[clusters.pg.policy]
rpo_max_lag_time = "5s"
detection_window = "2s"
crash_detection_window = "500ms"

[clusters.cache]
kind = "redis"

[[members]]
id = "pg-a"
cluster = "pg"
region = "a"
address = "127.0.0.1:5433"

[[members]]
id = "pg-b"
cluster = "pg"
region = "b"
address = "127.0.0.1:5434"
priority = 50

[failover_groups.app]
clusters = ["pg", "cache"]
"#;

    #[test]
    fn parses_a_valid_document() {
        let t = parse_topology(EXAMPLE).expect("valid");
        assert_eq!(t.regions.len(), 2);
        assert_eq!(t.clusters["pg"].policy.detection_window, Duration::from_secs(2));
        assert_eq!(t.clusters["pg"].policy.crash_detection_window, Duration::from_millis(500));
        assert_eq!(t.clusters["cache"].policy.crash_detection_window, Duration::from_millis(200), "the default");
        assert_eq!(t.clusters["cache"].policy, Policy::default());
        assert_eq!(t.members["pg-a"].priority, DEFAULT_PRIORITY);
        assert_eq!(t.members["pg-b"].priority, 50);
        assert_eq!(t.failover_groups["app"].clusters, vec!["pg", "cache"]);
    }

    pub(super) fn keys(text: &str) -> Vec<String> {
        parse_topology(text).expect_err("must be invalid").problems.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn the_example_in_the_repository_is_valid() {
        let t = parse_topology(include_str!("../../../examples/topology.toml")).expect("examples/topology.toml");
        assert_eq!(t.clusters["n8n-pg"].policy.synchronous_replicas, 1);
    }

    #[test]
    fn synchronous_replication_is_for_postgres_and_needs_that_many_replicas() {
        let t = parse_topology(&EXAMPLE.replace("detection_window = \"2s\"", "detection_window = \"2s\"\nsynchronous_replicas = 1"))
            .expect("valid");
        assert_eq!(t.clusters["pg"].policy.synchronous_replicas, 1);
        assert_eq!(t.clusters["cache"].policy.synchronous_replicas, 0, "asynchronous by default");
        let rendered = parse_topology(&crate::topology::render::to_toml(&t)).expect("the rendered document parses");
        assert_eq!(rendered, t, "the setting survives a round trip through `topology get`");

        let too_many = EXAMPLE.replace("detection_window = \"2s\"", "synchronous_replicas = 2");
        let e = parse_topology(&too_many).expect_err("two of one replica");
        assert_eq!(e.problems[0].key, "clusters.pg.policy.synchronous_replicas");
        assert!(e.problems[0].message.contains("has 1 replica"), "{}", e.problems[0].message);
        let redis = EXAMPLE.replace(
            "[clusters.cache]\nkind = \"redis\"",
            "[clusters.cache]\nkind = \"redis\"\n[clusters.cache.policy]\nsynchronous_replicas = 1",
        );
        assert!(keys(&redis).contains(&"clusters.cache.policy.synchronous_replicas".to_string()));
    }

    #[test]
    fn malformed_toml_is_one_clear_problem() {
        let e = parse_topology("[regions.a\npriority = 1").expect_err("invalid");
        assert_eq!(e.problems.len(), 1);
        assert!(e.to_string().contains("malformed TOML"), "{e}");
    }

    #[test]
    fn retention_keeps_at_least_one_record_of_each_kind() {
        let base = "[regions.a]\n[clusters.c]\nkind='redis'\n[retention]\n";
        assert_eq!(keys(&format!("{base}audit=0\njobs=-1\nhistory=3\n")), vec!["retention.history", "retention.audit", "retention.jobs"]);
        let t = parse_topology(&format!("{base}decisions=5\nmax_age='30days'\n")).expect("valid");
        assert_eq!((t.retention.decisions, t.retention.audit, t.retention.max_age.as_secs()), (5, 10_000, 30 * 86_400));
    }

    #[test]
    fn reports_every_problem_at_once_with_its_key() {
        let doc = r#"
colour = "blue"
[regions.a]
prio = 1
[clusters.pg]
kind = "mysql"
[clusters.r]
kind = "redis"
[clusters.r.policy]
detection_window = "0s"
anti_flap_window = "-5s"
rpo_max_lag_bytes = -1
[[members]]
id = "m1"
cluster = "pg"
region = "zz"
address = "nowhere"
[[members]]
id = "m1"
cluster = "nope"
region = "a"
address = "127.0.0.1:1"
"#;
        let k = keys(doc);
        for want in [
            "colour",
            "regions.a.prio",
            "clusters.pg.kind",
            "clusters.r.policy.detection_window",
            "clusters.r.policy.anti_flap_window",
            "clusters.r.policy.rpo_max_lag_bytes",
            "members[0].region",
            "members[0].address",
            "members[1].id",
            "members[1].cluster",
        ] {
            assert!(k.contains(&want.to_string()), "missing {want} in {k:?}");
        }
    }

    #[test]
    fn durations_must_be_positive_strings() {
        assert!(parse_duration("500ms").is_ok());
        assert!(parse_duration("0s").expect_err("zero").contains("greater than zero"));
        assert!(parse_duration("-1s").is_err());
        let k = keys("[regions.a]\n[clusters.c]\nkind='redis'\n[clusters.c.policy]\ndetection_window = 5\n");
        assert_eq!(k, vec!["clusters.c.policy.detection_window"]);
    }

    #[test]
    fn a_cluster_belongs_to_at_most_one_group() {
        let doc = "[clusters.a]\nkind='redis'\n[failover_groups.x]\nclusters=['a']\n[failover_groups.y]\nclusters=['a','b']\n";
        let k = keys(doc);
        assert_eq!(k, vec!["failover_groups.y.clusters[0]", "failover_groups.y.clusters[1]"]);
    }
}
