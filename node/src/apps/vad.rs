//! `runmesh/silero-vad`: voice activity detection with Silero VAD 6.2.3 on candle.
//!
//! `{"audio": <data: URI or URL of a 16 kHz mono WAV>, "threshold", "min_speech_ms", "min_silence_ms",
//! "speech_pad_ms"}` → `{"segments": [{"start", "end"}] (seconds), "probabilities": [one per 32 ms
//! chunk], "sample_rate": 16000, "duration": s}`.
//!
//! The model, per 512-sample chunk (what the shipped `silero_vad_16k_op15.onnx` computes, with the
//! weights read from that file): the chunk with the 64 samples before it → reflect-pad 64 on the right →
//! STFT as a conv1d (258 filters, 256 wide, stride 128) → magnitude of (129 real, 129 imaginary) →
//! 4 × (conv1d k3 p1, strides 1,2,2,1, + ReLU) → LSTMCell(128) carried from chunk to chunk (PyTorch gate
//! order i, f, g, o) → ReLU → 1×1 conv → sigmoid. Everything before the LSTM is independent per chunk,
//! so it runs batched over [`BATCH_CHUNKS`] chunks; only the recurrence steps chunk by chunk.
//! Segments follow silero's `get_speech_timestamps` (without `max_speech_duration_s`).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use runmesh_proto::fal::FieldError;
use runmesh_proto::ErrorType;
use serde_json::{json, Value};

use super::audio::{self, AudioError, SAMPLE_RATE};
use super::fields;
use super::model_app::{ModelApp, ModelHome};
use super::models::{PinnedModel, SILERO_VAD};
use super::onnx;
use super::{App, AppError, AppFuture, AppManifest, JobContext};

pub const MODEL_NAME: &str = "silero-vad";
pub const ONNX_FILE: &str = "silero_vad_16k_op15.onnx";
/// Samples per chunk at 16 kHz (32 ms): one probability each.
pub const CHUNK: usize = 512;
/// Samples of the previous chunk the model sees before each chunk.
pub const CONTEXT: usize = 64;
const WINDOW: usize = CONTEXT + CHUNK;
/// Right reflect-padding before the STFT.
const PAD: usize = 64;
const HIDDEN: usize = 128;
/// Chunks per batched encoder pass (≈ 2 s of audio): the unit of progress and cancellation.
pub const BATCH_CHUNKS: usize = 64;
/// Host memory of a loaded instance (1.3 MB of weights; activations are per job).
pub const MEMORY_MB: u64 = 8;

const WEIGHT_NAMES: [&str; 15] = [
    "model.stft.forward_basis_buffer",
    "model.encoder.0.reparam_conv.weight",
    "model.encoder.0.reparam_conv.bias",
    "model.encoder.1.reparam_conv.weight",
    "model.encoder.1.reparam_conv.bias",
    "model.encoder.2.reparam_conv.weight",
    "model.encoder.2.reparam_conv.bias",
    "model.encoder.3.reparam_conv.weight",
    "model.encoder.3.reparam_conv.bias",
    "model.decoder.rnn.weight_ih",
    "model.decoder.rnn.weight_hh",
    "model.decoder.rnn.bias_ih",
    "model.decoder.rnn.bias_hh",
    "model.decoder.decoder.2.weight",
    "model.decoder.decoder.2.bias",
];

