//! fal's realtime WebSocket, `GET /{endpoint}/realtime` (contract §5.1): msgpack binary frames in
//! (one input object each) and out (the outputs), JSON text frames for control (`x-fal-message`
//! timings, `x-fal-error`). Each input runs as a job through the replicated log like any other;
//! partial outputs of streaming apps (`runmesh/stream`) go out as they come, then the final output.
//!
//! Three tasks per socket: the reader (this handler) fills a bounded input buffer (`max_buffering`:
//! the oldest input is dropped when it is full, as fal does), one runner works through it in
//! order, one writer owns the socket's sending half. Closing the socket cancels the running job.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use runmesh_proto::{ModelId, RequestId, SubmitMode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tracing::Instrument as _;

use crate::auth::Caller;
use crate::errors::{json_response, ApiError};
use crate::routing::query_map;
use crate::status::{self, ResultView};
use crate::stream::{next_partial, try_next_partial};
use crate::submit::{build_spec, commit, SubmitOptions};
use crate::watch::{next_change, CancelOnDrop, Change};
use crate::AppState;

/// Inputs buffered when the client sets no `max_buffering`.
pub const BUFFERING_DEFAULT: usize = 16;
/// fal's bounds for `max_buffering`.
pub const BUFFERING_MAX: usize = 60;
/// Frames queued for the writer before the runner waits.
const OUT_FRAMES_MAX: usize = 64;
/// How long the writer gets to flush after the session ends.
const WRITER_DRAIN: Duration = Duration::from_secs(2);

fn control(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

/// fal's error frame.
pub fn error_frame(error: &str, reason: &str) -> Message {
    control(json!({ "type": "x-fal-error", "error": error, "reason": reason }))
}

fn packed(v: &Value) -> Option<Message> {
    rmp_serde::to_vec_named(v)
        .ok()
        .map(|b| Message::Binary(b.into()))
}

/// `GET /{endpoint}/realtime`: upgrades to the realtime session (auth already checked).
pub(crate) async fn upgrade(
    state: &AppState,
    caller: &Caller,
    model: ModelId,
    req: Request,
) -> Response {
    if !state.catalog.contains(&model.app) {
        return ApiError::ModelNotFound(model.to_string()).into_response();
    }
    let buffering = query_map(req.uri())
        .and_then(|q| {
            q.get("max_buffering")
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .map_or(BUFFERING_DEFAULT, |n| n.clamp(1, BUFFERING_MAX));
    let (mut parts, _body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, state).await {
        Ok(ws) => ws,
        Err(rejection) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "detail": format!("This endpoint speaks WebSocket: {}", rejection.body_text()),
                    "error_type": "bad_request",
                }),
            )
        }
    };
    let (state, caller) = (state.clone(), caller.clone());
    let limit = state.config.body_limit_bytes;
    let span = tracing::info_span!("realtime", app = %model.app);
    ws.max_message_size(limit)
        .on_upgrade(move |socket| session(socket, state, caller, model, buffering).instrument(span))
}

struct Inputs {
    queue: Mutex<VecDeque<Value>>,
    ready: Notify,
    busy: AtomicBool,
}

