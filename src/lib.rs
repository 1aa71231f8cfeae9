//! backupd: scheduled, encrypted, verified backups of databases and directories into
//! object storage. See `BACKUP_POLICY.md` for the policy and the snapshot format.
//!
//! # Layout
//! - [`cli`]: the command line, one file per command, and the exit-status contract.
//! - [`policy`]: the typed TOML policy, its loading and pure validation.
//! - [`crypto`]: age recipients and identities, key generation, permission checks.
//! - [`source`]: what gets backed up, one kind per file, dump and restore together.
//! - [`pipeline`]: the bounded streaming encode (hash, compress, encrypt, tee) and decode.
//! - [`target`]: object stores from URLs, redaction, the reachability probe.
//! - [`snapshot`]: snapshot ids, object keys, the versioned manifest, commit and listing.
//! - [`job`]: one run of one job, from sources to committed manifest.
//! - [`verify`]: verification by test-restore and its stored results.
//! - [`retention`]: the pure keep/delete planner (restic `forget` semantics).
//! - [`prune`]: applying retention to a target, and sweeping crash leftovers.

pub mod claim;
pub mod cli;
pub mod crypto;
pub mod daemon;
pub mod error;
pub mod job;
pub mod notify;
pub mod pipeline;
pub mod policy;
pub mod progress;
pub mod prune;
pub mod retention;
pub mod schedule;
pub mod secret;
pub mod snapshot;
pub mod source;
pub mod spool;
pub mod state;
pub mod target;
pub mod verify;
