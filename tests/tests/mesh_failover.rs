//! `kill -9` the Raft leader during a burst of submits to every node: a new leader serves within a
//! few seconds, every acknowledged job completes exactly once (none lost, none run twice into a
//! second result), and a learner takes the dead voter's seat.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runmesh_tests::{Api, Cluster, NodeOpts, MEMBERSHIP_TIMEOUT};
use serde_json::{json, Value};

/// Concurrent submitters, spread over the nodes.
const SUBMITTERS: usize = 6;
/// Burst time before the kill, and after the first acknowledged submit that follows it.
const BEFORE_KILL: Duration = Duration::from_millis(1_500);
const AFTER_RECOVERY: Duration = Duration::from_millis(1_500);
/// "A few seconds": generous for a loaded 2-core CI machine (the election itself takes ~1 s).
const NEW_LEADER_BOUND: Duration = Duration::from_secs(15);
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(90);
const SUBMITS_PER_SUBMITTER_MAX: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_mid_burst_loses_no_acknowledged_job() {
    // 3 voters + 1 learner; short leases so the dead leader's running jobs come back quickly.
    let mut cluster = Cluster::start(4, NodeOpts::default().slots(2).lease_ms(1_000));
    cluster.wait_membership(3, 1, MEMBERSHIP_TIMEOUT).await;
    let leader = cluster.leader_index(Duration::from_secs(30)).await;
    let apis: Vec<Api> = (0..cluster.nodes.len()).map(|i| cluster.api(i)).collect();

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at_ms = Arc::new(AtomicU64::new(u64::MAX));
    let first_ack_after_kill_ms = Arc::new(AtomicU64::new(u64::MAX));
    let acked: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..SUBMITTERS {
        let apis = apis.clone();
        let (stop, killed_at_ms, first_ack) = (
            stop.clone(),
            killed_at_ms.clone(),
            first_ack_after_kill_ms.clone(),
        );
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u32;
            for i in 0..SUBMITS_PER_SUBMITTER_MAX {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                // Round-robin over every node, the leader included (until it dies).
                let api = &apis[(t + i) % apis.len()];
                let input = json!({"t": t, "i": i});
                let sent_ms = epoch.elapsed().as_millis() as u64;
                match api.try_submit("runmesh/echo", &input).await {
                    Ok(id) => {
                        let dup = acked.lock().unwrap().insert(id.clone(), input);
                        assert!(dup.is_none(), "request id {id} acknowledged twice");
                        if sent_ms >= killed_at_ms.load(Ordering::Acquire) {
                            first_ack
                                .fetch_min(epoch.elapsed().as_millis() as u64, Ordering::AcqRel);
                        }
                    }
                    // Refused or unreachable: not acknowledged, so no promise was made.
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            failures
        }));
    }

    tokio::time::sleep(BEFORE_KILL).await;
    let acked_before_kill = acked.lock().unwrap().len();
    assert!(
        acked_before_kill > 0,
        "no submit was acknowledged before the kill"
    );
    killed_at_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Release);
    cluster.nodes[leader].kill9();
    let killed = killed_at_ms.load(Ordering::Acquire);

    // A new leader takes writes: some submit sent after the kill is acknowledged.
    let deadline = Instant::now() + NEW_LEADER_BOUND;
    while first_ack_after_kill_ms.load(Ordering::Acquire) == u64::MAX {
        assert!(
            Instant::now() < deadline,
            "no submit acknowledged within {NEW_LEADER_BOUND:?} of killing the leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover_ms = first_ack_after_kill_ms.load(Ordering::Acquire) - killed;
    eprintln!("first acknowledged submit {failover_ms} ms after the leader was killed");
    tokio::time::sleep(AFTER_RECOVERY).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        let failures = t.await.expect("submitter");
        eprintln!("submitter failures: {failures}");
    }

    // Every acknowledged job completes, on every survivor, with its own output.
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} jobs acknowledged ({acked_before_kill} before the kill)",
        acked.len()
    );
    let survivors: Vec<usize> = cluster.running();
    assert_eq!(survivors.len(), 3);
    let reader = &apis[survivors[0]];
    let deadline = Instant::now() + COMPLETE_TIMEOUT;
    let mut pending: Vec<&String> = acked.keys().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let st = reader.status("runmesh/echo", id, false).await;
            assert!(
                st.status == 200 || st.status == 202,
                "acknowledged job {id} is unknown after the failover: {} {}",
                st.status,
                st.text()
            );
            let status = st.json()["status"].as_str().unwrap_or_default().to_string();
            if status != "COMPLETED" {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} acknowledged jobs not completed within {COMPLETE_TIMEOUT:?}, e.g. {}",
                pending.len(),
                pending[0]
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    for (id, input) in &acked {
        for &i in &survivors {
            let r = apis[i].result("runmesh/echo", id).await;
            assert_eq!(r.status, 200, "node {i}: result of {id}: {}", r.text());
            assert_eq!(&r.json(), input, "node {i}: result of {id}");
        }
    }

    // The learner replaced the dead voter (which stays a learner): 3 voters again.
    let m = cluster.wait_membership(3, 1, MEMBERSHIP_TIMEOUT).await;
    eprintln!("membership after the failover: {m:?}");
}
