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
    src["stored"] =
        serde_json::json!({"bytes": stored.len(), "sha256": hex::encode(Sha256::digest(&stored))});
    src["plain"] =
        serde_json::json!({"bytes": plain.len(), "sha256": hex::encode(Sha256::digest(plain))});
    let dir = world.target_dir().join("app").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(src["object"].as_str().unwrap()), &stored).unwrap();
    // The template came from `list --json`: drop what list adds.
    let obj = m.as_object_mut().unwrap();
    obj.remove("targets");
    obj.remove("last_verification");
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    id
}

/// Restores `id` into `sandbox/to`, returning (exit code, output). Fails the test if
/// anything appears in the sandbox outside `to`.
fn restore(world: &World, id: &str, sandbox: &Path) -> (Option<i32>, String) {
    std::fs::create_dir_all(sandbox).unwrap();
    let to = sandbox.join("to");
    let out = world.backupd(&["restore", "app", id, "--to", to.to_str().unwrap()]);
    let outside: Vec<_> = walk(sandbox)
        .into_iter()
        .filter(|p| !p.starts_with(&to))
        .collect();
    assert!(
        outside.is_empty(),
        "restore of {id} wrote outside --to: {outside:?}\n{}",
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
    let template = list_json(&world, &[])[0].clone();
    assert_eq!(template["sources"]["files"]["object"], "files.tar.gz.age");

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
            // The link is skipped; the second `f` is refused, not written over the first.
            Some(1),
            "skipped symlink f -> /etc/passwd",
        ),
        (
            "a huge claimed size",
            vec![Entry::Truncated("huge.bin", 1 << 40)],
            Some(1),
            "huge.bin",
        ),
    ];
    let total = cases.len();
    for (n, (what, entries, code, words)) in cases.into_iter().enumerate() {
        let id = forge(&world, &template, &tar_of(&entries), n);
        let (got, said) = restore(&world, &id, &sandbox_root.join(n.to_string()));
        assert_eq!(got, code, "{what}: {said}");
        assert!(
            said.contains(words),
            "{what}: expected {words:?} in:\n{said}"
        );
    }
    assert!(!Path::new("/tmp/backupd-escaped-abs").exists());
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
