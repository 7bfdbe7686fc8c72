//! Artifacts on a node: the blob store ([`runmesh_blobs::BlobNode`]) as the worker's [`FileSink`]
//! and the HTTP API's [`FileStore`], and the retention sweep (TTL, delete IO, replicas, GC).
//!
//! Where a file is comes from Raft: the completion entry of the job that made it names the worker
//! (`last_worker`) and the file's hash, size and type. Where a node's blob endpoint listens comes
//! from gossip: the `blob_addr` (`<node key hex>@ip:port`) of its capacity advert.
//!
//! Retention is a plain function of the job table ([`plan_sweep`]): a hash is *live* while a job
//! that names it (output or input URL) is neither deleted (fal "delete IO") nor older than the TTL.
//! Each node pins (iroh-blobs tags) the blobs it must keep: `rm/o/<hash>/<ms>` for outputs and their
//! replicas and `rm/c/<hash>/<ms>` for copies fetched to serve a client, `rm/u/<hash>/<expiry ms>`
//! for uploads. The sweep drops pins of hashes that are no longer live, and the store's collector
//! deletes blobs that no pin names. Replicas: for every live output, the `replicas` members that
//! rank highest for its hash (rendezvous hashing over the members with a blob address, the worker
//! excluded) fetch it, so losing the worker does not lose the result.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use runmesh_blobs::{BlobHash, BlobNode, PeerAddr};
use runmesh_gateway_node::files::{self as gwfiles, ByteStream, FileError, FileStore};
use runmesh_proto::{Clock, FileRef, JobState, NodeId};
use runmesh_raft::{JobLog, JobTable};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::apps::FileSink;
use crate::mesh::capacity::Mesh;

/// Default time an artifact is kept after its job finished: 30 days.
pub const DEFAULT_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
pub const DEFAULT_REPLICAS: usize = 1;
pub const DEFAULT_SWEEP_MS: u64 = 2_000;
pub const DEFAULT_GC_MS: u64 = 10_000;
/// Largest upload accepted: 16 GiB.
pub const DEFAULT_UPLOAD_MAX_BYTES: u64 = 16 << 30;
pub const DEFAULT_DISK_FREE_FLOOR_BYTES: u64 = 1 << 30;
/// An upload in progress looks at the free space again after every this many bytes.
const DISK_CHECK_EVERY_BYTES: u64 = 64 << 20;

/// Free bytes for unprivileged writers on the file system holding `path` (`None`: unknown).
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Why storing `more` bytes under `path` is refused, when it would leave less than `floor` free.
fn short_of_disk(path: &std::path::Path, floor: u64, more: u64) -> Option<String> {
    let free = free_bytes(path)?;
    (free.saturating_sub(more) < floor).then(|| {
        format!(
            "Insufficient storage: this node keeps {} MiB of disk free and has {} MiB; try again \
             later or on another node",
            floor >> 20,
            free >> 20
        )
    })
}
/// A blob that no job names yet (an output whose completion is not committed yet) keeps its pin
/// this long.
pub const UNNAMED_GRACE_MS: u64 = 10 * 60 * 1000;
/// Scratch files (app outputs before import, resolved inputs) older than this are removed.
const SCRATCH_MAX_AGE: Duration = Duration::from_secs(3600);
/// Replicas fetched per sweep at most, so one sweep stays short.
const REPLICATIONS_PER_SWEEP: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactsConfig {
    /// How long an artifact is kept after its job finished.
    pub ttl_ms: u64,
    /// Nodes besides the worker that keep a copy of each output.
    pub replicas: usize,
    /// Base of the URLs handed to clients (`https://files.example.com`); else the worker's own API.
    pub public_base: Option<String>,
    pub sweep_ms: u64,
    /// How often the store deletes unpinned blobs.
    pub gc_ms: u64,
    /// How long a blob no job names yet keeps its pin.
    pub unnamed_grace_ms: u64,
    pub upload_max_bytes: u64,
    /// Free space the blob store's disk keeps: uploads and output files that would go below it
    /// are refused.
    pub disk_free_floor_bytes: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            ttl_ms: DEFAULT_TTL_MS,
            replicas: DEFAULT_REPLICAS,
            public_base: None,
            sweep_ms: DEFAULT_SWEEP_MS,
            gc_ms: DEFAULT_GC_MS,
            unnamed_grace_ms: UNNAMED_GRACE_MS,
            upload_max_bytes: DEFAULT_UPLOAD_MAX_BYTES,
            disk_free_floor_bytes: DEFAULT_DISK_FREE_FLOOR_BYTES,
        }
    }
}

