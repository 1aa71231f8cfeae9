//! Snapshot format v1: snapshot ids, object keys, the versioned manifest, the commit
//! (manifest written last, create-if-absent) and listing committed snapshots.
//!
//! A snapshot exists on a target exactly when its `manifest.json` does; objects without a
//! manifest are leftovers of a failed or killed run and are never listed or restored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

pub mod listing;
pub mod maintenance;
pub mod record;
pub mod seal;

use crate::target::Target;

/// The manifest format this build writes and the newest it can read.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// A manifest of 10,000 databases is about 10 MiB; anything larger is not one of ours.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// `YYYY-MM-DDTHH-MM-SS.mmmZ-xxxxxx`: sorts by time, is safe in every store, and the
/// random suffix keeps two hosts starting in the same millisecond apart.
pub fn new_id(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:06x}",
        now.format("%Y-%m-%dT%H-%M-%S%.3fZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}

pub fn object_key(job: &str, id: &str, file: &str) -> ObjectPath {
    ObjectPath::from(format!("{job}/{id}/{file}"))
}

pub fn manifest_key(job: &str, id: &str) -> ObjectPath {
    object_key(job, id, MANIFEST_FILE)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// Object-name suffix, so a stored object says how to decode it.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::None => "",
        }
    }

    pub fn default_level(self) -> i32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
            Compression::None => 0,
        }
    }
}

/// Job, source and target names become parts of object keys, so they are kept to
/// `[a-z0-9][a-z0-9_-]*`, at most 64 characters.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 64
}

/// An instance name is printed and compared, never a path; host names fit.
pub fn is_valid_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A snapshot id as [`new_id`] makes them (`2026-12-03T14-33-16.654Z-88fda5`): a base
/// named in a manifest must look like one.
pub fn is_valid_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

/// The commit record of one snapshot; its presence on a target means "complete".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub job: String,
    pub snapshot: String,
    pub host: String,
    /// The instance that made it (`daemon.instance`); absent in manifests written before
    /// instances existed, which count as their `host` (see [`Manifest::instance`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub backupd_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The scheduled fire time the run belonged to, for daemon runs of a scheduled job
    /// (the name of its claim with `coordination = "lease"`); absent for ad hoc runs and
    /// in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub sources: BTreeMap<String, SourceEntry>,
    /// `sha256:<hex>` of the manifest's canonical JSON without `digest` and `signature`
    /// (see `seal`); absent in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The committing host's Ed25519 signature over `digest`, with `[signing]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<seal::Signature>,
    /// What reading the manifest found about its seal; never stored.
    #[serde(skip)]
    pub seal: seal::Seal,
}

/// One source's object in a snapshot and everything needed to check it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceEntry {
    pub kind: String,
    /// The policy source this object belongs to, when one source made several objects
    /// (a server's databases): `restore --only GROUP` selects them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Object name within the snapshot, e.g. `docs.tar.gz.age`.
    pub object: String,
    pub compression: Compression,
    pub compression_level: i32,
    pub encryption: Encryption,
    /// The bytes as stored (after compression and encryption).
    pub stored: Digest,
    /// The bytes the source produced (a tar stream, a SQLite file).
    pub plain: Digest,
    /// What a test-restore compares against, by kind.
    pub stats: SourceStats,
    /// Things the operator should know, e.g. a file that changed while being read.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// A directory source's index (every path with its offset and sha256), a second
    /// object encoded like the first; absent for other kinds and in older snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexObject>,
    /// An incremental directory object: the snapshot whose same-named source it builds on
    /// (the full for a differential, the previous snapshot in an incremental chain).
    /// Absent for a full, and in snapshots written before incrementals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// 0 for a full (absent); the base's level + 1 otherwise. Restore reads the objects of
    /// levels 0..=level of the chain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub level: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SourceEntry {
    /// Whether this object alone restores its source (not an incremental).
    pub fn is_full(&self) -> bool {
        self.base.is_none()
    }
}

