//! Requests shaped the way the real fal clients send them (fal-contract Appendix A): their headers,
//! query parameters and empty bodies must be accepted.

use std::time::Duration;

use reqwest::Method;
use runmesh_tests::{parse_submitted, Node, NodeOpts};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn python_client_request_shapes_are_accepted() {
    let node = Node::start_default();
    let api = node.api();
    let r = api
        .post_json(
            "/queue/runmesh/echo/dev?fal_webhook=http%3A%2F%2F127.0.0.1%3A9%2Fhook%3Fx%3D1",
            &json!({"prompt": "a cat"}),
            &[
                ("Authorization", "Key kid:ksecret"),
                ("User-Agent", "fal-client/1.0.3 (python)"),
                ("X-Fal-Runner-Hint", "lora:a"),
                ("X-Fal-Queue-Priority", "low"),
                ("X-Fal-Request-Timeout", "30.0"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sub = parse_submitted(&r.json()).expect("submit shape");
    // Python polls with logs=true, then once more with logs=false, then fetches the result.
    let path = format!("/queue/runmesh/echo/requests/{}", sub.request_id);
    let mut done = Value::Null;
    for _ in 0..400 {
        let s = api.get(&format!("{path}/status?logs=true")).await;
        assert!(s.status == 200 || s.status == 202, "{}", s.text());
        done = s.json();
        if done["status"] == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(done["logs"].is_array(), "{done}");
    let s = api.get(&format!("{path}/status?logs=false")).await.json();
    assert!(s["logs"].is_null(), "{s}");
    assert_eq!(api.get(&path).await.json(), json!({"prompt": "a cat"}));
    // Python's cancel: PUT, Content-Length: 0, no content type.
    let c = api
        .send(
            Method::PUT,
            &format!("{path}/cancel"),
            &[("content-length", "0")],
            None,
        )
        .await;
    assert_eq!(c.status, 400, "{}", c.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn js_client_request_shapes_are_accepted() {
    let node = Node::start_default();
    let api = node.api();
    let js = [
        ("Authorization", "Key kid:ksecret"),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("User-Agent", "@fal-ai/client/1.10.1"),
        ("x-fal-queue-priority", "normal"),
    ];
    // JS sends no body at all for an empty input.
    let r = api
        .send(Method::POST, "/queue/runmesh/echo", &js, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sub = parse_submitted(&r.json()).expect("submit shape");
    let path = format!("/queue/runmesh/echo/requests/{}", sub.request_id);

    // The status stream as JS opens it.
    let sse = api
        .sse(
            Method::GET,
            &format!("{path}/status/stream?logs=0"),
            None,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(sse.status, 200);
    assert!(sse.closed);
    let last = sse.events.last().expect("events").json();
    assert_eq!(last["status"], "COMPLETED", "{last}");

    // GET with a JSON content type and no body (JS sends it on every request).
    let s = api
        .send(Method::GET, &format!("{path}/status?logs=1"), &js, None)
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert!(s.json()["logs"].is_array());
    let res = api.send(Method::GET, &path, &js, None).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), json!({}));
    assert_eq!(
        res.header("x-fal-request-id"),
        Some(sub.request_id.as_str())
    );
    let c = api
        .send(
            Method::PUT,
            &format!("{path}/cancel"),
            &[
                ("Content-Type", "application/json"),
                ("content-length", "0"),
            ],
            None,
        )
        .await;
    assert_eq!(c.status, 400, "{}", c.text());

    // fal.run with an empty body.
    let r = api.send(Method::POST, "/runmesh/echo", &js, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_proto_https_is_kept_in_urls() {
    let node = Node::start_default();
    let api = node.api();
    let r = api
        .submit_raw(
            "runmesh/echo",
            &json!({}),
            &[("X-Forwarded-Proto", "https")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sub = parse_submitted(&r.json()).expect("submit shape");
    let expected = format!(
        "https://{}/queue/runmesh/echo/requests/{}/status",
        node.addr(),
        sub.request_id
    );
    assert_eq!(sub.status_url, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_queue_length_rejects_with_429() {
    let node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let app = "runmesh/sleep";
    let blocker = api.submit(app, &json!({"ms": 30_000})).await;
    api.wait_started(app, &blocker.request_id, WAIT).await;
    for _ in 0..2 {
        api.submit(app, &json!({"ms": 10})).await;
    }
    let r = api
        .post_json(
            &format!("/queue/{app}?fal_max_queue_length=1"),
            &json!({"ms": 10}),
            &[],
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    r.assert_fal_json("429");
    let r = api
        .post_json(
            &format!("/queue/{app}?fal_max_queue_length=10"),
            &json!({"ms": 10}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_run_that_cannot_start_in_time_is_504_user_timeout() {
    let node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let blocker = api.submit("runmesh/sleep", &json!({"ms": 30_000})).await;
    api.wait_started("runmesh/sleep", &blocker.request_id, WAIT)
        .await;
    let r = api
        .post_json(
            "/runmesh/echo",
            &json!({"x": 1}),
            &[("X-Fal-Request-Timeout", "1")],
        )
        .await;
    assert_eq!(r.status, 504, "{}", r.text());
    r.assert_fal_json("sync timeout");
    assert_eq!(r.json()["error_type"], "request_timeout", "{}", r.text());
    assert_eq!(
        r.header("x-fal-request-timeout-type"),
        Some("user"),
        "{:?}",
        r.headers
    );
}
