//! The channel between a producing and a consuming subtask: a bounded data lane and a
//! priority lane.
//!
//! The data lane carries batches, watermarks and the end of input in order, and holds
//! at most `capacity` of them, and, with buffer debloating, at most a record limit's
//! worth of records: a full lane blocks the producer (backpressure). The priority lane
//! carries checkpoint barriers, unbounded and never blocking. A barrier is stamped with
//! its position in the data lane (how many items were pushed before it), so the
//! consumer can take it either in order, once it has consumed everything before it (an
//! aligned barrier), or at once, ahead of the items still queued (an unaligned one).
//! Which of the two is the consumer's choice ([`crate::checkpoint::Aligner`]); the
//! producer always announces the same way.
//!
//! In one process a channel is a single queue: the producer's output buffers and the
//! consumer's input buffers of Flink are the same items. Those a barrier overtakes are
//! therefore persisted once, by the consumer ([`ChannelReceiver::in_flight`]).
//!
//! A consumer waits on all its channels and its control channel at once: every sender
//! wakes the consumer's thread through a shared [`Wake`].

use crate::runtime::batch::Batch;
use crate::runtime::record::{Barrier, Control, Message};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Wakes the thread that consumes a set of channels when something arrives on any.
#[derive(Debug, Default)]
pub struct Wake {
    thread: OnceLock<Thread>,
}

impl Wake {
    /// Makes the calling thread the one woken. Called once by the consumer, before it
    /// first looks at its channels: a message sent earlier is then seen by that look.
    pub fn register(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// Wakes the consumer; when it is not waiting, its next wait returns at once.
    pub fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    /// Waits until woken or until `until`. May return early; callers look again.
    pub fn wait_until(&self, until: Instant) {
        std::thread::park_timeout(until.saturating_duration_since(Instant::now()));
    }
}

/// A barrier on the priority lane, with its place in the data lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The barrier.
    pub barrier: Barrier,
    /// How many data items the producer had pushed before it: the barrier stands
    /// between item `position - 1` and item `position`.
    pub position: u64,
}

/// What [`ChannelReceiver::poll`] found.
#[derive(Debug)]
pub enum Polled {
    /// A barrier from the priority lane.
    Announcement(Announcement),
    /// The next data item.
    Item(Message),
    /// Nothing (or only data, which was not asked for).
    Empty,
    /// Nothing, and the producer is gone.
    Gone,
}

/// Why a send did not go through.
#[derive(Debug)]
pub enum SendError {
    /// The lane is full; the message comes back.
    Full(Message),
    /// The consumer is gone.
    Disconnected,
}

#[derive(Debug, Default)]
struct Lanes {
    data: VecDeque<Message>,
    /// Records in the queued batches.
    records: usize,
    /// Data items pushed so far: the position of the next.
    pushed: u64,
    /// Data items popped so far.
    popped: u64,
    /// Records in the batches popped so far.
    popped_records: u64,
    priority: VecDeque<Announcement>,
    sender_gone: bool,
    receiver_gone: bool,
    /// The producer waits for room and must be told when there is some.
    sender_waiting: bool,
}

#[derive(Debug)]
struct Shared {
    lanes: Mutex<Lanes>,
    room: Condvar,
    /// The consumer's.
    wake: Arc<Wake>,
    /// The producer's: it waits for room in its own [`Wake`] when it would rather see
    /// its barriers and control meanwhile ([`ChannelSender::has_room`]).
    producer: Arc<Wake>,
    /// Data items the lane holds before the producer blocks.
    capacity: usize,
    /// Records the lane holds before the producer blocks (buffer debloating); an empty
    /// lane always takes one batch, so that no batch is ever too large to send.
    record_limit: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // A panicking subtask thread poisons nothing the other side cannot read on.
        self.lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn has_room(&self, lanes: &Lanes, message: &Message) -> bool {
        if lanes.data.len() >= self.capacity {
            return false;
        }
        match message {
            Message::Batch(batch) => {
                lanes.records == 0
                    || lanes.records + batch.len() <= self.record_limit.load(Ordering::Relaxed)
            }
            Message::Watermark(_) | Message::EndOfInput => true,
        }
    }
}

/// The producing end.
#[derive(Debug)]
pub struct ChannelSender(Arc<Shared>);

/// The consuming end.
#[derive(Debug)]
pub struct ChannelReceiver(Arc<Shared>);

