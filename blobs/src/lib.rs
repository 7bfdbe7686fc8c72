//! runmesh artifacts: content-addressed blobs, verified on arrival, served by any node.
//!
//! Empty on purpose in the foundation: job outputs are JSON kept in the Raft log. The artifacts issue
//! fills this crate (iroh-blobs store in the node's data dir, QUIC transfer keyed by the node identity),
//! and keeps iroh out of every other crate's build.
