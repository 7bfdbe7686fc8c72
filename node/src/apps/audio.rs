//! Audio inputs for the speech apps: getting the bytes of an `audio` field (a `data:` URI or an
//! http(s) URL) and reading a WAV file into 16 kHz mono samples.
//!
//! Failures are [`AudioError`]s carrying fal's error types (`file_download_error`, `file_too_large`,
//! `unsupported_audio_format`, ...), which the app returns as a 422 `detail`, as fal's own apps do.

use std::time::Duration;

use base64::Engine as _;
use runmesh_proto::fal::FieldError;

use super::JobContext;
use crate::outbound::{FetchError, FetchPolicy, Outbound, Refused};

/// The only rate the models take; higher multiples of it are decimated (see [`Wav::to_16k`]).
pub const SAMPLE_RATE: u32 = 16_000;
/// Most bytes an audio file may have (≈ 35 min of 16 kHz PCM16); a data URI is bounded by the
/// gateway's body limit first.
pub const AUDIO_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long an http(s) download may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an audio input was not usable, as a fal 422 `detail` entry about `field`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct AudioError {
    /// fal's error type (`file_download_error`, `unsupported_audio_format`, ...).
    pub kind: &'static str,
    pub msg: String,
}

impl AudioError {
    fn new(kind: &'static str, msg: impl Into<String>) -> Self {
        Self {
            kind,
            msg: msg.into(),
        }
    }

    fn format(msg: impl Into<String>) -> Self {
        Self::new("unsupported_audio_format", msg)
    }

    pub fn field_error(&self, field: &str) -> FieldError {
        FieldError::body(field, self.msg.clone(), self.kind)
    }
}

/// The bytes behind an `audio` value: a `data:` URI, one of the cluster's own file URLs (read from
/// the blob store through `ctx`, no HTTP round trip), or an http(s) URL fetched under the node's
/// outbound policy.
pub async fn load(url: &str, ctx: &JobContext, outbound: &Outbound) -> Result<Vec<u8>, AudioError> {
    if url.starts_with("data:") {
        return decode_data_uri(url);
    }
    if is_cluster_file_url(url) {
        let path = ctx
            .input_file(url)
            .await
            .map_err(|e| AudioError::new("file_download_error", e.message))?;
        let bytes = tokio::fs::read(&path).await;
        let _ = tokio::fs::remove_file(&path).await;
        let bytes = bytes.map_err(|e| AudioError::new("file_download_error", e.to_string()))?;
        if bytes.len() > AUDIO_BYTES_MAX {
            return Err(too_large());
        }
        return Ok(bytes);
    }
    check_url(url, outbound.policy())?;
    outbound
        .get_bounded(url, AUDIO_BYTES_MAX)
        .await
        .map_err(|e| {
            // The detail is for the operator; the caller learns nothing about the target.
            tracing::info!(error = %e, "audio input not fetched");
            match e {
                FetchError::TooLarge(_) => too_large(),
                e => AudioError::new(
                    "file_download_error",
                    format!("audio {}", e.caller_message()),
                ),
            }
        })
}

/// A `/files/` URL of this cluster (by hash or upload token), served from the blob store.
pub fn is_cluster_file_url(url: &str) -> bool {
    runmesh_gateway_node::files::upload_token_in(url).is_some()
        || !runmesh_proto::file_hashes_in(url).is_empty()
}

/// Whether `url` is one [`load`] can take: a `data:` URI, a cluster file URL, or an http(s) URL
/// the outbound policy allows (its host name's addresses are checked when it is fetched).
pub fn check_url(url: &str, policy: &FetchPolicy) -> Result<(), AudioError> {
    if url.starts_with("data:") || is_cluster_file_url(url) {
        return Ok(());
    }
    policy.check_url(url).map(|_| ()).map_err(|e| {
        let msg = match e {
            Refused::Scheme => "audio must be a data: URI or an http(s) URL".to_string(),
            e => format!("audio URL {e}"),
        };
        AudioError::new("file_download_error", msg)
    })
}

/// `data:[<media type>][;base64],<data>`; only base64 payloads are taken (what fal clients send).
pub fn decode_data_uri(uri: &str) -> Result<Vec<u8>, AudioError> {
    let rest = uri
        .strip_prefix("data:")
        .ok_or_else(|| AudioError::new("file_download_error", "not a data: URI"))?;
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| AudioError::new("file_download_error", "data: URI without a comma"))?;
    if !meta
        .split(';')
        .any(|p| p.trim().eq_ignore_ascii_case("base64"))
    {
        return Err(AudioError::new(
            "file_download_error",
            "data: URI must be base64-encoded (data:audio/wav;base64,...)",
        ));
    }
    // Base64 of AUDIO_BYTES_MAX bytes is 4/3 as long; refuse before decoding anything larger.
    if payload.len() / 4 * 3 > AUDIO_BYTES_MAX {
        return Err(too_large());
    }
    let payload: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    // Padding is optional in the wild (some encoders drop it).
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(payload.as_bytes())
        .map_err(|e| AudioError::new("file_download_error", format!("bad base64: {e}")))
}