async fn session(
    socket: WebSocket,
    state: AppState,
    caller: Caller,
    model: ModelId,
    buffering: usize,
) {
    tracing::info!("realtime session opened");
    let (mut sink, mut incoming) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Message>(OUT_FRAMES_MAX);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let inputs = Arc::new(Inputs {
        queue: Mutex::new(VecDeque::with_capacity(buffering)),
        ready: Notify::new(),
        busy: AtomicBool::new(false),
    });
    let runner = tokio::spawn(
        run_inputs(state.clone(), caller, model, inputs.clone(), out.clone()).in_current_span(),
    );
    let idle = Duration::from_millis(state.config.realtime_idle_timeout_ms.max(1));
    loop {
        let msg = match tokio::time::timeout(idle, incoming.next()).await {
            Err(_) => {
                let waiting = inputs.queue.lock().map(|q| !q.is_empty()).unwrap_or(false);
                if inputs.busy.load(Ordering::Acquire) || waiting {
                    continue;
                }
                let _ = out
                    .send(error_frame("TIMEOUT", "no inputs, reconnect when needed!"))
                    .await;
                let _ = out
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "idle".into(),
                    })))
                    .await;
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(m))) => m,
        };
        let input = match msg {
            Message::Binary(b) => decode_msgpack(&b),
            Message::Text(t) => {
                serde_json::from_str::<Value>(t.as_str()).map_err(|e| e.to_string())
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        match input {
            Ok(v) if v.is_object() => {
                if let Ok(mut q) = inputs.queue.lock() {
                    if q.len() >= buffering {
                        q.pop_front();
                        tracing::debug!("realtime buffer full; oldest input dropped");
                    }
                    q.push_back(v);
                }
                inputs.ready.notify_one();
            }
            Ok(_) => {
                let _ = out
                    .send(error_frame(
                        "INVALID_INPUT",
                        "Input should be a map (msgpack) or a JSON object",
                    ))
                    .await;
            }
            Err(e) => {
                let _ = out
                    .send(error_frame(
                        "INVALID_INPUT",
                        &format!("Could not decode the input: {e}"),
                    ))
                    .await;
            }
        }
    }
    // Dropping the runner's future drops its guard, which cancels a job still running.
    runner.abort();
    drop(out);
    let _ = tokio::time::timeout(WRITER_DRAIN, writer).await;
    tracing::info!("realtime session closed");
}

async fn run_inputs(
    state: AppState,
    caller: Caller,
    model: ModelId,
    inputs: Arc<Inputs>,
    out: mpsc::Sender<Message>,
) {
    loop {
        let next = inputs.queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(input) = next else {
            inputs.ready.notified().await;
            continue;
        };
        inputs.busy.store(true, Ordering::Release);
        let ok = run_one(&state, &caller, &model, input, &out).await;
        inputs.busy.store(false, Ordering::Release);
        if !ok {
            return;
        }
    }
}

/// Runs one input as a job and sends what it produced; false when the socket is gone.
async fn run_one(
    state: &AppState,
    caller: &Caller,
    model: &ModelId,
    input: Value,
    out: &mpsc::Sender<Message>,
) -> bool {
    let id = RequestId::new_random();
    let spec = match build_spec(
        state,
        id.clone(),
        caller,
        model.clone(),
        input.to_string(),
        &input,
        SubmitOptions::default(),
        SubmitMode::Stream,
    ) {
        Ok(spec) => spec,
        Err(e) => {
            let reason = e.body()["detail"].to_string();
            return out
                .send(error_frame("INVALID_INPUT", &reason))
                .await
                .is_ok();
        }
    };
    let mut partials = state.partials.subscribe(&id);
    let mut changes = state.joblog.subscribe();
    let mut guard = CancelOnDrop::new(state.joblog.clone(), id.clone());
    let started = Instant::now();
    if let Err(e) = commit(state, spec).await {
        guard.disarm();
        drop(partials);
        state.partials.release(&id);
        return out
            .send(error_frame("INTERNAL_ERROR", &e.to_string()))
            .await
            .is_ok();
    }
    let alive = loop {
        tokio::select! {
            _ = out.closed() => break false,
            p = next_partial(&mut partials, &state.partials, &id) => {
                let Ok(v) = serde_json::from_str::<Value>(&p) else { continue };
                if let Some(m) = packed(&v) {
                    if out.send(m).await.is_err() {
                        break false;
                    }
                }
            }
            change = next_change(&mut changes, &id) => {
                let view = match change {
                    Change::This => state.joblog.read(|t| t.get(&id).map(status::result_view)),
                    Change::Other(_) => continue,
                    Change::Closed => None,
                };
                let frame = match view {
                    Some(ResultView::Pending) => continue,
                    Some(ResultView::Output(text)) => {
                        while let Some(p) = try_next_partial(&mut partials) {
                            if let Some(m) = serde_json::from_str::<Value>(&p).ok().as_ref().and_then(packed) {
                                let _ = out.send(m).await;
                            }
                        }
                        match serde_json::from_str::<Value>(&text).ok().as_ref().and_then(packed) {
                            Some(m) => m,
                            None => error_frame("INTERNAL_ERROR", "output is not valid JSON"),
                        }
                    }
                    Some(ResultView::Failed(f)) => error_frame("INTERNAL_ERROR", &f.message),
                    None => error_frame("INTERNAL_ERROR", "job log unavailable"),
                };
                guard.disarm();
                let sent = out.send(frame).await.is_ok();
                let timing = started.elapsed().as_secs_f64();
                let _ = out
                    .send(control(json!({"type": "x-fal-message", "action": "timings", "timing": timing})))
                    .await;
                break sent;
            }
        }
    };
    drop(partials);
    state.partials.release(&id);
    alive
}

