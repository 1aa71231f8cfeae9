//! The restore rules against archives an attacker would write. Every case restores into
//! `sandbox/dest` next to a canary tree, and checks that nothing outside `dest` changed:
//! not a byte, not a mode, not an mtime, no new entry.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use proptest::prelude::*;

use super::*;

/// One crafted entry: name bytes written straight into the header, as an attacker's tool
/// would (the tar crate's own setters refuse `..`).
#[derive(Debug, Clone)]
enum E {
    Dir(String, u32),
    File(String, u32, Vec<u8>),
    Sym(String, String),
    Hard(String, String),
    Fifo(String),
    /// GNU tar's incremental directory entry (type `D`), its data a dumpdir listing.
    Dumpdir(String, Vec<u8>),
}

fn header(name: &str, kind: EntryType, link: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let l = link.len().min(100);
    old.linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(1_000);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(size);
    h.set_cksum();
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (tar::Header, &[u8]) = match e {
            E::Dir(n, m) => (header(n, EntryType::Directory, "", *m, 0), b""),
            E::File(n, m, d) => (header(n, EntryType::Regular, "", *m, d.len() as u64), d),
            E::Sym(n, t) => (header(n, EntryType::Symlink, t, 0o777, 0), b""),
            E::Hard(n, t) => (header(n, EntryType::Link, t, 0o644, 0), b""),
            E::Fifo(n) => (header(n, EntryType::Fifo, "", 0o644, 0), b""),
            E::Dumpdir(n, listing) => (
                header(n, EntryType::new(DUMPDIR), "", 0o755, listing.len() as u64),
                listing,
            ),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Everything observable about a tree: per path, type, mode, mtime, size, link target.
fn snapshot_of(root: &Path) -> BTreeMap<PathBuf, (u32, i64, u64, Option<PathBuf>)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let link = m
            .file_type()
            .is_symlink()
            .then(|| std::fs::read_link(e.path()).unwrap());
        out.insert(
            e.path().to_path_buf(),
            (m.mode(), m.mtime(), m.size(), link),
        );
    }
    out
}

/// A sandbox: `canary/` (a directory with a file, as the thing an attacker aims at) and
/// `dest/` where restores go.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("canary")).unwrap();
        std::fs::write(dir.path().join("canary/file"), b"canary").unwrap();
        std::fs::set_permissions(
            dir.path().join("canary"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Made now, so creating them does not count as a change beside them.
        std::fs::create_dir(dir.path().join("dest")).unwrap();
        std::fs::create_dir(dir.path().join("scratch")).unwrap();
        Self { dir }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("dest")
    }

    /// Restores with both engines' settings and returns the restore's result; panics if
    /// anything outside `dest` changed, or if verify (sparse) judged it differently.
    fn restore(&self, entries: &[E]) -> Result<Restored, SourceError> {
        let outside = |s: &Sandbox| {
            snapshot_of(s.dir.path())
                .into_iter()
                .filter(|(p, _)| !p.starts_with(s.dest()) && !p.starts_with(s.scratch()))
                .collect::<BTreeMap<_, _>>()
        };
        let before = outside(self);
        let tar = tar_of(entries);
        let how = Unpack {
            overwrite: false,
            same_owner: true,
            data: Data::Write,
        };
        let restored = super::restore(&mut tar.as_slice(), &self.dest(), how);
        let checked = super::restore(
            &mut tar.as_slice(),
            &self.scratch(),
            Unpack {
                data: Data::Sparse,
                same_owner: false,
                ..how
            },
        );
        assert_eq!(
            before,
            outside(self),
            "something outside dest changed for {entries:?}"
        );
        match (&restored, &checked) {
            (Ok(r), Ok(c)) => {
                assert_eq!(
                    (r.files, r.dirs, r.symlinks, r.links_skipped),
                    (c.files, c.dirs, c.symlinks, c.links_skipped),
                    "verify judged {entries:?} differently"
                );
            }
            (Err(r), Err(c)) => assert_eq!(
                r.to_string().replace("/dest", "/DIR"),
                c.to_string().replace("/scratch", "/DIR")
            ),
            (r, c) => panic!("restore {r:?} but verify {c:?} for {entries:?}"),
        }
        restored
    }

    fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }
}

fn d(n: &str) -> E {
    E::Dir(n.into(), 0o755)
}
fn f(n: &str) -> E {
    E::File(n.into(), 0o644, b"data".to_vec())
}
fn s(n: &str, t: &str) -> E {
    E::Sym(n.into(), t.into())
}

fn refused(r: Result<Restored, SourceError>, naming: &str) {
    match r {
        Err(SourceError::Unsafe { entry, why }) => {
            assert!(
                entry.contains(naming),
                "{entry}: {why} does not name {naming}"
            )
        }
        other => panic!("expected a refusal naming {naming}, got {other:?}"),
    }
}

