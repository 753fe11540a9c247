//! Who archives a PostgreSQL cluster's WAL, and into which bucket. The
//! leader asks every second and tells the agents ([`crate::jobs`]); an
//! agent that is told streams from whichever member is primary.

use std::collections::BTreeMap;

use drc_model::topology::{ClusterKind, Topology};
use drc_model::{ClusterRecord, Role};

use super::Observation;

/// The archiver of a cluster and where it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivePlan {
    pub member: String,
    pub destination: String,
    /// Key prefix; the agent adds the database's system id.
    pub prefix: String,
}

/// The key prefix of a cluster's WAL: beside its backups' `drc/<cluster>/`,
/// not inside it, where a listing of backup folders would find it.
pub fn wal_prefix(cluster: &str) -> String {
    format!("drc-wal/{cluster}")
}

/// The current archiver of a cluster and where it writes.
#[derive(Clone, Copy, Debug)]
pub struct Current<'a> {
    pub member: &'a str,
    pub destination: &'a str,
}

/// The plan for `cluster`, or none (not PostgreSQL, archiving off, no
/// destination outside the primary's region, no primary, no member fit to
/// archive).
///
/// The destination is outside the primary's region, preferring one in a
/// region where some agent is heard from (a bucket in a lost region is no
/// use), then the current one (a move splits the archive between two
/// buckets), then the policy's order. The archiver is a member whose agent is fresh and whose server answers,
/// preferring, in order: one outside the primary's region (losing that
/// region must not take the archiver with it); the current archiver (a
/// hand-over restarts the stream from the primary's slot); a replica over
/// the primary; the higher priority; the name.
pub fn archive_plan(
    topology: &Topology,
    records: &BTreeMap<String, ClusterRecord>,
    observations: &BTreeMap<String, Observation>,
    cluster: &str,
    current: Option<Current<'_>>,
) -> Option<ArchivePlan> {
    let c = topology.clusters.get(cluster)?;
    if c.kind != ClusterKind::Postgres || !c.backup.archive_wal {
        return None;
    }
    let primary = records.get(cluster).map(|r| r.primary.as_str()).filter(|p| !p.is_empty())?;
    let primary_region = topology.members.get(primary)?.region.as_str();
    let alive = |region: &str| topology.members.iter().any(|(id, m)| m.region == region && observations.get(id).is_some_and(|o| o.fresh));
    let destination = c
        .backup
        .destinations
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((i, d, topology.destinations.get(d)?)))
        .filter(|(_, _, d)| d.region != primary_region)
        .min_by_key(|(i, name, d)| (!alive(&d.region), current.map(|c| c.destination) != Some(name.as_str()), *i))
        .map(|(_, name, _)| name)?;
    let current = current.map(|c| c.member);
    let fit = |id: &str| observations.get(id).is_some_and(|o| o.fresh && o.reachable && (o.role == Role::Replica || id == primary));
    let member = topology
        .members
        .iter()
        .filter(|(id, m)| m.cluster == cluster && fit(id))
        .min_by_key(|(id, m)| {
            (m.region == primary_region, Some(id.as_str()) != current, id.as_str() == primary, std::cmp::Reverse(m.priority), *id)
        })
        .map(|(id, _)| id.clone())?;
    Some(ArchivePlan { member, destination: destination.clone(), prefix: wal_prefix(cluster) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = r#"
[regions.a]
[regions.b]
[regions.c]
[destinations.s3-a]
region = "a"
[destinations.s3-b]
region = "b"
[destinations.s3-c]
region = "c"
[clusters.pg]
kind = "postgres"
[clusters.pg.backup]
destinations = ["s3-a", "s3-b", "s3-c"]
recipients = ["age1xyz"]
[[members]]
id = "pg-a"
cluster = "pg"
region = "a"
address = "10.0.0.1:5432"
[[members]]
id = "pg-a2"
cluster = "pg"
region = "a"
address = "10.0.0.4:5432"
[[members]]
id = "pg-b"
cluster = "pg"
region = "b"
address = "10.0.0.2:5432"
[[members]]
id = "pg-c"
cluster = "pg"
region = "c"
address = "10.0.0.3:5432"
priority = 200
"#;

    fn setup(primary: &str) -> (Topology, BTreeMap<String, ClusterRecord>, BTreeMap<String, Observation>) {
        let topology = drc_model::topology::parse::parse_topology(TOPOLOGY).expect("topology");
        let records = BTreeMap::from([("pg".to_string(), ClusterRecord { primary: primary.into(), ..Default::default() })]);
        let observations = topology
            .members
            .keys()
            .map(|id| {
                let role = if id == primary { Role::Primary } else { Role::Replica };
                (id.clone(), Observation { fresh: true, reachable: true, role, ..Default::default() })
            })
            .collect();
        (topology, records, observations)
    }

    fn now<'a>(member: &'a str, destination: &'a str) -> Option<Current<'a>> {
        Some(Current { member, destination })
    }

    #[test]
    fn the_archiver_is_outside_the_primarys_region_and_the_bucket_too() {
        let (t, r, mut o) = setup("pg-a");
        let plan = archive_plan(&t, &r, &o, "pg", None).expect("a plan");
        assert_eq!((plan.member.as_str(), plan.destination.as_str(), plan.prefix.as_str()), ("pg-c", "s3-b", "drc-wal/pg"));
        assert_eq!(archive_plan(&t, &r, &o, "pg", now("pg-b", "s3-b")).map(|p| p.member), Some("pg-b".into()), "the current one stays");
        if let Some(b) = o.get_mut("pg-b") {
            b.fresh = false;
        }
        if let Some(c) = o.get_mut("pg-c") {
            c.reachable = false;
        }
        assert_eq!(
            archive_plan(&t, &r, &o, "pg", now("pg-b", "s3-b")).map(|p| p.member),
            Some("pg-a2".into()),
            "then a replica beside the primary"
        );
        if let Some(c) = o.get_mut("pg-a2") {
            c.fresh = false;
        }
        assert_eq!(archive_plan(&t, &r, &o, "pg", None).map(|p| p.member), Some("pg-a".into()), "then the primary itself");
    }

    #[test]
    fn after_a_failover_the_bucket_and_the_archiver_move_with_the_primarys_region() {
        let (t, r, o) = setup("pg-b");
        let plan = archive_plan(&t, &r, &o, "pg", now("pg-c", "s3-b")).expect("a plan");
        assert_eq!((plan.member.as_str(), plan.destination.as_str()), ("pg-c", "s3-a"));
        let plan = archive_plan(&t, &r, &o, "pg", now("pg-b", "s3-b")).expect("a plan");
        assert_eq!(plan.member, "pg-c", "the new primary's agent hands the archive over");
    }

    #[test]
    fn the_archive_stays_in_its_bucket_unless_that_bucket_is_in_a_region_no_agent_is_heard_from() {
        let (t, r, mut o) = setup("pg-b");
        assert_eq!(archive_plan(&t, &r, &o, "pg", now("pg-c", "s3-c")).map(|p| p.destination), Some("s3-c".into()), "it stays");
        for id in ["pg-a", "pg-a2"] {
            if let Some(m) = o.get_mut(id) {
                m.fresh = false;
            }
        }
        assert_eq!(archive_plan(&t, &r, &o, "pg", None).map(|p| p.destination), Some("s3-c".into()), "region a is lost");
        assert_eq!(
            archive_plan(&t, &r, &o, "pg", now("pg-c", "s3-a")).map(|p| p.destination),
            Some("s3-c".into()),
            "it leaves a lost region"
        );
    }

    #[test]
    fn no_plan_without_a_primary_or_with_archiving_off() {
        let (mut t, r, o) = setup("");
        assert_eq!(archive_plan(&t, &r, &o, "pg", None), None);
        let (_, r, o) = setup("pg-a");
        assert!(archive_plan(&t, &r, &o, "pg", None).is_some());
        if let Some(c) = t.clusters.get_mut("pg") {
            c.backup.archive_wal = false;
        }
        assert_eq!(archive_plan(&t, &r, &o, "pg", None), None);
    }
}
