//! Secrets stay the node's: its data dir is private to its user, old data dirs included.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use runmesh_tests::Node;
use serde_json::json;

/// Every entry under `root` that another user could read, enter or write, with its mode.
fn readable_by_others(root: &Path) -> Vec<String> {
    runmesh_tests::tree(root)
        .into_iter()
        .filter_map(|(p, meta)| {
            let mode = meta.permissions().mode() & 0o777;
            let open = if meta.is_dir() {
                mode != 0o700
            } else {
                meta.is_file() && mode & 0o077 != 0
            };
            open.then(|| format!("{} {mode:o}", p.display()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_dir_is_private_even_when_an_older_node_left_it_open() {
    let mut node = Node::start_default();
    let api = node.api();
    // Outputs, a file and the Raft log with the cluster secret are all on disk once a job ran.
    let r = api
        .run_sync("runmesh/noise", &json!({"bytes": 1000, "seed": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = node.data_dir();
    assert!(
        data.join("raft").exists(),
        "no raft dir in {}",
        data.display()
    );
    let open = readable_by_others(&data);
    assert!(open.is_empty(), "readable by others: {open:#?}");

    // As an older runmesh left it: everything world-readable.
    node.kill9();
    for (p, meta) in runmesh_tests::tree(&data) {
        if !meta.file_type().is_symlink() {
            let mode = if meta.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
    assert!(!readable_by_others(&data).is_empty());
    node.restart_same_dir();
    let open = readable_by_others(&data);
    assert!(
        open.is_empty(),
        "readable by others after restart: {open:#?}"
    );
    assert!(
        node.stderr_all().contains("narrowed it to the node's user"),
        "no warning in the log:\n{}",
        node.stderr_tail()
    );
    // And it still serves from what it had.
    let r = node.api().run_sync("runmesh/echo", &json!({"x": 1})).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
