//! Keyed timers of one subtask, in event time and in processing time, as Flink's
//! timer service: registering the same key and time twice sets one timer, and timers
//! fire in time order.
//!
//! The sets are persistent B-trees: a snapshot clones them in O(1) and the writes after
//! it copy only the nodes they touch, so the synchronous phase does not copy the timers
//! (as the heap backend's key groups, copy-on-write). In a snapshot they are sections
//! per key group of the one snapshot format ([`crate::checkpoint::snapshot`]), so that a
//! rescaled subtask takes the timers of the key groups it owns.

use crate::checkpoint::snapshot::{self, FormatError, SectionWriter, Sections, TimerDomain};
use crate::runtime::keygroup::key_group_of;
use imbl::OrdSet;
use serde::{Deserialize, Serialize};

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
    event: OrdSet<(i64, Vec<u8>)>,
    processing: OrdSet<(i64, Vec<u8>)>,
}

impl Timers {
    fn set(&mut self, domain: Domain) -> &mut OrdSet<(i64, Vec<u8>)> {
        match domain {
            Domain::EventTime => &mut self.event,
            Domain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer for `key` at `timestamp` (milliseconds).
    pub fn register(&mut self, domain: Domain, key: Vec<u8>, timestamp: i64) {
        self.set(domain).insert((timestamp, key));
    }

    /// Whether this timer is registered.
    pub fn contains(&self, domain: Domain, key: &[u8], timestamp: i64) -> bool {
        let set = match domain {
            Domain::EventTime => &self.event,
            Domain::ProcessingTime => &self.processing,
        };
        set.contains(&(timestamp, key.to_vec()))
    }

    /// Deletes a timer; nothing happens if there is none.
    pub fn delete(&mut self, domain: Domain, key: Vec<u8>, timestamp: i64) {
        self.set(domain).remove(&(timestamp, key));
    }

    /// Removes and returns the timers of `domain` due at `time`, oldest first.
    pub fn take_due(&mut self, domain: Domain, time: i64) -> Vec<(i64, Vec<u8>)> {
        let set = self.set(domain);
        let mut due = Vec::new();
        // One removal per due timer, O(log n) each: splitting the set would visit all.
        while set.get_min().is_some_and(|(t, _)| *t <= time) {
            if let Some(timer) = set.remove_min() {
                due.push(timer);
            }
        }
        due
    }

    /// The time of the earliest processing-time timer.
    pub fn next_processing_time(&self) -> Option<i64> {
        self.processing.get_min().map(|(t, _)| *t)
    }

    /// How many timers are registered in both domains.
    pub fn len(&self) -> usize {
        self.event.len() + self.processing.len()
    }

    /// Whether no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The timers as sections per key group of `max_parallelism` (off the subtask's
    /// thread: it hashes every key).
    pub fn to_sections(&self, max_parallelism: u32) -> Sections {
        let mut all: Vec<(u16, TimerDomain, i64, &[u8])> = Vec::with_capacity(self.len());
        for (domain, set) in [
            (TimerDomain::EventTime, &self.event),
            (TimerDomain::ProcessingTime, &self.processing),
        ] {
            for (time, key) in set {
                all.push((key_group_of(key, max_parallelism).0, domain, *time, key));
            }
        }
        all.sort_by_key(|t| t.0);
        let mut out = SectionWriter::new();
        for (group, domain, time, key) in all {
            out.group(crate::runtime::KeyGroup(group));
            out.timer(domain, time, key);
        }
        out.finish()
    }

    /// Registers every timer of restored `sections`.
    pub fn restore_sections(&mut self, sections: &[bytes::Bytes]) -> Result<(), FormatError> {
        for section in sections {
            for timer in snapshot::timers(section) {
                let (domain, time, key) = timer?;
                let domain = match domain {
                    TimerDomain::EventTime => Domain::EventTime,
                    TimerDomain::ProcessingTime => Domain::ProcessingTime,
                };
                self.register(domain, key.to_vec(), time);
            }
        }
        Ok(())
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
    fn timers_go_into_the_section_of_their_keys_group_and_come_back() -> Result<(), FormatError> {
        let mut t = Timers::default();
        t.register(Domain::EventTime, b"b".to_vec(), 2);
        t.register(Domain::EventTime, b"a".to_vec(), 1);
        t.register(Domain::ProcessingTime, b"c".to_vec(), 3);
        let sections = t.to_sections(128);
        let bytes = bytes::Bytes::from(sections.bytes.clone());
        let mut back = Timers::default();
        let mut only_a = Timers::default();
        for g in &sections.groups {
            let section = bytes.slice(g.offset as usize..(g.offset + g.len) as usize);
            back.restore_sections(std::slice::from_ref(&section))?;
            if g.group == key_group_of(b"a", 128).0 {
                only_a.restore_sections(&[section])?;
            }
        }
        assert_eq!(back, t);
        assert!(only_a.contains(Domain::EventTime, b"a", 1));
        assert!(
            !only_a.contains(Domain::ProcessingTime, b"c", 3)
                || key_group_of(b"c", 128) == key_group_of(b"a", 128)
        );
        Ok(())
    }

    #[test]
    fn a_snapshot_is_unchanged_by_later_registrations() {
        let mut t = Timers::default();
        t.register(Domain::EventTime, b"a".to_vec(), 1);
        let snapshot = t.clone();
        t.register(Domain::EventTime, b"b".to_vec(), 2);
        t.take_due(Domain::EventTime, 1);
        assert_eq!(snapshot.len(), 1);
        assert!(snapshot.contains(Domain::EventTime, b"a", 1));
        assert!(!snapshot.contains(Domain::EventTime, b"b", 2));
    }

    #[test]
    fn the_domains_are_independent() {
        let mut t = Timers::default();
        t.register(Domain::ProcessingTime, b"k".to_vec(), 5);
        assert!(t.take_due(Domain::EventTime, 100).is_empty());
        assert_eq!(t.next_processing_time(), Some(5));
    }
}
