//! Retention as a pure function: `plan(snapshots, rules, now, tz)` decides keep or delete
//! for each committed snapshot, with the reasons, and touches nothing.
//!
//! Semantics are those of restic's `forget`: walking from newest to oldest, a bucket rule
//! (`keep_hourly = N`, …) keeps the newest snapshot of each of the last N hours/days/ISO
//! weeks/months/years that *have* snapshots; `keep_last` the newest N; `keep_within` all
//! newer than the newest snapshot minus the duration; `keep_tags` every snapshot with one
//! of the tags. A snapshot kept by several rules is kept once, with every reason. Two rails
//! no rule can override: the newest snapshot and the newest verified one are always kept.

use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The retention rules of a job (or of one of its targets).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// e.g. `"14d"`, `"36h"`: everything newer than the newest snapshot minus this.
    #[serde(default, with = "humantime_serde_opt")]
    pub keep_within: Option<Duration>,
    /// Snapshots carrying any of these tags are kept, e.g. `["pre-migration"]`.
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a duration like \"14d\" or \"36h\": {e}"
                ))
            })
        })
        .transpose()
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

impl Rules {
    /// Rules that would keep nothing are refused: a typo must not delete every snapshot.
    pub fn keeps_something(&self) -> bool {
        self.keep_last
            + self.keep_hourly
            + self.keep_daily
            + self.keep_weekly
            + self.keep_monthly
            + self.keep_yearly
            > 0
            || self.keep_within.is_some_and(|d| !d.is_zero())
            || !self.keep_tags.is_empty()
    }
}

/// What the planner needs to know of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    pub id: String,
    pub time: DateTime<Utc>,
    pub tags: Vec<String>,
    /// A verification of it passed.
    pub verified: bool,
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub snapshot: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept (`daily 2026-11-20`, `last`, `newest verified`); empty when deleted.
    pub reasons: Vec<String>,
}

#[derive(Clone, Copy)]
enum Bucket {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Bucket {
    fn label(self, t: DateTime<Utc>, tz: Tz) -> String {
        let t = t.with_timezone(&tz);
        match self {
            // With the offset: the hour repeated when clocks go back is a different hour.
            Bucket::Hourly => format!("hourly {}", t.format("%Y-%m-%d %H:00%:z")),
            Bucket::Daily => format!("daily {}", t.format("%Y-%m-%d")),
            Bucket::Weekly => {
                let w = t.iso_week();
                format!("weekly {}-W{:02}", w.year(), w.week())
            }
            Bucket::Monthly => format!("monthly {}-{:02}", t.year(), t.month()),
            Bucket::Yearly => format!("yearly {}", t.year()),
        }
    }
}

/// Decides every snapshot, newest first. `now` guards against clock skew: a snapshot
/// from the future is kept, since its time cannot be trusted for any rule.
pub fn plan(
    snapshots: &[SnapshotInfo],
    rules: &Rules,
    now: DateTime<Utc>,
    tz: Tz,
) -> Vec<Decision> {
    let mut sorted: Vec<&SnapshotInfo> = snapshots.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    // Future-dated snapshots are kept aside: they must neither be deleted nor use up a rule.
    let (future, sorted): (Vec<&SnapshotInfo>, Vec<&SnapshotInfo>) =
        sorted.into_iter().partition(|s| s.time > now);
    let newest_time = sorted.first().map(|s| s.time);
    let newest_verified = sorted.iter().find(|s| s.verified).map(|s| s.id.clone());

    let buckets = [
        (Bucket::Hourly, rules.keep_hourly),
        (Bucket::Daily, rules.keep_daily),
        (Bucket::Weekly, rules.keep_weekly),
        (Bucket::Monthly, rules.keep_monthly),
        (Bucket::Yearly, rules.keep_yearly),
    ];
    let mut left: Vec<u32> = buckets.iter().map(|(_, n)| *n).collect();
    let mut last_label: Vec<Option<String>> = vec![None; buckets.len()];
    let mut last_left = rules.keep_last;

    let mut out: Vec<Decision> = future
        .iter()
        .map(|s| Decision {
            snapshot: s.id.clone(),
            time: s.time,
            keep: true,
            reasons: vec!["in the future (clock skew?)".to_string()],
        })
        .collect();
    for (i, s) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if i == 0 {
            reasons.push("newest".to_string());
        }
        if newest_verified.as_deref() == Some(s.id.as_str()) {
            reasons.push("newest verified".to_string());
        }
        if last_left > 0 {
            last_left -= 1;
            reasons.push("last".to_string());
        }
        for (b, ((bucket, _), remaining)) in buckets.iter().zip(left.iter_mut()).enumerate() {
            if *remaining == 0 {
                continue;
            }
            let label = bucket.label(s.time, tz);
            if last_label[b].as_deref() != Some(label.as_str()) {
                *remaining -= 1;
                reasons.push(label.clone());
                last_label[b] = Some(label);
            }
        }
        if let (Some(within), Some(newest)) = (rules.keep_within, newest_time)
            && let Ok(within) = chrono::Duration::from_std(within)
            && s.time >= newest - within
        {
            reasons.push(format!(
                "within {}",
                humantime::format_duration(within.to_std().unwrap_or_default())
            ));
        }
        for tag in &s.tags {
            if rules.keep_tags.contains(tag) {
                reasons.push(format!("tag {tag}"));
            }
        }
        out.push(Decision {
            snapshot: s.id.clone(),
            time: s.time,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests;
