//! Restoring a snapshot, the use case beside `job` (backup) and `verify`: **finding** the
//! snapshot a selector names on the job's targets, **choosing** its sources (`--only` /
//! `--skip`, by source name or by the group a multi-database source made), and restoring
//! each source's object through the decode pipeline into a **destination** — a directory,
//! or a database server (`--into-url`). Each kind's restore lives in `source/<kind>.rs`
//! and is the same code verification's test-restores run. The CLI parses and prints.

pub mod chain;
pub mod index;
pub mod pitr;

use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::Identities;
use crate::snapshot::seal::Trust;
use crate::snapshot::{self, Manifest, SelectError, Selector, SourceEntry, SourceStats};
use crate::source::{self, IntoServer, RestoreOptions, Restored, SourceError};
use crate::target::Target;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A request that cannot be met as asked (exit status 2 at the edge).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("{0}")]
    NotFound(String),
    #[error("reading {key} from target {target}: {source}")]
    Read {
        target: String,
        key: String,
        source: object_store::Error,
    },
    #[error(transparent)]
    Integrity(#[from] crate::pipeline::IntegrityError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the restore task stopped: {0}")]
    Task(String),
    /// What was read does not hold together (an archive, an index); the message says what.
    #[error("{0}")]
    Failed(String),
}

impl RestoreError {
    /// Whether the caller asked for something impossible (rather than something failing).
    pub fn is_usage(&self) -> bool {
        matches!(self, RestoreError::Usage(_) | RestoreError::Select(_))
    }
}

/// The snapshot `selector` names (`latest` or an id / unique prefix), from the first
/// target that has it (for `latest`, the newest across targets). `latest` is
/// `instance`'s; an id names a snapshot of any instance.
pub async fn find(
    targets: &[Target],
    job: &str,
    selector: &Selector,
    instance: &str,
    trust: &Trust,
) -> Result<(Target, Manifest), RestoreError> {
    let mut best: Option<(Target, Manifest)> = None;
    let mut others: std::collections::BTreeSet<String> = Default::default();
    for target in targets {
        let snapshots = match snapshot::list(target, Some(job)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target = %target.name, "cannot list snapshots: {e}");
                continue;
            }
        };
        others.extend(snapshot::instances_in(&snapshots));
        let found = snapshot::select(snapshots, selector, instance, trust)?;
        if let Some(m) = found.into_iter().next()
            && best.as_ref().is_none_or(|(_, b)| m.snapshot > b.snapshot)
        {
            best = Some((target.clone(), m));
        }
        if best.is_some() && *selector != Selector::Latest {
            break;
        }
    }
    let shown_targets = targets
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    best.ok_or_else(|| {
        others.remove(instance);
        RestoreError::NotFound(match selector {
            Selector::Latest if !others.is_empty() => format!(
                "instance {instance} has no committed snapshot of job {job} on target(s) {shown_targets}; instances that have: {} (restore one with --instance NAME)",
                others.into_iter().collect::<Vec<_>>().join(", ")
            ),
            Selector::Id(id) => format!(
                "no committed snapshot {id:?} of job {job} on target(s) {shown_targets}; see `backupd list {job} --all-instances`"
            ),
            _ => format!(
                "no committed snapshot \"latest\" of job {job} on target(s) {shown_targets}; see `backupd list {job} --all-instances`"
            ),
        })
    })
}

