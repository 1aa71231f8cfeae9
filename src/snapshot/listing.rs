//! A **listing**: what one pass over a target's keys finds under a job (or every job) —
//! the committed snapshots, read and checked, and each snapshot's verification records —
//! with manifests and records served from the target's listing cache (`target::cache`)
//! while the store shows them unchanged. One listing replaces a directory listing per
//! job, a read per manifest and a listing per snapshot's records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::StreamExt;
use object_store::ObjectMeta;
use object_store::path::Path as ObjectPath;

use super::record::{MAX_RECORD_BYTES, VerifyRecord};
use super::{MAX_MANIFEST_BYTES, Manifest, SnapshotError, check_manifest, is_valid_name};
use crate::target::cache::ListingCache;
use crate::target::{Small, Target};

/// Reads at once when manifests are not cached.
const READS_IN_FLIGHT: usize = 16;

/// The snapshots one listing found, and how to read their records.
pub struct Listing {
    /// Newest first.
    pub manifests: Vec<Manifest>,
    /// Per (job, id): the record objects beside the manifest.
    records: HashMap<(String, String), Vec<ObjectMeta>>,
    caches: BTreeMap<String, Mutex<ListingCache>>,
}

/// One snapshot's keys, as listed.
#[derive(Default)]
struct Keys {
    manifest: Option<ObjectMeta>,
    records: Vec<ObjectMeta>,
}

enum Kind {
    Manifest,
    Record,
}

/// What a listed key is to a listing: `<job>/<id>/manifest.json` or
/// `<job>/<id>/verify/<name>`, with the job and id; `None` for everything else.
fn kind_of(key: &ObjectPath) -> Option<(String, String, Kind)> {
    let parts: Vec<_> = key.parts().collect();
    let (j, id) = (parts.first()?.as_ref(), parts.get(1)?.as_ref());
    if !is_valid_name(j) {
        return None;
    }
    let kind = match (parts.get(2).map(|p| p.as_ref()), parts.len()) {
        (Some("manifest.json"), 3) => Kind::Manifest,
        (Some("verify"), 4) => Kind::Record,
        _ => return None,
    };
    Some((j.to_string(), id.to_string(), kind))
}

