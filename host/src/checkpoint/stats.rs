//! The checkpoint statistics of a running job, as Flink's `CheckpointStatsTracker`
//! keeps them: counts, the most recent checkpoints with every subtask's figures, the
//! latest completed, failed and restored one, and a window of completed checkpoints for
//! the summary's percentiles.
//!
//! [`CheckpointStats`] is plain data changed by plain methods (unit-tested below);
//! [`StatsTracker`] shares it between the checkpoint driver, which reports what
//! happens, and readers on other threads (the REST server), which take copies. It is
//! serialisable, so that the driver can store it beside the checkpoints and a resumed
//! job shows the checkpoints taken before its crash.

use crate::checkpoint::coordinator::SubtaskStats;
use crate::checkpoint::metadata::CheckpointMetadata;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How many checkpoints the history keeps with their details (Flink's
/// `web.checkpoints.history`, 10).
pub const HISTORY: usize = 10;

/// How many completed checkpoints the summary's percentiles are over: enough for
/// stable percentiles, few enough to cost a few kilobytes.
pub const SUMMARY_WINDOW: usize = 1000;

/// What became of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatus {
    /// Triggered; not every subtask acknowledged yet, or `_metadata` is being written.
    InProgress,
    /// Committed.
    Completed,
    /// Aborted, declined, expired or not committed.
    Failed,
}

/// One subtask's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskRecord {
    /// When the coordinator received it, in milliseconds since the Unix epoch.
    pub ack_ms: i64,
    /// What the subtask reported.
    pub stats: SubtaskStats,
}

/// One node's part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexRecord {
    /// Per subtask, by index: its acknowledgement once it came.
    pub subtasks: Vec<Option<SubtaskRecord>>,
}

impl VertexRecord {
    /// The subtasks that acknowledged.
    pub fn acknowledged(&self) -> impl Iterator<Item = (usize, &SubtaskRecord)> {
        self.subtasks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }
}

/// One checkpoint as the statistics keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Its id.
    pub id: u64,
    /// What became of it.
    pub status: CheckpointStatus,
    /// When it was triggered, in milliseconds since the Unix epoch.
    pub trigger_ms: i64,
    /// When the last acknowledgement came (the trigger time before the first).
    pub latest_ack_ms: i64,
    /// When it completed or failed.
    pub end_ms: Option<i64>,
    /// Why it failed.
    pub failure: Option<String>,
    /// Where it is stored, once completed.
    pub external_path: Option<String>,
    /// Whether it was unaligned.
    pub unaligned: bool,
    /// A savepoint's format (Flink's `CANONICAL`, `NATIVE`); `None` for a checkpoint.
    #[serde(default)]
    pub savepoint_format: Option<String>,
    /// Per node id, in the job's order of nodes.
    pub vertices: Vec<(String, VertexRecord)>,
}

impl CheckpointRecord {
    /// Subtasks in the checkpoint.
    pub fn num_subtasks(&self) -> usize {
        self.vertices.iter().map(|(_, v)| v.subtasks.len()).sum()
    }

    /// Subtasks that acknowledged it.
    pub fn num_acknowledged(&self) -> usize {
        self.vertices
            .iter()
            .map(|(_, v)| v.acknowledged().count())
            .sum()
    }

    /// Every acknowledgement.
    pub fn acks(&self) -> impl Iterator<Item = &SubtaskRecord> {
        self.vertices
            .iter()
            .flat_map(|(_, v)| v.acknowledged().map(|(_, s)| s))
    }

    /// Bytes of state over the subtasks that acknowledged.
    pub fn state_size(&self) -> u64 {
        self.acks().map(|a| a.stats.state_size).sum()
    }

    /// Bytes written for this checkpoint.
    pub fn checkpointed_size(&self) -> u64 {
        self.acks().map(|a| a.stats.checkpointed_size).sum()
    }

    /// Bytes of in-flight records processed during alignment.
    pub fn processed_data(&self) -> u64 {
        self.acks().map(|a| a.stats.processed_in_flight).sum()
    }

    /// Bytes of in-flight records persisted as channel state.
    pub fn persisted_data(&self) -> u64 {
        self.acks().map(|a| a.stats.persisted_in_flight).sum()
    }

    /// From the trigger to the last acknowledgement, in milliseconds.
    pub fn end_to_end_ms(&self) -> i64 {
        (self.latest_ack_ms - self.trigger_ms).max(0)
    }

