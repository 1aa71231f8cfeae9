//! `backupd list [JOB] [--target NAME] [--json]`: committed snapshots, newest first,
//! merged across targets (each snapshot says where it is stored).

use std::path::Path;
use std::process::ExitCode;

use futures::StreamExt;
use serde::Serialize;

use super::{UsageError, chosen_targets, human_bytes, load_policy};
use crate::snapshot::seal::Judgment;
use crate::snapshot::{self, Manifest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job's snapshots.
    pub job: Option<String>,
    /// Only this target (default: the job's targets, or every target).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Another instance's snapshots instead of this instance's.
    #[arg(long, value_name = "NAME", conflicts_with = "all_instances")]
    pub instance: Option<String>,
    /// Every instance's snapshots (the whole bucket, e.g. on a new host after a disaster).
    #[arg(long)]
    pub all_instances: bool,
}

#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    manifest: Manifest,
    targets: Vec<String>,
    /// The newest verification on any of those targets.
    last_verification: Option<LastVerification>,
    /// Whether the policy's `[signing]` trusts the snapshot.
    authenticity: Authenticity,
}

#[derive(Serialize)]
struct Authenticity {
    /// `trusted` (signed by a trusted key), `accepted` (see `detail`) or `refused`.
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl From<Judgment> for Authenticity {
    fn from(j: Judgment) -> Self {
        match j {
            Judgment::Trusted => Self {
                verdict: "trusted",
                detail: None,
            },
            Judgment::Accepted(why) => Self {
                verdict: "accepted",
                detail: Some(why),
            },
            Judgment::Refused(why) => Self {
                verdict: "refused",
                detail: Some(why),
            },
        }
    }
}

#[derive(Serialize)]
struct LastVerification {
    at: chrono::DateTime<chrono::Utc>,
    ok: bool,
    target: String,
}

/// `full`, or the highest level of the snapshot's incremental objects and their base.
fn level(m: &crate::snapshot::Manifest) -> String {
    match m
        .sources
        .values()
        .filter(|e| !e.is_full())
        .max_by_key(|e| e.level)
    {
        None => "full".into(),
        Some(e) => format!("{} on {}", e.level, e.base.as_deref().unwrap_or("?")),
    }
}

pub async fn run(config: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    if let Some(job) = &args.job
        && !crate::policy::is_valid_name(job)
    {
        return Err(UsageError(format!("invalid job name {job:?}")).into());
    }
    let targets = chosen_targets(&policy, args.job.as_deref(), args.target.as_ref())?;
    let trust = super::trust(&policy)?;
    let wanted = super::chosen_instance(&policy, args.instance.as_ref())?;
    let mut hidden: std::collections::BTreeMap<String, usize> = Default::default();
    let mut listed: Vec<Listed> = Vec::new();
    // Where each (job, id) is in `listed`: a snapshot on several targets is one row.
    let mut row_of: std::collections::HashMap<(String, String), usize> = Default::default();
    for target in &targets {
        // One listing finds the snapshots and their records; a target can hold thousands.
        let mut listing = snapshot::listing::scan(target, args.job.as_deref()).await?;
        let mut manifests = std::mem::take(&mut listing.manifests);
        // Older manifests name no instance: they count as their host's.
        for m in &mut manifests {
            m.instance = Some(m.instance().to_string());
        }
        if !args.all_instances {
            manifests.retain(|m| {
                let keep = m.instance() == wanted;
                if !keep {
                    *hidden.entry(m.instance().to_string()).or_default() += 1;
                }
                keep
            });
        }
        let listing = &listing;
        let records: Vec<Option<LastVerification>> = futures::stream::iter(&manifests)
            .map(|m| async move {
                listing
                    .latest_record(target, &m.job, &m.snapshot)
                    .await
                    .map(|r| LastVerification {
                        at: r.finished_at,
                        ok: r.ok,
                        target: target.name.clone(),
                    })
            })
            .buffered(16)
            .collect()
            .await;
        for (m, record) in manifests.into_iter().zip(records) {
            match row_of
                .get(&(m.job.clone(), m.snapshot.clone()))
                .map(|&i| &mut listed[i])
            {
                Some(l) => {
                    l.targets.push(target.name.clone());
                    if record.as_ref().map(|r| r.at) > l.last_verification.as_ref().map(|r| r.at) {
                        l.last_verification = record;
                    }
                }
                None => {
                    row_of.insert((m.job.clone(), m.snapshot.clone()), listed.len());
                    listed.push(Listed {
                        authenticity: trust.judge(&m).into(),
                        manifest: m,
                        targets: vec![target.name.clone()],
                        last_verification: record,
                    })
                }
            }
        }
    }
    listed.sort_by(|a, b| b.manifest.snapshot.cmp(&a.manifest.snapshot));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    let hidden_note = (!hidden.is_empty()).then(|| {
        format!(
            "other instances' snapshots are not shown ({}): --all-instances or --instance NAME",
            hidden.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    });
    if listed.is_empty() {
        println!("no committed snapshots of instance {wanted}");
        if let Some(n) = &hidden_note {
            println!("{n}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono::Utc::now();
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|l| {
            let m = &l.manifest;
            vec![
                m.snapshot.clone(),
                m.job.clone(),
                m.instance().to_string(),
                super::table::age(m.started_at, now),
                if m.tags.is_empty() {
                    "–".into()
                } else {
                    m.tags.join(",")
                },
                format!(
                    "{} / {}",
                    human_bytes(m.stored_bytes()),
                    human_bytes(m.plain_bytes())
                ),
                match &l.last_verification {
                    Some(v) if v.ok => "✓".into(),
                    Some(_) => "✗".into(),
                    None => "–".into(),
                },
                match l.authenticity.verdict {
                    "trusted" => "✓".into(),
                    "refused" => "✗".into(),
                    _ => "unchecked".into(),
                },
                level(m),
                l.targets.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table::render(
            &[
                "SNAPSHOT",
                "JOB",
                "INSTANCE",
                "AGE",
                "TAGS",
                "STORED / PLAIN",
                "VERIFIED",
                "SIGNED",
                "LEVEL",
                "TARGETS"
            ],
            &rows
        )
    );
    // A refused snapshot is listed (never hidden, never deleted) and explained.
    for l in listed
        .iter()
        .filter(|l| l.authenticity.verdict == "refused")
    {
        println!(
            "✗ {}: {}",
            l.manifest.snapshot,
            super::table::printable(l.authenticity.detail.as_deref().unwrap_or_default())
        );
    }
    if let Some(n) = &hidden_note {
        println!("{n}");
    }
    if !trust.is_configured() {
        println!(
            "unchecked: no [signing] in the policy, so a snapshot planted by anyone who can write to the bucket looks the same (see BACKUP_POLICY.md, Threat model)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
