//! `backupd show-config`: the policy as backupd sees it — the file with every
//! `BACKUPD_*` environment override applied — after checking it loads, with URLs
//! redacted and anything that looks like a secret replaced.

use std::path::Path;
use std::process::ExitCode;

use figment::value::{Dict, Value};

use super::load_policy;

pub async fn run(config: &Path) -> anyhow::Result<ExitCode> {
    // Refuses an invalid policy with every problem, like every other command.
    let policy = load_policy(config)?;
    let merged = crate::policy::merged_values(config)?;
    let shown = redact(merged, "");
    let text = toml::to_string_pretty(&shown)?;
    println!(
        "# effective policy: {} plus BACKUPD_* environment overrides; secrets redacted",
        config.display()
    );
    let absolute = std::path::absolute(&policy.path).unwrap_or(policy.path.clone());
    println!(
        "# relative paths are taken from {}",
        absolute
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Keys whose values are secrets when they hold the value itself (`*_file` keys hold a
/// path, which is fine to show).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !k.ends_with("_file")
        && ["password", "secret", "token", "access_key", "private_key"]
            .iter()
            .any(|s| k.contains(s))
}

fn redact(v: Value, key: &str) -> Value {
    match v {
        Value::Dict(tag, dict) => Value::Dict(
            tag,
            dict.into_iter()
                .map(|(k, v)| {
                    let v = redact(v, &k);
                    (k, v)
                })
                .collect::<Dict>(),
        ),
        Value::Array(tag, items) => {
            Value::Array(tag, items.into_iter().map(|v| redact(v, key)).collect())
        }
        Value::String(tag, _) if is_secret_key(key) => Value::String(tag, "<redacted>".into()),
        // Webhook and ping URLs carry their token in the path: scheme and host only.
        Value::String(tag, s) if s.starts_with("http://") || s.starts_with("https://") => {
            Value::String(tag, crate::notify::shown(&s))
        }
        Value::String(tag, s) if s.contains("://") => Value::String(tag, crate::secret::redact(&s)),
        other => other,
    }
}
