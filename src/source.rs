//! Sources: what a job backs up. Each kind lives in its own file under `source/`, dump and
//! restore together; this file dispatches on the kind and owns the shared error type.
//!
//! A dump writes the plain stream into a `Write` (the pipeline) on a blocking thread and
//! returns the statistics a test-restore will compare against. Any error, including
//! zero bytes where data was expected, fails the source and so the whole snapshot.

pub(crate) mod child;
pub mod directory;
pub mod mysql;
pub mod pgbase;
pub mod postgres;
pub mod redis;
pub mod scratch_db;
pub mod sqlite;

use crate::error::Invalid;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::snapshot::{SourceEntry, SourceStats};

/// A source's kind and its settings; `kind = "…"` in the policy picks the variant.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Directory(DirectorySpec),
    Sqlite(SqliteSpec),
    Postgres(PostgresSpec),
    Mysql(MysqlSpec),
    Redis(RedisSpec),
}

impl SourceSpec {
    /// Pure checks for the policy loader: each problem with the field it is about.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let (field, result) = match self {
            SourceSpec::Directory(dir) => match &dir.incremental {
                Some(inc) if inc.check().is_err() => ("incremental", inc.check()),
                _ => (
                    "exclude",
                    directory::Excludes::new(&dir.exclude)
                        .map(|_| ())
                        .map_err(|e| Invalid(e.to_string())),
                ),
            },
            SourceSpec::Sqlite(_) => ("path", Ok(())),
            SourceSpec::Postgres(pg) if pg.method == postgres::Method::Basebackup => {
                let mut found = pgbase::check_spec(pg);
                if let Err(e) = postgres::check_url(&pg.url) {
                    found.push(("url", e.0));
                }
                return found;
            }
            SourceSpec::Postgres(pg) => ("url", postgres::check_spec(pg)),
            SourceSpec::Mysql(my) => ("url", mysql::check_spec(my)),
            SourceSpec::Redis(r) => ("url", redis::check_url(&r.url)),
        };
        result.err().map(|e| (field, e.0)).into_iter().collect()
    }

    /// The spec with its relative paths made absolute by `resolve` (against the policy
    /// file's directory).
    pub fn resolve_paths(self, resolve: impl Fn(PathBuf) -> PathBuf) -> Self {
        match self {
            SourceSpec::Directory(mut d) => {
                d.path = resolve(d.path);
                SourceSpec::Directory(d)
            }
            SourceSpec::Sqlite(mut s) => {
                s.path = resolve(s.path);
                SourceSpec::Sqlite(s)
            }
            SourceSpec::Postgres(mut s) => {
                s.password_file = s.password_file.map(resolve);
                SourceSpec::Postgres(s)
            }
            SourceSpec::Mysql(mut s) => {
                s.password_file = s.password_file.map(resolve);
                SourceSpec::Mysql(s)
            }
            SourceSpec::Redis(mut s) => {
                s.password_file = s.password_file.map(resolve);
                SourceSpec::Redis(s)
            }
        }
    }

    /// The server a dump of this source is test-restored on (a scratch database): its
    /// own, unless `override_url` names another; `None` for kinds that are not databases.
    pub fn scratch_server(&self, override_url: Option<&str>) -> Option<scratch_db::Server> {
        let (url, password_file, engine, checks) = match self {
            SourceSpec::Postgres(p) => (&p.url, &p.password_file, postgres::SERVER, &p.checks),
            SourceSpec::Mysql(m) => (&m.url, &m.password_file, mysql::SERVER, &m.checks),
            _ => return None,
        };
        Some(scratch_db::Server {
            url: override_url.map_or_else(|| url.clone(), str::to_string),
            password_file: password_file.clone(),
            password_env: engine.password_env,
            checks: checks.clone(),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Directory(_) => "directory",
            SourceSpec::Sqlite(_) => "sqlite",
            SourceSpec::Postgres(_) => "postgres",
            SourceSpec::Mysql(_) => "mysql",
            SourceSpec::Redis(_) => "redis",
        }
    }
}

