//! What this replica has acknowledged, recorded apart from the log.
//!
//! sled checks its own segments, and on damage it opens with what comes before the damage: a log
//! that quietly lost its tail, or everything. A voter that forgets entries it acknowledged breaks
//! Raft's safety (its vote can elect a leader without them). So the store keeps, in a small file
//! beside sled's (`acknowledged.slots`), the last vote it saved and the index of the last entry it
//! made durable, and on start compares the log with it ([`Acknowledged::check`]).
//!
//! The vote is recorded before it is acted on, and the log index after sled's fsync of an append
//! but before openraft hears of it (so before any entry is acknowledged): damage to any
//! acknowledged entry is seen, and the record never claims more than sled made durable. That is a
//! second small fsync per appended batch (group commit keeps it per batch, not per job), so the
//! write is the cheapest durable one: two fixed slots overwritten in place in turn, each with a
//! sequence number and a checksum, and one `fdatasync`. A torn write spoils only the slot being
//! written; the other still holds the previous record. Stores from before the slots kept the
//! record in `acknowledged.json` (rewritten whole each time); it is read when no slots file exists
//! and removed after the first slot write.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::types::Vote;

/// The record of stores from before the slots file.
pub const FILE: &str = "acknowledged.json";
/// The record: two [`SLOT_BYTES`] slots.
pub const SLOTS_FILE: &str = "acknowledged.slots";
/// Every file the record may be in (a store moved aside keeps them).
pub const FILES: [&str; 2] = [SLOTS_FILE, FILE];
const SLOT_BYTES: usize = 512;
/// Sequence number, body length, body, checksum.
const SLOT_OVERHEAD: usize = 8 + 4 + 8;

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
    dir: PathBuf,
    state: Mutex<RecorderState>,
}

#[derive(Default)]
struct RecorderState {
    current: Acknowledged,
    written: Acknowledged,
    /// Sequence number of the newest slot written (the next write goes to the other slot).
    seq: u64,
    /// The slots file, once opened for writing.
    file: Option<File>,
}

/// FNV-1a: enough to tell a torn or stale slot from a whole one (not an adversary's forgery).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn encode_slot(seq: u64, record: &Acknowledged) -> std::io::Result<[u8; SLOT_BYTES]> {
    let body = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    if body.len() + SLOT_OVERHEAD > SLOT_BYTES {
        return Err(std::io::Error::other(
            "acknowledged record larger than its slot",
        ));
    }
    let mut slot = [0u8; SLOT_BYTES];
    slot[..8].copy_from_slice(&seq.to_le_bytes());
    slot[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    let end = 12 + body.len();
    slot[12..end].copy_from_slice(&body);
    let sum = checksum(&slot[..end]);
    slot[end..end + 8].copy_from_slice(&sum.to_le_bytes());
    Ok(slot)
}

