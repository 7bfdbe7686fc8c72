//! `runmesh/gemma-3-270m`: text generation with Gemma 3 270M (base model, Q4_K_M GGUF) on candle.
//!
//! `{"prompt", "max_tokens", "temperature", "seed"}` → `{"output", "tokens", ...}`; each generated
//! token is also published as a partial output (`/stream`, queue streams). Temperature 0 is greedy
//! and deterministic; above 0, sampling from the softmax at that temperature with a seeded generator
//! (the same seed gives the same text). The forward pass ([`model`]) and the tokenizer
//! ([`tokenizer`]) are our own: see their module docs for why.

pub mod model;
pub mod tokenizer;

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use runmesh_proto::fal::FieldError;
use serde_json::{json, Value};

use super::model_app::{ModelApp, ModelHome};
use super::models::{PinnedModel, GEMMA};
use super::{App, AppError, AppFuture, AppManifest, JobContext};
use model::Model;
use tokenizer::{TextStream, Tokenizer};

pub const MODEL_NAME: &str = "gemma-3-270m";
pub const GGUF_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// Characters per prompt (about as many tokens at most; the context is checked in tokens).
pub const PROMPT_CHARS_MAX: usize = 32_768;
pub const MAX_TOKENS_MAX: u64 = 2048;
pub const MAX_TOKENS_DEFAULT: u64 = 64;
pub const TEMPERATURE_MAX: f64 = 2.0;
/// Host memory of a loaded instance: the quantized weights (253 MB), the f32 copies of the layer
/// weights that prefill multiplies by (100 M parameters, 401 MB), norms, caches, scratch.
pub const MEMORY_MB: u64 = 800;

/// A loaded model and its tokenizer: what the app keeps warm and what the benchmark calls directly.
pub struct Gemma {
    pub model: Model,
    pub tokenizer: Tokenizer,
    stop_tokens: Vec<u32>,
}

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenParams {
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f64,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What one generation produced, with its timings (prefill: the prompt's forward pass up to the
/// first token's logits; decode: the rest).
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish: Finish,
    pub prefill: Duration,
    pub decode: Duration,
}

/// splitmix64: tiny, seedable, and the same on every platform (sampling must replay from a seed).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The next token: argmax at temperature 0 (lowest id on ties), else a draw from
/// softmax(logits / temperature).
fn pick(logits: &[f32], temperature: f64, rng: &mut Rng) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    if temperature <= 0.0 || logits.is_empty() {
        return best as u32;
    }
    let max = f64::from(logits[best]);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        u -= w;
        if u < 0.0 {
            return i as u32;
        }
    }
    best as u32
}

impl Gemma {
    /// Loads `dir/gemma-3-270m-q4_k_m.gguf` (a `runmesh models fetch gemma-3-270m` output).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, String> {
        let path = dir.join(GGUF_FILE);
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = std::io::BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(&content)?;
        let model = Model::load(&content, &mut reader, device)?;
        let mut stop_tokens = vec![tokenizer.eos];
        stop_tokens.extend(tokenizer.token_id("<end_of_turn>"));
        Ok(Self {
            model,
            tokenizer,
            stop_tokens,
        })
    }

    /// Token ids of a prompt (`<bos>` first, as the GGUF's `add_bos_token` says).
    pub fn encode(&self, prompt: &str) -> Vec<u32> {
        self.tokenizer.encode(prompt, true)
    }

    /// Logits after `ids` (a fresh sequence), `vocab` floats.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, String> {
        let mut cache = self.model.new_cache();
        self.model
            .forward(ids, &mut cache)?
            .to_vec1::<f32>()
            .map_err(|e| format!("logits: {e}"))
    }

    /// Generates after `prompt_ids`. `on_token(id, new_text, text_so_far)` runs after each token;
    /// returning false stops the generation (cancellation between tokens).
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        params: &GenParams,
        mut on_token: impl FnMut(u32, &str, &str) -> bool,
    ) -> Result<Generation, String> {
        let context = self.model.config.context;
        if prompt_ids.len() + params.max_tokens > context {
            return Err(format!(
                "prompt of {} tokens plus max_tokens {} exceeds the context of {context} tokens",
                prompt_ids.len(),
                params.max_tokens
            ));
        }
        let mut rng = Rng(params.seed);
        let mut cache = self.model.new_cache();
        let mut stream = TextStream::default();
        let mut tokens = Vec::with_capacity(params.max_tokens);
        let start = Instant::now();
        let mut prefill = Duration::ZERO;
        let mut finish = Finish::Length;
        let mut input: Vec<u32> = prompt_ids.to_vec();
        while tokens.len() < params.max_tokens {
            let logits = self
                .model
                .forward(&input, &mut cache)?
                .to_vec1::<f32>()
                .map_err(|e| format!("logits: {e}"))?;
            if tokens.is_empty() {
                prefill = start.elapsed();
            }
            let next = pick(&logits, params.temperature, &mut rng);
            if self.stop_tokens.contains(&next) {
                finish = Finish::Stop;
                break;
            }
            tokens.push(next);
            let delta = stream.push(&self.tokenizer, next).to_string();
            if !on_token(next, &delta, stream.text()) {
                finish = Finish::Cancelled;
                break;
            }
            input.clear();
            input.push(next);
        }
        let decode = start.elapsed().saturating_sub(prefill);
        Ok(Generation {
            text: stream.finish(),
            tokens,
            prompt_tokens: prompt_ids.len(),
            finish,
            prefill,
            decode,
        })
    }
}

