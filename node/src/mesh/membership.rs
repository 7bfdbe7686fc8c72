//! Who votes: the leader's decision, as a pure function, on which members are Raft voters.
//!
//! Joining nodes enter as learners (they hold the full log, do not vote). While there are fewer
//! voters than configured, the leader promotes a healthy, caught-up learner; when a voter has been
//! unreachable longer than `voter_down_after_ms`, a healthy learner takes its seat (the old voter
//! stays a learner and may be promoted again later). One change at a time, so every change is a
//! small joint-consensus step the remaining voters can commit.
//!
//! Voters are spread over regions: a promotion prefers the learner whose region holds the fewest
//! voters, and when the loss of one region would leave the rest without a majority, a voter of the
//! most crowded region gives its seat to a healthy learner of an emptier one, while the members
//! allow it. A member with no region counts as a region of its own.
//!
//! A draining member (`runmesh node drain`) is never promoted, and if it votes, its seat goes to a
//! healthy learner (the leader's own seat too: it then steps down), or simply ends when there are
//! more voters than wanted.
//!
//! Liveness comes in as data ([`MemberHealth::silent_ms`]): today from the Raft transport (time since
//! the leader last got an answer from the member); gossip liveness can feed the same field.

use std::collections::{BTreeMap, BTreeSet};

use runmesh_proto::NodeId;

/// How long a silent voter keeps its seat by default (`--voter-down-after-ms`).
pub const DEFAULT_VOTER_DOWN_AFTER_MS: u64 = 10_000;

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
            voter_down_after_ms: DEFAULT_VOTER_DOWN_AFTER_MS,
            learner_up_within_ms: 2_000,
        }
    }
}

/// What the leader knows about one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    pub id: NodeId,
    pub voter: bool,
    /// Milliseconds since the leader last heard from it (0 for the leader itself).
    pub silent_ms: u64,
    /// Its log is close enough to the leader's that promoting it will not stall commits.
    pub caught_up: bool,
    /// The region the member declared (its replicated member record); `None` is a region of its own.
    pub region: Option<String>,
    /// The operator drains it (or removed it): it is never promoted, and a voter seat it holds
    /// moves to a healthy learner first.
    pub draining: bool,
}

/// A membership change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoterChange {
    /// The complete new voter set.
    pub voters: BTreeSet<NodeId>,
    pub promoted: Option<NodeId>,
    pub demoted: Option<NodeId>,
}

/// The failure domain a member belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Domain<'a> {
    Region(&'a str),
    /// No region declared: alone in a domain of its own.
    Alone(NodeId),
}

fn domain(m: &MemberHealth) -> Domain<'_> {
    match m.region.as_deref() {
        Some(r) => Domain::Region(r),
        None => Domain::Alone(m.id),
    }
}

/// Voters per domain, in a voter set.
fn domain_counts<'a>(
    members: &'a [MemberHealth],
    voters: &BTreeSet<NodeId>,
) -> BTreeMap<Domain<'a>, usize> {
    let mut counts = BTreeMap::new();
    for m in members.iter().filter(|m| voters.contains(&m.id)) {
        *counts.entry(domain(m)).or_insert(0) += 1;
    }
    counts
}

