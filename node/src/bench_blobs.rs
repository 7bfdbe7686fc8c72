//! `runmesh bench blobs`: the blob transfer benchmark of `runmesh_blobs::bench`.

use clap::Args;

#[derive(Debug, Args)]
pub struct BenchBlobsArgs {
    /// Blob size in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub size_mib: u64,
    /// A small run (64 MiB) for CI.
    #[arg(long)]
    pub quick: bool,
    /// Directory for the file and both stores [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

pub async fn run(args: BenchBlobsArgs) -> anyhow::Result<()> {
    let opts = runmesh_blobs::bench::BenchOptions {
        size_mib: if args.quick { 64 } else { args.size_mib },
        dir: args.dir.unwrap_or_else(std::env::temp_dir),
    };
    print!("{}", runmesh_blobs::bench::run(opts).await?);
    Ok(())
}
