//! Pure checks of a typed policy (no filesystem, network or clock), and the translation of
//! serde/figment errors into problems that name the key and say how to fix it.

use figment::error::Kind;
use figment::value::Value;

use super::{
    Compression, DirectorySpec, EncryptionMode, MysqlSpec, Policy, PostgresSpec, RedisSpec,
    SOURCE_KINDS, SourceSpec, SqliteSpec,
};

/// One thing wrong with a policy, at a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

pub use crate::snapshot::is_valid_name;

fn check_name(key: &str, what: &str, name: &str, out: &mut Vec<Problem>) {
    if !is_valid_name(name) {
        out.push(problem(
            key,
            format!(
                "invalid {what} name {name:?}: use lowercase letters, digits, '_' and '-', starting with a letter or digit (at most 64)"
            ),
        ));
    }
}

/// Each error figment collected, as a problem under `prefix`.
/// Types `value` as `T`, reporting every unknown key and bad value instead of stopping at
/// the first: each one is recorded in `problems`, removed, and the rest typed again, so the
/// other problems of the same file are found in the same run. `None` when the rest does not
/// type either (its problems recorded too).
pub fn lenient<T: serde::de::DeserializeOwned>(
    key: &str,
    mut value: Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    // Serde stops at the first error; a file has a handful of keys, this bounds a hostile one.
    for _ in 0..256 {
        let err = match value.deserialize::<T>() {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        // An unknown key, or a known key with a bad value, is taken out and reported; a
        // missing required key cannot be, and ends the typing of this table.
        let unknown: Vec<Vec<String>> = err
            .clone()
            .into_iter()
            .filter_map(|e| match &e.kind {
                Kind::UnknownField(field, _) => {
                    let mut path = e.path.clone();
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    Some(path)
                }
                Kind::MissingField(_) => None,
                _ if !e.path.is_empty() => Some(e.path.clone()),
                _ => None,
            })
            .collect();
        let removed = unknown
            .iter()
            .filter(|p| remove_path(&mut value, p))
            .count();
        problems.extend(serde_problems(key, err));
        if removed == 0 {
            return None;
        }
    }
    None
}

fn remove_path(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for p in parents {
        cur = match cur {
            Value::Dict(_, d) => match d.get_mut(p) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Dict(_, d) => d.remove(last).is_some(),
        _ => false,
    }
}

pub fn serde_problems(prefix: &str, err: figment::Error) -> Vec<Problem> {
    err.into_iter()
        .map(|e| {
            let mut key = prefix.to_string();
            for part in &e.path {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(part);
            }
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    // figment puts the offending key in the path itself, serde does not.
                    if e.path.last() != Some(field) {
                        if !key.is_empty() {
                            key.push('.');
                        }
                        key.push_str(field);
                    }
                    format!("unknown key (expected one of: {})", expected.join(", "))
                }
                Kind::MissingField(field) => {
                    if e.path.last().map(String::as_str) != Some(field.as_ref()) {
                        if !key.is_empty() {
                            key.push('.');
                        }
                        key.push_str(field);
                    }
                    "required key is missing".to_string()
                }
                Kind::UnknownVariant(found, expected) => format!(
                    "unknown value {found:?} (expected one of: {})",
                    expected.join(", ")
                ),
                other => without_source_lines(&other.to_string()),
            };
            problem(key, message)
        })
        .collect()
}

/// A TOML syntax error without the quoted source line: the line may hold a secret (a
/// webhook token), and the message is logged and shown on every SIGHUP. Line and column
/// stay, which is what the operator needs to find it.
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let numbered = t
                .split_once('|')
                .is_some_and(|(n, _)| n.trim().chars().all(|c| c.is_ascii_digit()));
            !t.starts_with('|') && !numbered
        })
        .collect::<Vec<_>>()
        .join(": ")
}

pub fn no_jobs() -> Problem {
    problem(
        "jobs",
        "no jobs defined: add a [jobs.NAME] table with targets and sources",
    )
}

pub fn no_sources(job_key: &str) -> Problem {
    problem(
        format!("{job_key}.sources"),
        "no sources: add a [jobs.NAME.sources.SOURCE] table with a `kind`",
    )
}

