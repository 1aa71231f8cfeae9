//! `backupd fleet [JOB] [--target NAME] [--json]`: the watcher for silent hosts. Reads the
//! targets (not any daemon) and shows, per instance and job, the newest snapshot's age,
//! size and last verification, flagging instances whose newest snapshot is older than the
//! job's `alert_if_older_than`: a host that died stops reporting its own staleness, but
//! the bucket still shows it. Exit 1 when any instance is stale.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{EXIT_FAILED, UsageError, chosen_targets, human_bytes, load_policy};
use crate::snapshot::{self, Manifest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job (default: every job of the policy).
    pub job: Option<String>,
    /// Only this target (default: each job's targets).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One (instance, job) as the bucket shows it.
#[derive(Debug, Serialize)]
struct Row {
    instance: String,
    job: String,
    snapshots: usize,
    newest_snapshot: String,
    newest_started_at: DateTime<Utc>,
    newest_age_seconds: i64,
    newest_stored_bytes: u64,
    /// The newest snapshot's last verification: `true`/`false`, or null when never.
    newest_verified: Option<bool>,
    /// `alert_if_older_than` of the job, when set.
    alert_if_older_than_seconds: Option<u64>,
    stale: bool,
    targets: Vec<String>,
    /// Set when two hosts seem to run this instance's job side by side (same instance
    /// name, no coordination): each slot then runs twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

pub async fn run(config: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let jobs = policy
        .select_jobs(args.job.as_slice())
        .map_err(UsageError::from)?;
    let now = Utc::now();
    // A planted snapshot must not make a dead host look alive.
    let trust = super::trust(&policy)?;
    // (instance, job) → newest manifest, every snapshot id, targets holding the newest.
    // Shared, not copied: a fleet's bucket holds thousands of manifests.
    type Group = (Arc<Manifest>, BTreeSet<String>, Vec<String>);
    let mut all: BTreeMap<(String, String), Vec<Arc<Manifest>>> = BTreeMap::new();
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut first_target = BTreeMap::new();
    let mut listings = Vec::new();
    for job in &jobs {
        for target in chosen_targets(&policy, Some(job), args.target.as_ref())? {
            let mut listing = snapshot::listing::scan(&target, Some(job)).await?;
            for m in std::mem::take(&mut listing.manifests) {
                if let Some(why) = trust.judge(&m).refused() {
                    tracing::warn!(job, snapshot = %m.snapshot, "not counted: {why}");
                    continue;
                }
                let key = (m.instance().to_string(), job.clone());
                let m = Arc::new(m);
                all.entry(key.clone()).or_default().push(m.clone());
                first_target.entry(key.clone()).or_insert(listings.len());
                let (newest, ids, targets) = groups
                    .entry(key)
                    .or_insert_with(|| (m.clone(), BTreeSet::new(), Vec::new()));
                ids.insert(m.snapshot.clone());
                if m.snapshot > newest.snapshot {
                    *newest = m;
                    *targets = vec![target.name.clone()];
                } else if m.snapshot == newest.snapshot {
                    targets.push(target.name.clone());
                }
            }
            listings.push((target, listing));
        }
    }
    let mut rows = Vec::new();
    for ((instance, job), (newest, ids, targets)) in groups {
        let alarm = policy.jobs[&job].alert_if_older_than.map(|d| d.as_secs());
        let age = (now - newest.started_at).num_seconds();
        let verified = match first_target.get(&(instance.clone(), job.clone())) {
            Some(&i) => {
                let (target, listing) = &listings[i];
                listing
                    .latest_record(target, &job, &newest.snapshot)
                    .await
                    .map(|r| r.ok)
            }
            None => None,
        };
        let spec = &policy.jobs[&job];
        let window = chrono::Duration::seconds(spec.jitter_secs.max(60) as i64);
        let mine: Vec<&Manifest> = all
            .get(&(instance.clone(), job.clone()))
            .map(|v| v.iter().map(|m| m.as_ref()).collect())
            .unwrap_or_default();
        let warning = (spec.coordination == crate::policy::Coordination::None)
            .then(|| snapshot::doubled_hosts(&mine, window))
            .flatten()
            .map(|(a, b)| {
                format!(
                    "hosts {a} and {b} both back up as instance {instance}: give each its own daemon.instance, or set coordination = \"lease\""
                )
            });
        rows.push(Row {
            warning,
            stale: alarm.is_some_and(|a| age > a as i64),
            instance,
            job,
            snapshots: ids.len(),
            newest_snapshot: newest.snapshot.clone(),
            newest_started_at: newest.started_at,
            newest_age_seconds: age,
            newest_stored_bytes: newest.stored_bytes(),
            newest_verified: verified,
            alert_if_older_than_seconds: alarm,
            targets,
        });
    }
    let stale = rows.iter().any(|r| r.stale);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no committed snapshots of any instance");
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.instance.clone(),
                    r.job.clone(),
                    super::table::age(r.newest_started_at, now),
                    r.snapshots.to_string(),
                    human_bytes(r.newest_stored_bytes),
                    match r.newest_verified {
                        Some(true) => "✓".into(),
                        Some(false) => "✗".into(),
                        None => "–".into(),
                    },
                    if r.stale { "STALE".into() } else { "ok".into() },
                    r.targets.join(","),
                ]
            })
            .collect();
        print!(
            "{}",
            super::table::render(
                &[
                    "INSTANCE",
                    "JOB",
                    "NEWEST",
                    "SNAPSHOTS",
                    "SIZE",
                    "VERIFIED",
                    "STATE",
                    "TARGETS"
                ],
                &table
            )
        );
        for r in rows.iter().filter_map(|r| r.warning.as_ref()) {
            println!("warning: {}", super::table::printable(r));
        }
    }
    Ok(if stale {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
