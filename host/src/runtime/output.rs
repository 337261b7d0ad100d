//! The producing side of a subtask: one [`OutputEdge`] per downstream node, each with a
//! partitioner and one batch buffer per channel.
//!
//! Records are buffered per channel and sent as a batch when the buffer is full, and
//! whenever the subtask is about to wait (so a trickle of records is not held back).
//! Partitioners copy runs of consecutive records bound for the same channel as one range
//! of each buffer; a forward edge whose buffer is empty takes the emitted batch's buffers
//! as they are. Barriers, watermarks and the end of input flush every buffer first, then
//! go to every channel: they never overtake the records emitted before them.

use crate::runtime::batch::Batch;
use crate::runtime::channel::{ChannelSender, SendError};
use crate::runtime::keygroup::{key_group_of, subtask_for};
use crate::runtime::metrics::{Activity, TaskTimes};
use crate::runtime::record::{Barrier, Message};
use crate::runtime::{CANCEL_POLL, Fault, TaskError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How records are spread over the channels of an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioner {
    /// Subtask i sends to subtask i; the edge has one channel.
    Forward,
    /// Round-robin, record by record.
    Rebalance,
    /// Every record to every channel.
    Broadcast,
    /// By the key's key group, to the subtask that owns it.
    KeyBy {
        /// The job's number of key groups.
        max_parallelism: u32,
    },
}

/// One downstream node as seen from a producing subtask.
pub struct OutputEdge {
    target: String,
    partitioner: Partitioner,
    channels: Vec<ChannelSender>,
    buffers: Vec<Batch>,
    batch_size: usize,
    next: usize,
    /// The channel of each record of the batch being routed, reused between batches.
    targets: Vec<u32>,
}

impl OutputEdge {
    /// An edge to `target` over `channels` (one per downstream subtask, or the single
    /// forward channel), sending batches of `batch_size` records.
    pub fn new(
        target: String,
        partitioner: Partitioner,
        channels: Vec<ChannelSender>,
        batch_size: usize,
    ) -> Self {
        let buffers = channels.iter().map(|_| Batch::new()).collect();
        Self {
            target,
            partitioner,
            channels,
            buffers,
            batch_size: batch_size.max(1),
            next: 0,
            targets: Vec::new(),
        }
    }
}

/// All outgoing edges of a subtask.
pub struct Output {
    edges: Vec<OutputEdge>,
    waits: Waits,
}

/// What a send that must wait for room needs: the cancel flag it gives up on, and the
/// clock of the subtask's back-pressured time.
struct Waits {
    cancel: Arc<AtomicBool>,
    times: Arc<TaskTimes>,
}

impl Output {
    /// Outputs over `edges`.
    pub fn new(edges: Vec<OutputEdge>, cancel: Arc<AtomicBool>, times: Arc<TaskTimes>) -> Self {
        Self {
            edges,
            waits: Waits { cancel, times },
        }
    }

    /// Routes the records of `batch` into the channel buffers, sends the buffers that
    /// filled up, and leaves `batch` empty.
    pub fn emit(&mut self, batch: &mut Batch) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        let Some((last, rest)) = self.edges.split_last_mut() else {
            batch.clear();
            return Ok(());
        };
        for edge in rest {
            route(edge, batch, false, &self.waits)?;
        }
        route(last, batch, true, &self.waits)?;
        batch.clear();
        Ok(())
    }

    /// Whether every channel has room for another batch: the subtask reads its next
    /// input only then, so that it seldom blocks while sending and sees its barriers
    /// and control meanwhile (Flink's output availability). When not, the subtask's
    /// [`Wake`](crate::runtime::channel::Wake) wakes it once there is room.
    pub fn has_room(&self) -> bool {
        self.edges
            .iter()
            .all(|edge| edge.channels.iter().all(ChannelSender::has_room))
    }

    /// Sends every non-empty buffer.
    pub fn flush(&mut self) -> Result<(), TaskError> {
        for edge in &mut self.edges {
            for i in 0..edge.buffers.len() {
                if !edge.buffers[i].is_empty() {
                    let batch = std::mem::take(&mut edge.buffers[i]);
                    send(&edge.channels[i], Message::Batch(batch), &self.waits)?;
                }
            }
        }
        Ok(())
    }

    /// Flushes, then sends `message` (a watermark or the end of input) on every channel.
    pub fn broadcast(&mut self, message: &Message) -> Result<(), TaskError> {
        self.flush()?;
        for edge in &self.edges {
            for channel in &edge.channels {
                send(channel, message.clone(), &self.waits)?;
            }
        }
        Ok(())
    }

    /// Sends `barrier` on every channel's priority lane, right behind the records
    /// emitted before it; it waits for nothing.
    pub fn barrier(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        for edge in &mut self.edges {
            for (channel, buffer) in edge.channels.iter().zip(&mut edge.buffers) {
                if !buffer.is_empty() {
                    channel
                        .force(Message::Batch(std::mem::take(buffer)))
                        .map_err(|_| TaskError::Disconnected)?;
                }
                channel
                    .announce(barrier)
                    .map_err(|_| TaskError::Disconnected)?;
            }
        }
        Ok(())
    }
}

