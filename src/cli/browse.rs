//! `backupd ls`, `backupd find` and `backupd cat`: a snapshot's directory sources without
//! restoring them (the use case is `crate::browse`; this file parses and prints).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::{UsageError, chosen_targets, load_policy};
use crate::browse;
use crate::restore::{self, RestoreError};
use crate::snapshot::seal::Judgment;
use crate::snapshot::{Encryption, Manifest, Selector, SourceEntry};
use crate::source::directory::index::{Entry, Kind};
use crate::target::Target;

/// Which snapshot and where: shared by the three commands.
#[derive(Debug, clap::Args)]
pub struct Which {
    /// Read from this target (default: the first of the job's targets that has it).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Only this directory source (default: every directory source of the snapshot).
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// With `latest`: another instance's snapshot. Default: this instance's.
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// age identity file (default: encryption.identity_file from the policy).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Accept an unsigned snapshot although `[signing]` is configured.
    #[arg(long)]
    pub allow_unsigned: bool,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    pub job: String,
    /// Snapshot id, a unique prefix of one, or `latest`.
    #[arg(default_value = "latest")]
    pub snapshot: String,
    /// Only entries at or under this path.
    pub path: Option<String>,
    /// Type, mode, size, modification time and link target.
    #[arg(short = 'l', long = "long")]
    pub long: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub which: Which,
}

#[derive(Debug, clap::Args)]
pub struct FindArgs {
    pub job: String,
    /// Glob: against the name (`*.pdf`), or the whole path when it has a `/`
    /// (`invoices/2026-*`); `*` stays within one name, `**` crosses directories.
    pub pattern: String,
    /// Every snapshot of this instance, not only the latest.
    #[arg(long)]
    pub all_snapshots: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub which: Which,
}

#[derive(Debug, clap::Args)]
pub struct CatArgs {
    pub job: String,
    /// Snapshot id, a unique prefix of one, or `latest`.
    pub snapshot: String,
    /// The file's path inside its source.
    pub path: String,
    #[command(flatten)]
    pub which: Which,
}

/// A library error at the edge: a usage error exits 2, anything else 1.
fn edge(e: RestoreError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

struct Opened {
    targets: Vec<Target>,
    trust: crate::snapshot::seal::Trust,
    instance: String,
    policy: crate::policy::Policy,
}

fn open(config: &Path, job: &str, which: &Which) -> anyhow::Result<Opened> {
    let policy = load_policy(config)?;
    if !crate::policy::is_valid_name(job) {
        return Err(UsageError(format!("invalid job name {job:?}")).into());
    }
    let targets = chosen_targets(&policy, Some(job), which.target.as_ref())?;
    let mut trust = super::trust(&policy)?;
    trust.allow_unsigned = which.allow_unsigned;
    let instance = super::chosen_instance(&policy, which.instance.as_ref())?;
    Ok(Opened {
        targets,
        trust,
        instance,
        policy,
    })
}

impl Opened {
    /// The one snapshot `wanted` names, refused when `[signing]` refuses it.
    async fn snapshot(&self, job: &str, wanted: &str) -> anyhow::Result<(Target, Manifest)> {
        let selector = match Selector::parse(wanted) {
            Selector::All => {
                return Err(
                    UsageError("name one snapshot: an id, a prefix, or `latest`".into()).into(),
                );
            }
            s => s,
        };
        let (target, manifest) =
            restore::find(&self.targets, job, &selector, &self.instance, &self.trust)
                .await
                .map_err(edge)?;
        self.judged(&manifest)?;
        Ok((target, manifest))
    }

    fn judged(&self, manifest: &Manifest) -> anyhow::Result<()> {
        match self.trust.judge(manifest) {
            Judgment::Refused(why) => Err(anyhow::anyhow!(
                "refusing snapshot {} of job {}: it is {why}",
                manifest.snapshot,
                manifest.job
            )),
            Judgment::Accepted(why) => {
                eprintln!("warning: snapshot {} is {why}", manifest.snapshot);
                Ok(())
            }
            Judgment::Trusted => Ok(()),
        }
    }

    fn identities(
        &self,
        sources: &[(String, SourceEntry)],
        flag: Option<&Path>,
    ) -> anyhow::Result<Option<Arc<crate::crypto::Identities>>> {
        let encrypted = sources
            .iter()
            .any(|(_, e)| matches!(e.encryption, Encryption::Age { .. }));
        Ok(if encrypted {
            Some(Arc::new(crate::crypto::restore_identities(
                flag,
                &self.policy.encryption,
            )?))
        } else {
            None
        })
    }
}

/// A path for a line of output: control characters and line breaks escaped.
fn shown(path: &str) -> String {
    super::printable(&path.replace('\n', "\\n"))
}

fn long_line(e: &Entry) -> String {
    let mode = e.mode;
    let bits: String = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ]
    .iter()
    .map(|(bit, c)| if mode & bit != 0 { *c } else { '-' })
    .collect();
    let when = chrono::DateTime::from_timestamp(e.mtime, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "?".into());
    let link = e
        .link
        .as_deref()
        .map(|l| format!(" -> {}", shown(l)))
        .unwrap_or_default();
    format!(
        "{}{bits} {:>12} {when} {}{link}",
        e.kind.letter(),
        e.size,
        shown(&e.path)
    )
}

