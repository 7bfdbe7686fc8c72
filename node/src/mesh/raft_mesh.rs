//! A node's job log in the mesh: bind the Raft QUIC listener, open the log on it, join through a
//! bootstrap member (or found a cluster), and run the leader's voter controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runmesh_proto::mesh::MemberInfo;
use runmesh_proto::{Clock, NodeId};
use runmesh_raft::{JobLog, JobLogConfig, JobLogError};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::RaftTiming;
use crate::identity::NodeIdentity;
use crate::mesh::join::{join_cluster, Admission, ClusterSecret, JoinError};
use crate::mesh::membership::{decide, removal, MemberHealth, MembershipPolicy, Removal};
use crate::mesh::raft_quic::{QuicError, QuicRaft, QuicTransport};

/// How often the leader reconsiders the voter set.
const CONTROLLER_EVERY: Duration = Duration::from_secs(1);
/// A learner this many entries behind the leader is not promoted yet.
const CATCH_UP_SLACK: u64 = 1_000;
/// A membership change that takes longer than this is abandoned (and retried next round).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct RaftMeshConfig {
    /// The sled directory of the job log.
    pub raft_dir: PathBuf,
    /// Where the Raft QUIC listener binds.
    pub raft_listen: SocketAddr,
    /// This node's record as others should see it (addresses peers can dial; `pubkey` is filled in).
    pub member: MemberInfo,
    /// A member's Raft `host:port` to join through; `None` founds a cluster (first start only).
    pub bootstrap: Option<String>,
    pub secret: Option<String>,
    pub policy: MembershipPolicy,
    /// Give up joining after this long (the bootstrap node may start after this one).
    pub join_timeout: Duration,
    /// Heartbeat and election timeouts. openraft times AppendEntries out at the heartbeat period
    /// (a timeout only means a retry), and a follower calls an election after
    /// `election_timeout_max` (the leader's lease) plus its random election timeout of silence,
    /// checked every 1.5 heartbeats: that sum is what failover costs.
    pub timing: RaftTiming,
    /// The data dir held a member: an empty log is lost state, not a cluster to found.
    pub held_member: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RaftMeshError {
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("opening the job log: {0}")]
    JobLog(#[from] JobLogError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("joining needs a cluster secret")]
    NoSecret,
    #[error("{0}")]
    Bootstrap(String),
    #[error("raft runtime: {0}")]
    Runtime(String),
}

/// The running mesh side of the job log.
pub struct RaftMesh {
    pub quic: Arc<QuicRaft>,
    controller: JoinHandle<()>,
    /// Raft's own threads (see [`RaftMesh::start`]); shut down in the background on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Worker threads of the Raft runtime.
const RAFT_THREADS: usize = 2;

impl RaftMesh {
    /// Opens the job log on a QUIC Raft transport and joins or founds the cluster. Returns once
    /// this node is a member (joining) or the log is open (founding/restarting); the caller waits
    /// for a leader with [`JobLog::wait_healthy`].
    ///
    /// Raft (openraft's tasks, the QUIC endpoint, RPC handling, the voter controller) runs on a
    /// runtime of its own: heartbeats time out at the heartbeat period, so they must not queue
    /// behind app work, model inference or gossip crypto on the node's main threads. The handles
    /// (`JobLog`) work from any runtime.
    pub async fn start(
        identity: &NodeIdentity,
        cfg: RaftMeshConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(JobLog, RaftMesh), RaftMeshError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RAFT_THREADS)
            .thread_name("raft")
            .enable_all()
            .build()
            .map_err(|e| RaftMeshError::Runtime(e.to_string()))?;
        let identity = identity.clone();
        let started = runtime
            .spawn(async move { Self::start_here(&identity, cfg, clock).await })
            .await;
        match started {
            Ok(Ok((joblog, quic, controller))) => Ok((
                joblog,
                RaftMesh {
                    quic,
                    controller,
                    runtime: Some(runtime),
                },
            )),
            Ok(Err(e)) => {
                runtime.shutdown_background();
                Err(e)
            }
            Err(e) => {
                runtime.shutdown_background();
                Err(RaftMeshError::Runtime(e.to_string()))
            }
        }
    }