/// A channel holding at most `capacity` data items, whose consumer `wake` wakes and whose
/// producer `producer` wakes when room frees up.
pub fn channel(
    capacity: usize,
    wake: Arc<Wake>,
    producer: Arc<Wake>,
) -> (ChannelSender, ChannelReceiver) {
    let shared = Arc::new(Shared {
        lanes: Mutex::new(Lanes::default()),
        room: Condvar::new(),
        wake,
        producer,
        capacity: capacity.max(1),
        record_limit: AtomicUsize::new(usize::MAX),
    });
    (ChannelSender(shared.clone()), ChannelReceiver(shared))
}

fn push(lanes: &mut Lanes, message: Message) {
    if let Message::Batch(batch) = &message {
        lanes.records += batch.len();
    }
    lanes.data.push_back(message);
    lanes.pushed += 1;
}

impl ChannelSender {
    /// Pushes `message` when the lane has room.
    pub fn try_send(&self, message: Message) -> Result<(), SendError> {
        let mut lanes = self.0.lock();
        if lanes.receiver_gone {
            return Err(SendError::Disconnected);
        }
        if !self.0.has_room(&lanes, &message) {
            return Err(SendError::Full(message));
        }
        push(&mut lanes, message);
        drop(lanes);
        self.0.wake.wake();
        Ok(())
    }

