//! Gossip speaks only for its own admitted identity (issue 23, part 2): a peer that joins the
//! gossip mesh without being admitted publishes adverts for a real member (with an incarnation
//! that would outrank its real ones for ever, zero slots, no apps), for a member that does not
//! exist, and for itself; no node's cluster view changes.
#![cfg(feature = "p2p")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use runmesh_node::mesh::capacity::{LocalNode, Mesh, WarmSet};
use runmesh_node::mesh::gossip::{self, GossipConfig};
use runmesh_node::mesh::view::ViewConfig;
use runmesh_proto::advert::CapacityAdvert;
use runmesh_proto::{Clock, SystemClock};
use runmesh_tests::{free_port, Cluster, NodeOpts};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

const FORM_WAIT: Duration = Duration::from_secs(60);

fn member<'a>(view: &'a Value, id: &str) -> Option<&'a Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_str() == Some(id))
}

/// Both nodes see both up, with the apps they serve.
async fn settled_views(cluster: &Cluster) -> Vec<Value> {
    let deadline = Instant::now() + FORM_WAIT;
    loop {
        let mut views = Vec::new();
        for i in 0..2 {
            if let Some(v) = cluster.view(i).await {
                views.push(v);
            }
        }
        let ok = views.len() == 2
            && views.iter().all(|v| {
                v["members"].as_array().is_some_and(|ms| {
                    ms.len() == 2
                        && ms.iter().all(|m| {
                            m["state"] == "up"
                                && m["apps"].as_array().is_some_and(|a| !a.is_empty())
                        })
                })
            });
        if ok {
            return views;
        }
        assert!(
            Instant::now() < deadline,
            "cluster did not settle: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_advert_changes_nothing_in_any_view() {
    let cluster = Cluster::start(2, NodeOpts::default());
    let before = settled_views(&cluster).await;
    let a_id = before[0]["node_id"].as_str().unwrap().to_string();
    let b_id = before[1]["node_id"].as_str().unwrap().to_string();
    let b_real = member(&before[0], &b_id).unwrap().clone();
    let b_raft_id: u64 = b_id.parse().expect("node ids are decimal");

    // The forger: a libp2p peer with its own key, in the gossip mesh, never admitted.
    let key = Keypair::generate_ed25519();
    let forger_peer = key.public().to_peer_id().to_string();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let local = LocalNode {
        peer_id: forger_peer.clone(),
        raft_node_id: 1,
        region: None,
        slots: 0,
        apps: Vec::new(),
        api_addr: None,
        raft_addr: None,
        blob_addr: None,
        gpus_declared: true,
        incarnation: clock.now_ms(),
    };
    let heard = Mesh::new(
        local,
        ViewConfig::default(),
        clock.clone(),
        Arc::new(Vec::new),
        WarmSet::default(),
    );
    let (publish, adverts) = mpsc::channel(gossip::PUBLISH_QUEUE);
    let (_stop_tx, stop) = watch::channel(false);
    let cfg = GossipConfig {
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        bootstrap: vec![format!("127.0.0.1:{}", cluster.p2p_ports[0])],
        quic: false,
    };
    let task = gossip::start(
        cfg,
        key,
        heard.clone(),
        Arc::new(|_, _| true),
        adverts,
        stop,
    )
    .await
    .unwrap();
    // In the mesh once it hears both nodes' adverts (its own check lets everything through).
    let deadline = Instant::now() + FORM_WAIT;
    let a_raft_id: u64 = a_id.parse().expect("node ids are decimal");
    let hears = |id: u64| heard.members().iter().any(|m| m.advert.raft_node_id == id);
    while !(hears(a_raft_id) && hears(b_raft_id)) {
        assert!(
            Instant::now() < deadline,
            "the forger never heard the cluster"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut template: CapacityAdvert = heard
        .members()
        .into_iter()
        .find(|m| m.advert.raft_node_id == b_raft_id)
        .unwrap()
        .advert;
    template.peer_id = forger_peer.clone();
    let forged = |id: u64, incarnation: u64, seq: u64| CapacityAdvert {
        raft_node_id: id,
        slots: 0,
        apps: Vec::new(),
        incarnation,
        seq,
        ..template.clone()
    };
    // A few gossip heartbeats' worth: B with no slots (one incarnation just above its real one,
    // one that would outrank it for ever), a member nobody admitted, and the forger under an
    // arbitrary id.
    for seq in 0..30 {
        let now = clock.now_ms();
        for (id, incarnation) in [
            (b_raft_id, template.incarnation + 1),
            (b_raft_id, u64::MAX),
            (4_242, now),
            (7, now),
        ] {
            let _ = publish.send(forged(id, incarnation, seq)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for i in 0..2 {
        let v = cluster.view(i).await.expect("view");
        let ids: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert_eq!(ids.len(), 2, "node {i} lists a forged member: {v:#}");
        assert!(ids.contains(&a_id.as_str()) && ids.contains(&b_id.as_str()));
        if i == 0 {
            let b = member(&v, &b_id).unwrap();
            assert_eq!(
                b["peer_id"], b_real["peer_id"],
                "B's advert replaced: {b:#}"
            );
            assert_eq!(b["slots"], b_real["slots"], "{b:#}");
            assert_eq!(b["apps"], b_real["apps"], "{b:#}");
            assert_eq!(b["state"], "up", "{b:#}");
        }
    }
    task.abort();
}
