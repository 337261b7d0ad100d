//! The job file as written: serde structs, one per table (and per kind of node
//! or restart strategy, so that a key of another kind is an unknown key). Every
//! field is optional here; [`defaults`] fills them in one place, and the
//! validation in `sections` and `graph` decides what is required.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::duration::DurationText;
use super::size::SizeText;
use super::spec::{CheckpointMode, Partition, Retention, RunawayPolicyName, StateBackendKind};

/// A string, or an integer kept as its decimal text: how durations and sizes are
/// written (`-D checkpointing.min-pause=0` arrives as the TOML integer 0). The text is
/// parsed later, where the key's name is known for the error.
pub(crate) fn text_or_integer<'de, D: Deserializer<'de>>(
    deserializer: D,
    expecting: &'static str,
) -> Result<String, D::Error> {
    struct TextVisitor(&'static str);

    impl Visitor<'_> for TextVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    deserializer.deserialize_any(TextVisitor(expecting))
}

/// The tables of a job file, in the order they are documented.
pub(crate) const SECTIONS: [&str; 9] = [
    "job",
    "checkpointing",
    "restart",
    "state",
    "network",
    "rest",
    "source",
    "operator",
    "sink",
];

/// The sections that are arrays of nodes addressed by id.
pub(crate) const NODE_SECTIONS: [&str; 3] = ["source", "operator", "sink"];

/// Every default of the job file. Flink's where Flink has the setting.
pub(crate) mod defaults {
    use std::time::Duration;

    use crate::job::spec::{CheckpointMode, Retention, RunawayPolicyName, StateBackendKind};

    /// `parallelism.default`.
    pub const PARALLELISM: u32 = 1;
    /// Flink's default number of key groups for small jobs.
    pub const MAX_PARALLELISM: u32 = 128;
    /// Flink's upper bound: key groups are numbered in 15 bits (`KeyGroup(u16)`
    /// with room to spare), as in Flink's `UPPER_BOUND_MAX_PARALLELISM`.
    pub const MAX_PARALLELISM_LIMIT: u32 = 1 << 15;
    /// The checkpoint directory, under the job file's directory.
    pub const CHECKPOINT_DIR: &str = "checkpoints";
    /// Flink's `MINIMAL_CHECKPOINT_TIME`: shorter intervals and timeouts are
    /// rejected, since barriers could never keep up.
    pub const MIN_CHECKPOINT_TIME: Duration = Duration::from_millis(10);
    /// `execution.checkpointing.mode`.
    pub const CHECKPOINT_MODE: CheckpointMode = CheckpointMode::ExactlyOnce;
    /// `execution.checkpointing.timeout`.
    pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
    /// `execution.checkpointing.min-pause`.
    pub const MIN_PAUSE: Duration = Duration::ZERO;
    /// `execution.checkpointing.max-concurrent-checkpoints`.
    pub const MAX_CONCURRENT: u32 = 1;
    /// `execution.checkpointing.tolerable-failed-checkpoints`.
    pub const TOLERABLE_FAILED: u32 = 0;
    /// `execution.checkpointing.unaligned.enabled`.
    pub const UNALIGNED: bool = false;
    /// `execution.checkpointing.aligned-checkpoint-timeout`.
    pub const ALIGNED_TIMEOUT: Duration = Duration::ZERO;
    /// Batches a channel holds before its producer blocks (Flink's
    /// `taskmanager.network.memory.buffers-per-channel` plus its floating buffers).
    pub const CHANNEL_CAPACITY: usize = 4;
    /// The most `network.channel-capacity` may be: a channel of more batches only
    /// delays checkpoints under backpressure.
    pub const CHANNEL_CAPACITY_LIMIT: usize = 1024;
    /// The most `network.local-workers` may be: each pair of workers keeps a
    /// connection with two threads at each end.
    pub const LOCAL_WORKERS_LIMIT: usize = 16;
    /// `taskmanager.network.memory.buffer-debloat.target`.
    pub const DEBLOAT_TARGET: Duration = Duration::from_secs(1);
    /// `taskmanager.network.memory.buffer-debloat.period`.
    pub const DEBLOAT_PERIOD: Duration = Duration::from_millis(200);
    /// Flink keeps no checkpoint of a cancelled job unless told to.
    pub const RETENTION: Retention = Retention::DeleteOnCancellation;
    /// `state.checkpoints.num-retained`.
    pub const NUM_RETAINED: u32 = 1;
    /// `state.backend.type`.
    pub const STATE_BACKEND: StateBackendKind = StateBackendKind::Heap;
    /// `state.backend.incremental` for RocksDB: on, so that a checkpoint uploads only
    /// the files written since the last one. The heap backend has no incremental mode.
    pub const INCREMENTAL_ROCKSDB: bool = true;

    /// `state.heap-limit`: the keyed state one operator subtask may keep on the heap.
    /// A gibibyte holds tens of millions of small keys, and a job of a few operators
    /// at parallelism 4 stays within a machine's memory; more belongs in RocksDB.
    pub const HEAP_LIMIT: u64 = 1 << 30;

    /// `state.timer-limit`: the timers one operator subtask may have pending, on either
    /// backend (timers live on the heap). Measured at about 75 bytes a timer with a
    /// short key (4 million took 300 MiB), a million is about 100 MiB with their keys:
    /// far more than windows over a key space need, far less than a machine has.
    pub const TIMER_LIMIT: u64 = 1_000_000;
    /// `rest.address`: loopback, so that nothing outside the machine reaches a job
    /// unless the user says so.
    pub const REST_ADDRESS: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    /// `rest.port`: Flink's 8081 and, when it is taken (another job on the machine), the
    /// next free port of the hundred after it, as a range in Flink's `rest.bind-port`.
    pub const REST_PORTS: (u16, u16) = (8081, 8180);
    /// `restart-strategy.fixed-delay.attempts`.
    pub const FIXED_DELAY_ATTEMPTS: u32 = 3;
    /// `restart-strategy.fixed-delay.delay`.
    pub const FIXED_DELAY: Duration = Duration::from_secs(1);
    /// `restart-strategy.exponential-delay.initial-backoff`.
    pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
    /// `restart-strategy.exponential-delay.max-backoff`.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
    /// `restart-strategy.exponential-delay.backoff-multiplier`.
    pub const BACKOFF_MULTIPLIER: f64 = 2.0;
    /// `restart-strategy.exponential-delay.jitter-factor`.
    pub const JITTER_FACTOR: f64 = 0.1;
    /// `restart-strategy.exponential-delay.reset-backoff-threshold`.
    pub const RESET_BACKOFF_THRESHOLD: Duration = Duration::from_secs(60 * 60);
    /// `restart-strategy.failure-rate.max-failures-per-interval`.
    pub const MAX_FAILURES_PER_INTERVAL: u32 = 1;
    /// `restart-strategy.failure-rate.failure-rate-interval`.
    pub const FAILURE_RATE_INTERVAL: Duration = Duration::from_secs(60);
    /// `restart-strategy.failure-rate.delay`.
    pub const FAILURE_RATE_DELAY: Duration = Duration::from_secs(1);
    /// Records per guest call: large enough that the call overhead vanishes,
    /// small enough that a batch never holds a barrier back for long.
    pub const BATCH_SIZE: usize = 1024;
    /// `fuel-per-record`: fuel is about one unit per WebAssembly instruction. A short
    /// record costs the Rust map-filter guest under 3 000 and the Python guest (the
    /// heaviest runtime shown) about 50 000, both measured one record per call; ten
    /// million leaves room for real work per record (two hundred times Python's), yet
    /// it is about a millisecond of tight guest code (the `sandbox` benchmark burns
    /// 8–11 G fuel/s), so a runaway record holds its subtask for about a second even
    /// with the slack of a full default batch (1024 records).
    pub const FUEL_PER_RECORD: u64 = 10_000_000;
    /// `memory-limit`, per instance, all its linear memories together: a Rust guest
    /// starts in under 2 MiB and the componentize-py guest runs in under 16 MiB, so
    /// 256 MiB leaves room for real working sets while a few dozen subtasks stay within
    /// a small host.
    pub const MEMORY_LIMIT: u64 = 256 << 20;
    /// The least `memory-limit`: a Rust guest's stack alone is 1 MiB, so less can never
    /// start one.
    pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
    /// `call-timeout`: long enough for a Python guest's `open` on a loaded machine and
    /// for a full batch within its fuel budget, short enough that a hung call is
    /// reported while someone is still watching.
    pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
    /// The least `call-timeout`: ten epoch ticks, so that the tick's granularity is at
    /// most a tenth of the deadline.
    pub const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(100);
    /// `sync-phase-timeout` and `sync-phase-fuel`: no limit (as Flink, which has none),
    /// so that a slow snapshot never declines checkpoints unless the user asks for it;
    /// `call-timeout` still stops a snapshot that never returns.
    pub const SYNC_PHASE_TIMEOUT: Option<Duration> = None;
    /// See [`SYNC_PHASE_TIMEOUT`].
    pub const SYNC_PHASE_FUEL: Option<u64> = None;
    /// `on-runaway`: restart from the latest checkpoint, as every other failure does;
    /// dropping records is the user's decision.
    pub const ON_RUNAWAY: RunawayPolicyName = RunawayPolicyName::Fail;
    /// `dead-letter-dir`, under the job file's directory.
    pub const DEAD_LETTER_DIR: &str = "dead-letter";
    /// `replay-limit`: the input since the last snapshot that `dead-letter` keeps to
    /// replay; a checkpoint interval of input for a typical operator, and a bound on
    /// the host memory it costs.
    pub const REPLAY_LIMIT: u64 = 64 << 20;
}

/// `[job]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawJob {
    pub name: Option<String>,
    pub parallelism: Option<u32>,
    pub max_parallelism: Option<u32>,
    pub chaining: Option<bool>,
}

