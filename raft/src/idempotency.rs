//! `Idempotency-Key` claims: (caller, key) → the request that first used it, until it expires.
//! Expiry is applied with the proposer's `now_ms`, never a clock, like every table here.

use std::collections::{BTreeMap, BTreeSet};

use runmesh_proto::idempotency::{IdempotencyCommand, IdempotencyResult};
use runmesh_proto::{codec, ProtoError, RequestId};
use serde::{Deserialize, Serialize};

/// Claims kept at most; past it the ones expiring first go first.
pub const CLAIMS_MAX: usize = 200_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub owner: String,
    pub key: String,
    pub request_id: RequestId,
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct IdempotencyTable {
    claims: BTreeMap<(String, String), Claim>,
    by_expiry: BTreeSet<(u64, String, String)>,
}

impl IdempotencyTable {
    pub fn apply(&mut self, cmd: IdempotencyCommand) -> IdempotencyResult {
        match cmd {
            IdempotencyCommand::Claim {
                owner,
                key,
                request_id,
                now_ms,
                expires_at_ms,
                replace,
            } => {
                self.expire(now_ms);
                let k = (owner.clone(), key.clone());
                if let Some(existing) = self.claims.get(&k) {
                    if replace.as_ref() != Some(&existing.request_id) {
                        return IdempotencyResult::Existing {
                            request_id: existing.request_id.clone(),
                        };
                    }
                    self.by_expiry
                        .remove(&(existing.expires_at_ms, owner.clone(), key.clone()));
                }
                self.by_expiry
                    .insert((expires_at_ms, owner.clone(), key.clone()));
                self.claims.insert(
                    k,
                    Claim {
                        owner,
                        key,
                        request_id,
                        expires_at_ms,
                    },
                );
                while self.claims.len() > CLAIMS_MAX {
                    let Some((_, o, k)) = self.by_expiry.pop_first() else {
                        break;
                    };
                    self.claims.remove(&(o, k));
                }
                IdempotencyResult::Claimed
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((at, _, _)) = self.by_expiry.first() {
            if *at > now_ms {
                break;
            }
            if let Some((_, o, k)) = self.by_expiry.pop_first() {
                self.claims.remove(&(o, k));
            }
        }
    }

    /// The live claim of `key` by `owner` at `now_ms`.
    pub fn get(&self, owner: &str, key: &str, now_ms: u64) -> Option<&Claim> {
        self.claims
            .get(&(owner.to_string(), key.to_string()))
            .filter(|c| c.expires_at_ms > now_ms)
    }

    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, ProtoError> {
        codec::encode(&self.claims.values().cloned().collect::<Vec<_>>())
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let claims: Vec<Claim> = codec::decode(bytes)?;
        let mut t = Self::default();
        for c in claims {
            t.by_expiry
                .insert((c.expires_at_ms, c.owner.clone(), c.key.clone()));
            t.claims.insert((c.owner.clone(), c.key.clone()), c);
        }
        Ok(t)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claim(
        key: &str,
        id: &RequestId,
        now_ms: u64,
        replace: Option<RequestId>,
    ) -> IdempotencyCommand {
        IdempotencyCommand::Claim {
            owner: "k1".into(),
            key: key.into(),
            request_id: id.clone(),
            now_ms,
            expires_at_ms: now_ms + 1_000,
            replace,
        }
    }

    #[test]
    fn first_claim_wins_until_it_expires() {
        let mut t = IdempotencyTable::default();
        let (a, b) = (RequestId::new_random(), RequestId::new_random());
        assert_eq!(t.apply(claim("x", &a, 0, None)), IdempotencyResult::Claimed);
        assert_eq!(
            t.apply(claim("x", &b, 10, None)),
            IdempotencyResult::Existing {
                request_id: a.clone()
            }
        );
        // Other owners and keys are independent.
        assert_eq!(
            t.apply(claim("y", &b, 10, None)),
            IdempotencyResult::Claimed
        );
        // Replace only takes over the claim it names.
        assert_eq!(
            t.apply(claim("x", &b, 20, Some(b.clone()))),
            IdempotencyResult::Existing {
                request_id: a.clone()
            }
        );
        assert_eq!(
            t.apply(claim("x", &b, 20, Some(a.clone()))),
            IdempotencyResult::Claimed
        );
        assert_eq!(t.get("k1", "x", 21).unwrap().request_id, b);
        let back = IdempotencyTable::from_snapshot_bytes(&t.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back.len(), 2);
        // Past the window the key is free again.
        assert_eq!(
            t.apply(claim("x", &a, 5_000, None)),
            IdempotencyResult::Claimed
        );
        assert_eq!(t.len(), 1);
    }
}
