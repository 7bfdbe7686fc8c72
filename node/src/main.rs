//! `runmesh`: the node binary.

mod bench;
mod cli;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use runmesh_gateway_node::{AppCatalog, GatewayConfig, PartialHub};
use runmesh_node::apps::AppRegistry;
use runmesh_node::config::{ConfigFile, LogFormat, NodeConfig};
use runmesh_node::worker::{run_ticker, Worker};
use runmesh_proto::{Clock, SystemClock};
use runmesh_raft::{JobLog, JobLogConfig};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cli::{Cli, Command};

/// How long the Raft log may take to become writable at start.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the tick loop checks for expired leases and start deadlines.
const TICK_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Open connections (SSE streams) get this long to finish after a shutdown signal.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const WORKER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the cause chain; anyhow's Debug form would add a backtrace dump.
            eprintln!("runmesh: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => {
                let cfg = NodeConfig::resolve(args.to_layer(), false)?;
                init_logging(cfg.log_format);
                serve(cfg).await
            }
            Command::Run(args) => {
                let file = match &args.config {
                    Some(path) => ConfigFile::load(path)?,
                    None => ConfigFile::default(),
                };
                let cfg = NodeConfig::resolve(file.overlay(args.node.to_layer()), true)?;
                init_logging(cfg.log_format);
                serve(cfg).await
            }
            Command::Bench(args) => {
                init_logging(LogFormat::Text);
                bench::run(args).await
            }
        }
    })
}

/// Logs on stderr (stdout carries the listening line and bench results), filtered by RUST_LOG.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "warn,runmesh=info,runmesh_node=info,runmesh_raft=info,runmesh_gateway_node=info,runmesh_proto=info",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs one node until SIGINT/SIGTERM.
async fn serve(cfg: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let joblog = JobLog::open(
        JobLogConfig::single_node(cfg.data_dir.join("raft")),
        clock.clone(),
        Arc::new(runmesh_raft::transport::NoNetwork),
    )
    .await
    .context("opening the job log")?;
    if !joblog.wait_healthy(HEALTHY_TIMEOUT).await {
        joblog.shutdown().await;
        bail!("the job log did not become writable within {HEALTHY_TIMEOUT:?}");
    }

    let registry = Arc::new(AppRegistry::with_builtins());
    let partials = PartialHub::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = Worker::new(
        joblog.clone(),
        registry.clone(),
        partials.clone(),
        clock.clone(),
        cfg.worker(),
    );
    let worker_task = tokio::spawn(worker.run(stop_rx.clone()));
    let ticker_task = tokio::spawn(run_ticker(joblog.clone(), clock, TICK_CHECK_EVERY, stop_rx));

    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("binding {}", cfg.http))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let catalog: Arc<dyn AppCatalog> = registry;
    let gateway = GatewayConfig {
        body_limit_bytes: cfg.body_limit_bytes,
        region: cfg.region.clone(),
    };
    let app = runmesh_gateway_node::router(joblog.clone(), catalog, partials, gateway);

    let (drain_tx, mut drain_rx) = watch::channel(false);
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = drain_rx.wait_for(|d| *d).await;
            })
            .await
    });
    info!(%addr, data_dir = %cfg.data_dir.display(), slots = cfg.slots, "node started");
    // Tests and scripts wait for this exact line.
    let mut out = std::io::stdout().lock();
    writeln!(out, "runmesh listening on http://{addr}").context("writing to stdout")?;
    out.flush().context("flushing stdout")?;
    drop(out);

    tokio::select! {
        res = &mut server => {
            warn!("http server stopped on its own");
            res.context("http server task")?.context("http server")?;
        }
        sig = shutdown_signal() => {
            info!(signal = sig, "shutting down");
            let _ = drain_tx.send(true);
            if tokio::time::timeout(HTTP_DRAIN_TIMEOUT, &mut server).await.is_err() {
                warn!("open connections did not finish in time; closing them");
                server.abort();
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(WORKER_STOP_TIMEOUT, async {
        let _ = worker_task.await;
        let _ = ticker_task.await;
    })
    .await;
    joblog.shutdown().await;
    info!("stopped");
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn shutdown_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}
