//! The **listing cache**: a local copy of the small, write-once objects that listing reads
//! by the thousand (manifests, verification records), so `list`, `prune` and `fleet` read
//! each one from the store once instead of on every run.
//!
//! An entry is used only while the store's own listing shows the object with the **same
//! size and ETag** it had when it was read; anything else is read again. The cache holds
//! the bytes exactly as they were read, and every reader checks them as it checks a fresh
//! read (size limits, manifest rules, seals), so it adds no trust: at worst a rewritten
//! object whose size and ETag an attacker kept is shown as it was before. It lives under
//! `daemon.state_dir` (private to this user), one file per target and job, rewritten whole
//! under a temporary name; a missing or damaged file only costs one slower listing.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use object_store::ObjectMeta;

/// First line of every cache file: its format.
const MAGIC: &[u8] = b"backupd-listing-cache 1\n";
/// Nothing larger is cached (a manifest or a record is far smaller).
const MAX_BODY_BYTES: u64 = 4 << 20;

/// Where `state_dir`'s listing caches live.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache")
}

struct Entry {
    size: u64,
    e_tag: String,
    body: Bytes,
}

/// One target's cached objects under one job.
pub struct ListingCache {
    path: PathBuf,
    entries: HashMap<String, Entry>,
    /// Keys looked up or stored this time: the rest are gone from the store.
    seen: std::collections::HashSet<String>,
    changed: bool,
}

impl ListingCache {
    /// The cache of `job` on the target whose cache directory is `dir`; empty when there is
    /// none yet or it cannot be read.
    pub fn load(dir: &Path, job: &str) -> Self {
        let path = dir.join(format!("{job}.cache"));
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|all| read_entries(Bytes::from(all)).ok())
            .unwrap_or_default();
        ListingCache {
            path,
            entries,
            seen: Default::default(),
            changed: false,
        }
    }

    /// The cached bytes of the object `meta` describes, if they are of this very version.
    pub fn get(&mut self, meta: &ObjectMeta) -> Option<Bytes> {
        let key = meta.location.to_string();
        let e_tag = meta.e_tag.as_deref()?;
        let hit = self
            .entries
            .get(&key)
            .filter(|e| e.size == meta.size && e.e_tag == e_tag)
            .map(|e| e.body.clone());
        if hit.is_some() {
            self.seen.insert(key);
        }
        hit
    }

    /// Keeps the entry of `meta`'s key (if any) at the next save: the store still has it.
    pub fn listed(&mut self, meta: &ObjectMeta) {
        self.seen.insert(meta.location.to_string());
    }

    /// Remembers `body` as the content of the object `meta` describes.
    pub fn put(&mut self, meta: &ObjectMeta, body: Bytes) {
        let Some(e_tag) = meta.e_tag.clone() else {
            return;
        };
        if body.len() as u64 != meta.size || meta.size > MAX_BODY_BYTES {
            return;
        }
        let key = meta.location.to_string();
        self.seen.insert(key.clone());
        self.entries.insert(
            key,
            Entry {
                size: meta.size,
                e_tag,
                body,
            },
        );
        self.changed = true;
    }

    /// Writes the cache back when it changed, keeping only the objects seen this time.
    /// Failing to write is not an error of the listing: it is logged and forgotten.
    pub fn save(mut self) {
        let before = self.entries.len();
        let seen = std::mem::take(&mut self.seen);
        self.entries.retain(|k, _| seen.contains(k));
        if !self.changed && self.entries.len() == before {
            return;
        }
        if let Err(e) = self.write() {
            tracing::debug!(path = %self.path.display(), "listing cache not written: {e}");
        }
    }

    fn write(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.path.parent().expect("a cache file has a directory");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        {
            let mut w = std::io::BufWriter::new(tmp.as_file_mut());
            w.write_all(MAGIC)?;
            for (key, e) in &self.entries {
                write_field(&mut w, key.as_bytes())?;
                w.write_all(&e.size.to_le_bytes())?;
                write_field(&mut w, e.e_tag.as_bytes())?;
                write_field(&mut w, &e.body)?;
            }
            w.flush()?;
        }
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

fn write_field(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(bytes)
}

/// A cursor over the cache file's bytes.
struct Cursor {
    all: Bytes,
    at: usize,
}

impl Cursor {
    fn take(&mut self, n: usize) -> std::io::Result<Bytes> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.all.len())
            .ok_or_else(|| std::io::Error::other("a listing cache cut short"))?;
        let out = self.all.slice(self.at..end);
        self.at = end;
        Ok(out)
    }

    fn field(&mut self) -> std::io::Result<Bytes> {
        let len = u32::from_le_bytes(self.take(4)?.as_ref().try_into().expect("4 bytes")) as u64;
        if len > MAX_BODY_BYTES {
            return Err(std::io::Error::other("a listing cache field too large"));
        }
        self.take(len as usize)
    }
}

