//! Immutable backups (issue 17), against moto, which enforces S3 Object Lock: a bucket
//! created with Object Lock and a COMPLIANCE default retention accepts backupd's single
//! and multipart uploads because every upload carries a checksum; without one it refuses
//! them, and the run says so and commits nothing.

use super::cloud_support::{env, s3_secret_file, s3_target, unique};
use super::support::{World, assert_same_tree, list_json, noise, text};

/// Runs `script` with boto3 (from the venv `tests/services` keeps for moto) against moto.
fn boto3(script: &str) -> String {
    let out = std::process::Command::new(env("BACKUPD_TEST_PYTHON"))
        .arg("-c")
        .arg(format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x')\n{script}",
            env("BACKUPD_TEST_MOTO")
        ))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One S3 target for `world`'s policy.
struct S3<'a> {
    name: &'a str,
    endpoint: String,
    bucket_and_prefix: String,
    secret: &'a str,
    extra: &'a str,
}

/// `policy.toml`: job `app` backing up `src` to `target`; `job` adds lines to `[jobs.app]`,
/// `more` adds tables after the `files` source.
fn s3_policy(world: &World, target: S3<'_>, job: &str, more: &str) {
    let secret = s3_secret_file(world, target.secret);
    let section = s3_target(
        target.name,
        &target.endpoint,
        &target.bucket_and_prefix,
        &secret,
        target.extra,
    );
    world.write_policy(&format!(
        "[daemon]\nstate_dir = \"state\"\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n{section}\n[jobs.app]\ntargets = [\"{}\"]\n{job}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n{more}",
        world.recipient,
        target.name,
        world.path("src").display(),
    ));
}

/// A new bucket with Object Lock on and a COMPLIANCE default retention of one day.
fn locked_bucket() -> String {
    let bucket = unique("locked").to_lowercase().replace('_', "-");
    boto3(&format!(
        "s3.create_bucket(Bucket='{bucket}', ObjectLockEnabledForBucket=True)\n\
         s3.put_object_lock_configuration(Bucket='{bucket}', ObjectLockConfiguration={{'ObjectLockEnabled': 'Enabled', 'Rule': {{'DefaultRetention': {{'Mode': 'COMPLIANCE', 'Days': 1}}}}}})\n"
    ));
    bucket
}

fn locked_world(bucket: &str, extra: &str) -> World {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/small.txt"), "a small file").unwrap();
    // Over one 8 MiB part: a multipart upload.
    std::fs::write(world.path("src/big.bin"), noise(20 << 20, 17)).unwrap();
    s3_policy(
        &world,
        S3 {
            name: "locked",
            endpoint: env("BACKUPD_TEST_MOTO"),
            bucket_and_prefix: format!("{bucket}/backups"),
            secret: "moto-does-not-check",
            extra,
        },
        "compression = \"none\"",
        &format!(
            "[jobs.app.sources.db]\nkind = \"sqlite\"\npath = \"{}\"\n",
            world.path("app.db").display()
        ),
    );
    let db = rusqlite::Connection::open(world.path("app.db")).unwrap();
    db.execute_batch("create table t(x); insert into t values (1), (2);")
        .unwrap();
    world
}

