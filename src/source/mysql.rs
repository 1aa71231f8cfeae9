//! MySQL / MariaDB: `mariadb-dump` (or `mysqldump`) with `--single-transaction` streamed
//! from the child's stdout as SQL, restored by feeding it to `mariadb` (or `mysql`).
//!
//! The password reaches the tools through `MYSQL_PWD` in their environment, never argv.
//! Row counts are taken just before the dump in their own consistent-snapshot
//! transaction; on a database being written to they can differ from the dump by the
//! writes in between (the manifest says `row_counts = "exact"` only for what was counted).

use crate::error::Invalid;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::postgres::safe_file_stem;
use super::{Databases, Dumped, IntoServer, Restored, SourceError, child};
use crate::snapshot::SourceStats;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSpec {
    /// `mysql://user@host:port/database` — no password here: use `password_file`.
    pub url: String,
    /// File whose first line is the password (mode 0600).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// More dump-tool arguments, e.g. `["--skip-lock-tables"]`.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Several databases, one object each: a list of names or `"all"` (every database
    /// but information_schema, performance_schema, sys and mysql).
    #[serde(default)]
    pub databases: Option<Databases>,
    /// Queries a verification runs in the scratch copy; each must return true,
    /// e.g. `["select count(*) > 0 from users"]`.
    #[serde(default)]
    pub checks: Vec<String>,
}

/// `restore --into-url` into MySQL/MariaDB.
pub const SERVER: super::ServerEngine = super::ServerEngine {
    schemes: &["mysql", "mariadb"],
    password_env: "MYSQL_PWD",
};

/// Policy check of a whole spec: with `databases`, the URL may name no database.
pub fn check_spec(spec: &MysqlSpec) -> Result<(), Invalid> {
    super::check_database_spec(&spec.url, spec.databases.as_ref(), "mysql", check_url)
}

/// One spec per database (named `<source>-<database>` when several are asked for).
pub fn expand(name: &str, spec: &MysqlSpec) -> Result<Vec<(String, super::Expanded)>, SourceError> {
    let single = |db: &str| {
        let mut one = spec.clone();
        one.url = child::with_database(&spec.url, db);
        one.databases = None;
        one
    };
    let names: Vec<String> = match &spec.databases {
        None => {
            return Ok(vec![(
                name.to_string(),
                super::Expanded::Mysql(spec.clone()),
            )]);
        }
        Some(Databases::List(list)) => list.clone(),
        Some(Databases::Keyword(_)) => {
            let client = child::find_tool(&["mariadb", "mysql"], "mariadb-client")?;
            let conn = parse(&child::with_database(&spec.url, "mysql"))?;
            let password = child::password(spec.password_file.as_deref(), "MYSQL_PWD")?;
            query(&client, &conn, password.as_deref(), "show databases")?
                .lines()
                .filter(|d| {
                    ![
                        "information_schema",
                        "performance_schema",
                        "sys",
                        "mysql",
                        "",
                    ]
                    .contains(d)
                })
                .map(str::to_string)
                .collect()
        }
    };
    let mut out = Vec::new();
    for db in &names {
        out.push((
            super::member_name(name, db, &out),
            super::Expanded::Mysql(single(db)),
        ));
    }
    Ok(out)
}

/// Pure check for policy validation.
pub fn check_url(url: &str) -> Result<(), Invalid> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("not a URL ({e}); e.g. \"mysql://backup@db.internal:3306/app\""))?;
    if !matches!(parsed.scheme(), "mysql" | "mariadb") {
        return Err("must start with mysql://".into());
    }
    if let Some(why) = crate::secret::secret_in_url(&parsed) {
        return Err(Invalid(why));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    if parsed.path().trim_start_matches('/').is_empty() {
        return Err("names no database: add it as the path, e.g. mysql://backup@host/app".into());
    }
    Ok(())
}

/// Host, port, user and database from a checked URL.
struct Conn {
    host: String,
    port: u16,
    user: String,
    database: String,
}

fn parse(url: &str) -> Result<Conn, SourceError> {
    check_url(url).map_err(|what| SourceError::Invalid {
        path: PathBuf::from(crate::secret::redact(url)),
        what: what.0,
    })?;
    let u = url::Url::parse(url).expect("checked");
    Ok(Conn {
        host: u.host_str().unwrap_or("127.0.0.1").to_string(),
        port: u.port().unwrap_or(3306),
        user: if u.username().is_empty() {
            "root".into()
        } else {
            u.username().to_string()
        },
        database: u.path().trim_start_matches('/').to_string(),
    })
}

/// A client-tool command with connection options; the password goes to the environment.
fn command(tool: &Path, conn: &Conn, password: Option<&str>) -> Command {
    let mut cmd = child::command(tool, &["MYSQL_"]);
    // --no-defaults first: a stray ~/.my.cnf must not change what gets dumped or where.
    cmd.arg("--no-defaults")
        .arg(format!("--host={}", conn.host))
        .arg(format!("--port={}", conn.port))
        .arg(format!("--user={}", conn.user))
        .arg("--protocol=tcp");
    cmd.env_remove("MYSQL_PWD");
    if let Some(p) = password {
        cmd.env("MYSQL_PWD", p);
    }
    cmd
}

fn query(
    client: &Path,
    conn: &Conn,
    password: Option<&str>,
    sql: &str,
) -> Result<String, SourceError> {
    let mut cmd = command(client, conn, password);
    cmd.args(["--batch", "--skip-column-names", "--raw", "-e", sql]);
    child::output(cmd, password)
}

