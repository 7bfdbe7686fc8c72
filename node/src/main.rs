//! `runmesh`: the node binary.

mod bench;
mod bench_blobs;
mod bench_cluster;
mod bench_node;
mod cli;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use runmesh_gateway_node::{AppCatalog, GatewayConfig, PartialHub};
use runmesh_node::config::{ConfigFile, LogFormat, NodeConfig};
use runmesh_node::datadir;
use runmesh_node::worker::{run_result_expiry, run_ticker, Worker};
use runmesh_proto::{Clock, SystemClock};
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
    // Before anything builds a TLS config: several providers are linked (see tls.rs).
    runmesh_node::tls::install_crypto_provider();
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
            Command::Bench(mut args) => {
                init_logging(LogFormat::Text);
                match args.scenario.take() {
                    Some(cli::BenchScenario::Cluster(a)) => bench_cluster::cluster(a).await,
                    Some(cli::BenchScenario::Failover(a)) => bench_cluster::failover(a).await,
                    Some(cli::BenchScenario::Placements(a)) => bench_cluster::placements(a).await,
                    Some(cli::BenchScenario::Blobs(a)) => bench_blobs::run(a).await,
                    Some(cli::BenchScenario::Node(rows)) => bench_node::run(rows).await,
                    None => bench::run(args).await,
                }
            }
            Command::Init(args) => {
                init_logging(LogFormat::Text);
                init_node(args)
            }
            Command::Status(args) => status_command(args).await,
            Command::Models(cmd) => {
                init_logging(LogFormat::Text);
                models_command(cmd).await
            }
            Command::Keys(args) => {
                init_logging(LogFormat::Text);
                runmesh_node::keys_cli::run(args)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Node(args) => {
                init_logging(LogFormat::Text);
                runmesh_node::node_cli::run(args)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Backup(args) => {
                init_logging(LogFormat::Text);
                runmesh_node::backup_cli::backup(args)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Restore(args) => {
                init_logging(LogFormat::Text);
                runmesh_node::backup_cli::restore(args).map_err(anyhow::Error::from)
            }
        }
    })
}

