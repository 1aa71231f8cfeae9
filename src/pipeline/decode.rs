//! The read path: object stream → sha256(stored) → age → gunzip/unzstd → sha256(plain)
//! → consumer, each stage on its own thread, with both digests checked against the
//! manifest once the stream is drained.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use super::Tally;
use crate::crypto::Identities;
use crate::snapshot::Compression;
use crate::snapshot::{Digest, Encryption, SourceEntry};

/// What reading one stored object needs: its name, how it was encoded and both digests
/// to check. A snapshot's source entry carries it, and so does a WAL file's receipt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Encoded {
    pub object: String,
    pub compression: Compression,
    pub compression_level: i32,
    pub encryption: Encryption,
    pub stored: Digest,
    pub plain: Digest,
}

impl From<&SourceEntry> for Encoded {
    fn from(e: &SourceEntry) -> Self {
        Encoded {
            object: e.object.clone(),
            compression: e.compression,
            compression_level: e.compression_level,
            encryption: e.encryption.clone(),
            stored: e.stored.clone(),
            plain: e.plain.clone(),
        }
    }
}

/// A reader that tallies what passes, readable after the chain is consumed.
struct TallyReader<R> {
    inner: R,
    tally: Arc<Mutex<Tally>>,
}

impl<R: Read> Read for TallyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.lock().expect("tally lock").update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error(
        "cannot decrypt {object}: {reason} (is this the identity the snapshot was encrypted to? recipients: {recipients})"
    )]
    Decrypt {
        object: String,
        reason: String,
        recipients: String,
    },
    #[error(
        "{object}: {which} sha256 mismatch ({bytes} bytes, sha256 {actual}; manifest says {expected_bytes} bytes, {expected}): the object is corrupt or was tampered with"
    )]
    Mismatch {
        object: String,
        which: &'static str,
        bytes: u64,
        actual: String,
        expected_bytes: u64,
        expected: String,
    },
    #[error("{object}: reading failed: {source}")]
    Io { object: String, source: io::Error },
}

/// The decoded plain stream of one stored object, with its integrity check.
pub struct Decoded {
    pub reader: Box<dyn Read + Send>,
    stored: Arc<Mutex<Tally>>,
    plain: Arc<Mutex<Tally>>,
    entry: Encoded,
}

/// Builds the read chain over `input` (the stored object's bytes).
pub fn decode(
    input: impl Read + Send + 'static,
    entry: impl Into<Encoded>,
    identities: Option<&Identities>,
) -> Result<Decoded, IntegrityError> {
    let entry = &entry.into();
    let stored = Arc::new(Mutex::new(Tally::default()));
    let counted = io::BufReader::with_capacity(
        256 << 10,
        TallyReader {
            inner: input,
            tally: stored.clone(),
        },
    );
    let decrypted: Box<dyn Read + Send> = match (&entry.encryption, identities) {
        (Encryption::None, _) => Box::new(counted),
        (Encryption::Age { recipients }, ids) => {
            let fail = |reason: String| IntegrityError::Decrypt {
                object: entry.object.clone(),
                reason,
                recipients: recipients.join(", "),
            };
            let ids = ids.ok_or_else(|| fail("no identity given".into()))?;
            let d = age::Decryptor::new_buffered(counted).map_err(|e| fail(e.to_string()))?;
            Box::new(
                d.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
                    .map_err(|e| fail(e.to_string()))?,
            )
        }
    };
    let io_err = |source| IntegrityError::Io {
        object: entry.object.clone(),
        source,
    };
    // Decryption, decompression and the consumer each get a thread of their own: the
    // restore then runs at the speed of its slowest stage, as a shell pipeline does.
    let decrypted = threaded(decrypted);
    let decompressed: Box<dyn Read + Send> = match entry.compression {
        Compression::Gzip => threaded(Box::new(flate2::read::MultiGzDecoder::new(decrypted))),
        Compression::Zstd => threaded(Box::new(zstd::Decoder::new(decrypted).map_err(io_err)?)),
        Compression::None => decrypted,
    };
    let plain = Arc::new(Mutex::new(Tally::default()));
    Ok(Decoded {
        reader: Box::new(TallyReader {
            inner: decompressed,
            tally: plain.clone(),
        }),
        stored,
        plain,
        entry: entry.clone(),
    })
}

/// Bytes handed between read stages at a time, and how many may wait.
const STAGE_CHUNK_BYTES: usize = 1 << 20;
const STAGE_CHUNKS: usize = 4;

/// Runs `inner` on its own thread and reads its output through a bounded channel.
/// Dropping the returned reader stops the thread at its next chunk.
fn threaded(mut inner: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(STAGE_CHUNKS);
    std::thread::spawn(move || {
        loop {
            let mut buf = vec![0u8; STAGE_CHUNK_BYTES];
            let mut filled = 0;
            let result = loop {
                match inner.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(filled);
            let last = filled < STAGE_CHUNK_BYTES || result.is_err();
            if filled > 0 && tx.send(Ok(buf)).is_err() {
                return;
            }
            if let Err(e) = result {
                let _ = tx.send(Err(e));
                return;
            }
            if last {
                return;
            }
        }
    });
    Box::new(StageReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
    })
}

struct StageReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for StageReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The stage ended without an error: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Decoded {
    /// Drains what the consumer left (tar padding, trailing blocks) and checks both digests.
    pub fn finish(mut self) -> Result<(), IntegrityError> {
        io::copy(&mut self.reader, &mut io::sink()).map_err(|source| IntegrityError::Io {
            object: self.entry.object.clone(),
            source,
        })?;
        let checks = [
            ("plain", &self.plain, &self.entry.plain),
            ("stored", &self.stored, &self.entry.stored),
        ];
        for (which, tally, expected) in checks {
            let got = tally.lock().expect("tally lock").digest();
            if &got != expected {
                return Err(IntegrityError::Mismatch {
                    object: self.entry.object.clone(),
                    which,
                    bytes: got.bytes,
                    actual: got.sha256,
                    expected_bytes: expected.bytes,
                    expected: expected.sha256.clone(),
                });
            }
        }
        Ok(())
    }
}
