//! The worker and the dispatcher.
//!
//! - The **dispatcher** runs on every node and acts only on the Raft leader: it places queued jobs
//!   on the best nodes of the cluster view ([`crate::mesh::scheduler`]) and records each placement
//!   as `JobCommand::Assign { worker }` through Raft, several per proposal.
//! - The **worker** runs the jobs assigned to this node (`Running { worker: me }`), each on its own
//!   task under a lease it renews, and records logs and the outcome through the job log.
//!
//! A single node is its own leader and its own only worker, so it behaves as the foundation's
//! self-assigning worker did. Decisions are pure functions of the job table ([`adoptable`],
//! [`job_signal`], [`tick_due`], [`crate::mesh::scheduler::plan_round`]); the async loops around
//! them only carry events, timers and proposals, so a simulator can drive the same decisions on
//! virtual time.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use runmesh_gateway_node::PartialHub;
use runmesh_proto::{
    Clock, CommandResult, ErrorType, JobCommand, JobError, JobSpec, JobState, LogLine, NodeId,
    RequestId,
};
use runmesh_raft::{JobLog, JobLogError, JobRecord, JobTable};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn, Instrument};

use crate::apps::{AppError, AppRegistry, EmittedFiles, FileSink, JobContext};
use crate::mesh::capacity::{Mesh, WarmSet};
use crate::mesh::scheduler;

/// Queued jobs looked at per dispatch round, so a long queue of jobs nobody can run costs a
/// bounded scan.
pub const CLAIM_SCAN_MAX: usize = 10_000;
/// Log lines buffered between an app and its worker task; beyond that lines are dropped and counted.
pub const LOG_CHANNEL_CAPACITY: usize = 1024;
/// Job-change events handled per wake-up before the worker looks at the table again.
const EVENTS_PER_WAKE_MAX: usize = 1024;
/// Jobs a worker runs at most beyond its slots (an assignment racing a slots change); past it,
/// further assignments are left to lapse and be placed again.
const OVERCOMMIT_MAX: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Jobs run at once.
    pub slots: usize,
    /// Lease granted per assignment; renewed every third of it.
    pub lease_ms: u64,
    /// Fallback wake-up when no job event arrives.
    pub poll_interval_ms: u64,
    pub log_flush_interval_ms: u64,
    /// Lines that trigger a flush before the interval.
    pub log_batch_max: usize,
    /// How long a cancelled app may take to return before its task is aborted.
    pub cancel_grace_ms: u64,
    /// Assignments proposed per dispatch round (they share Raft entries).
    pub assign_batch_max: usize,
    /// While this file exists the dispatcher places nothing (jobs keep queueing): an operator's
    /// hold on the queue, e.g. while workers are upgraded, and how `runmesh bench placements`
    /// fills a queue before timing how fast the leader drains it.
    pub dispatch_hold_file: Option<std::path::PathBuf>,
    /// The leader places a job in the Raft entry that submits it when a node has room
    /// ([`SubmitPlacement`]); otherwise every job queues first and waits for a dispatch round.
    pub place_at_submit: bool,
    /// On a graceful stop, how long jobs already running may take to finish; what still runs
    /// then is left to its lease, as after a crash (`--shutdown-grace-ms`).
    pub shutdown_grace_ms: u64,
}

/// `--shutdown-grace-ms` when none is given.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            slots: 4,
            lease_ms: 5_000,
            poll_interval_ms: 200,
            log_flush_interval_ms: 100,
            log_batch_max: 64,
            cancel_grace_ms: 2_000,
            assign_batch_max: 256,
            dispatch_hold_file: None,
            place_at_submit: true,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
        }
    }
}

/// Whether the worker should start a job it sees in the table: running here under an attempt it
/// does not hold yet, and not one it found running here when it started (a previous process's
/// attempt: its lease lapses and the job is placed again, as after any crash).
pub fn adoptable(state: &JobState, me: NodeId, held: bool, abandoned: bool) -> Option<u32> {
    match state {
        JobState::Running {
            worker, attempt, ..
        } if *worker == me && !held && !abandoned => Some(*attempt),
        _ => None,
    }
}

/// What a running job's task should do, judged from the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSignal {
    /// Still ours: keep running.
    Run,
    /// A client asked to cancel: stop the app, then record `Cancel`.
    Cancel,
    /// No longer ours (lease expired and requeued, finished elsewhere): stop without recording.
    Lost,
}

pub fn job_signal(table: &JobTable, id: &RequestId, me: NodeId, my_attempt: u32) -> JobSignal {
    let Some(rec) = table.get(id) else {
        return JobSignal::Lost;
    };
    match rec.state {
        JobState::Running {
            worker, attempt, ..
        } if worker == me && attempt == my_attempt => {
            if rec.cancel_requested {
                JobSignal::Cancel
            } else {
                JobSignal::Run
            }
        }
        _ => JobSignal::Lost,
    }
}

/// Whether a `Tick` would change something now.
pub fn tick_due(next_due_ms: Option<u64>, now_ms: u64) -> bool {
    next_due_ms.is_some_and(|due| due <= now_ms)
}

struct Held {
    attempt: u32,
    signal: watch::Sender<JobSignal>,
}

/// Everything a job task needs, shared by all of them.
#[derive(Clone)]
struct Shared {
    joblog: JobLog,
    registry: Arc<AppRegistry>,
    partials: PartialHub,
    clock: Arc<dyn Clock>,
    cfg: WorkerConfig,
    node_id: NodeId,
    warm: WarmSet,
    /// The blob store apps emit files into (artifacts); without it apps cannot make files.
    files: Option<Arc<dyn FileSink>>,
}

pub struct Worker {
    shared: Shared,
}

impl Worker {
    pub fn new(
        joblog: JobLog,
        registry: Arc<AppRegistry>,
        partials: PartialHub,
        clock: Arc<dyn Clock>,
        cfg: WorkerConfig,
    ) -> Self {
        let node_id = joblog.node_id();
        Self {
            shared: Shared {
                joblog,
                registry,
                partials,
                clock,
                cfg,
                node_id,
                warm: WarmSet::default(),
                files: None,
            },
        }
    }

    /// Lets apps emit files into `sink` (the node's blob store).
    pub fn with_files(mut self, sink: Arc<dyn FileSink>) -> Self {
        self.shared.files = Some(sink);
        self
    }

