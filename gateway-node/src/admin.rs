//! Node endpoints outside the fal API: health, the app list, the cluster view (`/admin/cluster`),
//! and the `x-runmesh-worker` header naming where a job ran.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use runmesh_proto::advert::{Liveness, MemberStatus};
use runmesh_proto::mesh::MemberInfo;
use runmesh_proto::{AppId, JobState, NodeId, RequestId};
use runmesh_raft::roster::RosterTable;
use runmesh_raft::{JobLog, JobRecord};
use serde_json::{json, Value};

use crate::errors::json_response;
use crate::AppState;

/// `GET /healthz`: 200 when the job log can take writes (a leader is known), else 503.
pub(crate) fn healthz(state: &AppState) -> Response {
    let healthy = state.joblog.is_healthy();
    let queued = state.joblog.read(|t| t.queued_total());
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "node_id": state.joblog.node_id(),
        "region": state.config.region,
        "queued": queued,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

/// `GET /admin/apps`: the apps this node serves, with their queue lengths.
pub(crate) fn list_apps(state: &AppState) -> Response {
    let mut apps = state.catalog.apps();
    apps.sort();
    let apps: Vec<_> = state.joblog.read(|t| {
        apps.iter()
            .map(|app| json!({ "app": app.path(), "queued": t.queue_len(app) }))
            .collect()
    });
    json_response(StatusCode::OK, &json!({ "apps": apps }))
}

// ---------------------------------------------------------------------------------------------
// Cluster view (`GET /admin/cluster`) and the `x-runmesh-worker` header (MESH-GOSSIP)
// ---------------------------------------------------------------------------------------------

/// Names the node that ran (or runs) a job, on status and result responses.
pub const WORKER_HEADER: &str = "x-runmesh-worker";

/// What this node knows about the cluster's members beyond Raft: their capacity adverts and how
/// alive they look (implemented by the node's mesh layer).
pub trait ClusterInfo: Send + Sync + 'static {
    /// This node's id (its Raft id).
    fn self_id(&self) -> NodeId;
    /// Every member the node has heard of, itself included.
    fn members(&self) -> Vec<MemberStatus>;
}

/// A [`ClusterInfo`] in the gateway config.
#[derive(Clone)]
pub struct ClusterHandle(pub Arc<dyn ClusterInfo>);

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterHandle")
    }
}

/// How the cluster view names a node: its Raft id as decimal text (text, because a u64 does not fit
/// a JavaScript number).
pub fn node_name(id: NodeId) -> String {
    id.to_string()
}

/// Raft's side of the cluster: leader, term, voters, learners and their recorded addresses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RaftMembership {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// `BasicNode.addr` of each member (a [`MemberInfo`] record in a mesh, empty on a lone node).
    pub addrs: BTreeMap<NodeId, String>,
}

