//! The faults the seeded schedules draw, and operator requests.

use super::*;

impl Sim {
    pub(super) fn fault(&mut self) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        let pick = ids[self.rng.below(ids.len() as u64) as usize].clone();
        let region = self.rng.below(3) as usize;
        match self.rng.below(22) {
            0 | 1 => {
                // Crash the writable member of a cluster.
                let writable: Vec<String> = self.members.values().filter(|m| m.writable).map(|m| m.id.clone()).collect();
                if !writable.is_empty() {
                    let id = writable[self.rng.below(writable.len() as u64) as usize].clone();
                    self.set(&id, |m| {
                        m.up = false;
                        m.writable = false;
                    });
                    self.say(format!("crash primary {id}"));
                }
            }
            2 => {
                let m = self.members.get_mut(&pick).expect("picked");
                // Not behind a frozen agent's back: an old primary restarted
                // then is writable until its agent runs again, which only an
                // agent that supervises its server can prevent (issue 19).
                if !m.up && self.region_up[m.region] && !m.agent_frozen {
                    m.up = true;
                    m.lease_fenced = false;
                    // A restarted server comes back in the role it had; a
                    // restarted old primary is writable until its agent acts.
                    m.writable = m.primary;
                    self.say(format!("restart {pick}"));
                }
            }
            3 => {
                self.region_up[region] = false;
                for m in self.members.values_mut().filter(|m| m.region == region) {
                    m.up = false;
                    m.writable = false;
                }
                self.say(format!("region {} lost", REGIONS[region]));
            }
            4 => {
                if !self.region_up[region] {
                    self.region_up[region] = true;
                    for m in self.members.values_mut().filter(|m| m.region == region) {
                        m.up = true;
                        m.server_frozen = false;
                        m.agent_frozen = false;
                        m.agent_thaw_at = None;
                        m.writable = m.primary;
                        m.lease_until = None;
                        m.lease_fenced = false;
                    }
                    self.say(format!("region {} back", REGIONS[region]));
                }
            }
            5 | 6 => {
                let m = self.members.get_mut(&pick).expect("picked");
                m.link = !m.link;
                let state = if m.link { "restored" } else { "cut" };
                self.say(format!("agent link of {pick} {state}"));
            }
            7 | 8 => {
                let other = (region + 1 + self.rng.below(2) as usize) % 3;
                let cut = !self.cut[region][other];
                self.cut[region][other] = cut;
                self.cut[other][region] = cut;
                let state = if cut { "partitioned" } else { "healed" };
                self.say(format!("regions {} and {} {state}", REGIONS[region], REGIONS[other]));
            }
            9 => {
                if self.leader.is_some() {
                    self.leader = None;
                    self.core = None;
                    self.election_until = self.now + ELECTION;
                    self.say("coordinator leader lost".into());
                }
            }
            10 | 11 => {
                let m = self.members.get_mut(&pick).expect("picked");
                m.lagging = !m.lagging;
                let state = if m.lagging { "lags" } else { "catches up" };
                self.say(format!("{pick} {state}"));
            }
            12 => {
                // A flapping agent link: a few quick toggles.
                for _ in 0..(1 + self.rng.below(3)) * 2 {
                    let m = self.members.get_mut(&pick).expect("picked");
                    m.link = !m.link;
                    self.step();
                }
                self.say(format!("agent link of {pick} flapped"));
            }
            13 => {
                let c = CLUSTERS[self.rng.below(2) as usize].to_string();
                let paused = self.rng.chance(50);
                let cluster = if self.rng.chance(30) { None } else { Some(c) };
                self.say(format!("operator: pause {cluster:?} = {paused}"));
                self.sm.apply(Command::Pause { cluster, paused });
            }
            14 => {
                let c = CLUSTERS[self.rng.below(2) as usize].to_string();
                let force = self.rng.chance(30);
                let to = self.rng.chance(50).then(|| pick.clone()).filter(|p| p.starts_with(&c));
                let req = match self.rng.below(3) {
                    0 => Request::Failover { cluster: c, to, force },
                    1 => Request::Switchover { cluster: c, to },
                    _ => {
                        let from = REGIONS[self.rng.below(3) as usize].to_string();
                        let to = self.rng.chance(50).then(|| REGIONS[self.rng.below(3) as usize].to_string()).filter(|t| *t != from);
                        Request::Evacuate { cluster: c, from, to, prefer: None, force }
                    }
                };
                self.operator(req);
            }
            15 => {
                let c = CLUSTERS[self.rng.below(2) as usize].to_string();
                self.sm.apply(Command::ClearBlock { cluster: c });
            }
            16 => {
                // A hung machine: server and agent frozen.
                self.set(&pick, |m| {
                    m.server_frozen = m.up;
                    m.agent_frozen = true;
                    m.agent_thaw_at = None;
                });
                self.say(format!("node of {pick} frozen"));
            }
            17 => {
                let thaw = self.now + 1 + self.rng.below(LEASE.drift_margin - 1);
                self.set(&pick, |m| {
                    if !m.agent_frozen {
                        m.agent_frozen = true;
                        m.agent_thaw_at = Some(thaw);
                    }
                });
                self.say(format!("agent of {pick} frozen until {thaw} ms"));
            }
            18 => {
                self.set(&pick, |m| m.server_frozen = m.up);
                self.say(format!("server of {pick} frozen"));
            }
            19 | 20 => {
                let frozen: Vec<String> =
                    self.members.values().filter(|m| m.server_frozen || m.agent_frozen).map(|m| m.id.clone()).collect();
                if !frozen.is_empty() {
                    let id = frozen[self.rng.below(frozen.len() as u64) as usize].clone();
                    self.set(&id, |m| {
                        m.server_frozen = false;
                        m.agent_frozen = false;
                        m.agent_thaw_at = None;
                    });
                    self.say(format!("{id} runs again"));
                }
            }
            _ => {
                // One direction of a link between two regions.
                let other = (region + 1 + self.rng.below(2) as usize) % 3;
                let cut = !self.cut[region][other];
                self.cut[region][other] = cut;
                let state = if cut { "dropped" } else { "delivered again" };
                self.say(format!("what region {} sends to {} is {state}", REGIONS[region], REGIONS[other]));
            }
        }
    }

    pub(super) fn operator(&mut self, req: Request) {
        let obs = self.observations();
        let Some(core) = self.core.as_mut() else { return };
        let world = situation(self.now, &self.topology, &self.sm, &obs);
        match core.request(&world, &req) {
            Ok(d) => {
                self.say(format!("operator {req:?}: accepted"));
                self.commit(d);
            }
            Err(e) => self.say(format!("operator {req:?}: refused: {e}")),
        }
    }
}
