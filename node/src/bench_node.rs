//! `runmesh bench sync-overhead | streaming | idle`: the node-level rows of the performance issue.
//! Each starts the nodes it needs as children of this binary (`runmesh dev` on free loopback ports
//! and temp data dirs), measures both sides in the same run, prints one table, and fails only on
//! errors, never on a missed target. `--quick` is the short run `.ci/run` keeps from rotting.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a spawned node may take to print its listening line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the first job through a fresh mesh may take (joins, adverts, placement).
const MESH_READY_TIMEOUT: Duration = Duration::from_secs(90);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests per side before measuring (connections, lazily built state).
const WARMUP_REQUESTS: usize = 20;
const CLUSTER_SECRET: &str = "runmesh-bench-node-rows-secret";
/// Ports a mesh node takes from its `--p2p` port up (p2p, Raft, blobs).
const MESH_PORTS_PER_NODE: u16 = 3;
/// Interval between /healthz probes while a node starts: the resolution of start → healthy.
const HEALTH_PROBE_EVERY: Duration = Duration::from_millis(1);
const SYNC_P99_TARGET_MS: f64 = 1.0;
const STREAM_P99_TARGET_MS: f64 = 5.0;
const IDLE_RSS_TARGET_MB: f64 = 60.0;
const START_TARGET_MS: f64 = 300.0;

#[derive(Debug, Subcommand)]
pub enum NodeBench {
    /// Sync `runmesh/echo` through a mesh whose accepting node does not serve the app (so another
    /// node runs it) vs the same app called in-process; one node (accepting = worker) for scale.
    /// Target: < 1 ms added at p99.
    SyncOverhead(SyncArgs),
    /// Runner publishes a partial output → the client has read it, over SSE (`/stream`) and the
    /// realtime WebSocket, timed by wall-clock stamps in the partials. Target: < 5 ms at p99.
    Streaming(StreamingArgs),
    /// An idle node: process start → first 200 from /healthz, and resident memory once it settles.
    /// Targets: < 300 ms and < 60 MB.
    Idle(IdleArgs),
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Requests per side.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 2000)]
    pub requests: usize,
    /// Nodes in the mesh (node 0 accepts and does not serve runmesh/echo; the others run it).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub nodes: usize,
    /// Bytes of padding in each input.
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub payload_bytes: usize,
    /// A short run (50 requests per side, 2 mesh nodes) for CI.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct StreamingArgs {
    /// Jobs per transport (SSE and WebSocket alternate).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub jobs: usize,
    /// Partial outputs per job.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub partials: u32,
    /// Time between two partials of a job, in ms.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub interval_ms: u32,
    /// A short run (2 jobs of 20 partials per transport) for CI.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Node starts measured per kind of node.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub runs: usize,
    /// How long a started node sits idle before its memory is read, in ms.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub settle_ms: u64,
    /// A short run (2 starts each, 1 s settle) for CI.
    #[arg(long)]
    pub quick: bool,
}

pub async fn run(which: NodeBench) -> anyhow::Result<()> {
    match which {
        NodeBench::SyncOverhead(a) => sync_overhead(a).await,
        NodeBench::Streaming(a) => streaming(a).await,
        NodeBench::Idle(a) => idle(a).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

/// Sorted samples in ms.
struct Samples(Vec<f64>);

impl Samples {
    fn new(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self(v)
    }

    /// Nearest-rank percentile.
    fn pct(&self, q: f64) -> f64 {
        let v = &self.0;
        if v.is_empty() {
            return 0.0;
        }
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(0.0)
    }

    fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {} | {} | {} | {} |",
            self.0.len(),
            ms(self.pct(0.5)),
            ms(self.pct(0.99)),
            ms(self.max())
        )
    }
}

fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{:.3} ms", v)
    } else {
        format!("{:.2} ms", v)
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn elapsed_ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Spawned nodes
// ---------------------------------------------------------------------------------------------

struct NodeProc {
    url: String,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // The temp dir goes with it; a clean Raft shutdown buys nothing here.
        let _ = self.child.start_kill();
    }
}

