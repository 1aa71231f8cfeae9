//! PostgreSQL base backups (`kind = "postgres"`, `method = "basebackup"`): the whole
//! cluster's data directory as `pg_basebackup --format=tar --wal-method=none` streams it,
//! through the usual pipeline; consistent only with the archived WAL from its start to
//! its stop LSN (see `crate::wal`), which the manifest records.
//!
//! Vocabulary: the *start/stop LSN* and *timeline* of a base backup; the *recovery
//! settings* a restore writes (`restore_command`, a recovery target, `recovery.signal`);
//! a *replay* is verification's throwaway server that recovers a restored base backup to
//! the end of the archived WAL and answers the source's checks.
//!
//! Layout: this file (policy checks, dump, probe, archiver statistics, restore and the
//! recovery settings), `tap` (the WAL points read from the stream), `replay`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{Dumped, PostgresSpec, RestoreOptions, Restored, SourceError, child, io_err};
use crate::snapshot::SourceStats;

mod replay;
mod tap;
pub use replay::{Replay, Replayed, replay};
use tap::TarTap;

/// Keys of a postgres source that mean nothing for a base backup (it is the whole
/// cluster), each with why: a policy error names them.
pub fn check_spec(spec: &PostgresSpec) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let whole = "a base backup copies the whole cluster: remove it, or use method = \"dump\"";
    if spec.databases.is_some() {
        out.push(("databases", whole.to_string()));
    }
    if !spec.include_tables.is_empty() {
        out.push(("include_tables", whole.to_string()));
    }
    if !spec.exclude_tables.is_empty() {
        out.push(("exclude_tables", whole.to_string()));
    }
    if spec.include_globals {
        out.push((
            "include_globals",
            "a base backup already holds roles and tablespaces: remove it".to_string(),
        ));
    }
    out
}

/// Streams `pg_basebackup`'s tar of the cluster into `out`, after checking that WAL
/// archiving is on (without it the backup can never be made consistent).
pub fn dump(spec: &PostgresSpec, out: &mut dyn Write) -> Result<Dumped, SourceError> {
    let tool = child::find_tool(&["pg_basebackup"], "postgresql-client")?;
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
    let tool_version = child::output(super::postgres::version_cmd(&tool), None)?
        .trim()
        .to_string();
    let server = server_facts(
        &mut super::postgres::connect(&spec.url, password.as_deref())?,
        spec,
    )?;
    let mut cmd = child::command(&tool, &["PG"]);
    cmd.arg(format!("--dbname={}", spec.url))
        .arg("--pgdata=-")
        .arg("--format=tar")
        .arg("--wal-method=none")
        .arg("--checkpoint=fast")
        .args(&spec.extra_args);
    cmd.env_remove("PGPASSWORD");
    if let Some(p) = &password {
        cmd.env("PGPASSWORD", p);
    }
    let mut running = child::spawn(cmd, Stdio::null(), password.as_deref())?;
    // The WAL points are read from the stream itself: `backup_label` (start, timeline)
    // and the `backup_manifest` pg_basebackup appends to a tar on stdout (its WAL range).
    let mut tap = TarTap::new(out);
    let bytes = running.copy_stdout(&mut tap)?;
    running.finish()?;
    let points = tap.points().map_err(|why| SourceError::Tool {
        tool: "pg_basebackup".into(),
        message: why,
    })?;
    if bytes == 0 {
        return Err(SourceError::Tool {
            tool: "pg_basebackup".into(),
            message: "produced no output".into(),
        });
    }
    let start = crate::wal::name::parse_lsn(&points.start_lsn).unwrap_or(0);
    let start_wal = crate::wal::name::segment_name(
        points.timeline,
        start / server.segment_bytes,
        server.segment_bytes,
    )
    .unwrap_or_default();
    Ok(Dumped {
        stats: SourceStats::Basebackup {
            server_version: server.version,
            tool_version,
            system_identifier: server.system_identifier,
            database: super::postgres::database_of(&spec.url),
            timeline: points.timeline,
            start_lsn: points.start_lsn,
            stop_lsn: points.stop_lsn,
            start_wal,
            wal_segment_bytes: server.segment_bytes,
        },
        warnings: Vec::new(),
        index: None,
    })
}

struct ServerFacts {
    version: String,
    system_identifier: String,
    segment_bytes: u64,
}

