//! Raft RPC over QUIC (quinn), with TLS pinned to node identities.
//!
//! One UDP endpoint per node serves and dials. Every certificate is the node's self-signed
//! ed25519 certificate ([`crate::identity`]); names and CAs play no part:
//! - dialing a member, the client accepts only the public key that member's record in the Raft
//!   membership names (its `BasicNode.addr` is a [`MemberInfo`]);
//! - the server requires a client certificate and accepts any ed25519 one at the TLS layer (a
//!   joiner has no other way in), then authorizes per request: Raft RPCs and forwarded writes only
//!   from keys of members (or of members a join reply named, until the membership arrives), join
//!   requests from anyone, judged by their cluster-secret proof.
//!
//! rustls verifies the handshake signature against the certificate's key, so a peer's key is proven,
//! not claimed.
//!
//! Framing: each RPC is one bidirectional stream carrying one request frame and one reply frame,
//! each a big-endian u32 length followed by that many bytes of bincode ([`WireRequest`],
//! [`WireReply`]). Frames are bounded ([`FRAME_MAX_BYTES`], and much less for peers that are not
//! members), and every read has a deadline. Bad input closes the stream, never the node.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use runmesh_proto::mesh::{to_hex, JoinReply, JoinRequest, MemberInfo};
use runmesh_proto::{codec, NodeId};
use runmesh_raft::transport::{RaftTransport, RpcKind, TransportError, TransportFuture};
use runmesh_raft::JobLog;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::identity::{ed25519_key_of_cert, NodeIdentity, CERT_NAME};
use crate::mesh::join::Admission;

/// ALPN of the Raft listener: the wire protocol's version. A build that changes the protocol
/// names a new version first in [`PROTOCOLS`] and keeps the versions it still speaks after it, so
/// that during a rolling upgrade old and new nodes agree on the newest both speak (TLS picks it).
pub const ALPN: &[u8] = b"runmesh-raft/1";
/// The Raft protocol versions this build speaks, newest first.
pub const PROTOCOLS: &[&[u8]] = &[ALPN];
/// TLS alert 120 (no_application_protocol) as a QUIC crypto error: the two ends share no version.
const NO_COMMON_PROTOCOL: u64 = 0x100 + 120;
/// A peer that shares no protocol version is named at WARN at most this often.
const MISMATCH_LOG_EVERY: Duration = Duration::from_secs(60);
/// Largest frame from a member (AppendEntries batches, snapshot chunks).
pub const FRAME_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Largest request from a peer that is not a member (a join request is a few hundred bytes).
pub const STRANGER_FRAME_MAX_BYTES: usize = 64 * 1024;
/// Generous: a handshake on a loaded machine can take a while, and a dead peer costs one
/// timeout per dial only (the connection is cached once made).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// A request must arrive in full this soon after its stream opens.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECTIONS_MAX: usize = 512;
const STREAMS_PER_CONNECTION: u32 = 256;
/// QUIC keep-alives let both ends notice a dead peer within the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_millis(1_000);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Served RPCs slower than this are logged (debug): a loaded or slow-disk follower.
const SLOW_RPC: Duration = Duration::from_secs(1);

fn rpc_timeout(kind: RpcKind) -> Duration {
    match kind {
        RpcKind::AppendEntries | RpcKind::Vote | RpcKind::PreVote => Duration::from_secs(5),
        RpcKind::InstallSnapshot => Duration::from_secs(60),
        RpcKind::Propose => Duration::from_secs(10),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("tls: {0}")]
    Tls(String),
    #[error("binding the Raft listener on {addr}: {msg}")]
    Bind { addr: SocketAddr, msg: String },
}

/// What a stream's request frame carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireRequest {
    /// An openraft RPC (or a forwarded write), handed to [`JobLog::handle_rpc`].
    Raft { kind: RpcKind, payload: Vec<u8> },
    /// A node asking to join.
    Join(JoinRequest),
    /// A member passing a join on to the leader; `client_pk` is the joiner's TLS key as the
    /// member saw it.
    ForwardJoin {
        request: JoinRequest,
        client_pk: [u8; 32],
        observed_ip: Option<IpAddr>,
    },
}

/// What a stream's reply frame carries.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireReply {
    Raft(Vec<u8>),
    Join(JoinReply),
    /// The request could not be served (bad input, node starting, Raft error).
    Error(String),
    /// The peer is not allowed to make this request.
    Denied(String),
}

