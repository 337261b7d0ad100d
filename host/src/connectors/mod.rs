//! Host-native sources and sinks.
//!
//! Sources implement [`Source`](crate::runtime::Source) and sinks implement
//! [`Operator`](crate::runtime::Operator) with no output. They own their I/O and nothing
//! else: they never see channels, partitioning or the job file.
//!
//! # Layout
//! - `generator`: deterministic records from a seed (count, key cardinality, rate).
//! - `file`: the lines of files, with byte offsets for replay.
//! - `sinks`: stdout, files, blackhole.
//! - `rate`: the pacing shared by the generator and the sinks.

mod file;
mod generator;
mod rate;
mod sinks;

pub use file::FileSource;
pub use generator::{Generator, GeneratorSettings};
pub use sinks::{BlackholeSink, FileSink, StdoutSink};
