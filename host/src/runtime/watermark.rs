//! Watermarks derived at a source from its records' timestamps, as Flink's
//! `WatermarkStrategy.forBoundedOutOfOrderness(d).withIdleness(t)`, per split.
//!
//! Each split (a Kafka partition) has its own clock: the highest timestamp it has
//! produced, minus the bound, minus 1 ms. The subtask's watermark is the least clock
//! among its splits that are not idle; a split is idle when it has produced nothing for
//! the idle timeout (a split that has produced nothing yet holds the watermark back
//! until then). When every split is idle, the least clock among those that produced
//! anything stands: which split went idle first must not decide whether the records
//! read so far are ever covered by a watermark. The watermark only moves forward.
//!
//! [`EventTime`] wraps any [`Source`] with a clock, so every kind of source gets event
//! time the same way; the source only says which split each record came from.

use std::time::{Duration, Instant};

use super::{Batch, CheckpointId, SnapshotWriter, Source, SourcePoll, TaskError};

/// How watermarks follow the timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    /// How far behind the highest timestamp seen records may still arrive.
    pub max_out_of_orderness: Duration,
    /// A split without records for this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Split {
    max_timestamp: Option<i64>,
    last_record: Instant,
}

/// The per-split clocks of one source subtask.
#[derive(Debug)]
pub struct Watermarks {
    strategy: Strategy,
    bound: i64,
    splits: Vec<Split>,
    emitted: i64,
}

impl Watermarks {
    /// Clocks for `splits` splits (at least one), none of which has produced anything
    /// as of `now`.
    pub fn new(strategy: Strategy, splits: usize, now: Instant) -> Self {
        let bound = i64::try_from(strategy.max_out_of_orderness.as_millis()).unwrap_or(i64::MAX);
        let split = Split {
            max_timestamp: None,
            last_record: now,
        };
        Self {
            strategy,
            bound,
            splits: vec![split; splits.max(1)],
            emitted: i64::MIN,
        }
    }

    /// Split `split` produced a record with `timestamp` at `now`.
    pub fn observe(&mut self, split: usize, timestamp: i64, now: Instant) {
        let last = self.splits.len() - 1;
        let split = &mut self.splits[split.min(last)];
        split.max_timestamp = Some(split.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
        split.last_record = now;
    }

    /// The watermark at `now`, when it moved forward since the last one returned.
    pub fn advance(&mut self, now: Instant) -> Option<i64> {
        let idle = |split: &Split| {
            self.strategy
                .idle_timeout
                .is_some_and(|t| now.saturating_duration_since(split.last_record) >= t)
        };
        let clock = |split: &Split| {
            split
                .max_timestamp
                .map_or(i64::MIN, |m| m.saturating_sub(self.bound).saturating_sub(1))
        };
        let active = self
            .splits
            .iter()
            .filter(|split| !idle(split))
            .map(clock)
            .min();
        let least = match active {
            Some(least) => least,
            None => self
                .splits
                .iter()
                .filter(|split| split.max_timestamp.is_some())
                .map(clock)
                .min()?,
        };
        (least > self.emitted).then(|| {
            self.emitted = least;
            least
        })
    }
}

/// A source with watermarks derived from its records.
pub struct EventTime {
    inner: Box<dyn Source>,
    strategy: Strategy,
    clock: Option<Watermarks>,
}

impl EventTime {
    /// `inner`, with watermarks after `strategy`.
    pub fn new(inner: Box<dyn Source>, strategy: Strategy) -> Self {
        Self {
            inner,
            strategy,
            clock: None,
        }
    }
}

impl Source for EventTime {
    fn open(&mut self, restored: Option<Vec<Vec<u8>>>) -> Result<(), TaskError> {
        self.inner.open(restored)?;
        self.clock = Some(Watermarks::new(
            self.strategy,
            self.inner.splits(),
            Instant::now(),
        ));
        Ok(())
    }

    fn poll(&mut self, out: &mut Batch, max: usize) -> Result<SourcePoll, TaskError> {
        let start = out.len();
        let poll = self.inner.poll(out, max)?;
        if let Some(clock) = self.clock.as_mut() {
            let now = Instant::now();
            let splits = self.inner.record_splits();
            for i in start..out.len() {
                if let Some(timestamp) = out.get(i).timestamp {
                    let split = splits.get(i - start).map_or(0, |&s| s as usize);
                    clock.observe(split, timestamp, now);
                }
            }
        }
        Ok(poll)
    }

    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<SnapshotWriter, TaskError> {
        self.inner.snapshot(checkpoint)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        self.inner.notify_checkpoint_complete(checkpoint)
    }

    fn watermark(&mut self, now: Instant) -> Option<i64> {
        self.clock.as_mut()?.advance(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(bound_ms: u64, idle_ms: Option<u64>) -> Strategy {
        Strategy {
            max_out_of_orderness: Duration::from_millis(bound_ms),
            idle_timeout: idle_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn the_watermark_trails_the_highest_timestamp_by_the_bound_and_one_millisecond() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(strategy(100, None), 1, t0);
        assert_eq!(w.advance(t0), None, "nothing seen yet");
        w.observe(0, 1_000, t0);
        assert_eq!(w.advance(t0), Some(899));
        w.observe(0, 950, t0);
        assert_eq!(w.advance(t0), None, "a late record does not move it back");
        w.observe(0, 1_200, t0);
        assert_eq!(w.advance(t0), Some(1_099));
    }

    #[test]
    fn the_least_split_holds_the_watermark_back_until_it_is_idle() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(strategy(0, Some(1_000)), 2, t0);
        w.observe(0, 5_000, t0);
        assert_eq!(w.advance(t0), None, "split 1 has produced nothing yet");
        let later = t0 + Duration::from_millis(1_500);
        w.observe(0, 6_000, later);
        assert_eq!(w.advance(later), Some(5_999), "split 1 is idle now");
        w.observe(1, 7_000, later);
        assert_eq!(
            w.advance(later),
            None,
            "split 1 is active again, split 0 is behind it"
        );
        w.observe(0, 8_000, later);
        assert_eq!(w.advance(later), Some(6_999));
    }

    #[test]
    fn without_an_idle_timeout_a_silent_split_holds_the_watermark_forever() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(strategy(0, None), 2, t0);
        w.observe(0, 5_000, t0);
        assert_eq!(w.advance(t0 + Duration::from_secs(3_600)), None);
    }

    #[test]
    fn when_every_split_went_idle_the_clocks_of_those_with_records_stand() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(strategy(0, Some(100)), 3, t0);
        w.observe(0, 5_000, t0);
        w.observe(1, 4_000, t0);
        assert_eq!(w.advance(t0), None, "split 2 has produced nothing yet");
        assert_eq!(
            w.advance(t0 + Duration::from_secs(1)),
            Some(3_999),
            "all idle at once: split 2 holds nothing back, split 1 is the least"
        );
    }

    #[test]
    fn when_every_split_is_idle_the_watermark_stays() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(strategy(0, Some(10)), 1, t0);
        w.observe(0, 100, t0);
        assert_eq!(w.advance(t0), Some(99));
        assert_eq!(w.advance(t0 + Duration::from_secs(1)), None);
    }
}
