//! What a running job publishes for the REST server: its graph, its state, its
//! checkpoint statistics and its counters.
//!
//! [`LiveJob`] is made once per `weir run` from the job file, before the job starts, and
//! shared by the launcher (which sets the state and hands the tracker and the metrics
//! slot to each run) and the server's handlers (which read, cancel, or queue savepoint
//! requests for the checkpoint coordinator to take).

use crate::checkpoint::stats::StatsTracker;
use crate::job::{CheckpointMode, JobSpec, NodeKind, Partition};
use crate::runtime::CancelToken;
use crate::runtime::metrics::MetricsSlot;
use crate::runtime::now_ms;
use crate::storage::CheckpointStorage;
use crate::wasm::Profiler;
use std::sync::{Arc, Mutex, OnceLock};

/// A job's state, with Flink's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Loading components, opening storage, restoring.
    Initializing,
    /// Running.
    Running,
    /// A subtask failed; waiting to restart.
    Restarting,
    /// Its input ended and everything was committed.
    Finished,
    /// Cancelled by the user.
    Canceled,
    /// Failed for good.
    Failed,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Canceled | Self::Failed)
    }
}

/// One vertex of the job graph as the API shows it.
#[derive(Clone, Debug)]
pub struct Vertex {
    /// Flink-style id: 32 hexadecimal digits, stable for the job and node.
    pub id: String,
    /// The node's id in the job file.
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
    /// What it is: `Source: generator`, `Operator: count.wasm`, `Sink: file`.
    pub description: String,
    /// Its inputs: the upstream vertex's index and Flink's ship strategy.
    pub inputs: Vec<(usize, &'static str)>,
    /// Whether it runs a WebAssembly operator (and can be sampled).
    pub is_wasm: bool,
}

/// The checkpoint settings, for `/jobs/:id/checkpoints/config`.
#[derive(Clone, Debug)]
pub struct CheckpointSettings {
    /// `exactly_once` or `at_least_once`.
    pub mode: &'static str,
    /// Milliseconds between triggers.
    pub interval_ms: u64,
    /// Milliseconds before a checkpoint expires.
    pub timeout_ms: u64,
    /// Least milliseconds between two checkpoints.
    pub min_pause_ms: u64,
    /// Most checkpoints at once.
    pub max_concurrent: u32,
    /// Whether unaligned checkpoints are on.
    pub unaligned: bool,
    /// Milliseconds before an aligned checkpoint turns unaligned.
    pub aligned_timeout_ms: u64,
    /// Consecutive failures tolerated.
    pub tolerable_failed: u32,
    /// Whether completed checkpoints outlive a cancelled job.
    pub retain_on_cancellation: bool,
    /// Where checkpoints go.
    pub storage: String,
}

/// What changes as the job goes.
#[derive(Clone, Debug)]
pub struct Status {
    /// Its state.
    pub state: JobState,
    /// When it entered each state it went through, in order, in milliseconds since the
    /// Unix epoch.
    pub timestamps: Vec<(JobState, i64)>,
    /// Restarts so far.
    pub restarts: u64,
    /// Why it failed, once it failed for good.
    pub failure: Option<String>,
}

/// A running job as the REST server sees it.
#[derive(Debug)]
pub struct LiveJob {
    /// Flink-style job id: 32 hexadecimal digits, stable for the job's name.
    pub id: String,
    /// The job's name.
    pub name: String,
    /// Its number of key groups.
    pub max_parallelism: u32,
    /// The state backend's Flink name.
    pub state_backend: &'static str,
    /// Its vertices, in graph order.
    pub vertices: Vec<Vertex>,
    /// Its checkpoint settings, when checkpointing is on.
    pub checkpointing: Option<CheckpointSettings>,
    /// When the process started the job, in milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// What changes as the job goes.
    status: Mutex<Status>,
    /// Its checkpoint statistics.
    pub stats: StatsTracker,
    /// The current run's counters.
    pub metrics: MetricsSlot,
    /// Cancels the job.
    pub cancel: CancelToken,
    /// Samples its guests' stacks.
    pub profiler: Profiler,
    /// Where its checkpoints are, once the launcher opened the storage.
    pub storage: OnceLock<Arc<dyn CheckpointStorage>>,
    /// The savepoints asked for, which the checkpoint coordinator takes.
    pub savepoints: SavepointQueue,
}

/// The outcome of a savepoint request that the job did not answer before it ended.
pub const ENDED_FIRST: &str = "the job ended before the savepoint completed";

pub use crate::checkpoint::driver::{SavepointFormat, SavepointRequest};

/// The savepoint requests of a job, in the order they were made.
///
/// Unbounded: a request is small, and each comes from a person or script through the
/// REST API, which authorises it, so the queue is as long as what they asked for.
#[derive(Debug)]
pub struct SavepointQueue {
    sender: crossbeam_channel::Sender<SavepointRequest>,
    receiver: crossbeam_channel::Receiver<SavepointRequest>,
}

impl Default for SavepointQueue {
    fn default() -> Self {
        let (sender, receiver) = crossbeam_channel::unbounded();
        Self { sender, receiver }
    }
}

impl SavepointQueue {
    /// Queues `request`.
    ///
    /// # Errors
    /// Gives `request` back when the queue is closed, which it is not while the queue
    /// lives: it holds a receiver itself.
    pub fn send(&self, request: SavepointRequest) -> Result<(), SavepointRequest> {
        self.sender.send(request).map_err(|e| e.into_inner())
    }

