//! Backups of the replicated state, and a new cluster founded from one.
//!
//! A backup is the state machine at one applied position (every table: jobs, keys, webhooks,
//! idempotency claims, roster), taken under the replica's read lock so it is consistent, plus the
//! blob hashes it references: the blobs themselves stay in the nodes' blob stores and are copied
//! apart. [`restore_into`] writes a fresh Raft store whose snapshot is the backup and whose only
//! member is the restoring node: started on it, that node leads a new one-member cluster with
//! every job, key and pending webhook of the backup, and others join it as usual.

use std::collections::BTreeSet;
use std::path::Path;

use openraft::{BasicNode, CommittedLeaderId, Membership};
use runmesh_proto::{codec, NodeId};
use serde::{Deserialize, Serialize};

use crate::state::ClusterState;
use crate::store::{MachineState, Store};
use crate::types::{LogId, StoredMembership, Vote};

/// First bytes of a backup file, so a wrong file is named as such.
pub const MAGIC: &str = "runmesh-backup";
/// The layout this build writes and reads.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backup {
    pub magic: String,
    pub version: u32,
    pub created_at_ms: u64,
    /// The log index the state was taken at (in the cluster it came from).
    pub applied_index: u64,
    /// [`ClusterState::to_snapshot_bytes`].
    pub state: Vec<u8>,
    /// Blob hashes the state names (job outputs, inputs kept as blobs, named uploads).
    pub blobs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a runmesh backup: {0}")]
    NotABackup(String),
    #[error("backup version {0}, this runmesh reads version {VERSION}: use a newer runmesh")]
    Newer(u32),
    #[error("{0}")]
    Store(String),
}

/// Every blob hash `state` references, sorted.
pub fn referenced_blobs(state: &ClusterState) -> Vec<String> {
    let mut hashes = BTreeSet::new();
    for kept in state.jobs.kept_files() {
        hashes.extend(kept.files.iter().map(|f| f.hash.clone()));
        hashes.extend(kept.input_hashes.iter().cloned());
    }
    for rec in state.jobs.iter() {
        hashes.extend(rec.files.iter().map(|f| f.hash.clone()));
        // Inputs kept as blobs, which queued and running jobs still need.
        hashes.extend(runmesh_proto::file_hashes_in(&rec.spec.input_json));
    }
    hashes.extend(state.jobs.uploads().map(|u| u.file.hash.clone()));
    hashes.into_iter().collect()
}

impl Backup {
    pub fn of(
        state: &ClusterState,
        applied_index: u64,
        created_at_ms: u64,
    ) -> Result<Self, BackupError> {
        Ok(Self {
            magic: MAGIC.to_string(),
            version: VERSION,
            created_at_ms,
            applied_index,
            state: state
                .to_snapshot_bytes()
                .map_err(|e| BackupError::Store(e.to_string()))?,
            blobs: referenced_blobs(state),
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, BackupError> {
        codec::encode(self).map_err(|e| BackupError::Store(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BackupError> {
        // The magic and the version come first: checked before the rest, so a wrong or newer
        // file is named as such whatever follows.
        let header = bincode::config::standard().with_limit::<1024>();
        match bincode::serde::decode_from_slice::<(String, u32), _>(bytes, header) {
            Ok(((magic, _), _)) if magic != MAGIC => {
                return Err(BackupError::NotABackup("no runmesh-backup header".into()))
            }
            Ok(((_, version), _)) if version > VERSION => return Err(BackupError::Newer(version)),
            Ok(_) => {}
            Err(_) => return Err(BackupError::NotABackup("no runmesh-backup header".into())),
        }
        codec::decode(bytes).map_err(|e| BackupError::NotABackup(e.to_string()))
    }

    /// The state it holds, decoded (checks the backup is whole).
    pub fn cluster_state(&self) -> Result<ClusterState, BackupError> {
        ClusterState::from_snapshot_bytes(&self.state)
            .map_err(|e| BackupError::NotABackup(format!("its state does not decode: {e}")))
    }
}

/// Writes a new Raft store in `raft_dir` (which must hold none) holding `backup` as its snapshot,
/// with `node` (its member record `record`) the only voter.
pub fn restore_into(
    raft_dir: &Path,
    backup: &Backup,
    node: NodeId,
    record: String,
) -> Result<(), BackupError> {
    let err = |e: String| BackupError::Store(format!("{}: {e}", raft_dir.display()));
    let mut table = backup.cluster_state()?;
    // The node founding the new cluster is neither drained nor removed in it, whatever it was in
    // the old one.
    table
        .roster
        .apply(runmesh_proto::roster::RosterCommand::Readmit { node });
    table
        .roster
        .apply(runmesh_proto::roster::RosterCommand::SetDraining {
            node,
            draining: false,
        });
    if raft_dir.exists()
        && std::fs::read_dir(raft_dir)
            .map_err(|e| err(e.to_string()))?
            .next()
            .is_some()
    {
        return Err(err(
            "already holds a Raft store: restore founds a new cluster, into an empty data dir"
                .into(),
        ));
    }
    std::fs::create_dir_all(raft_dir).map_err(|e| err(e.to_string()))?;
    let store = Store::open(raft_dir).map_err(|e| err(e.to_string()))?;
    // A new cluster: term 1, led by this node, its log starting after the backup's position.
    let at = LogId::new(CommittedLeaderId::new(1, node), backup.applied_index.max(1));
    let membership = Membership::new(
        vec![BTreeSet::from([node])],
        std::collections::BTreeMap::from([(node, BasicNode { addr: record })]),
    );
    let state = MachineState {
        table,
        last_applied: Some(at),
        membership: StoredMembership::new(Some(at), membership),
    };
    store
        .seed(&state, &Vote::new_committed(1, node), at)
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backups_round_trip_and_other_files_are_named_for_what_they_are() {
        let state = ClusterState::default();
        let b = Backup::of(&state, 42, 7).unwrap();
        let back = Backup::decode(&b.encode().unwrap()).unwrap();
        assert_eq!((back.applied_index, back.created_at_ms), (42, 7));
        assert!(back.cluster_state().is_ok());
        assert!(matches!(
            Backup::decode(b"{\"json\": true}"),
            Err(BackupError::NotABackup(_))
        ));
        assert!(matches!(
            Backup::decode(&[]),
            Err(BackupError::NotABackup(_))
        ));
        let mut newer = b.clone();
        newer.version = VERSION + 1;
        assert!(matches!(
            Backup::decode(&newer.encode().unwrap()),
            Err(BackupError::Newer(v)) if v == VERSION + 1
        ));
        let mut cut = b.encode().unwrap();
        cut.truncate(cut.len() - 1);
        assert!(Backup::decode(&cut).is_err());
    }

    #[test]
    fn a_restore_refuses_a_dir_that_holds_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backup::of(&ClusterState::default(), 3, 0).unwrap();
        restore_into(&dir.path().join("raft"), &b, 9, String::new()).unwrap();
        let again = restore_into(&dir.path().join("raft"), &b, 9, String::new());
        assert!(again.unwrap_err().to_string().contains("already holds"));
    }
}
