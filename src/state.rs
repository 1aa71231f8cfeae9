//! What backupd remembers on local disk between runs, in `daemon.state_dir`: each job's
//! last outcome (`jobs/<job>.json`, written by `run-now` and the daemon while they hold
//! the job's lock) and where the running daemon listens (`daemon.json`). The targets stay
//! the source of truth for snapshots; this is only what `status` shows when no daemon
//! answers, and it is fine to delete.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One job's remembered history (the `last_*` fields of `status --json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub last_run: Option<RunRecord>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

/// The outcome of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `success` or `failure`.
    pub status: String,
    pub snapshot: Option<String>,
    pub committed: Vec<String>,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    /// Every error of the run, one line each.
    pub errors: Vec<String>,
    /// `run-now` or `daemon`.
    pub by: String,
}

impl RunRecord {
    pub fn ok(&self) -> bool {
        self.status == "success"
    }
}

fn job_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join("jobs").join(format!("{job}.json"))
}

/// The job's record, or an empty one when there is none (or it is unreadable).
pub fn read_job(state_dir: &Path, job: &str) -> JobRecord {
    std::fs::read(job_path(state_dir, job))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Adds `run` to the job's record.
pub fn record_run(state_dir: &Path, job: &str, run: RunRecord) -> std::io::Result<JobRecord> {
    let mut record = read_job(state_dir, job);
    if run.ok() {
        record.last_success_at = Some(run.finished_at);
    } else {
        record.last_failure_at = Some(run.finished_at);
    }
    record.last_run = Some(run);
    write_atomic(
        &job_path(state_dir, job),
        &serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?,
    )?;
    Ok(record)
}

/// Where the running daemon is, for `backupd status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    /// The bound address of the listener (`None` with `listen = "off"`).
    pub listen: Option<String>,
    pub started_at: DateTime<Utc>,
}

pub fn daemon_info_path(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.json")
}

pub fn write_daemon_info(state_dir: &Path, info: &DaemonInfo) -> std::io::Result<()> {
    write_atomic(
        &daemon_info_path(state_dir),
        &serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?,
    )
}

pub fn read_daemon_info(state_dir: &Path) -> Option<DaemonInfo> {
    let bytes = std::fs::read(daemon_info_path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Creates `dir` (0700) if missing, then refuses it unless this user owns it and no other
/// user can write to it: backupd trusts what it finds there (locks, upload journals,
/// spooled snapshots, scratch copies), so another user who can write there could steer it.
/// `key` names the policy key in the message.
pub fn check_private_dir(dir: &Path, key: &str) -> Result<(), crate::error::Invalid> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            format!(
                "cannot create {key} {}: {e}; create it, or point {key} at a writable directory",
                dir.display()
            )
        })?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{key} {}: {e}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(crate::error::Invalid(format!(
            "{key} {} belongs to uid {}, not to this user (uid {me}): another user could plant files backupd trusts there; run `chown {me} {}` or choose another directory",
            dir.display(),
            meta.uid(),
            dir.display()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(crate::error::Invalid(format!(
            "{key} {} is writable by other users (mode {mode:04o}): run `chmod 700 {}`",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Write to a temporary sibling, then rename: a reader (or a crash) never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: &str, at: i64) -> RunRecord {
        let t = DateTime::from_timestamp(at, 0).unwrap();
        RunRecord {
            started_at: t,
            finished_at: t,
            status: status.into(),
            snapshot: None,
            committed: vec![],
            plain_bytes: 0,
            stored_bytes: 0,
            errors: vec![],
            by: "run-now".into(),
        }
    }

    #[test]
    fn success_and_failure_times_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_job(dir.path(), "app"), JobRecord::default());
        record_run(dir.path(), "app", run("success", 100)).unwrap();
        let r = record_run(dir.path(), "app", run("failure", 200)).unwrap();
        assert_eq!(r.last_success_at.unwrap().timestamp(), 100);
        assert_eq!(r.last_failure_at.unwrap().timestamp(), 200);
        assert_eq!(read_job(dir.path(), "app"), r);
    }
}
