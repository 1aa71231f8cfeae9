//! The journal of open multipart uploads, so a crash never leaves one open for long.
//! Before the first part is sent, `state_dir/uploads/<random>.json` records target, key
//! and upload id, and the uploading process holds an exclusive lock on that file until
//! the upload is completed or aborted (then the file is removed). Any later run or daemon
//! start finds entries whose lock it can take — their owner died — and aborts those
//! uploads. A live process's uploads are never touched: its lock is held.
//!
//! The bucket lifecycle rule in BACKUP_POLICY.md is the second line of defence (for the
//! instant between creating an upload and writing its entry).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("uploads")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub target: String,
    /// The store's own key (target prefix included).
    pub key: String,
    pub upload_id: String,
    pub started_at: DateTime<Utc>,
    pub pid: u32,
    /// Set just before an abort is sent: if the aborting process dies before it can drop
    /// the entry, the next one knows a "no such upload" answer means done.
    #[serde(default)]
    pub aborting: bool,
}

/// A journaled upload, locked by this process while it lives.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    _file: File,
}

impl Held {
    /// Records that an abort is about to be sent (see `Entry::aborting`).
    pub fn mark_aborting(&mut self, entry: &Entry) {
        use std::io::Seek;
        let mut marked = entry.clone();
        marked.aborting = true;
        if let Ok(bytes) = serde_json::to_vec_pretty(&marked) {
            let _ = self._file.set_len(0);
            let _ = self._file.rewind();
            let _ = self._file.write_all(&bytes);
            let _ = self._file.sync_all();
        }
    }

    /// The upload is over (completed or aborted): drop the entry.
    pub fn forget(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Records an open upload and locks its entry.
pub fn record(dir: &Path, entry: &Entry) -> std::io::Result<Held> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{:016x}.json", rand::random::<u64>()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    file.lock()?;
    file.write_all(&serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    Ok(Held { path, _file: file })
}

/// Entries whose owner is gone (their lock could be taken), each with its lock held so
/// two recovering processes do not race. Unreadable entries are removed.
pub fn orphans(dir: &Path) -> Vec<(Held, Entry)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in read.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // a live upload
        }
        let mut text = String::new();
        let parsed = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| serde_json::from_str::<Entry>(&text).ok());
        match parsed {
            Some(entry) => out.push((Held { path, _file: file }, entry)),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    out
}

/// Aborts every orphaned upload journaled under `state_dir` on the `targets` it names;
/// returns what it did, one line each.
pub async fn abort_orphans(
    state_dir: &std::path::Path,
    targets: &std::collections::BTreeMap<String, super::TargetPolicy>,
) -> Vec<String> {
    let dir = dir(state_dir);
    let mut said = Vec::new();
    for (mut held, entry) in orphans(&dir) {
        let Some(spec) = targets.get(&entry.target) else {
            said.push(format!(
                "forgot an open upload on target {} (no longer in the policy): {}; the bucket's lifecycle rule will remove it",
                entry.target, entry.key
            ));
            held.forget();
            continue;
        };
        let target = match super::open_spec(&entry.target, spec) {
            Ok(t) => t,
            Err(e) => {
                said.push(format!(
                    "cannot abort an open upload on {}: {e}",
                    entry.target
                ));
                continue;
            }
        };
        let Some(remote) = &target.remote else {
            held.forget();
            continue;
        };
        let key = ObjectPath::from(entry.key.as_str());
        let was_aborting = entry.aborting;
        held.mark_aborting(&entry);
        match remote
            .multipart
            .abort_multipart(&key, &entry.upload_id)
            .await
        {
            Ok(()) => {
                said.push(format!(
                    "aborted an upload left open by a crashed run (pid {}, {}) on target {}: {}",
                    entry.pid, entry.started_at, entry.target, entry.key
                ));
                held.forget();
            }
            // Already gone (completed, aborted, or expired by a lifecycle rule).
            Err(object_store::Error::NotFound { .. }) => held.forget(),
            Err(e) => {
                // Some servers (s3s-fs among them) answer 403 rather than NoSuchUpload for
                // an upload that no longer exists (completed, then swept; or aborted by a
                // recoverer that died before dropping the entry). When the same credentials
                // can ask about a missing object, the refusal is about the upload: it is
                // gone. Failing for a week: leave it to the bucket's lifecycle rule.
                let answered = !super::is_unreachable(&e);
                let credentials_work = matches!(
                    target
                        .store
                        .head(&ObjectPath::from(".backupd-journal-check"))
                        .await,
                    Err(object_store::Error::NotFound { .. })
                );
                let stale = chrono::Utc::now() - entry.started_at > chrono::Duration::days(7);
                if answered && (credentials_work || was_aborting) || stale {
                    held.forget();
                } else {
                    said.push(format!(
                        "cannot abort the open upload {} on target {} yet (will retry next start): {}",
                        entry.key,
                        entry.target,
                        super::explain(&target, &e)
                    ));
                }
            }
        }
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            target: "s3".into(),
            key: "p/job/id/x.tar".into(),
            upload_id: "u1".into(),
            started_at: Utc::now(),
            pid: std::process::id(),
            aborting: false,
        }
    }

    #[test]
    fn a_held_entry_is_not_an_orphan_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = record(dir.path(), &entry()).unwrap();
        assert!(
            orphans(dir.path()).is_empty(),
            "a live upload is not an orphan"
        );
        drop(held); // the process "died": lock released, file stays
        let found = orphans(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.upload_id, "u1");
        // While one recoverer holds it, another does not see it.
        assert!(orphans(dir.path()).is_empty());
        for (h, _) in found {
            h.forget();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
