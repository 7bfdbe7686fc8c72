//! The key table: API keys (hashed) and the cluster secret. A plain value fed [`KeyCommand`]s in log
//! order; no clock, no I/O.

use std::collections::BTreeMap;

use runmesh_proto::auth::{ApiKey, KeyCommand, KeyResult};
use runmesh_proto::{codec, ProtoError};
use serde::{Deserialize, Serialize};

/// Keys kept at most; a `Create` beyond it is refused (an admin script gone wrong must not grow the
/// replicated state without bound).
pub const KEYS_MAX: usize = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTable {
    keys: BTreeMap<String, ApiKey>,
    cluster_secret: Option<Vec<u8>>,
}

impl KeyTable {
    pub fn apply(&mut self, cmd: KeyCommand) -> KeyResult {
        match cmd {
            KeyCommand::Create { key } => {
                if self.keys.contains_key(&key.key_id) || self.keys.len() >= KEYS_MAX {
                    return KeyResult::AlreadyExists;
                }
                self.keys.insert(key.key_id.clone(), key);
                KeyResult::Created
            }
            KeyCommand::Revoke { key_id, .. } => match self.keys.remove(&key_id) {
                Some(_) => KeyResult::Revoked,
                None => KeyResult::NotFound,
            },
            KeyCommand::InitClusterSecret { secret } => {
                if self.cluster_secret.is_some() {
                    KeyResult::SecretAlreadySet
                } else {
                    self.cluster_secret = Some(secret);
                    KeyResult::SecretInitialized
                }
            }
        }
    }

    pub fn get(&self, key_id: &str) -> Option<&ApiKey> {
        self.keys.get(key_id)
    }

    /// Keys in key id order.
    pub fn iter(&self) -> impl Iterator<Item = &ApiKey> {
        self.keys.values()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The secret the cluster's signing key derives from, once a node set it.
    pub fn cluster_secret(&self) -> Option<&[u8]> {
        self.cluster_secret.as_deref()
    }

    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, ProtoError> {
        codec::encode(self)
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use runmesh_proto::auth::KeyScope;

    fn key(id: &str) -> ApiKey {
        ApiKey {
            key_id: id.into(),
            name: None,
            scope: KeyScope::Admin,
            salt: vec![1; 16],
            secret_hash: vec![2; 32],
            created_at_ms: 5,
        }
    }

    #[test]
    fn create_revoke_and_first_secret_wins() {
        let mut t = KeyTable::default();
        assert_eq!(
            t.apply(KeyCommand::Create { key: key("a") }),
            KeyResult::Created
        );
        assert_eq!(
            t.apply(KeyCommand::Create { key: key("a") }),
            KeyResult::AlreadyExists
        );
        assert_eq!(t.get("a").unwrap().scope, KeyScope::Admin);
        assert_eq!(
            t.apply(KeyCommand::InitClusterSecret {
                secret: vec![7; 32]
            }),
            KeyResult::SecretInitialized
        );
        assert_eq!(
            t.apply(KeyCommand::InitClusterSecret {
                secret: vec![8; 32]
            }),
            KeyResult::SecretAlreadySet
        );
        assert_eq!(t.cluster_secret(), Some(&[7u8; 32][..]));
        let back = KeyTable::from_snapshot_bytes(&t.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            t.apply(KeyCommand::Revoke {
                key_id: "a".into(),
                now_ms: 9
            }),
            KeyResult::Revoked
        );
        assert!(t.get("a").is_none());
        assert_eq!(
            t.apply(KeyCommand::Revoke {
                key_id: "a".into(),
                now_ms: 9
            }),
            KeyResult::NotFound
        );
    }
}
