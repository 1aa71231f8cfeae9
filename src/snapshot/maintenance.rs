//! Removing snapshots and crash leftovers from a target, in the order that keeps the
//! commit protocol's promise: the manifest goes first, so an interrupted delete leaves
//! orphans (swept later), never a manifest pointing at missing objects.

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::{SnapshotError, manifest_key};
use crate::target::Target;

/// Deletes one committed snapshot: manifest, then every other object under it.
pub async fn delete(target: &Target, job: &str, id: &str) -> Result<(), SnapshotError> {
    refuse_write_only(target)?;
    match target.store.delete(&manifest_key(job, id)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(SnapshotError::delete(target, e)),
    }
    remove_prefix(target, job, id).await
}

/// Nothing is deleted from a `write_only` target, not even tried.
pub fn refuse_write_only(target: &Target) -> Result<(), SnapshotError> {
    if target.write_only {
        return Err(SnapshotError::NotPermitted {
            target: target.name.clone(),
        });
    }
    Ok(())
}

async fn remove_prefix(target: &Target, job: &str, id: &str) -> Result<(), SnapshotError> {
    let prefix = ObjectPath::from(format!("{job}/{id}"));
    let keys: Vec<ObjectPath> = target
        .store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|source| SnapshotError::store(target, source))?;
    for key in keys {
        match target.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(SnapshotError::delete(target, source));
            }
        }
    }
    // Local targets also hold unfinished multipart uploads as `<object>#<n>` files, which
    // the object_store listing hides; the snapshot's directory goes as a whole.
    if let Some(root) = &target.local_root {
        let dir = root.join(job).join(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                SnapshotError::store(
                    target,
                    object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    },
                )
            })?;
        }
    }
    Ok(())
}

/// When the newest object under a snapshot's prefix was written (for ids whose own time
/// cannot be believed); a local directory's mtime when it holds only hidden parts.
async fn newest_write(target: &Target, job: &str, id: &str) -> Option<DateTime<Utc>> {
    let prefix = ObjectPath::from(format!("{job}/{id}"));
    let listed: Vec<_> = target.store.list(Some(&prefix)).try_collect().await.ok()?;
    let newest = listed.iter().map(|m| m.last_modified).max();
    newest.or_else(|| {
        let root = target.local_root.as_ref()?;
        let modified = std::fs::metadata(root.join(job).join(id))
            .ok()?
            .modified()
            .ok()?;
        Some(DateTime::<Utc>::from(modified))
    })
}

/// The start time encoded in a snapshot id, if it is one of ours.
pub fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..24)?;
    NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H-%M-%S%.3fZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Removes snapshot directories of `job` that have no manifest and started more than
/// `grace` before `now` (killed or failed runs). Ids in `known_committed` (listed with a
/// manifest moments ago) are not asked about again. Directories whose names are not
/// snapshot ids are left alone. Returns the ids removed (or, with `dry_run`, found).
pub async fn sweep(
    target: &Target,
    job: &str,
    grace: std::time::Duration,
    now: DateTime<Utc>,
    dry_run: bool,
    known_committed: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>, SnapshotError> {
    // A set: a local target with 200,000 junk directories must not cost n² comparisons.
    let mut ids: std::collections::BTreeSet<String> = Default::default();
    match &target.local_root {
        // Every directory, also those holding only hidden upload parts (which the store's
        // listing does not show).
        Some(root) => {
            if let Ok(entries) = std::fs::read_dir(root.join(job)) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir())
                        && let Some(name) = e.file_name().to_str()
                    {
                        ids.insert(name.to_string());
                    }
                }
            }
        }
        None => ids.extend(
            super::child_names(target, &ObjectPath::from(job))
                .await
                .map_err(|source| SnapshotError::store(target, source))?,
        ),
    }
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut removed = Vec::new();
    for id in ids {
        let Some(started) = id_time(&id) else {
            continue;
        };
        // An id dated in the future (a bad clock, or junk planted to live forever) is aged
        // by when its objects were written instead.
        let started = if started > now {
            match newest_write(target, job, &id).await {
                Some(written) => written,
                None => continue,
            }
        } else {
            started
        };
        if now - started < grace || known_committed.contains(&id) {
            continue;
        }
        let committed = match target.store.head(&manifest_key(job, &id)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(source) => {
                return Err(SnapshotError::store(target, source));
            }
        };
        if !committed {
            if !dry_run {
                refuse_write_only(target)?;
                remove_prefix(target, job, &id).await?;
                tracing::info!(job, target = %target.name, snapshot = %id, "removed leftovers of an uncommitted snapshot");
            }
            removed.push(id);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_carry_their_time() {
        let t = id_time("2026-11-22T02-15-24.433Z-804f21").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T02:15:24.433+00:00");
        assert!(id_time("not-a-snapshot").is_none());
        assert!(id_time("verify").is_none());
    }
}