impl WireReply {
    pub fn describe(&self) -> String {
        match self {
            WireReply::Raft(b) => format!("a Raft reply ({} bytes)", b.len()),
            WireReply::Join(r) => format!("{r:?}"),
            WireReply::Error(e) => format!("error: {e}"),
            WireReply::Denied(e) => format!("denied: {e}"),
        }
    }
}

struct Cached {
    conn: quinn::Connection,
    raft: String,
    pk: [u8; 32],
}

/// The node's Raft transport and listener.
pub struct QuicRaft {
    endpoint: quinn::Endpoint,
    me_pk: [u8; 32],
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    provider: Arc<CryptoProvider>,
    /// One connection per peer, (re)made under its slot's lock so concurrent calls share it.
    conns: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
    /// When each peer last answered an RPC: the leader's liveness signal for the membership policy.
    last_ok: Mutex<HashMap<NodeId, Instant>>,
    /// Keys a join reply named as members, trusted until the replicated membership arrives.
    trusted: RwLock<HashSet<[u8; 32]>>,
    joblog: OnceLock<JobLog>,
    admission: OnceLock<Arc<Admission>>,
    connections: Arc<Semaphore>,
    protocols: Vec<Vec<u8>>,
    /// When each peer address that shares no protocol version was last logged.
    mismatch_logged: Mutex<HashMap<SocketAddr, Instant>>,
}

/// Whether a failed handshake failed because the two ends share no protocol version.
fn no_common_protocol(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return false,
    };
    code == NO_COMMON_PROTOCOL
}

fn protocol_names(protocols: &[Vec<u8>]) -> String {
    let names: Vec<String> = protocols
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    names.join(", ")
}

impl QuicRaft {
    /// Binds the listener. Incoming connections wait until [`QuicRaft::serve`].
    pub fn bind(identity: &NodeIdentity, addr: SocketAddr) -> Result<Arc<Self>, QuicError> {
        Self::bind_speaking(identity, addr, PROTOCOLS)
    }

