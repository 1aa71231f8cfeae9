//! Cloud targets against real protocol servers on 127.0.0.1: s3s-fs (S3 with signature
//! checks), moto (S3) and Azurite (Azure Blob), started by tests/services.

use std::time::Duration;

use super::cloud_support::{S3s, azure_target, env, s3_secret_file, s3_target, unique};
use super::daemon_support::{Daemon, wait_for};
use super::support::{World, assert_same_tree, list_json, noise, text, tricky_tree};

/// A policy with the local target, `targets` (TOML), and job `app` backing up `src` to
/// `job_targets`.
fn policy(world: &World, daemon_extra: &str, targets: &str, job_targets: &[&str], job_extra: &str) {
    let list: Vec<String> = job_targets.iter().map(|t| format!("\"{t}\"")).collect();
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n{daemon_extra}\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\n[targets.local]\nurl = \"file://{}\"\n\n{targets}\n[jobs.app]\ntargets = [{}]\n{job_extra}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.recipient,
        world.target_dir().display(),
        list.join(", "),
        world.path("src").display()
    );
    world.write_policy(&body);
}

fn journal_is_empty(world: &World) -> bool {
    std::fs::read_dir(world.path("state/uploads")).map_or(true, |d| d.count() == 0)
}

#[test]
fn one_run_fans_out_to_file_s3_moto_and_azure_and_each_restores_byte_identical() {
    let world = World::new();
    tricky_tree(&world.path("src"), 3 << 20);
    let secret = s3_secret_file(&world, &env("BACKUPD_TEST_S3_SECRET"));
    let targets = [
        s3_target(
            "s3s",
            &env("BACKUPD_TEST_S3S"),
            &format!("backupd-test/{}", unique("fan")),
            &secret,
            "",
        ),
        s3_target(
            "moto",
            &env("BACKUPD_TEST_MOTO"),
            &format!("backupd-test/{}", unique("fan")),
            &secret,
            "",
        ),
        azure_target("azure", &format!("backupd-test/{}", unique("fan"))),
    ]
    .concat();
    policy(
        &world,
        "",
        &targets,
        &["local", "s3s", "moto", "azure"],
        "verify = { after_backup = true }\n",
    );

    let out = world.backupd(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("committed to local, s3s, moto, azure"),
        "{said}"
    );
    assert_eq!(
        said.matches(": OK (").count(),
        4,
        "verified on every target: {said}"
    );
    let id = list_json(&world, &[])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    for t in ["local", "s3s", "moto", "azure"] {
        let listed = list_json(&world, &["--target", t]);
        assert_eq!(listed.len(), 1, "{t}");
        assert_eq!(
            listed[0]["snapshot"],
            id.as_str(),
            "one dump, the same snapshot everywhere"
        );
        let to = world.path(&format!("restored-{t}"));
        let out = world.backupd(&[
            "restore",
            "app",
            "--target",
            t,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{t}: {}", text(&out));
        assert_same_tree(&world.path("src"), &to.join("files"));
    }
    assert!(
        journal_is_empty(&world),
        "every upload finished and left the journal"
    );
    // The secret never shows.
    assert!(!said.contains(&env("BACKUPD_TEST_S3_SECRET")));
}

#[test]
fn a_200_mib_snapshot_goes_up_in_several_parts() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/big.bin"), noise(200 << 20, 3)).unwrap();
    let secret = s3_secret_file(&world, "moto-does-not-check");
    let prefix = unique("big");
    let targets = s3_target(
        "moto",
        &env("BACKUPD_TEST_MOTO"),
        &format!("backupd-test/{prefix}"),
        &secret,
        "",
    );
    policy(
        &world,
        "",
        &targets,
        &["moto"],
        "compression = \"none\"\nverify = { after_backup = true }\n",
    );
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let m = &list_json(&world, &["--target", "moto"])[0];
    let object = m["sources"]["files"]["object"].as_str().unwrap();
    let key = format!("{prefix}/app/{}/{object}", m["snapshot"].as_str().unwrap());
    // An S3 multipart object's ETag ends in -<number of parts>.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etag = rt.block_on(async {
        use object_store::ObjectStoreExt;
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("backupd-test")
            .with_endpoint(env("BACKUPD_TEST_MOTO"))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("x")
            .with_secret_access_key("x")
            .build()
            .unwrap();
        s3.head(&object_store::path::Path::from(key.as_str()))
            .await
            .unwrap()
            .e_tag
            .unwrap()
    });
    let parts: usize = etag
        .trim_matches('"')
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("not a multipart ETag: {etag}"));
    // 200 MiB in 8 MiB parts.
    assert_eq!(parts, 26, "{etag}");
}

