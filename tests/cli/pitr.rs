//! PostgreSQL point-in-time recovery against a real cluster each test initdb's for itself
//! (wal_level = replica, archive_mode = on, archive_command = backupd wal-push), run as
//! the packaged postgres user as tests/services runs its server: base backups, WAL
//! archiving through kills, restore to a time between two markers and to the end,
//! verification by replay, and the archive's hostile cases.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The newest PostgreSQL server binaries installed (tests/services installs them).
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server packages are not installed: run tests/run (tests/services installs them)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: install the postgresql package")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command as the postgres user (PostgreSQL refuses root); panics on failure.
fn as_postgres(args: &[&str]) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn chown_postgres(path: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One throwaway cluster in `dir`, stopped when dropped.
struct Cluster {
    data: PathBuf,
    socket: PathBuf,
    port: u16,
}

impl Cluster {
    /// A new cluster on `port` archiving with `archive_command`.
    fn init(dir: &Path, archive_command: &str, port: u16) -> Cluster {
        let bin = pg_bin();
        std::fs::create_dir_all(dir).unwrap();
        chown_postgres(dir);
        let data = dir.join("data");
        as_postgres(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\narchive_mode = on\narchive_command = '{}'\nmax_wal_senders = 4\nfsync = off\n",
            dir.display(),
            archive_command.replace('\'', "''")
        );
        let path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        let c = Cluster {
            data,
            socket: dir.to_path_buf(),
            port,
        };
        c.start(&[]);
        c
    }

    fn start(&self, extra: &[&str]) {
        let log = self.socket.join("server.log");
        let mut opts = format!("-p {} -k {}", self.port, self.socket.display());
        for e in extra {
            opts.push(' ');
            opts.push_str(e);
        }
        as_postgres(&[
            pg_bin().join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
            "-t",
            "120",
            "start",
        ]);
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Switches to a new segment and waits until the archiver has pushed everything
    /// before it (PostgreSQL's own view, `pg_stat_archiver`).
    fn archive_now(&self) {
        let current = self.psql(
            "postgres",
            "select pg_walfile_name(pg_current_wal_lsn()) from pg_switch_wal()",
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let last = self.psql(
                "postgres",
                "select coalesce(last_archived_wal, '') from pg_stat_archiver",
            );
            if last.as_str() >= current.as_str() && !last.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the archiver did not push {current} (last archived {last:?}); server log:\n{}",
                std::fs::read_to_string(self.socket.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_out_of_recovery(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.psql("postgres", "select pg_is_in_recovery()") != "f" {
            assert!(Instant::now() < deadline, "recovery did not finish");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A world the postgres user can reach: its directory, the binary (copied in, as the
/// build directory may be closed to other users), the policy and the identity (owned by
/// postgres: `wal-fetch` runs as the restored server's user).
struct PitrWorld {
    world: World,
    bin: PathBuf,
    /// The public half of `wal-signing.key`, the postgres user's own signing key.
    wal_signer: String,
}

impl PitrWorld {
    fn new() -> PitrWorld {
        use std::os::unix::fs::PermissionsExt;
        let world = World::new();
        std::fs::set_permissions(world.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = world.path("backupd");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let archive = world.target_dir().join("pitr").join("wal");
        std::fs::create_dir_all(&archive).unwrap();
        chown_postgres(&world.target_dir());
        chown_postgres(&world.key);
        // archive_command runs as postgres, which cannot read signing.key: it signs WAL
        // receipts with a key of its own, trusted by the policy.
        let wal_key = world.path("wal-signing.key");
        let out = run(&["keygen", "--signing", "--output", wal_key.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let wal_signer = String::from_utf8(out.stdout).unwrap().trim().to_string();
        chown_postgres(&wal_key);
        PitrWorld {
            world,
            bin,
            wal_signer,
        }
    }

    fn policy(&self, port: u16, job_keys: &str) {
        let path = self.world.policy(&format!(
            "[jobs.pitr]\ntargets = [\"local\"]\ncompression = \"zstd\"\n{job_keys}\n[jobs.pitr.sources.db]\nkind = \"postgres\"\nmethod = \"basebackup\"\nurl = \"postgres://postgres@127.0.0.1:{port}/app\"\nchecks = [\"select count(*) >= 1 from markers\"]\n"
        ));
        let body = std::fs::read_to_string(&path).unwrap().replacen(
            &format!("trusted_keys = [\"{}\"]", self.world.signer),
            &format!(
                "trusted_keys = [\"{}\", \"{}\"]\nwal_key_file = \"wal-signing.key\"",
                self.world.signer, self.wal_signer
            ),
            1,
        );
        assert!(body.contains("wal_key_file"), "{body}");
        std::fs::write(&path, body).unwrap();
    }

    /// `archive_command`: a wrapper that kills the first push of every file with SIGKILL
    /// mid-way (and fails, as PostgreSQL sees a killed command), then pushes for real.
    fn killing_archive_command(&self) -> String {
        let script = self.world.path("archive.sh");
        let policy = self.world.path("policy.toml");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nmarker=\"{dir}/killed-$(basename \"$1\")\"\nif [ ! -e \"$marker\" ]; then\n  touch \"$marker\"\n  {bin} --config {policy} wal-push --job pitr \"$1\" &\n  pid=$!\n  sleep 0.15\n  kill -9 $pid 2>/dev/null\n  wait $pid\n  exit 1\nfi\nexec {bin} --config {policy} wal-push --job pitr \"$1\"\n",
                dir = self.world.path("kills").display(),
                bin = self.bin.display(),
                policy = policy.display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(self.world.path("kills")).unwrap();
        chown_postgres(&self.world.path("kills"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        format!("{} %p", script.display())
    }
}

impl PitrWorld {
    /// `backupd restore pitr --to <name> ARGS`, then the restored copy started with
    /// `start` options and waited on until its recovery has ended.
    fn restore_and_start(&self, name: &str, args: &[&str], start: &[&str]) -> Cluster {
        let to = self.world.path(name);
        let mut full = vec!["restore", "pitr", "--to", to.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = self.world.backupd(&full);
        assert!(out.status.success(), "restore {args:?}: {}", text(&out));
        assert!(
            text(&out).contains("start the server with"),
            "{}",
            text(&out)
        );
        assert!(to.join("db/recovery.signal").is_file());
        let restored = Cluster {
            data: to.join("db"),
            socket: self.world.path("pg"),
            port: free_port(),
        };
        restored.start(start);
        restored.wait_out_of_recovery();
        restored
    }
}

fn markers(c: &Cluster) -> String {
    c.psql(
        "app",
        "select string_agg(label, ',' order by id) from markers",
    )
}

#[test]
fn a_base_backup_and_archived_wal_restore_to_a_moment_and_to_the_end_and_verify_by_replay() {
    require_tool("pgbench");
    let pw = PitrWorld::new();
    // The port must be in the policy before the server starts archiving with it.
    let port = free_port();
    pw.policy(port, "");
    let command = pw.killing_archive_command();
    let cluster = Cluster::init(&pw.world.path("pg"), &command, port);
    let c = &cluster;
    c.psql("postgres", "create database app");
    c.psql(
        "app",
        "create table markers (id serial primary key, label text not null, at timestamptz not null default clock_timestamp())",
    );
    c.psql("app", "insert into markers (label) values ('m0')");
    let pgbench = |args: &[&str]| {
        let out = Command::new("pgbench")
            .arg("-h")
            .arg(&c.socket)
            .args(["-p", &c.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("app")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pgbench(&["-i", "-s", "2", "-q"]);
    c.archive_now();

    // `check` sees replication rights and archiving on; the test's wrapper script does
    // not name wal-push, which is worth a warning, not a failure.
    let out = pw.world.backupd(&["check"]);
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(
        text(&out).contains("archive_mode on, replication allowed"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("archive.sh %p\", which does not name"),
        "{}",
        text(&out)
    );

    // The base backup (pg_basebackup waits until its last segment is archived).
    let out = pw.world.backupd(&["run-now", "pitr"]);
    assert!(out.status.success(), "run-now: {}", text(&out));
    let list = list_json(&pw.world, &["pitr"]);
    assert_eq!(list.len(), 1);

    // m1, a recorded moment, then m2: a restore to the moment has m1 and not m2.
    pgbench(&["-t", "300", "-c", "2"]);
    c.psql("app", "insert into markers (label) values ('m1')");
    std::thread::sleep(Duration::from_millis(1100));
    let moment = c.psql(
        "app",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("app", "insert into markers (label) values ('m2')");
    pgbench(&["-t", "300", "-c", "2"]);
    c.psql("app", "insert into markers (label) values ('m3')");
    c.archive_now();
    let accounts = c.psql("app", "select sum(abalance) from pgbench_accounts");

    // Every file's first push was killed with SIGKILL; PostgreSQL retried each.
    let kills = std::fs::read_dir(pw.world.path("kills")).unwrap().count();
    assert!(kills >= 4, "only {kills} pushes were killed");
    // Every receipt is signed by the postgres user's own key.
    for receipt in pw.world.stored(".json") {
        if receipt.to_string_lossy().contains("/wal/") {
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
            assert_eq!(
                r["signature"]["key"],
                pw.wal_signer.as_str(),
                "{}",
                receipt.display()
            );
        }
    }

    // To the moment between m1 and m2; not archiving into the original's archive: this
    // is a copy beside it.
    let restored = pw.restore_and_start(
        "restore-moment",
        &["--target-time", &moment],
        &["-c archive_mode=off"],
    );
    assert_eq!(markers(&restored), "m0,m1", "restored to {moment}");
    drop(restored);

    // To the end of the archive: everything committed and archived.
    let restored = pw.restore_and_start("restore-end", &[], &["-c archive_mode=off"]);
    assert_eq!(markers(&restored), "m0,m1,m2,m3");
    assert_eq!(
        restored.psql("app", "select sum(abalance) from pgbench_accounts"),
        accounts
    );
    drop(restored);

    // Before the first base backup ended there is nothing to start from.
    let out = pw.world.backupd(&[
        "restore",
        "pitr",
        "--to",
        pw.world.path("too-early").to_str().unwrap(),
        "--target-time",
        "2020-01-01 00:00:00+00",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no base backup"), "{}", text(&out));
    assert!(!pw.world.path("too-early").exists());

    // Verification replays the archive in a throwaway server and runs the checks.
    let out = pw.world.backupd(&["verify", "pitr", "--json"]);
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = records[0]["sources"]["db"]["checks"].as_array().unwrap();
    let named = |n: &str| {
        checks
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no {n} check in {checks:?}"))
    };
    assert_eq!(named("replay")["ok"], true);
    assert_eq!(
        named("check")["detail"],
        "select count(*) >= 1 from markers"
    );
    assert!(
        named("wal")["detail"]
            .as_str()
            .unwrap()
            .contains("without a gap")
    );

    // A second base backup, and retention keeping one: the first snapshot and the WAL
    // only it needed go; the history of timelines and everything after stay.
    let archive = pw.world.target_dir().join("pitr/wal");
    let wal_files = || -> Vec<String> {
        let mut v: Vec<String> = walk(&archive)
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .map(|n| n.trim_end_matches(".json").to_string())
            .collect();
        v.sort();
        v
    };
    let before = wal_files();
    let out = pw.world.backupd(&["run-now", "pitr"]);
    assert!(out.status.success(), "run-now: {}", text(&out));
    let second = list_json(&pw.world, &["pitr"]);
    assert_eq!(second.len(), 2);
    let start_wal = second[0]["sources"]["db"]["stats"]["start_wal"]
        .as_str()
        .unwrap_or_else(|| panic!("no start_wal in {}", second[0]))
        .to_string();
    c.psql("app", "insert into markers (label) values ('m4')");
    pgbench(&["-t", "300", "-c", "2"]);
    c.archive_now();
    c.psql("app", "insert into markers (label) values ('m5')");
    c.archive_now();
    // Retention never deletes the newest verified snapshot: verify the new one first.
    let out = pw.world.backupd(&["verify", "pitr"]);
    assert!(out.status.success(), "verify of the second: {}", text(&out));
    pw.policy(port, "retention = { keep_last = 1 }\n");
    let pre_prune = wal_files();
    let out = pw.world.backupd(&["prune", "pitr", "--dry-run"]);
    assert!(out.status.success(), "prune --dry-run: {}", text(&out));
    assert!(text(&out).contains("would delete"), "{}", text(&out));
    assert_eq!(wal_files(), pre_prune, "a dry run deleted WAL");
    let out = pw.world.backupd(&["prune", "pitr"]);
    assert!(out.status.success(), "prune: {}", text(&out));
    assert!(
        text(&out).contains("WAL file(s) older than the oldest kept base backup"),
        "{}",
        text(&out)
    );
    let after = wal_files();
    assert_eq!(list_json(&pw.world, &["pitr"]).len(), 1);
    let segment = |n: &str| n.get(8..24).map(str::to_string);
    for f in &before {
        let needed = f.ends_with(".history") || segment(f) >= segment(&start_wal);
        assert_eq!(
            after.contains(f),
            needed,
            "{f} (kept base starts at {start_wal}): {after:?}"
        );
    }
    assert!(after.iter().any(|f| segment(f) > segment(&start_wal)));
    let out = pw.world.backupd(&["verify", "pitr"]);
    assert!(out.status.success(), "verify after prune: {}", text(&out));

    // A segment lost from the archive: verification fails and names it.
    let mut receipts: Vec<PathBuf> = walk(&archive)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.len() == 29 && n.ends_with(".json")
        })
        .collect();
    receipts.sort();
    assert!(receipts.len() >= 3, "{receipts:?}");
    let lost = receipts[receipts.len() - 2].clone();
    let lost_name = lost
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".json", "");
    for p in walk(&archive) {
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&lost_name)
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let out = pw.world.backupd(&["verify", "pitr"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("segment {lost_name} missing")),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("unreachable"), "{}", text(&out));
}

#[test]
fn the_archive_is_idempotent_refuses_other_contents_and_never_trusts_a_receipt() {
    let world = World::new();
    world.policy(
        "[jobs.pitr]\ntargets = [\"local\"]\ncompression = \"zstd\"\n\n[jobs.pitr.sources.db]\nkind = \"postgres\"\nmethod = \"basebackup\"\nurl = \"postgres://postgres@127.0.0.1:1/app\"\n",
    );
    let wal = world.path("pg_wal");
    std::fs::create_dir_all(&wal).unwrap();
    let seg = wal.join("000000010000000000000007");
    std::fs::write(&seg, noise(1 << 20, 7)).unwrap();
    let push = |p: &Path| world.backupd(&["wal-push", "--job", "pitr", p.to_str().unwrap()]);
    let fetch = |file: &str, dest: &Path| {
        world.backupd(&["wal-fetch", "--job", "pitr", file, dest.to_str().unwrap()])
    };

    let out = push(&seg);
    assert!(out.status.success(), "{}", text(&out));
    // <job>/wal/<instance>/<source>/
    let stored = walk(&world.target_dir())
        .into_iter()
        .find(|p| p.ends_with("000000010000000000000007.json"))
        .expect("a receipt")
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        stored.ends_with("db")
            && stored
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .ends_with("pitr/wal")
    );
    assert!(stored.join("000000010000000000000007.json").is_file());
    assert!(stored.join("000000010000000000000007.zst.age").is_file());
    // The object restores with standard tools alone.
    let plain = sh(&format!(
        "age -d -i {} {} | zstd -d | sha256sum | cut -c1-64",
        world.key.display(),
        stored.join("000000010000000000000007.zst.age").display()
    ));
    assert_eq!(plain.trim(), sha256_hex(&std::fs::read(&seg).unwrap()));

    // The same file again: nothing to do, success.
    let out = push(&seg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already archived"), "{}", text(&out));
    // Same name, other contents: refused, the archived one untouched.
    let before = std::fs::read(stored.join("000000010000000000000007.zst.age")).unwrap();
    std::fs::write(&seg, noise(1 << 20, 8)).unwrap();
    let out = push(&seg);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("other contents"), "{}", text(&out));
    assert_eq!(
        std::fs::read(stored.join("000000010000000000000007.zst.age")).unwrap(),
        before
    );
    // Not a WAL name: a usage error.
    let odd = wal.join("notes.txt");
    std::fs::write(&odd, "x").unwrap();
    assert_eq!(push(&odd).status.code(), Some(2));

    // A push killed with SIGKILL mid-upload leaves no receipt, so the file is not
    // archived: a fetch finds nothing, the retry archives it whole, and prune sweeps what
    // the killed one left on a local target.
    let big = wal.join("000000010000000000000009");
    std::fs::write(&big, noise(48 << 20, 9)).unwrap();
    let stored_dir = stored.clone();
    let staged = move || {
        std::fs::read_dir(&stored_dir).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("000000010000000000000009")
                && e.file_name().to_string_lossy().contains('#')
        })
    };
    let mut child = world.spawn(&["wal-push", "--job", "pitr", big.to_str().unwrap()], None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !staged() {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never started writing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!stored.join("000000010000000000000009.json").exists());
    let scratch = world.path("fetched");
    let out = fetch("000000010000000000000009", &scratch);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!scratch.exists());
    let out = push(&big);
    assert!(out.status.success(), "{}", text(&out));
    let out = fetch("000000010000000000000009", &scratch);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&scratch).unwrap(),
        std::fs::read(&big).unwrap()
    );
    assert!(staged(), "the killed push left no staging file to sweep");
    let policy = world.path("policy.toml");
    let body = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        body.replace(
            "state_dir = \"state\"",
            "state_dir = \"state\"\norphan_grace = \"1s\"",
        ),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = world.backupd(&["prune", "pitr"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!staged(), "prune left the killed push's staging file");
    assert!(stored.join("000000010000000000000009.json").is_file());

    // Fetch writes the checked file; a missing one is exit 1, nothing written.
    let dest = world.path("RECOVERYXLOG");
    let out = fetch("000000010000000000000007", &dest);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256_hex(&std::fs::read(&dest).unwrap()), plain.trim());
    std::fs::remove_file(&dest).unwrap();
    let out = fetch("000000010000000000000008", &dest);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dest.exists());
    // Asked for a path, not a WAL name: refused.
    let out = fetch("../../../etc/passwd", &dest);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(!dest.exists());

    // Forged receipts, as a bucket writer would plant them: an object outside the
    // archive, a receipt for another file, a giant size, a flipped byte in the object.
    let receipt_path = stored.join("000000010000000000000007.json");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&receipt_path).unwrap()).unwrap();
    let forge = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut r = good.clone();
        edit(&mut r);
        std::fs::write(&receipt_path, serde_json::to_vec(&r).unwrap()).unwrap();
        let out = fetch("000000010000000000000007", &dest);
        // Not "missing" (1, the end of recovery) but 126: PostgreSQL stops the recovery
        // rather than promote early at a forged file.
        assert_eq!(out.status.code(), Some(126), "{}", text(&out));
        assert!(!dest.exists(), "a forged receipt wrote {}", dest.display());
        text(&out)
    };
    assert!(
        forge(&|r| r["object"] = "../../../../identity.txt".into()).contains("not one of ours")
    );
    assert!(forge(&|r| r["file"] = "000000010000000000000009".into()).contains("not one of ours"));
    assert!(forge(&|r| r["plain"]["bytes"] = (1u64 << 40).into()).contains("not one of ours"));
    // With [signing]: a receipt without its signature, or edited under it, is refused —
    // however right its sums; the operator's --allow-unsigned takes an unsigned one.
    assert!(
        good["signature"]["key"]
            .as_str()
            .unwrap()
            .starts_with("backupd-sign-")
    );
    assert!(
        forge(&|r| {
            r.as_object_mut().unwrap().remove("signature");
        })
        .contains("unsigned")
    );
    assert!(forge(&|r| r["host"] = "elsewhere".into()).contains("does not verify"));
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    std::fs::write(&receipt_path, serde_json::to_vec(&unsigned).unwrap()).unwrap();
    let out = world.backupd(&[
        "wal-fetch",
        "--job",
        "pitr",
        "--allow-unsigned",
        "000000010000000000000007",
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(&dest).unwrap();
    // An unsigned receipt planted with other contents neither blocks archiving nor
    // stands in for it: the push stores and signs the file again.
    unsigned["plain"]["sha256"] = "0".repeat(64).into();
    std::fs::write(&receipt_path, serde_json::to_vec(&unsigned).unwrap()).unwrap();
    std::fs::write(&seg, noise(1 << 20, 7)).unwrap();
    let out = push(&seg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("already archived"), "{}", text(&out));
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&receipt_path).unwrap()).unwrap();
    assert!(again["signature"].is_object(), "{again}");
    std::fs::write(&receipt_path, serde_json::to_vec(&good).unwrap()).unwrap();
    let object = stored.join("000000010000000000000007.zst.age");
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let out = fetch("000000010000000000000007", &dest);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    // age's authentication catches it before the sha256 does.
    assert!(text(&out).contains("decryption error"), "{}", text(&out));
    assert!(!dest.exists());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn the_daemon_reports_failing_archiving_in_status_and_metrics() {
    let pw = PitrWorld::new();
    let port = free_port();
    pw.policy(port, "");
    let policy = pw.world.path("policy.toml");
    let body = std::fs::read_to_string(&policy).unwrap().replacen(
        "[daemon]\n",
        "[daemon]\nlisten = \"127.0.0.1:0\"\n",
        1,
    );
    std::fs::write(&policy, body).unwrap();
    // archive_command fails, as a full or unreachable target would make it.
    let c = Cluster::init(&pw.world.path("pg"), "/bin/false", port);
    c.psql("postgres", "create database app");
    c.psql("postgres", "select pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.psql("postgres", "select failed_count from pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "archive_command never failed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `check` points at the archive_command that is not backupd's.
    let out = pw.world.backupd(&["check"]);
    assert!(
        text(&out).contains("archive_command is \"/bin/false\", which does not name"),
        "{}",
        text(&out)
    );
    let mut daemon = super::daemon_support::Daemon::start(&pw.world, &[]);
    let status = daemon.wait_status(60, "the WAL watch", |s| {
        s["jobs"]["pitr"]["wal"]["db"]["failed_count"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let wal = &status["jobs"]["pitr"]["wal"]["db"];
    assert!(wal["error"].is_null(), "{wal}");
    assert!(wal["ready_files"].as_u64().unwrap() >= 1, "{wal}");
    assert!(
        wal["last_failed_wal"].as_str().unwrap().len() == 24,
        "{wal}"
    );
    let (code, metrics) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let sample = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{job=\"pitr\",source=\"db\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert_eq!(sample("backupd_wal_up"), 1.0);
    assert!(sample("backupd_wal_archive_failures_total") >= 1.0);
    assert!(sample("backupd_wal_ready_files") >= 1.0);
    // The status page shows it, highlighted.
    let (code, page) = daemon.get("/");
    assert_eq!(code, 200);
    assert!(page.contains("<h2>WAL archiving</h2>"), "{page}");
    assert!(page.contains("FAILING"), "{page}");
    // `backupd status` asks the running daemon, and says so.
    let out = pw.world.backupd(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("source db: WAL last archived none yet"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("FAILING"), "{}", text(&out));
    assert!(daemon.stop().success());
}

#[test]
fn a_promoted_copy_archives_a_new_timeline_and_recovery_follows_it() {
    let pw = PitrWorld::new();
    let port = free_port();
    pw.policy(port, "");
    let archive_command = format!(
        "{} --config {} wal-push --job pitr %p",
        pw.bin.display(),
        pw.world.path("policy.toml").display()
    );
    let primary = Cluster::init(&pw.world.path("pg"), &archive_command, port);
    primary.psql("postgres", "create database app");
    primary.psql(
        "app",
        "create table markers (id serial primary key, label text not null)",
    );
    primary.psql("app", "insert into markers (label) values ('m0')");
    primary.archive_now();
    let out = pw.world.backupd(&["run-now", "pitr"]);
    assert!(out.status.success(), "run-now: {}", text(&out));
    primary.psql("app", "insert into markers (label) values ('m1')");
    primary.archive_now();
    drop(primary);

    // The primary is gone; its restored copy becomes the new primary (timeline 2) and
    // archives into the same archive, as a promoted standby would.
    let promoted = pw.restore_and_start("promoted", &[], &[]);
    assert_eq!(markers(&promoted), "m0,m1");
    promoted.psql(
        "app",
        "insert into markers (label) values ('after-promotion')",
    );
    promoted.archive_now();
    let timeline = promoted.psql(
        "postgres",
        "select timeline_id from pg_control_checkpoint()",
    );
    assert_eq!(timeline, "2");
    drop(promoted);
    assert!(
        !pw.world.stored("00000002.history.json").is_empty(),
        "the new timeline's history was not archived"
    );

    // Recovery from the timeline-1 base backup follows the archive to timeline 2.
    let followed = pw.restore_and_start("followed", &[], &["-c archive_mode=off"]);
    assert_eq!(markers(&followed), "m0,m1,after-promotion");
    drop(followed);
    // A verification killed with SIGKILL mid-replay leaves its throwaway server and copy;
    // the next one stops and removes them, and passes across timelines.
    let mut verify = pw.world.spawn(&["verify", "pitr"], None);
    let deadline = Instant::now() + Duration::from_secs(120);
    let stale = loop {
        // This verification's own server (tests running beside it may have theirs).
        if let Some(dir) = replay_servers()
            .into_iter()
            .find_map(|(ppid, dir)| (ppid == verify.id()).then_some(dir))
        {
            break dir;
        }
        assert!(
            verify.try_wait().unwrap().is_none(),
            "verify ended before its replay started"
        );
        assert!(Instant::now() < deadline, "no replay server appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    verify.kill().unwrap();
    verify.wait().unwrap();
    let serving = |dir: &Path| replay_servers().iter().any(|(_, d)| d == dir);
    assert!(
        serving(&stale),
        "the killed replay's server should outlive it"
    );
    let out = pw.world.backupd(&["verify", "pitr"]);
    assert!(
        out.status.success(),
        "verify across timelines: {}",
        text(&out)
    );
    assert!(!stale.exists(), "{} was left", stale.display());
    assert!(!serving(&stale), "the killed replay's server still runs");
}

/// Every running replay server (`postgres -D …/backupd-replay-…/data`): its parent pid
/// and its scratch directory.
fn replay_servers() -> Vec<(u32, PathBuf)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let data = args.iter().skip_while(|a| *a != "-D").nth(1)?;
            if !data.contains("/backupd-replay-") {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces, so count from its last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((ppid, Path::new(data).parent()?.to_path_buf()))
        })
        .collect()
}

#[test]
fn basebackup_sources_refuse_keys_that_mean_a_dump() {
    let world = World::new();
    world.policy(
        "[jobs.pitr]\ntargets = [\"local\"]\n[jobs.pitr.sources.db]\nkind = \"postgres\"\nmethod = \"basebackup\"\nurl = \"postgres://postgres@127.0.0.1:1/app\"\ndatabases = [\"app\", \"crm\"]\ninclude_globals = true\n",
    );
    let out = world.backupd(&["run-now", "pitr"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("jobs.pitr.sources.db.databases"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("whole cluster"), "{}", text(&out));
    assert!(text(&out).contains("include_globals"), "{}", text(&out));
    assert!(world.stored(".json").is_empty());
    world.policy(
        "[jobs.pitr]\ntargets = [\"local\"]\n[jobs.pitr.sources.db]\nkind = \"postgres\"\nmethod = \"snapshot\"\nurl = \"postgres://postgres@127.0.0.1:1/app\"\n",
    );
    let out = world.backupd(&["run-now", "pitr"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("method"), "{}", text(&out));
}

#[test]
fn wal_is_archived_to_s3_and_azure_and_fetched_back_from_each() {
    use crate::cloud_support::{azure_target, env, s3_secret_file, s3_target, unique};
    let world = World::new();
    let secret = s3_secret_file(&world, &env("BACKUPD_TEST_S3_SECRET"));
    let targets = [
        s3_target(
            "s3",
            &env("BACKUPD_TEST_S3S"),
            &format!("backupd-test/{}", unique("wal")),
            &secret,
            "",
        ),
        azure_target("azure", &format!("backupd-test/{}", unique("wal"))),
    ]
    .concat();
    world.write_policy(&format!(
        "[daemon]\nstate_dir = \"state\"\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n[signing]\nkey_file = \"signing.key\"\ntrusted_keys = [\"{}\"]\n{targets}\n[jobs.pitr]\ntargets = [\"s3\", \"azure\"]\ncompression = \"zstd\"\n[jobs.pitr.sources.db]\nkind = \"postgres\"\nmethod = \"basebackup\"\nurl = \"postgres://postgres@127.0.0.1:1/app\"\n",
        world.recipient, world.signer
    ));
    let wal = world.path("pg_wal");
    std::fs::create_dir_all(&wal).unwrap();
    // A segment larger than one upload part, and a history file.
    let seg = wal.join("000000010000000000000003");
    std::fs::write(&seg, noise(12 << 20, 3)).unwrap();
    let history = wal.join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    for file in [&seg, &history] {
        let out = world.backupd(&["wal-push", "--job", "pitr", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("archived to s3, azure"),
            "{}",
            text(&out)
        );
    }
    let out = world.backupd(&["wal-push", "--job", "pitr", seg.to_str().unwrap()]);
    assert!(text(&out).contains("already archived"), "{}", text(&out));
    // From each target alone.
    let fetch = |target: &str, name: &str| {
        let dest = world.path(&format!("{target}-{name}"));
        let out = world.backupd(&[
            "wal-fetch",
            "--job",
            "pitr",
            "--target",
            target,
            name,
            dest.to_str().unwrap(),
        ]);
        (out, dest)
    };
    for target in ["s3", "azure"] {
        for file in [&seg, &history] {
            let name = file.file_name().unwrap().to_str().unwrap();
            let (out, dest) = fetch(target, name);
            assert!(out.status.success(), "{target} {name}: {}", text(&out));
            assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(file).unwrap());
        }
        let (out, _) = fetch(target, "000000010000000000000004");
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    }
    // Other contents under an archived name: refused on the first target that has it.
    std::fs::write(&seg, noise(1 << 20, 4)).unwrap();
    let out = world.backupd(&["wal-push", "--job", "pitr", seg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("other contents"), "{}", text(&out));
}