/// How crowded a voter set is: its domains' voter counts, largest first. Smaller is better spread.
fn crowding(counts: &BTreeMap<Domain<'_>, usize>) -> Vec<usize> {
    let mut v: Vec<usize> = counts.values().copied().collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// Decides the next voter change, if any. `leader` is never demoted. Deterministic: among equal
/// candidates the learner from the domain with the fewest voters wins, then the freshest (least
/// silent), then the lowest id.
pub fn decide(
    leader: NodeId,
    members: &[MemberHealth],
    policy: &MembershipPolicy,
) -> Option<VoterChange> {
    let voters: BTreeSet<NodeId> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    let candidates: Vec<&MemberHealth> = members
        .iter()
        .filter(|m| {
            !m.voter
                && m.id != leader
                && !m.draining
                && m.caught_up
                && m.silent_ms <= policy.learner_up_within_ms
        })
        .collect();
    // The candidate that spreads a voter set best.
    let best_for = |set: &BTreeSet<NodeId>| -> Option<NodeId> {
        let counts = domain_counts(members, set);
        candidates
            .iter()
            .min_by_key(|m| {
                let crowd = counts.get(&domain(m)).copied().unwrap_or(0);
                (crowd, m.silent_ms, m.id)
            })
            .map(|m| m.id)
    };

    // The longest-silent voter past the timeout goes first.
    let down = members
        .iter()
        .filter(|m| m.voter && m.id != leader && m.silent_ms >= policy.voter_down_after_ms)
        .max_by_key(|m| (m.silent_ms, std::cmp::Reverse(m.id)))
        .map(|m| m.id);

    let target = policy.voters.max(1);
    if let Some(down) = down {
        let mut rest = voters.clone();
        rest.remove(&down);
        if voters.len() <= target {
            if let Some(up) = best_for(&rest) {
                rest.insert(up);
                return Some(VoterChange {
                    voters: rest,
                    promoted: Some(up),
                    demoted: Some(down),
                });
            }
            // No healthy learner: the silent voter keeps its seat (removing it gains nothing).
            return None;
        }
        // More voters than wanted (the operator lowered --voters): shed a silent one first.
        return Some(VoterChange {
            voters: rest,
            promoted: None,
            demoted: Some(down),
        });
    }
    // A draining voter's seat moves next; the leader's own last, so that it hands over the others'
    // before it steps down.
    let leaving = members
        .iter()
        .filter(|m| m.voter && m.draining)
        .min_by_key(|m| (m.id == leader, m.id))
        .map(|m| m.id);
    if let Some(leaving) = leaving {
        let mut rest = voters.clone();
        rest.remove(&leaving);
        if let Some(up) = best_for(&rest) {
            rest.insert(up);
            return Some(VoterChange {
                voters: rest,
                promoted: Some(up),
                demoted: Some(leaving),
            });
        }
        if voters.len() > target {
            return Some(VoterChange {
                voters: rest,
                promoted: None,
                demoted: Some(leaving),
            });
        }
        // Nobody to take the seat: it stays until a learner can.
    }
    if voters.len() < target {
        let up = best_for(&voters)?;
        let mut next = voters.clone();
        next.insert(up);
        return Some(VoterChange {
            voters: next,
            promoted: Some(up),
            demoted: None,
        });
    }
    rebalance(leader, members, &voters, &best_for)
}

/// When losing the most crowded domain would leave the other voters short of a majority, one
/// voter of that domain gives its seat to the best-spreading learner, if that makes the set less
/// crowded. Never the leader; each change strictly lowers [`crowding`], so it settles.
fn rebalance(
    leader: NodeId,
    members: &[MemberHealth],
    voters: &BTreeSet<NodeId>,
    best_for: &dyn Fn(&BTreeSet<NodeId>) -> Option<NodeId>,
) -> Option<VoterChange> {
    let counts = domain_counts(members, voters);
    let (crowded, most) = counts
        .iter()
        .max_by_key(|(d, n)| (**n, std::cmp::Reverse(*d)))?;
    if 2 * most < voters.len() {
        return None;
    }
    // The seat to give up: the most silent non-leader voter of the crowded domain, then highest id.
    let seat = members
        .iter()
        .filter(|m| m.voter && m.id != leader && domain(m) == *crowded)
        .max_by_key(|m| (m.silent_ms, m.id))?
        .id;
    let mut next = voters.clone();
    next.remove(&seat);
    let up = best_for(&next)?;
    next.insert(up);
    if crowding(&domain_counts(members, &next)) >= crowding(&counts) {
        return None;
    }
    Some(VoterChange {
        voters: next,
        promoted: Some(up),
        demoted: Some(seat),
    })
}

/// The next step of taking removed members (`is_removed`) out of the membership, once
/// [`decide`] has no seat to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The voter set without the removed voters nobody could replace (the operator asked for them
    /// gone).
    Voters(BTreeSet<NodeId>),
    /// Removed learners to take out of the membership altogether.
    Learners(BTreeSet<NodeId>),
}

