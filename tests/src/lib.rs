//! Harness for runmesh integration tests: starts the real `runmesh` binary as a child process on
//! 127.0.0.1 and speaks the fal HTTP API to it.
//!
//! Every wait here is bounded in time and every loop in count, so a broken node fails a test instead
//! of hanging it. Children are killed (SIGKILL) when their [`Node`] is dropped, panics included.

use std::io::{BufRead, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a node may take to print its listening line.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of one HTTP request (streams use their own deadlines).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// What the node prints on stdout once it accepts work.
pub const LISTENING_PREFIX: &str = "runmesh listening on http://";
/// The same line of a node serving HTTPS (`--tls`).
pub const LISTENING_PREFIX_TLS: &str = "runmesh listening on https://";
/// Start attempts on fresh ports when a child exits before listening (a port taken in between).
const START_ATTEMPTS_MAX: u32 = 4;
/// Lines of child stdout kept for failure messages.
const STDOUT_LINES_MAX: usize = 200;
/// Bytes of a child's stderr shown in failure messages.
const STDERR_TAIL_BYTES: usize = 4000;

// ---------------------------------------------------------------------------------------------
// Locating (and if needed building) the binary
// ---------------------------------------------------------------------------------------------

/// Path of the `runmesh` binary: `RUNMESH_BIN`, else `<target>/debug/runmesh` next to this test
/// executable (`target/debug/deps/<test>`), built once with cargo if it is missing (or always, once
/// per test process, when `RUNMESH_TESTS_BUILD=1`: cargo does not rebuild another package's binary
/// for `cargo test -p runmesh-tests`, so a stale one is otherwise used as is).
pub fn runmesh_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RUNMESH_BIN") {
            let p = PathBuf::from(p);
            assert!(p.exists(), "RUNMESH_BIN={} does not exist", p.display());
            return p;
        }
        let exe = std::env::current_exe().expect("current_exe");
        let exe_dir = exe.parent().expect("test executable has a parent dir");
        // target/debug/deps/<test> -> target/debug
        let profile_dir = if exe_dir.ends_with("deps") {
            exe_dir.parent().expect("deps has a parent")
        } else {
            exe_dir
        };
        let bin = profile_dir.join(format!("runmesh{}", std::env::consts::EXE_SUFFIX));
        let force = std::env::var_os("RUNMESH_TESTS_BUILD").is_some_and(|v| v == "1");
        if force || !bin.exists() {
            build_runmesh(profile_dir, &bin, force);
        }
        assert!(
            bin.exists(),
            "runmesh binary not found at {}",
            bin.display()
        );
        bin
    })
}

/// Builds the binary once across concurrently running test processes (a file lock serialises them;
/// cargo's own lock would too, but this avoids a pile of cargo invocations).
fn build_runmesh(profile_dir: &Path, bin: &Path, force: bool) {
    let lock_path = profile_dir.join(".runmesh-tests-build.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open build lock file");
    lock.lock().expect("lock build lock file");
    if bin.exists() && !force {
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent (the workspace root)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "runmesh-node", "--bin", "runmesh"])
        .current_dir(workspace);
    // Build into the same target dir this test binary lives in.
    if profile_dir.ends_with("debug") {
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
    }
    let status = cmd.status().expect("spawn cargo build");
    assert!(status.success(), "cargo build -p runmesh-node failed");
}

/// A port that was free a moment ago on 127.0.0.1 (the OS picks it).
/// Runs `runmesh dev` on `data_dir` and expects it to refuse: returns its stderr.
pub fn refused_start(data_dir: &Path) -> String {
    let (ok, stderr) = run_dev_to_exit(data_dir, &[]);
    assert!(!ok, "started anyway: {stderr}");
    stderr
}

