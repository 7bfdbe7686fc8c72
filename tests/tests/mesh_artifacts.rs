//! Artifacts on real processes: a file made on one node is served byte-exact by any other (fetched
//! over the blob QUIC endpoint while it streams), with Range, ETag and 404s; the serving node's
//! memory stays far below the file; uploads and data: URIs reach an app as local files; a replica
//! keeps the output after its worker is killed; delete IO and TTL expiry remove it everywhere.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::Method;
use runmesh_tests::{Api, Cluster, Node, NodeOpts, MEMBERSHIP_TIMEOUT};
use serde_json::{json, Value};

const COMPLETE_TIMEOUT: Duration = Duration::from_secs(120);
const GONE_TIMEOUT: Duration = Duration::from_secs(60);

/// `runmesh/noise`'s bytes (splitmix64 of the seed), regenerated to check downloads.
fn noise_fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut s = seed;
    // Same 1 MiB pieces as the app: a piece that is not a multiple of 8 would shift the stream.
    for piece in v.chunks_mut(1 << 20) {
        noise_fill(&mut s, piece);
    }
    v
}

/// Node options: node 0 alone serves `runmesh/noise`, so outputs are made there.
fn opts(i: usize, extra: &[&str]) -> NodeOpts {
    let mut o = NodeOpts::default().slots(2).lease_ms(1_000);
    let models = if i == 0 {
        "runmesh/noise,runmesh/echo"
    } else {
        "runmesh/echo,runmesh/hash"
    };
    o.extra_args
        .extend(["--models".to_string(), models.to_string()]);
    o.extra_args.extend(extra.iter().map(|s| s.to_string()));
    o
}

async fn make_noise(api: &Api, bytes: u64, seed: u64) -> (String, Value) {
    let s = api
        .submit("runmesh/noise", &json!({"bytes": bytes, "seed": seed}))
        .await;
    api.wait_completed("runmesh/noise", &s.request_id, COMPLETE_TIMEOUT)
        .await;
    let r = api.result("runmesh/noise", &s.request_id).await;
    assert_eq!(r.status, 200, "result: {}", r.text());
    (s.request_id, r.json()["file"].clone())
}

/// The `/files/...` path of a File object's URL.
fn path_of(file: &Value) -> String {
    let url = file["url"].as_str().expect("url");
    let i = url.find("/files/").expect("a /files/ URL");
    url[i..].to_string()
}

/// The path (and query) of an absolute URL.
fn path_from(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme[after_scheme.find('/').unwrap_or(after_scheme.len())..].to_string()
}

