//! The simulated cluster: N nodes in one process, each a real openraft `Raft` over the in-memory
//! store and the real `ClusterState`, talking over a simulated network, on tokio's paused clock.
//!
//! Everything runs on one current-thread runtime with a seeded scheduler RNG and a seeded Raft RNG,
//! and every random choice of the simulator comes from one seeded generator, so a seed fixes the
//! run to the byte. Shared state sits behind `std` mutexes that are never held across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use runmesh_proto::advert::{CapacityAdvert, GpuAdvert, ServedApp};
use runmesh_proto::{
    codec, AppId, Command, CommandOutput, CommandResult, ErrorType, JobCommand, JobError, JobSpec,
    JobState, ModelId, NodeId, Outcome, Priority, RequestId, SubmitMode,
};
use runmesh_raft::election::EagerCampaign;
use runmesh_raft::memstore::{ApplyFn, MemDisk, MemLogStore, MemStateMachine};
use runmesh_raft::pre_vote::PreVote;
use runmesh_raft::store::MachineState;
use runmesh_raft::transport::{
    serve_openraft_rpc, ForwardError, ForwardReply, ForwardResult, Network, RaftTransport, RpcKind,
    TransportError, TransportFuture,
};
use runmesh_raft::types::Raft;
use runmesh_raft::{ClusterState, JobTable, Proposer, ProposerConfig};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{sleep, Instant};

use crate::check::{word, Checker, Invariant, Violation};
use crate::lifecycle::{request_id, Fnv, Rng};
use crate::mesh::{membership, scheduler, view};
use crate::scenario::{Arrival, Bootstrap, Fault, FaultKind, Scenario, Workload};

/// Wall-clock origin of node clocks (virtual time 0), so timestamps look like real ones.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// How often workers look for new assignments when nothing wakes them.
const WORKER_POLL_MS: u64 = 1_000;
/// Client status polls.
const POLL_QUEUE_MS: u64 = 1_000;
const POLL_SYNC_MS: u64 = 250;
/// Dispatch limits per leader round: the node's (`CLAIM_SCAN_MAX`, `assign_batch_max` in
/// node/src/worker.rs).
const DISPATCH_SCAN_MAX: usize = 10_000;
const DISPATCH_MAX: usize = 256;
/// Learners added per membership round.
const LEARNERS_PER_ROUND: usize = 64;

/// A deliberately broken state machine, for showing that the invariants catch bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The state machine answers `Applied` to the first completion of some jobs without recording
    /// it (the worker believes it finished; the job later runs again).
    DropCompletion,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub random_faults: bool,
    pub bug: Option<Bug>,
    /// Keep the event lines (for `--out`); the hash covers them either way.
    pub keep_trace: bool,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            random_faults: false,
            bug: None,
            keep_trace: false,
        }
    }
}

/// Per-second sample for the plots.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Per node (index = id - 1): queued jobs in its replica (-1 when down).
    pub queued: Vec<i64>,
    /// Per node: jobs running on it, by its replica.
    pub running: Vec<i64>,
    pub acked: u64,
    pub terminal_seen: u64,
}

/// A fault as it happened.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FaultWindow {
    pub start_ms: u64,
    pub end_ms: u64,
    pub what: String,
}

/// Everything a run produced.
pub struct RunOutcome {
    pub scenario: String,
    pub seed: u64,
    pub random_faults: bool,
    pub trace_hash: u64,
    pub violations: Vec<Violation>,
    pub violations_total: u64,
    pub figures: serde_json::Value,
    pub trace: Vec<String>,
    pub samples: Vec<Sample>,
    pub faults: Vec<FaultWindow>,
    /// (time a client first saw the job terminal, submit-to-seen latency ms, model).
    pub latencies: Vec<(u64, u64, String)>,
    /// (time, term, leader).
    pub leader_changes: Vec<(u64, u64, NodeId)>,
    pub virtual_ms: u64,
    pub wall_ms: u64,
    pub nodes: usize,
}

/// Runs a scenario with a seed: builds the seeded runtime and drives the whole cluster on it.
pub fn run(sc: &Scenario, opts: &Options) -> RunOutcome {
    let wall = std::time::Instant::now();
    runmesh_raft::runtime::seed_thread_rng(opts.seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(
            &opts.seed.to_le_bytes(),
        ))
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            // Nothing else can be done without a runtime; report it as the run's failure.
            let mut o = empty_outcome(sc, opts);
            o.violations.push(Violation {
                invariant: Invariant::NotTerminal,
                at_ms: 0,
                detail: format!("could not build the runtime: {e}"),
            });
            o.violations_total = 1;
            return o;
        }
    };
    let mut out = rt.block_on(simulate(sc.clone(), opts.clone()));
    drop(rt);
    out.wall_ms = wall.elapsed().as_millis() as u64;
    out
}

fn empty_outcome(sc: &Scenario, opts: &Options) -> RunOutcome {
    RunOutcome {
        scenario: sc.name.clone(),
        seed: opts.seed,
        random_faults: opts.random_faults,
        trace_hash: 0,
        violations: Vec::new(),
        violations_total: 0,
        figures: json!({}),
        trace: Vec::new(),
        samples: Vec::new(),
        faults: Vec::new(),
        latencies: Vec::new(),
        leader_changes: Vec::new(),
        virtual_ms: 0,
        wall_ms: 0,
        nodes: sc.node_count(),
    }
}

// ---------------------------------------------------------------------------------------------
// World state

struct Life {
    raft: Raft,
    /// The node's eager campaign (as `JobLog` keeps one), fresh each start.
    eager: Option<Arc<EagerCampaign>>,
    /// The node's pre-vote (answers peers always; its timer runs when `cluster.pre_vote`).
    pre_vote: Arc<PreVote>,
    proposer: Proposer,
    state: Arc<RwLock<MachineState>>,
    tasks: Vec<AbortHandle>,
}

struct LocalJob {
    attempt: u32,
    app: AppId,
    task: AbortHandle,
}

struct Node {
    region: String,
    slots: u32,
    gpus_mb: Vec<(String, u64)>,
    apps: Vec<AppId>,
    disk: MemDisk,
    life: Option<Life>,
    incarnation: u64,
    advert_seq: u64,
    skew_ms: i64,
    paused: u32,
    slow: f64,
    warm: BTreeSet<AppId>,
    view: view::ClusterView,
    jobs: BTreeMap<RequestId, LocalJob>,
    /// Woken when an `Assign` to this node is applied on its replica.
    assigned: Arc<Notify>,
    /// Woken on every job command applied on its replica (the leader's dispatch rounds).
    changed: Arc<Notify>,
    /// For `--pause`: resumes waiters.
    resumed: Arc<Notify>,
    /// Per-apply position counter (index, position within the entry).
    apply_pos: Arc<Mutex<(u64, u32)>>,
}

#[derive(Default)]
struct NetStats {
    sent: u64,
    delivered: u64,
    lost: u64,
    cut: u64,
    duplicated: u64,
    reordered: u64,
    gossip: u64,
}

struct Net {
    rng: Rng,
    partitions: BTreeMap<usize, BTreeMap<NodeId, usize>>,
    stats: NetStats,
}

enum Fate {
    Deliver {
        delay: Duration,
        dup: Option<Duration>,
    },
    Lost,
    Cut,
}

struct Trace {
    hash: Fnv,
    lines: Vec<String>,
    keep: bool,
    events: u64,
}

#[derive(Default)]
struct Stats {
    submitted: u64,
    acked: u64,
    submit_failed: u64,
    cancels_sent: u64,
    completions: u64,
    failures: u64,
    cancelled: u64,
    assigns: u64,
    /// When the first and the latest placement committed (placements per virtual second).
    first_assign_ms: Option<u64>,
    last_assign_ms: u64,
    requeues: u64,
    renew_rejected: u64,
    crashes: u64,
    restarts: u64,
    elections_won: u64,
    proposals: u64,
    proposals_failed: u64,
}

pub(crate) struct World {
    sc: Scenario,
    seed: u64,
    bug: Option<Bug>,
    start: Instant,
    me: Weak<World>,
    workloads: BTreeMap<String, Workload>,
    nodes: Vec<Mutex<Node>>,
    rng: Mutex<Rng>,
    net: Mutex<Net>,
    check: Mutex<Checker>,
    trace: Mutex<Trace>,
    stats: Mutex<Stats>,
    /// Acknowledged jobs and when.
    acked: Mutex<BTreeMap<RequestId, u64>>,
    latencies: Mutex<Vec<(u64, u64, String)>>,
    leader_changes: Mutex<Vec<(u64, u64, NodeId)>>,
    faults: Mutex<Vec<FaultWindow>>,
    samples: Mutex<Vec<Sample>>,
    raft_config: Arc<Config>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ms(d: f64) -> Duration {
    Duration::from_micros((d.max(0.0) * 1000.0) as u64)
}

impl World {
    fn vnow(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn node(&self, id: NodeId) -> MutexGuard<'_, Node> {
        lock(&self.nodes[(id - 1) as usize])
    }

