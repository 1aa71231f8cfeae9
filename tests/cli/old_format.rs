//! Format 1 stays readable: a snapshot written by backupd 0.1.0 (before manifest digests
//! and signatures, `tests/fixtures/format1-v0.1.0`) lists, restores, verifies and is pruned
//! by this build, and `[signing]` treats it as the unsigned legacy snapshot it is.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::support::{World, list_json, text};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format1-v0.1.0");
const ID: &str = "2026-12-03T06-33-52.583Z-852c65";
const RECIPIENT: &str = "age1ehmtcsnty2emxxjpwhvfdl873c6kd35f57sqzxxnprdh2xwd8fnsfy3qcm";

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A world whose target holds the 0.1.0 snapshot, with `signing` as the `[signing]` body.
fn legacy_world(signing: &str) -> World {
    let world = World::new();
    copy_tree(&Path::new(FIXTURE).join("target"), &world.target_dir());
    let identity = world.path("legacy-identity.txt");
    std::fs::copy(Path::new(FIXTURE).join("identity.txt"), &identity).unwrap();
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/new.txt"), "made by this build").unwrap();
    world.write_policy(&format!(
        "[daemon]\nstate_dir = \"state\"\n# The fixture was made on host vm: this is that host, whatever machine runs the test.\ninstance = \"vm\"\n[encryption]\nrecipients = [\"{RECIPIENT}\"]\nidentity_file = \"legacy-identity.txt\"\n{signing}\n[targets.local]\nurl = \"file://{}\"\n[jobs.legacy]\ntargets = [\"local\"]\nretention = {{ keep_last = 1 }}\nverify = {{ after_backup = true }}\n[jobs.legacy.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.target_dir().display(),
        world.path("src").display()
    ));
    world
}

#[test]
fn a_snapshot_from_0_1_0_lists_restores_verifies_and_is_pruned() {
    let world = legacy_world("");
    let listed = list_json(&world, &[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["snapshot"], ID);
    assert_eq!(listed[0]["backupd_version"], "0.1.0");
    assert!(listed[0].get("digest").is_none());
    assert_eq!(listed[0]["authenticity"]["verdict"], "accepted");
    // Listed again, from the listing cache the first listing filled: the same.
    assert_eq!(list_json(&world, &[]), listed);

    let to = world.path("restored");
    let out = world.backupd(&["restore", "legacy", ID, "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unsigned"),
        "the operator is told: {}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(to.join("files/hello.txt")).unwrap(),
        "hello from backupd 0.1.0\n"
    );
    assert_eq!(
        std::fs::read_to_string(to.join("files/sub/notes.md")).unwrap(),
        "second file\n"
    );
    let mode = std::fs::metadata(to.join("files/sub/notes.md"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert_eq!(
        std::fs::read_link(to.join("files/link-to-hello")).unwrap(),
        Path::new("hello.txt")
    );
    let db = rusqlite::Connection::open(to.join("db/app.db")).unwrap();
    let rows: i64 = db
        .query_row("select count(*) from t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3);

    let out = world.backupd(&["verify", "legacy", ID]);
    assert!(out.status.success(), "{}", text(&out));

    // This build's snapshot joins it, verified (retention never deletes the newest
    // verified one); keep_last = 1 then prunes the old one.
    let out = world.backupd(&["run-now", "legacy"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = list_json(&world, &[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_ne!(listed[0]["snapshot"], ID);
    assert!(listed[0]["digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn with_signing_on_an_old_snapshot_needs_the_operators_word() {
    let signing_key = "[signing]\nkey_file = \"signing.key\"\n";
    let world = legacy_world(signing_key);
    let listed = list_json(&world, &[]);
    assert_eq!(listed[0]["authenticity"]["verdict"], "refused");
    let to = world.path("restored");
    let out = world.backupd(&["restore", "legacy", "--to", to.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--allow-unsigned"), "{}", text(&out));
    assert!(!to.exists());
    // Not counted, not deleted by retention while refused.
    let out = world.backupd(&["run-now", "legacy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(list_json(&world, &[]).len(), 2);
    let out = world.backupd(&[
        "restore",
        "legacy",
        ID,
        "--to",
        to.to_str().unwrap(),
        "--allow-unsigned",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Declared legacy by time: accepted, and then pruned like any other.
    let world2 = legacy_world(&format!(
        "{signing_key}accept_unsigned_before = \"2026-12-03T07:00:00Z\"\n"
    ));
    assert_eq!(
        list_json(&world2, &[])[0]["authenticity"]["verdict"],
        "accepted"
    );
    let out = world2.backupd(&["verify", "legacy", ID]);
    assert!(out.status.success(), "{}", text(&out));
    let out = world2.backupd(&["run-now", "legacy"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = list_json(&world2, &[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["authenticity"]["verdict"], "trusted");
}

/// The 0.1.0 snapshot has no index: `ls`, `find` and `cat` read its archive instead, and
/// `restore --include` selects from it like from any other.
#[test]
fn a_snapshot_from_0_1_0_browses_and_restores_in_part() {
    let world = legacy_world("");
    let out = world.backupd(&["ls", "legacy", ID]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "files/hello.txt",
        "files/sub/",
        "files/sub/notes.md",
        "files/link-to-hello",
    ] {
        assert!(listing.lines().any(|l| l == want), "{want} in:\n{listing}");
    }
    assert!(text(&out).contains("has no index"), "{}", text(&out));
    let out = world.backupd(&["find", "legacy", "*.md"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sub/notes.md"));
    let out = world.backupd(&["cat", "legacy", ID, "sub/notes.md"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, b"second file\n");
    let to = world.path("part");
    let out = world.backupd(&[
        "restore",
        "legacy",
        ID,
        "--only",
        "files",
        "--include",
        "sub",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(to.join("files/sub/notes.md")).unwrap(),
        "second file\n"
    );
    assert!(!to.join("files/hello.txt").exists());
}