    /// [`RaftMesh::start`]'s work, on the Raft runtime.
    async fn start_here(
        identity: &NodeIdentity,
        mut cfg: RaftMeshConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(JobLog, Arc<QuicRaft>, JoinHandle<()>), RaftMeshError> {
        let me = identity.raft_node_id();
        cfg.member.pubkey = identity.public_key_hex();
        let record = cfg.member.to_addr_string();
        let quic = QuicRaft::bind(identity, cfg.raft_listen)?;
        let mut jl = JobLogConfig::single_node(cfg.raft_dir.clone());
        jl.node_id = me;
        jl.raft_addr = record.clone();
        jl.bootstrap_single = cfg.bootstrap.is_none();
        jl.held_member = cfg.held_member;
        // A member that joins through a peer can fetch a log it cannot read back from the others.
        jl.refetch_unreadable = cfg.held_member && cfg.bootstrap.is_some();
        jl.heartbeat_ms = cfg.timing.heartbeat_ms;
        jl.election_timeout_ms = (
            cfg.timing.election_timeout_min_ms,
            cfg.timing.election_timeout_max_ms,
        );
        jl.eager_campaign = cfg.timing.eager_campaign;
        jl.pre_vote = cfg.timing.pre_vote;
        jl.install_snapshot_timeout_ms = cfg.timing.install_snapshot_timeout_ms();
        jl.apply_wait = Duration::from_secs(10);
        // Room for an election plus a retry at the new leader before a client hears 503.
        jl.write_timeout = Duration::from_secs(20);
        let joblog = JobLog::open(jl, clock, Arc::new(QuicTransport(quic.clone()))).await?;
        let secret = cfg.secret.as_deref().map(ClusterSecret::new);
        if secret.is_none() {
            info!("no cluster secret: this node admits no other nodes");
        }
        quic.serve(
            joblog.clone(),
            Arc::new(Admission::new(secret.clone(), identity.public_key_bytes())),
        );
        info!(node = me, raft = %cfg.raft_listen, key = %identity.public_key_hex(), "Raft listener up");

        if let Some(bootstrap) = &cfg.bootstrap {
            let known = joblog.members().into_iter().find(|m| m.id == me);
            if known.as_ref().map(|m| m.addr.as_str()) == Some(record.as_str()) {
                info!(node = me, "already a member; not joining again");
            } else {
                let Some(secret) = &secret else {
                    joblog.shutdown().await;
                    quic.close();
                    return Err(RaftMeshError::NoSecret);
                };
                info!(%bootstrap, "joining the cluster");
                if let Err(e) =
                    join_cluster(&quic, bootstrap, secret, &cfg.member, cfg.join_timeout).await
                {
                    warn!(error = %e, "join failed");
                    joblog.shutdown().await;
                    quic.close();
                    return Err(e.into());
                }
                info!(node = me, "joined; waiting for the log");
            }
        }
        let controller = tokio::spawn(run_controller(
            joblog.clone(),
            quic.clone(),
            me,
            record,
            cfg.policy,
        ));
        Ok((joblog, quic, controller))
    }

    /// Stops the controller and closes the listener (after the job log has shut down).
    pub fn shutdown(&self) {
        self.controller.abort();
        self.quic.close();
    }
}

impl Drop for RaftMesh {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; let it wind down by itself.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The leader's loop: keep its own record current and the voter set at the policy's size, with
/// silent voters replaced by healthy learners.
async fn run_controller(
    joblog: JobLog,
    quic: Arc<QuicRaft>,
    me: NodeId,
    my_record: String,
    policy: MembershipPolicy,
) {
    let mut leader_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(CONTROLLER_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !joblog.is_leader() {
            leader_since = None;
            continue;
        }
        let now = Instant::now();
        // A new leader has not talked to anyone yet: silence counts from when it took over.
        let since = *leader_since.get_or_insert(now);
        let members = joblog.members();
        if let Some(mine) = members.iter().find(|m| m.id == me) {
            if mine.addr != my_record {
                info!(
                    node = me,
                    "updating this node's member record (new addresses)"
                );
                if let Err(e) = joblog.update_member(me, my_record.clone()).await {
                    warn!(error = %e, "updating this node's member record");
                }
                continue;
            }
        }
        let roster = joblog.roster();
        let matched = joblog.replication().unwrap_or_default();
        let last = joblog.last_log_index().unwrap_or(0);
        let health: Vec<MemberHealth> = members
            .iter()
            .map(|m| {
                let silent_ms = if m.id == me {
                    0
                } else {
                    let heard = quic.last_heard(m.id).map_or(since, |t| t.max(since));
                    now.saturating_duration_since(heard).as_millis() as u64
                };
                let caught_up = m.id == me
                    || matched
                        .get(&m.id)
                        .copied()
                        .flatten()
                        .is_some_and(|i| i.saturating_add(CATCH_UP_SLACK) >= last);
                MemberHealth {
                    id: m.id,
                    voter: m.voter,
                    silent_ms,
                    caught_up,
                    region: MemberInfo::from_addr_string(&m.addr).and_then(|info| info.region),
                    draining: roster.takes_no_jobs(m.id),
                }
            })
            .collect();
        let Some(change) = decide(me, &health, &policy) else {
            carry_out_removals(&joblog, &roster, &health, &policy).await;
            continue;
        };
        info!(
            voters = ?change.voters,
            promoted = ?change.promoted,
            demoted = ?change.demoted,
            "changing the voter set"
        );
        match tokio::time::timeout(CHANGE_TIMEOUT, joblog.change_voters(change.voters)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "voter change failed"),
            Err(_) => warn!("voter change timed out"),
        }
    }
}

/// Carries out [`removal`]: the next step of taking removed members out of the membership.
async fn carry_out_removals(
    joblog: &JobLog,
    roster: &runmesh_raft::roster::RosterTable,
    health: &[MemberHealth],
    policy: &MembershipPolicy,
) {
    let result = match removal(health, &|id| roster.is_removed(id), policy) {
        None => return,
        Some(Removal::Voters(rest)) => {
            info!(voters = ?rest, "a removed node gives up its seat");
            tokio::time::timeout(CHANGE_TIMEOUT, joblog.change_voters(rest)).await
        }
        Some(Removal::Learners(gone)) => {
            info!(removed = ?gone, "taking removed nodes out of the membership");
            tokio::time::timeout(CHANGE_TIMEOUT, joblog.remove_learners(gone)).await
        }
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "removing a node failed"),
        Err(_) => warn!("removing a node timed out"),
    }
}