/// `[checkpointing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawCheckpointing {
    pub interval: Option<DurationText>,
    pub mode: Option<CheckpointMode>,
    pub timeout: Option<DurationText>,
    pub min_pause: Option<DurationText>,
    pub max_concurrent: Option<u32>,
    pub tolerable_failed: Option<u32>,
    pub unaligned: Option<bool>,
    pub aligned_timeout: Option<DurationText>,
    pub recover_without_channel_state: Option<u64>,
    pub retention: Option<Retention>,
    pub num_retained: Option<u32>,
    pub dir: Option<String>,
    pub savepoint_dir: Option<String>,
    pub s3: Option<RawS3>,
}

/// `[checkpointing.s3]`: how to reach an `s3://` checkpoint directory.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawS3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub part_size: Option<SizeText>,
    pub upload_concurrency: Option<u32>,
    pub lease_timeout: Option<DurationText>,
}

/// `restart.strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StrategyName {
    None,
    FixedDelay,
    ExponentialDelay,
    FailureRate,
}

impl StrategyName {
    pub(crate) const DEFAULT: StrategyName = StrategyName::ExponentialDelay;
    pub(crate) const ALL: [StrategyName; 4] = [
        StrategyName::None,
        StrategyName::FixedDelay,
        StrategyName::ExponentialDelay,
        StrategyName::FailureRate,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            StrategyName::None => "none",
            StrategyName::FixedDelay => "fixed-delay",
            StrategyName::ExponentialDelay => "exponential-delay",
            StrategyName::FailureRate => "failure-rate",
        }
    }

    /// The keys `[restart]` may have with this strategy.
    pub(crate) fn keys(self) -> &'static [&'static str] {
        match self {
            StrategyName::None => fields_of::<RawNoRestart>(),
            StrategyName::FixedDelay => fields_of::<RawFixedDelay>(),
            StrategyName::ExponentialDelay => fields_of::<RawExponentialDelay>(),
            StrategyName::FailureRate => fields_of::<RawFailureRate>(),
        }
    }
}