/// `runmesh models fetch|list|bench`.
async fn models_command(cmd: cli::ModelsCommand) -> anyhow::Result<()> {
    use runmesh_node::apps::{cli as models_cli, models};
    let dir_of = |d: &cli::ModelsDirArgs| models::models_dir(d.models_dir.as_deref(), &d.data_dir);
    match cmd {
        cli::ModelsCommand::Fetch(a) => {
            let dir = dir_of(&a.dir);
            tokio::task::spawn_blocking(move || {
                models_cli::fetch(&a.models, &dir, a.cache_dir.as_deref(), &a.python)
            })
            .await
            .context("fetch task")??;
            Ok(())
        }
        cli::ModelsCommand::List(d) => {
            models_cli::list(&dir_of(&d));
            Ok(())
        }
        cli::ModelsCommand::Bench(a)
            if models::find(&a.model).is_some_and(|m| m.name == "gemma-3-270m") =>
        {
            let opts = models_cli::GemmaBenchOptions {
                rounds: a.requests,
                max_tokens: a.max_tokens,
                prompt: a.prompt.clone(),
                llama_python: a.llama_python.clone(),
                llama_script: a.llama_script.clone(),
            };
            let report = models_cli::bench_gemma(&dir_of(&a.dir), &opts)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{report}");
            Ok(())
        }
        cli::ModelsCommand::Bench(a) => {
            let dir = dir_of(&a.dir);
            let report = match models::find(&a.model).map(|m| m.name) {
                Some("all-minilm-l6-v2") => models_cli::bench(&dir, a.requests, &a.batches).await,
                Some("silero-vad") => {
                    models_cli::bench_vad(&dir, a.requests, &a.clip_seconds).await
                }
                _ => Err(format!(
                    "models bench knows all-minilm-l6-v2, silero-vad and gemma-3-270m, not {:?}",
                    a.model
                )),
            }
            .map_err(anyhow::Error::msg)?;
            println!("{report}");
            Ok(())
        }
    }
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
    // Before anything opens or writes the dir: a newer format is refused, an older one migrated.
    runmesh_node::format::prepare(&cfg.data_dir)?;
    let narrowed = runmesh_node::datadir::secure(&cfg.data_dir).context("securing the data dir")?;
    if narrowed > 0 {
        tracing::warn!(
            data_dir = %cfg.data_dir.display(),
            entries = narrowed,
            "the data dir was readable by others: narrowed it to the node's user (0700 dirs, 0600 files)"
        );
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // One key names the node everywhere (Raft id, QUIC certificate, libp2p peer id); a data dir
    // that held a member keeps that member's key and log, or does not start.
    let key_path = runmesh_node::identity::NodeIdentity::key_path(&cfg.data_dir);
    datadir::check_key_present(&cfg.data_dir, &key_path)?;
    let (identity, created) = runmesh_node::identity::NodeIdentity::load_or_create(&cfg.data_dir)
        .context("loading the node key")?;
    if created {
        info!(path = %key_path.display(), "created a node key");
    }
    let mark = datadir::read_mark(&cfg.data_dir)?;
    if let Some(m) = &mark {
        datadir::check_key_matches(&cfg.data_dir, &key_path, m, &identity.public_key_hex())?;
    }
    // Alone, or in the mesh when a Raft/p2p address is configured (joins through --bootstrap).
    let (joblog, raft_mesh) = match runmesh_node::mesh::raft_mesh::open_job_log(
        &cfg,
        &identity,
        clock.clone(),
        mark.is_some(),
    )
    .await
    {
        Ok(opened) => opened,
        Err(runmesh_node::mesh::raft_mesh::RaftMeshError::JobLog(
            e @ runmesh_raft::JobLogError::LostState(_),
        )) => bail!(
            "{e}. It will not found a new cluster in its place. If the cluster has other \
             members, start this node with --bootstrap <member> to rejoin and fetch the log \
             again; if it was the only node, restore the data dir from a backup"
        ),
        Err(runmesh_node::mesh::raft_mesh::RaftMeshError::JobLog(
            e @ runmesh_raft::JobLogError::Damaged { .. },
        )) => bail!(
            "{e}, and this node has no peer to get the entries back from. Restore the data dir \
             from a backup; starting it as it is would lose acknowledged jobs"
        ),
        Err(runmesh_node::mesh::raft_mesh::RaftMeshError::JobLog(
            e @ runmesh_raft::JobLogError::Storage(_),
        )) if mark.is_some() && cfg.bootstrap.is_none() => bail!(
            "{e}. This data dir held a cluster member: if the cluster has other members, start \
             this node with --bootstrap <member> and it sets the unreadable store aside and \
             fetches the log from them; if it was the only node, restore the data dir from a backup"
        ),
        Err(e) => return Err(anyhow::Error::new(e).context("opening the job log")),
    };
    if !joblog.wait_healthy(HEALTHY_TIMEOUT).await {
        joblog.shutdown().await;
        bail!("the job log did not become writable within {HEALTHY_TIMEOUT:?}");
    }
    if !cfg
        .data_dir
        .join(runmesh_node::format::FORMAT_FILE)
        .exists()
    {
        runmesh_node::format::write(&cfg.data_dir, runmesh_node::format::CURRENT)?;
    }
    if mark.is_none() {
        datadir::write_mark(
            &cfg.data_dir,
            &datadir::MemberMark {
                node_id: identity.raft_node_id(),
                public_key: identity.public_key_hex(),
            },
        )?;
    }
    // The cluster secret (webhook signatures, realtime tokens) and the admin key (FAL-COMPAT).
    let starts_cluster = cfg.bootstrap.is_none();
    let admin_key_file = runmesh_node::keys_cli::bootstrap(
        &joblog,
        &cfg.data_dir,
        cfg.compat.admin_key.as_ref().map(|k| k.0.as_str()),
        starts_cluster,
    )
    .await
    .context("setting up the admin key")?;

    // Built-in apps, model apps whose weights are in place, external runners' apps (RUNNERS).
    let runtime = runmesh_node::apps::setup::build(&cfg)
        .await
        .context("setting up apps")?;
    let registry = Arc::new(runtime.registry);
    let partials = PartialHub::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Apps that ran here recently: the capacity advert calls them warm (MESH-GOSSIP).
    let warm = runmesh_node::mesh::capacity::WarmSet::default();
    // Artifacts: the blob store and its QUIC endpoint, keyed by the node identity (issue 6).
    let blobs = Arc::new(
        identity
            .start_blobs(
                cfg.data_dir.join("blobs"),
                cfg.blob,
                Some(Duration::from_millis(cfg.artifacts.gc_ms)),
            )
            .await
            .context("starting the blob store")?,
    );
    let artifacts = runmesh_node::artifacts::Artifacts::new(
        blobs.clone(),
        joblog.clone(),
        clock.clone(),
        cfg.artifacts.clone(),
        &cfg.data_dir,
    );
    let worker = Worker::new(
        joblog.clone(),
        registry.clone(),
        partials.clone(),
        clock.clone(),
        cfg.worker(),
    )
    .with_warm_set(warm.clone())
    .with_files(Arc::new(runmesh_node::artifacts::Sink(artifacts.clone())));
    // The worker stops first and on its own signal: it finishes its running jobs while the rest of
    // the node (Raft, blobs, gossip) still runs to record their results.
    let (finish_tx, finish_rx) = watch::channel(false);
    let mut worker_task = tokio::spawn(worker.run(finish_rx));
    let webhooks_task = tokio::spawn(runmesh_node::webhooks::run(
        joblog.clone(),
        clock.clone(),
        cfg.compat.webhooks.clone(),
        cfg.compat.fetch_policy.clone(),
        stop_rx.clone(),
    ));
    let ticker_task = tokio::spawn(run_ticker(
        joblog.clone(),
        clock.clone(),
        TICK_CHECK_EVERY,
        stop_rx.clone(),
    ));

    let expiry_task = tokio::spawn(run_result_expiry(
        joblog.clone(),
        clock.clone(),
        cfg.compat.retention,
        cfg.artifacts.ttl_ms,
        stop_rx.clone(),
    ));

    let listener = runmesh_node::tls::bind(cfg.http, &cfg.compat.tls, &cfg.data_dir).await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scheme = listener.scheme();
    let advertise = cfg.advertise.as_deref();
    artifacts.set_api_base(format!(
        "{scheme}://{}",
        runmesh_node::mesh::capacity::dialable(addr, advertise)
    ));
    // Peers dial the blob endpoint by IP: an unspecified listen IP is replaced by --advertise
    // when that is an IP.
    let mut blob_peer = blobs.peer_addr();
    if blob_peer.addr.ip().is_unspecified() {
        if let Some(ip) = advertise.and_then(|a| a.trim_matches(['[', ']']).parse().ok()) {
            blob_peer.addr.set_ip(ip);
        }
    }
    // Cluster view, capacity adverts, gossip, and the dispatcher that places jobs while this node
    // leads (MESH-GOSSIP).
    let mesh = start_mesh(
        &cfg,
        addr,
        &joblog,
        &registry,
        warm,
        runtime.gpus.clone(),
        clock.clone(),
        &identity,
        Some(blob_peer.to_string()),
        stop_rx.clone(),
    )
    .await?;
    artifacts.set_mesh(mesh.mesh.clone());
    let sweeper_task = tokio::spawn(artifacts.clone().run_sweeper(stop_rx));
    let catalog: Arc<dyn AppCatalog> = registry;
    let gateway = GatewayConfig {
        body_limit_bytes: cfg.body_limit_bytes,
        region: cfg.region.clone(),
        auth: runmesh_gateway_node::AuthConfig {
            require_auth: cfg.compat.require_auth,
            rate_per_s: f64::from(cfg.compat.rate_per_s),
            rate_burst: cfg.compat.rate_burst,
        },
        https: scheme == "https",
        proxy_path: cfg.compat.proxy_path.clone(),
        realtime_idle_timeout_ms: cfg.compat.realtime_idle_timeout_ms,
        sse_keepalive_ms: cfg.compat.sse_keepalive_ms,
        cluster: Some(runmesh_gateway_node::ClusterHandle(Arc::new(
            mesh.mesh.clone(),
        ))),
        files: Some(runmesh_gateway_node::files::FilesHandle(Arc::new(
            runmesh_node::artifacts::Store(artifacts.clone()),
        ))),
        fetch_policy: cfg.compat.fetch_policy.clone(),
        ..GatewayConfig::default()
    };
    let app = runmesh_gateway_node::router(joblog.clone(), catalog, partials, gateway);

    let (drain_tx, mut drain_rx) = watch::channel(false);
    let mut server = tokio::spawn(listener.serve(app, async move {
        let _ = drain_rx.wait_for(|d| *d).await;
    }));
    info!(%addr, data_dir = %cfg.data_dir.display(), slots = cfg.slots, require_auth = cfg.compat.require_auth, "node started");
    if let Some(path) = &admin_key_file {
        info!(path = %path.display(), "admin key (for `runmesh keys` and /admin/keys)");
    }
    // Tests and scripts wait for this exact line.
    let mut out = std::io::stdout().lock();
    writeln!(out, "runmesh listening on {scheme}://{addr}").context("writing to stdout")?;
    out.flush().context("flushing stdout")?;
    drop(out);

    tokio::select! {
        res = &mut server => {
            warn!("http server stopped on its own");
            res.context("http server task")?.context("http server")?;
        }
        sig = shutdown_signal() => {
            info!(signal = sig, grace_ms = cfg.shutdown_grace_ms, "shutting down");
            // No new jobs start or are placed here from now on; new requests are refused while
            // open ones end.
            mesh.mesh.stop_taking_jobs();
            let _ = finish_tx.send(true);
            let _ = drain_tx.send(true);
            if tokio::time::timeout(HTTP_DRAIN_TIMEOUT, &mut server).await.is_err() {
                warn!("open connections did not finish in time; closing them");
                server.abort();
            }
        }
    }
    let _ = finish_tx.send(true);
    let grace = Duration::from_millis(cfg.shutdown_grace_ms) + WORKER_STOP_TIMEOUT;
    if tokio::time::timeout(grace, &mut worker_task).await.is_err() {
        worker_task.abort();
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(WORKER_STOP_TIMEOUT, async {
        let _ = ticker_task.await;
        let _ = expiry_task.await;
        let _ = webhooks_task.await;
        let _ = sweeper_task.await;
        for t in mesh.tasks {
            let _ = t.await;
        }
    })
    .await;
    blobs.shutdown().await;
    joblog.shutdown().await;
    if let Some(m) = &raft_mesh {
        m.shutdown();
    }
    info!("stopped");
    Ok(())
}

/// Starts the mesh side of the node (see `runmesh_node::mesh::capacity::start_mesh`).
#[allow(clippy::too_many_arguments)]
async fn start_mesh(
    cfg: &NodeConfig,
    api_addr: std::net::SocketAddr,
    joblog: &runmesh_raft::JobLog,
    registry: &runmesh_node::apps::AppRegistry,
    warm: runmesh_node::mesh::capacity::WarmSet,
    gpus: Arc<dyn runmesh_node::gpu::GpuProbe>,
    clock: Arc<dyn Clock>,
    identity: &runmesh_node::identity::NodeIdentity,
    blob_addr: Option<String>,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<runmesh_node::mesh::capacity::MeshHandles> {
    use runmesh_node::mesh::capacity::{self, MeshOptions};
    let opts = MeshOptions {
        slots: cfg.slots,
        region: cfg.region.clone(),
        gpus,
        serve_apps: cfg.serve_apps.clone(),
        api_addr,
        raft_addr: cfg.raft,
        advertise: cfg.advertise.clone(),
        p2p: cfg.p2p,
        bootstrap: cfg.bootstrap.clone(),
        worker: cfg.worker(),
        blob_addr,
    };
    #[cfg(feature = "p2p")]
    let keypair = match cfg.p2p {
        Some(_) => Some(identity.libp2p_keypair().context("the node's libp2p key")?),
        None => None,
    };
    #[cfg(not(feature = "p2p"))]
    let _ = identity;
    capacity::start_mesh(
        opts,
        joblog,
        registry,
        warm,
        clock,
        #[cfg(feature = "p2p")]
        keypair,
        stop_rx,
    )
    .await
    .context("starting the mesh")
}

/// `runmesh status`: one node's view of the cluster, as a table (or the JSON).
async fn status_command(args: cli::StatusArgs) -> anyhow::Result<()> {
    let base = if args.http.starts_with("http://") || args.http.starts_with("https://") {
        args.http.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", args.http)
    };
    let url = format!("{base}/admin/cluster");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let mut req = client.get(&url);
    let key = match &args.key {
        Some(k) => Some(k.trim().to_string()),
        None => {
            let dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(runmesh_node::config::DEFAULT_DATA_DIR));
            std::fs::read_to_string(dir.join("admin.key"))
                .ok()
                .map(|k| k.trim().to_string())
        }
    };
    match &key {
        Some(key) => req = req.header("authorization", format!("Key {key}")),
        None => bail!(
            "the cluster view needs the ADMIN key: give --key (or FAL_KEY), or --data-dir of \
             the node that founded the cluster (its admin.key)"
        ),
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        bail!("{url} answered {status}: {body}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            runmesh_node::mesh::capacity::render_cluster_table(&body)
        );
    }
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

/// `runmesh init`: the node key and a config file with the given flags.
fn init_node(args: cli::InitArgs) -> anyhow::Result<()> {
    use runmesh_node::identity::NodeIdentity;
    let layer = args.node.to_layer();
    let Some(dir) = layer.data_dir.clone() else {
        bail!("--data-dir is required");
    };
    let config_path = dir.join("runmesh.toml");
    if config_path.exists() && !args.force {
        bail!("{} exists (--force overwrites it)", config_path.display());
    }
    let (identity, created) =
        NodeIdentity::load_or_create(&dir).context("creating the node key")?;
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut text = String::from("# runmesh node config (`runmesh run --config THIS_FILE`)\n");
    let dir_text = dir.canonicalize().unwrap_or(dir.clone());
    text += &format!("data_dir = {}\n", q(&dir_text.to_string_lossy()));
    let addr = |k: &str, v: Option<std::net::SocketAddr>| {
        v.map(|a| format!("{k} = {}\n", q(&a.to_string())))
    };
    text += &addr("http", layer.http).unwrap_or_default();
    text += &addr("p2p", layer.p2p).unwrap_or_default();
    text += &addr("raft", layer.raft).unwrap_or_default();
    for (k, v) in [
        ("advertise", &layer.advertise),
        ("bootstrap", &layer.bootstrap),
        ("region", &layer.region),
    ] {
        if let Some(v) = v {
            text += &format!("{k} = {}\n", q(v));
        }
    }
    if let Some(n) = layer.voters {
        text += &format!("voters = {n}\n");
    }
    if let Some(n) = layer.slots {
        text += &format!("slots = {n}\n");
    }
    for (k, v) in [
        ("raft_heartbeat_ms", layer.raft_heartbeat_ms),
        (
            "raft_election_timeout_min_ms",
            layer.raft_election_timeout_min_ms,
        ),
        (
            "raft_election_timeout_max_ms",
            layer.raft_election_timeout_max_ms,
        ),
    ] {
        if let Some(v) = v {
            text += &format!("{k} = {v}\n");
        }
    }
    let mut secret = layer.cluster_secret.as_ref().map(|s| s.0.clone());
    if secret.is_none() && args.generate_secret {
        let fresh = NodeIdentity::generate().context("generating a secret")?;
        secret = Some(runmesh_proto::mesh::to_hex(&fresh.public_key_bytes()));
    }
    if let Some(s) = &secret {
        text += &format!("cluster_secret = {}\n", q(s));
    }
    // Parse what we wrote, so a bad value fails here and not at `run`.
    runmesh_node::config::ConfigFile::parse(&text).context("the generated config")?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        // It may hold the cluster secret.
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&config_path)
        .with_context(|| format!("writing {}", config_path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", config_path.display()))?;
    println!(
        "{} node key {} (node id {}, public key {})",
        if created { "created" } else { "kept" },
        NodeIdentity::key_path(&dir).display(),
        identity.raft_node_id(),
        identity.public_key_hex()
    );
    println!("wrote {}", config_path.display());
    if args.generate_secret && layer.cluster_secret.is_none() {
        println!("generated a cluster secret (in the config file): give it to the nodes that join");
    }
    println!(
        "start it with: runmesh run --config {}",
        config_path.display()
    );
    Ok(())
}
