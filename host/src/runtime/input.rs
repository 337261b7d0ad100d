//! The consuming side of a subtask: the channels from all its upstream subtasks and the
//! coordinator's control channel, read as one stream of events.
//!
//! The gate tracks, per channel, whether its data ended and whether its producer is
//! gone, how many data items it consumed, the barriers announced on its priority lane,
//! and its watermark; the subtask's watermark is the minimum over the channels whose
//! data has not ended, as Flink's. Every barrier is reported twice: announced, when it
//! arrives on the priority lane, and reached, once everything sent before it was
//! consumed. Channels the aligner blocked are not read at all: their records wait in
//! the bounded channel, which back-pressures the upstream subtask — exactly what an
//! aligned checkpoint needs.
//!
//! With buffer debloating the gate measures how many records per second its subtask
//! consumes while it is not idle, and bounds each channel to about `target` worth of
//! them ([`Debloat`]).

use crate::runtime::batch::Batch;
use crate::runtime::channel::{Announcement, ChannelReceiver, Polled, Wake};
use crate::runtime::metrics::{Activity, TaskTimes};
use crate::runtime::output::Output;
use crate::runtime::record::{Barrier, Control, Message};
use crate::runtime::{CANCEL_POLL, CheckpointId, TaskError};
use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the gate hands the subtask loop.
#[derive(Debug)]
pub enum Event {
    /// Records to process, from `channel`.
    Batch {
        /// The channel they came on.
        channel: usize,
        /// The records.
        batch: Batch,
    },
    /// The subtask's watermark advanced to this value.
    Watermark(i64),
    /// A barrier arrived on the priority lane of `channel`, ahead of the data queued
    /// before it.
    Announced {
        /// The channel it arrived on.
        channel: usize,
        /// The barrier.
        barrier: Barrier,
    },
    /// Everything sent on `channel` before this barrier was consumed.
    Barrier {
        /// The channel.
        channel: usize,
        /// The barrier.
        barrier: Barrier,
    },
    /// The data on `channel` ended; [`InputGate::all_ended`] tells whether it was the
    /// last. Barriers may still follow.
    Ended {
        /// The channel whose data ended.
        channel: usize,
    },
    /// The producer of `channel` is gone, after its end or a stop-with-savepoint
    /// barrier: nothing more comes on it.
    Closed {
        /// The channel.
        channel: usize,
    },
    /// A message from the checkpoint coordinator.
    Control(Control),
    /// The deadline passed with nothing to read.
    Deadline,
}

#[derive(Default)]
struct ChannelState {
    ended: bool,
    /// The last barrier that passed stopped the job (stop-with-savepoint): its
    /// producer may go away without an end of input.
    stopped: bool,
    gone: bool,
    blocked: bool,
    watermark: Option<i64>,
    /// Data items consumed.
    consumed: u64,
    /// Barriers announced and not yet reached, oldest first.
    announced: VecDeque<Announcement>,
}

/// Buffer debloating (Flink's `taskmanager.network.memory.buffer-debloat.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debloat {
    /// In flight on all channels together: about this long of the subtask's
    /// throughput.
    pub target: Duration,
    /// How often the throughput is measured and the bound recomputed.
    pub period: Duration,
}

/// Records a debloated channel may always hold: a floor under the bound, so that a
/// moment of low throughput does not shrink batches to single records.
const MIN_DEBLOATED_RECORDS: usize = 64;

/// The debloater's measurement.
struct Throughput {
    debloat: Debloat,
    since: Instant,
    records: u64,
    idle: Duration,
    /// Smoothed records per second while busy.
    rate: Option<f64>,
}

/// All input channels of one subtask, and its control channel.
pub struct InputGate {
    channels: Vec<ChannelReceiver>,
    state: Vec<ChannelState>,
    control: Receiver<Control>,
    wake: Arc<Wake>,
    registered: bool,
    /// The channel to look at first, so that no channel starves the others.
    next: usize,
    watermark: i64,
    cancel: Arc<AtomicBool>,
    /// Time spent waiting for input is the subtask's idle time.
    times: Arc<TaskTimes>,
    throughput: Option<Throughput>,
}

impl InputGate {
    /// A gate over `channels` and `control`, whose senders wake `wake`.
    pub fn new(
        channels: Vec<ChannelReceiver>,
        control: Receiver<Control>,
        wake: Arc<Wake>,
        cancel: Arc<AtomicBool>,
        times: Arc<TaskTimes>,
    ) -> Self {
        let state = channels.iter().map(|_| ChannelState::default()).collect();
        Self {
            channels,
            state,
            control,
            wake,
            registered: false,
            next: 0,
            watermark: i64::MIN,
            cancel,
            times,
            throughput: None,
        }
    }

