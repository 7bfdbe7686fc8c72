//! The roster table: nodes the operator drains, identities the operator removed. A plain value fed
//! [`RosterCommand`]s in log order; no clock, no I/O. The leader's membership controller reads it
//! and moves Raft's membership to match; placement skips draining nodes; joins of removed
//! identities are refused.

use std::collections::{BTreeMap, BTreeSet};

use runmesh_proto::roster::{RosterCommand, RosterResult};
use runmesh_proto::{codec, NodeId, ProtoError};
use serde::{Deserialize, Serialize};

/// Removed identities kept at most (each entry is a few bytes; a script removing in a loop must
/// not grow the replicated state without bound).
pub const REMOVED_MAX: usize = 100_000;
/// Draining nodes kept at most.
pub const DRAINING_MAX: usize = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterTable {
    draining: BTreeSet<NodeId>,
    /// Removed node ids, with when they were removed (the proposer's clock).
    removed: BTreeMap<NodeId, u64>,
}

impl RosterTable {
    pub fn apply(&mut self, cmd: RosterCommand) -> RosterResult {
        let changed = |yes: bool| {
            if yes {
                RosterResult::Changed
            } else {
                RosterResult::Unchanged
            }
        };
        match cmd {
            RosterCommand::SetDraining { node, draining } if draining => {
                if self.draining.contains(&node) || self.removed.contains_key(&node) {
                    return RosterResult::Unchanged;
                }
                if self.draining.len() >= DRAINING_MAX {
                    return RosterResult::Full;
                }
                changed(self.draining.insert(node))
            }
            RosterCommand::SetDraining { node, .. } => changed(self.draining.remove(&node)),
            RosterCommand::Remove { node, at_ms } => {
                if self.removed.contains_key(&node) {
                    return RosterResult::Unchanged;
                }
                if self.removed.len() >= REMOVED_MAX {
                    return RosterResult::Full;
                }
                self.draining.remove(&node);
                self.removed.insert(node, at_ms);
                RosterResult::Changed
            }
            RosterCommand::Readmit { node } => changed(self.removed.remove(&node).is_some()),
        }
    }

    pub fn is_draining(&self, node: NodeId) -> bool {
        self.draining.contains(&node)
    }

    pub fn draining(&self) -> &BTreeSet<NodeId> {
        &self.draining
    }

    /// Placement skips it: draining, or removed and not yet out of the membership.
    pub fn takes_no_jobs(&self, node: NodeId) -> bool {
        self.is_draining(node) || self.is_removed(node)
    }

    pub fn is_removed(&self, node: NodeId) -> bool {
        self.removed.contains_key(&node)
    }

    /// Removed ids with when they were removed.
    pub fn removed(&self) -> &BTreeMap<NodeId, u64> {
        &self.removed
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

    #[test]
    fn drains_end_and_removals_stay_until_readmitted() {
        let mut t = RosterTable::default();
        let drain = |node, draining| RosterCommand::SetDraining { node, draining };
        assert_eq!(t.apply(drain(7, true)), RosterResult::Changed);
        assert_eq!(t.apply(drain(7, true)), RosterResult::Unchanged);
        assert!(t.is_draining(7));
        assert_eq!(t.apply(drain(7, false)), RosterResult::Changed);
        assert!(!t.is_draining(7));
        t.apply(drain(7, true));
        // Removal ends the drain, and a removed node cannot be drained again.
        assert_eq!(
            t.apply(RosterCommand::Remove { node: 7, at_ms: 5 }),
            RosterResult::Changed
        );
        assert!(t.is_removed(7) && !t.is_draining(7));
        assert_eq!(t.apply(drain(7, true)), RosterResult::Unchanged);
        assert_eq!(
            t.apply(RosterCommand::Remove { node: 7, at_ms: 9 }),
            RosterResult::Unchanged
        );
        assert_eq!(t.removed().get(&7), Some(&5));
        assert_eq!(
            t.apply(RosterCommand::Readmit { node: 7 }),
            RosterResult::Changed
        );
        assert!(!t.is_removed(7));
        assert_eq!(
            t.apply(RosterCommand::Readmit { node: 7 }),
            RosterResult::Unchanged
        );
        let back = RosterTable::from_snapshot_bytes(&t.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
