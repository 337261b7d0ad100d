//! The composition root: turns a validated [`JobSpec`] into a runtime [`Graph`] by
//! choosing, for every node, its connector or WASM component and its state backend, and
//! runs it: checkpoint storage checked and the job's lock taken at start, the restore
//! point chosen and verified, failures restarted by the restart strategy, the record of a
//! finished job written and retention applied at the end. This is the only place that
//! knows all the parts; each part stays ignorant of the others.

use crate::checkpoint::channel_state;
use crate::checkpoint::coordinator::CoordinatorConfig;
use crate::checkpoint::driver::DriverSetup;
use crate::checkpoint::metadata::{CheckpointMetadata, SnapshotKind, TaskState};
use crate::checkpoint::restore::{
    self, JobShape, KeyedSource, PlanOptions, StatePlan, SubtaskPlan,
};
use crate::checkpoint::retention::{
    CheckpointFiles, EndAction, JobEnd, ListedCheckpoint, on_job_end, orphans, restore_candidates,
};
use crate::checkpoint::snapshot::{self, KeyedPart, KeyedSections, StateParts};
use crate::checkpoint::stats::CheckpointStats;
use crate::checkpoint::{AlignMode, RestartDecision, RestartTracker};
use crate::connectors::{ExistingOutput, SinkContext};
use crate::job::{CheckpointMode, JobSpec, NodeKind, Partition, SourceSpec, StateBackendKind};
use crate::observe::{JobState, LiveJob};
use crate::runtime::RestoredParts;
use crate::runtime::executor::{Debloat, Network, OperatorFactory, Partitioner, RunReport};
use crate::runtime::keygroup::KeyGroupRange;
use crate::runtime::now_ms;
use crate::runtime::watermark::EventTime;
use crate::runtime::{
    CancelToken, ChannelState, CheckpointId, Cluster, Executor, Graph, GraphNode, NodeBody,
    NodeEdge, Operator, Restore, RestorePoint, RunError, RunOptions, Source,
};
use crate::runtime::{Fault, TaskError, TaskInfo};
use crate::state::{
    HeapBackend, KeyedStateBackend, RestoredFiles, RestoredState, RocksDbBackend, RocksDbOptions,
};
use crate::storage::{
    CheckpointStorage, FileHandle, FsStorage, JobLock, JobRecord, LockHolder, StorageError,
};
use crate::wasm::{Profiler, WasmError, WasmRuntime};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Handle;

/// Records per batch on the input of a sink. Sinks pay per batch (a lock, a write
/// call), so larger is cheaper; 1024 matches the default guest batch.
const SINK_BATCH: usize = 1024;

/// Builds the graph of `spec`, loading (and compiling or fetching from the cache) every
/// operator's component once. `existing` is what file sinks do with output committed
/// after the point the run starts from; `profiler` samples the operators' guests.
pub fn build_graph(
    spec: &JobSpec,
    wasm: &WasmRuntime,
    existing: ExistingOutput,
    profiler: &Profiler,
) -> Result<Graph, WasmError> {
    let mut nodes = Vec::with_capacity(spec.nodes.len());
    for node in &spec.nodes {
        if !matches!(node.kind, NodeKind::Operator(_)) {
            profiler.declare_native(&node.id);
        }
        let (body, batch_size) = match &node.kind {
            NodeKind::Source(source) => (source_body(source), SINK_BATCH),
            NodeKind::Operator(op) => {
                let metering = crate::wasm::Metering::of(&op.sandbox);
                let component = Arc::new(wasm.load(&op.wasm, metering)?);
                // Dead-lettering rebuilds an instance from its last snapshot in memory,
                // which only the heap backend's encoded snapshots allow.
                let local_restore = spec.state.backend == StateBackendKind::Heap;
                if !local_restore
                    && matches!(
                        op.sandbox.on_runaway,
                        crate::job::RunawayPolicy::DeadLetter { .. }
                    )
                {
                    tracing::warn!(
                        operator = %node.id,
                        "on-runaway = \"dead-letter\" needs the heap state backend; with {} a runaway record fails the subtask instead",
                        backend_name(spec.state.backend)
                    );
                }
                let settings = Arc::new(crate::wasm::GuestSettings {
                    config: op.config.clone(),
                    sandbox: op.sandbox.clone(),
                    local_restore,
                    timer_limit: spec.state.timer_limit,
                    profiler: profiler.clone(),
                });
                let state = state_settings(spec);
                let factory: OperatorFactory = Arc::new(move |info| {
                    let backend = state.backend_for(info)?;
                    let operator = component.instantiate(info, &settings, backend)?;
                    Ok(Box::new(operator) as Box<dyn Operator>)
                });
                (NodeBody::Operator(factory), op.batch_size)
            }
            NodeKind::Sink(sink) => {
                let context = SinkContext {
                    rate: sink.rate,
                    transactional: spec.checkpointing.is_some(),
                    existing,
                };
                let factory = sink.kind.factory(context);
                (NodeBody::Operator(factory), SINK_BATCH)
            }
        };
        let inputs = node
            .inputs
            .iter()
            .map(|&from| NodeEdge {
                from,
                partitioner: partitioner(node.partition, spec.max_parallelism),
            })
            .collect();
        nodes.push(GraphNode {
            id: node.id.clone(),
            parallelism: node.parallelism,
            inputs,
            body,
            batch_size,
            chaining: node.chaining,
        });
    }
    Ok(Graph {
        nodes,
        max_parallelism: spec.max_parallelism,
        network: Network {
            channel_capacity: spec.network.channel_capacity,
            debloat: spec.network.debloat.map(|d| Debloat {
                target: d.target,
                period: d.period,
            }),
            local_workers: spec.network.local_workers,
        },
    })
}

/// A source's subtasks, with event time when it has a watermark strategy.
fn source_body(source: &SourceSpec) -> NodeBody {
    let factory = source.kind.factory();
    let Some(strategy) = source.watermark else {
        return NodeBody::Source(factory);
    };
    NodeBody::Source(Arc::new(move |info| {
        let inner = factory(info)?;
        Ok(Box::new(EventTime::new(inner, strategy)) as Box<dyn Source>)
    }))
}

