//! Joining a cluster: the cluster-secret proof, the bootstrap address, the admission decision on the
//! receiving side and the joiner's retry loop.
//!
//! The handshake runs inside the mutually authenticated QUIC/TLS connection of the Raft listener,
//! so both sides already hold each other's ed25519 public key (from the certificates, whose
//! handshake signatures rustls verified). The joiner proves the secret with
//! `HMAC(secret, "join" ‖ joiner key ‖ server key ‖ nonce)`: bound to both keys, so a proof
//! captured by a rogue server cannot be replayed to a real one, and useless without the joiner's
//! private key. The answering node proves it too (`"ack"` label), so a joiner never trusts the
//! member list of a server that does not know the secret. The secret itself never crosses the wire.

use std::net::IpAddr;
use std::time::Duration;

use ring::hmac;
use runmesh_proto::mesh::{to_hex, JoinReply, JoinRequest, MemberInfo};
use runmesh_proto::NodeId;
use runmesh_raft::{JobLog, JobLogError};
use tracing::{debug, info, warn};

use crate::identity::node_id_from_public_key;
use crate::mesh::raft_quic::{QuicRaft, WireReply, WireRequest};

const SECRET_CONTEXT: &[u8] = b"runmesh cluster secret v1\0";
const LABEL_JOIN: &[u8] = b"runmesh join v1\0";
const LABEL_ACK: &[u8] = b"runmesh join ack v1\0";
pub const NONCE_BYTES: usize = 32;
/// A join waits for a leader to add it; that is one Raft commit, but allow for an election.
pub const JOIN_RPC_TIMEOUT: Duration = Duration::from_secs(20);
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The cluster secret as a MAC key. `Debug` does not print it.
#[derive(Clone)]
pub struct ClusterSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    pub fn new(secret: &str) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(SECRET_CONTEXT);
        ctx.update(secret.as_bytes());
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, ctx.finish().as_ref()),
        }
    }

    fn mac(&self, label: &[u8], client: &[u8; 32], server: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
        hmac::sign(&self.key, &message(label, client, server, nonce))
            .as_ref()
            .to_vec()
    }

    fn check(
        &self,
        label: &[u8],
        client: &[u8; 32],
        server: &[u8; 32],
        nonce: &[u8],
        tag: &[u8],
    ) -> bool {
        // Constant-time comparison inside ring.
        hmac::verify(&self.key, &message(label, client, server, nonce), tag).is_ok()
    }

    /// The joiner's proof.
    pub fn join_proof(&self, client: &[u8; 32], server: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
        self.mac(LABEL_JOIN, client, server, nonce)
    }

    pub fn check_join(
        &self,
        client: &[u8; 32],
        server: &[u8; 32],
        nonce: &[u8],
        tag: &[u8],
    ) -> bool {
        nonce.len() == NONCE_BYTES && self.check(LABEL_JOIN, client, server, nonce, tag)
    }

    /// The answering node's proof.
    pub fn ack_proof(&self, client: &[u8; 32], server: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
        self.mac(LABEL_ACK, client, server, nonce)
    }

    pub fn check_ack(
        &self,
        client: &[u8; 32],
        server: &[u8; 32],
        nonce: &[u8],
        tag: &[u8],
    ) -> bool {
        self.check(LABEL_ACK, client, server, nonce, tag)
    }
}

fn message(label: &[u8], client: &[u8; 32], server: &[u8; 32], nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + 64 + nonce.len());
    m.extend_from_slice(label);
    m.extend_from_slice(client);
    m.extend_from_slice(server);
    m.extend_from_slice(nonce);
    m
}

/// The Raft address (`host:port`) of a bootstrap member given as `host:port` of its p2p listener
/// or as a libp2p multiaddr (`/ip4/1.2.3.4/udp/9000/quic-v1`, `/dns4/h/tcp/9000/p2p/...`): the
/// Raft listener is the p2p port + 1.
pub fn bootstrap_raft_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (host, port) = if s.starts_with('/') {
        let mut host = None;
        let mut port = None;
        let mut parts = s.split('/').skip(1);
        while let Some(proto) = parts.next() {
            match proto {
                "ip4" | "ip6" | "dns" | "dns4" | "dns6" => host = parts.next().map(str::to_string),
                "tcp" | "udp" => port = parts.next().and_then(|p| p.parse::<u16>().ok()),
                "p2p" => {
                    parts.next();
                }
                _ => {}
            }
        }
        match (host, port) {
            (Some(h), Some(p)) if !h.is_empty() => (h, p),
            _ => return Err(format!("bootstrap multiaddr {s:?} names no host and port")),
        }
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("bootstrap {s:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .map_err(|_| format!("bootstrap {s:?}: bad port"))?;
        if host.is_empty() {
            return Err(format!("bootstrap {s:?}: no host"));
        }
        (host.to_string(), port)
    };
    let raft_port = port
        .checked_add(1)
        .filter(|_| port != 0)
        .ok_or_else(|| format!("bootstrap {s:?}: port {port} has no Raft port above it"))?;
    Ok(if host.contains(':') {
        format!("[{host}]:{raft_port}")
    } else {
        format!("{host}:{raft_port}")
    })
}

