//! The checks of one object, on a blocking thread: integrity (decrypt, both sha256) and
//! the kind-specific test-restore against the manifest's figures.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::Identities;
use crate::pipeline;
use crate::snapshot::{SourceEntry, SourceStats};
use crate::source::IntoServer;
use crate::source::child;

/// One named check and what it found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }

    fn compare(name: &str, expected: u64, actual: u64) -> Self {
        if expected == actual {
            Self::pass(name, format!("{actual}"))
        } else {
            Self::fail(
                name,
                format!("manifest says {expected}, the restore has {actual}"),
            )
        }
    }
}

/// A database server to restore into, with the source's credentials.
pub struct Server {
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub password_env: &'static str,
    pub checks: Vec<String>,
}

/// Runs every check of one object read from `input`.
pub fn run(
    input: impl Read + Send + 'static,
    entry: &SourceEntry,
    identities: Option<&Identities>,
    server: Option<Server>,
    scratch_base: &Path,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut decoded = match pipeline::decode(input, entry, identities) {
        Ok(d) => {
            checks.push(Check::pass("decrypt", "header and key ok"));
            d
        }
        Err(e) => {
            checks.push(Check::fail("decrypt", e.to_string()));
            return checks;
        }
    };
    let scratch = match super::scratch_dir(scratch_base) {
        Ok(s) => s,
        Err(e) => {
            checks.push(Check::fail(
                "scratch directory",
                format!("{}: {e}", scratch_base.display()),
            ));
            return checks;
        }
    };
    let restored = match &entry.stats {
        SourceStats::Tree {
            files,
            dirs,
            symlinks,
            file_bytes,
            ..
        } => tree(
            &mut decoded.reader,
            [*files, *dirs, *symlinks, *file_bytes],
            scratch.path(),
        ),
        SourceStats::Sqlite { tables, .. } => sqlite(&mut decoded.reader, tables, scratch.path()),
        SourceStats::Redis { keys, .. } => redis(&mut decoded.reader, keys, scratch.path()),
        SourceStats::Database { engine, .. }
            if engine == crate::source::postgres::GLOBALS_ENGINE =>
        {
            Ok(Vec::new())
        }
        SourceStats::Database { engine, tables, .. } => match server {
            Some(server) => database(&mut decoded.reader, engine, tables, &server),
            None => Err(format!(
                "no server to test-restore into: the policy no longer has this source; set verify.{engine}_url"
            )),
        },
    };
    match restored {
        Ok(found) => checks.extend(found),
        Err(e) => checks.push(Check::fail("test-restore", e)),
    }
    match decoded.finish() {
        Ok(()) => checks.push(Check::pass(
            "sha256",
            format!(
                "stored {} and plain {} match the manifest",
                short(&entry.stored.sha256),
                short(&entry.plain.sha256)
            ),
        )),
        Err(e) => checks.push(Check::fail("sha256", e.to_string())),
    }
    checks
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Runs restore's own unpack (every path, link, duplicate and type rule) into the scratch
/// directory with sparse files, then compares what it restored with the manifest's counts.
/// An archive restore would refuse fails here, naming the entry; entries restore would
/// leave out are named in the detail.
fn tree(reader: &mut dyn Read, expected: [u64; 4], scratch: &Path) -> Result<Vec<Check>, String> {
    use crate::source::directory::{Data, Unpack, restore};
    let how = Unpack {
        overwrite: false,
        same_owner: false,
        data: Data::Sparse,
    };
    let r = match restore(reader, &scratch.join("tree"), how) {
        Ok(r) => r,
        Err(e) => return Ok(vec![Check::fail("restore rules", e.to_string())]),
    };
    let rules = if r.warnings.is_empty() {
        Check::pass("restore rules", "every entry restores as archived")
    } else {
        Check::pass(
            "restore rules",
            format!("restore would leave out: {}", r.warnings.join("; ")),
        )
    };
    Ok(vec![
        rules,
        Check::compare("file count", expected[0], r.files),
        Check::compare("directory count", expected[1], r.dirs),
        Check::compare("symlink count", expected[2], r.symlinks + r.links_skipped),
        Check::compare("file bytes", expected[3], r.bytes),
    ])
}

pub(super) fn to_scratch(reader: &mut dyn Read, dir: &Path, name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    // A decrypted copy of a database: readable by this user alone, never through a link.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    io::copy(reader, &mut file).map_err(|e| format!("reading the object: {e}"))?;
    Ok(path)
}

fn sqlite(
    reader: &mut dyn Read,
    tables: &BTreeMap<String, u64>,
    dir: &Path,
) -> Result<Vec<Check>, String> {
    let path = to_scratch(reader, dir, "restore.sqlite")?;
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("opening the restored database: {e}"))?;
    let mut out = Vec::new();
    let integrity: String = db
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("integrity_check: {e}"))?;
    out.push(if integrity == "ok" {
        Check::pass("integrity_check", "ok")
    } else {
        Check::fail("integrity_check", integrity)
    });
    for (table, expected) in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let n: Result<i64, _> =
            db.query_row(&format!("select count(*) from {quoted}"), [], |r| r.get(0));
        out.push(match n {
            Ok(n) => Check::compare(&format!("rows in {table}"), *expected, n.max(0) as u64),
            Err(e) => Check::fail(format!("rows in {table}"), e.to_string()),
        });
    }
    Ok(out)
}

