//! Directory trees: dumped as a tar stream (regular files, directories, symlinks as
//! symlinks, permissions and mtimes kept; sockets, FIFOs and devices skipped with a
//! warning), restored by `unpack` without ever writing outside the restore directory.
//!
//! A file that changes while it is read must not corrupt the archive: the tar header has
//! already promised a size, so a file that shrinks is padded with zeros and one that grows
//! is cut at that size; either way the entry stays well-formed and a warning names it.

pub mod incremental;
pub mod index;
mod unpack;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use globset::{Glob, GlobBuilder, GlobMatcher};
use tar::{EntryType, Header, HeaderMode};

use super::{Dumped, SourceError, io_err};
use crate::snapshot::SourceStats;

pub use unpack::{DUMPDIR, Data, Select, Session, Unpack, restore, restore_selected};

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    pub path: std::path::PathBuf,
    /// Glob patterns: `*.tmp` matches a name at any depth, `cache/` directories only,
    /// `logs/*.gz` (with a slash) is anchored at the source root.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// An empty tree is usually an unmounted volume, so it fails unless this is set.
    #[serde(default)]
    pub allow_empty: bool,
    /// `incremental = { full_every = "7d" }`: store only what changed since a base
    /// snapshot (see `incremental`); absent: every run is a full.
    #[serde(default)]
    pub incremental: Option<incremental::IncrementalSpec>,
}

/// The `exclude` patterns of a directory source, compiled.
#[derive(Debug)]
pub struct Excludes {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    matcher: GlobMatcher,
    /// With a slash, a pattern is matched against the path from the source root;
    /// without, against the entry's name at any depth (like .gitignore).
    anchored: bool,
    dirs_only: bool,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Self, globset::Error> {
        let mut rules = Vec::new();
        for pattern in patterns {
            let dirs_only = pattern.ends_with('/');
            let trimmed = pattern.trim_end_matches('/');
            let anchored = trimmed.contains('/');
            let glob = if anchored {
                GlobBuilder::new(trimmed.trim_start_matches('/'))
                    .literal_separator(true)
                    .build()?
            } else {
                Glob::new(trimmed)?
            };
            rules.push(Rule {
                matcher: glob.compile_matcher(),
                anchored,
                dirs_only,
            });
        }
        Ok(Self { rules })
    }

    pub fn is_excluded(&self, relative: &Path, is_dir: bool) -> bool {
        self.rules.iter().any(|r| {
            if r.dirs_only && !is_dir {
                return false;
            }
            if r.anchored {
                r.matcher.is_match(relative)
            } else {
                relative
                    .file_name()
                    .is_some_and(|name| r.matcher.is_match(name))
            }
        })
    }
}

#[derive(Default)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    file_bytes: u64,
    skipped: u64,
    warnings: Vec<String>,
}

impl Counts {
    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.warnings.push(message);
    }
}

/// Writes the tree at `spec.path` as a tar stream into `out`.
pub fn dump(spec: &DirectorySpec, out: &mut dyn Write) -> Result<Dumped, SourceError> {
    let root = spec.path.as_path();
    let (_, excludes, mut tar) = start(spec, out)?;
    let mut counts = Counts::default();
    let mut entries: Vec<index::Entry> = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            !excludes.is_excluded(rel, e.file_type().is_dir())
        });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                // An unreadable subdirectory is reported, not fatal: the rest still counts.
                counts.skipped += 1;
                counts.warn(format!("skipped: {e}"));
                continue;
            }
        };
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("walkdir stays under its root");
        let ft = entry.file_type();
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            // Listed, then deleted before it could be looked at: the same as a file
            // deleted before it is opened.
            Err(e)
                if e.io_error()
                    .is_some_and(|io| io.kind() == io::ErrorKind::NotFound) =>
            {
                counts.skipped += 1;
                counts.warn(format!(
                    "skipped {}: deleted while backing up",
                    path.display()
                ));
                continue;
            }
            Err(e) => {
                return Err(SourceError::Io {
                    path: path.into(),
                    source: e.into(),
                });
            }
        };
        let mut header = Header::new_gnu();
        header.set_metadata_in_mode(&meta, HeaderMode::Complete);
        let offset = tar.get_ref().bytes;
        let indexed = |kind, link: Option<&Path>| index_entry(rel, kind, &meta, link, offset);
        if ft.is_dir() {
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty())
                .map_err(io_err(path))?;
            counts.dirs += 1;
            entries.push(indexed(index::Kind::Dir, None));
        } else if ft.is_symlink() {
            let link = match std::fs::read_link(path) {
                Ok(link) => link,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    counts.skipped += 1;
                    counts.warn(format!(
                        "skipped {}: deleted while backing up",
                        path.display()
                    ));
                    continue;
                }
                Err(e) => return Err(io_err(path)(e)),
            };
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, rel, &link)
                .map_err(io_err(path))?;
            counts.symlinks += 1;
            entries.push(indexed(index::Kind::Symlink, Some(&link)));
        } else if ft.is_file() {
            if let Some((size, sha256)) =
                append_file(&mut tar, &mut header, path, rel, &meta, &mut counts)?
            {
                let mut e = indexed(index::Kind::File, None);
                e.size = size;
                e.sha256 = Some(sha256);
                entries.push(e);
            }
        } else {
            counts.skipped += 1;
            counts.warn(format!(
                "skipped {}: not a regular file, directory or symlink (socket, FIFO or device)",
                path.display()
            ));
        }
    }
    finish(spec, tar, counts, entries, Vec::new())
}