/// The node's artifacts: its blob store plus what it needs to find peers and the job table.
pub struct Artifacts {
    blobs: Arc<BlobNode>,
    joblog: JobLog,
    clock: Arc<dyn Clock>,
    cfg: ArtifactsConfig,
    scratch: PathBuf,
    /// `scheme://host:port` of this node's API, once bound.
    api_base: OnceLock<String>,
    /// The cluster view (blob addresses of the members), once the mesh started.
    mesh: OnceLock<Mesh>,
}

fn output_pin(hash: BlobHash, now_ms: u64) -> String {
    format!("rm/o/{hash}/{now_ms}")
}

fn cache_pin(hash: BlobHash, now_ms: u64) -> String {
    format!("rm/c/{hash}/{now_ms}")
}

fn upload_pin(hash: BlobHash, expiry_ms: u64) -> String {
    format!("rm/u/{hash}/{expiry_ms}")
}

/// A pin name split into its kind (`o`, `c`, `u`), hash and time.
fn parse_pin(name: &str) -> Option<(char, BlobHash, u64)> {
    let rest = name.strip_prefix("rm/")?;
    let mut parts = rest.split('/');
    let kind = parts.next()?.chars().next()?;
    let hash = parts.next()?.parse().ok()?;
    let ms = parts.next()?.parse().ok()?;
    Some((kind, hash, ms))
}

pub use runmesh_proto::file_hashes_in as referenced_hashes;

/// What the table says about every hash it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// Named by some job (live or not).
    pub named: HashSet<String>,
    /// Named by a job that is neither deleted nor expired.
    pub live: HashSet<String>,
    /// Live blobs that get replicas: hash → the node that first held it (the worker for an
    /// output, the accepting node for an input a job names), tried first when fetching.
    pub replicated: BTreeMap<String, Option<NodeId>>,
}

/// Pure: which hashes the table keeps alive at `now_ms` under `ttl_ms`.
pub fn plan_sweep(table: &JobTable, now_ms: u64, ttl_ms: u64) -> SweepPlan {
    let mut plan = SweepPlan::default();
    for rec in table.iter() {
        let finished_at = match &rec.state {
            JobState::Completed {
                completed_at_ms, ..
            } => Some(*completed_at_ms),
            JobState::Cancelled { cancelled_at_ms } => Some(*cancelled_at_ms),
            _ => None,
        };
        // Running and queued jobs keep their inputs; finished ones keep everything for the TTL.
        let alive = rec.io_deleted_at_ms.is_none()
            && finished_at.is_none_or(|t| t.saturating_add(ttl_ms) > now_ms);
        plan.named.extend(rec.deleted_hashes.iter().cloned());
        let inputs = referenced_hashes(&rec.spec.input_json);
        if alive {
            // A queued job's large input (or upload) must survive its accepting node.
            for h in &inputs {
                plan.replicated
                    .entry(h.clone())
                    .or_insert(Some(rec.spec.accepted_by));
            }
            for f in &rec.files {
                plan.replicated.insert(f.hash.clone(), rec.last_worker);
            }
        }
        for h in rec.files.iter().map(|f| f.hash.clone()).chain(inputs) {
            plan.named.insert(h.clone());
            if alive {
                plan.live.insert(h);
            }
        }
    }
    // Uploads bound to a token (the JS client's flow) live for the artifact TTL from their PUT.
    for up in table.uploads() {
        let h = &up.file.hash;
        plan.named.insert(h.clone());
        if up.named_at_ms.saturating_add(ttl_ms) > now_ms {
            plan.live.insert(h.clone());
            plan.replicated.entry(h.clone()).or_insert(Some(up.holder));
        }
    }
    // Jobs whose result expired keep their files for the artifact TTL.
    for kept in table.kept_files() {
        let alive =
            kept.io_deleted_at_ms.is_none() && kept.finished_at_ms.saturating_add(ttl_ms) > now_ms;
        let hashes = kept.files.iter().map(|f| &f.hash).chain(&kept.input_hashes);
        for h in hashes {
            plan.named.insert(h.clone());
            if alive {
                plan.live.insert(h.clone());
            }
        }
        if alive {
            for f in &kept.files {
                plan.replicated.insert(f.hash.clone(), kept.worker);
            }
        }
    }
    plan
}

