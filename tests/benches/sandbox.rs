//! What the sandbox costs and what it bounds, measured in the same run:
//!
//! 1. throughput of the stateless map (the map-filter guest) with no metering, with
//!    epoch interruption only, with fuel only, and with fuel and epochs (the job file's
//!    default), as ratios to the unmetered engine;
//! 2. how long a poison record (an endless loop) holds its subtask, and so the barriers
//!    behind it, for several fuel budgets and batch sizes, under `on-runaway = "fail"`
//!    and `"dead-letter"`;
//! 3. what the profiler costs: the same map (fuel and epochs) with nobody asking, and
//!    while its flame graph is sampled back to back, every tick and every tenth tick, in
//!    records per second of wall time and of the subtask thread's own CPU time (where
//!    the samples are taken; a busy machine blurs it less); and what the samples cost
//!    that thread as the profiler measures it, which is below this machine's noise.
//!
//! `cargo bench -p weir-tests --bench sandbox` (after `scripts/build-guests.sh`). Set
//! `WEIR_BENCH_RECORDS` to change the records per throughput run.

mod harness;

use harness::{Figures, MAX_PARALLELISM, measure};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use weir::checkpoint::snapshot::SnapshotType;
use weir::job::{RunawayPolicy, SandboxSpec};
use weir::runtime::executor::{OperatorFactory, Partitioner};
use weir::runtime::keygroup::KeyGroupRange;
use weir::runtime::{
    Batch, CheckpointId, Operator, Record, RestoredParts, Snapshot, SubtaskIndex, TaskError,
    TaskInfo,
};
use weir::state::HeapBackend;
use weir::wasm::{EPOCH_TICK, GuestSettings, Metering, OperatorComponent, Profiler, WasmRuntime};

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

fn settings(config: &str, sandbox: SandboxSpec, profiler: &Profiler) -> Arc<GuestSettings> {
    Arc::new(GuestSettings {
        config: config.to_owned(),
        sandbox,
        local_restore: true,
        timer_limit: u64::MAX,
        profiler: profiler.clone(),
    })
}

/// One run of the map through `component`.
fn map_throughput(component: &Arc<OperatorComponent>, records: u64) -> Figures {
    map_profiled(component, records, &Profiler::default(), None)
}

/// One run of the map through `component`, its subtask registered with `profiler`; with
/// `cpu`, the on-CPU nanoseconds of the subtask's thread are added to it.
fn map_profiled(
    component: &Arc<OperatorComponent>,
    records: u64,
    profiler: &Profiler,
    cpu: Option<Arc<AtomicU64>>,
) -> Figures {
    let settings = settings(r#"{"uppercase": true}"#, SandboxSpec::default(), profiler);
    let component = component.clone();
    let factory: OperatorFactory = Arc::new(move |info| {
        let map = Box::new(component.instantiate(info, &settings, heap(info))?);
        Ok(match &cpu {
            Some(spent) => Box::new(OnCpu {
                inner: map,
                opened: None,
                spent: spent.clone(),
            }) as Box<dyn Operator>,
            None => map as Box<dyn Operator>,
        })
    });
    measure(records, 1000, factory, Partitioner::Forward)
}

/// The calling thread's time on a CPU so far, from the kernel's scheduler statistics.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("the per-thread scheduler statistics (Linux)");
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("on-CPU nanoseconds");
    Duration::from_nanos(nanos)
}

/// Adds the on-CPU time of its subtask's thread from `open` to `close` to `spent`: the
/// whole chained pipeline's, where the profiler's samples are taken.
struct OnCpu {
    inner: Box<dyn Operator>,
    opened: Option<(ThreadId, Duration)>,
    spent: Arc<AtomicU64>,
}

impl Operator for OnCpu {
    fn open(&mut self, restored: Option<RestoredParts>) -> Result<(), TaskError> {
        self.opened = Some((std::thread::current().id(), thread_cpu()));
        self.inner.open(restored)
    }
    fn process(&mut self, batch: &Batch, out: &mut Batch) -> Result<(), TaskError> {
        self.inner.process(batch, out)
    }
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        self.inner.snapshot(checkpoint, kind)
    }
    fn close(&mut self, out: &mut Batch) -> Result<(), TaskError> {
        let result = self.inner.close(out);
        if let Some((thread, at_open)) = self.opened {
            assert_eq!(thread, std::thread::current().id(), "one subtask thread");
            let spent = thread_cpu().saturating_sub(at_open);
            let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
            self.spent.fetch_add(nanos, Ordering::Relaxed);
        }
        result
    }
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
    let settings = settings(config, sandbox, &Profiler::default());
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

