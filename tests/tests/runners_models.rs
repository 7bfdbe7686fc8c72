//! `runmesh/all-minilm-l6-v2` end to end through a real node, checked against an independent numpy
//! reference over the same weights (`tests/python/minilm_reference.py`).
//!
//! Needs the weights (`runmesh models fetch all-minilm-l6-v2 --models-dir DIR`, named by
//! `RUNMESH_MODELS_DIR`) and a Python with numpy (`RUNMESH_PYTHON`); `.ci/run` provides both. Without
//! them the test says so and passes locally; under CI (`CI` set) they are required.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use runmesh_tests::{Node, NodeOpts};
use serde_json::{json, Value};

const APP: &str = "runmesh/all-minilm-l6-v2";
const WAIT: Duration = Duration::from_secs(120);
/// The bar; in practice candle and numpy agree to ~1e-7.
const COSINE_MIN: f64 = 0.9999;

fn models_dir() -> Option<PathBuf> {
    match std::env::var_os("RUNMESH_MODELS_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set RUNMESH_MODELS_DIR (runmesh models fetch all-minilm-l6-v2)"
            );
            eprintln!("skipping: RUNMESH_MODELS_DIR is not set");
            None
        }
    }
}

fn python_with_numpy() -> Option<String> {
    let py = std::env::var("RUNMESH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs numpy in RUNMESH_PYTHON ({py})"
        );
        eprintln!("skipping: {py} has no numpy");
        return None;
    }
    Some(py)
}

fn reference(py: &str, model_dir: &Path, texts: &[String]) -> Vec<Vec<f64>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/minilm_reference.py");
    let mut child = Command::new(py)
        .arg(script)
        .arg(model_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the numpy reference");
    let input = serde_json::to_vec(texts).expect("texts to json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write texts");
    let out = child.wait_with_output().expect("reference output");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference json")
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn test_texts() -> Vec<String> {
    let mut t: Vec<String> = [
        "This is an example sentence",
        "The cat sits on the mat.",
        "A feline is resting on a rug.",
        "runmesh: a mesh of GPU runner nodes speaking the fal.ai HTTP API!",
        "Café déjà vu — naïve résumé, 42 times (maybe?)",
        "x",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    t.push(
        "A longer paragraph, so that the short texts of the same request are padded: the node batches \
         texts into one forward pass and must mask the padding out of the mean."
            .into(),
    );
    t
}

/// Longer than 256 tokens: both sides truncate at the model's max_seq_length. Sent alone (a debug
/// build of candle takes seconds per 256-token pass).
fn long_text() -> String {
    (0..300)
        .map(|i| format!("word{}", i % 17))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn minilm_embeddings_through_a_node_match_the_numpy_reference() {
    let Some(dir) = models_dir() else { return };
    let Some(py) = python_with_numpy() else {
        return;
    };
    let texts = test_texts();
    let want = reference(&py, &dir.join("all-minilm-l6-v2"), &texts);

    let node = Node::start(NodeOpts {
        extra_args: vec!["--models-dir".into(), dir.display().to_string()],
        ..NodeOpts::default()
    });
    let api = node.api();
    let sub = api.submit(APP, &json!({ "texts": texts })).await;
    let status = api.wait_completed(APP, &sub.request_id, WAIT).await;
    assert!(status.get("error").is_none_or(Value::is_null), "{status}");
    let r = api.result(APP, &sub.request_id).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), node.stderr_tail());
    let out = r.json();
    assert_eq!(out["model"], "all-MiniLM-L6-v2");
    assert_eq!(out["dim"], 384);
    let got: Vec<Vec<f64>> = serde_json::from_value(out["embeddings"].clone()).expect("embeddings");
    assert_eq!(got.len(), texts.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), 384);
        let norm: f64 = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i}: norm {norm}");
        let c = cosine(g, w);
        assert!(c >= COSINE_MIN, "text {i} {:?}: cosine {c}", texts[i]);
    }

    // The sync API, one long text: truncated at 256 tokens like the reference.
    let long = long_text();
    let want_long = reference(
        &py,
        &dir.join("all-minilm-l6-v2"),
        std::slice::from_ref(&long),
    );
    let r = api.run_sync(APP, &json!({ "texts": [long] })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let one: Vec<Vec<f64>> = serde_json::from_value(r.json()["embeddings"].clone()).expect("sync");
    let c = cosine(&one[0], &want_long[0]);
    assert!(c >= COSINE_MIN, "long text: cosine {c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn minilm_inputs_are_validated_by_the_manifest_schema() {
    let Some(dir) = models_dir() else { return };
    let node = Node::start(NodeOpts {
        extra_args: vec!["--models-dir".into(), dir.display().to_string()],
        ..NodeOpts::default()
    });
    let api = node.api();
    for (input, loc, kind) in [
        (json!({}), json!(["body", "texts"]), "missing"),
        (json!({"texts": []}), json!(["body", "texts"]), "too_short"),
        (
            json!({"texts": "one"}),
            json!(["body", "texts"]),
            "list_type",
        ),
        (
            json!({"texts": ["a", 2]}),
            json!(["body", "texts", "1"]),
            "string_type",
        ),
    ] {
        let r = api.submit_raw(APP, &input, &[]).await;
        assert_eq!(r.status, 422, "{input}: {}", r.text());
        let d = &r.json()["detail"][0];
        assert_eq!(d["loc"], loc, "{input}: {d}");
        assert_eq!(d["type"], kind, "{input}: {d}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_the_weights_does_not_serve_the_app_and_says_why() {
    let empty = tempfile::tempdir().expect("tempdir");
    let node = Node::start(NodeOpts {
        extra_args: vec!["--models-dir".into(), empty.path().display().to_string()],
        ..NodeOpts::default()
    });
    let api = node.api();
    let r = api.submit_raw(APP, &json!({"texts": ["a"]}), &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    // Built-ins still work.
    assert_eq!(
        api.run_sync("runmesh/echo", &json!({"a": 1})).await.status,
        200
    );
    // The reason is in the log, in words an operator can act on (the log is written before listening).
    let log = node.stderr_tail();
    assert!(
        log.contains("runmesh/all-minilm-l6-v2") && log.contains("runmesh models fetch"),
        "{log}"
    );
}
