//! The synchronous phase of state backend snapshots, measured at the backend alone (no
//! pipeline, no guests), RocksDB against the heap backend in the same run.
//!
//! `cargo bench -p weir-host --bench rocksdb_sync_phase`. `WEIR_BENCH_KEYS` sets the keys
//! updated between snapshots (default 100000), `WEIR_BENCH_SNAPSHOTS` how many snapshots
//! are timed (default 60) and `WEIR_BENCH_INTERVAL_MS` the checkpoint interval (default
//! 500).
//!
//! Each interval updates every key once as a keyed counter does (a get, then a set),
//! times `snapshot()`, and hands the snapshot to the asynchronous phase on an I/O runtime
//! (incremental, file storage) as a subtask does, then waits out the interval. The next
//! interval starts while that phase may still run, so a synchronous phase that waits for
//! it shows in the figures.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use weir::checkpoint::driver::store_snapshot;
use weir::checkpoint::snapshot::{SnapshotParts, SnapshotType};
use weir::runtime::keygroup::{KeyGroupRange, key_group_of};
use weir::runtime::{CheckpointId, Fault, PartsWriter, SubtaskIndex, TaskError};
use weir::state::{
    BackendSnapshot, HeapBackend, KeyedStateBackend, RocksDbBackend, RocksDbOptions, StateKind,
};
use weir::storage::{CheckpointStorage, FsStorage};
use weir_tests::percentile;

/// The allocator of the `weir` binary, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_PARALLELISM: u32 = 128;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one backend's run measured.
struct Figures {
    sync: Vec<Duration>,
    asynchronous: Vec<Duration>,
    updates_per_s: f64,
}

/// What both backends' runs share.
struct Setup<'a> {
    keys: u64,
    snapshots: u64,
    interval: Duration,
    range: KeyGroupRange,
    storage: &'a Arc<dyn CheckpointStorage>,
    io: &'a tokio::runtime::Runtime,
}

fn run(backend: &mut dyn KeyedStateBackend, name: &'static str, setup: &Setup<'_>) -> Figures {
    let Setup {
        keys,
        snapshots,
        interval,
        range,
        storage,
        io,
    } = *setup;
    let state = backend
        .open_state("count", StateKind::Value)
        .expect("a state");
    let keys: Vec<(Vec<u8>, _)> = (0..keys)
        .map(|k| {
            let key = format!("key-{k}").into_bytes();
            let group = key_group_of(&key, MAX_PARALLELISM);
            (key, group)
        })
        .collect();
    let (done_tx, done_rx) = mpsc::channel();
    let (mut sync, mut asynchronous) = (Vec::new(), Vec::new());
    let mut updating = Duration::ZERO;
    // One untimed round first, so that every timed one updates keys that exist.
    for round in 0..=snapshots {
        let started = Instant::now();
        // Completed checkpoints are confirmed on the subtask's thread, as the
        // coordinator's `Complete` arrives there; the first one is untimed.
        while let Ok((id, took)) = done_rx.try_recv() {
            backend.checkpoint_complete(id);
            if id.0 > 1 {
                asynchronous.push(took);
            }
        }
        for (key, group) in &keys {
            let count = backend
                .value_get(state, *group, key)
                .expect("a read")
                .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
            backend
                .value_set(
                    state,
                    *group,
                    key.clone(),
                    (count + 1).to_le_bytes().to_vec(),
                )
                .expect("a write");
        }
        let updated = started.elapsed();
        let id = CheckpointId(round + 1);
        let before = Instant::now();
        let snapshot = backend
            .snapshot(id, SnapshotType::Checkpoint)
            .expect("a snapshot");
        let took = before.elapsed();
        if round > 0 {
            sync.push(took);
            updating += updated;
        }
        let (writer, files): (PartsWriter, _) = match snapshot {
            BackendSnapshot::Encoded(encode) => (
                Box::new(move || {
                    let keyed =
                        encode().map_err(|e| TaskError::failed(Fault::Host, e.to_string()))?;
                    Ok(SnapshotParts {
                        keyed: Some(keyed),
                        key_groups: Some(range),
                        ..SnapshotParts::default()
                    })
                }),
                None,
            ),
            BackendSnapshot::Files(files) => (
                Box::new(move || {
                    Ok(SnapshotParts {
                        key_groups: Some(range),
                        ..SnapshotParts::default()
                    })
                }),
                Some(files),
            ),
        };
        let (storage, done) = (storage.clone(), done_tx.clone());
        io.spawn(async move {
            let started = Instant::now();
            store_snapshot(storage, id, "bench-0", name, writer, files)
                .await
                .expect("the snapshot is stored");
            let _ = done.send((id, started.elapsed()));
        });
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
    drop(done_tx);
    for (id, took) in done_rx {
        if id.0 > 1 {
            asynchronous.push(took);
        }
    }
    sync.sort();
    asynchronous.sort();
    Figures {
        sync,
        asynchronous,
        updates_per_s: (keys.len() as u64 * snapshots) as f64 / updating.as_secs_f64(),
    }
}

fn main() {
    let keys = env_or("WEIR_BENCH_KEYS", 100_000);
    let snapshots = env_or("WEIR_BENCH_SNAPSHOTS", 60);
    let interval = Duration::from_millis(env_or("WEIR_BENCH_INTERVAL_MS", 500));
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(FsStorage::new(dir.path().join("checkpoints"), "bench").expect("storage"));
    io.block_on(storage.check()).expect("the storage is usable");
    let range = KeyGroupRange::for_subtask(SubtaskIndex(0), 1, MAX_PARALLELISM);

    println!(
        "sync phase of snapshot(), {keys} keys updated between snapshots, {snapshots} snapshots, \
         every {interval:?}, incremental, file storage"
    );
    let mut options = RocksDbOptions::new(dir.path().join("db"), "bench");
    options.incremental = true;
    let mut rocks = RocksDbBackend::open(range, options).expect("RocksDB opens");
    let setup = Setup {
        keys,
        snapshots,
        interval,
        range,
        storage: &storage,
        io: &io,
    };
    let rocks = run(&mut rocks, "rocksdb", &setup);
    let heap = run(&mut HeapBackend::new(range, u64::MAX), "heap", &setup);
    for (name, f) in [("RocksDB", &rocks), ("heap", &heap)] {
        println!(
            "   {name:<8} sync p50 {:>9.2?}  p99 {:>9.2?}   async p50 {:>9.2?}  p99 {:>9.2?}   \
             updates {:.0}k/s",
            percentile(&f.sync, 0.5),
            percentile(&f.sync, 0.99),
            percentile(&f.asynchronous, 0.5),
            percentile(&f.asynchronous, 0.99),
            f.updates_per_s / 1e3
        );
    }
    println!(
        "   RocksDB / heap: sync p99 {:.2}   updates/s {:.2}   (target: RocksDB sync p99 ≤ 10 ms)",
        percentile(&rocks.sync, 0.99).as_secs_f64()
            / percentile(&heap.sync, 0.99).as_secs_f64().max(1e-9),
        rocks.updates_per_s / heap.updates_per_s
    );
}
