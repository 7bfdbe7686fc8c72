//! The conformance suites (tests/conformance/): the real Python `fal-client` 1.0.3 and the real JS
//! `@fal-ai/client` 1.10.1 drive a real node over TLS (`runmesh dev --tls --require-auth`) with
//! nothing changed but their host settings.
//!
//! Needs the runtimes `.ci/run` installs: a Python with fal-client and PyNaCl (`RUNMESH_PYTHON`)
//! and Node with `npm ci` done in tests/conformance/js. Without them each test says so and passes
//! locally; under CI (`CI` set) a missing runtime is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runmesh_tests::{output_within, runmesh_bin, Node, NodeOpts};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

fn skip_or_fail(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide {what} (see .ci/run)"
    );
    eprintln!("skipping: {what} is missing (see .ci/run)");
}

/// A TLS node that requires keys, with fast webhook retries.
fn tls_node() -> Node {
    let args = [
        "--tls",
        "--require-auth",
        "--webhook-backoff-ms",
        "200",
        "--webhook-attempts",
        "4",
    ];
    Node::start(NodeOpts {
        slots: Some(2),
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        ..NodeOpts::default()
    })
}

/// Longest a conformance script may run (a few seconds when the machine is idle; under the
/// harness's 300 s so that a hang is reported with the script's own output).
const CLIENT_SCRIPT_LIMIT: Duration = Duration::from_secs(180);

/// A DEFAULT-scope key, made with `runmesh keys create` and the admin key the node wrote.
fn create_key(node: &Node) -> String {
    let out = Command::new(runmesh_bin())
        .args(["keys", "create", "--name", "conformance", "--http"])
        .arg(&node.base)
        .arg("--data-dir")
        .arg(node.data_dir())
        .env_remove("RUNMESH_ADMIN_KEY")
        .env_remove("RUNMESH_HTTP")
        .env_remove("RUNMESH_DATA_DIR")
        .output()
        .expect("run runmesh keys create");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && stdout.contains(':'),
        "runmesh keys create failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn cert_of(node: &Node) -> PathBuf {
    let cert = node.data_dir().join("tls").join("cert.pem");
    assert!(cert.exists(), "--tls made no {}", cert.display());
    cert
}

fn assert_passed(what: &str, out: &std::process::Output, node: &Node, marker: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(marker),
        "{what} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- node\n{}",
        node.stderr_tail()
    );
    eprintln!("{stdout}");
}

#[test]
fn python_fal_client_conformance() {
    let Some(python) = std::env::var_os("RUNMESH_PYTHON") else {
        return skip_or_fail("RUNMESH_PYTHON (a Python with fal-client 1.0.3 and PyNaCl)");
    };
    let node = tls_node();
    let key = create_key(&node);
    let host = format!("localhost:{}", node.port());
    let out = output_within(
        Command::new(python)
            .arg(conformance_dir().join("python/conformance.py"))
            .current_dir(conformance_dir().join("python"))
            .env("FAL_RUN_HOST", &host)
            .env("FAL_QUEUE_RUN_HOST", format!("{host}/queue"))
            .env("FAL_KEY", &key)
            .env("SSL_CERT_FILE", cert_of(&node))
            .env_remove("SSL_CERT_DIR")
            .env_remove("FAL_KEY_ID")
            .env_remove("FAL_KEY_SECRET"),
        CLIENT_SCRIPT_LIMIT,
    )
    .expect("run python");
    assert_passed(
        "python conformance",
        &out,
        &node,
        "all fal-client conformance checks passed",
    );
}

#[test]
fn js_fal_client_conformance() {
    let js = conformance_dir().join("js");
    if !js.join("node_modules/@fal-ai/client/package.json").exists() {
        return skip_or_fail("tests/conformance/js/node_modules (npm ci)");
    }
    let node_bin = std::env::var_os("RUNMESH_NODEJS").unwrap_or_else(|| "node".into());
    let node = tls_node();
    let key = create_key(&node);
    let out = output_within(
        Command::new(&node_bin)
            .arg("conformance.mjs")
            .current_dir(&js)
            .env("RUNMESH_HOST", format!("127.0.0.1:{}", node.port()))
            .env("FAL_KEY", &key)
            .env("NODE_EXTRA_CA_CERTS", cert_of(&node))
            .env_remove("FAL_KEY_ID")
            .env_remove("FAL_KEY_SECRET"),
        CLIENT_SCRIPT_LIMIT,
    );
    let out = match out {
        Ok(o) => o,
        Err(e) => return skip_or_fail(&format!("node ({e})")),
    };
    assert_passed(
        "js conformance",
        &out,
        &node,
        "all @fal-ai/client conformance checks passed",
    );
}
