//! Telling the outside world: `[[notify]]` webhooks (a POST per event, in the receiver's
//! own **format**: see `format`) and per-job
//! healthchecks-style pings (`URL/start`, `URL`, `URL/fail`). Deliveries run in the
//! background, are retried a few times, and never block or fail a backup; `flush` waits
//! (bounded) for the ones still under way before the process exits.
//!
//! Webhook and ping URLs often carry a token in their path, so only scheme and host are
//! ever logged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

pub mod email;
pub mod format;
pub use format::Format;

/// `[[notify]]`: one webhook.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPolicy {
    pub url: String,
    /// The receiver's format (default: backupd's JSON event).
    #[serde(default)]
    pub format: Format,
    /// Which events to send (default: all of them); `on` is the same key.
    #[serde(default = "all_events", alias = "on")]
    pub events: Vec<EventKind>,
    /// A name for logs and `backupd_notify_failures_total` (default: format@host).
    #[serde(default)]
    pub name: Option<String>,
    /// A link every message carries, e.g. the daemon's status page.
    #[serde(default)]
    pub link: Option<String>,
    /// `format = "email"`: the sender, the recipients, the SMTP login (the password from
    /// `password_file`, 0600, or `BACKUPD_SMTP_PASSWORD`) and an extra CA to trust.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Only these jobs (default: every job).
    #[serde(default)]
    pub jobs: Vec<String>,
    /// Per attempt.
    #[serde(
        default = "default_timeout_secs",
        deserialize_with = "crate::units::secs::deserialize"
    )]
    pub timeout_secs: u64,
}

fn all_events() -> Vec<EventKind> {
    vec![
        EventKind::Success,
        EventKind::Failure,
        EventKind::Stale,
        EventKind::Recovered,
        EventKind::VerifyFailure,
    ]
}

impl WebhookPolicy {
    /// What logs and the failure metric call this notifier: never its URL's path, which
    /// often holds a token.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = url::Url::parse(&self.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default();
            format!(
                "{}@{host}",
                serde_json::to_value(self.format)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )
        })
    }
}

fn default_timeout_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A run committed its snapshot everywhere (and verified, when asked).
    Success,
    /// A run failed (hook, source, target, verification).
    Failure,
    /// The freshness alarm went off: no snapshot newer than `alert_if_older_than`.
    Stale,
    /// A stale job has a fresh snapshot again.
    Recovered,
    /// A scheduled verification found a snapshot that does not restore.
    VerifyFailure,
}

/// The JSON body of a webhook POST; a stable interface (BACKUP_POLICY.md, "Notifications").
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub job: String,
    /// `success`, `failure`, `stale` or `fresh`.
    pub status: String,
    /// The snapshot id of the run, when it got one.
    pub snapshot: Option<String>,
    /// What went wrong, for failures and alarms.
    pub error: Option<String>,
    pub host: String,
    /// The daemon's `daemon.instance`, when known.
    pub instance: Option<String>,
    pub time: DateTime<Utc>,
    /// Targets the snapshot was committed to.
    pub committed: Vec<String>,
    /// Bytes read from the sources, and stored (compressed, encrypted), for a run.
    pub plain_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub duration_seconds: Option<f64>,
}

impl Event {
    /// An event about `job` now, its `status` word derived from the kind.
    pub fn new(job: &str, event: EventKind, error: Option<String>) -> Self {
        Event {
            event,
            job: job.into(),
            status: match event {
                EventKind::Success => "success",
                EventKind::Failure => "failure",
                EventKind::Stale => "stale",
                EventKind::Recovered => "fresh",
                EventKind::VerifyFailure => "failure",
            }
            .into(),
            snapshot: None,
            error,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            instance: None,
            time: Utc::now(),
            committed: Vec::new(),
            plain_bytes: None,
            stored_bytes: None,
            duration_seconds: None,
        }
    }
}

/// Policy checks of one `[[notify]]`: each problem with the key it is about.
pub fn check(hook: &WebhookPolicy) -> Vec<(&'static str, crate::error::Invalid)> {
    if hook.format == Format::Email {
        return email::check(hook);
    }
    check_url(&hook.url)
        .err()
        .map(|e| ("url", e))
        .into_iter()
        .collect()
}

/// A check of a notification URL at policy load time.
pub fn check_url(url: &str) -> Result<(), crate::error::Invalid> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{:?} is not a URL: {e}", shown(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(crate::error::Invalid(format!(
            "{} must be an http:// or https:// URL",
            shown(url)
        )));
    }
    Ok(())
}

/// Scheme and host only: enough to know where it went, never a token.
pub fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "<unparsable URL>".into(),
    }
}

const ATTEMPTS: u32 = 3;

/// Told the label of a notifier whose delivery gave up.
type FailureCounter = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Sends notifications in the background.
#[derive(Clone)]
pub struct Notifier {
    client: reqwest::Client,
    hooks: std::sync::Arc<std::sync::RwLock<Vec<WebhookPolicy>>>,
    tasks: TaskTracker,
    /// Called with a notifier's label when a delivery gave up (the daemon counts them).
    on_failure: Option<FailureCounter>,
    /// `daemon.instance`, put in every event that does not name one.
    instance: Option<String>,
}

