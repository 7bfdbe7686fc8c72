//! Scenario files: the cluster, the network, the workload and the faults of one simulated run.
//! See docs/SIMULATION.md for the format; `simulations/scenarios/*.toml` are examples.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::lifecycle::Rng;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The seed used when `--seed` is not given.
    #[serde(default = "one")]
    pub seed: u64,
    /// Virtual seconds of workload and faults.
    pub duration_s: f64,
    /// After `duration_s` every fault is healed and arrivals stop; each acknowledged job must then
    /// reach a terminal state within this many virtual seconds.
    #[serde(default = "default_drain")]
    pub drain_s: f64,
    #[serde(default)]
    pub cluster: ClusterCfg,
    pub nodes: Vec<NodeGroup>,
    #[serde(default)]
    pub network: NetworkCfg,
    #[serde(default)]
    pub workload: Vec<Workload>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub random_faults: RandomFaults,
}

fn one() -> u64 {
    1
}
fn default_drain() -> f64 {
    60.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterCfg {
    /// Raft voters the membership policy keeps (the rest are learners).
    pub voters: usize,
    /// Worker lease; renewed every third of it.
    pub lease_ms: u64,
    /// Capacity adverts (gossip) interval.
    pub advert_every_ms: u64,
    /// Leader's dispatch/tick/membership round interval.
    pub leader_round_ms: u64,
    /// How long a write may look for a leader before the caller gets an error.
    pub write_timeout_ms: u64,
    /// Raft snapshot (and log purge) every this many entries.
    pub snapshot_every_entries: u64,
    /// openraft timers; the defaults are a mesh node's (`RaftTiming` in node/src/config.rs:
    /// 300 ms heartbeat, elections 700..1400 ms). openraft also uses the heartbeat interval as the
    /// AppendEntries timeout, so a peer further than that round trip never catches up.
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A follower that refuses a shorter-log candidate after the leader lease campaigns at once
    /// (`runmesh_raft::election`), as nodes do by default.
    pub eager_campaign: bool,
    /// A voter campaigns only once a majority agrees no leader is heard
    /// (`runmesh_raft::pre_vote`); on by default, as in the node; `false` is openraft's own timer.
    pub pre_vote: bool,
    /// openraft's timeout for one snapshot chunk (a mesh node's: ten heartbeats); a snapshot to
    /// a peer further than that round trip restarts forever.
    pub install_snapshot_timeout_ms: u64,
    /// Group commit in each node's proposer (the node's `JobLog` defaults): most commands per
    /// Raft entry, and entries in flight before later writes wait and share the next one.
    pub batch_max: usize,
    pub batches_in_flight_max: usize,
    /// How the cluster comes up: `join` (node 1 alone, every other node admitted as a learner
    /// one membership change at a time as the leader hears of it, the node's join path; voters
    /// are promoted by the membership policy; O(N²) membership bytes for N nodes) or `formed`
    /// (nodes 1..=`voters` vote from the start and every other node enters as a learner in one
    /// membership change: a deployed mesh, for runs about something other than joining).
    pub bootstrap: Bootstrap,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bootstrap {
    #[default]
    Join,
    Formed,
}

impl Default for ClusterCfg {
    fn default() -> Self {
        Self {
            voters: 3,
            lease_ms: 3_000,
            advert_every_ms: 1_000,
            leader_round_ms: 100,
            write_timeout_ms: 10_000,
            snapshot_every_entries: 2_000,
            heartbeat_ms: 300,
            election_timeout_min_ms: 700,
            election_timeout_max_ms: 1400,
            eager_campaign: true,
            pre_vote: true,
            install_snapshot_timeout_ms: 3000,
            batch_max: 512,
            batches_in_flight_max: 4,
            bootstrap: Bootstrap::Join,
        }
    }
}

/// `count` nodes alike.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroup {
    #[serde(default = "one_usize")]
    pub count: usize,
    pub region: String,
    /// GPUs as `NAME:MEMORY_GB` (e.g. `"H100:80"`).
    #[serde(default)]
    pub gpus: Vec<String>,
    #[serde(default = "four")]
    pub slots: u32,
    /// Apps the nodes serve (`owner/alias`); empty: every app of the workload.
    #[serde(default)]
    pub apps: Vec<String>,
}

fn one_usize() -> usize {
    1
}
fn four() -> u32 {
    4
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkCfg {
    /// One-way latency between nodes of one region.
    pub latency_ms: f64,
    pub jitter_ms: f64,
    /// Probability that a message is lost (a lost RPC fails after `rpc_timeout_ms`).
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back (`reorder_delay_ms` more), so later ones overtake it.
    pub reorder: f64,
    pub reorder_delay_ms: f64,
    pub rpc_timeout_ms: f64,
    /// Latency between regions; pairs not listed use `inter_region_latency_ms`.
    pub links: Vec<Link>,
    pub inter_region_latency_ms: f64,
}

impl Default for NetworkCfg {
    fn default() -> Self {
        Self {
            latency_ms: 1.0,
            jitter_ms: 0.5,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay_ms: 50.0,
            rpc_timeout_ms: 1_000.0,
            links: Vec::new(),
            inter_region_latency_ms: 40.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Two region names.
    pub between: [String; 2],
    pub latency_ms: f64,
    #[serde(default)]
    pub jitter_ms: f64,
    /// Loss on this link, on top of the global loss.
    #[serde(default)]
    pub loss: f64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Exponential gaps (a Poisson process).
    #[default]
    Poisson,
    /// Evenly spaced.
    Uniform,
    /// `burst_size` jobs at once, bursts `1/rate_per_s * burst_size` apart on average.
    Burst,
}

/// Jobs of one model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub model: String,
    pub rate_per_s: f64,
    #[serde(default)]
    pub arrival: Arrival,
    #[serde(default = "ten")]
    pub burst_size: u32,
    /// Job run time, uniform in [min, max] ms.
    #[serde(default = "default_dur_min")]
    pub duration_min_ms: u64,
    #[serde(default = "default_dur_max")]
    pub duration_max_ms: u64,
    /// Share of submissions that are sync (the client waits on the result) rather than queue.
    #[serde(default)]
    pub sync_fraction: f64,
    /// Share of jobs their client cancels, at a random moment within `cancel_within_ms`.
    #[serde(default)]
    pub cancel_fraction: f64,
    #[serde(default = "default_cancel_within")]
    pub cancel_within_ms: u64,
    /// Share of runs that end with an app error.
    #[serde(default)]
    pub fail_fraction: f64,
    /// Share of jobs submitted with `X-Fal-No-Retry`.
    #[serde(default)]
    pub no_retry_fraction: f64,
    /// GPU memory the app needs per instance (0: none).
    #[serde(default)]
    pub gpu_memory_mb: u64,
    /// First-run cost on a node.
    #[serde(default)]
    pub warmup_ms: u64,
    /// Arrivals only within [start_s, stop_s) (default: the whole duration).
    #[serde(default)]
    pub start_s: f64,
    #[serde(default)]
    pub stop_s: Option<f64>,
}

fn ten() -> u32 {
    10
}
fn default_dur_min() -> u64 {
    100
}
fn default_dur_max() -> u64 {
    2_000
}
fn default_cancel_within() -> u64 {
    3_000
}

// No `deny_unknown_fields` here or on `Fault`: serde does not support it with `flatten`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Stop a node (its memory is lost, its disk kept); restart it after `for_s` (absent: at
    /// `duration_s`, when every fault heals).
    Crash { node: u64 },
    /// Crash whichever node leads at `at_s`.
    KillLeader,
    /// Crash every node of the region whichever node leads at `at_s` is in (a lost region).
    KillLeaderRegion,
    /// Cut the network between groups. A group lists region names and/or node ids ("n3" or "3");
    /// nodes in no group form one more group.
    Partition { groups: Vec<Vec<String>> },
    /// Freeze a node: its loops stop and its messages wait (a long GC pause, SIGSTOP).
    Pause { node: u64 },
    /// A node's jobs take `factor` times longer.
    Slow { node: u64, factor: f64 },
    /// A node's clock runs `skew_ms` ahead (negative: behind).
    Skew { node: u64, skew_ms: i64 },
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Fault {
    pub at_s: f64,
    /// How long until healed; absent: until the end of `duration_s`.
    #[serde(default)]
    pub for_s: Option<f64>,
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// What `--random-faults` draws.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomFaults {
    /// Faults per virtual minute.
    pub per_minute: f64,
    pub min_for_s: f64,
    pub max_for_s: f64,
}

impl Default for RandomFaults {
    fn default() -> Self {
        Self {
            per_minute: 3.0,
            min_for_s: 2.0,
            max_for_s: 20.0,
        }
    }
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn node_count(&self) -> usize {
        self.nodes.iter().map(|g| g.count).sum()
    }

    /// Per node id (1-based), its group.
    pub fn node_groups(&self) -> Vec<&NodeGroup> {
        self.nodes
            .iter()
            .flat_map(|g| std::iter::repeat_n(g, g.count))
            .collect()
    }

    fn validate(&self) -> Result<(), String> {
        let n = self.node_count();
        if n == 0 {
            return Err("no nodes".into());
        }
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return Err("duration_s must be positive".into());
        }
        for w in &self.workload {
            runmesh_proto::ModelId::parse(&w.model)
                .map_err(|e| format!("workload model {}: {e}", w.model))?;
            if w.duration_min_ms > w.duration_max_ms {
                return Err(format!(
                    "workload {}: duration_min_ms > duration_max_ms",
                    w.model
                ));
            }
            if w.rate_per_s.is_nan() || w.rate_per_s < 0.0 {
                return Err(format!("workload {}: rate_per_s", w.model));
            }
        }
        for f in &self.faults {
            let node = match &f.kind {
                FaultKind::Crash { node }
                | FaultKind::Pause { node }
                | FaultKind::Slow { node, .. }
                | FaultKind::Skew { node, .. } => Some(*node),
                _ => None,
            };
            if let Some(node) = node {
                if node == 0 || node as usize > n {
                    return Err(format!(
                        "fault at {}s names node {node}; nodes are 1..={n}",
                        f.at_s
                    ));
                }
            }
        }
        Ok(())
    }

    /// Faults drawn from the seed: spread over the first 80% of the run, each healed before the end.
    pub fn draw_random_faults(&self, seed: u64) -> Vec<Fault> {
        let mut rng = Rng::new(seed ^ 0x5eed_fa17_0000_0000);
        let n_nodes = self.node_count() as u64;
        let count = ((self.duration_s / 60.0) * self.random_faults.per_minute).round() as u64;
        let regions: Vec<String> = self
            .nodes
            .iter()
            .map(|g| g.region.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for _ in 0..count.max(1) {
            let at_s = (self.duration_s * 0.8 * rng.unit() * 10.0).round() / 10.0;
            let span = self.random_faults.max_for_s - self.random_faults.min_for_s;
            let for_s =
                ((self.random_faults.min_for_s + span.max(0.0) * rng.unit()) * 10.0).round() / 10.0;
            let for_s = for_s.min(self.duration_s - at_s).max(0.1);
            let node = 1 + rng.below(n_nodes);
            let kind = match rng.below(6) {
                0 => FaultKind::Crash { node },
                1 => FaultKind::KillLeader,
                2 => {
                    if regions.len() > 1 && rng.chance(500) {
                        let r = &regions[rng.below(regions.len() as u64) as usize];
                        FaultKind::Partition {
                            groups: vec![vec![r.clone()]],
                        }
                    } else {
                        let k = 1 + rng.below((n_nodes / 2).max(1));
                        let mut side: Vec<String> = Vec::new();
                        for _ in 0..k {
                            let id = format!("n{}", 1 + rng.below(n_nodes));
                            if !side.contains(&id) {
                                side.push(id);
                            }
                        }
                        FaultKind::Partition { groups: vec![side] }
                    }
                }
                3 => FaultKind::Pause { node },
                4 => FaultKind::Slow {
                    node,
                    factor: 2.0 + (rng.below(80) as f64) / 10.0,
                },
                _ => FaultKind::Skew {
                    node,
                    skew_ms: rng.below(10_000) as i64 - 5_000,
                },
            };
            out.push(Fault {
                at_s,
                for_s: Some(for_s),
                kind,
            });
        }
        out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        out
    }

    /// Resolves a partition's groups to a group index per node id (nodes in no group get the next
    /// index).
    pub fn partition_sides(&self, groups: &[Vec<String>]) -> BTreeMap<u64, usize> {
        let regions: Vec<&str> = self
            .node_groups()
            .iter()
            .map(|g| g.region.as_str())
            .collect();
        let mut side = BTreeMap::new();
        for (id0, region) in regions.iter().enumerate() {
            let id = id0 as u64 + 1;
            let found = groups.iter().position(|g| {
                g.iter().any(|m| {
                    m == region || m.strip_prefix('n').unwrap_or(m).parse::<u64>().ok() == Some(id)
                })
            });
            side.insert(id, found.unwrap_or(groups.len()));
        }
        side
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap();
                n += 1;
            }
        }
        assert!(n >= 5, "{n} scenarios");
    }

    #[test]
    fn partition_groups_name_regions_and_nodes() {
        let s = Scenario::parse(
            r#"
name = "t"
duration_s = 1
[[nodes]]
count = 2
region = "a"
[[nodes]]
count = 2
region = "b"
"#,
        )
        .unwrap();
        let sides = s.partition_sides(&[vec!["a".into()], vec!["n4".into()]]);
        assert_eq!(
            sides.values().copied().collect::<Vec<_>>(),
            vec![0, 0, 2, 1]
        );
    }
}
