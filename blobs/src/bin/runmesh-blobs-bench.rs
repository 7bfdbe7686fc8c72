//! `runmesh-blobs-bench [SIZE_MIB] [DIR]`: the blob transfer benchmark without the rest of the node
//! (a release build of this crate alone is minutes, not the model stack's half hour).

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let size_mib = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runmesh-blobs-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let opts = runmesh_blobs::bench::BenchOptions { size_mib, dir };
    match rt.block_on(runmesh_blobs::bench::run(opts)) {
        Ok(report) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runmesh-blobs-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
