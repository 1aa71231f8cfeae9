//! Bad policies get the documented errors, all at once, with key paths and hints; every
//! shipped example policy parses.

use crate::support::*;

fn expect_policy_error(world: &World, body: &str, wanted: &[&str]) {
    world.write_policy(body);
    let out = world.backupd(&["run-now"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for w in wanted {
        assert!(stderr.contains(w), "expected {w:?} in:\n{stderr}");
    }
    assert!(!world.target_dir().exists(), "a bad policy changes nothing");
}

const HEAD: &str = "[encryption]\nmode = \"none\"\n\n[targets.local]\npath = \"target\"\n\n";

#[test]
fn unknown_kind_names_the_key_and_the_choices() {
    let world = World::new();
    expect_policy_error(
        &world,
        &format!(
            "{HEAD}[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.db]\nkind = \"postgress\"\nurl = \"x\"\n"
        ),
        &[
            "jobs.app.sources.db: unknown kind \"postgress\" (expected one of: directory, sqlite, postgres, mysql, redis)",
        ],
    );
}

#[test]
fn unknown_keys_are_rejected_at_every_level() {
    let world = World::new();
    expect_policy_error(
        &world,
        &format!("{HEAD}[deamon]\nstate_dir = \"x\"\n"),
        &["deamon: unknown key"],
    );
    expect_policy_error(
        &world,
        &format!(
            "{HEAD}[jobs.app]\ntargets = [\"local\"]\nretension = 3\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"s\"\n"
        ),
        &[
            "jobs.app.retension: unknown key (expected one of: schedule, jitter_secs, catch_up, coordination, lease_ttl_secs, timeout_secs",
        ],
    );
    expect_policy_error(
        &world,
        &format!(
            "{HEAD}[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"s\"\nexclud = [\"x\"]\n"
        ),
        &[
            "jobs.app.sources.s.exclud: unknown key (expected one of: path, exclude, allow_empty, incremental)",
        ],
    );
    expect_policy_error(
        &world,
        &format!("{HEAD}[targets.other]\nurl = \"file:///tmp/x\"\nregoin = \"eu\"\n"),
        &["targets.other.regoin: unknown key"],
    );
    expect_policy_error(
        &world,
        &format!("{HEAD}[targets.other]\nurl = \"file:///tmp/x\"\nregion = \"eu\"\n"),
        &["targets.other.region: does not apply to a file:// target"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let world = World::new();
    expect_policy_error(
        &world,
        &format!(
            "{HEAD}[jobs.App]\ntargets = [\"offsite\"]\ncompression = \"gzip\"\ncompression_level = 12\n\n[jobs.App.sources.db]\nkind = \"sqlite\"\n\n[jobs.App.sources.s]\nkind = \"directory\"\npath = \"s\"\nexclude = [\"[\"]\n"
        ),
        &[
            "invalid job name \"App\"",
            "jobs.App.targets: unknown target \"offsite\" (defined: local)",
            "jobs.App.compression_level: level 12 is out of range",
            "jobs.App.sources.db.path: required key is missing",
            "jobs.App.sources.s.exclude",
            "(5 problems)",
        ],
    );
}

/// Issue 15: an unknown key no longer hides the rest. Six problems in one file, one of
/// them an unknown key and one a `keep_within` that could mean minutes: all six reported.
#[test]
fn an_unknown_key_and_five_other_problems_are_all_reported() {
    let world = World::new();
    expect_policy_error(
        &world,
        &format!(
            "[daemon]\nmax_concurrent_jobs = 0\ncolour = \"red\"\n\n{HEAD}[jobs.app]\ntargets = [\"offsite\"]\nschedule = \"every day\"\nretention = {{ keep_last = 2, keep_within = \"6min\" }}\n\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"s\"\nfollow = true\n"
        ),
        &[
            "daemon.colour: unknown key",
            "daemon.max_concurrent_jobs: must be at least 1",
            "jobs.app.targets: unknown target \"offsite\"",
            "jobs.app.schedule",
            "jobs.app.retention.keep_within",
            "m (MONTHS)",
            "jobs.app.sources.s.follow: unknown key",
        ],
    );
}

#[test]
fn encryption_is_required_unless_opted_out() {
    let world = World::new();
    expect_policy_error(
        &world,
        "[targets.local]\npath = \"target\"\n[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"s\"\n",
        &[
            "encryption: snapshots are encrypted by default",
            "mode = \"none\"",
        ],
    );
    expect_policy_error(
        &world,
        "[encryption]\nrecipients = [\"age1notakey\"]\n[targets.local]\npath = \"target\"\n[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"s\"\n",
        &["encryption.recipients[0]", "age1notakey"],
    );
}

#[test]
fn syntax_errors_and_missing_files_are_explained() {
    let world = World::new();
    expect_policy_error(&world, "[jobs.app\n", &["policy.toml is invalid"]);
    let out = run(&["--config", "/nonexistent/policy.toml", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --config PATH or set BACKUPD_CONFIG"),
        "{}",
        text(&out)
    );
}

#[test]
fn env_overrides_apply_and_are_validated() {
    let world = World::new();
    std::fs::create_dir_all(world.path("s")).unwrap();
    std::fs::write(world.path("s/f"), "x").unwrap();
    // A state directory of its own: the default (/var/lib/backupd) is shared by every test
    // that leaves it out, and two runs of a job `app` there wait on one lock.
    let policy = world.write_policy(&format!("[daemon]\nstate_dir = \"state\"\n{HEAD}[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"s\"\n"));
    let out = std::process::Command::new(BIN)
        .args(["--config", policy.to_str().unwrap(), "run-now"])
        .env("BACKUPD_JOBS__APP__COMPRESSION", "zstd")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        world.stored(".tar.zst").len(),
        1,
        "the env override chose zstd"
    );
    let out = std::process::Command::new(BIN)
        .args(["--config", policy.to_str().unwrap(), "run-now"])
        .env("BACKUPD_JOBS__APP__COMPRESSION", "lz5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lz5"),
        "{}",
        text(&out)
    );
}

#[test]
fn every_shipped_policy_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            backupd::policy::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "config/ should hold the quickstart and a production example"
    );
}

/// Durations are strings with units everywhere; `*_secs` keys still take seconds (older
/// policies) and say what is wrong with a bad one.
#[test]
fn durations_take_units_and_seconds_keys_still_take_numbers() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a"), "a").unwrap();
    let job = |timeout: &str, hook: &str| {
        format!(
            "[daemon]\nstate_dir = \"state\"\nshutdown_timeout_secs = \"5m\"\n{HEAD}[jobs.app]\ntargets = [\"local\"]\ntimeout_secs = {timeout}\njitter_secs = 30\nhooks = {{ timeout_secs = {hook} }}\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"src\"\n"
        )
    };
    for (timeout, hook) in [("\"2h 30m\"", "\"90s\""), ("9000", "90")] {
        world.write_policy(&job(timeout, hook));
        let out = world.backupd(&["run-now"]);
        assert!(out.status.success(), "{timeout}: {}", text(&out));
    }
    // A bad one changes nothing.
    std::fs::remove_dir_all(world.target_dir()).unwrap();
    expect_policy_error(
        &world,
        &job("\"soon\"", "\"1500ms\""),
        &[
            "jobs.app.timeout_secs",
            "\"soon\" is not a duration",
            "jobs.app.hooks.timeout_secs",
            "whole seconds",
        ],
    );
}
