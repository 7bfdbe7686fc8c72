//! fal API shapes shared by the gateway and the apps.

use serde::{Deserialize, Serialize};

/// One entry of a fal/FastAPI 422 `detail` array: `{"loc": ["body", "field"], "msg": "...", "type": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    /// An error about `field` of the request body.
    pub fn body(field: &str, msg: impl Into<String>, kind: impl Into<String>) -> Self {
        let mut loc = vec!["body".to_string()];
        if !field.is_empty() {
            loc.push(field.to_string());
        }
        Self {
            loc,
            msg: msg.into(),
            kind: kind.into(),
        }
    }
}
