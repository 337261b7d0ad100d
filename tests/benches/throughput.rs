//! Throughput of a WASM operator against the same operator compiled natively into the
//! host, measured in the same run, on one subtask per node.
//!
//! `cargo bench -p weir-tests --bench throughput` (after `scripts/build-guests.sh`).
//! Set `WEIR_BENCH_RECORDS` to change the number of records per run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use weir::connectors::{BlackholeSink, Generator, GeneratorSettings};
use weir::runtime::executor::{OperatorFactory, Partitioner};
use weir::runtime::keygroup::{KeyGroupRange, key_group_of};
use weir::runtime::{
    CancelToken, CheckpointId, Executor, Graph, GraphNode, NodeBody, NodeEdge, Operator, Record,
    RunOptions, Snapshot, Source, TaskError,
};
use weir::state::{HeapBackend, KeyedStateBackend, StateId, StateKind};
use weir::wasm::WasmRuntime;

const BATCH: usize = 1024;
const MAX_PARALLELISM: u32 = 128;

fn graph(records: u64, keys: u64, operator: OperatorFactory, partitioner: Partitioner) -> Graph {
    let settings = GeneratorSettings {
        count: Some(records),
        keys,
        seed: 1,
        rate: 0,
        value_size: 0,
    };
    let source = NodeBody::Source(Arc::new(move |info| {
        Ok(Box::new(Generator::new(settings.clone(), info)) as Box<dyn Source>)
    }));
    let sink = NodeBody::Operator(Arc::new(|_| {
        Ok(Box::new(BlackholeSink::new(0)) as Box<dyn Operator>)
    }));
    let node = |id: &str, body, inputs: Vec<NodeEdge>| GraphNode {
        id: id.to_owned(),
        parallelism: 1,
        inputs,
        body,
        batch_size: BATCH,
    };
    Graph {
        nodes: vec![
            node("gen", source, vec![]),
            node(
                "op",
                NodeBody::Operator(operator),
                vec![NodeEdge {
                    from: 0,
                    partitioner,
                }],
            ),
            node(
                "sink",
                sink,
                vec![NodeEdge {
                    from: 1,
                    partitioner: Partitioner::Forward,
                }],
            ),
        ],
        max_parallelism: MAX_PARALLELISM,
    }
}

/// Throughput of one run: of the whole pipeline (three threads sharing the cores), and
/// of the operator alone (records over the time spent inside its `process` calls: what
/// one core running only the operator would do).
struct Figures {
    pipeline: f64,
    operator: f64,
}

/// Wraps an operator to add up the time spent in `process`.
struct Timed {
    inner: Box<dyn Operator>,
    nanos: Arc<AtomicU64>,
}

impl Operator for Timed {
    fn open(&mut self, restored: Option<Vec<u8>>) -> Result<(), TaskError> {
        self.inner.open(restored)
    }
    fn process(&mut self, batch: Vec<Record>, out: &mut Vec<Record>) -> Result<(), TaskError> {
        let started = Instant::now();
        let result = self.inner.process(batch, out);
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(spent, Ordering::Relaxed);
        result
    }
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<Snapshot, TaskError> {
        self.inner.snapshot(checkpoint)
    }
    fn close(&mut self, out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.inner.close(out)
    }
}

/// Runs the graph built around `operator` and measures it.
fn measure(
    records: u64,
    keys: u64,
    operator: OperatorFactory,
    partitioner: Partitioner,
) -> Figures {
    let nanos = Arc::new(AtomicU64::new(0));
    let counted = nanos.clone();
    let timed: OperatorFactory = Arc::new(move |info| {
        Ok(Box::new(Timed {
            inner: operator(info)?,
            nanos: counted.clone(),
        }) as Box<dyn Operator>)
    });
    let graph = graph(records, keys, timed, partitioner);
    let report = Executor::new(CancelToken::default())
        .run(&graph, RunOptions::default())
        .expect("the benchmark job runs");
    let through = report.nodes[1].1.records_in();
    assert_eq!(through, records, "every record reached the operator");
    Figures {
        pipeline: records as f64 / report.elapsed.as_secs_f64(),
        operator: records as f64 / (nanos.load(Ordering::Relaxed) as f64 / 1e9),
    }
}

/// The map-filter example's logic, called natively.
struct NativeMap(map_filter::MapFilter);

