//! Verification records, part of the format: the **record** of one verification of one
//! snapshot on one target (each source's **checks** and what they found), stored beside
//! the manifest as `<job>/<id>/verify/<utc-time>.json`, never overwritten; and reading
//! back the newest one that is really this snapshot's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::target::Target;

/// One named check and what it found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok: false,
            detail: detail.into(),
        }
    }

    pub fn compare(name: &str, expected: u64, actual: u64) -> Self {
        if expected == actual {
            Self::pass(name, format!("{actual}"))
        } else {
            Self::fail(
                name,
                format!("manifest says {expected}, the restore has {actual}"),
            )
        }
    }
}

/// The result of verifying one snapshot on one target, as stored in `verify/…json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub format: u32,
    pub job: String,
    pub snapshot: String,
    pub target: String,
    pub host: String,
    pub backupd_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    /// Whether the manifest's seal is trusted (`signing`); absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticity: Option<Check>,
    pub sources: BTreeMap<String, SourceResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceResult {
    pub ok: bool,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl VerifyRecord {
    /// One line per failed check, naming job, snapshot, source and check.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = self.authenticity.as_ref().filter(|c| !c.ok) {
            out.push(format!(
                "{}/{} on {}: manifest: {}",
                self.job, self.snapshot, self.target, c.detail
            ));
        }
        for (source, r) in &self.sources {
            for c in r.checks.iter().filter(|c| !c.ok) {
                out.push(format!(
                    "{}/{} on {}: source {source}: check {:?} failed: {}",
                    self.job, self.snapshot, self.target, c.name, c.detail
                ));
            }
            if let Some(e) = &r.error {
                out.push(format!(
                    "{}/{} on {}: source {source}: {e}",
                    self.job, self.snapshot, self.target
                ));
            }
        }
        out
    }
}

pub fn record_prefix(job: &str, id: &str) -> ObjectPath {
    ObjectPath::from(format!("{job}/{id}/verify"))
}

/// The newest verification record of a snapshot on a target, if any.
pub async fn latest_record(target: &Target, job: &str, id: &str) -> Option<VerifyRecord> {
    let keys: Vec<ObjectPath> = target
        .store
        .list(Some(&record_prefix(job, id)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .ok()?;
    newest_of(keys, job, id, |key| async move {
        match target.get_small(&key, MAX_RECORD_BYTES).await {
            Ok(crate::target::Small::Found(bytes)) => Some(bytes),
            _ => None,
        }
    })
    .await
}

/// Of the record objects `keys` of snapshot `job/id`, the newest that `read` can read and
/// that is really this snapshot's.
pub(crate) async fn newest_of<F, Fut>(
    keys: Vec<ObjectPath>,
    job: &str,
    id: &str,
    mut read: F,
) -> Option<VerifyRecord>
where
    F: FnMut(ObjectPath) -> Fut,
    Fut: std::future::Future<Output = Option<bytes::Bytes>>,
{
    // Records are named by the time they were written; a name that is no time, or lies in
    // the future, is someone else's (a forged "9999-…" must not win by its name).
    let latest_allowed = Utc::now() + chrono::Duration::minutes(10);
    let mut named: Vec<(DateTime<Utc>, ObjectPath)> = keys
        .into_iter()
        .filter_map(|k| {
            let stamp = k.filename()?.strip_suffix(".json")?;
            let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H-%M-%S%.3fZ").ok()?;
            Some((t.and_utc(), k))
        })
        .filter(|(t, _)| *t <= latest_allowed)
        .collect();
    named.sort_by_key(|n| std::cmp::Reverse(n.0));
    for (_, key) in named {
        let Some(bytes) = read(key.clone()).await else {
            continue;
        };
        match serde_json::from_slice::<VerifyRecord>(&bytes) {
            // A record counts only for the snapshot it lies beside.
            Ok(r) if r.job == job && r.snapshot == id => return Some(r),
            _ => {
                tracing::warn!(key = %key, "ignored a verification record that is not this snapshot's or does not parse")
            }
        }
    }
    None
}

/// A record lists each check of each source; far below this.
pub(crate) const MAX_RECORD_BYTES: u64 = 4 << 20;

/// Stores `record` beside its snapshot, named by when its verification started.
pub async fn store(target: &Target, record: &VerifyRecord) -> Result<(), object_store::Error> {
    let key = ObjectPath::from(format!(
        "{}/{}.json",
        record_prefix(&record.job, &record.snapshot),
        record.started_at.format("%Y-%m-%dT%H-%M-%S%.3fZ")
    ));
    let body = serde_json::to_vec_pretty(record).expect("record serializes");
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    target
        .store
        .put_opts(&key, PutPayload::from(body), opts)
        .await
        .map(|_| ())
}
