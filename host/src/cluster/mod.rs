//! Beyond one machine: `weir coordinator` and `weir worker`.
//!
//! The coordinator runs the job as `weir run` does (the job graph, the checkpoint
//! coordinator, the restart strategy, checkpoint metadata in shared storage), but its
//! executor places the subtasks on workers instead of threads of its own
//! ([`crate::runtime::executor::Cluster`]). Workers attach over gRPC ([`proto`]),
//! receive their share of each attempt, store their snapshots in the same shared storage
//! and report on the same stream; their channels to each other go through the exchange
//! ([`crate::exchange`]). Subtask `i` of every node runs on worker `i mod n`.

pub mod coordinator;
pub mod proto;
pub mod worker;

pub use coordinator::{Coordinator, JobFile, Settings};
pub use worker::{WorkerError, WorkerOptions, run_worker};