fn err(what: &str) -> impl Fn(candle_core::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A loaded model: what the app keeps warm, and what the benchmark calls directly.
pub struct Vad {
    stft: Tensor,
    /// (weight, bias as (out, 1) for broadcasting, stride) of the four encoder convolutions.
    convs: Vec<(Tensor, Tensor, usize)>,
    /// LSTM input weights transposed, (128, 512), and both biases summed, (512,).
    w_ih_t: Tensor,
    bias: Tensor,
    /// LSTM hidden weights transposed, (128, 512).
    w_hh_t: Tensor,
    /// The 1×1 output conv as a (128, 1) matrix and its bias.
    out_w: Tensor,
    out_b: Tensor,
    device: Device,
}

/// The LSTM state carried from chunk to chunk of one clip.
pub struct VadState {
    h: Tensor,
    c: Tensor,
}

impl Vad {
    /// Loads the weights of `dir` (a `runmesh models fetch silero-vad` output) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, String> {
        let path = dir.join(ONNX_FILE);
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut w = onnx::initializers(&bytes).map_err(|e| format!("{ONNX_FILE}: {e}"))?;
        let mut take = |name: &str| -> Result<Tensor, String> {
            let t = w
                .remove(name)
                .ok_or_else(|| format!("{ONNX_FILE} has no tensor {name}"))?;
            Tensor::from_vec(t.data, t.dims, device).map_err(|e| format!("{name}: {e}"))
        };
        let mut t: Vec<Tensor> = Vec::with_capacity(WEIGHT_NAMES.len());
        for name in WEIGHT_NAMES {
            t.push(take(name)?);
        }
        let mut t = t.into_iter();
        let mut next = || t.next().ok_or_else(|| "weights: short list".to_string());
        let stft = next()?;
        let mut convs = Vec::new();
        for stride in [1, 2, 2, 1] {
            let weight = next()?;
            let bias = next()?.unsqueeze(1).map_err(err("conv bias"))?;
            convs.push((weight, bias, stride));
        }
        let w_ih_t = next()?
            .t()
            .and_then(|x| x.contiguous())
            .map_err(err("w_ih"))?;
        let w_hh_t = next()?
            .t()
            .and_then(|x| x.contiguous())
            .map_err(err("w_hh"))?;
        let bias = (next()? + next()?).map_err(err("lstm bias"))?;
        let out_w = next()?
            .reshape((1, HIDDEN))
            .and_then(|x| x.t())
            .map_err(err("out"))?;
        let out_b = next()?;
        let expect = |t: &Tensor, dims: &[usize], what: &str| {
            if t.dims() == dims {
                Ok(())
            } else {
                Err(format!(
                    "{what} has shape {:?}, expected {dims:?}",
                    t.dims()
                ))
            }
        };
        expect(&stft, &[258, 1, 256], "stft basis")?;
        expect(&w_ih_t, &[HIDDEN, 4 * HIDDEN], "lstm weight_ih")?;
        expect(&w_hh_t, &[HIDDEN, 4 * HIDDEN], "lstm weight_hh")?;
        Ok(Self {
            stft,
            convs,
            w_ih_t,
            bias,
            w_hh_t,
            out_w: out_w.contiguous().map_err(err("out"))?,
            out_b,
            device: device.clone(),
        })
    }

    /// A zero state: the start of a clip.
    pub fn initial_state(&self) -> Result<VadState, String> {
        let z = Tensor::zeros((1, HIDDEN), candle_core::DType::F32, &self.device)
            .map_err(err("state"))?;
        Ok(VadState { h: z.clone(), c: z })
    }

    /// Speech probability of every 512-sample chunk of `samples` (the last one zero-padded).
    pub fn probabilities(&self, samples: &[f32]) -> Result<Vec<f32>, String> {
        let mut state = self.initial_state()?;
        let n = chunk_count(samples.len());
        let mut out = Vec::with_capacity(n);
        for first in (0..n).step_by(BATCH_CHUNKS) {
            let count = BATCH_CHUNKS.min(n - first);
            out.extend(self.run_chunks(samples, first, count, &mut state)?);
        }
        Ok(out)
    }

    /// Probabilities of chunks `first..first + count` of `samples`, advancing `state`. Chunks must be
    /// run in order from 0 for the state to be right.
    pub fn run_chunks(
        &self,
        samples: &[f32],
        first: usize,
        count: usize,
        state: &mut VadState,
    ) -> Result<Vec<f32>, String> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let x = windows(samples, first, count);
        let x =
            Tensor::from_vec(x, (count, 1, WINDOW + PAD), &self.device).map_err(err("input"))?;
        let features = self.encode(&x).map_err(err("encoder"))?;
        let (probs, h, c) = self
            .decode(&features, &state.h, &state.c)
            .map_err(err("decoder"))?;
        state.h = h;
        state.c = c;
        probs.to_vec1::<f32>().map_err(err("output"))
    }

    /// (n, 1, 640) padded windows → (n, 128) features.
    fn encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let spec = x.conv1d(&self.stft, 0, 128, 1, 1)?; // (n, 258, 4)
        let half = 129;
        let re = spec.narrow(1, 0, half)?;
        let im = spec.narrow(1, half, half)?;
        let mut h = (re.sqr()? + im.sqr()?)?.sqrt()?; // (n, 129, 4)
        for (w, b, stride) in &self.convs {
            h = h.conv1d(w, 1, *stride, 1, 1)?.broadcast_add(b)?.relu()?;
        }
        // (n, 128, 1) → (n, 128)
        h.squeeze(D::Minus1)
    }

    /// The LSTM over the chunks in order, then the output head: (n,) probabilities and the last state.
    fn decode(
        &self,
        features: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let n = features.dim(0)?;
        // The input half of every gate for all chunks at once.
        let gx = features.matmul(&self.w_ih_t)?.broadcast_add(&self.bias)?; // (n, 512)
        let (mut h, mut c) = (h0.clone(), c0.clone());
        let mut hs = Vec::with_capacity(n);
        for i in 0..n {
            let g = (gx.narrow(0, i, 1)? + h.matmul(&self.w_hh_t)?)?; // (1, 512)
            let gate = |k: usize| g.narrow(1, k * HIDDEN, HIDDEN);
            let (ig, fg, gg, og) = (gate(0)?, gate(1)?, gate(2)?, gate(3)?);
            let ig = candle_nn::ops::sigmoid(&ig)?;
            let fg = candle_nn::ops::sigmoid(&fg)?;
            let og = candle_nn::ops::sigmoid(&og)?;
            c = ((fg * &c)? + (ig * gg.tanh()?)?)?;
            h = (og * c.tanh()?)?;
            hs.push(h.clone());
        }
        let hs = Tensor::cat(&hs, 0)?.relu()?; // (n, 128)
        let logits = hs.matmul(&self.out_w)?.broadcast_add(&self.out_b)?; // (n, 1)
        let probs = candle_nn::ops::sigmoid(&logits)?.squeeze(1)?;
        Ok((probs, h, c))
    }
}

