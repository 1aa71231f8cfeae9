//! Verification by test-restore: for each object of a snapshot, stream it, check the
//! stored sha256, decrypt, decompress, check the plain sha256, then restore it the way an
//! operator would (unpack, open, load into a scratch database) and compare with what the
//! manifest recorded. The result is written beside the manifest as
//! `verify/<utc-time>.json`; retention treats the newest verified snapshot as untouchable.

mod checks;
mod replay;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use crate::crypto::Identities;
use crate::policy::Policy;
use crate::snapshot::seal::{Judgment, Trust};
use crate::snapshot::{Manifest, SourceEntry};
use crate::target::Target;

pub use crate::snapshot::record::{Check, SourceResult, VerifyRecord, latest_record};

/// Why `verify_snapshots` could not start verifying (a failed check is a record, not this).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("[signing]: {0}")]
    Signing(crate::snapshot::seal::SealError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Select(#[from] crate::snapshot::SelectError),
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
}

/// Verifies the `which` snapshots (`latest`, `all`, or an id prefix) of `job` on each of
/// `targets`. The identity (`identity`, else the policy's) is loaded only when an
/// encrypted snapshot is met.
pub async fn verify_snapshots(
    policy: &Policy,
    job: &str,
    targets: &[Target],
    which: &str,
    identity: Option<&std::path::Path>,
    allow_unsigned: bool,
    progress: &crate::progress::Progress,
) -> Result<Vec<VerifyRecord>, VerifyError> {
    let mut trust = Trust::new(&policy.signing).map_err(VerifyError::Signing)?;
    trust.allow_unsigned = allow_unsigned;
    let mut identities = None;
    let mut records = Vec::new();
    let me = policy.daemon.instance();
    for target in targets {
        let all = crate::snapshot::list(target, Some(job)).await?;
        // `latest` and `all` are this instance's; an id names any instance's snapshot.
        let chosen =
            crate::snapshot::select(all, &crate::snapshot::Selector::parse(which), &me, &trust)?;
        for manifest in chosen {
            let encrypted = manifest
                .sources
                .values()
                .any(|e| matches!(e.encryption, crate::snapshot::Encryption::Age { .. }));
            if encrypted && identities.is_none() {
                identities = Some(Arc::new(crate::crypto::restore_identities(
                    identity,
                    &policy.encryption,
                )?));
            }
            let verifier = Verifier {
                policy,
                identities: identities.clone(),
                trust: trust.clone(),
                progress: progress.clone(),
            };
            records.push(verifier.verify(target, &manifest).await);
        }
    }
    Ok(records)
}

pub use crate::policy::VerifyPolicy;

/// Everything a verification needs besides the snapshot itself.
pub struct Verifier<'a> {
    pub policy: &'a Policy,
    /// `None` when no source is encrypted.
    pub identities: Option<Arc<Identities>>,
    /// Whose snapshots count as authentic; a refused one fails without being restored.
    pub trust: Trust,
    /// Bars on a terminal (`verify`), off elsewhere.
    pub progress: crate::progress::Progress,
}

