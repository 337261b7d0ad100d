//! What `on-runaway = "dead-letter"` needs: a restore point (the operator's last
//! snapshot, kept in memory), a log of what the guest saw since then, and the
//! dead-letter file.
//!
//! When a record overruns a limit in `process`, the instance is gone (a trap) or its
//! state is half-updated. The operator builds a new instance from the restore point and
//! replays the log into it with the output thrown away: the output went downstream the
//! first time. The guest must therefore be deterministic: given the same state and the
//! same calls it must make the same state changes (processing-time timers fire at the
//! logged times, but a guest that reads the clock or random numbers itself may diverge).
//! Then the offending batch is processed one record at a time, each with its own
//! budget; the record that overruns again goes to the dead-letter file, and the
//! instance is rebuilt and replayed once more before the next record.
//!
//! The dead-letter file is written when the record is skipped, not transactionally: a
//! restart from an older checkpoint that replays the record writes it again.

use crate::checkpoint::snapshot::KeyedSections;
use crate::runtime::{Batch, CheckpointId, Record, TaskInfo};
use crate::state::{StateError, StateWriter, Timers};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A guest call since the restore point, to replay in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Replayed {
    /// `process` with these records.
    Batch(Batch),
    /// The watermark advanced (event-time timers due, then `on-watermark`).
    Watermark(i64),
    /// Processing-time timers due at this time fired.
    ProcessingTime(i64),
    /// The guest heard how a checkpoint ended.
    Notified {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Complete (or aborted).
        complete: bool,
    },
}

/// What a logged event without records is counted as, in bytes.
const EVENT_COST: u64 = 16;

impl Replayed {
    /// Bytes of host memory the event holds, roughly.
    fn cost(&self) -> u64 {
        match self {
            Replayed::Batch(batch) => {
                let records = u64::try_from(batch.len()).unwrap_or(u64::MAX);
                u64::try_from(batch.payload_bytes())
                    .unwrap_or(u64::MAX)
                    .saturating_add(records.saturating_mul(EVENT_COST))
            }
            _ => EVENT_COST,
        }
    }
}

/// The guest calls since the restore point, up to a limit in bytes. Past the limit the
/// log is dropped, and a runaway record fails the subtask until the next snapshot
/// starts a new log.
#[derive(Debug)]
pub(crate) struct ReplayLog {
    events: Vec<Replayed>,
    bytes: u64,
    limit: u64,
    overflowed: bool,
}

impl ReplayLog {
    /// An empty log of at most `limit` bytes.
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            events: Vec::new(),
            bytes: 0,
            limit,
            overflowed: false,
        }
    }

    /// Appends `event`, unless the log has overflowed.
    pub(crate) fn push(&mut self, event: Replayed) {
        if self.overflowed {
            return;
        }
        self.bytes = self.bytes.saturating_add(event.cost());
        if self.bytes > self.limit {
            self.events = Vec::new();
            self.overflowed = true;
        } else {
            self.events.push(event);
        }
    }

    /// A snapshot was taken: it is the new restore point, and the log starts again.
    pub(crate) fn reset(&mut self) {
        self.events.clear();
        self.bytes = 0;
        self.overflowed = false;
    }

    /// The events to replay, or `None` when the log overflowed.
    pub(crate) fn events(&self) -> Option<&[Replayed]> {
        (!self.overflowed).then_some(self.events.as_slice())
    }

    /// The limit, for the message when it overflowed.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

/// The operator's state at its last snapshot (or at its start), enough to build an
/// equal instance.
pub(crate) struct RestorePoint {
    /// The keyed state as captured (the heap backend's copy-on-write snapshot): encoded
    /// the first time it is needed, into `keyed`.
    capture: Option<StateWriter>,
    keyed: Option<KeyedSections>,
    /// What to pass to the guest's `restore-state`, once per blob; none after a fresh
    /// start.
    pub(crate) operator: Vec<Vec<u8>>,
    /// The registered timers.
    pub(crate) timers: Timers,
    /// The watermark the guest had seen.
    pub(crate) watermark: Option<i64>,
}

impl RestorePoint {
    /// A restore point of these parts.
    pub(crate) fn new(
        capture: StateWriter,
        operator: Vec<Vec<u8>>,
        timers: Timers,
        watermark: Option<i64>,
    ) -> Self {
        Self {
            capture: Some(capture),
            keyed: None,
            operator,
            timers,
            watermark,
        }
    }

    /// The keyed state's encoding, produced on first use.
    pub(crate) fn keyed(&mut self) -> Result<KeyedSections, StateError> {
        if let Some(capture) = self.capture.take() {
            self.keyed = Some(capture()?.into_sections());
        }
        self.keyed
            .clone()
            .ok_or_else(|| StateError::Corrupt("encoding the restore point failed before".into()))
    }
}

/// Bytes in a dead-letter entry: text when they are UTF-8, else hexadecimal.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
enum Bytes {
    Text(String),
    Hex { hex: String },
}

impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Bytes::Text(text.to_owned()),
            Err(_) => Bytes::Hex {
                hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            },
        }
    }
}

