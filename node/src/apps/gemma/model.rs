//! The Gemma 3 forward pass on candle ops, over the GGUF's tensors.
//!
//! Written here because candle-transformers' `quantized_gemma3` computes a different function (SiLU
//! instead of GELU-tanh in the MLP, and a KV cache that ignores the sliding window; see
//! ../shared/models.md §2). Gemma 3 as Hugging Face defines it:
//! - embeddings scaled by sqrt(hidden); the output head is the (tied) embedding matrix;
//! - per layer: RMSNorm → q/k/v → per-head RMSNorm of q and k → rope → attention (scale
//!   1/sqrt(head_dim), grouped KV heads) → output projection → RMSNorm → residual; then RMSNorm →
//!   `down(gelu_tanh(gate(x)) * up(x))` → RMSNorm → residual;
//! - every 6th layer is global (rope base 1 000 000, full causal attention); the others are local
//!   (rope base 10 000, each query sees the last `sliding_window` positions, itself included).
//!
//! The GGUF conversion already folded Gemma's `1 + w` into the norm weights.
//!
//! Precision: prefill chunks (more than one token) multiply by f32 dequantizations of the layer
//! weights; single-token decode steps use the quantized kernels. candle's quantized CPU matmul
//! rounds its input rows to 8 bits (Q8_0 / Q8_K blocks) before the integer dot products, like
//! ggml. That is a ~0.5% error per product, and this model amplifies it at some positions of a
//! long prompt (in the float64 model, layer 4's MLP has a gain of ~14 at position 680 of the
//! 681-token reference case, ~4.5 at most others): there the 8-bit path put the last logits
//! ~2.6 below the float64 reference, while f32 products match it to 1e-4 (docs/RUNNERS.md,
//! "Precision").

use std::sync::Arc;

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

type Result<T> = std::result::Result<T, String>;

fn ce(what: &'static str) -> impl Fn(candle_core::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Every `GLOBAL_EVERY`-th layer (1-based) attends globally.
const GLOBAL_EVERY: usize = 6;
const ROPE_BASE_LOCAL: f64 = 10_000.0;
const ROPE_BASE_GLOBAL_DEFAULT: f64 = 1_000_000.0;
/// Tokens per prefill forward pass: bounds the attention scores of one pass (heads × chunk × keys).
pub const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub sliding_window: usize,
    pub context: usize,
    pub rope_base_global: f64,
    pub eps: f64,
}

impl Config {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| {
            md.get(&format!("gemma3.{k}"))
                .ok_or_else(|| format!("GGUF has no gemma3.{k}"))
        };
        let int = |k: &str| -> Result<usize> {
            let v = get(k)?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| format!("gemma3.{k}: {e}"))
        };
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "gemma3" {
            return Err(format!("GGUF architecture is {arch:?}, not gemma3"));
        }
        let c = Self {
            layers: int("block_count")?,
            hidden: int("embedding_length")?,
            heads: int("attention.head_count")?,
            kv_heads: int("attention.head_count_kv")?,
            head_dim: int("attention.key_length")?,
            sliding_window: int("attention.sliding_window")?,
            context: int("context_length")?,
            rope_base_global: get("rope.freq_base")
                .and_then(|v| v.to_f32().map_err(|e| e.to_string()))
                .map(f64::from)
                .unwrap_or(ROPE_BASE_GLOBAL_DEFAULT),
            eps: get("attention.layer_norm_rms_epsilon")
                .and_then(|v| v.to_f32().map_err(|e| e.to_string()))
                .map(f64::from)
                .unwrap_or(1e-6),
        };
        if c.kv_heads == 0
            || !c.heads.is_multiple_of(c.kv_heads)
            || !c.head_dim.is_multiple_of(2)
            || c.sliding_window == 0
        {
            return Err(format!("unsupported Gemma 3 shape {c:?}"));
        }
        Ok(c)
    }

    pub fn is_global(&self, layer: usize) -> bool {
        (layer + 1).is_multiple_of(GLOBAL_EVERY)
    }
}

/// One projection, `(out, in)`: the quantized weight for decode steps and its f32 dequantization
/// for prefill chunks (see the module note on precision).
struct Linear {
    quantized: QMatMul,
    f32: Tensor,
}

