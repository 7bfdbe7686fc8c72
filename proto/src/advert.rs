//! Capacity adverts: what each node gossips about itself about once a second (GPUs, memory, slots,
//! load, the apps it serves, where to reach it), and the liveness the cluster view derives from them.
//!
//! The wire form is one version byte followed by the bincode encoding ([`encode_advert`]); a
//! decoder refuses other versions, oversized messages and oversized lists, so a hostile or newer
//! peer cannot make a node allocate without bound or misread a layout it does not know.

use serde::{Deserialize, Serialize};

use crate::{codec, AppId, NodeId, ProtoError};

/// Version byte in front of every encoded advert.
pub const ADVERT_FORMAT_VERSION: u8 = 1;
/// Largest encoded advert accepted.
pub const ADVERT_MAX_BYTES: usize = 64 * 1024;
/// Most GPUs, apps or addresses in one advert.
pub const ADVERT_LIST_MAX: usize = 256;
/// Longest free-text field (names, regions, addresses) in one advert.
pub const ADVERT_TEXT_MAX: usize = 256;

/// One GPU as a node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAdvert {
    pub name: String,
    pub memory_total_mb: u64,
    pub memory_free_mb: u64,
    pub utilization_pct: u8,
}

/// An app a node serves, with what the scheduler needs to know about running it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedApp {
    pub app: AppId,
    /// GPU memory one instance needs, in MB (0: no GPU needed).
    pub gpu_memory_mb: u64,
    /// What loading the app costs before its first job, in ms (0: nothing to warm).
    pub warmup_ms: u64,
    /// Loaded on this node now (it ran a job recently), so a job skips the warm-up.
    pub warm: bool,
}

/// One node's capacity advert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityAdvert {
    /// The node's libp2p peer id (base58), which signs the gossip message carrying the advert.
    pub peer_id: String,
    /// The node's Raft id: what `JobCommand::Assign { worker }` names, and how the cluster view
    /// names the node.
    pub raft_node_id: NodeId,
    pub region: Option<String>,
    pub gpus: Vec<GpuAdvert>,
    pub memory_total_mb: u64,
    pub memory_free_mb: u64,
    /// Jobs the node runs at once.
    pub slots: u32,
    /// Jobs running on the node when the advert was made.
    pub running: u32,
    /// Jobs queued cluster-wide for apps this node serves, as the node saw its table.
    pub queued: u32,
    pub apps: Vec<ServedApp>,
    /// `host:port` of the fal HTTP API.
    pub api_addr: Option<String>,
    /// `host:port` of the Raft QUIC listener.
    pub raft_addr: Option<String>,
    /// `host:port` of the blob endpoint.
    pub blob_addr: Option<String>,
    /// libp2p listen addresses (multiaddrs).
    pub p2p_addrs: Vec<String>,
    /// When the advert was made, on the sender's clock (for display; liveness uses receive time).
    pub timestamp_ms: u64,
    /// Start time of the sending process: a restarted node's adverts supersede its old ones even
    /// though its sequence numbers start again.
    pub incarnation: u64,
    /// Increases with every advert of one incarnation.
    pub seq: u64,
}

impl CapacityAdvert {
    /// Order of adverts from one node: a later incarnation wins, then a higher sequence number.
    pub fn version(&self) -> (u64, u64) {
        (self.incarnation, self.seq)
    }

    /// The app entry, when the node serves `app`.
    pub fn serves(&self, app: &AppId) -> Option<&ServedApp> {
        self.apps.iter().find(|a| &a.app == app)
    }

    /// Free slots by the advert's own count.
    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.running)
    }

    fn check_bounds(&self) -> Result<(), ProtoError> {
        let too_long = |what: &str| ProtoError::Codec(format!("advert {what} too long"));
        if self.gpus.len() > ADVERT_LIST_MAX
            || self.apps.len() > ADVERT_LIST_MAX
            || self.p2p_addrs.len() > ADVERT_LIST_MAX
        {
            return Err(too_long("list"));
        }
        let texts = [
            Some(&self.peer_id),
            self.region.as_ref(),
            self.api_addr.as_ref(),
            self.raft_addr.as_ref(),
            self.blob_addr.as_ref(),
        ];
        let gpu_names = self.gpus.iter().map(|g| &g.name);
        if texts
            .into_iter()
            .flatten()
            .chain(gpu_names)
            .chain(self.p2p_addrs.iter())
            .any(|t| t.len() > ADVERT_TEXT_MAX)
        {
            return Err(too_long("text"));
        }
        Ok(())
    }
}

