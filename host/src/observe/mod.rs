//! How a person sees a job: the tables of `weir checkpoints list` and `weir checkpoints
//! show` and the findings of `weir checkpoints diagnose`, read from a job's checkpoint
//! directory, and the REST server of a running job (Flink's REST API, Prometheus text at
//! `/metrics`, the web page).
//!
//! It reads. It may not write or delete checkpoints, decide which checkpoint is
//! complete or restorable (the coordinator's plain functions do), nor know how storage
//! frames or checksums its files: it goes through [`CheckpointStorage`] and
//! [`CheckpointMetadata`]. The one thing it changes is what the user asks for through
//! the API (cancelling the job), through the job's [`CancelToken`].
//!
//! # Layout
//!
//! - `stats.rs`: the tables (pure functions over [`CheckpointMetadata`] and
//!   [`ListedCheckpointSummary`]), the loader that builds them from storage, and
//!   [`open_dir`], which finds the job directory the user means.
//! - `diagnose.rs`: [`diagnose`], a pure function from a checkpoint's
//!   [`CheckpointMetadata`] to a [`Diagnosis`] (its slowest subtask and stage, and what
//!   that stage points to, as the troubleshooting guides read them), served by the REST
//!   API, and [`diagnosis_text`], its rendering for the terminal.
//! - `live.rs`: [`LiveJob`], what a running job publishes: graph, state, checkpoint
//!   statistics, counters.
//! - `rest/`: the REST server over a [`LiveJob`].
//!
//! [`CheckpointStorage`]: crate::storage::CheckpointStorage
//! [`CheckpointMetadata`]: crate::checkpoint::metadata::CheckpointMetadata
//! [`CancelToken`]: crate::runtime::CancelToken

mod diagnose;
mod live;
pub mod rest;
mod stats;

pub use diagnose::{
    Diagnosis, Finding, NOTABLE_STAGE, NodeStartDelay, SKEW_FACTOR, SKEW_MIN_STATE, Stage,
    StageTime, SubtaskRef, diagnose, diagnosis_text,
};
pub use live::{JobState, LiveJob, Status, Vertex};
pub use stats::{
    CompletedSummary, LatestCompleted, ListedCheckpointSummary, ListedStatus, LoadError,
    human_duration, human_size, list_table, load, load_latest, load_one, open_dir, show_table,
    utc_time,
};
