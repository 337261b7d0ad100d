//! The data plane: throughput of WASM operators against the same logic compiled natively
//! into the host, measured in the same run, on one subtask per node; the cost of
//! checkpoints every second; and the operators in Python and JavaScript.
//!
//! `cargo bench -p weir-tests --bench throughput` (after `scripts/build-guests.sh`).
//! Set `WEIR_BENCH_RECORDS` to change the number of records per run (default 20M; the
//! RocksDB runs take a quarter of it).

mod harness;
mod jobs;

use harness::{BATCH, Figures, Input, MAX_PARALLELISM, measure, measure_stages};
use jobs::percentile;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weir::checkpoint::snapshot::{SnapshotParts, SnapshotType};
use weir::job::SandboxSpec;
use weir::runtime::batch::MaybeBlobs;
use weir::runtime::executor::{OperatorFactory, Partitioner};
use weir::runtime::keygroup::{KeyGroupRange, key_group_of};
use weir::runtime::{
    Batch, Blobs, CheckpointId, KeyGroup, Operator, RestoredParts, Snapshot, TaskError,
};
use weir::state::GroupedKeys;
use weir::state::{
    BackendSnapshot, HeapBackend, KeyedStateBackend, RocksDbBackend, RocksDbOptions, StateId,
    StateKind,
};
use weir::wasm::{CompileCache, GuestSettings, Metering, Profiler, WasmRuntime};

/// The map-filter example's logic, called natively.
struct NativeMap(map_filter::MapFilter);

impl Operator for NativeMap {
    fn open(&mut self, _restored: Option<RestoredParts>) -> Result<(), TaskError> {
        Ok(())
    }
    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        Ok(Snapshot::State(Box::new(|| Ok(Vec::new()))))
    }
    fn process(&mut self, batch: &Batch, out: &mut Batch) -> Result<(), TaskError> {
        for r in batch.iter() {
            if self.0.keeps(r.value) {
                out.push_with(r.key, r.timestamp, |value| self.0.write(r.value, value));
            }
        }
        Ok(())
    }
    fn close(&mut self, _out: &mut Batch) -> Result<(), TaskError> {
        Ok(())
    }
}

/// The counter example's logic, natively, on the same backend (heap or RocksDB) the
/// guest's state calls reach, in the same shape: the batch's distinct keys read in one bulk call and
/// written back in one (values encoded as the SDK does: postcard varints).
struct NativeCounter {
    backend: Box<dyn KeyedStateBackend>,
    state: StateId,
}

impl Operator for NativeCounter {
    fn open(&mut self, _restored: Option<RestoredParts>) -> Result<(), TaskError> {
        Ok(())
    }
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        let fail = |e: weir::state::StateError| {
            TaskError::failed(weir::runtime::Fault::Host, e.to_string())
        };
        match self.backend.snapshot(checkpoint, kind).map_err(fail)? {
            BackendSnapshot::Encoded(writer) => Ok(Snapshot::Parts(Box::new(move || {
                Ok(SnapshotParts {
                    keyed: Some(writer().map_err(fail)?),
                    ..SnapshotParts::default()
                })
            }))),
            BackendSnapshot::Files(files) => Ok(Snapshot::PartsAndFiles(
                Box::new(|| Ok(SnapshotParts::default())),
                files,
            )),
        }
    }
    fn process(&mut self, batch: &Batch, out: &mut Batch) -> Result<(), TaskError> {
        let failed = |e: weir::state::StateError| {
            TaskError::failed(weir::runtime::Fault::Host, e.to_string())
        };
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut keys = Blobs::new();
        let mut slots = Vec::with_capacity(batch.len());
        for record in batch.iter() {
            let key = record.key.unwrap_or_default();
            let next = keys.len();
            let slot = *index.entry(key).or_insert(next);
            if slot == next {
                keys.push(key);
            }
            slots.push(slot);
        }
        let groups: Vec<KeyGroup> = keys
            .iter()
            .map(|k| key_group_of(k, MAX_PARALLELISM))
            .collect();
        let grouped = GroupedKeys {
            keys: &keys,
            groups: &groups,
        };
        let mut found = MaybeBlobs::default();
        self.backend
            .value_get_many(self.state, grouped, &mut found)
            .map_err(failed)?;
        let mut counts: Vec<u64> = (0..keys.len())
            .map(|i| found.get(i).and_then(decode_varint).unwrap_or(0))
            .collect();
        for (record, &slot) in batch.iter().zip(&slots) {
            counts[slot] += 1;
            let key = keys.get(slot);
            out.push_with(Some(key), record.timestamp, |value| {
                word_count_counter::write_count(value, key, counts[slot]);
            });
        }
        let mut values = Blobs::new();
        for &n in &counts {
            values.push_with(|v| encode_varint(v, n));
        }
        self.backend
            .value_set_many(self.state, grouped, &values)
            .map_err(failed)
    }
    fn close(&mut self, _out: &mut Batch) -> Result<(), TaskError> {
        Ok(())
    }
}

