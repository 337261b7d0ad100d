//! Throughput of a WASM operator against the same operator compiled natively into the
//! host, measured in the same run, on one subtask per node.
//!
//! `cargo bench -p weir-tests --bench throughput` (after `scripts/build-guests.sh`).
//! Set `WEIR_BENCH_RECORDS` to change the number of records per run.

mod harness;

use harness::{BATCH, Figures, MAX_PARALLELISM, measure};
use std::sync::Arc;
use weir::job::SandboxSpec;
use weir::runtime::executor::{OperatorFactory, Partitioner};
use weir::runtime::keygroup::{KeyGroupRange, key_group_of};
use weir::runtime::{CheckpointId, Operator, Record, Snapshot, TaskError};
use weir::state::{BackendSnapshot, HeapBackend, KeyedStateBackend, StateId, StateKind};
use weir::wasm::{GuestSettings, Metering, WasmRuntime};

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
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<Snapshot, TaskError> {
        let fail = |e: weir::state::StateError| {
            TaskError::failed(weir::runtime::Fault::Host, e.to_string())
        };
        match self.backend.snapshot(checkpoint).map_err(fail)? {
            BackendSnapshot::Encoded(writer) => {
                Ok(Snapshot::State(Box::new(move || writer().map_err(fail))))
            }
            BackendSnapshot::Files(_) => Err(TaskError::failed(
                weir::runtime::Fault::Host,
                "the heap backend keeps no files",
            )),
        }
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
            .load(&guests.join("map_filter.wasm"), Metering::FULL)
            .expect("map_filter.wasm loads (run scripts/build-guests.sh)"),
    );
    let counter = Arc::new(
        runtime
            .load(&guests.join("word_count_counter.wasm"), Metering::FULL)
            .expect("word_count_counter.wasm loads"),
    );
    let config = r#"{"uppercase": true}"#;
    // The job file's defaults: fuel and a deadline on every call.
    let settings = |config: &str| {
        Arc::new(GuestSettings {
            config: config.to_owned(),
            sandbox: SandboxSpec::default(),
            local_restore: true,
        })
    };
    let (map_settings, counter_settings) = (settings(config), settings(""));
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
            Ok(Box::new(map.instantiate(info, &map_settings, heap(info))?) as Box<dyn Operator>)
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
        Ok(
            Box::new(counter.instantiate(info, &counter_settings, heap(info))?)
                as Box<dyn Operator>,
        )
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
