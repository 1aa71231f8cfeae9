//! `backupd run` as a real process: schedules, overlap, reload, shutdown, systemd notify,
//! metrics, webhooks, catch-up, hooks and the job lock.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use chrono::{Timelike, Utc};

use super::daemon_support::{Daemon, receiver};
use super::support::{World, list_json, noise, text};

/// A policy with a listener on a free port and `extra_daemon` keys, plus `jobs`.
fn policy(world: &World, extra_daemon: &str, jobs: &str) {
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n{extra_daemon}\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\n[targets.local]\nurl = \"file://{}\"\n\n{jobs}",
        world.recipient,
        world.target_dir().display()
    );
    world.write_policy(&body);
}

fn files_job(world: &World, name: &str, schedule: &str, extra: &str) -> String {
    let src = world.path(&format!("src-{name}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.txt"), format!("data of {name}\n")).unwrap();
    format!(
        "[jobs.{name}]\nschedule = \"{schedule}\"\ntargets = [\"local\"]\n{extra}\n[jobs.{name}.sources.files]\nkind = \"directory\"\npath = \"{}\"\n\n",
        src.display()
    )
}

#[test]
fn a_slow_job_scheduled_every_second_never_overlaps_and_run_now_is_refused_meanwhile() {
    let world = World::new();
    let marks = world.path("marks.log");
    let m = marks.display();
    let job = files_job(
        &world,
        "slow",
        "* * * * * *",
        &format!(
            "catch_up = false\n[jobs.slow.hooks]\nbefore = [\"sh\", \"-c\", \"echo start $BACKUPD_JOB >> {m}; sleep 2\"]\nafter = [\"sh\", \"-c\", \"echo end $BACKUPD_STATUS $BACKUPD_SNAPSHOT >> {m}\"]\n"
        ),
    );
    policy(&world, "", &job);
    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(20, "a run in progress", |s| {
        s["jobs"]["slow"]["running"] == "backup"
    });
    // The daemon holds the job's lock: run-now is refused and names the holder.
    let out = world.backupd(&["run-now", "slow"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("job slow is already running"), "{said}");
    assert!(said.contains("backupd daemon, pid"), "{said}");

    daemon.wait_status(30, "three successful runs", |s| {
        s["jobs"]["slow"]["runs_succeeded"].as_u64() >= Some(3)
    });
    let status = daemon.status();
    assert!(
        status["jobs"]["slow"]["runs_skipped"].as_u64().unwrap() >= 2,
        "{status}"
    );
    let (_, metrics) = daemon.get("/metrics");
    let skipped = metric(&metrics, "backupd_job_skipped_total", &[("job", "slow")]);
    assert!(skipped >= 2.0, "{metrics}");
    assert!(daemon.stop().success(), "{}", daemon.logs());

    let lines: Vec<String> = std::fs::read_to_string(&marks)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // Strictly alternating: a run never started while another was going.
    for (i, l) in lines.iter().enumerate() {
        let expect = if i % 2 == 0 {
            "start slow"
        } else {
            "end success "
        };
        assert!(l.starts_with(expect), "line {i} {l:?} in {lines:?}");
    }
    assert_eq!(lines.len() % 2, 0, "a run was cut short: {lines:?}");
    // Every finished run committed exactly one snapshot, named in the after hook.
    let snapshots = list_json(&world, &[]);
    assert_eq!(snapshots.len(), lines.len() / 2);
    for s in &snapshots {
        let id = s["snapshot"].as_str().unwrap();
        assert!(
            lines.iter().any(|l| l.ends_with(id)),
            "{id} not in {lines:?}"
        );
        assert_eq!(s["tags"], serde_json::json!(["scheduled"]));
    }
}

/// The value of one sample in Prometheus text, parsed with a Prometheus parser.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses as Prometheus text");
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"));
    match sample.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name} is {other:?}"),
    }
}