impl Verifier<'_> {
    /// Verifies every object of `manifest` on `target`, stores the record there and
    /// returns it. Scratch files and databases are removed whatever happens.
    pub async fn verify(&self, target: &Target, manifest: &Manifest) -> VerifyRecord {
        let started_at = Utc::now();
        tracing::info!(job = %manifest.job, snapshot = %manifest.snapshot, target = %target.name, "verification started");
        let judgment = self.trust.judge(manifest);
        let authenticity = match &judgment {
            Judgment::Trusted => Check::pass("authenticity", "signed by a trusted key"),
            Judgment::Accepted(why) => Check::pass("authenticity", why.clone()),
            Judgment::Refused(why) => Check::fail("authenticity", why.clone()),
        };
        let mut sources = BTreeMap::new();
        for (name, entry) in &manifest.sources {
            if !authenticity.ok {
                // An attacker's archive is not worth decrypting: the snapshot fails as it is.
                break;
            }
            let result = self.verify_source(target, manifest, name, entry).await;
            if !result.ok {
                tracing::error!(job = %manifest.job, snapshot = %manifest.snapshot, source = %name, "verification failed");
            }
            sources.insert(name.clone(), result);
        }
        let record = VerifyRecord {
            format: 1,
            job: manifest.job.clone(),
            snapshot: manifest.snapshot.clone(),
            target: target.name.clone(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            backupd_version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            finished_at: Utc::now(),
            ok: authenticity.ok && sources.values().all(|s| s.ok),
            authenticity: Some(authenticity),
            sources,
        };
        if let Err(e) = crate::snapshot::record::store(target, &record).await {
            tracing::error!(target = %target.name, "cannot store the verification result: {e}");
        }
        record
    }

    async fn verify_source(
        &self,
        target: &Target,
        manifest: &Manifest,
        name: &str,
        entry: &SourceEntry,
    ) -> SourceResult {
        if let crate::snapshot::SourceStats::Basebackup { .. } = entry.stats {
            let checks = self.replay_checks(target, manifest, name, entry).await;
            return SourceResult {
                ok: checks.iter().all(|c| c.ok),
                checks,
                error: None,
            };
        }
        if !entry.is_full() {
            let mut checks = self.chain_checks(target, manifest, name, entry).await;
            checks.push(self.index_check(target, manifest, entry).await);
            return SourceResult {
                ok: checks.iter().all(|c| c.ok),
                checks,
                error: None,
            };
        }
        let key = crate::snapshot::object_key(&manifest.job, &manifest.snapshot, &entry.object);
        let input = match target.reader(&key).await {
            Ok(s) => self.progress.reader(name, entry.stored.bytes, s),
            Err(e) => {
                return SourceResult {
                    ok: false,
                    checks: vec![Check::fail("object present", format!("{key}: {e}"))],
                    error: None,
                };
            }
        };
        let server = self.server_for(&manifest.job, name, entry);
        let scratch = self.policy.daemon.state_dir.join("tmp");
        let ids = self.identities.clone();
        let owned = entry.clone();
        let joined = tokio::task::spawn_blocking(move || {
            checks::run(input, &owned, ids.as_deref(), server, &scratch)
        })
        .await;
        let mut checks = match joined {
            Ok(checks) => checks,
            Err(e) => vec![Check::fail(
                "verification",
                format!("the check thread failed: {e}"),
            )],
        };
        if entry.index.is_some() {
            checks.push(self.index_check(target, manifest, entry).await);
        }
        SourceResult {
            ok: checks.iter().all(|c| c.ok),
            checks,
            error: None,
        }
    }

    /// A directory source's index: decrypts, matches both sha256 sums, passes the index
    /// rules, and lists as many entries as the archive holds.
    async fn index_check(
        &self,
        target: &Target,
        manifest: &Manifest,
        entry: &SourceEntry,
    ) -> Check {
        match crate::browse::index_of(target, manifest, entry, self.identities.clone()).await {
            Ok((index, _)) => {
                let listed = index.tree().count() as u64;
                let archived = match entry.stats {
                    crate::snapshot::SourceStats::Tree {
                        files,
                        dirs,
                        symlinks,
                        ..
                    } => files + dirs + symlinks,
                    _ => listed,
                };
                if listed == archived {
                    Check::pass("index", format!("{listed} entries, sha256 match"))
                } else {
                    Check::fail(
                        "index",
                        format!("lists {listed} entries, the archive holds {archived}"),
                    )
                }
            }
            Err(e) => Check::fail("index", e.to_string()),
        }
    }

    /// An incremental directory object: its whole chain (found by the same rules as a
    /// restore) is test-restored into scratch space, every object's checksums checked, and
    /// the tree it gives compared with the counts the manifest recorded for this point.
    async fn chain_checks(
        &self,
        target: &Target,
        manifest: &Manifest,
        name: &str,
        entry: &SourceEntry,
    ) -> Vec<Check> {
        use crate::restore::chain;
        let links = match chain::resolve(target, manifest, name, entry, &self.trust).await {
            Ok(links) => links,
            Err(e) => return vec![Check::fail("chain", e.to_string())],
        };
        let scratch = match scratch_dir(&self.policy.daemon.state_dir.join("tmp")) {
            Ok(s) => s,
            Err(e) => return vec![Check::fail("chain", format!("scratch space: {e}"))],
        };
        let how = crate::source::directory::Unpack {
            overwrite: false,
            same_owner: false,
            data: crate::source::directory::Data::Sparse,
        };
        let dest = scratch.path().join("tree");
        let r = match chain::restore(target, &links, self.identities.clone(), dest, how, None).await
        {
            Ok(r) => r,
            Err(e) => return vec![Check::fail("chain", e.to_string())],
        };
        let ids: Vec<&str> = links.iter().map(|l| l.manifest.snapshot.as_str()).collect();
        let mut checks = vec![Check::pass(
            "chain",
            format!(
                "{} objects restore in order, checksums match: {}",
                links.len(),
                ids.join(" → ")
            ),
        )];
        if let crate::snapshot::SourceStats::Tree {
            files,
            dirs,
            symlinks,
            file_bytes,
            ..
        } = entry.stats
        {
            checks.extend(crate::source::directory::count_checks(
                [files, dirs, symlinks, file_bytes],
                &r,
            ));
        }
        checks
    }

    /// Where a database source is test-restored: the verify URL of the job, else the
    /// source's own server, with the source's credentials.
    fn server_for(
        &self,
        job: &str,
        name: &str,
        entry: &SourceEntry,
    ) -> Option<crate::source::scratch_db::Server> {
        let job = self.policy.jobs.get(job)?;
        let group = entry.group.as_deref().unwrap_or(name);
        let spec = job.source_specs.get(group)?;
        let override_url = match spec.kind() {
            "postgres" => job.verify.postgres_url.as_deref(),
            "mysql" => job.verify.mysql_url.as_deref(),
            _ => None,
        };
        spec.scratch_server(override_url)
    }
}

/// Scratch space for a verification: a private directory removed on drop.
pub(crate) fn scratch_dir(base: &std::path::Path) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)?;
    // Decrypted data lands here: 0700 whatever the umask or the tempfile crate's default.
    let dir = tempfile::Builder::new()
        .prefix("verify-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(base)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// A decrypted database copy is never readable by another local user.
    #[test]
    fn scratch_space_is_private_whatever_the_umask() {
        let base = tempfile::tempdir().unwrap();
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0));
        let scratch = super::scratch_dir(&base.path().join("tmp"));
        let file = scratch.as_ref().map(|s| {
            let mut reader: &[u8] = b"secret rows";
            crate::source::to_scratch(&mut reader, s.path(), "restore.sqlite")
        });
        rustix::process::umask(old);
        let file = file.unwrap().unwrap();
        let scratch = scratch.unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(scratch.path()), 0o700);
        assert_eq!(mode(&base.path().join("tmp")), 0o700);
        assert_eq!(mode(&file), 0o600);
    }
}