/// An incremental archive's directory entries (`D`, a dumpdir) are held to the same
/// rules as directories: a `..` name is refused, a `D` over a link out is refused, the
/// `./` entry is the restore directory itself; the names a dumpdir lists (here `..` and
/// `../canary`) are never acted on.
#[test]
fn gnu_dumpdir_entries_are_held_to_the_directory_rules() {
    let listing = b"D..\0N../canary\0Yfile\0\0".to_vec();
    let sb = Sandbox::new();
    refused(
        sb.restore(&[E::Dumpdir("../canary/".into(), listing.clone())]),
        "../canary",
    );
    let sb = Sandbox::new();
    refused(
        sb.restore(&[
            s("out", "../canary"),
            E::Dumpdir("out/".into(), listing.clone()),
        ]),
        "out",
    );
    let sb = Sandbox::new();
    let r = sb
        .restore(&[
            E::Dumpdir("./".into(), listing.clone()),
            E::Dumpdir("sub/".into(), listing),
            f("sub/file"),
        ])
        .unwrap();
    assert_eq!((r.dirs, r.files), (1, 1));
    assert!(sb.dest().join("sub/file").is_file());
}

#[test]
fn the_issue_13_chain_cannot_reach_the_canary() {
    let sb = Sandbox::new();
    // x/s -> .. is harmless alone; x/s/t would be created through it.
    let r = sb.restore(&[
        d("x"),
        s("x/s", ".."),
        s("x/s/t", "../../canary"),
        d("t/planted"),
        E::Dir("t".into(), 0o777),
    ]);
    refused(r, "x/s/t");
    assert!(!sb.dir.path().join("canary/planted").exists());
}

#[test]
fn dot_then_up_through_it_is_removed() {
    let sb = Sandbox::new();
    // `up -> dot/..` leaves by way of another link; by names alone it stays inside.
    let r = sb
        .restore(&[s("dot", "."), s("up", "dot/dot/.."), f("keep")])
        .unwrap();
    assert_eq!(r.links_skipped, 1, "{:?}", r.warnings);
    assert!(sb.dest().join("dot").is_symlink());
    assert!(!sb.dest().join("up").exists() && !sb.dest().join("up").is_symlink());
    assert!(r.warnings.iter().any(|w| w.contains("skipped symlink up")));
}

#[test]
fn links_out_are_skipped_and_entries_under_them_refused() {
    let sb = Sandbox::new();
    let r = sb.restore(&[s("t", "../../canary"), d("t/planted")]);
    // The link is skipped first, so t/planted lands inside as a plain directory.
    let r = r.unwrap();
    assert_eq!(r.links_skipped, 1);
    assert!(sb.dest().join("t/planted").is_dir());
    let sb = Sandbox::new();
    let r = sb.restore(&[s("in", "sub"), d("sub"), f("in/x")]);
    refused(r, "in/x");
}

#[test]
fn modes_and_times_never_go_through_a_link() {
    let sb = Sandbox::new();
    let canary = sb.dir.path().join("canary").to_str().unwrap().to_string();
    let r = sb.restore(&[s("c", &canary), E::Dir("c".into(), 0o777)]);
    refused(r, "c");
    let meta = std::fs::metadata(sb.dir.path().join("canary")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o755);
}

#[test]
fn duplicates_are_refused() {
    let sb = Sandbox::new();
    refused(sb.restore(&[f("a"), f("a")]), "a");
    let sb = Sandbox::new();
    refused(sb.restore(&[f("a"), s("a", "/etc/passwd")]), "a");
    let sb = Sandbox::new();
    refused(sb.restore(&[d("a"), d("a/")]), "a");
}

#[test]
fn hard_links_only_to_files_restored_before() {
    let sb = Sandbox::new();
    let r = sb
        .restore(&[f("a"), E::Hard("b".into(), "a".into())])
        .unwrap();
    assert_eq!(r.files, 2);
    let sb = Sandbox::new();
    refused(sb.restore(&[E::Hard("b".into(), "missing".into())]), "b");
    let sb = Sandbox::new();
    refused(
        sb.restore(&[s("l", "x"), E::Hard("b".into(), "l".into())]),
        "b",
    );
    let sb = Sandbox::new();
    refused(
        sb.restore(&[E::Hard("b".into(), "/etc/hostname".into())]),
        "b",
    );
    let sb = Sandbox::new();
    refused(sb.restore(&[d("d"), E::Hard("b".into(), "d".into())]), "b");
}

#[test]
fn names_that_cannot_be_paths_are_refused() {
    let sb = Sandbox::new();
    refused(sb.restore(&[f("../evil")]), "../evil");
    let sb = Sandbox::new();
    refused(sb.restore(&[f("/tmp/evil-abs")]), "/tmp/evil-abs");
    let sb = Sandbox::new();
    refused(sb.restore(&[f("a/../../evil")]), "a/../../evil");
    assert!(checked_parts(b"a\0b").is_err());
    assert!(checked_parts(&vec![b'a'; 300]).is_err());
    assert!(checked_parts(&[b'a', b'/'].repeat(2100)).is_err());
}