#[test]
fn metrics_parse_and_match_the_committed_snapshot() {
    let world = World::new();
    // Yearly, so only the catch-up at start runs (no snapshot exists yet).
    let job = files_job(&world, "app", "0 3 1 1 *", "alert_if_older_than = \"1h\"\n");
    policy(&world, "", &job);
    let mut daemon = Daemon::start(&world, &[]);
    let status = daemon.wait_status(30, "the catch-up run", |s| {
        s["jobs"]["app"]["runs_succeeded"] == 1 && s["jobs"]["app"]["snapshots"]["local"] == 1
    });
    let (code, body) = daemon.get("/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);

    let snapshots = list_json(&world, &[]);
    assert_eq!(snapshots.len(), 1);
    let m = &snapshots[0];
    let stored: u64 = m["sources"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["stored"]["bytes"].as_u64().unwrap())
        .sum();
    let plain: u64 = m["sources"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["plain"]["bytes"].as_u64().unwrap())
        .sum();
    let job = [("job", "app")];
    assert_eq!(
        metric(&metrics, "backupd_job_last_stored_bytes", &job),
        stored as f64
    );
    assert_eq!(
        metric(&metrics, "backupd_job_last_plain_bytes", &job),
        plain as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "backupd_snapshots",
            &[("job", "app"), ("target", "local")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "backupd_job_runs_total",
            &[("job", "app"), ("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "backupd_job_runs_total",
            &[("job", "app"), ("result", "failure")]
        ),
        0.0
    );
    assert_eq!(metric(&metrics, "backupd_job_fresh", &job), 1.0);
    let started = chrono::DateTime::parse_from_rfc3339(m["started_at"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(m["finished_at"].as_str().unwrap()).unwrap();
    let snap_ts = metric(&metrics, "backupd_last_snapshot_timestamp_seconds", &job);
    assert!(
        (snap_ts - started.timestamp_millis() as f64 / 1000.0).abs() < 0.002,
        "{snap_ts} vs {started}"
    );
    let ok_ts = metric(&metrics, "backupd_job_last_success_timestamp_seconds", &job);
    assert!(
        ok_ts >= finished.timestamp() as f64,
        "{ok_ts} vs {finished}"
    );
    let next = metric(&metrics, "backupd_job_next_run_timestamp_seconds", &job);
    assert_eq!(
        Some(next as i64),
        status["jobs"]["app"]["next_run"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp())
    );

    // `backupd status` reads the same from the running daemon.
    let out = world.backupd(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let via_cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(via_cli["state"], "running");
    assert_eq!(
        via_cli["jobs"]["app"]["last_run"]["snapshot"],
        m["snapshot"]
    );
    assert!(daemon.stop().success());

    // With the daemon gone, status falls back to the state directory.
    let out = world.backupd(&["status"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("daemon: not running"), "{said}");
    let row = said
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no row for job app: {said}"));
    assert!(row.contains("0 3 1 1 *") && row.contains("✓ "), "{row}");
    // The state directory remembers the committed snapshot.
    let out = world.backupd(&["status", "--json"]);
    let remembered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(remembered["state"], "not running");
    assert_eq!(
        remembered["jobs"]["app"]["last_run"]["snapshot"],
        m["snapshot"]
    );
}

#[test]
fn sighup_applies_a_good_policy_and_keeps_the_old_one_when_the_new_is_bad() {
    let world = World::new();
    let a = files_job(&world, "a", "0 3 1 1 *", "catch_up = false\n");
    policy(&world, "", &a);
    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(20, "job a", |s| s["jobs"]["a"].is_object());

    let b = files_job(&world, "b", "0 4 1 1 *", "catch_up = false\n");
    policy(&world, "", &format!("{a}{b}"));
    daemon.signal("HUP");
    daemon.wait_status(20, "job b after reload", |s| {
        s["jobs"]["b"]["schedule"] == "0 4 1 1 *"
    });

    world.write_policy("[jobs.a]\nschedule = \"every day\"\nbogus = 1\n");
    daemon.signal("HUP");
    daemon.wait_log(20, "reload refused, the running policy stays in force");
    let logs = daemon.logs();
    assert!(logs.contains("jobs.a.bogus"), "{logs}");
    let s = daemon.status();
    assert!(
        s["jobs"]["a"].is_object() && s["jobs"]["b"].is_object(),
        "{s}"
    );
    assert_eq!(daemon.get("/healthz").0, 200);

    // Removing a job stops its schedule.
    policy(&world, "", &a);
    daemon.signal("HUP");
    daemon.wait_status(20, "job b gone", |s| s["jobs"].get("b").is_none());
    assert!(daemon.stop().success());
}

/// Job `big`: `mib` MiB of incompressible data at gzip -9 on one thread, several seconds
/// of work to interrupt.
fn slow_job(world: &World, mib: usize, extra: &str) -> String {
    let src = world.path("src-big");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), noise(mib << 20, 7)).unwrap();
    format!(
        "[jobs.big]\ntargets = [\"local\"]\ncompression_level = 9\nthreads = 1\n{extra}[jobs.big.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        src.display()
    )
}

#[test]
fn sigterm_during_a_long_backup_exits_0_and_commits_nothing() {
    let world = World::new();
    let job = slow_job(&world, 400, "schedule = \"0 3 1 1 *\"\n");
    policy(&world, "shutdown_timeout_secs = 1", &job);
    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_log(30, "backup started");
    std::thread::sleep(Duration::from_millis(500));
    let status = daemon.stop();
    let logs = daemon.logs();
    assert!(status.success(), "exit {status:?}:\n{logs}");
    assert!(
        logs.contains("shutdown_timeout_secs reached: cancelling"),
        "{logs}"
    );
    assert!(!logs.contains("snapshot committed"), "{logs}");
    assert!(list_json(&world, &[]).is_empty());
    // Uploads aborted and uploaded objects deleted: no file is left in the target.
    let files: Vec<_> = super::support::walk(&world.target_dir())
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(files.is_empty(), "left behind: {files:?}");
    // The lock died with the run: run-now can take the job at once.
    let out = world.backupd(&["run-now", "big"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn systemd_notify_protocol_ready_status_watchdog_stopping() {
    let world = World::new();
    let job = files_job(&world, "app", "0 3 1 1 *", "catch_up = false\n");
    policy(&world, "", &job);
    let sock_path = world.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut daemon = Daemon::start(
        &world,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            // Pings every 0.5 s.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if got.iter().any(|m| m.contains("READY=1")) && pings >= 3 {
            break;
        }
    }
    let ready = got.iter().find(|m| m.contains("READY=1")).expect("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    assert!(
        got.iter().any(|m| m.contains("STATUS=idle; next app at")),
        "{got:?}"
    );
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );

    daemon.signal("HUP");
    let mut after_hup = Vec::new();
    while !after_hup.iter().any(|m: &String| m.contains("READY=1")) {
        let n = sock.recv(&mut buf).expect("RELOADING/READY after SIGHUP");
        after_hup.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        after_hup.iter().any(|m| m.contains("RELOADING=1")),
        "{after_hup:?}"
    );

    daemon.signal("TERM");
    let mut tail = Vec::new();
    while !tail.iter().any(|m: &String| m.contains("STOPPING=1")) {
        let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        tail.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(daemon.wait_exit(30).success());
}

#[test]
fn webhooks_and_pings_receive_success_and_failure() {
    let world = World::new();
    let (url, rx) = receiver();
    let good = files_job(
        &world,
        "good",
        "0 3 1 1 *",
        &format!("healthcheck_url = \"{url}/ping/good\"\n"),
    );
    let bad = format!(
        "[jobs.bad]\nschedule = \"0 3 1 1 *\"\ntargets = [\"local\"]\n[jobs.bad.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("does-not-exist").display()
    );
    let body = format!("{good}{bad}\n[[notify]]\nurl = \"{url}/hook/secret-token\"\n");
    policy(&world, "", &body);
    let mut daemon = Daemon::start(&world, &[]);
    let mut events = Vec::new();
    let mut pings = Vec::new();
    while events.len() < 2 || pings.len() < 2 {
        let r = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("only {events:?} {pings:?}:\n{}", daemon.logs()));
        if r.path.starts_with("/hook/") {
            events.push(serde_json::from_str::<serde_json::Value>(&r.body).unwrap());
        } else {
            pings.push(r);
        }
    }
    assert!(daemon.stop().success());
    let by_job = |j: &str| events.iter().find(|e| e["job"] == j).unwrap().clone();
    let g = by_job("good");
    assert_eq!(g["event"], "success");
    assert_eq!(g["status"], "success");
    assert_eq!(g["committed"], serde_json::json!(["local"]));
    assert_eq!(g["snapshot"], list_json(&world, &["good"])[0]["snapshot"]);
    assert!(g["error"].is_null());
    let b = by_job("bad");
    assert_eq!(b["event"], "failure");
    assert!(
        b["error"].as_str().unwrap().contains("does-not-exist"),
        "{b}"
    );
    let ping_paths: Vec<&str> = pings.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(ping_paths, vec!["/ping/good/start", "/ping/good"]);
    // The token in the webhook URL is never logged.
    assert!(!daemon.logs().contains("secret-token"));
}

#[test]
fn catch_up_runs_a_missed_backup_once_after_a_restart() {
    let world = World::new();
    let placeholder = files_job(&world, "app", "0 3 1 1 *", "");
    policy(&world, "", &placeholder);
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    // A daily time 2 s from now: it passes while the daemon is "down".
    let at = Utc::now() + chrono::Duration::seconds(2);
    let schedule = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
    let job = files_job(&world, "app", &schedule, "");
    policy(&world, "", &job);
    std::thread::sleep(Duration::from_secs(3));

    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(30, "the catch-up run", |s| {
        s["jobs"]["app"]["runs_succeeded"] == 1
    });
    assert!(daemon.logs().contains("catching up"));
    assert!(daemon.stop().success());
    assert_eq!(list_json(&world, &[]).len(), 2);

    // Restarted right away, nothing was missed: no second catch-up.
    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(30, "the inventory", |s| {
        s["jobs"]["app"]["snapshots"]["local"] == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.status()["jobs"]["app"]["runs_succeeded"], 0);
    assert!(daemon.stop().success());
    assert_eq!(list_json(&world, &[]).len(), 2);
}

#[test]
fn a_failing_before_hook_aborts_the_backup_and_runs_on_failure() {
    let world = World::new();
    let marks = world.path("marks.log");
    let job = files_job(
        &world,
        "app",
        "0 3 1 1 *",
        &format!(
            "[jobs.app.hooks]\nbefore = [\"sh\", \"-c\", \"echo freezing failed >&2; exit 3\"]\nafter = [\"sh\", \"-c\", \"echo after >> {m}\"]\non_failure = [\"sh\", \"-c\", \"echo on_failure $BACKUPD_JOB $BACKUPD_STATUS >> {m}\"]\n",
            m = marks.display()
        ),
    );
    policy(&world, "", &job);
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("before hook `sh` failed"), "{said}");
    assert!(said.contains("freezing failed"), "{said}");
    assert!(list_json(&world, &[]).is_empty());
    assert!(
        super::support::walk(&world.target_dir())
            .iter()
            .all(|p| !p.is_file())
    );
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "on_failure app failure\n"
    );

    // A hook that hangs is killed at its timeout.
    let job = files_job(
        &world,
        "app",
        "0 3 1 1 *",
        "[jobs.app.hooks]\nbefore = [\"sleep\", \"30\"]\ntimeout_secs = 1\n",
    );
    policy(&world, "", &job);
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("timed out after 1 s"), "{said}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let world = World::new();
    let job = files_job(&world, "app", "0 3 1 1 *", "");
    policy(&world, "", &job);
    let out = world.backupd(&["--log-format", "json", "run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let mut saw_commit = false;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        saw_commit |= v["message"] == "snapshot committed" && v["job"] == "app";
    }
    assert!(saw_commit, "{stderr}");
}

#[test]
fn bad_schedules_and_daemon_settings_are_policy_errors() {
    let world = World::new();
    let job = files_job(&world, "app", "0 25 * * *", "timeout_secs = 0\n");
    policy(&world, "max_concurrent_jobs = 0\n", &job);
    let out = world.backupd(&["check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for words in [
        "jobs.app.schedule: \"0 25 * * *\" is not a cron expression",
        "jobs.app.timeout_secs: must be above 0",
        "daemon.max_concurrent_jobs: must be at least 1",
    ] {
        assert!(said.contains(words), "{words:?} missing from {said}");
    }
}

#[test]
fn freshness_alarm_goes_off_once_and_recovers_when_run_now_lands_a_snapshot() {
    let world = World::new();
    let (url, rx) = receiver();
    let job = files_job(
        &world,
        "app",
        "0 3 1 1 *",
        "catch_up = false\nalert_if_older_than = \"2s\"\n",
    );
    policy(
        &world,
        "",
        &format!("{job}\n[[notify]]\nurl = \"{url}/hook\"\nevents = [\"stale\", \"recovered\"]\n"),
    );
    let mut daemon = Daemon::start(&world, &[]);
    let stale = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a stale event");
    let stale: serde_json::Value = serde_json::from_str(&stale.body).unwrap();
    assert_eq!(
        (stale["event"].as_str(), stale["job"].as_str()),
        (Some("stale"), Some("app"))
    );
    assert!(
        stale["error"]
            .as_str()
            .unwrap()
            .contains("no committed snapshot newer than 2s"),
        "{stale}"
    );
    let (_, metrics) = daemon.get("/metrics");
    assert_eq!(
        metric(&metrics, "backupd_job_fresh", &[("job", "app")]),
        0.0
    );
    // Once only, not every second.
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err());

    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let back = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a recovered event");
    let back: serde_json::Value = serde_json::from_str(&back.body).unwrap();
    assert_eq!(
        (back["event"].as_str(), back["status"].as_str()),
        (Some("recovered"), Some("fresh"))
    );
    let s = daemon.status();
    assert_eq!(s["jobs"]["app"]["last_run"]["by"], "run-now", "{s}");
    assert!(daemon.stop().success());
}

#[test]
fn scheduled_verification_records_passes_and_reports_a_corrupt_snapshot() {
    let world = World::new();
    let (url, rx) = receiver();
    let job = files_job(
        &world,
        "app",
        "0 3 1 1 *",
        "catch_up = false\nverify = { schedule = \"*/2 * * * * *\" }\n",
    );
    policy(
        &world,
        "",
        &format!("{job}\n[[notify]]\nurl = \"{url}/hook\"\n"),
    );
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(30, "a scheduled verification", |s| {
        !s["jobs"]["app"]["last_verified_at"].is_null()
    });
    let (_, metrics) = daemon.get("/metrics");
    let verified = metric(
        &metrics,
        "backupd_last_verified_timestamp_seconds",
        &[("job", "app")],
    );
    assert!(verified > 0.0);
    assert_eq!(
        metric(&metrics, "backupd_verify_failures_total", &[("job", "app")]),
        0.0
    );
    let records = world.stored(".json");
    assert!(
        records
            .iter()
            .any(|p| p.to_string_lossy().contains("/verify/")),
        "{records:?}"
    );

    // Flip a byte in the stored object: the next scheduled verification must catch it.
    let object = world.stored(".tar.gz.age").pop().unwrap();
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();
    daemon.wait_status(30, "a failed verification", |s| {
        s["jobs"]["app"]["verify_failures"].as_u64() >= Some(1)
    });
    let event = loop {
        let r = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a verification failure event");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if v["event"] == "verify_failure" {
            break v;
        }
    };
    assert_eq!(event["status"], "failure", "{event}");
    assert!(
        event["error"]
            .as_str()
            .unwrap()
            .starts_with("verification failed"),
        "{event}"
    );
    let (_, metrics) = daemon.get("/metrics");
    assert!(metric(&metrics, "backupd_verify_failures_total", &[("job", "app")]) >= 1.0);
    assert!(daemon.stop().success());
}

#[test]
fn a_run_past_timeout_secs_is_cancelled_and_commits_nothing() {
    let world = World::new();
    let job = slow_job(&world, 300, "timeout_secs = 1\n");
    policy(&world, "", &job);
    let out = world.backupd(&["run-now", "big"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cancelled after timeout_secs = 1; nothing was committed"),
        "{said}"
    );
    assert!(list_json(&world, &[]).is_empty());
    assert!(
        super::support::walk(&world.target_dir())
            .iter()
            .all(|p| !p.is_file())
    );
}
