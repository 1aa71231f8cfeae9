//! PostgreSQL base backups (`kind = "postgres"`, `method = "basebackup"`): the whole
//! cluster's data directory as `pg_basebackup --format=tar --wal-method=none` streams it,
//! through the usual pipeline; consistent only with the archived WAL from its start to
//! its stop LSN (see `crate::wal`), which the manifest records.
//!
//! Vocabulary: the *start/stop LSN* and *timeline* of a base backup; the *recovery
//! settings* a restore writes (`restore_command`, a recovery target, `recovery.signal`);
//! a *replay* is verification's throwaway server that recovers a restored base backup to
//! the end of the archived WAL and answers the source's checks.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Dumped, PostgresSpec, RestoreOptions, Restored, SourceError, child, io_err};
use crate::snapshot::SourceStats;

/// The manifest's engine word and the tar's object format.
pub const ENGINE: &str = "basebackup";

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
    let server = server_facts(spec, password.as_deref())?;
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

fn server_facts(spec: &PostgresSpec, password: Option<&str>) -> Result<ServerFacts, SourceError> {
    let mut client = super::postgres::connect(&spec.url, password)?;
    let err = super::postgres::db_err(&spec.url);
    let show = |client: &mut postgres::Client, what: &str| -> Result<String, SourceError> {
        Ok(client
            .query_one(&format!("show {what}"), &[])
            .map_err(&err)?
            .get(0))
    };
    let version = show(&mut client, "server_version")?;
    let archive_mode = show(&mut client, "archive_mode")?;
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

#[derive(Debug, PartialEq)]
struct Points {
    start_lsn: String,
    timeline: u32,
    stop_lsn: String,
}

/// Files of the tar kept while it streams past: the label whole, the manifest's tail.
const LABEL_MAX_BYTES: usize = 64 << 10;
const MANIFEST_TAIL_BYTES: usize = 64 << 10;

/// A writer that passes a tar stream through and keeps `backup_label` and the tail of
/// `backup_manifest` (whose last lines hold the WAL range) as they go by.
struct TarTap<'a> {
    inner: &'a mut dyn Write,
    header: Vec<u8>,
    /// Bytes of the current member's data (and padding) still to pass.
    remaining: u64,
    /// Of those, the member's own bytes (the rest is padding).
    data_left: u64,
    keeping: Option<Keep>,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
    saw_manifest: bool,
}

#[derive(Clone, Copy)]
enum Keep {
    Label,
    Manifest,
}

impl<'a> TarTap<'a> {
    fn new(inner: &'a mut dyn Write) -> Self {
        TarTap {
            inner,
            header: Vec::with_capacity(512),
            remaining: 0,
            data_left: 0,
            keeping: None,
            label: Vec::new(),
            manifest_tail: Vec::new(),
            saw_manifest: false,
        }
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                let own = n.min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                match self.keeping {
                    Some(Keep::Label) if self.label.len() < LABEL_MAX_BYTES => {
                        self.label.extend_from_slice(&data[..own]);
                    }
                    Some(Keep::Manifest) => {
                        self.manifest_tail.extend_from_slice(&data[..own]);
                        if self.manifest_tail.len() > 2 * MANIFEST_TAIL_BYTES {
                            let cut = self.manifest_tail.len() - MANIFEST_TAIL_BYTES;
                            self.manifest_tail.drain(..cut);
                        }
                    }
                    _ => {}
                }
                self.remaining -= n as u64;
                self.data_left -= own as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(512 - self.header.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 512 {
                self.start_member();
                self.header.clear();
            }
        }
    }

    fn start_member(&mut self) {
        let h = &self.header;
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = &h[..name_end];
        let size = tar_number(&h[124..136]);
        self.keeping = match (name, h[156]) {
            (b"backup_label" | b"./backup_label", b'0' | 0) => Some(Keep::Label),
            (b"backup_manifest" | b"./backup_manifest", b'0' | 0) => {
                self.saw_manifest = true;
                Some(Keep::Manifest)
            }
            _ => None,
        };
        self.data_left = size;
        self.remaining = size.div_ceil(512) * 512;
    }

