//! The processes the agent looks after: whether a postmaster still runs,
//! and running PostgreSQL's tools as their OS user.

/// Whether the postmaster named by `data_dir/postmaster.pid` still runs.
/// Unsure (unreadable file, no /proc) counts as running, so that the caller
/// stops it properly.
pub fn postmaster_alive(data_dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        // No pid file: not running, unless the file is merely unreadable.
        return data_dir.join("postmaster.pid").exists();
    };
    match text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) {
        Some(pid) if std::path::Path::new("/proc/self").exists() => {
            // A reused pid would have to belong to a postgres process, and a
            // killed postmaster that its parent has not reaped yet (a zombie)
            // is gone: it serves nothing, and `pg_ctl stop` only times out.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 3, after the parenthesised command name.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).unwrap_or("");
            comm.trim().starts_with("postgres") && !matches!(state, "Z" | "X")
        }
        _ => true,
    }
}

/// Runs a PostgreSQL tool as its OS user (the server refuses root).
pub(crate) async fn run_as(user: &str, program: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let mut c = if user.is_empty() {
        tokio::process::Command::new(program)
    } else {
        let mut c = tokio::process::Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    };
    c.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = c.output().await.map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{} failed ({}): {}", program.display(), out.status, text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_killed_postmaster_not_yet_reaped_counts_as_gone() {
        // A process whose name starts with "postgres", as a postmaster's does.
        let dir = tempfile::tempdir().expect("tempdir");
        // A link, not a copy: a copy may still be open for writing in a
        // child another test forks meanwhile, and then exec fails with
        // "Text file busy". The process is named after the link.
        let exe = dir.path().join("postgres");
        std::os::unix::fs::symlink("/bin/sleep", &exe).expect("link sleep");
        let mut child = std::process::Command::new(&exe).arg("30").spawn().expect("spawn");
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n{}\n", child.id(), dir.path().display())).expect("pid file");
        // `spawn` returns once exec has begun, a moment before the kernel
        // renames the process after its new program: wait for the name.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !postmaster_alive(dir.path()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(postmaster_alive(dir.path()), "running");
        child.kill().expect("kill");
        // Not reaped: a zombie until wait().
        let deadline = Instant::now() + Duration::from_secs(5);
        while postmaster_alive(dir.path()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!postmaster_alive(dir.path()), "a zombie is gone");
        child.wait().expect("reap");
        assert!(!postmaster_alive(dir.path()), "reaped");
        std::fs::remove_file(dir.path().join("postmaster.pid")).expect("rm");
        assert!(!postmaster_alive(dir.path()), "no pid file: not running");
    }

    #[test]
    fn a_postmaster_pid_file_naming_no_postgres_process_is_not_alive() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!postmaster_alive(dir.path()), "no pid file");
        // This test's own pid: alive, but not a postgres process.
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n/data\n", std::process::id())).expect("write");
        assert!(!postmaster_alive(dir.path()));
        std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").expect("write");
        assert!(postmaster_alive(dir.path()), "unsure counts as running");
    }
}
