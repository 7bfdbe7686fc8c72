//! Key administration (`/admin/keys`), failed webhook deliveries (`/admin/webhooks/...`), the JWKS
//! (`/.well-known/jwks.json`) and realtime tokens (`/tokens/`). Admin routes are gated to ADMIN
//! keys by the auth middleware before they get here.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use runmesh_proto::auth::{KeyCommand, KeyResult, KeyScope};
use runmesh_proto::webhook::{WebhookCommand, WebhookResult};
use runmesh_proto::{Command, CommandOutput, RequestId};
use runmesh_raft::webhooks::DeliveryState;
use serde_json::{json, Value};

use crate::auth::{new_key, Caller, TokenAudience, TokenClaims, ANONYMOUS, TOKEN_TTL_MAX_S};
use crate::errors::{json_response, ApiError};
use crate::submit::read_body;
use crate::AppState;

/// Longest key name kept.
const KEY_NAME_LEN_MAX: usize = 128;
/// Failed deliveries listed at most.
const FAILED_LISTED_MAX: usize = 1_000;
/// Token lifetime when the request names none (fal's clients ask for 120 s).
const TOKEN_TTL_DEFAULT_S: u64 = 120;
/// Apps one token may name.
const TOKEN_APPS_MAX: usize = 64;

fn ts(ms: u64) -> String {
    runmesh_proto::time::format_timestamp_ms(ms)
}

async fn propose(state: &AppState, cmd: Command) -> Result<CommandOutput, ApiError> {
    state.joblog.propose_command(cmd).await.map_err(|e| {
        tracing::warn!(error = %e, "admin command not committed");
        ApiError::Unavailable(format!("Could not be recorded: {e}"))
    })
}

pub(crate) async fn json_body(state: &AppState, req: Request) -> Result<Value, ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body, state.config.body_limit_bytes).await?;
    if bytes.trim_ascii().is_empty() {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::field(&["body"], format!("Invalid JSON: {e}"), "json_invalid"))?;
    if !v.is_object() {
        return Err(ApiError::field(
            &["body"],
            "Input should be a valid dictionary",
            "dict_type",
        ));
    }
    Ok(v)
}

/// `GET /.well-known/jwks.json`.
pub(crate) fn jwks(state: &AppState) -> Response {
    match state.cluster_key() {
        Some(k) => json_response(StatusCode::OK, &k.jwks()),
        // Before the first node set the cluster secret there is nothing to publish yet.
        None => json_response(StatusCode::OK, &json!({ "keys": [] })),
    }
}

/// `POST /tokens/` `{"allowed_apps": [...], "token_expiration": 120}` → 201 with the token as a
/// JSON string (what both fal clients expect).
pub(crate) async fn tokens(state: &AppState, caller: &Caller, req: Request) -> Response {
    let body = match json_body(state, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut errors = Vec::new();
    let apps: Vec<String> = match body.get("allowed_apps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= TOKEN_APPS_MAX && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(|s| s.chars().take(256).collect()))
            .collect(),
        Some(_) => {
            errors.push(runmesh_proto::fal::FieldError::body(
                "allowed_apps",
                "allowed_apps must be a list of at most 64 app names",
                "list_type",
            ));
            Vec::new()
        }
    };
    let ttl_s = match body.get("token_expiration") {
        None | Some(Value::Null) => TOKEN_TTL_DEFAULT_S,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=TOKEN_TTL_MAX_S).contains(&n) => n,
            _ => {
                errors.push(runmesh_proto::fal::FieldError::body(
                    "token_expiration",
                    "token_expiration must be an integer number of seconds from 1 to 86400",
                    "int_type",
                ));
                0
            }
        },
    };
    if !errors.is_empty() {
        return ApiError::Validation(errors).into_response();
    }
    let Some(key) = state.cluster_key() else {
        return ApiError::Unavailable("The cluster key is not initialized yet".into())
            .into_response();
    };
    let now_s = state.joblog.now_ms() / 1000;
    let claims = TokenClaims {
        sub: caller.owner().unwrap_or_else(|| ANONYMOUS.to_string()),
        apps,
        iat: now_s,
        exp: now_s.saturating_add(ttl_s),
        audience: TokenAudience::Realtime,
    };
    json_response(
        StatusCode::CREATED,
        &Value::String(key.issue_token(&claims)),
    )
}

