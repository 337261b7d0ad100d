//! The consuming side of a subtask: the channels from all its upstream subtasks and the
//! coordinator's control channel, read as one stream of events.
//!
//! The gate tracks, per channel, whether its data ended and whether its sender is gone,
//! and the watermark of each channel; the subtask's watermark is the minimum over the
//! channels whose data has not ended, as Flink's. Channels the aligner blocked are not
//! read at all: their records wait in the bounded channel, which back-pressures the
//! upstream subtask — exactly what an aligned checkpoint needs.

use crate::runtime::batch::Batch;
use crate::runtime::metrics::{Activity, TaskTimes};
use crate::runtime::record::{Barrier, Control, Message};
use crate::runtime::{CANCEL_POLL, TaskError};
use crossbeam_channel::{Receiver, Select};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What the gate hands the subtask loop.
#[derive(Debug)]
pub enum Event {
    /// Records to process.
    Batch(Batch),
    /// The subtask's watermark advanced to this value.
    Watermark(i64),
    /// A barrier arrived on `channel`.
    Barrier {
        /// The channel it arrived on.
        channel: usize,
        /// The barrier.
        barrier: Barrier,
    },
    /// The data on `channel` ended; [`InputGate::all_ended`] tells whether it was the last.
    Ended {
        /// The channel whose data ended.
        channel: usize,
    },
    /// A message from the checkpoint coordinator.
    Control(Control),
    /// The deadline passed with nothing to read.
    Deadline,
}

#[derive(Clone, Copy, Default)]
struct ChannelState {
    ended: bool,
    gone: bool,
    blocked: bool,
    watermark: Option<i64>,
}

/// All input channels of one subtask, and its control channel.
pub struct InputGate {
    channels: Vec<Receiver<Message>>,
    state: Vec<ChannelState>,
    control: Receiver<Control>,
    watermark: i64,
    cancel: Arc<AtomicBool>,
    /// Time spent waiting for input is the subtask's idle time.
    times: Arc<TaskTimes>,
}

enum Received {
    Channel(usize, Option<Message>),
    Control(Option<Control>),
}

impl InputGate {
    /// A gate over `channels` and `control`.
    pub fn new(
        channels: Vec<Receiver<Message>>,
        control: Receiver<Control>,
        cancel: Arc<AtomicBool>,
        times: Arc<TaskTimes>,
    ) -> Self {
        let state = vec![ChannelState::default(); channels.len()];
        Self {
            channels,
            state,
            control,
            watermark: i64::MIN,
            cancel,
            times,
        }
    }

    /// How many input channels the subtask has.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether the subtask has no input channel (never true for an operator).
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Whether the data of every channel has ended.
    pub fn all_ended(&self) -> bool {
        self.state.iter().all(|s| s.ended)
    }

