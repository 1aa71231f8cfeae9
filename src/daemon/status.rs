//! The daemon's live view of its jobs, shared by the scheduler loop (which writes it) and
//! the HTTP listener (`/status` as JSON, `/metrics` rendered from it, `/healthz` from the
//! loop's heartbeat). Its JSON shape is an interface: `backupd status --json` prints it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::plan::Task;
use crate::state::RunRecord;

/// `/status` and `backupd status --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub policy: String,
    /// `running` while the scheduler serves, `stopping` during shutdown.
    pub state: String,
    pub jobs: BTreeMap<String, JobStatus>,
    /// Snapshots waiting in the spool for their target, oldest first.
    #[serde(default)]
    pub spool: Vec<crate::spool::Pending>,
    /// Deliveries that gave up, per notifier label.
    #[serde(default)]
    pub notify_failures: BTreeMap<String, u64>,
    /// `daemon.upload_limit`, when set.
    #[serde(default)]
    pub upload_limit_bytes_per_sec: Option<u64>,
}

/// One job as the daemon sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobStatus {
    pub schedule: Option<String>,
    pub timezone: String,
    pub next_run: Option<DateTime<Utc>>,
    pub verify_schedule: Option<String>,
    pub next_verify: Option<DateTime<Utc>>,
    /// `backup` or `verification` while one runs (or waits for its turn).
    pub running: Option<String>,
    pub running_since: Option<DateTime<Utc>>,
    pub last_run: Option<RunRecord>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_duration_seconds: Option<f64>,
    pub runs_succeeded: u64,
    pub runs_failed: u64,
    /// Runs not started because the previous one was still going (or held the lock).
    pub runs_skipped: u64,
    /// Newest committed snapshot (the oldest of each target's newest).
    pub newest_snapshot_at: Option<DateTime<Utc>>,
    /// Committed snapshots per target, as last listed.
    pub snapshots: BTreeMap<String, u64>,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub verify_failures: u64,
    /// Freshness alarm threshold, when `alert_if_older_than` is set.
    pub alert_if_older_than_seconds: Option<u64>,
    /// `false` while the alarm is on; `None` without an alarm or before the first listing.
    pub fresh: Option<bool>,
    /// The job's `timeout_secs`, when set: `/healthz` fails for a run far past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Every instance's snapshots of this job per target, as last listed: the bucket's
    /// view, so one alert catches a host that stopped backing up (and reporting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet: Vec<FleetEntry>,
    /// This instance's newest snapshots, newest first (the status page's list and size
    /// trend).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<RecentSnapshot>,
    /// Each base backup source's WAL archiving, as its server last reported it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wal: BTreeMap<String, super::wal_watch::WalStatus>,
}

/// How many of a job's newest snapshots the status keeps.
pub const RECENT_SNAPSHOTS: usize = 12;

/// One of a job's newest snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecentSnapshot {
    pub snapshot: String,
    pub started_at: DateTime<Utc>,
    pub stored_bytes: u64,
}

/// One instance's snapshots of a job on one target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FleetEntry {
    pub instance: String,
    pub target: String,
    pub snapshots: u64,
    pub newest_snapshot_at: DateTime<Utc>,
}

/// How long past its `timeout_secs` a run may still be winding down (aborting uploads)
/// before `/healthz` calls the job stuck.
pub const STUCK_PAST_TIMEOUT_SECS: i64 = 120;

impl Status {
    /// Jobs whose current run has gone on far past their timeout: cancellation did not
    /// end them, so something is blocked. `(job, seconds running)`.
    pub fn stuck_jobs(&self, now: DateTime<Utc>) -> Vec<(String, i64)> {
        self.jobs
            .iter()
            .filter_map(|(name, j)| {
                let since = j.running_since?;
                let limit = j.timeout_seconds? as i64 + STUCK_PAST_TIMEOUT_SECS;
                let ran = (now - since).num_seconds();
                (ran > limit).then(|| (name.clone(), ran))
            })
            .collect()
    }
}

