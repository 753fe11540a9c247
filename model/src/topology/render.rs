//! Renders a topology back into the TOML document format that
//! [`super::parse::parse_topology`] accepts, so `drctl topology get > f.toml`
//! followed by `drctl apply -f f.toml` is a no-op.

use std::fmt::Write;

use super::{BackupWal, Topology};

/// The canonical TOML form of a topology.
pub fn to_toml(t: &Topology) -> String {
    let mut s = String::new();
    let q = |v: &str| toml::Value::String(v.to_string()).to_string();
    let list = |v: &[String]| v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ");
    for (name, r) in &t.regions {
        let _ = writeln!(s, "[regions.{}]\npriority = {}\n", q(name), r.priority);
    }
    for (name, d) in &t.destinations {
        let _ = writeln!(s, "[destinations.{}]\nregion = {}\n", q(name), q(&d.region));
    }
    for (name, c) in &t.clusters {
        let p = &c.policy;
        let _ = writeln!(s, "[clusters.{}]\nkind = {}", q(name), q(c.kind.as_str()));
        let _ = writeln!(s, "[clusters.{}.policy]", q(name));
        let _ = writeln!(s, "rpo_max_lag_bytes = {}", p.rpo_max_lag_bytes);
        let _ = writeln!(s, "rpo_max_lag_time = {}", q(&humantime::format_duration(p.rpo_max_lag_time).to_string()));
        let _ = writeln!(s, "detection_window = {}", q(&humantime::format_duration(p.detection_window).to_string()));
        let _ = writeln!(s, "crash_detection_window = {}", q(&humantime::format_duration(p.crash_detection_window).to_string()));
        let _ = writeln!(s, "anti_flap_window = {}", q(&humantime::format_duration(p.anti_flap_window).to_string()));
        if p.synchronous_replicas > 0 {
            let _ = writeln!(s, "synchronous_replicas = {}", p.synchronous_replicas);
        }
        let _ = writeln!(s, "paused = {}\n", p.paused);
        let b = &c.backup;
        if *b != Default::default() {
            let _ = writeln!(s, "[clusters.{}.backup]", q(name));
            let _ = writeln!(s, "destinations = [{}]\nrecipients = [{}]", list(&b.destinations), list(&b.recipients));
            let _ =
                writeln!(s, "allow_primary = {}\ncheck_tables = [{}]\nkeep_last = {}", b.allow_primary, list(&b.check_tables), b.keep_last);
            let _ = writeln!(s, "archive_wal = {}", b.archive_wal);
            if b.wal != BackupWal::Included {
                let _ = writeln!(s, "wal = {}", q(b.wal.as_str()));
            }
            if let Some(age) = b.max_age {
                let _ = writeln!(s, "max_age = {}", q(&humantime::format_duration(age).to_string()));
            }
            for c in &b.checks {
                let _ = writeln!(s, "[[clusters.{}.backup.checks]]", q(name));
                let _ = writeln!(s, "name = {}\nquery = {}\nexpect = {}", q(&c.name), q(&c.query), q(&c.expect));
            }
            let _ = writeln!(s);
        }
    }
    for (id, m) in &t.members {
        let _ = writeln!(
            s,
            "[[members]]\nid = {}\ncluster = {}\nregion = {}\naddress = {}\npriority = {}\n",
            q(id),
            q(&m.cluster),
            q(&m.region),
            q(&m.address),
            m.priority
        );
    }
    for (name, g) in &t.failover_groups {
        let list = g.clusters.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "[failover_groups.{}]\nclusters = [{}]\n", q(name), list);
    }
    let r = &t.retention;
    if *r != Default::default() {
        let age = q(&humantime::format_duration(r.max_age).to_string());
        let _ = writeln!(s, "[retention]\ndecisions = {}\naudit = {}\njobs = {}\nmax_age = {age}\n", r.decisions, r.audit, r.jobs);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_topology;
    use super::*;

    #[test]
    fn round_trips_through_the_parser() {
        let doc = "[regions.a]\n[regions.b]\npriority=2\n[clusters.pg]\nkind='postgres'\n[clusters.pg.policy]\nrpo_max_lag_time='1m 30s'\npaused=true\n[[members]]\nid='m'\ncluster='pg'\nregion='b'\naddress='h:1'\n[failover_groups.g]\nclusters=['pg']\n\
                   [destinations.s3b]\nregion='b'\n[clusters.pg.backup]\ndestinations=['s3b']\nrecipients=['age1xyz']\ncheck_tables=['public.t']\nkeep_last=3\nmax_age='7days'\n\
                   [[clusters.pg.backup.checks]]\nname='one'\nquery='SELECT 1'\nexpect='1'\n\
                   [retention]\naudit=50\nmax_age='30days'\n";
        let t = parse_topology(doc).expect("valid");
        let again = parse_topology(&to_toml(&t)).expect("rendered form is valid");
        assert_eq!(t, again);
    }
}
