//! The checkpoint tables of `weir checkpoints list` and `weir checkpoints show`, and the
//! thin loader that reads what they show from a job's checkpoint storage.
//!
//! The tables are pure functions over plain data ([`list_table`], [`show_table`]), so
//! their tests need no storage; [`load`] and [`load_one`] are the only I/O, through
//! [`CheckpointStorage`], and [`open_dir`] turns the directory a user typed into the
//! base directory and job id that [`FsStorage::new`](crate::storage::FsStorage::new)
//! takes.
//!
//! The columns are Flink's checkpoint statistics (its web UI's "Checkpoint Details"):
//! start delay, alignment, sync and async duration per subtask, each stage's slowest
//! subtask marked, since a checkpoint is as slow as its slowest subtask and the stage
//! where that subtask spent its time says where to look (backpressure shows as start
//! delay and alignment, a large state as async duration).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checkpoint::coordinator::SubtaskStats;
use crate::checkpoint::metadata::{CheckpointMetadata, TaskEntry, TaskState};
use crate::checkpoint::stats::{CheckpointStats, CheckpointStatus};
use crate::runtime::CheckpointId;
use crate::storage::{CheckpointStorage, JobRecord, StorageError};

/// One checkpoint directory as `weir checkpoints list` shows it: its id and what its
/// `_metadata` says, or why there is nothing to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedCheckpointSummary {
    /// The checkpoint, from its directory's name.
    pub checkpoint: CheckpointId,
    /// What was found in the directory.
    pub status: ListedStatus,
}

/// What a checkpoint directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListedStatus {
    /// A committed checkpoint whose `_metadata` reads back intact.
    Completed(CompletedSummary),
    /// No `_metadata`: never committed (in progress, aborted, or torn by a crash), or
    /// being deleted by retention.
    Incomplete,
    /// The `_metadata` is there but does not read back: the reason, for the user.
    Corrupt(String),
    /// The checkpoint failed, and the job's stored statistics say why.
    Failed(String),
}

/// The figures of a completed checkpoint that `weir checkpoints list` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedSummary {
    /// When the coordinator triggered it, in milliseconds since the Unix epoch.
    pub triggered_at_ms: i64,
    /// From the trigger to the last acknowledgement, in milliseconds.
    pub end_to_end_ms: i64,
    /// Bytes of state over all subtasks.
    pub state_size: u64,
    /// Subtasks in the checkpoint, finished ones included.
    pub subtasks: usize,
    /// Of those, subtasks that had finished and took part only as "finished".
    pub finished: usize,
}

impl ListedCheckpointSummary {
    /// The summary of a completed checkpoint.
    pub fn completed(metadata: &CheckpointMetadata) -> Self {
        Self {
            checkpoint: CheckpointId(metadata.checkpoint),
            status: ListedStatus::Completed(CompletedSummary {
                triggered_at_ms: metadata.triggered_at_ms,
                end_to_end_ms: metadata.end_to_end_ms(),
                state_size: metadata.state_size(),
                subtasks: metadata.tasks.len(),
                finished: metadata.tasks.iter().filter(|t| is_finished(t)).count(),
            }),
        }
    }

    /// A checkpoint directory without `_metadata`.
    pub fn incomplete(checkpoint: CheckpointId) -> Self {
        Self {
            checkpoint,
            status: ListedStatus::Incomplete,
        }
    }

    /// A checkpoint whose `_metadata` does not read back, and why.
    pub fn corrupt(checkpoint: CheckpointId, reason: impl Into<String>) -> Self {
        Self {
            checkpoint,
            status: ListedStatus::Corrupt(reason.into()),
        }
    }
}

/// Reading checkpoint statistics failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No directory `chk-<n>` exists for the requested checkpoint. The user's (a
    /// mistyped id, or retention deleted it); a retry does not help.
    #[error(
        "there is no checkpoint {checkpoint} in {location}; {}",
        holds(available)
    )]
    NoSuchCheckpoint {
        /// The requested checkpoint.
        checkpoint: CheckpointId,
        /// The job directory, as a URL.
        location: String,
        /// The checkpoints the directory does hold, oldest first.
        available: Vec<CheckpointId>,
    },
    /// The checkpoint's directory has no `_metadata`, so no statistics. It was never
    /// committed, or is being deleted; a retry helps only if it was still in progress.
    #[error(
        "checkpoint {checkpoint} in {location} is incomplete: it has no _metadata, so it \
         never completed (or retention is deleting it) and has no statistics"
    )]
    Incomplete {
        /// The requested checkpoint.
        checkpoint: CheckpointId,
        /// The job directory, as a URL.
        location: String,
    },
    /// The checkpoint's `_metadata` does not read back. The storage's fault (or an
    /// incompatible Weir's); a retry does not help.
    #[error("checkpoint {checkpoint} in {location} is corrupt: {reason}")]
    Corrupt {
        /// The requested checkpoint.
        checkpoint: CheckpointId,
        /// The job directory, as a URL.
        location: String,
        /// What does not read back.
        reason: String,
    },
    /// No checkpoint in the directory is completed, so there is no latest one to read.
    /// The job has not completed a checkpoint yet (a retry helps once it has), or every
    /// one is incomplete or corrupt.
    #[error("there is no completed checkpoint in {location}; {}", holds(available))]
    NoCompletedCheckpoint {
        /// The job directory, as a URL.
        location: String,
        /// The checkpoints the directory does hold, none of them completed, oldest first.
        available: Vec<CheckpointId>,
    },
    /// The storage failed; its error says whose fault and whether a retry helps.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// "the directory holds checkpoints 3, 4" for an error message.