/// The kinds this build can back up, in the order the error hint lists them.
pub const SOURCE_KINDS: &[&str] = &["directory", "sqlite", "postgres", "mysql", "redis"];

pub use directory::DirectorySpec;
pub use mysql::MysqlSpec;
pub use postgres::PostgresSpec;
pub use redis::RedisSpec;
pub use sqlite::SqliteSpec;

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
    Unsafe { entry: String, why: String },
    #[error("{tool} is not installed or not on PATH: install the {package} package")]
    ToolMissing { tool: String, package: String },
    #[error("{tool} {message}")]
    Tool { tool: String, message: String },
    #[error("{server}: {message}")]
    Database { server: String, message: String },
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

/// How a restore into a server is asked for on the command line.
#[derive(Debug, Clone)]
pub struct IntoServer {
    pub url: String,
    pub password: Option<String>,
    pub create: bool,
    pub clean: bool,
}

/// `databases = [...]` or `databases = "all"` of a database source.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum Databases {
    /// Only `"all"` is meaningful; anything else is a policy error.
    Keyword(String),
    List(Vec<String>),
}

impl Databases {
    pub fn check(&self) -> Result<(), Invalid> {
        match self {
            Databases::Keyword(k) if k == "all" => Ok(()),
            Databases::Keyword(k) => Err(Invalid(format!(
                "databases = {k:?}: use a list of names or \"all\""
            ))),
            Databases::List(l) if l.is_empty() => {
                Err("databases = []: list at least one, or use \"all\"".into())
            }
            Databases::List(_) => Ok(()),
        }
    }
}

/// Policy check of a database source: with `databases` the URL may name no database, so
/// it is checked as if it named `maintenance_db`.
pub(crate) fn check_database_spec(
    url: &str,
    databases: Option<&Databases>,
    maintenance_db: &str,
    check_url: fn(&str) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    match databases {
        None => check_url(url),
        Some(d) => {
            d.check()?;
            check_url(&child::with_database(url, maintenance_db))
        }
    }
}

/// One thing to dump, after a policy source has been expanded (a server's databases
/// become one dump each).
#[derive(Debug, Clone)]
pub enum Expanded {
    Spec(SourceSpec),
    Postgres(postgres::PostgresSpec),
    PostgresGlobals(postgres::PostgresSpec),
    /// `method = "basebackup"`: the whole cluster (see `pgbase`).
    PostgresBase(postgres::PostgresSpec),
    Mysql(mysql::MysqlSpec),
}

impl Expanded {
    pub fn kind(&self) -> &'static str {
        match self {
            Expanded::Spec(s) => s.kind(),
            Expanded::Postgres(_) | Expanded::PostgresGlobals(_) | Expanded::PostgresBase(_) => {
                "postgres"
            }
            Expanded::Mysql(_) => "mysql",
        }
    }
}

/// The dumps a policy source stands for, each with the name it gets in the manifest.
pub fn expand(name: &str, spec: &SourceSpec) -> Result<Vec<(String, Expanded)>, SourceError> {
    match spec {
        SourceSpec::Postgres(p) => postgres::expand(name, p),
        SourceSpec::Mysql(m) => mysql::expand(name, m),
        other => Ok(vec![(name.to_string(), Expanded::Spec(other.clone()))]),
    }
}

