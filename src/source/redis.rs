//! Redis: an RDB snapshot taken over the network with `redis-cli --rdb -` (the server
//! forks and streams it, as to a replica), streamed into the pipeline; restore writes
//! `dump.rdb` for the operator to put in place.
//!
//! redis-cli 7.0 writes the 40-byte end-of-transfer marker after the RDB when its output
//! is a pipe; it reports the RDB's true length on stderr, so the last bytes are held back
//! and only that length is passed on. The password reaches redis-cli through
//! `REDISCLI_AUTH`, never argv.

use crate::error::Invalid;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::{Dumped, Restored, SourceError, child};
use crate::snapshot::SourceStats;

/// The longest tail redis-cli may append after the RDB.
const MARKER_BYTES: usize = 40;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://host:port` (or `redis://user@host:port` with ACLs) — no password here.
    pub url: String,
    /// File whose first line is the password (mode 0600).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

pub fn check_url(url: &str) -> Result<(), Invalid> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("not a URL ({e}); e.g. \"redis://127.0.0.1:6379\""))?;
    if parsed.scheme() != "redis" {
        return Err("must start with redis://".into());
    }
    if let Some(why) = crate::secret::secret_in_url(&parsed) {
        return Err(Invalid(why));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    Ok(())
}

fn command(tool: &Path, url: &str, password: Option<&str>) -> Result<Command, SourceError> {
    check_url(url).map_err(|what| SourceError::Invalid {
        path: PathBuf::from(crate::secret::redact(url)),
        what: what.0,
    })?;
    let u = url::Url::parse(url).expect("checked");
    let mut cmd = child::command(tool, &[]);
    cmd.arg("-h")
        .arg(u.host_str().unwrap_or("127.0.0.1"))
        .arg("-p")
        .arg(u.port().unwrap_or(6379).to_string());
    if !u.username().is_empty() {
        cmd.arg("--user").arg(u.username());
    }
    cmd.env_remove("REDISCLI_AUTH");
    if let Some(p) = password {
        cmd.env("REDISCLI_AUTH", p);
    }
    Ok(cmd)
}

/// Server version and keys per db; an error when the server refuses us.
fn info(
    cli: &Path,
    spec: &RedisSpec,
    pw: Option<&str>,
) -> Result<(String, BTreeMap<String, u64>), SourceError> {
    let mut cmd = command(cli, &spec.url, pw)?;
    cmd.args(["--no-raw", "INFO"]);
    let reply = child::output(cmd, pw)?;
    // redis-cli exits 0 even when the server refuses the command; the reply says so.
    if !reply.contains("redis_version:") {
        return Err(SourceError::Database {
            server: crate::secret::redact(&spec.url),
            message: match reply.trim() {
                "" => "no reply (is the server up?)".to_string(),
                r if r.starts_with("NOAUTH") || r.starts_with("WRONGPASS") => {
                    format!("authentication failed ({r}): check password_file")
                }
                other => other.to_string(),
            },
        });
    }
    Ok(parse_info(&reply))
}

/// Tool present, server reachable with these credentials.
pub fn probe(spec: &RedisSpec) -> Result<String, SourceError> {
    let cli = child::find_tool(&["redis-cli"], "redis-tools")?;
    let password = child::password(spec.password_file.as_deref(), "REDISCLI_AUTH")?;
    let (version, keys) = info(&cli, spec, password.as_deref())?;
    Ok(format!(
        "redis {} answers (server {version}, {} keys)",
        crate::secret::redact(&spec.url),
        keys.values().sum::<u64>()
    ))
}

pub fn dump(spec: &RedisSpec, out: &mut dyn Write) -> Result<Dumped, SourceError> {
    let cli = child::find_tool(&["redis-cli"], "redis-tools")?;
    let password = child::password(spec.password_file.as_deref(), "REDISCLI_AUTH")?;
    let pw = password.as_deref();

    let (server_version, keys) = info(&cli, spec, pw)?;

    let mut cmd = command(&cli, &spec.url, pw)?;
    cmd.args(["--rdb", "-"]);
    let mut running = child::spawn(cmd, Stdio::null(), pw)?;
    let mut held = HoldBack {
        inner: out,
        tail: Vec::with_capacity(2 * MARKER_BYTES),
        passed: 0,
    };
    running.copy_stdout(&mut held)?;
    let stderr = running.finish()?;
    let rdb_len = transfer_length(&stderr).ok_or_else(|| SourceError::Tool {
        tool: "redis-cli".into(),
        message: format!("did not report a finished transfer: {stderr}"),
    })?;
    held.finish(rdb_len).map_err(|e| SourceError::Tool {
        tool: "redis-cli".into(),
        message: e.to_string(),
    })?;
    Ok(Dumped {
        stats: SourceStats::Redis {
            server_version,
            keys,
        },
        warnings: Vec::new(),
        index: None,
    })
}

