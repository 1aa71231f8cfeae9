//! **Incremental** directory objects in GNU tar's incremental format: each directory is a
//! *dumpdir* entry (type `D`) whose data lists every name the directory holds at this
//! point — `Y` (in this archive), `N` (unchanged since the **base**, not in it), `D` (a
//! directory) — and only changed files and symlinks follow. GNU tar restores a chain by
//! itself: `tar -x --listed-incremental=/dev/null` on the full, then on each incremental
//! in order, deleting what a dumpdir no longer lists; backupd's own restore reads the
//! chain's indexes instead and writes each path once (`restore::chain`).
//!
//! **Change detection** needs nothing kept on the host: the base's index (in the
//! bucket) lists each path with its size, mtime, mode, inode and ctime. With
//! `compare = "metadata"` (the default, GNU tar's rule) an entry is unchanged when all of
//! those match — the ctime changes with every write, chmod, chown and rename and cannot
//! be set back, so a file rewritten with its old mtime is still seen. With
//! `compare = "contents"` a file is unchanged when its size, mode, mtime and sha256 match,
//! whatever its inode (a tree restored onto a new disk continues its chain); every file is
//! read, only changed ones are stored.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header, HeaderMode};

use super::index::{Entry, Index, Kind};
use super::{Counting, Counts, DirectorySpec, Excludes, append_file, ctime_ns, index_entry};
use crate::error::Invalid;
use crate::source::{Dumped, SourceError, io_err};

/// `incremental = { ... }` of a directory source.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalSpec {
    /// A new full once the newest full is this old (`"7d"`): bounds how many objects a
    /// restore reads and how long one lost object can hurt.
    #[serde(with = "crate::units::duration")]
    pub full_every: std::time::Duration,
    #[serde(default)]
    pub chain: Chain,
    #[serde(default)]
    pub compare: Compare,
}

/// What an incremental object is relative to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chain {
    /// Relative to the newest full (level 1 every time): a restore reads two objects, and
    /// a lost one costs only its own point in time. Each one grows until the next full.
    #[default]
    Differential,
    /// Relative to the previous snapshot (levels 1, 2, 3, …): each stores one run's
    /// changes, but a restore reads the whole chain, and a lost object makes every later
    /// point up to the next full unrestorable.
    Incremental,
}

/// How an entry is judged unchanged since the base.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    #[default]
    Metadata,
    Contents,
}

impl IncrementalSpec {
    pub fn check(&self) -> Result<(), Invalid> {
        if self.full_every.as_secs() < 3600 {
            return Err(Invalid(format!(
                "incremental.full_every = {:?} is shorter than an hour; write e.g. \"7d\"",
                humantime::format_duration(self.full_every).to_string()
            )));
        }
        Ok(())
    }
}

/// The snapshot an incremental builds on, and its tree.
#[derive(Debug, Clone)]
pub struct Base {
    pub snapshot: String,
    pub level: u32,
    pub tree: HashMap<String, Entry>,
}

impl Base {
    pub fn new(snapshot: String, level: u32, index: &Index) -> Self {
        Self {
            snapshot,
            level,
            tree: index.tree().map(|e| (e.path.clone(), e.clone())).collect(),
        }
    }
}

/// One name in a directory, as the dumpdir records it.
enum Child {
    Dir(std::fs::Metadata),
    Changed(std::fs::Metadata, Option<PathBuf>),
    Unchanged(Entry),
}

struct Walk<'a, 'o> {
    root: &'a Path,
    excludes: Excludes,
    base: &'a Base,
    compare: Compare,
    tar: tar::Builder<Counting<'o>>,
    counts: Counts,
    entries: Vec<Entry>,
    unchanged: Vec<Entry>,
}

/// Writes the changes of the tree at `spec.path` since `base` as a GNU incremental tar
/// stream into `out`. The index lists every directory and changed entry with its offset,
/// and the unchanged ones apart; the stats count the whole tree at this point.
pub fn dump(
    spec: &DirectorySpec,
    inc: &IncrementalSpec,
    base: &Base,
    out: &mut dyn Write,
) -> Result<Dumped, SourceError> {
    let root = spec.path.as_path();
    let (meta, excludes, tar) = super::start(spec, out)?;
    let mut walk = Walk {
        root,
        excludes,
        base,
        compare: inc.compare,
        tar,
        counts: Counts::default(),
        entries: Vec::new(),
        unchanged: Vec::new(),
    };
    walk.dir(Path::new(""), &meta)?;
    let Walk {
        tar,
        counts,
        entries,
        unchanged,
        ..
    } = walk;
    super::finish(spec, tar, counts, entries, unchanged)
}

