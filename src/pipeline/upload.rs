//! One target's multipart upload: parts cut from the stream, a bounded number in flight,
//! the part size growing with the upload so one object of up to 5 TiB fits in S3's
//! 10,000 parts, and for remote stores the upload id journaled until it is completed or
//! aborted (`target::journal`).
//!
//! Part sizes: 8 MiB for the first 1,000 parts (8 GiB), then doubling every 1,000 parts
//! (16 MiB, 32 MiB, …): 10,000 parts hold 7.8 TiB, no part but the last is under S3's
//! 5 MiB minimum, and none exceeds its 5 GiB maximum. Memory per target is at most
//! (PARTS_IN_FLIGHT + 1) parts, so it only grows for very large objects (3 × 64 MiB at
//! 100 GiB). Stores that want equal part sizes (Cloudflare R2) accept objects up to 8 GiB.

use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, MultipartId, MultipartUpload, ObjectStoreExt,
    PutMultipartOptions, PutPayload,
};
use tokio::task::JoinSet;

use crate::target::{Target, explain, journal};

/// Parts uploading at once per target.
pub const PARTS_IN_FLIGHT: usize = 2;
const FIRST_PART_BYTES: usize = 8 << 20;
const PARTS_PER_STEP: usize = 1000;
const MAX_PART_BYTES: usize = 5 << 30;
/// S3's limit on parts per upload.
const MAX_PARTS: usize = 10_000;

/// Why one target's upload failed. `explained` is the store's error with the target's hint
/// (`target::explain`): what the store said and what to check.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{step} {key}: {explained}")]
    Store {
        step: &'static str,
        key: String,
        explained: String,
    },
    #[error("uploading part {part} of {key}: {explained}")]
    Part {
        part: usize,
        key: String,
        explained: String,
    },
    #[error("cannot journal the upload in {}: {source} (is daemon.state_dir writable?)", dir.display())]
    Journal {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{key} is larger than one object can be ({MAX_PARTS} parts, about 7.8 TiB); split the source into several (e.g. databases or directories)"
    )]
    TooLarge { key: String },
    #[error("an upload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cancelled")]
    Cancelled,
}

/// The size of part `idx` (0-based).
pub fn part_size(idx: usize) -> usize {
    let doublings = (idx / PARTS_PER_STEP).min(20) as u32;
    FIRST_PART_BYTES
        .saturating_mul(1usize << doublings)
        .min(MAX_PART_BYTES)
}

enum Sink {
    /// Local directories: object_store's own upload (a staged file renamed at the end).
    Local(Box<dyn MultipartUpload>),
    Remote {
        store: Arc<dyn MultipartStore>,
        path: ObjectPath,
        id: MultipartId,
        held: Option<journal::Held>,
    },
}

type PartResult = (usize, object_store::Result<Option<PartId>>);

pub struct PartWriter {
    target: Target,
    key: ObjectPath,
    sink: Sink,
    pending: Vec<Bytes>,
    buffered: usize,
    next_idx: usize,
    in_flight: JoinSet<PartResult>,
    parts: Vec<Option<PartId>>,
}

impl PartWriter {
    /// Starts the upload of `key` (relative to the target).
    pub async fn start(target: &Target, key: &ObjectPath) -> Result<Self, UploadError> {
        let failed = |e: object_store::Error| UploadError::Store {
            step: "starting upload of",
            key: key.to_string(),
            explained: explain(target, &e),
        };
        let sink = match &target.remote {
            None => Sink::Local(target.store.put_multipart(key).await.map_err(failed)?),
            Some(remote) => {
                let path = remote.full_key(key);
                let mut opts = PutMultipartOptions::default();
                if let Some(class) = &remote.storage_class {
                    opts.attributes = Attributes::from_iter([(
                        Attribute::StorageClass,
                        AttributeValue::from(class.clone()),
                    )]);
                }
                let id = remote
                    .multipart
                    .create_multipart_opts(&path, opts)
                    .await
                    .map_err(failed)?;
                let held = match &target.journal_dir {
                    Some(dir) => {
                        let entry = journal::Entry {
                            target: target.name.clone(),
                            key: path.to_string(),
                            upload_id: id.clone(),
                            started_at: chrono::Utc::now(),
                            pid: std::process::id(),
                            aborting: false,
                        };
                        match journal::record(dir, &entry) {
                            Ok(h) => Some(h),
                            Err(source) => {
                                let _ = remote.multipart.abort_multipart(&path, &id).await;
                                return Err(UploadError::Journal {
                                    dir: dir.clone(),
                                    source,
                                });
                            }
                        }
                    }
                    None => None,
                };
                Sink::Remote {
                    store: remote.multipart.clone(),
                    path,
                    id,
                    held,
                }
            }
        };
        Ok(PartWriter {
            target: target.clone(),
            key: key.clone(),
            sink,
            pending: Vec::new(),
            buffered: 0,
            next_idx: 0,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
        })
    }

