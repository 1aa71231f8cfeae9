//! The WAL archive: PostgreSQL's write-ahead log files kept beside a job's base backups,
//! so a base backup restores to any moment after it (BACKUP_POLICY.md, "Point-in-time
//! recovery").
//!
//! Vocabulary: an *archive* is one source's WAL of one instance, under
//! `<job>/wal/<instance>/<source>/` on each of the job's targets ([`Archive`]). Each WAL
//! file is stored as an object `<file><.gz|.zst>[.age]` (restorable with `age -d | zstd -d`
//! alone) and committed by its *receipt* `<file>.json`, written last, that records how it
//! was encoded and both sha256 sums: a file without a receipt is not archived (a killed
//! push), and a fetch checks what it reads against the receipt. *Push* is PostgreSQL's
//! `archive_command`, *fetch* its `restore_command`; names are checked by `name`.

pub mod name;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::crypto::Identities;
use crate::pipeline::{Encoded, Encoding};
use crate::snapshot::seal::{Judgment, Seal, Trust};
use crate::target::{Small, Target};
pub use name::{Kind, WalName};

/// A receipt is a few hundred bytes; anything larger is not one of ours.
const MAX_RECEIPT_BYTES: u64 = 64 << 10;
/// What a receipt's signature signs besides the receipt: a signature over a manifest (or
/// anything else backupd signs) never passes for one.
const RECEIPT_CONTEXT: &[u8] = b"backupd wal receipt signature v1\n";
const RECEIPT_SUFFIX: &str = ".json";

/// Where one source's WAL of one instance lives in a job's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub job: String,
    pub instance: String,
    pub source: String,
}

impl Archive {
    pub fn prefix(&self) -> ObjectPath {
        ObjectPath::from(format!(
            "{}/wal/{}/{}",
            self.job, self.instance, self.source
        ))
    }

    fn key(&self, file: &str) -> ObjectPath {
        ObjectPath::from(format!(
            "{}/wal/{}/{}/{file}",
            self.job, self.instance, self.source
        ))
    }

    fn receipt_key(&self, name: &str) -> ObjectPath {
        self.key(&format!("{name}{RECEIPT_SUFFIX}"))
    }
}

/// The commit record of one archived WAL file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Receipt {
    pub format: u32,
    /// The WAL file's own name (what `restore_command` asks for).
    pub file: String,
    pub host: String,
    pub instance: String,
    pub backupd_version: String,
    pub pushed_at: DateTime<Utc>,
    #[serde(flatten)]
    pub encoded: Encoded,
    /// With `[signing]`: Ed25519 by the pushing host's key over the receipt's canonical
    /// JSON without this key (`seal::sign_document`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::snapshot::seal::Signature>,
}

/// How a push encodes, signs and judges what it finds.
pub struct Pushing<'a> {
    pub encoding: &'a Encoding,
    pub host: &'a str,
    /// `[signing]`: the key receipts are signed with.
    pub key: Option<&'a ed25519_dalek::SigningKey>,
    /// Whose receipts count as archived: a receipt it refuses is pushed over.
    pub trust: &'a Trust,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(
        "{0:?} is not a WAL file name PostgreSQL archives (a segment, .history, .backup or .partial): archive_command must pass %p"
    )]
    BadName(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{file} is already archived on target {target} with other contents (sha256 {archived}, this one {pushed}): refusing to overwrite it. Two clusters archiving into one job and source? Give each its own source name, or move the old archive away"
    )]
    Conflict {
        file: String,
        target: String,
        archived: String,
        pushed: String,
    },
    #[error("target {target}: {key}: {message}")]
    Store {
        target: String,
        key: String,
        message: String,
    },
    #[error("target {target}: receipt {key} is not one of ours: {why}")]
    BadReceipt {
        target: String,
        key: String,
        why: String,
    },
    #[error("{0}")]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("{0}")]
    Integrity(#[from] crate::pipeline::IntegrityError),
    #[error("{file} is not archived on every target (PostgreSQL will try again): {failures}")]
    NotEverywhere { file: String, failures: String },
    #[error("{file} is not in the archive on any target ({targets})")]
    NotFound { file: String, targets: String },
}

fn store_err(target: &Target, key: &ObjectPath, e: impl std::fmt::Display) -> WalError {
    WalError::Store {
        target: target.name.clone(),
        key: key.to_string(),
        message: e.to_string(),
    }
}

