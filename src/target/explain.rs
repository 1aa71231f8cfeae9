//! Turning object_store errors into messages that say what to fix: a missing bucket or
//! container, bad credentials, an endpoint that does not answer. The store's own words
//! stay at the end for the details.

use super::Target;

/// One line: the cause in plain words, then what the store said.
pub fn explain(target: &Target, err: &object_store::Error) -> String {
    let said = err.to_string();
    let (noun, url_key) = match target.remote.as_ref().map(|r| r.kind) {
        Some("azure") => ("container", "url (az://CONTAINER/prefix)"),
        Some(_) => ("bucket", "url"),
        None => ("directory", "url or path"),
    };
    let bucket = target
        .display_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    let lower = said.to_ascii_lowercase();
    let hint = match err {
        object_store::Error::NotFound { .. }
            if target.remote.is_some()
                && (lower.contains("nosuchbucket")
                    || lower.contains("containernotfound")
                    || lower.contains("specified container does not exist")
                    || lower.contains("bucket")) =>
        {
            format!(
                "{noun} {bucket} does not exist; create it or fix targets.{}.{url_key}",
                target.name
            )
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            format!(
                "access denied: check the credentials of target {} ({}) and that they may write, read, list and delete in {noun} {bucket}",
                target.name,
                credential_hint(target)
            )
        }
        _ if lower.contains("signaturedoesnotmatch")
            || lower.contains("invalidaccesskeyid")
            || lower.contains("authenticationfailed")
            || lower.contains("403 forbidden") =>
        {
            format!(
                "the server rejected the credentials of target {} ({})",
                target.name,
                credential_hint(target)
            )
        }
        // A bucket with Object Lock takes no upload without a checksum.
        _ if lower.contains("missinguploadobjectwithobjectlockheaders")
            || lower.contains("content-md5") && lower.contains("object lock") =>
        {
            format!(
                "bucket {bucket} has Object Lock, which refuses uploads without a checksum: remove `checksum = \"none\"` from [targets.{}]",
                target.name
            )
        }
        _ if lower.contains("no space left")
            || lower.contains("file too large")
            || lower.contains("quota exceeded") =>
        {
            format!(
                "target {} is full (or a file size limit applies): free space there, or prune old snapshots, then run again",
                target.name
            )
        }
        _ if is_unreachable(err) => {
            format!(
                "cannot reach the server of target {}: check its endpoint/region and that the server is up",
                target.name
            )
        }
        _ => return said,
    };
    format!("{hint} ({})", shorten(&said))
}

fn credential_hint(target: &Target) -> &'static str {
    match target.remote.as_ref().map(|r| r.kind) {
        Some("s3") => {
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or access_key_id + secret_access_key_file"
        }
        Some("azure") => {
            "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY, or account + access_key_file"
        }
        Some("gcs") => "GOOGLE_APPLICATION_CREDENTIALS or service_account_file",
        _ => "file permissions",
    }
}

/// Store messages can carry whole XML bodies; a line is enough.
fn shorten(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() > 300 {
        let mut end = 300;
        while !one_line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &one_line[..end])
    } else {
        one_line
    }
}

/// The server did not answer at all (refused, no route, DNS, connect timeout), as
/// opposed to answering with an error: the case the spool is for.
pub fn is_unreachable(err: &object_store::Error) -> bool {
    let lower = err.to_string().to_ascii_lowercase();
    lower.contains("error sending request")
        || lower.contains("connection refused")
        || lower.contains("dns error")
        || (lower.contains("connect") && lower.contains("timed out"))
}
