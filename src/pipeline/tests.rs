use std::io::Read;
use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};

use super::*;
use crate::crypto::Identities;
use crate::progress::Meter;
use crate::snapshot::{Encryption, SourceEntry, SourceStats};
use tokio_util::sync::CancellationToken;

fn memory_target(name: &str) -> (Target, Arc<InMemory>) {
    let mem = Arc::new(InMemory::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    (
        Target {
            name: name.into(),
            display_url: "memory:///".into(),
            store,
            local_root: None,
            remote: None,
            journal_dir: None,
            cache_dir: None,
            limits: Vec::new(),
            spooled: false,
            write_only: false,
        },
        mem,
    )
}

fn sample(len: usize) -> Vec<u8> {
    // Compressible but not trivial: a counter pattern with noise.
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[(i % 3) + 1] % 17)
        .collect()
}

fn entry_for(stored: &Stored<()>, enc: &Encoding) -> SourceEntry {
    SourceEntry {
        kind: "test".into(),
        group: None,
        object: "obj".into(),
        compression: enc.compression,
        compression_level: enc.level,
        encryption: match &enc.recipients {
            Some(rs) => Encryption::Age {
                recipients: rs.iter().map(|r| r.to_string()).collect(),
            },
            None => Encryption::None,
        },
        stored: stored.stored.clone(),
        plain: stored.plain.clone(),
        stats: SourceStats::empty_tree(),
        warnings: vec![],
        index: None,
        base: None,
        level: 0,
    }
}

