//! The daemon's watch over WAL archiving: every minute each base backup source's server
//! is asked how its archiving goes (`pg_stat_archiver`, `source::pgbase::archiver`), and
//! the answer lands in the job's status and metrics. A failing `archive_command` fills
//! `pg_wal` until PostgreSQL stops: its failures and backlog are what the alert rules
//! watch, long before that.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::status::Shared;
use crate::policy::Policy;

/// How often each server is asked: one cheap query a minute.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(60);

/// One base backup source's archiving, as last asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WalStatus {
    pub checked_at: chrono::DateTime<Utc>,
    /// Why the server could not be asked (the counters are then zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub archiver: crate::source::pgbase::Archiver,
}

/// Runs until the policy channel closes, following reloads.
pub async fn run(mut policy: tokio::sync::watch::Receiver<Arc<Policy>>, shared: Arc<Shared>) {
    loop {
        let current = policy.borrow().clone();
        for (job, j) in &current.jobs {
            for (name, p) in j.base_backup_sources() {
                let p = p.clone();
                let asked =
                    tokio::task::spawn_blocking(move || crate::source::pgbase::archiver(&p))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                let status = match asked {
                    Ok(archiver) => WalStatus {
                        checked_at: Utc::now(),
                        error: None,
                        archiver,
                    },
                    Err(e) => {
                        tracing::warn!(job, source = %name, "cannot read the server's archiver statistics: {e}");
                        WalStatus {
                            checked_at: Utc::now(),
                            error: Some(e),
                            archiver: Default::default(),
                        }
                    }
                };
                shared.job(job, |s| {
                    s.wal.insert(name.clone(), status);
                });
            }
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
            changed = policy.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
