//! The typed backup policy: loading it (TOML file + `BACKUPD_*` env overrides, via
//! figment), resolving relative paths against the policy file, and pure validation that
//! reports every problem at once with its key path and a hint.
//!
//! Loading is two-phase on purpose: serde stops at the first error, so targets, jobs and
//! sources are first read as untyped values and then typed one by one, each failure
//! collected with its key path. That is how a policy with three mistakes gets three
//! messages instead of one.

mod load;
mod runs;
mod validate;

#[cfg(test)]
mod fuzz;

use std::collections::BTreeMap;
use std::path::PathBuf;

use figment::value::Value;
use serde::Deserialize;

pub use load::{from_figment, load, merged_values};
pub use runs::{HooksPolicy, VerifyPolicy};
pub use validate::{Problem, is_valid_name};

/// Where the policy is read from when neither `--config` nor `BACKUPD_CONFIG` says.
pub const DEFAULT_POLICY_PATH: &str = "/etc/backupd/policy.toml";

/// Every way loading a policy can fail; each variant says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "policy file {path} not found: pass --config PATH or set BACKUPD_CONFIG (see config/quickstart.toml for an example)"
    )]
    NotFound { path: PathBuf },
    #[error("cannot read policy file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {path} is invalid ({} problem{}):\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, render(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A loaded, validated policy. Paths in it are absolute.
#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    pub daemon: DaemonPolicy,
    pub encryption: EncryptionPolicy,
    /// `[signing]`: the manifest signing key and the keys whose snapshots are trusted.
    pub signing: crate::snapshot::seal::SigningPolicy,
    pub targets: BTreeMap<String, TargetPolicy>,
    pub jobs: BTreeMap<String, JobPolicy>,
    /// `[[notify]]` webhooks told about job outcomes and freshness alarms.
    pub notify: Vec<crate::notify::WebhookPolicy>,
}

/// Settings of the backupd process itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonPolicy {
    /// Local scratch space (staged SQLite copies, generated keys); never the source of truth.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Objects of no committed snapshot older than this are crash leftovers that prune
    /// removes, e.g. `"24h"`. Younger ones may belong to a backup still running.
    #[serde(default = "default_orphan_grace", with = "crate::units::duration")]
    pub orphan_grace: std::time::Duration,
    /// Address of the `/metrics`, `/healthz` and `/status` listener of `backupd run`;
    /// loopback by default, `"off"` for none. Port 0 picks a free port (written to
    /// `state_dir/daemon.json`, where `backupd status` finds it).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Jobs (and scheduled verifications) the daemon runs at once; the rest wait.
    #[serde(default = "default_max_concurrent_jobs")]
    pub max_concurrent_jobs: usize,
    /// On SIGTERM, how long running jobs may finish before they are cancelled (nothing
    /// of a cancelled snapshot is committed).
    #[serde(
        default = "default_shutdown_timeout_secs",
        deserialize_with = "crate::units::secs::deserialize"
    )]
    pub shutdown_timeout_secs: u64,
    /// Where a snapshot waits (encrypted) for a remote target that was down when it was
    /// taken; delivered later by the daemon and by `run-now`. Off unless set.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Uploads to remote targets, all jobs and targets together, at most this fast (bytes
    /// per second, written `"20MiB/s"`). Off unless set.
    #[serde(default, deserialize_with = "crate::units::rate::deserialize")]
    pub upload_limit: Option<u64>,
    /// Beyond this, the oldest spooled snapshots are dropped (with an error).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// First delay between the daemon's delivery attempts; doubles while a target stays
    /// down (up to 60 times this), back to this once everything is delivered.
    #[serde(
        default = "default_spool_retry_secs",
        deserialize_with = "crate::units::secs::deserialize"
    )]
    pub spool_retry_secs: u64,
    /// Who this backupd is among the hosts sharing a bucket: recorded in every manifest;
    /// retention, `latest` and `list` act on this instance's snapshots unless told
    /// otherwise. Default: the host name. In Kubernetes set a stable name
    /// (`BACKUPD_DAEMON__INSTANCE`), not the pod's random one.
    #[serde(default)]
    pub instance: Option<String>,
}

