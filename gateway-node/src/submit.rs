//! Accepting a job: request options (headers, query), the input body, catalog checks, the Raft
//! commit; then the queue answer (IN_QUEUE) or, for a sync run, waiting for the outcome.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use runmesh_proto::fal::FieldError;
use runmesh_proto::{CommandResult, JobCommand, JobSpec, ModelId, Priority, SubmitMode};
use serde_json::{json, Value};

use crate::auth::{Caller, ANONYMOUS};
use crate::errors::{json_response, with_request_id, ApiError};
use crate::outbound::{FetchPolicy, SUBMIT_RESOLVE_TIMEOUT};
use crate::routing::{query_map, RequestContext};
use crate::status::{self, ResultView};
use crate::watch::{next_change, CancelOnDrop, Change};
use crate::AppState;

/// Longest `X-Fal-Runner-Hint` kept (it only steers placement).
pub const RUNNER_HINT_LEN_MAX: usize = 256;
/// Longest `fal_webhook` URL accepted.
pub const WEBHOOK_URL_LEN_MAX: usize = 2048;
/// Longest `Idempotency-Key` accepted.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// How long a repeat waits for the first submission of its key to commit before taking it over.
const IDEMPOTENCY_FIRST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a client asked for besides the input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubmitOptions {
    pub start_timeout_ms: Option<u64>,
    pub priority: Priority,
    pub runner_hint: Option<String>,
    pub no_retry: bool,
    pub webhook_url: Option<String>,
    pub max_queue_length: Option<u64>,
}

/// Reads `X-Fal-Request-Timeout`, `X-Fal-Queue-Priority`, `X-Fal-Runner-Hint`, `X-Fal-No-Retry` and the
/// `fal_webhook` / `fal_max_queue_length` query parameters; every bad value is one 422 field error.
pub fn parse_options(
    headers: &HeaderMap,
    query: Option<&HashMap<String, String>>,
) -> Result<SubmitOptions, ApiError> {
    let mut errors = Vec::new();
    let mut opts = SubmitOptions::default();
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
    };

    if let Some(v) = text("x-fal-request-timeout") {
        match v.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 => {
                // Saturating float-to-int cast: an absurd timeout means "no deadline soon".
                opts.start_timeout_ms = Some(((secs * 1000.0).ceil() as u64).max(1));
            }
            _ => errors.push(header_error(
                "x-fal-request-timeout",
                "Request timeout must be a number of seconds greater than 0",
                "value_error",
            )),
        }
    }
    if let Some(v) = text("x-fal-queue-priority") {
        match Priority::parse(&v) {
            Some(p) => opts.priority = p,
            None => errors.push(header_error(
                "x-fal-queue-priority",
                "Queue priority must be 'normal' or 'low'",
                "enum",
            )),
        }
    }
    if let Some(v) = text("x-fal-runner-hint") {
        let hint: String = v.trim().chars().take(RUNNER_HINT_LEN_MAX).collect();
        opts.runner_hint = (!hint.is_empty()).then_some(hint);
    }
    if let Some(v) = text("x-fal-no-retry") {
        opts.no_retry = matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes");
    }

    match query {
        None => errors.push(FieldError {
            loc: vec!["query".into()],
            msg: "Query string is not valid URL encoding".into(),
            kind: "value_error".into(),
        }),
        Some(q) => {
            if let Some(url) = q
                .get("fal_webhook")
                .map(|u| u.trim())
                .filter(|u| !u.is_empty())
            {
                let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
                if scheme_ok && url.len() <= WEBHOOK_URL_LEN_MAX {
                    opts.webhook_url = Some(url.to_string());
                } else {
                    errors.push(query_error(
                        "fal_webhook",
                        "Webhook must be an http(s) URL of at most 2048 characters",
                        "url_parsing",
                    ));
                }
            }
            if let Some(n) = q.get("fal_max_queue_length") {
                match n.trim().parse::<u64>() {
                    Ok(n) => opts.max_queue_length = Some(n),
                    Err(_) => errors.push(query_error(
                        "fal_max_queue_length",
                        "Max queue length must be a non-negative integer",
                        "int_parsing",
                    )),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(opts)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A webhook the leader could not deliver (an internal address, unless the operator allows it) is
/// refused now, as a 422 on `fal_webhook` that says nothing about the target.
async fn check_webhook(policy: &FetchPolicy, url: &str) -> Result<(), ApiError> {
    policy
        .check_resolved(url, SUBMIT_RESOLVE_TIMEOUT)
        .await
        .map_err(|e| {
            ApiError::Validation(vec![query_error(
                "fal_webhook",
                &format!("Webhook URL {e}"),
                "url_not_allowed",
            )])
        })
}

fn header_error(name: &str, msg: &str, kind: &str) -> FieldError {
    FieldError {
        loc: vec!["header".into(), name.into()],
        msg: msg.into(),
        kind: kind.into(),
    }
}

fn query_error(name: &str, msg: &str, kind: &str) -> FieldError {
    FieldError {
        loc: vec!["query".into(), name.into()],
        msg: msg.into(),
        kind: kind.into(),
    }
}

/// Parses the body as the input object: an empty body is `{}` (JS sends none for empty input).
/// Returns the JSON text to store (the client's own bytes) and the parsed value to validate.
pub fn parse_input(body: &[u8]) -> Result<(String, Value), ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Ok(("{}".to_string(), Value::Object(Default::default())));
    }
    let value: Value = serde_json::from_slice(trimmed)
        .map_err(|e| ApiError::field(&["body"], format!("Invalid JSON: {e}"), "json_invalid"))?;
    if !value.is_object() {
        return Err(ApiError::field(
            &["body"],
            "Input should be a valid dictionary",
            "dict_type",
        ));
    }
    let text = match std::str::from_utf8(trimmed) {
        Ok(s) => s.to_string(),
        Err(_) => value.to_string(),
    };
    Ok((text, value))
}

/// Reads the body up to `limit_bytes`; over it is a 413 (checked on `Content-Length` first, so a
/// large upload is refused before it is read).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit_bytes: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(ApiError::PayloadTooLarge { limit_bytes });
    }
    axum::body::to_bytes(body, limit_bytes).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::PayloadTooLarge { limit_bytes }
        } else {
            ApiError::BadRequest(format!("Could not read the request body: {e}"))
        }
    })
}

fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    // Bounded: error chains are short, but never trust a cycle.
    for _ in 0..16 {
        let Some(e) = cur else { return false };
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The input of a `GET` run: the query string's parameters (JS puts the input there), `fal_*`
/// parameters left out; values stay strings, as a query string has no types.
pub fn query_input(query: Option<&HashMap<String, String>>) -> (String, Value) {
    let map: serde_json::Map<String, Value> = query
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("fal_"))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let value = Value::Object(map);
    (value.to_string(), value)
}

/// Everything up to the commit: app known, options and input valid, queue not over the client's
/// limit. The job gets the request's fresh id.
pub(crate) async fn prepare(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    model: ModelId,
    req: Request,
    mode: SubmitMode,
) -> Result<JobSpec, ApiError> {
    if !state.catalog.contains(&model.app) {
        return Err(ApiError::ModelNotFound(model.to_string()));
    }
    let (parts, body) = req.into_parts();
    let query = query_map(&parts.uri);
    let opts = parse_options(&parts.headers, query.as_ref())?;
    if let Some(url) = &opts.webhook_url {
        check_webhook(&state.config.fetch_policy, url).await?;
    }
    let bytes = read_body(&parts.headers, body, state.config.body_limit_bytes).await?;
    let (input_json, input) =
        if parts.method == axum::http::Method::GET && bytes.trim_ascii().is_empty() {
            query_input(query.as_ref())
        } else {
            parse_input(&bytes)?
        };
    let mut spec = build_spec(
        state,
        ctx.fresh_id.clone(),
        caller,
        model,
        input_json,
        &input,
        opts,
        mode,
    )?;
    spec.input_json = offload_input(state, spec.input_json).await?;
    Ok(spec)
}

/// Inputs larger than this go into the blob store; the Raft entry keeps a reference.
pub const INLINE_INPUT_MAX_BYTES: usize = 64 * 1024;
/// The key of an input kept as a blob: `{"$runmesh_input": "/files/<hash>/input.json"}`.
pub const INPUT_BLOB_KEY: &str = "$runmesh_input";

