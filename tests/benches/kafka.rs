//! Kafka → stateless map → Kafka, measured with the real `weir` binary against the
//! client library's own consume-and-produce loop doing the same work, in one run, with
//! the same broker (tansu on 127.0.0.1, started here).
//!
//! `cargo bench -p weir-tests --bench kafka` (after `scripts/build-guests.sh` and
//! `cargo build --release -p weir-host`). `WEIR_BENCH_RECORDS` sets the input (default
//! 200 000 records of 100 bytes over 2 partitions).
//!
//! - baseline: one thread, librdkafka's consumer (the two partitions assigned, read
//!   to their end) and producer, the map-filter logic native in between, a flush at the
//!   end; timed from the consumer's creation to the flush.
//! - Weir: `kind = "kafka"` source (bounded) → `map_filter.wasm` → `kind = "kafka"`
//!   sink, parallelism 1, checkpoints every second; timed from the start of `weir run`
//!   to its exit (so the process start and the component's load are Weir's cost),
//!   with `delivery = "none"` and with `"at-least-once"` (the idempotent producer
//!   flushed at every checkpoint).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_tests::kafka::{KafkaBroker, KafkaRecord};
use weir_tests::{Scratch, describe, guest, toml_path};

const PARTITIONS: i32 = 2;

fn records() -> usize {
    std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// The client's own loop: consume every record of `input`, map it, produce it to
/// `output`, flush.
fn baseline(broker: &KafkaBroker, input: &str, output: &str, count: usize) -> Duration {
    let logic = map_filter::MapFilter::default();
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(input, partition, Offset::Beginning)
            .expect("a partition");
    }
    consumer.assign(&assignment).expect("assigned");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("a producer");
    let mut seen = 0;
    while seen < count {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("a record");
        seen += 1;
        let Some(value) = logic.apply(message.payload().unwrap_or_default()) else {
            continue;
        };
        let mut record = BaseRecord::<[u8], [u8]>::to(output).payload(&value);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flushed");
    started.elapsed()
}

fn weir(broker: &KafkaBroker, input: &str, output: &str, delivery: &str) -> Duration {
    let scratch = Scratch::new();
    let job = scratch.write(
        "job.toml",
        format!(
            r#"[job]
name = "kafka-bench"
parallelism = 1

[checkpointing]
interval = "1s"
dir = "checkpoints"

[[source]]
id = "in"
kind = "kafka"
bootstrap-servers = "{bootstrap}"
topic = "{input}"
bounded = true

[[operator]]
id = "map"
wasm = "{wasm}"
inputs = ["in"]

[[sink]]
id = "out"
kind = "kafka"
bootstrap-servers = "{bootstrap}"
topic = "{output}"
delivery = "{delivery}"
inputs = ["map"]
"#,
            bootstrap = broker.bootstrap(),
            wasm = toml_path(&guest("map_filter")),
        ),
    );
    let started = Instant::now();
    let out = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", describe(&out));
    elapsed
}

fn rate(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn main() {
    let count = records();
    let broker = KafkaBroker::start();
    for topic in ["in", "out-baseline", "out-none", "out-alo"] {
        broker.create_topic(topic, PARTITIONS);
    }
    let value = "v".repeat(100);
    let input: Vec<KafkaRecord> = (0..count)
        .map(|i| KafkaRecord {
            key: Some(format!("k{}", i % 1000)),
            value: value.clone(),
            partition: Some(i32::try_from(i).unwrap_or(0) % PARTITIONS),
            ..KafkaRecord::default()
        })
        .collect();
    broker.produce("in", &input);
    // Warm the component cache so that no run pays for the compilation.
    let _ = weir(&broker, "in", "out-none", "none");
    let base = baseline(&broker, "in", "out-baseline", count);
    let none = weir(&broker, "in", "out-none", "none");
    let alo = weir(&broker, "in", "out-alo", "at-least-once");
    println!(
        "kafka → map → kafka, {count} records of 100 bytes, {PARTITIONS} partitions, one subtask"
    );
    println!(
        "  librdkafka loop (baseline)   {:>10.0} records/s  ({:.2} s)",
        rate(count, base),
        base.as_secs_f64()
    );
    println!(
        "  weir, delivery = none        {:>10.0} records/s  ({:.2} s)  {:.2}× the baseline",
        rate(count, none),
        none.as_secs_f64(),
        rate(count, none) / rate(count, base)
    );
    println!(
        "  weir, at-least-once          {:>10.0} records/s  ({:.2} s)  {:.2}× none",
        rate(count, alo),
        alo.as_secs_f64(),
        rate(count, alo) / rate(count, none)
    );
}