/// Opens the node's job log: alone (no Raft listener configured: `runmesh dev`, or `run` without
/// `--p2p`/`--raft`) or in the mesh.
/// `held_member`: the data dir's marker says it was a cluster member ([`crate::datadir`]).
pub async fn open_job_log(
    cfg: &crate::config::NodeConfig,
    identity: &NodeIdentity,
    clock: Arc<dyn Clock>,
    held_member: bool,
) -> Result<(JobLog, Option<RaftMesh>), RaftMeshError> {
    let raft_dir = cfg.data_dir.join("raft");
    let Some(raft_listen) = cfg.raft else {
        let mut jl = JobLogConfig::single_node(raft_dir);
        jl.node_id = identity.raft_node_id();
        jl.held_member = held_member;
        let joblog = JobLog::open(jl, clock, Arc::new(runmesh_raft::transport::NoNetwork)).await?;
        return Ok((joblog, None));
    };
    let host = |addr: SocketAddr| -> String {
        match &cfg.advertise {
            Some(h) if h.contains(':') => format!("[{h}]:{}", addr.port()),
            Some(h) => format!("{h}:{}", addr.port()),
            None => addr.to_string(),
        }
    };
    if cfg.advertise.is_none() && raft_listen.ip().is_unspecified() && cfg.bootstrap.is_none() {
        warn!(
            %raft_listen,
            "listening on an unspecified address without --advertise: other nodes learn this \
             node's Raft address from its record, so give --advertise HOST"
        );
    }
    let member = MemberInfo {
        pubkey: identity.public_key_hex(),
        raft: host(raft_listen),
        http: host(cfg.http),
        p2p: cfg.p2p.map(host),
        region: cfg.region.clone(),
    };
    let bootstrap = match &cfg.bootstrap {
        Some(b) => {
            Some(crate::mesh::join::bootstrap_raft_addr(b).map_err(RaftMeshError::Bootstrap)?)
        }
        None => None,
    };
    let mesh_cfg = RaftMeshConfig {
        raft_dir,
        raft_listen,
        member,
        bootstrap,
        secret: cfg.cluster_secret.as_ref().map(|s| s.0.clone()),
        policy: MembershipPolicy {
            voters: cfg.voters,
            voter_down_after_ms: cfg.voter_down_after_ms,
            ..MembershipPolicy::default()
        },
        join_timeout: JOIN_TIMEOUT,
        timing: cfg.raft_timing,
        held_member,
    };
    let (joblog, mesh) = RaftMesh::start(identity, mesh_cfg, clock).await?;
    Ok((joblog, Some(mesh)))
}

/// How long a joining node keeps trying to reach its bootstrap member.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
