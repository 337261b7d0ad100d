//! The checkpoint coordinator's decisions: when to trigger, when a checkpoint is
//! complete, when it is aborted, and when too many failures fail the job.
//!
//! [`CoordinatorState`] is a plain state machine owned by the coordinator thread. The
//! thread feeds it the time and the tasks' messages and carries out the returned
//! [`Decision`]s (send triggers, write `_metadata`, notify tasks, fail the job); it never
//! decides anything itself. The rules are Flink's `CheckpointCoordinator`,
//! `CheckpointRequestDecider` and `CheckpointFailureManager`:
//!
//! - the interval is measured between trigger times; `min-pause` between the commit of
//!   the last completed checkpoint and the next trigger (a positive `min-pause` allows
//!   one checkpoint at a time, since the pause needs the previous one's end);
//! - a checkpoint is complete when every task acknowledged it; it is committed when the
//!   caller has written its `_metadata` ([`CoordinatorState::committed`]), which
//!   subsumes (aborts) older pending checkpoints and resets the failure count;
//! - expired checkpoints, failed commits and declines for a real failure count towards
//!   `tolerable-failed`; subsumed checkpoints, declines that only say "not now", and
//!   aborts caused by a job failover do not. A failure counts only if it is newer than
//!   the latest committed checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::job::CheckpointingConfig;
use crate::runtime::{CheckpointId, SubtaskIndex};

/// Durations longer than this mean "never": a century outlasts any job, and an
/// `Instant` plus it cannot overflow, so no configured value can make the arithmetic
/// panic.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `t + d`, with `d` capped at [`FOREVER`].
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FOREVER)).unwrap_or(t)
}

/// The coordinator's knobs, as `[checkpointing]` in the job file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// Time between two triggers.
    pub interval: Duration,
    /// A checkpoint not complete this long after its trigger is aborted.
    pub timeout: Duration,
    /// Least time between the commit of one checkpoint and the trigger of the next.
    pub min_pause: Duration,
    /// Most checkpoints in progress at once; 0 is treated as 1.
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints tolerated before the job fails.
    pub tolerable_failed: u32,
}

impl From<&CheckpointingConfig> for CoordinatorConfig {
    fn from(config: &CheckpointingConfig) -> Self {
        Self {
            interval: config.interval,
            timeout: config.timeout,
            min_pause: config.min_pause,
            max_concurrent: config.max_concurrent,
            tolerable_failed: config.tolerable_failed,
        }
    }
}

/// One subtask of the job: which node (index into the job's nodes) and which parallel
/// instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    /// The node's index in the job's nodes.
    pub node: usize,
    /// The subtask of that node.
    pub subtask: SubtaskIndex,
}

impl std::fmt::Display for TaskRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} subtask {}", self.node, self.subtask)
    }
}

/// What one subtask reports with its acknowledgement, named as Flink's checkpoint
/// statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SubtaskStats {
    /// From the trigger to the subtask's start of the checkpoint (its first barrier,
    /// or the trigger message at a source).
    pub start_delay: Duration,
    /// From the first barrier to the last (zero with one input).
    pub alignment_duration: Duration,
    /// The synchronous phase: the guest's `snapshot-state` and the backend's snapshot.
    pub sync_duration: Duration,
    /// The asynchronous phase: serialising and writing.
    pub async_duration: Duration,
    /// Size of the subtask's whole state in this checkpoint, in bytes.
    pub state_size: u64,
    /// Bytes actually written for this checkpoint (less than `state_size` when
    /// incremental).
    pub checkpointed_size: u64,
    /// Bytes of records processed during alignment.
    pub processed_in_flight: u64,
    /// Bytes of in-flight records persisted as channel state (unaligned checkpoints).
    pub persisted_in_flight: u64,
    /// Whether the subtask took the checkpoint unaligned: its barrier overtook data
    /// in flight (Flink's `unalignedCheckpoint`).
    #[serde(default)]
    pub unaligned: bool,
    /// Fuel the guest spent in the synchronous phase, when fuel metering is on.
    pub sync_fuel: Option<u64>,
    /// From the trigger to the coordinator's receipt of this subtask's acknowledgement
    /// (Flink's per-subtask end-to-end duration).
    #[serde(default)]
    pub end_to_end: Duration,
}

/// One acknowledgement as the completed checkpoint keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubtaskAck {
    /// What the subtask reported; `None` for a task that had finished
    /// ([`CoordinatorState::on_task_finished`]): a restore must not run it again.
    pub stats: Option<SubtaskStats>,
    /// From the trigger to this acknowledgement (Flink's per-subtask end-to-end
    /// duration).
    pub end_to_end: Duration,
}

/// A checkpoint every task acknowledged. The caller writes its `_metadata` and then
/// reports the outcome with [`CoordinatorState::committed`] or
/// [`CoordinatorState::commit_failed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedCheckpoint {
    /// The checkpoint.
    pub id: CheckpointId,
    /// When it was triggered.
    pub triggered_at: Instant,
    /// From the trigger to the last acknowledgement.
    pub end_to_end: Duration,
    /// Every task's acknowledgement.
    pub acks: BTreeMap<TaskRef, SubtaskAck>,
}

/// Why a task declined a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DeclineReason {
    /// A newer checkpoint's barrier overtook this one during alignment.
    #[error("subsumed by a newer checkpoint during alignment")]
    Subsumed,
    /// The task is not running yet (still restoring) or is closing.
    #[error("the task is not ready")]
    NotReady,
    /// The task's input ended before the barrier came.
    #[error("the task's input ended")]
    InputEnded,
    /// The checkpoint failed in the task: the synchronous phase overran its limit or
    /// failed, or writing the state failed.
    #[error("{0}")]
    Failed(String),
}