/// A large input becomes a blob (validated already), so the Raft log carries 100 bytes, not megabytes.
async fn offload_input(state: &AppState, input_json: String) -> Result<String, ApiError> {
    let Some(files) = state.config.files.as_ref().map(|h| h.0.clone()) else {
        return Ok(input_json);
    };
    if input_json.len() <= INLINE_INPUT_MAX_BYTES {
        return Ok(input_json);
    }
    let body = futures::stream::once(async move { Ok(Bytes::from(input_json)) });
    let file = files
        .upload(
            futures::StreamExt::boxed(body),
            "application/json".into(),
            "input.json".into(),
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("storing the input: {e}")))?;
    Ok(json!({ INPUT_BLOB_KEY: crate::files::file_path(&file) }).to_string())
}

/// A job spec from a parsed input and options: input validated against the app, queue limit
/// checked. Shared by the HTTP surfaces and the realtime WebSocket.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_spec(
    state: &AppState,
    request_id: runmesh_proto::RequestId,
    caller: &Caller,
    model: ModelId,
    input_json: String,
    input: &Value,
    opts: SubmitOptions,
    mode: SubmitMode,
) -> Result<JobSpec, ApiError> {
    if !state.catalog.contains(&model.app) {
        return Err(ApiError::ModelNotFound(model.to_string()));
    }
    state
        .catalog
        .validate(&model, input)
        .map_err(ApiError::Validation)?;
    if let Some(limit) = opts.max_queue_length {
        let queued = state.joblog.read(|t| t.queue_len(&model.app));
        if queued as u64 >= limit {
            return Err(ApiError::QueueFull { queued, limit });
        }
    }
    Ok(JobSpec {
        request_id,
        model,
        input_json,
        webhook_url: opts.webhook_url,
        priority: opts.priority,
        start_timeout_ms: opts.start_timeout_ms,
        runner_hint: opts.runner_hint,
        no_retry: opts.no_retry,
        mode,
        submitted_by: caller.owner(),
        accepted_by: state.joblog.node_id(),
        accepted_region: state.config.region.clone(),
        submitted_at_ms: state.joblog.now_ms(),
    })
}

