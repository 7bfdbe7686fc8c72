//! Where a queued job should run: a pure scoring function over a job and the candidate nodes.
//!
//! Hard requirements (a node failing one is not a candidate for the job):
//! - it serves the job's app;
//! - it has a free slot;
//! - when the app declares GPU memory and the node has GPUs, one of them has that much free. (A
//!   node with no GPU that serves such an app runs it on its CPU: it stays a candidate, ranked below
//!   every node whose GPU fits.)
//!
//! Preferences, strongest first, when the job carries no runner hint:
//! 1. the app is warm there (only counts for apps with a warm-up cost);
//! 2. the node is in the job's region (the region of the node that accepted it);
//! 3. a GPU that fits (versus the CPU fallback above);
//! 4. low load (running jobs per slot);
//! 5. more free GPU memory left after placing the job;
//! 6. a hash of (request, node), which spreads otherwise equal jobs evenly.
//!
//! A streaming job (`/stream`, realtime) runs on the node that accepted it when that node serves
//! the app, waiting for its slot: partial outputs reach the client in-process there.
//!
//! A job with `X-Fal-Runner-Hint` goes to the candidate that wins rendezvous hashing of (hint,
//! node): the same hint lands on the same node while that node is up and has room, and moves to the
//! next node in its own hash order (not a random one) when it is full or gone.
//!
//! No clock, no I/O, no libp2p: the simulator links this module as it is.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use runmesh_proto::advert::{CapacityAdvert, ServedApp};
use runmesh_proto::{AppId, JobSpec, JobState, NodeId, RequestId, SubmitMode};
use runmesh_raft::JobTable;

/// The scheduler's view of one queued job.
#[derive(Clone, Copy, Debug)]
pub struct JobAsk<'a> {
    /// Request id text: only the tie-breaking hash reads it.
    pub request_id: &'a str,
    pub app: &'a AppId,
    /// Region the job would rather run in.
    pub region: Option<&'a str>,
    /// `X-Fal-Runner-Hint`.
    pub runner_hint: Option<&'a str>,
    /// The node that must run the job when it serves the app: a streaming request's partial
    /// outputs travel in-process to the connection on the node that accepted it.
    pub stream_to: Option<NodeId>,
}

/// One node that may take work, as the assigning leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub region: Option<String>,
    pub slots: u32,
    /// Jobs running there: the job table's count (authoritative), plus what this round assigned.
    pub running: u32,
    /// Free memory per GPU in MB, less what this round reserved. Empty: no GPU.
    pub gpu_free_mb: Vec<u64>,
    pub apps: Vec<ServedApp>,
}

impl Candidate {
    /// From a node's advert, with `running` taken from the job table rather than the advert (which
    /// is up to a second old and would let a burst overfill a node).
    pub fn from_advert(advert: &CapacityAdvert, running: u32) -> Self {
        Self {
            node: advert.raft_node_id,
            region: advert.region.clone(),
            slots: advert.slots,
            running,
            gpu_free_mb: advert.gpus.iter().map(|g| g.memory_free_mb).collect(),
            apps: advert.apps.clone(),
        }
    }

    pub fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.running)
    }

    fn served(&self, app: &AppId) -> Option<&ServedApp> {
        self.apps.iter().find(|a| &a.app == app)
    }

    /// Running jobs per slot, in thousandths.
    fn load_permille(&self) -> u32 {
        if self.slots == 0 {
            return u32::MAX;
        }
        ((u64::from(self.running) * 1000) / u64::from(self.slots)) as u32
    }

    /// Index of the GPU a job needing `need_mb` would use: the one with the most free memory.
    fn best_gpu(&self, need_mb: u64) -> Option<usize> {
        self.gpu_free_mb
            .iter()
            .enumerate()
            .filter(|(_, free)| **free >= need_mb)
            .max_by_key(|(i, free)| (**free, Reverse(*i)))
            .map(|(i, _)| i)
    }
}

