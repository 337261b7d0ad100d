//! The loops that drive one subtask, one per kind of node. Each loop is a single thread
//! that owns its operator instance: no locks on the data path.
//!
//! With checkpointing on, a subtask outlives the end of its input: it forwards the end
//! of input, then keeps handling barriers until the coordinator says the job's final
//! checkpoint — taken after every source ended — is complete ([`Control::Finish`]), so
//! that sinks commit their last records only once they are durable, and every subtask
//! can acknowledge every checkpoint until then.

use crate::checkpoint::coordinator::{DeclineReason, SubtaskStats, TaskRef};
use crate::checkpoint::{AlignMode, Aligner, BarrierAction};
use crate::runtime::batch::Batch;
use crate::runtime::chain::{BarrierTiming, Chain, HeldSnapshot};
use crate::runtime::channel::Wake;
use crate::runtime::input::{Event, InputGate};
use crate::runtime::metrics::{Activity, SubtaskMetrics};
use crate::runtime::output::Output;
use crate::runtime::record::{Barrier, Control, Message};
use crate::runtime::{
    ChannelState, CheckpointId, CheckpointSink, Snapshot, Source, SourcePoll, TaskError, now_ms,
};
use crate::state::RestoredState;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an idle source waits at most before it looks at the cancel flag again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Records a source produces per poll; its output edges re-batch them for each consumer.
const SOURCE_BATCH: usize = 1024;

/// What a subtask restores from.
#[derive(Debug, Default)]
pub enum Restore {
    /// Nothing: a fresh start.
    #[default]
    Nothing,
    /// The parts of the snapshot it restores.
    State(RestoredParts),
    /// It had finished: pass the end of input through, never run it again.
    Finished,
}

/// The parts of a snapshot one subtask restores, read and verified. At the same
/// parallelism they are its own; after a rescale its keyed state and timers are the key
/// groups it now owns, from every old subtask that held some, and its operator state is
/// every old subtask's (union state, as Flink's).
#[derive(Debug, Default)]
pub struct RestoredParts {
    /// Operator state, one blob per old subtask, in old subtask order.
    pub operator: Vec<Vec<u8>>,
    /// Keyed state, for the backend.
    pub keyed: Option<RestoredState>,
    /// Timer sections of the key groups the subtask owns.
    pub timers: Vec<bytes::Bytes>,
    /// Records taken in before (same parallelism), for record positions in messages.
    pub records_in: u64,
}

/// What every subtask loop needs besides its logic and channels.
pub struct TaskContext {
    /// Which subtask the thread's head is (a source's, for the coordinator).
    pub task: TaskRef,
    /// Where snapshots go; `None` when checkpointing is off.
    pub checkpoints: Option<Arc<dyn CheckpointSink>>,
    /// Aligned (exactly-once) or not (at-least-once).
    pub mode: AlignMode,
    /// The counters of the thread's head.
    pub metrics: Arc<SubtaskMetrics>,
    /// Wakes the thread when its control channel has something, or its output room.
    pub wake: Arc<Wake>,
    /// Set when the job is cancelled.
    pub cancel: Arc<AtomicBool>,
}

fn since_ms(triggered_at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms() - triggered_at_ms).unwrap_or(0))
}

/// Runs a source subtask, and the operators chained to it, until its input is exhausted
/// (and, with checkpointing on, its final checkpoint is complete) or the job is
/// cancelled.
pub fn run_source(
    source: &mut dyn Source,
    chain: &mut Chain,
    output: &mut Output,
    control: &Receiver<Control>,
    ctx: &TaskContext,
    restore: Restore,
    chain_restores: Vec<Restore>,
) -> Result<(), TaskError> {
    let result = source_loop(source, chain, output, control, ctx, restore, chain_restores);
    if matches!(result, Err(TaskError::Cancelled)) {
        chain.abandon();
    }
    result
}