    /// The part of node `id`.
    pub fn vertex(&self, id: &str) -> Option<&VertexRecord> {
        self.vertices.iter().find(|(v, _)| v == id).map(|(_, v)| v)
    }
}

/// The checkpoint a run restored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredRecord {
    /// Its id.
    pub id: u64,
    /// When the run restored it, in milliseconds since the Unix epoch.
    pub restore_ms: i64,
    /// Where it is stored.
    pub external_path: String,
    /// Whether it is a savepoint.
    #[serde(default)]
    pub is_savepoint: bool,
}

/// The figures of one completed checkpoint that the summary is over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedFigures {
    /// From the trigger to the last acknowledgement, in milliseconds.
    pub end_to_end_ms: u64,
    /// Bytes of state.
    pub state_size: u64,
    /// Bytes written.
    pub checkpointed_size: u64,
    /// Bytes of in-flight records processed during alignment.
    pub processed_data: u64,
    /// Bytes of in-flight records persisted.
    pub persisted_data: u64,
}

/// Counts since the job first started, across restarts and resumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Restores from a checkpoint.
    pub restored: u64,
    /// Checkpoints committed.
    pub completed: u64,
    /// Checkpoints that failed.
    pub failed: u64,
}

/// Min, max, average and percentiles of one figure over the summary window (Flink's
/// `StatsSummaryDto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// The smallest.
    pub min: u64,
    /// The largest.
    pub max: u64,
    /// The mean, rounded down.
    pub avg: u64,
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
}