/// The index object of a directory source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexObject {
    /// Object name within the snapshot, e.g. `docs.index.json.gz.age`.
    pub object: String,
    pub stored: Digest,
    pub plain: Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encryption {
    Age { recipients: Vec<String> },
    None,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Digest {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceStats {
    Tree {
        files: u64,
        dirs: u64,
        symlinks: u64,
        file_bytes: u64,
        skipped: u64,
    },
    Sqlite {
        file_name: String,
        sqlite_version: String,
        page_count: u64,
        tables: BTreeMap<String, u64>,
    },
    /// A PostgreSQL or MySQL/MariaDB dump.
    Database {
        /// `postgres` or `mysql`.
        engine: String,
        database: String,
        server_version: String,
        tool_version: String,
        /// `exact` or `estimate`: how `tables` was counted.
        row_counts: String,
        /// Rows per table, counted in the same snapshot the dump was taken from.
        tables: BTreeMap<String, u64>,
    },
    Redis {
        server_version: String,
        /// Keys per logical database (`db0`, …) from INFO keyspace at dump time.
        keys: BTreeMap<String, u64>,
    },
    /// A PostgreSQL base backup: the cluster's data directory as a tar, consistent with
    /// the archived WAL from `start_lsn` to `stop_lsn` (`crate::wal`).
    Basebackup {
        server_version: String,
        tool_version: String,
        /// The cluster's identity (empty when the role may not read it).
        system_identifier: String,
        /// The database the source URL names: the replay's checks run there.
        database: String,
        timeline: u32,
        start_lsn: String,
        stop_lsn: String,
        /// The first WAL file the backup needs: retention keeps the archive from here.
        start_wal: String,
        wal_segment_bytes: u64,
    },
}

impl SourceStats {
    /// One line for reports: what the source held.
    pub fn summary(&self) -> String {
        match self {
            SourceStats::Tree {
                files,
                dirs,
                symlinks,
                ..
            } => format!("{files} files, {dirs} dirs, {symlinks} symlinks"),
            SourceStats::Sqlite { tables, .. } | SourceStats::Database { tables, .. } => format!(
                "{} tables, {} rows",
                tables.len(),
                tables.values().sum::<u64>()
            ),
            SourceStats::Redis { keys, .. } => format!("{} keys", keys.values().sum::<u64>()),
            SourceStats::Basebackup {
                timeline,
                start_lsn,
                stop_lsn,
                ..
            } => format!("base backup, timeline {timeline}, WAL {start_lsn} to {stop_lsn}"),
        }
    }
}

#[cfg(test)]
impl SourceStats {
    /// Stats of an empty tree, for tests that need some stats.
    pub(crate) fn empty_tree() -> Self {
        SourceStats::Tree {
            files: 0,
            dirs: 0,
            symlinks: 0,
            file_bytes: 0,
            skipped: 0,
        }
    }
}

impl Manifest {
    /// The instance that made the snapshot: `instance`, or `host` for older manifests.
    pub fn instance(&self) -> &str {
        self.instance.as_deref().unwrap_or(&self.host)
    }

    pub fn stored_bytes(&self) -> u64 {
        self.sources.values().map(|s| s.stored.bytes).sum()
    }

    pub fn plain_bytes(&self) -> u64 {
        self.sources.values().map(|s| s.plain.bytes).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {job}/{id} already has a manifest on target {target}; refusing to overwrite")]
    AlreadyCommitted {
        job: String,
        id: String,
        target: String,
    },
    /// The store's error, already explained (`target::explain`): what to fix first.
    #[error("target {target}: {message}")]
    Store { target: String, message: String },
    /// Deleting is not allowed here: `write_only = true`, or the store answered 403.
    #[error(
        "target {target}: not permitted to delete (write-only credentials): run `backupd prune` from a host with delete rights"
    )]
    NotPermitted { target: String },
    #[error(
        "manifest {key} on target {target} is unreadable: {reason}; that snapshot is skipped and left in place"
    )]
    BadManifest {
        target: String,
        key: String,
        reason: String,
    },
}

/// Writes the manifest with create-if-absent: the single step that makes a snapshot real.
impl SnapshotError {
    /// A failed delete: a 403 is how write-only credentials answer one.
    pub fn delete(target: &Target, e: object_store::Error) -> Self {
        match e {
            object_store::Error::PermissionDenied { .. } => SnapshotError::NotPermitted {
                target: target.name.clone(),
            },
            e => Self::store(target, e),
        }
    }

    pub fn store(target: &Target, e: object_store::Error) -> Self {
        SnapshotError::Store {
            target: target.name.clone(),
            message: crate::target::explain(target, &e),
        }
    }
}

pub async fn commit(target: &Target, manifest: &Manifest) -> Result<(), SnapshotError> {
    let key = manifest_key(&manifest.job, &manifest.snapshot);
    let body = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match target
        .store
        .put_opts(&key, PutPayload::from(body), opts)
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(SnapshotError::AlreadyCommitted {
            job: manifest.job.clone(),
            id: manifest.snapshot.clone(),
            target: target.name.clone(),
        }),
        Err(source) => Err(SnapshotError::store(target, source)),
    }
}