/// Chunks of a clip of `len` samples (the last one is zero-padded).
pub fn chunk_count(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

/// The model inputs of chunks `first..first + count`: each the 64 samples before the chunk (zeros
/// before the clip), the chunk (zero-padded past the end), and 64 samples of right reflect padding
/// (`x[L-2-j]`, as torch's and ONNX's `reflect` mode).
fn windows(samples: &[f32], first: usize, count: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(count * (WINDOW + PAD));
    for k in first..first + count {
        let start = (k * CHUNK) as isize - CONTEXT as isize;
        let from = out.len();
        for j in 0..WINDOW as isize {
            let i = start + j;
            let v = if i < 0 {
                0.0
            } else {
                samples.get(i as usize).copied().unwrap_or(0.0)
            };
            out.push(v);
        }
        for j in 0..PAD {
            let v = out[from + WINDOW - 2 - j];
            out.push(v);
        }
    }
    out
}

/// Options of `get_speech_timestamps` that the app takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegmentParams {
    /// Speech starts at a probability ≥ this.
    pub threshold: f32,
    /// Segments this short or shorter are dropped.
    pub min_speech_ms: u32,
    /// Silence must last this long to end a segment.
    pub min_silence_ms: u32,
    /// Each segment is widened by this much on both sides (less where two would meet).
    pub speech_pad_ms: u32,
}

impl Default for SegmentParams {
    /// silero's defaults.
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_speech_ms: 250,
            min_silence_ms: 100,
            speech_pad_ms: 30,
        }
    }
}

