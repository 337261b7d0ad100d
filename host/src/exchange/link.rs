//! One connection between two workers and the two threads that carry its channels.

use super::credit::Credit;
use super::frame::{ChannelId, Frame, Hello, ReadError, VERSION};
use crate::runtime::CANCEL_POLL;
use crate::runtime::Message;
use crate::runtime::channel::{
    Announcement, ChannelReceiver, ChannelSender, Consumed, Polled, Wake, Watch,
};
use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes the writer gathers before it writes them, unless it runs out of work first:
/// large enough that a write is one system call for many small batches.
const WRITE_CHUNK: usize = 256 << 10;

/// The channels a link carries, each under a number both ends agree on.
#[derive(Debug, Default)]
pub struct Channels {
    /// Channels whose producer is on this worker. The link is their consumer: they must
    /// have been made with the link's [`Wake`] as the consumer's.
    pub outgoing: Vec<(ChannelId, ChannelReceiver)>,
    /// Channels whose consumer is on this worker. The link is their producer: they must
    /// have been made with the link's [`Wake`] as the producer's.
    pub incoming: Vec<(ChannelId, ChannelSender)>,
}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The connection failed.
    #[error("the connection to worker {peer} failed: {source}")]
    Io {
        /// The worker at the other end.
        peer: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Two workers in one process could not be connected.
    #[error("cannot connect two workers of this process on 127.0.0.1: {0}")]
    Loopback(#[source] std::io::Error),
    /// This worker's data listener failed.
    #[error("this worker's data port failed: {0}")]
    Listen(#[source] std::io::Error),
    /// Peers that should have connected to this worker did not in time.
    #[error("worker(s) {0} did not connect to this worker in time")]
    PeersMissing(String),
    /// The peer sent something that is not a frame of this version.
    #[error("worker {peer} sent what this weir cannot read: {what}")]
    Protocol {
        /// The worker at the other end.
        peer: String,
        /// What was wrong.
        what: String,
    },
    /// The peer speaks another version of the frames.
    #[error(
        "worker {peer} speaks version {theirs} of the exchange between workers and this weir speaks version {VERSION}: run the same weir on every worker"
    )]
    Version {
        /// The worker at the other end.
        peer: String,
        /// Its version.
        theirs: u16,
    },
    /// The peer belongs to another attempt of the job.
    #[error(
        "worker {peer} connected for attempt {theirs} of the job, but this worker runs attempt {ours}"
    )]
    Session {
        /// The worker at the other end.
        peer: String,
        /// Its attempt.
        theirs: u64,
        /// Ours.
        ours: u64,
    },
    /// The consuming subtask of a channel went away while the peer was still sending.
    #[error(
        "the consumer of channel {channel} from worker {peer} went away before the channel was closed"
    )]
    ConsumerGone {
        /// The worker at the other end.
        peer: String,
        /// The channel.
        channel: ChannelId,
    },
    /// The peer closed the connection before closing every channel.
    #[error(
        "worker {peer} closed the connection while {open} of the channels between the two were still open"
    )]
    ClosedEarly {
        /// The worker at the other end.
        peer: String,
        /// How many channels it had not closed.
        open: usize,
    },
}

