//! runmesh's replicated job log: openraft over a sled store, with the job table as state machine.
//!
//! [`JobLog`] is the one handle the rest of the node uses: propose [`JobCommand`]s (committed through
//! Raft before they return), read the local [`JobTable`], and watch which jobs changed.
//! Network and time sit behind seams: Raft RPC goes through [`transport::RaftTransport`], command
//! timestamps come from a [`runmesh_proto::Clock`].

pub mod acknowledged;
pub mod backup;
pub mod election;
pub mod idempotency;
pub mod joblog;
pub mod jobs;
pub mod keys;
pub mod memstore;
pub mod placement;
pub mod pre_vote;
pub mod roster;
pub mod runtime;
pub mod state;
pub mod store;
pub mod transport;
pub mod types;
pub mod webhooks;

pub use joblog::{JobLog, JobLogConfig, JobLogError, Proposer, ProposerConfig};
pub use jobs::{JobRecord, JobTable, KeptFiles, NamedUpload};
pub use placement::{PlacementView, SubmitPlacer};
pub use state::ClusterState;
pub use types::TypeConfig;
