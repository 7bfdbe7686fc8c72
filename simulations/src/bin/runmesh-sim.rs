//! `runmesh-sim run --seed N [--jobs J] [--workers W] [--crash-per-mille P]`: runs the job-lifecycle
//! simulation and prints its report; exits non-zero when an invariant broke.

use runmesh_simulations::{run, Scenario};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("run") || args.iter().any(|a| a == "--help") {
        eprintln!("usage: runmesh-sim run [--seed N] [--jobs J] [--workers W] [--crash-per-mille P] [--cancel-per-mille P]");
        std::process::exit(if args.iter().any(|a| a == "--help") {
            0
        } else {
            2
        });
    }
    let mut s = Scenario::default();
    let mut it = args.iter().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        let Some(v) = value else {
            eprintln!("{flag} needs a number");
            std::process::exit(2);
        };
        match flag.as_str() {
            "--seed" => s.seed = v,
            "--jobs" => s.jobs = v as u32,
            "--workers" => s.workers = v as u32,
            "--crash-per-mille" => s.crash_per_mille = v,
            "--cancel-per-mille" => s.cancel_per_mille = v,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    let r = run(&s);
    println!(
        "seed={} submitted={} completed={} failed={} cancelled={} crashes={} requeues={} virtual_ms={}",
        s.seed, r.submitted, r.completed, r.failed, r.cancelled, r.crashes, r.requeues, r.virtual_ms
    );
    for v in &r.violations {
        println!("VIOLATION {v} (replay: runmesh-sim run --seed {})", s.seed);
    }
    println!("trace_hash={:016x}", r.trace_hash);
    if !r.violations.is_empty() {
        std::process::exit(1);
    }
}
