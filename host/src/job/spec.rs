//! The validated job: what [`parse`](super::parse) returns. Every value here has
//! its default applied and has passed validation, so the runtime never re-checks.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::connectors::{SinkKind, SourceKind};
/// `watermark` of a source: bounded out-of-orderness, optionally with idleness.
pub use crate::runtime::watermark::Strategy as WatermarkStrategy;

/// A validated job: its settings and its logical graph.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// `job.name`, by default the job file's stem.
    pub name: String,
    /// The job file's directory, absolute. Relative paths in the file resolve here.
    pub dir: PathBuf,
    /// `job.parallelism`: the parallelism of nodes that set none (Flink's
    /// `parallelism.default`).
    pub parallelism: u32,
    /// `job.max-parallelism`: the number of key groups; at least every node's
    /// parallelism.
    pub max_parallelism: u32,
    /// `[checkpointing]`; `None` when no `interval` is set.
    pub checkpointing: Option<CheckpointingConfig>,
    /// `[restart]`: what to do when a task fails.
    pub restart: RestartStrategy,
    /// `[state]`: the keyed-state backend.
    pub state: StateConfig,
    /// `[network]`: the channels between subtasks.
    pub network: NetworkConfig,
    /// `[rest]`: where the job's REST API and web page are served.
    pub rest: RestConfig,
    /// The nodes, topologically sorted: every node comes after all its inputs.
    pub nodes: Vec<Node>,
}

impl JobSpec {
    /// The index in [`JobSpec::nodes`] of the node with this id.
    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.id == id)
    }

    /// The indices of the nodes that read from node `index`, in order.
    pub fn outputs_of(&self, index: usize) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.inputs.contains(&index))
            .map(|(i, _)| i)
            .collect()
    }
}

/// One vertex of the logical graph: a source, an operator or a sink.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The node's id, unique in the job, `[a-z0-9_-]+`.
    pub id: String,
    /// How many parallel subtasks run this node.
    pub parallelism: u32,
    /// Indices into [`JobSpec::nodes`] of the upstream nodes; empty for sources.
    pub inputs: Vec<usize>,
    /// How records travel from every input to this node's subtasks. Sources have
    /// [`Partition::Forward`], which is meaningless for them.
    pub partition: Partition,
    /// Whether the node may run in one thread with its input or output node (Flink's
    /// operator chaining; `chaining = false` on the node or in `[job]` turns it off).
    pub chaining: bool,
    /// What the node is.
    pub kind: NodeKind,
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A host-native source, `[[source]]`.
    Source(SourceSpec),
    /// A WebAssembly operator, `[[operator]]`.
    Operator(OperatorSpec),
    /// A host-native sink, `[[sink]]`.
    Sink(SinkSpec),
}

/// A source's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceSpec {
    /// What it reads, by kind.
    pub kind: SourceKind,
    /// `watermark`: how its subtasks derive watermarks from the records' timestamps;
    /// `None` emits none (but the final one of a bounded source).
    pub watermark: Option<WatermarkStrategy>,
}

/// An operator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorSpec {
    /// The component file, absolute; it existed when the job file was loaded.
    pub wasm: PathBuf,
    /// The config string handed to the guest's `open`: the job file's string as
    /// is, or its table rendered as JSON; empty by default.
    pub config: String,
    /// Records per guest call.
    pub batch_size: usize,
    /// What the guest may use and how it is metered.
    pub sandbox: SandboxSpec,
}

/// An operator's sandbox: the limits the host meters its guest by and the WASI
/// capabilities it grants. By default the guest has no filesystem, no network and no
/// environment variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// `fuel-per-record`: fuel (about one unit per WebAssembly instruction) a record may
    /// use; a batch gets this times its length. `None` (`fuel-per-record = 0`) turns
    /// fuel metering off; the call timeout still applies.
    pub fuel_per_record: Option<u64>,
    /// `memory-limit`: bytes of linear memory the instance may have, all memories
    /// together; also the most a single guest call may emit.
    pub memory_limit: u64,
    /// `call-timeout`: wall-clock deadline of any one guest call.
    pub call_timeout: Duration,
    /// `sync-phase-timeout`: a synchronous phase (the guest's `snapshot-state` and the
    /// backend's snapshot) that takes longer declines the checkpoint.
    pub sync_phase_timeout: Option<Duration>,
    /// `sync-phase-fuel`: a `snapshot-state` that uses more fuel declines the checkpoint.
    pub sync_phase_fuel: Option<u64>,
    /// `on-runaway`: what a record that overruns a limit does.
    pub on_runaway: RunawayPolicy,
    /// `dirs`: host directories the guest may open.
    pub dirs: Vec<DirGrant>,
    /// `env`: the guest's environment variables, resolved (a bare name took the host's
    /// value when the job file was loaded).
    pub env: Vec<(String, String)>,
}

