//! The loops that drive one subtask, one per kind of node. Each loop is a single thread
//! that owns its operator instance: no locks on the data path.

use crate::runtime::executor::NodeMetrics;
use crate::runtime::input::{Event, InputGate};
use crate::runtime::output::Output;
use crate::runtime::record::Message;
use crate::runtime::{Operator, Source, SourcePoll, TaskError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an idle source sleeps at most before it looks at the cancel flag again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Records a source produces per poll; its output edges re-batch them for each consumer.
const SOURCE_BATCH: usize = 1024;

/// Runs a source subtask until its input is exhausted or the job is cancelled.
pub fn run_source(
    source: &mut dyn Source,
    output: &mut Output,
    metrics: &NodeMetrics,
    cancel: &Arc<AtomicBool>,
) -> Result<(), TaskError> {
    source.open()?;
    let mut buffer = Vec::with_capacity(SOURCE_BATCH);
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(TaskError::Cancelled);
        }
        let poll = source.poll(&mut buffer, SOURCE_BATCH)?;
        metrics.add_out(buffer.len());
        output.emit(&mut buffer)?;
        match poll {
            SourcePoll::Ready => {}
            SourcePoll::Idle(until) => {
                output.flush()?;
                let now = Instant::now();
                if until > now {
                    std::thread::sleep((until - now).min(IDLE_POLL));
                }
            }
            SourcePoll::Finished => {
                // As Flink, a bounded source ends with the maximal watermark so that every
                // event-time timer downstream fires.
                output.broadcast(&Message::Watermark(i64::MAX))?;
                output.broadcast(&Message::EndOfInput)?;
                return Ok(());
            }
        }
    }
}

/// Runs an operator (or sink) subtask until all its inputs have ended.
pub fn run_operator(
    operator: &mut dyn Operator,
    gate: &mut InputGate,
    output: &mut Output,
    metrics: &NodeMetrics,
) -> Result<(), TaskError> {
    operator.open()?;
    let result = operator_loop(operator, gate, output, metrics);
    if matches!(result, Err(TaskError::Cancelled)) {
        // A cancelled operator still gets to release what it holds; what it would emit
        // has nowhere to go.
        let _ = operator.close(&mut Vec::new());
    }
    result
}

fn operator_loop(
    operator: &mut dyn Operator,
    gate: &mut InputGate,
    output: &mut Output,
    metrics: &NodeMetrics,
) -> Result<(), TaskError> {
    let mut out = Vec::new();
    loop {
        let deadline = operator.next_processing_timer();
        match gate.next(deadline, || output.flush())? {
            Event::Batch(batch) => {
                metrics.add_in(batch.len());
                operator.process(batch, &mut out)?;
            }
            Event::Watermark(watermark) => {
                operator.on_watermark(watermark, &mut out)?;
                metrics.add_out(out.len());
                output.emit(&mut out)?;
                output.broadcast(&Message::Watermark(watermark))?;
            }
            Event::Barrier { barrier, .. } => {
                output.broadcast(&Message::Barrier(barrier))?;
            }
            Event::Deadline => operator.on_processing_time(Instant::now(), &mut out)?,
            Event::End => {
                operator.close(&mut out)?;
                metrics.add_out(out.len());
                output.emit(&mut out)?;
                output.broadcast(&Message::EndOfInput)?;
                return Ok(());
            }
        }
        metrics.add_out(out.len());
        output.emit(&mut out)?;
    }
}
