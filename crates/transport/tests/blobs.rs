//! The blob store on this machine (the local transport): a binary received
//! compressed, checked, installed; fetched from a peer serving it on
//! loopback; and refused whenever its bytes are not the ones announced.
#![allow(clippy::unwrap_used)]

use kubeforge_transport::blobs::{self, Codec};
use kubeforge_transport::ops;
use kubeforge_transport::LocalTransport;
use sha2::{Digest, Sha256};
use std::io::Write as _;

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn received_compressed_checked_and_installed() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("blobs").display().to_string();
    let t = LocalTransport::new("here");
    let data: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let sum = sha(&data);
    let inv = blobs::inventory(&t, &store).await.unwrap();
    assert!(inv.held.is_empty() && inv.gzip);
    for (codec, wire) in [(Codec::Gzip, gzip(&data)), (Codec::None, data.clone())]
        .into_iter()
        .chain(inv.zstd.then(|| (Codec::Zstd, zstd(&data))))
    {
        blobs::receive(&t, &store, &sum, data.len() as u64, codec, wire)
            .await
            .unwrap();
        let inv = blobs::inventory(&t, &store).await.unwrap();
        assert_eq!(inv.held, std::slice::from_ref(&sum), "{codec:?}");
    }
    let dest = dir.path().join("bin/tool");
    let install = |to: &std::path::Path, checked: bool| {
        let file = ops::PutFile {
            path: to.display().to_string(),
            mode: 0o755,
            owner: "root:root".into(),
            source: ops::Source::Blob {
                sha256: sum.clone(),
                size: data.len() as u64,
                checked,
            },
        };
        ops::put_all(&t, vec![file], &store, None)
    };
    // Not checked in this run: copied, the copy checked; the store keeps
    // the blob for other installs.
    install(&dest, false).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        blobs::inventory(&t, &store).await.unwrap().held,
        std::slice::from_ref(&sum)
    );
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &str| std::fs::metadata(p).unwrap().ino();
    let blob = format!("{store}/{sum}");
    assert_ne!(ino(&dest.display().to_string()), ino(&blob));
    // Cut short on the wire: refused, nothing new in the store.
    let mut short = gzip(&data);
    short.truncate(short.len() / 2);
    let other = sha(b"other");
    assert!(blobs::receive(&t, &store, &other, 5, Codec::Gzip, short)
        .await
        .is_err());
    // The store altered after the fact: installing a copy refuses it.
    std::fs::write(&blob, b"tampered").unwrap();
    let err = install(&dest, false).await.unwrap_err().to_string();
    assert!(err.contains("refusing to install"), "{err}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        data,
        "the installed file stayed"
    );
    // Checked as it arrived: the first install is the blob itself (a
    // link), a second one of the same blob a copy (its own mode and owner).
    blobs::receive(
        &t,
        &store,
        &sum,
        data.len() as u64,
        Codec::None,
        data.clone(),
    )
    .await
    .unwrap();
    let (linked, copied) = (dir.path().join("bin/linked"), dir.path().join("bin/copied"));
    install(&linked, true).await.unwrap();
    install(&copied, true).await.unwrap();
    let (linked, copied) = (linked.display().to_string(), copied.display().to_string());
    assert_eq!(ino(&linked), ino(&blob));
    assert_ne!(ino(&copied), ino(&blob));
    assert_eq!(std::fs::read(&copied).unwrap(), data);
    // Clearing the store changes the linked file's ctime: its line in the
    // sha256 cache follows; the other lines stay as they were.
    let cache = dir.path().join("sha256-cache");
    let key = |p: &str| {
        let m = std::fs::metadata(p).unwrap();
        format!(
            "{} {}.{:09} {}",
            m.size(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino()
        )
    };
    let other_line = format!("1 2.000000000 3 {sum} /elsewhere");
    std::fs::write(
        &cache,
        format!("{} {sum} {linked}\n{other_line}\n", key(&linked)),
    )
    .unwrap();
    let before = key(&linked);
    std::thread::sleep(std::time::Duration::from_millis(20));
    blobs::drop(
        &t,
        &store,
        std::slice::from_ref(&sum),
        Some(&cache.display().to_string()),
    )
    .await
    .unwrap();
    assert!(blobs::inventory(&t, &store).await.unwrap().held.is_empty());
    let after = key(&linked);
    assert_ne!(before, after, "the store let go of the link");
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap(),
        format!("{after} {sum} {linked}\n{other_line}\n")
    );
}