/// Why a node cannot take a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfit {
    NotServed,
    NoFreeSlot,
    NotEnoughGpuMemory,
}

/// How good a candidate is for a job; greater is better. Field order is the preference order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    pub warm: bool,
    pub in_region: bool,
    pub gpu_fits: bool,
    pub load: Reverse<u32>,
    pub gpu_headroom_mb: u64,
    pub tiebreak: u64,
}

/// Checks the hard requirements and scores the preferences of one candidate for one job.
pub fn evaluate(job: &JobAsk<'_>, cand: &Candidate) -> Result<Score, Unfit> {
    let Some(served) = cand.served(job.app) else {
        return Err(Unfit::NotServed);
    };
    if cand.free_slots() == 0 {
        return Err(Unfit::NoFreeSlot);
    }
    let need = served.gpu_memory_mb;
    let (gpu_fits, gpu_headroom_mb) = if need == 0 {
        (true, 0)
    } else if cand.gpu_free_mb.is_empty() {
        (false, 0)
    } else {
        match cand.best_gpu(need) {
            Some(i) => (true, cand.gpu_free_mb[i] - need),
            None => return Err(Unfit::NotEnoughGpuMemory),
        }
    };
    Ok(Score {
        warm: served.warm && served.warmup_ms > 0,
        in_region: job
            .region
            .is_some_and(|r| cand.region.as_deref() == Some(r)),
        gpu_fits,
        load: Reverse(cand.load_permille()),
        gpu_headroom_mb,
        tiebreak: mix(hash_str(job.request_id) ^ mix(cand.node)),
    })
}

/// The best candidate for a job (an index into `cands`), or `None` when no node can take it now.
pub fn choose(job: &JobAsk<'_>, cands: &[Candidate]) -> Option<usize> {
    // A stream waits for its accepting node when that node serves the app (its partials could not
    // reach the client from elsewhere); otherwise it runs anywhere and the client gets the output.
    let pinned = job.stream_to.filter(|n| {
        cands
            .iter()
            .any(|c| c.node == *n && c.served(job.app).is_some())
    });
    let eligible = cands
        .iter()
        .enumerate()
        .filter(|(_, c)| pinned.is_none_or(|n| c.node == n))
        .filter_map(|(i, c)| evaluate(job, c).ok().map(|s| (i, c, s)));
    match job.runner_hint {
        Some(hint) if !hint.is_empty() => {
            let h = hash_str(hint);
            eligible
                .max_by_key(|(_, c, _)| (rendezvous(h, c.node), Reverse(c.node)))
                .map(|(i, _, _)| i)
        }
        _ => eligible
            .max_by_key(|(_, c, s)| (*s, Reverse(c.node)))
            .map(|(i, _, _)| i),
    }
}

/// Books a job on a candidate: one slot, and its GPU memory on the GPU it would use.
pub fn reserve(cand: &mut Candidate, app: &AppId) {
    cand.running = cand.running.saturating_add(1);
    let need = cand.served(app).map_or(0, |a| a.gpu_memory_mb);
    if need > 0 {
        if let Some(i) = cand.best_gpu(need) {
            cand.gpu_free_mb[i] -= need;
        }
    }
}

/// Places jobs in the order given (the queue's run order), each on the best candidate left after
/// the ones before it were placed. Returns (key, node) pairs, at most `max`. A job no node can
/// take is skipped (it stays queued) and later jobs are still considered, since they may be for
/// other apps. Stops reading `jobs` once every slot is taken: a long queue is not walked when
/// only a few slots are free.
pub fn plan<'a, K>(
    jobs: impl IntoIterator<Item = (K, JobAsk<'a>)>,
    cands: &mut [Candidate],
    max: usize,
) -> Vec<(K, NodeId)> {
    let mut out = Vec::new();
    for (key, job) in jobs {
        if out.len() >= max || cands.iter().all(|c| c.free_slots() == 0) {
            break;
        }
        if let Some(i) = choose(&job, cands) {
            reserve(&mut cands[i], job.app);
            out.push((key, cands[i].node));
        }
    }
    out
}

