//! `[targets.NAME]`: where snapshots go and how to reach it. One flat table for every
//! kind of store; keys that do not apply to the URL's scheme are policy errors, so a
//! misplaced `region` is caught instead of ignored.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetPolicy {
    /// `file:///dir`, `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`.
    #[serde(default)]
    pub url: Option<String>,
    /// A local directory relative to the policy file (instead of `url`).
    #[serde(default)]
    pub path: Option<PathBuf>,

    // S3 and S3-compatible servers.
    /// e.g. `"eu-central-1"`; default from `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// S3-compatible server, e.g. `"https://s3.example.internal:9000"` (also: a GCS
    /// emulator's base URL, an Azure Blob endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow `http://` endpoints (test servers, a TLS-terminating proxy on loopback).
    #[serde(default)]
    pub allow_http: bool,
    /// `bucket.host/key` requests instead of `host/bucket/key` (path-style, the default
    /// with `endpoint`, is what most S3-compatible servers want).
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// e.g. `"STANDARD_IA"`, `"GLACIER_IR"`: applied to the data objects (manifests and
    /// verification records stay STANDARD: they are small and read often).
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Server-side encryption: `"AES256"` or `"aws:kms"` (on top of age).
    #[serde(default)]
    pub sse: Option<String>,
    /// KMS key for `sse = "aws:kms"`.
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// Access key id (not secret); default from `AWS_ACCESS_KEY_ID`, then instance metadata.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// File holding the secret access key (mode 0600); default `AWS_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// The checksum every upload carries (`"sha256"`, the default, or `"none"`): the
    /// server checks each object and part against it, and buckets with Object Lock
    /// refuse uploads without one. `"none"` is for S3-compatible servers that refuse the
    /// headers.
    #[serde(default)]
    pub checksum: Option<UploadChecksum>,

    // Azure Blob Storage.
    /// Storage account; default `AZURE_STORAGE_ACCOUNT_NAME`.
    #[serde(default)]
    pub account: Option<String>,
    /// File holding the account key (mode 0600); default `AZURE_STORAGE_ACCOUNT_KEY`.
    #[serde(default)]
    pub access_key_file: Option<PathBuf>,
    /// Talk to Azurite with its well-known development account.
    #[serde(default)]
    pub use_emulator: bool,

    // Google Cloud Storage.
    /// Service account JSON key file; default `GOOGLE_APPLICATION_CREDENTIALS`.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,

    // Every remote store.
    /// Retries of a failed request (with exponential backoff).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    #[serde(
        default = "default_retry_timeout_secs",
        deserialize_with = "crate::units::secs::deserialize"
    )]
    pub retry_timeout_secs: u64,
    /// Connection timeout of each request.
    #[serde(
        default = "default_connect_timeout_secs",
        deserialize_with = "crate::units::secs::deserialize"
    )]
    pub connect_timeout_secs: u64,
    /// Uploads to this target at most this fast (bytes per second, written `"20MiB/s"`),
    /// on top of `daemon.upload_limit`.
    #[serde(default, deserialize_with = "crate::units::rate::deserialize")]
    pub upload_limit: Option<u64>,
    /// The credentials may write but not delete (immutable backups): nothing is deleted
    /// here; retention and cleanup are left to `prune` on a host with delete rights.
    #[serde(default)]
    pub write_only: bool,
}

/// `checksum` of an S3 target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadChecksum {
    Sha256,
    None,
}

fn default_max_retries() -> usize {
    10
}

fn default_retry_timeout_secs() -> u64 {
    180
}

fn default_connect_timeout_secs() -> u64 {
    10
}

/// Which keys belong to which scheme, for the "does not apply" check.
const S3_KEYS: &[&str] = &[
    "region",
    "endpoint",
    "allow_http",
    "virtual_hosted_style",
    "storage_class",
    "sse",
    "sse_kms_key_id",
    "access_key_id",
    "secret_access_key_file",
    "checksum",
];
const AZURE_KEYS: &[&str] = &[
    "account",
    "access_key_file",
    "use_emulator",
    "endpoint",
    "allow_http",
];
const GCS_KEYS: &[&str] = &["service_account_file", "endpoint", "allow_http"];

