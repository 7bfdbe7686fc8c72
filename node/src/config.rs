//! Node configuration: built-in defaults, overlaid by a TOML file, overlaid by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::worker::WorkerConfig;

pub const DEFAULT_DATA_DIR: &str = "./runmesh-data";
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
pub const DEFAULT_SLOTS: usize = 4;
/// Slots of a `runmesh run` node without GPUs (with GPUs: one per GPU).
pub const DEFAULT_SLOTS_NO_GPU: usize = 2;
/// Apps one node may be told to serve (`--models`).
pub const SERVE_APPS_MAX: usize = 1024;
pub const DEFAULT_LEASE_MS: u64 = 5_000;
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 10 * 1024 * 1024;

pub const SLOTS_MAX: usize = 1024;
/// Leases are renewed every third; below this the renewals would flood the log.
pub const LEASE_MS_MIN: u64 = 300;
pub const LEASE_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest `shutdown_grace_ms`: an hour (a stop must end).
pub const SHUTDOWN_GRACE_MS_MAX: u64 = 60 * 60 * 1000;
pub const BODY_LIMIT_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Raft voters the leader promotes learners to (the rest stay learners).
pub const DEFAULT_VOTERS: usize = 3;
pub const VOTERS_MAX: usize = 15;
/// A silent voter is replaced within a day at the latest.
pub const VOTER_DOWN_AFTER_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Raft leader heartbeat in a mesh. openraft also times an AppendEntries out at this period, so
/// it must exceed the slowest round trip between voters plus a follower's disk flush: 300 ms
/// holds across continents (a 100 ms heartbeat broke clusters with >100 ms RTT in simulation).
pub const DEFAULT_RAFT_HEARTBEAT_MS: u64 = 300;
pub const RAFT_HEARTBEAT_MS_MIN: u64 = 10;
pub const RAFT_HEARTBEAT_MS_MAX: u64 = 60_000;
/// Election timeouts may not be shorter than this many heartbeats: a follower must miss at least
/// two before it deposes a leader.
pub const RAFT_ELECTION_HEARTBEATS_MIN: u64 = 2;
pub const RAFT_ELECTION_TIMEOUT_MS_MAX: u64 = 600_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// The config file: every key optional, unknown keys rejected (a typo must not pass silently).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub slots: Option<usize>,
    pub lease_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub body_limit_bytes: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub region: Option<String>,
    /// The apps this node serves (`owner/alias`); all it has when absent. (`--models` on the
    /// command line; `models` in TOML is the warm pool's section.)
    pub apps: Option<Vec<String>>,
    /// libp2p listen address; the Raft QUIC listener defaults to its port + 1.
    pub p2p: Option<SocketAddr>,
    /// Raft QUIC listen address (overrides p2p port + 1).
    pub raft: Option<SocketAddr>,
    /// Host or IP peers should dial this node at, when it listens on 0.0.0.0 / [::].
    pub advertise: Option<String>,
    /// A member's `host:port` (its p2p port) or libp2p multiaddr to join through.
    pub bootstrap: Option<String>,
    /// Shared secret a node must prove to join the cluster.
    pub cluster_secret: Option<Secret>,
    /// Voters the cluster keeps (others are learners).
    pub voters: Option<usize>,
    /// A voter unheard this long gives its seat to a healthy learner.
    pub voter_down_after_ms: Option<u64>,
    /// Where model weights live (`runmesh models fetch` output) [default: <data_dir>/models].
    pub models_dir: Option<PathBuf>,
    /// Declared GPUs (`NAME:GB,...`), used when no NVIDIA driver answers (see gpu.rs).
    pub gpus: Option<String>,
    /// External runner commands (JSON lines over stdio; docs/RUNNERS.md).
    pub runners: Option<Vec<String>>,
    /// Warm pool: `memory_budget_mb` and per-model `[models.<name>]` min_warm / max_concurrency.
    pub models: Option<crate::apps::pool::ModelsSection>,
    // --- fal compatibility (issue 5): TLS, auth, rate limits, webhooks ---
    /// Serve HTTPS (self-signed under <data_dir>/tls unless tls_cert/tls_key are given).
    pub tls: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse requests without a valid key (`run` always does).
    pub require_auth: Option<bool>,
    /// The cluster's admin key, `<key_id>:<key_secret>`, instead of a generated admin.key.
    pub admin_key: Option<Secret>,
    /// Requests per second per key (sustained) and burst.
    pub rate_limit: Option<u32>,
    pub rate_burst: Option<u32>,
    /// Webhook delivery: attempts before giving up, first retry delay, per-attempt timeout.
    pub webhook_attempts: Option<u32>,
    pub webhook_backoff_ms: Option<u64>,
    pub webhook_timeout_ms: Option<u64>,
    /// Internal destinations (hosts, addresses, CIDRs) that webhooks and input URLs may reach;
    /// `run` allows none, `dev` loopback ([`runmesh_gateway_node::outbound`]).
    pub fetch_allow: Option<Vec<String>>,
    /// Path of the JS client's `proxyUrl` endpoint (`""` turns it off) [default: /api/fal/proxy].
    pub fal_proxy_path: Option<String>,
    /// How long finished requests stay readable, and for results of 10 KB or more.
    pub result_retention_ms: Option<u64>,
    pub large_result_retention_ms: Option<u64>,
    /// A realtime socket without input for this long gets fal's TIMEOUT and is closed [5 min].
    pub realtime_idle_timeout_ms: Option<u64>,
    /// Interval of `: ping` comments on SSE responses [15 s, as fal].
    pub sse_keepalive_ms: Option<u64>,
    // --- Raft timing in a mesh (see docs/OPERATIONS.md, "Raft timing") ---
    /// Leader heartbeat period, also the AppendEntries timeout.
    pub raft_heartbeat_ms: Option<u64>,
    /// A follower hearing no leader for a random time in [min, max) starts an election.
    pub raft_election_timeout_min_ms: Option<u64>,
    pub raft_election_timeout_max_ms: Option<u64>,
    /// A follower refusing a shorter-log candidate after the leader lease campaigns at once.
    pub raft_eager_campaign: Option<bool>,
    /// A voter campaigns only once a majority agrees that no leader is heard [default: false].
    pub raft_pre_vote: Option<bool>,
    /// While this file exists, this node (when it leads) places no queued jobs.
    pub dispatch_hold_file: Option<PathBuf>,
    /// Place a job in the entry that submits it when a node has room [default: true].
    pub place_at_submit: Option<bool>,
    // --- artifacts (issue 6): blob endpoint, retention, replicas ---
    /// Blob QUIC listen address (overrides p2p port + 2).
    pub blob: Option<SocketAddr>,
    /// Base of file URLs handed to clients (e.g. `https://files.example.com`).
    pub public_url: Option<String>,
    /// How long artifacts are kept after their job finished, in seconds [default: 30 days].
    pub artifact_ttl_s: Option<u64>,
    /// Nodes besides the worker that keep a copy of each output [default: 1].
    pub artifact_replicas: Option<usize>,
    /// How often the retention sweep runs, in ms [default: 2000].
    pub artifact_sweep_ms: Option<u64>,
    /// How often unpinned blobs are deleted, in ms [default: 10000].
    pub artifact_gc_ms: Option<u64>,
    /// How long a blob that no job names yet (an output before its completion commits) is kept.
    pub artifact_unnamed_grace_ms: Option<u64>,
    /// Largest upload (`POST /storage/upload`), in bytes [default: 16 GiB].
    pub upload_limit_bytes: Option<u64>,
    /// Uploads and job output files are refused while the data dir's disk has less free space
    /// than this, in MiB [default: 1024].
    pub disk_free_floor_mb: Option<u64>,
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))?;
        Self::parse(&text)
    }

    /// `other`'s keys win over `self`'s.
    pub fn overlay(self, other: ConfigFile) -> ConfigFile {
        ConfigFile {
            data_dir: other.data_dir.or(self.data_dir),
            http: other.http.or(self.http),
            slots: other.slots.or(self.slots),
            lease_ms: other.lease_ms.or(self.lease_ms),
            shutdown_grace_ms: other.shutdown_grace_ms.or(self.shutdown_grace_ms),
            body_limit_bytes: other.body_limit_bytes.or(self.body_limit_bytes),
            log_format: other.log_format.or(self.log_format),
            region: other.region.or(self.region),
            apps: other.apps.or(self.apps),
            p2p: other.p2p.or(self.p2p),
            raft: other.raft.or(self.raft),
            advertise: other.advertise.or(self.advertise),
            bootstrap: other.bootstrap.or(self.bootstrap),
            cluster_secret: other.cluster_secret.or(self.cluster_secret),
            voters: other.voters.or(self.voters),
            voter_down_after_ms: other.voter_down_after_ms.or(self.voter_down_after_ms),
            models_dir: other.models_dir.or(self.models_dir),
            gpus: other.gpus.or(self.gpus),
            runners: other.runners.or(self.runners),
            models: other.models.or(self.models),
            tls: other.tls.or(self.tls),
            tls_cert: other.tls_cert.or(self.tls_cert),
            tls_key: other.tls_key.or(self.tls_key),
            require_auth: other.require_auth.or(self.require_auth),
            admin_key: other.admin_key.or(self.admin_key),
            rate_limit: other.rate_limit.or(self.rate_limit),
            rate_burst: other.rate_burst.or(self.rate_burst),
            webhook_attempts: other.webhook_attempts.or(self.webhook_attempts),
            fetch_allow: other.fetch_allow.or(self.fetch_allow),
            webhook_backoff_ms: other.webhook_backoff_ms.or(self.webhook_backoff_ms),
            webhook_timeout_ms: other.webhook_timeout_ms.or(self.webhook_timeout_ms),
            fal_proxy_path: other.fal_proxy_path.or(self.fal_proxy_path),
            result_retention_ms: other.result_retention_ms.or(self.result_retention_ms),
            large_result_retention_ms: other
                .large_result_retention_ms
                .or(self.large_result_retention_ms),
            realtime_idle_timeout_ms: other
                .realtime_idle_timeout_ms
                .or(self.realtime_idle_timeout_ms),
            sse_keepalive_ms: other.sse_keepalive_ms.or(self.sse_keepalive_ms),
            raft_heartbeat_ms: other.raft_heartbeat_ms.or(self.raft_heartbeat_ms),
            raft_election_timeout_min_ms: other
                .raft_election_timeout_min_ms
                .or(self.raft_election_timeout_min_ms),
            raft_election_timeout_max_ms: other
                .raft_election_timeout_max_ms
                .or(self.raft_election_timeout_max_ms),
            raft_eager_campaign: other.raft_eager_campaign.or(self.raft_eager_campaign),
            raft_pre_vote: other.raft_pre_vote.or(self.raft_pre_vote),
            dispatch_hold_file: other.dispatch_hold_file.or(self.dispatch_hold_file),
            place_at_submit: other.place_at_submit.or(self.place_at_submit),
            blob: other.blob.or(self.blob),
            public_url: other.public_url.or(self.public_url),
            artifact_ttl_s: other.artifact_ttl_s.or(self.artifact_ttl_s),
            artifact_replicas: other.artifact_replicas.or(self.artifact_replicas),
            artifact_sweep_ms: other.artifact_sweep_ms.or(self.artifact_sweep_ms),
            artifact_gc_ms: other.artifact_gc_ms.or(self.artifact_gc_ms),
            artifact_unnamed_grace_ms: other
                .artifact_unnamed_grace_ms
                .or(self.artifact_unnamed_grace_ms),
            upload_limit_bytes: other.upload_limit_bytes.or(self.upload_limit_bytes),
            disk_free_floor_mb: other.disk_free_floor_mb.or(self.disk_free_floor_mb),
        }
    }
}

