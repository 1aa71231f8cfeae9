//! Retention as a pure function: `plan(snapshots, rules, now, tz)` decides keep or delete
//! for each committed snapshot, with the reasons, and touches nothing.
//!
//! Semantics are those of restic's `forget`: walking from newest to oldest, a bucket rule
//! (`keep_hourly = N`, …) keeps the newest snapshot of each of the last N hours/days/ISO
//! weeks/months/years that *have* snapshots; `keep_last` the newest N; `keep_within` all
//! strictly newer than the newest snapshot minus a span in restic's notation, subtracted on
//! the calendar in the job's time zone; `keep_tags` every snapshot with one
//! of the tags. A snapshot kept by several rules is kept once, with every reason. Two rails
//! no rule can override: the newest snapshot and the newest verified one are always kept.

use crate::error::Invalid;
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
    /// restic's notation, e.g. `"1y6m"`, `"14d"`, `"36h"`: everything strictly newer than
    /// the newest snapshot minus this span (calendar arithmetic in the job's time zone).
    #[serde(default)]
    pub keep_within: Option<Within>,
    /// Snapshots carrying any of these tags are kept, e.g. `["pre-migration"]`.
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

/// A `keep_within` span in restic's notation (`1y5m7d2h`: years, **m = months**, days,
/// hours). Nothing else is accepted: `6m` means six months to restic, and a spelling that
/// could mean minutes (`6min`), weeks or seconds is refused with the notation to write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl Within {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let hint = |why: &str| {
            format!(
                "{text:?} {why}; keep_within uses restic's notation: numbers with y (years), m (MONTHS), d (days), h (hours), e.g. \"1y6m\", \"14d\", \"36h\""
            )
        };
        let lower = text.to_ascii_lowercase();
        if lower.contains("min") {
            return Err(Invalid(hint(
                "looks like minutes, which keep_within has no unit for (write hours, e.g. \"1h\")",
            )));
        }
        if lower.contains('w') {
            return Err(Invalid(hint(
                "uses weeks (write days: \"14d\" for two weeks)",
            )));
        }
        if lower.contains('s') {
            return Err(Invalid(hint("uses seconds or a word")));
        }
        let mut out = Within::default();
        let mut seen = String::new();
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            if digits.is_empty() {
                return Err(Invalid(hint("is not a number followed by a unit")));
            }
            let n: u32 = digits.parse().map_err(|_| hint("has a number too large"))?;
            digits.clear();
            if seen.contains(c) {
                return Err(Invalid(hint(&format!("gives '{c}' twice"))));
            }
            seen.push(c);
            match c {
                'y' => out.years = n,
                'm' => out.months = n,
                'd' => out.days = n,
                'h' => out.hours = n,
                _ => return Err(Invalid(hint(&format!("has the unit {c:?}")))),
            }
        }
        if !digits.is_empty() {
            return Err(Invalid(hint("ends in a number without a unit")));
        }
        if seen.is_empty() {
            return Err(Invalid(hint("is empty")));
        }
        Ok(out)
    }

    pub fn is_zero(&self) -> bool {
        *self == Within::default()
    }

    /// `newest` minus this span, as restic computes it: years, months and days on the
    /// wall clock in `tz` (Go's `AddDate`, so 31 March minus a month is 3 March, not the
    /// end of February), then hours as hours.
    pub fn cutoff(&self, newest: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        use chrono::{NaiveDate, TimeZone};
        let local = newest.with_timezone(&tz).naive_local();
        let months_total = (local.year() as i64 - self.years as i64) * 12
            + (local.month0() as i64 - self.months as i64);
        let year = months_total.div_euclid(12) as i32;
        let month = months_total.rem_euclid(12) as u32 + 1;
        let day_offset = local.day() as i64 - 1 - self.days as i64;
        let date = NaiveDate::from_ymd_opt(year, month, 1)
            .and_then(|d| d.checked_add_signed(chrono::Duration::days(day_offset)))
            .unwrap_or(NaiveDate::MIN);
        let wall = date.and_time(local.time());
        let at = match tz.from_local_datetime(&wall) {
            chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
            // Twice on the wall clock (clocks going back): the earlier, as the first time
            // the day reached that hour.
            chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
            // Skipped (clocks going forward): read with the offset before the gap.
            chrono::LocalResult::None => {
                let before = wall - chrono::Duration::hours(1);
                tz.from_local_datetime(&before)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc) + chrono::Duration::hours(1))
                    .unwrap_or(newest)
            }
        };
        at - chrono::Duration::hours(self.hours as i64)
    }
}

impl std::fmt::Display for Within {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        if self.is_zero() {
            write!(f, "0h")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Within {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Within::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Within {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Rules {
    /// About how many days back the rules keep something (the longest rule: a month as
    /// 30 days, a year as 365): a snapshot older than this is deleted. `keep_last` and
    /// `keep_tags` are counted as nothing, since their reach depends on the schedule.
    pub fn span_days(&self) -> u64 {
        let within = self.keep_within.map_or(0, |w| {
            w.years as u64 * 365
                + w.months as u64 * 30
                + w.days as u64
                + (w.hours as u64).div_ceil(24)
        });
        [
            (self.keep_hourly as u64).div_ceil(24),
            self.keep_daily as u64,
            self.keep_weekly as u64 * 7,
            self.keep_monthly as u64 * 30,
            self.keep_yearly as u64 * 365,
            within,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// Rules that would keep nothing are refused: a typo must not delete every snapshot.
    pub fn keeps_something(&self) -> bool {
        self.keep_last
            + self.keep_hourly
            + self.keep_daily
            + self.keep_weekly
            + self.keep_monthly
            + self.keep_yearly
            > 0
            || self.keep_within.is_some_and(|w| !w.is_zero())
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
    /// The snapshots its incremental objects build on: kept as long as it is.
    pub bases: Vec<String>,
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
    let cutoff = rules
        .keep_within
        .zip(newest_time)
        .map(|(w, newest)| w.cutoff(newest, tz));
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
        // Strictly newer than the cut-off, as restic.
        if let Some(cutoff) = cutoff
            && s.time > cutoff
        {
            reasons.push(format!(
                "within {}",
                rules.keep_within.expect("a cut-off comes from keep_within")
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
    keep_bases(&mut out, snapshots);
    out
}

/// A kept snapshot's bases are kept with it (and theirs, down to the full): deleting one
/// would leave the kept snapshot unrestorable.
fn keep_bases(out: &mut [Decision], snapshots: &[SnapshotInfo]) {
    let bases: std::collections::HashMap<&str, &[String]> = snapshots
        .iter()
        .map(|s| (s.id.as_str(), s.bases.as_slice()))
        .collect();
    let at: std::collections::HashMap<String, usize> = out
        .iter()
        .enumerate()
        .map(|(i, d)| (d.snapshot.clone(), i))
        .collect();
    let mut todo: Vec<String> = out
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.snapshot.clone())
        .collect();
    while let Some(id) = todo.pop() {
        for base in bases.get(id.as_str()).copied().unwrap_or_default() {
            // A base this plan does not cover (another instance's, already gone) is not
            // this plan's to keep.
            let Some(&i) = at.get(base) else { continue };
            let reason = format!("base of {id}");
            if !out[i].keep {
                out[i].keep = true;
                todo.push(base.clone());
            }
            if !out[i].reasons.contains(&reason) {
                out[i].reasons.push(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests;