    fn n(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// The node's own clock: virtual time plus its skew.
    fn clock(&self, id: NodeId) -> u64 {
        let skew = self.node(id).skew_ms;
        (EPOCH_MS + self.vnow()).saturating_add_signed(skew)
    }

    fn raft(&self, id: NodeId) -> Option<Raft> {
        self.node(id).life.as_ref().map(|l| l.raft.clone())
    }

    fn proposer(&self, id: NodeId) -> Option<Proposer> {
        self.node(id).life.as_ref().map(|l| l.proposer.clone())
    }

    fn read<R>(&self, id: NodeId, f: impl FnOnce(&JobTable) -> R) -> Option<R> {
        let state = self.node(id).life.as_ref().map(|l| l.state.clone())?;
        let st = state.read().unwrap_or_else(PoisonError::into_inner);
        Some(f(&st.table.jobs))
    }

    fn is_paused(&self, id: NodeId) -> bool {
        self.node(id).paused > 0
    }

    async fn wait_unpaused(&self, id: NodeId) {
        loop {
            let resumed = {
                let n = self.node(id);
                if n.paused == 0 {
                    return;
                }
                n.resumed.clone()
            };
            resumed.notified().await;
        }
    }

    fn event(&self, ev: serde_json::Value) {
        let line = ev.to_string();
        let mut t = lock(&self.trace);
        t.hash.write(line.as_bytes());
        t.hash.write(b"\n");
        t.events += 1;
        if t.keep {
            t.lines.push(line);
        }
    }

    fn rand_below(&self, n: u64) -> u64 {
        lock(&self.rng).below(n)
    }

    // -----------------------------------------------------------------------------------------
    // Network

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        let ra = self.node(from).region.clone();
        let rb = self.node(to).region.clone();
        let cfg = &self.sc.network;
        let mut net = lock(&self.net);
        net.stats.sent += 1;
        if net
            .partitions
            .values()
            .any(|sides| sides.get(&from) != sides.get(&to))
        {
            net.stats.cut += 1;
            return Fate::Cut;
        }
        let (mut latency, mut jitter, mut loss) = (cfg.latency_ms, cfg.jitter_ms, cfg.loss);
        if ra != rb {
            latency = cfg.inter_region_latency_ms;
            jitter = cfg.jitter_ms.max(latency / 10.0);
            if let Some(l) = cfg.links.iter().find(|l| {
                (l.between[0] == ra && l.between[1] == rb)
                    || (l.between[0] == rb && l.between[1] == ra)
            }) {
                latency = l.latency_ms;
                jitter = l.jitter_ms;
                loss += l.loss;
            }
        }
        if from != to && net.rng.prob(loss) {
            net.stats.lost += 1;
            return Fate::Lost;
        }
        let mut d = latency + jitter * net.rng.unit();
        if net.rng.prob(cfg.reorder) {
            net.stats.reordered += 1;
            d += cfg.reorder_delay_ms * net.rng.unit();
        }
        let dup = if net.rng.prob(cfg.duplicate) {
            net.stats.duplicated += 1;
            Some(ms(latency
                + jitter * net.rng.unit()
                + cfg.reorder_delay_ms * net.rng.unit()))
        } else {
            None
        };
        net.stats.delivered += 1;
        Fate::Deliver { delay: ms(d), dup }
    }

    /// One RPC from `from` to `to`: the request crosses the network, the receiver serves it, the
    /// reply crosses back. Each leg may be cut, lost, delayed or duplicated.
    async fn rpc(
        self: Arc<Self>,
        from: NodeId,
        to: NodeId,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        self.wait_unpaused(from).await;
        let timeout = ms(self.sc.network.rpc_timeout_ms);
        match self.fate(from, to) {
            Fate::Cut => {
                sleep(timeout).await;
                Err(TransportError::Unreachable(format!(
                    "node {to}: partitioned"
                )))
            }
            Fate::Lost => {
                sleep(timeout).await;
                Err(TransportError::Network(format!("node {to}: timed out")))
            }
            Fate::Deliver { delay, dup } => {
                sleep(delay).await;
                self.wait_unpaused(to).await;
                if let Some(extra) = dup {
                    let w = self.clone();
                    let copy = payload.clone();
                    tokio::spawn(async move {
                        sleep(extra).await;
                        w.wait_unpaused(to).await;
                        let _ = w.serve(to, kind, &copy).await;
                    });
                }
                let reply = self.serve(to, kind, &payload).await?;
                match self.fate(to, from) {
                    Fate::Deliver { delay, .. } => {
                        sleep(delay).await;
                        Ok(reply)
                    }
                    Fate::Lost => {
                        sleep(timeout).await;
                        Err(TransportError::Network(format!("node {to}: reply lost")))
                    }
                    Fate::Cut => {
                        sleep(timeout).await;
                        Err(TransportError::Unreachable(format!(
                            "node {to}: partitioned"
                        )))
                    }
                }
            }
        }
    }

    /// The receiving side of [`RaftTransport`]: what `JobLog::handle_rpc` does, on the node's Raft.
    async fn serve(
        &self,
        to: NodeId,
        kind: RpcKind,
        payload: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let Some((raft, eager, pre_vote)) = self
            .node(to)
            .life
            .as_ref()
            .map(|l| (l.raft.clone(), l.eager.clone(), l.pre_vote.clone()))
        else {
            return Err(TransportError::Unreachable(format!("node {to} is down")));
        };
        let bad = |e: runmesh_proto::ProtoError| TransportError::Network(format!("bad rpc: {e}"));
        let enc = |r: Result<Vec<u8>, runmesh_proto::ProtoError>| r.map_err(bad);
        #[allow(unreachable_patterns)]
        match kind {
            RpcKind::AppendEntries
            | RpcKind::Vote
            | RpcKind::InstallSnapshot
            | RpcKind::PreVote => {
                let now = || self.clock(to);
                enc(
                    serve_openraft_rpc(&raft, eager.as_deref(), &pre_vote, now, kind, payload)
                        .await,
                )
            }
            RpcKind::Propose => {
                let cmds: Vec<Command> = codec::decode(payload).map_err(bad)?;
                let n = cmds.len();
                let wait = Duration::from_millis(self.sc.cluster.write_timeout_ms);
                let result: ForwardResult =
                    match tokio::time::timeout(wait, raft.client_write(cmds)).await {
                        Ok(Ok(resp)) if resp.data.len() == n => Ok(ForwardReply {
                            log_index: resp.log_id.index,
                            outputs: resp.data,
                        }),
                        Ok(Ok(_)) => Err(ForwardError::Failed("wrong number of results".into())),
                        Ok(Err(openraft::error::RaftError::APIError(
                            openraft::error::ClientWriteError::ForwardToLeader(f),
                        ))) => Err(ForwardError::NotLeader {
                            leader: f.leader_id,
                        }),
                        Ok(Err(e)) => Err(ForwardError::Failed(e.to_string())),
                        Err(_) => Err(ForwardError::Failed("commit timed out".into())),
                    };
                enc(codec::encode(&result))
            }
            // Kinds added to the transport later: the simulator answers as an old peer would.
            other => Err(TransportError::Network(format!(
                "rpc kind {other:?} not simulated"
            ))),
        }
    }

    /// Gossip: an advert from `from` reaches `to`'s cluster view (fire and forget).
    fn gossip(self: &Arc<Self>, from: NodeId, to: NodeId, advert: CapacityAdvert) {
        let w = self.clone();
        tokio::spawn(async move {
            lock(&w.net).stats.gossip += 1;
            let Fate::Deliver { delay, .. } = w.fate(from, to) else {
                return;
            };
            sleep(delay).await;
            w.wait_unpaused(to).await;
            let now = w.clock(to);
            let mut n = w.node(to);
            if n.life.is_some() {
                n.view.observe(advert, now);
            }
        });
    }

    // -----------------------------------------------------------------------------------------
    // Writes