/// Reads one manifest; `Ok(None)` when the snapshot was never committed.
pub async fn read_manifest(
    target: &Target,
    job: &str,
    id: &str,
) -> Result<Option<Manifest>, SnapshotError> {
    let key = manifest_key(job, id);
    let bad = |reason| SnapshotError::BadManifest {
        target: target.name.clone(),
        key: key.to_string(),
        reason,
    };
    let bytes = match target
        .get_small(&key, MAX_MANIFEST_BYTES)
        .await
        .map_err(|source| SnapshotError::store(target, source))?
    {
        crate::target::Small::Found(bytes) => bytes,
        crate::target::Small::Missing => return Ok(None),
        crate::target::Small::TooLarge { bytes } => {
            return Err(bad(format!(
                "it is {bytes} bytes, more than any manifest backupd writes ({MAX_MANIFEST_BYTES})"
            )));
        }
    };
    check_manifest(target, &key, job, id, &bytes).map(Some)
}

/// The manifest in `bytes`, read from `key` (snapshot `job/id`) on `target`, if it passes
/// every rule for what is read from a target.
pub(crate) fn check_manifest(
    target: &Target,
    key: &ObjectPath,
    job: &str,
    id: &str,
    bytes: &[u8],
) -> Result<Manifest, SnapshotError> {
    let bad = |reason| SnapshotError::BadManifest {
        target: target.name.clone(),
        key: key.to_string(),
        reason,
    };
    let m = parse_manifest(bytes).map_err(|e| bad(e.to_string()))?;
    // Object keys are derived from the manifest's own job and id: one copied to another
    // place would send restore to someone else's objects.
    if m.job != job || m.snapshot != id {
        return Err(bad(format!(
            "it names snapshot {}/{} but is stored as {job}/{id} (copied from another job or snapshot?)",
            m.job, m.snapshot
        )));
    }
    Ok(m)
}

/// Why bytes read as a manifest are not one backupd can use.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "format {0} is newer than this backupd understands ({FORMAT_VERSION}); upgrade backupd"
    )]
    Newer(u32),
    #[error("invalid job name {0:?}")]
    JobName(String),
    #[error("invalid instance name {0:?}")]
    InstanceName(String),
    #[error("invalid source {name:?} / object {object:?}: refusing a manifest that names paths")]
    Names { name: String, object: String },
    #[error(
        "source {name:?}: base {base:?} at level {level} is not an earlier snapshot's id with an index at a level above 0"
    )]
    Base {
        name: String,
        base: String,
        level: u32,
    },
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    let v: Version = serde_json::from_slice(bytes)?;
    if v.format > FORMAT_VERSION {
        return Err(ManifestError::Newer(v.format));
    }
    let mut m: Manifest = serde_json::from_slice(bytes)?;
    // A manifest comes from storage, which is not trusted: its names become paths on
    // restore, so they must be what backupd itself would have written.
    if !is_valid_name(&m.job) {
        return Err(ManifestError::JobName(m.job));
    }
    if let Some(i) = &m.instance
        && !is_valid_instance(i)
    {
        return Err(ManifestError::InstanceName(i.clone()));
    }
    let object_ok = |object: &str| {
        !object.is_empty() && !object.starts_with('.') && !object.contains(['/', '\\'])
    };
    for (name, entry) in &m.sources {
        let index_ok = entry.index.as_ref().is_none_or(|i| object_ok(&i.object));
        // A base is looked up by id among the job's snapshots, never used as a path; still,
        // it must be an id, name a level below, and come with the index a chain needs.
        let base_ok = match &entry.base {
            None => entry.level == 0,
            Some(b) => {
                is_valid_id(b) && entry.level > 0 && entry.index.is_some() && *b < m.snapshot
            }
        };
        if !base_ok {
            return Err(ManifestError::Base {
                name: name.clone(),
                base: entry.base.clone().unwrap_or_default(),
                level: entry.level,
            });
        }
        if !is_valid_name(name) || !object_ok(&entry.object) || !index_ok {
            return Err(ManifestError::Names {
                name: name.clone(),
                object: entry.object.clone(),
            });
        }
    }
    // After the checks above, so a hostile name is reported as that, not as a bad digest.
    // The generic form is only needed to check a digest (listing parses thousands).
    let raw = if m.digest.is_some() || m.signature.is_some() {
        serde_json::from_slice(bytes)?
    } else {
        serde_json::Value::Null
    };
    m.seal = seal::open(&raw, &m)?;
    Ok(m)
}