/// `<source>-<database>` made safe as a manifest name and unique among `taken`.
pub(crate) fn member_name<T>(source: &str, database: &str, taken: &[(String, T)]) -> String {
    let mut safe: String = database
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    safe.truncate(40);
    let base = format!("{source}-{safe}");
    let mut name = base.clone();
    let mut n = 2;
    while taken.iter().any(|(t, _)| t == &name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// What a dump reports besides the stream itself.
#[derive(Debug, Clone)]
pub struct Dumped {
    pub stats: SourceStats,
    pub warnings: Vec<String>,
    /// A directory's index, stored as a second object of the source.
    pub index: Option<directory::index::Index>,
}

/// Where sources may stage data that cannot be streamed directly (a SQLite backup copy).
#[derive(Debug, Clone)]
pub struct DumpContext {
    pub staging_dir: PathBuf,
    /// For an incremental directory object: the snapshot it builds on (else a full).
    pub base: Option<std::sync::Arc<directory::incremental::Base>>,
}

/// The object name of a source: `<name>.<format><compression>[.age]`.
pub fn object_name(name: &str, spec: &Expanded, compression_ext: &str, encrypted: bool) -> String {
    let format = match spec {
        Expanded::Spec(SourceSpec::Directory(_)) => "tar",
        Expanded::Spec(SourceSpec::Sqlite(_)) => "sqlite",
        Expanded::Spec(SourceSpec::Postgres(_)) | Expanded::Postgres(_) => "pgdump",
        Expanded::Spec(SourceSpec::Mysql(_)) | Expanded::Mysql(_) => "sql",
        Expanded::PostgresGlobals(_) => "sql",
        Expanded::PostgresBase(_) => "tar",
        Expanded::Spec(SourceSpec::Redis(_)) => "rdb",
    };
    let age = if encrypted { ".age" } else { "" };
    format!("{name}.{format}{compression_ext}{age}")
}

/// Writes the source's plain stream into `out`.
pub fn dump(
    spec: &Expanded,
    ctx: &DumpContext,
    out: &mut dyn Write,
) -> Result<Dumped, SourceError> {
    match spec {
        Expanded::Spec(SourceSpec::Directory(d)) => match (&d.incremental, &ctx.base) {
            (Some(inc), Some(base)) => directory::incremental::dump(d, inc, base, out),
            _ => directory::dump(d, out),
        },
        Expanded::Spec(SourceSpec::Sqlite(s)) => sqlite::dump(s, ctx, out),
        Expanded::Spec(SourceSpec::Postgres(s)) | Expanded::Postgres(s) => postgres::dump(s, out),
        Expanded::Spec(SourceSpec::Mysql(s)) | Expanded::Mysql(s) => mysql::dump(s, out),
        Expanded::Spec(SourceSpec::Redis(s)) => redis::dump(s, out),
        Expanded::PostgresGlobals(s) => postgres::dump_globals(s, out),
        Expanded::PostgresBase(s) => pgbase::dump(s, out),
    }
}

/// The expected plain size of a source, when it is cheap to know (for progress ETAs): a
/// directory's regular files (a quick walk, excludes applied), a SQLite file, a database's
/// size as its server reports it (an upper bound: dumps leave indexes out).
pub fn estimate(spec: &Expanded) -> Option<u64> {
    let spec = match spec {
        Expanded::Spec(spec) => spec,
        Expanded::Postgres(pg) => return postgres::size_estimate(pg),
        Expanded::Mysql(my) => return mysql::size_estimate(my),
        Expanded::PostgresGlobals(_) | Expanded::PostgresBase(_) => return None,
    };
    match spec {
        SourceSpec::Directory(d) => {
            let excludes = directory::Excludes::new(&d.exclude).ok()?;
            let mut total = 0u64;
            let mut walk = walkdir::WalkDir::new(&d.path).into_iter();
            while let Some(Ok(entry)) = walk.next() {
                let rel = entry.path().strip_prefix(&d.path).unwrap_or(entry.path());
                let is_dir = entry.file_type().is_dir();
                if !rel.as_os_str().is_empty() && excludes.is_excluded(rel, is_dir) {
                    if is_dir {
                        walk.skip_current_dir();
                    }
                    continue;
                }
                if entry.file_type().is_file() {
                    // tar adds a 512-byte header per entry and pads to 512 bytes.
                    total += entry
                        .metadata()
                        .map_or(0, |m| m.len().div_ceil(512) * 512 + 512);
                }
            }
            Some(total)
        }
        SourceSpec::Sqlite(s) => std::fs::metadata(&s.path).ok().map(|m| m.len()),
        _ => None,
    }
}

/// What a probe found: what works, and what works but deserves a look.
#[derive(Debug, Clone, Default)]
pub struct Probed {
    pub what: String,
    pub warnings: Vec<String>,
}

impl From<String> for Probed {
    fn from(what: String) -> Self {
        Probed {
            what,
            warnings: Vec::new(),
        }
    }
}

/// Checks that a source can be backed up, without backing it up: the path exists, the
/// tools are installed, the server answers and accepts the credentials. Says what it found.
pub fn probe(spec: &SourceSpec) -> Result<Probed, SourceError> {
    match spec {
        SourceSpec::Directory(d) if d.path.is_dir() => {
            Ok(format!("directory {} exists", d.path.display()).into())
        }
        SourceSpec::Sqlite(s) if s.path.is_file() => {
            Ok(format!("sqlite database {} exists", s.path.display()).into())
        }
        SourceSpec::Directory(d) => Err(SourceError::Missing {
            path: d.path.clone(),
        }),
        SourceSpec::Sqlite(s) => Err(SourceError::Missing {
            path: s.path.clone(),
        }),
        SourceSpec::Postgres(p) if p.method == postgres::Method::Basebackup => pgbase::probe(p),
        SourceSpec::Postgres(p) => postgres::probe(p).map(Probed::from),
        SourceSpec::Mysql(m) => mysql::probe(m).map(Probed::from),
        SourceSpec::Redis(r) => redis::probe(r).map(Probed::from),
    }
}

/// What a restore put on disk.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries not restored (unsupported types), each named in `warnings`.
    pub skipped: u64,
    /// Symlinks not restored because they lead outside the directory, each named in `warnings`.
    pub links_skipped: u64,
    pub warnings: Vec<String>,
}

/// How a restore treats what is already at the destination and who owns what it writes.
#[derive(Debug, Clone, Copy)]
pub struct RestoreOptions {
    /// Replace existing files (`--force`).
    pub overwrite: bool,
    /// As root, give restored entries the archive's numeric owners (GNU tar's default;
    /// `--no-same-owner` turns it off).
    pub same_owner: bool,
}

/// Restores one source's plain stream into `dest` (the source's own directory), by the
/// kind the manifest recorded, not by what the policy says today.
pub fn restore(
    entry: &SourceEntry,
    input: &mut dyn Read,
    dest: &Path,
    options: RestoreOptions,
) -> Result<Restored, SourceError> {
    let overwrite = options.overwrite;
    match &entry.stats {
        SourceStats::Tree { .. } => directory::restore(
            input,
            dest,
            directory::Unpack {
                overwrite,
                same_owner: options.same_owner,
                data: directory::Data::Write,
            },
        ),
        SourceStats::Sqlite { file_name, .. } => sqlite::restore(input, dest, file_name, overwrite),
        SourceStats::Database {
            engine, database, ..
        } if engine == "postgres" => postgres::restore_to_file(input, dest, database, overwrite),
        SourceStats::Database { engine, .. } if engine == postgres::GLOBALS_ENGINE => {
            restore_file(input, dest, "globals.sql", overwrite)
        }
        SourceStats::Database { database, .. } => {
            mysql::restore_to_file(input, dest, database, overwrite)
        }
        SourceStats::Redis { .. } => redis::restore_to_file(input, dest, overwrite),
        SourceStats::Basebackup { .. } => pgbase::restore(input, dest, options),
    }
}

/// How an engine's dumps go into a server (`restore --into-url`): the URL schemes it
/// takes and the variable its tools read a password from.
#[derive(Debug, Clone, Copy)]
pub struct ServerEngine {
    pub schemes: &'static [&'static str],
    pub password_env: &'static str,
}

