//! Barrier alignment for one subtask with several input channels: which channels to
//! hold back and when to snapshot.
//!
//! The [`Aligner`] is driven by the subtask loop: it reports every barrier and every
//! end of input, performs the [`BarrierAction`]s it gets back in order, and before
//! reading asks [`Aligner::is_blocked`] which channels to leave alone. It owns no
//! channel and reads no clock; the loop records the time of a
//! [`BarrierAction::Started`] to measure the alignment.
//!
//! Exactly-once (Flink's `SingleCheckpointBarrierHandler`, aligned): the first barrier of
//! checkpoint *n* starts its alignment; each channel that delivered *n* is blocked, so
//! its later records stay in its bounded queue (backpressure) while the others are
//! read; when every open channel delivered *n* the subtask snapshots and everything is
//! unblocked. A barrier of a newer checkpoint subsumes an unfinished alignment.
//!
//! At-least-once (Flink's `CheckpointBarrierTracker`): nothing is ever blocked; several
//! checkpoints are tracked at once and each is snapshotted when its barrier has come on
//! every open channel. A completed checkpoint drops the older incomplete ones.
//!
//! In both modes a channel that ended counts as having delivered every barrier.

use std::collections::VecDeque;

use crate::job::CheckpointMode;
use crate::runtime::CheckpointId;

/// How many checkpoints at-least-once mode tracks at once. A channel that never
/// delivers a barrier would otherwise grow the list without bound; 50 is Flink's
/// `CheckpointBarrierTracker.MAX_CHECKPOINTS_TO_TRACK`, far above any useful
/// `max-concurrent`.
pub const MAX_TRACKED: usize = 50;

/// Whether the aligner blocks channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignMode {
    /// Block channels that delivered the barrier until all have: state and output
    /// reflect every record exactly once.
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

/// What the subtask must do after a barrier or an end of input, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierAction {
    /// The first barrier of this checkpoint arrived: its alignment starts now (the
    /// caller notes the time, and counts the bytes it processes until the snapshot).
    Started(CheckpointId),
    /// Every open channel delivered this checkpoint's barrier: take the snapshot and
    /// forward the barrier downstream now, before reading anything else.
    Snapshot(CheckpointId),
    /// This checkpoint can no longer complete here, because a newer one overtook it:
    /// decline it to the coordinator as subsumed (a decline that is not counted as a
    /// failure).
    Abort {
        /// The checkpoint given up.
        checkpoint: CheckpointId,
        /// The newer checkpoint that overtook it.
        subsumed_by: CheckpointId,
    },
}

/// One checkpoint whose barriers have started to arrive.
#[derive(Clone, Debug)]
struct Tracked {
    checkpoint: CheckpointId,
    /// Per channel: whether its barrier arrived.
    arrived: Vec<bool>,
}

