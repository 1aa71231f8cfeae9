//! Storage targets: opening an `object_store` from a policy target (local directory, S3,
//! Azure Blob, GCS), redacting URLs for logs, reading objects as streams, and the
//! write/read/delete reachability probe.
//!
//! There is no storage trait of our own: `Arc<dyn ObjectStore>` already is one. Remote
//! targets also carry object_store's `MultipartStore` view, whose upload ids the
//! pipeline journals (`journal`) so a crash never leaves an upload open for long.

pub mod cache;
mod cloud;
mod explain;
pub mod journal;
pub mod limit;
mod options;
pub mod s3api;

use crate::error::Invalid;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

pub use explain::{explain, is_unreachable};
pub use options::TargetPolicy;

/// One opened target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// The URL with credentials and query removed: safe for logs and output.
    pub display_url: String,
    /// Keys are relative to the target (the URL's prefix is applied underneath).
    pub store: Arc<dyn ObjectStore>,
    /// The directory of a `file://` target, for the few things object_store hides
    /// (unfinished multipart uploads); `None` elsewhere.
    pub local_root: Option<std::path::PathBuf>,
    /// S3/Azure/GCS: the multipart interface with visible upload ids.
    pub remote: Option<Remote>,
    /// Where open multipart uploads are journaled (`state_dir/uploads`), when known.
    pub journal_dir: Option<std::path::PathBuf>,
    /// Where listing keeps its local copies of this target's manifests and records
    /// (`cache`), when known.
    pub cache_dir: Option<std::path::PathBuf>,
    /// A spool stand-in for this target (`spool`): holds the copy until delivery.
    pub spooled: bool,
    /// Upload limits every part writer to this target obeys (`target::limit`).
    pub limits: Vec<std::sync::Arc<crate::target::limit::Limiter>>,
    /// `write_only = true`: the credentials may write but not delete, so nothing is
    /// deleted here (retention, cleanup, the probe's object); `prune` on a host with
    /// delete rights does it.
    pub write_only: bool,
}