/// Reads and checks `name`'s receipt on `target`, with its seal: `None` when there is
/// none. A signature that does not verify is an error (a corrupt or edited receipt).
async fn receipt(
    target: &Target,
    archive: &Archive,
    name: &WalName,
) -> Result<Option<(Receipt, Seal)>, WalError> {
    let key = archive.receipt_key(&name.name);
    let bad = |why: String| WalError::BadReceipt {
        target: target.name.clone(),
        key: key.to_string(),
        why,
    };
    let bytes = match target.get_small(&key, MAX_RECEIPT_BYTES).await {
        Ok(Small::Found(b)) => b,
        Ok(Small::Missing) => return Ok(None),
        Ok(Small::TooLarge { bytes }) => return Err(bad(format!("{bytes} bytes"))),
        Err(e) => return Err(store_err(target, &key, e)),
    };
    let raw: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let seal = crate::snapshot::seal::open_document(&raw, RECEIPT_CONTEXT)
        .map_err(|e| bad(e.to_string()))?;
    let r: Receipt = serde_json::from_value(raw).map_err(|e| bad(e.to_string()))?;
    // Everything below is what a forged receipt could lie about to make a fetch read or
    // write something else.
    if r.file != name.name {
        return Err(bad(format!("it describes {:?}", r.file)));
    }
    let expected = object_name(&name.name, &r.encoded);
    if r.encoded.object != expected {
        return Err(bad(format!(
            "its object {:?} is not {expected:?}",
            r.encoded.object
        )));
    }
    if r.encoded.plain.bytes > name::MAX_SEGMENT_BYTES {
        return Err(bad(format!(
            "it claims {} bytes, more than a WAL file can hold",
            r.encoded.plain.bytes
        )));
    }
    Ok(Some((r, seal)))
}

/// `<file><compression ext>[.age]`: the object says how to decode it.
fn object_name(file: &str, encoded: &Encoded) -> String {
    let age = match encoded.encryption {
        crate::snapshot::Encryption::Age { .. } => ".age",
        crate::snapshot::Encryption::None => "",
    };
    format!("{file}{}{age}", encoded.compression.extension())
}

/// What a push did on each target.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Targets that now hold the file (newly or already).
    pub stored_on: Vec<String>,
    /// Targets that held it already, identical.
    pub already: Vec<String>,
}

/// Archives the WAL file at `path` (PostgreSQL's `%p`) to every target, each committed by
/// its receipt. Pushing a file a target already holds identically does nothing there;
/// one it holds with other contents is refused. Any failure is an error, so PostgreSQL
/// keeps the file and tries again.
pub async fn push(
    targets: &[Target],
    archive: &Archive,
    path: &Path,
    how: &Pushing<'_>,
) -> Result<Pushed, WalError> {
    let encoding = how.encoding;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = WalName::parse(file_name).ok_or_else(|| WalError::BadName(file_name.into()))?;
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A segment is at most 1 GiB and usually 16 MiB: it is hashed first (so an identical
    // re-push uploads nothing), then streamed from the page cache.
    let plain = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)?
    };
    let mut pushed = Pushed::default();
    let mut need = Vec::new();
    for target in targets {
        let found = match receipt(target, archive, &name).await {
            Err(WalError::BadReceipt { key, why, .. }) => {
                tracing::warn!(target = %target.name, "receipt {key} is damaged or forged ({why}): archiving the file again");
                None
            }
            other => other?,
        };
        let found = found.filter(|(r, seal)| match how.trust.judge_seal(seal, r.pushed_at) {
            Judgment::Refused(why) => {
                // Planted receipts must neither block archiving nor stand in for it.
                tracing::warn!(target = %target.name, file = %name.name, "the archived receipt is {why}: archiving the file again");
                false
            }
            _ => true,
        });
        match found.map(|(r, _)| r) {
            Some(r) if r.encoded.plain == plain => {
                pushed.already.push(target.name.clone());
                pushed.stored_on.push(target.name.clone());
            }
            Some(r) => {
                return Err(WalError::Conflict {
                    file: name.name.clone(),
                    target: target.name.clone(),
                    archived: r.encoded.plain.sha256,
                    pushed: plain.sha256,
                });
            }
            None => need.push(target.clone()),
        }
    }
    if need.is_empty() {
        return Ok(pushed);
    }
    let encrypted = encoding.recipients.is_some();
    let object = format!(
        "{}{}{}",
        name.name,
        encoding.compression.extension(),
        if encrypted { ".age" } else { "" }
    );
    let key = archive.key(&object);
    let source = path.to_path_buf();
    let stored = crate::pipeline::store(
        &need,
        &key,
        encoding,
        &CancellationToken::new(),
        Arc::new(crate::progress::Meter::new(need.len())),
        move |out: &mut dyn Write| -> std::io::Result<u64> {
            let mut f = std::fs::File::open(&source)?;
            std::io::copy(&mut f, out)
        },
    )
    .await?;
    // The file changed under us (PostgreSQL never rewrites a file it handed over, but a
    // .partial or an operator might): what is stored must be what the receipt says.
    if stored.plain != plain {
        return Err(io(std::io::Error::other(
            "the file changed while it was being archived",
        )));
    }
    let mut receipt = Receipt {
        format: 1,
        file: name.name.clone(),
        host: how.host.to_string(),
        instance: archive.instance.clone(),
        backupd_version: env!("CARGO_PKG_VERSION").into(),
        pushed_at: Utc::now(),
        encoded: Encoded {
            object,
            compression: encoding.compression,
            compression_level: encoding.level,
            encryption: match &encoding.recipients {
                Some(r) => crate::snapshot::Encryption::Age {
                    recipients: r.iter().map(ToString::to_string).collect(),
                },
                None => crate::snapshot::Encryption::None,
            },
            stored: stored.stored.clone(),
            plain,
        },
        signature: None,
    };
    if let Some(key) = how.key {
        let doc = serde_json::to_value(&receipt).expect("a receipt serializes");
        receipt.signature = Some(crate::snapshot::seal::sign_document(
            &doc,
            RECEIPT_CONTEXT,
            key,
        ));
    }
    let body = serde_json::to_vec_pretty(&receipt).expect("a receipt serializes");
    let mut failed = Vec::new();
    for (target, upload) in need.iter().zip(stored.uploads) {
        if let Err(e) = upload {
            failed.push(format!("target {}: {e}", target.name));
            continue;
        }
        let rkey = archive.receipt_key(&name.name);
        // The receipt is written last: only now is the file archived on this target.
        match target.store.put(&rkey, body.clone().into()).await {
            Ok(_) => pushed.stored_on.push(target.name.clone()),
            Err(e) => failed.push(store_err(target, &rkey, e).to_string()),
        }
    }
    if !failed.is_empty() {
        return Err(WalError::NotEverywhere {
            file: name.name.clone(),
            failures: failed.join("; "),
        });
    }
    Ok(pushed)
}