/// A complete, checked node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub slots: usize,
    pub lease_ms: u64,
    /// See [`crate::worker::WorkerConfig::shutdown_grace_ms`].
    pub shutdown_grace_ms: u64,
    pub body_limit_bytes: usize,
    pub log_format: LogFormat,
    pub region: Option<String>,
    /// The apps this node serves; `None`: every app it has.
    pub serve_apps: Option<std::collections::BTreeSet<runmesh_proto::AppId>>,
    /// libp2p listen address; `None`: a node without peers (dev).
    pub p2p: Option<SocketAddr>,
    /// Raft QUIC listen address: `--raft`, else p2p port + 1. `None` without a mesh.
    pub raft: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub bootstrap: Option<String>,
    pub cluster_secret: Option<Secret>,
    pub voters: usize,
    /// A voter unheard this long is replaced by a healthy learner (membership policy).
    pub voter_down_after_ms: u64,
    /// Model weights dir; `None`: `<data_dir>/models`.
    pub models_dir: Option<PathBuf>,
    pub gpus: Option<String>,
    pub runners: Vec<String>,
    pub pool: crate::apps::pool::PoolConfig,
    /// fal compatibility: TLS, auth, rate limits, webhooks.
    pub compat: CompatConfig,
    /// Raft timing of a mesh node (a lone node keeps the job log's own, shorter timing).
    pub raft_timing: RaftTiming,
    pub dispatch_hold_file: Option<PathBuf>,
    pub place_at_submit: bool,
    /// Blob QUIC listen address: `--blob`, else p2p port + 2, else 127.0.0.1 on a free port.
    pub blob: SocketAddr,
    pub artifacts: crate::artifacts::ArtifactsConfig,
}