fn partitioner(partition: Partition, max_parallelism: u32) -> Partitioner {
    match partition {
        Partition::Forward => Partitioner::Forward,
        Partition::Rebalance => Partitioner::Rebalance,
        Partition::Broadcast => Partitioner::Broadcast,
        Partition::KeyBy => Partitioner::KeyBy { max_parallelism },
    }
}

/// Where and how the operators of a job keep their keyed state.
#[derive(Clone, Debug)]
struct StateSettings {
    kind: StateBackendKind,
    /// The job's local working directory for backend files: `<state.dir>/<job-id>`,
    /// where `state.dir` defaults to `<temp>/weir` (as Flink's `io.tmp.dirs`).
    dir: PathBuf,
    incremental: bool,
    /// `[state] heap-limit`.
    heap_limit: u64,
}

fn state_settings(spec: &JobSpec) -> StateSettings {
    StateSettings {
        kind: spec.state.backend,
        dir: spec
            .state
            .dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("weir"))
            .join(job_id(spec)),
        incremental: spec.state.incremental,
        heap_limit: spec.state.heap_limit,
    }
}

impl StateSettings {
    /// A fresh backend for one subtask.
    fn backend_for(&self, info: &TaskInfo) -> Result<Box<dyn KeyedStateBackend>, TaskError> {
        let groups =
            KeyGroupRange::for_subtask(info.subtask, info.parallelism, info.max_parallelism);
        match self.kind {
            StateBackendKind::Heap => Ok(Box::new(HeapBackend::new(groups, self.heap_limit))),
            StateBackendKind::RocksDb => {
                // Unique per instance: shared file names start with it, so a restarted
                // subtask never reuses a name for other content.
                let instance = format!("{}-{}-{}", info.node, info.subtask.0, unique_suffix());
                let mut options = RocksDbOptions::new(self.dir.join(&instance), instance);
                options.incremental = self.incremental;
                let backend = RocksDbBackend::open(groups, options).map_err(|e| {
                    TaskError::failed(
                        Fault::External,
                        format!(
                            "{}: cannot open RocksDB under {}: {e}",
                            info.name(),
                            self.dir.display()
                        ),
                    )
                })?;
                Ok(Box::new(backend))
            }
        }
    }
}

/// Removes what earlier runs of the job left in its state working directory (a killed
/// process leaves its RocksDB instances behind): only this run uses it, and everything
/// in it is restored from checkpoints.
fn clear_working_dir(spec: &JobSpec) {
    let dir = state_settings(spec).dir;
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(
            "could not clear the state working directory {}: {e}",
            dir.display()
        );
    }
}

/// A string no other backend instance of this machine uses: the clock, the process
/// and a counter, hashed.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

/// The name a checkpoint records for the job's state backend.
pub fn backend_name(kind: StateBackendKind) -> &'static str {
    match kind {
        StateBackendKind::Heap => "heap",
        StateBackendKind::RocksDb => "rocksdb",
    }
}

/// Where a run restores from.
#[derive(Clone, Debug)]
pub enum FromCheckpoint {
    /// The newest complete checkpoint in the job's checkpoint storage.
    Latest,
    /// A checkpoint directory `<dir>/<job-id>/chk-<n>` (or its `_metadata`).
    Path(PathBuf),
    /// A savepoint directory `…/savepoint-<job>-<n>` (or its `_metadata`), local or
    /// `s3://`.
    Savepoint(String),
}

impl FromCheckpoint {
    /// What `weir run -s <location>` names: a retained checkpoint when it is one
    /// (`…/chk-<n>`), else a savepoint.
    pub fn snapshot_at(location: &str) -> Self {
        if !location.starts_with("s3://") && parse_checkpoint_path(Path::new(location)).is_ok() {
            Self::Path(PathBuf::from(location))
        } else {
            Self::Savepoint(location.to_owned())
        }
    }
}

impl std::str::FromStr for FromCheckpoint {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "latest" {
            Self::Latest
        } else {
            Self::Path(PathBuf::from(s))
        })
    }
}

/// What `weir run` was asked for, besides the job.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// Where to resume from; `None` starts from the beginning.
    pub from: Option<FromCheckpoint>,
    /// Go on although file sinks hold output committed after the point the run starts
    /// from, whose records are then written again (`--allow-duplicates`).
    pub allow_duplicates: bool,
    /// Skip the state of operators the job no longer has (`--allow-non-restored-state`).
    pub allow_non_restored_state: bool,
    /// Start without state when no checkpoint can be restored (`--start-without-state`).
    pub start_without_state: bool,
    /// The workers that run the subtasks (`weir coordinator`); `None` runs them in this
    /// process.
    pub cluster: Option<Arc<dyn Cluster>>,
}

/// How a job ended without an error.
#[derive(Debug)]
pub enum JobOutcome {
    /// Its input ended and everything was processed.
    Finished(RunReport),
    /// It was cancelled (Ctrl-C).
    Cancelled,
    /// It stopped with a savepoint, at this location.
    Stopped(String),
    /// It was asked to resume, but it had finished already: nothing ran.
    AlreadyFinished(FinishedRecord),
}

/// The record a finished job leaves in its checkpoint directory (`_finished`), so that a
/// resume does not run it again from the beginning once retention deleted its
/// checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FinishedRecord {
    /// When it finished, in milliseconds since the Unix epoch.
    pub finished_at_ms: i64,
    /// Its last completed checkpoint, the one that committed its last output.
    pub final_checkpoint: Option<u64>,
}

/// Why a job could not run or failed for good.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A component could not be loaded.
    #[error(transparent)]
    Wasm(#[from] WasmError),
    /// The checkpoint storage is not usable.
    #[error("checkpoint storage: {0}")]
    Storage(#[from] StorageError),
    /// The checkpoint to restore from is unusable.
    #[error("cannot restore: {0}")]
    Restore(String),
    /// Another process took the job's lock over (its lease was not renewed in time).
    #[error(
        "the job stopped: this process lost the job's lock ({0}); the process that holds it now runs the job"
    )]
    LostLock(String),
    /// A connector cannot work as configured (a broker unreachable, a topic missing).
    #[error("{node}: {message}")]
    Connector {
        /// The node, e.g. `[[source]] "events"`.
        node: String,
        /// What is wrong, as a sentence.
        message: String,
    },
    /// The job failed and its restart strategy gave up.
    #[error("{error} (the restart strategy gave up: {reason})")]
    Failed {
        /// The last failure.
        error: RunError,
        /// Why no further restart.
        reason: String,
    },
}