/// `[restart]` with `strategy = "none"`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawNoRestart {
    #[serde(rename = "strategy")]
    pub _strategy: Option<IgnoredAny>,
}

/// `[restart]` with `strategy = "fixed-delay"`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawFixedDelay {
    #[serde(rename = "strategy")]
    pub _strategy: Option<IgnoredAny>,
    pub attempts: Option<u32>,
    pub delay: Option<DurationText>,
}

/// `[restart]` with `strategy = "exponential-delay"`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawExponentialDelay {
    #[serde(rename = "strategy")]
    pub _strategy: Option<IgnoredAny>,
    pub initial_backoff: Option<DurationText>,
    pub max_backoff: Option<DurationText>,
    pub backoff_multiplier: Option<f64>,
    pub jitter_factor: Option<f64>,
    pub reset_backoff_threshold: Option<DurationText>,
    pub attempts: Option<u32>,
}

/// `[restart]` with `strategy = "failure-rate"`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawFailureRate {
    #[serde(rename = "strategy")]
    pub _strategy: Option<IgnoredAny>,
    pub max_failures_per_interval: Option<u32>,
    pub failure_rate_interval: Option<DurationText>,
    pub delay: Option<DurationText>,
}

/// `[state]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawState {
    pub backend: Option<StateBackendKind>,
    pub incremental: Option<bool>,
    pub dir: Option<String>,
    pub heap_limit: Option<SizeText>,
    pub timer_limit: Option<u64>,
}