/// Commits the submit through Raft; returns the queue position once it is durable.
pub(crate) async fn commit(state: &AppState, spec: JobSpec) -> Result<u64, ApiError> {
    let id = spec.request_id.clone();
    match state.joblog.propose(JobCommand::Submit { spec }).await {
        Ok(CommandResult::Submitted { queue_position }) => Ok(queue_position),
        // Same id already accepted (cannot happen with fresh ids, but it is accepted all the same).
        Ok(CommandResult::Duplicate) => {
            Ok(state.joblog.read(|t| t.queue_position(&id)).unwrap_or(0))
        }
        Ok(other) => Err(ApiError::Internal(format!(
            "unexpected submit result {other:?}"
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "submit not committed");
            Err(ApiError::Unavailable(format!(
                "Request could not be accepted: {e}"
            )))
        }
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str().map(str::trim) {
        Ok(k) if !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_LEN_MAX => Ok(Some(k.to_string())),
        _ => Err(ApiError::field(
            &["header", "idempotency-key"],
            "Idempotency key must be 1 to 255 visible ASCII characters",
            "value_error",
        )),
    }
}

/// Claims `key` for `spec`'s request. `Ok(None)`: go on and commit it; `Ok(Some(resp))`: a repeat,
/// answered with the first submission.
async fn claim_idempotency(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    key: String,
    spec: &JobSpec,
) -> Result<Option<Response>, ApiError> {
    use runmesh_proto::idempotency::{IdempotencyCommand, IdempotencyResult};
    use runmesh_proto::{Command, CommandOutput};
    let owner = caller.owner().unwrap_or_else(|| ANONYMOUS.to_string());
    let mut replace = None;
    // Bounded: a claim either wins, finds a live first submission, or takes over a dead one once.
    for _ in 0..3 {
        let now_ms = state.joblog.now_ms();
        let cmd = Command::Idempotency(IdempotencyCommand::Claim {
            owner: owner.clone(),
            key: key.clone(),
            request_id: spec.request_id.clone(),
            now_ms,
            expires_at_ms: now_ms.saturating_add(state.config.idempotency_window_ms),
            replace: replace.take(),
        });
        let first = match state.joblog.propose_command(cmd).await {
            Ok(CommandOutput::Idempotency(IdempotencyResult::Claimed)) => return Ok(None),
            Ok(CommandOutput::Idempotency(IdempotencyResult::Existing { request_id })) => {
                request_id
            }
            Ok(other) => {
                return Err(ApiError::Internal(format!(
                    "unexpected idempotency result {other:?}"
                )))
            }
            Err(e) => {
                return Err(ApiError::Unavailable(format!(
                    "Request could not be accepted: {e}"
                )))
            }
        };
        // The first submission may still be committing: give it a moment to appear.
        let deadline = tokio::time::Instant::now() + IDEMPOTENCY_FIRST_WAIT;
        loop {
            if let Some(resp) = repeat_response(state, ctx, &first) {
                tracing::info!(first = %first, "idempotent repeat");
                return Ok(Some(resp));
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // It never committed (its node died in between): take the key over.
        replace = Some(first);
    }
    Err(ApiError::Unavailable(
        "Idempotency key is contended; retry".into(),
    ))
}

/// The answer to a repeat: the first submission's current status object, 200.
fn repeat_response(
    state: &AppState,
    ctx: &RequestContext,
    first: &runmesh_proto::RequestId,
) -> Option<Response> {
    let mut body = state.joblog.read(|t| {
        t.get(first).map(|rec| {
            let urls = ctx.base.job_urls(rec.spec.app(), first);
            status::status_view(rec, t.queue_position(first), &urls, false).body
        })
    })?;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("gateway_request_id".into(), first.as_str().into());
    }
    Some(with_request_id(json_response(StatusCode::OK, &body), first))
}

/// Queue `POST /{endpoint}`: 200 IN_QUEUE once the job is committed.
pub(crate) async fn queue_submit(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    model: ModelId,
    req: Request,
) -> Response {
    let idem_key = match idempotency_key(req.headers()) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let spec = match prepare(state, ctx, caller, model, req, SubmitMode::Queue).await {
        Ok(spec) => spec,
        Err(e) => return e.into_response(),
    };
    if let Some(key) = idem_key {
        match claim_idempotency(state, ctx, caller, key, &spec).await {
            Ok(None) => {}
            Ok(Some(repeat)) => return repeat,
            Err(e) => return e.into_response(),
        }
    }
    let id = spec.request_id.clone();
    let urls = ctx.base.job_urls(spec.app(), &id);
    let queue_position = match commit(state, spec).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    tracing::info!(queue_position, "accepted");
    let body = json!({
        "status": "IN_QUEUE",
        "request_id": id.as_str(),
        "response_url": urls.response_url,
        "status_url": urls.status_url,
        "cancel_url": urls.cancel_url,
        "queue_position": queue_position,
        "gateway_request_id": id.as_str(),
    });
    with_request_id(json_response(StatusCode::OK, &body), &id)
}

/// Sync `POST /{endpoint}`: commit, wait for the outcome, answer like the result endpoint. If the
/// client hangs up first, the dropped future cancels the job.
pub(crate) async fn sync_run(
    state: &AppState,
    ctx: &RequestContext,
    caller: &Caller,
    model: ModelId,
    req: Request,
) -> Response {
    let spec = match prepare(state, ctx, caller, model, req, SubmitMode::Sync).await {
        Ok(spec) => spec,
        Err(e) => return e.into_response(),
    };
    let id = spec.request_id.clone();
    // Subscribed before the submit, so no change of this job can slip by.
    let mut changes = state.joblog.subscribe();
    let mut guard = CancelOnDrop::new(state.joblog.clone(), id.clone());
    if let Err(e) = commit(state, spec).await {
        guard.disarm();
        return e.into_response();
    }
    tracing::info!("accepted (sync)");
    let answer = loop {
        let view = state.joblog.read(|t| t.get(&id).map(status::result_view));
        match view {
            Some(ResultView::Pending) => {}
            Some(done) => break done.into_response(&id),
            None => break ApiError::Internal("accepted request vanished".into()).into_response(),
        }
        loop {
            match next_change(&mut changes, &id).await {
                Change::This => break,
                Change::Other(_) => continue,
                Change::Closed => {
                    guard.disarm();
                    return ApiError::Unavailable("job log closed".into()).into_response();
                }
            }
        }
    };
    guard.disarm();
    answer
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn locs(e: ApiError) -> Vec<Vec<String>> {
        match e {
            ApiError::Validation(fields) => fields.into_iter().map(|f| f.loc).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn options_from_python_and_js_headers() {
        let h = headers(&[
            ("x-fal-request-timeout", "30.0"),
            ("x-fal-queue-priority", "low"),
            ("x-fal-runner-hint", "lora:a"),
            ("x-fal-no-retry", "Yes"),
        ]);
        let q = query(&[
            ("fal_webhook", "https://example.com/hook?x=1"),
            ("fal_max_queue_length", "5"),
        ]);
        let o = parse_options(&h, Some(&q)).unwrap();
        assert_eq!(
            o,
            SubmitOptions {
                start_timeout_ms: Some(30_000),
                priority: Priority::Low,
                runner_hint: Some("lora:a".into()),
                no_retry: true,
                webhook_url: Some("https://example.com/hook?x=1".into()),
                max_queue_length: Some(5),
            }
        );
        let js = parse_options(
            &headers(&[
                ("x-fal-request-timeout", "30"),
                ("x-fal-queue-priority", "normal"),
            ]),
            Some(&query(&[])),
        )
        .unwrap();
        assert_eq!(js.start_timeout_ms, Some(30_000));
        assert_eq!(js.priority, Priority::Normal);
        assert!(!js.no_retry);
        assert_eq!(
            parse_options(
                &headers(&[("x-fal-request-timeout", "0.0001")]),
                Some(&query(&[]))
            )
            .unwrap()
            .start_timeout_ms,
            Some(1)
        );
    }

    #[test]
    fn bad_options_are_422_field_errors() {
        for bad in ["0", "-1", "abc", "NaN", "inf"] {
            let mut h = HeaderMap::new();
            h.insert("x-fal-request-timeout", bad.parse().unwrap());
            let e = parse_options(&h, Some(&query(&[]))).unwrap_err();
            assert_eq!(
                locs(e),
                vec![vec!["header".to_string(), "x-fal-request-timeout".into()]],
                "{bad}"
            );
        }
        let e = parse_options(
            &headers(&[("x-fal-queue-priority", "urgent")]),
            Some(&query(&[
                ("fal_max_queue_length", "-3"),
                ("fal_webhook", "ftp://x"),
            ])),
        )
        .unwrap_err();
        assert_eq!(locs(e).len(), 3);
        assert!(parse_options(&HeaderMap::new(), None).is_err());
    }

    #[test]
    fn input_must_be_a_json_object() {
        assert_eq!(parse_input(b"").unwrap().0, "{}");
        assert_eq!(parse_input(b"  \n").unwrap().1, json!({}));
        let (text, value) = parse_input(b" {\"a\": [1, 2]} ").unwrap();
        assert_eq!(text, "{\"a\": [1, 2]}");
        assert_eq!(value, json!({"a": [1, 2]}));
        for bad in [&b"{"[..], b"[1]", b"3", b"\"s\"", b"null", b"\xff\xfe"] {
            let e = parse_input(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(locs(e), vec![vec!["body".to_string()]]);
        }
    }

    #[tokio::test]
    async fn body_limit_is_413() {
        let big = Body::from(vec![b' '; 11]);
        let e = read_body(&HeaderMap::new(), big, 10).await.unwrap_err();
        assert!(
            matches!(e, ApiError::PayloadTooLarge { limit_bytes: 10 }),
            "{e:?}"
        );
        let declared = headers(&[("content-length", "1000")]);
        let e = read_body(&declared, Body::empty(), 10).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let ok = read_body(&HeaderMap::new(), Body::from("{}"), 10)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"{}");
    }
}