impl Notifier {
    pub fn new(hooks: Vec<WebhookPolicy>) -> Self {
        Notifier {
            client: reqwest::Client::builder()
                .user_agent(concat!("backupd/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            hooks: std::sync::Arc::new(std::sync::RwLock::new(hooks)),
            tasks: TaskTracker::new(),
            on_failure: None,
            instance: None,
        }
    }

    /// Events name `instance` (`daemon.instance`) beside the host.
    pub fn for_instance(mut self, instance: String) -> Self {
        self.instance = Some(instance);
        self
    }

    /// Calls `count` with the notifier's label whenever a delivery gives up.
    pub fn counting_failures(mut self, count: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(std::sync::Arc::new(count));
        self
    }

    /// Replaces the webhooks (policy reload); deliveries under way finish.
    pub fn set_hooks(&self, hooks: Vec<WebhookPolicy>) {
        *self.hooks.write().unwrap_or_else(|e| e.into_inner()) = hooks;
    }

    /// Queues `event` for every webhook that wants it.
    pub fn send(&self, mut event: Event) {
        if event.instance.is_none() {
            event.instance = self.instance.clone();
        }
        let hooks = self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone();
        for hook in &hooks {
            // `failure` has always included failed verifications; `verify_failure` alone
            // selects only those.
            let wanted = hook.events.contains(&event.event)
                || (event.event == EventKind::VerifyFailure
                    && hook.events.contains(&EventKind::Failure));
            if !wanted || (!hook.jobs.is_empty() && !hook.jobs.contains(&event.job)) {
                continue;
            }
            if hook.format == Format::Email {
                let (hook, event) = (hook.clone(), event.clone());
                self.deliver(hook.label(), shown(&hook.url), move || {
                    let (hook, event) = (hook.clone(), event.clone());
                    async move { email::send(&hook, &event).await }
                });
                continue;
            }
            let rendered = format::render(hook.format, &event, hook.link.as_deref());
            let mut request = self
                .client
                .post(&hook.url)
                .timeout(Duration::from_secs(hook.timeout_secs))
                .header(reqwest::header::CONTENT_TYPE, rendered.content_type)
                .body(rendered.body);
            for (name, value) in rendered.headers {
                request = request.header(name, value);
            }
            self.deliver(hook.label(), shown(&hook.url), http_attempt(request));
        }
    }

    /// A healthchecks-style ping: `suffix` is `/start`, `` or `/fail`; `body` is the log
    /// excerpt healthchecks shows beside the ping.
    pub fn ping(&self, url: Option<&str>, suffix: &str, body: String) {
        let Some(url) = url else { return };
        let full = format!("{}{suffix}", url.trim_end_matches('/'));
        let request = self
            .client
            .post(&full)
            .timeout(Duration::from_secs(default_timeout_secs()))
            .body(body);
        self.deliver(shown(&full), shown(&full), http_attempt(request));
    }

    /// Runs `attempt` in the background until it succeeds, at most `ATTEMPTS` times;
    /// `shown` is where it goes, safe to log.
    fn deliver<F, Fut>(&self, label: String, shown: String, attempt: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send,
    {
        let on_failure = self.on_failure.clone();
        self.tasks.spawn(async move {
            let mut delay = Duration::from_millis(500);
            for n in 1..=ATTEMPTS {
                let outcome = match attempt().await {
                    Ok(()) => return,
                    Err(why) => why,
                };
                if n == ATTEMPTS {
                    tracing::warn!(
                        notifier = %label,
                        "notification to {shown} failed after {ATTEMPTS} attempts: {outcome}"
                    );
                    if let Some(count) = &on_failure {
                        count(&label);
                    }
                } else {
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        });
    }

    /// Waits for deliveries under way, at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "gave up waiting for notifications after {} s",
                limit.as_secs()
            );
        }
        self.tasks.reopen();
    }
}

/// One HTTP delivery attempt of `request`.
fn http_attempt(
    request: reqwest::RequestBuilder,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + 'static {
    move || {
        let req = request.try_clone();
        Box::pin(async move {
            let Some(req) = req else {
                return Err("the request cannot be repeated".into());
            };
            match req.send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(format!("HTTP {}", resp.status())),
                // reqwest errors carry the URL; print only its kind.
                Err(e) => Err(describe(e)),
            }
        })
    }
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        e.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_shown_with_their_path() {
        assert!(check_url("https://hc-ping.example/abc").is_ok());
        assert!(check_url("ftp://x/y").unwrap_err().0.contains("http"));
        assert!(check_url("not a url").unwrap_err().0.contains("not a URL"));
        let s = shown("https://hooks.example:8443/services/T000/B000/SECRET");
        assert_eq!(s, "https://hooks.example:8443/…");
        assert!(!s.contains("SECRET"));
    }
}