/// The start of a dump, full or incremental: the root's metadata (it must be a
/// directory), the compiled excludes, and an archive that counts its bytes (the index's
/// offsets) and never follows a link.
type Started<'o> = (std::fs::Metadata, Excludes, tar::Builder<Counting<'o>>);

fn start<'o>(spec: &DirectorySpec, out: &'o mut dyn Write) -> Result<Started<'o>, SourceError> {
    let root = spec.path.as_path();
    let meta = root_metadata(root)?;
    let excludes = Excludes::new(&spec.exclude).map_err(|e| SourceError::Invalid {
        path: root.into(),
        what: format!("bad exclude pattern: {e}"),
    })?;
    let mut tar = tar::Builder::new(Counting {
        inner: out,
        bytes: 0,
    });
    tar.follow_symlinks(false);
    Ok((meta, excludes, tar))
}

/// The end of a dump, full or incremental: an empty tree fails (unless allowed), the
/// archive is closed, the counts become the stats and the entries the index.
fn finish(
    spec: &DirectorySpec,
    tar: tar::Builder<Counting<'_>>,
    counts: Counts,
    entries: Vec<index::Entry>,
    unchanged: Vec<index::Entry>,
) -> Result<Dumped, SourceError> {
    let root = spec.path.as_path();
    if counts.files + counts.dirs + counts.symlinks == 0 && !spec.allow_empty {
        return Err(SourceError::Empty { path: root.into() });
    }
    tar.into_inner().map_err(io_err(root))?;
    Ok(Dumped {
        stats: SourceStats::Tree {
            files: counts.files,
            dirs: counts.dirs,
            symlinks: counts.symlinks,
            file_bytes: counts.file_bytes,
            skipped: counts.skipped,
        },
        warnings: counts.warnings,
        index: Some(index::Index {
            format: index::FORMAT,
            entries,
            members: Vec::new(),
            member_bytes: 0,
            unchanged,
        }),
    })
}

/// The metadata of a source's root, which must be a directory.
fn root_metadata(root: &Path) -> Result<std::fs::Metadata, SourceError> {
    let meta = std::fs::metadata(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SourceError::Missing { path: root.into() },
        _ => io_err(root)(e),
    })?;
    if !meta.is_dir() {
        return Err(SourceError::Invalid {
            path: root.into(),
            what: "is not a directory (use kind = \"sqlite\" for a database file)".into(),
        });
    }
    Ok(meta)
}

/// Why a listed regular file was not opened.
#[derive(Debug)]
enum NotOpened {
    Replaced,
    /// `O_NOFOLLOW` met a symlink that took the file's place.
    Symlink,
    Deleted,
    Unopenable(io::Error),
    /// Opened, but its metadata could not be read: an I/O error, not a skip.
    Unreadable(io::Error),
}

impl std::fmt::Display for NotOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotOpened::Replaced => write!(f, "replaced by something else while backing up"),
            NotOpened::Symlink => write!(f, "replaced by a symlink while backing up"),
            NotOpened::Deleted => write!(f, "deleted while backing up"),
            NotOpened::Unopenable(e) => write!(f, "cannot open: {e}"),
            NotOpened::Unreadable(e) => write!(f, "cannot read its metadata: {e}"),
        }
    }
}

/// Opens the regular file the walk saw at `path` (`seen`: its metadata then) without
/// following a link and without blocking, and only if what is there now is still that
/// file (same device and inode): a file swapped for a FIFO, a device or a symlink to a
/// secret between listing and opening is never read. The full dump and the incremental
/// one (archiving, or hashing to compare contents) open files only through this.
fn open_as_listed(path: &Path, seen: &std::fs::Metadata) -> Result<File, NotOpened> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    match opened {
        Ok(f) => match f.metadata() {
            Ok(now) if now.is_file() && now.dev() == seen.dev() && now.ino() == seen.ino() => Ok(f),
            Ok(_) => Err(NotOpened::Replaced),
            Err(e) => Err(NotOpened::Unreadable(e)),
        },
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(NotOpened::Symlink),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NotOpened::Deleted),
        Err(e) => Err(NotOpened::Unopenable(e)),
    }
}

