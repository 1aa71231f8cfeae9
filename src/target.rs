//! Storage targets: opening an `object_store` from a policy URL, redacting URLs for logs,
//! reading objects as streams, and the write/read/delete reachability probe.
//!
//! There is no storage trait of our own: `Arc<dyn ObjectStore>` already is one, and the
//! local filesystem goes through the same multipart path that S3/GCS/Azure use.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

/// One opened target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// The URL with credentials and query removed: safe for logs and output.
    pub display_url: String,
    pub store: Arc<dyn ObjectStore>,
    /// The directory of a `file://` target, for the few things object_store hides
    /// (unfinished multipart uploads); `None` elsewhere.
    pub local_root: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target {name} ({url}): {message}")]
    Open {
        name: String,
        url: String,
        message: String,
    },
}

/// Pure check of a target URL, for policy validation.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| {
        format!(
            "{:?} is not a URL ({e}); e.g. \"file:///var/backups/backupd\"",
            redact(url)
        )
    })?;
    match parsed.scheme() {
        "file" => {
            if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(
                    "a file URL needs an absolute path (file:///dir, three slashes); for a path relative to the policy use `path = \"…\"`".into(),
                );
            }
            Ok(())
        }
        other => Err(format!(
            "scheme {other:?} is not supported by this build yet (supported: file)"
        )),
    }
}

/// The URL without userinfo and query string, which is where credentials hide.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            if u.query().is_some() {
                u.set_query(Some("REDACTED"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

/// Opens the store behind a target URL. Local directories are created when missing.
pub fn open(name: &str, url: &str) -> Result<Target, TargetError> {
    let display_url = redact(url);
    let fail = |message: String| TargetError::Open {
        name: name.into(),
        url: display_url.clone(),
        message,
    };
    check_url(url).map_err(&fail)?;
    let parsed = Url::parse(url).map_err(|e| fail(e.to_string()))?;
    let (store, local_root): (Arc<dyn ObjectStore>, _) = match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|_| fail("not a local path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                fail(format!(
                    "cannot create directory {}: {e}; create it or fix its permissions",
                    dir.display()
                ))
            })?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| fail(e.to_string()))?
                .with_automatic_cleanup(true);
            (Arc::new(fs), Some(dir))
        }
        other => return Err(fail(format!("unsupported scheme {other:?}"))),
    };
    Ok(Target {
        name: name.into(),
        display_url,
        store,
        local_root,
    })
}

impl Target {
    /// The object's bytes as a blocking reader, for use on a blocking thread. A local
    /// target hands over the open file itself (object_store would stream it in 8 KiB
    /// blocking tasks, the slowest stage of a restore); others stream through a bridge.
    pub async fn reader(
        &self,
        key: &ObjectPath,
    ) -> object_store::Result<Box<dyn std::io::Read + Send>> {
        let got = self.store.get(key).await?;
        Ok(match got.payload {
            object_store::GetResultPayload::File(file, _) => {
                Box::new(std::io::BufReader::with_capacity(1 << 20, file))
            }
            object_store::GetResultPayload::Stream(stream) => {
                let stream = stream.map_err(std::io::Error::other);
                Box::new(tokio_util::io::SyncIoBridge::new(
                    tokio_util::io::StreamReader::new(stream),
                ))
            }
        })
    }

    /// Writes, reads back and deletes a small probe object: proof that backups can land.
    pub async fn probe(&self) -> Result<(), String> {
        let key = ObjectPath::from(format!(".backupd-probe-{:016x}", rand::random::<u64>()));
        let body = b"backupd reachability probe".to_vec();
        self.store
            .put(&key, PutPayload::from(body.clone()))
            .await
            .map_err(|e| format!("cannot write a probe object: {e}"))?;
        let read = self
            .store
            .get(&key)
            .await
            .map_err(|e| format!("wrote a probe object but cannot read it back: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("cannot read the probe object: {e}"))?;
        let deleted = self.store.delete(&key).await;
        if read.as_ref() != body.as_slice() {
            return Err("the probe object read back differs from what was written".into());
        }
        deleted.map_err(|e| format!("cannot delete the probe object {key}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_display() {
        let shown = redact("s3://AKIAXXX:supersecret@bucket/prefix?token=abc");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(!shown.contains("AKIAXXX"), "{shown}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(shown.contains("bucket/prefix"), "{shown}");
    }

    #[test]
    fn relative_file_url_is_explained() {
        let err = check_url("file://backups/x").unwrap_err();
        assert!(err.contains("three slashes"), "{err}");
        assert!(check_url("file:///var/backups").is_ok());
        assert!(
            check_url("gopher://x")
                .unwrap_err()
                .contains("not supported")
        );
    }

    #[tokio::test]
    async fn probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let t = open("local", &url).unwrap();
        t.probe().await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