/// Encodes an advert for the wire: version byte, then bincode.
pub fn encode_advert(advert: &CapacityAdvert) -> Result<Vec<u8>, ProtoError> {
    advert.check_bounds()?;
    let body = codec::encode(advert)?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(ADVERT_FORMAT_VERSION);
    out.extend_from_slice(&body);
    if out.len() > ADVERT_MAX_BYTES {
        return Err(ProtoError::Codec(format!(
            "advert of {} bytes is over {ADVERT_MAX_BYTES}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes an advert from the wire; refuses unknown versions and anything over the bounds.
pub fn decode_advert(bytes: &[u8]) -> Result<CapacityAdvert, ProtoError> {
    if bytes.len() > ADVERT_MAX_BYTES {
        return Err(ProtoError::Codec(format!(
            "advert of {} bytes is over {ADVERT_MAX_BYTES}",
            bytes.len()
        )));
    }
    let Some((&version, body)) = bytes.split_first() else {
        return Err(ProtoError::Codec("empty advert".into()));
    };
    if version != ADVERT_FORMAT_VERSION {
        return Err(ProtoError::Codec(format!(
            "advert format version {version}, expected {ADVERT_FORMAT_VERSION}"
        )));
    }
    let advert: CapacityAdvert = codec::decode(body)?;
    advert.check_bounds()?;
    Ok(advert)
}

/// A member's liveness as the cluster view judges it from the adverts it hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Heard from recently.
    Up,
    /// Silent for a while: no new work goes there.
    Suspect,
    /// Silent long enough to be considered gone.
    Down,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}

/// A member of the cluster view: its latest advert and how alive it looks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub advert: CapacityAdvert,
    pub liveness: Liveness,
    /// Time since the last advert arrived, on the observer's clock (0 for the observer itself).
    pub silent_ms: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn advert() -> CapacityAdvert {
        CapacityAdvert {
            peer_id: "12D3KooWtest".into(),
            raft_node_id: 42,
            region: Some("eu".into()),
            gpus: vec![GpuAdvert {
                name: "H100".into(),
                memory_total_mb: 81_920,
                memory_free_mb: 60_000,
                utilization_pct: 30,
            }],
            memory_total_mb: 64_000,
            memory_free_mb: 32_000,
            slots: 2,
            running: 1,
            queued: 5,
            apps: vec![ServedApp {
                app: AppId::new("runmesh", "echo").unwrap(),
                gpu_memory_mb: 0,
                warmup_ms: 0,
                warm: true,
            }],
            api_addr: Some("127.0.0.1:8080".into()),
            raft_addr: Some("127.0.0.1:7001".into()),
            blob_addr: None,
            p2p_addrs: vec!["/ip4/127.0.0.1/tcp/7000".into()],
            timestamp_ms: 1_700_000_000_000,
            incarnation: 1_700_000_000_000,
            seq: 7,
        }
    }

    #[test]
    fn adverts_round_trip_and_bad_input_is_refused() {
        let a = advert();
        let bytes = encode_advert(&a).unwrap();
        assert_eq!(bytes[0], ADVERT_FORMAT_VERSION);
        assert_eq!(decode_advert(&bytes).unwrap(), a);
        assert!(a.serves(&AppId::new("runmesh", "echo").unwrap()).is_some());
        assert_eq!(a.free_slots(), 1);

        let mut newer = bytes.clone();
        newer[0] = ADVERT_FORMAT_VERSION + 1;
        assert!(decode_advert(&newer).is_err());
        assert!(decode_advert(&[]).is_err());
        assert!(decode_advert(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_advert(&vec![ADVERT_FORMAT_VERSION; ADVERT_MAX_BYTES + 1]).is_err());
        let mut garbage = vec![ADVERT_FORMAT_VERSION];
        garbage.extend_from_slice(&[0xff; 40]);
        assert!(decode_advert(&garbage).is_err());
    }

    #[test]
    fn oversized_fields_are_refused_both_ways() {
        let mut a = advert();
        a.region = Some("x".repeat(ADVERT_TEXT_MAX + 1));
        assert!(encode_advert(&a).is_err());
        let mut b = advert();
        b.gpus = vec![b.gpus[0].clone(); ADVERT_LIST_MAX + 1];
        assert!(encode_advert(&b).is_err());
        // A peer that skips the check on its side is still refused on ours.
        let mut raw = vec![ADVERT_FORMAT_VERSION];
        raw.extend(codec::encode(&a).unwrap());
        assert!(decode_advert(&raw).is_err());
    }

    #[test]
    fn a_later_incarnation_supersedes_higher_sequence_numbers() {
        let a = advert();
        let mut restarted = advert();
        restarted.incarnation += 1;
        restarted.seq = 0;
        assert!(restarted.version() > a.version());
        assert_eq!(Liveness::Suspect.as_str(), "suspect");
        assert_eq!(serde_json::to_string(&Liveness::Down).unwrap(), "\"down\"");
    }
}
