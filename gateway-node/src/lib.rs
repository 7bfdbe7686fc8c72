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
mod admin_keys;
mod admin_nodes;
pub mod auth;
pub mod errors;
pub mod files;
pub mod outbound;
pub mod partials;
pub mod proxy;
mod queue;
pub mod realtime;
pub mod routing;
pub mod status;
pub mod stream;
pub mod submit;
mod watch;
pub mod webhook;

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

pub use crate::admin::{
    cluster_json, job_worker, node_name, ClusterHandle, ClusterInfo, RaftMembership, WORKER_HEADER,
};
pub use crate::auth::{AuthConfig, Caller, ClusterKey};
pub use crate::partials::PartialHub;

/// Default request body limit: 10 MiB.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 10 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Request bodies over this are refused with a fal-shaped 413.
    pub body_limit_bytes: usize,
    /// Recorded on accepted jobs (`JobSpec::accepted_region`) and shown by `/healthz`.
    pub region: Option<String>,
    /// The node's view of the cluster for `GET /admin/cluster` (without it: Raft membership only).
    pub cluster: Option<ClusterHandle>,
    /// Keys, scopes and rate limits.
    pub auth: AuthConfig,
    /// How long an `Idempotency-Key` returns its first submission.
    pub idempotency_window_ms: u64,
    /// A realtime WebSocket with no input for this long gets fal's TIMEOUT error and is closed.
    pub realtime_idle_timeout_ms: u64,
    /// The listener serves HTTPS: URLs handed back say `https` unless `X-Forwarded-Proto` differs.
    pub https: bool,
    /// Path of the JS client's `proxyUrl` endpoint ([`proxy`]); `None` turns it off.
    pub proxy_path: Option<String>,
    /// Interval of the `: ping` comments on SSE responses.
    pub sse_keepalive_ms: u64,
    /// The node's blob store behind `/files/` and uploads (without it those answer 404/503).
    pub files: Option<files::FilesHandle>,
    /// Where webhooks may point (checked at submit; the delivery checks again).
    pub fetch_policy: outbound::FetchPolicy,
}

/// Default `Idempotency-Key` window: 24 hours.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 24 * 3600 * 1000;
/// Default realtime idle timeout: 5 minutes.
pub const REALTIME_IDLE_TIMEOUT_MS_DEFAULT: u64 = 5 * 60 * 1000;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT,
            region: None,
            cluster: None,
            auth: AuthConfig::default(),
            idempotency_window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
            realtime_idle_timeout_ms: REALTIME_IDLE_TIMEOUT_MS_DEFAULT,
            https: false,
            proxy_path: Some(proxy::PROXY_PATH_DEFAULT.to_string()),
            sse_keepalive_ms: stream::KEEPALIVE_INTERVAL.as_millis() as u64,
            files: None,
            fetch_policy: outbound::FetchPolicy::default(),
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
    pub(crate) limiter: Arc<auth::RateLimiter>,
    /// Derived once the cluster secret is in the replicated state (it never changes after).
    pub(crate) cluster_key: Arc<std::sync::OnceLock<ClusterKey>>,
}

impl AppState {
    /// The cluster's signing key, once a node committed the cluster secret.
    pub(crate) fn cluster_key(&self) -> Option<ClusterKey> {
        if let Some(k) = self.cluster_key.get() {
            return Some(k.clone());
        }
        let key = self
            .joblog
            .read_state(|s| s.keys.cluster_secret().map(ClusterKey::from_cluster_secret))?;
        Some(self.cluster_key.get_or_init(|| key).clone())
    }
}

/// The whole HTTP API. Serve it with `axum::serve(listener, router(..))`.
pub fn router(
    joblog: JobLog,
    catalog: Arc<dyn AppCatalog>,
    partials: PartialHub,
    config: GatewayConfig,
) -> Router {
    let body_limit_bytes = config.body_limit_bytes;
    let scheme: &'static str = if config.https { "https" } else { "http" };
    let proxy_path: Arc<str> = config.proxy_path.clone().unwrap_or_default().into();
    let state = AppState {
        joblog,
        catalog,
        partials,
        config: Arc::new(config),
        limiter: Arc::new(auth::RateLimiter::default()),
        cluster_key: Arc::new(std::sync::OnceLock::new()),
    };
    let auth_state = state.clone();
    // Endpoint ids have a variable number of segments, so one handler routes by hand (`routing`).
    Router::new()
        .route("/admin/cluster", axum::routing::get(admin::cluster))
        .fallback(dispatch)
        .with_state(state)
        // Handlers read bodies with this same limit themselves (`submit::read_body`), so that the
        // 413 is fal-shaped; the layer keeps any extractor added later under the same limit.
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        // Inside the envelope (which decides the route it needs), around every handler.
        .layer(middleware::from_fn_with_state(auth_state, auth::middleware))
        .layer(middleware::from_fn(move |req, next| {
            envelope(req, next, scheme, proxy_path.clone())
        }))
}

