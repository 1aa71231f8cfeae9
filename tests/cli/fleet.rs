//! One bucket, many hosts: instances (issue 14). Hosts are simulated by distinct
//! `daemon.instance` values set from the environment, as a fleet deploys one policy.

use std::io::Write;
use std::process::Command;

use super::daemon_support::Daemon;
use super::support::{BIN, World, text};

/// Runs backupd on the world's policy as instance `instance`.
fn as_instance(world: &World, instance: &str, args: &[&str]) -> std::process::Output {
    let policy = world.path("policy.toml");
    Command::new(BIN)
        .arg("--config")
        .arg(&policy)
        .args(args)
        .env("BACKUPD_DAEMON__INSTANCE", instance)
        .env_remove("BACKUPD_CONFIG")
        .output()
        .unwrap()
}

fn listed(world: &World, instance: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(extra);
    let out = as_instance(world, instance, &args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_instances_on_one_target_each_keep_their_own_and_restore_their_own() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nretention = {{ keep_last = 2 }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    // The reproduction: one policy, two hosts, three alternating runs each.
    for round in 0..3 {
        for host in ["alpha", "beta"] {
            std::fs::write(world.path("src/who.txt"), format!("{host} {round}")).unwrap();
            let out = as_instance(&world, host, &["run-now", "app"]);
            assert!(out.status.success(), "{host} {round}: {}", text(&out));
        }
    }
    let alpha = listed(&world, "alpha", &[]);
    let beta = listed(&world, "beta", &[]);
    assert_eq!(alpha.len(), 2, "alpha keeps its own 2");
    assert_eq!(beta.len(), 2, "beta keeps its own 2");
    assert!(alpha.iter().all(|m| m["instance"] == "alpha"));
    assert_eq!(listed(&world, "alpha", &["--all-instances"]).len(), 4);
    assert_eq!(listed(&world, "alpha", &["--instance", "beta"]).len(), 2);
    let table = text(&as_instance(&world, "alpha", &["list"]));
    assert!(
        table.contains("INSTANCE") && table.contains("--all-instances"),
        "{table}"
    );

    // latest is this instance's own; another's only when named.
    let to = world.path("alpha-restore");
    let out = as_instance(
        &world,
        "alpha",
        &["restore", "app", "--to", to.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(to.join("files/who.txt")).unwrap(),
        "alpha 2"
    );
    // Disaster recovery on a new host: it has nothing of its own, and is told who has.
    let to = world.path("gamma-restore");
    let out = as_instance(
        &world,
        "gamma",
        &["restore", "app", "--to", to.to_str().unwrap()],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("instances that have: alpha, beta"), "{said}");
    let out = as_instance(
        &world,
        "gamma",
        &[
            "restore",
            "app",
            "--instance",
            "beta",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(to.join("files/who.txt")).unwrap(),
        "beta 2"
    );

    // Retiring beta: an operator prunes its snapshots by name, dry run first.
    let out = as_instance(
        &world,
        "alpha",
        &["prune", "app", "--instance", "beta", "--dry-run", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan[0]["instance"], "beta");
    assert_eq!(plan[0]["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(
        listed(&world, "alpha", &["--all-instances"]).len(),
        4,
        "dry run deletes nothing"
    );
}

#[test]
fn snapshots_from_before_instances_count_as_their_host() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    std::fs::write(world.path("src/a"), "x").unwrap();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    // This build wrote instance = the host name by default.
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let all = listed(&world, "whoever", &["--all-instances"]);
    assert_eq!(all[0]["instance"], host.as_str());
    let out = as_instance(&world, "bad/name", &["list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("daemon.instance"), "{}", text(&out));
}

#[test]
fn fleet_shows_every_instance_and_flags_a_silent_one() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a"), "x").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nalert_if_older_than = \"5s\"\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let out = as_instance(&world, "dead", &["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    // The host "dies"; alpha goes on backing up.
    std::thread::sleep(std::time::Duration::from_secs(6));
    for _ in 0..2 {
        let out = as_instance(&world, "alpha", &["run-now", "app"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = as_instance(&world, "alpha", &["fleet", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a stale instance fails fleet: {}",
        text(&out)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    let row = |i: &str| rows.iter().find(|r| r["instance"] == i).unwrap().clone();
    assert_eq!(row("alpha")["snapshots"], 2);
    assert_eq!(row("alpha")["stale"], false);
    assert_eq!(row("dead")["stale"], true);
    assert!(row("dead")["newest_age_seconds"].as_i64().unwrap() >= 6);
    let table = text(&as_instance(&world, "alpha", &["fleet"]));
    assert!(table.contains("STALE") && table.contains("dead"), "{table}");
}

#[test]
fn an_unknown_instance_is_named_as_such_and_nothing_is_deleted() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a"), "x").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nretention = {{ keep_last = 1 }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    for _ in 0..2 {
        let out = as_instance(&world, "alpha", &["run-now", "app"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = as_instance(&world, "alpha", &["prune", "app", "--instance", "alpah"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("instance alpah has no snapshots") && said.contains("alpha"),
        "{said}"
    );
    assert_eq!(listed(&world, "alpha", &[]).len(), 1);
}

#[test]
fn the_daemon_exports_every_instance_so_one_alert_catches_a_dead_host() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a"), "x").unwrap();
    world.policy(&format!(
        "[jobs.app]\nschedule = \"0 3 1 1 *\"\ncatch_up = false\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let body = std::fs::read_to_string(world.path("policy.toml"))
        .unwrap()
        .replacen("[daemon]\n", "[daemon]\nlisten = \"127.0.0.1:0\"\n", 1);
    world.write_policy(&body);
    for (host, runs) in [("alpha", 1), ("beta", 2)] {
        for _ in 0..runs {
            let out = as_instance(&world, host, &["run-now", "app"]);
            assert!(out.status.success(), "{}", text(&out));
        }
    }
    let mut daemon =
        super::daemon_support::Daemon::start(&world, &[("BACKUPD_DAEMON__INSTANCE", "alpha")]);
    daemon.wait_status(60, "the fleet inventory", |s| {
        s["jobs"]["app"]["fleet"]
            .as_array()
            .is_some_and(|f| f.len() == 2)
    });
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let line = |instance: &str, family: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(family) && l.contains(&format!("instance=\"{instance}\"")))
            .unwrap_or_else(|| panic!("no {family} for {instance}:\n{metrics}"))
            .to_string()
    };
    assert!(
        line("beta", "backupd_fleet_snapshots{").ends_with(" 2"),
        "{metrics}"
    );
    assert!(
        line("alpha", "backupd_fleet_snapshots{").ends_with(" 1"),
        "{metrics}"
    );
    line("beta", "backupd_fleet_newest_snapshot_timestamp_seconds{");
    // This instance's own view still counts only its own snapshot.
    assert_eq!(daemon.status()["jobs"]["app"]["snapshots"]["local"], 1);
    assert!(daemon.stop().success(), "{}", daemon.logs());
}

/// Two hosts configured with one instance name and no coordination both run each slot:
/// `fleet` says so. The second host is this machine under another host name (a UTS
/// namespace, as root).
#[test]
fn two_hosts_sharing_an_instance_name_are_pointed_out() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a"), "x").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let out = as_instance(&world, "shared", &["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let policy = world.path("policy.toml");
    let out = Command::new("unshare")
        .args([
            "-u",
            "sh",
            "-c",
            "hostname other-host && exec \"$0\" \"$@\"",
        ])
        .arg(BIN)
        .args(["--config", policy.to_str().unwrap(), "run-now", "app"])
        .env("BACKUPD_DAEMON__INSTANCE", "shared")
        .output()
        .expect("unshare (util-linux) runs as root");
    assert!(out.status.success(), "{}", text(&out));
    let out = as_instance(&world, "shared", &["fleet", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let warning = rows[0]["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("other-host") && warning.contains("coordination"),
        "{rows:?}"
    );
    // The daemon of that instance says it too, from its start-up inventory.
    let body = std::fs::read_to_string(&policy).unwrap().replacen(
        "[daemon]\n",
        "[daemon]\nlisten = \"off\"\n",
        1,
    );
    world.write_policy(&body);
    let mut daemon = Daemon::start(&world, &[("BACKUPD_DAEMON__INSTANCE", "shared")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !daemon.logs().contains("both back up as instance shared") {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning from the daemon: {}",
            daemon.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(daemon.logs().contains("other-host"), "{}", daemon.logs());
    assert!(daemon.stop().success(), "{}", daemon.logs());
}

/// The listing cache (daemon.state_dir/cache) keeps manifests and records read before;
/// what changed in the bucket since — rewritten, deleted, newly verified — must show.
#[test]
fn the_listing_cache_never_hides_what_changed_in_the_bucket() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a.txt"), "a").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    for _ in 0..2 {
        let out = world.backupd(&["run-now", "app"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let ids = |world: &World| -> Vec<String> {
        super::support::list_json(world, &[])
            .iter()
            .map(|m| m["snapshot"].as_str().unwrap().to_string())
            .collect()
    };
    let before = ids(&world);
    assert_eq!(before.len(), 2);
    let caches: Vec<_> = super::support::walk(&world.path("state/cache"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("app.cache"))
        .collect();
    assert_eq!(caches.len(), 1, "listing filled the cache");
    let (newer, older) = (&before[0], &before[1]);

    // A record written after the cache was filled is found (records are listed each time).
    let out = world.backupd(&["verify", "app", newer]);
    assert!(out.status.success(), "{}", text(&out));
    let now = super::support::list_json(&world, &[]);
    assert_eq!(now[0]["last_verification"]["ok"], true, "{:?}", now[0]);

    // A damaged cache is only a slower listing.
    std::fs::write(&caches[0], b"\x00\x01 not a cache").unwrap();
    assert_eq!(ids(&world), before);

    // An attacker rewrites a cached manifest in place, same size, same mtime: the cached
    // copy must not stand in for it (the rewritten one fails its digest and is left out).
    let manifest = world
        .target_dir()
        .join("app")
        .join(older)
        .join("manifest.json");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let mtime = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    // One character of the version string changed: "0.1.0" becomes "9.1.0".
    let at = original.find("\"backupd_version\"").unwrap() + "\"backupd_version\"".len();
    let at = at + original[at..].find('"').unwrap() + 1;
    let mut forged = original.clone().into_bytes();
    forged[at] = if forged[at] == b'9' { b'8' } else { b'9' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(forged.len(), original.len(), "same size");
    assert_ne!(forged, original);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&manifest)
        .unwrap()
        .write_all(forged.as_bytes())
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&manifest)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let out = world.backupd(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the forged manifest is not listed: {listed:?}"
    );
    assert_eq!(listed[0]["snapshot"], newer.as_str());
    assert!(text(&out).contains("digest"), "{}", text(&out));

    // A manifest deleted since it was cached is gone from the listing.
    std::fs::remove_file(
        world
            .target_dir()
            .join("app")
            .join(newer)
            .join("manifest.json"),
    )
    .unwrap();
    assert!(ids(&world).is_empty());
}