#[test]
fn backups_to_a_compliance_locked_bucket_commit_single_and_multipart_and_restore() {
    let bucket = locked_bucket();
    let world = locked_world(&bucket, "");
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let snaps = list_json(&world, &[]);
    assert_eq!(snaps.len(), 1);
    // Every object is there, and the manifest (a single put) carries the bucket's
    // COMPLIANCE retention. (moto leaves its default retention off objects completed by
    // multipart upload; S3 applies it to every new version.)
    let id = snaps[0]["snapshot"].as_str().unwrap();
    let modes = boto3(&format!(
        "for o in s3.list_objects_v2(Bucket='{bucket}', Prefix='backups/app/{id}/')['Contents']:\n    h = s3.head_object(Bucket='{bucket}', Key=o['Key'])\n    print(o['Key'].rsplit('/', 1)[1], h.get('ObjectLockMode'))\n"
    ));
    assert!(modes.contains("manifest.json COMPLIANCE"), "{modes}");
    for object in ["files.tar.age", "files.index.json.age", "db.sqlite.age"] {
        assert!(modes.contains(object), "{object}: {modes}");
    }
    let out = world.backupd(&["verify", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = world.path("restored");
    let out = world.backupd(&["restore", "app", "--to", restored.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&world.path("src"), &restored.join("files"));

    // `check` reads the bucket's versioning and lock, and warns that a retention shorter
    // than the lock frees nothing until the lock expires.
    let policy = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    world.write_policy(&policy.replace(
        "[jobs.app]\n",
        "[jobs.app]\nretention = { keep_last = 2 }\n",
    ));
    let out = world.backupd(&["check"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("target locked: versioning on, Object Lock COMPLIANCE 1 days"),
        "{said}"
    );
    assert!(
        said.contains("warn  job app on target locked: retention keeps about 0 days but the bucket locks each version for 1"),
        "{said}"
    );
}

/// Without a checksum the locked bucket refuses the upload: the run fails naming the
/// target and the fix, and nothing is committed.
#[test]
fn without_checksums_a_locked_bucket_refuses_the_upload_and_the_run_says_why() {
    let bucket = locked_bucket();
    let world = locked_world(&bucket, "checksum = \"none\"\n");
    let out = world.backupd(&["run-now", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "bucket {bucket} has Object Lock, which refuses uploads without a checksum: remove `checksum = \"none\"` from [targets.locked]"
        )),
        "{said}"
    );
    assert!(list_json(&world, &[]).is_empty());
}

/// A write-only front (`tests/tools/deny_delete_proxy.py`: every delete gets 403, as from
/// credentials without s3:DeleteObject) before moto.
struct DenyDeletes {
    child: std::process::Child,
    endpoint: String,
    count: std::path::PathBuf,
}

impl DenyDeletes {
    fn start(world: &World) -> Self {
        use std::io::BufRead;
        let count = world.path("refused-deletes");
        let mut child = std::process::Command::new(env("BACKUPD_TEST_PYTHON"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/tools/deny_delete_proxy.py"
            ))
            .arg(env("BACKUPD_TEST_MOTO"))
            .arg(&count)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the proxy");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("ready ").expect("ready PORT");
        DenyDeletes {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            count,
        }
    }

    fn refused(&self) -> u64 {
        std::fs::read_to_string(&self.count)
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(0)
    }
}

impl Drop for DenyDeletes {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_only_policy(world: &World, endpoint: &str, prefix: &str, extra: &str) {
    s3_policy(
        world,
        S3 {
            name: "writer",
            endpoint: endpoint.to_string(),
            bucket_and_prefix: format!("backupd-test/{prefix}"),
            secret: "moto-does-not-check",
            extra,
        },
        "retention = { keep_last = 1 }",
        "",
    );
}

/// Credentials that may write but not delete: the backup commits and exits 0; what
/// retention could not delete is said once; a host with delete rights prunes it later.
/// With `write_only = true` no delete is even attempted, and `check` passes.
#[test]
fn write_only_credentials_commit_the_backup_and_say_once_what_they_skipped() {
    for declared in [false, true] {
        let world = World::new();
        std::fs::create_dir_all(world.path("src")).unwrap();
        std::fs::write(world.path("src/a.txt"), "data").unwrap();
        let proxy = DenyDeletes::start(&world);
        let prefix = unique("writeonly");
        let extra = if declared { "write_only = true\n" } else { "" };
        write_only_policy(&world, &proxy.endpoint, &prefix, extra);
        if declared {
            let out = world.backupd(&["check"]);
            assert!(out.status.success(), "{}", text(&out));
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                said.contains("write_only: nothing is deleted there"),
                "{said}"
            );
            assert!(said.contains("target writer: versioning off"), "{said}");
        }
        for _ in 0..2 {
            let out = world.backupd(&["run-now", "app"]);
            assert!(out.status.success(), "declared {declared}: {}", text(&out));
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            if list_json(&world, &[]).len() == 2 {
                assert_eq!(
                    said.matches("not permitted to delete").count(),
                    1,
                    "said once: {said}"
                );
                assert!(
                    said.contains("1 snapshot(s) due for deletion by retention were kept; run `backupd prune` from a host with delete rights"),
                    "{said}"
                );
            }
        }
        assert_eq!(list_json(&world, &[]).len(), 2, "nothing was deleted");
        if declared {
            assert_eq!(proxy.refused(), 0, "write_only: no delete is attempted");
        } else {
            assert!(proxy.refused() >= 1, "the 403 was met and understood");
        }
        // `prune` on the writer's host is a failure, clearly.
        let out = world.backupd(&["prune", "app"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("NOT PERMITTED"), "{}", text(&out));
        // The admin host, straight to the store with delete rights, prunes.
        write_only_policy(&world, &env("BACKUPD_TEST_MOTO"), &prefix, "");
        let out = world.backupd(&["prune", "app"]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(list_json(&world, &[]).len(), 1);
    }
}

/// An attacker holding the backup host's credentials prunes with `keep_last = 1` and then
/// deletes every key it can list; a version delete of a locked object is refused by the
/// bucket. `recover` (operator credentials) lists and brings back every snapshot, and the
/// oldest restores byte-identical.
#[test]
fn everything_an_attacker_deleted_in_a_locked_bucket_is_recovered_and_restores() {
    let bucket = locked_bucket();
    let world = locked_world(&bucket, "");
    let mut trees = Vec::new();
    for day in 0..3 {
        std::fs::write(world.path("src/day.txt"), format!("day {day}")).unwrap();
        let out = world.backupd(&["run-now", "app"]);
        assert!(out.status.success(), "{}", text(&out));
        let copy = world.path(&format!("tree-{day}"));
        super::support::sh(&format!(
            "cp -a '{}' '{}'",
            world.path("src").display(),
            copy.display()
        ));
        trees.push(copy);
    }
    let ids: Vec<String> = list_json(&world, &[])
        .iter()
        .rev()
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);

    // The attack: retention down to one, then every visible key deleted.
    let policy = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    world.write_policy(&policy.replace(
        "[jobs.app]\n",
        "[jobs.app]\nretention = { keep_last = 1 }\n",
    ));
    let out = world.backupd(&["prune", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(list_json(&world, &[]).len(), 1);
    let refused = boto3(&format!(
        "import botocore\n\
         keys = [o['Key'] for o in s3.list_objects_v2(Bucket='{bucket}').get('Contents', [])]\n\
         for k in keys:\n    s3.delete_object(Bucket='{bucket}', Key=k)\n\
         v = [x for x in s3.list_object_versions(Bucket='{bucket}', Prefix='backups/app/{}/manifest.json')['Versions']][0]\n\
         try:\n    s3.delete_object(Bucket='{bucket}', Key=v['Key'], VersionId=v['VersionId'])\n    print('DELETED A LOCKED VERSION')\n\
         except botocore.exceptions.ClientError as e:\n    print('refused', e.response['Error']['Code'])\n",
        ids[0]
    ));
    assert!(refused.contains("refused AccessDenied"), "{refused}");
    assert!(list_json(&world, &[]).is_empty(), "everything looks gone");

    // The operator: see, then bring back. `--since` a time after the attack finds nothing.
    let out = world.backupd(&[
        "recover",
        "app",
        "--dry-run",
        "--since",
        "2099-01-01T00:00:00Z",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 deleted snapshot(s)"),
        "{}",
        text(&out)
    );
    let out = world.backupd(&["recover", "app", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for id in &ids {
        assert!(said.contains(&format!("would recover {id}")), "{said}");
    }
    assert!(
        list_json(&world, &[]).is_empty(),
        "--dry-run changes nothing"
    );
    let out = world.backupd(&["recover", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("  recovered ")
            .count(),
        3,
        "{}",
        text(&out)
    );
    assert_eq!(list_json(&world, &[]).len(), 3);
    let restored = world.path("restored");
    let out = world.backupd(&[
        "restore",
        "app",
        &ids[0],
        "--to",
        restored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&trees[0], &restored.join("files"));
    let out = world.backupd(&["verify", "app", "all"]);
    assert!(out.status.success(), "{}", text(&out));
    // Nothing left to recover.
    let out = world.backupd(&["recover", "app", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 deleted snapshot(s)"),
        "{}",
        text(&out)
    );
}

/// moto does not check signatures; s3s-fs does. Its answer to the versions client's
/// signed request is "not implemented" with the right secret and "signature does not
/// match" with a wrong one: the requests are signed as S3 expects.
#[test]
fn the_versions_client_signs_requests_as_s3_checks_them() {
    for (secret, expected) in [
        (env("BACKUPD_TEST_S3_SECRET"), "NotImplemented"),
        ("wrong-secret".to_string(), "SignatureDoesNotMatch"),
    ] {
        let world = World::new();
        std::fs::create_dir_all(world.path("src")).unwrap();
        s3_policy(
            &world,
            S3 {
                name: "s3",
                endpoint: env("BACKUPD_TEST_S3S"),
                bucket_and_prefix: format!("backupd-test/{}", unique("signed")),
                secret: &secret,
                extra: "",
            },
            "",
            "",
        );
        let out = world.backupd(&["recover", "app", "--dry-run"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(expected), "{}", text(&out));
    }
}