/// Runs `runmesh dev` on `data_dir` with `args` (a free HTTP port added) until it exits by itself
/// (bounded: 30 s), as a refused joiner does; returns (exit success, stderr).
pub fn run_dev_to_exit(data_dir: &Path, args: &[String]) -> (bool, String) {
    let mut cmd = Command::new(runmesh_bin());
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(args)
        // Errors and warnings only: stderr is read once the node exits, so it must fit the pipe.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RUNMESH_") {
            cmd.env_remove(&k);
        }
    }
    let mut child = cmd.spawn().expect("spawn runmesh");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status.success(), stderr)
}

/// Every entry under `root` (and `root`), with what `lstat` says of it.
pub fn tree(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut all = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                pending.push(e.expect("entry").path());
            }
        }
        all.push((p, meta));
    }
    all
}

/// Copies the directory tree `src` to `dst` (created when missing).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read_dir") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy");
        }
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------------------------------------
// Node process
// ---------------------------------------------------------------------------------------------

/// CLI options of `runmesh dev` that tests vary.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    pub slots: Option<u32>,
    pub lease_ms: Option<u64>,
    pub body_limit_bytes: Option<u64>,
    pub extra_args: Vec<String>,
}

impl NodeOpts {
    pub fn slots(mut self, n: u32) -> Self {
        self.slots = Some(n);
        self
    }

    pub fn lease_ms(mut self, ms: u64) -> Self {
        self.lease_ms = Some(ms);
        self
    }

    pub fn body_limit(mut self, bytes: u64) -> Self {
        self.body_limit_bytes = Some(bytes);
        self
    }
}

/// A running `runmesh dev` child with its own temp dir (data dir and logs). Killed on drop.
pub struct Node {
    opts: NodeOpts,
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    generation: u32,
    stdout_lines: Arc<Mutex<Vec<String>>>,
}

impl Node {
    /// Starts a node with default options.
    pub fn start_default() -> Node {
        Self::start(NodeOpts::default())
    }

    /// Starts a node and waits (bounded) for its listening line.
    pub fn start(opts: NodeOpts) -> Node {
        Self::start_in(Self::temp_dir(), opts)
    }

    /// Starts a node on a copy of the data dir `src` (a fixture, or another node's stopped dir).
    pub fn start_on_copy(src: &Path, opts: NodeOpts) -> Node {
        let dir = Self::temp_dir();
        copy_dir(src, &dir.path().join("data"));
        Self::start_in(dir, opts)
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("runmesh-it-")
            .tempdir()
            .expect("create temp dir")
    }

