//! When a follower should campaign at once instead of waiting out its own election timer.
//!
//! After a leader dies, openraft 0.9 lets the follower whose timer fires first campaign, even when
//! its log is shorter. The others refuse it, and it then backs off for `smaller_log_timeout`
//! (2 × election_timeout_max), while the refusing voter keeps waiting for its own timer and then
//! collides with the refused candidate's term: one failover pays two or three election timeouts.
//! The voter that refuses a candidate for its shorter log, having heard no leader for a whole
//! lease, is the one that can win: it campaigns on the spot. Raft's safety does not depend on who
//! campaigns when; this only picks a candidate that can win sooner.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::LogId;

/// No contact recorded yet: the lease counts as long expired.
const NEVER: u64 = 0;

/// A follower's memory of its leader's last AppendEntries and of its own last eager campaign.
#[derive(Debug)]
pub struct EagerCampaign {
    /// The leader lease openraft enforces (its `election_timeout_max`): a voter refuses every
    /// vote while it runs, so campaigning before it ends cannot win.
    lease_ms: u64,
    /// At most one eager campaign per this period (`election_timeout_min`), so that a burst of
    /// vote requests cannot turn into a burst of terms.
    spacing_ms: u64,
    last_append_ms: AtomicU64,
    last_campaign_ms: AtomicU64,
}

impl EagerCampaign {
    pub fn new(lease_ms: u64, spacing_ms: u64) -> Self {
        Self {
            lease_ms,
            spacing_ms,
            last_append_ms: AtomicU64::new(NEVER),
            last_campaign_ms: AtomicU64::new(NEVER),
        }
    }

    /// A current leader's AppendEntries (or heartbeat) arrived.
    pub fn leader_heard(&self, now_ms: u64) {
        self.last_append_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Whether to campaign now, having answered a vote request: refused, the candidate's log
    /// shorter than ours, and no leader heard for a whole lease. Records the campaign when yes.
    pub fn after_vote(
        &self,
        now_ms: u64,
        granted: bool,
        candidate_last_log: Option<&LogId>,
        my_last_log: Option<&LogId>,
    ) -> bool {
        if granted || my_last_log <= candidate_last_log {
            return false;
        }
        let heard = self.last_append_ms.load(Ordering::Relaxed);
        if heard != NEVER && now_ms.saturating_sub(heard) < self.lease_ms {
            return false;
        }
        let last = self.last_campaign_ms.load(Ordering::Relaxed);
        if last != NEVER && now_ms.saturating_sub(last) < self.spacing_ms {
            return false;
        }
        self.last_campaign_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn campaigns_when_refusing_a_shorter_log_after_the_lease() {
        let c = EagerCampaign::new(300, 150);
        c.leader_heard(1_000);
        // The lease still runs: the refusal is the lease's, not a reason to campaign.
        assert!(!c.after_vote(1_200, false, Some(&log(2, 5)), Some(&log(2, 9))));
        // Lease over, candidate behind: campaign.
        assert!(c.after_vote(1_301, false, Some(&log(2, 5)), Some(&log(2, 9))));
    }

    #[test]
    fn leaves_granted_votes_and_candidates_at_least_as_long_alone() {
        let c = EagerCampaign::new(300, 150);
        assert!(!c.after_vote(5_000, true, Some(&log(2, 5)), Some(&log(2, 9))));
        assert!(!c.after_vote(5_000, false, Some(&log(2, 9)), Some(&log(2, 9))));
        assert!(!c.after_vote(5_000, false, Some(&log(3, 1)), Some(&log(2, 9))));
        assert!(!c.after_vote(5_000, false, Some(&log(2, 5)), None));
        // An empty candidate log is shorter than any.
        assert!(c.after_vote(5_000, false, None, Some(&log(1, 1))));
    }

    #[test]
    fn campaigns_at_most_once_per_spacing() {
        let c = EagerCampaign::new(300, 150);
        assert!(c.after_vote(10_000, false, Some(&log(2, 5)), Some(&log(2, 9))));
        assert!(!c.after_vote(10_100, false, Some(&log(2, 5)), Some(&log(2, 9))));
        assert!(c.after_vote(10_150, false, Some(&log(2, 5)), Some(&log(2, 9))));
    }

    #[test]
    fn a_node_that_never_heard_a_leader_may_campaign() {
        let c = EagerCampaign::new(300, 150);
        assert!(c.after_vote(1, false, Some(&log(1, 1)), Some(&log(1, 2))));
    }
}
