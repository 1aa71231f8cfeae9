//! Faults the daemon must survive: a local target that cannot take more bytes (a file
//! size limit stands in for a full disk), then recovers on the next run.

use std::process::{Command, Stdio};

use super::daemon_support::Daemon;
use super::support::{World, list_json, noise, require_tool, text, walk};

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

/// A private redis-server on a free port, which the test may kill and restart.
struct Redis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Redis {
    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--enable-debug-command", "yes", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by tests/services)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_database_stopped_mid_dump_fails_clearly_commits_nothing_and_the_next_run_succeeds() {
    require_tool("redis-server");
    require_tool("redis-cli");
    let world = World::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Redis {
        port,
        dir: world.path("redis"),
        child: None,
    };
    std::fs::create_dir_all(&redis.dir).unwrap();
    redis.start();
    // Enough data that the RDB transfer takes a moment.
    let filled = Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "DEBUG",
            "POPULATE",
            "3000000",
            "key",
            "64",
        ])
        .output()
        .unwrap();
    assert!(filled.status.success(), "{}", text(&filled));
    world.policy(&format!(
        "[jobs.cache]\ntargets = [\"local\"]\ncompression = \"zstd\"\n[jobs.cache.sources.redis]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n"
    ));
    let log = world.path("run.log");
    let run = world.spawn(&["run-now", "cache"], Some(&log));
    for _ in 0..200 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("backup started")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    redis.kill();
    let out = run.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("redis") && said.contains("FAILED"), "{said}");
    assert!(list_json(&world, &[]).is_empty());
    assert!(
        walk(&world.target_dir()).iter().all(|p| !p.is_file()),
        "leftovers"
    );
    // The server is back (empty): the next run succeeds.
    redis.start();
    let out = world.backupd(&["run-now", "cache"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_tree_changing_under_the_walk_still_gives_a_snapshot_that_verifies() {
    let world = World::new();
    let src = world.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..400 {
        std::fs::write(src.join(format!("f{i:03}")), noise(32 << 10, i)).unwrap();
    }
    std::fs::write(src.join("big.bin"), noise(24 << 20, 99)).unwrap();
    world.policy(&format!(
        "[jobs.app]\ntargets = [\"local\"]\nthreads = 1\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        src.display()
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = src.join(format!("f{:03}", i % 400));
                match i % 4 {
                    0 => {
                        let _ = std::fs::OpenOptions::new()
                            .append(true)
                            .open(&f)
                            .and_then(|mut h| std::io::Write::write_all(&mut h, &[1u8; 4096]));
                    }
                    1 => {
                        let _ = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&f)
                            .and_then(|h| h.set_len(100));
                    }
                    2 => {
                        let _ = std::fs::remove_file(&f);
                    }
                    _ => {
                        let _ = std::fs::write(&f, [2u8; 32 << 10]);
                    }
                }
                i += 1;
            }
            i
        })
    };
    let mut results = Vec::new();
    for _ in 0..3 {
        let out = world.backupd(&["run-now", "app"]);
        results.push((out.status.code(), text(&out)));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changes = churn.join().unwrap();
    for (code, said) in &results {
        assert_eq!(*code, Some(0), "{said}");
    }
    // Every snapshot taken under churn is a well-formed archive that verifies and restores.
    let out = world.backupd(&["verify", "app", "all"]);
    assert!(out.status.success(), "{}", text(&out));
    let to = world.path("restored");
    let out = world.backupd(&["restore", "app", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let warned: usize = list_json(&world, &[])
        .iter()
        .map(|m| {
            m["sources"]["files"]["warnings"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    eprintln!(
        "tree churn: {changes} changes during 3 runs, {warned} warnings recorded, 3 snapshots verified"
    );
}

/// A TCP proxy on loopback that passes client→server bytes at `bytes_per_sec`.
fn throttled_proxy(upstream: u16, bytes_per_sec: u64) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                let started = std::time::Instant::now();
                let mut sent = 0u64;
                loop {
                    let n = match std::io::Read::read(&mut c_read, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if std::io::Write::write_all(&mut s_write, &buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    let due =
                        std::time::Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn a_slow_target_keeps_memory_bounded_and_both_targets_commit() {
    let world = World::new();
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/big.bin"), noise(200 << 20, 12)).unwrap();
    let mut s3 = super::cloud_support::S3s::new(&world);
    s3.start();
    let proxy = throttled_proxy(s3.port, 16 << 20);
    let secret = super::cloud_support::s3_secret_file(
        &world,
        &super::cloud_support::env("BACKUPD_TEST_S3_SECRET"),
    );
    let target = super::cloud_support::s3_target(
        "slow",
        &format!("http://127.0.0.1:{proxy}"),
        "bkt/slow",
        &secret,
        "",
    );
    world.policy(&format!(
        "{target}\n[jobs.app]\ntargets = [\"local\", \"slow\"]\ncompression = \"none\"\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.path("src").display()
    ));
    let mut child = world.spawn(&["run-now", "app"], None);
    // The peak resident size, sampled while the slow upload holds everything back.
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak_kib = peak_kib.max(hwm.split_whitespace().nth(1).unwrap().parse().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let took = started.elapsed();
    assert!(child.wait().unwrap().success());
    assert_eq!(list_json(&world, &["--target", "slow"]).len(), 1);
    assert_eq!(list_json(&world, &["--target", "local"]).len(), 1);
    eprintln!(
        "slow target (16 MiB/s per connection): 200 MiB to local + slow S3 in {:.1} s, peak RSS {} MiB",
        took.as_secs_f64(),
        peak_kib / 1024
    );
    // Far below the 200 MiB a process buffering for the slow target would hold.
    assert!(peak_kib < 120 << 10, "peak RSS {} MiB", peak_kib / 1024);
}