pub async fn ls(config: &Path, args: LsArgs) -> anyhow::Result<ExitCode> {
    let opened = open(config, &args.job, &args.which)?;
    let (target, manifest) = opened.snapshot(&args.job, &args.snapshot).await?;
    let sources =
        browse::directory_sources(&manifest, args.which.source.as_deref()).map_err(edge)?;
    let ids = opened.identities(&sources, args.which.identity.as_deref())?;
    let prefix = args
        .path
        .as_deref()
        .map(|p| p.trim_start_matches('/').trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty());
    let under = |path: &str| {
        prefix.as_deref().is_none_or(|p| {
            path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    let mut json = Vec::new();
    for (name, entry) in &sources {
        let (index, from_index) = browse::index_of(&target, &manifest, entry, ids.clone())
            .await
            .map_err(edge)?;
        if !from_index && !args.json {
            eprintln!(
                "note: snapshot {} has no index for {name} (made before indexes existed): the archive was read to list it",
                manifest.snapshot
            );
        }
        for e in index.into_tree().into_iter().filter(|e| under(&e.path)) {
            if args.json {
                let mut v = serde_json::to_value(&e)?;
                v["source"] = name.clone().into();
                json.push(v);
            } else if args.long {
                println!("{name}: {}", long_line(&e));
            } else {
                let slash = if e.kind == Kind::Dir { "/" } else { "" };
                println!("{name}/{}{slash}", shown(&e.path));
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn find(config: &Path, args: FindArgs) -> anyhow::Result<ExitCode> {
    let opened = open(config, &args.job, &args.which)?;
    let matches = browse::matcher(&args.pattern).map_err(edge)?;
    // The snapshots to search: the latest, or every one of this instance, on the first
    // target that lists them.
    let mut snapshots: Vec<(Target, Manifest)> = Vec::new();
    if args.all_snapshots {
        for target in &opened.targets {
            let listed = crate::snapshot::list(target, Some(&args.job)).await?;
            let own =
                crate::snapshot::select(listed, &Selector::All, &opened.instance, &opened.trust)
                    .map_err(|e| edge(e.into()))?;
            for m in own {
                if !snapshots.iter().any(|(_, s)| s.snapshot == m.snapshot)
                    && !matches!(opened.trust.judge(&m), Judgment::Refused(_))
                {
                    snapshots.push((target.clone(), m));
                }
            }
        }
    } else {
        snapshots.push(opened.snapshot(&args.job, "latest").await?);
    }
    let mut found = 0usize;
    let mut json = Vec::new();
    for (target, manifest) in &snapshots {
        let sources = match browse::directory_sources(manifest, args.which.source.as_deref()) {
            Ok(s) => s,
            Err(_) if args.all_snapshots => continue,
            Err(e) => return Err(edge(e)),
        };
        let ids = opened.identities(&sources, args.which.identity.as_deref())?;
        for (name, entry) in &sources {
            let (index, _) = browse::index_of(target, manifest, entry, ids.clone())
                .await
                .map_err(edge)?;
            for e in index.into_tree().into_iter().filter(|e| matches(&e.path)) {
                found += 1;
                if args.json {
                    let mut v = serde_json::to_value(&e)?;
                    v["source"] = name.clone().into();
                    v["snapshot"] = manifest.snapshot.clone().into();
                    json.push(v);
                } else {
                    println!("{}  {name}: {}", manifest.snapshot, long_line(&e));
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if found == 0 {
        eprintln!(
            "nothing matches {:?} in {} snapshot(s)",
            args.pattern,
            snapshots.len()
        );
    }
    Ok(if found == 0 {
        ExitCode::from(super::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn cat(config: &Path, args: CatArgs) -> anyhow::Result<ExitCode> {
    let opened = open(config, &args.job, &args.which)?;
    let (target, manifest) = opened.snapshot(&args.job, &args.snapshot).await?;
    let sources =
        browse::directory_sources(&manifest, args.which.source.as_deref()).map_err(edge)?;
    let [(name, entry)] = sources.as_slice() else {
        return Err(UsageError(format!(
            "snapshot {} has several directory sources ({}): name one with --source",
            manifest.snapshot,
            sources
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    };
    let ids = opened.identities(&sources, args.which.identity.as_deref())?;
    let delivered = browse::cat(
        &target,
        &manifest,
        name,
        entry,
        &args.path,
        ids,
        &opened.trust,
        Box::new(std::io::stdout()),
    )
    .await
    .map_err(edge)?;
    if let Some(fetched) = delivered.fetched {
        eprintln!(
            "{} bytes; the file's sha256 matches the index; {} of the {} object read by ranged requests (the object's own sha256 is not checked on a partial read; each age chunk read is authenticated)",
            delivered.bytes,
            super::human_bytes(fetched),
            super::human_bytes(entry.stored.bytes)
        );
    } else if delivered.by_index {
        eprintln!(
            "{} bytes; the file's sha256 matches the index (the rest of the archive was not read)",
            delivered.bytes
        );
    } else {
        eprintln!(
            "{} bytes; the whole object's sha256 matches the manifest (no index: the archive was read to its end)",
            delivered.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
