//! fal JSON bodies built from a [`JobRecord`]: the queue status object (contract §3.2) and the
//! result/sync answer (§3.4, §7). Pure: the handlers read the table and call these.

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use runmesh_proto::{ErrorType, JobState, LogLine, Outcome, RequestId};
use runmesh_raft::JobRecord;
use serde_json::{json, Map, Value};

use crate::errors::{
    json_response, json_text_response, with_request_id, ERROR_TYPE_HEADER, TIMEOUT_TYPE_HEADER,
};

/// fal's model-error header: whether retrying the same request may help.
pub const RETRYABLE_HEADER: &str = "x-fal-retryable";
use crate::routing::JobUrls;

/// Message fal uses for a cancelled request.
pub const CANCELLED_MESSAGE: &str = "Request was cancelled";

/// A status object and the HTTP status it goes out with (202 until completed, then 200).
#[derive(Clone, Debug, PartialEq)]
pub struct StatusView {
    pub http_status: StatusCode,
    pub body: Value,
    pub completed: bool,
}

/// The status object of a job. `queue_position` is the table's answer for queued jobs.
pub fn status_view(
    rec: &JobRecord,
    queue_position: Option<u64>,
    urls: &JobUrls,
    with_logs: bool,
) -> StatusView {
    let completed = rec.state.is_terminal();
    let mut body = Map::new();
    body.insert("status".into(), rec.state.fal_status().into());
    if rec.state == JobState::Queued {
        // PY reads `queue_position` unconditionally for IN_QUEUE.
        body.insert("queue_position".into(), queue_position.unwrap_or(0).into());
    }
    body.insert("request_id".into(), rec.spec.request_id.as_str().into());
    body.insert("response_url".into(), urls.response_url.as_str().into());
    body.insert("status_url".into(), urls.status_url.as_str().into());
    body.insert("cancel_url".into(), urls.cancel_url.as_str().into());
    let logs = if with_logs {
        Value::Array(rec.logs.iter().map(log_entry).collect())
    } else {
        Value::Null
    };
    body.insert("logs".into(), logs);
    let mut metrics = Map::new();
    if completed {
        if let Some(ms) = rec.inference_time_ms {
            metrics.insert("inference_time".into(), json!(ms as f64 / 1000.0));
        }
    }
    body.insert("metrics".into(), Value::Object(metrics));
    if let Some(failure) = failure_of(rec) {
        body.insert("error".into(), failure.message.into());
        body.insert("error_type".into(), failure.error_type.into());
    }
    StatusView {
        http_status: if completed {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        },
        body: Value::Object(body),
        completed,
    }
}

/// One fal log entry: all of `message, level, source, timestamp, labels` (contract §3.2).
pub fn log_entry(line: &LogLine) -> Value {
    json!({
        "message": line.message,
        "level": line.level.as_fal_str(),
        "source": "USER",
        "timestamp": runmesh_proto::time::format_timestamp_ms(line.timestamp_ms),
        "labels": {},
    })
}

/// Why a finished job has no output, rendered the fal way.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub http_status: StatusCode,
    pub error_type: &'static str,
    /// Plain message (the status object's `error`).
    pub message: String,
    /// The result body's `detail`: the app's own detail JSON, or the message.
    pub detail: Value,
    /// A start timeout the client set (`X-Fal-Request-Timeout`): clients must not retry it.
    pub user_timeout: bool,
}

impl Failure {
    /// `{"detail", "error_type"}` with its status and `X-Fal-Error-Type` (and the timeout type on a
    /// user start timeout).
    pub fn into_response(self, id: &RequestId) -> Response {
        let mut resp = json_response(self.http_status, &self.body());
        let headers = resp.headers_mut();
        headers.insert(ERROR_TYPE_HEADER, HeaderValue::from_static(self.error_type));
        headers.insert(
            RETRYABLE_HEADER,
            HeaderValue::from_static(if self.retryable() { "true" } else { "false" }),
        );
        if self.user_timeout {
            headers.insert(TIMEOUT_TYPE_HEADER, HeaderValue::from_static("user"));
        }
        with_request_id(resp, id)
    }

    pub fn body(&self) -> Value {
        json!({ "detail": self.detail, "error_type": self.error_type })
    }

