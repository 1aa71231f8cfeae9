//! Restoring an incremental directory object: its **chain** (the full, then each object
//! it builds on, oldest first, ending with the one asked for) is found among the job's
//! snapshots on the same target, and every archive of it is fed into one unpack
//! [`Session`]: each path lands once, from the newest archive that holds it, as the
//! newest index's tree says.
//!
//! Everything here is read from the target and untrusted: a base is looked up by id
//! (never used as a path), must be a snapshot the caller's trust accepts, must hold the
//! same source at a lower level, and levels strictly fall, so a chain cannot loop. Every
//! archive passes the restore rules and both of its sha256 sums; a path the tree names
//! that no archive of the chain holds, or holds as another kind, fails the restore.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Filter, RestoreError, open_object};
use crate::crypto::Identities;
use crate::snapshot::seal::{Judgment, Trust};
use crate::snapshot::{self, Manifest, SourceEntry};
use crate::source::Restored;
use crate::source::directory::index::{Index, Kind};
use crate::source::directory::{Session, Unpack};
use crate::target::Target;

/// One object of a chain.
#[derive(Debug, Clone)]
pub struct Link {
    pub manifest: Manifest,
    pub entry: SourceEntry,
}

/// The chain of source `name` of `manifest` on `target`, oldest (the full) first.
/// A full is a chain of one. `trust` judges every base as it judged the snapshot.
pub async fn resolve(
    target: &Target,
    manifest: &Manifest,
    name: &str,
    entry: &SourceEntry,
    trust: &Trust,
) -> Result<Vec<Link>, RestoreError> {
    let mut chain = vec![Link {
        manifest: manifest.clone(),
        entry: entry.clone(),
    }];
    if entry.is_full() {
        return Ok(chain);
    }
    let all = snapshot::list(target, Some(&manifest.job))
        .await
        .map_err(|e| RestoreError::Failed(e.to_string()))?;
    let by_id: HashMap<&str, &Manifest> = all.iter().map(|m| (m.snapshot.as_str(), m)).collect();
    loop {
        let last = chain.last().expect("a chain has a link");
        let Some(base_id) = last.entry.base.clone() else {
            break;
        };
        let broken = |why: String| {
            RestoreError::Failed(format!(
                "source {name} of snapshot {} is incremental (level {}) and its chain is broken: {why}; restore a snapshot whose chain is whole (`backupd list` shows each one's base)",
                manifest.snapshot, entry.level
            ))
        };
        let Some(base) = by_id.get(base_id.as_str()) else {
            return Err(broken(format!(
                "its base {base_id} (of {}) is not on target {}",
                last.manifest.snapshot, target.name
            )));
        };
        if let Judgment::Refused(why) = trust.judge(base) {
            return Err(broken(format!("base {base_id} is refused: {why}")));
        }
        let Some(base_entry) = base.sources.get(name) else {
            return Err(broken(format!("base {base_id} has no source {name}")));
        };
        if base_entry.level >= last.entry.level || base_entry.index.is_none() {
            return Err(broken(format!(
                "base {base_id} holds {name} at level {} without a lower level and an index",
                base_entry.level
            )));
        }
        chain.push(Link {
            manifest: (*base).clone(),
            entry: base_entry.clone(),
        });
    }
    chain.reverse();
    Ok(chain)
}

/// Which archive of the chain each path of the newest tree is restored from: the
/// newest that holds it. Refuses a tree whose entries no archive holds as that kind.
fn origins(indexes: &[Index]) -> Result<HashMap<String, usize>, RestoreError> {
    let newest = indexes.last().expect("a chain has a link");
    let wanted: HashMap<&str, Kind> = newest.tree().map(|e| (e.path.as_str(), e.kind)).collect();
    let mut origin: HashMap<String, usize> = HashMap::with_capacity(wanted.len());
    for (k, index) in indexes.iter().enumerate().rev() {
        for e in &index.entries {
            if wanted.get(e.path.as_str()) == Some(&e.kind) && !origin.contains_key(&e.path) {
                origin.insert(e.path.clone(), k);
            }
        }
    }
    let missing: Vec<&str> = wanted
        .keys()
        .filter(|p| !origin.contains_key(**p))
        .copied()
        .collect();
    if let Some(first) = missing.first() {
        return Err(RestoreError::Failed(format!(
            "the chain holds no copy of {first:?} (and {} more paths) that the newest index lists: an object of the chain is not what its index says",
            missing.len() - 1
        )));
    }
    Ok(origin)
}

