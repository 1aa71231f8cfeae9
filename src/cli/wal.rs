//! `backupd wal-push --job JOB %p` (PostgreSQL's `archive_command`) and `backupd wal-fetch
//! --job JOB … %f %p` (its `restore_command`): exit 0 only when the file is archived on
//! every target / written whole and checked, so PostgreSQL keeps and retries what failed;
//! a fetch exits 1 only for a file that is not archived (the end of recovery).
//! The archive itself is `crate::wal`.
//!
//! Both run as the database's OS user, not backupd's: targets are opened without the
//! state directory (no upload journal, no listing cache), which that user cannot write.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use super::{EXIT_FAILED, UsageError, load_policy};
use crate::policy::Policy;
use crate::target::Target;
use crate::wal::{Archive, WalError};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The job whose targets receive the WAL (its base backup source's archive).
    #[arg(long)]
    pub job: String,
    /// The job's `method = "basebackup"` source (needed only when it has several).
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// The WAL file PostgreSQL hands over (`%p`).
    pub path: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[arg(long)]
    pub job: String,
    /// The base backup source whose archive to read (default: the job's only one).
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// Whose archive (default: this instance's); a restore writes the snapshot's.
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Read from this target only (default: the job's targets, first that has the file).
    #[arg(long, value_name = "NAME")]
    pub target: Option<String>,
    /// age identity file (default: encryption.identity_file from the policy).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Accept unsigned receipts although `[signing]` is configured (WAL archived before
    /// it was). A receipt signed by an untrusted key is never accepted.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// The WAL file PostgreSQL asks for (`%f`).
    pub file: String,
    /// Where PostgreSQL wants it (`%p`).
    pub dest: PathBuf,
}

/// The job's base backup sources.
fn base_sources(policy: &Policy, job: &str) -> Vec<String> {
    policy.jobs.get(job).map_or_else(Vec::new, |j| {
        j.base_backup_sources().map(|(n, _)| n.clone()).collect()
    })
}

/// The archive a command names: the job must exist; the source must be one of its base
/// backup sources when `strict` (a push), or a valid name (a fetch on another host).
fn archive(
    policy: &Policy,
    job: &str,
    source: Option<&String>,
    instance: Option<&String>,
    strict: bool,
) -> Result<Archive, UsageError> {
    policy.select_jobs(&[job.to_string()])?;
    let sources = base_sources(policy, job);
    let source = match source {
        Some(s) if strict && !sources.contains(s) => {
            return Err(UsageError(format!(
                "job {job} has no method = \"basebackup\" source named {s:?} (base backup sources: {})",
                sources.join(", ")
            )));
        }
        Some(s) if !crate::policy::is_valid_name(s) => {
            return Err(UsageError(format!("invalid source name {s:?}")));
        }
        Some(s) => s.clone(),
        None => match sources.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(UsageError(format!(
                    "job {job} has no postgres source with method = \"basebackup\": WAL is archived beside base backups"
                )));
            }
            many => {
                return Err(UsageError(format!(
                    "job {job} has several base backup sources ({}): pass --source",
                    many.join(", ")
                )));
            }
        },
    };
    Ok(Archive {
        job: job.to_string(),
        instance: super::chosen_instance(policy, instance)?,
        source,
    })
}

/// The job's targets (or the named one), opened without the state directory.
fn targets(policy: &Policy, job: &str, only: Option<&String>) -> anyhow::Result<Vec<Target>> {
    let names = match only {
        Some(t) => vec![t.clone()],
        None => policy.jobs[job].targets.clone(),
    };
    super::open_targets_with(policy, &names, |name| {
        crate::target::open_spec(name, &policy.targets[name])
    })
}

