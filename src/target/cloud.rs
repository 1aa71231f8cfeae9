//! Opening S3, Azure Blob and GCS targets with object_store's builders: credentials from
//! each cloud's standard environment (`from_env`) or the policy's `*_file` keys (read
//! with the same 0600 rule as every secret), retries and timeouts from the policy, and
//! the URL's path as a key prefix. Errors never contain a secret.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

use super::options::UploadChecksum;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::multipart::MultipartStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use super::TargetPolicy;

/// A remote store as both object_store interfaces: the plain one (get, list, put) and
/// the low-level multipart one, whose upload ids can be journaled and aborted later.
pub struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub multipart: Arc<dyn MultipartStore>,
    /// The URL's path: every key of this target lives under it.
    pub prefix: String,
    pub kind: &'static str,
}

fn retry(spec: &TargetPolicy) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: spec.max_retries,
        retry_timeout: Duration::from_secs(spec.retry_timeout_secs),
    }
}

fn client(spec: &TargetPolicy) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(spec.allow_http)
        .with_connect_timeout(Duration::from_secs(spec.connect_timeout_secs))
        // Parts are up to a few hundred MiB on slow links: no whole-request timeout, but
        // a stalled connection still fails through the connect timeout and retries.
        .with_timeout_disabled()
}

/// Why a cloud store could not be set up (the caller names the target).
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("the URL names no {noun}: use {scheme}://NAME/optional/prefix")]
    NoBucket { noun: &'static str, scheme: String },
    #[error("{key}: {source}")]
    Secret {
        key: &'static str,
        source: crate::secret::SecretError,
    },
    #[error("{0}")]
    Build(#[from] object_store::Error),
    #[error("object_store does not know {key}: {source}")]
    ConfigKey {
        key: &'static str,
        source: object_store::Error,
    },
    #[error("unsupported scheme {0:?}")]
    Scheme(String),
}

fn secret(path: &std::path::Path, key: &'static str) -> Result<String, CloudError> {
    crate::secret::read_password_file(path).map_err(|source| CloudError::Secret { key, source })
}

fn prefix_of(url: &Url) -> String {
    url.path().trim_matches('/').to_string()
}

pub fn open(url: &Url, spec: &TargetPolicy) -> Result<Opened, CloudError> {
    let prefix = prefix_of(url);
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err(CloudError::NoBucket {
            noun: if url.scheme() == "az" {
                "container"
            } else {
                "bucket"
            },
            scheme: url.scheme().to_owned(),
        });
    }
    match url.scheme() {
        "s3" => {
            let checksum = spec.checksum != Some(UploadChecksum::None);
            let mut options = client(spec);
            if checksum {
                // object_store sends `x-amz-checksum-sha256`; S3 emulators (moto) look for
                // the SDKs' `x-amz-sdk-checksum-algorithm` before accepting an upload into
                // a bucket with Object Lock, and S3 itself ignores it.
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(
                    "x-amz-sdk-checksum-algorithm",
                    reqwest::header::HeaderValue::from_static("SHA256"),
                );
                options = options.with_default_headers(headers);
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_retry(retry(spec))
                .with_client_options(options)
                .with_allow_http(spec.allow_http)
                .with_virtual_hosted_style_request(spec.virtual_hosted_style);
            if let Some(r) = &spec.region {
                b = b.with_region(r);
            }
            if let Some(e) = &spec.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(id) = &spec.access_key_id {
                b = b.with_access_key_id(id);
            }
            if let Some(f) = &spec.secret_access_key_file {
                b = b.with_secret_access_key(secret(f, "secret_access_key_file")?);
            }
            if let Some(sse) = &spec.sse {
                b = b.with_config(config_key("aws_server_side_encryption")?, sse);
            }
            if let Some(k) = &spec.sse_kms_key_id {
                b = b.with_config(config_key("aws_sse_kms_key_id")?, k);
            }
            if checksum {
                b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
            }
            let s3 = Arc::new(b.build()?);
            Ok(Opened {
                store: s3.clone(),
                multipart: s3,
                prefix,
                kind: "s3",
            })
        }
        "az" | "azure" => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(&bucket)
                .with_retry(retry(spec))
                .with_client_options(client(spec))
                .with_allow_http(spec.allow_http || spec.use_emulator);
            if spec.use_emulator {
                // object_store's own emulator mode reads its address from a process-wide
                // variable; an explicit path-style endpoint with the published development
                // account does the same per target.
                let base = spec.endpoint.as_deref().unwrap_or(EMULATOR_ENDPOINT);
                b = b
                    .with_account(EMULATOR_ACCOUNT)
                    .with_access_key(EMULATOR_KEY)
                    .with_endpoint(format!("{}/{EMULATOR_ACCOUNT}", base.trim_end_matches('/')));
            } else if let Some(e) = &spec.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(a) = &spec.account {
                b = b.with_account(a);
            }
            if let Some(f) = &spec.access_key_file {
                b = b.with_access_key(secret(f, "access_key_file")?);
            }
            let az = Arc::new(b.build()?);
            Ok(Opened {
                store: az.clone(),
                multipart: az,
                prefix,
                kind: "azure",
            })
        }
        "gs" => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&bucket)
                .with_retry(retry(spec))
                .with_client_options(client(spec));
            if let Some(f) = &spec.service_account_file {
                b = b.with_service_account_path(f.display().to_string());
            }
            if let Some(e) = &spec.endpoint {
                b = b.with_base_url(e);
            }
            let gcs = Arc::new(b.build()?);
            Ok(Opened {
                store: gcs.clone(),
                multipart: gcs,
                prefix,
                kind: "gcs",
            })
        }
        other => Err(CloudError::Scheme(other.to_owned())),
    }
}

/// Azurite's published development account: not a secret.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const EMULATOR_ENDPOINT: &str = "http://127.0.0.1:10000";

fn config_key(key: &'static str) -> Result<AmazonS3ConfigKey, CloudError> {
    key.parse()
        .map_err(|source| CloudError::ConfigKey { key, source })
}