/// Pure: the members (by id) that keep a replica of `hash` besides `worker`: the `n` that rank
/// highest by BLAKE3(hash, id), so every node computes the same set from the same view.
pub fn replica_set(
    hash: &str,
    worker: Option<NodeId>,
    members: &[NodeId],
    n: usize,
) -> Vec<NodeId> {
    let mut ranked: Vec<(Vec<u8>, NodeId)> = members
        .iter()
        .copied()
        .filter(|m| Some(*m) != worker)
        .map(|m| {
            let mut h = blake3::Hasher::new();
            h.update(hash.as_bytes());
            h.update(&m.to_be_bytes());
            (h.finalize().as_bytes().to_vec(), m)
        })
        .collect();
    ranked.sort();
    ranked.dedup_by_key(|(_, m)| *m);
    ranked.into_iter().take(n).map(|(_, m)| m).collect()
}

impl Artifacts {
    pub fn new(
        blobs: Arc<BlobNode>,
        joblog: JobLog,
        clock: Arc<dyn Clock>,
        cfg: ArtifactsConfig,
        data_dir: &std::path::Path,
    ) -> Arc<Self> {
        Arc::new(Self {
            blobs,
            joblog,
            clock,
            cfg,
            scratch: data_dir.join("blobs-scratch"),
            api_base: OnceLock::new(),
            mesh: OnceLock::new(),
        })
    }

    pub fn blobs(&self) -> &Arc<BlobNode> {
        &self.blobs
    }

    /// This node's API base (`http://127.0.0.1:8080`), for the URLs of the files it makes.
    pub fn set_api_base(&self, base: String) {
        let _ = self.api_base.set(base.trim_end_matches('/').to_string());
    }

    pub fn set_mesh(&self, mesh: Mesh) {
        let _ = self.mesh.set(mesh);
    }

    fn url_of(&self, file: &FileRef) -> String {
        let base = self
            .cfg
            .public_base
            .clone()
            .or_else(|| self.api_base.get().cloned())
            .unwrap_or_default();
        format!("{}{}", base.trim_end_matches('/'), gwfiles::file_path(file))
    }

    /// Blob addresses of the members, `prefer` first, this node left out.
    fn providers(&self, prefer: &[NodeId]) -> Vec<PeerAddr> {
        let me = self.joblog.node_id();
        let Some(mesh) = self.mesh.get() else {
            return Vec::new();
        };
        let mut addrs: Vec<(usize, PeerAddr)> = mesh
            .members()
            .into_iter()
            .filter(|m| m.advert.raft_node_id != me)
            .filter_map(|m| {
                let addr: PeerAddr = m.advert.blob_addr.as_deref()?.parse().ok()?;
                let rank = prefer
                    .iter()
                    .position(|p| *p == m.advert.raft_node_id)
                    .unwrap_or(prefer.len());
                // Down members last: they may still answer, but try the living first.
                let rank =
                    rank * 2 + usize::from(m.liveness != runmesh_proto::advert::Liveness::Up);
                Some((rank, addr))
            })
            .collect();
        addrs.sort_by_key(|(r, _)| *r);
        addrs.into_iter().map(|(_, a)| a).collect()
    }

