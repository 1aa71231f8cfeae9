//! What the daemon's scheduled work does: a backup through the same lifecycle as
//! `run-now`, a scheduled verification, the inventory of each job's targets (snapshot
//! counts, newest snapshot, last verification; catch-up decisions) and the freshness
//! alarm. Each updates the shared status the listener serves.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::plan::Task;
use super::scheduler::Runner;
use super::status::FleetEntry;
use super::status::Shared;
use super::status::{RECENT_SNAPSHOTS, RecentSnapshot};
use crate::job::{self, RunContext};
use crate::notify::{Event, EventKind, Notifier};
use crate::policy::Policy;
use crate::target::Target;

pub struct Work {
    pub shared: Arc<Shared>,
    pub notifier: Notifier,
}

impl Runner for Arc<Work> {
    fn run(
        &self,
        policy: Arc<Policy>,
        job: String,
        task: Task,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move {
            match task {
                Task::Backup => me.backup(&policy, &job, cancel).await,
                Task::Verify => me.verify(&policy, &job).await,
            }
        })
    }
}

impl Work {
    async fn backup(&self, policy: &Policy, job: &str, cancel: CancellationToken) {
        let spec = &policy.jobs[job];
        // The slot this run belongs to: the newest fire time not after now (a catch-up
        // run belongs to the slot it makes up for).
        let slot = spec
            .backup_schedule()
            .and_then(|s| s.prev_at_or_before(Utc::now()));
        let run_cancel = cancel.child_token();
        let mut keeper = None;
        if spec.coordination == crate::policy::Coordination::Lease
            && let Some(slot) = slot
        {
            let Some((target, held)) = self.hold_slot(policy, job, slot, &cancel).await else {
                return;
            };
            let ttl = std::time::Duration::from_secs(spec.lease_ttl_secs);
            keeper = Some(crate::claim::Keeper::start(
                &target,
                held,
                ttl,
                run_cancel.clone(),
            ));
        }
        let started = std::time::Instant::now();
        let recipients = match crate::crypto::backup_recipients(&policy.encryption) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(job, "backup not started: {e}");
                self.shared.job(job, |j| {
                    j.runs_failed += 1;
                    j.last_failure_at = Some(Utc::now());
                });
                self.notifier
                    .send(Event::new(job, EventKind::Failure, Some(e.to_string())));
                return;
            }
        };
        let ctx = RunContext {
            policy,
            recipients: recipients.as_deref(),
            notifier: &self.notifier,
            by: "daemon",
            cancel: run_cancel,
            progress: crate::progress::Progress::off(),
            slot,
            lease: keeper.as_ref().map(|k| k.validity.clone()),
            full: false,
        };
        let tags = vec!["scheduled".to_string()];
        let report = match job::run_job(&ctx, job, &tags).await {
            Ok(r) => {
                if let Some(keeper) = keeper {
                    keeper.finish().await;
                }
                r
            }
            Err(busy) => {
                tracing::warn!(job, "scheduled backup skipped: {busy}");
                self.shared.job(job, |j| j.runs_skipped += 1);
                return;
            }
        };
        let record = crate::state::read_job(&policy.daemon.state_dir, job);
        let ok = report.ok();
        self.shared.job(job, |j| {
            if ok {
                j.runs_succeeded += 1;
            } else {
                j.runs_failed += 1;
            }
            j.last_success_at = record.last_success_at;
            j.last_failure_at = record.last_failure_at;
            j.last_run = record.last_run.clone();
            j.last_duration_seconds = Some(started.elapsed().as_secs_f64());
            if report.verifications.iter().any(|v| !v.ok) {
                j.verify_failures += report.verifications.iter().filter(|v| !v.ok).count() as u64;
            } else if let Some(v) = report.verifications.iter().map(|v| v.finished_at).max() {
                j.last_verified_at = Some(v);
            }
        });
        self.inventory(policy, job).await;
    }

    async fn verify(&self, policy: &Policy, job: &str) {
        let _lock = match job::lock::try_lock(
            &policy.daemon.state_dir,
            job,
            "backupd daemon (verification)",
        ) {
            Ok(l) => l,
            Err(busy) => {
                tracing::warn!(job, "scheduled verification skipped: {busy}");
                self.shared.job(job, |j| j.runs_skipped += 1);
                return;
            }
        };
        let targets = open_targets(policy, job);
        let which = policy.jobs[job].verify.snapshot.clone();
        let outcome = crate::verify::verify_snapshots(
            policy,
            job,
            &targets,
            &which,
            None,
            false,
            &crate::progress::Progress::off(),
        )
        .await;
        let failures: Vec<String> = match &outcome {
            Ok(records) if records.is_empty() => vec!["no committed snapshot to verify".into()],
            Ok(records) => records.iter().flat_map(|r| r.failures()).collect(),
            Err(e) => vec![format!("{e:#}")],
        };
        let now = Utc::now();
        if failures.is_empty() {
            tracing::info!(job, "scheduled verification passed");
            self.shared.job(job, |j| j.last_verified_at = Some(now));
        } else {
            for f in &failures {
                tracing::error!(job, "scheduled verification failed: {f}");
            }
            self.shared.job(job, |j| j.verify_failures += 1);
            self.notifier.send(Event::new(
                job,
                EventKind::VerifyFailure,
                Some(format!("verification failed: {}", failures.join("; "))),
            ));
        }
    }

    /// With `coordination = "lease"`: claims the scheduled slot this run belongs to, or
    /// watches it while another replica holds it and takes it over if that one stops
    /// renewing. `None` when this replica does not run the slot (another ran it, or the
    /// claim cannot be made: better skipped than doubled).
    async fn hold_slot(
        &self,
        policy: &Policy,
        job: &str,
        slot: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> Option<(Target, crate::claim::Held)> {
        use crate::claim::{self, Outcome, Watched};
        let now = Utc::now();
        let Some(target) = open_targets(policy, job).into_iter().next() else {
            tracing::error!(
                job,
                "slot {slot} not run: the job's first target cannot be opened to claim it"
            );
            return None;
        };
        let instance = policy.daemon.instance();
        let skipped = |why: &str| {
            tracing::info!(job, %slot, "{why}");
            self.shared.job(job, |j| j.runs_skipped += 1);
        };
        match claim::claim(&target, &instance, job, slot).await {
            Ok(Outcome::Won(held)) => {
                tracing::info!(job, %slot, "claimed the slot");
                Some((target, *held))
            }
            Ok(Outcome::Taken { holder }) if !claim::renewable(&target) => {
                skipped(&format!("slot run by another replica ({holder})"));
                None
            }
            Ok(Outcome::Taken { holder }) => {
                tracing::info!(job, %slot, "slot held by another replica ({holder}): watching it");
                let spec = &policy.jobs[job];
                let until = spec
                    .backup_schedule()
                    .and_then(|s| s.next_after(slot))
                    .unwrap_or(slot + chrono::Duration::days(1));
                let ttl = std::time::Duration::from_secs(spec.lease_ttl_secs);
                match claim::watch(&target, &instance, job, slot, ttl, until, cancel).await {
                    Watched::TookOver(held) => Some((target, *held)),
                    Watched::Done(why) => {
                        skipped(&format!("slot run by another replica ({holder}): {why}"));
                        None
                    }
                }
            }
            Err(e) => {
                tracing::error!(job, %slot, "slot not run: {e}");
                self.shared.job(job, |j| {
                    j.runs_failed += 1;
                    j.last_failure_at = Some(now);
                });
                None
            }
        }
    }

    /// Lists the job's snapshots on every target: counts, the newest snapshot present
    /// everywhere, and whether it passed verification. Returns that newest snapshot's
    /// start, or `None` when some target has none (or could not be listed).
    pub async fn inventory(&self, policy: &Policy, job: &str) -> Option<DateTime<Utc>> {
        let targets = open_targets(policy, job);
        let mut newest: Vec<Option<crate::snapshot::Manifest>> = Vec::new();
        let mut counts = std::collections::BTreeMap::new();
        let mut fleet: std::collections::BTreeMap<(String, String), (u64, DateTime<Utc>)> =
            Default::default();
        let trust = crate::snapshot::seal::Trust::new(&policy.signing).unwrap_or_default();
        // This instance's newest snapshots on the first target that lists any.
        let mut recent = Vec::new();
        for target in &targets {
            match crate::snapshot::list(target, Some(job)).await {
                // Freshness and catch-up are about this instance's own snapshots: another
                // host's backups must not hide that this one stopped.
                Ok(mut list) => {
                    // Every instance's newest, for the fleet view (/metrics), before this
                    // instance keeps only its own; a snapshot [signing] refuses is nobody's.
                    for m in &list {
                        if trust.judge(m).refused().is_some() {
                            continue;
                        }
                        let e = fleet
                            .entry((m.instance().to_string(), target.name.clone()))
                            .or_insert((0u64, m.started_at));
                        e.0 += 1;
                        e.1 = e.1.max(m.started_at);
                    }
                    let me = policy.daemon.instance();
                    list.retain(|m| m.instance() == me);
                    warn_if_doubled(policy, job, &me, &list);
                    if recent.is_empty() {
                        recent = list
                            .iter()
                            .take(RECENT_SNAPSHOTS)
                            .map(|m| RecentSnapshot {
                                snapshot: m.snapshot.clone(),
                                started_at: m.started_at,
                                stored_bytes: m.stored_bytes(),
                            })
                            .collect();
                    }
                    counts.insert(target.name.clone(), list.len() as u64);
                    newest.push(list.into_iter().next());
                }
                Err(e) => {
                    tracing::warn!(job, target = %target.name, "cannot list snapshots: {e}");
                    newest.push(None);
                }
            }
        }
        let complete =
            newest.len() == policy.jobs[job].targets.len() && newest.iter().all(Option::is_some);
        let oldest_newest = if complete {
            newest.iter().flatten().map(|m| m.started_at).min()
        } else {
            None
        };
        let mut verified = None;
        if let (Some(target), Some(Some(m))) = (targets.first(), newest.first()) {
            verified = crate::verify::latest_record(target, job, &m.snapshot)
                .await
                .filter(|r| r.ok)
                .map(|r| r.finished_at);
        }
        self.shared.job(job, |j| {
            j.fleet = fleet
                .into_iter()
                .map(|((instance, target), (snapshots, newest))| FleetEntry {
                    instance,
                    target,
                    snapshots,
                    newest_snapshot_at: newest,
                })
                .collect();
            j.snapshots = counts;
            j.recent = recent;
            j.newest_snapshot_at = oldest_newest;
            if verified > j.last_verified_at {
                j.last_verified_at = verified;
            }
        });
        oldest_newest
    }

    /// Picks up runs recorded by other processes (`run-now` on the same state
    /// directory): their outcome shows in the status, and a snapshot they committed
    /// counts for freshness.
    pub fn refresh_from_state(&self, policy: &Policy) {
        for name in policy.jobs.keys() {
            let record = crate::state::read_job(&policy.daemon.state_dir, name);
            let Some(run) = record.last_run else { continue };
            self.shared.job(name, |j| {
                if j.last_run
                    .as_ref()
                    .is_some_and(|r| r.finished_at >= run.finished_at)
                {
                    return;
                }
                if run.ok() && run.committed.len() == policy.jobs[name].targets.len() {
                    j.newest_snapshot_at = j.newest_snapshot_at.max(Some(run.started_at));
                }
                j.last_success_at = record.last_success_at;
                j.last_failure_at = record.last_failure_at;
                j.last_run = Some(run);
            });
        }
    }

    /// The freshness alarm: flips `fresh` and notifies once per change.
    pub fn check_freshness(&self, policy: &Policy, now: DateTime<Utc>) {
        for (name, job) in &policy.jobs {
            let Some(limit) = job.alert_if_older_than else {
                continue;
            };
            let limit = chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
            let change = self.shared.update(|s| {
                let started = s.started_at;
                let j = s.jobs.get_mut(name)?;
                // With no snapshot at all, the clock starts with the daemon.
                let since = j.newest_snapshot_at.unwrap_or(started);
                let fresh = now - since <= limit;
                let before = j.fresh.replace(fresh);
                (before != Some(fresh) && !(before.is_none() && fresh)).then_some((fresh, since))
            });
            let Some((fresh, since)) = change else {
                continue;
            };
            if fresh {
                tracing::info!(job = %name, "freshness recovered: a snapshot is newer than alert_if_older_than");
                self.notifier
                    .send(Event::new(name, EventKind::Recovered, None));
            } else {
                let msg = format!(
                    "no committed snapshot newer than {} (newest: {})",
                    humantime::format_duration(job.alert_if_older_than.unwrap_or_default()),
                    if since == self.shared.snapshot().started_at {
                        "none".to_string()
                    } else {
                        since.to_rfc3339()
                    }
                );
                tracing::error!(job = %name, "freshness alarm: {msg}");
                self.notifier
                    .send(Event::new(name, EventKind::Stale, Some(msg)));
            }
        }
    }
}

fn open_targets(policy: &Policy, job: &str) -> Vec<Target> {
    policy.jobs[job]
        .targets
        .iter()
        .filter_map(|name| match policy.open_target(name) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(job, target = %name, "{e}");
                None
            }
        })
        .collect()
}

/// Two daemons that share this instance's name without coordination both run every slot
/// (and their retention counts each other's snapshots as their own): said in the log,
/// from the instance's own manifests, whenever the inventory runs.
fn warn_if_doubled(policy: &Policy, job: &str, me: &str, own: &[crate::snapshot::Manifest]) {
    let spec = &policy.jobs[job];
    if spec.coordination != crate::policy::Coordination::None {
        return;
    }
    let window = chrono::Duration::seconds(spec.jitter_secs.max(60) as i64);
    let refs: Vec<&crate::snapshot::Manifest> = own.iter().collect();
    if let Some((a, b)) = crate::snapshot::doubled_hosts(&refs, window) {
        tracing::warn!(
            job,
            "hosts {a} and {b} both back up as instance {me}: give each its own daemon.instance, or set coordination = \"lease\""
        );
    }
}