impl Default for SandboxSpec {
    /// The defaults of the job file, with nothing granted.
    fn default() -> Self {
        use super::raw::defaults;
        Self {
            fuel_per_record: Some(defaults::FUEL_PER_RECORD),
            memory_limit: defaults::MEMORY_LIMIT,
            call_timeout: defaults::CALL_TIMEOUT,
            sync_phase_timeout: defaults::SYNC_PHASE_TIMEOUT,
            sync_phase_fuel: defaults::SYNC_PHASE_FUEL,
            on_runaway: RunawayPolicy::Fail,
            dirs: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// What happens to a record that overruns its fuel, the call timeout or the memory
/// limit in `process`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunawayPolicy {
    /// The subtask fails; the restart strategy restarts the job from its latest
    /// checkpoint.
    Fail,
    /// The record is appended to a dead-letter file and skipped; the instance is
    /// re-created from its last snapshot and the input since then is replayed.
    DeadLetter {
        /// Where the dead-letter files go (absolute): `<dir>/<operator>.jsonl`.
        dir: PathBuf,
        /// The most input (bytes of keys and values) kept for the replay; beyond it a
        /// runaway record fails the subtask as `Fail` does.
        replay_limit: u64,
    },
}

/// `on-runaway` as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunawayPolicyName {
    /// `"fail"`.
    Fail,
    /// `"dead-letter"`.
    DeadLetter,
}

/// A host directory granted to a guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host, absolute and canonical; it existed when the job
    /// file was loaded.
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// A sink's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkSpec {
    /// Where the records go, by kind.
    pub kind: SinkKind,
    /// Records per second per subtask; 0 is unlimited (a low rate exercises
    /// backpressure).
    pub rate: u64,
}

/// How records are distributed from an input's subtasks to a node's subtasks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Partition {
    /// Subtask *i* sends to subtask *i*; both sides have the same parallelism.
    Forward,
    /// Round-robin over all downstream subtasks.
    Rebalance,
    /// Every record to every downstream subtask.
    Broadcast,
    /// By the hash of the record's key, through key groups.
    KeyBy,
}

impl Partition {
    /// The name used in the job file.
    pub fn name(self) -> &'static str {
        match self {
            Partition::Forward => "forward",
            Partition::Rebalance => "rebalance",
            Partition::Broadcast => "broadcast",
            Partition::KeyBy => "key-by",
        }
    }
}

/// `[checkpointing]`, named as Flink's `execution.checkpointing.*`.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointingConfig {
    /// Time between the triggers of two checkpoints.
    pub interval: Duration,
    /// Exactly-once (aligned barriers) or at-least-once.
    pub mode: CheckpointMode,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time between the end of one checkpoint and the trigger of the next.
    pub min_pause: Duration,
    /// Most checkpoints in flight at once, at least 1.
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints tolerated before the job fails.
    pub tolerable_failed: u32,
    /// Whether barriers overtake in-flight records (unaligned checkpoints).
    pub unaligned: bool,
    /// With `unaligned`, how long a checkpoint stays aligned before switching;
    /// zero starts unaligned at once.
    pub aligned_timeout: Duration,
    /// The checkpoint to restore without its channel state (Flink's
    /// `execution.checkpointing.recover-without-channel-state.checkpoint-id`).
    pub recover_without_channel_state: Option<u64>,
    /// Whether completed checkpoints outlive a cancelled job.
    pub retention: Retention,
    /// How many completed checkpoints to keep, at least 1.
    pub num_retained: u32,
    /// Where checkpoints are written.
    pub dir: StorageUrl,
    /// Where savepoints go when their request names no directory (Flink's
    /// `state.savepoints.dir`).
    pub savepoint_dir: Option<StorageUrl>,
    /// How to reach S3, for an `s3://` `dir`.
    pub s3: S3Settings,
}

impl CheckpointingConfig {
    /// When a checkpoint turns unaligned after its trigger: never without `unaligned`,
    /// else after `aligned-timeout` (at once when it is zero).
    pub fn unaligned_after(&self) -> Option<Duration> {
        self.unaligned.then_some(self.aligned_timeout)
    }
}

/// `[network]`, named as Flink's `taskmanager.network.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Batches a channel holds before its producer blocks.
    pub channel_capacity: usize,
    /// `buffer-debloat`, when `enabled`.
    pub debloat: Option<DebloatConfig>,
    /// `local-workers`: the workers this process runs the subtasks on, as Flink's
    /// `local.number-taskmanager`; channels between two of them go over TCP.
    pub local_workers: usize,
}

