//! Node identity: one persisted ed25519 seed (`<data-dir>/node.key`, 32 raw bytes, mode 0600) from
//! which everything that names the node derives: its Raft node id, the self-signed certificate of
//! its QUIC listener, the libp2p peer id (feature `p2p`) and later the blob endpoint. One secret, so
//! a node cannot present one key to gossip and another to Raft.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use runmesh_proto::NodeId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File name of the seed inside the data dir.
pub const KEY_FILE: &str = "node.key";
/// Subject name of node certificates. Peers are pinned by key, not by name, so it is fixed.
pub const CERT_NAME: &str = "runmesh";

/// PKCS#8 v1 (RFC 8410) header of an ed25519 private key; the 32-byte seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// SubjectPublicKeyInfo header of an ed25519 public key; the 32-byte key follows.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// Domain separation of the node id hash.
const NODE_ID_CONTEXT: &[u8] = b"runmesh node id v1\0";
/// Node ids stay below 2^53 so that JSON readers that use doubles (JavaScript) see them exactly.
const NODE_ID_MASK: u64 = (1 << 53) - 1;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("node key {path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("node key {path} is not a 32-byte ed25519 seed ({len} bytes)")]
    BadKeyFile { path: PathBuf, len: usize },
    #[error("ed25519: {0}")]
    Key(String),
    #[error("certificate: {0}")]
    Cert(String),
}

/// The node's key pair. `Debug` never prints the seed.
#[derive(Clone)]
pub struct NodeIdentity {
    seed: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("public", &self.public_key_hex())
            .field("node_id", &self.raft_node_id())
            .finish()
    }
}

impl NodeIdentity {
    /// A fresh random identity (not persisted).
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| IdentityError::Key("the system random source failed".into()))?;
        Self::from_seed(seed)
    }

    pub fn from_seed(seed: [u8; 32]) -> Result<Self, IdentityError> {
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(ring::signature::KeyPair::public_key(&kp).as_ref());
        Ok(Self { seed, public })
    }

    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join(KEY_FILE)
    }

    /// Loads `<data_dir>/node.key`.
    pub fn load(data_dir: &Path) -> Result<Self, IdentityError> {
        let path = Self::key_path(data_dir);
        let io = |e: std::io::Error| IdentityError::Io {
            path: path.clone(),
            msg: e.to_string(),
        };
        let bytes = std::fs::read(&path).map_err(io)?;
        let seed: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| IdentityError::BadKeyFile {
                    path: path.clone(),
                    len: bytes.len(),
                })?;
        warn_if_readable_by_others(&path);
        Self::from_seed(seed)
    }

    /// Loads the key, or creates and persists a new one when there is none. The bool is true when
    /// the key was created now.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), IdentityError> {
        let path = Self::key_path(data_dir);
        if path.exists() {
            return Ok((Self::load(data_dir)?, false));
        }
        let id = Self::generate()?;
        id.save(data_dir)?;
        Ok((id, true))
    }

    /// Writes the seed to `<data_dir>/node.key` (0600), atomically: a crash leaves the old file or
    /// the new one, never half a key.
    pub fn save(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = Self::key_path(data_dir);
        let io = |e: std::io::Error| IdentityError::Io {
            path: path.clone(),
            msg: e.to_string(),
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(&self.seed).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        if let Ok(dir) = std::fs::File::open(data_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.public
    }

    pub fn public_key_hex(&self) -> String {
        runmesh_proto::mesh::to_hex(&self.public)
    }

    /// The Raft node id: stable, derived from the public key.
    pub fn raft_node_id(&self) -> NodeId {
        node_id_from_public_key(&self.public)
    }

    /// The key as PKCS#8 DER (what rcgen and rustls take).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(&self.seed);
        der
    }

    /// A self-signed certificate for this key, and the key, for rustls (QUIC server and client).
    pub fn tls_cert(
        &self,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), IdentityError> {
        let pkcs8 = PrivatePkcs8KeyDer::from(self.pkcs8_der());
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()])
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::Cert(e.to_string()))?;
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
    }

    /// The key of the Raft QUIC endpoint's stateless resets, derived from the seed so that it
    /// survives a restart. A peer still holding a connection to this node's previous process
    /// sends into it; the restarted process answers with a reset carrying the token the old one
    /// issued, and the peer closes that connection at once and redials, instead of timing out
    /// every RPC until the idle timeout (seconds during which a vote or a heartbeat is lost).
    /// Domain-separated, so the reset key reveals nothing about the signing key.
    pub fn stateless_reset_key(&self) -> ring::hmac::Key {
        let derived =
            blake3::derive_key("runmesh 2026-12 raft quic stateless reset key", &self.seed);
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derived)
    }

    /// The key the Raft QUIC endpoint signs its connection ids with, derived from the seed for the
    /// same reason as [`NodeIdentity::stateless_reset_key`]: quinn drops a packet whose connection
    /// id it did not sign before it would answer with a reset, so a restarted process must
    /// recognise its predecessor's ids.
    pub fn connection_id_key(&self) -> u64 {
        let derived = blake3::derive_key("runmesh 2026-12 raft quic connection id key", &self.seed);
        let mut first = [0u8; 8];
        first.copy_from_slice(&derived[..8]);
        u64::from_le_bytes(first)
    }

    /// The blob store of the same seed, listening on `bind` (its iroh endpoint id is this node's
    /// public key).
    pub async fn start_blobs(
        &self,
        root: PathBuf,
        bind: std::net::SocketAddr,
        gc_interval: Option<std::time::Duration>,
    ) -> Result<runmesh_blobs::BlobNode, runmesh_blobs::BlobError> {
        runmesh_blobs::BlobNode::start(runmesh_blobs::BlobConfig {
            root,
            seed: self.seed,
            bind,
            gc_interval,
        })
        .await
    }

    /// The libp2p key pair of the same seed (its peer id is this node's libp2p identity).
    #[cfg(feature = "p2p")]
    pub fn libp2p_keypair(&self) -> Result<libp2p::identity::Keypair, IdentityError> {
        libp2p::identity::Keypair::ed25519_from_bytes(self.seed)
            .map_err(|e| IdentityError::Key(e.to_string()))
    }
}

