//! Several workers in one process (`[network] local-workers`), as Flink's mini cluster
//! runs several TaskManagers in one JVM: the subtasks are placed on workers, and a
//! channel between subtasks on different workers goes through the exchange over
//! 127.0.0.1, exactly as it would between machines.

use super::frame::{ChannelId, Hello};
use super::link::{Channels, ExchangeError, Link, handshake};
use crate::runtime::channel::{ChannelReceiver, ChannelSender, Wake, channel};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long the two ends of a connection on loopback have to greet each other.
const GREETING: Duration = Duration::from_secs(10);

/// One end of a pair of workers: the link's wake and the channels it carries.
#[derive(Debug, Default)]
struct End {
    wake: Arc<Wake>,
    channels: Channels,
}

/// The workers of one process and the channels between them, before they are
/// connected.
#[derive(Debug)]
pub struct LocalWorkers {
    workers: usize,
    /// `ends[from][to]`: worker `from`'s end of its connection to worker `to`.
    ends: Vec<Vec<End>>,
    /// Channels numbered so far, per pair of workers (`[low][high]`).
    next: Vec<Vec<ChannelId>>,
}

impl LocalWorkers {
    /// `workers` workers; one means every channel stays in memory.
    pub fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        Self {
            workers,
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

    /// A channel from a producer on worker `from` to a consumer on worker `to`, with the
    /// wakes of [`channel`]: in memory when they are one worker, else through their
    /// connection.
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
        let (tx, link_rx) = channel(capacity, self.ends[from][to].wake.clone(), producer);
        let (link_tx, rx) = channel(capacity, consumer, self.ends[to][from].wake.clone());
        self.ends[from][to].channels.outgoing.push((id, link_rx));
        self.ends[to][from].channels.incoming.push((id, link_tx));
        (tx, rx)
    }

    /// Connects every pair of workers that shares a channel, over 127.0.0.1, and
    /// starts carrying the channels. `session` tells this run's connections from any
    /// other's.
    pub fn connect(mut self, session: u64) -> Result<Vec<Link>, ExchangeError> {
        let workers = self.workers;
        let pairs: Vec<(usize, usize)> = (0..workers)
            .flat_map(|low| (low + 1..workers).map(move |high| (low, high)))
            .filter(|&(low, high)| self.next[low][high] > 0)
            .collect();
        let mut links = Vec::new();
        for (low, high) in pairs {
            let a = std::mem::take(&mut self.ends[low][high]);
            let b = std::mem::take(&mut self.ends[high][low]);
            let (a_stream, b_stream) = loopback()?;
            let name = |worker: usize| (worker + 1).to_string();
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
}

/// Two ends of one connection on 127.0.0.1.
fn loopback() -> Result<(TcpStream, TcpStream), ExchangeError> {
    let io = ExchangeError::Loopback;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    let connected = TcpStream::connect(listener.local_addr().map_err(io)?).map_err(io)?;
    let (accepted, _) = listener.accept().map_err(io)?;
    Ok((connected, accepted))
}
