//! `runmesh-sim`: runs chaos scenarios on the simulated cluster.
//!
//! ```text
//! runmesh-sim run SCENARIO [--seed N] [--random-faults] [--eager-campaign BOOL] [--pre-vote BOOL] [--out DIR]
//! runmesh-sim sweep SCENARIO --seeds A..B [--random-faults] [--eager-campaign BOOL] [--pre-vote BOOL]
//! runmesh-sim bench [--nodes 5,50,200] [--virtual-s S]
//! runmesh-sim lifecycle [--seed N] ...     (the first, single-table simulator)
//! ```
//! `run` prints a summary, every broken invariant with the command that replays it, and ends with
//! `trace_hash=<hex>`; it exits 1 when an invariant broke. `sweep` exits 1 when any seed broke one.

use std::path::PathBuf;
use std::process::ExitCode;

use runmesh_simulations::scenario::Scenario;
use runmesh_simulations::world::{run, Options, RunOutcome};
use runmesh_simulations::{report, LifecycleScenario};

const USAGE: &str = "usage:
  runmesh-sim run SCENARIO [--seed N] [--random-faults] [--eager-campaign BOOL] [--pre-vote BOOL] [--out DIR]
  runmesh-sim sweep SCENARIO --seeds A..B [--random-faults] [--eager-campaign BOOL] [--pre-vote BOOL]
  runmesh-sim bench [--nodes 5,50,200] [--virtual-s S] [--placement-nodes N] [--placement-jobs J]
  runmesh-sim lifecycle [--seed N] [--jobs J] [--workers W] [--crash-per-mille P] [--cancel-per-mille P]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let r = match args[0].as_str() {
        "run" => cmd_run(&args[1..]),
        "sweep" => cmd_sweep(&args[1..]),
        "bench" => cmd_bench(&args[1..]),
        "lifecycle" => cmd_lifecycle(&args[1..]),
        other => Err(format!("unknown command {other}\n{USAGE}")),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runmesh-sim: {e}");
            ExitCode::from(2)
        }
    }
}

struct Flags {
    positional: Vec<String>,
    seed: Option<u64>,
    seeds: Option<(u64, u64)>,
    random_faults: bool,
    /// Overrides the scenario's `cluster.eager_campaign`, to compare elections with and without.
    eager_campaign: Option<bool>,
    /// Overrides the scenario's `cluster.pre_vote`.
    pre_vote: Option<bool>,
    out: Option<PathBuf>,
    nodes: Vec<usize>,
    virtual_s: Option<f64>,
    placement_nodes: Option<usize>,
    placement_jobs: Option<u64>,
}