fn source_loop(
    source: &mut dyn Source,
    chain: &mut Chain,
    output: &mut Output,
    control: &Receiver<Control>,
    ctx: &TaskContext,
    restore: Restore,
    chain_restores: Vec<Restore>,
) -> Result<(), TaskError> {
    match restore {
        Restore::State(parts) => source.open(Some(parts.operator))?,
        Restore::Nothing | Restore::Finished => source.open(None)?,
    }
    chain.open(chain_restores)?;
    ctx.wake.register();
    let mut buffer = Batch::new();
    let mut exhausted = false;
    let mut stopped: Option<CheckpointId> = None;
    let mut idle_until: Option<Instant> = None;
    loop {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(TaskError::Cancelled);
        }
        let wait = if exhausted || stopped.is_some() {
            Some(IDLE_POLL)
        } else {
            idle_until.map(|until| {
                until
                    .saturating_duration_since(Instant::now())
                    .min(IDLE_POLL)
            })
        };
        // A chained operator's processing-time timer cuts the wait short.
        let wait = match (wait, chain.next_processing_timer()) {
            (Some(wait), Some(due)) => {
                Some(wait.min(due.saturating_duration_since(Instant::now())))
            }
            (wait, _) => wait,
        };
        let control_message = match wait {
            None => control.try_recv().ok(),
            Some(wait) => match ctx
                .metrics
                .times
                .waiting(Activity::Idle, || control.recv_timeout(wait))
            {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Err(TaskError::Cancelled),
            },
        };
        match control_message {
            Some(Control::Trigger(barrier)) => {
                let start_delay = since_ms(barrier.triggered_at_ms);
                let started = Instant::now();
                let writer = source.snapshot(barrier.checkpoint)?;
                let sync_duration = started.elapsed();
                output.barrier(barrier)?;
                if let Some(sink) = &ctx.checkpoints {
                    let stats = SubtaskStats {
                        start_delay,
                        sync_duration,
                        ..SubtaskStats::default()
                    };
                    let snapshot = Snapshot::State(writer);
                    sink.submit(ctx.task, barrier.checkpoint, snapshot, Vec::new(), stats);
                }
                let timing = BarrierTiming {
                    start_delay,
                    ..BarrierTiming::default()
                };
                chain.snapshot(barrier, timing, ctx.checkpoints.as_ref(), false)?;
                // Stopping with a savepoint: nothing after its barrier is read, unless it
                // fails.
                if barrier.stop {
                    stopped = Some(barrier.checkpoint);
                }
            }
            Some(Control::Finish) => return Ok(()),
            Some(Control::Complete(id)) => {
                source.notify_checkpoint_complete(id)?;
                chain.notify(id, true)?;
            }
            Some(Control::Abort(id)) => {
                stopped.take_if(|s| *s == id);
                chain.notify(id, false)?;
            }
            None => {}
        }
        if let Some(due) = chain.next_processing_timer()
            && due <= Instant::now()
        {
            chain.on_processing_time(Instant::now(), output)?;
        }
        if exhausted || stopped.is_some() {
            continue;
        }
        if idle_until.is_some_and(|until| until > Instant::now()) {
            continue;
        }
        idle_until = None;
        if !output.has_room() {
            // Back-pressured: wait for room here, where a trigger is seen at once.
            let until = Instant::now() + IDLE_POLL;
            ctx.metrics
                .times
                .waiting(Activity::BackPressured, || ctx.wake.wait_until(until));
            continue;
        }
        let poll = source.poll(&mut buffer, SOURCE_BATCH)?;
        ctx.metrics.add_out(buffer.len());
        chain.emit(&mut buffer, output)?;
        if let Some(watermark) = source.watermark(Instant::now()) {
            chain.watermark(watermark, output)?;
        }
        match poll {
            SourcePoll::Ready => {}
            SourcePoll::Idle(until) => {
                output.flush()?;
                idle_until = Some(until);
            }
            SourcePoll::Finished => {
                // As Flink, a bounded source ends with the maximal watermark so that every
                // event-time timer downstream fires.
                chain.watermark(i64::MAX, output)?;
                chain.close(output)?;
                output.broadcast(&Message::EndOfInput)?;
                let Some(sink) = &ctx.checkpoints else {
                    return Ok(());
                };
                exhausted = true;
                sink.source_exhausted(ctx.task);
            }
        }
    }
}