fn hash_of(file: &Value) -> String {
    path_of(file)
        .trim_start_matches("/files/")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether a node's blob store holds a file of `size` bytes for `hash` (large blobs have their own
/// data file under `<data>/blobs/data/`).
fn holds(node: &Node, hash: &str, size: u64) -> bool {
    let p = node
        .data_dir()
        .join("blobs")
        .join("data")
        .join(format!("{hash}.data"));
    std::fs::metadata(p).is_ok_and(|m| m.len() == size)
}

/// Whether a node's blob store holds some blob of exactly `size` bytes.
fn holds_size(node: &Node, size: u64) -> bool {
    let Ok(dir) = std::fs::read_dir(node.data_dir().join("blobs").join("data")) else {
        return false;
    };
    dir.flatten()
        .any(|e| e.metadata().is_ok_and(|m| m.len() == size))
}

fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn admin_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.key"))
        .expect("admin.key")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_move_between_nodes_and_follow_their_jobs() {
    let extra = [
        "--artifact-sweep-ms",
        "300",
        "--artifact-gc-ms",
        "300",
        "--artifact-replicas",
        "1",
    ];
    let mut cluster = Cluster::start_with(3, |i| opts(i, &extra));
    cluster.wait_membership(3, 0, MEMBERSHIP_TIMEOUT).await;
    let (a, c) = (cluster.api(0), cluster.api(2));

    // --- made on A (the only node serving noise), submitted and downloaded through C ---
    let size = 5 * 1024 * 1024 + 123;
    let (id, file) = make_noise(&c, size as u64, 7).await;
    assert_eq!(file["file_size"], json!(size));
    assert_eq!(file["content_type"], "application/octet-stream");
    assert_eq!(file["file_name"], "noise-7.bin");
    assert!(
        file["url"].as_str().unwrap().starts_with(&a.base),
        "the URL points at the worker: {file}"
    );
    let hash = hash_of(&file);
    let expected = noise(size, 7);
    let r = c.get(&path_of(&file)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(r.header("etag"), Some(format!("\"{hash}\"").as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.body == expected, "C served other bytes than A made");

    // --- Range requests, HEAD, conditional GET, unknown hashes ---
    let b = cluster.api(1);
    let path = path_of(&file);
    let ranged = |range: &'static str| {
        let b = b.clone();
        let path = path.clone();
        async move { b.send(Method::GET, &path, &[("range", range)], None).await }
    };
    let r = ranged("bytes=1000-2999").await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-2999/{size}").as_str())
    );
    assert!(r.body == expected[1000..3000]);
    let r = ranged("bytes=-77").await;
    assert_eq!(r.status, 206);
    assert!(r.body == expected[size - 77..]);
    let r = ranged("bytes=3000000-").await;
    assert_eq!(r.status, 206);
    assert!(r.body == expected[3_000_000..]);
    let r = ranged("bytes=99999999-").await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let r = b.send(Method::HEAD, &path, &[], None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let etag = format!("\"{hash}\"");
    let r = b
        .send(
            Method::GET,
            &path,
            &[("if-none-match", etag.as_str())],
            None,
        )
        .await;
    assert_eq!(r.status, 304);
    let unknown = "ab".repeat(32);
    let r = c.get(&format!("/files/{unknown}")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    r.assert_fal_json("unknown file");
    assert_eq!(c.get("/files/not-a-hash").await.status, 404);
    assert_eq!(c.send(Method::DELETE, &path, &[], None).await.status, 405);

    // --- a large output streams through C with C's memory far below it (256 MiB by default;
    // RUNMESH_ARTIFACT_BIG_MIB=1024 for the 1 GiB figure of docs/BENCHMARKS.md) ---
    let big_mib: u64 = std::env::var("RUNMESH_ARTIFACT_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let big: u64 = big_mib * 1024 * 1024;
    let (_, big_file) = make_noise(&a, big, 11).await;
    let c_pid = cluster.nodes[2].pid().expect("C runs");
    let rss_before = vm_kib(c_pid, "VmRSS:");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .get(c.url(&path_of(&big_file)))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let (mut got, mut state, mut mismatch) = (0u64, 11u64, false);
    let mut want = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    let mut peak_rss = 0;
    while let Some(piece) = stream.next().await {
        carry.extend_from_slice(&piece.expect("body piece"));
        while carry.len() >= want.len() {
            noise_fill(&mut state, &mut want);
            mismatch |= carry[..want.len()] != want[..];
            carry.drain(..want.len());
            got += want.len() as u64;
        }
        peak_rss = peak_rss.max(vm_kib(c_pid, "VmRSS:"));
    }
    got += carry.len() as u64;
    assert_eq!(got, big, "short body");
    assert!(!mismatch, "the large file arrived with other bytes");
    let hwm_kib = vm_kib(c_pid, "VmHWM:");
    eprintln!(
        "serving node RSS: before {rss_before} KiB, peak while streaming {peak_rss} KiB, \
         high-water mark {hwm_kib} KiB, file {} KiB",
        big / 1024
    );
    assert!(
        peak_rss * 1024 < big / 2,
        "C's RSS reached {peak_rss} KiB while streaming a {} KiB file",
        big / 1024
    );

    // --- uploads and data: URIs reach an app (on B or C) as local files ---
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let r = b
        .send(
            Method::POST,
            "/storage/upload",
            &[("content-type", "image/png"), ("x-fal-file-name", "in.png")],
            Some(payload.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let up = r.json();
    assert_eq!(up["file_size"], json!(payload.len()));
    assert_eq!(up["content_type"], "image/png");
    let up_url = up["url"].as_str().unwrap().to_string();
    assert_eq!(up["access_url"], json!(up_url));
    let r = c.get(&path_of(&up)).await;
    assert_eq!(r.status, 200);
    assert!(r.body == payload, "an upload on B read back from C");
    // The JS client's flow: initiate, PUT the bytes to the answered URL, read it back by its
    // token URL on another node; an upload URL binds once, and only URLs the node made work.
    let r = b
        .send(
            Method::POST,
            "/storage/upload/initiate?storage_type=fal-cdn-v3",
            &[("content-type", "application/json")],
            Some(br#"{"content_type":"image/png","file_name":"js.png"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let init = r.json();
    let put_path = path_from(init["upload_url"].as_str().unwrap());
    let file_path_t = path_from(init["file_url"].as_str().unwrap());
    let put = |body: Vec<u8>| {
        let b = b.clone();
        let put_path = put_path.clone();
        async move {
            b.send(
                Method::PUT,
                &put_path,
                &[("content-type", "image/png")],
                Some(body),
            )
            .await
        }
    };
    assert_eq!(put(payload.clone()).await.status, 200);
    assert_eq!(put(b"other".to_vec()).await.status, 409, "a second PUT");
    // C learns the binding when it applies that entry (a job naming the URL is later in the log,
    // so a worker always has it; a direct GET on another node may be a moment early).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut r = c.get(&file_path_t).await;
    while r.status == 404 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        r = c.get(&file_path_t).await;
    }
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert!(r.body == payload, "a JS-flow upload on B read back from C");
    let forged = format!("/storage/upload/put/{}/x.png", "ab".repeat(24));
    let r = b.send(Method::PUT, &forged, &[], Some(b"x".to_vec())).await;
    assert_eq!(r.status, 404, "a token the node did not make");
    let s = a.submit("runmesh/hash", &json!({"file_url": up_url})).await;
    let done = a
        .wait_completed("runmesh/hash", &s.request_id, COMPLETE_TIMEOUT)
        .await;
    let out = a.result("runmesh/hash", &s.request_id).await.json();
    assert_eq!(out["blake3"], up["hash"], "{done} {out}");
    assert_eq!(out["size"], json!(payload.len()));
    let s = a
        .submit(
            "runmesh/hash",
            &json!({"file_url": "data:text/plain;base64,aGVsbG8gd29ybGQ="}),
        )
        .await;
    a.wait_completed("runmesh/hash", &s.request_id, COMPLETE_TIMEOUT)
        .await;
    let out = a.result("runmesh/hash", &s.request_id).await.json();
    assert_eq!(out["size"], json!(11), "{out}");

    // --- an input larger than the inline limit travels as a blob, not in the Raft entry, and
    // reaches the app whole ---
    let text: String = (0..40_000).map(|i| format!("{i} ")).collect();
    assert!(text.len() > 150_000);
    let input = json!({"text": text});
    let input_len = input.to_string().len() as u64;
    let s = c.submit("runmesh/echo", &input).await;
    a.wait_completed("runmesh/echo", &s.request_id, COMPLETE_TIMEOUT)
        .await;
    let out = a.result("runmesh/echo", &s.request_id).await.json();
    assert_eq!(out["text"].as_str().map(str::len), Some(text.len()));
    assert!(
        out["text"] == json!(text),
        "the echo of a large input differs"
    );
    assert!(
        holds_size(&cluster.nodes[2], input_len),
        "the accepting node stored no blob of {input_len} bytes for a large input"
    );

    // --- a replica on another node keeps an output (that nobody downloaded) once its worker is
    // killed ---
    let rep_size = 1024 * 1024 + 5;
    let (_, rep_file) = make_noise(&a, rep_size as u64, 31).await;
    let rep_hash = hash_of(&rep_file);
    let deadline = Instant::now() + COMPLETE_TIMEOUT;
    let holders = loop {
        let h: Vec<usize> = (1..3)
            .filter(|&i| holds(&cluster.nodes[i], &rep_hash, rep_size as u64))
            .collect();
        if !h.is_empty() || Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        holders.len(),
        1,
        "exactly one replica (--artifact-replicas 1)"
    );

    // --- delete IO removes a job's files from every node ---
    let (del_id, del_file) = make_noise(&c, 300_000, 21).await;
    let del_hash = hash_of(&del_file);
    assert_eq!(b.get(&path_of(&del_file)).await.status, 200);
    let key = format!("Key {}", admin_key(&cluster.nodes[0].data_dir()));
    let r = b
        .send(
            Method::DELETE,
            &format!("/admin/requests/{del_id}/io"),
            &[("authorization", key.as_str())],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        b.send(
            Method::DELETE,
            &format!("/admin/requests/{del_id}/io"),
            &[],
            None
        )
        .await
        .status,
        401,
        "delete IO is an admin operation"
    );
    assert_eq!(b.get(&path_of(&del_file)).await.status, 404);
    let deadline = Instant::now() + GONE_TIMEOUT;
    while (0..3).any(|i| holds(&cluster.nodes[i], &del_hash, 300_000)) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        assert!(
            !holds(&cluster.nodes[i], &del_hash, 300_000),
            "node {i} still holds a deleted file"
        );
    }

    cluster.nodes[0].kill9();
    let rep_expected = noise(rep_size, 31);
    for i in 1..3 {
        let r = cluster.api(i).get(&path_of(&rep_file)).await;
        assert_eq!(r.status, 200, "node {i} after A died: {}", r.text());
        assert!(
            r.body == rep_expected,
            "node {i} served other bytes after A died"
        );
    }
    let _ = (id, hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_files_are_removed_everywhere() {
    let extra = [
        "--artifact-ttl-s",
        "3",
        "--artifact-sweep-ms",
        "300",
        "--artifact-gc-ms",
        "300",
    ];
    let mut cluster = Cluster::start_with(2, |i| opts(i, &extra));
    cluster.wait_membership(2, 0, MEMBERSHIP_TIMEOUT).await;
    let b = cluster.api(1);
    let (_, file) = make_noise(&b, 400_000, 3).await;
    let hash = hash_of(&file);
    let r = b.get(&path_of(&file)).await;
    // Served while fresh (it may expire under a very slow machine: then it is a 404, never bytes
    // of something else).
    assert!(r.status == 200 || r.status == 404, "{}", r.status);
    let deadline = Instant::now() + GONE_TIMEOUT;
    while (0..2).any(|i| holds(&cluster.nodes[i], &hash, 400_000)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..2 {
        assert!(
            !holds(&cluster.nodes[i], &hash, 400_000),
            "node {i} still holds an expired file"
        );
    }
    assert_eq!(b.get(&path_of(&file)).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_outlive_the_results_that_named_them() {
    // Results are kept 1 s, files for the default 30 days.
    let extra = [
        "--result-retention-ms",
        "1000",
        "--large-result-retention-ms",
        "1000",
        "--artifact-sweep-ms",
        "300",
        "--artifact-gc-ms",
        "300",
        // Without the kept file list, the expired job's blob would be unnamed: gone after this.
        "--artifact-unnamed-grace-ms",
        "500",
        "--artifact-replicas",
        "0",
    ];
    let mut cluster = Cluster::start_with(2, |i| opts(i, &extra));
    cluster.wait_membership(2, 0, MEMBERSHIP_TIMEOUT).await;
    let b = cluster.api(1);
    let size = 200_000;
    let (id, file) = make_noise(&b, size as u64, 5).await;
    let deadline = Instant::now() + GONE_TIMEOUT;
    while b.status("runmesh/noise", &id, false).await.status != 404 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        b.status("runmesh/noise", &id, false).await.status,
        404,
        "the result expired"
    );
    // Several sweeps and collections later the file is still there, on any node.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let expected = noise(size, 5);
    for i in 0..2 {
        let r = cluster.api(i).get(&path_of(&file)).await;
        assert_eq!(r.status, 200, "node {i}: {}", r.text());
        assert!(r.body == expected, "node {i} served other bytes");
    }
    assert!(holds(&cluster.nodes[0], &hash_of(&file), size as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_large_input_survives_its_accepting_node() {
    // Nothing is placed while the hold file exists, so the input waits on the node that took it
    // until a replica copies it.
    let hold_dir = tempfile::tempdir().unwrap();
    let hold = hold_dir.path().join("hold");
    std::fs::write(&hold, b"").unwrap();
    let hold_arg = hold.to_string_lossy().to_string();
    let extra = [
        "--artifact-sweep-ms",
        "300",
        "--artifact-replicas",
        "1",
        "--dispatch-hold-file",
        hold_arg.as_str(),
    ];
    let mut cluster = Cluster::start_with(3, |i| opts(i, &extra));
    cluster.wait_membership(3, 0, MEMBERSHIP_TIMEOUT).await;
    let c = cluster.api(2);
    let text: String = (0..30_000).map(|i| format!("{i} ")).collect();
    let input = json!({"text": text});
    let input_len = input.to_string().len() as u64;
    let s = c.submit("runmesh/echo", &input).await;
    assert!(holds_size(&cluster.nodes[2], input_len), "stored as a blob");
    let deadline = Instant::now() + COMPLETE_TIMEOUT;
    while !(0..2).any(|i| holds_size(&cluster.nodes[i], input_len)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        (0..2).any(|i| holds_size(&cluster.nodes[i], input_len)),
        "no other node copied the queued job's input"
    );
    cluster.nodes[2].kill9();
    std::fs::remove_file(&hold).unwrap();
    let a = cluster.api(0);
    a.wait_completed("runmesh/echo", &s.request_id, COMPLETE_TIMEOUT)
        .await;
    let out = a.result("runmesh/echo", &s.request_id).await.json();
    assert!(
        out == input,
        "the echo of the input differs after its node died"
    );
}