fn server_facts(
    client: &mut postgres::Client,
    spec: &PostgresSpec,
) -> Result<ServerFacts, SourceError> {
    let err = super::postgres::db_err(&spec.url);
    let show = |client: &mut postgres::Client, what: &str| -> Result<String, SourceError> {
        Ok(client
            .query_one(&format!("show {what}"), &[])
            .map_err(&err)?
            .get(0))
    };
    let version = show(client, "server_version")?;
    let archive_mode = show(client, "archive_mode")?;
    if archive_mode == "off" {
        return Err(SourceError::Invalid {
            path: PathBuf::from(crate::secret::redact(&spec.url)),
            what: "archive_mode is off, so this base backup could never be made consistent: set wal_level = replica, archive_mode = on and archive_command = 'backupd wal-push --job JOB %p' in postgresql.conf and restart (BACKUP_POLICY.md, \"Point-in-time recovery\")".into(),
        });
    }
    let segment_bytes: i64 = client
        .query_one(
            "select setting::bigint from pg_settings where name = 'wal_segment_size'",
            &[],
        )
        .map_err(&err)?
        .get(0);
    // Needs superuser or an explicit grant: without it the backup is no less usable.
    let system_identifier = client
        .query_one(
            "select system_identifier::text from pg_control_system()",
            &[],
        )
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default();
    Ok(ServerFacts {
        version,
        system_identifier,
        segment_bytes: u64::try_from(segment_bytes).unwrap_or(16 << 20),
    })
}

/// What PostgreSQL says about its own archiving (`pg_stat_archiver`), for the daemon's
/// status and metrics: a failing `archive_command` fills `pg_wal` until the server stops,
/// so failures and the backlog are worth an alert long before that.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Archiver {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_at: Option<chrono::DateTime<chrono::Utc>>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// WAL files waiting to be archived (`.ready` in `pg_wal/archive_status`); `None`
    /// when the role may not list that directory (grant it `pg_monitor`).
    pub ready_files: Option<u64>,
}

/// Reads the server's archiver statistics.
pub fn archiver(spec: &PostgresSpec) -> Result<Archiver, SourceError> {
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
    let mut client = super::postgres::connect(&spec.url, password.as_deref())?;
    let err = super::postgres::db_err(&spec.url);
    let row = client
        .query_one(
            "select archived_count, last_archived_wal, extract(epoch from last_archived_time)::float8,
                    failed_count, last_failed_wal, extract(epoch from last_failed_time)::float8
               from pg_stat_archiver",
            &[],
        )
        .map_err(&err)?;
    let at = |secs: Option<f64>| {
        secs.and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0) as i64))
    };
    let ready_files = client
        .query_one(
            "select count(*) from pg_ls_archive_statusdir() where name like '%.ready'",
            &[],
        )
        .ok()
        .map(|r| r.get::<_, i64>(0).max(0) as u64);
    Ok(Archiver {
        archived_count: row.get::<_, i64>(0).max(0) as u64,
        last_archived_wal: row.get(1),
        last_archived_at: at(row.get(2)),
        failed_count: row.get::<_, i64>(3).max(0) as u64,
        last_failed_wal: row.get(4),
        last_failed_at: at(row.get(5)),
        ready_files,
    })
}

/// `backupd check`: tools present, server reachable with replication rights, and WAL
/// archiving on (a base backup without it never becomes consistent); an
/// `archive_command` that does not name `backupd wal-push` is worth a look (a wrapper
/// script calling it is fine).
pub fn probe(spec: &PostgresSpec) -> Result<super::Probed, SourceError> {
    let tool = child::find_tool(&["pg_basebackup"], "postgresql-client")?;
    let tool_version = child::output(super::postgres::version_cmd(&tool), None)?;
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
    let mut client = super::postgres::connect(&spec.url, password.as_deref())?;
    let server = server_facts(&mut client, spec)?;
    let err = super::postgres::db_err(&spec.url);
    let row = client
        .query_one(
            "select rolreplication or rolsuper, current_setting('archive_command')
               from pg_roles where rolname = current_user",
            &[],
        )
        .map_err(&err)?;
    let label = crate::secret::redact(&spec.url);
    if !row.get::<_, bool>(0) {
        return Err(SourceError::Invalid {
            path: PathBuf::from(label),
            what: "the role may not take base backups: `ALTER ROLE … REPLICATION` (and allow it a replication line in pg_hba.conf)".into(),
        });
    }
    let command: String = row.get(1);
    let mut warnings = Vec::new();
    if !command.contains("wal-push") {
        warnings.push(format!(
            "{label}: archive_command is {command:?}, which does not name `backupd wal-push --job JOB %p`: unless it calls it, the WAL a base backup needs never reaches the job's targets"
        ));
    }
    Ok(super::Probed {
        what: format!(
            "postgres {label} answers (server {}, {}), archive_mode on, replication allowed",
            server.version,
            tool_version.trim()
        ),
        warnings,
    })
}

