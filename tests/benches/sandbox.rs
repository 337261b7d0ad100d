//! What the sandbox costs and what it bounds, measured in the same run:
//!
//! 1. throughput of the stateless map (the map-filter guest) with no metering, with
//!    epoch interruption only, with fuel only, and with fuel and epochs (the job file's
//!    default), as ratios to the unmetered engine;
//! 2. how long a poison record (an endless loop) holds its subtask, and so the barriers
//!    behind it, for several fuel budgets and batch sizes, under `on-runaway = "fail"`
//!    and `"dead-letter"`.
//!
//! `cargo bench -p weir-tests --bench sandbox` (after `scripts/build-guests.sh`). Set
//! `WEIR_BENCH_RECORDS` to change the records per throughput run.

mod harness;

use harness::{Figures, MAX_PARALLELISM, measure};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir::job::{RunawayPolicy, SandboxSpec};
use weir::runtime::executor::{OperatorFactory, Partitioner};
use weir::runtime::keygroup::KeyGroupRange;
use weir::runtime::{Batch, Operator, Record, SubtaskIndex, TaskInfo};
use weir::state::HeapBackend;
use weir::wasm::{GuestSettings, Metering, OperatorComponent, WasmRuntime};

/// The allocator of the `weir` binary, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs of each throughput configuration, in rounds; the best counts (the machine is
/// shared).
const RUNS: usize = 5;

fn heap(info: &TaskInfo) -> Box<HeapBackend> {
    Box::new(HeapBackend::new(
        KeyGroupRange::for_subtask(info.subtask, info.parallelism, info.max_parallelism),
        u64::MAX,
    ))
}

fn settings(config: &str, sandbox: SandboxSpec) -> Arc<GuestSettings> {
    Arc::new(GuestSettings {
        config: config.to_owned(),
        sandbox,
        local_restore: true,
        timer_limit: u64::MAX,
    })
}

