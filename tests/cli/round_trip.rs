//! Back up, list and restore through the real binary; restore by hand with age + tar.

use crate::support::*;

fn dir_job(world: &World, compression: &str) -> std::path::PathBuf {
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\ncompression = \"{compression}\"\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ))
}

#[test]
fn tricky_tree_round_trips_byte_for_byte() {
    let world = World::new();
    tricky_tree(&world.path("src"), 50 << 20);
    dir_job(&world, "gzip");
    let out = world.backupd(&["run-now", "--tag", "pre-migration"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("committed to local"),
        "{}",
        text(&out)
    );

    let listed = list_json(&world, &["app"]);
    assert_eq!(listed.len(), 1);
    let tags: Vec<&str> = listed[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags, ["manual", "pre-migration"]);
    assert_eq!(listed[0]["format"], 1);
    let tree = &listed[0]["sources"]["tree"];
    assert_eq!(tree["kind"], "directory");
    assert!(tree["stored"]["sha256"].as_str().unwrap().len() == 64);
    assert_eq!(tree["stats"]["symlinks"], 3);

    let restore = world.path("restore");
    let out = world.backupd(&["restore", "app", "--to", restore.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&world.path("src"), &restore.join("tree"));
}

#[test]
fn stored_objects_restore_with_standard_tools_alone() {
    require_tool("age");
    require_tool("zstd");
    require_tool("sqlite3");
    for compression in ["gzip", "zstd"] {
        let world = World::new();
        tricky_tree(&world.path("src"), 1 << 20);
        sh(&format!(
            "sqlite3 '{}' \"create table t(x); insert into t values (1),(2),(3);\"",
            world.path("app.db").display()
        ));
        world.policy(&format!(
            "[jobs.app]\ntargets = [\"local\"]\ncompression = \"{compression}\"\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n\n[jobs.app.sources.db]\nkind = \"sqlite\"\npath = \"app.db\"\n"
        ));
        let out = world.backupd(&["run-now"]);
        assert!(out.status.success(), "{}", text(&out));
        let (decompress, ext) = if compression == "gzip" {
            ("gzip -d", "gz")
        } else {
            ("zstd -d", "zst")
        };

        let tar_obj = world.stored(&format!(".tar.{ext}.age"));
        assert_eq!(tar_obj.len(), 1, "{:?}", world.stored(""));
        let manual = world.path("manual");
        std::fs::create_dir(&manual).unwrap();
        sh(&format!(
            "age -d -i '{}' '{}' | {decompress} | tar -x -C '{}'",
            world.key.display(),
            tar_obj[0].display(),
            manual.display()
        ));
        assert_same_tree(&world.path("src"), &manual);
        // The index object is plain JSON under the same encoding.
        let index_obj = world.stored(&format!(".index.json.{ext}.age"));
        assert_eq!(index_obj.len(), 1);
        let index = sh(&format!(
            "age -d -i '{}' '{}' | {decompress}",
            world.key.display(),
            index_obj[0].display()
        ));
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        assert!(
            index["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["path"] == "plain.txt" && e["size"] == 6),
            "{index}"
        );

        let db_obj = world.stored(&format!(".sqlite.{ext}.age"));
        assert_eq!(db_obj.len(), 1);
        let count = sh(&format!(
            "age -d -i '{}' '{}' | {decompress} > '{}/db' && sqlite3 '{}/db' 'select count(*) from t'",
            world.key.display(),
            db_obj[0].display(),
            manual.display(),
            manual.display()
        ));
        assert_eq!(count.trim(), "3");
    }
}

#[test]
fn only_skip_and_dry_run_choose_what_is_written() {
    let world = World::new();
    for name in ["a", "b", "c"] {
        std::fs::create_dir_all(world.path(name)).unwrap();
        std::fs::write(world.path(name).join("f.txt"), name).unwrap();
    }
    world.policy(
        "[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.a]\nkind = \"directory\"\npath = \"a\"\n\n[jobs.app.sources.b]\nkind = \"directory\"\npath = \"b\"\n\n[jobs.app.sources.c]\nkind = \"directory\"\npath = \"c\"\n",
    );
    assert!(world.backupd(&["run-now", "app"]).status.success());

    let dry = world.path("dry");
    let out = world.backupd(&[
        "restore",
        "app",
        "latest",
        "--to",
        dry.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dry.exists(), "--dry-run must write nothing");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("would restore a") && said.contains("would restore c"),
        "{said}"
    );

    let only = world.path("only");
    let out = world.backupd(&[
        "restore",
        "app",
        "--to",
        only.to_str().unwrap(),
        "--only",
        "b",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(only.join("b/f.txt")).unwrap(), "b");
    assert!(!only.join("a").exists() && !only.join("c").exists());

    let skip = world.path("skip");
    let out = world.backupd(&[
        "restore",
        "app",
        "--to",
        skip.to_str().unwrap(),
        "--skip",
        "a",
        "--skip",
        "c",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(skip.join("b/f.txt").exists() && !skip.join("a").exists() && !skip.join("c").exists());

    let out = world.backupd(&[
        "restore",
        "app",
        "--to",
        skip.to_str().unwrap(),
        "--only",
        "zzz",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no source \"zzz\""),
        "{}",
        text(&out)
    );
}

#[test]
fn restore_refuses_a_non_empty_directory_without_force() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f.txt"), "new").unwrap();
    dir_job(&world, "zstd");
    assert!(world.backupd(&["run-now"]).status.success());
    let to = world.path("busy");
    std::fs::create_dir_all(to.join("tree")).unwrap();
    std::fs::write(to.join("tree/f.txt"), "old").unwrap();
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(to.join("tree/f.txt")).unwrap(),
        "old"
    );
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(to.join("tree/f.txt")).unwrap(),
        "new"
    );
}

#[test]
fn snapshot_can_be_named_by_a_unique_prefix() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f.txt"), "v1").unwrap();
    dir_job(&world, "gzip");
    assert!(world.backupd(&["run-now"]).status.success());
    let first = list_json(&world, &[])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(world.path("src/f.txt"), "v2").unwrap();
    assert!(world.backupd(&["run-now"]).status.success());
    let listed = list_json(&world, &[]);
    assert_eq!(listed.len(), 2);
    assert!(
        listed[0]["snapshot"].as_str().unwrap() > listed[1]["snapshot"].as_str().unwrap(),
        "newest first"
    );

    let to = world.path("old");
    let prefix = &first[..first.len() - 3];
    let out = world.backupd(&["restore", "app", prefix, "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(to.join("tree/f.txt")).unwrap(),
        "v1"
    );
    let to = world.path("new");
    assert!(
        world
            .backupd(&["restore", "app", "--to", to.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(to.join("tree/f.txt")).unwrap(),
        "v2"
    );
}

#[test]
fn plaintext_is_an_explicit_opt_out_with_a_warning() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f.txt"), "clear").unwrap();
    // Its own state directory: the default is shared with every other test run.
    world.write_policy(
        "[daemon]\nstate_dir = \"state\"\n[encryption]\nmode = \"none\"\n\n[targets.local]\npath = \"target\"\n\n[jobs.app]\ntargets = [\"local\"]\n\n[jobs.app.sources.tree]\nkind = \"directory\"\npath = \"src\"\n"
    );
    let out = world.backupd(&["run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PLAINTEXT"),
        "{}",
        text(&out)
    );
    let objs = world.stored(".tar.gz");
    assert_eq!(objs.len(), 1, "plaintext objects carry no .age suffix");
    let listing = sh(&format!("gzip -dc '{}' | tar -t", objs[0].display()));
    assert!(listing.contains("f.txt"), "{listing}");
}