fn encode_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn decode_varint(bytes: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The tokenizer example's logic, natively.
#[derive(Default)]
struct NativeTokenizer {
    word: String,
}

impl Operator for NativeTokenizer {
    fn open(&mut self, _restored: Option<RestoredParts>) -> Result<(), TaskError> {
        Ok(())
    }
    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        Ok(Snapshot::State(Box::new(|| Ok(Vec::new()))))
    }
    fn process(&mut self, batch: &Batch, out: &mut Batch) -> Result<(), TaskError> {
        for record in batch.iter() {
            let line = std::str::from_utf8(record.value).unwrap_or_default();
            word_count_tokenizer::for_each_word(line, &mut self.word, |word| {
                out.push(weir::runtime::RecordRef {
                    key: Some(word.as_bytes()),
                    value: word.as_bytes(),
                    timestamp: record.timestamp,
                });
            });
        }
        Ok(())
    }
    fn close(&mut self, _out: &mut Batch) -> Result<(), TaskError> {
        Ok(())
    }
}

/// A job file of `source` → `op` (behind `partition`) → blackhole, with `extra` tables.
fn job_file(source: &str, ops: &[(&Path, &str)], extra: &str) -> String {
    let mut text = format!("[job]\nname = \"bench\"\n{extra}\n{source}\n");
    let mut input = "gen".to_owned();
    for (i, (wasm, partition)) in ops.iter().enumerate() {
        text.push_str(&format!(
            "[[operator]]\nid = \"op{i}\"\nwasm = \"{}\"\ninputs = [\"{input}\"]\npartition = \"{partition}\"\n\n",
            wasm.display()
        ));
        input = format!("op{i}");
    }
    text.push_str(&format!(
        "[[sink]]\nid = \"out\"\nkind = \"blackhole\"\ninputs = [\"{input}\"]\n"
    ));
    text
}

fn generator(records: u64, keys: u64) -> String {
    format!("[[source]]\nid = \"gen\"\nkind = \"generator\"\ncount = {records}\nkeys = {keys}\n")
}

/// Records per second of a whole job run in-process, and its checkpoints' sync phases.
struct JobFigures {
    rate: f64,
    sync: Vec<Duration>,
}

fn run_job_file(
    text: &str,
    records: u64,
    wasm: &WasmRuntime,
    io: &tokio::runtime::Runtime,
) -> JobFigures {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = text.replace("@DIR@", &dir.path().display().to_string());
    let (elapsed, spec) = jobs::run(&text, dir.path(), wasm, io);
    let stored = if spec.checkpointing.is_some() {
        jobs::checkpoints(&spec, dir.path(), io)
    } else {
        Vec::new()
    };
    let mut sync: Vec<Duration> = stored
        .iter()
        .flat_map(|m| {
            m.tasks
                .iter()
                .filter(|t| t.node.starts_with("op"))
                .map(|t| t.stats.sync_duration)
                .collect::<Vec<_>>()
        })
        .collect();
    sync.sort();
    JobFigures {
        rate: records as f64 / elapsed.as_secs_f64(),
        sync,
    }
}

fn report(name: &str, wasm: &Figures, native: &Figures, target: &str) {
    println!("{name}   ({target})");
    for (what, w, n) in [
        ("pipeline", wasm.pipeline, native.pipeline),
        ("operator, one core", wasm.operator, native.operator),
    ] {
        println!(
            "  {what:<20} wasm {:>6.2} M records/s   native {:>6.2} M records/s   wasm/native {:.2}",
            w / 1e6,
            n / 1e6,
            w / n
        );
    }
}

