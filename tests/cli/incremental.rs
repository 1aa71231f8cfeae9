//! Incremental directory backups (issue 21): a tree mutated between runs in every way a
//! tree changes, across a full and six incrementals, restored at each point by backupd and
//! by GNU tar alone; retention keeping what kept snapshots build on; a lost or damaged
//! base failing loudly at verify and restore and turning the next run into a full.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::support::{World, assert_same_tree, list_json, noise, require_tool, sh, text};

fn policy(world: &World, chain: &str, retention: &str) {
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\ncompression = \"zstd\"\n{retention}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\nincremental = {{ full_every = \"7d\", chain = \"{chain}\" }}\n",
        world.path("src").display()
    ));
}

fn ok(world: &World, args: &[&str]) -> String {
    let out = world.backupd(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// The snapshots of `app`, oldest first, as (id, level, base).
fn snapshots(world: &World) -> Vec<(String, u64, Option<String>)> {
    let mut out: Vec<_> = list_json(world, &["app"])
        .iter()
        .map(|s| {
            let src = &s["sources"]["files"];
            (
                s["snapshot"].as_str().unwrap().to_string(),
                src["level"].as_u64().unwrap_or(0),
                src["base"].as_str().map(str::to_string),
            )
        })
        .collect();
    out.reverse();
    out
}

/// Each step changes the tree the way trees change; each is followed by a backup.
fn mutate(src: &Path, step: usize) {
    let p = |rel: &str| src.join(rel);
    match step {
        // Added, changed in place with the same size and mtime (only the ctime tells),
        // deleted.
        1 => {
            write(src, "new/added.txt", b"added on day 1");
            let before = std::fs::metadata(p("docs/same-size.txt")).unwrap();
            std::fs::write(p("docs/same-size.txt"), b"CHANGED!").unwrap();
            let mtime = filetime(&before);
            sh(&format!(
                "touch -m -d @{mtime} '{}'",
                p("docs/same-size.txt").display()
            ));
            std::fs::remove_file(p("docs/deleted.txt")).unwrap();
        }
        // Renamed file and directory.
        2 => {
            std::fs::rename(p("docs/report.txt"), p("docs/report-final.txt")).unwrap();
            std::fs::rename(p("photos"), p("pictures")).unwrap();
        }
        // A directory removed and created again with other contents.
        3 => {
            std::fs::remove_dir_all(p("cache")).unwrap();
            write(src, "cache/fresh.bin", &noise(5_000, 3));
        }
        // Type changes: file → dir, dir → file, file → symlink, symlink → file.
        4 => {
            std::fs::remove_file(p("docs/becomes-dir")).unwrap();
            write(src, "docs/becomes-dir/inside.txt", b"now a directory");
            std::fs::remove_dir_all(p("becomes-file")).unwrap();
            write(src, "becomes-file", b"now a file");
            std::fs::remove_file(p("docs/becomes-link")).unwrap();
            std::os::unix::fs::symlink("report-final.txt", p("docs/becomes-link")).unwrap();
            std::fs::remove_file(p("link-becomes-file")).unwrap();
            write(src, "link-becomes-file", b"was a symlink");
        }
        // Permissions changed, contents not.
        5 => {
            std::fs::set_permissions(p("docs/mode.sh"), std::fs::Permissions::from_mode(0o750))
                .unwrap();
            std::fs::set_permissions(p("pictures"), std::fs::Permissions::from_mode(0o711))
                .unwrap();
        }
        // Nothing changed at all, then an empty directory and a deep new one.
        6 => {
            std::fs::create_dir_all(p("empty/dir")).unwrap();
            write(src, "a/b/c/d/e/deep.txt", b"deep");
        }
        _ => unreachable!(),
    }
}

fn filetime(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
}

fn first_tree(src: &Path) {
    write(src, "docs/report.txt", b"quarterly report");
    write(src, "docs/same-size.txt", b"original");
    write(src, "docs/deleted.txt", b"gone on day 1");
    write(src, "docs/becomes-dir", b"a file first");
    write(src, "docs/becomes-link", b"a file first");
    write(src, "docs/mode.sh", b"#!/bin/sh\necho hi\n");
    write(src, "photos/big.raw", &noise(300_000, 1));
    write(src, "photos/small.jpg", &noise(2_000, 2));
    write(src, "cache/old.bin", &noise(4_000, 4));
    write(src, "becomes-file/x", b"in a directory first");
    std::os::unix::fs::symlink("docs/report.txt", src.join("link-becomes-file")).unwrap();
    std::os::unix::fs::symlink("photos", src.join("dir-link")).unwrap();
}

/// Restores every point of the job with GNU tar alone, as BACKUP_POLICY.md tells an
/// operator: the full, then each object the point's chain lists, with
/// `--listed-incremental=/dev/null` so deletions and renames apply.
fn gnu_tar_restore(world: &World, chain_ids: &[&str], into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for id in chain_ids {
        let object = world
            .target_dir()
            .join(format!("app/{id}/files.tar.zst.age"));
        sh(&format!(
            "age -d -i '{}' '{}' | zstd -d | tar -x --listed-incremental=/dev/null -C '{}' -f -",
            world.key.display(),
            object.display(),
            into.display()
        ));
    }
}

fn every_point_restores(chain: &str) {
    require_tool("age");
    require_tool("zstd");
    require_tool("tar");
    let world = World::new();
    let src = world.path("src");
    first_tree(&src);
    policy(&world, chain, "");
    let mut expected = Vec::new();
    for step in 0..=6 {
        if step > 0 {
            mutate(&src, step);
        }
        let out = ok(&world, &["run-now", "app"]);
        assert!(!out.contains("FAILED"), "{out}");
        let copy = world.path(&format!("expected/{step}"));
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        sh(&format!("cp -a '{}' '{}'", src.display(), copy.display()));
        expected.push(copy);
    }
    let snaps = snapshots(&world);
    assert_eq!(snaps.len(), 7);
    assert_eq!(
        (snaps[0].1, snaps[0].2.as_deref()),
        (0, None),
        "a full first"
    );
    for (i, (_, level, base)) in snaps.iter().enumerate().skip(1) {
        let (want_level, want_base) = match chain {
            "incremental" => (i as u64, &snaps[i - 1].0),
            _ => (1, &snaps[0].0),
        };
        assert_eq!(*level, want_level, "snapshot {i}");
        assert_eq!(base.as_ref(), Some(want_base), "snapshot {i}");
    }
    // Only the changes are stored: day 1 (a few small files) is far smaller than the full.
    let size = |id: &str| {
        std::fs::metadata(
            world
                .target_dir()
                .join(format!("app/{id}/files.tar.zst.age")),
        )
        .unwrap()
        .len()
    };
    assert!(
        size(&snaps[1].0) * 10 < size(&snaps[0].0),
        "{} vs {}",
        size(&snaps[1].0),
        size(&snaps[0].0)
    );
    for (i, (id, _, _)) in snaps.iter().enumerate() {
        let by_backupd = world.path(&format!("restored/{i}"));
        let out = ok(
            &world,
            &["restore", "app", id, "--to", by_backupd.to_str().unwrap()],
        );
        assert!(out.contains("checksums match"), "{out}");
        assert_same_tree(&expected[i], &by_backupd.join("files"));
        let ids: Vec<&str> = match chain {
            "incremental" => snaps[..=i].iter().map(|s| s.0.as_str()).collect(),
            _ if i == 0 => vec![snaps[0].0.as_str()],
            _ => vec![snaps[0].0.as_str(), id.as_str()],
        };
        let by_tar = world.path(&format!("by-tar/{i}"));
        gnu_tar_restore(&world, &ids, &by_tar);
        assert_same_tree(&expected[i], &by_tar);
    }
    let out = ok(&world, &["verify", "app", "all"]);
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(out.matches(": OK").count(), 7, "{out}");

    // Browsing the newest point shows the whole tree, and `cat` of a file unchanged since
    // the full reads it from the full; of a changed one, from the incremental.
    let newest = &snaps[6].0;
    let listing = ok(&world, &["ls", "app", newest]);
    for want in [
        "files/pictures/big.raw",
        "files/docs/report-final.txt",
        "files/a/b/c/d/e/deep.txt",
    ] {
        assert!(listing.lines().any(|l| l == want), "{want}:\n{listing}");
    }
    assert!(!listing.contains("files/docs/deleted.txt"), "{listing}");
    let cat = |path: &str| {
        let out = world.backupd(&["cat", "app", newest, path]);
        assert!(out.status.success(), "{}", text(&out));
        out.stdout
    };
    assert_eq!(cat("docs/same-size.txt"), b"CHANGED!");
    assert_eq!(cat("docs/mode.sh"), b"#!/bin/sh\necho hi\n");
    assert_eq!(cat("pictures/small.jpg"), noise(2_000, 2));
    let gone = world.backupd(&["cat", "app", newest, "docs/deleted.txt"]);
    assert!(!gone.status.success(), "{}", text(&gone));
}

#[test]
fn every_point_of_an_incremental_chain_restores_exactly_with_backupd_and_with_gnu_tar() {
    every_point_restores("incremental");
}

#[test]
fn every_point_of_a_differential_restores_exactly_with_backupd_and_with_gnu_tar() {
    every_point_restores("differential");
}

/// `keep_last = 2` on differentials keeps the two newest and the full both build on;
/// the differential between them goes. In a chain, the newest keeps every link.
#[test]
fn retention_keeps_the_full_that_the_kept_snapshots_depend_on() {
    for (chain, kept) in [("differential", 3), ("incremental", 4)] {
        let world = World::new();
        let src = world.path("src");
        first_tree(&src);
        policy(&world, chain, "[jobs.app.retention]\nkeep_last = 2\n");
        for step in 0..4 {
            write(&src, &format!("day-{step}.txt"), b"more");
            ok(&world, &["run-now", "app"]);
        }
        let snaps = snapshots(&world);
        assert_eq!(snaps.len(), kept, "{chain}: {snaps:?}");
        assert_eq!(snaps[0].1, 0, "{chain}: the full stays");
        let out = ok(&world, &["prune", "app", "--dry-run"]);
        assert!(out.contains("base of"), "{chain}: {out}");
        let restored = world.path("restored");
        ok(
            &world,
            &["restore", "app", "--to", restored.to_str().unwrap()],
        );
        assert_same_tree(&src, &restored.join("files"));
    }
}

/// An attacker (or an accident) removes the full an incremental needs, or damages it:
/// verify fails naming the base, restore refuses before writing a wrong tree, and the
/// next backup starts a new chain, saying why.
#[test]
fn a_lost_or_damaged_base_fails_loudly_and_the_next_run_is_a_full() {
    require_tool("age");
    let world = World::new();
    let src = world.path("src");
    first_tree(&src);
    policy(&world, "differential", "");
    ok(&world, &["run-now", "app"]);
    write(&src, "docs/more.txt", b"more");
    ok(&world, &["run-now", "app"]);
    let snaps = snapshots(&world);
    let (full, diff) = (&snaps[0].0, &snaps[1].0);

    // Damaged: one byte of the full's object flipped.
    let object = world
        .target_dir()
        .join(format!("app/{full}/files.tar.zst.age"));
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&object, &bad).unwrap();
    let out = world.backupd(&["verify", "app", diff]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("chain"), "{}", text(&out));
    let restored = world.path("restored");
    let out = world.backupd(&["restore", "app", diff, "--to", restored.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("must not be trusted"), "{}", text(&out));
    std::fs::write(&object, &good).unwrap();

    // Lost: the full's manifest deleted (as prune would, or someone with the keys).
    std::fs::remove_file(world.target_dir().join(format!("app/{full}/manifest.json"))).unwrap();
    let out = world.backupd(&["verify", "app", diff]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("base {full}")) && text(&out).contains("not on target"),
        "{}",
        text(&out)
    );
    let restored = world.path("restored-again");
    let out = world.backupd(&["restore", "app", diff, "--to", restored.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("chain is broken"), "{}", text(&out));
    assert!(
        !restored.join("files").exists(),
        "nothing of a broken chain is written"
    );

    // The next run: a full, and the reason is on the source.
    let out = ok(&world, &["run-now", "app"]);
    assert!(out.contains("this run is a full"), "{out}");
    let snaps = snapshots(&world);
    assert_eq!(snaps.last().unwrap().1, 0, "{snaps:?}");
    // And `--full` forces one when nothing is wrong.
    let out = ok(&world, &["run-now", "app", "--full"]);
    assert!(!out.contains("this run is a full"), "{out}");
    let snaps = snapshots(&world);
    assert_eq!(snaps.last().unwrap().1, 0, "{snaps:?}");
    write(&src, "docs/after.txt", b"after");
    ok(&world, &["run-now", "app"]);
    assert_eq!(snapshots(&world).last().unwrap().1, 1);

    // A base whose last verification failed is not built on, even once it reads again.
    let snaps = snapshots(&world);
    let newest_full = &snaps[snaps.len() - 2].0;
    let object = world
        .target_dir()
        .join(format!("app/{newest_full}/files.tar.zst.age"));
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x55;
    std::fs::write(&object, &bad).unwrap();
    let out = world.backupd(&["verify", "app", newest_full]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    std::fs::write(&object, &good).unwrap();
    let out = ok(&world, &["run-now", "app"]);
    assert!(out.contains("failed its last verification"), "{out}");
    assert_eq!(snapshots(&world).last().unwrap().1, 0);
}

/// An incremental source reads the base's encrypted file list: a policy without the
/// identity is refused at load, naming the key and what to set.
#[test]
fn an_incremental_source_without_an_identity_is_a_policy_error() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    world.write_policy(&format!(
        "[daemon]\nstate_dir = \"state\"\n[encryption]\nrecipients = [\"{}\"]\n[targets.local]\nurl = \"file://{}\"\n[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\nincremental = {{ full_every = \"7d\" }}\n",
        world.recipient,
        world.target_dir().display(),
        world.path("src").display()
    ));
    let out = world.backupd(&["run-now", "app"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("jobs.app.sources.files.incremental") && t.contains("identity_file"),
        "{t}"
    );
    assert!(!world.target_dir().exists(), "nothing was written");
}
