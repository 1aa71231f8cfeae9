//! Restore of hostile snapshots: archives crafted by hand, encrypted with the real key
//! and committed with a forged but valid manifest, so every integrity check passes and
//! only restore's own rules stand between the archive and the filesystem.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::support::{World, list_json, text, walk};

/// One crafted tar entry.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str),
    /// A header claiming `claimed` bytes followed by far fewer.
    Truncated(&'a str, u64),
}

fn raw_name(h: &mut tar::Header, name: &str) {
    // Set the bytes directly: the tar crate's setters refuse these names, an attacker's
    // tool does not.
    let bytes = h.as_old_mut();
    bytes.name = [0; 100];
    bytes.name[..name.len()].copy_from_slice(name.as_bytes());
}

fn raw_link(h: &mut tar::Header, link: &str) {
    let bytes = h.as_old_mut();
    bytes.linkname = [0; 100];
    bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        let data: Vec<u8> = match e {
            Entry::File(name, data) => {
                raw_name(&mut h, name);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                data.to_vec()
            }
            Entry::Dir(name, mode) => {
                raw_name(&mut h, name);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_mtime(0);
                h.set_size(0);
                Vec::new()
            }
            Entry::Symlink(name, to) | Entry::Hardlink(name, to) => {
                raw_name(&mut h, name);
                raw_link(&mut h, to);
                h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_size(0);
                Vec::new()
            }
            Entry::CharDevice(name) => {
                raw_name(&mut h, name);
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                h.set_size(0);
                Vec::new()
            }
            Entry::Truncated(name, claimed) => {
                raw_name(&mut h, name);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*claimed);
                vec![7u8; 1024]
            }
        };
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        if !matches!(e, Entry::Truncated(..)) {
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    if !matches!(entries.last(), Some(Entry::Truncated(..))) {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

/// The tree stats an honest manifest would give for the tar stream `plain`, as the
/// attacker's own tooling would write them.
fn counts(plain: &[u8]) -> serde_json::Value {
    let (mut files, mut dirs, mut symlinks, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut archive = tar::Archive::new(plain);
    if let Ok(entries) = archive.entries() {
        for e in entries.flatten() {
            match e.header().entry_type() {
                tar::EntryType::Directory => dirs += 1,
                tar::EntryType::Symlink => symlinks += 1,
                tar::EntryType::Regular | tar::EntryType::Link => {
                    files += 1;
                    bytes += e.header().size().unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    serde_json::json!({"type": "tree", "files": files, "dirs": dirs, "symlinks": symlinks, "file_bytes": bytes, "skipped": 0})
}

/// Commits `plain` as the only source of a new snapshot of job `app`, reusing a real
/// manifest as the template; returns the snapshot id.
fn forge(world: &World, template: &serde_json::Value, plain: &[u8], n: usize) -> String {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(plain).unwrap();
    let compressed = gz.finish().unwrap();
    let recipient: age::x25519::Recipient = world.recipient.parse().unwrap();
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .unwrap();
    let mut stored = Vec::new();
    let mut w = enc.wrap_output(&mut stored).unwrap();
    w.write_all(&compressed).unwrap();
    w.finish().unwrap();

    let id = format!("2020-01-01T00-00-{n:02}.000Z-bad{n:03}");
    let mut m = template.clone();
    m["snapshot"] = id.clone().into();
    let src = &mut m["sources"]["files"];
    src["stats"] = counts(plain);
    src["stored"] =
        serde_json::json!({"bytes": stored.len(), "sha256": hex::encode(Sha256::digest(&stored))});
    src["plain"] =
        serde_json::json!({"bytes": plain.len(), "sha256": hex::encode(Sha256::digest(plain))});
    let dir = world.target_dir().join("app").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(src["object"].as_str().unwrap()), &stored).unwrap();
    // The template came from `list --json`: drop what list adds, and the real snapshot's
    // seal, which an attacker cannot make for new content.
    let obj = m.as_object_mut().unwrap();
    for added in [
        "targets",
        "last_verification",
        "authenticity",
        "digest",
        "signature",
    ] {
        obj.remove(added);
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    id
}

/// Everything about a tree that a restore could change: per path, mode, mtime and size.
fn state_of(dir: &Path) -> Vec<(std::path::PathBuf, u32, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let m = p.symlink_metadata().unwrap();
            (p, m.mode(), m.mtime(), m.size())
        })
        .collect();
    out.sort();
    out
}

/// Restores `id` into `sandbox/to` (as unsigned, which forged snapshots are), returning
/// (exit code, output). Fails the test if anything in the sandbox outside `to`, or in the
/// canary directory beside it, appeared or changed.
fn restore(world: &World, id: &str, sandbox: &Path) -> (Option<i32>, String) {
    std::fs::create_dir_all(sandbox.join("canary")).unwrap();
    std::fs::write(sandbox.join("canary/file"), "canary").unwrap();
    let before = state_of(sandbox);
    let to = sandbox.join("to");
    let out = world.backupd(&[
        "restore",
        "app",
        id,
        "--to",
        to.to_str().unwrap(),
        "--allow-unsigned",
    ]);
    let after: Vec<_> = state_of(sandbox)
        .into_iter()
        .filter(|(p, ..)| !p.starts_with(&to) && p != sandbox)
        .collect();
    let before: Vec<_> = before.into_iter().filter(|(p, ..)| p != sandbox).collect();
    assert_eq!(
        before,
        after,
        "restore of {id} changed something outside --to\n{}",
        text(&out)
    );
    (out.status.code(), text(&out))
}

#[test]
fn hostile_archives_are_refused_or_neutralised_and_nothing_lands_outside() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/ok.txt"), "fine").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut template = list_json(&world, &[])[0].clone();
    assert_eq!(template["sources"]["files"]["object"], "files.tar.gz.age");
    // The planted archives come without an index, as a snapshot from before indexes.
    template["sources"]["files"]
        .as_object_mut()
        .unwrap()
        .remove("index");

    let sandbox_root = world.path("sandbox");
    let cases: Vec<(&str, Vec<Entry>, Option<i32>, &str)> = vec![
        (
            "absolute path",
            vec![Entry::File("/tmp/backupd-escaped-abs", b"x")],
            Some(1),
            "it is an absolute path",
        ),
        (
            "dot-dot",
            vec![Entry::File("../escaped-dotdot", b"x")],
            Some(1),
            "it contains '..'",
        ),
        (
            "nested dot-dot",
            vec![Entry::File("a/../../escaped", b"x")],
            Some(1),
            "it contains '..'",
        ),
        (
            "symlink out, then a write through it",
            vec![
                Entry::Symlink("out", "../.."),
                Entry::File("out/pwned", b"x"),
            ],
            Some(0),
            "skipped symlink out -> ../..",
        ),
        (
            "absolute symlink",
            vec![
                Entry::Symlink("etc", "/etc"),
                Entry::File("etc/pwned", b"x"),
            ],
            Some(0),
            "skipped symlink etc -> /etc",
        ),
        (
            "hardlink to an absolute path",
            vec![Entry::Hardlink("hl", "/etc/hostname")],
            Some(1),
            "hl",
        ),
        (
            "hardlink out",
            vec![Entry::Hardlink("hl", "../outside")],
            Some(1),
            "it contains '..'",
        ),
        (
            "device node",
            vec![Entry::CharDevice("null")],
            Some(0),
            "skipped null: unsupported entry type",
        ),
        (
            "a file replaced by a symlink between two entries",
            vec![
                Entry::File("f", b"first"),
                Entry::Symlink("f", "/etc/passwd"),
                Entry::File("f", b"second"),
            ],
            // The second `f` is refused: an archive names each path once.
            Some(1),
            "it appears twice in the archive",
        ),
        (
            "issue 13: a chain of links to reach a directory beside --to",
            vec![
                Entry::Dir("x", 0o755),
                Entry::Symlink("x/s", ".."),
                Entry::Symlink("x/s/t", "../../canary"),
                Entry::Dir("t/planted", 0o755),
                Entry::Dir("t", 0o777),
            ],
            Some(1),
            "x/s/t",
        ),
        (
            "dot, then up through it",
            vec![
                Entry::Symlink("dot", "."),
                Entry::Symlink("up", "dot/dot/.."),
            ],
            Some(0),
            "skipped symlink up -> dot/dot/..",
        ),
        (
            "a link out, then directory entries through it",
            vec![
                Entry::Symlink("t", "../canary"),
                Entry::Dir("t/planted", 0o755),
                Entry::Dir("t", 0o777),
            ],
            Some(1),
            "it appears twice",
        ),
        (
            "mode and mtime through an absolute link",
            vec![Entry::Symlink("c", "/tmp"), Entry::Dir("c", 0o777)],
            Some(1),
            "it appears twice",
        ),
        (
            "a directory entry through a link inside",
            vec![
                Entry::Dir("real", 0o755),
                Entry::Symlink("l", "real"),
                Entry::Dir("l/sub", 0o777),
            ],
            Some(1),
            "l is a symlink or a file",
        ),
        (
            "a huge claimed size",
            vec![Entry::Truncated("huge.bin", 1 << 40)],
            Some(1),
            "huge.bin",
        ),
    ];
    let total = cases.len();
    let tmp_before = std::fs::metadata("/tmp").unwrap();
    for (n, (what, entries, code, words)) in cases.into_iter().enumerate() {
        let id = forge(&world, &template, &tar_of(&entries), n);
        let (got, said) = restore(&world, &id, &sandbox_root.join(n.to_string()));
        assert_eq!(got, code, "{what}: {said}");
        assert!(
            said.contains(words),
            "{what}: expected {words:?} in:\n{said}"
        );
        // Verify runs the same rules: it fails exactly when restore refuses, naming the
        // entry, and names what restore leaves out when it does not.
        let out = world.backupd(&["verify", "app", &id, "--allow-unsigned"]);
        let verified = text(&out);
        assert_eq!(out.status.code(), code, "{what}: verify said:\n{verified}");
        assert!(
            verified.contains(words),
            "{what}: verify should name {words:?}:\n{verified}"
        );
    }
    assert!(!Path::new("/tmp/backupd-escaped-abs").exists());
    use std::os::unix::fs::MetadataExt;
    let tmp_after = std::fs::metadata("/tmp").unwrap();
    assert_eq!(tmp_before.mode(), tmp_after.mode(), "/tmp's mode changed");
    eprintln!("hostile snapshots: {total} tried, 0 writes outside --to");
    // Nothing was deleted along the way: every forged snapshot is still listed.
    assert_eq!(list_json(&world, &[]).len(), total + 1);
}

#[test]
fn corrupt_manifests_are_skipped_with_a_reason_and_never_deleted() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/ok.txt"), "fine").unwrap();
    let policy = world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nretention = {{ keep_last = 1 }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let body = std::fs::read_to_string(&policy).unwrap().replacen(
        "[daemon]\n",
        "[daemon]\norphan_grace = \"1s\"\n",
        1,
    );
    world.write_policy(&body);
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let good = list_json(&world, &[])[0].clone();
    let good_id = good["snapshot"].as_str().unwrap().to_string();
    let manifest = std::fs::read_to_string(
        world
            .target_dir()
            .join("app")
            .join(&good_id)
            .join("manifest.json"),
    )
    .unwrap();
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "2020-01-01T00-00-01.000Z-aaaaa1",
            "{ not json".into(),
            "key must be a string",
        ),
        (
            "2020-01-01T00-00-02.000Z-aaaaa2",
            manifest.replacen("\"format\": 1", "\"format\": 99", 1),
            "newer than this backupd understands",
        ),
        (
            "2020-01-01T00-00-03.000Z-aaaaa3",
            manifest.replacen("\"sources\"", "\"sourcez\"", 1),
            "missing field `sources`",
        ),
        (
            "2020-01-01T00-00-04.000Z-aaaaa4",
            manifest.clone(),
            "stored as app/2020-01-01T00-00-04.000Z-aaaaa4",
        ),
        (
            "2020-01-01T00-00-05.000Z-aaaaa5",
            manifest.replace("\"job\": \"app\"", "\"job\": \"../etc\""),
            "invalid job name",
        ),
    ];
    for (id, body, _) in &bad {
        let dir = world.target_dir().join("app").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), body).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = world.backupd(&["list"]);
    let said = text(&out);
    assert!(
        out.status.success(),
        "one bad manifest must not hide the rest: {said}"
    );
    assert_eq!(list_json(&world, &[]).len(), 1);
    for (id, _, words) in &bad {
        assert!(said.contains(id), "{id} not named: {said}");
        assert!(said.contains(words), "{words:?} not said: {said}");
    }
    // Neither prune (keep_last = 1, orphan sweep at 1 s) nor another run deletes them.
    let out = world.backupd(&["prune", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    for (id, _, _) in &bad {
        assert!(
            world
                .target_dir()
                .join("app")
                .join(id)
                .join("manifest.json")
                .exists(),
            "{id} was deleted"
        );
    }
}

/// An attacker who can write to the bucket runs backupd itself against it: once with its
/// own signing key, once with none (a valid age object and a valid manifest digest, but no
/// signature). Neither snapshot is restored as `latest`, restored by id, verified as good,
/// or counted by retention, and neither is deleted; the operator can still vouch for an
/// unsigned one.
#[test]
fn forged_snapshots_are_refused_and_cannot_push_real_ones_out() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/real.txt"), "real data").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nretention = {{ keep_last = 1 }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let real = list_json(&world, &[])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    // The attacker's tools: backupd, the victim's public recipient, write access.
    std::fs::create_dir_all(world.path("evil")).unwrap();
    std::fs::write(world.path("evil/real.txt"), "attacker's data").unwrap();
    let attacker_key = world.path("attacker.key");
    let out = super::support::run(&[
        "keygen",
        "--signing",
        "--output",
        attacker_key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let attacker_public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let forge_with = |signing: &str| {
        let policy = world.path("attacker.toml");
        std::fs::write(
            &policy,
            format!(
                "[daemon]\nstate_dir = \"attacker-state\"\n[encryption]\nrecipients = [\"{}\"]\n{signing}\n[targets.local]\nurl = \"file://{}\"\n[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
                world.recipient,
                world.target_dir().display(),
                world.path("evil").display()
            ),
        )
        .unwrap();
        let out = super::support::run(&["--config", policy.to_str().unwrap(), "run-now", "app"]);
        assert!(out.status.success(), "{}", text(&out));
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    forge_with(&format!(
        "[signing]\nkey_file = \"attacker.key\"\ntrusted_keys = [\"{attacker_public}\"]\n"
    ));
    forge_with("");
    let listed = list_json(&world, &[]);
    assert_eq!(listed.len(), 3);
    let verdict = |i: usize| {
        listed[i]["authenticity"]["verdict"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let id = |i: usize| listed[i]["snapshot"].as_str().unwrap().to_string();
    // Newest first: unsigned forgery, signed forgery, the real one.
    assert_eq!(
        (verdict(0), verdict(1), verdict(2)),
        ("refused".into(), "refused".into(), "trusted".into())
    );
    let (unsigned, signed) = (id(0), id(1));
    assert_eq!(id(2), real);
    assert!(listed[0]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        listed[1]["authenticity"]["detail"]
            .as_str()
            .unwrap()
            .contains(&attacker_public)
    );
    let table = text(&world.backupd(&["list", "app"]));
    assert!(
        table.contains(&format!("✗ {signed}: signed by {attacker_public}")),
        "{table}"
    );

    // `latest` is the real snapshot.
    let to = world.path("restored");
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(to.join("files/real.txt")).unwrap(),
        "real data"
    );
    // By id: refused, and --allow-unsigned does not cover a wrong signature.
    for (forged, words) in [(&unsigned, "unsigned"), (&signed, "does not list")] {
        for extra in [None, Some("--allow-unsigned")] {
            let to = world.path("nowhere");
            let mut args = vec![
                "restore",
                "app",
                forged.as_str(),
                "--to",
                to.to_str().unwrap(),
            ];
            args.extend(extra);
            let out = world.backupd(&args);
            if extra.is_some() && forged == &unsigned {
                assert!(out.status.success(), "{}", text(&out));
                assert!(
                    text(&out).contains("accepted by --allow-unsigned"),
                    "{}",
                    text(&out)
                );
                std::fs::remove_dir_all(&to).unwrap();
                continue;
            }
            assert!(!out.status.success(), "{forged} restored: {}", text(&out));
            assert!(text(&out).contains(words), "{words}: {}", text(&out));
            assert!(!to.exists(), "nothing is written for a refused snapshot");
        }
        let out = world.backupd(&["verify", "app", forged]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(words), "{}", text(&out));
    }
    // Retention (keep_last = 1) counts only real snapshots and never deletes forged ones.
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = list_json(&world, &[]);
    let ids: Vec<&str> = after
        .iter()
        .map(|m| m["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(after.len(), 3, "{ids:?}");
    assert!(
        !ids.contains(&real.as_str()),
        "the old real one went by keep_last = 1"
    );
    assert!(ids.contains(&unsigned.as_str()) && ids.contains(&signed.as_str()));
    let out = world.backupd(&["prune", "app"]);
    assert!(
        text(&out).contains("left alone (not trusted)"),
        "{}",
        text(&out)
    );
}