/// The job's directory name in checkpoint storage: its name, with anything but letters,
/// digits, `-` and `_` replaced.
pub fn job_id(spec: &JobSpec) -> String {
    spec.name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Runs `spec` to its end, restarting it from its latest checkpoint when a subtask fails,
/// as its restart strategy allows. With checkpointing, the job's lock is held throughout,
/// so that a second process of the same job is refused.
pub fn run_job(
    spec: &JobSpec,
    wasm: &WasmRuntime,
    io: &Handle,
    live: &LiveJob,
    request: &RunRequest,
) -> Result<JobOutcome, LaunchError> {
    let cancel = &live.cancel;
    let existing = if request.allow_duplicates {
        ExistingOutput::Append
    } else {
        ExistingOutput::Refuse
    };
    preflight(spec)?;
    let graph = build_graph(spec, wasm, existing, &live.profiler)?;
    let Some(config) = &spec.checkpointing else {
        clear_working_dir(spec);
        return run_attempts(spec, &graph, io, live, request, None);
    };
    let storage = crate::storage::open(&config.dir, &job_id(spec), &config.s3)?;
    let checked = storage.clone();
    io.block_on(async move { checked.check().await })?;
    let _ = live.storage.set(storage.clone());
    let locked = storage.clone();
    let lock = io.block_on(async move { locked.lock(&LockHolder::this_process()).await })?;
    tracing::info!(storage = %storage.describe(), interval = ?config.interval, "checkpointing on");
    // Only now: the working directory of a process that still runs must not be cleared.
    clear_working_dir(spec);
    let watcher = watch_lock(&lock, cancel, io);
    let outcome = run_locked(spec, &graph, io, live, request, &storage);
    watcher.abort();
    let outcome = match (outcome, lock.lost()) {
        (Ok(JobOutcome::Cancelled), Some(why)) => Err(LaunchError::LostLock(why)),
        (outcome, _) => outcome,
    };
    io.block_on(lock.release());
    outcome
}

/// Checks what the connectors need from outside before anything starts.
fn preflight(spec: &JobSpec) -> Result<(), LaunchError> {
    let transactional = spec.checkpointing.is_some();
    for node in &spec.nodes {
        let (section, checked) = match &node.kind {
            NodeKind::Source(source) => ("[[source]]", source.kind.preflight()),
            NodeKind::Sink(sink) => ("[[sink]]", sink.kind.preflight(transactional)),
            NodeKind::Operator(_) => continue,
        };
        checked.map_err(|message| LaunchError::Connector {
            node: format!("{section} \"{}\"", node.id),
            message,
        })?;
    }
    Ok(())
}

/// The part of [`run_job`] that runs under the job's lock: a resume of a finished job
/// says so; anything else runs.
fn run_locked(
    spec: &JobSpec,
    graph: &Graph,
    io: &Handle,
    live: &LiveJob,
    request: &RunRequest,
    storage: &Arc<dyn CheckpointStorage>,
) -> Result<JobOutcome, LaunchError> {
    match finished_record(storage, io)? {
        Some(record) if matches!(request.from, Some(FromCheckpoint::Latest)) => {
            return Ok(JobOutcome::AlreadyFinished(record));
        }
        Some(_) => {
            block_on_storage(io, storage, |s| async move {
                s.delete_record(JobRecord::Finished).await
            })?;
        }
        None => {}
    }
    if request.from.is_some() {
        let mut stats = stored_stats(storage, io);
        for (metadata, path) in newer_completed(storage, io, &stats) {
            stats.completed_from(&metadata, path);
        }
        live.stats.update(|s| *s = stats);
    }
    run_attempts(spec, graph, io, live, request, Some(storage))
}

/// The completed checkpoints in storage newer than the latest that `stats` knows (the
/// process died between a commit and the statistics' write), oldest first.
fn newer_completed(
    storage: &Arc<dyn CheckpointStorage>,
    io: &Handle,
    stats: &CheckpointStats,
) -> Vec<(CheckpointMetadata, String)> {
    let known = stats.latest_completed.as_ref().map_or(0, |c| c.id);
    let Ok(listing) = block_on_storage(io, storage, |s| async move { s.list().await }) else {
        return Vec::new();
    };
    listing
        .iter()
        .filter(|l| l.has_metadata && l.checkpoint.0 > known)
        .filter_map(|l| {
            let id = l.checkpoint;
            let bytes = block_on_storage(io, storage, |s| async move { s.read_metadata(id).await });
            let metadata = CheckpointMetadata::from_bytes(&bytes.ok()?).ok()?;
            Some((metadata, storage.checkpoint_url(id)))
        })
        .collect()
}

/// The checkpoint statistics a previous run of the job stored, so that a resumed job
/// shows the checkpoints it took before; none when there are none or they do not read
/// back (they are statistics: the job runs all the same).
fn stored_stats(storage: &Arc<dyn CheckpointStorage>, io: &Handle) -> CheckpointStats {
    let read = block_on_storage(io, storage, |s| async move {
        s.read_record(JobRecord::Statistics).await
    });
    match read.map(|bytes| bytes.map(|b| serde_json::from_slice::<CheckpointStats>(&b))) {
        Ok(None) => CheckpointStats::default(),
        Ok(Some(Ok(stats))) => stats,
        Ok(Some(Err(e))) => {
            tracing::warn!(
                "the stored checkpoint statistics do not read back ({e}); the history starts empty"
            );
            CheckpointStats::default()
        }
        Err(e) => {
            tracing::warn!(
                "cannot read the stored checkpoint statistics ({e}); the history starts empty"
            );
            CheckpointStats::default()
        }
    }
}

/// Cancels the job if its lock is lost: another process runs it now.
fn watch_lock(lock: &JobLock, cancel: &CancelToken, io: &Handle) -> tokio::task::JoinHandle<()> {
    /// How soon a lost lock stops the job, beyond the storage's own detection.
    const POLL: Duration = Duration::from_millis(200);
    let (signal, cancel) = (lock.signal(), cancel.clone());
    io.spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            if signal.why().is_some() {
                cancel.cancel();
                return;
            }
        }
    })
}

