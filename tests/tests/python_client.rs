//! The real Python `fal-client` against a real node: `tests/python/fal_client_check.py`.
//!
//! Needs a Python with fal-client 1.0.3 installed, named by `RUNMESH_PYTHON` (`.ci/run` makes one).
//! Without it the test says so and passes locally; under CI (`CI` set) a missing client is a failure.

use std::path::Path;
use std::process::Command;

use runmesh_tests::{Node, NodeOpts};

#[test]
fn python_fal_client_drives_a_node() {
    let Some(python) = std::env::var_os("RUNMESH_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set RUNMESH_PYTHON to a Python with fal-client installed"
        );
        eprintln!("skipping: RUNMESH_PYTHON is not set (see .ci/run)");
        return;
    };
    let node = Node::start(NodeOpts::default().slots(2));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/fal_client_check.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(format!("http://{}", node.addr()))
        .env_remove("FAL_KEY")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fal-client check failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- node\n{}",
        node.stderr_tail()
    );
    assert!(stdout.contains("all fal-client checks passed"), "{stdout}");
}
