//! `backupd restore JOB [SNAPSHOT] --to DIR …`: each source into `DIR/<source>/`, with the
//! stored and plain sha256 checked against the manifest while restoring.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_FAILED, UsageError, chosen_targets, human_bytes, load_policy};
use crate::crypto;
use crate::pipeline;
use crate::snapshot::seal::{Judgment, Trust};
use crate::snapshot::{self, Encryption, Manifest, SourceEntry};
use crate::source;
use crate::target::Target;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job whose snapshot to restore.
    pub job: String,
    /// Snapshot id, a unique prefix of one, or `latest`.
    #[arg(default_value = "latest")]
    pub snapshot: String,
    /// Directory to restore into; each source lands in DIR/<source-name>/.
    #[arg(long, value_name = "DIR", required_unless_present = "into_url")]
    pub to: Option<PathBuf>,
    /// Restore one database source straight into this server and database
    /// (postgres://user@host/db or mysql://user@host/db) instead of writing files.
    #[arg(long, value_name = "URL", conflicts_with = "to")]
    pub into_url: Option<String>,
    /// With --into-url: create the database first.
    #[arg(long, requires = "into_url")]
    pub create: bool,
    /// With --into-url: drop existing objects before restoring them.
    #[arg(long, requires = "into_url")]
    pub clean: bool,
    /// With --into-url: file holding the server password (else PGPASSWORD / MYSQL_PWD).
    #[arg(long, value_name = "FILE", requires = "into_url")]
    pub password_file: Option<PathBuf>,
    /// Read from this target (default: the first of the job's targets that has the snapshot).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// Restore only these sources (repeatable).
    #[arg(long, value_name = "SOURCE")]
    pub only: Vec<String>,
    /// Leave these sources out (repeatable).
    #[arg(long, value_name = "SOURCE")]
    pub skip: Vec<String>,
    /// age identity file (default: encryption.identity_file from the policy).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Print what would be restored; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Restore into a non-empty directory, overwriting files of the same name.
    #[arg(long)]
    pub force: bool,
    /// As root, leave restored files owned by root instead of the archive's numeric
    /// owners (setuid/setgid bits are then dropped, as GNU tar does).
    #[arg(long)]
    pub no_same_owner: bool,
    /// Accept an unsigned snapshot although `[signing]` is configured (one made before it
    /// was). A snapshot signed by an untrusted key is never accepted.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// With `latest`: another instance's latest snapshot (disaster recovery on a new host).
    /// Default: this instance's (`daemon.instance`, else the host name).
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
}

