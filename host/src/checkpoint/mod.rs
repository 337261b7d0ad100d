//! Checkpoint decisions: barrier alignment in a subtask, the coordinator's bookkeeping,
//! restart strategies, and retention of completed checkpoints.
//!
//! Everything here is pure, after Flink's checkpoint protocol: plain data in, a
//! decision out. No threads, channels, clocks or I/O — time comes in as `Instant`
//! arguments and randomness as a number — so every rule is a unit test with a
//! sentence for a name. The runtime drives these state machines from its loops and
//! carries out what they decide (block a channel, snapshot, send a trigger, write
//! `_metadata`, delete files, restart); the storage layer lists and deletes. This
//! module may not touch the runtime's channels, the state backends, storage or WASM.
//!
//! # Layout
//! - `align`: [`Aligner`], barrier alignment of one subtask over its input channels
//!   (exactly-once blocks or overtakes, at-least-once tracks).
//! - `snapshot`: the one format of a subtask's snapshot, its parts per key group.
//! - `restore`: restore planning, which old parts every new subtask restores (rescaling).
//! - `channel_state`: the encoding of the in-flight data unaligned checkpoints persist.
//! - `coordinator`: [`CoordinatorState`], when to trigger, when a checkpoint is
//!   complete or aborted, when failures fail the job; the statistics subtasks report.
//! - `restart`: [`RestartTracker`], the restart strategies (`none`, `fixed-delay`,
//!   `exponential-delay`, `failure-rate`).
//! - `stats`: [`stats::CheckpointStats`], what became of recent checkpoints, for the
//!   REST API and `weir checkpoints list`; shared by [`stats::StatsTracker`].
//! - `retention`: which completed checkpoints and shared files to delete, what a
//!   cancelled job leaves behind, which checkpoints a restore may use.

pub mod align;
pub mod channel_state;
pub mod coordinator;
pub mod driver;
pub mod metadata;
pub mod restart;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod stats;

pub use align::{AlignMode, Aligner, BarrierAction};
pub use coordinator::{
    AbortReason, AckOutcome, CheckpointCounts, CompletedCheckpoint, CoordinatorConfig,
    CoordinatorState, Decision, DeclineReason, IgnoredAck, NotCommitting, SubtaskAck, SubtaskStats,
    TaskRef, TooManyFailedCheckpoints, TriggerRefusal,
};
pub use restart::{GiveUpReason, RestartDecision, RestartTracker};
pub use retention::{
    CheckpointFiles, EndAction, JobEnd, ListedCheckpoint, RetentionPlan, SharedFile, on_job_end,
    plan_retention, restore_candidates,
};
