//! External runners: apps written in any language, run as a child process of the node and spoken to
//! with JSON lines over its stdin/stdout (the contract is in docs/RUNNERS.md).
//!
//! One [`RunnerProcess`] per `--runner` command. It serves one or more apps (its manifest lists them);
//! each becomes an [`ExternalApp`] in the node's registry and meets the same [`App`] contract as the
//! built-in and candle apps: schema validation at the gateway, logs, progress, partial outputs and
//! cancellation during the run.
//!
//! Calls are multiplexed on the one pipe by `id` (the job's request id for runs), so a runner may run
//! jobs concurrently. The runner's stderr is copied into the node's log.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runmesh_proto::fal::FieldError;
use runmesh_proto::{AppId, ErrorType, LogLevel};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::apps::{App, AppError, AppFuture, AppManifest, JobContext};

/// Version of the line protocol the node speaks (sent in `manifest`, checked in the reply).
pub const PROTOCOL_VERSION: u64 = 1;
/// Longest line a runner may write (a big output is one line).
pub const LINE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Events buffered per call before the reader waits for the app to catch up.
const EVENTS_PER_CALL_MAX: usize = 1024;
/// External runners one node starts.
pub const RUNNERS_MAX: usize = 16;
/// Apps one runner may declare.
pub const APPS_PER_RUNNER_MAX: usize = 64;
/// Calls in flight per runner (runs, health checks and manifest requests together).
pub const CALLS_IN_FLIGHT_MAX: usize = 4096;
/// How long a runner may take to answer `manifest` at start (it may load a model first).
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cancelled run may take to end before the node gives up on it.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("starting runner `{0}`: {1}")]
    Spawn(String, String),
    #[error("runner `{0}` exited")]
    Exited(String),
    #[error("runner `{0}` did not answer {1} within {2:?}")]
    Timeout(String, &'static str, Duration),
    #[error("runner `{0}`: {1}")]
    Protocol(String, String),
    #[error("runner `{0}` has too many calls in flight")]
    Busy(String),
}

/// One message from the runner about a call.
#[derive(Clone, Debug, PartialEq)]
pub enum RunnerEvent {
    Log {
        level: LogLevel,
        message: String,
    },
    Progress {
        done: u64,
        total: u64,
    },
    Partial(Value),
    Output(Value),
    Error {
        message: String,
        error_type: ErrorType,
    },
    Manifest(Value),
    Health(Value),
}

impl RunnerEvent {
    /// Whether this event ends its call.
    fn is_final(&self) -> bool {
        !matches!(
            self,
            Self::Log { .. } | Self::Progress { .. } | Self::Partial(_)
        )
    }
}

fn parse_level(s: &str) -> LogLevel {
    match s.to_ascii_lowercase().as_str() {
        "debug" => LogLevel::Debug,
        "warn" | "warning" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "stdout" => LogLevel::Stdout,
        "stderr" => LogLevel::Stderr,
        _ => LogLevel::Info,
    }
}

fn parse_error_type(s: Option<&str>) -> ErrorType {
    match s {
        Some("bad_request") => ErrorType::BadRequest,
        Some("request_timeout") => ErrorType::RequestTimeout,
        Some("client_cancelled") => ErrorType::ClientCancelled,
        Some("internal_error") => ErrorType::InternalError,
        _ => ErrorType::RunnerError,
    }
}

/// Parses one line of a runner's stdout into `(call id, event)`.
pub fn parse_line(line: &str) -> Result<(String, RunnerEvent), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .ok_or("no string `id`")?
        .to_string();
    let event = if let Some(l) = obj.get("log") {
        RunnerEvent::Log {
            level: parse_level(l.get("level").and_then(Value::as_str).unwrap_or("info")),
            message: l
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }
    } else if let Some(p) = obj.get("progress") {
        RunnerEvent::Progress {
            done: p.get("done").and_then(Value::as_u64).unwrap_or(0),
            total: p.get("total").and_then(Value::as_u64).unwrap_or(0),
        }
    } else if let Some(p) = obj.get("partial") {
        RunnerEvent::Partial(p.clone())
    } else if let Some(o) = obj.get("output") {
        if !o.is_object() {
            return Err("`output` must be a JSON object".into());
        }
        RunnerEvent::Output(o.clone())
    } else if let Some(e) = obj.get("error") {
        RunnerEvent::Error {
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("runner error")
                .to_string(),
            error_type: parse_error_type(e.get("type").and_then(Value::as_str)),
        }
    } else if let Some(m) = obj.get("manifest") {
        RunnerEvent::Manifest(m.clone())
    } else if let Some(h) = obj.get("health") {
        RunnerEvent::Health(h.clone())
    } else {
        return Err(
            "no known key (log, progress, partial, output, error, manifest, health)".into(),
        );
    };
    Ok((id, event))
}

