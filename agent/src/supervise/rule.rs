//! In which role a supervised database may start: the one decision that
//! makes a fence outlive a restart of the agent, its container or its
//! machine. Pure: the caller reads the record and the data directory.

/// What this agent knows of its cluster when its server is (re)started:
/// the newest epoch it has seen and that epoch's primary (kept on disk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known<'a> {
    pub me: &'a str,
    pub epoch: u64,
    pub primary: &'a str,
    pub primary_address: &'a str,
    /// The member that starts writable when no coordinator has adopted a
    /// primary yet (`supervise.first_primary`); any member when unset.
    pub first_primary: Option<&'a str>,
}

/// What the data says the server would start as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    /// A PostgreSQL data directory with `standby.signal`: it starts in
    /// recovery and can never take a write.
    Standby,
    /// A PostgreSQL data directory that would start as a primary, or a
    /// Redis server (which starts as a master unless told otherwise).
    Writable,
}

/// How to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// As the data and configuration say: a standby; a primary that holds
    /// a lease; the first primary of a cluster no coordinator has adopted.
    AsConfigured,
    /// Nothing is recorded yet: decide once the coordinators say which
    /// epoch the cluster is in (epoch 0: never adopted, a first start).
    AskFirst,
    /// This member is the newest epoch's primary (or may be: no primary
    /// recorded) without a lease: writable only once a lease arrives.
    /// PostgreSQL stays down; Redis starts with writes paused.
    HoldForLease,
    /// Another member is the newest epoch's primary. PostgreSQL stays down
    /// until the coordinator rejoins it (pg_rewind, then a standby);
    /// Redis starts as a replica of `address` (paused if it is unknown).
    Follow { address: String },
}

pub fn boot(data: Data, k: &Known) -> Boot {
    if data == Data::Standby {
        return Boot::AsConfigured;
    }
    if k.epoch == 0 && k.primary.is_empty() {
        return Boot::AskFirst;
    }
    if !k.primary.is_empty() && k.primary != k.me {
        return Boot::Follow { address: k.primary_address.to_string() };
    }
    // Also after a crash under a lease still running: the coordinators
    // renew only a primary they see serving, so that lease may lapse
    // before they see the restarted one. A lease granted after the crash
    // brings it back, as any held primary.
    Boot::HoldForLease
}

/// Once the coordinators answered [`Boot::AskFirst`]: the cluster's epoch
/// and primary as they see it. [`Boot::AskFirst`] again: wait for the next
/// answer (the first primary has not claimed the cluster yet).
pub fn after_asking(data: Data, k: &Known) -> Boot {
    if k.epoch == 0 {
        // No coordinator ever adopted a primary of this cluster: it adopts
        // the one member that claims to be primary. The first primary
        // starts and claims it; another member follows the claimant, or
        // waits for one.
        return match k.primary {
            "" if k.first_primary.is_none_or(|f| f == k.me) => Boot::AsConfigured,
            "" => Boot::AskFirst,
            p if p == k.me => Boot::AsConfigured,
            _ => Boot::Follow { address: k.primary_address.to_string() },
        };
    }
    match boot(data, k) {
        Boot::AskFirst => Boot::HoldForLease,
        b => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(epoch: u64, primary: &str) -> Known<'_> {
        Known { me: "pg-a", epoch, primary, primary_address: "10.0.0.2:5432", first_primary: None }
    }

    #[test]
    fn a_restarted_primary_never_starts_writable_without_a_lease() {
        // The agent restarted (container, machine), or the server crashed:
        // a lease granted from now on brings it back.
        assert_eq!(boot(Data::Writable, &known(4, "pg-a")), Boot::HoldForLease);
    }

    #[test]
    fn a_superseded_primary_follows_and_a_standby_always_starts() {
        let b = Boot::Follow { address: "10.0.0.2:5432".into() };
        assert_eq!(boot(Data::Writable, &known(5, "pg-b")), b);
        assert_eq!(boot(Data::Standby, &known(5, "pg-b")), Boot::AsConfigured);
        assert_eq!(boot(Data::Standby, &known(0, "")), Boot::AsConfigured);
    }

    #[test]
    fn nothing_recorded_asks_the_coordinators_and_only_an_unadopted_cluster_starts_writable() {
        assert_eq!(boot(Data::Writable, &known(0, "")), Boot::AskFirst);
        assert_eq!(after_asking(Data::Writable, &known(0, "")), Boot::AsConfigured);
        assert_eq!(after_asking(Data::Writable, &known(0, "pg-a")), Boot::AsConfigured);
        assert_eq!(after_asking(Data::Writable, &known(0, "pg-b")), Boot::Follow { address: "10.0.0.2:5432".into() });
        assert_eq!(after_asking(Data::Writable, &known(3, "pg-a")), Boot::HoldForLease);
        // With a first primary named, the others wait for its claim.
        let named = |me| Known { me, first_primary: Some("pg-b"), ..known(0, "") };
        assert_eq!(after_asking(Data::Writable, &named("pg-a")), Boot::AskFirst);
        assert_eq!(after_asking(Data::Writable, &named("pg-b")), Boot::AsConfigured);
        let claimed = Known { primary: "pg-b", ..named("pg-a") };
        assert_eq!(after_asking(Data::Writable, &claimed), Boot::Follow { address: "10.0.0.2:5432".into() });
        assert_eq!(after_asking(Data::Writable, &known(3, "pg-b")), Boot::Follow { address: "10.0.0.2:5432".into() });
    }
}
