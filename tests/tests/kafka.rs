//! The Kafka source and sink against a real Kafka-protocol broker (tansu, started on
//! 127.0.0.1 by the fixture), with an independent client (confluent-kafka) writing the
//! input and reading the output.
//!
//! - Kafka → word count → exactly-once file sink, with repeated SIGKILLs and
//!   `--from-checkpoint latest`: the committed output equals the failure-free output,
//!   because the partition offsets live in the checkpoints.
//! - Kafka → word count → Kafka at-least-once, with SIGKILLs: nothing is lost (ignored
//!   for now: against tansu the run after the kills fails and restarts without end).
//! - The broker killed and restarted mid-run: the job recovers, nothing is lost.
//! - A missing topic, an unreachable broker, and an exactly-once sink against a broker
//!   without transactions, each refused at start with a sentence that names it.
//! - Event time: the window example's counts against counts computed here, and
//!   watermarks that advance past a partition that never has records.
//!
//! `WEIR_CRASH_KILLS` sets the number of kills (default 20); `WEIR_CRASH_SEED` replays a
//! run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use weir_tests::kafka::{KafkaBroker, KafkaRecord};
use weir_tests::{
    Scratch, XorShift, counted_lines, crash_kills, crash_seed, describe, eventually, guest,
    toml_path, word_count_operators,
};

