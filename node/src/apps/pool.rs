//! Warm pool: loaded models kept in memory between jobs, up to a memory budget, least recently used
//! evicted first; models with `min_warm` are loaded at start and never evicted. Also the per-model
//! concurrency limits, so one busy model cannot take every slot of a node.
//!
//! The eviction decision is a pure function ([`plan_evictions`]); [`WarmPool`] wraps it with the
//! loaded values, a load lock per model (two jobs never load the same weights twice) and semaphores.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// Default budget of loaded models, in MB of host memory.
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 4096;
/// Cap of a per-model concurrency limit (a semaphore's size).
pub const CONCURRENCY_MAX: usize = 1024;

/// Per-model settings from the config file (`[models.<name>]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    /// Instances kept loaded at all times (0 or 1 today: a node holds one instance of a model,
    /// shared by its jobs). Loaded at start; never evicted.
    #[serde(default)]
    pub min_warm: u32,
    /// Jobs of this model that run at once on this node; the rest wait for a permit.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
}

/// The `[models]` table of the config file: `memory_budget_mb = N` and one `[models.<name>]`
/// table per model with its [`ModelPolicy`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ModelsSection {
    pub memory_budget_mb: Option<u64>,
    #[serde(flatten)]
    pub policies: BTreeMap<String, ModelPolicy>,
}

impl From<ModelsSection> for PoolConfig {
    fn from(s: ModelsSection) -> Self {
        Self {
            memory_budget_mb: s.memory_budget_mb.unwrap_or(DEFAULT_MEMORY_BUDGET_MB),
            models: s.policies,
        }
    }
}

/// The warm pool's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub memory_budget_mb: u64,
    /// Keyed by model name (as in `runmesh models list`, e.g. `all-minilm-l6-v2`).
    pub models: BTreeMap<String, ModelPolicy>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            memory_budget_mb: DEFAULT_MEMORY_BUDGET_MB,
            models: BTreeMap::new(),
        }
    }
}

impl PoolConfig {
    pub fn policy(&self, model: &str) -> ModelPolicy {
        self.models.get(model).cloned().unwrap_or_default()
    }
}

/// What the pool knows of one loaded model, for the eviction decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resident {
    pub key: String,
    pub memory_mb: u64,
    /// Larger = used more recently.
    pub last_used: u64,
    pub pinned: bool,
}

/// Which loaded models to drop so that `need_mb` more fits in `budget_mb`: unpinned ones, least
/// recently used first, no more than needed. When even dropping all of them is not enough, it drops
/// them all and the caller loads over budget (a job must be able to run; the log says so).
pub fn plan_evictions(resident: &[Resident], budget_mb: u64, need_mb: u64) -> Vec<String> {
    let mut used: u64 = resident.iter().map(|r| r.memory_mb).sum();
    let mut candidates: Vec<&Resident> = resident.iter().filter(|r| !r.pinned).collect();
    candidates.sort_by_key(|r| r.last_used);
    let mut out = Vec::new();
    for r in candidates {
        if used.saturating_add(need_mb) <= budget_mb {
            break;
        }
        used = used.saturating_sub(r.memory_mb);
        out.push(r.key.clone());
    }
    out
}

type Value = Arc<dyn Any + Send + Sync>;

struct Slot {
    value: Value,
    memory_mb: u64,
    last_used: u64,
    pinned: bool,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    clock: u64,
}

/// Loaded models shared by the apps of a node.
pub struct WarmPool {
    cfg: PoolConfig,
    state: Mutex<State>,
    /// One per model: held while loading, so concurrent first jobs load once.
    load_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("loading {model}: {message}")]
    Load { model: String, message: String },
    #[error("model {0} has a value of another type in the pool")]
    Type(String),
}

impl WarmPool {
    pub fn new(cfg: PoolConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::default()),
            load_locks: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loaded model `key`, loading it with `load` (on a blocking thread) when it is not warm.
    pub async fn get_or_load<T, F>(
        &self,
        key: &str,
        memory_mb: u64,
        load: F,
    ) -> Result<Arc<T>, PoolError>
    where
        T: Any + Send + Sync,
        F: FnOnce() -> Result<T, String> + Send + 'static,
    {
        if let Some(v) = self.touch(key) {
            return v
                .downcast::<T>()
                .map_err(|_| PoolError::Type(key.to_string()));
        }
        let lock = {
            let mut locks = self.load_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_string()).or_default().clone()
        };
        let _loading = lock.lock().await;
        // Someone else may have loaded it while we waited.
        if let Some(v) = self.touch(key) {
            return v
                .downcast::<T>()
                .map_err(|_| PoolError::Type(key.to_string()));
        }
        let started = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(load)
            .await
            .map_err(|e| PoolError::Load {
                model: key.to_string(),
                message: format!("loader panicked: {e}"),
            })?
            .map_err(|message| PoolError::Load {
                model: key.to_string(),
                message,
            })?;
        let value: Arc<T> = Arc::new(loaded);
        self.insert(key, value.clone(), memory_mb);
        info!(
            model = key,
            memory_mb,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(value)
    }

    fn touch(&self, key: &str) -> Option<Value> {
        let mut st = self.lock_state();
        st.clock += 1;
        let now = st.clock;
        let slot = st.slots.get_mut(key)?;
        slot.last_used = now;
        Some(slot.value.clone())
    }