impl DaemonPolicy {
    /// This process's instance name: `instance`, else the host name.
    pub fn instance(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }
}

fn default_lease_ttl_secs() -> u64 {
    60
}

/// How the daemons of one instance share a job's scheduled slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coordination {
    #[default]
    None,
    Lease,
}

pub use crate::snapshot::is_valid_instance;

fn default_spool_retry_secs() -> u64 {
    30
}

fn default_spool_max_bytes() -> u64 {
    10 << 30
}

fn default_listen() -> String {
    "127.0.0.1:9897".into()
}

fn default_max_concurrent_jobs() -> usize {
    1
}

fn default_shutdown_timeout_secs() -> u64 {
    300
}

fn yes() -> bool {
    true
}

fn default_orphan_grace() -> std::time::Duration {
    std::time::Duration::from_secs(24 * 3600)
}

impl Default for DaemonPolicy {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            orphan_grace: default_orphan_grace(),
            listen: default_listen(),
            max_concurrent_jobs: default_max_concurrent_jobs(),
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            spool_dir: None,
            upload_limit: None,
            spool_max_bytes: default_spool_max_bytes(),
            spool_retry_secs: default_spool_retry_secs(),
            instance: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/backupd")
}

pub use crate::crypto::{EncryptionMode, EncryptionPolicy};
pub use crate::target::TargetPolicy;

/// One backup job: what to back up, where to, and how to encode it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobPolicy {
    /// Cron expression for the daemon (`backupd run`): 5 fields, 6 with seconds, or
    /// `@daily`-style; evaluated in `timezone`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Start up to this many seconds after the scheduled time (random), so many hosts on
    /// the same schedule do not hit a target at once.
    #[serde(default, deserialize_with = "crate::units::secs::deserialize")]
    pub jitter_secs: u64,
    /// When the daemon starts and the newest snapshot predates the last scheduled time
    /// (the host was down), run once soon after start.
    #[serde(default = "yes")]
    pub catch_up: bool,
    /// `"lease"`: replicas of one instance run each scheduled slot once, by claiming it
    /// on the job's first target (`job::claim`); `"none"` (default): every daemon runs it.
    #[serde(default)]
    pub coordination: Coordination,
    /// With `"lease"`: the holder of a slot renews its claim every third of this; a replica
    /// that sees the claim unchanged this long takes the slot over.
    #[serde(
        default = "default_lease_ttl_secs",
        deserialize_with = "crate::units::secs::deserialize"
    )]
    pub lease_ttl_secs: u64,
    /// Cancel a run that takes longer than this (nothing of it is committed).
    #[serde(default, deserialize_with = "crate::units::secs::option::deserialize")]
    pub timeout_secs: Option<u64>,
    /// Freshness alarm: when no committed snapshot is newer than this (e.g. `"26h"`), the
    /// `backupd_job_fresh` metric drops to 0 and webhooks are told, once.
    #[serde(default, with = "crate::units::duration::option")]
    pub alert_if_older_than: Option<std::time::Duration>,
    /// Commands run before/after the backup and on failure.
    #[serde(default)]
    pub hooks: HooksPolicy,
    /// healthchecks-style ping URL: `URL/start` when a run starts, `URL` on success,
    /// `URL/fail` on failure.
    #[serde(default)]
    pub healthcheck_url: Option<String>,
    pub targets: Vec<String>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Compression threads; 0 (the default) uses every core.
    #[serde(default)]
    pub threads: usize,
    /// IANA time zone for retention's day/week/month buckets (and schedules); default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Which snapshots to keep; without it, nothing is ever deleted.
    #[serde(default)]
    pub retention: Option<crate::retention::Rules>,
    /// Per-target overrides of `retention`, e.g. `[jobs.app.target_retention.offsite]`.
    #[serde(default)]
    pub target_retention: BTreeMap<String, crate::retention::Rules>,
    /// Verification by test-restore.
    #[serde(default)]
    pub verify: VerifyPolicy,
    /// Untyped on load; typed into `source_specs` one by one so every bad source is reported.
    #[serde(default)]
    sources: BTreeMap<String, Value>,
    #[serde(skip)]
    pub source_specs: BTreeMap<String, SourceSpec>,
}