/// One line of a dead-letter file.
#[derive(Debug, Serialize)]
struct Entry<'a> {
    /// The operator's id.
    operator: &'a str,
    /// The subtask, counting from 0, and the operator's parallelism.
    subtask: u32,
    parallelism: u32,
    /// The record's index in the subtask's input (counted across restores).
    position: u64,
    key: Option<Bytes>,
    value: Bytes,
    timestamp: Option<i64>,
    /// The guest function and what went wrong.
    function: &'a str,
    error: &'a str,
    /// The guest's backtrace, one frame per line.
    backtrace: &'a str,
    /// When it was written, in milliseconds since the Unix epoch.
    at_ms: i64,
}

/// A record that overran its limits and was skipped.
pub(crate) struct DeadLetter<'a> {
    pub(crate) record: &'a Record,
    pub(crate) position: u64,
    pub(crate) function: &'a str,
    pub(crate) error: &'a str,
    pub(crate) backtrace: &'a str,
}

/// The dead-letter file of one operator, `<dir>/<operator>.jsonl`, shared by its
/// subtasks: each entry is one `write` of one line to a file opened for appending, so
/// the lines of several subtasks never interleave.
pub(crate) struct DeadLetterFile {
    path: PathBuf,
}

impl DeadLetterFile {
    /// The file of operator `node` in `dir`.
    pub(crate) fn new(dir: &Path, node: &str) -> Self {
        Self {
            path: dir.join(format!("{node}.jsonl")),
        }
    }

    /// Where the file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `letter` from subtask `info`, creating the directory and file if needed.
    pub(crate) fn append(&self, info: &TaskInfo, letter: &DeadLetter<'_>) -> std::io::Result<()> {
        let entry = Entry {
            operator: &info.node,
            subtask: info.subtask.0,
            parallelism: info.parallelism,
            position: letter.position,
            key: letter.record.key.as_deref().map(Bytes::from),
            value: Bytes::from(letter.record.value.as_slice()),
            timestamp: letter.record.timestamp,
            function: letter.function,
            error: letter.error,
            backtrace: letter.backtrace,
            at_ms: crate::runtime::now_ms(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SubtaskIndex;

    fn record(key: &str, value: &str) -> Record {
        Record {
            key: Some(key.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            timestamp: None,
        }
    }

    #[test]
    fn the_log_keeps_events_in_order_until_the_next_snapshot() {
        let mut log = ReplayLog::new(1 << 20);
        log.push(Replayed::Batch([record("a", "1")].iter().collect()));
        log.push(Replayed::Watermark(5));
        log.push(Replayed::Notified {
            checkpoint: CheckpointId(3),
            complete: true,
        });
        assert_eq!(
            log.events().map(<[Replayed]>::len),
            Some(3),
            "all three, in order"
        );
        assert_eq!(
            log.events().map(|e| e[1].clone()),
            Some(Replayed::Watermark(5))
        );
        log.reset();
        assert_eq!(log.events(), Some(&[][..]));
    }

    #[test]
    fn a_log_over_its_limit_is_dropped_until_the_next_snapshot() {
        let mut log = ReplayLog::new(100);
        log.push(Replayed::Batch(
            [record("k", &"x".repeat(60))].iter().collect(),
        ));
        assert!(log.events().is_some());
        log.push(Replayed::Batch(
            [record("k", &"x".repeat(60))].iter().collect(),
        ));
        assert_eq!(log.events(), None, "overflowed");
        log.push(Replayed::Watermark(1));
        assert_eq!(log.events(), None, "stays overflowed");
        log.reset();
        log.push(Replayed::Watermark(1));
        assert_eq!(log.events().map(<[Replayed]>::len), Some(1));
    }

    #[test]
    fn a_restore_point_encodes_its_keyed_state_once() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let mut point = RestorePoint::new(
            Box::new(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(crate::checkpoint::snapshot::KeyedState::default())
            }),
            Vec::new(),
            Timers::default(),
            None,
        );
        assert!(point.keyed().is_ok_and(|k| k.groups.is_empty()));
        assert!(point.keyed().is_ok_and(|k| k.groups.is_empty()));
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn dead_letters_are_json_lines_with_text_or_hex_bytes() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = DeadLetterFile::new(&dir.path().join("dead"), "spin");
        let info = TaskInfo {
            node: "spin".into(),
            subtask: SubtaskIndex(1),
            parallelism: 2,
            max_parallelism: 128,
            metrics: Default::default(),
        };
        let text = record("poison", "value");
        let binary = Record {
            key: None,
            value: vec![0xff, 0x00],
            timestamp: Some(7),
        };
        for (record, position) in [(&text, 41), (&binary, 42)] {
            let letter = DeadLetter {
                record,
                position,
                function: "process",
                error: "ran out of fuel",
                backtrace: "0: spin::process",
            };
            file.append(&info, &letter).expect("appended");
        }
        let written = std::fs::read_to_string(file.path()).expect("the file");
        let lines: Vec<serde_json::Value> = written
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["key"], "poison");
        assert_eq!(lines[0]["position"], 41);
        assert_eq!(lines[0]["subtask"], 1);
        assert_eq!(lines[0]["error"], "ran out of fuel");
        assert_eq!(lines[1]["key"], serde_json::Value::Null);
        assert_eq!(lines[1]["value"]["hex"], "ff00");
        assert_eq!(lines[1]["timestamp"], 7);
    }
}