/// The server engine of a dump's recorded `engine`; `None` for dumps restored by hand.
pub fn server_engine(engine: &str) -> Option<ServerEngine> {
    match engine {
        "postgres" => Some(postgres::SERVER),
        "mysql" => Some(mysql::SERVER),
        _ => None,
    }
}

/// Copies a decrypted stream to `dir/name` for a tool to open: a new file, mode 0600.
pub fn to_scratch(
    reader: &mut dyn std::io::Read,
    dir: &std::path::Path,
    name: &str,
) -> Result<std::path::PathBuf, SourceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    // A decrypted copy of a database: readable by this user alone, never through a link.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err(&path))?;
    std::io::copy(reader, &mut file).map_err(io_err(&path))?;
    Ok(path)
}

/// Verification's test-restore of one source's plain stream, by the kind the manifest
/// recorded: the same restore code as `restore`, into `scratch` (or a scratch database on
/// `server`), compared with the manifest's figures.
pub fn test_restore(
    reader: &mut dyn Read,
    entry: &SourceEntry,
    server: Option<scratch_db::Server>,
    scratch: &Path,
) -> Result<Vec<crate::snapshot::record::Check>, SourceError> {
    match &entry.stats {
        SourceStats::Tree {
            files,
            dirs,
            symlinks,
            file_bytes,
            ..
        } => directory::test_restore(reader, [*files, *dirs, *symlinks, *file_bytes], scratch),
        SourceStats::Sqlite { tables, .. } => sqlite::test_restore(reader, tables, scratch),
        SourceStats::Redis { keys, .. } => redis::test_restore(reader, keys, scratch),
        // Verification replays a base backup with its WAL (`verify`), never here.
        SourceStats::Basebackup { .. } => Err(SourceError::Invalid {
            path: PathBuf::from(&entry.object),
            what: "a base backup is verified by replaying its WAL".into(),
        }),
        SourceStats::Database { engine, .. } if engine == postgres::GLOBALS_ENGINE => {
            Ok(Vec::new())
        }
        SourceStats::Database { engine, tables, .. } => match server {
            Some(server) => scratch_db::test_restore(reader, engine, tables, &server),
            None => Err(SourceError::Invalid {
                path: PathBuf::from(&entry.object),
                what: format!(
                    "no server to test-restore into: the policy no longer has this source; set verify.{engine}_url"
                ),
            }),
        },
    }
}