/// Replaces an unspecified host (`0.0.0.0`, `[::]`) in a `host:port` by `ip`.
fn fill_host(addr: &str, ip: IpAddr) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => std::net::SocketAddr::new(ip, a.port()).to_string(),
        _ => addr.to_string(),
    }
}

/// The receiving side of joins.
pub struct Admission {
    secret: Option<ClusterSecret>,
    me_pk: [u8; 32],
}

impl Admission {
    pub fn new(secret: Option<ClusterSecret>, me_pk: [u8; 32]) -> Self {
        Self { secret, me_pk }
    }

    /// A join request that arrived from `client_pk` (the TLS key of the connection).
    pub async fn handle_join(
        &self,
        quic: &QuicRaft,
        joblog: &JobLog,
        req: JoinRequest,
        client_pk: [u8; 32],
        observed_ip: IpAddr,
    ) -> JoinReply {
        let who = to_hex(&client_pk[..8]);
        let Some(secret) = &self.secret else {
            warn!(peer = %who, ip = %observed_ip, "refused a join: this node has no cluster secret, so it admits nobody");
            return refused("this node accepts no joins (it has no cluster secret)");
        };
        if !secret.check_join(&client_pk, &self.me_pk, &req.nonce, &req.proof) {
            warn!(peer = %who, ip = %observed_ip, "refused a join: wrong cluster secret");
            return refused("wrong cluster secret");
        }
        if req.member.pubkey_bytes() != Some(client_pk) {
            warn!(peer = %who, "refused a join: member record names another key than the connection");
            return refused("the member record's key differs from the connection's");
        }
        let nonce = req.nonce.clone();
        let reply = if joblog.is_leader() {
            admit_at_leader(joblog, req.member, client_pk, observed_ip).await
        } else {
            self.forward(quic, joblog, req, client_pk, observed_ip)
                .await
        };
        match reply {
            JoinReply::Accepted {
                node_id,
                leader,
                members,
                ..
            } => JoinReply::Accepted {
                node_id,
                leader,
                members,
                proof: secret.ack_proof(&client_pk, &self.me_pk, &nonce),
            },
            other => other,
        }
    }

    async fn forward(
        &self,
        quic: &QuicRaft,
        joblog: &JobLog,
        req: JoinRequest,
        client_pk: [u8; 32],
        observed_ip: IpAddr,
    ) -> JoinReply {
        let Some(leader) = joblog.leader() else {
            return retry("no leader yet");
        };
        let Some(addr) = joblog
            .members()
            .into_iter()
            .find(|m| m.id == leader)
            .map(|m| m.addr)
        else {
            return retry("the leader is not in this node's membership yet");
        };
        let fwd = WireRequest::ForwardJoin {
            request: req,
            client_pk,
            observed_ip: Some(observed_ip),
        };
        match quic
            .request_member(leader, &addr, &fwd, JOIN_RPC_TIMEOUT)
            .await
        {
            Ok(WireReply::Join(reply)) => reply,
            Ok(other) => retry(&format!("leader answered {}", other.describe())),
            Err(e) => retry(&format!("forwarding to the leader: {e}")),
        }
    }

    /// A join another member forwarded to this node (it thinks this node leads). `via_pk` is the
    /// forwarding member's key: the proof was made for it.
    pub async fn handle_forwarded(
        &self,
        joblog: &JobLog,
        req: JoinRequest,
        client_pk: [u8; 32],
        via_pk: [u8; 32],
        observed_ip: Option<IpAddr>,
    ) -> JoinReply {
        let Some(secret) = &self.secret else {
            return refused("the leader has no cluster secret");
        };
        if !secret.check_join(&client_pk, &via_pk, &req.nonce, &req.proof)
            || req.member.pubkey_bytes() != Some(client_pk)
        {
            warn!(peer = %to_hex(&client_pk[..8]), "refused a forwarded join: bad proof");
            return refused("wrong cluster secret");
        }
        if !joblog.is_leader() {
            return retry("not the leader");
        }
        let ip = observed_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        admit_at_leader(joblog, req.member, client_pk, ip).await
    }
}

