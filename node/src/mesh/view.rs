//! The cluster view: who is out there, what each member last advertised, and how alive it looks.
//!
//! A pure state machine: fed adverts and a time value (the observer's clock, in ms), it never reads a
//! clock or touches the network, so the simulator drives it on virtual time and unit tests step it
//! by hand. Liveness is judged on *receive* time, not the sender's timestamp, so a skewed clock on
//! another node cannot make it look alive or dead.
//!
//! A member that stops advertising goes `Up` → `Suspect` (no new work) → `Down`, and is forgotten
//! after a longer silence. An advert from a suspect or down member brings it straight back up.

use std::collections::BTreeMap;

use runmesh_proto::advert::{CapacityAdvert, Liveness, MemberStatus};
use runmesh_proto::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewConfig {
    /// Silence after which a member is suspect (a few missed adverts).
    pub suspect_after_ms: u64,
    /// Silence after which a member is down.
    pub down_after_ms: u64,
    /// Silence after which a member is dropped from the view altogether.
    pub forget_after_ms: u64,
    /// Members kept at most; beyond it a new member evicts the longest-silent down one, or is ignored.
    pub members_max: usize,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self {
            // Five missed adverts: a loaded machine delays a few without the node being gone.
            suspect_after_ms: 5_000,
            down_after_ms: 15_000,
            forget_after_ms: 10 * 60 * 1000,
            members_max: 4096,
        }
    }
}

/// What [`ClusterView::observe`] did with an advert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A member not in the view before.
    New,
    /// A newer advert of a known member.
    Updated,
    /// Not newer than what the view holds (a duplicate or a reordered message): ignored.
    Stale,
    /// An advert claiming to be this node, from elsewhere: ignored.
    NotSelf,
    /// The view is full of live members: ignored.
    Full,
    /// An incarnation (a process start time) later than the observer's clock allows: ignored, or
    /// one such advert would outrank every real one of that member until the clock caught up.
    FromTheFuture,
}

/// How far a member's incarnation (its start time, on its clock) may be ahead of the observer's
/// clock: generous clock skew, not more.
pub const INCARNATION_AHEAD_MAX_MS: u64 = 10 * 60 * 1000;

/// A liveness change [`ClusterView::tick`] or [`ClusterView::observe`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub node: NodeId,
    /// `None`: the member was not in the view.
    pub from: Option<Liveness>,
    /// `None`: the member was forgotten.
    pub to: Option<Liveness>,
}

#[derive(Clone, Debug)]
struct Member {
    advert: CapacityAdvert,
    heard_at_ms: u64,
    liveness: Liveness,
}

/// The view one node holds of the cluster, itself included.
#[derive(Clone, Debug)]
pub struct ClusterView {
    cfg: ViewConfig,
    self_id: NodeId,
    members: BTreeMap<NodeId, Member>,
}

impl ClusterView {
    pub fn new(self_id: NodeId, cfg: ViewConfig) -> Self {
        Self {
            cfg,
            self_id,
            members: BTreeMap::new(),
        }
    }

    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    pub fn config(&self) -> ViewConfig {
        self.cfg
    }

    /// Records this node's own advert. The node is always up in its own view.
    pub fn observe_self(&mut self, advert: CapacityAdvert, now_ms: u64) {
        let id = self.self_id;
        self.members.insert(
            id,
            Member {
                advert: CapacityAdvert {
                    raft_node_id: id,
                    ..advert
                },
                heard_at_ms: now_ms,
                liveness: Liveness::Up,
            },
        );
    }

    /// Records an advert heard from another node at `now_ms`.
    pub fn observe(
        &mut self,
        advert: CapacityAdvert,
        now_ms: u64,
    ) -> (Observed, Option<Transition>) {
        let id = advert.raft_node_id;
        if id == self.self_id {
            return (Observed::NotSelf, None);
        }
        if advert.incarnation > now_ms.saturating_add(INCARNATION_AHEAD_MAX_MS) {
            return (Observed::FromTheFuture, None);
        }
        if let Some(m) = self.members.get_mut(&id) {
            if advert.version() <= m.advert.version() {
                return (Observed::Stale, None);
            }
            let from = m.liveness;
            m.advert = advert;
            m.heard_at_ms = m.heard_at_ms.max(now_ms);
            m.liveness = Liveness::Up;
            let t = (from != Liveness::Up).then_some(Transition {
                node: id,
                from: Some(from),
                to: Some(Liveness::Up),
            });
            return (Observed::Updated, t);
        }
        if self.members.len() >= self.cfg.members_max && !self.evict_one_down() {
            return (Observed::Full, None);
        }
        self.members.insert(
            id,
            Member {
                advert,
                heard_at_ms: now_ms,
                liveness: Liveness::Up,
            },
        );
        let t = Transition {
            node: id,
            from: None,
            to: Some(Liveness::Up),
        };
        (Observed::New, Some(t))
    }

