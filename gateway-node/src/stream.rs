//! Server-sent events: the queue status stream (contract §3.3) and the sync `/stream` endpoint
//! (§4.2). Each stream is a task writing into a small bounded channel that the response body reads;
//! the task ends when the job ends, the job log closes, or the client goes away.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use runmesh_proto::{AppId, ModelId, RequestId, SubmitMode};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::errors::{with_request_id, ApiError};
use crate::queue::{parse_id, read_status};
use crate::routing::{BaseUrl, RequestContext};
use crate::status::{self, ResultView};
use crate::submit::{commit, prepare};
use crate::watch::{next_change, CancelOnDrop, Change};
use crate::{AppState, PartialHub};

/// Comment keep-alive interval (fal documents one every 15 s); `GatewayConfig::sse_keepalive_ms`.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Events buffered between a stream task and a slow client before the task waits.
const EVENTS_BUFFER_MAX: usize = 16;
const PING: &[u8] = b": ping\n\n";

/// One SSE event carrying `json` as its data. A line break inside the text would end the `data:`
/// line early, so each line becomes its own `data:` line (readers join them with `\n`).
pub fn data_event(json: &str) -> Bytes {
    let mut out = String::with_capacity(json.len() + 8);
    for line in json.split(['\n', '\r']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A `200 text/event-stream` response whose body is whatever the task sends into `rx`.
fn sse_response(rx: mpsc::Receiver<Bytes>, id: &RequestId) -> Response {
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Reverse proxies (nginx) must not buffer events.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_request_id(resp, id)
}

fn keepalive(state: &AppState) -> tokio::time::Interval {
    let every = Duration::from_millis(state.config.sse_keepalive_ms.max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping
}

/// `GET …/requests/{id}/status/stream`: the status object on every change, closed after COMPLETED.
pub(crate) fn status_stream(
    state: &AppState,
    base: &BaseUrl,
    app: &AppId,
    raw_id: &str,
    with_logs: bool,
) -> Response {
    let id = match parse_id(raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    // Subscribed before the first read, so a change between the two is not lost.
    let mut changes = state.joblog.subscribe();
    let Some(mut last) = read_status(state, base, app, &id, with_logs) else {
        return ApiError::RequestNotFound(id.to_string()).into_response();
    };
    let (tx, rx) = mpsc::channel(EVENTS_BUFFER_MAX);
    let (state, base, app, task_id) = (state.clone(), base.clone(), app.clone(), id.clone());
    let task = async move {
        let id = task_id;
        if tx.send(data_event(&last.body.to_string())).await.is_err() || last.completed {
            return;
        }
        let mut ping = keepalive(&state);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ping.tick() => {
                    if tx.send(Bytes::from_static(PING)).await.is_err() {
                        return;
                    }
                }
                change = next_change(&mut changes, &id) => {
                    let relevant = match change {
                        Change::This => true,
                        // While queued, the position moves when other jobs of the app move.
                        Change::Other(other) => last.body["status"] == "IN_QUEUE"
                            && state.joblog.read(|t| t.get(&other).is_some_and(|r| r.spec.app() == &app)),
                        Change::Closed => return,
                    };
                    if !relevant {
                        continue;
                    }
                    let Some(view) = read_status(&state, &base, &app, &id, with_logs) else {
                        return;
                    };
                    if view.body != last.body
                        && tx.send(data_event(&view.body.to_string())).await.is_err()
                    {
                        return;
                    }
                    if view.completed {
                        return;
                    }
                    last = view;
                }
            }
        }
    };
    tokio::spawn(task.in_current_span());
    sse_response(rx, &id)
}

/// Sync `POST /{endpoint}/stream`: partial outputs as they come, then the final output (or one
/// `{"detail", "error_type"}` event), then close. Errors before the job is accepted are JSON.
pub(crate) async fn run_stream(
    state: &AppState,
    ctx: &RequestContext,
    caller: &crate::auth::Caller,
    model: ModelId,
    req: Request,
) -> Response {
    let spec = match prepare(state, ctx, caller, model, req, SubmitMode::Stream).await {
        Ok(spec) => spec,
        Err(e) => return e.into_response(),
    };
    let id = spec.request_id.clone();
    // Both subscriptions precede the submit: the first partial may follow it immediately.
    let partials = state.partials.subscribe(&id);
    let changes = state.joblog.subscribe();
    let mut guard = CancelOnDrop::new(state.joblog.clone(), id.clone());
    if let Err(e) = commit(state, spec).await {
        guard.disarm();
        drop(partials);
        state.partials.release(&id);
        return e.into_response();
    }
    tracing::info!("accepted (stream)");
    let (tx, rx) = mpsc::channel(EVENTS_BUFFER_MAX);
    let task = stream_job(state.clone(), id.clone(), partials, changes, tx, guard);
    tokio::spawn(task.in_current_span());
    sse_response(rx, &id)
}

async fn stream_job(
    state: AppState,
    id: RequestId,
    partials: broadcast::Receiver<String>,
    mut changes: broadcast::Receiver<RequestId>,
    tx: mpsc::Sender<Bytes>,
    mut guard: CancelOnDrop,
) {
    let mut partials = partials;
    let mut ping = keepalive(&state);
    loop {
        tokio::select! {
            // Client gone: returning drops the armed guard, which cancels the job.
            _ = tx.closed() => break,
            _ = ping.tick() => {
                if tx.send(Bytes::from_static(PING)).await.is_err() {
                    break;
                }
            }
            partial = next_partial(&mut partials, &state.partials, &id) => {
                if tx.send(data_event(&partial)).await.is_err() {
                    break;
                }
            }
            change = next_change(&mut changes, &id) => {
                let view = match change {
                    Change::This => state.joblog.read(|t| t.get(&id).map(status::result_view)),
                    Change::Other(_) => continue,
                    Change::Closed => None,
                };
                let last = match view {
                    Some(ResultView::Pending) => continue,
                    Some(ResultView::Output(text)) => text,
                    Some(ResultView::Failed(f)) => f.body().to_string(),
                    None => json!({"detail": "job log unavailable", "error_type": "internal_error"})
                        .to_string(),
                };
                // Partials published before the job ended are already buffered: send them first.
                while let Some(p) = try_next_partial(&mut partials) {
                    if tx.send(data_event(&p)).await.is_err() {
                        break;
                    }
                }
                guard.disarm();
                let _ = tx.send(data_event(&last)).await;
                break;
            }
        }
    }
    drop(partials);
    state.partials.release(&id);
}

/// The next partial. The worker closes a job's channel when its attempt ends; if the job is then
/// retried, the next attempt publishes on a fresh channel, so a closed one is subscribed again.
pub(crate) async fn next_partial(
    rx: &mut broadcast::Receiver<String>,
    hub: &PartialHub,
    id: &RequestId,
) -> String {
    loop {
        match rx.recv().await {
            Ok(p) => return p,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(skipped = n, "stream client lagged; partials skipped");
            }
            Err(broadcast::error::RecvError::Closed) => *rx = hub.subscribe(id),
        }
    }
}

/// A partial already buffered, if any.
pub(crate) fn try_next_partial(rx: &mut broadcast::Receiver<String>) -> Option<String> {
    loop {
        match rx.try_recv() {
            Ok(p) => return Some(p),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_events_split_lines() {
        assert_eq!(&data_event("{\"i\":1}")[..], b"data: {\"i\":1}\n\n");
        assert_eq!(
            &data_event("{\n\"i\": 1\n}")[..],
            b"data: {\ndata: \"i\": 1\ndata: }\n\n"
        );
    }
}
