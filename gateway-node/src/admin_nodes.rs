//! The operator's hands on members (`/admin/nodes/{id}/...`, ADMIN keys only): drain, undrain,
//! remove, readmit. Each records the decision in the replicated roster
//! (`runmesh_proto::roster`); the leader's membership controller carries it out (a voter seat
//! moved away, a removed member taken out of the membership), so it holds across leader changes.
//! The list is `GET /admin/cluster`, whose rows say which members drain. `GET /admin/backup` is
//! the replicated state for `runmesh backup`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runmesh_proto::roster::{RosterCommand, RosterResult};
use runmesh_proto::{Command, CommandOutput, NodeId};
use serde_json::json;

use crate::admin::{node_name, RaftMembership};
use crate::errors::{json_response, ApiError};
use crate::routing::NodeAction;
use crate::AppState;

fn not_a_member(id: NodeId) -> ApiError {
    ApiError::BadRequest(format!(
        "node {id} is not a member of this cluster (see GET /admin/cluster)"
    ))
}

pub(crate) async fn act(state: &AppState, id: &str, action: NodeAction) -> Response {
    let Ok(node) = id.parse::<NodeId>() else {
        return ApiError::field(
            &["path", "id"],
            "id must be a node id as GET /admin/cluster lists it (decimal)",
            "int_parsing",
        )
        .into_response();
    };
    let raft = RaftMembership::read(&state.joblog);
    let member = raft.voters.contains(&node) || raft.learners.contains(&node);
    let roster = state.joblog.roster();
    let cmd = match action {
        NodeAction::Drain if !member => return not_a_member(node).into_response(),
        // A drained node may have left the membership since: its drain can still end.
        NodeAction::Undrain if !member && !roster.is_draining(node) => {
            return not_a_member(node).into_response()
        }
        NodeAction::Drain => RosterCommand::SetDraining {
            node,
            draining: true,
        },
        NodeAction::Undrain => RosterCommand::SetDraining {
            node,
            draining: false,
        },
        NodeAction::Remove if !member && !roster.is_removed(node) => {
            return not_a_member(node).into_response()
        }
        NodeAction::Remove
            if raft.voters.contains(&node)
                && raft
                    .voters
                    .iter()
                    .all(|v| *v == node || roster.is_removed(*v)) =>
        {
            return ApiError::BadRequest(format!(
                "node {node} is the last voter not removed: add another node before removing it"
            ))
            .into_response()
        }
        NodeAction::Remove => RosterCommand::Remove {
            node,
            at_ms: state.joblog.now_ms(),
        },
        NodeAction::Readmit => RosterCommand::Readmit { node },
    };
    let result = match state.joblog.propose_command(Command::Roster(cmd)).await {
        Ok(CommandOutput::Roster(r)) => r,
        Ok(other) => {
            return ApiError::Internal(format!("unexpected result {other:?}")).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "roster change not committed");
            return ApiError::Unavailable(format!("Could not be recorded: {e}")).into_response();
        }
    };
    if result == RosterResult::Full {
        return ApiError::BadRequest("the roster is full".into()).into_response();
    }
    let changed = result == RosterResult::Changed;
    if changed {
        tracing::info!(node, ?action, "roster changed");
    }
    let roster = state.joblog.roster();
    json_response(
        StatusCode::OK,
        &json!({
            "id": node_name(node),
            "changed": changed,
            "draining": roster.is_draining(node),
            "removed": roster.is_removed(node),
        }),
    )
}

/// `GET /admin/backup`: the replicated state as this node has applied it
/// (`runmesh_raft::backup`), as a file; `x-runmesh-applied-index` says where it was taken.
pub(crate) async fn backup(state: &AppState) -> Response {
    let joblog = state.joblog.clone();
    // Copying and encoding a big table takes a while: off the runtime's threads.
    let taken = tokio::task::spawn_blocking(move || {
        let backup = joblog.backup().map_err(|e| e.to_string())?;
        let bytes = backup.encode().map_err(|e| e.to_string())?;
        Ok::<_, String>((backup, bytes))
    })
    .await;
    let (backup, bytes) = match taken {
        Ok(Ok(taken)) => taken,
        Ok(Err(e)) => return ApiError::Internal(format!("backup: {e}")).into_response(),
        Err(e) => return ApiError::Internal(format!("backup: {e}")).into_response(),
    };
    tracing::info!(
        applied_index = backup.applied_index,
        bytes = bytes.len(),
        blobs = backup.blobs.len(),
        "backup taken"
    );
    let mut resp = (StatusCode::OK, bytes).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&backup.applied_index.to_string()) {
        headers.insert("x-runmesh-applied-index", v);
    }
    resp
}
