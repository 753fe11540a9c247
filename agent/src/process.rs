//! The processes the agent looks after: whether a postmaster still runs,
//! running PostgreSQL's tools as their OS user, and the stages of a
//! pipeline (a backup, the WAL archive) with their stderr kept.

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

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

/// The postmaster's pid from `data_dir/postmaster.pid`, if the file names one.
pub(crate) fn postmaster_pid(data_dir: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4, the parent, after the parenthesised command name.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok()) == Some(parent)
        })
        .collect()
}

/// SIGKILLs the postmaster of `data_dir` and every process it started, its
/// children first (once it is gone they are no longer found by parent).
/// Works on a frozen (SIGSTOPped) server, which ignores every other signal
/// until it runs again, so that a hung server is fenced at once: nothing it
/// does after it wakes is acknowledged, and it restarts only through crash
/// recovery. Returns once the postmaster counts as gone, or after `wait`.
pub async fn kill_postmaster(data_dir: &std::path::Path, wait: std::time::Duration) -> Result<(), String> {
    use rustix::process::{kill_process, Pid, Signal};
    let Some(pid) = postmaster_pid(data_dir).filter(|_| postmaster_alive(data_dir)) else { return Ok(()) };
    for p in children_of(pid).into_iter().chain([pid]) {
        if let Some(p) = Pid::from_raw(p) {
            // Gone already (ESRCH) is what is wanted.
            let _ = kill_process(p, Signal::KILL);
        }
    }
    let deadline = std::time::Instant::now() + wait;
    while postmaster_alive(data_dir) {
        if std::time::Instant::now() > deadline {
            return Err(format!("the postmaster (pid {pid}) is still alive {wait:?} after SIGKILL"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
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

/// A child process of a pipeline stage, with its stderr drained in the
/// background (a full pipe would block it).
pub(crate) struct Proc {
    child: Child,
    stderr: Option<tokio::task::JoinHandle<String>>,
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// The first 256 KiB of what a stage wrote to stderr, read to its end.
async fn drain(mut e: tokio::process::ChildStderr) -> String {
    const KEEP: usize = 256 * 1024;
    let (mut kept, mut buf) = (Vec::new(), vec![0u8; 16 * 1024]);
    while let Ok(n) = e.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = KEEP.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// A stage's stderr (the end of it, for an error message: last 5 lines).
pub(crate) async fn stderr_of(p: &mut Proc) -> String {
    let s = stderr_text(p).await;
    s.trim().lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// The whole captured stderr of a stage.
pub(crate) async fn stderr_text(p: &mut Proc) -> String {
    match p.stderr.take() {
        Some(h) => h.await.unwrap_or_default(),
        None => String::new(),
    }
}

pub(crate) fn spawn(cmd: &mut Command, what: &str) -> Result<Proc, String> {
    let mut child = cmd.kill_on_drop(true).spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let stderr = child.stderr.take().map(|e| tokio::spawn(drain(e)));
    Ok(Proc { child, stderr })
}

/// Every process must have succeeded, or the output is not a backup.
pub(crate) async fn wait_all(children: &mut [(&str, &mut Proc)]) -> Result<(), String> {
    for (what, c) in children.iter_mut() {
        let s = c.wait().await.map_err(|e| e.to_string())?;
        if !s.success() {
            return Err(format!("{what} failed ({s}): {}", stderr_of(c).await));
        }
    }
    Ok(())
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

    #[tokio::test]
    async fn a_frozen_postmaster_and_its_children_are_killed() {
        // A "postmaster" (a shell named postgres) with one child, both
        // frozen, as a hung server is.
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("postgres");
        std::os::unix::fs::symlink("/bin/sh", &exe).expect("link sh");
        let mut parent = std::process::Command::new(&exe).args(["-c", "sleep 30 & wait"]).spawn().expect("spawn");
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n", parent.id())).expect("pid file");
        let pid = parent.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        while (children_of(pid).is_empty() || !postmaster_alive(dir.path())) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let children = children_of(pid);
        assert_eq!(children.len(), 1, "the shell's sleep");
        for p in children.iter().chain([&pid]) {
            std::process::Command::new("kill").args(["-STOP", &p.to_string()]).status().expect("SIGSTOP");
        }
        // Reaped in the background, so that the postmaster does not linger as a zombie.
        let reaper = std::thread::spawn(move || parent.wait());
        kill_postmaster(dir.path(), Duration::from_secs(5)).await.expect("killed");
        reaper.join().expect("joined").expect("reaped");
        assert!(!postmaster_alive(dir.path()));
        let child_gone = |c: i32| {
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
            stat.is_empty() || stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !children.iter().all(|c| child_gone(*c)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(children.iter().all(|c| child_gone(*c)), "the child was killed too");
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
