//! PostgreSQL: `pg_dump --format=custom --compress=0` streamed from the child's stdout
//! (the pipeline compresses), restored with `pg_restore`.
//!
//! Row counts and the dump must describe the same data, so backupd opens a repeatable-read
//! transaction, exports its snapshot, counts rows inside it and hands the snapshot to
//! `pg_dump --snapshot`; the transaction stays open until pg_dump has finished.
//! The password reaches pg_dump through `PGPASSWORD` in its environment, never argv.

use crate::error::Invalid;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::child;
use super::{Databases, Dumped, IntoServer, Restored, SourceError};
use crate::snapshot::SourceStats;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    /// `postgres://user@host:port/database` — no password here: use `password_file`.
    pub url: String,
    /// File whose first line is the password (mode 0600). Without it, pg_dump's own
    /// `PGPASSWORD`/`~/.pgpass` handling applies.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Only these tables (`schema.table` or `table`, as pg_dump `-t`).
    #[serde(default)]
    pub include_tables: Vec<String>,
    /// Leave these tables out (pg_dump `-T`).
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// More pg_dump arguments, e.g. `["--no-owner"]`.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// `exact` (count(*), default) or `estimate` (planner statistics, for huge tables).
    #[serde(default)]
    pub row_counts: RowCounts,
    /// Several databases of the server, one object each: a list of names or `"all"`
    /// (every database that accepts connections). Without it, the URL's database.
    #[serde(default)]
    pub databases: Option<Databases>,
    /// Also dump roles and tablespaces (`pg_dumpall --globals-only`) as `<source>-globals`.
    #[serde(default)]
    pub include_globals: bool,
    /// Queries a verification runs in the scratch copy; each must return true,
    /// e.g. `["select count(*) > 0 from users"]`.
    #[serde(default)]
    pub checks: Vec<String>,
    /// `dump` (pg_dump, default) or `basebackup` (pg_basebackup of the whole cluster plus
    /// the WAL archive: point-in-time recovery; see `source::pgbase` and `crate::wal`).
    #[serde(default)]
    pub method: Method,
    /// With `basebackup`, when backupd runs as root: the OS user a verification's
    /// throwaway server runs as (PostgreSQL refuses root). Default `postgres`.
    #[serde(default)]
    pub verify_as: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    Dump,
    Basebackup,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowCounts {
    #[default]
    Exact,
    Estimate,
}

/// `restore --into-url` into PostgreSQL.
pub const SERVER: super::ServerEngine = super::ServerEngine {
    schemes: &["postgres", "postgresql"],
    password_env: "PGPASSWORD",
};

/// Pure checks for policy validation: a parseable URL without an embedded password.
pub fn check_url(url: &str) -> Result<(), Invalid> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("not a URL ({e}); e.g. \"postgres://backup@db.internal:5432/app\""))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err("must start with postgres://".into());
    }
    if let Some(why) = crate::secret::secret_in_url(&parsed) {
        return Err(Invalid(why));
    }
    if parsed.path().trim_start_matches('/').is_empty() {
        return Err(
            "names no database: add it as the path, e.g. postgres://backup@host/app".into(),
        );
    }
    Ok(())
}

/// Policy check of a whole spec: with `databases`, the URL may name no database.
pub fn check_spec(spec: &PostgresSpec) -> Result<(), Invalid> {
    super::check_database_spec(&spec.url, spec.databases.as_ref(), "postgres", check_url)
}

/// The user a base backup's replay runs as when backupd is root.
pub const DEFAULT_VERIFY_AS: &str = "postgres";

