//! HTTPS for the fal API: a TLS listener for `axum::serve` (tokio-rustls, ring provider), the
//! self-signed development certificate (`runmesh dev --tls`), and operator certificates
//! (`--tls-cert/--tls-key`).
//!
//! The fal clients only speak https/wss, so this is what lets them connect with nothing changed
//! but the host (and `SSL_CERT_FILE` / `NODE_EXTRA_CA_CERTS` pointing at the dev certificate).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::malformed::FalShaped;

/// A client must finish its TLS handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const HANDSHAKES_MAX: usize = 256;
/// Finished handshakes waiting for the HTTP server to pick them up.
const READY_MAX: usize = 64;

/// Makes ring rustls's process-wide provider. The binary links more than one provider (quinn,
/// libp2p, reqwest), and rustls panics when it must choose between them; every config here also
/// names ring explicitly. Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("generating the development certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

fn file_err(path: &Path, msg: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Where the development certificate lives: `<data-dir>/tls/{cert,key}.pem`.
pub fn dev_cert_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The self-signed certificate for `localhost` and `127.0.0.1` under `data_dir`, made on first use
/// and kept afterwards (clients that trust it keep trusting it across restarts).
pub fn ensure_dev_cert(data_dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = dev_cert_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let dir = cert_path.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem()).map_err(|e| file_err(&cert_path, e))?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed development certificate");
    Ok((cert_path, key_path))
}

/// Writes `bytes` to a file only its owner can read (0600 on unix).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(bytes).map_err(|e| file_err(path, e))?;
    f.sync_all().map_err(|e| file_err(path, e))
}

/// A rustls server config (ring, TLS 1.2/1.3, HTTP/1.1) from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // axum serves HTTP/1.1 (WebSocket upgrades included); h2 is not offered.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TCP listener whose connections are TLS-handshaken before axum sees them. Handshakes run in
/// their own tasks (bounded, with a timeout), so a slow client cannot stall the accept loop.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_MAX);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(HANDSHAKES_MAX));
        let acceptor_task = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor task is gone (it only ends when the listener is dropped): no more
            // connections will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The HTTP API's listener: plain TCP or TLS.
pub enum HttpListener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl HttpListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Plain(l) => l.local_addr(),
            Self::Tls(l) => Ok(l.local),
        }
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Plain(_) => "http",
            Self::Tls(_) => "https",
        }
    }

    /// Serves `app` until `shutdown` resolves (then drains open connections).
    pub async fn serve(
        self,
        app: axum::Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        match self {
            Self::Plain(l) => {
                use axum::serve::ListenerExt as _;
                // axum leaves Nagle on: a small SSE/WebSocket write behind an unacknowledged one
                // then waits for the client's delayed ACK (~40 ms), the p99 of `bench streaming`.
                let l = l.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(FalShaped(l), app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Self::Tls(l) => {
                axum::serve(FalShaped(l), app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}

/// How the HTTP API is served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    #[default]
    Off,
    /// The self-signed development certificate under the data dir.
    SelfSigned,
    /// The operator's certificate chain and key (PEM).
    Files { cert: PathBuf, key: PathBuf },
}

/// Binds `addr` and wraps it in TLS as `mode` says.
pub async fn bind(
    addr: SocketAddr,
    mode: &TlsMode,
    data_dir: &Path,
) -> Result<HttpListener, TlsError> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| TlsError::Bind { addr, source })?;
    let (cert, key) = match mode {
        TlsMode::Off => return Ok(HttpListener::Plain(tcp)),
        TlsMode::SelfSigned => ensure_dev_cert(data_dir)?,
        TlsMode::Files { cert, key } => (cert.clone(), key.clone()),
    };
    let config = server_config(&cert, &key)?;
    tracing::info!(cert = %cert.display(), "serving HTTPS");
    let local = tcp
        .local_addr()
        .map_err(|source| TlsError::Bind { addr, source })?;
    let listener = TlsListener::new(tcp, config).map_err(|source| TlsError::Bind {
        addr: local,
        source,
    })?;
    Ok(HttpListener::Tls(listener))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_is_made_once_and_loads() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_dev_cert(dir.path()).unwrap();
        let first = std::fs::read(&cert).unwrap();
        assert!(String::from_utf8_lossy(&first).contains("BEGIN CERTIFICATE"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (cert2, _) = ensure_dev_cert(dir.path()).unwrap();
        assert_eq!(std::fs::read(cert2).unwrap(), first);
        server_config(&cert, &key).unwrap();
        assert!(server_config(&key, &key).is_err());
        assert!(server_config(&dir.path().join("missing"), &key).is_err());
    }
}
