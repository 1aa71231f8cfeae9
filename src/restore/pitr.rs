//! Point-in-time recovery's restore side: the recovery *point* an operator names
//! (`--target-time`, `--target-lsn`, `--target-xid`), the base backup that can reach it
//! (the newest one that ended before it), and the `restore_command` the restored server
//! fetches its WAL with (`backupd wal-fetch`, see `crate::wal`).

use chrono::{DateTime, FixedOffset};

use super::RestoreError;
use crate::snapshot::seal::Trust;
use crate::snapshot::{self, Manifest, Selector, SourceStats};
use crate::source::pgbase::Point;
use crate::target::Target;

/// Reads the recovery point from the command line's three flags (at most one given).
pub fn point(
    time: Option<&str>,
    lsn: Option<&str>,
    xid: Option<&str>,
) -> Result<Option<Point>, RestoreError> {
    let usage = |m: String| RestoreError::Usage(m);
    Ok(match (time, lsn, xid) {
        (None, None, None) => None,
        (Some(t), None, None) => {
            parse_time(t).ok_or_else(|| {
                usage(format!(
                    "--target-time {t:?}: give a time with its zone, e.g. \"2026-12-01 10:05:00+00\" (PostgreSQL would read a time without one in the restored server's zone)"
                ))
            })?;
            Some(Point::Time(t.to_string()))
        }
        (None, Some(l), None) => {
            crate::wal::name::parse_lsn(l)
                .ok_or_else(|| usage(format!("--target-lsn {l:?}: an LSN looks like 0/16B3748")))?;
            Some(Point::Lsn(l.to_string()))
        }
        (None, None, Some(x)) => {
            x.parse::<u32>().map_err(|_| {
                usage(format!(
                    "--target-xid {x:?}: a transaction id is a number, e.g. 7431"
                ))
            })?;
            Some(Point::Xid(x.to_string()))
        }
        _ => {
            return Err(usage(
                "give one of --target-time, --target-lsn, --target-xid".into(),
            ));
        }
    })
}

/// A recovery target time as PostgreSQL takes it, with an explicit offset.
pub fn parse_time(t: &str) -> Option<DateTime<FixedOffset>> {
    let t = t.trim();
    DateTime::parse_from_rfc3339(t).ok().or_else(|| {
        ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"]
            .iter()
            .find_map(|f| DateTime::parse_from_str(t, f).ok())
    })
}

/// The base backup to start a recovery to `point` from: among `instance`'s snapshots on
/// `targets` holding a base backup, the newest that finished before the point (for a
/// time or an LSN); for a transaction id, whose time is unknown, the newest.
pub async fn choose(
    targets: &[Target],
    job: &str,
    instance: &str,
    trust: &Trust,
    point: &Point,
) -> Result<(Target, Manifest), RestoreError> {
    let mut best: Option<(Target, Manifest)> = None;
    for target in targets {
        let all = match snapshot::list(target, Some(job)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target = %target.name, "cannot list snapshots: {e}");
                continue;
            }
        };
        for m in snapshot::select(all, &Selector::All, instance, trust).unwrap_or_default() {
            if reaches(&m, point) && best.as_ref().is_none_or(|(_, b)| m.snapshot > b.snapshot) {
                best = Some((target.clone(), m));
            }
        }
    }
    best.ok_or_else(|| {
        RestoreError::NotFound(format!(
            "no base backup of job {job} (instance {instance}) ended before {}: a recovery can only start from one that did",
            match point {
                Point::Time(t) => format!("--target-time {t}"),
                Point::Lsn(l) => format!("--target-lsn {l}"),
                Point::Xid(x) => format!("--target-xid {x}"),
            }
        ))
    })
}

/// Whether a snapshot holds a base backup a recovery to `point` can start from. The
/// manifest's finish time is after the backup's own end, so this never picks one that
/// ends too late.
fn reaches(m: &Manifest, point: &Point) -> bool {
    m.sources.values().any(|e| match &e.stats {
        SourceStats::Basebackup { stop_lsn, .. } => match point {
            Point::Time(t) => parse_time(t).is_some_and(|t| m.finished_at < t),
            Point::Lsn(l) => match (
                crate::wal::name::parse_lsn(stop_lsn),
                crate::wal::name::parse_lsn(l),
            ) {
                (Some(stop), Some(target)) => stop <= target,
                _ => false,
            },
            Point::Xid(_) => true,
        },
        _ => false,
    })
}

/// How the restored server's `restore_command` calls backupd again.
pub struct Fetching<'a> {
    pub exe: &'a std::path::Path,
    pub config: &'a std::path::Path,
    pub identity: Option<&'a std::path::Path>,
    /// The operator's `--allow-unsigned`, carried over to every fetch.
    pub allow_unsigned: bool,
}

