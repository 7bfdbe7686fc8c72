//! A graceful stop (SIGTERM): the node starts no new job, lets the running ones finish and records
//! their results within `--shutdown-grace-ms`, and leaves what still runs after that to its lease.

use std::time::Duration;

use runmesh_tests::{Node, NodeOpts};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
/// A node with nothing left to wait for exits well within this.
const EXIT_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_and_starts_no_new_one() {
    let mut node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let running = api.submit("runmesh/sleep", &json!({ "ms": 1500 })).await;
    api.wait_started("runmesh/sleep", &running.request_id, WAIT)
        .await;
    // One slot: this one waits in the queue behind it.
    let queued = api.submit("runmesh/sleep", &json!({ "ms": 10 })).await;

    assert!(node.stop(EXIT_WAIT), "the node did not exit after SIGTERM");
    let log = node.stderr_all();

    // Started again: the running job's result was recorded before the node went (a node that just
    // dropped it would show it running until its lease ran out), and the queued one never started.
    node.restart_same_dir();
    let api = node.api();
    let s = api
        .status("runmesh/sleep", &running.request_id, false)
        .await;
    assert_eq!(s.json()["status"], json!("COMPLETED"), "{}", s.text());
    let r = api.result("runmesh/sleep", &running.request_id).await;
    assert_eq!(r.json(), json!({ "slept_ms": 1500 }), "{}", r.text());
    api.wait_completed("runmesh/sleep", &queued.request_id, WAIT)
        .await;
    assert!(log.contains("letting the running ones finish"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_grace_is_left_to_its_lease_and_runs_again() {
    let mut opts = NodeOpts::default().slots(1).lease_ms(1_000);
    opts.extra_args = vec!["--shutdown-grace-ms".into(), "200".into()];
    let mut node = Node::start(opts);
    let api = node.api();
    let long = api.submit("runmesh/sleep", &json!({ "ms": 3000 })).await;
    api.wait_started("runmesh/sleep", &long.request_id, WAIT)
        .await;
    assert!(node.stop(EXIT_WAIT), "the node did not exit after SIGTERM");
    let log = node.stderr_all();
    assert!(log.contains("left to their leases"), "{log}");
    node.restart_same_dir();
    let api = node.api();
    api.wait_completed("runmesh/sleep", &long.request_id, WAIT)
        .await;
    let r = api.result("runmesh/sleep", &long.request_id).await;
    assert_eq!(r.json(), json!({ "slept_ms": 3000 }), "{}", r.text());
}
