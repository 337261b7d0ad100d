//! The edge of the checkpoint protocol: carries out what the pure
//! [`CoordinatorState`] decides with real channels, clocks and storage.
//!
//! Subtasks hand their snapshots to a [`SnapshotUploader`], which runs the asynchronous
//! phase (encode, write) on the I/O runtime and reports back on a channel. The
//! [`CheckpointDriver`] lives on the executor's thread: it triggers checkpoints at the
//! sources, collects acknowledgements, writes `_metadata` (the commit point), tells
//! every subtask the outcome, and applies retention.

use crate::checkpoint::channel_state;
use crate::checkpoint::coordinator::{
    AckOutcome, CoordinatorConfig, CoordinatorState, Decision, DeclineReason, SubtaskStats, TaskRef,
};
use crate::checkpoint::metadata::{
    CheckpointMetadata, FORMAT_VERSION, SnapshotKind, TaskEntry, TaskState,
};
use crate::checkpoint::retention::{CheckpointFiles, plan_retention};
use crate::checkpoint::snapshot::{
    self, GroupRange, KeyedPart, SnapshotParts, SnapshotType, StateParts,
};
use crate::checkpoint::stats::{CheckpointStats, StatsTracker};
use crate::runtime::channel::ControlSender;
use crate::runtime::record::{Barrier, Control};
use crate::runtime::{ChannelState, CheckpointId, CheckpointSink, PartsWriter, Snapshot, now_ms};
use crate::state::{LocalFile, LocalFiles, LocalSnapshot, StoredFile, Upload};
use crate::storage::{CheckpointStorage, FileHandle, JobRecord};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::runtime::Handle;

/// What subtasks and their asynchronous phases tell the driver. Workers send it to the
/// coordinator as it is, encoded.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum CoordinatorMessage {
    /// A subtask's part of a checkpoint is stored.
    Ack {
        /// The subtask.
        task: TaskRef,
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Where its state is (boxed: the other messages are small).
        state: Box<TaskState>,
        /// Where its channel state is, when the checkpoint was unaligned here.
        channel_state: Option<FileHandle>,
        /// How it went.
        stats: SubtaskStats,
    },
    /// A subtask will not take part in a checkpoint.
    Decline {
        /// The subtask.
        task: TaskRef,
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Why.
        reason: DeclineReason,
    },
    /// A source reached the end of its input.
    SourceExhausted(TaskRef),
    /// Writing a checkpoint's `_metadata` (its commit) ended.
    Committed {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The commit's outcome; the error for the user.
        result: Result<(), String>,
    },
}

/// Which storage each savepoint in progress goes to; checkpoints go to the job's.
type Targets = Arc<std::sync::Mutex<BTreeMap<CheckpointId, Arc<dyn CheckpointStorage>>>>;

/// The targets, locked; a panic elsewhere leaves the map usable.
fn targets(
    targets: &Targets,
) -> std::sync::MutexGuard<'_, BTreeMap<CheckpointId, Arc<dyn CheckpointStorage>>> {
    targets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the asynchronous phase of subtasks' snapshots on the I/O runtime.
pub struct SnapshotUploader {
    messages: Sender<CoordinatorMessage>,
    storage: Arc<dyn CheckpointStorage>,
    targets: Targets,
    io: Handle,
    node_ids: Arc<[String]>,
    backend: String,
}

/// A savepoint's format, as Flink's `SavepointFormatType` (`formatType` in the REST API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SavepointFormat {
    /// Keyed state in the canonical format: any backend restores it.
    #[default]
    Canonical,
    /// The backend's own files: faster for RocksDB, restored only by it.
    Native,
}

