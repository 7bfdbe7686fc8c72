//! Jobs as the replicated log knows them: the spec a client submitted, the states a job moves through,
//! log lines, and the commands (Raft entries) that move it.
//!
//! JSON payloads are kept as JSON text, not `serde_json::Value`: bincode cannot encode self-describing
//! values, and text keeps the exact bytes a client sent.

use serde::{Deserialize, Serialize};

use crate::ids::{AppId, ModelId, NodeId, RequestId};

/// fal's `X-Fal-Queue-Priority`: `normal` jobs run before `low` ones.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Priority {
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Some(Self::Normal),
            "low" => Some(Self::Low),
            _ => None,
        }
    }

    /// Sort rank: lower runs first.
    pub fn rank(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Low => 1,
        }
    }
}

/// How the client waits for the result: polling the queue, or holding a sync connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SubmitMode {
    #[default]
    Queue,
    Sync,
    Stream,
}

/// Everything a client asked for, fixed at submit time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub request_id: RequestId,
    pub model: ModelId,
    /// The input object as JSON text.
    pub input_json: String,
    pub webhook_url: Option<String>,
    pub priority: Priority,
    /// `X-Fal-Request-Timeout`: the job must start within this many ms of submission.
    pub start_timeout_ms: Option<u64>,
    pub runner_hint: Option<String>,
    /// `X-Fal-No-Retry`: a job whose worker dies is failed instead of queued again.
    pub no_retry: bool,
    pub mode: SubmitMode,
    /// The key id that submitted it, when authenticated.
    pub submitted_by: Option<String>,
    /// The node that accepted the request.
    pub accepted_by: NodeId,
    /// The region of the accepting node, when configured.
    pub accepted_region: Option<String>,
    /// Milliseconds since the Unix epoch on the accepting node's clock.
    pub submitted_at_ms: u64,
}

impl JobSpec {
    pub fn app(&self) -> &AppId {
        &self.model.app
    }
}

/// fal's log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Stdout,
    Stderr,
    Info,
    Warn,
    Error,
    Debug,
}

impl LogLevel {
    pub fn as_fal_str(self) -> &'static str {
        match self {
            Self::Stdout => "STDOUT",
            Self::Stderr => "STDERR",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
            Self::Debug => "DEBUG",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub timestamp_ms: u64,
    pub level: LogLevel,
    pub message: String,
}

/// fal's request error types (`error_type`), with the HTTP status the result endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorType {
    /// The app itself failed; `detail` carries its message.
    RunnerError,
    RequestTimeout,
    ClientCancelled,
    RunnerDisconnected,
    BadRequest,
    InternalError,
}

impl ErrorType {
    pub fn as_fal_str(self) -> &'static str {
        match self {
            Self::RunnerError => "runner_server_error",
            Self::RequestTimeout => "request_timeout",
            Self::ClientCancelled => "client_cancelled",
            Self::RunnerDisconnected => "runner_disconnected",
            Self::BadRequest => "bad_request",
            Self::InternalError => "internal_error",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::RunnerError => 500,
            Self::RequestTimeout => 504,
            Self::ClientCancelled => 499,
            Self::RunnerDisconnected => 503,
            Self::BadRequest => 400,
            Self::InternalError => 500,
        }
    }
}

/// A file a job produced (or an input a client uploaded), held as a content-addressed blob.
/// `hash` is the BLAKE3 hash in 64 hex digits: the blob's name on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub hash: String,
    pub size: u64,
    pub content_type: String,
    pub file_name: String,
}

/// Every blob hash a JSON text names through a `/files/<64 hex>` URL (inputs that reference our
/// own files), lowercased, in order of appearance.
pub fn file_hashes_in(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(i) = rest.find("/files/") {
        let after = &rest[i + 7..];
        if let Some(h) = after.get(..64) {
            if h.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(h.to_ascii_lowercase());
            }
        }
        rest = after;
    }
    out
}

/// Longest file list one completion may carry.
pub const FILES_PER_JOB_MAX: usize = 64;

/// Why a job did not produce an output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub error_type: ErrorType,
    pub message: String,
    /// HTTP status the result endpoint answers with (an app may choose e.g. 422).
    pub http_status: u16,
    /// A fal `detail` body chosen by the app (JSON text), replacing the plain message.
    pub detail_json: Option<String>,
}

impl JobError {
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
            http_status: error_type.http_status(),
            detail_json: None,
        }
    }
}

/// The outcome recorded once per job; the first recorded one wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Output { output_json: String },
    Error(JobError),
}

/// Where a job is in its life. fal clients only ever see IN_QUEUE, IN_PROGRESS and COMPLETED;
/// `Cancelled` is shown as COMPLETED with `error_type: client_cancelled`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Running {
        worker: NodeId,
        /// Attempt number, starting at 1; a stale worker's messages carry an older one.
        attempt: u32,
        started_at_ms: u64,
        lease_until_ms: u64,
    },
    Completed {
        outcome: Outcome,
        completed_at_ms: u64,
    },
    Cancelled {
        cancelled_at_ms: u64,
    },
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed { .. } | Self::Cancelled { .. })
    }

    /// fal's status word.
    pub fn fal_status(&self) -> &'static str {
        match self {
            Self::Queued => "IN_QUEUE",
            Self::Running { .. } => "IN_PROGRESS",
            Self::Completed { .. } | Self::Cancelled { .. } => "COMPLETED",
        }
    }
}

