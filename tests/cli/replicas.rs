//! Replicas of one instance sharing scheduled slots through the bucket
//! (`coordination = "lease"`, issue 14): real daemons against the test S3 servers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::cloud_support::{env, s3_secret_file, s3_target, unique};
use super::daemon_support::Daemon;
use super::support::{World, run, text};

fn replica_policy(world: &World, endpoint: &str, prefix: &str) {
    std::fs::create_dir_all(world.path("src")).unwrap();
    std::fs::write(world.path("src/a.txt"), "data").unwrap();
    let secret = s3_secret_file(world, &env("BACKUPD_TEST_S3_SECRET"));
    world.write_policy(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"off\"\ninstance = \"app-backups\"\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n{}[jobs.app]\nschedule = \"* * * * * *\"\ncatch_up = false\ncoordination = \"lease\"\ntargets = [\"s3\"]\n[jobs.app.sources.files]\nkind = \"directory\"\npath = \"{}\"\n",
        world.recipient,
        s3_target("s3", endpoint, &format!("backupd-test/{prefix}"), &secret, ""),
        world.path("src").display()
    ));
}

/// Each replica is its own host: its own state directory (and job lock).
fn replica(world: &World, n: usize) -> Daemon {
    let state = world.path(&format!("state-{n}"));
    Daemon::start(
        world,
        &[("BACKUPD_DAEMON__STATE_DIR", state.to_str().unwrap())],
    )
}

/// The slot each snapshot belongs to, as its manifest records it. (Not its start
/// second: on a loaded machine a slot's run can start in the next slot's second.)
fn snapshot_slots(world: &World) -> Vec<String> {
    let out = world.backupd(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    listed
        .iter()
        .map(|m| {
            m["slot"]
                .as_str()
                .unwrap_or_else(|| panic!("a scheduled snapshot without its slot: {m}"))
                .to_string()
        })
        .collect()
}

#[test]
fn three_replicas_run_each_slot_exactly_once_even_when_one_is_killed() {
    for server in ["BACKUPD_TEST_S3S", "BACKUPD_TEST_MOTO"] {
        let world = World::new();
        replica_policy(&world, &env(server), &unique("replicas"));
        let out = world.backupd(&["check"]);
        assert!(
            text(&out).contains("honours create-if-absent"),
            "{}",
            text(&out)
        );
        let mut daemons: Vec<Daemon> = (0..3).map(|n| replica(&world, n)).collect();
        // Long enough for well over 20 one-second slots.
        std::thread::sleep(Duration::from_secs(14));
        let killed_at = chrono::Utc::now();
        let _ = daemons[0].child.kill(); // SIGKILL, whatever it was doing
        let _ = daemons[0].child.wait();
        std::thread::sleep(Duration::from_secs(12));
        for d in daemons.iter_mut().skip(1) {
            assert!(d.stop().success(), "{}", d.logs());
        }
        let mut seconds = snapshot_slots(&world);
        let n = seconds.len();
        seconds.sort();
        seconds.dedup();
        assert_eq!(seconds.len(), n, "{server}: a slot ran twice: {seconds:?}");
        assert!(n >= 20, "{server}: only {n} slots ran");
        let after = seconds
            .iter()
            .filter(|s| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap() > killed_at)
            .count();
        assert!(
            after >= 5,
            "{server}: the survivors took the slots after the kill: {after}"
        );
        // Whatever the killed replica was doing, nothing half-committed is listed.
        let out = world.backupd(&["verify", "app", "all"]);
        assert!(out.status.success(), "{server}: {}", text(&out));
    }
}

/// A proxy that forwards one request per connection to `upstream` without its
/// If-None-Match header: a server that ignores conditional creates.
fn stripping_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let _ = forward(client, &upstream);
            });
        }
    });
    format!("http://{addr}")
}

fn forward(client: TcpStream, upstream: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("if-none-match:") || lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.push_str("Connection: close\r\n\r\n");
            break;
        }
        head.push_str(&line);
    }
    let mut up = TcpStream::connect(upstream.trim_start_matches("http://"))?;
    up.write_all(head.as_bytes())?;
    let mut up_reader = up.try_clone()?;
    let mut client_writer = client.try_clone()?;
    let back = std::thread::spawn(move || std::io::copy(&mut up_reader, &mut client_writer));
    // The body (if any) follows the head; stop when the upstream has answered.
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    client.set_read_timeout(Some(Duration::from_millis(200)))?;
    while Instant::now() < deadline && !back.is_finished() {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => up.write_all(&buf[..n])?,
            Err(_) => {}
        }
    }
    let _ = back.join();
    Ok(())
}