impl Walk<'_, '_> {
    fn dir(&mut self, rel: &Path, meta: &std::fs::Metadata) -> Result<(), SourceError> {
        let abs = self.root.join(rel);
        let mut names: Vec<OsString> = match std::fs::read_dir(&abs) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                // As in a full: reported, not fatal; the directory is stored empty.
                self.counts.skipped += 1;
                self.counts
                    .warn(format!("skipped the contents of {}: {e}", abs.display()));
                Vec::new()
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut children: Vec<(OsString, Child)> = Vec::with_capacity(names.len());
        for name in names {
            let child_rel = rel.join(&name);
            let path = abs.join(&name);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let ft = meta.file_type();
            if self.excludes.is_excluded(&child_rel, ft.is_dir()) {
                continue;
            }
            let child = if ft.is_dir() {
                Child::Dir(meta)
            } else if ft.is_file() || ft.is_symlink() {
                let link = if ft.is_symlink() {
                    match std::fs::read_link(&path) {
                        Ok(l) => Some(l),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(&path)(e)),
                    }
                } else {
                    None
                };
                match self.unchanged_entry(&child_rel, &path, &meta, link.as_deref()) {
                    Some(e) => Child::Unchanged(e),
                    None => Child::Changed(meta, link),
                }
            } else {
                self.counts.skipped += 1;
                self.counts.warn(format!(
                    "skipped {}: not a regular file, directory or symlink (socket, FIFO or device)",
                    path.display()
                ));
                continue;
            };
            children.push((name, child));
        }

        let mut dumpdir = Vec::new();
        for (name, child) in &children {
            dumpdir.push(match child {
                Child::Dir(_) => b'D',
                Child::Changed(..) => b'Y',
                Child::Unchanged(_) => b'N',
            });
            dumpdir.extend_from_slice(name.as_bytes());
            dumpdir.push(0);
        }
        dumpdir.push(0);
        let mut header = Header::new_gnu();
        header.set_metadata_in_mode(meta, HeaderMode::Complete);
        header.set_entry_type(EntryType::new(super::DUMPDIR));
        header.set_size(dumpdir.len() as u64);
        let offset = self.tar.get_ref().bytes;
        // GNU tar names the top `./` and every directory with a trailing slash.
        let name = if rel.as_os_str().is_empty() {
            PathBuf::from("./")
        } else {
            let mut n = rel.as_os_str().to_os_string();
            n.push("/");
            PathBuf::from(n)
        };
        self.tar
            .append_data(&mut header, &name, dumpdir.as_slice())
            .map_err(io_err(&abs))?;
        if !rel.as_os_str().is_empty() {
            self.counts.dirs += 1;
            self.entries
                .push(index_entry(rel, Kind::Dir, meta, None, offset));
        }

