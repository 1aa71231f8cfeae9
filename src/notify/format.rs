//! The **formats** a notification can take, each the receiver's own: backupd's JSON event,
//! a Slack message (text + blocks), a Microsoft Teams Adaptive Card, a Discord embed, an
//! ntfy message (plain text with title, priority and tags as headers). All render the same
//! event: job, instance and host, snapshot, sizes, duration, error, and the notifier's link.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Event, EventKind};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// backupd's own event (BACKUP_POLICY.md, "Notifications").
    #[default]
    Json,
    Slack,
    Teams,
    Discord,
    Ntfy,
    /// A plain-text mail over SMTP (`email`), not an HTTP body.
    Email,
}

/// One HTTP request body and its headers.
pub struct Rendered {
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The event in one line: what a chat preview or a phone notification shows.
pub fn headline(e: &Event) -> String {
    let who = match &e.instance {
        Some(i) if *i != e.host => format!("{} ({})", i, e.host),
        _ => e.host.clone(),
    };
    match e.event {
        EventKind::Success => format!("✅ backupd: {} backed up on {who}", e.job),
        EventKind::Failure => format!("❌ backupd: {} FAILED on {who}", e.job),
        EventKind::VerifyFailure => {
            format!("❌ backupd: verification of {} FAILED on {who}", e.job)
        }
        EventKind::Stale => format!("⚠️ backupd: {} is STALE on {who}", e.job),
        EventKind::Recovered => format!("✅ backupd: {} is fresh again on {who}", e.job),
    }
}

/// The event's facts as (name, value) pairs, in the order every format shows them.
pub fn facts(e: &Event) -> Vec<(&'static str, String)> {
    let mut out = vec![("Job", e.job.clone()), ("Host", e.host.clone())];
    if let Some(i) = &e.instance {
        out.push(("Instance", i.clone()));
    }
    if let Some(s) = &e.snapshot {
        out.push(("Snapshot", s.clone()));
    }
    if let Some(b) = e.stored_bytes {
        out.push(("Stored", crate::units::human_bytes(b)));
    }
    if let Some(b) = e.plain_bytes {
        out.push(("Read", crate::units::human_bytes(b)));
    }
    if let Some(s) = e.duration_seconds {
        out.push(("Duration", format!("{s:.1} s")));
    }
    if !e.committed.is_empty() {
        out.push(("Targets", e.committed.join(", ")));
    }
    out.push(("Time", e.time.format("%Y-%m-%d %H:%M:%S UTC").to_string()));
    out
}

fn failed(e: &Event) -> bool {
    matches!(
        e.event,
        EventKind::Failure | EventKind::VerifyFailure | EventKind::Stale
    )
}

/// Renders `e` for a receiver that speaks `format`; `link` (the status page) is added
/// where the format has a place for it.
pub fn render(format: Format, e: &Event, link: Option<&str>) -> Rendered {
    let title = headline(e);
    let facts = facts(e);
    let json_body = |v: serde_json::Value| Rendered {
        content_type: "application/json",
        headers: Vec::new(),
        body: serde_json::to_vec(&v).expect("JSON serializes"),
    };
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(e).expect("an event serializes");
            if let Some(l) = link {
                v["link"] = json!(l);
            }
            json_body(v)
        }
        Format::Slack => {
            let fields: Vec<_> = facts
                .iter()
                .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{v}")}))
                .collect();
            let mut blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": title}}),
                json!({"type": "section", "fields": fields}),
            ];
            if let Some(err) = &e.error {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Error*\n```{err}```")}}));
            }
            if let Some(l) = link {
                blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{l}|Status page>")}]}));
            }
            // `text` is what notifications and old clients show.
            json_body(json!({"text": title, "blocks": blocks}))
        }
        Format::Teams => {
            let mut body = vec![
                json!({"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true,
                       "color": if failed(e) { "Attention" } else { "Good" }}),
                json!({"type": "FactSet", "facts": facts.iter().map(|(k, v)| json!({"title": k, "value": v})).collect::<Vec<_>>()}),
            ];
            if let Some(err) = &e.error {
                body.push(json!({"type": "TextBlock", "text": err, "wrap": true, "fontType": "Monospace"}));
            }
            let mut card = json!({
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            });
            if let Some(l) = link {
                card["actions"] =
                    json!([{"type": "Action.OpenUrl", "title": "Status page", "url": l}]);
            }
            json_body(json!({
                "type": "message",
                "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
            }))
        }
        Format::Discord => {
            let mut embed = json!({
                "title": title,
                "color": if failed(e) { 0xd32f2f } else { 0x2e7d32 },
                "fields": facts.iter().map(|(k, v)| json!({"name": k, "value": v, "inline": true})).collect::<Vec<_>>(),
                "timestamp": e.time.to_rfc3339(),
            });
            if let Some(err) = &e.error {
                // Discord refuses descriptions over 4096 characters.
                embed["description"] = json!(format!("```{}```", truncate(err, 4000)));
            }
            if let Some(l) = link {
                embed["url"] = json!(l);
            }
            json_body(json!({"content": title, "embeds": [embed]}))
        }
        Format::Ntfy | Format::Email => {
            let mut text = facts
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n");
            if let Some(err) = &e.error {
                text.push_str(&format!("\nError: {err}"));
            }
            let mut headers = vec![
                // ntfy reads UTF-8 titles from this header; keep it ASCII-safe for proxies.
                (
                    "Title",
                    title
                        .chars()
                        .filter(|c| c.is_ascii())
                        .collect::<String>()
                        .trim()
                        .to_string(),
                ),
                (
                    "Priority",
                    if failed(e) { "high" } else { "default" }.to_string(),
                ),
                (
                    "Tags",
                    if failed(e) {
                        "x,backupd"
                    } else {
                        "white_check_mark,backupd"
                    }
                    .to_string(),
                ),
            ];
            if let Some(l) = link {
                headers.push(("Click", l.to_string()));
            }
            Rendered {
                content_type: "text/plain; charset=utf-8",
                headers,
                body: text.into_bytes(),
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            snapshot: Some("2026-12-03T10-00-00.000Z-abcdef".into()),
            stored_bytes: Some(3 << 20),
            duration_seconds: Some(12.5),
            committed: vec!["s3".into()],
            instance: Some("web-1".into()),
            ..Event::new(
                "app",
                kind,
                (kind == EventKind::Failure).then(|| "disk full".into()),
            )
        }
    }

    #[test]
    fn every_format_carries_the_headline_and_the_error() {
        for format in [
            Format::Json,
            Format::Slack,
            Format::Teams,
            Format::Discord,
            Format::Ntfy,
        ] {
            let r = render(
                format,
                &event(EventKind::Failure),
                Some("http://status.example/"),
            );
            let body = String::from_utf8(r.body).unwrap();
            assert!(body.contains("disk full"), "{format:?}: {body}");
            assert!(body.contains("app"), "{format:?}: {body}");
            let linked = body.contains("http://status.example/")
                || r.headers.iter().any(|(_, v)| v == "http://status.example/");
            assert!(linked, "{format:?} carries the link");
        }
    }
}