async fn round_trip(compression: Compression) {
    let id = age::x25519::Identity::generate();
    let enc = Encoding {
        compression,
        level: compression.default_level(),
        recipients: Some(vec![id.to_public()]),
        threads: 2,
    };
    let (a, mem_a) = memory_target("a");
    let (b, mem_b) = memory_target("b");
    let data = sample(5 * CHUNK_BYTES + 12345);
    let key = ObjectPath::from("job/snap/obj");
    let input = data.clone();
    let stored = store(
        &[a, b],
        &key,
        &enc,
        &CancellationToken::new(),
        Arc::new(Meter::default()),
        move |w| w.write_all(&input),
    )
    .await
    .unwrap();
    assert!(stored.uploads.iter().all(Result::is_ok));
    assert_eq!(stored.plain.bytes, data.len() as u64);
    assert_eq!(stored.plain.sha256, hex::encode(Sha256::digest(&data)));
    let bytes_a = mem_a.get(&key).await.unwrap().bytes().await.unwrap();
    let bytes_b = mem_b.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes_a, bytes_b, "every target gets the same stream");
    assert_eq!(stored.stored.bytes, bytes_a.len() as u64);
    assert_eq!(stored.stored.sha256, hex::encode(Sha256::digest(&bytes_a)));

    let ids: Identities = vec![Box::new(id)];
    let entry = entry_for(&stored, &enc);
    let mut decoded = decode(io::Cursor::new(bytes_a.to_vec()), &entry, Some(&ids)).unwrap();
    let mut out = Vec::new();
    decoded.reader.read_to_end(&mut out).unwrap();
    assert!(out == data, "decoded stream differs");
    decoded.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_round_trip_to_two_targets() {
    round_trip(Compression::Gzip).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_round_trip() {
    round_trip(Compression::Zstd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uncompressed_round_trip() {
    round_trip(Compression::None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_producer_leaves_no_object() {
    let (a, mem) = memory_target("a");
    let enc = Encoding {
        compression: Compression::Gzip,
        level: 1,
        recipients: None,
        threads: 2,
    };
    let key = ObjectPath::from("job/snap/obj");
    let err = store(
        &[a],
        &key,
        &enc,
        &CancellationToken::new(),
        Arc::new(Meter::default()),
        |w| -> anyhow::Result<()> {
            w.write_all(&sample(3 * CHUNK_BYTES))?;
            anyhow::bail!("pg_dump exited with status 1")
        },
    )
    .await
    .err()
    .expect("producer error must surface");
    assert!(err.to_string().contains("status 1"), "{err}");
    assert!(matches!(
        mem.head(&key).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_aborts_every_upload_and_stops_the_source() {
    let (a, mem_a) = memory_target("a");
    let (b, mem_b) = memory_target("b");
    let enc = Encoding {
        compression: Compression::None,
        level: 0,
        recipients: None,
        threads: 1,
    };
    let key = ObjectPath::from("job/snap/obj");
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    // An endless source: only cancelling can end it.
    let err = store(
        &[a, b],
        &key,
        &enc,
        &cancel,
        Arc::new(Meter::default()),
        move |w| -> anyhow::Result<()> {
            let block = sample(CHUNK_BYTES);
            for i in 0.. {
                if i == 20 {
                    trigger.cancel();
                }
                w.write_all(&block)?;
            }
            Ok(())
        },
    )
    .await
    .err()
    .expect("a cancelled store fails");
    assert!(err.to_string().contains("cancelled"), "{err:#}");
    for mem in [mem_a, mem_b] {
        assert!(matches!(
            mem.head(&key).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}

/// A source blocked in a read forever (a hung mount, a device) cannot hold the run past
/// a cancellation: the store returns, commits nothing, and leaves the thread behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_blocked_forever_does_not_outlive_cancellation() {
    let (a, mem_a) = memory_target("a");
    let enc = Encoding {
        compression: Compression::None,
        level: 0,
        recipients: None,
        threads: 1,
    };
    let key = ObjectPath::from("job/snap/obj");
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let (_never_tx, never) = std::sync::mpsc::channel::<()>();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let err = store(
        &[a],
        &key,
        &enc,
        &cancel,
        Arc::new(Meter::default()),
        move |w| -> anyhow::Result<()> {
            w.write_all(b"a little, then a read that never returns")?;
            let _ = never.recv();
            Ok(())
        },
    )
    .await
    .err()
    .expect("a cancelled store fails");
    assert!(err.to_string().contains("cancelled"), "{err:#}");
    assert!(matches!(
        mem_a.head(&key).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_target_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let broken_dir = dir.path().join("broken");
    let broken =
        crate::target::open("broken", &format!("file://{}", broken_dir.display())).unwrap();
    // Replace the target's directory by a file: every write to it now fails, even as root.
    std::fs::remove_dir(&broken_dir).unwrap();
    std::fs::write(&broken_dir, b"not a directory").unwrap();
    let (good, mem) = memory_target("good");
    let enc = Encoding {
        compression: Compression::None,
        level: 0,
        recipients: None,
        threads: 2,
    };
    let key = ObjectPath::from("job/snap/obj");
    let data = sample(3 * CHUNK_BYTES);
    let input = data.clone();
    let stored = store(
        &[broken, good],
        &key,
        &enc,
        &CancellationToken::new(),
        Arc::new(Meter::default()),
        move |w| w.write_all(&input),
    )
    .await
    .unwrap();
    assert!(stored.uploads[0].is_err());
    assert!(stored.uploads[1].is_ok());
    let got = mem.get(&key).await.unwrap().bytes().await.unwrap();
    assert!(got.as_ref() == data.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn corruption_and_wrong_keys_are_detected() {
    let id = age::x25519::Identity::generate();
    let enc = Encoding {
        compression: Compression::Gzip,
        level: 6,
        recipients: Some(vec![id.to_public()]),
        threads: 2,
    };
    let (a, mem) = memory_target("a");
    let key = ObjectPath::from("job/snap/obj");
    let data = sample(300_000);
    let input = data.clone();
    let stored = store(
        &[a],
        &key,
        &enc,
        &CancellationToken::new(),
        Arc::new(Meter::default()),
        move |w| w.write_all(&input),
    )
    .await
    .unwrap();
    let entry = entry_for(&stored, &enc);
    let bytes = mem.get(&key).await.unwrap().bytes().await.unwrap().to_vec();

    let wrong: Identities = vec![Box::new(age::x25519::Identity::generate())];
    let err = decode(io::Cursor::new(bytes.clone()), &entry, Some(&wrong))
        .err()
        .expect("wrong identity must fail");
    assert!(matches!(err, IntegrityError::Decrypt { .. }), "{err}");

    let ids: Identities = vec![Box::new(id)];
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x01;
    let result = decode(io::Cursor::new(corrupt), &entry, Some(&ids)).and_then(|d| d.finish());
    assert!(result.is_err(), "a flipped bit must not pass");

    let mut bad_entry = entry.clone();
    bad_entry.plain.sha256 = "00".repeat(32);
    let err = decode(io::Cursor::new(bytes), &bad_entry, Some(&ids))
        .unwrap()
        .finish()
        .unwrap_err();
    assert!(
        matches!(err, IntegrityError::Mismatch { which: "plain", .. }),
        "{err}"
    );
}
