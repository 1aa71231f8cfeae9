//! The **status page** at `/`: the daemon's status (`/status`) as one self-contained HTML
//! page for a person to glance at — per job: state, last and next run, freshness, last
//! verification, snapshots, a size trend; recent snapshots, the spool and the fleet view.
//! Failures are highlighted. Rendered on the server, no script, no external asset (the
//! host may have no internet); it reloads itself every 30 s. It shows only what `/status`
//! already shows (no secrets: URLs are redacted there, errors too).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::status::{JobStatus, Status};
use crate::units::human_bytes;

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 30;

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}
.meta{color:#666}table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #e3e3e3;vertical-align:top}
th{background:#f0f0f0;font-weight:600}tr.bad td{background:#fdecea}tr.warn td{background:#fff6e0}
.pill{display:inline-block;padding:0 .5em;border-radius:.8em;font-weight:600;font-size:.9em}
.ok{background:#e3f4e6;color:#1e6b2f}.failed{background:#d32f2f;color:#fff}.stale{background:#f2a900;color:#000}
.running{background:#1565c0;color:#fff}.idle{background:#eee;color:#444}
.err{font-family:ui-monospace,monospace;font-size:.9em;color:#b71c1c;white-space:pre-wrap}
svg{vertical-align:middle}code{font-family:ui-monospace,monospace;font-size:.92em}
";

/// The page for `status` at `now`.
pub fn render(status: &Status, now: DateTime<Utc>) -> String {
    let mut h = String::with_capacity(16 << 10);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>backupd — {}</title><style>{STYLE}</style></head><body>",
        esc(&overall(status))
    );
    let _ = write!(
        h,
        "<h1>backupd {}</h1><div class=\"meta\">{} · policy <code>{}</code> · up since {} · this page reloads every {REFRESH_SECS} s (as of {})</div>",
        esc(&status.version),
        esc(&status.state),
        esc(&status.policy),
        ago(Some(status.started_at), now),
        now.format("%Y-%m-%d %H:%M:%S UTC")
    );
    jobs_table(&mut h, status, now);
    for (name, j) in &status.jobs {
        if let Some(run) = j.last_run.as_ref().filter(|r| !r.ok()) {
            let _ = write!(
                h,
                "<h2>Last run of {} failed {}</h2><div class=\"err\">{}</div>",
                esc(name),
                ago(Some(run.finished_at), now),
                esc(&run.errors.join("\n"))
            );
        }
    }
    wal_archiving(&mut h, status, now);
    recent_snapshots(&mut h, status, now);
    spool_and_fleet(&mut h, status, now);
    h.push_str("</body></html>\n");
    h
}

/// One word for the title bar: what a glance at a browser tab should tell.
fn overall(status: &Status) -> String {
    let bad = status
        .jobs
        .values()
        .filter(|j| matches!(state(j).0, "FAILED" | "STALE"))
        .count();
    if bad == 0 {
        "all jobs OK".into()
    } else {
        format!(
            "{bad} job{} attention",
            if bad == 1 { " needs" } else { "s need" }
        )
    }
}

/// The job's state word and its CSS class.
fn state(j: &JobStatus) -> (&'static str, &'static str) {
    if j.running.is_some() {
        ("RUNNING", "running")
    } else if j.last_run.as_ref().is_some_and(|r| !r.ok()) {
        ("FAILED", "failed")
    } else if j.fresh == Some(false) {
        ("STALE", "stale")
    } else if j.last_run.is_some() || j.newest_snapshot_at.is_some() {
        ("OK", "ok")
    } else {
        ("NO RUN YET", "idle")
    }
}

fn jobs_table(h: &mut String, status: &Status, now: DateTime<Utc>) {
    h.push_str(
        "<h2>Jobs</h2><table><tr><th>Job</th><th>State</th><th>Last run</th><th>Next run</th>\
         <th>Newest snapshot</th><th>Last verified</th><th>Snapshots</th><th>Stored size (recent runs)</th></tr>",
    );
    for (name, j) in &status.jobs {
        let (word, class) = state(j);
        let row = match class {
            "failed" => " class=\"bad\"",
            "stale" => " class=\"warn\"",
            _ => "",
        };
        let last = match &j.last_run {
            Some(r) => format!(
                "{} {} ({:.1} s, {})",
                if r.ok() { "succeeded" } else { "failed" },
                ago(Some(r.finished_at), now),
                (r.finished_at - r.started_at).num_milliseconds() as f64 / 1000.0,
                human_bytes(r.stored_bytes)
            ),
            None => "–".into(),
        };
        let alarm = j
            .alert_if_older_than_seconds
            .map(|s| format!(" (alarm after {})", span(s as i64)))
            .unwrap_or_default();
        let verified = match (j.last_verified_at, j.verify_failures) {
            (_, n) if n > 0 => format!(
                "<span class=\"pill failed\">{n} failure{}</span> {}",
                if n == 1 { "" } else { "s" },
                ago(j.last_verified_at, now)
            ),
            (Some(t), _) => ago(Some(t), now),
            (None, _) => "never".into(),
        };
        let counts = j
            .snapshots
            .iter()
            .map(|(t, n)| format!("{} on {}", n, esc(t)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            h,
            "<tr{row}><td><b>{}</b><br><span class=\"meta\">{}</span></td><td><span class=\"pill {class}\">{word}</span></td>\
             <td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(j.schedule.as_deref().unwrap_or("no schedule")),
            esc(&last),
            j.next_run
                .map(|t| format!("in {}", span((t - now).num_seconds())))
                .unwrap_or_else(|| "–".into()),
            ago(j.newest_snapshot_at, now),
            esc(&alarm),
            verified,
            if counts.is_empty() {
                "–".into()
            } else {
                counts
            },
            sparkline(j)
        );
    }
    h.push_str("</table>");
}

/// An inline SVG of the recent snapshots' stored sizes, oldest to newest.
fn sparkline(j: &JobStatus) -> String {
    let sizes: Vec<u64> = j.recent.iter().rev().map(|r| r.stored_bytes).collect();
    if sizes.len() < 2 {
        return j
            .recent
            .first()
            .map(|r| human_bytes(r.stored_bytes))
            .unwrap_or_else(|| "–".into());
    }
    let (w, hgt) = (120.0, 24.0);
    let max = *sizes.iter().max().unwrap_or(&1) as f64;
    let min = *sizes.iter().min().unwrap_or(&0) as f64;
    let range = (max - min).max(1.0);
    let step = w / (sizes.len() - 1) as f64;
    let points = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                hgt - 2.0 - (*s as f64 - min) / range * (hgt - 4.0)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "<svg width=\"{w}\" height=\"{hgt}\" role=\"img\" aria-label=\"stored size trend\"><polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{points}\"/></svg> {}",
        human_bytes(*sizes.last().unwrap_or(&0))
    )
}

/// Each base backup source's WAL archiving, as its server reports it: a failing
/// `archive_command` fills the database's disk, so it is highlighted.
fn wal_archiving(h: &mut String, status: &Status, now: DateTime<Utc>) {
    if status.jobs.values().all(|j| j.wal.is_empty()) {
        return;
    }
    h.push_str("<h2>WAL archiving</h2><table><tr><th>Job</th><th>Source</th><th>State</th><th>Last archived</th><th>Waiting</th><th>Failures</th></tr>");
    for (name, j) in &status.jobs {
        for (source, w) in &j.wal {
            let a = &w.archiver;
            let failing = a.last_failed_at.is_some() && a.last_failed_at > a.last_archived_at;
            let (word, class, row) = match (&w.error, failing) {
                (Some(_), _) => ("UNKNOWN", "stale", " class=\"warn\""),
                (None, true) => ("FAILING", "failed", " class=\"bad\""),
                (None, false) => ("OK", "ok", ""),
            };
            let last = match (&w.error, &a.last_archived_wal) {
                (Some(e), _) => esc(e),
                (None, Some(f)) => {
                    format!("<code>{}</code> {}", esc(f), ago(a.last_archived_at, now))
                }
                (None, None) => "none yet".into(),
            };
            let _ = write!(
                h,
                "<tr{row}><td>{}</td><td>{}</td><td><span class=\"pill {class}\">{word}</span></td><td>{last}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                esc(source),
                a.ready_files.map_or("?".into(), |n| n.to_string()),
                a.failed_count
            );
        }
    }
    h.push_str("</table>");
}

fn recent_snapshots(h: &mut String, status: &Status, now: DateTime<Utc>) {
    if status.jobs.values().all(|j| j.recent.is_empty()) {
        return;
    }
    h.push_str("<h2>Recent snapshots</h2><table><tr><th>Job</th><th>Snapshot</th><th>Taken</th><th>Stored</th></tr>");
    for (name, j) in &status.jobs {
        for r in j.recent.iter().take(5) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(name),
                esc(&r.snapshot),
                ago(Some(r.started_at), now),
                human_bytes(r.stored_bytes)
            );
        }
    }
    h.push_str("</table>");
}

fn spool_and_fleet(h: &mut String, status: &Status, now: DateTime<Utc>) {
    if !status.spool.is_empty() {
        h.push_str("<h2>Waiting in the spool</h2><table><tr><th>Job</th><th>Snapshot</th><th>For target</th><th>Size</th></tr>");
        for p in &status.spool {
            let _ = write!(
                h,
                "<tr class=\"warn\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&p.job),
                esc(&p.snapshot),
                esc(&p.target),
                human_bytes(p.bytes)
            );
        }
        h.push_str("</table>");
    }
    if status.jobs.values().all(|j| j.fleet.is_empty()) {
        return;
    }
    h.push_str("<h2>Fleet (every instance, from the bucket)</h2><table><tr><th>Instance</th><th>Job</th><th>Target</th><th>Snapshots</th><th>Newest</th></tr>");
    for (name, j) in &status.jobs {
        for e in &j.fleet {
            let old = j
                .alert_if_older_than_seconds
                .is_some_and(|a| (now - e.newest_snapshot_at).num_seconds() > a as i64);
            let _ = write!(
                h,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                if old { " class=\"warn\"" } else { "" },
                esc(&e.instance),
                esc(name),
                esc(&e.target),
                e.snapshots,
                ago(Some(e.newest_snapshot_at), now),
                if old {
                    " <span class=\"pill stale\">STALE</span>"
                } else {
                    ""
                }
            );
        }
    }
    h.push_str("</table>");
}

/// HTML-escapes text: everything shown comes from the policy, the bucket or errors.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) if t <= now => format!("{} ago", span((now - t).num_seconds())),
        Some(t) => format!("in {}", span((t - now).num_seconds())),
        None => "never".into(),
    }
}

/// A duration in its largest sensible unit: `45 s`, `12 min`, `5 h 3 min`, `3 d 4 h`.
fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_bucket_are_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(span(59), "59 s");
        assert_eq!(span(3 * 86400 + 4 * 3600), "3 d 4 h");
    }
}
