//! The frames of the exchange: what one worker writes to another on their connection.
//!
//! A frame is its length (u32, little-endian, the bytes after it), a kind byte and the
//! kind's body. Every frame but the greeting names the channel it belongs to, so that
//! one connection carries every channel between a pair of workers:
//!
//! | kind | body |
//! |---|---|
//! | `Hello` | `WEIR`, the exchange version (u16), the session (u64), the worker's name (u16 length, UTF-8) |
//! | `Batch` | channel (u32), the batch in [`Batch::encode_into`]'s encoding |
//! | `Watermark` | channel, the watermark (i64) |
//! | `EndOfInput` | channel |
//! | `Barrier` | channel, checkpoint (u64), trigger time (i64 ms), unaligned after (u64 ns, `u64::MAX` for never), snapshot type (u8), stop (u8) |
//! | `Credit` | channel, items and records consumed (u64 each, cumulative), capacity (u64), record limit (u64) |
//! | `Closed` | channel: its producer is gone and everything it sent is on the wire |
//!
//! Decoding is pure and checks everything: a frame from a peer that is not Weir, or of
//! another version, is an error that says what was wrong, never a panic.

use crate::checkpoint::snapshot::SnapshotType;
use crate::runtime::batch::Batch;
use crate::runtime::channel::Consumed;
use crate::runtime::{Barrier, CheckpointId, Message};
use std::io::{self, Read};
use std::time::Duration;

/// The version of the frames; both ends of a connection must speak the same.
pub const VERSION: u16 = 1;

/// What every greeting starts with.
const MAGIC: &[u8; 4] = b"WEIR";

/// The largest frame a reader accepts. A batch is bounded far below it by the record
/// limits of the channels and the memory limits of guests; anything larger is not a
/// Weir peer.
pub const MAX_FRAME: usize = 256 << 20;

/// A channel's number on a connection, the same at both ends.
pub type ChannelId = u32;

/// One frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// The greeting each end sends first.
    Hello(Hello),
    /// A data item: a batch, a watermark or the end of input.
    Data {
        /// Its channel.
        channel: ChannelId,
        /// The item.
        message: Message,
    },
    /// A barrier, after the data items it follows.
    Barrier {
        /// Its channel.
        channel: ChannelId,
        /// The barrier.
        barrier: Barrier,
    },
    /// What the consumer of a channel has taken: the producer's credit.
    Credit {
        /// Its channel.
        channel: ChannelId,
        /// The consumer's counts and bounds.
        consumed: Consumed,
    },
    /// The producer of a channel is gone and sent all it had.
    Closed {
        /// Its channel.
        channel: ChannelId,
    },
}

/// Who is at the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The frames' version the peer speaks.
    pub version: u16,
    /// The attempt of the job both ends belong to: a connection left over from an
    /// earlier attempt is refused.
    pub session: u64,
    /// The worker's name, for errors and logs.
    pub worker: String,
}

impl Hello {
    /// This weir's greeting.
    pub fn new(session: u64, worker: impl Into<String>) -> Self {
        Self {
            version: VERSION,
            session,
            worker: worker.into(),
        }
    }
}

const HELLO: u8 = 0;
const BATCH: u8 = 1;
const WATERMARK: u8 = 2;
const END_OF_INPUT: u8 = 3;
const BARRIER: u8 = 4;
const CREDIT: u8 = 5;
const CLOSED: u8 = 6;

