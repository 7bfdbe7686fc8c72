//! The fal API end to end: a real single-node JobLog in a temp dir, the router driven with
//! `oneshot`, and the test playing the worker by proposing Assign/Complete/Fail itself.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use futures::StreamExt;
use runmesh_gateway_node::{router, AppCatalog, GatewayConfig, PartialHub};
use runmesh_proto::fal::FieldError;
use runmesh_proto::{
    AppId, CommandResult, ErrorType, JobCommand, JobError, JobState, LogLevel, LogLine, ModelId,
    RequestId, SystemClock,
};
use runmesh_raft::{JobLog, JobLogConfig, JobRecord};
use serde_json::{json, Value};
use tower::ServiceExt;

const WORKER: u64 = 7;
const WAIT: Duration = Duration::from_secs(10);

/// `runmesh/{echo,sleep,fail,stream}` and `workflows/runmesh/wf`; sleep wants an integer `ms`.
struct TestCatalog;

impl AppCatalog for TestCatalog {
    fn contains(&self, app: &AppId) -> bool {
        self.apps().contains(app)
    }

    fn validate(&self, model: &ModelId, input: &Value) -> Result<(), Vec<FieldError>> {
        if model.app.alias == "sleep" && !input.get("ms").is_some_and(Value::is_u64) {
            return Err(vec![FieldError::body(
                "ms",
                "Input should be a valid integer",
                "int_type",
            )]);
        }
        Ok(())
    }

    fn apps(&self) -> Vec<AppId> {
        let mut apps: Vec<AppId> = ["echo", "sleep", "fail", "stream"]
            .iter()
            .map(|a| AppId::new("runmesh", a).unwrap())
            .collect();
        apps.push(ModelId::parse("workflows/runmesh/wf").unwrap().app);
        apps
    }
}

struct Harness {
    app: Router,
    joblog: JobLog,
    partials: PartialHub,
    _dir: tempfile::TempDir,
}

async fn harness_with(config: GatewayConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let joblog = JobLog::open(
        JobLogConfig::single_node(dir.path().join("raft")),
        Arc::new(SystemClock),
        Arc::new(runmesh_raft::transport::NoNetwork),
    )
    .await
    .unwrap();
    assert!(
        joblog.wait_healthy(WAIT).await,
        "job log never became healthy"
    );
    let partials = PartialHub::new();
    let app = router(
        joblog.clone(),
        Arc::new(TestCatalog),
        partials.clone(),
        config,
    );
    Harness {
        app,
        joblog,
        partials,
        _dir: dir,
    }
}

async fn harness() -> Harness {
    harness_with(GatewayConfig::default()).await
}

fn request(method: &str, host: &str, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(body.into())
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every answer: JSON (or SSE) content type and a request id.
    fn assert_envelope(&self) {
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json") || ct.starts_with("text/event-stream"),
            "content-type {ct:?}"
        );
        assert!(self
            .header("x-fal-request-id")
            .is_some_and(|v| !v.is_empty()));
    }
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = tokio::time::timeout(WAIT, app.clone().oneshot(req))
        .await
        .expect("request timed out")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, axum::body::to_bytes(body, usize::MAX))
        .await
        .expect("body timed out")
        .unwrap();
    let answer = Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    answer.assert_envelope();
    answer
}

async fn submit(h: &Harness, path: &str, body: &str) -> RequestId {
    let a = send(
        &h.app,
        request("POST", "queue.test", path, body.to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json());
    a.json()["request_id"].as_str().unwrap().parse().unwrap()
}

/// The next queued job, waiting for one to appear.
async fn next_queued(joblog: &JobLog) -> JobRecord {
    let mut changes = joblog.subscribe();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(rec) = joblog.read(|t| t.queued_in_order().next().cloned()) {
                return rec;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), changes.recv()).await;
        }
    })
    .await
    .expect("no job was queued")
}

