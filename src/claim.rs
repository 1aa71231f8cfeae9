//! One run per scheduled slot among replicas of one instance (`coordination = "lease"`):
//! before a scheduled backup, each replica tries to create the slot's **claim** object on
//! the job's first target with create-if-absent; the one whose **nonce** is in it holds
//! the slot and runs it, the others **watch** it. No coordinator of our own: the object
//! store's conditional writes are the lock.
//!
//! The holder keeps the claim alive (**renews** it every third of the **TTL** with a
//! version-matched update: `If-Match` on its last ETag) and marks it finished at the end.
//! A watcher that sees the claim unchanged for a TTL on its own monotonic clock (the holder
//! died or hangs) **takes it over** with a version-matched update of what it saw, and runs
//! the slot itself; it gives up when the claim is finished or the next slot is due. The
//! holder counts its claim **valid** for half a TTL after sending its last successful
//! renewal — a watcher cannot take over before a whole TTL after seeing it — and a run
//! whose claim is no longer valid stops before committing ([`Validity`]).
//!
//! object_store retries a create that met a server error, so "already exists" may be our
//! own first attempt: a claim is always read back and judged by its nonce. A store that
//! checks and writes in two steps (s3s-fs) can let two racing writes both succeed; the
//! read-back after a short settle catches the one that was overwritten. `probe` proves a
//! target refuses a second create of one key, and an update with a stale ETag; coordination
//! is refused on one that does not. A `file://` target can create exclusively but not
//! update by version: there slots are claimed (replicas on one host or one shared
//! filesystem), never renewed or taken over.

use chrono::{DateTime, Utc};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
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
    /// How often the holder has renewed it (every renewal changes the object).
    #[serde(default)]
    pub renewals: u64,
    /// Set by the holder when its run ended (whatever the outcome): nobody takes it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The holder this claim was taken over from (it stopped renewing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over_from: Option<String>,
}

/// A claim this replica holds: what it wrote and the version to update.
#[derive(Debug, Clone)]
pub struct Held {
    pub key: ObjectPath,
    pub claim: Claim,
    version: UpdateVersion,
    /// When the write that won it was sent (monotonic): validity counts from here.
    sent: std::time::Instant,
}

/// What a claim attempt found.
#[derive(Debug)]
pub enum Outcome {
    Won(Box<Held>),
    Taken { holder: String },
}

pub fn key(instance: &str, job: &str, slot: DateTime<Utc>) -> ObjectPath {
    ObjectPath::from(format!(
        "{PREFIX}/{instance}/{job}/{}.json",
        slot.format("%Y-%m-%dT%H-%M-%SZ")
    ))
}

/// Why a claim could not be made or read, or why a target cannot coordinate.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("claiming slot {slot} of job {job} on target {target}: {put}")]
    Vanished {
        slot: DateTime<Utc>,
        job: String,
        target: String,
        /// What the create said, when it failed ("" when it succeeded).
        put: String,
    },
    #[error("reading the claim {key}: {source}")]
    Read {
        key: String,
        source: object_store::Error,
    },
    #[error("the claim {key} is not one: {why}")]
    NotAClaim { key: String, why: String },
    /// The probe's first create-if-absent write, or the update matching the current version,
    /// failed: the store cannot do what coordination needs.
    #[error("target {target}: {step} failed ({source}){hint}")]
    Write {
        target: String,
        step: &'static str,
        source: object_store::Error,
        hint: &'static str,
    },
    /// A conditional write the store should have refused went through.
    #[error(
        "target {target} accepted {what}: the server ignores {header}, so {risk}; coordination needs a store that honours conditional writes"
    )]
    Ignored {
        target: String,
        what: &'static str,
        header: &'static str,
        risk: &'static str,
    },
    #[error("target {target}: {what} failed with an unexpected error: {source}")]
    Unexpected {
        target: String,
        what: &'static str,
        source: object_store::Error,
    },
}

