//! What a node serves, decided once at start: the built-in apps, the model apps whose weights are in
//! place, the apps of its external runners; plus the warm pool and the GPU probe they share.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::pool::WarmPool;
use super::{audio, models};
use super::{App as _, AppRegistry};
use crate::config::NodeConfig;
use crate::gpu::{self, GpuProbe};
use crate::outbound::Outbound;
use crate::runners;

/// The node's apps and the resources behind them.
pub struct Runtime {
    pub registry: AppRegistry,
    pub pool: Arc<WarmPool>,
    pub gpus: Arc<dyn GpuProbe>,
    /// Why the GPU figures come from where they come from (logged at start).
    pub gpu_note: String,
    /// Runner commands that did not start, with why.
    pub runner_errors: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--gpus: {0}")]
    Gpus(#[from] gpu::GpuSpecError),
    #[error("the outbound HTTP client: {0}")]
    Http(String),
}

/// Builds the registry for `cfg`. Never fails on a missing model or a broken runner (the node serves
/// the rest and says why); fails only on a config error.
pub async fn build(cfg: &NodeConfig) -> Result<Runtime, SetupError> {
    let (probe, gpu_note) = gpu::detect(cfg.gpus.as_deref())?;
    let gpus: Arc<dyn GpuProbe> = Arc::from(probe);
    info!(source = ?gpus.source(), gpus = ?gpus.gpus(), "{gpu_note}");

    let mut registry = AppRegistry::with_builtins();
    let pool = Arc::new(WarmPool::new(cfg.pool.clone()));
    registry.set_pool(pool.clone());
    let models_dir = models::models_dir(cfg.models_dir.as_deref(), &cfg.data_dir);
    for name in cfg.pool.models.keys() {
        if models::find(name).is_none() {
            warn!(model = %name, "config names a model this node does not know; ignored");
        }
    }
    let outbound = Outbound::new(cfg.compat.fetch_policy.clone(), audio::FETCH_TIMEOUT, true)
        .map_err(|e| SetupError::Http(e.to_string()))?;
    install_minilm(&mut registry, &pool, &models_dir, &outbound).await;
    install_vad(&mut registry, &pool, &models_dir, &outbound).await;
    install_gemma(&mut registry, &pool, &models_dir, &outbound).await;

    let mut runner_errors = Vec::new();
    for cmd in &cfg.runners {
        match runners::start(cmd).await {
            Ok(apps) => {
                for app in apps {
                    let id = app.manifest().id;
                    if let Err(e) = registry.register(Arc::new(app)) {
                        error!(runner = %cmd, app = %id, error = %e, "runner app not registered");
                    }
                }
            }
            Err(e) => {
                error!(runner = %cmd, error = %e, "runner did not start; its apps are not served");
                runner_errors.push((cmd.clone(), e.to_string()));
            }
        }
    }
    for (app, why) in registry.unavailable() {
        warn!(%app, reason = %why, "app not served");
    }
    Ok(Runtime {
        registry,
        pool,
        gpus,
        gpu_note,
        runner_errors,
    })
}

#[cfg(feature = "models")]
async fn install_minilm(
    registry: &mut AppRegistry,
    pool: &Arc<WarmPool>,
    dir: &std::path::Path,
    outbound: &Outbound,
) {
    super::model_app::install::<super::minilm::MiniLmApp>(registry, pool, dir, outbound).await;
}

#[cfg(feature = "models")]
async fn install_vad(
    registry: &mut AppRegistry,
    pool: &Arc<WarmPool>,
    dir: &std::path::Path,
    outbound: &Outbound,
) {
    super::model_app::install::<super::vad::VadApp>(registry, pool, dir, outbound).await;
}

#[cfg(feature = "models")]
async fn install_gemma(
    registry: &mut AppRegistry,
    pool: &Arc<WarmPool>,
    dir: &std::path::Path,
    outbound: &Outbound,
) {
    super::model_app::install::<super::gemma::GemmaApp>(registry, pool, dir, outbound).await;
}

#[cfg(not(feature = "models"))]
fn without_models(registry: &mut AppRegistry, model: &models::PinnedModel) {
    let id = runmesh_proto::AppId {
        namespace: None,
        owner: "runmesh".into(),
        alias: model.app_alias.into(),
    };
    registry.mark_unavailable(id, "this binary was built without the `models` feature");
}

#[cfg(not(feature = "models"))]
async fn install_minilm(
    registry: &mut AppRegistry,
    _pool: &Arc<WarmPool>,
    _dir: &std::path::Path,
    _outbound: &Outbound,
) {
    without_models(registry, &models::MINILM);
}

#[cfg(not(feature = "models"))]
async fn install_vad(
    registry: &mut AppRegistry,
    _pool: &Arc<WarmPool>,
    _dir: &std::path::Path,
    _outbound: &Outbound,
) {
    without_models(registry, &models::SILERO_VAD);
}

#[cfg(not(feature = "models"))]
async fn install_gemma(
    registry: &mut AppRegistry,
    _pool: &Arc<WarmPool>,
    _dir: &std::path::Path,
    _outbound: &Outbound,
) {
    without_models(registry, &models::GEMMA);
}
