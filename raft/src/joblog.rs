//! [`JobLog`]: the node's handle on the replicated job log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runmesh_proto::{Clock, CommandResult, JobCommand, NodeId, RequestId};
use tokio::sync::broadcast;

use crate::jobs::JobTable;
use crate::transport::RaftTransport;

#[derive(Clone, Debug)]
pub struct JobLogConfig {
    pub node_id: NodeId,
    /// Directory of the sled database (created when missing).
    pub data_dir: PathBuf,
    /// Address other nodes reach this node's Raft RPC at (unused by a single node).
    pub raft_addr: String,
    /// Most commands folded into one Raft entry (group commit).
    pub batch_max: usize,
    /// Take a snapshot (and purge the log before it) after this many entries.
    pub snapshot_every_entries: u64,
    /// Form a one-member cluster when the store holds no membership yet.
    pub bootstrap_single: bool,
}

impl JobLogConfig {
    pub fn single_node(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id: 1,
            data_dir: data_dir.into(),
            raft_addr: String::new(),
            batch_max: 512,
            snapshot_every_entries: 10_000,
            bootstrap_single: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobLogError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    /// This node is not the leader; the caller may retry at the leader.
    #[error("not the leader (leader: {leader:?})")]
    ForwardToLeader { leader: Option<NodeId> },
    /// The log is shutting down or not ready to take writes.
    #[error("job log unavailable: {0}")]
    Unavailable(String),
}

/// Cheap to clone; all clones share one Raft instance and one table.
#[derive(Clone)]
pub struct JobLog {
    pub(crate) inner: Arc<crate::joblog::Inner>,
}

pub(crate) struct Inner {
    _todo: (),
}

impl JobLog {
    /// Opens (or creates) the log in `cfg.data_dir`, replays it, and with `bootstrap_single` forms a
    /// one-member cluster on first start. Returns once the node can accept writes or after `ready_timeout`.
    pub async fn open(
        _cfg: JobLogConfig,
        _clock: Arc<dyn Clock>,
        _transport: Arc<dyn RaftTransport>,
    ) -> Result<Self, JobLogError> {
        todo!()
    }

    /// Commits `cmd` through Raft and applies it; returns what applying it did. Concurrent calls are
    /// folded into one Raft entry (group commit).
    pub async fn propose(&self, _cmd: JobCommand) -> Result<CommandResult, JobLogError> {
        todo!()
    }

    /// The clock commands are stamped with.
    pub fn now_ms(&self) -> u64 {
        todo!()
    }

    pub fn node_id(&self) -> NodeId {
        todo!()
    }

    /// Reads the local job table (reflects every command this node has applied).
    pub fn read<R>(&self, _f: impl FnOnce(&JobTable) -> R) -> R {
        todo!()
    }

    /// Ids of jobs whose state changed, after the change is applied. A lagging receiver should re-read
    /// the table.
    pub fn subscribe(&self) -> broadcast::Receiver<RequestId> {
        todo!()
    }

    /// True when a leader is known and this node can take writes.
    pub fn is_healthy(&self) -> bool {
        todo!()
    }

    /// Waits until [`Self::is_healthy`] or the timeout.
    pub async fn wait_healthy(&self, _timeout: Duration) -> bool {
        todo!()
    }

    /// Flushes and stops Raft.
    pub async fn shutdown(&self) {
        todo!()
    }
}
