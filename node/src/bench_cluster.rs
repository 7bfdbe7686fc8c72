//! `runmesh bench cluster|failover|placements`: a 3-node runmesh cluster on loopback (3 voters,
//! data on disk), and for `cluster` a 3-member etcd cluster beside it, driven by one load tool.
//!
//! Every figure is printed, never judged: a run fails only when something errs (a node does not
//! start, a request fails), not when a target is missed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::bench::percentile;
use crate::cli::{ClusterBenchArgs, ClusterOpts, FailoverBenchArgs, PlacementsBenchArgs};

/// Cluster secret of the throwaway bench cluster.
const SECRET: &str = "runmesh-bench-secret";
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(90);
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(60);
/// A queue left by a run must drain before the other side runs (it would steal its CPU).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Failed requests echoed to stderr per run.
const ERRORS_SHOWN_MAX: usize = 5;
/// Longest a failover may take before the bench calls it an error.
const FAILOVER_BOUND: Duration = Duration::from_secs(30);
/// How often the failover probe sends a fresh submit after the kill.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Background submitters during a failover (the burst the leader dies in).
const FAILOVER_LOAD_CLIENTS: usize = 4;
const POLL_EVERY: Duration = Duration::from_millis(5);
const CONCURRENCY_MAX: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// The bench's directory: `--dir`, or a temp dir (on disk: /tmp here is not tmpfs, but `--dir`
/// lets a run choose) removed at the end.
struct Workdir {
    path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Workdir {
    fn new(dir: Option<&Path>) -> anyhow::Result<Self> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                let path = tempfile::Builder::new()
                    .prefix("bench-")
                    .tempdir_in(d)
                    .context("creating a run dir")?
                    .keep();
                Ok(Self { path, _tmp: None })
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("runmesh-bench-")
                    .tempdir()
                    .context("creating a temp dir")?;
                Ok(Self {
                    path: tmp.path().to_path_buf(),
                    _tmp: Some(tmp),
                })
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A port such that it and the two above it (p2p, Raft, blobs) are free for TCP and UDP.
fn free_mesh_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let base = free_port()?;
        if base > u16::MAX - 3 {
            continue;
        }
        let free = (0..3).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", base + i)).is_ok()
        });
        if free {
            return Ok(base);
        }
    }
    bail!("no block of 3 free ports found")
}

fn log_file(path: &Path) -> anyhow::Result<Stdio> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Stdio::from(f))
}

/// One runmesh node of the bench cluster; restartable on the same ports and data dir.
struct MeshNode {
    dir: PathBuf,
    http_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    url: String,
}

