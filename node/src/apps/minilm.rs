//! `runmesh/all-minilm-l6-v2`: sentence embeddings with all-MiniLM-L6-v2 on candle.
//!
//! `{"texts": [...]}` → `{"embeddings": [[f32; 384]...], "model": "all-MiniLM-L6-v2", "dim": 384}`.
//! The pipeline is sentence-transformers': tokenize (pad to the longest text of a batch, truncate at
//! 256 tokens) → BERT → mean over the real tokens (attention mask) → L2 normalise. The shipped
//! `tokenizer.json` pads every text to 128 tokens; that padding is replaced, since an unmasked mean over
//! padding gives wrong vectors (see ../shared/models.md).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use runmesh_proto::fal::FieldError;
use serde_json::{json, Value};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::model_app::{ModelApp, ModelHome};
use super::models::{PinnedModel, MINILM};
use super::{App, AppError, AppFuture, AppManifest, JobContext};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
pub const DIM: usize = 384;
/// Texts per request.
pub const TEXTS_MAX: usize = 2048;
/// Characters per text (tokens beyond [`SEQ_LEN_MAX`] are cut anyway; this bounds tokenizer work).
pub const TEXT_CHARS_MAX: usize = 100_000;
/// Texts per forward pass: bounds the activations of one batch (64 × 256 tokens × 384 floats).
pub const BATCH_MAX: usize = 64;
/// sentence-transformers' `max_seq_length` for this model.
pub const SEQ_LEN_MAX: usize = 256;
/// Host memory of a loaded instance (weights 91 MB + tokenizer), for the warm pool.
pub const MEMORY_MB: u64 = 120;

/// The device candle runs on: the first CUDA GPU when built with `cuda` and one is there, else CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::cuda_if_available(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A loaded model: what the app keeps warm, and what the benchmark calls directly.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

fn err(what: &str) -> impl Fn(candle_core::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Embedder {
    /// Loads the weights of `dir` (a `runmesh models fetch` output) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, String> {
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| format!("reading config.json: {e}"))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| format!("config.json: {e}"))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| format!("tokenizer.json: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: SEQ_LEN_MAX,
                ..TruncationParams::default()
            }))
            .map_err(|e| format!("tokenizer truncation: {e}"))?;
        let weights = dir.join("model.safetensors");
        // SAFETY-free: `from_mmaped_safetensors` is unsafe (the file must not change while mapped), and
        // this crate forbids unsafe code, so the weights are read into memory instead (91 MB).
        let bytes =
            std::fs::read(&weights).map_err(|e| format!("reading {}: {e}", weights.display()))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DTYPE, device)
            .map_err(err("model.safetensors"))?;
        let model = BertModel::load(vb, &config).map_err(err("loading BERT"))?;
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
        })
    }

    /// Embeds `texts` (any number; forward passes of at most [`BATCH_MAX`]).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH_MAX) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    /// One forward pass over `texts` (at most [`BATCH_MAX`] is sensible; not enforced here).
    pub fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| format!("tokenizing: {e}"))?;
        let n = encodings.len();
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            if e.get_ids().len() != len {
                return Err("tokenizer returned ragged batch".into());
            }
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let d = &self.device;
        let ids = Tensor::from_vec(ids, (n, len), d).map_err(err("ids"))?;
        let mask = Tensor::from_vec(mask, (n, len), d).map_err(err("mask"))?;
        let types = ids.zeros_like().map_err(err("token types"))?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(err("forward"))?;
        pool_and_normalise(&hidden, &mask)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(err("pooling"))
    }
}

/// Mean over the tokens the mask keeps, then L2 normalisation (eps 1e-12, as torch's `normalize`).
fn pool_and_normalise(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (n, dim)
    let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    mean.broadcast_div(&norm)
}

/// The app; one instance serves every job and shares the loaded model through the warm pool.
pub struct MiniLmApp {
    home: ModelHome,
}

impl ModelApp for MiniLmApp {
    type Model = Embedder;
    const MODEL: &'static PinnedModel = &MINILM;
    const DISPLAY: &'static str = "all-MiniLM-L6-v2";
    const MEMORY_MB: u64 = MEMORY_MB;

    fn load(dir: &Path, device: &Device) -> Result<Embedder, String> {
        Embedder::load(dir, device)
    }

    fn from_home(home: ModelHome) -> Self {
        Self { home }
    }

    fn home(&self) -> &ModelHome {
        &self.home
    }
}

impl MiniLmApp {
    fn parse(input: &Value) -> Result<Vec<String>, AppError> {
        let texts = input
            .get("texts")
            .and_then(Value::as_array)
            .ok_or_else(|| AppError::runner("input has no `texts` list"))?;
        texts
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| AppError::runner("`texts` holds a non-string"))
            })
            .collect()
    }
}