    /// Pushes `message`, waiting up to `timeout` for room.
    pub fn send_timeout(&self, message: Message, timeout: Duration) -> Result<(), SendError> {
        let until = Instant::now() + timeout;
        let mut lanes = self.0.lock();
        loop {
            if lanes.receiver_gone {
                return Err(SendError::Disconnected);
            }
            if self.0.has_room(&lanes, &message) {
                lanes.sender_waiting = false;
                push(&mut lanes, message);
                drop(lanes);
                self.0.wake.wake();
                return Ok(());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                lanes.sender_waiting = false;
                return Err(SendError::Full(message));
            }
            lanes.sender_waiting = true;
            lanes = self
                .0
                .room
                .wait_timeout(lanes, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Pushes `message` whether or not the lane has room: what a producer has buffered
    /// when a barrier goes out (at most one partial batch per barrier), so that the
    /// barrier never waits for room.
    pub fn force(&self, message: Message) -> Result<(), SendError> {
        let mut lanes = self.0.lock();
        if lanes.receiver_gone {
            return Err(SendError::Disconnected);
        }
        push(&mut lanes, message);
        drop(lanes);
        self.0.wake.wake();
        Ok(())
    }

    /// Puts `barrier` on the priority lane, behind everything pushed so far.
    pub fn announce(&self, barrier: Barrier) -> Result<(), SendError> {
        let mut lanes = self.0.lock();
        if lanes.receiver_gone {
            return Err(SendError::Disconnected);
        }
        let position = lanes.pushed;
        lanes.priority.push_back(Announcement { barrier, position });
        drop(lanes);
        self.0.wake.wake();
        Ok(())
    }

    /// Whether the lane has room for another batch now. When it has not, the producer
    /// is woken (through its own [`Wake`]) once it has.
    pub fn has_room(&self) -> bool {
        let mut lanes = self.0.lock();
        let room = lanes.receiver_gone
            || (lanes.data.len() < self.0.capacity
                && (lanes.records == 0
                    || lanes.records < self.0.record_limit.load(Ordering::Relaxed)));
        if !room {
            lanes.sender_waiting = true;
        }
        room
    }

    /// The records a batch may hold so that the lane takes it (the debloated size).
    pub fn record_limit(&self) -> usize {
        self.0.record_limit.load(Ordering::Relaxed)
    }

    /// A view of what the consumer takes, for whoever forwards into this channel from
    /// elsewhere (the exchange between workers grants it to the remote producer as
    /// credit) without being its producer.
    pub fn watch(&self) -> Watch {
        Watch(self.0.clone())
    }
}

/// What the consumer of a channel has taken so far, and the bounds it sets: the lane's
/// capacity and its record limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Data items popped.
    pub items: u64,
    /// Records in the batches popped.
    pub records: u64,
    /// Data items the lane holds before it is full.
    pub capacity: usize,
    /// Records the lane holds before it is full (buffer debloating).
    pub record_limit: usize,
}

/// See [`ChannelSender::watch`].
#[derive(Debug)]
pub struct Watch(Arc<Shared>);

impl Watch {
    /// What the consumer has taken so far. The producer's [`Wake`] is woken at the
    /// consumer's next pop, so that the caller sees it without polling.
    pub fn consumed(&self) -> Consumed {
        let mut lanes = self.0.lock();
        lanes.sender_waiting = true;
        Consumed {
            items: lanes.popped,
            records: lanes.popped_records,
            capacity: self.0.capacity,
            record_limit: self.0.record_limit.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ChannelSender {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.wake.wake();
    }
}

impl ChannelReceiver {
    /// The next announcement, else (with `data`) the next data item.
    pub fn poll(&self, data: bool) -> Polled {
        let mut lanes = self.0.lock();
        if let Some(announcement) = lanes.priority.pop_front() {
            return Polled::Announcement(announcement);
        }
        if !data {
            return Polled::Empty;
        }
        match lanes.data.pop_front() {
            Some(message) => {
                if let Message::Batch(batch) = &message {
                    lanes.records -= batch.len();
                    lanes.popped_records += batch.len() as u64;
                }
                lanes.popped += 1;
                if lanes.sender_waiting {
                    lanes.sender_waiting = false;
                    self.0.room.notify_one();
                    self.0.producer.wake();
                }
                Polled::Item(message)
            }
            None if lanes.sender_gone => Polled::Gone,
            None => Polled::Empty,
        }
    }

    /// Copies of the batches queued before data position `until`: the in-flight data
    /// a barrier at that position overtook.
    pub fn in_flight(&self, until: u64) -> Vec<Batch> {
        let lanes = self.0.lock();
        let count = usize::try_from(until.saturating_sub(lanes.popped)).unwrap_or(usize::MAX);
        lanes
            .data
            .iter()
            .take(count)
            .filter_map(|message| match message {
                Message::Batch(batch) => Some(batch.clone()),
                Message::Watermark(_) | Message::EndOfInput => None,
            })
            .collect()
    }

    /// Bounds the records in flight on this channel (buffer debloating).
    pub fn set_record_limit(&self, records: usize) {
        self.0.record_limit.store(records.max(1), Ordering::Relaxed);
        let lanes = self.0.lock();
        if lanes.sender_waiting {
            self.0.room.notify_one();
            self.0.producer.wake();
        }
    }

    /// The records queued now.
    #[cfg(test)]
    fn queued_records(&self) -> usize {
        self.0.lock().records
    }
}

impl Drop for ChannelReceiver {
    fn drop(&mut self) {
        let mut lanes = self.0.lock();
        lanes.receiver_gone = true;
        lanes.data.clear();
        self.0.room.notify_all();
        self.0.producer.wake();
    }
}

/// The coordinator's end of a subtask's control channel: unbounded, and it wakes the
/// subtask when the subtask waits on its data channels. For a subtask on another
/// worker it is the way there ([`ControlSender::remote`]).
#[derive(Clone)]
pub struct ControlSender(Arc<dyn Fn(Control) + Send + Sync>);

impl ControlSender {
    /// A control channel whose subtask `wake` wakes.
    pub fn new(wake: Arc<Wake>) -> (Self, crossbeam_channel::Receiver<Control>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let send = move |control| {
            let _ = tx.send(control);
            wake.wake();
        };
        (Self(Arc::new(send)), rx)
    }

    /// A subtask's control channel that `send` carries to wherever it runs.
    pub fn remote(send: impl Fn(Control) + Send + Sync + 'static) -> Self {
        Self(Arc::new(send))
    }

    /// Sends `control`; a subtask that is gone no longer cares.
    pub fn send(&self, control: Control) {
        (self.0)(control);
    }
}

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlSender")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{CheckpointId, Record};

    fn batch(n: usize) -> Message {
        Message::Batch(
            (0..n)
                .map(|_| Record::new("x"))
                .collect::<Vec<_>>()
                .iter()
                .collect(),
        )
    }

    fn barrier(n: u64) -> Barrier {
        Barrier::checkpoint(CheckpointId(n), 0, None)
    }

    fn pair(capacity: usize) -> (ChannelSender, ChannelReceiver) {
        channel(capacity, Arc::default(), Arc::default())
    }

    #[test]
    fn a_full_lane_refuses_and_room_lets_the_message_in() {
        let (tx, rx) = pair(2);
        assert!(tx.try_send(batch(1)).is_ok());
        assert!(tx.try_send(batch(1)).is_ok());
        assert!(matches!(tx.try_send(batch(1)), Err(SendError::Full(_))));
        assert!(matches!(rx.poll(true), Polled::Item(_)));
        assert!(tx.try_send(batch(1)).is_ok());
    }

    /// Waits until the producer of `rx`'s channel waits for room.
    fn until_the_producer_waits(rx: &ChannelReceiver) {
        while !rx.0.lock().sender_waiting {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_waiting_sender_gets_in_when_the_consumer_pops() {
        let (tx, rx) = pair(1);
        assert!(tx.try_send(batch(1)).is_ok());
        let consumer = std::thread::spawn(move || {
            until_the_producer_waits(&rx);
            let popped = matches!(rx.poll(true), Polled::Item(_));
            (popped, rx)
        });
        assert!(tx.send_timeout(batch(1), Duration::from_secs(5)).is_ok());
        assert!(consumer.join().is_ok_and(|(popped, _)| popped));
    }

    #[test]
    fn a_barrier_overtakes_the_queued_batches_and_knows_its_position() {
        let (tx, rx) = pair(4);
        assert!(tx.try_send(batch(3)).is_ok());
        assert!(tx.try_send(Message::Watermark(5)).is_ok());
        assert!(tx.try_send(batch(2)).is_ok());
        assert!(tx.announce(barrier(1)).is_ok());
        assert!(tx.try_send(batch(7)).is_ok());
        let Polled::Announcement(a) = rx.poll(true) else {
            panic!("the announcement comes first");
        };
        assert_eq!(a.position, 3);
        let overtaken: Vec<usize> = rx.in_flight(a.position).iter().map(Batch::len).collect();
        assert_eq!(
            overtaken,
            [3, 2],
            "the batches before it, without the watermark"
        );
        assert!(matches!(rx.poll(true), Polled::Item(Message::Batch(b)) if b.len() == 3));
        let after_one: Vec<usize> = rx.in_flight(a.position).iter().map(Batch::len).collect();
        assert_eq!(after_one, [2]);
    }

    #[test]
    fn an_announcement_is_read_even_when_data_is_not_asked_for() {
        let (tx, rx) = pair(4);
        assert!(tx.try_send(batch(1)).is_ok());
        assert!(tx.announce(barrier(1)).is_ok());
        assert!(matches!(rx.poll(false), Polled::Announcement(_)));
        assert!(matches!(rx.poll(false), Polled::Empty));
        assert!(matches!(rx.poll(true), Polled::Item(_)));
    }

    #[test]
    fn a_record_limit_bounds_the_records_but_an_empty_lane_takes_any_batch() {
        let (tx, rx) = pair(8);
        rx.set_record_limit(10);
        assert!(
            tx.try_send(batch(25)).is_ok(),
            "an empty lane takes a large batch"
        );
        assert!(matches!(tx.try_send(batch(1)), Err(SendError::Full(_))));
        assert!(matches!(rx.poll(true), Polled::Item(_)));
        assert!(tx.try_send(batch(6)).is_ok());
        assert!(tx.try_send(batch(4)).is_ok());
        assert!(matches!(tx.try_send(batch(1)), Err(SendError::Full(_))));
        assert_eq!(rx.queued_records(), 10);
    }

    #[test]
    fn a_producer_without_room_is_woken_when_the_consumer_pops() {
        let producer = Arc::new(Wake::default());
        let (tx, rx) = channel(1, Arc::default(), producer.clone());
        assert!(tx.try_send(batch(1)).is_ok());
        let waiter = std::thread::spawn(move || {
            producer.register();
            let until = Instant::now() + Duration::from_secs(10);
            while !tx.has_room() {
                producer.wait_until(until);
            }
            Instant::now() < until
        });
        until_the_producer_waits(&rx);
        assert!(matches!(rx.poll(true), Polled::Item(_)));
        assert!(waiter.join().unwrap_or(false));
    }

    #[test]
    fn force_ignores_the_capacity() {
        let (tx, rx) = pair(1);
        assert!(tx.try_send(batch(1)).is_ok());
        assert!(tx.force(batch(1)).is_ok());
        assert_eq!(rx.queued_records(), 2);
    }

    #[test]
    fn the_ends_see_each_other_go() {
        let (tx, rx) = pair(1);
        drop(tx);
        assert!(matches!(rx.poll(true), Polled::Gone));
        let (tx, rx) = pair(1);
        drop(rx);
        assert!(matches!(
            tx.try_send(batch(1)),
            Err(SendError::Disconnected)
        ));
        assert!(matches!(
            tx.announce(barrier(1)),
            Err(SendError::Disconnected)
        ));
    }

    #[test]
    fn a_send_wakes_the_registered_consumer() {
        let wake = Arc::new(Wake::default());
        let (tx, rx) = channel(1, wake.clone(), Arc::default());
        let registered = wake.clone();
        let consumer = std::thread::spawn(move || {
            wake.register();
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                if let Polled::Item(_) = rx.poll(true) {
                    return Instant::now() < until;
                }
                wake.wait_until(until);
            }
        });
        while registered.thread.get().is_none() {
            std::thread::yield_now();
        }
        assert!(tx.try_send(batch(1)).is_ok());
        assert!(consumer.join().unwrap_or(false));
    }
}
