//! This node's capacity advert, the shared handle on the cluster view ([`Mesh`]), the loop that
//! refreshes the advert about once a second, and the `runmesh status` table.
//!
//! [`build_advert`] is a pure function of the job table and what the node knows about itself; the
//! loop around it only carries time and hands the advert to the gossip layer (when there is one).
//! Without gossip (`runmesh dev`) the view holds this node alone, which is all a single node's
//! dispatcher needs.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use runmesh_gateway_node::ClusterInfo;
use runmesh_proto::advert::{CapacityAdvert, GpuAdvert, MemberStatus, ServedApp};
use runmesh_proto::{AppId, Clock, NodeId};
use runmesh_raft::{JobLog, JobTable};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::view::{ClusterView, Observed, Transition, ViewConfig};
use crate::apps::AppRegistry;
use crate::gpu::GpuInfo;
use crate::worker::{Dispatcher, WorkerConfig};

/// How often a node refreshes (and gossips) its advert.
pub const ADVERT_INTERVAL: Duration = Duration::from_secs(1);
/// An app that ran a job this recently counts as warm (loaded) here.
pub const WARM_TTL_MS: u64 = 10 * 60 * 1000;
/// Apps remembered as warm at most (a bound on the map, not a policy).
const WARM_APPS_MAX: usize = 4096;

/// What one instance of a served app costs, from its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCost {
    pub app: AppId,
    pub gpu_memory_mb: u64,
    pub warmup_ms: u64,
}

/// What a node says about itself that does not change while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNode {
    /// libp2p peer id, or empty without gossip.
    pub peer_id: String,
    pub raft_node_id: NodeId,
    pub region: Option<String>,
    pub slots: u32,
    /// The apps this node serves (`--models`), with their costs.
    pub apps: Vec<AppCost>,
    pub api_addr: Option<String>,
    pub raft_addr: Option<String>,
    pub blob_addr: Option<String>,
    /// GPUs come from a declaration, not a measurement: book the GPU memory of running jobs against
    /// them (a measured GPU already shows it as used).
    pub gpus_declared: bool,
    /// Start time of this process (orders adverts across restarts).
    pub incarnation: u64,
}

impl LocalNode {
    /// The served apps and their costs from the registry, limited to `models` when given.
    pub fn apps_from_registry(
        registry: &AppRegistry,
        models: Option<&BTreeSet<AppId>>,
    ) -> Vec<AppCost> {
        registry
            .manifests()
            .into_iter()
            .filter(|m| models.is_none_or(|only| only.contains(&m.id)))
            .map(|m| AppCost {
                app: m.id,
                gpu_memory_mb: m.gpu_memory_mb,
                warmup_ms: m.warmup_ms,
            })
            .collect()
    }

    pub fn serves(&self, app: &AppId) -> bool {
        self.apps.iter().any(|a| &a.app == app)
    }

    fn cost(&self, app: &AppId) -> Option<&AppCost> {
        self.apps.iter().find(|a| &a.app == app)
    }
}

/// Apps that ran here recently, with when they last ran (the worker touches them).
#[derive(Clone, Default)]
pub struct WarmSet(Arc<Mutex<HashMap<AppId, u64>>>);

impl WarmSet {
    pub fn touch(&self, app: &AppId, now_ms: u64) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if m.len() >= WARM_APPS_MAX && !m.contains_key(app) {
            m.retain(|_, t| now_ms.saturating_sub(*t) < WARM_TTL_MS);
            if m.len() >= WARM_APPS_MAX {
                return;
            }
        }
        m.insert(app.clone(), now_ms);
    }

    pub fn warm_at(&self, now_ms: u64) -> BTreeSet<AppId> {
        let m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.iter()
            .filter(|(_, t)| now_ms.saturating_sub(**t) < WARM_TTL_MS)
            .map(|(a, _)| a.clone())
            .collect()
    }
}

