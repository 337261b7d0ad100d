//! The cost of checkpoints, measured with the real stack (WASM counter, heap backend,
//! file checkpoint storage), printed with their baselines from the same run.
//!
//! `cargo bench -p weir-tests --bench checkpointing` (after `scripts/build-guests.sh`).
//!
//! 1. The synchronous phase of the heap backend alone, at three state sizes, and of the
//!    timers alone, at 1M and 8M pending, against a `BTreeSet` clone of the same timers
//!    (what the sync phase copied before they were persistent sets): neither may grow
//!    with the state.
//! 2. A keyed counter over 1M keys checkpointing every second: the sync phase (p50/p99)
//!    and end-to-end time of its checkpoints, from their `_metadata`.
//! 3. Word count with checkpoints every second against the same job without.
//! 4. The keyed counter at parallelism 2 across two workers of one process, its
//!    key-by channels over TCP on 127.0.0.1 (`[network] local-workers = 2`), against
//!    the same job on one worker, every channel in memory: records/s and the end-to-end
//!    time of its checkpoints. (What a record costs on the wire, and a network channel
//!    against a plain TCP copy: `cargo bench -p weir-host --bench exchange`.)
//! 5. The same job on `weir coordinator` and two `weir worker` processes against `weir
//!    run` of it, both the real binary, wall time from start to exit.

mod jobs;

use jobs::{checkpoints, percentile, run};
use std::time::{Duration, Instant};
use weir::checkpoint::metadata::CheckpointMetadata;
use weir::checkpoint::snapshot::SnapshotType;
use weir::runtime::keygroup::{KeyGroupRange, key_group_of};
use weir::runtime::{CheckpointId, SubtaskIndex};
use weir::state::{Domain, HeapBackend, KeyedStateBackend, StateKind, Timers};
use weir::wasm::{CompileCache, WasmRuntime};

