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

fn ago(t: chrono::DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0) as u64;
    let rounded = match secs {
        0..60 => secs,
        60..3600 => secs / 60 * 60,
        _ => secs / 3600 * 3600,
    };
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(rounded))
    )
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
    if from_daemon {
        println!(
            "daemon: {} (pid {}, backupd {}, up since {})",
            s.state,
            s.pid,
            s.version,
            s.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    } else {
        println!("daemon: not running (showing what the state directory remembers)");
    }
    for (name, j) in &s.jobs {
        println!("\njob {name}");
        match (&j.schedule, j.next_run) {
            (Some(expr), Some(next)) => println!(
                "  schedule   {expr} ({}), next {}",
                j.timezone,
                next.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => println!("  schedule   none (run-now only)"),
        }
        if let Some(what) = &j.running {
            println!(
                "  running    {what}{}",
                j.running_since
                    .map(|t| format!(" since {}", ago(t)))
                    .unwrap_or_default()
            );
        }
        match &j.last_run {
            Some(r) if r.ok() => println!(
                "  last run   success {} ({}, {} → {} stored, by {})",
                ago(r.finished_at),
                r.snapshot.as_deref().unwrap_or("-"),
                human_bytes(r.plain_bytes),
                human_bytes(r.stored_bytes),
                r.by
            ),
            Some(r) => {
                println!("  last run   FAILED {} (by {})", ago(r.finished_at), r.by);
                for e in &r.errors {
                    println!("             {e}");
                }
            }
            None => println!("  last run   never"),
        }
        if let Some(t) = j.last_success_at {
            println!("  last ok    {}", ago(t));
        }
        if let Some(t) = j.last_verified_at {
            println!("  verified   {}", ago(t));
        }
        if j.fresh == Some(false) {
            println!("  ALARM      no snapshot newer than alert_if_older_than");
        }
        if from_daemon && (j.runs_skipped > 0 || j.verify_failures > 0) {
            println!(
                "  counters   {} skipped, {} verification failures",
                j.runs_skipped, j.verify_failures
            );
        }
    }
}
