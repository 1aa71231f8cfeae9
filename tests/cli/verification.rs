//! Verification by test-restore against real corruption, and retention over snapshot
//! sets written straight into a local target.

use crate::support::*;

fn tree_and_db(world: &World, extra: &str) {
    tricky_tree(&world.path("src"), 1 << 20);
    sh(&format!(
        "sqlite3 '{}' \"create table t(x); insert into t values (1),(2),(3);\"",
        world.path("app.db").display()
    ));
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n{extra}\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n\n[jobs.app.sources.db]\nkind = \"sqlite\"\npath = \"app.db\"\n"
    ));
}

/// A world with one committed snapshot of the tree-and-database job.
fn backed_up() -> World {
    let world = World::new();
    tree_and_db(&world, "");
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    world
}

#[test]
fn a_good_snapshot_verifies_and_the_result_is_recorded() {
    let world = backed_up();
    let out = world.backupd(&["verify", "app", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["ok"], true);
    let names: Vec<&str> = records[0]["sources"]["tree"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "decrypt",
            "restore rules",
            "file count",
            "directory count",
            "symlink count",
            "file bytes",
            "sha256",
            "index"
        ]
    );
    let db_checks = records[0]["sources"]["db"]["checks"].to_string();
    assert!(
        db_checks.contains("integrity_check") && db_checks.contains("rows in t"),
        "{db_checks}"
    );
    assert_eq!(
        world
            .stored(".json")
            .iter()
            .filter(|p| p.to_string_lossy().contains("/verify/"))
            .count(),
        1
    );
    let listed = list_json(&world, &["app"]);
    assert_eq!(listed[0]["last_verification"]["ok"], true);
    let scratch = world.path("state/tmp");
    assert_eq!(
        std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0),
        0,
        "scratch files removed"
    );
}

fn verify_fails_after(world: &World, damage: impl FnOnce(&std::path::Path), wanted: &[&str]) {
    let obj = world.stored(".tar.gz.age").pop().expect("tree object");
    damage(&obj);
    let out = world.backupd(&["verify", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let snapshot = list_json(world, &["app"])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        stdout.contains(&format!("app/{snapshot}")),
        "names job and snapshot: {stdout}"
    );
    assert!(stdout.contains("source tree"), "names the source: {stdout}");
    for w in wanted {
        assert!(stdout.contains(w), "expected {w:?} in {stdout}");
    }
    let listed = list_json(world, &["app"]);
    assert_eq!(listed[0]["last_verification"]["ok"], false);
}

#[test]
fn a_flipped_byte_fails_verification() {
    let world = backed_up();
    verify_fails_after(
        &world,
        |p| {
            let mut b = std::fs::read(p).unwrap();
            let i = b.len() / 2;
            b[i] ^= 1;
            std::fs::write(p, b).unwrap();
        },
        &["check \"sha256\" failed"],
    );
}

#[test]
fn a_truncated_object_fails_verification() {
    let world = backed_up();
    verify_fails_after(
        &world,
        |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() - 100]).unwrap();
        },
        &["failed"],
    );
}

#[test]
fn a_missing_object_fails_verification() {
    let world = backed_up();
    verify_fails_after(
        &world,
        |p| std::fs::remove_file(p).unwrap(),
        &["check \"object present\" failed"],
    );
}

#[test]
fn a_wrong_identity_fails_verification_clearly() {
    let world = backed_up();
    let other = world.path("other.txt");
    assert!(
        run(&["keygen", "--output", other.to_str().unwrap()])
            .status
            .success()
    );
    let out = world.backupd(&["verify", "app", "--identity", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("check \"decrypt\" failed") && stdout.contains(&world.recipient),
        "{stdout}"
    );
}

#[test]
fn verify_after_backup_runs_and_a_failure_fails_the_run() {
    let world = World::new();
    tree_and_db(&world, "verify = { after_backup = true }\n");
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": OK ("),
        "{}",
        text(&out)
    );
    // Without a usable identity the verification cannot run: the run says so and fails.
    std::fs::remove_file(&world.key).unwrap();
    let out = world.backupd(&["run-now"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("verification after backup could not start"),
        "{}",
        text(&out)
    );
    let out = world.backupd(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("verify.after_backup needs a readable encryption.identity_file"),
        "{}",
        text(&out)
    );
}

