//! The spool: where a snapshot waits, already compressed and encrypted, for a target that
//! was down when it was taken (`daemon.spool_dir`, opt-in). A backup that finds a remote
//! target unreachable writes that target's copy to `spool_dir/<target>/` instead, with the
//! same layout and commit protocol as any target; `deliver` later copies each spooled
//! snapshot to its real target (objects first, the manifest last, create-if-absent) and
//! removes it from the spool. The daemon retries delivery with backoff, `run-now` tries at
//! start; both survive restarts because the spool is just committed snapshots on disk.
//! Beyond `spool_max_bytes` the oldest spooled snapshots are dropped, loudly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::policy::Policy;
use crate::snapshot;
use crate::target::{self, Target};

/// Why a target is not reachable now, or why a spooled snapshot was not delivered (it
/// stays in the spool for the next try).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(transparent)]
    Target(#[from] target::TargetError),
    /// The store gave no answer; the text is `target::explain`'s.
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("its manifest vanished from the spool")]
    ManifestGone,
    #[error("the spool is not local")]
    NotLocal,
    #[error("listing the spool: {0}")]
    List(object_store::Error),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Upload(#[from] crate::pipeline::UploadError),
}

/// Spooled snapshots dropped by `spool_max_bytes` since the process started.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One spooled snapshot (`status` shows these as pending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub target: String,
    pub job: String,
    pub snapshot: String,
    pub bytes: u64,
}

pub fn dir_for(spool_dir: &Path, target: &str) -> PathBuf {
    spool_dir.join(target)
}

/// The spool stand-in for `name`: a local target under the spool with the same name.
pub fn open(spool_dir: &Path, name: &str) -> Result<Target, target::TargetError> {
    let dir = dir_for(spool_dir, name);
    let url = url::Url::from_directory_path(&dir)
        .map(String::from)
        .unwrap_or_else(|_| format!("file://{}", dir.display()));
    let mut t = target::open(name, &url)?;
    t.display_url = format!("spool for {name} ({})", dir.display());
    t.spooled = true;
    Ok(t)
}

/// Is the remote target reachable right now? One quick request, no retries: a backup
/// should not wait minutes on a target that is down when the spool can take its copy.
/// Only "no answer" counts as down: a server that answers with an error (credentials,
/// missing bucket) is a mistake to report, not to spool around.
pub async fn reachable(policy: &Policy, name: &str) -> Result<(), SpoolError> {
    let mut quick = policy.targets[name].clone();
    quick.max_retries = 0;
    quick.retry_timeout_secs = 10;
    quick.connect_timeout_secs = quick.connect_timeout_secs.min(5);
    let t = target::open_spec(name, &quick)?;
    match t
        .store
        .head(&object_store::path::Path::from(".backupd-reachable"))
        .await
    {
        Err(e) if target::is_unreachable(&e) => {
            Err(SpoolError::Unreachable(target::explain(&t, &e)))
        }
        _ => Ok(()),
    }
}

