//! Everything around one backup run, the same for `run-now` and the daemon: the job lock,
//! the `before`/`after`/`on_failure` hooks, the run itself (with its timeout and
//! cancellation), notifications and the local record of the outcome.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::hooks::{self, HookEnv};
use super::lock::{self, LockError};
use super::{JobReport, run};
use crate::notify::{Event, EventKind, Notifier};
use crate::policy::Policy;
use crate::state::{self, RunRecord};

/// What a run needs besides the job's name.
pub struct RunContext<'a> {
    pub policy: &'a Policy,
    pub recipients: Option<&'a [age::x25519::Recipient]>,
    pub notifier: &'a Notifier,
    /// `run-now` or `daemon`: recorded, and named to whoever finds the lock held.
    pub by: &'static str,
    /// Cancels the run (shutdown); the job's `timeout_secs` cancels it too.
    pub cancel: CancellationToken,
    /// Bars on a terminal (`run-now`), off in the daemon.
    pub progress: crate::progress::Progress,
    /// The scheduled fire time this run belongs to, recorded in the manifest.
    pub slot: Option<chrono::DateTime<chrono::Utc>>,
    /// With `coordination = "lease"`: the slot's claim, which must still be valid at the
    /// commit.
    pub lease: Option<std::sync::Arc<crate::claim::Validity>>,
    /// `run-now --full`: incremental directory sources make a full this run.
    pub full: bool,
}

/// Runs `job` once with everything around it. `Err` only when another process holds the
/// job's lock: then nothing ran at all.
pub async fn run_job(
    ctx: &RunContext<'_>,
    job: &str,
    tags: &[String],
) -> Result<JobReport, LockError> {
    let policy = ctx.policy;
    let spec = &policy.jobs[job];
    let _lock = lock::try_lock(
        &policy.daemon.state_dir,
        job,
        &format!("backupd {}", ctx.by),
    )?;
    let started_at = Utc::now();
    ctx.notifier
        .ping(spec.healthcheck_url.as_deref(), "/start", String::new());
    let hook_timeout = Duration::from_secs(spec.hooks.timeout_secs);

    let before = hooks::run(
        "before",
        &spec.hooks.before,
        hook_timeout,
        &HookEnv {
            job,
            snapshot: "",
            status: "running",
            pass_env: &spec.hooks.pass_env,
        },
    )
    .await;
    let mut report = match before {
        Err(e) => JobReport::not_run(job, &format!("{e}; the backup did not start")),
        Ok(()) => backup(ctx, job, tags).await,
    };

    let status = if report.ok() { "success" } else { "failure" };
    let env = HookEnv {
        job,
        snapshot: &report.snapshot,
        status,
        pass_env: &spec.hooks.pass_env,
    };
    if report.ok() {
        if let Err(e) = hooks::run("after", &spec.hooks.after, hook_timeout, &env).await {
            tracing::error!(job, "{e}");
            report.after_errors.push(e.to_string());
        }
    } else if let Err(e) =
        hooks::run("on_failure", &spec.hooks.on_failure, hook_timeout, &env).await
    {
        tracing::error!(job, "{e}");
        report.after_errors.push(e.to_string());
    }

    let ok = report.ok();
    let errors = report.errors();
    let record = RunRecord {
        started_at,
        finished_at: Utc::now(),
        status: if ok { "success" } else { "failure" }.into(),
        snapshot: (!report.committed.is_empty()).then(|| report.snapshot.clone()),
        committed: report.committed.clone(),
        plain_bytes: report.manifest.as_ref().map_or(0, |m| m.plain_bytes()),
        stored_bytes: report.manifest.as_ref().map_or(0, |m| m.stored_bytes()),
        errors: errors.clone(),
        by: ctx.by.into(),
    };
    if let Err(e) = state::record_run(&policy.daemon.state_dir, job, record) {
        tracing::warn!(
            job,
            "could not record the run in {}: {e}",
            policy.daemon.state_dir.display()
        );
    }
    ctx.notifier.send(Event {
        snapshot: (!report.snapshot.is_empty()).then(|| report.snapshot.clone()),
        committed: report.committed.clone(),
        plain_bytes: report.manifest.as_ref().map(|m| m.plain_bytes()),
        stored_bytes: report.manifest.as_ref().map(|m| m.stored_bytes()),
        duration_seconds: Some((Utc::now() - started_at).num_milliseconds() as f64 / 1000.0),
        ..Event::new(
            job,
            if ok {
                EventKind::Success
            } else {
                EventKind::Failure
            },
            (!ok).then(|| errors.join("; ")),
        )
    });
    ctx.notifier.ping(
        spec.healthcheck_url.as_deref(),
        if ok { "" } else { "/fail" },
        errors.join("\n"),
    );
    Ok(report)
}

