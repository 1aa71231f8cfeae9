//! `backupd recover JOB [--target NAME] [--since TIME] [--dry-run] [--json]`: bring back
//! snapshots whose manifests were deleted in a versioned S3 bucket (see `recover`).

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_FAILED, UsageError, chosen_targets, load_policy};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub job: String,
    /// Only this target (default: each of the job's S3 targets).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Only snapshots deleted at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z):
    /// undo what happened since an incident began, and leave older retention alone.
    #[arg(long, value_name = "TIME")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// List what would come back; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON array of the recoverable snapshots.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let jobs = policy
        .select_jobs(std::slice::from_ref(&args.job))
        .map_err(UsageError::from)?;
    let job = &jobs[0];
    let mut found_any = Vec::new();
    let mut failed = false;
    let mut s3_targets = 0;
    for target in chosen_targets(&policy, Some(job), args.target.as_ref())? {
        let spec = &policy.targets[&target.name];
        let Ok(url) = url::Url::parse(&spec.url()) else {
            continue;
        };
        if url.scheme() != "s3" {
            continue;
        }
        s3_targets += 1;
        let bucket = crate::target::s3api::Bucket::new(&url, spec)
            .map_err(|e| UsageError(format!("target {}: {e}", target.name)))?;
        let deleted = match crate::recover::find(&bucket, job, args.since).await {
            Ok(d) => d,
            Err(e) => {
                failed = true;
                eprintln!("target {}: {e}", target.name);
                continue;
            }
        };
        if !args.json {
            println!(
                "target {}: {} deleted snapshot(s) of {job} can be recovered",
                target.name,
                deleted.len()
            );
        }
        for d in &deleted {
            if args.json {
                continue;
            }
            if args.dry_run {
                println!(
                    "  would recover {}  (manifest deleted {}, {} objects)",
                    d.snapshot,
                    d.deleted_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    d.objects
                );
                continue;
            }
            match crate::recover::recover(&bucket, d).await {
                Ok(()) => println!(
                    "  recovered {}  (manifest deleted {}, {} objects)",
                    d.snapshot,
                    d.deleted_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    d.objects
                ),
                Err(e) => {
                    failed = true;
                    println!("  FAILED to recover {}: {e}", d.snapshot);
                }
            }
        }
        found_any.extend(deleted);
    }
    if s3_targets == 0 {
        return Err(UsageError(format!(
            "job {job} has no s3:// target here: recovery reads object versions, which only versioned S3 buckets keep"
        ))
        .into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found_any)?);
    } else if !args.dry_run && !found_any.is_empty() {
        println!(
            "see them with `backupd list {job}`; restore one with `backupd restore {job} SNAPSHOT --to DIR`"
        );
    }
    Ok(if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
