//! Queue API against a real node: submit, status (with logs), result, URL shapes, routing by Host,
//! queue positions and priorities, the status SSE stream.

use std::time::Duration;

use reqwest::Method;
use runmesh_tests::{looks_like_uuid, raw_request, Api, Node, NodeOpts};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn submit_returns_absolute_urls_without_subpath() {
    let node = Node::start_default();
    let api = node.api();
    let input = json!({"a": 1, "nested": {"b": [1, 2, 3]}});
    let r = api.submit_raw("runmesh/echo/some/sub", &input, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.assert_fal_json("submit");
    let body = r.json();
    assert_eq!(body["status"], "IN_QUEUE", "{body}");
    let id = body["request_id"].as_str().expect("request_id").to_string();
    assert!(looks_like_uuid(&id), "request_id {id:?}");
    assert!(body["queue_position"].is_u64(), "queue_position: {body}");
    assert!(
        body["gateway_request_id"].is_string(),
        "gateway_request_id: {body}"
    );
    let prefix = format!("{}/queue/runmesh/echo/requests/{id}", node.base);
    assert_eq!(body["response_url"], prefix.as_str(), "{body}");
    assert_eq!(body["status_url"], format!("{prefix}/status").as_str());
    assert_eq!(body["cancel_url"], format!("{prefix}/cancel").as_str());

    // The handed-back URLs work as they are (the Python client uses them verbatim).
    let status_url = body["status_url"].as_str().expect("status_url");
    let mut done = Value::Null;
    for _ in 0..400 {
        let s = api.get(status_url).await;
        assert!(s.status == 200 || s.status == 202, "{}", s.text());
        done = s.json();
        if done["status"] == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let res = api
        .get(body["response_url"].as_str().expect("response_url"))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), input);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_goes_from_queue_to_completed_with_logs_on_request() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api.submit("runmesh/sleep", &json!({"ms": 600})).await;
    let id = &sub.request_id;

    // While not completed: 202, IN_QUEUE with an int queue_position, or IN_PROGRESS with a `logs` key.
    let mut seen_progress = false;
    for _ in 0..400 {
        let r = api.status("runmesh/sleep", id, false).await;
        r.assert_fal_json("status");
        let s = r.json();
        assert_eq!(s["request_id"], id.as_str(), "{s}");
        match s["status"].as_str() {
            Some("IN_QUEUE") => {
                assert_eq!(r.status, 202, "{s}");
                assert!(s["queue_position"].is_u64(), "{s}");
            }
            Some("IN_PROGRESS") => {
                assert_eq!(r.status, 202, "{s}");
                assert!(s.get("logs").is_some_and(Value::is_null), "logs: {s}");
                seen_progress = true;
            }
            Some("COMPLETED") => {
                assert_eq!(r.status, 200, "{s}");
                break;
            }
            other => panic!("unexpected status {other:?}: {s}"),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(seen_progress, "never saw IN_PROGRESS for a 600 ms sleep");

    let done = api.wait_completed("runmesh/sleep", id, WAIT).await;
    assert!(done.get("logs").is_some_and(Value::is_null), "{done}");
    assert!(done.get("error").is_none_or(Value::is_null), "{done}");
    assert!(done["metrics"].is_object(), "metrics: {done}");
    // Seconds, not ms (fal's unit): a 600 ms sleep ran for roughly 0.6 s. A unit check, not a
    // performance bound, hence the wide window.
    if let Some(t) = done["metrics"]
        .get("inference_time")
        .filter(|t| !t.is_null())
    {
        let t = t
            .as_f64()
            .unwrap_or_else(|| panic!("inference_time: {done}"));
        assert!((0.5..120.0).contains(&t), "inference_time {t} s: {done}");
    }
    for url in ["status_url", "response_url", "cancel_url"] {
        assert_eq!(done[url], sub.body[url], "{url} differs from submit");
    }

    for q in ["?logs=1", "?logs=true"] {
        let r = api
            .get(&format!("/queue/runmesh/sleep/requests/{id}/status{q}"))
            .await;
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        let s = r.json();
        let logs = s["logs"]
            .as_array()
            .unwrap_or_else(|| panic!("{q}: logs not an array: {s}"));
        assert!(!logs.is_empty(), "{q}: no log lines for a 600 ms sleep");
        for l in logs {
            for k in ["message", "level", "source", "timestamp"] {
                assert!(l[k].is_string(), "{q}: log entry without string {k}: {l}");
            }
        }
    }
    for q in ["?logs=0", "?logs=false"] {
        let r = api
            .get(&format!("/queue/runmesh/sleep/requests/{id}/status{q}"))
            .await;
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        assert!(r.json()["logs"].is_null(), "{q}: {}", r.text());
    }

    let res = api.result("runmesh/sleep", id).await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.assert_fal_json("result");
    assert_eq!(res.json(), json!({"slept_ms": 600}));
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_result_is_the_raw_input_and_stable() {
    let node = Node::start_default();
    let api = node.api();
    let input = json!({
        "prompt": "a cat — ünïcødé ✓",
        "n": 3,
        "f": 1.5,
        "flag": true,
        "none": null,
        "list": [{"x": 1}, [], {}],
    });
    let sub = api.submit("runmesh/echo", &input).await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    let first = api.result("runmesh/echo", &sub.request_id).await;
    assert_eq!(first.status, 200, "{}", first.text());
    first.assert_fal_json("result");
    assert_eq!(
        first.header("x-fal-request-id"),
        Some(sub.request_id.as_str()),
        "result x-fal-request-id should be the job's id (JS uses it as requestId)"
    );
    assert_eq!(first.json(), input);
    let second = api.result("runmesh/echo", &sub.request_id).await;
    assert_eq!(second.body, first.body, "second read differs");

    // An empty object is a valid input too.
    let sub = api.submit("runmesh/echo", &json!({})).await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    assert_eq!(
        api.result("runmesh/echo", &sub.request_id).await.json(),
        json!({})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_result_cancel_accept_subpath_and_trailing_slash() {
    let node = Node::start_default();
    let api = node.api();
    let input = json!({"k": "v"});
    let sub = api.submit("runmesh/echo/a/b", &input).await;
    let id = &sub.request_id;
    api.wait_completed("runmesh/echo", id, WAIT).await;

    for path in [
        format!("/queue/runmesh/echo/a/b/requests/{id}/status"),
        format!("/queue/runmesh/echo/a/b/requests/{id}/status/"),
        format!("/queue/runmesh/echo/requests/{id}/status/"),
        format!("/queue/runmesh/echo/requests/{id}/status/?logs=1"),
    ] {
        let r = api.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["status"], "COMPLETED", "{path}");
    }
    for path in [
        format!("/queue/runmesh/echo/a/b/requests/{id}"),
        format!("/queue/runmesh/echo/a/b/requests/{id}/"),
        format!("/queue/runmesh/echo/requests/{id}/"),
    ] {
        let r = api.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json(), input, "{path}");
    }
    for path in [
        format!("/queue/runmesh/echo/a/b/requests/{id}/cancel"),
        format!("/queue/runmesh/echo/requests/{id}/cancel/"),
    ] {
        let r = api.send(Method::PUT, &path, &[], None).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["status"], "ALREADY_COMPLETED", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_host_header_routes_to_the_queue() {
    let node = Node::start_default();
    let host = format!("queue.localhost:{}", node.port());
    let body = br#"{"via":"host"}"#;
    let hdrs = [
        ("Host", host.as_str()),
        ("Content-Type", "application/json"),
    ];
    let t = Duration::from_secs(10);
    let r = raw_request(node.addr(), "POST", "/runmesh/echo/x", &hdrs, body, t)
        .await
        .expect("submit via Host");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let sub = r.json();
    let id = sub["request_id"]
        .as_str()
        .expect("request_id: queue submit");
    assert_eq!(
        sub["status_url"],
        format!("http://{host}/runmesh/echo/requests/{id}/status").as_str(),
        "URLs keep the Host and have no /queue prefix: {sub}"
    );
    assert!(r.header("x-fal-request-id").is_some());

    // Status and result with the same Host, no prefix.
    let mut status = Value::Null;
    for _ in 0..200 {
        let s = raw_request(
            node.addr(),
            "GET",
            &format!("/runmesh/echo/requests/{id}/status"),
            &[("Host", host.as_str())],
            b"",
            t,
        )
        .await
        .expect("status via Host");
        assert!(s.status == 200 || s.status == 202, "{}", s.status);
        status = s.json();
        if status["status"] == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["status"], "COMPLETED", "{status}");
    let res = raw_request(
        node.addr(),
        "GET",
        &format!("/runmesh/echo/requests/{id}"),
        &[("Host", host.as_str())],
        b"",
        t,
    )
    .await
    .expect("result via Host");
    assert_eq!(res.status, 200);
    assert_eq!(res.json(), json!({"via": "host"}));

    // Without the queue host and prefix the same POST is a sync run.
    let sync = raw_request(
        node.addr(),
        "POST",
        "/runmesh/echo/x",
        &[("Content-Type", "application/json")],
        body,
        t,
    )
    .await
    .expect("sync run");
    assert_eq!(sync.status, 200);
    assert_eq!(sync.json(), json!({"via": "host"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_is_json_with_a_request_id_header() {
    let node = Node::start_default();
    let api = node.api();
    let sub_resp = api.submit_raw("runmesh/echo", &json!({"a": 1}), &[]).await;
    sub_resp.assert_fal_json("submit");
    let id = sub_resp.json()["request_id"]
        .as_str()
        .expect("request_id")
        .to_string();
    api.wait_completed("runmesh/echo", &id, WAIT).await;

    let unknown = runmesh_tests::unknown_request_id();
    let checks: Vec<(&str, runmesh_tests::Resp)> = vec![
        ("status", api.status("runmesh/echo", &id, true).await),
        ("result", api.result("runmesh/echo", &id).await),
        ("cancel completed", api.cancel("runmesh/echo", &id).await),
        ("cancel unknown", api.cancel("runmesh/echo", &unknown).await),
        (
            "status unknown",
            api.status("runmesh/echo", &unknown, false).await,
        ),
        (
            "unknown model",
            api.submit_raw("runmesh/nope", &json!({}), &[]).await,
        ),
        (
            "invalid json",
            api.post_raw("/queue/runmesh/echo", b"{").await,
        ),
        (
            "sync echo",
            api.run_sync("runmesh/echo", &json!({"b": 2})).await,
        ),
        (
            "sync fail",
            api.run_sync("runmesh/fail", &json!({"message": "x"})).await,
        ),
        (
            "unknown sync model",
            api.run_sync("nobody/nothing", &json!({})).await,
        ),
    ];
    for (what, r) in &checks {
        r.assert_fal_json(what);
    }
    let h = api.healthz().await;
    assert_eq!(h.status, 200);
    assert!(
        h.header("x-fal-request-id").is_some(),
        "healthz lacks x-fal-request-id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_positions_are_real_and_low_priority_goes_last() {
    let node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let app = "runmesh/sleep";
    let blocker = api.submit(app, &json!({"ms": 30_000})).await;
    api.wait_started(app, &blocker.request_id, WAIT).await;

    let mut normal = Vec::new();
    for expected in 0..3u64 {
        let s = api.submit(app, &json!({"ms": 10})).await;
        assert_eq!(
            s.queue_position,
            Some(expected),
            "submit #{expected}: {}",
            s.body
        );
        normal.push(s.request_id);
    }
    for (i, id) in normal.iter().enumerate() {
        let r = api.status(app, id, false).await;
        assert_eq!(r.status, 202);
        let s = r.json();
        assert_eq!(s["status"], "IN_QUEUE", "{s}");
        assert_eq!(s["queue_position"], i as u64, "{s}");
    }

    // A low-priority job queues behind every normal one, including normal ones that come later.
    let low = api
        .submit_with(app, &json!({"ms": 10}), &[("X-Fal-Queue-Priority", "low")])
        .await;
    assert_eq!(low.queue_position, Some(3), "{}", low.body);
    let late = api
        .submit_with(
            app,
            &json!({"ms": 10}),
            &[("X-Fal-Queue-Priority", "normal")],
        )
        .await;
    assert_eq!(late.queue_position, Some(3), "{}", late.body);
    let s = api.status(app, &low.request_id, false).await.json();
    assert_eq!(s["queue_position"], 4, "low after a later normal job: {s}");
    normal.push(late.request_id);

    // Free the slot: the normal jobs all finish before the low one starts.
    assert_eq!(api.cancel(app, &blocker.request_id).await.status, 202);
    let s = api
        .wait_started(app, &low.request_id, Duration::from_secs(30))
        .await;
    assert_ne!(s["status"], "IN_QUEUE");
    for id in &normal {
        let s = api.status(app, id, false).await.json();
        assert_eq!(
            s["status"], "COMPLETED",
            "normal job {id} not done when the low one started: {s}"
        );
    }
    api.wait_completed(app, &low.request_id, WAIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sleep_logs_are_visible_while_in_progress() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api.submit("runmesh/sleep", &json!({"ms": 1500})).await;
    let s = api
        .wait_status(
            "runmesh/sleep",
            &sub.request_id,
            true,
            WAIT,
            "IN_PROGRESS with logs",
            |s| {
                s["status"] == "COMPLETED"
                    || (s["status"] == "IN_PROGRESS"
                        && s["logs"].as_array().is_some_and(|l| !l.is_empty()))
            },
        )
        .await;
    assert_eq!(
        s["status"], "IN_PROGRESS",
        "logs never visible while running: {s}"
    );
    let done = api
        .wait_status("runmesh/sleep", &sub.request_id, true, WAIT, "done", |s| {
            s["status"] == "COMPLETED"
        })
        .await;
    let logs = done["logs"].as_array().expect("logs array");
    // ~one line per 100 ms of a 1.5 s sleep; loose bound, batching may merge nothing away.
    assert!(logs.len() >= 5, "only {} log lines: {done}", logs.len());
    let levels = ["STDOUT", "STDERR", "INFO", "WARN", "ERROR", "DEBUG"];
    for l in logs {
        assert!(
            levels.contains(&l["level"].as_str().unwrap_or("")),
            "level: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_via_queue_completes_with_error() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api
        .submit("runmesh/fail", &json!({"message": "boom-42"}))
        .await;
    let done = api
        .wait_completed("runmesh/fail", &sub.request_id, WAIT)
        .await;
    let err = done["error"]
        .as_str()
        .expect("error string on a failed job");
    assert!(err.contains("boom-42"), "error: {done}");
    assert!(
        done["error_type"].as_str().is_some_and(|t| !t.is_empty()),
        "error_type: {done}"
    );
    let with_logs = api
        .status("runmesh/fail", &sub.request_id, true)
        .await
        .json();
    let logs = with_logs["logs"].as_array().expect("logs array");
    assert!(
        logs.iter()
            .any(|l| l["level"] == "ERROR" && l["message"].to_string().contains("boom-42")),
        "the app's ERROR log line: {with_logs}"
    );
    let res = api.result("runmesh/fail", &sub.request_id).await;
    assert!(res.status >= 400, "result of a failed job: {}", res.status);
    res.assert_fal_json("failed result");
    let body = res.json();
    assert!(
        body["detail"].to_string().contains("boom-42"),
        "detail: {body}"
    );
    assert_eq!(body["error_type"], done["error_type"], "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn result_before_completion_is_400() {
    let node = Node::start(NodeOpts::default().slots(1));
    let api = node.api();
    let sub = api.submit("runmesh/sleep", &json!({"ms": 5000})).await;
    let r = api.result("runmesh/sleep", &sub.request_id).await;
    assert_eq!(r.status, 400, "{}", r.text());
    r.assert_fal_json("early result");
    api.wait_started("runmesh/sleep", &sub.request_id, WAIT)
        .await;
    let r = api.result("runmesh/sleep", &sub.request_id).await;
    assert_eq!(r.status, 400, "while running: {}", r.text());
}

fn status_rank(s: &str) -> u8 {
    match s {
        "IN_QUEUE" => 0,
        "IN_PROGRESS" => 1,
        "COMPLETED" => 2,
        other => panic!("unknown status {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_stream_runs_from_queue_to_completed_then_closes() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api.submit("runmesh/sleep", &json!({"ms": 800})).await;
    let path = format!(
        "/queue/runmesh/sleep/requests/{}/status/stream?logs=1",
        sub.request_id
    );
    let sse = api
        .sse(Method::GET, &path, None, Duration::from_secs(20))
        .await;
    assert_eq!(sse.status, 200);
    assert!(
        sse.content_type().starts_with("text/event-stream"),
        "content-type {:?}",
        sse.content_type()
    );
    assert!(
        sse.closed,
        "stream not closed after COMPLETED: {:?}",
        sse.events
    );
    let statuses: Vec<Value> = sse.events.iter().map(|e| e.json()).collect();
    assert!(!statuses.is_empty(), "no events");
    let first = statuses[0]["status"].as_str().unwrap_or("");
    assert!(
        first == "IN_QUEUE" || first == "IN_PROGRESS",
        "first event: {}",
        statuses[0]
    );
    let mut rank = 0;
    for s in &statuses {
        let r = status_rank(s["status"].as_str().unwrap_or(""));
        assert!(r >= rank, "status went backwards: {statuses:?}");
        rank = r;
        assert_eq!(s["request_id"], sub.request_id.as_str());
        if s["status"] == "IN_QUEUE" {
            assert!(s["queue_position"].is_u64(), "{s}");
        }
    }
    let last = statuses.last().expect("events");
    assert_eq!(last["status"], "COMPLETED", "last event: {last}");
    assert_eq!(
        statuses
            .iter()
            .filter(|s| s["status"] == "COMPLETED")
            .count(),
        1,
        "exactly one COMPLETED event, at the end"
    );
    assert!(last["logs"].is_array(), "logs=1 stream has logs: {last}");

    // On a completed job: one COMPLETED event and close.
    let sse = api
        .sse(Method::GET, &path, None, Duration::from_secs(10))
        .await;
    assert!(sse.closed);
    let statuses: Vec<Value> = sse.events.iter().map(|e| e.json()).collect();
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0]["status"], "COMPLETED");
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_is_200() {
    let node = Node::start_default();
    let r = Api::new(&node.base).healthz().await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_case_insensitive() {
    let node = Node::start_default();
    let api = node.api();
    let sub = api.submit("runmesh/echo", &json!({"c": 1})).await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    let upper = sub.request_id.to_uppercase();
    let r = api.status("runmesh/echo", &upper, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["request_id"], sub.request_id.as_str());
    assert_eq!(
        api.result("runmesh/echo", &upper).await.json(),
        json!({"c": 1})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_stream_of_a_cancelled_job_ends_with_its_error() {
    let node = Node::start_default();
    let api = node.api();
    let app = "runmesh/sleep";
    let sub = api.submit(app, &json!({"ms": 30_000})).await;
    api.wait_started(app, &sub.request_id, WAIT).await;
    let path = format!("/queue/{app}/requests/{}/status/stream", sub.request_id);
    let reader = {
        let api = api.clone();
        let path = path.clone();
        tokio::spawn(async move {
            api.sse(Method::GET, &path, None, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.cancel(app, &sub.request_id).await.status, 202);
    let sse = reader.await.expect("reader task");
    assert!(sse.closed, "stream not closed after cancellation");
    let last = sse.events.last().expect("events").json();
    assert_eq!(last["status"], "COMPLETED", "{last}");
    assert_eq!(last["error_type"], "client_cancelled", "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_status_streams_on_one_job_all_close() {
    let node = Node::start_default();
    let api = node.api();
    let app = "runmesh/sleep";
    let sub = api.submit(app, &json!({"ms": 700})).await;
    let path = format!("/queue/{app}/requests/{}/status/stream", sub.request_id);
    let mut readers = Vec::new();
    for _ in 0..20 {
        let api = api.clone();
        let path = path.clone();
        readers.push(tokio::spawn(async move {
            api.sse(Method::GET, &path, None, Duration::from_secs(20))
                .await
        }));
    }
    for r in readers {
        let sse = r.await.expect("reader task");
        assert_eq!(sse.status, 200);
        assert!(sse.closed, "a stream did not close");
        let last = sse.events.last().expect("events").json();
        assert_eq!(last["status"], "COMPLETED", "{last}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_input_roundtrips_through_the_log() {
    let node = Node::start_default();
    let api = node.api();
    let input = json!({"blob": "z".repeat(2 * 1024 * 1024), "tail": [1, 2, 3]});
    let sub = api.submit("runmesh/echo", &input).await;
    api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
        .await;
    let res = api.result("runmesh/echo", &sub.request_id).await;
    assert_eq!(res.status, 200);
    assert!(res.json() == input, "2 MiB echo differs");
}