pub use crate::snapshot::Compression;

pub use crate::source::mysql::MysqlSpec;
pub use crate::source::postgres::PostgresSpec;
pub use crate::source::redis::RedisSpec;
pub use crate::source::{SOURCE_KINDS, SourceSpec};

pub use crate::source::directory::DirectorySpec;
pub use crate::source::sqlite::SqliteSpec;

impl JobPolicy {
    /// Compression threads to use: `threads`, or every core when it is 0.
    pub fn compression_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The job's PostgreSQL sources with `method = "basebackup"`: the ones with a WAL
    /// archive beside their snapshots.
    pub fn base_backup_sources(
        &self,
    ) -> impl Iterator<Item = (&String, &crate::source::PostgresSpec)> {
        self.source_specs
            .iter()
            .filter_map(|(name, spec)| match spec {
                crate::source::SourceSpec::Postgres(p)
                    if p.method == crate::source::postgres::Method::Basebackup =>
                {
                    Some((name, p))
                }
                _ => None,
            })
    }

    /// How the job's objects are encoded (its snapshots' and its WAL's alike).
    pub fn encoding(
        &self,
        recipients: Option<Vec<age::x25519::Recipient>>,
    ) -> crate::pipeline::Encoding {
        crate::pipeline::Encoding {
            compression: self.compression,
            level: self
                .compression_level
                .unwrap_or_else(|| self.compression.default_level()),
            recipients,
            threads: self.compression_threads(),
        }
    }

    /// The job's parsed backup schedule (validated at load time), if it has one.
    pub fn backup_schedule(&self) -> Option<crate::schedule::Schedule> {
        let expr = self.schedule.as_deref()?;
        crate::schedule::Schedule::parse(expr, self.tz()).ok()
    }

    /// The job's parsed verification schedule, if it has one.
    pub fn verify_schedule(&self) -> Option<crate::schedule::Schedule> {
        let expr = self.verify.schedule.as_deref()?;
        crate::schedule::Schedule::parse(expr, self.tz()).ok()
    }

    /// The job's time zone (validated at load time).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }

    /// The retention rules for one of the job's targets, if any.
    pub fn retention_for(&self, target: &str) -> Option<&crate::retention::Rules> {
        self.target_retention
            .get(target)
            .or(self.retention.as_ref())
    }
}

impl Policy {
    /// Opens the target `name` (journaling its multipart uploads in the state directory).
    pub fn open_target(
        &self,
        name: &str,
    ) -> Result<crate::target::Target, crate::target::TargetError> {
        let mut t = crate::target::open_named(&self.targets, &self.daemon.state_dir, name)?;
        // The uplink is what the daemon-wide limit protects: local directories are exempt.
        if let Some(rate) = self.daemon.upload_limit
            && t.remote.is_some()
        {
            t.limits.push(crate::target::limit::shared("", rate));
        }
        Ok(t)
    }

    /// The named jobs, or all of them; an unknown name is a usage error naming the known ones.
    pub fn select_jobs(&self, names: &[String]) -> Result<Vec<String>, crate::error::Invalid> {
        if names.is_empty() {
            return Ok(self.jobs.keys().cloned().collect());
        }
        for name in names {
            if !self.jobs.contains_key(name) {
                return Err(crate::error::Invalid(format!(
                    "no job named {name:?} in {} (jobs: {})",
                    self.path.display(),
                    self.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(names.to_vec())
    }
}