impl Linear {
    fn new(t: QTensor, device: &Device) -> Result<Self> {
        let f32 = t.dequantize(device).map_err(ce("dequantize"))?;
        let quantized = QMatMul::from_qtensor(t).map_err(ce("matmul"))?;
        Ok(Self { quantized, f32 })
    }

    /// `x`: `(rows, in)` → `(rows, out)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.dim(0)? > 1 {
            x.matmul(&self.f32.t()?)
        } else {
            self.quantized.forward(x)
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    q_norm: Tensor,
    k_norm: Tensor,
    o: Linear,
    post_attn_norm: Tensor,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Tensor,
}

/// The loaded weights; shared by every generation (the per-generation state is a [`Cache`]).
pub struct Model {
    pub config: Config,
    embed: Arc<QTensor>,
    head: QMatMul,
    layers: Vec<Layer>,
    final_norm: Tensor,
    device: Device,
}

/// Keys and values of one generation: per layer `(kv_heads, positions, head_dim)`. Local layers keep
/// only the last `sliding_window - 1` positions (all a later query can see).
pub struct Cache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Positions processed so far.
    pub pos: usize,
}

impl Model {
    pub fn load<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = Config::from_gguf(content)?;
        let mut qt = |name: &str| -> Result<QTensor> {
            content
                .tensor(reader, name, device)
                .map_err(|e| format!("tensor {name}: {e}"))
        };
        let embed = Arc::new(qt("token_embd.weight")?);
        let head = QMatMul::from_arc(embed.clone()).map_err(ce("output head"))?;
        let mut layers = Vec::with_capacity(config.layers);
        let r = |q: QTensor| -> Result<Tensor> { q.dequantize(device).map_err(ce("norm")) };
        for l in 0..config.layers {
            let mut mm = |n: &str| -> Result<Linear> {
                let t = qt(&format!("blk.{l}.{n}.weight"))?;
                Linear::new(t, device)
            };
            let q = mm("attn_q")?;
            let k = mm("attn_k")?;
            let v = mm("attn_v")?;
            let o = mm("attn_output")?;
            let gate = mm("ffn_gate")?;
            let up = mm("ffn_up")?;
            let down = mm("ffn_down")?;
            let mut norm = |n: &str| -> Result<Tensor> { r(qt(&format!("blk.{l}.{n}.weight"))?) };
            layers.push(Layer {
                attn_norm: norm("attn_norm")?,
                q_norm: norm("attn_q_norm")?,
                k_norm: norm("attn_k_norm")?,
                post_attn_norm: norm("post_attention_norm")?,
                ffn_norm: norm("ffn_norm")?,
                post_ffn_norm: norm("post_ffw_norm")?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let final_norm = r(qt("output_norm.weight")?)?;
        Ok(Self {
            config,
            embed,
            head,
            layers,
            final_norm,
            device: device.clone(),
        })
    }

    pub fn new_cache(&self) -> Cache {
        Cache {
            kv: vec![None; self.config.layers],
            pos: 0,
        }
    }

    /// cos and sin of the rope angles for positions `pos..pos + n`, `(n, head_dim / 2)` each.
    /// Angles in f64: at positions in the tens of thousands f32 loses the phase.
    fn rope_tables(&self, base: f64, pos: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let half = self.config.head_dim / 2;
        let d = self.config.head_dim as f64;
        let inv: Vec<f64> = (0..half)
            .map(|i| base.powf(-((2 * i) as f64) / d))
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in pos..pos + n {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), &self.device).map_err(ce("rope"))?;
        let sin = Tensor::from_vec(sin, (n, half), &self.device).map_err(ce("rope"))?;
        Ok((cos, sin))
    }

    /// Additive mask `(rows, keys)` for `t` new queries at positions `pos..pos + t`, repeated for
    /// `rep` heads, against `keys` cached+new keys ending at position `pos + t - 1`.
    fn mask(
        &self,
        rep: usize,
        t: usize,
        keys: usize,
        pos: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let first_key = pos + t - keys;
        let mut m = Vec::with_capacity(rep * t * keys);
        for _ in 0..rep {
            for i in 0..t {
                let q = pos + i;
                for j in 0..keys {
                    let k = first_key + j;
                    let visible = k <= q && window.is_none_or(|w| q - k < w);
                    m.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        Tensor::from_vec(m, (rep * t, keys), &self.device).map_err(ce("mask"))
    }

    /// Runs `ids` (the next tokens of the sequence in `cache`) through the model and returns the
    /// logits of the last one, `(vocab,)`. Long inputs go in chunks of [`PREFILL_CHUNK`].
    pub fn forward(&self, ids: &[u32], cache: &mut Cache) -> Result<Tensor> {
        if ids.is_empty() {
            return Err("no tokens to run".into());
        }
        if cache.pos + ids.len() > self.config.context {
            return Err(format!(
                "{} tokens exceed the model's context of {}",
                cache.pos + ids.len(),
                self.config.context
            ));
        }
        let mut last = None;
        for chunk in ids.chunks(PREFILL_CHUNK) {
            last = Some(self.forward_chunk(chunk, cache)?);
        }
        last.ok_or_else(|| "no tokens to run".into())
    }

    fn forward_chunk(&self, ids: &[u32], cache: &mut Cache) -> Result<Tensor> {
        let c = &self.config;
        let t = ids.len();
        let pos = cache.pos;
        let eps = c.eps as f32;
        let ids_t = Tensor::new(ids, &self.device).map_err(ce("ids"))?;
        let mut x = self
            .embed
            .embedding(&ids_t)
            .and_then(|e| e * (c.hidden as f64).sqrt())
            .map_err(ce("embedding"))?; // (t, hidden)
        let local = self.rope_tables(ROPE_BASE_LOCAL, pos, t)?;
        let global = self.rope_tables(c.rope_base_global, pos, t)?;
        let rep = c.heads / c.kv_heads;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let is_global = c.is_global(l);
            let (cos, sin) = if is_global { &global } else { &local };
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps).map_err(ce("norm"))?;
            let q = layer.q.forward(&h).map_err(ce("q"))?;
            let k = layer.k.forward(&h).map_err(ce("k"))?;
            let v = layer.v.forward(&h).map_err(ce("v"))?;
            // (t, heads * d) → per-head norm → (1, heads, t, d) for rope.
            let heads =
                |x: Tensor, n: usize, norm: Option<&Tensor>| -> candle_core::Result<Tensor> {
                    let x = x.reshape((t, n, c.head_dim))?;
                    let x = match norm {
                        Some(w) => candle_nn::ops::rms_norm(&x, w, eps)?,
                        None => x,
                    };
                    x.transpose(0, 1)?.contiguous()?.unsqueeze(0)
                };
            let q = heads(q, c.heads, Some(&layer.q_norm))
                .and_then(|q| candle_nn::rotary_emb::rope(&q, cos, sin))
                .map_err(ce("q rope"))?;
            let k = heads(k, c.kv_heads, Some(&layer.k_norm))
                .and_then(|k| candle_nn::rotary_emb::rope(&k, cos, sin))
                .and_then(|k| k.squeeze(0))
                .map_err(ce("k rope"))?;
            let v = heads(v, c.kv_heads, None)
                .and_then(|v| v.squeeze(0))
                .map_err(ce("v"))?;
            let (k, v) = match cache.kv[l].take() {
                Some((pk, pv)) => (
                    Tensor::cat(&[&pk, &k], 1).map_err(ce("cache"))?,
                    Tensor::cat(&[&pv, &v], 1).map_err(ce("cache"))?,
                ),
                None => (k, v),
            };
            let keys = k.dim(1).map_err(ce("cache"))?;
            // Heads sharing a KV head become rows of one matmul: (kv, rep * t, d).
            let q = q
                .reshape((c.kv_heads, rep * t, c.head_dim))
                .map_err(ce("q"))?;
            let mut scores = q
                .matmul(&k.t().map_err(ce("k"))?)
                .and_then(|s| s * scale)
                .map_err(ce("scores"))?; // (kv, rep * t, keys)
            let window = (!is_global).then_some(c.sliding_window);
            // One new token and a trimmed cache: every key is visible, no mask needed.
            if t > 1 || window.is_some_and(|w| keys > w) {
                let mask = self.mask(rep, t, keys, pos, window)?;
                scores = scores.broadcast_add(&mask).map_err(ce("mask"))?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores).map_err(ce("softmax"))?;
            let a = probs
                .matmul(&v)
                .and_then(|a| a.reshape((c.heads, t, c.head_dim)))
                .and_then(|a| a.transpose(0, 1))
                .and_then(|a| a.reshape((t, c.heads * c.head_dim)))
                .map_err(ce("attention"))?;
            let a = layer.o.forward(&a).map_err(ce("o"))?;
            let a = candle_nn::ops::rms_norm(&a, &layer.post_attn_norm, eps).map_err(ce("norm"))?;
            x = (x + a).map_err(ce("residual"))?;
            // Keep what later queries can see.
            let keep = match window {
                Some(w) => keys.min(w - 1),
                None => keys,
            };
            let (k, v) = if keep < keys {
                (
                    k.narrow(1, keys - keep, keep).map_err(ce("cache"))?,
                    v.narrow(1, keys - keep, keep).map_err(ce("cache"))?,
                )
            } else {
                (k, v)
            };
            cache.kv[l] = Some((k, v));

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps).map_err(ce("norm"))?;
            let g = layer
                .gate
                .forward(&h)
                .and_then(|g| g.gelu())
                .map_err(ce("gate"))?;
            let u = layer.up.forward(&h).map_err(ce("up"))?;
            let m = layer
                .down
                .forward(&(g * u).map_err(ce("mlp"))?)
                .map_err(ce("down"))?;
            let m = candle_nn::ops::rms_norm(&m, &layer.post_ffn_norm, eps).map_err(ce("norm"))?;
            x = (x + m).map_err(ce("residual"))?;
        }
        cache.pos += t;
        let last = x.narrow(0, t - 1, 1).map_err(ce("last"))?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, eps).map_err(ce("norm"))?;
        self.head
            .forward(&last)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_dtype(DType::F32))
            .map_err(ce("output head"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let n = |t: &Tensor| {
            t.sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.to_scalar::<f32>())
                .unwrap()
                .sqrt()
        };
        n(&(a - b).unwrap()) / n(b)
    }