/// Unpacks a base backup into `dest` by the directory restore rules (nothing outside
/// `dest`), mode 0700 as PostgreSQL demands; as root, `dest` goes to the owner of the
/// restored files so the server can start there.
pub fn restore(
    input: &mut dyn Read,
    dest: &Path,
    options: RestoreOptions,
) -> Result<Restored, SourceError> {
    use std::os::unix::fs::PermissionsExt;
    let r = super::directory::restore(
        input,
        dest,
        super::directory::Unpack {
            overwrite: options.overwrite,
            same_owner: options.same_owner,
            data: super::directory::Data::Write,
        },
    )?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dest))?;
    if rustix::process::geteuid().is_root() && options.same_owner {
        let version = dest.join("PG_VERSION");
        if let Ok(meta) = std::fs::symlink_metadata(&version) {
            use std::os::unix::fs::MetadataExt;
            rustix::fs::chown(
                dest,
                Some(rustix::fs::Uid::from_raw(meta.uid())),
                Some(rustix::fs::Gid::from_raw(meta.gid())),
            )
            .map_err(|e| io_err(dest)(e.into()))?;
        }
    }
    Ok(r)
}

/// Where a recovery stops: PostgreSQL's `recovery_target_*`; none means the end of the
/// archived WAL.
#[derive(Debug, Clone, PartialEq)]
pub enum Point {
    Time(String),
    Lsn(String),
    Xid(String),
}

impl Point {
    fn setting(&self) -> (&'static str, &str) {
        match self {
            Point::Time(t) => ("recovery_target_time", t),
            Point::Lsn(l) => ("recovery_target_lsn", l),
            Point::Xid(x) => ("recovery_target_xid", x),
        }
    }
}

/// A string as a postgresql.conf value: single-quoted, quotes doubled.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Writes the recovery settings into a restored data directory: appended to
/// `postgresql.auto.conf` (read last, so they win over anything the backup carried) and
/// `recovery.signal`. Neither is followed if it is a link.
pub fn write_recovery(
    data_dir: &Path,
    restore_command: &str,
    point: Option<&Point>,
) -> Result<(), SourceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |name: &str, append: bool| {
        let path = data_dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))
            .map(|f| (f, path))
    };
    let mut text = format!(
        "\n# Written by backupd restore {}: recover from the WAL archive.\nrestore_command = {}\nrecovery_target_timeline = 'latest'\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        conf_quote(restore_command)
    );
    if let Some(point) = point {
        let (key, value) = point.setting();
        text.push_str(&format!(
            "{key} = {}\nrecovery_target_action = 'promote'\n",
            conf_quote(value)
        ));
    }
    let (mut conf, path) = open("postgresql.auto.conf", true)?;
    conf.write_all(text.as_bytes()).map_err(io_err(&path))?;
    let (signal, path) = open("recovery.signal", false)?;
    signal.sync_all().map_err(io_err(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_settings_are_quoted_and_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "work_mem = '4MB'\n",
        )
        .unwrap();
        write_recovery(
            dir.path(),
            "backupd wal-fetch --config '/etc/it''s.toml' %f %p",
            Some(&Point::Time("2026-12-01 10:05:00+00".into())),
        )
        .unwrap();
        let conf = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(conf.starts_with("work_mem = '4MB'\n"));
        assert!(conf.contains(
            "restore_command = 'backupd wal-fetch --config ''/etc/it''''s.toml'' %f %p'\n"
        ));
        assert!(conf.contains("recovery_target_time = '2026-12-01 10:05:00+00'\n"));
        assert!(dir.path().join("recovery.signal").is_file());

        // A restored auto.conf that is a link (a forged archive) is not written through.
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let data = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, data.path().join("postgresql.auto.conf")).unwrap();
        assert!(write_recovery(data.path(), "x", None).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    }
}