/// Tries to claim `slot` of `job` for this replica.
pub async fn claim(
    target: &Target,
    instance: &str,
    job: &str,
    slot: DateTime<Utc>,
) -> Result<Outcome, ClaimError> {
    let mine = new_claim(instance, job, slot, None);
    let key = key(instance, job, slot);
    let sent = std::time::Instant::now();
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
    let Some((theirs, version)) = read(target, &key).await? else {
        return Err(ClaimError::Vanished {
            slot,
            job: job.to_owned(),
            target: target.name.clone(),
            put: put.err().map(|e| e.to_string()).unwrap_or_default(),
        });
    };
    Ok(judge(key, mine, theirs, version, sent))
}

fn new_claim(
    instance: &str,
    job: &str,
    slot: DateTime<Utc>,
    taken_over_from: Option<String>,
) -> Claim {
    Claim {
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
        renewals: 0,
        finished_at: None,
        taken_over_from,
    }
}

fn judge(
    key: ObjectPath,
    mine: Claim,
    theirs: Claim,
    version: UpdateVersion,
    sent: std::time::Instant,
) -> Outcome {
    if theirs.nonce == mine.nonce {
        Outcome::Won(Box::new(Held {
            key,
            claim: mine,
            version,
            sent,
        }))
    } else {
        Outcome::Taken {
            holder: theirs.holder,
        }
    }
}

/// The claim at `key` and its version; `None` when there is none.
async fn read(
    target: &Target,
    key: &ObjectPath,
) -> Result<Option<(Claim, UpdateVersion)>, ClaimError> {
    let read_err = |source| ClaimError::Read {
        key: key.to_string(),
        source,
    };
    let got = match target.store.get(key).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    // A claim is a few hundred bytes; anything large is not one of ours.
    if got.meta.size > 64 * 1024 {
        return Err(ClaimError::NotAClaim {
            key: key.to_string(),
            why: format!("{} bytes", got.meta.size),
        });
    }
    let bytes = got.bytes().await.map_err(read_err)?;
    let claim: Claim = serde_json::from_slice(&bytes).map_err(|e| ClaimError::NotAClaim {
        key: key.to_string(),
        why: e.to_string(),
    })?;
    Ok(Some((claim, version)))
}

/// Whether `target` can renew and take over claims (a version-matched update).
pub fn renewable(target: &Target) -> bool {
    target.local_root.is_none()
}

/// Writes `claim` over the version `expected` at `key`; the new version on success.
async fn update(
    target: &Target,
    key: &ObjectPath,
    claim: &Claim,
    expected: &UpdateVersion,
) -> object_store::Result<UpdateVersion> {
    let body = serde_json::to_vec(claim).expect("a claim serializes");
    let opts = PutOptions {
        mode: PutMode::Update(expected.clone()),
        ..Default::default()
    };
    let put = target
        .store
        .put_opts(key, PutPayload::from(body), opts)
        .await?;
    Ok(UpdateVersion {
        e_tag: put.e_tag,
        version: put.version,
    })
}

/// Why watching a slot someone else holds ended.
#[derive(Debug)]
pub enum Watched {
    /// The holder stopped renewing for a TTL and this replica took the slot over.
    TookOver(Box<Held>),
    /// The holder finished it, the claim is gone, the next slot is due, or shutdown.
    Done(String),
}

