//! The coordinator's live status page in a real browser (Debian's headless
//! Chromium): every member with its role, and a failover the test causes,
//! appear without a reload; a screenshot is saved in the lab directory.
//!
//! The lab runs in plaintext (`insecure`): with TLS the page needs a viewer
//! certificate in the browser's store, which `observe.rs` covers for the
//! same listener with curl.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drc_tests::lab::{Lab, LabOptions, PG_CLUSTER};
use drc_tests::wait_for;

const LONG: Duration = Duration::from_secs(60);

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium (scripts/lib/install.sh installs it)")
}

/// Chromium, headless, with nothing that reaches beyond loopback.
fn browser(profile: &Path) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1400,1800",
        // Lets the page's polling run (about four times) before the DOM is read.
        "--virtual-time-budget=2500",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The page's DOM once its scripts have run.
fn dom(profile: &Path, url: &str) -> Option<String> {
    let out = browser(profile).arg("--dump-dom").arg(url).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_status_page_shows_every_member_and_a_failover_it_caused() {
    let dir = tempfile::Builder::new().prefix("drc-status-page-test-").tempdir().expect("tempdir");
    let lab = Lab::up_with(dir.path(), LabOptions { insecure: true, ..Default::default() }).expect("lab up");
    let profile = lab.info.dir.join("chromium-profile");
    // A follower or the leader: any coordinator serves the page.
    let url = format!("http://{}/", lab.info.coordinators[0].http_endpoint);

    let page = wait_for("every member on the page with its role", LONG, || {
        let page = dom(&profile, &url)?;
        let all = lab.info.members.iter().all(|m| page.contains(&format!("data-member=\"{}\"", m.id)));
        (all && page.contains("data-member=\"pg-a\" data-role=\"primary\"") && page.contains("data-member=\"pg-b\" data-role=\"replica\""))
            .then_some(page)
    })
    .expect("members shown");
    assert!(page.contains("class=\"live\""), "the page says it is live: {page}");
    assert!(page.contains("data-region=\"a\"") && page.contains("data-region=\"c\""), "regions side by side");

    let out = lab.drctl_json(&["failover", "--cluster", PG_CLUSTER, "--to", "pg-b", "--force"]).expect("failover");
    let id = out["decision_id"].as_u64().expect("decision id");
    let asked = Instant::now();
    let page = wait_for("the failover on the page", LONG, || {
        let page = dom(&profile, &url)?;
        (page.contains(&format!("data-decision=\"{id}\" data-kind=\"failover\"")) && page.contains("data-primary=\"pg-b\"")).then_some(page)
    })
    .expect("failover shown");
    println!("decision {id} on the page {:.1} s after drctl returned (each look starts a browser)", asked.elapsed().as_secs_f64());
    assert!(page.contains("pg-a → pg-b"), "the decision names its members");
    assert!(page.contains(">promote<"), "its steps are listed");

    let shot = lab.info.dir.join("status-page.png");
    let made = browser(&profile).arg(format!("--screenshot={}", shot.display())).arg(&url).output().expect("screenshot");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 20_000, "a screenshot of the page, not a blank one: {size} bytes");
    println!("screenshot: {}", shot.display());
    // For the README: DRC_STATUS_SCREENSHOT=docs/status-page.png keeps a copy.
    if let Ok(keep) = std::env::var("DRC_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("copy the screenshot");
    }
    lab.down().expect("lab down");
}
