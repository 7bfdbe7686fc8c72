//! The `runmesh/*` built-in apps: small, deterministic apps for tests, demos and benchmarks.
//! They accept any subpath, so clients can exercise subpath routing against them.

use std::sync::Arc;

use runmesh_proto::fal::FieldError;
use runmesh_proto::AppId;
use serde_json::{json, Value};

use super::{fields, App, AppError, AppFuture, AppManifest, JobContext};

pub const SLEEP_MS_MAX: i64 = 600_000;
/// How often `runmesh/sleep` writes a log line while it sleeps.
pub const SLEEP_LOG_EVERY_MS: u64 = 100;
pub const STREAM_N_MAX: i64 = 10_000;
pub const STREAM_N_DEFAULT: i64 = 3;
pub const STREAM_INTERVAL_MS_MAX: i64 = 60_000;
pub const STREAM_INTERVAL_MS_DEFAULT: i64 = 100;
pub const FAIL_MESSAGE_DEFAULT: &str = "runmesh/fail was asked to fail";

/// Every built-in app.
pub fn all() -> Vec<Arc<dyn App>> {
    vec![
        Arc::new(Echo),
        Arc::new(Sleep),
        Arc::new(Fail),
        Arc::new(Stream),
        Arc::new(Noise),
        Arc::new(HashFile),
    ]
}

/// Largest `runmesh/noise` output: 64 GiB.
pub const NOISE_BYTES_MAX: i64 = 64 << 30;
/// Bytes `runmesh/noise` writes per buffer (what it holds in memory at once).
const NOISE_BUF_BYTES: usize = 1 << 20;

/// The byte stream of `runmesh/noise`: splitmix64 of the seed, each output word little-endian.
/// Tests regenerate it to check a download byte for byte.
pub fn noise_fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// `runmesh/noise`: `{"bytes": N, "seed": S}` makes one file of N pseudo-random bytes, returned as
/// `{"file": File}` (a fal File object; the bytes are a blob any node serves).
pub struct Noise;

impl Noise {
    fn parse(input: &Value) -> Result<(u64, u64), Vec<FieldError>> {
        let mut errors = Vec::new();
        let bytes = fields::int_in_range(input, "bytes", 0, NOISE_BYTES_MAX, &mut errors);
        let seed = fields::int_in_range(input, "seed", 0, i64::MAX, &mut errors).unwrap_or(0);
        match bytes {
            Some(n) if errors.is_empty() => Ok((n.unsigned_abs(), seed.unsigned_abs())),
            None if errors.is_empty() => Err(vec![fields::missing("bytes")]),
            _ => Err(errors),
        }
    }
}

impl App for Noise {
    fn manifest(&self) -> AppManifest {
        manifest(
            "noise",
            "Makes a file of `bytes` pseudo-random bytes from `seed` (for tests and benchmarks).",
            false,
        )
        .with_artifact_types(["application/octet-stream"])
    }

    fn validate(&self, _subpath: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>> {
        Self::parse(input).map(|_| ())
    }

    fn run(&self, ctx: JobContext, input: Value) -> AppFuture {
        Box::pin(async move {
            let (n, seed) = Noise::parse(&input)
                .map_err(|_| AppError::runner("invalid input for runmesh/noise"))?;
            // The node's file limits hold before a byte is written.
            ctx.reserve_file(n)?;
            let path = ctx.scratch_path()?;
            ctx.info(format!("writing {n} bytes"));
            let written = path.clone();
            // Written in 1 MiB pieces on a blocking thread: the file never sits in memory.
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write as _;
                let mut f = std::io::BufWriter::new(std::fs::File::create(&written)?);
                let mut buf = vec![0u8; NOISE_BUF_BYTES];
                let mut state = seed;
                let mut left = n;
                while left > 0 {
                    let take = left.min(NOISE_BUF_BYTES as u64) as usize;
                    noise_fill(&mut state, &mut buf[..take]);
                    f.write_all(&buf[..take])?;
                    left -= take as u64;
                }
                f.flush()
            })
            .await
            .map_err(|e| AppError::runner(format!("noise writer: {e}")))?
            .map_err(|e| AppError::runner(format!("writing noise: {e}")))?;
            let file = ctx
                .emit_file(
                    path,
                    "application/octet-stream",
                    &format!("noise-{seed}.bin"),
                )
                .await?;
            Ok(json!({ "file": file }))
        })
    }
}