    /// Drops the down member silent the longest; false when there is none.
    fn evict_one_down(&mut self) -> bool {
        let victim = self
            .members
            .iter()
            .filter(|(_, m)| m.liveness == Liveness::Down)
            .min_by_key(|(_, m)| m.heard_at_ms)
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                self.members.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Re-judges every member's liveness at `now_ms`; returns what changed.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        let cfg = self.cfg;
        let mut changes = Vec::new();
        let mut forget = Vec::new();
        for (id, m) in &mut self.members {
            if *id == self.self_id {
                continue;
            }
            let silent = now_ms.saturating_sub(m.heard_at_ms);
            if silent >= cfg.forget_after_ms {
                forget.push(*id);
                continue;
            }
            let now = judge(cfg, silent);
            if now != m.liveness {
                changes.push(Transition {
                    node: *id,
                    from: Some(m.liveness),
                    to: Some(now),
                });
                m.liveness = now;
            }
        }
        for id in forget {
            if let Some(m) = self.members.remove(&id) {
                changes.push(Transition {
                    node: id,
                    from: Some(m.liveness),
                    to: None,
                });
            }
        }
        changes
    }

    pub fn liveness(&self, id: NodeId) -> Option<Liveness> {
        self.members.get(&id).map(|m| m.liveness)
    }

    pub fn advert(&self, id: NodeId) -> Option<&CapacityAdvert> {
        self.members.get(&id).map(|m| &m.advert)
    }

    /// When the member's latest advert arrived, on the observer's clock.
    pub fn heard_at_ms(&self, id: NodeId) -> Option<u64> {
        self.members.get(&id).map(|m| m.heard_at_ms)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adverts of the members that may take new work (up), in node id order.
    pub fn up(&self) -> impl Iterator<Item = &CapacityAdvert> + '_ {
        self.members
            .values()
            .filter(|m| m.liveness == Liveness::Up)
            .map(|m| &m.advert)
    }

    /// Every member with its liveness, in node id order. Liveness is as of the last [`Self::tick`].
    pub fn members(&self, now_ms: u64) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|(id, m)| MemberStatus {
                advert: m.advert.clone(),
                liveness: m.liveness,
                silent_ms: if *id == self.self_id {
                    0
                } else {
                    now_ms.saturating_sub(m.heard_at_ms)
                },
            })
            .collect()
    }
}

