//! [`JobLog`]: the node's handle on the replicated job log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use runmesh_proto::{
    codec, Clock, Command, CommandOutput, CommandResult, JobCommand, NodeId, RequestId,
};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

use crate::jobs::JobTable;
use crate::state::ClusterState;
use crate::store::{LogStore, MachineState, StateMachine, Store};
use crate::transport::{Network, RaftTransport, RpcKind};
use crate::types::{Raft, TypeConfig};

#[derive(Clone, Debug)]
pub struct JobLogConfig {
    pub node_id: NodeId,
    /// Directory of the sled database (created when missing).
    pub data_dir: PathBuf,
    /// Address other nodes reach this node's Raft RPC at (unused by a single node).
    pub raft_addr: String,
    /// Most commands folded into one Raft entry (group commit).
    pub batch_max: usize,
    /// Raft entries (batches) written concurrently; more callers wait and join the next batch.
    pub batches_in_flight_max: usize,
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
            batches_in_flight_max: 4,
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

/// Commands waiting to be batched; bounded so that a flood of clients meets backpressure.
const PROPOSAL_QUEUE_MAX: usize = 16_384;
/// Change notifications buffered per subscriber before it lags (and must re-read the table).
const CHANGES_BUFFER: usize = 8_192;

struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandOutput, JobLogError>>,
}

/// Cheap to clone; all clones share one Raft instance and one table.
#[derive(Clone)]
pub struct JobLog {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    raft: Raft,
    state: Arc<RwLock<MachineState>>,
    changes: broadcast::Sender<RequestId>,
    proposals: mpsc::Sender<Proposal>,
    clock: Arc<dyn Clock>,
    store: Store,
    stopped: AtomicBool,
}

