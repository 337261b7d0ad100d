//! Host-native sources and sinks, and the registry of their kinds.
//!
//! Sources implement [`Source`](crate::runtime::Source) and sinks implement
//! [`Operator`](crate::runtime::Operator) with no output. They own their I/O and nothing
//! else: they never see channels, partitioning or checkpoint storage.
//!
//! # The registry
//! A kind is one module: its typed configuration (a `Config` struct whose keys are the
//! kind's own keys in the job file, unknown ones refused), the validated spec it becomes
//! ([`SourceConnector`] or [`SinkConnector`]), and the runtime part the spec builds. The
//! [`registry!`] at the bottom of this file is the one place that lists the kinds: the
//! job parser, the graph builder and the composition root go through [`SourceKind`] and
//! [`SinkKind`] and name no kind themselves. Keys every node of a section shares (`id`,
//! `parallelism`, `watermark` of a source, `inputs` and `rate` of a sink, ...) are the
//! parser's; the rest of the table is the kind's.
//!
//! # Checkpoints
//! - Sources snapshot their positions (the generator's per split, the file source's per
//!   file, the Kafka source's per partition) right before they emit a barrier, and a
//!   restored source continues from exactly there: the records before and after a
//!   restore together are the uninterrupted stream.
//! - The `file` sink is exactly-once through a two-phase commit: records go to a hidden
//!   in-progress file, a snapshot seals it as pending (the pre-commit), and the
//!   notification that the checkpoint completed commits it (a rename to a visible part
//!   file). A restore commits the pending files of the restored checkpoint and deletes
//!   the sink's other hidden files, whose records the sources replay. The `kafka` sink
//!   does the same with one Kafka transaction per checkpoint, or flushes on every
//!   checkpoint (at-least-once).
//! - `stdout` and `blackhole` have no state: their snapshots are empty.
//!
//! A snapshot's bytes are private to its connector (they are the operator state of the
//! snapshot format). `open` gets back its own subtask's bytes at the same parallelism,
//! and every old subtask's after a rescale, from which it takes what it now owns.
//!
//! # Layout
//! - `generator`: deterministic records from a seed (count, key cardinality, rate).
//! - `file`: the lines of files, with byte offsets for replay.
//! - `file_sink`: the exactly-once file sink (part files, two-phase commit, recovery).
//! - `kafka`: the Kafka source (partition offsets in the checkpoint) and sink
//!   (at-least-once flushes, or a transaction per checkpoint).
//! - `sinks`: stdout and blackhole.
//! - `rate`: the pacing shared by the generator and the sinks.

mod file;
mod file_sink;
mod generator;
mod kafka;
mod rate;
mod sinks;

use std::fmt;

use serde::de::DeserializeOwned;

use crate::job::{JobError, Scope};
use crate::runtime::executor::{OperatorFactory, SourceFactory};

pub use file::{FilePosition, FileSource, FileSourceSpec};
pub use file_sink::{ExistingOutput, FileSink, FileSinkSpec};
pub use generator::{Generator, GeneratorSpec};
pub use kafka::{KafkaSinkSpec, KafkaSourceSpec, SinkDelivery, StartingOffsets, TopicSelector};
pub use sinks::{BlackholeSink, BlackholeSpec, StdoutSink, StdoutSpec};

/// A kind of source: its configuration, validated, and how it builds its subtasks.
pub trait SourceConnector: Sized + Clone + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// `kind = "..."` in the job file.
    const KIND: &'static str;
    /// Whether its records carry event timestamps, so that a `watermark` strategy can
    /// derive watermarks from them.
    const TIMESTAMPS: bool;
    /// The kind's own keys, deserialized with `deny_unknown_fields`.
    type Config: DeserializeOwned;
    /// Checks the configuration; errors name the key and its line through `scope`.
    fn validate(config: Self::Config, scope: &Scope<'_>) -> Result<Self, JobError>;
    /// What must hold before the job starts (a broker reachable, a topic there); the
    /// sentence says what and where.
    fn preflight(&self) -> Result<(), String> {
        Ok(())
    }
    /// Creates the source of each subtask.
    fn factory(&self) -> SourceFactory;
}

/// What the composition root tells a sink about the job it runs in.
#[derive(Clone, Copy, Debug)]
pub struct SinkContext {
    /// Records per second per subtask; 0 is unlimited.
    pub rate: u64,
    /// Whether the job checkpoints: a transactional sink then commits per checkpoint,
    /// else at the end of its input.
    pub transactional: bool,
    /// What a file sink does with output committed after the point the run starts from.
    pub existing: ExistingOutput,
}