/// The alignment in progress: since when, and how many bytes were processed meanwhile.
struct Alignment {
    checkpoint: CheckpointId,
    first_barrier: Instant,
    start_delay: Duration,
    processed_bytes: u64,
}

/// The most bytes of channel state one subtask holds for an unaligned checkpoint. What
/// a barrier overtakes is bounded by the channels' capacity; what is recorded while a
/// barrier is still to come is bounded by this, so that a producer whose barrier never
/// comes cannot grow the host's memory: past it the checkpoint is declined.
const CHANNEL_STATE_LIMIT: u64 = 256 << 20;

/// An unaligned snapshot waiting for its channel state.
struct Capturing {
    checkpoint: CheckpointId,
    /// Per input channel, the batches in order.
    channels: ChannelState,
    /// Their bytes of keys and values.
    bytes: u64,
    /// The head's snapshot, submitted with the channel state.
    held: Option<HeldSnapshot>,
}

impl Capturing {
    fn add(&mut self, channel: usize, batches: impl IntoIterator<Item = Batch>) {
        for batch in batches {
            self.bytes += u64::try_from(batch.payload_bytes()).unwrap_or(u64::MAX);
            self.channels[channel].push(batch);
        }
    }
}

/// An operator subtask thread: the chain of operators it runs.
struct OperatorTask<'a> {
    chain: &'a mut Chain,
    output: &'a mut Output,
    ctx: &'a TaskContext,
    aligner: Aligner,
    alignment: Option<Alignment>,
    capturing: Option<Capturing>,
    /// The barriers seen of checkpoints not yet resolved, to send on as they came.
    barriers: BTreeMap<CheckpointId, Barrier>,
    /// The end of input went downstream.
    ended: bool,
}

/// Runs an operator (or sink) subtask, and the operators chained to it, until all its
/// inputs have ended (and, with checkpointing on, its final checkpoint is complete).
/// `replay` is the channel state of the checkpoint it restores from: it is processed
/// before any new input, and before any watermark.
pub fn run_operator(
    chain: &mut Chain,
    gate: &mut InputGate,
    output: &mut Output,
    ctx: &TaskContext,
    restores: Vec<Restore>,
    replay: ChannelState,
) -> Result<(), TaskError> {
    chain.open(restores)?;
    let mut task = OperatorTask {
        chain,
        output,
        ctx,
        aligner: Aligner::new(gate.len(), ctx.mode),
        alignment: None,
        capturing: None,
        barriers: BTreeMap::new(),
        ended: false,
    };
    let result = task.replay(replay).and_then(|()| task.run(gate));
    if matches!(result, Err(TaskError::Cancelled)) {
        task.chain.abandon();
    }
    result
}

