//! Reading a base backup's WAL points from its own tar stream as it passes: the start
//! LSN and timeline from `backup_label`, the end of the WAL range from the
//! `backup_manifest` pg_basebackup appends to a tar written to stdout.

use std::io::Write;

#[derive(Debug, PartialEq)]
pub(super) struct Points {
    pub(super) start_lsn: String,
    pub(super) timeline: u32,
    pub(super) stop_lsn: String,
}

/// Files of the tar kept while it streams past: the label whole, the manifest's tail.
const LABEL_MAX_BYTES: usize = 64 << 10;
const MANIFEST_TAIL_BYTES: usize = 64 << 10;

/// A writer that passes a tar stream through and keeps `backup_label` and the tail of
/// `backup_manifest` (whose last lines hold the WAL range) as they go by.
pub(super) struct TarTap<'a> {
    inner: &'a mut dyn Write,
    header: Vec<u8>,
    /// Bytes of the current member's data (and padding) still to pass.
    remaining: u64,
    /// Of those, the member's own bytes (the rest is padding).
    data_left: u64,
    keeping: Option<Keep>,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
    saw_manifest: bool,
}

#[derive(Clone, Copy)]
enum Keep {
    Label,
    Manifest,
}

impl<'a> TarTap<'a> {
    pub(super) fn new(inner: &'a mut dyn Write) -> Self {
        TarTap {
            inner,
            header: Vec::with_capacity(512),
            remaining: 0,
            data_left: 0,
            keeping: None,
            label: Vec::new(),
            manifest_tail: Vec::new(),
            saw_manifest: false,
        }
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                let own = n.min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                match self.keeping {
                    Some(Keep::Label) if self.label.len() < LABEL_MAX_BYTES => {
                        self.label.extend_from_slice(&data[..own]);
                    }
                    Some(Keep::Manifest) => {
                        self.manifest_tail.extend_from_slice(&data[..own]);
                        if self.manifest_tail.len() > 2 * MANIFEST_TAIL_BYTES {
                            let cut = self.manifest_tail.len() - MANIFEST_TAIL_BYTES;
                            self.manifest_tail.drain(..cut);
                        }
                    }
                    _ => {}
                }
                self.remaining -= n as u64;
                self.data_left -= own as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(512 - self.header.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 512 {
                self.start_member();
                self.header.clear();
            }
        }
    }

    fn start_member(&mut self) {
        let h = &self.header;
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = &h[..name_end];
        let size = tar_number(&h[124..136]);
        self.keeping = match (name, h[156]) {
            (b"backup_label" | b"./backup_label", b'0' | 0) => Some(Keep::Label),
            (b"backup_manifest" | b"./backup_manifest", b'0' | 0) => {
                self.saw_manifest = true;
                Some(Keep::Manifest)
            }
            _ => None,
        };
        self.data_left = size;
        self.remaining = size.div_ceil(512) * 512;
    }

    pub(super) fn points(&self) -> Result<Points, String> {
        let label = String::from_utf8_lossy(&self.label);
        let field = |key: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(key).map(str::trim))
                .map(str::to_string)
        };
        let start_lsn = field("START WAL LOCATION:")
            .and_then(|v| v.split_whitespace().next().map(str::to_string))
            .ok_or("its tar holds no backup_label with a START WAL LOCATION")?;
        let timeline: u32 = field("START TIMELINE:")
            .and_then(|v| v.parse().ok())
            .ok_or("its backup_label has no START TIMELINE")?;
        if !self.saw_manifest {
            return Err("wrote no backup_manifest into its tar, which holds the WAL range the backup needs: remove --no-manifest from extra_args".into());
        }
        let stop_lsn = manifest_end_lsn(&String::from_utf8_lossy(&self.manifest_tail))
            .ok_or("its backup_manifest has no WAL-Ranges End-LSN")?;
        crate::wal::name::parse_lsn(&start_lsn).ok_or("its backup_label's start is not an LSN")?;
        Ok(Points {
            start_lsn,
            timeline,
            stop_lsn,
        })
    }
}

impl Write for TarTap<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.observe(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A tar header number: octal text, or base-256 when the high bit is set (large files).
fn tar_number(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return field[1..]
            .iter()
            .fold(u64::from(field[0] & 0x7f), |n, &b| (n << 8) | u64::from(b));
    }
    field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(*b))
        .fold(0, |n, b| (n << 3) | u64::from(b - b'0'))
}

/// The latest `End-LSN` of the manifest's `WAL-Ranges` (several when the timeline
/// changed during the backup).
fn manifest_end_lsn(tail: &str) -> Option<String> {
    let ranges = &tail[tail.rfind("\"WAL-Ranges\"")?..];
    ranges
        .match_indices("\"End-LSN\"")
        .filter_map(|(i, m)| {
            let rest = ranges[i + m.len()..]
                .trim_start()
                .strip_prefix(':')?
                .trim_start();
            let value = rest.strip_prefix('"')?.split('"').next()?;
            crate::wal::name::parse_lsn(value).map(|lsn| (lsn, value.to_string()))
        })
        .max()
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn the_wal_points_are_read_from_the_label_and_manifest_in_the_stream() {
        let label = b"START WAL LOCATION: 0/5000028 (file 000000020000000000000005)\nCHECKPOINT LOCATION: 0/5000060\nSTART TIMELINE: 2\n";
        let manifest = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [ { "Path": "End-LSN", "Size": 3 } ],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/4000028", "End-LSN": "0/5000000" },
{ "Timeline": 2, "Start-LSN": "0/5000000", "End-LSN": "0/5000100" }
],
"Manifest-Checksum": "00"}"#;
        let mut stream = tar_member("base/1/1259", &vec![7u8; 70_000]);
        stream.extend(tar_member("backup_label", label));
        stream.extend(tar_member("global/pg_control", &[1u8; 8192]));
        stream.extend(tar_member("backup_manifest", manifest));
        stream.extend([0u8; 1024]);
        let mut sink = Vec::new();
        let mut tap = TarTap::new(&mut sink);
        // In odd-sized writes, as a pipe delivers them.
        for chunk in stream.chunks(777) {
            tap.write_all(chunk).unwrap();
        }
        assert_eq!(
            tap.points(),
            Ok(Points {
                start_lsn: "0/5000028".into(),
                timeline: 2,
                stop_lsn: "0/5000100".into()
            })
        );
        drop(tap);
        assert_eq!(sink, stream, "the stream passes unchanged");

        let mut no_manifest = tar_member("backup_label", label);
        no_manifest.extend([0u8; 1024]);
        let mut sink = Vec::new();
        let mut tap = TarTap::new(&mut sink);
        tap.write_all(&no_manifest).unwrap();
        assert!(tap.points().unwrap_err().contains("--no-manifest"));
        assert_eq!(tar_number(b"00000001750\0"), 1000);
        assert_eq!(
            tar_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00]),
            256
        );
    }
}