    /// Records the apps this worker runs in `warm` (what the capacity advert calls warm).
    pub fn with_warm_set(mut self, warm: WarmSet) -> Self {
        self.shared.warm = warm;
        self
    }

    /// Runs until `shutdown` turns true (or its sender goes away). Jobs still running then are
    /// abandoned: their leases expire and a `Tick` queues them again.
    /// Runs until `shutdown` turns true, then stops taking jobs and lets the running ones finish
    /// (their results recorded) for up to `shutdown_grace_ms` before it aborts the rest.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let shared = self.shared;
        let me = shared.node_id;
        let mut events = shared.joblog.subscribe();
        // Attempts a previous process of this node was running: not ours to resume.
        let abandoned: HashSet<(RequestId, u32)> = shared.joblog.read(|t| {
            t.running_on(me)
                .filter_map(|r| match r.state {
                    JobState::Running { attempt, .. } => Some((r.spec.request_id.clone(), attempt)),
                    _ => None,
                })
                .collect()
        });
        if !abandoned.is_empty() {
            info!(
                jobs = abandoned.len(),
                "jobs of a previous run are left to their leases"
            );
        }
        let mut held: HashMap<RequestId, Held> = HashMap::new();
        let mut tasks: JoinSet<RequestId> = JoinSet::new();
        let mut poll =
            tokio::time::interval(Duration::from_millis(shared.cfg.poll_interval_ms.max(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(
            slots = shared.cfg.slots,
            lease_ms = shared.cfg.lease_ms,
            "worker started"
        );
        // Start with a full look at the table: assignments may predate the subscription.
        adopt_all(&shared, &mut held, &mut tasks, &abandoned);
        // Set once a stop is asked for: no job is adopted after it, and the loop ends when the
        // running ones are done or at this deadline.
        let mut finish_by: Option<tokio::time::Instant> = None;
        loop {
            if finish_by.is_none() && *shutdown.borrow() {
                let grace = Duration::from_millis(shared.cfg.shutdown_grace_ms);
                finish_by = Some(tokio::time::Instant::now() + grace);
                if !tasks.is_empty() {
                    info!(
                        running = tasks.len(),
                        grace_ms = shared.cfg.shutdown_grace_ms,
                        "stopping: no new jobs; letting the running ones finish"
                    );
                }
            }
            if finish_by.is_some() && tasks.is_empty() {
                break;
            }
            let finishing = finish_by.is_some();
            let deadline = finish_by.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                changed = shutdown.changed(), if !finishing => {
                    if changed.is_err() {
                        // The sender is gone: nobody can ask for a graceful stop any more.
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline), if finishing => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    match done {
                        Ok(id) => { held.remove(&id); }
                        // Job tasks catch app panics themselves; this is a bug in the task.
                        Err(e) => warn!(error = %e, "job task ended abnormally"),
                    }
                    // A task that died without telling us its id leaves a stale entry: drop those.
                    held.retain(|_, h| !h.signal.is_closed());
                }
                ev = events.recv() => {
                    let mut changed = Vec::new();
                    let mut lagged = false;
                    match ev {
                        Ok(id) => changed.push(id),
                        Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                    // Drain what is already there, so a burst costs one look, not one per event.
                    while changed.len() < EVENTS_PER_WAKE_MAX {
                        match events.try_recv() {
                            Ok(id) => changed.push(id),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                            Err(_) => break,
                        }
                    }
                    if lagged {
                        signal_all(&shared, &held);
                        if !finishing {
                            adopt_all(&shared, &mut held, &mut tasks, &abandoned);
                        }
                    } else {
                        let ours: Vec<&RequestId> =
                            changed.iter().filter(|id| held.contains_key(*id)).collect();
                        if !ours.is_empty() {
                            signal_some(&shared, &held, ours);
                        }
                        if !finishing {
                            let others: Vec<RequestId> =
                                changed.into_iter().filter(|id| !held.contains_key(id)).collect();
                            adopt_some(&shared, &mut held, &mut tasks, &abandoned, others);
                        }
                    }
                }
                _ = poll.tick() => {
                    signal_all(&shared, &held);
                    if !finishing {
                        adopt_all(&shared, &mut held, &mut tasks, &abandoned);
                    }
                }
            }
        }
        if tasks.is_empty() {
            info!("worker stopped");
        } else {
            warn!(
                abandoned = tasks.len(),
                "worker stopping with jobs still running: they are left to their leases"
            );
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

fn signal_all(shared: &Shared, held: &HashMap<RequestId, Held>) {
    signal_some(shared, held, held.keys());
}

fn signal_some<'a>(
    shared: &Shared,
    held: &HashMap<RequestId, Held>,
    ids: impl IntoIterator<Item = &'a RequestId>,
) {
    let updates: Vec<(&Held, JobSignal)> = shared.joblog.read(|t| {
        ids.into_iter()
            .filter_map(|id| {
                held.get(id)
                    .map(|h| (h, job_signal(t, id, shared.node_id, h.attempt)))
            })
            .collect()
    });
    for (h, sig) in updates {
        // Only move forward: Run -> Cancel -> Lost never goes back.
        h.signal.send_if_modified(|cur| {
            let rank = |s: JobSignal| s as u8;
            if rank(sig) > rank(*cur) {
                *cur = sig;
                true
            } else {
                false
            }
        });
    }
}

/// Starts every job the table says runs here that the worker does not hold yet.
fn adopt_all(
    shared: &Shared,
    held: &mut HashMap<RequestId, Held>,
    tasks: &mut JoinSet<RequestId>,
    abandoned: &HashSet<(RequestId, u32)>,
) {
    let me = shared.node_id;
    let found: Vec<(JobSpec, u32)> = shared.joblog.read(|t| {
        t.running_on(me)
            .filter_map(|r| adopt_one(r, me, held, abandoned))
            .collect()
    });
    start_jobs(shared, held, tasks, found);
}

/// Starts the jobs among `ids` (changed just now) that were assigned to this node.
fn adopt_some(
    shared: &Shared,
    held: &mut HashMap<RequestId, Held>,
    tasks: &mut JoinSet<RequestId>,
    abandoned: &HashSet<(RequestId, u32)>,
    ids: Vec<RequestId>,
) {
    if ids.is_empty() {
        return;
    }
    let me = shared.node_id;
    let found: Vec<(JobSpec, u32)> = shared.joblog.read(|t| {
        ids.iter()
            .filter_map(|id| t.get(id))
            .filter_map(|r| adopt_one(r, me, held, abandoned))
            .collect()
    });
    start_jobs(shared, held, tasks, found);
}

fn adopt_one(
    r: &JobRecord,
    me: NodeId,
    held: &HashMap<RequestId, Held>,
    abandoned: &HashSet<(RequestId, u32)>,
) -> Option<(JobSpec, u32)> {
    let JobState::Running { attempt, .. } = r.state else {
        return None;
    };
    let id = &r.spec.request_id;
    let gone = abandoned.contains(&(id.clone(), attempt));
    adoptable(&r.state, me, held.contains_key(id), gone).map(|a| (r.spec.clone(), a))
}

fn start_jobs(
    shared: &Shared,
    held: &mut HashMap<RequestId, Held>,
    tasks: &mut JoinSet<RequestId>,
    found: Vec<(JobSpec, u32)>,
) {
    let limit = shared.cfg.slots.saturating_add(OVERCOMMIT_MAX);
    for (spec, attempt) in found {
        // One batch of events can name a job several times: start it once.
        if held.contains_key(&spec.request_id) {
            continue;
        }
        if held.len() >= limit {
            warn!(
                request_id = %spec.request_id,
                held = held.len(),
                "more jobs assigned than this node can hold; leaving it to its lease"
            );
            continue;
        }
        if held.len() >= shared.cfg.slots {
            debug!(request_id = %spec.request_id, "running a job beyond the slots");
        }
        let (signal, signal_rx) = watch::channel(JobSignal::Run);
        let id = spec.request_id.clone();
        held.insert(id.clone(), Held { attempt, signal });
        let span = tracing::info_span!("job", request_id = %id, app = %spec.model, attempt);
        tasks.spawn(run_job(shared.clone(), spec, attempt, signal_rx).instrument(span));
    }
}

/// Whether `--dispatch-hold-file` holds the queue now: neither the dispatcher nor placement at
/// submit starts a job while the file exists.
fn dispatch_held(hold_file: Option<&std::path::Path>) -> bool {
    hold_file.is_some_and(std::path::Path::exists)
}

/// Placement at submit ([`runmesh_raft::placement`]): while this node leads, the job log asks it
/// for a worker as it writes each submit, so a job that finds a free slot starts with its submit's
/// entry. It shares the scheduler and the pending count with the [`Dispatcher`], which takes what
/// it leaves queued.
pub struct SubmitPlacement {
    mesh: Mesh,
    lease_ms: u64,
    hold_file: Option<std::path::PathBuf>,
    /// Placements whose entries are being written: not in the table yet, but their slots are taken.
    pending: std::sync::Mutex<scheduler::Pending>,
}

impl SubmitPlacement {
    fn pending(&self) -> scheduler::Pending {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl runmesh_raft::SubmitPlacer for SubmitPlacement {
    fn place(
        &self,
        view: &runmesh_raft::PlacementView<'_>,
        specs: &[&JobSpec],
    ) -> Vec<Option<NodeId>> {
        if dispatch_held(self.hold_file.as_deref()) {
            return vec![None; specs.len()];
        }
        let mut adverts = self.mesh.up_adverts();
        adverts.retain(|a| !view.draining.contains(&a.raft_node_id));
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let placed = scheduler::place_new(view.table, &adverts, &view.members, &pending, specs);
        for worker in placed.iter().flatten() {
            *pending.entry(*worker).or_default() += 1;
        }
        placed
    }

    fn settled(&self, workers: &[NodeId]) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for w in workers {
            if let Some(n) = pending.get_mut(w) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pending.remove(w);
                }
            }
        }
    }

    fn lease_ms(&self) -> u64 {
        self.lease_ms
    }
}

/// Places queued jobs on the cluster's nodes while this node leads.
pub struct Dispatcher {
    joblog: JobLog,
    mesh: Mesh,
    clock: Arc<dyn Clock>,
    cfg: WorkerConfig,
    placement: Arc<SubmitPlacement>,
}

impl Dispatcher {
    /// Also installs the job log's [`SubmitPlacement`] when `cfg.place_at_submit` is set.
    pub fn new(joblog: JobLog, mesh: Mesh, clock: Arc<dyn Clock>, cfg: WorkerConfig) -> Self {
        let placement = Arc::new(SubmitPlacement {
            mesh: mesh.clone(),
            lease_ms: cfg.lease_ms,
            hold_file: cfg.dispatch_hold_file.clone(),
            pending: Default::default(),
        });
        if cfg.place_at_submit {
            joblog.set_placer(Some(placement.clone()));
        }
        Self {
            joblog,
            mesh,
            clock,
            cfg,
            placement,
        }
    }

    /// Runs until `shutdown` turns true. Wakes on job changes, view changes and a poll interval;
    /// does nothing while another node leads.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.joblog.subscribe();
        let mut poll =
            tokio::time::interval(Duration::from_millis(self.cfg.poll_interval_ms.max(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        // After a failed proposal, wait for the next poll instead of retrying in a hot loop.
        let mut paused = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let leader = self.joblog.leader() == Some(self.joblog.node_id());
            if leader != was_leader {
                info!(
                    leader,
                    "dispatcher {}",
                    if leader { "active" } else { "standing by" }
                );
                was_leader = leader;
            }
            if leader && !paused {
                paused = !self.round().await;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                ev = events.recv() => {
                    if matches!(ev, Err(broadcast::error::RecvError::Closed)) {
                        break;
                    }
                    // One round covers every change so far.
                    for _ in 0..EVENTS_PER_WAKE_MAX {
                        if events.try_recv().is_err() {
                            break;
                        }
                    }
                }
                _ = self.mesh.changed() => {}
                _ = poll.tick() => paused = false,
            }
        }
    }

    /// One dispatch round. Returns false when a proposal failed (the caller backs off).
    async fn round(&self) -> bool {
        if dispatch_held(self.cfg.dispatch_hold_file.as_deref()) {
            // Held: looked at again on the next poll tick.
            return false;
        }
        let mut adverts = self.mesh.up_adverts();
        // Drained nodes finish what they run and get nothing new.
        self.joblog
            .read_state(|s| adverts.retain(|a| !s.roster.takes_no_jobs(a.raft_node_id)));
        let members = runmesh_gateway_node::RaftMembership::read(&self.joblog);
        let voters_and_learners: BTreeSet<NodeId> =
            members.voters.union(&members.learners).copied().collect();
        let pending = self.placement.pending();
        let plan: Vec<(RequestId, NodeId)> = self.joblog.read(|t| {
            scheduler::plan_round(
                t,
                &adverts,
                &voters_and_learners,
                &pending,
                CLAIM_SCAN_MAX,
                self.cfg.assign_batch_max,
            )
        });
        if plan.is_empty() {
            return true;
        }
        let now_ms = self.clock.now_ms();
        // Proposed together so the log folds them into one entry.
        let proposals = plan.iter().map(|(id, worker)| {
            self.joblog.propose(JobCommand::Assign {
                request_id: id.clone(),
                worker: *worker,
                lease_ms: self.cfg.lease_ms,
                now_ms,
            })
        });
        let results = futures::future::join_all(proposals).await;
        let mut ok = true;
        for ((id, worker), result) in plan.into_iter().zip(results) {
            match result {
                Ok(CommandResult::Assigned { attempt }) => {
                    debug!(request_id = %id, worker, attempt, "assigned")
                }
                // Cancelled or taken meanwhile: nothing to do.
                Ok(other) => debug!(request_id = %id, result = ?other, "assignment not applied"),
                Err(JobLogError::ForwardToLeader { .. }) => {
                    debug!(request_id = %id, "lost the leadership while assigning");
                    ok = false;
                }
                Err(e) => {
                    warn!(request_id = %id, error = %e, "assignment failed");
                    ok = false;
                }
            }
        }
        ok
    }
}

/// Aborts the app's task when the job task goes away (worker shutdown), so no app outlives its job.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Ending {
    Finished(Result<Result<serde_json::Value, AppError>, tokio::task::JoinError>),
    /// Cancelled and the app did not return within the grace period.
    CancelTimedOut,
    Lost,
}

/// Runs one claimed job to its end and records the outcome. Returns the job's id.
async fn run_job(
    shared: Shared,
    spec: JobSpec,
    attempt: u32,
    mut signal: watch::Receiver<JobSignal>,
) -> RequestId {
    let id = spec.request_id.clone();
    let cfg = &shared.cfg;
    let started_ms = shared.clock.now_ms();
    let (log_tx, mut log_rx) = mpsc::channel::<LogLine>(LOG_CHANNEL_CAPACITY);
    let (stop_tx, stop_rx) = watch::channel(false);

    shared.warm.touch(spec.app(), started_ms);
    let app = shared.registry.get(spec.app());
    let input = match load_input(&shared, &spec.input_json).await {
        Ok(text) => serde_json::from_str::<serde_json::Value>(&text),
        Err(why) => {
            let err = JobError::new(ErrorType::InternalError, why);
            finish_failed(&shared, &id, attempt, err, started_ms).await;
            return id;
        }
    };
    let (app, input) = match (app, input) {
        (Some(app), Ok(input)) => (app, input),
        (None, _) => {
            let err = JobError::new(
                ErrorType::InternalError,
                format!("app {} is not served by this node", spec.app()),
            );
            finish_failed(&shared, &id, attempt, err, started_ms).await;
            return id;
        }
        (_, Err(e)) => {
            let err = JobError::new(
                ErrorType::BadRequest,
                format!("input is not valid JSON: {e}"),
            );
            finish_failed(&shared, &id, attempt, err, started_ms).await;
            return id;
        }
    };

    let ctx = JobContext::new(
        id.clone(),
        spec.model.clone(),
        log_tx,
        shared.partials.clone(),
        stop_rx,
        shared.clock.clone(),
    );
    let emitted = EmittedFiles::default();
    let ctx = match &shared.files {
        Some(sink) => ctx.with_files(sink.clone(), emitted.clone()),
        None => ctx,
    };
    let mut app_task = AbortOnDrop(tokio::spawn(app.run(ctx, input)));

    let renew_every = Duration::from_millis((cfg.lease_ms / 3).max(1));
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(Duration::from_millis(cfg.log_flush_interval_ms.max(1)));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grace = tokio::time::sleep(Duration::from_millis(cfg.cancel_grace_ms));
    tokio::pin!(grace);
    let mut cancelling = false;
    let mut buf: Vec<LogLine> = Vec::new();

    let ending = loop {
        tokio::select! {
            res = &mut app_task.0 => break Ending::Finished(res),
            changed = signal.changed() => {
                // The worker dropped us (shutdown): stop without recording anything.
                if changed.is_err() {
                    break Ending::Lost;
                }
                let sig = *signal.borrow_and_update();
                match sig {
                    JobSignal::Run => {}
                    JobSignal::Cancel if !cancelling => {
                        info!("cancellation requested, stopping the app");
                        cancelling = true;
                        let _ = stop_tx.send(true);
                        grace.as_mut().reset(
                            tokio::time::Instant::now() + Duration::from_millis(cfg.cancel_grace_ms),
                        );
                    }
                    JobSignal::Cancel => {}
                    JobSignal::Lost => break Ending::Lost,
                }
            }
            _ = &mut grace, if cancelling => break Ending::CancelTimedOut,
            Some(line) = log_rx.recv() => {
                buf.push(line);
                if buf.len() >= cfg.log_batch_max {
                    flush_logs(&shared, &id, attempt, &mut buf).await;
                }
            }
            _ = flush.tick() => flush_logs(&shared, &id, attempt, &mut buf).await,
            _ = renew.tick() => {
                let cmd = JobCommand::RenewLease {
                    request_id: id.clone(),
                    worker: shared.node_id,
                    attempt,
                    lease_ms: cfg.lease_ms,
                    now_ms: shared.clock.now_ms(),
                };
                match shared.joblog.propose(cmd).await {
                    Ok(CommandResult::Applied) => {}
                    Ok(other) => {
                        info!(result = ?other, "lease renewal refused, letting the job go");
                        break Ending::Lost;
                    }
                    // Transient: the next renewal may still land before the lease runs out.
                    Err(e) => warn!(error = %e, "lease renewal failed"),
                }
            }
        }
    };

    drop(app_task);
    shared.partials.close(&id);
    if matches!(ending, Ending::Lost) {
        info!("job no longer held by this worker");
        return id;
    }
    // Lines the app wrote before it returned.
    while buf.len() < LOG_CHANNEL_CAPACITY {
        match log_rx.try_recv() {
            Ok(line) => buf.push(line),
            Err(_) => break,
        }
    }
    flush_logs(&shared, &id, attempt, &mut buf).await;

    let inference_time_ms = shared.clock.now_ms().saturating_sub(started_ms);
    if cancelling || *signal.borrow() == JobSignal::Cancel {
        // Once a client asked to cancel, the job ends cancelled, whatever the app returned.
        let cmd = JobCommand::Cancel {
            request_id: id.clone(),
            attempt,
            now_ms: shared.clock.now_ms(),
        };
        record(&shared, cmd, "cancel").await;
        return id;
    }
    let outcome = match ending {
        Ending::Finished(Ok(Ok(output))) if output.is_object() => Ok(output),
        Ending::Finished(Ok(Ok(_))) => Err(JobError::new(
            ErrorType::InternalError,
            "the app returned an output that is not a JSON object",
        )),
        Ending::Finished(Ok(Err(app_err))) => Err(app_err.into_job_error()),
        Ending::Finished(Err(join_err)) => {
            let why = if join_err.is_panic() {
                panic_message(join_err.into_panic())
            } else {
                "the app's task was aborted".to_string()
            };
            warn!(panic = %why, "app panicked");
            Err(JobError::new(
                ErrorType::InternalError,
                format!("the app crashed: {why}"),
            ))
        }
        Ending::CancelTimedOut | Ending::Lost => return id,
    };
    match outcome {
        Ok(output) => {
            let files = std::mem::take(
                &mut *emitted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let cmd = if files.is_empty() {
                JobCommand::Complete {
                    request_id: id.clone(),
                    worker: shared.node_id,
                    attempt,
                    output_json: output.to_string(),
                    inference_time_ms,
                    now_ms: shared.clock.now_ms(),
                }
            } else {
                // The completion entry names the blobs: any node finds them through it.
                JobCommand::CompleteWithFiles {
                    request_id: id.clone(),
                    worker: shared.node_id,
                    attempt,
                    output_json: output.to_string(),
                    files,
                    inference_time_ms,
                    now_ms: shared.clock.now_ms(),
                }
            };
            record(&shared, cmd, "complete").await;
        }
        Err(err) => finish_failed(&shared, &id, attempt, err, started_ms).await,
    }
    id
}

/// The input text: inline, or read back from the blob store when the gateway kept a large input
/// there (`{"$runmesh_input": "/files/<hash>/input.json"}`).
async fn load_input(shared: &Shared, input_json: &str) -> Result<String, String> {
    let key = runmesh_gateway_node::submit::INPUT_BLOB_KEY;
    if input_json.len() > 512 || !input_json.contains(key) {
        return Ok(input_json.to_string());
    }
    let reference = serde_json::from_str::<serde_json::Value>(input_json)
        .ok()
        .and_then(|v| {
            let obj = v.as_object()?;
            (obj.len() == 1).then(|| obj.get(key)?.as_str().map(str::to_string))?
        });
    let (Some(path), Some(files)) = (reference, shared.files.as_ref()) else {
        return Ok(input_json.to_string());
    };
    let local = files
        .resolve_input(path)
        .await
        .map_err(|e| format!("the stored input is not available: {e}"))?;
    let text = tokio::fs::read_to_string(&local)
        .await
        .map_err(|e| format!("reading the stored input: {e}"));
    let _ = tokio::fs::remove_file(&local).await;
    text
}

async fn finish_failed(
    shared: &Shared,
    id: &RequestId,
    attempt: u32,
    error: JobError,
    started_ms: u64,
) {
    shared.partials.close(id);
    let now_ms = shared.clock.now_ms();
    let cmd = JobCommand::Fail {
        request_id: id.clone(),
        worker: shared.node_id,
        attempt,
        error,
        inference_time_ms: now_ms.saturating_sub(started_ms),
        now_ms,
    };
    record(shared, cmd, "fail").await;
}

/// Proposes a final command. A failure here leaves the job running on an expiring lease, so it is
/// retried by someone after the lease runs out: log and move on.
async fn record(shared: &Shared, cmd: JobCommand, what: &'static str) {
    match shared.joblog.propose(cmd).await {
        Ok(CommandResult::Applied | CommandResult::Cancelled) => debug!(what, "recorded"),
        Ok(other) => info!(what, result = ?other, "outcome not recorded"),
        Err(e) => {
            warn!(what, error = %e, "could not record the outcome; the lease will requeue it")
        }
    }
}

async fn flush_logs(shared: &Shared, id: &RequestId, attempt: u32, buf: &mut Vec<LogLine>) {
    if buf.is_empty() {
        return;
    }
    let lines = std::mem::take(buf);
    let cmd = JobCommand::AppendLogs {
        request_id: id.clone(),
        attempt,
        lines,
    };
    if let Err(e) = shared.joblog.propose(cmd).await {
        // Logs are best effort: dropping a batch beats holding the job up.
        warn!(error = %e, "dropping a batch of job logs");
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Proposes `Tick` whenever the table says one is due (expired leases, missed start deadlines).
pub async fn run_ticker(
    joblog: JobLog,
    clock: Arc<dyn Clock>,
    check_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(check_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = every.tick() => {
                let now_ms = clock.now_ms();
                if !tick_due(joblog.read(|t| t.next_tick_due_ms()), now_ms) {
                    continue;
                }
                match joblog.propose(JobCommand::Tick { now_ms }).await {
                    Ok(CommandResult::Ticked { requeued, timed_out }) if requeued + timed_out > 0 => {
                        info!(requeued, timed_out, "tick");
                    }
                    Ok(_) => {}
                    // Followers cannot tick; the leader does.
                    Err(e) => debug!(error = %e, "tick not proposed"),
                }
            }
        }
    }
}

/// Proposes `Expire` when finished jobs are past their result retention (fal keeps results 1 h,
/// 6 min when large), and `ForgetFiles` when the file lists that outlived them are past the
/// artifact TTL. Checked a few times per retention period, at most every 30 s: a job held for
/// an owed webhook keeps the table due, and each proposal is a log entry.
pub async fn run_result_expiry(
    joblog: JobLog,
    clock: Arc<dyn Clock>,
    retention: runmesh_proto::Retention,
    artifact_ttl_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let shortest = retention
        .retain_ms
        .min(retention.large_retain_ms)
        .min(artifact_ttl_ms);
    let mut every = tokio::time::interval(Duration::from_millis((shortest / 4).clamp(100, 30_000)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = every.tick() => {
                let now_ms = clock.now_ms();
                let (results_due, files_due) = joblog.read(|t| {
                    (
                        t.next_expiry_due_ms(retention),
                        t.next_files_forget_due_ms(artifact_ttl_ms),
                    )
                });
                if tick_due(results_due, now_ms) {
                    match joblog.propose(JobCommand::Expire { now_ms, retention }).await {
                        Ok(CommandResult::Expired { removed }) if removed > 0 => {
                            info!(removed, "finished requests expired");
                        }
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "expiry not proposed"),
                    }
                }
                if tick_due(files_due, now_ms) {
                    let cmd = JobCommand::ForgetFiles { now_ms, ttl_ms: artifact_ttl_ms };
                    match joblog.propose(cmd).await {
                        Ok(CommandResult::Expired { removed }) if removed > 0 => {
                            info!(removed, "file lists of expired requests forgotten");
                        }
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "file expiry not proposed"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use runmesh_proto::{AppId, ModelId, Priority, SubmitMode, SystemClock};
    use serde_json::json;

    fn spec(model: &str, priority: Priority) -> JobSpec {
        JobSpec {
            request_id: RequestId::new_random(),
            model: ModelId::parse(model).unwrap(),
            input_json: "{}".into(),
            webhook_url: None,
            priority,
            start_timeout_ms: None,
            runner_hint: None,
            no_retry: false,
            mode: SubmitMode::Queue,
            submitted_by: None,
            accepted_by: 1,
            accepted_region: None,
            submitted_at_ms: 1_000,
        }
    }

    fn submit(t: &mut JobTable, s: &JobSpec) {
        t.apply(JobCommand::Submit { spec: s.clone() }, &mut Vec::new());
    }

    fn local_advert(
        id: NodeId,
        slots: u32,
        apps: &[&str],
    ) -> runmesh_proto::advert::CapacityAdvert {
        runmesh_proto::advert::CapacityAdvert {
            peer_id: String::new(),
            raft_node_id: id,
            region: None,
            gpus: Vec::new(),
            memory_total_mb: 0,
            memory_free_mb: 0,
            slots,
            running: 0,
            queued: 0,
            apps: apps
                .iter()
                .map(|a| runmesh_proto::advert::ServedApp {
                    app: ModelId::parse(a).unwrap().app,
                    gpu_memory_mb: 0,
                    warmup_ms: 0,
                    warm: false,
                })
                .collect(),
            api_addr: None,
            raft_addr: None,
            blob_addr: None,
            p2p_addrs: Vec::new(),
            timestamp_ms: 0,
            incarnation: 0,
            seq: 0,
        }
    }

    #[test]
    fn placement_at_submit_takes_free_slots_and_never_jumps_the_queue() {
        let mut t = JobTable::new();
        let all = BTreeSet::new();
        let adverts = [
            local_advert(1, 1, &["runmesh/echo"]),
            local_advert(2, 1, &["runmesh/echo", "runmesh/sleep"]),
        ];
        let e1 = spec("runmesh/echo", Priority::Normal);
        let e2 = spec("runmesh/echo", Priority::Normal);
        let e3 = spec("runmesh/echo", Priority::Normal);
        let s1 = spec("runmesh/sleep", Priority::Normal);
        let none = spec("someone/else", Priority::Normal);
        // Two free slots for echo: the first two go to different nodes, the third queues, and the
        // sleep job finds no slot left either. Nobody serves the last one.
        let placed = scheduler::place_new(
            &t,
            &adverts,
            &all,
            &Default::default(),
            &[&e1, &e2, &e3, &s1, &none],
        );
        assert_eq!(placed.len(), 5);
        let mut on: Vec<NodeId> = placed[..2].iter().map(|w| w.unwrap()).collect();
        on.sort_unstable();
        assert_eq!(on, [1, 2]);
        assert_eq!(&placed[2..], [None, None, None]);
        // Pending placements take their slots until the table shows them.
        let pending: scheduler::Pending = [(2, 1)].into();
        let placed = scheduler::place_new(&t, &adverts, &all, &pending, &[&s1, &e1]);
        assert_eq!(placed, [None, Some(1)]);
        // With an echo job queued, a new echo job waits behind it even where a slot is free; a
        // job of another app does not wait for it.
        submit(&mut t, &e3);
        let placed = scheduler::place_new(&t, &adverts, &all, &Default::default(), &[&e1, &s1]);
        assert_eq!(placed, [None, Some(2)]);
        // A node outside the Raft membership is no candidate.
        let members: BTreeSet<NodeId> = [1].into();
        let placed = scheduler::place_new(&t, &adverts, &members, &Default::default(), &[&s1]);
        assert_eq!(placed, [None]);
    }

    #[test]
    fn assignments_follow_priority_then_arrival_for_served_apps() {
        let mut t = JobTable::new();
        let low = spec("runmesh/echo", Priority::Low);
        let other = spec("someone/else", Priority::Normal);
        let a = spec("runmesh/echo/sub", Priority::Normal);
        let b = spec("runmesh/sleep", Priority::Normal);
        for s in [&low, &other, &a, &b] {
            submit(&mut t, s);
        }
        let all = BTreeSet::new();
        let plan = |t: &JobTable, slots, max| {
            let adverts = [local_advert(1, slots, &["runmesh/echo", "runmesh/sleep"])];
            scheduler::plan_round(t, &adverts, &all, &Default::default(), CLAIM_SCAN_MAX, max)
                .into_iter()
                .map(|(id, w)| {
                    assert_eq!(w, 1);
                    id
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            plan(&t, 2, 10),
            [a.request_id.clone(), b.request_id.clone()]
        );
        assert_eq!(
            plan(&t, 10, 10),
            [
                a.request_id.clone(),
                b.request_id.clone(),
                low.request_id.clone()
            ]
        );
        assert_eq!(plan(&t, 10, 1), std::slice::from_ref(&a.request_id));
        // A node outside the Raft membership gets nothing.
        let adverts = [local_advert(5, 4, &["runmesh/echo"])];
        let members: BTreeSet<NodeId> = [1].into();
        assert!(scheduler::plan_round(
            &t,
            &adverts,
            &members,
            &Default::default(),
            CLAIM_SCAN_MAX,
            10
        )
        .is_empty());
        // Slots already taken per the table count, whatever the advert says.
        t.apply(
            JobCommand::Assign {
                request_id: a.request_id.clone(),
                worker: 1,
                lease_ms: 1_000,
                now_ms: 2_000,
            },
            &mut Vec::new(),
        );
        assert_eq!(plan(&t, 2, 10), std::slice::from_ref(&b.request_id));
    }

    #[test]
    fn the_worker_adopts_new_attempts_assigned_to_it() {
        let running = |worker, attempt| JobState::Running {
            worker,
            attempt,
            started_at_ms: 0,
            lease_until_ms: 1,
        };
        assert_eq!(adoptable(&running(1, 2), 1, false, false), Some(2));
        assert_eq!(adoptable(&running(2, 2), 1, false, false), None);
        assert_eq!(adoptable(&running(1, 2), 1, true, false), None);
        assert_eq!(adoptable(&running(1, 2), 1, false, true), None);
        assert_eq!(adoptable(&JobState::Queued, 1, false, false), None);
    }

    #[test]
    fn signals_follow_the_table() {
        let mut t = JobTable::new();
        let s = spec("runmesh/echo", Priority::Normal);
        let id = s.request_id.clone();
        assert_eq!(job_signal(&t, &id, 1, 1), JobSignal::Lost);
        submit(&mut t, &s);
        let assign = JobCommand::Assign {
            request_id: id.clone(),
            worker: 1,
            lease_ms: 100,
            now_ms: 2_000,
        };
        t.apply(assign, &mut Vec::new());
        assert_eq!(job_signal(&t, &id, 1, 1), JobSignal::Run);
        assert_eq!(job_signal(&t, &id, 2, 1), JobSignal::Lost);
        assert_eq!(job_signal(&t, &id, 1, 2), JobSignal::Lost);
        t.apply(
            JobCommand::RequestCancel {
                request_id: id.clone(),
                now_ms: 2_010,
            },
            &mut Vec::new(),
        );
        assert_eq!(job_signal(&t, &id, 1, 1), JobSignal::Cancel);
        t.apply(JobCommand::Tick { now_ms: 3_000 }, &mut Vec::new());
        assert_eq!(job_signal(&t, &id, 1, 1), JobSignal::Lost);
    }

    #[test]
    fn ticks_only_when_due() {
        assert!(!tick_due(None, 5));
        assert!(!tick_due(Some(6), 5));
        assert!(tick_due(Some(5), 5));
        assert!(tick_due(Some(1), 5));
    }

    // End to end through a real single-node job log.

    struct Node {
        joblog: JobLog,
        stop: watch::Sender<bool>,
        _dir: tempfile::TempDir,
        partials: PartialHub,
    }

    /// The leader's half: a local-only cluster view and the dispatcher over it.
    fn start_dispatcher(
        joblog: &JobLog,
        registry: &AppRegistry,
        cfg: &WorkerConfig,
        clock: &Arc<dyn Clock>,
        stop_rx: watch::Receiver<bool>,
    ) -> WarmSet {
        let warm = WarmSet::default();
        let local = crate::mesh::capacity::LocalNode {
            peer_id: String::new(),
            raft_node_id: joblog.node_id(),
            region: None,
            slots: cfg.slots as u32,
            apps: crate::mesh::capacity::LocalNode::apps_from_registry(registry, None),
            api_addr: None,
            raft_addr: None,
            blob_addr: None,
            gpus_declared: true,
            incarnation: clock.now_ms(),
        };
        let mesh = Mesh::new(
            local,
            crate::mesh::view::ViewConfig::default(),
            clock.clone(),
            Arc::new(Vec::new),
            warm.clone(),
        );
        mesh.refresh_self(joblog);
        let d = Dispatcher::new(joblog.clone(), mesh, clock.clone(), cfg.clone());
        tokio::spawn(d.run(stop_rx));
        warm
    }

    async fn node(cfg: WorkerConfig, registry: AppRegistry) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let joblog = JobLog::open(
            runmesh_raft::JobLogConfig::single_node(dir.path().join("raft")),
            clock.clone(),
            Arc::new(runmesh_raft::transport::NoNetwork),
        )
        .await
        .unwrap();
        assert!(joblog.wait_healthy(Duration::from_secs(10)).await);
        let partials = PartialHub::default();
        let (stop, stop_rx) = watch::channel(false);
        let warm = start_dispatcher(&joblog, &registry, &cfg, &clock, stop_rx.clone());
        let worker = Worker::new(
            joblog.clone(),
            Arc::new(registry),
            partials.clone(),
            clock.clone(),
            cfg,
        )
        .with_warm_set(warm);
        tokio::spawn(worker.run(stop_rx.clone()));
        tokio::spawn(run_ticker(
            joblog.clone(),
            clock,
            Duration::from_millis(20),
            stop_rx,
        ));
        Node {
            joblog,
            stop,
            _dir: dir,
            partials,
        }
    }

    async fn submit_job(n: &Node, model: &str, input: serde_json::Value) -> RequestId {
        let mut s = spec(model, Priority::Normal);
        s.input_json = input.to_string();
        s.submitted_at_ms = n.joblog.now_ms();
        let id = s.request_id.clone();
        let r = n
            .joblog
            .propose(JobCommand::Submit { spec: s })
            .await
            .unwrap();
        assert!(matches!(r, CommandResult::Submitted { .. }), "{r:?}");
        id
    }

    async fn wait_terminal(n: &Node, id: &RequestId) -> JobRecord {
        for _ in 0..500 {
            let rec = n.joblog.read(|t| t.get(id).cloned()).unwrap();
            if rec.state.is_terminal() {
                return rec;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {id} did not finish");
    }

    fn output(rec: &JobRecord) -> serde_json::Value {
        match &rec.state {
            JobState::Completed {
                outcome: runmesh_proto::Outcome::Output { output_json },
                ..
            } => serde_json::from_str(output_json).unwrap(),
            other => panic!("not an output: {other:?}"),
        }
    }

    fn error(rec: &JobRecord) -> JobError {
        match &rec.state {
            JobState::Completed {
                outcome: runmesh_proto::Outcome::Error(e),
                ..
            } => e.clone(),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_jobs_to_completion_with_logs() {
        let n = node(WorkerConfig::default(), AppRegistry::with_builtins()).await;
        let echo = submit_job(&n, "runmesh/echo", json!({"x": 1})).await;
        let sleep = submit_job(&n, "runmesh/sleep", json!({"ms": 150})).await;
        let fail = submit_job(&n, "runmesh/fail", json!({"message": "nope"})).await;
        assert_eq!(output(&wait_terminal(&n, &echo).await), json!({"x": 1}));
        let rec = wait_terminal(&n, &sleep).await;
        assert_eq!(output(&rec), json!({"slept_ms": 150}));
        assert!(rec.logs.len() >= 2, "{:?}", rec.logs);
        assert!(rec.inference_time_ms.unwrap() >= 150);
        let e = error(&wait_terminal(&n, &fail).await);
        assert_eq!(
            (e.error_type, e.message.as_str()),
            (ErrorType::RunnerError, "nope")
        );
        let _ = n.stop.send(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancels_a_running_job() {
        let n = node(WorkerConfig::default(), AppRegistry::with_builtins()).await;
        let id = submit_job(&n, "runmesh/sleep", json!({"ms": 600_000})).await;
        for _ in 0..200 {
            if n.joblog
                .read(|t| matches!(t.get(&id).map(|r| &r.state), Some(JobState::Running { .. })))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = n
            .joblog
            .propose(JobCommand::RequestCancel {
                request_id: id.clone(),
                now_ms: n.joblog.now_ms(),
            })
            .await
            .unwrap();
        assert_eq!(r, CommandResult::CancellationRequested);
        let rec = wait_terminal(&n, &id).await;
        assert!(
            matches!(rec.state, JobState::Cancelled { .. }),
            "{:?}",
            rec.state
        );
        let _ = n.stop.send(true);
    }

    struct Panics;
    impl crate::apps::App for Panics {
        fn manifest(&self) -> crate::apps::AppManifest {
            crate::apps::AppManifest::new(AppId::new("test", "panics").unwrap(), "")
        }
        fn validate(
            &self,
            _: Option<&str>,
            _: &serde_json::Value,
        ) -> Result<(), Vec<runmesh_proto::fal::FieldError>> {
            Ok(())
        }
        fn run(&self, _ctx: JobContext, _input: serde_json::Value) -> crate::apps::AppFuture {
            Box::pin(async { panic!("boom") })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_app_fails_its_job_and_the_worker_goes_on() {
        let mut reg = AppRegistry::with_builtins();
        reg.register(Arc::new(Panics)).unwrap();
        let n = node(
            WorkerConfig {
                slots: 1,
                ..WorkerConfig::default()
            },
            reg,
        )
        .await;
        let bad = submit_job(&n, "test/panics", json!({})).await;
        let good = submit_job(&n, "runmesh/echo", json!({"ok": true})).await;
        let e = error(&wait_terminal(&n, &bad).await);
        assert_eq!(e.error_type, ErrorType::InternalError);
        assert!(e.message.contains("boom"), "{}", e.message);
        assert_eq!(output(&wait_terminal(&n, &good).await), json!({"ok": true}));
        let _ = n.stop.send(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_partials_and_respects_slots() {
        let n = node(
            WorkerConfig {
                slots: 2,
                ..WorkerConfig::default()
            },
            AppRegistry::with_builtins(),
        )
        .await;
        let sleeps: Vec<RequestId> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(submit_job(&n, "runmesh/sleep", json!({"ms": 200})).await);
            }
            v
        };
        tokio::time::sleep(Duration::from_millis(80)).await;
        let running = n.joblog.read(|t| t.running_count(t_node(&n)));
        assert!(running <= 2, "{running} running with 2 slots");
        for id in &sleeps {
            wait_terminal(&n, id).await;
        }
        // The stream job's partials reach a subscriber that listens before the job runs.
        let mut s = spec("runmesh/stream", Priority::Normal);
        s.input_json = json!({"n": 3, "interval_ms": 5}).to_string();
        let mut rx = n.partials.subscribe(&s.request_id);
        let id = s.request_id.clone();
        n.joblog
            .propose(JobCommand::Submit { spec: s })
            .await
            .unwrap();
        assert_eq!(output(&wait_terminal(&n, &id).await), json!({"n": 3}));
        let mut got = Vec::new();
        while let Ok(p) = rx.try_recv() {
            got.push(p);
        }
        assert_eq!(got, [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"i":2}"#]);
        let _ = n.stop.send(true);
    }

    fn t_node(n: &Node) -> NodeId {
        n.joblog.node_id()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_job_is_requeued_after_its_lease_and_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let joblog = JobLog::open(
            runmesh_raft::JobLogConfig::single_node(dir.path().join("raft")),
            clock.clone(),
            Arc::new(runmesh_raft::transport::NoNetwork),
        )
        .await
        .unwrap();
        assert!(joblog.wait_healthy(Duration::from_secs(10)).await);
        // A previous process claimed the job and died.
        let mut s = spec("runmesh/echo", Priority::Normal);
        s.input_json = json!({"again": 1}).to_string();
        let id = s.request_id.clone();
        joblog
            .propose(JobCommand::Submit { spec: s })
            .await
            .unwrap();
        let assign = JobCommand::Assign {
            request_id: id.clone(),
            worker: joblog.node_id(),
            lease_ms: 300,
            now_ms: clock.now_ms(),
        };
        assert_eq!(
            joblog.propose(assign).await.unwrap(),
            CommandResult::Assigned { attempt: 1 }
        );
        let (stop, stop_rx) = watch::channel(false);
        start_dispatcher(
            &joblog,
            &AppRegistry::with_builtins(),
            &WorkerConfig::default(),
            &clock,
            stop_rx.clone(),
        );
        let worker = Worker::new(
            joblog.clone(),
            Arc::new(AppRegistry::with_builtins()),
            PartialHub::default(),
            clock.clone(),
            WorkerConfig::default(),
        );
        tokio::spawn(worker.run(stop_rx.clone()));
        tokio::spawn(run_ticker(
            joblog.clone(),
            clock,
            Duration::from_millis(20),
            stop_rx,
        ));
        let n = Node {
            joblog,
            stop,
            _dir: dir,
            partials: PartialHub::default(),
        };
        let rec = wait_terminal(&n, &id).await;
        assert_eq!(output(&rec), json!({"again": 1}));
        assert_eq!(rec.attempts, 2);
        let _ = n.stop.send(true);
    }
}
