//! The blob transfer benchmark (`runmesh bench-blobs`, or `runmesh-blobs-bench` for a release build
//! without the model stack): moves one blob between two blob nodes (each its own store and QUIC
//! endpoint, on 127.0.0.1) and measures, in the same run and on the same file, the two limits it is
//! held against: `cat` of the file from disk and a plain TCP copy on loopback into a file.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{BlobConfig, BlobError, BlobNode};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Blob size in MiB.
    pub size_mib: u64,
    /// Directory for the file and both stores (a temporary directory inside it is used).
    pub dir: std::path::PathBuf,
}

fn bail(msg: String) -> BlobError {
    BlobError::Io(std::io::Error::other(msg))
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn write_source(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut state = 0x5eed_u64;
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            // splitmix64: incompressible bytes, cheap to make.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(())
}

/// `cat FILE > /dev/null`, timed.
fn cat_once(path: &Path) -> Result<Duration, BlobError> {
    let t = Instant::now();
    let status = std::process::Command::new("cat")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(bail(format!("cat failed: {status}")));
    }
    Ok(t.elapsed())
}

/// The file sent over one loopback TCP connection into another file (fsync'd), timed.
fn tcp_copy(src: &Path, dst: &Path) -> std::io::Result<Duration> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dst = dst.to_path_buf();
    let t = Instant::now();
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut sock, _) = listener.accept()?;
        let mut out = std::fs::File::create(&dst)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        out.sync_all()?;
        Ok(total)
    });
    let mut sock = std::net::TcpStream::connect(addr)?;
    let mut f = std::fs::File::open(src)?;
    std::io::copy(&mut f, &mut sock)?;
    drop(sock);
    receiver
        .join()
        .map_err(|_| std::io::Error::other("receiver thread panicked"))??;
    Ok(t.elapsed())
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Runs the benchmark and returns its report (figures, then ratios).
pub async fn run(opts: BenchOptions) -> Result<String, BlobError> {
    use std::fmt::Write as _;
    let size_mib = opts.size_mib.max(1);
    let size = size_mib << 20;
    let tmp = tempfile::Builder::new()
        .prefix("runmesh-bench-blobs-")
        .tempdir_in(&opts.dir)?;
    let dir = tmp.path();
    let src = dir.join("source.bin");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench-blobs: {size_mib} MiB, files in {}",
        dir.display()
    );
    write_source(&src, size)?;

    let cat = cat_once(&src)?;
    let tcp = tcp_copy(&src, &dir.join("tcp-copy.bin"))?;
    let _ = std::fs::remove_file(dir.join("tcp-copy.bin"));

    let node = |name: &str, seed: u8| BlobConfig {
        root: dir.join(name),
        seed: [seed; 32],
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        gc_interval: None,
    };
    let a = BlobNode::start(node("a", 1)).await?;
    let b = BlobNode::start(node("b", 2)).await?;
    let t = Instant::now();
    let (hash, got) = a.import_file(&src, |_| "rm/bench".into()).await?;
    let import = t.elapsed();
    if got != size {
        return Err(bail(format!("imported {got} bytes of {size}")));
    }
    b.pin(hash, "rm/bench").await?;
    let t = Instant::now();
    b.fetch(hash, &[a.peer_addr()]).await?;
    let fetch = t.elapsed();
    match b.local_size(hash).await? {
        Some(n) if n == size => {}
        other => {
            return Err(bail(format!(
                "after the fetch B holds {other:?} of {size} bytes"
            )))
        }
    }
    a.shutdown().await;
    b.shutdown().await;

    let (f, c, p) = (mb_s(size, fetch), mb_s(size, cat), mb_s(size, tcp));
    let _ = writeln!(
        out,
        "  cat file > /dev/null       {:>8.1} MB/s  ({:.2} s)",
        c,
        cat.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  TCP loopback copy to file  {:>8.1} MB/s  ({:.2} s)",
        p,
        tcp.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  blob import (BLAKE3)       {:>8.1} MB/s  ({:.2} s)",
        mb_s(size, import),
        import.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  blob fetch A -> B (QUIC)   {:>8.1} MB/s  ({:.2} s)",
        f,
        fetch.as_secs_f64()
    );
    let _ = writeln!(out, "  fetch / TCP copy           {:>8.2}x", f / p);
    let _ = writeln!(out, "  fetch / cat                {:>8.2}x", f / c);
    if let Some(rss) = peak_rss_mib() {
        let _ = writeln!(
            out,
            "  peak RSS of this process   {rss:>8.1} MiB (blob {size_mib} MiB)"
        );
    }
    Ok(out)
}