/// Lists `job` (or every job) on `target` in one pass and reads each committed snapshot's
/// manifest (from the cache where it is unchanged). Unreadable manifests are logged and
/// left out rather than hiding the good ones.
pub async fn scan(target: &Target, job: Option<&str>) -> Result<Listing, SnapshotError> {
    let store_err = |source| SnapshotError::store(target, source);
    let prefix = job.map(ObjectPath::from);
    let mut found: BTreeMap<(String, String), Keys> = BTreeMap::new();
    let (metas, skipped) = target
        .list_wanted(prefix.as_ref(), |key| kind_of(key).is_some())
        .await
        .map_err(store_err)?;
    for meta in metas {
        let Some((j, id, kind)) = kind_of(&meta.location) else {
            continue;
        };
        let place = (j, id);
        match kind {
            Kind::Manifest => found.entry(place).or_default().manifest = Some(meta),
            Kind::Record => found.entry(place).or_default().records.push(meta),
        }
    }
    if skipped > 0 {
        tracing::warn!(target = %target.name, skipped, "skipped keys that are not valid object names (not made by backupd)");
    }
    let mut caches: BTreeMap<String, Mutex<ListingCache>> = BTreeMap::new();
    if let Some(dir) = &target.cache_dir {
        for (j, _) in found.keys() {
            caches
                .entry(j.clone())
                .or_insert_with(|| Mutex::new(ListingCache::load(dir, j)));
        }
        // Everything listed stays cached, read this time or not.
        for ((j, _), keys) in &found {
            let mut cache = caches[j].lock().expect("cache lock");
            keys.manifest
                .iter()
                .chain(&keys.records)
                .for_each(|m| cache.listed(m));
        }
    }
    let mut records = HashMap::new();
    let mut wanted = Vec::new();
    for ((j, id), keys) in found {
        if let Some(m) = keys.manifest {
            wanted.push((j.clone(), id.clone(), m));
        }
        if !keys.records.is_empty() {
            records.insert((j, id), keys.records);
        }
    }
    let mut listing = Listing {
        manifests: Vec::new(),
        records,
        caches,
    };
    let reads = futures::stream::iter(wanted)
        .map(|(j, id, meta)| {
            let listing = &listing;
            async move {
                let key = super::manifest_key(&j, &id);
                let bytes = match listing.cached(&j, &meta) {
                    Some(b) => b,
                    None => match target
                        .get_small_meta(&key, MAX_MANIFEST_BYTES)
                        .await
                        .map_err(store_err)?
                    {
                        (Small::Found(b), Some(read)) => {
                            listing.remember(&j, &read, b.clone());
                            b
                        }
                        (Small::Found(b), None) => b,
                        // Deleted since it was listed.
                        (Small::Missing, _) => return Ok(None),
                        (Small::TooLarge { bytes }, _) => {
                            return Err(SnapshotError::BadManifest {
                                target: target.name.clone(),
                                key: key.to_string(),
                                reason: format!(
                                    "it is {bytes} bytes, more than any manifest backupd writes ({MAX_MANIFEST_BYTES})"
                                ),
                            });
                        }
                    },
                };
                Ok(Some((j, id, key, bytes)))
            }
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let mut read = Vec::new();
    for r in reads {
        match r {
            Ok(Some(one)) => read.push(one),
            Ok(None) => {}
            Err(e @ SnapshotError::BadManifest { .. }) => tracing::warn!("{e}"),
            Err(e) => return Err(e),
        }
    }
    for checked in check_all(target, read).await? {
        match checked {
            Ok(m) => listing.manifests.push(m),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    listing
        .manifests
        .sort_by(|a, b| b.snapshot.cmp(&a.snapshot));
    Ok(listing)
}

/// Checks each manifest read (`check_manifest`), spread over the cores: parsing is most of
/// a listing's work once the manifests come from the cache.
async fn check_all(
    target: &Target,
    read: Vec<(String, String, ObjectPath, bytes::Bytes)>,
) -> Result<Vec<Result<Manifest, SnapshotError>>, SnapshotError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = read.len().div_ceil(threads).max(64);
    let name = target.name.clone();
    let target = target.clone();
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            let workers: Vec<_> = read
                .chunks(per_thread)
                .map(|chunk| {
                    let target = &target;
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|(j, id, key, bytes)| check_manifest(target, key, j, id, bytes))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a manifest check panicked"))
                .collect()
        })
    })
    .await
    .map_err(|e| SnapshotError::Store {
        target: name,
        message: format!("checking manifests stopped: {e}"),
    })
}

impl Listing {
    fn cached(&self, job: &str, meta: &ObjectMeta) -> Option<bytes::Bytes> {
        self.caches.get(job)?.lock().expect("cache lock").get(meta)
    }

    fn remember(&self, job: &str, meta: &ObjectMeta, body: bytes::Bytes) {
        if let Some(c) = self.caches.get(job) {
            c.lock().expect("cache lock").put(meta, body);
        }
    }

    /// The newest verification record of snapshot `job/id` that is really its own (see
    /// `record::newest_of`), read from the cache where it is unchanged.
    pub async fn latest_record(
        &self,
        target: &Target,
        job: &str,
        id: &str,
    ) -> Option<VerifyRecord> {
        let metas = self.records.get(&(job.to_string(), id.to_string()))?;
        let keys = metas.iter().map(|m| m.location.clone()).collect();
        super::record::newest_of(keys, job, id, |key| async move {
            let meta = metas.iter().find(|m| m.location == key)?;
            if let Some(b) = self.cached(job, meta) {
                return Some(b);
            }
            match target.get_small_meta(&key, MAX_RECORD_BYTES).await.ok()? {
                (Small::Found(b), read) => {
                    if let Some(read) = read {
                        self.remember(job, &read, b.clone());
                    }
                    Some(b)
                }
                _ => None,
            }
        })
        .await
    }
}

impl Drop for Listing {
    /// The caches are written back once, when the listing is done with.
    fn drop(&mut self) {
        for (_, cache) in std::mem::take(&mut self.caches) {
            if let Ok(cache) = cache.into_inner() {
                cache.save();
            }
        }
    }
}