impl MeshNode {
    async fn start(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating the runmesh binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("dev").args(&self.args);
        crate::bench::isolate_node_command(&mut cmd);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(&self.dir.with_extension("log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting a runmesh node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = crate::bench::listening_url(&mut lines, NODE_START_TIMEOUT).await;
        let url = match ready {
            Ok(Ok(Some(url))) => url,
            _ => bail!(
                "node on http port {} did not start; see {}",
                self.http_port,
                self.dir.with_extension("log").display()
            ),
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.url = url.trim_end_matches('/').to_string();
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reap it.
    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// Raft roles as one node's `/admin/cluster` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct View {
    node_id: String,
    leader: Option<String>,
    voters: Vec<String>,
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_view(v: &Value) -> View {
    let mut voters: Vec<String> = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"].as_str() == Some("voter"))
        .filter_map(|m| id_text(&m["id"]))
        .collect();
    voters.sort();
    View {
        node_id: id_text(&v["node_id"]).unwrap_or_default(),
        leader: id_text(&v["leader"]),
        voters,
    }
}

struct MeshCluster {
    nodes: Vec<MeshNode>,
    /// Control-plane client (views, health), separate from the load's pool.
    http: reqwest::Client,
}

impl MeshCluster {
    async fn start(
        work: &Path,
        opts: &ClusterOpts,
        slots: usize,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut nodes: Vec<MeshNode> = Vec::new();
        let mut first_p2p = None;
        for i in 0..3 {
            let dir = work.join(format!("runmesh-{i}"));
            let http_port = free_port()?;
            let p2p = free_mesh_port()?;
            let mut args = vec![
                "--data-dir".into(),
                dir.display().to_string(),
                "--http".into(),
                format!("127.0.0.1:{http_port}"),
                "--p2p".into(),
                format!("127.0.0.1:{p2p}"),
                "--cluster-secret".into(),
                SECRET.into(),
                "--slots".into(),
                slots.to_string(),
            ];
            if let Some(b) = first_p2p {
                args.push("--bootstrap".into());
                args.push(format!("127.0.0.1:{b}"));
            }
            for (flag, v) in [
                ("--raft-heartbeat-ms", opts.raft_heartbeat_ms),
                (
                    "--raft-election-timeout-min-ms",
                    opts.raft_election_timeout_min_ms,
                ),
                (
                    "--raft-election-timeout-max-ms",
                    opts.raft_election_timeout_max_ms,
                ),
            ] {
                if let Some(v) = v {
                    args.push(flag.into());
                    args.push(v.to_string());
                }
            }
            args.extend(extra.iter().cloned());
            let mut node = MeshNode {
                dir,
                http_port,
                args,
                child: None,
                url: String::new(),
            };
            node.start().await?;
            first_p2p.get_or_insert(p2p);
            nodes.push(node);
        }
        // The cluster view needs the ADMIN key, which the founding node wrote.
        let admin_path = nodes[0].dir.join("admin.key");
        let admin = std::fs::read_to_string(&admin_path)
            .with_context(|| format!("reading {}", admin_path.display()))?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Key {}", admin.trim())
                .parse()
                .context("admin key as a header")?,
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .default_headers(headers)
            .build()?;
        let c = Self { nodes, http };
        c.wait_voters(MEMBERSHIP_TIMEOUT).await?;
        eprintln!(
            "runmesh: 3 voters at {}",
            c.nodes
                .iter()
                .map(|n| n.url.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(c)
    }

    async fn view(&self, i: usize) -> Option<View> {
        let n = &self.nodes[i];
        n.child.as_ref()?;
        let r = self
            .http
            .get(format!("{}/admin/cluster", n.url))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        Some(parse_view(&r.json::<Value>().await.ok()?))
    }

    /// Waits until every running node reports the same leader and 3 voters; returns the index of
    /// the leader.
    async fn wait_voters(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            for i in 0..self.nodes.len() {
                if self.nodes[i].child.is_some() {
                    views.push((i, self.view(i).await));
                }
            }
            let first = views.first().and_then(|(_, v)| v.clone());
            if let Some(first) = first {
                let agree = views.iter().all(|(_, v)| {
                    v.as_ref().is_some_and(|v| {
                        v.leader.is_some() && v.leader == first.leader && v.voters == first.voters
                    })
                });
                if agree && first.voters.len() == 3 && views.len() == self.nodes.len() {
                    if let Some((i, _)) = views.iter().find(|(_, v)| {
                        v.as_ref()
                            .is_some_and(|v| Some(&v.node_id) == first.leader.as_ref())
                    }) {
                        return Ok(*i);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the runmesh cluster did not settle on 3 voters within {timeout:?}: {views:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` on node `i` as JSON (`None` on any failure: the callers poll).
    async fn get_json(&self, i: usize, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.nodes[i].url))
            .send()
            .await
            .ok()?;
        r.json::<Value>().await.ok()
    }

    /// Jobs queued, as node `i`'s replica sees them (`/healthz`).
    async fn queued(&self, i: usize) -> Option<u64> {
        self.get_json(i, "/healthz").await?["queued"].as_u64()
    }

    /// Waits until no job is queued or running on the cluster (the echo jobs a run left behind).
    async fn drain(&self, leader: usize) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            let queued = self.queued(leader).await;
            let running = self.running(leader).await;
            if queued == Some(0) && running == Some(0) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > DRAIN_TIMEOUT {
                bail!(
                    "the runmesh queue did not drain within {DRAIN_TIMEOUT:?} ({queued:?} queued)"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Jobs running on the cluster, from the cluster view's per-member load.
    async fn running(&self, i: usize) -> Option<u64> {
        let v = self.get_json(i, "/admin/cluster").await?;
        Some(
            v["members"]
                .as_array()?
                .iter()
                .filter_map(|m| m["running"].as_u64())
                .sum(),
        )
    }

    async fn shutdown(&mut self) {
        for n in &mut self.nodes {
            n.kill9().await;
        }
    }
}

/// A 3-member etcd cluster on loopback, data dirs on disk (etcd's defaults: WAL fsync per batch).
struct EtcdCluster {
    children: Vec<Child>,
    client_urls: Vec<String>,
}

impl EtcdCluster {
    async fn start(work: &Path, etcd: &str) -> anyhow::Result<Self> {
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("etcd{i}=http://127.0.0.1:{p}"))
            .collect();
        let initial = initial.join(",");
        let mut children = Vec::new();
        for i in 0..3 {
            let dir = work.join(format!("etcd-{i}"));
            let peer = format!("http://127.0.0.1:{}", peers[i]);
            let client = format!("http://127.0.0.1:{}", clients[i]);
            let child = Command::new(etcd)
                .arg("--name")
                .arg(format!("etcd{i}"))
                .arg("--data-dir")
                .arg(&dir)
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "runmesh-bench"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log_file(&dir.with_extension("log"))?)
                .stderr(log_file(&dir.with_extension("log"))?)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| {
                    format!("starting {etcd} (Debian: apt-get install etcd-server)")
                })?;
            children.push(child);
        }
        let c = Self {
            children,
            client_urls: clients
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + ETCD_START_TIMEOUT;
        for url in &c.client_urls {
            loop {
                let healthy = match http.get(format!("{url}/health")).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .ok()
                        .is_some_and(|v| v["health"].as_str() == Some("true")),
                    Err(_) => false,
                };
                if healthy {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "etcd at {url} not healthy within {ETCD_START_TIMEOUT:?}; see {}",
                        work.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        eprintln!("etcd: 3 members at {}", c.client_urls.join(", "));
        Ok(c)
    }

    async fn shutdown(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load tool (the same for both sides)
// ---------------------------------------------------------------------------------------------

/// Builds request `seq` of client `client`: (url, body).
type MakeRequest = Arc<dyn Fn(usize, u64) -> (String, Vec<u8>) + Send + Sync>;

#[derive(Default)]
struct RunStats {
    ok: u64,
    errors: u64,
    elapsed_s: f64,
    latencies_ms: Vec<f64>,
}

impl RunStats {
    fn merge(&mut self, o: RunStats) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.elapsed_s += o.elapsed_s;
        self.latencies_ms.extend(o.latencies_ms);
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed_s.max(1e-9)
    }

    fn sort(&mut self) {
        self.latencies_ms.sort_by(f64::total_cmp);
    }

    fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies_ms, q)
    }
}

fn load_client(c: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(c)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// One POST: success is a 2xx whose body holds `marker`.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    marker: &[u8],
) -> Result<(), String> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if status.is_success() && bytes.windows(marker.len()).any(|w| w == marker) {
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        ))
    }
}

/// `c` clients, each sending one request after the other for `duration` (after two untimed
/// warm-up requests each, which open the connections).
async fn drive(
    client: &reqwest::Client,
    c: usize,
    duration: Duration,
    make: MakeRequest,
    marker: &'static [u8],
) -> RunStats {
    let shown = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(c + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..c {
        let (client, make, shown, start) =
            (client.clone(), make.clone(), shown.clone(), start.clone());
        tasks.spawn(async move {
            let mut seq = 0u64;
            for _ in 0..2 {
                let (url, body) = make(k, seq);
                seq += 1;
                let _ = post(&client, &url, body, marker).await;
            }
            start.wait().await;
            let deadline = Instant::now() + duration;
            let mut st = RunStats::default();
            while Instant::now() < deadline {
                let (url, body) = make(k, seq);
                seq += 1;
                let t0 = Instant::now();
                match post(&client, &url, body, marker).await {
                    Ok(()) => {
                        st.ok += 1;
                        st.latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    Err(e) => {
                        st.errors += 1;
                        if shown.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            < ERRORS_SHOWN_MAX
                        {
                            eprintln!("request to {url} failed: {e}");
                        }
                    }
                }
            }
            st
        });
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut total = RunStats::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(st) = r {
            total.merge(st);
        }
    }
    total.elapsed_s = t0.elapsed().as_secs_f64();
    total
}

/// Standard base64 with padding (etcd's JSON gateway takes keys and values so).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The job input both sides write: `{"pad": "xxx…"}` of `payload_bytes` padding.
fn input_json(payload_bytes: usize) -> Vec<u8> {
    serde_json::json!({ "pad": "x".repeat(payload_bytes) })
        .to_string()
        .into_bytes()
}

fn runmesh_requests(urls: Vec<String>, input: Vec<u8>) -> MakeRequest {
    let submit: Vec<String> = urls
        .iter()
        .map(|u| format!("{u}/queue/runmesh/echo"))
        .collect();
    Arc::new(move |client, _seq| (submit[client % submit.len()].clone(), input.clone()))
}

fn etcd_requests(urls: Vec<String>, value: Vec<u8>) -> MakeRequest {
    let put: Vec<String> = urls.iter().map(|u| format!("{u}/v3/kv/put")).collect();
    let value = base64(&value);
    Arc::new(move |client, seq| {
        let key = base64(format!("bench/{client}/{seq}").as_bytes());
        let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#).into_bytes();
        (put[client % put.len()].clone(), body)
    })
}

// ---------------------------------------------------------------------------------------------
// bench cluster: submits/s and latency against etcd
// ---------------------------------------------------------------------------------------------

pub async fn cluster(args: ClusterBenchArgs) -> anyhow::Result<()> {
    let mut args = args;
    if args.quick {
        args.seconds = args.seconds.min(1.0);
        args.rounds = 1;
    }
    if args.concurrency.is_empty()
        || args
            .concurrency
            .iter()
            .any(|&c| c == 0 || c > CONCURRENCY_MAX)
    {
        bail!("--concurrency: each value 1..={CONCURRENCY_MAX}");
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    let work = Workdir::new(args.opts.dir.as_deref())?;
    let mut mesh = MeshCluster::start(&work.path, &args.opts, args.slots, &[]).await?;
    let mut etcd = match EtcdCluster::start(&work.path, &args.etcd).await {
        Ok(e) => e,
        Err(e) => {
            mesh.shutdown().await;
            return Err(e);
        }
    };
    let result = cluster_runs(&args, &mesh, &etcd).await;
    mesh.shutdown().await;
    etcd.shutdown().await;
    let rows = result?;
    print_cluster_table(&args, &rows);
    let errors: u64 = rows.iter().map(|r| r.runmesh.errors + r.etcd.errors).sum();
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

struct Row {
    c: usize,
    runmesh: RunStats,
    etcd: RunStats,
    drain_s: f64,
}

async fn cluster_runs(
    args: &ClusterBenchArgs,
    mesh: &MeshCluster,
    etcd: &EtcdCluster,
) -> anyhow::Result<Vec<Row>> {
    let leader = mesh.wait_voters(MEMBERSHIP_TIMEOUT).await?;
    let input = input_json(args.opts.payload_bytes);
    // Clients spread over the members (or all on the leader), the same way on both sides.
    let (mesh_urls, etcd_urls): (Vec<String>, Vec<String>) = if args.leader_only {
        let etcd_leader = etcd_leader(etcd).await?;
        (vec![mesh.nodes[leader].url.clone()], vec![etcd_leader])
    } else {
        (
            mesh.nodes.iter().map(|n| n.url.clone()).collect(),
            etcd.client_urls.clone(),
        )
    };
    let duration = Duration::from_secs_f64(args.seconds);
    let mut rows: Vec<Row> = args
        .concurrency
        .iter()
        .map(|&c| Row {
            c,
            runmesh: RunStats::default(),
            etcd: RunStats::default(),
            drain_s: 0.0,
        })
        .collect();
    for round in 0..args.rounds {
        for (ci, row) in rows.iter_mut().enumerate() {
            let c = row.c;
            let client = load_client(c)?;
            // Alternate which side goes first, so neither always runs on a warmer (or more
            // littered) machine.
            let runmesh_first = (round + ci) % 2 == 0;
            for side in 0..2 {
                if (side == 0) == runmesh_first {
                    let st = drive(
                        &client,
                        c,
                        duration,
                        runmesh_requests(mesh_urls.clone(), input.clone()),
                        b"request_id",
                    )
                    .await;
                    eprintln!(
                        "runmesh C={c}: {:.0} jobs/s ({} ok, {} errors)",
                        st.rate(),
                        st.ok,
                        st.errors
                    );
                    row.runmesh.merge(st);
                    // The echo jobs still queued run now, not during etcd's turn.
                    row.drain_s += mesh.drain(leader).await?.as_secs_f64();
                } else {
                    let st = drive(
                        &client,
                        c,
                        duration,
                        etcd_requests(etcd_urls.clone(), input.clone()),
                        b"header",
                    )
                    .await;
                    eprintln!(
                        "etcd    C={c}: {:.0} puts/s ({} ok, {} errors)",
                        st.rate(),
                        st.ok,
                        st.errors
                    );
                    row.etcd.merge(st);
                }
            }
        }
    }
    for r in &mut rows {
        r.runmesh.sort();
        r.etcd.sort();
    }
    Ok(rows)
}

/// The client URL of etcd's leader (`/v3/maintenance/status` names the member it asked and the
/// leader).
async fn etcd_leader(etcd: &EtcdCluster) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    for url in &etcd.client_urls {
        let v: Value = http
            .post(format!("{url}/v3/maintenance/status"))
            .body("{}")
            .send()
            .await?
            .json()
            .await?;
        if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
            return Ok(url.clone());
        }
    }
    bail!("no etcd member says it leads")
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn print_cluster_table(args: &ClusterBenchArgs, rows: &[Row]) {
    println!(
        "durable submits on 3 voters, loopback: runmesh POST /queue/runmesh/echo vs etcd PUT \
         /v3/kv/put, {} B JSON, {:.1} s per run x {} round(s), clients {}",
        input_json(args.opts.payload_bytes).len(),
        args.seconds,
        args.rounds,
        if args.leader_only {
            "on the leader"
        } else {
            "spread over the members"
        }
    );
    println!(
        "| C | runmesh jobs/s | p50 ms | p99 ms | etcd puts/s | p50 ms | p99 ms | jobs/s ratio (target >= 2) | p50 ratio | p99 ratio (target <= 0.5 at C=16) | runmesh queue drained after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (m, e) = (&r.runmesh, &r.etcd);
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2}x | {:.1} s |",
            r.c,
            m.rate(),
            m.p(0.5),
            m.p(0.99),
            e.rate(),
            e.p(0.5),
            e.p(0.99),
            ratio(m.rate(), e.rate()),
            ratio(m.p(0.5), e.p(0.5)),
            ratio(m.p(0.99), e.p(0.99)),
            r.drain_s
        );
    }
    for r in rows {
        let (m, e) = (&r.runmesh, &r.etcd);
        println!(
            "bench-cluster c={} runmesh_rate={:.1} runmesh_p50_ms={:.2} runmesh_p99_ms={:.2} runmesh_errors={} etcd_rate={:.1} etcd_p50_ms={:.2} etcd_p99_ms={:.2} etcd_errors={} rate_ratio={:.2} p50_ratio={:.2} p99_ratio={:.2}",
            r.c,
            m.rate(),
            m.p(0.5),
            m.p(0.99),
            m.errors,
            e.rate(),
            e.p(0.5),
            e.p(0.99),
            e.errors,
            ratio(m.rate(), e.rate()),
            ratio(m.p(0.5), e.p(0.5)),
            ratio(m.p(0.99), e.p(0.99)),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// bench failover: leader kill -9 -> first acknowledged submit sent after the kill
// ---------------------------------------------------------------------------------------------

pub async fn failover(args: FailoverBenchArgs) -> anyhow::Result<()> {
    let kills = if args.quick {
        args.kills.min(2)
    } else {
        args.kills
    };
    if kills == 0 || kills > 1000 {
        bail!("--kills must be 1..=1000");
    }
    let work = Workdir::new(args.opts.dir.as_deref())?;
    let mut mesh = MeshCluster::start(&work.path, &args.opts, 4, &[]).await?;
    let result = failover_runs(&args, &mut mesh, kills).await;
    mesh.shutdown().await;
    let times = result?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = percentile(&sorted, 0.5);
    let t = runmesh_node::config::RaftTiming::from_keys(
        args.opts.raft_heartbeat_ms,
        args.opts.raft_election_timeout_min_ms,
        args.opts.raft_election_timeout_max_ms,
    );
    println!(
        "failover on 3 voters, loopback (Raft heartbeat {} ms, election timeout {}..{} ms): leader kill -9 -> first acknowledged submit sent after it",
        t.heartbeat_ms, t.election_timeout_min_ms, t.election_timeout_max_ms
    );
    println!("| kill | ms |");
    println!("|---:|---:|");
    for (i, t) in times.iter().enumerate() {
        println!("| {} | {t:.0} |", i + 1);
    }
    println!(
        "median {median:.0} ms, min {:.0} ms, max {:.0} ms over {} kills (target: median < 500 ms)",
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
        times.len()
    );
    println!(
        "bench-failover kills={} median_ms={median:.0} min_ms={:.0} max_ms={:.0}",
        times.len(),
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

async fn failover_runs(
    args: &FailoverBenchArgs,
    mesh: &mut MeshCluster,
    kills: usize,
) -> anyhow::Result<Vec<f64>> {
    let input = input_json(args.opts.payload_bytes);
    let client = load_client(64)?;
    let mut times = Vec::new();
    for k in 0..kills {
        let leader = mesh.wait_voters(MEMBERSHIP_TIMEOUT).await?;
        let survivors: Vec<String> = (0..mesh.nodes.len())
            .filter(|&i| i != leader)
            .map(|i| format!("{}/queue/runmesh/echo", mesh.nodes[i].url))
            .collect();
        // Every survivor takes a write before the kill (and so has a warm connection to the
        // leader), and a background burst runs through the kill.
        for url in &survivors {
            post(&client, url, input.clone(), b"request_id")
                .await
                .map_err(|e| anyhow::anyhow!("submit before kill {}: {e}", k + 1))?;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = tokio::task::JoinSet::new();
        for t in 0..FAILOVER_LOAD_CLIENTS {
            let (client, url, body, stop) = (
                client.clone(),
                survivors[t % survivors.len()].clone(),
                input.clone(),
                stop.clone(),
            );
            load.spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if post(&client, &url, body.clone(), b"request_id")
                        .await
                        .is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(args.before_kill_ms)).await;
        let killed_at = Instant::now();
        mesh.nodes[leader].kill9().await;
        // Probes: a fresh submit every few ms to a survivor, each timed from the kill; the first
        // to be acknowledged ends the failover.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        let mut probes = tokio::task::JoinSet::new();
        let mut n = 0usize;
        let failover = loop {
            let (client, url, body, tx) = (
                client.clone(),
                survivors[n % survivors.len()].clone(),
                input.clone(),
                tx.clone(),
            );
            n += 1;
            probes.spawn(async move {
                if post(&client, &url, body, b"request_id").await.is_ok() {
                    let _ = tx.send(killed_at.elapsed());
                }
            });
            tokio::select! {
                got = rx.recv() => if let Some(d) = got { break d },
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
            if killed_at.elapsed() > FAILOVER_BOUND {
                bail!(
                    "kill {}: no submit acknowledged within {FAILOVER_BOUND:?}",
                    k + 1
                );
            }
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        probes.abort_all();
        while load.join_next().await.is_some() {}
        let ms = failover.as_secs_f64() * 1000.0;
        eprintln!("kill {}: first acknowledged submit after {ms:.0} ms", k + 1);
        times.push(ms);
        if k + 1 == kills {
            // The last figure is taken; nothing after it needs 3 voters again.
            break;
        }
        // Back to 3 voters: restart the killed node on its data dir and ports. If that fails, the
        // kills measured so far are still figures: report them (and why the series stopped).
        if let Err(e) = mesh.nodes[leader].start().await {
            eprintln!(
                "kill {}: restarting the killed node failed, stopping the series: {e:#}",
                k + 1
            );
            break;
        }
        mesh.wait_voters(MEMBERSHIP_TIMEOUT).await?;
        // Caught up: a write through it is applied there before it answers.
        let url = format!("{}/queue/runmesh/echo", mesh.nodes[leader].url);
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        while post(&client, &url, input.clone(), b"request_id")
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                // Not this figure's concern; the next kill still waits for 3 agreeing voters.
                eprintln!(
                    "kill {}: the restarted node took no write within {MEMBERSHIP_TIMEOUT:?}",
                    k + 1
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    }
    Ok(times)
}

// ---------------------------------------------------------------------------------------------
// bench placements: how fast the leader assigns a full queue
// ---------------------------------------------------------------------------------------------

pub async fn placements(args: PlacementsBenchArgs) -> anyhow::Result<()> {
    let jobs = if args.quick {
        args.jobs.min(300)
    } else {
        args.jobs
    };
    // Every job finds a free slot at once, so the drain times the scheduler and the Assign
    // commits, not the echo jobs' completions freeing slots (which still compete for the log).
    let slots = jobs.div_ceil(3).max(1);
    if jobs == 0 || slots > runmesh_node::config::SLOTS_MAX {
        bail!("--jobs must be 1..={}", 3 * runmesh_node::config::SLOTS_MAX);
    }
    let work = Workdir::new(args.opts.dir.as_deref())?;
    let hold = work.path.join("hold-dispatch");
    std::fs::write(&hold, b"held by runmesh bench placements\n")
        .context("writing the hold file")?;
    let extra = vec![
        "--dispatch-hold-file".to_string(),
        hold.display().to_string(),
        // Long leases: no renewals compete with the assignments.
        "--lease-ms".to_string(),
        "600000".to_string(),
    ];
    let mut mesh = MeshCluster::start(&work.path, &args.opts, slots, &extra).await?;
    let result = placement_run(&mesh, &hold, jobs, args.opts.payload_bytes).await;
    mesh.shutdown().await;
    let (elapsed, per_node) = result?;
    let rate = jobs as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "scheduler placements on 3 voters, loopback: {jobs} queued runmesh/echo jobs, {slots} slots per node, dispatch released at once"
    );
    println!("| jobs | drained in | placements/s (target >= 2000) | jobs per node |");
    println!("|---:|---:|---:|---|");
    println!(
        "| {jobs} | {:.1} ms | {rate:.0} | {} |",
        elapsed.as_secs_f64() * 1000.0,
        per_node
    );
    println!(
        "bench-placements jobs={jobs} ms={:.1} rate={rate:.1}",
        elapsed.as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn placement_run(
    mesh: &MeshCluster,
    hold: &Path,
    jobs: usize,
    payload_bytes: usize,
) -> anyhow::Result<(Duration, String)> {
    let leader = mesh.wait_voters(MEMBERSHIP_TIMEOUT).await?;
    // Every node's advert must be in the leader's view, or the first rounds see fewer slots.
    let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
    loop {
        let r = mesh
            .http
            .get(format!("{}/admin/cluster", mesh.nodes[leader].url))
            .send()
            .await?;
        let v: Value = r.json().await?;
        let up = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"].as_str() == Some("up") && m["slots"].as_u64().unwrap_or(0) > 0)
            .count();
        if up >= 3 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the leader does not see 3 nodes up: {v}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Fill the queue (held), through every node.
    let client = load_client(32)?;
    let body = input_json(payload_bytes);
    let urls: Vec<String> = mesh
        .nodes
        .iter()
        .map(|n| format!("{}/queue/runmesh/echo", n.url))
        .collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32 {
        let (client, urls, body, next) = (client.clone(), urls.clone(), body.clone(), next.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                ids.push(submit_id(&client, &urls[t % urls.len()], body.clone()).await?);
            }
            Ok::<_, String>(ids)
        });
    }
    let mut ids = Vec::with_capacity(jobs);
    while let Some(r) = tasks.join_next().await {
        ids.extend(
            r.context("submitter")?
                .map_err(|e| anyhow::anyhow!("submit: {e}"))?,
        );
    }
    let queued = mesh.queued(leader).await;
    if queued != Some(jobs as u64) {
        bail!("{queued:?} jobs queued after {jobs} submits while held");
    }
    // Release: the leader's dispatcher sees the file gone on its next poll (<= 200 ms). The
    // clock starts at the first placement seen, so that wait is not counted.
    std::fs::remove_file(hold).context("removing the hold file")?;
    let released = Instant::now();
    let mut first: Option<Instant> = None;
    loop {
        let q = mesh.queued(leader).await.unwrap_or(jobs as u64);
        let now = Instant::now();
        if q < jobs as u64 && first.is_none() {
            first = Some(now);
        }
        if q == 0 {
            break;
        }
        if released.elapsed() > Duration::from_secs(300) {
            bail!("{q} jobs still queued 300 s after the release");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let done = Instant::now();
    let elapsed = done - first.unwrap_or(released);
    // Where each job was placed, from its status's worker header (set from the Assign on, kept
    // after completion). The advert's `running` would be a snapshot, 0 once the echo jobs end.
    let status_base = format!("{}/queue/runmesh/echo/requests", mesh.nodes[leader].url);
    let ids = Arc::new(ids);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, ids, next, base) = (
            client.clone(),
            ids.clone(),
            next.clone(),
            status_base.clone(),
        );
        tasks.spawn(async move {
            let mut workers = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                let resp = client
                    .get(format!("{base}/{id}/status"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                workers.push(
                    resp.headers()
                        .get(runmesh_gateway_node::WORKER_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_string(),
                );
            }
            Ok::<_, String>(workers)
        });
    }
    let mut workers = Vec::with_capacity(jobs);
    while let Some(r) = tasks.join_next().await {
        workers.extend(
            r.context("status reader")?
                .map_err(|e| anyhow::anyhow!("status: {e}"))?,
        );
    }
    Ok((elapsed, per_worker(&workers)))
}

/// `"node-a: 1000 / node-b: 998 / none: 2"`: jobs per worker, by name (`none`: no worker recorded).
fn per_worker(workers: &[String]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for w in workers {
        *counts.entry(w.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(w, n)| format!("{w}: {n}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A queue submit that returns the job's `request_id`.
async fn submit_id(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<String, String> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let id = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["request_id"].as_str().map(str::to_string));
    match id {
        Some(id) if status.is_success() => Ok(id),
        _ => Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"bench/0/1"), "YmVuY2gvMC8x");
    }

    #[test]
    fn jobs_are_counted_per_worker() {
        let w: Vec<String> = ["b", "a", "b", "none", "b"].map(String::from).to_vec();
        assert_eq!(per_worker(&w), "a: 1 / b: 3 / none: 1");
        assert_eq!(per_worker(&[]), "");
    }

    #[test]
    fn views_read_roles_and_leader() {
        let v = serde_json::json!({
            "node_id": 7, "leader": "9",
            "members": [
                {"id": 9, "role": "voter"}, {"id": "7", "role": "voter"},
                {"id": 3, "role": "learner"}
            ]
        });
        let view = parse_view(&v);
        assert_eq!(view.node_id, "7");
        assert_eq!(view.leader.as_deref(), Some("9"));
        assert_eq!(view.voters, ["7", "9"]);
    }

    #[test]
    fn both_sides_write_the_same_value() {
        let input = input_json(64);
        let m = runmesh_requests(vec!["http://a".into(), "http://b".into()], input.clone());
        let e = etcd_requests(vec!["http://x".into()], input.clone());
        assert_eq!(
            m(1, 0),
            ("http://b/queue/runmesh/echo".to_string(), input.clone())
        );
        let (url, body) = e(3, 5);
        assert_eq!(url, "http://x/v3/kv/put");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["value"].as_str(), Some(base64(&input).as_str()));
        assert_eq!(body["key"].as_str(), Some(base64(b"bench/3/5").as_str()));
    }
}