fn sha256_file(path: &Path) -> std::io::Result<crate::snapshot::Digest> {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
        if bytes > name::MAX_SEGMENT_BYTES {
            return Err(std::io::Error::other(
                "larger than any WAL file (1 GiB): not a WAL file",
            ));
        }
    }
    Ok(crate::snapshot::Digest {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Fetches `file` (PostgreSQL's `%f`) from the first target whose receipt names it, checks
/// both sha256 sums and writes it to `dest` (`%p`) through a temporary name, so a failed
/// fetch never leaves a file PostgreSQL would replay.
pub async fn fetch(
    targets: &[Target],
    archive: &Archive,
    file: &str,
    dest: &Path,
    identities: Option<Arc<Identities>>,
    trust: &Trust,
) -> Result<Receipt, WalError> {
    let name = WalName::parse(file).ok_or_else(|| WalError::BadName(file.into()))?;
    let mut errors = Vec::new();
    for target in targets {
        let r = match receipt(target, archive, &name).await {
            Ok(Some((r, seal))) => match trust.judge_seal(&seal, r.pushed_at) {
                Judgment::Refused(why) => {
                    errors.push(WalError::BadReceipt {
                        target: target.name.clone(),
                        key: archive.receipt_key(&name.name).to_string(),
                        why: format!("it is {why}"),
                    });
                    continue;
                }
                _ => r,
            },
            Ok(None) => continue,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let key = archive.key(&r.encoded.object);
        let input = match target.reader(&key).await {
            Ok(i) => i,
            Err(e) => {
                errors.push(store_err(target, &key, e));
                continue;
            }
        };
        let dest = dest.to_path_buf();
        let ids = identities.clone();
        let encoded = r.encoded.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_checked(input, &encoded, ids.as_deref(), &dest)
        })
        .await
        .map_err(|e| WalError::Io {
            path: PathBuf::from(file),
            source: std::io::Error::other(e),
        })
        .and_then(|r| r);
        match written {
            Ok(()) => return Ok(r),
            Err(e) => errors.push(e),
        }
    }
    match errors.into_iter().next() {
        // A damaged copy on one target and none on the others is the error worth reading.
        Some(e) => Err(e),
        None => Err(WalError::NotFound {
            file: file.into(),
            targets: targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn write_checked(
    input: Box<dyn Read + Send>,
    encoded: &Encoded,
    identities: Option<&Identities>,
    dest: &Path,
) -> Result<(), WalError> {
    let io = |source| WalError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut decoded = crate::pipeline::decode(input, encoded.clone(), identities)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".backupd-fetch-")
        .tempfile_in(&dir)
        .map_err(io)?;
    let copied = std::io::copy(
        &mut (&mut decoded.reader).take(name::MAX_SEGMENT_BYTES + 1),
        tmp.as_file_mut(),
    )
    .map_err(io)?;
    if copied > name::MAX_SEGMENT_BYTES {
        return Err(io(std::io::Error::other(
            "larger than any WAL file (1 GiB)",
        )));
    }
    decoded.finish()?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(dest).map_err(|e| io(e.error))?;
    Ok(())
}

/// An archive on one target, as one listing found it.
#[derive(Debug, Default)]
pub struct Listing {
    /// The committed files (those with a receipt), by name.
    pub files: Vec<WalName>,
    /// Every key of the archive, by the WAL name it belongs to (receipt, objects); keys
    /// that belong to no WAL name are not ours and never touched.
    keys: BTreeMap<String, Vec<ObjectPath>>,
}

/// Lists the archive on `target` once: what is committed, and every key of it.
pub async fn list(target: &Target, archive: &Archive) -> Result<Listing, WalError> {
    let prefix = archive.prefix();
    let (metas, _) = target
        .list_wanted(Some(&prefix), |_| true)
        .await
        .map_err(|e| store_err(target, &prefix, e))?;
    let mut listing = Listing::default();
    for m in metas {
        let Some(file) = m
            .location
            .as_ref()
            .strip_prefix(prefix.as_ref())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            continue;
        };
        let Some(name) = WalName::parse(stem(file)) else {
            continue;
        };
        if file.strip_suffix(RECEIPT_SUFFIX) == Some(name.name.as_str()) {
            listing.files.push(name.clone());
        }
        listing.keys.entry(name.name).or_default().push(m.location);
    }
    listing.files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listing)
}

/// Deletes archived files on `target` by name, from what `listing` found: the receipt
/// first (so a file is never listed without its object), then every object of that name.
pub async fn delete(
    target: &Target,
    archive: &Archive,
    listing: &Listing,
    names: &[String],
) -> Result<usize, WalError> {
    crate::snapshot::maintenance::refuse_write_only(target)
        .map_err(|e| store_err(target, &archive.prefix(), e))?;
    let gone = |e: &object_store::Error| matches!(e, object_store::Error::NotFound { .. });
    for name in names {
        let receipt = archive.receipt_key(name);
        match target.store.delete(&receipt).await {
            Err(e) if !gone(&e) => return Err(store_err(target, &receipt, e)),
            _ => {}
        }
        for key in listing.keys.get(name).into_iter().flatten() {
            match target.store.delete(key).await {
                Err(e) if !gone(&e) => return Err(store_err(target, key, e)),
                _ => {}
            }
        }
    }
    Ok(names.len())
}

/// Removes what killed pushes left in a local target's archive directory: the store's
/// staging files (`<object>#<n>`) older than `grace` (a push under way writes one too).
/// Object stores keep an unfinished multipart upload out of sight instead; their
/// lifecycle rule for incomplete uploads removes it (BACKUP_POLICY.md). Returns how many.
pub fn sweep_staging(
    target: &Target,
    archive: &Archive,
    grace: std::time::Duration,
    dry_run: bool,
) -> std::io::Result<usize> {
    let Some(root) = &target.local_root else {
        return Ok(0);
    };
    let dir = root.join(archive.prefix().as_ref());
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let staged = name
            .to_str()
            .and_then(|n| n.split_once('#'))
            .is_some_and(|(object, _)| WalName::parse(stem(object)).is_some());
        let old = e
            .metadata()
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > grace);
        if staged && old {
            if !dry_run {
                std::fs::remove_file(e.path())?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// The WAL name a key of the archive belongs to: `<name>.json`, `<name>.zst.age`, ….
fn stem(file: &str) -> &str {
    let f = file.strip_suffix(RECEIPT_SUFFIX).unwrap_or(file);
    let f = f.strip_suffix(".age").unwrap_or(f);
    f.strip_suffix(".gz")
        .or_else(|| f.strip_suffix(".zst"))
        .unwrap_or(f)
}

/// What retention may delete from an archive: every segment, backup label and partial
/// numbered below `keep_from` (the oldest kept base backup's first segment). History
/// files are kept (a few bytes each, and every later timeline needs them).
pub fn expired(files: &[WalName], keep_from: u64, segment_bytes: u64) -> Vec<String> {
    files
        .iter()
        .filter(|w| w.segno(segment_bytes).is_some_and(|n| n < keep_from))
        .map(|w| w.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(names: &[&str]) -> Vec<WalName> {
        names.iter().map(|n| WalName::parse(n).unwrap()).collect()
    }

    #[test]
    fn retention_deletes_wal_before_the_oldest_kept_base_and_never_history() {
        let l = listed(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "00000002.history",
            "000000020000000000000003.partial",
            "000000020000000000000004",
        ]);
        assert_eq!(
            expired(&l, 3, 16 << 20),
            vec![
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup"
            ]
        );
        assert!(expired(&l, 0, 16 << 20).is_empty());
    }
}
