//! SQLite databases: a consistent copy taken with SQLite's online backup API while the
//! database may be in use (a raw file copy can catch a half-written page, and misses
//! whatever sits in the WAL), then streamed; restore writes the file back.
//!
//! The backup API needs a destination database, so the copy is staged in
//! `state_dir/tmp` (mode 0700) and removed as soon as it has been streamed, even on error.
//! That is the one place backupd stages data on disk; SQLite offers no streaming
//! alternative that keeps the consistency guarantee.

use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{DumpContext, Dumped, Restored, SourceError, io_err};
use crate::snapshot::SourceStats;

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSpec {
    pub path: std::path::PathBuf,
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> SourceError + '_ {
    move |source| SourceError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

pub fn dump(
    spec: &SqliteSpec,
    ctx: &DumpContext,
    out: &mut dyn Write,
) -> Result<Dumped, SourceError> {
    let path = spec.path.as_path();
    if !path.is_file() {
        return Err(SourceError::Missing { path: path.into() });
    }
    // Read-write (never create) so WAL databases work; read-only where that is all we have.
    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let src = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_READ_WRITE)
        .or_else(|_| Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_READ_ONLY))
        .map_err(sql_err(path))?;
    src.busy_timeout(Duration::from_secs(60))
        .map_err(sql_err(path))?;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.staging_dir)
        .map_err(|e| SourceError::Invalid {
            path: ctx.staging_dir.clone(),
            what: format!(
                "cannot create the staging directory for the SQLite copy ({e}); set daemon.state_dir to a writable directory"
            ),
        })?;
    let staged = tempfile::Builder::new()
        .prefix("sqlite-")
        .suffix(".db")
        .tempfile_in(&ctx.staging_dir)
        .map_err(io_err(&ctx.staging_dir))?;

    let (stats, sqlite_version) = {
        let mut dst = Connection::open(staged.path()).map_err(sql_err(staged.path()))?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(sql_err(path))?;
            // One step copies every page inside one read transaction: a consistent image
            // even while writers go on (in WAL mode they are not blocked).
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                use rusqlite::backup::StepResult;
                match backup.step(-1).map_err(sql_err(path))? {
                    StepResult::Done => break,
                    StepResult::More => {}
                    _ if std::time::Instant::now() > deadline => {
                        return Err(SourceError::Invalid {
                            path: path.into(),
                            what: "the database stayed locked for 60 s; is a long write transaction running?".into(),
                        });
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let version: String = dst
            .query_row("select sqlite_version()", [], |r| r.get(0))
            .map_err(sql_err(path))?;
        (table_stats(&dst).map_err(sql_err(path))?, version)
    };

    let mut file = std::fs::File::open(staged.path()).map_err(io_err(staged.path()))?;
    let copied = io::copy(&mut file, out).map_err(io_err(path))?;
    if copied == 0 {
        return Err(SourceError::Empty { path: path.into() });
    }
    let (page_count, tables) = stats;
    Ok(Dumped {
        stats: SourceStats::Sqlite {
            file_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "database.sqlite".into()),
            sqlite_version,
            page_count,
            tables,
        },
        warnings: Vec::new(),
        index: None,
    })
}

type TableStats = (u64, std::collections::BTreeMap<String, u64>);

/// Page count and per-table row counts: what a test-restore compares against.
fn table_stats(db: &Connection) -> rusqlite::Result<TableStats> {
    let pages: i64 = db.query_row("pragma page_count", [], |r| r.get(0))?;
    let names: Vec<String> = db
        .prepare("select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut tables = std::collections::BTreeMap::new();
    for name in names {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let rows: i64 =
            db.query_row(&format!("select count(*) from {quoted}"), [], |r| r.get(0))?;
        tables.insert(name, rows.max(0) as u64);
    }
    Ok((pages.max(0) as u64, tables))
}

/// Writes the database back as `dest/<file_name>`.
pub fn restore(
    input: &mut dyn Read,
    dest: &Path,
    file_name: &str,
    overwrite: bool,
) -> Result<Restored, SourceError> {
    super::restore_file(input, dest, file_name, overwrite)
}

/// Opens the restored file read-only, runs `integrity_check` and counts each table's rows.
pub fn test_restore(
    reader: &mut dyn std::io::Read,
    tables: &std::collections::BTreeMap<String, u64>,
    dir: &std::path::Path,
) -> Result<Vec<crate::snapshot::record::Check>, SourceError> {
    let path = super::to_scratch(reader, dir, "restore.sqlite")?;
    let sqlite_err = |source| SourceError::Sqlite {
        path: path.clone(),
        source,
    };
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite_err)?;
    let mut out = Vec::new();
    let integrity: String = db
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .map_err(sqlite_err)?;
    out.push(if integrity == "ok" {
        crate::snapshot::record::Check::pass("integrity_check", "ok")
    } else {
        crate::snapshot::record::Check::fail("integrity_check", integrity)
    });
    for (table, expected) in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let n: Result<i64, _> =
            db.query_row(&format!("select count(*) from {quoted}"), [], |r| r.get(0));
        out.push(match n {
            Ok(n) => crate::snapshot::record::Check::compare(
                &format!("rows in {table}"),
                *expected,
                n.max(0) as u64,
            ),
            Err(e) => {
                crate::snapshot::record::Check::fail(format!("rows in {table}"), e.to_string())
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_contents_are_in_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "pragma journal_mode=wal; pragma wal_autocheckpoint=0; create table t(x);
                 begin;",
            )
            .unwrap();
        for i in 0..5000 {
            writer.execute("insert into t values (?1)", [i]).unwrap();
        }
        writer.execute_batch("commit;").unwrap();
        // The writer stays open, so the rows live in the WAL, not yet in app.db itself.
        let ctx = DumpContext {
            staging_dir: dir.path().join("staging"),
            base: None,
        };
        let mut out = Vec::new();
        let dumped = dump(&SqliteSpec { path: path.clone() }, &ctx, &mut out).unwrap();
        match dumped.stats {
            SourceStats::Sqlite { tables, .. } => assert_eq!(tables["t"], 5000),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_dir(&ctx.staging_dir).unwrap().count(),
            0,
            "staged copy removed"
        );
        let restored_dir = dir.path().join("restored");
        restore(&mut out.as_slice(), &restored_dir, "app.db", false).unwrap();
        let db = Connection::open(restored_dir.join("app.db")).unwrap();
        let n: i64 = db
            .query_row("select count(*) from t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5000);
        drop(writer);
    }

    #[test]
    fn missing_database_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.db");
        let ctx = DumpContext {
            staging_dir: dir.path().join("staging"),
            base: None,
        };
        let err = dump(&SqliteSpec { path: path.clone() }, &ctx, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, SourceError::Missing { .. }), "{err}");
        assert!(!path.exists());
    }
}
