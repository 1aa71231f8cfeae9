//! The settings of what a job does around its backup: hook commands and verification.
//! Their behaviour lives in `job::hooks` and `verify`; the words are the policy's, so
//! the policy composes them without importing the modules that act on them.

use crate::error::Invalid;
use serde::Deserialize;

/// `[jobs.NAME.hooks]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksPolicy {
    /// Runs before the backup; when it fails the backup does not start (nothing is
    /// committed) and the run counts as failed.
    #[serde(default)]
    pub before: Vec<String>,
    /// Runs after a backup that committed on every target.
    #[serde(default)]
    pub after: Vec<String>,
    /// Runs after a failed run (including a failed `before` hook).
    #[serde(default)]
    pub on_failure: Vec<String>,
    /// Each hook is killed after this long and counts as failed.
    #[serde(
        default = "default_timeout_secs",
        deserialize_with = "crate::units::secs::deserialize"
    )]
    pub timeout_secs: u64,
    /// Variables of backupd's own environment that hooks may see (by name).
    #[serde(default)]
    pub pass_env: Vec<String>,
}

fn default_timeout_secs() -> u64 {
    300
}

impl Default for HooksPolicy {
    fn default() -> Self {
        Self {
            before: Vec::new(),
            after: Vec::new(),
            on_failure: Vec::new(),
            timeout_secs: default_timeout_secs(),
            pass_env: Vec::new(),
        }
    }
}

impl HooksPolicy {
    pub fn check(&self) -> Result<(), Invalid> {
        for (name, argv) in [
            ("before", &self.before),
            ("after", &self.after),
            ("on_failure", &self.on_failure),
        ] {
            if argv.first().is_some_and(|p| p.trim().is_empty()) {
                return Err(Invalid(format!(
                    "{name}: the first element is the program to run and cannot be empty"
                )));
            }
        }
        if self.timeout_secs == 0 {
            return Err("timeout_secs must be above 0".into());
        }
        Ok(())
    }
}

/// `[jobs.NAME] verify = { … }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyPolicy {
    /// Verify each new snapshot right after it is committed (run-now and the daemon).
    #[serde(default)]
    pub after_backup: bool,
    /// Cron expression for scheduled verification by the daemon.
    #[serde(default)]
    pub schedule: Option<String>,
    /// What a scheduled verification checks: `latest` or `all`.
    #[serde(default = "latest")]
    pub snapshot: String,
    /// Server for PostgreSQL scratch databases (default: the source's server).
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// Server for MySQL scratch databases (default: the source's server).
    #[serde(default)]
    pub mysql_url: Option<String>,
}

fn latest() -> String {
    "latest".into()
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            after_backup: false,
            schedule: None,
            snapshot: latest(),
            postgres_url: None,
            mysql_url: None,
        }
    }
}

impl VerifyPolicy {
    pub fn check(&self) -> Result<(), Invalid> {
        if !matches!(self.snapshot.as_str(), "latest" | "all") {
            return Err(Invalid(format!(
                "snapshot = {:?}: use \"latest\" or \"all\"",
                self.snapshot
            )));
        }
        if let Some(u) = &self.postgres_url {
            crate::source::postgres::check_url(&crate::source::child::with_database(u, "postgres"))
                .map_err(|e| format!("postgres_url {e}"))?;
        }
        if let Some(u) = &self.mysql_url {
            crate::source::mysql::check_url(&crate::source::child::with_database(u, "mysql"))
                .map_err(|e| format!("mysql_url {e}"))?;
        }
        Ok(())
    }
}
