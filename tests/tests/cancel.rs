//! Cancel: before a job starts, while it runs, after it completed, unknown ids.

use std::time::Duration;

use runmesh_tests::{unknown_request_id, Node, NodeOpts};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn assert_cancelled(s: &Value) {
    assert_eq!(s["status"], "COMPLETED", "{s}");
    assert_eq!(s["error_type"], "client_cancelled", "{s}");
    assert!(s["error"].is_string(), "error string: {s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_before_start_never_runs_the_job() {
    let node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let app = "runmesh/sleep";
    let blocker = api.submit(app, &json!({"ms": 30_000})).await;
    api.wait_started(app, &blocker.request_id, WAIT).await;
    let queued = api.submit(app, &json!({"ms": 50})).await;
    assert_eq!(
        api.status(app, &queued.request_id, false).await.json()["status"],
        "IN_QUEUE"
    );

    let r = api.cancel(app, &queued.request_id).await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.assert_fal_json("cancel");
    assert_eq!(r.json()["status"], "CANCELLATION_REQUESTED");
    let s = api.wait_completed(app, &queued.request_id, WAIT).await;
    assert_cancelled(&s);

    // Free the slot; the cancelled job must still never run.
    assert_eq!(api.cancel(app, &blocker.request_id).await.status, 202);
    assert_cancelled(&api.wait_completed(app, &blocker.request_id, WAIT).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = api.status(app, &queued.request_id, true).await;
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_cancelled(&s);
    assert!(
        s["logs"].as_array().is_some_and(|l| l.is_empty()),
        "a job cancelled in the queue wrote logs, so it ran: {s}"
    );
    let res = api.result(app, &queued.request_id).await;
    assert_eq!(res.status, 499, "{}", res.text());
    res.assert_fal_json("cancelled result");
    assert_eq!(res.json()["error_type"], "client_cancelled");
    assert!(!res.json()["detail"].is_null(), "{}", res.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_a_run_stops_it_quickly() {
    let node = Node::start_default();
    let api = node.api();
    let app = "runmesh/sleep";
    let sub = api.submit(app, &json!({"ms": 30_000})).await;
    api.wait_status(app, &sub.request_id, false, WAIT, "IN_PROGRESS", |s| {
        s["status"] == "IN_PROGRESS"
    })
    .await;

    let r = api.cancel(app, &sub.request_id).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["status"], "CANCELLATION_REQUESTED");
    // Far less than the 30 s the job would take: it was stopped, not run to the end.
    let s = api
        .wait_completed(app, &sub.request_id, Duration::from_secs(10))
        .await;
    assert_cancelled(&s);
    let res = api.result(app, &sub.request_id).await;
    assert_eq!(res.status, 499, "{}", res.text());
    assert_eq!(res.json()["error_type"], "client_cancelled");

    // Cancelling again: it is completed now.
    let r = api.cancel(app, &sub.request_id).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["status"], "ALREADY_COMPLETED");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_a_completed_job_is_400_already_completed() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api.submit("runmesh/echo", &json!({"v": 1})).await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    let r = api.cancel("runmesh/echo", &sub.request_id).await;
    assert_eq!(r.status, 400, "{}", r.text());
    r.assert_fal_json("cancel completed");
    assert_eq!(r.json()["status"], "ALREADY_COMPLETED");
    // The output is untouched.
    let res = api.result("runmesh/echo", &sub.request_id).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json(), json!({"v": 1}));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_an_unknown_or_malformed_id_is_404() {
    let node = Node::start_default();
    let api = node.api();
    for id in [unknown_request_id(), "not-a-request-id".to_string()] {
        let r = api.cancel("runmesh/sleep", &id).await;
        assert_eq!(r.status, 404, "{id}: {}", r.text());
        r.assert_fal_json("cancel unknown");
    }
}