    fn insert(&self, key: &str, value: Value, memory_mb: u64) {
        let pinned = self.cfg.policy(key).min_warm > 0;
        let mut st = self.lock_state();
        let resident: Vec<Resident> = st
            .slots
            .iter()
            .map(|(k, s)| Resident {
                key: k.clone(),
                memory_mb: s.memory_mb,
                last_used: s.last_used,
                pinned: s.pinned,
            })
            .collect();
        // Jobs still holding an evicted model keep it alive until they finish (it is an Arc).
        for k in plan_evictions(&resident, self.cfg.memory_budget_mb, memory_mb) {
            st.slots.remove(&k);
            info!(model = %k, "model evicted from the warm pool");
        }
        let used: u64 = st.slots.values().map(|s| s.memory_mb).sum();
        if used + memory_mb > self.cfg.memory_budget_mb {
            warn!(
                model = key,
                used_mb = used,
                memory_mb,
                budget_mb = self.cfg.memory_budget_mb,
                "loading over the warm pool's memory budget"
            );
        }
        st.clock += 1;
        let last_used = st.clock;
        st.slots.insert(
            key.to_string(),
            Slot {
                value,
                memory_mb,
                last_used,
                pinned,
            },
        );
    }

    /// Names of the models loaded now, most recently used first (for the capacity advert).
    pub fn warm_models(&self) -> Vec<String> {
        let st = self.lock_state();
        let mut v: Vec<(&String, u64)> = st.slots.iter().map(|(k, s)| (k, s.last_used)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v.into_iter().map(|(k, _)| k.clone()).collect()
    }

    pub fn is_warm(&self, key: &str) -> bool {
        self.lock_state().slots.contains_key(key)
    }

    /// Host memory held by loaded models, in MB.
    pub fn used_mb(&self) -> u64 {
        self.lock_state().slots.values().map(|s| s.memory_mb).sum()
    }

    fn semaphore(&self, key: &str) -> Option<Arc<Semaphore>> {
        let limit = self
            .cfg
            .policy(key)
            .max_concurrency?
            .clamp(1, CONCURRENCY_MAX);
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            limits
                .entry(key.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(limit)))
                .clone(),
        )
    }

    /// Waits for a run permit of `key` (immediately `None` when the model has no limit).
    pub async fn acquire(&self, key: &str) -> Option<OwnedSemaphorePermit> {
        let sem = self.semaphore(key)?;
        sem.acquire_owned().await.ok()
    }

    /// Whether a job of `key` could start now without waiting for a permit (for the claim decision).
    pub fn has_capacity(&self, key: &str) -> bool {
        self.semaphore(key)
            .is_none_or(|s| s.available_permits() > 0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(key: &str, mb: u64, used: u64, pinned: bool) -> Resident {
        Resident {
            key: key.into(),
            memory_mb: mb,
            last_used: used,
            pinned,
        }
    }

    #[test]
    fn evicts_least_recently_used_unpinned_first_and_no_more_than_needed() {
        let res = [
            r("a", 100, 5, false),
            r("b", 100, 1, false),
            r("c", 100, 3, true),
            r("d", 100, 2, false),
        ];
        assert!(plan_evictions(&res, 500, 100).is_empty());
        assert_eq!(plan_evictions(&res, 400, 100), ["b"]);
        assert_eq!(plan_evictions(&res, 350, 150), ["b", "d"]);
        // Even dropping every unpinned one is not enough: drop them all, never the pinned one.
        assert_eq!(plan_evictions(&res, 100, 500), ["b", "d", "a"]);
    }

    fn pool(budget: u64, models: &[(&str, ModelPolicy)]) -> WarmPool {
        WarmPool::new(PoolConfig {
            memory_budget_mb: budget,
            models: models
                .iter()
                .map(|(k, p)| (k.to_string(), p.clone()))
                .collect(),
        })
    }

    #[tokio::test]
    async fn loads_once_keeps_warm_and_evicts_lru() {
        let p = pool(250, &[]);
        let loads = Arc::new(std::sync::atomic::AtomicU32::new(0));
        for key in ["a", "b", "a"] {
            let n = loads.clone();
            let v = p
                .get_or_load(key, 100, move || {
                    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, String>(key.to_string())
                })
                .await
                .unwrap();
            assert_eq!(*v, key);
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(p.warm_models(), ["a", "b"]);
        // c needs room: b is the least recently used.
        p.get_or_load("c", 100, || Ok::<_, String>(1u8))
            .await
            .unwrap();
        assert_eq!(p.warm_models(), ["c", "a"]);
        assert_eq!(p.used_mb(), 200);
        assert!(p.get_or_load::<u8, _>("a", 100, || Ok(1)).await.is_err());
    }

    #[tokio::test]
    async fn pinned_models_stay_and_load_errors_surface() {
        let pin = ModelPolicy {
            min_warm: 1,
            max_concurrency: None,
        };
        let p = pool(100, &[("keep", pin)]);
        p.get_or_load("keep", 100, || Ok::<_, String>(0u8))
            .await
            .unwrap();
        p.get_or_load("other", 100, || Ok::<_, String>(0u8))
            .await
            .unwrap();
        p.get_or_load("third", 100, || Ok::<_, String>(0u8))
            .await
            .unwrap();
        assert!(p.is_warm("keep") && p.is_warm("third") && !p.is_warm("other"));
        let err = p
            .get_or_load::<u8, _>("bad", 1, || Err("no file".into()))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "loading bad: no file");
        assert!(!p.is_warm("bad"));
    }

    #[tokio::test]
    async fn concurrency_limit_holds_jobs_back() {
        let lim = ModelPolicy {
            min_warm: 0,
            max_concurrency: Some(1),
        };
        let p = pool(100, &[("m", lim)]);
        assert!(p.acquire("free").await.is_none());
        assert!(p.has_capacity("free"));
        let permit = p.acquire("m").await.unwrap();
        assert!(!p.has_capacity("m"));
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), p.acquire("m")).await;
        assert!(waiting.is_err(), "second job must wait");
        drop(permit);
        assert!(p.has_capacity("m"));
        assert!(p.acquire("m").await.is_some());
    }
}
