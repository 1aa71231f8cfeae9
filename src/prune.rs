//! Applying retention to one job on one target: list the committed snapshots and their
//! verification state, plan with `retention::plan`, delete what the plan says (manifest
//! first), and sweep crash leftovers older than `orphan_grace`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::policy::Policy;
use crate::retention::{self, Decision, SnapshotInfo};
use crate::snapshot::seal::{Judgment, Trust};
use crate::snapshot::{self, SnapshotError, maintenance};
use crate::target::Target;

/// What prune did (or, with `dry_run`, would do) for one job on one target.
#[derive(Debug, Clone, Serialize)]
pub struct PruneOutcome {
    pub job: String,
    pub target: String,
    /// Whose snapshots the plan covered.
    pub instance: String,
    pub dry_run: bool,
    /// `None` when the job has no retention rules: every snapshot is kept.
    pub decisions: Option<Vec<Decision>>,
    pub deleted: Vec<String>,
    /// Snapshot directories without a manifest, older than the grace period.
    pub orphans: Vec<String>,
    /// Snapshots `[signing]` refuses (`id: why`): neither counted by retention nor deleted,
    /// so a planted snapshot can neither push real ones out nor be mistaken for one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<String>,
    /// Deleting is not permitted on this target (`write_only`, or the store answered
    /// 403): what was left for `prune` on a host with delete rights. Not an error of a
    /// backup; an error of `prune` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_permitted: Option<String>,
    /// WAL files older than the oldest kept base backup of their source, deleted (or due,
    /// with `dry_run`): `<source>/<file>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wal_deleted: Vec<String>,
    pub errors: Vec<String>,
}

/// Applies the job's retention to `instance`'s snapshots of `job` on `target` (another
/// instance's are never counted nor deleted; an operator names one to prune it).
pub async fn prune(
    policy: &Policy,
    job: &str,
    target: &Target,
    instance: &str,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<PruneOutcome, SnapshotError> {
    let job_policy = &policy.jobs[job];
    let mut outcome = PruneOutcome {
        job: job.into(),
        target: target.name.clone(),
        instance: instance.into(),
        dry_run,
        decisions: None,
        deleted: Vec::new(),
        orphans: Vec::new(),
        left_alone: Vec::new(),
        not_permitted: None,
        wal_deleted: Vec::new(),
        errors: Vec::new(),
    };
    // Ids just listed with a manifest: the sweep need not ask the store about each again.
    let mut committed = std::collections::BTreeSet::new();
    let archived: Vec<&str> = job_policy
        .base_backup_sources()
        .map(|(n, _)| n.as_str())
        .collect();
    let mut wal_kept: Vec<snapshot::Manifest> = Vec::new();
    if let Some(rules) = job_policy.retention_for(&target.name) {
        let trust = Trust::new(&policy.signing).map_err(|e| SnapshotError::Store {
            target: target.name.clone(),
            message: format!("[signing]: {e}"),
        })?;
        let mut listing = snapshot::listing::scan(target, Some(job)).await?;
        let mut manifests = std::mem::take(&mut listing.manifests);
        committed.extend(manifests.iter().map(|m| m.snapshot.clone()));
        manifests.retain(|m| m.instance() == instance);
        manifests.retain(|m| match trust.judge(m) {
            Judgment::Refused(why) => {
                tracing::warn!(job, snapshot = %m.snapshot, "left alone by retention: {why}");
                outcome.left_alone.push(format!("{}: {why}", m.snapshot));
                false
            }
            _ => true,
        });
        let mut infos = Vec::new();
        for m in &manifests {
            let verified = listing
                .latest_record(target, job, &m.snapshot)
                .await
                .is_some_and(|r| r.ok);
            infos.push(SnapshotInfo {
                id: m.snapshot.clone(),
                time: m.started_at,
                tags: m.tags.clone(),
                verified,
                bases: m.sources.values().filter_map(|e| e.base.clone()).collect(),
            });
        }
        let decisions = retention::plan(&infos, rules, now, job_policy.tz());
        if !dry_run {
            let due = decisions.iter().filter(|d| !d.keep).count();
            for d in decisions.iter().filter(|d| !d.keep) {
                match maintenance::delete(target, job, &d.snapshot).await {
                    Ok(()) => {
                        tracing::info!(job, target = %target.name, snapshot = %d.snapshot, "deleted by retention");
                        outcome.deleted.push(d.snapshot.clone());
                    }
                    Err(SnapshotError::NotPermitted { .. }) => {
                        outcome.not_permitted = Some(format!(
                            "not permitted to delete on target {} (write-only credentials): {} snapshot(s) due for deletion by retention were kept; run `backupd prune` from a host with delete rights",
                            target.name,
                            due - outcome.deleted.len()
                        ));
                        break;
                    }
                    Err(e) => outcome.errors.push(format!("deleting {}: {e}", d.snapshot)),
                }
            }
        }
        // The WAL of what stays: a failed delete keeps its snapshot, and its WAL.
        wal_kept = manifests
            .into_iter()
            .filter(|m| !outcome.deleted.contains(&m.snapshot))
            .filter(|m| !dry_run || decisions.iter().any(|d| d.keep && d.snapshot == m.snapshot))
            .collect();
        outcome.decisions = Some(decisions);
    }
    if outcome.not_permitted.is_none() && !target.write_only {
        let kept: Vec<&snapshot::Manifest> = wal_kept.iter().collect();
        let scope = WalScope {
            instance,
            kept: &kept,
            archived: &archived,
            grace: policy.daemon.orphan_grace,
            dry_run,
        };
        prune_wal(target, job, &scope, &mut outcome).await;
    }
    if !dry_run
        && !target.write_only
        && policy.jobs[job].coordination == crate::policy::Coordination::Lease
        && let Err(e) = crate::claim::expire(target, instance, job, now).await
    {
        outcome.errors.push(format!("expiring slot claims: {e}"));
    }
    for gone in &outcome.deleted {
        committed.remove(gone);
    }
    match maintenance::sweep(
        target,
        job,
        policy.daemon.orphan_grace,
        now,
        dry_run,
        &committed,
    )
    .await
    {
        Ok(ids) => outcome.orphans = ids,
        Err(SnapshotError::NotPermitted { .. }) => {
            outcome.not_permitted.get_or_insert_with(|| {
                format!(
                    "not permitted to delete on target {} (write-only credentials): leftovers of failed runs were not swept; run `backupd prune` from a host with delete rights",
                    target.name
                )
            });
        }
        Err(e) => outcome.errors.push(format!("sweeping leftovers: {e}")),
    }
    Ok(outcome)
}

/// What WAL retention looks at on one target.
struct WalScope<'a> {
    instance: &'a str,
    /// The snapshots retention keeps (none without rules: then no WAL is deleted).
    kept: &'a [&'a snapshot::Manifest],
    /// The job's base backup sources in the policy (their archives are swept even before
    /// a base backup exists).
    archived: &'a [&'a str],
    grace: std::time::Duration,
    dry_run: bool,
}