/// Every spooled snapshot, oldest first.
pub async fn pending(policy: &Policy) -> Vec<Pending> {
    let Some(spool_dir) = &policy.daemon.spool_dir else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let Ok(read) = std::fs::read_dir(spool_dir) else {
        return out;
    };
    for e in read.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(t) = open(spool_dir, &name) else {
            continue;
        };
        if let Ok(list) = snapshot::list(&t, None).await {
            for m in list {
                out.push(Pending {
                    target: name.clone(),
                    job: m.job.clone(),
                    snapshot: m.snapshot.clone(),
                    bytes: m.stored_bytes(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
    out
}

/// Drops the oldest spooled snapshots while the spool holds more than `spool_max_bytes`.
/// Returns what was dropped (each is an error for the operator: that copy is lost).
pub async fn enforce_limit(policy: &Policy) -> Vec<Pending> {
    let Some(spool_dir) = &policy.daemon.spool_dir else {
        return Vec::new();
    };
    let mut all = pending(policy).await;
    let mut total: u64 = all.iter().map(|p| p.bytes).sum();
    let mut dropped = Vec::new();
    while total > policy.daemon.spool_max_bytes && !all.is_empty() {
        let oldest = all.remove(0);
        if let Ok(t) = open(spool_dir, &oldest.target) {
            let _ = snapshot::maintenance::delete(&t, &oldest.job, &oldest.snapshot).await;
        }
        tracing::error!(
            target = %oldest.target,
            job = %oldest.job,
            snapshot = %oldest.snapshot,
            "spool over spool_max_bytes = {}: dropped the oldest spooled snapshot; it never reached its target",
            policy.daemon.spool_max_bytes
        );
        total -= oldest.bytes;
        DROPPED.fetch_add(1, Ordering::Relaxed);
        dropped.push(oldest);
    }
    dropped
}

/// Delivers every spooled snapshot whose target is reachable. Returns (delivered, errors).
pub async fn deliver(policy: &Policy) -> (Vec<Pending>, Vec<String>) {
    let Some(spool_dir) = &policy.daemon.spool_dir else {
        return (Vec::new(), Vec::new());
    };
    let mut delivered = Vec::new();
    let mut errors = Vec::new();
    let mut down: Vec<String> = Vec::new();
    for p in pending(policy).await {
        if down.contains(&p.target) {
            continue;
        }
        if !policy.targets.contains_key(&p.target) {
            errors.push(format!(
                "spooled snapshot {}/{} is for target {}, which is no longer in the policy; it stays in {}",
                p.job,
                p.snapshot,
                p.target,
                dir_for(spool_dir, &p.target).display()
            ));
            down.push(p.target.clone());
            continue;
        }
        if let Err(e) = reachable(policy, &p.target).await {
            errors.push(format!("target {} still unreachable: {e}", p.target));
            down.push(p.target.clone());
            continue;
        }
        match deliver_one(policy, spool_dir, &p).await {
            Ok(()) => {
                tracing::info!(target = %p.target, job = %p.job, snapshot = %p.snapshot, "spooled snapshot delivered");
                delivered.push(p);
            }
            Err(e) => {
                errors.push(format!(
                    "delivering {}/{} to {}: {e}",
                    p.job, p.snapshot, p.target
                ));
                down.push(p.target.clone());
            }
        }
    }
    (delivered, errors)
}

async fn deliver_one(policy: &Policy, spool_dir: &Path, p: &Pending) -> Result<(), SpoolError> {
    let spool = open(spool_dir, &p.target)?;
    let real = policy.open_target(&p.target)?;
    let manifest = snapshot::read_manifest(&spool, &p.job, &p.snapshot)
        .await?
        .ok_or(SpoolError::ManifestGone)?;
    let root = spool.local_root.clone().ok_or(SpoolError::NotLocal)?;
    // Everything but the manifest (objects, verification records), then the manifest.
    let prefix = object_store::path::Path::from(format!("{}/{}", p.job, p.snapshot));
    let keys: Vec<object_store::path::Path> = spool
        .store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(SpoolError::List)?;
    let manifest_key = snapshot::manifest_key(&p.job, &p.snapshot);
    for key in keys.iter().filter(|k| **k != manifest_key) {
        copy_file(&real, key, &root.join(key.as_ref())).await?;
    }
    match snapshot::commit(&real, &manifest).await {
        Ok(()) => {}
        // Delivered before, and the spool copy survived a crash: nothing to do.
        Err(snapshot::SnapshotError::AlreadyCommitted { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(snapshot::maintenance::delete(&spool, &p.job, &p.snapshot).await?)
}

async fn copy_file(
    to: &Target,
    key: &object_store::path::Path,
    from: &Path,
) -> Result<(), SpoolError> {
    let read_err = |source| SpoolError::Read {
        path: from.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(from).await.map_err(read_err)?;
    let mut w = crate::pipeline::PartWriter::start(to, key).await?;
    loop {
        let mut buf = vec![0u8; 1 << 20];
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).await.map_err(read_err)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        if let Err(e) = w.write(bytes::Bytes::from(buf)).await {
            w.abort().await;
            return Err(e.into());
        }
    }
    Ok(w.finish().await?)
}

/// The daemon's delivery loop: tries at start, then every `spool_retry_secs`, the delay
/// doubling while a target stays down (up to 60 times) and resetting on progress. Follows policy
/// reloads through `policy`.
pub async fn delivery_loop(
    mut policy: tokio::sync::watch::Receiver<std::sync::Arc<Policy>>,
    on_change: impl Fn(Vec<Pending>) + Send + 'static,
) {
    let mut delay = Duration::ZERO;
    loop {
        let current = policy.borrow_and_update().clone();
        let base = Duration::from_secs(current.daemon.spool_retry_secs.max(1));
        let (delivered, errors) = deliver(&current).await;
        for e in &errors {
            tracing::warn!("spool: {e}");
        }
        on_change(pending(&current).await);
        delay = if errors.is_empty() || !delivered.is_empty() {
            base
        } else {
            (delay * 2).clamp(base, base * 60)
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            changed = policy.changed() => if changed.is_err() { return },
        }
    }
}