/// Barrier alignment state of one subtask. See the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Aligner {
    mode: AlignMode,
    /// Per channel: whether it is still open (has not delivered end of input).
    open: Vec<bool>,
    /// The newest checkpoint that started or was aborted; barriers of older or equal
    /// checkpoints that are not tracked any more are stale and ignored.
    latest: Option<CheckpointId>,
    /// The checkpoints being aligned, oldest first, ids increasing. Exactly-once keeps
    /// at most one.
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

    /// A barrier of `checkpoint` arrived on `channel`. Returns what the subtask must do,
    /// in order; usually nothing or one action. A barrier of a checkpoint older than
    /// the newest one seen, a repeated barrier, and a barrier on an ended or unknown
    /// channel are ignored.
    #[must_use = "the subtask must perform the actions"]
    pub fn on_barrier(&mut self, channel: usize, checkpoint: CheckpointId) -> Vec<BarrierAction> {
        if !self.open.get(channel).copied().unwrap_or(false) {
            return Vec::new();
        }
        if let Some(tracked) = self.tracked.iter_mut().find(|t| t.checkpoint == checkpoint) {
            if tracked.arrived[channel] {
                return Vec::new();
            }
            tracked.arrived[channel] = true;
            return self.complete_ready();
        }
        if self.latest.is_some_and(|latest| checkpoint <= latest) {
            return Vec::new();
        }
        self.latest = Some(checkpoint);
        let mut actions = Vec::new();
        let limit = match self.mode {
            AlignMode::ExactlyOnce => 1,
            AlignMode::AtLeastOnce => MAX_TRACKED,
        };
        while self.tracked.len() >= limit {
            let Some(old) = self.tracked.pop_front() else {
                break;
            };
            actions.push(BarrierAction::Abort {
                checkpoint: old.checkpoint,
                subsumed_by: checkpoint,
            });
        }
        let mut arrived = vec![false; self.open.len()];
        arrived[channel] = true;
        self.tracked.push_back(Tracked {
            checkpoint,
            arrived,
        });
        actions.push(BarrierAction::Started(checkpoint));
        actions.extend(self.complete_ready());
        actions
    }

    /// `channel` delivered end of input: nothing more comes on it, and it counts as
    /// having delivered every barrier still awaited, which may complete checkpoints.
    #[must_use = "the subtask must perform the actions"]
    pub fn on_end_of_input(&mut self, channel: usize) -> Vec<BarrierAction> {
        match self.open.get_mut(channel) {
            Some(open) if *open => *open = false,
            _ => return Vec::new(),
        }
        self.complete_ready()
    }

    /// The coordinator (or the subtask itself: a declined checkpoint, an alignment
    /// timeout) aborted `checkpoint`: stop aligning it and every older checkpoint, and
    /// ignore their barriers from now on. Returns the checkpoints whose alignment
    /// stopped, oldest first; every channel they blocked is unblocked.
    pub fn abort(&mut self, checkpoint: CheckpointId) -> Vec<CheckpointId> {
        self.latest = self.latest.max(Some(checkpoint));
        let mut stopped = Vec::new();
        while let Some(front) = self.tracked.front() {
            if front.checkpoint > checkpoint {
                break;
            }
            stopped.push(front.checkpoint);
            self.tracked.pop_front();
        }
        stopped
    }

    /// Whether records from `channel` must be held back now: in exactly-once mode, the
    /// channel delivered the barrier of the checkpoint being aligned. The subtask does
    /// not read it, so its records wait in its bounded queue, and reads the others.
    pub fn is_blocked(&self, channel: usize) -> bool {
        match (self.mode, self.tracked.front()) {
            (AlignMode::ExactlyOnce, Some(tracked)) => {
                tracked.arrived.get(channel).copied().unwrap_or(false)
                    && self.open.get(channel).copied().unwrap_or(false)
            }
            _ => false,
        }
    }

    /// The channels [`is_blocked`](Self::is_blocked) holds back, in increasing order.
    pub fn blocked_channels(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.open.len()).filter(|&channel| self.is_blocked(channel))
    }

    /// The checkpoint being aligned in exactly-once mode; always `None` in at-least-once
    /// mode, which blocks nothing.
    pub fn aligning(&self) -> Option<CheckpointId> {
        match self.mode {
            AlignMode::ExactlyOnce => self.tracked.front().map(|t| t.checkpoint),
            AlignMode::AtLeastOnce => None,
        }
    }

    /// Whether `channel` is still open (has not delivered end of input).
    pub fn is_open(&self, channel: usize) -> bool {
        self.open.get(channel).copied().unwrap_or(false)
    }

    /// Snapshots every tracked checkpoint that all open channels delivered, oldest
    /// first, and drops the incomplete ones older than the newest of them.
    fn complete_ready(&mut self) -> Vec<BarrierAction> {
        let open = &self.open;
        let is_complete = |t: &Tracked| {
            t.arrived
                .iter()
                .zip(open)
                .all(|(&arrived, &open)| arrived || !open)
        };
        let Some(last) = self.tracked.iter().rposition(is_complete) else {
            return Vec::new();
        };
        let newest = self.tracked[last].checkpoint;
        let done: Vec<Tracked> = self.tracked.drain(..=last).collect();
        done.into_iter()
            .map(|t| {
                if is_complete(&t) {
                    BarrierAction::Snapshot(t.checkpoint)
                } else {
                    BarrierAction::Abort {
                        checkpoint: t.checkpoint,
                        subsumed_by: newest,
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BarrierAction::{Abort, Snapshot, Started};

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
        assert_eq!(a.on_barrier(0, id(1)), [Started(id(1)), Snapshot(id(1))]);
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
        assert_eq!(a.on_barrier(0, id(1)), [Snapshot(id(1))]);
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
        assert_eq!(a.on_barrier(0, id(2)), [Snapshot(id(2))]);
        assert_eq!(a.on_barrier(1, id(1)), [], "the subsumed barrier is stale");
    }

    #[test]
    fn end_of_input_on_the_last_missing_channel_completes_the_alignment() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(1, id(1));
        assert_eq!(a.on_end_of_input(2), [Snapshot(id(1))]);
        assert_eq!(blocked(&a), Vec::<usize>::new());
    }

    #[test]
    fn end_of_input_on_another_channel_keeps_the_alignment_waiting() {
        let mut a = exactly_once(3);
        let _ = a.on_barrier(0, id(1));
        assert_eq!(a.on_end_of_input(2), []);
        assert_eq!(a.aligning(), Some(id(1)));
        assert_eq!(a.on_barrier(1, id(1)), [Snapshot(id(1))]);
    }

    #[test]
    fn an_ended_channel_counts_as_delivered_for_later_checkpoints() {
        let mut a = exactly_once(2);
        assert_eq!(a.on_end_of_input(1), []);
        assert_eq!(a.on_barrier(0, id(1)), [Started(id(1)), Snapshot(id(1))]);
        assert_eq!(a.on_barrier(0, id(2)), [Started(id(2)), Snapshot(id(2))]);
    }

    #[test]
    fn a_barrier_on_an_ended_channel_is_ignored() {
        let mut a = exactly_once(2);
        let _ = a.on_end_of_input(1);
        assert_eq!(a.on_barrier(1, id(1)), []);
        assert_eq!(a.aligning(), None);
    }

    #[test]
    fn a_barrier_on_an_unknown_channel_is_ignored() {
        let mut a = exactly_once(2);
        assert_eq!(a.on_barrier(7, id(1)), []);
        assert_eq!(a.on_end_of_input(7), []);
        assert!(!a.is_blocked(7));
    }

    #[test]
    fn a_second_end_of_input_on_a_channel_is_ignored() {
        let mut a = exactly_once(2);
        let _ = a.on_barrier(0, id(1));
        assert_eq!(a.on_end_of_input(1), [Snapshot(id(1))]);
        assert_eq!(a.on_end_of_input(1), []);
        assert!(!a.is_open(1));
    }

    #[test]
    fn end_of_input_with_nothing_aligning_does_nothing() {
        let mut a = exactly_once(2);
        assert_eq!(a.on_end_of_input(0), []);
        assert_eq!(a.on_end_of_input(1), []);
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
        assert_eq!(a.on_barrier(2, id(1)), [Snapshot(id(1))]);
    }

    #[test]
    fn at_least_once_tracks_two_interleaved_checkpoints() {
        let mut a = at_least_once(2);
        assert_eq!(a.on_barrier(0, id(1)), [Started(id(1))]);
        assert_eq!(a.on_barrier(0, id(2)), [Started(id(2))]);
        assert_eq!(a.on_barrier(1, id(1)), [Snapshot(id(1))]);
        assert_eq!(a.on_barrier(1, id(2)), [Snapshot(id(2))]);
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
                Snapshot(id(2))
            ]
        );
        assert_eq!(a.on_barrier(1, id(1)), [], "the dropped barrier is stale");
    }

    #[test]
    fn at_least_once_end_of_input_completes_every_checkpoint_it_was_missing_in_order() {
        let mut a = at_least_once(2);
        let _ = a.on_barrier(0, id(1));
        let _ = a.on_barrier(0, id(2));
        assert_eq!(a.on_end_of_input(1), [Snapshot(id(1)), Snapshot(id(2))]);
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
        assert_eq!(a.on_barrier(1, id(3)), [Snapshot(id(3))]);
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
        //! only unblocked channels, in an order the test draws.

        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Item {
            /// A record: its position on its channel.
            Record(usize),
            Barrier(CheckpointId),
            End,
        }

        /// One channel's plan: records before each barrier and after the last, which
        /// barriers a source skipped (declined), and after how many barriers it ends.
        #[derive(Clone, Debug)]
        struct ChannelPlan {
            records: Vec<usize>,
            skipped: Vec<bool>,
            ends_after: Option<usize>,
        }

        fn items(plan: &ChannelPlan, checkpoints: usize) -> Vec<Item> {
            let mut items = Vec::new();
            let mut position = 0;
            let mut record = |items: &mut Vec<Item>, count: usize| {
                for _ in 0..count {
                    items.push(Item::Record(position));
                    position += 1;
                }
            };
            let last = plan.ends_after.unwrap_or(checkpoints);
            for n in 0..last {
                record(&mut items, plan.records[n]);
                // A channel that never ends always delivers the last barrier, so that a
                // blocked alignment can always make progress.
                let must_deliver = plan.ends_after.is_none() && n + 1 == checkpoints;
                if !plan.skipped[n] || must_deliver {
                    items.push(Item::Barrier(CheckpointId(n as u64 + 1)));
                }
            }
            record(&mut items, plan.records[checkpoints]);
            if plan.ends_after.is_some() {
                items.push(Item::End);
            }
            items
        }

        fn channel_plan(checkpoints: usize) -> impl Strategy<Value = ChannelPlan> {
            (
                proptest::collection::vec(0usize..3, checkpoints + 1),
                proptest::collection::vec(proptest::bool::weighted(0.15), checkpoints),
                proptest::option::weighted(0.4, 0..=checkpoints),
            )
                .prop_map(|(records, skipped, ends_after)| ChannelPlan {
                    records,
                    skipped,
                    ends_after,
                })
        }

        fn scenario() -> impl Strategy<Value = (usize, Vec<ChannelPlan>, Vec<usize>)> {
            (1usize..=4, 1usize..=4).prop_flat_map(|(channels, checkpoints)| {
                (
                    Just(checkpoints),
                    proptest::collection::vec(channel_plan(checkpoints), channels),
                    proptest::collection::vec(0usize..64, 0..200),
                )
            })
        }

        /// What a run observed.
        #[derive(Default)]
        struct Run {
            started: BTreeSet<CheckpointId>,
            resolved: BTreeSet<CheckpointId>,
            snapshots: Vec<CheckpointId>,
        }

        /// Drives an aligner over the channels, checking the invariants after every
        /// step.
        fn run(
            mode: AlignMode,
            checkpoints: usize,
            plans: &[ChannelPlan],
            choices: &[usize],
        ) -> Result<Run, TestCaseError> {
            let channels: Vec<Vec<Item>> = plans.iter().map(|p| items(p, checkpoints)).collect();
            let mut next = vec![0usize; channels.len()];
            let mut ended = vec![false; channels.len()];
            // Per channel: the barriers it delivered, with the record position at which
            // each arrived (how many records came before it).
            let mut delivered: Vec<BTreeMap<CheckpointId, usize>> =
                vec![BTreeMap::new(); channels.len()];
            let mut processed = vec![0usize; channels.len()];
            let mut aligner = Aligner::new(channels.len(), mode);
            let mut observed = Run::default();
            let mut step = 0;
            loop {
                let readable: Vec<usize> = (0..channels.len())
                    .filter(|&c| next[c] < channels[c].len() && !aligner.is_blocked(c))
                    .collect();
                if mode == AlignMode::AtLeastOnce {
                    prop_assert_eq!(aligner.blocked_channels().count(), 0);
                }
                let Some(&channel) =
                    readable.get(choices.get(step).copied().unwrap_or(0) % readable.len().max(1))
                else {
                    let left: Vec<usize> = (0..channels.len())
                        .filter(|&c| next[c] < channels[c].len())
                        .collect();
                    prop_assert!(left.is_empty(), "deadlock: channels {:?} blocked", left);
                    break;
                };
                step += 1;
                let item = channels[channel][next[channel]];
                next[channel] += 1;
                let actions = match item {
                    Item::Record(position) => {
                        prop_assert_eq!(position, processed[channel]);
                        if mode == AlignMode::ExactlyOnce {
                            // Blocking is correct: every barrier this channel delivered
                            // was resolved (or ignored) before a later record is read.
                            for n in delivered[channel].keys() {
                                prop_assert!(
                                    !observed.started.contains(n) || observed.resolved.contains(n),
                                    "record {} of channel {} read while {} aligns",
                                    position,
                                    channel,
                                    n
                                );
                            }
                        }
                        processed[channel] += 1;
                        Vec::new()
                    }
                    Item::Barrier(n) => {
                        delivered[channel].insert(n, processed[channel]);
                        aligner.on_barrier(channel, n)
                    }
                    Item::End => {
                        ended[channel] = true;
                        aligner.on_end_of_input(channel)
                    }
                };
                for action in actions {
                    match action {
                        BarrierAction::Started(n) => {
                            prop_assert!(observed.started.insert(n), "{} started twice", n);
                        }
                        BarrierAction::Snapshot(n) => {
                            prop_assert!(observed.started.contains(&n));
                            prop_assert!(observed.resolved.insert(n), "{} resolved twice", n);
                            prop_assert!(
                                observed.snapshots.last().is_none_or(|&last| last < n),
                                "snapshot {} after {:?}",
                                n,
                                observed.snapshots
                            );
                            observed.snapshots.push(n);
                            for c in 0..channels.len() {
                                match delivered[c].get(&n) {
                                    // The snapshot holds exactly the records before the
                                    // barrier (exactly-once), or at least them.
                                    Some(&before) if mode == AlignMode::ExactlyOnce => {
                                        prop_assert_eq!(processed[c], before);
                                    }
                                    Some(&before) => prop_assert!(processed[c] >= before),
                                    None => prop_assert!(
                                        ended[c],
                                        "snapshot {} without its barrier on open channel {}",
                                        n,
                                        c
                                    ),
                                }
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
                        }
                    }
                }
                // A started checkpoint that every open channel delivered has been
                // snapshotted: a snapshot happens as soon as it can.
                for n in observed.started.difference(&observed.resolved) {
                    let complete =
                        (0..channels.len()).all(|c| ended[c] || delivered[c].contains_key(n));
                    prop_assert!(!complete, "{} complete but not snapshotted", n);
                }
            }
            prop_assert_eq!(aligner.blocked_channels().count(), 0);
            prop_assert_eq!(
                &observed.started,
                &observed.resolved,
                "every started checkpoint ends in a snapshot or an abort"
            );
            Ok(observed)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn exactly_once_alignment_holds_over_random_interleavings(
                (checkpoints, plans, choices) in scenario()
            ) {
                run(AlignMode::ExactlyOnce, checkpoints, &plans, &choices)?;
            }

            #[test]
            fn at_least_once_tracking_holds_over_random_interleavings(
                (checkpoints, plans, choices) in scenario()
            ) {
                run(AlignMode::AtLeastOnce, checkpoints, &plans, &choices)?;
            }

            #[test]
            fn a_checkpoint_no_channel_skipped_is_snapshotted_in_exactly_once_mode(
                (checkpoints, mut plans, choices) in scenario()
            ) {
                for plan in &mut plans {
                    plan.skipped.iter_mut().for_each(|s| *s = false);
                }
                let observed = run(AlignMode::ExactlyOnce, checkpoints, &plans, &choices)?;
                // Without skipped barriers no alignment is ever subsumed: every
                // checkpoint whose barrier came on some channel is snapshotted.
                let snapshots: BTreeSet<CheckpointId> = observed.snapshots.iter().copied().collect();
                prop_assert_eq!(snapshots, observed.started);
            }
        }
    }
}
