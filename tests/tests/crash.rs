//! `kill -9` in the middle of a submit burst loses no acknowledged job.
//!
//! A 200 on submit means the job is committed to the Raft log. After a crash and a restart on the same
//! data dir, every acknowledged id must exist and reach COMPLETED with its output (jobs that were
//! running at the crash come back when their lease expires: `--lease-ms 1000` keeps that quick).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runmesh_tests::{Api, Node, NodeOpts};
use serde_json::{json, Value};

const TASKS: usize = 8;
const SUBMITS_PER_TASK: usize = 50;
/// Kill after this many acks: well inside the burst of TASKS * SUBMITS_PER_TASK.
const KILL_AFTER_ACKS: usize = 120;
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// An acknowledged job: its app and the output it must produce.
#[derive(Clone, Debug)]
struct Acked {
    app: &'static str,
    expected: Value,
}

/// Fires the burst, kills the node after `KILL_AFTER_ACKS` acks, returns every acked job.
async fn burst_and_kill(node: &mut Node, round: usize) -> BTreeMap<String, Acked> {
    let api = node.api();
    let acks = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let api = api.clone();
        let acks = Arc::clone(&acks);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..SUBMITS_PER_TASK {
                let (app, input, expected) = if i % 2 == 0 {
                    let input = json!({"round": round, "task": t, "i": i});
                    ("runmesh/echo", input.clone(), input)
                } else {
                    ("runmesh/sleep", json!({"ms": 20}), json!({"slept_ms": 20}))
                };
                match api
                    .try_send(
                        reqwest::Method::POST,
                        &format!("/queue/{app}"),
                        &[("content-type", "application/json")],
                        Some(input.to_string().into_bytes()),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        let id = r.json()["request_id"]
                            .as_str()
                            .expect("request_id in a 200 submit")
                            .to_string();
                        acks.fetch_add(1, Ordering::SeqCst);
                        mine.push((id, Acked { app, expected }));
                    }
                    // Anything else is not an ack: the client would retry; nothing to check.
                    Ok(_) => {}
                    // The node is gone: this task's burst is over.
                    Err(_) => break,
                }
            }
            mine
        }));
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.load(Ordering::SeqCst) < KILL_AFTER_ACKS
        && !tasks.iter().all(|t| t.is_finished())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_at_kill = acks.load(Ordering::SeqCst);
    node.kill9();

    let mut all = BTreeMap::new();
    for t in tasks {
        let mine = tokio::time::timeout(Duration::from_secs(70), t)
            .await
            .expect("submit task ends once the node is dead")
            .expect("submit task panicked");
        all.extend(mine);
    }
    eprintln!(
        "round {round}: killed after {acked_at_kill} acks, {} acked in total of {}",
        all.len(),
        TASKS * SUBMITS_PER_TASK
    );
    assert!(
        acked_at_kill >= 1,
        "no submit was acknowledged before the kill"
    );
    all
}