fn holds(available: &[CheckpointId]) -> String {
    if available.is_empty() {
        return "the directory holds no checkpoints".to_owned();
    }
    let ids: Vec<String> = available.iter().map(ToString::to_string).collect();
    format!("the directory holds checkpoints {}", ids.join(", "))
}

/// What one checkpoint's `_metadata` turned out to be.
enum Read {
    Metadata(CheckpointMetadata),
    Missing,
    Corrupt(String),
}

/// Reads and parses `checkpoint`'s `_metadata`. A missing or damaged one is an answer,
/// not an error; only a failing storage is.
async fn read(
    storage: &dyn CheckpointStorage,
    checkpoint: CheckpointId,
) -> Result<Read, StorageError> {
    let bytes = match storage.read_metadata(checkpoint).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Ok(Read::Missing),
        Err(StorageError::Corrupt { reason, .. }) => return Ok(Read::Corrupt(reason)),
        Err(e) => return Err(e),
    };
    Ok(match CheckpointMetadata::from_bytes(&bytes) {
        Err(reason) => Read::Corrupt(reason),
        Ok(metadata) if metadata.checkpoint != checkpoint.0 => Read::Corrupt(format!(
            "its _metadata describes checkpoint {}",
            metadata.checkpoint
        )),
        Ok(metadata) => Read::Metadata(metadata),
    })
}

/// Every checkpoint directory in `storage`, oldest first, with what its `_metadata`
/// says, and the recent failed checkpoints the job's stored statistics name, with their
/// reasons. Incomplete and corrupt checkpoints are listed, not errors; a failing
/// storage is.
pub async fn load(
    storage: &dyn CheckpointStorage,
) -> Result<Vec<ListedCheckpointSummary>, LoadError> {
    let mut summaries = directories(storage).await?;
    let stats = match storage.read_record(JobRecord::Statistics).await {
        Ok(Some(bytes)) => serde_json::from_slice::<CheckpointStats>(&bytes).ok(),
        // Statistics only add reasons: without them the listing stands.
        Ok(None) | Err(_) => None,
    };
    for failed in stats.iter().flat_map(|s| &s.history) {
        let (CheckpointStatus::Failed, Some(reason)) = (failed.status, &failed.failure) else {
            continue;
        };
        let checkpoint = CheckpointId(failed.id);
        let status = ListedStatus::Failed(reason.clone());
        match summaries.iter_mut().find(|s| s.checkpoint == checkpoint) {
            Some(s) if s.status == ListedStatus::Incomplete => s.status = status,
            Some(_) => {}
            None => summaries.push(ListedCheckpointSummary { checkpoint, status }),
        }
    }
    summaries.sort_by_key(|s| s.checkpoint);
    Ok(summaries)
}

/// Every checkpoint directory in `storage`, oldest first, with what its `_metadata`
/// says.
async fn directories(
    storage: &dyn CheckpointStorage,
) -> Result<Vec<ListedCheckpointSummary>, LoadError> {
    let mut summaries = Vec::new();
    for listing in storage.list().await? {
        let checkpoint = listing.checkpoint;
        if !listing.has_metadata {
            summaries.push(ListedCheckpointSummary::incomplete(checkpoint));
            continue;
        }
        summaries.push(match read(storage, checkpoint).await? {
            Read::Metadata(metadata) => ListedCheckpointSummary::completed(&metadata),
            // Retention deleted it between the listing and the read.
            Read::Missing => ListedCheckpointSummary::incomplete(checkpoint),
            Read::Corrupt(reason) => ListedCheckpointSummary::corrupt(checkpoint, reason),
        });
    }
    Ok(summaries)
}

/// The `_metadata` of `checkpoint`, for [`show_table`]. An incomplete, corrupt or
/// missing checkpoint is an error that says which and what the directory holds.
pub async fn load_one(
    storage: &dyn CheckpointStorage,
    checkpoint: CheckpointId,
) -> Result<CheckpointMetadata, LoadError> {
    let location = storage.describe();
    match read(storage, checkpoint).await? {
        Read::Metadata(metadata) => Ok(metadata),
        Read::Corrupt(reason) => Err(LoadError::Corrupt {
            checkpoint,
            location,
            reason,
        }),
        Read::Missing => {
            let listings = storage.list().await?;
            if listings.iter().any(|l| l.checkpoint == checkpoint) {
                Err(LoadError::Incomplete {
                    checkpoint,
                    location,
                })
            } else {
                Err(LoadError::NoSuchCheckpoint {
                    checkpoint,
                    location,
                    available: listings.iter().map(|l| l.checkpoint).collect(),
                })
            }
        }
    }
}

/// The latest completed checkpoint of a directory, and the newer ones that could not be
/// used.
#[derive(Clone, Debug, PartialEq)]
pub struct LatestCompleted {
    /// Its `_metadata`.
    pub metadata: CheckpointMetadata,
    /// The checkpoints newer than it, incomplete or corrupt, oldest first: what a user
    /// who expected a newer one should know.
    pub newer: Vec<ListedCheckpointSummary>,
}