/// `GET /admin/keys` (list) and `POST /admin/keys` `{"scope": "DEFAULT"|"ADMIN", "name": ..}`
/// (create; the secret is shown once).
pub(crate) async fn keys(state: &AppState, req: Request) -> Response {
    if req.method() == Method::GET {
        let keys: Vec<Value> = state.joblog.read_state(|s| {
            s.keys
                .iter()
                .map(|k| {
                    json!({
                        "key_id": k.key_id,
                        "name": k.name,
                        "scope": k.scope.as_str(),
                        "created_at": ts(k.created_at_ms),
                    })
                })
                .collect()
        });
        return json_response(StatusCode::OK, &json!({ "keys": keys }));
    }
    let body = match json_body(state, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let scope = match body.get("scope") {
        None | Some(Value::Null) => KeyScope::Default,
        Some(v) => match v.as_str().and_then(KeyScope::parse) {
            Some(s) => s,
            None => {
                return ApiError::field(
                    &["body", "scope"],
                    "scope must be 'DEFAULT' (or 'API') or 'ADMIN'",
                    "enum",
                )
                .into_response()
            }
        },
    };
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= KEY_NAME_LEN_MAX => Some(n.clone()),
        Some(_) => {
            return ApiError::field(
                &["body", "name"],
                "name must be a string of at most 128 characters",
                "string_type",
            )
            .into_response()
        }
    };
    let (key, secret) = new_key(scope, name, state.joblog.now_ms());
    let reply = json!({
        "key_id": key.key_id,
        "key_secret": secret,
        "key": format!("{}:{secret}", key.key_id),
        "scope": key.scope.as_str(),
        "name": key.name,
        "created_at": ts(key.created_at_ms),
    });
    match propose(state, Command::Keys(KeyCommand::Create { key })).await {
        Ok(CommandOutput::Keys(KeyResult::Created)) => {
            tracing::info!(key_id = %reply["key_id"], scope = scope.as_str(), "key created");
            json_response(StatusCode::CREATED, &reply)
        }
        Ok(other) => ApiError::Internal(format!("key not created: {other:?}")).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /admin/keys/{key_id}`.
pub(crate) async fn revoke(state: &AppState, key_id: &str) -> Response {
    let cmd = Command::Keys(KeyCommand::Revoke {
        key_id: key_id.to_string(),
        now_ms: state.joblog.now_ms(),
    });
    match propose(state, cmd).await {
        Ok(CommandOutput::Keys(KeyResult::Revoked)) => {
            tracing::info!(key_id, "key revoked");
            json_response(
                StatusCode::OK,
                &json!({ "key_id": key_id, "revoked": true }),
            )
        }
        Ok(CommandOutput::Keys(KeyResult::NotFound)) => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "detail": format!("Key '{}' not found", key_id.chars().take(64).collect::<String>()) }),
        ),
        Ok(other) => ApiError::Internal(format!("unexpected {other:?}")).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /admin/webhooks/failed`: deliveries that gave up, most recent first.
pub(crate) fn failed_webhooks(state: &AppState) -> Response {
    let (failed, pending) = state.joblog.read_state(|s| {
        let failed: Vec<Value> = s
            .webhooks
            .failed()
            .take(FAILED_LISTED_MAX)
            .map(|d| {
                let failed_at = match d.state {
                    DeliveryState::Failed { at_ms } => Some(ts(at_ms)),
                    _ => None,
                };
                json!({
                    "request_id": d.request_id.as_str(),
                    "url": d.url,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "created_at": ts(d.created_at_ms),
                    "failed_at": failed_at,
                })
            })
            .collect();
        (failed, s.webhooks.pending_len())
    });
    json_response(
        StatusCode::OK,
        &json!({ "failed": failed, "pending": pending }),
    )
}

/// `POST /admin/webhooks/{request_id}/retry`: a failed delivery is owed again, due now.
pub(crate) async fn retry_webhook(state: &AppState, raw_id: &str) -> Response {
    let Ok(id) = raw_id.parse::<RequestId>() else {
        return ApiError::RequestNotFound(raw_id.chars().take(64).collect()).into_response();
    };
    let cmd = Command::Webhook(WebhookCommand::Retry {
        request_id: id.clone(),
        now_ms: state.joblog.now_ms(),
    });
    match propose(state, cmd).await {
        Ok(CommandOutput::Webhook(WebhookResult::Applied)) => json_response(
            StatusCode::ACCEPTED,
            &json!({ "request_id": id.as_str(), "status": "PENDING" }),
        ),
        Ok(CommandOutput::Webhook(WebhookResult::Ignored)) => json_response(
            StatusCode::CONFLICT,
            &json!({ "detail": "The delivery has not failed" }),
        ),
        Ok(CommandOutput::Webhook(WebhookResult::NotFound)) => {
            ApiError::RequestNotFound(id.to_string()).into_response()
        }
        Ok(other) => ApiError::Internal(format!("unexpected {other:?}")).into_response(),
        Err(e) => e.into_response(),
    }
}
