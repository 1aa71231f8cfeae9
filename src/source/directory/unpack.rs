//! Restoring a tar stream into a directory, treating the archive as untrusted input. One
//! engine serves `restore` and `verify` (verify runs it with [`Data::Sparse`] into a
//! private scratch directory), so a snapshot verifies exactly when it would restore.
//!
//! The restore rules, written for operators in BACKUP_POLICY.md ("Restore rules"):
//! 1. **Names.** An entry's name is relative, has no `..`, no NUL, at most 4096 bytes and
//!    255 per component; anything else refuses the restore, naming the entry.
//! 2. **Nothing is followed.** Every operation starts from a handle on the restore
//!    directory and opens each parent component with `O_NOFOLLOW`; an entry whose parent is
//!    a symlink or a file refuses the restore. Files are created fresh (`O_CREAT|O_EXCL|
//!    O_NOFOLLOW`; with `--force` an existing non-directory is unlinked first, never opened)
//!    and modes, owners and times are set through the open handle, or with
//!    `AT_SYMLINK_NOFOLLOW` on a link itself.
//! 3. **Each path once.** A second entry for the same path refuses the restore (backupd's
//!    own archives never repeat one; a repeat is how an archive swaps a file for a link).
//! 4. **Hard links** only to a regular file this same archive restored before.
//! 5. **Symlinks that leave the directory are skipped** with a warning naming them: an
//!    absolute target, or a relative one leaving it by its names, is never created; and once
//!    every entry is in place each created link is resolved against what is physically on
//!    disk (through the other restored links) and removed, with a warning, if it leads out
//!    or cannot be resolved. Repeated until nothing changes, since one removal can change
//!    what another link resolves to.
//! 6. **Directories** are created 0700 while restoring; their modes, owners and times are
//!    applied at the end, deepest first, only to directories this restore created.
//! 7. **Owners and special bits** (GNU tar's rule): as root, numeric uid/gid from the archive
//!    are restored (unless `--no-same-owner`); otherwise setuid/setgid are dropped and the
//!    output says so. Devices, FIFOs and sockets are never created (skipped with a warning).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::source::{Restored, SourceError, io_err};

/// How file contents are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// A restore: every byte lands in the file.
    Write,
    /// A verification: files get their size (sparse, no blocks) and the data is read and
    /// discarded, so every rule runs but the disk holds no copy of the tree.
    Sparse,
}

/// How one unpack behaves beyond the fixed rules.
#[derive(Debug, Clone, Copy)]
pub struct Unpack {
    /// Replace existing non-directories in the restore directory (`--force`).
    pub overwrite: bool,
    /// Restore numeric owners (only honoured when running as root).
    pub same_owner: bool,
    pub data: Data,
}

/// GNU tar's type flag of an incremental archive's directory entry.
pub const DUMPDIR: u8 = b'D';
const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;
/// Link hops while resolving one symlink, as the kernel's own limit.
const MAX_HOPS: usize = 40;
/// Names shown in one summary warning before "and N more".
const SHOWN: usize = 5;

/// Which archived paths a restore writes (`restore --include/--exclude`): called with the
/// entry's path as archived and whether it is a directory.
pub type Select<'a> = &'a dyn Fn(&str, bool) -> bool;

/// Restores the tar stream `input` into `dest` by the rules above.
pub fn restore(input: &mut dyn Read, dest: &Path, how: Unpack) -> Result<Restored, SourceError> {
    restore_selected(input, dest, how, &|_, _| true)
}

/// Restores the entries of `input` that `select` accepts, by the same rules: every entry
/// is still checked (names, duplicates) and read past; missing parents of a selected
/// entry are created; a hard link to an entry left out is left out too, with a warning.
pub fn restore_selected(
    input: &mut dyn Read,
    dest: &Path,
    how: Unpack,
    select: Select<'_>,
) -> Result<Restored, SourceError> {
    let mut session = Session::new(dest, how)?;
    session.feed(input, select)?;
    session.finish()
}

