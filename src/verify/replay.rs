//! Verification of a PostgreSQL base backup by replay: the archive is checked for gaps
//! from the backup's first segment to the newest, every file fetched with both sha256
//! checked, the base backup unpacked by the restore rules, and a throwaway server
//! (`source::pgbase::replay`) recovers it to the end of the archive and runs the source's
//! checks. A missing segment fails the verification by name: every point after it is
//! unreachable.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Check, Verifier};
use crate::snapshot::{Manifest, SourceEntry, SourceStats};
use crate::target::Target;
use crate::wal::{self, Archive, Kind, WalName};

/// How long a replay may take before it counts as failed.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Missing segments named in a failure; a longer gap is reported by its first few.
const SHOWN_GAPS: usize = 5;

impl Verifier<'_> {
    pub(super) async fn replay_checks(
        &self,
        target: &Target,
        manifest: &Manifest,
        name: &str,
        entry: &SourceEntry,
    ) -> Vec<Check> {
        let SourceStats::Basebackup {
            server_version,
            database,
            timeline,
            start_wal,
            stop_lsn,
            wal_segment_bytes,
            ..
        } = &entry.stats
        else {
            return vec![Check::fail("replay", "not a base backup")];
        };
        let seg = *wal_segment_bytes;
        let archive = Archive {
            job: manifest.job.clone(),
            instance: manifest.instance().to_string(),
            source: name.to_string(),
        };
        let (Some(start), Some(stop)) = (
            WalName::parse(start_wal).and_then(|w| w.segno(seg)),
            wal::name::parse_lsn(stop_lsn).map(|l| l / seg.max(1)),
        ) else {
            return vec![Check::fail(
                "wal",
                format!("the manifest's WAL points ({start_wal:?}, {stop_lsn:?}) are not valid"),
            )];
        };
        let listed = match wal::list(target, &archive).await {
            Ok(l) => l,
            Err(e) => return vec![Check::fail("wal", e.to_string())],
        };
        let needed: Vec<&WalName> = listed
            .files
            .iter()
            .filter(|n| match n.kind {
                Kind::History => true,
                Kind::Segment => n.segno(seg).is_some_and(|s| s >= start),
                Kind::Backup | Kind::Partial => false,
            })
            .collect();
        let have: BTreeSet<u64> = needed.iter().filter_map(|n| n.segno(seg)).collect();
        let newest = have.last().copied().unwrap_or(0);
        if have.is_empty() || newest < stop {
            return vec![Check::fail(
                "wal",
                format!(
                    "the WAL this backup needs up to {} is not archived in {} (newest archived: {}): is archive_command running backupd wal-push?",
                    wal::name::segment_name(*timeline, stop, seg).unwrap_or_default(),
                    archive.prefix(),
                    have.last()
                        .and_then(|n| wal::name::segment_name(*timeline, *n, seg))
                        .unwrap_or_else(|| "none".into())
                ),
            )];
        }
        let missing = wal::name::gaps(&have, start, newest, SHOWN_GAPS);
        if let Some(first) = missing.first() {
            let named: Vec<String> = missing
                .iter()
                .filter_map(|n| wal::name::segment_name(*timeline, *n, seg))
                .collect();
            return vec![Check::fail(
                "wal",
                format!(
                    "segment {} missing from the archive{}: every point after {} is unreachable, and so is the end of the archive ({})",
                    named.join(", "),
                    if missing.len() == SHOWN_GAPS {
                        " (and maybe more)"
                    } else {
                        ""
                    },
                    wal::name::segment_name(*timeline, first.saturating_sub(1), seg)
                        .unwrap_or_default(),
                    wal::name::segment_name(*timeline, newest, seg).unwrap_or_default(),
                ),
            )];
        }
        let scratch = match replay_scratch() {
            Ok(s) => s,
            Err(e) => return vec![Check::fail("replay", format!("scratch space: {e}"))],
        };
        let wal_dir = scratch.path().join("wal");
        if let Err(e) = std::fs::create_dir(&wal_dir) {
            return vec![Check::fail("replay", format!("scratch space: {e}"))];
        }
        for file in &needed {
            let dest = wal_dir.join(&file.name);
            if let Err(e) = wal::fetch(
                std::slice::from_ref(target),
                &archive,
                &file.name,
                &dest,
                self.identities.clone(),
                &self.trust,
            )
            .await
            {
                return vec![Check::fail("wal", e.to_string())];
            }
        }
        let mut checks = vec![Check::pass(
            "wal",
            format!(
                "{} files, segments {} to {} without a gap, sha256 match",
                needed.len(),
                wal::name::segment_name(*timeline, start, seg).unwrap_or_default(),
                wal::name::segment_name(*timeline, newest, seg).unwrap_or_default()
            ),
        )];
        let spec = self
            .policy
            .jobs
            .get(&manifest.job)
            .and_then(|j| j.source_specs.get(name))
            .and_then(|s| match s {
                crate::source::SourceSpec::Postgres(p) => Some(p.clone()),
                _ => None,
            });
        let replay = crate::source::pgbase::Replay {
            wal_dir: wal_dir.clone(),
            run_as: spec
                .as_ref()
                .and_then(|p| p.verify_as.clone())
                .unwrap_or_else(|| crate::source::postgres::DEFAULT_VERIFY_AS.into()),
            user: spec
                .as_ref()
                .and_then(|p| url::Url::parse(&p.url).ok())
                .map(|u| u.username().to_string())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "postgres".into()),
            database: if database.is_empty() {
                "postgres".into()
            } else {
                database.clone()
            },
            checks: spec.map(|p| p.checks).unwrap_or_default(),
            major: crate::source::child::major_version(&format!("{server_version} ")).unwrap_or(0),
            timeout: REPLAY_TIMEOUT,
        };
        let input = match target
            .reader(&crate::snapshot::object_key(
                &manifest.job,
                &manifest.snapshot,
                &entry.object,
            ))
            .await
        {
            Ok(i) => self.progress.reader(name, entry.stored.bytes, i),
            Err(e) => {
                checks.push(Check::fail("object present", e.to_string()));
                return checks;
            }
        };
        let ids = self.identities.clone();
        let owned = entry.clone();
        let scratch_path = scratch.path().to_path_buf();
        let (replayed, end) = tokio::task::spawn_blocking(move || {
            replay_blocking(input, &owned, ids.as_deref(), &scratch_path, &replay)
        })
        .await
        .unwrap_or_else(|e| {
            (
                vec![Check::fail(
                    "replay",
                    format!("the replay thread failed: {e}"),
                )],
                None,
            )
        });
        checks.extend(replayed);
        // Where the promoted server continues must be past the newest archived segment:
        // a recovery that stopped earlier met a file it could not use.
        if let Some(end) = end
            && end / seg < newest
        {
            checks.push(Check::fail(
                "replay reached the end",
                format!(
                    "recovery ended in segment {}, before the newest archived one {}: a damaged or foreign segment stops replay there",
                    wal::name::segment_name(*timeline, end / seg, seg).unwrap_or_default(),
                    wal::name::segment_name(*timeline, newest, seg).unwrap_or_default()
                ),
            ));
        }
        checks
    }
}

