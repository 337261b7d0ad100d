//! The exchange on real sockets: two links on 127.0.0.1, channels in memory at both
//! ends, producers and consumers on threads of their own.

use super::frame::Frame;
use super::*;
use crate::runtime::channel::{self, ChannelReceiver, ChannelSender, Polled, SendError, Wake};
use crate::runtime::{Barrier, CheckpointId, Message, Record};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

fn batch(tag: u64, records: usize) -> Message {
    Message::Batch(
        (0..records)
            .map(|i| Record::new(format!("{tag}:{i}")).with_key(tag.to_le_bytes()))
            .collect::<Vec<_>>()
            .iter()
            .collect(),
    )
}

/// Two connected sockets on loopback.
fn sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port on loopback");
    let address = listener.local_addr().expect("its address");
    let connecting = std::thread::spawn(move || TcpStream::connect(address));
    let (accepted, _) = listener.accept().expect("the connection");
    let connected = connecting.join().expect("no panic").expect("connected");
    (connected, accepted)
}

/// Greets on both sockets at once, as two workers do.
fn greet(
    a: &TcpStream,
    b: TcpStream,
    sessions: (u64, u64),
) -> (
    Result<Hello, ExchangeError>,
    Result<Hello, ExchangeError>,
    TcpStream,
) {
    let other = std::thread::spawn(move || {
        let hello = handshake(&b, &Hello::new(sessions.1, "b"), PATIENCE);
        (hello, b)
    });
    let ours = handshake(a, &Hello::new(sessions.0, "a"), PATIENCE);
    let (theirs, b) = other.join().expect("no panic");
    (ours, theirs, b)
}

/// A channel from a producer at one end to a consumer at the other: the subtasks' ends.
struct Remote {
    /// The producing subtask's end.
    producer: ChannelSender,
    /// The consuming subtask's end.
    consumer: ChannelReceiver,
}

/// Two workers joined by a link each, carrying `forward` channels from a to b and
/// `backward` from b to a, every lane holding `capacity` items.
struct Pair {
    forward: Vec<Remote>,
    backward: Vec<Remote>,
    a: Link,
    b: Link,
}

fn pair(forward: usize, backward: usize, capacity: usize) -> Pair {
    let (a_stream, b_stream) = sockets();
    // What each end heard from the other.
    let (a_heard, b_heard, b_stream) = greet(&a_stream, b_stream, (1, 1));
    let (a_peer, b_peer) = (a_heard.expect("b greets"), b_heard.expect("a greets"));
    let a_wake = Arc::new(Wake::default());
    let b_wake = Arc::new(Wake::default());
    let producer_wake = Arc::new(Wake::default());
    let mut a_channels = Channels::default();
    let mut b_channels = Channels::default();
    let make = |id: ChannelId,
                from: (&Arc<Wake>, &mut Channels),
                to: (&Arc<Wake>, &mut Channels)| {
        let (producer, link_rx) = channel::channel(capacity, from.0.clone(), producer_wake.clone());
        let (link_tx, consumer) = channel::channel(capacity, Arc::default(), to.0.clone());
        from.1.outgoing.push((id, link_rx));
        to.1.incoming.push((id, link_tx));
        Remote { producer, consumer }
    };
    let forward = (0..forward)
        .map(|i| {
            make(
                i as ChannelId,
                (&a_wake, &mut a_channels),
                (&b_wake, &mut b_channels),
            )
        })
        .collect();
    let backward = (0..backward)
        .map(|i| {
            make(
                100 + i as ChannelId,
                (&b_wake, &mut b_channels),
                (&a_wake, &mut a_channels),
            )
        })
        .collect();
    let a = Link::start(a_stream, &a_peer, a_channels, a_wake).expect("link a");
    let b = Link::start(b_stream, &b_peer, b_channels, b_wake).expect("link b");
    Pair {
        forward,
        backward,
        a,
        b,
    }
}