    /// [`QuicRaft::bind`] speaking the given protocol versions (newest first).
    pub fn bind_speaking(
        identity: &NodeIdentity,
        addr: SocketAddr,
        protocols: &[&[u8]],
    ) -> Result<Arc<Self>, QuicError> {
        let protocols: Vec<Vec<u8>> = protocols.iter().map(|p| p.to_vec()).collect();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = identity.tls_cert()?;
        let tls = |e: rustls::Error| QuicError::Tls(e.to_string());
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(Arc::new(AnyNodeClient {
                provider: provider.clone(),
            }))
            .with_single_cert(vec![cert.clone()], key.clone_key())
            .map_err(tls)?;
        server_tls.alpn_protocols = protocols.clone();
        let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
        server.transport_config(transport_config());
        let bind_err = |e: std::io::Error| QuicError::Bind {
            addr,
            msg: e.to_string(),
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
        // Both keys from the identity: a peer's packets to this node's previous process (same
        // port) then get a stateless reset it accepts, and it redials at once.
        let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(identity.stateless_reset_key()));
        let cid_key = identity.connection_id_key();
        endpoint_cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind_err(std::io::Error::other("no async runtime for QUIC")))?;
        let endpoint =
            quinn::Endpoint::new(endpoint_cfg, Some(server), socket, runtime).map_err(bind_err)?;
        Ok(Arc::new(Self {
            endpoint,
            me_pk: identity.public_key_bytes(),
            cert,
            key,
            provider,
            conns: Mutex::new(HashMap::new()),
            last_ok: Mutex::new(HashMap::new()),
            trusted: RwLock::new(HashSet::new()),
            joblog: OnceLock::new(),
            admission: OnceLock::new(),
            connections: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
            protocols,
            mismatch_logged: Mutex::new(HashMap::new()),
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.me_pk
    }

    /// Trusts these keys as members (from a verified join reply).
    pub fn trust(&self, keys: impl IntoIterator<Item = [u8; 32]>) {
        let mut t = self.trusted.write().unwrap_or_else(PoisonError::into_inner);
        t.extend(keys);
    }

    /// When `node` last showed it is alive: its last answer to an RPC, or now while this node
    /// holds an open QUIC connection to it (keep-alives close a dead peer's within
    /// [`IDLE_TIMEOUT`]; a slow but live peer keeps it open, so it is not mistaken for dead).
    pub fn last_heard(&self, node: NodeId) -> Option<Instant> {
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .cloned();
        if let Some(slot) = slot {
            // Busy slot: a dial is in progress, say nothing new.
            if let Ok(cached) = slot.try_lock() {
                if cached
                    .as_ref()
                    .is_some_and(|c| c.conn.close_reason().is_none())
                {
                    return Some(Instant::now());
                }
            }
        }
        self.last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .copied()
    }

    /// Starts answering: Raft RPCs go to `joblog`, joins to `admission`.
    pub fn serve(self: &Arc<Self>, joblog: JobLog, admission: Arc<Admission>) {
        let _ = self.joblog.set(joblog);
        let _ = self.admission.set(admission);
        let me = self.clone();
        tokio::spawn(async move { me.accept_loop().await });
    }

    /// Closes every connection and the listener.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }

    fn client_config(&self, expected: Option<[u8; 32]>) -> Result<quinn::ClientConfig, String> {
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                expected,
                provider: self.provider.clone(),
            }))
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = self.protocols.clone();
        let quic_tls =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic_tls));
        cfg.transport_config(transport_config());
        Ok(cfg)
    }

    async fn dial(
        &self,
        raft_addr: &str,
        expected: Option<[u8; 32]>,
    ) -> Result<quinn::Connection, TransportError> {
        let unreachable = |m: String| TransportError::Unreachable(format!("{raft_addr}: {m}"));
        let addr = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(raft_addr))
            .await
            .map_err(|_| unreachable("name lookup timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("no address".into()))?;
        let cfg = self.client_config(expected).map_err(unreachable)?;
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, CERT_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| {
                if no_common_protocol(&e) {
                    let msg = self.version_mismatch(addr);
                    unreachable(msg)
                } else {
                    unreachable(e.to_string())
                }
            })
    }

    /// Says (at WARN, at most once a minute per peer) that `remote` speaks no Raft protocol
    /// version this node does, and returns the sentence.
    fn version_mismatch(&self, remote: SocketAddr) -> String {
        let msg = format!(
            "the peer at {remote} speaks no Raft protocol version this node does (this node: {}): \
             it runs a runmesh too old or too new for this one; upgrade the older node",
            protocol_names(&self.protocols)
        );
        let now = Instant::now();
        let mut logged = self
            .mismatch_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = logged
            .get(&remote)
            .is_none_or(|at| now.duration_since(*at) >= MISMATCH_LOG_EVERY);
        if due {
            if logged.len() >= CONNECTIONS_MAX {
                logged.clear();
            }
            logged.insert(remote, now);
            warn!(%remote, "{msg}");
        }
        msg
    }

    /// A connection to a member, pinned to the key its record names.
    async fn member_connection(
        &self,
        target: NodeId,
        record: &str,
    ) -> Result<quinn::Connection, TransportError> {
        let info = MemberInfo::from_addr_string(record).ok_or_else(|| {
            TransportError::Unreachable(format!("node {target} has no member record"))
        })?;
        let pk = info.pubkey_bytes().ok_or_else(|| {
            TransportError::Unreachable(format!("node {target}: bad key in its record"))
        })?;
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(target)
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.pk == pk && c.raft == info.raft && c.conn.close_reason().is_none() {
                return Ok(c.conn.clone());
            }
        }
        *cached = None;
        let conn = self.dial(&info.raft, Some(pk)).await?;
        *cached = Some(Cached {
            conn: conn.clone(),
            raft: info.raft,
            pk,
        });
        Ok(conn)
    }

    /// Sends one request to a member and returns its reply.
    pub async fn request_member(
        &self,
        target: NodeId,
        record: &str,
        req: &WireRequest,
        timeout: Duration,
    ) -> Result<WireReply, TransportError> {
        let conn = self.member_connection(target, record).await?;
        let reply = Self::exchange(&conn, req, timeout).await?;
        self.last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target, Instant::now());
        Ok(reply)
    }

    /// A connection to a node whose key is not known yet (a bootstrap address), and its key.
    pub async fn connect_unpinned(
        &self,
        raft_addr: &str,
    ) -> Result<(quinn::Connection, [u8; 32]), TransportError> {
        let conn = self.dial(raft_addr, None).await?;
        let pk = peer_key(&conn).ok_or_else(|| {
            TransportError::Network(format!("{raft_addr}: no ed25519 certificate"))
        })?;
        Ok((conn, pk))
    }

    /// One request/reply exchange on a new stream of `conn`.
    pub async fn exchange(
        conn: &quinn::Connection,
        req: &WireRequest,
        timeout: Duration,
    ) -> Result<WireReply, TransportError> {
        let bytes = codec::encode(req).map_err(|e| TransportError::Network(e.to_string()))?;
        if bytes.len() > FRAME_MAX_BYTES {
            return Err(TransportError::Network(format!(
                "request of {} bytes is over the frame limit",
                bytes.len()
            )));
        }
        let exchange = async {
            // A failure to open a stream means the connection is gone: nothing was sent.
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| TransportError::Unreachable(e.to_string()))?;
            write_frame(&mut send, &bytes)
                .await
                .map_err(TransportError::Network)?;
            let reply = read_frame(&mut recv, FRAME_MAX_BYTES)
                .await
                .map_err(TransportError::Network)?;
            codec::decode::<WireReply>(&reply).map_err(|e| TransportError::Network(e.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Network(format!("no reply within {timeout:?}")))?
    }

    /// True when `pk` belongs to a member (per the local membership) or a trusted joiner reply.
    fn is_member_key(&self, pk: &[u8; 32]) -> bool {
        if self
            .trusted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(pk)
        {
            return true;
        }
        let Some(joblog) = self.joblog.get() else {
            return false;
        };
        let hex = to_hex(pk);
        joblog
            .members()
            .iter()
            .any(|m| MemberInfo::from_addr_string(&m.addr).is_some_and(|info| info.pubkey == hex))
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                debug!("too many Raft connections; refusing one");
                incoming.refuse();
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let remote = incoming.remote_address();
                let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) if no_common_protocol(&e) => {
                        me.version_mismatch(remote);
                        return;
                    }
                    Ok(Err(e)) => {
                        debug!(%remote, error = %e, "Raft handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%remote, "Raft handshake timed out");
                        return;
                    }
                };
                me.serve_connection(conn).await;
            });
        }
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let Some(pk) = peer_key(&conn) else {
            conn.close(1u32.into(), b"no ed25519 certificate");
            return;
        };
        let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%remote, error = %e, "Raft connection closed");
                    return;
                }
            };
            let me = self.clone();
            let warned = warned.clone();
            tokio::spawn(async move {
                me.serve_stream(pk, remote, send, recv, &warned).await;
            });
        }
    }

    async fn serve_stream(
        &self,
        pk: [u8; 32],
        remote: SocketAddr,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        warned: &std::sync::atomic::AtomicBool,
    ) {
        let member = self.is_member_key(&pk);
        let limit = if member {
            FRAME_MAX_BYTES
        } else {
            STRANGER_FRAME_MAX_BYTES
        };
        let reply =
            match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame(&mut recv, limit)).await {
                Err(_) => WireReply::Error("request timed out".into()),
                Ok(Err(e)) => WireReply::Error(format!("bad request: {e}")),
                Ok(Ok(bytes)) => match codec::decode::<WireRequest>(&bytes) {
                    Err(e) => WireReply::Error(format!("bad request: {e}")),
                    Ok(req) => {
                        let started = Instant::now();
                        let kind = match &req {
                            WireRequest::Raft { kind, .. } => format!("{kind:?}"),
                            _ => "join".into(),
                        };
                        let r = self.dispatch(pk, remote, member, req, warned).await;
                        if started.elapsed() > SLOW_RPC {
                            debug!(elapsed = ?started.elapsed(), kind, %remote, "slow Raft RPC");
                        }
                        r
                    }
                },
            };
        let bytes = match codec::encode(&reply) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "encoding a Raft reply");
                return;
            }
        };
        if let Err(e) = write_frame(&mut send, &bytes).await {
            debug!(%remote, error = %e, "writing a Raft reply");
        }
    }

    async fn dispatch(
        &self,
        pk: [u8; 32],
        remote: SocketAddr,
        member: bool,
        req: WireRequest,
        warned: &std::sync::atomic::AtomicBool,
    ) -> WireReply {
        let Some(joblog) = self.joblog.get() else {
            return WireReply::Error("node starting".into());
        };
        let deny = |what: &str| {
            if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(%remote, peer = %to_hex(&pk[..8]), "refused {what} from a node that is not a member");
            }
            WireReply::Denied(format!("{what} is for cluster members only"))
        };
        match req {
            WireRequest::Raft { kind, payload } => {
                if !member {
                    return deny("a Raft RPC");
                }
                match joblog.handle_rpc(kind, &payload).await {
                    Ok(bytes) => WireReply::Raft(bytes),
                    Err(e) => WireReply::Error(e.to_string()),
                }
            }
            WireRequest::Join(request) => {
                let Some(admission) = self.admission.get() else {
                    return WireReply::Error("node starting".into());
                };
                let reply = admission
                    .handle_join(self, joblog, request, pk, remote.ip())
                    .await;
                if let JoinReply::Accepted { node_id, .. } = &reply {
                    info!(node = node_id, %remote, "join accepted");
                }
                WireReply::Join(reply)
            }
            WireRequest::ForwardJoin {
                request,
                client_pk,
                observed_ip,
            } => {
                if !member {
                    return deny("a forwarded join");
                }
                let Some(admission) = self.admission.get() else {
                    return WireReply::Error("node starting".into());
                };
                WireReply::Join(
                    admission
                        .handle_forwarded(joblog, request, client_pk, pk, observed_ip)
                        .await,
                )
            }
        }
    }
}

