//! The data dir is private to the node's user: it holds the node key, the Raft log with the
//! cluster signing secret (webhook signatures, tokens) and callers' files. The dir and every dir
//! in it are 0700, every file 0600, whoever created them and whenever.
//!
//! It also says, outside the log, that it held a cluster member ([`MemberMark`]): a node whose
//! key or log went missing must not start over as a new identity or a new cluster, which would
//! silently forget every job it acknowledged.

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

/// `<data-dir>/member.json`: which member this data dir holds. Written once the node's job log is
/// healthy (so also into data dirs of older versions on their first start), read before the key
/// and the log are opened.
pub const MEMBER_FILE: &str = "member.json";
/// The sled database of the Raft log and the job table.
pub const RAFT_DIR: &str = "raft";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberMark {
    /// The Raft id of the member.
    pub node_id: u64,
    /// Its ed25519 public key (hex): the one `node.key` must hold.
    pub public_key: String,
}

/// Why a data dir cannot start as it is; each says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum HeldMemberError {
    #[error(
        "{key} is missing, but this data dir held cluster member {node_id} (see {evidence}). A \
         new key would be a new node, and the member's jobs would wait for it for ever. Restore \
         node.key from a backup; or, to replace the member, remove it from the cluster, empty the \
         data dir and join as a new node with --bootstrap"
    )]
    KeyMissing {
        key: PathBuf,
        node_id: String,
        evidence: String,
    },
    #[error(
        "{key} holds another key ({found}) than member {node_id} of this data dir had \
         ({expected}, {marker}). Put the member's own node.key back"
    )]
    KeyReplaced {
        key: PathBuf,
        node_id: u64,
        expected: String,
        found: String,
        marker: PathBuf,
    },
    #[error("{0}")]
    Io(#[from] DataDirError),
}

fn io_err(path: &Path, e: impl ToString) -> DataDirError {
    DataDirError {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// The marker, when the data dir has one.
pub fn read_mark(data_dir: &Path) -> Result<Option<MemberMark>, DataDirError> {
    let path = data_dir.join(MEMBER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_err(&path, format!("not a member marker: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path, e)),
    }
}

/// Writes the marker atomically and durably (a crash leaves the old file or the new one).
pub fn write_mark(data_dir: &Path, mark: &MemberMark) -> Result<(), DataDirError> {
    write_json_durably(data_dir, MEMBER_FILE, mark)
}

/// Writes `<data_dir>/<name>` as JSON atomically and durably: a crash leaves the old file or the
/// new one.
pub fn write_json_durably(
    data_dir: &Path,
    name: &str,
    value: &impl serde::Serialize,
) -> Result<(), DataDirError> {
    use std::io::Write as _;
    let path = data_dir.join(name);
    let tmp = data_dir.join(format!("{name}.tmp"));
    let text = serde_json::to_vec_pretty(value).map_err(|e| io_err(&path, e))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(&text).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    // The rename is durable once the directory is.
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Before the key is loaded: a data dir that held a member (its marker, or Raft state written by
/// a version before markers) never gets a fresh identity in place of a missing `node.key`.
pub fn check_key_present(data_dir: &Path, key: &Path) -> Result<(), HeldMemberError> {
    if key.exists() {
        return Ok(());
    }
    if let Some(mark) = read_mark(data_dir)? {
        return Err(HeldMemberError::KeyMissing {
            key: key.to_path_buf(),
            node_id: mark.node_id.to_string(),
            evidence: data_dir.join(MEMBER_FILE).display().to_string(),
        });
    }
    let raft = data_dir.join(RAFT_DIR);
    let has_state = std::fs::read_dir(&raft).is_ok_and(|mut d| d.next().is_some());
    if has_state {
        return Err(HeldMemberError::KeyMissing {
            key: key.to_path_buf(),
            node_id: "(unknown)".into(),
            evidence: raft.display().to_string(),
        });
    }
    Ok(())
}

/// After the key is loaded: it is the marker's member's key.
pub fn check_key_matches(
    data_dir: &Path,
    key: &Path,
    mark: &MemberMark,
    public_key_hex: &str,
) -> Result<(), HeldMemberError> {
    if mark.public_key == public_key_hex {
        return Ok(());
    }
    Err(HeldMemberError::KeyReplaced {
        key: key.to_path_buf(),
        node_id: mark.node_id,
        expected: mark.public_key.clone(),
        found: public_key_hex.to_string(),
        marker: data_dir.join(MEMBER_FILE),
    })
}

#[cfg(test)]
mod mark_tests {
    use super::*;

    #[test]
    fn a_member_data_dir_needs_its_own_key() {
        let tmp = tempfile::tempdir().expect("test io");
        let dir = tmp.path();
        let key = dir.join("node.key");
        // Fresh: nothing held, a key may be made.
        assert!(check_key_present(dir, &key).is_ok());
        assert_eq!(read_mark(dir).expect("read"), None);
        // Raft state of a version before markers counts as a member.
        std::fs::create_dir_all(dir.join(RAFT_DIR).join("db")).expect("test io");
        let e = check_key_present(dir, &key).unwrap_err();
        assert!(matches!(e, HeldMemberError::KeyMissing { .. }), "{e}");
        let mark = MemberMark {
            node_id: 42,
            public_key: "ab".repeat(32),
        };
        write_mark(dir, &mark).expect("write");
        assert_eq!(read_mark(dir).expect("read"), Some(mark.clone()));
        let e = check_key_present(dir, &key).unwrap_err();
        assert!(e.to_string().contains("member 42"), "{e}");
        std::fs::write(&key, [0u8; 32]).expect("test io");
        assert!(check_key_present(dir, &key).is_ok());
        assert!(check_key_matches(dir, &key, &mark, &"ab".repeat(32)).is_ok());
        let e = check_key_matches(dir, &key, &mark, &"cd".repeat(32)).unwrap_err();
        assert!(matches!(e, HeldMemberError::KeyReplaced { .. }), "{e}");
        std::fs::write(dir.join(MEMBER_FILE), b"garbage").expect("test io");
        assert!(read_mark(dir).is_err());
    }
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
