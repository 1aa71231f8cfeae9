//! Bringing back snapshots whose manifests were deleted in a **versioned** S3 bucket
//! (by retention, by a mistake, or by an attacker holding the backup host's keys): a
//! delete there only stacks a **delete marker** on the key, and with Object Lock the
//! versions under it cannot be removed until their lock expires. Recovery lists the
//! job's object versions, finds the snapshots whose manifest is hidden by delete markers
//! while a real version survives, and removes those markers — objects first, the manifest
//! last, so a snapshot is listed again only once everything it needs is back.
//!
//! Keys come from the bucket and are untrusted: only keys of the form
//! `<job>/<snapshot-id>/<name>` with a valid id are considered, and markers are removed
//! only on keys of the snapshot being recovered.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::snapshot::is_valid_id;
use crate::target::s3api::{Bucket, S3ApiError, Version};

/// A snapshot whose manifest is deleted but recoverable.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deleted {
    pub snapshot: String,
    /// When its manifest's newest delete marker was set.
    pub deleted_at: DateTime<Utc>,
    /// The delete markers to remove, as (key, version id), the manifest's last.
    #[serde(skip)]
    pub markers: Vec<(String, String)>,
    /// Objects of the snapshot that come back with it.
    pub objects: usize,
}

/// For one key: the delete markers stacked over its newest real version, when the key's
/// current state is "deleted" and a real version survives under them.
fn hidden_by(versions: &[&Version]) -> Option<Vec<(String, String, DateTime<Utc>)>> {
    let mut sorted: Vec<&&Version> = versions.iter().collect();
    sorted.sort_by_key(|v| std::cmp::Reverse(v.last_modified));
    let latest = sorted.iter().find(|v| v.is_latest).or(sorted.first())?;
    if !latest.delete_marker {
        return None;
    }
    let newest_real = sorted.iter().find(|v| !v.delete_marker)?;
    Some(
        sorted
            .iter()
            .filter(|v| v.delete_marker && v.last_modified >= newest_real.last_modified)
            .map(|v| (v.key.clone(), v.version_id.clone(), v.last_modified))
            .collect(),
    )
}

/// The deleted, recoverable snapshots of `job`, oldest first; with `since`, only those
/// whose manifest was deleted at or after it.
pub async fn find(
    bucket: &Bucket,
    job: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Deleted>, S3ApiError> {
    let versions = bucket.versions(&format!("{job}/")).await?;
    Ok(plan(&versions, job, since))
}

/// [`find`] on versions already listed.
fn plan(versions: &[Version], job: &str, since: Option<DateTime<Utc>>) -> Vec<Deleted> {
    let mut by_snapshot: BTreeMap<String, BTreeMap<String, Vec<&Version>>> = BTreeMap::new();
    for v in versions {
        let mut parts = v.key.splitn(3, '/');
        let (Some(j), Some(id), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if j != job || !is_valid_id(id) || name.is_empty() {
            continue;
        }
        by_snapshot
            .entry(id.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default()
            .push(v);
    }
    let mut out = Vec::new();
    for (id, keys) in by_snapshot {
        let Some(manifest) = keys.get("manifest.json").and_then(|v| hidden_by(v)) else {
            continue;
        };
        let deleted_at = manifest.iter().map(|m| m.2).max().expect("a marker");
        if since.is_some_and(|s| deleted_at < s) {
            continue;
        }
        let mut markers = Vec::new();
        let mut objects = 0;
        for (name, versions) in &keys {
            if name == "manifest.json" {
                continue;
            }
            if let Some(hidden) = hidden_by(versions) {
                markers.extend(hidden.into_iter().map(|(k, v, _)| (k, v)));
            }
            if versions.iter().any(|v| !v.delete_marker) {
                objects += 1;
            }
        }
        markers.extend(manifest.into_iter().map(|(k, v, _)| (k, v)));
        out.push(Deleted {
            snapshot: id,
            deleted_at,
            markers,
            objects,
        });
    }
    out
}

/// Removes the snapshot's delete markers, the manifest's last.
pub async fn recover(bucket: &Bucket, deleted: &Deleted) -> Result<(), S3ApiError> {
    for (key, version) in &deleted.markers {
        bucket.delete_version(key, version).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str, minute: u32, marker: bool, latest: bool) -> Version {
        Version {
            key: "app/2026-12-01T00-00-00.000Z-aaaaaa/manifest.json".into(),
            version_id: id.into(),
            is_latest: latest,
            delete_marker: marker,
            last_modified: format!("2026-12-01T00:{minute:02}:00Z").parse().unwrap(),
        }
    }

    fn ids(found: Option<Vec<(String, String, DateTime<Utc>)>>) -> Option<Vec<String>> {
        found.map(|m| m.into_iter().map(|(_, id, _)| id).collect())
    }

    fn at(key: &str, id: &str, minute: u32, marker: bool, latest: bool) -> Version {
        Version {
            key: key.into(),
            ..v(id, minute, marker, latest)
        }
    }

    /// Keys a bucket writer planted — another job's, an id that is no id, a name with
    /// `..` or none — are never touched; a deleted snapshot's markers come objects first,
    /// manifest last.
    #[test]
    fn only_a_snapshots_own_keys_are_recovered_manifest_last() {
        let id = "2026-12-01T00-00-00.000Z-aaaaaa";
        let mut versions = Vec::new();
        for key in [
            format!("app/{id}/files.tar.age"),
            format!("app/{id}/manifest.json"),
            format!("other/{id}/manifest.json"),
            "app/../etc/manifest.json".to_string(),
            "app/not-an-id/manifest.json".to_string(),
            format!("app/{id}/"),
        ] {
            versions.push(at(&key, &format!("real-{key}"), 1, false, false));
            versions.push(at(&key, &format!("marker-{key}"), 2, true, true));
        }
        let found = plan(&versions, "app", None);
        assert_eq!(found.len(), 1, "{found:?}");
        let keys: Vec<&str> = found[0].markers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                format!("app/{id}/files.tar.age"),
                format!("app/{id}/manifest.json")
            ]
        );
        assert_eq!(found[0].objects, 1);
        assert!(
            plan(
                &versions,
                "app",
                Some("2026-12-01T00:03:00Z".parse().unwrap())
            )
            .is_empty()
        );
    }

    #[test]
    fn only_the_markers_over_the_newest_real_version_are_removed() {
        let (r1, m1, m2) = (
            v("r1", 1, false, false),
            v("m1", 2, true, false),
            v("m2", 3, true, true),
        );
        assert_eq!(
            ids(hidden_by(&[&r1, &v("m1", 2, true, true)])),
            Some(vec!["m1".into()])
        );
        assert_eq!(
            ids(hidden_by(&[&r1, &m1, &m2])),
            Some(vec!["m2".into(), "m1".into()])
        );
        // A marker older than the newest real version hides nothing now.
        let old_marker = v("m0", 0, true, false);
        assert_eq!(
            ids(hidden_by(&[&old_marker, &r1, &v("m1", 2, true, true)])),
            Some(vec!["m1".into()])
        );
        // A live key, and a key that never had data, are not recoverable.
        assert_eq!(ids(hidden_by(&[&r1, &m1, &v("r2", 3, false, true)])), None);
        assert_eq!(ids(hidden_by(&[&v("m", 1, true, true)])), None);
    }
}
