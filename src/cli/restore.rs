//! `backupd restore JOB [SNAPSHOT] --to DIR …`: each source into `DIR/<source>/`, with the
//! stored and plain sha256 checked against the manifest while restoring. The use case is
//! `crate::restore`; this file parses and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_FAILED, UsageError, chosen_targets, human_bytes, load_policy};
use crate::crypto;
use crate::restore::{self, Destination, pitr};
use crate::snapshot::seal::Judgment;
use crate::snapshot::{Encryption, Selector};
use crate::source;

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
    /// Restore only the entries of directory sources matching this glob (repeatable;
    /// `*` stays within one name, `**` crosses directories; a directory brings everything
    /// under it). Every restore rule still applies.
    #[arg(long, value_name = "GLOB", conflicts_with = "into_url")]
    pub include: Vec<String>,
    /// Leave out the entries matching this glob (repeatable; same syntax as --include).
    #[arg(long, value_name = "GLOB", conflicts_with = "into_url")]
    pub exclude: Vec<String>,
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
    /// Point-in-time recovery of a base backup source: recover up to this moment (with
    /// its zone, e.g. "2026-12-01 10:05:00+00"). With `latest`, the newest base backup
    /// that ended before it is restored. Without any --target-*, recovery replays the
    /// whole archive.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["into_url", "target_lsn", "target_xid"])]
    pub target_time: Option<String>,
    /// Point-in-time recovery up to this WAL position (e.g. 0/16B3748).
    #[arg(long, value_name = "LSN", conflicts_with_all = ["into_url", "target_xid"])]
    pub target_lsn: Option<String>,
    /// Point-in-time recovery up to this transaction id (name the snapshot when the
    /// transaction is older than the newest base backup).
    #[arg(long, value_name = "XID", conflicts_with = "into_url")]
    pub target_xid: Option<String>,
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
    let selector = match Selector::parse(&args.snapshot) {
        Selector::All => {
            return Err(UsageError(
                "restore takes one snapshot: an id, a unique prefix of one, or `latest`".into(),
            )
            .into());
        }
        s => s,
    };
    let point = pitr::point(
        args.target_time.as_deref(),
        args.target_lsn.as_deref(),
        args.target_xid.as_deref(),
    )
    .map_err(edge)?;
    let (target, manifest) = match &point {
        Some(point) if selector == Selector::Latest => {
            pitr::choose(&targets, &args.job, &instance, &trust, point).await
        }
        _ => restore::find(&targets, &args.job, &selector, &instance, &trust).await,
    }
    .map_err(edge)?;
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
    let chosen = restore::select_sources(&manifest, &args.only, &args.skip).map_err(edge)?;
    let is_base = |e: &crate::snapshot::SourceEntry| {
        matches!(e.stats, crate::snapshot::SourceStats::Basebackup { .. })
    };
    if point.is_some() && !chosen.iter().any(|(_, e)| is_base(e)) {
        return Err(UsageError(format!(
            "--target-time/--target-lsn/--target-xid recover a PostgreSQL base backup, and snapshot {} restores none: choose a job with a method = \"basebackup\" source",
            manifest.snapshot
        ))
        .into());
    }
    let filter = restore::Filter::new(&args.include, &args.exclude)
        .map_err(edge)?
        .map(std::sync::Arc::new);
    if filter.is_some()
        && let Some((name, e)) = chosen
            .iter()
            .find(|(_, e)| !matches!(e.stats, crate::snapshot::SourceStats::Tree { .. }))
    {
        return Err(UsageError(format!(
            "--include/--exclude select entries of directory sources; {name} is a {} source: pick the directory sources with --only, or leave {name} out with --skip",
            e.kind
        ))
        .into());
    }

    println!(
        "snapshot {} of job {} (taken {} on {}, tags {}) from target {}",
        manifest.snapshot,
        manifest.job,
        manifest.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        super::printable(&manifest.host),
        super::printable(&manifest.tags.join(",")),
        target.name
    );
    let into = match &args.into_url {
        Some(url) => Some(
            restore::into_server(
                &restore::IntoRequest {
                    url: url.clone(),
                    create: args.create,
                    clean: args.clean,
                    password_file: args.password_file.clone(),
                },
                &chosen,
            )
            .map_err(edge)?,
        ),
        None => None,
    };
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
        let shown = place(&name);
        let dest = match (&into, &args.to) {
            (Some(server), _) => Destination::Server(server.clone()),
            (None, to) => Destination::Dir(
                to.as_ref().map(|to| to.join(&name)).unwrap_or_default(),
                source::RestoreOptions {
                    overwrite: args.force,
                    same_owner: !args.no_same_owner,
                },
                filter.clone(),
            ),
        };
        let result = restore::restore_source(
            &target,
            &manifest,
            &name,
            &entry,
            identities.clone(),
            dest,
            &trust,
            &progress,
        )
        .await;
        match result {
            Ok(r) if into.is_some() => println!(
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
                if is_base(&entry)
                    && let Some(to) = &args.to
                {
                    let data = to.join(&name);
                    let archive = crate::wal::Archive {
                        job: manifest.job.clone(),
                        instance: manifest.instance().to_string(),
                        source: name.clone(),
                    };
                    match recovery(&args, config, &archive, &data, point.as_ref()) {
                        Ok(how) => println!("{how}"),
                        Err(e) => {
                            failed += 1;
                            println!("FAILED to write the recovery settings into {shown}: {e:#}");
                        }
                    }
                }
                if let Some(base) = &entry.base {
                    println!(
                        "  incremental (level {}) on {base}: its chain was restored, full first",
                        entry.level
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

/// Writes a restored base backup's recovery settings (`restore::pitr`) and says how to
/// start it.
fn recovery(
    args: &Args,
    config: &Path,
    archive: &crate::wal::Archive,
    data: &Path,
    point: Option<&source::pgbase::Point>,
) -> anyhow::Result<String> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let exe = std::env::current_exe()?;
    let config = absolute(config);
    let identity = args.identity.as_deref().map(absolute);
    let fetching = pitr::Fetching {
        exe: &exe,
        config: &config,
        identity: identity.as_deref(),
        allow_unsigned: args.allow_unsigned,
    };
    pitr::write_settings(data, &fetching, archive, point)?;
    let until = match point {
        None => "the end of the WAL archive".to_string(),
        Some(source::pgbase::Point::Time(t)) => format!("{t} (recovery_target_time)"),
        Some(source::pgbase::Point::Lsn(l)) => format!("LSN {l}"),
        Some(source::pgbase::Point::Xid(x)) => format!("transaction {x}"),
    };
    let start = format!(
        "pg_ctl -D {} -o '-p 5433' -l {}/recovery.log start",
        data.display(),
        data.display()
    );
    let start = if rustix::process::geteuid().is_root() {
        format!(
            "runuser -u postgres -- {start}   (as the data directory's owner; PostgreSQL refuses root)"
        )
    } else {
        start
    };
    Ok(format!(
        "  recovery settings written (recovery.signal, postgresql.auto.conf): replays WAL of instance {} source {} until {until}, fetched by `backupd wal-fetch`\n  start the server with:\n    {start}",
        archive.instance, archive.source
    ))
}

/// A library error at the edge: a usage error exits 2, anything else 1.
fn edge(e: restore::RestoreError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
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