/// This node's advert as of `now_ms`. Pure: the table, the GPUs and the memory figures are inputs.
#[allow(clippy::too_many_arguments)]
pub fn build_advert(
    local: &LocalNode,
    table: &JobTable,
    gpus: &[GpuInfo],
    memory_mb: Option<(u64, u64)>,
    warm: &BTreeSet<AppId>,
    p2p_addrs: &[String],
    now_ms: u64,
    seq: u64,
) -> CapacityAdvert {
    let me = local.raft_node_id;
    let mut gpu_free: Vec<u64> = gpus.iter().map(|g| g.memory_free_mb).collect();
    let mut running = 0u32;
    for rec in table.running_on(me) {
        running = running.saturating_add(1);
        let need = local.cost(rec.spec.app()).map_or(0, |c| c.gpu_memory_mb);
        if local.gpus_declared && need > 0 {
            // Same booking rule as the scheduler: the GPU with the most free memory.
            if let Some(free) = gpu_free.iter_mut().max() {
                *free = free.saturating_sub(need);
            }
        }
    }
    let queued = local
        .apps
        .iter()
        .map(|a| table.queue_len(&a.app))
        .fold(0usize, usize::saturating_add);
    let (memory_total_mb, memory_free_mb) = memory_mb.unwrap_or((0, 0));
    CapacityAdvert {
        peer_id: local.peer_id.clone(),
        raft_node_id: me,
        region: local.region.clone(),
        gpus: gpus
            .iter()
            .zip(gpu_free)
            .map(|(g, free)| GpuAdvert {
                name: g.name.clone(),
                memory_total_mb: g.memory_total_mb,
                memory_free_mb: free,
                utilization_pct: g.utilization_pct,
            })
            .collect(),
        memory_total_mb,
        memory_free_mb,
        slots: local.slots,
        running,
        queued: u32::try_from(queued).unwrap_or(u32::MAX),
        apps: local
            .apps
            .iter()
            .map(|a| ServedApp {
                app: a.app.clone(),
                gpu_memory_mb: a.gpu_memory_mb,
                warmup_ms: a.warmup_ms,
                warm: warm.contains(&a.app),
            })
            .collect(),
        api_addr: local.api_addr.clone(),
        raft_addr: local.raft_addr.clone(),
        blob_addr: local.blob_addr.clone(),
        p2p_addrs: p2p_addrs.to_vec(),
        timestamp_ms: now_ms,
        incarnation: local.incarnation,
        seq,
    }
}

/// Total and available host memory in MB, from /proc/meminfo (Linux); `None` elsewhere.
pub fn system_memory_mb() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    let total = field("MemTotal:")?;
    let free = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some((total / 1024, free / 1024))
}

/// Where the node's GPU figures come from each time an advert is made.
pub type GpuSource = Arc<dyn Fn() -> Vec<GpuInfo> + Send + Sync>;
/// Whether an app is loaded now.
pub type WarmProbe = Arc<dyn Fn(&AppId) -> bool + Send + Sync>;

/// The node's shared handle on the cluster view: the gossip layer feeds it remote adverts, the
/// advertiser feeds it this node's own, the dispatcher and `/admin/cluster` read it. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

struct MeshInner {
    view: Mutex<ClusterView>,
    local: LocalNode,
    clock: Arc<dyn Clock>,
    gpus: GpuSource,
    warm: WarmSet,
    /// Whether an app is loaded now, by the app's own account (its warm pool).
    warm_probe: Option<WarmProbe>,
    p2p_addrs: Mutex<Vec<String>>,
    seq: Mutex<u64>,
    /// Signalled when a member comes up, changes capacity, or goes suspect/down.
    changed: Notify,
    /// The node is stopping: it advertises no slots, so nobody places new jobs on it.
    stopping: std::sync::atomic::AtomicBool,
}

impl Mesh {
    pub fn new(
        local: LocalNode,
        view: ViewConfig,
        clock: Arc<dyn Clock>,
        gpus: GpuSource,
        warm: WarmSet,
    ) -> Self {
        Self {
            inner: Arc::new(MeshInner {
                view: Mutex::new(ClusterView::new(local.raft_node_id, view)),
                local,
                clock,
                gpus,
                warm,
                warm_probe: None,
                p2p_addrs: Mutex::new(Vec::new()),
                seq: Mutex::new(0),
                changed: Notify::new(),
                stopping: Default::default(),
            }),
        }
    }

