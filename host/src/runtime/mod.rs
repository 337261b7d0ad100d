//! The runtime: subtasks, the channels between them, partitioning and the mailbox loops.
//!
//! Every subtask runs on its own OS thread, so that a guest busy with a batch never
//! stalls another subtask or the async I/O runtime. Subtasks talk only through bounded
//! channels of [`Message`]s — data batches, barriers, watermarks and end-of-input in
//! one stream — so a slow consumer back-pressures its producers all the way to the
//! sources. The runtime knows nothing of WASM or of the job file's syntax: nodes come
//! as [`Operator`] and [`Source`] factories.
//!
//! # Layout
//! - `ids`: newtypes for checkpoint ids, subtask indices, key groups.
//! - `record`: [`Record`] and the one [`Message`] type.
//! - `keygroup`: key → key group → subtask, as Flink.
//! - `output`: partitioners and per-channel batch buffers of a producing subtask.
//! - `input`: the input gate of a consuming subtask (select over its channels).
//! - `task`: the loops of source subtasks and operator subtasks.
//! - `executor`: expands a job into subtasks and channels, runs them, collects the result.

pub mod executor;
pub mod ids;
mod input;
pub mod keygroup;
mod output;
pub mod record;
mod task;

pub use executor::{CancelToken, Executor, Graph, GraphNode, NodeBody, NodeEdge, RunError};
pub use ids::{CheckpointId, KeyGroup, SubtaskIndex};
pub use record::{Message, Record};

use std::time::Instant;

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

/// A consuming node's logic for one subtask: an operator or a sink. Implemented by the
/// WASM operator, by the native sinks, and by native baselines in the benchmarks.
pub trait Operator: Send {
    /// Prepares the subtask before the first record.
    fn open(&mut self) -> Result<(), TaskError>;
    /// Processes a batch, appending what it emits to `out`.
    fn process(&mut self, batch: Vec<Record>, out: &mut Vec<Record>) -> Result<(), TaskError>;
    /// Event time advanced to `watermark` (the minimum over all inputs).
    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Record>) -> Result<(), TaskError> {
        let _ = (watermark, out);
        Ok(())
    }
    /// When the operator next wants [`Operator::on_processing_time`] called, if ever.
    fn next_processing_timer(&self) -> Option<Instant> {
        None
    }
    /// The wall clock reached `now`: fire due processing-time timers.
    fn on_processing_time(&mut self, now: Instant, out: &mut Vec<Record>) -> Result<(), TaskError> {
        let _ = (now, out);
        Ok(())
    }
    /// The input ended (or the job stops): release resources, emit what is left.
    fn close(&mut self, out: &mut Vec<Record>) -> Result<(), TaskError>;
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
    /// Prepares the subtask before the first poll.
    fn open(&mut self) -> Result<(), TaskError>;
    /// Appends up to `max` records to `out`.
    fn poll(&mut self, out: &mut Vec<Record>, max: usize) -> Result<SourcePoll, TaskError>;
}
