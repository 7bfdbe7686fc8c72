//! Dispatch across a real three-node cluster: capacity gossip reaches every node, the leader places
//! jobs by the scheduler's rules (the node serves the app, has a free slot, is in the job's region,
//! runner-hint stickiness, streams stay on their node), `x-runmesh-worker` names where a job ran
//! on every node, a job whose worker is killed completes on another node, and the killed node goes
//! suspect, then down.
//!
//! Nodes (all on 127.0.0.1, `--lease-ms 1500` so a dead worker's job is requeued quickly):
//! - A: region eu, two declared H100s, 2 slots, every built-in app; starts the cluster.
//! - B: region us, no GPU, 4 slots, serves only runmesh/echo and runmesh/sleep.
//! - C: no region, one declared A10, 1 slot, every built-in app.

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use reqwest::Method;
use runmesh_tests::{free_port, Api, Node, NodeOpts, Resp};
use serde_json::{json, Value};

const SECRET: &str = "dispatch-placement-secret";
const WAIT: Duration = Duration::from_secs(30);
/// How long a cluster may take to form (joins, promotions, first adverts).
const FORM_WAIT: Duration = Duration::from_secs(60);

fn can_bind(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// A p2p port whose Raft neighbour (port + 1) is free too.
fn mesh_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < 65_000 && can_bind(p) && can_bind(p + 1) {
            return p;
        }
    }
    panic!("no free pair of ports");
}