/// Rounds of the profiler's runs: its cost is a few per cent at most, below what five
/// rounds resolve on a shared machine.
const PROFILER_RUNS: usize = 3 * RUNS;

/// How long each flame graph of the profiler benchmark samples; the next starts at once.
const SAMPLE_WINDOW: Duration = Duration::from_millis(200);

/// What one run of the profiler benchmark measured.
struct Sampled {
    /// Wall-clock throughput.
    figures: Figures,
    /// Records per second of the subtask thread's CPU time.
    per_cpu: f64,
    /// The subtask thread's CPU time.
    cpu: Duration,
    /// Samples in the flame graphs.
    samples: u64,
    /// What they cost the subtask, as the profiler measured it.
    cost: Duration,
    /// CPU time of the thread that asked for the flame graphs.
    sampler: Duration,
}

/// One run of the map through `component` while its flame graph is sampled back to back
/// every `interval` (`None`: nobody asks).
fn sampled_throughput(
    component: &Arc<OperatorComponent>,
    records: u64,
    interval: Option<Duration>,
) -> Sampled {
    let profiler = Profiler::default();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = interval.map(|interval| {
        let (profiler, done) = (profiler.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut samples, mut cost) = (0, Duration::ZERO);
            while !done.load(Ordering::Relaxed) {
                match profiler.sample("op0", SAMPLE_WINDOW, interval) {
                    Ok(graph) => {
                        samples += graph.data.value;
                        cost += graph.cost;
                    }
                    // Not instantiated yet.
                    Err(_) => std::thread::sleep(EPOCH_TICK),
                }
            }
            (samples, cost, thread_cpu())
        })
    });
    let cpu = Arc::new(AtomicU64::new(0));
    let figures = map_profiled(component, records, &profiler, Some(cpu.clone()));
    done.store(true, Ordering::Relaxed);
    let (samples, cost, sampler) = sampler.map_or((0, Duration::ZERO, Duration::ZERO), |s| {
        s.join().expect("the sampler ends")
    });
    let cpu = Duration::from_nanos(cpu.load(Ordering::Relaxed));
    Sampled {
        figures,
        per_cpu: records as f64 / cpu.as_secs_f64(),
        cpu,
        samples,
        cost,
        sampler,
    }
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

    println!(
        "3. the profiler: the stateless map (fuel + epoch), {records} records per run, best of {PROFILER_RUNS}"
    );
    let full = components[3].1.clone();
    let modes: [(&str, Option<Duration>); 3] = [
        ("nobody asking", None),
        ("sampled/10 ms", Some(EPOCH_TICK)),
        ("sampled/100 ms", Some(EPOCH_TICK * 10)),
    ];
    let mut best: Vec<Sampled> = modes
        .iter()
        .map(|_| Sampled {
            figures: Figures {
                pipeline: 0.0,
                operator: 0.0,
            },
            per_cpu: 0.0,
            cpu: Duration::ZERO,
            samples: 0,
            cost: Duration::ZERO,
            sampler: Duration::ZERO,
        })
        .collect();
    // Interleaved rounds; the best of each figure (a shared machine only slows a run),
    // and the samples of the run with the best CPU figure.
    for _ in 0..PROFILER_RUNS {
        for ((_, interval), best) in modes.iter().zip(&mut best) {
            let run = sampled_throughput(&full, records, *interval);
            let wall = Figures {
                pipeline: best.figures.pipeline.max(run.figures.pipeline),
                operator: best.figures.operator.max(run.figures.operator),
            };
            if run.per_cpu > best.per_cpu {
                *best = run;
            }
            best.figures = wall;
        }
    }
    let base = &best[0];
    for ((name, _), run) in modes.iter().zip(&best) {
        println!(
            "   {name:<14} {:>5.2} M records per CPU-second of the subtask ({:>5.3}×)   wall: operator {:>5.2} M records/s ({:>5.3}×), pipeline {:>5.2} M records/s ({:>5.3}×)",
            run.per_cpu / 1e6,
            run.per_cpu / base.per_cpu,
            run.figures.operator / 1e6,
            run.figures.operator / base.figures.operator,
            run.figures.pipeline / 1e6,
            run.figures.pipeline / base.figures.pipeline,
        );
        if run.samples > 0 {
            let each = run.cost / u32::try_from(run.samples).unwrap_or(u32::MAX);
            println!(
                "   {:<14} {} samples took the subtask {:.1?} ({each:.1?} each, {:.2} % of its CPU time); the sampler thread used {:.1?}",
                "",
                run.samples,
                run.cost,
                run.cost.as_secs_f64() / run.cpu.as_secs_f64() * 100.0,
                run.sampler,
            );
        }
    }
}
