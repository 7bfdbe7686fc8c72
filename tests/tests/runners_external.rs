//! External runners through a real node: the Python example in examples/python-runner (stdlib only)
//! and a runner that dies, over the JSON-lines contract of docs/RUNNERS.md.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use runmesh_tests::{Node, NodeOpts};
use serde_json::{json, Value};

const APP: &str = "example/words";
const WAIT: Duration = Duration::from_secs(60);

fn python() -> String {
    std::env::var("RUNMESH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn node_with_example_runner() -> Node {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/python-runner/runner.py")
        .canonicalize()
        .expect("example runner exists");
    Node::start(NodeOpts {
        extra_args: vec![
            "--runner".into(),
            format!("{} {}", python(), script.display()),
        ],
        ..NodeOpts::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_runs_through_the_queue_with_logs() {
    let node = node_with_example_runner();
    let api = node.api();
    let sub = api.submit(APP, &json!({"text": "hello big world"})).await;
    api.wait_completed(APP, &sub.request_id, WAIT).await;
    let r = api.result(APP, &sub.request_id).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), node.stderr_tail());
    assert_eq!(
        r.json(),
        json!({"words": 3, "upper": "HELLO BIG WORLD", "reversed": ["world", "big", "hello"]})
    );
    let s = api.status(APP, &sub.request_id, true).await.json();
    let logs = s["logs"].to_string();
    assert!(logs.contains("splitting 3 words"), "{s}");
    assert!(logs.contains("progress 3/3"), "{s}");
    // Subpaths reach the runner too.
    let r = api
        .run_sync("example/words/sub/path", &json!({"text": "a"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_streams_partials_word_by_word() {
    let node = node_with_example_runner();
    let api = node.api();
    let sse = api
        .sse(
            Method::POST,
            "/example/words/stream",
            Some(&json!({"text": "one two three", "delay_ms": 20})),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sse.status, 200, "{:?}", String::from_utf8_lossy(&sse.raw));
    assert!(sse.closed, "stream not closed: {:?}", sse.events);
    let events: Vec<Value> = sse.events.iter().map(|e| e.json()).collect();
    assert_eq!(
        events,
        [
            json!({"i": 0, "word": "one"}),
            json!({"i": 1, "word": "two"}),
            json!({"i": 2, "word": "three"}),
            json!({"words": 3, "upper": "ONE TWO THREE", "reversed": ["three", "two", "one"]}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runner_manifest_schema_validates_and_failures_and_cancels_come_back() {
    let node = node_with_example_runner();
    let api = node.api();
    // 422 from the runner's input schema, before anything is queued.
    for (input, kind) in [
        (json!({}), "missing"),
        (json!({"text": 5}), "string_type"),
        (json!({"text": "a", "delay_ms": -1}), "greater_than_equal"),
    ] {
        let r = api.submit_raw(APP, &input, &[]).await;
        assert_eq!(r.status, 422, "{input}: {}", r.text());
        assert_eq!(r.json()["detail"][0]["type"], kind, "{input}");
    }
    // The runner reports a failure.
    let sub = api.submit(APP, &json!({"text": "a b", "fail": true})).await;
    let s = api.wait_completed(APP, &sub.request_id, WAIT).await;
    assert!(s["error"].to_string().contains("asked to fail"), "{s}");
    // A long job is cancelled mid-run and stops.
    let sub = api
        .submit(APP, &json!({"text": "a b c d e f g h", "delay_ms": 5000}))
        .await;
    api.wait_started(APP, &sub.request_id, WAIT).await;
    let r = api.cancel(APP, &sub.request_id).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let s = api.wait_completed(APP, &sub.request_id, WAIT).await;
    assert_eq!(s["error_type"], "client_cancelled", "{s}");
    // Jobs run concurrently on the one runner.
    let a = api
        .submit(APP, &json!({"text": "x y", "delay_ms": 300}))
        .await;
    let b = api.submit(APP, &json!({"text": "z", "delay_ms": 0})).await;
    for id in [&a.request_id, &b.request_id] {
        api.wait_completed(APP, id, WAIT).await;
        assert_eq!(api.result(APP, id).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_dies_fails_its_job_and_the_node_lives_on() {
    // Answers the manifest, then exits on the first run request.
    let script = r#"read l; echo '{"id":"manifest-0","manifest":{"protocol":1,"apps":[{"id":"example/dies"}]}}'; read l; echo bye >&2; exit 3"#;
    let node = Node::start(NodeOpts {
        extra_args: vec!["--runner".into(), script.into()],
        ..NodeOpts::default()
    });
    let api = node.api();
    let sub = api.submit("example/dies", &json!({})).await;
    let s = api
        .wait_completed("example/dies", &sub.request_id, WAIT)
        .await;
    assert_eq!(s["error_type"], "runner_disconnected", "{s}");
    assert_eq!(
        api.run_sync("runmesh/echo", &json!({"a": 1})).await.status,
        200
    );
}
