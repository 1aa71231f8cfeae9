//! kill -9 at random moments of `backupd run-now` to a local and an S3 target: no
//! manifest for the killed run, every earlier snapshot still verifies, the next run
//! aborts the upload the killed one left open, and `prune` removes the leftovers.

use std::time::Duration;

use super::cloud_support::{S3s, env, s3_secret_file, s3_target};
use super::support::{World, list_json, noise, text, walk};

const TRIALS: usize = 20;

#[test]
fn kill_9_at_random_moments_never_leaves_a_partial_snapshot() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a.bin"), noise(128 << 20, 21)).unwrap();
    std::fs::write(world.path("src/b.txt"), "small").unwrap();
    let mut s3 = S3s::new(&world);
    s3.start();
    let secret = s3_secret_file(&world, &env("BACKUPD_TEST_S3_SECRET"));
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\norphan_grace = \"1s\"\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\n[targets.local]\nurl = \"file://{}\"\n\n{}\n[jobs.app]\ntargets = [\"local\", \"s3\"]\ncompression = \"none\"\nretention = {{ keep_last = 3 }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.recipient,
        world.target_dir().display(),
        s3_target("s3", &s3.endpoint(), "bkt/k9", &secret, "max_retries = 1\n"),
        world.path("src").display()
    );
    world.write_policy(&body);

    // One full run first: a snapshot to keep verifying, and how long a run takes here, so
    // the kill delays (spread over 0..1.2 × that) hit running backups on any machine.
    let t = std::time::Instant::now();
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let span_ms = (t.elapsed().as_millis() as u64 * 6 / 5).max(50);
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut killed_mid_run = 0;
    for trial in 0..TRIALS {
        let before = list_json(&world, &["--target", "local"]).len();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % span_ms);
        let mut child = world.spawn(&["run-now", "app"], None);
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !finished {
            killed_mid_run += 1;
        }
        let after = list_json(&world, &["--target", "local"]);
        let s3_after = list_json(&world, &["--target", "s3"]);
        // Each listed snapshot is whole: its manifest lists objects that all exist.
        // A killed run adds nothing; one that finished adds its snapshot (retention keeps 3).
        assert!(
            after.len() <= (before + 1).min(3),
            "trial {trial}: {} -> {}",
            before,
            after.len()
        );
        for m in after.iter().chain(&s3_after) {
            assert_eq!(m["sources"].as_object().unwrap().len(), 1, "trial {trial}");
        }
    }
    // Every committed snapshot verifies, on both targets: nothing half-done was committed.
    let out = world.backupd(&["verify", "app", "all"]);
    assert!(out.status.success(), "{}", text(&out));
    let committed = list_json(&world, &[]).len();

    // The next run aborts what the killed ones left open on the S3 server, and commits.
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    // A kill between the server creating an upload and the journal recording its id
    // leaves one the journal cannot know; the bucket lifecycle rule covers that window.
    // Reported, not asserted: whether a kill lands there is timing.
    let unjournaled = s3.open_uploads().len();
    let left: Vec<String> = std::fs::read_dir(world.path("state/uploads"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "journal entries remain: {left:?}\n{}",
        text(&out)
    );
    // prune sweeps the leftovers of killed runs (orphan_grace = 1s).
    std::thread::sleep(Duration::from_millis(1100));
    let out = world.backupd(&["prune", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let ids: Vec<String> = list_json(&world, &["--target", "local"])
        .iter()
        .map(|m| m["snapshot"].as_str().unwrap().to_string())
        .collect();
    for p in walk(&world.target_dir().join("app")) {
        let rel = p.strip_prefix(world.target_dir().join("app")).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        assert!(ids.contains(&top), "leftover after prune: {}", p.display());
    }
    eprintln!(
        "kill -9: {TRIALS} trials ({killed_mid_run} killed mid-run), {committed} snapshots committed, 0 losses; {unjournaled} upload(s) left open in the create-to-journal window"
    );
    assert!(
        killed_mid_run >= TRIALS / 2,
        "most trials must hit a running backup"
    );
}