/// Deletes each base backup source's WAL that no kept base backup needs: the files
/// numbered before the oldest kept one's first segment. A source with no kept base
/// backup on this target keeps all its WAL (nothing here says what it is for). Staging
/// files of killed pushes are swept in every archive.
async fn prune_wal(target: &Target, job: &str, scope: &WalScope<'_>, outcome: &mut PruneOutcome) {
    use crate::wal::{self, WalName};
    let (instance, dry_run) = (scope.instance, scope.dry_run);
    // source → (oldest first segment, segment size) among the kept base backups.
    let mut oldest: std::collections::BTreeMap<&str, Option<(u64, u64)>> =
        scope.archived.iter().map(|s| (*s, None)).collect();
    for m in scope.kept {
        for (name, e) in &m.sources {
            if let snapshot::SourceStats::Basebackup {
                start_wal,
                wal_segment_bytes,
                ..
            } = &e.stats
                && let Some(n) = WalName::parse(start_wal).and_then(|w| w.segno(*wal_segment_bytes))
            {
                let slot = oldest.entry(name.as_str()).or_default();
                let from = slot.map_or(n, |(o, _)| o.min(n));
                *slot = Some((from, *wal_segment_bytes));
            }
        }
    }
    for (source, keep) in oldest {
        let archive = wal::Archive {
            job: job.into(),
            instance: instance.into(),
            source: source.into(),
        };
        match wal::sweep_staging(target, &archive, scope.grace, dry_run) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(job, target = %target.name, source, files = n, "removed staging files of killed WAL pushes")
            }
            Err(e) => outcome
                .errors
                .push(format!("sweeping WAL of {source}: {e}")),
        }
        let Some((keep_from, segment_bytes)) = keep else {
            continue;
        };
        let listed = match wal::list(target, &archive).await {
            Ok(l) => l,
            Err(e) => {
                outcome.errors.push(format!("listing WAL of {source}: {e}"));
                continue;
            }
        };
        let expired = wal::expired(&listed.files, keep_from, segment_bytes);
        if expired.is_empty() {
            continue;
        }
        if !dry_run {
            if let Err(e) = wal::delete(target, &archive, &listed, &expired).await {
                outcome
                    .errors
                    .push(format!("deleting WAL of {source}: {e}"));
                continue;
            }
            tracing::info!(job, target = %target.name, source, files = expired.len(), "deleted WAL older than the oldest kept base backup");
        }
        outcome
            .wal_deleted
            .extend(expired.into_iter().map(|f| format!("{source}/{f}")));
    }
}