/// A kind of sink: its configuration, validated, and how it builds its subtasks.
pub trait SinkConnector: Sized + Clone + fmt::Debug + PartialEq + Send + Sync + 'static {
    /// `kind = "..."` in the job file.
    const KIND: &'static str;
    /// The kind's own keys, deserialized with `deny_unknown_fields`.
    type Config: DeserializeOwned;
    /// Checks the configuration; errors name the key and its line through `scope`.
    fn validate(config: Self::Config, scope: &Scope<'_>) -> Result<Self, JobError>;
    /// What must hold before the job starts, given whether it checkpoints.
    fn preflight(&self, transactional: bool) -> Result<(), String> {
        let _ = transactional;
        Ok(())
    }
    /// Creates the sink of each subtask.
    fn factory(&self, context: SinkContext) -> OperatorFactory;
}

/// Lists the kinds once: generates [`SourceKind`] and [`SinkKind`], one variant per
/// kind, with the lookups the job parser and the composition root use.
macro_rules! registry {
    (
        sources { $($source:ident($source_spec:ty)),* $(,)? }
        sinks { $($sink:ident($sink_spec:ty)),* $(,)? }
    ) => {
        /// A source's kind and its validated configuration.
        #[derive(Clone, Debug, PartialEq)]
        pub enum SourceKind {
            $(
                #[doc = concat!("`kind = \"", stringify!($source), "\"`.")]
                $source($source_spec),
            )*
        }

        impl SourceKind {
            /// Every kind's name and own keys, in the order the registry lists them.
            pub(crate) fn kinds() -> Vec<(&'static str, &'static [&'static str])> {
                vec![$((
                    <$source_spec as SourceConnector>::KIND,
                    crate::job::fields_of::<<$source_spec as SourceConnector>::Config>(),
                )),*]
            }

            /// Reads the kind named `kind` from `scope`; `None` for an unknown name.
            pub(crate) fn read(kind: &str, scope: &Scope<'_>) -> Option<Result<Self, JobError>> {
                $(
                    if kind == <$source_spec as SourceConnector>::KIND {
                        return Some(scope.config().and_then(|config| {
                            <$source_spec as SourceConnector>::validate(config, scope)
                        }).map(Self::$source));
                    }
                )*
                None
            }

            /// `kind = "..."`.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$source(_) => <$source_spec as SourceConnector>::KIND),* }
            }

            /// Whether the records carry event timestamps.
            pub fn has_timestamps(&self) -> bool {
                match self { $(Self::$source(_) => <$source_spec as SourceConnector>::TIMESTAMPS),* }
            }

            /// See [`SourceConnector::preflight`].
            pub fn preflight(&self) -> Result<(), String> {
                match self { $(Self::$source(spec) => spec.preflight()),* }
            }

            /// See [`SourceConnector::factory`].
            pub fn factory(&self) -> SourceFactory {
                match self { $(Self::$source(spec) => spec.factory()),* }
            }
        }

        /// A sink's kind and its validated configuration.
        #[derive(Clone, Debug, PartialEq)]
        pub enum SinkKind {
            $(
                #[doc = concat!("`kind = \"", stringify!($sink), "\"`.")]
                $sink($sink_spec),
            )*
        }

        impl SinkKind {
            /// Every kind's name and own keys, in the order the registry lists them.
            pub(crate) fn kinds() -> Vec<(&'static str, &'static [&'static str])> {
                vec![$((
                    <$sink_spec as SinkConnector>::KIND,
                    crate::job::fields_of::<<$sink_spec as SinkConnector>::Config>(),
                )),*]
            }

            /// Reads the kind named `kind` from `scope`; `None` for an unknown name.
            pub(crate) fn read(kind: &str, scope: &Scope<'_>) -> Option<Result<Self, JobError>> {
                $(
                    if kind == <$sink_spec as SinkConnector>::KIND {
                        return Some(scope.config().and_then(|config| {
                            <$sink_spec as SinkConnector>::validate(config, scope)
                        }).map(Self::$sink));
                    }
                )*
                None
            }

            /// `kind = "..."`.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$sink(_) => <$sink_spec as SinkConnector>::KIND),* }
            }

            /// See [`SinkConnector::preflight`].
            pub fn preflight(&self, transactional: bool) -> Result<(), String> {
                match self { $(Self::$sink(spec) => spec.preflight(transactional)),* }
            }

            /// See [`SinkConnector::factory`].
            pub fn factory(&self, context: SinkContext) -> OperatorFactory {
                match self { $(Self::$sink(spec) => spec.factory(context)),* }
            }
        }
    };
}

registry! {
    sources {
        Generator(GeneratorSpec),
        File(FileSourceSpec),
        Kafka(KafkaSourceSpec),
    }
    sinks {
        Stdout(StdoutSpec),
        File(FileSinkSpec),
        Blackhole(BlackholeSpec),
        Kafka(KafkaSinkSpec),
    }
}