/// Greets the peer on `stream` and reads its greeting, within `timeout`: both ends must
/// speak this version of the frames and belong to the same attempt of the job.
pub fn handshake(
    stream: &TcpStream,
    ours: &Hello,
    timeout: Duration,
) -> Result<Hello, ExchangeError> {
    let address = peer_address(stream);
    let io = |source| ExchangeError::Io {
        peer: address.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut greeting = Vec::new();
    Frame::Hello(ours.clone()).encode_into(&mut greeting);
    (&*stream).write_all(&greeting).map_err(io)?;
    let theirs = match Frame::read(&mut &*stream, &mut Vec::new()) {
        Ok(Some(Frame::Hello(hello))) => hello,
        Ok(Some(_)) | Ok(None) => {
            return Err(ExchangeError::Protocol {
                peer: address,
                what: "it did not greet first".to_owned(),
            });
        }
        Err(ReadError::Io(e)) => return Err(io(e)),
        Err(ReadError::Malformed(what)) => {
            return Err(ExchangeError::Protocol {
                peer: address,
                what,
            });
        }
    };
    let peer = format!("{} at {address}", theirs.worker);
    if theirs.version != VERSION {
        return Err(ExchangeError::Version {
            peer,
            theirs: theirs.version,
        });
    }
    if theirs.session != ours.session {
        return Err(ExchangeError::Session {
            peer,
            theirs: theirs.session,
            ours: ours.session,
        });
    }
    stream.set_read_timeout(None).map_err(io)?;
    Ok(theirs)
}

/// The address at the other end of `stream`, for errors.
fn peer_address(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
}

/// What the two threads of a link share.
#[derive(Debug)]
struct Shared {
    peer: String,
    /// A handle on the socket, to shut it down from either thread or the owner.
    stream: TcpStream,
    /// The writer's: woken when there is something to write.
    wake: Arc<Wake>,
    /// Per outgoing channel, the consumer's newest report, as the reader received it.
    grants: Mutex<Vec<Option<Consumed>>>,
    /// Per incoming channel, whether the peer closed it.
    closed: Vec<AtomicBool>,
    /// Outgoing channels this end has not closed yet.
    open_outgoing: AtomicUsize,
    stop: AtomicBool,
    failure: Mutex<Option<ExchangeError>>,
    /// Bytes written to the socket so far.
    written: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Ends the link: both threads stop, the socket is shut.
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.wake.wake();
    }

    /// Ends the link for `error`, unless it was stopped on purpose.
    fn fail(&self, error: ExchangeError) {
        if !self.stop.load(Ordering::Acquire) {
            let mut failure = lock(&self.failure);
            if failure.is_none() {
                tracing::warn!("{error}");
                *failure = Some(error);
            }
        }
        self.stop();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn io(&self, source: std::io::Error) -> ExchangeError {
        ExchangeError::Io {
            peer: self.peer.clone(),
            source,
        }
    }
}

/// A connection to another worker, carrying every channel between the two.
#[derive(Debug)]
pub struct Link {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Link {
    /// Starts carrying `channels` on `stream`, greeted by [`handshake`] with `peer`.
    /// `wake` is the link's: the one the channels were made with (see [`Channels`]).
    pub fn start(
        stream: TcpStream,
        peer: &Hello,
        channels: Channels,
        wake: Arc<Wake>,
    ) -> Result<Link, ExchangeError> {
        let peer = format!("{} at {}", peer.worker, peer_address(&stream));
        let io = |source| ExchangeError::Io {
            peer: peer.clone(),
            source,
        };
        stream.set_nodelay(true).map_err(io)?;
        let read = stream.try_clone().map_err(io)?;
        let write = stream.try_clone().map_err(io)?;
        let shared = Arc::new(Shared {
            peer: peer.clone(),
            stream,
            wake,
            grants: Mutex::new(vec![None; channels.outgoing.len()]),
            closed: channels
                .incoming
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            open_outgoing: AtomicUsize::new(channels.outgoing.len()),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            written: AtomicU64::new(0),
        });
        let outgoing_index: HashMap<ChannelId, usize> = channels
            .outgoing
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        let incoming_index: HashMap<ChannelId, usize> = channels
            .incoming
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        let watches: Vec<(ChannelId, Watch)> = channels
            .incoming
            .iter()
            .map(|(id, tx)| (*id, tx.watch()))
            .collect();
        let outgoing = channels
            .outgoing
            .into_iter()
            .map(|(id, rx)| Outgoing {
                id,
                rx,
                announced: VecDeque::new(),
                held: None,
                sent: 0,
                credit: Credit::default(),
                record_limit: None,
                closed: false,
            })
            .collect();
        let incoming = channels
            .incoming
            .into_iter()
            .map(|(_, tx)| Some(tx))
            .collect();
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("weir-link-{name}"))
                .spawn(body)
                .map_err(io)
        };
        let writer = {
            let shared = shared.clone();
            spawn(
                "writer",
                Box::new(move || write_loop(&shared, write, outgoing, &watches)),
            )?
        };
        let reader = {
            let shared = shared.clone();
            spawn(
                "reader",
                Box::new(move || {
                    let reader = Reader {
                        shared: &shared,
                        incoming,
                        incoming_index,
                        outgoing_index,
                    };
                    reader.run(read);
                }),
            )
        };
        let reader = match reader {
            Ok(reader) => reader,
            Err(error) => {
                shared.stop();
                let _ = writer.join();
                return Err(error);
            }
        };
        Ok(Link {
            shared,
            threads: vec![writer, reader],
        })
    }

    /// Why the link failed, once it has: the first caller takes the error.
    pub fn take_failure(&self) -> Option<ExchangeError> {
        lock(&self.shared.failure).take()
    }

    /// The bytes this end has written to the connection so far.
    pub fn bytes_written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Whether both threads have ended: the link ended or failed.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Waits until the link ends: `Ok` once every channel was closed in order at both
    /// ends, else why it failed.
    pub fn join(mut self) -> Result<(), ExchangeError> {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.take_failure().map_or(Ok(()), Err)
    }
}