    fn scratch_file(&self) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.scratch).map_err(|e| format!("scratch dir: {e}"))?;
        Ok(self
            .scratch
            .join(format!("in-{}", uuid::Uuid::new_v4().simple())))
    }

    async fn ensure_local(&self, hash: BlobHash) -> Result<u64, String> {
        if let Some(size) = self
            .blobs
            .local_size(hash)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(size);
        }
        let prefer: Vec<NodeId> = self
            .joblog
            .read(|t| gwfiles::find_file(t, &hash.to_string()))
            .map(|m| m.providers)
            .unwrap_or_default();
        let pin = cache_pin(hash, self.clock.now_ms());
        self.blobs
            .pin(hash, &pin)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.blobs.fetch(hash, &self.providers(&prefer)).await {
            let _ = self.blobs.unpin(&pin).await;
            return Err(e.to_string());
        }
        self.blobs
            .local_size(hash)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("blob {hash} missing after fetch"))
    }

    async fn export_to_scratch(&self, hash: BlobHash, size: u64) -> Result<PathBuf, String> {
        use tokio::io::AsyncWriteExt as _;
        let path = self.scratch_file()?;
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| e.to_string())?;
        let mut s = self.blobs.read(hash, 0, size);
        while let Some(piece) = s.next().await {
            let piece = piece.map_err(|e| e.to_string())?;
            f.write_all(&piece).await.map_err(|e| e.to_string())?;
        }
        f.flush().await.map_err(|e| e.to_string())?;
        Ok(path)
    }

    async fn resolve(&self, url: String) -> Result<PathBuf, String> {
        if let Some(rest) = url.strip_prefix("data:") {
            let bytes = decode_data_uri(rest)?;
            let path = self.scratch_file()?;
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(path);
        }
        let token_hash = gwfiles::upload_token_in(&url).and_then(|token| {
            self.joblog
                .read(|t| t.upload(token).map(|u| u.file.hash.clone()))
        });
        let Some(hash) = token_hash.or_else(|| referenced_hashes(&url).into_iter().next()) else {
            return Err(format!(
                "{:?} is neither a /files/ URL of this cluster nor a data: URI",
                url.chars().take(200).collect::<String>()
            ));
        };
        let hash: BlobHash = hash
            .parse()
            .map_err(|e: runmesh_blobs::BlobError| e.to_string())?;
        let size = self.ensure_local(hash).await?;
        self.export_to_scratch(hash, size).await
    }

    /// One retention pass: replicate what this node should hold, drop pins of dead hashes,
    /// remove old scratch files.
    pub async fn sweep(&self) {
        let now = self.clock.now_ms();
        let plan = self.joblog.read(|t| plan_sweep(t, now, self.cfg.ttl_ms));
        // Replicas.
        if self.cfg.replicas > 0 {
            if let Some(mesh) = self.mesh.get() {
                let members: Vec<NodeId> = mesh
                    .members()
                    .into_iter()
                    .filter(|m| {
                        m.liveness == runmesh_proto::advert::Liveness::Up
                            && m.advert.blob_addr.is_some()
                    })
                    .map(|m| m.advert.raft_node_id)
                    .collect();
                let me = self.joblog.node_id();
                let mut done = 0;
                for (hash, worker) in &plan.replicated {
                    if done >= REPLICATIONS_PER_SWEEP {
                        break;
                    }
                    if *worker == Some(me)
                        || !replica_set(hash, *worker, &members, self.cfg.replicas).contains(&me)
                    {
                        continue;
                    }
                    let Ok(h) = hash.parse::<BlobHash>() else {
                        continue;
                    };
                    if matches!(self.blobs.local_size(h).await, Ok(Some(_))) {
                        // Held (maybe as a cache copy): make it a replica pin.
                        if !self.has_pin(h, 'o').await {
                            let _ = self.blobs.pin(h, &output_pin(h, now)).await;
                        }
                        continue;
                    }
                    done += 1;
                    let _ = self.blobs.pin(h, &output_pin(h, now)).await;
                    let prefer: Vec<NodeId> = worker.iter().copied().collect();
                    match self.blobs.fetch(h, &self.providers(&prefer)).await {
                        Ok(()) => info!(hash = %h, "replicated an output"),
                        Err(e) => {
                            debug!(hash = %h, error = %e, "replica fetch failed; next sweep retries")
                        }
                    }
                }
            }
        }
        // Pins of hashes nobody needs any more.
        let pins = match self.blobs.pins("rm/").await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "listing pins");
                return;
            }
        };
        for (name, _) in pins {
            let Some((kind, hash, ms)) = parse_pin(&name) else {
                continue;
            };
            let h = hash.to_string();
            let keep = if plan.live.contains(&h) {
                true
            } else if plan.named.contains(&h) {
                // Named only by deleted or expired jobs.
                false
            } else if kind == 'u' {
                now < ms
            } else {
                now.saturating_sub(ms) < self.cfg.unnamed_grace_ms
            };
            if !keep {
                debug!(pin = %name, "dropping pin");
                if let Err(e) = self.blobs.unpin(&name).await {
                    warn!(pin = %name, error = %e, "unpin");
                }
            }
        }
        self.clean_scratch();
    }

    async fn has_pin(&self, hash: BlobHash, kind: char) -> bool {
        self.blobs
            .pins(&format!("rm/{kind}/{hash}/"))
            .await
            .is_ok_and(|p| !p.is_empty())
    }

    fn clean_scratch(&self) {
        let Ok(dir) = std::fs::read_dir(&self.scratch) else {
            return;
        };
        for entry in dir.flatten().take(10_000) {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > SCRATCH_MAX_AGE);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Runs [`Self::sweep`] every `sweep_ms` until `shutdown`.
    pub async fn run_sweeper(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(Duration::from_millis(self.cfg.sweep_ms.max(100)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.sweep().await,
                res = shutdown.changed() => {
                    if res.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
    }
}

/// `data:[<type>][;base64],<data>` (the part after `data:`).
pub fn decode_data_uri(rest: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| "a data: URI without a comma".to_string())?;
    if meta.ends_with(";base64") {
        let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD.decode(clean.trim_end_matches('='))
            })
            .map_err(|e| format!("bad base64 in a data: URI: {e}"))
    } else {
        let b = data.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        Ok(out)
    }
}

