//! Webhook deliveries as the replicated state tracks them (Raft `Command::Webhook`).
//!
//! A delivery is created by the state machine itself when a job with a `fal_webhook` URL reaches a
//! terminal state (so a crash cannot separate "job finished" from "webhook owed"); the delivering
//! node records each attempt through these commands.

use serde::{Deserialize, Serialize};

use crate::ids::RequestId;

/// How one delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered { http_status: u16 },
    /// It failed; try again at `next_attempt_ms`.
    Retry { next_attempt_ms: u64, error: String },
    /// It failed and the retry limit is reached: the delivery is listed as failed.
    GaveUp { error: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookCommand {
    /// Attempt number `attempt` (1-based) of the delivery of `request_id` ended. Ignored unless the
    /// delivery is pending with `attempt - 1` attempts recorded, so a duplicate report is harmless.
    Attempted {
        request_id: RequestId,
        attempt: u32,
        now_ms: u64,
        outcome: AttemptOutcome,
    },
    /// Admin: put a failed delivery back in the queue, due now, with its attempt count reset.
    Retry { request_id: RequestId, now_ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookResult {
    Applied,
    /// A stale or duplicate attempt report: nothing changed.
    Ignored,
    NotFound,
}
