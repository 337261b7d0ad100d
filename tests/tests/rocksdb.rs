//! The RocksDB state backend end to end: incremental checkpoints upload only what
//! changed, retention keeps every shared file a retained checkpoint needs, state larger
//! than the process's memory works, and a checkpoint of the other backend is refused.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;
use weir::checkpoint::metadata::{CheckpointMetadata, TaskState};
use weir::checkpoint::snapshot::{KeyedPart, StateParts};
use weir::storage::{CheckpointStorage, FsStorage};
use weir_tests::{Scratch, describe, guest, peak_rss_kib, toml_path};

/// Every completed checkpoint of job `job` under `<scratch>/checkpoints`, oldest first.
fn checkpoints(scratch: &Scratch, job: &str) -> Vec<CheckpointMetadata> {
    let storage =
        FsStorage::new(scratch.path().join("checkpoints"), job).expect("a valid job directory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut out = Vec::new();
        for listed in storage.list().await.expect("the checkpoints list") {
            if listed.has_metadata {
                let bytes = storage
                    .read_metadata(listed.checkpoint)
                    .await
                    .expect("committed metadata reads back");
                out.push(CheckpointMetadata::from_bytes(&bytes).expect("metadata parses"));
            }
        }
        out
    })
}

/// A keyed-state job: a fast bounded `fill` of `keys` keys, then a slow `trickle` that
/// changes a few keys per checkpoint, into the `latest` guest.
fn fill_and_trickle(state: &str, keys: u64) -> String {
    format!(
        r#"[job]
name = "incremental"

[checkpointing]
interval = "200ms"
dir = "checkpoints"
num-retained = 4
retention = "retain-on-cancellation"

{state}

[[source]]
id = "fill"
kind = "generator"
count = {keys}
keys = {keys}
value-size = 100

[[source]]
id = "trickle"
kind = "generator"
seed = 7
count = 400
keys = {keys}
rate = 200

[[operator]]
id = "latest"
wasm = "{latest}"
inputs = ["fill", "trickle"]
partition = "key-by"

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["latest"]
"#,
        latest = toml_path(&guest("latest")),
    )
}

/// Runs `job` to its end and returns its retained checkpoints.
fn run_to_end(scratch: &Scratch, job: &str) -> Vec<CheckpointMetadata> {
    let path = scratch.write("job.toml", job);
    let output = scratch.run(&["run", path.to_str().unwrap_or_default()]);
    assert!(output.status.success(), "{}", describe(&output));
    checkpoints(scratch, "incremental")
}

fn sizes(m: &CheckpointMetadata) -> (u64, u64) {
    (m.state_size(), m.checkpointed_size())
}

#[test]
fn an_incremental_checkpoint_of_a_small_change_uploads_far_less_than_the_state() {
    let scratch = Scratch::new();
    let retained = run_to_end(
        &scratch,
        &fill_and_trickle("[state]\nbackend = \"rocksdb\"\ndir = \"state\"", 50_000),
    );
    assert!(retained.len() >= 2, "too few checkpoints retained");
    for m in &retained {
        let (state, written) = sizes(m);
        println!(
            "checkpoint {}: state {state} B, uploaded {written} B",
            m.checkpoint
        );
    }
    // Every retained checkpoint comes after the fill; compactions may rewrite files in
    // one of them, but the smallest is a handful of keys. Only checkpoints taken while
    // the operator ran count: the final one, after it closed, uploads no state of it at
    // all, so it would pass for a backend that uploads everything every time.
    let running: Vec<&CheckpointMetadata> = retained
        .iter()
        .filter(|m| {
            m.tasks.iter().any(|t| {
                matches!(
                    &t.state,
                    TaskState::Parts(StateParts {
                        keyed: Some(KeyedPart::Native { .. }),
                        ..
                    })
                )
            })
        })
        .collect();
    assert!(
        running.len() >= 2,
        "too few checkpoints retained while the operator ran"
    );
    let smallest = running.iter().map(|m| m.checkpointed_size()).min();
    let state = retained.iter().map(|m| m.state_size()).max().unwrap_or(0);
    assert!(state > 1_000_000, "the state is only {state} bytes");
    assert!(
        smallest.is_some_and(|s| s * 10 < state),
        "the smallest incremental checkpoint uploaded {smallest:?} of {state} bytes"
    );
}

#[test]
fn a_full_rocksdb_checkpoint_uploads_the_whole_state_every_time() {
    let scratch = Scratch::new();
    let retained = run_to_end(
        &scratch,
        &fill_and_trickle(
            "[state]\nbackend = \"rocksdb\"\nincremental = false\ndir = \"state\"",
            20_000,
        ),
    );
    assert!(!retained.is_empty());
    for m in &retained {
        let (state, written) = sizes(m);
        assert_eq!(state, written, "checkpoint {} is not full", m.checkpoint);
        assert!(
            m.tasks
                .iter()
                .all(|t| t.state.shared_files().next().is_none()),
            "a full checkpoint references shared files"
        );
    }
}