    fn points(&self) -> Result<Points, String> {
        let label = String::from_utf8_lossy(&self.label);
        let field = |key: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(key).map(str::trim))
                .map(str::to_string)
        };
        let start_lsn = field("START WAL LOCATION:")
            .and_then(|v| v.split_whitespace().next().map(str::to_string))
            .ok_or("its tar holds no backup_label with a START WAL LOCATION")?;
        let timeline: u32 = field("START TIMELINE:")
            .and_then(|v| v.parse().ok())
            .ok_or("its backup_label has no START TIMELINE")?;
        if !self.saw_manifest {
            return Err("wrote no backup_manifest into its tar, which holds the WAL range the backup needs: remove --no-manifest from extra_args".into());
        }
        let stop_lsn = manifest_end_lsn(&String::from_utf8_lossy(&self.manifest_tail))
            .ok_or("its backup_manifest has no WAL-Ranges End-LSN")?;
        crate::wal::name::parse_lsn(&start_lsn).ok_or("its backup_label's start is not an LSN")?;
        Ok(Points {
            start_lsn,
            timeline,
            stop_lsn,
        })
    }
}

impl Write for TarTap<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.observe(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A tar header number: octal text, or base-256 when the high bit is set (large files).
fn tar_number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..]
            .iter()
            .fold(u64::from(field[0] & 0x7f), |n, &b| (n << 8) | u64::from(b));
    }
    field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(*b))
        .fold(0, |n, b| (n << 3) | u64::from(b - b'0'))
}

/// The latest `End-LSN` of the manifest's `WAL-Ranges` (several when the timeline
/// changed during the backup).
fn manifest_end_lsn(tail: &str) -> Option<String> {
    let ranges = &tail[tail.rfind("\"WAL-Ranges\"")?..];
    ranges
        .match_indices("\"End-LSN\"")
        .filter_map(|(i, m)| {
            let rest = ranges[i + m.len()..]
                .trim_start()
                .strip_prefix(':')?
                .trim_start();
            let value = rest.strip_prefix('"')?.split('"').next()?;
            crate::wal::name::parse_lsn(value).map(|lsn| (lsn, value.to_string()))
        })
        .max()
        .map(|(_, v)| v)
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
/// archiving on and running backupd (a base backup without it never becomes consistent).
pub fn probe(spec: &PostgresSpec) -> Result<String, SourceError> {
    let tool = child::find_tool(&["pg_basebackup"], "postgresql-client")?;
    let tool_version = child::output(super::postgres::version_cmd(&tool), None)?;
    let password = child::password(spec.password_file.as_deref(), "PGPASSWORD")?;
    let server = server_facts(spec, password.as_deref())?;
    let mut client = super::postgres::connect(&spec.url, password.as_deref())?;
    let err = super::postgres::db_err(&spec.url);
    let row = client
        .query_one(
            "select rolreplication or rolsuper, current_setting('archive_command')
               from pg_roles where rolname = current_user",
            &[],
        )
        .map_err(&err)?;
    let label = PathBuf::from(crate::secret::redact(&spec.url));
    if !row.get::<_, bool>(0) {
        return Err(SourceError::Invalid {
            path: label,
            what: "the role may not take base backups: `ALTER ROLE … REPLICATION` (and allow it a replication line in pg_hba.conf)".into(),
        });
    }
    let command: String = row.get(1);
    if !command.contains("wal-push") {
        return Err(SourceError::Invalid {
            path: label,
            what: format!(
                "archive_command is {command:?}, not `backupd wal-push --job JOB %p`: the WAL a base backup needs would not reach the job's targets"
            ),
        });
    }
    Ok(format!(
        "postgres {} answers (server {}, {}), archiving with backupd wal-push",
        crate::secret::redact(&spec.url),
        server.version,
        tool_version.trim()
    ))
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

/// A replay's settings.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Where the archived WAL was fetched to (checked), one file per WAL name.
    pub wal_dir: PathBuf,
    /// The OS user the server runs as when backupd is root (PostgreSQL refuses root).
    pub run_as: String,
    /// The role and database the checks connect as (the source URL's).
    pub user: String,
    pub database: String,
    pub checks: Vec<String>,
    /// The server's major version, to find matching binaries.
    pub major: u32,
    pub timeout: Duration,
}

/// What a replay reached.
#[derive(Debug)]
pub struct Replayed {
    pub elapsed: Duration,
    /// The LSN the promoted server continues from: recovery ended just before it.
    pub end_lsn: String,
    /// Each check query and whether it returned true (or why it failed).
    pub checks: Vec<(String, Result<bool, String>)>,
}

/// Settings that override whatever the restored configuration says: a base backup read
/// from a target may carry commands, libraries or paths meant to run on the verifying
/// host, and the throwaway server must neither archive, listen on the network nor touch
/// anything outside its scratch directory.
fn replay_settings(scratch: &Path, wal_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("listen_addresses", String::new()),
        ("port", "5432".into()),
        ("unix_socket_directories", scratch.display().to_string()),
        (
            "hba_file",
            scratch.join("pg_hba.conf").display().to_string(),
        ),
        (
            "ident_file",
            scratch.join("pg_ident.conf").display().to_string(),
        ),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        (
            "restore_command",
            format!("cp \"{}/%f\" \"%p\"", wal_dir.display()),
        ),
        ("recovery_target_timeline", "latest".into()),
        ("ssl", "off".into()),
        ("ssl_passphrase_command", String::new()),
        ("shared_preload_libraries", String::new()),
        ("session_preload_libraries", String::new()),
        ("local_preload_libraries", String::new()),
        ("logging_collector", "off".into()),
        ("external_pid_file", String::new()),
        ("hot_standby", "on".into()),
        // Recovery with hot_standby refuses limits below the primary's (max_connections,
        // max_wal_senders, …): those stay as the backup has them.
        ("shared_buffers", "32MB".into()),
    ]
}