/// Sync-phase cost of the heap backend holding `keys` keys, with 10k writes between
/// snapshots (so copy-on-write is exercised).
fn backend_sync(keys: u64) -> (Duration, Duration) {
    let range = KeyGroupRange::for_subtask(SubtaskIndex(0), 1, 128);
    let mut backend = HeapBackend::new(range, u64::MAX);
    let state = backend
        .open_state("count", StateKind::Value)
        .expect("a state");
    let put = |backend: &mut HeapBackend, k: u64| {
        let key = format!("key-{k}").into_bytes();
        let group = key_group_of(&key, 128);
        backend
            .value_set(state, group, key, k.to_le_bytes().to_vec())
            .expect("a write");
    };
    for k in 0..keys {
        put(&mut backend, k);
    }
    let mut samples = Vec::new();
    let mut writers = Vec::new();
    for round in 0..200u64 {
        for k in 0..10_000 {
            put(&mut backend, (round * 7919 + k * 104_729) % keys);
        }
        let started = Instant::now();
        let writer = backend
            .snapshot(CheckpointId(round), SnapshotType::Checkpoint)
            .expect("a snapshot");
        samples.push(started.elapsed());
        // Keep the last few snapshots alive, as the asynchronous phase would.
        writers.push(writer);
        if writers.len() > 2 {
            drop(writers.remove(0));
        }
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// The sync-phase cost of `n` pending timers: the snapshot's clone, then a registration
/// after it (the first write copies a path of the tree), against a `BTreeSet` clone.
fn timers_sync(n: i64) -> (Duration, Duration, Duration) {
    let mut timers = Timers::default();
    let mut baseline = std::collections::BTreeSet::new();
    for t in 0..n {
        let key = format!("key-{}", t % 100_000).into_bytes();
        baseline.insert((t, key.clone()));
        timers.register(Domain::EventTime, key, t);
    }
    let started = Instant::now();
    let snapshot = timers.clone();
    let clone = started.elapsed();
    let started = Instant::now();
    timers.register(Domain::EventTime, b"after".to_vec(), n / 2);
    let first_write = started.elapsed();
    let started = Instant::now();
    let copied = baseline.clone();
    let btree = started.elapsed();
    assert_eq!(snapshot.len() + 1, timers.len());
    assert_eq!(copied.len(), snapshot.len());
    (clone, first_write, btree)
}

/// The allocator of the `weir` binary, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let guests = weir_tests::repo().join("target/guests");
    let counter = guests.join("word_count_counter.wasm");
    let tokenizer = guests.join("word_count_tokenizer.wasm");
    assert!(
        counter.exists(),
        "build the guests first: scripts/build-guests.sh"
    );
    let wasm = WasmRuntime::new(CompileCache::default_location()).expect("the engine starts");
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    println!("1. heap backend, synchronous phase alone (200 snapshots, 10k writes between)");
    for keys in [10_000u64, 100_000, 1_000_000] {
        let (p50, p99) = backend_sync(keys);
        println!("   {keys:>9} keys   sync p50 {p50:>10.1?}   p99 {p99:>10.1?}");
    }

    println!("1b. timers, synchronous phase alone (a snapshot's clone, then one registration)");
    for n in [1_000_000i64, 8_000_000] {
        let (clone, first_write, btree) = timers_sync(n);
        println!(
            "   {n:>9} timers   clone {clone:>10.1?}   first write after {first_write:>8.1?}   BTreeSet clone (baseline) {btree:>9.1?}   ratio {:.0}x",
            btree.as_secs_f64() / (clone + first_write).as_secs_f64().max(1e-9)
        );
    }

    println!("2. keyed counter (WASM) over 1M keys, heap state, checkpoint every 1s, file storage");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let job = format!(
        r#"[job]
name = "sync-bench"
[checkpointing]
interval = "1s"
dir = "checkpoints"
num-retained = 100
retention = "retain-on-cancellation"
[[source]]
id = "gen"
kind = "generator"
count = 8000000
keys = 1000000
[[operator]]
id = "count"
wasm = "{}"
inputs = ["gen"]
partition = "key-by"
[[sink]]
id = "out"
kind = "blackhole"
inputs = ["count"]
"#,
        counter.display()
    );
    let (elapsed, spec) = run(&job, dir.path(), &wasm, &io);
    let all = checkpoints(&spec, dir.path(), &io);
    let mut sync: Vec<Duration> = all
        .iter()
        .flat_map(|c| {
            c.tasks
                .iter()
                .filter(|t| t.node == "count")
                .map(|t| t.stats.sync_duration)
        })
        .collect();
    sync.sort();
    let mut e2e: Vec<Duration> = all
        .iter()
        .map(|c| Duration::from_millis(u64::try_from(c.end_to_end_ms()).unwrap_or(0)))
        .collect();
    e2e.sort();
    let biggest = all
        .iter()
        .map(CheckpointMetadata::state_size)
        .max()
        .unwrap_or(0);
    println!(
        "   {} checkpoints in {elapsed:.1?}; largest state {:.1} MiB",
        all.len(),
        biggest as f64 / (1 << 20) as f64
    );
    println!(
        "   counter sync phase p50 {:.2?}  p99 {:.2?}   (target p99 ≤ 1 ms)",
        percentile(&sync, 0.5),
        percentile(&sync, 0.99)
    );
    println!(
        "   end-to-end p50 {:.0?}  p99 {:.0?}",
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99)
    );

    println!(
        "3. word count (file → tokenizer → key-by → counter → blackhole), checkpoints every 1s vs none"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut text = String::new();
    let mut x: u64 = 7;
    for _ in 0..400_000 {
        for i in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(if i == 0 { "" } else { " " });
            text.push_str(&format!("w{}", x % 20_000));
        }
        text.push('\n');
    }
    std::fs::write(dir.path().join("in.txt"), text).expect("the input");
    let job = |checkpointing: &str| {
        format!(
            r#"[job]
name = "wc-bench"
{checkpointing}
[[source]]
id = "lines"
kind = "file"
path = "in.txt"
[[operator]]
id = "tokenize"
wasm = "{}"
inputs = ["lines"]
[[operator]]
id = "count"
wasm = "{}"
inputs = ["tokenize"]
partition = "key-by"
[[sink]]
id = "out"
kind = "blackhole"
inputs = ["count"]
"#,
            tokenizer.display(),
            counter.display()
        )
    };
    let with = "[checkpointing]\ninterval = \"1s\"\ndir = \"checkpoints\"";
    let records = 400_000.0 * 8.0;
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let (plain, _) = run(&job(""), dir.path(), &wasm, &io);
        let (checkpointed, _) = run(&job(with), dir.path(), &wasm, &io);
        best = (
            best.0.min(plain.as_secs_f64()),
            best.1.min(checkpointed.as_secs_f64()),
        );
    }
    println!(
        "   no checkpoints {:.2} M words/s   checkpoints every 1s {:.2} M words/s   ratio {:.3}   (target ≥ 0.95; best of 3)",
        records / best.0 / 1e6,
        records / best.1 / 1e6,
        best.0 / best.1
    );

    println!(
        "4. keyed counter (WASM), parallelism 2, 100k keys, checkpoints every 1s: two workers over TCP vs one"
    );
    let records = 8_000_000u64;
    let job = |workers: u32| {
        format!(
            r#"[job]
name = "workers-bench"
parallelism = 2
[checkpointing]
interval = "1s"
dir = "checkpoints"
num-retained = 100
retention = "retain-on-cancellation"
[network]
local-workers = {workers}
[[source]]
id = "gen"
kind = "generator"
count = {records}
keys = 100000
[[operator]]
id = "count"
wasm = "{counter}"
inputs = ["gen"]
partition = "key-by"
[[sink]]
id = "out"
kind = "blackhole"
inputs = ["count"]
"#,
            counter = counter.display()
        )
    };
    let mut figures = Vec::new();
    for workers in [1, 2] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (best, e2e) = best_of_3(dir.path(), &io, || {
            run(&job(workers), dir.path(), &wasm, &io).0
        });
        let label = format!("{workers} worker{}", if workers == 1 { " " } else { "s" });
        figures.push(print_rate(&label, records, best, &e2e));
    }
    println!(
        "   two workers / one: {:.2} of the throughput",
        figures[1] / figures[0]
    );

    println!(
        "5. the same job as processes: `weir coordinator` and two `weir worker`s on 127.0.0.1 vs `weir run` (wall time of the binary, start included)"
    );
    let mut figures = Vec::new();
    for cluster in [false, true] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("job.toml"), job(1)).expect("the job file");
        let (best, e2e) = best_of_3(dir.path(), &io, || run_binary(dir.path(), cluster));
        let label = if cluster {
            "coordinator + 2 workers"
        } else {
            "weir run, 1 process    "
        };
        figures.push(print_rate(label, records, best, &e2e));
    }
    println!(
        "   two worker processes / one process: {:.2} of the throughput",
        figures[1] / figures[0]
    );
}