/// The record of the job's earlier finish, if there is one.
fn finished_record(
    storage: &Arc<dyn CheckpointStorage>,
    io: &Handle,
) -> Result<Option<FinishedRecord>, LaunchError> {
    let Some(bytes) = block_on_storage(io, storage, |s| async move {
        s.read_record(JobRecord::Finished).await
    })?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        LaunchError::Restore(format!(
            "the record of the job's finish in {} cannot be read: {e}. Remove `_finished` there to run the job again",
            storage.describe()
        ))
    })
}

/// Runs the job, restarting it as its restart strategy allows.
fn run_attempts(
    spec: &JobSpec,
    graph: &Graph,
    io: &Handle,
    live: &LiveJob,
    request: &RunRequest,
    storage: Option<&Arc<dyn CheckpointStorage>>,
) -> Result<JobOutcome, LaunchError> {
    let cancel = &live.cancel;
    let mut tracker = RestartTracker::new(spec.restart.clone());
    let mut from = request.from.clone();
    let fit = Fit {
        allow_non_restored_state: request.allow_non_restored_state,
        start_without_state: request.start_without_state,
    };
    let mut attempt = 0u32;
    // The savepoint the run started from: a restart before the first checkpoint after
    // it restores it again.
    let mut savepoint: Option<(FromCheckpoint, CheckpointId)> = None;
    loop {
        let (plan, restored) = match &from {
            None => (Restored::default(), None),
            Some(which) => choose_restore(spec, storage, which, fit, io)?,
        };
        if let (Some(which @ FromCheckpoint::Savepoint(_)), Some((id, _))) = (&from, &restored) {
            savepoint = Some((which.clone(), *id));
        }
        let restored_id = restored.as_ref().map(|(id, _)| *id);
        let restore_point = match (&from, restored_id) {
            (Some(FromCheckpoint::Latest), Some(id)) => Some(RestorePoint::Checkpoint(id)),
            (Some(FromCheckpoint::Path(path)), Some(_)) => {
                Some(RestorePoint::At(path.display().to_string()))
            }
            (Some(FromCheckpoint::Savepoint(location)), Some(_)) => {
                Some(RestorePoint::At(location.clone()))
            }
            _ => None,
        };
        let is_savepoint = plan.is_savepoint;
        let mut options = RunOptions {
            restore: plan.tasks,
            channel_state: plan.channel_state,
            metrics: Some(live.metrics.clone()),
            restore_point,
            ..RunOptions::default()
        };
        live.stats.update(|s| {
            s.abandon_in_progress(now_ms(), "the job stopped while it was in progress")
        });
        if let (Some(config), Some(storage)) = (&spec.checkpointing, storage) {
            let listing = block_on_storage(io, storage, |s| async move { s.list().await })?;
            let newest = listing
                .iter()
                .map(|l| l.checkpoint)
                .chain(restored_id)
                .max();
            discard_incomplete(storage, &listing, io);
            let completed = completed_files(storage, &listing, io);
            if attempt == 0 {
                delete_orphans(storage, completed.as_deref(), io);
            }
            options.mode = Some(AlignMode::from(config.mode));
            options.checkpointing = Some(DriverSetup {
                job: spec.name.clone(),
                backend: backend_name(spec.state.backend).to_owned(),
                exactly_once: config.mode == CheckpointMode::ExactlyOnce,
                config: CoordinatorConfig::from(config),
                num_retained: config.num_retained,
                storage: storage.clone(),
                io: io.clone(),
                next_id: CheckpointId(newest.map_or(1, |n| n.0 + 1)),
                completed: completed.unwrap_or_else(|Unread(files)| files),
                stats: live.stats.clone(),
                unaligned_after: config.unaligned_after(),
                max_parallelism: spec.max_parallelism,
                savepoints: live.savepoints.receiver(),
                savepoint_dir: config.savepoint_dir.as_ref().map(ToString::to_string),
                open_savepoint: savepoint_opener(spec),
            });
        }
        if let Some((id, path)) = restored {
            if is_savepoint {
                tracing::info!(checkpoint = id.0, location = %path, "restoring from savepoint {path}");
            } else {
                tracing::info!(checkpoint = id.0, location = %path, "restoring from checkpoint {id} at {path}");
            }
            live.stats
                .update(|s| s.restored(id.0, now_ms(), path, is_savepoint));
        }
        live.set_state(JobState::Running);
        let executor = match &request.cluster {
            Some(cluster) => Executor::on_cluster(cancel.clone(), cluster.clone()),
            None => Executor::new(cancel.clone()),
        };
        let result = executor.run(graph, options);
        match result {
            Ok(RunReport {
                stopped_with_savepoint: Some(location),
                ..
            }) => {
                end_of_job(spec, storage, io, JobEnd::Cancelled);
                return Ok(JobOutcome::Stopped(location));
            }
            Ok(report) => {
                if let Some(storage) = storage {
                    record_finish(storage, io)?;
                }
                end_of_job(spec, storage, io, JobEnd::Finished);
                return Ok(JobOutcome::Finished(report));
            }
            Err(RunError::Cancelled) => {
                end_of_job(spec, storage, io, JobEnd::Cancelled);
                return Ok(JobOutcome::Cancelled);
            }
            Err(error) if !error.retry_can_help() => {
                return Err(LaunchError::Failed {
                    error,
                    reason: "a restart cannot help: the job file or its data is at fault"
                        .to_owned(),
                });
            }
            Err(error) => {
                attempt += 1;
                match tracker.on_failure(Instant::now(), jitter()) {
                    RestartDecision::Restart { after } => {
                        live.set_state(JobState::Restarting);
                        tracing::warn!(
                            attempt,
                            "the job failed: {error}. Restarting in {after:?} from the latest completed checkpoint"
                        );
                        if !sleep_unless_cancelled(after, cancel) {
                            return Ok(JobOutcome::Cancelled);
                        }
                        from = restart_point(storage, savepoint.as_ref(), io);
                    }
                    RestartDecision::GiveUp(reason) => {
                        return Err(LaunchError::Failed {
                            error,
                            reason: reason.to_string(),
                        });
                    }
                }
            }
        }
    }
}

