//! Queue status, result and cancel handlers (contract §3.2, §3.4, §3.5). The status stream is in
//! [`crate::stream`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runmesh_proto::{AppId, CommandResult, JobCommand, Rejection, RequestId};
use runmesh_raft::{JobRecord, JobTable};
use serde_json::json;

use crate::errors::{json_response, with_request_id, ApiError};
use crate::routing::BaseUrl;
use crate::status::{self, StatusView};
use crate::AppState;

/// A job as addressed by a status/result/cancel URL: the id must exist and belong to the app in
/// the path (one app's clients cannot read another's requests by id).
pub(crate) fn find<'t>(table: &'t JobTable, app: &AppId, id: &RequestId) -> Option<&'t JobRecord> {
    table.get(id).filter(|r| r.spec.app() == app)
}

pub(crate) fn parse_id(raw: &str) -> Result<RequestId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::RequestNotFound(raw.chars().take(64).collect()))
}

/// For a status/result/cancel of a job the caller may not see (another key's), the 404 an unknown
/// id gets; `None` when the request may go on.
pub(crate) fn hide_foreign(
    state: &AppState,
    route: &crate::routing::Route,
    caller: &crate::auth::Caller,
) -> Option<Response> {
    use crate::routing::Route;
    let (Route::Status { id, .. } | Route::Result { id, .. } | Route::Cancel { id, .. }) = route
    else {
        return None;
    };
    let id: RequestId = id.parse().ok()?;
    let require = state.config.auth.require_auth;
    let visible = state.joblog.read(|t| {
        t.get(&id)
            .is_none_or(|r| caller.may_see(r.spec.submitted_by.as_deref(), require))
    });
    if visible {
        return None;
    }
    Some(match route {
        Route::Cancel { .. } => {
            json_response(StatusCode::NOT_FOUND, &json!({ "status": "NOT_FOUND" }))
        }
        _ => ApiError::RequestNotFound(id.to_string()).into_response(),
    })
}

/// The status object of a job, read from the local table.
pub(crate) fn read_status(
    state: &AppState,
    base: &BaseUrl,
    app: &AppId,
    id: &RequestId,
    with_logs: bool,
) -> Option<StatusView> {
    state.joblog.read(|t| {
        find(t, app, id).map(|rec| {
            let urls = base.job_urls(rec.spec.app(), id);
            status::status_view(rec, t.queue_position(id), &urls, with_logs)
        })
    })
}

/// `GET …/requests/{id}/status`.
pub(crate) fn status(
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
    match read_status(state, base, app, &id, with_logs) {
        Some(view) => with_request_id(json_response(view.http_status, &view.body), &id),
        None => ApiError::RequestNotFound(id.to_string()).into_response(),
    }
}

/// `GET …/requests/{id}`: the raw output, the job's error, or 400 while it runs.
pub(crate) fn result(state: &AppState, app: &AppId, raw_id: &str) -> Response {
    let id = match parse_id(raw_id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match state
        .joblog
        .read(|t| find(t, app, &id).map(status::result_view))
    {
        Some(view) => view.into_response(&id),
        None => ApiError::RequestNotFound(id.to_string()).into_response(),
    }
}

/// `PUT …/requests/{id}/cancel`.
pub(crate) async fn cancel(state: &AppState, app: &AppId, raw_id: &str) -> Response {
    let not_found = || json_response(StatusCode::NOT_FOUND, &json!({ "status": "NOT_FOUND" }));
    let Ok(id) = raw_id.parse::<RequestId>() else {
        return not_found();
    };
    if !state.joblog.read(|t| find(t, app, &id).is_some()) {
        return not_found();
    }
    let cmd = JobCommand::RequestCancel {
        request_id: id.clone(),
        now_ms: state.joblog.now_ms(),
    };
    let resp = match state.joblog.propose(cmd).await {
        Ok(CommandResult::Cancelled | CommandResult::CancellationRequested) => {
            tracing::info!("cancellation requested");
            json_response(
                StatusCode::ACCEPTED,
                &json!({ "status": "CANCELLATION_REQUESTED" }),
            )
        }
        Ok(CommandResult::Rejected(Rejection::AlreadyCompleted)) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "status": "ALREADY_COMPLETED" }),
        ),
        Ok(CommandResult::Rejected(Rejection::NotFound)) => not_found(),
        Ok(other) => {
            ApiError::Internal(format!("unexpected cancel result {other:?}")).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cancel not committed");
            ApiError::Unavailable(format!("Cancel could not be recorded: {e}")).into_response()
        }
    };
    with_request_id(resp, &id)
}