/// `lines` lines of eight words each, from 300 distinct words.
fn input_lines(rng: &mut XorShift, lines: usize) -> Vec<String> {
    (0..lines)
        .map(|_| {
            (0..8)
                .map(|_| format!("w{}", rng.below(300)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Kafka → tokenize → count (key-by) → `sink`, bounded at the offsets found at start.
fn word_count_job(broker: &KafkaBroker, mode: &str, sink: &str, extra: &str) -> String {
    format!(
        r#"[job]
name = "kafka-wc"
parallelism = 2

[checkpointing]
interval = "100ms"
mode = "{mode}"
dir = "checkpoints"
num-retained = 2
{extra}

[[source]]
id = "lines"
kind = "kafka"
bootstrap-servers = "{bootstrap}"
topic = "lines"
group-id = "weir-wc"
bounded = true

{operators}

{sink}
"#,
        bootstrap = broker.bootstrap(),
        operators = word_count_operators(),
    )
}

const FILE_SINK: &str = r#"[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["count"]
# Slow enough that a run takes a few seconds and the kills land mid-stream.
rate = 100000
"#;

fn kafka_sink(broker: &KafkaBroker, topic: &str, delivery: &str) -> String {
    format!(
        r#"[[sink]]
id = "out"
kind = "kafka"
bootstrap-servers = "{}"
topic = "{topic}"
delivery = "{delivery}"
inputs = ["count"]
rate = 100000
"#,
        broker.bootstrap()
    )
}

/// Runs `job` in `scratch`, SIGKILLed `kills` times at random moments and resumed each
/// time from its latest checkpoint, then to its end. How many kills landed mid-run.
fn run_with_kills(scratch: &Scratch, job: &str, kills: u32, seed: u64) -> u32 {
    let mut rng = XorShift(seed);
    let mut landed = 0;
    for attempt in 0..kills {
        let mut args = vec!["run", job];
        if attempt > 0 {
            args.extend(["--from-checkpoint", "latest"]);
        }
        let mut child = scratch
            .weir(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir starts");
        // A random moment: this is the point of the test, not an ordering of events.
        std::thread::sleep(Duration::from_millis(300 + rng.below(600)));
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
        landed += 1;
    }
    let output = scratch
        .weir(&["run", job, "--from-checkpoint", "latest"])
        .output()
        .expect("weir runs");
    assert!(
        output.status.success(),
        "the final run failed (seed {seed}):\n{}",
        describe(&output)
    );
    landed
}

/// The values of every record in `topic`, sorted.
fn topic_values(broker: &KafkaBroker, topic: &str) -> Vec<String> {
    let mut values: Vec<String> = broker.consume(topic).into_iter().map(|r| r.value).collect();
    values.sort();
    values
}

#[test]
fn kafka_to_an_exactly_once_file_sink_survives_repeated_sigkill_through_checkpointed_offsets() {
    let broker = KafkaBroker::start();
    broker.create_topic("lines", 3);
    let seed = crash_seed();
    let lines = input_lines(&mut XorShift(seed), 40_000);
    broker.produce_lines("lines", &lines, 3);
    let scratch = Scratch::new();
    let job = scratch.write(
        "job.toml",
        word_count_job(&broker, "exactly-once", FILE_SINK, ""),
    );
    let landed = run_with_kills(
        &scratch,
        job.to_str().unwrap_or_default(),
        crash_kills(),
        seed,
    );
    println!("{landed} kills landed before the job finished");
    assert!(
        landed >= 5,
        "too few kills landed mid-run to test anything (seed {seed})"
    );
    let committed = scratch.committed_lines("out");
    let expected = counted_lines(&lines);
    if committed != expected {
        let missing = expected
            .iter()
            .filter(|l| committed.binary_search(l).is_err())
            .count();
        panic!(
            "committed output differs from the failure-free output (seed {seed}): {missing} of {} lines missing, {} lines committed",
            expected.len(),
            committed.len()
        );
    }
    // The offsets went to the group as well, for monitoring: at the end, every
    // partition's end.
    let committed_offsets = broker.committed("weir-wc", "lines");
    let total: i64 = committed_offsets.values().sum();
    assert_eq!(
        total,
        i64::try_from(lines.len()).unwrap_or(0),
        "the group's offsets: {committed_offsets:?}"
    );
}

#[test]
#[ignore = "the final run against tansu 0.6 keeps failing and restarting; not yet diagnosed (see the README's \"Not built yet\")"]
fn kafka_to_kafka_at_least_once_loses_nothing_under_sigkill() {
    let broker = KafkaBroker::start();
    broker.create_topic("lines", 2);
    broker.create_topic("counts", 2);
    let seed = crash_seed();
    let lines = input_lines(&mut XorShift(seed), 20_000);
    broker.produce_lines("lines", &lines, 2);
    let scratch = Scratch::new();
    let sink = kafka_sink(&broker, "counts", "at-least-once");
    let job = scratch.write(
        "job.toml",
        word_count_job(&broker, "at-least-once", &sink, ""),
    );
    let landed = run_with_kills(&scratch, job.to_str().unwrap_or_default(), 8, seed);
    println!("{landed} kills landed before the job finished");
    assert!(landed >= 2, "too few kills landed mid-run (seed {seed})");
    let written: BTreeSet<String> = topic_values(&broker, "counts").into_iter().collect();
    let expected = counted_lines(&lines);
    let missing: Vec<&String> = expected.iter().filter(|l| !written.contains(*l)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} counts are missing from the output topic (seed {seed}), e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn a_broker_outage_fails_checkpoints_and_the_job_recovers_without_loss() {
    let mut broker = KafkaBroker::start();
    broker.create_topic("lines", 2);
    let lines = input_lines(&mut XorShift(7), 30_000);
    broker.produce_lines("lines", &lines, 2);
    let scratch = Scratch::new();
    let restart = "tolerable-failed = 1000\n\n[restart]\nstrategy = \"fixed-delay\"\nattempts = 1000\ndelay = \"200ms\"\n";
    let job = scratch.write(
        "job.toml",
        word_count_job(&broker, "exactly-once", FILE_SINK, restart),
    );
    let mut child = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    let started = eventually(Duration::from_secs(30), || {
        scratch.path().join("out").is_dir() && !scratch.committed_lines("out").is_empty()
    });
    assert!(started, "the job committed nothing before the outage");
    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().ok().flatten().is_none(),
        "the job ended while the broker was down"
    );
    broker.restart();
    let (output, _) = weir_tests::wait_bounded(child, Duration::from_secs(240));
    assert!(
        output.status.success(),
        "the job did not recover after the broker came back:\n{}",
        describe(&output)
    );
    assert_eq!(
        scratch.committed_lines("out"),
        counted_lines(&lines),
        "the committed output differs from the failure-free output"
    );
}

/// A one-node job reading `source` into a blackhole, for the checks at start.
fn refused(scratch: &Scratch, source: &str, sink: &str) -> String {
    let job = scratch.write(
        "job.toml",
        format!("[job]\nname = \"refused\"\n\n{source}\n{sink}"),
    );
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(
        !output.status.success(),
        "the job started:\n{}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn kafka_source(bootstrap: &str, topic: &str) -> String {
    format!(
        "[[source]]\nid = \"events\"\nkind = \"kafka\"\nbootstrap-servers = \"{bootstrap}\"\ntopic = \"{topic}\"\nbounded = true\n"
    )
}

const BLACKHOLE: &str = "[[sink]]\nid = \"out\"\nkind = \"blackhole\"\ninputs = [\"events\"]\n";

#[test]
fn a_missing_topic_is_named_at_start() {
    let broker = KafkaBroker::start();
    let scratch = Scratch::new();
    let stderr = refused(
        &scratch,
        &kafka_source(&broker.bootstrap(), "nowhere"),
        BLACKHOLE,
    );
    assert!(
        stderr.contains("[[source]] \"events\"")
            && stderr.contains("the topic \"nowhere\" does not exist")
            && stderr.contains(&broker.bootstrap()),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_broker_is_named_at_start() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let bootstrap = format!("127.0.0.1:{port}");
    let scratch = Scratch::new();
    let stderr = refused(&scratch, &kafka_source(&bootstrap, "events"), BLACKHOLE);
    assert!(
        stderr.contains("cannot reach the Kafka broker at") && stderr.contains(&bootstrap),
        "{stderr}"
    );
}

#[test]
fn an_exactly_once_kafka_sink_is_refused_at_start_by_a_broker_that_cannot_commit_transactions() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 1);
    broker.create_topic("results", 1);
    let scratch = Scratch::new();
    let sink = format!(
        "[[sink]]\nid = \"out\"\nkind = \"kafka\"\nbootstrap-servers = \"{}\"\ntopic = \"results\"\ndelivery = \"exactly-once\"\ntransactional-id-prefix = \"refused\"\ninputs = [\"events\"]\n",
        broker.bootstrap()
    );
    let stderr = refused(
        &scratch,
        &kafka_source(&broker.bootstrap(), "events"),
        &sink,
    );
    assert!(
        stderr.contains("[[sink]] \"out\"")
            && stderr.contains("does not support EndTxn")
            && stderr.contains("delivery = \"at-least-once\""),
        "{stderr}"
    );
}

/// Events of `keys` keys over `windows` one-second windows from `base`, out of order
/// by up to `disorder` ms, round-robin over `partitions` partitions.
fn events(
    base: i64,
    windows: i64,
    per_window: i64,
    disorder: i64,
    partitions: i32,
) -> Vec<KafkaRecord> {
    let mut rng = XorShift(11);
    let mut out = Vec::new();
    for i in 0..windows * per_window {
        let on_time = base + i * 1_000 / per_window;
        let jitter =
            i64::try_from(rng.below(u64::try_from(disorder + 1).unwrap_or(1))).unwrap_or(0);
        out.push(KafkaRecord {
            key: Some(format!("k{}", rng.below(3))),
            value: "x".to_owned(),
            partition: Some(i32::try_from(i).unwrap_or(0) % partitions),
            timestamp: Some((on_time - jitter).max(base)),
            ..KafkaRecord::default()
        });
    }
    out
}

/// `key\twindow-start\tcount` for each key and one-second window of `events`.
fn window_counts(events: &[KafkaRecord]) -> Vec<String> {
    let mut counts: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for e in events {
        let ts = e.timestamp.unwrap_or(0);
        let start = ts - ts.rem_euclid(1_000);
        *counts
            .entry((e.key.clone().unwrap_or_default(), start))
            .or_insert(0) += 1;
    }
    counts
        .into_iter()
        .map(|((key, start), n)| format!("{key}\t{start}\t{n}"))
        .collect()
}

fn window_job(broker: &KafkaBroker, watermark: &str, bounded: bool, sink: &str) -> String {
    format!(
        r#"[job]
name = "windows"
parallelism = 1

[checkpointing]
interval = "200ms"
dir = "checkpoints"

[[source]]
id = "events"
kind = "kafka"
bootstrap-servers = "{bootstrap}"
topic = "events"
bounded = {bounded}
watermark = {watermark}

[[operator]]
id = "windows"
wasm = "{wasm}"
inputs = ["events"]
partition = "key-by"
config = {{ size-ms = 1000 }}

{sink}
"#,
        bootstrap = broker.bootstrap(),
        wasm = toml_path(&guest("window_count")),
    )
}

#[test]
fn the_window_example_counts_every_key_and_window_as_computed_here() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 2);
    // Out of order by up to 300 ms, within the bound of 500 ms: no record is late.
    let events = events(1_767_225_600_000, 12, 200, 300, 2);
    broker.produce("events", &events);
    let scratch = Scratch::new();
    let sink = "[[sink]]\nid = \"out\"\nkind = \"file\"\npath = \"out\"\ninputs = [\"windows\"]\n";
    let job = scratch.write(
        "job.toml",
        window_job(&broker, "{ max-out-of-orderness = \"500ms\" }", true, sink),
    );
    let output = scratch.run(&["run", job.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
    let mut windows = scratch.committed_lines("out");
    windows.sort();
    assert_eq!(windows, window_counts(&events));
}

#[test]
fn watermarks_pass_a_partition_without_records_once_it_is_idle() {
    let broker = KafkaBroker::start();
    // Two partitions, records only in partition 0: without idleness, partition 1
    // would hold the watermark back and no window would ever fire.
    broker.create_topic("events", 2);
    broker.create_topic("windows", 1);
    let events = events(1_767_225_600_000, 6, 50, 0, 1);
    broker.produce("events", &events);
    let scratch = Scratch::new();
    let sink =
        kafka_sink(&broker, "windows", "at-least-once").replace("[\"count\"]", "[\"windows\"]");
    let job = scratch.write(
        "job.toml",
        window_job(
            &broker,
            "{ max-out-of-orderness = \"0ms\", idle-timeout = \"500ms\" }",
            false,
            &sink,
        ),
    );
    let mut child = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weir starts");
    // Every window but the last closes: the watermark is the highest timestamp - 1,
    // the end of the last window is past it.
    let mut expected = window_counts(&events);
    let last_start = events.iter().filter_map(|e| e.timestamp).max().unwrap_or(0) / 1_000 * 1_000;
    expected.retain(|l| !l.contains(&format!("\t{last_start}\t")));
    let fired = eventually(Duration::from_secs(60), || {
        topic_values(&broker, "windows").len() >= expected.len()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        fired,
        "the windows did not fire: the idle partition held the watermark back"
    );
    let mut written = topic_values(&broker, "windows");
    written.dedup();
    assert_eq!(written, expected);
}