    /// Also counts an app warm when `probe` says it is loaded (apps that keep a warm pool know).
    /// Only before the handle is shared.
    pub fn with_warm_probe(mut self, probe: WarmProbe) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.warm_probe = Some(probe);
        }
        self
    }

    pub fn local(&self) -> &LocalNode {
        &self.inner.local
    }

    pub fn warm(&self) -> &WarmSet {
        &self.inner.warm
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn view(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        self.inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The libp2p addresses this node listens on (the gossip layer reports them).
    pub fn set_p2p_addrs(&self, addrs: Vec<String>) {
        *self
            .inner
            .p2p_addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = addrs;
    }

    /// Makes a fresh advert of this node, records it in the view, and returns it for gossip.
    pub fn refresh_self(&self, joblog: &JobLog) -> CapacityAdvert {
        let now_ms = self.now_ms();
        let gpus = (self.inner.gpus)();
        let memory = system_memory_mb();
        let mut warm = self.inner.warm.warm_at(now_ms);
        if let Some(probe) = &self.inner.warm_probe {
            warm.extend(
                self.inner
                    .local
                    .apps
                    .iter()
                    .filter(|a| probe(&a.app))
                    .map(|a| a.app.clone()),
            );
        }
        let p2p = self
            .inner
            .p2p_addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let seq = {
            let mut s = self
                .inner
                .seq
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *s += 1;
            *s
        };
        let local = &self.inner.local;
        let mut advert =
            joblog.read(|t| build_advert(local, t, &gpus, memory, &warm, &p2p, now_ms, seq));
        if self.is_stopping() {
            advert.slots = 0;
        }
        self.view().observe_self(advert.clone(), now_ms);
        advert
    }

    /// Records an advert heard from another node.
    pub fn observe(&self, advert: CapacityAdvert) -> Observed {
        let now_ms = self.now_ms();
        let node = advert.raft_node_id;
        let (observed, transition) = self.view().observe(advert, now_ms);
        if let Some(t) = transition {
            log_transition(t);
        }
        match observed {
            Observed::New | Observed::Updated => self.inner.changed.notify_waiters(),
            Observed::Stale => {}
            Observed::NotSelf => debug!(node, "ignored an advert naming this node"),
            Observed::Full => debug!(node, "cluster view full; advert ignored"),
            Observed::FromTheFuture => {
                warn!(
                    node,
                    "advert with an incarnation far ahead of this node's clock ignored"
                )
            }
        }
        observed
    }

    /// Re-judges liveness now; logs and signals what changed.
    pub fn tick(&self) -> Vec<Transition> {
        let now_ms = self.now_ms();
        let changes = self.view().tick(now_ms);
        for t in &changes {
            log_transition(*t);
        }
        if !changes.is_empty() {
            self.inner.changed.notify_waiters();
        }
        changes
    }

    /// Adverts of the members that may take new work.
    pub fn up_adverts(&self) -> Vec<CapacityAdvert> {
        let me = self.inner.local.raft_node_id;
        let stopping = self.is_stopping();
        self.view()
            .up()
            .filter(|a| !(stopping && a.raft_node_id == me))
            .cloned()
            .collect()
    }

    /// A graceful stop began: from now on this node advertises no free slots (at once here, and
    /// to the others with its next advert).
    pub fn stop_taking_jobs(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.changed.notify_waiters();
    }

    fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every member with its liveness, as of now.
    pub fn members(&self) -> Vec<MemberStatus> {
        let now_ms = self.now_ms();
        let mut view = self.view();
        for t in view.tick(now_ms) {
            log_transition(t);
        }
        view.members(now_ms)
    }

    /// Resolves at the next view change (see [`MeshInner::changed`]).
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }
}

impl ClusterInfo for Mesh {
    fn self_id(&self) -> NodeId {
        self.inner.local.raft_node_id
    }

    fn members(&self) -> Vec<MemberStatus> {
        Mesh::members(self)
    }
}

fn log_transition(t: Transition) {
    let name = |l: Option<runmesh_proto::advert::Liveness>| l.map_or("absent", |l| l.as_str());
    info!(
        node = t.node,
        from = name(t.from),
        to = name(t.to),
        "cluster member state changed"
    );
}

/// Refreshes this node's advert every `every`, re-judges the view, and hands each advert to
/// `publish` (the gossip layer; dropped when it is busy: the next one follows in a second).
pub async fn run_advertiser(
    mesh: Mesh,
    joblog: JobLog,
    publish: Option<mpsc::Sender<CapacityAdvert>>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = tick.tick() => {
                let advert = mesh.refresh_self(&joblog);
                mesh.tick();
                if let Some(tx) = &publish {
                    let _ = tx.try_send(advert);
                }
            }
        }
    }
}

