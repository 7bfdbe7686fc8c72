//! The operator's decisions about members (Raft `Command::Roster`): which nodes drain, and which
//! identities were removed and are refused until readmitted. Raft's membership says who is in the
//! cluster; this says who the operator wants in it and doing what, so the leader's controller, on
//! whichever node leads, carries the decision out (a voter seat moved away, a member taken out).

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RosterCommand {
    /// `draining`: no new job is placed on `node` (running ones finish) and, if it votes, its seat
    /// moves to another member first. `false` ends a drain.
    SetDraining { node: NodeId, draining: bool },
    /// Out of the membership for good: the leader takes `node` out, and its identity's joins are
    /// refused until [`RosterCommand::Readmit`].
    Remove { node: NodeId, at_ms: u64 },
    /// A removed identity may join again.
    Readmit { node: NodeId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RosterResult {
    Changed,
    /// Already so: nothing changed.
    Unchanged,
    /// The table is full (a script gone wrong must not grow the replicated state without bound).
    Full,
}