/// Appends the regular file the walk saw at `path` (`seen`: its metadata then), opened by
/// [`open_as_listed`]; one it will not open is skipped with a warning naming why, never
/// read. Returns the size and sha256 of what was archived, `None` when the file was skipped.
fn append_file(
    tar: &mut tar::Builder<Counting<'_>>,
    header: &mut Header,
    path: &Path,
    rel: &Path,
    seen: &std::fs::Metadata,
    counts: &mut Counts,
) -> Result<Option<(u64, String)>, SourceError> {
    let file = match open_as_listed(path, seen) {
        Ok(file) => file,
        Err(NotOpened::Unreadable(e)) => return Err(io_err(path)(e)),
        Err(not) => {
            counts.skipped += 1;
            counts.warn(format!("skipped {}: {not}", path.display()));
            return Ok(None);
        }
    };
    // Size and mtime from the open file, so the header matches what we are about to read.
    let before = file.metadata().map_err(io_err(path))?;
    header.set_metadata_in_mode(&before, HeaderMode::Complete);
    let size = before.len();
    let mut reader = FixedSize {
        inner: file,
        remaining: size,
        padded: 0,
        path: path.to_path_buf(),
        sha256: sha2::Sha256::default(),
    };
    tar.append_data(header, rel, &mut reader)
        .map_err(io_err(path))?;
    let after = reader.inner.metadata().map_err(io_err(path))?;
    if reader.padded > 0 {
        counts.warn(format!(
            "{} shrank while being read; its last {} bytes are stored as zeros",
            path.display(),
            reader.padded
        ));
    } else if after.len() != size || modified(&after) != modified(&before) {
        counts.warn(format!(
            "{} changed while being read; the stored copy may be inconsistent",
            path.display()
        ));
    }
    counts.files += 1;
    counts.file_bytes += size;
    let sha256 = hex::encode(sha2::Digest::finalize(reader.sha256));
    Ok(Some((size, sha256)))
}

/// The index entry of what the walk saw at `rel` (size and sha256 are a file's, set by
/// the caller once it is archived).
fn index_entry(
    rel: &Path,
    kind: index::Kind,
    meta: &std::fs::Metadata,
    link: Option<&Path>,
    offset: u64,
) -> index::Entry {
    use std::os::unix::fs::MetadataExt;
    index::Entry {
        path: rel.to_string_lossy().into_owned(),
        kind,
        size: 0,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        link: link.map(|l| l.to_string_lossy().into_owned()),
        offset,
        sha256: None,
        inode: Some(meta.ino()),
        ctime_ns: Some(ctime_ns(meta)),
    }
}

/// The status-change time in nanoseconds, as the index records it.
pub(crate) fn ctime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec()
}

fn modified(meta: &std::fs::Metadata) -> Option<SystemTime> {
    meta.modified().ok()
}

/// Yields exactly `remaining` bytes: the file's bytes, then zeros if it ended early;
/// hashes what it yields (what the archive holds) for the index.
struct FixedSize {
    inner: File,
    remaining: u64,
    padded: u64,
    path: PathBuf,
    sha256: sha2::Sha256,
}