#[test]
fn a_server_that_ignores_if_none_match_is_refused_for_coordination() {
    let world = World::new();
    // moto does not check signatures, so the stripped header is all that changes.
    let proxy = stripping_proxy(
        env("BACKUPD_TEST_MOTO")
            .trim_start_matches("http://")
            .to_string(),
    );
    replica_policy(&world, &proxy, &unique("ignores"));
    let out = world.backupd(&["check"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("ignores If-None-Match"), "{said}");
    let out = run(&[
        "--config",
        world.path("policy.toml").to_str().unwrap(),
        "run",
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("coordination = \"lease\" refused") && said.contains("ignores If-None-Match"),
        "{said}"
    );
}

/// A policy whose one slot (at `second` past each minute) takes a while: the `before`
/// hook sleeps, so a test can kill or pause the holder mid-run.
fn slow_slot_policy(world: &World, endpoint: &str, prefix: &str, second: u32) {
    replica_policy(world, endpoint, prefix);
    let policy = std::fs::read_to_string(world.path("policy.toml")).unwrap();
    let policy = policy.replace(
        "schedule = \"* * * * * *\"\n",
        &format!(
            "schedule = \"{second} * * * * *\"\nlease_ttl_secs = 3\nhooks = {{ before = [\"sleep\", \"5\"] }}\n"
        ),
    );
    world.write_policy(&policy);
}

/// Polls `done` until it holds; panics naming `what` and the daemons' logs when it
/// does not within `limit`.
fn wait_for(what: &str, limit: Duration, daemons: &[Daemon], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            let logs: Vec<String> = daemons.iter().map(|d| d.logs()).collect();
            panic!("timed out waiting for {what}:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn signal(d: &Daemon, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &d.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn listed(world: &World) -> Vec<serde_json::Value> {
    let out = world.backupd(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The holder of a slot dies (kill -9) or hangs (SIGSTOP) in the middle of its run: the
/// other replica sees the claim go unrenewed for the TTL, takes the slot over and commits
/// it; a holder that wakes up after losing the claim stops before committing, so the slot
/// still has exactly one snapshot.
#[test]
fn a_dead_or_paused_holder_is_taken_over_and_the_slot_runs_once() {
    for (server, how) in [
        ("BACKUPD_TEST_MOTO", "-KILL"),
        ("BACKUPD_TEST_S3S", "-STOP"),
    ] {
        let world = World::new();
        let second = (chrono::Utc::now() + chrono::Duration::seconds(6))
            .format("%S")
            .to_string()
            .parse::<u32>()
            .unwrap();
        slow_slot_policy(&world, &env(server), &unique("takeover"), second);
        let out = world.backupd(&["check"]);
        assert!(
            text(&out).contains("honours create-if-absent and If-Match"),
            "{server}: {}",
            text(&out)
        );
        let mut daemons: Vec<Daemon> = (0..2).map(|n| replica(&world, n)).collect();
        wait_for(
            "a replica to claim the slot",
            // A slot missed by slow start-up (a loaded machine) comes again a minute later.
            Duration::from_secs(75),
            &daemons,
            || {
                daemons
                    .iter()
                    .any(|d| d.logs().contains("claimed the slot"))
            },
        );
        let holder = daemons
            .iter()
            .position(|d| d.logs().contains("claimed the slot"))
            .unwrap();
        let other = 1 - holder;
        signal(&daemons[holder], how);
        wait_for(
            "the other replica to commit the slot",
            Duration::from_secs(40),
            &daemons,
            || !listed(&world).is_empty(),
        );
        assert!(
            daemons[other].logs().contains("took over the slot"),
            "{server}: {}",
            daemons[other].logs()
        );
        if how == "-STOP" {
            // Wake the old holder: its hook is long done, its claim is not.
            signal(&daemons[holder], "-CONT");
            wait_for(
                "the woken holder to give up",
                Duration::from_secs(30),
                &daemons,
                || {
                    daemons[holder]
                        .logs()
                        .contains("stopping the run before it commits")
                },
            );
            assert!(daemons[holder].stop().success());
        } else {
            let _ = daemons[holder].child.wait();
        }
        assert!(daemons[other].stop().success(), "{}", daemons[other].logs());
        let snapshots = listed(&world);
        assert_eq!(snapshots.len(), 1, "{server}: {snapshots:#?}");
        let slot: chrono::DateTime<chrono::Utc> =
            snapshots[0]["slot"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            slot.format("%S").to_string().parse::<u32>().unwrap(),
            second
        );
        let out = world.backupd(&["verify", "app", "all"]);
        assert!(out.status.success(), "{server}: {}", text(&out));
    }
}
