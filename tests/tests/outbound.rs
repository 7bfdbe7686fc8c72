//! The outbound policy on a real node (issue 23, part 3): a webhook may not point inside the
//! operator's network unless `--fetch-allow` lists it; refused at submit with a 422 that says
//! nothing about the target, and never sent by a node whose policy refuses it, even when it was
//! accepted before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runmesh_tests::{free_port, parse_submitted, Node, NodeOpts};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn node_with(args: &[&str]) -> Node {
    Node::start(NodeOpts {
        slots: Some(2),
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        ..NodeOpts::default()
    })
}

/// Counts connections to 127.0.0.1:`port` (answers none of them).
async fn connection_counter(port: u16) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind counter");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    hits
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_to_internal_addresses_are_refused_at_submit() {
    let node = node_with(&["--fetch-allow", "none"]);
    let api = node.api();
    let port = free_port();
    let hits = connection_counter(port).await;
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
        format!("http://user@127.0.0.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/hook".to_string(),
        "http://[fd00:ec2::254]/hook".to_string(),
    ] {
        let encoded: String = url
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = api
            .post_json(
                &format!("/queue/runmesh/echo?fal_webhook={encoded}"),
                &json!({}),
                &[],
            )
            .await;
        assert_eq!(r.status, 422, "{url}: {}", r.text());
        let d = &r.json()["detail"][0];
        assert_eq!(d["loc"], json!(["query", "fal_webhook"]), "{url}: {d}");
        assert_eq!(d["type"], "url_not_allowed", "{url}: {d}");
        let msg = d["msg"].as_str().unwrap_or("");
        assert!(
            !msg.contains(&port.to_string()) && !msg.contains("169.254"),
            "{url}: the target is echoed: {msg}"
        );
    }
    // Not a scheme the node speaks: the old 422.
    let r = api
        .post_json(
            "/queue/runmesh/echo?fal_webhook=gopher://x/",
            &json!({}),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused webhook was sent");

    // `dev` without the flag allows loopback: a developer's own receiver.
    let dev = node_with(&[]);
    let r = dev
        .api()
        .post_json(
            &format!("/queue/runmesh/echo?fal_webhook=http://127.0.0.1:{port}/hook"),
            &json!({}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_webhook_is_never_sent_once_the_policy_refuses_it() {
    // Accepted while loopback was allowed; the first attempt fails (nothing listens yet).
    let mut node = node_with(&["--webhook-attempts", "50", "--webhook-backoff-ms", "1000"]);
    let api = node.api();
    let admin = node.admin_key();
    let port = free_port();
    let r = api
        .post_json(
            &format!("/queue/runmesh/echo?fal_webhook=http://127.0.0.1:{port}/hook"),
            &json!({"n": 1}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = parse_submitted(&r.json()).expect("shape").request_id;
    api.wait_completed("runmesh/echo", &id, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The operator narrows the policy; the receiver comes up. The delivery gives up unsent.
    node.kill9();
    let hits = connection_counter(port).await;
    node.set_extra_args(&[
        "--webhook-attempts",
        "50",
        "--webhook-backoff-ms",
        "1000",
        "--fetch-allow",
        "none",
    ]);
    node.restart_same_dir();
    let api = node.api();
    let listed = api.wait_failed_webhooks(&admin).await;
    let entry = &listed["failed"][0];
    assert_eq!(entry["request_id"], id.as_str(), "{listed}");
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("outbound policy")),
        "{listed}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused webhook was sent");
}
