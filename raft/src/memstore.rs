//! In-memory Raft storage for the simulator: the same state machine ([`ClusterState::apply`]) as
//! the sled store, with persistence replaced by a [`MemDisk`] that outlives a simulated crash.
//!
//! sled runs background threads and touches the file system, which a deterministic single-thread
//! simulation cannot have. What a crash keeps is what sled would have flushed: the log, the vote,
//! `committed` and the last snapshot. The table itself is rebuilt on restart from the snapshot plus
//! openraft's replay of the committed log, exactly as [`crate::store`] does.

// openraft fixes the error type of every storage call; it is large, and not ours to shrink.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, StorageIOError};
use runmesh_proto::{codec, Command, CommandOutput, RequestId};

use crate::state::ClusterState;
use crate::store::{MachineState, StoredSnapshot};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote};

/// What survives a crash of one simulated node.
#[derive(Clone, Default)]
pub struct MemDisk {
    inner: Arc<Mutex<DiskData>>,
}

#[derive(Default)]
struct DiskData {
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// Encoded [`StoredSnapshot`].
    snapshot: Option<Vec<u8>>,
}

impl MemDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut DiskData) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Entries held in the log (for reports).
    pub fn log_len(&self) -> usize {
        self.with(|d| d.log.len())
    }
}

/// Applies one command to the state. The default is [`ClusterState::apply`]; the simulator wraps it
/// to observe every applied command, and its tests to inject a faulty state machine.
pub type ApplyFn = Arc<
    dyn Fn(&mut ClusterState, &LogId, Command, &mut Vec<RequestId>) -> CommandOutput + Send + Sync,
>;

/// The real state machine step, unwrapped.
pub fn plain_apply() -> ApplyFn {
    Arc::new(|state, _log_id, cmd, touched| state.apply(cmd, touched))
}

/// The Raft log and vote on a [`MemDisk`].
#[derive(Clone)]
pub struct MemLogStore {
    disk: MemDisk,
}

impl MemLogStore {
    pub fn new(disk: MemDisk) -> Self {
        Self { disk }
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(self
            .disk
            .with(|d| d.log.range((start, end)).map(|(_, e)| e.clone()).collect()))
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.disk.with(|d| {
            let last = d
                .log
                .values()
                .next_back()
                .map(|e| e.log_id)
                .or(d.last_purged);
            LogState {
                last_purged_log_id: d.last_purged,
                last_log_id: last,
            }
        }))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.disk.with(|d| d.vote = Some(*vote));
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.disk.with(|d| d.vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.disk.with(|d| d.committed = committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.disk.with(|d| d.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.disk.with(|d| {
            for entry in entries {
                d.log.insert(entry.log_id.index, entry);
            }
        });
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk.with(|d| {
            d.log.split_off(&log_id.index);
        });
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk.with(|d| {
            d.last_purged = Some(log_id);
            d.log = d.log.split_off(&(log_id.index + 1));
        });
        Ok(())
    }
}

fn sm_err(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

/// The cluster state as openraft's state machine, in memory.
pub struct MemStateMachine {
    disk: MemDisk,
    state: Arc<RwLock<MachineState>>,
    apply_fn: ApplyFn,
    snapshot_idx: u64,
}

impl MemStateMachine {
    /// Loads the last snapshot on `disk`, if any (a restart); openraft replays the log after it.
    pub fn open(disk: MemDisk, apply_fn: ApplyFn) -> Result<Self, StorageError> {
        let state = match disk.with(|d| d.snapshot.clone()) {
            Some(bytes) => {
                let snap: StoredSnapshot = codec::decode(&bytes).map_err(sm_err)?;
                MachineState::from_snapshot(snap).map_err(sm_err)?
            }
            None => MachineState::default(),
        };
        Ok(Self {
            disk,
            state: Arc::new(RwLock::new(state)),
            apply_fn,
            snapshot_idx: 0,
        })
    }

    /// The state, shared with readers.
    pub fn shared(&self) -> Arc<RwLock<MachineState>> {
        self.state.clone()
    }
}

pub struct MemSnapshotBuilder {
    disk: MemDisk,
    state: Arc<RwLock<MachineState>>,
    snapshot_idx: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for MemSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, bytes) = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .encode_snapshot(self.snapshot_idx)
            .map_err(sm_err)?;
        self.disk.with(|d| d.snapshot = Some(bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = MemSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandOutput>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut touched = Vec::new();
        let apply_fn = &self.apply_fn;
        let responses = self
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply_entries(entries, &mut touched, |table, log_id, cmd, touched| {
                apply_fn(table, log_id, cmd, touched)
            });
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_idx += 1;
        MemSnapshotBuilder {
            disk: self.disk.clone(),
            state: self.state.clone(),
            snapshot_idx: self.snapshot_idx,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let stored: StoredSnapshot = codec::decode(&bytes).map_err(sm_err)?;
        let table = ClusterState::from_snapshot_bytes(&stored.table_bytes).map_err(sm_err)?;
        {
            let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
            st.table = table;
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
        }
        let bytes = codec::encode(&StoredSnapshot {
            meta: meta.clone(),
            table_bytes: stored.table_bytes,
        })
        .map_err(sm_err)?;
        self.disk.with(|d| d.snapshot = Some(bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(bytes) = self.disk.with(|d| d.snapshot.clone()) else {
            return Ok(None);
        };
        let stored: StoredSnapshot = codec::decode(&bytes).map_err(sm_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::Duration;

    use openraft::{BasicNode, Config};

    use super::*;
    use crate::transport::{Network, NoNetwork};
    use crate::types::Raft;

    /// One node on the in-memory store: commits, then restarts from the same disk and still has it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_restarted_node_keeps_committed_commands() {
        let disk = MemDisk::new();
        let open = |disk: MemDisk| async move {
            let sm = MemStateMachine::open(disk.clone(), plain_apply()).unwrap();
            let state = sm.shared();
            let cfg = Arc::new(Config::default().validate().unwrap());
            let raft = Raft::new(
                1,
                cfg,
                Network::new(Arc::new(NoNetwork)),
                MemLogStore::new(disk),
                sm,
            )
            .await
            .unwrap();
            (raft, state)
        };
        let (raft, state) = open(disk.clone()).await;
        raft.initialize(BTreeMap::from([(1, BasicNode::default())]))
            .await
            .unwrap();
        let spec = runmesh_proto::JobSpec {
            request_id: runmesh_proto::RequestId::new_random(),
            model: runmesh_proto::ModelId::parse("runmesh/echo").unwrap(),
            input_json: "{}".into(),
            webhook_url: None,
            priority: runmesh_proto::Priority::Normal,
            start_timeout_ms: None,
            runner_hint: None,
            no_retry: false,
            mode: runmesh_proto::SubmitMode::Queue,
            submitted_by: None,
            accepted_by: 1,
            accepted_region: None,
            submitted_at_ms: 1,
        };
        let id = spec.request_id.clone();
        raft.wait(Some(Duration::from_secs(10)))
            .current_leader(1, "elected")
            .await
            .unwrap();
        raft.client_write(vec![Command::Job(runmesh_proto::JobCommand::Submit {
            spec,
        })])
        .await
        .unwrap();
        assert!(state.read().unwrap().table.jobs.get(&id).is_some());
        raft.shutdown().await.unwrap();
        drop(raft);

        let (raft, state) = open(disk).await;
        raft.wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(2), "replayed")
            .await
            .unwrap();
        assert!(state.read().unwrap().table.jobs.get(&id).is_some());
        raft.shutdown().await.unwrap();
    }
}
