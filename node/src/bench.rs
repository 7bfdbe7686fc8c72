//! `runmesh bench`: concurrent fal queue clients against a node, reporting submit latency and rate.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use runmesh_proto::ModelId;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

use crate::cli::BenchArgs;

const CONCURRENCY_MAX: usize = 4096;
const REQUESTS_MAX: usize = 10_000_000;
/// How long a spawned node may take to print its listening line.
const SPAWN_READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Bodies of failed submissions echoed to stderr, so a broken setup is visible without flooding.
const ERRORS_SHOWN_MAX: usize = 5;

struct Submitted {
    latencies_ms: Vec<f64>,
    /// Status URLs of accepted jobs, for `--wait`.
    status_urls: Vec<String>,
    errors: usize,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        bail!("--concurrency must be 1..={CONCURRENCY_MAX}");
    }
    if args.requests > REQUESTS_MAX {
        bail!("--requests must be at most {REQUESTS_MAX}");
    }
    let model = ModelId::parse(&args.model).context("--model")?;
    let mut input: Value = serde_json::from_str(&args.input).context("--input is not JSON")?;
    let Some(obj) = input.as_object_mut() else {
        bail!("--input must be a JSON object");
    };
    if args.payload_bytes > 0 {
        obj.insert("pad".into(), Value::String("x".repeat(args.payload_bytes)));
    }
    let body = Arc::new(serde_json::to_vec(&input).context("encoding the input")?);

    // Keep the spawned node (and its temp dir) alive until the bench is over.
    let (url, _node) = if args.spawn {
        let node = spawn_node(args.spawn_slots).await?;
        (node.url.clone(), Some(node))
    } else {
        (args.url.trim_end_matches('/').to_string(), None)
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(args.timeout_s.max(1)))
        .build()
        .context("building the http client")?;

    let submit_url = format!("{url}/queue/{model}");
    let started = Instant::now();
    let submitted = submit_all(&client, &submit_url, &body, &args).await;
    let submit_s = started.elapsed().as_secs_f64();
    let ok = submitted.status_urls.len();

    let mut latencies = submitted.latencies_ms;
    latencies.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
    );
    let rate = ok as f64 / submit_s.max(1e-9);
    println!(
        "submitted {ok} of {} jobs in {submit_s:.3} s",
        args.requests
    );
    println!("submit latency ms: p50 {p50:.2}  p99 {p99:.2}  max {max:.2}");
    println!("accepted jobs/s: {rate:.1}");

    let mut summary = format!(
        "bench model={model} c={} n={} ok={ok} err={} rate={rate:.1}/s p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2}",
        args.concurrency, args.requests, submitted.errors
    );
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
        let done = wait_all(&client, submitted.status_urls, args.concurrency, deadline).await;
        let total_s = started.elapsed().as_secs_f64();
        let e2e = done as f64 / total_s.max(1e-9);
        println!("completed {done} of {ok} jobs in {total_s:.3} s ({e2e:.1} jobs/s end to end)");
        summary.push_str(&format!(" done={done} e2e_rate={e2e:.1}/s"));
    }
    println!("{summary}");
    if submitted.errors > 0 && ok == 0 {
        bail!("every submission failed");
    }
    Ok(())
}