    /// fal's `X-Fal-Retryable`: would the same request likely succeed if sent again? Yes for
    /// infrastructure failures (a lost runner, an internal error, a queue timeout the client did
    /// not set); no for what the app itself decided, a cancel, or the client's own start timeout.
    pub fn retryable(&self) -> bool {
        match self.error_type {
            "runner_disconnected" | "internal_error" => true,
            "request_timeout" => !self.user_timeout,
            _ => false,
        }
    }
}

/// The failure of a finished job, or `None` when it is still running or produced an output.
pub fn failure_of(rec: &JobRecord) -> Option<Failure> {
    match &rec.state {
        JobState::Completed {
            outcome: Outcome::Error(err),
            ..
        } => {
            let detail = err
                .detail_json
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .unwrap_or_else(|| Value::String(err.message.clone()));
            let http_status = StatusCode::from_u16(err.http_status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(Failure {
                http_status,
                error_type: err.error_type.as_fal_str(),
                message: err.message.clone(),
                detail,
                user_timeout: err.error_type == ErrorType::RequestTimeout
                    && rec.spec.start_timeout_ms.is_some(),
            })
        }
        JobState::Cancelled { .. } => {
            let kind = ErrorType::ClientCancelled;
            Some(Failure {
                http_status: StatusCode::from_u16(kind.http_status())
                    .unwrap_or(StatusCode::BAD_REQUEST),
                error_type: kind.as_fal_str(),
                message: CANCELLED_MESSAGE.into(),
                detail: Value::String(CANCELLED_MESSAGE.into()),
                user_timeout: false,
            })
        }
        _ => None,
    }
}

/// What the result endpoint (and a sync run) answers for a job.
#[derive(Clone, Debug, PartialEq)]
pub enum ResultView {
    /// The output JSON text, sent as is.
    Output(String),
    Failed(Failure),
    Pending,
}

pub fn result_view(rec: &JobRecord) -> ResultView {
    match &rec.state {
        JobState::Completed {
            outcome: Outcome::Output { output_json },
            ..
        } => ResultView::Output(output_json.clone()),
        _ => failure_of(rec).map_or(ResultView::Pending, ResultView::Failed),
    }
}

impl ResultView {
    pub fn into_response(self, id: &RequestId) -> Response {
        match self {
            Self::Output(text) => with_request_id(json_text_response(StatusCode::OK, text), id),
            Self::Failed(f) => f.into_response(id),
            Self::Pending => with_request_id(
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({ "detail": "Request is still in progress" }),
                ),
                id,
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use runmesh_proto::{JobError, JobSpec, LogLevel, ModelId, Priority, SubmitMode};

    pub(crate) fn record(state: JobState) -> JobRecord {
        JobRecord {
            spec: JobSpec {
                request_id: "80e732af-660e-45cd-bd63-580e4f2a94cc".parse().unwrap(),
                model: ModelId::parse("runmesh/echo/sub").unwrap(),
                input_json: "{}".into(),
                webhook_url: None,
                priority: Priority::Normal,
                start_timeout_ms: None,
                runner_hint: None,
                no_retry: false,
                mode: SubmitMode::Queue,
                submitted_by: None,
                accepted_by: 1,
                accepted_region: None,
                submitted_at_ms: 1_000,
            },
            state,
            seq: 0,
            logs: vec![LogLine {
                timestamp_ms: 1_734_709_037_120,
                level: LogLevel::Info,
                message: "hello".into(),
            }],
            logs_dropped: 0,
            cancel_requested: false,
            attempts: 1,
            started_at_ms: Some(1_100),
            inference_time_ms: Some(1_500),
            last_worker: None,
            files: Vec::new(),
            io_deleted_at_ms: None,
            deleted_hashes: Vec::new(),
        }
    }

    fn urls() -> JobUrls {
        JobUrls {
            response_url: "http://h/runmesh/echo/requests/x".into(),
            status_url: "http://h/runmesh/echo/requests/x/status".into(),
            cancel_url: "http://h/runmesh/echo/requests/x/cancel".into(),
        }
    }

    fn completed(outcome: Outcome) -> JobState {
        JobState::Completed {
            outcome,
            completed_at_ms: 3_000,
        }
    }

    #[test]
    fn queued_status_has_position_and_null_logs() {
        let rec = record(JobState::Queued);
        let v = status_view(&rec, Some(3), &urls(), false);
        assert_eq!(v.http_status, StatusCode::ACCEPTED);
        assert!(!v.completed);
        assert_eq!(
            v.body,
            json!({
                "status": "IN_QUEUE", "queue_position": 3,
                "request_id": "80e732af-660e-45cd-bd63-580e4f2a94cc",
                "response_url": "http://h/runmesh/echo/requests/x",
                "status_url": "http://h/runmesh/echo/requests/x/status",
                "cancel_url": "http://h/runmesh/echo/requests/x/cancel",
                "logs": null, "metrics": {},
            })
        );
    }

    #[test]
    fn running_status_with_logs() {
        let rec = record(JobState::Running {
            worker: 1,
            attempt: 1,
            started_at_ms: 1_100,
            lease_until_ms: 9_000,
        });
        let v = status_view(&rec, None, &urls(), true);
        assert_eq!(v.http_status, StatusCode::ACCEPTED);
        assert_eq!(v.body["status"], "IN_PROGRESS");
        assert!(v.body.get("queue_position").is_none());
        assert_eq!(
            v.body["logs"],
            json!([{
                "message": "hello", "level": "INFO", "source": "USER",
                "timestamp": "2024-12-20T15:37:17.120000", "labels": {},
            }])
        );
        assert_eq!(v.body["metrics"], json!({}));
    }

    #[test]
    fn completed_status_has_inference_time_in_seconds() {
        let rec = record(completed(Outcome::Output {
            output_json: "{\"a\":1}".into(),
        }));
        let v = status_view(&rec, None, &urls(), false);
        assert_eq!(v.http_status, StatusCode::OK);
        assert!(v.completed);
        assert_eq!(v.body["status"], "COMPLETED");
        assert_eq!(v.body["metrics"], json!({"inference_time": 1.5}));
        assert!(v.body.get("error").is_none());
        assert_eq!(result_view(&rec), ResultView::Output("{\"a\":1}".into()));
    }

    #[test]
    fn failed_job_status_and_result() {
        let mut err = JobError::new(ErrorType::RunnerError, "boom");
        err.http_status = 422;
        err.detail_json = Some(r#"[{"loc":["body","x"],"msg":"bad","type":"t"}]"#.into());
        let rec = record(completed(Outcome::Error(err)));
        let v = status_view(&rec, None, &urls(), false);
        assert_eq!(v.body["status"], "COMPLETED");
        assert_eq!(v.body["error"], "boom");
        assert_eq!(v.body["error_type"], "runner_server_error");
        let ResultView::Failed(f) = result_view(&rec) else {
            panic!("expected a failure");
        };
        assert_eq!(f.http_status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            f.body(),
            json!({"detail": [{"loc":["body","x"],"msg":"bad","type":"t"}], "error_type": "runner_server_error"})
        );
        let resp = f.into_response(&rec.spec.request_id);
        assert_eq!(resp.headers()[ERROR_TYPE_HEADER], "runner_server_error");
        assert!(resp.headers().get(TIMEOUT_TYPE_HEADER).is_none());
    }

    #[test]
    fn start_timeout_is_a_user_timeout() {
        let mut rec = record(completed(Outcome::Error(JobError::new(
            ErrorType::RequestTimeout,
            "Request timed out",
        ))));
        rec.spec.start_timeout_ms = Some(1_000);
        let ResultView::Failed(f) = result_view(&rec) else {
            panic!("expected a failure");
        };
        assert_eq!(f.http_status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            f.body(),
            json!({"detail": "Request timed out", "error_type": "request_timeout"})
        );
        let resp = f.into_response(&rec.spec.request_id);
        assert_eq!(resp.headers()[TIMEOUT_TYPE_HEADER], "user");
        assert_eq!(resp.headers()[ERROR_TYPE_HEADER], "request_timeout");
    }

    #[test]
    fn cancelled_is_completed_with_client_cancelled() {
        let rec = record(JobState::Cancelled {
            cancelled_at_ms: 2_000,
        });
        let v = status_view(&rec, None, &urls(), false);
        assert_eq!(v.body["status"], "COMPLETED");
        assert_eq!(v.body["error"], CANCELLED_MESSAGE);
        assert_eq!(v.body["error_type"], "client_cancelled");
        let ResultView::Failed(f) = result_view(&rec) else {
            panic!("expected a failure");
        };
        assert_eq!(f.http_status.as_u16(), 499);
    }

    #[test]
    fn odd_app_status_codes_become_500() {
        let mut err = JobError::new(ErrorType::RunnerError, "x");
        err.http_status = 200;
        let rec = record(completed(Outcome::Error(err)));
        assert_eq!(
            failure_of(&rec).unwrap().http_status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(result_view(&record(JobState::Queued)), ResultView::Pending);
    }
}