    /// A receiver of the requests, for the coordinator; each request goes to one
    /// receiver.
    pub fn receiver(&self) -> crossbeam_channel::Receiver<SavepointRequest> {
        self.receiver.clone()
    }

    /// Answers every request still queued with [`ENDED_FIRST`], once no coordinator
    /// will take them (the job ended): their askers learn it at once instead of waiting.
    pub fn refuse_pending(&self) {
        for request in self.receiver.try_iter() {
            // The asker may have gone; nobody else is to be told.
            let _ = request.reply.send(Err(ENDED_FIRST.to_owned()));
        }
    }
}

/// A 32-digit hexadecimal id of `parts`, as Flink's job, vertex and trigger ids look.
pub(crate) fn hex_id(parts: &[&str]) -> String {
    let joined = parts.join("\u{0}");
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(joined.as_bytes()))
}

fn ship_strategy(partition: Partition) -> &'static str {
    match partition {
        Partition::Forward => "FORWARD",
        Partition::Rebalance => "REBALANCE",
        Partition::Broadcast => "BROADCAST",
        Partition::KeyBy => "HASH",
    }
}

fn description(kind: &NodeKind) -> (String, bool) {
    match kind {
        NodeKind::Source(source) => (format!("Source: {}", source.kind.name()), false),
        NodeKind::Operator(op) => {
            let file = op.wasm.file_name().map_or_else(
                || op.wasm.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            );
            (format!("Operator: {file}"), true)
        }
        NodeKind::Sink(sink) => (format!("Sink: {}", sink.kind.name()), false),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LiveJob {
    /// The view of `spec`, initializing, cancelled through `cancel`.
    pub fn new(spec: &JobSpec, cancel: CancelToken) -> Self {
        let vertices = spec
            .nodes
            .iter()
            .map(|node| {
                let (description, is_wasm) = description(&node.kind);
                Vertex {
                    id: hex_id(&[&spec.name, &node.id]),
                    name: node.id.clone(),
                    parallelism: node.parallelism,
                    description,
                    inputs: node
                        .inputs
                        .iter()
                        .map(|&i| (i, ship_strategy(node.partition)))
                        .collect(),
                    is_wasm,
                }
            })
            .collect();
        let checkpointing = spec.checkpointing.as_ref().map(|c| CheckpointSettings {
            mode: match c.mode {
                CheckpointMode::ExactlyOnce => "exactly_once",
                CheckpointMode::AtLeastOnce => "at_least_once",
            },
            interval_ms: millis(c.interval),
            timeout_ms: millis(c.timeout),
            min_pause_ms: millis(c.min_pause),
            max_concurrent: c.max_concurrent,
            unaligned: c.unaligned,
            aligned_timeout_ms: millis(c.aligned_timeout),
            tolerable_failed: c.tolerable_failed,
            retain_on_cancellation: c.retention == crate::job::Retention::RetainOnCancellation,
            storage: c.dir.to_string(),
        });
        let start_ms = now_ms();
        Self {
            id: hex_id(&[&spec.name]),
            name: spec.name.clone(),
            max_parallelism: spec.max_parallelism,
            state_backend: match spec.state.backend {
                crate::job::StateBackendKind::Heap => "HashMapStateBackend",
                crate::job::StateBackendKind::RocksDb => "EmbeddedRocksDBStateBackend",
            },
            vertices,
            checkpointing,
            start_ms,
            status: Mutex::new(Status {
                state: JobState::Initializing,
                timestamps: vec![(JobState::Initializing, start_ms)],
                restarts: 0,
                failure: None,
            }),
            stats: StatsTracker::default(),
            metrics: MetricsSlot::default(),
            cancel,
            profiler: Profiler::default(),
            storage: OnceLock::new(),
            savepoints: SavepointQueue::default(),
        }
    }

    /// The job enters `state`.
    pub fn set_state(&self, state: JobState) {
        if let Ok(mut status) = self.status.lock() {
            if status.state == state {
                return;
            }
            if state == JobState::Restarting {
                status.restarts += 1;
            }
            status.state = state;
            status.timestamps.push((state, now_ms()));
        }
    }

    /// The job failed for good because of `why`.
    pub fn fail(&self, why: String) {
        self.set_state(JobState::Failed);
        if let Ok(mut status) = self.status.lock() {
            status.failure = Some(why);
        }
    }

    /// Its status now.
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or(Status {
            state: JobState::Failed,
            timestamps: Vec::new(),
            restarts: 0,
            failure: None,
        })
    }

    /// The vertex with this id, or this node name.
    pub fn vertex(&self, id: &str) -> Option<(usize, &Vertex)> {
        self.vertices
            .iter()
            .enumerate()
            .find(|(_, v)| v.id == id || v.name == id)
    }

    /// Whether `id` names this job (its id or its name).
    pub fn is(&self, id: &str) -> bool {
        self.id == id || self.name == id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_flinks_and_are_stable() {
        let a = hex_id(&["word-count", "count"]);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, hex_id(&["word-count", "count"]));
        assert_ne!(a, hex_id(&["word-count", "counts"]));
        assert_ne!(hex_id(&["a", "bc"]), hex_id(&["ab", "c"]));
    }

    fn request(
        stop: bool,
    ) -> (
        SavepointRequest,
        tokio::sync::oneshot::Receiver<Result<String, String>>,
    ) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = SavepointRequest {
            directory: None,
            format: SavepointFormat::default(),
            stop,
            reply,
        };
        (request, answer)
    }

    #[test]
    fn savepoint_requests_reach_the_receiver_in_the_order_they_were_sent() {
        let queue = SavepointQueue::default();
        let receiver = queue.receiver();
        let (first, _a) = request(false);
        let (second, _b) = request(true);
        assert!(queue.send(first).is_ok());
        assert!(queue.send(second).is_ok());
        let taken: Vec<bool> = receiver.try_iter().map(|r| r.stop).collect();
        assert_eq!(taken, [false, true]);
    }

    #[test]
    fn requests_left_in_the_queue_are_answered_with_the_reason_when_refused() {
        let queue = SavepointQueue::default();
        let (pending, mut answer) = request(false);
        assert!(queue.send(pending).is_ok());
        queue.refuse_pending();
        assert_eq!(answer.try_recv(), Ok(Err(ENDED_FIRST.to_owned())));
        assert!(queue.receiver().try_recv().is_err(), "the queue is empty");
    }
}
