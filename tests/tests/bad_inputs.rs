//! Bad input gets a fal-shaped error and never takes the node down.

use std::time::Duration;

use reqwest::Method;
use runmesh_tests::{raw_request, unknown_request_id, Api, Node, NodeOpts, Resp};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// 422 with a non-empty `detail` array of `{loc, msg, type}` entries.
fn assert_422_detail(r: &Resp, what: &str) {
    assert_eq!(r.status, 422, "{what}: {}", r.text());
    r.assert_fal_json(what);
    let body = r.json();
    let detail = body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: detail is not an array: {body}"));
    assert!(!detail.is_empty(), "{what}: empty detail");
    for d in detail {
        assert!(d["loc"].is_array(), "{what}: loc: {d}");
        assert!(d["msg"].is_string(), "{what}: msg: {d}");
        assert!(d["type"].is_string(), "{what}: type: {d}");
    }
}

async fn assert_healthy(node: &mut Node) {
    assert!(node.is_running(), "node process died");
    let r = node.api().healthz().await;
    assert_eq!(r.status, 200, "healthz after abuse: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_model_is_404() {
    let node = Node::start_default();
    let api = node.api();
    for model in ["runmesh/nope", "someone/else", "runmesh/nope/sub/path"] {
        let r = api.submit_raw(model, &json!({}), &[]).await;
        assert_eq!(r.status, 404, "queue {model}: {}", r.text());
        r.assert_fal_json("unknown model (queue)");
        assert!(!r.json()["detail"].is_null(), "{}", r.text());
        let r = api.run_sync(model, &json!({})).await;
        assert_eq!(r.status, 404, "sync {model}: {}", r.text());
        r.assert_fal_json("unknown model (sync)");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_and_non_object_bodies_are_422() {
    let mut node = Node::start_default();
    let api = node.api();
    let bodies: [&[u8]; 7] = [
        b"{not json",
        b"{\"a\": 1",
        b"\xff\xfe",
        b"[1, 2]",
        b"\"a string\"",
        b"42",
        b"null",
    ];
    for body in bodies {
        let what = format!("queue body {:?}", String::from_utf8_lossy(body));
        assert_422_detail(&api.post_raw("/queue/runmesh/echo", body).await, &what);
        let what = format!("sync body {:?}", String::from_utf8_lossy(body));
        assert_422_detail(&api.post_raw("/runmesh/echo", body).await, &what);
    }
    assert_healthy(&mut node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_app_inputs_are_422() {
    let node = Node::start_default();
    let api = node.api();
    let cases = [
        ("runmesh/sleep", json!({"ms": "x"})),
        ("runmesh/sleep", json!({"ms": -1})),
        ("runmesh/sleep", json!({"ms": 1.5e12})),
        ("runmesh/sleep", json!({})),
        ("runmesh/sleep", json!({"ms": 600_001})),
        ("runmesh/stream", json!({"n": 10_001})),
        ("runmesh/stream", json!({"n": 2, "interval_ms": -1})),
        ("runmesh/stream", json!({"n": "many"})),
        ("runmesh/fail", json!({"message": 7})),
    ];
    for (model, input) in &cases {
        let what = format!("queue {model} {input}");
        assert_422_detail(&api.submit_raw(model, input, &[]).await, &what);
        let what = format!("sync {model} {input}");
        assert_422_detail(&api.run_sync(model, input).await, &what);
    }
    // The field is named in `loc`.
    let body = api
        .submit_raw("runmesh/sleep", &json!({"ms": "x"}), &[])
        .await
        .json();
    assert!(
        body["detail"][0]["loc"].to_string().contains("ms"),
        "loc names the field: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_is_413() {
    let mut node = Node::start(NodeOpts::default().body_limit(1024));
    let api = node.api();
    let big = json!({"blob": "x".repeat(4096)});
    for path in ["/queue/runmesh/echo", "/runmesh/echo"] {
        let r = api.post_json(path, &big, &[]).await;
        assert_eq!(r.status, 413, "{path}: {}", r.text());
        r.assert_fal_json("413");
    }
    // Under the limit still works.
    let small = json!({"blob": "x".repeat(100)});
    let r = api.run_sync("runmesh/echo", &small).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), small);
    assert_healthy(&mut node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_malformed_request_ids_are_404() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api.submit("runmesh/echo", &json!({})).await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    let unknown = unknown_request_id();
    let ids = [
        unknown.as_str(),
        "not-a-uuid",
        "00000000-0000-0000-0000-00000000000g",
    ];
    for id in ids {
        let base = format!("/queue/runmesh/echo/requests/{id}");
        for path in [format!("{base}/status"), base.clone()] {
            let r = api.get(&path).await;
            assert_eq!(r.status, 404, "{path}: {}", r.text());
            r.assert_fal_json("unknown id");
        }
        let r = api
            .sse(
                Method::GET,
                &format!("{base}/status/stream"),
                None,
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(r.status, 404, "status stream of {id}");
    }
    // A real id under another app is not that app's request.
    let r = api.status("runmesh/sleep", &sub.request_id, false).await;
    assert_eq!(r.status, 404, "id under the wrong app: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn weird_paths_never_crash_the_node() {
    let mut node = Node::start_default();
    let long_path = format!("/{}", "a".repeat(20_000));
    let many_segments = format!("/queue{}", "/x".repeat(2_000));
    let long_model = format!("/queue/runmesh/{}", "e".repeat(300));
    let targets: Vec<(&str, String)> = vec![
        ("GET", "/".into()),
        ("POST", "/".into()),
        ("GET", "/a".into()),
        ("POST", "/a".into()),
        ("GET", "/%00".into()),
        ("POST", "/%00/%00".into()),
        ("GET", "/%zz".into()),
        ("GET", "/..".into()),
        ("GET", "/../../etc/passwd".into()),
        ("POST", "/queue/../runmesh/echo".into()),
        ("POST", "/runmesh/%2e%2e/echo".into()),
        ("POST", "/queue".into()),
        ("POST", "/queue/".into()),
        ("POST", "/queue/runmesh".into()),
        ("GET", "/queue/runmesh/echo/requests".into()),
        ("GET", "/queue/runmesh/echo/requests/".into()),
        ("GET", "/queue/runmesh/echo/requests//status".into()),
        ("DELETE", "/queue/runmesh/echo".into()),
        ("PUT", "/runmesh/echo".into()),
        ("PATCH", "/queue/runmesh/echo/requests/x/cancel".into()),
        ("GET", "/runmesh/echo?%%%=&&==".into()),
        (
            "GET",
            "/queue/runmesh/echo/requests/x/status?logs=maybe".into(),
        ),
        ("POST", "/%C3%BC/%F0%9F%98%80".into()),
        ("POST", "//runmesh//echo".into()),
        ("GET", long_path.clone()),
        ("POST", long_path),
        ("POST", many_segments),
        ("POST", long_model),
    ];
    let t = Duration::from_secs(10);
    for (method, target) in &targets {
        let shown: String = target.chars().take(80).collect();
        let body: &[u8] = if *method == "POST" { b"{}" } else { b"" };
        match raw_request(
            node.addr(),
            method,
            target,
            &[("Content-Type", "application/json")],
            body,
            t,
        )
        .await
        {
            Ok(r) => {
                assert!(
                    r.status < 500,
                    "{method} {shown}: HTTP {} {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                // Answers of the gateway (not hyper's own protocol errors) are fal-shaped.
                if ![400, 414, 431].contains(&r.status) {
                    assert!(
                        r.header("x-fal-request-id").is_some(),
                        "{method} {shown}: HTTP {} without x-fal-request-id",
                        r.status
                    );
                    assert!(
                        r.header("content-type")
                            .is_some_and(|c| c.starts_with("application/json")),
                        "{method} {shown}: HTTP {} content-type {:?}",
                        r.status,
                        r.header("content-type")
                    );
                }
                eprintln!("{method} {shown}: HTTP {}", r.status);
            }
            // hyper may refuse a huge request line by closing; that is not a crash.
            Err(e) => eprintln!("{method} {shown}: no response ({e})"),
        }
        assert!(node.is_running(), "node died on {method} {shown}");
    }
    // Oversized and numerous headers.
    let big_value = "v".repeat(100_000);
    let many: Vec<(String, String)> = (0..500)
        .map(|i| (format!("x-junk-{i}"), "1".to_string()))
        .collect();
    let many_refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for hdrs in [vec![("x-big", big_value.as_str())], many_refs] {
        match raw_request(node.addr(), "POST", "/queue/runmesh/echo", &hdrs, b"{}", t).await {
            Ok(r) => assert!(r.status < 500, "big headers: HTTP {}", r.status),
            Err(e) => eprintln!("big headers: no response ({e})"),
        }
        assert!(node.is_running(), "node died on big headers");
    }
    // Raw garbage on the socket.
    let _ = raw_request(node.addr(), "\u{1}\u{2}", "nonsense", &[], b"", t).await;
    assert_healthy(&mut node).await;
    let api = Api::new(&node.base);
    assert_eq!(
        api.run_sync("runmesh/echo", &json!({"ok": true}))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_timeout_expires_while_the_slot_is_busy() {
    let node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let blocker = api.submit("runmesh/sleep", &json!({"ms": 30_000})).await;
    api.wait_started("runmesh/sleep", &blocker.request_id, WAIT)
        .await;
    let sub = api
        .submit_with(
            "runmesh/sleep",
            &json!({"ms": 10}),
            &[("X-Fal-Request-Timeout", "1.0")],
        )
        .await;
    let s = api
        .wait_completed("runmesh/sleep", &sub.request_id, WAIT)
        .await;
    assert_eq!(s["error_type"], "request_timeout", "{s}");
    assert!(s["error"].is_string(), "{s}");
    let res = api.result("runmesh/sleep", &sub.request_id).await;
    assert_eq!(res.status, 504, "{}", res.text());
    res.assert_fal_json("timeout result");
    assert_eq!(res.json()["error_type"], "request_timeout");
    // The blocker is unaffected.
    let b = api
        .status("runmesh/sleep", &blocker.request_id, false)
        .await;
    assert_eq!(b.json()["status"], "IN_PROGRESS");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_timeout_result_carries_the_user_timeout_header() {
    let node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let blocker = api.submit("runmesh/sleep", &json!({"ms": 30_000})).await;
    api.wait_started("runmesh/sleep", &blocker.request_id, WAIT)
        .await;
    let sub = api
        .submit_with(
            "runmesh/sleep",
            &json!({"ms": 10}),
            &[("X-Fal-Request-Timeout", "1")],
        )
        .await;
    api.wait_completed("runmesh/sleep", &sub.request_id, WAIT)
        .await;
    let res = api.result("runmesh/sleep", &sub.request_id).await;
    assert_eq!(res.status, 504, "{}", res.text());
    // fal-contract §4.1/§7.1: 504 + X-Fal-Request-Timeout-Type: user (clients do not retry it).
    assert_eq!(
        res.header("x-fal-request-timeout-type"),
        Some("user"),
        "{:?}",
        res.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_can_start_in_time_is_unaffected_by_the_timeout() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api
        .submit_with(
            "runmesh/echo",
            &json!({"t": 1}),
            &[("X-Fal-Request-Timeout", "30.0")],
        )
        .await;
    let s = api
        .wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    assert!(s.get("error").is_none_or(|e| e.is_null()), "{s}");
    assert_eq!(
        api.result("runmesh/echo", &sub.request_id).await.json(),
        json!({"t": 1})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_fal_header_values_are_client_errors() {
    let mut node = Node::start_default();
    let api = node.api();
    let cases = [
        ("X-Fal-Request-Timeout", "abc"),
        ("X-Fal-Request-Timeout", "-5"),
        ("X-Fal-Request-Timeout", "NaN"),
        ("X-Fal-Request-Timeout", "1e400"),
        ("X-Fal-Queue-Priority", "urgent"),
    ];
    for (k, v) in cases {
        let r = api.submit_raw("runmesh/echo", &json!({}), &[(k, v)]).await;
        assert!(
            r.status == 200 || (400..500).contains(&r.status),
            "{k}: {v}: HTTP {} {}",
            r.status,
            r.text()
        );
        r.assert_fal_json("bad header");
        if r.status != 200 {
            assert!(!r.json()["detail"].is_null(), "{}", r.text());
        }
    }
    assert_healthy(&mut node).await;
}

/// A header hyper cannot parse (a control character in its value) gets a fal-shaped 400 with a
/// JSON `detail`, not an empty body; the node goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_control_character_in_a_header_is_a_fal_shaped_400() {
    let mut node = Node::start(NodeOpts::default());
    for bad in ["a\u{1}b", "a\u{7f}b", "a\u{0}b"] {
        let r = raw_request(
            node.addr(),
            "POST",
            "/runmesh/echo",
            &[("Content-Type", "application/json"), ("X-Bad", bad)],
            b"{}",
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{bad:?}: {e}"));
        assert_eq!(r.status, 400, "{bad:?}");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{bad:?}"
        );
        let v = r.json();
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    }
    assert_healthy(&mut node).await;
}
