//! What the checkpoint benchmarks share: running a job file to its end in-process, and
//! reading back the statistics its checkpoints stored.

use std::path::Path;
use std::time::{Duration, Instant};
use weir::checkpoint::metadata::CheckpointMetadata;
use weir::job;
use weir::launch::{JobOutcome, RunRequest, job_id, run_job};
use weir::observe::LiveJob;
use weir::runtime::CancelToken;
use weir::storage::{CheckpointStorage, FsStorage};
use weir::wasm::WasmRuntime;

pub use weir_tests::percentile;

/// Writes `text` as `dir/job.toml` and runs it to its end: how long it took, and its spec.
pub fn run(
    text: &str,
    dir: &Path,
    wasm: &WasmRuntime,
    io: &tokio::runtime::Runtime,
) -> (Duration, job::JobSpec) {
    let path = dir.join("job.toml");
    std::fs::write(&path, text).expect("the job file");
    let spec = job::load(&path, &[]).expect("a valid job");
    let started = Instant::now();
    match run_job(
        &spec,
        wasm,
        io.handle(),
        &LiveJob::new(&spec, CancelToken::default()),
        &RunRequest::default(),
    )
    .expect("the job runs")
    {
        JobOutcome::Finished(_) => {}
        JobOutcome::Cancelled => panic!("the benchmark job was cancelled"),
        JobOutcome::AlreadyFinished(_) => panic!("the benchmark job was not run"),
        JobOutcome::Stopped(_) => panic!("the benchmark job was stopped with a savepoint"),
    }
    (started.elapsed(), spec)
}

/// The completed checkpoints the job left under `dir/checkpoints`, oldest first.
pub fn checkpoints(
    spec: &job::JobSpec,
    dir: &Path,
    io: &tokio::runtime::Runtime,
) -> Vec<CheckpointMetadata> {
    let storage = FsStorage::new(dir.join("checkpoints"), &job_id(spec)).expect("storage");
    io.block_on(async {
        let mut all = Vec::new();
        for listed in storage.list().await.expect("a listing") {
            if let Ok(bytes) = storage.read_metadata(listed.checkpoint).await {
                all.push(CheckpointMetadata::from_bytes(&bytes).expect("metadata"));
            }
        }
        all
    })
}