    /// Blocks exactly the channels in `blocked` (alignment); the others are read.
    pub fn set_blocked(&mut self, blocked: impl IntoIterator<Item = usize>) {
        for s in &mut self.state {
            s.blocked = false;
        }
        for channel in blocked {
            if let Some(s) = self.state.get_mut(channel) {
                s.blocked = true;
            }
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
            if self.cancel.load(Ordering::Relaxed) {
                return Err(TaskError::Cancelled);
            }
            let received = match self.receive(None)? {
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
                    let times = self.times.clone();
                    times.waiting(Activity::Idle, || self.receive(Some(wake)))?
                }
            };
            if let Some(event) = received {
                return Ok(event);
            }
        }
    }

    /// Receives one message and turns it into an event; `None` when nothing arrived (or
    /// the message changed nothing the subtask must see, like a watermark that did not
    /// advance the minimum).
    fn receive(&mut self, wait_until: Option<Instant>) -> Result<Option<Event>, TaskError> {
        match self.select(wait_until) {
            None => Ok(None),
            Some(Received::Control(Some(control))) => Ok(Some(Event::Control(control))),
            // The executor is gone: nobody will ever tell this subtask anything again.
            Some(Received::Control(None)) => Err(TaskError::Cancelled),
            Some(Received::Channel(channel, Some(message))) => {
                Ok(self.on_message(channel, message))
            }
            Some(Received::Channel(channel, None)) if self.state[channel].ended => {
                self.state[channel].gone = true;
                Ok(None)
            }
            Some(Received::Channel(_, None)) => Err(TaskError::Disconnected),
        }
    }

    /// Waits (until `wait_until`, or not at all) for a message on a readable channel or
    /// the control channel; `None` inside means the sender is gone.
    fn select(&self, wait_until: Option<Instant>) -> Option<Received> {
        let mut select = Select::new();
        let mut sources = Vec::with_capacity(self.channels.len() + 1);
        for (i, channel) in self.channels.iter().enumerate() {
            let s = self.state[i];
            if !s.gone && !s.blocked {
                select.recv(channel);
                sources.push(Some(i));
            }
        }
        select.recv(&self.control);
        sources.push(None);
        let operation = match wait_until {
            None => select.try_select().ok(),
            Some(deadline) => select.select_deadline(deadline).ok(),
        }?;
        Some(match sources[operation.index()] {
            None => Received::Control(operation.recv(&self.control).ok()),
            Some(channel) => {
                Received::Channel(channel, operation.recv(&self.channels[channel]).ok())
            }
        })
    }

    fn on_message(&mut self, channel: usize, message: Message) -> Option<Event> {
        match message {
            Message::Batch(batch) => Some(Event::Batch(batch)),
            Message::Barrier(barrier) => Some(Event::Barrier { channel, barrier }),
            Message::Watermark(w) => {
                let current = &mut self.state[channel].watermark;
                *current = Some(current.map_or(w, |c| c.max(w)));
                self.advance_watermark()
            }
            Message::EndOfInput => {
                self.state[channel].ended = true;
                Some(Event::Ended { channel })
            }
        }
    }

    /// The new minimum watermark over the channels still carrying data, if it advanced.
    /// An ended channel no longer holds the watermark back.
    pub fn advance_watermark(&mut self) -> Option<Event> {
        let min = self
            .state
            .iter()
            .filter(|s| !s.ended)
            .map(|s| s.watermark.unwrap_or(i64::MIN))
            .min()?;
        (min > self.watermark).then(|| {
            self.watermark = min;
            Event::Watermark(min)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CheckpointId;
    use crossbeam_channel::{Sender, bounded, unbounded};

    fn gate(n: usize) -> (InputGate, Vec<Sender<Message>>, Sender<Control>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| bounded(16)).unzip();
        let (ctx, crx) = unbounded();
        (
            InputGate::new(rx, crx, Arc::default(), Arc::default()),
            tx,
            ctx,
        )
    }

    fn no_idle() -> Result<(), TaskError> {
        Ok(())
    }

    fn barrier(n: u64) -> Barrier {
        Barrier {
            checkpoint: CheckpointId(n),
            triggered_at_ms: 0,
        }
    }

    #[test]
    fn the_watermark_is_the_minimum_over_channels_still_carrying_data()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(2);
        tx[0].send(Message::Watermark(10))?;
        assert!(
            g.next(Some(Instant::now()), no_idle)
                .is_ok_and(|e| matches!(e, Event::Deadline))
        );
        tx[1].send(Message::Watermark(5))?;
        assert!(matches!(g.next(None, no_idle)?, Event::Watermark(5)));
        tx[1].send(Message::EndOfInput)?;
        assert!(matches!(
            g.next(None, no_idle)?,
            Event::Ended { channel: 1 }
        ));
        assert!(matches!(g.advance_watermark(), Some(Event::Watermark(10))));
        Ok(())
    }

    #[test]
    fn all_ended_holds_only_when_every_channel_has_ended() -> Result<(), Box<dyn std::error::Error>>
    {
        let (mut g, tx, _c) = gate(2);
        tx[0].send(Message::EndOfInput)?;
        assert!(matches!(
            g.next(None, no_idle)?,
            Event::Ended { channel: 0 }
        ));
        assert!(!g.all_ended());
        tx[1].send(Message::EndOfInput)?;
        assert!(matches!(
            g.next(None, no_idle)?,
            Event::Ended { channel: 1 }
        ));
        assert!(g.all_ended());
        Ok(())
    }

    #[test]
    fn a_blocked_channel_is_not_read_until_unblocked() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(2);
        tx[0].send(Message::Batch(
            [crate::runtime::Record::new("held")].iter().collect(),
        ))?;
        g.set_blocked([0]);
        assert!(matches!(
            g.next(Some(Instant::now()), no_idle)?,
            Event::Deadline
        ));
        tx[1].send(Message::Barrier(barrier(1)))?;
        assert!(matches!(
            g.next(None, no_idle)?,
            Event::Barrier { channel: 1, .. }
        ));
        g.set_blocked([]);
        assert!(matches!(g.next(None, no_idle)?, Event::Batch(b) if b.get(0).value == b"held"));
        Ok(())
    }

    #[test]
    fn barriers_still_arrive_after_the_data_ended() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(1);
        tx[0].send(Message::EndOfInput)?;
        tx[0].send(Message::Barrier(barrier(9)))?;
        assert!(matches!(g.next(None, no_idle)?, Event::Ended { .. }));
        assert!(
            matches!(g.next(None, no_idle)?, Event::Barrier { barrier, .. } if barrier.checkpoint == CheckpointId(9))
        );
        Ok(())
    }

    #[test]
    fn control_messages_arrive_beside_the_data() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, _tx, control) = gate(1);
        control.send(Control::Complete(CheckpointId(3)))?;
        assert!(matches!(
            g.next(None, no_idle)?,
            Event::Control(Control::Complete(CheckpointId(3)))
        ));
        Ok(())
    }

    #[test]
    fn an_empty_gate_calls_idle_once_and_reports_the_deadline()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, _tx, _c) = gate(2);
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
    fn an_upstream_that_vanishes_before_its_end_is_reported_as_disconnected() {
        let (mut g, tx, _c) = gate(1);
        drop(tx);
        assert!(matches!(
            g.next(None, no_idle),
            Err(TaskError::Disconnected)
        ));
    }

    #[test]
    fn an_upstream_that_leaves_after_its_end_is_not_an_error()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(1);
        tx[0].send(Message::EndOfInput)?;
        drop(tx);
        assert!(matches!(g.next(None, no_idle)?, Event::Ended { .. }));
        assert!(matches!(
            g.next(Some(Instant::now()), no_idle)?,
            Event::Deadline
        ));
        Ok(())
    }
}
