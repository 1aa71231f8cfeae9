//! Security properties: the systemd unit's exposure score, secrets absent from every
//! output channel, and the daemon surviving repeated SIGHUP/SIGTERM in the middle of jobs.

use std::process::Command;
use std::time::Duration;

use super::daemon_support::Daemon;
use super::support::{BIN, World, list_json, require_tool, text};

#[test]
fn the_systemd_unit_scores_below_2_in_systemd_analyze_security() {
    require_tool("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/backupd.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/backupd", BIN);
    let path = dir.path().join("backupd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = said
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for backupd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{said}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score < 2.0, "exposure {score}:\n{said}");
}

#[test]
fn secrets_never_reach_logs_status_metrics_or_webhooks() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f"), "data").unwrap();
    let (url, rx) = super::daemon_support::receiver();
    let token = "hook-token-7f3a9c";
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\n[targets.local]\nurl = \"file://{}\"\n\n[jobs.app]\nschedule = \"0 3 1 1 *\"\ntargets = [\"local\"]\nhealthcheck_url = \"{url}/ping/{token}\"\nverify = {{ after_backup = true }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n\n[[notify]]\nurl = \"{url}/hook/{token}\"\n",
        world.recipient,
        world.target_dir().display(),
        world.path("src").display()
    );
    world.write_policy(&body);
    let identity = std::fs::read_to_string(&world.key).unwrap();
    let secret_key = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let mut daemon = Daemon::start(&world, &[("BACKUPD_LOG", "debug")]);
    daemon.wait_status(30, "the catch-up run", |s| {
        s["jobs"]["app"]["runs_succeeded"] == 1
    });
    let (_, metrics) = daemon.get("/metrics");
    let (_, status) = daemon.get("/status");
    // Webhook bodies.
    let mut bodies = String::new();
    while let Ok(r) = rx.recv_timeout(Duration::from_secs(3)) {
        bodies.push_str(&r.body);
    }
    assert!(daemon.stop().success());
    let out = world.backupd(&["--log-level", "trace", "run-now", "app"]);
    let run_now = text(&out);
    let out = world.backupd(&["show-config"]);
    let shown = text(&out);
    for (channel, s) in [
        ("daemon logs", daemon.logs()),
        ("/metrics", metrics),
        ("/status", status),
        ("webhook bodies", bodies),
        ("run-now output at trace", run_now),
        ("show-config", shown),
    ] {
        assert!(!s.contains(token), "{channel} shows the webhook token");
        assert!(
            !s.contains(&secret_key),
            "{channel} shows the age secret key"
        );
    }
}

#[test]
fn repeated_sighup_and_a_sigterm_mid_job_leave_no_corruption_and_no_stuck_lock() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(
        world.path("src/big.bin"),
        super::support::noise(32 << 20, 4),
    )
    .unwrap();
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_secs = 1\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\n[targets.local]\nurl = \"file://{}\"\n\n[jobs.app]\nschedule = \"* * * * * *\"\ncatch_up = false\ntargets = [\"local\"]\ncompression_level = 9\nthreads = 1\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.recipient,
        world.target_dir().display(),
        world.path("src").display()
    );
    world.write_policy(&body);
    for round in 0..3 {
        let mut daemon = Daemon::start(&world, &[]);
        daemon.wait_status(30, "a job running", |s| {
            s["jobs"]["app"]["running"] == "backup"
        });
        for _ in 0..5 {
            daemon.signal("HUP");
            std::thread::sleep(Duration::from_millis(150));
        }
        let status = daemon.stop();
        assert!(
            status.success(),
            "round {round}: {status:?}\n{}",
            daemon.logs()
        );
    }
    // Everything committed verifies; nothing holds the lock.
    if !list_json(&world, &[]).is_empty() {
        let out = world.backupd(&["verify", "app", "all"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    std::fs::write(world.path("src/big.bin"), "small").unwrap();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
}