impl Drop for Link {
    /// A link dropped before it ended is cut: its channels disconnect at both ends.
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The writer's side of one outgoing channel.
#[derive(Debug)]
struct Outgoing {
    id: ChannelId,
    rx: ChannelReceiver,
    /// Barriers announced and not yet sent, oldest first.
    announced: VecDeque<Announcement>,
    /// An item taken from the lane for which the consumer had no room yet.
    held: Option<Message>,
    /// Data items sent so far.
    sent: u64,
    credit: Credit,
    /// The consumer's record limit as last applied to the lane.
    record_limit: Option<usize>,
    closed: bool,
}

impl Outgoing {
    /// Writes what may go out now into `out`: barriers whose data is out, the data
    /// before an announced barrier whatever the credit, other data as credit allows.
    /// Returns whether it wrote anything.
    fn pump(&mut self, out: &mut Vec<u8>, open: &AtomicUsize) -> bool {
        let limit = self.credit.record_limit();
        if limit.is_some() && limit != self.record_limit {
            self.record_limit = limit;
            self.rx.set_record_limit(limit.unwrap_or(usize::MAX));
        }
        let mut wrote = false;
        while !self.closed && out.len() < WRITE_CHUNK {
            while let Polled::Announcement(a) = self.rx.poll(false) {
                self.announced.push_back(a);
            }
            if let Some(a) = self.announced.front().filter(|a| a.position <= self.sent) {
                Frame::Barrier {
                    channel: self.id,
                    barrier: a.barrier,
                }
                .encode_into(out);
                self.announced.pop_front();
                wrote = true;
                continue;
            }
            let message = match self.held.take() {
                Some(message) => message,
                None => match self.rx.poll(true) {
                    Polled::Item(message) => message,
                    Polled::Announcement(a) => {
                        self.announced.push_back(a);
                        continue;
                    }
                    Polled::Empty => break,
                    Polled::Gone => {
                        Frame::Closed { channel: self.id }.encode_into(out);
                        self.closed = true;
                        open.fetch_sub(1, Ordering::Release);
                        wrote = true;
                        break;
                    }
                },
            };
            // A barrier waits for the data before it: that goes out on overdraft.
            if self.announced.is_empty() && !self.credit.allows(&message) {
                self.held = Some(message);
                break;
            }
            self.credit.sent(&message);
            self.sent += 1;
            Frame::Data {
                channel: self.id,
                message,
            }
            .encode_into(out);
            wrote = true;
        }
        wrote
    }
}

/// The writer thread: credit for the incoming channels, data and barriers of the
/// outgoing ones, until every channel is closed at both ends or the link stops.
fn write_loop(
    shared: &Shared,
    mut stream: TcpStream,
    mut outgoing: Vec<Outgoing>,
    watches: &[(ChannelId, Watch)],
) {
    shared.wake.register();
    let mut out = Vec::with_capacity(2 * WRITE_CHUNK);
    let mut reported: Vec<Option<Consumed>> = vec![None; watches.len()];
    while !shared.stopped() {
        let mut busy = false;
        for (i, (id, watch)) in watches.iter().enumerate() {
            if shared.closed[i].load(Ordering::Acquire) {
                continue;
            }
            let consumed = watch.consumed();
            if reported[i] != Some(consumed) {
                reported[i] = Some(consumed);
                Frame::Credit {
                    channel: *id,
                    consumed,
                }
                .encode_into(&mut out);
                busy = true;
            }
        }
        for (o, grant) in outgoing.iter_mut().zip(lock(&shared.grants).iter()) {
            if let Some(grant) = grant {
                o.credit.grant(*grant);
            }
        }
        for o in &mut outgoing {
            busy |= o.pump(&mut out, &shared.open_outgoing);
        }
        if !out.is_empty() && (!busy || out.len() >= WRITE_CHUNK) {
            if let Err(e) = stream.write_all(&out) {
                shared.fail(shared.io(e));
                return;
            }
            shared
                .written
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            out.clear();
        }
        if !busy {
            let incoming_closed = shared.closed.iter().all(|c| c.load(Ordering::Acquire));
            if incoming_closed && outgoing.iter().all(|o| o.closed) {
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
            shared.wake.wait_until(Instant::now() + CANCEL_POLL);
        }
    }
}

/// The reader thread's state.
struct Reader<'a> {
    shared: &'a Shared,
    /// The link's ends of the incoming channels; `None` once closed or the consumer
    /// went away.
    incoming: Vec<Option<ChannelSender>>,
    incoming_index: HashMap<ChannelId, usize>,
    outgoing_index: HashMap<ChannelId, usize>,
}

impl Reader<'_> {
    fn run(mut self, stream: TcpStream) {
        let mut stream = BufReader::with_capacity(WRITE_CHUNK, stream);
        let mut buffer = Vec::new();
        let outcome = loop {
            match Frame::read(&mut stream, &mut buffer) {
                Ok(Some(frame)) => {
                    if let Err(error) = self.deliver(frame) {
                        break Err(error);
                    }
                }
                // The peer ends its side once every channel between the two is closed:
                // it has then read this end's last frame too.
                Ok(None) => {
                    let open = self
                        .shared
                        .closed
                        .iter()
                        .filter(|c| !c.load(Ordering::Acquire))
                        .count()
                        + self.shared.open_outgoing.load(Ordering::Acquire);
                    break if open == 0 {
                        Ok(())
                    } else {
                        Err(ExchangeError::ClosedEarly {
                            peer: self.shared.peer.clone(),
                            open,
                        })
                    };
                }
                Err(ReadError::Io(e)) => break Err(self.shared.io(e)),
                Err(ReadError::Malformed(what)) => {
                    break Err(ExchangeError::Protocol {
                        peer: self.shared.peer.clone(),
                        what,
                    });
                }
            }
        };
        // The consumers of channels still open see them gone, and fail unless they ended.
        self.incoming.clear();
        match outcome {
            Ok(()) => self.shared.wake.wake(),
            Err(error) => self.shared.fail(error),
        }
    }

