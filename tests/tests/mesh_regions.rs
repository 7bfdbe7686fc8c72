//! A mesh of three regions, two nodes each: the membership policy spreads the voters over the
//! regions, so `kill -9` of both nodes of any one region (here the leader's) leaves a majority of
//! voters; the mesh keeps accepting and completing jobs, and a survivor takes the lost seat.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use runmesh_tests::{Api, Cluster, Membership, NodeOpts, MEMBERSHIP_TIMEOUT};
use serde_json::{json, Value};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
const NODES_PER_REGION: usize = 2;
/// How long a silent voter keeps its seat in this test (the default is 10 s).
const VOTER_DOWN_AFTER_MS: u64 = 3_000;
const SPREAD_TIMEOUT: Duration = Duration::from_secs(60);
const ACCEPT_AFTER_LOSS_BOUND: Duration = Duration::from_secs(30);
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(60);
const JOBS_BEFORE: usize = 6;
const JOBS_AFTER: usize = 6;

fn region_of(node: usize) -> &'static str {
    REGIONS[node / NODES_PER_REGION]
}

/// Submits until one is acknowledged or `bound` passes; returns the request id.
async fn submit_acknowledged(apis: &[Api], input: &Value, bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    let mut attempt = 0usize;
    loop {
        let api = &apis[attempt % apis.len()];
        attempt += 1;
        match api.try_submit("runmesh/echo", input).await {
            Ok(id) => return id,
            Err(seen) => {
                assert!(
                    Instant::now() < deadline,
                    "no submit acknowledged within {bound:?}; last answer: {seen}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Waits (bounded) until every running node agrees on 3 voters, one in each region.
async fn wait_voters_spread(
    cluster: &mut Cluster,
    region_by_id: &BTreeMap<String, &'static str>,
    learners: usize,
    timeout: Duration,
) -> Membership {
    let deadline = Instant::now() + timeout;
    loop {
        let m = cluster
            .wait_membership(3, learners, MEMBERSHIP_TIMEOUT)
            .await;
        let regions: BTreeSet<&str> = m
            .voters
            .iter()
            .filter_map(|v| region_by_id.get(v).copied())
            .collect();
        if regions.len() == REGIONS.len() {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "the voters never spread over the regions within {timeout:?}: {m:?} {region_by_id:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_whole_region_keeps_the_mesh_accepting_and_completing_jobs() {
    // Nodes join region by region, so the first three voters crowd the first two regions until
    // the third region's first node arrives and the policy moves a seat to it.
    let nodes = REGIONS.len() * NODES_PER_REGION;
    let mut cluster = Cluster::start_with(nodes, |i| {
        let mut o = NodeOpts::default().slots(2).lease_ms(1_000);
        o.extra_args.extend([
            "--region".to_string(),
            region_of(i).to_string(),
            "--voter-down-after-ms".to_string(),
            VOTER_DOWN_AFTER_MS.to_string(),
        ]);
        o
    });
    let mut region_by_id = BTreeMap::new();
    let mut index_by_id = BTreeMap::new();
    for i in 0..nodes {
        let view = cluster.view(i).await.expect("node answers /admin/cluster");
        let id = Membership::from_view(&view).node_id;
        region_by_id.insert(id.clone(), region_of(i));
        index_by_id.insert(id, i);
    }
    let spread = wait_voters_spread(&mut cluster, &region_by_id, nodes - 3, SPREAD_TIMEOUT).await;
    eprintln!("voters spread: {spread:?}");

    let apis: Vec<Api> = (0..nodes).map(|i| cluster.api(i)).collect();
    let mut acked: BTreeMap<String, Value> = BTreeMap::new();
    for j in 0..JOBS_BEFORE {
        let input = json!({"before": j});
        let id = submit_acknowledged(&apis, &input, ACCEPT_AFTER_LOSS_BOUND).await;
        acked.insert(id, input);
    }

    // The leader's region goes dark: both of its nodes, the leader among them, die at once.
    let leader = cluster.leader_index(Duration::from_secs(30)).await;
    let lost = region_of(leader);
    let lost_nodes: Vec<usize> = (0..nodes).filter(|&i| region_of(i) == lost).collect();
    for &i in &lost_nodes {
        cluster.nodes[i].kill9();
    }
    let killed_at = Instant::now();
    let survivors: Vec<usize> = cluster.running();
    assert_eq!(survivors.len(), nodes - NODES_PER_REGION);
    let survivor_apis: Vec<Api> = survivors.iter().map(|&i| apis[i].clone()).collect();

    // Still accepting: submits to the surviving regions are acknowledged.
    for j in 0..JOBS_AFTER {
        let input = json!({"after": j});
        let id = submit_acknowledged(&survivor_apis, &input, ACCEPT_AFTER_LOSS_BOUND).await;
        if j == 0 {
            eprintln!(
                "first submit after losing {lost} acknowledged {} ms after the kill",
                killed_at.elapsed().as_millis()
            );
        }
        acked.insert(id, input);
    }

    // Every acknowledged job, from before the loss and after it, completes with its own output.
    let reader = &survivor_apis[0];
    let deadline = Instant::now() + COMPLETE_TIMEOUT;
    for (id, input) in &acked {
        let r = reader
            .wait_completed(
                "runmesh/echo",
                id,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await;
        assert_eq!(r["status"], "COMPLETED", "{id}: {r}");
        let result = reader.result("runmesh/echo", id).await;
        assert_eq!(result.status, 200, "{id}: {}", result.text());
        assert_eq!(&result.json(), input, "result of {id}");
    }

    // The lost region's voter seat went to a survivor: 3 live voters again (the dead stay
    // learners until they are removed).
    let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
    loop {
        let m = cluster
            .wait_membership(3, nodes - 3, MEMBERSHIP_TIMEOUT)
            .await;
        let live = m
            .voters
            .iter()
            .filter(|v| index_by_id.get(*v).is_some_and(|i| survivors.contains(i)))
            .count();
        if live == 3 {
            eprintln!("voters after losing {lost}: {m:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost region's voter was never replaced: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
