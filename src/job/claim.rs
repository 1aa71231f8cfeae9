//! One run per scheduled slot among replicas of one instance (`coordination = "lease"`):
//! before a scheduled backup, each replica tries to create the slot's **claim** object on
//! the job's first target with create-if-absent; the one whose **nonce** is in it runs the
//! slot, the others skip it. No coordinator of our own: the object store's conditional
//! write is the lock.
//!
//! object_store retries a create that met a server error, so "already exists" may be our
//! own first attempt: the claim is always read back and judged by its nonce. A store that
//! checks existence and writes in two steps (s3s-fs) can let two racing creates both
//! succeed; the read-back after a short settle catches the one that was overwritten.
//! `probe` proves a target refuses a second create of one key at all; coordination is
//! refused on one that does not.

use chrono::{DateTime, Utc};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::target::Target;

/// Under the target's root, beside the jobs; not a valid job name, so never listed as one.
const PREFIX: &str = ".backupd-claims";
/// How long a winner waits before reading its claim back (see the module comment).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub instance: String,
    pub job: String,
    pub slot: DateTime<Utc>,
    pub nonce: String,
    /// Host name and pid of the replica, for messages.
    pub holder: String,
    pub claimed_at: DateTime<Utc>,
}

/// What a claim attempt found.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Won,
    Taken { holder: String },
}

pub fn key(instance: &str, job: &str, slot: DateTime<Utc>) -> ObjectPath {
    ObjectPath::from(format!(
        "{PREFIX}/{instance}/{job}/{}.json",
        slot.format("%Y-%m-%dT%H-%M-%SZ")
    ))
}

/// Tries to claim `slot` of `job` for this replica.
pub async fn claim(
    target: &Target,
    instance: &str,
    job: &str,
    slot: DateTime<Utc>,
) -> Result<Outcome, String> {
    let mine = Claim {
        instance: instance.into(),
        job: job.into(),
        slot,
        nonce: format!("{:032x}", rand::random::<u128>()),
        holder: format!(
            "{} pid {}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id()
        ),
        claimed_at: Utc::now(),
    };
    let key = key(instance, job, slot);
    let body = serde_json::to_vec(&mine).expect("a claim serializes");
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let put = target
        .store
        .put_opts(&key, PutPayload::from(body), opts)
        .await;
    match &put {
        Ok(_) => tokio::time::sleep(SETTLE).await,
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {}
        // Ambiguous (our create may have landed before the error): the read-back decides.
        Err(_) => {}
    }
    let read = match target.store.get(&key).await {
        Ok(got) => got.bytes().await.map_err(|e| e.to_string())?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(format!(
                "claiming slot {slot} of job {job} on target {}: {}",
                target.name,
                put.err().map(|e| e.to_string()).unwrap_or_default()
            ));
        }
        Err(e) => return Err(format!("reading the claim {key}: {e}")),
    };
    let theirs: Claim =
        serde_json::from_slice(&read).map_err(|e| format!("the claim {key} is not one: {e}"))?;
    Ok(if theirs.nonce == mine.nonce {
        Outcome::Won
    } else {
        Outcome::Taken {
            holder: theirs.holder,
        }
    })
}

/// Proves `target` refuses a second create-if-absent write of one key; coordination is
/// only as good as that.
pub async fn probe(target: &Target) -> Result<(), String> {
    let key = ObjectPath::from(format!("{PREFIX}/.probe-{:016x}", rand::random::<u64>()));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let first = target
        .store
        .put_opts(&key, PutPayload::from_static(b"1"), create())
        .await;
    let second = target
        .store
        .put_opts(&key, PutPayload::from_static(b"2"), create())
        .await;
    let _ = target.store.delete(&key).await;
    match (first, second) {
        (Err(e), _) => Err(format!(
            "target {}: a create-if-absent write failed: {e}",
            target.name
        )),
        (
            Ok(_),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ),
        ) => Ok(()),
        (Ok(_), Ok(_)) => Err(format!(
            "target {} accepted a second create-if-absent write of the same key: the server ignores If-None-Match, so two replicas could both run a slot; coordination needs a store that honours conditional writes",
            target.name
        )),
        (Ok(_), Err(e)) => Err(format!(
            "target {}: the second create-if-absent write failed with an unexpected error: {e}",
            target.name
        )),
    }
}

/// Claims are kept this long after their slot: long past any run of it, so a live claim is
/// never removed.
const KEEP_CLAIMS_DAYS: i64 = 7;

/// Removes `instance`'s claims of `job` whose slot is over a week old (run by prune).
pub async fn expire(
    target: &Target,
    instance: &str,
    job: &str,
    now: DateTime<Utc>,
) -> Result<(), object_store::Error> {
    use futures::TryStreamExt;
    let prefix = ObjectPath::from(format!("{PREFIX}/{instance}/{job}"));
    let keys: Vec<ObjectPath> = target
        .store
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let limit = now - chrono::Duration::days(KEEP_CLAIMS_DAYS);
    for key in keys {
        let slot = key
            .filename()
            .and_then(|f| f.strip_suffix(".json"))
            .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H-%M-%SZ").ok())
            .map(|t| t.and_utc());
        if slot.is_some_and(|s| s < limit) {
            match target.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
