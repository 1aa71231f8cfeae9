//! Browsing snapshots (issue 19): `ls`, `find`, `cat` and `restore --include/--exclude` on
//! a tree with awkward names, on file and S3 targets; a flipped byte in the store, a
//! hostile index, and a snapshot without an index.

use super::cloud_support::{env, s3_secret_file, s3_target, unique};
use super::support::{World, noise, text, tricky_tree};

fn tree_policy(world: &World, targets_section: &str, target: &str) {
    std::fs::create_dir_all(world.path("src")).unwrap();
    tricky_tree(&world.path("src"), 300_000);
    std::fs::write(world.path("src/invoices-2026-11.pdf"), noise(70_000, 7)).unwrap();
    std::fs::hard_link(world.path("src/plain.txt"), world.path("src/hard-link.txt")).unwrap();
    world.write_policy(&format!(
        "[daemon]\nstate_dir = \"state\"\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n{targets_section}\n[jobs.app]\ntargets = [\"{target}\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n[jobs.app.sources.db]\nkind = \"sqlite\"\npath = \"{}\"\n",
        world.recipient,
        world.path("src").display(),
        world.path("app.db").display(),
    ));
    let db = rusqlite::Connection::open(world.path("app.db")).unwrap();
    db.execute_batch("create table t(x); insert into t values (1);")
        .unwrap();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
}

fn file_world() -> World {
    let world = World::new();
    let section = format!(
        "[targets.local]\nurl = \"file://{}\"\n",
        world.target_dir().display()
    );
    tree_policy(&world, &section, "local");
    world
}