/// A state change of the job table. Every command carries the proposer's clock reading (`now_ms`),
/// so that applying a command never reads a clock: replicas and the simulator apply identically.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobCommand {
    /// Accept a job into the queue.
    Submit { spec: JobSpec },
    /// Hand a queued job to a worker with a lease: IN_QUEUE → IN_PROGRESS.
    Assign {
        request_id: RequestId,
        worker: NodeId,
        lease_ms: u64,
        now_ms: u64,
    },
    /// A worker still runs the job: push its lease forward.
    RenewLease {
        request_id: RequestId,
        worker: NodeId,
        attempt: u32,
        lease_ms: u64,
        now_ms: u64,
    },
    /// Log lines a running job wrote.
    AppendLogs {
        request_id: RequestId,
        attempt: u32,
        lines: Vec<LogLine>,
    },
    /// The job produced an output. Ignored unless the job is running under this attempt.
    Complete {
        request_id: RequestId,
        worker: NodeId,
        attempt: u32,
        output_json: String,
        inference_time_ms: u64,
        now_ms: u64,
    },
    /// The job failed.
    Fail {
        request_id: RequestId,
        worker: NodeId,
        attempt: u32,
        error: JobError,
        inference_time_ms: u64,
        now_ms: u64,
    },
    /// A client asked to cancel: a queued job is cancelled at once, a running one is flagged for its worker.
    RequestCancel { request_id: RequestId, now_ms: u64 },
    /// The worker stopped a flagged job.
    Cancel {
        request_id: RequestId,
        attempt: u32,
        now_ms: u64,
    },
    /// Time passed: requeue jobs whose lease expired, fail jobs that missed their start deadline.
    Tick { now_ms: u64 },
    /// Forget finished jobs whose result is past its retention (fal keeps results 1 h, 6 min
    /// when ≥ 10 KB); they then answer as unknown requests. The proposer's policy travels in the
    /// command, so every replica forgets the same jobs.
    Expire { now_ms: u64, retention: Retention },
    /// `Complete` for an output with files: the blobs named in `files` are on `worker` (appended
    /// after the foundation's variants, so older entries decode unchanged).
    CompleteWithFiles {
        request_id: RequestId,
        worker: NodeId,
        attempt: u32,
        output_json: String,
        files: Vec<FileRef>,
        inference_time_ms: u64,
        now_ms: u64,
    },
    /// fal's "delete IO": forget a finished job's input and output payloads; every node drops
    /// its blobs at the next collection.
    DeleteIo { request_id: RequestId, now_ms: u64 },
    /// Forget the file lists that outlived their jobs' results (the blobs then go on every node)
    /// once `ttl_ms` (the artifact TTL, 30 days by default) has passed since their jobs ended.
    ForgetFiles { now_ms: u64, ttl_ms: u64 },
    /// An upload by the JS client's flow (`/storage/upload/initiate`, then `PUT`): its file URL
    /// names `token`, handed out before the bytes existed; this binds the token to the blob,
    /// which `holder` stores. The first binding of a token wins. Kept for the artifact TTL.
    NameUpload {
        token: String,
        file: FileRef,
        holder: NodeId,
        now_ms: u64,
    },
    /// `Submit` with its placement: the leader chose `worker` when it wrote the entry, so the job
    /// starts running there (as if `Assign` followed at once) with one Raft entry instead of two.
    /// Applies as `Submit` alone when the request id exists already.
    SubmitPlaced {
        spec: JobSpec,
        worker: NodeId,
        lease_ms: u64,
        now_ms: u64,
    },
}

/// Results at least this large (output JSON bytes) are kept for [`Retention::large_retain_ms`].
pub const LARGE_RESULT_BYTES: usize = 10 * 1024;

/// How long finished jobs stay readable after they end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub retain_ms: u64,
    /// For results of [`LARGE_RESULT_BYTES`] or more.
    pub large_retain_ms: u64,
}

impl Default for Retention {
    /// fal's: 1 hour, 6 minutes for large results.
    fn default() -> Self {
        Self {
            retain_ms: 3_600_000,
            large_retain_ms: 360_000,
        }
    }
}

impl JobCommand {
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Self::Submit { spec } | Self::SubmitPlaced { spec, .. } => Some(&spec.request_id),
            Self::Assign { request_id, .. }
            | Self::RenewLease { request_id, .. }
            | Self::AppendLogs { request_id, .. }
            | Self::Complete { request_id, .. }
            | Self::CompleteWithFiles { request_id, .. }
            | Self::DeleteIo { request_id, .. }
            | Self::Fail { request_id, .. }
            | Self::RequestCancel { request_id, .. }
            | Self::Cancel { request_id, .. } => Some(request_id),
            Self::Tick { .. }
            | Self::Expire { .. }
            | Self::ForgetFiles { .. }
            | Self::NameUpload { .. } => None,
        }
    }
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Submitted; `queue_position` jobs of the same app are ahead of it.
    Submitted { queue_position: u64 },
    /// A submit whose request id already exists (a client replay): nothing changed.
    Duplicate,
    /// Assigned under this attempt number.
    Assigned { attempt: u32 },
    /// Applied.
    Applied,
    /// A running job was flagged; its worker will stop it.
    CancellationRequested,
    /// A queued job was cancelled outright.
    Cancelled,
    /// Ticked: these jobs were requeued or failed.
    Ticked { requeued: u32, timed_out: u32 },
    /// Expired: this many finished jobs were forgotten.
    Expired { removed: u32 },
    /// Not applied, with the reason (stale attempt, wrong state, unknown job).
    Rejected(Rejection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    NotFound,
    AlreadyCompleted,
    NotQueued,
    StaleAttempt,
}