/// Routes `batch` over `edge`. With `owned`, the batch's buffers may be taken over (the
/// caller clears it afterwards anyway).
fn route(
    edge: &mut OutputEdge,
    batch: &mut Batch,
    owned: bool,
    waits: &Waits,
) -> Result<(), TaskError> {
    let channels = edge.channels.len();
    match edge.partitioner {
        Partitioner::Forward => {
            if owned {
                edge.buffers[0].take_from(batch);
            } else {
                edge.buffers[0].append(batch);
            }
            return ship_if_full(edge, 0, waits);
        }
        Partitioner::Broadcast => {
            for channel in 0..channels {
                edge.buffers[channel].append(batch);
                ship_if_full(edge, channel, waits)?;
            }
            return Ok(());
        }
        Partitioner::Rebalance => {
            edge.targets.clear();
            for _ in 0..batch.len() {
                edge.next = (edge.next + 1) % channels;
                edge.targets.push(u32::try_from(edge.next).unwrap_or(0));
            }
        }
        Partitioner::KeyBy { max_parallelism } => {
            edge.targets.clear();
            let parallelism = u32::try_from(channels).unwrap_or(u32::MAX);
            for i in 0..batch.len() {
                let Some(key) = batch.key(i) else {
                    return Err(TaskError::failed(
                        Fault::User,
                        format!(
                            "a record without a key reached the key-by input of `{}`; the operator before it must set a key on every record",
                            edge.target
                        ),
                    ));
                };
                let group = key_group_of(key, max_parallelism);
                edge.targets
                    .push(subtask_for(group, max_parallelism, parallelism).0);
            }
        }
    }
    // Copy each run of records bound for one channel as one range.
    let mut start = 0;
    while start < batch.len() {
        let channel = edge.targets[start];
        let mut end = start + 1;
        while end < batch.len() && edge.targets[end] == channel {
            end += 1;
        }
        let channel = channel as usize;
        edge.buffers[channel].extend_from(batch, start..end);
        ship_if_full(edge, channel, waits)?;
        start = end;
    }
    Ok(())
}

/// Sends the buffer of `channel` once it holds a batch's worth of records, or as many
/// as the channel may hold when that is less (buffer debloating).
fn ship_if_full(edge: &mut OutputEdge, channel: usize, waits: &Waits) -> Result<(), TaskError> {
    let full = edge.batch_size.min(edge.channels[channel].record_limit());
    if edge.buffers[channel].len() >= full {
        let batch = std::mem::take(&mut edge.buffers[channel]);
        send(&edge.channels[channel], Message::Batch(batch), waits)?;
    }
    Ok(())
}

