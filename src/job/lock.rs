//! The per-job lock that keeps `run-now` and the daemon (or two `run-now`s) from running
//! the same job at once: an exclusive `flock` on `state_dir/locks/<job>.lock`. The kernel
//! releases it when the holder exits, however it exits, so a crash leaves no stale lock.
//! The holder writes who it is into the file so the refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A held job lock; dropping it releases the lock.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "job {job} is already running ({holder}); wait for it to finish, or stop that process (lock: {path})"
    )]
    Busy {
        job: String,
        holder: String,
        path: PathBuf,
    },
    #[error("cannot use the job lock {path}: {source} (is daemon.state_dir writable?)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Takes the lock of `job` without waiting; `who` says what holds it (e.g. "backupd run-now").
pub fn try_lock(state_dir: &Path, job: &str, who: &str) -> Result<JobLock, LockError> {
    let dir = state_dir.join("locks");
    let path = dir.join(format!("{job}.lock"));
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    // Never through a link: a planted `<job>.lock -> /etc/shadow` would be truncated.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Busy {
                job: job.into(),
                holder: if holder.is_empty() {
                    "by another backupd process".into()
                } else {
                    format!("held by {holder}")
                },
                path,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let info = format!(
        "{who}, pid {}, since {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(info.as_bytes()).map_err(io)?;
    Ok(JobLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_name_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock(dir.path(), "app", "backupd run-now").unwrap();
        let err = try_lock(dir.path(), "app", "backupd run").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("job app is already running"), "{msg}");
        assert!(msg.contains("backupd run-now"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        // Another job is independent.
        let _other = try_lock(dir.path(), "db", "backupd run").unwrap();
        drop(first);
        let again = try_lock(dir.path(), "app", "backupd run").unwrap();
        drop(again);
    }
}