/// `runmesh/hash`: `{"file_url": URL}` (one of our `/files/` URLs or a `data:` URI) answers
/// `{"blake3": hex, "size": N}` of the bytes; shows inputs reaching an app as local files.
pub struct HashFile;

impl HashFile {
    fn parse(input: &Value) -> Result<String, Vec<FieldError>> {
        let mut errors = Vec::new();
        match fields::string(input, "file_url", &mut errors) {
            Some(u) if errors.is_empty() => Ok(u),
            None if errors.is_empty() => Err(vec![fields::missing("file_url")]),
            _ => Err(errors),
        }
    }
}

impl App for HashFile {
    fn manifest(&self) -> AppManifest {
        manifest(
            "hash",
            "BLAKE3 hash and size of the file at `file_url` (a /files/ URL or a data: URI).",
            false,
        )
    }

    fn validate(&self, _subpath: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>> {
        Self::parse(input).map(|_| ())
    }

    fn run(&self, ctx: JobContext, input: Value) -> AppFuture {
        Box::pin(async move {
            let url = HashFile::parse(&input)
                .map_err(|_| AppError::runner("invalid input for runmesh/hash"))?;
            let path = ctx.input_file(&url).await?;
            let (hash, size) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                use std::io::Read as _;
                let mut f = std::fs::File::open(&path)?;
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; NOISE_BUF_BYTES];
                let mut size = 0u64;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    size += n as u64;
                }
                Ok((h.finalize().to_hex().to_string(), size))
            })
            .await
            .map_err(|e| AppError::runner(format!("hasher: {e}")))?
            .map_err(|e| AppError::runner(format!("reading the input file: {e}")))?;
            Ok(json!({ "blake3": hash, "size": size }))
        })
    }
}

fn id(alias: &str) -> AppId {
    AppId {
        namespace: None,
        owner: "runmesh".to_string(),
        alias: alias.to_string(),
    }
}

fn manifest(alias: &str, description: &str, streams: bool) -> AppManifest {
    AppManifest::new(id(alias), description).streaming(streams)
}