/// Reads the apps of a `manifest` reply.
pub fn parse_manifest(m: &Value) -> Result<Vec<AppManifest>, String> {
    let version = m.get("protocol").and_then(Value::as_u64).unwrap_or(0);
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "speaks protocol {version}, the node speaks {PROTOCOL_VERSION}"
        ));
    }
    let apps = m
        .get("apps")
        .and_then(Value::as_array)
        .ok_or("manifest has no `apps` list")?;
    if apps.is_empty() || apps.len() > APPS_PER_RUNNER_MAX {
        return Err(format!(
            "manifest must list 1..={APPS_PER_RUNNER_MAX} apps, not {}",
            apps.len()
        ));
    }
    apps.iter()
        .map(|a| {
            let id = a
                .get("id")
                .and_then(Value::as_str)
                .ok_or("an app has no string `id`")?;
            let (owner, alias) = id
                .split_once('/')
                .ok_or_else(|| format!("app id {id:?} is not owner/alias"))?;
            let app_id = AppId::new(owner, alias).map_err(|e| format!("app id {id:?}: {e}"))?;
            let mut fields = a.clone();
            if let Some(o) = fields.as_object_mut() {
                o.insert(
                    "id".into(),
                    serde_json::to_value(&app_id).map_err(|e| e.to_string())?,
                );
                o.entry("description").or_insert(json!(""));
                o.entry("streams").or_insert(json!(false));
            }
            serde_json::from_value::<AppManifest>(fields).map_err(|e| format!("app {id}: {e}"))
        })
        .collect()
}

type Pending = Arc<Mutex<HashMap<String, mpsc::Sender<RunnerEvent>>>>;

/// A running runner process and the calls waiting on it.
pub struct RunnerProcess {
    name: String,
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Pending,
    alive: tokio::sync::watch::Receiver<bool>,
    child: Mutex<Option<Child>>,
    next_call: std::sync::atomic::AtomicU64,
}

impl RunnerProcess {
    /// Starts `command` (through `sh -c`) and its stdout reader and stderr copier.
    pub fn spawn(command: &str) -> Result<Arc<Self>, RunnerError> {
        let name = command.to_string();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RunnerError::Spawn(name.clone(), e.to_string()))?;
        let missing = || RunnerError::Spawn(name.clone(), "no pipe".into());
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let pending: Pending = Arc::default();
        let (alive_tx, alive) = tokio::sync::watch::channel(true);
        tokio::spawn(read_stdout(name.clone(), stdout, pending.clone(), alive_tx));
        tokio::spawn(copy_stderr(name.clone(), stderr));
        Ok(Arc::new(Self {
            name,
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            alive,
            child: Mutex::new(Some(child)),
            next_call: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    async fn send(&self, msg: &Value) -> Result<(), RunnerError> {
        let mut line = msg.to_string();
        line.push('\n');
        let mut stdin = self.stdin.lock().await;
        let res = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        }
        .await;
        res.map_err(|_| RunnerError::Exited(self.name.clone()))
    }

    /// Registers a call and sends its request; events arrive on the returned channel.
    async fn start_call(&self, id: &str, msg: Value) -> Result<Call<'_>, RunnerError> {
        if !self.is_alive() {
            return Err(RunnerError::Exited(self.name.clone()));
        }
        let (tx, rx) = mpsc::channel(EVENTS_PER_CALL_MAX);
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= CALLS_IN_FLIGHT_MAX {
                return Err(RunnerError::Busy(self.name.clone()));
            }
            p.insert(id.to_string(), tx);
        }
        let call = Call {
            runner: self,
            id: id.to_string(),
            events: rx,
        };
        self.send(&msg).await?;
        Ok(call)
    }

