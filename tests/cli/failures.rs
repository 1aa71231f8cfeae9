//! What must not become a snapshot, and bad input that must change nothing.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn a_failing_source_commits_nothing_and_cleans_up() {
    let world = World::new();
    std::fs::create_dir_all(world.path("good")).unwrap();
    std::fs::write(world.path("good/f.txt"), "fine").unwrap();
    world.policy(
        "[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.good]\nkind = \"directory\"\npath = \"good\"\n\n[jobs.app.sources.gone]\nkind = \"directory\"\npath = \"not-mounted\"\n",
    );
    let out = world.backupd(&["run-now"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("good") && stdout.contains("ok"),
        "every source's outcome is reported: {stdout}"
    );
    assert!(stdout.contains("not-mounted does not exist"), "{stdout}");
    assert!(world.stored("manifest.json").is_empty());
    assert!(
        world.stored(".age").is_empty(),
        "uploaded objects of a failed snapshot are removed"
    );
    assert!(list_json(&world, &[]).is_empty());
}

#[test]
fn an_empty_tree_fails_unless_allowed() {
    let world = World::new();
    std::fs::create_dir_all(world.path("mnt")).unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.mnt]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("mnt").display()
    ));
    let out = world.backupd(&["run-now"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("allow_empty"),
        "{}",
        text(&out)
    );
    let policy = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    world.write_policy(&format!("{policy}allow_empty = true\n"));
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn kill_9_mid_backup_leaves_no_manifest() {
    let world = World::new();
    std::fs::create_dir_all(world.path("big")).unwrap();
    // Random data at gzip level 9: slow enough to be caught mid-stream.
    std::fs::write(world.path("big/random.bin"), noise(300 << 20, 7)).unwrap();
    std::fs::create_dir_all(world.path("small")).unwrap();
    std::fs::write(world.path("small/f.txt"), "small").unwrap();
    world.policy(
        "[jobs.big]\ntargets = [\"local\"]\ncompression_level = 9\n\n[jobs.big.sources.big]\nkind = \"directory\"\npath = \"big\"\n\n[jobs.small]\ntargets = [\"local\"]\n\n[jobs.small.sources.small]\nkind = \"directory\"\npath = \"small\"\n",
    );
    let mut child = Command::new(BIN)
        .args([
            "--config",
            world.path("policy.toml").to_str().unwrap(),
            "run-now",
            "big",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until data is landing on the target, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let landed: u64 = walk(&world.target_dir())
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        if landed > 20 << 20 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no data reached the target");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert!(
        world.stored("manifest.json").is_empty(),
        "a killed backup must not be committed"
    );
    assert!(list_json(&world, &[]).is_empty());
    let restore = world.path("r");
    let out = world.backupd(&["restore", "big", "--to", restore.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no committed snapshot"),
        "{}",
        text(&out)
    );

    // The next run works next to the leftovers.
    let out = world.backupd(&["run-now", "small"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = list_json(&world, &[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["job"], "small");
}

#[test]
fn a_corrupt_object_fails_the_restore_loudly() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/data.bin"), noise(2 << 20, 3)).unwrap();
    world.policy("[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n");
    assert!(world.backupd(&["run-now"]).status.success());
    let obj = &world.stored(".tar.gz.age")[0];
    let mut bytes = std::fs::read(obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(obj, bytes).unwrap();
    let to = world.path("r");
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED to restore tree"), "{stdout}");
    assert!(stdout.contains("must not be trusted"), "{stdout}");
}

#[test]
fn an_exposed_identity_file_is_refused() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f.txt"), "x").unwrap();
    world.policy("[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n");
    assert!(world.backupd(&["run-now"]).status.success());
    std::fs::set_permissions(&world.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let to = world.path("r");
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out)
    );
    assert!(!to.exists(), "nothing is written when the key is refused");
}

#[test]
fn a_wrong_identity_names_the_recipients() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f.txt"), "x").unwrap();
    world.policy("[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n");
    assert!(world.backupd(&["run-now"]).status.success());
    let other = world.path("other.txt");
    assert!(
        run(&["keygen", "--output", other.to_str().unwrap()])
            .status
            .success()
    );
    let to = world.path("r");
    let out = world.backupd(&[
        "restore",
        "app",
        "--to",
        to.to_str().unwrap(),
        "--identity",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&world.recipient),
        "{}",
        text(&out)
    );
}

#[test]
fn keygen_never_overwrites_a_key() {
    let world = World::new();
    let before = std::fs::read(&world.key).unwrap();
    let out = run(&["keygen", "--output", world.key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&world.key).unwrap(), before);
}

#[test]
fn check_probes_targets_and_sources() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    world.policy("[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n");
    let out = world.backupd(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
    assert!(world.stored("").is_empty(), "the probe object is removed");

    // A file where the target directory should be: unreachable, even for root.
    std::fs::remove_dir_all(world.target_dir()).unwrap();
    std::fs::write(world.target_dir(), "in the way").unwrap();
    std::fs::remove_dir(world.path("src")).unwrap();
    let out = world.backupd(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL  target local"), "{stdout}");
    assert!(
        stdout.contains("FAIL  jobs.app.sources.tree"),
        "every finding is printed: {stdout}"
    );
}

#[test]
fn run_now_with_an_unknown_job_is_a_usage_error() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    world.policy("[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n");
    let out = world.backupd(&["run-now", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("jobs: app"),
        "{}",
        text(&out)
    );
    assert!(!world.target_dir().exists(), "nothing was touched");
}

#[test]
fn an_unreachable_target_does_not_stop_the_others() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f.txt"), "x").unwrap();
    // A file where the second target's directory should be: unreachable, even for root.
    std::fs::write(world.path("broken"), "in the way").unwrap();
    world.policy(
        "[targets.broken]\npath = \"broken\"\n\n[jobs.app]\ntargets = [\"local\", \"broken\"]\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n",
    );
    let out = world.backupd(&["run-now"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missed target fails the run: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("committed to local only"), "{stdout}");
    assert!(stdout.contains("target broken FAILED"), "{stdout}");
    let listed = list_json(&world, &["app", "--target", "local"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["targets"], serde_json::json!(["local"]));
}