/// The Raft node id of a public key: the first 8 bytes of a SHA-256 over it, below 2^53, never 0.
pub fn node_id_from_public_key(public: &[u8; 32]) -> NodeId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(NODE_ID_CONTEXT);
    ctx.update(public);
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) & NODE_ID_MASK).max(1)
}

/// The ed25519 public key a certificate carries, or `None` for any other kind of certificate.
/// Parsed with rustls's own certificate parser, so it is the key the TLS handshake was verified with.
pub fn ed25519_key_of_cert(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let bytes: &[u8] = spki.as_ref();
    let key = bytes.strip_prefix(&SPKI_ED25519_PREFIX[..])?;
    key.try_into().ok()
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "node key is readable by other users; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_quic_reset_and_connection_id_keys_survive_a_restart_and_differ_per_node() {
        let token = |id: &NodeIdentity| ring::hmac::sign(&id.stateless_reset_key(), b"cid-1234");
        let dir = tempfile::tempdir().unwrap();
        let (before, _) = NodeIdentity::load_or_create(dir.path()).unwrap();
        let (after, _) = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(token(&before).as_ref(), token(&after).as_ref());
        assert_eq!(before.connection_id_key(), after.connection_id_key());
        let other = NodeIdentity::generate().unwrap();
        assert_ne!(token(&before).as_ref(), token(&other).as_ref());
        assert_ne!(before.connection_id_key(), other.connection_id_key());
        // Not the signing seed itself under another name.
        let seeded = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &before.seed);
        assert_ne!(
            token(&before).as_ref(),
            ring::hmac::sign(&seeded, b"cid-1234").as_ref()
        );
    }

    #[test]
    fn the_key_persists_with_mode_0600_and_ids_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (b, created) = NodeIdentity::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public_key_bytes(), b.public_key_bytes());
        assert_eq!(a.raft_node_id(), b.raft_node_id());
        assert!(a.raft_node_id() > 0 && a.raft_node_id() <= NODE_ID_MASK);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(NodeIdentity::key_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = NodeIdentity::generate().unwrap();
        assert_ne!(other.raft_node_id(), a.raft_node_id());
        assert!(!format!("{a:?}").contains(&runmesh_proto::mesh::to_hex(&a.seed)));
    }

    #[test]
    fn a_truncated_key_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(NodeIdentity::key_path(dir.path()), [1u8; 7]).unwrap();
        assert!(matches!(
            NodeIdentity::load_or_create(dir.path()),
            Err(IdentityError::BadKeyFile { len: 7, .. })
        ));
    }

    #[test]
    fn the_certificate_carries_the_node_key() {
        let id = NodeIdentity::from_seed([9u8; 32]).unwrap();
        let (cert, _key) = id.tls_cert().unwrap();
        assert_eq!(ed25519_key_of_cert(&cert), Some(id.public_key_bytes()));
        // ring's own PKCS#8 parser reads the same key back.
        let kp =
            ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&id.pkcs8_der()).unwrap();
        assert_eq!(
            ring::signature::KeyPair::public_key(&kp).as_ref(),
            &id.public_key_bytes()
        );
        assert_eq!(
            ed25519_key_of_cert(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_blob_endpoint_uses_the_same_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeIdentity::generate().unwrap();
        let blobs = id
            .start_blobs(
                dir.path().join("blobs"),
                "127.0.0.1:0".parse().unwrap(),
                None,
            )
            .await
            .unwrap();
        assert_eq!(blobs.public_key(), id.public_key_bytes());
        blobs.shutdown().await;
    }

    #[cfg(feature = "p2p")]
    #[test]
    fn libp2p_uses_the_same_public_key() {
        let id = NodeIdentity::generate().unwrap();
        let kp = id.libp2p_keypair().unwrap();
        let ed = kp.public().try_into_ed25519().unwrap();
        assert_eq!(ed.to_bytes(), id.public_key_bytes());
    }
}