fn judge(cfg: ViewConfig, silent_ms: u64) -> Liveness {
    if silent_ms >= cfg.down_after_ms {
        Liveness::Down
    } else if silent_ms >= cfg.suspect_after_ms {
        Liveness::Suspect
    } else {
        Liveness::Up
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn advert(id: NodeId, seq: u64) -> CapacityAdvert {
        CapacityAdvert {
            peer_id: format!("peer-{id}"),
            raft_node_id: id,
            region: None,
            gpus: Vec::new(),
            memory_total_mb: 0,
            memory_free_mb: 0,
            slots: 2,
            running: 0,
            queued: 0,
            apps: Vec::new(),
            api_addr: None,
            raft_addr: None,
            blob_addr: None,
            p2p_addrs: Vec::new(),
            timestamp_ms: 0,
            incarnation: 1,
            seq,
        }
    }

    fn cfg() -> ViewConfig {
        ViewConfig {
            suspect_after_ms: 3_000,
            down_after_ms: 10_000,
            forget_after_ms: 60_000,
            members_max: 8,
        }
    }

    #[test]
    fn a_silent_member_goes_suspect_then_down_then_is_forgotten() {
        let mut v = ClusterView::new(1, cfg());
        let (obs, t) = v.observe(advert(2, 1), 1_000);
        assert_eq!(obs, Observed::New);
        assert_eq!(t.unwrap().to, Some(Liveness::Up));
        assert!(v.tick(3_999).is_empty());
        assert_eq!(v.liveness(2), Some(Liveness::Up));
        let t = v.tick(4_000);
        assert_eq!(
            t,
            vec![Transition {
                node: 2,
                from: Some(Liveness::Up),
                to: Some(Liveness::Suspect)
            }]
        );
        assert_eq!(v.up().count(), 0);
        assert!(v.tick(5_000).is_empty());
        assert_eq!(v.tick(11_000)[0].to, Some(Liveness::Down));
        assert_eq!(v.members(11_000)[0].silent_ms, 10_000);
        let gone = v.tick(61_000);
        assert_eq!(gone[0].to, None);
        assert!(v.is_empty());
    }

    #[test]
    fn an_advert_brings_a_member_back_and_stale_ones_are_ignored() {
        let mut v = ClusterView::new(1, cfg());
        v.observe(advert(2, 5), 0);
        v.tick(20_000);
        assert_eq!(v.liveness(2), Some(Liveness::Down));
        // A reordered older advert neither refreshes nor revives.
        assert_eq!(v.observe(advert(2, 4), 20_000).0, Observed::Stale);
        assert_eq!(v.observe(advert(2, 5), 20_000).0, Observed::Stale);
        assert_eq!(v.liveness(2), Some(Liveness::Down));
        let (obs, t) = v.observe(advert(2, 6), 20_001);
        assert_eq!(obs, Observed::Updated);
        assert_eq!(
            t,
            Some(Transition {
                node: 2,
                from: Some(Liveness::Down),
                to: Some(Liveness::Up)
            })
        );
        assert_eq!(v.advert(2).unwrap().seq, 6);
        assert_eq!(v.heard_at_ms(2), Some(20_001));
        // A restart (new incarnation) supersedes a higher sequence number.
        let mut restarted = advert(2, 0);
        restarted.incarnation = 2;
        assert_eq!(v.observe(restarted, 20_002).0, Observed::Updated);
    }

    #[test]
    fn the_observer_is_always_up_and_cannot_be_impersonated() {
        let mut v = ClusterView::new(1, cfg());
        v.observe_self(advert(1, 1), 0);
        assert_eq!(v.observe(advert(1, 99), 0).0, Observed::NotSelf);
        assert!(v.tick(1_000_000).is_empty());
        assert_eq!(v.liveness(1), Some(Liveness::Up));
        assert_eq!(v.advert(1).unwrap().seq, 1);
        assert_eq!(v.members(1_000_000)[0].silent_ms, 0);
        // The own advert is filed under the view's id whatever it says.
        v.observe_self(advert(7, 2), 0);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn a_full_view_evicts_down_members_only() {
        let mut v = ClusterView::new(
            1,
            ViewConfig {
                members_max: 2,
                ..cfg()
            },
        );
        v.observe(advert(2, 1), 0);
        v.observe(advert(3, 1), 5_000);
        assert_eq!(v.observe(advert(4, 1), 5_000).0, Observed::Full);
        v.tick(10_000);
        assert_eq!(v.liveness(2), Some(Liveness::Down));
        assert_eq!(v.observe(advert(4, 1), 10_000).0, Observed::New);
        assert_eq!(v.liveness(2), None);
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn an_incarnation_from_the_future_is_ignored() {
        let mut v = ClusterView::new(1, cfg());
        let now = 1_000_000_000;
        let mut a = advert(2, 1);
        a.incarnation = now - 5;
        assert_eq!(v.observe(a.clone(), now).0, Observed::New);
        // A forged or broken advert cannot outrank the member's real ones for ever.
        let mut forged = advert(2, 1);
        forged.incarnation = u64::MAX;
        forged.slots = 0;
        assert_eq!(v.observe(forged, now).0, Observed::FromTheFuture);
        assert_eq!(v.advert(2).unwrap().slots, 2);
        // Skew within the bound is fine.
        let mut skewed = advert(2, 1);
        skewed.incarnation = now + INCARNATION_AHEAD_MAX_MS;
        assert_eq!(v.observe(skewed, now).0, Observed::Updated);
    }

    #[test]
    fn time_going_backwards_does_not_underflow() {
        let mut v = ClusterView::new(1, cfg());
        v.observe(advert(2, 1), 10_000);
        assert!(v.tick(5_000).is_empty());
        assert_eq!(v.members(5_000)[0].silent_ms, 0);
    }
}
