//! The **level** of a directory source's object in one run: a full (level 0), or an
//! incremental on a **base** snapshot, decided from what the targets hold — never from
//! state kept only on this host, so a replica or a rebuilt host continues the chain.
//!
//! A run is a full when asked (`run-now --full`), when this instance has no earlier
//! snapshot of the source, when the newest full is `full_every` old, or when the base
//! cannot be used: its chain is broken, it is missing from a target this run writes to,
//! its newest verification failed, its index cannot be read (decrypting it needs the
//! identity), or `[signing]` refuses it. The last group is reported as a warning on the source: an incremental on a base
//! that a restore could not find would be a backup that does not restore.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::crypto::Identities;
use crate::snapshot::seal::{Judgment, Trust};
use crate::snapshot::{self, Manifest};
use crate::source::directory::incremental::{Base, Chain, IncrementalSpec};
use crate::target::Target;

/// What one source's object will be.
#[derive(Debug, Default)]
pub struct Level {
    /// `None`: a full.
    pub base: Option<Arc<Base>>,
    /// Why a run that could have been incremental is a full, when the operator should
    /// know (a base that cannot be used); logged and stored as a warning.
    pub warning: Option<String>,
}

/// Everything the decision reads besides the targets.
pub struct Ask<'a> {
    pub job: &'a str,
    pub source: &'a str,
    pub spec: &'a IncrementalSpec,
    pub instance: &'a str,
    pub trust: &'a Trust,
    pub identities: Result<Option<Arc<Identities>>, String>,
    pub force_full: bool,
    pub now: DateTime<Utc>,
}

/// Slack on `full_every`, so a daily schedule's few seconds of jitter do not push the
/// weekly full a day later.
const SLACK_SECS: i64 = 3600;

/// Decides the level of `ask.source` for a run writing to `targets`.
pub async fn decide(ask: Ask<'_>, targets: &[Target]) -> Level {
    let full = |why: Option<String>| {
        if let Some(w) = &why {
            tracing::warn!(job = ask.job, source = ask.source, "{w}");
        }
        Level {
            base: None,
            warning: why,
        }
    };
    if ask.force_full {
        tracing::info!(
            job = ask.job,
            source = ask.source,
            "a full, as asked (--full)"
        );
        return full(None);
    }
    // Targets being written to now; a spool stand-in holds only what waits for delivery.
    let mut listed: Vec<(&Target, Vec<Manifest>)> = Vec::new();
    let mut first_listing = None;
    for t in targets.iter().filter(|t| !t.spooled) {
        match snapshot::listing::scan(t, Some(ask.job)).await {
            Ok(mut listing) => {
                listed.push((t, std::mem::take(&mut listing.manifests)));
                first_listing.get_or_insert(listing);
            }
            Err(e) => {
                tracing::warn!(job = ask.job, target = %t.name, "cannot list for the base: {e}")
            }
        }
    }
    let Some((first, all)) = listed.first() else {
        return full(None);
    };
    let by_id: HashMap<&str, &Manifest> = all.iter().map(|m| (m.snapshot.as_str(), m)).collect();
    let mut mine: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.instance() == ask.instance)
        .filter(|m| {
            m.sources
                .get(ask.source)
                .is_some_and(|e| e.index.is_some() && e.kind == "directory")
        })
        .filter(|m| !matches!(ask.trust.judge(m), Judgment::Refused(_)))
        .collect();
    mine.sort_by(|a, b| b.snapshot.cmp(&a.snapshot));
    let Some(newest) = mine.first() else {
        tracing::info!(
            job = ask.job,
            source = ask.source,
            "a full: no earlier snapshot"
        );
        return full(None);
    };
    // The newest snapshot's chain down to its full.
    let mut chain: Vec<&Manifest> = vec![newest];
    loop {
        let last = chain.last().expect("a chain has a link");
        let entry = &last.sources[ask.source];
        let Some(base_id) = &entry.base else { break };
        match by_id.get(base_id.as_str()) {
            Some(b)
                if b.sources
                    .get(ask.source)
                    .is_some_and(|be| be.level < entry.level && be.index.is_some())
                    && !matches!(ask.trust.judge(b), Judgment::Refused(_)) =>
            {
                chain.push(b)
            }
            _ => {
                return full(Some(format!(
                    "this run is a full: the chain of the newest snapshot {} is broken (its base {base_id} is missing or unusable on target {})",
                    newest.snapshot, first.name
                )));
            }
        }
    }
    let newest_full = chain.last().expect("a chain has a link");
    let age = ask.now - newest_full.started_at;
    let every = chrono::Duration::from_std(ask.spec.full_every).unwrap_or(chrono::Duration::MAX);
    if age + chrono::Duration::seconds(SLACK_SECS) >= every {
        tracing::info!(
            job = ask.job,
            source = ask.source,
            "a full: the newest full, {}, is {}h old (full_every)",
            newest_full.snapshot,
            age.num_hours()
        );
        return full(None);
    }
    // Differential: the full is the base; incremental chain: the newest snapshot.
    let base_chain: &[&Manifest] = match ask.spec.chain {
        Chain::Differential => std::slice::from_ref(newest_full),
        Chain::Incremental => &chain,
    };
    let base = base_chain[0];
    // A base whose newest verification failed is not built on: the objects it holds
    // may not restore, and everything on top of it would share that fate.
    if let Some(listing) = &first_listing {
        for link in base_chain {
            if let Some(record) = listing.latest_record(first, ask.job, &link.snapshot).await
                && !record.ok
            {
                return full(Some(format!(
                    "this run is a full: snapshot {} (the base's chain) failed its last verification on target {}",
                    link.snapshot, first.name
                )));
            }
        }
    }
    for (t, all) in &listed[1..] {
        for link in base_chain {
            if !all.iter().any(|m| m.snapshot == link.snapshot) {
                return full(Some(format!(
                    "this run is a full: snapshot {} (the base's chain) is not on target {}",
                    link.snapshot, t.name
                )));
            }
        }
    }
    let identities = match ask.identities {
        Ok(ids) => ids,
        Err(why) => {
            return full(Some(format!(
                "this run is a full: the base's file list is encrypted and {why}"
            )));
        }
    };
    let entry = &base.sources[ask.source];
    match crate::restore::index::index_of(first, base, entry, identities).await {
        Ok((index, true)) => Level {
            base: Some(Arc::new(Base::new(
                base.snapshot.clone(),
                entry.level,
                &index,
            ))),
            warning: None,
        },
        Ok((_, false)) => full(None),
        Err(e) => full(Some(format!(
            "this run is a full: the base {}'s file list cannot be read from target {}: {e}",
            base.snapshot, first.name
        ))),
    }
}