impl DeclineReason {
    /// Whether the decline counts towards `tolerable-failed` (as Flink's
    /// `CheckpointFailureManager`: only a real failure does).
    pub fn counts(&self) -> bool {
        matches!(self, DeclineReason::Failed(_))
    }
}

/// Why the coordinator aborted a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AbortReason {
    /// A task declined it.
    #[error("declined by {task}: {reason}")]
    Declined {
        /// The task.
        task: TaskRef,
        /// Its reason.
        reason: DeclineReason,
    },
    /// It was not complete within the timeout.
    #[error("not complete after {after:?} (checkpointing.timeout)")]
    Expired {
        /// The timeout.
        after: Duration,
    },
    /// A newer checkpoint was committed first.
    #[error("subsumed by checkpoint {by}")]
    Subsumed {
        /// The newer checkpoint.
        by: CheckpointId,
    },
    /// Writing its `_metadata` failed.
    #[error("committing failed: {message}")]
    CommitFailed {
        /// What failed.
        message: String,
    },
}

impl AbortReason {
    /// Whether the abort counts towards `tolerable-failed`.
    pub fn counts(&self) -> bool {
        match self {
            AbortReason::Declined { reason, .. } => reason.counts(),
            AbortReason::Expired { .. } | AbortReason::CommitFailed { .. } => true,
            AbortReason::Subsumed { .. } => false,
        }
    }
}

/// More consecutive checkpoints failed than `tolerable-failed` allows; the job fails
/// over (and its restart strategy decides what comes next).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{consecutive} consecutive checkpoints failed, more than checkpointing.tolerable-failed = {tolerable}; the last, checkpoint {last_id}: {last}"
)]
pub struct TooManyFailedCheckpoints {
    /// Consecutive counted failures.
    pub consecutive: u32,
    /// The configured tolerance.
    pub tolerable: u32,
    /// The checkpoint that failed last.
    pub last_id: CheckpointId,
    /// Why it failed.
    pub last: AbortReason,
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The checkpoint is aborted: notify every task (`notify-checkpoint-aborted`),
    /// discard what it wrote, and count it in the statistics.
    Abort {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Why.
        reason: AbortReason,
    },
    /// Fail the job over.
    FailJob(TooManyFailedCheckpoints),
}

/// Why [`CoordinatorState::trigger`] did not start a checkpoint. None of these counts as
/// a failed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TriggerRefusal {
    /// The job is not running (restarting after a failure).
    #[error("the job is not running")]
    Suspended,
    /// Every task finished; there is nothing left to checkpoint.
    #[error("every task has finished")]
    NoTasks,
    /// As many checkpoints as allowed are in progress.
    #[error("{in_progress} checkpoints in progress, at most {max} allowed")]
    TooManyConcurrent {
        /// Checkpoints in progress.
        in_progress: usize,
        /// The limit (1 when `min-pause` is set).
        max: usize,
    },
    /// The last checkpoint ended less than `min-pause` ago.
    #[error("checkpointing.min-pause has not passed since the last checkpoint")]
    MinPause {
        /// When the pause is over.
        until: Instant,
    },
}

/// Why an acknowledgement was ignored. The caller discards the state the task wrote
/// for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgnoredAck {
    /// The checkpoint is not pending: aborted, expired, already complete, or never
    /// triggered.
    UnknownCheckpoint,
    /// The task is not one the checkpoint waits for.
    UnknownTask,
    /// The task already acknowledged this checkpoint.
    Duplicate,
}

/// The result of an acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// More acknowledgements are needed.
    Pending {
        /// How many.
        remaining: usize,
    },
    /// Every task acknowledged: write the `_metadata`, then call
    /// [`CoordinatorState::committed`] or [`CoordinatorState::commit_failed`].
    Complete(CompletedCheckpoint),
    /// Not counted.
    Ignored(IgnoredAck),
}

/// The counters the statistics and the REST API show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointCounts {
    /// Checkpoints triggered.
    pub triggered: u64,
    /// Checkpoints triggered and neither committed nor aborted yet.
    pub in_progress: usize,
    /// Checkpoints committed.
    pub completed: u64,
    /// Checkpoints aborted, for any reason.
    pub failed: u64,
}

/// Where a pending checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for acknowledgements.
    Acking,
    /// Every task acknowledged; the caller is writing `_metadata`.
    Committing,
}

#[derive(Clone, Debug)]
struct Pending {
    triggered_at: Instant,
    /// The tasks it waits for, fixed at the trigger.
    tasks: BTreeSet<TaskRef>,
    acks: BTreeMap<TaskRef, SubtaskAck>,
    phase: Phase,
}

/// The coordinator's bookkeeping. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct CoordinatorState {
    config: CoordinatorConfig,
    next_id: CheckpointId,
    tasks: BTreeSet<TaskRef>,
    pending: BTreeMap<CheckpointId, Pending>,
    /// `None` while the job is not running.
    running_since: Option<Instant>,
    last_trigger: Option<Instant>,
    last_commit: Option<Instant>,
    latest_committed: Option<CheckpointId>,
    consecutive_failures: u32,
    counts: CheckpointCounts,
}

