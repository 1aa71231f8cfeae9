//! The command line: the `Command` enum is the table of contents (its doc comments are
//! `--help`), one file per command under `cli/`, and the exit-status contract:
//! 0 success, 1 a job/restore/check of data failed, 2 usage or policy error.

mod browse;
mod check;
mod completions;
mod fleet;
mod init;
mod keygen;
mod list;
mod prune;
mod recover;
mod restore;
mod run_now;
mod show_config;
mod status;
mod table;
pub use table::printable;
mod verify;
mod wal;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::policy::{self, DEFAULT_POLICY_PATH, Policy};
use crate::target::Target;

/// backupd: scheduled, encrypted, verified backups of databases and directories into
/// object storage.
#[derive(Debug, Parser)]
#[command(name = "backupd", version, about, long_about = None)]
pub struct Cli {
    /// Policy file (TOML).
    #[arg(long, global = true, env = "BACKUPD_CONFIG", default_value = DEFAULT_POLICY_PATH, value_name = "PATH")]
    pub config: PathBuf,
    /// Log format on stderr: `text` (default) or `json` (one object per line, for
    /// containers and log shippers).
    #[arg(long, global = true, env = "BACKUPD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log level or filter (`debug`, `warn`, `backupd=debug`); default from RUST_LOG,
    /// else BACKUPD_LOG, else `info`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// No progress display (it is shown only on a terminal anyway).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a daemon: back up and verify on the policy's schedules, serve metrics,
    /// reload on SIGHUP, stop cleanly on SIGTERM.
    Run,
    /// Show each job's schedule and last results, from the running daemon (or, when none
    /// runs, from the state directory).
    Status(status::Args),
    /// Back up the named jobs now (all jobs if none are named); exit 1 if any fails.
    RunNow(run_now::Args),
    /// List committed snapshots, newest first.
    List(list::Args),
    /// Every instance's newest snapshot per job, read from the targets; flags silent
    /// hosts (older than `alert_if_older_than`) and exits 1 if any is stale.
    Fleet(fleet::Args),
    /// Restore a snapshot into a directory, checking every checksum on the way.
    Restore(restore::Args),
    /// List the entries of a snapshot's directory sources (from its index; no restore).
    Ls(browse::LsArgs),
    /// Which snapshots hold paths matching a glob, with size and time in each.
    Find(browse::FindArgs),
    /// Write one file of a snapshot to stdout, checked against the snapshot's index.
    Cat(browse::CatArgs),
    /// Test-restore snapshots and record the result; exit 1 if any verification fails.
    Verify(verify::Args),
    /// Apply retention (delete what the rules do not keep) and sweep crash leftovers.
    Prune(prune::Args),
    /// Bring back snapshots whose manifests were deleted in a versioned S3 bucket.
    Recover(recover::Args),
    /// PostgreSQL's archive_command: archive one WAL file (`%p`) to the job's targets;
    /// exit 1 on any failure so PostgreSQL keeps it and retries.
    WalPush(wal::PushArgs),
    /// PostgreSQL's restore_command: fetch one archived WAL file (`%f`) to `%p`, checked;
    /// exit 1 when it is not archived (the end of a recovery).
    WalFetch(wal::FetchArgs),
    /// Validate the policy, keys, source paths and target reachability; exit 2 on a fatal finding.
    Check,
    /// Generate a new age identity (secret key, mode 0600) and print its public key.
    Keygen(keygen::Args),
    /// Write a commented starter policy and an age key next to it, and say what to run next.
    Init(init::Args),
    /// Print the effective policy (file plus BACKUPD_* overrides), secrets redacted.
    ShowConfig,
    /// Print a shell completion script: bash, zsh or fish.
    Completions(completions::Args),
    /// Print the man page (roff) on stdout.
    Man,
}