/// Restores a database dump straight into a server (`restore --into-url`).
pub fn restore_into(
    entry: &SourceEntry,
    input: &mut dyn Read,
    into: &IntoServer,
) -> Result<Restored, SourceError> {
    match &entry.stats {
        SourceStats::Database { engine, .. } if engine == "postgres" => {
            postgres::restore_into(input, into)
        }
        SourceStats::Database { engine, .. } if engine == postgres::GLOBALS_ENGINE => {
            Err(SourceError::Invalid {
                path: PathBuf::from(&entry.object),
                what: "roles and tablespaces are restored by hand: restore with --to DIR, read globals.sql, then `psql -f globals.sql`".into(),
            })
        }
        SourceStats::Database { .. } => mysql::restore_into(input, into),
        _ => Err(SourceError::Invalid {
            path: PathBuf::from(&entry.object),
            what: format!(
                "a {} source cannot be restored into a server; use --to DIR",
                entry.kind
            ),
        }),
    }
}

/// Writes a plain stream to `dest/<file_name>`, via a temporary name so a failed restore
/// never leaves a half-written file under the real one.
pub fn restore_file(
    input: &mut dyn Read,
    dest: &Path,
    file_name: &str,
    overwrite: bool,
) -> Result<Restored, SourceError> {
    if file_name.is_empty() || file_name.contains('/') || file_name == "." || file_name == ".." {
        return Err(SourceError::Unsafe {
            entry: file_name.into(),
            why: "a database file name must be a plain name".into(),
        });
    }
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let final_path = dest.join(file_name);
    if final_path.exists() && !overwrite {
        return Err(SourceError::Invalid {
            path: final_path,
            what: "already exists (use --force to overwrite)".into(),
        });
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".restoring-")
        .tempfile_in(dest)
        .map_err(io_err(dest))?;
    let bytes = std::io::copy(input, tmp.as_file_mut()).map_err(io_err(&final_path))?;
    tmp.as_file().sync_all().map_err(io_err(&final_path))?;
    tmp.persist(&final_path)
        .map_err(|e| io_err(&final_path)(e.error))?;
    Ok(Restored {
        files: 1,
        bytes,
        ..Restored::default()
    })
}