/// `[network]`, as Flink's `taskmanager.network.*`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub channel_capacity: Option<usize>,
    pub local_workers: Option<usize>,
    pub buffer_debloat: Option<RawDebloat>,
}

/// `[network.buffer-debloat]`, as Flink's `taskmanager.network.memory.buffer-debloat.*`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawDebloat {
    pub enabled: Option<bool>,
    pub target: Option<DurationText>,
    pub period: Option<DurationText>,
}

/// `[rest]`, as Flink's `rest.*`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawRest {
    pub address: Option<String>,
    pub port: Option<PortText>,
    pub token: Option<String>,
}

/// A port, or a range `"8081-8090"` as Flink's `rest.bind-port`, kept as text.
#[derive(Debug)]
pub(crate) struct PortText(pub(crate) String);

impl<'de> Deserialize<'de> for PortText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text_or_integer(
            deserializer,
            "a port such as 8081 or a range such as \"8081-8090\"",
        )
        .map(PortText)
    }
}

/// The keys every `[[source]]` has, whatever its kind; the rest of the table is the
/// kind's own ([`crate::connectors::SourceConnector::Config`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct RawSourceNode {
    pub id: Option<String>,
    #[serde(rename = "kind")]
    pub _kind: Option<IgnoredAny>,
    pub parallelism: Option<u32>,
    pub chaining: Option<bool>,
    pub watermark: Option<RawWatermark>,
}

/// A source's `watermark`, as Flink's `WatermarkStrategy.forBoundedOutOfOrderness`
/// with `withIdleness`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawWatermark {
    pub max_out_of_orderness: Option<DurationText>,
    pub idle_timeout: Option<DurationText>,
}