/// Placements made but not in the table yet (their entries are being written), per node.
pub type Pending = BTreeMap<NodeId, u32>;

/// The nodes of `adverts` that are Raft members (`members`; empty: no filter), each with its
/// running count read from the table plus what `pending` says is on its way there.
pub fn candidates(
    table: &JobTable,
    adverts: &[CapacityAdvert],
    members: &BTreeSet<NodeId>,
    pending: &Pending,
) -> Vec<Candidate> {
    adverts
        .iter()
        // A node outside the Raft cluster cannot read the log, so it could never run the job.
        .filter(|a| members.is_empty() || members.contains(&a.raft_node_id))
        .map(|a| {
            let running = u32::try_from(table.running_count(a.raft_node_id))
                .unwrap_or(u32::MAX)
                .saturating_add(pending.get(&a.raft_node_id).copied().unwrap_or(0));
            Candidate::from_advert(a, running)
        })
        .collect()
}

impl<'a> JobAsk<'a> {
    pub fn of(spec: &'a JobSpec) -> Self {
        JobAsk {
            request_id: spec.request_id.as_str(),
            app: spec.app(),
            region: spec.accepted_region.as_deref(),
            runner_hint: spec.runner_hint.as_deref(),
            stream_to: (spec.mode == SubmitMode::Stream).then_some(spec.accepted_by),
        }
    }
}

/// One dispatch round on the leader: the queued jobs (first `scan_max` in run order) placed on the
/// [`candidates`]. Returns at most `max` (job, worker) pairs to propose as `Assign`.
pub fn plan_round(
    table: &JobTable,
    adverts: &[CapacityAdvert],
    members: &BTreeSet<NodeId>,
    pending: &Pending,
    scan_max: usize,
    max: usize,
) -> Vec<(RequestId, NodeId)> {
    if table.queued_total() == 0 || max == 0 {
        return Vec::new();
    }
    let mut cands = candidates(table, adverts, members, pending);
    if cands.iter().all(|c| c.free_slots() == 0) {
        return Vec::new();
    }
    let queued = table
        .queued_in_order()
        .take(scan_max)
        .filter(|r| r.state == JobState::Queued)
        .map(|r| (&r.spec.request_id, JobAsk::of(&r.spec)));
    plan(queued, &mut cands, max)
        .into_iter()
        .map(|(id, node)| (id.clone(), node))
        .collect()
}

/// Placement at submit (`runmesh_raft::placement`): for each new job, in order, the node to start
/// it on as its submit is written, or `None` to queue it. A job whose app already has jobs queued
/// (or one queued earlier in this batch) waits behind them, since the dispatcher takes the queue in
/// run order; so does a job no node has a free slot for.
pub fn place_new(
    table: &JobTable,
    adverts: &[CapacityAdvert],
    members: &BTreeSet<NodeId>,
    pending: &Pending,
    specs: &[&JobSpec],
) -> Vec<Option<NodeId>> {
    let mut cands = candidates(table, adverts, members, pending);
    let mut queued_now: Vec<&AppId> = Vec::new();
    specs
        .iter()
        .map(|spec| {
            let app = spec.app();
            if table.queue_len(app) > 0 || queued_now.contains(&app) {
                return None;
            }
            match choose(&JobAsk::of(spec), &cands) {
                Some(i) => {
                    reserve(&mut cands[i], app);
                    Some(cands[i].node)
                }
                None => {
                    queued_now.push(app);
                    None
                }
            }
        })
        .collect()
}

/// Rendezvous (highest random weight) score of a node for a hint.
fn rendezvous(hint_hash: u64, node: NodeId) -> u64 {
    mix(hint_hash ^ mix(node))
}

