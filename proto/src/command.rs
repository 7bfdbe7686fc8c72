//! A Raft entry carries a batch of [`Command`]s. Each subsystem of the replicated state has its own
//! command enum (jobs today; keys, webhooks and membership join as variants), so the state machine
//! dispatches on the outer variant and each table stays in its own module.

use serde::{Deserialize, Serialize};

use crate::job::{CommandResult, JobCommand};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Job(JobCommand),
}

/// What applying one [`Command`] did; the variant matches the command's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandOutput {
    Job(CommandResult),
}
