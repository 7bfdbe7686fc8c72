//! The network seam of Raft: openraft's RPCs are encoded to bytes and handed to a [`RaftTransport`],
//! which the node implements over QUIC and the simulator over its simulated network. The receiving
//! side hands the bytes to [`crate::JobLog::handle_rpc`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use runmesh_proto::{codec, NodeId};
use serde::{Deserialize, Serialize};

use crate::election::EagerCampaign;
use crate::pre_vote::{PreVote, PreVoteRequest};
use crate::types::{Raft, TypeConfig};

/// Which Raft RPC a payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// A follower forwarding client writes to the leader: the payload is a `Vec<Command>`, the
    /// reply a [`ForwardResult`].
    Propose,
    /// "Would you vote for me?" ([`crate::pre_vote`]): a [`PreVoteRequest`], answered with a
    /// [`crate::pre_vote::PreVoteResponse`]. Last, so the older kinds keep their wire numbers.
    PreVote,
}

/// What the leader answers to a forwarded [`RpcKind::Propose`].
pub type ForwardResult = Result<ForwardReply, ForwardError>;

/// The forwarded commands were committed at `log_index`; one output per command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardReply {
    pub log_index: u64,
    pub outputs: Vec<runmesh_proto::CommandOutput>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader (any more); retry at `leader`.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached now; Raft backs off and retries.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The exchange failed midway.
    #[error("network: {0}")]
    Network(String),
}

pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Sends one encoded RPC to `target` (reachable at `addr`) and returns the encoded reply.
pub trait RaftTransport: Send + Sync + 'static {
    fn call(&self, target: NodeId, addr: &str, kind: RpcKind, payload: Vec<u8>) -> TransportFuture;
}

/// The transport of a node that has no peers: every call is unreachable.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNetwork;

impl RaftTransport for NoNetwork {
    fn call(
        &self,
        target: NodeId,
        _addr: &str,
        _kind: RpcKind,
        _payload: Vec<u8>,
    ) -> TransportFuture {
        Box::pin(async move {
            Err(TransportError::Unreachable(format!(
                "node {target}: this node has no Raft network"
            )))
        })
    }
}

/// openraft's network factory over a [`RaftTransport`].
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn RaftTransport>,
}

impl Network {
    pub fn new(transport: Arc<dyn RaftTransport>) -> Self {
        Self { transport }
    }
}

pub struct Connection {
    transport: Arc<dyn RaftTransport>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            transport: self.transport.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Connection {
    async fn call<Req, Resp, E>(&self, kind: RpcKind, req: &Req) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .transport
            .call(self.target, &self.addr, kind, payload)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Network(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(RpcKind::AppendEntries, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RpcKind::InstallSnapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RpcKind::Vote, &rpc).await
    }
}

/// Serves one of openraft's own RPCs (AppendEntries, Vote, InstallSnapshot) or a pre-vote on
/// `raft`: decode, hand over, encode the reply (errors included, so the sender sees them as remote
/// errors). [`RpcKind::Propose`] belongs to the job log and is refused here. The node
/// ([`crate::JobLog::handle_rpc`]) and the simulator both answer peers through this, with the
/// eager campaign of [`crate::election`] when `eager` is given; `now_ms` is the node's clock.
/// `pre_vote` hears of every leader contact and vote granted, which its timer waits on.
pub async fn serve_openraft_rpc(
    raft: &Raft,
    eager: Option<&EagerCampaign>,
    pre_vote: &PreVote,
    now_ms: impl Fn() -> u64,
    kind: RpcKind,
    payload: &[u8],
) -> Result<Vec<u8>, runmesh_proto::ProtoError> {
    match kind {
        RpcKind::AppendEntries => {
            let req = codec::decode(payload)?;
            let resp = raft.append_entries(req).await;
            let from_leader =
                matches!(&resp, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_)));
            if from_leader {
                pre_vote.leader_heard();
                if let Some(eager) = eager {
                    eager.leader_heard(now_ms());
                }
            }
            codec::encode(&resp)
        }
        RpcKind::Vote => {
            let req: VoteRequest<NodeId> = codec::decode(payload)?;
            let candidate_last_log = req.last_log_id;
            let resp = raft.vote(req).await;
            if matches!(&resp, Ok(r) if r.vote_granted) {
                pre_vote.reset_timer();
            }
            // A leader hears no AppendEntries of its own: the lease test means nothing there.
            let leading = raft.metrics().borrow().state == openraft::ServerState::Leader;
            if let (Ok(r), Some(eager), false) = (&resp, eager, leading) {
                let mine = r.last_log_id.as_ref();
                let campaign =
                    eager.after_vote(now_ms(), r.vote_granted, candidate_last_log.as_ref(), mine);
                if campaign {
                    tracing::info!(
                        ?candidate_last_log,
                        my_last_log = ?mine,
                        "refused a shorter log with no leader heard for a lease: campaigning"
                    );
                    // Twice: the first campaign takes the refused candidate's term, which that
                    // candidate has voted itself in and so refuses; the second is one above it.
                    let _ = raft.trigger().elect().await;
                    let _ = raft.trigger().elect().await;
                }
            }
            codec::encode(&resp)
        }
        RpcKind::InstallSnapshot => {
            let req: InstallSnapshotRequest<TypeConfig> = codec::decode(payload)?;
            let leader_vote = req.vote;
            let resp = raft.install_snapshot(req).await;
            // Answered with the sender's own vote: it is the leader this node follows.
            if matches!(&resp, Ok(r) if r.vote == leader_vote) {
                pre_vote.leader_heard();
            }
            codec::encode(&resp)
        }
        RpcKind::PreVote => {
            let req: PreVoteRequest = codec::decode(payload)?;
            codec::encode(&pre_vote.answer(raft, &req))
        }
        RpcKind::Propose => Err(runmesh_proto::ProtoError::Codec(
            "a forwarded proposal is the job log's, not an openraft rpc".into(),
        )),
    }
}