/// Writes a committed snapshot of `job` with the given start time straight into the target.
/// Like a snapshot from before signing it has no seal: worlds that use these accept
/// unsigned snapshots started before December 2026 (`accept_unsigned_before`).
fn synthetic(world: &World, job: &str, time: &str, tags: &[&str]) -> String {
    let t: chrono::DateTime<chrono::Utc> = format!("{time}:00Z").parse().unwrap();
    let id = format!("{}-abcdef", t.format("%Y-%m-%dT%H-%M-%S%.3fZ"));
    let dir = world.target_dir().join(job).join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = serde_json::json!({
        // No `instance`, like a manifest from before instances: it counts as its host's,
        // which is this machine.
        "format": 1, "job": job, "snapshot": id,
        "host": gethostname::gethostname().to_string_lossy(), "backupd_version": "0",
        "started_at": t, "finished_at": t, "tags": tags, "sources": {}
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    id
}

/// Lets the world's `[signing]` accept `synthetic` (unsigned, older) snapshots.
fn accept_legacy(world: &World) {
    let body = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    world.write_policy(&body.replacen(
        "[signing]\n",
        "[signing]\naccept_unsigned_before = \"2026-12-01T00:00:00Z\"\n",
        1,
    ));
}

#[test]
fn prune_applies_the_plan_and_sweeps_leftovers() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    world.policy(
        "[jobs.app]\ntargets = [\"local\"]\nretention = { keep_daily = 2, keep_tags = [\"pre-migration\"] }\n\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"src\"\nallow_empty = true\n",
    );
    accept_legacy(&world);
    let old_tagged = synthetic(
        &world,
        "app",
        "2026-01-01T10:00",
        &["manual", "pre-migration"],
    );
    let d1_early = synthetic(&world, "app", "2026-11-01T01:00", &[]);
    let d1_late = synthetic(&world, "app", "2026-11-01T23:00", &[]);
    let d2 = synthetic(&world, "app", "2026-11-02T12:00", &[]);
    let old = synthetic(&world, "app", "2026-10-01T12:00", &[]);
    // Leftovers: an old uncommitted snapshot (with a hidden upload part) and a young one.
    let stale = "2026-10-02T00-00-00.000Z-dead00";
    std::fs::create_dir_all(world.target_dir().join("app").join(stale)).unwrap();
    std::fs::write(
        world
            .target_dir()
            .join("app")
            .join(stale)
            .join("s.tar.gz.age#1"),
        "partial",
    )
    .unwrap();
    let young = chrono::Utc::now()
        .format("%Y-%m-%dT%H-%M-%S%.3fZ-beef00")
        .to_string();
    std::fs::create_dir_all(world.target_dir().join("app").join(&young)).unwrap();
    std::fs::write(
        world
            .target_dir()
            .join("app")
            .join(&young)
            .join("s.tar.gz.age"),
        "running",
    )
    .unwrap();

    let out = world.backupd(&["prune", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deleted: Vec<&str> = plan[0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["snapshot"].as_str().unwrap())
        .collect();
    let mut expected = vec![d1_early.as_str(), old.as_str()];
    expected.sort();
    let mut deleted_sorted = deleted.clone();
    deleted_sorted.sort();
    assert_eq!(deleted_sorted, expected);
    assert_eq!(plan[0]["orphans"], serde_json::json!([stale]));
    assert_eq!(
        list_json(&world, &["app"]).len(),
        5,
        "--dry-run deletes nothing"
    );

    let out = world.backupd(&["prune"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("keep    {old_tagged}  tag pre-migration")),
        "{stdout}"
    );
    let left: Vec<String> = list_json(&world, &["app"])
        .iter()
        .map(|m| m["snapshot"].as_str().unwrap().to_string())
        .collect();
    let mut want = vec![old_tagged, d1_late, d2];
    want.sort();
    want.reverse();
    assert_eq!(left, want);
    assert!(
        !world.target_dir().join("app").join(stale).exists(),
        "stale leftovers swept"
    );
    assert!(
        world.target_dir().join("app").join(&young).exists(),
        "a young one may be a running backup"
    );
    assert!(
        !world.target_dir().join("app").join(&d1_early).exists(),
        "deleted snapshot's directory is gone"
    );

    // Idempotent: a second prune deletes nothing more.
    let out = world.backupd(&["prune", "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again[0]["deleted"], serde_json::json!([]));
}

#[test]
fn the_newest_verified_snapshot_survives_keep_last_1() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f"), "x").unwrap();
    let job = |after: bool| {
        format!(
            "[jobs.app]\ntargets = [\"local\"]\nretention = {{ keep_last = 1 }}\nverify = {{ after_backup = {after} }}\n\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"src\"\n"
        )
    };
    world.policy(&job(true));
    assert!(world.backupd(&["run-now"]).status.success());
    let verified = list_json(&world, &["app"])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    world.policy(&job(false));
    for _ in 0..2 {
        let out = world.backupd(&["run-now"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let left: Vec<String> = list_json(&world, &["app"])
        .iter()
        .map(|m| m["snapshot"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.contains(&verified),
        "the newest verified snapshot must survive: {left:?}"
    );
}

#[test]
fn retention_that_keeps_nothing_is_a_policy_error() {
    let world = World::new();
    world.policy("[jobs.app]\ntargets = [\"local\"]\nretention = { keep_daily = 0 }\n\n[jobs.app.sources.s]\nkind = \"directory\"\npath = \"src\"\n");
    let out = world.backupd(&["prune"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("jobs.app.retention: these rules keep nothing"),
        "{}",
        text(&out)
    );
}