/// Raft heartbeat and election timeouts of a mesh node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// See `runmesh_raft::JobLogConfig::eager_campaign` [default: true].
    pub eager_campaign: bool,
    /// See `runmesh_raft::JobLogConfig::pre_vote` [default: true].
    pub pre_vote: bool,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self::from_keys(None, None, None)
    }
}

impl RaftTiming {
    /// Unset keys follow from the ones given: min = 7/3 of the heartbeat, max = 2 x min (300 ms
    /// gives 700..1400 ms), so changing only the heartbeat keeps the ratios that are known to work.
    pub fn from_keys(heartbeat: Option<u64>, min: Option<u64>, max: Option<u64>) -> Self {
        let heartbeat_ms = heartbeat.unwrap_or(DEFAULT_RAFT_HEARTBEAT_MS);
        let (min, max) = match (min, max) {
            (Some(lo), Some(hi)) => (lo, hi),
            (Some(lo), None) => (lo, lo.saturating_mul(2)),
            (None, Some(hi)) => (hi / 2, hi),
            (None, None) => {
                let lo = heartbeat_ms.saturating_mul(7).div_ceil(3);
                (lo, lo.saturating_mul(2))
            }
        };
        Self {
            heartbeat_ms,
            election_timeout_min_ms: min,
            election_timeout_max_ms: max,
            eager_campaign: true,
            pre_vote: true,
        }
    }