/// One spec per database to dump (named `<source>-<database>` when the policy lists
/// several), plus the globals when asked; `"all"` asks the server.
pub fn expand(
    name: &str,
    spec: &PostgresSpec,
) -> Result<Vec<(String, super::Expanded)>, SourceError> {
    let single = |db: Option<&str>| {
        let mut one = spec.clone();
        if let Some(db) = db {
            one.url = child::with_database(&spec.url, db);
        }
        one.databases = None;
        one.include_globals = false;
        one
    };
    let mut out = Vec::new();
    if spec.method == Method::Basebackup {
        return Ok(vec![(
            name.to_string(),
            super::Expanded::PostgresBase(spec.clone()),
        )]);
    }
    let names: Vec<String> = match &spec.databases {
        None => {
            out.push((name.to_string(), super::Expanded::Postgres(single(None))));
            Vec::new()
        }
        Some(Databases::List(list)) => list.clone(),
        Some(Databases::Keyword(_)) => {
            let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
            let url = if database_of(&spec.url).is_empty() {
                child::with_database(&spec.url, "postgres")
            } else {
                spec.url.clone()
            };
            let mut client = connect(&url, password.as_deref())?;
            client
                .query("select datname from pg_database where datallowconn and not datistemplate order by 1", &[])
                .map_err(db_err(&url))?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        }
    };
    for db in &names {
        out.push((
            super::member_name(name, db, &out),
            super::Expanded::Postgres(single(Some(db))),
        ));
    }
    if spec.include_globals {
        let mut g = single(None);
        if database_of(&g.url).is_empty() {
            g.url = child::with_database(&g.url, "postgres");
        }
        out.push((
            format!("{name}-globals"),
            super::Expanded::PostgresGlobals(g),
        ));
    }
    Ok(out)
}

/// Roles and tablespaces, as SQL from `pg_dumpall --globals-only`.
pub fn dump_globals(spec: &PostgresSpec, out: &mut dyn Write) -> Result<Dumped, SourceError> {
    let tool = child::find_tool(&["pg_dumpall"], "postgresql-client")?;
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
    let tool_version = child::output(version_cmd(&tool), None)?.trim().to_string();
    let mut cmd = super::child::command(tool, &["PG"]);
    cmd.arg("--globals-only")
        .arg(format!("--dbname={}", spec.url));
    cmd.env_remove("PGPASSWORD");
    if let Some(p) = &password {
        cmd.env("PGPASSWORD", p);
    }
    child::stream_to(cmd, out, password.as_deref())?;
    Ok(Dumped {
        stats: SourceStats::Database {
            engine: GLOBALS_ENGINE.into(),
            database: "globals".into(),
            server_version: String::new(),
            tool_version,
            row_counts: "exact".into(),
            tables: BTreeMap::new(),
        },
        warnings: Vec::new(),
        index: None,
    })
}

/// The manifest's engine name for a `pg_dumpall --globals-only` object.
pub const GLOBALS_ENGINE: &str = "postgres_globals";

pub(super) fn database_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_string())
        .unwrap_or_default()
}

fn server_label(url: &str) -> String {
    crate::secret::redact(url)
}

pub(super) fn db_err(url: &str) -> impl Fn(postgres::Error) -> SourceError + '_ {
    move |e| {
        let mut message = e.to_string();
        if let Some(db) = e.as_db_error() {
            message = format!("{}: {}", db.severity(), db.message());
        }
        SourceError::Database {
            server: server_label(url),
            message,
        }
    }
}

pub(super) fn connect(url: &str, password: Option<&str>) -> Result<postgres::Client, SourceError> {
    let mut config: postgres::Config = url.parse().map_err(db_err(url))?;
    if let Some(p) = password {
        config.password(p);
    }
    config.application_name("backupd");
    config.connect_timeout(std::time::Duration::from_secs(15));
    config.connect(postgres::NoTls).map_err(db_err(url))
}

/// The database's size on the server, for a progress ETA (a dump is smaller: no indexes).
pub fn size_estimate(spec: &PostgresSpec) -> Option<u64> {
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD").ok()?;
    let mut client = connect(&spec.url, password.as_deref()).ok()?;
    let size: i64 = client
        .query_one("select pg_database_size(current_database())", &[])
        .ok()?
        .get(0);
    u64::try_from(size).ok()
}