/// Sends `messages` in order, waiting for room, then ends the channel.
fn produce(producer: ChannelSender, messages: Vec<Message>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        messages
            .into_iter()
            .all(|m| producer.send_timeout(m, PATIENCE).is_ok())
    })
}

/// Everything the consumer receives until the channel is gone.
fn consume(consumer: ChannelReceiver) -> std::thread::JoinHandle<Vec<Message>> {
    std::thread::spawn(move || {
        let until = Instant::now() + PATIENCE;
        let mut got = Vec::new();
        while Instant::now() < until {
            match consumer.poll(true) {
                Polled::Item(message) => got.push(message),
                Polled::Gone => break,
                Polled::Announcement(_) | Polled::Empty => std::thread::yield_now(),
            }
        }
        got
    })
}

/// Offers batches until the lane stays full for a while: how many it took.
fn fill(producer: &ChannelSender) -> usize {
    let mut taken = 0;
    let mut full_since: Option<Instant> = None;
    let until = Instant::now() + PATIENCE;
    while Instant::now() < until {
        match producer.try_send(batch(taken as u64, 8)) {
            Ok(()) => {
                taken += 1;
                full_since = None;
            }
            Err(SendError::Full(_)) => {
                let since = *full_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    return taken;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(SendError::Disconnected) => panic!("the link went away"),
        }
    }
    panic!("the lane never filled up: backpressure did not reach the producer")
}

fn stream(tag: u64, batches: u64) -> Vec<Message> {
    let mut messages: Vec<Message> = (0..batches)
        .flat_map(|i| {
            let mut m = vec![batch(tag * 1_000_000 + i, 1 + (i as usize % 50))];
            if i % 97 == 0 {
                m.push(Message::Watermark(i as i64));
            }
            m
        })
        .collect();
    messages.push(Message::EndOfInput);
    messages
}

#[test]
fn many_channels_in_both_directions_arrive_whole_and_in_order_on_one_connection() {
    let pair = pair(3, 2, 4);
    let mut expected = Vec::new();
    let mut running = Vec::new();
    for (tag, remote) in pair.forward.into_iter().chain(pair.backward).enumerate() {
        let messages = stream(tag as u64, 2_000);
        expected.push(messages.clone());
        running.push((produce(remote.producer, messages), consume(remote.consumer)));
    }
    for ((producer, consumer), expected) in running.into_iter().zip(expected) {
        assert!(
            producer.join().expect("no panic"),
            "every send went through"
        );
        assert!(
            consumer.join().expect("no panic") == expected,
            "what arrived differs from what was sent"
        );
    }
    assert!(pair.a.join().is_ok(), "a ended in order");
    assert!(pair.b.join().is_ok(), "b ended in order");
}

#[test]
fn a_back_pressured_channel_holds_its_producer_and_not_the_others_on_the_connection() {
    let mut pair = pair(2, 0, 2);
    let stalled = pair.forward.remove(0);
    let flowing = pair.forward.remove(0);
    let taken = fill(&stalled.producer);
    // The producer's lane, the consumer's lane, and the one item the link holds back.
    assert!(
        taken <= 2 + 2 + 1,
        "{taken} batches went in on a channel whose consumer reads nothing"
    );
    let messages = stream(1, 3_000);
    let producer = produce(flowing.producer, messages.clone());
    let consumer = consume(flowing.consumer);
    assert!(producer.join().expect("no panic"));
    assert!(consumer.join().expect("no panic") == messages);
    // Counted in place: popping would return credit and let more in.
    let queued = stalled.consumer.in_flight(u64::MAX).len();
    assert!(
        queued <= 2,
        "the stalled consumer's lane holds {queued} items, more than its capacity"
    );
}

#[test]
fn a_barrier_overtakes_the_queued_data_and_arrives_with_all_it_overtook_behind_it() {
    let mut pair = pair(1, 0, 4);
    let remote = pair.forward.remove(0);
    let pushed = fill(&remote.producer);
    let barrier = Barrier::checkpoint(CheckpointId(3), 1, Some(Duration::ZERO));
    assert!(remote.producer.announce(barrier).is_ok());
    let until = Instant::now() + PATIENCE;
    let announcement = loop {
        match remote.consumer.poll(false) {
            Polled::Announcement(a) => break a,
            _ if Instant::now() > until => {
                panic!("the barrier never arrived while the data was stuck")
            }
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    assert_eq!(announcement.barrier, barrier);
    assert_eq!(
        announcement.position, pushed as u64,
        "the barrier stands after everything pushed before it"
    );
    let overtaken = remote.consumer.in_flight(announcement.position);
    assert_eq!(
        overtaken.len(),
        pushed,
        "every batch the barrier overtook is at the consumer, for the channel state"
    );
    let in_order: Vec<Message> = overtaken.into_iter().map(Message::Batch).collect();
    let expected: Vec<Message> = (0..pushed as u64).map(|i| batch(i, 8)).collect();
    assert!(in_order == expected);
}

#[test]
fn the_consumers_record_limit_reaches_the_remote_producer() {
    let mut pair = pair(1, 0, 4);
    let remote = pair.forward.remove(0);
    assert_eq!(remote.producer.record_limit(), usize::MAX);
    remote.consumer.set_record_limit(10);
    let until = Instant::now() + PATIENCE;
    while remote.producer.record_limit() != 10 {
        assert!(
            Instant::now() < until,
            "the producer never learnt the limit"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether the producer's sends fail as disconnected within [`PATIENCE`].
fn sees_disconnected(producer: &ChannelSender) -> bool {
    let until = Instant::now() + PATIENCE;
    while Instant::now() < until {
        if let Err(SendError::Disconnected) = producer.try_send(batch(0, 1)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_worker_that_vanishes_disconnects_both_ends_and_says_which() {
    let mut pair = pair(1, 0, 2);
    let remote = pair.forward.remove(0);
    assert!(remote.producer.try_send(batch(0, 1)).is_ok());
    drop(pair.b);
    assert!(
        sees_disconnected(&remote.producer),
        "the producer never saw the link go"
    );
    let error = pair
        .a
        .join()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("worker b at 127.0.0.1:"), "{error}");
    let until = Instant::now() + PATIENCE;
    loop {
        match remote.consumer.poll(true) {
            Polled::Gone => break,
            _ if Instant::now() > until => panic!("the consumer never saw the link go"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[test]
fn a_consumer_that_goes_away_fails_its_remote_producer() {
    let mut pair = pair(1, 0, 2);
    let remote = pair.forward.remove(0);
    drop(remote.consumer);
    assert!(
        sees_disconnected(&remote.producer),
        "the producer never learnt its consumer was gone"
    );
    let error = pair
        .b
        .join()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("the consumer of channel 0 from worker a"),
        "{error}"
    );
}

#[test]
fn a_peer_of_another_version_or_attempt_is_refused_with_a_sentence() {
    let (a, mut b) = sockets();
    let mut greeting = Vec::new();
    Frame::Hello(Hello {
        version: 99,
        session: 1,
        worker: "old".to_owned(),
    })
    .encode_into(&mut greeting);
    std::io::Write::write_all(&mut b, &greeting).expect("sent");
    let error = handshake(&a, &Hello::new(1, "a"), PATIENCE)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("worker old at 127.0.0.1:") && error.contains("version 99"),
        "{error}"
    );

    let (a, b) = sockets();
    let (ours, theirs, _b) = greet(&a, b, (4, 5));
    let error = ours.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.contains("attempt 5 of the job") && error.contains("attempt 4"),
        "{error}"
    );
    assert!(theirs.is_err());
}

#[test]
fn what_is_not_a_weir_worker_is_refused() {
    let (a, mut b) = sockets();
    std::io::Write::write_all(&mut b, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("sent");
    let error = handshake(&a, &Hello::new(1, "a"), PATIENCE)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("cannot read"), "{error}");
}
