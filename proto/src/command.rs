//! A Raft entry carries a batch of [`Command`]s. Each subsystem of the replicated state has its own
//! command enum (jobs today; keys, webhooks and membership join as variants), so the state machine
//! dispatches on the outer variant and each table stays in its own module.

use serde::{Deserialize, Serialize};

use crate::auth::{KeyCommand, KeyResult};
use crate::idempotency::{IdempotencyCommand, IdempotencyResult};
use crate::job::{CommandResult, JobCommand};
use crate::roster::{RosterCommand, RosterResult};
use crate::webhook::{WebhookCommand, WebhookResult};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Job(JobCommand),
    /// API keys and the cluster secret (proto/src/auth.rs).
    Keys(KeyCommand),
    /// Webhook delivery attempts (proto/src/webhook.rs).
    Webhook(WebhookCommand),
    /// `Idempotency-Key` claims (proto/src/idempotency.rs).
    Idempotency(IdempotencyCommand),
    /// Drained and removed members (proto/src/roster.rs). Last, so that older variants keep their
    /// encoded numbers.
    Roster(RosterCommand),
}

/// What applying one [`Command`] did; the variant matches the command's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandOutput {
    Job(CommandResult),
    Keys(KeyResult),
    Webhook(WebhookResult),
    Idempotency(IdempotencyResult),
    Roster(RosterResult),
}