#[test]
fn retention_keeps_exactly_the_shared_files_that_retained_checkpoints_reference() {
    let scratch = Scratch::new();
    let retained = run_to_end(
        &scratch,
        &fill_and_trickle("[state]\nbackend = \"rocksdb\"\ndir = \"state\"", 20_000),
    );
    let referenced: BTreeSet<String> = retained
        .iter()
        .flat_map(|m| m.files().shared)
        .map(|f| f.0)
        .collect();
    assert!(!referenced.is_empty(), "no shared files referenced");
    let shared_dir = scratch.path().join("checkpoints/incremental/shared");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&shared_dir)
        .expect("the shared directory exists")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let missing: Vec<_> = referenced.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "retention deleted needed files: {missing:?}"
    );
    let leaked: Vec<_> = on_disk.difference(&referenced).collect();
    assert!(
        leaked.is_empty(),
        "shared files no retained checkpoint references were left: {leaked:?}"
    );
}

#[test]
fn state_larger_than_the_processs_memory_lives_in_rocksdb() {
    let scratch = Scratch::new();
    // About 780k distinct keys of 500-byte values: nearly 400 MB of state. The backend's
    // memory is bounded far below that: a 64 MiB block cache and 32 MiB of memtables.
    let job = scratch.write(
        "job.toml",
        format!(
            r#"[job]
name = "large"

[checkpointing]
interval = "2s"
dir = "checkpoints"
num-retained = 10
retention = "retain-on-cancellation"

[state]
backend = "rocksdb"
dir = "state"

[[source]]
id = "gen"
kind = "generator"
count = 1500000
keys = 1000000
value-size = 500

[[operator]]
id = "latest"
wasm = "{latest}"
inputs = ["gen"]
partition = "key-by"

[[sink]]
id = "out"
kind = "blackhole"
inputs = ["latest"]
"#,
            latest = toml_path(&guest("latest")),
        ),
    );
    let mut child = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts");
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        if let Some(status) = child.try_wait().expect("weir is waited for") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "weir failed: {status}");
    // The final checkpoint comes after the operator closed, with no state of its own:
    // the largest is the one before it.
    let state = checkpoints(&scratch, "large")
        .iter()
        .map(CheckpointMetadata::state_size)
        .max()
        .unwrap_or(0);
    println!("peak RSS {peak} KiB, state {} KiB", state / 1024);
    assert!(state > 300 << 20, "the state is only {state} bytes");
    assert!(
        peak * 1024 < state,
        "peak RSS {peak} KiB is not below the state's {} KiB",
        state / 1024
    );
}

/// Runs `from` (a job file) to its end in a scratch of its own, then `to` from the newest
/// retained checkpoint that holds keyed state, by path (`latest` of the finished job
/// would only say that it finished).
fn restore_into(from: &str, to: &str) -> Output {
    let scratch = Scratch::new();
    let retained = run_to_end(&scratch, from);
    let newest = retained
        .iter()
        .rev()
        .find(|m| {
            m.tasks.iter().any(|t| {
                matches!(
                    &t.state,
                    TaskState::Parts(StateParts { keyed: Some(_), .. })
                )
            })
        })
        .expect("a retained checkpoint with keyed state")
        .checkpoint;
    let path = scratch.write("job.toml", to);
    let checkpoint = scratch
        .path()
        .join(format!("checkpoints/incremental/chk-{newest}"));
    scratch.run(&[
        "run",
        path.to_str().unwrap_or_default(),
        "--from-checkpoint",
        checkpoint.to_str().unwrap_or_default(),
    ])
}

/// The heap backend's checkpoints are in the canonical format, which RocksDB reads;
/// RocksDB's are its native files, which the heap backend refuses with the way out.
#[test]
fn a_heap_checkpoint_restores_into_rocksdb_and_a_rocksdb_one_is_refused_by_the_heap_with_the_reason()
 {
    let heap = fill_and_trickle("[state]\nbackend = \"heap\"", 1_000);
    let rocks = fill_and_trickle("[state]\nbackend = \"rocksdb\"\ndir = \"state\"", 1_000);

    let output = restore_into(&heap, &rocks);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("restoring from checkpoint"), "{stderr}");

    let output = restore_into(&rocks, &heap);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("in rocksdb's native format")
            && stderr.contains("uses the heap state backend")
            && stderr.contains("canonical savepoint"),
        "{stderr}"
    );
}

/// The working directory is left clean when the job ends.
#[test]
fn the_backend_leaves_no_working_files_behind() {
    let scratch = Scratch::new();
    run_to_end(
        &scratch,
        &fill_and_trickle("[state]\nbackend = \"rocksdb\"\ndir = \"state\"", 1_000),
    );
    let state = scratch.path().join("state/incremental");
    // Gone altogether is clean; any other failure to read it is not "empty".
    let left: Vec<_> = match std::fs::read_dir(&state) {
        Ok(entries) => entries
            .map(|e| {
                e.map(|e| e.path())
                    .expect("an entry of the working directory")
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", state.display()),
    };
    assert!(
        left.is_empty(),
        "left in {}: {left:?}",
        Path::display(&state)
    );
}
