//! The mesh: membership and capacity gossip, the cluster view, the scheduler.
//!
//! `view` and `scheduler` are pure (no clock, no I/O, no libp2p) so the simulator links them;
//! `gossip` (libp2p) is behind the `p2p` feature.

pub mod capacity;
#[cfg(feature = "p2p")]
pub mod gossip;
// Raft across nodes (MESH-RAFT): joining, voter policy, Raft RPC over QUIC, and the startup that ties
// them to the job log. `membership` is pure too.
pub mod join;
pub mod membership;
pub mod raft_mesh;
pub mod raft_quic;
pub mod scheduler;
pub mod view;