/// `redis_version` and keys per db from an INFO reply.
fn parse_info(info: &str) -> (String, BTreeMap<String, u64>) {
    let mut version = String::new();
    let mut keys = BTreeMap::new();
    for line in info.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("redis_version:") {
            version = v.to_string();
        } else if let Some((db, rest)) = line.split_once(':')
            && db.starts_with("db")
            && db[2..].chars().all(|c| c.is_ascii_digit())
        {
            let n = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            keys.insert(db.to_string(), n);
        }
    }
    (version, keys)
}

/// The byte count in "Transfer finished with success after N bytes".
fn transfer_length(stderr: &str) -> Option<u64> {
    let rest = stderr
        .split("Transfer finished with success after ")
        .nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Passes everything on except the last bytes, which wait for the true length.
struct HoldBack<'a> {
    inner: &'a mut dyn Write,
    tail: Vec<u8>,
    passed: u64,
}

impl Write for HoldBack<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.extend_from_slice(buf);
        if self.tail.len() > MARKER_BYTES {
            let release = self.tail.len() - MARKER_BYTES;
            self.inner.write_all(&self.tail[..release])?;
            self.passed += release as u64;
            self.tail.drain(..release);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl HoldBack<'_> {
    fn finish(self, total: u64) -> io::Result<()> {
        let keep = total
            .checked_sub(self.passed)
            .filter(|k| *k as usize <= self.tail.len())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "RDB length {total} does not match the {} bytes received",
                    self.passed as usize + self.tail.len()
                ))
            })?;
        if total == 0 {
            return Err(io::Error::other("the RDB is empty"));
        }
        self.inner.write_all(&self.tail[..keep as usize])
    }
}

/// Writes `DIR/dump.rdb`; loading it is the operator's step (see BACKUP_POLICY.md).
pub fn restore_to_file(
    input: &mut dyn Read,
    dest: &Path,
    overwrite: bool,
) -> Result<Restored, SourceError> {
    super::restore_file(input, dest, "dump.rdb", overwrite)
}

/// Checks the RDB with `redis-check-rdb` and compares the key count.
pub fn test_restore(
    reader: &mut dyn std::io::Read,
    keys: &std::collections::BTreeMap<String, u64>,
    dir: &std::path::Path,
) -> Result<Vec<crate::snapshot::record::Check>, SourceError> {
    let path = super::to_scratch(reader, dir, "dump.rdb")?;
    let tool = super::child::find_tool(&["redis-check-rdb"], "redis-tools")?;
    let mut cmd = super::child::command(tool, &[]);
    cmd.arg(&path);
    let out = super::child::output(cmd, None);
    let mut checks = Vec::new();
    match out {
        Ok(text) => {
            checks.push(crate::snapshot::record::Check::pass(
                "redis-check-rdb",
                "RDB looks OK",
            ));
            let read: u64 = text
                .lines()
                .find_map(|l| {
                    l.split("[info] ")
                        .nth(1)?
                        .strip_suffix(" keys read")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            checks.push(crate::snapshot::record::Check::compare(
                "key count",
                keys.values().sum(),
                read,
            ));
        }
        Err(e) => checks.push(crate::snapshot::record::Check::fail(
            "redis-check-rdb",
            e.to_string(),
        )),
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_keyspace_is_parsed() {
        let info = "# Server\r\nredis_version:7.0.15\r\n# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=0\r\ndb3:keys=4,expires=0,avg_ttl=0\r\n";
        let (v, keys) = parse_info(info);
        assert_eq!(v, "7.0.15");
        assert_eq!(
            keys,
            BTreeMap::from([("db0".into(), 12), ("db3".into(), 4)])
        );
    }

    #[test]
    fn the_end_marker_is_cut_off() {
        let rdb = b"REDIS0010...payload...\xff12345678".to_vec();
        let mut stream = rdb.clone();
        stream.extend_from_slice(&[b'a'; MARKER_BYTES]);
        let mut out = Vec::new();
        let mut h = HoldBack {
            inner: &mut out,
            tail: Vec::new(),
            passed: 0,
        };
        for chunk in stream.chunks(7) {
            h.write_all(chunk).unwrap();
        }
        h.finish(rdb.len() as u64).unwrap();
        assert_eq!(out, rdb);
        assert_eq!(
            transfer_length("SYNC sent\nTransfer finished with success after 182 bytes\n"),
            Some(182)
        );
    }
}