fn parse(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags {
        positional: Vec::new(),
        seed: None,
        seeds: None,
        random_faults: false,
        eager_campaign: None,
        pre_vote: None,
        out: None,
        nodes: Vec::new(),
        virtual_s: None,
        placement_nodes: None,
        placement_jobs: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--seed" => {
                f.seed = Some(
                    value("--seed")?
                        .parse()
                        .map_err(|_| "--seed needs a number")?,
                )
            }
            "--seeds" => {
                let v = value("--seeds")?;
                let (a, b) = v.split_once("..").ok_or("--seeds takes A..B (inclusive)")?;
                let a: u64 = a.parse().map_err(|_| "--seeds: bad start")?;
                let b: u64 = b
                    .trim_start_matches('=')
                    .parse()
                    .map_err(|_| "--seeds: bad end")?;
                if b < a {
                    return Err("--seeds: end before start".into());
                }
                f.seeds = Some((a, b));
            }
            "--random-faults" => f.random_faults = true,
            "--eager-campaign" => {
                f.eager_campaign = Some(
                    value("--eager-campaign")?
                        .parse()
                        .map_err(|_| "--eager-campaign takes true or false")?,
                )
            }
            "--pre-vote" => {
                f.pre_vote = Some(
                    value("--pre-vote")?
                        .parse()
                        .map_err(|_| "--pre-vote takes true or false")?,
                )
            }
            "--out" => f.out = Some(PathBuf::from(value("--out")?)),
            "--nodes" => {
                f.nodes = value("--nodes")?
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse()
                            .map_err(|_| format!("--nodes: bad number {x}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--virtual-s" => {
                f.virtual_s = Some(
                    value("--virtual-s")?
                        .parse()
                        .map_err(|_| "--virtual-s needs a number")?,
                )
            }
            "--placement-nodes" => {
                f.placement_nodes = Some(
                    value("--placement-nodes")?
                        .parse()
                        .map_err(|_| "--placement-nodes needs a number")?,
                )
            }
            "--placement-jobs" => {
                f.placement_jobs = Some(
                    value("--placement-jobs")?
                        .parse()
                        .map_err(|_| "--placement-jobs needs a number")?,
                )
            }
            s if s.starts_with("--") => return Err(format!("unknown flag {s}")),
            s => f.positional.push(s.to_string()),
        }
    }
    Ok(f)
}

fn load(f: &Flags) -> Result<(Scenario, String), String> {
    let path = f
        .positional
        .first()
        .ok_or("which scenario? (a .toml file)")?;
    let mut sc = Scenario::load(std::path::Path::new(path))?;
    if let Some(eager) = f.eager_campaign {
        sc.cluster.eager_campaign = eager;
    }
    if let Some(pre_vote) = f.pre_vote {
        sc.cluster.pre_vote = pre_vote;
    }
    Ok((sc, path.clone()))
}

fn replay(path: &str, seed: u64, f: &Flags) -> String {
    format!(
        "cargo run -p runmesh-simulations --release --bin runmesh-sim -- run {path} --seed {seed}{}{}{}",
        if f.random_faults { " --random-faults" } else { "" },
        f.eager_campaign
            .map_or(String::new(), |e| format!(" --eager-campaign {e}")),
        f.pre_vote
            .map_or(String::new(), |p| format!(" --pre-vote {p}"))
    )
}

fn summary(o: &RunOutcome) -> String {
    let j = &o.figures["jobs"];
    let l = &o.figures["latency_ms"];
    format!(
        "scenario={} seed={} nodes={} virtual_s={:.1} wall_s={:.2} acked={} completed={} failed={} cancelled={} requeued={} p50_ms={} p99_ms={} leaders={} failover_ms={} heal_elections={} violations={}",
        o.scenario,
        o.seed,
        o.nodes,
        o.virtual_ms as f64 / 1000.0,
        o.wall_ms as f64 / 1000.0,
        j["acknowledged"],
        j["completed"],
        j["failed"],
        j["cancelled"],
        j["requeued"],
        l["p50"],
        l["p99"],
        o.figures["raft"]["elections_won"],
        o.figures["raft"]["failover_ms"],
        o.figures["raft"]["heal_elections"],
        o.violations_total
    )
}

fn cmd_run(args: &[String]) -> Result<ExitCode, String> {
    let f = parse(args)?;
    let (sc, path) = load(&f)?;
    let seed = f.seed.unwrap_or(sc.seed);
    let mut opts = Options::new(seed);
    opts.random_faults = f.random_faults;
    opts.keep_trace = f.out.is_some();
    let o = run(&sc, &opts);
    println!("{}", summary(&o));
    for v in &o.violations {
        println!(
            "VIOLATION {:?} at {:.3}s: {}",
            v.invariant,
            v.at_ms as f64 / 1000.0,
            v.detail
        );
    }
    if o.violations_total > 0 {
        println!("replay: {}", replay(&path, seed, &f));
    }
    if let Some(dir) = &f.out {
        report::write(dir, &o, &replay(&path, seed, &f))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        println!("report: {}", dir.join("index.html").display());
    }
    println!("trace_hash={:016x}", o.trace_hash);
    Ok(if o.violations_total > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn cmd_sweep(args: &[String]) -> Result<ExitCode, String> {
    let f = parse(args)?;
    let (sc, path) = load(&f)?;
    let (a, b) = f.seeds.ok_or("sweep needs --seeds A..B")?;
    let mut failing = Vec::new();
    let mut failovers: Vec<u64> = Vec::new();
    let mut heals: Vec<u64> = Vec::new();
    let wall = std::time::Instant::now();
    for seed in a..=b {
        let mut opts = Options::new(seed);
        opts.random_faults = f.random_faults;
        let o = run(&sc, &opts);
        eprintln!("{}", summary(&o));
        if let Some(v) = o.figures["raft"]["failover_ms"].as_array() {
            failovers.extend(v.iter().filter_map(|x| x.as_u64()));
        }
        if let Some(v) = o.figures["raft"]["heal_elections"].as_array() {
            heals.extend(v.iter().filter_map(|x| x.as_u64()));
        }
        if o.violations_total > 0 {
            failing.push(o);
        }
    }
    println!(
        "swept {} seeds of {} in {:.1}s: {} failing",
        b - a + 1,
        sc.name,
        wall.elapsed().as_secs_f64(),
        failing.len()
    );
    if !failovers.is_empty() {
        failovers.sort_unstable();
        let at = |p: f64| failovers[((failovers.len() - 1) as f64 * p).round() as usize];
        println!(
            "failover (kill leader to next leader, virtual ms) over {} kills: min={} median={} p90={} max={}",
            failovers.len(),
            failovers[0],
            at(0.5),
            at(0.9),
            failovers[failovers.len() - 1]
        );
    }
    if !heals.is_empty() {
        let mut counts = std::collections::BTreeMap::new();
        for h in &heals {
            *counts.entry(*h).or_insert(0u64) += 1;
        }
        let shown: Vec<String> = counts.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        println!(
            "leaders elected in the 10 s after a partition heals, over {} heals (elections:heals): {}",
            heals.len(),
            shown.join(" ")
        );
    }
    if !failing.is_empty() {
        println!(
            "{:<8} {:<24} {:<60} replay",
            "seed", "invariant", "first violation"
        );
        for o in &failing {
            let v = &o.violations[0];
            let mut detail = v.detail.clone();
            detail.truncate(60);
            println!(
                "{:<8} {:<24} {:<60} {}",
                o.seed,
                format!("{:?}", v.invariant),
                detail,
                replay(&path, o.seed, &f)
            );
        }
    }
    Ok(if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_bench(args: &[String]) -> Result<ExitCode, String> {
    let f = parse(args)?;
    let sizes = if f.nodes.is_empty() {
        vec![5, 50, 200]
    } else {
        f.nodes.clone()
    };
    let virtual_s = f.virtual_s.unwrap_or(600.0);
    println!(
        "{:>6} {:>10} {:>8} {:>12} {:>8} {:>10} {:>9} {:>12}",
        "nodes", "virtual_s", "wall_s", "sim_s/wall_s", "jobs", "msgs", "entries", "cmds/entry"
    );
    let mut failed = false;
    for n in sizes {
        let sc = report::bench_scenario(n, virtual_s);
        let o = run(&sc, &Options::new(1));
        let wall = o.wall_ms as f64 / 1000.0;
        println!(
            "{:>6} {:>10.0} {:>8.2} {:>12.1} {:>8} {:>10} {:>9} {:>12}",
            n,
            o.virtual_ms as f64 / 1000.0,
            wall,
            o.virtual_ms as f64 / 1000.0 / wall.max(1e-6),
            o.figures["jobs"]["acknowledged"],
            o.figures["network"]["sent"],
            o.figures["raft"]["entries_with_commands"],
            o.figures["raft"]["commands_per_entry"]
        );
        failed |= o.violations_total > 0;
    }
    // Scheduler throughput: a deep queue drained by the leader's dispatch rounds.
    let (p_nodes, p_jobs) = (
        f.placement_nodes.unwrap_or(20),
        f.placement_jobs.unwrap_or(10_000),
    );
    let o = run(
        &report::placement_scenario(p_nodes, p_jobs),
        &Options::new(1),
    );
    let j = &o.figures["jobs"];
    let placed = j["assigns"].as_u64().unwrap_or(0);
    let window_s = j["placement_window_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let wall = o.wall_ms as f64 / 1000.0;
    println!(
        "placements: nodes={p_nodes} jobs={} placed={placed} window_virtual_s={window_s:.2} placements_per_virtual_s={:.0} wall_s={wall:.2} placements_per_wall_s={:.0} commands_per_entry={} violations={}",
        j["acknowledged"],
        placed as f64 / window_s.max(1e-3),
        placed as f64 / wall.max(1e-6),
        o.figures["raft"]["commands_per_entry"],
        o.violations_total
    );
    failed |= o.violations_total > 0;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn cmd_lifecycle(args: &[String]) -> Result<ExitCode, String> {
    let mut s = LifecycleScenario::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--seed" => s.seed = v,
            "--jobs" => s.jobs = v as u32,
            "--workers" => s.workers = v as u32,
            "--crash-per-mille" => s.crash_per_mille = v,
            "--cancel-per-mille" => s.cancel_per_mille = v,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let r = runmesh_simulations::run(&s);
    println!(
        "seed={} submitted={} completed={} failed={} cancelled={} crashes={} requeues={} virtual_ms={}",
        s.seed, r.submitted, r.completed, r.failed, r.cancelled, r.crashes, r.requeues, r.virtual_ms
    );
    for v in &r.violations {
        println!(
            "VIOLATION {v} (replay: runmesh-sim lifecycle --seed {})",
            s.seed
        );
    }
    println!("trace_hash={:016x}", r.trace_hash);
    Ok(if r.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