/// Types one `[jobs.X.sources.Y]` table by its `kind`; every problem goes to `problems`,
/// and the spec is typed whenever its known keys allow it (so its other checks still run).
pub fn source_spec(key: &str, value: Value, problems: &mut Vec<Problem>) -> Option<SourceSpec> {
    let Some(dict) = value.as_dict() else {
        problems.push(problem(key, "must be a table with a `kind` key"));
        return None;
    };
    let mut fields = dict.clone();
    let kind = match fields.remove("kind") {
        Some(Value::String(_, kind)) => kind,
        Some(_) => {
            problems.push(problem(format!("{key}.kind"), "must be a string"));
            return None;
        }
        None => {
            problems.push(problem(
                format!("{key}.kind"),
                format!(
                    "required key is missing (one of: {})",
                    SOURCE_KINDS.join(", ")
                ),
            ));
            return None;
        }
    };
    let rest = Value::from(fields);
    match kind.as_str() {
        "directory" => lenient::<DirectorySpec>(key, rest, problems).map(SourceSpec::Directory),
        "sqlite" => lenient::<SqliteSpec>(key, rest, problems).map(SourceSpec::Sqlite),
        "postgres" => lenient::<PostgresSpec>(key, rest, problems).map(SourceSpec::Postgres),
        "mysql" => lenient::<MysqlSpec>(key, rest, problems).map(SourceSpec::Mysql),
        "redis" => lenient::<RedisSpec>(key, rest, problems).map(SourceSpec::Redis),
        other => {
            problems.push(problem(
                key,
                format!(
                    "unknown kind {other:?} (expected one of: {})",
                    SOURCE_KINDS.join(", ")
                ),
            ));
            None
        }
    }
}

/// Cross-field checks of an already typed policy.
pub fn policy(policy: &Policy) -> Vec<Problem> {
    let mut out = Vec::new();
    encryption(policy, &mut out);
    for p in policy.signing.check() {
        let (key, what) = p.split_once(": ").unwrap_or(("signing", p.as_str()));
        out.push(problem(key, what));
    }
    daemon(policy, &mut out);
    for (i, hook) in policy.notify.iter().enumerate() {
        for (field, e) in crate::notify::check(hook) {
            out.push(problem(format!("notify[{i}].{field}"), e));
        }
    }
    for (name, target) in &policy.targets {
        let key = format!("targets.{name}");
        check_name(&key, "target", name, &mut out);
        match (&target.url, &target.path) {
            (Some(_), Some(_)) => out.push(problem(&key, "set either `url` or `path`, not both")),
            (None, None) => out.push(problem(
                &key,
                "needs `url` (e.g. \"file:///var/backups/backupd\") or `path` (a local directory)",
            )),
            (Some(url), None) => {
                if let Err(e) = crate::target::check_url(url) {
                    out.push(problem(format!("{key}.url"), e));
                }
            }
            (None, Some(_)) => {}
        }
        for (field, message) in target.check() {
            out.push(problem(format!("{key}.{field}"), message));
        }
    }
    for (name, job) in &policy.jobs {
        job_checks(policy, name, job, &mut out);
    }
    out
}

fn daemon(policy: &Policy, out: &mut Vec<Problem>) {
    if let Some(i) = &policy.daemon.instance
        && !crate::policy::is_valid_instance(i)
    {
        out.push(problem(
            "daemon.instance",
            format!("{i:?}: use letters, digits, '-', '_' and '.' (a host name fits)"),
        ));
    }
    if policy.daemon.max_concurrent_jobs == 0 {
        out.push(problem("daemon.max_concurrent_jobs", "must be at least 1"));
    }
    if policy.daemon.listen != "off"
        && policy
            .daemon
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
    {
        out.push(problem(
            "daemon.listen",
            format!(
                "{:?} is not an address like \"127.0.0.1:9897\" (or \"off\" for no listener)",
                policy.daemon.listen
            ),
        ));
    }
}