async fn submit_all(
    client: &reqwest::Client,
    submit_url: &str,
    body: &Arc<Vec<u8>>,
    args: &BenchArgs,
) -> Submitted {
    let next = Arc::new(AtomicUsize::new(0));
    let shown = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Submitted {
        latencies_ms: Vec::with_capacity(args.requests),
        status_urls: Vec::with_capacity(args.requests),
        errors: 0,
    }));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(args.requests.max(1)) {
        let (client, url, body) = (client.clone(), submit_url.to_string(), body.clone());
        let (next, shown, results, total) =
            (next.clone(), shown.clone(), results.clone(), args.requests);
        clients.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t0 = Instant::now();
                let res = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await;
                let outcome = match res {
                    Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                        Ok(v) => {
                            status_url(&v, &url).ok_or_else(|| format!("no request_id in {v}"))
                        }
                        Err(e) => Err(format!("bad response body: {e}")),
                    },
                    Ok(resp) => {
                        let status = resp.status();
                        Err(format!(
                            "{status}: {}",
                            resp.text().await.unwrap_or_default()
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                };
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let mut r = results.lock().await;
                match outcome {
                    Ok(status) => {
                        r.latencies_ms.push(ms);
                        r.status_urls.push(status);
                    }
                    Err(e) => {
                        r.errors += 1;
                        if shown.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN_MAX {
                            eprintln!("submit failed: {}", e.chars().take(500).collect::<String>());
                        }
                    }
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let mut r = results.lock().await;
    std::mem::replace(
        &mut *r,
        Submitted {
            latencies_ms: Vec::new(),
            status_urls: Vec::new(),
            errors: 0,
        },
    )
}

/// The status URL the node handed back, or one built from the request id.
fn status_url(resp: &Value, submit_url: &str) -> Option<String> {
    if let Some(u) = resp.get("status_url").and_then(Value::as_str) {
        return Some(u.to_string());
    }
    let id = resp.get("request_id")?.as_str()?;
    // submit_url is {base}/queue/{model}; status lives under the app path (no subpath).
    let (base, model) = submit_url.split_once("/queue/")?;
    let app = ModelId::parse(model).ok()?.app.path();
    Some(format!("{base}/queue/{app}/requests/{id}/status"))
}

/// Polls every status URL until COMPLETED or the deadline; returns how many completed.
async fn wait_all(
    client: &reqwest::Client,
    urls: Vec<String>,
    concurrency: usize,
    deadline: Instant,
) -> usize {
    let queue = Arc::new(Mutex::new(urls));
    let done = Arc::new(AtomicUsize::new(0));
    let mut pollers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, queue, done) = (client.clone(), queue.clone(), done.clone());
        pollers.spawn(async move {
            loop {
                let Some(url) = queue.lock().await.pop() else {
                    return;
                };
                loop {
                    if Instant::now() >= deadline {
                        return;
                    }
                    let status = match client.get(&url).send().await {
                        Ok(resp) => resp.json::<Value>().await.ok(),
                        Err(_) => None,
                    };
                    let word = status
                        .as_ref()
                        .and_then(|s| s.get("status"))
                        .and_then(Value::as_str);
                    if word == Some("COMPLETED") {
                        done.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }
        });
    }
    while pollers.join_next().await.is_some() {}
    done.load(Ordering::Relaxed)
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct SpawnedNode {
    url: String,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        // The temp dir goes with it; a clean Raft shutdown buys nothing here.
        let _ = self.child.start_kill();
    }
}

async fn spawn_node(slots: Option<usize>) -> anyhow::Result<SpawnedNode> {
    let exe = std::env::current_exe().context("locating the runmesh binary")?;
    let dir = tempfile::tempdir().context("creating a temp data dir")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--http")
        .arg("127.0.0.1:0");
    if let Some(n) = slots {
        cmd.arg("--slots").arg(n.to_string());
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = listening_url(&mut lines, SPAWN_READY_TIMEOUT).await;
    let url = match ready {
        Ok(Ok(Some(url))) => url,
        Ok(Ok(None)) => bail!("the spawned node exited before it listened"),
        Ok(Err(e)) => bail!("reading the spawned node's output: {e}"),
        Err(_) => bail!("the spawned node did not listen within {SPAWN_READY_TIMEOUT:?}"),
    };
    // Keep draining its stdout so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    eprintln!("spawned node at {url}");
    Ok(SpawnedNode {
        url,
        child,
        _dir: dir,
    })
}

/// A bench's node is configured by its flags alone: its environment is cleared of `RUNMESH_*`, so
/// the caller's settings (models dir, slots) do not change what is measured. The one way in is
/// `RUNMESH_BENCH_NODE_ARGS`: whitespace-separated flags added to every node the bench starts, for
/// A/B runs of a node setting (e.g. `--place-at-submit false`).
pub(crate) fn isolate_node_command(cmd: &mut tokio::process::Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RUNMESH_") {
            cmd.env_remove(&k);
        }
    }
    if let Ok(extra) = std::env::var("RUNMESH_BENCH_NODE_ARGS") {
        cmd.args(extra.split_whitespace());
    }
}

/// Reads a spawned node's stdout until its `runmesh listening on URL` line, within `limit`: the URL,
/// `None` if the node exited first, or the read error / time-out.
pub(crate) async fn listening_url<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    limit: Duration,
) -> Result<std::io::Result<Option<String>>, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("runmesh listening on ") {
                return Ok(Some(url.trim().to_string()));
            }
        }
        Ok(None)
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn status_urls_come_from_the_response_or_the_id() {
        let given =
            json!({"request_id": "x", "status_url": "http://h/queue/a/b/requests/x/status"});
        assert_eq!(
            status_url(&given, "http://h/queue/a/b/sub").unwrap(),
            "http://h/queue/a/b/requests/x/status"
        );
        let bare = json!({"request_id": "x"});
        assert_eq!(
            status_url(&bare, "http://h:1/queue/a/b/sub").unwrap(),
            "http://h:1/queue/a/b/requests/x/status"
        );
        assert_eq!(status_url(&json!({}), "http://h/queue/a/b"), None);
    }
}