    /// Hands one frame to its channel.
    fn deliver(&mut self, frame: Frame) -> Result<(), ExchangeError> {
        let shared: &Shared = self.shared;
        let peer = &shared.peer;
        let lookup = |index: &HashMap<ChannelId, usize>, channel: ChannelId| {
            index
                .get(&channel)
                .copied()
                .ok_or_else(|| ExchangeError::Protocol {
                    peer: peer.clone(),
                    what: format!("a frame for channel {channel}, which this link does not carry"),
                })
        };
        let gone = |channel| ExchangeError::ConsumerGone {
            peer: peer.clone(),
            channel,
        };
        match frame {
            // Credit guarantees the room. A consumer that went away before its channel
            // closed failed: the link fails too, so that the producer fails as it would
            // pushing into a local channel whose consumer is gone.
            Frame::Data { channel, message } => {
                let i = lookup(&self.incoming_index, channel)?;
                if let Some(tx) = &self.incoming[i] {
                    tx.force(message).map_err(|_| gone(channel))?;
                }
            }
            Frame::Barrier { channel, barrier } => {
                let i = lookup(&self.incoming_index, channel)?;
                if let Some(tx) = &self.incoming[i] {
                    tx.announce(barrier).map_err(|_| gone(channel))?;
                }
            }
            Frame::Credit { channel, consumed } => {
                let i = lookup(&self.outgoing_index, channel)?;
                lock(&self.shared.grants)[i] = Some(consumed);
                self.shared.wake.wake();
            }
            Frame::Closed { channel } => {
                let i = lookup(&self.incoming_index, channel)?;
                self.incoming[i] = None;
                self.shared.closed[i].store(true, Ordering::Release);
                self.shared.wake.wake();
            }
            Frame::Hello(_) => {
                return Err(ExchangeError::Protocol {
                    peer: peer.clone(),
                    what: "a second greeting".to_owned(),
                });
            }
        }
        Ok(())
    }
}