pub async fn push(config: &Path, args: PushArgs) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let archive = archive(&policy, &args.job, args.source.as_ref(), None, true)?;
    let job = &policy.jobs[&args.job];
    let recipients = crate::crypto::backup_recipients(&policy.encryption)?;
    let encoding = job.encoding(recipients);
    let targets = targets(&policy, &args.job, None)?;
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let key = match wal_signing_key(&policy) {
        Ok(key) => key,
        Err(e) => {
            // Archiving unsigned WAL would only be refused at recovery time: fail now,
            // where PostgreSQL's log and the alert rules show it.
            tracing::error!("wal-push {}: {e}", args.path.display());
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let mut trust = crate::snapshot::seal::Trust::listed(&policy.signing)
        .map_err(|e| UsageError(format!("[signing]: {e}")))?;
    if let Some(k) = &key {
        trust = trust.with_key(k);
    }
    let how = crate::wal::Pushing {
        encoding: &encoding,
        host: &host,
        key: key.as_ref(),
        trust: &trust,
    };
    match crate::wal::push(&targets, &archive, &args.path, &how).await {
        Ok(p) => {
            let name = args.path.file_name().unwrap_or_default().to_string_lossy();
            if p.already.len() == p.stored_on.len() {
                tracing::info!(file = %name, "already archived, identical, on {}", p.already.join(", "));
            } else {
                tracing::info!(file = %name, "archived to {}", p.stored_on.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ WalError::BadName(_)) => Err(UsageError(e.to_string()).into()),
        Err(e) => {
            tracing::error!("wal-push {}: {e}", args.path.display());
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// The key WAL receipts are signed with: `[signing] wal_key_file`, else `key_file`;
/// none without `[signing]`. One that cannot be read says how to give the database's user
/// a key of its own.
fn wal_signing_key(policy: &Policy) -> anyhow::Result<Option<ed25519_dalek::SigningKey>> {
    let signing = &policy.signing;
    let Some(path) = signing.wal_key_file.as_ref().or(signing.key_file.as_ref()) else {
        return Ok(None);
    };
    crate::snapshot::seal::load_signing_key(path).map(Some).map_err(|e| {
        anyhow::anyhow!(
            "cannot sign WAL receipts: {e}. wal-push runs as the database's user (uid {}): give it a signing key of its own, readable by it alone (`backupd keygen --signing --output FILE`), as [signing] wal_key_file, with its public key in trusted_keys",
            rustix::process::geteuid().as_raw()
        )
    })
}

/// `wal-fetch`'s status when a file is archived but cannot be delivered whole (damaged,
/// forged, no identity, a broken policy). PostgreSQL reads 1 as "not archived" and ends
/// recovery there, promoting at that point: a damaged file would silently cut the
/// recovery short. Above 125 it stops the recovery instead, loudly.
pub const EXIT_FETCH_FATAL: u8 = 126;

pub async fn fetch(config: &Path, args: FetchArgs) -> anyhow::Result<ExitCode> {
    let file = args.file.clone();
    match fetch_checked(config, args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            tracing::error!("wal-fetch {file}: {e:#}; recovery stops here rather than end early");
            Ok(ExitCode::from(EXIT_FETCH_FATAL))
        }
    }
}

async fn fetch_checked(config: &Path, args: FetchArgs) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let archive = archive(
        &policy,
        &args.job,
        args.source.as_ref(),
        args.instance.as_ref(),
        false,
    )?;
    let targets = targets(&policy, &args.job, args.target.as_ref())?;
    // PostgreSQL asks for files that do not exist (the next timeline's history, the
    // segment after the last): the identity is loaded once a file is found to need it.
    let identities =
        match crate::crypto::restore_identities(args.identity.as_deref(), &policy.encryption) {
            Ok(ids) => Some(Arc::new(ids)),
            Err(e) if policy.encryption.mode == crate::policy::EncryptionMode::None => {
                tracing::debug!("no identity: {e}");
                None
            }
            Err(e) => return Err(e.into()),
        };
    // trusted_keys, plus this host's own keys where this user can read them.
    let mut trust = crate::snapshot::seal::Trust::listed(&policy.signing)?
        .with_readable(policy.signing.key_file.as_deref())
        .with_readable(policy.signing.wal_key_file.as_deref());
    trust.allow_unsigned = args.allow_unsigned;
    match crate::wal::fetch(
        &targets, &archive, &args.file, &args.dest, identities, &trust,
    )
    .await
    {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e @ WalError::NotFound { .. }) => {
            // The normal end of a recovery: PostgreSQL asks until a file is missing.
            tracing::info!("{e}");
            Ok(ExitCode::from(EXIT_FAILED))
        }
        Err(e) => Err(e.into()),
    }
}
