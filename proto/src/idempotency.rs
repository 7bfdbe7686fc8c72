//! `Idempotency-Key` claims (Raft `Command::Idempotency`): the first submission with a key, per
//! caller, owns it for a window; repeats get that submission's request id back.

use serde::{Deserialize, Serialize};

use crate::ids::RequestId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyCommand {
    /// Claim `key` (scoped by `owner`, the caller's key id or `anonymous`) for `request_id` until
    /// `expires_at_ms`. `replace` takes over a claim that still points at that request id (its
    /// submission never committed). Expired claims are dropped as `now_ms` passes them.
    Claim {
        owner: String,
        key: String,
        request_id: RequestId,
        now_ms: u64,
        expires_at_ms: u64,
        replace: Option<RequestId>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyResult {
    /// The key is now this request's.
    Claimed,
    /// The key belongs to an earlier request.
    Existing { request_id: RequestId },
}
