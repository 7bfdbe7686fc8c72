//! What this replica has acknowledged, recorded apart from the log.
//!
//! sled checks its own segments, and on damage it opens with what comes before the damage: a log
//! that quietly lost its tail, or everything. A voter that forgets entries it acknowledged breaks
//! Raft's safety (its vote can elect a leader without them). So the store keeps, in a small file
//! beside sled's (`acknowledged.json`), the last vote it saved and the index of the last entry it
//! made durable, and on start compares the log with it ([`Acknowledged::check`]).
//!
//! The vote is recorded before it is acted on (elections are rare); the log index at most
//! [`RECORD_EVERY`] after its fsync, so damage to entries older than that is always seen, and the
//! record never claims more than sled made durable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::Vote;

pub const FILE: &str = "acknowledged.json";
/// Longest the recorded log index trails the durable log.
pub const RECORD_EVERY: Duration = Duration::from_millis(100);

/// The record itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledged {
    /// Index of the last log entry made durable (so possibly acknowledged to a leader).
    pub last_log_index: Option<u64>,
    /// The last vote saved.
    pub vote: Option<Vote>,
}

/// What the log holds, against the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// At least what was acknowledged.
    Intact,
    /// Shorter than acknowledged: entries after `holds` up to `acknowledged` are gone.
    Damaged {
        holds: Option<u64>,
        acknowledged: u64,
    },
}

impl Acknowledged {
    /// Compares a log whose last entry (or purge point) is `last_log_index` with the record.
    pub fn check(&self, last_log_index: Option<u64>) -> Verdict {
        match self.last_log_index {
            Some(acked) if last_log_index.is_none_or(|held| held < acked) => Verdict::Damaged {
                holds: last_log_index,
                acknowledged: acked,
            },
            _ => Verdict::Intact,
        }
    }
}

/// Keeps the record up to date; shared by the log store's clones.
pub struct Recorder {
    path: PathBuf,
    state: Mutex<RecorderState>,
}

#[derive(Default)]
struct RecorderState {
    current: Acknowledged,
    written: Acknowledged,
}

impl Recorder {
    /// The recorder of the store in `dir`, and the record found there (`None`: a store from before
    /// records, or a new one).
    pub fn open(dir: &Path) -> Result<(Arc<Self>, Option<Acknowledged>), String> {
        let path = dir.join(FILE);
        let found = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<Acknowledged>(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let start = found.clone().unwrap_or_default();
        let rec = Arc::new(Self {
            path,
            state: Mutex::new(RecorderState {
                current: start.clone(),
                written: start,
            }),
        });
        Ok((rec, found))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries up to `index` are durable.
    pub fn appended(&self, index: u64) {
        let mut s = self.state();
        if s.current.last_log_index.is_none_or(|i| i < index) {
            s.current.last_log_index = Some(index);
        }
    }

    /// Entries from `first_removed` on were removed (a conflicting tail): recorded now, or the
    /// next start would take the shorter log for damage.
    pub fn truncated(&self, first_removed: u64) -> std::io::Result<()> {
        {
            let mut s = self.state();
            if s.current.last_log_index.is_some_and(|i| i >= first_removed) {
                s.current.last_log_index = first_removed.checked_sub(1);
            }
        }
        self.write_if_changed()
    }

    /// A vote was saved: recorded before it is acted on.
    pub fn voted(&self, vote: &Vote) -> std::io::Result<()> {
        self.state().current.vote = Some(*vote);
        self.write_if_changed()
    }

    /// Writes the record when it changed since the last write (atomically, durably).
    pub fn write_if_changed(&self) -> std::io::Result<()> {
        let mut s = self.state();
        if s.current == s.written {
            return Ok(());
        }
        let record = s.current.clone();
        write_atomically(&self.path, &record)?;
        s.written = record;
        Ok(())
    }

    /// Writes the record every [`RECORD_EVERY`] while the recorder is in use.
    pub fn spawn_writer(rec: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(rec);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECORD_EVERY).await;
                let Some(rec) = weak.upgrade() else { return };
                let res = tokio::task::spawn_blocking(move || rec.write_if_changed()).await;
                if let Ok(Err(e)) = res {
                    tracing::warn!(error = %e, "the acknowledged-entries record was not written");
                }
            }
        });
    }
}

fn write_atomically(path: &Path, record: &Acknowledged) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_log_shorter_than_acknowledged_is_damaged() {
        let rec = Acknowledged {
            last_log_index: Some(10),
            vote: None,
        };
        assert_eq!(rec.check(Some(10)), Verdict::Intact);
        assert_eq!(rec.check(Some(11)), Verdict::Intact);
        assert_eq!(
            rec.check(Some(4)),
            Verdict::Damaged {
                holds: Some(4),
                acknowledged: 10
            }
        );
        assert_eq!(
            rec.check(None),
            Verdict::Damaged {
                holds: None,
                acknowledged: 10
            }
        );
        assert_eq!(Acknowledged::default().check(None), Verdict::Intact);
    }

    #[test]
    fn the_record_follows_appends_truncations_and_votes() {
        let dir = tempfile::tempdir().unwrap();
        let (rec, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found, None);
        rec.appended(5);
        rec.appended(3);
        rec.write_if_changed().unwrap();
        let (_, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found.unwrap().last_log_index, Some(5));
        rec.truncated(4).unwrap();
        let (_, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found.clone().unwrap().last_log_index, Some(3));
        let vote = Vote::new(7, 2);
        rec.voted(&vote).unwrap();
        let (_, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found.unwrap().vote, Some(vote));
        rec.truncated(0).unwrap();
        let (_, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found.unwrap().last_log_index, None);
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        assert!(Recorder::open(dir.path()).is_err());
    }
}