/// The app; one instance serves every job and shares the loaded model through the warm pool.
pub struct GemmaApp {
    home: ModelHome,
}

impl ModelApp for GemmaApp {
    type Model = Gemma;
    const MODEL: &'static PinnedModel = &GEMMA;
    const DISPLAY: &'static str = "gemma-3-270m";
    const MEMORY_MB: u64 = MEMORY_MB;

    fn load(dir: &Path, device: &Device) -> Result<Gemma, String> {
        Gemma::load(dir, device)
    }

    fn from_home(home: ModelHome) -> Self {
        Self { home }
    }

    fn home(&self) -> &ModelHome {
        &self.home
    }
}

/// The input, with defaults applied (the schema has checked types and ranges).
fn parse(input: &Value) -> Result<(String, GenParams), AppError> {
    let prompt = input
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| AppError::runner("input has no `prompt` string"))?
        .to_string();
    let int = |k: &str| {
        input
            .get(k)
            .filter(|v| !v.is_null())
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
    };
    let max_tokens = int("max_tokens").unwrap_or(MAX_TOKENS_DEFAULT) as usize;
    let temperature = input
        .get("temperature")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    // Without a seed, a fresh one (reported in the output, so the run can be replayed).
    let seed = int("seed").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 & ((1 << 53) - 1)
    });
    Ok((
        prompt,
        GenParams {
            max_tokens,
            temperature,
            seed,
        },
    ))
}

pub fn input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prompt": {
                "type": "string",
                "description": "Text to continue (Gemma 3 270M is a base model: it completes text).",
                "maxLength": PROMPT_CHARS_MAX
            },
            "max_tokens": {
                "type": "integer",
                "description": "Tokens to generate at most.",
                "minimum": 1,
                "maximum": MAX_TOKENS_MAX,
                "default": MAX_TOKENS_DEFAULT
            },
            "temperature": {
                "type": "number",
                "description": "0: greedy (deterministic); higher: more random sampling.",
                "minimum": 0,
                "maximum": TEMPERATURE_MAX,
                "default": 0
            },
            "seed": {
                "type": "integer",
                "description": "Seed of the sampler (temperature > 0); random when absent.",
                "minimum": 0,
                "maximum": 9_007_199_254_740_991u64
            }
        },
        "required": ["prompt"]
    })
}

pub fn output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "output": {"type": "string", "description": "The generated text (without the prompt)."},
            "tokens": {"type": "array", "items": {"type": "integer"}, "description": "Generated token ids."},
            "prompt_tokens": {"type": "integer"},
            "finish_reason": {"type": "string", "enum": ["stop", "length"]},
            "seed": {"type": "integer"}
        },
        "required": ["output", "tokens"]
    })
}

impl App for GemmaApp {
    fn manifest(&self) -> AppManifest {
        AppManifest::new(
            Self::app_id(),
            "Text generation (Gemma 3 270M base, Q4_K_M GGUF; streams tokens). Gemma Terms of Use apply.",
        )
        .streaming(true)
        .with_models([MODEL_NAME])
        .with_input_schema(input_schema())
        .with_output_schema(output_schema())
        .with_cost(Self::MEMORY_MB, 0, 2000)
    }