    /// Commits a command as node `at` would: through the node's own group-commit proposer
    /// ([`Proposer`], the one `JobLog` uses), which batches it with concurrent writes and commits
    /// locally when the node leads, else forwards the batch to the leader, retrying with back-off
    /// while there is none, up to the write timeout.
    async fn propose_job(
        self: &Arc<Self>,
        at: NodeId,
        cmd: JobCommand,
    ) -> Result<CommandResult, String> {
        lock(&self.stats).proposals += 1;
        self.wait_unpaused(at).await;
        let Some(proposer) = self.proposer(at) else {
            lock(&self.stats).proposals_failed += 1;
            return Err(format!("node {at} is down"));
        };
        match proposer.propose(Command::Job(cmd)).await {
            Ok(CommandOutput::Job(r)) => Ok(r),
            #[allow(unreachable_patterns)]
            Ok(other) => Err(format!("unexpected output {other:?}")),
            Err(e) => {
                lock(&self.stats).proposals_failed += 1;
                Err(e.to_string())
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Node lifecycle

    fn apply_hook(&self, id: NodeId) -> ApplyFn {
        let w = self.me.clone();
        let bug = self.bug;
        let pos = self.node(id).apply_pos.clone();
        let assigned = self.node(id).assigned.clone();
        let changed = self.node(id).changed.clone();
        Arc::new(
            move |st: &mut ClusterState, log_id, cmd: Command, touched| {
                let Some(w) = w.upgrade() else {
                    return st.apply(cmd, touched);
                };
                let index = log_id.index;
                let p = {
                    let mut p = lock(&pos);
                    if p.0 == index {
                        p.1 += 1;
                    } else {
                        *p = (index, 0);
                    }
                    p.1
                };
                let bytes = codec::encode(&cmd).unwrap_or_default();
                let mut h = Fnv::new();
                h.write(&bytes);
                let cmd_hash = h.finish();
                let job_id = match &cmd {
                    Command::Job(j) => job_command_id(j).cloned(),
                    _ => None,
                };
                // Only a terminal state can be wrongly changed; cloning every state (outputs
                // included) on every replica was a visible share of the run.
                let before = job_id.as_ref().and_then(|id| {
                    st.jobs
                        .get(id)
                        .filter(|r| r.state.is_terminal())
                        .map(|r| r.state.clone())
                });
                let is_finish = matches!(
                    &cmd,
                    Command::Job(JobCommand::Complete { .. } | JobCommand::Fail { .. })
                );
                let assign_to = match &cmd {
                    Command::Job(
                        JobCommand::Assign { worker, .. } | JobCommand::SubmitPlaced { worker, .. },
                    ) => Some(*worker),
                    _ => None,
                };
                let drop_it = bug == Some(Bug::DropCompletion)
                    && is_finish
                    && matches!(&cmd, Command::Job(JobCommand::Complete { attempt: 1, request_id, .. })
                    if request_id.as_str().as_bytes().last().is_some_and(|b| b % 2 == 0));
                let first = touched.len();
                let out = if drop_it {
                    CommandOutput::Job(CommandResult::Applied)
                } else {
                    st.apply(cmd, touched)
                };
                let mut recorded: Vec<RequestId> = Vec::new();
                for t in &touched[first..] {
                    let now_terminal = st.jobs.get(t).is_some_and(|r| r.state.is_terminal());
                    let was_terminal = job_id.as_ref() == Some(t) && before.is_some();
                    if now_terminal && !was_terminal && !recorded.contains(t) {
                        recorded.push(t.clone());
                    }
                }
                if is_finish && out == CommandOutput::Job(CommandResult::Applied) {
                    if let Some(id) = &job_id {
                        if !recorded.contains(id) {
                            recorded.push(id.clone());
                        }
                    }
                }
                if job_id.is_some() {
                    changed.notify_one();
                }
                if let (Some(worker), CommandOutput::Job(CommandResult::Assigned { .. })) =
                    (assign_to, &out)
                {
                    if worker == id {
                        assigned.notify_one();
                    }
                }
                let after = match (&job_id, &before) {
                    (Some(j), Some(_)) => st.jobs.get(j).map(|r| r.state.clone()),
                    _ => None,
                };
                let at = w.vnow();
                {
                    let mut t = lock(&w.trace);
                    t.hash.write(&id.to_le_bytes());
                    t.hash.write(&index.to_le_bytes());
                    t.hash.write(&cmd_hash.to_le_bytes());
                }
                lock(&w.check).applied(
                    id,
                    index,
                    p,
                    cmd_hash,
                    at,
                    job_id
                        .as_ref()
                        .map(|j| (j, before.as_ref(), after.as_ref())),
                    &recorded,
                );
                out
            },
        )
    }

    async fn start_node(self: &Arc<Self>, id: NodeId) {
        let disk = {
            let mut n = self.node(id);
            if n.life.is_some() {
                return;
            }
            n.incarnation += 1;
            n.jobs.clear();
            n.warm.clear();
            n.disk.clone()
        };
        let sm = match MemStateMachine::open(disk.clone(), self.apply_hook(id)) {
            Ok(sm) => sm,
            Err(e) => {
                self.event(json!({"t": self.vnow(), "ev": "start_failed", "node": id, "error": e.to_string()}));
                return;
            }
        };
        let state = sm.shared();
        let transport: Arc<dyn RaftTransport> = Arc::new(SimTransport {
            world: self.me.clone(),
            from: id,
        });
        let raft = match Raft::new(
            id,
            self.raft_config.clone(),
            Network::new(transport.clone()),
            MemLogStore::new(disk),
            sm,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.event(json!({"t": self.vnow(), "ev": "start_failed", "node": id, "error": e.to_string()}));
                return;
            }
        };
        let (proposer, run_proposer) = Proposer::new(
            raft.clone(),
            transport.clone(),
            ProposerConfig {
                node_id: id,
                batch_max: self.sc.cluster.batch_max,
                batches_in_flight_max: self.sc.cluster.batches_in_flight_max,
                write_timeout: Duration::from_millis(self.sc.cluster.write_timeout_ms),
                apply_wait: Duration::from_secs(5),
            },
            None,
        );
        let c = &self.sc.cluster;
        let pre_vote = Arc::new(PreVote::new(
            (c.election_timeout_min_ms, c.election_timeout_max_ms),
            Arc::new(AtomicBool::new(false)),
        ));
        let mut tasks = vec![
            tokio::spawn(run_proposer).abort_handle(),
            tokio::spawn(self.clone().advert_loop(id)).abort_handle(),
            tokio::spawn(self.clone().leader_loop(id)).abort_handle(),
            tokio::spawn(self.clone().worker_loop(id)).abort_handle(),
            tokio::spawn(self.clone().watch_metrics(id, raft.clone())).abort_handle(),
        ];
        if c.pre_vote {
            let timer = pre_vote.clone().run(raft.clone(), id, transport.clone());
            tasks.push(tokio::spawn(timer).abort_handle());
        }
        let mut n = self.node(id);
        n.view = view::ClusterView::new(id, view::ViewConfig::default());
        let eager = c.eager_campaign.then(|| {
            Arc::new(EagerCampaign::new(
                c.election_timeout_max_ms,
                c.election_timeout_min_ms,
            ))
        });
        n.life = Some(Life {
            raft,
            eager,
            pre_vote,
            proposer,
            state,
            tasks,
        });
    }

    /// Forms the cluster on first start. `join`: node 1 alone, as the first node of a new mesh;
    /// `formed`: the first `voters` nodes vote from the start (the others enter as learners in
    /// one change, in the first membership round).
    async fn bootstrap(&self) {
        let Some(raft) = self.raft(1) else { return };
        let voters = match self.sc.cluster.bootstrap {
            Bootstrap::Join => 1,
            Bootstrap::Formed => self.sc.cluster.voters.clamp(1, self.nodes.len()) as u64,
        };
        let members: BTreeMap<NodeId, BasicNode> =
            (1..=voters).map(|v| (v, member_record(v))).collect();
        if let Err(e) = raft.initialize(members).await {
            self.event(json!({"t": self.vnow(), "ev": "init_failed", "error": e.to_string()}));
        }
        // Campaign now rather than after an election timeout (the node does so as sole voter).
        let _ = raft.trigger().elect().await;
    }

    async fn crash(self: &Arc<Self>, id: NodeId) {
        let (life, jobs) = {
            let mut n = self.node(id);
            (n.life.take(), std::mem::take(&mut n.jobs))
        };
        let Some(life) = life else { return };
        for t in &life.tasks {
            t.abort();
        }
        for j in jobs.values() {
            j.task.abort();
        }
        let _ = life.raft.shutdown().await;
        lock(&self.stats).crashes += 1;
        self.event(json!({"t": self.vnow(), "ev": "crash", "node": id}));
    }

    async fn restart(self: &Arc<Self>, id: NodeId) {
        if self.node(id).life.is_some() {
            return;
        }
        lock(&self.stats).restarts += 1;
        self.event(json!({"t": self.vnow(), "ev": "restart", "node": id}));
        self.start_node(id).await;
    }

    async fn watch_metrics(self: Arc<Self>, id: NodeId, raft: Raft) {
        let mut rx = raft.metrics();
        loop {
            let (state, term, leader) = {
                let m = rx.borrow_and_update();
                (m.state, m.current_term, m.current_leader)
            };
            if state == ServerState::Leader && leader == Some(id) {
                let at = self.vnow();
                let new = lock(&self.check).leader(term, id, at);
                if new {
                    lock(&self.stats).elections_won += 1;
                    lock(&self.leader_changes).push((at, term, id));
                    self.event(json!({"t": at, "ev": "leader", "term": term, "node": id}));
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Node loops

    fn advert(&self, id: NodeId) -> CapacityAdvert {
        let (running, queued) = self
            .read(id, |t| {
                (t.running_count(id) as u32, t.queued_total() as u32)
            })
            .unwrap_or((0, 0));
        let now = self.clock(id);
        let mut n = self.node(id);
        n.advert_seq += 1;
        // GPU memory in use: each running GPU job's need, on the GPU with the most free memory.
        let mut free: Vec<u64> = n.gpus_mb.iter().map(|(_, m)| *m).collect();
        let needs: Vec<u64> = n
            .jobs
            .values()
            .filter_map(|j| {
                self.workloads
                    .get(&j.app.to_string())
                    .map(|w| w.gpu_memory_mb)
            })
            .filter(|m| *m > 0)
            .collect();
        for need in needs {
            if let Some(f) = free.iter_mut().max() {
                *f = f.saturating_sub(need);
            }
        }
        let apps = n
            .apps
            .iter()
            .map(|a| {
                let w = self.workloads.get(&a.to_string());
                ServedApp {
                    app: a.clone(),
                    gpu_memory_mb: w.map_or(0, |w| w.gpu_memory_mb),
                    warmup_ms: w.map_or(0, |w| w.warmup_ms),
                    warm: n.warm.contains(a),
                }
            })
            .collect();
        CapacityAdvert {
            peer_id: format!("sim-{id}"),
            raft_node_id: id,
            region: Some(n.region.clone()),
            gpus: n
                .gpus_mb
                .iter()
                .zip(free)
                .map(|((name, total), free)| GpuAdvert {
                    name: name.clone(),
                    memory_total_mb: *total,
                    memory_free_mb: free,
                    utilization_pct: 0,
                })
                .collect(),
            memory_total_mb: 65_536,
            memory_free_mb: 32_768,
            slots: n.slots,
            running,
            queued,
            apps,
            api_addr: None,
            raft_addr: Some(format!("n{id}")),
            blob_addr: None,
            p2p_addrs: Vec::new(),
            timestamp_ms: now,
            incarnation: n.incarnation,
            seq: n.advert_seq,
        }
    }

    /// Capacity gossip: to the leader and voters this node knows (node 1, the seed, before that).
    async fn advert_loop(self: Arc<Self>, id: NodeId) {
        let every = self.sc.cluster.advert_every_ms.max(10);
        sleep(Duration::from_millis(self.rand_below(every))).await;
        loop {
            if !self.is_paused(id) {
                let advert = self.advert(id);
                let now = self.clock(id);
                self.node(id).view.observe_self(advert.clone(), now);
                let mut targets = BTreeSet::new();
                if let Some(raft) = self.raft(id) {
                    let m = raft.metrics();
                    let m = m.borrow();
                    targets.extend(m.current_leader);
                    targets.extend(m.membership_config.membership().voter_ids());
                }
                if targets.is_empty() {
                    targets.insert(1);
                }
                targets.remove(&id);
                for t in targets {
                    self.gossip(id, t, advert.clone());
                }
            }
            sleep(Duration::from_millis(every)).await;
        }
    }

    /// What the leader does each round: membership (learners in, voters kept healthy), lease and
    /// deadline ticks, and dispatch of queued jobs with the mesh scheduler.
    async fn leader_loop(self: Arc<Self>, id: NodeId) {
        // Like the node's dispatcher: a round whenever the replica changes (a submit, a finished
        // job) or the poll interval passes; changes during a round collapse into the next one.
        let every = Duration::from_millis(self.sc.cluster.leader_round_ms.max(1));
        let changed = self.node(id).changed.clone();
        let mut last_membership: Option<u64> = None;
        let mut wait_poll = true;
        loop {
            if wait_poll {
                sleep(every).await;
            } else {
                let _ = tokio::time::timeout(every, changed.notified()).await;
            }
            wait_poll = false;
            if self.is_paused(id) {
                wait_poll = true;
                continue;
            }
            let Some(raft) = self.raft(id) else { return };
            let is_leader = {
                let m = raft.metrics();
                let m = m.borrow();
                m.state == ServerState::Leader && m.current_leader == Some(id)
            };
            if !is_leader {
                last_membership = None;
                wait_poll = true;
                continue;
            }
            let now = self.clock(id);
            self.node(id).view.tick(now);
            // Right after taking over, then once a second.
            let vnow = self.vnow();
            if last_membership.is_none_or(|t| vnow >= t + 1_000) {
                last_membership = Some(vnow);
                self.membership_round(id, &raft, now).await;
            }
            let mut cmds = Vec::new();
            let Some((due, queued)) = self.read(id, |t| (t.next_tick_due_ms(), t.queued_total()))
            else {
                return;
            };
            let plan = if queued == 0 {
                Vec::new()
            } else {
                let adverts: Vec<CapacityAdvert> = self.node(id).view.up().cloned().collect();
                let members: BTreeSet<NodeId> = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .nodes()
                    .map(|(n, _)| *n)
                    .collect();
                self.read(id, |t| {
                    scheduler::plan_round(
                        t,
                        &adverts,
                        &members,
                        &scheduler::Pending::new(),
                        DISPATCH_SCAN_MAX,
                        DISPATCH_MAX,
                    )
                })
                .unwrap_or_default()
            };
            if due.is_some_and(|d| d <= now) {
                cmds.push(Command::Job(JobCommand::Tick { now_ms: now }));
            }
            for (request_id, worker) in &plan {
                cmds.push(Command::Job(JobCommand::Assign {
                    request_id: request_id.clone(),
                    worker: *worker,
                    lease_ms: self.sc.cluster.lease_ms,
                    now_ms: now,
                }));
            }
            if cmds.is_empty() {
                wait_poll = true;
                continue;
            }
            // Queued together, as the node's dispatcher proposes a round, so they share an entry.
            let Some(proposer) = self.proposer(id) else {
                return;
            };
            let results = proposer.propose_all(cmds).await;
            let mut st = lock(&self.stats);
            let assigned_before = st.assigns;
            for out in results {
                match out {
                    Ok(CommandOutput::Job(CommandResult::Assigned { .. })) => {
                        st.assigns += 1;
                        let t = self.vnow();
                        st.first_assign_ms.get_or_insert(t);
                        st.last_assign_ms = t;
                    }
                    Ok(CommandOutput::Job(CommandResult::Ticked { requeued, .. })) => {
                        st.requeues += u64::from(requeued)
                    }
                    _ => {}
                }
            }
            // Nothing placed (a failed write, or the plan went stale): no hot loop, wait a poll.
            if st.assigns == assigned_before {
                wait_poll = true;
            }
        }
    }

    async fn membership_round(self: &Arc<Self>, id: NodeId, raft: &Raft, now: u64) {
        let (members, voters, last, matched) = {
            let m = raft.metrics();
            let m = m.borrow();
            let mem = m.membership_config.membership();
            let members: BTreeSet<NodeId> = mem.nodes().map(|(n, _)| *n).collect();
            let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
            let matched: BTreeMap<NodeId, u64> = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(n, l)| (*n, l.map_or(0, |l| l.index)))
                        .collect()
                })
                .unwrap_or_default();
            (members, voters, m.last_log_index.unwrap_or(0), matched)
        };
        let (known, heard): (Vec<NodeId>, BTreeMap<NodeId, u64>) = {
            let n = self.node(id);
            let known = n
                .view
                .up()
                .map(|a| a.raft_node_id)
                .filter(|x| !members.contains(x))
                .take(LEARNERS_PER_ROUND)
                .collect();
            let heard = members
                .iter()
                .filter_map(|m| n.view.heard_at_ms(*m).map(|h| (*m, h)))
                .collect();
            (known, heard)
        };
        let wait = Duration::from_millis(self.sc.cluster.write_timeout_ms);
        match self.sc.cluster.bootstrap {
            Bootstrap::Formed => {
                // Every node of the scenario is a member: the missing ones enter in one change.
                let missing: BTreeMap<NodeId, BasicNode> = (1..=self.n())
                    .filter(|x| !members.contains(x))
                    .map(|x| (x, member_record(x)))
                    .collect();
                if !missing.is_empty() {
                    let ids: Vec<NodeId> = missing.keys().copied().collect();
                    let change = openraft::ChangeMembers::AddNodes(missing);
                    match tokio::time::timeout(wait, raft.change_membership(change, false)).await {
                        Ok(Ok(_)) => {
                            self.event(json!({"t": self.vnow(), "ev": "learners", "nodes": ids}))
                        }
                        _ => return,
                    }
                }
            }
            Bootstrap::Join => {
                for new in known {
                    match tokio::time::timeout(
                        wait,
                        raft.add_learner(new, member_record(new), false),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            self.event(json!({"t": self.vnow(), "ev": "learner", "node": new}))
                        }
                        _ => return,
                    }
                }
            }
        }
        let health: Vec<membership::MemberHealth> = members
            .iter()
            .map(|m| membership::MemberHealth {
                id: *m,
                voter: voters.contains(m),
                silent_ms: if *m == id {
                    0
                } else {
                    heard
                        .get(m)
                        .map_or(u64::MAX / 2, |h| now.saturating_sub(*h))
                },
                caught_up: *m == id || matched.get(m).is_some_and(|x| *x > 0 && x + 100 >= last),
                region: Some(self.node(*m).region.clone()),
                // The simulator has no operator: nobody drains.
                draining: false,
            })
            .collect();
        let policy = membership::MembershipPolicy {
            voters: self.sc.cluster.voters,
            ..membership::MembershipPolicy::default()
        };
        if let Some(change) = membership::decide(id, &health, &policy) {
            let voters: Vec<NodeId> = change.voters.iter().copied().collect();
            if let Ok(Ok(_)) =
                tokio::time::timeout(wait, raft.change_membership(change.voters, true)).await
            {
                self.event(json!({"t": self.vnow(), "ev": "voters", "voters": voters,
                    "promoted": change.promoted, "demoted": change.demoted}));
            }
        }
    }

    /// Starts the jobs the replica says run here; stops the ones it no longer does.
    async fn worker_loop(self: Arc<Self>, id: NodeId) {
        let wake = self.node(id).assigned.clone();
        loop {
            let _ =
                tokio::time::timeout(Duration::from_millis(WORKER_POLL_MS), wake.notified()).await;
            if self.is_paused(id) {
                continue;
            }
            let Some(mine) = self.read(id, |t| {
                t.running_on(id)
                    .filter_map(|r| match r.state {
                        JobState::Running { attempt, .. } => {
                            Some((r.spec.request_id.clone(), (attempt, r.spec.app().clone())))
                        }
                        _ => None,
                    })
                    .collect::<BTreeMap<RequestId, (u32, AppId)>>()
            }) else {
                return;
            };
            let mut n = self.node(id);
            let gone: Vec<RequestId> = n
                .jobs
                .iter()
                .filter(|(r, j)| mine.get(*r).map(|m| m.0) != Some(j.attempt))
                .map(|(r, _)| r.clone())
                .collect();
            for r in gone {
                if let Some(j) = n.jobs.remove(&r) {
                    j.task.abort();
                }
            }
            for (r, (attempt, app)) in mine {
                if n.jobs.get(&r).is_some_and(|j| j.attempt == attempt) {
                    continue;
                }
                let task =
                    tokio::spawn(self.clone().run_job(id, r.clone(), attempt)).abort_handle();
                n.jobs.insert(r, LocalJob { attempt, app, task });
            }
        }
    }

    /// One attempt of one job on a worker: run (sleep) for its duration, renewing the lease and
    /// watching for a cancel, then record the outcome.
    async fn run_job(self: Arc<Self>, id: NodeId, req: RequestId, attempt: u32) {
        let Some(Some(model)) = self.read(id, |t| t.get(&req).map(|r| r.spec.model.clone())) else {
            return;
        };
        let key = model.app.to_string();
        let w = self.workloads.get(&key).cloned();
        let mut rng = {
            let mut h = Fnv::new();
            h.write(req.as_str().as_bytes());
            Rng::new(self.seed ^ h.finish() ^ u64::from(attempt).wrapping_mul(0x9E37_79B9))
        };
        let (min, max, fail_p) = w.as_ref().map_or((100, 1_000, 0.0), |w| {
            (w.duration_min_ms, w.duration_max_ms, w.fail_fraction)
        });
        let mut run_ms = (min + rng.below(max - min + 1)) as f64;
        let warmup = {
            let mut n = self.node(id);
            let cold = n.warm.insert(model.app.clone());
            if cold {
                w.as_ref().map_or(0, |w| w.warmup_ms)
            } else {
                0
            }
        };
        run_ms += warmup as f64;
        let fails = rng.prob(fail_p);
        let lease = self.sc.cluster.lease_ms;
        let renew_every = (lease / 3).max(10) as f64;
        let started = self.vnow();
        let mut left = run_ms;
        loop {
            let slow = self.node(id).slow.max(0.01);
            let step = left.min(renew_every);
            sleep(ms(step * slow)).await;
            left -= step;
            self.wait_unpaused(id).await;
            let cancel = self
                .read(id, |t| t.get(&req).is_some_and(|r| r.cancel_requested))
                .unwrap_or(false);
            if cancel {
                let now = self.clock(id);
                let r = self
                    .propose_job(
                        id,
                        JobCommand::Cancel {
                            request_id: req.clone(),
                            attempt,
                            now_ms: now,
                        },
                    )
                    .await;
                self.event(
                    json!({"t": self.vnow(), "ev": "worker_cancel", "node": id, "id": req.as_str(),
                    "attempt": attempt, "result": format!("{r:?}")}),
                );
                break;
            }
            if left <= 0.0 {
                let now = self.clock(id);
                let inference_time_ms = self.vnow().saturating_sub(started);
                let cmd = if fails {
                    JobCommand::Fail {
                        request_id: req.clone(),
                        worker: id,
                        attempt,
                        error: JobError::new(ErrorType::RunnerError, "simulated app error"),
                        inference_time_ms,
                        now_ms: now,
                    }
                } else {
                    JobCommand::Complete {
                        request_id: req.clone(),
                        worker: id,
                        attempt,
                        output_json: format!(
                            "{{\"worker\":{id},\"attempt\":{attempt},\"ms\":{}}}",
                            run_ms as u64
                        ),
                        inference_time_ms,
                        now_ms: now,
                    }
                };
                let outcome = match &cmd {
                    JobCommand::Complete { output_json, .. } => Outcome::Output {
                        output_json: output_json.clone(),
                    },
                    JobCommand::Fail { error, .. } => Outcome::Error(error.clone()),
                    _ => unreachable_outcome(),
                };
                let r = self.propose_job(id, cmd).await;
                self.event(
                    json!({"t": self.vnow(), "ev": "finish", "node": id, "id": req.as_str(),
                    "attempt": attempt, "failed": fails, "result": format!("{r:?}")}),
                );
                if r == Ok(CommandResult::Applied) {
                    lock(&self.check)
                        .completion_acks
                        .insert(req.clone(), (attempt, outcome));
                }
                break;
            }
            let now = self.clock(id);
            let r = self
                .propose_job(
                    id,
                    JobCommand::RenewLease {
                        request_id: req.clone(),
                        worker: id,
                        attempt,
                        lease_ms: lease,
                        now_ms: now,
                    },
                )
                .await;
            if let Ok(CommandResult::Rejected(_)) = r {
                lock(&self.stats).renew_rejected += 1;
                self.event(json!({"t": self.vnow(), "ev": "lease_lost", "node": id, "id": req.as_str(), "attempt": attempt}));
                break;
            }
        }
        let mut n = self.node(id);
        if n.jobs.get(&req).is_some_and(|j| j.attempt == attempt) {
            n.jobs.remove(&req);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Clients

    async fn arrivals(self: Arc<Self>, w: Workload, stop_ms: u64) {
        let rate = w.rate_per_s.max(0.0);
        if rate == 0.0 {
            return;
        }
        let stop = w
            .stop_s
            .map_or(stop_ms, |s| ((s * 1000.0) as u64).min(stop_ms));
        let mut t = w.start_s * 1000.0;
        loop {
            let (gap, n) = {
                let mut rng = lock(&self.rng);
                match w.arrival {
                    Arrival::Poisson => (rng.exp(1000.0 / rate), 1),
                    Arrival::Uniform => (1000.0 / rate, 1),
                    Arrival::Burst => (
                        rng.exp(1000.0 * f64::from(w.burst_size) / rate),
                        w.burst_size,
                    ),
                }
            };
            t += gap;
            if t as u64 >= stop {
                return;
            }
            tokio::time::sleep_until(self.start + ms(t)).await;
            for _ in 0..n {
                tokio::spawn(self.clone().client(w.clone()));
            }
        }
    }

    fn random_up_node(&self, prefer: Option<NodeId>) -> NodeId {
        if let Some(p) = prefer {
            if self.node(p).life.is_some() {
                return p;
            }
        }
        let n = self.n();
        let start = self.rand_below(n);
        for k in 0..n {
            let id = (start + k) % n + 1;
            if self.node(id).life.is_some() {
                return id;
            }
        }
        1 + start
    }

    /// One fal client: submit (retrying at other nodes, same request id), maybe cancel, poll.
    async fn client(self: Arc<Self>, w: Workload) {
        let (req, sync, cancel_after, no_retry, first) = {
            let mut rng = lock(&self.rng);
            let req = request_id(&mut rng);
            let sync = rng.prob(w.sync_fraction);
            let cancel = rng.prob(w.cancel_fraction);
            let after = rng.below(w.cancel_within_ms.max(1));
            let no_retry = rng.prob(w.no_retry_fraction);
            let first = 1 + rng.below(self.nodes.len() as u64);
            (req, sync, cancel.then_some(after), no_retry, first)
        };
        let Ok(model) = ModelId::parse(&w.model) else {
            return;
        };
        lock(&self.stats).submitted += 1;
        let submitted_at = self.vnow();
        let mut node = self.random_up_node(Some(first));
        let mut acked = false;
        for attempt in 0..5u64 {
            let region = self.node(node).region.clone();
            let submitted_at_ms = self.clock(node);
            let spec = JobSpec {
                request_id: req.clone(),
                model: model.clone(),
                input_json: "{}".into(),
                webhook_url: None,
                priority: Priority::Normal,
                start_timeout_ms: None,
                runner_hint: None,
                no_retry,
                mode: if sync {
                    SubmitMode::Sync
                } else {
                    SubmitMode::Queue
                },
                submitted_by: None,
                accepted_by: node,
                accepted_region: Some(region),
                submitted_at_ms,
            };
            match self.propose_job(node, JobCommand::Submit { spec }).await {
                Ok(CommandResult::Submitted { .. } | CommandResult::Duplicate) => {
                    acked = true;
                    break;
                }
                _ => {
                    sleep(Duration::from_millis(200 * (attempt + 1))).await;
                    node = self.random_up_node(None);
                }
            }
        }
        if !acked {
            lock(&self.stats).submit_failed += 1;
            self.event(json!({"t": self.vnow(), "ev": "submit_failed", "id": req.as_str()}));
            return;
        }
        let at = self.vnow();
        lock(&self.stats).acked += 1;
        lock(&self.acked).insert(req.clone(), at);
        self.event(json!({"t": at, "ev": "ack", "id": req.as_str(), "node": node, "model": w.model, "sync": sync}));
        if let Some(after) = cancel_after {
            let me = self.clone();
            let req = req.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(after)).await;
                lock(&me.stats).cancels_sent += 1;
                let at = me.random_up_node(Some(node));
                let now = me.clock(at);
                let r = me
                    .propose_job(
                        at,
                        JobCommand::RequestCancel {
                            request_id: req.clone(),
                            now_ms: now,
                        },
                    )
                    .await;
                if r == Ok(CommandResult::Cancelled) {
                    lock(&me.check).told_cancelled(&req);
                }
                me.event(json!({"t": me.vnow(), "ev": "cancel", "id": req.as_str(), "result": format!("{r:?}")}));
            });
        }
        // Poll until terminal, then twice more at other nodes: a result once seen must not change.
        let every = Duration::from_millis(if sync { POLL_SYNC_MS } else { POLL_QUEUE_MS });
        let mut after_terminal = 0;
        loop {
            sleep(every).await;
            let at = if after_terminal > 0 {
                self.random_up_node(None)
            } else {
                self.random_up_node(Some(node))
            };
            let Some(Some(state)) = self.read(at, |t| t.get(&req).map(|r| r.state.clone())) else {
                continue;
            };
            let now = self.vnow();
            let first_terminal = lock(&self.check).observe(&req, at, &state, now);
            if first_terminal {
                lock(&self.latencies).push((
                    now,
                    now.saturating_sub(submitted_at),
                    w.model.clone(),
                ));
                let mut st = lock(&self.stats);
                match &state {
                    JobState::Completed {
                        outcome: Outcome::Output { .. },
                        ..
                    } => st.completions += 1,
                    JobState::Completed { .. } => st.failures += 1,
                    _ => st.cancelled += 1,
                }
                drop(st);
                self.event(json!({"t": now, "ev": "seen", "id": req.as_str(), "node": at, "state": word(&state)}));
            }
            if state.is_terminal() {
                after_terminal += 1;
                if after_terminal >= 3 {
                    return;
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Faults

    fn current_leader(&self) -> Option<(NodeId, u64)> {
        let mut best: Option<(NodeId, u64)> = None;
        for id in 1..=self.n() {
            if let Some(raft) = self.raft(id) {
                let m = raft.metrics();
                let m = m.borrow();
                if m.state == ServerState::Leader && best.is_none_or(|(_, t)| m.current_term > t) {
                    best = Some((id, m.current_term));
                }
            }
        }
        best
    }

    async fn fault(self: Arc<Self>, idx: usize, f: Fault, end_ms: u64) {
        let at = (f.at_s * 1000.0) as u64;
        if at >= end_ms {
            return;
        }
        tokio::time::sleep_until(self.start + Duration::from_millis(at)).await;
        let until = f
            .for_s
            .map_or(end_ms, |s| (at + (s * 1000.0) as u64).min(end_ms));
        let what = describe(&f.kind);
        self.event(json!({"t": self.vnow(), "ev": "fault", "what": what, "until": until}));
        let start = self.vnow();
        let heal_at = self.start + Duration::from_millis(until);
        match &f.kind {
            FaultKind::Crash { node } => {
                self.crash(*node).await;
                tokio::time::sleep_until(heal_at).await;
                self.restart(*node).await;
            }
            FaultKind::KillLeader => {
                let Some((node, _)) = self.current_leader() else {
                    self.event(json!({"t": self.vnow(), "ev": "fault_skipped", "what": what}));
                    return;
                };
                self.crash(node).await;
                tokio::time::sleep_until(heal_at).await;
                self.restart(node).await;
            }
            FaultKind::KillLeaderRegion => {
                let Some((leader, _)) = self.current_leader() else {
                    self.event(json!({"t": self.vnow(), "ev": "fault_skipped", "what": what}));
                    return;
                };
                let region = self.node(leader).region.clone();
                let lost: Vec<NodeId> = (1..=self.n())
                    .filter(|&id| self.node(id).region == region)
                    .collect();
                for &node in &lost {
                    self.crash(node).await;
                }
                tokio::time::sleep_until(heal_at).await;
                for &node in &lost {
                    self.restart(node).await;
                }
            }
            FaultKind::Partition { groups } => {
                let sides = self.sc.partition_sides(groups);
                lock(&self.net).partitions.insert(idx, sides);
                tokio::time::sleep_until(heal_at).await;
                lock(&self.net).partitions.remove(&idx);
            }
            FaultKind::Pause { node } => {
                self.node(*node).paused += 1;
                tokio::time::sleep_until(heal_at).await;
                let mut n = self.node(*node);
                n.paused = n.paused.saturating_sub(1);
                n.resumed.notify_waiters();
            }
            FaultKind::Slow { node, factor } => {
                self.node(*node).slow = *factor;
                tokio::time::sleep_until(heal_at).await;
                self.node(*node).slow = 1.0;
            }
            FaultKind::Skew { node, skew_ms } => {
                self.node(*node).skew_ms = *skew_ms;
                tokio::time::sleep_until(heal_at).await;
                self.node(*node).skew_ms = 0;
            }
        }
        self.event(json!({"t": self.vnow(), "ev": "healed", "what": what}));
        lock(&self.faults).push(FaultWindow {
            start_ms: start,
            end_ms: self.vnow(),
            what,
        });
    }

    async fn sampler(self: Arc<Self>) {
        loop {
            sleep(Duration::from_secs(1)).await;
            let mut queued = Vec::new();
            let mut running = Vec::new();
            for id in 1..=self.n() {
                let (q, r) = self
                    .read(id, |t| {
                        (t.queued_total() as i64, t.running_count(id) as i64)
                    })
                    .unwrap_or((-1, -1));
                queued.push(q);
                running.push(r);
            }
            let leader = self.current_leader();
            let acked = lock(&self.acked).len() as u64;
            let terminal_seen = lock(&self.check).seen_terminal().len() as u64;
            lock(&self.samples).push(Sample {
                t_ms: self.vnow(),
                leader: leader.map(|l| l.0),
                term: leader.map_or(0, |l| l.1),
                queued,
                running,
                acked,
                terminal_seen,
            });
        }
    }
}

/// A member's record in the Raft membership. The node keeps its addresses there; the simulated
/// transport addresses nodes by id, so the record is empty (openraft clones the membership into
/// its metrics on every loop turn: 200 address strings each time at 200 nodes).
fn member_record(_id: NodeId) -> BasicNode {
    BasicNode::default()
}

fn unreachable_outcome() -> Outcome {
    Outcome::Output {
        output_json: "null".into(),
    }
}

fn job_command_id(c: &JobCommand) -> Option<&RequestId> {
    c.request_id()
}

/// After a partition heals, how long its elections count against it.
pub const HEAL_WINDOW_MS: u64 = 10_000;

/// For each partition that healed, the leaders elected within [`HEAL_WINDOW_MS`] after it: a cut-off
/// node that comes back should not unseat a healthy leader (0 when the leader kept its seat, 1
/// when one had to be elected).
fn heal_elections(faults: &[FaultWindow], leader_changes: &[(u64, u64, NodeId)]) -> Vec<u64> {
    faults
        .iter()
        .filter(|f| f.what.starts_with("partition"))
        .map(|f| {
            leader_changes
                .iter()
                .filter(|(at, _, _)| *at >= f.end_ms && *at < f.end_ms + HEAL_WINDOW_MS)
                .count() as u64
        })
        .collect()
}

/// For each `kill_leader` fault, virtual ms from the kill to the next leader's election (a kill
/// with no leader after it counts to nothing: the run ended first).
fn failover_ms(faults: &[FaultWindow], leader_changes: &[(u64, u64, NodeId)]) -> Vec<u64> {
    let kills = [
        describe(&FaultKind::KillLeader),
        describe(&FaultKind::KillLeaderRegion),
    ];
    let mut out: Vec<u64> = faults
        .iter()
        .filter(|f| kills.contains(&f.what))
        .filter_map(|f| {
            leader_changes
                .iter()
                .find(|(at, _, _)| *at > f.start_ms)
                .map(|(at, _, _)| at - f.start_ms)
        })
        .collect();
    out.sort_unstable();
    out
}

pub fn describe(k: &FaultKind) -> String {
    match k {
        FaultKind::Crash { node } => format!("crash n{node}"),
        FaultKind::KillLeader => "kill leader".into(),
        FaultKind::KillLeaderRegion => "kill the leader's region".into(),
        FaultKind::Partition { groups } => {
            let sides: Vec<String> = groups.iter().map(|g| g.join("+")).collect();
            format!("partition {} | rest", sides.join(" | "))
        }
        FaultKind::Pause { node } => format!("pause n{node}"),
        FaultKind::Slow { node, factor } => format!("slow n{node} x{factor}"),
        FaultKind::Skew { node, skew_ms } => format!("skew n{node} {skew_ms:+}ms"),
    }
}

struct SimTransport {
    world: Weak<World>,
    from: NodeId,
}

impl RaftTransport for SimTransport {
    fn call(
        &self,
        target: NodeId,
        _addr: &str,
        kind: RpcKind,
        payload: Vec<u8>,
    ) -> TransportFuture {
        let world = self.world.upgrade();
        let from = self.from;
        Box::pin(async move {
            match world {
                Some(w) => w.rpc(from, target, kind, payload).await,
                None => Err(TransportError::Unreachable("simulation over".into())),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The run

async fn simulate(sc: Scenario, opts: Options) -> RunOutcome {
    let mut faults = sc.faults.clone();
    if opts.random_faults {
        faults.extend(sc.draw_random_faults(opts.seed));
    }
    let all_models: Vec<AppId> = sc
        .workload
        .iter()
        .filter_map(|w| ModelId::parse(&w.model).ok().map(|m| m.app))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let nodes: Vec<Mutex<Node>> = sc
        .node_groups()
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let apps = if g.apps.is_empty() {
                all_models.clone()
            } else {
                g.apps
                    .iter()
                    .filter_map(|a| ModelId::parse(a).ok().map(|m| m.app))
                    .collect()
            };
            let gpus_mb = g
                .gpus
                .iter()
                .map(|s| {
                    let (name, gb) = s.split_once(':').unwrap_or((s.as_str(), "0"));
                    (
                        name.to_string(),
                        gb.trim().parse::<u64>().unwrap_or(0) * 1024,
                    )
                })
                .collect();
            Mutex::new(Node {
                region: g.region.clone(),
                slots: g.slots,
                gpus_mb,
                apps,
                disk: MemDisk::new(),
                life: None,
                incarnation: 0,
                advert_seq: 0,
                skew_ms: 0,
                paused: 0,
                slow: 1.0,
                warm: BTreeSet::new(),
                view: view::ClusterView::new(i as u64 + 1, view::ViewConfig::default()),
                jobs: BTreeMap::new(),
                assigned: Arc::new(Notify::new()),
                changed: Arc::new(Notify::new()),
                resumed: Arc::new(Notify::new()),
                apply_pos: Arc::new(Mutex::new((0, 0))),
            })
        })
        .collect();
    let raft_config = Config {
        cluster_name: "runmesh-sim".into(),
        heartbeat_interval: sc.cluster.heartbeat_ms,
        election_timeout_min: sc.cluster.election_timeout_min_ms,
        election_timeout_max: sc.cluster.election_timeout_max_ms,
        install_snapshot_timeout: sc.cluster.install_snapshot_timeout_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(sc.cluster.snapshot_every_entries.max(10)),
        max_in_snapshot_log_to_keep: 500,
        enable_elect: !sc.cluster.pre_vote,
        ..Default::default()
    }
    .validate();
    let raft_config = match raft_config {
        Ok(c) => c,
        Err(e) => {
            let mut o = empty_outcome(&sc, &opts);
            o.violations.push(Violation {
                invariant: Invariant::NotTerminal,
                at_ms: 0,
                detail: format!("bad raft config: {e}"),
            });
            o.violations_total = 1;
            return o;
        }
    };
    let world = Arc::new_cyclic(|me| World {
        workloads: sc
            .workload
            .iter()
            .filter_map(|w| {
                ModelId::parse(&w.model)
                    .ok()
                    .map(|m| (m.app.to_string(), w.clone()))
            })
            .collect(),
        sc: sc.clone(),
        seed: opts.seed,
        bug: opts.bug,
        start: Instant::now(),
        me: me.clone(),
        nodes,
        rng: Mutex::new(Rng::new(opts.seed)),
        net: Mutex::new(Net {
            rng: Rng::new(opts.seed ^ 0x6e65_7477_6f72_6b00),
            partitions: BTreeMap::new(),
            stats: NetStats::default(),
        }),
        check: Mutex::new(Checker::default()),
        trace: Mutex::new(Trace {
            hash: Fnv::new(),
            lines: Vec::new(),
            keep: opts.keep_trace,
            events: 0,
        }),
        stats: Mutex::new(Stats::default()),
        acked: Mutex::new(BTreeMap::new()),
        latencies: Mutex::new(Vec::new()),
        leader_changes: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
        raft_config: Arc::new(raft_config),
    });
    world.event(json!({"t": 0, "ev": "start", "scenario": sc.name, "seed": opts.seed, "nodes": sc.node_count(),
        "random_faults": opts.random_faults}));
    for f in &faults {
        world.event(json!({"t": 0, "ev": "planned_fault", "at_s": f.at_s, "for_s": f.for_s, "what": describe(&f.kind)}));
    }
    for id in 1..=world.n() {
        world.start_node(id).await;
    }
    world.bootstrap().await;
    let end_ms = (sc.duration_s * 1000.0) as u64;
    let mut handles = Vec::new();
    handles.push(tokio::spawn(world.clone().sampler()).abort_handle());
    for w in sc.workload.iter().cloned() {
        handles.push(tokio::spawn(world.clone().arrivals(w, end_ms)).abort_handle());
    }
    for (i, f) in faults.into_iter().enumerate() {
        handles.push(tokio::spawn(world.clone().fault(i, f, end_ms)).abort_handle());
    }
    tokio::time::sleep_until(world.start + Duration::from_millis(end_ms)).await;
    // Faults heal at end_ms by themselves; give them a moment, then drain.
    sleep(Duration::from_millis(10)).await;
    let heal_ms = world.vnow();
    let drain_end = heal_ms + (sc.drain_s * 1000.0) as u64;
    let mut drained_at = None;
    while world.vnow() < drain_end {
        sleep(Duration::from_millis(500)).await;
        let Some((leader, _)) = world.current_leader() else {
            continue;
        };
        let ids: Vec<RequestId> = lock(&world.acked).keys().cloned().collect();
        let all_terminal = world
            .read(leader, |t| {
                ids.iter()
                    .all(|id| t.get(id).is_some_and(|r| r.state.is_terminal()))
            })
            .unwrap_or(false);
        let seen_all = lock(&world.check).seen_terminal().len() >= ids.len();
        let clients_done = {
            let st = lock(&world.stats);
            st.submitted == st.acked + st.submit_failed
        };
        if all_terminal && seen_all && clients_done {
            drained_at = Some(world.vnow());
            break;
        }
    }
    // Let replicas converge before comparing them.
    sleep(Duration::from_secs(2)).await;
    world.final_audit(heal_ms, drained_at);
    for h in handles {
        h.abort();
    }
    for id in 1..=world.n() {
        world.crash_quietly(id).await;
    }
    world.outcome(&opts, heal_ms, drained_at)
}

impl World {
    async fn crash_quietly(&self, id: NodeId) {
        let life = self.node(id).life.take();
        if let Some(life) = life {
            for t in &life.tasks {
                t.abort();
            }
            let _ = life.raft.shutdown().await;
        }
        let jobs = std::mem::take(&mut self.node(id).jobs);
        for j in jobs.values() {
            j.task.abort();
        }
    }

    fn final_audit(&self, heal_ms: u64, drained_at: Option<u64>) {
        let at = self.vnow();
        let Some((leader, _)) = self.current_leader() else {
            lock(&self.check).violate(
                Invariant::NotTerminal,
                at,
                format!(
                    "no leader {}s after every fault healed",
                    (at - heal_ms) / 1000
                ),
            );
            return;
        };
        let acked: Vec<RequestId> = lock(&self.acked).keys().cloned().collect();
        let finals: BTreeMap<RequestId, Option<JobState>> = self
            .read(leader, |t| {
                acked
                    .iter()
                    .map(|id| (id.clone(), t.get(id).map(|r| r.state.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut check = lock(&self.check);
        let drain_s = self.sc.drain_s;
        for (id, state) in &finals {
            match state {
                None => check.violate(
                    Invariant::AcknowledgedLost,
                    at,
                    format!("job {id} was acknowledged but the leader (node {leader}) has no record of it"),
                ),
                Some(s) if !s.is_terminal() => check.violate(
                    Invariant::NotTerminal,
                    at,
                    format!("job {id} is {} {drain_s}s after every fault healed", word(s)),
                ),
                Some(_) => {}
            }
        }
        let acks: Vec<(RequestId, (u32, Outcome))> = check
            .completion_acks
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, (attempt, outcome)) in acks {
            let ok = matches!(finals.get(&id), Some(Some(JobState::Completed { outcome: o, .. })) if *o == outcome);
            if !ok {
                let now = finals.get(&id).cloned().flatten();
                check.violate(
                    Invariant::AcknowledgedLost,
                    at,
                    format!(
                        "job {id}: attempt {attempt}'s completion was acknowledged to its worker, but the job ended {}",
                        now.as_ref().map_or("missing".into(), word)
                    ),
                );
            }
        }
        let seen: Vec<(RequestId, JobState)> = check
            .seen_terminal()
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect();
        for (id, s) in seen {
            if let Some(Some(f)) = finals.get(&id) {
                if f.is_terminal() && *f != s {
                    check.violate(
                        Invariant::ResultChanged,
                        at,
                        format!(
                            "job {id}: client saw {}, the final state is {}",
                            word(&s),
                            word(f)
                        ),
                    );
                }
            }
        }
        drop(check);
        // Every live replica ends where the leader does.
        if drained_at.is_some() {
            for id in 1..=self.n() {
                if id == leader {
                    continue;
                }
                let differs: Option<(RequestId, String)> = self
                    .read(id, |t| {
                        finals.iter().find_map(|(rid, f)| {
                            let mine = t.get(rid).map(|r| r.state.clone());
                            (mine != *f && mine.as_ref().is_none_or(JobState::is_terminal)).then(
                                || (rid.clone(), mine.as_ref().map_or("missing".into(), word)),
                            )
                        })
                    })
                    .flatten();
                if let Some((rid, mine)) = differs {
                    lock(&self.check).violate(
                        Invariant::ReplicasDiverged,
                        at,
                        format!("node {id} has job {rid} as {mine}, the leader does not"),
                    );
                }
            }
        }
    }

    fn outcome(&self, opts: &Options, heal_ms: u64, drained_at: Option<u64>) -> RunOutcome {
        let check = lock(&self.check);
        let st = lock(&self.stats);
        let net = lock(&self.net);
        let mut lat: Vec<u64> = lock(&self.latencies).iter().map(|l| l.1).collect();
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                0
            } else {
                lat[((lat.len() as f64 - 1.0) * p).round() as usize]
            }
        };
        let queued_max = lock(&self.samples)
            .iter()
            .flat_map(|s| s.queued.iter().copied())
            .max()
            .unwrap_or(0);
        let virtual_ms = self.vnow();
        let (entries, commands) = check.entries_and_commands();
        let failover = failover_ms(&lock(&self.faults), &lock(&self.leader_changes));
        let heals = heal_elections(&lock(&self.faults), &lock(&self.leader_changes));
        let log_entries: Vec<usize> = self.nodes.iter().map(|n| lock(n).disk.log_len()).collect();
        let figures = json!({
            "scenario": self.sc.name,
            "seed": opts.seed,
            "random_faults": opts.random_faults,
            "nodes": self.nodes.len(),
            "virtual_ms": virtual_ms,
            "faults_healed_at_ms": heal_ms,
            "drained_at_ms": drained_at,
            "jobs": {
                "submitted": st.submitted, "acknowledged": st.acked, "submit_failed": st.submit_failed,
                "completed": st.completions, "failed": st.failures, "cancelled": st.cancelled,
                "cancels_sent": st.cancels_sent, "assigns": st.assigns, "requeued": st.requeues,
                "placement_window_ms": st.first_assign_ms.map_or(0, |f| st.last_assign_ms.saturating_sub(f)),
                "lease_renewals_rejected": st.renew_rejected,
            },
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0), "count": lat.len()},
            "raft": {
                "terms_with_leader": check.leaders.len(), "elections_won": st.elections_won,
                "last_term": check.leaders.keys().next_back().copied().unwrap_or(0),
                "proposals": st.proposals, "proposals_failed": st.proposals_failed,
                "entries_with_commands": entries, "commands": commands,
                "commands_per_entry": (commands as f64 / entries.max(1) as f64 * 100.0).round() / 100.0,
                "log_entries_held_max": log_entries.iter().max().copied().unwrap_or(0),
                "failover_ms": failover,
                "heal_elections": heals,
            },
            "nodes_faults": {"crashes": st.crashes, "restarts": st.restarts},
            "network": {"sent": net.stats.sent, "delivered": net.stats.delivered, "lost": net.stats.lost,
                "cut": net.stats.cut, "duplicated": net.stats.duplicated, "reordered": net.stats.reordered,
                "gossip": net.stats.gossip},
            "queue_depth_max": queued_max,
            "stale_reads": check.stale_reads,
            "violations": check.violations_total,
        });
        let trace = lock(&self.trace);
        RunOutcome {
            scenario: self.sc.name.clone(),
            seed: opts.seed,
            random_faults: opts.random_faults,
            trace_hash: trace.hash.finish(),
            violations: check.violations.clone(),
            violations_total: check.violations_total,
            figures,
            trace: trace.lines.clone(),
            samples: lock(&self.samples).clone(),
            faults: lock(&self.faults).clone(),
            latencies: lock(&self.latencies).clone(),
            leader_changes: lock(&self.leader_changes).clone(),
            virtual_ms,
            wall_ms: 0,
            nodes: self.nodes.len(),
        }
    }
}
