//! sled-backed Raft storage: the log (durable before openraft hears it is), the vote, and the job
//! table as state machine.
//!
//! The state machine lives in memory and is made durable by snapshots: on start it is loaded from the
//! last snapshot, and openraft re-applies the committed log after it (we persist `committed`), so a
//! node that restarts sees every committed job before it serves.

// openraft fixes the error type of every storage call; it is large, and not ours to shrink.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use runmesh_proto::{codec, Command, CommandOutput, ProtoError, RequestId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::acknowledged::Recorder;
use crate::state::ClusterState;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Opens the sled database and the trees the store uses.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    dir: std::path::PathBuf,
}

impl Store {
    pub fn open(path: &std::path::Path) -> Result<Self, sled::Error> {
        let db = sled::Config::new().path(path).open()?;
        let logs = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        Ok(Self {
            db,
            logs,
            meta,
            dir: path.to_path_buf(),
        })
    }

    /// The directory of the database (and of the [`crate::acknowledged`] record beside it).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Index of the last entry the log holds (its purge point when it holds none).
    pub fn last_log_index(&self) -> Result<Option<u64>, String> {
        match self.logs.last().map_err(|e| e.to_string())? {
            Some((_, bytes)) => Ok(Some(
                codec::decode::<Entry>(&bytes)
                    .map_err(|e| e.to_string())?
                    .log_id
                    .index,
            )),
            None => Ok(self
                .get_meta::<Option<LogId>>(KEY_LAST_PURGED)?
                .flatten()
                .map(|l| l.index)),
        }
    }