/// Speech segments, as `(start, end)` sample offsets, from per-chunk probabilities of a clip of
/// `len` samples: silero's `get_speech_timestamps` rules (hysteresis: speech starts at ≥ threshold
/// and ends after `min_silence_ms` below threshold − 0.15; short segments dropped; padding).
pub fn segments(probs: &[f32], len: usize, p: &SegmentParams) -> Vec<(usize, usize)> {
    let per_ms = SAMPLE_RATE as usize / 1000;
    let min_speech = p.min_speech_ms as usize * per_ms;
    let min_silence = p.min_silence_ms as usize * per_ms;
    let pad = p.speech_pad_ms as usize * per_ms;
    let neg = (p.threshold - 0.15).max(0.01);
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut start: Option<usize> = None;
    let mut silence_from: Option<usize> = None;
    for (i, &prob) in probs.iter().enumerate() {
        let at = i * CHUNK;
        if prob >= p.threshold {
            silence_from = None;
            if start.is_none() {
                start = Some(at);
                continue;
            }
        }
        let Some(s) = start else { continue };
        if prob < neg {
            let from = *silence_from.get_or_insert(at);
            if at - from < min_silence {
                continue;
            }
            if from - s > min_speech {
                out.push((s, from));
            }
            start = None;
            silence_from = None;
        }
    }
    if let Some(s) = start {
        if len.saturating_sub(s) > min_speech {
            out.push((s, len));
        }
    }
    let n = out.len();
    for i in 0..n {
        if i == 0 {
            out[0].0 = out[0].0.saturating_sub(pad);
        }
        if i + 1 < n {
            let gap = out[i + 1].0 - out[i].1;
            if gap < 2 * pad {
                out[i].1 += gap / 2;
                out[i + 1].0 -= gap / 2;
            } else {
                out[i].1 = (out[i].1 + pad).min(len);
                out[i + 1].0 -= pad;
            }
        } else {
            out[i].1 = (out[i].1 + pad).min(len);
        }
    }
    out
}

/// The app; one instance serves every job and shares the loaded model through the warm pool.
pub struct VadApp {
    home: ModelHome,
}

pub fn input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "audio": {
                "type": "string",
                "minLength": 1,
                "description": "A mono WAV file (16-bit PCM or 32-bit float, 16 kHz or a multiple) as a \
                    data: URI (data:audio/wav;base64,...) or an http(s) URL."
            },
            "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                "description": "Speech probability at or above which speech starts (default 0.5)."},
            "min_speech_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000,
                "description": "Shorter segments are dropped (default 250)."},
            "min_silence_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000,
                "description": "Silence that ends a segment (default 100)."},
            "speech_pad_ms": {"type": "integer", "minimum": 0, "maximum": 60_000,
                "description": "Padding added on each side of a segment (default 30)."}
        },
        "required": ["audio"]
    })
}

pub fn output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "segments": {"type": "array", "items": {"type": "object", "properties": {
                "start": {"type": "number"}, "end": {"type": "number"}}}},
            "probabilities": {"type": "array", "items": {"type": "number"}},
            "sample_rate": {"type": "integer"},
            "duration": {"type": "number"}
        },
        "required": ["segments", "probabilities", "sample_rate"]
    })
}

/// A 422 with fal's `detail`, about one field.
fn unprocessable(e: &AudioError) -> AppError {
    AppError::new(ErrorType::BadRequest, e.msg.clone())
        .with_status(422)
        .with_detail(json!([e.field_error("audio")]))
}

fn params(input: &Value) -> Result<SegmentParams, Vec<FieldError>> {
    let mut errors = Vec::new();
    let d = SegmentParams::default();
    let ms = |field: &str, max: i64, default: u32, errors: &mut Vec<FieldError>| {
        fields::int_in_range(input, field, 0, max, errors).map_or(default, |v| v as u32)
    };
    let p = SegmentParams {
        threshold: input
            .get("threshold")
            .and_then(Value::as_f64)
            .map_or(d.threshold, |t| t as f32),
        min_speech_ms: ms("min_speech_ms", 3_600_000, d.min_speech_ms, &mut errors),
        min_silence_ms: ms("min_silence_ms", 3_600_000, d.min_silence_ms, &mut errors),
        speech_pad_ms: ms("speech_pad_ms", 60_000, d.speech_pad_ms, &mut errors),
    };
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors)
    }
}

/// 16 kHz samples of a WAV file's bytes.
fn decode(bytes: &[u8]) -> Result<Vec<f32>, AudioError> {
    audio::parse_wav(bytes)?.to_16k()
}

impl ModelApp for VadApp {
    type Model = Vad;
    const MODEL: &'static PinnedModel = &SILERO_VAD;
    const DISPLAY: &'static str = "Silero VAD";
    const MEMORY_MB: u64 = MEMORY_MB;

    fn load(dir: &Path, device: &Device) -> Result<Vad, String> {
        Vad::load(dir, device)
    }

    fn from_home(home: ModelHome) -> Self {
        Self { home }
    }

    fn home(&self) -> &ModelHome {
        &self.home
    }
}