        for (name, child) in children {
            let child_rel = rel.join(&name);
            let path = abs.join(&name);
            match child {
                Child::Dir(meta) => self.dir(&child_rel, &meta)?,
                Child::Unchanged(e) => {
                    match e.kind {
                        Kind::File => {
                            self.counts.files += 1;
                            self.counts.file_bytes += e.size;
                        }
                        _ => self.counts.symlinks += 1,
                    }
                    self.unchanged.push(e);
                }
                Child::Changed(meta, Some(link)) => {
                    let offset = self.tar.get_ref().bytes;
                    let mut header = Header::new_gnu();
                    header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                    header.set_entry_type(EntryType::Symlink);
                    header.set_size(0);
                    self.tar
                        .append_link(&mut header, &child_rel, &link)
                        .map_err(io_err(&path))?;
                    self.counts.symlinks += 1;
                    self.entries.push(index_entry(
                        &child_rel,
                        Kind::Symlink,
                        &meta,
                        Some(&link),
                        offset,
                    ));
                }
                Child::Changed(meta, None) => {
                    let offset = self.tar.get_ref().bytes;
                    let mut header = Header::new_gnu();
                    if let Some((size, sha256)) = append_file(
                        &mut self.tar,
                        &mut header,
                        &path,
                        &child_rel,
                        &meta,
                        &mut self.counts,
                    )? {
                        let mut e = index_entry(&child_rel, Kind::File, &meta, None, offset);
                        e.size = size;
                        e.sha256 = Some(sha256);
                        self.entries.push(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The base's entry for `rel`, refreshed from `meta`, when the entry did not change.
    fn unchanged_entry(
        &self,
        rel: &Path,
        path: &Path,
        meta: &std::fs::Metadata,
        link: Option<&Path>,
    ) -> Option<Entry> {
        let b = self.base.tree.get(rel.to_str()?)?;
        let kind = if link.is_some() {
            Kind::Symlink
        } else {
            Kind::File
        };
        let size = if kind == Kind::File { meta.len() } else { 0 };
        let same_shape = b.kind == kind
            && b.size == size
            && b.mtime == meta.mtime()
            && b.mode == meta.mode() & 0o7777
            && b.link.as_deref() == link.map(|l| l.to_string_lossy()).as_deref();
        if !same_shape {
            return None;
        }
        let same = match self.compare {
            Compare::Metadata => b.inode == Some(meta.ino()) && b.ctime_ns == Some(ctime_ns(meta)),
            Compare::Contents => {
                kind == Kind::Symlink || b.sha256.is_some() && b.sha256 == sha256_of(path, meta)
            }
        };
        if !same {
            return None;
        }
        let mut e = b.clone();
        e.offset = 0;
        e.inode = Some(meta.ino());
        e.ctime_ns = Some(ctime_ns(meta));
        Some(e)
    }
}

/// The sha256 of the regular file the walk saw at `path` (same inode, never a link);
/// `None` when it cannot be read as listed (then it counts as changed).
fn sha256_of(path: &Path, seen: &std::fs::Metadata) -> Option<String> {
    use sha2::Digest;
    let mut file = super::open_as_listed(path, seen).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(root: &Path) -> DirectorySpec {
        DirectorySpec {
            path: root.to_path_buf(),
            exclude: vec!["*.tmp".into()],
            allow_empty: false,
            incremental: None,
        }
    }

    fn inc(compare: Compare) -> IncrementalSpec {
        IncrementalSpec {
            full_every: std::time::Duration::from_secs(7 * 86400),
            chain: Chain::Differential,
            compare,
        }
    }

    fn base_of(root: &Path) -> Base {
        let mut out = Vec::new();
        let dumped = super::super::dump(&spec(root), &mut out).unwrap();
        Base::new("full".into(), 0, &dumped.index.unwrap())
    }

    /// (archived paths, unchanged paths, the dumpdir of the top directory).
    fn changes(root: &Path, base: &Base, compare: Compare) -> (Vec<String>, Vec<String>, Vec<u8>) {
        let mut out = Vec::new();
        let dumped = dump(&spec(root), &inc(compare), base, &mut out).unwrap();
        let index = dumped.index.unwrap();
        let mut archive = tar::Archive::new(out.as_slice());
        let mut top = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path_bytes().as_ref() == b"./" {
                assert_eq!(e.header().entry_type().as_byte(), b'D');
                e.read_to_end(&mut top).unwrap();
            }
        }
        let archived = index
            .entries
            .iter()
            .filter(|e| e.kind != Kind::Dir)
            .map(|e| e.path.clone())
            .collect();
        let unchanged = index.unchanged.iter().map(|e| e.path.clone()).collect();
        (archived, unchanged, top)
    }

    #[test]
    fn a_rewrite_that_keeps_size_and_mtime_is_seen_and_a_copy_is_judged_by_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("same.txt"), b"aaaa").unwrap();
        std::fs::write(root.join("copied.txt"), b"bbbb").unwrap();
        std::fs::write(root.join("sub/kept.txt"), b"cccc").unwrap();
        std::fs::write(root.join("skip.tmp"), b"excluded").unwrap();
        let base = base_of(root);
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        // Same size, and the mtime set back: only the ctime tells.
        let same = root.join("same.txt");
        let t = mtime(&same);
        std::fs::write(&same, b"AAAA").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&same)
            .unwrap()
            .set_modified(t)
            .unwrap();
        // Replaced by an identical copy (new inode, same bytes, same mtime).
        let copied = root.join("copied.txt");
        let t = mtime(&copied);
        std::fs::write(root.join("copy.new"), b"bbbb").unwrap();
        std::fs::rename(root.join("copy.new"), &copied).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&copied)
            .unwrap()
            .set_modified(t)
            .unwrap();

        let (archived, unchanged, top) = changes(root, &base, Compare::Metadata);
        assert_eq!(archived, vec!["copied.txt", "same.txt"]);
        assert_eq!(unchanged, vec!["sub/kept.txt"]);
        // GNU tar's dumpdir: every name of the directory, excluded ones left out.
        assert_eq!(top, b"Ycopied.txt\0Ysame.txt\0Dsub\0\0");

        // By contents, the identical copy is unchanged; the rewrite is not.
        let (archived, unchanged, top) = changes(root, &base, Compare::Contents);
        assert_eq!(archived, vec!["same.txt"]);
        assert_eq!(unchanged, vec!["copied.txt", "sub/kept.txt"]);
        assert_eq!(top, b"Ncopied.txt\0Ysame.txt\0Dsub\0\0");
    }

    /// A full written before incrementals existed has an index without inodes and
    /// ctimes: an incremental on it stores every file again (correct, if not small), and
    /// lists them all in its dumpdirs.
    #[test]
    fn a_base_from_before_incrementals_has_every_file_stored_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), b"aaaa").unwrap();
        std::fs::write(root.join("sub/b.txt"), b"bbbb").unwrap();
        let mut base = base_of(root);
        for e in base.tree.values_mut() {
            (e.inode, e.ctime_ns) = (None, None);
        }
        let (archived, unchanged, top) = changes(root, &base, Compare::Metadata);
        assert_eq!(archived, vec!["a.txt", "sub/b.txt"]);
        assert!(unchanged.is_empty());
        assert_eq!(top, b"Ya.txt\0Dsub\0\0");
    }

    #[test]
    fn a_full_every_under_an_hour_is_refused() {
        let mut s = inc(Compare::Metadata);
        assert!(s.check().is_ok());
        s.full_every = std::time::Duration::from_secs(60);
        assert!(s.check().unwrap_err().0.contains("full_every"));
    }
}