/// Where a restart restores from: the latest checkpoint, unless the run started from a
/// savepoint and has completed no checkpoint after it.
fn restart_point(
    storage: Option<&Arc<dyn CheckpointStorage>>,
    savepoint: Option<&(FromCheckpoint, CheckpointId)>,
    io: &Handle,
) -> Option<FromCheckpoint> {
    let storage = storage?;
    if let Some((which, id)) = savepoint {
        let listing = block_on_storage(io, storage, |s| async move { s.list().await });
        let newer = listing.is_ok_and(|l| l.iter().any(|c| c.has_metadata && c.checkpoint > *id));
        if !newer {
            return Some(which.clone());
        }
    }
    Some(FromCheckpoint::Latest)
}

/// Opens a savepoint's storage for the driver: `<dir>/savepoint-<job>-<n>`, with the
/// job's S3 settings.
fn savepoint_opener(spec: &JobSpec) -> crate::checkpoint::driver::SavepointOpener {
    let job = job_id(spec);
    let s3 = s3_settings(spec);
    Arc::new(move |dir: &str, id: CheckpointId| {
        let cwd = std::env::current_dir().unwrap_or_default();
        let url = crate::job::storage_url(dir, &cwd)
            .map_err(|e| format!("the savepoint directory \"{dir}\": {e}"))?;
        crate::storage::open_savepoint(&url, &format!("savepoint-{job}-{}", id.0), &s3)
            .map_err(|e| e.to_string())
    })
}

/// Writes the record of the job's finish, naming its final checkpoint, before retention
/// may delete the checkpoints: from then on a resume says the job finished instead of
/// running it again from the beginning.
fn record_finish(storage: &Arc<dyn CheckpointStorage>, io: &Handle) -> Result<(), LaunchError> {
    let listing = block_on_storage(io, storage, |s| async move { s.list().await })?;
    let record = FinishedRecord {
        finished_at_ms: crate::runtime::now_ms(),
        final_checkpoint: listing
            .iter()
            .filter(|l| l.has_metadata)
            .map(|l| l.checkpoint.0)
            .max(),
    };
    let bytes = bytes::Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
    block_on_storage(io, storage, |s| async move {
        s.write_record(JobRecord::Finished, bytes).await
    })?;
    Ok(())
}

/// A number in [0, 1) for the restart backoff's jitter, from the clock's sub-second
/// part: varied enough to keep restarting jobs from moving in lockstep.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos) / 1e9
}

/// Sleeps `wait`; false when the job was cancelled meanwhile.
fn sleep_unless_cancelled(wait: Duration, cancel: &CancelToken) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if cancel.is_cancelled() {
            return false;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    !cancel.is_cancelled()
}

fn block_on_storage<T, F>(
    io: &Handle,
    storage: &Arc<dyn CheckpointStorage>,
    call: impl FnOnce(Arc<dyn CheckpointStorage>) -> F,
) -> Result<T, StorageError>
where
    F: std::future::Future<Output = Result<T, StorageError>>,
{
    io.block_on(call(storage.clone()))
}

/// Some completed checkpoint's metadata could not be read (not because it is corrupt):
/// the files it references are unknown. Holds what was read.
struct Unread(Vec<CheckpointFiles>);

/// The completed checkpoints in `listing`, with the shared files each references, for
/// retention. One whose metadata is corrupt references nothing: it can never be
/// restored. One whose metadata cannot be read now (an outage) keeps its shared files
/// from retention, and makes the result [`Unread`].
fn completed_files(
    storage: &Arc<dyn CheckpointStorage>,
    listing: &[crate::storage::CheckpointListing],
    io: &Handle,
) -> Result<Vec<CheckpointFiles>, Unread> {
    let mut all_read = true;
    let files = listing
        .iter()
        .filter(|l| l.has_metadata)
        .map(|l| {
            let id = l.checkpoint;
            let nothing = CheckpointFiles {
                id,
                shared: BTreeSet::new(),
            };
            match block_on_storage(io, storage, |s| async move { s.read_metadata(id).await }) {
                Ok(bytes) => CheckpointMetadata::from_bytes(&bytes).map_or(nothing, |m| m.files()),
                Err(StorageError::Corrupt { .. }) => nothing,
                Err(_) => {
                    all_read = false;
                    nothing
                }
            }
        })
        .collect();
    if all_read {
        Ok(files)
    } else {
        Err(Unread(files))
    }
}

/// Deletes the shared files that no completed checkpoint references (see
/// [`orphans`]). Only while no checkpoint is in flight, and only when every completed
/// checkpoint's metadata was read.
fn delete_orphans(
    storage: &Arc<dyn CheckpointStorage>,
    completed: Result<&[CheckpointFiles], &Unread>,
    io: &Handle,
) {
    let Ok(completed) = completed else {
        tracing::info!(
            "not looking for unreferenced shared files: a checkpoint's metadata could not be read"
        );
        return;
    };
    let result = block_on_storage(io, storage, |s| async move { s.list_shared().await }).and_then(
        |shared| {
            let names: Vec<String> = orphans(&shared, completed)
                .into_iter()
                .map(|f| f.0)
                .collect();
            if names.is_empty() {
                return Ok(());
            }
            tracing::info!(
                files = names.len(),
                "deleting shared files that no completed checkpoint references (uploaded by checkpoints that never completed)"
            );
            block_on_storage(io, storage, |s| async move { s.delete_shared(&names).await })
        },
    );
    if let Err(e) = result {
        tracing::warn!("could not delete unreferenced shared files: {e}");
    }
}

/// Deletes the checkpoints of earlier runs that never got their `_metadata`: they can
/// never be restored, and no run but this one writes to the job's directory.
fn discard_incomplete(
    storage: &Arc<dyn CheckpointStorage>,
    listing: &[crate::storage::CheckpointListing],
    io: &Handle,
) {
    let incomplete: Vec<CheckpointId> = listing
        .iter()
        .filter(|l| !l.has_metadata)
        .map(|l| l.checkpoint)
        .collect();
    if incomplete.is_empty() {
        return;
    }
    for id in &incomplete {
        tracing::warn!(
            "checkpoint {id} in {} never completed (it has no _metadata) and can never be restored: deleting it",
            storage.describe()
        );
    }
    let storage = storage.clone();
    io.spawn(async move {
        for id in incomplete {
            if let Err(e) = storage.delete_checkpoint(id).await {
                tracing::warn!(
                    checkpoint = id.0,
                    "could not discard an incomplete checkpoint: {e}"
                );
            }
        }
    });
}

