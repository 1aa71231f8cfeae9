//! Browsing a snapshot's directory sources without restoring them: the **index** of a
//! source (read from its index object, or — for snapshots made before indexes existed —
//! by scanning the archive), **finding** paths in it, and **cat**, which streams one
//! regular file out of the archive and checks it against the index's sha256.
//!
//! Everything read here is untrusted: the index object is decoded with its stored and
//! plain sha256 checked before it is parsed, and [`Index::parse`] refuses paths that are
//! not plain relative paths and offsets that lie outside the stream. `cat` stops reading
//! the archive once it has the file; then the whole object's sha256 is not checked (it
//! could only be by reading everything), so the file is checked against the index's
//! sha256 of it instead, and every age chunk read is authenticated as usual.

use std::io::{Read, Write};
use std::sync::Arc;

use sha2::Digest as _;

use crate::crypto::Identities;
use crate::restore::{self, RestoreError};
use crate::snapshot::{self, Manifest, SourceEntry, SourceStats};
use crate::source::directory::index::{Entry, Index, Kind};
use crate::target::Target;

/// The directory sources of `manifest` that `only` names (all when `None`).
pub fn directory_sources(
    manifest: &Manifest,
    only: Option<&str>,
) -> Result<Vec<(String, SourceEntry)>, RestoreError> {
    let dirs: Vec<(String, SourceEntry)> = manifest
        .sources
        .iter()
        .filter(|(_, e)| matches!(e.stats, SourceStats::Tree { .. }))
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect();
    let missing = |what: String| {
        RestoreError::Usage(format!(
            "snapshot {} has no {what} (sources: {})",
            manifest.snapshot,
            manifest
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    let found: Vec<_> = match only {
        None => dirs,
        Some(name) => dirs.into_iter().filter(|(n, _)| n == name).collect(),
    };
    if found.is_empty() {
        return Err(missing(match only {
            None => "directory source to browse".into(),
            Some(name) => format!("directory source {name:?}"),
        }));
    }
    Ok(found)
}

pub use crate::restore::index::index_of;

/// What `cat` delivered and how it was checked.
#[derive(Debug)]
pub struct Delivered {
    pub bytes: u64,
    /// Checked against the index's sha256 of the file (else: the whole object's sha256).
    pub by_index: bool,
    /// With ranged reads: the bytes fetched from the target (else the whole object was
    /// streamed, up to the file).
    pub fetched: Option<u64>,
}

/// Where to start reading for one entry: the member holding its header.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Offset of that member in the compressed stream (age's plaintext).
    compressed_offset: u64,
    /// Plain bytes to skip inside the member to reach the entry's header.
    skip: u64,
}

/// A ranged-read plan for `e`, when the object allows one (gzip or zstd with a member map).
fn plan(index: &Index, e: &Entry, entry: &SourceEntry) -> Option<Plan> {
    if entry.compression == crate::snapshot::Compression::None
        || index.members.is_empty()
        || index.member_bytes == 0
    {
        return None;
    }
    let block = e.offset / index.member_bytes;
    let members = index.members.get(..block as usize)?;
    Some(Plan {
        compressed_offset: members.iter().sum(),
        skip: e.offset - block * index.member_bytes,
    })
}

/// `cat` by ranged reads: from the member (gzip member, zstd frame) that holds the entry's header to the end
/// of its data, decrypting only those age chunks (each authenticated as it is read).
#[allow(clippy::too_many_arguments)]
async fn cat_ranged(
    target: &Target,
    manifest: &Manifest,
    entry: &SourceEntry,
    plan: Plan,
    wanted: String,
    expected: Option<String>,
    identities: Option<Arc<Identities>>,
    mut out: Box<dyn Write + Send>,
) -> Result<Delivered, RestoreError> {
    use std::io::Seek;
    let key = snapshot::object_key(&manifest.job, &manifest.snapshot, &entry.object);
    let mut ranged = crate::target::RangedReader::new(target, &key, entry.stored.bytes);
    let fetched = ranged.fetched.clone();
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || -> Result<Delivered, RestoreError> {
        let fail = |e: String| RestoreError::Failed(format!("{wanted}: {e}"));
        let compressed: Box<dyn Read> = match &entry.encryption {
            crate::snapshot::Encryption::None => {
                ranged
                    .seek(std::io::SeekFrom::Start(plan.compressed_offset))
                    .map_err(|e| fail(e.to_string()))?;
                Box::new(ranged)
            }
            crate::snapshot::Encryption::Age { .. } => {
                let ids = identities.ok_or_else(|| fail("no identity given".into()))?;
                let d = age::Decryptor::new(ranged).map_err(|e| fail(e.to_string()))?;
                let mut r = d
                    .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
                    .map_err(|e| fail(format!("cannot decrypt: {e}")))?;
                r.seek(std::io::SeekFrom::Start(plan.compressed_offset))
                    .map_err(|e| fail(e.to_string()))?;
                Box::new(r)
            }
        };
        let mut plain: Box<dyn Read> = match entry.compression {
            crate::snapshot::Compression::Zstd => {
                Box::new(zstd::Decoder::new(compressed).map_err(|e| fail(e.to_string()))?)
            }
            _ => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        };
        std::io::copy(&mut (&mut plain).take(plan.skip), &mut std::io::sink())
            .map_err(|e| fail(e.to_string()))?;
        let mut archive = tar::Archive::new(plain);
        let mut item = archive
            .entries()
            .map_err(|e| fail(e.to_string()))?
            .next()
            .ok_or_else(|| fail("the index points past the archive's end".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let name = String::from_utf8_lossy(&item.path_bytes()).into_owned();
        if name != wanted || item.header().entry_type() != tar::EntryType::Regular {
            return Err(fail(format!(
                "the index points at {name:?}, not at this file: the index does not match the archive"
            )));
        }
        let Some(want) = expected.as_deref() else {
            return Err(fail("the index has no sha256 for it".into()));
        };
        let bytes = copy_checked(&mut item, &mut out, &wanted, Some(want))?;
        Ok(Delivered {
            bytes,
            by_index: true,
            fetched: Some(fetched.load(std::sync::atomic::Ordering::Relaxed)),
        })
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

/// Streams the regular file `path` of directory source `name` to `out`, checked against
/// the index's sha256 of it (when the snapshot has an index) or the whole object's
/// sha256. A file an incremental object lists as unchanged is read from the newest
/// object of its chain that holds it (bases judged by `trust`, as a restore would).
#[allow(clippy::too_many_arguments)]
pub async fn cat(
    target: &Target,
    manifest: &Manifest,
    name: &str,
    entry: &SourceEntry,
    path: &str,
    identities: Option<Arc<Identities>>,
    trust: &crate::snapshot::seal::Trust,
    out: Box<dyn Write + Send>,
) -> Result<Delivered, RestoreError> {
    let wanted = path.trim_start_matches('/').trim_end_matches('/');
    if !entry.is_full() {
        let (index, _) = index_of(target, manifest, entry, identities.clone()).await?;
        if index.unchanged.iter().any(|e| e.path == wanted) {
            let links = restore::chain::resolve(target, manifest, name, entry, trust).await?;
            let indexes = restore::chain::indexes(target, &links, identities.clone()).await?;
            let holder = links.iter().zip(&indexes).rev().find(|(_, i)| {
                i.entries
                    .iter()
                    .any(|e| e.path == wanted && e.kind == Kind::File)
            });
            let Some((link, _)) = holder else {
                return Err(RestoreError::Failed(format!(
                    "{wanted}: listed as unchanged, but no object of the chain holds it"
                )));
            };
            return cat_one(target, &link.manifest, &link.entry, path, identities, out).await;
        }
    }
    cat_one(target, manifest, entry, path, identities, out).await
}

/// `cat` from one object.
async fn cat_one(
    target: &Target,
    manifest: &Manifest,
    entry: &SourceEntry,
    path: &str,
    identities: Option<Arc<Identities>>,
    mut out: Box<dyn Write + Send>,
) -> Result<Delivered, RestoreError> {
    let wanted = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string();
    let mut ranged_plan = None;
    let expected = match &entry.index {
        Some(_) => {
            let (index, _) = index_of(target, manifest, entry, identities.clone()).await?;
            let found = index.entries.iter().find(|e| e.path == wanted).cloned();
            match found {
                Some(e) if e.kind == Kind::File => {
                    ranged_plan = plan(&index, &e, entry);
                    e.sha256
                }
                Some(e) => {
                    return Err(RestoreError::Usage(format!(
                        "{wanted} is a {}, not a regular file",
                        match e.kind {
                            Kind::Dir => "directory",
                            _ => "symlink",
                        }
                    )));
                }
                None => {
                    return Err(RestoreError::NotFound(format!(
                        "no file {wanted:?} in this source (see `backupd ls`)"
                    )));
                }
            }
        }
        None => None,
    };
    let has_index = entry.index.is_some();
    if let Some(plan) = ranged_plan {
        return cat_ranged(
            target, manifest, entry, plan, wanted, expected, identities, out,
        )
        .await;
    }
    let input = restore::open_object(target, manifest, entry).await?;
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || -> Result<Delivered, RestoreError> {
        let mut decoded = crate::pipeline::decode(input, &entry, identities.as_deref())
            .map_err(|e| RestoreError::Failed(format!("{wanted}: {e}")))?;
        let bad = |e: std::io::Error| RestoreError::Failed(format!("reading {wanted}: {e}"));
        let mut delivered = None;
        {
            let mut archive = tar::Archive::new(&mut decoded.reader);
            for item in archive.entries().map_err(bad)? {
                let mut item = item.map_err(bad)?;
                let name = String::from_utf8_lossy(&item.path_bytes()).into_owned();
                if name != wanted || item.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                delivered = Some(copy_checked(
                    &mut item,
                    &mut out,
                    &wanted,
                    expected.as_deref(),
                )?);
                break;
            }
        }
        let Some(bytes) = delivered else {
            return Err(RestoreError::NotFound(format!(
                "no file {wanted:?} in this source (see `backupd ls`)"
            )));
        };
        if !has_index {
            // No per-file digest to check against: read the rest for the object's sha256.
            std::io::copy(&mut decoded.reader, &mut std::io::sink()).map_err(bad)?;
            decoded.finish()?;
        }
        Ok(Delivered {
            bytes,
            by_index: has_index,
            fetched: None,
        })
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

/// Copies one archived file to `out`, hashing it on the way; with `expected` (the index's
/// sha256) a mismatch fails, naming the file. Returns the bytes copied.
fn copy_checked(
    item: &mut dyn Read,
    out: &mut dyn Write,
    wanted: &str,
    expected: Option<&str>,
) -> Result<u64, RestoreError> {
    let fail = |e: String| RestoreError::Failed(format!("{wanted}: {e}"));
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
    loop {
        let n = item.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| fail(e.to_string()))?;
        bytes += n as u64;
    }
    out.flush().map_err(|e| fail(e.to_string()))?;
    let got = hex::encode(hasher.finalize());
    match expected {
        Some(want) if want != got => Err(fail(format!(
            "its bytes do not match the index (sha256 {got}, the index says {want}); what was written must not be trusted"
        ))),
        _ => Ok(bytes),
    }
}

/// Whether `glob` matches `path`: against the whole path when the pattern has a `/`,
/// else against the last component (as `find -name`).
pub fn matcher(glob: &str) -> Result<impl Fn(&str) -> bool, RestoreError> {
    let anchored = glob.contains('/');
    let pattern = glob.trim_start_matches('/');
    let m = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| RestoreError::Usage(format!("bad pattern {glob:?}: {e}")))?
        .compile_matcher();
    Ok(move |path: &str| {
        if anchored {
            m.is_match(path)
        } else {
            m.is_match(path.rsplit('/').next().unwrap_or(path))
        }
    })
}
