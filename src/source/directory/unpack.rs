//! Restoring a tar stream into a directory, treating the archive as untrusted: absolute
//! paths and `..` are refused, symlinks that would point outside the restore directory are
//! skipped with a warning, and nothing is written through a link (the tar crate's
//! `unpack_in` checks every parent). Directory permissions and mtimes are applied last,
//! deepest first, so a read-only directory does not block its own contents.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::source::{Restored, SourceError, io_err};

/// Restores the tar stream `input` into `dest`.
pub fn restore(
    input: &mut dyn Read,
    dest: &Path,
    overwrite: bool,
) -> Result<Restored, SourceError> {
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(overwrite);
    archive.set_unpack_xattrs(false);
    let mut out = Restored::default();
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    for entry in archive.entries().map_err(io_err(dest))? {
        let mut entry = entry.map_err(io_err(dest))?;
        let path = entry.path().map_err(io_err(dest))?.into_owned();
        check_relative(&path)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                let target = dest.join(&path);
                std::fs::create_dir_all(&target).map_err(io_err(&target))?;
                let mode = entry.header().mode().unwrap_or(0o755);
                let mtime = entry.header().mtime().unwrap_or(0);
                dirs.push((target, mode, mtime));
                out.dirs += 1;
                continue;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_err(dest))?
                    .unwrap_or_default()
                    .into_owned();
                if escapes(&path, &link) {
                    let message = format!(
                        "skipped symlink {} -> {}: it points outside the restore directory",
                        path.display(),
                        link.display()
                    );
                    tracing::warn!("{message}");
                    out.warnings.push(message);
                    continue;
                }
                out.symlinks += 1;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_err(dest))?
                    .unwrap_or_default()
                    .into_owned();
                if let Err(SourceError::Unsafe { why, .. }) = check_relative(&link) {
                    return Err(SourceError::Unsafe {
                        entry: format!("{} (a hard link to {})", path.display(), link.display()),
                        why,
                    });
                }
                out.files += 1;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                out.files += 1;
                out.bytes += entry.header().size().unwrap_or(0);
            }
            other => {
                let message = format!(
                    "skipped {}: unsupported entry type {other:?}",
                    path.display()
                );
                tracing::warn!("{message}");
                out.warnings.push(message);
                continue;
            }
        }
        let unpacked = entry.unpack_in(dest).map_err(|e| SourceError::Io {
            path: dest.join(&path),
            source: e,
        })?;
        if !unpacked {
            return Err(SourceError::Unsafe {
                entry: path.display().to_string(),
                why: "it would land outside the restore directory",
            });
        }
    }
    for (dir, mode, mtime) in dirs.iter().rev() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode & 0o7777))
            .map_err(io_err(dir))?;
        filetime::set_file_mtime(dir, filetime::FileTime::from_unix_time(*mtime as i64, 0))
            .map_err(io_err(dir))?;
    }
    Ok(out)
}

fn check_relative(path: &Path) -> Result<(), SourceError> {
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(SourceError::Unsafe {
                    entry: path.display().to_string(),
                    why: "it contains '..'",
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(SourceError::Unsafe {
                    entry: path.display().to_string(),
                    why: "it is an absolute path",
                });
            }
        }
    }
    Ok(())
}

/// Whether a symlink at `path` (relative to the restore root) pointing to `link` resolves
/// outside the root. Decided on the names alone, before anything is created.
fn escapes(path: &Path, link: &Path) -> bool {
    if link.has_root() {
        return true;
    }
    let mut depth: i64 = path.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count() as i64
    });
    for c in link.components() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: EntryType,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        // Write the name bytes directly: the tar crate's setters refuse '..', attackers do not.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn symlink_escape_is_judged_by_names() {
        assert!(!escapes(Path::new("a/link"), Path::new("../b")));
        assert!(!escapes(Path::new("a/link"), Path::new("sibling")));
        assert!(escapes(Path::new("link"), Path::new("../outside")));
        assert!(escapes(Path::new("a/link"), Path::new("../../outside")));
        assert!(escapes(Path::new("a/link"), Path::new("/etc/passwd")));
        assert!(escapes(Path::new("a/link"), Path::new("x/../../../y")));
    }

    #[test]
    fn parent_dir_entries_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("dest");
        let tar = archive(|b| raw_entry(b, "../evil.txt", EntryType::Regular, "", b"pwned"));
        let err = restore(&mut tar.as_slice(), &dest, false).unwrap_err();
        assert!(matches!(err, SourceError::Unsafe { .. }), "{err}");
        assert!(!root.path().join("evil.txt").exists());
    }

    #[test]
    fn absolute_entries_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim.txt");
        let name = victim.to_str().unwrap().to_string();
        let tar = archive(|b| raw_entry(b, &name, EntryType::Regular, "", b"pwned"));
        let err = restore(&mut tar.as_slice(), &root.path().join("dest"), false).unwrap_err();
        assert!(matches!(err, SourceError::Unsafe { .. }), "{err}");
        assert!(!victim.exists());
    }

    #[test]
    fn nothing_is_written_through_an_escaping_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = root.path().join("dest");
        let link = outside.to_str().unwrap().to_string();
        let tar = archive(|b| {
            raw_entry(b, "escape", EntryType::Symlink, &link, b"");
            raw_entry(b, "escape/planted.txt", EntryType::Regular, "", b"pwned");
        });
        // The link is skipped; the file then lands inside dest as a plain path, or is refused.
        let _ = restore(&mut tar.as_slice(), &dest, false);
        assert!(!outside.join("planted.txt").exists());
        assert!(
            std::fs::symlink_metadata(dest.join("escape"))
                .map(|m| !m.file_type().is_symlink())
                .unwrap_or(true)
        );
    }

    #[test]
    fn hard_links_to_outside_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let tar = archive(|b| raw_entry(b, "hl", EntryType::Link, "../../etc/passwd", b""));
        let err = restore(&mut tar.as_slice(), &root.path().join("dest"), false).unwrap_err();
        assert!(matches!(err, SourceError::Unsafe { .. }), "{err}");
    }
}
