//! The mesh's pure decision logic, compiled here from the node crate's own files: the scheduler
//! (where a queued job runs), the cluster view (gossip liveness) and the membership policy (who
//! votes). They depend only on runmesh-proto and runmesh-raft, so the simulator runs the production
//! code without linking the node crate (and its libp2p/quinn/candle dependencies).

#[path = "../../node/src/mesh/scheduler.rs"]
#[allow(dead_code)]
pub mod scheduler;

#[path = "../../node/src/mesh/view.rs"]
#[allow(dead_code)]
pub mod view;

#[path = "../../node/src/mesh/membership.rs"]
#[allow(dead_code)]
pub mod membership;