/// `runmesh status`: the `/admin/cluster` JSON as a table.
pub fn render_cluster_table(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let me = s(&v["node_id"]);
    let leader = s(&v["leader"]);
    let mut rows: Vec<[String; 9]> = vec![[
        "NODE".into(),
        "ROLE".into(),
        "STATE".into(),
        "REGION".into(),
        "GPUS".into(),
        "LOAD".into(),
        "QUEUED".into(),
        "API".into(),
        "RAFT".into(),
    ]];
    let empty = Vec::new();
    for m in v["members"].as_array().unwrap_or(&empty) {
        let id = s(&m["id"]);
        let mut name = id.clone();
        if id == leader {
            name.push_str(" (leader)");
        }
        if id == me {
            name.push_str(" *");
        }
        let gpus: Vec<String> = m["gpus"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|g| {
                format!(
                    "{}:{}/{}G",
                    s(&g["name"]),
                    g["memory_free_mb"].as_u64().unwrap_or(0) / 1024,
                    g["memory_total_mb"].as_u64().unwrap_or(0) / 1024
                )
            })
            .collect();
        let load = match (m["running"].as_u64(), m["slots"].as_u64()) {
            (Some(r), Some(sl)) => format!("{r}/{sl}"),
            _ => "-".into(),
        };
        let mut role = s(&m["role"]);
        if m["draining"].as_bool() == Some(true) {
            role.push_str(",draining");
        }
        rows.push([
            name,
            role,
            s(&m["state"]),
            s(&m["region"]),
            if gpus.is_empty() {
                "-".into()
            } else {
                gpus.join(",")
            },
            load,
            s(&m["queued"]),
            s(&m["addresses"]["api"]),
            s(&m["addresses"]["raft"]),
        ]);
    }
    let mut widths = [0usize; 9];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for r in v["removed"].as_array().unwrap_or(&empty) {
        let _ = writeln!(
            out,
            "removed: {} (since {}; `runmesh node readmit` lets it join again)",
            s(&r["id"]),
            s(&r["removed_at"])
        );
    }
    out
}

/// What [`start_mesh`] needs from the node's configuration.
#[derive(Clone)]
pub struct MeshOptions {
    pub slots: usize,
    pub region: Option<String>,
    /// Where GPU figures come from (NVML, else the `--gpus` declaration).
    pub gpus: Arc<dyn crate::gpu::GpuProbe>,
    /// `--models`: the apps to serve; `None`: every app in the registry.
    pub serve_apps: Option<BTreeSet<AppId>>,
    /// Where the HTTP API listens (as bound).
    pub api_addr: SocketAddr,
    pub raft_addr: Option<SocketAddr>,
    /// Host peers reach this node at, replacing an unspecified (0.0.0.0 / ::) listen address.
    pub advertise: Option<String>,
    /// libp2p listen address; `None`: no gossip (the view holds this node alone).
    pub p2p: Option<SocketAddr>,
    pub bootstrap: Option<String>,
    pub worker: WorkerConfig,
    /// This node's blob endpoint (`<key hex>@ip:port`), advertised so peers can fetch files.
    pub blob_addr: Option<String>,
}

/// What [`start_mesh`] started.
pub struct MeshHandles {
    pub mesh: Mesh,
    pub tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[cfg(feature = "p2p")]
    #[error(transparent)]
    Gossip(#[from] super::gossip::GossipError),
    #[error("--p2p needs a build with the `p2p` feature")]
    NoP2p,
    #[error("--p2p needs the node's libp2p key")]
    NoKey,
}

/// An address as peers should dial it: the advertised host in place of an unspecified IP.
pub fn dialable(addr: SocketAddr, advertise: Option<&str>) -> String {
    match advertise {
        Some(host) if addr.ip().is_unspecified() => {
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{}", addr.port())
            } else {
                format!("{host}:{}", addr.port())
            }
        }
        _ => addr.to_string(),
    }
}

