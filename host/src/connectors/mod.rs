//! Host-native sources and sinks.
//!
//! Sources implement [`Source`](crate::runtime::Source) and sinks implement
//! [`Operator`](crate::runtime::Operator) with no output. They own their I/O and nothing
//! else: they never see channels, partitioning, the job file or checkpoint storage.
//!
//! # Checkpoints
//! - Sources snapshot their positions (the generator's per split, the file source's per
//!   file) right before they emit a barrier, and a restored
//!   source continues from exactly there: the records before and after a restore
//!   together are the uninterrupted stream.
//! - The `file` sink is exactly-once through a two-phase commit: records go to a hidden
//!   in-progress file, a snapshot seals it as pending (the pre-commit), and the
//!   notification that the checkpoint completed commits it (a rename to a visible part
//!   file). A restore commits the pending files of the restored checkpoint and deletes
//!   the sink's other hidden files, whose records the sources replay.
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
//! - `sinks`: stdout and blackhole.
//! - `rate`: the pacing shared by the generator and the sinks.

mod file;
mod file_sink;
mod generator;
mod rate;
mod sinks;

pub use file::{FilePosition, FileSource};
pub use file_sink::{ExistingOutput, FileSink};
pub use generator::{Generator, GeneratorSettings};
pub use sinks::{BlackholeSink, StdoutSink};