fn start_member(p2p: u16, bootstrap: Option<u16>, slots: u32, extra: &[&str]) -> Node {
    let mut args: Vec<String> = vec![
        "--p2p".into(),
        format!("127.0.0.1:{p2p}"),
        "--cluster-secret".into(),
        SECRET.into(),
    ];
    if let Some(b) = bootstrap {
        args.push("--bootstrap".into());
        args.push(format!("127.0.0.1:{b}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Node::start(NodeOpts {
        slots: Some(slots),
        lease_ms: Some(1_500),
        extra_args: args,
        ..NodeOpts::default()
    })
}

/// `GET /admin/cluster` as the ADMIN key `admin`.
async fn admin_cluster(api: &Api, admin: &str) -> Resp {
    let auth = format!("Key {admin}");
    api.send(
        Method::GET,
        "/admin/cluster",
        &[("Authorization", auth.as_str())],
        None,
    )
    .await
}

async fn cluster(api: &Api, admin: &str) -> Value {
    let r = admin_cluster(api, admin).await;
    assert_eq!(r.status, 200, "/admin/cluster: {}", r.text());
    r.json()
}

/// Polls a node's cluster view until `pred` holds (bounded).
async fn wait_view(
    api: &Api,
    admin: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    for _ in 0..10_000 {
        let r = admin_cluster(api, admin).await;
        if r.status == 200 {
            last = r.json();
            if pred(&last) {
                return last;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: not reached within {timeout:?}; last view: {last:#}");
}

fn member<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id))
        .unwrap_or_else(|| panic!("member {id} not in view {view:#}"))
}

fn all_up_voters(view: &Value, n: usize) -> bool {
    let Some(ms) = view["members"].as_array() else {
        return false;
    };
    ms.len() == n
        && view["leader"].is_string()
        && ms
            .iter()
            .all(|m| m["state"] == "up" && m["role"] == "voter" && m["slots"].is_u64())
}

/// Submits on `on`, waits for completion there, and returns the worker named by the status
/// header (checked against the result header and another node's status header).
async fn run_on(
    on: &Api,
    other: &Api,
    app: &str,
    input: Value,
    headers: &[(&str, &str)],
) -> String {
    let s = on.submit_with(app, &input, headers).await;
    on.wait_completed(app, &s.request_id, WAIT).await;
    worker_of(on, other, app, &s.request_id).await
}

async fn worker_of(on: &Api, other: &Api, app: &str, id: &str) -> String {
    let status = on.status(app, id, false).await;
    let w = status
        .header("x-runmesh-worker")
        .unwrap_or_else(|| {
            panic!(
                "no x-runmesh-worker on the status of {id}: {:?}",
                status.text()
            )
        })
        .to_string();
    let result = on.result(app, id).await;
    assert_eq!(
        result.header("x-runmesh-worker"),
        Some(w.as_str()),
        "result header"
    );
    let elsewhere = other.status(app, id, false).await;
    assert_eq!(
        elsewhere.header("x-runmesh-worker"),
        Some(w.as_str()),
        "another node names the same worker"
    );
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_land_where_the_scheduler_says_and_survive_a_dead_worker() {
    let (pa, pb, pc) = (mesh_port(), mesh_port(), mesh_port());
    let a = start_member(
        pa,
        None,
        2,
        &["--region", "eu", "--gpus", "H100:80,H100:80"],
    );
    let mut b = start_member(
        pb,
        Some(pa),
        4,
        &["--region", "us", "--models", "runmesh/echo,runmesh/sleep"],
    );
    let c = start_member(pc, Some(pa), 1, &["--gpus", "A10:24"]);
    let (api_a, api_b, api_c) = (a.api(), b.api(), c.api());
    let admin = a.admin_key();

    // Every node reaches the same view: three voters, all up, each with its advert.
    let mut views = Vec::new();
    for (api, name) in [(&api_a, "A"), (&api_b, "B"), (&api_c, "C")] {
        views.push(
            wait_view(
                api,
                &admin,
                FORM_WAIT,
                &format!("{name} sees 3 voters up"),
                |v| all_up_voters(v, 3),
            )
            .await,
        );
    }
    let id_a = views[0]["node_id"].as_str().unwrap().to_string();
    let id_b = views[1]["node_id"].as_str().unwrap().to_string();
    let id_c = views[2]["node_id"].as_str().unwrap().to_string();
    assert_eq!(views[1]["leader"], views[0]["leader"]);
    let seen_from_c = member(&views[2], &id_a);
    assert_eq!(seen_from_c["region"], "eu");
    assert_eq!(seen_from_c["gpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(seen_from_c["gpus"][0]["name"], "H100");
    assert_eq!(seen_from_c["addresses"]["api"], a.addr().to_string());
    let b_apps: Vec<&str> = member(&views[0], &id_b)["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["app"].as_str())
        .collect();
    assert_eq!(b_apps, ["runmesh/echo", "runmesh/sleep"]);
    assert_eq!(member(&views[0], &id_c)["slots"], 1);

    // Region: a job runs in the region of the node that accepted it.
    let echo = "runmesh/echo";
    assert_eq!(
        run_on(&api_a, &api_c, echo, json!({"r": "eu"}), &[]).await,
        id_a
    );
    assert_eq!(
        run_on(&api_b, &api_c, echo, json!({"r": "us"}), &[]).await,
        id_b
    );

    // Served apps are a hard requirement: B (us) does not serve runmesh/stream.
    let stream_input = json!({"n": 2, "interval_ms": 5});
    let w = run_on(&api_b, &api_a, "runmesh/stream", stream_input.clone(), &[]).await;
    assert_ne!(
        w, id_b,
        "runmesh/stream ran on a node that does not serve it"
    );

    // A runner hint sticks to one node, whichever node accepts the job.
    let hint = [("x-fal-runner-hint", "lora:cats")];
    let mut sticky = Vec::new();
    for (i, api) in [&api_a, &api_b, &api_c, &api_a, &api_b, &api_c]
        .iter()
        .enumerate()
    {
        sticky.push(run_on(api, &api_a, echo, json!({"i": i}), &hint).await);
    }
    assert!(
        sticky.iter().all(|w| *w == sticky[0]),
        "hinted jobs spread: {sticky:?}"
    );

    // A `/stream` request runs on the node that accepted it (its partials travel in-process), so
    // every partial reaches the client whichever node it called.
    for api in [&api_c, &api_a, &api_c] {
        let sse = api
            .sse(
                Method::POST,
                "/runmesh/stream/stream",
                Some(&json!({"n": 3, "interval_ms": 5})),
                WAIT,
            )
            .await;
        assert_eq!(sse.status, 200, "{:?}", String::from_utf8_lossy(&sse.raw));
        let events: Vec<Value> = sse.events.iter().map(|e| e.json()).collect();
        assert_eq!(
            events,
            [
                json!({"i": 0}),
                json!({"i": 1}),
                json!({"i": 2}),
                json!({"n": 3})
            ]
        );
    }

    // A full node takes nothing more: A's two slots hold two sleeps (eu jobs prefer A).
    let sleep = "runmesh/sleep";
    let long = json!({"ms": 4_000});
    let s1 = api_a.submit(sleep, &long).await;
    api_a.wait_started(sleep, &s1.request_id, WAIT).await;
    let s2 = api_a.submit(sleep, &long).await;
    api_a.wait_started(sleep, &s2.request_id, WAIT).await;
    for s in [&s1, &s2] {
        let st = api_a.status(sleep, &s.request_id, false).await;
        assert_eq!(
            st.header("x-runmesh-worker"),
            Some(id_a.as_str()),
            "eu sleep on A"
        );
    }
    // ... so an eu echo goes elsewhere, and a stream job (not served by B) goes to C.
    let w = run_on(&api_a, &api_b, echo, json!({"full": true}), &[]).await;
    assert_ne!(w, id_a, "a job was placed on a full node");
    let w = run_on(&api_a, &api_b, "runmesh/stream", stream_input, &[]).await;
    assert_eq!(w, id_c, "stream: A is full and B does not serve it");
    for s in [&s1, &s2] {
        api_a.wait_completed(sleep, &s.request_id, WAIT).await;
    }

    // Kill the worker in the middle of a job: its lease lapses and the job completes elsewhere.
    // (Accepted on B, region us, so it runs on B.)
    let job = api_b.submit(sleep, &json!({"ms": 3_000})).await;
    let st = api_b.wait_started(sleep, &job.request_id, WAIT).await;
    assert_eq!(st["status"], "IN_PROGRESS", "{st}");
    let running_on = api_b.status(sleep, &job.request_id, false).await;
    assert_eq!(running_on.header("x-runmesh-worker"), Some(id_b.as_str()));
    b.kill9();
    // Silent for a few adverts: suspect first (down comes later).
    wait_view(&api_a, &admin, WAIT, "B suspect", |v| {
        member(v, &id_b)["state"] == "suspect"
    })
    .await;
    let done = api_a
        .wait_completed(sleep, &job.request_id, Duration::from_secs(60))
        .await;
    assert!(done.get("error").is_none(), "{done}");
    let result = api_a.result(sleep, &job.request_id).await;
    assert_eq!(result.json(), json!({"slept_ms": 3_000}));
    let w = result
        .header("x-runmesh-worker")
        .unwrap_or_default()
        .to_string();
    assert!(
        w == id_a || w == id_c,
        "finished on {w:?}, not on a live node"
    );

    // The dead node goes suspect, then down, in the others' views.
    for api in [&api_a, &api_c] {
        wait_view(api, &admin, WAIT, "B down", |v| {
            member(v, &id_b)["state"] == "down"
        })
        .await;
        let v = cluster(api, &admin).await;
        assert_eq!(member(&v, &id_a)["state"], "up");
        assert_eq!(member(&v, &id_c)["state"], "up");
    }
}
