//! Node endpoints outside the fal API: health and the app list.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::errors::json_response;
use crate::AppState;

/// `GET /healthz`: 200 when the job log can take writes (a leader is known), else 503.
pub(crate) fn healthz(state: &AppState) -> Response {
    let healthy = state.joblog.is_healthy();
    let queued = state.joblog.read(|t| t.queued_total());
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "node_id": state.joblog.node_id(),
        "region": state.config.region,
        "queued": queued,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

/// `GET /admin/apps`: the apps this node serves, with their queue lengths.
pub(crate) fn list_apps(state: &AppState) -> Response {
    let mut apps = state.catalog.apps();
    apps.sort();
    let apps: Vec<_> = state.joblog.read(|t| {
        apps.iter()
            .map(|app| json!({ "app": app.path(), "queued": t.queue_len(app) }))
            .collect()
    });
    json_response(StatusCode::OK, &json!({ "apps": apps }))
}
