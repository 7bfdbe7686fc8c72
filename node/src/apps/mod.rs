//! The runner contract: what an app is ([`App`]), what it sees while it runs ([`JobContext`]), how it
//! fails ([`AppError`]), and the [`AppRegistry`] that the gateway asks which apps exist.
//!
//! Apps are the edge of the node: they may sleep and do real work. The worker owns every decision about
//! jobs (claiming, leases, recording outcomes); an app only turns one input into one output.

pub mod audio;
pub mod builtin;
pub mod cli;
#[cfg(feature = "models")]
pub mod gemma;
#[cfg(feature = "models")]
pub mod minilm;
#[cfg(feature = "models")]
pub mod model_app;
pub mod models;
pub mod onnx;
pub mod pool;
pub mod schema;
pub mod setup;
#[cfg(feature = "models")]
pub mod vad;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use runmesh_gateway_node::{AppCatalog, PartialHub};
use runmesh_proto::fal::FieldError;
use runmesh_proto::{
    AppId, Clock, ErrorType, FileRef, JobError, LogLevel, LogLine, ModelId, RequestId,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// Longest log message kept; longer ones are cut, so one line cannot bloat a Raft entry.
pub const LOG_MESSAGE_MAX_BYTES: usize = 16 * 1024;

/// What an app says about itself: what it serves, what it accepts, what it costs to run.
///
/// The scheduler and the capacity advert read the cost fields; the gateway's 422 validation reads
/// `input_schema`. Build one with [`AppManifest::new`] and the `with_*` methods, so new fields can be
/// added without touching every app.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppManifest {
    pub id: AppId,
    pub description: String,
    /// The app emits partial outputs (meaningful for `/stream`).
    pub streams: bool,
    /// Names of the model weights the app serves (e.g. `all-MiniLM-L6-v2`); empty for apps without.
    #[serde(default)]
    pub models: Vec<String>,
    /// JSON Schema (the subset in [`schema`]) of the input object; checked before the app's own
    /// `validate`, so a bad input gets a 422 at submit time.
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// JSON Schema of the output object (documentation for clients; not enforced).
    #[serde(default)]
    pub output_schema: Option<Value>,
    /// GPU memory one loaded instance needs, in MB (0: runs on CPU).
    #[serde(default)]
    pub gpu_memory_mb: u64,
    /// Host memory one loaded instance holds, in MB (what the warm pool budgets).
    #[serde(default)]
    pub memory_mb: u64,
    /// MIME types of the files the app may produce (e.g. `audio/wav`); empty when it produces none.
    #[serde(default)]
    pub artifact_types: Vec<String>,
    /// What loading the app costs before its first job, in ms (weights read, kernels warmed).
    #[serde(default)]
    pub warmup_ms: u64,
}

impl AppManifest {
    pub fn new(id: AppId, description: impl Into<String>) -> Self {
        Self {
            id,
            description: description.into(),
            streams: false,
            models: Vec::new(),
            input_schema: None,
            output_schema: None,
            gpu_memory_mb: 0,
            memory_mb: 0,
            artifact_types: Vec::new(),
            warmup_ms: 0,
        }
    }

    pub fn streaming(mut self, streams: bool) -> Self {
        self.streams = streams;
        self
    }

    pub fn with_models(mut self, models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    pub fn with_input_schema(mut self, schema: Value) -> Self {
        self.input_schema = Some(schema);
        self
    }

    pub fn with_output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    pub fn with_cost(mut self, memory_mb: u64, gpu_memory_mb: u64, warmup_ms: u64) -> Self {
        self.memory_mb = memory_mb;
        self.gpu_memory_mb = gpu_memory_mb;
        self.warmup_ms = warmup_ms;
        self
    }

    pub fn with_artifact_types(
        mut self,
        types: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.artifact_types = types.into_iter().map(Into::into).collect();
        self
    }
}

/// The future an app's run returns. Boxed and `'static` so the worker can spawn it on its own task,
/// which is what lets it survive (and report) a panicking app.
pub type AppFuture = Pin<Box<dyn Future<Output = Result<Value, AppError>> + Send + 'static>>;

/// A runnable app. Implementations must be cheap to share: one instance serves every job.
pub trait App: Send + Sync + 'static {
    fn manifest(&self) -> AppManifest;