    /// openraft's timeout for one snapshot chunk: ten heartbeats (3 s by default), so a follower
    /// a continent away that needs a snapshot gets one (openraft's own 200 ms never completes
    /// there: docs/SIMULATION.md).
    pub fn install_snapshot_timeout_ms(&self) -> u64 {
        self.heartbeat_ms.saturating_mul(10)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let out = |key, value: u64, range: String| ConfigError::OutOfRange {
            key,
            value: value.to_string(),
            range,
        };
        let hb = self.heartbeat_ms;
        if !(RAFT_HEARTBEAT_MS_MIN..=RAFT_HEARTBEAT_MS_MAX).contains(&hb) {
            return Err(out(
                "raft_heartbeat_ms",
                hb,
                format!("{RAFT_HEARTBEAT_MS_MIN}..={RAFT_HEARTBEAT_MS_MAX}"),
            ));
        }
        let lo = self.election_timeout_min_ms;
        let floor = hb.saturating_mul(RAFT_ELECTION_HEARTBEATS_MIN);
        if lo < floor || lo > RAFT_ELECTION_TIMEOUT_MS_MAX {
            return Err(out(
                "raft_election_timeout_min_ms",
                lo,
                format!(
                    "{floor}..={RAFT_ELECTION_TIMEOUT_MS_MAX}: at least \
                     {RAFT_ELECTION_HEARTBEATS_MIN} heartbeats of {hb} ms"
                ),
            ));
        }
        let hi = self.election_timeout_max_ms;
        if hi <= lo || hi > RAFT_ELECTION_TIMEOUT_MS_MAX {
            return Err(out(
                "raft_election_timeout_max_ms",
                hi,
                format!(
                    "{}..={RAFT_ELECTION_TIMEOUT_MS_MAX}: above the minimum",
                    lo + 1
                ),
            ));
        }
        Ok(())
    }
}

/// TLS, auth and webhook settings of a node (issue 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompatConfig {
    pub tls: crate::tls::TlsMode,
    /// `run` always requires keys; `dev` only with `--require-auth`.
    pub require_auth: bool,
    pub admin_key: Option<Secret>,
    pub rate_per_s: u32,
    pub rate_burst: u32,
    pub webhooks: crate::webhooks::WebhookConfig,
    /// Where requests made for a caller may go (webhooks, input URLs).
    pub fetch_policy: crate::outbound::FetchPolicy,
    /// `None`: no `proxyUrl` endpoint.
    pub proxy_path: Option<String>,
    pub retention: runmesh_proto::Retention,
    pub realtime_idle_timeout_ms: u64,
    pub sse_keepalive_ms: u64,
}

pub const DEFAULT_RATE_PER_S: u32 = 200;
pub const DEFAULT_RATE_BURST: u32 = 400;

