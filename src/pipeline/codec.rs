//! The codecs of the store path: compression (parallel gzip, multithreaded zstd, none)
//! and age encryption, each as a `Write` adapter that hands its inner writer back on
//! `finish`.

use std::io::{self, Write};

use super::blocks::ParBlocks;
use crate::snapshot::Compression;

pub(crate) enum Compressor<W: Write> {
    Gzip(ParBlocks<W>),
    Zstd(ParBlocks<W>),
    Plain(W),
}

impl<W: Write> Compressor<W> {
    pub(crate) fn new(
        inner: W,
        compression: Compression,
        level: i32,
        threads: usize,
    ) -> io::Result<Self> {
        Ok(match compression {
            Compression::Gzip => {
                Compressor::Gzip(ParBlocks::new(inner, level.clamp(0, 9) as u32, threads))
            }
            // Independent 1 MiB frames (not one multithreaded frame): a reader can start at
            // any of them, which `cat` does through the index.
            Compression::Zstd => Compressor::Zstd(ParBlocks::with(
                inner,
                super::blocks::Members::Zstd(level),
                threads,
            )),
            Compression::None => Compressor::Plain(inner),
        })
    }

    /// gzip's member-size log (see `ParBlocks::members`).
    pub(crate) fn members(&self) -> Option<std::sync::Arc<std::sync::Mutex<Vec<u64>>>> {
        match self {
            Compressor::Gzip(w) | Compressor::Zstd(w) => Some(w.members()),
            _ => None,
        }
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
            Compressor::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
            Compressor::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
            Compressor::Plain(w) => w.flush(),
        }
    }
}

pub(crate) enum Encryptor<W: Write> {
    Age(age::stream::StreamWriter<W>),
    Plain(W),
}

impl<W: Write> Encryptor<W> {
    pub(crate) fn new(inner: W, recipients: Option<&[age::x25519::Recipient]>) -> io::Result<Self> {
        match recipients {
            None => Ok(Encryptor::Plain(inner)),
            Some(rs) => {
                let enc = age::Encryptor::with_recipients(rs.iter().map(|r| r as _))
                    .map_err(io::Error::other)?;
                Ok(Encryptor::Age(enc.wrap_output(inner)?))
            }
        }
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encryptor::Age(w) => w.finish(),
            Encryptor::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encryptor::Age(w) => w.write(buf),
            Encryptor::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encryptor::Age(w) => w.flush(),
            Encryptor::Plain(w) => w.flush(),
        }
    }
}