/// One restore made of several archives (a full and the incrementals after it), fed
/// oldest first into the same directory: each archive is held to every rule on its own
/// (names, each path once, hard links within it), `select` says which of its entries
/// land, and the links and directory modes of the whole restore are settled once, at
/// [`Session::finish`].
pub struct Session {
    tree: Tree,
}

impl Session {
    pub fn new(dest: &Path, how: Unpack) -> Result<Self, SourceError> {
        std::fs::create_dir_all(dest).map_err(io_err(dest))?;
        let root = rustix::fs::open(
            dest,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(dest)(e.into()))?;
        Ok(Self {
            tree: Tree {
                root,
                dest: dest.to_path_buf(),
                how,
                as_owner: how.same_owner && rustix::process::geteuid().is_root(),
                parent_cache: None,
                seen: HashSet::new(),
                created_dirs: Vec::new(),
                dir_index: HashMap::new(),
                links: Vec::new(),
                dropped_bits: Vec::new(),
                left_out: HashSet::new(),
                out: Restored::default(),
            },
        })
    }

    /// Restores the entries of one archive that `select` accepts.
    pub fn feed(&mut self, input: &mut dyn Read, select: Select<'_>) -> Result<(), SourceError> {
        let tree = &mut self.tree;
        // "Each path once" and hard links hold within one archive.
        tree.seen.clear();
        tree.left_out.clear();
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().map_err(io_err(&tree.dest))? {
            let mut entry = entry.map_err(io_err(&tree.dest))?;
            tree.entry(&mut entry, select)?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Restored, SourceError> {
        self.tree.finish()
    }
}

/// A path inside the restore directory, as checked components.
type Parts = Vec<OsString>;

/// What the archive says about a node beyond its name.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    /// Seconds since the epoch; negative for "leave the time alone".
    mtime: i64,
    /// Numeric uid and gid, when owners are restored.
    owner: Option<(u32, u32)>,
}

struct DirFix {
    parts: Parts,
    meta: Meta,
}

struct Tree {
    root: OwnedFd,
    dest: PathBuf,
    how: Unpack,
    as_owner: bool,
    /// The last parent opened: tar streams list siblings together, so most entries reuse it.
    parent_cache: Option<(Parts, Rc<OwnedFd>)>,
    /// Paths restored so far, as 128-bit digests: 16 bytes an entry keeps memory bounded
    /// for millions of entries.
    seen: HashSet<[u8; 16]>,
    created_dirs: Vec<DirFix>,
    dir_index: HashMap<[u8; 16], usize>,
    links: Vec<Parts>,
    dropped_bits: Vec<String>,
    /// Entries `select` left out, so a hard link to one is left out too.
    left_out: HashSet<[u8; 16]>,
    out: Restored,
}

fn key(parts: &[OsString]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// An entry's name as shown to an operator: lossy, NUL made visible, long names cut.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).replace('\0', "\\0");
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], bytes.len()),
        None => text,
    }
}

fn show_parts(parts: &[OsString]) -> String {
    let joined: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    shown(&joined.join(&b'/'))
}

fn unsafe_entry(entry: impl Into<String>, why: impl Into<String>) -> SourceError {
    SourceError::Unsafe {
        entry: entry.into(),
        why: why.into(),
    }
}

/// Rule 1: the checked components of an untrusted name; `.` components are dropped.
fn checked_parts(raw: &[u8]) -> Result<Parts, SourceError> {
    let name = shown(raw);
    if raw.contains(&0) {
        return Err(unsafe_entry(name, "its name contains a NUL byte"));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(unsafe_entry(
            name,
            format!("its name is longer than {MAX_PATH_BYTES} bytes"),
        ));
    }
    let mut parts = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(p) if p.len() > MAX_NAME_BYTES => {
                return Err(unsafe_entry(
                    name,
                    format!("a component is longer than {MAX_NAME_BYTES} bytes"),
                ));
            }
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry(name, "it contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(name, "it is an absolute path"));
            }
        }
    }
    Ok(parts)
}