/// The remote side of a target.
#[derive(Clone)]
pub struct Remote {
    pub multipart: Arc<dyn MultipartStore>,
    /// The URL's path, under which every key of the target lives.
    pub prefix: String,
    /// `s3`, `azure` or `gcs`.
    pub kind: &'static str,
    pub storage_class: Option<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Remote {
    /// A target-relative key as the store's own key (prefix added).
    pub fn full_key(&self, key: &ObjectPath) -> ObjectPath {
        if self.prefix.is_empty() {
            key.clone()
        } else {
            ObjectPath::from(format!("{}/{}", self.prefix, key))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {name} ({url}): {message}")]
    Open {
        name: String,
        url: String,
        message: String,
    },
}

/// A local file's metadata the way `list_wanted` and `get_small_meta` both give it. The
/// ETag changes whenever the file does: inode, modification and change times (the change
/// time cannot be set back by the writer), size.
fn local_meta(location: ObjectPath, md: &std::fs::Metadata) -> object_store::ObjectMeta {
    use std::os::unix::fs::MetadataExt;
    let last_modified =
        chrono::DateTime::from_timestamp(md.mtime(), md.mtime_nsec() as u32).unwrap_or_default();
    object_store::ObjectMeta {
        location,
        last_modified,
        size: md.len(),
        e_tag: Some(format!(
            "{:x}-{:x}.{:x}-{:x}.{:x}-{:x}",
            md.ino(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            md.len()
        )),
        version: None,
    }
}

/// The key of a file at `rel` (relative to a local target's root), if every part of it is
/// a name object_store would give the same way.
fn local_key(rel: &std::path::Path) -> Option<ObjectPath> {
    let mut parts = Vec::new();
    for c in rel.components() {
        let name = c.as_os_str().to_str()?;
        let part = object_store::path::PathPart::from(name);
        if part.as_ref() != name {
            return None;
        }
        parts.push(part);
    }
    Some(ObjectPath::from_iter(parts))
}

fn walk_local(
    root: &std::path::Path,
    prefix: Option<ObjectPath>,
    wanted: fn(&ObjectPath) -> bool,
) -> (Vec<object_store::ObjectMeta>, u64) {
    let start = match &prefix {
        Some(p) => root.join(p.as_ref()),
        None => root.to_path_buf(),
    };
    // The directories two levels down (a job's snapshots, or every job's) are shared out
    // over the cores: a target's keys are mostly thousands of small snapshot directories.
    let mut found = Found::default();
    let mut units = vec![start];
    for _ in 0..2 {
        let mut next = Vec::new();
        for dir in &units {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => next.push(e.path()),
                    Ok(t) if t.is_file() => found.file(root, &e.path(), wanted, || e.metadata()),
                    _ => {}
                }
            }
        }
        units = next;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = units.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = units
            .chunks(per_thread)
            .map(|chunk| {
                s.spawn(move || {
                    let mut found = Found::default();
                    for unit in chunk {
                        for entry in walkdir::WalkDir::new(unit).follow_links(false).min_depth(1) {
                            let Ok(entry) = entry else { continue };
                            if entry.file_type().is_file() {
                                found.file(root, entry.path(), wanted, || {
                                    entry.metadata().map_err(std::io::Error::from)
                                });
                            }
                        }
                    }
                    found
                })
            })
            .collect();
        for w in workers {
            let part = w.join().expect("a listing thread panicked");
            found.metas.extend(part.metas);
            found.skipped += part.skipped;
        }
    });
    (found.metas, found.skipped)
}

/// What a local walk found so far.
#[derive(Default)]
struct Found {
    metas: Vec<object_store::ObjectMeta>,
    skipped: u64,
}

impl Found {
    /// A file at `path`: its metadata is read only when `wanted` takes its key.
    fn file(
        &mut self,
        root: &std::path::Path,
        path: &std::path::Path,
        wanted: fn(&ObjectPath) -> bool,
        metadata: impl FnOnce() -> std::io::Result<std::fs::Metadata>,
    ) {
        let Ok(rel) = path.strip_prefix(root) else {
            return;
        };
        let Some(key) = local_key(rel) else {
            self.skipped += 1;
            return;
        };
        if wanted(&key)
            && let Ok(md) = metadata()
        {
            self.metas.push(local_meta(key, &md));
        }
    }
}

fn read_local(
    root: &std::path::Path,
    key: ObjectPath,
    max_bytes: u64,
) -> object_store::Result<(Small, Option<object_store::ObjectMeta>)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.join(key.as_ref());
    let failed = |e: std::io::Error| object_store::Error::Generic {
        store: "local",
        source: Box::new(e),
    };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Small::Missing, None)),
        Err(e) => return Err(failed(e)),
    };
    let md = file.metadata().map_err(failed)?;
    if !md.is_file() {
        return Ok((Small::Missing, None));
    }
    if md.len() > max_bytes {
        return Ok((Small::TooLarge { bytes: md.len() }, None));
    }
    let mut body = Vec::with_capacity(md.len() as usize);
    file.by_ref()
        .take(max_bytes + 1)
        .read_to_end(&mut body)
        .map_err(failed)?;
    if body.len() as u64 > max_bytes {
        return Ok((
            Small::TooLarge {
                bytes: body.len() as u64,
            },
            None,
        ));
    }
    // Written to since it was opened: this read is of no single version.
    let after = file.metadata().map_err(failed)?;
    let meta = local_meta(key, &after);
    let unchanged = body.len() as u64 == after.len()
        && local_meta(meta.location.clone(), &md).e_tag == meta.e_tag;
    Ok((
        Small::Found(bytes::Bytes::from(body)),
        unchanged.then_some(meta),
    ))
}

/// Why `Target::probe` failed; `explained` is the store's error with `explain`'s hint.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{step}: {explained}")]
    Store {
        step: &'static str,
        explained: String,
    },
    #[error("the probe object read back differs from what was written")]
    Differs,
    #[error(
        "cannot delete the probe object {key}: {explained} (backupd needs delete for retention; with write-only credentials set write_only = true on the target and run `backupd prune` from a host with delete rights)"
    )]
    Delete { key: String, explained: String },
}

