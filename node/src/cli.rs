//! Command line of `runmesh`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use runmesh_node::config::{ConfigFile, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "runmesh",
    version,
    about = "runmesh: a mesh of runner nodes speaking the fal.ai HTTP API",
    long_about = "runmesh: a mesh of runner nodes speaking the fal.ai HTTP API.\n\n\
        Jobs submitted through the fal queue/sync API are committed to a Raft log before they are \
        accepted, and run by the node's worker on its apps (runmesh/echo, runmesh/sleep, \
        runmesh/fail, runmesh/stream).\n\n\
        Logs go to stderr; set RUST_LOG to filter them (default: info for runmesh, warn otherwise)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a single development node with defaults (./runmesh-data, http://127.0.0.1:8080).
    ///
    /// Prints `runmesh listening on http://ADDR` on stdout once it accepts requests.
    Dev(NodeArgs),
    /// Run a node from flags and/or a TOML config file (flags win). Needs a data dir and an address.
    Run(RunArgs),
    /// Load-test a node: submit queue jobs from concurrent clients and report latency and rate.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Directory of the node's Raft log and job table (created when missing).
    #[arg(long, value_name = "DIR", env = "RUNMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the HTTP API listens on (port 0 picks a free port; the listening line shows it).
    #[arg(long, value_name = "ADDR", env = "RUNMESH_HTTP")]
    pub http: Option<SocketAddr>,
    /// Jobs run at once [default: 4].
    #[arg(long, value_name = "N", env = "RUNMESH_SLOTS")]
    pub slots: Option<usize>,
    /// Lease of a claimed job in ms, renewed every third; a dead node's jobs are requeued after it
    /// [default: 5000].
    #[arg(long, value_name = "MS", env = "RUNMESH_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// Largest request body in bytes; bigger ones get 413 [default: 10485760].
    #[arg(long = "body-limit", value_name = "BYTES", env = "RUNMESH_BODY_LIMIT")]
    pub body_limit_bytes: Option<usize>,
    /// Log line format on stderr [default: text].
    #[arg(long, value_name = "text|json", env = "RUNMESH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Region reported with accepted jobs.
    #[arg(long, value_name = "NAME", env = "RUNMESH_REGION")]
    pub region: Option<String>,
}

impl NodeArgs {
    /// The flags as a config layer.
    pub fn to_layer(&self) -> ConfigFile {
        ConfigFile {
            data_dir: self.data_dir.clone(),
            http: self.http,
            slots: self.slots,
            lease_ms: self.lease_ms,
            body_limit_bytes: self.body_limit_bytes,
            log_format: self.log_format,
            region: self.region.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file with the same keys as the flags (data_dir, http, slots, lease_ms,
    /// body_limit_bytes, log_format, region); see configs/dev.toml.
    #[arg(long, value_name = "FILE", env = "RUNMESH_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Base URL of the node to load.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        conflicts_with = "spawn"
    )]
    pub url: String,
    /// Start a temporary node (this binary, `dev` on a free port and a temporary data dir) and load it.
    #[arg(long)]
    pub spawn: bool,
    /// Slots of the spawned node.
    #[arg(long, value_name = "N", requires = "spawn")]
    pub spawn_slots: Option<usize>,
    /// Concurrent clients.
    #[arg(short = 'c', long, value_name = "C", default_value_t = 16)]
    pub concurrency: usize,
    /// Jobs to submit in total.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1000)]
    pub requests: usize,
    /// Endpoint id to submit to.
    #[arg(long, value_name = "ID", default_value = "runmesh/echo")]
    pub model: String,
    /// Input object to submit (JSON); the padding field is added to it.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub input: String,
    /// Bytes of padding added to each input as a `pad` string.
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub payload_bytes: usize,
    /// Also wait until every accepted job completed, and report the end-to-end rate.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 120)]
    pub timeout_s: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_dev_run_and_bench() {
        let cli = Cli::try_parse_from(["runmesh", "dev", "--slots", "2", "--log-format", "json"])
            .unwrap();
        let Command::Dev(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.slots, Some(2));
        assert_eq!(a.log_format, Some(LogFormat::Json));
        let cli = Cli::try_parse_from([
            "runmesh",
            "run",
            "--config",
            "x.toml",
            "--data-dir",
            "/d",
            "--http",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.config, Some(PathBuf::from("x.toml")));
        assert_eq!(r.node.to_layer().http.unwrap().port(), 0);
        let cli = Cli::try_parse_from([
            "runmesh", "bench", "--spawn", "-c", "8", "-n", "50", "--wait",
        ])
        .unwrap();
        let Command::Bench(b) = cli.command else {
            panic!()
        };
        assert!(b.spawn && b.wait);
        assert_eq!((b.concurrency, b.requests), (8, 50));
        assert!(Cli::try_parse_from(["runmesh", "bench", "--spawn", "--url", "http://x"]).is_err());
        assert!(Cli::try_parse_from(["runmesh", "dev", "--http", "nope"]).is_err());
    }
}
