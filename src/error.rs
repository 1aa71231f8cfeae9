//! The error policy, and the two words the edge needs (**usage error**, **exit status**).
//!
//! - Library modules return **typed errors** (`thiserror` enums), one per module boundary:
//!   `PolicyError`, `SourceError`, `TargetError`, `SnapshotError`, `KeyError`,
//!   `SecretError`, `SealError`, `PipelineError`, `LockError`. Each message says what went
//!   wrong, where (file, key, target, snapshot) and how to fix it, without secrets (URLs are
//!   redacted by `secret`).
//! - A caller that crosses a boundary adds what only it knows (the job, the source, the
//!   target) by wrapping, never by re-wording the inner message.
//! - `anyhow` is for the edge only — `cli` and `daemon` — which decide exit statuses:
//!   [`UsageError`] (a mistake in how backupd was called or configured) exits
//!   [`EXIT_USAGE`], every other failure [`EXIT_FAILED`].
//! - Some internal helpers still return `Result<_, String>` (messages meant for one line of
//!   a report); new library signatures use a typed error.

/// A mistake in how backupd was called: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