/// Sends `message`, blocking while the channel is full (that is the backpressure, and
/// the time it takes is back-pressured time), but giving up when the job is cancelled.
fn send(channel: &ChannelSender, message: Message, waits: &Waits) -> Result<(), TaskError> {
    let mut message = match channel.try_send(message) {
        Ok(()) => return Ok(()),
        Err(SendError::Disconnected) => return Err(TaskError::Disconnected),
        Err(SendError::Full(back)) => back,
    };
    waits.times.waiting(Activity::BackPressured, || {
        loop {
            match channel.send_timeout(message, CANCEL_POLL) {
                Ok(()) => return Ok(()),
                Err(SendError::Disconnected) => return Err(TaskError::Disconnected),
                Err(SendError::Full(back)) => {
                    if waits.cancel.load(Ordering::Relaxed) {
                        return Err(TaskError::Cancelled);
                    }
                    message = back;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Record;
    use crate::runtime::channel::{ChannelReceiver, Polled, channel};
    use std::time::Duration;

    const BATCH: usize = 7;

    fn edge(partitioner: Partitioner, n: usize) -> (OutputEdge, Vec<ChannelReceiver>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| channel(64, Arc::default(), Arc::default()))
            .unzip();
        (
            OutputEdge::new("next".into(), partitioner, senders, BATCH),
            receivers,
        )
    }

    fn messages(rx: &ChannelReceiver) -> Vec<Message> {
        std::iter::from_fn(|| match rx.poll(true) {
            Polled::Item(m) => Some(m),
            _ => None,
        })
        .collect()
    }

    fn drain(rx: &ChannelReceiver) -> Vec<Record> {
        messages(rx)
            .into_iter()
            .flat_map(|m| match m {
                Message::Batch(b) => b.to_records(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(vec![]).with_key(format!("k{i}")))
            .collect()
    }

    fn keyed(n: usize) -> Batch {
        records(n).iter().collect()
    }

    #[test]
    fn key_by_sends_every_key_to_exactly_one_channel() -> Result<(), TaskError> {
        let (edge, rx) = edge(
            Partitioner::KeyBy {
                max_parallelism: 128,
            },
            4,
        );
        let mut out = Output::new(vec![edge], Arc::default(), Arc::default());
        for _ in 0..3 {
            out.emit(&mut keyed(100))?;
        }
        out.flush()?;
        let per_channel: Vec<std::collections::HashSet<Vec<u8>>> = rx
            .iter()
            .map(|r| drain(r).into_iter().filter_map(|r| r.key).collect())
            .collect();
        for i in 0..4 {
            for j in i + 1..4 {
                assert!(per_channel[i].is_disjoint(&per_channel[j]));
            }
        }
        assert_eq!(per_channel.iter().map(|s| s.len()).sum::<usize>(), 100);
        Ok(())
    }

    #[test]
    fn rebalance_spreads_records_evenly() -> Result<(), TaskError> {
        let (edge, rx) = edge(Partitioner::Rebalance, 3);
        let mut out = Output::new(vec![edge], Arc::default(), Arc::default());
        out.emit(&mut keyed(300))?;
        out.flush()?;
        for r in &rx {
            assert_eq!(drain(r).len(), 100);
        }
        Ok(())
    }

    #[test]
    fn broadcast_copies_every_record_to_every_channel() -> Result<(), TaskError> {
        let (edge, rx) = edge(Partitioner::Broadcast, 3);
        let mut out = Output::new(vec![edge], Arc::default(), Arc::default());
        out.emit(&mut keyed(10))?;
        out.flush()?;
        for r in &rx {
            assert_eq!(drain(r), records(10));
        }
        Ok(())
    }

    #[test]
    fn a_barrier_follows_every_record_emitted_before_it() -> Result<(), TaskError> {
        let (edge, rx) = edge(Partitioner::Forward, 1);
        let mut out = Output::new(vec![edge], Arc::default(), Arc::default());
        out.emit(&mut keyed(5))?;
        out.broadcast(&Message::EndOfInput)?;
        let messages = messages(&rx[0]);
        assert!(matches!(&messages[..], [Message::Batch(b), Message::EndOfInput] if b.len() == 5));
        Ok(())
    }

    #[test]
    fn a_barrier_stands_right_behind_the_buffered_records_and_waits_for_no_room()
    -> Result<(), TaskError> {
        let (tx, rx) = channel(1, Arc::default(), Arc::default());
        let edge = OutputEdge::new("n".into(), Partitioner::Forward, vec![tx], BATCH);
        let mut out = Output::new(vec![edge], Arc::default(), Arc::default());
        out.emit(&mut keyed(BATCH))?;
        out.emit(&mut keyed(3))?;
        let barrier = Barrier::checkpoint(crate::runtime::CheckpointId(1), 0, Some(Duration::ZERO));
        out.barrier(barrier)?;
        let Polled::Announcement(a) = rx.poll(true) else {
            panic!("the barrier is on the priority lane");
        };
        assert_eq!((a.barrier, a.position), (barrier, 2));
        assert_eq!(drain(&rx).len(), BATCH + 3);
        Ok(())
    }

    #[test]
    fn a_debloated_channel_gets_smaller_batches() -> Result<(), TaskError> {
        let (tx, rx) = channel(64, Arc::default(), Arc::default());
        rx.set_record_limit(3);
        let edge = OutputEdge::new("n".into(), Partitioner::Forward, vec![tx], BATCH);
        let mut out = Output::new(vec![edge], Arc::default(), Arc::default());
        out.emit(&mut keyed(3))?;
        assert!(matches!(rx.poll(true), Polled::Item(Message::Batch(b)) if b.len() == 3));
        Ok(())
    }

    #[test]
    fn a_record_without_a_key_on_a_key_by_edge_is_a_user_error() {
        let (edge, _rx) = edge(Partitioner::KeyBy { max_parallelism: 8 }, 2);
        let mut out = Output::new(vec![edge], Arc::default(), Arc::default());
        let err = out.emit(&mut [Record::new("x")].iter().collect());
        assert!(matches!(
            err,
            Err(TaskError::Failed {
                fault: Fault::User,
                ..
            })
        ));
    }

    #[test]
    fn a_full_channel_gives_up_when_the_job_is_cancelled() {
        let (tx, _rx) = channel(1, Arc::default(), Arc::default());
        let cancel = Arc::new(AtomicBool::new(true));
        let times = Arc::new(TaskTimes::default());
        let mut out = Output::new(
            vec![OutputEdge::new(
                "n".into(),
                Partitioner::Forward,
                vec![tx],
                1,
            )],
            cancel,
            times.clone(),
        );
        assert!(out.emit(&mut keyed(1)).is_ok());
        assert_eq!(times.read().back_pressured, Duration::ZERO, "room: no wait");
        assert!(matches!(out.emit(&mut keyed(1)), Err(TaskError::Cancelled)));
        assert!(
            times.read().back_pressured > Duration::ZERO,
            "waiting for room is back-pressured time"
        );
    }
}
