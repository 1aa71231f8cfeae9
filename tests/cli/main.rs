//! Integration tests: the real `backupd` binary against real trees, SQLite databases and
//! local targets, plus the standard `age`, `gzip`, `zstd`, `tar` and `sqlite3` tools.
//! One test binary, so the crate links once.

mod browse;
mod cloud;
mod cloud_support;
mod daemon;
mod daemon_support;
mod databases;
mod deploy;
mod failures;
mod faults;
mod fleet;
mod hardening;
mod hostile;
mod immutable;
mod incremental;
mod kill9;
mod limits;
mod load;
mod notify;
mod old_format;
mod operator;
mod page;
mod pitr;
mod policy_errors;
mod replicas;
mod round_trip;
mod security;
mod support;
mod verification;
