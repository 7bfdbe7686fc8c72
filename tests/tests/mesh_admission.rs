//! Admission: a node that cannot prove the cluster secret is refused (and says so), the member that
//! refused it logs the attempt, and the cluster's membership does not change.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runmesh_tests::{free_mesh_port, free_port, runmesh_bin, Cluster, NodeOpts};

/// A refused joiner exits on its own; this bounds the wait.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `runmesh dev` to completion (bounded) and returns (exit success, stderr).
fn run_to_exit(args: &[String]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(runmesh_bin());
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RUNMESH_") {
            cmd.env_remove(&k);
        }
    }
    let mut child = cmd.spawn().expect("spawn runmesh");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a refused node did not exit within {EXIT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    (status.success(), stderr)
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
