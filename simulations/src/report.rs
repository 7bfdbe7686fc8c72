//! Reports for people: report.json, trace.jsonl, SVG plots and an index.html.

use std::io::Write;
use std::path::Path;

use std::fmt::Write as _;

use crate::scenario::Scenario;
use crate::world::{FaultWindow, RunOutcome};

const PALETTE: [&str; 12] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939",
];
/// Nodes drawn one line each in the queue plot; bigger clusters get min/median/max.
const NODES_DRAWN_MAX: usize = 12;

pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    /// Draw as a step function (values hold until the next point).
    pub step: bool,
}

fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A tick value with as many decimals as its step needs (0.5 → "0.5", 20 → "20", 15000 → "15k").
fn tick_label(v: f64, step: f64) -> String {
    if step >= 1000.0 && v.abs() >= 1000.0 {
        let k = v / 1000.0;
        return if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round() as i64)
        } else {
            format!("{k:.1}k")
        };
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart over virtual time (seconds) with the fault windows shaded.
/// A vertical marker on the time axis (faults healed, a new leader).
pub struct Mark {
    pub t_s: f64,
    pub label: String,
}

pub fn chart(
    title: &str,
    y_label: &str,
    series: &[Series],
    faults: &[FaultWindow],
    marks: &[Mark],
    x_max_s: f64,
) -> String {
    let (w, h) = (960.0, 320.0);
    let (ml, mr, mt, mb) = (70.0, 170.0, 36.0, 42.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let x_max = x_max_s.max(1.0);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.08;
    let x = |v: f64| ml + pw * (v / x_max).clamp(0.0, 1.0);
    let y = |v: f64| mt + ph * (1.0 - (v / y_max).clamp(0.0, 1.0));
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{ml}" y="20" font-size="14" font-weight="bold">{}</text>
"#,
        esc(title)
    );
    for (i, f) in faults.iter().enumerate() {
        let (x0, x1) = (x(f.start_ms as f64 / 1000.0), x(f.end_ms as f64 / 1000.0));
        let _ = write!(
            o,
            r##"<rect x="{x0:.1}" y="{mt}" width="{:.1}" height="{ph}" fill="#d62728" fill-opacity="0.12"><title>{}</title></rect>
<text x="{:.1}" y="{:.1}" fill="#a02020" font-size="9">{}</text>
"##,
            (x1 - x0).max(1.0),
            esc(&f.what),
            x0 + 2.0,
            mt + 10.0 + 10.0 * (i % 4) as f64,
            esc(&f.what)
        );
    }
    for (i, m) in marks.iter().enumerate() {
        let mx = x(m.t_s);
        let _ = write!(
            o,
            r##"<line x1="{mx:.1}" y1="{mt}" x2="{mx:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="4 3"/>
<text x="{:.1}" y="{:.1}" fill="#333" font-size="9" text-anchor="end">{}</text>
"##,
            mt + ph,
            mx - 2.0,
            mt + ph - 14.0 - 10.0 * (i % 3) as f64,
            esc(&m.label)
        );
    }
    let xs = nice_step(x_max, 10.0);
    // Ticks as multiples of the step (not a running sum, whose rounding shows in the labels).
    for k in 0..=((x_max / xs + 1e-9).floor() as u64) {
        let t = k as f64 * xs;
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{mt}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            x(t),
            mt + ph,
            mt + ph + 14.0,
            tick_label(t, xs)
        );
    }
    // Every plot counts something (jobs, node ids, ms): no fractional ticks.
    let ys = nice_step(y_max, 5.0).max(1.0);
    for k in 0..=((y_max / ys + 1e-9).floor() as u64) {
        let v = k as f64 * ys;
        let _ = writeln!(
            o,
            r##"<line x1="{ml}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#eee"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(v),
            ml + pw,
            ml - 4.0,
            y(v) + 4.0,
            tick_label(v, ys)
        );
    }
    let _ = write!(
        o,
        r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">virtual time (s)</text>
<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>
"##,
        ml + pw / 2.0,
        h - 6.0,
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let mut d = String::new();
        let mut prev: Option<(f64, f64)> = None;
        for &(px, py) in &s.points {
            match prev {
                None => {
                    let _ = write!(d, "M{:.1},{:.1}", x(px), y(py));
                }
                Some((_, qy)) if s.step => {
                    let _ = write!(d, " L{:.1},{:.1} L{:.1},{:.1}", x(px), y(qy), x(px), y(py));
                }
                Some(_) => {
                    let _ = write!(d, " L{:.1},{:.1}", x(px), y(py));
                }
            }
            prev = Some((px, py));
        }
        let _ = write!(
            o,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.5"/>
<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>
"#,
            s.color,
            ml + pw + 12.0,
            mt + 14.0 * i as f64,
            s.color,
            ml + pw + 26.0,
            mt + 9.0 + 14.0 * i as f64,
            esc(&s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64
}

/// The plots of a run, by file name.
pub fn plots(o: &RunOutcome) -> Vec<(&'static str, String)> {
    let x_max = o.virtual_ms as f64 / 1000.0;
    // Latency percentiles per 10 s bucket of the time clients saw the result.
    let bucket_ms = 10_000u64;
    let mut buckets: std::collections::BTreeMap<u64, Vec<u64>> = std::collections::BTreeMap::new();
    for (t, l, _) in &o.latencies {
        buckets.entry(t / bucket_ms).or_default().push(*l);
    }
    let mut lat = vec![
        ("p50", PALETTE[2], Vec::new()),
        ("p90", PALETTE[1], Vec::new()),
        ("p99", PALETTE[3], Vec::new()),
    ];
    for (b, v) in &mut buckets {
        v.sort_unstable();
        let t = (*b * bucket_ms + bucket_ms / 2) as f64 / 1000.0;
        lat[0].2.push((t, percentile(v, 0.5)));
        lat[1].2.push((t, percentile(v, 0.9)));
        lat[2].2.push((t, percentile(v, 0.99)));
    }
    let lat: Vec<Series> = lat
        .into_iter()
        .map(|(n, c, p)| Series {
            name: n.into(),
            color: c.into(),
            points: p,
            step: false,
        })
        .collect();
    // Queue depth per node (or min/median/max in big clusters).
    let mut queue = Vec::new();
    let n = o.nodes;
    let t = |s: &crate::world::Sample| s.t_ms as f64 / 1000.0;
    if n <= NODES_DRAWN_MAX {
        for i in 0..n {
            queue.push(Series {
                name: format!("n{}", i + 1),
                color: PALETTE[i % PALETTE.len()].into(),
                points: o
                    .samples
                    .iter()
                    .filter(|s| s.queued[i] >= 0)
                    .map(|s| (t(s), s.queued[i] as f64))
                    .collect(),
                step: true,
            });
        }
    } else {
        let stat = |f: fn(&mut Vec<i64>) -> i64| -> Vec<(f64, f64)> {
            o.samples
                .iter()
                .map(|s| {
                    let mut v: Vec<i64> = s.queued.iter().copied().filter(|q| *q >= 0).collect();
                    v.sort_unstable();
                    (t(s), if v.is_empty() { 0.0 } else { f(&mut v) as f64 })
                })
                .collect()
        };
        queue.push(Series {
            name: "max over nodes".into(),
            color: PALETTE[3].into(),
            points: stat(|v| v[v.len() - 1]),
            step: true,
        });
        queue.push(Series {
            name: "median".into(),
            color: PALETTE[0].into(),
            points: stat(|v| v[v.len() / 2]),
            step: true,
        });
        queue.push(Series {
            name: "min".into(),
            color: PALETTE[2].into(),
            points: stat(|v| v[0]),
            step: true,
        });
    }
    // Jobs running on each node (its share of the work), by its own replica; all nodes together
    // in big clusters, with the busiest node.
    let mut running = Vec::new();
    if n <= NODES_DRAWN_MAX {
        for i in 0..n {
            running.push(Series {
                name: format!("n{}", i + 1),
                color: PALETTE[i % PALETTE.len()].into(),
                points: o
                    .samples
                    .iter()
                    .filter(|s| s.running[i] >= 0)
                    .map(|s| (t(s), s.running[i] as f64))
                    .collect(),
                step: true,
            });
        }
    } else {
        running.push(Series {
            name: "all nodes".into(),
            color: PALETTE[4].into(),
            points: o
                .samples
                .iter()
                .map(|s| {
                    (
                        t(s),
                        s.running.iter().filter(|r| **r > 0).sum::<i64>() as f64,
                    )
                })
                .collect(),
            step: true,
        });
        running.push(Series {
            name: "busiest node".into(),
            color: PALETTE[3].into(),
            points: o
                .samples
                .iter()
                .map(|s| {
                    (
                        t(s),
                        s.running.iter().copied().max().unwrap_or(0).max(0) as f64,
                    )
                })
                .collect(),
            step: true,
        });
    }
    // Leader id only (a term on the same axis read as a node id); each new leader is a marker
    // labelled with its term.
    let leaders = vec![Series {
        name: "leader (0: none)".into(),
        color: PALETTE[0].into(),
        points: o
            .samples
            .iter()
            .map(|s| (t(s), s.leader.unwrap_or(0) as f64))
            .collect(),
        step: true,
    }];
    let leader_marks: Vec<Mark> = if o.leader_changes.len() <= 24 {
        o.leader_changes
            .iter()
            .map(|(at, term, node)| Mark {
                t_s: *at as f64 / 1000.0,
                label: format!("n{node} term {term}"),
            })
            .collect()
    } else {
        Vec::new()
    };
    // Where faults stop and the drain starts (arrivals stop, every job must finish).
    let healed = o.figures["faults_healed_at_ms"].as_u64().map(|h| Mark {
        t_s: h as f64 / 1000.0,
        label: "faults healed, drain".into(),
    });
    let heal: Vec<Mark> = healed.into_iter().collect();
    let progress = vec![
        Series {
            name: "acknowledged".into(),
            color: PALETTE[0].into(),
            points: o.samples.iter().map(|s| (t(s), s.acked as f64)).collect(),
            step: false,
        },
        Series {
            name: "seen terminal".into(),
            color: PALETTE[2].into(),
            points: o
                .samples
                .iter()
                .map(|s| (t(s), s.terminal_seen as f64))
                .collect(),
            step: false,
        },
    ];
    vec![
        (
            "latency.svg",
            chart(
                "Job latency (submit to result seen by the client), per 10 s",
                "latency (ms)",
                &lat,
                &o.faults,
                &heal,
                x_max,
            ),
        ),
        (
            "queue.svg",
            chart(
                "Queued jobs (one cluster-wide queue), as each node's replica sees it",
                "queued jobs",
                &queue,
                &o.faults,
                &heal,
                x_max,
            ),
        ),
        (
            "running.svg",
            chart(
                "Jobs running per node",
                "running jobs",
                &running,
                &o.faults,
                &heal,
                x_max,
            ),
        ),
        (
            "leaders.svg",
            chart(
                "Raft leader; markers: leader changes with their term",
                "leader node id",
                &leaders,
                &o.faults,
                &leader_marks,
                x_max,
            ),
        ),
        (
            "progress.svg",
            chart(
                "Jobs acknowledged and finished (cumulative)",
                "jobs",
                &progress,
                &o.faults,
                &heal,
                x_max,
            ),
        ),
    ]
}

fn index_html(o: &RunOutcome, replay: &str, plots: &[(&str, String)]) -> String {
    let mut h = String::new();
    let status = if o.violations_total == 0 {
        "<p class=ok>All invariants held.</p>".to_string()
    } else {
        format!(
            "<p class=bad>{} invariant violation(s). Replay: <code>{}</code></p>",
            o.violations_total,
            esc(replay)
        )
    };
    let _ = write!(
        h,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>runmesh-sim: {name} seed {seed}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}} .ok{{color:#2a2}} .bad{{color:#c22}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}}
code{{background:#f4f4f4}}</style></head><body>
<h1>{name} <small>seed {seed}{rf}</small></h1>{status}
<p>trace_hash <code>{hash:016x}</code> · {nodes} nodes · {vs:.1} virtual s in {ws:.2} wall s ·
<a href="report.json">report.json</a> · <a href="trace.jsonl">trace.jsonl</a></p>
"#,
        name = esc(&o.scenario),
        seed = o.seed,
        rf = if o.random_faults {
            " (random faults)"
        } else {
            ""
        },
        hash = o.trace_hash,
        nodes = o.nodes,
        vs = o.virtual_ms as f64 / 1000.0,
        ws = o.wall_ms as f64 / 1000.0,
    );
    if !o.violations.is_empty() {
        h.push_str(
            "<h2>Violations</h2><table><tr><th>at (s)</th><th>invariant</th><th>detail</th></tr>",
        );
        for v in &o.violations {
            let _ = write!(
                h,
                "<tr><td>{:.3}</td><td>{:?}</td><td>{}</td></tr>",
                v.at_ms as f64 / 1000.0,
                v.invariant,
                esc(&v.detail)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Figures</h2><table>");
    if let Some(obj) = o.figures.as_object() {
        for (k, v) in obj {
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td></tr>",
                esc(k),
                esc(&v.to_string())
            );
        }
    }
    h.push_str(
        "</table><h2>Faults</h2><table><tr><th>from (s)</th><th>to (s)</th><th>fault</th></tr>",
    );
    for f in &o.faults {
        let _ = write!(
            h,
            "<tr><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            f.start_ms as f64 / 1000.0,
            f.end_ms as f64 / 1000.0,
            esc(&f.what)
        );
    }
    h.push_str("</table><h2>Plots</h2><p>Shaded bands are fault windows (hover for the fault); the dashed line is where every fault is healed and the drain begins.</p>");
    for (name, _) in plots {
        let _ = write!(h, r#"<p><img src="{name}" alt="{name}"></p>"#);
    }
    h.push_str("</body></html>\n");
    h
}

/// Writes report.json, trace.jsonl, the SVG plots and index.html into `dir`.
pub fn write(dir: &Path, o: &RunOutcome, replay: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut report = o.figures.clone();
    report["trace_hash"] = format!("{:016x}", o.trace_hash).into();
    report["replay"] = replay.into();
    report["violation_list"] = serde_json::to_value(&o.violations).unwrap_or_default();
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("trace.jsonl"))?);
    for l in &o.trace {
        writeln!(f, "{l}")?;
    }
    f.flush()?;
    let plots = plots(o);
    for (name, svg) in &plots {
        std::fs::write(dir.join(name), svg)?;
    }
    std::fs::write(dir.join("index.html"), index_html(o, replay, &plots))
}

/// The scenario `runmesh-sim bench` runs: `n` nodes in three regions, a steady mixed workload
/// of 10 jobs/s whatever the size (so the figure measures what the cluster size costs), one
/// leader kill half way.
pub fn bench_scenario(n: usize, virtual_s: f64) -> Scenario {
    let per = n.div_ceil(3);
    let text = format!(
        r#"
name = "bench-{n}"
duration_s = {virtual_s}
drain_s = 60
[cluster]
voters = {voters}
# A formed mesh: no join storm of N learner changes before the measurement.
bootstrap = "formed"
# Cross-region round trips exceed openraft's 100 ms default AppendEntries timeout (= heartbeat).
heartbeat_ms = 300
election_timeout_min_ms = 1500
election_timeout_max_ms = 3000
install_snapshot_timeout_ms = 3000
[[nodes]]
count = {a}
region = "us-east"
gpus = ["H100:80"]
[[nodes]]
count = {b}
region = "eu-west"
gpus = ["A100:40"]
[[nodes]]
count = {c}
region = "ap-south"
[network]
latency_ms = 1.0
jitter_ms = 0.5
inter_region_latency_ms = 60
loss = 0.001
[[workload]]
model = "runmesh/sleep"
rate_per_s = {rate}
duration_min_ms = 200
duration_max_ms = 3000
cancel_fraction = 0.02
[[faults]]
at_s = {kill}
kind = "kill_leader"
for_s = 10
"#,
        voters = if n >= 5 { 5 } else { 3 },
        a = per,
        b = per.min(n - per),
        c = n - per - per.min(n - per),
        rate = 10.0,
        kill = virtual_s / 2.0,
    );
    let text = text.replace("[[nodes]]\ncount = 0\nregion = \"ap-south\"\n", "");
    Scenario::parse(&text).unwrap_or_else(|e| panic!("bench scenario: {e}"))
}

/// The scenario of `runmesh-sim bench`'s placement row: `n` nodes in one region with 64 slots
/// each, and `jobs` short jobs submitted within 200 ms, so the queue is deep and the leader's
/// dispatch rounds (the mesh scheduler, then `Assign` through Raft) run back to back.
pub fn placement_scenario(n: usize, jobs: u64) -> Scenario {
    let text = format!(
        r#"
name = "placements-{n}"
duration_s = 30
drain_s = 60
[cluster]
voters = 3
lease_ms = 5000
bootstrap = "formed"
[[nodes]]
count = {n}
region = "us-east"
slots = 64
[network]
latency_ms = 0.5
jitter_ms = 0.2
[[workload]]
model = "runmesh/echo"
arrival = "uniform"
rate_per_s = {rate}
start_s = 2
stop_s = 2.2
duration_min_ms = 5
duration_max_ms = 20
"#,
        rate = jobs as f64 / 0.2,
    );
    Scenario::parse(&text).unwrap_or_else(|e| panic!("placement scenario: {e}"))
}
