//! Membership and capacity gossip over libp2p.
//!
//! One swarm per node: TCP and QUIC transports, noise, yamux; identify (learn a peer's listen
//! addresses), kademlia (find the rest of the cluster from one bootstrap address), gossipsub (the
//! capacity topic, one advert per node about once a second), ping (notice dead connections).
//!
//! This layer only carries bytes: adverts it receives go to [`Mesh::observe`], which owns every
//! decision (freshness, liveness); adverts it publishes come from the advertiser loop. Gossip
//! messages are signed by the sender's libp2p key, and an advert is accepted only when that key is
//! the identity the replicated membership pinned for the member the advert names (its Raft id
//! derives from the same key): a peer that never completed the cluster handshake, or a member
//! speaking for another, changes nothing.
//!
//! Kademlia and identify run under runmesh's own protocol names, so a runmesh node never joins
//! (or answers) a public libp2p DHT.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, PublishError, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use runmesh_proto::advert::{decode_advert, encode_advert, CapacityAdvert, ADVERT_MAX_BYTES};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use runmesh_proto::mesh::{to_hex, MemberInfo};
use runmesh_proto::NodeId;

use super::capacity::Mesh;
use super::view::Observed;

/// Whether `id` is an admitted member whose pinned identity is the ed25519 key `public`. The node
/// answers from its replica of the Raft membership ([`admitted_in`]).
pub type Admitted = std::sync::Arc<dyn Fn(NodeId, &[u8; 32]) -> bool + Send + Sync>;

/// [`Admitted`] over a membership: `id` must be a member, its id must derive from `public`, and
/// its record (when it has one: a single node's founding entry may be bare) must pin `public`.
pub fn admitted_in(
    members: &[runmesh_raft::joblog::Member],
    id: NodeId,
    public: &[u8; 32],
) -> bool {
    if crate::identity::node_id_from_public_key(public) != id {
        return false;
    }
    members.iter().any(|m| {
        m.id == id
            && match MemberInfo::from_addr_string(&m.addr) {
                Some(info) => info.pubkey == to_hex(public),
                None => m.addr.is_empty(),
            }
    })
}

/// The ed25519 key a peer id was made from (runmesh peer ids embed their key).
pub fn ed25519_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // 0x00: the identity multihash, which holds the protobuf-encoded public key itself.
    if hash.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    Some(key.try_into_ed25519().ok()?.to_bytes())
}

/// Gossipsub topic of capacity adverts (the suffix is the advert format generation).
pub const CAPACITY_TOPIC: &str = "runmesh/capacity/1";
/// Identify protocol version: peers announcing another one are not added to the routing table.
pub const PROTOCOL_VERSION: &str = "/runmesh/1.0.0";
/// Kademlia protocol name (private: not the public IPFS DHT).
pub const KAD_PROTOCOL: &str = "/runmesh/kad/1.0.0";
/// How often bootstrap addresses are dialled again while the node has no peer.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(2);
/// How often kademlia looks for peers it does not know yet.
const KAD_BOOTSTRAP_EVERY: Duration = Duration::from_secs(30);
/// Peers this node dials on its own once discovered (beyond it, gossipsub relays adverts).
const DIAL_PEERS_MAX: usize = 64;
/// Listen addresses taken from one identify message.
const IDENTIFY_ADDRS_MAX: usize = 16;
/// Adverts waiting to be published; the advertiser drops one when the swarm is behind.
pub const PUBLISH_QUEUE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("invalid bootstrap address {0:?}: expected HOST:PORT or a multiaddr")]
    BadBootstrap(String),
    #[error("cannot resolve bootstrap address {0:?}: {1}")]
    Resolve(String, String),
    #[error("libp2p: {0}")]
    Libp2p(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
}

#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Where the swarm listens: TCP on this address, and QUIC on the same UDP port when `quic`.
    pub listen: SocketAddr,
    /// Members to start from (`host:port` or multiaddrs); empty for the first node.
    pub bootstrap: Vec<String>,
    pub quic: bool,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    ping: ping::Behaviour,
}

