//! runmesh's fal-compatible HTTP API over the replicated job log.
//!
//! One listener serves both fal surfaces: the queue API (`queue.` host or `/queue/` path prefix:
//! submit, status, status stream, result, cancel) and the sync API (run, `/stream`). A job is
//! committed to the [`JobLog`] before a client hears it was accepted; every answer afterwards is
//! read from the local job table.
//!
//! Layout: [`routing`] (which operation, URLs handed back), [`submit`] (accepting jobs, sync run),
//! [`queue`] (status/result/cancel), [`stream`] (SSE), [`status`] (JSON bodies from a job record),
//! [`errors`] (fal-shaped errors), [`partials`] (partial outputs), `admin` (health, app list).

mod admin;
pub mod errors;
pub mod partials;
mod queue;
pub mod routing;
pub mod status;
pub mod stream;
pub mod submit;
mod watch;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use runmesh_proto::fal::FieldError;
use runmesh_proto::{AppId, ModelId};
use runmesh_raft::JobLog;
use tracing::Instrument;

use crate::errors::{json_response, ApiError, REQUEST_ID_HEADER};
use crate::routing::{logs_requested, query_map, RequestContext, Route};

pub use crate::partials::PartialHub;

/// Default request body limit: 10 MiB.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 10 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Request bodies over this are refused with a fal-shaped 413.
    pub body_limit_bytes: usize,
    /// Recorded on accepted jobs (`JobSpec::accepted_region`) and shown by `/healthz`.
    pub region: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT,
            region: None,
        }
    }
}

/// What apps exist and whether an input is valid for them (implemented by node's app registry).
pub trait AppCatalog: Send + Sync + 'static {
    fn contains(&self, app: &AppId) -> bool;
    /// Validate an input object for a model (subpath included); Err -> 422 {"detail": [FieldError...]}.
    fn validate(&self, model: &ModelId, input: &serde_json::Value) -> Result<(), Vec<FieldError>>;
    fn apps(&self) -> Vec<AppId>;
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) joblog: JobLog,
    pub(crate) catalog: Arc<dyn AppCatalog>,
    pub(crate) partials: PartialHub,
    pub(crate) config: Arc<GatewayConfig>,
}

/// The whole HTTP API. Serve it with `axum::serve(listener, router(..))`.
pub fn router(
    joblog: JobLog,
    catalog: Arc<dyn AppCatalog>,
    partials: PartialHub,
    config: GatewayConfig,
) -> Router {
    let body_limit_bytes = config.body_limit_bytes;
    let state = AppState {
        joblog,
        catalog,
        partials,
        config: Arc::new(config),
    };
    // Endpoint ids have a variable number of segments, so one handler routes by hand (`routing`).
    Router::new()
        .fallback(dispatch)
        .with_state(state)
        // Handlers read bodies with this same limit themselves (`submit::read_body`), so that the
        // 413 is fal-shaped; the layer keeps any extractor added later under the same limit.
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(middleware::from_fn(envelope))
}

/// Around every request: decide the route once, open the request span, and make sure every response
/// is JSON-typed and carries `x-fal-request-id`.
async fn envelope(mut req: Request, next: Next) -> Response {
    let ctx = RequestContext::new(req.method(), req.uri(), req.headers());
    let request_id = ctx.log_id();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    req.extensions_mut().insert(ctx);
    let mut resp = next.run(req).instrument(span.clone()).await;

    let status = resp.status();
    let is_json_or_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/json") || ct.starts_with("text/event-stream")
        });
    if !is_json_or_sse {
        if status.is_client_error() || status.is_server_error() {
            // An error produced outside our handlers (a layer, axum itself): give it fal's shape.
            let reason = status.canonical_reason().unwrap_or("Error");
            resp = json_response(status, &serde_json::json!({ "detail": reason }));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        } else {
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    if !resp.headers().contains_key(REQUEST_ID_HEADER) {
        if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
    }
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "answered");
        } else {
            tracing::debug!(status = status.as_u16(), "answered");
        }
    });
    resp
}

async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let ctx = match req.extensions().get::<RequestContext>() {
        Some(ctx) => ctx.clone(),
        None => RequestContext::new(req.method(), req.uri(), req.headers()),
    };
    let with_logs = || logs_requested(query_map(req.uri()).as_ref());
    match ctx.route.clone() {
        Route::Health => admin::healthz(&state),
        Route::ListApps => admin::list_apps(&state),
        Route::Submit { model } => submit::queue_submit(&state, &ctx, model, req).await,
        Route::Run { model } => submit::sync_run(&state, &ctx, model, req).await,
        Route::RunStream { model } => stream::run_stream(&state, &ctx, model, req).await,
        Route::Status {
            app,
            id,
            stream: false,
        } => queue::status(&state, &ctx.base, &app, &id, with_logs()),
        Route::Status {
            app,
            id,
            stream: true,
        } => stream::status_stream(&state, &ctx.base, &app, &id, with_logs()),
        Route::Result { app, id } => queue::result(&state, &app, &id),
        Route::Cancel { app, id } => queue::cancel(&state, &app, &id).await,
        Route::UnknownModel { path } => ApiError::ModelNotFound(path).into_response(),
        Route::MethodNotAllowed { allow } => ApiError::MethodNotAllowed { allow }.into_response(),
        Route::NotFound => ApiError::NotFound.into_response(),
    }
}