/// The worker's side: apps store outputs and read inputs through this.
pub struct Sink(pub Arc<Artifacts>);

impl FileSink for Sink {
    fn scratch_dir(&self) -> PathBuf {
        self.0.scratch.clone()
    }

    fn store_file(
        &self,
        path: PathBuf,
        content_type: String,
        file_name: String,
    ) -> BoxFuture<'static, Result<(FileRef, String), String>> {
        let a = self.0.clone();
        async move {
            let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
            if let Some(why) = short_of_disk(a.blobs.root(), a.cfg.disk_free_floor_bytes, size) {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(format!("the output file {file_name} was not kept. {why}"));
            }
            let now = a.clock.now_ms();
            let res = a
                .blobs
                .import_file(&path, |h| output_pin(h, now))
                .await
                .map_err(|e| e.to_string());
            let _ = tokio::fs::remove_file(&path).await;
            let (hash, size) = res?;
            let file = FileRef {
                hash: hash.to_string(),
                size,
                content_type,
                file_name: gwfiles::url_name(&file_name),
            };
            let url = a.url_of(&file);
            Ok((file, url))
        }
        .boxed()
    }

    fn room_for(&self, bytes: u64) -> Result<(), String> {
        let max = self.0.cfg.upload_max_bytes;
        if bytes > max {
            return Err(format!(
                "an output file of {bytes} bytes is larger than this node keeps ({max} bytes, \
                 --upload-limit-bytes)"
            ));
        }
        match short_of_disk(self.0.blobs.root(), self.0.cfg.disk_free_floor_bytes, bytes) {
            Some(why) => Err(format!(
                "an output file of {bytes} bytes was refused. {why}"
            )),
            None => Ok(()),
        }
    }

    fn resolve_input(&self, url: String) -> BoxFuture<'static, Result<PathBuf, String>> {
        let a = self.0.clone();
        async move { a.resolve(url).await }.boxed()
    }
}

/// The HTTP API's side: `/files/`, uploads.
pub struct Store(pub Arc<Artifacts>);

fn parse_hash(hash: &str) -> Result<BlobHash, FileError> {
    hash.parse().map_err(|_| FileError::NotFound)
}

