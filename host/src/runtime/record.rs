//! The one message type that travels between subtasks, and [`Record`], an owned record
//! for tests, dead letters and other places off the data path.

use crate::checkpoint::snapshot::SnapshotType;
use crate::runtime::batch::{Batch, RecordRef};
use crate::runtime::ids::CheckpointId;
use std::time::Duration;

/// One element of a stream, as the WIT contract's `record`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The partitioning key; required on `key-by` edges.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub value: Vec<u8>,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
}

impl Record {
    /// A record with a value and nothing else.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: None,
            value: value.into(),
            timestamp: None,
        }
    }

    /// The same record with `key` set.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The record as a view, to push into a [`Batch`].
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.key.as_deref(),
            value: &self.value,
            timestamp: self.timestamp,
        }
    }
}

impl From<RecordRef<'_>> for Record {
    fn from(r: RecordRef<'_>) -> Self {
        Self {
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.to_vec(),
            timestamp: r.timestamp,
        }
    }
}

impl<'a> FromIterator<&'a Record> for Batch {
    fn from_iter<I: IntoIterator<Item = &'a Record>>(records: I) -> Self {
        records.into_iter().map(Record::as_ref).collect()
    }
}

impl Batch {
    /// The records as owned [`Record`]s: for tests and error paths, never the data path.
    pub fn to_records(&self) -> Vec<Record> {
        self.iter().map(Record::from).collect()
    }
}

/// A checkpoint barrier, injected by the sources and carried on every channel's
/// priority lane, stamped with its place among the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Barrier {
    /// The checkpoint the barrier belongs to.
    pub checkpoint: CheckpointId,
    /// When the coordinator triggered the checkpoint, in milliseconds since the Unix
    /// epoch (as Flink's barrier timestamp); subtasks measure their start delay from it.
    pub triggered_at_ms: i64,
    /// When the checkpoint turns unaligned, counted from its trigger: `None` keeps it
    /// aligned (and at-least-once ignores it), zero makes it unaligned from the start,
    /// and anything else is Flink's aligned-checkpoint timeout.
    pub unaligned_after: Option<Duration>,
    /// A checkpoint or a savepoint, and which kind of savepoint.
    pub kind: SnapshotType,
    /// Stop with this savepoint: sources poll no more once they sent it, and the job
    /// ends when it completes.
    pub stop: bool,
}

impl Barrier {
    /// A periodic checkpoint's barrier.
    pub fn checkpoint(
        checkpoint: CheckpointId,
        triggered_at_ms: i64,
        unaligned_after: Option<Duration>,
    ) -> Self {
        Self {
            checkpoint,
            triggered_at_ms,
            unaligned_after,
            kind: SnapshotType::Checkpoint,
            stop: false,
        }
    }
}

/// What the checkpoint coordinator tells a subtask, outside the data channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Control {
    /// Sources only: record your offsets and emit the barrier of this checkpoint.
    Trigger(Barrier),
    /// The checkpoint is complete and durable: commit its side effects.
    Complete(CheckpointId),
    /// The checkpoint was aborted.
    Abort(CheckpointId),
    /// The job's final checkpoint (taken after every source ended) is complete: stop.
    Finish,
}

/// What a channel's data lane carries, in order. Barriers travel beside it, on the
/// priority lane, with their place in this order ([`crate::runtime::channel`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A batch of records, moved by its buffers.
    Batch(Batch),
    /// Event time advanced to this many milliseconds.
    Watermark(i64),
    /// The upstream subtask has no more records. With checkpointing on, barriers may
    /// still follow (the final checkpoint); nothing else does.
    EndOfInput,
}