/// Every acked job exists, reaches COMPLETED without error, and its result is the expected output,
/// identical on a second read.
async fn verify_all(api: &Api, acked: &BTreeMap<String, Acked>) {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let mut pending: Vec<&String> = acked.keys().collect();
    let mut last_seen: BTreeMap<&String, String> = BTreeMap::new();
    // Each round polls every pending id once; the deadline bounds the rounds.
    for _ in 0..10_000 {
        let mut still = Vec::new();
        for id in pending {
            let job = &acked[id];
            let r = api.status(job.app, id, false).await;
            assert_ne!(
                r.status, 404,
                "acknowledged request {id} ({}) lost after restart",
                job.app
            );
            assert!(
                r.status == 200 || r.status == 202,
                "status of {id}: HTTP {} {}",
                r.status,
                r.text()
            );
            let s = r.json();
            if s["status"] == "COMPLETED" {
                assert!(
                    s.get("error").is_none_or(Value::is_null),
                    "acked job {id} failed after the crash: {s}"
                );
            } else {
                last_seen.insert(id, s.to_string());
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pending.is_empty(),
        "{} acked jobs not COMPLETED within {RECOVERY_TIMEOUT:?}, e.g. {:?}",
        pending.len(),
        pending
            .iter()
            .take(3)
            .map(|id| (id, last_seen.get(id)))
            .collect::<Vec<_>>()
    );

    for (id, job) in acked {
        let first = api.result(job.app, id).await;
        assert_eq!(first.status, 200, "result of {id}: {}", first.text());
        assert_eq!(first.json(), job.expected, "result of {id}");
        let second = api.result(job.app, id).await;
        assert_eq!(second.body, first.body, "second read of {id} differs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_burst_loses_no_acknowledged_job() {
    let mut node = Node::start(NodeOpts::default().lease_ms(1000));
    let mut acked = BTreeMap::new();
    for round in 0..2 {
        let got = burst_and_kill(&mut node, round).await;
        assert!(!got.is_empty(), "round {round}: nothing acknowledged");
        acked.extend(got);
        node.restart_same_dir();
        if round == 0 {
            // Crash again during recovery, before the leases of the interrupted jobs expire.
            node.kill9();
            node.restart_same_dir();
        }
        // Jobs from every earlier round are still there after each restart.
        verify_all(&node.api(), &acked).await;
    }

    // The recovered node still takes new work.
    let api = node.api();
    let sub = api.submit("runmesh/echo", &json!({"after": "crash"})).await;
    api.wait_completed("runmesh/echo", &sub.request_id, Duration::from_secs(20))
        .await;
    assert_eq!(
        api.result("runmesh/echo", &sub.request_id).await.json(),
        json!({"after": "crash"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_while_a_job_runs_requeues_it_after_the_lease() {
    let mut node = Node::start(NodeOpts::default().lease_ms(1000));
    let api = node.api();
    let sub = api.submit("runmesh/sleep", &json!({"ms": 3000})).await;
    api.wait_status(
        "runmesh/sleep",
        &sub.request_id,
        false,
        Duration::from_secs(20),
        "IN_PROGRESS",
        |s| s["status"] == "IN_PROGRESS",
    )
    .await;
    node.kill9();
    node.restart_same_dir();
    let api = node.api();
    let s = api
        .wait_completed("runmesh/sleep", &sub.request_id, RECOVERY_TIMEOUT)
        .await;
    assert!(s.get("error").is_none_or(Value::is_null), "{s}");
    assert_eq!(
        api.result("runmesh/sleep", &sub.request_id).await.json(),
        json!({"slept_ms": 3000})
    );
}

/// Files are as durable as the jobs that name them: an upload's URL and a finished job's output
/// file read back after a `kill -9` that follows at once (the blob store batched its metadata for
/// up to 500 ms, so both were lost to a crash right after they were acknowledged).
#[tokio::test(flavor = "multi_thread")]
async fn kill9_right_after_an_upload_and_an_output_keeps_both_files() {
    let mut node = Node::start_default();
    let api = node.api();
    let upload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let r = api
        .send(
            reqwest::Method::POST,
            "/storage/upload",
            &[("content-type", "application/octet-stream")],
            Some(upload.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].as_str().expect("url").to_string();
    let sub = api
        .submit("runmesh/noise", &json!({"bytes": 70_000, "seed": 3}))
        .await;
    api.wait_completed("runmesh/noise", &sub.request_id, Duration::from_secs(20))
        .await;
    let output = api.result("runmesh/noise", &sub.request_id).await.json();
    let output_url = output["file"]["url"]
        .as_str()
        .expect("file url")
        .to_string();
    let noise = api.get(&output_url).await;
    assert_eq!(noise.status, 200);
    node.kill9();

    node.restart_same_dir();
    let api = node.api();
    let path = |u: &str| u[u.find("/files/").expect("a /files/ URL")..].to_string();
    let got = api.get(&path(&url)).await;
    assert_eq!(
        got.status,
        200,
        "the upload after the crash: {}",
        got.text()
    );
    assert_eq!(got.body, upload);
    let got = api.get(&path(&output_url)).await;
    assert_eq!(
        got.status,
        200,
        "the output after the crash: {}",
        got.text()
    );
    assert_eq!(got.body, noise.body);
}
