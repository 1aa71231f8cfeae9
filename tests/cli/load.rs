//! Load and adversarial policy input: a corpus of broken policies, 50 jobs due in the same
//! second under `max_concurrent_jobs = 2`, and a target holding 10,000 snapshots.

use std::time::{Duration, Instant};

use super::daemon_support::Daemon;
use super::support::{World, list_json, run, text};

#[test]
fn a_corpus_of_broken_policies_gets_exit_2_and_words_never_a_panic() {
    let world = World::new();
    let head = format!(
        "[encryption]\nrecipients = [\"{}\"]\n[targets.local]\npath = \"t\"\n",
        world.recipient
    );
    let job =
        "[jobs.a]\ntargets = [\"local\"]\n[jobs.a.sources.s]\nkind = \"directory\"\npath = \"s\"\n";
    let corpus: Vec<(String, &str)> = vec![
        ("[jobs\n".into(), "invalid"),
        ("jobs = 3\n".into(), "jobs"),
        (
            format!("{head}[jobs.a]\ntargets = \"local\"\n"),
            "jobs.a.targets",
        ),
        (
            format!("{head}{job}compression_level = \"high\"\n"),
            "invalid",
        ),
        (
            format!("{head}{job}[jobs.a.retention]\nkeep_last = -1\n"),
            "jobs.a",
        ),
        (
            format!("{head}{job}\n[jobs.b]\ntargets = [\"local\"]\n"),
            "jobs.b",
        ),
        (
            format!(
                "{head}[jobs.a]\ntargets = [\"local\"]\nschedule = \"0 0 31 2 *\"\n[jobs.a.sources.s]\nkind = \"directory\"\npath = \"s\"\n"
            ),
            "never matches",
        ),
        (
            format!(
                "{head}[jobs.a]\ntargets = [\"local\"]\ntimezone = \"Mars/Olympus\"\n[jobs.a.sources.s]\nkind = \"directory\"\npath = \"s\"\n"
            ),
            "unknown time zone",
        ),
        (
            format!("{head}[daemon]\nlisten = \"everywhere\"\n{job}"),
            "daemon.listen",
        ),
        (
            format!("{head}[daemon]\norphan_grace = \"soon\"\n{job}"),
            "not a duration",
        ),
        (
            format!(
                "[encryption]\nrecipients = [\"age1notakey\"]\n[targets.local]\npath = \"t\"\n{job}"
            ),
            "encryption.recipients[0]",
        ),
        (
            format!("{head}[targets.x]\nurl = \"ftp://h/p\"\n{job}"),
            "not supported",
        ),
        (
            format!("{head}{job}[[notify]]\nurl = \"mailto:ops@example\"\n"),
            "notify[0].url",
        ),
        (
            format!(
                "{head}[jobs.a]\ntargets = [\"local\"]\n[jobs.a.hooks]\nbefore = [\"\"]\n[jobs.a.sources.s]\nkind = \"directory\"\npath = \"s\"\n"
            ),
            "jobs.a.hooks",
        ),
        (
            format!(
                "{head}[jobs.A]\ntargets = [\"local\"]\n[jobs.A.sources.s]\nkind = \"directory\"\npath = \"s\"\n"
            ),
            "invalid job name",
        ),
        ("\u{0}\u{1}\u{2}binary".into(), "invalid"),
        (String::new(), "no jobs defined"),
    ];
    let total = corpus.len();
    for (i, (body, words)) in corpus.into_iter().enumerate() {
        world.write_policy(&body);
        let out = world.backupd(&["check"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "case {i}: {body:?}\n{said}");
        assert!(
            said.contains(words),
            "case {i}: {words:?} missing\n{body}\n{said}"
        );
        assert!(!said.contains("panicked"), "case {i}: {said}");
    }
    eprintln!("policy corpus: {total} broken policies, {total} clear errors, 0 panics");
}

#[test]
fn fifty_jobs_due_in_the_same_second_run_two_at_a_time_each_once() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f"), "x").unwrap();
    let marks = world.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let schedule = format!(
        "{} {} {} * * *",
        chrono::Timelike::second(&at),
        chrono::Timelike::minute(&at),
        chrono::Timelike::hour(&at)
    );
    let mut jobs = String::new();
    for i in 0..50 {
        jobs.push_str(&format!(
            "[jobs.j{i:02}]\nschedule = \"{schedule}\"\ncatch_up = false\ntargets = [\"local\"]\n[jobs.j{i:02}.hooks]\nbefore = [\"sh\", \"-c\", \"date +%s%N > {m}/$BACKUPD_JOB.start; sleep 0.2\"]\nafter = [\"sh\", \"-c\", \"date +%s%N > {m}/$BACKUPD_JOB.end\"]\n[jobs.j{i:02}.sources.s]\nkind = \"directory\"\npath = \"{}\"\n",
            world.path("src").display(),
            m = marks.display()
        ));
    }
    let body = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\nmax_concurrent_jobs = 2\n\n[encryption]\nrecipients = [\"{}\"]\n\n[targets.local]\npath = \"target\"\n\n{jobs}",
        world.recipient
    );
    world.write_policy(&body);
    let mut daemon = Daemon::start(&world, &[]);
    daemon.wait_status(120, "all 50 runs", |s| {
        s["jobs"]
            .as_object()
            .is_some_and(|j| j.values().all(|j| j["runs_succeeded"] == 1))
    });
    assert!(daemon.stop().success());
    let mut spans: Vec<(u128, u128)> = Vec::new();
    for i in 0..50 {
        let read = |ext: &str| -> u128 {
            std::fs::read_to_string(marks.join(format!("j{i:02}.{ext}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        spans.push((read("start"), read("end")));
    }
    // At no instant were more than two jobs between their before and after hooks.
    let mut most = 0;
    for (s, _) in &spans {
        let running = spans.iter().filter(|(a, b)| a <= s && s < b).count();
        most = most.max(running);
    }
    assert!(most <= 2, "{most} jobs ran at once");
    assert_eq!(list_json(&world, &[]).len(), 50, "each job once");
}

#[test]
fn ten_thousand_snapshots_list_and_prune_fast_compared_with_a_raw_listing() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/f"), "x").unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nretention = {{ keep_last = 5000 }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let out = world.backupd(&["run-now", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    // Clone the real snapshot 9,999 times (synthetic ids, valid manifests).
    let real = list_json(&world, &[])[0].clone();
    let real_id = real["snapshot"].as_str().unwrap().to_string();
    let src_dir = world.target_dir().join("app").join(&real_id);
    // Clones cannot carry the real seal (their ids differ): they are unsigned, which a
    // policy without [signing] accepts.
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src_dir.join("manifest.json")).unwrap())
            .unwrap();
    manifest.as_object_mut().unwrap().remove("digest");
    manifest.as_object_mut().unwrap().remove("signature");
    let manifest = serde_json::to_string_pretty(&manifest).unwrap();
    let unsigned = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    let start = unsigned.find("[signing]").unwrap();
    let end = start + unsigned[start..].find("[targets").unwrap();
    world.write_policy(&format!("{}{}", &unsigned[..start], &unsigned[end..]));
    let object = std::fs::read(src_dir.join("files.tar.gz.age")).unwrap();
    let index = std::fs::read(src_dir.join("files.index.json.gz.age")).unwrap();
    for i in 0..9_999u32 {
        let id = format!(
            "2025-{:02}-{:02}T{:02}-{:02}-{:02}.000Z-{:06x}",
            1 + i % 12,
            1 + i % 28,
            i % 24,
            i % 60,
            (i / 60) % 60,
            i
        );
        let dir = world.target_dir().join("app").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("files.tar.gz.age"), &object).unwrap();
        std::fs::write(dir.join("files.index.json.gz.age"), &index).unwrap();
        std::fs::write(dir.join("manifest.json"), manifest.replace(&real_id, &id)).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let raw = Instant::now();
    let n = rt.block_on(async {
        use futures::TryStreamExt;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(world.target_dir()).unwrap();
        object_store::ObjectStore::list(&fs, None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .len()
    });
    let raw = raw.elapsed();
    assert_eq!(
        n, 30_000,
        "an object, its index and a manifest per snapshot"
    );
    let t = Instant::now();
    let out = world.backupd(&["list", "--json"]);
    let list_time = t.elapsed();
    assert!(out.status.success());
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 10_000);
    let t = Instant::now();
    let out = world.backupd(&["prune", "app", "--dry-run", "--json"]);
    let prune_time = t.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deletes = plan[0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .count();
    assert_eq!(deletes, 5_000, "keep_last = 5000 of 10,000");
    // Daemon start: serving at once, the inventory of 10,000 snapshots in the background.
    let body = std::fs::read_to_string(world.path("policy.toml"))
        .unwrap()
        .replacen("[daemon]\n", "[daemon]\nlisten = \"127.0.0.1:0\"\n", 1);
    world.write_policy(&body);
    let t = Instant::now();
    let mut daemon = Daemon::start(&world, &[]);
    let (code, _) = daemon.get("/healthz");
    let serving = t.elapsed();
    assert_eq!(code, 200);
    daemon.wait_status(120, "the inventory", |s| {
        s["jobs"]["app"]["snapshots"]["local"] == 10_000
    });
    let inventoried = t.elapsed();
    assert!(daemon.stop().success());
    let _ = run(&["--version"]);
    let ratio = |d: Duration| d.as_secs_f64() / raw.as_secs_f64();
    eprintln!(
        "10,000 snapshots: raw object_store listing {:.2} s; list {:.2} s ({:.1}×); prune --dry-run {:.2} s ({:.1}×); daemon serving after {:.2} s ({:.1}×), inventory done after {:.2} s ({:.1}×)",
        raw.as_secs_f64(),
        list_time.as_secs_f64(),
        ratio(list_time),
        prune_time.as_secs_f64(),
        ratio(prune_time),
        serving.as_secs_f64(),
        ratio(serving),
        inventoried.as_secs_f64(),
        ratio(inventoried)
    );
}