    /// Checks an input before it is accepted (at submit time, so a bad input never reaches the queue).
    /// `input` is known to be a JSON object.
    fn validate(&self, subpath: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>>;

    /// Runs one job. The output must be a JSON object. Long waits should also watch
    /// [`JobContext::cancelled`], so a cancelled job stops promptly.
    fn run(&self, ctx: JobContext, input: Value) -> AppFuture;

    /// Whether a job could start now without waiting (per-model concurrency limits). The worker may
    /// skip claiming jobs of an app that says no, leaving them to other nodes or a later round.
    fn has_capacity(&self) -> bool {
        true
    }

    /// Whether a job would start without loading anything first (model weights in the warm pool).
    /// Apps without weights are always warm.
    fn is_warm(&self) -> bool {
        true
    }
}

/// Why a run failed, as the client will see it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub message: String,
    pub error_type: ErrorType,
    /// Status of the result endpoint; the error type's default when `None`.
    pub http_status: Option<u16>,
    /// A fal `detail` body replacing the plain message.
    pub detail: Option<Value>,
}

impl AppError {
    /// The app itself failed (`runner_server_error`, 500).
    pub fn runner(message: impl Into<String>) -> Self {
        Self::new(ErrorType::RunnerError, message)
    }

    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            error_type,
            http_status: None,
            detail: None,
        }
    }

    /// The run stopped because the job was cancelled.
    pub fn cancelled() -> Self {
        Self::new(ErrorType::ClientCancelled, "cancelled")
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn into_job_error(self) -> JobError {
        JobError {
            error_type: self.error_type,
            http_status: self
                .http_status
                .unwrap_or_else(|| self.error_type.http_status()),
            detail_json: self.detail.map(|d| d.to_string()),
            message: self.message,
        }
    }
}

/// Where apps put the files they make and find the files they are given: the node's blob store
/// (`crate::artifacts`). Files go in and out by path, so an app never holds a large file in memory.
pub trait FileSink: Send + Sync + 'static {
    /// A directory for an app's scratch files (on the same disk as the store).
    fn scratch_dir(&self) -> std::path::PathBuf;
    /// Stores the file at `path` (moved or copied into the store) as a blob; returns what was
    /// stored and the URL clients fetch it at.
    fn store_file(
        &self,
        path: std::path::PathBuf,
        content_type: String,
        file_name: String,
    ) -> futures::future::BoxFuture<'static, Result<(FileRef, String), String>>;
    /// Whether an output file of `bytes` may be kept: no larger than an upload may be
    /// (`--upload-limit-bytes`), and the disk keeps its free floor after it. `Err` says why not.
    /// Asked before the file is written, so a refused one never fills the disk.
    fn room_for(&self, bytes: u64) -> Result<(), String>;
    /// A local file with the bytes an input URL names: one of our `/files/` URLs (fetched from a
    /// peer if need be, no HTTP round trip) or a `data:` URI.
    fn resolve_input(
        &self,
        url: String,
    ) -> futures::future::BoxFuture<'static, Result<std::path::PathBuf, String>>;
}

/// The files a job produced, shared between its context and its worker.
pub type EmittedFiles = Arc<std::sync::Mutex<Vec<FileRef>>>;

/// What a running app can see and do: write log lines, publish partial outputs, notice cancellation,
/// emit files.
pub struct JobContext {
    request_id: RequestId,
    model: ModelId,
    logs: mpsc::Sender<LogLine>,
    logs_dropped: Arc<AtomicU64>,
    partials: PartialHub,
    stop: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
    files: Option<Arc<dyn FileSink>>,
    emitted: EmittedFiles,
}

