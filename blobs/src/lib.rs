//! runmesh artifacts: content-addressed blobs (BLAKE3), verified on arrival, served by any node.
//!
//! One [`BlobNode`] per node: an iroh-blobs [`FsStore`] under the node's data dir and an iroh QUIC
//! endpoint whose key is the node's own ed25519 identity (the same 32-byte seed that keys libp2p and
//! the Raft TLS certificate). There are no relays and no outside discovery: peers are dialled at the
//! `id@ip:port` address ([`PeerAddr`]) that the mesh gossips in each node's capacity advert.
//!
//! Blobs never pass through memory whole: imports stream from a file or a byte stream, fetches write
//! verified 16 KiB groups straight into the store (BLAKE3 / bao verification while streaming, so a
//! tampered or truncated transfer is refused, never stored), and reads export ranges piece by piece.
//! [`BlobNode::read_while_fetching`] serves a blob to a client while it still arrives from a peer.
//!
//! Retention is by name: a blob stays while at least one pin (an iroh-blobs tag) names it; the
//! store's garbage collector deletes the rest. Everything iroh stays inside this crate, so crates
//! that do not serve files (the simulator) never link it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use iroh::endpoint::{presets, RelayMode};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, PublicKey, SecretKey};
use iroh_blobs::api::proto::{Bitfield, ExportRangesItem};
use iroh_blobs::store::fs::options::Options;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::GcConfig;
use iroh_blobs::{BlobsProtocol, Hash};
use tracing::{debug, info, warn};

/// Bytes per BLAKE3 chunk (what the store's bitfields count in).
const CHUNK_BYTES: u64 = 1024;
/// Longest piece handed out by one read, so a reader never buffers much of a blob.
const READ_PIECE_MAX: u64 = 1024 * 1024;
/// How long one provider may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefix of the pin (tag) names this crate's callers choose.
pub const PIN_PREFIX: &str = "rm/";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store: {0}")]
    Store(String),
    #[error("blob endpoint: {0}")]
    Endpoint(String),
    #[error("blob {0} is not in the local store")]
    Missing(BlobHash),
    #[error("no provider could deliver blob {hash}: {why}")]
    Unavailable { hash: BlobHash, why: String },
    #[error("bad blob address {0:?} (want <64 hex>@ip:port)")]
    BadAddr(String),
    #[error("bad blob hash {0:?} (want 64 hex digits)")]
    BadHash(String),
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

fn store_err(e: impl fmt::Display) -> BlobError {
    BlobError::Store(e.to_string())
}

/// A BLAKE3 hash of a blob's bytes, shown and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The hash of `data` (BLAKE3, the same as the store computes).
    pub fn of(data: &[u8]) -> Self {
        Self(*Hash::new(data).as_bytes())
    }

    fn iroh(self) -> Hash {
        Hash::from_bytes(self.0)
    }
}

impl From<Hash> for BlobHash {
    fn from(h: Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl FromStr for BlobHash {
    type Err = BlobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(&s.to_ascii_lowercase())
            .map(Self)
            .ok_or_else(|| BlobError::BadHash(s.chars().take(80).collect()))
    }
}

/// Where a peer's blob endpoint listens: its public key (the node identity) and a socket address.
/// Written `<64 hex>@ip:port`, which is what the capacity advert's `blob_addr` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub id: [u8; 32],
    pub addr: SocketAddr,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", BlobHash(self.id), self.addr)
    }
}

impl FromStr for PeerAddr {
    type Err = BlobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BlobError::BadAddr(s.chars().take(120).collect());
        let (id, addr) = s.split_once('@').ok_or_else(bad)?;
        let id = parse_hex32(&id.to_ascii_lowercase()).ok_or_else(bad)?;
        let addr = addr.parse().map_err(|_| bad())?;
        Ok(Self { id, addr })
    }
}

/// How to start a [`BlobNode`].
#[derive(Clone, Debug)]
pub struct BlobConfig {
    /// The store's directory (created if absent): `<data_dir>/blobs`.
    pub root: PathBuf,
    /// The node identity's 32-byte ed25519 seed: the endpoint's secret key.
    pub seed: [u8; 32],
    /// QUIC listen address of the blob endpoint.
    pub bind: SocketAddr,
    /// How often the store deletes blobs that no pin names (`None`: never).
    pub gc_interval: Option<Duration>,
}

/// The node's blob store and its QUIC endpoint.
pub struct BlobNode {
    store: FsStore,
    endpoint: Endpoint,
    router: Router,
    root: PathBuf,
}

/// A stream of a blob's bytes, in pieces of at most 1 MiB.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