/// Tools present, server reachable with these credentials, client new enough.
pub fn probe(spec: &PostgresSpec) -> Result<String, SourceError> {
    let pg_dump = child::find_tool(&["pg_dump"], "postgresql-client")?;
    child::find_tool(&["pg_restore"], "postgresql-client")?;
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
    let tool_version = child::output(version_cmd(&pg_dump), None)?;
    let url = if database_of(&spec.url).is_empty() {
        child::with_database(&spec.url, "postgres")
    } else {
        spec.url.clone()
    };
    let mut client = connect(&url, password.as_deref())?;
    let version: String = client
        .query_one("show server_version", &[])
        .map_err(db_err(&url))?
        .get(0);
    let server_major = child::major_version(&format!("{version} ")).unwrap_or(0);
    let client_major = child::major_version(&tool_version).unwrap_or(0);
    if client_major < server_major {
        return Err(SourceError::Tool {
            tool: "pg_dump".into(),
            message: format!(
                "is version {client_major}, older than the server ({server_major}); install postgresql-client-{server_major}"
            ),
        });
    }
    Ok(format!(
        "postgres {} answers (server {version}, {})",
        server_label(&spec.url),
        tool_version.trim()
    ))
}

pub fn dump(spec: &PostgresSpec, out: &mut dyn Write) -> Result<Dumped, SourceError> {
    let pg_dump = child::find_tool(&["pg_dump"], "postgresql-client")?;
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
    let tool_version = child::output(version_cmd(&pg_dump), None)?
        .trim()
        .to_string();

    let mut client = connect(&spec.url, password.as_deref())?;
    let err = db_err(&spec.url);
    let server_version: String = client
        .query_one("show server_version", &[])
        .map_err(&err)?
        .get(0);
    let server_major: u32 = client
        .query_one("show server_version_num", &[])
        .map_err(&err)?
        .get::<_, String>(0)
        .parse::<u32>()
        .unwrap_or(0)
        / 10000;
    let client_major = child::major_version(&tool_version).unwrap_or(0);
    if client_major < server_major {
        return Err(SourceError::Tool {
            tool: "pg_dump".into(),
            message: format!(
                "is version {client_major} but the server {} runs {server_major}: pg_dump cannot dump a newer server; install postgresql-client-{server_major}",
                server_label(&spec.url)
            ),
        });
    }

    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(&err)?;
    let snapshot: String = tx
        .query_one("select pg_export_snapshot()", &[])
        .map_err(&err)?
        .get(0);
    let tables = row_counts(&mut tx, spec).map_err(&err)?;

    let mut cmd = super::child::command(&pg_dump, &["PG"]);
    cmd.arg("--format=custom")
        .arg("--compress=0")
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--dbname={}", spec.url));
    for t in &spec.include_tables {
        cmd.arg(format!("--table={t}"));
    }
    for t in &spec.exclude_tables {
        cmd.arg(format!("--exclude-table={t}"));
    }
    cmd.args(&spec.extra_args);
    cmd.env_remove("PGPASSWORD");
    if let Some(p) = &password {
        cmd.env("PGPASSWORD", p);
    }
    child::stream_to(cmd, out, password.as_deref())?;
    // The exported snapshot lives as long as this transaction: end it only now.
    tx.commit().map_err(&err)?;
    Ok(Dumped {
        stats: SourceStats::Database {
            engine: "postgres".into(),
            database: database_of(&spec.url),
            server_version,
            tool_version,
            row_counts: match spec.row_counts {
                RowCounts::Exact => "exact".into(),
                RowCounts::Estimate => "estimate".into(),
            },
            tables,
        },
        warnings: Vec::new(),
        index: None,
    })
}

pub(super) fn version_cmd(tool: &Path) -> Command {
    let mut cmd = super::child::command(tool, &["PG"]);
    cmd.arg("--version");
    cmd
}

