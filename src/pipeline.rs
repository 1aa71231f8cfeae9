//! The streaming pipeline, both ways.
//!
//! Store: producer → sha256(plain) ⇢ read-ahead ⇢ gzip / zstd (parallel 1 MiB blocks, see
//! `blocks`) → age → sha256(stored) → tee to one multipart upload per target. The source
//! runs on one blocking thread, the codecs on another (plus compression workers), and
//! 1 MiB chunks reach the async upload tasks over bounded channels, so memory is bounded
//! by fixed buffers whatever the data size (BACKUP_POLICY.md, "Memory"). A target whose
//! upload fails is dropped from the tee; the others go on.
//!
//! Read: see `decode`.

use std::io::{self, Write};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::progress::Meter;
use std::sync::Arc;

use self::codec::{Compressor, Encryptor};
use crate::snapshot::Compression;
use crate::snapshot::Digest;
use crate::target::Target;

/// Bytes handed from the encoder thread to the uploads at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the encoder.
const READ_AHEAD_CHUNKS: usize = 4;
/// Chunks buffered per target before the encoder waits: the back-pressure bound.
const CHANNEL_CHUNKS: usize = 4;

/// How one stream is encoded.
#[derive(Clone)]
pub struct Encoding {
    pub compression: Compression,
    pub level: i32,
    /// `None` is the plaintext opt-out.
    pub recipients: Option<Vec<age::x25519::Recipient>>,
    /// Compression threads (at least 1).
    pub threads: usize,
}

/// sha256 and length of everything passed through.
#[derive(Default)]
struct Tally {
    hasher: Sha256,
    bytes: u64,
}

impl Tally {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    fn digest(&self) -> Digest {
        Digest {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.clone().finalize()),
        }
    }
}

struct TallyWriter<W> {
    inner: W,
    tally: Tally,
}

impl<W: Write> Write for TallyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tally.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The end of the sync half: cuts the stream into chunks and sends each to every target
/// still alive. Blocking sends are the back-pressure.
struct Tee {
    buf: Vec<u8>,
    outs: Vec<Option<mpsc::Sender<Bytes>>>,
    meter: Arc<Meter>,
}

impl Tee {
    fn send_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        Meter::add(&self.meter.stored, chunk.len());
        for out in &mut self.outs {
            // A closed channel means that target's upload failed; its task reports why.
            if out
                .as_ref()
                .is_some_and(|tx| tx.blocking_send(chunk.clone()).is_err())
            {
                *out = None;
            }
        }
        if self.outs.iter().all(Option::is_none) {
            return Err(io::Error::other("every target's upload failed"));
        }
        Ok(())
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = room.min(buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Chain = Compressor<Encryptor<TallyWriter<Tee>>>;

fn chain(
    enc: &Encoding,
    outs: Vec<Option<mpsc::Sender<Bytes>>>,
    meter: Arc<Meter>,
) -> io::Result<Chain> {
    let tee = Tee {
        buf: Vec::with_capacity(CHUNK_BYTES),
        outs,
        meter,
    };
    let stored = TallyWriter {
        inner: tee,
        tally: Tally::default(),
    };
    let encrypted = Encryptor::new(stored, enc.recipients.as_deref())?;
    Compressor::new(encrypted, enc.compression, enc.level, enc.threads)
}

/// Finishes the chain: the stored bytes' digest, and the gzip member sizes (empty for
/// other compressions).
fn finish_chain(w: Chain) -> io::Result<(Digest, Vec<u64>)> {
    let members = w.members();
    let mut stored = w.finish()?.finish()?;
    stored.inner.send_chunk()?;
    let members = members
        .map(|m| std::mem::take(&mut *m.lock().expect("never poisoned")))
        .unwrap_or_default();
    Ok((stored.tally.digest(), members))
}

/// The producer's end of the read-ahead: 1 MiB chunks to the encoder thread, so reading
/// the source (tar walk, file reads, sha256 of the plain stream) overlaps compression.
struct ReadAhead {
    buf: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    meter: Arc<Meter>,
}

impl ReadAhead {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        Meter::add(&self.meter.read, chunk.len());
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::other("the encoder stopped"))
    }
}

