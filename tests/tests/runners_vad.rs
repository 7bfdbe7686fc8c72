//! `runmesh/silero-vad` end to end through a real node, checked against onnxruntime running the
//! shipped ONNX model on the same samples (`tests/python/vad_reference.py`), on a clip of espeak-ng
//! speech and quiet-room silence made by `tests/python/vad_clip.py`.
//!
//! Needs the weights (`runmesh models fetch silero-vad --models-dir DIR`, named by
//! `RUNMESH_MODELS_DIR`), a Python with numpy and onnxruntime (`RUNMESH_PYTHON`) and `espeak-ng`;
//! `.ci/run` provides all three. Without them the tests say so and pass locally; under CI (`CI` set)
//! they are required.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use runmesh_tests::{Node, NodeOpts};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP: &str = "runmesh/silero-vad";
const WAIT: Duration = Duration::from_secs(120);
/// The brief's bar; candle and onnxruntime agree to ~1e-6 in practice.
const PROB_TOLERANCE: f64 = 1e-3;

/// A prerequisite is missing: fail under CI, else say so and skip.
fn missing<T>(what: &str) -> Option<T> {
    assert!(std::env::var_os("CI").is_none(), "CI needs {what}");
    eprintln!("skipping: no {what}");
    None
}

fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("RUNMESH_MODELS_DIR") {
        Some(d) if Path::new(&d).join("silero-vad").exists() => Some(PathBuf::from(d)),
        _ => missing("RUNMESH_MODELS_DIR with silero-vad (runmesh models fetch silero-vad)"),
    }
}

fn python_with(modules: &str) -> Option<String> {
    let py = std::env::var("RUNMESH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(py)
    } else {
        missing(&format!("{modules} in RUNMESH_PYTHON ({py})"))
    }
}