fn ok(world: &World, args: &[&str]) -> String {
    let out = world.backupd(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn browse_everything(world: &World) {
    // ls: every entry of the directory source, names escaped one per line.
    let listing = ok(world, &["ls", "app"]);
    for want in [
        "files/plain.txt",
        "files/ünïcödé/日本語 ファイル.txt",
        "files/spaces and 'quotes'/file \"x\".txt",
        "files/newline\\nname.txt",
        "files/empty-dir/",
        "files/nested/empty/dirs/",
        "files/link-to-dir",
        "files/hard-link.txt",
        &format!("files/long/{}.dat", "n".repeat(200)),
    ] {
        assert!(
            listing.lines().any(|l| l == want),
            "{want} missing from:\n{listing}"
        );
    }
    assert!(
        !listing.contains("db/"),
        "only directory sources are listed"
    );
    // -l: type, mode, size and the link target.
    let long = ok(world, &["ls", "app", "latest", "ünïcödé", "-l"]);
    assert!(
        long.lines().any(|l| l.starts_with("files: -rw")
            && l.contains(" 15 ")
            && l.ends_with("日本語 ファイル.txt")),
        "{long}"
    );
    assert!(!long.contains("plain.txt"), "the prefix limits it: {long}");
    let links = ok(world, &["ls", "app", "latest", "link-to-dir", "-l"]);
    assert!(
        links.contains("lrwx") && links.contains("-> ünïcödé"),
        "{links}"
    );
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&ok(world, &["ls", "app", "--json"])).unwrap();
    let big = json.iter().find(|e| e["path"] == "big/random.bin").unwrap();
    assert_eq!(big["size"], 300_000);
    assert_eq!(big["kind"], "file");
    assert_eq!(big["source"], "files");

    // find: by name anywhere, and by a path pattern.
    let found = ok(world, &["find", "app", "*.pdf"]);
    assert!(
        found.contains("invoices-2026-11.pdf") && found.contains("70000"),
        "{found}"
    );
    let found = ok(world, &["find", "app", "d0/**/bottom.txt"]);
    assert!(found.contains("bottom.txt"), "{found}");
    let out = world.backupd(&["find", "app", "*.nothing"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // cat: the exact bytes, checked against the index.
    for (path, want) in [
        ("invoices-2026-11.pdf", noise(70_000, 7)),
        ("big/random.bin", noise(300_000, 42)),
        (
            "ünïcödé/日本語 ファイル.txt",
            "こんにちは".as_bytes().to_vec(),
        ),
        ("empty.txt", Vec::new()),
        ("hard-link.txt", b"hello\n".to_vec()),
    ] {
        let out = world.backupd(&["cat", "app", "latest", path, "--source", "files"]);
        assert!(out.status.success(), "{path}: {}", text(&out));
        assert_eq!(out.stdout, want, "{path}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("matches the index")
                && String::from_utf8_lossy(&out.stderr).contains("read by ranged requests"),
            "{}",
            text(&out)
        );
    }
    let out = world.backupd(&["cat", "app", "latest", "no/such/file", "--source", "files"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no file \"no/such/file\""),
        "{}",
        text(&out)
    );
    let out = world.backupd(&["cat", "app", "latest", "empty-dir", "--source", "files"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // restore --include / --exclude: only what matches, parents made, every rule applied.
    let to = world.path("partial");
    let out = world.backupd(&[
        "restore",
        "app",
        "--only",
        "files",
        "--include",
        "ünïcödé",
        "--include",
        "*.pdf",
        "--exclude",
        "**/*.md",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(to.join("files/invoices-2026-11.pdf")).unwrap(),
        noise(70_000, 7)
    );
    assert_eq!(
        std::fs::read_to_string(to.join("files/ünïcödé/日本語 ファイル.txt")).unwrap(),
        "こんにちは"
    );
    assert!(!to.join("files/plain.txt").exists());
    assert!(!to.join("files/big").exists());
    // A non-directory source cannot be filtered: said before anything is written.
    let to2 = world.path("partial2");
    let out = world.backupd(&[
        "restore",
        "app",
        "--include",
        "*.pdf",
        "--to",
        to2.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--only"), "{}", text(&out));
    assert!(!to2.exists());
}

#[test]
fn ls_find_cat_and_partial_restore_on_a_file_target() {
    let world = file_world();
    browse_everything(&world);
}

#[test]
fn ls_find_cat_and_partial_restore_on_s3() {
    let world = World::new();
    let secret = s3_secret_file(&world, &env("BACKUPD_TEST_S3_SECRET"));
    let section = s3_target(
        "s3",
        &env("BACKUPD_TEST_S3S"),
        &format!("backupd-test/{}", unique("browse")),
        &secret,
        "",
    );
    tree_policy(&world, &section, "s3");
    browse_everything(&world);
}

/// The one stored object of the snapshot whose name ends with `suffix`.
fn stored(world: &World, suffix: &str) -> std::path::PathBuf {
    let found = world.stored(suffix);
    assert_eq!(found.len(), 1, "{suffix}: {found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn a_flipped_byte_in_the_store_fails_cat_naming_the_file() {
    let world = file_world();
    let object = stored(&world, "files.tar.gz.age");
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&object, bytes).unwrap();
    let out = world.backupd(&[
        "cat",
        "app",
        "latest",
        "big/random.bin",
        "--source",
        "files",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("big/random.bin"), "{}", text(&out));
}

#[test]
fn a_hostile_index_is_refused_and_nothing_is_listed_from_it() {
    let world = file_world();
    // Someone who can write to the bucket swaps in an index of their own, encrypted to the
    // public recipient, and rewrites its sums in the (unsigned: no [signing]) manifest:
    // every checksum matches, and the index itself must still be refused.
    let index_path = stored(&world, "files.index.json.gz.age");
    let hostile = serde_json::json!({
        "format": 1,
        "entries": [{"path": "../../etc/passwd", "kind": "file", "size": 1, "mode": 420,
                     "mtime": 0, "offset": 0}]
    })
    .to_string();
    let encrypted = encrypt_gzip(&world, hostile.as_bytes());
    std::fs::write(&index_path, &encrypted).unwrap();
    let manifest_path = index_path.parent().unwrap().join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let sha = |b: &[u8]| hex(&sha2_digest(b));
    m["sources"]["files"]["index"]["stored"] =
        serde_json::json!({"bytes": encrypted.len(), "sha256": sha(&encrypted)});
    m["sources"]["files"]["index"]["plain"] =
        serde_json::json!({"bytes": hostile.len(), "sha256": sha(hostile.as_bytes())});
    m.as_object_mut().unwrap().remove("digest");
    m.as_object_mut().unwrap().remove("signature");
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = world.backupd(&["ls", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("refusing the index") && text(&out).contains("../../etc/passwd"),
        "{}",
        text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("passwd"));
    // Verification judges the index too.
    let out = world.backupd(&["verify", "app", "latest"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("index"), "{}", text(&out));
}

#[test]
fn a_snapshot_without_an_index_is_browsed_by_reading_its_archive() {
    let world = file_world();
    // As written before indexes existed: no index object, no `index` key.
    let index_path = stored(&world, "files.index.json.gz.age");
    let manifest_path = index_path.parent().unwrap().join("manifest.json");
    std::fs::remove_file(&index_path).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["sources"]["files"]
        .as_object_mut()
        .unwrap()
        .remove("index");
    m.as_object_mut().unwrap().remove("digest");
    m.as_object_mut().unwrap().remove("signature");
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = world.backupd(&["ls", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("files/big/random.bin"));
    assert!(text(&out).contains("has no index"), "{}", text(&out));
    let out = world.backupd(&["cat", "app", "latest", "big/random.bin"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, noise(300_000, 42));
    assert!(
        text(&out).contains("whole object's sha256"),
        "{}",
        text(&out)
    );
}

/// age-encrypts `plain` (gzip first) to the world's recipient, as backupd's pipeline would.
fn encrypt_gzip(world: &World, plain: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(plain).unwrap();
    let compressed = gz.finish().unwrap();
    let recipient: age::x25519::Recipient = world.recipient.parse().unwrap();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .unwrap();
    let mut out = Vec::new();
    let mut w = encryptor.wrap_output(&mut out).unwrap();
    w.write_all(&compressed).unwrap();
    w.finish().unwrap();
    out
}

fn sha2_digest(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `cat` of a small file out of a multi-MiB object reads only the member (gzip member,
/// zstd frame) holding it, plus the age header, not the whole object.
#[test]
fn cat_reads_only_the_part_of_a_large_object_that_holds_the_file() {
    for compression in ["gzip", "zstd"] {
        let world = World::new();
        std::fs::create_dir_all(world.path("src")).unwrap();
        for i in 0..6 {
            std::fs::write(world.path(&format!("src/a{i}.bin")), noise(1 << 20, i)).unwrap();
        }
        std::fs::write(world.path("src/z-wanted.txt"), b"the one file\n").unwrap();
        world.policy(&format!(
            "[jobs.app]\ntargets = [\"local\"]\ncompression = \"{compression}\"\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
            world.path("src").display()
        ));
        let out = world.backupd(&["run-now", "app"]);
        assert!(out.status.success(), "{}", text(&out));
        let out = world.backupd(&["cat", "app", "latest", "z-wanted.txt"]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(out.stdout, b"the one file\n");
        // "13 bytes; …; 2.0 MiB of the 6.0 MiB object read by ranged requests"
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        let (read, total) = said
            .split("; ")
            .find_map(|part| {
                let (read, rest) = part.split_once(" MiB of the ")?;
                let total = rest.split_once(" MiB object")?.0;
                Some((read.parse::<f64>().ok()?, total.parse::<f64>().ok()?))
            })
            .unwrap_or_else(|| panic!("{said}"));
        assert!(total > 5.9, "{compression}: {said}");
        assert!(
            read <= 2.1,
            "{compression}: only the header and one member: {said}"
        );
    }
}