/// The allocator of the `weir` binary, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000);
    let guests = weir_tests::repo().join("target/guests");
    let runtime = WasmRuntime::new(CompileCache::default_location()).expect("the engine starts");
    let load = |name: &str| {
        Arc::new(
            runtime
                .load(&guests.join(format!("{name}.wasm")), Metering::FULL)
                .unwrap_or_else(|e| panic!("{name}.wasm loads (run scripts/build-guests.sh): {e}")),
        )
    };
    let (map, counter, tokenizer) = (
        load("map_filter"),
        load("word_count_counter"),
        load("word_count_tokenizer"),
    );
    let config = r#"{"uppercase": true}"#;
    // The job file's defaults: fuel and a deadline on every call.
    let settings = |config: &str, local_restore: bool| {
        Arc::new(GuestSettings {
            config: config.to_owned(),
            sandbox: SandboxSpec::default(),
            local_restore,
            timer_limit: u64::MAX,
            profiler: Profiler::default(),
        })
    };
    let groups = |info: &weir::runtime::TaskInfo| {
        KeyGroupRange::for_subtask(info.subtask, info.parallelism, info.max_parallelism)
    };
    let rocks_dir = tempfile::tempdir().expect("a temporary directory");
    let rocks_root = rocks_dir.path().to_owned();
    let backend =
        move |rocks: bool, info: &weir::runtime::TaskInfo| -> Box<dyn KeyedStateBackend> {
            if rocks {
                let instance = format!("{}-{}", info.node, unique());
                let options = RocksDbOptions::new(rocks_root.join(&instance), instance);
                Box::new(RocksDbBackend::open(groups(info), options).expect("RocksDB opens"))
            } else {
                Box::new(HeapBackend::new(groups(info), u64::MAX))
            }
        };
    let wasm_op = |component: &Arc<weir::wasm::OperatorComponent>, config: &str, rocks: bool| {
        let component = component.clone();
        let settings = settings(config, !rocks);
        let backend = backend.clone();
        let factory: OperatorFactory = Arc::new(move |info| {
            Ok(
                Box::new(component.instantiate(info, &settings, backend(rocks, info))?)
                    as Box<dyn Operator>,
            )
        });
        factory
    };
    let native_counter = |rocks: bool| {
        let backend = backend.clone();
        let factory: OperatorFactory = Arc::new(move |info| {
            let mut backend = backend(rocks, info);
            let state = backend
                .open_state("count", StateKind::Value)
                .map_err(|e| TaskError::failed(weir::runtime::Fault::Host, e.to_string()))?;
            Ok(Box::new(NativeCounter { backend, state }) as Box<dyn Operator>)
        });
        factory
    };
    let keyed = Partitioner::KeyBy {
        max_parallelism: MAX_PARALLELISM,
    };
    let keys = 100_000;

    println!(
        "weir data-plane benchmark: one subtask per node, batches of {BATCH}, forward edges chained; baselines are the same logic compiled natively into the host"
    );
    // Warm up the allocator and the page cache once.
    let warm: OperatorFactory =
        Arc::new(
            |_| Ok(Box::new(NativeMap(map_filter::MapFilter::default())) as Box<dyn Operator>),
        );
    measure(records / 10, 1000, warm, Partitioner::Forward);

    let native_map: OperatorFactory = Arc::new(move |_| {
        let filter = serde_json::from_str::<map_filter::MapFilter>(config)
            .map_err(|e| TaskError::failed(weir::runtime::Fault::User, e.to_string()))?;
        Ok(Box::new(NativeMap(filter)) as Box<dyn Operator>)
    });
    let native = measure(records, 1000, native_map, Partitioner::Forward);
    let wasm = measure(
        records,
        1000,
        wasm_op(&map, config, false),
        Partitioner::Forward,
    );
    report(
        &format!("1. stateless map, {records} records: generator → map → blackhole"),
        &wasm,
        &native,
        "target: wasm pipeline ≥ 12 M/s and ≥ 0.7× native",
    );

    let native = measure(records, keys, native_counter(false), keyed);
    let wasm = measure(records, keys, wasm_op(&counter, "", false), keyed);
    report(
        &format!(
            "2. keyed counter (heap, {keys} keys), {records} records: generator → key-by → counter → blackhole"
        ),
        &wasm,
        &native,
        "target: wasm pipeline ≥ 6 M/s and ≥ 0.7× native",
    );

    let rocks_records = records / 4;
    let native = measure(rocks_records, keys, native_counter(true), keyed);
    let wasm = measure(rocks_records, keys, wasm_op(&counter, "", true), keyed);
    report(
        &format!("3. keyed counter (RocksDB, {keys} keys), {rocks_records} records"),
        &wasm,
        &native,
        "target: wasm pipeline ≥ 1 M/s and ≥ 0.7× native",
    );

    let text_dir = tempfile::tempdir().expect("a temporary directory");
    let bundled = std::fs::read_to_string(weir_tests::repo().join("examples/word-count/input.txt"))
        .expect("the bundled text");
    let copies = 2000;
    let input = text_dir.path().join("input.txt");
    std::fs::write(&input, bundled.repeat(copies)).expect("the input");
    let lines = Input::Files(vec![input.clone()]);
    let native_tokenizer: OperatorFactory =
        Arc::new(|_| Ok(Box::new(NativeTokenizer::default()) as Box<dyn Operator>));
    let native = measure_stages(
        &lines,
        vec![
            (native_tokenizer, Partitioner::Forward),
            (native_counter(false), keyed),
        ],
    );
    let wasm = measure_stages(
        &lines,
        vec![
            (wasm_op(&tokenizer, "", false), Partitioner::Forward),
            (wasm_op(&counter, "", false), keyed),
        ],
    );
    report(
        &format!(
            "4. word count over the bundled text ×{copies} (lines in): file → tokenizer → key-by → counter → blackhole"
        ),
        &wasm,
        &native,
        "target: wasm ≥ 0.7× native",
    );

    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let counter_path = guests.join("word_count_counter.wasm");
    println!("5. checkpoints every 1 s against none, the whole job in-process (weir run)");
    for (backend_name, state, n) in [
        ("heap", "[state]\nbackend = \"heap\"\n", records),
        (
            "rocksdb",
            "[state]\nbackend = \"rocksdb\"\ndir = \"@DIR@/rocks\"\n",
            records / 4,
        ),
    ] {
        let job = |checkpoints: bool| {
            let ck = if checkpoints {
                "[checkpointing]\ninterval = \"1s\"\ndir = \"@DIR@/checkpoints\"\nretention = \"retain-on-cancellation\"\nnum-retained = 1000\n"
            } else {
                ""
            };
            job_file(
                &generator(n, keys),
                &[(&counter_path, "key-by")],
                &format!("{ck}{state}"),
            )
        };
        let without = run_job_file(&job(false), n, &runtime, &io);
        let with = run_job_file(&job(true), n, &runtime, &io);
        println!(
            "  {backend_name:<8} without {:>6.2} M records/s   with {:>6.2} M records/s   with/without {:.2}   sync phase p50 {:?} p99 {:?} over {} subtask snapshots   (target ≥ 0.95; RocksDB sync p99 ≤ 10 ms)",
            without.rate / 1e6,
            with.rate / 1e6,
            with.rate / without.rate,
            percentile(&with.sync, 0.5),
            percentile(&with.sync, 0.99),
            with.sync.len(),
        );
    }

    let words = 2_000_000;
    println!(
        "6. keyed counters in other languages, {words} records over {keys} keys, heap, the whole job in-process"
    );
    let rust = run_job_file(
        &job_file(&generator(words, keys), &[(&counter_path, "key-by")], ""),
        words,
        &runtime,
        &io,
    );
    println!("  rust        {:>8.0} records/s", rust.rate);
    for (name, before) in [("python_counter", 65_000.0), ("js_counter", 17_000.0)] {
        let path = guests.join(format!("{name}.wasm"));
        let figures = run_job_file(
            &job_file(&generator(words, keys), &[(&path, "key-by")], ""),
            words,
            &runtime,
            &io,
        );
        println!(
            "  {name:<14} {:>8.0} records/s   {:.1}× the {before:.0} records/s of weir:operator@0.1.0   rust/{name} {:.1}   (target ≥ 5×)",
            figures.rate,
            figures.rate / before,
            rust.rate / figures.rate,
        );
    }
}

/// A name no other backend of this run has.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