/// Runs the job in `dir` three times with `run`, which returns its wall time: the best
/// time, and the end-to-end times of every checkpoint the runs completed, sorted.
fn best_of_3(
    dir: &std::path::Path,
    io: &tokio::runtime::Runtime,
    mut run: impl FnMut() -> Duration,
) -> (Duration, Vec<Duration>) {
    let mut best = Duration::MAX;
    let mut e2e = Vec::new();
    for _ in 0..3 {
        best = best.min(run());
        let spec = weir::job::load(&dir.join("job.toml"), &[]).expect("a valid job");
        e2e.extend(
            checkpoints(&spec, dir, io)
                .iter()
                .map(|c| Duration::from_millis(u64::try_from(c.end_to_end_ms()).unwrap_or(0))),
        );
    }
    e2e.sort();
    (best, e2e)
}

/// Prints one line of records/s and checkpoint end-to-end times; returns the rate.
fn print_rate(label: &str, records: u64, best: Duration, e2e: &[Duration]) -> f64 {
    let rate = records as f64 / best.as_secs_f64();
    println!(
        "   {label}   {:.2} M records/s   checkpoint end-to-end p50 {:.0?}  p99 {:.0?}   ({} checkpoints; best of 3)",
        rate / 1e6,
        percentile(e2e, 0.5),
        percentile(e2e, 0.99),
        e2e.len()
    );
    rate
}

/// Runs `dir/job.toml` with the real binary to its end: `weir run`, or a coordinator
/// with two workers on 127.0.0.1. Returns the wall time.
fn run_binary(dir: &std::path::Path, cluster: bool) -> Duration {
    use std::process::{Command, Stdio};
    let weir = || {
        let mut command = Command::new(weir_tests::weir_bin());
        command
            .current_dir(dir)
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let started = Instant::now();
    if !cluster {
        let status = weir()
            .args(["run", "job.toml"])
            .status()
            .expect("weir runs");
        assert!(status.success(), "weir run failed");
        return started.elapsed();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut coordinator = weir()
        .args([
            "coordinator",
            "job.toml",
            "--workers",
            "2",
            "--listen",
            &address,
        ])
        .spawn()
        .expect("the coordinator starts");
    let mut workers: Vec<_> = (0..2)
        .map(|_| {
            weir()
                .args([
                    "worker",
                    "--coordinator",
                    &address,
                    "--data-bind",
                    "127.0.0.1:0",
                ])
                .spawn()
                .expect("a worker starts")
        })
        .collect();
    let status = coordinator.wait().expect("the coordinator ends");
    let elapsed = started.elapsed();
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    assert!(status.success(), "the coordinator failed");
    elapsed
}
