//! Sources: what a job backs up. Each kind lives in its own file under `source/`, dump and
//! restore together; this file dispatches on the kind and owns the shared error type.
//!
//! A dump writes the plain stream into a `Write` (the pipeline) on a blocking thread and
//! returns the statistics a test-restore will compare against. Any error, including
//! zero bytes where data was expected, fails the source and so the whole snapshot.

pub mod directory;
pub mod sqlite;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::policy::SourceSpec;
use crate::snapshot::{SourceEntry, SourceStats};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path} does not exist: check the source's `path` (is the volume mounted?)")]
    Missing { path: PathBuf },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is empty: that is usually an unmounted volume or a wrong path; set allow_empty = true if an empty tree is expected"
    )]
    Empty { path: PathBuf },
    #[error(
        "unsafe entry {entry:?} in the archive: {why}; nothing is written outside the restore directory"
    )]
    Unsafe { entry: String, why: &'static str },
    #[error("{path}: SQLite: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a dump reports besides the stream itself.
#[derive(Debug, Clone)]
pub struct Dumped {
    pub stats: SourceStats,
    pub warnings: Vec<String>,
}

/// Where sources may stage data that cannot be streamed directly (a SQLite backup copy).
#[derive(Debug, Clone)]
pub struct DumpContext {
    pub staging_dir: PathBuf,
}

/// The object name of a source: `<name>.<format><compression>[.age]`.
pub fn object_name(
    name: &str,
    spec: &SourceSpec,
    compression_ext: &str,
    encrypted: bool,
) -> String {
    let format = match spec {
        SourceSpec::Directory(_) => "tar",
        SourceSpec::Sqlite(_) => "sqlite",
    };
    let age = if encrypted { ".age" } else { "" };
    format!("{name}.{format}{compression_ext}{age}")
}

/// Writes the source's plain stream into `out`.
pub fn dump(
    spec: &SourceSpec,
    ctx: &DumpContext,
    out: &mut dyn Write,
) -> Result<Dumped, SourceError> {
    match spec {
        SourceSpec::Directory(d) => directory::dump(d, out),
        SourceSpec::Sqlite(s) => sqlite::dump(s, ctx, out),
    }
}

/// What a restore put on disk.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// Restores one source's plain stream into `dest` (the source's own directory), by the
/// kind the manifest recorded, not by what the policy says today.
pub fn restore(
    entry: &SourceEntry,
    input: &mut dyn Read,
    dest: &Path,
    overwrite: bool,
) -> Result<Restored, SourceError> {
    match &entry.stats {
        SourceStats::Tree { .. } => directory::restore(input, dest, overwrite),
        SourceStats::Sqlite { file_name, .. } => sqlite::restore(input, dest, file_name, overwrite),
    }
}
