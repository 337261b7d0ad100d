//! The consuming side of a subtask: the channels from all its upstream subtasks, read
//! as one stream of events.
//!
//! The gate tracks which channels have ended and the watermark of each channel; the
//! subtask's watermark is the minimum over the channels still open, as Flink's.

use crate::runtime::TaskError;
use crate::runtime::record::{Barrier, Message, Record};
use crossbeam_channel::{Receiver, Select, TryRecvError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the gate hands the subtask loop.
#[derive(Debug)]
pub enum Event {
    /// Records to process.
    Batch(Vec<Record>),
    /// The subtask's watermark advanced to this value.
    Watermark(i64),
    /// A barrier arrived on channel `channel`.
    Barrier {
        /// The channel it arrived on.
        channel: usize,
        /// The barrier.
        barrier: Barrier,
    },
    /// Every channel has ended.
    End,
    /// The deadline passed with nothing to read.
    Deadline,
}

/// How often a waiting subtask looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// All input channels of one subtask.
pub struct InputGate {
    channels: Vec<Receiver<Message>>,
    open: Vec<bool>,
    watermarks: Vec<i64>,
    watermark: i64,
    cancel: Arc<AtomicBool>,
}

impl InputGate {
    /// A gate over `channels`.
    pub fn new(channels: Vec<Receiver<Message>>, cancel: Arc<AtomicBool>) -> Self {
        let n = channels.len();
        Self {
            channels,
            open: vec![true; n],
            watermarks: vec![i64::MIN; n],
            watermark: i64::MIN,
            cancel,
        }
    }

    /// The next event. When nothing is ready it calls `idle` once (the subtask flushes
    /// its output there), then waits until `deadline` at the latest.
    pub fn next(
        &mut self,
        deadline: Option<Instant>,
        mut idle: impl FnMut() -> Result<(), TaskError>,
    ) -> Result<Event, TaskError> {
        let mut idled = false;
        loop {
            if !self.open.iter().any(|&o| o) {
                return Ok(Event::End);
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(TaskError::Cancelled);
            }
            let received = match self.try_receive()? {
                Some(r) => Some(r),
                None => {
                    if !idled {
                        idle()?;
                        idled = true;
                    }
                    let now = Instant::now();
                    if deadline.is_some_and(|d| d <= now) {
                        return Ok(Event::Deadline);
                    }
                    let wake = deadline.map_or(now + CANCEL_POLL, |d| d.min(now + CANCEL_POLL));
                    self.receive_until(wake)?
                }
            };
            if let Some((channel, message)) = received
                && let Some(event) = self.on_message(channel, message)
            {
                return Ok(event);
            }
        }
    }

    fn on_message(&mut self, channel: usize, message: Message) -> Option<Event> {
        match message {
            Message::Batch(batch) => Some(Event::Batch(batch)),
            Message::Barrier(barrier) => Some(Event::Barrier { channel, barrier }),
            Message::Watermark(w) => {
                self.watermarks[channel] = self.watermarks[channel].max(w);
                self.advance_watermark()
            }
            Message::EndOfInput => {
                self.open[channel] = false;
                // An ended channel no longer holds the watermark back.
                self.advance_watermark()
            }
        }
    }

    fn advance_watermark(&mut self) -> Option<Event> {
        let min = self
            .open
            .iter()
            .zip(&self.watermarks)
            .filter(|(open, _)| **open)
            .map(|(_, w)| *w)
            .min()?;
        (min > self.watermark).then(|| {
            self.watermark = min;
            Event::Watermark(min)
        })
    }

    fn try_receive(&mut self) -> Result<Option<(usize, Message)>, TaskError> {
        if let [only] = self.channels.as_slice() {
            return match only.try_recv() {
                Ok(m) => Ok(Some((0, m))),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(TaskError::Disconnected),
            };
        }
        let mut select = Select::new();
        let indices = self.register(&mut select);
        match select.try_select() {
            Ok(op) => {
                let channel = indices[op.index()];
                let message = op
                    .recv(&self.channels[channel])
                    .map_err(|_| TaskError::Disconnected)?;
                Ok(Some((channel, message)))
            }
            Err(_) => Ok(None),
        }
    }

    fn receive_until(&mut self, wake: Instant) -> Result<Option<(usize, Message)>, TaskError> {
        let mut select = Select::new();
        let indices = self.register(&mut select);
        match select.select_deadline(wake) {
            Ok(op) => {
                let channel = indices[op.index()];
                let message = op
                    .recv(&self.channels[channel])
                    .map_err(|_| TaskError::Disconnected)?;
                Ok(Some((channel, message)))
            }
            Err(_) => Ok(None),
        }
    }

    /// Registers the open channels with `select`; returns the channel of each operation.
    fn register<'a>(&'a self, select: &mut Select<'a>) -> Vec<usize> {
        let mut indices = Vec::with_capacity(self.channels.len());
        for (i, channel) in self.channels.iter().enumerate() {
            if self.open[i] {
                select.recv(channel);
                indices.push(i);
            }
        }
        indices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    fn gate(n: usize) -> (InputGate, Vec<crossbeam_channel::Sender<Message>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| bounded(16)).unzip();
        (InputGate::new(rx, Arc::default()), tx)
    }

    fn no_idle() -> Result<(), TaskError> {
        Ok(())
    }

    #[test]
    fn the_watermark_is_the_minimum_over_open_channels() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx) = gate(2);
        tx[0].send(Message::Watermark(10))?;
        tx[1].send(Message::Watermark(5))?;
        assert!(matches!(g.next(None, no_idle)?, Event::Watermark(5)));
        tx[1].send(Message::EndOfInput)?;
        assert!(matches!(g.next(None, no_idle)?, Event::Watermark(10)));
        tx[0].send(Message::EndOfInput)?;
        assert!(matches!(g.next(None, no_idle)?, Event::End));
        Ok(())
    }

    #[test]
    fn the_gate_ends_only_when_every_channel_has_ended() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx) = gate(2);
        tx[0].send(Message::EndOfInput)?;
        tx[1].send(Message::Batch(vec![Record::new("x")]))?;
        assert!(matches!(g.next(None, no_idle)?, Event::Batch(b) if b.len() == 1));
        tx[1].send(Message::EndOfInput)?;
        assert!(matches!(g.next(None, no_idle)?, Event::End));
        Ok(())
    }

    #[test]
    fn an_empty_gate_calls_idle_once_and_reports_the_deadline()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, _tx) = gate(2);
        let mut idles = 0;
        let event = g.next(Some(Instant::now()), || {
            idles += 1;
            Ok(())
        })?;
        assert!(matches!(event, Event::Deadline));
        assert_eq!(idles, 1);
        Ok(())
    }

    #[test]
    fn a_vanished_upstream_is_reported_as_disconnected() {
        let (mut g, tx) = gate(1);
        drop(tx);
        assert!(matches!(
            g.next(None, no_idle),
            Err(TaskError::Disconnected)
        ));
    }
}
