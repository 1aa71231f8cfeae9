//! Test-restores of database dumps (PostgreSQL and MySQL/MariaDB share it): each dump is
//! restored into a **scratch database** named `backupd_verify_<random>` on a **server**
//! (the source's own, or `verify.<engine>_url`), its row counts compared with the
//! manifest's, the policy's check queries run, and the scratch database dropped however
//! the verification ends.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;

use super::{IntoServer, SourceError};
use crate::snapshot::record::Check;

/// A database server to restore into, with the source's credentials.
/// A database server to restore into, with the source's credentials.
pub struct Server {
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub password_env: &'static str,
    pub checks: Vec<String>,
}

/// Restores into a scratch database, compares row counts, runs the policy's check
/// queries, and drops the scratch database whatever happened.
pub fn test_restore(
    reader: &mut dyn Read,
    engine: &str,
    tables: &BTreeMap<String, u64>,
    server: &Server,
) -> Result<Vec<Check>, SourceError> {
    let password = super::child::password(server.password_file.as_deref(), server.password_env)?;
    let scratch_db = format!(
        "backupd_verify_{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    let url = super::child::with_database(&server.url, &scratch_db);
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
        super::postgres::restore_into(reader, &into)
    } else {
        super::mysql::restore_into(reader, &into)
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
                Err(e) => Check::fail(format!("rows in {table}"), e.to_string()),
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
            Err(e) => Check::fail(format!("check: {q}"), e.to_string()),
        });
    }
    Ok(out)
}

fn query_one(
    engine: &str,
    url: &str,
    password: Option<&str>,
    sql: &str,
) -> Result<String, SourceError> {
    if engine == "postgres" {
        let mut client = pg_connect(url, password)?;
        let row = client
            .query_one(sql, &[])
            .map_err(super::postgres::db_err(url))?;
        Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
    } else {
        super::mysql::query_url(url, password, sql)
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
            let admin = super::child::with_database(&self.url, "postgres");
            drop_pg(&admin, self.password.as_deref(), &db)
        } else {
            let admin = super::child::with_database(&self.url, "mysql");
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

fn pg_connect(url: &str, password: Option<&str>) -> Result<postgres::Client, SourceError> {
    let mut config: postgres::Config = url.parse().map_err(super::postgres::db_err(url))?;
    if let Some(p) = password {
        config.password(p);
    }
    config
        .connect(postgres::NoTls)
        .map_err(super::postgres::db_err(url))
}

fn drop_pg(admin: &str, password: Option<&str>, db: &str) -> Result<String, SourceError> {
    let mut client = pg_connect(admin, password)?;
    client
        .batch_execute(&format!("drop database if exists \"{db}\" with (force)"))
        .map_err(super::postgres::db_err(admin))?;
    Ok(String::new())
}
