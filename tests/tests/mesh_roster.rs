//! Nodes come and go on purpose, from the CLI: `runmesh node drain` moves a voter's seat to another
//! member and stops new jobs going to it; `runmesh node remove` takes it out of the membership and
//! refuses its identity until `runmesh node readmit`; `runmesh node list` shows all of it.

use std::process::Command;
use std::time::{Duration, Instant};

use runmesh_tests::{
    free_mesh_port, mesh_opts, run_dev_to_exit, runmesh_bin, Cluster, Membership, Node, NodeOpts,
    MEMBERSHIP_TIMEOUT,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// `runmesh node ARGS --http <node i> --admin-key K`; returns stdout, panics on failure.
fn node_cli(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let out = Command::new(runmesh_bin())
        .arg("node")
        .args(args)
        .arg("--http")
        .arg(cluster.nodes[i].addr().to_string())
        .arg("--admin-key")
        .arg(&cluster.admin_key)
        .env_remove("RUNMESH_HTTP")
        .env_remove("RUNMESH_ADMIN_KEY")
        .env_remove("RUNMESH_DATA_DIR")
        .output()
        .expect("run runmesh node");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "runmesh node {args:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn view_of(cluster: &Cluster, i: usize) -> Value {
    cluster.view(i).await.expect("a cluster view")
}

/// Waits (bounded) until node `i`'s view satisfies `ok`.
async fn wait_view(cluster: &Cluster, i: usize, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = cluster.view(i).await {
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: never so: {v:#}");
        }
        assert!(Instant::now() < deadline, "{what}: no view");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn row<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_str() == Some(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_remove_and_readmit_from_the_cli() {
    let mut cluster = Cluster::start(4, NodeOpts::default().slots(2));
    cluster.wait_membership(3, 1, MEMBERSHIP_TIMEOUT).await;
    let leader = cluster.leader_index(WAIT).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(
                view_of(&cluster, i).await["node_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        ids
    };
    let m = Membership::from_view(&view_of(&cluster, leader).await);
    // A voter that does not lead, asked through a node that is not the leader either.
    let d = (0..4)
        .find(|&i| i != leader && m.voters.contains(&ids[i]))
        .expect("a follower voter");
    let via = (0..4)
        .find(|&i| i != leader && i != d)
        .expect("another node");
    let said = node_cli(&cluster, via, &["drain", &ids[d]]);
    assert!(said.contains("draining"), "{said}");

    // Its seat moves to the learner; it stays a member, marked draining everywhere.
    let v = wait_view(
        &cluster,
        leader,
        "the drained voter gave up its seat",
        |v| {
            let m = Membership::from_view(v);
            m.voters.len() == 3 && m.learners.contains(&ids[d])
        },
    )
    .await;
    assert_eq!(
        row(&v, &ids[d]).map(|r| r["draining"].clone()),
        Some(json!(true))
    );
    let list = node_cli(&cluster, via, &["list"]);
    assert!(list.contains("learner,draining"), "{list}");

    // No new job goes to it.
    let api = cluster.api(leader);
    let mut jobs = Vec::new();
    for i in 0..12 {
        jobs.push(
            api.submit("runmesh/echo", &json!({ "i": i }))
                .await
                .request_id,
        );
    }
    for id in &jobs {
        api.wait_completed("runmesh/echo", id, WAIT).await;
        let r = api.result("runmesh/echo", id).await;
        let worker = r.header("x-runmesh-worker").unwrap_or_default().to_string();
        assert!(
            !worker.is_empty() && worker != ids[d],
            "{id} ran on {worker}"
        );
    }
    // Undrain, then remove: it leaves the membership, and the view lists it as removed.
    node_cli(&cluster, via, &["undrain", &ids[d]]);
    wait_view(&cluster, leader, "the drain ended", |v| {
        row(v, &ids[d]).is_some_and(|r| r["draining"] == json!(false))
    })
    .await;
    let said = node_cli(&cluster, via, &["remove", &ids[d]]);
    assert!(said.contains("removed"), "{said}");
    let v = wait_view(
        &cluster,
        leader,
        "the removed node left the membership",
        |v| {
            let m = Membership::from_view(v);
            !m.voters.contains(&ids[d]) && !m.learners.contains(&ids[d])
        },
    )
    .await;
    assert!(
        v["removed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["id"] == json!(ids[d]))),
        "{v:#}"
    );
    let key = std::fs::read(cluster.nodes[d].data_dir().join("node.key")).expect("node.key");
    cluster.nodes[d].kill9();
    cluster.wait_membership(3, 0, MEMBERSHIP_TIMEOUT).await;
    // The cluster keeps taking jobs.
    let s = api
        .submit("runmesh/echo", &json!({ "after": "remove" }))
        .await;
    api.wait_completed("runmesh/echo", &s.request_id, WAIT)
        .await;

    // Its identity is refused, even with the right secret and a fresh data dir.
    let fresh = tempfile::tempdir().expect("temp dir");
    let data = fresh.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("node.key"), &key).expect("write key");
    let bootstrap = format!("127.0.0.1:{}", cluster.p2p_ports[leader]);
    let args = vec![
        "--p2p".to_string(),
        format!("127.0.0.1:{}", free_mesh_port()),
        "--bootstrap".to_string(),
        bootstrap,
        "--cluster-secret".to_string(),
        cluster.secret.clone(),
    ];
    let (ok, stderr) = run_dev_to_exit(&data, &args);
    assert!(!ok && stderr.contains("was removed"), "{stderr}");

    // Readmitted, the same identity joins again as a learner.
    let said = node_cli(&cluster, via, &["readmit", &ids[d]]);
    assert!(said.contains("readmitted"), "{said}");
    let again = fresh.path().join("again");
    std::fs::create_dir_all(&again).expect("data dir");
    std::fs::write(again.join("node.key"), &key).expect("write key");
    let back = Node::start_on_copy(
        &again,
        mesh_opts(
            NodeOpts::default(),
            free_mesh_port(),
            Some(cluster.p2p_ports[leader]),
            &cluster.secret,
        ),
    );
    let v = wait_view(&cluster, leader, "the readmitted node joined", |v| {
        Membership::from_view(v).learners.contains(&ids[d])
    })
    .await;
    assert!(v["removed"].as_array().is_some_and(Vec::is_empty), "{v:#}");
    drop(back);
}