    fn start_in(dir: tempfile::TempDir, opts: NodeOpts) -> Node {
        let mut node = Node {
            opts,
            dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base: String::new(),
            generation: 0,
            stdout_lines: Arc::new(Mutex::new(Vec::new())),
        };
        node.spawn_with_retries(None);
        node
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// An HTTP client for this node's current address.
    pub fn api(&self) -> Api {
        Api::new(&self.base)
    }

    /// The child's process id while it runs (for /proc readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the child process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the child and reap it: a crash, no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, the way an operator stops a node, and waits (bounded) for it to exit; SIGKILL if
    /// it has not within `grace`. Returns whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kills the node if it runs, then starts it again on the same data dir (same port if it is
    /// still free, else a fresh one; `base` is updated).
    pub fn restart_same_dir(&mut self) {
        self.kill9();
        let port = self.addr.port();
        self.spawn_with_retries(Some(port));
    }

    /// The ADMIN key the node wrote when it founded its cluster (`<data-dir>/admin.key`).
    pub fn admin_key(&self) -> String {
        let path = self.data_dir().join("admin.key");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// The flags the next (re)start passes after the harness's own.
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.opts.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// The last lines of the current child's stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        tail_of_file(&self.stderr_path(self.generation))
    }

    /// The whole stderr of the current child (for log assertions).
    pub fn stderr_all(&self) -> String {
        std::fs::read_to_string(self.stderr_path(self.generation)).unwrap_or_default()
    }

    fn stderr_path(&self, generation: u32) -> PathBuf {
        self.dir
            .path()
            .join(format!("node-{generation}.stderr.log"))
    }

    fn spawn_with_retries(&mut self, preferred_port: Option<u16>) {
        let mut errors = Vec::new();
        for attempt in 0..START_ATTEMPTS_MAX {
            let port = match (attempt, preferred_port) {
                (0, Some(p)) => p,
                _ => free_port(),
            };
            match self.spawn_once(port) {
                Ok(addr) => {
                    self.addr = addr;
                    let tls = self
                        .opts
                        .extra_args
                        .iter()
                        .any(|a| a == "--tls" || a == "--tls-cert");
                    self.base = format!("{}://{addr}", if tls { "https" } else { "http" });
                    return;
                }
                Err(e) => errors.push(format!("attempt {attempt} (port {port}): {e}")),
            }
        }
        panic!(
            "runmesh node did not start after {START_ATTEMPTS_MAX} attempts:\n{}",
            errors.join("\n---\n")
        );
    }

    /// One start: spawn, wait for the listening line. On failure the child is killed.
    fn spawn_once(&mut self, port: u16) -> Result<SocketAddr, String> {
        self.generation += 1;
        let stderr_path = self.stderr_path(self.generation);
        let stderr_file = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(runmesh_bin());
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--http")
            .arg(format!("127.0.0.1:{port}"));
        if let Some(n) = self.opts.slots {
            cmd.arg("--slots").arg(n.to_string());
        }
        if let Some(ms) = self.opts.lease_ms {
            cmd.arg("--lease-ms").arg(ms.to_string());
        }
        if let Some(b) = self.opts.body_limit_bytes {
            cmd.arg("--body-limit").arg(b.to_string());
        }
        cmd.args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        // The CLI reads RUNMESH_* env vars as defaults: only the flags above may configure it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RUNMESH_") {
                cmd.env_remove(&k);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", runmesh_bin().display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = mpsc::channel::<String>();
        let lines = Arc::clone(&self.stdout_lines);
        // Reads every stdout line until EOF (the child must never block on a full pipe) and reports
        // the first listening line.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = String::new();
            let mut reported = false;
            loop {
                buf.clear();
                match reader.read_line(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = buf.trim_end().to_string();
                if !reported {
                    if let Some(rest) = line
                        .find(LISTENING_PREFIX)
                        .map(|i| &line[i + LISTENING_PREFIX.len()..])
                        .or_else(|| {
                            line.find(LISTENING_PREFIX_TLS)
                                .map(|i| &line[i + LISTENING_PREFIX_TLS.len()..])
                        })
                    {
                        reported = true;
                        let _ = tx.send(rest.trim().trim_end_matches('/').to_string());
                    }
                }
                if let Ok(mut l) = lines.lock() {
                    if l.len() >= STDOUT_LINES_MAX {
                        l.remove(0);
                    }
                    l.push(line);
                }
            }
        });

        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr_text) => {
                    let addr: SocketAddr = match addr_text.parse() {
                        Ok(a) => a,
                        Err(_) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(format!("unparsable listening address {addr_text:?}"));
                        }
                    };
                    if !addr.ip().is_loopback() {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("node listens on non-loopback {addr}"));
                    }
                    self.child = Some(child);
                    return Ok(addr);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the line: the child is exiting.
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "node exited early ({status}); stderr tail:\n{}",
                    tail_of_file(&stderr_path)
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no listening line within {NODE_START_TIMEOUT:?}; stdout: {:?}; stderr tail:\n{}",
                    self.stdout_lines.lock().map(|l| l.clone()).unwrap_or_default(),
                    tail_of_file(&stderr_path)
                ));
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- runmesh node {} (gen {}) stderr tail ---\n{}",
                self.base,
                self.generation,
                self.stderr_tail()
            );
        }
        self.kill9();
    }
}

