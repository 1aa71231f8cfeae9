//! The **email** notifier: the same event as a plain-text mail over SMTP, encrypted
//! always — `smtp://HOST[:587]` upgrades with STARTTLS (refusing a server that does not
//! offer it, so no credentials or mail ever cross in the clear), `smtps://HOST[:465]` is TLS
//! from the first byte. The server's certificate is checked against the built-in web roots
//! plus `ca_file`. The password comes from `password_file` (0600, never group- or
//! world-readable) or `BACKUPD_SMTP_PASSWORD`, and is never logged.

use std::path::Path;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Event, WebhookPolicy, format};
use crate::error::Invalid;

/// Where the password comes from when `password_file` is not set.
pub const PASSWORD_ENV: &str = "BACKUPD_SMTP_PASSWORD";

/// Policy checks of an email notifier: each problem with the key it is about.
pub fn check(hook: &WebhookPolicy) -> Vec<(&'static str, Invalid)> {
    let mut out = Vec::new();
    match url::Url::parse(&hook.url) {
        Ok(u) if matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                out.push((
                    "url",
                    Invalid("put the SMTP user in `username` and its password in `password_file`, not in the URL".into()),
                ));
            }
        }
        _ => out.push((
            "url",
            Invalid(format!(
                "{} is not an SMTP server URL: use \"smtp://mail.example.com:587\" (STARTTLS) or \"smtps://mail.example.com:465\" (TLS)",
                super::shown(&hook.url)
            )),
        )),
    }
    match &hook.from {
        None => out.push((
            "from",
            Invalid("an email notifier needs `from = \"backupd@example.com\"`".into()),
        )),
        Some(f) if f.parse::<Mailbox>().is_err() => {
            out.push(("from", Invalid(format!("{f:?} is not a mail address"))))
        }
        Some(_) => {}
    }
    if hook.to.is_empty() {
        out.push((
            "to",
            Invalid("an email notifier needs `to = [\"ops@example.com\"]`".into()),
        ));
    }
    for t in &hook.to {
        if t.parse::<Mailbox>().is_err() {
            out.push(("to", Invalid(format!("{t:?} is not a mail address"))));
        }
    }
    if hook.password_file.is_some() && hook.username.is_none() {
        out.push((
            "username",
            Invalid("`password_file` is set but `username` is not".into()),
        ));
    }
    out
}

/// Builds the mail for `event` and sends it; the error says what failed without secrets.
pub async fn send(hook: &WebhookPolicy, event: &Event) -> Result<(), String> {
    let mail = message(hook, event)?;
    let transport = transport(hook)?;
    transport
        .send(mail)
        .await
        .map(|_| ())
        .map_err(|e| describe(&e))
}

fn message(hook: &WebhookPolicy, event: &Event) -> Result<Message, String> {
    let from: Mailbox = hook
        .from
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("from: {e}"))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(format::headline(event));
    for to in &hook.to {
        builder = builder.to(to.parse().map_err(|e| format!("to {to:?}: {e}"))?);
    }
    let mut body = format::facts(event)
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(err) = &event.error {
        body.push_str(&format!("\n\nError:\n{err}"));
    }
    if let Some(link) = &hook.link {
        body.push_str(&format!("\n\nStatus page: {link}"));
    }
    body.push('\n');
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("building the mail: {e}"))
}

fn transport(hook: &WebhookPolicy) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let url = url::Url::parse(&hook.url).map_err(|e| format!("url: {e}"))?;
    let host = url.host_str().unwrap_or_default().to_string();
    let implicit = url.scheme() == "smtps";
    let mut tls = TlsParameters::builder(host.clone());
    if let Some(ca) = &hook.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("ca_file {}: not a PEM certificate: {e}", ca.display()))?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = tls.build().map_err(|e| format!("TLS settings: {e}"))?;
    let port = url.port().unwrap_or(if implicit { 465 } else { 587 });
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(std::time::Duration::from_secs(hook.timeout_secs)))
        .tls(if implicit {
            Tls::Wrapper(tls)
        } else {
            Tls::Required(tls)
        });
    if let Some(user) = &hook.username {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password(hook.password_file.as_deref())?,
        ));
    }
    Ok(builder.build())
}

fn password(file: Option<&Path>) -> Result<String, String> {
    match file {
        Some(f) => crate::secret::read_password_file(f).map_err(|e| e.to_string()),
        None => std::env::var(PASSWORD_ENV).map_err(|_| {
            format!(
                "`username` is set but neither `password_file` nor {PASSWORD_ENV} gives a password"
            )
        }),
    }
}

/// What went wrong, in words that carry no credential (lettre's errors name the server
/// response and the failing step).
fn describe(e: &lettre::transport::smtp::Error) -> String {
    if e.is_permanent() {
        format!("the SMTP server refused: {e}")
    } else if e.is_transient() {
        format!("the SMTP server asked to retry later: {e}")
    } else {
        format!("SMTP: {e}")
    }
}