fn refused(reason: &str) -> JoinReply {
    JoinReply::Refused {
        reason: reason.to_string(),
    }
}

fn retry(reason: &str) -> JoinReply {
    JoinReply::Retry {
        reason: reason.to_string(),
    }
}

/// Adds the joiner as a learner (or updates its record when it comes back with new addresses).
/// Promotion to voter is the membership controller's job.
async fn admit_at_leader(
    joblog: &JobLog,
    mut member: MemberInfo,
    client_pk: [u8; 32],
    observed_ip: IpAddr,
) -> JoinReply {
    let node_id = node_id_from_public_key(&client_pk);
    if joblog.read_state(|s| s.roster.is_removed(node_id)) {
        warn!(node = node_id, ip = %observed_ip, "refused a join: this node was removed from the cluster");
        return refused(&format!(
            "node {node_id} was removed from the cluster; an admin readmits it with \
             `runmesh node readmit {node_id}` before it can join again"
        ));
    }
    member.pubkey = to_hex(&client_pk);
    // A node listening on 0.0.0.0 is reachable at the address its connection came from.
    member.raft = fill_host(&member.raft, observed_ip);
    member.http = fill_host(&member.http, observed_ip);
    let record = member.to_addr_string();
    let existing = joblog.members().into_iter().find(|m| m.id == node_id);
    let result = match existing {
        Some(m) if m.addr == record => Ok(()),
        Some(_) => {
            info!(node = node_id, raft = %member.raft, "member re-joined with new addresses");
            joblog.update_member(node_id, record).await
        }
        None => {
            info!(node = node_id, raft = %member.raft, http = %member.http, "admitting a node as learner");
            joblog.add_learner_nowait(node_id, record).await
        }
    };
    match result {
        Ok(()) => {}
        Err(JobLogError::ForwardToLeader { .. }) => return retry("leadership changed"),
        Err(e) => return retry(&format!("membership change failed: {e}")),
    }
    JoinReply::Accepted {
        node_id,
        leader: joblog.leader(),
        members: member_records(joblog),
        proof: Vec::new(),
    }
}

/// The membership with parsed member records (members without one are left out).
pub fn member_records(joblog: &JobLog) -> Vec<(NodeId, MemberInfo)> {
    joblog
        .members()
        .into_iter()
        .filter_map(|m| MemberInfo::from_addr_string(&m.addr).map(|i| (m.id, i)))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("join refused by {bootstrap}: {reason}")]
    Refused { bootstrap: String, reason: String },
    #[error("could not join through {bootstrap} within {waited:?}: {last}")]
    TimedOut {
        bootstrap: String,
        waited: Duration,
        last: String,
    },
}

