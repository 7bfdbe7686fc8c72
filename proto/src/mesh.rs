//! Mesh wire types: what the cluster records about each member, and the join handshake.
//!
//! Member records travel inside openraft's `BasicNode.addr` as a small JSON object ([`MemberInfo`]),
//! so the replicated membership itself says how to reach each member and which key it must present:
//! a node that knows the membership knows every peer's pinned identity.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Longest `BasicNode.addr` text we parse (a member record is ~200 bytes).
pub const MEMBER_INFO_MAX_BYTES: usize = 4096;

/// One member as the replicated membership records it. (No `skip_serializing_if`: the record also
/// travels in bincode, which cannot skip fields.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's ed25519 public key, 64 lowercase hex characters. Its Raft id derives from it.
    pub pubkey: String,
    /// `host:port` of the node's Raft QUIC listener.
    pub raft: String,
    /// `host:port` of the node's fal HTTP API.
    #[serde(default)]
    pub http: String,
    /// `host:port` of the node's libp2p listener, when it runs one.
    #[serde(default)]
    pub p2p: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

impl MemberInfo {
    /// The text stored in `BasicNode.addr`.
    pub fn to_addr_string(&self) -> String {
        // Serializing plain strings cannot fail; an empty record is never pinned to anything.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses `BasicNode.addr`. `None` for anything that is not a member record (e.g. the empty
    /// address of a foundation single node).
    pub fn from_addr_string(s: &str) -> Option<Self> {
        if s.len() > MEMBER_INFO_MAX_BYTES || !s.starts_with('{') {
            return None;
        }
        let info: Self = serde_json::from_str(s).ok()?;
        (info.pubkey_bytes().is_some()).then_some(info)
    }

    /// The public key as bytes, when `pubkey` is 64 hex characters.
    pub fn pubkey_bytes(&self) -> Option<[u8; 32]> {
        hex32(&self.pubkey)
    }
}

/// Decodes 64 hex characters into 32 bytes.
pub fn hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Lowercase hex of some bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A node asking to join. `proof` is a MAC keyed by the cluster secret over both TLS identities
/// and `nonce` (see node/src/mesh/join.rs); the secret itself never crosses the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub member: MemberInfo,
    pub nonce: Vec<u8>,
    pub proof: Vec<u8>,
}

/// The answer to a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// Added as a learner (or already a member). `members` is the membership after the change, so
    /// the joiner can trust the leader's connections before the log reaches it. `proof` shows the
    /// answering node knows the secret too.
    Accepted {
        node_id: NodeId,
        leader: Option<NodeId>,
        members: Vec<(NodeId, MemberInfo)>,
        proof: Vec<u8>,
    },
    /// Not admitted (wrong secret, joins disabled, identity mismatch...).
    Refused { reason: String },
    /// Could not be decided now (no leader yet); try again.
    Retry { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_info_round_trips_through_the_addr_text() {
        let m = MemberInfo {
            pubkey: to_hex(&[7u8; 32]),
            raft: "127.0.0.1:9001".into(),
            http: "127.0.0.1:8080".into(),
            p2p: Some("127.0.0.1:9000".into()),
            region: None,
        };
        let s = m.to_addr_string();
        assert_eq!(MemberInfo::from_addr_string(&s), Some(m.clone()));
        assert_eq!(m.pubkey_bytes(), Some([7u8; 32]));
        assert_eq!(MemberInfo::from_addr_string(""), None);
        assert_eq!(MemberInfo::from_addr_string("127.0.0.1:9001"), None);
        assert_eq!(
            MemberInfo::from_addr_string(r#"{"pubkey":"zz","raft":"x"}"#),
            None
        );
        assert_eq!(hex32(&"g".repeat(64)), None);
        assert_eq!(to_hex(&[0, 255, 16]), "00ff10");
    }
}
