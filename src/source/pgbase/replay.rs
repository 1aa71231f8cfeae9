//! A replay: a throwaway server started on a restored base backup, recovering it to the
//! end of the WAL fetched beside it, answering the source's checks, and stopped whatever
//! happens. Run as another user when backupd is root (PostgreSQL refuses root).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::source::{SourceError, child, io_err};

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
    let version = child::output(crate::source::postgres::version_cmd(&found), None)?;
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
