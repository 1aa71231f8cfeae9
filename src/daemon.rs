//! `backupd run`: the long-running daemon.

mod metrics;
mod plan;
mod scheduler;
mod status;
