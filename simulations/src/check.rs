//! The invariants, checked as the run goes (every applied command on every replica, every client
//! observation, every leader) and once more at the end.

use std::collections::{BTreeMap, BTreeSet};

use runmesh_proto::{JobState, NodeId, Outcome, RequestId};
use serde::Serialize;

/// Which invariant broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// An acknowledged submit (or an acknowledged completion) is missing from the final state.
    AcknowledgedLost,
    /// A job was not terminal `drain_s` after every fault healed.
    NotTerminal,
    /// A terminal result a client saw later read differently.
    ResultChanged,
    /// More than one completion recorded for one job.
    DoubleCompletion,
    /// Two leaders in one term.
    TwoLeaders,
    /// A job reported COMPLETED after it was CANCELLED.
    CompletedAfterCancel,
    /// Replicas applied different commands at one log position, or ended with different states.
    ReplicasDiverged,
}

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub at_ms: u64,
    pub detail: String,
}

/// Most violations kept in detail; more are only counted.
const VIOLATIONS_KEPT: usize = 200;

#[derive(Default)]
pub struct Checker {
    pub violations: Vec<Violation>,
    pub violations_total: u64,
    /// Per job, the log indexes whose apply recorded a terminal outcome.
    terminal_at: BTreeMap<RequestId, BTreeSet<u64>>,
    /// Hash of the command at each (index, position) as first applied anywhere.
    entries: BTreeMap<(u64, u32), u64>,
    /// Leader of each term.
    pub leaders: BTreeMap<u64, NodeId>,
    /// What each client was last shown as terminal, and when it first saw it.
    seen_terminal: BTreeMap<RequestId, (JobState, u64)>,
    /// Jobs a client was told (or saw) were cancelled.
    seen_cancelled: BTreeSet<RequestId>,
    /// Completions a worker had acknowledged (`Applied`): job -> (attempt, outcome).
    pub completion_acks: BTreeMap<RequestId, (u32, Outcome)>,
    /// A poll that read a non-terminal state after the client had seen a terminal one (a lagging
    /// replica): allowed, but counted.
    pub stale_reads: u64,
}

impl Checker {
    pub fn violate(&mut self, invariant: Invariant, at_ms: u64, detail: String) {
        self.violations_total += 1;
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(Violation {
                invariant,
                at_ms,
                detail,
            });
        }
    }

    /// One command applied on one replica. `before` is the job's state before when that was
    /// terminal (else `None`: nothing to protect), `after` its state after;
    /// `recorded_terminal` says whether this apply recorded a terminal outcome for it.
    #[allow(clippy::too_many_arguments)]
    pub fn applied(
        &mut self,
        node: NodeId,
        index: u64,
        pos: u32,
        cmd_hash: u64,
        at_ms: u64,
        job: Option<(&RequestId, Option<&JobState>, Option<&JobState>)>,
        recorded_terminal: &[RequestId],
    ) {
        match self.entries.get(&(index, pos)) {
            Some(h) if *h != cmd_hash => self.violate(
                Invariant::ReplicasDiverged,
                at_ms,
                format!("node {node} applied a different command at log index {index}.{pos}"),
            ),
            Some(_) => {}
            None => {
                self.entries.insert((index, pos), cmd_hash);
            }
        }
        if let Some((id, Some(before), Some(after))) = job {
            if before.is_terminal() && before != after {
                let inv = if matches!(before, JobState::Cancelled { .. })
                    && matches!(after, JobState::Completed { .. })
                {
                    Invariant::CompletedAfterCancel
                } else {
                    Invariant::ResultChanged
                };
                self.violate(
                    inv,
                    at_ms,
                    format!(
                        "node {node}: job {id} went from {} to {} at index {index}",
                        word(before),
                        word(after)
                    ),
                );
            }
        }
        for id in recorded_terminal {
            let set = self.terminal_at.entry(id.clone()).or_default();
            set.insert(index);
            if set.len() == 2 {
                let idx: Vec<u64> = set.iter().copied().collect();
                self.violate(
                    Invariant::DoubleCompletion,
                    at_ms,
                    format!("job {id}: completions recorded at log indexes {idx:?}"),
                );
            }
        }
    }

    /// Raft entries that carried commands, and the commands in them (group commit's effect).
    pub fn entries_and_commands(&self) -> (u64, u64) {
        let mut entries = 0;
        let mut last = None;
        for (index, _) in self.entries.keys() {
            if last != Some(*index) {
                entries += 1;
                last = Some(*index);
            }
        }
        (entries, self.entries.len() as u64)
    }

    pub fn leader(&mut self, term: u64, node: NodeId, at_ms: u64) -> bool {
        match self.leaders.get(&term) {
            Some(l) if *l != node => {
                let l = *l;
                self.violate(
                    Invariant::TwoLeaders,
                    at_ms,
                    format!("term {term}: nodes {l} and {node} both led"),
                );
                false
            }
            Some(_) => false,
            None => {
                self.leaders.insert(term, node);
                true
            }
        }
    }

    /// A client read `state` for `id` (from `node`). Returns true when it is the first terminal read.
    pub fn observe(&mut self, id: &RequestId, node: NodeId, state: &JobState, at_ms: u64) -> bool {
        if matches!(state, JobState::Cancelled { .. }) {
            self.seen_cancelled.insert(id.clone());
        }
        if matches!(state, JobState::Completed { .. }) && self.seen_cancelled.contains(id) {
            self.violate(
                Invariant::CompletedAfterCancel,
                at_ms,
                format!("job {id}: node {node} reports COMPLETED after the client saw CANCELLED"),
            );
        }
        match self.seen_terminal.get(id) {
            Some((prev, _)) if state.is_terminal() && prev != state => {
                let prev = word(prev);
                self.violate(
                    Invariant::ResultChanged,
                    at_ms,
                    format!(
                        "job {id}: client saw {prev}, then node {node} showed {}",
                        word(state)
                    ),
                );
                false
            }
            Some(_) if !state.is_terminal() => {
                self.stale_reads += 1;
                false
            }
            Some(_) => false,
            None if state.is_terminal() => {
                self.seen_terminal
                    .insert(id.clone(), (state.clone(), at_ms));
                true
            }
            None => false,
        }
    }

    /// The client was told its cancel took effect at once (the job was queued).
    pub fn told_cancelled(&mut self, id: &RequestId) {
        self.seen_cancelled.insert(id.clone());
    }

    pub fn seen_terminal(&self) -> &BTreeMap<RequestId, (JobState, u64)> {
        &self.seen_terminal
    }
}

/// Short description of a state for messages.
pub fn word(s: &JobState) -> String {
    match s {
        JobState::Queued => "IN_QUEUE".into(),
        JobState::Running {
            worker, attempt, ..
        } => format!("IN_PROGRESS(worker {worker}, attempt {attempt})"),
        JobState::Completed {
            outcome: Outcome::Output { output_json },
            ..
        } => format!("COMPLETED({output_json})"),
        JobState::Completed {
            outcome: Outcome::Error(e),
            ..
        } => format!("COMPLETED(error {})", e.message),
        JobState::Cancelled { .. } => "CANCELLED".into(),
    }
}