impl Frame {
    /// Appends the frame, length first, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello(hello) => {
                out.push(HELLO);
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&hello.version.to_le_bytes());
                out.extend_from_slice(&hello.session.to_le_bytes());
                let name = &hello.worker.as_bytes()[..hello.worker.len().min(u16::MAX as usize)];
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name);
            }
            Frame::Data { channel, message } => {
                let kind = match message {
                    Message::Batch(_) => BATCH,
                    Message::Watermark(_) => WATERMARK,
                    Message::EndOfInput => END_OF_INPUT,
                };
                out.push(kind);
                out.extend_from_slice(&channel.to_le_bytes());
                match message {
                    Message::Batch(batch) => batch.encode_into(out),
                    Message::Watermark(w) => out.extend_from_slice(&w.to_le_bytes()),
                    Message::EndOfInput => {}
                }
            }
            Frame::Barrier { channel, barrier } => {
                out.push(BARRIER);
                out.extend_from_slice(&channel.to_le_bytes());
                out.extend_from_slice(&barrier.checkpoint.0.to_le_bytes());
                out.extend_from_slice(&barrier.triggered_at_ms.to_le_bytes());
                let after = barrier.unaligned_after.map_or(u64::MAX, |d| {
                    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
                });
                out.extend_from_slice(&after.to_le_bytes());
                out.push(match barrier.kind {
                    SnapshotType::Checkpoint => 0,
                    SnapshotType::CanonicalSavepoint => 1,
                    SnapshotType::NativeSavepoint => 2,
                });
                out.push(u8::from(barrier.stop));
            }
            Frame::Credit { channel, consumed } => {
                out.push(CREDIT);
                out.extend_from_slice(&channel.to_le_bytes());
                for n in [
                    consumed.items,
                    consumed.records,
                    consumed.capacity as u64,
                    consumed.record_limit as u64,
                ] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            Frame::Closed { channel } => {
                out.push(CLOSED);
                out.extend_from_slice(&channel.to_le_bytes());
            }
        }
        let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes a frame's body (what follows its length).
    pub fn decode(body: &[u8]) -> Result<Frame, String> {
        let mut r = body;
        let kind = take::<1>(&mut r)?[0];
        let frame = match kind {
            HELLO => {
                if take::<4>(&mut r)? != *MAGIC {
                    return Err(
                        "the greeting does not start with WEIR: the peer is not a Weir worker"
                            .to_owned(),
                    );
                }
                let version = u16::from_le_bytes(take(&mut r)?);
                let session = u64::from_le_bytes(take(&mut r)?);
                let len = u16::from_le_bytes(take(&mut r)?) as usize;
                if r.len() < len {
                    return Err("the greeting's worker name is cut short".to_owned());
                }
                let (name, rest) = r.split_at(len);
                r = rest;
                let worker = String::from_utf8(name.to_vec())
                    .map_err(|_| "the greeting's worker name is not UTF-8".to_owned())?;
                Frame::Hello(Hello {
                    version,
                    session,
                    worker,
                })
            }
            BATCH | WATERMARK | END_OF_INPUT => {
                let channel = u32::from_le_bytes(take(&mut r)?);
                let message = match kind {
                    BATCH => Message::Batch(
                        Batch::decode_from(&mut r)
                            .map_err(|e| format!("channel {channel}: {e}"))?,
                    ),
                    WATERMARK => Message::Watermark(i64::from_le_bytes(take(&mut r)?)),
                    _ => Message::EndOfInput,
                };
                Frame::Data { channel, message }
            }
            BARRIER => {
                let channel = u32::from_le_bytes(take(&mut r)?);
                let checkpoint = CheckpointId(u64::from_le_bytes(take(&mut r)?));
                let triggered_at_ms = i64::from_le_bytes(take(&mut r)?);
                let after = u64::from_le_bytes(take(&mut r)?);
                let kind = match take::<1>(&mut r)?[0] {
                    0 => SnapshotType::Checkpoint,
                    1 => SnapshotType::CanonicalSavepoint,
                    2 => SnapshotType::NativeSavepoint,
                    other => {
                        return Err(format!(
                            "channel {channel}: a barrier of unknown snapshot type {other}"
                        ));
                    }
                };
                let stop = match take::<1>(&mut r)?[0] {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(format!(
                            "channel {channel}: a barrier whose stop flag is {other}"
                        ));
                    }
                };
                Frame::Barrier {
                    channel,
                    barrier: Barrier {
                        checkpoint,
                        triggered_at_ms,
                        unaligned_after: (after != u64::MAX).then(|| Duration::from_nanos(after)),
                        kind,
                        stop,
                    },
                }
            }
            CREDIT => {
                let channel = u32::from_le_bytes(take(&mut r)?);
                let mut n = || -> Result<u64, String> { Ok(u64::from_le_bytes(take(&mut r)?)) };
                let (items, records, capacity, record_limit) = (n()?, n()?, n()?, n()?);
                let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
                Frame::Credit {
                    channel,
                    consumed: Consumed {
                        items,
                        records,
                        capacity: size(capacity),
                        record_limit: size(record_limit),
                    },
                }
            }
            CLOSED => Frame::Closed {
                channel: u32::from_le_bytes(take(&mut r)?),
            },
            other => return Err(format!("a frame of unknown kind {other}")),
        };
        if !r.is_empty() {
            return Err(format!(
                "a frame has {} bytes after its end: the peer speaks another version",
                r.len()
            ));
        }
        Ok(frame)
    }

    /// Reads the next frame from `reader` into `buffer` (kept between calls, so that
    /// reading allocates nothing per frame but the decoded batch). `None` is the end of
    /// the stream between two frames.
    pub fn read(reader: &mut impl Read, buffer: &mut Vec<u8>) -> Result<Option<Frame>, ReadError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match reader.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(ReadError::Malformed(format!(
                "a frame of {len} bytes, more than the {MAX_FRAME} a Weir peer sends"
            )));
        }
        buffer.clear();
        buffer.resize(len, 0);
        reader.read_exact(buffer).map_err(ReadError::Io)?;
        Frame::decode(buffer)
            .map(Some)
            .map_err(ReadError::Malformed)
    }
}

