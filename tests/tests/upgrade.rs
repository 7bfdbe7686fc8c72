//! Upgrades keep the data (issue 24, part 2). `tests/fixtures/datadir-v1` is a data dir written
//! by format version 1 (runmesh at 9265882, by `tests/fixtures/make_datadir_v1.py`): finished,
//! failed, cancelled, queued and running jobs, a key, uploads, an output file and a webhook still
//! owed. Today's node starts on a copy of it with everything there, answering as version 1
//! answered; a data dir of an unknown newer format is refused with nothing changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use runmesh_tests::{refused_start, Node, NodeOpts};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);
const TEN_YEARS_MS: &str = "315360000000";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/datadir-v1")
}

fn expect() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/datadir-v1.json");
    let text = std::fs::read_to_string(&path).expect("datadir-v1.json");
    serde_json::from_str(&text).expect("datadir-v1.json parses")
}

/// Listens where the fixture's webhook points and returns the first request's bytes.
async fn webhook_receiver(port: u16) -> tokio::task::JoinHandle<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("the fixture's webhook port {port} is taken: {e}"));
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        // Headers and a small JSON body; stop once the body named by content-length is in.
        loop {
            let n = sock.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        String::from_utf8_lossy(&got).to_string()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_1_data_dir_loads_with_everything_in_it() {
    let expect = expect();
    let hook_port = expect["webhook_port"].as_u64().expect("webhook_port") as u16;
    let delivery = webhook_receiver(hook_port).await;
    // Held, so the queued job is seen queued before it runs.
    let hold = tempfile::NamedTempFile::new().expect("hold file");
    let opts = NodeOpts {
        // The fixture's jobs finished when it was made: keep results and files for years, and
        // collect no garbage while the test reads, so what is checked does not depend on the
        // fixture's age (retention itself is tested elsewhere).
        extra_args: [
            "--require-auth",
            "--dispatch-hold-file",
            &hold.path().display().to_string(),
            "--result-retention-ms",
            TEN_YEARS_MS,
            "--large-result-retention-ms",
            TEN_YEARS_MS,
            "--artifact-ttl-s",
            "315360000",
            "--artifact-gc-ms",
            "3600000",
        ]
        .map(String::from)
        .to_vec(),
        ..NodeOpts::default()
    };
    let node = Node::start_on_copy(&fixture(), opts);
    let admin = expect["admin_key"].as_str().expect("admin_key").to_string();
    let auth = format!("Key {admin}");
    let api = node.api().with_header("authorization", &auth);

    // Finished jobs answer exactly as version 1 answered.
    for name in ["completed", "failed", "noise", "webhook", "cancelled"] {
        let job = &expect["jobs"][name];
        let (app, id) = (
            job["app"].as_str().expect("app"),
            job["id"].as_str().expect("id"),
        );
        let st = api.status(app, id, false).await;
        assert_eq!(st.status, 200, "{name}: {}", st.text());
        assert_eq!(st.json()["status"], job["state"], "{name}");
        let r = api.result(app, id).await;
        assert_eq!(
            (r.status as u64, r.json()),
            (
                job["answer"]["status"].as_u64().expect("status"),
                job["answer"]["body"].clone()
            ),
            "{name}: the result changed"
        );
    }
    let queued = &expect["jobs"]["queued"];
    let qid = queued["id"].as_str().expect("id");
    assert_eq!(
        api.status("runmesh/echo", qid, false).await.json()["status"],
        "IN_QUEUE"
    );

    // Files: the output blob and both uploads, byte for byte.
    for (name, file) in expect["files"].as_object().expect("files") {
        let r = api.get(file["path"].as_str().expect("path")).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let digest = format!("{:x}", Sha256::digest(&r.body));
        assert_eq!(digest, file["sha256"].as_str().expect("sha256"), "{name}");
    }

    // The key still works; a made-up one does not.
    let key = expect["key"]["key"].as_str().expect("key");
    let with_key = node
        .api()
        .with_header("authorization", &format!("Key {key}"));
    let input = serde_json::json!({"with": "the version-1 key"});
    let r = with_key.submit_raw("runmesh/echo", &input, &[]).await;
    assert_eq!(r.status, 200, "the version-1 key: {}", r.text());
    let stranger = node
        .api()
        .with_header("authorization", "Key nobody:nothing");
    let r = stranger.submit_raw("runmesh/echo", &input, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // The owed webhook is delivered.
    let hook = tokio::time::timeout(WAIT, delivery)
        .await
        .expect("the owed webhook was never delivered")
        .expect("receiver");
    let hook_id = expect["jobs"]["webhook"]["id"].as_str().expect("id");
    assert!(hook.contains(hook_id), "delivery of another job: {hook}");

    // Released, the queued job runs; the job that was running when version 1 died runs again.
    std::fs::remove_file(hold.path()).expect("release the hold");
    let done = api.wait_completed("runmesh/echo", qid, WAIT).await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(
        api.result("runmesh/echo", qid).await.json(),
        queued["input"]
    );
    let running = &expect["jobs"]["running"];
    let rid = running["id"].as_str().expect("id");
    api.wait_completed("runmesh/sleep", rid, WAIT).await;
    assert_eq!(api.result("runmesh/sleep", rid).await.status, 200);

    // The dir now says which format it is in.
    let mark = std::fs::read_to_string(node.data_dir().join("format.json")).expect("format.json");
    let mark: Value = serde_json::from_str(&mark).expect("format.json parses");
    assert_eq!(mark["format"], 1);
}

#[test]
fn a_data_dir_of_a_newer_format_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    runmesh_tests::copy_dir(&fixture(), &data);
    let mark = r#"{"format": 99, "written_by": "runmesh 99.0.0"}"#;
    std::fs::write(data.join("format.json"), mark).expect("write the mark");
    let before = listing(&data);

    let stderr = refused_start(&data);
    assert!(stderr.contains("format 99, newer than"), "{stderr}");
    assert!(
        stderr.contains("nothing in the dir was changed"),
        "{stderr}"
    );
    assert_eq!(listing(&data), before, "the refused start changed the dir");
}

/// Every file under `dir` with its content digest.
fn listing(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = runmesh_tests::tree(dir)
        .into_iter()
        .filter(|(_, meta)| meta.is_file())
        .map(|(path, _)| {
            let bytes = std::fs::read(&path).expect("read");
            (path, format!("{:x}", Sha256::digest(&bytes)))
        })
        .collect();
    out.sort();
    out
}