impl Write for ReadAhead {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why `store` stored nothing. Each message is whole on its own (no cause chain to print).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The producer (a source's dump) failed; its own error says why.
    #[error("{0}")]
    Produce(Box<dyn std::error::Error + Send + Sync>),
    /// Compressing or encrypting failed, or every target was gone.
    #[error("{0}")]
    Encode(#[from] io::Error),
    #[error("a pipeline thread failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
    #[error("cancelled (timeout or shutdown) while the source was still being read")]
    Cancelled,
    /// The producer and the encoder both failed: the encoder's error is usually the cause.
    #[error("{producer}: {encoder}")]
    Both {
        producer: Box<PipelineError>,
        encoder: Box<PipelineError>,
    },
    /// Uploads had failed before the stream did: their errors are the cause worth reading.
    #[error("{}: {cause}", targets.iter().map(|(name, e)| format!("target {name}: {e}")).collect::<Vec<_>>().join("; "))]
    Uploads {
        targets: Vec<(String, UploadError)>,
        cause: Box<PipelineError>,
    },
}

/// What `store` returns when the producer succeeded.
pub struct Stored<T> {
    pub produced: T,
    pub plain: Digest,
    pub stored: Digest,
    /// Per target, in the order given: `Ok` when the object is complete there.
    pub uploads: Vec<Result<(), UploadError>>,
    /// gzip: the compressed size of each 1 MiB member, in order (empty otherwise).
    pub members: Vec<u64>,
}

/// Streams what `produce` writes through the encoding into `key` on every target.
/// On a producer error every upload is aborted and the error returned; on success the
/// uploads are completed, and each target's outcome reported.
pub async fn store<T, E, F>(
    targets: &[Target],
    key: &ObjectPath,
    encoding: &Encoding,
    cancel: &CancellationToken,
    meter: Arc<Meter>,
    produce: F,
) -> Result<Stored<T>, PipelineError>
where
    T: Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: FnOnce(&mut dyn Write) -> Result<T, E> + Send + 'static,
{
    let mut feeds = Vec::new();
    let mut outs = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        outs.push(Some(tx));
        feeds.push(tokio::spawn(feed(
            target.clone(),
            key.clone(),
            rx,
            cancel.clone(),
            (meter.clone(), i),
        )));
    }
    let encoding = encoding.clone();
    let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_AHEAD_CHUNKS);
    let encoder_meter = meter.clone();
    let encoder = tokio::task::spawn_blocking(move || -> io::Result<(Digest, Vec<u64>)> {
        let mut w = chain(&encoding, outs, encoder_meter)?;
        for chunk in chunk_rx {
            w.write_all(&chunk)?;
        }
        finish_chain(w)
    });
    let producer = tokio::task::spawn_blocking(move || -> Result<_, PipelineError> {
        let mut w = TallyWriter {
            inner: ReadAhead {
                buf: Vec::with_capacity(CHUNK_BYTES),
                tx: chunk_tx,
                meter,
            },
            tally: Tally::default(),
        };
        let produced = produce(&mut w).map_err(|e| PipelineError::Produce(e.into()))?;
        w.inner.send()?;
        Ok((produced, w.tally.digest()))
    });
    let joined = async {
        let produced = producer.await.map_err(PipelineError::from).and_then(|r| r);
        let stored = encoder
            .await
            .map_err(PipelineError::from)
            .and_then(|r| r.map_err(PipelineError::from));
        (produced, stored)
    };
    // A producer blocked in a read (a hung network mount, a device) must not hold the run
    // past its timeout or a shutdown: on cancellation its thread is left behind, never
    // awaited, and the uploads are aborted below.
    let (produced, stored) = tokio::select! {
        both = joined => both,
        () = cancel.cancelled() => (Err(PipelineError::Cancelled), Err(PipelineError::Cancelled)),
    };
    // When the encoder failed first (every target gone), its error is the cause.
    let produced = match (produced, stored) {
        (Ok((p, plain)), Ok(stored)) => Ok((p, plain, stored)),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Err(p), Err(e)) => Err(PipelineError::Both {
            producer: Box::new(p),
            encoder: Box::new(e),
        }),
    };

    let mut writers = Vec::new();
    for f in feeds {
        writers.push(match f.await {
            Ok(r) => r,
            Err(e) => Err(UploadError::Task(e)),
        });
    }
    let (produced, plain, stored) = match produced {
        Ok(v) => v,
        Err(e) => {
            let mut target_errors = Vec::new();
            for (w, target) in writers.into_iter().zip(targets) {
                match w {
                    Ok(w) => {
                        w.abort().await;
                    }
                    Err(e) => target_errors.push((target.name.clone(), e)),
                }
            }
            // When the uploads failed first, their errors are the cause worth reading.
            return Err(if target_errors.is_empty() {
                e
            } else {
                PipelineError::Uploads {
                    targets: target_errors,
                    cause: Box::new(e),
                }
            });
        }
    };
    let mut uploads = Vec::new();
    for (w, target) in writers.into_iter().zip(targets) {
        uploads.push(match w {
            Ok(w) => w.finish().await,
            Err(e) => Err(e),
        });
        if let Some(Err(e)) = uploads.last() {
            tracing::error!(target = %target.name, "upload failed: {e}");
        }
    }
    let (stored, members) = stored;
    Ok(Stored {
        produced,
        plain,
        stored,
        uploads,
        members,
    })
}

/// One target's side of the tee: chunks in, multipart parts out. Returns the unfinished
/// upload so the caller decides between complete and abort.
async fn feed(
    target: Target,
    key: ObjectPath,
    mut rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    (meter, index): (Arc<Meter>, usize),
) -> Result<PartWriter, UploadError> {
    let mut w = PartWriter::start(&target, &key).await?;
    loop {
        // Cancelling closes the channel, which stops the encoder and the source behind it.
        let chunk = tokio::select! {
            chunk = rx.recv() => chunk,
            () = cancel.cancelled() => {
                w.abort().await;
                return Err(UploadError::Cancelled);
            }
        };
        let Some(chunk) = chunk else { break };
        let len = chunk.len();
        if let Err(e) = w.write(chunk).await {
            w.abort().await;
            return Err(e);
        }
        if let Some(n) = meter.uploaded.get(index) {
            Meter::add(n, len);
        }
    }
    Ok(w)
}

mod blocks;
mod codec;
mod decode;
mod upload;

pub use upload::{PartWriter, UploadError};

pub use blocks::BLOCK_BYTES as MEMBER_BYTES;
pub use decode::{Decoded, Encoded, IntegrityError, decode};

#[cfg(test)]
mod tests;