/// `runmesh dev` on `--http addr` with `extra` flags, isolated from the caller's `RUNMESH_*`
/// settings ([`crate::bench::isolate_node_command`]).
fn node_command(
    dir: &std::path::Path,
    http: &str,
    extra: &[String],
) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("locating the runmesh binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(dir)
        .arg("--http")
        .arg(http)
        .args(extra);
    crate::bench::isolate_node_command(&mut cmd);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "error");
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

impl NodeProc {
    /// Starts a node on a free port and waits for its listening line.
    async fn start(extra: &[String]) -> anyhow::Result<NodeProc> {
        let dir = tempfile::tempdir().context("creating a temp data dir")?;
        let mut child = node_command(dir.path(), "127.0.0.1:0", extra)?
            .spawn()
            .context("starting a node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = crate::bench::listening_url(&mut lines, READY_TIMEOUT).await;
        let url = match ready {
            Ok(Ok(Some(url))) => url,
            Ok(Ok(None)) => bail!("a spawned node exited before it listened"),
            Ok(Err(e)) => bail!("reading a spawned node's output: {e}"),
            Err(_) => bail!("a spawned node did not listen within {READY_TIMEOUT:?}"),
        };
        // Keep draining its stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(NodeProc {
            url,
            child,
            _dir: dir,
        })
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A `--p2p` port such that it and the ports above it (Raft, blobs) were free a moment ago.
fn free_mesh_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let base = free_port()?;
        if base > u16::MAX - MESH_PORTS_PER_NODE {
            continue;
        }
        let free = (0..MESH_PORTS_PER_NODE).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", base + i)).is_ok()
        });
        if free {
            return Ok(base);
        }
    }
    bail!("no block of {MESH_PORTS_PER_NODE} free ports found")
}

fn mesh_flags(p2p: u16, bootstrap: Option<u16>, serve: &str) -> Vec<String> {
    let mut v = vec![
        "--p2p".to_string(),
        format!("127.0.0.1:{p2p}"),
        "--cluster-secret".to_string(),
        CLUSTER_SECRET.to_string(),
        "--models".to_string(),
        serve.to_string(),
    ];
    if let Some(b) = bootstrap {
        v.push("--bootstrap".into());
        v.push(format!("127.0.0.1:{b}"));
    }
    v
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the http client")
}

// ---------------------------------------------------------------------------------------------
// sync-overhead
// ---------------------------------------------------------------------------------------------

/// The reference: the echo app called in this process the way the worker calls it (input parsed
/// from the request bytes, a job context, the app's future, the output encoded).
struct InProcess {
    app: runmesh_node::apps::builtin::Echo,
    model: runmesh_proto::ModelId,
    logs: tokio::sync::mpsc::Sender<runmesh_proto::LogLine>,
    _logs_rx: tokio::sync::mpsc::Receiver<runmesh_proto::LogLine>,
    stop: tokio::sync::watch::Receiver<bool>,
    _stop_tx: tokio::sync::watch::Sender<bool>,
    partials: runmesh_gateway_node::PartialHub,
    clock: std::sync::Arc<dyn runmesh_proto::Clock>,
}

impl InProcess {
    fn new() -> anyhow::Result<Self> {
        let (logs, logs_rx) = tokio::sync::mpsc::channel(16);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        Ok(Self {
            app: runmesh_node::apps::builtin::Echo,
            model: runmesh_proto::ModelId::parse("runmesh/echo").context("model id")?,
            logs,
            _logs_rx: logs_rx,
            stop,
            _stop_tx: stop_tx,
            partials: runmesh_gateway_node::PartialHub::default(),
            clock: std::sync::Arc::new(runmesh_proto::SystemClock),
        })
    }

