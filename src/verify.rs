//! Verification by test-restore: for each object of a snapshot, stream it, check the
//! stored sha256, decrypt, decompress, check the plain sha256, then restore it the way an
//! operator would (unpack, open, load into a scratch database) and compare with what the
//! manifest recorded. The result is written beside the manifest as
//! `verify/<utc-time>.json`; retention treats the newest verified snapshot as untouchable.

mod checks;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::crypto::Identities;
use crate::policy::{Policy, SourceSpec};
use crate::snapshot::seal::{Judgment, Trust};
use crate::snapshot::{Manifest, SourceEntry};
use crate::target::Target;

pub use checks::Check;

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
) -> anyhow::Result<Vec<VerifyRecord>> {
    let mut trust = Trust::new(&policy.signing).map_err(|e| anyhow::anyhow!("[signing]: {e}"))?;
    trust.allow_unsigned = allow_unsigned;
    let mut identities = None;
    let mut records = Vec::new();
    let me = policy.daemon.instance();
    for target in targets {
        let all = crate::snapshot::list(target, Some(job)).await?;
        // `latest` and `all` are this instance's; an id names any instance's snapshot.
        let own = || {
            all.iter()
                .filter(|m| m.instance() == me)
                .cloned()
                .collect::<Vec<_>>()
        };
        let chosen: Vec<_> = match which {
            "latest" => crate::snapshot::newest_accepted(own(), &trust)
                .into_iter()
                .collect(),
            "all" => own(),
            prefix => all
                .iter()
                .filter(|m| m.snapshot.starts_with(prefix))
                .cloned()
                .collect(),
        };
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

/// The result of verifying one snapshot on one target, as stored in `verify/…json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub format: u32,
    pub job: String,
    pub snapshot: String,
    pub target: String,
    pub host: String,
    pub backupd_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    /// Whether the manifest's seal is trusted (`signing`); absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticity: Option<Check>,
    pub sources: BTreeMap<String, SourceResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceResult {
    pub ok: bool,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VerifyRecord {
    /// One line per failed check, naming job, snapshot, source and check.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = self.authenticity.as_ref().filter(|c| !c.ok) {
            out.push(format!(
                "{}/{} on {}: manifest: {}",
                self.job, self.snapshot, self.target, c.detail
            ));
        }
        for (source, r) in &self.sources {
            for c in r.checks.iter().filter(|c| !c.ok) {
                out.push(format!(
                    "{}/{} on {}: source {source}: check {:?} failed: {}",
                    self.job, self.snapshot, self.target, c.name, c.detail
                ));
            }
            if let Some(e) = &r.error {
                out.push(format!(
                    "{}/{} on {}: source {source}: {e}",
                    self.job, self.snapshot, self.target
                ));
            }
        }
        out
    }
}

fn record_prefix(job: &str, id: &str) -> ObjectPath {
    ObjectPath::from(format!("{job}/{id}/verify"))
}

/// The newest verification record of a snapshot on a target, if any.
pub async fn latest_record(target: &Target, job: &str, id: &str) -> Option<VerifyRecord> {
    let keys: Vec<ObjectPath> = target
        .store
        .list(Some(&record_prefix(job, id)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .ok()?;
    // Records are named by the time they were written; a name that is no time, or lies in
    // the future, is someone else's (a forged "9999-…" must not win by its name).
    let latest_allowed = Utc::now() + chrono::Duration::minutes(10);
    let mut named: Vec<(DateTime<Utc>, ObjectPath)> = keys
        .into_iter()
        .filter_map(|k| {
            let stamp = k.filename()?.strip_suffix(".json")?;
            let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H-%M-%S%.3fZ").ok()?;
            Some((t.and_utc(), k))
        })
        .filter(|(t, _)| *t <= latest_allowed)
        .collect();
    named.sort_by_key(|n| std::cmp::Reverse(n.0));
    for (_, key) in named {
        let Ok(crate::target::Small::Found(bytes)) = target.get_small(&key, MAX_RECORD_BYTES).await
        else {
            continue;
        };
        match serde_json::from_slice::<VerifyRecord>(&bytes) {
            // A record counts only for the snapshot it lies beside.
            Ok(r) if r.job == job && r.snapshot == id => return Some(r),
            _ => {
                tracing::warn!(key = %key, "ignored a verification record that is not this snapshot's or does not parse")
            }
        }
    }
    None
}

/// A record lists each check of each source; far below this.
const MAX_RECORD_BYTES: u64 = 4 << 20;

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
        let key = ObjectPath::from(format!(
            "{}/{}.json",
            record_prefix(&manifest.job, &manifest.snapshot),
            started_at.format("%Y-%m-%dT%H-%M-%S%.3fZ")
        ));
        let body = serde_json::to_vec_pretty(&record).expect("record serializes");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        if let Err(e) = target
            .store
            .put_opts(&key, PutPayload::from(body), opts)
            .await
        {
            tracing::error!(target = %target.name, "cannot store the verification result {key}: {e}");
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
        let entry = entry.clone();
        let joined = tokio::task::spawn_blocking(move || {
            checks::run(input, &entry, ids.as_deref(), server, &scratch)
        })
        .await;
        let checks = match joined {
            Ok(checks) => checks,
            Err(e) => vec![Check::fail(
                "verification",
                format!("the check thread failed: {e}"),
            )],
        };
        SourceResult {
            ok: checks.iter().all(|c| c.ok),
            checks,
            error: None,
        }
    }

    /// Where a database source is test-restored: the verify URL of the job, else the
    /// source's own server, with the source's credentials.
    fn server_for(&self, job: &str, name: &str, entry: &SourceEntry) -> Option<checks::Server> {
        let job = self.policy.jobs.get(job)?;
        let group = entry.group.as_deref().unwrap_or(name);
        let spec = job.source_specs.get(group)?;
        let (url, password_file, env_var, checks, override_url) = match spec {
            SourceSpec::Postgres(p) => (
                &p.url,
                &p.password_file,
                "PGPASSWORD",
                &p.checks,
                &job.verify.postgres_url,
            ),
            SourceSpec::Mysql(m) => (
                &m.url,
                &m.password_file,
                "MYSQL_PWD",
                &m.checks,
                &job.verify.mysql_url,
            ),
            _ => return None,
        };
        Some(checks::Server {
            url: override_url.clone().unwrap_or_else(|| url.clone()),
            password_file: password_file.clone(),
            password_env: env_var,
            checks: checks.clone(),
        })
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
            super::checks::to_scratch(&mut reader, s.path(), "restore.sqlite")
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
