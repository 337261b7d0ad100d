//! Barrier alignment for one subtask with several input channels: which channels to
//! hold back, when to snapshot, whether the snapshot is aligned or unaligned, and which
//! in-flight data becomes channel state.
//!
//! The [`Aligner`] is driven by the subtask loop. Every barrier comes twice: first
//! *announced*, from the channel's priority lane, as soon as the producer sent it; then
//! *reached*, once the subtask consumed every item the producer sent before it. The loop
//! reports both, every channel that closes, every abort and the clock's ticks, performs
//! the [`BarrierAction`]s it gets back in order, and before reading asks
//! [`Aligner::is_blocked`] which channels to leave alone and [`Aligner::records`]
//! whether a batch it consumed belongs to a checkpoint's channel state. It owns no
//! channel and reads no clock: time comes in as arguments.
//!
//! Exactly-once, aligned (Flink's `SingleCheckpointBarrierHandler`): the first barrier
//! of checkpoint *n* reached starts its alignment; each channel that reached *n* is
//! blocked, so its later records stay in its bounded queue (backpressure) while the
//! others are read; when every open channel reached *n* the subtask snapshots and
//! everything is unblocked. A newer checkpoint that starts subsumes an unfinished one.
//!
//! Exactly-once, unaligned: a checkpoint whose barrier says so (`unaligned_after` of
//! zero), or whose aligned phase ran past `unaligned_after` since its trigger (Flink's
//! aligned-checkpoint timeout, checked on every announcement, reach and tick), is
//! snapshotted at once, on the first barrier announced, and nothing is blocked. Its
//! channel state is, per channel, everything the producer sent before the barrier that
//! the subtask had not consumed at the snapshot: on a channel whose barrier was already
//! announced that is what is queued before it ([`BarrierAction::Capture`]); on one
//! whose barrier is still to come it is every batch consumed from then on
//! ([`Aligner::records`]) and then, once the barrier is announced, what is queued before
//! it. A channel that had reached the barrier owes nothing. When every open channel
//! is settled, the channel state is complete ([`BarrierAction::ChannelStateDone`]).
//!
//! At-least-once (Flink's `CheckpointBarrierTracker`): nothing is ever blocked; several
//! checkpoints are tracked at once and each is snapshotted when its barrier was reached
//! on every open channel. A completed checkpoint drops the older incomplete ones.
//!
//! A channel whose data ended still delivers barriers (its producer outlives its end of
//! input until the job's final checkpoint), so only a *closed* channel — its producer
//! gone — counts as having delivered every barrier, in every mode.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::job::CheckpointMode;
use crate::runtime::CheckpointId;

/// How many checkpoints are tracked at once. A channel that never delivers a barrier
/// would otherwise grow the list without bound; 50 is Flink's
/// `CheckpointBarrierTracker.MAX_CHECKPOINTS_TO_TRACK`, far above any useful
/// `max-concurrent`.
pub const MAX_TRACKED: usize = 50;

/// Whether the aligner blocks channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignMode {
    /// Block channels that reached the barrier until all have (or overtake the data,
    /// unaligned): state and output reflect every record exactly once.
    ExactlyOnce,
    /// Never block: snapshot when the barrier has come on every channel; records after
    /// a barrier may be in the snapshot and are seen again after recovery.
    AtLeastOnce,
}

impl From<CheckpointMode> for AlignMode {
    fn from(mode: CheckpointMode) -> Self {
        match mode {
            CheckpointMode::ExactlyOnce => AlignMode::ExactlyOnce,
            CheckpointMode::AtLeastOnce => AlignMode::AtLeastOnce,
        }
    }
}

/// What the subtask must do, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierAction {
    /// The checkpoint starts here now: its alignment (the first barrier reached), or
    /// its unaligned snapshot. The caller notes the time, and counts the bytes it
    /// processes until the snapshot.
    Started(CheckpointId),
    /// Take the snapshot and send the barrier downstream now, before reading anything
    /// else. With `unaligned`, the barrier overtook data still in flight, which becomes
    /// channel state: the snapshot's acknowledgement waits for
    /// [`BarrierAction::ChannelStateDone`].
    Snapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Whether it was taken before every channel reached the barrier.
        unaligned: bool,
    },
    /// Copy what `channel` holds before its barrier of `checkpoint` into the
    /// checkpoint's channel state: the in-flight data the barrier overtook.
    Capture {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The channel.
        channel: usize,
    },
    /// Every open channel's in-flight data of this unaligned checkpoint is captured:
    /// acknowledge the snapshot with its channel state.
    ChannelStateDone(CheckpointId),
    /// This checkpoint can no longer complete here, because a newer one overtook it:
    /// decline it to the coordinator as subsumed (a decline that is not counted as a
    /// failure), and drop its channel state.
    Abort {
        /// The checkpoint given up.
        checkpoint: CheckpointId,
        /// The newer checkpoint that overtook it.
        subsumed_by: CheckpointId,
    },
}

/// Where one channel stands in one checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// Nothing of the barrier yet.
    Waiting,
    /// The barrier was announced; data before it is still queued.
    Announced,
    /// The subtask consumed everything before the barrier.
    Reached,
    /// Unaligned: the barrier is still to come, and every batch consumed from the
    /// channel belongs to the channel state.
    Recording,
    /// Unaligned: the in-flight data before the barrier is captured.
    Captured,
}

/// How far a checkpoint got here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Known (a barrier was announced or reached), nothing done yet.
    Pending,
    /// Aligning: a barrier was reached.
    Aligning,
    /// Snapshotted unaligned; channel state still being captured.
    Capturing,
}

