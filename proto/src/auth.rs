//! API keys and the cluster secret, as the replicated state holds them (Raft `Command::Keys`).
//!
//! Keys are stored hashed: `sha256(salt || secret)` with a per-key random salt, so the log, its
//! snapshots and every replica never hold a usable secret. Hashing happens at the edge (gateway);
//! this crate only carries the bytes.

use serde::{Deserialize, Serialize};

/// What a key may do. fal names its scopes `API` and `ADMIN`; `DEFAULT` is runmesh's word for `API`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum KeyScope {
    /// Run models: queue, sync, stream, realtime, tokens.
    #[default]
    Default,
    /// Everything, including `/admin/keys` and `/admin/webhooks`.
    Admin,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Admin => "ADMIN",
        }
    }

    /// `DEFAULT`/`API` or `ADMIN`, any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "DEFAULT" | "API" => Some(Self::Default),
            "ADMIN" => Some(Self::Admin),
            _ => None,
        }
    }

    /// True when a key of this scope may use an endpoint that needs `needed`.
    pub fn allows(self, needed: KeyScope) -> bool {
        self >= needed
    }
}

/// One API key as replicated. The secret itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: String,
    /// A label chosen by the operator.
    pub name: Option<String>,
    pub scope: KeyScope,
    /// Random per-key salt.
    pub salt: Vec<u8>,
    /// `sha256(salt || secret)`.
    pub secret_hash: Vec<u8>,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyCommand {
    /// Add a key; a key id that exists already is left as it is.
    Create { key: ApiKey },
    /// Remove a key; requests with it fail from the moment this applies.
    Revoke { key_id: String, now_ms: u64 },
    /// Set the cluster secret (32 random bytes) that the webhook signing key and realtime tokens
    /// derive from. The first one applied wins, so every node may propose one at start.
    InitClusterSecret { secret: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyResult {
    Created,
    AlreadyExists,
    Revoked,
    NotFound,
    SecretInitialized,
    SecretAlreadySet,
}
