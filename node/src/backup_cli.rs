//! `runmesh backup --out FILE` (from any node, with the admin key) and `runmesh restore FILE
//! --data-dir D` (offline: a new cluster founded from the backup). See `runmesh_raft::backup`.

use std::path::{Path, PathBuf};

use runmesh_raft::backup::{restore_into, Backup};

use crate::keys_cli::{AdminConn, KeysError};

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to write the backup (atomically; mode 0600). `FILE.blobs` beside it lists the blob
    /// hashes it references, one per line, for copying the blobs apart.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub conn: AdminConn,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A file `runmesh backup` wrote.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The new node's data dir: empty, or holding only its `node.key` (created when missing).
    #[arg(long, value_name = "DIR", env = "RUNMESH_DATA_DIR")]
    pub data_dir: PathBuf,
}

fn io(path: &Path, e: impl std::fmt::Display) -> KeysError {
    KeysError::Io(format!("{}: {e}", path.display()))
}

pub async fn backup(args: BackupArgs) -> Result<(), KeysError> {
    let api = args.conn.connect()?;
    let bytes = api.get_bytes("/admin/backup").await?;
    // Checked whole before it is written: a backup that does not restore is worse than none.
    let backup = Backup::decode(&bytes).map_err(|e| KeysError::Http(e.to_string()))?;
    let state = backup
        .cluster_state()
        .map_err(|e| KeysError::Http(e.to_string()))?;
    let tmp = args.out.with_extension("tmp");
    crate::tls::write_private(&tmp, &bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &args.out).map_err(|e| io(&args.out, e))?;
    let list_path = PathBuf::from(format!("{}.blobs", args.out.display()));
    let mut list = backup.blobs.join("\n");
    if !list.is_empty() {
        list.push('\n');
    }
    crate::tls::write_private(&list_path, list.as_bytes()).map_err(|e| io(&list_path, e))?;
    println!(
        "backup of {} jobs, {} keys at log index {} written to {} ({} bytes); {} blobs it \
         references are listed in {}",
        state.jobs.len(),
        state.keys.len(),
        backup.applied_index,
        args.out.display(),
        bytes.len(),
        backup.blobs.len(),
        list_path.display()
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> Result<(), KeysError> {
    let bytes = std::fs::read(&args.file).map_err(|e| io(&args.file, e))?;
    let backup = Backup::decode(&bytes)
        .map_err(|e| KeysError::Io(format!("{}: {e}", args.file.display())))?;
    crate::datadir::secure(&args.data_dir).map_err(|e| KeysError::Io(e.to_string()))?;
    let (identity, _) = crate::identity::NodeIdentity::load_or_create(&args.data_dir)
        .map_err(|e| io(&args.data_dir, e))?;
    let raft_dir = args.data_dir.join(crate::datadir::RAFT_DIR);
    // Its member record is written by the node itself at its first start (addresses it listens on).
    restore_into(&raft_dir, &backup, identity.raft_node_id(), String::new())
        .map_err(|e| KeysError::Io(e.to_string()))?;
    crate::format::write(&args.data_dir, crate::format::CURRENT)
        .map_err(|e| KeysError::Io(e.to_string()))?;
    println!(
        "restored the backup of log index {} into {} as node {}: start a node on this data dir \
         (runmesh run/dev --data-dir {}); it leads a new cluster that others join as usual. \
         Copy the {} blobs the backup references into a node's blob store apart",
        backup.applied_index,
        args.data_dir.display(),
        identity.raft_node_id(),
        args.data_dir.display(),
        backup.blobs.len()
    );
    Ok(())
}
