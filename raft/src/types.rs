//! openraft type configuration: one Raft entry carries a batch of commands (group commit), and its
//! response is one output per command.

use std::io::Cursor;

use runmesh_proto::{Command, CommandOutput};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Vec<Command>,
        R = Vec<CommandOutput>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        // tokio, with election-timeout randomness the simulator can seed (raft/src/runtime.rs).
        AsyncRuntime = crate::runtime::SeededTokio,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
