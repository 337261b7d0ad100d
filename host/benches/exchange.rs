//! One channel of the exchange between workers against a plain TCP copy of the same
//! bytes, in one run, on loopback.
//!
//! `cargo bench -p weir-host --bench exchange`. `WEIR_BENCH_RECORDS` sets the records
//! sent per run (default 4 000 000), `WEIR_BENCH_BATCH` the records per batch (default
//! 1024) and `WEIR_BENCH_VALUE` the bytes of each value (default 16, a word count's
//! word); keys are 8 bytes. Each side is timed three times and the fastest run counts.
//!
//! The exchange: a producer thread pushes batches into a channel in memory, a link
//! frames them onto a socket under credit, the other link pushes them into the
//! consumer's channel, and a consumer thread pops them: every part a job's channel
//! between two workers has. The baseline: one thread writes the same frames' bytes to a
//! socket in the link's write size and another reads them, with nothing else.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::exchange::Workers;
use weir::exchange::frame::Frame;
use weir::runtime::channel::{Polled, Wake};
use weir::runtime::{Batch, Message, RecordRef};

/// The allocator of the `weir` binary, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port on loopback");
    let address = listener.local_addr().expect("its address");
    let connecting = std::thread::spawn(move || TcpStream::connect(address));
    let (accepted, _) = listener.accept().expect("the connection");
    (
        connecting.join().expect("no panic").expect("connected"),
        accepted,
    )
}

fn sample_batch(records: usize, value: usize) -> Batch {
    let payload = vec![b'w'; value];
    (0..records as u64)
        .map(|i| i.to_le_bytes())
        .collect::<Vec<_>>()
        .iter()
        .map(|key| RecordRef {
            key: Some(key),
            value: &payload,
            timestamp: None,
        })
        .collect()
}

/// Sends `batches` copies of `batch` from worker 1 to worker 2 over their link and
/// times them until the consumer popped the last.
fn exchange(batch: &Batch, batches: usize) -> Duration {
    let mut workers = Workers::in_process(2);
    let consumer_wake = Arc::new(Wake::default());
    let (producer, consumer) =
        workers.channel(0, 1, 4, consumer_wake.clone(), Arc::new(Wake::default()));
    let links = workers
        .connect_in_process(1)
        .expect("two workers on loopback");
    let start = Instant::now();
    let consuming = std::thread::spawn(move || {
        consumer_wake.register();
        let mut records = 0usize;
        loop {
            match consumer.poll(true) {
                Polled::Item(Message::Batch(b)) => records += b.len(),
                Polled::Item(_) | Polled::Announcement(_) => {}
                Polled::Gone => return records,
                Polled::Empty => {
                    consumer_wake.wait_until(Instant::now() + Duration::from_millis(100))
                }
            }
        }
    });
    for _ in 0..batches {
        producer
            .send_timeout(Message::Batch(batch.clone()), Duration::from_secs(60))
            .expect("the link takes every batch");
    }
    drop(producer);
    let records = consuming.join().expect("no panic");
    let elapsed = start.elapsed();
    assert_eq!(records, batch.len() * batches);
    for link in links {
        link.join().expect("the link ends in order");
    }
    elapsed
}

/// Copies `bytes`, `times` over, from one socket to another, in `chunk`-sized writes.
fn plain_copy(bytes: &[u8], times: usize, chunk: usize) -> Duration {
    let (mut tx, mut rx) = sockets();
    tx.set_nodelay(true).expect("nodelay");
    let total = bytes.len() * times;
    let start = Instant::now();
    let reading = std::thread::spawn(move || {
        let mut buffer = vec![0u8; chunk];
        let mut got = 0;
        while got < total {
            match rx.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    });
    let mut out = Vec::with_capacity(chunk + bytes.len());
    for _ in 0..times {
        out.extend_from_slice(bytes);
        if out.len() >= chunk {
            tx.write_all(&out).expect("write");
            out.clear();
        }
    }
    tx.write_all(&out).expect("write");
    let got = reading.join().expect("no panic");
    let elapsed = start.elapsed();
    assert_eq!(got, total);
    elapsed
}

fn fastest(runs: usize, mut run: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| run()).min().unwrap_or_default()
}

fn main() {
    let records = env_or("WEIR_BENCH_RECORDS", 4_000_000);
    let per_batch = env_or("WEIR_BENCH_BATCH", 1024).max(1);
    let value = env_or("WEIR_BENCH_VALUE", 16);
    let batches = records.div_ceil(per_batch);
    let batch = sample_batch(per_batch, value);
    let mut frame = Vec::new();
    Frame::Data {
        channel: 0,
        message: Message::Batch(batch.clone()),
    }
    .encode_into(&mut frame);
    let records = batches * per_batch;
    let mib = (frame.len() * batches) as f64 / f64::from(1 << 20);
    println!(
        "exchange: {records} records in {batches} batches of {per_batch}, {value}-byte values and 8-byte keys, over loopback"
    );
    let link = fastest(3, || exchange(&batch, batches));
    let copy = fastest(3, || plain_copy(&frame, batches, 256 << 10));
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    let throughput = |d: Duration| mib / d.as_secs_f64();
    println!(
        "  one network channel   {:>12.0} records/s  {:>8.1} MiB/s  ({:.3} s)",
        rate(link),
        throughput(link),
        link.as_secs_f64()
    );
    println!(
        "  plain TCP copy        {:>12.0} records/s  {:>8.1} MiB/s  ({:.3} s)",
        rate(copy),
        throughput(copy),
        copy.as_secs_f64()
    );
    println!(
        "  channel / copy: {:.2} of the copy's throughput",
        copy.as_secs_f64() / link.as_secs_f64()
    );
    let payload = batch.payload_bytes();
    println!(
        "  bytes per record on the wire beyond key and value: {:.2} (frame {} bytes for {} bytes of keys and values)",
        (frame.len() - payload) as f64 / per_batch as f64,
        frame.len(),
        payload
    );
}
