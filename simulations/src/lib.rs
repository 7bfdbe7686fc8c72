//! runmesh's chaos simulator: many nodes in one process over the real openraft Raft, the real
//! replicated state machine (`ClusterState`), the mesh scheduler, membership policy and cluster
//! view, with the network and the clock simulated (tokio's paused clock, seeded randomness).
//!
//! One seed gives one run, to the byte: [`world::run`] returns a `trace_hash` that two runs with the
//! same scenario and seed share. See docs/SIMULATION.md.

pub mod check;
pub mod lifecycle;
pub mod mesh;
pub mod report;
pub mod scenario;
pub mod world;

pub use lifecycle::{run, Report, Rng, Scenario as LifecycleScenario};
pub use scenario::Scenario;
pub use world::{Bug, Options, RunOutcome};
