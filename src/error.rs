//! The error policy, and the two words the edge needs (**usage error**, **exit status**).
//!
//! - Library modules return **typed errors** (`thiserror` enums), one per module boundary:
//!   `PolicyError`, `SourceError` (with `job::SourceFailure` around it), `TargetError`,
//!   `ProbeError`, `SnapshotError`, `ManifestError`, `SelectError`, `KeyError`,
//!   `SecretError`, `SealError`, `PipelineError`, `UploadError`, `SpoolError`, `ClaimError`,
//!   `HookError`, `VerifyError`, `RestoreError`, `LockError`. Each message says what went
//!   wrong, where (file, key, target, snapshot) and how to fix it, without secrets (URLs are
//!   redacted by `secret`).
//! - A caller that crosses a boundary adds what only it knows (the job, the source, the
//!   target) by wrapping, never by re-wording the inner message.
//! - `anyhow` is for the edge only — `cli` and `daemon` — which decide exit statuses:
//!   [`UsageError`] (a mistake in how backupd was called or configured) exits
//!   [`EXIT_USAGE`], every other failure [`EXIT_FAILED`].
//! - A check of one value (a URL, a schedule, a duration, a source's settings) fails with
//!   [`Invalid`]: the caller knows it is a mistake in the policy or the arguments, and the
//!   message says what to write instead. Validation collects these into one report.
//! - No library signature returns `Result<_, String>`: a string says nothing about what
//!   went wrong to the code that has to decide (retry, exit 2, skip, report).

/// A mistake in how backupd was called: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A value that cannot be used (in the policy or an argument); the message says what to
/// write instead. Policy validation adds the key in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid(message.to_owned())
    }
}

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

impl From<Invalid> for String {
    fn from(e: Invalid) -> Self {
        e.0
    }
}

/// A bad value given on the command line or in the policy is a usage error at the edge.
impl From<Invalid> for UsageError {
    fn from(e: Invalid) -> Self {
        UsageError(e.0)
    }
}
