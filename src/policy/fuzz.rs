//! Property tests: the policy loader and the manifest parser take arbitrary input and
//! answer with a value or a clear error, never a panic.

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use proptest::prelude::*;

/// TOML-ish text built from the policy's own vocabulary, so most cases get past the
/// TOML parser and exercise typing and validation.
fn policyish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "daemon",
        "state_dir",
        "listen",
        "max_concurrent_jobs",
        "encryption",
        "mode",
        "recipients",
        "identity_file",
        "targets",
        "url",
        "path",
        "region",
        "endpoint",
        "jobs",
        "schedule",
        "timezone",
        "compression",
        "compression_level",
        "threads",
        "retention",
        "keep_last",
        "keep_daily",
        "verify",
        "after_backup",
        "sources",
        "kind",
        "exclude",
        "hooks",
        "before",
        "timeout_secs",
        "alert_if_older_than",
        "notify",
    ]);
    let value = prop::sample::select(vec![
        "\"x\"",
        "1",
        "-1",
        "0",
        "true",
        "[]",
        "[\"a\"]",
        "{}",
        "\"file:///tmp\"",
        "\"s3://b/p\"",
        "\"directory\"",
        "\"postgres\"",
        "\"0 3 * * *\"",
        "\"26h\"",
        "\"age1xyz\"",
        "99999999999",
        "1.5",
        "\"\"",
        "\"Europe/Berlin\"",
        "\"zstd\"",
    ]);
    let line = prop_oneof![
        (key.clone(), value).prop_map(|(k, v)| format!("{k} = {v}")),
        prop::collection::vec(key.clone(), 1..4).prop_map(|ks| format!("[{}]", ks.join("."))),
        key.prop_map(|k| format!("[[{k}]]")),
        "[ -~]{0,30}",
    ];
    prop::collection::vec(line, 0..25).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_policy_loader_never_panics_and_always_explains(text in policyish()) {
        let figment = Figment::from(Toml::string(&text));
        match super::from_figment(figment, Path::new("/etc/backupd")) {
            Ok(_) => {}
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for p in problems {
                    prop_assert!(!p.message.trim().is_empty(), "empty message for {:?}", p.key);
                }
            }
        }
    }

    #[test]
    fn the_manifest_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = crate::snapshot::parse_manifest(&bytes);
    }

    #[test]
    fn mangled_manifests_are_refused_with_a_reason(cut in 0usize..2000, flip in any::<u8>(), at in any::<usize>()) {
        let mut good = SAMPLE_MANIFEST.as_bytes().to_vec();
        let i = at % good.len();
        good[i] ^= flip;
        good.truncate(cut.max(1).min(good.len()));
        if let Err(why) = crate::snapshot::parse_manifest(&good) {
            prop_assert!(!why.to_string().trim().is_empty());
        }
    }
}

const SAMPLE_MANIFEST: &str = r#"{
  "format": 1, "job": "app", "snapshot": "2026-11-22T05-44-42.082Z-ab59e3", "host": "h",
  "backupd_version": "0.1.0", "started_at": "2026-11-22T05:44:42.082Z",
  "finished_at": "2026-11-22T05:44:43.082Z", "tags": ["manual"],
  "sources": {"files": {"kind": "directory", "object": "files.tar.gz.age",
    "compression": "gzip", "compression_level": 6,
    "encryption": {"kind": "age", "recipients": ["age1"]},
    "stored": {"bytes": 10, "sha256": "00"}, "plain": {"bytes": 20, "sha256": "11"},
    "stats": {"type": "tree", "files": 1, "dirs": 0, "symlinks": 0, "file_bytes": 20, "skipped": 0},
    "warnings": []}}
}"#;

#[test]
fn the_sample_manifest_parses() {
    // Keeps the property above honest: the unmangled input is valid.
    crate::snapshot::parse_manifest(SAMPLE_MANIFEST.as_bytes()).unwrap();
}
