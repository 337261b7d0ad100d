//! The exchange: channels between subtasks on different workers, carried over TCP.
//!
//! A pair of workers shares one connection, a [`Link`], and every channel between them
//! is multiplexed on it in [`frame`]s. At each end a channel is an ordinary channel in
//! memory ([`crate::runtime::channel`]): the producing subtask pushes into one whose
//! consumer is the link, and the link pushes into one whose consumer is the consuming
//! subtask. Neither subtask knows the other is remote.
//!
//! Flow control is by credit, per channel ([`credit`]): the receiving end reports what
//! its consumer has taken, and the sending end sends only what the consumer's lane has
//! room for, by the rule of a lane in memory. So a back-pressured channel holds its
//! producer and nothing else: the connection keeps carrying the other channels, and
//! backpressure still reaches the sources through the producer's own full lane.
//!
//! Barriers keep their priority. When a barrier is announced on a channel, the link
//! sends the data queued before it at once, whatever the credit (at most the sending
//! lane's capacity), and the barrier right after. At the receiving end the barrier is
//! then announced with every item it overtook already queued behind it, as in one
//! process: an unaligned checkpoint persists them there, and an aligned one takes the
//! barrier in its place. The overdraft is repaid from later credit, so memory stays
//! bounded by twice a lane per channel.
//!
//! What owns what: the link owns its socket, two threads (one writes, one reads) and the
//! link-side ends of its channels. It does not know subtasks, the job or checkpoints.
//! Dropping the consuming end of a channel or failing the connection disconnects the
//! channels, so the subtasks on both sides stop as they would on a local disconnect;
//! the executor fails the run with the link's error, and the restart strategy takes
//! over. [`Workers`] places a job's subtasks on workers and joins them: the workers of
//! one process on 127.0.0.1 (`[network] local-workers`), or `weir worker` processes at
//! the addresses their coordinator gives (`crate::cluster`).

pub mod credit;
pub mod frame;
mod link;
mod workers;

pub use frame::{ChannelId, Hello};
pub use link::{Channels, ExchangeError, Link, handshake};
pub use workers::Workers;

#[cfg(test)]
mod tests;
