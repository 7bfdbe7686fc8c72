//! A data dir that held a member keeps being that member or does not start (issue 23, part 1):
//! without its `node.key`, with another key, or with its Raft log gone, a node refuses to start
//! with a message that says what to do, instead of starting over as a new node or founding a new
//! cluster that has forgotten every acknowledged job. Put back, the same data dir starts with all
//! of its jobs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runmesh_tests::{copy_dir, refused_start, runmesh_bin, Node, NodeOpts};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// A node with `n` completed echo jobs; returns it (killed) and their ids.
async fn node_with_jobs(n: usize) -> (Node, Vec<String>) {
    let mut node = Node::start(NodeOpts::default());
    let api = node.api();
    let mut ids = Vec::new();
    for i in 0..n {
        let sub = api.submit("runmesh/echo", &json!({ "i": i })).await;
        api.wait_completed("runmesh/echo", &sub.request_id, WAIT)
            .await;
        ids.push(sub.request_id);
    }
    // At once: an entry is in the acknowledged-entries record before it is acknowledged, so even
    // the last completion is one the damage tests must find.
    node.kill9();
    (node, ids)
}

async fn assert_jobs_kept(node: &Node, ids: &[String]) {
    let api = node.api();
    for id in ids {
        let r = api.result("runmesh/echo", id).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_data_dir_without_its_own_key_refuses_to_start() {
    let (mut node, ids) = node_with_jobs(3).await;
    let dir = node.data_dir();
    let key = dir.join("node.key");
    let saved = std::fs::read(&key).expect("node.key");
    assert!(dir.join("member.json").exists(), "no member marker written");

    std::fs::remove_file(&key).expect("rm node.key");
    let stderr = refused_start(&dir);
    assert!(stderr.contains("node.key is missing"), "{stderr}");
    assert!(stderr.contains("Restore node.key"), "{stderr}");
    assert!(!key.exists(), "a new key was made");

    std::fs::write(&key, [7u8; 32]).expect("write another key");
    let stderr = refused_start(&dir);
    assert!(stderr.contains("holds another key"), "{stderr}");

    std::fs::write(&key, &saved).expect("restore node.key");
    node.restart_same_dir();
    assert_jobs_kept(&node, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_log_does_not_found_a_new_cluster() {
    let (mut node, ids) = node_with_jobs(3).await;
    let dir = node.data_dir();
    let raft = dir.join("raft");
    let backup = dir.with_extension("raft-backup");
    std::fs::rename(&raft, &backup).expect("move the log away");

    // Gone entirely, then emptied (a fresh, empty database in its place).
    let stderr = refused_start(&dir);
    assert!(stderr.contains("will not found a new cluster"), "{stderr}");
    assert!(stderr.contains("--bootstrap"), "{stderr}");
    let stderr = refused_start(&dir);
    assert!(stderr.contains("Raft log"), "{stderr}");

    let _ = std::fs::remove_dir_all(&raft);
    std::fs::rename(&backup, &raft).expect("restore the log");
    node.restart_same_dir();
    assert_jobs_kept(&node, &ids).await;
}

/// One way a disk damages a file.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_log_is_detected_and_never_served() {
    let (node, ids) = node_with_jobs(40).await;
    let dir = node.data_dir();
    let db = dir.join("raft").join("db");
    let len = std::fs::metadata(&db).expect("raft/db").len();
    assert!(dir.join("raft").join("acknowledged.slots").exists());
    let damages: [(&str, Damage); 3] = [
        (
            "a flipped byte in the middle",
            Box::new(|b: &mut Vec<u8>| {
                let i = b.len() / 2;
                b[i] ^= 0xff;
            }),
        ),
        (
            "4 KiB cut from the end",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len().saturating_sub(4096))),
        ),
        ("an emptied file", Box::new(|b: &mut Vec<u8>| b.clear())),
    ];
    for (what, damage) in damages {
        let copy = dir.with_extension(format!("damaged-{}", what.len()));
        copy_dir(&dir, &copy);
        let mut bytes = std::fs::read(copy.join("raft").join("db")).expect("read db");
        assert_eq!(bytes.len() as u64, len);
        damage(&mut bytes);
        std::fs::write(copy.join("raft").join("db"), &bytes).expect("write db");
        // Either it refuses to start, or it starts with every acknowledged job.
        let mut child = Command::new(runmesh_bin())
            .args(["dev", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(&copy)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runmesh");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(base) = line.strip_prefix("runmesh listening on ") {
                    let _ = tx.send(base.trim().to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let outcome = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Err(s);
            }
            if let Ok(base) = rx.try_recv() {
                break Ok(base);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the node neither refused nor started within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        match outcome {
            Err(s) => {
                let out = child.wait_with_output().expect("output");
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(!s.success(), "{what}: exited 0: {stderr}");
                assert!(
                    stderr.contains("damaged") || stderr.contains("storage"),
                    "{what}: refused without saying why: {stderr}"
                );
            }
            Ok(base) => {
                // Started: then with every job it acknowledged.
                let api = runmesh_tests::Api::new(&base);
                for id in &ids {
                    let r = api.result("runmesh/echo", id).await;
                    assert_eq!(r.status, 200, "{what}: started without {id}: {}", r.text());
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&copy);
    }
}

/// A follower of a 3-node mesh whose log is damaged while it is down (its tail cut, or the file
/// emptied) never serves the short log as healthy: when it starts at all, it reports itself
/// unhealthy until it has every acknowledged entry back from the leader, then serves every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_follower_gets_its_log_back_from_the_leader() {
    use runmesh_tests::{Cluster, MEMBERSHIP_TIMEOUT};
    let damages: [(&str, Damage); 2] = [
        (
            "4 KiB cut from the end",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len().saturating_sub(4096))),
        ),
        ("an emptied file", Box::new(|b: &mut Vec<u8>| b.clear())),
    ];
    let mut cluster = Cluster::start(3, NodeOpts::default());
    cluster.wait_membership(3, 0, MEMBERSHIP_TIMEOUT).await;
    let leader = cluster.leader_index(WAIT).await;
    let api = cluster.api(leader);
    let mut ids = Vec::new();
    for i in 0..40 {
        let sub = api.submit("runmesh/echo", &json!({ "i": i })).await;
        ids.push(sub.request_id);
    }
    for id in &ids {
        api.wait_completed("runmesh/echo", id, WAIT).await;
    }
    for (what, damage) in damages {
        // Completed before the follower goes down: entries it acknowledged (awaited below).
        let before = ids.clone();
        let leader = cluster.leader_index(WAIT).await;
        // A follower that joined through a peer (node 0 founded the cluster and has no
        // --bootstrap to fetch the log from: it names the flag instead).
        let f = (1..3).find(|&i| i != leader).expect("a follower");
        // The leader commits with either follower, so this one's having the entries is awaited,
        // not assumed.
        for id in &before {
            cluster
                .api(f)
                .wait_completed("runmesh/echo", id, WAIT)
                .await;
        }
        cluster.nodes[f].kill9();
        let db = cluster.nodes[f].data_dir().join("raft").join("db");
        let mut bytes = std::fs::read(&db).expect("read db");
        damage(&mut bytes);
        std::fs::write(&db, &bytes).expect("write db");
        // More acknowledged jobs while it is down: the survivors still have a quorum.
        for i in 0..5 {
            let sub = cluster
                .api(leader)
                .submit("runmesh/echo", &json!({ "what": what, "i": i }))
                .await;
            cluster
                .api(leader)
                .wait_completed("runmesh/echo", &sub.request_id, WAIT)
                .await;
            ids.push(sub.request_id);
        }

        cluster.nodes[f].restart_same_dir();
        let follower = cluster.api(f);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut unhealthy_seen = 0u32;
        loop {
            let h = follower
                .try_send(reqwest::Method::GET, "/healthz", &[], None)
                .await;
            if h.as_ref().is_ok_and(|r| r.status == 200) {
                break;
            }
            unhealthy_seen += 1;
            assert!(
                Instant::now() < deadline,
                "{what}: the follower never became healthy again: {}",
                cluster.nodes[f].stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Healthy means whole: every job whose completion it had acknowledged before the damage.
        for (n, id) in before.iter().enumerate() {
            let r = follower.result("runmesh/echo", id).await;
            assert_eq!(
                r.status,
                200,
                "{what}: healthy without job {n} of {}: {}",
                before.len(),
                r.text()
            );
        }
        // The ones accepted while it was down follow within a heartbeat or two.
        for id in &ids[before.len()..] {
            follower.wait_completed("runmesh/echo", id, WAIT).await;
        }
        let log = cluster.nodes[f].stderr_all();
        assert!(
            log.contains("lost entries this node acknowledged")
                || log.contains("the Raft store cannot be read"),
            "{what}: the damage went unreported: {log}"
        );
        eprintln!("{what}: healthy after {unhealthy_seen} unhealthy polls");
        cluster.wait_membership(3, 0, MEMBERSHIP_TIMEOUT).await;
    }
}