/// The indexes of a chain, in its order; fetched and decoded a few at a time (each is a
/// small object; one by one they were a tenth of a 30-link restore).
pub async fn indexes(
    target: &Target,
    chain: &[Link],
    identities: Option<Arc<Identities>>,
) -> Result<Vec<Index>, RestoreError> {
    use futures::{FutureExt, StreamExt};
    // Owned, boxed fetches: a stream holding a closure over borrowed values is not `Send`
    // for every lifetime, which the daemon's spawned tasks need.
    let fetches: Vec<futures::future::BoxFuture<'static, Result<Index, RestoreError>>> = chain
        .iter()
        .map(|link| {
            let (target, link, identities) = (target.clone(), link.clone(), identities.clone());
            async move {
                let (index, from_object) =
                    super::index::index_of(&target, &link.manifest, &link.entry, identities)
                        .await?;
                if !from_object {
                    return Err(RestoreError::Failed(format!(
                        "snapshot {} has no index for {}: it cannot be part of a chain",
                        link.manifest.snapshot, link.entry.object
                    )));
                }
                Ok(index)
            }
            .boxed()
        })
        .collect();
    futures::stream::iter(fetches)
        .buffered(4)
        .collect::<Vec<Result<Index, RestoreError>>>()
        .await
        .into_iter()
        .collect()
}

/// Restores the chain into `dest` through one unpack session. `filter` narrows what is
/// restored (`--include/--exclude`), by archived path.
pub async fn restore(
    target: &Target,
    chain: &[Link],
    identities: Option<Arc<Identities>>,
    dest: PathBuf,
    how: Unpack,
    filter: Option<Arc<Filter>>,
) -> Result<Restored, RestoreError> {
    let indexes = indexes(target, chain, identities.clone()).await?;
    let origin = origins(&indexes)?;
    // Parent directories of restored paths come from the newest archive too (it holds
    // every directory); a directory the newest tree lacks is never created.
    let handle = tokio::runtime::Handle::current();
    let target = target.clone();
    let chain = chain.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Restored, RestoreError> {
        let mut session = Session::new(&dest, how)?;
        for (k, link) in chain.iter().enumerate() {
            let input = handle.block_on(open_object(&target, &link.manifest, &link.entry))?;
            let mut decoded = crate::pipeline::decode(input, &link.entry, identities.as_deref())?;
            let select = |path: &str, _is_dir: bool| {
                origin.get(path) == Some(&k) && filter.as_ref().is_none_or(|f| f.accepts(path))
            };
            session.feed(&mut decoded.reader, &select)?;
            decoded.finish()?;
        }
        Ok(session.finish()?)
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::directory::index::{Entry, FORMAT};

    fn e(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            size: 0,
            mode: 0o644,
            mtime: 0,
            link: None,
            offset: 0,
            sha256: None,
            inode: None,
            ctime_ns: None,
        }
    }

    fn index(entries: Vec<Entry>, unchanged: Vec<Entry>) -> Index {
        Index {
            format: FORMAT,
            entries,
            members: Vec::new(),
            member_bytes: 0,
            unchanged,
        }
    }

    #[test]
    fn each_path_comes_from_the_newest_archive_that_holds_it() {
        let full = index(
            vec![
                e("d", Kind::Dir),
                e("d/a", Kind::File),
                e("d/b", Kind::File),
            ],
            vec![],
        );
        let newer = index(
            vec![e("d", Kind::Dir), e("d/b", Kind::File)],
            vec![e("d/a", Kind::File)],
        );
        let o = origins(&[full, newer]).unwrap();
        assert_eq!((o["d"], o["d/a"], o["d/b"]), (1, 0, 1));
    }

    /// A forged newest index names paths the chain does not hold, or holds as another
    /// kind (a symlink where the tree says file): the restore is refused, not filled in.
    #[test]
    fn a_tree_the_chain_does_not_hold_is_refused() {
        let full = index(vec![e("a", Kind::Symlink)], vec![]);
        for unchanged in [e("a", Kind::File), e("planted", Kind::File)] {
            let newer = index(vec![], vec![unchanged]);
            let err = origins(&[full.clone(), newer]).unwrap_err().to_string();
            assert!(err.contains("holds no copy"), "{err}");
        }
    }
}