/// A request for a savepoint of the running job (from its REST API).
#[derive(Debug)]
pub struct SavepointRequest {
    /// The directory (or `s3://` URL) to write it under; `None` takes the job's
    /// `[checkpointing] savepoint-dir`.
    pub directory: Option<String>,
    /// Its format.
    pub format: SavepointFormat,
    /// Stop the job once it is complete (stop-with-savepoint).
    pub stop: bool,
    /// Where the outcome goes: the savepoint's location, or why it failed.
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// Opens the storage of the job's savepoint with the given id under a directory or URL
/// (`<dir>/savepoint-<job>-<n>`): provided by the composition root, which knows URLs and
/// S3 settings.
pub type SavepointOpener =
    Arc<dyn Fn(&str, CheckpointId) -> Result<Arc<dyn CheckpointStorage>, String> + Send + Sync>;

/// A savepoint requested, not triggered yet.
struct Requested {
    directory: String,
    kind: SnapshotType,
    stop: bool,
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// A savepoint triggered or being committed.
struct Savepoint {
    storage: Arc<dyn CheckpointStorage>,
    stop: bool,
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

impl SnapshotUploader {
    /// An uploader that stores snapshots in `storage` and reports on `messages`: the
    /// driver's own, or on a worker the way to the coordinator. `node_ids` names the
    /// files; `backend` writes the keyed part.
    pub fn new(
        messages: Sender<CoordinatorMessage>,
        storage: Arc<dyn CheckpointStorage>,
        io: Handle,
        node_ids: Arc<[String]>,
        backend: String,
    ) -> Self {
        Self {
            messages,
            storage,
            targets: Targets::default(),
            io,
            node_ids,
            backend,
        }
    }
}

impl CheckpointSink for SnapshotUploader {
    fn submit(
        &self,
        task: TaskRef,
        checkpoint: CheckpointId,
        snapshot: Snapshot,
        channel_state: ChannelState,
        mut stats: SubtaskStats,
    ) {
        let (writer, files) = match snapshot {
            Snapshot::Finished => {
                let _ = self.messages.send(CoordinatorMessage::Ack {
                    task,
                    checkpoint,
                    state: Box::new(TaskState::Finished),
                    channel_state: None,
                    stats,
                });
                return;
            }
            Snapshot::State(writer) => {
                let parts: PartsWriter = Box::new(move || writer().map(SnapshotParts::operator));
                (parts, None)
            }
            Snapshot::Parts(writer) => (writer, None),
            Snapshot::PartsAndFiles(writer, files) => (writer, Some(files)),
            Snapshot::Declined(why) => {
                self.decline(task, checkpoint, DeclineReason::Failed(why));
                return;
            }
        };
        let name = format!(
            "{}-{}",
            self.node_ids.get(task.node).map_or("task", String::as_str),
            task.subtask.0
        );
        let storage = targets(&self.targets)
            .get(&checkpoint)
            .cloned()
            .unwrap_or_else(|| self.storage.clone());
        let messages = self.messages.clone();
        let backend = self.backend.clone();
        self.io.spawn(async move {
            let started = Instant::now();
            let (stored, channels) = tokio::join!(
                store_snapshot(storage.clone(), checkpoint, &name, &backend, writer, files),
                store_channel_state(&storage, checkpoint, &name, channel_state),
            );
            let message = match stored.and_then(|s| Ok((s, channels?))) {
                Ok((
                    Stored {
                        state,
                        full_size,
                        uploaded,
                    },
                    channel_state,
                )) => {
                    let channel_bytes = channel_state.as_ref().map_or(0, |h| h.size);
                    stats.async_duration = started.elapsed();
                    stats.state_size = full_size + channel_bytes;
                    stats.checkpointed_size = uploaded + channel_bytes;
                    CoordinatorMessage::Ack {
                        task,
                        checkpoint,
                        state: Box::new(state),
                        channel_state,
                        stats,
                    }
                }
                Err(reason) => CoordinatorMessage::Decline {
                    task,
                    checkpoint,
                    reason: DeclineReason::Failed(format!(
                        "writing the state of subtask {name} failed: {reason}"
                    )),
                },
            };
            let _ = messages.send(message);
        });
    }

    fn decline(&self, task: TaskRef, checkpoint: CheckpointId, reason: DeclineReason) {
        let _ = self.messages.send(CoordinatorMessage::Decline {
            task,
            checkpoint,
            reason,
        });
    }