/// Around every request: decide the route once, open the request span, and make sure every response
/// is JSON-typed and carries `x-fal-request-id`.
async fn envelope(
    mut req: Request,
    next: Next,
    scheme: &'static str,
    proxy_path: Arc<str>,
) -> Response {
    let (ctx, refused) = if proxy::is_proxy_path(&proxy_path, req.uri().path()) {
        match proxied(&mut req, scheme) {
            Ok(ctx) => (ctx, None),
            Err(resp) => (
                RequestContext::with_scheme(req.method(), req.uri(), req.headers(), scheme),
                Some(*resp),
            ),
        }
    } else {
        let ctx = RequestContext::with_scheme(req.method(), req.uri(), req.headers(), scheme);
        (ctx, None)
    };
    let request_id = ctx.log_id();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    req.extensions_mut().insert(ctx);
    let mut resp = match refused {
        Some(resp) => resp,
        None => next.run(req).instrument(span.clone()).await,
    };

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
        } else if !resp.headers().contains_key(header::CONTENT_TYPE) {
            // Files keep their own type; everything else of ours is JSON.
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

/// A request to the proxy endpoint: its URI becomes the target's local path and query, and its
/// context the target's route; a target outside fal's hosts is refused (fal's server proxy answers
/// 400 without a target and 412 for one it does not allow).
fn proxied(req: &mut Request, scheme: &'static str) -> Result<RequestContext, Box<Response>> {
    use axum::http::StatusCode;
    if !proxy::method_allowed(req.method()) {
        return Err(Box::new(
            ApiError::MethodNotAllowed {
                allow: "GET, POST, PUT",
            }
            .into_response(),
        ));
    }
    let refuse = |status: StatusCode, e: proxy::ProxyError| {
        Box::new(json_response(
            status,
            &serde_json::json!({ "detail": e.to_string() }),
        ))
    };
    let target = req
        .headers()
        .get(proxy::TARGET_URL_HEADER)
        .map(|v| v.to_str().map_err(|_| proxy::ProxyError::InvalidTarget))
        .transpose()
        .and_then(proxy::resolve);
    let target = match target {
        Ok(t) => t,
        Err(e @ proxy::ProxyError::MissingTarget) => {
            return Err(refuse(StatusCode::BAD_REQUEST, e))
        }
        Err(e) => return Err(refuse(StatusCode::PRECONDITION_FAILED, e)),
    };
    let ctx = RequestContext::for_surface(
        req.method(),
        &target.uri,
        req.headers(),
        target.surface,
        target.prefix,
        scheme,
    );
    if !proxy::route_allowed(&ctx.route, &target) {
        return Err(refuse(
            StatusCode::PRECONDITION_FAILED,
            proxy::ProxyError::InvalidTarget,
        ));
    }
    *req.uri_mut() = target.uri;
    Ok(ctx)
}

async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let ctx = match req.extensions().get::<RequestContext>() {
        Some(ctx) => ctx.clone(),
        None => RequestContext::new(req.method(), req.uri(), req.headers()),
    };
    let with_logs = || logs_requested(query_map(req.uri()).as_ref());
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    // A request id of someone else's job reads as unknown, never as "forbidden".
    if let Some(resp) = queue::hide_foreign(&state, &ctx.route, &caller) {
        return resp;
    }
    match ctx.route.clone() {
        Route::Health => admin::healthz(&state),
        Route::ListApps => admin::list_apps(&state),
        Route::Jwks => admin_keys::jwks(&state),
        Route::Tokens => admin_keys::tokens(&state, &caller, req).await,
        Route::AdminKeys => admin_keys::keys(&state, req).await,
        Route::AdminKeyRevoke { key_id } => admin_keys::revoke(&state, &key_id).await,
        Route::AdminWebhooksFailed => admin_keys::failed_webhooks(&state),
        Route::AdminWebhookRetry { id } => admin_keys::retry_webhook(&state, &id).await,
        Route::AdminNode { id, action } => admin_nodes::act(&state, &id, action).await,
        Route::AdminBackup => admin_nodes::backup(&state).await,
        // Served by its own axum route; reaching here means the method was wrong.
        Route::AdminCluster => ApiError::MethodNotAllowed { allow: "GET" }.into_response(),
        Route::Realtime { model } => realtime::upgrade(&state, &caller, model, req).await,
        Route::HttpOverWs { model } => realtime::http_over_ws(&state, &caller, model, req).await,
        Route::Submit { model } => submit::queue_submit(&state, &ctx, &caller, model, req).await,
        Route::Run { model } => submit::sync_run(&state, &ctx, &caller, model, req).await,
        Route::RunStream { model } => stream::run_stream(&state, &ctx, &caller, model, req).await,
        Route::Status {
            app,
            id,
            stream: false,
        } => admin::with_worker_header(
            &state,
            &app,
            &id,
            queue::status(&state, &ctx.base, &app, &id, with_logs()),
        ),
        Route::Status {
            app,
            id,
            stream: true,
        } => stream::status_stream(&state, &ctx.base, &app, &id, with_logs()),
        Route::Result { app, id } => {
            admin::with_worker_header(&state, &app, &id, queue::result(&state, &app, &id))
        }
        Route::Cancel { app, id } => queue::cancel(&state, &app, &id).await,
        Route::UnknownModel { path } => ApiError::ModelNotFound(path).into_response(),
        Route::MethodNotAllowed { allow } => ApiError::MethodNotAllowed { allow }.into_response(),
        Route::NotFound => ApiError::NotFound.into_response(),
        Route::File { hash, file_name } => {
            files::get(&state, &hash, file_name.as_deref(), req).await
        }
        Route::Upload => files::upload(&state, &ctx, req).await,
        Route::StorageToken => files::storage_token(&state, &ctx, &caller),
        Route::UploadInitiate => files::upload_initiate(&state, &ctx, req).await,
        Route::UploadPut { token, file_name } => {
            files::upload_put(&state, &ctx, &token, file_name.as_deref(), req).await
        }
        Route::UploadedFile { token, file_name } => {
            let hash = state
                .joblog
                .read(|t| t.upload(&token).map(|u| u.file.hash.clone()));
            match hash {
                Some(hash) => files::get(&state, &hash, file_name.as_deref(), req).await,
                None => ApiError::NotFound.into_response(),
            }
        }
        Route::DeleteIo { id } => files::delete_io(&state, &id).await,
    }
}
