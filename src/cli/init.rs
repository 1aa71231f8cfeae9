//! `backupd init [--output FILE] [--source DIR]`: a commented starter policy that works
//! with no edits — one directory job to a local target, encrypted to an age key generated
//! beside the policy (0600), verified after each backup, with retention — plus a
//! commented-out database job, and the next three commands to run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the policy (never overwritten).
    #[arg(long, default_value = "policy.toml", value_name = "FILE")]
    pub output: PathBuf,
    /// The directory the starter job backs up (default: the policy's directory).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

const KEY_FILE: &str = "backupd-identity.txt";
const SIGNING_KEY_FILE: &str = "backupd-signing.key";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let output = std::path::absolute(&args.output)?;
    // symlink_metadata: a dangling link planted at --output "does not exist" to exists().
    if output.symlink_metadata().is_ok() {
        return Err(UsageError(format!(
            "{} already exists; pick another --output or remove it first",
            output.display()
        ))
        .into());
    }
    let dir = output.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let key = dir.join(KEY_FILE);
    for existing in [&key, &dir.join(SIGNING_KEY_FILE)] {
        adoptable(existing)?;
    }
    let recipient = if key.exists() {
        // An earlier init left its key: reuse it rather than orphan the snapshots it opens.
        crate::crypto::identity_recipients(&key)?
            .first()
            .map(ToString::to_string)
            .ok_or_else(|| anyhow::anyhow!("{} holds no age identity", key.display()))?
    } else {
        crate::crypto::generate_identity(&key)?.to_string()
    };
    let signing_key = dir.join(SIGNING_KEY_FILE);
    let signer = if signing_key.exists() {
        let key = crate::snapshot::seal::load_signing_key(&signing_key)?;
        crate::snapshot::seal::public_string(&key.verifying_key())
    } else {
        crate::snapshot::seal::generate_signing_key(&signing_key)?
    };
    let source = match &args.source {
        Some(s) => std::path::absolute(s)?,
        None => dir.clone(),
    };
    if !source.is_dir() {
        return Err(UsageError(format!("--source {} is not a directory", source.display())).into());
    }
    let text = TEMPLATE
        .replace("{RECIPIENT}", &recipient)
        .replace("{KEY_FILE}", KEY_FILE)
        .replace("{SIGNING_KEY_FILE}", SIGNING_KEY_FILE)
        .replace("{SIGNER}", &signer)
        .replace("{SOURCE}", &toml_string(&source));
    // create_new never follows a link and never replaces a file someone put there since.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&output)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", output.display()))?;
        f.write_all(text.as_bytes())?;
    }
    let cmd = format!("backupd --config {}", output.display());
    println!(
        "wrote {}, the age key {} and the signing key {} (both mode 0600)",
        output.display(),
        key.display(),
        signing_key.display()
    );
    println!("keep a copy of the key somewhere safe: without it no snapshot can be restored\n");
    println!("next:");
    println!("  {cmd} check      # keys, source, target");
    println!("  {cmd} run-now    # first backup, verified");
    println!("  {cmd} list       # what is stored");
    Ok(ExitCode::SUCCESS)
}

/// A key file left by an earlier `init` is reused only if it is a plain file this user
/// owns: in a directory others can write, a planted key would make every backup readable
/// by whoever planted it.
fn adoptable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(());
    };
    let me = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_file() || meta.uid() != me {
        return Err(UsageError(format!(
            "{} exists but is not a file owned by you (uid {me}); refusing to adopt a key someone else could hold: remove it, or init elsewhere",
            path.display()
        ))
        .into());
    }
    Ok(())
}

fn toml_string(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

const TEMPLATE: &str = r#"# backupd policy, written by `backupd init`. Reference: BACKUP_POLICY.md.
# Relative paths are taken from this file's directory.

[daemon]
# Local scratch space and the record of each job's last run.
state_dir = ".backupd-state"

[encryption]
# Snapshots are encrypted to this public key; {KEY_FILE} (next to this file, mode 0600)
# is its secret half, needed to restore and verify. Keep a copy of it off this machine.
recipients = ["{RECIPIENT}"]
identity_file = "{KEY_FILE}"

[signing]
# Each manifest this host commits is signed with {SIGNING_KEY_FILE} (mode 0600, never in the
# bucket); restore, verify, list and prune trust only snapshots signed by these keys, so
# someone who can write to the bucket cannot plant one. Add other hosts' public keys here.
key_file = "{SIGNING_KEY_FILE}"
trusted_keys = ["{SIGNER}"]

# Where snapshots go. Add an offsite copy with e.g. url = "s3://bucket/prefix".
[targets.local]
path = "backups"

[jobs.files]
targets = ["local"]
# For `backupd run` (the daemon): every night at 03:00.
schedule = "0 3 * * *"
compression = "zstd"
# Test-restore each new snapshot right after it is committed.
verify = { after_backup = true }
# Keep 7 daily, 4 weekly and 6 monthly snapshots, and any tagged pre-migration.
retention = { keep_daily = 7, keep_weekly = 4, keep_monthly = 6, keep_tags = ["pre-migration"] }

[jobs.files.sources.files]
kind = "directory"
path = "{SOURCE}"
# Never back up the backups, the state or the keys.
exclude = ["backups/", ".backupd-state/", "{KEY_FILE}", "{SIGNING_KEY_FILE}"]

# A PostgreSQL database (uncomment and adapt; the password file must be mode 0600):
# [jobs.db]
# targets = ["local"]
# schedule = "30 2 * * *"
# verify = { after_backup = true }
#
# [jobs.db.sources.app]
# kind = "postgres"
# url = "postgres://backup@127.0.0.1:5432/app"
# password_file = "pg-password"
"#;