    async fn call(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        use runmesh_node::apps::App as _;
        let input: Value = serde_json::from_slice(body).context("input")?;
        let ctx = runmesh_node::apps::JobContext::new(
            runmesh_proto::RequestId::new_random(),
            self.model.clone(),
            self.logs.clone(),
            self.partials.clone(),
            self.stop.clone(),
            self.clock.clone(),
        );
        let out = self
            .app
            .run(ctx, input)
            .await
            .map_err(|e| anyhow::anyhow!("echo failed: {}", e.message))?;
        Ok(serde_json::to_vec(&out)?)
    }
}

/// One sync request; the response body once fully read.
async fn sync_call(client: &reqwest::Client, url: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.context("reading the answer")?;
    if !status.is_success() {
        bail!(
            "POST {url}: {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    Ok(bytes.to_vec())
}

fn check_echo(input: &[u8], output: &[u8]) -> anyhow::Result<()> {
    let a: Value = serde_json::from_slice(input)?;
    let b: Value = serde_json::from_slice(output).context("echo answer is not JSON")?;
    if a != b {
        bail!("echo answered something else than its input");
    }
    Ok(())
}

/// Retries the first request until the node (or mesh) can run it.
async fn first_sync(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match sync_call(client, url, body).await {
            Ok(out) => return check_echo(body, &out),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("the first request never succeeded")),
        }
    }
}

