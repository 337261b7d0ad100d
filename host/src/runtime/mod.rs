//! The runtime: subtasks, the channels between them, partitioning and the mailbox loops.
//!
//! Every subtask runs on its own OS thread, so that a guest busy with a batch never
//! stalls another subtask or the async I/O runtime; nodes joined by a `forward` edge of
//! equal parallelism share one (Flink's operator chaining). Subtasks talk only through bounded
//! channels of [`Message`]s — data batches, watermarks and end-of-input in one stream,
//! barriers on a priority lane beside it — so a slow consumer back-pressures its
//! producers all the way to the sources, and a barrier can still overtake the data.
//! The runtime knows nothing of WASM or of the job file's syntax: nodes come as
//! [`Operator`] and [`Source`] factories.
//!
//! # Layout
//! - `ids`: newtypes for checkpoint ids, subtask indices, key groups.
//! - `batch`: [`Batch`], records in contiguous buffers: the unit of the data plane.
//! - `record`: [`Record`], the data lane's [`Message`] and the barrier.
//! - `channel`: the bounded channel between two subtasks, with its priority lane.
//! - `keygroup`: key → key group → subtask, as Flink.
//! - `output`: partitioners and per-channel batch buffers of a producing subtask.
//! - `metrics`: records in and out and busy, idle and back-pressured time per subtask.
//! - `input`: the input gate of a consuming subtask (select over its channels).
//! - `chain`: operator chaining: the nodes of one subtask thread, output to input in
//!   memory.
//! - `task`: the loops of source subtasks and operator subtasks.
//! - `executor`: expands a job into subtasks and channels, runs them, collects the result.

pub mod batch;
mod chain;
pub mod channel;
pub mod executor;
pub mod ids;
mod input;
pub mod keygroup;
pub mod metrics;
mod output;
pub mod record;
pub mod task;
pub mod watermark;

pub use batch::{Batch, Blobs, RecordRef};
pub use executor::{
    CancelToken, Cluster, Executor, Graph, GraphNode, NodeBody, NodeEdge, RestorePoint, RunError,
    RunOptions,
};
pub use ids::{CheckpointId, KeyGroup, SubtaskIndex};
pub use record::{Barrier, Control, Message, Record};
pub use task::{Restore, RestoredParts};

use crate::checkpoint::coordinator::{DeclineReason, SubtaskStats, TaskRef};
use crate::checkpoint::snapshot::{SnapshotParts, SnapshotType};
use crate::state::LocalSnapshot;
use metrics::SubtaskMetrics;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a subtask or the executor, while waiting, looks at the cancel flag: short
/// enough that Ctrl-C feels immediate, long enough to cost nothing.
pub(crate) const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The wall clock in milliseconds since the Unix epoch: the clock of barrier timestamps
/// and of processing-time timers.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Who is to blame for a failure, so that the user knows where to look and the restart
/// strategy knows whether a retry can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operator's code trapped or returned an error.
    Guest,
    /// The job file or the data does not fit together (e.g. a record without a key on a
    /// `key-by` edge).
    User,
    /// A file, a disk or a remote service failed.
    External,
    /// A bug in Weir itself.
    Host,
}

/// Why a subtask stopped before its input ended.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The subtask failed.
    #[error("{message}")]
    Failed {
        /// Whose fault it is.
        fault: Fault,
        /// A sentence for the user.
        message: String,
    },
    /// A neighbouring subtask stopped, so a channel closed; the cause is reported by
    /// that subtask.
    #[error("a channel closed because another subtask stopped")]
    Disconnected,
    /// The job was cancelled.
    #[error("the job was cancelled")]
    Cancelled,
}

impl TaskError {
    /// A failure of the given fault.
    pub fn failed(fault: Fault, message: impl Into<String>) -> Self {
        Self::Failed {
            fault,
            message: message.into(),
        }
    }
}

/// What a subtask knows about its place in the job.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    /// The node's id in the job file.
    pub node: String,
    /// Which subtask of the node this is.
    pub subtask: SubtaskIndex,
    /// How many subtasks the node has.
    pub parallelism: u32,
    /// The job's number of key groups.
    pub max_parallelism: u32,
    /// Its counters, for what the operator counts itself (fuel, dead letters).
    pub metrics: Arc<SubtaskMetrics>,
}

impl TaskInfo {
    /// Flink's name for a subtask: `count (2/4)`, counting from 1.
    pub fn name(&self) -> String {
        format!(
            "{} ({}/{})",
            self.node,
            self.subtask.0 + 1,
            self.parallelism
        )
    }
}

/// The asynchronous half of a snapshot that is only operator state (a source's
/// positions, a sink's transactions): serialises what the synchronous phase captured.
/// It runs on the I/O runtime while the subtask goes on processing.
pub type SnapshotWriter = Box<dyn FnOnce() -> Result<Vec<u8>, TaskError> + Send>;

/// The asynchronous half of a snapshot with keyed state or timers: produces its parts
/// in the one snapshot format ([`crate::checkpoint::snapshot`]), which the checkpoint
/// part lays out and stores.
pub type PartsWriter = Box<dyn FnOnce() -> Result<SnapshotParts, TaskError> + Send>;

/// The in-flight data an unaligned checkpoint persisted for one subtask: per input
/// channel, in the channel's order, the batches sent before the barrier that the
/// subtask had not consumed when it took its snapshot. Empty for an aligned checkpoint.
pub type ChannelState = Vec<Vec<Batch>>;