#[test]
fn a_wrong_s3_secret_is_explained_and_nothing_is_committed_there() {
    let world = World::new();
    tricky_tree(&world.path("src"), 1 << 20);
    let wrong = s3_secret_file(&world, "not-the-secret");
    let prefix = unique("wrong");
    let targets = s3_target(
        "s3s",
        &env("BACKUPD_TEST_S3S"),
        &format!("backupd-test/{prefix}"),
        &wrong,
        "max_retries = 1\n",
    );
    policy(&world, "", &targets, &["local", "s3s"], "");
    let out = world.backupd(&["check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("FAIL  target s3s"), "{said}");
    assert!(
        said.contains("access denied: check the credentials of target s3s"),
        "{said}"
    );
    assert!(said.contains("secret_access_key_file"), "{said}");

    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("PARTIAL"), "{said}");
    assert!(said.contains("target s3s FAILED"), "{said}");
    assert!(
        !said.contains("not-the-secret"),
        "the secret leaked: {said}"
    );
    assert_eq!(list_json(&world, &["--target", "local"]).len(), 1);
    // Listing with the wrong secret is refused too, and explained.
    let out = world.backupd(&["list", "--target", "s3s"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the server rejected the credentials of target s3s")
            || said.contains("access denied"),
        "{said}"
    );
    // Nothing reached the server (a bucket is a folder of s3s-fs).
    let stored = std::path::Path::new(&env("BACKUPD_TEST_SERVICES_DIR"))
        .join("s3s/backupd-test")
        .join(&prefix);
    assert!(!stored.exists(), "{} exists", stored.display());
}

#[test]
fn an_s3_server_stopped_mid_upload_fails_that_target_only_and_the_next_run_aborts_the_upload() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/big.bin"), noise(300 << 20, 5)).unwrap();
    let mut s3 = S3s::new(&world);
    s3.start();
    let secret = s3_secret_file(&world, &env("BACKUPD_TEST_S3_SECRET"));
    let targets = s3_target(
        "flaky",
        &s3.endpoint(),
        "bkt/p",
        &secret,
        "max_retries = 1\nretry_timeout_secs = 5\n",
    );
    policy(
        &world,
        "",
        &targets,
        &["local", "flaky"],
        "compression = \"none\"\n",
    );

    let log = world.path("run.log");
    let run = world.spawn(&["run-now", "app"], Some(&log));
    // Stop the server once parts are arriving.
    wait_for(Duration::from_secs(60), "an upload in progress", || {
        (!s3.open_uploads().is_empty() && std::fs::read_dir(&s3.root).unwrap().count() > 3)
            .then_some(())
    })
    .expect("the upload never started");
    s3.stop();
    let out = run.wait_with_output_within(Duration::from_secs(120));
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("target flaky FAILED"), "{said}");
    assert_eq!(
        list_json(&world, &["--target", "local"]).len(),
        1,
        "the other target committed"
    );

    // The server comes back with the upload still open on its side; the next start aborts it.
    s3.start();
    assert!(
        !s3.open_uploads().is_empty(),
        "the test needs an upload left open"
    );
    assert!(
        !journal_is_empty(&world),
        "the failed abort left its journal entry"
    );
    std::fs::write(world.path("src/big.bin"), b"small now").unwrap();
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("aborted an upload left open by a crashed run"),
        "{said}"
    );
    assert!(s3.open_uploads().is_empty(), "{:?}", s3.open_uploads());
    assert!(journal_is_empty(&world));
    assert_eq!(list_json(&world, &["--target", "flaky"]).len(), 1);
}

trait WaitWithin {
    fn wait_with_output_within(self, limit: Duration) -> std::process::Output;
}

