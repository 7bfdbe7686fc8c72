//! The data dir's format version, and the migrations that carry an older dir forward.
//!
//! `<data-dir>/format.json` names the format the dir's contents are in (sled trees, snapshots,
//! blob store, the files beside them). Version 1 is what runmesh wrote before the file existed
//! (commit 9265882 and the versions up to this one), so a dir without it is version 1. At start,
//! before anything in the dir is opened or written, the node reads the version:
//! - newer than this build understands: refused, nothing touched;
//! - older: each migration from there to [`CURRENT`] runs in order, and the version is written
//!   after each one succeeds, so a failed or interrupted migration leaves the dir at the last
//!   version it fully reached and is retried on the next start;
//! - current: nothing to do.

use std::path::{Path, PathBuf};

/// The format this build writes.
pub const CURRENT: u32 = 1;
/// A data dir without `format.json` holds this version (runmesh before the file existed).
pub const UNMARKED: u32 = 1;
pub const FORMAT_FILE: &str = "format.json";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FormatMark {
    format: u32,
    /// The runmesh version that last wrote the mark (for the operator; never decides anything).
    #[serde(default)]
    written_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "data dir {dir} is in format {found}, newer than this runmesh ({version}) understands \
         (format {supported} and older): it was written by a newer runmesh. Run that version or \
         a later one on it; nothing in the dir was changed"
    )]
    Newer {
        dir: PathBuf,
        found: u32,
        supported: u32,
        version: &'static str,
    },
    #[error("{path}: {msg}")]
    Unreadable { path: PathBuf, msg: String },
    #[error(
        "migrating data dir {dir} from format {from} to {to} failed: {msg}. The dir stays in \
         format {from}; the next start tries again"
    )]
    Migration {
        dir: PathBuf,
        from: u32,
        to: u32,
        msg: String,
    },
}

/// One step forward: turns a dir of format `from` into format `from + 1`.
pub struct Migration {
    pub from: u32,
    pub what: &'static str,
    pub run: fn(&Path) -> Result<(), String>,
}

/// The migrations of this build, oldest first: none yet (format 1 is the only one).
pub const MIGRATIONS: &[Migration] = &[];