// ---------------------------------------------------------------------------------------------
// HTTP over WebSocket (`wss://ws.fal.run/{endpoint}`, contract §5.2)
// ---------------------------------------------------------------------------------------------

/// `GET /ws/{endpoint}`: each text (or binary JSON) frame is one request's input; requests on a
/// socket run in order. Each gets `{"type":"start",...}`, the body as one text frame, then
/// `{"type":"end",...}`.
pub(crate) async fn http_over_ws(
    state: &AppState,
    caller: &Caller,
    model: ModelId,
    req: Request,
) -> Response {
    if !state.catalog.contains(&model.app) {
        return ApiError::ModelNotFound(model.to_string()).into_response();
    }
    let (mut parts, _body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, state).await {
        Ok(ws) => ws,
        Err(rejection) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "detail": format!("This endpoint speaks WebSocket: {}", rejection.body_text()),
                    "error_type": "bad_request",
                }),
            )
        }
    };
    let (state, caller) = (state.clone(), caller.clone());
    let limit = state.config.body_limit_bytes;
    let span = tracing::info_span!("ws", app = %model.app);
    ws.max_message_size(limit).on_upgrade(move |socket| {
        async move {
            let (mut sink, mut incoming) = socket.split();
            let idle = Duration::from_millis(state.config.realtime_idle_timeout_ms.max(1));
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(idle, incoming.next()).await {
                let text = match msg {
                    Message::Text(t) => t.as_str().to_string(),
                    Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                for frame in http_over_ws_request(&state, &caller, &model, &text).await {
                    if sink.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            let _ = sink.close().await;
        }
        .instrument(span)
    })
}

/// One request on an HTTP-over-WebSocket socket: its start, body and end frames.
async fn http_over_ws_request(
    state: &AppState,
    caller: &Caller,
    model: &ModelId,
    text: &str,
) -> Vec<Message> {
    let id = RequestId::new_random();
    let started = Instant::now();
    let (status, body) = match run_to_result(state, caller, model, &id, text).await {
        Ok(ResultView::Output(out)) => (200u16, out),
        Ok(ResultView::Failed(f)) => (f.http_status.as_u16(), f.body().to_string()),
        Ok(ResultView::Pending) => (500, json!({"detail": "no result"}).to_string()),
        Err(e) => (e.status().as_u16(), e.body().to_string()),
    };
    let ttfb = started.elapsed().as_secs_f64();
    vec![
        control(json!({
            "type": "start",
            "request_id": id.as_str(),
            "status": status,
            "headers": { "content-type": "application/json", "x-fal-request-id": id.as_str() },
        })),
        Message::Text(body.into()),
        control(json!({
            "type": "end",
            "request_id": id.as_str(),
            "status": status,
            "time_to_first_byte_seconds": ttfb,
        })),
    ]
}

/// Parses, validates, commits and waits for one sync job.
async fn run_to_result(
    state: &AppState,
    caller: &Caller,
    model: &ModelId,
    id: &RequestId,
    text: &str,
) -> Result<ResultView, ApiError> {
    let (input_json, input) = crate::submit::parse_input(text.as_bytes())?;
    let spec = build_spec(
        state,
        id.clone(),
        caller,
        model.clone(),
        input_json,
        &input,
        SubmitOptions::default(),
        SubmitMode::Sync,
    )?;
    let mut changes = state.joblog.subscribe();
    commit(state, spec).await?;
    loop {
        match state.joblog.read(|t| t.get(id).map(status::result_view)) {
            Some(ResultView::Pending) => {}
            Some(done) => return Ok(done),
            None => return Err(ApiError::Internal("accepted request vanished".into())),
        }
        loop {
            match next_change(&mut changes, id).await {
                Change::This => break,
                Change::Other(_) => continue,
                Change::Closed => return Err(ApiError::Unavailable("job log closed".into())),
            }
        }
    }
}

/// Decodes one msgpack input to a JSON value. msgpack `bin` values (PY sends `bytes` fields as
/// `bin`, `use_bin_type=True`; JS `Uint8Array`) become `data:application/octet-stream;base64,…`
/// strings: inputs are JSON here, and apps take files as data URIs or URLs.
pub fn decode_msgpack(bytes: &[u8]) -> Result<Value, String> {
    use serde::de::DeserializeSeed as _;
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    BinAsDataUri { depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())
}

/// The most arrays and maps nested in one another that an input may have: what `serde_json`
/// parses (it refuses the 128th), so a msgpack input is refused where the same JSON would be,
/// rather than accepted and then failing as a job whose input cannot be read back.
pub const NESTING_MAX: usize = 127;

/// A `serde_json::Value` built from any self-describing input, bytes as data URIs; `depth` is
/// how many arrays and maps enclose the value.
#[derive(Clone, Copy)]
struct BinAsDataUri {
    depth: usize,
}

impl BinAsDataUri {
    /// The seed of a container's elements, or the error once nesting passes [`NESTING_MAX`].
    fn inner<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= NESTING_MAX {
            return Err(E::custom(format!(
                "recursion limit exceeded (more than {NESTING_MAX} nested arrays and maps)"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for BinAsDataUri {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BinAsDataUri {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a msgpack value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // NaN and infinities have no JSON form.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(v);
        Ok(Value::String(format!(
            "data:application/octet-stream;base64,{b64}"
        )))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.inner()?;
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key_seed(inner)? {
            // JSON keys are strings: a number or bool key keeps its text.
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.insert(key, map.next_value_seed(inner)?);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_bin_inputs_become_data_uris() {
        #[derive(serde::Serialize)]
        struct In<'a> {
            prompt: &'a str,
            #[serde(with = "serde_bytes_like")]
            image: &'a [u8],
            n: i32,
            f: f64,
            list: Vec<Option<u8>>,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let packed = rmp_serde::to_vec_named(&In {
            prompt: "cat",
            image: &[0, 1, 2, 255],
            n: -3,
            f: 0.5,
            list: vec![Some(1), None],
        })
        .unwrap();
        assert_eq!(
            decode_msgpack(&packed).unwrap(),
            json!({
                "prompt": "cat",
                "image": "data:application/octet-stream;base64,AAEC/w==",
                "n": -3,
                "f": 0.5,
                "list": [1, null],
            })
        );
        let mut int_keys = std::collections::BTreeMap::new();
        int_keys.insert(7u8, "x");
        let packed = rmp_serde::to_vec(&int_keys).unwrap();
        assert_eq!(decode_msgpack(&packed).unwrap(), json!({"7": "x"}));
        assert!(decode_msgpack(&[0xc1]).is_err());
        assert!(decode_msgpack(&[0x92, 0x01]).is_err());
    }

    #[test]
    fn msgpack_nests_exactly_as_deep_as_json_parses() {
        // `levels` maps, one inside the other: {"a": {"a": ... 1}}.
        let nested = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "a": v });
            }
            v
        };
        let ok = nested(NESTING_MAX);
        let packed = rmp_serde::to_vec(&ok).unwrap();
        assert_eq!(decode_msgpack(&packed).unwrap(), ok);
        assert!(serde_json::from_str::<Value>(&ok.to_string()).is_ok());

        // One more: JSON refuses it, and so does msgpack (arrays count the same as maps).
        let deep = json!([nested(NESTING_MAX)]);
        assert!(serde_json::from_str::<Value>(&deep.to_string()).is_err());
        let e = decode_msgpack(&rmp_serde::to_vec(&deep).unwrap()).unwrap_err();
        assert!(e.contains("recursion limit"), "{e}");
    }
}