fn replay_blocking(
    input: Box<dyn std::io::Read + Send>,
    entry: &SourceEntry,
    identities: Option<&crate::crypto::Identities>,
    scratch: &std::path::Path,
    replay: &crate::source::pgbase::Replay,
) -> (Vec<Check>, Option<u64>) {
    let mut checks = Vec::new();
    let mut decoded = match crate::pipeline::decode(input, entry, identities) {
        Ok(d) => d,
        Err(e) => return (vec![Check::fail("decrypt", e.to_string())], None),
    };
    let data = scratch.join("data");
    let unpacked = crate::source::directory::restore(
        &mut decoded.reader,
        &data,
        crate::source::directory::Unpack {
            overwrite: false,
            same_owner: false,
            data: crate::source::directory::Data::Write,
        },
    );
    if let Err(e) = unpacked {
        return (vec![Check::fail("test-restore", e.to_string())], None);
    }
    match decoded.finish() {
        Ok(()) => checks.push(Check::pass("sha256", "stored and plain match the manifest")),
        Err(e) => {
            checks.push(Check::fail("sha256", e.to_string()));
            return (checks, None);
        }
    }
    match crate::source::pgbase::replay(&data, scratch, replay) {
        Ok(r) => {
            let end = wal::name::parse_lsn(&r.end_lsn);
            checks.push(Check::pass(
                "replay",
                format!(
                    "recovered to the end of the archive, continuing at {} after {:.1} s",
                    r.end_lsn,
                    r.elapsed.as_secs_f64()
                ),
            ));
            for (query, answer) in r.checks {
                checks.push(match answer {
                    Ok(true) => Check::pass("check", query),
                    Ok(false) => Check::fail("check", format!("{query}: returned false")),
                    Err(e) => Check::fail("check", format!("{query}: {e}")),
                });
            }
            (checks, end)
        }
        Err(e) => {
            checks.push(Check::fail("replay", e.to_string()));
            (checks, None)
        }
    }
}

/// The replay scratch directories' prefix under the temporary directory, and the lock a
/// live replay holds in each: a verification killed mid-replay (kill -9) leaves its server
/// and copy behind, and the next replay finds them by the lock nobody holds.
const SCRATCH_PREFIX: &str = "backupd-replay-";
const SCRATCH_LOCK: &str = "replay.lock";

/// A replay's scratch directory, removed on drop, locked while it lives.
struct Scratch {
    dir: tempfile::TempDir,
    _lock: std::fs::File,
}

impl Scratch {
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Scratch space a server run by another user can use: a private directory under the
/// system's temporary directory (the state directory's is closed to that user), given to
/// that user by the replay. What killed replays left is cleaned up first.
fn replay_scratch() -> std::io::Result<Scratch> {
    use std::os::unix::fs::PermissionsExt;
    sweep_stale(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    let lock = std::fs::File::create(dir.path().join(SCRATCH_LOCK))?;
    lock.try_lock()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Scratch { dir, _lock: lock })
}

/// Stops the servers and removes the copies of replays whose verification died: scratch
/// directories whose lock nobody holds. A server is stopped only when its command line
/// names that directory's data (a pid file read from disk proves nothing by itself).
fn sweep_stale(tmp: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let is_ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        if !is_ours || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let Ok(lock) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(SCRATCH_LOCK))
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        stop_server(&dir.join("data"));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the copy a killed verification's replay left")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot remove a killed replay's copy: {e}")
            }
        }
    }
}

/// Immediate shutdown of the server running on `data`, if one still does.
fn stop_server(data: &std::path::Path) {
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    else {
        return;
    };
    let runs_here = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.contains(&data.as_os_str().as_encoded_bytes())
        })
    };
    if !runs_here(pid) {
        return;
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::QUIT);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while runs_here(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::warn!(pid, data = %data.display(), "stopped the server a killed verification's replay left running");
}
