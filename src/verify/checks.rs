//! The checks of one object, on a blocking thread: integrity (decrypt, both sha256) and
//! the kind-specific test-restore against the manifest's figures.

use std::io::Read;
use std::path::Path;

use crate::crypto::Identities;
use crate::pipeline;
use crate::snapshot::SourceEntry;
use crate::snapshot::record::Check;

/// Runs every check of one object read from `input`.
pub fn run(
    input: impl Read + Send + 'static,
    entry: &SourceEntry,
    identities: Option<&Identities>,
    server: Option<crate::source::scratch_db::Server>,
    scratch_base: &Path,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut decoded = match pipeline::decode(input, entry, identities) {
        Ok(d) => {
            checks.push(Check::pass("decrypt", "header and key ok"));
            d
        }
        Err(e) => {
            checks.push(Check::fail("decrypt", e.to_string()));
            return checks;
        }
    };
    let scratch = match super::scratch_dir(scratch_base) {
        Ok(s) => s,
        Err(e) => {
            checks.push(Check::fail(
                "scratch directory",
                format!("{}: {e}", scratch_base.display()),
            ));
            return checks;
        }
    };
    let restored = crate::source::test_restore(&mut decoded.reader, entry, server, scratch.path());
    match restored {
        Ok(found) => checks.extend(found),
        Err(e) => checks.push(Check::fail("test-restore", e.to_string())),
    }
    match decoded.finish() {
        Ok(()) => checks.push(Check::pass(
            "sha256",
            format!(
                "stored {} and plain {} match the manifest",
                short(&entry.stored.sha256),
                short(&entry.plain.sha256)
            ),
        )),
        Err(e) => checks.push(Check::fail("sha256", e.to_string())),
    }
    checks
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