/// What a subtask hands over in the synchronous phase of a checkpoint.
pub enum Snapshot {
    /// The subtask's input ended and its logic has closed: on restore it is not run
    /// again (so it never emits its final results twice), only passed through.
    Finished,
    /// Operator state to serialise and store.
    State(SnapshotWriter),
    /// Parts of the snapshot format to store.
    Parts(PartsWriter),
    /// Parts to store, and the files of a state backend's native snapshot to upload
    /// (RocksDB), which hold the keyed state.
    PartsAndFiles(PartsWriter, LocalSnapshot),
    /// The synchronous phase overran a limit (`sync-phase-timeout`, `sync-phase-fuel`):
    /// the subtask declines the checkpoint, for this reason, and goes on.
    Declined(String),
}

/// A consuming node's logic for one subtask: an operator or a sink. Implemented by the
/// WASM operator, by the native sinks, and by native baselines in the benchmarks.
pub trait Operator: Send {
    /// Prepares the subtask before the first record; `restored` is what it restores of
    /// the snapshot the job starts from (see [`RestoredParts`] for how parts are
    /// redistributed when the parallelism changed).
    fn open(&mut self, restored: Option<RestoredParts>) -> Result<(), TaskError>;
    /// Processes a batch, appending what it emits to `out`.
    fn process(&mut self, batch: &Batch, out: &mut Batch) -> Result<(), TaskError>;
    /// Event time advanced to `watermark` (the minimum over all inputs).
    fn on_watermark(&mut self, watermark: i64, out: &mut Batch) -> Result<(), TaskError> {
        let _ = (watermark, out);
        Ok(())
    }
    /// When the operator next wants [`Operator::on_processing_time`] called, if ever.
    fn next_processing_timer(&self) -> Option<Instant> {
        None
    }
    /// The wall clock reached `now`: fire due processing-time timers.
    fn on_processing_time(&mut self, now: Instant, out: &mut Batch) -> Result<(), TaskError> {
        let _ = (now, out);
        Ok(())
    }
    /// The synchronous phase of checkpoint `checkpoint`: capture a consistent view of
    /// the state, quickly, and return how to serialise it. `kind` says whether it is a
    /// savepoint, which a keyed backend writes in the canonical format (or natively).
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        kind: SnapshotType,
    ) -> Result<Snapshot, TaskError>;
    /// Fuel the last [`Operator::snapshot`] spent, when the operator meters fuel.
    fn sync_fuel(&self) -> Option<u64> {
        None
    }
    /// `checkpoint` is complete and durable: commit its side effects.
    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        let _ = checkpoint;
        Ok(())
    }
    /// `checkpoint` was aborted: its side effects must not be committed.
    fn notify_checkpoint_aborted(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        let _ = checkpoint;
        Ok(())
    }
    /// The input ended: release resources, emit what is left. With checkpointing on,
    /// [`Operator::snapshot`] and the notifications may still follow (the final
    /// checkpoint); nothing else does.
    fn close(&mut self, out: &mut Batch) -> Result<(), TaskError>;
}

/// Where a subtask sends its part of a checkpoint; the checkpoint driver implements it.
/// Calls never block the subtask: the asynchronous phase runs elsewhere.
pub trait CheckpointSink: Send + Sync {
    /// Hands over the snapshot of `task` for `checkpoint`, with the statistics of its
    /// synchronous phase; the sink runs the asynchronous phase and acknowledges.
    fn submit(
        &self,
        task: TaskRef,
        checkpoint: CheckpointId,
        snapshot: Snapshot,
        channel_state: ChannelState,
        stats: SubtaskStats,
    );
    /// `task` will not take part in `checkpoint`.
    fn decline(&self, task: TaskRef, checkpoint: CheckpointId, reason: DeclineReason);
    /// Source `task` reached the end of its input; once every source has, the
    /// coordinator triggers the final checkpoint.
    fn source_exhausted(&self, task: TaskRef);
}

/// What a source did when polled.
#[derive(Debug, PartialEq, Eq)]
pub enum SourcePoll {
    /// It appended records (possibly none) and can be polled again at once.
    Ready,
    /// It has nothing until this instant (a rate limit, or waiting for data).
    Idle(Instant),
    /// Its input is exhausted; nothing follows.
    Finished,
}

/// A source's logic for one subtask.
pub trait Source: Send {
    /// Prepares the subtask before the first poll; `restored` is what its
    /// [`Source::snapshot`] wrote into the snapshot the job restores from (its
    /// positions): its own at the same parallelism, every old subtask's after a
    /// rescale, from which it takes the splits it now owns.
    fn open(&mut self, restored: Option<Vec<Vec<u8>>>) -> Result<(), TaskError>;
    /// Appends up to `max` records to `out`.
    fn poll(&mut self, out: &mut Batch, max: usize) -> Result<SourcePoll, TaskError>;
    /// Records where the source stands (its offsets) for checkpoint `checkpoint`. Called
    /// between polls, right before the source emits the checkpoint's barrier.
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<SnapshotWriter, TaskError>;
    /// `checkpoint` is complete and durable (a Kafka source commits its offsets to the
    /// group then, for monitoring).
    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        let _ = checkpoint;
        Ok(())
    }
    /// How many splits (Kafka partitions) the subtask reads, after `open`: each has its
    /// own event-time clock ([`watermark`]).
    fn splits(&self) -> usize {
        1
    }
    /// The split of each record the last poll appended, in order; empty when the
    /// subtask reads one split.
    fn record_splits(&self) -> &[u32] {
        &[]
    }
    /// The watermark at `now`, when it moved forward; only a source with a watermark
    /// strategy ([`watermark::EventTime`]) has one.
    fn watermark(&mut self, now: Instant) -> Option<i64> {
        let _ = now;
        None
    }
}