pub async fn run(config: &Path, args: Args, quiet: bool) -> anyhow::Result<ExitCode> {
    let progress = crate::progress::Progress::for_terminal(quiet || args.dry_run);
    let policy = load_policy(config)?;
    if !crate::policy::is_valid_name(&args.job) {
        return Err(UsageError(format!("invalid job name {:?}", args.job)).into());
    }
    let targets = chosen_targets(&policy, Some(&args.job), args.target.as_ref())?;
    let mut trust = super::trust(&policy)?;
    trust.allow_unsigned = args.allow_unsigned;
    let instance = super::chosen_instance(&policy, args.instance.as_ref())?;
    let (target, manifest) =
        find_snapshot(&targets, &args.job, &args.snapshot, &instance, &trust).await?;
    match trust.judge(&manifest) {
        Judgment::Trusted => {}
        Judgment::Accepted(why) => println!("warning: snapshot {} is {why}", manifest.snapshot),
        Judgment::Refused(why) => {
            return Err(anyhow::anyhow!(
                "refusing to restore snapshot {} of job {}: it is {why}",
                manifest.snapshot,
                manifest.job
            ));
        }
    }
    let chosen = select_sources(&manifest, &args.only, &args.skip)?;

    println!(
        "snapshot {} of job {} (taken {} on {}, tags {}) from target {}",
        manifest.snapshot,
        manifest.job,
        manifest.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        super::printable(&manifest.host),
        super::printable(&manifest.tags.join(",")),
        target.name
    );
    let into = into_server(&args, &chosen)?;
    let place = |name: &str| match (&args.to, &args.into_url) {
        (Some(dir), _) => dir.join(name).display().to_string(),
        (None, Some(url)) => crate::secret::redact(url),
        (None, None) => unreachable!("clap requires --to or --into-url"),
    };
    if args.dry_run {
        for (name, e) in &chosen {
            println!(
                "would restore {name} ({}, {} stored, {} plain) into {}",
                e.kind,
                human_bytes(e.stored.bytes),
                human_bytes(e.plain.bytes),
                place(name)
            );
        }
        println!("dry run: nothing written");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(to) = &args.to
        && non_empty(to)?
        && !args.force
    {
        return Err(UsageError(format!(
            "{} is not empty: restore into an empty directory, or pass --force to overwrite files in it",
            to.display()
        ))
        .into());
    }
    let needs_key = chosen
        .iter()
        .any(|(_, e)| matches!(e.encryption, Encryption::Age { .. }));
    let identities = if needs_key {
        Some(std::sync::Arc::new(crypto::restore_identities(
            args.identity.as_deref(),
            &policy.encryption,
        )?))
    } else {
        None
    };

    let mut failed = 0;
    for (name, entry) in chosen {
        let dest = args
            .to
            .as_ref()
            .map(|to| to.join(&name))
            .unwrap_or_default();
        let shown = place(&name);
        let into_server = into.is_some();
        let into = into.clone();
        let key = snapshot::object_key(&manifest.job, &manifest.snapshot, &entry.object);
        let result = async {
            let input = progress.reader(&name, entry.stored.bytes, target.reader(&key).await?);
            let ids = identities.clone();
            let options = source::RestoreOptions {
                overwrite: args.force,
                same_owner: !args.no_same_owner,
            };
            let dest = dest.clone();
            let entry = entry.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<source::Restored> {
                let mut decoded = pipeline::decode(input, &entry, ids.as_deref())?;
                let restored = match &into {
                    Some(into) => source::restore_into(&entry, &mut decoded.reader, into)?,
                    None => source::restore(&entry, &mut decoded.reader, &dest, options)?,
                };
                decoded.finish()?;
                Ok(restored)
            })
            .await?
        }
        .await;
        match result {
            Ok(r) if into_server => println!(
                "restored {name} into {shown}: {} of dump applied; checksums match",
                human_bytes(r.bytes)
            ),
            Ok(r) => {
                println!(
                    "restored {name} into {shown}: {} files, {} dirs, {} symlinks, {}; checksums match",
                    r.files,
                    r.dirs,
                    r.symlinks,
                    human_bytes(r.bytes)
                );
                if r.skipped + r.links_skipped > 0 {
                    println!(
                        "  not restored: {} entries of unsupported types, {} symlinks leading outside {shown}",
                        r.skipped, r.links_skipped
                    );
                }
                for w in r.warnings {
                    println!("  warning: {w}");
                }
            }
            Err(e) => {
                failed += 1;
                println!(
                    "FAILED to restore {name}: {e:#}\n  what was written to {shown} must not be trusted"
                );
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// The snapshot named by `wanted` (id, unique prefix or `latest`), from the first target
/// that has it. `latest` is `instance`'s newest; an id names one snapshot of any instance.
async fn find_snapshot(
    targets: &[Target],
    job: &str,
    wanted: &str,
    instance: &str,
    trust: &Trust,
) -> anyhow::Result<(Target, Manifest)> {
    let mut best: Option<(Target, Manifest)> = None;
    let mut others: std::collections::BTreeSet<String> = Default::default();
    for target in targets {
        let snapshots = match snapshot::list(target, Some(job)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target = %target.name, "cannot list snapshots: {e}");
                continue;
            }
        };
        let found = if wanted == "latest" {
            others.extend(snapshot::instances_in(&snapshots));
            let own: Vec<Manifest> = snapshots
                .into_iter()
                .filter(|m| m.instance() == instance)
                .collect();
            snapshot::newest_accepted(own, trust)
        } else {
            let matches: Vec<Manifest> = snapshots
                .into_iter()
                .filter(|m| m.snapshot.starts_with(wanted))
                .collect();
            if matches.len() > 1 {
                return Err(UsageError(format!(
                    "{wanted:?} matches {} snapshots of job {job}; give more of the id",
                    matches.len()
                ))
                .into());
            }
            matches.into_iter().next()
        };
        if let Some(m) = found
            && best.as_ref().is_none_or(|(_, b)| m.snapshot > b.snapshot)
        {
            best = Some((target.clone(), m));
        }
        if best.is_some() && wanted != "latest" {
            break;
        }
    }
    let shown_targets = targets
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    best.ok_or_else(|| {
        others.remove(instance);
        if wanted == "latest" && !others.is_empty() {
            anyhow::anyhow!(
                "instance {instance} has no committed snapshot of job {job} on target(s) {shown_targets}; instances that have: {} (restore one with --instance NAME)",
                others.into_iter().collect::<Vec<_>>().join(", ")
            )
        } else {
            anyhow::anyhow!(
                "no committed snapshot {wanted:?} of job {job} on target(s) {shown_targets}; see `backupd list {job} --all-instances`"
            )
        }
    })
}

fn select_sources(
    m: &Manifest,
    only: &[String],
    skip: &[String],
) -> anyhow::Result<Vec<(String, SourceEntry)>> {
    // A name matches a source, or every object a multi-database source made.
    let matches = |wanted: &String, name: &String, e: &SourceEntry| {
        wanted == name || e.group.as_ref() == Some(wanted)
    };
    for wanted in only.iter().chain(skip) {
        if !m.sources.iter().any(|(n, e)| matches(wanted, n, e)) {
            let name = wanted;
            return Err(UsageError(format!(
                "snapshot {} has no source {name:?} (sources: {})",
                m.snapshot,
                m.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
    }
    let chosen: Vec<_> = m
        .sources
        .iter()
        .filter(|(n, e)| only.is_empty() || only.iter().any(|w| matches(w, n, e)))
        .filter(|(n, e)| !skip.iter().any(|w| matches(w, n, e)))
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect();
    if chosen.is_empty() {
        return Err(UsageError("--only/--skip leave no source to restore".into()).into());
    }
    Ok(chosen)
}

/// The server restore target from `--into-url`, checked against what was chosen.
fn into_server(
    args: &Args,
    chosen: &[(String, SourceEntry)],
) -> anyhow::Result<Option<source::IntoServer>> {
    let Some(url) = &args.into_url else {
        return Ok(None);
    };
    let [(name, entry)] = chosen else {
        return Err(UsageError(format!(
            "--into-url restores one database source; pick it with --only (sources: {})",
            chosen
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    };
    let engine = match &entry.stats {
        crate::snapshot::SourceStats::Database { engine, .. } => engine.as_str(),
        _ => {
            return Err(UsageError(format!(
                "source {name} is a {} source: restore it with --to DIR",
                entry.kind
            ))
            .into());
        }
    };
    let scheme_ok = match engine {
        "postgres" => url.starts_with("postgres://") || url.starts_with("postgresql://"),
        _ => url.starts_with("mysql://") || url.starts_with("mariadb://"),
    };
    if !scheme_ok {
        return Err(UsageError(format!(
            "source {name} is a {engine} dump; --into-url must be a {engine}:// URL"
        ))
        .into());
    }
    let env_var = if engine == "postgres" {
        "PGPASSWORD"
    } else {
        "MYSQL_PWD"
    };
    let password = match &args.password_file {
        Some(file) => Some(source::child::read_password_file(file)?),
        None => std::env::var(env_var).ok(),
    };
    Ok(Some(source::IntoServer {
        url: url.clone(),
        password,
        create: args.create,
        clean: args.clean,
    }))
}

fn non_empty(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(UsageError(format!(
            "cannot use {} as restore directory: {e}",
            dir.display()
        ))
        .into()),
    }
}