/// Whether a relative symlink target, placed in `parent`, leaves the root by its names.
fn leaves_by_name(parent: &[OsString], target: &[u8]) -> bool {
    let mut depth = parent.len() as i64;
    for c in Path::new(OsStr::from_bytes(target)).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

impl Tree {
    fn path_of(&self, parts: &[OsString]) -> PathBuf {
        parts.iter().fold(self.dest.clone(), |p, c| p.join(c))
    }

    fn io(&self, parts: &[OsString]) -> impl Fn(Errno) -> SourceError + '_ {
        let path = self.path_of(parts);
        move |e| io_err(&path)(errno_io(e))
    }

    /// Opens the directory `parts` with no symlink followed, creating missing components
    /// (0700, finished at the end) when `create`.
    fn open_dir(&mut self, parts: &[OsString], create: bool) -> Result<OwnedFd, SourceError> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut cur =
            rustix::fs::openat(&self.root, ".", flags, Mode::empty()).map_err(self.io(&[]))?;
        for (i, name) in parts.iter().enumerate() {
            let opened = match rustix::fs::openat(&cur, name.as_os_str(), flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                        Ok(()) => self.record_dir(&parts[..=i], None),
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.io(&parts[..=i])(e)),
                    }
                    rustix::fs::openat(&cur, name.as_os_str(), flags, Mode::empty())
                }
                other => other,
            };
            cur = match opened {
                Ok(fd) => fd,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(unsafe_entry(
                        show_parts(parts),
                        format!(
                            "{} is a symlink or a file, and restore never writes through one",
                            show_parts(&parts[..=i])
                        ),
                    ));
                }
                Err(e) => return Err(self.io(&parts[..=i])(e)),
            };
        }
        Ok(cur)
    }

    /// The parent directory of an entry, from the cache when it is the last one used.
    fn parent(&mut self, dirs: &[OsString]) -> Result<Rc<OwnedFd>, SourceError> {
        if let Some((p, fd)) = &self.parent_cache
            && p.as_slice() == dirs
        {
            return Ok(fd.clone());
        }
        let fd = Rc::new(self.open_dir(dirs, true)?);
        self.parent_cache = Some((dirs.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Remembers a directory this restore created, with its archive metadata if explicit.
    fn record_dir(&mut self, parts: &[OsString], meta: Option<Meta>) {
        let k = key(parts);
        // A parent the archive never named gets the usual 0755 and keeps its time.
        let meta = meta.unwrap_or(Meta {
            mode: 0o755,
            mtime: -1,
            owner: None,
        });
        if let Some(&i) = self.dir_index.get(&k) {
            self.created_dirs[i].meta = meta;
            return;
        }
        self.dir_index.insert(k, self.created_dirs.len());
        self.created_dirs.push(DirFix {
            parts: parts.to_vec(),
            meta,
        });
    }

    /// The mode to apply: setuid/setgid only survive with their owner (rule 7).
    fn mode_for(&mut self, parts: &[OsString], mode: u32) -> u32 {
        let mode = mode & 0o7777;
        if mode & 0o6000 != 0 && !self.as_owner {
            if self.how.data == Data::Write {
                self.dropped_bits.push(show_parts(parts));
            }
            return mode & !0o6000;
        }
        mode
    }

    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.out.warnings.push(message);
    }

    /// With `--force`, clears a non-directory in the way; a directory is never replaced.
    fn clear(&mut self, dirs: &[OsString], parts: &[OsString]) -> Result<(), SourceError> {
        let name = parts.last().expect("an entry has a name").clone();
        let overwrite = self.how.overwrite;
        let parent = self.parent(dirs)?;
        match rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(parts)(e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(unsafe_entry(
                    show_parts(parts),
                    "a directory of that name is already there",
                ))
            }
            Ok(_) if !overwrite => Err(SourceError::Invalid {
                path: self.path_of(parts),
                what: "already exists (use --force to overwrite)".into(),
            }),
            Ok(_) => rustix::fs::unlinkat(&parent, name.as_os_str(), AtFlags::empty())
                .map_err(self.io(parts)),
        }
    }

    fn entry(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        select: Select<'_>,
    ) -> Result<(), SourceError> {
        let raw = entry.path_bytes().into_owned();
        let parts = checked_parts(&raw)?;
        let kind = match entry.header().entry_type() {
            // GNU tar's incremental directory (a "dumpdir": the names the directory held).
            // Restored as a directory; which entries exist comes from the chain's index.
            k if k.as_byte() == DUMPDIR => EntryType::Directory,
            k => k,
        };
        let Some((_, dirs)) = parts.split_last() else {
            // The restore directory itself (`./`): its mode is the operator's, not the archive's.
            return Ok(());
        };
        let dirs = dirs.to_vec();
        let supported = matches!(
            kind,
            EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Regular
                | EntryType::Continuous
                | EntryType::GNUSparse
        );
        if !supported {
            self.warn(format!(
                "skipped {}: unsupported entry type {kind:?} (devices, FIFOs and sockets are never created)",
                show_parts(&parts)
            ));
            self.out.skipped += 1;
            return Ok(());
        }
        if !self.seen.insert(key(&parts)) {
            return Err(unsafe_entry(
                show_parts(&parts),
                "it appears twice in the archive",
            ));
        }
        let full: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        if !select(
            &String::from_utf8_lossy(&full.join(&b'/')),
            kind == EntryType::Directory,
        ) {
            self.left_out.insert(key(&parts));
            return Ok(());
        }
        if kind == EntryType::Link {
            let target = entry.link_name_bytes().unwrap_or_default().into_owned();
            if let Ok(target_parts) = checked_parts(&target)
                && self.left_out.contains(&key(&target_parts))
            {
                self.warn(format!(
                    "not restored: {}, a hard link to {}, which the selection leaves out",
                    show_parts(&parts),
                    show_parts(&target_parts)
                ));
                return Ok(());
            }
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().unwrap_or(0) as i64;
        let owner = match (self.as_owner, header.uid(), header.gid()) {
            (true, Ok(uid), Ok(gid)) => Some((uid as u32, gid as u32)),
            _ => None,
        };
        let done = match kind {
            EntryType::Directory => self.directory(&dirs, &parts, mode, mtime, owner),
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.symlink(&dirs, &parts, &target, mtime, owner)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hard_link(&dirs, &parts, &target)
            }
            _ => self.file(entry, &dirs, &parts, mode, mtime, owner),
        };
        // A refusal found on the way (a parent that is a link) names the entry itself.
        done.map_err(|e| match e {
            SourceError::Unsafe { entry, why } if !entry.starts_with(&show_parts(&parts)) => {
                SourceError::Unsafe {
                    entry: show_parts(&parts),
                    why,
                }
            }
            other => other,
        })
    }

    fn directory(
        &mut self,
        dirs: &[OsString],
        parts: &[OsString],
        mode: u32,
        mtime: i64,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SourceError> {
        let name = parts.last().expect("named").clone();
        let overwrite = self.how.overwrite;
        let parent = self.parent(dirs)?;
        let made = rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700));
        match made {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(&parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(self.io(parts))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    if !overwrite {
                        return Err(unsafe_entry(
                            show_parts(parts),
                            "something that is not a directory is already there (use --force to replace it)",
                        ));
                    }
                    rustix::fs::unlinkat(&parent, name.as_os_str(), AtFlags::empty())
                        .map_err(self.io(parts))?;
                    rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(self.io(parts))?;
                } else if !self.dir_index.contains_key(&key(parts)) {
                    // There before this restore: left as it is (rule 6).
                    self.out.dirs += 1;
                    return Ok(());
                }
            }
            Err(e) => return Err(self.io(parts)(e)),
        }
        let mode = self.mode_for(parts, mode);
        self.record_dir(parts, Some(Meta { mode, mtime, owner }));
        self.out.dirs += 1;
        Ok(())
    }

    fn file(
        &mut self,
        entry: &mut tar::Entry<'_, &mut dyn Read>,
        dirs: &[OsString],
        parts: &[OsString],
        mode: u32,
        mtime: i64,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SourceError> {
        self.clear(dirs, parts)?;
        let name = parts.last().expect("named").clone();
        let parent = self.parent(dirs)?;
        let fd = rustix::fs::openat(
            &parent,
            name.as_os_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(self.io(parts))?;
        let path = self.path_of(parts);
        let mut file = std::fs::File::from(fd);
        let size = entry.header().size().unwrap_or(0);
        let copied = match self.how.data {
            Data::Write => io::copy(entry, &mut file),
            Data::Sparse => rustix::fs::ftruncate(&file, size)
                .map_err(errno_io)
                .and_then(|()| io::copy(entry, &mut io::sink())),
        }
        .map_err(|e| SourceError::Io {
            path: path.clone(),
            source: e,
        })?;
        if copied != size {
            return Err(SourceError::Io {
                path,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the archive ends inside this file ({copied} of {size} bytes)"),
                ),
            });
        }
        let mode = self.mode_for(parts, mode);
        self.finish_node(file.as_fd(), parts, mode, mtime, owner)?;
        self.out.files += 1;
        self.out.bytes += copied;
        Ok(())
    }

    /// Owner, then mode (a chown clears setuid), then times, all through the handle.
    fn finish_node(
        &self,
        fd: impl AsFd,
        parts: &[OsString],
        mode: u32,
        mtime: i64,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SourceError> {
        if self.how.data == Data::Sparse {
            // Verification keeps its scratch files private and removable.
            return Ok(());
        }
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(self.io(parts))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(self.io(parts))?;
        if mtime >= 0 {
            rustix::fs::futimens(&fd, &times(mtime)).map_err(self.io(parts))?;
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        dirs: &[OsString],
        parts: &[OsString],
        target: &[u8],
    ) -> Result<(), SourceError> {
        let refuse = |why: String| {
            unsafe_entry(
                format!("{} (a hard link to {})", show_parts(parts), shown(target)),
                why,
            )
        };
        let target_parts = checked_parts(target).map_err(|e| match e {
            SourceError::Unsafe { why, .. } => refuse(why),
            other => other,
        })?;
        let Some((target_name, target_dirs)) = target_parts.split_last() else {
            return Err(refuse("it links to the restore directory itself".into()));
        };
        if target_parts == parts || !self.seen.contains(&key(&target_parts)) {
            return Err(refuse(
                "its target is not a file restored earlier from this archive".into(),
            ));
        }
        let from = self.open_dir(target_dirs, false)?;
        let st = rustix::fs::statat(&from, target_name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW);
        if !st.is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile) {
            return Err(refuse("its target is not a regular file".into()));
        }
        self.clear(dirs, parts)?;
        let name = parts.last().expect("named").clone();
        let parent = self.parent(dirs)?;
        rustix::fs::linkat(
            &from,
            target_name.as_os_str(),
            &parent,
            name.as_os_str(),
            AtFlags::empty(),
        )
        .map_err(self.io(parts))?;
        self.out.files += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        dirs: &[OsString],
        parts: &[OsString],
        target: &[u8],
        mtime: i64,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SourceError> {
        if target.is_empty() || target.contains(&0) || leaves_by_name(dirs, target) {
            self.skip_link(parts, target);
            return Ok(());
        }
        self.clear(dirs, parts)?;
        let name = parts.last().expect("named").clone();
        let sparse = self.how.data == Data::Sparse;
        let parent = self.parent(dirs)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), &parent, name.as_os_str())
            .map_err(self.io(parts))?;
        if !sparse {
            if let Some((uid, gid)) = owner {
                rustix::fs::chownat(
                    &parent,
                    name.as_os_str(),
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(self.io(parts))?;
            }
            if mtime >= 0 {
                rustix::fs::utimensat(
                    &parent,
                    name.as_os_str(),
                    &times(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(self.io(parts))?;
            }
        }
        self.links.push(parts.to_vec());
        self.out.symlinks += 1;
        Ok(())
    }

    fn skip_link(&mut self, parts: &[OsString], target: &[u8]) {
        self.warn(format!(
            "skipped symlink {} -> {}: it points outside the restore directory",
            show_parts(parts),
            shown(target)
        ));
        self.out.links_skipped += 1;
    }

    /// Rule 5's second half, then rule 6, then the summary of dropped bits.
    fn finish(mut self) -> Result<Restored, SourceError> {
        self.parent_cache = None;
        loop {
            let mut removed = false;
            let links = std::mem::take(&mut self.links);
            for parts in links {
                match self.resolves_inside(&parts)? {
                    Some(true) => self.links.push(parts),
                    Some(false) | None => {
                        let (name, dirs) = parts.split_last().expect("named");
                        let parent = self.open_dir(dirs, false)?;
                        let target = rustix::fs::readlinkat(&parent, name.as_os_str(), Vec::new())
                            .map_err(self.io(&parts))?;
                        rustix::fs::unlinkat(&parent, name.as_os_str(), AtFlags::empty())
                            .map_err(self.io(&parts))?;
                        self.skip_link(&parts, target.as_bytes());
                        self.out.symlinks -= 1;
                        removed = true;
                    }
                }
            }
            if !removed {
                break;
            }
        }
        // Children were recorded after their parents: reversed, deepest comes first.
        let dirs = std::mem::take(&mut self.created_dirs);
        for d in dirs.iter().rev() {
            if self.how.data == Data::Sparse {
                break;
            }
            let fd = self.open_dir_for_metadata(&d.parts)?;
            let Meta { mode, mtime, owner } = d.meta;
            self.finish_node(&fd, &d.parts, mode, mtime, owner)?;
        }
        if !self.dropped_bits.is_empty() {
            let n = self.dropped_bits.len();
            let mut names = self.dropped_bits[..n.min(SHOWN)].join(", ");
            if n > SHOWN {
                names.push_str(&format!(" and {} more", n - SHOWN));
            }
            self.warn(format!(
                "dropped setuid/setgid from {n} entries, because their owners are not restored (restore as root to keep both): {names}"
            ));
        }
        Ok(self.out)
    }

    /// A real (not `O_PATH`) handle on a directory this restore created, for fchmod & co.
    fn open_dir_for_metadata(&mut self, parts: &[OsString]) -> Result<OwnedFd, SourceError> {
        let (name, dirs) = parts.split_last().expect("named");
        let parent = self.open_dir(dirs, false)?;
        rustix::fs::openat(
            &parent,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.io(parts))
    }

    /// Follows the link at `parts` through what is on disk now. `Some(true)`: it stays
    /// inside (or dangles inside); `Some(false)`: it leads out; `None`: too many hops.
    fn resolves_inside(&self, parts: &[OsString]) -> Result<Option<bool>, SourceError> {
        let (name, dirs) = parts.split_last().expect("named");
        let mut stack: Vec<OsString> = dirs.to_vec();
        let mut todo: std::collections::VecDeque<OsString> = [name.clone()].into();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if stack.pop().is_none() {
                        return Ok(Some(false));
                    }
                    continue;
                }
                _ => stack.push(c),
            }
            let rel = OsStr::from_bytes(
                &stack
                    .iter()
                    .map(|p| p.as_bytes())
                    .collect::<Vec<_>>()
                    .join(&b'/'),
            )
            .to_os_string();
            let st = match rustix::fs::statat(&self.root, &rel, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Missing, or under a file: nothing there to follow; the rest goes by name.
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(e) => return Err(self.io(&stack)(e)),
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                continue;
            }
            hops += 1;
            if hops > MAX_HOPS {
                return Ok(None);
            }
            let target =
                rustix::fs::readlinkat(&self.root, &rel, Vec::new()).map_err(self.io(&stack))?;
            let target = Path::new(OsStr::from_bytes(target.as_bytes()));
            if target.has_root() {
                return Ok(Some(false));
            }
            stack.pop();
            for c in target.components().rev() {
                todo.push_front(c.as_os_str().to_os_string());
            }
        }
        Ok(Some(true))
    }
}

fn times(mtime: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

#[cfg(test)]
mod tests;
