//! The status page at `/` (issue 18), loaded by a real browser: headless Chromium renders
//! it from a running daemon and the test reads the rendered text.

use std::process::Command;

use super::daemon_support::Daemon;
use super::support::{World, list_json, require_tool, text};

/// The page as Chromium renders it (the DOM after parsing), and Chromium's own output.
fn rendered(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            // Containers often have a small /dev/shm.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=2000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("start chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_status_page_renders_each_job_and_highlights_failures_in_a_browser() {
    require_tool("chromium");
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a.txt"), "a").unwrap();
    // A failing source whose path would be markup if the page did not escape it.
    let missing = world.path("missing-<b>x</b>");
    let body = std::fs::read_to_string(world.policy(&format!(
        "[jobs.good]\nschedule = \"0 3 1 1 *\"\nalert_if_older_than = \"1d\"\ntargets = [\"local\"]\n[jobs.good.sources.files]\nkind = \"directory\"\npath = \"{}\"\n\n[jobs.bad]\nschedule = \"0 3 1 1 *\"\ntargets = [\"local\"]\n[jobs.bad.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display(),
        missing.display()
    )))
    .unwrap()
    .replacen("[daemon]\n", "[daemon]\nlisten = \"127.0.0.1:0\"\n", 1);
    world.write_policy(&body);
    for _ in 0..2 {
        let out = world.backupd(&["run-now", "good"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = world.backupd(&["run-now", "bad"]);
    assert!(!out.status.success());
    let newest = list_json(&world, &["good"])[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(60, "the inventory", |s| {
        s["jobs"]["good"]["snapshots"]["local"] == 2
    });
    let url = format!("http://{}/", daemon.addr());
    let dom = rendered(&url);
    assert!(daemon.stop().success());

    assert!(
        dom.contains("<title>backupd — 1 job needs attention</title>"),
        "{dom}"
    );
    for needed in [
        "Jobs",
        "good",
        "bad",
        "FAILED",
        "OK",
        "Recent snapshots",
        newest.as_str(),
        "alarm after 1 d 0 h",
        "Last run of bad failed",
    ] {
        assert!(
            dom.contains(needed),
            "{needed:?} is not on the page:\n{dom}"
        );
    }
    // The failing job's row is highlighted, the good one's is not.
    assert!(dom.contains("<tr class=\"bad\"><td><b>bad</b>"), "{dom}");
    assert!(!dom.contains("<tr class=\"bad\"><td><b>good</b>"), "{dom}");
    // Text from errors is shown as text, never as markup.
    assert!(dom.contains("missing-&lt;b&gt;x&lt;/b&gt;"), "{dom}");
    assert!(!dom.contains("missing-<b>x</b>"), "{dom}");
    // Self-contained: nothing to fetch, nothing to run.
    assert!(!dom.contains("<script"), "{dom}");
    assert!(!dom.contains("src=\"http"), "{dom}");
}
