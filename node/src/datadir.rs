//! The data dir is private to the node's user: it holds the node key, the Raft log with the
//! cluster signing secret (webhook signatures, tokens) and callers' files. The dir and every dir
//! in it are 0700, every file 0600, whoever created them and whenever.

use std::path::{Path, PathBuf};

/// Mode of the data dir and the dirs in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the data dir.
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
#[error("data dir {path}: {msg}")]
pub struct DataDirError {
    pub path: PathBuf,
    pub msg: String,
}

/// Makes the process create private files from now on (umask 077: sled, iroh's store and
/// everything else the node writes honour it), creates `data_dir` if need be, and narrows what an
/// older runmesh or another tool left readable. Returns how many entries it narrowed.
///
/// Call before anything in the process creates files, and before other threads do anything: the
/// umask is per process.
pub fn secure(data_dir: &Path) -> Result<usize, DataDirError> {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let err = |path: &Path, e: std::io::Error| DataDirError {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(|e| err(data_dir, e))?;
    narrow(data_dir).map_err(|(path, e)| err(&path, e))
}

/// Sets every dir under `root` (and `root`) to [`DIR_MODE`] and every file to [`FILE_MODE`] where
/// they allow more; symlinks are left alone (their targets are not the node's to change).
#[cfg(unix)]
fn narrow(root: &Path) -> Result<usize, (PathBuf, std::io::Error)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut narrowed = 0;
    // Explicit stack: a deep tree cannot overflow the thread's stack.
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| (path.clone(), e))?;
        let want = if meta.is_dir() {
            DIR_MODE
        } else if meta.is_file() {
            FILE_MODE
        } else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & !want != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & want))
                .map_err(|e| (path.clone(), e))?;
            narrowed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| (path.clone(), e))? {
                pending.push(entry.map_err(|e| (path.clone(), e))?.path());
            }
        }
    }
    Ok(narrowed)
}

#[cfg(not(unix))]
fn narrow(_root: &Path) -> Result<usize, (PathBuf, std::io::Error)> {
    Ok(0)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("test io")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn narrows_an_old_data_dir_and_leaves_private_modes_alone() {
        let tmp = tempfile::tempdir().expect("test io");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("raft/db")).expect("test io");
        std::fs::write(data.join("raft/db/conf"), b"x").expect("test io");
        std::fs::write(data.join("admin.key"), b"k").expect("test io");
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("test io")
        };
        set(&data, 0o755);
        set(&data.join("raft"), 0o755);
        set(&data.join("raft/db"), 0o700);
        set(&data.join("raft/db/conf"), 0o644);
        set(&data.join("admin.key"), 0o400);
        // A link out of the data dir: its target is not ours to change.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"o").expect("test io");
        set(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, data.join("link")).expect("test io");

        assert_eq!(secure(&data).expect("secure"), 3);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("raft")), 0o700);
        assert_eq!(mode(&data.join("raft/db/conf")), 0o600);
        // Narrower than wanted stays as it is.
        assert_eq!(mode(&data.join("admin.key")), 0o400);
        assert_eq!(mode(&outside), 0o644);
        // Files made from now on are private whatever the caller asks for.
        std::fs::write(data.join("new"), b"n").expect("test io");
        assert_eq!(mode(&data.join("new")), 0o600);
        assert_eq!(secure(&data).expect("secure"), 0);
    }
}