impl CoordinatorState {
    /// A coordinator for a job whose tasks are `tasks`, running since `now`. The first
    /// checkpoint gets `next_id`: one more than the newest id ever used, across
    /// restarts (from storage), so that ids stay monotonic.
    pub fn new(
        config: CoordinatorConfig,
        next_id: CheckpointId,
        tasks: impl IntoIterator<Item = TaskRef>,
        now: Instant,
    ) -> Self {
        Self {
            config,
            next_id,
            tasks: tasks.into_iter().collect(),
            pending: BTreeMap::new(),
            running_since: Some(now),
            last_trigger: None,
            last_commit: None,
            latest_committed: None,
            consecutive_failures: 0,
            counts: CheckpointCounts::default(),
        }
    }

    /// The id the next checkpoint will get.
    pub fn next_id(&self) -> CheckpointId {
        self.next_id
    }

    /// The newest checkpoint committed by this coordinator.
    pub fn latest_committed(&self) -> Option<CheckpointId> {
        self.latest_committed
    }

    /// The counters.
    pub fn counts(&self) -> CheckpointCounts {
        CheckpointCounts {
            in_progress: self.pending.len(),
            ..self.counts
        }
    }

    /// Counted failures since the last committed checkpoint.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The checkpoints in progress, oldest first.
    pub fn in_progress(&self) -> impl Iterator<Item = CheckpointId> + '_ {
        self.pending.keys().copied()
    }

    fn max_concurrent(&self) -> usize {
        if self.config.min_pause > Duration::ZERO {
            return 1;
        }
        usize::try_from(self.config.max_concurrent.max(1)).unwrap_or(usize::MAX)
    }

    /// When the next periodic checkpoint is due: `interval` after the last trigger (or
    /// after the job started running), and not before `min-pause` after the last
    /// commit. `None` while no checkpoint may be triggered at all: the job is not
    /// running, no task is left, or `max-concurrent` checkpoints are in progress (the
    /// caller asks again after the next commit or abort). The time may be in the past:
    /// trigger at once.
    pub fn next_trigger_time(&self) -> Option<Instant> {
        let running_since = self.running_since?;
        if self.tasks.is_empty() || self.pending.len() >= self.max_concurrent() {
            return None;
        }
        let due = after(
            self.last_trigger.unwrap_or(running_since),
            self.config.interval,
        );
        let paused = self
            .last_commit
            .map(|end| after(end, self.config.min_pause));
        Some(paused.map_or(due, |paused| due.max(paused)))
    }

    /// Starts a checkpoint now, or says why not. The interval is the caller's schedule
    /// ([`next_trigger_time`](Self::next_trigger_time)) and is not checked here;
    /// `max-concurrent` and `min-pause` are.
    pub fn trigger(&mut self, now: Instant) -> Result<CheckpointId, TriggerRefusal> {
        self.trigger_at(now, true)
    }

    /// Triggers a savepoint at `now`: as [`trigger`](Self::trigger), but without the
    /// minimum pause, which is for periodic checkpoints (as Flink's savepoints).
    pub fn trigger_savepoint(&mut self, now: Instant) -> Result<CheckpointId, TriggerRefusal> {
        self.trigger_at(now, false)
    }

    fn trigger_at(
        &mut self,
        now: Instant,
        min_pause: bool,
    ) -> Result<CheckpointId, TriggerRefusal> {
        if self.running_since.is_none() {
            return Err(TriggerRefusal::Suspended);
        }
        if self.tasks.is_empty() {
            return Err(TriggerRefusal::NoTasks);
        }
        let max = self.max_concurrent();
        if self.pending.len() >= max {
            return Err(TriggerRefusal::TooManyConcurrent {
                in_progress: self.pending.len(),
                max,
            });
        }
        if let Some(until) = self
            .last_commit
            .map(|end| after(end, self.config.min_pause))
            && min_pause
            && now < until
        {
            return Err(TriggerRefusal::MinPause { until });
        }
        let id = self.next_id;
        self.next_id = CheckpointId(id.0.saturating_add(1));
        self.pending.insert(
            id,
            Pending {
                triggered_at: now,
                tasks: self.tasks.clone(),
                acks: BTreeMap::new(),
                phase: Phase::Acking,
            },
        );
        self.last_trigger = Some(now);
        self.counts.triggered += 1;
        Ok(id)
    }

    /// `task` acknowledged checkpoint `id` at `now` with `stats`.
    pub fn acknowledge(
        &mut self,
        id: CheckpointId,
        task: TaskRef,
        stats: SubtaskStats,
        now: Instant,
    ) -> AckOutcome {
        let Some(pending) = self.pending.get_mut(&id) else {
            return AckOutcome::Ignored(IgnoredAck::UnknownCheckpoint);
        };
        if pending.phase != Phase::Acking {
            return AckOutcome::Ignored(IgnoredAck::Duplicate);
        }
        if !pending.tasks.contains(&task) {
            return AckOutcome::Ignored(IgnoredAck::UnknownTask);
        }
        if pending.acks.contains_key(&task) {
            return AckOutcome::Ignored(IgnoredAck::Duplicate);
        }
        let end_to_end = now.saturating_duration_since(pending.triggered_at);
        pending.acks.insert(
            task,
            SubtaskAck {
                stats: Some(stats),
                end_to_end,
            },
        );
        Self::outcome(id, pending, now)
    }

    fn outcome(id: CheckpointId, pending: &mut Pending, now: Instant) -> AckOutcome {
        let remaining = pending.tasks.len() - pending.acks.len();
        if remaining > 0 {
            return AckOutcome::Pending { remaining };
        }
        pending.phase = Phase::Committing;
        AckOutcome::Complete(CompletedCheckpoint {
            id,
            triggered_at: pending.triggered_at,
            end_to_end: now.saturating_duration_since(pending.triggered_at),
            acks: pending.acks.clone(),
        })
    }

    /// The `_metadata` of `id` is written: the checkpoint is committed at `now`. Pending
    /// checkpoints older than it are subsumed; notify the tasks of the commit
    /// (`notify-checkpoint-complete`) after carrying out the returned aborts.
    pub fn committed(
        &mut self,
        id: CheckpointId,
        now: Instant,
    ) -> Result<Vec<Decision>, NotCommitting> {
        match self.pending.get(&id) {
            Some(pending) if pending.phase == Phase::Committing => {}
            _ => return Err(NotCommitting(id)),
        }
        self.pending.remove(&id);
        self.counts.completed += 1;
        self.last_commit = Some(now);
        if self.latest_committed.is_none_or(|latest| id > latest) {
            self.latest_committed = Some(id);
            self.consecutive_failures = 0;
        }
        // A checkpoint whose `_metadata` is being written needs no task any more: let it
        // commit on its own.
        let subsumed: Vec<CheckpointId> = self
            .pending
            .range(..id)
            .filter(|(_, p)| p.phase == Phase::Acking)
            .map(|(&older, _)| older)
            .collect();
        let mut decisions = Vec::new();
        for older in subsumed {
            decisions.extend(self.abort(older, AbortReason::Subsumed { by: id }));
        }
        Ok(decisions)
    }

    /// Writing the `_metadata` of `id` failed: the checkpoint is aborted and counted.
    pub fn commit_failed(
        &mut self,
        id: CheckpointId,
        message: String,
    ) -> Result<Vec<Decision>, NotCommitting> {
        match self.pending.get(&id) {
            Some(pending) if pending.phase == Phase::Committing => {}
            _ => return Err(NotCommitting(id)),
        }
        Ok(self.abort(id, AbortReason::CommitFailed { message }))
    }

    /// `task` declined checkpoint `id`: abort it. A decline of a checkpoint that is not
    /// waiting for acknowledgements, or from a task it does not wait for, is ignored.
    pub fn decline(
        &mut self,
        id: CheckpointId,
        task: TaskRef,
        reason: DeclineReason,
    ) -> Vec<Decision> {
        match self.pending.get(&id) {
            Some(p) if p.phase == Phase::Acking && p.tasks.contains(&task) => {
                self.abort(id, AbortReason::Declined { task, reason })
            }
            _ => Vec::new(),
        }
    }

    /// Aborts every checkpoint still waiting for acknowledgements `timeout` after its
    /// trigger. Checkpoints being committed do not expire: their fate is the write's.
    pub fn expire(&mut self, now: Instant) -> Vec<Decision> {
        let timeout = self.config.timeout;
        let expired: Vec<CheckpointId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.phase == Phase::Acking && now >= after(p.triggered_at, timeout))
            .map(|(&id, _)| id)
            .collect();
        let mut decisions = Vec::new();
        for id in expired {
            decisions.extend(self.abort(id, AbortReason::Expired { after: timeout }));
        }
        decisions
    }

    /// When the oldest checkpoint waiting for acknowledgements expires: the caller's
    /// next deadline for [`expire`](Self::expire).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| p.phase == Phase::Acking)
            .map(|p| after(p.triggered_at, self.config.timeout))
            .min()
    }

    /// A task failed and the job fails over: every checkpoint waiting for
    /// acknowledgements is aborted without counting and without notifying (the tasks
    /// are gone), and no checkpoint is triggered until [`resume`](Self::resume).
    /// Returns the aborted checkpoints. Checkpoints being committed stay: they need no
    /// task, and a restore must wait for their outcome.
    pub fn on_task_failure(&mut self) -> Vec<CheckpointId> {
        self.running_since = None;
        let aborted: Vec<CheckpointId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.phase == Phase::Acking)
            .map(|(&id, _)| id)
            .collect();
        for id in &aborted {
            self.pending.remove(id);
            self.counts.failed += 1;
        }
        aborted
    }

    /// The job runs again since `now` (after a restart): the next checkpoint is due
    /// `interval` from now.
    pub fn resume(&mut self, now: Instant) {
        self.running_since = Some(now);
        self.last_trigger = None;
    }

    /// `task` finished (its input ended) at `now`: later checkpoints do not wait for
    /// it, and pending ones count it as acknowledged without statistics (everything it
    /// sent is before its end of input, which downstream counts as every barrier).
    /// Returns the checkpoints this completes. Their `_metadata` must record the task
    /// as finished, so that a restore does not run it again (Flink's finished
    /// operator state).
    pub fn on_task_finished(&mut self, task: TaskRef, now: Instant) -> Vec<CompletedCheckpoint> {
        self.tasks.remove(&task);
        let mut completed = Vec::new();
        for (&id, pending) in &mut self.pending {
            if pending.phase != Phase::Acking
                || !pending.tasks.contains(&task)
                || pending.acks.contains_key(&task)
            {
                continue;
            }
            let end_to_end = now.saturating_duration_since(pending.triggered_at);
            pending.acks.insert(
                task,
                SubtaskAck {
                    stats: None,
                    end_to_end,
                },
            );
            if let AckOutcome::Complete(checkpoint) = Self::outcome(id, pending, now) {
                completed.push(checkpoint);
            }
        }
        completed
    }

    /// Removes `id` and counts it as failed; returns the abort and, when the failure
    /// is one too many, the job's failure.
    fn abort(&mut self, id: CheckpointId, reason: AbortReason) -> Vec<Decision> {
        if self.pending.remove(&id).is_none() {
            return Vec::new();
        }
        self.counts.failed += 1;
        let mut decisions = Vec::new();
        let newer = self.latest_committed.is_none_or(|latest| id > latest);
        if reason.counts() && newer {
            self.consecutive_failures += 1;
            if self.consecutive_failures > self.config.tolerable_failed {
                decisions.push(Decision::FailJob(TooManyFailedCheckpoints {
                    consecutive: self.consecutive_failures,
                    tolerable: self.config.tolerable_failed,
                    last_id: id,
                    last: reason.clone(),
                }));
                self.consecutive_failures = 0;
            }
        }
        decisions.insert(
            0,
            Decision::Abort {
                checkpoint: id,
                reason,
            },
        );
        decisions
    }
}

