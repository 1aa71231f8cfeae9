//! The few S3 requests object_store does not make, for immutable buckets: the bucket's
//! **versioning** and **Object Lock** configuration, **ListObjectVersions**, and deleting
//! one **version** (a delete marker, to bring back what it hides). Requests are signed
//! with object_store's own SigV4 signer (`AwsAuthorizer`) and sent with reqwest; nothing
//! here hand-rolls a signature.
//!
//! Credentials: the target's `access_key_id` and `secret_access_key_file`, else
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (instance profiles
//! and web identity are not read by this client).

use object_store::aws::{AwsAuthorizer, AwsCredential};
use serde::Deserialize;
use url::Url;

use super::TargetPolicy;

/// Why a request of this client failed.
#[derive(Debug, thiserror::Error)]
pub enum S3ApiError {
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Http {
        what: String,
        source: reqwest::Error,
    },
    #[error("{what}: the server answered {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: cannot read the answer: {why}")]
    Parse { what: String, why: String },
}

/// A bucket as this client addresses it.
pub struct Bucket {
    http: reqwest::Client,
    credential: AwsCredential,
    region: String,
    /// `https://host[:port]/bucket` (path style) or `https://bucket.host` (virtual host).
    base: Url,
    /// The target's key prefix (the URL's path), without slashes at either end.
    pub prefix: String,
}

/// One version of one key, as ListObjectVersions gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// The key relative to the target's prefix.
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub delete_marker: bool,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// The bucket's Object Lock default, when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Lock {
    /// `GOVERNANCE` or `COMPLIANCE`; `None` when Object Lock is on without a default.
    pub mode: Option<String>,
    pub days: Option<u32>,
}

