//! Admission: a node that cannot prove the cluster secret is refused (and says so), the member that
//! refused it logs the attempt, and the cluster's membership does not change.

use std::time::Duration;

use runmesh_tests::{free_mesh_port, run_dev_to_exit, Cluster, NodeOpts};

fn run_to_exit(args: &[String]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    run_dev_to_exit(&dir.path().join("data"), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wrong_or_missing_secret_is_refused() {
    let mut cluster = Cluster::start(2, NodeOpts::default());
    let before = cluster.wait_membership(2, 0, Duration::from_secs(60)).await;
    let bootstrap = format!("127.0.0.1:{}", cluster.p2p_ports[0]);

    // Wrong secret: the join is refused and the node exits with the reason.
    let args = vec![
        "--p2p".to_string(),
        format!("127.0.0.1:{}", free_mesh_port()),
        "--bootstrap".to_string(),
        bootstrap.clone(),
        "--cluster-secret".to_string(),
        "not-the-secret".to_string(),
    ];
    let (ok, stderr) = run_to_exit(&args);
    assert!(!ok, "a node with a wrong secret must not start");
    assert!(
        stderr.contains("join refused") && stderr.contains("wrong cluster secret"),
        "stderr: {stderr}"
    );
    // The member it asked logged the refusal.
    let refused_logged = cluster.nodes[0]
        .stderr_all()
        .contains("wrong cluster secret");
    assert!(
        refused_logged,
        "bootstrap log: {}",
        cluster.nodes[0].stderr_tail()
    );

    // No secret at all: the node refuses to try (it could not prove anything).
    let args = vec![
        "--p2p".to_string(),
        format!("127.0.0.1:{}", free_mesh_port()),
        "--bootstrap".to_string(),
        bootstrap,
    ];
    let (ok, stderr) = run_to_exit(&args);
    assert!(!ok);
    assert!(stderr.contains("cluster_secret"), "stderr: {stderr}");

    // Nobody was added, and the cluster still takes writes.
    let after = cluster.wait_membership(2, 0, Duration::from_secs(30)).await;
    assert_eq!(after.voters, before.voters);
    assert!(after.learners.is_empty());
    let s = cluster
        .api(1)
        .submit("runmesh/echo", &serde_json::json!({"still": "works"}))
        .await;
    cluster
        .api(0)
        .wait_completed("runmesh/echo", &s.request_id, Duration::from_secs(30))
        .await;
}
