//! Keys: age recipients and identities (parsing, reading identity files while refusing ones
//! others can read, generating new ones, deciding the recipients a backup encrypts to), and
//! the Ed25519 signing key that seals manifests (same file rules).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;

/// Whether and to whom snapshots are encrypted.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionPolicy {
    #[serde(default)]
    pub mode: EncryptionMode,
    /// age X25519 public keys (`age1…`); backing up needs no secret.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// age identity (secret key) file; needed by restore and verify only, and by backup
    /// when `recipients` is empty (its public key is then the recipient).
    #[serde(default)]
    pub identity_file: Option<std::path::PathBuf>,
    /// Create `identity_file` (mode 0600) on first use if it does not exist.
    #[serde(default)]
    pub generate_identity: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionMode {
    #[default]
    Age,
    /// Plaintext snapshots: an explicit opt-out, warned about on every run.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{0:?} is not an age X25519 recipient (expected \"age1…\", as printed by `backupd keygen` or `age-keygen`)"
    )]
    BadRecipient(String),
    #[error("identity file {path} not found: pass --identity FILE or set encryption.identity_file")]
    IdentityMissing { path: PathBuf },
    #[error(
        "identity file {path} is readable by group or others (mode {mode:04o}); a secret key must be private: run `chmod 600 {path}`"
    )]
    IdentityExposed { path: PathBuf, mode: u32 },
    #[error("cannot read identity file {path}: {reason}")]
    IdentityUnreadable { path: PathBuf, reason: String },
    #[error("{path} already exists; refusing to overwrite a key (choose another --output)")]
    Exists { path: PathBuf },
    #[error("cannot write identity file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no identity configured: pass --identity FILE or set encryption.identity_file in the policy"
    )]
    NoIdentity,
}

pub type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, KeyError> {
    s.trim()
        .parse()
        .map_err(|_| KeyError::BadRecipient(s.to_string()))
}

/// Reads the identities in `path`, after checking that only its owner can read it.
pub fn load_identities(path: &Path) -> Result<Identities, KeyError> {
    let text = read_private(path)?;
    let unreadable = |reason: String| KeyError::IdentityUnreadable {
        path: path.into(),
        reason,
    };
    let ids = age::IdentityFile::from_buffer(text.as_bytes())
        .map_err(|e| unreadable(e.to_string()))?
        .into_identities()
        .map_err(|e| unreadable(e.to_string()))?;
    if ids.is_empty() {
        return Err(unreadable("it holds no age identity".into()));
    }
    Ok(ids)
}

/// Public keys matching the X25519 identities in `path` (same permission check).
pub fn identity_recipients(path: &Path) -> Result<Vec<age::x25519::Recipient>, KeyError> {
    let recipients: Vec<_> = read_private(path)?
        .lines()
        .filter_map(|l| l.trim().parse::<age::x25519::Identity>().ok())
        .map(|id| id.to_public())
        .collect();
    if recipients.is_empty() {
        return Err(KeyError::IdentityUnreadable {
            path: path.into(),
            reason: "it holds no age X25519 identity (AGE-SECRET-KEY-1…)".into(),
        });
    }
    Ok(recipients)
}

/// The file's text, after checking that only its owner can read it.
pub(crate) fn read_private(path: &Path) -> Result<String, KeyError> {
    let unreadable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => KeyError::IdentityMissing { path: path.into() },
        _ => KeyError::IdentityUnreadable {
            path: path.into(),
            reason: e.to_string(),
        },
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::IdentityExposed {
            path: path.into(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(unreadable)
}

/// Writes a new X25519 identity to `path` (mode 0600, never overwriting) and returns its
/// public key.
pub fn generate_identity(path: &Path) -> Result<age::x25519::Recipient, KeyError> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let body = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        identity.to_string().expose_secret()
    );
    write_new_private(path, &body)?;
    Ok(recipient)
}

/// Creates `path` with `body`, mode 0600, never over an existing file.
pub(crate) fn write_new_private(path: &Path, body: &str) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.into() },
            _ => write_err(e),
        })?;
    file.write_all(body.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(write_err)
}

/// The recipients a backup encrypts to, or `None` for the plaintext opt-out. With no
/// configured recipients the identity file's public key is used, created first when the
/// policy asks for that.
pub fn backup_recipients(
    enc: &EncryptionPolicy,
) -> Result<Option<Vec<age::x25519::Recipient>>, KeyError> {
    if enc.mode == EncryptionMode::None {
        return Ok(None);
    }
    let mut out = enc
        .recipients
        .iter()
        .map(|r| parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        let path = enc.identity_file.as_deref().ok_or(KeyError::NoIdentity)?;
        if enc.generate_identity && !path.exists() {
            let r = generate_identity(path)?;
            tracing::warn!(
                path = %path.display(),
                recipient = %r,
                "generated a new age identity because encryption.generate_identity is set; \
                 keep a copy of this file somewhere safe: without it no snapshot can be restored"
            );
        }
        out = identity_recipients(path)?;
    }
    Ok(Some(out))
}

/// The identities restore and verify decrypt with: `--identity`, else the policy's.
pub fn restore_identities(
    flag: Option<&Path>,
    enc: &EncryptionPolicy,
) -> Result<Identities, KeyError> {
    let path = flag
        .or(enc.identity_file.as_deref())
        .ok_or(KeyError::NoIdentity)?;
    load_identities(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_identity_is_private_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/id.txt");
        let r = generate_identity(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(identity_recipients(&path).unwrap(), vec![r]);
        assert!(matches!(
            generate_identity(&path),
            Err(KeyError::Exists { .. })
        ));
    }

    #[test]
    fn group_or_world_readable_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.txt");
        generate_identity(&path).unwrap();
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load_identities(&path).err().expect("must refuse");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn bad_recipient_is_named() {
        let err = parse_recipient("age1nope").unwrap_err().to_string();
        assert!(err.contains("age1nope"), "{err}");
    }
}