impl JobContext {
    /// `logs` is bounded: when the worker falls behind, further lines are dropped and counted.
    pub fn new(
        request_id: RequestId,
        model: ModelId,
        logs: mpsc::Sender<LogLine>,
        partials: PartialHub,
        stop: watch::Receiver<bool>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            request_id,
            model,
            logs,
            logs_dropped: Arc::new(AtomicU64::new(0)),
            partials,
            stop,
            clock,
            files: None,
            emitted: EmittedFiles::default(),
        }
    }

    /// Gives the app the node's blob store; the files it emits are recorded in `emitted`.
    pub fn with_files(mut self, sink: Arc<dyn FileSink>, emitted: EmittedFiles) -> Self {
        self.files = Some(sink);
        self.emitted = emitted;
        self
    }

    fn sink(&self) -> Result<&Arc<dyn FileSink>, AppError> {
        self.files
            .as_ref()
            .ok_or_else(|| AppError::new(ErrorType::InternalError, "this node stores no files"))
    }

    /// Refuses (a runner error saying why) an output file of `bytes` this node would not keep
    /// ([`FileSink::room_for`]): asked before writing it.
    pub fn reserve_file(&self, bytes: u64) -> Result<(), AppError> {
        self.sink()?
            .room_for(bytes)
            .map_err(|why| AppError::new(ErrorType::RunnerError, why))
    }

    /// A fresh path for a scratch file (the app writes it, then hands it to [`Self::emit_file`]).
    pub fn scratch_path(&self) -> Result<std::path::PathBuf, AppError> {
        let dir = self.sink()?.scratch_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| AppError::new(ErrorType::InternalError, format!("scratch dir: {e}")))?;
        Ok(dir.join(format!("{}-{}", self.request_id, uuid_like())))
    }

    /// Stores the file at `path` as a blob of the job's output and returns its fal File object
    /// (`url`, `content_type`, `file_name`, `file_size`) to put into the output.
    pub async fn emit_file(
        &self,
        path: std::path::PathBuf,
        content_type: &str,
        file_name: &str,
    ) -> Result<Value, AppError> {
        let sink = self.sink()?.clone();
        let (file, url) = sink
            .store_file(path, content_type.to_string(), file_name.to_string())
            .await
            .map_err(|e| AppError::new(ErrorType::InternalError, format!("storing a file: {e}")))?;
        let value = serde_json::json!({
            "url": url,
            "content_type": file.content_type,
            "file_name": file.file_name,
            "file_size": file.size,
        });
        self.emitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(file);
        Ok(value)
    }

    /// A local path with the bytes of an input file URL (our `/files/` URLs, `data:` URIs).
    pub async fn input_file(&self, url: &str) -> Result<std::path::PathBuf, AppError> {
        let sink = self.sink()?.clone();
        sink.resolve_input(url.to_string())
            .await
            .map_err(|e| AppError::new(ErrorType::BadRequest, e).with_status(422))
    }

    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The endpoint the job was submitted to, subpath included.
    pub fn model(&self) -> &ModelId {
        &self.model
    }

    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > LOG_MESSAGE_MAX_BYTES {
            let mut cut = LOG_MESSAGE_MAX_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let line = LogLine {
            timestamp_ms: self.clock.now_ms(),
            level,
            message,
        };
        if self.logs.try_send(line).is_err() {
            self.logs_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn info(&self, message: impl Into<String>) {
        self.log(LogLevel::Info, message);
    }

    /// Reports progress as a log line (`progress 3/10`), which status polls with `?logs=1` show.
    pub fn progress(&self, done: u64, total: u64) {
        self.log(LogLevel::Info, format!("progress {done}/{total}"));
    }

    /// Log lines lost because the worker's buffer was full.
    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped.load(Ordering::Relaxed)
    }

    /// Publishes a partial output to `/stream` listeners (dropped when nobody listens).
    pub fn partial(&self, value: &Value) {
        self.partials.publish(&self.request_id, value.to_string());
    }

    pub fn is_cancelled(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the job should stop (cancelled, or the worker let go of it).
    pub async fn cancelled(&self) {
        let mut stop = self.stop.clone();
        // An Err means the worker dropped the job: stopping is right then too.
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Sleeps `ms` unless the job is cancelled first; returns false when cancelled.
    pub async fn sleep_ms(&self, ms: u64) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => !self.is_cancelled(),
            _ = self.cancelled() => false,
        }
    }
}

/// A short random suffix for scratch file names.
fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{t:x}-{n}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("app {0} is registered twice")]
    Duplicate(AppId),
}

/// One registered app with its manifest, read once at registration (manifests carry schemas).
#[derive(Clone)]
struct Entry {
    app: Arc<dyn App>,
    manifest: AppManifest,
}

/// The apps this node serves, and the ones it knows of but cannot serve (with why).
#[derive(Clone, Default)]
pub struct AppRegistry {
    apps: BTreeMap<AppId, Entry>,
    unavailable: BTreeMap<AppId, String>,
    pool: Option<Arc<pool::WarmPool>>,
}