/// One run of the map through `component`.
fn map_throughput(component: &Arc<OperatorComponent>, records: u64) -> Figures {
    let settings = settings(r#"{"uppercase": true}"#, SandboxSpec::default());
    let component = component.clone();
    let factory: OperatorFactory = Arc::new(move |info| {
        Ok(Box::new(component.instantiate(info, &settings, heap(info))?) as Box<dyn Operator>)
    });
    measure(records, 1000, factory, Partitioner::Forward)
}

fn info() -> TaskInfo {
    TaskInfo {
        node: "hostile".to_owned(),
        subtask: SubtaskIndex(0),
        parallelism: 1,
        max_parallelism: MAX_PARALLELISM,
        metrics: Default::default(),
    }
}

fn record(n: u64) -> Record {
    Record {
        key: Some(format!("key-{}", n % 100).into_bytes()),
        value: n.to_string().into_bytes(),
        timestamp: None,
    }
}

/// How long `process` of a batch of `batch` records, the first of them poison, holds
/// the subtask; `before` records were processed since the operator's start (what a
/// dead-letter replay repeats).
fn poison_delay(
    hostile: &OperatorComponent,
    sandbox: SandboxSpec,
    batch: u64,
    before: u64,
) -> (Duration, Result<(), weir::runtime::TaskError>) {
    let config = r#"{"process": "spin", "poison-value": "poison"}"#;
    let settings = settings(config, sandbox);
    let info = info();
    let mut operator = hostile
        .instantiate(&info, &settings, heap(&info))
        .expect("the hostile guest instantiates");
    operator.open(None).expect("open");
    let mut out = Batch::new();
    for start in (0..before).step_by(1000) {
        let chunk: Vec<Record> = (start..(start + 1000).min(before)).map(record).collect();
        operator
            .process(&chunk.iter().collect(), &mut out)
            .expect("normal records");
        out.clear();
    }
    let mut poisoned: Vec<Record> = (0..batch).map(|n| record(before + n)).collect();
    poisoned[0].value = b"poison".to_vec();
    let poisoned: Batch = poisoned.iter().collect();
    let started = Instant::now();
    let result = operator.process(&poisoned, &mut out);
    (started.elapsed(), result)
}

/// Bytes of dead letters written into `dir` so far.
fn dead_letter_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("the dead-letter directory")
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn main() {
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let guests = weir_tests::repo().join("target/guests");
    let runtime = WasmRuntime::new(None).expect("the engine starts");

    println!("1. stateless map (map-filter), {records} records per run, best of {RUNS}");
    let kinds = [
        (
            "no metering",
            Metering {
                fuel: false,
                epoch: false,
            },
        ),
        (
            "epoch only",
            Metering {
                fuel: false,
                epoch: true,
            },
        ),
        (
            "fuel only",
            Metering {
                fuel: true,
                epoch: false,
            },
        ),
        ("fuel + epoch", Metering::FULL),
    ];
    let components: Vec<(&str, Arc<OperatorComponent>)> = kinds
        .iter()
        .map(|(name, metering)| {
            let component = runtime
                .load(&guests.join("map_filter.wasm"), *metering)
                .expect("map_filter.wasm loads (run scripts/build-guests.sh)");
            (*name, Arc::new(component))
        })
        .collect();
    // Warm up the allocator and the page cache once.
    map_throughput(&components[0].1, records / 10);
    let mut figures: Vec<(&str, Figures)> = components
        .iter()
        .map(|(name, _)| {
            let zero = Figures {
                pipeline: 0.0,
                operator: 0.0,
            };
            (*name, zero)
        })
        .collect();
    // Rounds over all kinds, so that a busy moment of a shared machine hurts each alike.
    for _ in 0..RUNS {
        for ((_, component), (_, best)) in components.iter().zip(&mut figures) {
            let run = map_throughput(component, records);
            best.pipeline = best.pipeline.max(run.pipeline);
            best.operator = best.operator.max(run.operator);
        }
    }
    let base = &figures[0].1;
    for (name, f) in &figures {
        println!(
            "   {name:<13} operator {:>6.2} M records/s ({:>4.2}× unmetered)   pipeline {:>6.2} M records/s ({:>4.2}×)",
            f.operator / 1e6,
            f.operator / base.operator,
            f.pipeline / 1e6,
            f.pipeline / base.pipeline
        );
    }
    println!("   targets: fuel costs ≤ 10 %, epoch ≤ 5 % (operator time)");

    println!(
        "2. a poison record (an endless loop): how long it holds its subtask and the barriers behind it"
    );
    let hostile = runtime
        .load(&guests.join("hostile.wasm"), Metering::FULL)
        .expect("hostile.wasm loads");
    let dead_letters = tempfile::tempdir().expect("a temporary directory");
    for fuel in [100_000u64, 1_000_000, 10_000_000] {
        for batch in [1u64, 64, 1024] {
            let fail = SandboxSpec {
                fuel_per_record: Some(fuel),
                ..SandboxSpec::default()
            };
            let (held, failed) = poison_delay(&hostile, fail.clone(), batch, 0);
            // The figure is only the cost of a runaway if the poison record ran away.
            match failed {
                Err(e) if e.to_string().contains("ran out of fuel") => {}
                other => panic!("the poison record did not run out of fuel: {other:?}"),
            }
            let dead_letter = SandboxSpec {
                on_runaway: RunawayPolicy::DeadLetter {
                    dir: dead_letters.path().to_owned(),
                    replay_limit: 64 << 20,
                },
                ..fail
            };
            let letters = dead_letter_bytes(dead_letters.path());
            let (skipped, recovered) = poison_delay(&hostile, dead_letter, batch, 10_000);
            assert!(recovered.is_ok(), "dead-letter recovers: {recovered:?}");
            assert!(
                dead_letter_bytes(dead_letters.path()) > letters,
                "the poison record was not dead-lettered"
            );
            println!(
                "   fuel-per-record {fuel:>10}  batch {batch:>4}  fail: held {:>9.1?} ({:>5.0} M fuel/s)   dead-letter (10k records to replay): held {:>9.1?}",
                held,
                (fuel * batch) as f64 / held.as_secs_f64() / 1e6,
                skipped
            );
        }
    }
}