async fn wait_for(joblog: &JobLog, id: &RequestId, pred: impl Fn(&JobRecord) -> bool) {
    tokio::time::timeout(WAIT, async {
        loop {
            if joblog.read(|t| t.get(id).is_some_and(&pred)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition never held");
}

async fn assign(joblog: &JobLog, id: &RequestId) -> u32 {
    let cmd = JobCommand::Assign {
        request_id: id.clone(),
        worker: WORKER,
        lease_ms: 60_000,
        now_ms: joblog.now_ms(),
    };
    match joblog.propose(cmd).await.unwrap() {
        CommandResult::Assigned { attempt } => attempt,
        other => panic!("assign: {other:?}"),
    }
}

async fn complete(joblog: &JobLog, id: &RequestId, attempt: u32, output_json: &str) {
    let cmd = JobCommand::Complete {
        request_id: id.clone(),
        worker: WORKER,
        attempt,
        output_json: output_json.into(),
        inference_time_ms: 250,
        now_ms: joblog.now_ms(),
    };
    assert_eq!(joblog.propose(cmd).await.unwrap(), CommandResult::Applied);
}

async fn fail(joblog: &JobLog, id: &RequestId, attempt: u32, error: JobError) {
    let cmd = JobCommand::Fail {
        request_id: id.clone(),
        worker: WORKER,
        attempt,
        error,
        inference_time_ms: 5,
        now_ms: joblog.now_ms(),
    };
    assert_eq!(joblog.propose(cmd).await.unwrap(), CommandResult::Applied);
}

/// The `data:` payloads of an SSE body, as JSON.
fn sse_events(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data.join("\n")).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_submit_status_result_round_trip() {
    let h = harness().await;
    let a = send(
        &h.app,
        request(
            "POST",
            "queue.test:8080",
            "/runmesh/echo/sub?fal_webhook=http%3A%2F%2Fhook.test%2Fx",
            r#"{"a": 1}"#,
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let body = a.json();
    let id = body["request_id"].as_str().unwrap().to_string();
    let base = format!("http://queue.test:8080/runmesh/echo/requests/{id}");
    assert_eq!(
        body,
        json!({
            "status": "IN_QUEUE", "request_id": id, "response_url": base,
            "status_url": format!("{base}/status"), "cancel_url": format!("{base}/cancel"),
            "queue_position": 0, "gateway_request_id": id,
        })
    );
    assert_eq!(a.header("x-fal-request-id"), Some(id.as_str()));
    let rid: RequestId = id.parse().unwrap();
    let spec = h.joblog.read(|t| t.get(&rid).unwrap().spec.clone());
    assert_eq!(spec.input_json, r#"{"a": 1}"#);
    assert_eq!(spec.model.to_string(), "runmesh/echo/sub");
    assert_eq!(spec.webhook_url.as_deref(), Some("http://hook.test/x"));

    // A second job queues behind the first.
    let second = submit(&h, "/runmesh/echo", "{}").await;
    let s = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{second}/status"),
            "",
        ),
    )
    .await;
    assert_eq!(s.status, StatusCode::ACCEPTED);
    assert_eq!(s.json()["queue_position"], 1);

    let s = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}/status?logs=true"),
            "",
        ),
    )
    .await;
    assert_eq!(s.status, StatusCode::ACCEPTED);
    assert_eq!(s.json()["status"], "IN_QUEUE");
    assert_eq!(s.json()["queue_position"], 0);
    assert_eq!(s.header("x-fal-request-id"), Some(id.as_str()));

    let attempt = assign(&h.joblog, &rid).await;
    let lines = vec![LogLine {
        timestamp_ms: 1_734_709_037_120,
        level: LogLevel::Info,
        message: "working".into(),
    }];
    h.joblog
        .propose(JobCommand::AppendLogs {
            request_id: rid.clone(),
            attempt,
            lines,
        })
        .await
        .unwrap();
    // Subpath form, trailing slash, logs=1.
    let s = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/sub/requests/{id}/status/?logs=1"),
            "",
        ),
    )
    .await;
    assert_eq!(s.status, StatusCode::ACCEPTED);
    let v = s.json();
    assert_eq!(v["status"], "IN_PROGRESS");
    assert_eq!(v["logs"][0]["message"], "working");
    assert_eq!(v["logs"][0]["source"], "USER");
    assert_eq!(v["logs"][0]["timestamp"], "2024-12-20T15:37:17.120000");
    let s = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}/status?logs=0"),
            "",
        ),
    )
    .await;
    assert_eq!(s.json()["logs"], Value::Null);

    let r = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}"),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json(), json!({"detail": "Request is still in progress"}));

    complete(&h.joblog, &rid, attempt, r#"{"a":1}"#).await;
    let s = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}/status"),
            "",
        ),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.json()["status"], "COMPLETED");
    assert_eq!(s.json()["metrics"], json!({"inference_time": 0.25}));
    let r = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}/"),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], br#"{"a":1}"#);
    assert_eq!(r.header("x-fal-request-id"), Some(id.as_str()));

    // Another app's URL does not reach this request.
    let r = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/fail/requests/{id}"),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_path_prefix_namespace_and_forwarded_proto() {
    let h = harness().await;
    let req = Request::builder()
        .method("POST")
        .uri("/queue/workflows/runmesh/wf/x")
        .header("host", "localhost:9000")
        .header("x-forwarded-proto", "https")
        .body(Body::empty())
        .unwrap();
    let a = send(&h.app, req).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json());
    let id = a.json()["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        a.json()["status_url"],
        format!("https://localhost:9000/queue/workflows/runmesh/wf/requests/{id}/status")
    );
    let s = send(
        &h.app,
        request(
            "GET",
            "localhost:9000",
            &format!("/queue/workflows/runmesh/wf/requests/{id}/status"),
            "",
        ),
    )
    .await;
    assert_eq!(s.status, StatusCode::ACCEPTED);
    assert_eq!(
        s.json()["response_url"],
        format!("http://localhost:9000/queue/workflows/runmesh/wf/requests/{id}")
    );
    // Empty body is `{}`.
    let rid: RequestId = id.parse().unwrap();
    assert_eq!(
        h.joblog
            .read(|t| t.get(&rid).unwrap().spec.input_json.clone()),
        "{}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_fal_shaped_errors() {
    let h = harness_with(GatewayConfig {
        body_limit_bytes: 64,
        region: None,
        ..GatewayConfig::default()
    })
    .await;
    let q = |method: &str, path: &str, body: &str| {
        request(method, "queue.test", path, body.to_string())
    };

    let a = send(&h.app, q("POST", "/nobody/nothing", "{}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.json()["detail"].is_string());

    let a = send(&h.app, q("POST", "/solo", "{}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    for bad in ["{", "[1,2]", "42", "null"] {
        let a = send(&h.app, q("POST", "/runmesh/echo", bad)).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(a.json()["detail"][0]["loc"], json!(["body"]));
    }

    let a = send(&h.app, q("POST", "/runmesh/sleep", r#"{"ms": "x"}"#)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        a.json(),
        json!({"detail": [{"loc": ["body", "ms"], "msg": "Input should be a valid integer", "type": "int_type"}]})
    );

    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(100));
    let a = send(&h.app, q("POST", "/runmesh/echo", &big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.json()["detail"].is_string());
    // Same without a Content-Length (a streamed body).
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(big.clone()))]);
    let a = send(
        &h.app,
        request(
            "POST",
            "queue.test",
            "/runmesh/echo",
            Body::from_stream(stream),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    let req = Request::builder()
        .method("POST")
        .uri("/runmesh/echo")
        .header("host", "queue.test")
        .header("x-fal-queue-priority", "urgent")
        .body(Body::from("{}"))
        .unwrap();
    let a = send(&h.app, req).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        a.json()["detail"][0]["loc"],
        json!(["header", "x-fal-queue-priority"])
    );

    let a = send(&h.app, q("GET", "/runmesh/echo", "")).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.header("allow"), Some("POST"));
    let a = send(
        &h.app,
        q(
            "DELETE",
            &format!("/runmesh/echo/requests/{}/status", RequestId::new_random()),
            "",
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = send(&h.app, q("GET", "/", "")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    let unknown = RequestId::new_random();
    for path in [
        format!("/runmesh/echo/requests/{unknown}/status"),
        format!("/runmesh/echo/requests/{unknown}"),
        format!("/runmesh/echo/requests/{unknown}/status/stream"),
        "/runmesh/echo/requests/not-a-uuid/status".to_string(),
    ] {
        let a = send(&h.app, q("GET", &path, "")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.json()["detail"].is_string());
    }
    let a = send(
        &h.app,
        q(
            "PUT",
            &format!("/runmesh/echo/requests/{unknown}/cancel"),
            "",
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json(), json!({"status": "NOT_FOUND"}));

    // Nothing above was accepted.
    assert_eq!(h.joblog.read(|t| t.len()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queue_length_rejects_with_429() {
    let h = harness().await;
    submit(&h, "/runmesh/echo", "{}").await;
    submit(&h, "/runmesh/echo", "{}").await;
    let a = send(
        &h.app,
        request(
            "POST",
            "queue.test",
            "/runmesh/echo?fal_max_queue_length=2",
            "{}",
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.json()["detail"].is_string());
    submit(&h, "/runmesh/echo?fal_max_queue_length=3", "{}").await;
    // Other apps' queues do not count.
    submit(&h, "/runmesh/sleep?fal_max_queue_length=1", r#"{"ms": 1}"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_jobs() {
    let h = harness().await;
    let queued = submit(&h, "/runmesh/echo", "{}").await;
    let running = submit(&h, "/runmesh/echo", "{}").await;
    assign(&h.joblog, &running).await;

    let cancel = |id: &RequestId| {
        request(
            "PUT",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}/cancel"),
            "",
        )
    };
    let a = send(&h.app, cancel(&queued)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json(), json!({"status": "CANCELLATION_REQUESTED"}));
    let s = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{queued}/status"),
            "",
        ),
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.json()["status"], "COMPLETED");
    assert_eq!(s.json()["error_type"], "client_cancelled");
    let r = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{queued}"),
            "",
        ),
    )
    .await;
    assert_eq!(r.status.as_u16(), 499);
    assert_eq!(
        r.json(),
        json!({"detail": "Request was cancelled", "error_type": "client_cancelled"})
    );
    assert_eq!(r.header("x-fal-error-type"), Some("client_cancelled"));
    let a = send(&h.app, cancel(&queued)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json(), json!({"status": "ALREADY_COMPLETED"}));

    let a = send(&h.app, cancel(&running)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert!(h.joblog.read(|t| t.get(&running).unwrap().cancel_requested));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_start_timeouts_surface_at_result() {
    let h = harness().await;
    let id = submit(&h, "/runmesh/fail", r#"{"message": "nope"}"#).await;
    let attempt = assign(&h.joblog, &id).await;
    fail(
        &h.joblog,
        &id,
        attempt,
        JobError::new(ErrorType::RunnerError, "nope"),
    )
    .await;
    let r = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/fail/requests/{id}"),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.json(),
        json!({"detail": "nope", "error_type": "runner_server_error"})
    );
    assert_eq!(r.header("x-fal-error-type"), Some("runner_server_error"));
    let s = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/fail/requests/{id}/status"),
            "",
        ),
    )
    .await;
    assert_eq!(s.json()["error"], "nope");

    let req = Request::builder()
        .method("POST")
        .uri("/runmesh/echo")
        .header("host", "queue.test")
        .header("x-fal-request-timeout", "0.5")
        .body(Body::from("{}"))
        .unwrap();
    let a = send(&h.app, req).await;
    let id: RequestId = a.json()["request_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        h.joblog.read(|t| t.get(&id).unwrap().spec.start_timeout_ms),
        Some(500)
    );
    h.joblog
        .propose(JobCommand::Tick {
            now_ms: h.joblog.now_ms() + 60_000,
        })
        .await
        .unwrap();
    let r = send(
        &h.app,
        request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}"),
            "",
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error_type"], "request_timeout");
    assert_eq!(r.header("x-fal-request-timeout-type"), Some("user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_run_returns_the_output() {
    let h = harness().await;
    let joblog = h.joblog.clone();
    let worker = tokio::spawn(async move {
        let rec = next_queued(&joblog).await;
        let attempt = assign(&joblog, &rec.spec.request_id).await;
        complete(&joblog, &rec.spec.request_id, attempt, &rec.spec.input_json).await;
        rec
    });
    let a = send(
        &h.app,
        request("POST", "run.test", "/runmesh/echo", r#"{"x": [1, 2]}"#),
    )
    .await;
    let rec = worker.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({"x": [1, 2]}));
    assert_eq!(
        a.header("x-fal-request-id"),
        Some(rec.spec.request_id.as_str())
    );
    assert_eq!(rec.spec.mode, runmesh_proto::SubmitMode::Sync);

    let joblog = h.joblog.clone();
    tokio::spawn(async move {
        let rec = next_queued(&joblog).await;
        let attempt = assign(&joblog, &rec.spec.request_id).await;
        fail(
            &joblog,
            &rec.spec.request_id,
            attempt,
            JobError::new(ErrorType::RunnerError, "bad"),
        )
        .await;
    });
    let a = send(&h.app, request("POST", "run.test", "/runmesh/fail", "{}")).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        a.json(),
        json!({"detail": "bad", "error_type": "runner_server_error"})
    );

    let a = send(&h.app, request("POST", "run.test", "/nobody/nothing", "{}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_client_disconnect_cancels_the_job() {
    let h = harness().await;
    let app = h.app.clone();
    let client = tokio::spawn(async move {
        let _ = app
            .oneshot(request("POST", "run.test", "/runmesh/echo", "{}"))
            .await;
    });
    let rec = next_queued(&h.joblog).await;
    client.abort();
    wait_for(&h.joblog, &rec.spec.request_id, |r| {
        matches!(r.state, JobState::Cancelled { .. })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stream_sends_partials_then_the_output() {
    let h = harness().await;
    let (joblog, partials) = (h.joblog.clone(), h.partials.clone());
    tokio::spawn(async move {
        let rec = next_queued(&joblog).await;
        let id = rec.spec.request_id.clone();
        let attempt = assign(&joblog, &id).await;
        for i in 0..3 {
            partials.publish(&id, json!({ "i": i }).to_string());
        }
        complete(&joblog, &id, attempt, r#"{"n":3}"#).await;
        partials.close(&id);
    });
    let a = send(
        &h.app,
        request("POST", "run.test", "/runmesh/stream/stream", r#"{"n": 3}"#),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        sse_events(&a.body),
        vec![
            json!({"i": 0}),
            json!({"i": 1}),
            json!({"i": 2}),
            json!({"n": 3})
        ]
    );
    assert_eq!(h.partials.channels(), 0);

    let joblog = h.joblog.clone();
    tokio::spawn(async move {
        let rec = next_queued(&joblog).await;
        let attempt = assign(&joblog, &rec.spec.request_id).await;
        fail(
            &joblog,
            &rec.spec.request_id,
            attempt,
            JobError::new(ErrorType::RunnerError, "broke"),
        )
        .await;
    });
    let a = send(
        &h.app,
        request("POST", "run.test", "/runmesh/echo/stream", "{}"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        sse_events(&a.body),
        vec![json!({"detail": "broke", "error_type": "runner_server_error"})]
    );

    // Errors before the stream starts are plain JSON.
    let a = send(
        &h.app,
        request("POST", "run.test", "/runmesh/echo/stream", "[]"),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_stream_follows_the_job_and_closes_after_completed() {
    let h = harness().await;
    let id = submit(&h, "/runmesh/echo", "{}").await;
    let resp = h
        .app
        .clone()
        .oneshot(request(
            "GET",
            "queue.test",
            &format!("/runmesh/echo/requests/{id}/status/stream?logs=1"),
            "",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let mut buf = Vec::new();
    // Reads until `n` events have arrived.
    async fn events(
        body: &mut axum::body::BodyDataStream,
        buf: &mut Vec<u8>,
        n: usize,
    ) -> Vec<Value> {
        tokio::time::timeout(WAIT, async {
            loop {
                let evs = sse_events(buf);
                if evs.len() >= n {
                    return evs;
                }
                match body.next().await {
                    Some(chunk) => buf.extend_from_slice(&chunk.unwrap()),
                    None => return sse_events(buf),
                }
            }
        })
        .await
        .expect("events did not arrive")
    }
    let evs = events(&mut body, &mut buf, 1).await;
    assert_eq!(evs[0]["status"], "IN_QUEUE");
    let attempt = assign(&h.joblog, &id).await;
    let evs = events(&mut body, &mut buf, 2).await;
    assert_eq!(evs[1]["status"], "IN_PROGRESS");
    assert_eq!(evs[1]["logs"], json!([]));
    complete(&h.joblog, &id, attempt, "{}").await;
    let evs = events(&mut body, &mut buf, 3).await;
    assert_eq!(evs[2]["status"], "COMPLETED");
    // Closed after COMPLETED.
    let rest = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("stream stayed open");
    assert!(rest.is_none());
    assert_eq!(sse_events(&buf).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_app_list_and_unavailable_log() {
    let h = harness().await;
    let a = send(&h.app, request("GET", "queue.test", "/healthz", "")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["status"], "ok");
    let a = send(&h.app, request("GET", "run.test", "/admin/apps", "")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["apps"].as_array().unwrap().len(), 5);
    // A job log that cannot commit: the submit is refused with a JSON 503 (and a request id, so
    // the Python client does not take it for an ingress error and replay it).
    h.joblog.shutdown().await;
    let a = send(&h.app, request("POST", "queue.test", "/runmesh/echo", "{}")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.json()["detail"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stream_follows_a_retried_job() {
    let h = harness().await;
    let (joblog, partials) = (h.joblog.clone(), h.partials.clone());
    tokio::spawn(async move {
        let rec = next_queued(&joblog).await;
        let id = rec.spec.request_id.clone();
        assign(&joblog, &id).await;
        partials.publish(&id, r#"{"i":0}"#.into());
        // The first worker loses the job: its channel closes and the lease runs out.
        partials.close(&id);
        joblog
            .propose(JobCommand::Tick {
                now_ms: joblog.now_ms() + 120_000,
            })
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            while partials.channels() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("stream never subscribed again");
        let attempt = assign(&joblog, &id).await;
        assert_eq!(attempt, 2);
        partials.publish(&id, r#"{"i":1}"#.into());
        complete(&joblog, &id, attempt, r#"{"n":2}"#).await;
        partials.close(&id);
    });
    let a = send(
        &h.app,
        request("POST", "run.test", "/runmesh/stream/stream", "{}"),
    )
    .await;
    assert_eq!(
        sse_events(&a.body),
        vec![json!({"i": 0}), json!({"i": 1}), json!({"n": 2})]
    );
}
