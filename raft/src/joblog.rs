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
use tokio::task::JoinSet;

use crate::acknowledged::{Recorder, Verdict};
use crate::election::EagerCampaign;
use crate::jobs::JobTable;
use crate::placement::{Placing, SubmitPlacer};
use crate::pre_vote::PreVote;
use crate::state::ClusterState;
use crate::store::{LogStore, MachineState, StateMachine, Store};
use crate::transport::{
    serve_openraft_rpc, ForwardError, ForwardReply, ForwardResult, Network, RaftTransport, RpcKind,
};
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
    /// The data dir held a cluster member before (the node's marker kept outside the log says so):
    /// a store without membership then is lost state, and the log refuses to open instead of
    /// founding a new cluster in its place ([`JobLogError::LostState`]).
    pub held_member: bool,
    /// How long a write may wait for a leader to exist and take it (elections, forwarding retries)
    /// before the caller gets [`JobLogError::Unavailable`].
    pub write_timeout: Duration,
    /// After a write forwarded to the leader returns, how long to wait for the local replica to
    /// apply it, so that a read on this node right after sees it (read-your-writes).
    pub apply_wait: Duration,
    /// Leader heartbeat period; openraft also uses it as the AppendEntries timeout, so a mesh on
    /// slow links or loaded machines needs more than a lone node.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_ms: (u64, u64),
    /// A follower that refuses a candidate for its shorter log, having heard no leader for a
    /// whole lease, campaigns at once ([`crate::election`]); `false` leaves elections to
    /// openraft's timers alone (benchmarks compare both).
    pub eager_campaign: bool,
    /// A voter campaigns only after a majority of voters agree that no leader is heard
    /// ([`crate::pre_vote`]), so a node coming back from a cut cannot unseat a healthy leader;
    /// `false` leaves elections to openraft's own timer (benchmarks and the simulator compare).
    pub pre_vote: bool,
    /// How long one snapshot chunk may take to reach a follower; a follower farther than that
    /// round trip would restart the install forever.
    pub install_snapshot_timeout_ms: u64,
    /// A store that cannot be opened is moved aside and the log fetched from peers again: for a
    /// member that has peers to fetch from. Its acknowledged-entries record stays, so the node
    /// stays out of votes and reads until the entries are back.
    pub refetch_unreadable: bool,
}

/// Moves an unreadable store to `<dir>.damaged-<unix secs>` and starts `dir` again with only the
/// acknowledged-entries record in it. Returns where the store went.
fn set_aside(dir: &std::path::Path) -> Result<PathBuf, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = dir
        .file_name()
        .map_or_else(|| "raft".into(), |n| n.to_string_lossy().into_owned());
    let aside = dir.with_file_name(format!("{name}.damaged-{secs}"));
    std::fs::rename(dir, &aside).map_err(|e| format!("moving {} aside: {e}", dir.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for file in crate::acknowledged::FILES {
        let record = aside.join(file);
        if record.exists() {
            std::fs::copy(&record, dir.join(file))
                .map_err(|e| format!("keeping {}: {e}", record.display()))?;
        }
    }
    Ok(aside)
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
            held_member: false,
            write_timeout: Duration::from_secs(10),
            apply_wait: Duration::from_secs(5),
            heartbeat_ms: 100,
            election_timeout_ms: (400, 800),
            eager_campaign: true,
            pre_vote: true,
            // openraft's default; a lone node sends no snapshots.
            install_snapshot_timeout_ms: 200,
            refetch_unreadable: false,
        }
    }
}

/// One member of the Raft membership, as this node's replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// `BasicNode.addr`: the node's member record (see `runmesh_proto::mesh::MemberInfo`).
    pub addr: String,
    pub voter: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
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
    /// The log is shorter than what this node acknowledged, and no peer can give it back.
    #[error(
        "the Raft log in {dir} holds entries up to {holds:?} but this node acknowledged up to \
         {acknowledged}: it is damaged"
    )]
    Damaged {
        dir: String,
        holds: Option<u64>,
        acknowledged: u64,
    },
    /// The store lost what this node held (it was a member, now it has no membership).
    #[error("the Raft log in {0} is empty, but this data dir held a cluster member: the log was lost or damaged")]
    LostState(String),
}

/// Commands waiting to be batched; bounded so that a flood of clients meets backpressure.
const PROPOSAL_QUEUE_MAX: usize = 16_384;
/// Change notifications buffered per subscriber before it lags (and must re-read the table).
const CHANGES_BUFFER: usize = 8_192;

struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<Committed, JobLogError>>,
    /// Sent by a follower to this node as leader: committed here or refused, never passed on.
    forwarded: bool,
}

/// One command's output and the index of the entry that carried it.
struct Committed {
    output: CommandOutput,
    log_index: u64,
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
    proposals: Proposer,
    clock: Arc<dyn Clock>,
    store: Store,
    stopped: AtomicBool,
    placing: Placing,
    eager: Option<EagerCampaign>,
    pre_vote: Arc<PreVote>,
    /// The log lost entries this node acknowledged and has not got them back yet: it grants no
    /// vote and reports itself unhealthy.
    recovering: Arc<AtomicBool>,
}

/// Ends recovery once the state machine has applied what this node acknowledged, or has applied an
/// entry of a leader elected after the damage (a leader commits one at the start of its term, so
/// by then every entry committed before it is applied here). Entries merely back in the log are not
/// enough: a read served before they are applied would miss jobs this node had acknowledged, and
/// an entry of the term the node already had says nothing about what it lost.
fn watch_recovery(
    raft: Raft,
    me: NodeId,
    recovering: Arc<AtomicBool>,
    acknowledged: u64,
    acknowledged_term: u64,
) {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        loop {
            let caught_up = {
                let m = metrics.borrow();
                let leader_elsewhere = m.current_leader.is_some_and(|l| l != me);
                m.last_applied.is_some_and(|a| a.index >= acknowledged)
                    || (leader_elsewhere
                        && m.current_term > acknowledged_term
                        && m.last_applied
                            .is_some_and(|a| a.leader_id.term == m.current_term))
            };
            if caught_up {
                recovering.store(false, Ordering::Release);
                tracing::info!(
                    "the Raft log has every entry it acknowledged again: voting and serving"
                );
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

/// What a batch needs to commit itself, locally or at the leader.
#[derive(Clone)]
struct Committer {
    raft: Raft,
    me: NodeId,
    transport: Arc<dyn RaftTransport>,
    write_timeout: Duration,
    apply_wait: Duration,
    /// Placement at submit for the entries this node writes as leader (none in the simulator).
    placing: Option<Placing>,
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
        let store = match Store::open(&cfg.data_dir) {
            Ok(store) => store,
            Err(e) if cfg.refetch_unreadable => {
                let aside = set_aside(&cfg.data_dir).map_err(JobLogError::Storage)?;
                tracing::error!(
                    dir = %cfg.data_dir.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "the Raft store cannot be read: moved it aside; this node fetches the log \
                     from its peers again and does not vote or serve until it has every entry \
                     it acknowledged"
                );
                Store::open(&cfg.data_dir).map_err(|e| {
                    JobLogError::Storage(format!("open {}: {e}", cfg.data_dir.display()))
                })?
            }
            Err(e) => {
                return Err(JobLogError::Storage(format!(
                    "open {}: {e}",
                    cfg.data_dir.display()
                )))
            }
        };
        // What the log holds against what this replica acknowledged (crate::acknowledged).
        let (recorder, acked) = Recorder::open(&cfg.data_dir).map_err(JobLogError::Storage)?;
        let acked = acked.unwrap_or_default();
        let holds = store.last_log_index().map_err(JobLogError::Storage)?;
        let verdict = acked.check(holds);
        if let Verdict::Damaged {
            holds,
            acknowledged,
        } = verdict
        {
            tracing::error!(
                dir = %cfg.data_dir.display(),
                holds = ?holds,
                acknowledged,
                "the Raft log lost entries this node acknowledged: it does not vote or serve \
                 until it has them again from the leader"
            );
        }
        store
            .repair(acked.vote.as_ref())
            .map_err(JobLogError::Storage)?;
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let sm =
            StateMachine::open(store.clone(), changes.clone()).map_err(JobLogError::Storage)?;
        let state = sm.shared();
        let raft_config = Config {
            cluster_name: "runmesh".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms.0,
            election_timeout_max: cfg.election_timeout_ms.1,
            install_snapshot_timeout: cfg.install_snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
            max_in_snapshot_log_to_keep: 1_000,
            // With pre-vote, PreVote::run is the election timer.
            enable_elect: !cfg.pre_vote,
            ..Default::default()
        }
        .validate()
        .map_err(|e| JobLogError::Raft(e.to_string()))?;
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            Network::new(transport.clone()),
            LogStore::new(store.clone(), recorder.clone()),
            sm,
        )
        .await
        .map_err(|e| JobLogError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| JobLogError::Raft(e.to_string()))?;
        if !initialized && cfg.bootstrap_single && cfg.held_member {
            let _ = raft.shutdown().await;
            return Err(JobLogError::LostState(cfg.data_dir.display().to_string()));
        }
        let recovering = Arc::new(AtomicBool::new(false));
        if let Verdict::Damaged {
            holds,
            acknowledged,
        } = verdict
        {
            let others = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .any(|(id, _)| *id != cfg.node_id);
            if !others && cfg.bootstrap_single {
                let _ = raft.shutdown().await;
                return Err(JobLogError::Damaged {
                    dir: cfg.data_dir.display().to_string(),
                    holds,
                    acknowledged,
                });
            }
            recovering.store(true, Ordering::Release);
            let acknowledged_term = acked.vote.as_ref().map_or(0, |v| v.leader_id.term);
            watch_recovery(
                raft.clone(),
                cfg.node_id,
                recovering.clone(),
                acknowledged,
                acknowledged_term,
            );
        }
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

        let pre_vote = Arc::new(PreVote::new(cfg.election_timeout_ms, recovering.clone()));
        if cfg.pre_vote {
            tokio::spawn(
                pre_vote
                    .clone()
                    .run(raft.clone(), cfg.node_id, transport.clone()),
            );
        }
        let placing = Placing::new(state.clone(), clock.clone());
        let (proposals, run) = Proposer::new(
            raft.clone(),
            transport,
            ProposerConfig {
                node_id: cfg.node_id,
                batch_max: cfg.batch_max,
                batches_in_flight_max: cfg.batches_in_flight_max,
                write_timeout: cfg.write_timeout,
                apply_wait: cfg.apply_wait,
            },
            Some(placing.clone()),
        );
        tokio::spawn(run);
        Ok(Self {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                raft,
                state,
                changes,
                proposals,
                clock,
                store,
                stopped: AtomicBool::new(false),
                placing,
                eager: cfg.eager_campaign.then(|| {
                    EagerCampaign::new(cfg.election_timeout_ms.1, cfg.election_timeout_ms.0)
                }),
                pre_vote,
                recovering,
            }),
        })
    }

    /// Whether the log is still getting back entries it acknowledged (see [`Self::is_healthy`]).
    pub fn is_recovering(&self) -> bool {
        self.inner.recovering.load(Ordering::Acquire)
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
        self.inner.proposals.propose(cmd).await
    }

    /// Installs the scheduler that places submits in the entry that carries them while this node
    /// leads (see [`crate::placement`]); without one every submit queues for the dispatcher.
    pub fn set_placer(&self, placer: Option<Arc<dyn SubmitPlacer>>) {
        self.inner.placing.set(placer);
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

    /// A consistent copy of the replicated state as this replica has applied it
    /// ([`crate::backup`]). The lock is held only for a copy of the tables; encoding them (slow
    /// for a big table) happens after, so applies are not held up by it. Blocking: call it off
    /// the async runtime's threads.
    pub fn backup(&self) -> Result<crate::backup::Backup, crate::backup::BackupError> {
        let (table, applied) = {
            let st = self
                .inner
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (st.table.clone(), st.last_applied.map_or(0, |l| l.index))
        };
        crate::backup::Backup::of(&table, applied, self.inner.clock.now_ms())
    }

    /// Ids of jobs whose state changed, after the change is applied. A lagging receiver should re-read
    /// the table.
    pub fn subscribe(&self) -> broadcast::Receiver<RequestId> {
        self.inner.changes.subscribe()
    }

    /// True when a leader is known and this node can take writes.
    /// Writable (a leader is known), and holding every entry this node acknowledged.
    pub fn is_healthy(&self) -> bool {
        !self.inner.stopped.load(Ordering::Acquire)
            && !self.is_recovering()
            && self.inner.raft.metrics().borrow().current_leader.is_some()
    }

    /// The current leader, as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Waits until the log can take writes (a leader is known; a recovering node forwards them) or
    /// the timeout.
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
        tokio::time::timeout(timeout, wait).await.is_ok()
            && !self.inner.stopped.load(Ordering::Acquire)
            && self.inner.raft.metrics().borrow().current_leader.is_some()
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
            RpcKind::Vote if self.is_recovering() => {
                // A vote now could elect a leader without the entries this node forgot.
                let req: openraft::raft::VoteRequest<NodeId> =
                    codec::decode(payload).map_err(decode_err)?;
                let refused: Result<openraft::raft::VoteResponse<NodeId>, RaftError<NodeId>> =
                    Ok(openraft::raft::VoteResponse {
                        vote: req.vote,
                        vote_granted: false,
                        last_log_id: None,
                    });
                encode(codec::encode(&refused))
            }
            RpcKind::AppendEntries
            | RpcKind::Vote
            | RpcKind::InstallSnapshot
            | RpcKind::PreVote => {
                let clock = &self.inner.clock;
                serve_openraft_rpc(
                    raft,
                    self.inner.eager.as_ref(),
                    &self.inner.pre_vote,
                    || clock.now_ms(),
                    kind,
                    payload,
                )
                .await
                .map_err(|e| JobLogError::Raft(format!("bad rpc: {e}")))
            }
            RpcKind::Propose => {
                let cmds: Vec<Command> = codec::decode(payload).map_err(decode_err)?;
                if cmds.is_empty() || cmds.len() > FORWARDED_COMMANDS_MAX {
                    return Err(JobLogError::Raft(format!(
                        "bad rpc: {} forwarded commands (1..={FORWARDED_COMMANDS_MAX})",
                        cmds.len()
                    )));
                }
                // Through this node's own proposer, so that what followers forward shares entries
                // (and fsyncs) with what arrives here; placed at submit there like local writes.
                let results = self.inner.proposals.propose_forwarded(cmds).await;
                encode(codec::encode(&forward_result(results)))
            }
        }
    }

    /// The members of the cluster (voters and learners) as the local replica knows them.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// True when this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.inner.node_id)
    }

    /// Adds a node as a learner without waiting for it to catch up (it may not be reachable yet).
    /// Re-adding a member with a new record updates its record.
    pub async fn add_learner_nowait(
        &self,
        node_id: NodeId,
        raft_addr: String,
    ) -> Result<(), JobLogError> {
        self.inner
            .raft
            .add_learner(node_id, BasicNode { addr: raft_addr }, false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Takes learners out of the membership altogether (a voter must lose its seat first).
    pub async fn remove_learners(&self, ids: BTreeSet<NodeId>) -> Result<(), JobLogError> {
        self.inner
            .raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(ids), true)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// The operator's drains and removals as the local replica has applied them.
    pub fn roster(&self) -> crate::roster::RosterTable {
        self.read_state(|s| s.roster.clone())
    }

    /// Replaces a member's record (`BasicNode.addr`), e.g. when it restarts on other addresses.
    pub async fn update_member(
        &self,
        node_id: NodeId,
        raft_addr: String,
    ) -> Result<(), JobLogError> {
        let nodes = BTreeMap::from([(node_id, BasicNode { addr: raft_addr })]);
        self.inner
            .raft
            .change_membership(openraft::ChangeMembers::SetNodes(nodes), true)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// On the leader, the log index each member has matched (`None` on other nodes).
    pub fn replication(&self) -> Option<BTreeMap<NodeId, Option<u64>>> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, log)| (*id, log.as_ref().map(|l| l.index)))
                .collect()
        })
    }

    /// Index of the last entry in the local log.
    pub fn last_log_index(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().last_log_index
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

/// The reply to a follower's forwarded batch: every output, or why it must try again.
fn forward_result(results: Vec<Result<Committed, JobLogError>>) -> ForwardResult {
    let mut reply = ForwardReply {
        log_index: 0,
        outputs: Vec::with_capacity(results.len()),
    };
    for r in results {
        match r {
            Ok(c) => {
                reply.log_index = reply.log_index.max(c.log_index);
                reply.outputs.push(c.output);
            }
            // Some commands may have committed already; the sender's retry of them is harmless (a
            // repeated submit is `Duplicate`, a repeated transition is rejected as stale).
            Err(JobLogError::ForwardToLeader { leader }) => {
                return Err(ForwardError::NotLeader { leader })
            }
            Err(e) => return Err(ForwardError::Failed(e.to_string())),
        }
    }
    Ok(reply)
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

/// Most commands one forwarded RPC may carry (a follower's batch is at most `batch_max`).
const FORWARDED_COMMANDS_MAX: usize = 16_384;
/// Back-off between write attempts while there is no leader or the leader cannot be reached.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(25);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Redirects followed without sleeping (a stale leader hint, then the fresh one).
const REDIRECTS_FREE: u32 = 2;

/// What a [`Proposer`] needs besides the Raft handle and the transport.
#[derive(Clone, Debug)]
pub struct ProposerConfig {
    pub node_id: NodeId,
    /// Most commands folded into one Raft entry.
    pub batch_max: usize,
    /// Raft entries (batches) written concurrently; more callers wait and join the next batch.
    pub batches_in_flight_max: usize,
    /// How long a batch may look for a leader before its callers get [`JobLogError::Unavailable`].
    pub write_timeout: Duration,
    /// After a write forwarded to the leader returns, how long to wait for the local replica.
    pub apply_wait: Duration,
}

/// Group commit: folds concurrent commands into Raft entries and commits each batch locally when
/// this node leads, else forwards it to the leader. [`JobLog`] writes through one; the simulator
/// drives each simulated node's writes through the same, so both batch and retry alike.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Returns the handle and the task that runs it, for the caller to spawn. The task ends when
    /// every handle is gone and the batches in flight are done; aborting it (a simulated crash)
    /// drops the batches in flight, whose callers then get [`JobLogError::Unavailable`].
    pub fn new(
        raft: Raft,
        transport: Arc<dyn RaftTransport>,
        cfg: ProposerConfig,
        placing: Option<Placing>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        let committer = Committer {
            raft,
            me: cfg.node_id,
            transport,
            write_timeout: cfg.write_timeout,
            apply_wait: cfg.apply_wait,
            placing,
        };
        let run = run_proposer(
            committer,
            rx,
            cfg.batch_max.max(1),
            cfg.batches_in_flight_max.max(1),
        );
        (Self { tx }, run)
    }

    /// Commits `cmd` (batched with concurrent ones) and returns what applying it did.
    pub async fn propose(&self, cmd: Command) -> Result<CommandOutput, JobLogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal {
                cmd,
                reply,
                forwarded: false,
            })
            .await
            .map_err(|_| JobLogError::Unavailable("proposer stopped".into()))?;
        rx.await
            .map_err(|_| JobLogError::Unavailable("proposal dropped".into()))?
            .map(|c| c.output)
    }

    /// Commits several commands, queued together so that they share a batch where the queue
    /// allows (the leader's dispatch round); one result per command, in order.
    pub async fn propose_all(&self, cmds: Vec<Command>) -> Vec<Result<CommandOutput, JobLogError>> {
        self.queue_all(cmds, false)
            .await
            .into_iter()
            .map(|r| r.map(|c| c.output))
            .collect()
    }

    /// A follower's forwarded batch: committed by this node while it leads, else refused with
    /// [`JobLogError::ForwardToLeader`] (no second hop; the follower re-resolves the leader).
    async fn propose_forwarded(&self, cmds: Vec<Command>) -> Vec<Result<Committed, JobLogError>> {
        self.queue_all(cmds, true).await
    }

    async fn queue_all(
        &self,
        cmds: Vec<Command>,
        forwarded: bool,
    ) -> Vec<Result<Committed, JobLogError>> {
        let mut waiting = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (reply, rx) = oneshot::channel();
            let proposal = Proposal {
                cmd,
                reply,
                forwarded,
            };
            match self.tx.send(proposal).await {
                Ok(()) => waiting.push(Some(rx)),
                Err(_) => waiting.push(None),
            }
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            out.push(match rx {
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(JobLogError::Unavailable("proposal dropped".into()))),
                None => Err(JobLogError::Unavailable("proposer stopped".into())),
            });
        }
        out
    }
}