/// One checkpoint whose barriers have started to arrive.
#[derive(Clone, Debug)]
struct Tracked {
    checkpoint: CheckpointId,
    channels: Vec<Progress>,
    phase: Phase,
    /// When it turns unaligned; `None` never (or at-least-once).
    deadline: Option<Instant>,
}

impl Tracked {
    fn settled(&self, open: &[bool]) -> bool {
        self.channels
            .iter()
            .zip(open)
            .all(|(p, &open)| !open || matches!(p, Progress::Reached | Progress::Captured))
    }

    fn all_reached(&self, open: &[bool]) -> bool {
        self.channels
            .iter()
            .zip(open)
            .all(|(p, &open)| !open || *p == Progress::Reached)
    }
}

/// Barrier alignment state of one subtask. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Aligner {
    mode: AlignMode,
    /// Per channel: whether it is still open (its producer is there).
    open: Vec<bool>,
    /// The newest checkpoint that started or was aborted; barriers of older or equal
    /// checkpoints that are not tracked any more are stale and ignored.
    latest: Option<CheckpointId>,
    /// The checkpoints being tracked, oldest first, ids increasing. Exactly-once has
    /// at most one started among them.
    tracked: VecDeque<Tracked>,
}

impl Aligner {
    /// An aligner for a subtask with `channels` input channels, all open.
    pub fn new(channels: usize, mode: AlignMode) -> Self {
        Self {
            mode,
            open: vec![true; channels],
            latest: None,
            tracked: VecDeque::new(),
        }
    }

    /// The mode this aligner was made with.
    pub fn mode(&self) -> AlignMode {
        self.mode
    }

    /// The entry of `checkpoint`, made when it is new; `None` when it is stale.
    fn entry(&mut self, checkpoint: CheckpointId) -> Option<usize> {
        if let Some(at) = self.tracked.iter().position(|t| t.checkpoint == checkpoint) {
            return Some(at);
        }
        if self.latest.is_some_and(|latest| checkpoint <= latest) {
            return None;
        }
        let at = self
            .tracked
            .iter()
            .position(|t| t.checkpoint > checkpoint)
            .unwrap_or(self.tracked.len());
        self.tracked.insert(
            at,
            Tracked {
                checkpoint,
                channels: vec![Progress::Waiting; self.open.len()],
                phase: Phase::Pending,
                deadline: None,
            },
        );
        // Announced checkpoints that never start (their coordinator's abort is what
        // removes them) are bounded like tracked ones.
        if self.tracked.len() > MAX_TRACKED
            && let Some(oldest) = self.tracked.iter().position(|t| t.phase == Phase::Pending)
            && oldest != at
        {
            self.tracked.remove(oldest);
            return self.tracked.iter().position(|t| t.checkpoint == checkpoint);
        }
        Some(at)
    }

    /// The barrier of `checkpoint` was announced on `channel`'s priority lane, sent
    /// `since_trigger` after the checkpoint's trigger; `unaligned_after` is the
    /// barrier's own setting. Barriers of stale checkpoints and of closed or unknown
    /// channels are ignored.
    #[must_use = "the subtask must perform the actions"]
    pub fn on_announced(
        &mut self,
        channel: usize,
        checkpoint: CheckpointId,
        unaligned_after: Option<Duration>,
        since_trigger: Duration,
        now: Instant,
    ) -> Vec<BarrierAction> {
        if self.mode == AlignMode::AtLeastOnce || !self.is_open(channel) {
            return Vec::new();
        }
        // An older checkpoint whose aligned phase ran out turns unaligned first.
        let mut actions = self.on_tick(now);
        let Some(at) = self.entry(checkpoint) else {
            return actions;
        };
        let tracked = &mut self.tracked[at];
        if tracked.deadline.is_none()
            && let Some(after) = unaligned_after
        {
            tracked.deadline = Some(now + after.saturating_sub(since_trigger));
        }

        match tracked.channels[channel] {
            Progress::Waiting => tracked.channels[channel] = Progress::Announced,
            Progress::Recording => {
                tracked.channels[channel] = Progress::Captured;
                actions.push(BarrierAction::Capture {
                    checkpoint,
                    channel,
                });
            }
            Progress::Announced | Progress::Reached | Progress::Captured => return actions,
        }
        if tracked.phase != Phase::Capturing && tracked.deadline.is_some_and(|d| d <= now) {
            actions.extend(self.go_unaligned(at));
        } else {
            actions.extend(self.finish_capture(checkpoint));
        }
        actions
    }

    /// `channel`'s barrier of `checkpoint` was reached: everything sent before it was
    /// consumed. Returns what the subtask must do, in order; usually nothing or one
    /// action. A barrier of a checkpoint older than the newest one started, a repeated
    /// barrier, and a barrier on a closed or unknown channel are ignored.
    #[must_use = "the subtask must perform the actions"]
    pub fn on_barrier(&mut self, channel: usize, checkpoint: CheckpointId) -> Vec<BarrierAction> {
        if !self.is_open(channel) {
            return Vec::new();
        }
        let Some(at) = self.entry(checkpoint) else {
            return Vec::new();
        };
        let tracked = &mut self.tracked[at];
        match tracked.channels[channel] {
            Progress::Waiting | Progress::Announced => {}
            // Unaligned: the barrier passes; what follows it is after the snapshot.
            Progress::Recording | Progress::Captured | Progress::Reached => {
                return Vec::new();
            }
        }
        if tracked.phase == Phase::Capturing {
            // Reached on a channel whose announcement was not seen: impossible over a
            // real channel, handled as a capture of nothing more.
            tracked.channels[channel] = Progress::Captured;
            return self.finish_capture(checkpoint);
        }
        tracked.channels[channel] = Progress::Reached;
        let mut actions = Vec::new();
        if tracked.phase == Phase::Pending {
            tracked.phase = Phase::Aligning;
            actions.extend(self.start(checkpoint));
        }
        actions.extend(self.complete_ready());
        actions
    }