    fn source_exhausted(&self, task: TaskRef) {
        let _ = self
            .messages
            .send(CoordinatorMessage::SourceExhausted(task));
    }
}

/// What the asynchronous phase stored for one subtask.
#[derive(Debug)]
pub struct Stored {
    /// Where the state is, as `_metadata` records it.
    pub state: TaskState,
    /// Bytes of the subtask's whole state.
    pub full_size: u64,
    /// Bytes this checkpoint wrote (less than `full_size` when files were reused).
    pub uploaded: u64,
}

/// Stores a subtask's channel state as `<name>-channels`, when it has any.
async fn store_channel_state(
    storage: &Arc<dyn CheckpointStorage>,
    checkpoint: CheckpointId,
    name: &str,
    state: ChannelState,
) -> Result<Option<FileHandle>, String> {
    if state.iter().all(Vec::is_empty) {
        return Ok(None);
    }
    let bytes = tokio::task::spawn_blocking(move || channel_state::encode(&state))
        .await
        .map_err(|e| format!("the channel state encoder stopped: {e}"))?;
    storage
        .write(checkpoint, &format!("{name}-channels"), Bytes::from(bytes))
        .await
        .map(Some)
        .map_err(|e| format!("writing the channel state failed: {e}"))
}

/// Backend files uploaded at once per subtask: enough to keep a remote store busy,
/// few enough that a large state does not hold many files in memory together.
const PARALLEL_UPLOADS: usize = 4;

/// The most bytes of backend files one subtask holds in memory for uploads at once (a
/// file larger than this goes alone). An upload reads its file whole; four compacted
/// SSTs at a time held more than the backend's own memory bound (a subtask with 500 MB
/// of state peaked at 630 MB of RSS with 64 MiB SSTs, 410 MB with 16 MiB ones and this).
const UPLOAD_BYTES_IN_FLIGHT: u64 = 32 << 20;

/// The asynchronous phase of one subtask's snapshot: produces its parts, lays them out
/// in the one snapshot format and stores the state file as `name`, with its state
/// backend's native files when there are any (the keyed part, written by `backend`).
/// The backend's files are made first, beside the parts (the backend may be waiting
/// for them), and their local directory is removed afterwards, whether storing worked
/// or not.
pub async fn store_snapshot(
    storage: Arc<dyn CheckpointStorage>,
    checkpoint: CheckpointId,
    name: &str,
    backend: &str,
    writer: PartsWriter,
    files: Option<LocalSnapshot>,
) -> Result<Stored, String> {
    let parts = async {
        tokio::task::spawn_blocking(writer)
            .await
            .map_err(|e| format!("the snapshot encoder stopped: {e}"))?
            .map_err(|e| e.to_string())
    };
    let Some(LocalSnapshot { prepare, uploaded }) = files else {
        let (index, size) = store_parts(&storage, checkpoint, name, parts.await?, None).await?;
        return Ok(Stored {
            state: TaskState::Parts(index),
            full_size: size,
            uploaded: size,
        });
    };
    let prepared = async {
        tokio::task::spawn_blocking(prepare)
            .await
            .map_err(|e| format!("making the state backend's files failed to run: {e}"))?
            .map_err(|e| format!("making the state backend's files failed: {e}"))
    };
    let (parts, prepared) = tokio::join!(parts, prepared);
    let LocalFiles { dir, files } = prepared?;
    let result = async {
        let parts = parts?;
        let (stored, written) = upload_files(&storage, checkpoint, name, &files).await?;
        let backend_bytes: u64 = stored.iter().map(|f| f.handle.size).sum();
        let native = KeyedPart::Native {
            backend: backend.to_owned(),
            key_groups: parts
                .key_groups
                .map(GroupRange::from)
                .unwrap_or(GroupRange { start: 0, end: 0 }),
            files: stored.clone(),
        };
        let (index, size) = store_parts(&storage, checkpoint, name, parts, Some(native)).await?;
        Ok((
            Stored {
                full_size: size + backend_bytes,
                uploaded: size + written,
                state: TaskState::Parts(index),
            },
            stored,
        ))
    }
    .await;
    if let Ok((_, files)) = &result {
        uploaded(files);
    }
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    result.map(|(stored, _)| stored)
}

/// Lays out `parts` and writes the state file, unless it is empty; returns the index
/// `_metadata` records and the file's size.
async fn store_parts(
    storage: &Arc<dyn CheckpointStorage>,
    checkpoint: CheckpointId,
    name: &str,
    parts: SnapshotParts,
    native: Option<KeyedPart>,
) -> Result<(StateParts, u64), String> {
    let (bytes, mut index) = snapshot::lay_out(parts, native);
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if !bytes.is_empty() {
        let handle = storage
            .write(checkpoint, name, Bytes::from(bytes))
            .await
            .map_err(|e| e.to_string())?;
        index.file = Some(handle);
    }
    Ok((index, size))
}

/// Stores a backend's files, [`PARALLEL_UPLOADS`] (and at most [`UPLOAD_BYTES_IN_FLIGHT`])
/// at a time: shared ones under `shared/`, private ones with the checkpoint, reused ones
/// not at all. Returns where each went, in the order given, and the bytes written.
async fn upload_files(
    storage: &Arc<dyn CheckpointStorage>,
    checkpoint: CheckpointId,
    task: &str,
    files: &[LocalFile],
) -> Result<(Vec<StoredFile>, u64), String> {
    let mut stored = Vec::with_capacity(files.len());
    let mut uploaded = 0;
    let mut sizes = Vec::with_capacity(files.len());
    for file in files {
        let size = match file.upload {
            Upload::Reuse(_) => 0,
            Upload::Shared(_) | Upload::Private => tokio::fs::metadata(&file.path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", file.path.display()))?
                .len(),
        };
        sizes.push(size);
    }
    for chunk in upload_chunks(&sizes).into_iter().map(|range| &files[range]) {
        let mut uploads = tokio::task::JoinSet::new();
        for (i, file) in chunk.iter().enumerate() {
            let (storage, file, task) = (storage.clone(), file.clone(), task.to_owned());
            uploads.spawn(async move {
                let handle = match &file.upload {
                    Upload::Reuse(handle) => return Ok((i, file.name, handle.clone(), 0)),
                    Upload::Shared(shared) => {
                        let bytes = read_local(&file).await?;
                        storage.write_shared(shared, bytes).await
                    }
                    Upload::Private => {
                        let bytes = read_local(&file).await?;
                        storage
                            .write(checkpoint, &format!("{task}-{}", file.name), bytes)
                            .await
                    }
                }
                .map_err(|e| e.to_string())?;
                let size = handle.size;
                Ok::<_, String>((i, file.name, handle, size))
            });
        }
        let mut done = Vec::with_capacity(chunk.len());
        while let Some(joined) = uploads.join_next().await {
            done.push(joined.map_err(|e| format!("an upload stopped: {e}"))??);
        }
        done.sort_by_key(|(i, ..)| *i);
        for (_, name, handle, size) in done {
            uploaded += size;
            stored.push(StoredFile { name, handle });
        }
    }
    Ok((stored, uploaded))
}

/// `sizes` cut into consecutive ranges of at most [`PARALLEL_UPLOADS`] files and
/// [`UPLOAD_BYTES_IN_FLIGHT`] bytes, a larger file alone.
fn upload_chunks(sizes: &[u64]) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        let full = i - start == PARALLEL_UPLOADS || bytes + size > UPLOAD_BYTES_IN_FLIGHT;
        if i > start && full {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        chunks.push(start..sizes.len());
    }
    chunks
}

async fn read_local(file: &LocalFile) -> Result<Bytes, String> {
    tokio::fs::read(&file.path)
        .await
        .map(Bytes::from)
        .map_err(|e| format!("cannot read {}: {e}", file.path.display()))
}

/// Starts the task that stores the statistics it is handed as `_checkpoint-stats`, the
/// latest first and one write at a time. It ends once the sender is dropped and the last
/// value is written.
fn spawn_stats_writer(
    storage: &Arc<dyn CheckpointStorage>,
    io: &Handle,
) -> (
    tokio::sync::watch::Sender<Option<CheckpointStats>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(None::<CheckpointStats>);
    let storage = storage.clone();
    let task = io.spawn(async move {
        loop {
            let changed = rx.changed().await;
            let latest = rx.borrow_and_update().clone();
            if let Some(stats) = latest {
                match serde_json::to_vec(&stats) {
                    Ok(json) => {
                        if let Err(e) = storage
                            .write_record(JobRecord::Statistics, Bytes::from(json))
                            .await
                        {
                            tracing::warn!("could not store the checkpoint statistics: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("could not encode the checkpoint statistics: {e}"),
                }
            }
            if changed.is_err() {
                return;
            }
        }
    });
    (tx, task)
}

/// What the driver needs to know about the job.
pub struct DriverSetup {
    /// The job's name, recorded in `_metadata`.
    pub job: String,
    /// The state backend's name, recorded in `_metadata`.
    pub backend: String,
    /// Exactly-once or at-least-once, recorded in `_metadata`.
    pub exactly_once: bool,
    /// The coordinator's knobs.
    pub config: CoordinatorConfig,
    /// How many completed checkpoints to keep.
    pub num_retained: u32,
    /// Where checkpoints go.
    pub storage: Arc<dyn CheckpointStorage>,
    /// The I/O runtime.
    pub io: Handle,
    /// The first checkpoint id to use (monotonic across restarts).
    pub next_id: CheckpointId,
    /// Completed checkpoints already in storage with the shared files they reference,
    /// oldest first, for retention.
    pub completed: Vec<CheckpointFiles>,
    /// Where the driver reports what becomes of each checkpoint.
    pub stats: StatsTracker,
    /// When a checkpoint turns unaligned after its trigger: `None` never (aligned),
    /// zero at once (`unaligned`), else `aligned-timeout`.
    pub unaligned_after: Option<Duration>,
    /// The job's number of key groups, recorded in `_metadata`.
    pub max_parallelism: u32,
    /// Requests for savepoints.
    pub savepoints: Receiver<SavepointRequest>,
    /// `[checkpointing] savepoint-dir`: where a savepoint goes when its request names
    /// no directory.
    pub savepoint_dir: Option<String>,
    /// Opens a savepoint's storage.
    pub open_savepoint: SavepointOpener,
}

/// Every subtask as the driver addresses it.
pub struct DriverTask {
    /// The subtask.
    pub task: TaskRef,
    /// Its control channel.
    pub control: ControlSender,
    /// Whether it is a source (sources get the triggers).
    pub is_source: bool,
    /// Its node's parallelism.
    pub parallelism: u32,
}

/// How often a requested savepoint tries again to trigger while a checkpoint is in
/// progress.
const SAVEPOINT_RETRY: Duration = Duration::from_millis(20);

/// Why the driver fails the job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointFailure(pub String);

/// What the subtasks stored for one pending checkpoint.
struct Collected {
    /// When the checkpoint was triggered, in milliseconds since the Unix epoch.
    triggered_at_ms: i64,
    /// Each subtask's state, channel state and statistics.
    tasks: BTreeMap<TaskRef, (TaskState, Option<FileHandle>, SubtaskStats)>,
}

/// The checkpoint coordinator of one run of a job.
pub struct CheckpointDriver {
    setup: DriverSetup,
    coordinator: CoordinatorState,
    messages: Receiver<CoordinatorMessage>,
    tasks: Vec<DriverTask>,
    node_ids: Arc<[String]>,
    exhausted: BTreeSet<TaskRef>,
    /// The first checkpoint triggered after every source was exhausted: its commit ends
    /// the job.
    final_checkpoint: Option<CheckpointId>,
    /// Per pending checkpoint: its trigger time and what each subtask stored.
    acks: BTreeMap<CheckpointId, Collected>,
    /// The checkpoints whose `_metadata` is being written, and their metadata.
    committing: BTreeMap<CheckpointId, CheckpointMetadata>,
    /// The commits' writes, so that the run ends only once they have.
    commits: Vec<tokio::task::JoinHandle<()>>,
    /// The driver's own way to its message channel, for the commits' outcomes.
    to_self: Sender<CoordinatorMessage>,
    /// The latest statistics for the writer that stores them.
    stats_writer: tokio::sync::watch::Sender<Option<CheckpointStats>>,
    /// The writer that stores the statistics beside the checkpoints.
    stats_task: tokio::task::JoinHandle<()>,
    /// Every node's id and parallelism, in graph order, for the statistics.
    vertices: Vec<(String, u32)>,
    /// The retained completed checkpoints and the shared files they reference.
    completed: Vec<CheckpointFiles>,
    /// When the run started: a moment that is always past, for "due at once".
    started: Instant,
    /// Savepoints requested but not triggered yet, oldest first.
    requested: std::collections::VecDeque<Requested>,
    /// Savepoints triggered, by id.
    savepoints: BTreeMap<CheckpointId, Savepoint>,
    /// Where the uploader sends each savepoint's files.
    targets: Targets,
    /// Set once a stop-with-savepoint completed: its location.
    stopped_with: Option<String>,
}

impl CheckpointDriver {
    /// A driver for `tasks`, and the sink its subtasks hand snapshots to.
    pub fn new(
        setup: DriverSetup,
        tasks: Vec<DriverTask>,
        node_ids: Arc<[String]>,
        now: Instant,
    ) -> (Self, Arc<dyn CheckpointSink>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (stats_writer, stats_task) = spawn_stats_writer(&setup.storage, &setup.io);
        let uploader = SnapshotUploader::new(
            tx.clone(),
            setup.storage.clone(),
            setup.io.clone(),
            node_ids.clone(),
            setup.backend.clone(),
        );
        let targets = uploader.targets.clone();
        let coordinator = CoordinatorState::new(
            setup.config.clone(),
            setup.next_id,
            tasks.iter().map(|t| t.task),
            now,
        );
        let completed = setup.completed.clone();
        let mut vertices: Vec<(String, u32)> = Vec::new();
        for task in &tasks {
            let id = node_ids.get(task.task.node).cloned().unwrap_or_default();
            if !vertices.iter().any(|(v, _)| *v == id) {
                vertices.push((id, task.parallelism));
            }
        }
        let driver = Self {
            vertices,
            setup,
            coordinator,
            messages: rx,
            tasks,
            node_ids,
            exhausted: BTreeSet::new(),
            final_checkpoint: None,
            acks: BTreeMap::new(),
            committing: BTreeMap::new(),
            commits: Vec::new(),
            to_self: tx,
            stats_writer,
            stats_task,
            completed,
            started: now,
            requested: std::collections::VecDeque::new(),
            savepoints: BTreeMap::new(),
            targets,
            stopped_with: None,
        };
        (driver, Arc::new(uploader))
    }

    /// The channel the driver's messages arrive on.
    pub fn messages(&self) -> &Receiver<CoordinatorMessage> {
        &self.messages
    }

    fn all_sources_exhausted(&self) -> bool {
        self.tasks
            .iter()
            .filter(|t| t.is_source)
            .all(|t| self.exhausted.contains(&t.task))
    }

    /// When the driver next has something to do without a message: a trigger or an
    /// expiry.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.requested.is_empty() {
            return Some(Instant::now() + SAVEPOINT_RETRY);
        }
        match (self.next_trigger(), self.coordinator.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Triggers and expires what is due at `now`: a requested savepoint first, then the
    /// periodic checkpoint.
    pub fn on_tick(&mut self, now: Instant) -> Result<(), CheckpointFailure> {
        let decisions = self.coordinator.expire(now);
        self.apply(decisions)?;
        if self.stopping() {
            return Ok(());
        }
        if !self.requested.is_empty() {
            self.trigger_savepoint(now);
            return Ok(());
        }
        if self.next_trigger().is_some_and(|due| due <= now)
            && let Ok(id) = self.coordinator.trigger(now)
        {
            let last = self.final_checkpoint.is_none() && self.all_sources_exhausted();
            if last {
                self.final_checkpoint = Some(id);
            }
            // The final checkpoint is always aligned: the job ends when it completes, so
            // nothing may be left in flight behind its barriers.
            let unaligned_after = if last {
                None
            } else {
                self.setup.unaligned_after
            };
            self.start(Barrier::checkpoint(id, now_ms(), unaligned_after));
        }
        Ok(())
    }

    /// Sends `barrier` to the sources, and notes that its checkpoint started.
    fn start(&mut self, barrier: Barrier) {
        let id = barrier.checkpoint;
        tracing::debug!(checkpoint = id.0, kind = ?barrier.kind, "triggering");
        self.setup.stats.update(|s| {
            s.triggered(id.0, barrier.triggered_at_ms, &self.vertices);
            if let Some(format) = barrier.kind.savepoint_format() {
                s.savepoint(id.0, format);
            }
        });
        self.acks.insert(
            id,
            Collected {
                triggered_at_ms: barrier.triggered_at_ms,
                tasks: BTreeMap::new(),
            },
        );
        for task in self.tasks.iter().filter(|t| t.is_source) {
            task.control.send(Control::Trigger(barrier));
        }
    }

    /// Whether a stop-with-savepoint is under way or done: nothing else is triggered.
    fn stopping(&self) -> bool {
        self.stopped_with.is_some() || self.savepoints.values().any(|s| s.stop)
    }

    /// The channel savepoint requests arrive on.
    pub fn savepoint_requests(&self) -> &Receiver<SavepointRequest> {
        &self.setup.savepoints
    }

    /// Queues a savepoint request; it is triggered as soon as no checkpoint is in
    /// progress. A request that cannot be carried out is answered at once.
    pub fn on_savepoint_request(&mut self, request: SavepointRequest) {
        let SavepointRequest {
            directory,
            format,
            stop,
            reply,
        } = request;
        let refuse = |reply: tokio::sync::oneshot::Sender<_>, why: String| {
            tracing::warn!("savepoint refused: {why}");
            let _ = reply.send(Err(why));
        };
        if self.stopping() {
            return refuse(reply, "the job is stopping with a savepoint already".into());
        }
        if self.all_sources_exhausted() {
            return refuse(
                reply,
                "the job's input ended and it is finishing; its final checkpoint holds its end state"
                    .into(),
            );
        }
        let Some(directory) = directory.or_else(|| self.setup.savepoint_dir.clone()) else {
            return refuse(
                reply,
                "no directory was given for the savepoint and the job sets no [checkpointing] savepoint-dir: pass one, e.g. `weir savepoint <job> /var/lib/weir/savepoints`"
                    .into(),
            );
        };
        let kind = match format {
            SavepointFormat::Canonical => SnapshotType::CanonicalSavepoint,
            SavepointFormat::Native => SnapshotType::NativeSavepoint,
        };
        tracing::info!(%directory, stop, ?format, "savepoint requested");
        self.requested.push_back(Requested {
            directory,
            kind,
            stop,
            reply,
        });
    }

    /// Triggers the oldest requested savepoint, unless a checkpoint is in progress (it
    /// is tried again at the next tick). Its storage was opened for the id it gets.
    fn trigger_savepoint(&mut self, now: Instant) {
        if self.coordinator.in_progress().next().is_some() {
            return;
        }
        let Some(request) = self.requested.pop_front() else {
            return;
        };
        // The id the trigger below takes.
        let id = self.coordinator.next_id();
        let opened = (self.setup.open_savepoint)(&request.directory, id).and_then(|storage| {
            let checked = storage.clone();
            self.setup
                .io
                .block_on(async move { checked.check().await })
                .map(|()| storage)
                .map_err(|e| format!("the savepoint directory cannot be written: {e}"))
        });
        let storage = match opened {
            Ok(storage) => storage,
            Err(why) => {
                tracing::warn!("savepoint refused: {why}");
                let _ = request.reply.send(Err(why));
                return;
            }
        };
        let savepoint = Savepoint {
            storage,
            stop: request.stop,
            reply: request.reply,
        };
        match self.coordinator.trigger_savepoint(now) {
            Ok(id) => {
                let barrier = Barrier {
                    checkpoint: id,
                    triggered_at_ms: now_ms(),
                    // Savepoints are always aligned.
                    unaligned_after: None,
                    kind: request.kind,
                    stop: request.stop,
                };
                targets(&self.targets).insert(id, savepoint.storage.clone());
                self.savepoints.insert(id, savepoint);
                self.start(barrier);
            }
            Err(refusal) => {
                let why = format!("the savepoint could not be triggered: {refusal}");
                let _ = savepoint.reply.send(Err(why));
            }
        }
    }

    /// The savepoint `id`, if it is one, no longer in progress: its files no longer go
    /// to its storage.
    fn take_savepoint(&mut self, id: CheckpointId) -> Option<Savepoint> {
        let savepoint = self.savepoints.remove(&id)?;
        targets(&self.targets).remove(&id);
        Some(savepoint)
    }

    /// A savepoint ended without completing: answer its request, drop what it wrote.
    fn savepoint_failed(&mut self, id: CheckpointId, why: &str) {
        let Some(savepoint) = self.take_savepoint(id) else {
            return;
        };
        let _ = savepoint
            .reply
            .send(Err(format!("savepoint {id} failed: {why}")));
        let storage = savepoint.storage;
        self.setup.io.spawn(async move {
            let _ = storage.delete_checkpoint(id).await;
        });
    }

    /// When the next checkpoint is due; once every source is exhausted, the final
    /// checkpoint is due at once (as far as `max-concurrent` and `min-pause` allow).
    fn next_trigger(&self) -> Option<Instant> {
        let due = self.coordinator.next_trigger_time()?;
        Some(if self.all_sources_exhausted() {
            self.started.min(due)
        } else {
            due
        })
    }

    /// Handles one message from a subtask or an asynchronous phase.
    pub fn on_message(
        &mut self,
        message: CoordinatorMessage,
        now: Instant,
    ) -> Result<(), CheckpointFailure> {
        match message {
            CoordinatorMessage::SourceExhausted(task) => {
                self.exhausted.insert(task);
                Ok(())
            }
            CoordinatorMessage::Committed { checkpoint, result } => {
                self.on_committed(checkpoint, result, now)
            }
            CoordinatorMessage::Decline {
                task,
                checkpoint,
                reason,
            } => {
                if let DeclineReason::Failed(why) = &reason {
                    tracing::warn!(checkpoint = checkpoint.0, "checkpoint declined: {why}");
                }
                let decisions = self.coordinator.decline(checkpoint, task, reason);
                self.apply(decisions)
            }
            CoordinatorMessage::Ack {
                task,
                checkpoint,
                state,
                channel_state,
                stats,
            } => {
                let mut stats = stats;
                if let Some(collected) = self.acks.get_mut(&checkpoint) {
                    let at = now_ms();
                    let since = at.saturating_sub(collected.triggered_at_ms);
                    stats.end_to_end =
                        std::time::Duration::from_millis(u64::try_from(since).unwrap_or(0));
                    let node = self.node_ids.get(task.node).map_or("", String::as_str);
                    self.setup.stats.update(|s| {
                        s.acknowledged(checkpoint.0, node, task.subtask.0, at, &stats);
                    });
                    collected
                        .tasks
                        .insert(task, (*state, channel_state, stats.clone()));
                }
                match self.coordinator.acknowledge(checkpoint, task, stats, now) {
                    AckOutcome::Complete(_) => self.commit(checkpoint),
                    AckOutcome::Pending { .. } | AckOutcome::Ignored(_) => Ok(()),
                }
            }
        }
    }

    /// A subtask failed: every checkpoint in progress is aborted (not counted).
    pub fn on_task_failure(&mut self) {
        for id in self.coordinator.on_task_failure() {
            self.acks.remove(&id);
            let why = "a subtask failed while it was in progress".to_owned();
            self.setup
                .stats
                .update(|s| s.failed(id.0, now_ms(), why, true));
        }
        self.store_stats();
    }

    fn commit(&mut self, id: CheckpointId) -> Result<(), CheckpointFailure> {
        let Some(Collected {
            triggered_at_ms,
            tasks,
        }) = self.acks.remove(&id)
        else {
            return Ok(());
        };
        let tasks = tasks
            .into_iter()
            .map(|(task, (state, channel_state, stats))| TaskEntry {
                node: self.node_ids.get(task.node).cloned().unwrap_or_default(),
                subtask: task.subtask.0,
                parallelism: self
                    .tasks
                    .iter()
                    .find(|t| t.task == task)
                    .map_or(0, |t| t.parallelism),
                state,
                channel_state,
                stats,
            })
            .collect();
        let savepoint = self.savepoints.get(&id);
        let metadata = CheckpointMetadata {
            version: FORMAT_VERSION,
            job: self.setup.job.clone(),
            checkpoint: id.0,
            kind: if savepoint.is_some() {
                SnapshotKind::Savepoint
            } else {
                SnapshotKind::Checkpoint
            },
            max_parallelism: self.setup.max_parallelism,
            backend: self.setup.backend.clone(),
            mode: if self.setup.exactly_once {
                "exactly-once"
            } else {
                "at-least-once"
            }
            .to_owned(),
            triggered_at_ms,
            completed_at_ms: now_ms(),
            tasks,
        };
        // The commit runs on the I/O runtime, so acknowledgements, triggers and expiries
        // go on while it writes; its outcome comes back as a message.
        let storage = savepoint.map_or_else(|| self.setup.storage.clone(), |s| s.storage.clone());
        let to_self = self.to_self.clone();
        let bytes = Bytes::from(metadata.to_bytes());
        self.committing.insert(id, metadata);
        self.commits.retain(|c| !c.is_finished());
        self.commits.push(self.setup.io.spawn(async move {
            let result = storage.commit(id, bytes).await.map_err(|e| e.to_string());
            let _ = to_self.send(CoordinatorMessage::Committed {
                checkpoint: id,
                result,
            });
        }));
        Ok(())
    }

    /// The commit of `id` ended: tell every subtask, apply retention, and end the job
    /// after its final checkpoint; or count the failure.
    fn on_committed(
        &mut self,
        id: CheckpointId,
        result: Result<(), String>,
        now: Instant,
    ) -> Result<(), CheckpointFailure> {
        let Some(metadata) = self.committing.remove(&id) else {
            return Ok(());
        };
        let decisions = match result {
            Ok(()) if self.savepoints.contains_key(&id) => {
                self.savepoint_completed(id, &metadata);
                self.coordinator.committed(id, now)
            }
            Ok(()) => {
                tracing::info!(
                    checkpoint = id.0,
                    end_to_end_ms = metadata.end_to_end_ms(),
                    state_bytes = metadata.state_size(),
                    unaligned = metadata.is_unaligned(),
                    persisted_in_flight_bytes = metadata.persisted_in_flight(),
                    "checkpoint completed"
                );
                let path = self.setup.storage.checkpoint_url(id);
                self.setup
                    .stats
                    .update(|s| s.completed(id.0, metadata.completed_at_ms, path));
                self.completed.push(metadata.files());
                let last = self.final_checkpoint.is_some_and(|f| id >= f);
                self.notify_complete(id, last);
                self.retain();
                self.coordinator.committed(id, now)
            }
            Err(e) => {
                tracing::warn!(checkpoint = id.0, "writing _metadata failed: {e}");
                self.savepoint_failed(id, &format!("writing its _metadata failed: {e}"));
                self.coordinator.commit_failed(id, e)
            }
        };
        self.store_stats();
        self.apply(decisions.map_err(|e| CheckpointFailure(e.to_string()))?)
    }

    /// A savepoint is committed: answer its request. An intermediate savepoint commits
    /// no side effects (as Flink's since 1.15): the sinks' transactions it sealed are
    /// committed by the next checkpoint. Stop-with-savepoint commits them, then stops
    /// every subtask.
    fn savepoint_completed(&mut self, id: CheckpointId, metadata: &CheckpointMetadata) {
        let Some(savepoint) = self.take_savepoint(id) else {
            return;
        };
        let location = savepoint.storage.describe();
        tracing::info!(
            savepoint = id.0,
            %location,
            end_to_end_ms = metadata.end_to_end_ms(),
            state_bytes = metadata.state_size(),
            stop = savepoint.stop,
            "savepoint completed"
        );
        let path = location.clone();
        self.setup
            .stats
            .update(|s| s.completed(id.0, metadata.completed_at_ms, path));
        if savepoint.stop {
            self.notify_complete(id, true);
            self.stopped_with = Some(location.clone());
        }
        let _ = savepoint.reply.send(Ok(location));
    }

    /// Tells every task that `id` is complete and, with `finish`, then every task to
    /// finish: each hears of the completion (a sink commits) before any upstream task
    /// can exit.
    fn notify_complete(&self, id: CheckpointId, finish: bool) {
        for task in &self.tasks {
            task.control.send(Control::Complete(id));
        }
        if finish {
            for task in &self.tasks {
                task.control.send(Control::Finish);
            }
        }
    }

    /// Hands the statistics to their writer; a write still running is followed by one
    /// of the latest, and the ones in between are skipped.
    fn store_stats(&self) {
        let _ = self.stats_writer.send(Some(self.setup.stats.snapshot()));
    }

    /// Waits for the commits still being written, counts those that made it (a failed
    /// run no longer hears of them, but they are restorable), then for the last
    /// statistics write: what the run committed is in storage when it ends.
    pub fn finish(mut self) -> Option<String> {
        let commits = std::mem::take(&mut self.commits);
        self.setup.io.block_on(async move {
            for commit in commits {
                let _ = commit.await;
            }
        });
        for message in self.messages.try_iter() {
            if let CoordinatorMessage::Committed {
                checkpoint,
                result: Ok(()),
            } = message
                && let Some(metadata) = self.committing.get(&checkpoint)
            {
                let path = self.setup.storage.checkpoint_url(checkpoint);
                self.setup
                    .stats
                    .update(|s| s.completed(checkpoint.0, metadata.completed_at_ms, path));
            }
        }
        self.store_stats();
        for (_, savepoint) in std::mem::take(&mut self.savepoints) {
            let _ = savepoint.reply.send(Err(
                "the job ended before the savepoint completed".to_owned()
            ));
        }
        let Self {
            setup,
            stats_writer,
            stats_task,
            stopped_with,
            ..
        } = self;
        drop(stats_writer);
        let _ = setup.io.block_on(stats_task);
        stopped_with
    }

    fn apply(&mut self, decisions: Vec<Decision>) -> Result<(), CheckpointFailure> {
        for decision in decisions {
            match decision {
                Decision::Abort { checkpoint, reason } => {
                    tracing::info!(checkpoint = checkpoint.0, "checkpoint aborted: {reason}");
                    self.savepoint_failed(checkpoint, &reason.to_string());
                    let (counted, why) = (reason.counts(), reason.to_string());
                    self.setup
                        .stats
                        .update(|s| s.failed(checkpoint.0, now_ms(), why, counted));
                    self.store_stats();
                    self.acks.remove(&checkpoint);
                    if self.final_checkpoint == Some(checkpoint) {
                        // The next trigger takes its place.
                        self.final_checkpoint = None;
                    }
                    for task in &self.tasks {
                        task.control.send(Control::Abort(checkpoint));
                    }
                }
                Decision::FailJob(why) => return Err(CheckpointFailure(why.to_string())),
            }
        }
        Ok(())
    }

    /// Deletes the completed checkpoints beyond `num-retained`, and the shared files
    /// that only they referenced, in the background.
    ///
    /// A shared file's name is fixed by the backend instance and its local file, so a
    /// snapshot still being taken that holds a file of a deleted checkpoint also shares
    /// it with every checkpoint in between, the retained latest one among them: no
    /// checkpoint in flight loses a file. Those already acknowledged are kept out of
    /// the deletion all the same.
    fn retain(&mut self) {
        let in_flight = self
            .acks
            .values()
            .flat_map(|c| c.tasks.values())
            .flat_map(|(state, _, _)| state.shared_files())
            .collect();
        let plan = plan_retention(&self.completed, self.setup.num_retained, &in_flight);
        self.completed.retain(|c| plan.retain.contains(&c.id));
        let storage = self.setup.storage.clone();
        self.setup.io.spawn(async move {
            for id in plan.delete {
                if let Err(e) = storage.delete_checkpoint(id).await {
                    tracing::warn!(
                        checkpoint = id.0,
                        "could not delete a checkpoint beyond num-retained: {e}"
                    );
                    // Its shared files stay too: its metadata may still be there.
                    return;
                }
            }
            let shared: Vec<String> = plan.delete_shared.into_iter().map(|f| f.0).collect();
            if !shared.is_empty()
                && let Err(e) = storage.delete_shared(&shared).await
            {
                tracing::warn!("could not delete shared files no checkpoint references: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = UPLOAD_BYTES_IN_FLIGHT;

    #[test]
    fn small_files_go_four_at_a_time() {
        assert_eq!(upload_chunks(&[1 << 10; 9]), [0..4, 4..8, 8..9]);
    }

    #[test]
    fn large_files_go_as_their_bytes_allow_and_a_huge_one_alone() {
        let sizes = [B / 2, B / 4, B / 4, 2 * B, 1, B - 1];
        assert_eq!(upload_chunks(&sizes), [0..3, 3..4, 4..6]);
    }

    #[test]
    fn no_files_make_no_chunk() {
        assert!(upload_chunks(&[]).is_empty());
    }
}
