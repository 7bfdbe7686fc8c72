//! The whole replicated state: one table per subsystem, each fed its own commands.

use runmesh_proto::{codec, Command, CommandOutput, ProtoError, RequestId};
use serde::{Deserialize, Serialize};

use crate::jobs::JobTable;

#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub jobs: JobTable,
}

/// Snapshot layout: each table encodes itself.
#[derive(Serialize, Deserialize)]
struct StateSnapshot {
    jobs: Vec<u8>,
}

impl ClusterState {
    /// Applies one command. `touched` collects job ids whose state changed, for watchers.
    pub fn apply(&mut self, cmd: Command, touched: &mut Vec<RequestId>) -> CommandOutput {
        match cmd {
            Command::Job(cmd) => CommandOutput::Job(self.jobs.apply(cmd, touched)),
        }
    }

    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, ProtoError> {
        codec::encode(&StateSnapshot {
            jobs: self.jobs.to_snapshot_bytes()?,
        })
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let snap: StateSnapshot = codec::decode(bytes)?;
        Ok(Self {
            jobs: JobTable::from_snapshot_bytes(&snap.jobs)?,
        })
    }
}