/// `restore_command` for a restored base backup: this backupd, this policy, and the
/// archive of the snapshot's instance and source. Each argument is quoted for the shell
/// PostgreSQL runs it with.
pub fn restore_command(how: &Fetching<'_>, archive: &crate::wal::Archive) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut cmd = format!(
        "{} --config {} --quiet wal-fetch --job {} --source {} --instance {}",
        q(&how.exe.display().to_string()),
        q(&how.config.display().to_string()),
        q(&archive.job),
        q(&archive.source),
        q(&archive.instance),
    );
    if let Some(id) = how.identity {
        cmd.push_str(&format!(" --identity {}", q(&id.display().to_string())));
    }
    if how.allow_unsigned {
        cmd.push_str(" --allow-unsigned");
    }
    cmd.push_str(" %f %p");
    cmd
}

/// Makes a restored base backup in `data` recover from the WAL archive up to `point`
/// (`source::pgbase::write_recovery`, with this archive's `restore_command`).
pub fn write_settings(
    data: &std::path::Path,
    how: &Fetching<'_>,
    archive: &crate::wal::Archive,
    point: Option<&Point>,
) -> Result<(), crate::source::SourceError> {
    crate::source::pgbase::write_recovery(data, &restore_command(how, archive), point)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base backup read from a target: its WAL points are as forged as anything else.
    fn with_stop(stop_lsn: &str) -> Manifest {
        let mut m = crate::snapshot::tests::sample();
        let e = m.sources.get_mut("db").unwrap();
        e.stats = SourceStats::Basebackup {
            server_version: "15.1".into(),
            tool_version: String::new(),
            system_identifier: String::new(),
            database: "app".into(),
            timeline: 1,
            start_lsn: "0/2000028".into(),
            stop_lsn: stop_lsn.into(),
            start_wal: "000000010000000000000002".into(),
            wal_segment_bytes: 16 << 20,
        };
        m
    }

    #[test]
    fn a_base_backup_reaches_a_point_only_by_what_it_can_prove() {
        let lsn = Point::Lsn("0/3000000".into());
        assert!(reaches(&with_stop("0/2000100"), &lsn));
        assert!(!reaches(&with_stop("0/3000001"), &lsn));
        // A stop that is no LSN never qualifies; nor does a snapshot without a base backup.
        for forged in ["", "0/", "../0/1", "ffffffffff/0", "0/2000100; x"] {
            assert!(!reaches(&with_stop(forged), &lsn), "{forged:?}");
        }
        assert!(!reaches(
            &crate::snapshot::tests::sample(),
            &Point::Xid("7".into())
        ));
        // By time: only one that finished before it (sample finished 03:05:05).
        assert!(reaches(
            &with_stop("0/1"),
            &Point::Time("2026-01-02 03:06:00+00".into())
        ));
        assert!(!reaches(
            &with_stop("0/1"),
            &Point::Time("2026-01-02 03:05:00+00".into())
        ));
    }

    #[test]
    fn a_target_time_needs_its_zone_and_one_point_is_given() {
        assert!(parse_time("2026-12-01 10:05:00+00").is_some());
        assert!(parse_time("2026-12-01 10:05:00.123+01:00").is_some());
        assert!(parse_time("2026-12-01T10:05:00Z").is_some());
        assert!(parse_time("2026-12-01 10:05:00").is_none());
        assert!(point(Some("yesterday"), None, None).is_err());
        assert!(point(None, Some("0/1"), Some("7")).is_err());
        assert!(point(None, Some("0/zz"), None).is_err());
        assert_eq!(point(None, None, None).unwrap(), None);
        assert_eq!(
            point(None, None, Some("7431")).unwrap(),
            Some(Point::Xid("7431".into()))
        );
    }

    #[test]
    fn the_restore_command_quotes_every_argument_for_the_shell() {
        let a = crate::wal::Archive {
            job: "db".into(),
            instance: "host-1".into(),
            source: "main".into(),
        };
        let c = restore_command(
            &Fetching {
                exe: std::path::Path::new("/usr/bin/backupd"),
                config: std::path::Path::new("/etc/it's.toml"),
                identity: None,
                allow_unsigned: false,
            },
            &a,
        );
        assert_eq!(
            c,
            r"'/usr/bin/backupd' --config '/etc/it'\''s.toml' --quiet wal-fetch --job 'db' --source 'main' --instance 'host-1' %f %p"
        );
        // Manifests' instance names are checked when read, and quoted here anyway: run
        // through sh, a hostile one stays one argument.
        let hostile = crate::wal::Archive {
            instance: "h'; touch /tmp/pwned; echo '$(id)".into(),
            ..a
        };
        let c = restore_command(
            &Fetching {
                exe: std::path::Path::new("/bin/echo"),
                config: std::path::Path::new("/c"),
                identity: None,
                allow_unsigned: true,
            },
            &hostile,
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(c.replace("%f %p", "F P"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "--config /c --quiet wal-fetch --job db --source main --instance h'; touch /tmp/pwned; echo '$(id) --allow-unsigned F P\n"
        );
    }
}