/// The job ended as `end`: retention decides what stays, and shared files that no
/// remaining checkpoint references go.
fn end_of_job(
    spec: &JobSpec,
    storage: Option<&Arc<dyn CheckpointStorage>>,
    io: &Handle,
    end: JobEnd,
) {
    let (Some(config), Some(storage)) = (&spec.checkpointing, storage) else {
        return;
    };
    if on_job_end(config.retention, end) == EndAction::DeleteAll {
        let result = block_on_storage(io, storage, |s| async move {
            for listed in s.list().await? {
                s.delete_checkpoint(listed.checkpoint).await?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(
                "could not delete the job's checkpoints ({:?}): {e}",
                config.retention
            );
        }
    }
    match block_on_storage(io, storage, |s| async move { s.list().await }) {
        Ok(listing) => {
            let completed = completed_files(storage, &listing, io);
            delete_orphans(storage, completed.as_deref(), io);
        }
        Err(e) => tracing::warn!("could not list the job's checkpoints at its end: {e}"),
    }
}

/// What every subtask restores from one snapshot.
#[derive(Default)]
struct Restored {
    /// State, by node id and subtask index.
    tasks: HashMap<(String, u32), Restore>,
    /// Channel state to replay, by node id and subtask index.
    channel_state: HashMap<(String, u32), ChannelState>,
    /// Whether it is a savepoint.
    is_savepoint: bool,
}

/// What a run restores, and the snapshot it came from: its id and where it is.
type RestoreChoice = (Restored, Option<(CheckpointId, String)>);

/// How the run treats what does not fit the job (`weir run` flags).
#[derive(Clone, Copy, Debug, Default)]
struct Fit {
    allow_non_restored_state: bool,
    start_without_state: bool,
}

/// Picks the snapshot to restore from and loads every subtask's parts, verified.
/// With `latest`, a checkpoint that is incomplete or fails its checksums is skipped
/// with a message naming it, and the next older one is tried; when there are
/// checkpoints but none can be restored, the run fails unless it may start without
/// state: a job never starts afresh silently.
fn choose_restore(
    spec: &JobSpec,
    storage: Option<&Arc<dyn CheckpointStorage>>,
    which: &FromCheckpoint,
    fit: Fit,
    io: &Handle,
) -> Result<RestoreChoice, LaunchError> {
    match which {
        FromCheckpoint::Latest => {
            let Some(storage) = storage else {
                return Err(LaunchError::Restore(
                    "--from-checkpoint latest needs checkpointing: set [checkpointing] interval and dir in the job file"
                        .to_owned(),
                ));
            };
            let listing = block_on_storage(io, storage, |s| async move { s.list().await })?;
            let listed: Vec<ListedCheckpoint> = listing
                .iter()
                .map(|l| ListedCheckpoint {
                    id: l.checkpoint,
                    has_metadata: l.has_metadata,
                })
                .collect();
            let candidates = restore_candidates(&listed);
            for &id in &candidates {
                match load_snapshot(spec, storage, id, fit, io) {
                    Ok((restored, id)) => {
                        return Ok((restored, Some((id, storage.checkpoint_url(id)))));
                    }
                    Err(Skip::Unusable(reason)) => {
                        tracing::warn!(
                            "skipping checkpoint {id} in {}: {}. It stays there for inspection until retention deletes it; trying the next older one",
                            storage.describe(),
                            reason.trim_end_matches('.')
                        );
                    }
                    Err(Skip::Incompatible(reason)) => return Err(LaunchError::Restore(reason)),
                }
            }
            if !candidates.is_empty() && !fit.start_without_state {
                return Err(LaunchError::Restore(format!(
                    "none of the {} complete checkpoints in {} can be restored (see the warnings above). Run with --start-without-state to start the job without state; the checkpoints stay there",
                    candidates.len(),
                    storage.describe()
                )));
            }
            if candidates.is_empty() {
                tracing::info!(storage = %storage.describe(), "no complete checkpoint to restore from; starting from the beginning");
            } else {
                tracing::warn!(storage = %storage.describe(), "no checkpoint can be restored; starting without state, as --start-without-state asks");
            }
            Ok((Restored::default(), None))
        }
        FromCheckpoint::Path(path) => {
            let (storage, id) = checkpoint_at(spec, path)?;
            let checked = storage.clone();
            io.block_on(async move { checked.check().await })?;
            match load_snapshot(spec, &storage, id, fit, io) {
                Ok((restored, id)) => Ok((restored, Some((id, storage.checkpoint_url(id))))),
                Err(Skip::Unusable(reason) | Skip::Incompatible(reason)) => {
                    Err(LaunchError::Restore(format!(
                        "checkpoint {id} at {}: {reason}",
                        path.display()
                    )))
                }
            }
        }
        FromCheckpoint::Savepoint(location) => {
            let s3 = s3_settings(spec);
            let storage = crate::storage::savepoint_at(location, &s3)?;
            match load_snapshot(spec, &storage, CheckpointId(0), fit, io) {
                Ok((restored, id)) => Ok((restored, Some((id, storage.describe())))),
                Err(Skip::Unusable(reason) | Skip::Incompatible(reason)) => Err(
                    LaunchError::Restore(format!("the savepoint at {location}: {reason}")),
                ),
            }
        }
    }
}

/// What one worker's subtasks restore from `point` (`weir worker`): the snapshot the
/// coordinator chose and verified, read again from the shared storage.
pub fn restore_share(
    spec: &JobSpec,
    point: &RestorePoint,
    allow_non_restored_state: bool,
    io: &Handle,
) -> Result<
    (
        HashMap<(String, u32), Restore>,
        HashMap<(String, u32), ChannelState>,
    ),
    LaunchError,
> {
    let fit = Fit {
        allow_non_restored_state,
        start_without_state: false,
    };
    let (restored, _) = match point {
        RestorePoint::At(location) => {
            choose_restore(spec, None, &FromCheckpoint::snapshot_at(location), fit, io)?
        }
        RestorePoint::Checkpoint(id) => {
            let Some(config) = &spec.checkpointing else {
                return Err(LaunchError::Restore(
                    "the coordinator restores a checkpoint, but this job file has no [checkpointing]".to_owned(),
                ));
            };
            let storage = crate::storage::open(&config.dir, &job_id(spec), &config.s3)?;
            match load_snapshot(spec, &storage, *id, fit, io) {
                Ok((restored, id)) => (restored, Some((id, storage.checkpoint_url(id)))),
                Err(Skip::Unusable(reason) | Skip::Incompatible(reason)) => {
                    return Err(LaunchError::Restore(format!(
                        "checkpoint {id} in {}: {reason}",
                        storage.describe()
                    )));
                }
            }
        }
    };
    Ok((restored.tasks, restored.channel_state))
}

/// Why a snapshot was not restored.
enum Skip {
    /// It is incomplete or corrupt: an older one may do.
    Unusable(String),
    /// It does not fit the job: no older one will either.
    Incompatible(String),
}

/// Reads snapshot `id` of `storage`, plans its restore into the job and reads every
/// part the plan names; returns them with the snapshot's own id.
fn load_snapshot(
    spec: &JobSpec,
    storage: &Arc<dyn CheckpointStorage>,
    id: CheckpointId,
    fit: Fit,
    io: &Handle,
) -> Result<(Restored, CheckpointId), Skip> {
    let bytes = block_on_storage(io, storage, |s| async move { s.read_metadata(id).await })
        .map_err(|e| Skip::Unusable(e.to_string()))?;
    let metadata = CheckpointMetadata::from_bytes(&bytes).map_err(Skip::Unusable)?;
    let id = CheckpointId(metadata.checkpoint);
    let without_channel_state = spec
        .checkpointing
        .as_ref()
        .and_then(|c| c.recover_without_channel_state);
    let drop_channel_state = without_channel_state == Some(id.0);
    if let Some(other) = without_channel_state.filter(|&n| n != id.0) {
        tracing::warn!(
            "recover-without-channel-state = {other}, but the job restores checkpoint {id}: its channel state is restored"
        );
    }
    let shape = JobShape {
        nodes: spec
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.parallelism))
            .collect(),
        max_parallelism: spec.max_parallelism,
        backend: backend_name(spec.state.backend),
    };
    let options = PlanOptions {
        allow_non_restored_state: fit.allow_non_restored_state,
        drop_channel_state,
    };
    let plan = restore::plan(&metadata, &shape, options).map_err(Skip::Incompatible)?;
    for node in &plan.not_restored {
        tracing::warn!(
            "the state of operator `{node}` is not restored: the job has no operator of that id (--allow-non-restored-state)"
        );
    }
    for node in &plan.new_operators {
        tracing::info!("operator `{node}` has no state in the snapshot and starts empty");
    }
    for (node, old, new) in &plan.rescaled {
        tracing::info!("rescaling `{node}` from parallelism {old} to {new}");
    }
    if drop_channel_state {
        for task in metadata.tasks.iter().filter(|t| t.channel_state.is_some()) {
            tracing::warn!(
                task = %format!("{} ({}/{})", task.node, task.subtask + 1, task.parallelism),
                bytes = task.stats.persisted_in_flight,
                "restoring checkpoint {id} without its channel state, as recover-without-channel-state asks: the in-flight records it held are dropped"
            );
        }
        if metadata.tasks.iter().all(|t| t.channel_state.is_none()) {
            tracing::warn!(
                "recover-without-channel-state = {id}, but checkpoint {id} has no channel state: it is restored whole"
            );
        }
    }
    let mut reader = PartReader {
        storage,
        io,
        metadata: &metadata,
        files: HashMap::new(),
    };
    let mut out = Restored {
        is_savepoint: metadata.kind == SnapshotKind::Savepoint,
        ..Restored::default()
    };
    for ((node, subtask), planned) in plan.subtasks {
        let key = (node, subtask);
        let state = match planned {
            SubtaskPlan::Finished => {
                out.tasks.insert(key, Restore::Finished);
                continue;
            }
            SubtaskPlan::State(state) => state,
        };
        if let Some(i) = state.channel_state
            && let Some(handle) = &metadata.tasks[i].channel_state
        {
            let bytes = reader.read(handle)?;
            let decoded = channel_state::decode(&bytes).map_err(|e| {
                Skip::Unusable(format!("the channel state in {}: {e}", handle.path))
            })?;
            out.channel_state.insert(key.clone(), decoded);
        }
        let parts = reader.parts(spec, &key, &state)?;
        out.tasks.insert(key, Restore::State(parts));
    }
    Ok((out, id))
}