impl Bucket {
    pub fn new(url: &Url, spec: &TargetPolicy) -> Result<Self, S3ApiError> {
        let setup = |s: &str| S3ApiError::Setup(s.to_string());
        let bucket = url.host_str().unwrap_or_default();
        if url.scheme() != "s3" || bucket.is_empty() {
            return Err(setup(
                "only s3:// targets have versions and Object Lock here",
            ));
        }
        let key_id = spec
            .access_key_id
            .clone()
            .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok())
            .ok_or_else(|| setup("no access_key_id on the target and no AWS_ACCESS_KEY_ID"))?;
        let secret_key = match &spec.secret_access_key_file {
            Some(f) => crate::secret::read_password_file(f)
                .map_err(|e| S3ApiError::Setup(format!("secret_access_key_file: {e}")))?,
            None => std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| {
                setup("no secret_access_key_file on the target and no AWS_SECRET_ACCESS_KEY")
            })?,
        };
        let region = spec
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let base = match &spec.endpoint {
            Some(e) if !spec.virtual_hosted_style => {
                Url::parse(&format!("{}/{bucket}", e.trim_end_matches('/')))
            }
            Some(e) => {
                let mut u = Url::parse(e).map_err(|e| S3ApiError::Setup(e.to_string()))?;
                let host = format!("{bucket}.{}", u.host_str().unwrap_or_default());
                u.set_host(Some(&host))
                    .map_err(|e| S3ApiError::Setup(e.to_string()))?;
                Ok(u)
            }
            None => Url::parse(&format!("https://{bucket}.s3.{region}.amazonaws.com")),
        }
        .map_err(|e| S3ApiError::Setup(format!("endpoint: {e}")))?;
        if base.scheme() == "http" && !spec.allow_http {
            return Err(setup("the endpoint is http:// but allow_http is not set"));
        }
        Ok(Bucket {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(spec.connect_timeout_secs))
                .build()
                .map_err(|e| S3ApiError::Setup(e.to_string()))?,
            credential: AwsCredential {
                key_id,
                secret_key,
                token: std::env::var("AWS_SESSION_TOKEN").ok(),
            },
            region,
            base,
            prefix: url.path().trim_matches('/').to_string(),
        })
    }

    /// Sends one signed request; the body of a 2xx answer.
    async fn send(
        &self,
        what: &str,
        method: reqwest::Method,
        key: Option<&str>,
        query: &[(&str, &str)],
    ) -> Result<String, S3ApiError> {
        let mut url = self.base.clone();
        if let Some(key) = key {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| S3ApiError::Setup("the endpoint cannot take a path".into()))?;
            segments.pop_if_empty();
            segments.extend(key.split('/'));
        } else if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        // S3 signs `?versions` as `versions=`: the form url's serializer writes.
        let mut request: object_store::client::HttpRequest = http::Request::builder()
            .method(method.as_str())
            .uri(url.as_str())
            .body(Vec::<u8>::new().into())
            .map_err(|e| S3ApiError::Setup(e.to_string()))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| S3ApiError::Setup(format!("signing: {e}")))?;
        let mut out = self.http.request(method, url.as_str());
        for (k, v) in request.headers() {
            out = out.header(k.as_str(), v.as_bytes());
        }
        let http_err = |source| S3ApiError::Http {
            what: what.to_string(),
            source,
        };
        let response = out.send().await.map_err(http_err)?;
        let status = response.status();
        let body = response.text().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(S3ApiError::Status {
                what: what.to_string(),
                status: status.as_u16(),
                body: body.chars().take(500).collect(),
            });
        }
        Ok(body)
    }

    /// Whether versioning is enabled (`Enabled`; `Suspended` and never-set are not).
    pub async fn versioning(&self) -> Result<bool, S3ApiError> {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "Status")]
            status: Option<String>,
        }
        let body = self
            .send(
                "GetBucketVersioning",
                reqwest::Method::GET,
                None,
                &[("versioning", "")],
            )
            .await?;
        let v: V = parse("GetBucketVersioning", &body)?;
        Ok(v.status.as_deref() == Some("Enabled"))
    }

    /// The Object Lock configuration; `None` when the bucket has none.
    pub async fn lock(&self) -> Result<Option<Lock>, S3ApiError> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(rename = "ObjectLockEnabled")]
            enabled: Option<String>,
            #[serde(rename = "Rule")]
            rule: Option<Rule>,
        }
        #[derive(Deserialize)]
        struct Rule {
            #[serde(rename = "DefaultRetention")]
            retention: Option<Retention>,
        }
        #[derive(Deserialize)]
        struct Retention {
            #[serde(rename = "Mode")]
            mode: Option<String>,
            #[serde(rename = "Days")]
            days: Option<u32>,
            #[serde(rename = "Years")]
            years: Option<u32>,
        }
        let body = match self
            .send(
                "GetObjectLockConfiguration",
                reqwest::Method::GET,
                None,
                &[("object-lock", "")],
            )
            .await
        {
            Ok(body) => body,
            // No configuration: S3 answers 404 ObjectLockConfigurationNotFoundError.
            Err(S3ApiError::Status { status: 404, .. }) => return Ok(None),
            Err(S3ApiError::Status { body, .. }) if body.contains("ObjectLockConfiguration") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let c: Config = parse("GetObjectLockConfiguration", &body)?;
        if c.enabled.as_deref() != Some("Enabled") {
            return Ok(None);
        }
        let r = c.rule.and_then(|r| r.retention);
        Ok(Some(Lock {
            mode: r.as_ref().and_then(|r| r.mode.clone()),
            days: r
                .as_ref()
                .and_then(|r| r.days.or(r.years.map(|y| y.saturating_mul(365)))),
        }))
    }

    /// Every version and delete marker under `under` (relative to the target's prefix).
    pub async fn versions(&self, under: &str) -> Result<Vec<Version>, S3ApiError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(rename = "IsTruncated", default)]
            truncated: bool,
            #[serde(rename = "NextKeyMarker")]
            next_key: Option<String>,
            #[serde(rename = "NextVersionIdMarker")]
            next_version: Option<String>,
            #[serde(rename = "$value", default)]
            items: Vec<Item>,
        }
        #[derive(Deserialize)]
        enum Item {
            Version(Entry),
            DeleteMarker(Entry),
            #[serde(other)]
            Other,
        }
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Key")]
            key: String,
            #[serde(rename = "VersionId")]
            version_id: String,
            #[serde(rename = "IsLatest")]
            is_latest: bool,
            #[serde(rename = "LastModified")]
            last_modified: chrono::DateTime<chrono::Utc>,
        }
        let full = self.full_key(under);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (String::new(), String::new());
        loop {
            let mut query = vec![("versions", ""), ("prefix", full.as_str())];
            if !key_marker.is_empty() {
                query.push(("key-marker", key_marker.as_str()));
                query.push(("version-id-marker", version_marker.as_str()));
            }
            let body = self
                .send("ListObjectVersions", reqwest::Method::GET, None, &query)
                .await?;
            let page: Page = parse("ListObjectVersions", &body)?;
            for item in page.items {
                let (e, delete_marker) = match item {
                    Item::Version(e) => (e, false),
                    Item::DeleteMarker(e) => (e, true),
                    Item::Other => continue,
                };
                let Some(key) = e.key.strip_prefix(&strip) else {
                    continue;
                };
                out.push(Version {
                    key: key.to_string(),
                    version_id: e.version_id,
                    is_latest: e.is_latest,
                    delete_marker,
                    last_modified: e.last_modified,
                });
            }
            match (page.truncated, page.next_key, page.next_version) {
                (true, Some(k), v) => {
                    key_marker = k;
                    version_marker = v.unwrap_or_default();
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Deletes one version of `key` (relative to the prefix): for a delete marker, this
    /// brings back the version it hid.
    pub async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), S3ApiError> {
        let full = self.full_key(key);
        self.send(
            &format!("DeleteObject {key} version {version_id}"),
            reqwest::Method::DELETE,
            Some(&full),
            &[("versionId", version_id)],
        )
        .await
        .map(|_| ())
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, body: &str) -> Result<T, S3ApiError> {
    quick_xml::de::from_str(body).map_err(|e| S3ApiError::Parse {
        what: what.to_string(),
        why: e.to_string(),
    })
}