/// The node id in a node's /healthz.
async fn node_id(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let v: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await?
        .json()
        .await?;
    Ok(match &v["node_id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Where the mesh ran a job, from `x-runmesh-worker` on its status.
async fn worker_of(client: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<String> {
    let resp = client
        .get(format!("{base}/queue/runmesh/echo/requests/{id}/status"))
        .send()
        .await?;
    resp.headers()
        .get(runmesh_gateway_node::WORKER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .context("no worker header on the job's status")
}

async fn sync_overhead(a: SyncArgs) -> anyhow::Result<()> {
    let (n, nodes) = if a.quick {
        (50, 2)
    } else {
        (a.requests, a.nodes)
    };
    if n == 0 || !(2..=7).contains(&nodes) {
        bail!("--requests must be at least 1 and --nodes 2..=7");
    }
    let body = serde_json::to_vec(&json!({"pad": "x".repeat(a.payload_bytes)}))?;
    let client = http_client()?;
    let inproc = InProcess::new()?;

    let one = NodeProc::start(&[]).await?;
    // Node 0 founds the mesh and accepts; it serves only runmesh/stream, so the echo jobs it
    // accepts must run elsewhere.
    let mut mesh = Vec::new();
    let p0 = free_mesh_port()?;
    mesh.push(NodeProc::start(&mesh_flags(p0, None, "runmesh/stream")).await?);
    for _ in 1..nodes {
        let p = free_mesh_port()?;
        mesh.push(NodeProc::start(&mesh_flags(p, Some(p0), "runmesh/echo")).await?);
    }
    let one_url = format!("{}/runmesh/echo", one.url);
    let mesh_url = format!("{}/runmesh/echo", mesh[0].url);
    eprintln!(
        "one node at {}; mesh of {nodes}, accepting at {}",
        one.url, mesh[0].url
    );
    first_sync(&client, &one_url, &body, READY_TIMEOUT).await?;
    first_sync(&client, &mesh_url, &body, MESH_READY_TIMEOUT).await?;

    // The accepting node must not be the one that ran the job.
    let accepting = node_id(&client, &mesh[0].url).await?;
    let resp = client
        .post(&mesh_url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await?;
    let rid = resp
        .headers()
        .get(runmesh_gateway_node::errors::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .context("no request id on the sync answer")?;
    let ran_on = worker_of(&client, &mesh[0].url, &rid).await?;
    if ran_on == accepting {
        bail!("the mesh ran the job on its accepting node ({accepting}); the setup is wrong");
    }

    for _ in 0..WARMUP_REQUESTS {
        inproc.call(&body).await?;
        sync_call(&client, &one_url, &body).await?;
        sync_call(&client, &mesh_url, &body).await?;
    }
    let mut t_in = Vec::with_capacity(n);
    let mut t_one = Vec::with_capacity(n);
    let mut t_mesh = Vec::with_capacity(n);
    let wall = Instant::now();
    for i in 0..n {
        // Rotating the order spreads the machine's noise over the three sides.
        for k in 0..3 {
            let t0 = Instant::now();
            match (i + k) % 3 {
                0 => {
                    let out = inproc.call(&body).await?;
                    t_in.push(elapsed_ms(t0));
                    check_echo(&body, &out)?;
                }
                1 => {
                    let out = sync_call(&client, &one_url, &body).await?;
                    t_one.push(elapsed_ms(t0));
                    check_echo(&body, &out)?;
                }
                _ => {
                    let out = sync_call(&client, &mesh_url, &body).await?;
                    t_mesh.push(elapsed_ms(t0));
                    check_echo(&body, &out)?;
                }
            }
        }
    }
    let wall_s = wall.elapsed().as_secs_f64();
    let (s_in, s_one, s_mesh) = (
        Samples::new(t_in),
        Samples::new(t_one),
        Samples::new(t_mesh),
    );
    let added_p50 = s_mesh.pct(0.5) - s_in.pct(0.5);
    let added_p99 = s_mesh.pct(0.99) - s_in.pct(0.99);
    println!(
        "sync overhead: runmesh/echo, {} B input, {n} requests per side, one at a time, sides \
         interleaved ({wall_s:.1} s)",
        body.len()
    );
    println!("| side | n | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!("{}", s_in.row("in-process app call (reference)"));
    println!("{}", s_one.row("one node, HTTP sync (accepting = worker)"));
    println!(
        "{}",
        s_mesh.row(&format!(
            "mesh of {nodes}, HTTP sync (accepting {accepting} ≠ worker {ran_on})"
        ))
    );
    println!(
        "added by the mesh over the in-process call: p50 {}  p99 {}  (target < {SYNC_P99_TARGET_MS} ms at p99: {})",
        ms(added_p50),
        ms(added_p99),
        met(added_p99 < SYNC_P99_TARGET_MS)
    );
    println!(
        "added by the mesh over one node: p50 {}  p99 {}",
        ms(s_mesh.pct(0.5) - s_one.pct(0.5)),
        ms(s_mesh.pct(0.99) - s_one.pct(0.99))
    );
    println!(
        "bench sync-overhead n={n} nodes={nodes} inproc_p99_ms={:.3} one_p50_ms={:.3} one_p99_ms={:.3} mesh_p50_ms={:.3} mesh_p99_ms={:.3} added_p99_ms={added_p99:.3}",
        s_in.pct(0.99),
        s_one.pct(0.5),
        s_one.pct(0.99),
        s_mesh.pct(0.5),
        s_mesh.pct(0.99)
    );
    drop(mesh);
    drop(one);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// streaming
// ---------------------------------------------------------------------------------------------

fn wall_us() -> u64 {
    runmesh_node::apps::builtin::wall_us()
}

/// Emit → read latency of a stamped partial, in ms (0 when the clocks disagree by a hair).
fn stamp_latency_ms(v: &Value, read_us: u64) -> Option<f64> {
    let at = v.get("emitted_us")?.as_u64()?;
    Some(read_us.saturating_sub(at) as f64 / 1000.0)
}

/// Splits complete SSE events off `buf`; returns their joined `data:` payloads.
fn take_sse_events(buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let event: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&event);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

/// One `/stream` job: the latencies of its stamped partials, checked for count and order.
async fn sse_job(
    client: &reqwest::Client,
    base: &str,
    input: &Value,
    partials: u32,
) -> anyhow::Result<Vec<f64>> {
    let url = format!("{base}/runmesh/stream/stream");
    let mut resp = client
        .post(&url)
        .header("accept", "text/event-stream")
        .json(input)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if !resp.status().is_success() {
        bail!("POST {url}: {}", resp.status());
    }
    let mut buf = Vec::new();
    let mut lat = Vec::with_capacity(partials as usize);
    let mut next = 0u64;
    let mut done = false;
    while let Some(chunk) = resp.chunk().await.context("reading the stream")? {
        let read_us = wall_us();
        buf.extend_from_slice(&chunk);
        for data in take_sse_events(&mut buf) {
            let v: Value = serde_json::from_str(&data).context("an SSE event is not JSON")?;
            if let Some(l) = stamp_latency_ms(&v, read_us) {
                if v["i"].as_u64() != Some(next) {
                    bail!("partial {} arrived where {next} was due", v["i"]);
                }
                next += 1;
                lat.push(l);
            } else if v.get("n").is_some() {
                done = true;
            } else {
                bail!("unexpected event on the stream: {data}");
            }
        }
    }
    if !done || lat.len() != partials as usize {
        bail!(
            "the stream ended after {} of {partials} partials (final output seen: {done})",
            lat.len()
        );
    }
    Ok(lat)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One input on an open realtime socket: the latencies of its stamped partials.
async fn ws_job(ws: &mut Ws, input: &Value, partials: u32) -> anyhow::Result<Vec<f64>> {
    use tokio_tungstenite::tungstenite::Message;
    let packed = rmp_serde::to_vec_named(input)?;
    ws.send(Message::Binary(packed.into())).await?;
    let mut lat = Vec::with_capacity(partials as usize);
    let mut next = 0u64;
    loop {
        let msg = tokio::time::timeout(REQUEST_TIMEOUT, ws.next())
            .await
            .context("the realtime socket went quiet")?
            .context("the realtime socket closed")??;
        let read_us = wall_us();
        match msg {
            Message::Binary(b) => {
                let v: Value = rmp_serde::from_slice(&b).context("a frame is not msgpack")?;
                if let Some(l) = stamp_latency_ms(&v, read_us) {
                    if v["i"].as_u64() != Some(next) {
                        bail!("partial {} arrived where {next} was due", v["i"]);
                    }
                    next += 1;
                    lat.push(l);
                } else if v.get("n").is_some() {
                    // The final output; the timings frame follows.
                } else {
                    bail!("unexpected frame: {v}");
                }
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("x-fal-message") => break,
                    _ => bail!("realtime error: {t}"),
                }
            }
            Message::Close(c) => bail!("the realtime socket closed: {c:?}"),
            _ => {}
        }
    }
    if lat.len() != partials as usize {
        bail!("the job ended after {} of {partials} partials", lat.len());
    }
    Ok(lat)
}

async fn streaming(a: StreamingArgs) -> anyhow::Result<()> {
    let (jobs, partials) = if a.quick {
        (2, 20)
    } else {
        (a.jobs, a.partials)
    };
    if jobs == 0 || partials == 0 {
        bail!("--jobs and --partials must be at least 1");
    }
    let input = json!({"n": partials, "interval_ms": a.interval_ms, "stamp": true});
    let warm = json!({"n": 3, "interval_ms": 0, "stamp": true});
    let client = http_client()?;
    let node = NodeProc::start(&[]).await?;
    let ws_url = format!(
        "{}/runmesh/stream/realtime",
        node.url.replacen("http://", "ws://", 1)
    );
    // Nagle off, as browsers and fal's clients have it.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(ws_url.as_str(), None, true)
        .await
        .with_context(|| format!("connecting to {ws_url}"))?;
    sse_job(&client, &node.url, &warm, 3).await?;
    ws_job(&mut ws, &warm, 3).await?;

    // The machine's own floor, measured alongside: how late a timer wakes a task in this
    // process. On a loaded box that scheduling delay, not the node, bounds the p99.
    let floor_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floor_task = {
        let stop = floor_stop.clone();
        let every = Duration::from_millis(u64::from(a.interval_ms.max(1)));
        tokio::spawn(async move {
            let mut late = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                tokio::time::sleep(every).await;
                late.push((t0.elapsed().saturating_sub(every)).as_secs_f64() * 1000.0);
            }
            late
        })
    };
    let mut sse = Vec::new();
    let mut rt = Vec::new();
    let wall = Instant::now();
    for j in 0..jobs {
        // Alternating which transport goes first spreads the machine's noise over both.
        if j % 2 == 0 {
            sse.extend(sse_job(&client, &node.url, &input, partials).await?);
            rt.extend(ws_job(&mut ws, &input, partials).await?);
        } else {
            rt.extend(ws_job(&mut ws, &input, partials).await?);
            sse.extend(sse_job(&client, &node.url, &input, partials).await?);
        }
    }
    let wall_s = wall.elapsed().as_secs_f64();
    floor_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let s_floor = Samples::new(floor_task.await.context("the floor task")?);
    let _ = ws.close(None).await;
    let (s_sse, s_ws) = (Samples::new(sse), Samples::new(rt));
    println!(
        "streaming: runmesh/stream, {jobs} jobs × {partials} partials {} ms apart per transport, \
         runner publish → client read, wall clock on one host ({wall_s:.1} s)",
        a.interval_ms
    );
    println!("| transport | partials | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!("{}", s_sse.row("SSE, POST /runmesh/stream/stream"));
    println!(
        "{}",
        s_ws.row("WebSocket, /runmesh/stream/realtime (msgpack)")
    );
    println!(
        "{}",
        s_floor.row(&format!(
            "reference: lateness of a {} ms timer wake-up in the bench process",
            a.interval_ms.max(1)
        ))
    );
    println!(
        "target < {STREAM_P99_TARGET_MS} ms at p99: SSE {}, WebSocket {}",
        met(s_sse.pct(0.99) < STREAM_P99_TARGET_MS),
        met(s_ws.pct(0.99) < STREAM_P99_TARGET_MS)
    );
    println!(
        "bench streaming jobs={jobs} partials={partials} sse_p50_ms={:.3} sse_p99_ms={:.3} ws_p50_ms={:.3} ws_p99_ms={:.3} timer_late_p99_ms={:.3}",
        s_sse.pct(0.5),
        s_sse.pct(0.99),
        s_ws.pct(0.5),
        s_ws.pct(0.99),
        s_floor.pct(0.99)
    );
    drop(node);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------------

struct IdleRun {
    healthy_ms: f64,
    rss_mb: f64,
    peak_mb: f64,
    threads: u64,
}

/// A `/proc/<pid>/status` field in its first unit (kB for memory).
fn proc_status_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Starts one node, times process start → first 200 from /healthz, lets it idle, reads its memory.
async fn idle_once(
    client: &reqwest::Client,
    extra: &[String],
    settle: Duration,
) -> anyhow::Result<IdleRun> {
    let dir = tempfile::tempdir().context("creating a temp data dir")?;
    let port = free_port()?;
    let health = format!("http://127.0.0.1:{port}/healthz");
    let mut cmd = node_command(dir.path(), &format!("127.0.0.1:{port}"), extra)?;
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting a node")?;
    let pid = child.id().context("the node's pid")?;
    let stdout = child.stdout.take().context("node stdout")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    });
    let healthy_ms = loop {
        if let Ok(r) = client.get(&health).send().await {
            if r.status().is_success() {
                break elapsed_ms(t0);
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the node exited before it was healthy: {status}");
        }
        if t0.elapsed() > READY_TIMEOUT {
            bail!("the node was not healthy within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(HEALTH_PROBE_EVERY).await;
    };
    tokio::time::sleep(settle).await;
    let run = IdleRun {
        healthy_ms,
        rss_mb: proc_status_field(pid, "VmRSS")? as f64 / 1024.0,
        peak_mb: proc_status_field(pid, "VmHWM")? as f64 / 1024.0,
        threads: proc_status_field(pid, "Threads")?,
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    drop(dir);
    Ok(run)
}

async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let (runs, settle_ms) = if a.quick {
        (2, 1000)
    } else {
        (a.runs, a.settle_ms)
    };
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let settle = Duration::from_millis(settle_ms);
    // Short timeouts: a probe before the listener is up must fail fast, not wait.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()?;
    let kinds: [(&str, bool); 2] = [("dev node, alone", false), ("mesh founder (--p2p)", true)];
    let mut results: Vec<Vec<IdleRun>> = vec![Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (k, (_, mesh)) in kinds.iter().enumerate() {
            let extra = if *mesh {
                mesh_flags(free_mesh_port()?, None, "runmesh/echo,runmesh/stream")
            } else {
                Vec::new()
            };
            results[k].push(idle_once(&client, &extra, settle).await?);
        }
    }
    println!(
        "idle node: {runs} starts per kind; start → first 200 from /healthz (probed every \
         {} ms); memory from /proc/<pid>/status after {settle_ms} ms idle",
        HEALTH_PROBE_EVERY.as_millis()
    );
    println!("| node | start→healthy p50 | p99 | max | VmRSS p50 | max | VmHWM max | threads |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut summary = String::from("bench idle");
    let mut all_met = (true, true);
    for (k, (name, _)) in kinds.iter().enumerate() {
        let r = &results[k];
        let h = Samples::new(r.iter().map(|x| x.healthy_ms).collect());
        let rss = Samples::new(r.iter().map(|x| x.rss_mb).collect());
        let peak = r.iter().map(|x| x.peak_mb).fold(0.0, f64::max);
        let threads = r.iter().map(|x| x.threads).max().unwrap_or(0);
        println!(
            "| {name} | {} | {} | {} | {:.1} MB | {:.1} MB | {peak:.1} MB | {threads} |",
            ms(h.pct(0.5)),
            ms(h.pct(0.99)),
            ms(h.max()),
            rss.pct(0.5),
            rss.max()
        );
        all_met.0 &= h.pct(0.99) < START_TARGET_MS;
        all_met.1 &= rss.max() < IDLE_RSS_TARGET_MB;
        summary.push_str(&format!(
            " k{k}_healthy_p50_ms={:.1} k{k}_healthy_p99_ms={:.1} k{k}_rss_max_mb={:.1}",
            h.pct(0.5),
            h.pct(0.99),
            rss.max()
        ));
    }
    println!(
        "targets: start → healthy < {START_TARGET_MS} ms at p99: {}; idle RSS < {IDLE_RSS_TARGET_MB} MB: {}",
        met(all_met.0),
        met(all_met.1)
    );
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = Samples::new((1..=100).rev().map(f64::from).collect());
        assert_eq!((s.pct(0.5), s.pct(0.99), s.max()), (50.0, 99.0, 100.0));
        assert_eq!(Samples::new(vec![]).pct(0.5), 0.0);
    }

    #[test]
    fn sse_events_are_split_and_joined() {
        let mut buf = b"data: {\"i\":0}\n\n: ping\n\ndata: {\ndata: }\n\ndata: {\"i\"".to_vec();
        assert_eq!(take_sse_events(&mut buf), ["{\"i\":0}", "{\n}"]);
        assert_eq!(buf, b"data: {\"i\"");
    }

    #[test]
    fn stamps_give_latency_in_ms() {
        let v = json!({"i": 0, "emitted_us": 1_000});
        assert_eq!(stamp_latency_ms(&v, 3_500), Some(2.5));
        assert_eq!(stamp_latency_ms(&v, 500), Some(0.0));
        assert_eq!(stamp_latency_ms(&json!({"n": 1}), 1), None);
    }

    #[test]
    fn proc_status_reads_this_process() {
        let rss = proc_status_field(std::process::id(), "VmRSS").unwrap();
        assert!(rss > 0);
        assert!(proc_status_field(std::process::id(), "NoSuchField").is_err());
    }
}
