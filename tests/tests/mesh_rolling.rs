//! A rolling restart, the way an upgrade goes: each node of a 3-voter mesh in turn is stopped
//! with SIGTERM and started again on its own data dir while a client keeps submitting. The mesh
//! keeps acknowledging submits throughout (no gap longer than an election or two), and every
//! acknowledged job completes with its own output. (A mixed-version mesh negotiates the Raft
//! protocol per connection: `raft_quic::tests::peers_agree_on_a_protocol_version_or_say_they_
//! share_none`; old data dirs load: `upgrade.rs`.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runmesh_tests::{Api, Cluster, NodeOpts, MEMBERSHIP_TIMEOUT};
use serde_json::{json, Value};

/// Longest stretch without an acknowledged submit: a restarted leader costs an election (about
/// 2 to 3 s with the default timing); generous for a loaded 2-core machine.
const ACK_GAP_BOUND: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(15);
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(90);
const SUBMITS_MAX: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_keeps_the_mesh_accepting_and_loses_nothing() {
    let mut cluster = Cluster::start(3, NodeOpts::default().slots(2).lease_ms(1_000));
    cluster.wait_membership(3, 0, MEMBERSHIP_TIMEOUT).await;
    let apis: Vec<Api> = (0..3).map(|i| cluster.api(i)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let ack_times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let submitter = {
        let (stop, acked, ack_times, apis) =
            (stop.clone(), acked.clone(), ack_times.clone(), apis.clone());
        tokio::spawn(async move {
            for i in 0..SUBMITS_MAX {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let input = json!({"i": i});
                match apis[i % apis.len()]
                    .try_submit("runmesh/echo", &input)
                    .await
                {
                    Ok(id) => {
                        acked.lock().expect("acked").insert(id, input);
                        ack_times.lock().expect("times").push(Instant::now());
                    }
                    // Refused or unreachable (the node is restarting): no promise was made.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let exited = cluster.nodes[i].stop(STOP_GRACE);
        assert!(
            exited,
            "node {i} did not stop within {STOP_GRACE:?} of SIGTERM"
        );
        cluster.nodes[i].restart_same_dir();
        cluster.wait_membership(3, 0, MEMBERSHIP_TIMEOUT).await;
        // Back in service before the next one goes: its replica caught up and writable.
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        while cluster.api(i).healthz().await.status != 200 {
            assert!(
                Instant::now() < deadline,
                "node {i} never became healthy again"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "node {i} restarted; {:?} since the first stop",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Release);
    submitter.await.expect("submitter");

    let times = ack_times.lock().expect("times").clone();
    let mut gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let longest = gaps.last().copied().unwrap_or_default();
    eprintln!(
        "{} submits acknowledged; longest gap {longest:?}",
        times.len()
    );
    assert!(
        longest < ACK_GAP_BOUND,
        "the mesh acknowledged nothing for {longest:?} during the rolling restart"
    );

    let acked = acked.lock().expect("acked").clone();
    let reader = &apis[0];
    let deadline = Instant::now() + COMPLETE_TIMEOUT;
    for (id, input) in &acked {
        reader
            .wait_completed(
                "runmesh/echo",
                id,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await;
        let r = reader.result("runmesh/echo", id).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(&r.json(), input, "result of {id}");
    }
}