/// The sources of `m` that `only` and `skip` leave (each name a source, or the group of
/// every object a multi-database source made); a name the snapshot lacks is an error.
pub fn select_sources(
    m: &Manifest,
    only: &[String],
    skip: &[String],
) -> Result<Vec<(String, SourceEntry)>, RestoreError> {
    let matches = |wanted: &String, name: &String, e: &SourceEntry| {
        wanted == name || e.group.as_ref() == Some(wanted)
    };
    for wanted in only.iter().chain(skip) {
        if !m.sources.iter().any(|(n, e)| matches(wanted, n, e)) {
            return Err(RestoreError::Usage(format!(
                "snapshot {} has no source {wanted:?} (sources: {})",
                m.snapshot,
                m.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let chosen: Vec<_> = m
        .sources
        .iter()
        .filter(|(n, e)| only.is_empty() || only.iter().any(|w| matches(w, n, e)))
        .filter(|(n, e)| !skip.iter().any(|w| matches(w, n, e)))
        .map(|(n, e)| (n.clone(), e.clone()))
        .collect();
    if chosen.is_empty() {
        return Err(RestoreError::Usage(
            "--only/--skip leave no source to restore".into(),
        ));
    }
    Ok(chosen)
}

/// What `--into-url` asks for.
#[derive(Debug, Clone)]
pub struct IntoRequest {
    pub url: String,
    pub create: bool,
    pub clean: bool,
    /// The server password's file; else the engine's usual variable (PGPASSWORD, MYSQL_PWD).
    pub password_file: Option<PathBuf>,
}

/// The server destination for `request`, checked against the one source chosen.
pub fn into_server(
    request: &IntoRequest,
    chosen: &[(String, SourceEntry)],
) -> Result<IntoServer, RestoreError> {
    let [(name, entry)] = chosen else {
        return Err(RestoreError::Usage(format!(
            "--into-url restores one database source; pick it with --only (sources: {})",
            chosen
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let SourceStats::Database { engine, .. } = &entry.stats else {
        return Err(RestoreError::Usage(format!(
            "source {name} is a {} source: restore it with --to DIR",
            entry.kind
        )));
    };
    let Some(server) = source::server_engine(engine) else {
        return Err(RestoreError::Usage(format!(
            "source {name} is a {engine} dump, which is restored by hand: restore it with --to DIR"
        )));
    };
    if !server
        .schemes
        .iter()
        .any(|s| request.url.starts_with(&format!("{s}://")))
    {
        return Err(RestoreError::Usage(format!(
            "source {name} is a {engine} dump; --into-url must be a {engine}:// URL"
        )));
    }
    let password = match &request.password_file {
        Some(file) => Some(source::child::read_password_file(file)?),
        None => std::env::var(server.password_env).ok(),
    };
    Ok(IntoServer {
        url: request.url.clone(),
        password,
        create: request.create,
        clean: request.clean,
    })
}

/// Where one source is restored to.
#[derive(Debug, Clone)]
pub enum Destination {
    /// The source's own directory (`DIR/<source>`), with the entries `Filter` selects
    /// (directory sources only; `None`: everything).
    Dir(PathBuf, RestoreOptions, Option<Arc<Filter>>),
    Server(IntoServer),
}

/// `restore --include/--exclude`: which entries of a directory source are restored.
/// Globs as in the policy's excludes (`*` stays within one name, `**` crosses `/`); a
/// pattern that matches a directory selects everything under it.
#[derive(Debug)]
pub struct Filter {
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
}

impl Filter {
    /// `None` when both lists are empty (everything is restored).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Option<Self>, RestoreError> {
        let set = |patterns: &[String]| -> Result<Option<globset::GlobSet>, RestoreError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = globset::GlobSetBuilder::new();
            for p in patterns {
                let glob =
                    globset::GlobBuilder::new(p.trim_start_matches('/').trim_end_matches('/'))
                        .literal_separator(true)
                        .build()
                        .map_err(|e| RestoreError::Usage(format!("bad pattern {p:?}: {e}")))?;
                b.add(glob);
            }
            b.build()
                .map(Some)
                .map_err(|e| RestoreError::Usage(e.to_string()))
        };
        let (include, exclude) = (set(include)?, set(exclude)?);
        Ok((include.is_some() || exclude.is_some()).then_some(Filter { include, exclude }))
    }

    /// Whether the entry at `path` (as archived) is restored.
    pub fn accepts(&self, path: &str) -> bool {
        let hit = |set: &globset::GlobSet| {
            path.match_indices('/')
                .map(|(i, _)| &path[..i])
                .chain(std::iter::once(path))
                .any(|p| set.is_match(p))
        };
        self.include.as_ref().is_none_or(hit) && !self.exclude.as_ref().is_some_and(hit)
    }
}

/// The stored object of `entry` as a blocking reader (for a blocking thread).
pub async fn open_object(
    target: &Target,
    manifest: &Manifest,
    entry: &SourceEntry,
) -> Result<Box<dyn std::io::Read + Send>, RestoreError> {
    let key = snapshot::object_key(&manifest.job, &manifest.snapshot, &entry.object);
    target
        .reader(&key)
        .await
        .map_err(|source| RestoreError::Read {
            target: target.name.clone(),
            key: key.to_string(),
            source,
        })
}

/// Restores one source of `manifest` from `target` into `dest`, checking the stored and
/// plain sha256 against the manifest on the way. An incremental directory object brings
/// its chain (`chain`), each base judged by `trust`.
#[allow(clippy::too_many_arguments)]
pub async fn restore_source(
    target: &Target,
    manifest: &Manifest,
    name: &str,
    entry: &SourceEntry,
    identities: Option<Arc<Identities>>,
    dest: Destination,
    trust: &Trust,
    progress: &crate::progress::Progress,
) -> Result<Restored, RestoreError> {
    if !entry.is_full() {
        let Destination::Dir(dir, options, filter) = dest else {
            return Err(RestoreError::Usage(format!(
                "source {name} is a directory: restore it with --to DIR"
            )));
        };
        let links = chain::resolve(target, manifest, name, entry, trust).await?;
        let how = source::directory::Unpack {
            overwrite: options.overwrite,
            same_owner: options.same_owner,
            data: source::directory::Data::Write,
        };
        return chain::restore(target, &links, identities, dir, how, filter).await;
    }
    let reader = open_object(target, manifest, entry).await?;
    let input = progress.reader(name, entry.stored.bytes, reader);
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || -> Result<Restored, RestoreError> {
        let mut decoded = crate::pipeline::decode(input, &entry, identities.as_deref())?;
        let restored = match &dest {
            Destination::Server(into) => source::restore_into(&entry, &mut decoded.reader, into)?,
            Destination::Dir(dir, options, None) => {
                source::restore(&entry, &mut decoded.reader, dir, *options)?
            }
            Destination::Dir(dir, options, Some(filter)) => {
                if !matches!(entry.stats, SourceStats::Tree { .. }) {
                    return Err(RestoreError::Usage(format!(
                        "--include/--exclude select entries of directory sources; {} is a {} source (leave it out with --skip)",
                        entry.object, entry.kind
                    )));
                }
                let how = source::directory::Unpack {
                    overwrite: options.overwrite,
                    same_owner: options.same_owner,
                    data: source::directory::Data::Write,
                };
                source::directory::restore_selected(&mut decoded.reader, dir, how, &|p, _| {
                    filter.accepts(p)
                })?
            }
        };
        decoded.finish()?;
        Ok(restored)
    })
    .await
    .map_err(|e| RestoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&v(include), &v(exclude)).unwrap().unwrap()
    }

    #[test]
    fn include_and_exclude_select_entries_and_whole_directories() {
        let f = filter(&["docs", "*.pdf", "/a/b/*.txt"], &["**/secret*"]);
        assert!(f.accepts("docs"));
        assert!(
            f.accepts("docs/deep/x.bin"),
            "a directory brings what is under it"
        );
        assert!(f.accepts("x.pdf"));
        assert!(!f.accepts("sub/x.pdf"), "`*` stays within one name");
        assert!(f.accepts("a/b/c.txt"));
        assert!(!f.accepts("a/b/c/d.txt"));
        assert!(!f.accepts("docs/secret.key"), "excluded wins");
        assert!(!f.accepts("other.txt"));
        let only_exclude = filter(&[], &["cache"]);
        assert!(only_exclude.accepts("src/main.rs"));
        assert!(!only_exclude.accepts("cache/x"));
        assert!(Filter::new(&[], &[]).unwrap().is_none());
        assert!(Filter::new(&["[".into()], &[]).is_err());
    }
}
