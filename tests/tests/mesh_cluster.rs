//! A five-node mesh on 127.0.0.1: three voters and two learners agree on the membership, jobs
//! submitted round-robin to every node all complete, and every node serves status and result for
//! every job (reads are local: each node holds the full log; writes on followers are forwarded).

use std::time::Duration;

use runmesh_tests::{Cluster, NodeOpts, MEMBERSHIP_TIMEOUT};
use serde_json::json;

const NODES: usize = 5;
const JOBS_PER_NODE: usize = 3;
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_settle_on_three_voters_and_two_learners_and_serve_every_job() {
    let mut cluster = Cluster::start(NODES, NodeOpts::default().slots(2).lease_ms(2_000));
    let m = cluster.wait_membership(3, 2, MEMBERSHIP_TIMEOUT).await;
    assert!(
        m.leader.as_ref().is_some_and(|l| m.voters.contains(l)),
        "{m:?}"
    );

    // Round-robin submits; each is read back on the node that took it right away
    // (read-your-writes through a forwarded write).
    let mut jobs = Vec::new();
    for round in 0..JOBS_PER_NODE {
        for i in 0..NODES {
            let (app, input) = if round % 3 == 2 {
                ("runmesh/sleep", json!({"ms": 50}))
            } else {
                ("runmesh/echo", json!({"node": i, "round": round}))
            };
            let api = cluster.api(i);
            let s = api.submit(app, &input).await;
            let st = api.status(app, &s.request_id, false).await;
            assert!(
                st.status == 200 || st.status == 202,
                "node {i} does not see the job it just accepted: {} {}",
                st.status,
                st.text()
            );
            jobs.push((app, s.request_id, input));
        }
    }

    // Every job completes, and every node serves its status and result.
    for (app, id, input) in &jobs {
        cluster
            .api(0)
            .wait_completed(app, id, COMPLETE_TIMEOUT)
            .await;
        for i in 0..NODES {
            let api = cluster.api(i);
            let st = api.wait_completed(app, id, COMPLETE_TIMEOUT).await;
            assert_eq!(st["status"], "COMPLETED", "node {i}: {st}");
            let r = api.result(app, id).await;
            assert_eq!(r.status, 200, "node {i} result of {id}: {}", r.text());
            let expected = if *app == "runmesh/sleep" {
                json!({"slept_ms": 50})
            } else {
                input.clone()
            };
            assert_eq!(r.json(), expected, "node {i} result of {id}");
        }
    }

    // Learners and voters alike still agree after the traffic.
    let after = cluster.wait_membership(3, 2, MEMBERSHIP_TIMEOUT).await;
    assert_eq!(after.voters, m.voters);
}
