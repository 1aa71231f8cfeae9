//! `backupd verify [JOB] [SNAPSHOT|latest|all] [--target NAME] [--identity FILE] [--json]`:
//! test-restore snapshots and record the results beside their manifests; exit 1 when any
//! verification fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_FAILED, UsageError, chosen_targets, load_policy};
use crate::verify::{VerifyRecord, verify_snapshots};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job (default: every job).
    pub job: Option<String>,
    /// `latest` (default), `all`, or a snapshot id or unique prefix.
    #[arg(default_value = "latest")]
    pub snapshot: String,
    /// Only this target (default: each of the job's targets).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// age identity file (default: encryption.identity_file from the policy).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Print one JSON array of verification records.
    #[arg(long)]
    pub json: bool,
    /// Accept unsigned snapshots although `[signing]` is configured (ones made before it was).
    #[arg(long)]
    pub allow_unsigned: bool,
}

pub async fn run(config: &Path, args: Args, quiet: bool) -> anyhow::Result<ExitCode> {
    let progress = crate::progress::Progress::for_terminal(quiet || args.json);
    let policy = load_policy(config)?;
    let jobs = policy
        .select_jobs(args.job.as_slice())
        .map_err(UsageError::from)?;
    let mut records: Vec<VerifyRecord> = Vec::new();
    for job in &jobs {
        let targets = chosen_targets(&policy, Some(job), args.target.as_ref())?;
        let found = verify_snapshots(
            &policy,
            job,
            &targets,
            &args.snapshot,
            args.identity.as_deref(),
            args.allow_unsigned,
            &progress,
        )
        .await?;
        if !args.json {
            found.iter().for_each(print_record);
        }
        records.extend(found);
    }
    let found_any = !records.is_empty();
    if !found_any {
        return Err(anyhow::anyhow!(
            "no committed snapshot matches {:?}; see `backupd list`",
            args.snapshot
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(if records.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

pub(super) fn print_record(r: &VerifyRecord) {
    let secs = (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0;
    if r.ok {
        let checks: usize = r.sources.values().map(|s| s.checks.len()).sum();
        println!(
            "verified {}/{} on {}: OK ({} sources, {checks} checks, {secs:.1} s)",
            r.job,
            r.snapshot,
            r.target,
            r.sources.len()
        );
        // What an operator should know although nothing failed.
        if let Some(a) = r
            .authenticity
            .as_ref()
            .filter(|a| a.detail != "signed by a trusted key")
        {
            println!("  note: manifest: {}", a.detail);
        }
        for (source, result) in &r.sources {
            for c in result.checks.iter().filter(|c| c.name == "restore rules") {
                if c.detail.starts_with("restore would leave out") {
                    println!("  note: {source}: {}", c.detail);
                }
            }
        }
    } else {
        println!("verified {}/{} on {}: FAILED", r.job, r.snapshot, r.target);
        for f in r.failures() {
            println!("  {f}");
        }
    }
}
