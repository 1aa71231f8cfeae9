//! Aligned text tables for `list` and `status`, and the human forms they print (ages like
//! "3h ago"). Machines read `--json` instead; these are for eyes.

use chrono::{DateTime, Utc};

/// Columns padded to their widest cell (by characters, so ✓ counts as one); the last
/// column is not padded.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    // Cells come from targets (tags, ids, reasons): a terminal must never get their
    // escape sequences.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.extend(std::iter::repeat_n(
                    ' ',
                    widths[i] - cell.chars().count() + 2,
                ));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// "just now", "42s ago", "5m ago", "3h ago", "2d ago", "5w ago"; future times "in 3h".
pub fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (abs, future) = (secs.unsigned_abs(), secs < 0);
    let short = match abs {
        0..5 => return "just now".into(),
        5..60 => format!("{abs}s"),
        60..3600 => format!("{}m", abs / 60),
        3600..86_400 => format!("{}h", abs / 3600),
        86_400..1_209_600 => format!("{}d", abs / 86_400),
        _ => format!("{}w", abs / 604_800),
    };
    if future {
        format!("in {short}")
    } else {
        format!("{short} ago")
    }
}

/// `text` with control characters (ESC, CR, BEL, …) shown as `\u{…}` escapes; line
/// breaks and tabs stay.
pub fn printable(text: &str) -> String {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(bad) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if bad(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_human_would_say_them() {
        let now = Utc::now();
        let ago = |s: i64| age(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(2), "just now");
        assert_eq!(ago(42), "42s ago");
        assert_eq!(ago(5 * 60 + 3), "5m ago");
        assert_eq!(ago(3 * 3600 + 100), "3h ago");
        assert_eq!(ago(2 * 86_400), "2d ago");
        assert_eq!(ago(15 * 86_400), "2w ago");
        assert_eq!(ago(-3 * 3600), "in 3h");
    }

    #[test]
    fn columns_align_by_characters() {
        let t = render(
            &["A", "VERIFIED", "Z"],
            &[
                vec!["long-value".into(), "✓".into(), "x".into()],
                vec!["s".into(), "–".into(), "y".into()],
            ],
        );
        assert_eq!(
            t,
            "A           VERIFIED  Z\nlong-value  ✓         x\ns           –         y\n"
        );
    }
}
