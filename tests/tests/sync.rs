//! Sync run API (`POST /{model}`) and the `/stream` SSE endpoint, for every built-in app.

use std::time::Duration;

use reqwest::Method;
use runmesh_tests::Node;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn sync_echo_returns_the_input() {
    let node = Node::start_default();
    let api = node.api();
    let input = json!({"x": [1, 2, {"y": "z"}], "s": "ünï"});
    let r = api.run_sync("runmesh/echo", &input).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_fal_json("sync echo");
    assert_eq!(r.json(), input);

    let r = api.run_sync("runmesh/echo/with/subpath", &input).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), input);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_fail_returns_a_fal_error() {
    let node = Node::start_default();
    let api = node.api();
    let r = api
        .run_sync("runmesh/fail", &json!({"message": "sync-boom"}))
        .await;
    assert!(r.status >= 400, "HTTP {}: {}", r.status, r.text());
    r.assert_fal_json("sync fail");
    let body = r.json();
    assert!(
        body["detail"].to_string().contains("sync-boom"),
        "detail: {body}"
    );
    assert!(
        body["error_type"].as_str().is_some_and(|t| !t.is_empty()),
        "error_type: {body}"
    );

    // No message: the app's default failure, still fal-shaped.
    let r = api.run_sync("runmesh/fail", &json!({})).await;
    assert!(r.status >= 400, "HTTP {}: {}", r.status, r.text());
    assert!(!r.json()["detail"].is_null(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_sleep_waits_and_returns_output() {
    let node = Node::start_default();
    let api = node.api();
    let started = std::time::Instant::now();
    let r = api.run_sync("runmesh/sleep", &json!({"ms": 300})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"slept_ms": 300}));
    // A correctness bound (it did sleep), not a performance one.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_stream_sends_partials_then_the_final_output_and_closes() {
    let node = Node::start_default();
    let api = node.api();
    let sse = api
        .sse(
            Method::POST,
            "/runmesh/stream/stream",
            Some(&json!({"n": 4, "interval_ms": 20})),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(sse.status, 200, "{:?}", String::from_utf8_lossy(&sse.raw));
    assert!(
        sse.content_type().starts_with("text/event-stream"),
        "content-type {:?}",
        sse.content_type()
    );
    assert!(sse.closed, "stream not closed: {:?}", sse.events);
    let events: Vec<Value> = sse.events.iter().map(|e| e.json()).collect();
    let mut expected: Vec<Value> = (0..4).map(|i| json!({"i": i})).collect();
    expected.push(json!({"n": 4}));
    assert_eq!(events, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_stream_with_zero_partials_sends_only_the_output() {
    let node = Node::start_default();
    let api = node.api();
    let sse = api
        .sse(
            Method::POST,
            "/runmesh/stream/stream",
            Some(&json!({"n": 0, "interval_ms": 0})),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(sse.status, 200, "{:?}", String::from_utf8_lossy(&sse.raw));
    assert!(sse.closed);
    let events: Vec<Value> = sse.events.iter().map(|e| e.json()).collect();
    assert_eq!(events, vec![json!({"n": 0})]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_app_via_queue_and_plain_sync_returns_final_output() {
    let node = Node::start_default();
    let api = node.api();
    let r = api
        .run_sync("runmesh/stream", &json!({"n": 3, "interval_ms": 10}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"n": 3}));

    let sub = api
        .submit("runmesh/stream", &json!({"n": 2, "interval_ms": 10}))
        .await;
    api.wait_completed("runmesh/stream", &sub.request_id, Duration::from_secs(20))
        .await;
    let res = api.result("runmesh/stream", &sub.request_id).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), json!({"n": 2}));
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_endpoint_of_a_failing_app_is_an_error() {
    let node = Node::start_default();
    let api = node.api();
    // Not an event stream of outputs: either an HTTP error, or a stream that ends without an output.
    let sse = api
        .sse(
            Method::POST,
            "/runmesh/fail/stream",
            Some(&json!({"message": "no-stream"})),
            Duration::from_secs(20),
        )
        .await;
    if sse.status == 200 {
        assert!(sse.closed, "stream of a failing app not closed");
    } else {
        assert!(sse.status >= 400, "HTTP {}", sse.status);
    }
    assert!(node.api().healthz().await.status == 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn hanging_up_on_a_stream_leaves_the_node_serving() {
    let mut node = Node::start(runmesh_tests::NodeOpts::default().slots(1));
    let api = node.api();
    let sse = api
        .sse_take(
            Method::POST,
            "/runmesh/stream/stream",
            Some(&json!({"n": 30, "interval_ms": 100})),
            1,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.events.len(), 1, "{:?}", sse.events);
    // The slot frees (job cancelled or finished, within its 3 s) and the next job runs.
    let r = api.run_sync("runmesh/echo", &json!({"next": 1})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"next": 1}));
    assert!(node.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn hanging_up_on_a_sync_run_leaves_the_node_serving() {
    let mut node = Node::start(runmesh_tests::NodeOpts::default().slots(1));
    let api = node.api();
    // The client gives up long before the 2 s sleep ends.
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        api.run_sync("runmesh/sleep", &json!({"ms": 2000})),
    )
    .await;
    let r = api
        .run_sync("runmesh/echo", &json!({"after": "hangup"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"after": "hangup"}));
    assert!(node.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sync_runs_each_get_their_own_output() {
    let node = Node::start_default();
    let api = node.api();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let (model, input, expected) = if i % 4 == 0 {
                (
                    "runmesh/sleep",
                    json!({"ms": 50 + i}),
                    json!({"slept_ms": 50 + i}),
                )
            } else {
                let v = json!({"i": i, "pad": "p".repeat(i * 10)});
                ("runmesh/echo", v.clone(), v)
            };
            let r = api.run_sync(model, &input).await;
            assert_eq!(r.status, 200, "#{i}: {}", r.text());
            assert_eq!(r.json(), expected, "#{i} got another request's output");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("sync run finishes")
            .expect("sync task");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_each_get_only_their_own_partials() {
    let node = Node::start_default();
    let api = node.api();
    let mut tasks = Vec::new();
    for k in 1..=8u64 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let sse = api
                .sse(
                    Method::POST,
                    "/runmesh/stream/stream",
                    Some(&json!({"n": k, "interval_ms": 15})),
                    Duration::from_secs(30),
                )
                .await;
            assert_eq!(sse.status, 200);
            assert!(sse.closed, "stream n={k} not closed");
            let events: Vec<Value> = sse.events.iter().map(|e| e.json()).collect();
            let mut expected: Vec<Value> = (0..k).map(|i| json!({"i": i})).collect();
            expected.push(json!({"n": k}));
            assert_eq!(events, expected, "stream n={k}");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("stream finishes")
            .expect("stream task");
    }
}