/// Counts the bytes of the tar stream, so each entry's offset is known for the index.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    bytes: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Read for FixedSize {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = if self.padded > 0 {
            0
        } else {
            self.inner.read(&mut buf[..want]).map_err(|e| {
                io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display()))
            })?
        };
        if n == 0 {
            buf[..want].fill(0);
            sha2::Digest::update(&mut self.sha256, &buf[..want]);
            self.padded += want as u64;
            self.remaining -= want as u64;
            return Ok(want);
        }
        sha2::Digest::update(&mut self.sha256, &buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Runs restore's own unpack (every path, link, duplicate and type rule) into the scratch
/// directory with sparse files, then compares what it restored with the manifest's counts.
/// An archive restore would refuse fails here, naming the entry; entries restore would
/// leave out are named in the detail.
pub fn test_restore(
    reader: &mut dyn std::io::Read,
    expected: [u64; 4],
    scratch: &std::path::Path,
) -> Result<Vec<crate::snapshot::record::Check>, SourceError> {
    let how = Unpack {
        overwrite: false,
        same_owner: false,
        data: Data::Sparse,
    };
    let r = match restore(reader, &scratch.join("tree"), how) {
        Ok(r) => r,
        Err(e) => {
            return Ok(vec![crate::snapshot::record::Check::fail(
                "restore rules",
                e.to_string(),
            )]);
        }
    };
    let rules = if r.warnings.is_empty() {
        crate::snapshot::record::Check::pass("restore rules", "every entry restores as archived")
    } else {
        crate::snapshot::record::Check::pass(
            "restore rules",
            format!("restore would leave out: {}", r.warnings.join("; ")),
        )
    };
    let mut checks = vec![rules];
    checks.extend(count_checks(expected, &r));
    Ok(checks)
}

/// A test-restore's counts against what the manifest recorded (`[files, dirs, symlinks,
/// file bytes]`): of one archive, or of a whole incremental chain.
pub fn count_checks(
    expected: [u64; 4],
    r: &crate::source::Restored,
) -> Vec<crate::snapshot::record::Check> {
    use crate::snapshot::record::Check;
    vec![
        Check::compare("file count", expected[0], r.files),
        Check::compare("directory count", expected[1], r.dirs),
        Check::compare("symlink count", expected[2], r.symlinks + r.links_skipped),
        Check::compare("file bytes", expected[3], r.bytes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(patterns: &[&str], rel: &str, is_dir: bool) -> bool {
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        Excludes::new(&patterns)
            .unwrap()
            .is_excluded(Path::new(rel), is_dir)
    }

    #[test]
    fn exclude_patterns_follow_gitignore_habits() {
        assert!(excluded(&["*.tmp"], "a.tmp", false));
        assert!(excluded(&["*.tmp"], "deep/er/a.tmp", false));
        assert!(!excluded(&["*.tmp"], "a.tmpx", false));
        assert!(excluded(&["cache/"], "x/cache", true));
        assert!(!excluded(&["cache/"], "x/cache", false), "dir-only pattern");
        assert!(excluded(&["logs/*.gz"], "logs/a.gz", false));
        assert!(
            !excluded(&["logs/*.gz"], "sub/logs/a.gz", false),
            "anchored"
        );
        assert!(
            !excluded(&["logs/*.gz"], "logs/deep/a.gz", false),
            "* stops at /"
        );
        assert!(excluded(&["/top"], "top", true));
        assert!(!excluded(&[], "anything", false));
    }

    /// What the walk listed, swapped before it is opened: each is skipped by name, and
    /// nothing blocks (a FIFO would hang a plain open forever).
    #[test]
    fn a_file_swapped_after_listing_is_skipped_not_followed_or_blocked_on() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        for swap in ["fifo", "symlink", "other file"] {
            let path = dir.path().join("f");
            std::fs::write(&path, "listed").unwrap();
            let seen = std::fs::metadata(&path).unwrap();
            // Made while the listed one still exists, so the inode number differs.
            let other = dir.path().join("f.new");
            std::fs::write(&other, "a new inode").unwrap();
            std::fs::remove_file(&path).unwrap();
            match swap {
                "fifo" => rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap(),
                "symlink" => std::os::unix::fs::symlink(&secret, &path).unwrap(),
                _ => std::fs::rename(&other, &path).unwrap(),
            }
            let _ = std::fs::remove_file(&other);
            let mut out: Vec<u8> = Vec::new();
            let sink: &mut dyn Write = &mut out;
            let mut tar = tar::Builder::new(Counting {
                inner: sink,
                bytes: 0,
            });
            let mut counts = Counts::default();
            let mut header = Header::new_gnu();
            append_file(
                &mut tar,
                &mut header,
                &path,
                Path::new("f"),
                &seen,
                &mut counts,
            )
            .unwrap();
            assert_eq!((counts.files, counts.skipped), (0, 1), "{swap}");
            assert!(
                counts.warnings[0].contains("skipped"),
                "{swap}: {:?}",
                counts.warnings
            );
            drop(tar);
            assert!(
                !String::from_utf8_lossy(&out).contains("root only"),
                "{swap}"
            );
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_file_that_shrinks_keeps_the_archive_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let file = File::open(&path).unwrap();
        // The header promised 10 000 bytes; the file now holds 4 000.
        std::fs::write(&path, vec![7u8; 4_000]).unwrap();
        let mut r = FixedSize {
            inner: file,
            remaining: 10_000,
            padded: 0,
            path: path.clone(),
            sha256: sha2::Sha256::default(),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(r.padded, 6_000);
        assert!(out[..4_000].iter().all(|&b| b == 7));
        assert!(out[4_000..].iter().all(|&b| b == 0));
    }
}
