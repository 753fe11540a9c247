//! `--db-tls`: a server certificate for PostgreSQL from the lab's CA, and
//! the replication role's password in a libpq passfile.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use anyhow::Context as _;

use super::info::DbTlsInfo;
use super::Lab;

impl Lab {
    /// Files PostgreSQL (as `postgres`) reads: in a directory of their own.
    pub(super) fn make_db_tls(&mut self) -> anyhow::Result<()> {
        let dir = self.info.dir.join("pg-tls");
        fs::create_dir_all(&dir)?;
        let mut hosts = vec!["127.0.0.1".to_string()];
        if let Some(net) = &self.info.net {
            for r in super::REGIONS {
                if let Ok(n) = net.node(&format!("pg-{r}")) {
                    hosts.push(n.address.clone());
                }
            }
        }
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let server = self.pki()?.server(&hosts, "pg-server")?;
        let (server_cert, server_key, ca) = (dir.join("server.pem"), dir.join("server.key"), dir.join("ca.pem"));
        fs::copy(&server.cert, &server_cert)?;
        fs::copy(&server.key, &server_key)?;
        fs::copy(&server.ca, &ca)?;
        let password = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
        let passfile = dir.join("pgpass");
        fs::write(&passfile, format!("*:*:*:postgres:{password}\n"))?;
        for (f, mode) in [(&server_cert, 0o644), (&server_key, 0o600), (&ca, 0o644), (&passfile, 0o600)] {
            fs::set_permissions(f, fs::Permissions::from_mode(mode))?;
        }
        let owned = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().context("chown")?;
        anyhow::ensure!(owned.success(), "chown -R postgres {}", dir.display());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        self.info.db_tls = Some(DbTlsInfo { ca, server_cert, server_key, passfile });
        Ok(())
    }
}