/// Rows per `schema.table` inside the dump's snapshot, for the tables the dump includes.
fn row_counts(
    tx: &mut postgres::Transaction<'_>,
    spec: &PostgresSpec,
) -> Result<BTreeMap<String, u64>, postgres::Error> {
    let rows = tx.query(
        "select n.nspname, c.relname, format('%I.%I', n.nspname, c.relname), c.reltuples::float8
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where c.relkind in ('r', 'p')
            and n.nspname not in ('pg_catalog', 'information_schema')
            and n.nspname not like 'pg_toast%'
          order by 1, 2",
        &[],
    )?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (schema, table, quoted): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let full = format!("{schema}.{table}");
        let named = |list: &[String]| list.iter().any(|t| t == &full || t == &table);
        if (!spec.include_tables.is_empty() && !named(&spec.include_tables))
            || named(&spec.exclude_tables)
        {
            continue;
        }
        let n = match spec.row_counts {
            RowCounts::Exact => tx
                .query_one(&format!("select count(*) from {quoted}"), &[])?
                .get::<_, i64>(0),
            RowCounts::Estimate => row.get::<_, f64>(3).max(0.0) as i64,
        };
        out.insert(full, n.max(0) as u64);
    }
    Ok(out)
}

/// Feeds the custom-format dump in `input` to `pg_restore` against `into.url`.
pub fn restore_into(input: &mut dyn Read, into: &IntoServer) -> Result<Restored, SourceError> {
    check_url(&into.url).map_err(|what| SourceError::Invalid {
        path: PathBuf::from(server_label(&into.url)),
        what: what.0,
    })?;
    let pg_restore = child::find_tool(&["pg_restore"], "postgresql-client")?;
    if into.create {
        create_database(into)?;
    }
    let mut cmd = super::child::command(pg_restore, &["PG"]);
    cmd.arg("--exit-on-error")
        .arg("--no-owner")
        .arg(format!("--dbname={}", into.url));
    if into.clean {
        cmd.arg("--clean").arg("--if-exists");
    }
    if let Some(p) = &into.password {
        cmd.env("PGPASSWORD", p);
    }
    let bytes = child::feed(cmd, input, into.password.as_deref())?;
    Ok(Restored {
        bytes,
        ..Restored::default()
    })
}

fn create_database(into: &IntoServer) -> Result<(), SourceError> {
    let mut admin = url::Url::parse(&into.url).map_err(|e| SourceError::Invalid {
        path: PathBuf::from(server_label(&into.url)),
        what: e.to_string(),
    })?;
    let name = database_of(&into.url);
    admin.set_path("/postgres");
    let mut client = connect(admin.as_str(), into.password.as_deref())?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    client
        .batch_execute(&format!("create database {quoted}"))
        .map_err(db_err(&into.url))
}

/// Writes the dump as `DIR/<database>.pgdump` for a manual `pg_restore`.
pub fn restore_to_file(
    input: &mut dyn Read,
    dest: &Path,
    database: &str,
    overwrite: bool,
) -> Result<Restored, SourceError> {
    super::restore_file(
        input,
        dest,
        &format!("{}.pgdump", safe_file_stem(database)),
        overwrite,
    )
}

/// A database name as a file name: anything but `[A-Za-z0-9_-]` becomes `_`.
pub(crate) fn safe_file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "database".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_are_refused() {
        assert!(check_url("postgres://backup@db:5432/app").is_ok());
        assert!(
            check_url("postgres://backup:hunter2@db/app")
                .unwrap_err()
                .to_string()
                .contains("password_file")
        );
        assert!(
            check_url("postgres://backup@db")
                .unwrap_err()
                .to_string()
                .contains("no database")
        );
        assert!(check_url("mysql://x@y/z").is_err());
    }

    #[test]
    fn database_names_become_safe_file_names() {
        assert_eq!(safe_file_stem("app"), "app");
        assert_eq!(safe_file_stem("../etc/passwd"), "___etc_passwd");
        assert_eq!(safe_file_stem(""), "database");
    }
}
