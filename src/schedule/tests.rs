use chrono::{Datelike, TimeZone, Utc, Weekday};

use super::*;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn berlin(expr: &str) -> Schedule {
    Schedule::parse(expr, chrono_tz::Europe::Berlin).unwrap()
}

#[test]
fn daily_0230_berlin_across_spring_forward_runs_once_at_0300() {
    let s = berlin("30 2 * * *");
    // 2026-03-29 02:00 CET the clocks jump to 03:00 CEST (01:00 UTC).
    let a = s.next_after(utc(2026, 3, 27, 12, 0, 0)).unwrap();
    assert_eq!(a, utc(2026, 3, 28, 1, 30, 0), "02:30 CET");
    let b = s.next_after(a).unwrap();
    assert_eq!(
        b,
        utc(2026, 3, 29, 1, 0, 0),
        "02:30 does not exist: 03:00 CEST"
    );
    let c = s.next_after(b).unwrap();
    assert_eq!(c, utc(2026, 3, 30, 0, 30, 0), "02:30 CEST");
}

#[test]
fn daily_0230_berlin_across_fall_back_runs_once() {
    let s = berlin("30 2 * * *");
    // 2026-10-25 03:00 CEST the clocks go back to 02:00 CET (01:00 UTC): 02:30 happens
    // at 00:30 UTC and again at 01:30 UTC.
    let a = s.next_after(utc(2026, 10, 24, 12, 0, 0)).unwrap();
    assert_eq!(a, utc(2026, 10, 25, 0, 30, 0), "first 02:30 (CEST)");
    let b = s.next_after(a).unwrap();
    assert_eq!(
        b,
        utc(2026, 10, 26, 1, 30, 0),
        "not again at the second 02:30"
    );
    // Asked from inside the repeated hour, it still does not fire a second time.
    assert_eq!(
        s.next_after(utc(2026, 10, 25, 1, 10, 0)).unwrap(),
        utc(2026, 10, 26, 1, 30, 0)
    );
}

#[test]
fn previous_fire_time_sees_the_first_occurrence_from_inside_a_fold() {
    let s = berlin("30 2 * * *");
    // 01:10 UTC is 02:10 CET, the second pass through 02:xx; 02:30 already ran at 00:30.
    assert_eq!(
        s.prev_at_or_before(utc(2026, 10, 25, 1, 10, 0)).unwrap(),
        utc(2026, 10, 25, 0, 30, 0)
    );
    assert_eq!(
        s.prev_at_or_before(utc(2026, 3, 29, 1, 0, 0)).unwrap(),
        utc(2026, 3, 29, 1, 0, 0),
        "inclusive, and the gap's stand-in time"
    );
    assert_eq!(
        s.prev_at_or_before(utc(2026, 3, 29, 0, 59, 59)).unwrap(),
        utc(2026, 3, 28, 1, 30, 0)
    );
}

#[test]
fn hourly_schedule_has_no_duplicate_or_missing_instant_around_spring_forward() {
    let s = berlin("15 * * * *");
    let mut t = utc(2026, 3, 28, 23, 0, 0);
    let mut seen = Vec::new();
    for _ in 0..5 {
        t = s.next_after(t).unwrap();
        seen.push(t);
    }
    // 00:15, 01:15 CET, (02:15 missing → 03:00 CEST), 03:15, 04:15 CEST.
    assert_eq!(
        seen,
        vec![
            utc(2026, 3, 28, 23, 15, 0),
            utc(2026, 3, 29, 0, 15, 0),
            utc(2026, 3, 29, 1, 0, 0),
            utc(2026, 3, 29, 1, 15, 0),
            utc(2026, 3, 29, 2, 15, 0),
        ]
    );
}

#[test]
fn five_and_six_fields_and_shortcuts() {
    let from = utc(2026, 6, 1, 10, 0, 0);
    let five = Schedule::parse("30 2 * * *", chrono_tz::UTC).unwrap();
    let six = Schedule::parse("0 30 2 * * *", chrono_tz::UTC).unwrap();
    assert_eq!(five.next_after(from), six.next_after(from));
    assert_eq!(five.next_after(from).unwrap(), utc(2026, 6, 2, 2, 30, 0));

    let every_second = Schedule::parse("* * * * * *", chrono_tz::UTC).unwrap();
    assert_eq!(
        every_second.next_after(from).unwrap(),
        utc(2026, 6, 1, 10, 0, 1)
    );

    let daily = Schedule::parse("@daily", chrono_tz::UTC).unwrap();
    assert_eq!(daily.next_after(from).unwrap(), utc(2026, 6, 2, 0, 0, 0));

    // POSIX weekdays: 0 and 7 are Sunday.
    for expr in ["0 3 * * 0", "0 3 * * 7", "0 3 * * SUN"] {
        let t = Schedule::parse(expr, chrono_tz::UTC)
            .unwrap()
            .next_after(from)
            .unwrap();
        assert_eq!(t.weekday(), Weekday::Sun, "{expr}");
    }
}

#[test]
fn time_zone_shifts_the_fire_instant() {
    let ny = Schedule::parse("0 3 * * *", chrono_tz::America::New_York).unwrap();
    // June: EDT is UTC-4.
    assert_eq!(
        ny.next_after(utc(2026, 6, 1, 0, 0, 0)).unwrap(),
        utc(2026, 6, 1, 7, 0, 0)
    );
}

#[test]
fn bad_expressions_say_what_is_wrong() {
    for (expr, words) in [
        ("", "0 fields"),
        ("* * *", "3 fields"),
        ("0 0 0 1 1 * 2030", "7 fields"),
        ("61 * * * *", "not a cron expression"),
        ("0 3 * * MOO", "not a cron expression"),
        ("0 0 31 2 *", "never matches"),
    ] {
        let e = Schedule::parse(expr, chrono_tz::UTC).unwrap_err();
        assert!(e.to_string().contains(words), "{expr:?}: {e}");
    }
}

/// The slot a run belongs to (`coordination = "lease"`) is the previous fire time, also
/// for a schedule that fires every second, where walking back from three hours ahead
/// would run out of steps.
#[test]
fn a_schedule_every_second_knows_its_previous_fire() {
    let s = Schedule::parse("* * * * * *", chrono_tz::UTC).unwrap();
    let at: DateTime<Utc> = "2026-12-03T07:23:44.340Z".parse().unwrap();
    let prev = s.prev_at_or_before(at).unwrap();
    assert_eq!(
        prev,
        "2026-12-03T07:23:44Z".parse::<DateTime<Utc>>().unwrap()
    );
    let daily = Schedule::parse("30 2 * * *", chrono_tz::UTC).unwrap();
    assert_eq!(
        daily.prev_at_or_before(at).unwrap(),
        "2026-12-03T02:30:00Z".parse::<DateTime<Utc>>().unwrap()
    );
}