/// Pure check of a target URL, for policy validation.
pub fn check_url(url: &str) -> Result<(), Invalid> {
    let parsed = Url::parse(url).map_err(|e| {
        format!(
            "{:?} is not a URL ({e}); e.g. \"file:///var/backups/backupd\"",
            redact(url)
        )
    })?;
    match parsed.scheme() {
        "file" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(
                    "a file URL needs an absolute path (file:///dir, three slashes); for a path relative to the policy use `path = \"…\"`".into(),
                );
            }
            Ok(())
        }
        "s3" | "az" | "azure" | "gs" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(Invalid(format!(
                    "{} names no bucket or container: use e.g. \"{}://NAME/optional/prefix\"",
                    redact(url),
                    parsed.scheme()
                )));
            }
            if !parsed.username().is_empty()
                || parsed.password().is_some()
                || secret_in_url(&parsed).is_some()
            {
                return Err("credentials do not belong in the URL (it is logged): use the cloud's environment variables or the *_file keys".into());
            }
            Ok(())
        }
        other => Err(Invalid(format!(
            "scheme {other:?} is not supported (supported: file, s3, az, gs)"
        ))),
    }
}

pub use crate::secret::{redact, secret_in_url};

/// A blocking `Read + Seek` view of one object that fetches only the byte ranges read
/// (object_store range requests, 1 MiB at a time), for use on a blocking thread inside
/// the runtime. `fetched` counts the bytes that came from the target.
pub struct RangedReader {
    target: Target,
    key: ObjectPath,
    size: u64,
    pos: u64,
    buf: bytes::Bytes,
    buf_start: u64,
    runtime: tokio::runtime::Handle,
    pub fetched: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RangedReader {
    /// Each fetch asks for at least this much, so small reads do not become requests.
    const FETCH_BYTES: u64 = 1 << 20;

    /// `size` is the object's length as the manifest records it (a range past the real
    /// end fails the read).
    pub fn new(target: &Target, key: &ObjectPath, size: u64) -> Self {
        Self {
            target: target.clone(),
            key: key.clone(),
            size,
            pos: 0,
            buf: bytes::Bytes::new(),
            buf_start: 0,
            runtime: tokio::runtime::Handle::current(),
            fetched: Default::default(),
        }
    }
}

impl std::io::Read for RangedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let in_buf =
            self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !in_buf {
            let end = (self.pos + Self::FETCH_BYTES.max(out.len() as u64)).min(self.size);
            let got = self
                .runtime
                .block_on(self.target.store.get_range(&self.key, self.pos..end))
                .map_err(std::io::Error::other)?;
            if got.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} ends before the manifest says", self.key),
                ));
            }
            self.fetched
                .fetch_add(got.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.buf = got;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for RangedReader {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            std::io::SeekFrom::Start(p) => Some(p),
            std::io::SeekFrom::End(d) => self.size.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// Opens the store behind a target URL with every option at its default.
pub fn open(name: &str, url: &str) -> Result<Target, TargetError> {
    open_spec(name, &TargetPolicy::from_url(url))
}

/// Opens target `name` of `targets`, journaling its multipart uploads under
/// `state_dir/uploads`.
pub fn open_named(
    targets: &std::collections::BTreeMap<String, TargetPolicy>,
    state_dir: &std::path::Path,
    name: &str,
) -> Result<Target, TargetError> {
    let spec = targets.get(name).ok_or_else(|| TargetError::Open {
        name: name.into(),
        url: String::new(),
        message: "no such target in the policy".into(),
    })?;
    let mut t = open_spec(name, spec)?;
    t.journal_dir = Some(journal::dir(state_dir));
    // One directory per store address: a target renamed, or a name pointed at another
    // bucket, never shares cached entries.
    let address = <sha2::Sha256 as sha2::Digest>::digest(t.display_url.as_bytes());
    t.cache_dir = Some(cache::dir(state_dir).join(hex::encode(&address[..8])));
    Ok(t)
}

/// Opens the store behind a target. Local directories are created when missing.
pub fn open_spec(name: &str, spec: &TargetPolicy) -> Result<Target, TargetError> {
    let url = spec.url();
    let display_url = redact(&url);
    let fail = |message: String| TargetError::Open {
        name: name.into(),
        url: display_url.clone(),
        message,
    };
    check_url(&url).map_err(|e| fail(e.0))?;
    let parsed = Url::parse(&url).map_err(|e| fail(e.to_string()))?;
    let (store, local_root, remote): (Arc<dyn ObjectStore>, _, _) = match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|_| fail("not a local path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                fail(format!(
                    "cannot create directory {}: {e}; create it or fix its permissions",
                    dir.display()
                ))
            })?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| fail(e.to_string()))?
                .with_automatic_cleanup(true);
            (Arc::new(fs), Some(dir), None)
        }
        _ => {
            let opened = cloud::open(&parsed, spec).map_err(|e| fail(e.to_string()))?;
            let store: Arc<dyn ObjectStore> = if opened.prefix.is_empty() {
                opened.store
            } else {
                Arc::new(PrefixStore::new(opened.store, opened.prefix.as_str()))
            };
            let remote = Remote {
                multipart: opened.multipart,
                prefix: opened.prefix,
                kind: opened.kind,
                storage_class: spec.storage_class.clone(),
            };
            (store, None, Some(remote))
        }
    };
    Ok(Target {
        name: name.into(),
        display_url,
        store,
        local_root,
        remote,
        journal_dir: None,
        cache_dir: None,
        spooled: false,
        write_only: spec.write_only,
        limits: spec
            .upload_limit
            .map(|rate| crate::target::limit::shared(name, rate))
            .into_iter()
            .collect(),
    })
}

