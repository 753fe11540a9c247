//! `[clusters.X.backup]`: destinations, encryption, checks, retention and
//! the WAL archive.

use std::collections::{BTreeMap, BTreeSet};

use toml::{Table, Value};

use super::super::{BackupPolicy, BackupWal, Check, ClusterKind, Destination};
use super::{join, type_name, Walker};

impl Walker {
    pub(super) fn backup(
        &mut self,
        v: &Value,
        bpath: &str,
        kind: Option<ClusterKind>,
        destinations: &BTreeMap<String, Destination>,
    ) -> BackupPolicy {
        let mut backup = BackupPolicy::default();
        let Some(b) = self.table(v, bpath) else { return backup };
        let bpath = bpath.to_string();
        self.unknown_keys(
            b,
            &bpath,
            &["destinations", "recipients", "allow_primary", "check_tables", "checks", "keep_last", "max_age", "archive_wal", "wal"],
        );
        backup.destinations = self.strings(b, &bpath, "destinations");
        for (i, d) in backup.destinations.iter().enumerate() {
            if !destinations.contains_key(d) {
                self.problem(format!("{bpath}.destinations[{i}]"), format!("unknown destination {d:?} (declare it under [destinations])"));
            }
        }
        backup.recipients = self.strings(b, &bpath, "recipients");
        for (i, r) in backup.recipients.iter().enumerate() {
            if !r.starts_with("age1") {
                self.problem(format!("{bpath}.recipients[{i}]"), "expected an age public key (\"age1...\")");
            }
        }
        if !backup.destinations.is_empty() && backup.recipients.is_empty() {
            self.problem(join(&bpath, "recipients"), "backups are encrypted: name at least one age recipient");
        }
        backup.allow_primary = self.boolean(b, &bpath, "allow_primary").unwrap_or(false);
        backup.check_tables = self.strings(b, &bpath, "check_tables");
        backup.checks = self.checks(b, &bpath);
        backup.keep_last = self.unsigned(b, &bpath, "keep_last", u32::MAX as u64).unwrap_or(0) as u32;
        backup.max_age = self.duration(b, &bpath, "max_age");
        backup.archive_wal = self.boolean(b, &bpath, "archive_wal").unwrap_or(true);
        backup.wal = match self.string(b, &bpath, "wal", false).as_deref() {
            None | Some("included") => BackupWal::Included,
            Some("archive") if backup.archive_wal && kind == Some(ClusterKind::Postgres) => BackupWal::Archive,
            Some("archive") => {
                self.problem(join(&bpath, "wal"), "\"archive\" needs a PostgreSQL cluster whose WAL is archived (archive_wal)");
                BackupWal::Included
            }
            Some(other) => {
                self.problem(join(&bpath, "wal"), format!("expected \"included\" or \"archive\", found {other:?}"));
                BackupWal::Included
            }
        };
        backup
    }

    /// `[[clusters.X.backup.checks]]`: name, query, expect.
    fn checks(&mut self, t: &Table, path: &str) -> Vec<Check> {
        let path = join(path, "checks");
        let items = match t.get("checks") {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.problem(&path, format!("expected an array of tables ([[...checks]]), found {}", type_name(other)));
                return Vec::new();
            }
        };
        let (mut out, mut names) = (Vec::new(), BTreeSet::new());
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let Some(c) = self.table(item, &ipath) else { continue };
            self.unknown_keys(c, &ipath, &["name", "query", "expect"]);
            let (name, query, expect) =
                (self.string(c, &ipath, "name", true), self.string(c, &ipath, "query", true), self.string(c, &ipath, "expect", true));
            if let Some(n) = name.as_ref().filter(|n| !names.insert(n.to_string())) {
                self.problem(join(&ipath, "name"), format!("duplicate check name {n:?}"));
            }
            if let (Some(name), Some(query), Some(expect)) = (name, query, expect) {
                out.push(Check { name, query, expect });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_topology;
    use super::super::tests::keys;
    use crate::topology::BackupWal;

    #[test]
    fn backups_leave_their_wal_to_the_archive_only_where_there_is_one() {
        let doc = |extra: &str| {
            format!("[regions.a]\n[destinations.s3a]\nregion='a'\n[clusters.pg]\nkind='postgres'\n[clusters.pg.backup]\ndestinations=['s3a']\nrecipients=['age1x']\n{extra}")
        };
        let t = parse_topology(&doc("wal = 'archive'")).expect("valid");
        assert_eq!(t.clusters["pg"].backup.wal, BackupWal::Archive);
        assert_eq!(parse_topology(&crate::topology::render::to_toml(&t)).ok(), Some(t), "it survives `topology get`");
        assert_eq!(keys(&doc("wal = 'archive'\narchive_wal = false")), ["clusters.pg.backup.wal"]);
        assert_eq!(keys(&doc("wal = 'none'")), ["clusters.pg.backup.wal"]);
        assert_eq!(parse_topology(&doc("")).map(|t| t.clusters["pg"].backup.wal).ok(), Some(BackupWal::Included));
    }

    #[test]
    fn recovery_test_checks_need_a_name_a_query_and_an_answer() {
        let doc = "[regions.a]\n[destinations.s3a]\nregion='a'\n[clusters.pg]\nkind='postgres'\n[clusters.pg.backup]\n\
                   destinations=['s3a']\nrecipients=['age1x']\n[[clusters.pg.backup.checks]]\nname='a'\nquery='SELECT 1'\n\
                   [[clusters.pg.backup.checks]]\nname='a'\nquery='SELECT 2'\nexpect='2'\ncolour='red'\n";
        assert_eq!(
            keys(doc),
            ["clusters.pg.backup.checks[0].expect", "clusters.pg.backup.checks[1].colour", "clusters.pg.backup.checks[1].name"]
        );
    }
}
