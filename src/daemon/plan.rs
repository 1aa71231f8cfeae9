//! When each job's backup and verification run next: the schedules of the current
//! policy, with jitter, recomputed after every firing (so a missed stretch, e.g. a
//! suspended host, fires once, not once per missed time) and carried over a reload for
//! the entries whose schedule did not change.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::policy::Policy;
use crate::schedule::Schedule;

/// What the daemon runs for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Backup,
    Verify,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Backup => "backup",
            Task::Verify => "verification",
        })
    }
}

#[derive(Debug, Clone)]
struct Entry {
    schedule: Schedule,
    jitter_secs: u64,
    /// When it runs next (the fire time plus its jitter).
    at: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(schedule: Schedule, jitter_secs: u64, now: DateTime<Utc>) -> Self {
        let mut e = Entry {
            schedule,
            jitter_secs,
            at: None,
        };
        e.advance(now);
        e
    }

    fn advance(&mut self, now: DateTime<Utc>) {
        let jitter = if self.jitter_secs == 0 {
            0
        } else {
            rand::random_range(0..=self.jitter_secs)
        };
        self.at = self
            .schedule
            .next_after(now)
            .map(|t| t + Duration::seconds(jitter as i64));
    }

    fn same_as(&self, other: &Entry) -> bool {
        self.schedule.expression() == other.schedule.expression()
            && self.schedule.timezone() == other.schedule.timezone()
            && self.jitter_secs == other.jitter_secs
    }
}

/// The daemon's timetable.
#[derive(Debug, Default)]
pub struct Plan {
    entries: BTreeMap<(String, Task), Entry>,
}

impl Plan {
    pub fn new(policy: &Policy, now: DateTime<Utc>) -> Self {
        let mut entries = BTreeMap::new();
        for (name, job) in &policy.jobs {
            if let Some(s) = job.backup_schedule() {
                entries.insert(
                    (name.clone(), Task::Backup),
                    Entry::new(s, job.jitter_secs, now),
                );
            }
            if let Some(s) = job.verify_schedule() {
                entries.insert(
                    (name.clone(), Task::Verify),
                    Entry::new(s, job.jitter_secs, now),
                );
            }
        }
        Plan { entries }
    }

    /// The plan of a reloaded policy: unchanged entries keep their next time, removed
    /// jobs are gone, new or changed ones start from `now`.
    pub fn reload(&mut self, policy: &Policy, now: DateTime<Utc>) {
        let mut fresh = Plan::new(policy, now);
        for (key, entry) in fresh.entries.iter_mut() {
            if let Some(old) = self.entries.get(key)
                && old.same_as(entry)
            {
                entry.at = old.at;
            }
        }
        *self = fresh;
    }

    /// Entries due at `now`, each advanced to its next time.
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<(String, Task)> {
        let mut due = Vec::new();
        for ((job, task), entry) in self.entries.iter_mut() {
            if entry.at.is_some_and(|at| at <= now) {
                due.push((job.clone(), *task));
                entry.advance(now);
            }
        }
        due
    }

    /// The earliest next time of any entry.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.entries.values().filter_map(|e| e.at).min()
    }

    pub fn next(&self, job: &str, task: Task) -> Option<DateTime<Utc>> {
        self.entries
            .get(&(job.to_string(), task))
            .and_then(|e| e.at)
    }
}