impl RaftMembership {
    pub fn read(joblog: &JobLog) -> Self {
        let metrics = joblog.raft().metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        Self {
            leader: m.current_leader,
            term: m.current_term,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            addrs: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }
}

/// The `/admin/cluster` body: this node, the leader, and every member (Raft members and nodes heard
/// through gossip) with role, liveness, region, GPUs, load, addresses and whether the operator
/// drains it, and the identities the operator removed. Pure, for tests.
pub fn cluster_json(
    self_id: NodeId,
    raft: &RaftMembership,
    members: &[MemberStatus],
    roster: &RosterTable,
) -> Value {
    let mut ids: BTreeSet<NodeId> = raft.voters.union(&raft.learners).copied().collect();
    ids.extend(members.iter().map(|m| m.advert.raft_node_id));
    ids.insert(self_id);
    let by_id: BTreeMap<NodeId, &MemberStatus> =
        members.iter().map(|m| (m.advert.raft_node_id, m)).collect();
    let rows: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let role = if raft.voters.contains(&id) {
                "voter"
            } else if raft.learners.contains(&id) {
                "learner"
            } else {
                // Heard through gossip but not (or not yet) admitted to the Raft cluster.
                "none"
            };
            let info = raft
                .addrs
                .get(&id)
                .and_then(|a| MemberInfo::from_addr_string(a));
            let mut row = match by_id.get(&id) {
                Some(m) => member_json(id, self_id, raft.leader, role, m, info.as_ref()),
                None => json!({
                    "id": node_name(id),
                    "self": id == self_id,
                    "leader": raft.leader == Some(id),
                    "role": role,
                    // A Raft member never heard through gossip (yet).
                    "state": Liveness::Down.as_str(),
                    "last_seen_ms_ago": Value::Null,
                    "region": info.as_ref().and_then(|i| i.region.clone()),
                    "gpus": [],
                    "slots": Value::Null,
                    "running": Value::Null,
                    "queued": Value::Null,
                    "load": Value::Null,
                    "apps": [],
                    "addresses": {
                        "api": info.as_ref().map(|i| i.http.clone()).filter(|s| !s.is_empty()),
                        "raft": info.as_ref().map(|i| i.raft.clone()),
                        "p2p": info.as_ref().and_then(|i| i.p2p.clone()).into_iter().collect::<Vec<_>>(),
                        "blob": Value::Null,
                    },
                }),
            };
            row["draining"] = json!(roster.is_draining(id));
            row
        })
        .collect();
    let removed: Vec<Value> = roster
        .removed()
        .iter()
        .map(|(id, at_ms)| {
            json!({
                "id": node_name(*id),
                "removed_at": runmesh_proto::time::format_timestamp_ms(*at_ms),
            })
        })
        .collect();
    json!({
        "node_id": node_name(self_id),
        "leader": raft.leader.map(node_name),
        "term": raft.term,
        "members": rows,
        "removed": removed,
    })
}

fn member_json(
    id: NodeId,
    self_id: NodeId,
    leader: Option<NodeId>,
    role: &str,
    m: &MemberStatus,
    info: Option<&MemberInfo>,
) -> Value {
    let a = &m.advert;
    let load = if a.slots == 0 {
        Value::Null
    } else {
        json!(f64::from(a.running) / f64::from(a.slots))
    };
    let gpus: Vec<Value> = a
        .gpus
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "memory_total_mb": g.memory_total_mb,
                "memory_free_mb": g.memory_free_mb,
                "utilization_pct": g.utilization_pct,
            })
        })
        .collect();
    let apps: Vec<Value> = a
        .apps
        .iter()
        .map(|s| json!({ "app": s.app.path(), "warm": s.warm, "gpu_memory_mb": s.gpu_memory_mb }))
        .collect();
    json!({
        "id": node_name(id),
        "peer_id": a.peer_id,
        "self": id == self_id,
        "leader": leader == Some(id),
        "role": role,
        "state": m.liveness.as_str(),
        "last_seen_ms_ago": m.silent_ms,
        "region": a.region,
        "gpus": gpus,
        "memory_total_mb": a.memory_total_mb,
        "memory_free_mb": a.memory_free_mb,
        "slots": a.slots,
        "running": a.running,
        "queued": a.queued,
        "load": load,
        "apps": apps,
        "addresses": {
            "api": a.api_addr.clone().or_else(|| info.map(|i| i.http.clone()).filter(|s| !s.is_empty())),
            "raft": a.raft_addr.clone().or_else(|| info.map(|i| i.raft.clone())),
            "p2p": a.p2p_addrs,
            "blob": a.blob_addr,
        },
    })
}

/// `GET /admin/cluster`.
pub(crate) async fn cluster(State(state): State<AppState>) -> Response {
    let raft = RaftMembership::read(&state.joblog);
    let (self_id, members) = match &state.config.cluster {
        Some(c) => (c.0.self_id(), c.0.members()),
        None => (state.joblog.node_id(), Vec::new()),
    };
    let body = cluster_json(self_id, &raft, &members, &state.joblog.roster());
    json_response(StatusCode::OK, &body)
}

