//! Pre-vote: a voter campaigns only once a majority agrees that the leader is gone.
//!
//! openraft 0.9 has no pre-vote. A voter cut off from the others keeps campaigning and raises its
//! term each time; when the cut heals, the leader's next AppendEntries meets that higher term and
//! the healthy leader steps down, and the mesh pays one or more elections for a node that only
//! came back (the simulator's `heal_elections`). So openraft's own election timer is off
//! (`Config::enable_elect = false`) and [`PreVote::run`] stands in for it: after the same wait
//! openraft would use, it asks every other voter whether it would vote ([`RpcKind::PreVote`],
//! which changes nothing at the receiver) and calls `trigger().elect()` only with a majority of
//! yeses. A voter says yes only if it has heard no leader for a whole leader lease and the
//! candidate's log is at least as long as its own, which are the conditions under which it would
//! grant the real vote, so a node that cannot win never raises its term.
//!
//! A peer that does not know the pre-vote (an older build) answers with an error, which counts
//! as a no: during a rolling upgrade the older voters still campaign on openraft's timer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use runmesh_proto::{codec, NodeId};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::runtime::ThreadRng;
use crate::transport::{RaftTransport, RpcKind};
use crate::types::{LogId, Raft};

/// "Would you vote for me?": the term the candidate would campaign in and its last log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub term: u64,
    pub last_log_id: Option<LogId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
}

/// What a voter knows of itself when a pre-vote request arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub leading: bool,
    /// Holding back from votes (a damaged log getting its entries back).
    pub abstaining: bool,
    pub term: u64,
    pub last_log_id: Option<LogId>,
}

/// The receiver's rule: yes only when it would grant the real vote and believes the leader gone.
pub fn would_grant(
    req: &PreVoteRequest,
    me: &Standing,
    since_contact: Duration,
    lease: Duration,
) -> bool {
    !me.leading
        && !me.abstaining
        && since_contact >= lease
        && req.term >= me.term
        && req.last_log_id >= me.last_log_id
}

/// One node's pre-vote: when it last heard a leader, and when its election timer last reset.
#[derive(Debug)]
pub struct PreVote {
    /// openraft's leader lease (`election_timeout_max`): a voter refuses real votes while it
    /// runs, so it refuses pre-votes too.
    lease: Duration,
    election_timeout_ms: (u64, u64),
    base: Instant,
    /// Milliseconds after `base` of the last AppendEntries or snapshot of a leader (or of this
    /// node leading); what a pre-vote answer goes by. 0 is the start, which counts as contact so
    /// that a node that just (re)started does not help unseat a leader it has not heard yet.
    leader_heard_ms: AtomicU64,
    /// The same, or a vote granted, or this node's own campaign: what the timer waits from.
    /// Apart from `leader_heard_ms` because a candidate's own failed campaign must not make it
    /// refuse the next candidate (two candidates would then refuse each other forever).
    timer_reset_ms: AtomicU64,
    abstain: Arc<AtomicBool>,
}

