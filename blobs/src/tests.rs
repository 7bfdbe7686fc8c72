#![allow(clippy::unwrap_used)]

use super::*;
use rand::{RngCore, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

async fn node(dir: &Path, seed: u8) -> BlobNode {
    BlobNode::start(BlobConfig {
        root: dir.join(format!("n{seed}")),
        seed: [seed; 32],
        bind: "127.0.0.1:0".parse().unwrap(),
        gc_interval: None,
    })
    .await
    .unwrap()
}

async fn collect(mut s: ByteStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

/// The store's data file of a blob (large blobs live in their own file named by the hash).
fn data_file(root: &Path, hash: BlobHash) -> PathBuf {
    Options::new(root).path.data_path(&hash.iroh())
}

#[test]
fn hashes_and_addresses_round_trip() {
    let h = BlobHash::of(b"hello");
    assert_eq!(h.to_string().len(), 64);
    assert_eq!(h.to_string().parse::<BlobHash>().unwrap(), h);
    assert_eq!(h.to_string().to_uppercase().parse::<BlobHash>().unwrap(), h);
    assert!("abc".parse::<BlobHash>().is_err());
    assert!("zz".repeat(32).parse::<BlobHash>().is_err());
    let a = PeerAddr {
        id: [7; 32],
        addr: "127.0.0.1:7003".parse().unwrap(),
    };
    assert_eq!(a.to_string().parse::<PeerAddr>().unwrap(), a);
    assert!("x@127.0.0.1:1".parse::<PeerAddr>().is_err());
    assert!(format!("{}@nowhere", "0".repeat(64))
        .parse::<PeerAddr>()
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_key_is_the_node_identity_key() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), 3).await;
    let dalek = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    assert_eq!(n.public_key(), dalek.verifying_key().to_bytes());
    assert_eq!(n.peer_addr().id, n.public_key());
    assert_eq!(
        n.local_addr().ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_moves_between_nodes_byte_exact_and_ranges_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(dir.path(), 1).await, node(dir.path(), 2).await);
    let data = random(3 * 1024 * 1024 + 17, 1);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let (hash, size) = a.import_file(&src, |_| "rm/test".into()).await.unwrap();
    assert_eq!(hash, BlobHash::of(&data));
    assert_eq!(size, data.len() as u64);
    assert_eq!(b.local_size(hash).await.unwrap(), None);

    b.pin(hash, "rm/copy").await.unwrap();
    b.fetch(hash, &[a.peer_addr()]).await.unwrap();
    assert_eq!(b.local_size(hash).await.unwrap(), Some(size));
    assert_eq!(collect(b.read(hash, 0, size)).await.unwrap(), data);
    // Ranges that straddle chunk and piece boundaries.
    for (s, e) in [
        (0u64, 1u64),
        (1000, 5000),
        (1024 * 1024 - 3, 2 * 1024 * 1024 + 9),
        (size - 5, size),
    ] {
        let got = collect(b.read(hash, s, e)).await.unwrap();
        assert_eq!(got, &data[s as usize..e as usize], "range {s}..{e}");
    }
    // A node that lacks the blob is no provider; an unknown hash is reported, not hung on.
    let unknown = BlobHash::of(b"nobody has this");
    let err = b.fetch(unknown, &[a.peer_addr()]).await.unwrap_err();
    assert!(matches!(err, BlobError::Unavailable { .. }), "{err}");
    assert!(collect(a.read(unknown, 0, 10)).await.is_err());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_while_fetching_streams_a_remote_blob_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, c) = (node(dir.path(), 4).await, node(dir.path(), 5).await);
    let data = random(2 * 1024 * 1024 + 5, 2);
    let (hash, size) = a
        .import_bytes(data.clone(), |_| "rm/x".into())
        .await
        .unwrap();
    // A dead provider first: the next one delivers.
    let dead = PeerAddr {
        id: [9; 32],
        addr: "127.0.0.1:9".parse().unwrap(),
    };
    let s = c
        .read_while_fetching(hash, 100, size - 100, vec![dead, a.peer_addr()], "rm/cache")
        .await
        .unwrap();
    assert_eq!(collect(s).await.unwrap(), &data[100..data.len() - 100]);
    // It is in C's store now, pinned.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.local_size(hash).await.unwrap().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.local_size(hash).await.unwrap(), Some(size));
    assert!(c
        .pins("rm/")
        .await
        .unwrap()
        .contains(&("rm/cache".to_string(), hash)));
    // Nobody has it: the stream ends in an error, not a hang or short success.
    let unknown = BlobHash::of(b"absent");
    let s = c
        .read_while_fetching(unknown, 0, 5000, vec![a.peer_addr()], "rm/u")
        .await
        .unwrap();
    assert!(collect(s).await.is_err());
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_truncated_transfers_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(dir.path(), 6).await, node(dir.path(), 7).await);
    let data = random(1024 * 1024, 3);
    let (hash, _) = a
        .import_bytes(data.clone(), |_| "rm/t".into())
        .await
        .unwrap();
    let file = data_file(a.root(), hash);
    let mut on_disk = std::fs::read(&file).unwrap();
    assert_eq!(on_disk, data, "the provider keeps the blob in {file:?}");
    // Flip one byte in the provider's copy: it still serves it, with the original hash tree.
    on_disk[600 * 1024] ^= 0x55;
    std::fs::write(&file, &on_disk).unwrap();
    let err = b.fetch(hash, &[a.peer_addr()]).await.unwrap_err();
    assert!(matches!(err, BlobError::Unavailable { .. }), "{err}");
    assert_eq!(b.local_size(hash).await.unwrap(), None);
    // What did arrive is only the verified part before the damage.
    assert!(collect(b.read(hash, 0, data.len() as u64)).await.is_err());

    // Truncate it: the transfer ends short and is not taken as the blob.
    std::fs::write(&file, &data[..300 * 1024]).unwrap();
    let err = b.fetch(hash, &[a.peer_addr()]).await.unwrap_err();
    assert!(matches!(err, BlobError::Unavailable { .. }), "{err}");
    assert_eq!(b.local_size(hash).await.unwrap(), None);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_blobs_are_collected_and_pinned_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let n = BlobNode::start(BlobConfig {
        root: dir.path().join("gc"),
        seed: [8; 32],
        bind: "127.0.0.1:0".parse().unwrap(),
        gc_interval: Some(Duration::from_millis(100)),
    })
    .await
    .unwrap();
    let (keep, _) = n
        .import_bytes(random(100_000, 4), |_| "rm/keep".into())
        .await
        .unwrap();
    let (drop_me, _) = n
        .import_bytes(random(100_000, 5), |_| "rm/drop".into())
        .await
        .unwrap();
    n.unpin("rm/drop").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while n.local_size(drop_me).await.unwrap().is_some() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n.local_size(drop_me).await.unwrap(), None);
    assert!(n.local_size(keep).await.unwrap().is_some());
    assert_eq!(
        n.pins("rm/").await.unwrap(),
        vec![("rm/keep".to_string(), keep)]
    );
    n.shutdown().await;
}