    /// Buffers `chunk`, sending every part that is full.
    pub async fn write(&mut self, mut chunk: Bytes) -> Result<(), UploadError> {
        for limit in &self.target.limits {
            limit.acquire(chunk.len()).await;
        }
        while !chunk.is_empty() {
            let room = part_size(self.next_idx) - self.buffered;
            let take = chunk.split_to(room.min(chunk.len()));
            self.buffered += take.len();
            self.pending.push(take);
            if self.buffered == part_size(self.next_idx) {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<(), UploadError> {
        if self.next_idx >= MAX_PARTS {
            return Err(UploadError::TooLarge {
                key: self.key.to_string(),
            });
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.reap_one().await?;
        }
        let payload = PutPayload::from_iter(std::mem::take(&mut self.pending));
        self.buffered = 0;
        let idx = self.next_idx;
        self.next_idx += 1;
        self.parts.push(None);
        match &mut self.sink {
            Sink::Local(upload) => {
                let fut = upload.put_part(payload);
                self.in_flight
                    .spawn(async move { (idx, fut.await.map(|()| None)) });
            }
            Sink::Remote {
                store, path, id, ..
            } => {
                let (store, path, id) = (store.clone(), path.clone(), id.clone());
                self.in_flight.spawn(async move {
                    (
                        idx,
                        store.put_part(&path, &id, idx, payload).await.map(Some),
                    )
                });
            }
        }
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<(), UploadError> {
        match self.in_flight.join_next().await {
            Some(Ok((idx, Ok(part)))) => {
                self.parts[idx] = part;
                Ok(())
            }
            Some(Ok((idx, Err(e)))) => Err(UploadError::Part {
                part: idx + 1,
                key: self.key.to_string(),
                explained: explain(&self.target, &e),
            }),
            Some(Err(e)) => Err(UploadError::Task(e)),
            None => Ok(()),
        }
    }

    /// Sends the last part, waits for all, and completes the upload.
    pub async fn finish(mut self) -> Result<(), UploadError> {
        // S3 needs at least one part, even for an empty object.
        if self.buffered > 0 || self.next_idx == 0 {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            if let Err(e) = self.reap_one().await {
                self.abort().await;
                return Err(e);
            }
        }
        let key = self.key.clone();
        let target = self.target.clone();
        let failed = |e: object_store::Error| UploadError::Store {
            step: "completing upload of",
            key: key.to_string(),
            explained: explain(&target, &e),
        };
        match self.sink {
            Sink::Local(mut upload) => upload.complete().await.map(|_| ()).map_err(failed),
            Sink::Remote {
                store,
                path,
                id,
                held,
            } => {
                let parts: Vec<PartId> = self.parts.into_iter().flatten().collect();
                match store.complete_multipart(&path, &id, parts).await {
                    Ok(_) => {
                        if let Some(h) = held {
                            h.forget();
                        }
                        Ok(())
                    }
                    Err(e) => {
                        if store.abort_multipart(&path, &id).await.is_ok()
                            && let Some(h) = held
                        {
                            h.forget();
                        }
                        Err(failed(e))
                    }
                }
            }
        }
    }

    /// Stops every part in flight and aborts the upload. When the abort itself fails, the
    /// journal entry stays for the next start to retry.
    pub async fn abort(mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        match self.sink {
            Sink::Local(mut upload) => {
                let _ = upload.abort().await;
            }
            Sink::Remote {
                store,
                path,
                id,
                held,
            } => match store.abort_multipart(&path, &id).await {
                Ok(()) => {
                    if let Some(h) = held {
                        h.forget();
                    }
                }
                Err(e) => tracing::warn!(
                    target = %self.target.name,
                    "could not abort the upload of {}: {}; the next start retries",
                    self.key,
                    explain(&self.target, &e)
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_fit_5_tib_in_10000_parts_within_s3_limits() {
        let sizes: Vec<usize> = (0..10_000).map(part_size).collect();
        let total: u128 = sizes.iter().map(|&s| s as u128).sum();
        assert!(total >= 5u128 << 40, "10,000 parts hold only {total} bytes");
        assert!(sizes.iter().all(|&s| (5 << 20..=5 << 30).contains(&s)));
        assert_eq!(sizes[0], 8 << 20);
        assert_eq!(sizes[999], 8 << 20);
        assert_eq!(sizes[1000], 16 << 20);
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
    }
}