/// A whole slot's (sequence number, record); `None` for an empty, torn or garbled one.
fn decode_slot(slot: &[u8]) -> Option<(u64, Acknowledged)> {
    let seq = u64::from_le_bytes(slot.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(slot.get(8..12)?.try_into().ok()?) as usize;
    let end = 12usize.checked_add(len)?;
    let sum = u64::from_le_bytes(slot.get(end..end.checked_add(8)?)?.try_into().ok()?);
    if seq == 0 || checksum(slot.get(..end)?) != sum {
        return None;
    }
    let record = serde_json::from_slice(slot.get(12..end)?).ok()?;
    Some((seq, record))
}

/// The newest whole slot of a slots file's bytes.
fn newest_slot(bytes: &[u8]) -> Option<(u64, Acknowledged)> {
    bytes
        .chunks(SLOT_BYTES)
        .take(2)
        .filter_map(decode_slot)
        .max_by_key(|(seq, _)| *seq)
}

impl Recorder {
    /// The recorder of the store in `dir`, and the record found there (`None`: a store from before
    /// records, or a new one).
    pub fn open(dir: &Path) -> Result<(Arc<Self>, Option<Acknowledged>), String> {
        let read = |path: &Path| match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        let slots = dir.join(SLOTS_FILE);
        let legacy = dir.join(FILE);
        // All zeros: created, never written (a crash right after creating it); the older record,
        // if any, is still there.
        let slot_bytes = read(&slots)?.filter(|b| b.iter().any(|x| *x != 0));
        let (found, seq) = match slot_bytes {
            Some(bytes) => match newest_slot(&bytes) {
                Some((seq, record)) => (Some(record), seq),
                None => {
                    return Err(format!(
                        "{}: neither slot holds a whole record",
                        slots.display()
                    ))
                }
            },
            None => match read(&legacy)? {
                Some(bytes) => (
                    Some(
                        serde_json::from_slice::<Acknowledged>(&bytes)
                            .map_err(|e| format!("{}: {e}", legacy.display()))?,
                    ),
                    0,
                ),
                None => (None, 0),
            },
        };
        let start = found.clone().unwrap_or_default();
        let rec = Arc::new(Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(RecorderState {
                current: start.clone(),
                written: start,
                seq,
                file: None,
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

    /// Writes the record when it changed since the last write, durably, into the slot after
    /// the newest.
    pub fn write_if_changed(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let mut s = self.state();
        if s.current == s.written {
            return Ok(());
        }
        let record = s.current.clone();
        let seq = s.seq + 1;
        let slot = encode_slot(seq, &record)?;
        if s.file.is_none() {
            s.file = Some(self.open_slots()?);
        }
        let Some(file) = s.file.as_ref() else {
            return Err(std::io::Error::other("the slots file is not open"));
        };
        file.write_all_at(&slot, (seq % 2) * SLOT_BYTES as u64)?;
        file.sync_data()?;
        if s.seq == 0 {
            // The first record in slots: the older file, if any, is superseded only now.
            match std::fs::remove_file(self.dir.join(FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        s.seq = seq;
        s.written = record;
        Ok(())
    }

    /// Opens the slots file, creating it (full size, durably) when missing.
    fn open_slots(&self) -> std::io::Result<File> {
        let path = self.dir.join(SLOTS_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() < 2 * SLOT_BYTES as u64 {
            file.set_len(2 * SLOT_BYTES as u64)?;
            file.sync_all()?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(file)
    }
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
        // Both slots garbled: the record is damaged, and the node is told so.
        std::fs::write(dir.path().join(SLOTS_FILE), [7u8; 2 * SLOT_BYTES]).unwrap();
        assert!(Recorder::open(dir.path()).is_err());
    }

    #[test]
    fn a_torn_slot_leaves_the_previous_record() {
        let dir = tempfile::tempdir().unwrap();
        let (rec, _) = Recorder::open(dir.path()).unwrap();
        rec.appended(5);
        rec.write_if_changed().unwrap();
        rec.appended(9);
        rec.write_if_changed().unwrap();
        let path = dir.path().join(SLOTS_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 * SLOT_BYTES);
        // The newest (seq 2) is in slot 0: tear it.
        bytes[20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (rec, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found.unwrap().last_log_index, Some(5));
        // And the next write goes past both.
        rec.appended(12);
        rec.write_if_changed().unwrap();
        let (_, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found.unwrap().last_log_index, Some(12));
    }

    #[test]
    fn an_older_stores_json_record_is_read_and_superseded_by_the_first_slot() {
        let dir = tempfile::tempdir().unwrap();
        let old = Acknowledged {
            last_log_index: Some(40),
            vote: Some(Vote::new(3, 1)),
        };
        std::fs::write(dir.path().join(FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        // A slots file created but never written (a crash in between) changes nothing.
        std::fs::write(dir.path().join(SLOTS_FILE), [0u8; 2 * SLOT_BYTES]).unwrap();
        let (rec, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found, Some(old));
        rec.appended(41);
        rec.write_if_changed().unwrap();
        assert!(!dir.path().join(FILE).exists());
        let (_, found) = Recorder::open(dir.path()).unwrap();
        assert_eq!(found.unwrap().last_log_index, Some(41));
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        // The slots win over a leftover JSON file.
        assert!(Recorder::open(dir.path()).is_ok());
    }
}