    /// The clock reached `now`: a checkpoint whose aligned phase ran out turns
    /// unaligned.
    #[must_use = "the subtask must perform the actions"]
    pub fn on_tick(&mut self, now: Instant) -> Vec<BarrierAction> {
        let mut actions = Vec::new();
        while let Some(at) = self.tracked.iter().position(|t| {
            t.phase != Phase::Capturing && t.deadline.is_some_and(|d| d <= now) && {
                t.phase == Phase::Aligning || t.channels.contains(&Progress::Announced)
            }
        }) {
            actions.extend(self.go_unaligned(at));
        }
        actions
    }

    /// When [`Aligner::on_tick`] must be called next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tracked
            .iter()
            .filter(|t| t.phase != Phase::Capturing)
            .filter_map(|t| t.deadline)
            .min()
    }

    /// `channel` closed: its producer is gone and delivers no more barriers, so it
    /// counts as having delivered every barrier still awaited, which may complete
    /// checkpoints.
    #[must_use = "the subtask must perform the actions"]
    pub fn on_closed(&mut self, channel: usize) -> Vec<BarrierAction> {
        match self.open.get_mut(channel) {
            Some(open) if *open => *open = false,
            _ => return Vec::new(),
        }
        let mut actions = self.complete_ready();
        let capturing: Vec<CheckpointId> = self
            .tracked
            .iter()
            .filter(|t| t.phase == Phase::Capturing)
            .map(|t| t.checkpoint)
            .collect();
        for checkpoint in capturing {
            actions.extend(self.finish_capture(checkpoint));
        }
        actions
    }

    /// The coordinator (or the subtask itself: a declined checkpoint) aborted
    /// `checkpoint`: stop aligning or capturing it and every older checkpoint, and
    /// ignore their barriers from now on. Returns the checkpoints that stopped, oldest
    /// first; every channel they blocked is unblocked, and their channel state is to be
    /// dropped.
    pub fn abort(&mut self, checkpoint: CheckpointId) -> Vec<CheckpointId> {
        self.latest = self.latest.max(Some(checkpoint));
        let mut stopped = Vec::new();
        while let Some(front) = self.tracked.front() {
            if front.checkpoint > checkpoint {
                break;
            }
            if front.phase != Phase::Pending {
                stopped.push(front.checkpoint);
            }
            self.tracked.pop_front();
        }
        stopped
    }

    /// Whether records from `channel` must be held back now: in exactly-once mode, the
    /// channel reached the barrier of the checkpoint being aligned. The subtask does
    /// not read it, so its records wait in its bounded queue, and reads the others.
    pub fn is_blocked(&self, channel: usize) -> bool {
        self.mode == AlignMode::ExactlyOnce
            && self.is_open(channel)
            && self.tracked.iter().any(|t| {
                t.phase == Phase::Aligning && t.channels.get(channel) == Some(&Progress::Reached)
            })
    }

    /// The channels [`is_blocked`](Self::is_blocked) holds back, in increasing order.
    pub fn blocked_channels(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.open.len()).filter(|&channel| self.is_blocked(channel))
    }

    /// The checkpoint being aligned in exactly-once mode; always `None` in at-least-once
    /// mode, which blocks nothing.
    pub fn aligning(&self) -> Option<CheckpointId> {
        match self.mode {
            AlignMode::ExactlyOnce => self
                .tracked
                .iter()
                .find(|t| t.phase == Phase::Aligning)
                .map(|t| t.checkpoint),
            AlignMode::AtLeastOnce => None,
        }
    }

    /// The unaligned checkpoint whose channel state a batch just consumed from
    /// `channel` belongs to, if any.
    pub fn records(&self, channel: usize) -> Option<CheckpointId> {
        self.tracked
            .iter()
            .find(|t| t.channels.get(channel) == Some(&Progress::Recording))
            .map(|t| t.checkpoint)
    }

    /// Whether `channel` is still open (its producer is there).
    pub fn is_open(&self, channel: usize) -> bool {
        self.open.get(channel).copied().unwrap_or(false)
    }

    /// `checkpoint` starts here: it subsumes every older one that started, or will
    /// never start now.
    fn start(&mut self, checkpoint: CheckpointId) -> Vec<BarrierAction> {
        self.latest = self.latest.max(Some(checkpoint));
        let mut actions = Vec::new();
        if self.mode == AlignMode::ExactlyOnce {
            while let Some(front) = self.tracked.front() {
                if front.checkpoint >= checkpoint {
                    break;
                }
                if front.phase != Phase::Pending {
                    actions.push(BarrierAction::Abort {
                        checkpoint: front.checkpoint,
                        subsumed_by: checkpoint,
                    });
                }
                self.tracked.pop_front();
            }
        } else {
            while self.tracked.len() > MAX_TRACKED {
                if let Some(old) = self.tracked.pop_front() {
                    actions.push(BarrierAction::Abort {
                        checkpoint: old.checkpoint,
                        subsumed_by: checkpoint,
                    });
                }
            }
        }
        actions.push(BarrierAction::Started(checkpoint));
        actions
    }

    /// Snapshots the checkpoint at `at` unaligned, now.
    fn go_unaligned(&mut self, at: usize) -> Vec<BarrierAction> {
        let checkpoint = self.tracked[at].checkpoint;
        let mut actions = Vec::new();
        if self.tracked[at].phase == Phase::Pending {
            actions.extend(self.start(checkpoint));
        }
        let Some(at) = self.tracked.iter().position(|t| t.checkpoint == checkpoint) else {
            return actions;
        };
        let open = self.open.clone();
        let tracked = &mut self.tracked[at];
        if tracked.all_reached(&open) {
            // Nothing is in flight before the barrier: an aligned snapshot after all.
            self.tracked.remove(at);
            actions.push(BarrierAction::Snapshot {
                checkpoint,
                unaligned: false,
            });
            return actions;
        }
        tracked.phase = Phase::Capturing;
        actions.push(BarrierAction::Snapshot {
            checkpoint,
            unaligned: true,
        });
        for (channel, progress) in tracked.channels.iter_mut().enumerate() {
            if !open[channel] {
                continue;
            }
            match *progress {
                Progress::Waiting => *progress = Progress::Recording,
                Progress::Announced => {
                    *progress = Progress::Captured;
                    actions.push(BarrierAction::Capture {
                        checkpoint,
                        channel,
                    });
                }
                Progress::Reached | Progress::Recording | Progress::Captured => {}
            }
        }
        actions.extend(self.finish_capture(checkpoint));
        actions
    }

    /// Completes `checkpoint`'s channel state when every open channel is settled.
    fn finish_capture(&mut self, checkpoint: CheckpointId) -> Vec<BarrierAction> {
        let Some(at) = self.tracked.iter().position(|t| t.checkpoint == checkpoint) else {
            return Vec::new();
        };
        let tracked = &self.tracked[at];
        if tracked.phase != Phase::Capturing || !tracked.settled(&self.open) {
            return Vec::new();
        }
        self.tracked.remove(at);
        vec![BarrierAction::ChannelStateDone(checkpoint)]
    }

    /// Snapshots every started checkpoint that all open channels reached, oldest
    /// first, and, at-least-once, drops the incomplete ones older than the newest of
    /// them.
    fn complete_ready(&mut self) -> Vec<BarrierAction> {
        let open = &self.open;
        let is_complete = |t: &Tracked| t.phase == Phase::Aligning && t.all_reached(open);
        let Some(last) = self.tracked.iter().rposition(is_complete) else {
            return Vec::new();
        };
        let newest = self.tracked[last].checkpoint;
        let mut actions = Vec::new();
        let mut kept = VecDeque::new();
        for (i, t) in std::mem::take(&mut self.tracked).into_iter().enumerate() {
            if i > last || t.phase == Phase::Capturing {
                kept.push_back(t);
            } else if is_complete(&t) {
                actions.push(BarrierAction::Snapshot {
                    checkpoint: t.checkpoint,
                    unaligned: false,
                });
            } else if t.phase == Phase::Aligning {
                actions.push(BarrierAction::Abort {
                    checkpoint: t.checkpoint,
                    subsumed_by: newest,
                });
            }
        }
        self.tracked = kept;
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BarrierAction::{Abort, Started};

    fn snapshot(checkpoint: CheckpointId) -> BarrierAction {
        BarrierAction::Snapshot {
            checkpoint,
            unaligned: false,
        }
    }

    fn id(n: u64) -> CheckpointId {
        CheckpointId(n)
    }

    fn exactly_once(channels: usize) -> Aligner {
        Aligner::new(channels, AlignMode::ExactlyOnce)
    }

    fn at_least_once(channels: usize) -> Aligner {
        Aligner::new(channels, AlignMode::AtLeastOnce)
    }

    fn blocked(aligner: &Aligner) -> Vec<usize> {
        aligner.blocked_channels().collect()
    }

    #[test]
    fn with_one_channel_a_barrier_snapshots_at_once() {
        let mut a = exactly_once(1);
        assert_eq!(a.on_barrier(0, id(1)), [Started(id(1)), snapshot(id(1))]);
        assert_eq!(blocked(&a), Vec::<usize>::new());
        assert_eq!(a.aligning(), None);
    }

    #[test]
    fn the_first_barrier_starts_alignment_and_blocks_its_channel() {
        let mut a = exactly_once(3);
        assert_eq!(a.on_barrier(1, id(1)), [Started(id(1))]);
        assert_eq!(a.aligning(), Some(id(1)));
        assert!(a.is_blocked(1));
        assert!(!a.is_blocked(0));
        assert!(!a.is_blocked(2));
    }

    #[test]
    fn further_barriers_of_the_same_checkpoint_block_their_channels() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(1, id(1));
        assert_eq!(a.on_barrier(2, id(1)), []);
        assert_eq!(blocked(&a), [1, 2]);
    }

    #[test]
    fn the_last_barrier_snapshots_and_unblocks_every_channel() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(1, id(1));
        let _ = a.on_barrier(2, id(1));
        assert_eq!(a.on_barrier(0, id(1)), [snapshot(id(1))]);
        assert_eq!(blocked(&a), Vec::<usize>::new());
        assert_eq!(a.aligning(), None);
    }

    #[test]
    fn a_barrier_of_an_older_checkpoint_is_ignored() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(2));
        assert_eq!(a.on_barrier(1, id(1)), []);
        assert_eq!(a.aligning(), Some(id(2)));
        assert_eq!(blocked(&a), [0]);
    }

    #[test]
    fn a_barrier_of_a_completed_checkpoint_is_ignored() {
        let mut a = exactly_once(1);
        let _ = a.on_barrier(0, id(3));
        assert_eq!(a.on_barrier(0, id(3)), []);
        assert_eq!(a.on_barrier(0, id(2)), []);
    }

    #[test]
    fn a_repeated_barrier_on_a_blocked_channel_changes_nothing() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(1));
        assert_eq!(a.on_barrier(0, id(1)), []);
        assert_eq!(blocked(&a), [0]);
    }

    #[test]
    fn a_newer_barrier_subsumes_the_unfinished_alignment() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(1, id(1));
        assert_eq!(
            a.on_barrier(2, id(2)),
            [
                Abort {
                    checkpoint: id(1),
                    subsumed_by: id(2)
                },
                Started(id(2))
            ]
        );
        assert_eq!(a.aligning(), Some(id(2)));
        assert_eq!(
            blocked(&a),
            [2],
            "only the channel that delivered 2 stays blocked"
        );
    }

    #[test]
    fn after_a_subsumption_the_new_checkpoint_completes_normally() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(1, id(2));
        assert_eq!(a.on_barrier(0, id(2)), [snapshot(id(2))]);
        assert_eq!(a.on_barrier(1, id(1)), [], "the subsumed barrier is stale");
    }

    #[test]
    fn end_of_input_on_the_last_missing_channel_completes_the_alignment() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(1, id(1));
        assert_eq!(a.on_closed(2), [snapshot(id(1))]);
        assert_eq!(blocked(&a), Vec::<usize>::new());
    }

    #[test]
    fn end_of_input_on_another_channel_keeps_the_alignment_waiting() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(0, id(1));
        assert_eq!(a.on_closed(2), []);
        assert_eq!(a.aligning(), Some(id(1)));
        assert_eq!(a.on_barrier(1, id(1)), [snapshot(id(1))]);
    }

    #[test]
    fn an_ended_channel_counts_as_delivered_for_later_checkpoints() {
        let mut a = exactly_once(2);
        assert_eq!(a.on_closed(1), []);
        assert_eq!(a.on_barrier(0, id(1)), [Started(id(1)), snapshot(id(1))]);
        assert_eq!(a.on_barrier(0, id(2)), [Started(id(2)), snapshot(id(2))]);
    }

    #[test]
    fn a_barrier_on_an_ended_channel_is_ignored() {
        let mut a = exactly_once(2);
        let _ = a.on_closed(1);
        assert_eq!(a.on_barrier(1, id(1)), []);
        assert_eq!(a.aligning(), None);
    }

    #[test]
    fn a_barrier_on_an_unknown_channel_is_ignored() {
        let mut a = exactly_once(2);
        assert_eq!(a.on_barrier(7, id(1)), []);
        assert_eq!(a.on_closed(7), []);
        assert!(!a.is_blocked(7));
    }

    #[test]
    fn a_second_end_of_input_on_a_channel_is_ignored() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(1));
        assert_eq!(a.on_closed(1), [snapshot(id(1))]);
        assert_eq!(a.on_closed(1), []);
        assert!(!a.is_open(1));
    }

    #[test]
    fn end_of_input_with_nothing_aligning_does_nothing() {
        let mut a = exactly_once(2);
        assert_eq!(a.on_closed(0), []);
        assert_eq!(a.on_closed(1), []);
    }

    #[test]
    fn aborting_the_aligning_checkpoint_unblocks_every_channel() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(0, id(4));
        let _ = a.on_barrier(1, id(4));
        assert_eq!(a.abort(id(4)), [id(4)]);
        assert_eq!(blocked(&a), Vec::<usize>::new());
        assert_eq!(a.aligning(), None);
    }

    #[test]
    fn barriers_of_an_aborted_checkpoint_are_ignored_afterwards() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(4));
        let _ = a.abort(id(4));
        assert_eq!(a.on_barrier(1, id(4)), []);
        assert_eq!(a.on_barrier(0, id(5)), [Started(id(5))]);
    }

    #[test]
    fn an_abort_that_arrives_before_any_barrier_makes_its_barriers_stale() {
        let mut a = exactly_once(2);
        assert_eq!(a.abort(id(3)), []);
        assert_eq!(a.on_barrier(0, id(3)), []);
        assert_eq!(a.on_barrier(0, id(2)), []);
        assert_eq!(a.aligning(), None);
    }

    #[test]
    fn aborting_a_newer_checkpoint_also_stops_an_older_alignment() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(1));
        assert_eq!(a.abort(id(2)), [id(1)]);
        assert_eq!(blocked(&a), Vec::<usize>::new());
    }

    #[test]
    fn aborting_an_older_checkpoint_leaves_the_alignment_alone() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(5));
        assert_eq!(a.abort(id(4)), []);
        assert_eq!(a.aligning(), Some(id(5)));
        assert_eq!(blocked(&a), [0]);
    }

    #[test]
    fn the_exactly_once_mode_follows_the_job_files_mode() {
        assert_eq!(
            AlignMode::from(CheckpointMode::ExactlyOnce),
            AlignMode::ExactlyOnce
        );
        assert_eq!(
            AlignMode::from(CheckpointMode::AtLeastOnce),
            AlignMode::AtLeastOnce
        );
    }

    #[test]
    fn at_least_once_never_blocks_a_channel() {
        let mut a = at_least_once(3);
        assert_eq!(a.on_barrier(0, id(1)), [Started(id(1))]);
        assert_eq!(a.on_barrier(1, id(1)), []);
        assert_eq!(blocked(&a), Vec::<usize>::new());
        assert_eq!(a.aligning(), None);
        assert_eq!(a.on_barrier(2, id(1)), [snapshot(id(1))]);
    }

    #[test]
    fn at_least_once_tracks_two_interleaved_checkpoints() {
        let mut a = at_least_once(2);
        assert_eq!(a.on_barrier(0, id(1)), [Started(id(1))]);
        assert_eq!(a.on_barrier(0, id(2)), [Started(id(2))]);
        assert_eq!(a.on_barrier(1, id(1)), [snapshot(id(1))]);
        assert_eq!(a.on_barrier(1, id(2)), [snapshot(id(2))]);
    }

    #[test]
    fn at_least_once_drops_older_incomplete_checkpoints_when_a_newer_completes() {
        let mut a = at_least_once(2);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(1, id(2));
        assert_eq!(
            a.on_barrier(0, id(2)),
            [
                Abort {
                    checkpoint: id(1),
                    subsumed_by: id(2)
                },
                snapshot(id(2))
            ]
        );
        assert_eq!(a.on_barrier(1, id(1)), [], "the dropped barrier is stale");
    }

    #[test]
    fn at_least_once_end_of_input_completes_every_checkpoint_it_was_missing_in_order() {
        let mut a = at_least_once(2);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(0, id(2));
        assert_eq!(a.on_closed(1), [snapshot(id(1)), snapshot(id(2))]);
    }

    #[test]
    fn at_least_once_ignores_a_barrier_older_than_the_newest_started() {
        let mut a = at_least_once(2);
        let _ = a.on_barrier(0, id(2));
        assert_eq!(a.on_barrier(1, id(1)), []);
    }

    #[test]
    fn at_least_once_abort_drops_that_checkpoint_and_older_ones() {
        let mut a = at_least_once(2);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(0, id(2));
        let _ = a.on_barrier(0, id(3));
        assert_eq!(a.abort(id(2)), [id(1), id(2)]);
        assert_eq!(a.on_barrier(1, id(2)), []);
        assert_eq!(a.on_barrier(1, id(3)), [snapshot(id(3))]);
    }

    #[test]
    fn at_least_once_tracks_a_bounded_number_of_checkpoints() {
        let mut a = at_least_once(2);
        for n in 1..=MAX_TRACKED as u64 {
            let _ = a.on_barrier(0, id(n));
        }
        let next = id(MAX_TRACKED as u64 + 1);
        assert_eq!(
            a.on_barrier(0, next),
            [
                Abort {
                    checkpoint: id(1),
                    subsumed_by: next
                },
                Started(next)
            ]
        );
    }

    mod properties {
        //! Random interleavings of channels, read the way the subtask loop reads them:
        //! announcements from the priority lane at any moment after they were sent (and
        //! always before the consumer passes them), data only from unblocked channels,
        //! with aborts and the clock's ticks in between, in an order the test draws.

        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        /// One channel's plan: records before each barrier and after the last, which
        /// barriers a source skipped (declined), and whether it closes at the end.
        #[derive(Clone, Debug)]
        struct ChannelPlan {
            records: Vec<usize>,
            skipped: Vec<bool>,
            closes: bool,
        }

        /// A channel as sent: its records count, and each barrier's position.
        struct Sent {
            records: usize,
            barriers: Vec<(CheckpointId, usize)>,
            closes: bool,
        }

        fn sent(plan: &ChannelPlan, checkpoints: usize) -> Sent {
            let mut position = 0;
            let mut barriers = Vec::new();
            for n in 0..checkpoints {
                position += plan.records[n];
                // A channel that never closes always delivers the last barrier, so that
                // a blocked alignment can always make progress.
                let must_deliver = !plan.closes && n + 1 == checkpoints;
                if !plan.skipped[n] || must_deliver {
                    barriers.push((CheckpointId(n as u64 + 1), position));
                }
            }
            Sent {
                records: position + plan.records[checkpoints],
                barriers,
                closes: plan.closes,
            }
        }

        fn channel_plan(checkpoints: usize) -> impl Strategy<Value = ChannelPlan> {
            (
                proptest::collection::vec(0usize..4, checkpoints + 1),
                proptest::collection::vec(proptest::bool::weighted(0.15), checkpoints),
                proptest::bool::weighted(0.3),
            )
                .prop_map(|(records, skipped, closes)| ChannelPlan {
                    records,
                    skipped,
                    closes,
                })
        }

        /// Aligned, unaligned from the start, or unaligned after a timeout of ticks.
        fn setting() -> impl Strategy<Value = Option<Duration>> {
            prop_oneof![
                Just(None),
                Just(Some(Duration::ZERO)),
                (1u64..6).prop_map(|ms| Some(Duration::from_millis(ms))),
            ]
        }

        type Scenario = (usize, Vec<ChannelPlan>, Vec<usize>, Option<Duration>);

        fn scenario() -> impl Strategy<Value = Scenario> {
            (1usize..=4, 1usize..=4).prop_flat_map(|(channels, checkpoints)| {
                (
                    Just(checkpoints),
                    proptest::collection::vec(channel_plan(checkpoints), channels),
                    proptest::collection::vec(0usize..1000, 0..300),
                    setting(),
                )
            })
        }

        /// What a run observed.
        #[derive(Default)]
        struct Run {
            started: BTreeSet<CheckpointId>,
            resolved: BTreeSet<CheckpointId>,
            snapshots: Vec<CheckpointId>,
            unaligned: BTreeSet<CheckpointId>,
        }

        /// Drives an aligner over the channels, checking the invariants after every
        /// step. With `aborts`, some choices abort a checkpoint as the coordinator would.
        #[allow(clippy::too_many_lines)]
        fn run(
            mode: AlignMode,
            (checkpoints, plans, choices, unaligned_after): &Scenario,
            aborts: bool,
        ) -> Result<Run, TestCaseError> {
            let sent: Vec<Sent> = plans.iter().map(|p| sent(p, *checkpoints)).collect();
            let k = sent.len();
            let start = Instant::now();
            let mut clock = 0u64;
            let mut announced = vec![0usize; k];
            let mut reached = vec![0usize; k];
            let mut consumed = vec![0usize; k];
            let mut closed = vec![false; k];
            let mut aligner = Aligner::new(k, mode);
            let mut observed = Run::default();
            let mut snapshot_at: BTreeMap<CheckpointId, Vec<usize>> = BTreeMap::new();
            let mut state: BTreeMap<CheckpointId, Vec<Vec<usize>>> = BTreeMap::new();
            let mut step = 0;
            loop {
                // What can happen next: per channel an announcement, the next barrier
                // reached, a record, or its close.
                let mut moves = Vec::new();
                for c in 0..k {
                    if closed[c] {
                        continue;
                    }
                    if announced[c] < sent[c].barriers.len() {
                        moves.push((c, 0));
                    }
                    let next_barrier = sent[c].barriers.get(reached[c]).map(|&(_, p)| p);
                    let at_barrier = next_barrier == Some(consumed[c]);
                    // The consumer cannot pass a barrier it has not seen announced.
                    let seen = reached[c] < announced[c];
                    if aligner.is_blocked(c) {
                        continue;
                    }
                    if at_barrier && seen {
                        moves.push((c, 1));
                    } else if !at_barrier && consumed[c] < sent[c].records {
                        moves.push((c, 2));
                    } else if next_barrier.is_none()
                        && consumed[c] == sent[c].records
                        && sent[c].closes
                    {
                        moves.push((c, 3));
                    }
                }
                if mode == AlignMode::AtLeastOnce || *unaligned_after == Some(Duration::ZERO) {
                    prop_assert_eq!(aligner.blocked_channels().count(), 0);
                }
                // Once the drawn choices run out, the channels are read to the end.
                let drawn = choices.get(step).copied();
                let choice = drawn.unwrap_or(0);
                step += 1;
                if aborts && drawn.is_some() && choice % 13 == 0 {
                    let n = CheckpointId((choice / 13 % (*checkpoints + 1)) as u64);
                    for stopped in aligner.abort(n) {
                        prop_assert!(
                            observed.resolved.insert(stopped),
                            "{} stopped twice",
                            stopped
                        );
                        state.remove(&stopped);
                    }
                    for n in observed.started.iter().filter(|m| **m <= n) {
                        observed.resolved.insert(*n);
                    }
                    continue;
                }
                // A tick: time passes (every step, once the drawn choices run out).
                if drawn.is_none_or(|choice| choice % 7 == 0) {
                    clock += 1;
                    let actions = aligner.on_tick(start + Duration::from_millis(clock));
                    apply(
                        actions,
                        &mut observed,
                        &mut snapshot_at,
                        &mut state,
                        &consumed,
                        &closed,
                        &sent,
                        mode,
                    )?;
                    if drawn.is_some() {
                        continue;
                    }
                }
                let Some(&(c, kind)) = moves.get(choice % moves.len().max(1)) else {
                    let left: Vec<usize> = (0..k)
                        .filter(|&c| {
                            consumed[c] < sent[c].records || (sent[c].closes && !closed[c])
                        })
                        .collect();
                    prop_assert!(left.is_empty(), "deadlock: channels {:?} left", left);
                    break;
                };
                let actions = match kind {
                    0 => {
                        let (n, _) = sent[c].barriers[announced[c]];
                        announced[c] += 1;
                        let triggered = Duration::from_millis(n.0 * 2);
                        let now = Duration::from_millis(clock);
                        aligner.on_announced(
                            c,
                            n,
                            *unaligned_after,
                            now.saturating_sub(triggered),
                            start + now,
                        )
                    }
                    1 => {
                        let (n, _) = sent[c].barriers[reached[c]];
                        reached[c] += 1;
                        aligner.on_barrier(c, n)
                    }
                    2 => {
                        let position = consumed[c];
                        if mode == AlignMode::ExactlyOnce {
                            // Blocking is correct: a record after an aligned barrier is
                            // read only once that checkpoint was resolved here.
                            for &(n, p) in &sent[c].barriers {
                                if p <= position && observed.started.contains(&n) {
                                    prop_assert!(
                                        observed.resolved.contains(&n)
                                            || observed.unaligned.contains(&n),
                                        "record {} of channel {} read while {} aligns",
                                        position,
                                        c,
                                        n
                                    );
                                }
                            }
                        }
                        if let Some(n) = aligner.records(c)
                            && let Some(channels) = state.get_mut(&n)
                        {
                            channels[c].push(position);
                        }
                        consumed[c] += 1;
                        Vec::new()
                    }
                    _ => {
                        closed[c] = true;
                        aligner.on_closed(c)
                    }
                };
                apply(
                    actions,
                    &mut observed,
                    &mut snapshot_at,
                    &mut state,
                    &consumed,
                    &closed,
                    &sent,
                    mode,
                )?;
            }
            prop_assert_eq!(aligner.blocked_channels().count(), 0);
            prop_assert_eq!(
                &observed.started,
                &observed.resolved,
                "every started checkpoint ends in a snapshot or an abort"
            );
            Ok(observed)
        }

        #[allow(clippy::too_many_arguments)]
        fn apply(
            actions: Vec<BarrierAction>,
            observed: &mut Run,
            snapshot_at: &mut BTreeMap<CheckpointId, Vec<usize>>,
            state: &mut BTreeMap<CheckpointId, Vec<Vec<usize>>>,
            consumed: &[usize],
            closed: &[bool],
            sent: &[Sent],
            mode: AlignMode,
        ) -> Result<(), TestCaseError> {
            let k = sent.len();
            let position_of = |c: usize, n: CheckpointId| {
                sent[c]
                    .barriers
                    .iter()
                    .find(|(m, _)| *m == n)
                    .map(|&(_, p)| p)
            };
            for action in actions {
                match action {
                    BarrierAction::Started(n) => {
                        prop_assert!(observed.started.insert(n), "{} started twice", n);
                    }
                    BarrierAction::Snapshot {
                        checkpoint: n,
                        unaligned,
                    } => {
                        prop_assert!(observed.started.contains(&n));
                        prop_assert!(
                            observed.snapshots.last().is_none_or(|&last| last < n),
                            "snapshot {} after {:?}",
                            n,
                            observed.snapshots
                        );
                        observed.snapshots.push(n);
                        if unaligned {
                            prop_assert_eq!(mode, AlignMode::ExactlyOnce);
                            observed.unaligned.insert(n);
                            snapshot_at.insert(n, consumed.to_vec());
                            state.insert(n, vec![Vec::new(); k]);
                            for c in 0..k {
                                if let Some(p) = position_of(c, n) {
                                    prop_assert!(
                                        consumed[c] <= p,
                                        "channel {} consumed past {}",
                                        c,
                                        n
                                    );
                                }
                            }
                            continue;
                        }
                        prop_assert!(observed.resolved.insert(n), "{} resolved twice", n);
                        for c in 0..k {
                            match position_of(c, n) {
                                // The snapshot holds exactly the records before the
                                // barrier (exactly-once), or at least them.
                                Some(p) if mode == AlignMode::ExactlyOnce => {
                                    prop_assert_eq!(consumed[c], p);
                                }
                                Some(p) => prop_assert!(consumed[c] >= p),
                                None => prop_assert!(
                                    closed[c],
                                    "snapshot {} without its barrier on open channel {}",
                                    n,
                                    c
                                ),
                            }
                        }
                    }
                    BarrierAction::Capture {
                        checkpoint: n,
                        channel: c,
                    } => {
                        let p = position_of(c, n);
                        prop_assert!(
                            p.is_some(),
                            "capture of {} on channel {} without its barrier",
                            n,
                            c
                        );
                        let p = p.unwrap_or(0);
                        prop_assert!(consumed[c] <= p);
                        if let Some(channels) = state.get_mut(&n) {
                            channels[c].extend(consumed[c]..p);
                        }
                    }
                    BarrierAction::ChannelStateDone(n) => {
                        prop_assert!(observed.unaligned.contains(&n));
                        prop_assert!(observed.resolved.insert(n), "{} resolved twice", n);
                        let (Some(at), Some(channels)) = (snapshot_at.get(&n), state.remove(&n))
                        else {
                            return Err(TestCaseError::fail(format!(
                                "{n} done without its snapshot"
                            )));
                        };
                        for c in 0..k {
                            // The snapshot and the channel state hold every record
                            // before the barrier exactly once: those consumed before the
                            // snapshot in the state, the rest in the channel state.
                            let until = position_of(c, n).unwrap_or(sent[c].records);
                            let expected: Vec<usize> = (at[c]..until).collect();
                            prop_assert_eq!(&channels[c], &expected, "channel {} of {}", c, n);
                        }
                    }
                    BarrierAction::Abort {
                        checkpoint,
                        subsumed_by,
                    } => {
                        prop_assert!(observed.started.contains(&checkpoint));
                        prop_assert!(checkpoint < subsumed_by);
                        prop_assert!(
                            observed.resolved.insert(checkpoint),
                            "{} resolved twice",
                            checkpoint
                        );
                        state.remove(&checkpoint);
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn exactly_once_alignment_holds_over_random_interleavings(scenario in scenario()) {
                run(AlignMode::ExactlyOnce, &scenario, false)?;
            }

            #[test]
            fn exactly_once_holds_with_aborts_and_timeouts(scenario in scenario()) {
                run(AlignMode::ExactlyOnce, &scenario, true)?;
            }

            #[test]
            fn at_least_once_tracking_holds_over_random_interleavings(scenario in scenario()) {
                run(AlignMode::AtLeastOnce, &scenario, false)?;
            }

            #[test]
            fn a_checkpoint_no_channel_skipped_is_snapshotted_in_exactly_once_mode(
                (checkpoints, mut plans, choices, after) in scenario()
            ) {
                for plan in &mut plans {
                    plan.skipped.iter_mut().for_each(|s| *s = false);
                }
                let observed = run(AlignMode::ExactlyOnce, &(checkpoints, plans, choices, after), false)?;
                // Without skipped barriers or aborts no checkpoint is ever subsumed:
                // every checkpoint that started here is snapshotted.
                let snapshots: BTreeSet<CheckpointId> = observed.snapshots.iter().copied().collect();
                prop_assert_eq!(snapshots, observed.started);
            }

            #[test]
            fn unaligned_from_the_start_never_blocks(
                (checkpoints, plans, choices, _) in scenario()
            ) {
                // `run` checks that no channel is ever blocked.
                run(
                    AlignMode::ExactlyOnce,
                    &(checkpoints, plans, choices, Some(Duration::ZERO)),
                    true,
                )?;
            }
        }
    }
}