impl AppRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the `runmesh/*` built-in apps.
    pub fn with_builtins() -> Self {
        let mut reg = Self::new();
        for app in builtin::all() {
            // Built-in ids are distinct constants, so this cannot collide.
            let _ = reg.register(app);
        }
        reg
    }

    pub fn register(&mut self, app: Arc<dyn App>) -> Result<(), RegistryError> {
        let manifest = app.manifest();
        let id = manifest.id.clone();
        if self.apps.contains_key(&id) {
            return Err(RegistryError::Duplicate(id));
        }
        self.unavailable.remove(&id);
        self.apps.insert(id, Entry { app, manifest });
        Ok(())
    }

    /// Records an app this node knows but does not serve (weights missing, runner down), and why.
    /// It is not advertised; [`AppRegistry::unavailable`] lists it for operators.
    pub fn mark_unavailable(&mut self, app: AppId, reason: impl Into<String>) {
        if !self.apps.contains_key(&app) {
            self.unavailable.insert(app, reason.into());
        }
    }

    /// Apps known but not served here, with the reason (for logs and `/admin/cluster`).
    pub fn unavailable(&self) -> Vec<(AppId, String)> {
        self.unavailable
            .iter()
            .map(|(id, why)| (id.clone(), why.clone()))
            .collect()
    }

    pub fn get(&self, app: &AppId) -> Option<Arc<dyn App>> {
        self.apps.get(app).map(|e| e.app.clone())
    }

    pub fn serves(&self, app: &AppId) -> bool {
        self.apps.contains_key(app)
    }

    /// The warm pool the model apps share (for [`AppRegistry::warm_models`]).
    pub fn set_pool(&mut self, pool: Arc<pool::WarmPool>) {
        self.pool = Some(pool);
    }

    /// Models loaded now, most recently used first (for the capacity advert: warm nodes are
    /// preferred for their models).
    pub fn warm_models(&self) -> Vec<String> {
        self.pool
            .as_ref()
            .map(|p| p.warm_models())
            .unwrap_or_default()
    }

    /// Apps served here whose next job starts without a load (for the capacity advert; the scheduler
    /// prefers warm nodes).
    pub fn warm_apps(&self) -> Vec<AppId> {
        self.apps
            .iter()
            .filter(|(_, e)| e.app.is_warm())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether `app` is served here and could start a job now (see [`App::has_capacity`]).
    pub fn has_capacity(&self, app: &AppId) -> bool {
        self.apps.get(app).is_some_and(|e| e.app.has_capacity())
    }

    pub fn manifest(&self, app: &AppId) -> Option<&AppManifest> {
        self.apps.get(app).map(|e| &e.manifest)
    }

    pub fn manifests(&self) -> Vec<AppManifest> {
        self.apps.values().map(|e| e.manifest.clone()).collect()
    }
}

impl AppCatalog for AppRegistry {
    fn contains(&self, app: &AppId) -> bool {
        self.serves(app)
    }

    fn validate(&self, model: &ModelId, input: &Value) -> Result<(), Vec<FieldError>> {
        let Some(entry) = self.apps.get(&model.app) else {
            return Err(vec![FieldError::body(
                "",
                format!("unknown app {}", model.app),
                "app_not_found",
            )]);
        };
        if !input.is_object() {
            return Err(vec![FieldError::body(
                "",
                "Input should be a valid dictionary",
                "dict_type",
            )]);
        }
        if let Some(schema) = &entry.manifest.input_schema {
            let errors = schema::validate(schema, input);
            if !errors.is_empty() {
                return Err(errors);
            }
        }
        entry.app.validate(model.subpath.as_deref(), input)
    }

    fn apps(&self) -> Vec<AppId> {
        self.apps.keys().cloned().collect()
    }
}

/// Field checks shared by apps, with pydantic's messages and error types (what fal apps answer).
pub mod fields {
    use super::{FieldError, Value};

    /// An optional integer field within `min..=max`; `Ok(None)` when absent or null.
    pub fn int_in_range(
        input: &Value,
        field: &str,
        min: i64,
        max: i64,
        errors: &mut Vec<FieldError>,
    ) -> Option<i64> {
        let value = input.get(field)?;
        if value.is_null() {
            return None;
        }
        let Some(n) = as_integer(value) else {
            errors.push(FieldError::body(
                field,
                "Input should be a valid integer",
                "int_type",
            ));
            return None;
        };
        if n < min {
            errors.push(FieldError::body(
                field,
                format!("Input should be greater than or equal to {min}"),
                "greater_than_equal",
            ));
            return None;
        }
        if n > max {
            errors.push(FieldError::body(
                field,
                format!("Input should be less than or equal to {max}"),
                "less_than_equal",
            ));
            return None;
        }
        Some(n)
    }