/// Removed voters lose their seats first, but only while the voters left form a majority that
/// answers: otherwise the change could not commit, and every write after it would wait. Then the
/// removed learners leave.
pub fn removal(
    members: &[MemberHealth],
    is_removed: &dyn Fn(NodeId) -> bool,
    policy: &MembershipPolicy,
) -> Option<Removal> {
    let voters: BTreeSet<NodeId> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    if voters.iter().any(|v| is_removed(*v)) {
        let rest: BTreeSet<NodeId> = voters.iter().copied().filter(|v| !is_removed(*v)).collect();
        let answering = members
            .iter()
            .filter(|m| rest.contains(&m.id) && m.silent_ms < policy.voter_down_after_ms)
            .count();
        if rest.is_empty() || 2 * answering <= rest.len() {
            return None;
        }
        return Some(Removal::Voters(rest));
    }
    let gone: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| !m.voter && is_removed(m.id))
        .map(|m| m.id)
        .collect();
    (!gone.is_empty()).then_some(Removal::Learners(gone))
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
            region: None,
            draining: false,
        }
    }

    fn r(id: NodeId, voter: bool, silent_ms: u64, region: &str) -> MemberHealth {
        MemberHealth {
            region: Some(region.into()),
            ..m(id, voter, silent_ms)
        }
    }

    /// Applies the policy's changes until it has none left (bounded), as the leader's loop would.
    fn settle(leader: NodeId, members: &mut [MemberHealth], policy: &MembershipPolicy) -> usize {
        for changes in 0..20 {
            let Some(c) = decide(leader, members, policy) else {
                return changes;
            };
            for m in members.iter_mut() {
                m.voter = c.voters.contains(&m.id);
            }
        }
        panic!("the voter set never settles: {members:?}");
    }

    fn crowded_region(members: &[MemberHealth]) -> usize {
        let mut counts = BTreeMap::new();
        for m in members.iter().filter(|m| m.voter) {
            *counts.entry(m.region.clone()).or_insert(0) += 1;
        }
        counts.values().copied().max().unwrap_or(0)
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
            lagging.clone(),
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

    #[test]
    fn promotions_prefer_a_region_without_voters() {
        // The fresher learner shares the leader's region; the other one brings a new region.
        let members = [
            r(1, true, 0, "a"),
            r(2, false, 0, "a"),
            r(3, false, 900, "b"),
        ];
        assert_eq!(decide(1, &members, &P).unwrap().promoted, Some(3));
        // A member without a region is a region of its own.
        let members = [r(1, true, 0, "a"), r(2, false, 0, "a"), m(3, false, 900)];
        assert_eq!(decide(1, &members, &P).unwrap().promoted, Some(3));
    }

    #[test]
    fn a_region_holding_a_majority_gives_a_seat_to_an_emptier_one() {
        let members = [
            r(1, true, 0, "a"),
            r(2, true, 0, "a"),
            r(3, true, 0, "b"),
            r(4, false, 0, "b"),
            r(5, false, 0, "c"),
        ];
        let c = decide(1, &members, &P).unwrap();
        assert_eq!((c.promoted, c.demoted), (Some(5), Some(2)));
        assert_eq!(c.voters, set(&[1, 3, 5]));
        // The leader keeps its seat even when it sits in the crowded region.
        let c = decide(2, &members, &P).unwrap();
        assert_eq!((c.promoted, c.demoted), (Some(5), Some(1)));

        // Spread already: nothing moves (no churn between equally good sets).
        let spread = [
            r(1, true, 0, "a"),
            r(2, true, 0, "b"),
            r(3, true, 0, "c"),
            r(4, false, 0, "a"),
            r(5, false, 0, "d"),
        ];
        assert_eq!(decide(1, &spread, &P), None);
        // One region only: no set is better, nothing moves.
        let one = [
            r(1, true, 0, "a"),
            r(2, true, 0, "a"),
            r(3, true, 0, "a"),
            r(4, false, 0, "a"),
        ];
        assert_eq!(decide(1, &one, &P), None);
        // The emptier region's learner is silent or behind: it is not promoted.
        let mut behind = r(5, false, 0, "c");
        behind.caught_up = false;
        let unhealthy = [
            r(1, true, 0, "a"),
            r(2, true, 0, "a"),
            r(3, true, 0, "b"),
            behind,
            r(6, false, 5_000, "c"),
        ];
        assert_eq!(decide(1, &unhealthy, &P), None);
    }

    #[test]
    fn a_lost_region_is_replaced_and_the_spread_comes_back_when_it_returns() {
        // Two nodes in each of three regions, one voter per region; region c goes dark.
        let mut members = [
            r(1, true, 0, "a"),
            r(2, false, 0, "a"),
            r(3, true, 0, "b"),
            r(4, false, 0, "b"),
            r(5, true, 20_000, "c"),
            r(6, false, 20_000, "c"),
        ];
        let c = decide(1, &members, &P).unwrap();
        assert_eq!(c.demoted, Some(5));
        assert!(matches!(c.promoted, Some(2 | 4)), "{c:?}");
        assert_eq!(settle(1, &mut members, &P), 1, "one change, then calm");

        // Region c is back: one of its members takes a seat from the doubled region.
        for m in members
            .iter_mut()
            .filter(|m| m.region.as_deref() == Some("c"))
        {
            m.silent_ms = 0;
        }
        assert_eq!(settle(1, &mut members, &P), 1);
        assert_eq!(crowded_region(&members), 1, "{members:?}");
    }

    #[test]
    fn five_voters_over_three_regions_leave_a_majority_after_any_region_is_lost() {
        for leader in [1, 4, 5] {
            // Voters formed from the first five ids: 3 in a, 2 in b.
            let mut members: Vec<MemberHealth> = (1..=9)
                .map(|id| {
                    let region = ["a", "b", "c"][(id as usize - 1) / 3];
                    r(id, id <= 5, 0, region)
                })
                .collect();
            let policy = MembershipPolicy { voters: 5, ..P };
            settle(leader, &mut members, &policy);
            let voters = members.iter().filter(|m| m.voter).count();
            assert_eq!(voters, 5);
            assert!(
                2 * crowded_region(&members) < voters,
                "leader {leader}: {members:?}"
            );
        }
    }

    fn draining(mut m: MemberHealth) -> MemberHealth {
        m.draining = true;
        m
    }

    #[test]
    fn a_draining_voter_gives_its_seat_to_a_learner_and_is_never_promoted_again() {
        let mut members = vec![
            m(1, true, 0),
            draining(m(2, true, 0)),
            m(3, true, 0),
            m(4, false, 0),
        ];
        let c = decide(1, &members, &P).unwrap();
        assert_eq!((c.promoted, c.demoted), (Some(4), Some(2)));
        assert_eq!(settle(1, &mut members, &P), 1);
        assert!(!members[1].voter && members[3].voter);
        // Short of voters with only the drained node left to promote: it stays a learner.
        members[2].voter = false;
        members[2].silent_ms = 60_000;
        assert_eq!(decide(1, &members, &P), None);
    }

    #[test]
    fn a_draining_leader_hands_its_own_seat_over_last() {
        let mut members = vec![
            draining(m(1, true, 0)),
            draining(m(2, true, 0)),
            m(3, true, 0),
            m(4, false, 0),
            m(5, false, 0),
        ];
        let first = decide(1, &members, &P).unwrap();
        assert_eq!(first.demoted, Some(2), "the other drained voter goes first");
        settle(1, &mut members, &P);
        let voters: BTreeSet<NodeId> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        assert_eq!(voters, set(&[3, 4, 5]));
    }

    #[test]
    fn a_drained_voter_with_nobody_to_take_its_seat_keeps_it_unless_there_are_too_many() {
        let members = [m(1, true, 0), draining(m(2, true, 0)), m(3, true, 0)];
        assert_eq!(decide(1, &members, &P), None);
        let two = MembershipPolicy { voters: 2, ..P };
        let c = decide(1, &members, &two).unwrap();
        assert_eq!((c.promoted, c.demoted), (None, Some(2)));
    }

    #[test]
    fn a_removed_voter_loses_its_seat_only_while_the_rest_can_commit() {
        let removed = |id: NodeId| id == 2;
        // 3 is down: dropping 2 would leave {1, 3}, half of which answers.
        let members = [m(1, true, 0), m(2, true, 0), m(3, true, 60_000)];
        assert_eq!(removal(&members, &removed, &P), None);
        let members = [m(1, true, 0), m(2, true, 0), m(3, true, 0), m(4, false, 0)];
        assert_eq!(
            removal(&members, &removed, &P),
            Some(Removal::Voters(set(&[1, 3])))
        );
        // Once a learner, it leaves the membership.
        let members = [m(1, true, 0), m(2, false, 0), m(3, true, 0)];
        assert_eq!(
            removal(&members, &removed, &P),
            Some(Removal::Learners(set(&[2])))
        );
        assert_eq!(removal(&members, &|_| false, &P), None);
        // The last voter is never removed.
        assert_eq!(removal(&[m(2, true, 0)], &removed, &P), None);
    }
}