    fn validate(&self, _subpath: Option<&str>, _input: &Value) -> Result<(), Vec<FieldError>> {
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
            let (prompt, params) = parse(&input)?;
            let (_permit, model) = home.start::<Self>(&ctx).await?;
            if ctx.is_cancelled() {
                return Err(AppError::cancelled());
            }
            let seed = params.seed;
            let (ctx, result) = tokio::task::spawn_blocking(move || {
                let ids = model.encode(&prompt);
                let result = model.generate(&ids, &params, |id, delta, text| {
                    ctx.partial(&json!({ "output": text, "delta": delta, "token": id }));
                    !ctx.is_cancelled()
                });
                (ctx, result)
            })
            .await
            .map_err(|e| AppError::runner(format!("generation task: {e}")))?;
            let g = result.map_err(AppError::runner)?;
            if g.finish == Finish::Cancelled {
                return Err(AppError::cancelled());
            }
            let decode_s = g.decode.as_secs_f64();
            ctx.info(format!(
                "prompt {} tokens, prefill {:.0} ms, {} tokens at {:.1} tokens/s",
                g.prompt_tokens,
                g.prefill.as_secs_f64() * 1e3,
                g.tokens.len(),
                if decode_s > 0.0 {
                    g.tokens.len().saturating_sub(1) as f64 / decode_s
                } else {
                    0.0
                }
            ));
            Ok(json!({
                "output": g.text,
                "tokens": g.tokens,
                "prompt_tokens": g.prompt_tokens,
                "finish_reason": g.finish.as_str(),
                "seed": seed,
            }))
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
    fn input_schema_checks_fields() {
        assert!(errs(json!({"prompt": "hi"})).is_empty());
        assert!(
            errs(json!({"prompt": "", "max_tokens": 5, "temperature": 0.7, "seed": 1})).is_empty()
        );
        assert_eq!(errs(json!({})), ["body.prompt:missing"]);
        assert_eq!(errs(json!({"prompt": 1})), ["body.prompt:string_type"]);
        assert_eq!(
            errs(json!({"prompt": "a", "max_tokens": 0})),
            ["body.max_tokens:greater_than_equal"]
        );
        assert_eq!(
            errs(json!({"prompt": "a", "max_tokens": 99999})),
            ["body.max_tokens:less_than_equal"]
        );
        assert_eq!(
            errs(json!({"prompt": "a", "temperature": -1})),
            ["body.temperature:greater_than_equal"]
        );
        assert_eq!(
            errs(json!({"prompt": "a", "seed": "x"})),
            ["body.seed:int_type"]
        );
    }

    #[test]
    fn parse_applies_defaults() {
        let (p, g) = parse(&json!({"prompt": "x", "seed": 7})).unwrap();
        assert_eq!(p, "x");
        assert_eq!(
            g,
            GenParams {
                max_tokens: MAX_TOKENS_DEFAULT as usize,
                temperature: 0.0,
                seed: 7
            }
        );
        let (_, g) = parse(&json!({"prompt": "x", "max_tokens": 3.0, "temperature": 1.5})).unwrap();
        assert_eq!((g.max_tokens, g.temperature), (3, 1.5));
    }

    #[test]
    fn picking_is_greedy_at_zero_and_seeded_above() {
        let logits = [0.0f32, 3.0, 1.0, 3.0];
        assert_eq!(pick(&logits, 0.0, &mut Rng(1)), 1);
        let draw = |seed| {
            let mut r = Rng(seed);
            (0..64)
                .map(|_| pick(&logits, 1.0, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        // At temperature 1, ids 1 and 3 dominate; all four appear over many draws.
        let many: Vec<u32> = {
            let mut r = Rng(9);
            (0..4000).map(|_| pick(&logits, 1.0, &mut r)).collect()
        };
        let count = |i| many.iter().filter(|&&x| x == i).count();
        assert!(
            count(1) > 1200 && count(3) > 1200,
            "{} {}",
            count(1),
            count(3)
        );
        assert!(count(0) > 20 && count(2) > 100);
        // A very low temperature is greedy in effect.
        assert_eq!(pick(&logits[..3], 1e-4, &mut Rng(3)), 1);
    }

    /// Needs weights: `runmesh models fetch gemma-3-270m` and RUNMESH_MODELS_DIR. The numbers are
    /// the float64 numpy reference's (tests/python/gemma_reference.py, committed output in
    /// tests/python/gemma_reference.json); the integration test runs the script itself.
    #[test]
    fn matches_the_numpy_reference() {
        let Some(dir) = std::env::var_os("RUNMESH_MODELS_DIR") else {
            eprintln!("skipping: RUNMESH_MODELS_DIR is not set");
            return;
        };
        let dir = Path::new(&dir).join(GEMMA.name);
        if !dir.join(GGUF_FILE).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must fetch gemma-3-270m"
            );
            eprintln!("skipping: {} has no {GGUF_FILE}", dir.display());
            return;
        }
        let cases: Vec<Value> = serde_json::from_str(include_str!(
            "../../../../tests/python/gemma_reference.json"
        ))
        .unwrap();
        let g = Gemma::load(&dir, &Device::Cpu).unwrap();
        // The second case (681 tokens) is longer than the 512-token sliding window: local layers
        // must mask (prefill, in two chunks) and trim their cache (decode).
        for reference in &cases {
            let ids = g.encode(reference["prompt"].as_str().unwrap());
            let want_ids: Vec<u32> = serde_json::from_value(reference["ids"].clone()).unwrap();
            assert_eq!(ids, want_ids);
            let mut cache = g.model.new_cache();
            let mut step = g.model.forward(&ids, &mut cache).unwrap();
            let logits = step.to_vec1::<f32>().unwrap();
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let top5: Vec<(usize, f32)> = order[..5].iter().map(|&i| (i, logits[i])).collect();
            eprintln!("top-5 {top5:?}, reference {}", reference["top5"]);
            for (k, want) in reference["top5"].as_array().unwrap().iter().enumerate() {
                let (id, l) = (
                    want[0].as_u64().unwrap() as usize,
                    want[1].as_f64().unwrap(),
                );
                assert_eq!(top5[k].0, id, "top-5 order: {top5:?}");
                let d = (f64::from(logits[id]) - l).abs();
                assert!(d < 0.3, "token {id}: {} vs {l}", logits[id]);
            }
            let want_greedy: Vec<u32> =
                serde_json::from_value(reference["greedy"].clone()).unwrap();
            // Teacher-forced along the reference's greedy tokens: each reference choice is our top
            // token or within the Q4 tolerance of it (decode steps use the 8-bit kernels, and
            // near-ties may flip, as they do in llama.cpp).
            let mut ours = Vec::new();
            for &r in &want_greedy {
                let l = step.to_vec1::<f32>().unwrap();
                let top = pick(&l, 0.0, &mut Rng(0));
                ours.push(top);
                let gap = l[top as usize] - l[r as usize];
                assert!(
                    gap < 0.3,
                    "reference token {r} is {gap} below our top {top}"
                );
                step = g.model.forward(&[r], &mut cache).unwrap();
            }
            // Free-running greedy agrees with the reference up to the first flip, and that flip is
            // where the teacher-forced run saw one.
            let agree = ours
                .iter()
                .zip(&want_greedy)
                .take_while(|(a, b)| a == b)
                .count();
            let min = reference["greedy_agree_min"].as_u64().unwrap_or(8) as usize;
            assert!(
                agree >= min.min(want_greedy.len()),
                "{ours:?} vs {want_greedy:?}"
            );
            let params = GenParams {
                max_tokens: want_greedy.len(),
                temperature: 0.0,
                seed: 0,
            };
            let mut streamed = String::new();
            let out = g
                .generate(&ids, &params, |_, delta, _| {
                    streamed.push_str(delta);
                    true
                })
                .unwrap();
            eprintln!("greedy {:?} agree {agree}", out.tokens);
            assert_eq!(out.tokens[..agree], want_greedy[..agree], "{:?}", out.text);
            assert_eq!(out.text, streamed);
            assert_eq!(out.text, g.tokenizer.decode(&out.tokens));
        }
        // Stopping from the callback ends the generation after that token.
        let ids = g.encode("The capital of France is");
        let params = GenParams {
            max_tokens: 8,
            temperature: 0.0,
            seed: 0,
        };
        let mut n = 0;
        let stopped = g
            .generate(&ids, &params, |_, _, _| {
                n += 1;
                n < 3
            })
            .unwrap();
        assert_eq!(stopped.finish, Finish::Cancelled);
        assert_eq!(stopped.tokens.len(), 3);
    }
}