/// `[network.buffer-debloat]` with `enabled = true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebloatConfig {
    /// What may be in flight on a subtask's input channels: this long of its
    /// throughput.
    pub target: Duration,
    /// How often the throughput is measured.
    pub period: Duration,
}

/// `[checkpointing.s3]`. Credentials are not here: they come from the standard AWS
/// chain (environment, profile files). What is unset takes the storage's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// The endpoint of an S3-compatible store, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// The region, instead of the chain's.
    pub region: Option<String>,
    /// Path-style URLs (`<endpoint>/<bucket>/<key>`), as most S3-compatible stores need.
    pub force_path_style: bool,
    /// The part size of multipart uploads, in bytes.
    pub part_size: Option<u64>,
    /// Parts of one upload in flight at once.
    pub upload_concurrency: Option<u32>,
    /// How long the job's lease in the bucket lives without renewal.
    pub lease_timeout: Option<std::time::Duration>,
}

/// `checkpointing.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// Barriers are aligned (or unaligned with channel state); state and output
    /// reflect every record exactly once.
    ExactlyOnce,
    /// Barriers are not aligned; after recovery some records are seen twice.
    AtLeastOnce,
}

/// `checkpointing.retention` (Flink's externalized-checkpoint retention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retention {
    /// Keep retained checkpoints when the job is cancelled.
    RetainOnCancellation,
    /// Delete checkpoints when the job is cancelled; keep them when it fails.
    DeleteOnCancellation,
}

/// Where checkpoints are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageUrl {
    /// A local directory, absolute.
    File(PathBuf),
    /// An S3 bucket and a key prefix without leading or trailing `/` (may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::File(path) => write!(f, "file://{}", path.display()),
            StorageUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StorageUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// `[restart]`, Flink's `restart-strategy`.
#[derive(Clone, Debug, PartialEq)]
pub enum RestartStrategy {
    /// A task failure fails the job.
    None,
    /// Restart up to `attempts` times, waiting `delay` before each.
    FixedDelay {
        /// Restarts before the job fails.
        attempts: u32,
        /// Wait before each restart.
        delay: Duration,
    },
    /// Wait `initial`, then multiply the wait by `multiplier` (capped at `max`,
    /// randomised by ±`jitter`); the wait resets after `reset_threshold` without
    /// a failure.
    ExponentialDelay {
        /// First wait.
        initial: Duration,
        /// Longest wait.
        max: Duration,
        /// Growth per failure, at least 1.0.
        multiplier: f64,
        /// Relative randomisation of each wait, in 0.0..=1.0.
        jitter: f64,
        /// Failure-free time after which the wait goes back to `initial`.
        reset_threshold: Duration,
        /// Restarts before the job fails; `None` is unlimited.
        attempts: Option<u32>,
    },
    /// Fail the job when more than `max_failures` happen within `interval`.
    FailureRate {
        /// Failures tolerated per interval.
        max_failures: u32,
        /// The measuring window.
        interval: Duration,
        /// Wait before each restart.
        delay: Duration,
    },
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateConfig {
    /// Which backend keeps keyed state.
    pub backend: StateBackendKind,
    /// Whether checkpoints upload only what changed (RocksDB).
    pub incremental: bool,
    /// Local working directory of the backend, absolute.
    pub dir: Option<PathBuf>,
    /// The bytes of keyed state one operator subtask may keep on the heap backend.
    pub heap_limit: u64,
    /// The timers one operator subtask may have pending.
    pub timer_limit: u64,
}

/// `[rest]`, as Flink's `rest.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestConfig {
    /// The address to listen on (`rest.address`); loopback by default.
    pub address: std::net::IpAddr,
    /// The first and last port to try, in order (`rest.port`); `(0, 0)` takes any free
    /// port.
    pub ports: (u16, u16),
    /// The token the endpoints that change the job require when the server listens on
    /// an address other than loopback (`rest.token`, or the environment's
    /// `WEIR_REST_TOKEN`).
    pub token: Option<String>,
}

impl RestConfig {
    /// Whether only this machine can reach the server.
    pub fn is_loopback(&self) -> bool {
        self.address.is_loopback()
    }
}

/// `state.backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum StateBackendKind {
    /// Hash maps in memory, copy-on-write snapshots.
    #[serde(rename = "heap")]
    Heap,
    /// Embedded RocksDB.
    #[serde(rename = "rocksdb")]
    RocksDb,
}
