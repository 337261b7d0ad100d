//! Keyed timers of one subtask, in event time and in processing time, as Flink's
//! timer service: registering the same key and time twice sets one timer, and timers
//! fire in time order.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The clock a timer is set on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// Fires when the watermark passes the timer.
    EventTime,
    /// Fires when the wall clock passes the timer.
    ProcessingTime,
}

/// The registered timers of one subtask.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    event: BTreeSet<(i64, Vec<u8>)>,
    processing: BTreeSet<(i64, Vec<u8>)>,
}

impl Timers {
    fn set(&mut self, domain: Domain) -> &mut BTreeSet<(i64, Vec<u8>)> {
        match domain {
            Domain::EventTime => &mut self.event,
            Domain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer for `key` at `timestamp` (milliseconds).
    pub fn register(&mut self, domain: Domain, key: Vec<u8>, timestamp: i64) {
        self.set(domain).insert((timestamp, key));
    }

    /// Deletes a timer; nothing happens if there is none.
    pub fn delete(&mut self, domain: Domain, key: Vec<u8>, timestamp: i64) {
        self.set(domain).remove(&(timestamp, key));
    }

    /// Removes and returns the timers of `domain` due at `time`, oldest first.
    pub fn take_due(&mut self, domain: Domain, time: i64) -> Vec<(i64, Vec<u8>)> {
        let set = self.set(domain);
        let later = match time.checked_add(1) {
            Some(bound) => set.split_off(&(bound, Vec::new())),
            None => BTreeSet::new(),
        };
        std::mem::replace(set, later).into_iter().collect()
    }

    /// The time of the earliest processing-time timer.
    pub fn next_processing_time(&self) -> Option<i64> {
        self.processing.first().map(|(t, _)| *t)
    }

    /// How many timers are registered in both domains.
    pub fn len(&self) -> usize {
        self.event.len() + self.processing.len()
    }

    /// Whether no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_timers_fire_in_time_order_and_only_once() {
        let mut t = Timers::default();
        t.register(Domain::EventTime, b"b".to_vec(), 20);
        t.register(Domain::EventTime, b"a".to_vec(), 10);
        t.register(Domain::EventTime, b"a".to_vec(), 10);
        t.register(Domain::EventTime, b"c".to_vec(), 30);
        assert_eq!(
            t.take_due(Domain::EventTime, 20),
            vec![(10, b"a".to_vec()), (20, b"b".to_vec())]
        );
        assert!(t.take_due(Domain::EventTime, 20).is_empty());
        assert_eq!(
            t.take_due(Domain::EventTime, i64::MAX),
            vec![(30, b"c".to_vec())]
        );
    }

    #[test]
    fn a_deleted_timer_never_fires() {
        let mut t = Timers::default();
        t.register(Domain::ProcessingTime, b"k".to_vec(), 5);
        t.delete(Domain::ProcessingTime, b"k".to_vec(), 5);
        assert!(t.take_due(Domain::ProcessingTime, 100).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn the_domains_are_independent() {
        let mut t = Timers::default();
        t.register(Domain::ProcessingTime, b"k".to_vec(), 5);
        assert!(t.take_due(Domain::EventTime, 100).is_empty());
        assert_eq!(t.next_processing_time(), Some(5));
    }
}