/// Watches the slot `slot` another replica holds until it finishes, or takes it over when
/// its claim has not changed for `ttl` on this process's monotonic clock. Gives up at
/// `until` (the next slot's time) or on `cancel`.
pub async fn watch(
    target: &Target,
    instance: &str,
    job: &str,
    slot: DateTime<Utc>,
    ttl: std::time::Duration,
    until: DateTime<Utc>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Watched {
    let key = key(instance, job, slot);
    let poll = ttl / 4;
    // The version last seen and when (monotonic) it was first seen.
    let mut seen: Option<(UpdateVersion, std::time::Instant)> = None;
    loop {
        let left = (until - Utc::now()).to_std().unwrap_or_default();
        if left.is_zero() {
            return Watched::Done("the next slot is due".into());
        }
        tokio::select! {
            _ = cancel.cancelled() => return Watched::Done("shutting down".into()),
            _ = tokio::time::sleep(poll.min(left)) => {}
        }
        let (theirs, version) = match read(target, &key).await {
            Ok(Some(found)) => found,
            Ok(None) => return Watched::Done("the claim is gone".into()),
            Err(e) => {
                tracing::warn!(job, %slot, "watching the slot: {e}");
                continue;
            }
        };
        if theirs.finished_at.is_some() {
            return Watched::Done(format!("{} finished it", theirs.holder));
        }
        let since = match &seen {
            Some((v, at)) if v.e_tag == version.e_tag && v.version == version.version => *at,
            _ => {
                seen = Some((version, std::time::Instant::now()));
                continue;
            }
        };
        if since.elapsed() < ttl {
            continue;
        }
        let mine = new_claim(instance, job, slot, Some(theirs.holder.clone()));
        let sent = std::time::Instant::now();
        match update(target, &key, &mine, &version).await {
            Ok(_) => tokio::time::sleep(SETTLE).await,
            // Someone renewed or took it over first: watch the new version.
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                seen = None;
                continue;
            }
            // Ambiguous: the read-back decides.
            Err(e) => tracing::warn!(job, %slot, "taking over the slot: {e}"),
        }
        match read(target, &key).await {
            Ok(Some((now, version))) => match judge(key.clone(), mine, now, version, sent) {
                Outcome::Won(held) => {
                    tracing::warn!(
                        job, %slot,
                        "took over the slot: {} did not renew its claim for {} s",
                        theirs.holder,
                        ttl.as_secs()
                    );
                    return Watched::TookOver(held);
                }
                Outcome::Taken { .. } => seen = None,
            },
            Ok(None) => return Watched::Done("the claim is gone".into()),
            Err(e) => tracing::warn!(job, %slot, "watching the slot: {e}"),
        }
    }
}

/// Whether the claim a run holds is still good; checked right before the commit.
#[derive(Debug)]
pub struct Validity {
    until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Validity {
    /// `None`: valid for good (a claim that is never renewed, on a `file://` target).
    fn new(until: Option<std::time::Instant>) -> Self {
        Self {
            until: std::sync::Mutex::new(until),
        }
    }

    pub fn holds(&self) -> bool {
        self.until
            .lock()
            .expect("never poisoned")
            .is_none_or(|u| std::time::Instant::now() < u)
    }

    fn extend(&self, until: std::time::Instant) {
        *self.until.lock().expect("never poisoned") = Some(until);
    }

    fn end(&self) {
        *self.until.lock().expect("never poisoned") = Some(std::time::Instant::now());
    }
}

/// Keeps a held claim alive while its run goes on.
pub struct Keeper {
    pub validity: std::sync::Arc<Validity>,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<Held>>,
    target: Target,
    held: Option<Held>,
}

impl Keeper {
    /// Starts renewing `held` every third of `ttl` (when `target` can); cancels `run` as
    /// soon as the claim is lost or its validity lapses.
    pub fn start(
        target: &Target,
        held: Held,
        ttl: std::time::Duration,
        run: tokio_util::sync::CancellationToken,
    ) -> Self {
        let claimed = held.sent;
        let stop = tokio_util::sync::CancellationToken::new();
        if !renewable(target) {
            return Self {
                validity: std::sync::Arc::new(Validity::new(None)),
                stop,
                task: None,
                target: target.clone(),
                held: Some(held),
            };
        }
        let validity = std::sync::Arc::new(Validity::new(Some(claimed + ttl / 2)));
        let task = tokio::spawn(renew(
            target.clone(),
            held,
            ttl,
            run,
            stop.clone(),
            validity.clone(),
            claimed,
        ));
        Self {
            validity,
            stop,
            task: Some(task),
            target: target.clone(),
            held: None,
        }
    }

