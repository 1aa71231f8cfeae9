//! Helpers for driving the real `backupd` binary against temporary trees and targets.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_backupd");

/// A scratch world: a directory holding a key, a policy, sources and a target.
pub struct World {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub recipient: String,
    /// The public half of `signing.key`, trusted by `policy()`'s `[signing]`.
    pub signer: String,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("identity.txt");
        let out = run(&["keygen", "--output", key.to_str().unwrap()]);
        assert!(out.status.success(), "keygen: {}", text(&out));
        let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(recipient.starts_with("age1"), "{recipient}");
        let signing = dir.path().join("signing.key");
        let out = run(&["keygen", "--signing", "--output", signing.to_str().unwrap()]);
        assert!(out.status.success(), "keygen --signing: {}", text(&out));
        let signer = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(signer.starts_with("backupd-sign-"), "{signer}");
        World {
            dir,
            key,
            recipient,
            signer,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn target_dir(&self) -> PathBuf {
        self.path("target")
    }

    /// Writes `policy.toml` with the standard encryption, signing and target sections plus
    /// `jobs`.
    pub fn policy(&self, jobs: &str) -> PathBuf {
        let body = format!(
            "[daemon]\nstate_dir = \"state\"\n\n[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"identity.txt\"\n\n[signing]\nkey_file = \"signing.key\"\ntrusted_keys = [\"{}\"]\n\n[targets.local]\nurl = \"file://{}\"\n\n{jobs}",
            self.recipient,
            self.signer,
            self.target_dir().display()
        );
        self.write_policy(&body)
    }

    pub fn write_policy(&self, body: &str) -> PathBuf {
        let path = self.path("policy.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    pub fn backupd(&self, args: &[&str]) -> Output {
        let policy = self.path("policy.toml");
        let mut full = vec!["--config", policy.to_str().unwrap()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts backupd on the world's policy without waiting: stdout piped, stderr to
    /// `stderr_to` (or discarded), for tests that interrupt or watch a run.
    pub fn spawn(&self, args: &[&str], stderr_to: Option<&Path>) -> std::process::Child {
        Command::new(BIN)
            .arg("--config")
            .arg(self.path("policy.toml"))
            .args(args)
            .env_remove("BACKUPD_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(match stderr_to {
                Some(p) => std::process::Stdio::from(std::fs::File::create(p).unwrap()),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .expect("start backupd")
    }

    /// Every file under the target whose name ends with `suffix`.
    pub fn stored(&self, suffix: &str) -> Vec<PathBuf> {
        walk(&self.target_dir())
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect()
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BACKUPD_LOG", "info")
        .env_remove("BACKUPD_CONFIG")
        .output()
        .expect("run backupd")
}

/// stdout and stderr together, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// A fast deterministic byte stream that does not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tree with what breaks naive archivers: unicode and odd names, empty files and
/// directories, symlinks, deep nesting, a long name, modes, and one large random file.
pub fn tricky_tree(root: &Path, big_bytes: usize) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    };
    w("plain.txt", b"hello\n");
    w("ünïcödé/日本語 ファイル.txt", "こんにちは".as_bytes());
    w("spaces and 'quotes'/file \"x\".txt", b"odd names");
    w("newline\nname.txt", b"a newline in a file name");
    w("empty.txt", b"");
    w(&format!("long/{}.dat", "n".repeat(200)), b"long name");
    w("big/random.bin", &noise(big_bytes, 42));
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    w(&format!("{deep}bottom.txt"), b"deep");
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("nested/empty/dirs")).unwrap();
    std::os::unix::fs::symlink("plain.txt", root.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("ünïcödé", root.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", root.join("dangling-link")).unwrap();
    w("exec.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(root.join("exec.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    w("private.txt", b"secret-ish");
    std::fs::set_permissions(
        root.join("private.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// What a tree holds, by relative path: kind, content (or link target), mode, file mtime.
pub fn snapshot_of(root: &Path) -> BTreeMap<PathBuf, String> {
    walk(root)
        .into_iter()
        .map(|p| {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                format!("dir {:o}", meta.mode() & 0o7777)
            } else {
                let data = std::fs::read(&p).unwrap();
                format!(
                    "file {:o} mtime {} len {} sum {:x}",
                    meta.mode() & 0o7777,
                    meta.mtime(),
                    data.len(),
                    fnv(&data)
                )
            };
            (rel, desc)
        })
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Asserts two trees are the same, naming the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let a = snapshot_of(expected);
    let b = snapshot_of(actual);
    for (k, v) in &a {
        assert_eq!(
            b.get(k),
            Some(v),
            "entry {} differs after restore",
            k.display()
        );
    }
    assert_eq!(
        a.len(),
        b.len(),
        "restore has extra entries: {:?}",
        b.keys().filter(|k| !a.contains_key(*k)).collect::<Vec<_>>()
    );
}

/// Runs a shell pipeline, failing the test with its stderr if it fails.
pub fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails loudly when a tool the tests need is missing: tests/run installs them.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "the tests need `{name}`; run tests/run, which installs it"
    );
}

pub fn list_json(world: &World, args: &[&str]) -> Vec<serde_json::Value> {
    let mut full = vec!["list", "--json"];
    full.extend_from_slice(args);
    let out = world.backupd(&full);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("list --json prints one JSON array")
}
