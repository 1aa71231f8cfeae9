//! `backupd check`: everything a backup needs, checked without backing anything up:
//! the policy, keys, source paths and each target's reachability (probe write/read/delete).
//! Prints every finding; exit 2 if any is fatal.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_USAGE, load_policy};
use crate::crypto;
use crate::policy::EncryptionMode;

struct Findings {
    fatal: usize,
}

impl Findings {
    fn ok(&self, what: impl std::fmt::Display) {
        println!("ok    {what}");
    }

    fn warn(&self, what: impl std::fmt::Display) {
        println!("warn  {what}");
    }

    fn fail(&mut self, what: impl std::fmt::Display) {
        self.fatal += 1;
        println!("FAIL  {what}");
    }
}

pub async fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let policy = load_policy(config)?;
    let mut f = Findings { fatal: 0 };
    f.ok(format!(
        "policy {}: {} job(s), {} target(s)",
        config.display(),
        policy.jobs.len(),
        policy.targets.len()
    ));

    let enc = &policy.encryption;
    if enc.mode == EncryptionMode::None {
        f.warn("encryption.mode = \"none\": snapshots will be stored in plaintext");
    } else {
        match &enc.identity_file {
            Some(path) if !path.exists() && enc.generate_identity => f.warn(format!(
                "identity file {} does not exist yet; it will be generated on the first backup",
                path.display()
            )),
            Some(path) => match crypto::identity_recipients(path) {
                Ok(own) => {
                    f.ok(format!(
                        "identity file {} is private and readable",
                        path.display()
                    ));
                    let listed: Vec<String> = enc.recipients.clone();
                    if !listed.is_empty() && !own.iter().any(|r| listed.contains(&r.to_string())) {
                        f.warn(format!(
                            "identity file {} matches none of encryption.recipients: it cannot restore new snapshots",
                            path.display()
                        ));
                    }
                }
                Err(e) if enc.recipients.is_empty() => f.fail(e),
                Err(e) => f.warn(format!(
                    "{e} (needed for restore and verify, not for backup)"
                )),
            },
            None => f.warn("no encryption.identity_file: restores will need --identity FILE"),
        }
        if !enc.recipients.is_empty() {
            f.ok(format!("{} recipient(s) configured", enc.recipients.len()));
        }
    }

    check_signing(&policy.signing, &mut f);
    for (name, job) in &policy.jobs {
        if job.coordination != crate::policy::Coordination::Lease {
            continue;
        }
        let Some(first) = job.targets.first() else {
            continue;
        };
        match policy.open_target(first) {
            Ok(t) => match crate::claim::probe(&t).await {
                Ok(supports) => f.ok(format!(
                    "jobs.{name}: coordination = \"lease\": target {first} {supports}"
                )),
                Err(e) => f.fail(format!("jobs.{name}.coordination = \"lease\": {e}")),
            },
            Err(e) => f.fail(format!("jobs.{name}: {e}")),
        }
    }

    let can_decrypt = enc.mode == EncryptionMode::None
        || enc
            .identity_file
            .as_deref()
            .is_some_and(|p| crypto::load_identities(p).is_ok() || enc.generate_identity);
    for (job_name, job) in &policy.jobs {
        if job.verify.after_backup && !can_decrypt {
            f.fail(format!(
                "jobs.{job_name}.verify.after_backup needs a readable encryption.identity_file to test-restore"
            ));
        }
        for (name, spec) in &job.source_specs {
            let label = format!("jobs.{job_name}.sources.{name}");
            let spec = spec.clone();
            let probed = tokio::task::spawn_blocking(move || crate::source::probe(&spec)).await;
            match probed {
                Ok(Ok(probed)) => {
                    f.ok(format!("{label}: {}", probed.what));
                    for w in probed.warnings {
                        f.warn(format!("{label}: {w}"));
                    }
                }
                Ok(Err(e)) => f.fail(format!("{label}: {e}")),
                Err(e) => f.fail(format!("{label}: probe failed: {e}")),
            }
        }
    }

    for name in policy.targets.keys() {
        let opened = policy.open_target(name);
        match opened {
            Err(e) => f.fail(e),
            Ok(t) => match t.probe().await {
                Ok(()) if t.write_only => f.ok(format!(
                    "target {name} ({}): write and read work (write_only: nothing is deleted there)",
                    t.display_url
                )),
                Ok(()) => f.ok(format!(
                    "target {name} ({}): write, read and delete work",
                    t.display_url
                )),
                Err(e) => f.fail(format!("target {name} ({}): {e}", t.display_url)),
            },
        }
        check_immutability(&policy, name, &mut f).await;
    }

    if f.fatal == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} fatal finding(s)", f.fatal);
        Ok(ExitCode::from(EXIT_USAGE))
    }
}

