//! Reading a directory source's **index**: its index object (decoded with both sha256
//! sums checked, then held to the index rules), or — for snapshots made before indexes
//! existed — a scan of the archive. Used by browse, verify, incremental backups (the
//! base's file list) and chain restores.

use std::io::Read;
use std::sync::Arc;

use super::RestoreError;
use crate::crypto::Identities;
use crate::snapshot::{Manifest, SourceEntry};
use crate::source::directory::index::{self, Entry, Index, Kind};
use crate::target::Target;

/// The index of one directory source: its index object when it has one, else a scan of
/// the archive (older snapshots). Returns whether it came from an index object.
pub async fn index_of(
    target: &Target,
    manifest: &Manifest,
    entry: &SourceEntry,
    identities: Option<Arc<Identities>>,
) -> Result<(Index, bool), RestoreError> {
    let plain_bytes = entry.plain.bytes;
    match &entry.index {
        Some(object) => {
            // The index object is encoded like the source's object: decode it as one.
            let as_entry = SourceEntry {
                object: object.object.clone(),
                stored: object.stored.clone(),
                plain: object.plain.clone(),
                index: None,
                ..entry.clone()
            };
            let input = super::open_object(target, manifest, &as_entry).await?;
            let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, RestoreError> {
                let mut decoded = crate::pipeline::decode(input, &as_entry, identities.as_deref())?;
                let mut bytes = Vec::new();
                (&mut decoded.reader)
                    .take(index::MAX_INDEX_BYTES)
                    .read_to_end(&mut bytes)
                    .map_err(|e| RestoreError::Failed(format!("reading the index: {e}")))?;
                decoded.finish()?;
                Ok(bytes)
            })
            .await
            .map_err(|e| RestoreError::Task(e.to_string()))??;
            let index = Index::parse(&bytes, plain_bytes)
                .map_err(|e| RestoreError::Failed(format!("refusing the index: {e}")))?;
            Ok((index, true))
        }
        None => {
            let input = super::open_object(target, manifest, entry).await?;
            let entry = entry.clone();
            let index = tokio::task::spawn_blocking(move || -> Result<Index, RestoreError> {
                let mut decoded = crate::pipeline::decode(input, &entry, identities.as_deref())?;
                let index = scan(&mut decoded.reader)?;
                // The whole stream was read: its checksums are checked too.
                std::io::copy(&mut decoded.reader, &mut std::io::sink())
                    .map_err(|e| RestoreError::Failed(e.to_string()))?;
                decoded.finish()?;
                Ok(index)
            })
            .await
            .map_err(|e| RestoreError::Task(e.to_string()))??;
            Ok((index, false))
        }
    }
}

/// An index made by reading the archive (no sha256 per file).
fn scan(reader: &mut dyn Read) -> Result<Index, RestoreError> {
    let bad = |e: std::io::Error| RestoreError::Failed(format!("reading the archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            _ => continue,
        };
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_string();
        if !index::is_plain_relative(&path) {
            continue;
        }
        entries.push(Entry {
            path,
            kind,
            size: if kind == Kind::File { entry.size() } else { 0 },
            mode: header.mode().unwrap_or(0) & 0o7777,
            mtime: header.mtime().unwrap_or(0) as i64,
            link: entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            offset: entry.raw_header_position(),
            sha256: None,
            inode: None,
            ctime_ns: None,
        });
    }
    Ok(Index {
        format: index::FORMAT,
        entries,
        members: Vec::new(),
        member_bytes: 0,
        unchanged: Vec::new(),
    })
}