#[tokio::test]
async fn fetched_from_a_peer_that_serves_its_store_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let t = LocalTransport::new("here");
    assert!(
        blobs::inventory(&t, &a).await.unwrap().can_serve,
        "serving needs systemd-socket-activate (Debian's systemd package)"
    );
    let data = vec![42u8; 3_000_000];
    let sum = sha(&data);
    blobs::receive(&t, &a, &sum, data.len() as u64, Codec::None, data.clone())
        .await
        .unwrap();
    let port = 40000 + (std::process::id() % 20000) as u16;
    let held = blobs::serve(&t, &a, "127.0.0.1", port, "s3cret", &[])
        .await
        .unwrap();
    // The wrong token gets nothing (and so fails its check).
    assert!(
        blobs::fetch(&t, &b, &sum, data.len() as u64, "127.0.0.1", port, "wrong")
            .await
            .is_err()
    );
    blobs::fetch(&t, &b, &sum, data.len() as u64, "127.0.0.1", port, "s3cret")
        .await
        .unwrap();
    assert_eq!(std::fs::read(format!("{b}/{sum}")).unwrap(), data);
    // One server for the whole store: a blob that arrives later is served
    // too; a name that is not a sha256 gets nothing.
    let later = vec![7u8; 1_000_000];
    let later_sum = sha(&later);
    blobs::receive(
        &t,
        &a,
        &later_sum,
        later.len() as u64,
        Codec::None,
        later.clone(),
    )
    .await
    .unwrap();
    blobs::fetch(
        &t,
        &b,
        &later_sum,
        later.len() as u64,
        "127.0.0.1",
        port,
        "s3cret",
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(format!("{b}/{later_sum}")).unwrap(), later);
    std::fs::write(format!("{a}/../secret"), b"no").unwrap();
    assert!(
        blobs::fetch(&t, &b, "../secret", 2, "127.0.0.1", port, "s3cret")
            .await
            .is_err()
    );
    held.release().await;
}

/// A node hands on the files it holds in place that it was given (sha256
/// and path), without a blob store of its own; any other file it holds
/// gets nothing.
#[tokio::test]
async fn fetched_from_a_peer_that_serves_files_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let t = LocalTransport::new("here");
    let bin = dir.path().join("usr local/bin/kubelet");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    let data = vec![5u8; 2_000_000];
    std::fs::write(&bin, &data).unwrap();
    let sum = sha(&data);
    let other = dir.path().join("usr local/bin/other");
    std::fs::write(&other, b"not handed on").unwrap();
    let other_sum = sha(b"not handed on");
    let port = 40000 + ((std::process::id() + 7) % 20000) as u16;
    let installed = [(sum.clone(), bin.display().to_string())];
    let held = blobs::serve(&t, &a, "127.0.0.1", port, "s3cret", &installed)
        .await
        .unwrap();
    assert!(!std::path::Path::new(&a).exists(), "no store was made");
    blobs::fetch(&t, &b, &sum, data.len() as u64, "127.0.0.1", port, "s3cret")
        .await
        .unwrap();
    assert_eq!(std::fs::read(format!("{b}/{sum}")).unwrap(), data);
    assert!(
        blobs::fetch(&t, &b, &other_sum, 13, "127.0.0.1", port, "s3cret")
            .await
            .is_err()
    );
    held.release().await;
}
