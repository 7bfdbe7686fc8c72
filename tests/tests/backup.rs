//! `runmesh backup` and `runmesh restore`, from the CLI: a backup taken from a running node founds a
//! new cluster that serves every job, key and result of the old one; a job that was running when
//! the backup was taken runs again there (at least once); a file that is not a backup is refused.

use std::process::Command;
use std::time::Duration;

use runmesh_tests::{free_mesh_port, mesh_opts, runmesh_bin, Node, NodeOpts, TEST_CLUSTER_SECRET};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn runmesh(args: &[&str]) -> (bool, String) {
    let out = Command::new(runmesh_bin())
        .args(args)
        .env_remove("RUNMESH_HTTP")
        .env_remove("RUNMESH_ADMIN_KEY")
        .env_remove("RUNMESH_DATA_DIR")
        .output()
        .expect("run runmesh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_with_every_job_and_key() {
    let node = Node::start(NodeOpts::default().slots(1).lease_ms(1_000));
    let admin = node.admin_key();
    let api = node.api();
    let mut done = Vec::new();
    for i in 0..5 {
        let s = api.submit("runmesh/echo", &json!({ "i": i })).await;
        api.wait_completed("runmesh/echo", &s.request_id, WAIT)
            .await;
        done.push((s.request_id, i));
    }
    let auth = format!("Key {admin}");
    let created = api
        .post_json(
            "/admin/keys",
            &json!({ "name": "kept" }),
            &[("Authorization", auth.as_str())],
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let kept_key = created.json()["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let running = api.submit("runmesh/sleep", &json!({ "ms": 1500 })).await;
    api.wait_started("runmesh/sleep", &running.request_id, WAIT)
        .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("mesh.backup");
    let file_s = file.to_str().expect("utf-8 path");
    let http = node.addr().to_string();
    let (ok, said) = runmesh(&[
        "backup",
        "--out",
        file_s,
        "--http",
        &http,
        "--admin-key",
        &admin,
    ]);
    assert!(ok, "{said}");
    assert!(said.contains("backup of 6 jobs"), "{said}");
    assert!(dir.path().join("mesh.backup.blobs").exists());
    drop(node);

    let data = dir.path().join("restored");
    let data_s = data.to_str().expect("utf-8 path");
    let (ok, said) = runmesh(&["restore", file_s, "--data-dir", data_s]);
    assert!(ok, "{said}");
    // Never over an existing store.
    let (ok, said) = runmesh(&["restore", file_s, "--data-dir", data_s]);
    assert!(!ok && said.contains("already holds a Raft store"), "{said}");
    // Not a backup at all.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"{\"not\": \"a backup\"}").expect("write");
    let other = dir.path().join("other");
    let (ok, said) = runmesh(&[
        "restore",
        junk.to_str().expect("utf-8 path"),
        "--data-dir",
        other.to_str().expect("utf-8 path"),
    ]);
    assert!(!ok && said.contains("not a runmesh backup"), "{said}");

    // The restored node founds a mesh that another node joins.
    let port = free_mesh_port();
    let restored = Node::start_on_copy(
        &data,
        mesh_opts(NodeOpts::default(), port, None, TEST_CLUSTER_SECRET),
    );
    let api = restored.api();
    for (id, i) in &done {
        let r = api.result("runmesh/echo", id).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.json(), json!({ "i": i }));
    }
    // The old keys work on the new cluster.
    let keys = api
        .send(
            reqwest::Method::GET,
            "/admin/keys",
            &[("Authorization", auth.as_str())],
            None,
        )
        .await;
    assert_eq!(keys.status, 200, "{}", keys.text());
    assert!(keys.text().contains("kept"), "{}", keys.text());
    let with_kept = restored
        .api()
        .with_header("Authorization", &format!("Key {kept_key}"));
    let s = with_kept
        .submit("runmesh/echo", &json!({ "new": true }))
        .await;
    with_kept
        .wait_completed("runmesh/echo", &s.request_id, WAIT)
        .await;
    // The job that was running when the backup was taken runs again.
    api.wait_completed("runmesh/sleep", &running.request_id, WAIT)
        .await;
    let joiner = Node::start(mesh_opts(
        NodeOpts::default(),
        free_mesh_port(),
        Some(port),
        TEST_CLUSTER_SECRET,
    ));
    let (id, i) = &done[0];
    joiner.api().wait_completed("runmesh/echo", id, WAIT).await;
    assert_eq!(
        joiner.api().result("runmesh/echo", id).await.json(),
        json!({ "i": i })
    );
}
