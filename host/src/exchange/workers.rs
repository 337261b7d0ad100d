//! The workers a job's subtasks are placed on, and the connections between them.
//!
//! Subtask `i` of every node runs on worker `i mod n` (a chain's members share it). A
//! channel whose two ends are on one worker stays in memory; one between two workers is
//! numbered within their pair, in the order the graph is wired, so that every worker
//! wiring the same graph agrees on the numbers without talking, and goes through their
//! [`Link`]. The workers are either all in this process (`[network] local-workers`, as
//! Flink's mini cluster runs several TaskManagers in one JVM), joined on 127.0.0.1, or
//! one of them is this process (`weir worker`) and the others are reached at the
//! addresses the coordinator gave.

use super::frame::{ChannelId, Hello};
use super::link::{Channels, ExchangeError, Link, handshake};
use crate::runtime::channel::{ChannelReceiver, ChannelSender, Wake, channel};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the two ends of a connection have to greet each other, and a worker to be
/// reached by all its peers.
const GREETING: Duration = Duration::from_secs(10);

/// One end of a pair of workers: the link's wake and the channels it carries.
#[derive(Debug, Default)]
struct End {
    wake: Arc<Wake>,
    channels: Channels,
}

/// The workers of a job and the channels between them, before they are connected.
#[derive(Debug)]
pub struct Workers {
    workers: usize,
    /// The worker this process is, when the others are other processes.
    me: Option<usize>,
    /// `ends[from][to]`: worker `from`'s end of its connection to worker `to`.
    ends: Vec<Vec<End>>,
    /// Channels numbered so far, per pair of workers (`[low][high]`).
    next: Vec<Vec<ChannelId>>,
}

impl Workers {
    /// `workers` workers, all in this process; one means every channel stays in memory.
    pub fn in_process(workers: usize) -> Self {
        Self::new(workers, None)
    }

    /// Worker `me` of `workers`, the others in other processes.
    pub fn one_of(workers: usize, me: usize) -> Self {
        Self::new(workers, Some(me))
    }

    fn new(workers: usize, me: Option<usize>) -> Self {
        let workers = workers.max(1);
        Self {
            workers,
            me,
            ends: (0..workers)
                .map(|_| (0..workers).map(|_| End::default()).collect())
                .collect(),
            next: vec![vec![0; workers]; workers],
        }
    }

    /// The worker subtask `subtask` of every node runs on: a chain's members share it,
    /// and a node's subtasks spread over the workers in turn.
    pub fn worker_of(&self, subtask: usize) -> usize {
        subtask % self.workers
    }

    /// Whether subtask `subtask` of every node runs in this process.
    pub fn is_here(&self, subtask: usize) -> bool {
        self.me.is_none_or(|me| self.worker_of(subtask) == me)
    }

    /// A channel from a producer on worker `from` to a consumer on worker `to`, with the
    /// wakes of [`channel`]: in memory when they are one worker, else through their
    /// connection. A channel between two other processes is numbered all the same, and
    /// made in memory only to be dropped with the subtasks that do not run here.
    pub fn channel(
        &mut self,
        from: usize,
        to: usize,
        capacity: usize,
        consumer: Arc<Wake>,
        producer: Arc<Wake>,
    ) -> (ChannelSender, ChannelReceiver) {
        if from == to {
            return channel(capacity, consumer, producer);
        }
        let (low, high) = (from.min(to), from.max(to));
        let id = self.next[low][high];
        self.next[low][high] += 1;
        let here = |worker| self.me.is_none_or(|me| me == worker);
        if !here(from) && !here(to) {
            return channel(capacity, consumer, producer);
        }
        let (tx, link_rx) = channel(capacity, self.ends[from][to].wake.clone(), producer);
        let (link_tx, rx) = channel(capacity, consumer, self.ends[to][from].wake.clone());
        self.ends[from][to].channels.outgoing.push((id, link_rx));
        self.ends[to][from].channels.incoming.push((id, link_tx));
        (tx, rx)
    }

    /// The pairs of workers that share a channel, `(low, high)`.
    fn pairs(&self) -> Vec<(usize, usize)> {
        let workers = self.workers;
        (0..workers)
            .flat_map(|low| (low + 1..workers).map(move |high| (low, high)))
            .filter(|&(low, high)| self.next[low][high] > 0)
            .collect()
    }

