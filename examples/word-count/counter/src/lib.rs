//! Word count, step two: counts the records of each key.
//!
//! For every keyed input record the operator adds one to the key's count, kept in the
//! host's keyed state (`ValueState<u64>` named `count`, so it is checkpointed and
//! restored with the job), and emits the key with its running count as the text
//! `"<key>\t<count>"`. It must sit behind a `key-by` edge: keyed state accepts only keys
//! of the subtask's own key groups.

use weir_sdk::{Batch, Context, Operator, Output, Result, ValueState};

/// The output value for `key` at `count`: the key as (lossy) UTF-8, a tab, the count.
///
/// ```
/// assert_eq!(word_count_counter::format_count(b"weir", 3), b"weir\t3");
/// ```
pub fn format_count(key: &[u8], count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_count(&mut out, key, count);
    out
}

/// Appends [`format_count`]'s text to `out`, without an allocation when `key` is UTF-8.
pub fn write_count(out: &mut Vec<u8>, key: &[u8], count: u64) {
    match std::str::from_utf8(key) {
        Ok(_) => out.extend_from_slice(key),
        Err(_) => out.extend_from_slice(String::from_utf8_lossy(key).as_bytes()),
    }
    out.push(b'\t');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = count;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The counter operator.
pub struct Counter {
    count: ValueState<u64>,
}

impl Operator for Counter {
    fn open(_ctx: &Context) -> Result<Self> {
        Ok(Self {
            count: ValueState::open("count")?,
        })
    }

    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
        // One host call reads the counts of the batch's distinct keys, one writes them back.
        self.count.update_each(batch, |record, key, count| {
            let n = count.unwrap_or(0) + 1;
            *count = Some(n);
            out.emit_with(Some(key), record.timestamp, |value| {
                write_count(value, key, n);
            });
            Ok(())
        })
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
