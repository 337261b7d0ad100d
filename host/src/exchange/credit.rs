//! Credit-based flow control of one channel, seen from its producing end: what the
//! remote consumer has room for, from the counts it last reported.
//!
//! The consumer reports cumulative counts (items and records it has taken, with its
//! lane's capacity and record limit), never increments, so that a report lost in a
//! queue or overtaken by a newer one changes nothing: the newest wins. The producer may
//! send an item when the consumer's lane would take it, by the same rule a channel in
//! memory applies ([`crate::runtime::channel`]): fewer items in flight than the
//! capacity, and a batch within the record limit or alone. A barrier's data goes out
//! whatever the credit (see [`crate::exchange`]), so the counts may overdraw; credit
//! returns once the consumer has taken the excess.

use crate::runtime::Message;
use crate::runtime::channel::Consumed;

/// The producer's view of one channel's credit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credit {
    sent_items: u64,
    sent_records: u64,
    /// The consumer's newest report; before the first, nothing may be sent.
    granted: Option<Consumed>,
}

impl Credit {
    /// Takes the consumer's report, unless an older one overtook a newer.
    pub fn grant(&mut self, consumed: Consumed) {
        if self.granted.is_none_or(|g| consumed.items >= g.items) {
            self.granted = Some(consumed);
        }
    }

    /// Whether the consumer has room for `message` now.
    pub fn allows(&self, message: &Message) -> bool {
        let Some(granted) = self.granted else {
            return false;
        };
        let items = self.sent_items.saturating_sub(granted.items);
        let records = self.sent_records.saturating_sub(granted.records);
        if items >= granted.capacity as u64 {
            return false;
        }
        match message {
            Message::Batch(batch) => {
                records == 0 || records + batch.len() as u64 <= granted.record_limit as u64
            }
            Message::Watermark(_) | Message::EndOfInput => true,
        }
    }

    /// Counts `message` as sent.
    pub fn sent(&mut self, message: &Message) {
        self.sent_items += 1;
        if let Message::Batch(batch) = message {
            self.sent_records += batch.len() as u64;
        }
    }

    /// The consumer's record limit, once it reported one.
    pub fn record_limit(&self) -> Option<usize> {
        self.granted.map(|g| g.record_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Record;

    fn batch(n: usize) -> Message {
        Message::Batch(vec![Record::new("x"); n].iter().collect())
    }

    fn report(items: u64, records: u64, capacity: usize, record_limit: usize) -> Consumed {
        Consumed {
            items,
            records,
            capacity,
            record_limit,
        }
    }

    #[test]
    fn nothing_goes_out_before_the_consumer_first_reports() {
        assert!(!Credit::default().allows(&batch(1)));
        assert!(!Credit::default().allows(&Message::EndOfInput));
    }

    #[test]
    fn the_capacity_bounds_the_items_in_flight_until_the_consumer_takes_some() {
        let mut credit = Credit::default();
        credit.grant(report(0, 0, 2, usize::MAX));
        for _ in 0..2 {
            assert!(credit.allows(&batch(5)));
            credit.sent(&batch(5));
        }
        assert!(!credit.allows(&batch(5)));
        assert!(
            !credit.allows(&Message::Watermark(1)),
            "a watermark takes a slot too"
        );
        credit.grant(report(1, 5, 2, usize::MAX));
        assert!(credit.allows(&batch(5)));
    }

    #[test]
    fn the_record_limit_bounds_records_but_an_empty_lane_takes_any_batch() {
        let mut credit = Credit::default();
        credit.grant(report(0, 0, 8, 10));
        assert!(credit.allows(&batch(25)), "nothing in flight: any batch");
        credit.sent(&batch(6));
        assert!(credit.allows(&batch(4)));
        assert!(!credit.allows(&batch(5)));
        assert!(
            credit.allows(&Message::Watermark(3)),
            "a watermark holds no records"
        );
        assert_eq!(credit.record_limit(), Some(10));
    }

    #[test]
    fn an_older_report_arriving_late_changes_nothing() {
        let mut credit = Credit::default();
        credit.grant(report(0, 0, 1, usize::MAX));
        credit.sent(&batch(1));
        credit.sent(&batch(1));
        credit.grant(report(2, 2, 1, usize::MAX));
        credit.grant(report(1, 1, 1, usize::MAX));
        assert!(credit.allows(&batch(1)));
    }

    #[test]
    fn an_overdraft_is_repaid_before_more_goes_out() {
        let mut credit = Credit::default();
        credit.grant(report(0, 0, 1, usize::MAX));
        for _ in 0..3 {
            credit.sent(&batch(1));
        }
        credit.grant(report(2, 2, 1, usize::MAX));
        assert!(!credit.allows(&batch(1)), "one item is still in flight");
        credit.grant(report(3, 3, 1, usize::MAX));
        assert!(credit.allows(&batch(1)));
    }
}