fn has_espeak() -> bool {
    let ok = Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok || missing::<()>("espeak-ng").is_some()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

fn run_python(py: &str, args: &[&Path]) -> Value {
    let out = Command::new(py).args(args).output().expect("run python");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args.first(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python json")
}

fn data_uri(bytes: &[u8]) -> String {
    format!(
        "data:audio/wav;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A mono 16-bit PCM WAV of `samples` at `rate` (for the refusal cases).
fn wav(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
    out.extend_from_slice(&(2 * channels).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Serves `body` at any path on 127.0.0.1 for up to `requests` requests; returns the base URL.
async fn serve_bytes(body: Vec<u8>, requests: usize) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        for _ in 0..requests {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut req = vec![0u8; 8192];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut req)).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: audio/wav\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        }
    });
    (format!("http://{addr}"), task)
}

fn probabilities(out: &Value) -> Vec<f64> {
    serde_json::from_value(out["probabilities"].clone()).expect("probabilities")
}

fn segments(out: &Value) -> Vec<(f64, f64)> {
    out["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| {
            (
                s["start"].as_f64().expect("start"),
                s["end"].as_f64().expect("end"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn vad_through_a_node_matches_onnxruntime_on_a_spoken_clip() {
    let Some(dir) = models_dir() else { return };
    let Some(py) = python_with("numpy, onnxruntime") else {
        return;
    };
    if !has_espeak() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let truth = run_python(&py, &[&script("vad_clip.py"), work.path()]);
    let clip = work.path().join("clip.wav");
    let onnx = dir.join("silero-vad/silero_vad_16k_op15.onnx");
    let want: Vec<f64> = serde_json::from_value(run_python(
        &py,
        &[&script("vad_reference.py"), &onnx, &clip],
    ))
    .expect("reference");
    let bytes = std::fs::read(&clip).expect("clip");

    let node = Node::start(NodeOpts {
        extra_args: vec!["--models-dir".into(), dir.display().to_string()],
        ..NodeOpts::default()
    });
    let api = node.api();
    let sub = api.submit(APP, &json!({ "audio": data_uri(&bytes) })).await;
    let status = api.wait_completed(APP, &sub.request_id, WAIT).await;
    assert!(status.get("error").is_none_or(Value::is_null), "{status}");
    let r = api.result(APP, &sub.request_id).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), node.stderr_tail());
    let out = r.json();
    assert_eq!(out["sample_rate"], 16000);
    let duration = truth["duration"].as_f64().expect("duration");
    assert!((out["duration"].as_f64().expect("duration") - duration).abs() < 1e-9);

    // Per-chunk probabilities: the same number as onnxruntime's, each within the tolerance.
    let got = probabilities(&out);
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f64, f64::max);
    eprintln!(
        "max |candle - onnxruntime| over {} chunks: {worst:e}",
        got.len()
    );
    assert!(worst <= PROB_TOLERANCE, "max difference {worst}");

    // Segments: one per phrase, each overlapping it, none in the middle of a silence.
    let speech: Vec<(f64, f64)> = serde_json::from_value::<Vec<[f64; 2]>>(truth["speech"].clone())
        .expect("truth")
        .into_iter()
        .map(|[a, b]| (a, b))
        .collect();
    let segs = segments(&out);
    eprintln!("segments {segs:?}, spoken {speech:?}");
    assert_eq!(
        segs.len(),
        speech.len(),
        "segments {segs:?}, speech {speech:?}"
    );
    for (&(s, e), &(ts, te)) in segs.iter().zip(&speech) {
        assert!(s < e, "{segs:?}");
        // Starts within 0.3 s of the phrase (the model needs a chunk or two; padding adds 30 ms) …
        assert!(
            (s - ts).abs() < 0.3,
            "segment {s}..{e} vs speech {ts}..{te}"
        );
        // … and covers most of it (espeak-ng's short pauses may end it a little early).
        let covered = (e.min(te) - s.max(ts)).max(0.0);
        assert!(
            covered > 0.8 * (te - ts),
            "segment {s}..{e} vs speech {ts}..{te}"
        );
    }
    let quiet = [
        speech[0].0 / 2.0,
        (speech[0].1 + speech[1].0) / 2.0,
        (speech[1].1 + duration) / 2.0,
    ];
    for t in quiet {
        assert!(
            !segs.iter().any(|&(s, e)| s <= t && t <= e),
            "silence at {t} s is inside {segs:?}"
        );
        let chunk = (t * 16000.0 / 512.0) as usize;
        assert!(got[chunk] < 0.1, "silence at {t} s has p = {}", got[chunk]);
    }

    // The job's log says what it did.
    let logs = api.status(APP, &sub.request_id, true).await.json();
    let text = logs["logs"].to_string();
    assert!(text.contains("chunks of 32 ms"), "{logs}");

    // The same samples as 32-bit float, sent over http: identical output.
    let f32_bytes = std::fs::read(work.path().join("clip_f32.wav")).expect("f32 clip");
    let (base, server) = serve_bytes(f32_bytes, 1).await;
    let r = api
        .run_sync(APP, &json!({ "audio": format!("{base}/clip_f32.wav") }))
        .await;
    server.abort();
    assert_eq!(r.status, 200, "{}", r.text());
    let via_url = r.json();
    assert_eq!(probabilities(&via_url), got);
    assert_eq!(via_url["segments"], out["segments"]);

    // A higher threshold and a longer minimum silence change the segments, not the probabilities.
    let r = api
        .run_sync(
            APP,
            &json!({ "audio": data_uri(&bytes), "threshold": 0.99, "min_speech_ms": 5000 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let strict = r.json();
    assert_eq!(probabilities(&strict), got);
    assert!(segments(&strict).is_empty(), "{strict}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vad_refuses_unusable_audio_with_fal_422s() {
    let Some(dir) = models_dir() else { return };
    let node = Node::start(NodeOpts {
        extra_args: vec!["--models-dir".into(), dir.display().to_string()],
        ..NodeOpts::default()
    });
    let api = node.api();
    let tone: Vec<i16> = (0..4000).map(|i| ((i % 40) * 500) as i16).collect();
    // At submit: the schema, and the WAV header of a data: URI.
    for (input, loc, kind) in [
        (json!({}), json!(["body", "audio"]), "missing"),
        (
            json!({"audio": "data:;base64,AAAA", "threshold": 1.5}),
            json!(["body", "threshold"]),
            "less_than_equal",
        ),
        (
            json!({"audio": data_uri(&wav(&tone, 22_050, 1))}),
            json!(["body", "audio"]),
            "unsupported_audio_format",
        ),
        (
            json!({"audio": data_uri(&wav(&tone, 16_000, 2))}),
            json!(["body", "audio"]),
            "unsupported_audio_format",
        ),
        (
            json!({"audio": data_uri(b"not a wav file at all")}),
            json!(["body", "audio"]),
            "unsupported_audio_format",
        ),
        (
            json!({"audio": "ftp://example.invalid/a.wav"}),
            json!(["body", "audio"]),
            "file_download_error",
        ),
        // The outbound policy: `dev` allows loopback, never the metadata address.
        (
            json!({"audio": "http://169.254.169.254/latest/meta-data/"}),
            json!(["body", "audio"]),
            "file_download_error",
        ),
    ] {
        let r = api.submit_raw(APP, &input, &[]).await;
        assert_eq!(r.status, 422, "{input}: {}", r.text());
        let d = &r.json()["detail"][0];
        assert_eq!(d["loc"], loc, "{input}: {d}");
        assert_eq!(d["type"], kind, "{input}: {d}");
    }
    // At run time: a URL is only fetched then; the result is the same fal 422 shape.
    let (base, server) = serve_bytes(wav(&tone, 22_050, 1), 1).await;
    let sub = api
        .submit(APP, &json!({"audio": format!("{base}/a.wav")}))
        .await;
    api.wait_completed(APP, &sub.request_id, WAIT).await;
    server.abort();
    let r = api.result(APP, &sub.request_id).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let d = &r.json()["detail"][0];
    assert_eq!(d["loc"], json!(["body", "audio"]), "{d}");
    assert_eq!(d["type"], "unsupported_audio_format", "{d}");
    assert!(d["msg"].as_str().unwrap_or("").contains("22050"), "{d}");
    // Nothing listens on a just-closed port: a download error.
    let r = api
        .run_sync(APP, &json!({"audio": format!("{base}/gone.wav")}))
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let d = &r.json()["detail"][0];
    assert_eq!(d["type"], "file_download_error");
    // Nothing about the target (its status, the connection error) reaches the caller.
    assert_eq!(d["msg"], "audio could not be downloaded", "{d}");
    // A clip of 4000 samples has 8 chunks (the last zero-padded); an empty one has none.
    let r = api
        .run_sync(APP, &json!({"audio": data_uri(&wav(&tone, 16_000, 1))}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    assert_eq!(probabilities(&out).len(), 8);
    let r = api
        .run_sync(APP, &json!({"audio": data_uri(&wav(&[], 16_000, 1))}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["probabilities"], json!([]));
    assert_eq!(r.json()["segments"], json!([]));
}

/// A node that may reach nothing internal (what `run` does by default) still reads the cluster's
/// own uploads (from its blob store, not over HTTP), and refuses a loopback URL at submit without
/// touching it.
#[tokio::test(flavor = "multi_thread")]
async fn vad_reads_uploads_but_not_internal_urls_when_the_policy_allows_nothing() {
    let Some(dir) = models_dir() else { return };
    let node = Node::start(NodeOpts {
        extra_args: vec![
            "--models-dir".into(),
            dir.display().to_string(),
            "--fetch-allow".into(),
            "none".into(),
        ],
        ..NodeOpts::default()
    });
    let api = node.api();
    let tone: Vec<i16> = (0..4000).map(|i| ((i % 40) * 500) as i16).collect();
    let clip = wav(&tone, 16_000, 1);
    let r = api
        .send(
            reqwest::Method::POST,
            "/storage/upload",
            &[("content-type", "audio/wav"), ("x-fal-file-name", "a.wav")],
            Some(clip.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].as_str().expect("upload url").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let r = api.run_sync(APP, &json!({ "audio": url })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(probabilities(&r.json()).len(), 8);

    let (base, server) = serve_bytes(clip, 1).await;
    let r = api
        .submit_raw(APP, &json!({"audio": format!("{base}/a.wav")}), &[])
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let d = &r.json()["detail"][0];
    assert_eq!(d["loc"], json!(["body", "audio"]), "{d}");
    let msg = d["msg"].as_str().unwrap_or("");
    assert!(msg.contains("not an allowed destination"), "{d}");
    assert!(!msg.contains(&base[7..]), "the target is not echoed: {d}");
    // The server was never asked: its one request is still unanswered.
    assert!(!server.is_finished());
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_the_vad_weights_does_not_serve_it_and_says_why() {
    let empty = tempfile::tempdir().expect("tempdir");
    let node = Node::start(NodeOpts {
        extra_args: vec!["--models-dir".into(), empty.path().display().to_string()],
        ..NodeOpts::default()
    });
    let api = node.api();
    let r = api
        .submit_raw(APP, &json!({"audio": "data:;base64,"}), &[])
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let log = node.stderr_tail();
    assert!(
        log.contains(APP) && log.contains("runmesh models fetch silero-vad"),
        "{log}"
    );
}