pub fn input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "texts": {
                "type": "array",
                "description": "Texts to embed; each gets one 384-d unit vector.",
                "minItems": 1,
                "maxItems": TEXTS_MAX,
                "items": {"type": "string", "maxLength": TEXT_CHARS_MAX}
            }
        },
        "required": ["texts"]
    })
}

pub fn output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "model": {"type": "string"},
            "dim": {"type": "integer"}
        },
        "required": ["embeddings", "model", "dim"]
    })
}

impl App for MiniLmApp {
    fn manifest(&self) -> AppManifest {
        AppManifest::new(
            Self::app_id(),
            "Sentence embeddings (all-MiniLM-L6-v2, 384-d, L2-normalised mean pooling).",
        )
        .with_models([MODEL_NAME])
        .with_input_schema(input_schema())
        .with_output_schema(output_schema())
        .with_cost(Self::MEMORY_MB, 0, 300)
    }

    fn validate(&self, _subpath: Option<&str>, _input: &Value) -> Result<(), Vec<FieldError>> {
        // The input schema says it all.
        Ok(())
    }

    fn has_capacity(&self) -> bool {
        self.home.has_capacity::<Self>()
    }

    fn is_warm(&self) -> bool {
        self.home.is_warm::<Self>()
    }

    fn run(&self, ctx: JobContext, input: Value) -> AppFuture {
        let home = self.home.clone();
        Box::pin(async move {
            let texts = Self::parse(&input)?;
            let (_permit, model) = home.start::<Self>(&ctx).await?;
            let total = texts.len();
            let mut embeddings: Vec<Vec<f32>> = Vec::with_capacity(total);
            for chunk in texts.chunks(BATCH_MAX) {
                if ctx.is_cancelled() {
                    return Err(AppError::cancelled());
                }
                let m = model.clone();
                let chunk = chunk.to_vec();
                let vecs = tokio::task::spawn_blocking(move || m.embed_batch(&chunk))
                    .await
                    .map_err(|e| AppError::runner(format!("embedding task: {e}")))?
                    .map_err(AppError::runner)?;
                embeddings.extend(vecs);
                if total > BATCH_MAX {
                    ctx.progress(embeddings.len() as u64, total as u64);
                }
            }
            Ok(json!({ "embeddings": embeddings, "model": MODEL_NAME, "dim": DIM }))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::apps::schema;

    fn errs(input: Value) -> Vec<String> {
        schema::validate(&input_schema(), &input)
            .into_iter()
            .map(|e| format!("{}:{}", e.loc.join("."), e.kind))
            .collect()
    }

    #[test]
    fn input_schema_checks_texts() {
        assert!(errs(json!({"texts": ["a", ""]})).is_empty());
        assert_eq!(errs(json!({})), ["body.texts:missing"]);
        assert_eq!(errs(json!({"texts": []})), ["body.texts:too_short"]);
        assert_eq!(errs(json!({"texts": [1]})), ["body.texts.0:string_type"]);
        assert_eq!(errs(json!({"texts": "a"})), ["body.texts:list_type"]);
    }

    #[test]
    fn pooling_ignores_masked_tokens_and_normalises() {
        let d = Device::Cpu;
        // Two texts, three positions, dim 2; the second text's last token is padding.
        let hidden = Tensor::from_vec(
            vec![1f32, 0., 3., 0., 2., 0., 0., 2., 0., 4., 100., 100.],
            (2, 3, 2),
            &d,
        )
        .unwrap();
        let mask = Tensor::from_vec(vec![1u32, 1, 1, 1, 1, 0], (2, 3), &d).unwrap();
        let v = pool_and_normalise(&hidden, &mask)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(v, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    }

    /// Needs weights: `runmesh models fetch all-minilm-l6-v2` and RUNMESH_MODELS_DIR.
    #[test]
    fn matches_the_sentence_transformers_reference() {
        let Some(dir) = std::env::var_os("RUNMESH_MODELS_DIR") else {
            eprintln!("skipping: RUNMESH_MODELS_DIR is not set");
            return;
        };
        let dir = Path::new(&dir).join(MINILM.name);
        let e = Embedder::load(&dir, &Device::Cpu).unwrap();
        let v = e
            .embed(&["This is an example sentence".to_string(), "x".to_string()])
            .unwrap();
        // sentence-transformers' printed values for this sentence (models.md).
        let want = [0.06765684f32, 0.06349595, 0.048713144, 0.07930497];
        for (a, b) in v[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{:?}", &v[0][..4]);
        }
        // The same text alone and beside a longer one (padding) gives the same vector.
        let alone = e.embed(&["x".to_string()]).unwrap();
        let cos: f32 = alone[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
        assert!(cos > 0.99999, "{cos}");
    }
}
