//! Secrets and where they must not leak: password files (read only when nobody else can
//! read them) and URLs (a **secret in a URL** is refused; **redacted** URLs are the only
//! ones that reach logs, status and messages). A leaf: sources, targets and the policy's
//! validation all use it, and it uses none of them.

use std::path::{Path, PathBuf};

use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "password file is readable by group or others (mode {mode:04o}); run `chmod 600 {}`",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
}

/// Reads a password file (first line), refusing one that group or others can read.
pub fn read_password_file(path: &Path) -> Result<String, SecretError> {
    use std::os::unix::fs::MetadataExt;
    let io = |source| SecretError::Io {
        path: path.into(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            path: path.into(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Why a URL must not be used, if it carries a secret: a password in its user info or a
/// query parameter that names one (`?password=`, `sslpassword`, `token`, …). URLs end up in
/// logs, `/status`, error messages and child argv, which every local user can read.
pub fn secret_in_url(url: &url::Url) -> Option<String> {
    if url.password().is_some() {
        return Some("contains a password: remove it and set `password_file` (URLs end up in logs and process lists)".into());
    }
    let secret_key = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.contains("pass")
            || k.contains("secret")
            || k.contains("token")
            || k == "pwd"
            || k == "auth"
    };
    url.query_pairs().find(|(k, _)| secret_key(k)).map(|(k, _)| {
        format!(
            "carries a secret in its query (`{k}=`): remove it and set `password_file` (URLs end up in logs and process lists)"
        )
    })
}

/// The URL without userinfo and query string, which is where credentials hide.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            if u.query().is_some() {
                u.set_query(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}
