//! Savepoints of about 1 GiB of keyed state, measured with the real `weir` binary and
//! printed with their ratios from the same run.
//!
//! `cargo bench -p weir-tests --bench savepoint` (after `scripts/build-guests.sh` and
//! `cargo build --release -p weir-host`). `WEIR_BENCH_STATE_MIB` (or
//! `WEIR_BENCH_STATE_MB`, the same) sets the state (default 1024).
//!
//! An unbounded generator of `state` KiB distinct keys with 1 KiB values feeds the
//! `latest` guest (the latest value of every key in keyed state) at parallelism 2 until
//! it took in three records a key (then 95 % of the keys hold a value). Per backend:
//!
//! - a canonical savepoint (and for RocksDB a native one), timed from the start of
//!   `weir savepoint` to its end, and as the REST API's end-to-end duration when it
//!   lists the savepoint;
//! - restores of each savepoint at parallelism 2 (as taken) and 4 (rescaled by key
//!   group), timed from the start of `weir run -s` until every subtask of `latest`
//!   processed records after its restore (its records-in moved past the first value
//!   the REST API showed), against a fresh start of the same job, timed the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weir_tests::{RunningJob, Scratch, guest, savepoint_location, toml_path};

/// Bytes of a value: with keys of about ten bytes, the state is a KiB per key.
const VALUE_SIZE: u64 = 1024;

/// Records per key before the savepoint: 1 − e⁻³ of the keys (95 %) hold a value.
const RECORDS_PER_KEY: u64 = 3;

/// How long one step may take before the benchmark gives up on it: filling 1 GiB
/// takes about a minute on two cores.
const STEP: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Heap,
    RocksDb,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Heap => "heap",
            Backend::RocksDb => "rocksdb",
        }
    }
}

fn job(backend: Backend, keys: u64, parallelism: u32) -> String {
    let state = match backend {
        // The default limit (1 GiB a subtask) is for jobs on a shared machine; the
        // benchmark's whole state may land on one subtask's heap and then some.
        Backend::Heap => "backend = \"heap\"\nheap-limit = \"64GiB\"",
        Backend::RocksDb => "backend = \"rocksdb\"\ndir = \"state\"",
    };
    format!(
        r#"[job]
name = "bench"
parallelism = 2

# No periodic checkpoint competes with the savepoints measured.
[checkpointing]
interval = "1h"
dir = "checkpoints"

[state]
{state}

[rest]
port = 0

[[source]]
id = "gen"
kind = "generator"
keys = {keys}
value-size = {VALUE_SIZE}

[[operator]]
id = "latest"
wasm = "{latest}"
inputs = ["gen"]
partition = "key-by"
parallelism = {parallelism}

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["latest"]
partition = "rebalance"
"#,
        latest = toml_path(&guest("latest")),
    )
}

/// Polls `done` every 10 ms (finer than the restores measured) until it holds, or
/// `within` passed.
fn poll(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Starts `weir run` with `args` and waits until every one of the `parallelism`
/// subtasks of `latest` processed records: its records-in moved past the first value
/// the REST API showed (a restore may carry the count over). The time from the start
/// and the running job, or why it never got there.
fn time_to_processing(
    scratch: &Scratch,
    args: &[&str],
    parallelism: usize,
) -> Result<(Duration, RunningJob), String> {
    let started = Instant::now();
    // A run refused before its REST server started panics in `start`: a failure of
    // this one measurement, not of the benchmark.
    let job = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        RunningJob::start(scratch, args)
    }))
    .map_err(|_| "weir logged no REST address (see above)".to_owned());
    let mut job = job?;
    let mut first: Vec<Option<u64>> = vec![None; parallelism];
    let mut ended = None;
    let processing = poll(STEP, || {
        if let Some(status) = job.try_status() {
            ended = Some(status);
            return true;
        }
        let now = job.records_in("bench", "latest");
        if now.len() != parallelism {
            return false;
        }
        for (seen, &n) in first.iter_mut().zip(&now) {
            if seen.is_none() && n > 0 {
                *seen = Some(n);
            }
        }
        first
            .iter()
            .zip(&now)
            .all(|(seen, &n)| seen.is_some_and(|s| n > s))
    });
    let elapsed = started.elapsed();
    if processing && ended.is_none() {
        Ok((elapsed, job))
    } else {
        let log = job.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
    }
}

/// A savepoint of `job` into `dir`: the wall time of `weir savepoint`, the end-to-end
/// duration the REST API lists for it (when it does), and where it is.
fn savepoint(
    scratch: &Scratch,
    job: &RunningJob,
    dir: &Path,
    kind: &str,
) -> (Duration, Option<Duration>, PathBuf) {
    let started = Instant::now();
    let taken = scratch.run(&[
        "savepoint",
        &job.url(""),
        &dir.to_string_lossy(),
        "--type",
        kind,
    ]);
    let elapsed = started.elapsed();
    assert!(
        taken.status.success(),
        "{}\n{}",
        weir_tests::describe(&taken),
        job.log()
    );
    let location = savepoint_location(&taken, scratch.path());
    // The entry is found by its path, since that is what makes it this savepoint.
    let history = job.json("/jobs/bench/checkpoints");
    let listed = history["history"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["status"] == "COMPLETED"
                && c["external_path"]
                    .as_str()
                    .is_some_and(|p| Path::new(p.strip_prefix("file://").unwrap_or(p)) == location)
        })
        .and_then(|c| c["end_to_end_duration"].as_u64())
        .map(Duration::from_millis);
    (elapsed, listed, location)
}

