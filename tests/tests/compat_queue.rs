//! fal queue behaviour on a real node, below the client libraries (issue 5): the JS client's
//! `proxyUrl` endpoint, result retention, `X-Fal-No-Retry`, SSE keep-alives and the realtime idle
//! TIMEOUT (both with short intervals set by flag).

use std::time::{Duration, Instant};

use reqwest::Method;
use runmesh_tests::{parse_submitted, Api, Node, NodeOpts, Resp};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn node_with(args: &[&str]) -> Node {
    Node::start(NodeOpts {
        slots: Some(2),
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        ..NodeOpts::default()
    })
}

/// A request to the proxy endpoint as `@fal-ai/client`'s `withProxy` makes it: the original
/// method and body, the original URL in `x-fal-target-url`.
async fn via_proxy(
    api: &Api,
    path: &str,
    method: Method,
    target: &str,
    body: Option<Value>,
) -> Resp {
    let mut headers = vec![
        ("x-fal-target-url", target),
        ("accept", "application/json"),
        ("content-type", "application/json"),
    ];
    if body.is_none() {
        headers.pop();
    }
    api.send(
        method,
        path,
        &headers,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

fn assert_refused(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    r.assert_fal_json(what);
    assert!(r.json()["detail"].is_string(), "{what}: {}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_endpoint_dispatches_by_target_url_and_refuses_other_targets() {
    // A configured path; the default (/api/fal/proxy) is what the JS conformance suite uses.
    let node = node_with(&["--fal-proxy-path", "/custom/fal-proxy"]);
    let api = node.api();
    let p = "/custom/fal-proxy";

    // Sync run on fal.run, the input in the body (POST) or the query string (JS GET).
    let r = via_proxy(
        &api,
        p,
        Method::POST,
        "https://fal.run/runmesh/echo",
        Some(json!({"a": 1})),
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"a": 1})), "run");
    assert!(r.header("x-fal-request-id").is_some());
    let r = via_proxy(
        &api,
        p,
        Method::GET,
        "https://fal.run/runmesh/echo?b=x%20y",
        None,
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"b": "x y"})), "GET run");

    // Queue: submit (with its query parameters), status, result, cancel on queue.fal.run.
    let r = via_proxy(
        &api,
        p,
        Method::POST,
        "https://queue.fal.run/runmesh/sleep/sub?fal_max_queue_length=100",
        Some(json!({"ms": 50})),
    )
    .await;
    assert_eq!(r.status, 200, "submit: {}", r.text());
    let sub = parse_submitted(&r.json()).expect("submit shape");
    // The URLs handed back reach this node directly.
    assert!(
        sub.status_url
            .starts_with(&format!("{}/queue/runmesh/sleep/requests/", node.base)),
        "{}",
        sub.status_url
    );
    let id = sub.request_id;
    let status_target = format!("https://queue.fal.run/runmesh/sleep/requests/{id}/status?logs=1");
    let deadline = Instant::now() + WAIT;
    let mut st = Value::Null;
    for _ in 0..1000 {
        let r = via_proxy(&api, p, Method::GET, &status_target, None).await;
        assert!(r.status == 200 || r.status == 202, "status: {}", r.text());
        st = r.json();
        if st["status"] == "COMPLETED" || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(st["status"], "COMPLETED", "{st}");
    assert!(
        st["logs"].is_array(),
        "logs=1 kept from the target's query: {st}"
    );
    let r = via_proxy(
        &api,
        p,
        Method::GET,
        &format!("https://queue.fal.run/runmesh/sleep/requests/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"slept_ms": 50})),
        "result"
    );
    assert_eq!(r.header("x-fal-request-id"), Some(id.as_str()));
    let r = via_proxy(
        &api,
        p,
        Method::PUT,
        &format!("https://queue.fal.run/runmesh/sleep/requests/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"status": "ALREADY_COMPLETED"})),
        "cancel"
    );
    // Query parameters of the target are the submit's own: a bad one is fal's 422.
    let r = via_proxy(
        &api,
        p,
        Method::POST,
        "https://queue.fal.run/runmesh/echo?fal_max_queue_length=x",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());

    // The realtime token on rest.fal.ai.
    let r = via_proxy(
        &api,
        p,
        Method::POST,
        "https://rest.fal.ai/tokens/",
        Some(json!({"allowed_apps": ["echo"], "token_expiration": 120})),
    )
    .await;
    assert!(
        r.status == 201 && r.json().is_string(),
        "token: {} {}",
        r.status,
        r.text()
    );

    // Refused: no target, other hosts, ports, the node's own routes, other methods.
    let r = api
        .send(
            Method::POST,
            p,
            &[("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_refused(&r, 400, "no target");
    for target in [
        "https://evil.example/runmesh/echo",
        "https://fal.run.evil.example/runmesh/echo",
        "https://fal.run:444/runmesh/echo",
        "http://127.0.0.1:1/runmesh/echo",
        "https://fal.run/admin/keys",
        "https://queue.fal.run/healthz",
        "https://rest.fal.ai/admin/keys",
        "not a url",
    ] {
        let r = via_proxy(&api, p, Method::POST, target, Some(json!({}))).await;
        assert_refused(&r, 412, target);
        assert!(r.header("x-fal-request-id").is_some(), "{target}");
    }
    let r = via_proxy(
        &api,
        p,
        Method::DELETE,
        "https://fal.run/runmesh/echo",
        None,
    )
    .await;
    assert_refused(&r, 405, "DELETE");
    // Only the configured path is the proxy: the default one is an ordinary (unknown) route.
    let r = via_proxy(
        &api,
        "/api/fal/proxy",
        Method::POST,
        "https://fal.run/runmesh/echo",
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_endpoint_keeps_the_callers_key() {
    let node = node_with(&["--require-auth"]);
    let api = node.api();
    let admin = std::fs::read_to_string(node.data_dir().join("admin.key")).expect("admin.key");
    let auth = format!("Key {}", admin.trim());
    let target = "https://fal.run/runmesh/echo";
    let r = api
        .send(
            Method::POST,
            "/api/fal/proxy",
            &[
                ("x-fal-target-url", target),
                ("content-type", "application/json"),
            ],
            Some(b"{\"k\":1}".to_vec()),
        )
        .await;
    assert_refused(&r, 401, "no key through the proxy");
    let r = api
        .send(
            Method::POST,
            "/api/fal/proxy",
            &[
                ("x-fal-target-url", target),
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            Some(b"{\"k\":1}".to_vec()),
        )
        .await;
    assert_eq!((r.status, r.json()), (200, json!({"k": 1})), "{}", r.text());
    let r = api
        .send(
            Method::POST,
            "/api/fal/proxy",
            &[
                ("x-fal-target-url", target),
                ("authorization", "Key nobody:nothing"),
            ],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_refused(&r, 401, "bad key through the proxy");
    assert_eq!(r.json()["detail"], "No user found for Key ID and Secret");
}

/// Polls the status until it answers 404 (bounded); returns the last answer.
async fn wait_gone(api: &Api, app: &str, id: &str) -> Resp {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = api.status(app, id, false).await;
        if r.status == 404 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_requests_expire_like_fal_results_and_stay_expired_after_a_restart() {
    let mut node = node_with(&[
        "--result-retention-ms",
        "4000",
        "--large-result-retention-ms",
        "200",
    ]);
    let api = node.api();
    let small = api.submit("runmesh/echo", &json!({"s": 1})).await;
    let large_input = json!({"blob": "x".repeat(12 * 1024)});
    let large = api.submit("runmesh/echo", &large_input).await;
    let running = api.submit("runmesh/sleep", &json!({"ms": 6000})).await;
    api.wait_completed("runmesh/echo", &small.request_id, WAIT)
        .await;

    // The large result goes first (fal: 6 min for ≥ 10 KB), answered as an unknown request.
    let gone = wait_gone(&api, "runmesh/echo", &large.request_id).await;
    assert_eq!(
        gone.status,
        404,
        "large result never expired: {}",
        gone.text()
    );
    gone.assert_fal_json("expired status");
    let r = api.result("runmesh/echo", &large.request_id).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not found")),
        "{}",
        r.text()
    );
    let r = api.cancel("runmesh/echo", &large.request_id).await;
    assert_eq!(r.status, 404, "{}", r.text());

    // The small one is still there (4 s), then goes too; the running job never expires.
    let r = api.result("runmesh/echo", &small.request_id).await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"s": 1})),
        "small result kept"
    );
    let gone = wait_gone(&api, "runmesh/echo", &small.request_id).await;
    assert_eq!(
        gone.status,
        404,
        "small result never expired: {}",
        gone.text()
    );
    let st = api
        .status("runmesh/sleep", &running.request_id, false)
        .await;
    assert!(
        st.status == 202 || st.status == 200,
        "running job: {}",
        st.text()
    );

    // Expiry is a Raft-applied decision: replaying the log after a crash forgets the same jobs.
    node.kill9();
    node.restart_same_dir();
    let api = node.api();
    for id in [&small.request_id, &large.request_id] {
        let r = api.status("runmesh/echo", id, false).await;
        assert_eq!(
            r.status,
            404,
            "expired {id} is back after a restart: {}",
            r.text()
        );
    }
    let st = api
        .status("runmesh/sleep", &running.request_id, false)
        .await;
    assert!(
        st.status == 202 || st.status == 200,
        "running job after restart: {}",
        st.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_retry_job_whose_worker_dies_fails_instead_of_requeueing() {
    let mut node = Node::start(NodeOpts::default().lease_ms(1000));
    let api = node.api();
    let sub = api
        .submit_with(
            "runmesh/sleep",
            &json!({"ms": 3000}),
            &[("X-Fal-No-Retry", "1")],
        )
        .await;
    api.wait_status(
        "runmesh/sleep",
        &sub.request_id,
        false,
        WAIT,
        "IN_PROGRESS",
        |s| s["status"] == "IN_PROGRESS",
    )
    .await;
    node.kill9();
    node.restart_same_dir();
    let api = node.api();
    let s = api
        .wait_completed("runmesh/sleep", &sub.request_id, Duration::from_secs(60))
        .await;
    assert_eq!(s["error_type"], "runner_disconnected", "{s}");
    let r = api.result("runmesh/sleep", &sub.request_id).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["error_type"],
        "runner_disconnected",
        "{}",
        r.text()
    );
    assert_eq!(r.header("x-fal-error-type"), Some("runner_disconnected"));
}

/// Reads an SSE body to its end (bounded), keeping the raw bytes: comments included.
async fn raw_sse(req: reqwest::RequestBuilder) -> (u16, String) {
    use futures::StreamExt as _;
    let resp = req.send().await.expect("sse request");
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        body.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_responses_send_ping_comments_while_waiting() {
    let node = node_with(&["--sse-keepalive-ms", "100"]);
    let api = node.api();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let sub = api.submit("runmesh/sleep", &json!({"ms": 1500})).await;
    let url = format!(
        "{}/queue/runmesh/sleep/requests/{}/status/stream",
        node.base, sub.request_id
    );
    let (status, body) = raw_sse(http.get(url).header("accept", "text/event-stream")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\n: ping\n\n") || body.starts_with(": ping\n\n"),
        "status stream: {body}"
    );
    let last = body.rsplit("data: ").next().unwrap_or_default();
    assert!(
        last.contains("\"COMPLETED\""),
        "status stream ends with COMPLETED: {body}"
    );

    let url = format!("{}/runmesh/sleep/stream", node.base);
    let req = http
        .post(url)
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(json!({"ms": 1000}).to_string());
    let (status, body) = raw_sse(req).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(": ping\n\n"), "run stream: {body}");
    assert!(body.contains("\"slept_ms\":1000"), "run stream: {body}");
}

/// One WebSocket frame from the server (unmasked): opcode and payload.
async fn read_frame(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.expect("frame header");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.expect("frame length");
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.expect("frame length");
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).expect("frame fits")];
    s.read_exact(&mut payload).await.expect("frame payload");
    (head[0] & 0x0f, payload)
}

#[tokio::test(flavor = "multi_thread")]
async fn realtime_idle_socket_gets_fals_timeout_error_then_a_normal_close() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let node = node_with(&["--realtime-idle-timeout-ms", "300"]);
    let mut s = tokio::net::TcpStream::connect(node.addr())
        .await
        .expect("connect");
    let handshake = format!(
        "GET /runmesh/echo/realtime HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr()
    );
    s.write_all(handshake.as_bytes()).await.expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        s.read_exact(&mut byte).await.expect("handshake answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // One input (a masked JSON text frame, as clients must mask), answered with a binary result.
    let input = br#"{"a":1}"#;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | input.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(input.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.expect("send input");
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    // Bounded: the server closes after TIMEOUT; the deadline and the count guard a hang.
    for _ in 0..16 {
        match tokio::time::timeout_at(deadline, read_frame(&mut s)).await {
            Ok(f) => {
                let close = f.0 == 8;
                frames.push(f);
                if close {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let ops: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(
        ops.first(),
        Some(&2),
        "first frame is the binary result: {ops:?}"
    );
    let timeout = frames
        .iter()
        .filter(|f| f.0 == 1)
        .filter_map(|f| serde_json::from_slice::<Value>(&f.1).ok())
        .find(|v| v["type"] == "x-fal-error")
        .unwrap_or_else(|| panic!("no x-fal-error frame in {ops:?}"));
    assert_eq!(timeout["error"], "TIMEOUT", "{timeout}");
    assert!(timeout["reason"].is_string(), "{timeout}");
    let close = frames.last().expect("frames");
    assert_eq!(close.0, 8, "closed after TIMEOUT: {ops:?}");
    assert_eq!(close.1.get(..2), Some(&[0x03, 0xe8][..]), "close code 1000");
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_and_retry_preference_headers_are_accepted_and_ignored() {
    let node = node_with(&[]);
    let api = node.api();
    let headers = [
        (
            "x-fal-object-lifecycle-preference",
            r#"{"expiration_duration_seconds":3600,"initial_acl":{"public":true}}"#,
        ),
        ("X-Fal-Store-IO", "0"),
        (
            "X-Fal-Retry-Config",
            r#"{"timeout":{"retries":0},"server_error":{"retries":3}}"#,
        ),
        ("x-app-fal-disable-fallback", "true"),
    ];
    let sub = api
        .submit_with("runmesh/echo", &json!({"h": 1}), &headers)
        .await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    let r = api.result("runmesh/echo", &sub.request_id).await;
    assert_eq!((r.status, r.json()), (200, json!({"h": 1})));
    let r = api
        .post_json("/runmesh/echo", &json!({"h": 2}), &headers)
        .await;
    assert_eq!((r.status, r.json()), (200, json!({"h": 2})), "{}", r.text());
}
