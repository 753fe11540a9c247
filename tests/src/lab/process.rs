//! The lab's processes: started detached, signalled (a tree at a time, as
//! a machine dying or freezing would), stopped and reaped.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

/// Starts `program` in its own session (so it outlives `drc-lab up`), with
/// stdout and stderr appended to `log`.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: setsid(2) is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(child.id())
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaps our own children.
pub fn stop_pid(pid: u32, grace: Duration) {
    if pid == 0 || !alive(pid) {
        return;
    }
    // A process a fault froze stops only once it runs again.
    signal(pid, libc::SIGCONT);
    signal(pid, libc::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while alive(pid) && std::time::Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        signal(pid, libc::SIGKILL);
    }
    for _ in 0..100 {
        reap(pid);
        if !alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs a process and its children, as a machine dying would.
pub fn kill_tree(pid: u32) {
    signal_tree(pid, libc::SIGKILL);
}

/// Sends `sig` to `pid` and its children (a postmaster and its server
/// processes); every pid signalled.
pub fn signal_tree(pid: u32, sig: i32) -> Vec<u32> {
    let children = Command::new("pgrep").args(["-P", &pid.to_string()]).output().map(|o| o.stdout).unwrap_or_default();
    signal(pid, sig);
    let children: Vec<u32> = String::from_utf8_lossy(&children).lines().filter_map(|l| l.trim().parse::<u32>().ok()).collect();
    for child in &children {
        signal(*child, sig);
    }
    std::iter::once(pid).chain(children).collect()
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Reaps `pid` if it is our child and has exited. Only that pid: reaping
/// any child would steal the exit status of processes that other threads
/// (`Command::output`) are waiting for.
fn reap(pid: u32) {
    // SAFETY: waitpid(2) with WNOHANG on one pid; never blocks.
    #[allow(unsafe_code)]
    unsafe {
        libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
    }
}