/// The bytes of the files in `dir`, recursively.
fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => size_of(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// One restore of `location` into `backend` at `parallelism`, in a scratch of its own.
fn restore(
    backend: Backend,
    keys: u64,
    parallelism: u32,
    location: &Path,
) -> Result<Duration, String> {
    let scratch = Scratch::new();
    scratch.write("job.toml", job(backend, keys, parallelism));
    let location = location.to_string_lossy();
    let (elapsed, _running) = time_to_processing(
        &scratch,
        &["run", "job.toml", "-s", &location],
        parallelism as usize,
    )?;
    Ok(elapsed)
}

/// The figures of one savepoint type of one backend.
struct Row {
    backend: Backend,
    kind: &'static str,
    bytes: u64,
    taken: Duration,
    listed: Option<Duration>,
    same: Result<Duration, String>,
    rescaled: Result<Duration, String>,
}

fn secs(d: &Result<Duration, String>) -> String {
    match d {
        Ok(d) => format!("{:.2}", d.as_secs_f64()),
        Err(_) => "failed".to_owned(),
    }
}

fn ratio(a: &Result<Duration, String>, b: &Result<Duration, String>) -> String {
    match (a, b) {
        (Ok(a), Ok(b)) => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64().max(1e-9)),
        _ => "-".to_owned(),
    }
}

/// Fills the state of `backend`, takes its savepoints and restores each.
fn measure(backend: Backend, keys: u64, rows: &mut Vec<Row>) -> Result<Duration, String> {
    let scratch = Scratch::new();
    scratch.write("job.toml", job(backend, keys, 2));
    let (fresh, running) = time_to_processing(&scratch, &["run", "job.toml"], 2)?;
    let filling = Instant::now();
    let filled = poll(STEP, || {
        running.records_in("bench", "latest").iter().sum::<u64>() >= RECORDS_PER_KEY * keys
    });
    assert!(filled, "the state was not filled:\n{}", running.log());
    let fill = filling.elapsed();
    println!(
        "   {:<8} filled with {} records in {:.1} s",
        backend.name(),
        RECORDS_PER_KEY * keys,
        fill.as_secs_f64()
    );
    let kinds: &[&'static str] = match backend {
        Backend::Heap => &["canonical"],
        Backend::RocksDb => &["canonical", "native"],
    };
    let mut taken = Vec::new();
    for &kind in kinds {
        let (elapsed, listed, location) =
            savepoint(&scratch, &running, &scratch.path().join("savepoints"), kind);
        taken.push((kind, elapsed, listed, location));
    }
    drop(running);
    for (kind, elapsed, listed, location) in taken {
        let same = restore(backend, keys, 2, &location);
        let rescaled = restore(backend, keys, 4, &location);
        for (what, result) in [("2", &same), ("2 → 4", &rescaled)] {
            if let Err(why) = result {
                println!(
                    "   {} {kind} restore at {what} failed: {why}",
                    backend.name()
                );
            }
        }
        rows.push(Row {
            backend,
            kind,
            bytes: size_of(&location),
            taken: elapsed,
            listed,
            same,
            rescaled,
        });
    }
    Ok(fresh)
}

fn main() {
    let state_mib: u64 = ["WEIR_BENCH_STATE_MIB", "WEIR_BENCH_STATE_MB"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(1024);
    // A KiB a key: this many keys make `state_mib` MiB.
    let keys = state_mib * 1024;
    println!(
        "savepoints of {state_mib} MiB of keyed state: {keys} keys × {VALUE_SIZE} B values in the `latest` guest at parallelism 2, generator unpaced, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    let mut fresh = Vec::new();
    for backend in [Backend::Heap, Backend::RocksDb] {
        match measure(backend, keys, &mut rows) {
            Ok(d) => fresh.push((backend, d)),
            Err(why) => println!("   {} did not start: {why}", backend.name()),
        }
    }
    println!();
    println!(
        "   {:<8} {:<10} {:>9} {:>12} {:>9} {:>12} {:>14} {:>11}",
        "backend",
        "type",
        "size MiB",
        "savepoint s",
        "(REST s)",
        "restore 2 s",
        "restore 2→4 s",
        "2→4 / 2"
    );
    for row in &rows {
        println!(
            "   {:<8} {:<10} {:>9.1} {:>12.2} {:>9} {:>12} {:>14} {:>11}",
            row.backend.name(),
            row.kind,
            mib(row.bytes),
            row.taken.as_secs_f64(),
            row.listed
                .map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64())),
            secs(&row.same),
            secs(&row.rescaled),
            ratio(&row.rescaled, &row.same),
        );
    }
    for (backend, d) in &fresh {
        println!(
            "   {:<8} fresh start without state (the baseline of a restore): {:.2} s",
            backend.name(),
            d.as_secs_f64()
        );
    }
    let find =
        |backend: Backend, kind: &str| rows.iter().find(|r| r.backend == backend && r.kind == kind);
    if let (Some(heap), Some(rocks)) = (
        find(Backend::Heap, "canonical"),
        find(Backend::RocksDb, "canonical"),
    ) {
        println!(
            "   canonical rocksdb / heap: savepoint {:.2}   restore {}",
            rocks.taken.as_secs_f64() / heap.taken.as_secs_f64().max(1e-9),
            ratio(&rocks.same, &heap.same)
        );
    }
    if let (Some(canonical), Some(native)) = (
        find(Backend::RocksDb, "canonical"),
        find(Backend::RocksDb, "native"),
    ) {
        println!(
            "   rocksdb native / canonical: savepoint {:.2}   restore {}   size {:.2}",
            native.taken.as_secs_f64() / canonical.taken.as_secs_f64().max(1e-9),
            ratio(&native.same, &canonical.same),
            native.bytes as f64 / canonical.bytes.max(1) as f64
        );
    }
}
