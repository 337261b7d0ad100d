//! The RocksDB state backend, measured with the real stack and printed with its
//! baselines from the same run.
//!
//! `cargo bench -p weir-tests --bench rocksdb` (after `scripts/build-guests.sh`).
//! `WEIR_BENCH_STATE_MIB` sets the state of part 3 (default 1024).
//!
//! 1. A keyed counter through the backend alone, one core: RocksDB vs heap records/s.
//! 2. The WASM keyed counter pipeline with RocksDB vs heap state, checkpointing every
//!    second: records/s, and the sync phase of the RocksDB checkpoints (p50/p99).
//! 3. About 1 GiB of state with 1 % of it changed per interval: the bytes and time of an
//!    incremental checkpoint against a full one (sync and asynchronous phase, file
//!    storage).

use std::sync::Arc;
mod jobs;

use jobs::{checkpoints, percentile, run};
use std::time::{Duration, Instant};
use weir::checkpoint::driver::store_snapshot;
use weir::runtime::keygroup::{KeyGroupRange, key_group_of};
use weir::runtime::{CheckpointId, SubtaskIndex};
use weir::state::{
    BackendSnapshot, HeapBackend, KeyedStateBackend, RocksDbBackend, RocksDbOptions, StateKind,
};
use weir::storage::{CheckpointStorage, FsStorage};
use weir::wasm::{CompileCache, WasmRuntime};

/// The allocator of the `weir` binary, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_PARALLELISM: u32 = 128;

fn key(k: u64) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// `records` get-and-set updates of a counter over `keys` keys: records/s.
fn counter_loop(backend: &mut dyn KeyedStateBackend, keys: u64, records: u64) -> f64 {
    let state = backend
        .open_state("count", StateKind::Value)
        .expect("a state");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    for _ in 0..records {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = key(x % keys);
        let group = key_group_of(&key, MAX_PARALLELISM);
        let count = backend
            .value_get(state, group, &key)
            .expect("a read")
            .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
        backend
            .value_set(state, group, key, (count + 1).to_le_bytes().to_vec())
            .expect("a write");
    }
    records as f64 / started.elapsed().as_secs_f64()
}

fn rocksdb(dir: &std::path::Path, incremental: bool) -> RocksDbBackend {
    let mut options = RocksDbOptions::new(dir.join("db"), format!("bench-{incremental}"));
    options.incremental = incremental;
    let range = KeyGroupRange::for_subtask(SubtaskIndex(0), 1, MAX_PARALLELISM);
    RocksDbBackend::open(range, options).expect("RocksDB opens")
}