impl Operator for NativeMap {
    fn open(&mut self, _restored: Option<Vec<u8>>) -> Result<(), TaskError> {
        Ok(())
    }
    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Snapshot, TaskError> {
        Ok(Snapshot::State(Box::new(|| Ok(Vec::new()))))
    }
    fn process(&mut self, batch: Vec<Record>, out: &mut Vec<Record>) -> Result<(), TaskError> {
        out.extend(batch.into_iter().filter_map(|mut r| {
            r.value = self.0.apply(&r.value)?;
            Some(r)
        }));
        Ok(())
    }
    fn close(&mut self, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        Ok(())
    }
}

/// The counter example's logic, natively, on the same heap backend the guest's state
/// calls reach (values encoded as the SDK does: postcard varints).
struct NativeCounter {
    backend: HeapBackend,
    state: StateId,
}

impl Operator for NativeCounter {
    fn open(&mut self, _restored: Option<Vec<u8>>) -> Result<(), TaskError> {
        Ok(())
    }
    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<Snapshot, TaskError> {
        let writer = self.backend.snapshot();
        let fail = |e: weir::state::StateError| {
            TaskError::failed(weir::runtime::Fault::Host, e.to_string())
        };
        Ok(Snapshot::State(Box::new(move || writer().map_err(fail))))
    }
    fn process(&mut self, batch: Vec<Record>, out: &mut Vec<Record>) -> Result<(), TaskError> {
        let failed = |e: weir::state::StateError| {
            TaskError::failed(weir::runtime::Fault::Host, e.to_string())
        };
        for record in batch {
            let key = record.key.unwrap_or_default();
            let group = key_group_of(&key, MAX_PARALLELISM);
            let count = self
                .backend
                .value_get(self.state, group, &key)
                .map_err(failed)?
                .and_then(|bytes| decode_varint(&bytes))
                .unwrap_or(0)
                + 1;
            self.backend
                .value_set(self.state, group, key.clone(), encode_varint(count))
                .map_err(failed)?;
            let value = word_count_counter::format_count(&key, count);
            out.push(Record {
                key: Some(key),
                value,
                timestamp: None,
            });
        }
        Ok(())
    }
    fn close(&mut self, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        Ok(())
    }
}

fn encode_varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
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
        .unwrap_or(5_000_000);
    let guests = weir_tests::repo().join("target/guests");
    let runtime = WasmRuntime::new(None).expect("the engine starts");
    let map = Arc::new(
        runtime
            .load(&guests.join("map_filter.wasm"))
            .expect("map_filter.wasm loads (run scripts/build-guests.sh)"),
    );
    let counter = Arc::new(
        runtime
            .load(&guests.join("word_count_counter.wasm"))
            .expect("word_count_counter.wasm loads"),
    );
    let config = r#"{"uppercase": true}"#;
    let heap = |info: &weir::runtime::TaskInfo| {
        Box::new(HeapBackend::new(KeyGroupRange::for_subtask(
            info.subtask,
            info.parallelism,
            info.max_parallelism,
        )))
    };

    println!(
        "weir throughput benchmark: {records} records per run, one subtask per node, batches of {BATCH}"
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
    let wasm_map: OperatorFactory = {
        let map = map.clone();
        Arc::new(move |info| {
            Ok(Box::new(map.instantiate(info, config, heap(info))?) as Box<dyn Operator>)
        })
    };
    let native = measure(records, 1000, native_map, Partitioner::Forward);
    let wasm = measure(records, 1000, wasm_map, Partitioner::Forward);
    report(
        "stateless map: generator → map → blackhole",
        &wasm,
        &native,
        "target: wasm ≥ 5 M/s and ≥ 0.5× native",
    );

    let keys = 100_000;
    let keyed = Partitioner::KeyBy {
        max_parallelism: MAX_PARALLELISM,
    };
    let native_counter: OperatorFactory = Arc::new(move |info| {
        let mut backend = *heap(info);
        let state = backend
            .open_state("count", StateKind::Value)
            .map_err(|e| TaskError::failed(weir::runtime::Fault::Host, e.to_string()))?;
        Ok(Box::new(NativeCounter { backend, state }) as Box<dyn Operator>)
    });
    let wasm_counter: OperatorFactory = Arc::new(move |info| {
        Ok(Box::new(counter.instantiate(info, "", heap(info))?) as Box<dyn Operator>)
    });
    let native = measure(records, keys, native_counter, keyed);
    let wasm = measure(records, keys, wasm_counter, keyed);
    report(
        &format!("keyed counter (heap, {keys} keys): generator → key-by → counter → blackhole"),
        &wasm,
        &native,
        "target: wasm ≥ 2 M/s",
    );
}