/// The worker a job ran (or runs) on: the current one while running, else the last one assigned.
pub fn job_worker(rec: &JobRecord) -> Option<NodeId> {
    match rec.state {
        JobState::Running { worker, .. } => Some(worker),
        _ => rec.last_worker,
    }
}

/// Adds `x-runmesh-worker` to a status or result response of the job `raw_id` (when the job exists,
/// belongs to `app`, and has been handed to a worker).
pub(crate) fn with_worker_header(
    state: &AppState,
    app: &AppId,
    raw_id: &str,
    mut resp: Response,
) -> Response {
    let Ok(id) = raw_id.parse::<RequestId>() else {
        return resp;
    };
    let worker = state.joblog.read(|t| {
        t.get(&id)
            .filter(|r| r.spec.app() == app)
            .and_then(job_worker)
    });
    if let Some(w) = worker {
        if let Ok(v) = HeaderValue::from_str(&node_name(w)) {
            resp.headers_mut().insert(WORKER_HEADER, v);
        }
    }
    resp
}

#[cfg(test)]
mod cluster_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use runmesh_proto::advert::{CapacityAdvert, GpuAdvert};

    fn status(id: NodeId, liveness: Liveness) -> MemberStatus {
        MemberStatus {
            advert: CapacityAdvert {
                peer_id: format!("peer{id}"),
                raft_node_id: id,
                region: Some("eu".into()),
                gpus: vec![GpuAdvert {
                    name: "H100".into(),
                    memory_total_mb: 81_920,
                    memory_free_mb: 81_920,
                    utilization_pct: 0,
                }],
                memory_total_mb: 1,
                memory_free_mb: 1,
                slots: 4,
                running: 1,
                queued: 2,
                apps: Vec::new(),
                api_addr: Some(format!("127.0.0.1:80{id}")),
                raft_addr: None,
                blob_addr: None,
                p2p_addrs: vec![],
                timestamp_ms: 0,
                incarnation: 0,
                seq: 0,
            },
            liveness,
            silent_ms: 5,
        }
    }

    #[test]
    fn the_cluster_view_merges_raft_roles_and_gossip() {
        let raft = RaftMembership {
            leader: Some(1),
            term: 3,
            voters: [1, 2].into(),
            learners: [3].into(),
            addrs: [(
                2,
                MemberInfo {
                    pubkey: runmesh_proto::mesh::to_hex(&[1; 32]),
                    raft: "127.0.0.1:7101".into(),
                    http: "127.0.0.1:8102".into(),
                    p2p: None,
                    region: Some("us".into()),
                }
                .to_addr_string(),
            )]
            .into(),
        };
        let members = [
            status(1, Liveness::Up),
            status(3, Liveness::Suspect),
            status(4, Liveness::Up),
        ];
        let v = cluster_json(1, &raft, &members, &RosterTable::default());
        assert_eq!(v["node_id"], "1");
        assert_eq!(v["leader"], "1");
        let rows = v["members"].as_array().unwrap();
        let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(
            (row("1")["role"].as_str(), row("1")["state"].as_str()),
            (Some("voter"), Some("up"))
        );
        assert_eq!(row("1")["self"], true);
        assert_eq!(row("1")["leader"], true);
        assert_eq!(row("1")["load"], 0.25);
        assert_eq!(row("1")["gpus"][0]["name"], "H100");
        assert_eq!(row("1")["addresses"]["api"], "127.0.0.1:801");
        // A voter not heard through gossip: down, with what Raft records about it.
        assert_eq!(row("2")["state"], "down");
        assert_eq!(row("2")["region"], "us");
        assert_eq!(row("2")["addresses"]["api"], "127.0.0.1:8102");
        assert_eq!(
            (row("3")["role"].as_str(), row("3")["state"].as_str()),
            (Some("learner"), Some("suspect"))
        );
        assert_eq!(row("4")["role"], "none");
    }
}
