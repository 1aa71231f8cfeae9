//! One run of one job: every source through the pipeline to every target, then the
//! commit. A snapshot is all-or-nothing per target: the manifest goes only to targets that
//! received every source, and when any source fails no manifest is written anywhere and
//! the objects already uploaded are deleted. A cancelled run (timeout, shutdown) commits
//! nothing either.
//!
//! Around a run (`lifecycle`): the job lock, hooks, notifications and the local record.

pub mod hooks;
mod level;
mod lifecycle;
pub mod lock;

pub use lifecycle::{RunContext, run_job};

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use object_store::ObjectStoreExt;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{self, Encoding};
use crate::policy::{JobPolicy, Policy};
use crate::snapshot::{self, Encryption, Manifest, SourceEntry};
use crate::source::{self, DumpContext};
use crate::target::Target;

/// What happened to one source.
#[derive(Debug)]
pub struct SourceReport {
    pub name: String,
    pub kind: &'static str,
    pub result: Result<SourceEntry, SourceFailure>,
}

/// Why one source is not in the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SourceFailure {
    #[error("not attempted: the run was cancelled")]
    Cancelled,
    #[error("not attempted: every target has failed")]
    NoTarget,
    /// Listing what a source covers (its databases, say) failed before any dump.
    #[error("{0}")]
    Expand(#[from] source::SourceError),
    #[error("listing the source stopped: {0}")]
    ExpandTask(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Store(#[from] pipeline::PipelineError),
    #[error("storing the index: {0}")]
    Index(pipeline::PipelineError),
}

/// What happened to one job run; `ok()` decides the exit status.
#[derive(Debug)]
pub struct JobReport {
    pub job: String,
    pub snapshot: String,
    pub sources: Vec<SourceReport>,
    pub committed: Vec<String>,
    pub failed_targets: BTreeMap<String, String>,
    pub seconds: f64,
    pub manifest: Option<Manifest>,
    /// Verifications run right after the backup (`verify.after_backup`), per target.
    pub verifications: Vec<crate::verify::VerifyRecord>,
    /// Retention applied after a good backup, per target.
    pub pruned: Vec<crate::prune::PruneOutcome>,
    /// Problems after the commit (verification could not start, retention errors).
    pub after_errors: Vec<String>,
    /// What a write-only target did not let the run delete (retention, leftovers): said
    /// once per target, not a failure.
    pub not_permitted: Vec<String>,
    /// Why the backup did not start (lock, `before` hook, no target) or was cut short.
    pub aborted: Option<String>,
    /// Targets that were down: their copy is committed in the spool, awaiting delivery
    /// (target → why it was unreachable). They are also in `committed`.
    pub spooled: BTreeMap<String, String>,
}

impl JobReport {
    /// A job that could not start at all.
    pub fn not_run(job: &str, why: &str) -> Self {
        tracing::error!(job, "backup not started: {why}");
        let mut report = Self::empty(job);
        report.aborted = Some(why.into());
        report
    }

    fn empty(job: &str) -> Self {
        JobReport {
            job: job.into(),
            snapshot: String::new(),
            sources: Vec::new(),
            committed: Vec::new(),
            failed_targets: BTreeMap::new(),
            seconds: 0.0,
            manifest: None,
            verifications: Vec::new(),
            pruned: Vec::new(),
            after_errors: Vec::new(),
            not_permitted: Vec::new(),
            aborted: None,
            spooled: BTreeMap::new(),
        }
    }

    pub fn ok(&self) -> bool {
        self.backup_ok() && self.verifications.iter().all(|v| v.ok) && self.after_errors.is_empty()
    }

    /// The snapshot is committed on every target of the job.
    pub fn backup_ok(&self) -> bool {
        self.aborted.is_none()
            && self.failed_targets.is_empty()
            && !self.committed.is_empty()
            && self.sources.iter().all(|s| s.result.is_ok())
    }

    /// Every problem of the run, one line each (notifications, the local record).
    pub fn errors(&self) -> Vec<String> {
        let mut out: Vec<String> = self.aborted.iter().cloned().collect();
        for s in &self.sources {
            if let Err(e) = &s.result {
                out.push(format!("source {}: {e}", s.name));
            }
        }
        for (t, e) in &self.failed_targets {
            out.push(format!("target {t}: {e}"));
        }
        for v in &self.verifications {
            out.extend(v.failures());
        }
        out.extend(self.after_errors.iter().cloned());
        if out.is_empty() && !self.ok() {
            out.push("no snapshot was committed".into());
        }
        out
    }
}

/// What a run is for besides its job: what the snapshot is labelled with, and the claim
/// it runs under.
pub struct RunInfo<'a> {
    pub tags: &'a [String],
    /// The scheduled fire time the run belongs to (daemon runs of a scheduled job).
    pub slot: Option<chrono::DateTime<Utc>>,
    /// The slot's claim (`coordination = "lease"`): no commit once it is no longer valid.
    pub lease: Option<&'a crate::claim::Validity>,
    /// `run-now --full`: every incremental directory source makes a full.
    pub full: bool,
}

/// Backs up `job_name` to `targets` (already opened, in the job's order).
pub async fn run(
    policy: &Policy,
    job_name: &str,
    targets: &[Target],
    recipients: Option<&[age::x25519::Recipient]>,
    info: RunInfo<'_>,
    cancel: &CancellationToken,
    progress: &crate::progress::Progress,
) -> JobReport {
    let job: &JobPolicy = &policy.jobs[job_name];
    // Before anything is dumped: a snapshot this host cannot sign would be refused later.
    let signing_key = match crate::snapshot::seal::signing_key(&policy.signing) {
        Ok(key) => key,
        Err(e) => return JobReport::not_run(job_name, &format!("signing key: {e}")),
    };
    let started = Instant::now();
    let started_at = Utc::now();
    let id = snapshot::new_id(started_at);
    let backup = Backup {
        job_name,
        job,
        id: &id,
        recipients,
        encoding: job.encoding(recipients.map(<[_]>::to_vec)),
        ctx: DumpContext {
            staging_dir: policy.daemon.state_dir.join("tmp"),
            base: None,
        },
        cancel,
        progress,
        levels: Levels {
            policy,
            force_full: info.full,
            started_at,
        },
    };
    tracing::info!(job = job_name, snapshot = %id, "backup started");
    for t in targets {
        // Slowest limit first: the one that decides how long the upload takes.
        if let Some(rate) = t.limits.iter().map(|l| l.bytes_per_sec()).min() {
            tracing::info!(
                job = job_name,
                target = %t.name,
                "uploads limited to {}/s (upload_limit)",
                crate::units::human_bytes(rate)
            );
        }
    }

    let (work, mut reports) = expand_sources(job_name, job).await;
    let mut failed_targets = BTreeMap::new();
    let mut uploaded: Vec<object_store::path::Path> = Vec::new();
    for (group, name, spec) in &work {
        let live: Vec<Target> = targets
            .iter()
            .filter(|t| !failed_targets.contains_key(&t.name))
            .cloned()
            .collect();
        let result = backup
            .store_source(group, name, spec, &live, &mut failed_targets, &mut uploaded)
            .await;
        if let Err(e) = &result {
            tracing::error!(job = job_name, source = %name, "source failed: {e}");
        }
        reports.push(SourceReport {
            name: name.clone(),
            kind: spec.kind(),
            result,
        });
    }

    let mut report = JobReport::empty(job_name);
    report.snapshot = id.clone();
    report.sources = reports;
    report.failed_targets = failed_targets;
    if cancel.is_cancelled() {
        report.aborted = Some("cancelled (timeout or shutdown); nothing was committed".into());
    }
    // The last check before the commit: after it, the snapshot is whole and stays.
    let claim_lost = info.lease.is_some_and(|l| !l.holds());
    if claim_lost {
        report.aborted = Some(
            "the slot's claim was lost (not renewed in time, or taken over by another replica); nothing was committed".into(),
        );
    }
    let all_sources_ok =
        report.sources.iter().all(|s| s.result.is_ok()) && !cancel.is_cancelled() && !claim_lost;
    if all_sources_ok {
        let mut manifest = Manifest {
            format: snapshot::FORMAT_VERSION,
            job: job_name.into(),
            snapshot: id.clone(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            instance: Some(policy.daemon.instance()),
            backupd_version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            finished_at: Utc::now(),
            slot: info.slot,
            tags: info.tags.to_vec(),
            sources: report
                .sources
                .iter()
                .filter_map(|s| s.result.as_ref().ok().map(|e| (s.name.clone(), e.clone())))
                .collect(),
            digest: None,
            signature: None,
            seal: Default::default(),
        };
        snapshot::seal::seal(&mut manifest, signing_key.as_ref());
        commit(targets, &manifest, &mut report).await;
        report.manifest = Some(manifest);
    }
    discard_uncommitted(targets, &report.committed, &uploaded).await;
    if report.backup_ok() {
        tracing::info!(job = job_name, snapshot = %id, "snapshot committed");
        if !cancel.is_cancelled() {
            after_commit(policy, job_name, targets, &mut report).await;
        }
    } else {
        tracing::error!(job = job_name, snapshot = %id, "backup failed");
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// What every source of one run shares.
struct Backup<'a> {
    job_name: &'a str,
    job: &'a JobPolicy,
    id: &'a str,
    recipients: Option<&'a [age::x25519::Recipient]>,
    encoding: Encoding,
    ctx: DumpContext,
    cancel: &'a CancellationToken,
    progress: &'a crate::progress::Progress,
    levels: Levels<'a>,
}

/// What deciding an incremental source's level needs (`level`).
struct Levels<'a> {
    policy: &'a Policy,
    force_full: bool,
    started_at: chrono::DateTime<Utc>,
}

/// The dumps the job's sources stand for (a database source may stand for several, with
/// `databases = [...]` or "all"), as (source, dump name, spec); a source whose list
/// cannot be made is reported failed.
async fn expand_sources(
    job_name: &str,
    job: &JobPolicy,
) -> (Vec<(String, String, source::Expanded)>, Vec<SourceReport>) {
    let mut work = Vec::new();
    let mut reports = Vec::new();
    for (group, spec) in &job.source_specs {
        let (g, sp) = (group.clone(), spec.clone());
        let expanded = tokio::task::spawn_blocking(move || source::expand(&g, &sp))
            .await
            .map_err(SourceFailure::from)
            .and_then(|r| r.map_err(SourceFailure::from));
        match expanded {
            Ok(list) => work.extend(list.into_iter().map(|(n, e)| (group.clone(), n, e))),
            Err(e) => {
                tracing::error!(job = job_name, source = %group, "cannot list what to back up: {e}");
                reports.push(SourceReport {
                    name: group.clone(),
                    kind: spec.kind(),
                    result: Err(e),
                });
            }
        }
    }
    (work, reports)
}

impl Backup<'_> {
    /// Dumps one source through the pipeline to the `live` targets; a target whose upload
    /// failed joins `failed_targets`, the object's key joins `uploaded`.
    async fn store_source(
        &self,
        group: &str,
        name: &str,
        spec: &source::Expanded,
        live: &[Target],
        failed_targets: &mut BTreeMap<String, String>,
        uploaded: &mut Vec<object_store::path::Path>,
    ) -> Result<SourceEntry, SourceFailure> {
        let object = source::object_name(
            name,
            spec,
            self.job.compression.extension(),
            self.recipients.is_some(),
        );
        let key = snapshot::object_key(self.job_name, self.id, &object);
        let source_started = Instant::now();
        let estimate = if self.progress.is_on() {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || source::estimate(&spec))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let level = match spec {
            source::Expanded::Spec(source::SourceSpec::Directory(source::DirectorySpec {
                incremental: Some(inc),
                ..
            })) => self.level(name, inc, live).await,
            _ => level::Level::default(),
        };
        let names: Vec<String> = live.iter().map(|t| t.name.clone()).collect();
        let bars = self.progress.source(name, estimate, &names);
        let result = if self.cancel.is_cancelled() {
            Err(SourceFailure::Cancelled)
        } else if live.is_empty() {
            Err(SourceFailure::NoTarget)
        } else {
            let (spec, mut ctx) = (spec.clone(), self.ctx.clone());
            ctx.base = level.base.clone();
            pipeline::store(
                live,
                &key,
                &self.encoding,
                self.cancel,
                bars.meter.clone(),
                move |w| source::dump(&spec, &ctx, w),
            )
            .await
            .map_err(SourceFailure::Store)
        };
        bars.finish().await;
        let mut stored = result?;
        uploaded.push(key.clone());
        for (target, upload) in live.iter().zip(&stored.uploads) {
            if let Err(e) = upload {
                failed_targets.insert(target.name.clone(), e.to_string());
            }
        }
        let index = match stored.produced.index.take() {
            Some(mut index) => {
                // The member map is known only now that the object is written.
                if !stored.members.is_empty() {
                    index.members = std::mem::take(&mut stored.members);
                    index.member_bytes = pipeline::MEMBER_BYTES as u64;
                }
                let bytes = index.to_json();
                let live: Vec<Target> = live
                    .iter()
                    .filter(|t| !failed_targets.contains_key(&t.name))
                    .cloned()
                    .collect();
                Some(
                    self.store_index(name, bytes, &live, failed_targets, uploaded)
                        .await?,
                )
            }
            None => None,
        };
        let secs = source_started.elapsed().as_secs_f64();
        tracing::info!(
            job = self.job_name,
            source = %name,
            plain_bytes = stored.plain.bytes,
            stored_bytes = stored.stored.bytes,
            seconds = format!("{secs:.1}"),
            mib_per_sec = format!("{:.1}", stored.plain.bytes as f64 / 1048576.0 / secs.max(1e-9)),
            "source stored"
        );
        Ok(SourceEntry {
            kind: spec.kind().into(),
            group: (group != name).then(|| group.to_string()),
            object,
            compression: self.job.compression,
            compression_level: self.encoding.level,
            encryption: match self.recipients {
                Some(rs) => Encryption::Age {
                    recipients: rs.iter().map(ToString::to_string).collect(),
                },
                None => Encryption::None,
            },
            stored: stored.stored,
            plain: stored.plain,
            stats: stored.produced.stats,
            warnings: level
                .warning
                .into_iter()
                .chain(stored.produced.warnings)
                .collect(),
            index,
            base: level.base.as_ref().map(|b| b.snapshot.clone()),
            level: level.base.as_ref().map_or(0, |b| b.level + 1),
        })
    }

    /// Full or incremental, and on which base, for one incremental directory source.
    async fn level(
        &self,
        name: &str,
        spec: &source::directory::incremental::IncrementalSpec,
        live: &[Target],
    ) -> level::Level {
        let policy = self.levels.policy;
        let trust = match crate::snapshot::seal::Trust::new(&policy.signing) {
            Ok(t) => t,
            Err(e) => {
                return level::Level {
                    base: None,
                    warning: Some(format!("this run is a full: [signing]: {e}")),
                };
            }
        };
        let identities = match self.recipients {
            None => Ok(None),
            Some(_) => crate::crypto::restore_identities(None, &policy.encryption)
                .map(|ids| Some(std::sync::Arc::new(ids)))
                .map_err(|e| e.to_string()),
        };
        let ask = level::Ask {
            job: self.job_name,
            source: name,
            spec,
            instance: &policy.daemon.instance(),
            trust: &trust,
            identities,
            force_full: self.levels.force_full,
            now: self.levels.started_at,
        };
        level::decide(ask, live).await
    }

    /// Stores a directory source's index as its second object, encoded like the first.
    async fn store_index(
        &self,
        name: &str,
        bytes: Vec<u8>,
        live: &[Target],
        failed_targets: &mut BTreeMap<String, String>,
        uploaded: &mut Vec<object_store::path::Path>,
    ) -> Result<snapshot::IndexObject, SourceFailure> {
        let object = format!(
            "{name}.index.json{}{}",
            self.job.compression.extension(),
            if self.recipients.is_some() {
                ".age"
            } else {
                ""
            }
        );
        let key = snapshot::object_key(self.job_name, self.id, &object);
        if live.is_empty() {
            return Err(SourceFailure::NoTarget);
        }
        let meter = std::sync::Arc::new(crate::progress::Meter::new(live.len()));
        let stored = pipeline::store(live, &key, &self.encoding, self.cancel, meter, move |w| {
            w.write_all(&bytes)
        })
        .await
        .map_err(SourceFailure::Index)?;
        uploaded.push(key);
        for (target, upload) in live.iter().zip(&stored.uploads) {
            if let Err(e) = upload {
                failed_targets.insert(target.name.clone(), e.to_string());
            }
        }
        Ok(snapshot::IndexObject {
            object,
            stored: stored.stored,
            plain: stored.plain,
        })
    }
}

/// Writes the manifest to every target that received every source.
async fn commit(targets: &[Target], manifest: &Manifest, report: &mut JobReport) {
    for target in targets {
        if report.failed_targets.contains_key(&target.name) {
            continue;
        }
        match snapshot::commit(target, manifest).await {
            Ok(()) => report.committed.push(target.name.clone()),
            Err(e) => {
                report
                    .failed_targets
                    .insert(target.name.clone(), e.to_string());
            }
        }
    }
}

/// Objects on targets without a manifest are garbage: removed now rather than left for a
/// sweep. A crash before this point leaves them uncommitted, which list and restore ignore.
async fn discard_uncommitted(
    targets: &[Target],
    committed: &[String],
    uploaded: &[object_store::path::Path],
) {
    for target in targets {
        if committed.contains(&target.name) {
            continue;
        }
        if target.write_only {
            if !uploaded.is_empty() {
                tracing::warn!(target = %target.name, "write_only: the failed run's objects stay until `backupd prune` on a host with delete rights sweeps them");
            }
            continue;
        }
        for key in uploaded {
            match target.store.delete(key).await {
                Ok(()) => {}
                Err(object_store::Error::PermissionDenied { .. }) => {
                    tracing::warn!(target = %target.name, "not permitted to delete the failed run's objects (write-only credentials): `backupd prune` on a host with delete rights sweeps them");
                    break;
                }
                Err(e) => {
                    tracing::warn!(target = %target.name, %key, "could not delete an uncommitted object: {e}")
                }
            }
        }
    }
}

/// Verification (when `verify.after_backup`) and then retention, on every target the
/// snapshot was committed to. Retention never runs after a failed verification.
async fn after_commit(policy: &Policy, job_name: &str, targets: &[Target], report: &mut JobReport) {
    let job = &policy.jobs[job_name];
    let Some(manifest) = report.manifest.clone() else {
        return;
    };
    // A spooled copy is verified and pruned once it has reached its real target.
    let committed: Vec<&Target> = targets
        .iter()
        .filter(|t| report.committed.contains(&t.name) && !t.spooled)
        .collect();
    if job.verify.after_backup {
        let encrypted = manifest
            .sources
            .values()
            .any(|e| matches!(e.encryption, Encryption::Age { .. }));
        let identities = if encrypted {
            match crate::crypto::restore_identities(None, &policy.encryption) {
                Ok(ids) => Some(std::sync::Arc::new(ids)),
                Err(e) => {
                    report
                        .after_errors
                        .push(format!("verification after backup could not start: {e}"));
                    return;
                }
            }
        } else {
            None
        };
        let trust = match crate::snapshot::seal::Trust::new(&policy.signing) {
            Ok(t) => t,
            Err(e) => {
                report.after_errors.push(format!(
                    "verification after backup could not start: [signing]: {e}"
                ));
                return;
            }
        };
        let verifier = crate::verify::Verifier {
            policy,
            identities,
            trust,
            progress: crate::progress::Progress::off(),
        };
        for target in &committed {
            report
                .verifications
                .push(verifier.verify(target, &manifest).await);
        }
        if report.verifications.iter().any(|v| !v.ok) {
            report
                .after_errors
                .push("retention skipped: the new snapshot failed verification".into());
            return;
        }
    }
    for target in committed {
        match crate::prune::prune(
            policy,
            job_name,
            target,
            &policy.daemon.instance(),
            false,
            Utc::now(),
        )
        .await
        {
            Ok(outcome) => {
                report.after_errors.extend(outcome.errors.iter().cloned());
                if let Some(n) = &outcome.not_permitted {
                    tracing::warn!(job = job_name, target = %target.name, "{n}");
                    report.not_permitted.push(n.clone());
                }
                report.pruned.push(outcome);
            }
            Err(e) => report
                .after_errors
                .push(format!("retention on {}: {e}", target.name)),
        }
    }
}