/// Opens the targets and runs the backup under the job's timeout.
async fn backup(ctx: &RunContext<'_>, job: &str, tags: &[String]) -> JobReport {
    let policy = ctx.policy;
    let spec = &policy.jobs[job];
    // An unreachable target fails the job but does not keep the others from the data.
    let mut targets = Vec::new();
    let mut unreachable = BTreeMap::new();
    let mut spooled = BTreeMap::new();
    for name in &spec.targets {
        let opened = policy.open_target(name);
        // A remote target that is down now gets its copy in the spool, when there is one.
        if let (Some(spool_dir), Ok(t)) = (&policy.daemon.spool_dir, &opened)
            && t.remote.is_some()
            && let Err(why) = crate::spool::reachable(policy, name).await
        {
            match crate::spool::open(spool_dir, name) {
                Ok(stand_in) => {
                    tracing::warn!(job, target = %name, "target unreachable, spooling its copy: {why}");
                    spooled.insert(name.clone(), why.to_string());
                    targets.push(stand_in);
                    continue;
                }
                Err(e) => tracing::error!(job, target = %name, "cannot use the spool: {e}"),
            }
        }
        match opened {
            Ok(t) => targets.push(t),
            Err(e) => {
                tracing::error!(job, target = %name, "{e}");
                unreachable.insert(name.clone(), e.to_string());
            }
        }
    }
    if targets.is_empty() {
        let mut report = JobReport::not_run(job, "no target could be opened");
        report.failed_targets = unreachable;
        return report;
    }
    let cancel = ctx.cancel.child_token();
    let timer = spec.timeout_secs.map(|secs| {
        let cancel = cancel.clone();
        let job = job.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            tracing::error!(job, "timeout_secs = {secs} reached: cancelling the run");
            cancel.cancel();
        })
    });
    let mut report = run(
        policy,
        job,
        &targets,
        ctx.recipients,
        super::RunInfo {
            tags,
            slot: ctx.slot,
            lease: ctx.lease.as_deref(),
            full: ctx.full,
        },
        &cancel,
        &ctx.progress,
    )
    .await;
    if let Some(timer) = timer {
        timer.abort();
        if cancel.is_cancelled() && !ctx.cancel.is_cancelled() && report.committed.is_empty() {
            report.aborted = Some(format!(
                "cancelled after timeout_secs = {}; nothing was committed (raise jobs.{job}.timeout_secs if it needs longer)",
                spec.timeout_secs.unwrap_or_default()
            ));
        }
    }
    report.failed_targets.extend(unreachable);
    if !spooled.is_empty() {
        let dropped = crate::spool::enforce_limit(policy).await;
        for d in dropped.iter().filter(|d| d.job == job) {
            let why = format!(
                "spool full (daemon.spool_max_bytes): snapshot {} for target {} was dropped before delivery",
                d.snapshot, d.target
            );
            if d.snapshot == report.snapshot {
                report.failed_targets.insert(d.target.clone(), why);
            } else {
                report.after_errors.push(why);
            }
        }
        report.spooled = spooled
            .into_iter()
            .filter(|(name, _)| report.committed.contains(name))
            .collect();
    }
    report
}
