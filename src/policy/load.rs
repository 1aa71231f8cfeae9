//! Loading a policy: the TOML file plus `BACKUPD_*` environment overrides (figment), the
//! two-phase typing that collects every problem, and resolving relative paths against
//! the policy file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Value;
use serde::Deserialize;

use super::validate;
use super::{
    DaemonPolicy, EncryptionPolicy, JobPolicy, Policy, PolicyError, Problem, SourceSpec,
    TargetPolicy,
};

/// The policy file to use: `--config`, else `BACKUPD_CONFIG` (clap folds both), else the default.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PolicyError::NotFound { path: path.into() });
        }
        Err(source) => {
            return Err(PolicyError::Unreadable {
                path: path.into(),
                source,
            });
        }
    };
    let figment = Figment::from(Toml::string(&text)).merge(env_overrides());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let base = normalize(&base);
    let mut policy = from_figment(figment, &base).map_err(|problems| PolicyError::Invalid {
        path: path.into(),
        problems,
    })?;
    policy.path = path.into();
    Ok(policy)
}

/// The merged policy (file + environment) as plain values, before typing: what
/// `show-config` prints.
pub fn merged_values(path: &Path) -> Result<Value, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Unreadable {
        path: path.into(),
        source,
    })?;
    Figment::from(Toml::string(&text))
        .merge(env_overrides())
        .extract::<Value>()
        .map_err(|e| PolicyError::Invalid {
            path: path.into(),
            problems: validate::serde_problems("", e),
        })
}

/// `BACKUPD_JOBS__APP__COMPRESSION=zstd` overrides `jobs.app.compression`. Only the
/// policy's own sections are taken, so `BACKUPD_CONFIG`/`BACKUPD_LOG` never read as keys.
fn env_overrides() -> Env {
    Env::prefixed("BACKUPD_").split("__").filter(|key| {
        let first = key.as_str().split('.').next().unwrap_or("");
        ["daemon", "encryption", "signing", "targets", "jobs"]
            .iter()
            .any(|section| first.eq_ignore_ascii_case(section))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    daemon: DaemonPolicy,
    #[serde(default)]
    encryption: EncryptionPolicy,
    #[serde(default)]
    signing: crate::snapshot::seal::SigningPolicy,
    #[serde(default)]
    targets: BTreeMap<String, Value>,
    #[serde(default)]
    jobs: BTreeMap<String, Value>,
    #[serde(default)]
    notify: Vec<crate::notify::WebhookPolicy>,
}

/// Types and validates a policy; `base` is the directory relative paths are taken from.
pub fn from_figment(figment: Figment, base: &Path) -> Result<Policy, Vec<Problem>> {
    let value: Value = figment
        .extract()
        .map_err(|e| validate::serde_problems("", e))?;
    let mut problems = Vec::new();
    let Some(raw) = validate::lenient::<RawPolicy>("", value, &mut problems) else {
        return Err(problems);
    };
    let mut targets = BTreeMap::new();
    for (name, value) in raw.targets {
        let key = format!("targets.{name}");
        if let Some(mut t) = validate::lenient::<TargetPolicy>(&key, value, &mut problems) {
            t.path = t.path.map(|p| join(base, p));
            t.secret_access_key_file = t.secret_access_key_file.map(|p| join(base, p));
            t.access_key_file = t.access_key_file.map(|p| join(base, p));
            t.service_account_file = t.service_account_file.map(|p| join(base, p));
            targets.insert(name, t);
        }
    }
    if raw.jobs.is_empty() {
        problems.push(validate::no_jobs());
    }
    let mut jobs = BTreeMap::new();
    for (name, value) in raw.jobs {
        let key = format!("jobs.{name}");
        let Some(mut job) = validate::lenient::<JobPolicy>(&key, value, &mut problems) else {
            continue;
        };
        if job.sources.is_empty() {
            problems.push(validate::no_sources(&key));
        }
        for (source, value) in std::mem::take(&mut job.sources) {
            let key = format!("{key}.sources.{source}");
            if let Some(spec) = validate::source_spec(&key, value, &mut problems) {
                job.source_specs.insert(source, resolve_source(spec, base));
            }
        }
        jobs.insert(name, job);
    }
    let mut encryption = raw.encryption;
    encryption.identity_file = encryption.identity_file.map(|p| join(base, p));
    let mut signing = raw.signing;
    signing.key_file = signing.key_file.map(|p| join(base, p));
    signing.wal_key_file = signing.wal_key_file.map(|p| join(base, p));
    let mut daemon = raw.daemon;
    daemon.state_dir = join(base, daemon.state_dir);
    daemon.spool_dir = daemon.spool_dir.map(|p| join(base, p));
    let policy = Policy {
        path: PathBuf::new(),
        daemon,
        encryption,
        signing,
        targets,
        jobs,
        notify: raw
            .notify
            .into_iter()
            .map(|mut n| {
                n.password_file = n.password_file.map(|p| join(base, p));
                n.ca_file = n.ca_file.map(|p| join(base, p));
                n
            })
            .collect(),
    };
    problems.extend(validate::policy(&policy));
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(problems)
    }
}

/// Drops `.` and folds `..` by name, so logged paths read as the operator wrote them.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn join(base: &Path, path: PathBuf) -> PathBuf {
    normalize(&base.join(path))
}

fn resolve_source(spec: SourceSpec, base: &Path) -> SourceSpec {
    spec.resolve_paths(|p| join(base, p))
}
