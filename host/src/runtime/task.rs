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
use crate::runtime::chain::{BarrierTiming, Chain};
use crate::runtime::input::{Event, InputGate};
use crate::runtime::metrics::{Activity, SubtaskMetrics};
use crate::runtime::output::Output;
use crate::runtime::record::{Barrier, Control, Message};
use crate::runtime::{
    CheckpointId, CheckpointSink, Fault, Snapshot, Source, SourcePoll, TaskError, now_ms,
};
use crate::state::RestoredFiles;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an idle source waits at most before it looks at the cancel flag again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Records a source produces per poll; its output edges re-batch them for each consumer.
const SOURCE_BATCH: usize = 1024;

/// What a subtask restores from.
#[derive(Clone, Debug, Default)]
pub enum Restore {
    /// Nothing: a fresh start.
    #[default]
    Nothing,
    /// The state its snapshot wrote.
    State(Vec<u8>),
    /// The state its snapshot wrote, and its state backend's files.
    StateAndFiles(Vec<u8>, RestoredFiles),
    /// It had finished: pass the end of input through, never run it again.
    Finished,
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
        Restore::State(bytes) => source.open(Some(bytes))?,
        Restore::Nothing | Restore::Finished => source.open(None)?,
        Restore::StateAndFiles(..) => {
            return Err(TaskError::failed(
                Fault::Host,
                "a source was given state backend files to restore",
            ));
        }
    }
    chain.open(chain_restores)?;
    let mut buffer = Batch::new();
    let mut exhausted = false;
    let mut idle_until: Option<Instant> = None;
    loop {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(TaskError::Cancelled);
        }
        let wait = if exhausted {
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
                output.broadcast(&Message::Barrier(barrier))?;
                if let Some(sink) = &ctx.checkpoints {
                    let stats = SubtaskStats {
                        start_delay,
                        sync_duration,
                        ..SubtaskStats::default()
                    };
                    sink.submit(ctx.task, barrier.checkpoint, Snapshot::State(writer), stats);
                }
                let timing = BarrierTiming {
                    start_delay,
                    ..BarrierTiming::default()
                };
                chain.snapshot(barrier.checkpoint, timing, ctx.checkpoints.as_ref())?;
            }
            Some(Control::Finish) => return Ok(()),
            Some(Control::Complete(id)) => chain.notify(id, true)?,
            Some(Control::Abort(id)) => chain.notify(id, false)?,
            None => {}
        }
        if let Some(due) = chain.next_processing_timer()
            && due <= Instant::now()
        {
            chain.on_processing_time(Instant::now(), output)?;
        }
        if exhausted {
            continue;
        }
        if idle_until.is_some_and(|until| until > Instant::now()) {
            continue;
        }
        idle_until = None;
        let poll = source.poll(&mut buffer, SOURCE_BATCH)?;
        ctx.metrics.add_out(buffer.len());
        chain.emit(&mut buffer, output)?;
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

/// An operator subtask thread: the chain of operators it runs.
struct OperatorTask<'a> {
    chain: &'a mut Chain,
    output: &'a mut Output,
    ctx: &'a TaskContext,
    aligner: Aligner,
    alignment: Option<Alignment>,
    /// The end of input went downstream.
    ended: bool,
}

/// Runs an operator (or sink) subtask, and the operators chained to it, until all its
/// inputs have ended (and, with checkpointing on, its final checkpoint is complete).
pub fn run_operator(
    chain: &mut Chain,
    gate: &mut InputGate,
    output: &mut Output,
    ctx: &TaskContext,
    restores: Vec<Restore>,
) -> Result<(), TaskError> {
    chain.open(restores)?;
    let mut task = OperatorTask {
        chain,
        output,
        ctx,
        aligner: Aligner::new(gate.len(), ctx.mode),
        alignment: None,
        ended: false,
    };
    let result = task.run(gate);
    if matches!(result, Err(TaskError::Cancelled)) {
        task.chain.abandon();
    }
    result
}

impl OperatorTask<'_> {
    fn run(&mut self, gate: &mut InputGate) -> Result<(), TaskError> {
        loop {
            let deadline = self.chain.next_processing_timer();
            let output = &mut *self.output;
            let event = gate.next(deadline, || output.flush())?;
            match event {
                Event::Batch(batch) => {
                    if let Some(alignment) = &mut self.alignment {
                        alignment.processed_bytes +=
                            u64::try_from(batch.payload_bytes()).unwrap_or(0);
                    }
                    self.chain.process(&batch, self.output)?;
                }
                Event::Watermark(watermark) => self.chain.watermark(watermark, self.output)?,
                Event::Barrier { channel, barrier } => {
                    let actions = self.aligner.on_barrier(channel, barrier.checkpoint);
                    self.on_actions(actions, barrier.triggered_at_ms)?;
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
                Event::Control(Control::Complete(id)) => self.chain.notify(id, true)?,
                Event::Control(Control::Finish) => return Ok(()),
                Event::Control(Control::Abort(id)) => self.chain.notify(id, false)?,
                Event::Control(Control::Trigger(_)) => {}
                Event::Deadline => self.chain.on_processing_time(Instant::now(), self.output)?,
            }
            gate.set_blocked(self.aligner.blocked_channels());
        }
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
        triggered_at_ms: i64,
    ) -> Result<(), TaskError> {
        for action in actions {
            match action {
                BarrierAction::Started(checkpoint) => {
                    self.alignment = Some(Alignment {
                        checkpoint,
                        first_barrier: Instant::now(),
                        start_delay: since_ms(triggered_at_ms),
                        processed_bytes: 0,
                    });
                }
                BarrierAction::Snapshot(checkpoint) => {
                    self.snapshot(checkpoint, triggered_at_ms)?
                }
                BarrierAction::Abort { checkpoint, .. } => {
                    if self
                        .alignment
                        .as_ref()
                        .is_some_and(|a| a.checkpoint == checkpoint)
                    {
                        self.alignment = None;
                    }
                    if let Some(sink) = &self.ctx.checkpoints {
                        self.chain
                            .decline(checkpoint, &DeclineReason::Subsumed, sink);
                    }
                }
            }
        }
        Ok(())
    }

    /// The synchronous phase: forward the barrier, snapshot, hand the rest off.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        triggered_at_ms: i64,
    ) -> Result<(), TaskError> {
        let alignment = self.alignment.take().filter(|a| a.checkpoint == checkpoint);
        let timing = match &alignment {
            Some(a) => BarrierTiming {
                start_delay: a.start_delay,
                alignment_duration: a.first_barrier.elapsed(),
                processed_in_flight: a.processed_bytes,
            },
            None => BarrierTiming {
                start_delay: since_ms(triggered_at_ms),
                ..BarrierTiming::default()
            },
        };
        // Downstream can start aligning while this subtask snapshots.
        self.output.broadcast(&Message::Barrier(Barrier {
            checkpoint,
            triggered_at_ms,
        }))?;
        self.chain
            .snapshot(checkpoint, timing, self.ctx.checkpoints.as_ref())
    }
}