impl JobLog {
    /// Opens (or creates) the log in `cfg.data_dir`, replays it, and with `bootstrap_single` forms a
    /// one-member cluster on first start.
    pub async fn open(
        cfg: JobLogConfig,
        clock: Arc<dyn Clock>,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Self, JobLogError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| JobLogError::Storage(format!("{}: {e}", cfg.data_dir.display())))?;
        let store = Store::open(&cfg.data_dir)
            .map_err(|e| JobLogError::Storage(format!("open {}: {e}", cfg.data_dir.display())))?;
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let sm =
            StateMachine::open(store.clone(), changes.clone()).map_err(JobLogError::Storage)?;
        let state = sm.shared();
        let raft_config = Config {
            cluster_name: "runmesh".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| JobLogError::Raft(e.to_string()))?;
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            Network::new(transport),
            LogStore::new(store.clone()),
            sm,
        )
        .await
        .map_err(|e| JobLogError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| JobLogError::Raft(e.to_string()))?;
        if !initialized && cfg.bootstrap_single {
            let members = BTreeMap::from([(
                cfg.node_id,
                BasicNode {
                    addr: cfg.raft_addr.clone(),
                },
            )]);
            raft.initialize(members)
                .await
                .map_err(|e| JobLogError::Raft(e.to_string()))?;
        } else if initialized && Self::sole_voter(&state, cfg.node_id) {
            // Nobody else can win an election: take leadership now instead of after a timeout.
            let _ = raft.trigger().elect().await;
        }

        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        tokio::spawn(run_proposer(
            raft.clone(),
            rx,
            cfg.batch_max.max(1),
            cfg.batches_in_flight_max.max(1),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                raft,
                state,
                changes,
                proposals: tx,
                clock,
                store,
                stopped: AtomicBool::new(false),
            }),
        })
    }

    fn sole_voter(state: &RwLock<MachineState>, me: NodeId) -> bool {
        let Ok(st) = state.read() else { return false };
        let voters: BTreeSet<NodeId> = st.membership.membership().voter_ids().collect();
        voters.len() == 1 && voters.contains(&me)
    }

    /// Commits `cmd` through Raft and applies it; returns what applying it did. Concurrent calls are
    /// folded into one Raft entry (group commit).
    pub async fn propose(&self, cmd: JobCommand) -> Result<CommandResult, JobLogError> {
        match self.propose_command(Command::Job(cmd)).await? {
            CommandOutput::Job(r) => Ok(r),
            #[allow(unreachable_patterns)]
            other => Err(JobLogError::Raft(format!("unexpected output {other:?}"))),
        }
    }

    /// Commits any [`Command`] through Raft (batched with others) and returns its output.
    pub async fn propose_command(&self, cmd: Command) -> Result<CommandOutput, JobLogError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .proposals
            .send(Proposal { cmd, reply })
            .await
            .map_err(|_| JobLogError::Unavailable("proposer stopped".into()))?;
        rx.await
            .map_err(|_| JobLogError::Unavailable("proposal dropped".into()))?
    }

    /// The clock commands are stamped with.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Reads the local job table (reflects every command this node has applied).
    pub fn read<R>(&self, f: impl FnOnce(&JobTable) -> R) -> R {
        // A poisoned lock means a panic while applying; the table itself is still the last state
        // openraft handed us, so reading it is the most useful thing to do.
        let st = self
            .inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&st.table.jobs)
    }

    /// Reads the whole local replicated state (jobs and every other table).
    pub fn read_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        let st = self
            .inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&st.table)
    }

    /// Ids of jobs whose state changed, after the change is applied. A lagging receiver should re-read
    /// the table.
    pub fn subscribe(&self) -> broadcast::Receiver<RequestId> {
        self.inner.changes.subscribe()
    }

    /// True when a leader is known and this node can take writes.
    pub fn is_healthy(&self) -> bool {
        !self.inner.stopped.load(Ordering::Acquire)
            && self.inner.raft.metrics().borrow().current_leader.is_some()
    }

    /// The current leader, as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Waits until [`Self::is_healthy`] or the timeout.
    pub async fn wait_healthy(&self, timeout: Duration) -> bool {
        let mut metrics = self.inner.raft.metrics();
        let wait = async {
            loop {
                if metrics.borrow().current_leader.is_some() {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && self.is_healthy()
    }

    /// The openraft handle, for membership changes and metrics.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Adds a node as a learner (it receives the log, does not vote).
    pub async fn add_learner(&self, node_id: NodeId, raft_addr: String) -> Result<(), JobLogError> {
        self.inner
            .raft
            .add_learner(node_id, BasicNode { addr: raft_addr }, true)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Makes exactly `voters` the voting members; other members stay learners.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), JobLogError> {
        self.inner
            .raft
            .change_membership(voters, true)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Serves one Raft RPC that arrived from a peer through the transport: decode, hand to openraft,
    /// encode the reply (errors included, so the sender sees them as remote errors).
    pub async fn handle_rpc(&self, kind: RpcKind, payload: &[u8]) -> Result<Vec<u8>, JobLogError> {
        let raft = &self.inner.raft;
        let decode_err = |e: runmesh_proto::ProtoError| JobLogError::Raft(format!("bad rpc: {e}"));
        let encode = |r: Result<Vec<u8>, runmesh_proto::ProtoError>| {
            r.map_err(|e| JobLogError::Raft(format!("encode rpc reply: {e}")))
        };
        match kind {
            RpcKind::AppendEntries => {
                let req = codec::decode(payload).map_err(decode_err)?;
                encode(codec::encode(&raft.append_entries(req).await))
            }
            RpcKind::Vote => {
                let req = codec::decode(payload).map_err(decode_err)?;
                encode(codec::encode(&raft.vote(req).await))
            }
            RpcKind::InstallSnapshot => {
                let req = codec::decode(payload).map_err(decode_err)?;
                encode(codec::encode(&raft.install_snapshot(req).await))
            }
        }
    }

    /// Takes a snapshot now (it also happens by itself every `snapshot_every_entries`).
    pub async fn snapshot(&self) -> Result<(), JobLogError> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| JobLogError::Raft(e.to_string()))
    }

    /// Stops Raft and flushes the store.
    pub async fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.inner.store.flush() {
            tracing::warn!(error = %e, "flushing the job log store");
        }
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> JobLogError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => JobLogError::ForwardToLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(other) => JobLogError::Raft(other.to_string()),
        RaftError::Fatal(f) => JobLogError::Unavailable(f.to_string()),
    }
}

/// Folds queued proposals into Raft entries. A batch is cut when a write slot frees up, so under load
/// batches grow by themselves and one fsync covers many commands.
async fn run_proposer(
    raft: Raft,
    mut rx: mpsc::Receiver<Proposal>,
    batch_max: usize,
    in_flight_max: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight_max));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (cmds, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            match raft.client_write(cmds).await {
                Ok(resp) => {
                    let mut results = resp.data.into_iter();
                    for reply in replies {
                        let r = results.next().ok_or_else(|| {
                            JobLogError::Raft("state machine returned too few results".into())
                        });
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let leader = match &e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            Some(f.leader_id)
                        }
                        _ => None,
                    };
                    for reply in replies {
                        let err = match leader {
                            Some(leader) => JobLogError::ForwardToLeader { leader },
                            None => JobLogError::Unavailable(msg.clone()),
                        };
                        let _ = reply.send(Err(err));
                    }
                }
            }
        });
    }
}

/// Type config re-export for users that build their own openraft calls.
pub type JobLogTypeConfig = TypeConfig;