#[test]
fn devices_and_fifos_are_never_created() {
    let sb = Sandbox::new();
    let r = sb.restore(&[E::Fifo("p".into()), f("a")]).unwrap();
    assert_eq!(r.skipped, 1);
    assert!(!sb.dest().join("p").exists());
}

#[test]
fn setuid_survives_only_with_its_owner() {
    let sb = Sandbox::new();
    let r = sb
        .restore(&[E::File("suid".into(), 0o4755, b"x".to_vec())])
        .unwrap();
    let meta = std::fs::metadata(sb.dest().join("suid")).unwrap();
    if rustix::process::geteuid().is_root() {
        assert_eq!(meta.uid(), 1000, "owner restored");
        assert_eq!(meta.mode() & 0o7777, 0o4755);
    } else {
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert!(r.warnings.iter().any(|w| w.contains("dropped setuid")));
    }
    // As root without --no-same-owner off: the bits go with the owner.
    let sb = Sandbox::new();
    let tar = tar_of(&[E::File("suid".into(), 0o4755, b"x".to_vec())]);
    let how = Unpack {
        overwrite: false,
        same_owner: false,
        data: Data::Write,
    };
    let r = super::restore(&mut tar.as_slice(), &sb.dest(), how).unwrap();
    let meta = std::fs::metadata(sb.dest().join("suid")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert!(r.warnings.iter().any(|w| w.contains("dropped setuid")));
}

#[test]
fn legitimate_trees_restore_whole() {
    let sb = Sandbox::new();
    let r = sb
        .restore(&[
            E::Dir("a".into(), 0o750),
            f("a/x"),
            d("a/b"),
            s("a/b/up", "../x"),
            s("a/self", "."),
            s("a/dangling", "nowhere/yet"),
            f("top"),
        ])
        .unwrap();
    assert_eq!((r.files, r.dirs, r.symlinks, r.links_skipped), (2, 2, 3, 0));
    assert_eq!(std::fs::read(sb.dest().join("a/b/up")).unwrap(), b"data");
    let meta = std::fs::metadata(sb.dest().join("a")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o750);
    assert_eq!(meta.mtime(), 1_000);
}

#[test]
fn force_replaces_files_but_never_writes_through_what_was_there() {
    let sb = Sandbox::new();
    let canary = sb.dir.path().join("canary/file");
    std::os::unix::fs::symlink(&canary, sb.dest().join("a")).unwrap();
    let tar = tar_of(&[f("a")]);
    let how = Unpack {
        overwrite: true,
        same_owner: false,
        data: Data::Write,
    };
    super::restore(&mut tar.as_slice(), &sb.dest(), how).unwrap();
    assert_eq!(std::fs::read(&canary).unwrap(), b"canary");
    assert_eq!(std::fs::read(sb.dest().join("a")).unwrap(), b"data");
    let how = Unpack {
        overwrite: false,
        ..how
    };
    let err = super::restore(&mut tar.as_slice(), &sb.dest(), how).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
}

/// A small alphabet that makes escapes likely: names that collide, `.` and `..`, links to
/// parents, absolute links and links through links.
fn arb_entry() -> impl Strategy<Value = E> {
    let name = prop::sample::select(vec![
        "a", "b", "a/b", "a/b/c", "b/a", "l", "a/l", "l/x", "a/l/x", "l/l", ".", "./a", "..",
        "a/..", "l/..", "a/b/..",
    ])
    .prop_map(str::to_string);
    let target = prop::sample::select(vec![
        ".",
        "..",
        "../..",
        "a",
        "l",
        "a/b",
        "l/..",
        "l/../..",
        "a/../..",
        "./l",
        "/",
        "../canary",
        "../../canary",
        "b/../..",
        "l/l/..",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        name.clone().prop_map(|n| E::Dir(n, 0o777)),
        name.clone().prop_map(|n| E::File(n, 0o6777, b"x".to_vec())),
        (name.clone(), target.clone()).prop_map(|(n, t)| E::Sym(n, t)),
        (name.clone(), target).prop_map(|(n, t)| E::Hard(n, t)),
        name.prop_map(|n| E::Dumpdir(n, b"Ya\0D..\0N../canary\0\0".to_vec())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Whatever the archive, nothing outside the restore directory changes, verify agrees
    /// with restore, and no symlink left behind resolves outside.
    #[test]
    fn no_archive_changes_anything_outside(entries in prop::collection::vec(arb_entry(), 1..8)) {
        let sb = Sandbox::new();
        if sb.restore(&entries).is_ok() {
            for e in walkdir::WalkDir::new(sb.dest()).follow_links(false) {
                let e = e.unwrap();
                if e.path_is_symlink()
                    && let Ok(real) = std::fs::canonicalize(e.path())
                {
                    let dest = std::fs::canonicalize(sb.dest()).unwrap();
                    prop_assert!(real.starts_with(&dest), "{} -> {}", e.path().display(), real.display());
                }
            }
        }
    }
}
