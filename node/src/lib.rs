//! runmesh-node: the pieces of the `runmesh` binary that are worth testing on their own: the app
//! contract and built-in apps, the worker loop, and configuration.

pub mod apps;
pub mod artifacts;
pub mod backup_cli;
pub mod config;
pub mod datadir;
pub mod format;
pub mod gpu;
pub mod identity;
pub mod keys_cli;
pub mod malformed;
pub mod mesh;
pub mod node_cli;
pub mod outbound;
pub mod runners;
pub mod tls;
pub mod webhooks;
pub mod worker;