fn errors_or_ok(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `runmesh/echo`: the output is the input object.
pub struct Echo;

impl App for Echo {
    fn manifest(&self) -> AppManifest {
        manifest("echo", "Returns its input object unchanged.", false)
    }

    fn validate(&self, _subpath: Option<&str>, _input: &Value) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    fn run(&self, _ctx: JobContext, input: Value) -> AppFuture {
        Box::pin(async move { Ok(input) })
    }
}

/// `runmesh/sleep`: `{"ms": N}` sleeps N ms, logging about every 100 ms; output `{"slept_ms": N}`.
pub struct Sleep;

impl Sleep {
    fn parse(input: &Value) -> Result<u64, Vec<FieldError>> {
        let mut errors = Vec::new();
        let ms = fields::int_in_range(input, "ms", 0, SLEEP_MS_MAX, &mut errors);
        match ms {
            Some(ms) => Ok(ms.unsigned_abs()),
            None if errors.is_empty() => Err(vec![fields::missing("ms")]),
            None => Err(errors),
        }
    }
}

impl App for Sleep {
    fn manifest(&self) -> AppManifest {
        manifest(
            "sleep",
            "Sleeps `ms` milliseconds (0..=600000), logging as it goes.",
            false,
        )
    }

    fn validate(&self, _subpath: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>> {
        Self::parse(input).map(|_| ())
    }

    fn run(&self, ctx: JobContext, input: Value) -> AppFuture {
        Box::pin(async move {
            let total_ms = Sleep::parse(&input)
                .map_err(|_| AppError::runner("invalid input for runmesh/sleep"))?;
            ctx.info(format!("sleeping {total_ms} ms"));
            let mut slept_ms = 0;
            while slept_ms < total_ms {
                let step = SLEEP_LOG_EVERY_MS.min(total_ms - slept_ms);
                if !ctx.sleep_ms(step).await {
                    ctx.info(format!("cancelled after {slept_ms} ms"));
                    return Err(AppError::cancelled());
                }
                slept_ms += step;
                ctx.info(format!("slept {slept_ms}/{total_ms} ms"));
            }
            Ok(json!({ "slept_ms": total_ms }))
        })
    }
}

/// `runmesh/fail`: fails with `message` (or a default).
pub struct Fail;

impl Fail {
    fn parse(input: &Value) -> Result<String, Vec<FieldError>> {
        let mut errors = Vec::new();
        let message = fields::string(input, "message", &mut errors);
        errors_or_ok(errors)?;
        Ok(message.unwrap_or_else(|| FAIL_MESSAGE_DEFAULT.to_string()))
    }
}

impl App for Fail {
    fn manifest(&self) -> AppManifest {
        manifest("fail", "Fails with the given `message`.", false)
    }

    fn validate(&self, _subpath: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>> {
        Self::parse(input).map(|_| ())
    }

    fn run(&self, ctx: JobContext, input: Value) -> AppFuture {
        Box::pin(async move {
            let message = Fail::parse(&input).unwrap_or_else(|_| FAIL_MESSAGE_DEFAULT.to_string());
            ctx.log(runmesh_proto::LogLevel::Error, message.clone());
            Err(AppError::runner(message))
        })
    }
}

/// `runmesh/stream`: `{"n": N, "interval_ms": M}` publishes partials `{"i": k}` for k in 0..N, M ms
/// apart, then outputs `{"n": N}`. With `"stamp": true` each partial also carries `emitted_us`, the
/// wall-clock time (µs since the Unix epoch) it was published at: `runmesh bench streaming` reads it
/// on the same host to time emit → client read.
pub struct Stream;

/// Microseconds since the Unix epoch. Wall-clock on purpose: the reader is another process on the
/// same host, and monotonic clocks are not comparable across processes.
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Stream {
    fn parse(input: &Value) -> Result<(u64, u64), Vec<FieldError>> {
        let mut errors = Vec::new();
        let n = fields::int_in_range(input, "n", 0, STREAM_N_MAX, &mut errors);
        let interval =
            fields::int_in_range(input, "interval_ms", 0, STREAM_INTERVAL_MS_MAX, &mut errors);
        errors_or_ok(errors)?;
        Ok((
            n.unwrap_or(STREAM_N_DEFAULT).unsigned_abs(),
            interval
                .unwrap_or(STREAM_INTERVAL_MS_DEFAULT)
                .unsigned_abs(),
        ))
    }
}

impl App for Stream {
    fn manifest(&self) -> AppManifest {
        manifest(
            "stream",
            "Emits `n` partial outputs {\"i\": k}, `interval_ms` apart, then {\"n\": n} \
             (`\"stamp\": true` adds `emitted_us`, the emit time in µs since the epoch).",
            true,
        )
    }

    fn validate(&self, _subpath: Option<&str>, input: &Value) -> Result<(), Vec<FieldError>> {
        Self::parse(input).map(|_| ())
    }

    fn run(&self, ctx: JobContext, input: Value) -> AppFuture {
        Box::pin(async move {
            let (n, interval_ms) = Stream::parse(&input)
                .map_err(|_| AppError::runner("invalid input for runmesh/stream"))?;
            let stamp = input.get("stamp").and_then(Value::as_bool) == Some(true);
            for i in 0..n {
                // The first partial goes out at once: a listener is already subscribed.
                if i > 0 && !ctx.sleep_ms(interval_ms).await {
                    return Err(AppError::cancelled());
                }
                if ctx.is_cancelled() {
                    return Err(AppError::cancelled());
                }
                if stamp {
                    ctx.partial(&json!({ "i": i, "emitted_us": wall_us() }));
                } else {
                    ctx.partial(&json!({ "i": i }));
                }
            }
            ctx.info(format!("streamed {n} partial outputs"));
            Ok(json!({ "n": n }))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::apps::testing;
    use runmesh_proto::ErrorType;
    use std::time::{Duration, Instant};

    fn kinds(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{}:{}", e.loc.join("."), e.kind))
            .collect()
    }

    #[test]
    fn sleep_validation() {
        assert!(Sleep.validate(None, &json!({"ms": 0})).is_ok());
        assert!(Sleep.validate(None, &json!({"ms": 600_000})).is_ok());
        assert_eq!(kinds(Sleep.validate(None, &json!({}))), ["body.ms:missing"]);
        assert_eq!(
            kinds(Sleep.validate(None, &json!({"ms": null}))),
            ["body.ms:missing"]
        );
        assert_eq!(
            kinds(Sleep.validate(None, &json!({"ms": 600_001}))),
            ["body.ms:less_than_equal"]
        );
        assert_eq!(
            kinds(Sleep.validate(None, &json!({"ms": -1}))),
            ["body.ms:greater_than_equal"]
        );
        assert_eq!(
            kinds(Sleep.validate(None, &json!({"ms": "10"}))),
            ["body.ms:int_type"]
        );
    }

    #[test]
    fn fail_and_stream_validation() {
        assert!(Fail.validate(None, &json!({})).is_ok());
        assert!(Fail.validate(None, &json!({"message": "x"})).is_ok());
        assert_eq!(
            kinds(Fail.validate(None, &json!({"message": 3}))),
            ["body.message:string_type"]
        );
        assert!(Stream.validate(None, &json!({})).is_ok());
        assert_eq!(Stream::parse(&json!({})).unwrap(), (3, 100));
        assert_eq!(
            kinds(Stream.validate(None, &json!({"n": 10_001, "interval_ms": -5}))),
            [
                "body.n:less_than_equal",
                "body.interval_ms:greater_than_equal"
            ]
        );
        assert!(Echo.validate(Some("any/sub"), &json!({"x": [1]})).is_ok());
    }

    #[tokio::test]
    async fn echo_returns_its_input() {
        let t = testing::job("runmesh/echo");
        let input = json!({"a": {"b": [1, 2, null]}, "s": "é"});
        assert_eq!(Echo.run(t.ctx, input.clone()).await.unwrap(), input);
    }

    #[tokio::test]
    async fn fail_fails_with_the_message() {
        let t = testing::job("runmesh/fail");
        let err = Fail
            .run(t.ctx, json!({"message": "nope"}))
            .await
            .unwrap_err();
        assert_eq!(err.message, "nope");
        assert_eq!(err.error_type, ErrorType::RunnerError);
        let t = testing::job("runmesh/fail");
        let err = Fail.run(t.ctx, json!({})).await.unwrap_err();
        assert_eq!(err.message, FAIL_MESSAGE_DEFAULT);
    }

    #[tokio::test]
    async fn sleep_sleeps_and_logs() {
        let mut t = testing::job("runmesh/sleep");
        let start = Instant::now();
        let out = Sleep.run(t.ctx, json!({"ms": 250})).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(250));
        assert_eq!(out, json!({"slept_ms": 250}));
        let mut lines = Vec::new();
        while let Ok(l) = t.logs.try_recv() {
            lines.push(l.message);
        }
        assert_eq!(
            lines,
            [
                "sleeping 250 ms",
                "slept 100/250 ms",
                "slept 200/250 ms",
                "slept 250/250 ms"
            ]
        );
    }

    #[tokio::test]
    async fn sleep_stops_early_on_cancel() {
        let t = testing::job("runmesh/sleep");
        let stop = t.stop;
        let start = Instant::now();
        let run = tokio::spawn(Sleep.run(t.ctx, json!({"ms": 600_000})));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(err.error_type, ErrorType::ClientCancelled);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn stream_emits_partials_then_output() {
        let mut t = testing::job("runmesh/stream");
        let out = Stream
            .run(t.ctx, json!({"n": 4, "interval_ms": 1}))
            .await
            .unwrap();
        assert_eq!(out, json!({"n": 4}));
        let mut got = Vec::new();
        while let Ok(p) = t.partials.try_recv() {
            got.push(p);
        }
        assert_eq!(
            got,
            [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"i":2}"#, r#"{"i":3}"#]
        );
    }

    #[tokio::test]
    async fn stamped_partials_carry_their_emit_time() {
        let mut t = testing::job("runmesh/stream");
        let before = wall_us();
        let out = Stream
            .run(t.ctx, json!({"n": 2, "interval_ms": 0, "stamp": true}))
            .await
            .unwrap();
        let after = wall_us();
        assert_eq!(out, json!({"n": 2}));
        for i in 0..2 {
            let p: Value = serde_json::from_str(&t.partials.try_recv().unwrap()).unwrap();
            assert_eq!(p["i"], i);
            let at = p["emitted_us"].as_u64().unwrap();
            assert!(
                (before..=after).contains(&at),
                "{before} <= {at} <= {after}"
            );
        }
    }

    #[tokio::test]
    async fn stream_stops_early_on_cancel() {
        let t = testing::job("runmesh/stream");
        let stop = t.stop;
        let run = tokio::spawn(Stream.run(t.ctx, json!({"n": 100, "interval_ms": 60_000})));
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.send(true).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.error_type, ErrorType::ClientCancelled);
    }
}