/// The [`RaftTransport`] handed to the job log: a handle on the shared [`QuicRaft`] (the trait's
/// futures must be `'static`, so they hold the `Arc`).
#[derive(Clone)]
pub struct QuicTransport(pub Arc<QuicRaft>);

impl RaftTransport for QuicTransport {
    fn call(&self, target: NodeId, addr: &str, kind: RpcKind, payload: Vec<u8>) -> TransportFuture {
        let quic = self.0.clone();
        let record = addr.to_string();
        Box::pin(async move {
            let req = WireRequest::Raft { kind, payload };
            match quic
                .request_member(target, &record, &req, rpc_timeout(kind))
                .await?
            {
                WireReply::Raft(bytes) => Ok(bytes),
                other => Err(TransportError::Network(format!(
                    "node {target}: {}",
                    other.describe()
                ))),
            }
        })
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// The ed25519 key of the peer's certificate on an established connection.
fn peer_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    ed25519_key_of_cert(certs.first()?)
}

async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<(), String> {
    let len = u32::try_from(body.len()).map_err(|_| "frame too large".to_string())?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(body).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(format!("frame of {len} bytes is over the limit of {limit}"));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(body)
}

/// Client side: the server must present exactly the expected key (or any ed25519 key when dialing
/// a bootstrap address, whose identity the join handshake then proves).
#[derive(Debug)]
struct PinnedServer {
    expected: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = ed25519_key_of_cert(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        match self.expected {
            Some(expected) if expected != key => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Server side: any node certificate (ed25519, proven by the handshake); authorization happens
/// per request, by key.
#[derive(Debug)]
struct AnyNodeClient {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyNodeClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        ed25519_key_of_cert(end_entity)
            .map(|_| ClientCertVerified::assertion())
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mesh::join::{join_cluster, ClusterSecret};
    use runmesh_proto::SystemClock;
    use runmesh_raft::JobLogConfig;

    fn record(id: &NodeIdentity, raft: SocketAddr) -> MemberInfo {
        MemberInfo {
            pubkey: id.public_key_hex(),
            raft: raft.to_string(),
            http: String::new(),
            p2p: None,
            region: None,
        }
    }

    /// A one-member job log on `quic`, its Raft RPCs over it.
    async fn lone_log(
        dir: &std::path::Path,
        id: &NodeIdentity,
        quic: &Arc<QuicRaft>,
        raft_addr: String,
    ) -> JobLog {
        let mut cfg = JobLogConfig::single_node(dir.join("raft"));
        cfg.node_id = id.raft_node_id();
        cfg.raft_addr = raft_addr;
        JobLog::open(
            cfg,
            Arc::new(SystemClock),
            Arc::new(QuicTransport(quic.clone())),
        )
        .await
        .unwrap()
    }

    /// Nodes that share no Raft protocol version refuse each other with a sentence saying so;
    /// a node that also speaks the older version talks to an old one (a rolling upgrade).
    #[tokio::test]
    async fn peers_agree_on_a_protocol_version_or_say_they_share_none() {
        let dir = tempfile::tempdir().unwrap();
        let old_id = NodeIdentity::generate().unwrap();
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let old = QuicRaft::bind_speaking(&old_id, local, &[b"runmesh-raft/1"]).unwrap();
        let joblog = lone_log(dir.path(), &old_id, &old, String::new()).await;
        old.serve(
            joblog.clone(),
            Arc::new(Admission::new(None, old_id.public_key_bytes())),
        );
        let old_addr = old.local_addr().unwrap().to_string();

        let newer = NodeIdentity::generate().unwrap();
        let only_new = QuicRaft::bind_speaking(&newer, local, &[b"runmesh-raft/2"]).unwrap();
        let e = only_new.connect_unpinned(&old_addr).await.unwrap_err();
        assert!(
            e.to_string().contains(
                "speaks no Raft protocol version this node does (this node: runmesh-raft/2)"
            ),
            "{e}"
        );
        let both = QuicRaft::bind_speaking(&newer, local, &[b"runmesh-raft/2", b"runmesh-raft/1"])
            .unwrap();
        let (conn, _) = both.connect_unpinned(&old_addr).await.unwrap();
        let agreed = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        assert_eq!(agreed.as_deref(), Some(&b"runmesh-raft/1"[..]));
        joblog.shutdown().await;
    }

    /// A one-node cluster on a QUIC listener, and a stranger dialing it.
    #[tokio::test]
    async fn strangers_are_denied_keys_are_pinned_and_the_secret_admits() {
        let dir = tempfile::tempdir().unwrap();
        let (a_id, b_id) = (
            NodeIdentity::generate().unwrap(),
            NodeIdentity::generate().unwrap(),
        );
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = QuicRaft::bind(&a_id, local).unwrap();
        let a_addr = a.local_addr().unwrap();
        let a_record = record(&a_id, a_addr).to_addr_string();
        let joblog = lone_log(dir.path(), &a_id, &a, a_record.clone()).await;
        assert!(joblog.wait_healthy(Duration::from_secs(10)).await);
        let secret = ClusterSecret::new("s3cret");
        a.serve(
            joblog.clone(),
            Arc::new(Admission::new(
                Some(secret.clone()),
                a_id.public_key_bytes(),
            )),
        );

        let b = QuicRaft::bind(&b_id, local).unwrap();
        let vote = WireRequest::Raft {
            kind: RpcKind::Vote,
            payload: vec![1, 2, 3],
        };
        let t = Duration::from_secs(5);
        // Not a member: Raft RPCs are refused.
        let r = b
            .request_member(a_id.raft_node_id(), &a_record, &vote, t)
            .await
            .unwrap();
        assert!(matches!(r, WireReply::Denied(_)), "{r:?}");
        // A record naming another key at a's address: the handshake fails (pinning).
        let wrong = record(&b_id, a_addr).to_addr_string();
        assert!(b.request_member(42, &wrong, &vote, t).await.is_err());
        // A stranger's oversized frame is refused without reading it; the node keeps serving.
        let (conn, pk) = b.connect_unpinned(&a_addr.to_string()).await.unwrap();
        assert_eq!(pk, a_id.public_key_bytes());
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&(10_000_000u32).to_be_bytes())
            .await
            .unwrap();
        let reply: WireReply =
            codec::decode(&read_frame(&mut recv, FRAME_MAX_BYTES).await.unwrap()).unwrap();
        assert!(matches!(reply, WireReply::Error(_)), "{reply:?}");

        // Joining: a wrong secret is refused for good; the right one makes b a learner.
        let me = record(&b_id, b.local_addr().unwrap());
        let target = a_addr.to_string();
        let refused = join_cluster(&b, &target, &ClusterSecret::new("guess"), &me, t).await;
        assert!(
            matches!(refused, Err(crate::mesh::join::JoinError::Refused { .. })),
            "{refused:?}"
        );
        assert_eq!(joblog.members().len(), 1);
        let id = join_cluster(&b, &target, &secret, &me, t).await.unwrap();
        assert_eq!(id, b_id.raft_node_id());
        let members = joblog.members();
        assert!(
            members.iter().any(|m| m.id == id && !m.voter),
            "{members:?}"
        );
        // Now a member: the same garbage vote reaches Raft (and fails to decode there).
        let r = b
            .request_member(a_id.raft_node_id(), &a_record, &vote, t)
            .await
            .unwrap();
        assert!(
            matches!(r, WireReply::Error(ref e) if e.contains("bad rpc")),
            "{r:?}"
        );
        joblog.shutdown().await;
        a.close();
        b.close();
    }
}