fn too_large() -> AudioError {
    AudioError::new(
        "file_too_large",
        format!("audio is larger than {} MiB", AUDIO_BYTES_MAX >> 20),
    )
}

/// A decoded WAV file: samples in [-1, 1], one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Wav {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

const PCM: u16 = 1;
const IEEE_FLOAT: u16 = 3;
const EXTENSIBLE: u16 = 0xfffe;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Reads a RIFF/WAVE file: mono, 16-bit integer PCM or 32-bit float (plain or
/// WAVE_FORMAT_EXTENSIBLE). Other chunks (LIST, fact, ...) are skipped.
pub fn parse_wav(bytes: &[u8]) -> Result<Wav, AudioError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(AudioError::format(
            "audio is not a WAV file (no RIFF/WAVE header)",
        ));
    }
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    let mut pos = 12usize;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let declared = u32_at(bytes, pos + 4).unwrap_or(0) as usize;
        let body_start = pos + 8;
        // Streaming writers leave the data size at 0 or 0xFFFFFFFF: take what is there.
        let body_end = body_start
            .checked_add(declared)
            .filter(|&e| e <= bytes.len())
            .unwrap_or(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => {
                let (Some(mut tag), Some(channels), Some(rate), Some(bits)) = (
                    u16_at(body, 0),
                    u16_at(body, 2),
                    u32_at(body, 4),
                    u16_at(body, 14),
                ) else {
                    return Err(AudioError::format("WAV fmt chunk is too short"));
                };
                if tag == EXTENSIBLE {
                    // The sub-format GUID starts with the format tag.
                    tag = u16_at(body, 24).ok_or_else(|| {
                        AudioError::format("WAV extensible fmt chunk is too short")
                    })?;
                }
                fmt = Some((tag, channels, rate, bits));
            }
            b"data" => {
                let (tag, channels, rate, bits) = fmt.ok_or_else(|| {
                    AudioError::format("WAV data chunk comes before its fmt chunk")
                })?;
                if channels != 1 {
                    return Err(AudioError::format(format!(
                        "audio has {channels} channels; only mono is supported"
                    )));
                }
                let samples: Vec<f32> = match (tag, bits) {
                    (PCM, 16) => body
                        .chunks_exact(2)
                        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                        .collect(),
                    (IEEE_FLOAT, 32) => body
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .map(|s| if s.is_finite() { s } else { 0.0 })
                        .collect(),
                    _ => {
                        return Err(AudioError::format(format!(
                            "WAV format {tag} with {bits}-bit samples; supported: 16-bit PCM, 32-bit float"
                        )))
                    }
                };
                return Ok(Wav {
                    sample_rate: rate,
                    samples,
                });
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body_start
            .saturating_add(declared)
            .saturating_add(declared & 1);
    }
    Err(AudioError::format("WAV file has no data chunk"))
}

impl Wav {
    /// The samples at 16 kHz: as they are at 16 kHz; every n-th sample at n × 16 kHz (what silero's
    /// `get_speech_timestamps` does); other rates are refused (no resampler here).
    pub fn to_16k(self) -> Result<Vec<f32>, AudioError> {
        let rate = self.sample_rate;
        if rate == SAMPLE_RATE {
            return Ok(self.samples);
        }
        if rate > SAMPLE_RATE && rate.is_multiple_of(SAMPLE_RATE) {
            let step = (rate / SAMPLE_RATE) as usize;
            return Ok(self.samples.into_iter().step_by(step).collect());
        }
        Err(AudioError::format(format!(
            "audio is sampled at {rate} Hz; 16000 Hz (or a multiple of it) is required"
        )))
    }
}