/// The multiaddrs to listen on for a socket address.
pub fn listen_multiaddrs(addr: SocketAddr, quic: bool) -> Vec<Multiaddr> {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    let tcp = Multiaddr::empty()
        .with(ip.clone())
        .with(Protocol::Tcp(addr.port()));
    let mut out = vec![tcp];
    if quic {
        out.push(
            Multiaddr::empty()
                .with(ip)
                .with(Protocol::Udp(addr.port()))
                .with(Protocol::QuicV1),
        );
    }
    out
}

/// A bootstrap address as dialable multiaddrs: a multiaddr as it is, or `host:port` resolved
/// (TCP). Resolution happens here, once, so the swarm needs no DNS transport.
pub async fn bootstrap_multiaddrs(s: &str) -> Result<Vec<Multiaddr>, GossipError> {
    let s = s.trim();
    if s.starts_with('/') {
        return s
            .parse::<Multiaddr>()
            .map(|m| vec![m])
            .map_err(|_| GossipError::BadBootstrap(s.to_string()));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(GossipError::BadBootstrap(s.to_string()));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(GossipError::BadBootstrap(s.to_string()));
    }
    let addrs = tokio::net::lookup_host(s)
        .await
        .map_err(|e| GossipError::Resolve(s.to_string(), e.to_string()))?;
    let out: Vec<Multiaddr> = addrs
        .flat_map(|a| listen_multiaddrs(a, false))
        .take(IDENTIFY_ADDRS_MAX)
        .collect();
    if out.is_empty() {
        return Err(GossipError::Resolve(s.to_string(), "no address".into()));
    }
    Ok(out)
}

fn build_swarm(keypair: Keypair, quic: bool) -> Result<Swarm<Behaviour>, GossipError> {
    let e = |e: &dyn std::fmt::Display| GossipError::Libp2p(e.to_string());
    let make_behaviour =
        |key: &Keypair| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let peer_id = key.public().to_peer_id();
            let identify = identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                    .with_agent_version(format!("runmesh/{}", env!("CARGO_PKG_VERSION"))),
            );
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                MemoryStore::new(peer_id),
                kad::Config::new(StreamProtocol::new(KAD_PROTOCOL)),
            );
            // Answer queries even before an external address is confirmed (a private mesh, often on
            // private addresses, would otherwise stay in client mode and never be found).
            kad.set_mode(Some(kad::Mode::Server));
            let gs_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(500))
                .validation_mode(ValidationMode::Strict)
                .max_transmit_size(ADVERT_MAX_BYTES + 4096)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gs_config)?;
            let ping = ping::Behaviour::new(ping::Config::new());
            Ok(Behaviour {
                identify,
                kad,
                gossipsub,
                ping,
            })
        };
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(300));
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|x| e(&x))?;
    let swarm = if quic {
        builder
            .with_quic()
            .with_behaviour(make_behaviour)
            .map_err(|x| e(&x))?
            .with_swarm_config(idle)
            .build()
    } else {
        builder
            .with_behaviour(make_behaviour)
            .map_err(|x| e(&x))?
            .with_swarm_config(idle)
            .build()
    };
    Ok(swarm)
}

/// Starts the gossip layer: listens, dials the bootstrap addresses, publishes what arrives on
/// `adverts` and feeds what it hears into `mesh`. Returns once listening; the task runs until
/// `shutdown`.
pub async fn start(
    cfg: GossipConfig,
    keypair: Keypair,
    mesh: Mesh,
    admitted: Admitted,
    adverts: mpsc::Receiver<CapacityAdvert>,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, GossipError> {
    let mut bootstrap = Vec::new();
    for b in &cfg.bootstrap {
        bootstrap.extend(bootstrap_multiaddrs(b).await?);
    }
    let mut swarm = build_swarm(keypair, cfg.quic)?;
    for addr in listen_multiaddrs(cfg.listen, cfg.quic) {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| GossipError::Listen(addr.to_string(), e.to_string()))?;
    }
    let topic = IdentTopic::new(CAPACITY_TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| GossipError::Libp2p(e.to_string()))?;
    info!(peer_id = %swarm.local_peer_id(), listen = %cfg.listen, "gossip started");
    let task = GossipTask {
        swarm,
        topic,
        mesh,
        admitted,
        bootstrap,
        listen_addrs: Vec::new(),
        dialled: HashSet::new(),
    };
    Ok(tokio::spawn(task.run(adverts, shutdown)))
}