impl Summary {
    /// The summary of `values`; all zero for none.
    pub fn of(values: impl IntoIterator<Item = u64>) -> Self {
        let mut v: Vec<u64> = values.into_iter().collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let n = v.len();
        let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
        let at = |q: f64| {
            // Linear interpolation between closest ranks.
            let rank = q * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            let frac = rank - lo as f64;
            v[lo] as f64 + (v[hi] as f64 - v[lo] as f64) * frac
        };
        Self {
            min: v[0],
            max: v[n - 1],
            avg: u64::try_from(sum / n as u128).unwrap_or(u64::MAX),
            p50: at(0.5),
            p90: at(0.9),
            p95: at(0.95),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

/// A job's checkpoint statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Counts since the job first started.
    pub counts: Counts,
    /// The most recent checkpoints, oldest first, at most [`HISTORY`].
    pub history: VecDeque<CheckpointRecord>,
    /// The latest completed checkpoint, savepoints not counted.
    pub latest_completed: Option<CheckpointRecord>,
    /// The latest completed savepoint.
    #[serde(default)]
    pub latest_savepoint: Option<CheckpointRecord>,
    /// The latest failed checkpoint.
    pub latest_failed: Option<CheckpointRecord>,
    /// The checkpoint the current run restored.
    pub restored: Option<RestoredRecord>,
    /// The figures of the latest completed checkpoints, oldest first, at most
    /// [`SUMMARY_WINDOW`].
    pub window: VecDeque<CompletedFigures>,
}

impl CheckpointStats {
    /// Checkpoints in progress.
    pub fn in_progress(&self) -> usize {
        self.history
            .iter()
            .filter(|c| c.status == CheckpointStatus::InProgress)
            .count()
    }

    /// Checkpoints triggered in all (Flink's `totalNumberOfCheckpoints`).
    pub fn total(&self) -> u64 {
        self.counts.completed + self.counts.failed + self.in_progress() as u64
    }

    /// The checkpoint with `id`, if the history still holds it.
    pub fn get(&self, id: u64) -> Option<&CheckpointRecord> {
        self.history.iter().find(|c| c.id == id)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut CheckpointRecord> {
        self.history.iter_mut().find(|c| c.id == id)
    }

    /// Checkpoint `id` is a savepoint of this format (`CANONICAL`, `NATIVE`).
    pub fn savepoint(&mut self, id: u64, format: &str) {
        if let Some(c) = self.get_mut(id) {
            c.savepoint_format = Some(format.to_owned());
        }
    }

    /// Checkpoint `id` was triggered at `at_ms`, over `vertices` (node id and
    /// parallelism).
    pub fn triggered(&mut self, id: u64, at_ms: i64, vertices: &[(String, u32)]) {
        let record = CheckpointRecord {
            id,
            status: CheckpointStatus::InProgress,
            trigger_ms: at_ms,
            latest_ack_ms: at_ms,
            end_ms: None,
            failure: None,
            external_path: None,
            unaligned: false,
            savepoint_format: None,
            vertices: vertices
                .iter()
                .map(|(node, parallelism)| {
                    let n = usize::try_from(*parallelism).unwrap_or(0);
                    (
                        node.clone(),
                        VertexRecord {
                            subtasks: vec![None; n],
                        },
                    )
                })
                .collect(),
        };
        self.history.push_back(record);
        // Finished checkpoints go first; one in progress stays while it runs.
        while self.history.len() > HISTORY {
            match self
                .history
                .iter()
                .position(|c| c.status != CheckpointStatus::InProgress)
            {
                Some(i) => {
                    self.history.remove(i);
                }
                None => break,
            }
        }
    }

    /// Subtask `subtask` of `node` acknowledged checkpoint `id` at `at_ms`.
    pub fn acknowledged(
        &mut self,
        id: u64,
        node: &str,
        subtask: u32,
        at_ms: i64,
        stats: &SubtaskStats,
    ) {
        let Some(record) = self.get_mut(id) else {
            return;
        };
        record.latest_ack_ms = record.latest_ack_ms.max(at_ms);
        record.unaligned |= stats.unaligned;
        let slot = record
            .vertices
            .iter_mut()
            .find(|(v, _)| v == node)
            .and_then(|(_, v)| v.subtasks.get_mut(usize::try_from(subtask).ok()?));
        if let Some(slot) = slot {
            *slot = Some(SubtaskRecord {
                ack_ms: at_ms,
                stats: stats.clone(),
            });
        }
    }

    /// Checkpoint `id` was committed at `at_ms`, stored at `path`.
    pub fn completed(&mut self, id: u64, at_ms: i64, path: String) {
        let Some(record) = self.get_mut(id) else {
            return;
        };
        record.status = CheckpointStatus::Completed;
        record.end_ms = Some(at_ms);
        record.external_path = Some(path);
        let record = record.clone();
        self.counts.completed += 1;
        self.window.push_back(CompletedFigures {
            end_to_end_ms: u64::try_from(record.end_to_end_ms()).unwrap_or(0),
            state_size: record.state_size(),
            checkpointed_size: record.checkpointed_size(),
            processed_data: record.processed_data(),
            persisted_data: record.persisted_data(),
        });
        if self.window.len() > SUMMARY_WINDOW {
            self.window.pop_front();
        }
        if record.savepoint_format.is_some() {
            self.latest_savepoint = Some(record);
        } else {
            self.latest_completed = Some(record);
        }
    }

    /// Checkpoint `id` failed at `at_ms` because of `reason`; `counted` unless it was
    /// only subsumed by a newer one (as Flink, that is no failure). A checkpoint the
    /// history no longer holds is still counted.
    pub fn failed(&mut self, id: u64, at_ms: i64, reason: String, counted: bool) {
        if counted {
            self.counts.failed += 1;
        }
        let Some(record) = self.get_mut(id) else {
            return;
        };
        record.status = CheckpointStatus::Failed;
        record.end_ms = Some(at_ms);
        record.failure = Some(reason);
        self.latest_failed = Some(record.clone());
    }

    /// A run is starting: checkpoints still in progress from the previous run will
    /// never finish; they failed with `reason`.
    pub fn abandon_in_progress(&mut self, at_ms: i64, reason: &str) {
        let ids: Vec<u64> = self
            .history
            .iter()
            .filter(|c| c.status == CheckpointStatus::InProgress)
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.failed(id, at_ms, reason.to_owned(), true);
        }
    }

    /// The run restored checkpoint `id` from `path` at `at_ms`.
    pub fn restored(&mut self, id: u64, at_ms: i64, path: String, is_savepoint: bool) {
        self.counts.restored += 1;
        self.restored = Some(RestoredRecord {
            id,
            restore_ms: at_ms,
            external_path: path,
            is_savepoint,
        });
    }

    /// Statistics of a job that kept none (an older Weir, or a lost file): what the
    /// retained checkpoints' `_metadata` say, oldest first.
    pub fn from_metadata(checkpoints: &[(CheckpointMetadata, String)]) -> Self {
        let mut stats = Self::default();
        for (metadata, path) in checkpoints {
            let mut vertices: Vec<(String, u32)> = Vec::new();
            for task in &metadata.tasks {
                if !vertices.iter().any(|(n, _)| *n == task.node) {
                    vertices.push((task.node.clone(), task.parallelism));
                }
            }
            stats.triggered(metadata.checkpoint, metadata.triggered_at_ms, &vertices);
            for task in &metadata.tasks {
                let ack = metadata.triggered_at_ms
                    + i64::try_from(task.stats.end_to_end.as_millis()).unwrap_or(0);
                stats.acknowledged(
                    metadata.checkpoint,
                    &task.node,
                    task.subtask,
                    ack,
                    &task.stats,
                );
            }
            stats.completed(metadata.checkpoint, metadata.completed_at_ms, path.clone());
        }
        stats
    }

    /// A completed checkpoint the statistics missed (the process died between its
    /// commit and the statistics' write), from its `_metadata`, stored at `path`.
    /// Nothing happens for one they already count.
    pub fn completed_from(&mut self, metadata: &CheckpointMetadata, path: String) {
        let id = metadata.checkpoint;
        let known = self.latest_completed.as_ref().is_some_and(|c| c.id >= id)
            || self
                .get(id)
                .is_some_and(|c| c.status == CheckpointStatus::Completed);
        if known {
            return;
        }
        if self.get(id).is_none() {
            let mut vertices: Vec<(String, u32)> = Vec::new();
            for task in &metadata.tasks {
                if !vertices.iter().any(|(n, _)| *n == task.node) {
                    vertices.push((task.node.clone(), task.parallelism));
                }
            }
            self.triggered(id, metadata.triggered_at_ms, &vertices);
        }
        for task in &metadata.tasks {
            let ack = metadata.triggered_at_ms
                + i64::try_from(task.stats.end_to_end.as_millis()).unwrap_or(0);
            self.acknowledged(id, &task.node, task.subtask, ack, &task.stats);
        }
        self.completed(id, metadata.completed_at_ms, path);
    }

    /// The summary of one figure over the window.
    pub fn summary(&self, figure: impl Fn(&CompletedFigures) -> u64) -> Summary {
        Summary::of(self.window.iter().map(figure))
    }
}

/// [`CheckpointStats`] shared between the driver that reports and the readers.
#[derive(Clone, Debug, Default)]
pub struct StatsTracker(Arc<Mutex<CheckpointStats>>);

impl StatsTracker {
    /// A tracker that starts from `stats` (those a previous run stored).
    pub fn new(stats: CheckpointStats) -> Self {
        Self(Arc::new(Mutex::new(stats)))
    }

    /// Changes the statistics with `f`. A poisoned lock (a reader panicked) leaves the
    /// statistics as they are rather than failing the job.
    pub fn update(&self, f: impl FnOnce(&mut CheckpointStats)) {
        if let Ok(mut stats) = self.0.lock() {
            f(&mut stats);
        }
    }

    /// A copy of the statistics now.
    pub fn snapshot(&self) -> CheckpointStats {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn vertices() -> Vec<(String, u32)> {
        vec![("source".into(), 1), ("count".into(), 2)]
    }

    fn stats(state: u64) -> SubtaskStats {
        SubtaskStats {
            state_size: state,
            checkpointed_size: state / 2,
            sync_duration: Duration::from_millis(3),
            ..SubtaskStats::default()
        }
    }

    fn complete(s: &mut CheckpointStats, id: u64, at: i64) {
        s.triggered(id, at, &vertices());
        s.acknowledged(id, "source", 0, at + 5, &stats(10));
        s.acknowledged(id, "count", 0, at + 7, &stats(100));
        s.acknowledged(id, "count", 1, at + 9, &stats(300));
        s.completed(id, at + 10, format!("file:///c/chk-{id}"));
    }

    #[test]
    fn a_completed_checkpoint_sums_its_subtasks_and_takes_the_last_ack() {
        let mut s = CheckpointStats::default();
        complete(&mut s, 1, 1000);
        let c = s.latest_completed.as_ref().expect("completed");
        assert_eq!(c.state_size(), 410);
        assert_eq!(c.checkpointed_size(), 205);
        assert_eq!(c.end_to_end_ms(), 9);
        assert_eq!((c.num_subtasks(), c.num_acknowledged()), (3, 3));
        assert_eq!(s.counts.completed, 1);
        assert_eq!(s.total(), 1);
    }

    #[test]
    fn a_checkpoint_in_progress_counts_in_the_total_and_shows_partial_acks() {
        let mut s = CheckpointStats::default();
        s.triggered(4, 0, &vertices());
        s.acknowledged(4, "count", 1, 5, &stats(1));
        assert_eq!(s.in_progress(), 1);
        assert_eq!(s.total(), 1);
        let c = s.get(4).expect("in the history");
        assert_eq!(c.num_acknowledged(), 1);
        assert!(c.vertex("count").expect("count").subtasks[0].is_none());
    }

    #[test]
    fn a_failed_checkpoint_keeps_its_reason() {
        let mut s = CheckpointStats::default();
        s.triggered(2, 0, &vertices());
        s.failed(2, 50, "declined by count (1/2): disk full".into(), true);
        let f = s.latest_failed.as_ref().expect("failed");
        assert_eq!(f.status, CheckpointStatus::Failed);
        assert_eq!(
            f.failure.as_deref(),
            Some("declined by count (1/2): disk full")
        );
        assert_eq!(s.counts.failed, 1);
    }

    #[test]
    fn the_history_keeps_the_latest_ten_but_never_drops_one_in_progress() {
        let mut s = CheckpointStats::default();
        s.triggered(1, 0, &vertices());
        for id in 2..=20 {
            complete(&mut s, id, i64::try_from(id).expect("small") * 100);
        }
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.history[0].id, 1, "the one in progress stays");
        assert_eq!(s.history[1].id, 12);
        assert_eq!(s.counts.completed, 19);
    }

    #[test]
    fn acks_for_a_checkpoint_the_history_no_longer_holds_are_ignored() {
        let mut s = CheckpointStats::default();
        s.acknowledged(9, "count", 0, 1, &stats(1));
        s.completed(9, 2, "x".into());
        assert_eq!(s, CheckpointStats::default());
    }

    #[test]
    fn in_progress_checkpoints_of_a_previous_run_are_failed_on_restart() {
        let mut s = CheckpointStats::default();
        s.triggered(3, 0, &vertices());
        s.abandon_in_progress(10, "the job restarted");
        assert_eq!(s.in_progress(), 0);
        assert_eq!(s.counts.failed, 1);
        assert_eq!(
            s.get(3).and_then(|c| c.failure.as_deref()),
            Some("the job restarted")
        );
    }

    #[test]
    fn the_summary_has_flinks_percentiles() {
        let sum = Summary::of([10, 20, 30, 40, 50]);
        assert_eq!((sum.min, sum.max, sum.avg), (10, 50, 30));
        assert!((sum.p50 - 30.0).abs() < 1e-9);
        assert!((sum.p90 - 46.0).abs() < 1e-9);
        assert_eq!(Summary::of([]), Summary::default());
    }

    #[test]
    fn the_summary_window_is_bounded() {
        let mut s = CheckpointStats::default();
        for id in 0..(SUMMARY_WINDOW as u64 + 5) {
            complete(&mut s, id, 0);
        }
        assert_eq!(s.window.len(), SUMMARY_WINDOW);
    }

    #[test]
    fn a_checkpoint_committed_after_the_last_stored_statistics_is_added_from_its_metadata() {
        use crate::checkpoint::metadata::{FORMAT_VERSION, TaskEntry, TaskState};
        let mut s = CheckpointStats::default();
        complete(&mut s, 1, 1000);
        let metadata = |id| CheckpointMetadata {
            version: FORMAT_VERSION,
            job: "wc".into(),
            checkpoint: id,
            kind: crate::checkpoint::metadata::SnapshotKind::Checkpoint,
            max_parallelism: 128,
            backend: "heap".into(),
            mode: "exactly-once".into(),
            triggered_at_ms: 2000,
            completed_at_ms: 2050,
            tasks: vec![TaskEntry {
                node: "count".into(),
                subtask: 0,
                parallelism: 1,
                state: TaskState::Finished,
                channel_state: None,
                stats: stats(7),
            }],
        };
        s.completed_from(&metadata(2), "chk-2".into());
        s.completed_from(&metadata(2), "chk-2".into());
        s.completed_from(&metadata(1), "chk-1".into());
        assert_eq!(s.counts.completed, 2, "each counted once");
        let c = s.latest_completed.as_ref().expect("completed");
        assert_eq!((c.id, c.state_size()), (2, 7));
    }

    #[test]
    fn statistics_round_trip_through_json() {
        let mut s = CheckpointStats::default();
        complete(&mut s, 1, 1000);
        s.triggered(2, 2000, &vertices());
        s.failed(2, 2100, "expired".into(), true);
        s.restored(1, 3000, "file:///c/chk-1".into(), false);
        let json = serde_json::to_vec(&s).expect("serialises");
        let back: CheckpointStats = serde_json::from_slice(&json).expect("reads back");
        assert_eq!(back, s);
    }
}