/// How often [`load_latest`] lists again when its checkpoint vanished between the
/// listing and the read. On a running job with `num-retained = 1` that is retention
/// deleting it for a newer one, which the next listing finds; three misses in a row
/// would need checkpoints completing faster than a listing takes.
const LATEST_ATTEMPTS: usize = 3;

/// The `_metadata` of the newest completed checkpoint in `storage` (newer incomplete or
/// corrupt ones are skipped and named), for a command given no checkpoint id. A
/// directory without a completed checkpoint is an error that says what it holds.
pub async fn load_latest(storage: &dyn CheckpointStorage) -> Result<LatestCompleted, LoadError> {
    let mut attempt = 1;
    loop {
        let listed = load(storage).await?;
        let Some(latest) = listed
            .iter()
            .rev()
            .find(|l| matches!(l.status, ListedStatus::Completed(_)))
            .map(|l| l.checkpoint)
        else {
            return Err(LoadError::NoCompletedCheckpoint {
                location: storage.describe(),
                available: listed.iter().map(|l| l.checkpoint).collect(),
            });
        };
        match load_one(storage, latest).await {
            Ok(metadata) => {
                let newer = listed
                    .into_iter()
                    .filter(|l| l.checkpoint > latest)
                    .collect();
                return Ok(LatestCompleted { metadata, newer });
            }
            // Deleted since the listing: a newer one completed meanwhile.
            Err(LoadError::NoSuchCheckpoint { .. } | LoadError::Incomplete { .. })
                if attempt < LATEST_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The base directory and job id of the checkpoints in `dir`, for
/// [`FsStorage::new`](crate::storage::FsStorage::new).
///
/// `dir` is either a job's checkpoint directory (`<base>/<job-id>`, holding `chk-<n>`
/// directories, or `shared` and `taskowned` before its first checkpoint) or the base
/// directory of the job file's `[checkpointing] dir` holding exactly one job directory.
/// Anything else is an error that says what was found, listing the job directories when
/// there are several.
pub fn open_dir(dir: &Path) -> Result<(PathBuf, String), String> {
    // Canonical, so that `.` and `..` have a name and a parent.
    let dir =
        std::fs::canonicalize(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if is_job_dir(&dir) {
        let (Some(base), Some(job)) = (dir.parent(), dir.file_name()) else {
            return Err(format!("{} has no parent directory", dir.display()));
        };
        let job = job
            .to_str()
            .ok_or_else(|| format!("the job directory name of {} is not UTF-8", dir.display()))?;
        return Ok((base.to_path_buf(), job.to_owned()));
    }
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut jobs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| is_job_dir(&entry.path()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    jobs.sort();
    match jobs.as_slice() {
        [job] if dir.join(job).is_dir() => Ok((dir, job.clone())),
        [job] => Err(format!(
            "the job directory name {job:?} in {} is not UTF-8",
            dir.display()
        )),
        [] => Err(format!(
            "{} holds no checkpoints: pass a job's checkpoint directory (the one with \
             chk-<n> directories) or the [checkpointing] dir of the job file",
            dir.display()
        )),
        [first, ..] => Err(format!(
            "{} holds the checkpoints of {} jobs ({}); pass one job's directory, e.g. {}",
            dir.display(),
            jobs.len(),
            jobs.join(", "),
            dir.join(first).display()
        )),
    }
}

/// Whether `path` looks like a job's checkpoint directory: it has a `chk-…` directory,
/// or the `shared` and `taskowned` directories storage creates at job start. Only a
/// guess at which directory the user means; which checkpoints there are is storage's
/// listing.
fn is_job_dir(path: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    let (mut shared, mut task_owned) = (false, false);
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match entry.file_name().to_str() {
            Some(name) if name.starts_with("chk-") => return true,
            Some("shared") => shared = true,
            Some("taskowned") => task_owned = true,
            _ => {}
        }
    }
    shared && task_owned
}

/// The table of `weir checkpoints list`: one row per checkpoint, newest first.
///
/// ```text
/// ID  STATUS                     TRIGGERED (UTC)          END-TO-END  STATE SIZE  SUBTASKS
/// 12  completed                  2026-11-21 10:15:03.123  1.20s       12.3 MiB    4
/// 11  incomplete (no _metadata)  -                        -           -           -
/// ```
pub fn list_table(entries: &[ListedCheckpointSummary]) -> String {
    if entries.is_empty() {
        return "no checkpoints\n".to_owned();
    }
    let mut sorted: Vec<&ListedCheckpointSummary> = entries.iter().collect();
    sorted.sort_by_key(|entry| std::cmp::Reverse(entry.checkpoint));
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|entry| {
            let id = entry.checkpoint.to_string();
            match &entry.status {
                ListedStatus::Completed(summary) => vec![
                    id,
                    "completed".to_owned(),
                    utc_time(summary.triggered_at_ms),
                    millis(summary.end_to_end_ms),
                    human_size(summary.state_size),
                    subtask_count(summary.subtasks, summary.finished),
                ],
                ListedStatus::Incomplete => {
                    not_completed(id, "incomplete (no _metadata)".to_owned())
                }
                ListedStatus::Corrupt(reason) => not_completed(id, format!("corrupt: {reason}")),
                ListedStatus::Failed(reason) => not_completed(id, format!("failed: {reason}")),
            }
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "TRIGGERED (UTC)",
            "END-TO-END",
            "STATE SIZE",
            "SUBTASKS",
        ],
        &rows,
    )
}

/// A list row for a checkpoint without figures.
fn not_completed(id: String, status: String) -> Vec<String> {
    let mut row = vec![id, status];
    row.extend(std::iter::repeat_n("-".to_owned(), 4));
    row
}

/// "8" or "8 (2 finished)".
fn subtask_count(subtasks: usize, finished: usize) -> String {
    if finished == 0 {
        subtasks.to_string()
    } else {
        format!("{subtasks} ({finished} finished)")
    }
}

/// How long a subtask spent in one stage of its checkpoint.
type Stage = fn(&SubtaskStats) -> Duration;

/// The stages of a subtask's checkpoint, in order, as `show_table` heads them.
const STAGES: [(&str, Stage); 5] = [
    ("START DELAY", |s| s.start_delay),
    ("ALIGNMENT", |s| s.alignment_duration),
    ("SYNC", |s| s.sync_duration),
    ("ASYNC", |s| s.async_duration),
    ("END-TO-END", |s| s.end_to_end),
];

/// What follows a stage's value in its slowest subtask's row.
const SLOWEST_MARK: &str = " *";

/// The report of `weir checkpoints show`: the checkpoint's header, then one row per
/// subtask in the order of the metadata (the job's nodes, then subtasks). In each
/// stage the slowest subtask is marked with `*` (every subtask that ties for slowest;
/// none when the stage took no time anywhere), and a legend says so.
///
/// ```text
/// SUBTASK        START DELAY  ALIGNMENT  SYNC      ASYNC    END-TO-END  STATE SIZE  PROCESSED IN-FLIGHT  PERSISTED IN-FLIGHT  UNALIGNED  SYNC FUEL
/// count (1/2)    350µs        0s         12.3ms *  1.20s *  1.21s *     12.3 MiB    0 B                  0 B                  no         -
/// count (2/2)    finished
/// ```
pub fn show_table(metadata: &CheckpointMetadata) -> String {
    let running: Vec<&SubtaskStats> = metadata
        .tasks
        .iter()
        .filter(|t| !is_finished(t))
        .map(|t| &t.stats)
        .collect();
    let slowest: Vec<Duration> = STAGES
        .iter()
        .map(|(_, stage)| running.iter().map(|s| stage(s)).max().unwrap_or_default())
        .collect();
    let mut any_marked = false;
    let rows: Vec<Vec<String>> = metadata
        .tasks
        .iter()
        .map(|task| {
            let mut row = vec![subtask_name(task)];
            if is_finished(task) {
                row.push("finished".to_owned());
                return row;
            }
            for ((_, stage), &max) in STAGES.iter().zip(&slowest) {
                let value = stage(&task.stats);
                let mut cell = human_duration(value);
                if !max.is_zero() && value == max {
                    cell.push_str(SLOWEST_MARK);
                    any_marked = true;
                }
                row.push(cell);
            }
            row.push(human_size(task.stats.state_size));
            row.push(human_size(task.stats.processed_in_flight));
            row.push(human_size(task.stats.persisted_in_flight));
            row.push(if task.stats.unaligned { "yes" } else { "no" }.to_owned());
            row.push(task.stats.sync_fuel.map_or_else(|| "-".to_owned(), grouped));
            row
        })
        .collect();

    let finished = metadata.tasks.len() - running.len();
    let mut out = table(
        &[],
        &[
            vec!["job".to_owned(), metadata.job.clone()],
            vec!["checkpoint".to_owned(), metadata.checkpoint.to_string()],
            vec!["mode".to_owned(), metadata.mode.clone()],
            vec!["backend".to_owned(), metadata.backend.clone()],
            vec![
                "triggered".to_owned(),
                format!("{} UTC", utc_time(metadata.triggered_at_ms)),
            ],
            vec!["end-to-end".to_owned(), millis(metadata.end_to_end_ms())],
            vec!["state size".to_owned(), human_size(metadata.state_size())],
            vec![
                "unaligned".to_owned(),
                if metadata.is_unaligned() {
                    format!(
                        "yes, {} of in-flight records persisted",
                        human_size(metadata.persisted_in_flight())
                    )
                } else {
                    "no".to_owned()
                },
            ],
            vec![
                "subtasks".to_owned(),
                subtask_count(metadata.tasks.len(), finished),
            ],
        ],
    );
    out.push('\n');
    let mut header = vec!["SUBTASK"];
    header.extend(STAGES.iter().map(|(name, _)| *name));
    header.extend([
        "STATE SIZE",
        "PROCESSED IN-FLIGHT",
        "PERSISTED IN-FLIGHT",
        "UNALIGNED",
        "SYNC FUEL",
    ]);
    out.push_str(&table(&header, &rows));
    if any_marked {
        out.push_str("\n* the slowest subtask of the stage\n");
    }
    out
}

/// Whether the subtask had finished and took part in the checkpoint only as "finished",
/// with no statistics worth showing.
pub(super) fn is_finished(task: &TaskEntry) -> bool {
    matches!(task.state, TaskState::Finished)
}

fn subtask_name(task: &TaskEntry) -> String {
    flink_name(&task.node, task.subtask, task.parallelism)
}

/// Flink's name of a subtask: the node and its 1-based index over the parallelism,
/// `count (1/4)`.
pub(super) fn flink_name(node: &str, subtask: u32, parallelism: u32) -> String {
    format!("{node} ({}/{parallelism})", u64::from(subtask) + 1)
}

/// Columns of left-aligned text, two spaces apart, without trailing spaces. An empty
/// `header` prints no header line; a row may have fewer cells than the widest.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    if !header.is_empty() {
        push_row(&mut out, header.iter().copied(), &widths);
    }
    for row in rows {
        push_row(&mut out, row.iter().map(String::as_str), &widths);
    }
    out
}

fn push_row<'a>(out: &mut String, cells: impl Iterator<Item = &'a str>, widths: &[usize]) {
    let mut line = String::new();
    for (cell, width) in cells.zip(widths) {
        line.push_str(cell);
        let pad = width.saturating_sub(cell.chars().count()) + 2;
        line.extend(std::iter::repeat_n(' ', pad));
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// A duration given in milliseconds, humanised; `-` for a negative one (the wall clock
/// went back between trigger and completion, so the figure means nothing).
fn millis(ms: i64) -> String {
    u64::try_from(ms).map_or_else(
        |_| "-".to_owned(),
        |ms| human_duration(Duration::from_millis(ms)),
    )
}

/// A duration with three significant figures in the largest fitting unit: `0s`,
/// `800ns`, `350µs`, `12.3ms`, `1.20s`, `2m05s`, `1h02m`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(weir::observe::human_duration(Duration::from_micros(12_345)), "12.3ms");
/// ```
pub fn human_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    // Each unit's upper bound is where rounding would print 1000 of it (or 60 s).
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos < 1_000 {
        format!("{nanos}ns")
    } else if nanos < 999_500 {
        format!("{}µs", (nanos + 500) / 1_000)
    } else if nanos < 999_500_000 {
        three_figures(d.as_secs_f64() * 1e3, "ms")
    } else if nanos < 59_950_000_000 {
        three_figures(d.as_secs_f64(), "s")
    } else {
        let secs = (nanos + 500_000_000) / 1_000_000_000;
        if secs < 3_600 {
            format!("{}m{:02}s", secs / 60, secs % 60)
        } else {
            let minutes = (secs + 30) / 60;
            format!("{}h{:02}m", minutes / 60, minutes % 60)
        }
    }
}

/// Bytes in binary units with three significant figures: `512 B`, `1.00 KiB`,
/// `12.3 MiB`, `980 GiB`.
///
/// ```
/// assert_eq!(weir::observe::human_size(3 * 1024 * 1024), "3.00 MiB");
/// ```
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // A display figure: the precision an f64 loses above 2^53 bytes does not show.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Promote where rounding would print 1024 of a unit.
    while value >= 1023.5 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    three_figures(value, &format!(" {}", UNITS[unit]))
}

