//! A hostile local user and a hostile bucket writer (issue 23), each tried as the attacker
//! would: secrets in URLs, what children see, giant and junk objects in the bucket, forged
//! verification records, planted links and foreign directories, escape sequences, and a
//! flood of idle connections to the listener while backups go on.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::daemon_support::Daemon;
use super::support::{World, list_json, run, text};

fn files_world() -> World {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a.txt"), "data").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    world
}

#[test]
fn a_password_anywhere_in_a_url_is_refused_without_echoing_it() {
    let world = World::new();
    for (what, section) in [
        (
            "postgres query",
            "[jobs.db.sources.pg]\nkind = \"postgres\"\nurl = \"postgres://u@127.0.0.1/app?password=hunter2secret\"\n",
        ),
        (
            "postgres sslpassword",
            "[jobs.db.sources.pg]\nkind = \"postgres\"\nurl = \"postgres://u@127.0.0.1/app?sslpassword=hunter2secret\"\n",
        ),
        (
            "mysql query",
            "[jobs.db.sources.my]\nkind = \"mysql\"\nurl = \"mysql://u@127.0.0.1/app?password=hunter2secret\"\n",
        ),
    ] {
        world.policy(&format!("[jobs.db]\ntargets = [\"local\"]\n{section}"));
        let out = world.backupd(&["check"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {said}");
        assert!(said.contains("password_file"), "{what}: {said}");
        assert!(
            !said.contains("hunter2secret"),
            "{what} echoed the secret: {said}"
        );
    }
    let body = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    let body = body.replace(
        &format!("[targets.local]\nurl = \"file://{}\"", world.target_dir().display()),
        "[targets.local]\nurl = \"s3://bucket/p\"\nendpoint = \"https://AKIA:hunter2secret@s3.example\"",
    );
    let body = body.replace(
        "[jobs.db.sources.my]",
        "[jobs.db.sources.d]\nkind = \"directory\"\npath = \"/tmp\"\n[jobs.db.sources.x]",
    );
    world.write_policy(&body.replace("[jobs.db.sources.x]\nkind = \"mysql\"\nurl = \"mysql://u@127.0.0.1/app?password=hunter2secret\"\n", ""));
    let out = world.backupd(&["check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("endpoint") && said.contains("carries credentials"),
        "{said}"
    );
    assert!(!said.contains("hunter2secret"), "{said}");
}

#[test]
fn hooks_see_no_credentials_only_what_pass_env_names() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a.txt"), "data").unwrap();
    let seen = world.path("hook-env.txt");
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.hooks]\nbefore = [\"sh\", \"-c\", \"env > {}\"]\npass_env = [\"HOOK_WANTS_THIS\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        seen.display(),
        world.path("src").display()
    ));
    let policy = world.path("policy.toml");
    let out = std::process::Command::new(super::support::BIN)
        .args(["--config", policy.to_str().unwrap(), "run-now", "app"])
        .env("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
        .env("PGPASSWORD", "pg-secret-value")
        .env("MYSQL_PWD", "mysql-secret-value")
        .env("AZURE_STORAGE_ACCOUNT_KEY", "azure-secret-value")
        .env("HOOK_WANTS_THIS", "handed-through")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let env = std::fs::read_to_string(&seen).unwrap();
    for secret in [
        "aws-secret-value",
        "pg-secret-value",
        "mysql-secret-value",
        "azure-secret-value",
    ] {
        assert!(!env.contains(secret), "the hook saw {secret}:\n{env}");
    }
    assert!(env.contains("BACKUPD_JOB=app"), "{env}");
    assert!(env.contains("HOOK_WANTS_THIS=handed-through"), "{env}");
    assert!(env.contains("PATH="), "{env}");
}

#[test]
fn a_giant_manifest_and_junk_keys_do_not_block_the_job() {
    let world = files_world();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    // 200 MB, sparse: costs the test nothing on disk, and must cost backupd nothing either.
    let giant = world
        .target_dir()
        .join("app/2030-01-01T00-00-00.000Z-aaaaaa");
    std::fs::create_dir_all(&giant).unwrap();
    std::fs::File::create(giant.join("manifest.json"))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    // A directory with a control character in its name.
    std::fs::create_dir_all(world.target_dir().join("app/evil\u{1b}[2Jname")).unwrap();
    let out = world.backupd(&["list"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("2030-01-01T00-00-00.000Z-aaaaaa") && said.contains("more than any manifest"),
        "{said}"
    );
    assert!(
        !said.contains('\u{1b}'),
        "an escape sequence reached the terminal: {said}"
    );
    assert_eq!(list_json(&world, &[]).len(), 1);
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let to = world.path("restored");
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_forged_verification_record_does_not_count() {
    let world = files_world();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let id = list_json(&world, &[])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let verify_dir = world.target_dir().join("app").join(&id).join("verify");
    std::fs::create_dir_all(&verify_dir).unwrap();
    let forged = |job: &str, snapshot: &str| {
        serde_json::json!({
            "format": 1, "job": job, "snapshot": snapshot, "target": "local", "host": "evil",
            "backupd_version": "0", "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:00Z", "ok": true, "sources": {}
        })
        .to_string()
    };
    // Named in the future, so it would win by name; and one naming another snapshot.
    std::fs::write(
        verify_dir.join("9999-01-01T00-00-00.000Z.json"),
        forged("app", &id),
    )
    .unwrap();
    std::fs::write(
        verify_dir.join("2026-01-01T00-00-00.000Z.json"),
        forged("other", "x"),
    )
    .unwrap();
    let listed = list_json(&world, &[]);
    assert!(listed[0]["last_verification"].is_null(), "{}", listed[0]);
}

#[test]
fn planted_links_and_foreign_directories_are_refused() {
    let world = files_world();
    // A lock planted as a link to a file root would truncate.
    let victim = world.path("victim.txt");
    std::fs::write(&victim, "must survive").unwrap();
    std::fs::create_dir_all(world.path("state/locks")).unwrap();
    std::os::unix::fs::symlink(&victim, world.path("state/locks/app.lock")).unwrap();
    let out = world.backupd(&["run-now", "app"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "must survive");
    std::fs::remove_file(world.path("state/locks/app.lock")).unwrap();

    // A state_dir every user can write.
    std::fs::set_permissions(world.path("state"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("writable by other users") && said.contains("chmod 700"),
        "{said}"
    );
    std::fs::set_permissions(world.path("state"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));

    // init onto a link planted at --output (dangling now, re-pointed later).
    let dir = world.path("shared");
    std::fs::create_dir_all(&dir).unwrap();
    let planted_target = world.path("attacker-controlled.toml");
    std::os::unix::fs::symlink(&planted_target, dir.join("policy.toml")).unwrap();
    let out = run(&[
        "init",
        "--output",
        dir.join("policy.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!planted_target.exists(), "init wrote through the link");
    // A key left there by someone else is not adopted.
    let dir = world.path("shared2");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("backupd-identity.txt"), "AGE-SECRET-KEY-1 planted").unwrap();
    rustix::fs::chown(
        dir.join("backupd-identity.txt"),
        Some(rustix::fs::Uid::from_raw(65534)),
        None,
    )
    .unwrap();
    let out = run(&[
        "init",
        "--output",
        dir.join("policy.toml").to_str().unwrap(),
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("not a file owned by you"), "{said}");
}

#[test]
fn escape_sequences_in_a_forged_manifest_never_reach_the_terminal() {
    let world = files_world();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let id = list_json(&world, &[])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let path = world
        .target_dir()
        .join("app")
        .join(&id)
        .join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["tags"] = serde_json::json!(["manual", "\u{1b}]0;owned\u{7}\u{1b}[2J"]);
    let obj = m.as_object_mut().unwrap();
    obj.remove("digest");
    obj.remove("signature");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = world.backupd(&["list"]);
    let said = text(&out);
    assert!(
        !said.contains('\u{1b}') && !said.contains('\u{7}'),
        "{said:?}"
    );
}

#[test]
fn eleven_hundred_idle_connections_do_not_stop_backups_or_healthz() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a.txt"), "data").unwrap();
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n[targets.local]\nurl = \"file://{}\"\n[jobs.app]\nschedule = \"*/2 * * * * *\"\ncatch_up = false\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.recipient,
        world.target_dir().display(),
        world.path("src").display()
    );
    world.write_policy(&body);
    // The daemon gets systemd's default descriptor limit, as in production.
    let mut daemon = Daemon::start_with_nofile(&world, 1024);
    let addr = daemon.addr();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(mut s) => {
                // Half a request line, then silence: the slow-loris shape.
                let _ = s.write_all(b"GET /status HTTP/1.1\r\n");
                idle.push(s);
            }
            Err(_) => break,
        }
    }
    // Backups go on while the sockets are held: two more snapshots appear (counted by
    // the CLI, which does not need the listener).
    let count = || list_json(&world, &[]).len();
    let before = count();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count() < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no backups while the listener was flooded:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !daemon.logs().contains("Too many open files"),
        "{}",
        daemon.logs()
    );
    assert!(
        idle.len() >= 1000,
        "the flood itself was not refused at connect: {}",
        idle.len()
    );
    drop(idle);
    // The listener serves again as soon as the flood lets go.
    std::thread::sleep(Duration::from_millis(500));
    let (code, _) = daemon.get("/healthz");
    assert_eq!(code, 200, "{}", daemon.logs());
    assert!(daemon.stop().success(), "{}", daemon.logs());
}

#[test]
fn future_dated_junk_is_swept_once_its_objects_are_older_than_the_grace() {
    let world = files_world();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let app = world.target_dir().join("app");
    let old = app.join("2999-01-01T00-00-00.000Z-aaaaa1");
    let fresh = app.join("2999-01-01T00-00-00.000Z-aaaaa2");
    for dir in [&old, &fresh] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("files.tar.gz.age"), "junk").unwrap();
    }
    let two_days_ago =
        filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - 2 * 86_400, 0);
    filetime::set_file_mtime(old.join("files.tar.gz.age"), two_days_ago).unwrap();
    let out = world.backupd(&["prune", "app", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan[0]["orphans"],
        serde_json::json!(["2999-01-01T00-00-00.000Z-aaaaa1"])
    );
    assert!(!old.exists(), "junk older than orphan_grace is removed");
    assert!(
        fresh.exists(),
        "junk written just now may be a run in progress: kept"
    );
}