/// One query in the URL's database, for verification's row counts and checks.
pub fn query_url(url: &str, password: Option<&str>, sql: &str) -> Result<String, SourceError> {
    let client = child::find_tool(&["mariadb", "mysql"], "mariadb-client")?;
    let conn = parse(url)?;
    let mut cmd = command(&client, &conn, password);
    cmd.args(["--batch", "--skip-column-names", "--raw", "-e", sql]);
    cmd.arg(&conn.database);
    child::output(cmd, password)
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// The database's data size on the server, for a progress ETA.
pub fn size_estimate(spec: &MysqlSpec) -> Option<u64> {
    let password = child::password(spec.password_file.as_deref(), "MYSQL_PWD").ok()?;
    query_url(
        &spec.url,
        password.as_deref(),
        "select coalesce(sum(data_length), 0) from information_schema.tables where table_schema = database()",
    )
    .ok()?
    .trim()
    .parse()
    .ok()
}

/// Tools present, server reachable with these credentials.
pub fn probe(spec: &MysqlSpec) -> Result<String, SourceError> {
    child::find_tool(&["mariadb-dump", "mysqldump"], "mariadb-client")?;
    let client = child::find_tool(&["mariadb", "mysql"], "mariadb-client")?;
    let conn = match spec.databases {
        Some(_) => parse(&child::with_database(&spec.url, "mysql"))?,
        None => parse(&spec.url)?,
    };
    let password = child::password(spec.password_file.as_deref(), "MYSQL_PWD")?;
    let version = query(&client, &conn, password.as_deref(), "select version()")?;
    Ok(format!(
        "mysql {} answers (server {})",
        crate::secret::redact(&spec.url),
        version.trim()
    ))
}

pub fn dump(spec: &MysqlSpec, out: &mut dyn Write) -> Result<Dumped, SourceError> {
    let dump_tool = child::find_tool(&["mariadb-dump", "mysqldump"], "mariadb-client")?;
    let client = child::find_tool(&["mariadb", "mysql"], "mariadb-client")?;
    let conn = parse(&spec.url)?;
    let password = child::password(spec.password_file.as_deref(), "MYSQL_PWD")?;
    let pw = password.as_deref();
    let tool_version = child::output(
        {
            let mut c = child::command(&dump_tool, &["MYSQL_"]);
            c.arg("--version");
            c
        },
        None,
    )?
    .trim()
    .to_string();
    let server_version = query(&client, &conn, pw, "select version()")?
        .trim()
        .to_string();

    let names = query(
        &client,
        &conn,
        pw,
        &format!(
            "select table_name from information_schema.tables where table_schema = {} and table_type = 'BASE TABLE' order by table_name",
            quote_literal(&conn.database)
        ),
    )?;
    let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
    let mut tables = BTreeMap::new();
    if !names.is_empty() {
        let counts = names
            .iter()
            .map(|t| {
                format!(
                    "select {}, count(*) from {}.{}",
                    quote_literal(t),
                    quote_ident(&conn.database),
                    quote_ident(t)
                )
            })
            .collect::<Vec<_>>()
            .join(" union all ");
        let sql = format!(
            "set session transaction isolation level repeatable read; start transaction with consistent snapshot; {counts}; commit;"
        );
        for line in query(&client, &conn, pw, &sql)?.lines() {
            if let Some((name, n)) = line.rsplit_once('\t') {
                tables.insert(name.to_string(), n.trim().parse().unwrap_or(0));
            }
        }
    }

    let mut cmd = command(&dump_tool, &conn, pw);
    cmd.args([
        "--single-transaction",
        "--quick",
        "--routines",
        "--events",
        "--triggers",
        "--hex-blob",
        "--default-character-set=utf8mb4",
    ]);
    cmd.args(&spec.extra_args);
    // The database as a plain argument (not --databases), so the dump restores into any name.
    cmd.arg(&conn.database);
    child::stream_to(cmd, out, pw)?;
    Ok(Dumped {
        stats: SourceStats::Database {
            engine: "mysql".into(),
            database: conn.database,
            server_version,
            tool_version,
            row_counts: "exact".into(),
            tables,
        },
        warnings: Vec::new(),
        index: None,
    })
}

/// Feeds the SQL dump to the client against `into.url` (created first with `create`).
pub fn restore_into(input: &mut dyn Read, into: &IntoServer) -> Result<Restored, SourceError> {
    let client = child::find_tool(&["mariadb", "mysql"], "mariadb-client")?;
    let conn = parse(&into.url)?;
    let pw = into.password.as_deref();
    if into.clean {
        query(
            &client,
            &conn,
            pw,
            &format!("drop database if exists {}", quote_ident(&conn.database)),
        )?;
    }
    if into.create || into.clean {
        query(
            &client,
            &conn,
            pw,
            &format!(
                "create database if not exists {}",
                quote_ident(&conn.database)
            ),
        )?;
    }
    let mut cmd = command(&client, &conn, pw);
    cmd.arg("--default-character-set=utf8mb4")
        .arg(&conn.database);
    let bytes = child::feed(cmd, input, pw)?;
    Ok(Restored {
        bytes,
        ..Restored::default()
    })
}

/// Writes the dump as `DIR/<database>.sql` for a manual restore.
pub fn restore_to_file(
    input: &mut dyn Read,
    dest: &Path,
    database: &str,
    overwrite: bool,
) -> Result<Restored, SourceError> {
    super::restore_file(
        input,
        dest,
        &format!("{}.sql", safe_file_stem(database)),
        overwrite,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("mysql://backup@db:3306/app").is_ok());
        assert!(
            check_url("mysql://backup:pw@db/app")
                .unwrap_err()
                .to_string()
                .contains("password_file")
        );
        assert!(
            check_url("mysql://backup@db/")
                .unwrap_err()
                .to_string()
                .contains("no database")
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