/// The format `data_dir` holds: its mark, or [`UNMARKED`] without one (a new dir is created in
/// [`CURRENT`]).
pub fn read(data_dir: &Path) -> Result<u32, FormatError> {
    let path = data_dir.join(FORMAT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<FormatMark>(&bytes)
            .map(|m| m.format)
            .map_err(|e| FormatError::Unreadable {
                path,
                msg: format!("not a format mark: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let empty = std::fs::read_dir(data_dir).map_or(true, |mut d| d.next().is_none());
            Ok(if empty { CURRENT } else { UNMARKED })
        }
        Err(e) => Err(FormatError::Unreadable {
            path,
            msg: e.to_string(),
        }),
    }
}

/// Brings `data_dir` to [`CURRENT`] with this build's migrations, or refuses a newer one. Returns
/// the format it found. Call before anything opens the dir.
pub fn prepare(data_dir: &Path) -> Result<u32, FormatError> {
    prepare_with(data_dir, CURRENT, MIGRATIONS)
}

/// [`prepare`] with a given target and migration list (tests).
pub fn prepare_with(
    data_dir: &Path,
    target: u32,
    migrations: &[Migration],
) -> Result<u32, FormatError> {
    let found = read(data_dir)?;
    if found > target {
        return Err(FormatError::Newer {
            dir: data_dir.to_path_buf(),
            found,
            supported: target,
            version: env!("CARGO_PKG_VERSION"),
        });
    }
    let mut at = found;
    while at < target {
        let step =
            migrations
                .iter()
                .find(|m| m.from == at)
                .ok_or_else(|| FormatError::Migration {
                    dir: data_dir.to_path_buf(),
                    from: at,
                    to: at + 1,
                    msg: "this build has no migration for it".into(),
                })?;
        tracing::warn!(
            dir = %data_dir.display(),
            from = at,
            to = at + 1,
            what = step.what,
            "migrating the data dir"
        );
        (step.run)(data_dir).map_err(|msg| FormatError::Migration {
            dir: data_dir.to_path_buf(),
            from: at,
            to: at + 1,
            msg,
        })?;
        at += 1;
        write(data_dir, at)?;
    }
    Ok(found)
}

/// Writes the mark atomically and durably (a crash leaves the old file or the new one).
pub fn write(data_dir: &Path, format: u32) -> Result<(), FormatError> {
    let mark = FormatMark {
        format,
        written_by: format!("runmesh {}", env!("CARGO_PKG_VERSION")),
    };
    crate::datadir::write_json_durably(data_dir, FORMAT_FILE, &mark).map_err(|e| {
        FormatError::Unreadable {
            path: e.path,
            msg: e.msg,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).expect("write");
        }
        d
    }

    #[test]
    fn a_dir_without_a_mark_is_version_1_and_a_new_one_is_current() {
        let old = dir_with(&[("node.key", "k")]);
        assert_eq!(read(old.path()).expect("read"), UNMARKED);
        let new = dir_with(&[]);
        assert_eq!(read(new.path()).expect("read"), CURRENT);
        assert_eq!(prepare(old.path()).expect("prepare"), 1);
    }

    #[test]
    fn a_newer_format_is_refused_and_left_alone() {
        let d = dir_with(&[(FORMAT_FILE, r#"{"format": 7, "written_by": "runmesh 9"}"#)]);
        let e = prepare(d.path()).expect_err("newer");
        assert!(matches!(e, FormatError::Newer { found: 7, .. }), "{e}");
        assert!(e.to_string().contains("newer"), "{e}");
        let text = std::fs::read_to_string(d.path().join(FORMAT_FILE)).expect("read");
        assert!(text.contains("runmesh 9"), "the mark was rewritten: {text}");
        let garbage = dir_with(&[(FORMAT_FILE, "{")]);
        assert!(matches!(
            prepare(garbage.path()),
            Err(FormatError::Unreadable { .. })
        ));
    }

    fn add_a(dir: &Path) -> Result<(), String> {
        std::fs::write(dir.join("a"), "1").map_err(|e| e.to_string())
    }
    fn add_b(dir: &Path) -> Result<(), String> {
        if dir.join("a").exists() {
            std::fs::write(dir.join("b"), "2").map_err(|e| e.to_string())
        } else {
            Err("a is missing".into())
        }
    }
    fn fail(_: &Path) -> Result<(), String> {
        Err("disk full".into())
    }

    #[test]
    fn migrations_run_in_order_and_a_failed_one_keeps_the_last_version_reached() {
        let steps = [
            Migration {
                from: 2,
                what: "b",
                run: add_b,
            },
            Migration {
                from: 1,
                what: "a",
                run: add_a,
            },
        ];
        let d = dir_with(&[("node.key", "k")]);
        assert_eq!(prepare_with(d.path(), 3, &steps).expect("migrate"), 1);
        assert!(d.path().join("b").exists());
        assert_eq!(read(d.path()).expect("read"), 3);
        // Again: nothing to do.
        assert_eq!(prepare_with(d.path(), 3, &steps).expect("again"), 3);

        let broken = [
            Migration {
                from: 1,
                what: "a",
                run: add_a,
            },
            Migration {
                from: 2,
                what: "fails",
                run: fail,
            },
        ];
        let d = dir_with(&[("node.key", "k")]);
        let e = prepare_with(d.path(), 3, &broken).expect_err("fails");
        assert!(
            matches!(e, FormatError::Migration { from: 2, to: 3, .. }),
            "{e}"
        );
        assert_eq!(read(d.path()).expect("read"), 2, "the step that succeeded");
        // No migration known for a version: refused, not skipped.
        let d = dir_with(&[("node.key", "k")]);
        assert!(matches!(
            prepare_with(d.path(), 2, &[]),
            Err(FormatError::Migration { from: 1, .. })
        ));
    }
}
