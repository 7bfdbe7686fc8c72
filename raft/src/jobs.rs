//! The job table: the replicated state machine of runmesh, as a plain value.
//!
//! It is fed [`JobCommand`]s in log order and never reads a clock or touches I/O, so every replica, a
//! restarted node replaying its log, and the simulator reach the same table from the same commands.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use runmesh_proto::{
    AppId, CommandResult, ErrorType, FileRef, JobCommand, JobError, JobSpec, JobState, LogLine,
    NodeId, Outcome, Rejection, RequestId, Retention, FILES_PER_JOB_MAX, LARGE_RESULT_BYTES,
};
use serde::{Deserialize, Serialize};

/// Log lines kept per job; older lines are dropped first, so a chatty app cannot grow the log unbounded.
pub const LOG_LINES_MAX_PER_JOB: usize = 1000;

/// Queue order: priority first, then arrival.
type QueueKey = (u8, u64, RequestId);

/// One app's queued jobs in run order, with how many wait at each priority rank: a new submit
/// (the latest arrival) learns its position from the counts, without walking the queue.
#[derive(Clone, Debug, Default)]
struct AppQueue {
    order: BTreeSet<QueueKey>,
    per_rank: BTreeMap<u8, u64>,
}

impl AppQueue {
    fn insert(&mut self, key: QueueKey) {
        let rank = key.0;
        if self.order.insert(key) {
            *self.per_rank.entry(rank).or_default() += 1;
        }
    }

    fn remove(&mut self, key: &QueueKey) {
        if self.order.remove(key) {
            if let Some(n) = self.per_rank.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_rank.remove(&key.0);
                }
            }
        }
    }

    /// Jobs ahead of the newest job of `rank`: every queued job of that rank or a better one, but
    /// itself. Walking the set instead costs the queue's length on every node for every submit.
    fn ahead_of_newest(&self, rank: u8) -> u64 {
        self.per_rank
            .range(..=rank)
            .map(|(_, n)| n)
            .sum::<u64>()
            .saturating_sub(1)
    }
}

/// One job and everything recorded about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub spec: JobSpec,
    pub state: JobState,
    /// Arrival order in the log (0, 1, 2, ...).
    pub seq: u64,
    pub logs: Vec<LogLine>,
    /// Lines dropped from the front of `logs` because of [`LOG_LINES_MAX_PER_JOB`].
    pub logs_dropped: u64,
    /// A client asked to cancel while the job was running.
    pub cancel_requested: bool,
    /// How many times the job was handed to a worker.
    pub attempts: u32,
    pub started_at_ms: Option<u64>,
    pub inference_time_ms: Option<u64>,
    /// The worker of the latest attempt (kept after the job ends: `x-runmesh-worker`). Added in the
    /// mesh issue; the serde default covers self-describing encodings, not bincode snapshots.
    #[serde(default)]
    pub last_worker: Option<NodeId>,
    /// Files of the output (`CompleteWithFiles`): blobs that the worker holds (artifacts issue).
    #[serde(default)]
    pub files: Vec<FileRef>,
    /// When a client deleted the job's payloads (fal "delete IO"); its blobs are collected.
    #[serde(default)]
    pub io_deleted_at_ms: Option<u64>,
    /// The blobs the job named (outputs, input URLs) when its payloads were deleted: every node
    /// drops them.
    #[serde(default)]
    pub deleted_hashes: Vec<String>,
}

impl JobRecord {
    fn queue_key(&self) -> QueueKey {
        (
            self.spec.priority.rank(),
            self.seq,
            self.spec.request_id.clone(),
        )
    }

    fn start_deadline_ms(&self) -> Option<u64> {
        self.spec
            .start_timeout_ms
            .map(|t| self.spec.submitted_at_ms.saturating_add(t))
    }
}

/// The files of a job whose result has expired. Results are kept for an hour (fal's retention),
/// artifacts for their own, longer TTL (30 days by default): so the file list outlives the job
/// record, and the node's retention sweep keeps the blobs until [`JobCommand::ForgetFiles`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptFiles {
    pub request_id: RequestId,
    /// The job's arrival order (the newest naming of a hash wins in file lookups).
    pub seq: u64,
    pub finished_at_ms: u64,
    /// The worker that made the outputs (a provider of their blobs).
    pub worker: Option<NodeId>,
    pub files: Vec<FileRef>,
    /// Hashes the job's input named (uploads, large inputs kept as blobs).
    pub input_hashes: Vec<String>,
    /// A delete IO after the result expired: the blobs go, the record stays until forgotten.
    pub io_deleted_at_ms: Option<u64>,
}

/// A file uploaded under a token (see [`JobCommand::NameUpload`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedUpload {
    pub token: String,
    pub file: FileRef,
    pub holder: NodeId,
    pub named_at_ms: u64,
}

/// Longest upload token accepted (the gateway makes 48 hex characters).
pub const UPLOAD_TOKEN_LEN_MAX: usize = 128;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TableData {
    jobs: Vec<JobRecord>,
    next_seq: u64,
    kept_files: Vec<KeptFiles>,
    uploads: Vec<NamedUpload>,
}

/// The job table with its indexes. Indexes are derived: a snapshot holds the records alone.
#[derive(Clone, Debug, Default)]
pub struct JobTable {
    jobs: HashMap<RequestId, JobRecord>,
    next_seq: u64,
    queued: BTreeSet<QueueKey>,
    queued_by_app: HashMap<AppId, AppQueue>,
    /// Running jobs by lease expiry, for [`JobCommand::Tick`].
    leases: BTreeSet<(u64, RequestId)>,
    /// Running jobs by worker: the scheduler counts each node's jobs on every round and every
    /// worker looks for its own on every change, so neither may walk all leases.
    running_by_worker: HashMap<NodeId, BTreeSet<RequestId>>,
    /// Queued jobs by start deadline (`X-Fal-Request-Timeout`).
    start_deadlines: BTreeSet<(u64, RequestId)>,
    /// Finished jobs by end time, `[small results, large results]`, for [`JobCommand::Expire`].
    finished: [BTreeSet<(u64, RequestId)>; 2],
    /// File lists of expired jobs, and the same by end time for [`JobCommand::ForgetFiles`].
    kept_files: HashMap<RequestId, KeptFiles>,
    kept_by_time: BTreeSet<(u64, RequestId)>,
    /// Uploads by token, and the same by time for [`JobCommand::ForgetFiles`].
    uploads: HashMap<String, NamedUpload>,
    uploads_by_time: BTreeSet<(u64, String)>,
}