fn tail_of_file(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// A fully read HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response (HTTP {}) is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Asserts the fal-wide response rules: JSON content type and an `x-fal-request-id` header.
    pub fn assert_fal_json(&self, what: &str) {
        assert!(
            self.content_type().starts_with("application/json"),
            "{what}: content-type {:?} (HTTP {}, body {:?})",
            self.content_type(),
            self.status,
            self.text()
        );
        assert!(
            self.header("x-fal-request-id")
                .is_some_and(|v| !v.is_empty()),
            "{what}: missing x-fal-request-id header (HTTP {}, headers {:?})",
            self.status,
            self.headers
        );
    }
}

/// What a queue submit handed back.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub request_id: String,
    pub status_url: String,
    pub response_url: String,
    pub cancel_url: String,
    pub queue_position: Option<u64>,
    pub body: Value,
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

/// An SSE response read until the server closed it or the deadline passed.
#[derive(Debug, Clone)]
pub struct SseResp {
    pub status: u16,
    pub headers: HeaderMap,
    pub events: Vec<SseEvent>,
    /// The server ended the body (as opposed to our deadline cutting it).
    pub closed: bool,
    /// Raw body when the response was not an event stream (errors), else empty.
    pub raw: Vec<u8>,
}

impl SseResp {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Incremental SSE parser: feed bytes, take complete events. Comments (`: ping`) are skipped.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

/// Bytes an unterminated SSE event may grow to before the parser gives up on it.
const SSE_EVENT_BYTES_MAX: usize = 16 * 1024 * 1024;

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        assert!(
            self.buf.len() <= SSE_EVENT_BYTES_MAX,
            "SSE event larger than {SSE_EVENT_BYTES_MAX} bytes"
        );
        let mut out = Vec::new();
        // Normalise CRLF lazily: look for a blank line in either spelling.
        while let Some((end, sep_len)) = find_event_end(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + sep_len).collect();
            let text = String::from_utf8_lossy(&block[..end]).replace("\r\n", "\n");
            let mut data_lines: Vec<&str> = Vec::new();
            let mut event = None;
            for line in text.split('\n') {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "data" => data_lines.push(value),
                    "event" => event = Some(value.to_string()),
                    _ => {}
                }
            }
            if !data_lines.is_empty() {
                out.push(SseEvent {
                    event,
                    data: data_lines.join("\n"),
                });
            }
        }
        out
    }
}

fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// fal HTTP client bound to one node's base URL (`http://127.0.0.1:PORT`). Queue calls use the
/// `/queue` path prefix; `app` arguments are `owner/alias`, `model` arguments may carry a subpath.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    /// Sent with every request before the call's own headers (e.g. an `authorization`).
    headers: Vec<(String, String)>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("build reqwest client");
        Api {
            base: base.trim_end_matches('/').to_string(),
            http,
            headers: Vec::new(),
        }
    }

    /// The same client, sending `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Api {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// `base + path` unless `path` is already absolute.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Sends a request; transport errors are returned (the crash test expects some).
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Resp, reqwest::Error> {
        let mut req = self.http.request(method, self.url(path));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?.to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// Sends a request; panics on transport errors.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let desc = format!("{method} {path}");
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{desc}: transport error: {e}"))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], None).await
    }

    /// POST with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.send(Method::POST, path, &h, Some(body.to_string().into_bytes()))
            .await
    }

    /// POST raw bytes as `application/json` (for malformed bodies).
    pub async fn post_raw(&self, path: &str, body: &[u8]) -> Resp {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            Some(body.to_vec()),
        )
        .await
    }

    pub async fn healthz(&self) -> Resp {
        self.get("/healthz").await
    }

    /// `POST /queue/{model}`.
    pub async fn submit_raw(&self, model: &str, input: &Value, headers: &[(&str, &str)]) -> Resp {
        self.post_json(&format!("/queue/{model}"), input, headers)
            .await
    }

    /// Submits and asserts a well-formed 200 acceptance.
    pub async fn submit(&self, model: &str, input: &Value) -> Submitted {
        self.submit_with(model, input, &[]).await
    }

    pub async fn submit_with(
        &self,
        model: &str,
        input: &Value,
        headers: &[(&str, &str)],
    ) -> Submitted {
        let r = self.submit_raw(model, input, headers).await;
        assert_eq!(r.status, 200, "submit {model}: {:?}", r.text());
        parse_submitted(&r.json()).unwrap_or_else(|e| panic!("submit {model}: {e}"))
    }

    /// One queue submit that may fail (a node down or restarting): the request id of a 200, or
    /// what came back instead. A 200 without a request id fails the test.
    pub async fn try_submit(&self, model: &str, input: &Value) -> Result<String, String> {
        let r = self
            .try_send(
                Method::POST,
                &format!("/queue/{model}"),
                &[("content-type", "application/json")],
                Some(input.to_string().into_bytes()),
            )
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.text()));
        }
        let id = r.json()["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!id.is_empty(), "200 without a request id: {}", r.text());
        Ok(id)
    }

    pub fn request_path(app: &str, id: &str) -> String {
        format!("/queue/{app}/requests/{id}")
    }

    /// `GET /queue/{app}/requests/{id}/status[?logs=1]`.
    pub async fn status(&self, app: &str, id: &str, logs: bool) -> Resp {
        let q = if logs { "?logs=1" } else { "" };
        self.get(&format!("{}/status{q}", Self::request_path(app, id)))
            .await
    }

    /// `GET /queue/{app}/requests/{id}`.
    pub async fn result(&self, app: &str, id: &str) -> Resp {
        self.get(&Self::request_path(app, id)).await
    }

    /// `PUT /queue/{app}/requests/{id}/cancel` with no body, as the Python client sends it.
    pub async fn cancel(&self, app: &str, id: &str) -> Resp {
        self.send(
            Method::PUT,
            &format!("{}/cancel", Self::request_path(app, id)),
            &[("content-length", "0")],
            None,
        )
        .await
    }

    /// Sync run: `POST /{model}`.
    pub async fn run_sync(&self, model: &str, input: &Value) -> Resp {
        self.post_json(&format!("/{model}"), input, &[]).await
    }

    /// Polls status until `pred(body)` holds (every 50 ms, bounded by `timeout`); returns that body.
    pub async fn wait_status(
        &self,
        app: &str,
        id: &str,
        logs: bool,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        // Bounded by the deadline; the count bound is a second guard.
        for _ in 0..100_000 {
            let r = self.status(app, id, logs).await;
            if r.status == 200 || r.status == 202 {
                last = r.json();
                if pred(&last) {
                    return last;
                }
            } else {
                last = Value::String(format!("HTTP {}: {}", r.status, r.text()));
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: request {id} not reached within {timeout:?}; last status: {last}");
    }

    /// Polls `GET /admin/webhooks/failed` as the ADMIN key `admin` until it lists a delivery
    /// (bounded: 200 tries, 50 ms apart); returns the last listing.
    pub async fn wait_failed_webhooks(&self, admin: &str) -> Value {
        let auth = format!("Key {admin}");
        let mut listed = Value::Null;
        for _ in 0..200 {
            listed = self
                .send(
                    Method::GET,
                    "/admin/webhooks/failed",
                    &[("Authorization", auth.as_str())],
                    None,
                )
                .await
                .json();
            if listed["failed"].as_array().is_some_and(|f| !f.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        listed
    }

    /// Waits for COMPLETED and returns the status body.
    pub async fn wait_completed(&self, app: &str, id: &str, timeout: Duration) -> Value {
        self.wait_status(app, id, false, timeout, "COMPLETED", |s| {
            s["status"] == "COMPLETED"
        })
        .await
    }

    /// Waits until the job has left the queue (IN_PROGRESS or COMPLETED).
    pub async fn wait_started(&self, app: &str, id: &str, timeout: Duration) -> Value {
        self.wait_status(app, id, false, timeout, "IN_PROGRESS", |s| {
            s["status"] == "IN_PROGRESS" || s["status"] == "COMPLETED"
        })
        .await
    }

    /// Opens an SSE response and reads events until the server closes it or `timeout` passes.
    pub async fn sse(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> SseResp {
        self.sse_take(method, path, body, usize::MAX, timeout).await
    }

    /// Like [`Api::sse`], but hangs up (drops the connection) once `events_max` events arrived.
    pub async fn sse_take(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        events_max: usize,
        timeout: Duration,
    ) -> SseResp {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .header("accept", "text/event-stream")
            // The whole-request timeout of the client must not cut the stream before our deadline.
            .timeout(timeout + Duration::from_secs(5));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = tokio::time::timeout_at(deadline, req.send())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no response headers within {timeout:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: transport error: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let is_sse = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut out = SseResp {
            status,
            headers,
            events: Vec::new(),
            closed: false,
            raw: Vec::new(),
        };
        let mut parser = SseParser::default();
        let mut stream = resp.bytes_stream();
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => break, // our deadline: not closed by the server
                Ok(None) => {
                    out.closed = true;
                    break;
                }
                Ok(Some(Err(_))) => {
                    // A reset after data counts as closed; the events read so far stand.
                    out.closed = true;
                    break;
                }
                Ok(Some(Ok(chunk))) => {
                    if is_sse {
                        out.events.extend(parser.feed(&chunk));
                        if out.events.len() >= events_max {
                            break;
                        }
                    } else {
                        out.raw.extend_from_slice(&chunk);
                    }
                }
            }
        }
        out
    }
}

/// Checks the shape of a submit response and extracts its fields.
pub fn parse_submitted(body: &Value) -> Result<Submitted, String> {
    let s = |k: &str| {
        body[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("missing string {k:?} in {body}"))
    };
    Ok(Submitted {
        request_id: s("request_id")?,
        status_url: s("status_url")?,
        response_url: s("response_url")?,
        cancel_url: s("cancel_url")?,
        queue_position: body["queue_position"].as_u64(),
        body: body.clone(),
    })
}

/// True for a lowercase hyphenated UUID (what fal hands out as request ids).
pub fn looks_like_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts.iter().zip(lens).all(|(p, n)| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// A fresh random-looking request id that no node has seen (not cryptographic; unique enough).
pub fn unknown_request_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let hex = format!("{:032x}", nanos ^ 0x5a5a_1234_dead_beef_0bad_f00d_cafe_0001);
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 (for Host headers and paths that an HTTP client library would normalise)
// ---------------------------------------------------------------------------------------------

/// A response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResp {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw response (HTTP {}) is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Bytes of a raw response read at most.
const RAW_RESPONSE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Sends `method target` with the given headers and body over a fresh connection
/// (`Connection: close`), reads the whole response. `Err` when the server closed without a
/// parsable response or the deadline passed.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<RawResp, String> {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The server may answer and close before reading everything (e.g. 414); keep going.
        let _ = s.write_all(&bytes).await;
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&chunk[..n]);
                    if out.len() > RAW_RESPONSE_BYTES_MAX {
                        return Err("raw response too large".to_string());
                    }
                }
                Err(e) if out.is_empty() => return Err(format!("read: {e}")),
                Err(_) => break,
            }
        }
        Ok(out)
    };
    let out = tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| format!("{method} {target:.80}: no complete response within {timeout:?}"))??;
    parse_raw_response(&out)
}