impl BlobNode {
    pub async fn start(cfg: BlobConfig) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&cfg.root)?;
        let mut opts = Options::new(&cfg.root);
        opts.gc = cfg.gc_interval.map(|interval| GcConfig {
            interval,
            add_protected: None,
        });
        let store = FsStore::load_with_opts(cfg.root.join("blobs.db"), opts)
            .await
            .map_err(store_err)?;
        // Minimal: a crypto provider and nothing else; relays off, no address lookup: peers are
        // dialled at the addresses the mesh gossips.
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(&cfg.seed))
            .relay_mode(RelayMode::Disabled)
            .bind_addr(cfg.bind)
            .map_err(|e| BlobError::Endpoint(e.to_string()))?
            .bind()
            .await
            .map_err(|e| BlobError::Endpoint(e.to_string()))?;
        let blobs = BlobsProtocol::new(&store, None);
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, blobs)
            .spawn();
        let node = Self {
            store,
            endpoint,
            router,
            root: cfg.root,
        };
        info!(addr = %node.peer_addr(), "blob endpoint listening");
        Ok(node)
    }

    /// The endpoint's public key: the node identity's ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        *self.endpoint.id().as_bytes()
    }

    /// The address the endpoint is bound to (the first socket of the bind address's family).
    pub fn local_addr(&self) -> SocketAddr {
        let sockets = self.endpoint.bound_sockets();
        sockets
            .iter()
            .find(|s| s.is_ipv4())
            .or_else(|| sockets.first())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// This node's address for peers (`advertise` replaces an unspecified listen IP).
    pub fn peer_addr(&self) -> PeerAddr {
        PeerAddr {
            id: self.public_key(),
            addr: self.local_addr(),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports a file (copied, hashed while read) and pins it under the name `pin` gives its hash.
    pub async fn import_file(
        &self,
        path: &Path,
        pin: impl FnOnce(BlobHash) -> String,
    ) -> Result<(BlobHash, u64), BlobError> {
        let tt = self
            .store
            .blobs()
            .add_path(path)
            .temp_tag()
            .await
            .map_err(store_err)?;
        self.pin_temp(tt, pin).await
    }

    /// Imports bytes from a stream (an upload body) and pins the blob under `pin`.
    pub async fn import_stream(
        &self,
        data: impl Stream<Item = io::Result<Bytes>> + Send + Sync + 'static,
        pin: impl FnOnce(BlobHash) -> String,
    ) -> Result<(BlobHash, u64), BlobError> {
        let tt = self
            .store
            .blobs()
            .add_stream(data)
            .await
            .temp_tag()
            .await
            .map_err(store_err)?;
        self.pin_temp(tt, pin).await
    }

    /// Imports bytes held in memory (small inputs) and pins them under `pin`.
    pub async fn import_bytes(
        &self,
        data: impl Into<Bytes>,
        pin: impl FnOnce(BlobHash) -> String,
    ) -> Result<(BlobHash, u64), BlobError> {
        let tt = self
            .store
            .blobs()
            .add_bytes(data)
            .temp_tag()
            .await
            .map_err(store_err)?;
        self.pin_temp(tt, pin).await
    }

    async fn pin_temp(
        &self,
        tt: iroh_blobs::api::TempTag,
        pin: impl FnOnce(BlobHash) -> String,
    ) -> Result<(BlobHash, u64), BlobError> {
        let hash = BlobHash::from(tt.hash());
        self.pin(hash, &pin(hash)).await?;
        drop(tt);
        let size = self
            .local_size(hash)
            .await?
            .ok_or(BlobError::Missing(hash))?;
        Ok((hash, size))
    }

    /// Keeps `hash` from garbage collection under the name `pin` (replacing what it named), durably:
    /// the store batches its metadata writes for up to 500 ms, and a blob whose URL a caller or
    /// the job log already holds must survive a crash right after.
    pub async fn pin(&self, hash: BlobHash, pin: &str) -> Result<(), BlobError> {
        self.store
            .tags()
            .set(pin, hash.iroh())
            .await
            .map_err(store_err)?;
        self.store.sync_db().await.map_err(store_err)
    }

    /// Drops the pin `pin`; the blob goes at the next collection unless another pin names it.
    pub async fn unpin(&self, pin: &str) -> Result<(), BlobError> {
        self.store.tags().delete(pin).await.map_err(store_err)?;
        Ok(())
    }

    /// Every pin whose name starts with `prefix`, with the blob it names.
    pub async fn pins(&self, prefix: &str) -> Result<Vec<(String, BlobHash)>, BlobError> {
        let mut stream = self
            .store
            .tags()
            .list_prefix(prefix)
            .await
            .map_err(store_err)?;
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(store_err)?;
            out.push((
                String::from_utf8_lossy(info.name.as_ref()).into_owned(),
                BlobHash::from(info.hash),
            ));
        }
        Ok(out)
    }

    /// The blob's size when the store holds all of it (verified), else `None`.
    pub async fn local_size(&self, hash: BlobHash) -> Result<Option<u64>, BlobError> {
        let bf = self.bitfield(hash).await?;
        Ok(bf.is_complete().then(|| bf.size()))
    }

    async fn bitfield(&self, hash: BlobHash) -> Result<Bitfield, BlobError> {
        let mut stream = self
            .store
            .blobs()
            .observe(hash.iroh())
            .stream()
            .await
            .map_err(store_err)?;
        Ok(stream.next().await.unwrap_or_else(Bitfield::empty))
    }

    /// Bytes `start..end` of a blob the store holds, in pieces; an error item if parts are missing.
    pub fn read(&self, hash: BlobHash, start: u64, end: u64) -> ByteStream {
        let blobs = self.store.blobs().clone();
        let stream = async_stream_pieces(start, end, move |from, to| {
            let blobs = blobs.clone();
            async move { export_range(&blobs, hash, from, to).await }
        });
        Box::pin(stream)
    }

    /// Fetches a blob into the store from the first of `providers` that delivers it, verifying it
    /// while it streams. Parts already here are not fetched again; a provider that fails midway
    /// leaves its verified parts, and the next one delivers the rest. Pin it first if it must stay.
    pub async fn fetch(&self, hash: BlobHash, providers: &[PeerAddr]) -> Result<(), BlobError> {
        fetch_from(&self.endpoint, &self.store, hash, providers).await
    }

    /// Bytes `start..end` of a blob of `size` bytes, streamed as they arrive from `providers` when
    /// the store does not hold them yet (fetched into the store under `pin`, so the next reader
    /// finds them here). Only verified data is handed out; an error item ends the stream when no
    /// provider can deliver.
    pub async fn read_while_fetching(
        &self,
        hash: BlobHash,
        start: u64,
        end: u64,
        providers: Vec<PeerAddr>,
        pin: &str,
    ) -> Result<ByteStream, BlobError> {
        if self.local_size(hash).await?.is_some() {
            return Ok(self.read(hash, start, end));
        }
        self.pin(hash, pin).await?;
        let (done_tx, done_rx) = tokio::sync::watch::channel(None::<Result<(), String>>);
        let endpoint = self.endpoint.clone();
        let store = self.store.clone();
        // The fetch runs on its own task: a client that goes away does not stop it, so the blob
        // still lands in the store for the next reader.
        tokio::spawn(async move {
            let res = fetch_from(&endpoint, &store, hash, &providers).await;
            if let Err(e) = &res {
                warn!(%hash, error = %e, "fetch failed");
            }
            let _ = done_tx.send(Some(res.map_err(|e| e.to_string())));
        });
        let observe = self
            .store
            .blobs()
            .observe(hash.iroh())
            .stream()
            .await
            .map_err(store_err)?;
        let blobs = self.store.blobs().clone();
        Ok(Box::pin(follow(blobs, hash, start, end, observe, done_rx)))
    }

    /// Stops the endpoint and the store (flushes the store's database).
    pub async fn shutdown(&self) {
        if let Err(e) = self.router.shutdown().await {
            debug!(error = %e, "blob router shutdown");
        }
        if let Err(e) = self.store.shutdown().await {
            debug!(error = %e, "blob store shutdown");
        }
    }
}

async fn fetch_from(
    endpoint: &Endpoint,
    store: &FsStore,
    hash: BlobHash,
    providers: &[PeerAddr],
) -> Result<(), BlobError> {
    let mut why = String::from("no providers");
    for p in providers {
        if p.id == *endpoint.id().as_bytes() {
            continue;
        }
        let Ok(id) = PublicKey::from_bytes(&p.id) else {
            why = format!("{p}: not an ed25519 key");
            continue;
        };
        let addr = EndpointAddr::new(id).with_ip_addr(p.addr);
        let conn =
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(addr, iroh_blobs::ALPN))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    why = format!("{p}: {e}");
                    continue;
                }
                Err(_) => {
                    why = format!("{p}: connect timed out");
                    continue;
                }
            };
        let res = store
            .remote()
            .fetch(conn.clone(), hash.iroh())
            .complete()
            .await;
        conn.close(0u32.into(), b"done");
        match res {
            Ok(_) => {
                // A provider that lacks the blob answers with nothing: only a complete blob counts.
                let bf = store
                    .blobs()
                    .observe(hash.iroh())
                    .stream()
                    .await
                    .map_err(store_err)?
                    .next()
                    .await;
                if bf.is_some_and(|b| b.is_complete()) {
                    debug!(%hash, provider = %p, "fetched");
                    return Ok(());
                }
                why = format!("{p}: does not have it");
            }
            Err(e) => why = format!("{p}: {e}"),
        }
    }
    Err(BlobError::Unavailable { hash, why })
}