/// Folds queued proposals into Raft entries. A batch is cut when a write slot frees up, so under load
/// batches grow by themselves and one fsync covers many commands.
async fn run_proposer(
    committer: Committer,
    mut rx: mpsc::Receiver<Proposal>,
    batch_max: usize,
    in_flight_max: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight_max));
    // Batches in flight belong to this task: dropping it (abort) drops them.
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let committer = committer.clone();
        in_flight.spawn(async move {
            let _permit = permit;
            committer.commit_batch(batch).await;
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// Answers each proposal of a batch with its output, or all of them with the batch's error.
fn reply_all(
    replies: Vec<oneshot::Sender<Result<Committed, JobLogError>>>,
    result: Result<(Vec<CommandOutput>, u64), JobLogError>,
) {
    match result {
        Ok((outputs, log_index)) => {
            let mut outputs = outputs.into_iter();
            for reply in replies {
                let r = outputs
                    .next()
                    .map(|output| Committed { output, log_index })
                    .ok_or_else(|| {
                        JobLogError::Raft("state machine returned too few results".into())
                    });
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// How one attempt at committing a batch ended.
enum Attempt {
    /// The outputs and the index of the entry.
    Done(Vec<CommandOutput>, u64),
    /// Try again at this leader (id and, when known, its member record).
    Redirect(NodeId, Option<BasicNode>),
    /// Try again after a pause (no leader, leader unreachable).
    Retry(String),
    Fail(JobLogError),
}

impl Committer {
    /// Commits a batch and answers its proposals. Forwarded proposals get one local attempt: if this
    /// node does not lead (any more), they are refused and only this node's own go on to
    /// [`Self::commit`], which finds the leader.
    async fn commit_batch(&self, batch: Vec<Proposal>) {
        let (mut cmds, mut replies, mut forwarded) = (Vec::new(), Vec::new(), Vec::new());
        for p in batch {
            cmds.push(p.cmd);
            replies.push(p.reply);
            forwarded.push(p.forwarded);
        }
        if forwarded.iter().any(|f| *f) {
            let leader = match self.local(cmds.clone()).await {
                Attempt::Done(outputs, index) => return reply_all(replies, Ok((outputs, index))),
                Attempt::Fail(e) => return reply_all(replies, Err(e)),
                Attempt::Redirect(leader, _) => Some(leader),
                Attempt::Retry(_) => None,
            };
            let mut own = (Vec::new(), Vec::new());
            for ((cmd, reply), fwd) in cmds.into_iter().zip(replies).zip(forwarded) {
                if fwd {
                    let _ = reply.send(Err(JobLogError::ForwardToLeader { leader }));
                } else {
                    own.0.push(cmd);
                    own.1.push(reply);
                }
            }
            (cmds, replies) = own;
            if cmds.is_empty() {
                return;
            }
        }
        let result = self.commit(cmds).await;
        reply_all(replies, result);
    }

    /// Commits a batch: locally when this node leads, else forwarded to the leader. Retries with a
    /// bounded back-off while a leader is being elected, up to `write_timeout`. A retried batch may
    /// have been committed by the first try (the answer was lost); the state machine makes that
    /// harmless (a repeated submit is `Duplicate`, a repeated transition is rejected as stale).
    async fn commit(&self, cmds: Vec<Command>) -> Result<(Vec<CommandOutput>, u64), JobLogError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut hint: Option<(NodeId, Option<BasicNode>)> = None;
        let mut redirects = 0u32;
        // A lone voter commits or fails for good: no clone, no retries (the foundation's path).
        if self.sole_member() {
            let (cmds, _settle) = self.place(cmds);
            return match self.raft.client_write(cmds).await {
                Ok(resp) => Ok((resp.data, resp.log_id.index)),
                Err(e) => Err(batch_error(e)),
            };
        }
        loop {
            let target = match hint.take() {
                Some(h) => Some(h),
                None => {
                    let metrics = self.raft.metrics();
                    let m = metrics.borrow();
                    m.current_leader
                        .map(|l| (l, m.membership_config.membership().get_node(&l).cloned()))
                }
            };
            let attempt = match target {
                Some((leader, node)) if leader != self.me => {
                    self.forward(leader, node, &cmds).await
                }
                _ => self.local(cmds.clone()).await,
            };
            let reason = match attempt {
                Attempt::Done(outputs, index) => return Ok((outputs, index)),
                Attempt::Fail(e) => return Err(e),
                Attempt::Redirect(leader, node) if redirects < REDIRECTS_FREE => {
                    redirects += 1;
                    hint = Some((leader, node));
                    continue;
                }
                Attempt::Redirect(leader, _) => format!("redirected to node {leader} again"),
                Attempt::Retry(reason) => reason,
            };
            let now = tokio::time::Instant::now();
            if now + backoff > deadline {
                return Err(JobLogError::Unavailable(format!(
                    "no leader took the write within {:?}: {reason}",
                    self.write_timeout
                )));
            }
            tracing::debug!(%reason, ?backoff, "write not committed yet; retrying");
            self.leader_change_or(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            redirects = 0;
        }
    }

    /// Sleeps for `backoff`, or less: until this node learns of a leader other than the one it
    /// knew (an election ended). Failover then costs the election, not the election rounded up
    /// to the next back-off step.
    async fn leader_change_or(&self, backoff: Duration) {
        let mut metrics = self.raft.metrics();
        let known = metrics.borrow_and_update().current_leader;
        let changed = async {
            loop {
                if metrics.changed().await.is_err() {
                    return std::future::pending().await;
                }
                let now = metrics.borrow_and_update().current_leader;
                if now.is_some() && now != known {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(backoff, changed).await;
    }

    fn sole_member(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let mut nodes = membership.nodes();
        matches!((nodes.next(), nodes.next()), (Some((id, _)), None) if *id == self.me)
    }

    /// Placement at submit, where this node writes the entry.
    fn place(&self, cmds: Vec<Command>) -> (Vec<Command>, Option<crate::placement::Settle>) {
        match &self.placing {
            Some(p) => {
                let (cmds, settle) = p.place(cmds);
                (cmds, Some(settle))
            }
            None => (cmds, None),
        }
    }

    async fn local(&self, cmds: Vec<Command>) -> Attempt {
        // Only the leader's placement counts; a follower's write fails below and is forwarded as a
        // plain submit, placed again by the leader.
        let (cmds, _settle) = self.place(cmds);
        match self.raft.client_write(cmds).await {
            Ok(resp) => Attempt::Done(resp.data, resp.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_id {
                Some(l) if l != self.me => Attempt::Redirect(l, f.leader_node),
                _ => Attempt::Retry("no leader".into()),
            },
            Err(RaftError::APIError(e)) => Attempt::Fail(JobLogError::Raft(e.to_string())),
            Err(RaftError::Fatal(f)) => Attempt::Fail(JobLogError::Unavailable(f.to_string())),
        }
    }

    async fn forward(&self, leader: NodeId, node: Option<BasicNode>, cmds: &[Command]) -> Attempt {
        let Some(node) = node else {
            return Attempt::Retry(format!(
                "leader {leader} is not in the local membership yet"
            ));
        };
        let payload = match codec::encode(&cmds) {
            Ok(p) => p,
            Err(e) => return Attempt::Fail(JobLogError::Raft(format!("encode forward: {e}"))),
        };
        // A leader that dies with our write in flight never answers; stop waiting as soon as this
        // node sees leadership move (an election starts), and retry at the new leader.
        let mut metrics = self.raft.metrics();
        let leader_moved = async move {
            loop {
                if metrics.borrow_and_update().current_leader != Some(leader) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        let call = self
            .transport
            .call(leader, &node.addr, RpcKind::Propose, payload);
        let reply = tokio::select! {
            r = call => match r {
                Ok(r) => r,
                Err(e) => return Attempt::Retry(format!("forward to leader {leader}: {e}")),
            },
            () = leader_moved => {
                return Attempt::Retry(format!("leader {leader} lost leadership mid-forward"));
            }
        };
        match codec::decode::<ForwardResult>(&reply) {
            Ok(Ok(reply)) if reply.outputs.len() == cmds.len() => {
                // Read-your-writes: the client that wrote through this node reads this node next.
                if let Err(e) = self
                    .raft
                    .wait(Some(self.apply_wait))
                    .applied_index_at_least(Some(reply.log_index), "forwarded write")
                    .await
                {
                    tracing::debug!(error = %e, index = reply.log_index, "local replica lags");
                }
                Attempt::Done(reply.outputs, reply.log_index)
            }
            Ok(Ok(reply)) => Attempt::Fail(JobLogError::Raft(format!(
                "leader returned {} results for {} commands",
                reply.outputs.len(),
                cmds.len()
            ))),
            Ok(Err(ForwardError::NotLeader { leader: Some(l) })) if l != leader && l != self.me => {
                let node = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .cloned();
                Attempt::Redirect(l, node)
            }
            Ok(Err(e)) => Attempt::Retry(format!("leader {leader}: {e}")),
            Err(e) => Attempt::Fail(JobLogError::Raft(format!("bad forward reply: {e}"))),
        }
    }
}

fn batch_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> JobLogError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => JobLogError::ForwardToLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(other) => JobLogError::Unavailable(other.to_string()),
        RaftError::Fatal(f) => JobLogError::Unavailable(f.to_string()),
    }
}

/// Type config re-export for users that build their own openraft calls.
pub type JobLogTypeConfig = TypeConfig;