    /// Turns buffer debloating on.
    pub fn debloat(&mut self, debloat: Debloat) {
        self.throughput = Some(Throughput {
            debloat,
            since: Instant::now(),
            records: 0,
            idle: self.times.read().idle,
            rate: None,
        });
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

    /// Copies of the batches queued on `channel` before its barrier of `checkpoint`:
    /// what an unaligned barrier overtook. Empty when the barrier is not announced.
    pub fn in_flight(&self, channel: usize, checkpoint: CheckpointId) -> Vec<Batch> {
        let Some(s) = self.state.get(channel) else {
            return Vec::new();
        };
        match s
            .announced
            .iter()
            .find(|a| a.barrier.checkpoint == checkpoint)
        {
            Some(a) => self.channels[channel].in_flight(a.position),
            None => Vec::new(),
        }
    }

    /// The next event. Data is read only while `output` has room for what processing it
    /// emits (Flink's output availability): a back-pressured subtask waits here, not in
    /// a send, so that it still sees barriers and control. When nothing is ready it
    /// flushes `output` once, then waits until `deadline` at the latest.
    pub fn next(
        &mut self,
        deadline: Option<Instant>,
        output: &mut Output,
    ) -> Result<Event, TaskError> {
        if !self.registered {
            self.wake.register();
            self.registered = true;
        }
        let mut flushed = false;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(TaskError::Cancelled);
            }
            let room = output.has_room();
            if let Some(event) = self.poll(room)? {
                return Ok(event);
            }
            if room && !flushed {
                output.flush()?;
                flushed = true;
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Ok(Event::Deadline);
            }
            let wake = deadline.map_or(now + CANCEL_POLL, |d| d.min(now + CANCEL_POLL));
            let waiting = if room {
                Activity::Idle
            } else {
                Activity::BackPressured
            };
            self.times.waiting(waiting, || self.wake.wait_until(wake));
        }
    }

    /// One look at the control channel and every channel, in turn from the one after
    /// the last that had something; data only with `data`.
    fn poll(&mut self, data: bool) -> Result<Option<Event>, TaskError> {
        match self.control.try_recv() {
            Ok(control) => return Ok(Some(Event::Control(control))),
            // The executor is gone: nobody will ever tell this subtask anything again.
            Err(TryRecvError::Disconnected) => return Err(TaskError::Cancelled),
            Err(TryRecvError::Empty) => {}
        }
        let n = self.channels.len();
        for i in 0..n {
            let channel = (self.next + i) % n;
            let s = &mut self.state[channel];
            if s.gone {
                continue;
            }
            let at_barrier = s
                .announced
                .front()
                .is_some_and(|a| a.position == s.consumed);
            if at_barrier
                && !s.blocked
                && let Some(a) = s.announced.pop_front()
            {
                s.stopped = a.barrier.stop;
                self.next = channel + 1;
                return Ok(Some(Event::Barrier {
                    channel,
                    barrier: a.barrier,
                }));
            }
            match self.channels[channel].poll(data && !s.blocked && !at_barrier) {
                Polled::Announcement(a) => {
                    s.announced.push_back(a);
                    self.next = channel + 1;
                    return Ok(Some(Event::Announced {
                        channel,
                        barrier: a.barrier,
                    }));
                }
                Polled::Item(message) => {
                    s.consumed += 1;
                    self.next = channel + 1;
                    if let Some(event) = self.on_message(channel, message) {
                        return Ok(Some(event));
                    }
                }
                Polled::Empty => {}
                Polled::Gone if s.ended || s.stopped => {
                    s.gone = true;
                    return Ok(Some(Event::Closed { channel }));
                }
                Polled::Gone => return Err(TaskError::Disconnected),
            }
        }
        Ok(None)
    }

    fn on_message(&mut self, channel: usize, message: Message) -> Option<Event> {
        match message {
            Message::Batch(batch) => {
                if self.throughput.is_some() {
                    self.measure(batch.len());
                }
                Some(Event::Batch { channel, batch })
            }
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

    /// Counts `records` consumed; once a period is over, bounds every channel to its
    /// share of `target` worth of the busy throughput.
    fn measure(&mut self, records: usize) {
        let Some(t) = self.throughput.as_mut() else {
            return;
        };
        t.records += records as u64;
        let elapsed = t.since.elapsed();
        if elapsed < t.debloat.period {
            return;
        }
        let idle = self.times.read().idle;
        let busy = elapsed.saturating_sub(idle.saturating_sub(t.idle));
        let measured = t.records as f64 / busy.as_secs_f64().max(1e-3);
        // Flink smooths over several periods the same way.
        let rate = t.rate.map_or(measured, |r| 0.7 * r + 0.3 * measured);
        (t.rate, t.since, t.records, t.idle) = (Some(rate), Instant::now(), 0, idle);
        let open = self.state.iter().filter(|s| !s.ended).count().max(1);
        let share = rate * t.debloat.target.as_secs_f64() / open as f64;
        let limit = (share as usize).max(MIN_DEBLOATED_RECORDS);
        for channel in &self.channels {
            channel.set_record_limit(limit);
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
    use crate::runtime::channel::{ChannelSender, ControlSender, channel};
    use crate::runtime::{CheckpointId, Record};

    fn gate(n: usize) -> (InputGate, Vec<ChannelSender>, ControlSender) {
        let wake = Arc::new(Wake::default());
        let (tx, rx): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| channel(16, wake.clone(), Arc::default()))
            .unzip();
        let (ctx, crx) = ControlSender::new(wake.clone());
        (
            InputGate::new(rx, crx, wake, Arc::default(), Arc::default()),
            tx,
            ctx,
        )
    }

    /// A subtask without output: it always has room.
    fn no_output() -> Output {
        Output::new(Vec::new(), Arc::default(), Arc::default())
    }

    fn barrier(n: u64) -> Barrier {
        Barrier::checkpoint(CheckpointId(n), 0, None)
    }

    fn held() -> Message {
        Message::Batch([Record::new("held")].iter().collect())
    }

    #[test]
    fn the_watermark_is_the_minimum_over_channels_still_carrying_data()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(2);
        tx[0]
            .try_send(Message::Watermark(10))
            .map_err(|e| format!("{e:?}"))?;
        assert!(
            g.next(Some(Instant::now()), &mut no_output())
                .is_ok_and(|e| matches!(e, Event::Deadline))
        );
        tx[1]
            .try_send(Message::Watermark(5))
            .map_err(|e| format!("{e:?}"))?;
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Watermark(5)
        ));
        tx[1]
            .try_send(Message::EndOfInput)
            .map_err(|e| format!("{e:?}"))?;
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Ended { channel: 1 }
        ));
        assert!(matches!(g.advance_watermark(), Some(Event::Watermark(10))));
        Ok(())
    }

    #[test]
    fn all_ended_holds_only_when_every_channel_has_ended() -> Result<(), Box<dyn std::error::Error>>
    {
        let (mut g, tx, _c) = gate(2);
        tx[0]
            .try_send(Message::EndOfInput)
            .map_err(|e| format!("{e:?}"))?;
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Ended { channel: 0 }
        ));
        assert!(!g.all_ended());
        tx[1]
            .try_send(Message::EndOfInput)
            .map_err(|e| format!("{e:?}"))?;
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Ended { channel: 1 }
        ));
        assert!(g.all_ended());
        Ok(())
    }

    #[test]
    fn a_blocked_channel_is_not_read_until_unblocked() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(2);
        tx[0].try_send(held()).map_err(|e| format!("{e:?}"))?;
        g.set_blocked([0]);
        assert!(matches!(
            g.next(Some(Instant::now()), &mut no_output())?,
            Event::Deadline
        ));
        tx[1].announce(barrier(1)).map_err(|e| format!("{e:?}"))?;
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Announced { channel: 1, .. }
        ));
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Barrier { channel: 1, .. }
        ));
        g.set_blocked([]);
        assert!(
            matches!(g.next(None, &mut no_output())?, Event::Batch { channel: 0, batch } if batch.get(0).value == b"held")
        );
        Ok(())
    }

    #[test]
    fn a_barrier_is_announced_at_once_and_reached_after_the_data_before_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(1);
        tx[0].try_send(held()).map_err(|e| format!("{e:?}"))?;
        tx[0].announce(barrier(1)).map_err(|e| format!("{e:?}"))?;
        tx[0].try_send(held()).map_err(|e| format!("{e:?}"))?;
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Announced { .. }
        ));
        assert_eq!(g.in_flight(0, CheckpointId(1)).len(), 1);
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Batch { .. }
        ));
        assert!(g.in_flight(0, CheckpointId(1)).is_empty());
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Barrier { .. }
        ));
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Batch { .. }
        ));
        Ok(())
    }

    #[test]
    fn a_blocked_channel_still_announces_its_barriers() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(1);
        tx[0].try_send(held()).map_err(|e| format!("{e:?}"))?;
        tx[0].announce(barrier(2)).map_err(|e| format!("{e:?}"))?;
        g.set_blocked([0]);
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Announced { .. }
        ));
        assert!(matches!(
            g.next(Some(Instant::now()), &mut no_output())?,
            Event::Deadline
        ));
        Ok(())
    }

    #[test]
    fn barriers_still_arrive_after_the_data_ended() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(1);
        tx[0]
            .try_send(Message::EndOfInput)
            .map_err(|e| format!("{e:?}"))?;
        tx[0].announce(barrier(9)).map_err(|e| format!("{e:?}"))?;
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Announced { .. }
        ));
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Ended { .. }
        ));
        assert!(
            matches!(g.next(None, &mut no_output())?, Event::Barrier { barrier, .. } if barrier.checkpoint == CheckpointId(9))
        );
        Ok(())
    }

    #[test]
    fn control_messages_arrive_beside_the_data() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, _tx, control) = gate(1);
        control.send(Control::Complete(CheckpointId(3)));
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Control(Control::Complete(CheckpointId(3)))
        ));
        Ok(())
    }

    #[test]
    fn an_empty_gate_reports_the_deadline() -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, _tx, _c) = gate(2);
        let event = g.next(Some(Instant::now()), &mut no_output())?;
        assert!(matches!(event, Event::Deadline));
        Ok(())
    }

    #[test]
    fn a_subtask_whose_output_is_full_reads_barriers_but_no_data()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(1);
        let (out_tx, out_rx) = channel(1, Arc::default(), Arc::default());
        out_tx.try_send(held()).map_err(|e| format!("{e:?}"))?;
        let mut full = Output::new(
            vec![crate::runtime::output::OutputEdge::new(
                "next".into(),
                crate::runtime::output::Partitioner::Forward,
                vec![out_tx],
                16,
            )],
            Arc::default(),
            Arc::default(),
        );
        tx[0].try_send(held()).map_err(|e| format!("{e:?}"))?;
        tx[0].announce(barrier(1)).map_err(|e| format!("{e:?}"))?;
        assert!(matches!(g.next(None, &mut full)?, Event::Announced { .. }));
        assert!(matches!(
            g.next(Some(Instant::now()), &mut full)?,
            Event::Deadline
        ));
        assert!(matches!(out_rx.poll(true), Polled::Item(_)));
        assert!(matches!(g.next(None, &mut full)?, Event::Batch { .. }));
        Ok(())
    }

    #[test]
    fn an_upstream_that_vanishes_before_its_end_is_reported_as_disconnected() {
        let (mut g, tx, _c) = gate(1);
        drop(tx);
        assert!(matches!(
            g.next(None, &mut no_output()),
            Err(TaskError::Disconnected)
        ));
    }

    #[test]
    fn an_upstream_that_leaves_after_its_end_closes_its_channel()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(1);
        tx[0]
            .try_send(Message::EndOfInput)
            .map_err(|e| format!("{e:?}"))?;
        drop(tx);
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Ended { .. }
        ));
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Closed { channel: 0 }
        ));
        assert!(matches!(
            g.next(Some(Instant::now()), &mut no_output())?,
            Event::Deadline
        ));
        Ok(())
    }

    #[test]
    fn debloating_bounds_each_channel_to_its_share_of_the_target()
    -> Result<(), Box<dyn std::error::Error>> {
        let (mut g, tx, _c) = gate(2);
        g.debloat(Debloat {
            target: Duration::from_millis(100),
            period: Duration::ZERO,
        });
        let batch: Batch = (0..1000)
            .map(|_| Record::new("x"))
            .collect::<Vec<_>>()
            .iter()
            .collect();
        tx[0]
            .try_send(Message::Batch(batch))
            .map_err(|e| format!("{e:?}"))?;
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(
            g.next(None, &mut no_output())?,
            Event::Batch { .. }
        ));
        // At most 1000 records in about 5 ms busy: 200,000/s, a tenth of a second of it
        // shared by two channels is at most 10,000 each.
        let limit = tx[0].record_limit();
        assert!(
            (MIN_DEBLOATED_RECORDS..=10_000).contains(&limit),
            "limit {limit}"
        );
        assert_eq!(tx[1].record_limit(), limit);
        Ok(())
    }
}
