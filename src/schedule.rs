//! Cron schedules evaluated in a job's time zone: parsing (5-field, 6-field with seconds,
//! `@daily`-style shortcuts) and the next/previous fire time, right across daylight-saving
//! changes.
//!
//! Why not a scheduler crate's own time-zone handling: tokio-cron-scheduler keeps the UTC
//! offset it saw when the job was created, and cron libraries that walk instants fire a
//! 02:30 job twice on the night the clocks go back. So the pattern is matched against
//! *wall-clock* time (croner over naive local time, where no DST exists) and each match is
//! then placed on the time line by these rules, the ones Vixie cron follows:
//! - a local time that does not exist (clocks went forward) fires at the first instant
//!   after the gap: 02:30 on the spring-forward night runs at 03:00;
//! - a local time that occurs twice (clocks went back) fires once, at its first occurrence.

use crate::error::Invalid;
use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed `schedule` in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    source: String,
}

/// How many pattern matches to look at before giving up (a pattern like `0 0 30 2 *` never
/// matches; croner reports that itself, this guards the gap-skipping loop).
const MAX_STEPS: usize = 10_000;

impl Schedule {
    /// Parses `expr` (5 fields, 6 with seconds first, or `@hourly`/`@daily`/`@weekly`/
    /// `@monthly`/`@yearly`) for time zone `tz`.
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, Invalid> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(Invalid(format!(
                "{expr:?} has {fields} fields: use 5 (minute hour day month weekday, e.g. \"30 2 * * *\"), 6 with seconds first, or @daily/@hourly/@weekly/@monthly/@yearly"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                format!(
                    "{expr:?} is not a cron expression ({e}); e.g. \"30 2 * * *\" is 02:30 daily"
                )
            })?;
        let schedule = Schedule {
            cron,
            tz,
            source: expr.to_string(),
        };
        // A pattern that can never match (31 February) is an error now, not a silent never.
        schedule
            .next_after(Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap())
            .ok_or_else(|| format!("{expr:?} never matches a date"))?;
        Ok(schedule)
    }

    pub fn expression(&self) -> &str {
        &self.source
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz).naive_local();
        // Matching from `after`'s own wall time is enough: a gap's stand-in instant is the
        // end of the gap, and a repeated time's first occurrence is never after it.
        let mut cursor = floating(local);
        for _ in 0..MAX_STEPS {
            let m = self.cron.find_next_occurrence(&cursor, false).ok()?;
            cursor = m;
            if let Some(at) = self.place(m.naive_utc())
                && at > after
            {
                return Some(at);
            }
        }
        None
    }

    /// The last fire time at or before `at` (used for catch-up: was a run missed?).
    pub fn prev_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Fire times are whole seconds; croner keeps a fraction it is given.
        let local = at.with_timezone(&self.tz).naive_local();
        let local = chrono::Timelike::with_nanosecond(&local, 0).unwrap_or(local);
        // The plain answer first: the last wall-clock match at or before `at`. A schedule
        // firing every second would exhaust the fold-proof walk below before reaching now.
        let plain = self
            .cron
            .find_previous_occurrence(&floating(local), true)
            .ok()
            .and_then(|m| self.place(m.naive_utc()))
            .filter(|t| *t <= at);
        self.prev_past_folds(at, local).max(plain)
    }

    fn prev_past_folds(&self, at: DateTime<Utc>, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        // In a repeated hour the wall clock runs behind `at`: a later wall time may
        // already have fired, so start past any fold.
        let mut cursor = floating(local + Duration::hours(3));
        for _ in 0..MAX_STEPS {
            let m = self.cron.find_previous_occurrence(&cursor, false).ok()?;
            cursor = m;
            if let Some(t) = self.place(m.naive_utc())
                && t <= at
            {
                return Some(t);
            }
        }
        None
    }

    /// Puts a matching wall-clock time on the time line (the DST rules in the module doc).
    /// `None` for the second occurrence of a repeated time, which does not fire.
    fn place(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                // Inside a gap: the first wall time after it, found minute by minute (gaps
                // last at most a few hours), less the seconds `wall` had past its minute.
                let mut probe = wall;
                for _ in 0..(24 * 60) {
                    probe += Duration::minutes(1);
                    if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                        let seconds = i64::from(chrono::Timelike::second(&probe));
                        return Some(t.with_timezone(&Utc) - Duration::seconds(seconds));
                    }
                }
                None
            }
        }
    }
}

/// Wall-clock time as if it were UTC, where every minute exists exactly once.
fn floating(wall: NaiveDateTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&wall)
}

#[cfg(test)]
mod tests;