pub use crate::error::{EXIT_FAILED, EXIT_USAGE, UsageError};

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Bars would interleave with JSON log lines: machine-read logs mean no bars.
    let quiet = cli.quiet || cli.log_format == "json";
    match cli.command {
        Command::Run => crate::daemon::run(&cli.config).await,
        Command::Status(args) => status::run(&cli.config, args).await,
        Command::RunNow(args) => run_now::run(&cli.config, args, quiet).await,
        Command::List(args) => list::run(&cli.config, args).await,
        Command::Fleet(args) => fleet::run(&cli.config, args).await,
        Command::Restore(args) => restore::run(&cli.config, args, quiet).await,
        Command::Ls(args) => browse::ls(&cli.config, args).await,
        Command::Find(args) => browse::find(&cli.config, args).await,
        Command::Cat(args) => browse::cat(&cli.config, args).await,
        Command::Verify(args) => verify::run(&cli.config, args, quiet).await,
        Command::Prune(args) => prune::run(&cli.config, args).await,
        Command::Recover(args) => recover::run(&cli.config, args).await,
        Command::WalPush(args) => wal::push(&cli.config, args).await,
        Command::WalFetch(args) => wal::fetch(&cli.config, args).await,
        Command::Check => check::run(&cli.config).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Init(args) => init::run(args),
        Command::ShowConfig => show_config::run(&cli.config).await,
        Command::Completions(args) => completions::run(args),
        Command::Man => completions::man(),
    }
}

/// Maps an error that reached the top to its exit status.
pub fn exit_status(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<policy::PolicyError>().is_some()
        || err.downcast_ref::<UsageError>().is_some()
    {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}

fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    Ok(policy::load(path)?)
}

/// The instance a command acts on: `--instance NAME` (checked), else this one's.
fn chosen_instance(policy: &Policy, flag: Option<&String>) -> Result<String, UsageError> {
    match flag {
        Some(i) if !policy::is_valid_instance(i) => {
            Err(UsageError(format!("invalid instance name {i:?}")))
        }
        Some(i) => Ok(i.clone()),
        None => Ok(policy.daemon.instance()),
    }
}

/// Whose snapshots the policy's `[signing]` trusts; a bad key is a usage error.
fn trust(policy: &Policy) -> Result<crate::snapshot::seal::Trust, UsageError> {
    crate::snapshot::seal::Trust::new(&policy.signing)
        .map_err(|e| UsageError(format!("[signing]: {e}")))
}

/// Opens the named targets; an unknown name is a usage error.
fn open_targets(policy: &Policy, names: &[String]) -> anyhow::Result<Vec<Target>> {
    open_targets_with(policy, names, |name| policy.open_target(name))
}

/// `open_targets` with another way of opening each (e.g. without the state directory).
fn open_targets_with(
    policy: &Policy,
    names: &[String],
    open: impl Fn(&str) -> Result<Target, crate::target::TargetError>,
) -> anyhow::Result<Vec<Target>> {
    names
        .iter()
        .map(|name| {
            if !policy.targets.contains_key(name) {
                return Err(UsageError(format!(
                    "no target named {name:?} in {} (targets: {})",
                    policy.path.display(),
                    policy
                        .targets
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
            Ok(open(name)?)
        })
        .collect()
}

/// `--target NAME` if given, else the job's targets (or all targets without a job).
fn chosen_targets(
    policy: &Policy,
    job: Option<&str>,
    flag: Option<&String>,
) -> anyhow::Result<Vec<Target>> {
    let names: Vec<String> = match (flag, job.and_then(|j| policy.jobs.get(j))) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(job)) => job.targets.clone(),
        (None, None) => policy.targets.keys().cloned().collect(),
    };
    open_targets(policy, &names)
}

use crate::units::human_bytes;

/// How to call backupd again with the same policy, for hints printed to the operator:
/// the binary as it was run (relative to the working directory when under it).
fn self_command(config: &Path) -> String {
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    let shown = match (&exe, &cwd) {
        (Some(exe), Some(cwd)) => exe
            .strip_prefix(cwd)
            .map(|rel| format!("./{}", rel.display()))
            .unwrap_or_else(|_| exe.display().to_string()),
        _ => "backupd".into(),
    };
    format!("{shown} --config {}", config.display())
}