/// A mono WAV file of `samples` (16-bit PCM, or 32-bit float with `float`), for tests and benches.
pub fn encode_wav(samples: &[f32], sample_rate: u32, float: bool) -> Vec<u8> {
    let (tag, bytes_per) = if float { (IEEE_FLOAT, 4u16) } else { (PCM, 2) };
    let data_len = samples.len() * usize::from(bytes_per);
    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * u32::from(bytes_per)).to_le_bytes());
    out.extend_from_slice(&bytes_per.to_le_bytes());
    out.extend_from_slice(&(bytes_per * 8).to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for &s in samples {
        if float {
            out.extend_from_slice(&s.to_le_bytes());
        } else {
            let v = (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// `data:audio/wav;base64,...` of `wav`.
pub fn data_uri(wav: &[u8]) -> String {
    format!(
        "data:audio/wav;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(wav)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pcm16_and_float32_round_trip() {
        let s = [0.0f32, 0.5, -0.5, -1.0, 0.25];
        let w = parse_wav(&encode_wav(&s, 16_000, false)).unwrap();
        assert_eq!(w.sample_rate, 16_000);
        assert_eq!(w.samples, s);
        let w = parse_wav(&encode_wav(&s, 16_000, true)).unwrap();
        assert_eq!(w.samples, s);
    }

    #[test]
    fn extra_chunks_odd_padding_extensible_and_streaming_sizes_are_read() {
        let base = encode_wav(&[0.5, -0.25], 16_000, false);
        // Insert an odd-length LIST chunk (padded to even) between fmt and data.
        let mut b = base[..36].to_vec();
        b.extend_from_slice(b"LIST");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(b"abc\0");
        b.extend_from_slice(&base[36..]);
        assert_eq!(parse_wav(&b).unwrap().samples, [0.5, -0.25]);
        // A data size of 0xFFFFFFFF (streaming writer) takes the rest of the file.
        let mut s = base.clone();
        s[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_wav(&s).unwrap().samples, [0.5, -0.25]);
        // WAVE_FORMAT_EXTENSIBLE with a float sub-format.
        let fl = encode_wav(&[0.75], 16_000, true);
        let mut e = fl[..20].to_vec();
        let mut fmt = fl[20..36].to_vec();
        fmt[0..2].copy_from_slice(&EXTENSIBLE.to_le_bytes());
        fmt.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        fmt.extend_from_slice(&32u16.to_le_bytes()); // valid bits
        fmt.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        fmt.extend_from_slice(&IEEE_FLOAT.to_le_bytes());
        fmt.extend_from_slice(&[0; 14]);
        e[16..20].copy_from_slice(&(fmt.len() as u32).to_le_bytes());
        e.extend_from_slice(&fmt);
        e.extend_from_slice(&fl[36..]);
        assert_eq!(parse_wav(&e).unwrap().samples, [0.75]);
    }

    #[test]
    fn other_formats_are_refused_with_fal_types() {
        assert_eq!(
            parse_wav(b"OggS....").unwrap_err().kind,
            "unsupported_audio_format"
        );
        let mut stereo = encode_wav(&[0.0; 4], 16_000, false);
        stereo[22] = 2;
        assert!(parse_wav(&stereo).unwrap_err().msg.contains("mono"));
        let mut pcm8 = encode_wav(&[0.0; 4], 16_000, false);
        pcm8[34] = 8;
        assert!(parse_wav(&pcm8).unwrap_err().msg.contains("8-bit"));
        let no_data = encode_wav(&[], 16_000, false);
        assert!(parse_wav(&no_data[..36]).is_err());
        // Truncated anywhere: an error or a shorter clip, never a panic.
        let full = encode_wav(&[0.1; 10], 16_000, false);
        for n in 0..full.len() {
            let _ = parse_wav(&full[..n]);
        }
    }

    #[test]
    fn rates_are_16k_or_decimated_multiples() {
        let w = |rate| Wav {
            sample_rate: rate,
            samples: (0..6).map(|i| i as f32).collect(),
        };
        assert_eq!(w(16_000).to_16k().unwrap().len(), 6);
        assert_eq!(w(48_000).to_16k().unwrap(), [0.0, 3.0]);
        let e = w(22_050).to_16k().unwrap_err();
        assert_eq!(e.kind, "unsupported_audio_format");
        assert!(e.msg.contains("22050"), "{e}");
        assert!(w(8_000).to_16k().is_err());
    }

    #[test]
    fn data_uris_decode_base64_only() {
        assert_eq!(
            decode_data_uri("data:audio/wav;base64,AAEC").unwrap(),
            [0, 1, 2]
        );
        assert_eq!(decode_data_uri("data:;base64,AAE=").unwrap(), [0, 1]);
        assert_eq!(decode_data_uri("data:;base64,AAE").unwrap(), [0, 1]);
        assert_eq!(decode_data_uri("data:;base64,AA\nEC").unwrap(), [0, 1, 2]);
        assert!(decode_data_uri("data:audio/wav,AAEC").is_err());
        assert!(decode_data_uri("data:;base64,!!").is_err());
        assert!(decode_data_uri("data:audio/wav;base64").is_err());
        let wav = encode_wav(&[0.5], 16_000, false);
        assert_eq!(decode_data_uri(&data_uri(&wav)).unwrap(), wav);
    }

    #[test]
    fn urls_are_checked_against_the_outbound_policy() {
        let none = FetchPolicy::default();
        let e = check_url("file:///etc/passwd", &none).unwrap_err();
        assert_eq!(e.kind, "file_download_error");
        assert!(e.msg.contains("data: URI or an http(s) URL"), "{e}");
        let e = check_url("http://169.254.169.254/latest/meta-data/", &none).unwrap_err();
        assert!(e.msg.contains("not an allowed destination"), "{e}");
        assert!(check_url("https://example.com/a.wav", &none).is_ok());
        assert!(check_url("data:;base64,AAEC", &none).is_ok());
        // The cluster's own file URLs are read from the blob store, wherever they point.
        let own = format!("http://127.0.0.1:8080/files/{}/a.wav", "ab".repeat(32));
        assert!(check_url(&own, &none).is_ok());
        assert!(check_url("http://10.0.0.5:8080/files/t/tok123/a.wav", &none).is_ok());
        assert!(check_url("http://127.0.0.1:8080/a.wav", &FetchPolicy::loopback()).is_ok());
    }
}