/// FNV-1a: stable across builds and platforms (std's hasher makes no such promise), which keeps
/// a hint's placement the same whichever node leads.
fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: spreads nearby inputs (node ids 1, 2, 3) over the whole range.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn app(alias: &str) -> AppId {
        AppId::new("runmesh", alias).unwrap()
    }

    fn served(alias: &str) -> ServedApp {
        ServedApp {
            app: app(alias),
            gpu_memory_mb: 0,
            warmup_ms: 0,
            warm: false,
        }
    }

    fn node(id: NodeId) -> Candidate {
        Candidate {
            node: id,
            region: None,
            slots: 4,
            running: 0,
            gpu_free_mb: Vec::new(),
            apps: vec![served("echo"), served("sleep")],
        }
    }

    fn ask<'a>(id: &'a str, app: &'a AppId) -> JobAsk<'a> {
        JobAsk {
            request_id: id,
            app,
            region: None,
            runner_hint: None,
            stream_to: None,
        }
    }

    fn pick(job: &JobAsk<'_>, cands: &[Candidate]) -> Option<NodeId> {
        choose(job, cands).map(|i| cands[i].node)
    }

    #[test]
    fn only_nodes_serving_the_app_are_candidates() {
        let echo = app("echo");
        let other = app("other");
        let mut a = node(1);
        a.apps = vec![served("sleep")];
        let b = node(2);
        assert_eq!(evaluate(&ask("r", &echo), &a), Err(Unfit::NotServed));
        assert_eq!(pick(&ask("r", &echo), &[a.clone(), b]), Some(2));
        assert_eq!(pick(&ask("r", &other), &[a]), None);
    }

    #[test]
    fn a_full_node_is_not_a_candidate() {
        let echo = app("echo");
        let mut full = node(1);
        full.running = 4;
        let mut busy = node(2);
        busy.running = 3;
        assert_eq!(evaluate(&ask("r", &echo), &full), Err(Unfit::NoFreeSlot));
        assert_eq!(pick(&ask("r", &echo), &[full.clone(), busy]), Some(2));
        assert_eq!(pick(&ask("r", &echo), &[full]), None);
    }

    #[test]
    fn a_warm_node_wins_only_for_apps_that_need_warming() {
        let llm = app("llm");
        let mut cold = node(1);
        let mut warm = node(2);
        warm.running = 3; // busier, yet warm wins
        let entry = |warm_now| ServedApp {
            app: app("llm"),
            gpu_memory_mb: 0,
            warmup_ms: 5_000,
            warm: warm_now,
        };
        cold.apps = vec![entry(false)];
        warm.apps = vec![entry(true)];
        assert_eq!(
            pick(&ask("r", &llm), &[cold.clone(), warm.clone()]),
            Some(2)
        );
        // Nothing to warm: "warm" means nothing and load decides.
        cold.apps[0].warmup_ms = 0;
        warm.apps[0].warmup_ms = 0;
        assert_eq!(pick(&ask("r", &llm), &[cold, warm]), Some(1));
    }

    #[test]
    fn declared_gpu_memory_is_a_hard_requirement_on_gpu_nodes() {
        let big = app("big");
        let needs = |mb| ServedApp {
            app: app("big"),
            gpu_memory_mb: mb,
            warmup_ms: 0,
            warm: false,
        };
        let mut small_gpu = node(1);
        small_gpu.gpu_free_mb = vec![8_000, 8_000];
        small_gpu.apps = vec![needs(20_000)];
        let mut h100 = node(2);
        h100.gpu_free_mb = vec![10_000, 70_000];
        h100.apps = vec![needs(20_000)];
        h100.running = 3;
        let mut cpu_only = node(3);
        cpu_only.apps = vec![needs(20_000)];
        let job = ask("r", &big);
        assert_eq!(evaluate(&job, &small_gpu), Err(Unfit::NotEnoughGpuMemory));
        let s = evaluate(&job, &h100).unwrap();
        assert!(s.gpu_fits);
        assert_eq!(s.gpu_headroom_mb, 50_000);
        // The fitting GPU beats the idle CPU-only node; the CPU node is the fallback.
        let all = [small_gpu.clone(), h100.clone(), cpu_only.clone()];
        assert_eq!(pick(&job, &all), Some(2));
        assert_eq!(pick(&job, &[small_gpu, cpu_only]), Some(3));
        // Memory is booked per GPU: three jobs take 60 of the 70 GB, a fourth no longer fits.
        let mut one = [h100];
        one[0].running = 0;
        let jobs = [
            ask("a", &big),
            ask("b", &big),
            ask("c", &big),
            ask("d", &big),
        ];
        let placed = plan(jobs.iter().copied().enumerate(), &mut one, 10);
        assert_eq!(placed.len(), 3);
        assert_eq!(one[0].gpu_free_mb, vec![10_000, 10_000]);
        // Among GPU nodes that fit, more headroom wins when load is equal.
        let mut roomy = node(4);
        roomy.gpu_free_mb = vec![80_000];
        roomy.apps = vec![needs(20_000)];
        let mut tight = node(5);
        tight.gpu_free_mb = vec![24_000];
        tight.apps = vec![needs(20_000)];
        assert_eq!(pick(&job, &[tight, roomy]), Some(4));
    }

    #[test]
    fn low_load_wins() {
        let echo = app("echo");
        let mut a = node(1);
        a.running = 2;
        let mut b = node(2);
        b.slots = 16;
        b.running = 2; // 2/16 beats 2/4
        let c = {
            let mut c = node(3);
            c.running = 3;
            c
        };
        assert_eq!(pick(&ask("r", &echo), &[a, b, c]), Some(2));
    }

    #[test]
    fn the_requested_region_wins_over_load() {
        let echo = app("echo");
        let mut us = node(1);
        us.region = Some("us".into());
        let mut eu = node(2);
        eu.region = Some("eu".into());
        eu.running = 3;
        let mut job = ask("r", &echo);
        job.region = Some("eu");
        assert_eq!(pick(&job, &[us.clone(), eu.clone()]), Some(2));
        job.region = None;
        assert_eq!(pick(&job, &[us.clone(), eu.clone()]), Some(1));
        // In-region but full: the job goes elsewhere rather than wait.
        eu.running = 4;
        job.region = Some("eu");
        assert_eq!(pick(&job, &[us, eu]), Some(1));
    }

    #[test]
    fn a_runner_hint_sticks_to_one_node_while_it_has_room() {
        let echo = app("echo");
        let cands: Vec<Candidate> = (1..=5).map(node).collect();
        let mut job = ask("r1", &echo);
        job.runner_hint = Some("lora:cats");
        let first = pick(&job, &cands).unwrap();
        // Same hint, other requests, other load elsewhere: same node.
        for (i, rid) in ["r2", "r3", "r4"].iter().enumerate() {
            let mut cands = cands.clone();
            for c in cands.iter_mut().filter(|c| c.node != first) {
                c.running = (i as u32) % 4;
            }
            let mut j = ask(rid, &echo);
            j.runner_hint = Some("lora:cats");
            assert_eq!(pick(&j, &cands), Some(first));
        }
        // Hints spread: several hints do not all land on one node.
        let spread: std::collections::BTreeSet<NodeId> = (0..40)
            .map(|k| {
                let h = format!("hint-{k}");
                let mut j = ask("r", &echo);
                j.runner_hint = Some(&h);
                pick(&j, &cands).unwrap()
            })
            .collect();
        assert!(spread.len() >= 3, "{spread:?}");
        // Full (or gone): the hint moves, and always to the same second choice.
        let mut full = cands.clone();
        full.iter_mut()
            .filter(|c| c.node == first)
            .for_each(|c| c.running = c.slots);
        let second = pick(&job, &full).unwrap();
        assert_ne!(second, first);
        let without: Vec<Candidate> = cands.iter().filter(|c| c.node != first).cloned().collect();
        assert_eq!(pick(&job, &without), Some(second));
        // Room again: back to the first choice.
        assert_eq!(pick(&job, &cands), Some(first));
    }

    #[test]
    fn a_stream_runs_where_it_was_accepted_when_that_node_serves_the_app() {
        let echo = app("echo");
        let mut accepting = node(1);
        accepting.running = 3;
        let idle = node(2);
        let mut job = ask("r", &echo);
        job.stream_to = Some(1);
        assert_eq!(pick(&job, &[accepting.clone(), idle.clone()]), Some(1));
        // Full: the stream waits for its node rather than lose its partials.
        accepting.running = 4;
        assert_eq!(pick(&job, &[accepting.clone(), idle.clone()]), None);
        // The accepting node does not serve the app (or is gone): anywhere will do.
        accepting.apps = vec![served("sleep")];
        assert_eq!(pick(&job, &[accepting, idle.clone()]), Some(2));
        assert_eq!(pick(&job, &[idle]), Some(2));
    }

    #[test]
    fn ties_spread_over_equal_nodes() {
        let echo = app("echo");
        let cands: Vec<Candidate> = (1..=4).map(node).collect();
        let ids: Vec<String> = (0..40).map(|i| format!("req-{i}")).collect();
        let picked: std::collections::BTreeSet<NodeId> = ids
            .iter()
            .map(|id| pick(&ask(id, &echo), &cands).unwrap())
            .collect();
        assert!(picked.len() >= 3, "{picked:?}");
    }

    #[test]
    fn plan_fills_slots_in_queue_order_and_skips_what_cannot_run() {
        let echo = app("echo");
        let gpu = app("gpu-only");
        let mut a = node(1);
        a.slots = 1;
        let mut b = node(2);
        b.slots = 2;
        b.running = 1;
        let mut cands = vec![a, b];
        let jobs = [
            ask("j0", &echo),
            ask("j1", &gpu), // nobody serves it: stays queued
            ask("j2", &echo),
            ask("j3", &echo), // no slot left anywhere
        ];
        let placed = plan(jobs.iter().copied().enumerate(), &mut cands, 10);
        assert_eq!(placed.iter().map(|(j, _)| *j).collect::<Vec<_>>(), [0, 2]);
        let nodes: std::collections::BTreeSet<NodeId> = placed.iter().map(|(_, n)| *n).collect();
        assert_eq!(nodes.len(), 2, "one job per node: {placed:?}");
        assert!(cands.iter().all(|c| c.free_slots() == 0));
        // The round bound holds.
        let mut fresh = vec![node(1), node(2)];
        assert_eq!(
            plan(jobs.iter().copied().enumerate(), &mut fresh, 1).len(),
            1
        );
    }

    #[test]
    fn candidates_come_from_adverts_with_the_tables_running_count() {
        let a = CapacityAdvert {
            peer_id: "p".into(),
            raft_node_id: 9,
            region: Some("eu".into()),
            gpus: vec![runmesh_proto::advert::GpuAdvert {
                name: "H100".into(),
                memory_total_mb: 81_920,
                memory_free_mb: 80_000,
                utilization_pct: 0,
            }],
            memory_total_mb: 0,
            memory_free_mb: 0,
            slots: 2,
            running: 0,
            queued: 0,
            apps: vec![served("echo")],
            api_addr: None,
            raft_addr: None,
            blob_addr: None,
            p2p_addrs: Vec::new(),
            timestamp_ms: 0,
            incarnation: 0,
            seq: 0,
        };
        let c = Candidate::from_advert(&a, 2);
        assert_eq!((c.node, c.free_slots()), (9, 0));
        assert_eq!(c.gpu_free_mb, vec![80_000]);
        assert_eq!(c.region.as_deref(), Some("eu"));
    }
}
