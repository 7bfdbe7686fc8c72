//! Placement at submit: the leader picks a worker for a submit just before it writes the entry, so
//! the job's `Submit` and its placement share one Raft entry ([`JobCommand::SubmitPlaced`]) instead
//! of a `Submit` followed by the dispatcher's `Assign`. A job costs two entries (submit, complete)
//! instead of three, and a sync request one commit less.
//!
//! The choice itself belongs to the node's scheduler ([`SubmitPlacer`]); this module only finds the
//! submits in a batch, asks, rewrites them, and tells the placer when its placements are in the
//! table. A submit the placer leaves alone stays a plain `Submit` and queues for the dispatcher.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use runmesh_proto::{Clock, Command, JobCommand, JobSpec, NodeId};

use crate::jobs::JobTable;
use crate::store::MachineState;

/// The leader's view a placement is made from: the applied table and the Raft members.
pub struct PlacementView<'a> {
    pub table: &'a JobTable,
    /// Voters and learners: only they read the log, so only they can run a job.
    pub members: BTreeSet<NodeId>,
    /// Members the operator drains (or removed): they get no new jobs.
    pub draining: BTreeSet<NodeId>,
}

/// Chooses workers for submits on the leader. Called with the replica's read lock held: keep it
/// quick and do no I/O.
pub trait SubmitPlacer: Send + Sync {
    /// For each spec (in order), the worker to start it on now, or `None` to leave it queued.
    fn place(&self, view: &PlacementView<'_>, specs: &[&JobSpec]) -> Vec<Option<NodeId>>;
    /// The placements of one [`Self::place`] call are applied (or their write failed): from now on
    /// the table counts them, so the placer stops counting them as pending.
    fn settled(&self, workers: &[NodeId]);
    /// The lease a placed job starts under.
    fn lease_ms(&self) -> u64;
}

/// The slot a node installs its placer in, shared by the job log's local writes and the writes it
/// takes from followers.
#[derive(Clone)]
pub struct Placing {
    placer: Arc<RwLock<Option<Arc<dyn SubmitPlacer>>>>,
    state: Arc<RwLock<MachineState>>,
    clock: Arc<dyn Clock>,
}

/// Tells the placer its placements are settled when dropped, after the write returned.
pub struct Settle {
    placer: Option<Arc<dyn SubmitPlacer>>,
    workers: Vec<NodeId>,
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(p) = &self.placer {
            if !self.workers.is_empty() {
                p.settled(&self.workers);
            }
        }
    }
}

impl Placing {
    pub fn new(state: Arc<RwLock<MachineState>>, clock: Arc<dyn Clock>) -> Self {
        Self {
            placer: Arc::new(RwLock::new(None)),
            state,
            clock,
        }
    }

    /// Installs (or with `None`, removes) the placer.
    pub fn set(&self, placer: Option<Arc<dyn SubmitPlacer>>) {
        *self
            .placer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = placer;
    }

    /// Rewrites the submits of `cmds` that the placer places into `SubmitPlaced`. Call only where
    /// this node writes the entry itself (it leads); keep the guard until the write returned.
    pub fn place(&self, cmds: Vec<Command>) -> (Vec<Command>, Settle) {
        let placer = self
            .placer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut settle = Settle {
            placer: placer.clone(),
            workers: Vec::new(),
        };
        let Some(placer) = placer else {
            return (cmds, settle);
        };
        let specs: Vec<&JobSpec> = cmds
            .iter()
            .filter_map(|c| match c {
                Command::Job(JobCommand::Submit { spec }) => Some(spec),
                _ => None,
            })
            .collect();
        if specs.is_empty() {
            return (cmds, settle);
        }
        let chosen = {
            let st = self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let view = PlacementView {
                table: &st.table.jobs,
                members: st
                    .membership
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect(),
                draining: st
                    .membership
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| st.table.roster.takes_no_jobs(*id))
                    .collect(),
            };
            placer.place(&view, &specs)
        };
        if chosen.iter().all(Option::is_none) {
            return (cmds, settle);
        }
        let now_ms = self.clock.now_ms();
        let lease_ms = placer.lease_ms();
        let mut chosen = chosen.into_iter();
        let cmds = cmds
            .into_iter()
            .map(|c| match c {
                Command::Job(JobCommand::Submit { spec }) => match chosen.next().flatten() {
                    Some(worker) => {
                        settle.workers.push(worker);
                        Command::Job(JobCommand::SubmitPlaced {
                            spec,
                            worker,
                            lease_ms,
                            now_ms,
                        })
                    }
                    None => Command::Job(JobCommand::Submit { spec }),
                },
                other => other,
            })
            .collect();
        (cmds, settle)
    }
}