/// What [`Target::get_small`] found.
#[derive(Debug)]
pub enum Small {
    Found(bytes::Bytes),
    Missing,
    /// Larger than the caller allows: never read, so a forged giant costs nothing.
    TooLarge {
        bytes: u64,
    },
}

impl Target {
    /// A small object (a manifest, a verification record) read whole, unless the store
    /// says it is larger than `max_bytes`: what is read from a target is untrusted, and
    /// listing reads many at once.
    pub async fn get_small(&self, key: &ObjectPath, max_bytes: u64) -> object_store::Result<Small> {
        Ok(self.get_small_meta(key, max_bytes).await?.0)
    }

    /// Every object under `prefix` whose key `wanted` accepts, with its metadata, in one
    /// pass; and how many keys were skipped as not backupd's (not valid object names).
    /// A local target is walked directly, and only the wanted files are looked at:
    /// object_store's local listing inspects every file several times over, which made
    /// listing thousands of snapshots slow. Links are never followed.
    pub async fn list_wanted(
        &self,
        prefix: Option<&ObjectPath>,
        wanted: fn(&ObjectPath) -> bool,
    ) -> object_store::Result<(Vec<object_store::ObjectMeta>, u64)> {
        if let Some(root) = self.local_root.clone() {
            let prefix = prefix.cloned();
            return tokio::task::spawn_blocking(move || Ok(walk_local(&root, prefix, wanted)))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                })?;
        }
        let mut out = Vec::new();
        let mut skipped = 0u64;
        let mut all = self.store.list(prefix);
        while let Some(item) = all.next().await {
            match item {
                Ok(meta) if wanted(&meta.location) => out.push(meta),
                Ok(_) => {}
                Err(object_store::Error::InvalidPath { .. }) => skipped += 1,
                Err(e) => return Err(e),
            }
        }
        Ok((out, skipped))
    }

    /// `get_small`, with what the store said about the version read (for `cache`). A
    /// local target's file is read directly, never through a link, and described as
    /// `list_wanted` describes it.
    pub async fn get_small_meta(
        &self,
        key: &ObjectPath,
        max_bytes: u64,
    ) -> object_store::Result<(Small, Option<object_store::ObjectMeta>)> {
        use object_store::ObjectStoreExt;
        if let Some(root) = self.local_root.clone() {
            let key = key.clone();
            return tokio::task::spawn_blocking(move || read_local(&root, key, max_bytes))
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "local",
                    source: Box::new(e),
                })?;
        }
        let got = match self.store.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok((Small::Missing, None)),
            Err(e) => return Err(e),
        };
        if got.meta.size > max_bytes {
            return Ok((
                Small::TooLarge {
                    bytes: got.meta.size,
                },
                None,
            ));
        }
        let meta = got.meta.clone();
        Ok((Small::Found(got.bytes().await?), Some(meta)))
    }
    /// The object's bytes as a blocking reader, for use on a blocking thread. A local
    /// target hands over the open file itself (object_store would stream it in 8 KiB
    /// blocking tasks, the slowest stage of a restore); others stream through a bridge.
    pub async fn reader(
        &self,
        key: &ObjectPath,
    ) -> object_store::Result<Box<dyn std::io::Read + Send>> {
        let got = self.store.get(key).await?;
        Ok(match got.payload {
            object_store::GetResultPayload::File(file, _) => {
                Box::new(std::io::BufReader::with_capacity(1 << 20, file))
            }
            object_store::GetResultPayload::Stream(stream) => {
                let stream = stream.map_err(std::io::Error::other);
                Box::new(tokio_util::io::SyncIoBridge::new(
                    tokio_util::io::StreamReader::new(stream),
                ))
            }
        })
    }

    /// Writes, reads back and deletes a small probe object: proof that backups can land.
    /// Errors say what to fix (credentials, bucket, endpoint), see `explain`.
    pub async fn probe(&self) -> Result<(), ProbeError> {
        let key = if self.write_only {
            ObjectPath::from(".backupd-probe-write-only")
        } else {
            ObjectPath::from(format!(".backupd-probe-{:016x}", rand::random::<u64>()))
        };
        let body = b"backupd reachability probe".to_vec();
        let failed = |step, e: object_store::Error| ProbeError::Store {
            step,
            explained: explain(self, &e),
        };
        self.store
            .put(&key, PutPayload::from(body.clone()))
            .await
            .map_err(|e| failed("cannot write a probe object", e))?;
        let read = self
            .store
            .get(&key)
            .await
            .map_err(|e| failed("wrote a probe object but cannot read it back", e))?
            .bytes()
            .await
            .map_err(|e| failed("cannot read the probe object", e))?;
        if read.as_ref() != body.as_slice() {
            return Err(ProbeError::Differs);
        }
        if self.write_only {
            // One fixed name, overwritten by every probe: nothing accumulates.
            return Ok(());
        }
        let deleted = self.store.delete(&key).await;
        deleted.map_err(|e| ProbeError::Delete {
            key: key.to_string(),
            explained: explain(self, &e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket writer on a file target plants links to elsewhere: the walk never follows
    /// them, and reading a linked manifest is refused rather than followed.
    #[test]
    fn the_local_walk_and_read_never_follow_planted_links() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("target"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("app/real")).unwrap();
        std::fs::create_dir_all(root.join("app/linkfile")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("app/real/manifest.json"), "{}").unwrap();
        std::fs::write(outside.join("manifest.json"), "secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("app/linkdir")).unwrap();
        std::os::unix::fs::symlink(
            outside.join("manifest.json"),
            root.join("app/linkfile/manifest.json"),
        )
        .unwrap();
        let (found, _) = walk_local(&root, Some(ObjectPath::from("app")), |_| true);
        let keys: Vec<String> = found.iter().map(|m| m.location.to_string()).collect();
        assert_eq!(keys, ["app/real/manifest.json"]);
        let read = read_local(
            &root,
            ObjectPath::from("app/linkfile/manifest.json"),
            1 << 20,
        );
        assert!(
            !matches!(read, Ok((Small::Found(_), _))),
            "a linked manifest is never read"
        );
    }

    #[test]
    fn credentials_never_reach_display() {
        let shown = redact("s3://AKIAXXX:supersecret@bucket/prefix?token=abc");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(!shown.contains("AKIAXXX"), "{shown}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(shown.contains("bucket/prefix"), "{shown}");
    }

    #[test]
    fn relative_file_url_is_explained() {
        let err = check_url("file://backups/x").unwrap_err();
        assert!(err.to_string().contains("three slashes"), "{err}");
        assert!(check_url("file:///var/backups").is_ok());
        assert!(
            check_url("gopher://x")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(check_url("s3://bucket/prefix").is_ok());
        assert!(check_url("az://container").is_ok());
        assert!(check_url("gs://bucket/a/b").is_ok());
        assert!(
            check_url("s3:///prefix")
                .unwrap_err()
                .to_string()
                .contains("names no bucket")
        );
        assert!(
            check_url("s3://AKIA:secret@bucket/x")
                .unwrap_err()
                .to_string()
                .contains("credentials do not belong")
        );
    }

    #[tokio::test]
    async fn probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let t = open("local", &url).unwrap();
        t.probe().await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