/// Reads the parts a restore plan names, each stored file once.
struct PartReader<'a> {
    storage: &'a Arc<dyn CheckpointStorage>,
    io: &'a Handle,
    metadata: &'a CheckpointMetadata,
    files: HashMap<String, bytes::Bytes>,
}

impl PartReader<'_> {
    fn read(&mut self, handle: &FileHandle) -> Result<bytes::Bytes, Skip> {
        if let Some(bytes) = self.files.get(&handle.path) {
            return Ok(bytes.clone());
        }
        let read = handle.clone();
        let bytes = block_on_storage(
            self.io,
            self.storage,
            |s| async move { s.read(&read).await },
        )
        .map_err(|e| Skip::Unusable(e.to_string()))?;
        self.files.insert(handle.path.clone(), bytes.clone());
        Ok(bytes)
    }

    /// Old subtask `task`'s parts and state file.
    fn file_of(&mut self, task: usize) -> Result<(&StateParts, bytes::Bytes), Skip> {
        let metadata = self.metadata;
        let TaskState::Parts(parts) = &metadata.tasks[task].state else {
            return Err(Skip::Unusable("a finished subtask has no parts".to_owned()));
        };
        let bytes = match &parts.file {
            Some(handle) => self.read(handle)?,
            None => bytes::Bytes::new(),
        };
        Ok((parts, bytes))
    }

    fn slice(
        file: &bytes::Bytes,
        offset: u64,
        len: u64,
        what: &str,
        parts: &StateParts,
    ) -> Result<bytes::Bytes, Skip> {
        snapshot::slice(file, offset, len, what).map_err(|e| {
            let name = parts
                .file
                .as_ref()
                .map_or("the state file", |f| f.path.as_str());
            Skip::Unusable(format!("{name}: {e}"))
        })
    }

    /// What new subtask `key` restores, as `state` plans it.
    fn parts(
        &mut self,
        spec: &JobSpec,
        key: &(String, u32),
        state: &StatePlan,
    ) -> Result<RestoredParts, Skip> {
        let mut restored = RestoredParts {
            records_in: state.records_in,
            ..RestoredParts::default()
        };
        for &task in &state.operator {
            let (parts, file) = self.file_of(task)?;
            if let Some(span) = parts.operator {
                let bytes = Self::slice(&file, span.offset, span.len, "the operator state", parts)?;
                restored.operator.push(bytes.to_vec());
            }
        }
        let mut canonical = Vec::new();
        let mut native = Vec::new();
        for source in &state.keyed {
            match source {
                KeyedSource::Canonical { task, groups } => {
                    let (parts, file) = self.file_of(*task)?;
                    let Some(KeyedPart::Canonical { states, .. }) = &parts.keyed else {
                        continue;
                    };
                    let states = states.clone();
                    let sections = groups
                        .iter()
                        .map(|g| {
                            Self::slice(&file, g.offset, g.len, "a key group's state", parts)
                                .map(|b| (crate::runtime::KeyGroup(g.group), b))
                        })
                        .collect::<Result<_, _>>()?;
                    canonical.push(KeyedSections {
                        states,
                        groups: sections,
                    });
                }
                KeyedSource::Native { task } => {
                    let entry = &self.metadata.tasks[*task];
                    let TaskState::Parts(StateParts {
                        keyed: Some(KeyedPart::Native { files, .. }),
                        ..
                    }) = &entry.state
                    else {
                        continue;
                    };
                    let dir = state_settings(spec).dir.join(format!(
                        "restore-{}-{}-from-{}-{}",
                        key.0,
                        key.1,
                        entry.subtask,
                        unique_suffix()
                    ));
                    let files = RestoredFiles {
                        dir,
                        files: files.clone(),
                    };
                    let stored = self.storage.clone();
                    let download = files.clone();
                    self.io
                        .block_on(async move { download_files(stored, &download).await })
                        .map_err(Skip::Unusable)?;
                    native.push(files);
                }
            }
        }
        restored.keyed = match (canonical.is_empty(), native.is_empty()) {
            (true, true) => None,
            (false, true) => Some(RestoredState::Canonical(canonical)),
            (true, false) => Some(RestoredState::Files(native)),
            (false, false) => {
                return Err(Skip::Unusable(format!(
                    "the snapshot holds the keyed state of `{}` partly canonical and partly native",
                    key.0
                )));
            }
        };
        for (task, groups) in &state.timers {
            let (parts, file) = self.file_of(*task)?;
            for g in groups {
                let bytes = Self::slice(&file, g.offset, g.len, "a key group's timers", parts)?;
                restored.timers.push(bytes);
            }
        }
        Ok(restored)
    }
}