    /// Stops renewing and marks the claim finished, so nobody takes the slot over. (Only
    /// dropped, it just stops renewing: another replica may take the slot over.)
    pub async fn finish(mut self) {
        self.stop.cancel();
        let held = match self.task.take() {
            Some(task) => task.await.ok(),
            None => self.held.take(),
        };
        let Some(mut held) = held else { return };
        if !renewable(&self.target) {
            return;
        }
        held.claim.finished_at = Some(Utc::now());
        if let Err(e) = update(&self.target, &held.key, &held.claim, &held.version).await {
            tracing::debug!("marking the claim {} finished: {e}", held.key);
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn renew(
    target: Target,
    mut held: Held,
    ttl: std::time::Duration,
    run: tokio_util::sync::CancellationToken,
    stop: tokio_util::sync::CancellationToken,
    validity: std::sync::Arc<Validity>,
    claimed: std::time::Instant,
) -> Held {
    use tokio::time::Instant;
    let job = held.claim.job.clone();
    let slot = held.claim.slot;
    let mut valid_until = Instant::from_std(claimed + ttl / 2);
    let mut next = Instant::from_std(claimed + ttl / 3);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return held,
            _ = tokio::time::sleep_until(next.min(valid_until)) => {}
        }
        if Instant::now() >= valid_until {
            tracing::error!(
                job, %slot,
                "the slot's claim could not be renewed for {:.1} s: stopping the run before it commits (another replica may take it over)",
                (ttl / 2).as_secs_f64()
            );
            validity.end();
            run.cancel();
            return held;
        }
        let sent = Instant::now();
        let mut renewed = held.claim.clone();
        renewed.renewals += 1;
        match update(&target, &held.key, &renewed, &held.version).await {
            Ok(version) => {
                held.claim = renewed;
                held.version = version;
                valid_until = sent + ttl / 2;
                validity.extend(valid_until.into_std());
                next = sent + ttl / 3;
            }
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => {
                tracing::error!(
                    job, %slot,
                    "the slot's claim was taken over by another replica: stopping the run before it commits"
                );
                validity.end();
                run.cancel();
                return held;
            }
            Err(e) => {
                tracing::warn!(job, %slot, "renewing the slot's claim: {e} (retrying)");
                next = Instant::now() + ttl / 12;
            }
        }
    }
}

/// Proves `target` refuses a second create-if-absent write of one key and (where claims
/// are renewed) an update over a stale version; coordination is only as good as that.
/// Returns what the target supports, for `check` to say.
pub async fn probe(target: &Target) -> Result<&'static str, ClaimError> {
    let key = ObjectPath::from(format!("{PREFIX}/.probe-{:016x}", rand::random::<u64>()));
    let outcome = probe_key(target, &key).await;
    let _ = target.store.delete(&key).await;
    outcome
}

async fn probe_key(target: &Target, key: &ObjectPath) -> Result<&'static str, ClaimError> {
    let name = &target.name;
    let unexpected = |what, source| ClaimError::Unexpected {
        target: name.clone(),
        what,
        source,
    };
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let first = target
        .store
        .put_opts(key, PutPayload::from_static(b"1"), create())
        .await
        .map_err(|source| ClaimError::Write {
            target: name.clone(),
            step: "a create-if-absent write",
            source,
            hint: "",
        })?;
    match target
        .store
        .put_opts(key, PutPayload::from_static(b"2"), create())
        .await
    {
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {}
        Ok(_) => {
            return Err(ClaimError::Ignored {
                target: name.clone(),
                what: "a second create-if-absent write of the same key",
                header: "If-None-Match",
                risk: "two replicas could both run a slot",
            });
        }
        Err(e) => return Err(unexpected("the second create-if-absent write", e)),
    }
    if !renewable(target) {
        return Ok(
            "honours create-if-absent; a file target cannot update by version, so claims are not renewed and a replica that dies mid-run loses its slot (no takeover)",
        );
    }
    let current = UpdateVersion {
        e_tag: first.e_tag,
        version: first.version,
    };
    let update = |v: UpdateVersion, body: &'static [u8]| {
        target.store.put_opts(
            key,
            PutPayload::from_static(body),
            PutOptions {
                mode: PutMode::Update(v),
                ..Default::default()
            },
        )
    };
    let renewed = update(current.clone(), b"3")
        .await
        .map_err(|source| ClaimError::Write {
            target: name.clone(),
            step: "an update matching the current ETag",
            source,
            hint: ": claims could not be renewed; coordination needs a store that honours If-Match",
        })?;
    match update(current, b"4").await {
        Err(object_store::Error::Precondition { .. }) => {}
        Ok(_) => {
            return Err(ClaimError::Ignored {
                target: name.clone(),
                what: "an update over a stale ETag",
                header: "If-Match",
                risk: "a replica could take over a live claim",
            });
        }
        Err(e) => return Err(unexpected("an update over a stale ETag", e)),
    }
    let _ = renewed;
    Ok(
        "honours create-if-absent and If-Match, so claims are renewed and a replica that dies mid-run is taken over",
    )
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