/// The newest of `snapshots` (newest first) that `trust` does not refuse: `latest` for
/// restore and verify, so a planted newer snapshot cannot stand in for the real one. Each
/// refused newer one is logged with the reason.
pub fn newest_accepted(snapshots: Vec<Manifest>, trust: &seal::Trust) -> Option<Manifest> {
    for m in snapshots {
        match trust.judge(&m) {
            seal::Judgment::Refused(why) => tracing::warn!(
                job = %m.job,
                snapshot = %m.snapshot,
                "passed over for `latest`: {why}"
            ),
            _ => return Some(m),
        }
    }
    None
}

/// Which snapshots a command means: `latest` (this instance's newest that `trust` does
/// not refuse), `all` (this instance's), or an id or unique prefix of one (any instance's).
/// The one rule for restore, verify and the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    All,
    Id(String),
}

impl Selector {
    pub fn parse(s: &str) -> Self {
        match s {
            "latest" => Selector::Latest,
            "all" => Selector::All,
            id => Selector::Id(id.to_string()),
        }
    }
}

/// Why a selector chose nothing it could use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("{prefix:?} matches {count} snapshots of job {job}; give more of the id")]
    Ambiguous {
        prefix: String,
        count: usize,
        job: String,
    },
}

/// The snapshots of one job on one target (`snapshots`, newest first) that `selector`
/// means for `instance`.
pub fn select(
    snapshots: Vec<Manifest>,
    selector: &Selector,
    instance: &str,
    trust: &seal::Trust,
) -> Result<Vec<Manifest>, SelectError> {
    let own = |all: Vec<Manifest>| -> Vec<Manifest> {
        all.into_iter()
            .filter(|m| m.instance() == instance)
            .collect()
    };
    Ok(match selector {
        Selector::Latest => newest_accepted(own(snapshots), trust).into_iter().collect(),
        Selector::All => own(snapshots),
        Selector::Id(prefix) => {
            let job = snapshots.first().map(|m| m.job.clone()).unwrap_or_default();
            let matches: Vec<Manifest> = snapshots
                .into_iter()
                .filter(|m| m.snapshot.starts_with(prefix.as_str()))
                .collect();
            if matches.len() > 1 {
                return Err(SelectError::Ambiguous {
                    prefix: prefix.clone(),
                    count: matches.len(),
                    job,
                });
            }
            matches
        }
    })
}

/// The names of the "directories" right under `prefix`. A key the store cannot even
/// name (a control character, invalid UTF-8: anyone who can write to the bucket can make
/// one) fails the store's one-call listing; then the objects are listed one by one and
/// the unnameable ones are skipped with a warning, so one odd key cannot hide a job.
pub(crate) async fn child_names(
    target: &Target,
    prefix: &ObjectPath,
) -> Result<Vec<String>, object_store::Error> {
    let under = (!prefix.as_ref().is_empty()).then_some(prefix);
    match target.store.list_with_delimiter(under).await {
        Ok(listed) => Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect()),
        Err(object_store::Error::InvalidPath { .. }) => {
            let mut names = std::collections::BTreeSet::new();
            let mut skipped = 0u64;
            let mut all = target.store.list(under);
            while let Some(item) = all.next().await {
                match item {
                    Ok(meta) => {
                        let parts: Vec<_> = meta.location.parts().collect();
                        let depth = prefix.parts().count();
                        if parts.len() > depth + 1 {
                            names.insert(parts[depth].as_ref().to_string());
                        }
                    }
                    Err(object_store::Error::InvalidPath { .. }) => skipped += 1,
                    Err(e) => return Err(e),
                }
            }
            tracing::warn!(
                target = %target.name,
                prefix = %prefix,
                skipped,
                "skipped keys that are not valid object names (not made by backupd)"
            );
            Ok(names.into_iter().collect())
        }
        Err(e) => Err(e),
    }
}

/// Two daemons sharing one instance name without coordination both run every slot: seen
/// as snapshots of one instance from different hosts started within `window` of each
/// other. Returns the hosts, when `snapshots` (one instance and job) show it.
pub fn doubled_hosts(
    snapshots: &[&Manifest],
    window: chrono::Duration,
) -> Option<(String, String)> {
    let mut by_time: Vec<&&Manifest> = snapshots.iter().collect();
    by_time.sort_by_key(|m| m.started_at);
    by_time.windows(2).find_map(|w| {
        (w[0].host != w[1].host && w[1].started_at - w[0].started_at < window)
            .then(|| (w[0].host.clone(), w[1].host.clone()))
    })
}

/// The instances that have snapshots among `snapshots`, sorted, for messages that say
/// where else to look.
pub fn instances_in(snapshots: &[Manifest]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = snapshots.iter().map(Manifest::instance).collect();
    set.into_iter().map(str::to_string).collect()
}

