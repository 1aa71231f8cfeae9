//! Upload limits (issue 18): `daemon.upload_limit` and `[targets.X] upload_limit`. How fast
//! a limited upload goes is measured by `bench/upload-limit`; these tests hold what must
//! not change under a limit, and how a limit is written, shown and refused.

use super::support::{World, assert_same_tree, noise, text};

#[test]
fn a_limited_upload_stores_and_restores_the_same_and_the_limit_is_shown() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    // Incompressible, so about 3 MiB really goes through the limited target.
    std::fs::write(world.path("src/blob"), noise(3 << 20, 7)).unwrap();
    std::fs::write(world.path("src/small.txt"), "small").unwrap();
    let body = std::fs::read_to_string(world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    )))
    .unwrap()
    .replacen("[daemon]\n", "[daemon]\nupload_limit = \"40MiB/s\"\n", 1)
    .replacen(
        "[targets.local]\n",
        "[targets.local]\nupload_limit = \"2MiB/s\"\n",
        1,
    );
    world.write_policy(&body);
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("uploads to local limited to 2.0 MiB/s"),
        "the run says how fast it may upload: {}",
        text(&out)
    );
    let to = world.path("restore");
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_same_tree(&world.path("src"), &to.join("files"));
    let out = world.backupd(&["verify", "app"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = world.backupd(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["upload_limit_bytes_per_sec"], 40 << 20);
}

#[test]
fn a_limit_in_bits_or_without_a_unit_is_a_policy_error_and_nothing_runs() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    let base = std::fs::read_to_string(world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    )))
    .unwrap();
    for (bad, says) in [
        ("100Mbit/s", "bits"),
        ("20MiB", "like \"20MiB/s\""),
        ("fast", "rate"),
    ] {
        world.write_policy(&base.replacen(
            "[daemon]\n",
            &format!("[daemon]\nupload_limit = \"{bad}\"\n"),
            1,
        ));
        let out = world.backupd(&["run-now", "app"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        let said = text(&out);
        assert!(
            said.contains("upload_limit"),
            "{bad}: names the key: {said}"
        );
        assert!(said.contains(says), "{bad}: {said}");
        assert!(
            !world.target_dir().join("app").exists(),
            "{bad}: nothing ran"
        );
    }
}