    /// Evidence for the precision note at the top: candle's quantized matmul is not wrong at
    /// prefill sizes. On one weight of each kernel family this model hits (Q5_0: generic path;
    /// Q4_K: repacked AVX-512, AMX from 32 rows where present; Q6_K: repacked from 2 rows) the
    /// product over many rows equals the row-by-row one, and both sit ~0.5-1% from the f32
    /// product: the 8-bit rounding of the input rows, the same at every size. Needs the weights
    /// (RUNMESH_MODELS_DIR).
    #[test]
    fn quantized_matmul_does_not_depend_on_the_row_count() {
        let Some(dir) = std::env::var_os("RUNMESH_MODELS_DIR") else {
            eprintln!("skipping: RUNMESH_MODELS_DIR is not set");
            return;
        };
        let path = std::path::Path::new(&dir).join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
        if !path.exists() {
            eprintln!("skipping: no {}", path.display());
            return;
        }
        let mut f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let content = gguf_file::Content::read(&mut f).unwrap();
        let dev = Device::Cpu;
        for name in [
            "blk.0.attn_q.weight",
            "blk.0.attn_output.weight",
            "blk.0.ffn_down.weight",
        ] {
            let t = content.tensor(&mut f, name, &dev).unwrap();
            let dtype = t.dtype();
            let lin = Linear::new(t, &dev).unwrap();
            let k = lin.f32.dim(1).unwrap();
            for m in [31, 32, 681] {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let batched = lin.quantized.forward(&x).unwrap();
                let rows: Vec<Tensor> = (0..m)
                    .map(|i| lin.quantized.forward(&x.narrow(0, i, 1).unwrap()).unwrap())
                    .collect();
                let rows = Tensor::cat(&rows, 0).unwrap();
                let exact = lin.forward(&x).unwrap();
                let (vs_rows, vs_f32) = (rel_err(&batched, &rows), rel_err(&batched, &exact));
                eprintln!("{name} {dtype:?} m={m}: vs rows {vs_rows:.1e}, vs f32 {vs_f32:.1e}");
                assert!(vs_rows < 1e-5, "{name} m={m}: {vs_rows}");
                assert!(vs_f32 < 2e-2, "{name} m={m}: {vs_f32}");
                assert!(rel_err(&rows, &exact) < 2e-2);
            }
        }
    }
}