/// The cache file's entries; bodies are slices of the one buffer read.
fn read_entries(all: Bytes) -> std::io::Result<HashMap<String, Entry>> {
    if !all.starts_with(MAGIC) {
        return Err(std::io::Error::other("not a listing cache"));
    }
    let mut c = Cursor {
        at: MAGIC.len(),
        all,
    };
    let mut out = HashMap::new();
    while c.at < c.all.len() {
        let key = c.field()?;
        let size = u64::from_le_bytes(c.take(8)?.as_ref().try_into().expect("8 bytes"));
        let e_tag = c.field()?;
        let body = c.field()?;
        let (Ok(key), Ok(e_tag)) = (
            String::from_utf8(key.to_vec()),
            String::from_utf8(e_tag.to_vec()),
        ) else {
            return Err(std::io::Error::other("a listing cache key is not UTF-8"));
        };
        out.insert(key, Entry { size, e_tag, body });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64, e_tag: &str) -> ObjectMeta {
        ObjectMeta {
            location: key.into(),
            last_modified: chrono::Utc::now(),
            size,
            e_tag: Some(e_tag.into()),
            version: None,
        }
    }

    #[test]
    fn an_entry_is_used_only_for_the_version_it_was_read_from() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ListingCache::load(dir.path(), "app");
        c.put(
            &meta("app/1/manifest.json", 3, "a"),
            Bytes::from_static(b"one"),
        );
        c.put(
            &meta("app/2/manifest.json", 3, "b"),
            Bytes::from_static(b"two"),
        );
        c.save();
        let mut c = ListingCache::load(dir.path(), "app");
        assert_eq!(
            c.get(&meta("app/1/manifest.json", 3, "a")).as_deref(),
            Some(&b"one"[..])
        );
        // Rewritten in the store: another ETag or size is a miss, never the old bytes.
        assert!(c.get(&meta("app/2/manifest.json", 3, "c")).is_none());
        assert!(c.get(&meta("app/2/manifest.json", 4, "b")).is_none());
        c.save();
        // Only what was seen survives a save: app/2 was not (its version changed).
        let mut c = ListingCache::load(dir.path(), "app");
        assert!(c.get(&meta("app/2/manifest.json", 3, "b")).is_none());
        assert!(c.get(&meta("app/1/manifest.json", 3, "a")).is_some());
    }

    #[test]
    fn a_damaged_cache_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ListingCache::load(dir.path(), "app");
        c.put(&meta("k", 3, "a"), Bytes::from_static(b"one"));
        c.save();
        let path = dir.path().join("app.cache");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            ListingCache::load(dir.path(), "app")
                .get(&meta("k", 3, "a"))
                .is_none()
        );
        std::fs::write(&path, b"\xff\xff\xff\xff garbage").unwrap();
        assert!(
            ListingCache::load(dir.path(), "app")
                .get(&meta("k", 3, "a"))
                .is_none()
        );
    }

    #[test]
    fn a_body_that_is_not_the_listed_size_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ListingCache::load(dir.path(), "app");
        c.put(&meta("k", 4, "a"), Bytes::from_static(b"one"));
        assert!(c.get(&meta("k", 4, "a")).is_none());
    }
}
