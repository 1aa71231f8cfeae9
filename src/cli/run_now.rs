//! `backupd run-now [JOB…] [--tag TAG]… [--full]`: back up now, report every source, exit 1 on any failure.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_FAILED, UsageError, human_bytes, load_policy, self_command};
use crate::job::{self, JobReport};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Jobs to back up (default: all jobs in the policy).
    pub jobs: Vec<String>,
    /// Extra tag for the snapshot, e.g. pre-migration (repeatable; `manual` is always added).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Make every incremental directory source a full this run (a new chain starts).
    #[arg(long)]
    pub full: bool,
}

pub async fn run(config: &Path, args: Args, quiet: bool) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let jobs = policy.select_jobs(&args.jobs).map_err(UsageError::from)?;
    let mut tags = vec!["manual".to_string()];
    for tag in args.tags {
        if !crate::policy::is_valid_name(&tag) {
            return Err(UsageError(format!(
                "invalid tag {tag:?}: use lowercase letters, digits, '_' and '-'"
            ))
            .into());
        }
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    check_dirs(&policy)?;
    let recipients = crate::crypto::backup_recipients(&policy.encryption)?;
    if recipients.is_none() {
        tracing::warn!(
            "encryption.mode = \"none\": snapshots are stored in PLAINTEXT; anyone who can read the target can read your data"
        );
    }
    // Leftovers of earlier runs first: uploads a crash left open, snapshots in the spool.
    for said in
        crate::target::journal::abort_orphans(&policy.daemon.state_dir, &policy.targets).await
    {
        tracing::warn!("{said}");
    }
    if policy.daemon.spool_dir.is_some() {
        let (delivered, errors) = crate::spool::deliver(&policy).await;
        for p in &delivered {
            println!(
                "delivered spooled snapshot {}/{} to {}",
                p.job, p.snapshot, p.target
            );
        }
        for e in &errors {
            tracing::warn!("spool: {e}");
        }
    }
    let notifier =
        crate::notify::Notifier::new(policy.notify.clone()).for_instance(policy.daemon.instance());
    let ctx = job::RunContext {
        policy: &policy,
        recipients: recipients.as_deref(),
        notifier: &notifier,
        by: "run-now",
        cancel: interrupt_token(),
        progress: crate::progress::Progress::for_terminal(quiet),
        slot: None,
        lease: None,
        full: args.full,
    };
    let mut failed = 0;
    for name in &jobs {
        match job::run_job(&ctx, name, &tags).await {
            Ok(report) => {
                print_report(&report);
                print_limits(&policy, name);
                if !report.ok() {
                    failed += 1;
                }
            }
            Err(busy) => {
                tracing::error!(job = %name, "{busy}");
                println!("job {name}: NOT RUN: {busy}");
                failed += 1;
            }
        }
    }
    // Webhooks and pings of the last job are still in flight; give them a moment.
    notifier.flush(std::time::Duration::from_secs(30)).await;
    let cmd = self_command(config);
    if failed == 0 {
        println!("\nList snapshots:   {cmd} list");
        println!(
            "Restore latest:   {cmd} restore {} --to /tmp/restore",
            jobs[0]
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "\n{failed} of {} job(s) failed; see the messages above.",
            jobs.len()
        );
        Ok(ExitCode::from(EXIT_FAILED))
    }
}

/// Cancelled on Ctrl-C or SIGTERM, so an interrupted run-now commits nothing and aborts
/// its uploads instead of leaving them to the orphan sweep.
fn interrupt_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!(
            "interrupted: cancelling; nothing of the running snapshot will be committed"
        );
        cancel.cancel();
    });
    token
}

/// The upload limits the job's targets were held to, so a slow run explains itself.
fn print_limits(policy: &crate::policy::Policy, job: &str) {
    for name in &policy.jobs[job].targets {
        let Some(spec) = policy.targets.get(name) else {
            continue;
        };
        let remote = !spec.url().starts_with("file:");
        let daemon = policy.daemon.upload_limit.filter(|_| remote);
        if let Some(rate) = [spec.upload_limit, daemon].into_iter().flatten().min() {
            println!(
                "  uploads to {name} limited to {}/s (upload_limit)",
                crate::units::human_bytes(rate)
            );
        }
    }
}

fn print_report(r: &JobReport) {
    let plain: u64 = r.manifest.as_ref().map_or(0, |m| m.plain_bytes());
    let stored: u64 = r.manifest.as_ref().map_or(0, |m| m.stored_bytes());
    if r.backup_ok() {
        println!(
            "job {}: snapshot {} committed to {} ({} → {} stored, {:.1} s)",
            r.job,
            r.snapshot,
            r.committed.join(", "),
            human_bytes(plain),
            human_bytes(stored),
            r.seconds
        );
    } else if r.committed.is_empty() {
        println!(
            "job {}: FAILED, no snapshot committed ({:.1} s)",
            r.job, r.seconds
        );
        if let Some(why) = &r.aborted {
            println!("  {why}");
        }
    } else {
        println!(
            "job {}: PARTIAL, snapshot {} committed to {} only",
            r.job,
            r.snapshot,
            r.committed.join(", ")
        );
    }
    for s in &r.sources {
        match &s.result {
            Ok(e) => {
                let what = e.stats.summary();
                println!(
                    "  {:<16} {:<9} ok      {}  {} → {}",
                    s.name,
                    s.kind,
                    what,
                    human_bytes(e.plain.bytes),
                    human_bytes(e.stored.bytes)
                );
                for w in &e.warnings {
                    println!("  {:<16} warning: {w}", s.name);
                }
            }
            Err(e) => println!("  {:<16} {:<9} FAILED  {e}", s.name, s.kind),
        }
    }
    for (target, e) in &r.failed_targets {
        println!("  target {target} FAILED: {e}");
    }
    for (target, why) in &r.spooled {
        println!(
            "  target {target} SPOOLED: unreachable ({why}); the copy waits in the spool and is delivered by the daemon or the next run"
        );
    }
    for v in &r.verifications {
        super::verify::print_record(v);
    }
    for p in &r.pruned {
        if let Some(decisions) = &p.decisions {
            let kept = decisions.iter().filter(|d| d.keep).count();
            println!(
                "  retention on {}: kept {kept}, deleted {}{}",
                p.target,
                p.deleted.len(),
                if p.orphans.is_empty() {
                    String::new()
                } else {
                    format!(", removed {} leftover(s)", p.orphans.len())
                }
            );
        }
    }
    for n in &r.not_permitted {
        println!("  skipped: {n}");
    }
    for e in &r.after_errors {
        println!("  ERROR {e}");
    }
}

/// The local directories backupd trusts are its own (see `state::check_private_dir`).
pub(super) fn check_dirs(policy: &crate::policy::Policy) -> anyhow::Result<()> {
    crate::state::check_private_dir(&policy.daemon.state_dir, "daemon.state_dir")
        .map_err(UsageError::from)?;
    if let Some(spool) = &policy.daemon.spool_dir {
        crate::state::check_private_dir(spool, "daemon.spool_dir").map_err(UsageError::from)?;
    }
    Ok(())
}