impl PreVote {
    /// `election_timeout_ms` is openraft's (min, max); `abstain` is set while the node must not
    /// vote or campaign.
    pub fn new(election_timeout_ms: (u64, u64), abstain: Arc<AtomicBool>) -> Self {
        Self {
            lease: Duration::from_millis(election_timeout_ms.1),
            election_timeout_ms,
            base: Instant::now(),
            leader_heard_ms: AtomicU64::new(0),
            timer_reset_ms: AtomicU64::new(0),
            abstain,
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.base + Duration::from_millis(ms.load(Ordering::Relaxed))
    }

    /// A leader's AppendEntries or snapshot arrived, or this node leads.
    pub fn leader_heard(&self) {
        let now = self.now_ms();
        self.leader_heard_ms.fetch_max(now, Ordering::Relaxed);
        self.timer_reset_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// This node granted a vote or campaigned: the next campaign waits a whole timeout.
    pub fn reset_timer(&self) {
        self.timer_reset_ms
            .fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    fn abstaining(&self) -> bool {
        self.abstain.load(Ordering::Acquire)
    }

    /// Answers a pre-vote request on `raft`'s current state.
    pub fn answer(&self, raft: &Raft, req: &PreVoteRequest) -> PreVoteResponse {
        let me = standing(raft, self.abstaining());
        let since = self.at(&self.leader_heard_ms).elapsed();
        let granted = would_grant(req, &me, since, self.lease);
        tracing::debug!(?req, ?me, ?since, granted, "pre-vote request");
        PreVoteResponse { granted }
    }

    /// The election timer: runs until `raft` shuts down. Waits what openraft's own timer would
    /// (a lease plus a random election timeout after the last contact while a leader was known,
    /// the random timeout alone otherwise), then polls the other voters and campaigns on a
    /// majority.
    pub async fn run(self: Arc<Self>, raft: Raft, me: NodeId, transport: Arc<dyn RaftTransport>) {
        let mut metrics = raft.metrics();
        let mut retrying = false;
        loop {
            let (min, max) = self.election_timeout_ms;
            let mut wait = Duration::from_millis(ThreadRng.gen_range(min..=max.max(min)));
            if !retrying && metrics.borrow().vote.is_committed() {
                wait += self.lease;
            }
            let reset = self.at(&self.timer_reset_ms);
            tokio::time::sleep_until(reset + wait).await;
            if metrics.has_changed().is_err() {
                return; // Raft shut down.
            }
            if self.at(&self.timer_reset_ms) != reset {
                retrying = false;
                continue;
            }
            let voters: BTreeMap<NodeId, String> = {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                membership
                    .voter_ids()
                    .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
                    .collect()
            };
            let mine = standing(&raft, self.abstaining());
            if mine.leading {
                self.leader_heard();
                retrying = false;
                continue;
            }
            if !voters.contains_key(&me) || mine.abstaining {
                self.reset_timer();
                retrying = false;
                continue;
            }
            let req = PreVoteRequest {
                candidate: me,
                term: mine.term + 1,
                last_log_id: mine.last_log_id,
            };
            let yes = 1 + poll(&transport, &voters, me, &req, Duration::from_millis(min)).await;
            let majority = voters.len() / 2 + 1;
            if yes >= majority {
                tracing::info!(
                    term = req.term,
                    yes,
                    voters = voters.len(),
                    "no leader heard and a majority agrees: campaigning"
                );
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            } else {
                tracing::debug!(
                    term = req.term,
                    yes,
                    voters = voters.len(),
                    "no leader heard, but no majority agrees: not campaigning"
                );
            }
            self.reset_timer();
            retrying = true;
        }
    }
}

/// The yeses of the other voters, each asked once with `timeout` to answer.
async fn poll(
    transport: &Arc<dyn RaftTransport>,
    voters: &BTreeMap<NodeId, String>,
    me: NodeId,
    req: &PreVoteRequest,
    timeout: Duration,
) -> usize {
    let Ok(payload) = codec::encode(req) else {
        return 0;
    };
    let asks = voters
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, addr)| {
            let call = transport.call(*id, addr, RpcKind::PreVote, payload.clone());
            async move {
                let reply = tokio::time::timeout(timeout, call).await.ok()?.ok()?;
                let resp: PreVoteResponse = codec::decode(&reply).ok()?;
                resp.granted.then_some(())
            }
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .count()
}

/// This node's term, last log entry and role as openraft reports them.
fn standing(raft: &Raft, abstaining: bool) -> Standing {
    let m = raft.metrics();
    let m = m.borrow();
    Standing {
        leading: m.state == openraft::ServerState::Leader,
        abstaining,
        term: m.current_term,
        last_log_id: raft.data_metrics().borrow().last_log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn follower(term: u64, last: Option<LogId>) -> Standing {
        Standing {
            leading: false,
            abstaining: false,
            term,
            last_log_id: last,
        }
    }

    const LEASE: Duration = Duration::from_millis(1400);

    fn ask(term: u64, last: Option<LogId>) -> PreVoteRequest {
        PreVoteRequest {
            candidate: 2,
            term,
            last_log_id: last,
        }
    }

    #[test]
    fn grants_a_candidate_at_least_as_long_once_the_lease_is_over() {
        let me = follower(3, Some(log(3, 10)));
        let over = LEASE;
        assert!(would_grant(&ask(4, Some(log(3, 10))), &me, over, LEASE));
        assert!(would_grant(&ask(4, Some(log(3, 12))), &me, over, LEASE));
        assert!(would_grant(&ask(4, Some(log(4, 1))), &me, over, LEASE));
    }

    #[test]
    fn refuses_while_a_leader_is_heard() {
        let me = follower(3, Some(log(3, 10)));
        let heard = LEASE - Duration::from_millis(1);
        assert!(!would_grant(&ask(4, Some(log(3, 10))), &me, heard, LEASE));
    }

    #[test]
    fn refuses_a_shorter_log_or_a_stale_term() {
        let me = follower(5, Some(log(3, 10)));
        let over = LEASE * 2;
        assert!(!would_grant(&ask(6, Some(log(3, 9))), &me, over, LEASE));
        assert!(!would_grant(&ask(6, Some(log(2, 40))), &me, over, LEASE));
        assert!(!would_grant(&ask(6, None), &me, over, LEASE));
        assert!(!would_grant(&ask(4, Some(log(3, 10))), &me, over, LEASE));
    }

    #[test]
    fn a_leader_or_an_abstaining_voter_says_no() {
        let over = LEASE * 2;
        let mut me = follower(3, Some(log(3, 10)));
        me.leading = true;
        assert!(!would_grant(&ask(4, Some(log(3, 10))), &me, over, LEASE));
        me.leading = false;
        me.abstaining = true;
        assert!(!would_grant(&ask(4, Some(log(3, 10))), &me, over, LEASE));
    }
}
