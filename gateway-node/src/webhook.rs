//! fal's webhook message for a finished job: the JSON body, the `X-Fal-Webhook-*` headers and the
//! Ed25519 signature over `request_id \n user_id \n timestamp \n sha256hex(body)` (contract §6).
//! Pure: the node's delivery loop calls [`message`] and sends the result.

use runmesh_proto::{JobState, Outcome};
use runmesh_raft::JobRecord;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::auth::{hex, ClusterKey, ANONYMOUS};
use crate::status::failure_of;

pub const REQUEST_ID_HEADER: &str = "x-fal-webhook-request-id";
pub const USER_ID_HEADER: &str = "x-fal-webhook-user-id";
pub const TIMESTAMP_HEADER: &str = "x-fal-webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "x-fal-webhook-signature";

/// fal's text when an output cannot be sent as JSON.
pub const PAYLOAD_ERROR: &str = "Response payload is not JSON serializable. Either return a JSON serializable object or use the queue endpoint to retrieve the response.";

/// One signed webhook POST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookMessage {
    pub body: Vec<u8>,
    /// Lower-case header names and values, `content-type` included.
    pub headers: Vec<(&'static str, String)>,
}

/// The webhook body of a finished job; `None` while it runs. Keys in sorted order, compact.
pub fn body(rec: &JobRecord) -> Option<Value> {
    let id = rec.spec.request_id.as_str();
    match &rec.state {
        JobState::Completed {
            outcome: Outcome::Output { output_json },
            ..
        } => Some(match serde_json::from_str::<Value>(output_json) {
            Ok(payload) => json!({
                "error": null,
                "gateway_request_id": id,
                "payload": payload,
                "request_id": id,
                "status": "OK",
            }),
            Err(_) => json!({
                "error": null,
                "gateway_request_id": id,
                "payload": null,
                "payload_error": PAYLOAD_ERROR,
                "request_id": id,
                "status": "OK",
            }),
        }),
        _ => {
            let failure = failure_of(rec)?;
            Some(json!({
                "error": format!("Invalid status code: {}", failure.http_status.as_u16()),
                "gateway_request_id": id,
                "payload": failure.body(),
                "request_id": id,
                "status": "ERROR",
            }))
        }
    }
}

/// The bytes a receiver verifies: `request_id\nuser_id\ntimestamp\nsha256hex(body)`.
pub fn signed_bytes(request_id: &str, user_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    format!(
        "{request_id}\n{user_id}\n{timestamp}\n{}",
        hex(&Sha256::digest(body))
    )
    .into_bytes()
}

/// The signed message for a finished job at `timestamp_s` (Unix seconds); `None` while it runs.
pub fn message(key: &ClusterKey, rec: &JobRecord, timestamp_s: u64) -> Option<WebhookMessage> {
    let body = body(rec)?.to_string().into_bytes();
    let request_id = rec.spec.request_id.as_str().to_string();
    let user_id = rec
        .spec
        .submitted_by
        .clone()
        .unwrap_or_else(|| ANONYMOUS.to_string());
    let timestamp = timestamp_s.to_string();
    let signature = hex(&key.sign(&signed_bytes(&request_id, &user_id, &timestamp, &body)));
    Some(WebhookMessage {
        body,
        headers: vec![
            ("content-type", "application/json".to_string()),
            (REQUEST_ID_HEADER, request_id),
            (USER_ID_HEADER, user_id),
            (TIMESTAMP_HEADER, timestamp),
            (SIGNATURE_HEADER, signature),
        ],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::status::tests::record;
    use runmesh_proto::{ErrorType, JobError};

    fn header<'a>(m: &'a WebhookMessage, name: &str) -> &'a str {
        &m.headers.iter().find(|(k, _)| *k == name).unwrap().1
    }

    #[test]
    fn ok_and_error_bodies_are_fal_shaped() {
        let ok = record(JobState::Completed {
            outcome: Outcome::Output {
                output_json: r#"{"a":1}"#.into(),
            },
            completed_at_ms: 2,
        });
        let b = body(&ok).unwrap();
        assert_eq!(b["status"], "OK");
        assert_eq!(b["payload"], json!({"a": 1}));
        assert_eq!(b["request_id"], b["gateway_request_id"]);
        assert!(b["error"].is_null());
        let mut err = JobError::new(ErrorType::RunnerError, "boom");
        err.http_status = 422;
        let failed = record(JobState::Completed {
            outcome: Outcome::Error(err),
            completed_at_ms: 2,
        });
        let b = body(&failed).unwrap();
        assert_eq!(b["status"], "ERROR");
        assert_eq!(b["error"], "Invalid status code: 422");
        assert_eq!(b["payload"]["detail"], "boom");
        assert!(body(&record(JobState::Queued)).is_none());
        let odd = record(JobState::Completed {
            outcome: Outcome::Output {
                output_json: "not json".into(),
            },
            completed_at_ms: 2,
        });
        let b = body(&odd).unwrap();
        assert!(b["payload"].is_null());
        assert_eq!(b["payload_error"], PAYLOAD_ERROR);
    }

    #[test]
    fn signature_verifies_against_the_jwks_key() {
        let key = ClusterKey::from_cluster_secret(&[9; 32]);
        let rec = record(JobState::Cancelled { cancelled_at_ms: 5 });
        let m = message(&key, &rec, 1_700_000_000).unwrap();
        assert_eq!(header(&m, USER_ID_HEADER), ANONYMOUS);
        assert_eq!(header(&m, TIMESTAMP_HEADER), "1700000000");
        let sig = header(&m, SIGNATURE_HEADER);
        assert_eq!(sig.len(), 128);
        let sig_bytes: Vec<u8> = (0..64)
            .map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let msg = signed_bytes(
            header(&m, REQUEST_ID_HEADER),
            header(&m, USER_ID_HEADER),
            header(&m, TIMESTAMP_HEADER),
            &m.body,
        );
        assert!(key.verify(&msg, &sig_bytes));
        assert!(!key.verify(b"other", &sig_bytes));
    }
}