/// Removes from `map` (and its by-time index) the entries stamped more than `ttl_ms` before
/// `now_ms`; returns how many.
fn drop_older<K: Ord + Clone + std::hash::Hash + Eq, V>(
    by_time: &mut BTreeSet<(u64, K)>,
    map: &mut HashMap<K, V>,
    now_ms: u64,
    ttl_ms: u64,
) -> usize {
    let due: Vec<(u64, K)> = by_time
        .iter()
        .take_while(|(at, _)| at.saturating_add(ttl_ms) <= now_ms)
        .cloned()
        .collect();
    for key in &due {
        by_time.remove(key);
        map.remove(&key.1);
    }
    due.len()
}

/// Which `finished` index a job belongs in, and when it ended; `None` until it is terminal.
fn finished_key(rec: &JobRecord) -> Option<(usize, u64)> {
    match &rec.state {
        JobState::Completed {
            outcome,
            completed_at_ms,
        } => {
            let large = matches!(outcome, Outcome::Output { output_json } if output_json.len() >= LARGE_RESULT_BYTES);
            Some((usize::from(large), *completed_at_ms))
        }
        JobState::Cancelled { cancelled_at_ms } => Some((0, *cancelled_at_ms)),
        _ => None,
    }
}

impl JobTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn get(&self, id: &RequestId) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    /// Jobs ahead of this one in its app's queue (0 = next to run), or `None` when it is not queued.
    pub fn queue_position(&self, id: &RequestId) -> Option<u64> {
        let rec = self.jobs.get(id)?;
        if rec.state != JobState::Queued {
            return None;
        }
        let key = rec.queue_key();
        let queue = self.queued_by_app.get(rec.spec.app())?;
        Some(queue.order.range(..key).count() as u64)
    }

    /// Number of queued jobs of one app.
    pub fn queue_len(&self, app: &AppId) -> usize {
        self.queued_by_app.get(app).map_or(0, |q| q.order.len())
    }

    /// Number of queued jobs in total.
    pub fn queued_total(&self) -> usize {
        self.queued.len()
    }

    /// Queued jobs in run order (priority, then arrival).
    pub fn queued_in_order(&self) -> impl Iterator<Item = &JobRecord> + '_ {
        self.queued
            .iter()
            .filter_map(|(_, _, id)| self.jobs.get(id))
    }

    /// Jobs running on `worker`.
    pub fn running_on(&self, worker: NodeId) -> impl Iterator<Item = &JobRecord> + '_ {
        self.running_by_worker
            .get(&worker)
            .into_iter()
            .flatten()
            .filter_map(|id| self.jobs.get(id))
    }

    /// Number of jobs running on `worker`.
    pub fn running_count(&self, worker: NodeId) -> usize {
        self.running_by_worker.get(&worker).map_or(0, BTreeSet::len)
    }

    fn start_lease(&mut self, lease_until_ms: u64, id: &RequestId, worker: NodeId) {
        self.leases.insert((lease_until_ms, id.clone()));
        self.running_by_worker
            .entry(worker)
            .or_default()
            .insert(id.clone());
    }

    fn end_lease(&mut self, lease_until_ms: u64, id: &RequestId, worker: NodeId) {
        self.leases.remove(&(lease_until_ms, id.clone()));
        if let Some(ids) = self.running_by_worker.get_mut(&worker) {
            ids.remove(id);
            if ids.is_empty() {
                self.running_by_worker.remove(&worker);
            }
        }
    }

    /// All jobs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &JobRecord> + '_ {
        self.jobs.values()
    }

    /// File lists of jobs whose result expired (see [`KeptFiles`]), in no particular order.
    pub fn kept_files(&self) -> impl Iterator<Item = &KeptFiles> + '_ {
        self.kept_files.values()
    }

    /// The earliest instant at which [`JobCommand::ForgetFiles`] under `ttl_ms` would drop a
    /// kept file list.
    pub fn next_files_forget_due_ms(&self, ttl_ms: u64) -> Option<u64> {
        let kept = self.kept_by_time.first().map(|(at, _)| *at);
        let upload = self.uploads_by_time.first().map(|(at, _)| *at);
        kept.into_iter()
            .chain(upload)
            .min()
            .map(|at| at.saturating_add(ttl_ms))
    }

    /// The upload bound to `token`, if any.
    pub fn upload(&self, token: &str) -> Option<&NamedUpload> {
        self.uploads.get(token)
    }

    /// Every named upload, in no particular order.
    pub fn uploads(&self) -> impl Iterator<Item = &NamedUpload> + '_ {
        self.uploads.values()
    }

    /// The earliest instant at which a [`JobCommand::Tick`] would change something.
    pub fn next_tick_due_ms(&self) -> Option<u64> {
        let lease = self.leases.first().map(|(t, _)| *t);
        let deadline = self.start_deadlines.first().map(|(t, _)| *t);
        match (lease, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies one command. `touched` collects the ids whose state changed, for watchers.
    pub fn apply(&mut self, cmd: JobCommand, touched: &mut Vec<RequestId>) -> CommandResult {
        let first_touched = touched.len();
        let result = match cmd {
            JobCommand::Submit { spec } => self.submit(spec, touched),
            JobCommand::Assign {
                request_id,
                worker,
                lease_ms,
                now_ms,
            } => self.assign(request_id, worker, lease_ms, now_ms, touched),
            JobCommand::RenewLease {
                request_id,
                worker,
                attempt,
                lease_ms,
                now_ms,
            } => self.renew(request_id, worker, attempt, lease_ms, now_ms),
            JobCommand::AppendLogs {
                request_id,
                attempt,
                lines,
            } => self.append_logs(request_id, attempt, lines, touched),
            JobCommand::Complete {
                request_id,
                worker,
                attempt,
                output_json,
                inference_time_ms,
                now_ms,
            } => self.finish(
                request_id,
                worker,
                attempt,
                Outcome::Output { output_json },
                inference_time_ms,
                now_ms,
                touched,
            ),
            JobCommand::Fail {
                request_id,
                worker,
                attempt,
                error,
                inference_time_ms,
                now_ms,
            } => self.finish(
                request_id,
                worker,
                attempt,
                Outcome::Error(error),
                inference_time_ms,
                now_ms,
                touched,
            ),
            JobCommand::RequestCancel { request_id, now_ms } => {
                self.request_cancel(request_id, now_ms, touched)
            }
            JobCommand::Cancel {
                request_id,
                attempt,
                now_ms,
            } => self.cancel_running(request_id, attempt, now_ms, touched),
            JobCommand::Tick { now_ms } => self.tick(now_ms, touched),
            JobCommand::Expire { now_ms, retention } => {
                self.expire(now_ms, retention, |_| false, touched)
            }
            JobCommand::CompleteWithFiles {
                request_id,
                worker,
                attempt,
                output_json,
                mut files,
                inference_time_ms,
                now_ms,
            } => {
                files.truncate(FILES_PER_JOB_MAX);
                let res = self.finish(
                    request_id.clone(),
                    worker,
                    attempt,
                    Outcome::Output { output_json },
                    inference_time_ms,
                    now_ms,
                    touched,
                );
                if res == CommandResult::Applied {
                    if let Some(rec) = self.jobs.get_mut(&request_id) {
                        rec.files = files;
                    }
                }
                res
            }
            JobCommand::DeleteIo { request_id, now_ms } => {
                self.delete_io(request_id, now_ms, touched)
            }
            JobCommand::ForgetFiles { now_ms, ttl_ms } => self.forget_files(now_ms, ttl_ms),
            JobCommand::NameUpload {
                token,
                file,
                holder,
                now_ms,
            } => self.name_upload(token, file, holder, now_ms),
            JobCommand::SubmitPlaced {
                spec,
                worker,
                lease_ms,
                now_ms,
            } => {
                let id = spec.request_id.clone();
                let res = self.submit(spec, touched);
                if matches!(res, CommandResult::Submitted { .. }) {
                    self.assign(id, worker, lease_ms, now_ms, touched);
                }
                res
            }
        };
        // Every change of state goes through `touched`, so this one place sees each job end.
        for id in &touched[first_touched..] {
            if let Some((class, at)) = self.jobs.get(id).and_then(finished_key) {
                self.finished[class].insert((at, id.clone()));
            }
        }
        debug_assert!(self.indexes_consistent(), "job table indexes diverged");
        result
    }

    fn submit(&mut self, spec: JobSpec, touched: &mut Vec<RequestId>) -> CommandResult {
        if self.jobs.contains_key(&spec.request_id) {
            return CommandResult::Duplicate;
        }
        let id = spec.request_id.clone();
        let rec = JobRecord {
            spec,
            state: JobState::Queued,
            seq: self.next_seq,
            logs: Vec::new(),
            logs_dropped: 0,
            cancel_requested: false,
            attempts: 0,
            started_at_ms: None,
            inference_time_ms: None,
            last_worker: None,
            files: Vec::new(),
            io_deleted_at_ms: None,
            deleted_hashes: Vec::new(),
        };
        self.next_seq += 1;
        self.index_queued(&rec);
        // The newest arrival: behind every queued job of its app at its priority or a better one.
        let queue_position = self
            .queued_by_app
            .get(rec.spec.app())
            .map_or(0, |q| q.ahead_of_newest(rec.spec.priority.rank()));
        self.jobs.insert(id.clone(), rec);
        debug_assert_eq!(Some(queue_position), self.queue_position(&id));
        touched.push(id);
        CommandResult::Submitted { queue_position }
    }

    fn assign(
        &mut self,
        id: RequestId,
        worker: NodeId,
        lease_ms: u64,
        now_ms: u64,
        touched: &mut Vec<RequestId>,
    ) -> CommandResult {
        let Some(rec) = self.jobs.get(&id) else {
            return CommandResult::Rejected(Rejection::NotFound);
        };
        if rec.state != JobState::Queued {
            return CommandResult::Rejected(if rec.state.is_terminal() {
                Rejection::AlreadyCompleted
            } else {
                Rejection::NotQueued
            });
        }
        let rec = rec.clone();
        self.unindex_queued(&rec);
        let attempt = rec.attempts + 1;
        let lease_until_ms = now_ms.saturating_add(lease_ms);
        self.start_lease(lease_until_ms, &id, worker);
        if let Some(rec) = self.jobs.get_mut(&id) {
            rec.attempts = attempt;
            rec.last_worker = Some(worker);
            rec.started_at_ms.get_or_insert(now_ms);
            rec.state = JobState::Running {
                worker,
                attempt,
                started_at_ms: now_ms,
                lease_until_ms,
            };
        }
        touched.push(id);
        CommandResult::Assigned { attempt }
    }

    fn renew(
        &mut self,
        id: RequestId,
        by: NodeId,
        by_attempt: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> CommandResult {
        let Some(rec) = self.jobs.get_mut(&id) else {
            return CommandResult::Rejected(Rejection::NotFound);
        };
        match &mut rec.state {
            JobState::Running {
                worker,
                attempt,
                lease_until_ms,
                ..
            } if *worker == by && *attempt == by_attempt => {
                let old = *lease_until_ms;
                let new = now_ms.saturating_add(lease_ms).max(old);
                *lease_until_ms = new;
                self.leases.remove(&(old, id.clone()));
                self.leases.insert((new, id));
                CommandResult::Applied
            }
            state if state.is_terminal() => CommandResult::Rejected(Rejection::AlreadyCompleted),
            _ => CommandResult::Rejected(Rejection::StaleAttempt),
        }
    }

    fn append_logs(
        &mut self,
        id: RequestId,
        by_attempt: u32,
        lines: Vec<LogLine>,
        touched: &mut Vec<RequestId>,
    ) -> CommandResult {
        let Some(rec) = self.jobs.get_mut(&id) else {
            return CommandResult::Rejected(Rejection::NotFound);
        };
        // Lines of a superseded attempt would interleave with the live one's: drop them.
        if rec.attempts != by_attempt {
            return CommandResult::Rejected(Rejection::StaleAttempt);
        }
        rec.logs.extend(lines);
        if rec.logs.len() > LOG_LINES_MAX_PER_JOB {
            let excess = rec.logs.len() - LOG_LINES_MAX_PER_JOB;
            rec.logs.drain(..excess);
            rec.logs_dropped += excess as u64;
        }
        touched.push(id);
        CommandResult::Applied
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        id: RequestId,
        by: NodeId,
        by_attempt: u32,
        outcome: Outcome,
        inference_time_ms: u64,
        now_ms: u64,
        touched: &mut Vec<RequestId>,
    ) -> CommandResult {
        let Some(rec) = self.jobs.get_mut(&id) else {
            return CommandResult::Rejected(Rejection::NotFound);
        };
        let lease = match &rec.state {
            JobState::Running {
                worker,
                attempt,
                lease_until_ms,
                ..
            } if *worker == by && *attempt == by_attempt => *lease_until_ms,
            // The first recorded completion wins: anything after a terminal state is ignored.
            state if state.is_terminal() => {
                return CommandResult::Rejected(Rejection::AlreadyCompleted)
            }
            _ => return CommandResult::Rejected(Rejection::StaleAttempt),
        };
        rec.state = JobState::Completed {
            outcome,
            completed_at_ms: now_ms,
        };
        rec.inference_time_ms = Some(inference_time_ms);
        self.end_lease(lease, &id, by);
        touched.push(id);
        CommandResult::Applied
    }

    /// Drops a finished job's payloads: input and output text and its file list (the blobs go at
    /// the next collection on every node). A running or queued job is left alone.
    fn delete_io(
        &mut self,
        id: RequestId,
        now_ms: u64,
        touched: &mut Vec<RequestId>,
    ) -> CommandResult {
        let Some(rec) = self.jobs.get_mut(&id) else {
            // The result expired but its files are still kept: they go now.
            return match self.kept_files.get_mut(&id) {
                Some(kept) => {
                    kept.io_deleted_at_ms.get_or_insert(now_ms);
                    CommandResult::Applied
                }
                None => CommandResult::Rejected(Rejection::NotFound),
            };
        };
        if !rec.state.is_terminal() {
            return CommandResult::Rejected(Rejection::NotQueued);
        }
        let mut hashes: Vec<String> = rec.files.drain(..).map(|f| f.hash).collect();
        hashes.extend(runmesh_proto::file_hashes_in(&rec.spec.input_json));
        hashes.sort();
        hashes.dedup();
        hashes.truncate(FILES_PER_JOB_MAX * 2);
        rec.deleted_hashes.extend(hashes);
        rec.spec.input_json = "{}".into();
        if let JobState::Completed {
            outcome: Outcome::Output { output_json },
            ..
        } = &mut rec.state
        {
            *output_json = "{}".into();
        }
        rec.io_deleted_at_ms.get_or_insert(now_ms);
        touched.push(id);
        CommandResult::Applied
    }

    fn request_cancel(
        &mut self,
        id: RequestId,
        now_ms: u64,
        touched: &mut Vec<RequestId>,
    ) -> CommandResult {
        let Some(rec) = self.jobs.get(&id) else {
            return CommandResult::Rejected(Rejection::NotFound);
        };
        match rec.state {
            JobState::Queued => {
                let rec = rec.clone();
                self.unindex_queued(&rec);
                if let Some(rec) = self.jobs.get_mut(&id) {
                    rec.state = JobState::Cancelled {
                        cancelled_at_ms: now_ms,
                    };
                }
                touched.push(id);
                CommandResult::Cancelled
            }
            JobState::Running { .. } => {
                if let Some(rec) = self.jobs.get_mut(&id) {
                    rec.cancel_requested = true;
                }
                touched.push(id);
                CommandResult::CancellationRequested
            }
            JobState::Completed { .. } | JobState::Cancelled { .. } => {
                CommandResult::Rejected(Rejection::AlreadyCompleted)
            }
        }
    }

    fn cancel_running(
        &mut self,
        id: RequestId,
        by_attempt: u32,
        now_ms: u64,
        touched: &mut Vec<RequestId>,
    ) -> CommandResult {
        let Some(rec) = self.jobs.get_mut(&id) else {
            return CommandResult::Rejected(Rejection::NotFound);
        };
        let (lease, worker) = match &rec.state {
            JobState::Running {
                worker,
                attempt,
                lease_until_ms,
                ..
            } if *attempt == by_attempt => (*lease_until_ms, *worker),
            state if state.is_terminal() => {
                return CommandResult::Rejected(Rejection::AlreadyCompleted)
            }
            _ => return CommandResult::Rejected(Rejection::StaleAttempt),
        };
        rec.state = JobState::Cancelled {
            cancelled_at_ms: now_ms,
        };
        self.end_lease(lease, &id, worker);
        touched.push(id);
        CommandResult::Cancelled
    }

    fn tick(&mut self, now_ms: u64, touched: &mut Vec<RequestId>) -> CommandResult {
        let mut requeued = 0;
        let mut timed_out = 0;
        let expired: Vec<(u64, RequestId)> = self
            .leases
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .cloned()
            .collect();
        for (lease, id) in expired {
            match self.jobs.get(&id).map(|r| &r.state) {
                Some(JobState::Running { worker, .. }) => {
                    let worker = *worker;
                    self.end_lease(lease, &id, worker);
                }
                _ => {
                    self.leases.remove(&(lease, id.clone()));
                }
            }
            let Some(rec) = self.jobs.get_mut(&id) else {
                continue;
            };
            if rec.cancel_requested {
                rec.state = JobState::Cancelled {
                    cancelled_at_ms: now_ms,
                };
            } else if rec.spec.no_retry {
                rec.state = JobState::Completed {
                    outcome: Outcome::Error(JobError::new(
                        ErrorType::RunnerDisconnected,
                        "the worker running this request stopped answering",
                    )),
                    completed_at_ms: now_ms,
                };
            } else {
                rec.state = JobState::Queued;
                let rec = rec.clone();
                self.index_queued(&rec);
                requeued += 1;
            }
            touched.push(id);
        }
        let missed: Vec<(u64, RequestId)> = self
            .start_deadlines
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .cloned()
            .collect();
        for (_, id) in missed {
            let Some(rec) = self.jobs.get(&id).cloned() else {
                continue;
            };
            self.unindex_queued(&rec);
            if let Some(rec) = self.jobs.get_mut(&id) {
                rec.state = JobState::Completed {
                    outcome: Outcome::Error(JobError::new(
                        ErrorType::RequestTimeout,
                        "Request timed out",
                    )),
                    completed_at_ms: now_ms,
                };
            }
            timed_out += 1;
            touched.push(id);
        }
        CommandResult::Ticked {
            requeued,
            timed_out,
        }
    }

    /// [`JobCommand::Expire`]: forgets the finished jobs older than `retention` allows at `now_ms`,
    /// except those `keep` holds (a webhook still owed reads its job). Only a Raft-applied
    /// command removes jobs, so every replica forgets the same ones.
    pub fn expire(
        &mut self,
        now_ms: u64,
        retention: Retention,
        keep: impl Fn(&RequestId) -> bool,
        touched: &mut Vec<RequestId>,
    ) -> CommandResult {
        let mut removed = 0;
        for (class, retain_ms) in [(0, retention.retain_ms), (1, retention.large_retain_ms)] {
            let due: Vec<(u64, RequestId)> = self.finished[class]
                .iter()
                .take_while(|(at, _)| at.saturating_add(retain_ms) <= now_ms)
                .filter(|(_, id)| !keep(id))
                .cloned()
                .collect();
            for key in due {
                self.finished[class].remove(&key);
                if let Some(rec) = self.jobs.remove(&key.1) {
                    self.keep_files_of(rec, key.0);
                }
                touched.push(key.1);
                removed += 1;
            }
        }
        CommandResult::Expired { removed }
    }

    /// An expiring job's file list, when it names files and its payloads were not deleted (a
    /// deleted job's blobs are already being collected).
    fn keep_files_of(&mut self, rec: JobRecord, finished_at_ms: u64) {
        if rec.io_deleted_at_ms.is_some() {
            return;
        }
        let mut input_hashes = runmesh_proto::file_hashes_in(&rec.spec.input_json);
        input_hashes.sort();
        input_hashes.dedup();
        input_hashes.truncate(FILES_PER_JOB_MAX);
        if rec.files.is_empty() && input_hashes.is_empty() {
            return;
        }
        let id = rec.spec.request_id.clone();
        self.kept_by_time.insert((finished_at_ms, id.clone()));
        self.kept_files.insert(
            id.clone(),
            KeptFiles {
                request_id: id,
                seq: rec.seq,
                finished_at_ms,
                worker: rec.last_worker,
                files: rec.files,
                input_hashes,
                io_deleted_at_ms: None,
            },
        );
    }

    /// [`JobCommand::ForgetFiles`]: drops the kept file lists and named uploads older than `ttl_ms`
    /// at `now_ms`.
    fn forget_files(&mut self, now_ms: u64, ttl_ms: u64) -> CommandResult {
        let removed = drop_older(&mut self.kept_by_time, &mut self.kept_files, now_ms, ttl_ms)
            + drop_older(&mut self.uploads_by_time, &mut self.uploads, now_ms, ttl_ms);
        CommandResult::Expired {
            removed: u32::try_from(removed).unwrap_or(u32::MAX),
        }
    }

    fn name_upload(
        &mut self,
        token: String,
        file: FileRef,
        holder: NodeId,
        now_ms: u64,
    ) -> CommandResult {
        if token.is_empty() || token.len() > UPLOAD_TOKEN_LEN_MAX {
            return CommandResult::Rejected(Rejection::NotFound);
        }
        if self.uploads.contains_key(&token) {
            return CommandResult::Duplicate;
        }
        self.uploads_by_time.insert((now_ms, token.clone()));
        self.uploads.insert(
            token.clone(),
            NamedUpload {
                token,
                file,
                holder,
                named_at_ms: now_ms,
            },
        );
        CommandResult::Applied
    }

    /// The earliest instant at which an [`JobCommand::Expire`] under `retention` would forget a
    /// job (or find one that `keep` still holds).
    pub fn next_expiry_due_ms(&self, retention: Retention) -> Option<u64> {
        [retention.retain_ms, retention.large_retain_ms]
            .iter()
            .zip(&self.finished)
            .filter_map(|(retain_ms, set)| set.first().map(|(at, _)| at.saturating_add(*retain_ms)))
            .min()
    }

    fn index_queued(&mut self, rec: &JobRecord) {
        let key = rec.queue_key();
        self.queued.insert(key.clone());
        self.queued_by_app
            .entry(rec.spec.app().clone())
            .or_default()
            .insert(key);
        if let Some(deadline) = rec.start_deadline_ms() {
            // A requeued job that already started once is not held to its start deadline again.
            if rec.started_at_ms.is_none() {
                self.start_deadlines
                    .insert((deadline, rec.spec.request_id.clone()));
            }
        }
    }

    fn unindex_queued(&mut self, rec: &JobRecord) {
        let key = rec.queue_key();
        self.queued.remove(&key);
        if let Some(queue) = self.queued_by_app.get_mut(rec.spec.app()) {
            queue.remove(&key);
            if queue.order.is_empty() {
                self.queued_by_app.remove(rec.spec.app());
            }
        }
        if let Some(deadline) = rec.start_deadline_ms() {
            self.start_deadlines
                .remove(&(deadline, rec.spec.request_id.clone()));
        }
    }

    fn indexes_consistent(&self) -> bool {
        let queued = self
            .jobs
            .values()
            .filter(|r| r.state == JobState::Queued)
            .count();
        let running = self
            .jobs
            .values()
            .filter(|r| matches!(r.state, JobState::Running { .. }))
            .count();
        let by_app: usize = self.queued_by_app.values().map(|q| q.order.len()).sum();
        let ranks_counted = self
            .queued_by_app
            .values()
            .all(|q| q.per_rank.values().sum::<u64>() == q.order.len() as u64);
        let terminal = self.jobs.values().filter(|r| r.state.is_terminal()).count();
        let finished: usize = self.finished.iter().map(BTreeSet::len).sum();
        queued == self.queued.len()
            && by_app == queued
            && ranks_counted
            && running == self.leases.len()
            && running
                == self
                    .running_by_worker
                    .values()
                    .map(BTreeSet::len)
                    .sum::<usize>()
            && self.jobs.values().all(|r| match r.state {
                JobState::Running { worker, .. } => self
                    .running_by_worker
                    .get(&worker)
                    .is_some_and(|ids| ids.contains(&r.spec.request_id)),
                _ => true,
            })
            && terminal == finished
            && self.kept_by_time.len() == self.kept_files.len()
            && self.uploads_by_time.len() == self.uploads.len()
    }

    /// Serialises the records (not the indexes) for a Raft snapshot.
    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, runmesh_proto::ProtoError> {
        let mut jobs: Vec<JobRecord> = self.jobs.values().cloned().collect();
        jobs.sort_by_key(|r| r.seq);
        let mut kept_files: Vec<KeptFiles> = self.kept_files.values().cloned().collect();
        kept_files.sort_by_key(|k| k.seq);
        let mut uploads: Vec<NamedUpload> = self.uploads.values().cloned().collect();
        uploads.sort_by(|a, b| (a.named_at_ms, &a.token).cmp(&(b.named_at_ms, &b.token)));
        runmesh_proto::codec::encode(&TableData {
            jobs,
            next_seq: self.next_seq,
            kept_files,
            uploads,
        })
    }

    /// Rebuilds a table, indexes included, from [`Self::to_snapshot_bytes`].
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, runmesh_proto::ProtoError> {
        let data: TableData = runmesh_proto::codec::decode(bytes)?;
        let mut table = Self {
            next_seq: data.next_seq,
            ..Self::default()
        };
        for rec in data.jobs {
            match &rec.state {
                JobState::Queued => table.index_queued(&rec),
                JobState::Running {
                    lease_until_ms,
                    worker,
                    ..
                } => table.start_lease(*lease_until_ms, &rec.spec.request_id, *worker),
                _ => {
                    if let Some((class, at)) = finished_key(&rec) {
                        table.finished[class].insert((at, rec.spec.request_id.clone()));
                    }
                }
            }
            table.jobs.insert(rec.spec.request_id.clone(), rec);
        }
        for kept in data.kept_files {
            table
                .kept_by_time
                .insert((kept.finished_at_ms, kept.request_id.clone()));
            table.kept_files.insert(kept.request_id.clone(), kept);
        }
        for up in data.uploads {
            table
                .uploads_by_time
                .insert((up.named_at_ms, up.token.clone()));
            table.uploads.insert(up.token.clone(), up);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runmesh_proto::{ModelId, Priority, SubmitMode};

    fn spec(model: &str, priority: Priority, timeout: Option<u64>) -> JobSpec {
        JobSpec {
            request_id: RequestId::new_random(),
            model: ModelId::parse(model).unwrap(),
            input_json: "{}".into(),
            webhook_url: None,
            priority,
            start_timeout_ms: timeout,
            runner_hint: None,
            no_retry: false,
            mode: SubmitMode::Queue,
            submitted_by: None,
            accepted_by: 1,
            accepted_region: None,
            submitted_at_ms: 1_000,
        }
    }

    fn apply(t: &mut JobTable, cmd: JobCommand) -> CommandResult {
        t.apply(cmd, &mut Vec::new())
    }

    fn submit(t: &mut JobTable, s: &JobSpec) -> CommandResult {
        apply(t, JobCommand::Submit { spec: s.clone() })
    }

    fn assign(t: &mut JobTable, id: &RequestId, now_ms: u64) -> CommandResult {
        apply(
            t,
            JobCommand::Assign {
                request_id: id.clone(),
                worker: 7,
                lease_ms: 1_000,
                now_ms,
            },
        )
    }

    #[test]
    fn a_placed_submit_runs_at_once_and_a_replay_is_not_placed_again() {
        let mut t = JobTable::new();
        let s = spec("o/a", Priority::Normal, Some(1_000));
        let placed = |s: &JobSpec| JobCommand::SubmitPlaced {
            spec: s.clone(),
            worker: 3,
            lease_ms: 500,
            now_ms: 100,
        };
        assert_eq!(
            apply(&mut t, placed(&s)),
            CommandResult::Submitted { queue_position: 0 }
        );
        let rec = t.get(&s.request_id).unwrap();
        assert_eq!(
            rec.state,
            JobState::Running {
                worker: 3,
                attempt: 1,
                started_at_ms: 100,
                lease_until_ms: 600,
            }
        );
        assert_eq!(t.queued_total(), 0);
        // Its lease is what a Tick looks at next (no start deadline left for a started job).
        assert_eq!(t.next_tick_due_ms(), Some(600));
        assert_eq!(apply(&mut t, placed(&s)), CommandResult::Duplicate);
        assert_eq!(t.get(&s.request_id).unwrap().attempts, 1);
    }

    #[test]
    fn queue_positions_follow_priority_then_arrival_per_app() {
        let mut t = JobTable::new();
        let a = spec("o/a", Priority::Normal, None);
        let b = spec("o/a/sub", Priority::Low, None);
        let c = spec("o/a", Priority::Normal, None);
        let other = spec("o/z", Priority::Normal, None);
        assert_eq!(
            submit(&mut t, &a),
            CommandResult::Submitted { queue_position: 0 }
        );
        assert_eq!(
            submit(&mut t, &b),
            CommandResult::Submitted { queue_position: 1 }
        );
        assert_eq!(
            submit(&mut t, &c),
            CommandResult::Submitted { queue_position: 1 }
        );
        assert_eq!(
            submit(&mut t, &other),
            CommandResult::Submitted { queue_position: 0 }
        );
        assert_eq!(t.queue_position(&b.request_id), Some(2));
        assert_eq!(submit(&mut t, &a), CommandResult::Duplicate);
        let order: Vec<_> = t
            .queued_in_order()
            .map(|r| r.spec.request_id.clone())
            .collect();
        assert_eq!(
            order,
            vec![
                a.request_id.clone(),
                c.request_id.clone(),
                other.request_id,
                b.request_id.clone()
            ]
        );
        assign(&mut t, &a.request_id, 2_000);
        assert_eq!(t.queue_position(&c.request_id), Some(0));
        assert_eq!(t.queue_position(&a.request_id), None);
        // The counts that give a new submit its position follow the job that left the queue.
        let d = spec("o/a", Priority::Low, None);
        assert_eq!(
            submit(&mut t, &d),
            CommandResult::Submitted { queue_position: 2 }
        );
        let e = spec("o/a", Priority::Normal, None);
        assert_eq!(
            submit(&mut t, &e),
            CommandResult::Submitted { queue_position: 1 }
        );
        assert_eq!(t.queue_position(&d.request_id), Some(3));
        assert!(t.indexes_consistent());
    }

    #[test]
    fn first_completion_wins_and_stale_attempts_are_ignored() {
        let mut t = JobTable::new();
        let s = spec("o/a", Priority::Normal, None);
        let id = s.request_id.clone();
        submit(&mut t, &s);
        assert_eq!(
            assign(&mut t, &id, 2_000),
            CommandResult::Assigned { attempt: 1 }
        );
        // Lease runs out: the job is queued again and handed out under attempt 2.
        assert_eq!(
            apply(&mut t, JobCommand::Tick { now_ms: 3_001 }),
            CommandResult::Ticked {
                requeued: 1,
                timed_out: 0
            }
        );
        assert_eq!(
            assign(&mut t, &id, 3_100),
            CommandResult::Assigned { attempt: 2 }
        );
        let complete = |attempt, out: &str| JobCommand::Complete {
            request_id: id.clone(),
            worker: 7,
            attempt,
            output_json: out.into(),
            inference_time_ms: 5,
            now_ms: 3_200,
        };
        assert_eq!(
            apply(&mut t, complete(1, "\"old\"")),
            CommandResult::Rejected(Rejection::StaleAttempt)
        );
        assert_eq!(
            apply(&mut t, complete(2, "\"new\"")),
            CommandResult::Applied
        );
        assert_eq!(
            apply(&mut t, complete(2, "\"again\"")),
            CommandResult::Rejected(Rejection::AlreadyCompleted)
        );
        match &t.get(&id).unwrap().state {
            JobState::Completed {
                outcome: Outcome::Output { output_json },
                ..
            } => assert_eq!(output_json, "\"new\""),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cancel_queued_at_once_and_running_through_the_worker() {
        let mut t = JobTable::new();
        let q = spec("o/a", Priority::Normal, None);
        let r = spec("o/a", Priority::Normal, None);
        submit(&mut t, &q);
        submit(&mut t, &r);
        assign(&mut t, &q.request_id, 2_000);
        let cancel = |id: &RequestId| JobCommand::RequestCancel {
            request_id: id.clone(),
            now_ms: 2_100,
        };
        assert_eq!(
            apply(&mut t, cancel(&r.request_id)),
            CommandResult::Cancelled
        );
        assert_eq!(
            apply(&mut t, cancel(&q.request_id)),
            CommandResult::CancellationRequested
        );
        assert!(t.get(&q.request_id).unwrap().cancel_requested);
        let stop = JobCommand::Cancel {
            request_id: q.request_id.clone(),
            attempt: 1,
            now_ms: 2_200,
        };
        assert_eq!(apply(&mut t, stop), CommandResult::Cancelled);
        assert_eq!(
            apply(&mut t, cancel(&q.request_id)),
            CommandResult::Rejected(Rejection::AlreadyCompleted)
        );
        // A cancelled job never reports a completion afterwards.
        let late = JobCommand::Complete {
            request_id: q.request_id.clone(),
            worker: 7,
            attempt: 1,
            output_json: "1".into(),
            inference_time_ms: 1,
            now_ms: 2_300,
        };
        assert_eq!(
            apply(&mut t, late),
            CommandResult::Rejected(Rejection::AlreadyCompleted)
        );
        assert_eq!(t.queued_total(), 0);
    }

    #[test]
    fn start_deadline_fails_a_job_that_never_started() {
        let mut t = JobTable::new();
        let s = spec("o/a", Priority::Normal, Some(500));
        submit(&mut t, &s);
        assert_eq!(t.next_tick_due_ms(), Some(1_500));
        assert_eq!(
            apply(&mut t, JobCommand::Tick { now_ms: 1_499 }),
            CommandResult::Ticked {
                requeued: 0,
                timed_out: 0
            }
        );
        assert_eq!(
            apply(&mut t, JobCommand::Tick { now_ms: 1_500 }),
            CommandResult::Ticked {
                requeued: 0,
                timed_out: 1
            }
        );
        match &t.get(&s.request_id).unwrap().state {
            JobState::Completed {
                outcome: Outcome::Error(e),
                ..
            } => assert_eq!(e.error_type, ErrorType::RequestTimeout),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn logs_are_bounded_and_tied_to_the_attempt() {
        let mut t = JobTable::new();
        let s = spec("o/a", Priority::Normal, None);
        submit(&mut t, &s);
        assign(&mut t, &s.request_id, 2_000);
        let line = LogLine {
            timestamp_ms: 1,
            level: runmesh_proto::LogLevel::Info,
            message: "x".into(),
        };
        let lines = vec![line; LOG_LINES_MAX_PER_JOB + 5];
        let cmd = JobCommand::AppendLogs {
            request_id: s.request_id.clone(),
            attempt: 1,
            lines,
        };
        assert_eq!(apply(&mut t, cmd), CommandResult::Applied);
        let rec = t.get(&s.request_id).unwrap();
        assert_eq!(rec.logs.len(), LOG_LINES_MAX_PER_JOB);
        assert_eq!(rec.logs_dropped, 5);
        let stale = JobCommand::AppendLogs {
            request_id: s.request_id.clone(),
            attempt: 9,
            lines: vec![],
        };
        assert_eq!(
            apply(&mut t, stale),
            CommandResult::Rejected(Rejection::StaleAttempt)
        );
    }

    #[test]
    fn snapshot_round_trip_keeps_records_and_indexes() {
        let mut t = JobTable::new();
        let specs: Vec<_> = (0..5)
            .map(|_| spec("o/a", Priority::Normal, Some(10_000)))
            .collect();
        for s in &specs {
            submit(&mut t, s);
        }
        assign(&mut t, &specs[0].request_id, 2_000);
        let bytes = t.to_snapshot_bytes().unwrap();
        let back = JobTable::from_snapshot_bytes(&bytes).unwrap();
        assert_eq!(back.len(), 5);
        assert!(back.indexes_consistent());
        assert_eq!(back.queue_position(&specs[4].request_id), Some(3));
        assert_eq!(back.next_tick_due_ms(), t.next_tick_due_ms());
        assert_eq!(back.to_snapshot_bytes().unwrap(), bytes);
    }
    fn run_to_end(t: &mut JobTable, s: &JobSpec, output_json: String, now_ms: u64) {
        submit(t, s);
        assign(t, &s.request_id, now_ms);
        let done = JobCommand::Complete {
            request_id: s.request_id.clone(),
            worker: 7,
            attempt: 1,
            output_json,
            inference_time_ms: 1,
            now_ms,
        };
        assert_eq!(apply(t, done), CommandResult::Applied);
    }

    #[test]
    fn finished_jobs_expire_after_their_retention_large_ones_sooner() {
        let mut t = JobTable::new();
        let r = Retention {
            retain_ms: 10_000,
            large_retain_ms: 1_000,
        };
        let small = spec("o/a", Priority::Normal, None);
        let large = spec("o/a", Priority::Normal, None);
        let cancelled = spec("o/a", Priority::Normal, None);
        let queued = spec("o/a", Priority::Normal, None);
        run_to_end(&mut t, &small, "{}".into(), 2_000);
        let big = format!("\"{}\"", "x".repeat(LARGE_RESULT_BYTES));
        run_to_end(&mut t, &large, big, 2_000);
        submit(&mut t, &cancelled);
        let cancel = JobCommand::RequestCancel {
            request_id: cancelled.request_id.clone(),
            now_ms: 2_500,
        };
        assert_eq!(apply(&mut t, cancel), CommandResult::Cancelled);
        submit(&mut t, &queued);
        assert_eq!(t.next_expiry_due_ms(r), Some(3_000));
        let expire = |now_ms| JobCommand::Expire {
            now_ms,
            retention: r,
        };
        assert_eq!(
            apply(&mut t, expire(2_999)),
            CommandResult::Expired { removed: 0 }
        );
        let mut touched = Vec::new();
        assert_eq!(
            t.apply(expire(3_000), &mut touched),
            CommandResult::Expired { removed: 1 }
        );
        assert_eq!(touched, vec![large.request_id.clone()]);
        assert!(t.get(&large.request_id).is_none());
        assert_eq!(t.next_expiry_due_ms(r), Some(12_000));
        // A job `keep` holds (a webhook still owed) stays past its time, and goes once released.
        let held = small.request_id.clone();
        assert_eq!(
            t.expire(12_600, r, |id| *id == held, &mut Vec::new()),
            CommandResult::Expired { removed: 1 }
        );
        assert!(t.get(&small.request_id).is_some());
        assert!(t.get(&cancelled.request_id).is_none());
        assert_eq!(
            apply(&mut t, expire(12_600)),
            CommandResult::Expired { removed: 1 }
        );
        // Queued and running jobs never expire.
        assert_eq!(t.len(), 1);
        assert!(t.get(&queued.request_id).is_some());
        assert_eq!(t.next_expiry_due_ms(r), None);
        assert!(t.indexes_consistent());
    }

    #[test]
    fn snapshots_stop_growing_with_history_once_results_expire() {
        let mut t = JobTable::new();
        let r = Retention {
            retain_ms: 5_000,
            large_retain_ms: 500,
        };
        let mut sizes = Vec::new();
        // One job a second for 60 s, expiring as the ticker would.
        for i in 0..60u64 {
            let now_ms = 2_000 + i * 1_000;
            let s = spec("o/a", Priority::Normal, None);
            run_to_end(&mut t, &s, format!("{{\"i\":{i}}}"), now_ms);
            apply(
                &mut t,
                JobCommand::Expire {
                    now_ms,
                    retention: r,
                },
            );
            sizes.push(t.to_snapshot_bytes().unwrap().len());
        }
        assert!(t.len() <= 6, "{} jobs kept", t.len());
        // Past the retention window the snapshot is as large as it was when the window filled.
        assert!(sizes[59] <= sizes[10] + 16, "{sizes:?}");
        let back = JobTable::from_snapshot_bytes(&t.to_snapshot_bytes().unwrap()).unwrap();
        assert!(back.indexes_consistent());
        assert_eq!(back.next_expiry_due_ms(r), t.next_expiry_due_ms(r));
    }

    #[test]
    fn files_outlive_their_results_until_forgotten_or_deleted() {
        let mut t = JobTable::new();
        let r = Retention {
            retain_ms: 1_000,
            large_retain_ms: 1_000,
        };
        let file = |n: u8| FileRef {
            hash: format!("{n:02x}").repeat(32),
            size: 10,
            content_type: "image/png".into(),
            file_name: "out.png".into(),
        };
        let mut ids = Vec::new();
        for (i, with_files) in [(0u8, true), (1, true), (2, false)] {
            let mut s = spec("o/a", Priority::Normal, None);
            s.input_json = format!("{{\"u\":\"http://n/files/{}/in.png\"}}", "ee".repeat(32));
            if !with_files {
                s.input_json = "{}".into();
            }
            submit(&mut t, &s);
            assign(&mut t, &s.request_id, 2_000);
            let files = if with_files { vec![file(i)] } else { vec![] };
            let done = JobCommand::CompleteWithFiles {
                request_id: s.request_id.clone(),
                worker: 7,
                attempt: 1,
                output_json: "{}".into(),
                files,
                inference_time_ms: 1,
                now_ms: 2_500,
            };
            assert_eq!(apply(&mut t, done), CommandResult::Applied);
            ids.push(s.request_id);
        }
        apply(
            &mut t,
            JobCommand::Expire {
                now_ms: 4_000,
                retention: r,
            },
        );
        assert!(t.is_empty(), "every result expired");
        // The two jobs that named files keep them (the third named none).
        let mut kept: Vec<&KeptFiles> = t.kept_files().collect();
        kept.sort_by_key(|k| k.seq);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].files, vec![file(0)]);
        assert_eq!(kept[0].worker, Some(7));
        assert_eq!(kept[0].finished_at_ms, 2_500);
        assert_eq!(kept[0].input_hashes, vec!["ee".repeat(32)]);
        assert_eq!(t.next_files_forget_due_ms(10_000), Some(12_500));
        let back = JobTable::from_snapshot_bytes(&t.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back.kept_files().count(), 2);
        assert!(back.indexes_consistent());
        // Delete IO still reaches an expired job's files.
        let del = JobCommand::DeleteIo {
            request_id: ids[1].clone(),
            now_ms: 5_000,
        };
        assert_eq!(apply(&mut t, del), CommandResult::Applied);
        assert!(t.kept_files().any(|k| k.io_deleted_at_ms == Some(5_000)));
        let unknown = JobCommand::DeleteIo {
            request_id: ids[2].clone(),
            now_ms: 5_000,
        };
        assert_eq!(
            apply(&mut t, unknown),
            CommandResult::Rejected(Rejection::NotFound)
        );
        // Not yet past the artifact TTL, then past it.
        let forget = |now_ms| JobCommand::ForgetFiles {
            now_ms,
            ttl_ms: 10_000,
        };
        assert_eq!(
            apply(&mut t, forget(12_499)),
            CommandResult::Expired { removed: 0 }
        );
        assert_eq!(
            apply(&mut t, forget(12_500)),
            CommandResult::Expired { removed: 2 }
        );
        assert_eq!(t.kept_files().count(), 0);
        assert!(t.indexes_consistent());
    }

    #[test]
    fn an_upload_token_binds_once_and_is_forgotten_at_the_ttl() {
        let mut t = JobTable::new();
        let file = FileRef {
            hash: "cd".repeat(32),
            size: 3,
            content_type: "image/png".into(),
            file_name: "a.png".into(),
        };
        let name = |token: &str, now_ms| JobCommand::NameUpload {
            token: token.into(),
            file: file.clone(),
            holder: 4,
            now_ms,
        };
        assert_eq!(apply(&mut t, name("tok", 1_000)), CommandResult::Applied);
        assert_eq!(apply(&mut t, name("tok", 1_500)), CommandResult::Duplicate);
        assert!(matches!(
            apply(&mut t, name("", 1_500)),
            CommandResult::Rejected(_)
        ));
        assert_eq!(t.upload("tok").map(|u| u.holder), Some(4));
        let back = JobTable::from_snapshot_bytes(&t.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back.upload("tok"), t.upload("tok"));
        assert!(back.indexes_consistent());
        assert_eq!(t.next_files_forget_due_ms(500), Some(1_500));
        let forget = JobCommand::ForgetFiles {
            now_ms: 1_500,
            ttl_ms: 500,
        };
        assert_eq!(apply(&mut t, forget), CommandResult::Expired { removed: 1 });
        assert!(t.upload("tok").is_none());
        assert!(t.indexes_consistent());
    }
}