    /// Integers, and floats with no fractional part (pydantic accepts `5.0` for an int).
    fn as_integer(value: &Value) -> Option<i64> {
        if let Some(n) = value.as_i64() {
            return Some(n);
        }
        if value.as_u64().is_some() {
            // Larger than i64::MAX: report it as out of range rather than as not an integer.
            return Some(i64::MAX);
        }
        let f = value.as_f64()?;
        (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    }

    pub fn missing(field: &str) -> FieldError {
        FieldError::body(field, "Field required", "missing")
    }

    /// An optional string field; `Ok(None)` when absent or null.
    pub fn string(input: &Value, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
        match input.get(field)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => {
                errors.push(FieldError::body(
                    field,
                    "Input should be a valid string",
                    "string_type",
                ));
                None
            }
        }
    }
}

/// Test helpers: a [`JobContext`] wired to channels the test holds.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub struct TestJob {
        pub ctx: JobContext,
        pub logs: mpsc::Receiver<LogLine>,
        pub partials: tokio::sync::broadcast::Receiver<String>,
        pub stop: watch::Sender<bool>,
    }

    pub fn job(model: &str) -> TestJob {
        let id = RequestId::new_random();
        let hub = PartialHub::default();
        let partials = hub.subscribe(&id);
        let (log_tx, logs) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        #[allow(clippy::unwrap_used)]
        let model = ModelId::parse(model).unwrap();
        let ctx = JobContext::new(
            id,
            model,
            log_tx,
            hub,
            stop_rx,
            Arc::new(runmesh_proto::SystemClock),
        );
        TestJob {
            ctx,
            logs,
            partials,
            stop,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn model(s: &str) -> ModelId {
        ModelId::parse(s).unwrap()
    }

    #[test]
    fn registry_lists_builtins_and_rejects_duplicates() {
        let mut reg = AppRegistry::with_builtins();
        let ids: Vec<String> = reg.apps().iter().map(|a| a.to_string()).collect();
        assert_eq!(
            ids,
            [
                "runmesh/echo",
                "runmesh/fail",
                "runmesh/hash",
                "runmesh/noise",
                "runmesh/sleep",
                "runmesh/stream"
            ]
        );
        assert!(reg.contains(&model("runmesh/echo").app));
        assert!(!reg.contains(&model("runmesh/nope").app));
        let dup = builtin::all().remove(0);
        assert!(matches!(
            reg.register(dup),
            Err(RegistryError::Duplicate(_))
        ));
    }

    #[test]
    fn registry_requires_an_object_input() {
        let reg = AppRegistry::with_builtins();
        let err = reg
            .validate(&model("runmesh/echo"), &json!([1]))
            .unwrap_err();
        assert_eq!(err[0].kind, "dict_type");
        assert_eq!(err[0].loc, vec!["body"]);
        assert!(reg.validate(&model("runmesh/echo"), &json!({})).is_ok());
        assert!(reg.validate(&model("runmesh/unknown"), &json!({})).is_err());
    }

    struct Schemed;
    impl App for Schemed {
        fn manifest(&self) -> AppManifest {
            AppManifest::new(AppId::new("test", "schemed").unwrap(), "x")
                .with_input_schema(json!({"type": "object", "required": ["q"],
                    "properties": {"q": {"type": "string"}}}))
                .with_cost(10, 2048, 50)
        }
        fn validate(&self, _: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>> {
            // Runs only after the schema passed.
            assert!(input["q"].is_string());
            if input["q"] == "bad" {
                return Err(vec![FieldError::body("q", "custom", "value_error")]);
            }
            Ok(())
        }
        fn run(&self, _: JobContext, input: Value) -> AppFuture {
            Box::pin(async move { Ok(input) })
        }
        fn is_warm(&self) -> bool {
            false
        }
    }

    #[test]
    fn registry_checks_the_manifest_schema_before_the_app() {
        let mut reg = AppRegistry::with_builtins();
        reg.register(Arc::new(Schemed)).unwrap();
        let m = model("test/schemed/sub");
        assert_eq!(reg.validate(&m, &json!({})).unwrap_err()[0].kind, "missing");
        assert_eq!(
            reg.validate(&m, &json!({"q": 1})).unwrap_err()[0].kind,
            "string_type"
        );
        assert_eq!(
            reg.validate(&m, &json!({"q": "bad"})).unwrap_err()[0].kind,
            "value_error"
        );
        assert!(reg.validate(&m, &json!({"q": "ok"})).is_ok());
        let man = reg.manifest(&m.app).unwrap();
        assert_eq!(
            (man.memory_mb, man.gpu_memory_mb, man.warmup_ms),
            (10, 2048, 50)
        );
        // Cold apps are left out of the warm list; apps without weights are in it.
        let warm: Vec<String> = reg.warm_apps().iter().map(|a| a.to_string()).collect();
        assert!(warm.contains(&"runmesh/echo".to_string()));
        assert!(!warm.contains(&"test/schemed".to_string()));
        assert!(reg.has_capacity(&m.app));
        assert!(!reg.has_capacity(&model("runmesh/nope").app));
    }

    #[test]
    fn unavailable_apps_are_listed_with_their_reason_until_registered() {
        let mut reg = AppRegistry::new();
        let id = AppId::new("test", "schemed").unwrap();
        reg.mark_unavailable(id.clone(), "weights missing");
        assert_eq!(
            reg.unavailable(),
            vec![(id.clone(), "weights missing".to_string())]
        );
        assert!(!reg.serves(&id));
        reg.register(Arc::new(Schemed)).unwrap();
        assert!(reg.unavailable().is_empty());
        reg.mark_unavailable(id, "ignored: it is served");
        assert!(reg.unavailable().is_empty());
    }

    #[test]
    fn app_errors_become_job_errors() {
        let e = AppError::runner("boom").into_job_error();
        assert_eq!(e.error_type, ErrorType::RunnerError);
        assert_eq!(e.http_status, 500);
        assert_eq!(e.message, "boom");
        assert_eq!(e.detail_json, None);
        let e = AppError::new(ErrorType::BadRequest, "bad")
            .with_status(422)
            .with_detail(json!([{"msg": "x"}]))
            .into_job_error();
        assert_eq!(e.http_status, 422);
        assert_eq!(e.detail_json.as_deref(), Some(r#"[{"msg":"x"}]"#));
    }

    #[tokio::test]
    async fn context_truncates_and_counts_dropped_lines() {
        let id = RequestId::new_random();
        let (tx, mut rx) = mpsc::channel(1);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let ctx = JobContext::new(
            id,
            model("runmesh/echo"),
            tx,
            PartialHub::default(),
            stop_rx,
            Arc::new(runmesh_proto::SystemClock),
        );
        ctx.info("é".repeat(LOG_MESSAGE_MAX_BYTES));
        ctx.info("second");
        assert_eq!(ctx.logs_dropped(), 1);
        let line = rx.recv().await.unwrap();
        assert!(line.message.len() <= LOG_MESSAGE_MAX_BYTES);
        assert_eq!(line.level, LogLevel::Info);
    }

    #[tokio::test]
    async fn context_sees_cancellation() {
        let t = testing::job("runmesh/sleep");
        assert!(!t.ctx.is_cancelled());
        t.stop.send(true).unwrap();
        assert!(t.ctx.is_cancelled());
        t.ctx.cancelled().await;
        assert!(!t.ctx.sleep_ms(10_000).await);
    }

    #[test]
    fn integer_fields_follow_pydantic() {
        let mut errs = Vec::new();
        let input = json!({"a": 5, "b": 5.0, "c": 5.5, "d": "5", "e": -1, "f": 11, "g": u64::MAX});
        assert_eq!(fields::int_in_range(&input, "a", 0, 10, &mut errs), Some(5));
        assert_eq!(fields::int_in_range(&input, "b", 0, 10, &mut errs), Some(5));
        assert_eq!(fields::int_in_range(&input, "z", 0, 10, &mut errs), None);
        assert!(errs.is_empty());
        for f in ["c", "d", "e", "f", "g"] {
            assert_eq!(fields::int_in_range(&input, f, 0, 10, &mut errs), None);
        }
        let kinds: Vec<&str> = errs.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "int_type",
                "int_type",
                "greater_than_equal",
                "less_than_equal",
                "less_than_equal"
            ]
        );
    }
}