/// Shared between the loop and the listener.
pub struct Shared {
    status: Mutex<Status>,
    /// Unix milliseconds of the loop's last turn.
    heartbeat: AtomicI64,
}

impl Shared {
    pub fn new(policy_path: &str, now: DateTime<Utc>) -> Self {
        Shared {
            status: Mutex::new(Status {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                started_at: now,
                policy: policy_path.into(),
                state: "running".into(),
                jobs: BTreeMap::new(),
                spool: Vec::new(),
                notify_failures: BTreeMap::new(),
                upload_limit_bytes_per_sec: None,
            }),
            heartbeat: AtomicI64::new(now.timestamp_millis()),
        }
    }

    pub fn snapshot(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the status under the lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut Status) -> R) -> R {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes one job's status (creating it if new).
    pub fn job<R>(&self, job: &str, f: impl FnOnce(&mut JobStatus) -> R) -> R {
        self.update(|s| f(s.jobs.entry(job.to_string()).or_default()))
    }

    pub fn beat(&self, now: DateTime<Utc>) {
        self.heartbeat
            .store(now.timestamp_millis(), Ordering::Relaxed);
    }

    /// Milliseconds since the loop's last turn.
    pub fn heartbeat_age_ms(&self, now: DateTime<Utc>) -> i64 {
        now.timestamp_millis() - self.heartbeat.load(Ordering::Relaxed)
    }

    pub fn set_running(&self, job: &str, task: Option<Task>, now: DateTime<Utc>) {
        self.job(job, |j| {
            j.running = task.map(|t| t.to_string());
            j.running_since = task.map(|_| now);
        });
    }
}

/// A one-line summary for systemd's `STATUS=`.
pub fn summary(status: &Status) -> String {
    let running: Vec<&str> = status
        .jobs
        .iter()
        .filter(|(_, j)| j.running.is_some())
        .map(|(n, _)| n.as_str())
        .collect();
    let next = status
        .jobs
        .iter()
        .filter_map(|(n, j)| j.next_run.map(|t| (t, n)))
        .min();
    let failing = status
        .jobs
        .values()
        .filter(|j| j.last_run.as_ref().is_some_and(|r| !r.ok()))
        .count();
    let mut parts = vec![if running.is_empty() {
        "idle".to_string()
    } else {
        format!("running {}", running.join(", "))
    }];
    if let Some((t, n)) = next {
        parts.push(format!("next {n} at {}", t.format("%Y-%m-%d %H:%M:%S UTC")));
    }
    if failing > 0 {
        parts.push(format!("{failing} job(s) failing"));
    }
    if !status.spool.is_empty() {
        parts.push(format!("{} snapshot(s) spooled", status.spool.len()));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_far_past_its_timeout_is_stuck_and_one_without_a_timeout_is_not() {
        let now: DateTime<Utc> = "2026-12-01T12:00:00Z".parse().unwrap();
        let running = |secs_ago: i64, timeout: Option<u64>| JobStatus {
            running: Some("backup".into()),
            running_since: Some(now - chrono::Duration::seconds(secs_ago)),
            timeout_seconds: timeout,
            ..JobStatus::default()
        };
        let status = Status {
            version: "0".into(),
            pid: 1,
            started_at: now,
            policy: "p".into(),
            state: "running".into(),
            notify_failures: BTreeMap::new(),
            upload_limit_bytes_per_sec: None,
            jobs: BTreeMap::from([
                (
                    "stuck".to_string(),
                    running(60 + STUCK_PAST_TIMEOUT_SECS + 1, Some(60)),
                ),
                ("winding-down".to_string(), running(100, Some(60))),
                ("no-timeout".to_string(), running(100_000, None)),
                ("idle".to_string(), JobStatus::default()),
            ]),
            spool: Vec::new(),
        };
        let stuck = status.stuck_jobs(now);
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].0, "stuck");
    }
}