impl OperatorTask<'_> {
    fn replay(&mut self, replay: ChannelState) -> Result<(), TaskError> {
        for batch in replay.iter().flatten() {
            self.chain.process(batch, self.output)?;
        }
        Ok(())
    }

    fn run(&mut self, gate: &mut InputGate) -> Result<(), TaskError> {
        loop {
            let deadline = match (
                self.chain.next_processing_timer(),
                self.aligner.next_deadline(),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let event = gate.next(deadline, self.output)?;
            match event {
                Event::Batch { channel, batch } => {
                    if let Some(alignment) = &mut self.alignment {
                        alignment.processed_bytes +=
                            u64::try_from(batch.payload_bytes()).unwrap_or(0);
                    }
                    if let Some(checkpoint) = self.aligner.records(channel) {
                        self.record(checkpoint, channel, &batch, gate)?;
                    }
                    self.chain.process(&batch, self.output)?;
                }
                Event::Watermark(watermark) => self.chain.watermark(watermark, self.output)?,
                Event::Announced { channel, barrier } => {
                    self.barriers.entry(barrier.checkpoint).or_insert(barrier);
                    let actions = self.aligner.on_announced(
                        channel,
                        barrier.checkpoint,
                        barrier.unaligned_after,
                        since_ms(barrier.triggered_at_ms),
                        Instant::now(),
                    );
                    self.on_actions(actions, gate)?;
                }
                Event::Barrier { channel, barrier } => {
                    self.barriers.entry(barrier.checkpoint).or_insert(barrier);
                    let actions = self.aligner.on_barrier(channel, barrier.checkpoint);
                    self.on_actions(actions, gate)?;
                }
                Event::Ended { .. } => {
                    // Not an end for the aligner: an upstream subtask outlives its end of
                    // input and still sends the barriers of later checkpoints (the final
                    // checkpoint among them) on this channel.
                    if gate.all_ended() && !self.ended {
                        self.end_input()?;
                        if self.ctx.checkpoints.is_none() {
                            return Ok(());
                        }
                    } else if let Some(Event::Watermark(w)) = gate.advance_watermark() {
                        self.chain.watermark(w, self.output)?;
                    }
                }
                Event::Closed { channel } => {
                    let actions = self.aligner.on_closed(channel);
                    self.on_actions(actions, gate)?;
                }
                Event::Control(Control::Complete(id)) => self.chain.notify(id, true)?,
                Event::Control(Control::Finish) => return Ok(()),
                Event::Control(Control::Abort(id)) => {
                    // An aborted or expired checkpoint unblocks its channels at once.
                    let _ = self.aligner.abort(id);
                    self.forget(id);
                    self.chain.notify(id, false)?;
                }
                Event::Control(Control::Trigger(_)) => {}
                Event::Deadline => {
                    let now = Instant::now();
                    let actions = self.aligner.on_tick(now);
                    self.on_actions(actions, gate)?;
                    if self.chain.next_processing_timer().is_some_and(|t| t <= now) {
                        self.chain.on_processing_time(now, self.output)?;
                    }
                }
            }
            gate.set_blocked(self.aligner.blocked_channels());
        }
    }

    /// Drops what this subtask keeps of `checkpoint` and older ones: their alignment,
    /// channel state and barriers.
    fn forget(&mut self, checkpoint: CheckpointId) {
        if self
            .alignment
            .as_ref()
            .is_some_and(|a| a.checkpoint <= checkpoint)
        {
            self.alignment = None;
        }
        if self
            .capturing
            .as_ref()
            .is_some_and(|c| c.checkpoint <= checkpoint)
        {
            self.capturing = None;
        }
        self.drop_barriers_up_to(checkpoint);
    }

    /// Forgets the barriers of `checkpoint` and older ones: they are resolved here.
    fn drop_barriers_up_to(&mut self, checkpoint: CheckpointId) {
        self.barriers = self.barriers.split_off(&CheckpointId(checkpoint.0 + 1));
    }

    /// A batch consumed from `channel` belongs to `checkpoint`'s channel state.
    fn record(
        &mut self,
        checkpoint: CheckpointId,
        channel: usize,
        batch: &Batch,
        gate: &mut InputGate,
    ) -> Result<(), TaskError> {
        let Some(capturing) = self
            .capturing
            .as_mut()
            .filter(|c| c.checkpoint == checkpoint)
        else {
            return Ok(());
        };
        capturing.add(channel, [batch.clone()]);
        if capturing.bytes > CHANNEL_STATE_LIMIT {
            let why = format!(
                "the in-flight data of unaligned checkpoint {checkpoint} grew past {} MiB while a barrier was still to come on input channel {channel}",
                CHANNEL_STATE_LIMIT >> 20
            );
            tracing::warn!(checkpoint = checkpoint.0, "declining the checkpoint: {why}");
            let _ = self.aligner.abort(checkpoint);
            self.forget(checkpoint);
            if let Some(sink) = &self.ctx.checkpoints {
                self.chain
                    .decline(checkpoint, &DeclineReason::Failed(why), sink);
            }
            gate.set_blocked(self.aligner.blocked_channels());
        }
        Ok(())
    }

    /// All inputs ended: the operators emit what they have left and close (unless they
    /// were restored as finished and closed long ago); the end of input goes downstream.
    fn end_input(&mut self) -> Result<(), TaskError> {
        self.chain.close(self.output)?;
        self.output.broadcast(&Message::EndOfInput)?;
        self.ended = true;
        Ok(())
    }

    fn on_actions(
        &mut self,
        actions: Vec<BarrierAction>,
        gate: &mut InputGate,
    ) -> Result<(), TaskError> {
        for action in actions {
            match action {
                BarrierAction::Started(checkpoint) => {
                    let triggered_at_ms = self
                        .barriers
                        .get(&checkpoint)
                        .map_or_else(now_ms, |b| b.triggered_at_ms);
                    self.alignment = Some(Alignment {
                        checkpoint,
                        first_barrier: Instant::now(),
                        start_delay: since_ms(triggered_at_ms),
                        processed_bytes: 0,
                    });
                }
                BarrierAction::Snapshot {
                    checkpoint,
                    unaligned,
                } => self.snapshot(checkpoint, unaligned, gate.len())?,
                BarrierAction::Capture {
                    checkpoint,
                    channel,
                } => {
                    if let Some(capturing) = self
                        .capturing
                        .as_mut()
                        .filter(|c| c.checkpoint == checkpoint)
                    {
                        capturing.add(channel, gate.in_flight(channel, checkpoint));
                    }
                }
                BarrierAction::ChannelStateDone(checkpoint) => {
                    let done = self.capturing.take_if(|c| c.checkpoint == checkpoint);
                    if let (Some(done), Some(sink)) = (done, &self.ctx.checkpoints)
                        && let Some(held) = done.held
                    {
                        let mut stats = held.stats;
                        stats.persisted_in_flight = done.bytes;
                        sink.submit(held.task, checkpoint, held.snapshot, done.channels, stats);
                    }
                    self.drop_barriers_up_to(checkpoint);
                }
                BarrierAction::Abort { checkpoint, .. } => {
                    self.forget(checkpoint);
                    if let Some(sink) = &self.ctx.checkpoints {
                        self.chain
                            .decline(checkpoint, &DeclineReason::Subsumed, sink);
                    }
                }
            }
        }
        Ok(())
    }

    /// The synchronous phase: forward the barrier, snapshot, hand the rest off (or,
    /// unaligned, hold the head's snapshot until its channel state is captured).
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        unaligned: bool,
        channels: usize,
    ) -> Result<(), TaskError> {
        let barrier = self
            .barriers
            .get(&checkpoint)
            .copied()
            .unwrap_or_else(|| Barrier::checkpoint(checkpoint, now_ms(), None));
        let alignment = self.alignment.take().filter(|a| a.checkpoint == checkpoint);
        let timing = match &alignment {
            Some(a) => BarrierTiming {
                start_delay: a.start_delay,
                alignment_duration: a.first_barrier.elapsed(),
                processed_in_flight: a.processed_bytes,
                unaligned,
            },
            None => BarrierTiming {
                start_delay: since_ms(barrier.triggered_at_ms),
                unaligned,
                ..BarrierTiming::default()
            },
        };
        // Downstream can start aligning while this subtask snapshots; an unaligned
        // barrier overtakes everything this subtask's output channels hold.
        self.output.barrier(barrier)?;
        let held =
            self.chain
                .snapshot(barrier, timing, self.ctx.checkpoints.as_ref(), unaligned)?;
        if unaligned {
            self.capturing = Some(Capturing {
                checkpoint,
                channels: vec![Vec::new(); channels],
                bytes: 0,
                held,
            });
        } else {
            self.drop_barriers_up_to(checkpoint);
        }
        Ok(())
    }
}