/// Everything about one job: its name, targets, schedules, retention, hooks and sources.
fn job_checks(policy: &Policy, name: &str, job: &crate::policy::JobPolicy, out: &mut Vec<Problem>) {
    let key = format!("jobs.{name}");
    check_name(&key, "job", name, out);
    if job.targets.is_empty() {
        out.push(problem(
            format!("{key}.targets"),
            "list at least one target",
        ));
    }
    for target in &job.targets {
        if !policy.targets.contains_key(target) {
            out.push(problem(
                format!("{key}.targets"),
                format!(
                    "unknown target {target:?} (defined: {})",
                    names(policy.targets.keys())
                ),
            ));
        }
    }
    if let Some(tz) = &job.timezone
        && tz.parse::<chrono_tz::Tz>().is_err()
    {
        out.push(problem(
            format!("{key}.timezone"),
            format!(
                "unknown time zone {tz:?} (use an IANA name like \"Europe/Berlin\" or \"UTC\")"
            ),
        ));
    }
    let mut rule_sets: Vec<(String, &crate::retention::Rules)> = Vec::new();
    if let Some(r) = &job.retention {
        rule_sets.push((format!("{key}.retention"), r));
    }
    for (t, r) in &job.target_retention {
        if !job.targets.contains(t) {
            out.push(problem(
                format!("{key}.target_retention.{t}"),
                format!(
                    "{t:?} is not one of this job's targets ({})",
                    job.targets.join(", ")
                ),
            ));
        }
        rule_sets.push((format!("{key}.target_retention.{t}"), r));
    }
    for (rkey, rules) in rule_sets {
        if !rules.keeps_something() {
            out.push(problem(
                rkey,
                "these rules keep nothing: set keep_last, keep_daily, … (at least one above 0), keep_within or keep_tags, or remove the table to keep everything",
            ));
        }
    }
    for (field, expr) in [
        ("schedule", &job.schedule),
        ("verify.schedule", &job.verify.schedule),
    ] {
        if let Some(expr) = expr
            && let Err(e) = crate::schedule::Schedule::parse(expr, job.tz())
        {
            out.push(problem(format!("{key}.{field}"), e));
        }
    }
    if job.coordination == crate::policy::Coordination::Lease {
        if job.schedule.is_none() {
            out.push(problem(
                format!("{key}.coordination"),
                "\"lease\" shares scheduled slots among replicas: the job needs a `schedule`",
            ));
        }
        if job.lease_ttl_secs < 2 {
            out.push(problem(
                format!("{key}.lease_ttl_secs"),
                "must be at least 2 (the holder renews its claim every third of it)",
            ));
        }
        if job.jitter_secs > 0 {
            out.push(problem(
                format!("{key}.coordination"),
                "\"lease\" names each slot by its scheduled time: set jitter_secs = 0 (the replicas race for the slot instead)",
            ));
        }
    }
    if job.timeout_secs == Some(0) {
        out.push(problem(
            format!("{key}.timeout_secs"),
            "must be above 0 (leave it out for no timeout)",
        ));
    }
    if let Err(e) = job.hooks.check() {
        out.push(problem(format!("{key}.hooks"), e));
    }
    if let Some(url) = &job.healthcheck_url
        && let Err(e) = crate::notify::check_url(url)
    {
        out.push(problem(format!("{key}.healthcheck_url"), e));
    }
    if let Err(e) = job.verify.check() {
        out.push(problem(format!("{key}.verify"), e));
    }
    if let Some(level) = job.compression_level {
        let range = match job.compression {
            Compression::Gzip => 0..=9,
            Compression::Zstd => 1..=22,
            Compression::None => 0..=0,
        };
        if !range.contains(&level) {
            out.push(problem(
                format!("{key}.compression_level"),
                format!(
                    "level {level} is out of range for {:?} ({}..={})",
                    job.compression,
                    range.start(),
                    range.end()
                ),
            ));
        }
    }
    for (source, spec) in &job.source_specs {
        let skey = format!("{key}.sources.{source}");
        check_name(&skey, "source", source, out);
        for (field, e) in spec.check() {
            out.push(problem(format!("{skey}.{field}"), e));
        }
        let incremental = matches!(
            spec,
            crate::source::SourceSpec::Directory(d) if d.incremental.is_some()
        );
        if incremental
            && policy.encryption.mode != EncryptionMode::None
            && policy.encryption.identity_file.is_none()
        {
            out.push(problem(
                format!("{skey}.incremental"),
                "needs encryption.identity_file: an incremental backup reads the base snapshot's file list, which is encrypted (restic and borg need their key for the same reason); set identity_file, or drop `incremental` to make every run a full",
            ));
        }
    }
}

fn encryption(policy: &Policy, out: &mut Vec<Problem>) {
    let enc = &policy.encryption;
    if enc.mode == EncryptionMode::None {
        return;
    }
    for (i, r) in enc.recipients.iter().enumerate() {
        if let Err(e) = crate::crypto::parse_recipient(r) {
            out.push(problem(
                format!("encryption.recipients[{i}]"),
                e.to_string(),
            ));
        }
    }
    if enc.recipients.is_empty() && enc.identity_file.is_none() {
        out.push(problem(
            "encryption",
            "snapshots are encrypted by default: set `recipients` (age public keys, see `backupd keygen`) or `identity_file`, or opt out with mode = \"none\"",
        ));
    }
    if enc.generate_identity && enc.identity_file.is_none() {
        out.push(problem(
            "encryption.generate_identity",
            "needs `identity_file` to say where to write the new key",
        ));
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_keeps_its_place_but_not_the_line() {
        let m = "TOML parse error at line 4, column 49\n  |\n4 | url = \"https://h/T0/secret-token\n  |                                                 ^\ninvalid basic string\n";
        let shown = without_source_lines(m);
        assert_eq!(
            shown,
            "TOML parse error at line 4, column 49: invalid basic string"
        );
    }

    #[test]
    fn names_are_safe_for_object_keys() {
        for ok in ["app", "a", "0db", "my-job_2"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "App",
            "-x",
            "_x",
            "a/b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