/// Committed snapshots of `job` (or of every job) on one target, newest first.
/// Unreadable manifests are logged and left out rather than hiding the good ones.
pub async fn list(target: &Target, job: Option<&str>) -> Result<Vec<Manifest>, SnapshotError> {
    let mut listing = listing::scan(target, job).await?;
    Ok(std::mem::take(&mut listing.manifests))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid manifest for tests of what reads and writes manifests.
    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: 1,
            job: "app".into(),
            snapshot: "2026-01-02T03-04-05.006Z-abcdef".into(),
            host: "h".into(),
            instance: None,
            backupd_version: "0".into(),
            started_at: "2026-01-02T03:04:05.006Z".parse().unwrap(),
            finished_at: "2026-01-02T03:05:05Z".parse().unwrap(),
            slot: None,
            tags: vec!["manual".into()],
            sources: BTreeMap::from([(
                "db".to_string(),
                SourceEntry {
                    kind: "sqlite".into(),
                    group: None,
                    object: "db.sqlite.gz.age".into(),
                    compression: Compression::Gzip,
                    compression_level: 6,
                    encryption: Encryption::Age {
                        recipients: vec!["age1xyz".into()],
                    },
                    stored: Digest {
                        bytes: 10,
                        sha256: "ab".repeat(32),
                    },
                    plain: Digest {
                        bytes: 20,
                        sha256: "cd".repeat(32),
                    },
                    stats: SourceStats::Sqlite {
                        file_name: "app.db".into(),
                        sqlite_version: "3".into(),
                        page_count: 2,
                        tables: BTreeMap::from([("t".to_string(), 3)]),
                    },
                    warnings: vec![],
                    index: None,
                    base: None,
                    level: 0,
                },
            )]),
            digest: None,
            signature: None,
            seal: seal::Seal::Unsigned,
        }
    }

    #[test]
    fn ids_sort_by_time_and_are_key_safe() {
        let a = new_id("2026-01-02T03:04:05.006Z".parse().unwrap());
        let b = new_id("2026-01-02T03:04:05.007Z".parse().unwrap());
        assert!(a.starts_with("2026-01-02T03-04-05.006Z-"), "{a}");
        assert!(a < b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
        );
    }

    #[test]
    fn manifests_naming_paths_are_refused() {
        let good = sample();
        let json = serde_json::to_vec(&good).unwrap();
        assert_eq!(parse_manifest(&json).unwrap(), good);
        let mut evil = good.clone();
        let entry = evil.sources.remove("db").unwrap();
        evil.sources.insert("../../etc".into(), entry.clone());
        assert!(parse_manifest(&serde_json::to_vec(&evil).unwrap()).is_err());
        let mut evil = good.clone();
        evil.sources.get_mut("db").unwrap().object = "../other/x".into();
        assert!(parse_manifest(&serde_json::to_vec(&evil).unwrap()).is_err());
    }

    /// A base is an id strictly older than the snapshot (so no chain can loop), comes
    /// with a level above 0 and an index; a level without a base is refused too.
    #[test]
    fn forged_bases_are_refused() {
        let index = IndexObject {
            object: "db.index.json.gz.age".into(),
            stored: Digest::default(),
            plain: Digest::default(),
        };
        let with = |base: Option<&str>, level: u32, index: Option<IndexObject>| {
            let mut m = sample();
            let e = m.sources.get_mut("db").unwrap();
            e.base = base.map(str::to_string);
            e.level = level;
            e.index = index;
            parse_manifest(&serde_json::to_vec(&m).unwrap())
        };
        let older = "2026-01-01T00-00-00.000Z-aaaaaa";
        assert!(with(Some(older), 1, Some(index.clone())).is_ok());
        for (base, level, idx) in [
            (Some(older), 0, Some(index.clone())),
            (Some(older), 1, None),
            (None, 3, Some(index.clone())),
            (
                Some("2026-01-02T03-04-05.006Z-abcdef"),
                1,
                Some(index.clone()),
            ),
            (
                Some("2027-01-01T00-00-00.000Z-aaaaaa"),
                1,
                Some(index.clone()),
            ),
            (Some("../../x"), 1, Some(index.clone())),
        ] {
            let err = with(base, level, idx).unwrap_err();
            assert!(matches!(err, ManifestError::Base { .. }), "{base:?}: {err}");
        }
    }

    #[test]
    fn newer_format_is_refused_with_a_hint() {
        let err = parse_manifest(br#"{"format": 2}"#).unwrap_err();
        assert!(err.to_string().contains("upgrade backupd"), "{err}");
    }
}
