//! Operator chaining, as Flink's: nodes joined by a `forward` edge of equal parallelism
//! run in one subtask thread, each member's output handed to the next as a batch in
//! memory, with no channel between them.
//!
//! A [`Chain`] is the operators of one thread in order (an unchained operator is a chain
//! of one; a source's chain holds the operators after it). Every member keeps its own
//! identity: it snapshots, acknowledges and is counted as its node's subtask, and its
//! errors name it. Each member writes into a buffer of its own that the next member reads
//! and the chain clears, so a chain allocates nothing per batch once warm.

use crate::checkpoint::coordinator::{DeclineReason, SubtaskStats, TaskRef};
use crate::runtime::batch::Batch;
use crate::runtime::metrics::SubtaskMetrics;
use crate::runtime::output::Output;
use crate::runtime::record::{Barrier, Message};
use crate::runtime::task::Restore;
use crate::runtime::{ChannelState, CheckpointId, CheckpointSink, Operator, Snapshot, TaskError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One node's subtask inside a chain.
pub struct Member {
    /// The node's logic; `None` once restored as finished (it is never run again).
    pub operator: Option<Box<dyn Operator>>,
    /// Which subtask of which node it is, for the coordinator.
    pub task: TaskRef,
    /// Its counters.
    pub metrics: Arc<SubtaskMetrics>,
    /// Flink's name for it, `count (1/2)`, for errors.
    pub name: String,
    /// The most records it is given per call (its node's `batch-size`): a chained
    /// member's input is cut to it, as a channel's batches would be.
    batch_size: usize,
    /// Entered around each of its calls, so that its logs (the guest's among them) name
    /// it rather than the thread's head.
    span: tracing::Span,
    /// Its logic has closed (or was restored as finished).
    closed: bool,
}

impl Member {
    /// A member that runs `operator`.
    pub fn new(
        operator: Box<dyn Operator>,
        task: TaskRef,
        metrics: Arc<SubtaskMetrics>,
        name: String,
        batch_size: usize,
    ) -> Self {
        Self {
            operator: Some(operator),
            task,
            metrics,
            batch_size: batch_size.max(1),
            span: tracing::info_span!(parent: None, "task", task = %name),
            name,
            closed: false,
        }
    }
}

/// When the checkpoint's barrier came and what the input did meanwhile: the same for
/// every member of a chain, which aligns once, at its head.
#[derive(Clone, Copy, Debug, Default)]
pub struct BarrierTiming {
    /// From the trigger to the first barrier.
    pub start_delay: Duration,
    /// From the first barrier to the last.
    pub alignment_duration: Duration,
    /// Bytes processed while aligning.
    pub processed_in_flight: u64,
    /// Whether the barrier overtook data in flight (an unaligned checkpoint).
    pub unaligned: bool,
}

/// The head's snapshot of an unaligned checkpoint, held until its channel state is
/// complete.
pub struct HeldSnapshot {
    /// The head's subtask.
    pub task: TaskRef,
    /// What its synchronous phase captured.
    pub snapshot: Snapshot,
    /// How the synchronous phase went.
    pub stats: SubtaskStats,
}

/// The operators of one subtask thread, in order.
pub struct Chain {
    members: Vec<Member>,
    /// Member `i` writes into `buffers[i]`; the last one's go to the thread's output.
    buffers: Vec<Batch>,
    /// Where an input larger than a member's batch size is cut into calls.
    slice: Batch,
    /// Whether the thread runs more than one node, so that an error must say which.
    shared: bool,
    /// The member whose call failed, when the thread runs more than one node.
    failed: Option<usize>,
}

impl Chain {
    /// A chain of `members`, upstream first; `shared` when the thread also runs another
    /// node (a source before them, or more than one member).
    pub fn new(members: Vec<Member>, shared: bool) -> Self {
        let buffers = members.iter().map(|_| Batch::new()).collect();
        Self {
            members,
            buffers,
            slice: Batch::new(),
            shared,
            failed: None,
        }
    }

    /// Notes that `error` came from member `at`, so that a failure of a shared thread is
    /// reported as that member's ([`Chain::failed_member`]).
    fn blame(&mut self, at: usize, error: TaskError) -> TaskError {
        if self.shared && matches!(error, TaskError::Failed { .. }) {
            self.failed = Some(at);
        }
        error
    }

    /// Flink's name of the member whose call failed, when the thread runs more than one
    /// node: the subtask a failure is reported for.
    pub fn failed_member(&self) -> Option<&str> {
        self.failed.map(|at| self.members[at].name.as_str())
    }

    /// Whether the chain has no operators (a source alone).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Opens every member from what it restores (one entry per member, in order).
    pub fn open(&mut self, restores: Vec<Restore>) -> Result<(), TaskError> {
        for (at, restore) in restores.into_iter().enumerate() {
            let member = &mut self.members[at];
            let _entered = member.span.clone().entered();
            let Some(operator) = member.operator.as_mut() else {
                continue;
            };
            let opened = match restore {
                Restore::State(parts) => operator.open(Some(parts)),
                Restore::Nothing => operator.open(None),
                Restore::Finished => {
                    member.operator = None;
                    member.closed = true;
                    Ok(())
                }
            };
            opened.map_err(|e| self.blame(at, e))?;
        }
        Ok(())
    }

    /// Runs `call` on member `at`, then hands what it emitted down the rest of the chain,
    /// and the tail's output to `output`.
    fn drive(
        &mut self,
        at: usize,
        output: &mut Output,
        call: impl FnOnce(&mut dyn Operator, &mut Batch) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        let member = &mut self.members[at];
        let entered = member.span.clone().entered();
        if let Some(operator) = member.operator.as_mut()
            && let Err(e) = call(operator.as_mut(), &mut self.buffers[at])
        {
            return Err(self.blame(at, e));
        }
        drop(entered);
        self.members[at].metrics.add_out(self.buffers[at].len());
        for next in at + 1..self.members.len() {
            let (done, rest) = self.buffers.split_at_mut(next);
            let input = &mut done[next - 1];
            if input.is_empty() {
                continue;
            }
            let member = &mut self.members[next];
            member.metrics.add_in(input.len());
            let entered = member.span.clone().entered();
            if let Some(operator) = member.operator.as_mut()
                && let Err(e) = process_in_slices(
                    operator.as_mut(),
                    input,
                    member.batch_size,
                    &mut rest[0],
                    &mut self.slice,
                )
            {
                return Err(self.blame(next, e));
            }
            drop(entered);
            input.clear();
            self.members[next].metrics.add_out(self.buffers[next].len());
        }
        match self.buffers.last_mut() {
            Some(tail) => output.emit(tail),
            None => Ok(()),
        }
    }

    /// A batch arrived at the chain's head.
    pub fn process(&mut self, batch: &Batch, output: &mut Output) -> Result<(), TaskError> {
        let Some(head) = self.members.first() else {
            return Ok(());
        };
        head.metrics.add_in(batch.len());
        let batch_size = head.batch_size;
        let mut slice = std::mem::take(&mut self.slice);
        let result = self.drive(0, output, |op, out| {
            process_in_slices(op, batch, batch_size, out, &mut slice)
        });
        self.slice = slice;
        result
    }

    /// Records a source emitted: they go to the chain's head, or straight out.
    pub fn emit(&mut self, batch: &mut Batch, output: &mut Output) -> Result<(), TaskError> {
        if self.is_empty() {
            return output.emit(batch);
        }
        self.process(batch, output)?;
        batch.clear();
        Ok(())
    }

    /// Event time advanced: each member in turn fires its timers and sees the
    /// watermark, its output flowing down before the next one does; then the watermark
    /// goes downstream.
    pub fn watermark(&mut self, watermark: i64, output: &mut Output) -> Result<(), TaskError> {
        for at in 0..self.members.len() {
            self.drive(at, output, |op, out| op.on_watermark(watermark, out))?;
        }
        output.broadcast(&Message::Watermark(watermark))
    }

    /// The input ended: each member emits what it has left and closes, in order.
    pub fn close(&mut self, output: &mut Output) -> Result<(), TaskError> {
        for at in 0..self.members.len() {
            if self.members[at].closed {
                continue;
            }
            self.drive(at, output, |op, out| op.close(out))?;
            self.members[at].closed = true;
        }
        Ok(())
    }

    /// The job was cancelled: members that did not close get to release what they hold;
    /// what they would emit has nowhere to go.
    pub fn abandon(&mut self) {
        for member in &mut self.members {
            if !member.closed
                && let Some(operator) = member.operator.as_mut()
            {
                let _ = operator.close(&mut Batch::new());
            }
        }
    }

    /// When the next processing-time timer of any member is due.
    pub fn next_processing_timer(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(|m| m.operator.as_ref()?.next_processing_timer())
            .min()
    }

    /// The wall clock reached `now`: members whose timers are due fire them.
    pub fn on_processing_time(
        &mut self,
        now: Instant,
        output: &mut Output,
    ) -> Result<(), TaskError> {
        for at in 0..self.members.len() {
            let due = self.members[at]
                .operator
                .as_ref()
                .and_then(|op| op.next_processing_timer())
                .is_some_and(|t| t <= now);
            if due {
                self.drive(at, output, |op, out| op.on_processing_time(now, out))?;
            }
        }
        Ok(())
    }

    /// The synchronous phase of `checkpoint` for every member, each acknowledged as its
    /// own subtask. The chain holds no records between members at a barrier: every batch
    /// went all the way down before the barrier was taken.
    ///
    /// With `hold_head` the head's snapshot is not submitted but returned, to be
    /// submitted with its channel state once that is complete (unaligned); a declined
    /// one is declined at once and `None` comes back.
    pub fn snapshot(
        &mut self,
        barrier: Barrier,
        timing: BarrierTiming,
        sink: Option<&Arc<dyn CheckpointSink>>,
        hold_head: bool,
    ) -> Result<Option<HeldSnapshot>, TaskError> {
        let checkpoint = barrier.checkpoint;
        let mut held = None;
        for at in 0..self.members.len() {
            let started = Instant::now();
            let member = &mut self.members[at];
            let entered = member.span.clone().entered();
            let (snapshot, sync_fuel) = match member.operator.as_mut() {
                Some(op) => match op.snapshot(checkpoint, barrier.kind) {
                    Ok(snapshot) => (snapshot, op.sync_fuel()),
                    Err(e) => return Err(self.blame(at, e)),
                },
                None => (Snapshot::Finished, None),
            };
            drop(entered);
            let member = &self.members[at];
            let stats = SubtaskStats {
                start_delay: timing.start_delay,
                alignment_duration: timing.alignment_duration,
                sync_duration: started.elapsed(),
                sync_fuel,
                processed_in_flight: timing.processed_in_flight,
                unaligned: timing.unaligned,
                ..SubtaskStats::default()
            };
            if let Some(sink) = sink {
                match snapshot {
                    Snapshot::Declined(why) => {
                        tracing::warn!(
                            checkpoint = checkpoint.0,
                            operator = %member.name,
                            "declining the checkpoint: {why}"
                        );
                        sink.decline(member.task, checkpoint, DeclineReason::Failed(why));
                    }
                    snapshot if hold_head && at == 0 => {
                        held = Some(HeldSnapshot {
                            task: member.task,
                            snapshot,
                            stats,
                        });
                    }
                    snapshot => {
                        sink.submit(
                            member.task,
                            checkpoint,
                            snapshot,
                            ChannelState::new(),
                            stats,
                        );
                    }
                }
            }
        }
        Ok(held)
    }

    /// Declines `checkpoint` for every member.
    pub fn decline(
        &self,
        checkpoint: CheckpointId,
        reason: &DeclineReason,
        sink: &Arc<dyn CheckpointSink>,
    ) {
        for member in &self.members {
            sink.decline(member.task, checkpoint, reason.clone());
        }
    }

    /// `checkpoint` completed (or was aborted): every member hears of it.
    pub fn notify(&mut self, checkpoint: CheckpointId, complete: bool) -> Result<(), TaskError> {
        for at in 0..self.members.len() {
            let member = &mut self.members[at];
            let _entered = member.span.clone().entered();
            if let Some(op) = member.operator.as_mut() {
                let result = if complete {
                    op.notify_checkpoint_complete(checkpoint)
                } else {
                    op.notify_checkpoint_aborted(checkpoint)
                };
                result.map_err(|e| self.blame(at, e))?;
            }
        }
        Ok(())
    }
}

/// `operator.process` over `input` in calls of at most `batch_size` records, each slice
/// copied into `slice` (one range of each buffer) when the input is larger.
fn process_in_slices(
    operator: &mut dyn Operator,
    input: &Batch,
    batch_size: usize,
    out: &mut Batch,
    slice: &mut Batch,
) -> Result<(), TaskError> {
    if input.len() <= batch_size {
        return operator.process(input, out);
    }
    let mut start = 0;
    while start < input.len() {
        let end = (start + batch_size).min(input.len());
        slice.clear();
        slice.extend_from(input, start..end);
        operator.process(slice, out)?;
        start = end;
    }
    Ok(())
}
