//! The [`Operator`] trait and the [`Output`] buffer it emits into.

use crate::__bindings::weir::operator::output as wit_output;
use crate::{CheckpointId, Context, Record, Result, Timer};

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
/// use weir_sdk::{CheckpointId, Context, Operator, Output, Record, Result};
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
///     fn process(&mut self, batch: Vec<Record>, out: &mut Output) -> Result<()> {
///         self.seen += batch.len() as u64;
///         out.extend(batch);
///         Ok(())
///     }
///
///     fn snapshot_state(&mut self, _checkpoint: CheckpointId) -> Result<Vec<u8>> {
///         Ok(self.seen.to_le_bytes().to_vec())
///     }
///
///     fn restore_state(&mut self, state: Vec<u8>) -> Result<()> {
///         let bytes = state.try_into().map_err(|_| "the snapshot is not 8 bytes long")?;
///         self.seen = u64::from_le_bytes(bytes);
///         Ok(())
///     }
/// }
///
/// // Stateless logic runs natively too, which is how unit tests drive it.
/// let mut op = Passthrough::open(&Context::default()).unwrap();
/// let mut out = Output::new();
/// op.process(vec![Record::new("a"), Record::new("b")], &mut out).unwrap();
/// assert_eq!(out.records().len(), 2);
/// assert_eq!(op.snapshot_state(1).unwrap(), 2u64.to_le_bytes());
/// ```
pub trait Operator: Sized + 'static {
    /// Makes the instance of one subtask: read [`Context::config`] and open states here
    /// (states can be opened only during `open`).
    fn open(ctx: &Context) -> Result<Self>;

    /// Processes a batch of records, in order, emitting results into `out`.
    fn process(&mut self, batch: Vec<Record>, out: &mut Output) -> Result<()>;

    /// Handles timers that fired, ordered by time. See [`crate::timers::register`].
    fn on_timer(&mut self, timers: Vec<Timer>, out: &mut Output) -> Result<()> {
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

    /// Receives what [`Operator::snapshot_state`] returned for the checkpoint the job
    /// restores from, right after `open` and before any record.
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

/// Records emitted during one call of [`Operator::process`], [`Operator::on_timer`] or
/// [`Operator::on_watermark`].
///
/// They go downstream, in order, in a single host call after the method returns `Ok`;
/// when it returns an error they are dropped, as the attempt fails anyway. The buffer
/// is reused from call to call.
///
/// ```
/// use weir_sdk::{Output, Record};
///
/// let mut out = Output::new();
/// out.emit(Record::new("one"));
/// out.extend([Record::new("two"), Record::new("three")]);
/// assert_eq!(out.records().len(), 3);
/// ```
#[derive(Debug, Default)]
pub struct Output {
    records: Vec<Record>,
}

/// The most records an idle [`Output`] keeps room for. One batch that emits far more
/// than usual (an unbounded flat-map, say) must not pin that memory for the life of the
/// instance; 16 Ki records cover the host's batches of ~1000 with ample fan-out.
const RETAINED_CAPACITY: usize = 16 * 1024;

impl Output {
    /// An empty buffer. The SDK makes the one the host's calls use; make your own to
    /// drive an operator in a native unit test.
    ///
    /// ```
    /// assert!(weir_sdk::Output::new().records().is_empty());
    /// ```
    pub const fn new() -> Self {
        Self {
            records: Vec::new(),
        }
    }

    /// Queues `record` to go downstream.
    ///
    /// ```
    /// let mut out = weir_sdk::Output::new();
    /// out.emit(weir_sdk::Record::new("hello").with_key("greeting"));
    /// assert_eq!(out.records()[0].value, b"hello");
    /// ```
    pub fn emit(&mut self, record: Record) {
        self.records.push(record);
    }

    /// The records queued so far, in order.
    ///
    /// ```
    /// let mut out = weir_sdk::Output::new();
    /// out.emit(weir_sdk::Record::new("a"));
    /// assert_eq!(out.records(), [weir_sdk::Record::new("a")]);
    /// ```
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Sends the queued records to the host in one `output.emit` call and empties the
    /// buffer, keeping its capacity.
    pub(crate) fn flush(&mut self) {
        if !self.records.is_empty() {
            wit_output::emit(&self.records);
        }
        self.discard();
    }

    /// Empties the buffer without sending anything, keeping its capacity.
    pub(crate) fn discard(&mut self) {
        self.records.clear();
        self.records.shrink_to(RETAINED_CAPACITY);
    }
}

impl Extend<Record> for Output {
    fn extend<I: IntoIterator<Item = Record>>(&mut self, records: I) {
        self.records.extend(records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discarding_keeps_the_capacity_of_a_usual_batch() {
        let mut out = Output::new();
        out.extend((0..1000).map(|i: u32| Record::new(i.to_le_bytes())));
        out.discard();
        assert!(out.records().is_empty());
        assert!(out.records.capacity() >= 1000);
    }

    #[test]
    fn discarding_releases_the_room_of_an_outsized_batch() {
        let mut out = Output::new();
        out.extend((0..RETAINED_CAPACITY * 2).map(|_| Record::default()));
        out.discard();
        assert!(out.records.capacity() <= RETAINED_CAPACITY);
    }
}