impl WaitWithin for std::process::Child {
    fn wait_with_output_within(mut self, limit: Duration) -> std::process::Output {
        let deadline = std::time::Instant::now() + limit;
        while self.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.kill();
                panic!("backupd did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_with_output().unwrap()
    }
}

#[test]
fn a_target_down_during_the_backup_is_spooled_and_the_daemon_delivers_it_when_it_returns() {
    let world = World::new();
    tricky_tree(&world.path("src"), 1 << 20);
    let mut s3 = S3s::new(&world);
    let secret = s3_secret_file(&world, &env("BACKUPD_TEST_S3_SECRET"));
    let targets = s3_target(
        "offsite",
        &s3.endpoint(),
        "bkt/backups",
        &secret,
        "max_retries = 1\nretry_timeout_secs = 5\n",
    );
    policy(
        &world,
        "spool_dir = \"spool\"\nspool_retry_secs = 1",
        &targets,
        &["local", "offsite"],
        "schedule = \"0 3 1 1 *\"\ncatch_up = false\n",
    );
    // The server is down: run-now spools the offsite copy and says so.
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("target offsite SPOOLED"), "{said}");
    let out = world.backupd(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["spool"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["spool"][0]["target"], "offsite");

    let mut daemon = Daemon::start(&world, &[]);
    let s = daemon.wait_status(30, "the spool seen by the daemon", |s| {
        s["spool"].as_array().is_some_and(|a| a.len() == 1)
    });
    assert!(s["spool"][0]["bytes"].as_u64().unwrap() > 0);
    s3.start();
    daemon.wait_status(60, "the spool delivered", |s| {
        s["spool"].as_array().is_some_and(Vec::is_empty)
    });
    let (_, metrics) = daemon.get("/metrics");
    assert!(
        !metrics.contains("backupd_spool_pending_snapshots{"),
        "{metrics}"
    );
    assert!(daemon.stop().success());

    let offsite = list_json(&world, &["--target", "offsite"]);
    assert_eq!(offsite.len(), 1);
    assert_eq!(
        offsite[0]["snapshot"],
        list_json(&world, &["--target", "local"])[0]["snapshot"]
    );
    let to = world.path("restored");
    let out = world.backupd(&[
        "restore",
        "app",
        "--target",
        "offsite",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&world.path("src"), &to.join("files"));
    assert!(std::fs::read_dir(world.path("spool/offsite/app")).map_or(true, |d| d.count() == 0));
}

#[test]
fn misplaced_and_malformed_target_options_are_policy_errors() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    let targets = "[targets.a]\nurl = \"az://c/p\"\nregion = \"eu-west-1\"\n\n[targets.b]\nurl = \"s3://bucket\"\nsse = \"rot13\"\nendpoint = \"http://127.0.0.1:9\"\n\n[targets.c]\nurl = \"s3:///nobucket\"\n\n[targets.d]\nurl = \"gs://bucket/p\"\nuse_emulator = true\n";
    policy(&world, "", targets, &["local"], "");
    let out = world.backupd(&["check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    for words in [
        "targets.a.region: does not apply to a az:// target",
        "targets.b.sse: \"rot13\": use \"AES256\"",
        "targets.b.endpoint: \"http://127.0.0.1:9\" is plain http: set allow_http = true",
        "targets.c.url: s3:///nobucket names no bucket",
        "targets.d.use_emulator: does not apply to a gs:// target",
    ] {
        assert!(said.contains(words), "{words:?} missing from {said}");
    }
}

/// No GCS emulator that object_store's client works with installs here, so this checks
/// the requests backupd builds for a gs:// target against a plain HTTP receiver (a
/// service-account file with `disable_oauth`, as emulators use).
#[test]
fn gcs_targets_build_requests_for_their_bucket_and_prefix() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    let (url, rx) = super::daemon_support::receiver();
    let sa = world.path("sa.json");
    std::fs::write(
        &sa,
        r#"{"private_key": "unused", "private_key_id": "unused", "client_email": "backupd@example.iam", "disable_oauth": true}"#,
    )
    .unwrap();
    let targets = format!(
        "[targets.gcs]\nurl = \"gs://my-bucket/team/app\"\nendpoint = \"{url}\"\nallow_http = true\nservice_account_file = \"{}\"\nmax_retries = 0\n",
        sa.display()
    );
    policy(&world, "", &targets, &["gcs"], "");
    let out = world.backupd(&["check"]);
    let said = text(&out);
    // The receiver answers every request with an empty 200, so the read-back differs.
    assert_eq!(out.status.code(), Some(2), "{said}");
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("a request");
    // The object name travels as one percent-encoded segment.
    let path = percent_decode(&first.path);
    assert!(
        path.starts_with("/my-bucket/team/app/.backupd-probe-"),
        "{path}"
    );
    assert_eq!(first.body, "backupd reachability probe");
}

/// Runs only against a real bucket: BACKUPD_TEST_GCS_BUCKET plus credentials
/// (GOOGLE_APPLICATION_CREDENTIALS). Without them it says so; tests/run prints the same.
#[test]
fn gcs_live_round_trip_when_a_bucket_is_configured() {
    let Ok(bucket) = std::env::var("BACKUPD_TEST_GCS_BUCKET") else {
        eprintln!("GCS live test not run: BACKUPD_TEST_GCS_BUCKET is not set");
        return;
    };
    let world = World::new();
    tricky_tree(&world.path("src"), 1 << 20);
    let targets = format!(
        "[targets.gcs]\nurl = \"gs://{bucket}/{}\"\n",
        unique("live")
    );
    policy(
        &world,
        "",
        &targets,
        &["gcs"],
        "verify = { after_backup = true }\n",
    );
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let to = world.path("restored");
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&world.path("src"), &to.join("files"));
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
