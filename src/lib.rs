//! backupd: scheduled, encrypted, verified backups of databases and directories into
//! object storage. See `BACKUP_POLICY.md` for the policy and the snapshot format.
//!
//! # Layout
//! In the order data flows: the policy says what to do, a job runs it, sources produce
//! streams, the pipeline encodes them, targets store them, snapshots commit them.
//!
//! - [`policy`]: the typed TOML policy, its loading and validation; it composes the
//!   components' own settings and no component imports it.
//! - [`schedule`]: cron expressions in a time zone (croner, DST-correct).
//! - [`job`]: one run of one job, from sources to committed manifest, with its hooks and lock;
//!   the level (full or incremental) of each directory source, from what the targets hold.
//! - [`source`]: what gets backed up, one kind per file (spec, probe, dump, restore).
//! - [`pipeline`]: the bounded streaming encode (hash, compress, encrypt, tee) and decode.
//! - [`crypto`]: age recipients and identities, key files and their permission checks.
//! - [`target`]: object stores from URLs, streaming reads, the upload journal, the probe,
//!   the listing cache, upload limits.
//! - [`snapshot`]: the versioned format: ids, keys, names, the manifest, its seal, commit,
//!   listing and the one rule for selecting snapshots.
//! - [`verify`]: verification by test-restore and its stored records.
//! - [`wal`]: PostgreSQL's WAL archive beside a job's base backups (push, fetch, listing,
//!   gaps, retention), for point-in-time recovery.
//! - [`restore`]: finding a snapshot, choosing its sources, restoring each into a
//!   directory or a server; an incremental directory object with its chain.
//! - [`browse`]: a directory source's index, `ls`/`find` over it, and `cat` of one file.
//! - [`retention`]: the pure keep/delete planner (restic `forget` semantics; the bases of
//!   kept snapshots are kept).
//! - [`prune`]: applying retention to a target, and sweeping crash leftovers.
//! - [`recover`]: bringing back snapshots deleted in a versioned S3 bucket.
//! - [`spool`]: local copies for a target that is down, delivered when it is back.
//! - [`claim`]: one run per scheduled slot among replicas, through the bucket.
//! - [`secret`]: password files and URLs that must not leak (a leaf).
//! - [`units`]: durations as the policy writes them (a leaf).
//! - [`state`]: the host's own records (last runs, private directories).
//! - [`notify`]: notifications in each receiver's format (webhooks, chat, ntfy, mail) and
//!   healthcheck pings.
//! - [`progress`]: progress bars on a terminal.
//! - [`daemon`]: `backupd run` — scheduler, listener (status page, metrics), signals.
//! - [`cli`]: the command line, one file per command.
//! - [`error`]: the error policy and the exit-status contract.

pub mod browse;
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
pub mod recover;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod secret;
pub mod snapshot;
pub mod source;
pub mod spool;
pub mod state;
pub mod target;
pub mod units;
pub mod verify;
pub mod wal;
