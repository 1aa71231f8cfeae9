use super::*;
use chrono_tz::{Europe::Berlin, UTC};

fn at(s: &str) -> DateTime<Utc> {
    format!("{s}:00Z")
        .parse()
        .unwrap_or_else(|_| panic!("bad time {s}"))
}

fn snap(time: &str) -> SnapshotInfo {
    SnapshotInfo {
        id: time.to_string(),
        time: at(time),
        tags: vec![],
        verified: false,
        bases: Vec::new(),
    }
}

fn kept(snaps: &[SnapshotInfo], rules: &Rules, tz: Tz) -> Vec<String> {
    let now = at("2030-01-01T00:00");
    let mut k: Vec<String> = plan(snaps, rules, now, tz)
        .into_iter()
        .filter(|d| d.keep)
        .map(|d| d.snapshot)
        .collect();
    k.sort();
    k
}

fn ids(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn series(times: &[&str]) -> Vec<SnapshotInfo> {
    times.iter().map(|t| snap(t)).collect()
}

#[test]
fn a_table_of_rules_keeps_what_restic_would() {
    let days = series(&[
        "2026-11-01T03:00",
        "2026-11-05T03:00",
        "2026-11-10T01:00",
        "2026-11-10T03:00",
        "2026-11-10T23:00",
        "2026-11-11T03:00",
    ]);
    let cases: Vec<(&str, Rules, Vec<&str>)> = vec![
        (
            "keep_last 3",
            Rules {
                keep_last: 3,
                ..Rules::default()
            },
            vec!["2026-11-10T03:00", "2026-11-10T23:00", "2026-11-11T03:00"],
        ),
        (
            "keep_last larger than the set",
            Rules {
                keep_last: 50,
                ..Rules::default()
            },
            vec![
                "2026-11-01T03:00",
                "2026-11-05T03:00",
                "2026-11-10T01:00",
                "2026-11-10T03:00",
                "2026-11-10T23:00",
                "2026-11-11T03:00",
            ],
        ),
        (
            "daily 2 takes the newest of each day",
            Rules {
                keep_daily: 2,
                ..Rules::default()
            },
            vec!["2026-11-10T23:00", "2026-11-11T03:00"],
        ),
        (
            "daily counts only days that have snapshots",
            Rules {
                keep_daily: 4,
                ..Rules::default()
            },
            vec![
                "2026-11-01T03:00",
                "2026-11-05T03:00",
                "2026-11-10T23:00",
                "2026-11-11T03:00",
            ],
        ),
        (
            "hourly",
            Rules {
                keep_hourly: 3,
                ..Rules::default()
            },
            vec!["2026-11-10T03:00", "2026-11-10T23:00", "2026-11-11T03:00"],
        ),
        (
            "weekly (ISO weeks start on Monday)",
            Rules {
                keep_weekly: 2,
                ..Rules::default()
            },
            vec!["2026-11-05T03:00", "2026-11-11T03:00"],
        ),
        (
            "monthly",
            Rules {
                keep_monthly: 3,
                ..Rules::default()
            },
            vec!["2026-11-11T03:00"],
        ),
        (
            "within is relative to the newest snapshot, and strict at its edge",
            Rules {
                keep_within: Some(Within::parse("26h").unwrap()),
                ..Rules::default()
            },
            vec!["2026-11-10T03:00", "2026-11-10T23:00", "2026-11-11T03:00"],
        ),
        (
            "last + weekly combine",
            Rules {
                keep_last: 1,
                keep_weekly: 3,
                ..Rules::default()
            },
            vec!["2026-11-01T03:00", "2026-11-05T03:00", "2026-11-11T03:00"],
        ),
    ];
    for (name, rules, expected) in cases {
        assert_eq!(kept(&days, &rules, UTC), ids(&expected), "case: {name}");
    }
}

#[test]
fn iso_weeks_and_years_across_new_year() {
    // 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in ISO week 2020-W53.
    let s = series(&["2020-12-31T12:00", "2021-01-03T12:00", "2021-01-04T12:00"]);
    let weekly = Rules {
        keep_weekly: 2,
        ..Rules::default()
    };
    assert_eq!(
        kept(&s, &weekly, UTC),
        ids(&["2021-01-03T12:00", "2021-01-04T12:00"])
    );
    let yearly = Rules {
        keep_yearly: 2,
        ..Rules::default()
    };
    assert_eq!(
        kept(&s, &yearly, UTC),
        ids(&["2020-12-31T12:00", "2021-01-04T12:00"])
    );
    let monthly = Rules {
        keep_monthly: 5,
        ..Rules::default()
    };
    assert_eq!(
        kept(&s, &monthly, UTC),
        ids(&["2020-12-31T12:00", "2021-01-04T12:00"])
    );
}

#[test]
fn days_are_counted_in_the_jobs_time_zone_across_dst() {
    // Berlin springs forward on 2026-03-29. 23:30Z on the 28th is already the 29th there.
    let s = series(&["2026-03-28T23:30", "2026-03-29T00:30", "2026-03-29T22:30"]);
    let daily = Rules {
        keep_daily: 2,
        ..Rules::default()
    };
    assert_eq!(
        kept(&s, &daily, Berlin),
        ids(&["2026-03-29T00:30", "2026-03-29T22:30"])
    );
    assert_eq!(
        kept(&s, &daily, UTC),
        ids(&["2026-03-28T23:30", "2026-03-29T22:30"])
    );
}

#[test]
fn the_hour_repeated_when_clocks_go_back_is_two_hours() {
    // Berlin falls back on 2026-10-25: 00:30Z and 01:30Z are both 02:30 local.
    let s = series(&["2026-10-25T00:30", "2026-10-25T01:30"]);
    let hourly = Rules {
        keep_hourly: 2,
        ..Rules::default()
    };
    assert_eq!(
        kept(&s, &hourly, Berlin),
        ids(&["2026-10-25T00:30", "2026-10-25T01:30"])
    );
}

#[test]
fn tags_are_kept_whatever_their_age() {
    let mut s = series(&["2025-01-01T00:00", "2026-11-10T00:00", "2026-11-11T00:00"]);
    s[0].tags = vec!["pre-migration".into()];
    let rules = Rules {
        keep_last: 1,
        keep_tags: vec!["pre-migration".into()],
        ..Rules::default()
    };
    let decisions = plan(&s, &rules, at("2030-01-01T00:00"), UTC);
    let old = decisions
        .iter()
        .find(|d| d.snapshot == "2025-01-01T00:00")
        .unwrap();
    assert!(old.keep);
    assert_eq!(old.reasons, vec!["tag pre-migration"]);
    assert!(
        !decisions
            .iter()
            .find(|d| d.snapshot == "2026-11-10T00:00")
            .unwrap()
            .keep
    );
}

#[test]
fn the_newest_and_the_newest_verified_are_untouchable() {
    let mut s = series(&["2026-11-09T00:00", "2026-11-10T00:00", "2026-11-11T00:00"]);
    s[1].verified = true;
    let rules = Rules {
        keep_last: 1,
        ..Rules::default()
    };
    assert_eq!(
        kept(&s, &rules, UTC),
        ids(&["2026-11-10T00:00", "2026-11-11T00:00"])
    );
    let decisions = plan(&s, &rules, at("2030-01-01T00:00"), UTC);
    let v = decisions
        .iter()
        .find(|d| d.snapshot == "2026-11-10T00:00")
        .unwrap();
    assert_eq!(v.reasons, vec!["newest verified"]);
    // Even rules that keep nothing keep the newest (the policy refuses such rules anyway).
    assert_eq!(
        kept(&s, &Rules::default(), UTC),
        ids(&["2026-11-10T00:00", "2026-11-11T00:00"])
    );
    assert!(!Rules::default().keeps_something());
}

#[test]
fn reasons_from_several_rules_are_all_given() {
    let s = series(&["2026-11-11T00:00"]);
    let rules = Rules {
        keep_last: 1,
        keep_daily: 1,
        keep_monthly: 1,
        ..Rules::default()
    };
    let d = &plan(&s, &rules, at("2030-01-01T00:00"), UTC)[0];
    assert_eq!(
        d.reasons,
        vec!["newest", "last", "daily 2026-11-11", "monthly 2026-11"]
    );
}

#[test]
fn a_snapshot_from_the_future_is_kept() {
    let s = series(&["2026-11-11T00:00", "2031-01-01T00:00"]);
    let rules = Rules {
        keep_last: 1,
        ..Rules::default()
    };
    let plan = plan(&s, &rules, at("2026-11-12T00:00"), UTC);
    assert!(plan.iter().all(|d| d.keep), "neither is deleted: {plan:?}");
    let real = plan
        .iter()
        .find(|d| d.snapshot == "2026-11-11T00:00")
        .unwrap();
    assert_eq!(
        real.reasons,
        vec!["newest", "last"],
        "the future one uses up no rule"
    );
}

#[test]
fn applying_a_plan_then_planning_again_deletes_nothing_more() {
    // Six weeks of snapshots every 5 hours, under several rule sets.
    let start = at("2026-01-01T00:00");
    let all: Vec<SnapshotInfo> = (0..200)
        .map(|i| {
            let t = start + chrono::Duration::hours(5 * i);
            SnapshotInfo {
                id: t.to_rfc3339(),
                time: t,
                tags: vec![],
                verified: i % 37 == 0,
                bases: Vec::new(),
            }
        })
        .collect();
    let rule_sets = [
        Rules {
            keep_last: 3,
            keep_daily: 7,
            keep_weekly: 4,
            ..Rules::default()
        },
        Rules {
            keep_hourly: 10,
            keep_monthly: 2,
            ..Rules::default()
        },
        Rules {
            keep_within: Some(Within::parse("3d").unwrap()),
            keep_yearly: 1,
            ..Rules::default()
        },
    ];
    for rules in rule_sets {
        for tz in [UTC, Berlin] {
            let now = at("2027-01-01T00:00");
            let first = plan(&all, &rules, now, tz);
            let survivors: Vec<SnapshotInfo> = all
                .iter()
                .filter(|s| first.iter().any(|d| d.keep && d.snapshot == s.id))
                .cloned()
                .collect();
            assert!(
                survivors.len() < all.len(),
                "the rules should delete something"
            );
            let second = plan(&survivors, &rules, now, tz);
            assert!(
                second.iter().all(|d| d.keep),
                "second plan deletes more under {rules:?} in {tz}"
            );
        }
    }
}

/// The issue 15 reproductions and every calendar edge, checked against restic 0.14's
/// results on the same timestamps (`forget --keep-within`).
#[test]
fn keep_within_matches_restic() {
    let w = |s: &str| Rules {
        keep_within: Some(Within::parse(s).unwrap()),
        ..Rules::default()
    };
    // 1. The boundary: exactly at newest − 1d is not kept (strictly newer).
    assert_eq!(
        kept(
            &[snap("2026-11-01T03:00"), snap("2026-11-02T03:00")],
            &w("1d"),
            UTC
        ),
        ids(&["2026-11-02T03:00"])
    );
    // 2. A 25-hour day in Berlin (clocks go back on 2026-10-25): one calendar day back
    //    from 13:00 CET is 13:00 CEST the day before, 11:00Z.
    assert_eq!(
        kept(
            &[snap("2026-10-24T11:30"), snap("2026-10-25T12:00")],
            &w("1d"),
            Berlin
        ),
        ids(&["2026-10-24T11:30", "2026-10-25T12:00"])
    );
    // … and a 23-hour day (clocks go forward on 2026-03-29).
    assert_eq!(
        kept(
            &[snap("2026-03-28T10:30"), snap("2026-03-29T10:00")],
            &w("1d"),
            Berlin
        ),
        ids(&["2026-03-29T10:00"]),
        "one calendar day back from 12:00 CEST is 12:00 CET, 11:00Z: 10:30Z is 23.5 h back, yet outside"
    );
    // 3. A year is a calendar year, not 365.25 days.
    assert_eq!(
        kept(
            &[snap("2025-05-31T20:00"), snap("2026-06-01T00:00")],
            &w("1y"),
            UTC
        ),
        ids(&["2026-06-01T00:00"])
    );
    // 4. "6m" is six months.
    assert_eq!(
        kept(
            &[
                snap("2026-05-01T00:00"),
                snap("2026-05-03T00:00"),
                snap("2026-11-02T00:00")
            ],
            &w("6m"),
            UTC
        ),
        ids(&["2026-05-03T00:00", "2026-11-02T00:00"])
    );
}

#[test]
fn calendar_arithmetic_normalises_like_go() {
    let cut = |within: &str, newest: &str, tz: Tz| {
        Within::parse(within)
            .unwrap()
            .cutoff(at(newest), tz)
            .format("%Y-%m-%dT%H:%M")
            .to_string()
    };
    // 31 March − 1 month = 31 February = 3 March (2026 is no leap year).
    assert_eq!(cut("1m", "2026-03-31T12:00", UTC), "2026-03-03T12:00");
    // 29 February − 1 year = 29 February 2027 = 1 March.
    assert_eq!(cut("1y", "2028-02-29T12:00", UTC), "2027-03-01T12:00");
    // Months across a year, days across a month, hours last.
    assert_eq!(cut("1y5m7d2h", "2026-03-05T12:00", UTC), "2024-09-28T10:00");
    // Berlin, a day back across each DST change keeps the wall clock.
    assert_eq!(cut("1d", "2026-10-26T11:00", Berlin), "2026-10-25T11:00");
    assert_eq!(cut("1d", "2026-03-30T10:00", Berlin), "2026-03-29T10:00");
    // Landing in the skipped hour (02:30 on 2026-03-29 does not exist in Berlin).
    assert_eq!(cut("1d", "2026-03-30T00:30", Berlin), "2026-03-29T01:30");
}

#[test]
fn keep_within_spellings_that_could_mean_something_else_are_refused() {
    assert_eq!(
        Within::parse("6m").unwrap(),
        Within {
            months: 6,
            ..Within::default()
        }
    );
    assert_eq!(Within::parse("1y5m7d2h").unwrap().to_string(), "1y5m7d2h");
    for (bad, says) in [
        ("6min", "minutes"),
        ("6 minutes", "minutes"),
        ("30s", "seconds"),
        ("1w", "weeks"),
        ("2 days", "restic's notation"),
        ("14", "without a unit"),
        ("d", "not a number"),
        ("1d1d", "twice"),
        ("", "empty"),
    ] {
        let err = Within::parse(bad).unwrap_err();
        assert!(err.to_string().contains(says), "{bad:?}: {err}");
        assert!(err.to_string().contains("m (MONTHS)"), "{bad:?}: {err}");
    }
}

/// Incrementals keep what they build on: with `keep_last = 2` the two newest stay, and so
/// does the full (and, in a chain, every link) they need; the rest go.
#[test]
fn a_kept_incremental_keeps_its_chain_down_to_the_full() {
    let mut snaps: Vec<SnapshotInfo> = (1..=6)
        .map(|d| snap(&format!("2026-11-0{d}T02:00")))
        .collect();
    // 1 is a full; 2..=4 a chain on it; 5 a new full; 6 a differential on 5.
    for i in 1..4 {
        snaps[i].bases = vec![snaps[i - 1].id.clone()];
    }
    snaps[5].bases = vec![snaps[4].id.clone()];
    let rules = Rules {
        keep_last: 2,
        ..Default::default()
    };
    let kept = |snaps: &[SnapshotInfo]| -> Vec<String> {
        plan(snaps, &rules, at("2026-12-01T00:00"), chrono_tz::UTC)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.snapshot)
            .collect()
    };
    assert_eq!(kept(&snaps), vec![snaps[5].id.clone(), snaps[4].id.clone()]);
    // Without the newer full, the chain's newest is kept, and with it every link.
    let chain = &snaps[..4];
    let mut ids = kept(chain);
    ids.sort();
    assert_eq!(ids, chain.iter().map(|s| s.id.clone()).collect::<Vec<_>>());
    let d = plan(chain, &rules, at("2026-12-01T00:00"), chrono_tz::UTC);
    let full = d.iter().find(|d| d.snapshot == chain[0].id).unwrap();
    assert_eq!(full.reasons, vec![format!("base of {}", chain[1].id)]);
}
