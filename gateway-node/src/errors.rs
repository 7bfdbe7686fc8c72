//! fal-shaped error responses. Every error the gateway itself raises is one [`ApiError`]; errors of
//! jobs (what an app failed with) are rendered by [`crate::status`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use runmesh_proto::fal::FieldError;
use runmesh_proto::RequestId;
use serde_json::{json, Value};

pub const REQUEST_ID_HEADER: &str = "x-fal-request-id";
pub const ERROR_TYPE_HEADER: &str = "x-fal-error-type";
pub const TIMEOUT_TYPE_HEADER: &str = "x-fal-request-timeout-type";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: the endpoint id names no app this node knows.
    #[error("application {0:?} not found")]
    ModelNotFound(String),
    /// 404: no such request (or it belongs to another app).
    #[error("request {0:?} not found")]
    RequestNotFound(String),
    /// 404: no route.
    #[error("not found")]
    NotFound,
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// 422 with a FastAPI-style `detail` array.
    #[error("invalid request: {0:?}")]
    Validation(Vec<FieldError>),
    /// 413.
    #[error("request body larger than {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    /// 429: `fal_max_queue_length` reached.
    #[error("queue full: {queued} requests waiting, limit {limit}")]
    QueueFull { queued: usize, limit: u64 },
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 503: the job log cannot take the request now; nothing was accepted.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ModelNotFound(_) | Self::RequestNotFound(_) | Self::NotFound => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body: `{"detail": [...]}` for validation, `{"detail": "..."}` otherwise.
    pub fn body(&self) -> Value {
        match self {
            Self::Validation(fields) => json!({ "detail": fields }),
            Self::ModelNotFound(path) => {
                json!({ "detail": format!("Application '{path}' not found") })
            }
            Self::RequestNotFound(id) => json!({ "detail": format!("Request '{id}' not found") }),
            Self::NotFound => json!({ "detail": "Not Found" }),
            Self::MethodNotAllowed { .. } => json!({ "detail": "Method Not Allowed" }),
            Self::PayloadTooLarge { limit_bytes } => json!({
                "detail": format!("Request body is too large (limit {limit_bytes} bytes)"),
                "error_type": "bad_request",
            }),
            Self::QueueFull { queued, limit } => json!({
                "detail": format!("Queue is full: {queued} requests waiting (fal_max_queue_length={limit})"),
            }),
            Self::BadRequest(msg) => json!({ "detail": msg, "error_type": "bad_request" }),
            Self::Unavailable(msg) => json!({ "detail": msg, "error_type": "internal_error" }),
            Self::Internal(msg) => json!({ "detail": msg, "error_type": "internal_error" }),
        }
    }

    /// One-field 422, the common case of a bad header or query parameter.
    pub fn field(loc: &[&str], msg: impl Into<String>, kind: &str) -> Self {
        Self::Validation(vec![FieldError {
            loc: loc.iter().map(|s| s.to_string()).collect(),
            msg: msg.into(),
            kind: kind.to_string(),
        }])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status(), &self.body());
        if let Self::MethodNotAllowed { allow } = self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// A JSON response from a value.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    json_text_response(status, body.to_string())
}

/// A JSON response from JSON text (stored outputs go out byte for byte).
pub fn json_text_response(status: StatusCode, text: String) -> Response {
    let mut resp = (status, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Sets `x-fal-request-id` (the envelope fills it in for responses that name no job).
pub fn with_request_id(mut resp: Response, id: &RequestId) -> Response {
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_are_detail_arrays() {
        let e = ApiError::field(&["header", "x-fal-queue-priority"], "bad", "enum");
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.body(),
            json!({"detail": [{"loc": ["header", "x-fal-queue-priority"], "msg": "bad", "type": "enum"}]})
        );
    }

    #[test]
    fn every_error_has_a_detail_and_json_content_type() {
        let all = [
            ApiError::ModelNotFound("a/b".into()),
            ApiError::RequestNotFound("x".into()),
            ApiError::NotFound,
            ApiError::MethodNotAllowed { allow: "GET" },
            ApiError::PayloadTooLarge { limit_bytes: 1 },
            ApiError::QueueFull {
                queued: 2,
                limit: 2,
            },
            ApiError::BadRequest("b".into()),
            ApiError::Unavailable("u".into()),
            ApiError::Internal("i".into()),
        ];
        for e in all {
            assert!(e.body().get("detail").is_some(), "{e:?}");
            let status = e.status();
            let resp = e.into_response();
            assert_eq!(resp.status(), status);
            assert_eq!(
                resp.headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                Some("application/json")
            );
        }
    }

    #[test]
    fn method_not_allowed_names_the_allowed_method() {
        let resp = ApiError::MethodNotAllowed { allow: "PUT" }.into_response();
        assert_eq!(
            resp.headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok()),
            Some("PUT")
        );
    }
}