/// The signing key is readable and private, and its public half is trusted, so the
/// snapshots this host makes will be accepted by restore here and elsewhere.
/// An S3 target's versioning and Object Lock, and whether a job's retention would delete
/// snapshots the lock keeps anyway (they stay stored, and billed, until it expires).
async fn check_immutability(policy: &crate::policy::Policy, name: &str, f: &mut Findings) {
    let spec = &policy.targets[name];
    let Ok(url) = url::Url::parse(&spec.url()) else {
        return;
    };
    if url.scheme() != "s3" {
        return;
    }
    let read = async {
        let bucket = crate::target::s3api::Bucket::new(&url, spec)?;
        tokio::try_join!(bucket.versioning(), bucket.lock())
    };
    let (versioned, lock) = match read.await {
        Ok(found) => found,
        Err(e) => {
            f.warn(format!(
                "target {name}: versioning and Object Lock not checked: {e}"
            ));
            return;
        }
    };
    match (&lock, versioned) {
        (Some(_), false) => f.warn(format!(
            "target {name}: Object Lock is on but versioning is not: locked versions need versioning; enable it on the bucket"
        )),
        (None, false) => f.ok(format!(
            "target {name}: versioning off (a deleted snapshot is gone for good; see BACKUP_POLICY.md, Immutable backups)"
        )),
        (None, true) => f.ok(format!(
            "target {name}: versioning on, no Object Lock (`backupd recover` brings back deleted snapshots while their versions last)"
        )),
        (Some(l), true) => {
            let mode = l.mode.as_deref().unwrap_or("no default retention");
            let days = l.days.map(|d| format!(" {d} days")).unwrap_or_default();
            f.ok(format!(
                "target {name}: versioning on, Object Lock {mode}{days} (`backupd recover` brings back deleted snapshots)"
            ));
            let Some(lock_days) = l.days else { return };
            for (job, spec) in &policy.jobs {
                if !spec.targets.iter().any(|t| t == name) {
                    continue;
                }
                let Some(rules) = spec.retention_for(name) else {
                    continue;
                };
                if rules.span_days() < lock_days as u64 {
                    f.warn(format!(
                        "job {job} on target {name}: retention keeps about {} days but the bucket locks each version for {lock_days}: what retention deletes stays stored (and billed) as a locked version until its lock expires; keep at least {lock_days} days, or shorten the lock",
                        rules.span_days()
                    ));
                }
            }
        }
    }
}

fn check_signing(signing: &crate::snapshot::seal::SigningPolicy, f: &mut Findings) {
    use crate::snapshot::seal::{Trust, public_string};
    match &signing.key_file {
        None if signing.trusted_keys.is_empty() => f.warn(
            "no [signing]: a snapshot planted by anyone who can write to a target cannot be told from a real one (see `backupd keygen --signing`)",
        ),
        None => f.ok(format!(
            "{} trusted signing key(s); this host does not sign (no signing.key_file)",
            signing.trusted_keys.len()
        )),
        Some(path) if !path.exists() && signing.generate_key => f.warn(format!(
            "signing key {} does not exist yet; it will be generated on the first backup",
            path.display()
        )),
        Some(path) => match crate::snapshot::seal::load_signing_key(path) {
            Ok(key) => {
                let public = public_string(&key.verifying_key());
                f.ok(format!(
                    "signing key {} is private and readable ({public})",
                    path.display()
                ));
                if !signing.trusted_keys.iter().any(|k| k.trim() == public) {
                    f.warn(format!(
                        "{public} is not in signing.trusted_keys: restore on another machine will refuse this host's snapshots until it is"
                    ));
                }
            }
            Err(e) => f.fail(format!("signing key: {e}")),
        },
    }
    if let Err(e) = Trust::new(signing) {
        f.fail(format!("[signing]: {e}"));
    }
}
