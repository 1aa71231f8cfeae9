//! `backupd status [--json]`: each job's schedule, next run and last results, asked of the
//! running daemon (`/status`, found through `state_dir/daemon.json`), or read from the
//! state directory when no daemon answers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;

use super::{EXIT_FAILED, human_bytes, load_policy};
use crate::daemon::{JobStatus, Status};
use crate::state;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the status as JSON (the daemon's `/status` document).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let state_dir = &policy.daemon.state_dir;
    let live = match state::read_daemon_info(state_dir).and_then(|i| i.listen) {
        Some(addr) => ask_daemon(&addr).await,
        None => None,
    };
    let (status, from_daemon) = match live {
        Some(s) => (s, true),
        None => {
            let jobs: BTreeMap<String, JobStatus> = policy
                .jobs
                .iter()
                .map(|(name, job)| {
                    let r = state::read_job(state_dir, name);
                    let status = JobStatus {
                        schedule: job.schedule.clone(),
                        timezone: job.tz().to_string(),
                        next_run: job.backup_schedule().and_then(|s| s.next_after(Utc::now())),
                        verify_schedule: job.verify.schedule.clone(),
                        next_verify: job.verify_schedule().and_then(|s| s.next_after(Utc::now())),
                        last_run: r.last_run,
                        last_success_at: r.last_success_at,
                        last_failure_at: r.last_failure_at,
                        alert_if_older_than_seconds: job.alert_if_older_than.map(|d| d.as_secs()),
                        ..Default::default()
                    };
                    (name.clone(), status)
                })
                .collect();
            let status = Status {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: 0,
                started_at: Utc::now(),
                policy: config.display().to_string(),
                state: "not running".into(),
                jobs,
                spool: crate::spool::pending(&policy).await,
                notify_failures: BTreeMap::new(),
                upload_limit_bytes_per_sec: policy.daemon.upload_limit,
            };
            (status, false)
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print(&status, from_daemon);
        print_spool(&status);
    }
    let failing = status
        .jobs
        .values()
        .any(|j| j.last_run.as_ref().is_some_and(|r| !r.ok()) || j.fresh == Some(false));
    Ok(if failing {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

async fn ask_daemon(addr: &str) -> Option<Status> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let resp = client
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .ok()?;
    resp.json::<Status>().await.ok()
}

fn print_spool(s: &Status) {
    if s.spool.is_empty() {
        return;
    }
    println!(
        "\nspool: {} snapshot(s) waiting for their target",
        s.spool.len()
    );
    for p in &s.spool {
        println!(
            "  {} {}/{} ({})",
            p.target,
            p.job,
            p.snapshot,
            human_bytes(p.bytes)
        );
    }
}

fn print(s: &Status, from_daemon: bool) {
    let now = Utc::now();
    if from_daemon {
        println!(
            "daemon: {} (pid {}, backupd {}, up {})",
            s.state,
            s.pid,
            s.version,
            super::table::age(s.started_at, now).trim_end_matches(" ago")
        );
    } else {
        println!("daemon: not running (showing what the state directory remembers)");
    }
    let when = |t: Option<chrono::DateTime<Utc>>| {
        t.map_or("–".to_string(), |t| super::table::age(t, now))
    };
    let rows: Vec<Vec<String>> = s
        .jobs
        .iter()
        .map(|(name, j)| {
            let last = match &j.last_run {
                Some(r) if r.ok() => format!(
                    "✓ {} ({})",
                    super::table::age(r.finished_at, now),
                    human_bytes(r.stored_bytes)
                ),
                Some(r) => format!("✗ {}", super::table::age(r.finished_at, now)),
                None => "never".into(),
            };
            let state = match (&j.running, j.fresh) {
                (Some(what), _) => format!("running {what}"),
                (None, Some(false)) => "STALE".into(),
                _ => "idle".into(),
            };
            vec![
                name.clone(),
                j.schedule.clone().unwrap_or_else(|| "–".into()),
                j.next_run.map_or("–".into(), |t| super::table::age(t, now)),
                last,
                when(j.last_success_at),
                when(j.last_verified_at),
                state,
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        super::table::render(
            &[
                "JOB", "SCHEDULE", "NEXT", "LAST RUN", "LAST OK", "VERIFIED", "STATE"
            ],
            &rows
        )
    );
    for (name, j) in &s.jobs {
        if let Some(r) = j.last_run.as_ref().filter(|r| !r.ok()) {
            println!(
                "\njob {name} failed {} (by {}):",
                super::table::age(r.finished_at, now),
                r.by
            );
            for e in &r.errors {
                println!("  {e}");
            }
        }
        if j.fresh == Some(false) {
            println!("\njob {name}: no snapshot newer than alert_if_older_than");
        }
        for (source, w) in &j.wal {
            let a = &w.archiver;
            match &w.error {
                Some(e) => println!("\njob {name} source {source}: WAL archiving unknown: {e}"),
                None => println!(
                    "\njob {name} source {source}: WAL last archived {} ({}), {} waiting, {} failure(s){}",
                    a.last_archived_wal.as_deref().unwrap_or("none yet"),
                    when(a.last_archived_at),
                    a.ready_files
                        .map_or("? (grant pg_monitor)".into(), |n| n.to_string()),
                    a.failed_count,
                    match (&a.last_failed_wal, a.last_failed_at) {
                        (Some(f), Some(t)) if a.last_failed_at > a.last_archived_at => format!(
                            ", FAILING: {f} {} — see the server log for archive_command",
                            super::table::age(t, now)
                        ),
                        _ => String::new(),
                    }
                ),
            }
        }
        if from_daemon && (j.runs_skipped > 0 || j.verify_failures > 0) {
            println!(
                "\njob {name}: {} run(s) skipped, {} verification failure(s) since start",
                j.runs_skipped, j.verify_failures
            );
        }
    }
}
