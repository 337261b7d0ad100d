//! Word count, step two: counts the records of each key.
//!
//! For every keyed input record the operator adds one to the key's count, kept in the
//! host's keyed state (`ValueState<u64>` named `count`, so it is checkpointed and
//! restored with the job), and emits the key with its running count as the text
//! `"<key>\t<count>"`. It must sit behind a `key-by` edge: keyed state accepts only keys
//! of the subtask's own key groups.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use weir_sdk::{Context, Error, Operator, Output, Record, Result, ValueState};

/// The output value for `key` at `count`: the key as (lossy) UTF-8, a tab, the count.
///
/// ```
/// assert_eq!(word_count_counter::format_count(b"weir", 3), b"weir\t3");
/// ```
pub fn format_count(key: &[u8], count: u64) -> Vec<u8> {
    format!("{}\t{count}", String::from_utf8_lossy(key)).into_bytes()
}

/// The counter operator.
pub struct Counter {
    count: ValueState<u64>,
    /// The counts of the keys seen in the current batch. Words repeat a lot within a
    /// batch, so reading each key once and writing it back once per batch saves most
    /// of the two host calls per record a get and a set would cost. Kept between
    /// batches only for its capacity. Hashed with fixed keys: `RandomState` would pull
    /// in `wasi:random` for protection against crafted keys this map does not need.
    batch_counts: HashMap<Vec<u8>, u64, BuildHasherDefault<DefaultHasher>>,
}

impl Operator for Counter {
    fn open(_ctx: &Context) -> Result<Self> {
        Ok(Self {
            count: ValueState::open("count")?,
            batch_counts: HashMap::default(),
        })
    }

    fn process(&mut self, batch: Vec<Record>, out: &mut Output) -> Result<()> {
        // A batch that failed half-way left its counts here; they were never stored.
        self.batch_counts.clear();
        for record in batch {
            let key = record.key.ok_or_else(|| {
                Error::new("counter needs keyed input: set partition = \"key-by\" on this operator")
            })?;
            let count = match self.batch_counts.get_mut(&key) {
                Some(count) => {
                    *count += 1;
                    *count
                }
                None => {
                    let count = self.count.get(&key)?.unwrap_or(0) + 1;
                    self.batch_counts.insert(key.clone(), count);
                    count
                }
            };
            out.emit(Record {
                value: format_count(&key, count),
                key: Some(key),
                timestamp: record.timestamp,
            });
        }
        for (key, count) in self.batch_counts.drain() {
            self.count.set(&key, &count)?;
        }
        Ok(())
    }
}

weir_sdk::export_operator!(Counter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_value_is_the_key_a_tab_and_the_count() {
        assert_eq!(format_count(b"river", 12), b"river\t12");
    }

    #[test]
    fn a_key_that_is_not_utf8_is_shown_with_replacement_characters() {
        assert_eq!(format_count(&[b'a', 0xff], 1), "a\u{fffd}\t1".as_bytes());
    }

    #[test]
    fn the_largest_count_is_printed_in_full() {
        assert_eq!(
            format_count(b"k", u64::MAX),
            format!("k\t{}", u64::MAX).into_bytes()
        );
    }
}
