//! Nobody fills the disk (issue 23, part 5, first step): below its free-space floor a node
//! answers uploads with a fal-shaped 507 and keeps no job output file, and it says why; jobs
//! that write no file still run. The floor here is set above any real disk's free space.

use std::time::Duration;

use runmesh_tests::{Node, NodeOpts};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn below_the_disk_floor_uploads_get_507_and_outputs_are_refused() {
    let node = Node::start(NodeOpts {
        extra_args: vec!["--disk-free-floor-mb".into(), "1000000000000".into()],
        ..NodeOpts::default()
    });
    let api = node.api();

    let r = api
        .send(
            reqwest::Method::POST,
            "/storage/upload",
            &[("content-type", "application/octet-stream")],
            Some(vec![7u8; 10_000]),
        )
        .await;
    assert_eq!(r.status, 507, "{}", r.text());
    r.assert_fal_json("a 507 upload");
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Insufficient storage")),
        "{}",
        r.text()
    );

    let sub = api
        .submit("runmesh/noise", &json!({"bytes": 4096, "seed": 1}))
        .await;
    api.wait_completed("runmesh/noise", &sub.request_id, WAIT)
        .await;
    let r = api.result("runmesh/noise", &sub.request_id).await;
    assert_ne!(r.status, 200, "an output file was kept: {}", r.text());
    assert!(r.text().contains("Insufficient storage"), "{}", r.text());

    // Jobs that store nothing are unaffected.
    let sub = api.submit("runmesh/echo", &json!({"still": "runs"})).await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    assert_eq!(
        api.result("runmesh/echo", &sub.request_id).await.json(),
        json!({"still": "runs"})
    );
}

/// A job's output file obeys the upload limit too (`--upload-limit-bytes`): one larger is refused
/// before a byte of it is written, with the reason; one within it is kept.
#[tokio::test(flavor = "multi_thread")]
async fn an_output_larger_than_the_upload_limit_is_refused_before_it_is_written() {
    let node = Node::start(NodeOpts {
        extra_args: vec!["--upload-limit-bytes".into(), "100000".into()],
        ..NodeOpts::default()
    });
    let api = node.api();
    let big = api
        .submit("runmesh/noise", &json!({"bytes": 100_001, "seed": 1}))
        .await;
    let status = api
        .wait_status(
            "runmesh/noise",
            &big.request_id,
            true,
            WAIT,
            "COMPLETED",
            |s| s["status"] == "COMPLETED",
        )
        .await;
    let r = api.result("runmesh/noise", &big.request_id).await;
    assert_ne!(r.status, 200, "an output file was kept: {}", r.text());
    assert!(
        r.text().contains("larger than this node keeps"),
        "{}",
        r.text()
    );
    assert!(
        !status.to_string().contains("writing 100001 bytes"),
        "it was written first: {status}"
    );
    let small = api
        .submit("runmesh/noise", &json!({"bytes": 100_000, "seed": 1}))
        .await;
    api.wait_completed("runmesh/noise", &small.request_id, WAIT)
        .await;
    let r = api.result("runmesh/noise", &small.request_id).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["file"]["file_size"], json!(100_000));
}