    fn call_id(&self, prefix: &str) -> String {
        let n = self
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    /// Asks for the manifest (at start).
    pub async fn manifest(&self, timeout: Duration) -> Result<Vec<AppManifest>, RunnerError> {
        let id = self.call_id("manifest");
        let msg = json!({"op": "manifest", "id": id, "protocol": PROTOCOL_VERSION});
        match self.unary(&id, msg, "manifest", timeout).await? {
            RunnerEvent::Manifest(m) => {
                parse_manifest(&m).map_err(|e| RunnerError::Protocol(self.name.clone(), e))
            }
            other => Err(RunnerError::Protocol(
                self.name.clone(),
                format!("expected a manifest, got {other:?}"),
            )),
        }
    }

    /// Asks whether the runner can take work; `Ok(false)` when it says it cannot.
    pub async fn health(&self, timeout: Duration) -> Result<bool, RunnerError> {
        let id = self.call_id("health");
        let msg = json!({"op": "health", "id": id});
        match self.unary(&id, msg, "health", timeout).await? {
            RunnerEvent::Health(h) => Ok(h.get("ok").and_then(Value::as_bool).unwrap_or(false)),
            other => Err(RunnerError::Protocol(
                self.name.clone(),
                format!("expected health, got {other:?}"),
            )),
        }
    }

    async fn unary(
        &self,
        id: &str,
        msg: Value,
        what: &'static str,
        timeout: Duration,
    ) -> Result<RunnerEvent, RunnerError> {
        let mut call = self.start_call(id, msg).await?;
        let wait = async {
            while let Some(ev) = call.events.recv().await {
                if ev.is_final() {
                    return Ok(ev);
                }
            }
            Err(RunnerError::Exited(self.name.clone()))
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| RunnerError::Timeout(self.name.clone(), what, timeout))?
    }

    /// Stops the process (SIGKILL); pending calls end with "runner exited".
    pub fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut c) = child {
            let _ = c.start_kill();
        }
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A call in flight; dropping it forgets the call (late events are discarded).
struct Call<'a> {
    runner: &'a RunnerProcess,
    id: String,
    events: mpsc::Receiver<RunnerEvent>,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let mut p = self
            .runner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.remove(&self.id);
    }
}

async fn read_stdout(
    name: String,
    stdout: tokio::process::ChildStdout,
    pending: Pending,
    alive: tokio::sync::watch::Sender<bool>,
) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // `take` bounds one line; a longer one is a protocol error and ends the connection.
        let n = match (&mut reader)
            .take(LINE_BYTES_MAX + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                warn!(runner = %name, error = %e, "reading runner stdout failed");
                break;
            }
        };
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') && n as u64 > LINE_BYTES_MAX {
            warn!(runner = %name, "runner wrote a line over {LINE_BYTES_MAX} bytes; disconnecting");
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (id, event) = match parse_line(line) {
            Ok(x) => x,
            Err(e) => {
                // A stray print() must not kill the runner: log it and go on.
                warn!(runner = %name, error = %e, line = %truncate(line, 200), "unparsable runner line");
                continue;
            }
        };
        let tx = {
            let p = pending.lock().unwrap_or_else(|e| e.into_inner());
            p.get(&id).cloned()
        };
        match tx {
            // Waits when the app is slow to consume: the runner is paced by the node.
            Some(tx) => {
                let _ = tx.send(event).await;
            }
            None => tracing::debug!(runner = %name, call = %id, "event for no pending call"),
        }
    }
    let _ = alive.send(false);
    // Wake every waiting call: their senders go away, so they see the runner is gone.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    warn!(runner = %name, "runner disconnected");
}

async fn copy_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(runner = %name, "{}", truncate(&line, 4096));
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// One app served by an external runner.
pub struct ExternalApp {
    runner: Arc<RunnerProcess>,
    manifest: AppManifest,
}

impl ExternalApp {
    pub fn new(runner: Arc<RunnerProcess>, manifest: AppManifest) -> Self {
        Self { runner, manifest }
    }
}

/// Starts a runner and returns its apps, ready to register. A runner that does not answer its
/// manifest is killed.
pub async fn start(command: &str) -> Result<Vec<ExternalApp>, RunnerError> {
    let runner = RunnerProcess::spawn(command)?;
    let manifests = match runner.manifest(MANIFEST_TIMEOUT).await {
        Ok(m) => m,
        Err(e) => {
            runner.kill();
            return Err(e);
        }
    };
    info!(runner = %command, apps = ?manifests.iter().map(|m| m.id.to_string()).collect::<Vec<_>>(), "runner ready");
    Ok(manifests
        .into_iter()
        .map(|m| ExternalApp::new(runner.clone(), m))
        .collect())
}

impl App for ExternalApp {
    fn manifest(&self) -> AppManifest {
        self.manifest.clone()
    }

    fn validate(&self, _subpath: Option<&str>, _input: &Value) -> Result<(), Vec<FieldError>> {
        // The runner's input schema (checked by the registry) is the validation.
        Ok(())
    }

    /// A dead runner takes no jobs (they would fail with `runner_disconnected`).
    fn has_capacity(&self) -> bool {
        self.runner.is_alive()
    }

    fn run(&self, ctx: JobContext, input: Value) -> AppFuture {
        let runner = self.runner.clone();
        Box::pin(async move { run_external(&runner, &ctx, input).await })
    }
}