/// Why [`Frame::read`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed or ended within a frame.
    #[error("{0}")]
    Io(io::Error),
    /// The bytes are not a frame.
    #[error("{0}")]
    Malformed(String),
}

fn take<const N: usize>(r: &mut &[u8]) -> Result<[u8; N], String> {
    if r.len() < N {
        return Err("a frame ends before its last field".to_owned());
    }
    let (head, rest) = r.split_at(N);
    *r = rest;
    Ok(head.try_into().unwrap_or([0; N]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Record;

    fn samples() -> Vec<Frame> {
        let mut keyed = Record::new("value").with_key("key");
        keyed.timestamp = Some(-3);
        vec![
            Frame::Hello(Hello::new(7, "worker-1")),
            Frame::Data {
                channel: 3,
                message: Message::Batch([Record::new("a"), keyed].iter().collect()),
            },
            Frame::Data {
                channel: 0,
                message: Message::Watermark(-12),
            },
            Frame::Data {
                channel: u32::MAX,
                message: Message::EndOfInput,
            },
            Frame::Barrier {
                channel: 1,
                barrier: Barrier {
                    checkpoint: CheckpointId(9),
                    triggered_at_ms: 1_700_000_000_000,
                    unaligned_after: Some(Duration::from_millis(250)),
                    kind: SnapshotType::NativeSavepoint,
                    stop: true,
                },
            },
            Frame::Barrier {
                channel: 1,
                barrier: Barrier::checkpoint(CheckpointId(1), 5, None),
            },
            Frame::Credit {
                channel: 2,
                consumed: Consumed {
                    items: 10,
                    records: 10_240,
                    capacity: 4,
                    record_limit: usize::MAX,
                },
            },
            Frame::Closed { channel: 5 },
        ]
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for frame in frames {
            frame.encode_into(&mut bytes);
        }
        bytes
    }

    #[test]
    fn every_kind_of_frame_reads_back_as_written() -> Result<(), ReadError> {
        let frames = samples();
        let bytes = encoded(&frames);
        let mut reader = &bytes[..];
        let mut buffer = Vec::new();
        for frame in &frames {
            assert_eq!(Frame::read(&mut reader, &mut buffer)?.as_ref(), Some(frame));
        }
        assert!(Frame::read(&mut reader, &mut buffer)?.is_none());
        Ok(())
    }

    #[test]
    fn a_stream_cut_within_a_frame_is_an_error_and_between_frames_the_end() {
        let frames = samples();
        let bytes = encoded(&frames);
        let boundaries: Vec<usize> = (0..=frames.len())
            .map(|n| encoded(&frames[..n]).len())
            .collect();
        let mut buffer = Vec::new();
        for len in 0..bytes.len() {
            let mut reader = &bytes[..len];
            let outcome = loop {
                match Frame::read(&mut reader, &mut buffer) {
                    Ok(Some(_)) => {}
                    other => break other,
                }
            };
            if boundaries.contains(&len) {
                assert!(matches!(outcome, Ok(None)), "{len}");
            } else {
                assert!(outcome.is_err(), "{len}");
            }
        }
    }

    #[test]
    fn a_truncated_body_is_refused_with_a_sentence() {
        for frame in samples() {
            let bytes = encoded(&[frame]);
            for len in 4..bytes.len() - 1 {
                let error = Frame::decode(&bytes[4..len + 1]).err().unwrap_or_default();
                assert!(!error.is_empty(), "{len}");
            }
        }
    }

    #[test]
    fn what_is_not_a_weir_frame_is_refused() {
        let http = b"GET / HTTP/1.1\r\n\r\n";
        let mut reader = &http[..];
        assert!(matches!(
            Frame::read(&mut reader, &mut Vec::new()),
            Err(ReadError::Malformed(e)) if e.contains("more than")
        ));
        assert!(
            Frame::decode(&[HELLO, b'H', b'T', b'T', b'P', 0, 0])
                .is_err_and(|e| e.contains("not a Weir worker"))
        );
        assert!(Frame::decode(&[42]).is_err_and(|e| e.contains("unknown kind 42")));
        let mut closed = encoded(&[Frame::Closed { channel: 1 }]);
        closed.push(0);
        assert!(Frame::decode(&closed[4..]).is_err_and(|e| e.contains("after its end")));
    }
}