async fn export_range(
    blobs: &iroh_blobs::api::blobs::Blobs,
    hash: BlobHash,
    from: u64,
    to: u64,
) -> io::Result<Vec<Bytes>> {
    let mut stream = blobs.export_ranges(hash.iroh(), from..to).stream();
    let mut pieces = Vec::new();
    let mut got = 0u64;
    while let Some(item) = stream.next().await {
        match item {
            ExportRangesItem::Size(_) => {}
            ExportRangesItem::Data(leaf) => {
                got += leaf.data.len() as u64;
                pieces.push(leaf.data);
            }
            ExportRangesItem::Error(e) => return Err(io::Error::other(e.to_string())),
        }
    }
    if got != to - from {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("blob {hash}: {got} of {} bytes present", to - from),
        ));
    }
    Ok(pieces)
}

/// Reads `start..end` in pieces of [`READ_PIECE_MAX`], one piece in memory at a time.
fn async_stream_pieces<F, Fut>(
    start: u64,
    end: u64,
    read: F,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
where
    F: Fn(u64, u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = io::Result<Vec<Bytes>>> + Send,
{
    futures::stream::unfold(
        (start, read, false),
        move |(pos, read, failed)| async move {
            if pos >= end || failed {
                return None;
            }
            let to = (pos + READ_PIECE_MAX).min(end);
            match read(pos, to).await {
                Ok(pieces) => Some((Ok(pieces), (to, read, false))),
                Err(e) => Some((Err(e), (to, read, true))),
            }
        },
    )
    .flat_map(|r| match r {
        Ok(pieces) => futures::stream::iter(pieces.into_iter().map(Ok).collect::<Vec<_>>()),
        Err(e) => futures::stream::iter(vec![Err(e)]),
    })
}

/// End (exclusive, in bytes) of the verified run of data that contains byte `pos`, if any.
fn verified_until(bf: &Bitfield, pos: u64, size: u64) -> Option<u64> {
    if bf.is_complete() {
        return Some(size);
    }
    let chunk = pos / CHUNK_BYTES;
    let b = bf.ranges.boundaries();
    let mut i = 0;
    while i < b.len() {
        let lo = b[i].0;
        let hi = b.get(i + 1).map_or(u64::MAX, |c| c.0);
        if chunk >= lo && chunk < hi {
            return Some(hi.saturating_mul(CHUNK_BYTES).min(size));
        }
        i += 2;
    }
    None
}

/// Hands out `start..end` as the verified bitfield of the blob grows, until done or the fetch fails.
fn follow(
    blobs: iroh_blobs::api::blobs::Blobs,
    hash: BlobHash,
    start: u64,
    end: u64,
    observe: impl Stream<Item = Bitfield> + Send + 'static,
    done: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    struct St<O> {
        pos: u64,
        have: Bitfield,
        observe: Pin<Box<O>>,
        done: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
        finished: bool,
    }
    let st = St {
        pos: start,
        have: Bitfield::empty(),
        observe: Box::pin(observe),
        done,
        finished: false,
    };
    futures::stream::unfold(st, move |mut st| {
        let blobs = blobs.clone();
        async move {
            if st.finished || st.pos >= end {
                return None;
            }
            loop {
                if let Some(until) = verified_until(&st.have, st.pos, end) {
                    if until > st.pos {
                        let to = until.min(st.pos + READ_PIECE_MAX).min(end);
                        return match export_range(&blobs, hash, st.pos, to).await {
                            Ok(pieces) => {
                                st.pos = to;
                                Some((Ok(pieces), st))
                            }
                            Err(e) => {
                                st.finished = true;
                                Some((Err(e), st))
                            }
                        };
                    }
                }
                let outcome = st.done.borrow().clone();
                match outcome {
                    Some(Err(why)) => {
                        st.finished = true;
                        return Some((Err(io::Error::other(why)), st));
                    }
                    // Fetched whole and verified: everything up to `end` is here.
                    Some(Ok(())) if !st.have.is_complete() => {
                        st.have = Bitfield::complete(end);
                        continue;
                    }
                    _ => {}
                }
                tokio::select! {
                    upd = st.observe.next() => match upd {
                        Some(b) => { st.have.update(&b); }
                        None => {
                            st.finished = true;
                            return Some((Err(io::Error::other("blob observer closed")), st));
                        }
                    },
                    changed = st.done.changed() => {
                        if changed.is_err() {
                            // The fetch task is gone without a word: stop waiting on it.
                            st.finished = true;
                            return Some((Err(io::Error::other("fetch ended")), st));
                        }
                    }
                }
            }
        }
    })
    .flat_map(|r| match r {
        Ok(pieces) => futures::stream::iter(pieces.into_iter().map(Ok).collect::<Vec<_>>()),
        Err(e) => futures::stream::iter(vec![Err(e)]),
    })
}

pub mod bench;

#[cfg(test)]
mod tests;