async fn run_external(
    runner: &RunnerProcess,
    ctx: &JobContext,
    input: Value,
) -> Result<Value, AppError> {
    let id = ctx.request_id().to_string();
    let msg = json!({"op": "run", "id": id, "model": ctx.model().to_string(), "input": input});
    let disconnected = |what: String| AppError::new(ErrorType::RunnerDisconnected, what);
    let mut call = runner
        .start_call(&id, msg)
        .await
        .map_err(|e| disconnected(e.to_string()))?;
    let mut cancel_sent = false;
    let grace = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            ev = call.events.recv() => match ev {
                None => return Err(disconnected(format!("runner `{}` exited during the run", runner.name()))),
                Some(RunnerEvent::Log { level, message }) => ctx.log(level, message),
                Some(RunnerEvent::Progress { done, total }) => ctx.progress(done, total),
                Some(RunnerEvent::Partial(p)) => ctx.partial(&p),
                Some(RunnerEvent::Output(o)) => {
                    return if cancel_sent { Err(AppError::cancelled()) } else { Ok(o) };
                }
                Some(RunnerEvent::Error { message, error_type }) => {
                    return Err(if cancel_sent { AppError::cancelled() } else { AppError::new(error_type, message) });
                }
                Some(other) => {
                    return Err(AppError::runner(format!("runner answered a run with {other:?}")));
                }
            },
            _ = ctx.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                let _ = runner.send(&json!({"op": "cancel", "id": id})).await;
                grace.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
            }
            _ = &mut grace, if cancel_sent => return Err(AppError::cancelled()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lines_parse_into_events() {
        let (id, ev) = parse_line(r#"{"id":"a","log":{"level":"warn","message":"m"}}"#).unwrap();
        assert_eq!(id, "a");
        assert_eq!(
            ev,
            RunnerEvent::Log {
                level: LogLevel::Warn,
                message: "m".into()
            }
        );
        let (_, ev) = parse_line(r#"{"id":"a","partial":{"i":1}}"#).unwrap();
        assert_eq!(ev, RunnerEvent::Partial(json!({"i": 1})));
        assert!(!ev.is_final());
        let (_, ev) = parse_line(r#"{"id":"a","output":{"x":1}}"#).unwrap();
        assert!(ev.is_final());
        let (_, ev) =
            parse_line(r#"{"id":"a","error":{"message":"bad","type":"bad_request"}}"#).unwrap();
        assert_eq!(
            ev,
            RunnerEvent::Error {
                message: "bad".into(),
                error_type: ErrorType::BadRequest
            }
        );
        assert!(parse_line("hello").is_err());
        assert!(parse_line(r#"{"id":"a"}"#).is_err());
        assert!(parse_line(r#"{"id":"a","output":[1]}"#).is_err());
        assert!(parse_line(r#"{"log":{}}"#).is_err());
    }

    #[test]
    fn manifests_parse_with_defaults_and_check_the_protocol() {
        let m = json!({"protocol": 1, "apps": [{"id": "example/words", "streams": true,
            "input_schema": {"type": "object"}, "gpu_memory_mb": 0}]});
        let apps = parse_manifest(&m).unwrap();
        assert_eq!(apps[0].id.to_string(), "example/words");
        assert!(apps[0].streams);
        assert_eq!(apps[0].input_schema, Some(json!({"type": "object"})));
        assert!(parse_manifest(&json!({"protocol": 2, "apps": []})).is_err());
        assert!(parse_manifest(&json!({"protocol": 1, "apps": []})).is_err());
        assert!(parse_manifest(&json!({"protocol": 1, "apps": [{"id": "nope"}]})).is_err());
    }

    #[tokio::test]
    async fn a_shell_runner_answers_manifest_and_health_and_its_death_is_seen() {
        // A minimal runner in sh: answers the first two lines, then exits.
        let script = r#"read a; echo '{"id":"manifest-0","manifest":{"protocol":1,"apps":[{"id":"sh/x"}]}}'; read b; echo '{"id":"health-1","health":{"ok":true}}'; read c"#;
        let r = RunnerProcess::spawn(script).unwrap();
        let apps = r.manifest(Duration::from_secs(10)).await.unwrap();
        assert_eq!(apps[0].id.to_string(), "sh/x");
        assert!(r.health(Duration::from_secs(10)).await.unwrap());
        r.send(&json!({"op": "bye"})).await.unwrap();
        let mut alive = r.alive.clone();
        tokio::time::timeout(Duration::from_secs(10), alive.wait_for(|a| !*a))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            r.health(Duration::from_secs(1)).await,
            Err(RunnerError::Exited(_))
        ));
    }
}