impl FileStore for Store {
    fn size_of(&self, hash: &str) -> BoxFuture<'_, Result<Option<u64>, FileError>> {
        let parsed = parse_hash(hash);
        let hash = hash.to_string();
        async move {
            let h = parsed?;
            match self.0.ensure_local(h).await {
                Ok(size) => Ok(Some(size)),
                Err(e) => {
                    debug!(%hash, error = %e, "no node has it");
                    // Nobody has it: do not keep the empty pin made for the fetch.
                    Ok(None)
                }
            }
        }
        .boxed()
    }

    fn open(
        &self,
        hash: &str,
        _size: u64,
        start: u64,
        end: u64,
        providers: Vec<NodeId>,
    ) -> BoxFuture<'_, Result<ByteStream, FileError>> {
        let parsed = parse_hash(hash);
        async move {
            let h = parsed?;
            let peers = self.0.providers(&providers);
            let now = self.0.clock.now_ms();
            let mut stream = self
                .0
                .blobs
                .read_while_fetching(h, start, end, peers, &cache_pin(h, now))
                .await
                .map_err(|e| FileError::Internal(e.to_string()))?;
            match stream.next().await {
                Some(Ok(first)) => {
                    let rest =
                        futures::stream::once(async move { Ok::<Bytes, std::io::Error>(first) })
                            .chain(stream);
                    Ok(rest.boxed())
                }
                Some(Err(e)) => Err(FileError::Unavailable(e.to_string())),
                None => Ok(futures::stream::empty().boxed()),
            }
        }
        .boxed()
    }

    fn upload(
        &self,
        body: ByteStream,
        content_type: String,
        file_name: String,
    ) -> BoxFuture<'_, Result<FileRef, FileError>> {
        async move {
            let max = self.0.cfg.upload_max_bytes;
            let (root, floor) = (
                self.0.blobs.root().to_path_buf(),
                self.0.cfg.disk_free_floor_bytes,
            );
            if let Some(why) = short_of_disk(&root, floor, 0) {
                return Err(FileError::Full(why));
            }
            // iroh's import wants a Sync stream: feed it through a channel. The pump ends the
            // stream with an error when the upload must be refused, and returns why.
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
            let too_large =
                move || FileError::BadRequest(format!("The upload is larger than {max} bytes"));
            let pump = tokio::spawn(async move {
                let mut body = body;
                let (mut total, mut checked_at) = (0u64, 0u64);
                while let Some(item) = body.next().await {
                    let mut refused = None;
                    let item = item.and_then(|b| {
                        total += b.len() as u64;
                        if total > max {
                            refused = Some(too_large());
                        } else if total - checked_at >= DISK_CHECK_EVERY_BYTES {
                            checked_at = total;
                            refused = short_of_disk(&root, floor, 0).map(FileError::Full);
                        }
                        match &refused {
                            Some(e) => Err(std::io::Error::other(e.to_string())),
                            None => Ok(b),
                        }
                    });
                    let stop = item.is_err();
                    if tx.send(item).await.is_err() || stop {
                        return refused.map_or(Ok(()), Err);
                    }
                }
                Ok(())
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let expiry = self.0.clock.now_ms().saturating_add(self.0.cfg.ttl_ms);
            let res = self
                .0
                .blobs
                .import_stream(stream, |h| upload_pin(h, expiry))
                .await;
            pump.await.unwrap_or_else(|_| Err(too_large()))?;
            let (hash, size) =
                res.map_err(|e| FileError::BadRequest(format!("upload failed: {e}")))?;
            Ok(FileRef {
                hash: hash.to_string(),
                size,
                content_type,
                file_name,
            })
        }
        .boxed()
    }

    fn ttl_ms(&self) -> Option<u64> {
        Some(self.0.cfg.ttl_ms)
    }

    fn public_url(&self, file: &FileRef) -> Option<String> {
        self.0
            .cfg
            .public_base
            .as_ref()
            .map(|b| format!("{}{}", b.trim_end_matches('/'), gwfiles::file_path(file)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pins_and_references_parse() {
        let h = BlobHash::of(b"x");
        assert_eq!(parse_pin(&output_pin(h, 5)), Some(('o', h, 5)));
        assert_eq!(parse_pin(&upload_pin(h, 9)), Some(('u', h, 9)));
        assert_eq!(parse_pin("rm/o/nothex/5"), None);
        let json = format!(r#"{{"a":"http://n:1/files/{h}/x.png","b":"/files/short"}}"#);
        assert_eq!(referenced_hashes(&json), vec![h.to_string()]);
    }

    #[test]
    fn data_uris_decode() {
        assert_eq!(
            decode_data_uri("text/plain;base64,aGVsbG8=").unwrap(),
            b"hello"
        );
        assert_eq!(decode_data_uri(",a%20b").unwrap(), b"a b");
        assert_eq!(decode_data_uri("text/plain,100%").unwrap(), b"100%");
        assert!(decode_data_uri("nocomma").is_err());
        assert!(decode_data_uri(";base64,@@@").is_err());
    }

    #[test]
    fn replica_sets_are_stable_and_skip_the_worker() {
        let members = [1, 2, 3, 4, 5];
        let a = replica_set("abc", Some(3), &members, 2);
        assert_eq!(a.len(), 2);
        assert!(!a.contains(&3));
        assert_eq!(a, replica_set("abc", Some(3), &[5, 4, 3, 2, 1], 2));
        assert_eq!(replica_set("abc", Some(1), &[1], 1), Vec::<NodeId>::new());
        // Different hashes spread over different nodes.
        let spread: HashSet<Vec<NodeId>> = (0..20)
            .map(|i| replica_set(&format!("h{i}"), None, &members, 1))
            .collect();
        assert!(spread.len() > 1);
    }
}