/// Backend files downloaded at once: as many as are uploaded at once.
const PARALLEL_DOWNLOADS: usize = 4;

/// Downloads and verifies a subtask's backend files into `files.dir`, a few at a time.
async fn download_files(
    storage: Arc<dyn CheckpointStorage>,
    files: &RestoredFiles,
) -> Result<(), String> {
    let dir = files.dir.clone();
    let downloaded = download_into(storage, files).await;
    if downloaded.is_err() {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    downloaded
}

async fn download_into(
    storage: Arc<dyn CheckpointStorage>,
    files: &RestoredFiles,
) -> Result<(), String> {
    let dir = &files.dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for chunk in files.files.chunks(PARALLEL_DOWNLOADS) {
        let mut downloads = tokio::task::JoinSet::new();
        for file in chunk {
            let (storage, file, path) = (storage.clone(), file.clone(), dir.join(&file.name));
            downloads.spawn(async move {
                let bytes = storage
                    .read(&file.handle)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::fs::write(&path, &bytes)
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))
            });
        }
        while let Some(done) = downloads.join_next().await {
            done.map_err(|e| format!("a download stopped: {e}"))??;
        }
    }
    Ok(())
}

/// Splits `<base>/<job-id>/chk-<n>[/_metadata]` into its parts.
/// The storage holding the checkpoint at `path` (a local `<dir>/<job-id>/chk-<n>` or
/// `s3://<bucket>/<prefix>/<job-id>/chk-<n>`, reached with the job's S3 settings), and
/// the checkpoint's id.
fn checkpoint_at(
    spec: &JobSpec,
    path: &Path,
) -> Result<(Arc<dyn CheckpointStorage>, CheckpointId), LaunchError> {
    let (base, job, id) = parse_checkpoint_path(path).map_err(LaunchError::Restore)?;
    let text = base.to_string_lossy();
    let Some(bucket_and_prefix) = text.strip_prefix("s3:") else {
        return Ok((Arc::new(FsStorage::new(base, &job)?), id));
    };
    let url = format!("s3://{}", bucket_and_prefix.trim_start_matches('/'));
    let url = crate::job::storage_url(&url, Path::new("."))
        .map_err(|e| LaunchError::Restore(format!("{}: {e}", path.display())))?;
    let s3 = s3_settings(spec);
    Ok((crate::storage::open(&url, &job, &s3)?, id))
}

/// The job's S3 settings (`[checkpointing.s3]`), the defaults without checkpointing:
/// savepoints and checkpoints named by a path are on S3 with them.
fn s3_settings(spec: &JobSpec) -> crate::job::S3Settings {
    spec.checkpointing
        .as_ref()
        .map(|c| c.s3.clone())
        .unwrap_or_default()
}

fn parse_checkpoint_path(path: &Path) -> Result<(PathBuf, String, CheckpointId), String> {
    let dir = if path.file_name().is_some_and(|n| n == "_metadata") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let bad = || {
        format!(
            "{} is not a checkpoint directory: expected <dir>/<job-id>/chk-<n> (see `weir checkpoints list <dir>`)",
            path.display()
        )
    };
    let n = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("chk-"))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let job_dir = dir.parent().ok_or_else(bad)?;
    let job = job_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(bad)?
        .to_owned();
    let base = job_dir.parent().ok_or_else(bad)?.to_path_buf();
    Ok((base, job, CheckpointId(n)))
}