/// Asks `bootstrap` (a member's Raft `host:port`) to admit this node, retrying (bounded by
/// `give_up_after`) while the bootstrap is unreachable or the cluster has no leader. On success
/// the members' keys are trusted by `quic`, so the leader's replication gets through before the
/// membership itself reaches this node.
pub async fn join_cluster(
    quic: &QuicRaft,
    bootstrap: &str,
    secret: &ClusterSecret,
    me: &MemberInfo,
    give_up_after: Duration,
) -> Result<NodeId, JoinError> {
    let my_pk = quic.public_key();
    let started = tokio::time::Instant::now();
    let mut backoff = JOIN_BACKOFF_MIN;
    let mut last = String::from("no attempt");
    loop {
        match join_once(quic, bootstrap, secret, me, &my_pk).await {
            Ok(Ok(id)) => return Ok(id),
            Ok(Err(reason)) => {
                return Err(JoinError::Refused {
                    bootstrap: bootstrap.to_string(),
                    reason,
                })
            }
            Err(retry_reason) => {
                if last != retry_reason {
                    info!(%bootstrap, reason = %retry_reason, "join not done yet; retrying");
                }
                last = retry_reason;
            }
        }
        if started.elapsed() + backoff > give_up_after {
            return Err(JoinError::TimedOut {
                bootstrap: bootstrap.to_string(),
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
    }
}

/// One attempt. `Err(reason)`: try again; `Ok(Err(reason))`: refused for good.
async fn join_once(
    quic: &QuicRaft,
    bootstrap: &str,
    secret: &ClusterSecret,
    me: &MemberInfo,
    my_pk: &[u8; 32],
) -> Result<Result<NodeId, String>, String> {
    let (conn, server_pk) = quic
        .connect_unpinned(bootstrap)
        .await
        .map_err(|e| e.to_string())?;
    let mut nonce = vec![0u8; NONCE_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| "the system random source failed".to_string())?;
    let req = WireRequest::Join(JoinRequest {
        member: me.clone(),
        nonce: nonce.clone(),
        proof: secret.join_proof(my_pk, &server_pk, &nonce),
    });
    let reply = QuicRaft::exchange(&conn, &req, JOIN_RPC_TIMEOUT).await;
    conn.close(0u32.into(), b"join done");
    match reply.map_err(|e| e.to_string())? {
        WireReply::Join(JoinReply::Accepted {
            node_id,
            leader,
            members,
            proof,
        }) => {
            if !secret.check_ack(my_pk, &server_pk, &nonce, &proof) {
                return Ok(Err(
                    "the bootstrap node could not prove the cluster secret".to_string()
                ));
            }
            let keys: Vec<[u8; 32]> = members
                .iter()
                .filter_map(|(_, m)| m.pubkey_bytes())
                .collect();
            quic.trust(keys);
            debug!(
                node = node_id,
                ?leader,
                members = members.len(),
                "join accepted"
            );
            Ok(Ok(node_id))
        }
        WireReply::Join(JoinReply::Refused { reason }) => Ok(Err(reason)),
        WireReply::Denied(reason) => Ok(Err(reason)),
        WireReply::Join(JoinReply::Retry { reason }) => Err(reason),
        other => Err(format!("unexpected answer: {}", other.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_secret_both_keys_and_the_nonce() {
        let s = ClusterSecret::new("hunter2");
        let (c, v) = ([1u8; 32], [2u8; 32]);
        let nonce = [7u8; NONCE_BYTES];
        let p = s.join_proof(&c, &v, &nonce);
        assert!(s.check_join(&c, &v, &nonce, &p));
        assert!(!ClusterSecret::new("hunter3").check_join(&c, &v, &nonce, &p));
        assert!(!s.check_join(&v, &c, &nonce, &p), "keys swapped");
        assert!(!s.check_join(&c, &[3u8; 32], &nonce, &p), "another server");
        assert!(
            !s.check_join(&c, &v, &[8u8; NONCE_BYTES], &p),
            "another nonce"
        );
        assert!(!s.check_join(&c, &v, &nonce[..4], &s.join_proof(&c, &v, &nonce[..4])));
        assert!(
            !s.check_ack(&c, &v, &nonce, &p),
            "a join proof is not an ack"
        );
        assert!(s.check_ack(&c, &v, &nonce, &s.ack_proof(&c, &v, &nonce)));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bootstrap_addresses_point_at_the_raft_port() {
        assert_eq!(
            bootstrap_raft_addr("127.0.0.1:9000").unwrap(),
            "127.0.0.1:9001"
        );
        assert_eq!(
            bootstrap_raft_addr("node-a.example:7000").unwrap(),
            "node-a.example:7001"
        );
        assert_eq!(bootstrap_raft_addr("[::1]:9000").unwrap(), "[::1]:9001");
        assert_eq!(
            bootstrap_raft_addr("/ip4/10.0.0.5/udp/9000/quic-v1").unwrap(),
            "10.0.0.5:9001"
        );
        assert_eq!(
            bootstrap_raft_addr("/dns4/a.example/tcp/4001/p2p/12D3KooWabc").unwrap(),
            "a.example:4002"
        );
        assert_eq!(
            bootstrap_raft_addr("/ip6/::1/udp/9000/quic-v1").unwrap(),
            "[::1]:9001"
        );
        for bad in [
            "",
            "nohost",
            ":9000",
            "h:65535",
            "h:0",
            "h:x",
            "/ip4/1.2.3.4",
            "/tcp/9",
        ] {
            assert!(bootstrap_raft_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unspecified_hosts_take_the_observed_address() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(fill_host("0.0.0.0:9001", ip), "10.1.2.3:9001");
        assert_eq!(fill_host("127.0.0.1:9001", ip), "127.0.0.1:9001");
        assert_eq!(fill_host("host.example:9001", ip), "host.example:9001");
    }
}