    /// Makes the store agree with what this replica acknowledged once its log lost entries: the
    /// recorded vote when the stored one is older (never vote twice in a term), and a committed
    /// index no further than the log now reaches (openraft re-applies up to it on start).
    pub fn repair(&self, acked_vote: Option<&Vote>) -> Result<(), String> {
        if let Some(v) = acked_vote {
            let stored: Option<Vote> = self.get_meta(KEY_VOTE)?;
            if stored.as_ref().is_none_or(|s| s < v) {
                self.put_meta(KEY_VOTE, v)?;
            }
        }
        let committed: Option<LogId> = self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten();
        let last = self.last_log_index()?;
        if committed.is_some_and(|c| last.is_none_or(|l| c.index > l)) {
            self.put_meta(KEY_COMMITTED, &None::<LogId>)?;
        }
        self.db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, String> {
        match self.meta.get(key).map_err(|e| e.to_string())? {
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), String> {
        let bytes = codec::encode(value).map_err(|e| e.to_string())?;
        self.meta.insert(key, bytes).map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn flush(&self) -> Result<usize, sled::Error> {
        self.db.flush()
    }

    /// Makes an empty store start from `state` (a restored backup): its snapshot, a log purged up
    /// to `at` (so it continues after it), `vote`, and `at` committed. Durable when it returns.
    pub(crate) fn seed(&self, state: &MachineState, vote: &Vote, at: LogId) -> Result<(), String> {
        let (_, bytes) = state.encode_snapshot(0).map_err(|e| e.to_string())?;
        self.meta
            .insert(KEY_SNAPSHOT, bytes)
            .map_err(|e| e.to_string())?;
        self.put_meta(KEY_VOTE, vote)?;
        self.put_meta(KEY_LAST_PURGED, &Some(at))?;
        self.put_meta(KEY_COMMITTED, &Some(at))?;
        self.db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn io_read(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}

fn io_write(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

/// The Raft log and vote in sled. Entry keys are big-endian indexes so that sled's order is log order.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    acked: Arc<Recorder>,
}

impl LogStore {
    /// `acked` records what this log makes durable ([`crate::acknowledged`]).
    pub fn new(store: Store, acked: Arc<Recorder>) -> Self {
        Self { store, acked }
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        // Stored as `Option<LogId>` (see `purge`), so read as one.
        Ok(self
            .store
            .get_meta::<Option<LogId>>(KEY_LAST_PURGED)
            .map_err(io_read)?
            .flatten())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let iter = match end {
            Some(end) => self
                .store
                .logs
                .range(start.to_be_bytes()..end.to_be_bytes()),
            None => self.store.logs.range(start.to_be_bytes()..),
        };
        let mut entries = Vec::new();
        for item in iter {
            let (_, bytes) = item.map_err(io_read)?;
            entries.push(codec::decode::<Entry>(&bytes).map_err(io_read)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last = match self.store.logs.last().map_err(io_read)? {
            Some((_, bytes)) => Some(codec::decode::<Entry>(&bytes).map_err(io_read)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.store
            .put_meta(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::error(e)))?;
        // A vote must be on disk before it is acted on.
        self.store
            .db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.acked
            .voted(vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.store
            .get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(openraft::AnyError::error(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only means openraft re-commits those entries after an election.
        self.store
            .put_meta(KEY_COMMITTED, &committed)
            .map_err(io_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .store
            .get_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(io_read)?
            .flatten())
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
        let mut batch = sled::Batch::default();
        let mut last = None;
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(io_write)?;
            batch.insert(&entry.log_id.index.to_be_bytes(), bytes);
            last = Some(entry.log_id.index);
        }
        self.store.logs.apply_batch(batch).map_err(io_write)?;
        // One fsync per appended batch: this is the group commit that makes a write durable.
        let flushed = match (self.store.db.flush_async().await, last) {
            (Ok(_), Some(last)) => {
                // Recorded before openraft hears the entries are durable (and so before anyone
                // is told they are acknowledged): damage to any acknowledged entry is seen on
                // start.
                self.acked.appended(last);
                let acked = self.acked.clone();
                match tokio::task::spawn_blocking(move || acked.write_if_changed()).await {
                    Ok(written) => written,
                    Err(e) => Err(std::io::Error::other(e)),
                }
            }
            (flushed, _) => flushed.map(|_| ()).map_err(std::io::Error::other),
        };
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let keys: Vec<_> = self
            .store
            .logs
            .range(log_id.index.to_be_bytes()..)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io_write)?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.store.logs.apply_batch(batch).map_err(io_write)?;
        self.store.db.flush_async().await.map_err(io_write)?;
        self.acked.truncated(log_id.index).map_err(io_write)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first, so a crash between the two steps leaves no hole.
        self.store
            .put_meta(KEY_LAST_PURGED, &Some(log_id))
            .map_err(io_write)?;
        self.store.db.flush_async().await.map_err(io_write)?;
        let keys: Vec<_> = self
            .store
            .logs
            .range(..=log_id.index.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io_write)?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.store.logs.apply_batch(batch).map_err(io_write)?;
        Ok(())
    }
}

/// What the state machine holds besides the table: how far it has applied.
#[derive(Default)]
pub struct MachineState {
    pub table: ClusterState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The snapshot as stored and sent: applied position, membership and the encoded table.
/// Shared by the sled store and the simulator's in-memory store, so both read each other's bytes.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) table_bytes: Vec<u8>,
}

impl MachineState {
    /// The state a stored snapshot describes.
    pub(crate) fn from_snapshot(snap: StoredSnapshot) -> Result<Self, ProtoError> {
        Ok(Self {
            table: ClusterState::from_snapshot_bytes(&snap.table_bytes)?,
            last_applied: snap.meta.last_log_id,
            membership: snap.meta.last_membership,
        })
    }

    /// Encodes the state as a snapshot; `snapshot_idx` tells apart snapshots of one position.
    pub(crate) fn encode_snapshot(
        &self,
        snapshot_idx: u64,
    ) -> Result<(SnapshotMeta, Vec<u8>), ProtoError> {
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, snapshot_idx),
            None => format!("--{snapshot_idx}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let bytes = codec::encode(&StoredSnapshot {
            meta: meta.clone(),
            table_bytes: self.table.to_snapshot_bytes()?,
        })?;
        Ok((meta, bytes))
    }

    /// Applies committed entries in order, each command through `apply_cmd`, and records the applied
    /// position and membership. Returns one output list per entry.
    pub(crate) fn apply_entries(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
        touched: &mut Vec<RequestId>,
        mut apply_cmd: impl FnMut(
            &mut ClusterState,
            &LogId,
            Command,
            &mut Vec<RequestId>,
        ) -> CommandOutput,
    ) -> Vec<Vec<CommandOutput>> {
        let mut responses = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Vec::new()),
                EntryPayload::Normal(cmds) => {
                    let results = cmds
                        .into_iter()
                        .map(|cmd| apply_cmd(&mut self.table, &entry.log_id, cmd, touched))
                        .collect();
                    responses.push(results);
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(Vec::new());
                }
            }
        }
        responses
    }
}

/// The job table as openraft's state machine. The table is shared with readers through `state`.
pub struct StateMachine {
    store: Store,
    pub(crate) state: Arc<RwLock<MachineState>>,
    changes: broadcast::Sender<RequestId>,
    snapshot_idx: u64,
}

impl StateMachine {
    /// Loads the last snapshot, if any.
    pub fn open(store: Store, changes: broadcast::Sender<RequestId>) -> Result<Self, String> {
        let state = match store.get_meta::<StoredSnapshot>(KEY_SNAPSHOT)? {
            Some(snap) => MachineState::from_snapshot(snap).map_err(|e| e.to_string())?,
            None => MachineState::default(),
        };
        Ok(Self {
            store,
            state: Arc::new(RwLock::new(state)),
            changes,
            snapshot_idx: 0,
        })
    }

    pub fn shared(&self) -> Arc<RwLock<MachineState>> {
        self.state.clone()
    }
}

fn sm_read_err(e: impl ToString) -> StorageError {
    StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn sm_write_err(e: impl ToString) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

/// Builds a snapshot from a copy of the table taken under the lock.
pub struct SnapshotBuilder {
    store: Store,
    state: Arc<RwLock<MachineState>>,
    snapshot_idx: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, bytes) = self
            .state
            .read()
            .map_err(sm_read_err)?
            .encode_snapshot(self.snapshot_idx)
            .map_err(sm_read_err)?;
        self.store
            .meta
            .insert(KEY_SNAPSHOT, bytes.clone())
            .map_err(sm_write_err)?;
        self.store.db.flush_async().await.map_err(sm_write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(std::io::Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.state.read().map_err(sm_read_err)?;
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<runmesh_proto::CommandOutput>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut touched = Vec::new();
        let responses = self.state.write().map_err(sm_write_err)?.apply_entries(
            entries,
            &mut touched,
            |table, _, cmd, touched| table.apply(cmd, touched),
        );
        for id in touched {
            // No receivers is fine: nobody is watching.
            let _ = self.changes.send(id);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_idx += 1;
        SnapshotBuilder {
            store: self.store.clone(),
            state: self.state.clone(),
            snapshot_idx: self.snapshot_idx,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<std::io::Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let stored: StoredSnapshot = codec::decode(&bytes).map_err(sm_write_err)?;
        let table = ClusterState::from_snapshot_bytes(&stored.table_bytes).map_err(sm_write_err)?;
        let ids: Vec<RequestId> = table
            .jobs
            .iter()
            .map(|r| r.spec.request_id.clone())
            .collect();
        {
            let mut st = self.state.write().map_err(sm_write_err)?;
            st.table = table;
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            table_bytes: stored.table_bytes,
        };
        let bytes = codec::encode(&stored).map_err(sm_write_err)?;
        self.store
            .meta
            .insert(KEY_SNAPSHOT, bytes)
            .map_err(sm_write_err)?;
        self.store.db.flush_async().await.map_err(sm_write_err)?;
        for id in ids {
            let _ = self.changes.send(id);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(bytes) = self.store.meta.get(KEY_SNAPSHOT).map_err(sm_read_err)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = codec::decode(&bytes).map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(std::io::Cursor::new(bytes.to_vec())),
        }))
    }
}