impl TargetPolicy {
    /// A target given by URL alone, every option at its default.
    pub fn from_url(url: &str) -> Self {
        TargetPolicy {
            url: Some(url.to_string()),
            path: None,
            region: None,
            endpoint: None,
            allow_http: false,
            virtual_hosted_style: false,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            access_key_id: None,
            secret_access_key_file: None,
            checksum: None,
            account: None,
            access_key_file: None,
            use_emulator: false,
            service_account_file: None,
            max_retries: default_max_retries(),
            retry_timeout_secs: default_retry_timeout_secs(),
            connect_timeout_secs: default_connect_timeout_secs(),
            upload_limit: None,
            write_only: false,
        }
    }

    /// The target as one URL; `path` targets become `file://` URLs.
    pub fn url(&self) -> String {
        match (&self.url, &self.path) {
            (Some(url), _) => url.clone(),
            // from_file_path escapes spaces, '#' and '%' that a plain format! would not.
            (None, Some(path)) => url::Url::from_file_path(path)
                .map(String::from)
                .unwrap_or_else(|_| format!("file://{}", path.display())),
            (None, None) => String::new(),
        }
    }

    pub fn scheme(&self) -> String {
        url::Url::parse(&self.url())
            .map(|u| u.scheme().to_string())
            .unwrap_or_default()
    }

    /// The keys set in this table that the URL's scheme does not use.
    pub fn misplaced_keys(&self) -> Vec<&'static str> {
        let set: Vec<&'static str> = [
            ("region", self.region.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("allow_http", self.allow_http),
            ("virtual_hosted_style", self.virtual_hosted_style),
            ("storage_class", self.storage_class.is_some()),
            ("sse", self.sse.is_some()),
            ("sse_kms_key_id", self.sse_kms_key_id.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            (
                "secret_access_key_file",
                self.secret_access_key_file.is_some(),
            ),
            ("checksum", self.checksum.is_some()),
            ("account", self.account.is_some()),
            ("access_key_file", self.access_key_file.is_some()),
            ("use_emulator", self.use_emulator),
            ("service_account_file", self.service_account_file.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect();
        let allowed: &[&str] = match self.scheme().as_str() {
            "s3" => S3_KEYS,
            "az" | "azure" | "abfs" => AZURE_KEYS,
            "gs" => GCS_KEYS,
            _ => &[],
        };
        set.into_iter().filter(|k| !allowed.contains(k)).collect()
    }

    /// Pure checks beyond the URL itself.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for key in self.misplaced_keys() {
            out.push((
                key.to_string(),
                format!(
                    "does not apply to a {}:// target (S3 keys: {}; Azure: {}; GCS: {})",
                    self.scheme(),
                    S3_KEYS.join(", "),
                    AZURE_KEYS.join(", "),
                    GCS_KEYS.join(", ")
                ),
            ));
        }
        if let Some(sse) = &self.sse
            && !matches!(sse.as_str(), "AES256" | "aws:kms" | "aws:kms:dsse")
        {
            out.push((
                "sse".into(),
                format!("{sse:?}: use \"AES256\", \"aws:kms\" or \"aws:kms:dsse\""),
            ));
        }
        if self.sse_kms_key_id.is_some()
            && !matches!(self.sse.as_deref(), Some("aws:kms" | "aws:kms:dsse"))
        {
            out.push(("sse_kms_key_id".into(), "needs sse = \"aws:kms\"".into()));
        }
        if let Some(e) = &self.endpoint {
            match url::Url::parse(e) {
                // Checked first, and the value is not echoed: it would print the secret.
                Ok(u) if !u.username().is_empty() || crate::secret::secret_in_url(&u).is_some() => out.push((
                    "endpoint".into(),
                    "carries credentials (user info or a secret query parameter): the endpoint is logged and shown in /status; use access_key_id and secret_access_key_file".into(),
                )),
                Ok(u) if u.scheme() == "http" && !self.allow_http && !self.use_emulator => out
                    .push((
                        "endpoint".into(),
                        format!("{e:?} is plain http: set allow_http = true if that is intended"),
                    )),
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => out.push((
                    "endpoint".into(),
                    format!(
                        "{e:?} is not an http(s) URL like \"https://s3.example.internal:9000\""
                    ),
                )),
            }
        }
        if self.retry_timeout_secs == 0 || self.connect_timeout_secs == 0 {
            out.push((
                "retry_timeout_secs".into(),
                "timeouts must be above 0".into(),
            ));
        }
        out
    }
}
