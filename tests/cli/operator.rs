//! What the operator sees: progress only on a terminal, the `list` table, the stable
//! `--json` shapes, `init` → `check` → `run-now` with no edits, show-config, completions
//! and the man page, and error messages that name the thing, the place and the fix.

use std::collections::BTreeSet;
use std::process::Command;

use super::support::{BIN, World, list_json, noise, require_tool, run, text};

fn files_policy(world: &World) {
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/big.bin"), noise(64 << 20, 11)).unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nverify = {{ after_backup = true }}\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
}

/// Runs backupd under a pseudo-terminal (`script`), returning everything it printed.
fn under_pty(world: &World, args: &str) -> String {
    require_tool("script");
    let cmd = format!(
        "{BIN} --config {} {args}",
        world.path("policy.toml").display()
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("BACKUPD_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn progress_shows_on_a_terminal_and_nowhere_else() {
    let world = World::new();
    files_policy(&world);
    let tty = under_pty(&world, "run-now app");
    assert!(tty.contains("read → "), "no progress on a terminal:\n{tty}");
    assert!(tty.contains("↳ local: "), "no upload line:\n{tty}");
    assert!(
        tty.contains("64.00 MiB"),
        "the estimate gives a total:\n{tty}"
    );

    let quiet = under_pty(&world, "--quiet run-now app");
    assert!(
        !quiet.contains("read → "),
        "--quiet still drew bars:\n{quiet}"
    );

    let piped = world.backupd(&["run-now", "app"]);
    assert!(piped.status.success(), "{}", text(&piped));
    let all = text(&piped);
    assert!(
        !all.contains("read → ") && !all.contains('\u{1b}'),
        "bars or escapes without a terminal:\n{all}"
    );

    // Restore and verify draw per-object bars on a terminal too.
    let to = world.path("restored");
    let restored = under_pty(&world, &format!("restore app --to {}", to.display()));
    assert!(
        restored.contains("files [") && restored.contains("ETA"),
        "{restored}"
    );
    let verified = under_pty(&world, "verify app");
    assert!(
        verified.contains("files [") && verified.contains("ETA"),
        "{verified}"
    );
}

#[test]
fn list_is_an_aligned_table_and_json_keeps_its_shape() {
    let world = World::new();
    files_policy(&world);
    for tag in ["pre-migration", "nightly"] {
        let out = world.backupd(&["run-now", "app", "--tag", tag]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = world.backupd(&["list"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header = lines[0];
    assert!(header.starts_with("SNAPSHOT "), "{header}");
    let cols = [
        "JOB",
        "INSTANCE",
        "AGE",
        "TAGS",
        "STORED / PLAIN",
        "VERIFIED",
        "SIGNED",
        "LEVEL",
        "TARGETS",
    ];
    let at: Vec<usize> = cols.iter().map(|c| header.find(c).unwrap()).collect();
    let snaps = list_json(&world, &[]);
    for (row, snap) in lines[1..].iter().zip(&snaps) {
        let chars: Vec<char> = row.chars().collect();
        let cell = |i: usize| -> String {
            let start = header[..at[i]].chars().count();
            let end = if i + 1 < at.len() {
                header[..at[i + 1]].chars().count()
            } else {
                chars.len()
            };
            chars[start..end.min(chars.len())]
                .iter()
                .collect::<String>()
                .trim()
                .to_string()
        };
        assert!(row.starts_with(snap["snapshot"].as_str().unwrap()), "{row}");
        assert_eq!(cell(0), "app");
        assert_eq!(cell(1), snap["instance"].as_str().unwrap());
        assert!(cell(2) == "just now" || cell(2).ends_with("s ago"), "{row}");
        let tags: Vec<String> = snap["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cell(3), tags.join(","));
        assert!(
            cell(4).contains(" MiB / 64.0 MiB") || cell(4).contains("/ 64.0 MiB"),
            "{row}"
        );
        assert_eq!(cell(5), "✓");
        assert_eq!(cell(6), "✓", "signed by the world's trusted key: {row}");
        assert_eq!(cell(7), "full");
        assert_eq!(cell(8), "local");
    }

    // --json is an interface: the keys stay.
    let keys: BTreeSet<&str> = snaps[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "format",
        "job",
        "snapshot",
        "host",
        "backupd_version",
        "started_at",
        "finished_at",
        "tags",
        "sources",
        "targets",
        "last_verification",
        "digest",
        "signature",
        "authenticity",
        "instance",
    ]
    .into();
    assert_eq!(keys, expected);
    let source: BTreeSet<&str> = snaps[0]["sources"]["files"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "kind",
        "object",
        "compression",
        "compression_level",
        "encryption",
        "stored",
        "plain",
        "stats",
        "warnings",
    ] {
        assert!(source.contains(k), "source entry lacks {k}: {source:?}");
    }
    assert_eq!(
        snaps[0]["stored"].as_object(),
        None,
        "sizes live per source"
    );
    assert!(
        snaps[0]["sources"]["files"]["plain"]["bytes"].is_u64(),
        "bytes in JSON, not human units"
    );

    let out = world.backupd(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: BTreeSet<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "jobs",
            "notify_failures",
            "pid",
            "policy",
            "spool",
            "started_at",
            "state",
            "upload_limit_bytes_per_sec",
            "version"
        ]
        .into()
    );
    let job: BTreeSet<&str> = status["jobs"]["app"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "schedule",
        "next_run",
        "last_run",
        "last_success_at",
        "last_failure_at",
        "last_verified_at",
        "snapshots",
        "fresh",
        "runs_skipped",
    ] {
        assert!(job.contains(k), "status job lacks {k}: {job:?}");
    }
}

#[test]
fn init_then_check_then_run_now_work_with_no_edits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
    let policy = dir.path().join("policy.toml");
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["init"])
        .env_remove("BACKUPD_CONFIG")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for next in ["check", "run-now", "list"] {
        assert!(
            said.contains(&format!("backupd --config {} {next}", policy.display())),
            "{said}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("backupd-identity.txt");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text_policy = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text_policy.contains("# [jobs.db]"),
        "a commented database job"
    );

    let p = policy.to_str().unwrap();
    let out = run(&["--config", p, "check"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["--config", p, "run-now"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["--config", p, "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &listed[0];
    assert_eq!(
        m["sources"]["files"]["stats"]["files"], 2,
        "notes.txt and the policy, not the key: {m}"
    );
    assert_eq!(m["last_verification"]["ok"], true);
    // Never overwrites.
    let again = Command::new(BIN)
        .current_dir(dir.path())
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
}

#[test]
fn show_config_applies_env_overrides_and_redacts() {
    let world = World::new();
    files_policy(&world);
    let mut body = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    body.push_str("\n[[notify]]\nurl = \"https://hooks.example/x?token=abc123\"\n");
    world.write_policy(&body);
    let out = Command::new(BIN)
        .args([
            "--config",
            world.path("policy.toml").to_str().unwrap(),
            "show-config",
        ])
        .env("BACKUPD_JOBS__APP__COMPRESSION", "zstd")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("compression = \"zstd\""), "{said}");
    assert!(!said.contains("abc123"), "{said}");
    assert!(said.contains("hooks.example"), "{said}");
}

#[test]
fn completions_and_man_page_are_generated() {
    for (shell, marker) in [
        ("bash", "_backupd"),
        ("zsh", "#compdef backupd"),
        ("fish", "complete -c backupd"),
    ] {
        let out = run(&["completions", shell]);
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && s.contains(marker),
            "{shell}: {s:.200}"
        );
        assert!(s.contains("run-now"), "{shell} completes subcommands");
    }
    let out = run(&["man"]);
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.contains(".TH backupd") && man.contains("run\\-now"),
        "{man:.300}"
    );
}

#[test]
fn errors_name_the_thing_the_place_and_the_fix() {
    let world = World::new();
    files_policy(&world);
    // A missing policy file.
    let out = run(&["--config", "/nonexistent/policy.toml", "list"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(said.contains("policy file /nonexistent/policy.toml not found: pass --config PATH or set BACKUPD_CONFIG"), "{said}");
    // An unknown job.
    let out = world.backupd(&["run-now", "nope"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        said.contains("no job named \"nope\"") && said.contains("(jobs: app)"),
        "{said}"
    );
    // An unknown target.
    let out = world.backupd(&["list", "--target", "offsite"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        said.contains("no target named \"offsite\"") && said.contains("(targets: local)"),
        "{said}"
    );
    // A world-readable identity.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&world.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&world.key.display().to_string()) && said.contains("chmod 600"),
        "{said}"
    );
    std::fs::set_permissions(&world.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A source that vanished.
    std::fs::remove_dir_all(world.path("src")).unwrap();
    let out = world.backupd(&["run-now", "app"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&world.path("src").display().to_string()),
        "{said}"
    );
}
