//! Members whose agent supervises their database (`[supervise]`): a
//! member handed over to its agent, and its server's pid as it is now.

use std::time::Duration;

use anyhow::anyhow;

use super::{alive, postgres, redis, stop_pid, Lab};

impl Lab {
    /// Hands member `id`'s database to its agent (`[supervise]`), as a
    /// container whose main process is the agent: stops the agent and the
    /// server (Redis saving its data first), then starts the agent, which
    /// starts the server in the role its rule allows.
    pub fn supervise(&mut self, id: &str) -> anyhow::Result<()> {
        let index = self.info.members.iter().position(|m| m.id == id).ok_or_else(|| anyhow!("no member {id}"))?;
        stop_pid(self.info.members[index].agent_pid, Duration::from_secs(5));
        self.hand_over(index, postgres::stop)?;
        self.start_agent_via(index, None)?;
        self.write_info()
    }

    /// Before any agent runs: stops every server the lab made (Redis
    /// saving its data), so that the agents start them (`--supervise`).
    pub(super) fn hand_servers_to_agents(&mut self) -> anyhow::Result<()> {
        for index in 0..self.info.members.len() {
            self.hand_over(index, postgres::stop_clean)?;
        }
        self.write_info()
    }

    /// Stops member `index`'s server (PostgreSQL with `stop_postgres`,
    /// Redis saving its data) and marks it supervised.
    fn hand_over(&mut self, index: usize, stop_postgres: fn(&super::MemberInfo) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let m = self.info.members[index].clone();
        match m.kind.as_str() {
            "postgres" => stop_postgres(&m)?,
            _ => {
                redis::cli_at(&m.host, m.port, &["SHUTDOWN", "SAVE"]).ok();
                stop_pid(m.pid, Duration::from_secs(5));
            }
        }
        self.info.members[index].supervised = true;
        self.info.members[index].pid = 0;
        Ok(())
    }

    /// The pid of member `id`'s server now, if it runs.
    pub fn server_pid(&self, id: &str) -> Option<u32> {
        let m = self.member(id).ok()?;
        match m.kind.as_str() {
            "postgres" => postgres::postmaster_pid(&m.data_dir).ok().filter(|p| alive(*p)),
            _ => {
                let info = redis::cli_at(&m.host, m.port, &["INFO", "server"]).ok()?;
                info.lines().find_map(|l| l.strip_prefix("process_id:")).and_then(|p| p.trim().parse().ok())
            }
        }
    }
}