/// One checkpoint of `backend` stored in `storage`: (sync time, async time, bytes
/// written, bytes of the whole state).
fn checkpoint(
    backend: &mut RocksDbBackend,
    id: CheckpointId,
    storage: &Arc<dyn CheckpointStorage>,
    io: &tokio::runtime::Runtime,
) -> (Duration, Duration, u64, u64) {
    let started = Instant::now();
    let Ok(BackendSnapshot::Files(files)) =
        backend.snapshot(id, weir::checkpoint::snapshot::SnapshotType::Checkpoint)
    else {
        panic!("RocksDB snapshots are files");
    };
    let sync = started.elapsed();
    let started = Instant::now();
    let stored = io
        .block_on(store_snapshot(
            storage.clone(),
            id,
            "bench-0",
            "rocksdb",
            Box::new(|| Ok(weir::checkpoint::snapshot::SnapshotParts::default())),
            Some(files),
        ))
        .expect("the checkpoint is stored");
    let asynchronous = started.elapsed();
    backend.checkpoint_complete(id);
    (sync, asynchronous, stored.uploaded, stored.full_size)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Part 3: fills `state_mib` of state, then per interval changes 1 % of the keys and
/// checkpoints; returns the figures of the intervals after the first.
fn incremental_vs_full(
    state_mib: u64,
    incremental: bool,
    io: &tokio::runtime::Runtime,
) -> Vec<(Duration, Duration, u64, u64)> {
    const VALUE: usize = 1000;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let keys = state_mib * (1 << 20) / VALUE as u64;
    let mut backend = rocksdb(dir.path(), incremental);
    let state = backend
        .open_state("values", StateKind::Value)
        .expect("a state");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut value = |round: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut v = vec![0u8; VALUE];
        for (i, chunk) in v.chunks_mut(8).enumerate() {
            let word = x.wrapping_mul(i as u64 + 1).wrapping_add(round);
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
        v
    };
    for k in 0..keys {
        let key = key(k);
        let group = key_group_of(&key, MAX_PARALLELISM);
        backend
            .value_set(state, group, key, value(0))
            .expect("a write");
    }
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(FsStorage::new(dir.path().join("checkpoints"), "bench").expect("storage"));
    io.block_on(storage.check()).expect("the storage is usable");
    let mut figures = Vec::new();
    for round in 1..=4u64 {
        if round > 1 {
            for i in 0..keys / 100 {
                let key = key((i * 7919 + round * 104_729) % keys);
                let group = key_group_of(&key, MAX_PARALLELISM);
                backend
                    .value_set(state, group, key, value(round))
                    .expect("a write");
            }
        }
        let figure = checkpoint(&mut backend, CheckpointId(round), &storage, io);
        if round > 1 {
            figures.push(figure);
        }
    }
    figures
}

fn main() {
    let guests = weir_tests::repo().join("target/guests");
    let counter = guests.join("word_count_counter.wasm");
    assert!(
        counter.exists(),
        "build the guests first: scripts/build-guests.sh"
    );
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    println!("1. keyed counter through the backend alone, 100k keys, 3M updates, one core");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rocks = counter_loop(&mut rocksdb(dir.path(), true), 100_000, 3_000_000);
    let range = KeyGroupRange::for_subtask(SubtaskIndex(0), 1, MAX_PARALLELISM);
    let heap = counter_loop(&mut HeapBackend::new(range, u64::MAX), 100_000, 3_000_000);
    println!(
        "   RocksDB {:.0}k records/s   heap {:.0}k records/s   ratio {:.2}   (target ≥ 300k/s)",
        rocks / 1e3,
        heap / 1e3,
        rocks / heap
    );

    println!(
        "2. WASM keyed counter (generator → counter → blackhole), 100k keys, 4M records, checkpoint every 1s"
    );
    let wasm = WasmRuntime::new(CompileCache::default_location()).expect("the engine starts");
    let job = |backend: &str| {
        format!(
            r#"[job]
name = "rocks-bench"
[checkpointing]
interval = "1s"
dir = "checkpoints"
num-retained = 100
retention = "retain-on-cancellation"
[state]
backend = "{backend}"
dir = "state"
[[source]]
id = "gen"
kind = "generator"
count = 4000000
keys = 100000
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
        )
    };
    let records = 4_000_000.0;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (heap_time, _) = run(&job("heap"), dir.path(), &wasm, &io);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (rocks_time, spec) = run(&job("rocksdb"), dir.path(), &wasm, &io);
    let mut sync: Vec<Duration> = checkpoints(&spec, dir.path(), &io)
        .iter()
        .flat_map(|c| {
            c.tasks
                .iter()
                .filter(|t| t.node == "count")
                .map(|t| t.stats.sync_duration)
        })
        .collect();
    sync.sort();
    println!(
        "   RocksDB {:.0}k records/s   heap {:.0}k records/s   ratio {:.2}",
        records / rocks_time.as_secs_f64() / 1e3,
        records / heap_time.as_secs_f64() / 1e3,
        heap_time.as_secs_f64() / rocks_time.as_secs_f64()
    );
    println!(
        "   RocksDB sync phase over {} checkpoints: p50 {:.2?}  p99 {:.2?}   (target p99 ≤ 10 ms)",
        sync.len(),
        percentile(&sync, 0.5),
        percentile(&sync, 0.99)
    );

    let state_mib = std::env::var("WEIR_BENCH_STATE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    println!(
        "3. {state_mib} MiB of state (1000-byte values), 1 % of the keys changed per interval, file storage"
    );
    let mut uploaded = Vec::new();
    for incremental in [true, false] {
        let figures = incremental_vs_full(state_mib, incremental, &io);
        let n = figures.len() as u32;
        let sync = figures.iter().map(|f| f.0).sum::<Duration>() / n;
        let asynchronous = figures.iter().map(|f| f.1).sum::<Duration>() / n;
        let written = figures.iter().map(|f| f.2).sum::<u64>() / u64::from(n);
        let whole = figures.iter().map(|f| f.3).sum::<u64>() / u64::from(n);
        println!(
            "   {:<12} uploaded {:>8.1} MiB of {:>7.1} MiB   sync {:>8.2?}   async {:>8.2?}   (mean of {n} intervals)",
            if incremental { "incremental" } else { "full" },
            mib(written),
            mib(whole),
            sync,
            asynchronous
        );
        uploaded.push((written, asynchronous));
    }
    if let [(inc_bytes, inc_time), (full_bytes, full_time)] = uploaded[..] {
        println!(
            "   incremental / full: bytes {:.3}   async time {:.3}",
            inc_bytes as f64 / full_bytes.max(1) as f64,
            inc_time.as_secs_f64() / full_time.as_secs_f64().max(1e-9)
        );
    }
}
