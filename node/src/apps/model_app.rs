//! What the model apps (MiniLM, Silero VAD, Gemma) share, once: where their weights are, the warm
//! pool that keeps them loaded, the device they run on, how a job gets the loaded model, and how a
//! node installs one at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use runmesh_proto::AppId;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{error, info};

use super::minilm::default_device;
use super::models::{self, PinnedModel};
use super::pool::WarmPool;
use super::{App, AppError, AppRegistry, JobContext};
use crate::outbound::Outbound;

/// Where a model app's weights are and what loads and runs them; cheap to clone into a job.
#[derive(Clone)]
pub struct ModelHome {
    pub dir: PathBuf,
    pub pool: Arc<WarmPool>,
    pub device: Device,
    /// The node's policy-bound HTTP client, for input URLs a job names.
    pub outbound: Outbound,
}

/// An app serving one pinned model from the warm pool.
pub trait ModelApp: App + Sized {
    /// The loaded weights the pool keeps, shared by every job.
    type Model: Send + Sync + 'static;
    const MODEL: &'static PinnedModel;
    /// How logs name it ("loaded …", "… not registered").
    const DISPLAY: &'static str;
    /// Host memory of a loaded instance: the pool's budget unit and the manifest's cost.
    const MEMORY_MB: u64;

    /// Loads the weights from `dir` (blocking; the pool runs it off the async threads).
    fn load(dir: &Path, device: &Device) -> Result<Self::Model, String>;
    fn from_home(home: ModelHome) -> Self;
    fn home(&self) -> &ModelHome;

    fn new(dir: PathBuf, pool: Arc<WarmPool>, outbound: Outbound) -> Self {
        Self::from_home(ModelHome {
            dir,
            pool,
            device: default_device(),
            outbound,
        })
    }

    fn app_id() -> AppId {
        AppId {
            namespace: None,
            owner: "runmesh".into(),
            alias: Self::MODEL.app_alias.into(),
        }
    }
}

impl ModelHome {
    /// `A`'s model, loaded into the pool on first use.
    pub async fn loaded<A: ModelApp>(&self) -> Result<Arc<A::Model>, AppError> {
        let dir = self.dir.clone();
        let device = self.device.clone();
        self.pool
            .get_or_load(A::MODEL.name, A::MEMORY_MB, move || A::load(&dir, &device))
            .await
            .map_err(|e| AppError::runner(e.to_string()))
    }

    /// Loads `A`'s model now (for `min_warm`).
    pub async fn warm<A: ModelApp>(&self) -> Result<(), AppError> {
        self.loaded::<A>().await.map(|_| ())
    }

    /// The start of a job: waits for one of the model's concurrency permits (held until the
    /// returned permit drops), then gets the model, saying in the job's log when it had to load.
    pub async fn start<A: ModelApp>(
        &self,
        ctx: &JobContext,
    ) -> Result<(Option<OwnedSemaphorePermit>, Arc<A::Model>), AppError> {
        let permit = self.pool.acquire(A::MODEL.name).await;
        let warm = self.pool.is_warm(A::MODEL.name);
        let model = self.loaded::<A>().await?;
        if !warm {
            ctx.info(format!("loaded {}", A::DISPLAY));
        }
        Ok((permit, model))
    }

    /// For [`App::has_capacity`].
    pub fn has_capacity<A: ModelApp>(&self) -> bool {
        self.pool.has_capacity(A::MODEL.name)
    }

    /// For [`App::is_warm`].
    pub fn is_warm<A: ModelApp>(&self) -> bool {
        self.pool.is_warm(A::MODEL.name)
    }
}

/// Registers `A` when its weights are in `models_dir` (loading it first when its `min_warm` says
/// so), else marks it unavailable with why.
pub async fn install<A: ModelApp>(
    registry: &mut AppRegistry,
    pool: &Arc<WarmPool>,
    models_dir: &Path,
    outbound: &Outbound,
) {
    match models::check_present(models_dir, A::MODEL) {
        Ok(model_dir) => {
            let app = A::new(model_dir, pool.clone(), outbound.clone());
            if pool.config().policy(A::MODEL.name).min_warm > 0 {
                match app.home().warm::<A>().await {
                    Ok(()) => info!(model = A::MODEL.name, "loaded at start (min_warm)"),
                    Err(e) => {
                        registry.mark_unavailable(A::app_id(), e.message.clone());
                        return;
                    }
                }
            }
            if let Err(e) = registry.register(Arc::new(app)) {
                error!(error = %e, "{} not registered", A::DISPLAY);
            }
        }
        Err(why) => registry.mark_unavailable(A::app_id(), why),
    }
}