impl App for VadApp {
    fn manifest(&self) -> AppManifest {
        AppManifest::new(
            Self::app_id(),
            "Voice activity detection (Silero VAD 6.2.3): speech segments and 32 ms probabilities.",
        )
        .with_models([MODEL_NAME])
        .with_input_schema(input_schema())
        .with_output_schema(output_schema())
        .with_cost(Self::MEMORY_MB, 0, 20)
    }

    /// Range checks the schema cannot say, and a data: URI's WAV header (so a wrong format is a 422 at
    /// submit time; URLs are only fetched when the job runs).
    fn validate(&self, _subpath: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>> {
        params(input)?;
        if let Some(uri) = input.get("audio").and_then(Value::as_str) {
            if uri.starts_with("data:") {
                audio::decode_data_uri(uri)
                    .and_then(|b| decode(&b))
                    .map_err(|e| vec![e.field_error("audio")])?;
            } else {
                audio::check_url(uri, self.home.outbound.policy())
                    .map_err(|e| vec![e.field_error("audio")])?;
            }
        }
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
            let p = params(&input).map_err(|e| {
                AppError::new(ErrorType::BadRequest, "invalid input")
                    .with_status(422)
                    .with_detail(json!(e))
            })?;
            let url = input
                .get("audio")
                .and_then(Value::as_str)
                .ok_or_else(|| AppError::runner("input has no `audio` string"))?;
            let bytes = audio::load(url, &ctx, &home.outbound)
                .await
                .map_err(|e| unprocessable(&e))?;
            let samples = Arc::new(decode(&bytes).map_err(|e| unprocessable(&e))?);
            drop(bytes);
            let len = samples.len();
            let n = chunk_count(len);
            ctx.info(format!(
                "{:.2} s of audio, {n} chunks of 32 ms",
                len as f64 / f64::from(SAMPLE_RATE)
            ));

            let (_permit, model) = home.start::<Self>(&ctx).await?;
            let mut state = model.initial_state().map_err(AppError::runner)?;
            let mut probs: Vec<f32> = Vec::with_capacity(n);
            for first in (0..n).step_by(BATCH_CHUNKS) {
                if ctx.is_cancelled() {
                    return Err(AppError::cancelled());
                }
                let count = BATCH_CHUNKS.min(n - first);
                let (m, s) = (model.clone(), samples.clone());
                let (batch, next) = tokio::task::spawn_blocking(move || {
                    let mut st = state;
                    m.run_chunks(&s, first, count, &mut st).map(|p| (p, st))
                })
                .await
                .map_err(|e| AppError::runner(format!("vad task: {e}")))?
                .map_err(AppError::runner)?;
                state = next;
                probs.extend(batch);
                if n > BATCH_CHUNKS {
                    ctx.progress(probs.len() as u64, n as u64);
                }
            }
            let rate = f64::from(SAMPLE_RATE);
            let segs: Vec<Value> = segments(&probs, len, &p)
                .into_iter()
                .map(|(s, e)| json!({"start": s as f64 / rate, "end": e as f64 / rate}))
                .collect();
            ctx.info(format!("{} speech segments", segs.len()));
            Ok(json!({
                "segments": segs,
                "probabilities": probs,
                "sample_rate": SAMPLE_RATE,
                "duration": len as f64 / rate,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::apps::pool::WarmPool;
    use crate::apps::schema;

    #[test]
    fn windows_carry_context_and_reflect_pad() {
        let s: Vec<f32> = (1..=1100).map(|i| i as f32).collect();
        let w = windows(&s, 0, 3);
        assert_eq!(w.len(), 3 * 640);
        // Chunk 0: 64 zeros of context, then samples 1..=512, then reflection of 511, 510, ...
        assert!(w[..64].iter().all(|&v| v == 0.0));
        assert_eq!(w[64], 1.0);
        assert_eq!(w[575], 512.0);
        assert_eq!(w[576], 511.0);
        assert_eq!(w[639], 448.0);
        // Chunk 1: context is samples 449..=512.
        assert_eq!(w[640], 449.0);
        assert_eq!(w[640 + 64], 513.0);
        // Chunk 2 runs past the end: zero padded, and the reflection reflects the zeros.
        let c2 = &w[1280..];
        assert_eq!(c2[64], 1025.0);
        assert_eq!(c2[64 + 75], 1100.0);
        assert_eq!(c2[64 + 76], 0.0);
        assert!(c2[576..].iter().all(|&v| v == 0.0));
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(512), 1);
        assert_eq!(chunk_count(513), 2);
    }

    fn probs_of(pattern: &str) -> Vec<f32> {
        pattern
            .chars()
            .map(|c| match c {
                '#' => 0.9,
                '~' => 0.4, // between the two thresholds: keeps speech going, never starts it
                _ => 0.05,
            })
            .collect()
    }

    #[test]
    fn segments_follow_get_speech_timestamps() {
        let p = SegmentParams::default();
        let at = |chunks: usize| chunks * CHUNK;
        // 10 chunks silence, 20 speech, 10 silence: one segment, padded by 480 samples.
        let probs = probs_of(&format!(
            "{}{}{}",
            ".".repeat(10),
            "#".repeat(20),
            ".".repeat(10)
        ));
        let len = at(40);
        assert_eq!(segments(&probs, len, &p), [(at(10) - 480, at(30) + 480)]);
        // A 2-chunk dip does not split. Silence is measured from the start of its first quiet chunk
        // to the start of the current one, so 5 quiet chunks (4 × 32 ms ≥ 100 ms) end a segment.
        let probs = probs_of(&format!("{}..{}", "#".repeat(10), "#".repeat(10)));
        assert_eq!(segments(&probs, at(22), &p), [(0, at(22))]);
        let probs = probs_of(&format!("{}....{}", "#".repeat(10), "#".repeat(10)));
        assert_eq!(segments(&probs, at(24), &p), [(0, at(24))]);
        let probs = probs_of(&format!("{}.....{}", "#".repeat(10), "#".repeat(10)));
        let s = segments(&probs, at(25), &p);
        // The gap (5 chunks = 2560 samples) is wider than 2 × pad: each side gets 480.
        assert_eq!(s, [(0, at(10) + 480), (at(15) - 480, at(25))]);
        // Probabilities between the thresholds hold speech, but do not start it.
        let probs = probs_of(&format!("~~~~{}~~~~~~~~{}", "#".repeat(10), ".".repeat(10)));
        assert_eq!(segments(&probs, at(32), &p), [(at(4) - 480, at(22) + 480)]);
        // Too short (4 chunks = 128 ms < 250 ms) is dropped; silence alone gives nothing.
        let probs = probs_of(&format!("..####{}", ".".repeat(10)));
        assert!(segments(&probs, at(16), &p).is_empty());
        assert!(segments(&probs_of(&".".repeat(50)), at(50), &p).is_empty());
        assert!(segments(&[], 0, &p).is_empty());
        // Close segments share the gap: 2560 samples apart with a 100 ms pad (1600 a side).
        let wide = SegmentParams {
            speech_pad_ms: 100,
            ..p
        };
        let probs = probs_of(&format!("{}.....{}", "#".repeat(10), "#".repeat(10)));
        assert_eq!(segments(&probs, at(25), &wide), [(0, 6400), (6400, at(25))]);
    }

    #[test]
    fn input_schema_and_params() {
        let errs = |input: Value| -> Vec<String> {
            schema::validate(&input_schema(), &input)
                .into_iter()
                .map(|e| format!("{}:{}", e.loc.join("."), e.kind))
                .collect()
        };
        assert!(errs(json!({"audio": "data:;base64,"})).is_empty());
        assert_eq!(errs(json!({})), ["body.audio:missing"]);
        assert_eq!(errs(json!({"audio": 3})), ["body.audio:string_type"]);
        assert_eq!(
            errs(json!({"audio": "x", "threshold": 2})),
            ["body.threshold:less_than_equal"]
        );
        assert_eq!(
            errs(json!({"audio": "x", "min_speech_ms": 1.5})),
            ["body.min_speech_ms:int_type"]
        );
        let p = params(&json!({"threshold": 0.3, "min_silence_ms": 200})).unwrap();
        assert_eq!(
            (p.threshold, p.min_silence_ms, p.min_speech_ms),
            (0.3, 200, 250)
        );
    }

    /// Needs weights: `runmesh models fetch silero-vad` and RUNMESH_MODELS_DIR.
    fn model() -> Option<Vad> {
        let dir = std::env::var_os("RUNMESH_MODELS_DIR")?;
        let dir = Path::new(&dir).join(MODEL_NAME);
        if !dir.join(ONNX_FILE).exists() {
            eprintln!("skipping: {} not fetched", dir.display());
            return None;
        }
        Some(Vad::load(&dir, &Device::Cpu).unwrap())
    }

    #[test]
    fn batching_does_not_change_the_probabilities_and_silence_is_not_speech() {
        let Some(vad) = model() else {
            eprintln!("skipping: RUNMESH_MODELS_DIR is not set");
            return;
        };
        // A deterministic noisy signal, 150 chunks long and not a whole number of chunks.
        let mut x = 1u32;
        let samples: Vec<f32> = (0..150 * CHUNK + 100)
            .map(|i| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                0.3 * noise + 0.2 * (i as f32 * 0.05).sin()
            })
            .collect();
        let all = vad.probabilities(&samples).unwrap();
        assert_eq!(all.len(), 151);
        let mut state = vad.initial_state().unwrap();
        let mut stepped = Vec::new();
        let mut first = 0;
        for count in [1, 7, 64, 79] {
            stepped.extend(vad.run_chunks(&samples, first, count, &mut state).unwrap());
            first += count;
        }
        for (a, b) in all.iter().zip(&stepped) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(all.iter().all(|p| (0.0..=1.0).contains(p)));
        let silence = vad.probabilities(&vec![0.0; 20 * CHUNK]).unwrap();
        assert!(silence.iter().all(|&p| p < 0.1), "{silence:?}");
    }

    #[tokio::test]
    async fn the_app_logs_progress_and_stops_when_cancelled() {
        use crate::apps::{audio, pool::PoolConfig, testing};
        let Some(dir) = std::env::var_os("RUNMESH_MODELS_DIR") else {
            eprintln!("skipping: RUNMESH_MODELS_DIR is not set");
            return;
        };
        let dir = Path::new(&dir).join(MODEL_NAME);
        if !dir.join(ONNX_FILE).exists() {
            eprintln!("skipping: {} not fetched", dir.display());
            return;
        }
        let outbound = crate::outbound::Outbound::new(
            crate::outbound::FetchPolicy::default(),
            audio::FETCH_TIMEOUT,
            true,
        )
        .unwrap();
        let app = VadApp::new(
            dir,
            Arc::new(WarmPool::new(PoolConfig::default())),
            outbound,
        );
        let refused = json!({ "audio": "http://169.254.169.254/latest/meta-data/" });
        let e = app.validate(None, &refused).unwrap_err();
        assert_eq!(e[0].loc, ["body", "audio"]);
        // 5 s: 157 chunks, three batches.
        let wav = audio::encode_wav(&vec![0.0; 5 * 16_000], 16_000, false);
        let input = json!({ "audio": audio::data_uri(&wav) });
        assert!(app.validate(None, &input).is_ok());
        let mut t = testing::job("runmesh/silero-vad");
        let out = app.run(t.ctx, input.clone()).await.unwrap();
        assert_eq!(out["probabilities"].as_array().unwrap().len(), 157);
        assert_eq!(out["segments"], json!([]));
        let mut lines = Vec::new();
        while let Ok(l) = t.logs.try_recv() {
            lines.push(l.message);
        }
        assert!(lines.iter().any(|l| l.contains("157 chunks")), "{lines:?}");
        assert!(lines.contains(&"progress 64/157".to_string()), "{lines:?}");
        assert!(lines.contains(&"progress 157/157".to_string()), "{lines:?}");

        let t = testing::job("runmesh/silero-vad");
        t.stop.send(true).unwrap();
        let e = app.run(t.ctx, input).await.unwrap_err();
        assert_eq!(e.error_type, ErrorType::ClientCancelled);

        // A wrong rate in a data: URI is refused at validation, with fal's type.
        let bad = json!({ "audio": audio::data_uri(&audio::encode_wav(&[0.0; 10], 8_000, false)) });
        let errs = app.validate(None, &bad).unwrap_err();
        assert_eq!(errs[0].kind, "unsupported_audio_format");
        assert_eq!(errs[0].loc, ["body", "audio"]);
    }
}