/// `[[operator]]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawOperator {
    pub id: Option<String>,
    pub wasm: Option<String>,
    pub inputs: Option<StringList>,
    pub partition: Option<Partition>,
    pub parallelism: Option<u32>,
    pub chaining: Option<bool>,
    pub config: Option<RawConfig>,
    pub batch_size: Option<usize>,
    pub fuel_per_record: Option<u64>,
    pub memory_limit: Option<SizeText>,
    pub call_timeout: Option<DurationText>,
    pub sync_phase_timeout: Option<DurationText>,
    pub sync_phase_fuel: Option<u64>,
    pub on_runaway: Option<RunawayPolicyName>,
    pub dead_letter_dir: Option<String>,
    pub replay_limit: Option<SizeText>,
    pub dirs: Option<Vec<RawDirGrant>>,
    pub env: Option<Vec<String>>,
}

/// One entry of an operator's `dirs`: a host directory granted to the guest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawDirGrant {
    pub host: Option<String>,
    pub guest: Option<String>,
    pub writable: Option<bool>,
}

/// The keys every `[[sink]]` has, whatever its kind; the rest of the table is the
/// kind's own ([`crate::connectors::SinkConnector::Config`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct RawSinkNode {
    pub id: Option<String>,
    #[serde(rename = "kind")]
    pub _kind: Option<IgnoredAny>,
    pub inputs: Option<StringList>,
    pub partition: Option<Partition>,
    pub parallelism: Option<u32>,
    pub chaining: Option<bool>,
    pub rate: Option<u64>,
}

/// A string or a list of strings (`path = "a.txt"` or `path = ["a.txt", "b.txt"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList(vec![v.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(StringList(items))
            }
        }

        deserializer.deserialize_any(ListVisitor)
    }
}

/// An operator's `config`: a string passed as is, or a table passed as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawConfig(pub String);

impl<'de> Deserialize<'de> for RawConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Ok(RawConfig(text)),
            table @ serde_json::Value::Object(_) => serde_json::to_string(&table)
                .map(RawConfig)
                .map_err(de::Error::custom),
            _ => Err(de::Error::custom(
                "expected a string or a table, e.g. config = '{\"min-length\": 2}' or config = { min-length = 2 }",
            )),
        }
    }
}

/// The field names of a `#[derive(Deserialize)]` struct (or the variant names
/// of an enum), as serde names them (kebab-case here): the one list of a table's keys, used for the unknown-key
/// check and its "Known keys" message.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    // The probe always fails on purpose once it has seen the names.
    let _ = T::deserialize(NameProbe(&mut names));
    names
}

/// A deserializer that records the field or variant names serde's derive hands
/// to `deserialize_struct` or `deserialize_enum`, then stops.
struct NameProbe<'a>(&'a mut &'static [&'static str]);

#[derive(Debug)]
struct ProbeDone;

impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("names recorded")
    }
}

impl std::error::Error for ProbeDone {}

impl de::Error for ProbeDone {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        ProbeDone
    }
}

impl<'de> Deserializer<'de> for NameProbe<'_> {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        *self.0 = fields;
        Err(ProbeDone)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        *self.0 = variants;
        Err(ProbeDone)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_keys_come_from_its_struct_in_the_documented_order() {
        assert_eq!(
            fields_of::<RawOperator>(),
            [
                "id",
                "wasm",
                "inputs",
                "partition",
                "parallelism",
                "chaining",
                "config",
                "batch-size",
                "fuel-per-record",
                "memory-limit",
                "call-timeout",
                "sync-phase-timeout",
                "sync-phase-fuel",
                "on-runaway",
                "dead-letter-dir",
                "replay-limit",
                "dirs",
                "env"
            ]
        );
    }

    #[test]
    fn enum_names_come_from_serde() {
        assert_eq!(
            fields_of::<StrategyName>(),
            StrategyName::ALL.map(StrategyName::name)
        );
        assert_eq!(
            fields_of::<Partition>(),
            ["forward", "rebalance", "broadcast", "key-by"]
        );
        assert_eq!(fields_of::<StateBackendKind>(), ["heap", "rocksdb"]);
        assert_eq!(fields_of::<RunawayPolicyName>(), ["fail", "dead-letter"]);
    }
}
