//! Who votes: the leader's decision, as a pure function, on which members are Raft voters.
//!
//! Joining nodes enter as learners (they hold the full log, do not vote). While there are fewer
//! voters than configured, the leader promotes a healthy, caught-up learner; when a voter has been
//! unreachable longer than `voter_down_after_ms`, a healthy learner takes its seat (the old voter
//! stays a learner and may be promoted again later). One change at a time, so every change is a
//! small joint-consensus step the remaining voters can commit.
//!
//! Liveness comes in as data ([`MemberHealth::silent_ms`]): today from the Raft transport (time since
//! the leader last got an answer from the member); gossip liveness can feed the same field.

use std::collections::BTreeSet;

use runmesh_proto::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipPolicy {
    /// Voters the cluster keeps when enough healthy members exist.
    pub voters: usize,
    /// A voter silent this long is replaced by a healthy learner.
    pub voter_down_after_ms: u64,
    /// A learner silent longer than this is not promoted.
    pub learner_up_within_ms: u64,
}

impl Default for MembershipPolicy {
    fn default() -> Self {
        Self {
            voters: 3,
            voter_down_after_ms: 10_000,
            learner_up_within_ms: 2_000,
        }
    }
}

/// What the leader knows about one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    pub id: NodeId,
    pub voter: bool,
    /// Milliseconds since the leader last heard from it (0 for the leader itself).
    pub silent_ms: u64,
    /// Its log is close enough to the leader's that promoting it will not stall commits.
    pub caught_up: bool,
}

/// A membership change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterChange {
    /// The complete new voter set.
    pub voters: BTreeSet<NodeId>,
    pub promoted: Option<NodeId>,
    pub demoted: Option<NodeId>,
}

/// Decides the next voter change, if any. `leader` is never demoted. Deterministic: among equal
/// candidates the freshest (least silent) learner wins, then the lowest id.
pub fn decide(
    leader: NodeId,
    members: &[MemberHealth],
    policy: &MembershipPolicy,
) -> Option<VoterChange> {
    let voters: BTreeSet<NodeId> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let mut candidates: Vec<&MemberHealth> = members
        .iter()
        .filter(|m| {
            !m.voter && m.id != leader && m.caught_up && m.silent_ms <= policy.learner_up_within_ms
        })
        .collect();
    candidates.sort_by_key(|m| (m.silent_ms, m.id));
    let best = candidates.first().map(|m| m.id);

    // The longest-silent voter past the timeout goes first.
    let down = members
        .iter()
        .filter(|m| m.voter && m.id != leader && m.silent_ms >= policy.voter_down_after_ms)
        .max_by_key(|m| (m.silent_ms, std::cmp::Reverse(m.id)))
        .map(|m| m.id);

    let target = policy.voters.max(1);
    match (down, best) {
        (Some(down), Some(up)) if voters.len() <= target => {
            let mut next = voters.clone();
            next.remove(&down);
            next.insert(up);
            Some(VoterChange {
                voters: next,
                promoted: Some(up),
                demoted: Some(down),
            })
        }
        // More voters than wanted (the operator lowered --voters): shed a silent one first.
        (Some(down), _) if voters.len() > target => {
            let mut next = voters.clone();
            next.remove(&down);
            Some(VoterChange {
                voters: next,
                promoted: None,
                demoted: Some(down),
            })
        }
        (_, Some(up)) if voters.len() < target => {
            let mut next = voters.clone();
            next.insert(up);
            Some(VoterChange {
                voters: next,
                promoted: Some(up),
                demoted: None,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: NodeId, voter: bool, silent_ms: u64) -> MemberHealth {
        MemberHealth {
            id,
            voter,
            silent_ms,
            caught_up: true,
        }
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    const P: MembershipPolicy = MembershipPolicy {
        voters: 3,
        voter_down_after_ms: 10_000,
        learner_up_within_ms: 2_000,
    };

    #[test]
    fn learners_are_promoted_until_there_are_enough_voters() {
        let one = [m(1, true, 0), m(2, false, 100)];
        let c = decide(1, &one, &P).unwrap();
        assert_eq!(
            (c.voters, c.promoted, c.demoted),
            (set(&[1, 2]), Some(2), None)
        );

        let three = [
            m(1, true, 0),
            m(2, true, 50),
            m(3, true, 50),
            m(4, false, 10),
        ];
        assert_eq!(
            decide(1, &three, &P),
            None,
            "a full voter set stays as it is"
        );

        // The freshest learner is promoted first; lagging or silent ones never.
        let mut lagging = m(5, false, 0);
        lagging.caught_up = false;
        let pick = [
            m(1, true, 0),
            m(4, false, 300),
            m(3, false, 100),
            lagging,
            m(6, false, 9_000),
        ];
        assert_eq!(decide(1, &pick, &P).unwrap().promoted, Some(3));
        let none = [m(1, true, 0), lagging, m(6, false, 9_000)];
        assert_eq!(decide(1, &none, &P), None);
    }

    #[test]
    fn a_voter_down_past_the_timeout_is_replaced_by_a_healthy_learner() {
        let members = [
            m(1, true, 0),
            m(2, true, 12_000),
            m(3, true, 100),
            m(4, false, 100),
            m(5, false, 50),
        ];
        let c = decide(1, &members, &P).unwrap();
        assert_eq!(c.voters, set(&[1, 3, 5]));
        assert_eq!((c.promoted, c.demoted), (Some(5), Some(2)));

        // Not yet past the timeout: nothing changes.
        let young = [
            m(1, true, 0),
            m(2, true, 9_999),
            m(3, true, 0),
            m(4, false, 0),
        ];
        assert_eq!(decide(1, &young, &P), None);
        // No healthy learner: the silent voter keeps its seat (removing it gains nothing).
        let alone = [
            m(1, true, 0),
            m(2, true, 60_000),
            m(3, true, 0),
            m(4, false, 5_000),
        ];
        assert_eq!(decide(1, &alone, &P), None);
    }

    #[test]
    fn the_leader_is_never_demoted_and_extra_silent_voters_are_shed() {
        // The leader's own silence is meaningless; it is never a candidate for demotion.
        let members = [
            m(1, true, 50_000),
            m(2, true, 0),
            m(3, true, 0),
            m(4, false, 0),
        ];
        assert_eq!(decide(1, &members, &P), None);

        let policy = MembershipPolicy { voters: 1, ..P };
        let shed = [m(1, true, 0), m(2, true, 20_000), m(3, false, 0)];
        let c = decide(1, &shed, &policy).unwrap();
        assert_eq!(
            (c.voters, c.demoted, c.promoted),
            (set(&[1]), Some(2), None)
        );
    }
}