    /// Connects every pair of workers of this process that shares a channel, over
    /// 127.0.0.1, and starts carrying the channels. `session` tells this run's
    /// connections from any other's.
    pub fn connect_in_process(mut self, session: u64) -> Result<Vec<Link>, ExchangeError> {
        let mut links = Vec::new();
        for (low, high) in self.pairs() {
            let a = std::mem::take(&mut self.ends[low][high]);
            let b = std::mem::take(&mut self.ends[high][low]);
            let (a_stream, b_stream) = loopback()?;
            // Each end greets, then hears the other: both at once.
            let (a_peer, b_peer) = std::thread::scope(|s| {
                let b_heard =
                    s.spawn(|| handshake(&b_stream, &Hello::new(session, name(high)), GREETING));
                let a_heard = handshake(&a_stream, &Hello::new(session, name(low)), GREETING);
                let b_heard = b_heard
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (a_heard, b_heard)
            });
            links.push(Link::start(a_stream, &a_peer?, a.channels, a.wake)?);
            links.push(Link::start(b_stream, &b_peer?, b.channels, b.wake)?);
        }
        Ok(links)
    }

    /// Connects this worker to every peer it shares a channel with, and starts carrying
    /// the channels: of each pair, the higher worker connects to the lower's `listener`,
    /// whose addresses `peers` lists by worker. A connection of another session (an
    /// earlier attempt's, late) is refused and the wait goes on.
    pub fn connect_to_peers(
        mut self,
        session: u64,
        listener: &TcpListener,
        peers: &[SocketAddr],
    ) -> Result<Vec<Link>, ExchangeError> {
        let Some(me) = self.me else {
            return self.connect_in_process(session);
        };
        let hello = Hello::new(session, name(me));
        let pairs: Vec<(usize, usize)> = self
            .pairs()
            .into_iter()
            .filter(|&(low, high)| low == me || high == me)
            .collect();
        let mut links = Vec::new();
        // Those above this worker connect to it.
        let mut awaited: Vec<usize> = pairs
            .iter()
            .filter(|&&(low, _)| low == me)
            .map(|&(_, high)| high)
            .collect();
        let deadline = Instant::now() + GREETING;
        listener
            .set_nonblocking(true)
            .map_err(ExchangeError::Listen)?;
        while !awaited.is_empty() {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<String> = awaited.iter().map(|&w| name(w)).collect();
                        return Err(ExchangeError::PeersMissing(missing.join(", ")));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(ExchangeError::Listen(e)),
            };
            stream
                .set_nonblocking(false)
                .map_err(ExchangeError::Listen)?;
            let peer = match handshake(&stream, &hello, GREETING) {
                Ok(peer) => peer,
                Err(error @ ExchangeError::Session { .. }) => {
                    tracing::debug!("{error}: refused");
                    continue;
                }
                Err(error) => return Err(error),
            };
            let Some(at) = awaited.iter().position(|&w| name(w) == peer.worker) else {
                return Err(ExchangeError::Protocol {
                    peer: peer.worker,
                    what: format!("it is not a worker that connects to worker {}", name(me)),
                });
            };
            let worker = awaited.swap_remove(at);
            let end = std::mem::take(&mut self.ends[me][worker]);
            links.push(Link::start(stream, &peer, end.channels, end.wake)?);
        }
        // This worker connects to those below it.
        for &(low, _) in pairs.iter().filter(|&&(_, high)| high == me) {
            let address = peers
                .get(low)
                .copied()
                .ok_or_else(|| ExchangeError::Protocol {
                    peer: name(low),
                    what: "the coordinator gave no address for it".to_owned(),
                })?;
            let stream = connect(address, deadline).map_err(|source| ExchangeError::Io {
                peer: format!("{} at {address}", name(low)),
                source,
            })?;
            let peer = handshake(&stream, &hello, GREETING)?;
            let end = std::mem::take(&mut self.ends[me][low]);
            links.push(Link::start(stream, &peer, end.channels, end.wake)?);
        }
        Ok(links)
    }
}

/// A worker's name in greetings, logs and errors: its number from 1.
fn name(worker: usize) -> String {
    (worker + 1).to_string()
}

/// Connects to `address`, trying again until `deadline`: the peer may not listen yet.
fn connect(address: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        match TcpStream::connect_timeout(&address, GREETING) {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Two ends of one connection on 127.0.0.1.
fn loopback() -> Result<(TcpStream, TcpStream), ExchangeError> {
    let io = ExchangeError::Loopback;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    let connected = TcpStream::connect(listener.local_addr().map_err(io)?).map_err(io)?;
    let (accepted, _) = listener.accept().map_err(io)?;
    Ok((connected, accepted))
}
