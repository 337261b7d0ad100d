//! The [`Operator`] trait.

use crate::{Batch, CheckpointId, Context, Output, Result, Timers};

/// A stream operator. Implement it and pass the type to [`crate::export_operator!`].
///
/// The host makes one instance per subtask with [`Operator::open`] and calls it from
/// one thread, never concurrently. Only `open` and `process` must be written; the other
/// methods do nothing by default, and the default [`Operator::snapshot_state`] keeps no
/// operator-managed state.
///
/// Returning an [`crate::Error`] fails the running attempt of the job; panicking traps
/// and loses the instance, so prefer errors.
///
/// ```
/// use weir_sdk::{Batch, CheckpointId, Context, Operator, Output, RecordRef, Result};
///
/// /// Passes records through and remembers how many it saw, across restarts too.
/// struct Passthrough {
///     seen: u64,
/// }
///
/// impl Operator for Passthrough {
///     fn open(_ctx: &Context) -> Result<Self> {
///         Ok(Self { seen: 0 })
///     }
///
///     fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
///         self.seen += batch.len() as u64;
///         for record in batch.iter() {
///             out.emit(record);
///         }
///         Ok(())
///     }
///
///     fn snapshot_state(&mut self, _checkpoint: CheckpointId) -> Result<Vec<u8>> {
///         Ok(self.seen.to_le_bytes().to_vec())
///     }
///
///     // After a rescale every subtask receives every old subtask's state, one call
///     // each: adding them up keeps the total.
///     fn restore_state(&mut self, state: Vec<u8>) -> Result<()> {
///         let bytes = state.try_into().map_err(|_| "the snapshot is not 8 bytes long")?;
///         self.seen += u64::from_le_bytes(bytes);
///         Ok(())
///     }
/// }
///
/// // Stateless logic runs natively too, which is how unit tests drive it.
/// let mut op = Passthrough::open(&Context::default()).unwrap();
/// let mut out = Output::new();
/// let batch: Batch = [RecordRef::new(b"a"), RecordRef::new(b"b")].into_iter().collect();
/// op.process(&batch, &mut out).unwrap();
/// assert_eq!(out.len(), 2);
/// assert_eq!(op.snapshot_state(1).unwrap(), 2u64.to_le_bytes());
/// ```
pub trait Operator: Sized + 'static {
    /// Makes the instance of one subtask: read [`Context::config`] and open states here
    /// (states can be opened only during `open`).
    fn open(ctx: &Context) -> Result<Self>;

    /// Processes a batch of records, in order, emitting results into `out`. The records
    /// are views into the batch's buffers; for keyed state, read and write the whole
    /// batch's keys at once (see [`crate::ValueState::update_each`]).
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()>;

    /// Handles timers of one clock that fired, ordered by time. See
    /// [`crate::timers::register`].
    fn on_timer(&mut self, timers: &Timers, out: &mut Output) -> Result<()> {
        let _ = (timers, out);
        Ok(())
    }

    /// Event time advanced to `watermark`; event-time timers up to it have fired
    /// already.
    fn on_watermark(&mut self, watermark: i64, out: &mut Output) -> Result<()> {
        let _ = (watermark, out);
        Ok(())
    }

    /// Returns the operator-managed state to put into `checkpoint` (Flink's
    /// `snapshotState`). Keyed state is snapshotted by the host and needs nothing here.
    /// Called in the synchronous phase of a checkpoint, so keep it short.
    fn snapshot_state(&mut self, checkpoint: CheckpointId) -> Result<Vec<u8>> {
        let _ = checkpoint;
        Ok(Vec::new())
    }

    /// Receives what [`Operator::snapshot_state`] returned for the checkpoint or
    /// savepoint the job restores from, right after `open` and before any record.
    ///
    /// At the same parallelism it is called once, with this subtask's own state. After
    /// a rescale it is called once per old subtask, with each one's state (union state,
    /// as Flink's): keep what this subtask needs. Keyed state needs none of this; the
    /// host moves it by key group.
    fn restore_state(&mut self, state: Vec<u8>) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// `checkpoint` is complete: everything up to it is durable. Commit side effects
    /// here.
    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let _ = checkpoint;
        Ok(())
    }

    /// `checkpoint` was aborted; its side effects must not be committed.
    fn notify_checkpoint_aborted(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let _ = checkpoint;
        Ok(())
    }

    /// The input ended or the job stops: release resources. No call follows.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