fn parse_raw_response(out: &[u8]) -> Result<RawResp, String> {
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(out)))?;
    let head = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw_body = &out[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)?
    } else {
        raw_body.to_vec()
    };
    Ok(RawResp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    // Each round consumes one chunk; the input length bounds the rounds.
    for _ in 0..=b.len() {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without CRLF")?;
        let size_text = String::from_utf8_lossy(&b[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            return Err("truncated chunk".to_string());
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
    Err("too many chunks".to_string())
}

// ---------------------------------------------------------------------------------------------
// Multi-node clusters (mesh)
// ---------------------------------------------------------------------------------------------

/// Cluster secret of test clusters.
pub const TEST_CLUSTER_SECRET: &str = "runmesh-test-secret";
/// Ports a mesh node uses from its `--p2p` port up (p2p, Raft, blobs).
pub const MESH_PORTS_PER_NODE: u16 = 3;
/// How long a cluster may take to settle its membership in tests.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// A `--p2p` port such that it and the ports just above it (Raft, blobs) were free on 127.0.0.1
/// for both TCP and UDP a moment ago.
pub fn free_mesh_port() -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base > u16::MAX - MESH_PORTS_PER_NODE {
            continue;
        }
        let all_free = (0..MESH_PORTS_PER_NODE).all(|i| {
            let p = base + i;
            TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no block of {MESH_PORTS_PER_NODE} free ports found");
}

/// `opts` plus the flags that place a node in a mesh: its p2p port (Raft on the port above), the
/// member to join through, and the cluster secret.
pub fn mesh_opts(
    opts: NodeOpts,
    p2p_port: u16,
    bootstrap_p2p: Option<u16>,
    secret: &str,
) -> NodeOpts {
    let mut o = opts;
    o.extra_args.push("--p2p".into());
    o.extra_args.push(format!("127.0.0.1:{p2p_port}"));
    if let Some(b) = bootstrap_p2p {
        o.extra_args.push("--bootstrap".into());
        o.extra_args.push(format!("127.0.0.1:{b}"));
    }
    o.extra_args.push("--cluster-secret".into());
    o.extra_args.push(secret.to_string());
    o
}

/// Raft roles as one node's `GET /admin/cluster` reports them (ids as decimal text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub node_id: String,
    pub leader: Option<String>,
    pub voters: std::collections::BTreeSet<String>,
    pub learners: std::collections::BTreeSet<String>,
}

impl Membership {
    /// Reads a `/admin/cluster` body.
    pub fn from_view(view: &Value) -> Membership {
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let mut m = Membership {
            node_id: text(&view["node_id"]).unwrap_or_default(),
            leader: text(&view["leader"]),
            ..Membership::default()
        };
        for member in view["members"].as_array().into_iter().flatten() {
            let Some(id) = text(&member["id"]) else {
                continue;
            };
            match member["role"].as_str() {
                Some("voter") => {
                    m.voters.insert(id);
                }
                Some("learner") => {
                    m.learners.insert(id);
                }
                _ => {}
            }
        }
        m
    }
}

/// Nodes started as one mesh: node 0 founds the cluster, the others join through a running member.
/// Every node runs `runmesh dev` with `--p2p`/`--bootstrap`/`--cluster-secret` (dev: no API keys).
/// Killed on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// `--p2p` port of each node (its Raft listener is the port above).
    pub p2p_ports: Vec<u16>,
    pub secret: String,
    /// The ADMIN key node 0 wrote when it founded the cluster (replicated: every node takes it).
    pub admin_key: String,
}

impl Cluster {
    /// Starts `n` nodes with the same options, one after the other.
    pub fn start(n: usize, opts: NodeOpts) -> Cluster {
        Self::start_with(n, |_| opts.clone())
    }

    /// Starts `n` nodes; `opts_of(i)` gives node i's options (e.g. its declared GPUs).
    pub fn start_with(n: usize, opts_of: impl Fn(usize) -> NodeOpts) -> Cluster {
        let mut c = Cluster {
            nodes: Vec::new(),
            p2p_ports: Vec::new(),
            secret: TEST_CLUSTER_SECRET.to_string(),
            admin_key: String::new(),
        };
        for i in 0..n {
            c.add_node(opts_of(i));
        }
        c
    }

    /// Starts one more node: the first one founds the cluster, later ones join through the first
    /// running node. Returns its index.
    pub fn add_node(&mut self, opts: NodeOpts) -> usize {
        let bootstrap = (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_running())
            .map(|i| self.p2p_ports[i]);
        let port = free_mesh_port();
        let node = Node::start(mesh_opts(opts, port, bootstrap, &self.secret));
        if self.nodes.is_empty() {
            self.admin_key = node.admin_key();
        }
        self.nodes.push(node);
        self.p2p_ports.push(port);
        self.nodes.len() - 1
    }

    pub fn api(&self, i: usize) -> Api {
        self.nodes[i].api()
    }

    /// Indexes of the nodes whose process runs.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Node i's `GET /admin/cluster`, when it answers 200.
    pub async fn view(&self, i: usize) -> Option<Value> {
        let api = self.api(i);
        let auth = format!("Key {}", self.admin_key);
        let r = api
            .try_send(
                Method::GET,
                "/admin/cluster",
                &[("Authorization", auth.as_str())],
                None,
            )
            .await
            .ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Waits until every running node reports the same leader and the same voters and learners,
    /// `voters` and `learners` of them. Panics with the last views after `timeout`.
    pub async fn wait_membership(
        &mut self,
        voters: usize,
        learners: usize,
        timeout: Duration,
    ) -> Membership {
        let deadline = Instant::now() + timeout;
        let mut last: Vec<Option<Membership>> = Vec::new();
        loop {
            let running = self.running();
            last.clear();
            for &i in &running {
                last.push(self.view(i).await.map(|v| Membership::from_view(&v)));
            }
            let first = last.first().cloned().flatten();
            if let Some(first) = first {
                let agree = last.iter().all(|m| {
                    m.as_ref().is_some_and(|m| {
                        m.leader.is_some()
                            && m.leader == first.leader
                            && m.voters == first.voters
                            && m.learners == first.learners
                    })
                });
                if agree && first.voters.len() == voters && first.learners.len() == learners {
                    return first;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach {voters} voters + {learners} learners within {timeout:?}: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The index of the node that running nodes agree leads (bounded wait).
    pub async fn leader_index(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.running();
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for &i in &running {
                if let Some(m) = self.view(i).await.map(|v| Membership::from_view(&v)) {
                    ids.push((i, m.node_id.clone()));
                    leaders.push(m.leader.clone());
                }
            }
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| l.as_ref() == Some(leader)) {
                    if let Some((i, _)) = ids.iter().find(|(_, id)| id == leader) {
                        return *i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs a client script like [`Command::output`], but for at most `limit`: a script that hangs is
/// killed and what it printed so far comes back (with a failed status), so the test fails with
/// the step it stopped at instead of running into the harness's time-out with nothing to show.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt as _;
    // Its own process group, so that a time-out also ends what it started (which would otherwise
    // hold the output pipes open).
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = stderr.join().unwrap_or_default();
    if !status.success() && Instant::now() >= deadline {
        stderr.extend_from_slice(format!("\n(killed after {limit:?})\n").as_bytes());
    }
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hanging_script_is_killed_with_what_it_printed() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo started; sleep 30"]),
            Duration::from_millis(300),
        )
        .expect("run sh");
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("killed after"));
        let out = output_within(
            Command::new("sh").args(["-c", "echo ok"]),
            Duration::from_secs(30),
        )
        .expect("run sh");
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }

    #[test]
    fn sse_parser_handles_split_events_comments_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.feed(b": ping\n\ndata: {\"a\"").is_empty());
        let ev = p.feed(b":1}\n\nevent: x\r\ndata: 2\r\n\r\ndata: 3\n");
        assert_eq!(
            ev,
            vec![
                SseEvent {
                    event: None,
                    data: "{\"a\":1}".to_string()
                },
                SseEvent {
                    event: Some("x".to_string()),
                    data: "2".to_string()
                },
            ]
        );
        assert_eq!(p.feed(b"\n").len(), 1);
    }

    #[test]
    fn raw_response_parsing_dechunks() {
        let r = parse_raw_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abcde");
        assert_eq!(r.header("x-a"), Some("b"));
    }

    #[test]
    fn uuid_helpers() {
        let id = unknown_request_id();
        assert!(looks_like_uuid(&id), "{id}");
        assert!(!looks_like_uuid("nope"));
    }
}