/// `value` (at least 1) with three significant figures, then `unit`.
fn three_figures(value: f64, unit: &str) -> String {
    if value < 9.995 {
        format!("{value:.2}{unit}")
    } else if value < 99.95 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// `12345678` as `12,345,678`.
pub(super) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Milliseconds since the Unix epoch as a UTC time, `2026-11-21 10:15:03.123`.
///
/// ```
/// assert_eq!(weir::observe::utc_time(0), "1970-01-01 00:00:00.000");
/// ```
pub fn utc_time(ms: i64) -> String {
    const MS_PER_DAY: i64 = 86_400_000;
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let of_day = ms.rem_euclid(MS_PER_DAY);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1_000 % 60,
        of_day % 1_000
    )
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01): Howard
/// Hinnant's `civil_from_days`, which counts in 400-year eras starting on 1 March so
/// that the leap day is the last day of a year.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let mp = (5 * day_of_year + 2) / 153; // month from March, [0, 11]
    let day = day_of_year - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::FORMAT_VERSION;
    use crate::storage::{FileHandle, FsStorage, MemoryStorage};
    use bytes::Bytes;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn running(node: &str, subtask: u32, parallelism: u32, stats: SubtaskStats) -> TaskEntry {
        TaskEntry {
            node: node.into(),
            subtask,
            parallelism,
            state: TaskState::Parts(crate::checkpoint::snapshot::StateParts {
                file: Some(FileHandle {
                    path: format!("chk-7/{node}-{subtask}"),
                    size: stats.state_size,
                    checksum: 0,
                }),
                ..Default::default()
            }),
            channel_state: None,
            stats,
        }
    }

    fn finished(node: &str, subtask: u32, parallelism: u32) -> TaskEntry {
        TaskEntry {
            node: node.into(),
            subtask,
            parallelism,
            state: TaskState::Finished,
            channel_state: None,
            stats: SubtaskStats::default(),
        }
    }

    fn metadata(checkpoint: u64, tasks: Vec<TaskEntry>) -> CheckpointMetadata {
        CheckpointMetadata {
            version: FORMAT_VERSION,
            job: "wc".into(),
            checkpoint,
            kind: crate::checkpoint::metadata::SnapshotKind::Checkpoint,
            max_parallelism: 128,
            backend: "heap".into(),
            mode: "exactly-once".into(),
            // 2026-11-21 10:15:03.123 UTC
            triggered_at_ms: 1_795_256_103_123,
            completed_at_ms: 1_795_256_104_323,
            tasks,
        }
    }

    fn two_counters() -> CheckpointMetadata {
        metadata(
            7,
            vec![
                running(
                    "count",
                    0,
                    2,
                    SubtaskStats {
                        start_delay: ms(5),
                        alignment_duration: ms(40),
                        sync_duration: Duration::from_micros(350),
                        async_duration: ms(20),
                        state_size: 2048,
                        processed_in_flight: 100,
                        sync_fuel: Some(1_234_567),
                        ..SubtaskStats::default()
                    },
                ),
                running(
                    "count",
                    1,
                    2,
                    SubtaskStats {
                        start_delay: ms(90),
                        alignment_duration: ms(1),
                        sync_duration: Duration::from_micros(900),
                        async_duration: ms(20),
                        state_size: 1024,
                        ..SubtaskStats::default()
                    },
                ),
            ],
        )
    }

    /// The line of the table that starts with `prefix`.
    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"))
    }

    #[test]
    fn the_slowest_subtask_of_each_stage_is_marked() {
        let text = show_table(&two_counters());
        let first = line(&text, "count (1/2)");
        let second = line(&text, "count (2/2)");
        // count 1 has the longest alignment; count 2 the longest start delay and sync.
        assert!(first.contains("40.0ms *"), "{text}");
        assert!(
            first.contains("5.00ms ") && !first.contains("5.00ms *"),
            "{text}"
        );
        assert!(second.contains("90.0ms *"), "{text}");
        assert!(second.contains("900µs *"), "{text}");
        assert!(!first.contains("350µs *"), "{text}");
        assert!(
            text.contains("* the slowest subtask of the stage"),
            "{text}"
        );
    }

    #[test]
    fn subtasks_that_tie_for_slowest_are_all_marked() {
        let text = show_table(&two_counters());
        assert!(line(&text, "count (1/2)").contains("20.0ms *"), "{text}");
        assert!(line(&text, "count (2/2)").contains("20.0ms *"), "{text}");
    }

    #[test]
    fn a_stage_that_took_no_time_anywhere_marks_nobody() {
        let m = metadata(1, vec![running("map", 0, 1, SubtaskStats::default())]);
        let text = show_table(&m);
        assert!(!text.contains('*'), "{text}");
    }

    #[test]
    fn subtasks_are_named_as_flink_names_them_counting_from_one() {
        let text = show_table(&two_counters());
        assert!(
            text.contains("count (1/2)") && text.contains("count (2/2)"),
            "{text}"
        );
        assert!(!text.contains("(0/2)"), "{text}");
    }

    #[test]
    fn a_finished_subtask_is_shown_as_finished_and_never_marked() {
        let mut m = two_counters();
        m.tasks.push(finished("source", 0, 1));
        let text = show_table(&m);
        let row = line(&text, "source (1/1)");
        assert!(row.ends_with("finished"), "{text}");
        assert!(!row.contains('*'), "{text}");
        assert!(line(&text, "subtasks").contains("3 (1 finished)"), "{text}");
    }

    #[test]
    fn the_header_names_the_checkpoint_and_its_totals() {
        let text = show_table(&two_counters());
        assert!(line(&text, "job").ends_with("wc"), "{text}");
        assert!(line(&text, "checkpoint").ends_with('7'), "{text}");
        assert!(line(&text, "mode").ends_with("exactly-once"), "{text}");
        assert!(line(&text, "backend").ends_with("heap"), "{text}");
        assert!(
            line(&text, "triggered").ends_with("2026-11-21 10:15:03.123 UTC"),
            "{text}"
        );
        assert!(line(&text, "end-to-end").ends_with("1.20s"), "{text}");
        assert!(line(&text, "state size").ends_with("3.00 KiB"), "{text}");
    }

    #[test]
    fn sizes_in_flight_and_fuel_are_shown_per_subtask() {
        let text = show_table(&two_counters());
        let first = line(&text, "count (1/2)");
        assert!(
            first.contains("2.00 KiB") && first.contains("100 B"),
            "{text}"
        );
        assert!(first.ends_with("1,234,567"), "{text}");
        assert!(line(&text, "count (2/2)").ends_with('-'), "{text}");
    }

    #[test]
    fn columns_line_up_under_their_headers() {
        let text = show_table(&two_counters());
        let header = line(&text, "SUBTASK");
        let row = line(&text, "count (1/2)");
        let column = |l: &str, needle: &str| l.find(needle).map(|b| l[..b].chars().count());
        assert_eq!(column(header, "ALIGNMENT"), column(row, "40.0ms"), "{text}");
        assert_eq!(
            column(header, "SYNC FUEL"),
            column(row, "1,234,567"),
            "{text}"
        );
    }

    fn summary(checkpoint: u64) -> ListedCheckpointSummary {
        ListedCheckpointSummary::completed(&metadata(checkpoint, two_counters().tasks))
    }

    #[test]
    fn checkpoints_are_listed_newest_first() {
        let text = list_table(&[summary(3), summary(12), summary(7)]);
        let ids: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(ids, ["12", "7", "3"], "{text}");
    }

    #[test]
    fn a_completed_checkpoint_is_listed_with_its_figures() {
        let text = list_table(&[summary(7)]);
        let row = line(&text, "7 ");
        for figure in ["completed", "2026-11-21 10:15:03.123", "1.20s", "3.00 KiB"] {
            assert!(row.contains(figure), "{figure} in {text}");
        }
        assert!(row.ends_with('2'), "{text}");
    }

    #[test]
    fn an_incomplete_checkpoint_is_listed_as_such() {
        let text = list_table(&[
            summary(7),
            ListedCheckpointSummary::incomplete(CheckpointId(8)),
        ]);
        let row = line(&text, "8 ");
        assert!(row.contains("incomplete (no _metadata)"), "{text}");
        assert!(row.ends_with('-'), "{text}");
    }

    #[test]
    fn a_corrupt_checkpoint_is_listed_with_its_reason() {
        let text = list_table(&[ListedCheckpointSummary::corrupt(
            CheckpointId(9),
            "the checksum does not match",
        )]);
        assert!(
            line(&text, "9 ").contains("corrupt: the checksum does not match"),
            "{text}"
        );
    }

    #[test]
    fn finished_subtasks_are_counted_in_the_list() {
        let mut m = two_counters();
        m.tasks.push(finished("source", 0, 1));
        let text = list_table(&[ListedCheckpointSummary::completed(&m)]);
        assert!(line(&text, "7 ").ends_with("3 (1 finished)"), "{text}");
    }

    #[test]
    fn an_empty_directory_lists_no_checkpoints() {
        assert_eq!(list_table(&[]), "no checkpoints\n");
    }

    #[test]
    fn a_completion_before_the_trigger_shows_no_end_to_end() {
        let mut m = two_counters();
        m.completed_at_ms = m.triggered_at_ms - 5;
        assert!(line(&show_table(&m), "end-to-end").ends_with('-'));
    }

    #[test]
    fn durations_are_humanised_with_three_figures() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(800), "800ns"),
            (Duration::from_nanos(1_000), "1µs"),
            (Duration::from_micros(350), "350µs"),
            (Duration::from_nanos(999_499), "999µs"),
            (Duration::from_nanos(999_500), "1.00ms"),
            (Duration::from_micros(12_345), "12.3ms"),
            (ms(123), "123ms"),
            (Duration::from_micros(999_499), "999ms"),
            (Duration::from_micros(999_500), "1.00s"),
            (ms(1_200), "1.20s"),
            (ms(12_340), "12.3s"),
            (ms(59_949), "59.9s"),
            (ms(59_950), "1m00s"),
            (Duration::from_secs(125), "2m05s"),
            (Duration::from_secs(3_599), "59m59s"),
            (Duration::from_secs(3_720), "1h02m"),
            (Duration::from_secs(100 * 3_600), "100h00m"),
        ] {
            assert_eq!(human_duration(d), text, "{d:?}");
        }
    }

    #[test]
    fn sizes_are_humanised_in_binary_units() {
        for (bytes, text) in [
            (0, "0 B"),
            (1_023, "1023 B"),
            (1_024, "1.00 KiB"),
            (1_536, "1.50 KiB"),
            (12_900_000, "12.3 MiB"),
            (1_023 * 1_024, "1023 KiB"),
            (1_024 * 1_024 - 1, "1.00 MiB"),
            (5 * (1 << 30), "5.00 GiB"),
            (u64::MAX, "16384 PiB"),
        ] {
            assert_eq!(human_size(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn fuel_is_grouped_in_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn trigger_times_are_printed_in_utc() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc_time(1_795_256_103_123), "2026-11-21 10:15:03.123");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc_time(4_107_542_399_999), "2100-02-28 23:59:59.999");
        assert_eq!(utc_time(-1), "1969-12-31 23:59:59.999");
    }

    #[test]
    fn day_numbers_become_dates_across_leap_years_and_eras() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
        assert_eq!(civil_from_days(-719_469), (0, 2, 29));
        // Every day follows the one before.
        let mut previous = civil_from_days(-800_000);
        for day in -799_999..800_000 {
            let next = civil_from_days(day);
            let (y, m, d) = previous;
            let ok = next == (y, m, d + 1) || next == (y, m + 1, 1) || next == (y + 1, 1, 1);
            assert!(ok, "{previous:?} then {next:?}");
            previous = next;
        }
    }

    async fn commit(storage: &dyn CheckpointStorage, checkpoint: u64, bytes: Vec<u8>) {
        storage
            .commit(CheckpointId(checkpoint), Bytes::from(bytes))
            .await
            .expect("commit");
    }

    async fn storage_with_every_kind() -> MemoryStorage {
        let storage = MemoryStorage::new("wc").expect("valid job id");
        storage.check().await.expect("check");
        commit(&storage, 1, metadata(1, two_counters().tasks).to_bytes()).await;
        storage
            .write(CheckpointId(2), "count-0", Bytes::from_static(b"state"))
            .await
            .expect("write");
        commit(&storage, 3, b"not json".to_vec()).await;
        commit(&storage, 4, metadata(5, Vec::new()).to_bytes()).await;
        commit(&storage, 6, metadata(6, Vec::new()).to_bytes()).await;
        assert!(storage.corrupt("chk-6/_metadata"));
        storage
    }

    #[tokio::test]
    async fn loading_lists_every_checkpoint_directory_with_what_it_holds() {
        let storage = storage_with_every_kind().await;
        let listed = load(&storage).await.expect("load");
        let ids: Vec<u64> = listed.iter().map(|l| l.checkpoint.0).collect();
        assert_eq!(ids, [1, 2, 3, 4, 6]);
        assert!(matches!(listed[0].status, ListedStatus::Completed(_)));
        assert_eq!(listed[1].status, ListedStatus::Incomplete);
        for corrupt in &listed[2..] {
            assert!(
                matches!(corrupt.status, ListedStatus::Corrupt(_)),
                "{corrupt:?}"
            );
        }
        assert_eq!(
            listed[3].status,
            ListedStatus::Corrupt("its _metadata describes checkpoint 5".into())
        );
    }

    #[tokio::test]
    async fn failed_checkpoints_are_listed_with_the_reasons_the_statistics_kept() {
        let storage = storage_with_every_kind().await;
        let mut stats = CheckpointStats::default();
        for (id, why) in [(2, "declined by count (1/2): disk full"), (7, "expired")] {
            stats.triggered(id, 0, &[("count".into(), 1)]);
            stats.failed(id, 1, why.into(), true);
        }
        let json = serde_json::to_vec(&stats).expect("json");
        storage
            .write_record(JobRecord::Statistics, Bytes::from(json))
            .await
            .expect("write");
        let listed = load(&storage).await.expect("load");
        let ids: Vec<u64> = listed.iter().map(|l| l.checkpoint.0).collect();
        assert_eq!(ids, [1, 2, 3, 4, 6, 7]);
        assert_eq!(
            listed[1].status,
            ListedStatus::Failed("declined by count (1/2): disk full".into())
        );
        assert_eq!(listed[5].status, ListedStatus::Failed("expired".into()));
        assert!(list_table(&listed).contains("failed: expired"));
    }

    #[tokio::test]
    async fn loading_one_checkpoint_says_why_it_cannot_be_shown() {
        let storage = storage_with_every_kind().await;
        assert_eq!(
            load_one(&storage, CheckpointId(1)).await.expect("complete"),
            metadata(1, two_counters().tasks)
        );
        let error = |id| {
            let storage = &storage;
            async move { load_one(storage, CheckpointId(id)).await.err() }
        };
        assert!(matches!(error(2).await, Some(LoadError::Incomplete { .. })));
        assert!(matches!(error(3).await, Some(LoadError::Corrupt { .. })));
        assert!(matches!(error(6).await, Some(LoadError::Corrupt { .. })));
        let missing = error(5).await.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            missing.contains("no checkpoint 5") && missing.contains("checkpoints 1, 2, 3, 4, 6"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn the_latest_completed_checkpoint_skips_newer_incomplete_and_corrupt_ones() {
        let storage = storage_with_every_kind().await;
        let latest = load_latest(&storage)
            .await
            .expect("checkpoint 1 is complete");
        assert_eq!(latest.metadata, metadata(1, two_counters().tasks));
        let newer: Vec<u64> = latest.newer.iter().map(|l| l.checkpoint.0).collect();
        assert_eq!(newer, [2, 3, 4, 6]);
    }

    #[tokio::test]
    async fn a_directory_without_a_completed_checkpoint_has_no_latest_one() {
        let storage = MemoryStorage::new("wc").expect("valid job id");
        storage.check().await.expect("check");
        let empty = load_latest(&storage).await.err().map(|e| e.to_string());
        assert!(
            empty.as_deref().is_some_and(
                |e| e.contains("no completed checkpoint") && e.contains("holds no checkpoints")
            ),
            "{empty:?}"
        );
        commit(&storage, 3, b"not json".to_vec()).await;
        let corrupt = load_latest(&storage).await.err().map(|e| e.to_string());
        assert!(
            corrupt
                .as_deref()
                .is_some_and(|e| e.contains("holds checkpoints 3")),
            "{corrupt:?}"
        );
    }

    /// A base directory with the checkpoints of `jobs`, written through `FsStorage`.
    async fn base_with_jobs(jobs: &[&str]) -> tempfile::TempDir {
        let temp = tempfile::tempdir().expect("temp dir");
        for job in jobs {
            let storage = FsStorage::new(temp.path().to_path_buf(), job).expect("job id");
            storage.check().await.expect("check");
            commit(&storage, 1, metadata(1, Vec::new()).to_bytes()).await;
        }
        temp
    }

    #[tokio::test]
    async fn a_job_directory_opens_as_itself() {
        let temp = base_with_jobs(&["wc"]).await;
        let (base, job) = open_dir(&temp.path().join("wc")).expect("a job directory");
        assert_eq!(
            (base.as_path(), job.as_str()),
            (temp.path().canonicalize().expect("exists").as_path(), "wc")
        );
        let storage = FsStorage::new(base, &job).expect("job id");
        assert_eq!(load(&storage).await.expect("load").len(), 1);
    }

    #[tokio::test]
    async fn a_base_directory_with_one_job_opens_that_job() {
        let temp = base_with_jobs(&["wc"]).await;
        let (_, job) = open_dir(temp.path()).expect("one job");
        assert_eq!(job, "wc");
    }

    #[tokio::test]
    async fn a_base_directory_with_several_jobs_names_them() {
        let temp = base_with_jobs(&["wc", "etl"]).await;
        let message = open_dir(temp.path()).err().unwrap_or_default();
        assert!(message.contains("2 jobs (etl, wc)"), "{message}");
    }

    #[test]
    fn a_directory_without_checkpoints_is_refused_with_a_hint() {
        let temp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(temp.path().join("logs")).expect("mkdir");
        let message = open_dir(temp.path()).err().unwrap_or_default();
        assert!(message.contains("holds no checkpoints"), "{message}");
        let missing = open_dir(&temp.path().join("nope"))
            .err()
            .unwrap_or_default();
        assert!(missing.contains("cannot open"), "{missing}");
    }
}
