//! Checkpoint statistics, presented: this part owns how a person sees how checkpoints
//! went. Today that is the tables of `weir checkpoints list` and `weir checkpoints
//! show` and the findings of `weir checkpoints diagnose`, read from a job's checkpoint
//! directory; later it is the REST API shaped after
//! Flink's (`/jobs/{id}/checkpoints`, `.../details/{n}`), Prometheus text at `/metrics`
//! and the small web page with each stage's duration per subtask.
//!
//! It only reads. It may not write or delete checkpoints, decide which checkpoint is
//! complete or restorable (the coordinator's plain functions do), nor know how storage
//! frames or checksums its files: it goes through [`CheckpointStorage`] and
//! [`CheckpointMetadata`].
//!
//! # Layout
//!
//! - `stats.rs`: the tables (pure functions over [`CheckpointMetadata`] and
//!   [`ListedCheckpointSummary`]), the loader that builds them from storage, and
//!   [`open_dir`], which finds the job directory the user means.
//! - `diagnose.rs`: [`diagnose`], a pure function from a checkpoint's
//!   [`CheckpointMetadata`] to a [`Diagnosis`] (its slowest subtask and stage, and what
//!   that stage points to, as the troubleshooting guides read them), serialisable for the
//!   REST API, and [`diagnosis_text`], its rendering for the terminal.
//!
//! [`CheckpointStorage`]: crate::storage::CheckpointStorage
//! [`CheckpointMetadata`]: crate::checkpoint::metadata::CheckpointMetadata

mod diagnose;
mod stats;

pub use diagnose::{
    Diagnosis, Finding, NOTABLE_STAGE, NodeStartDelay, SKEW_FACTOR, SKEW_MIN_STATE, Stage,
    StageTime, SubtaskRef, diagnose, diagnosis_text,
};
pub use stats::{
    CompletedSummary, LatestCompleted, ListedCheckpointSummary, ListedStatus, LoadError,
    human_duration, human_size, list_table, load, load_latest, load_one, open_dir, show_table,
    utc_time,
};