impl CompatConfig {
    fn resolve(c: &ConfigFile, is_run: bool) -> Result<Self, ConfigError> {
        use crate::tls::TlsMode;
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => TlsMode::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (Some(_), None) => return Err(ConfigError::Missing("tls_key (with tls_cert)")),
            (None, Some(_)) => return Err(ConfigError::Missing("tls_cert (with tls_key)")),
            (None, None) if c.tls == Some(true) => TlsMode::SelfSigned,
            (None, None) => TlsMode::Off,
        };
        let defaults = crate::webhooks::WebhookConfig::default();
        let webhooks = crate::webhooks::WebhookConfig {
            max_attempts: c
                .webhook_attempts
                .unwrap_or(defaults.max_attempts)
                .clamp(1, 100),
            backoff_base_ms: c
                .webhook_backoff_ms
                .unwrap_or(defaults.backoff_base_ms)
                .max(1),
            timeout_ms: c.webhook_timeout_ms.unwrap_or(defaults.timeout_ms).max(1),
            ..defaults
        };
        // A developer's own receivers and files are on loopback; a production node reaches only
        // the public internet unless its operator lists more.
        let fetch_policy = match &c.fetch_allow {
            Some(list) => crate::outbound::FetchPolicy::parse(list)
                .map_err(|e| ConfigError::Parse(e.to_string()))?,
            None if is_run => crate::outbound::FetchPolicy::default(),
            None => crate::outbound::FetchPolicy::loopback(),
        };
        Ok(Self {
            tls,
            fetch_policy,
            require_auth: is_run || c.require_auth.unwrap_or(false),
            admin_key: c.admin_key.clone().filter(|k| !k.0.trim().is_empty()),
            rate_per_s: c.rate_limit.unwrap_or(DEFAULT_RATE_PER_S),
            rate_burst: c.rate_burst.unwrap_or(DEFAULT_RATE_BURST).max(1),
            webhooks,
            proxy_path: match &c.fal_proxy_path {
                None => Some(runmesh_gateway_node::proxy::PROXY_PATH_DEFAULT.to_string()),
                Some(p) if p.trim().is_empty() => None,
                Some(p) if p.starts_with('/') => Some(p.trim().to_string()),
                Some(p) => Some(format!("/{}", p.trim())),
            },
            retention: {
                let d = runmesh_proto::Retention::default();
                runmesh_proto::Retention {
                    retain_ms: c.result_retention_ms.unwrap_or(d.retain_ms).max(1),
                    large_retain_ms: c
                        .large_result_retention_ms
                        .unwrap_or(d.large_retain_ms)
                        .max(1),
                }
            },
            realtime_idle_timeout_ms: c
                .realtime_idle_timeout_ms
                .unwrap_or(runmesh_gateway_node::REALTIME_IDLE_TIMEOUT_MS_DEFAULT)
                .max(1),
            sse_keepalive_ms: c
                .sse_keepalive_ms
                .unwrap_or(runmesh_gateway_node::stream::KEEPALIVE_INTERVAL.as_millis() as u64)
                .max(1),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(String, String),
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("{0} is required (flag or config key)")]
    Missing(&'static str),
    #[error("{key} = {value} is out of range ({range})")]
    OutOfRange {
        key: &'static str,
        value: String,
        range: String,
    },
}

impl NodeConfig {
    /// Fills gaps with the defaults. With `require_paths`, `data_dir` and `http` must be given
    /// (`runmesh run`: a production node should not guess where its data lives).
    pub fn resolve(c: ConfigFile, require_paths: bool) -> Result<Self, ConfigError> {
        let compat = CompatConfig::resolve(&c, require_paths)?;
        let data_dir = match c.data_dir {
            Some(d) => d,
            None if require_paths => return Err(ConfigError::Missing("data_dir")),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let http = match c.http {
            Some(h) => h,
            None if require_paths => return Err(ConfigError::Missing("http")),
            None => DEFAULT_HTTP
                .parse()
                .map_err(|_| ConfigError::Parse("default http address".into()))?,
        };
        // One job per GPU; without GPUs `run` takes 2, `dev` keeps its old default.
        let declared_gpus = c
            .gpus
            .as_deref()
            .and_then(|g| crate::gpu::parse_gpu_spec(g).ok())
            .map_or(0, |g| g.len());
        let default_slots = match (declared_gpus, require_paths) {
            (0, true) => DEFAULT_SLOTS_NO_GPU,
            (0, false) => DEFAULT_SLOTS,
            (n, _) => n,
        };
        let serve_apps = c.apps.as_deref().map(parse_serve_apps).transpose()?;
        // Listeners other than --p2p sit just above it: Raft on +1, blobs on +2.
        let blob = match (c.blob, c.p2p) {
            (Some(b), _) => b,
            (None, Some(p)) if p.port() != 0 => {
                let port = p.port().checked_add(2).ok_or(ConfigError::OutOfRange {
                    key: "p2p",
                    value: p.to_string(),
                    range: "a fixed port below 65534 (the blob port is p2p + 2), or set blob"
                        .into(),
                })?;
                SocketAddr::new(p.ip(), port)
            }
            (None, _) => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let art_defaults = crate::artifacts::ArtifactsConfig::default();
        let artifacts = crate::artifacts::ArtifactsConfig {
            ttl_ms: c
                .artifact_ttl_s
                .map_or(art_defaults.ttl_ms, |s| s.saturating_mul(1000).max(1000)),
            replicas: c.artifact_replicas.unwrap_or(art_defaults.replicas).min(16),
            public_base: c
                .public_url
                .clone()
                .map(|u| u.trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty()),
            sweep_ms: c
                .artifact_sweep_ms
                .unwrap_or(art_defaults.sweep_ms)
                .max(100),
            gc_ms: c.artifact_gc_ms.unwrap_or(art_defaults.gc_ms).max(100),
            unnamed_grace_ms: c
                .artifact_unnamed_grace_ms
                .unwrap_or(art_defaults.unnamed_grace_ms),
            upload_max_bytes: c
                .upload_limit_bytes
                .unwrap_or(art_defaults.upload_max_bytes),
            disk_free_floor_bytes: c
                .disk_free_floor_mb
                .map_or(art_defaults.disk_free_floor_bytes, |mb| {
                    mb.saturating_mul(1 << 20)
                }),
        };
        let cfg = Self {
            data_dir,
            http,
            slots: c.slots.unwrap_or(default_slots),
            lease_ms: c.lease_ms.unwrap_or(DEFAULT_LEASE_MS),
            shutdown_grace_ms: c
                .shutdown_grace_ms
                .unwrap_or(crate::worker::DEFAULT_SHUTDOWN_GRACE_MS),
            body_limit_bytes: c.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT_BYTES),
            log_format: c.log_format.unwrap_or_default(),
            region: c.region.filter(|r| !r.is_empty()),
            serve_apps,
            raft: match (c.raft, c.p2p) {
                (Some(r), _) => Some(r),
                (None, Some(p)) => {
                    let port =
                        p.port()
                            .checked_add(1)
                            .filter(|_| p.port() != 0)
                            .ok_or(ConfigError::OutOfRange {
                            key: "p2p",
                            value: p.to_string(),
                            range:
                                "a fixed port below 65535 (the Raft port is p2p + 1), or set raft"
                                    .into(),
                        })?;
                    Some(SocketAddr::new(p.ip(), port))
                }
                (None, None) => None,
            },
            p2p: c.p2p,
            advertise: c.advertise.filter(|a| !a.is_empty()),
            bootstrap: c.bootstrap.filter(|b| !b.is_empty()),
            cluster_secret: c.cluster_secret.filter(|s| !s.0.is_empty()),
            voters: c.voters.unwrap_or(DEFAULT_VOTERS),
            voter_down_after_ms: c
                .voter_down_after_ms
                .unwrap_or(crate::mesh::membership::DEFAULT_VOTER_DOWN_AFTER_MS),
            compat,
            models_dir: c.models_dir,
            gpus: c.gpus.filter(|g| !g.trim().is_empty()),
            runners: c.runners.unwrap_or_default(),
            pool: c.models.map(Into::into).unwrap_or_default(),
            raft_timing: RaftTiming {
                eager_campaign: c.raft_eager_campaign.unwrap_or(true),
                pre_vote: c.raft_pre_vote.unwrap_or(true),
                ..RaftTiming::from_keys(
                    c.raft_heartbeat_ms,
                    c.raft_election_timeout_min_ms,
                    c.raft_election_timeout_max_ms,
                )
            },
            dispatch_hold_file: c.dispatch_hold_file,
            place_at_submit: c.place_at_submit.unwrap_or(true),
            blob,
            artifacts,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        fn range<T: PartialOrd + ToString>(
            key: &'static str,
            v: T,
            min: T,
            max: T,
        ) -> Result<(), ConfigError> {
            if v < min || v > max {
                return Err(ConfigError::OutOfRange {
                    key,
                    value: v.to_string(),
                    range: format!("{}..={}", min.to_string(), max.to_string()),
                });
            }
            Ok(())
        }
        range("slots", self.slots, 1, SLOTS_MAX)?;
        range("lease_ms", self.lease_ms, LEASE_MS_MIN, LEASE_MS_MAX)?;
        range(
            "shutdown_grace_ms",
            self.shutdown_grace_ms,
            0,
            SHUTDOWN_GRACE_MS_MAX,
        )?;
        range(
            "body_limit_bytes",
            self.body_limit_bytes,
            1024,
            BODY_LIMIT_BYTES_MAX,
        )?;
        range("voters", self.voters, 1, VOTERS_MAX)?;
        self.raft_timing.check()?;
        // Shorter than an election would replace voters that are merely electing a leader.
        range(
            "voter_down_after_ms",
            self.voter_down_after_ms,
            self.raft_timing.election_timeout_max_ms,
            VOTER_DOWN_AFTER_MS_MAX,
        )?;
        if let Some(g) = &self.gpus {
            crate::gpu::parse_gpu_spec(g).map_err(|e| ConfigError::Parse(format!("gpus: {e}")))?;
        }
        range(
            "runners",
            self.runners.len(),
            0,
            crate::runners::RUNNERS_MAX,
        )?;
        if self.bootstrap.is_some() && self.raft.is_none() {
            return Err(ConfigError::Missing(
                "p2p (or raft) to join through bootstrap",
            ));
        }
        if self.bootstrap.is_some() && self.cluster_secret.is_none() {
            return Err(ConfigError::Missing(
                "cluster_secret to join through bootstrap",
            ));
        }
        Ok(())
    }

    pub fn worker(&self) -> WorkerConfig {
        WorkerConfig {
            slots: self.slots,
            lease_ms: self.lease_ms,
            shutdown_grace_ms: self.shutdown_grace_ms,
            dispatch_hold_file: self.dispatch_hold_file.clone(),
            place_at_submit: self.place_at_submit,
            ..WorkerConfig::default()
        }
    }
}

/// Parses a served-apps list (`owner/alias` each; commas inside an entry split it further, so
/// `--models a/b,c/d` and `apps = ["a/b", "c/d"]` both work). Empty: serve nothing.
pub fn parse_serve_apps(
    list: &[String],
) -> Result<std::collections::BTreeSet<runmesh_proto::AppId>, ConfigError> {
    let mut out = std::collections::BTreeSet::new();
    for item in list.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let model = runmesh_proto::ModelId::parse(item)
            .ok()
            .filter(|m| m.subpath.is_none())
            .ok_or_else(|| {
                ConfigError::Parse(format!("models: {item:?} is not an app id (owner/alias)"))
            })?;
        out.insert(model.app);
        if out.len() > SERVE_APPS_MAX {
            return Err(ConfigError::Parse(format!(
                "models: more than {SERVE_APPS_MAX} apps"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_fill_an_empty_file() {
        let c = NodeConfig::resolve(ConfigFile::default(), false).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./runmesh-data"));
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        assert_eq!((c.slots, c.lease_ms), (4, 5_000));
        assert_eq!(c.body_limit_bytes, 10 * 1024 * 1024);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.worker().lease_ms, 5_000);
    }

    #[test]
    fn parses_every_key_and_rejects_unknown_ones() {
        let f = ConfigFile::parse(
            r#"
            data_dir = "/var/lib/runmesh"
            http = "0.0.0.0:9000"
            slots = 8
            lease_ms = 3000
            body_limit_bytes = 1048576
            log_format = "json"
            region = "eu"
            "#,
        )
        .unwrap();
        let c = NodeConfig::resolve(f, true).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/runmesh"));
        assert_eq!(c.http.port(), 9000);
        assert_eq!(
            (c.slots, c.lease_ms, c.body_limit_bytes),
            (8, 3000, 1 << 20)
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.region.as_deref(), Some("eu"));
        assert!(matches!(
            ConfigFile::parse("slot = 3"),
            Err(ConfigError::Parse(_))
        ));
        assert!(ConfigFile::parse("http = \"not an addr\"").is_err());
        assert!(ConfigFile::parse("log_format = \"xml\"").is_err());
    }

    #[test]
    fn flags_overlay_the_file_and_ranges_are_checked() {
        let file = ConfigFile::parse("slots = 8\nlease_ms = 3000").unwrap();
        let flags = ConfigFile {
            slots: Some(2),
            ..ConfigFile::default()
        };
        let merged = file.overlay(flags);
        assert_eq!((merged.slots, merged.lease_ms), (Some(2), Some(3000)));
        assert_eq!(
            NodeConfig::resolve(merged, true),
            Err(ConfigError::Missing("data_dir"))
        );
        let zero = ConfigFile {
            slots: Some(0),
            ..ConfigFile::default()
        };
        assert!(matches!(
            NodeConfig::resolve(zero, false),
            Err(ConfigError::OutOfRange { key: "slots", .. })
        ));
        let short = ConfigFile {
            lease_ms: Some(10),
            ..ConfigFile::default()
        };
        assert!(NodeConfig::resolve(short, false).is_err());
    }

    #[test]
    fn mesh_keys_place_the_raft_port_and_joining_needs_a_secret() {
        let f = ConfigFile::parse(
            "p2p = \"127.0.0.1:9000\"\ncluster_secret = \"s\"\nvoters = 5\nbootstrap = \"h:7000\"",
        )
        .unwrap();
        let c = NodeConfig::resolve(f, false).unwrap();
        assert_eq!(c.raft.unwrap().to_string(), "127.0.0.1:9001");
        assert_eq!(c.voters, 5);
        assert_eq!(format!("{:?}", c.cluster_secret), "Some(Secret(..))");
        let explicit =
            ConfigFile::parse("p2p = \"127.0.0.1:9000\"\nraft = \"127.0.0.1:7777\"").unwrap();
        assert_eq!(
            NodeConfig::resolve(explicit, false)
                .unwrap()
                .raft
                .unwrap()
                .port(),
            7777
        );
        let alone = NodeConfig::resolve(ConfigFile::default(), false).unwrap();
        assert_eq!((alone.raft, alone.voters), (None, DEFAULT_VOTERS));
        let no_secret = ConfigFile::parse("p2p = \"127.0.0.1:9000\"\nbootstrap = \"h:1\"").unwrap();
        assert!(NodeConfig::resolve(no_secret, false).is_err());
        let no_port = ConfigFile::parse("bootstrap = \"h:1\"\ncluster_secret = \"s\"").unwrap();
        assert!(NodeConfig::resolve(no_port, false).is_err());
        let zero = ConfigFile::parse("p2p = \"127.0.0.1:0\"").unwrap();
        assert!(NodeConfig::resolve(zero, false).is_err());
        let voters = ConfigFile::parse("voters = 0").unwrap();
        assert!(NodeConfig::resolve(voters, false).is_err());

        // How long a silent voter keeps its seat: a key, at least the longest election timeout.
        assert_eq!(
            alone.voter_down_after_ms,
            crate::mesh::membership::DEFAULT_VOTER_DOWN_AFTER_MS
        );
        let wait = |text: &str| NodeConfig::resolve(ConfigFile::parse(text).unwrap(), false);
        assert_eq!(
            wait("voter_down_after_ms = 30000")
                .unwrap()
                .voter_down_after_ms,
            30_000
        );
        assert!(matches!(
            wait("voter_down_after_ms = 500"),
            Err(ConfigError::OutOfRange {
                key: "voter_down_after_ms",
                ..
            })
        ));
    }

    #[test]
    fn raft_timing_defaults_follow_the_heartbeat_and_are_checked() {
        let t = |text: &str| NodeConfig::resolve(ConfigFile::parse(text).unwrap(), false);
        let d = t("").unwrap().raft_timing;
        assert_eq!(d, RaftTiming::default());
        assert_eq!(
            (
                d.heartbeat_ms,
                d.election_timeout_min_ms,
                d.election_timeout_max_ms
            ),
            (300, 700, 1400)
        );
        let lan = t("raft_heartbeat_ms = 30").unwrap().raft_timing;
        assert_eq!(
            (lan.election_timeout_min_ms, lan.election_timeout_max_ms),
            (70, 140)
        );
        let given = t(
            "raft_heartbeat_ms = 50\nraft_election_timeout_min_ms = 150\n\
                       raft_election_timeout_max_ms = 300",
        )
        .unwrap()
        .raft_timing;
        assert_eq!(
            (
                given.heartbeat_ms,
                given.election_timeout_min_ms,
                given.election_timeout_max_ms
            ),
            (50, 150, 300)
        );
        assert_eq!(
            t("raft_election_timeout_min_ms = 900")
                .unwrap()
                .raft_timing
                .election_timeout_max_ms,
            1800
        );
        // An election sooner than two heartbeats, max not above min, silly values: refused.
        for bad in [
            "raft_heartbeat_ms = 5",
            "raft_heartbeat_ms = 100000",
            "raft_heartbeat_ms = 300\nraft_election_timeout_min_ms = 500",
            "raft_election_timeout_min_ms = 800\nraft_election_timeout_max_ms = 800",
            "raft_election_timeout_max_ms = 100",
            "raft_election_timeout_min_ms = 700\nraft_election_timeout_max_ms = 9000000",
        ] {
            let e = t(bad).unwrap_err();
            assert!(
                matches!(e, ConfigError::OutOfRange { key, .. } if key.starts_with("raft_")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../configs/dev.toml");
        let c = NodeConfig::resolve(ConfigFile::parse(text).unwrap(), true).unwrap();
        assert_eq!(c.slots, 4);
        let text = include_str!("../../configs/mesh.toml");
        // Its secret comes from the environment.
        let secret = ConfigFile {
            cluster_secret: Some(Secret("s".into())),
            ..ConfigFile::default()
        };
        let c =
            NodeConfig::resolve(ConfigFile::parse(text).unwrap().overlay(secret), true).unwrap();
        assert_eq!(c.raft_timing, RaftTiming::default());
        assert_eq!(c.raft.unwrap().port(), 9001);
    }

    #[test]
    fn compat_keys_parse_and_run_always_requires_auth() {
        use crate::tls::TlsMode;
        let f = ConfigFile::parse(
            "tls = true\nrate_limit = 5\nwebhook_attempts = 3\nadmin_key = \"a:b\"",
        )
        .unwrap();
        let dev = NodeConfig::resolve(f.clone(), false).unwrap();
        assert_eq!(dev.compat.tls, TlsMode::SelfSigned);
        assert!(!dev.compat.require_auth);
        assert_eq!(
            (dev.compat.rate_per_s, dev.compat.webhooks.max_attempts),
            (5, 3)
        );
        let run = ConfigFile {
            data_dir: Some("/d".into()),
            http: Some("127.0.0.1:1".parse().unwrap()),
            ..f
        };
        assert!(NodeConfig::resolve(run, true).unwrap().compat.require_auth);
        let half = ConfigFile::parse("tls_cert = \"/c.pem\"").unwrap();
        assert!(NodeConfig::resolve(half, false).is_err());
        let files = ConfigFile::parse("tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"").unwrap();
        assert!(matches!(
            NodeConfig::resolve(files, false).unwrap().compat.tls,
            TlsMode::Files { .. }
        ));
    }

    #[test]
    fn fetch_allow_defaults_to_loopback_on_dev_and_nothing_on_run() {
        use crate::outbound::FetchPolicy;
        let paths = ConfigFile {
            data_dir: Some("/d".into()),
            http: Some("127.0.0.1:1".parse().unwrap()),
            ..ConfigFile::default()
        };
        let dev = NodeConfig::resolve(paths.clone(), false).unwrap();
        assert_eq!(dev.compat.fetch_policy, FetchPolicy::loopback());
        let run = NodeConfig::resolve(paths.clone(), true).unwrap();
        assert_eq!(run.compat.fetch_policy, FetchPolicy::default());
        let listed =
            ConfigFile::parse("fetch_allow = [\"10.0.0.0/8\", \"minio.internal\"]").unwrap();
        let c = NodeConfig::resolve(paths.clone().overlay(listed), true).unwrap();
        assert!(c
            .compat
            .fetch_policy
            .addr_allowed("10.1.1.1".parse().unwrap()));
        assert!(c.compat.fetch_policy.host_listed("minio.internal"));
        let none = ConfigFile {
            fetch_allow: Some(vec!["none".into()]),
            ..paths.clone()
        };
        let c = NodeConfig::resolve(none, false).unwrap();
        assert_eq!(c.compat.fetch_policy, FetchPolicy::default());
        let bad = ConfigFile {
            fetch_allow: Some(vec!["10.0.0.0/99".into()]),
            ..paths
        };
        assert!(NodeConfig::resolve(bad, false).is_err());
    }

    #[test]
    fn runner_model_and_gpu_keys_parse() {
        let f = ConfigFile::parse(
            r#"
            models_dir = "/m"
            gpus = "H100:80,H100:80"
            runners = ["python3 runner.py"]
            [models]
            memory_budget_mb = 2048
            [models.all-minilm-l6-v2]
            min_warm = 1
            max_concurrency = 2
            "#,
        )
        .unwrap();
        let c = NodeConfig::resolve(f, false).unwrap();
        assert_eq!(c.models_dir, Some(PathBuf::from("/m")));
        assert_eq!(c.runners, ["python3 runner.py"]);
        assert_eq!(c.pool.memory_budget_mb, 2048);
        let p = c.pool.policy("all-minilm-l6-v2");
        assert_eq!((p.min_warm, p.max_concurrency), (1, Some(2)));
        assert!(ConfigFile::parse("[models.x]\nmin_warm = 1\nwarm = 2").is_err());
        let bad = ConfigFile::parse("gpus = \"H100\"").unwrap();
        assert!(NodeConfig::resolve(bad, false).is_err());
    }
}