fn redis(
    reader: &mut dyn Read,
    keys: &BTreeMap<String, u64>,
    dir: &Path,
) -> Result<Vec<Check>, String> {
    let path = to_scratch(reader, dir, "dump.rdb")?;
    let tool = child::find_tool(&["redis-check-rdb"], "redis-tools").map_err(|e| e.to_string())?;
    let mut cmd = child::command(tool, &[]);
    cmd.arg(&path);
    let out = child::output(cmd, None);
    let mut checks = Vec::new();
    match out {
        Ok(text) => {
            checks.push(Check::pass("redis-check-rdb", "RDB looks OK"));
            let read: u64 = text
                .lines()
                .find_map(|l| {
                    l.split("[info] ")
                        .nth(1)?
                        .strip_suffix(" keys read")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            checks.push(Check::compare("key count", keys.values().sum(), read));
        }
        Err(e) => checks.push(Check::fail("redis-check-rdb", e.to_string())),
    }
    Ok(checks)
}

/// Restores into a scratch database, compares row counts, runs the policy's check
/// queries, and drops the scratch database whatever happened.
fn database(
    reader: &mut dyn Read,
    engine: &str,
    tables: &BTreeMap<String, u64>,
    server: &Server,
) -> Result<Vec<Check>, String> {
    let password = child::password(server.password_file.as_deref(), server.password_env)
        .map_err(|e| e.to_string())?;
    let scratch_db = format!(
        "backupd_verify_{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    let url = child::with_database(&server.url, &scratch_db);
    let into = IntoServer {
        url: url.clone(),
        password: password.clone(),
        create: true,
        clean: false,
    };
    let _drop = ScratchDb {
        engine: engine.to_string(),
        url: url.clone(),
        password: password.clone(),
    };
    let mut out = Vec::new();
    let restored = if engine == "postgres" {
        crate::source::postgres::restore_into(reader, &into)
    } else {
        crate::source::mysql::restore_into(reader, &into)
    };
    match restored {
        Ok(r) => out.push(Check::pass(
            "restore into scratch database",
            format!("{scratch_db}: {} bytes applied", r.bytes),
        )),
        Err(e) => {
            out.push(Check::fail("restore into scratch database", e.to_string()));
            // Drain so the sha256 checks still see the whole object.
            let _ = io::copy(reader, &mut io::sink());
            return Ok(out);
        }
    }
    let count_sql = |table: &str| {
        if engine == "postgres" {
            let (schema, name) = table.split_once('.').unwrap_or(("public", table));
            format!(
                "select count(*)::text from \"{}\".\"{}\"",
                schema.replace('"', "\"\""),
                name.replace('"', "\"\"")
            )
        } else {
            format!("select count(*) from `{}`", table.replace('`', "``"))
        }
    };
    for (table, expected) in tables {
        out.push(
            match query_one(engine, &url, password.as_deref(), &count_sql(table)) {
                Ok(v) => Check::compare(
                    &format!("rows in {table}"),
                    *expected,
                    v.trim().parse().unwrap_or(u64::MAX),
                ),
                Err(e) => Check::fail(format!("rows in {table}"), e),
            },
        );
    }
    for q in &server.checks {
        let sql = if engine == "postgres" {
            format!("select ({q})::text")
        } else {
            format!("select ({q})")
        };
        out.push(match query_one(engine, &url, password.as_deref(), &sql) {
            Ok(v) if matches!(v.trim(), "true" | "t" | "1") => {
                Check::pass(format!("check: {q}"), "true")
            }
            Ok(v) => Check::fail(
                format!("check: {q}"),
                format!("returned {:?}, not true", v.trim()),
            ),
            Err(e) => Check::fail(format!("check: {q}"), e),
        });
    }
    Ok(out)
}

fn query_one(engine: &str, url: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    if engine == "postgres" {
        let mut client = pg_connect(url, password)?;
        let row = client.query_one(sql, &[]).map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or(e.to_string())
        })?;
        Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
    } else {
        crate::source::mysql::query_url(url, password, sql).map_err(|e| e.to_string())
    }
}

/// Drops the scratch database when the verification of it ends, however it ends.
struct ScratchDb {
    engine: String,
    url: String,
    password: Option<String>,
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let db = url::Url::parse(&self.url)
            .map(|u| u.path().trim_start_matches('/').to_string())
            .unwrap_or_default();
        if !db.starts_with("backupd_verify_") {
            return;
        }
        let result = if self.engine == "postgres" {
            let admin = child::with_database(&self.url, "postgres");
            drop_pg(&admin, self.password.as_deref(), &db)
        } else {
            let admin = child::with_database(&self.url, "mysql");
            query_one(
                "mysql",
                &admin,
                self.password.as_deref(),
                &format!("drop database if exists `{db}`"),
            )
        };
        if let Err(e) = result {
            tracing::error!("could not drop scratch database {db}: {e}; drop it by hand");
        }
    }
}

fn pg_connect(url: &str, password: Option<&str>) -> Result<postgres::Client, String> {
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| e.to_string())?;
    if let Some(p) = password {
        config.password(p);
    }
    config.connect(postgres::NoTls).map_err(|e| e.to_string())
}

fn drop_pg(admin: &str, password: Option<&str>, db: &str) -> Result<String, String> {
    let mut client = pg_connect(admin, password)?;
    client
        .batch_execute(&format!("drop database if exists \"{db}\" with (force)"))
        .map_err(|e| e.to_string())?;
    Ok(String::new())
}