struct GossipTask {
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    mesh: Mesh,
    admitted: Admitted,
    bootstrap: Vec<Multiaddr>,
    listen_addrs: Vec<Multiaddr>,
    dialled: HashSet<PeerId>,
}

impl GossipTask {
    async fn run(
        mut self,
        mut adverts: mpsc::Receiver<CapacityAdvert>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut retry = tokio::time::interval(BOOTSTRAP_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut kad_every = tokio::time::interval(KAD_BOOTSTRAP_EVERY);
        kad_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                Some(advert) = adverts.recv() => self.publish(&advert),
                ev = self.swarm.select_next_some() => self.on_event(ev),
                _ = retry.tick() => {
                    if self.swarm.connected_peers().next().is_none() {
                        for addr in self.bootstrap.clone() {
                            debug!(%addr, "dialling bootstrap address");
                            if let Err(e) = self.swarm.dial(addr.clone()) {
                                debug!(%addr, error = %e, "bootstrap dial failed");
                            }
                        }
                    }
                }
                _ = kad_every.tick() => {
                    // Errors only when the routing table is empty: nothing to do then.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
        info!("gossip stopped");
    }

    fn publish(&mut self, advert: &CapacityAdvert) {
        let bytes = match encode_advert(advert) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode this node's advert");
                return;
            }
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => {}
            // Alone for now (first node, or peers not subscribed yet): nothing to tell anyone.
            Err(PublishError::NoPeersSubscribedToTopic | PublishError::Duplicate) => {}
            Err(e) => debug!(error = %e, "advert not published"),
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "gossip listening");
                self.listen_addrs.push(address);
                self.mesh
                    .set_p2p_addrs(self.listen_addrs.iter().map(ToString::to_string).collect());
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.mesh
                    .set_p2p_addrs(self.listen_addrs.iter().map(ToString::to_string).collect());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                debug!(%peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                if endpoint.is_dialer() {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, endpoint.get_remote_address().clone());
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                debug!(%peer_id, "peer disconnected");
                self.dialled.remove(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(p) = peer_id {
                    self.dialled.remove(&p);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identify(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                addresses,
                ..
            })) => {
                debug!(%peer, "peer discovered");
                self.dial_discovered(peer, addresses.into_vec());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => self.on_message(message),
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != PROTOCOL_VERSION {
            if info.protocol_version.starts_with("/runmesh/") {
                // Once per connection: a runmesh of another gossip generation (a rolling upgrade
                // that skipped a version, or a node left behind).
                warn!(
                    %peer,
                    theirs = %info.protocol_version,
                    ours = PROTOCOL_VERSION,
                    "a peer speaks another runmesh gossip version; ignoring it: upgrade the older node"
                );
            } else {
                debug!(%peer, version = %info.protocol_version, "not a runmesh peer; ignored");
            }
            return;
        }
        let first_peer = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .all(|b| b.num_entries() == 0);
        for addr in info.listen_addrs.into_iter().take(IDENTIFY_ADDRS_MAX) {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
        if first_peer {
            // Ask the first peer for everyone else right away instead of at the next round.
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn dial_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || self.dialled.contains(&peer)
            || self.dialled.len() >= DIAL_PEERS_MAX
        {
            return;
        }
        self.dialled.insert(peer);
        let opts = DialOpts::peer_id(peer).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "dial of a discovered peer failed");
            self.dialled.remove(&peer);
        }
    }

    fn on_message(&mut self, message: gossipsub::Message) {
        let advert = match decode_advert(&message.data) {
            Ok(a) => a,
            Err(e) => {
                debug!(source = ?message.source, error = %e, "undecodable advert dropped");
                return;
            }
        };
        // Signed messages: `source` is the key that signed it. It must be the node the advert is for.
        let signer_matches = advert
            .peer_id
            .parse::<PeerId>()
            .ok()
            .is_some_and(|p| Some(p) == message.source);
        if !signer_matches {
            warn!(source = ?message.source, claimed = %advert.peer_id, "advert signed by another peer dropped");
            return;
        }
        let admitted = message
            .source
            .as_ref()
            .and_then(ed25519_key_of)
            .is_some_and(|key| (self.admitted)(advert.raft_node_id, &key));
        if !admitted {
            // Also what a joining node's first adverts meet until its admission is applied here.
            debug!(source = ?message.source, member = advert.raft_node_id, "advert from a key not admitted as that member dropped");
            return;
        }
        if self.mesh.observe(advert) == Observed::New {
            debug!(source = ?message.source, "first advert of a new member");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listen_addresses_cover_tcp_and_quic() {
        let a = listen_multiaddrs("127.0.0.1:7000".parse().unwrap(), true);
        assert_eq!(a[0].to_string(), "/ip4/127.0.0.1/tcp/7000");
        assert_eq!(a[1].to_string(), "/ip4/127.0.0.1/udp/7000/quic-v1");
        let b = listen_multiaddrs("[::1]:7000".parse().unwrap(), false);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].to_string(), "/ip6/::1/tcp/7000");
    }

    #[test]
    fn only_the_pinned_key_speaks_for_a_member() {
        use crate::identity::NodeIdentity;
        use runmesh_raft::joblog::Member;
        let a = NodeIdentity::generate().unwrap();
        let b = NodeIdentity::generate().unwrap();
        let peer_a = a.libp2p_keypair().unwrap().public().to_peer_id();
        assert_eq!(ed25519_key_of(&peer_a), Some(a.public_key_bytes()));
        let record = |id: &NodeIdentity| MemberInfo {
            pubkey: id.public_key_hex(),
            raft: "127.0.0.1:1".into(),
            http: String::new(),
            p2p: None,
            region: None,
        };
        let members = vec![Member {
            id: a.raft_node_id(),
            addr: record(&a).to_addr_string(),
            voter: true,
        }];
        assert!(admitted_in(
            &members,
            a.raft_node_id(),
            &a.public_key_bytes()
        ));
        // Another key naming member A, or not naming itself, or not admitted at all.
        assert!(!admitted_in(
            &members,
            a.raft_node_id(),
            &b.public_key_bytes()
        ));
        assert!(!admitted_in(
            &members,
            b.raft_node_id(),
            &b.public_key_bytes()
        ));
        // A record that pins another key than the one the id derives from.
        let swapped = vec![Member {
            id: a.raft_node_id(),
            addr: record(&b).to_addr_string(),
            voter: true,
        }];
        assert!(!admitted_in(
            &swapped,
            a.raft_node_id(),
            &a.public_key_bytes()
        ));
        assert!(!admitted_in(
            &swapped,
            a.raft_node_id(),
            &b.public_key_bytes()
        ));
        // A single node's bare founding entry: the id still has to derive from the key.
        let bare = vec![Member {
            id: a.raft_node_id(),
            addr: String::new(),
            voter: true,
        }];
        assert!(admitted_in(&bare, a.raft_node_id(), &a.public_key_bytes()));
        assert!(!admitted_in(&bare, a.raft_node_id(), &b.public_key_bytes()));
    }

    #[tokio::test]
    async fn bootstrap_takes_host_port_or_a_multiaddr() {
        let a = bootstrap_multiaddrs("127.0.0.1:7000").await.unwrap();
        assert_eq!(a[0].to_string(), "/ip4/127.0.0.1/tcp/7000");
        let m = bootstrap_multiaddrs("/ip4/10.0.0.1/udp/7000/quic-v1")
            .await
            .unwrap();
        assert_eq!(m[0].to_string(), "/ip4/10.0.0.1/udp/7000/quic-v1");
        let local = bootstrap_multiaddrs("localhost:7000").await.unwrap();
        assert!(!local.is_empty());
        for bad in ["", "nohost", ":7000", "h:port", "/not/a/multiaddr"] {
            assert!(bootstrap_multiaddrs(bad).await.is_err(), "{bad}");
        }
    }
}
