//! `backupd prune [JOB] [--target NAME] [--dry-run] [--json]`: apply retention, print the
//! plan with its reasons, and sweep crash leftovers.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_FAILED, UsageError, chosen_targets, load_policy};
use crate::prune::{PruneOutcome, prune};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job (default: every job).
    pub job: Option<String>,
    /// Only this target (default: each job's targets).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Print the plan; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON array of outcomes.
    #[arg(long)]
    pub json: bool,
    /// Apply retention to this instance's snapshots (a retired host's) instead of this
    /// instance's own. Try it with --dry-run first.
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
}

pub async fn run(config: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let jobs = policy
        .select_jobs(args.job.as_slice())
        .map_err(UsageError::from)?;
    let instance = super::chosen_instance(&policy, args.instance.as_ref())?;
    let mut outcomes = Vec::new();
    for job in &jobs {
        for target in chosen_targets(&policy, Some(job), args.target.as_ref())? {
            outcomes.push(
                prune(
                    &policy,
                    job,
                    &target,
                    &instance,
                    args.dry_run,
                    chrono::Utc::now(),
                )
                .await?,
            );
        }
    }
    // A name that matches nothing is most likely a typo: say which names exist.
    if args.instance.is_some()
        && outcomes
            .iter()
            .all(|o| o.decisions.as_ref().is_none_or(Vec::is_empty))
    {
        let mut known = std::collections::BTreeSet::new();
        for job in &jobs {
            for target in chosen_targets(&policy, Some(job), args.target.as_ref())? {
                if let Ok(list) = crate::snapshot::list(&target, Some(job)).await {
                    known.extend(crate::snapshot::instances_in(&list));
                }
            }
        }
        return Err(UsageError(format!(
            "instance {instance} has no snapshots of {} here; instances that have: {}",
            jobs.join(", "),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.into_iter().collect::<Vec<_>>().join(", ")
            }
        ))
        .into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        for o in &outcomes {
            print_outcome(o);
        }
    }
    let failed = outcomes
        .iter()
        .any(|o| !o.errors.is_empty() || o.not_permitted.is_some());
    Ok(if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_outcome(o: &PruneOutcome) {
    let verb = if o.dry_run { "would delete" } else { "deleted" };
    println!(
        "job {} on target {}, instance {}{}:",
        o.job,
        o.target,
        o.instance,
        if o.dry_run { " (dry run)" } else { "" }
    );
    match &o.decisions {
        None => println!("  no retention rules: every snapshot is kept"),
        Some(decisions) => {
            for d in decisions {
                if d.keep {
                    println!("  keep    {}  {}", d.snapshot, d.reasons.join(", "));
                } else {
                    println!("  delete  {}", d.snapshot);
                }
            }
            let n = decisions.iter().filter(|d| !d.keep).count();
            println!("  {verb} {n} snapshot(s), kept {}", decisions.len() - n);
        }
    }
    for id in &o.orphans {
        println!(
            "  {} leftovers of uncommitted snapshot {id}",
            if o.dry_run { "would remove" } else { "removed" }
        );
    }
    if let Some(last) = o.wal_deleted.last() {
        println!(
            "  {} {} WAL file(s) older than the oldest kept base backup (the last: {last})",
            if o.dry_run { "would delete" } else { "deleted" },
            o.wal_deleted.len()
        );
    }
    for why in &o.left_alone {
        println!("  left alone (not trusted) {why}");
    }
    if let Some(n) = &o.not_permitted {
        println!("  NOT PERMITTED {n}");
    }
    for e in &o.errors {
        println!("  ERROR {e}");
    }
}
