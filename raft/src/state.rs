//! The whole replicated state: one table per subsystem, each fed its own commands.

use runmesh_proto::{codec, Command, CommandOutput, ProtoError, RequestId};
use serde::{Deserialize, Serialize};

use crate::idempotency::IdempotencyTable;
use crate::jobs::JobTable;
use crate::keys::KeyTable;
use crate::roster::RosterTable;
use crate::webhooks::WebhookTable;

#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub jobs: JobTable,
    pub keys: KeyTable,
    pub webhooks: WebhookTable,
    pub idempotency: IdempotencyTable,
    pub roster: RosterTable,
}

/// Snapshot layout: each table encodes itself.
#[derive(Serialize, Deserialize)]
struct StateSnapshot {
    jobs: Vec<u8>,
    keys: Vec<u8>,
    webhooks: Vec<u8>,
    idempotency: Vec<u8>,
    roster: Vec<u8>,
}

/// The layout before the roster. Still written while the roster is empty, so that a cluster that
/// never drained or removed a node sends and stores snapshots that older builds read (a rolling
/// upgrade ships snapshots between versions).
#[derive(Serialize, Deserialize)]
struct StateSnapshotV2 {
    jobs: Vec<u8>,
    keys: Vec<u8>,
    webhooks: Vec<u8>,
    idempotency: Vec<u8>,
}

/// The layout before keys/webhooks/idempotency, still read so an old data dir opens.
#[derive(Serialize, Deserialize)]
struct StateSnapshotV1 {
    jobs: Vec<u8>,
}

impl ClusterState {
    /// Applies one command. `touched` collects job ids whose state changed, for watchers.
    pub fn apply(&mut self, cmd: Command, touched: &mut Vec<RequestId>) -> CommandOutput {
        match cmd {
            // A job whose webhook is still owed stays until it is delivered or given up on: the
            // delivery reads the job's outcome.
            Command::Job(runmesh_proto::JobCommand::Expire { now_ms, retention }) => {
                let webhooks = &self.webhooks;
                let owed = |id: &RequestId| {
                    webhooks.get(id).is_some_and(|d| {
                        matches!(d.state, crate::webhooks::DeliveryState::Pending { .. })
                    })
                };
                CommandOutput::Job(self.jobs.expire(now_ms, retention, owed, touched))
            }
            Command::Job(cmd) => {
                let first_touched = touched.len();
                let out = CommandOutput::Job(self.jobs.apply(cmd, touched));
                self.owe_webhooks(&touched[first_touched..]);
                out
            }
            Command::Keys(cmd) => CommandOutput::Keys(self.keys.apply(cmd)),
            Command::Webhook(cmd) => CommandOutput::Webhook(self.webhooks.apply(cmd)),
            Command::Idempotency(cmd) => CommandOutput::Idempotency(self.idempotency.apply(cmd)),
            Command::Roster(cmd) => CommandOutput::Roster(self.roster.apply(cmd)),
        }
    }

    /// A job that just reached a terminal state with a `fal_webhook` URL owes a delivery; created
    /// in the same apply, so no crash can separate the two.
    fn owe_webhooks(&mut self, ids: &[RequestId]) {
        for id in ids {
            let Some(rec) = self.jobs.get(id) else {
                continue;
            };
            let ended_at_ms = match &rec.state {
                runmesh_proto::JobState::Completed {
                    completed_at_ms, ..
                } => *completed_at_ms,
                runmesh_proto::JobState::Cancelled { cancelled_at_ms } => *cancelled_at_ms,
                _ => continue,
            };
            if let Some(url) = &rec.spec.webhook_url {
                self.webhooks.enqueue(id.clone(), url.clone(), ended_at_ms);
            }
        }
    }

    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, ProtoError> {
        let (jobs, keys, webhooks, idempotency) = (
            self.jobs.to_snapshot_bytes()?,
            self.keys.to_snapshot_bytes()?,
            self.webhooks.to_snapshot_bytes()?,
            self.idempotency.to_snapshot_bytes()?,
        );
        if self.roster == RosterTable::default() {
            return codec::encode(&StateSnapshotV2 {
                jobs,
                keys,
                webhooks,
                idempotency,
            });
        }
        codec::encode(&StateSnapshot {
            jobs,
            keys,
            webhooks,
            idempotency,
            roster: self.roster.to_snapshot_bytes()?,
        })
    }

    /// Reads every layout, newest first (the codec refuses trailing and missing bytes, so only the
    /// right one decodes).
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let (snap, roster) = match codec::decode::<StateSnapshot>(bytes) {
            Ok(s) => {
                let roster = RosterTable::from_snapshot_bytes(&s.roster)?;
                let older = StateSnapshotV2 {
                    jobs: s.jobs,
                    keys: s.keys,
                    webhooks: s.webhooks,
                    idempotency: s.idempotency,
                };
                (older, roster)
            }
            Err(e) => match codec::decode::<StateSnapshotV2>(bytes) {
                Ok(v2) => (v2, RosterTable::default()),
                Err(_) => match codec::decode::<StateSnapshotV1>(bytes) {
                    Ok(v1) => {
                        return Ok(Self {
                            jobs: JobTable::from_snapshot_bytes(&v1.jobs)?,
                            ..Self::default()
                        })
                    }
                    Err(_) => return Err(e),
                },
            },
        };
        Ok(Self {
            jobs: JobTable::from_snapshot_bytes(&snap.jobs)?,
            keys: KeyTable::from_snapshot_bytes(&snap.keys)?,
            webhooks: WebhookTable::from_snapshot_bytes(&snap.webhooks)?,
            idempotency: IdempotencyTable::from_snapshot_bytes(&snap.idempotency)?,
            roster,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use runmesh_proto::roster::RosterCommand;

    #[test]
    fn an_empty_roster_keeps_the_older_snapshot_layout_and_a_full_one_round_trips() {
        let mut state = ClusterState::default();
        let bytes = state.to_snapshot_bytes().unwrap();
        // What an older build decodes: the layout without the roster.
        assert!(codec::decode::<StateSnapshotV2>(&bytes).is_ok());
        assert_eq!(
            ClusterState::from_snapshot_bytes(&bytes).unwrap().roster,
            RosterTable::default()
        );
        let mut touched = Vec::new();
        state.apply(
            Command::Roster(RosterCommand::Remove { node: 3, at_ms: 1 }),
            &mut touched,
        );
        state.apply(
            Command::Roster(RosterCommand::SetDraining {
                node: 4,
                draining: true,
            }),
            &mut touched,
        );
        let back = ClusterState::from_snapshot_bytes(&state.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back.roster, state.roster);
        assert!(back.roster.is_removed(3) && back.roster.is_draining(4));
    }
}
