//! The **index** of a directory object: one **entry** per archived path (type, size, mode,
//! mtime, link target, its header's **offset** in the plain tar stream, and a sha256 of
//! each regular file's bytes) plus the compressed size of each **member** of the object,
//! written as a second object of the source in the same run.
//! `ls` and `find` read only the index; `cat` checks the file it delivers against it.
//!
//! An index read from a target is untrusted like everything else there: [`Index::parse`]
//! refuses one whose paths are not plain relative paths (absolute, `..`, empty or NUL
//! components), whose offsets do not increase or lie past the stream's end, or whose
//! sizes do not fit in it.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

/// What an index is; bumped only if a later version changes the meaning of a field.
pub const FORMAT: u32 = 1;
/// An index lists every path; far below this even for millions of entries.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    pub entries: Vec<Entry>,
    /// With gzip or zstd: the compressed size of each member (gzip member, zstd frame);
    /// member `i` holds plain bytes from `i × member_bytes`. Lets a reader start decoding
    /// near an entry (ranged reads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub member_bytes: u64,
    /// In an incremental object: the files and symlinks of the tree at this point that
    /// are not in this object because they did not change since the base (their `offset`
    /// means nothing). `entries` and `unchanged` together are the whole tree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<Entry>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    /// `ls -l`'s type letter.
    pub fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the source's root, `/`-separated, as in the archive.
    pub path: String,
    pub kind: Kind,
    /// Bytes of a regular file (0 otherwise).
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Where the entry's first header starts in the plain (decompressed) tar stream.
    pub offset: u64,
    /// sha256 (hex) of a regular file's bytes as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Inode number when backed up: with `ctime_ns` and `size`, how the next incremental
    /// sees that the entry is unchanged (absent in indexes written before incrementals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// Status-change time in nanoseconds since the epoch (changes with any write, chmod,
    /// chown or rename, and cannot be set back by a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
}

/// Why an index read from a target is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("the index does not parse: {0}")]
    Parse(String),
    #[error("the index has format {0}, which this backupd does not know")]
    Format(u32),
    #[error("index entry {path:?}: {why}")]
    Entry { path: String, why: String },
}

impl Index {
    /// Every entry of the tree at this point: archived here, or unchanged since the base.
    pub fn tree(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().chain(&self.unchanged)
    }

    /// The whole tree as a list: in archive order for a full, by path when an incremental
    /// object adds the unchanged entries.
    pub fn into_tree(self) -> Vec<Entry> {
        if self.unchanged.is_empty() {
            return self.entries;
        }
        let mut all = self.entries;
        all.extend(self.unchanged);
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an index serializes")
    }

    /// Parses and checks an index of a tar stream of `plain_bytes` bytes.
    pub fn parse(bytes: &[u8], plain_bytes: u64) -> Result<Self, IndexError> {
        let index: Index =
            serde_json::from_slice(bytes).map_err(|e| IndexError::Parse(e.to_string()))?;
        if index.format != FORMAT {
            return Err(IndexError::Format(index.format));
        }
        let mut previous: Option<u64> = None;
        for e in &index.entries {
            let bad = |why: String| IndexError::Entry {
                path: e.path.clone(),
                why,
            };
            if !is_plain_relative(&e.path) {
                return Err(bad(
                    "not a plain relative path (absolute, `..`, empty or NUL)".into(),
                ));
            }
            if previous.is_some_and(|p| e.offset <= p) {
                return Err(bad(format!(
                    "offset {} does not come after the previous entry's",
                    e.offset
                )));
            }
            // A header (512 bytes) and the data must fit in the stream.
            let end = e
                .offset
                .checked_add(512)
                .and_then(|x| x.checked_add(e.size));
            if end.is_none_or(|end| end > plain_bytes) {
                return Err(bad(format!(
                    "offset {} and size {} lie past the end of the {plain_bytes}-byte stream",
                    e.offset, e.size
                )));
            }
            if e.kind != Kind::File && e.size != 0 {
                return Err(bad("only regular files have a size".into()));
            }
            previous = Some(e.offset);
        }
        for e in &index.unchanged {
            if !is_plain_relative(&e.path) || e.kind == Kind::Dir {
                return Err(IndexError::Entry {
                    path: e.path.clone(),
                    why: "an unchanged entry must be a file or symlink with a plain relative path"
                        .into(),
                });
            }
        }
        if !index.members.is_empty() {
            let block = index.member_bytes;
            let blocks = if block == 0 {
                0
            } else {
                plain_bytes.div_ceil(block).max(1)
            };
            if index.members.len() as u64 != blocks
                || index
                    .members
                    .iter()
                    .any(|&m| m == 0 || m > 2 * block + 1024)
            {
                return Err(IndexError::Parse(format!(
                    "its member map ({} members of {block} bytes) does not fit a {plain_bytes}-byte stream",
                    index.members.len()
                )));
            }
        }
        Ok(index)
    }
}

/// `a/b c/d`: no root, no `.`/`..`, no empty component, no NUL.
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && !path.starts_with('/')
        && !path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, offset: u64, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            size,
            mode: 0o644,
            mtime: 0,
            link: None,
            offset,
            sha256: None,
            inode: None,
            ctime_ns: None,
        }
    }

    fn index(entries: Vec<Entry>) -> Vec<u8> {
        Index {
            format: FORMAT,
            entries,
            members: Vec::new(),
            member_bytes: 0,
            unchanged: Vec::new(),
        }
        .to_json()
    }

    #[test]
    fn a_sound_index_parses() {
        let bytes = index(vec![entry("a", 0, 10), entry("dir/b c", 1024, 3)]);
        assert_eq!(Index::parse(&bytes, 4096).unwrap().entries.len(), 2);
    }

    #[test]
    fn hostile_indexes_are_refused_naming_the_entry() {
        for (entries, plain, needle) in [
            (vec![entry("../etc/passwd", 0, 1)], 4096, "../etc/passwd"),
            (vec![entry("/etc/passwd", 0, 1)], 4096, "/etc/passwd"),
            (vec![entry("a/../../b", 0, 1)], 4096, "a/../../b"),
            (vec![entry("a//b", 0, 1)], 4096, "a//b"),
            (
                vec![entry("a", 0, 1), entry("b", 0, 1)],
                4096,
                "does not come after",
            ),
            (vec![entry("big", 0, 1 << 40)], 4096, "past the end"),
            (vec![entry("far", u64::MAX - 10, 1)], 4096, "past the end"),
        ] {
            let err = Index::parse(&index(entries), plain)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(matches!(
            Index::parse(b"{\"format\": 9, \"entries\": []}", 10),
            Err(IndexError::Format(9))
        ));
        assert!(matches!(
            Index::parse(b"not json", 10),
            Err(IndexError::Parse(_))
        ));
    }
}