/// Starts the mesh side of a node: the cluster view with this node's advert, the advertiser, the
/// dispatcher and (with `p2p`) the gossip layer. Every task stops on `shutdown`. `warm` is the set
/// the worker records the apps it runs in ([`crate::worker::Worker::with_warm_set`]).
pub async fn start_mesh(
    opts: MeshOptions,
    joblog: &JobLog,
    registry: &AppRegistry,
    warm: WarmSet,
    clock: Arc<dyn Clock>,
    #[cfg(feature = "p2p")] keypair: Option<libp2p::identity::Keypair>,
    shutdown: watch::Receiver<bool>,
) -> Result<MeshHandles, MeshError> {
    if let Some(only) = &opts.serve_apps {
        for app in only.iter().filter(|a| !registry.serves(a)) {
            tracing::warn!(%app, "--models names an app this node does not have; ignored");
        }
    }
    let apps = LocalNode::apps_from_registry(registry, opts.serve_apps.as_ref());
    info!(
        apps = %apps.iter().map(|a| a.app.path()).collect::<Vec<_>>().join(","),
        gpus = opts.gpus.gpus().len(),
        slots = opts.slots,
        "serving"
    );
    #[cfg(feature = "p2p")]
    let peer_id = keypair
        .as_ref()
        .map(|k| k.public().to_peer_id().to_string())
        .unwrap_or_default();
    #[cfg(not(feature = "p2p"))]
    let peer_id = String::new();
    let advertise = opts.advertise.as_deref();
    let local = LocalNode {
        peer_id,
        raft_node_id: joblog.node_id(),
        region: opts.region.clone(),
        slots: u32::try_from(opts.slots).unwrap_or(u32::MAX),
        apps,
        api_addr: Some(dialable(opts.api_addr, advertise)),
        raft_addr: opts.raft_addr.map(|a| dialable(a, advertise)),
        blob_addr: opts.blob_addr.clone(),
        // Measured GPUs already count what runs on them; declared ones need the booking.
        gpus_declared: opts.gpus.source() != crate::gpu::GpuSource::Nvml,
        incarnation: clock.now_ms(),
    };
    let probe = opts.gpus.clone();
    let mesh = Mesh::new(
        local,
        ViewConfig::default(),
        clock.clone(),
        Arc::new(move || probe.gpus()),
        warm,
    )
    .with_warm_probe({
        let registry = registry.clone();
        Arc::new(move |app: &AppId| registry.get(app).is_some_and(|a| a.is_warm()))
    });
    // The dispatcher needs this node's own advert from its first round on.
    mesh.refresh_self(joblog);
    let mut tasks = Vec::new();

    let publish = match opts.p2p {
        None => None,
        #[cfg(feature = "p2p")]
        Some(listen) => {
            let keypair = keypair.ok_or(MeshError::NoKey)?;
            let (tx, rx) = mpsc::channel(super::gossip::PUBLISH_QUEUE);
            let cfg = super::gossip::GossipConfig {
                listen,
                bootstrap: opts.bootstrap.clone().into_iter().collect(),
                quic: true,
            };
            tasks.push(
                super::gossip::start(
                    cfg,
                    keypair,
                    mesh.clone(),
                    {
                        let joblog = joblog.clone();
                        std::sync::Arc::new(move |id, key: &[u8; 32]| {
                            super::gossip::admitted_in(&joblog.members(), id, key)
                        })
                    },
                    rx,
                    shutdown.clone(),
                )
                .await?,
            );
            Some(tx)
        }
        #[cfg(not(feature = "p2p"))]
        Some(_) => return Err(MeshError::NoP2p),
    };
    tasks.push(tokio::spawn(run_advertiser(
        mesh.clone(),
        joblog.clone(),
        publish,
        ADVERT_INTERVAL,
        shutdown.clone(),
    )));
    let dispatcher = Dispatcher::new(joblog.clone(), mesh.clone(), clock, opts.worker);
    tasks.push(tokio::spawn(dispatcher.run(shutdown)));
    Ok(MeshHandles { mesh, tasks })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use runmesh_proto::{JobCommand, JobSpec, ModelId, Priority, RequestId, SubmitMode};

    fn app(alias: &str) -> AppId {
        AppId::new("runmesh", alias).unwrap()
    }

    fn local() -> LocalNode {
        LocalNode {
            peer_id: "p".into(),
            raft_node_id: 3,
            region: Some("eu".into()),
            slots: 4,
            apps: vec![
                AppCost {
                    app: app("echo"),
                    gpu_memory_mb: 0,
                    warmup_ms: 0,
                },
                AppCost {
                    app: app("big"),
                    gpu_memory_mb: 30_000,
                    warmup_ms: 1_000,
                },
            ],
            api_addr: Some("127.0.0.1:8080".into()),
            raft_addr: None,
            blob_addr: None,
            gpus_declared: true,
            incarnation: 5,
        }
    }

    fn spec(model: &str) -> JobSpec {
        JobSpec {
            request_id: RequestId::new_random(),
            model: ModelId::parse(model).unwrap(),
            input_json: "{}".into(),
            webhook_url: None,
            priority: Priority::Normal,
            start_timeout_ms: None,
            runner_hint: None,
            no_retry: false,
            mode: SubmitMode::Queue,
            submitted_by: None,
            accepted_by: 1,
            accepted_region: None,
            submitted_at_ms: 0,
        }
    }

    #[test]
    fn the_advert_counts_running_and_queued_jobs_and_books_declared_gpu_memory() {
        let mut t = JobTable::new();
        let specs = [
            spec("runmesh/big"),
            spec("runmesh/echo"),
            spec("runmesh/echo"),
            spec("other/app"),
        ];
        for s in &specs {
            t.apply(JobCommand::Submit { spec: s.clone() }, &mut Vec::new());
        }
        for (s, worker) in [(&specs[0], 3), (&specs[1], 9)] {
            t.apply(
                JobCommand::Assign {
                    request_id: s.request_id.clone(),
                    worker,
                    lease_ms: 1_000,
                    now_ms: 0,
                },
                &mut Vec::new(),
            );
        }
        let gpus = crate::gpu::parse_gpu_spec("H100:80,A10:24").unwrap();
        let warm: BTreeSet<AppId> = [app("big")].into();
        let a = build_advert(
            &local(),
            &t,
            &gpus,
            Some((64_000, 10_000)),
            &warm,
            &[],
            77,
            2,
        );
        assert_eq!((a.raft_node_id, a.running, a.queued, a.slots), (3, 1, 1, 4));
        // The running big job is booked on the H100.
        assert_eq!(a.gpus[0].memory_free_mb, 80 * 1024 - 30_000);
        assert_eq!(a.gpus[1].memory_free_mb, 24 * 1024);
        assert!(a.apps.iter().find(|x| x.app == app("big")).unwrap().warm);
        assert!(!a.apps.iter().find(|x| x.app == app("echo")).unwrap().warm);
        assert_eq!((a.memory_total_mb, a.memory_free_mb), (64_000, 10_000));
        assert_eq!((a.timestamp_ms, a.seq, a.incarnation), (77, 2, 5));
        // Measured GPUs already show what is used: nothing is booked on top.
        let measured = LocalNode {
            gpus_declared: false,
            ..local()
        };
        let b = build_advert(&measured, &t, &gpus, None, &warm, &[], 77, 3);
        assert_eq!(b.gpus[0].memory_free_mb, 80 * 1024);
    }

    #[test]
    fn warm_apps_expire() {
        let w = WarmSet::default();
        w.touch(&app("echo"), 1_000);
        assert!(w.warm_at(1_000 + WARM_TTL_MS - 1).contains(&app("echo")));
        assert!(w.warm_at(1_000 + WARM_TTL_MS).is_empty());
    }

    #[test]
    fn meminfo_parses() {
        let text = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(parse_meminfo(text), Some((16_000, 8_000)));
        assert_eq!(
            parse_meminfo("MemTotal: 2048 kB\nMemFree: 1024 kB\n"),
            Some((2, 1))
        );
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn the_status_table_lists_every_member() {
        let v = serde_json::json!({
            "node_id": "1",
            "leader": "2",
            "members": [
                {"id": "1", "role": "voter", "state": "up", "region": "eu",
                 "gpus": [{"name": "H100", "memory_total_mb": 81920, "memory_free_mb": 40960}],
                 "running": 1, "slots": 2, "queued": 0,
                 "addresses": {"api": "127.0.0.1:8080", "raft": "127.0.0.1:7001"}},
                {"id": "2", "role": "voter", "state": "suspect", "region": null, "gpus": [],
                 "running": 0, "slots": 4, "queued": 3, "addresses": {"api": null, "raft": null}}
            ]
        });
        let out = render_cluster_table(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NODE"));
        assert!(lines[1].starts_with("1 *"), "{out}");
        assert!(
            lines[1].contains("H100:40/80G") && lines[1].contains("1/2"),
            "{out}"
        );
        assert!(
            lines[2].contains("2 (leader)") && lines[2].contains("suspect"),
            "{out}"
        );
    }
}