/// Starts a throwaway server on the base backup restored in `data_dir`, replays the WAL
/// in `replay.wal_dir` to its end, runs the checks and stops the server whatever happens.
pub fn replay(data_dir: &Path, scratch: &Path, replay: &Replay) -> Result<Replayed, SourceError> {
    use std::os::unix::fs::PermissionsExt;
    let postgres = server_binary(replay.major)?;
    for (name, text) in [
        ("pg_hba.conf", "local all all trust\n"),
        ("pg_ident.conf", ""),
    ] {
        let path = scratch.join(name);
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }
    // Recovery, not a standby: the server promotes at the end of the archive.
    let signal = data_dir.join("recovery.signal");
    std::fs::write(&signal, "").map_err(io_err(&signal))?;
    for stale in ["postmaster.pid", "standby.signal"] {
        let _ = std::fs::remove_file(data_dir.join(stale));
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(data_dir))?;
    let ids = if rustix::process::geteuid().is_root() {
        let ids = user_ids(&replay.run_as)?;
        chown_tree(scratch, ids)?;
        Some(ids)
    } else {
        None
    };
    let log_path = scratch.join("server.log");
    let log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
    if let Some((uid, gid)) = ids {
        rustix::fs::chown(
            &log_path,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| io_err(&log_path)(e.into()))?;
    }
    let mut cmd = child::command(&postgres, &[]);
    cmd.arg("-D").arg(data_dir);
    for (key, value) in replay_settings(scratch, &replay.wal_dir) {
        cmd.arg("-c").arg(format!("{key}={value}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io_err(&log_path))?)
        .stderr(log);
    if let Some((uid, gid)) = ids {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| SourceError::Tool {
        tool: "postgres".into(),
        message: format!("cannot start: {e}"),
    })?;
    let mut server = Running { child, log_path };
    let mut config = postgres::Config::new();
    config
        .host_path(scratch)
        .port(5432)
        .user(&replay.user)
        .dbname(&replay.database)
        .application_name("backupd-verify")
        .connect_timeout(Duration::from_secs(5));
    // Connections are refused until the replay is consistent, and it is done when the
    // server leaves recovery (it promotes at the end of the archive).
    let mut client = loop {
        server.alive()?;
        if started.elapsed() > replay.timeout {
            return Err(server.failed("did not finish replaying in time"));
        }
        if let Ok(mut c) = config.connect(postgres::NoTls)
            && let Ok(row) = c.query_one("select pg_is_in_recovery()", &[])
            && !row.get::<_, bool>(0)
        {
            break c;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    let end_lsn: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .map_err(|e| server.failed(&e.to_string()))?
        .get(0);
    let checks = replay
        .checks
        .iter()
        .map(|q| {
            let answer = client
                .query_one(q.as_str(), &[])
                .map_err(|e| match e.as_db_error() {
                    Some(db) => db.message().to_string(),
                    None => e.to_string(),
                })
                .and_then(|row| row.try_get::<_, bool>(0).map_err(|e| e.to_string()));
            (q.clone(), answer)
        })
        .collect();
    drop(client);
    server.stop();
    Ok(Replayed {
        elapsed,
        end_lsn,
        checks,
    })
}

/// The throwaway server; stopped (immediate shutdown) when dropped.
struct Running {
    child: std::process::Child,
    log_path: PathBuf,
}

impl Running {
    fn alive(&mut self) -> Result<(), SourceError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => Err(self.failed("stopped during the replay")),
        }
    }

    fn failed(&self, what: &str) -> SourceError {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("FATAL") || l.contains("PANIC") || l.contains("ERROR"))
            .collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        SourceError::Tool {
            tool: "postgres (replay)".into(),
            message: format!("{what}: {tail}"),
        }
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                // SIGQUIT: immediate shutdown; the scratch copy is thrown away anyway.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `postgres` of the server's major version: the Debian layout first, then PATH.
fn server_binary(major: u32) -> Result<PathBuf, SourceError> {
    let packaged = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/postgres"));
    if packaged.is_file() {
        return Ok(packaged);
    }
    let found = child::find_tool(&["postgres"], &format!("postgresql-{major}"))?;
    let version = child::output(super::postgres::version_cmd(&found), None)?;
    match child::major_version(&version) {
        Some(m) if m == major => Ok(found),
        other => Err(SourceError::Tool {
            tool: "postgres".into(),
            message: format!(
                "on PATH is version {}, the backup needs {major}: install postgresql-{major}",
                other.unwrap_or(0)
            ),
        }),
    }
}

/// The uid and gid of a user, as `id` reports them (NSS included).
fn user_ids(user: &str) -> Result<(u32, u32), SourceError> {
    let id = |flag: &str| -> Result<u32, SourceError> {
        let mut cmd = std::process::Command::new("id");
        cmd.arg(flag).arg(user);
        child::output(cmd, None)?
            .trim()
            .parse()
            .map_err(|_| SourceError::Tool {
                tool: "id".into(),
                message: format!("gave no number for user {user:?}"),
            })
    };
    match (id("-u"), id("-g")) {
        (Ok(u), Ok(g)) if u != 0 => Ok((u, g)),
        _ => Err(SourceError::Invalid {
            path: PathBuf::from(user),
            what: "PostgreSQL refuses to run as root, and this user (the replay's `verify_as`) does not exist or is root: create it, or set verify_as on the source".into(),
        }),
    }
}

/// Gives a scratch tree to the replay's user, never following links.
fn chown_tree(root: &Path, (uid, gid): (u32, u32)) -> Result<(), SourceError> {
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| io_err(root)(e.into()))?;
        rustix::fs::chownat(
            rustix::fs::CWD,
            entry.path(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(entry.path())(e.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn the_wal_points_are_read_from_the_label_and_manifest_in_the_stream() {
        let label = b"START WAL LOCATION: 0/5000028 (file 000000020000000000000005)\nCHECKPOINT LOCATION: 0/5000060\nSTART TIMELINE: 2\n";
        let manifest = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [ { "Path": "End-LSN", "Size": 3 } ],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/4000028", "End-LSN": "0/5000000" },
{ "Timeline": 2, "Start-LSN": "0/5000000", "End-LSN": "0/5000100" }
],
"Manifest-Checksum": "00"}"#;
        let mut stream = tar_member("base/1/1259", &vec![7u8; 70_000]);
        stream.extend(tar_member("backup_label", label));
        stream.extend(tar_member("global/pg_control", &[1u8; 8192]));
        stream.extend(tar_member("backup_manifest", manifest));
        stream.extend([0u8; 1024]);
        let mut sink = Vec::new();
        let mut tap = TarTap::new(&mut sink);
        // In odd-sized writes, as a pipe delivers them.
        for chunk in stream.chunks(777) {
            tap.write_all(chunk).unwrap();
        }
        assert_eq!(
            tap.points(),
            Ok(Points {
                start_lsn: "0/5000028".into(),
                timeline: 2,
                stop_lsn: "0/5000100".into()
            })
        );
        drop(tap);
        assert_eq!(sink, stream, "the stream passes unchanged");

        let mut no_manifest = tar_member("backup_label", label);
        no_manifest.extend([0u8; 1024]);
        let mut sink = Vec::new();
        let mut tap = TarTap::new(&mut sink);
        tap.write_all(&no_manifest).unwrap();
        assert!(tap.points().unwrap_err().contains("--no-manifest"));
        assert_eq!(tar_number(b"00000001750\0"), 1000);
        assert_eq!(
            tar_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00]),
            256
        );
    }

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
