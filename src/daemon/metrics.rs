//! `/metrics` in the Prometheus text format, rendered at scrape time from the daemon's
//! status. Hand-written on purpose: every value is a view of `Status` (timestamps, counts
//! per target, freshness), so a metrics registry would only mirror it; the format is a
//! few lines per family and the tests parse it back.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::status::Status;

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = if labels.is_empty() {
            writeln!(self.out, "{name} {value}")
        } else {
            writeln!(self.out, "{name}{{{}}} {value}", labels.join(","))
        };
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn ts(t: Option<DateTime<Utc>>) -> Option<f64> {
    t.map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// The whole exposition.
pub fn render(status: &Status, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    f.header("backupd_up", "gauge", "1 while the daemon runs.");
    f.sample("backupd_up", &[], 1.0);
    f.header(
        "backupd_start_time_seconds",
        "gauge",
        "When the daemon started (unix time).",
    );
    f.sample(
        "backupd_start_time_seconds",
        &[],
        ts(Some(status.started_at)).unwrap_or(0.0),
    );

    type Pick = fn(&super::status::JobStatus, DateTime<Utc>) -> Option<f64>;
    let per_job: &[(&str, &str, &str, Pick)] = &[
        (
            "backupd_job_last_success_timestamp_seconds",
            "gauge",
            "End of the last successful run (unix time).",
            |j, _| ts(j.last_success_at),
        ),
        (
            "backupd_job_last_failure_timestamp_seconds",
            "gauge",
            "End of the last failed run (unix time).",
            |j, _| ts(j.last_failure_at),
        ),
        (
            "backupd_job_last_run_duration_seconds",
            "gauge",
            "Wall time of the last run.",
            |j, _| j.last_duration_seconds,
        ),
        (
            "backupd_job_last_plain_bytes",
            "gauge",
            "Bytes read from the sources by the last committed run.",
            |j, _| {
                j.last_run
                    .as_ref()
                    .filter(|r| r.ok())
                    .map(|r| r.plain_bytes as f64)
            },
        ),
        (
            "backupd_job_last_stored_bytes",
            "gauge",
            "Bytes stored (compressed, encrypted) by the last committed run, on each target.",
            |j, _| {
                j.last_run
                    .as_ref()
                    .filter(|r| r.ok())
                    .map(|r| r.stored_bytes as f64)
            },
        ),
        (
            "backupd_job_running",
            "gauge",
            "1 while a backup or verification of the job runs or waits for its turn.",
            |j, _| Some(if j.running.is_some() { 1.0 } else { 0.0 }),
        ),
        (
            "backupd_job_next_run_timestamp_seconds",
            "gauge",
            "When the next scheduled backup starts (unix time).",
            |j, _| ts(j.next_run),
        ),
        (
            "backupd_job_skipped_total",
            "counter",
            "Scheduled runs not started because the previous one was still running.",
            |j, _| Some(j.runs_skipped as f64),
        ),
        (
            "backupd_last_snapshot_timestamp_seconds",
            "gauge",
            "Start of the newest committed snapshot present on every target (unix time).",
            |j, _| ts(j.newest_snapshot_at),
        ),
        (
            "backupd_last_snapshot_age_seconds",
            "gauge",
            "Age of that snapshot.",
            |j, now| {
                j.newest_snapshot_at
                    .map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
            },
        ),
        (
            "backupd_job_fresh",
            "gauge",
            "0 when no snapshot is newer than alert_if_older_than, else 1 (jobs with that alarm).",
            |j, _| j.fresh.map(|f| if f { 1.0 } else { 0.0 }),
        ),
        (
            "backupd_last_verified_timestamp_seconds",
            "gauge",
            "When a snapshot of the job last passed verification (unix time).",
            |j, _| ts(j.last_verified_at),
        ),
        (
            "backupd_verify_failures_total",
            "counter",
            "Verifications that failed since the daemon started.",
            |j, _| Some(j.verify_failures as f64),
        ),
    ];
    for (name, kind, help, pick) in per_job {
        f.header(name, kind, help);
        for (job, j) in &status.jobs {
            if let Some(v) = pick(j, now) {
                f.sample(name, &[("job", job)], v);
            }
        }
    }

    f.header(
        "backupd_job_runs_total",
        "counter",
        "Runs since the daemon started, by result.",
    );
    for (job, j) in &status.jobs {
        f.sample(
            "backupd_job_runs_total",
            &[("job", job), ("result", "success")],
            j.runs_succeeded as f64,
        );
        f.sample(
            "backupd_job_runs_total",
            &[("job", job), ("result", "failure")],
            j.runs_failed as f64,
        );
    }
    f.header(
        "backupd_snapshots",
        "gauge",
        "Committed snapshots per job and target, as last listed.",
    );
    for (job, j) in &status.jobs {
        for (target, n) in &j.snapshots {
            f.sample(
                "backupd_snapshots",
                &[("job", job), ("target", target)],
                *n as f64,
            );
        }
    }
    // The bucket's view of every instance: a host that died stops exporting its own
    // metrics, but its newest snapshot keeps ageing here. Alert on
    // `time() - backupd_fleet_newest_snapshot_timestamp_seconds > …` per instance.
    type FleetPick = fn(&super::status::FleetEntry) -> f64;
    let fleet: &[(&str, &str, FleetPick)] = &[
        (
            "backupd_fleet_newest_snapshot_timestamp_seconds",
            "Start of each instance's newest snapshot of the job on the target (unix time).",
            |e| ts(Some(e.newest_snapshot_at)).unwrap_or(0.0),
        ),
        (
            "backupd_fleet_snapshots",
            "Each instance's snapshots of the job on the target, as last listed.",
            |e| e.snapshots as f64,
        ),
    ];
    for (name, help, pick) in fleet {
        f.header(name, "gauge", help);
        for (job, j) in &status.jobs {
            for e in &j.fleet {
                f.sample(
                    name,
                    &[
                        ("instance", &e.instance),
                        ("job", job),
                        ("target", &e.target),
                    ],
                    pick(e),
                );
            }
        }
    }
    alerting_families(&mut f, status);
    wal_families(&mut f, status);
    out
}

/// Each base backup source's WAL archiving as its server reports it: the alert rules
/// fire on failures and on a backlog (`pg_wal` grows until the server stops).
fn wal_families(f: &mut Family<'_>, status: &Status) {
    type WalPick = fn(&super::wal_watch::WalStatus) -> Option<f64>;
    let families: [(&str, &str, &str, WalPick); 5] = [
        (
            "backupd_wal_up",
            "gauge",
            "1 when the base backup source's server answered the last archiver query.",
            |w| Some(if w.error.is_none() { 1.0 } else { 0.0 }),
        ),
        (
            "backupd_wal_archived_total",
            "counter",
            "WAL files the server archived (pg_stat_archiver.archived_count).",
            |w| {
                w.error
                    .is_none()
                    .then_some(w.archiver.archived_count as f64)
            },
        ),
        (
            "backupd_wal_archive_failures_total",
            "counter",
            "Failed archive_command runs (pg_stat_archiver.failed_count).",
            |w| w.error.is_none().then_some(w.archiver.failed_count as f64),
        ),
        (
            "backupd_wal_last_archived_timestamp_seconds",
            "gauge",
            "When the server last archived a WAL file (unix time).",
            |w| ts(w.archiver.last_archived_at),
        ),
        (
            "backupd_wal_ready_files",
            "gauge",
            "WAL files waiting to be archived: growing means archiving falls behind.",
            |w| w.archiver.ready_files.map(|n| n as f64),
        ),
    ];
    for (name, kind, help, pick) in families {
        f.header(name, kind, help);
        for (job, j) in &status.jobs {
            for (source, w) in &j.wal {
                if let Some(v) = pick(w) {
                    f.sample(name, &[("job", job), ("source", source)], v);
                }
            }
        }
    }
}

/// What the shipped alert rules (deploy/prometheus) need beyond the families above: each
/// job's alarm age, the spool, notifications that gave up (a failing notifier never fails
/// a backup, so this is how anyone learns of it) and the upload limit.
fn alerting_families(f: &mut Family<'_>, status: &Status) {
    f.header(
        "backupd_job_alert_if_older_than_seconds",
        "gauge",
        "The job's alert_if_older_than: alert rules compare snapshot ages with it.",
    );
    for (job, j) in &status.jobs {
        if let Some(s) = j.alert_if_older_than_seconds {
            f.sample(
                "backupd_job_alert_if_older_than_seconds",
                &[("job", job)],
                s as f64,
            );
        }
    }
    // Snapshots waiting for a target that was down: growing means it still is.
    let mut spool: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for p in &status.spool {
        let e = spool.entry(p.target.as_str()).or_default();
        e.0 += 1;
        e.1 += p.bytes;
    }
    type SpoolPick = fn(&(u64, u64)) -> u64;
    let families: [(&str, &str, SpoolPick); 2] = [
        (
            "backupd_spool_pending_snapshots",
            "Snapshots waiting in the spool for their target.",
            |e| e.0,
        ),
        (
            "backupd_spool_pending_bytes",
            "Bytes waiting in the spool for their target.",
            |e| e.1,
        ),
    ];
    for (name, help, pick) in families {
        f.header(name, "gauge", help);
        for (target, e) in &spool {
            f.sample(name, &[("target", target)], pick(e) as f64);
        }
    }
    if let Some(rate) = status.upload_limit_bytes_per_sec {
        f.header(
            "backupd_upload_limit_bytes_per_second",
            "gauge",
            "daemon.upload_limit: what all uploads to remote targets share.",
        );
        f.sample("backupd_upload_limit_bytes_per_second", &[], rate as f64);
    }
    f.header(
        "backupd_notify_failures_total",
        "counter",
        "Notifications that gave up after their retries, per notifier.",
    );
    for (notifier, n) in &status.notify_failures {
        f.sample(
            "backupd_notify_failures_total",
            &[("notifier", notifier)],
            *n as f64,
        );
    }
}
