//! Faults the daemon must survive: a local target that cannot take more bytes (a file
//! size limit stands in for a full disk), then recovers on the next run.

use std::process::{Command, Stdio};

use super::daemon_support::Daemon;
use super::support::{World, list_json, noise, require_tool, walk};

#[test]
fn a_full_target_fails_the_run_clearly_commits_nothing_and_the_next_run_succeeds() {
    require_tool("prlimit");
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/big.bin"), noise(40 << 20, 8)).unwrap();
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n\n[encryption]\nrecipients = [\"{}\"]\n\n[targets.local]\nurl = \"file://{}\"\n\n[jobs.app]\nschedule = \"*/2 * * * * *\"\ncatch_up = false\ntargets = [\"local\"]\ncompression = \"none\"\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.recipient,
        world.target_dir().display(),
        world.path("src").display()
    );
    world.write_policy(&body);
    // The daemon itself runs with a 16 MiB file size limit: every object over it fails.
    let daemon_pid = {
        let d = Daemon::start(&world, &[]);
        let pid = d.child.id();
        let ok = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), "--fsize=16777216"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit");
        d
    };
    let mut daemon = daemon_pid;
    let s = daemon.wait_status(30, "a failed run", |s| {
        s["jobs"]["app"]["runs_failed"].as_u64() >= Some(1)
    });
    let errors = s["jobs"]["app"]["last_run"]["errors"].to_string();
    assert!(errors.contains("target local is full"), "{errors}");
    assert!(list_json(&world, &[]).is_empty());
    // The source shrinks below the limit: the next scheduled run succeeds, same daemon.
    std::fs::write(world.path("src/big.bin"), b"small now").unwrap();
    daemon.wait_status(30, "a good run", |s| {
        s["jobs"]["app"]["runs_succeeded"].as_u64() >= Some(1)
    });
    assert!(daemon.stop().success());
    let committed = list_json(&world, &[]);
    assert!(!committed.is_empty());
    // Nothing of the failed runs is left: every file belongs to a committed snapshot.
    let ids: Vec<String> = committed
        .iter()
        .map(|m| m["snapshot"].as_str().unwrap().to_string())
        .collect();
    for p in walk(&world.target_dir())
        .into_iter()
        .filter(|p| p.is_file())
    {
        assert!(
            ids.iter()
                .any(|id| p.to_string_lossy().contains(id.as_str())),
            "leftover {}",
            p.display()
        );
    }
}