/// [`CoordinatorState::committed`] or [`CoordinatorState::commit_failed`] was called
/// for a checkpoint that is not waiting for its commit: a bug in the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("checkpoint {0} is not waiting for its commit (a bug in the host)")]
pub struct NotCommitting(pub CheckpointId);

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> CoordinatorConfig {
        CoordinatorConfig {
            interval: 10 * SECOND,
            timeout: 60 * SECOND,
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failed: 0,
        }
    }

    fn task(node: usize, subtask: u32) -> TaskRef {
        TaskRef {
            node,
            subtask: SubtaskIndex(subtask),
        }
    }

    fn tasks() -> Vec<TaskRef> {
        vec![task(0, 0), task(1, 0), task(1, 1)]
    }

    fn coordinator(config: CoordinatorConfig, t0: Instant) -> CoordinatorState {
        CoordinatorState::new(config, CheckpointId(1), tasks(), t0)
    }

    fn ack_all(c: &mut CoordinatorState, id: CheckpointId, at: Instant) -> CompletedCheckpoint {
        let mut last = None;
        for t in tasks() {
            last = Some(c.acknowledge(id, t, SubtaskStats::default(), at));
        }
        match last {
            Some(AckOutcome::Complete(done)) => done,
            other => panic!("expected completion, got {other:?}"),
        }
    }

    fn complete(c: &mut CoordinatorState, id: CheckpointId, at: Instant) -> Vec<Decision> {
        ack_all(c, id, at);
        c.committed(id, at).expect("committing")
    }

    fn failed() -> DeclineReason {
        DeclineReason::Failed("sync phase overran".into())
    }

    #[test]
    fn the_first_checkpoint_is_due_one_interval_after_the_start() {
        let t0 = Instant::now();
        let c = coordinator(config(), t0);
        assert_eq!(c.next_trigger_time(), Some(t0 + 10 * SECOND));
    }

    #[test]
    fn triggering_hands_out_consecutive_ids_from_the_given_start() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrent = 3;
        let mut c = CoordinatorState::new(cfg, CheckpointId(42), tasks(), t0);
        assert_eq!(c.trigger(t0), Ok(CheckpointId(42)));
        assert_eq!(c.trigger(t0), Ok(CheckpointId(43)));
        assert_eq!(c.next_id(), CheckpointId(44));
    }

    #[test]
    fn the_interval_is_measured_between_trigger_times() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0 + 10 * SECOND).expect("trigger");
        complete(&mut c, id, t0 + 17 * SECOND);
        assert_eq!(c.next_trigger_time(), Some(t0 + 20 * SECOND));
    }

    #[test]
    fn no_trigger_is_due_while_max_concurrent_checkpoints_are_in_progress() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        c.trigger(t0).expect("trigger");
        assert_eq!(c.next_trigger_time(), None);
        assert_eq!(
            c.trigger(t0 + SECOND),
            Err(TriggerRefusal::TooManyConcurrent {
                in_progress: 1,
                max: 1
            })
        );
    }

    #[test]
    fn max_concurrent_allows_that_many_checkpoints_at_once() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrent = 2;
        let mut c = coordinator(cfg, t0);
        assert!(c.trigger(t0).is_ok());
        assert!(c.next_trigger_time().is_some());
        assert!(c.trigger(t0).is_ok());
        assert!(matches!(
            c.trigger(t0),
            Err(TriggerRefusal::TooManyConcurrent { max: 2, .. })
        ));
    }

    #[test]
    fn min_pause_delays_the_next_trigger_after_a_commit() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.min_pause = 8 * SECOND;
        let mut c = coordinator(cfg, t0);
        let id = c.trigger(t0).expect("trigger");
        complete(&mut c, id, t0 + 5 * SECOND);
        assert_eq!(c.next_trigger_time(), Some(t0 + 13 * SECOND));
        assert_eq!(
            c.trigger(t0 + 11 * SECOND),
            Err(TriggerRefusal::MinPause {
                until: t0 + 13 * SECOND
            })
        );
        assert!(c.trigger(t0 + 13 * SECOND).is_ok());
    }

    #[test]
    fn a_min_pause_allows_only_one_checkpoint_at_a_time() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.min_pause = SECOND;
        cfg.max_concurrent = 4;
        let mut c = coordinator(cfg, t0);
        c.trigger(t0).expect("trigger");
        assert!(matches!(
            c.trigger(t0),
            Err(TriggerRefusal::TooManyConcurrent { max: 1, .. })
        ));
    }

    #[test]
    fn a_checkpoint_is_complete_when_every_task_acknowledged() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let stats = SubtaskStats::default();
        assert_eq!(
            c.acknowledge(id, task(0, 0), stats.clone(), t0 + SECOND),
            AckOutcome::Pending { remaining: 2 }
        );
        assert_eq!(
            c.acknowledge(id, task(1, 1), stats.clone(), t0 + 2 * SECOND),
            AckOutcome::Pending { remaining: 1 }
        );
        let AckOutcome::Complete(done) = c.acknowledge(id, task(1, 0), stats, t0 + 3 * SECOND)
        else {
            panic!("expected completion");
        };
        assert_eq!(done.id, id);
        assert_eq!(done.acks.len(), 3);
    }

    #[test]
    fn the_completed_checkpoint_carries_every_subtasks_stats_and_durations() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let stats = SubtaskStats {
            sync_duration: Duration::from_millis(3),
            state_size: 1024,
            sync_fuel: Some(7),
            ..SubtaskStats::default()
        };
        let _ = c.acknowledge(id, task(0, 0), stats.clone(), t0 + SECOND);
        let _ = c.acknowledge(id, task(1, 0), SubtaskStats::default(), t0 + 2 * SECOND);
        let AckOutcome::Complete(done) =
            c.acknowledge(id, task(1, 1), SubtaskStats::default(), t0 + 4 * SECOND)
        else {
            panic!("expected completion");
        };
        assert_eq!(done.end_to_end, 4 * SECOND, "trigger to the last ack");
        assert_eq!(done.triggered_at, t0);
        let first = &done.acks[&task(0, 0)];
        assert_eq!(first.stats.as_ref(), Some(&stats));
        assert_eq!(first.end_to_end, SECOND);
    }

    #[test]
    fn a_duplicate_acknowledgement_is_ignored() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let _ = c.acknowledge(id, task(0, 0), SubtaskStats::default(), t0);
        assert_eq!(
            c.acknowledge(id, task(0, 0), SubtaskStats::default(), t0),
            AckOutcome::Ignored(IgnoredAck::Duplicate)
        );
    }

    #[test]
    fn an_acknowledgement_from_an_unknown_task_is_ignored() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        assert_eq!(
            c.acknowledge(id, task(9, 0), SubtaskStats::default(), t0),
            AckOutcome::Ignored(IgnoredAck::UnknownTask)
        );
    }

    #[test]
    fn a_late_acknowledgement_of_an_aborted_checkpoint_is_ignored() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let _ = c.decline(id, task(1, 0), DeclineReason::NotReady);
        assert_eq!(
            c.acknowledge(id, task(0, 0), SubtaskStats::default(), t0),
            AckOutcome::Ignored(IgnoredAck::UnknownCheckpoint)
        );
    }

    #[test]
    fn an_acknowledgement_of_a_never_triggered_checkpoint_is_ignored() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        assert_eq!(
            c.acknowledge(CheckpointId(7), task(0, 0), SubtaskStats::default(), t0),
            AckOutcome::Ignored(IgnoredAck::UnknownCheckpoint)
        );
    }

    #[test]
    fn a_complete_checkpoint_stays_in_progress_until_committed() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        ack_all(&mut c, id, t0);
        assert_eq!(c.counts().in_progress, 1);
        assert_eq!(c.counts().completed, 0);
        assert_eq!(c.next_trigger_time(), None);
        assert_eq!(c.committed(id, t0), Ok(vec![]));
        assert_eq!(c.counts().in_progress, 0);
        assert_eq!(c.counts().completed, 1);
        assert_eq!(c.latest_committed(), Some(id));
    }

    #[test]
    fn committing_a_checkpoint_that_is_not_complete_is_a_host_bug() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        assert_eq!(c.committed(id, t0), Err(NotCommitting(id)));
        assert_eq!(
            c.commit_failed(CheckpointId(99), "disk full".into()),
            Err(NotCommitting(CheckpointId(99)))
        );
    }

    #[test]
    fn a_failed_commit_aborts_the_checkpoint_and_counts() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.tolerable_failed = 1;
        let mut c = coordinator(cfg, t0);
        let id = c.trigger(t0).expect("trigger");
        ack_all(&mut c, id, t0);
        let decisions = c.commit_failed(id, "disk full".into()).expect("committing");
        assert_eq!(
            decisions,
            [Decision::Abort {
                checkpoint: id,
                reason: AbortReason::CommitFailed {
                    message: "disk full".into()
                }
            }]
        );
        assert_eq!(c.consecutive_failures(), 1);
        assert_eq!(c.counts().failed, 1);
    }

    #[test]
    fn a_declined_checkpoint_is_aborted_and_counted() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.tolerable_failed = 3;
        let mut c = coordinator(cfg, t0);
        let id = c.trigger(t0).expect("trigger");
        let decisions = c.decline(id, task(1, 1), failed());
        assert_eq!(
            decisions,
            [Decision::Abort {
                checkpoint: id,
                reason: AbortReason::Declined {
                    task: task(1, 1),
                    reason: failed()
                }
            }]
        );
        assert_eq!(c.consecutive_failures(), 1);
        assert_eq!(c.counts().failed, 1);
        assert_eq!(c.counts().in_progress, 0);
    }

    #[test]
    fn a_decline_for_subsumption_or_not_ready_is_aborted_but_not_counted() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrent = 3;
        let mut c = coordinator(cfg, t0);
        for reason in [
            DeclineReason::Subsumed,
            DeclineReason::NotReady,
            DeclineReason::InputEnded,
        ] {
            let id = c.trigger(t0).expect("trigger");
            let decisions = c.decline(id, task(0, 0), reason);
            assert!(matches!(decisions.as_slice(), [Decision::Abort { .. }]));
        }
        assert_eq!(c.consecutive_failures(), 0);
        assert_eq!(c.counts().failed, 3);
    }

    #[test]
    fn a_second_decline_of_the_same_checkpoint_is_ignored() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.tolerable_failed = 5;
        let mut c = coordinator(cfg, t0);
        let id = c.trigger(t0).expect("trigger");
        let _ = c.decline(id, task(0, 0), failed());
        assert_eq!(c.decline(id, task(1, 0), failed()), []);
        assert_eq!(c.consecutive_failures(), 1);
    }

    #[test]
    fn a_decline_from_a_task_the_checkpoint_does_not_wait_for_is_ignored() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        assert_eq!(c.decline(id, task(5, 0), failed()), []);
        assert_eq!(c.counts().in_progress, 1);
    }

    #[test]
    fn a_checkpoint_that_times_out_is_aborted_and_counted() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.tolerable_failed = 2;
        let mut c = coordinator(cfg, t0);
        let id = c.trigger(t0).expect("trigger");
        assert_eq!(c.next_expiry(), Some(t0 + 60 * SECOND));
        assert_eq!(c.expire(t0 + 59 * SECOND), []);
        assert_eq!(
            c.expire(t0 + 60 * SECOND),
            [Decision::Abort {
                checkpoint: id,
                reason: AbortReason::Expired { after: 60 * SECOND }
            }]
        );
        assert_eq!(c.consecutive_failures(), 1);
        assert_eq!(c.counts().failed, 1);
        assert_eq!(c.next_expiry(), None);
    }

    #[test]
    fn a_checkpoint_being_committed_does_not_expire() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        ack_all(&mut c, id, t0 + SECOND);
        assert_eq!(c.next_expiry(), None);
        assert_eq!(c.expire(t0 + 600 * SECOND), []);
        assert!(c.committed(id, t0 + 600 * SECOND).is_ok());
    }

    #[test]
    fn one_failure_more_than_tolerable_fails_the_job() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.tolerable_failed = 1;
        let mut c = coordinator(cfg, t0);
        let first = c.trigger(t0).expect("trigger");
        assert_eq!(c.decline(first, task(0, 0), failed()).len(), 1);
        let second = c.trigger(t0).expect("trigger");
        let decisions = c.decline(second, task(0, 0), failed());
        assert!(matches!(
            decisions.as_slice(),
            [
                Decision::Abort { .. },
                Decision::FailJob(TooManyFailedCheckpoints {
                    consecutive: 2,
                    tolerable: 1,
                    ..
                })
            ]
        ));
    }

    #[test]
    fn with_zero_tolerable_failures_the_first_failure_fails_the_job() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let decisions = c.expire(t0 + 61 * SECOND);
        assert!(matches!(
            decisions.as_slice(),
            [Decision::Abort { checkpoint, .. }, Decision::FailJob(_)] if *checkpoint == id
        ));
    }

    #[test]
    fn the_job_failure_names_the_last_failed_checkpoint_and_why() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let decisions = c.decline(id, task(1, 0), failed());
        let Some(Decision::FailJob(error)) = decisions.last() else {
            panic!("expected a job failure");
        };
        let message = error.to_string();
        assert!(message.contains("tolerable-failed = 0"), "{message}");
        assert!(message.contains("checkpoint 1"), "{message}");
        assert!(message.contains("sync phase overran"), "{message}");
    }

    #[test]
    fn a_committed_checkpoint_resets_the_consecutive_failures() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.tolerable_failed = 1;
        let mut c = coordinator(cfg, t0);
        let first = c.trigger(t0).expect("trigger");
        let _ = c.decline(first, task(0, 0), failed());
        assert_eq!(c.consecutive_failures(), 1);
        let second = c.trigger(t0).expect("trigger");
        complete(&mut c, second, t0);
        assert_eq!(c.consecutive_failures(), 0);
        let third = c.trigger(t0).expect("trigger");
        assert_eq!(c.decline(third, task(0, 0), failed()).len(), 1, "tolerated");
    }

    #[test]
    fn the_failure_counter_restarts_after_failing_the_job() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let _ = c.decline(id, task(0, 0), failed());
        assert_eq!(c.consecutive_failures(), 0);
    }

    #[test]
    fn a_failure_older_than_the_latest_commit_does_not_count() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrent = 2;
        let mut c = coordinator(cfg, t0);
        let older = c.trigger(t0).expect("trigger");
        let newer = c.trigger(t0).expect("trigger");
        ack_all(&mut c, older, t0);
        complete(&mut c, newer, t0);
        // `older` was being committed, so it was not subsumed; its commit fails late.
        let decisions = c
            .commit_failed(older, "slow disk".into())
            .expect("committing");
        assert_eq!(decisions.len(), 1);
        assert_eq!(c.consecutive_failures(), 0);
    }

    #[test]
    fn committing_a_checkpoint_subsumes_older_pending_ones() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrent = 3;
        let mut c = coordinator(cfg, t0);
        let one = c.trigger(t0).expect("trigger");
        let two = c.trigger(t0).expect("trigger");
        let three = c.trigger(t0).expect("trigger");
        let decisions = complete(&mut c, two, t0);
        assert_eq!(
            decisions,
            [Decision::Abort {
                checkpoint: one,
                reason: AbortReason::Subsumed { by: two }
            }]
        );
        assert_eq!(c.in_progress().collect::<Vec<_>>(), [three]);
        assert_eq!(c.consecutive_failures(), 0, "subsumption is not a failure");
        assert_eq!(c.counts().failed, 1);
    }

    #[test]
    fn a_task_failure_aborts_every_pending_checkpoint_without_counting() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrent = 2;
        let mut c = coordinator(cfg, t0);
        let one = c.trigger(t0).expect("trigger");
        let two = c.trigger(t0).expect("trigger");
        assert_eq!(c.on_task_failure(), [one, two]);
        assert_eq!(c.consecutive_failures(), 0);
        assert_eq!(c.counts().in_progress, 0);
        assert_eq!(c.counts().failed, 2);
    }

    #[test]
    fn a_task_failure_keeps_a_checkpoint_being_committed() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        ack_all(&mut c, id, t0);
        assert_eq!(c.on_task_failure(), []);
        assert!(c.committed(id, t0).is_ok());
    }

    #[test]
    fn no_checkpoint_is_triggered_between_a_task_failure_and_the_resume() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let _ = c.on_task_failure();
        assert_eq!(c.next_trigger_time(), None);
        assert_eq!(c.trigger(t0), Err(TriggerRefusal::Suspended));
        c.resume(t0 + 30 * SECOND);
        assert_eq!(c.next_trigger_time(), Some(t0 + 40 * SECOND));
    }

    #[test]
    fn ids_keep_growing_across_a_failover() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let first = c.trigger(t0).expect("trigger");
        let _ = c.on_task_failure();
        c.resume(t0);
        let second = c.trigger(t0).expect("trigger");
        assert!(second > first);
    }

    #[test]
    fn a_finished_task_counts_as_acknowledged_for_pending_checkpoints() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        let id = c.trigger(t0).expect("trigger");
        let _ = c.acknowledge(id, task(1, 0), SubtaskStats::default(), t0);
        let _ = c.acknowledge(id, task(1, 1), SubtaskStats::default(), t0);
        let completed = c.on_task_finished(task(0, 0), t0 + SECOND);
        assert_eq!(completed.len(), 1);
        assert_eq!(completed[0].acks[&task(0, 0)].stats, None);
    }

    #[test]
    fn later_checkpoints_do_not_wait_for_a_finished_task() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        assert_eq!(c.on_task_finished(task(0, 0), t0), []);
        let id = c.trigger(t0).expect("trigger");
        let _ = c.acknowledge(id, task(1, 0), SubtaskStats::default(), t0);
        assert!(matches!(
            c.acknowledge(id, task(1, 1), SubtaskStats::default(), t0),
            AckOutcome::Complete(_)
        ));
    }

    #[test]
    fn when_every_task_finished_no_checkpoint_is_triggered() {
        let t0 = Instant::now();
        let mut c = coordinator(config(), t0);
        for t in tasks() {
            let _ = c.on_task_finished(t, t0);
        }
        assert_eq!(c.next_trigger_time(), None);
        assert_eq!(c.trigger(t0), Err(TriggerRefusal::NoTasks));
    }

    #[test]
    fn the_counters_follow_triggers_commits_and_failures() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.max_concurrent = 3;
        cfg.tolerable_failed = 10;
        let mut c = coordinator(cfg, t0);
        let one = c.trigger(t0).expect("trigger");
        let two = c.trigger(t0).expect("trigger");
        let _three = c.trigger(t0).expect("trigger");
        let _ = c.decline(one, task(0, 0), failed());
        complete(&mut c, two, t0);
        assert_eq!(
            c.counts(),
            CheckpointCounts {
                triggered: 3,
                in_progress: 1,
                completed: 1,
                failed: 1
            }
        );
    }

    #[test]
    fn the_config_comes_from_the_job_files_checkpointing_section() {
        let job = CheckpointingConfig {
            interval: 2 * SECOND,
            mode: crate::job::CheckpointMode::ExactlyOnce,
            timeout: 600 * SECOND,
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failed: 4,
            unaligned: false,
            recover_without_channel_state: None,
            aligned_timeout: Duration::ZERO,
            retention: crate::job::Retention::RetainOnCancellation,
            num_retained: 3,
            dir: crate::job::StorageUrl::File("/tmp".into()),
            savepoint_dir: None,
            s3: crate::job::S3Settings::default(),
        };
        let cfg = CoordinatorConfig::from(&job);
        assert_eq!(cfg.interval, 2 * SECOND);
        assert_eq!(cfg.timeout, 600 * SECOND);
        assert_eq!(cfg.tolerable_failed, 4);
    }

    #[test]
    fn an_enormous_timeout_means_never_rather_than_a_panic() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.timeout = Duration::MAX;
        cfg.interval = Duration::MAX;
        cfg.min_pause = Duration::MAX;
        let mut c = coordinator(cfg, t0);
        assert!(c.next_trigger_time().is_some_and(|t| t > t0));
        let id = c.trigger(t0).expect("trigger");
        assert_eq!(c.expire(t0 + 1000 * SECOND), []);
        complete(&mut c, id, t0);
        assert!(matches!(
            c.trigger(t0 + SECOND),
            Err(TriggerRefusal::MinPause { .. })
        ));
    }

    #[test]
    fn subtask_stats_are_stored_with_kebab_case_names() {
        let text = serde_json::to_string(&SubtaskStats::default()).expect("serialise");
        assert!(text.contains("\"alignment-duration\""), "{text}");
    }
}
