//! A tumbling event-time window count per key: Flink's
//! `keyBy(key).window(TumblingEventTimeWindows.of(size)).count()`.
//!
//! A record with timestamp `t` belongs to the window `[start, start + size)` with
//! `start = t - t.rem_euclid(size)`, so windows are aligned to the epoch, negative
//! timestamps included. The operator counts the records of each key and window in keyed
//! state (`MapState<i64, u64>` named `counts`: window start → count) and registers an
//! event-time timer for the key at the window's last millisecond, `start + size - 1`
//! (Flink's `TimeWindow.maxTimestamp()`). When the watermark passes it, the timer emits
//! one record — the key, the value `"<key>\t<start>\t<count>"`, the timestamp
//! `start + size - 1` — and the window's count is removed. Counts and timers are the
//! host's, so they are checkpointed and restored with the job, and moved by key group on
//! a rescale.
//!
//! As in Flink, a record whose window has fired already (its last millisecond is at or
//! before the current watermark; allowed lateness 0) is dropped and logged, and a record
//! without a timestamp fails the call: it belongs to no event-time window. The operator
//! must sit behind a `key-by` edge.
//!
//! Everything but the host calls is in pure functions ([`Tumbling`], [`tally`],
//! [`write_window_count`], [`crosses_power_of_two`]), tested natively.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Deserialize;
use weir_sdk::{
    Batch, Context, Error, MapState, Operator, Output, RecordRef, Result, TimeDomain, Timers,
    timers,
};

/// The operator's `config`: a JSON object, or a TOML table in the job file.
///
/// ```
/// let ctx = weir_sdk::Context { config: r#"{"size-ms": 60000}"#.into(), ..Default::default() };
/// let config: window_count::Config = ctx.config_json().unwrap();
/// assert_eq!(config.size_ms, 60_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The length of every window in milliseconds; required, at least 1.
    pub size_ms: u64,
}

/// Tumbling windows of one size, aligned to the epoch.
///
/// ```
/// use window_count::{Tumbling, Window};
///
/// let minutes = Tumbling::new(60_000).unwrap();
/// let window = minutes.assign(90_000).unwrap();
/// assert_eq!(window, Window { start: 60_000, max_timestamp: 119_999 });
/// assert_eq!(minutes.of_timer(119_999), Some(window));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tumbling {
    /// At least 1: `new` refuses anything else.
    size: i64,
}

/// One window: the milliseconds `start..=max_timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// The first millisecond of the window.
    pub start: i64,
    /// The last millisecond of the window, `start + size - 1`: its timer's time and the
    /// timestamp of its result.
    pub max_timestamp: i64,
}

impl Tumbling {
    /// Windows `size_ms` milliseconds long; an error for 0 or a size beyond `i64`
    /// milliseconds, whose message names the config key.
    ///
    /// ```
    /// assert!(window_count::Tumbling::new(1000).is_ok());
    /// assert!(window_count::Tumbling::new(0).is_err());
    /// ```
    pub fn new(size_ms: u64) -> Result<Self> {
        match i64::try_from(size_ms) {
            Ok(size) if size >= 1 => Ok(Self { size }),
            _ => Err(Error::new(format!(
                "`size-ms` must be from 1 to {} milliseconds, not {size_ms}",
                i64::MAX
            ))),
        }
    }

    /// The window size in milliseconds.
    pub fn size(&self) -> i64 {
        self.size
    }

    /// The window of a record with timestamp `timestamp`; `None` when the window does
    /// not fit in `i64` milliseconds (within `size` of `i64::MIN` or `i64::MAX`).
    ///
    /// ```
    /// let seconds = window_count::Tumbling::new(1000).unwrap();
    /// assert_eq!(seconds.assign(-1).map(|w| w.start), Some(-1000));
    /// ```
    pub fn assign(&self, timestamp: i64) -> Option<Window> {
        let start = timestamp.checked_sub(timestamp.rem_euclid(self.size))?;
        let max_timestamp = start.checked_add(self.size - 1)?;
        Some(Window {
            start,
            max_timestamp,
        })
    }

    /// The window whose timer is at `max_timestamp`; `None` when it would start before
    /// `i64::MIN`, which no timer registered with this size does.
    pub fn of_timer(&self, max_timestamp: i64) -> Option<Window> {
        let start = max_timestamp.checked_sub(self.size - 1)?;
        Some(Window {
            start,
            max_timestamp,
        })
    }
}

impl Window {
    /// Whether the window has fired already at `watermark`: its timer, at
    /// `max_timestamp`, fires once the watermark reaches it. Before the first watermark
    /// nothing is late.
    ///
    /// ```
    /// let w = window_count::Window { start: 0, max_timestamp: 999 };
    /// assert!(w.is_late(Some(999)));
    /// assert!(!w.is_late(Some(998)));
    /// assert!(!w.is_late(None));
    /// ```
    pub fn is_late(&self, watermark: Option<i64>) -> bool {
        watermark.is_some_and(|w| self.max_timestamp <= w)
    }
}

/// What one batch adds to the windows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally<'a> {
    /// How many of the batch's records fall into each window of each key. Ordered, so
    /// that no hasher (and no `wasi:random` for its seed) is needed.
    pub counts: BTreeMap<(&'a [u8], Window), u64>,
    /// How many records were dropped because their window had fired already.
    pub late: u64,
}

/// Counts `records` by key and window, leaving out the late ones; an error for a record
/// without a key, without a timestamp, or with a timestamp whose window does not fit in
/// `i64`.
///
/// ```
/// use weir_sdk::RecordRef;
/// use window_count::{Tumbling, tally};
///
/// let seconds = Tumbling::new(1000).unwrap();
/// let records = [
///     RecordRef::new(b"").with_key(b"river").with_timestamp(1_500),
///     RecordRef::new(b"").with_key(b"river").with_timestamp(1_999),
///     RecordRef::new(b"").with_key(b"river").with_timestamp(400),
/// ];
/// let tally = tally(records, seconds, Some(999)).unwrap();
/// let counts: Vec<_> = tally.counts.iter().map(|((k, w), n)| (*k, w.start, *n)).collect();
/// assert_eq!(counts, [(&b"river"[..], 1_000, 2)]);
/// assert_eq!(tally.late, 1);
/// ```
pub fn tally<'a>(
    records: impl IntoIterator<Item = RecordRef<'a>>,
    windows: Tumbling,
    watermark: Option<i64>,
) -> Result<Tally<'a>> {
    let mut tally = Tally::default();
    for record in records {
        let key = record.key.ok_or(
            "a record without a key; a window per key needs keyed input: set partition = \"key-by\" on this operator",
        )?;
        let timestamp = record.timestamp.ok_or_else(|| {
            Error::new(format!(
                "a record of key `{}` has no timestamp, so it belongs to no event-time window; \
                 give the records event time at the source or in an operator before this one",
                String::from_utf8_lossy(key)
            ))
        })?;
        let window = windows.assign(timestamp).ok_or_else(|| {
            Error::new(format!(
                "the timestamp {timestamp} of a record of key `{}` has a window of {} ms that does not fit in 64-bit milliseconds",
                String::from_utf8_lossy(key),
                windows.size()
            ))
        })?;
        if window.is_late(watermark) {
            tally.late += 1;
        } else {
            *tally.counts.entry((key, window)).or_insert(0) += 1;
        }
    }
    Ok(tally)
}

/// Appends the value of a window's result to `out`: the key as (lossy) UTF-8, a tab,
/// the window start in milliseconds, a tab, the count.
///
/// ```
/// let mut out = Vec::new();
/// window_count::write_window_count(&mut out, b"river", -60_000, 3);
/// assert_eq!(out, b"river\t-60000\t3");
/// ```
pub fn write_window_count(out: &mut Vec<u8>, key: &[u8], start: i64, count: u64) {
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "{}\t{start}\t{count}", String::from_utf8_lossy(key));
}

/// Whether a power of two lies in `before + 1 ..= after`: the drop counts at which a
/// late record is logged, so that a stream with many late records writes a line per
/// doubling, not one per batch.
///
/// ```
/// use window_count::crosses_power_of_two;
/// assert!(crosses_power_of_two(0, 1));
/// assert!(crosses_power_of_two(5, 9));
/// assert!(!crosses_power_of_two(5, 7));
/// ```
pub fn crosses_power_of_two(before: u64, after: u64) -> bool {
    match before {
        _ if after <= before => false,
        0 => true,
        _ => after.ilog2() > before.ilog2(),
    }
}

/// The window-count operator.
pub struct WindowCount {
    windows: Tumbling,
    /// Per key: window start → how many records the window has counted.
    counts: MapState<i64, u64>,
    /// Late records this instance dropped, for the log only: not checkpointed.
    late: u64,
}

impl WindowCount {
    /// Logs when the drops so far reach another power of two.
    fn note_late(&mut self, dropped: u64, watermark: Option<i64>) {
        let before = self.late;
        self.late = before.saturating_add(dropped);
        if crosses_power_of_two(before, self.late) {
            weir_sdk::warn!(
                "dropped {dropped} late record(s): their window had fired at watermark {}; {} dropped since the operator opened (logged again when that doubles)",
                watermark.unwrap_or(i64::MIN),
                self.late
            );
        }
    }
}

impl Operator for WindowCount {
    fn open(ctx: &Context) -> Result<Self> {
        let config: Config = ctx.config_json()?;
        let windows = Tumbling::new(config.size_ms).map_err(|e| {
            Error::new(format!(
                "the config of operator `{}` is not valid: {e}",
                ctx.operator_id
            ))
        })?;
        Ok(Self {
            windows,
            counts: MapState::open("counts")?,
            late: 0,
        })
    }

    fn process(&mut self, batch: &Batch, _out: &mut Output) -> Result<()> {
        let watermark = timers::current_watermark();
        let tally = tally(batch.iter(), self.windows, watermark)?;
        if tally.late > 0 {
            self.note_late(tally.late, watermark);
        }
        if tally.counts.is_empty() {
            return Ok(());
        }
        // Three host calls per batch: read the counts of its windows, write them back,
        // register their timers (registering a timer that exists changes nothing).
        let windows = || tally.counts.keys().map(|(key, window)| (*key, window));
        let stored = self
            .counts
            .get_many(windows().map(|(key, window)| (key, &window.start)))?;
        let sums: Vec<u64> = tally
            .counts
            .values()
            .zip(stored)
            .map(|(&added, stored)| stored.unwrap_or(0).saturating_add(added))
            .collect();
        self.counts.put_many(
            windows()
                .zip(&sums)
                .map(|((key, window), sum)| (key, &window.start, sum)),
        )?;
        timers::register_many(
            TimeDomain::EventTime,
            windows().map(|(key, window)| (key, window.max_timestamp)),
        );
        Ok(())
    }

    fn on_timer(&mut self, fired: &Timers, out: &mut Output) -> Result<()> {
        // The operator registers event-time timers only.
        if fired.domain() != TimeDomain::EventTime {
            return Ok(());
        }
        let mut missing = 0;
        let mut windows: Vec<(&[u8], Window)> = Vec::with_capacity(fired.len());
        for timer in fired.iter() {
            match self.windows.of_timer(timer.timestamp) {
                Some(window) => windows.push((timer.key, window)),
                None => missing += 1,
            }
        }
        let counts = self
            .counts
            .get_many(windows.iter().map(|(key, window)| (*key, &window.start)))?;
        for ((key, window), count) in windows.iter().zip(&counts) {
            match count {
                Some(count) => out.emit_with(Some(key), Some(window.max_timestamp), |value| {
                    write_window_count(value, key, window.start, *count);
                }),
                None => missing += 1,
            }
        }
        if missing > 0 {
            weir_sdk::warn!(
                "{missing} window timer(s) fired without a count; was `size-ms` changed across a restore? Their windows are not emitted"
            );
        }
        self.counts
            .remove_many(windows.iter().map(|(key, window)| (*key, &window.start)))
    }
}

weir_sdk::export_operator!(WindowCount);

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds() -> Tumbling {
        Tumbling { size: 1000 }
    }

    fn record(key: &'static [u8], timestamp: i64) -> RecordRef<'static> {
        RecordRef::new(b"").with_key(key).with_timestamp(timestamp)
    }

    fn counts(tally: &Tally<'_>) -> Vec<(String, i64, u64)> {
        tally
            .counts
            .iter()
            .map(|((key, window), n)| (String::from_utf8_lossy(key).into_owned(), window.start, *n))
            .collect()
    }

    #[test]
    fn a_window_starts_at_a_multiple_of_its_size_and_ends_a_millisecond_before_the_next() {
        assert_eq!(
            seconds().assign(1_234),
            Some(Window {
                start: 1_000,
                max_timestamp: 1_999
            })
        );
        assert_eq!(seconds().assign(1_000).map(|w| w.start), Some(1_000));
        assert_eq!(seconds().assign(1_999).map(|w| w.start), Some(1_000));
        assert_eq!(seconds().assign(0).map(|w| w.max_timestamp), Some(999));
    }

    #[test]
    fn negative_timestamps_fall_into_the_window_below_them_not_toward_zero() {
        assert_eq!(
            seconds().assign(-1),
            Some(Window {
                start: -1_000,
                max_timestamp: -1
            })
        );
        assert_eq!(seconds().assign(-1_000).map(|w| w.start), Some(-1_000));
        assert_eq!(seconds().assign(-1_001).map(|w| w.start), Some(-2_000));
    }

    #[test]
    fn a_window_of_one_millisecond_holds_just_its_timestamp() {
        let ms = Tumbling::new(1).ok();
        assert_eq!(
            ms.and_then(|t| t.assign(-7)),
            Some(Window {
                start: -7,
                max_timestamp: -7
            })
        );
    }

    #[test]
    fn a_window_beyond_the_range_of_i64_is_none_rather_than_a_wrap() {
        let t = Tumbling { size: 3 };
        // i64::MIN is 1 modulo 3, so the window of it and of i64::MIN + 1 would start
        // 1 ms before i64::MIN; the next window starts at i64::MIN + 2.
        assert_eq!(t.assign(i64::MIN), None);
        assert_eq!(t.assign(i64::MIN + 1), None);
        assert_eq!(t.assign(i64::MIN + 2).map(|w| w.start), Some(i64::MIN + 2));
        // i64::MAX is 1 modulo 3 too: the window of it and of i64::MAX - 1 would end 1 ms
        // after i64::MAX; the window before ends at i64::MAX - 2.
        assert_eq!(t.assign(i64::MAX), None);
        assert_eq!(t.assign(i64::MAX - 1), None);
        assert_eq!(
            t.assign(i64::MAX - 2).map(|w| w.max_timestamp),
            Some(i64::MAX - 2)
        );
        let ms = Tumbling { size: 1 };
        assert_eq!(ms.assign(i64::MAX).map(|w| w.max_timestamp), Some(i64::MAX));
    }

    #[test]
    fn the_timer_of_a_window_leads_back_to_the_window() {
        let t = Tumbling { size: 60_000 };
        for timestamp in [-120_001, -1, 0, 59_999, 1_700_000_000_123] {
            let window = t.assign(timestamp);
            assert_eq!(window.and_then(|w| t.of_timer(w.max_timestamp)), window);
        }
    }

    #[test]
    fn a_size_of_zero_or_beyond_i64_is_refused_with_the_config_key() {
        for size in [0, u64::MAX, i64::MAX as u64 + 1] {
            let error = Tumbling::new(size).err();
            assert!(error.is_some_and(|e| e.message().contains("`size-ms`")));
        }
        assert_eq!(
            Tumbling::new(i64::MAX as u64).map(|t| t.size()),
            Ok(i64::MAX)
        );
    }

    #[test]
    fn the_config_needs_size_ms_and_nothing_else() {
        let parse = |text: &str| {
            Context {
                config: text.into(),
                ..Context::default()
            }
            .config_json::<Config>()
        };
        assert_eq!(parse(r#"{"size-ms": 1000}"#), Ok(Config { size_ms: 1000 }));
        assert!(parse("").is_err(), "the size has no default");
        assert!(parse(r#"{"size-ms": 1000, "offset-ms": 5}"#).is_err());
        assert!(parse(r#"{"size_ms": 1000}"#).is_err());
        assert!(parse(r#"{"size-ms": -1}"#).is_err());
    }

    #[test]
    fn records_are_counted_per_key_and_window() {
        let records = [
            record(b"a", 10),
            record(b"b", 20),
            record(b"a", 999),
            record(b"a", 1_000),
            record(b"a", -5),
        ];
        let tally = tally(records, seconds(), None);
        assert_eq!(
            tally.as_ref().map(counts),
            Ok(vec![
                ("a".into(), -1_000, 1),
                ("a".into(), 0, 2),
                ("a".into(), 1_000, 1),
                ("b".into(), 0, 1),
            ])
        );
        assert_eq!(tally.map(|t| t.late), Ok(0));
    }

    #[test]
    fn a_record_whose_window_ends_at_the_watermark_is_late_and_the_next_window_is_not() {
        let records = [record(b"a", 999), record(b"a", 0), record(b"a", 1_000)];
        let tally = tally(records, seconds(), Some(999));
        assert_eq!(tally.as_ref().map(counts), Ok(vec![("a".into(), 1_000, 1)]));
        assert_eq!(tally.map(|t| t.late), Ok(2));
    }

    #[test]
    fn before_the_first_watermark_no_record_is_late() {
        let tally = tally([record(b"a", i64::MIN / 2)], seconds(), None);
        assert_eq!(tally.map(|t| t.late), Ok(0));
    }

    #[test]
    fn a_record_without_a_timestamp_fails_the_batch_with_a_sentence_naming_its_key() {
        let records = [record(b"a", 1), RecordRef::new(b"").with_key(b"river")];
        let error = tally(records, seconds(), None).err();
        assert!(error.is_some_and(|e| {
            e.message()
                .starts_with("a record of key `river` has no timestamp")
        }));
    }

    #[test]
    fn a_record_without_a_key_fails_the_batch_and_says_to_key_the_input() {
        let error = tally([RecordRef::new(b"").with_timestamp(1)], seconds(), None).err();
        assert!(error.is_some_and(|e| e.message().contains("partition = \"key-by\"")));
    }

    #[test]
    fn a_timestamp_whose_window_does_not_fit_fails_the_batch() {
        let error = tally([record(b"a", i64::MAX)], seconds(), None).err();
        assert!(error.is_some_and(|e| e.message().contains("does not fit")));
    }

    #[test]
    fn the_output_value_is_key_start_and_count_separated_by_tabs() {
        let mut out = Vec::new();
        write_window_count(&mut out, b"river", 1_700_000_000_000, 12);
        assert_eq!(out, b"river\t1700000000000\t12");
    }

    #[test]
    fn the_output_value_is_appended_after_what_the_buffer_holds() {
        let mut out = b"before|".to_vec();
        write_window_count(&mut out, b"k", i64::MIN, u64::MAX);
        assert_eq!(
            out,
            format!("before|k\t{}\t{}", i64::MIN, u64::MAX).into_bytes()
        );
    }

    #[test]
    fn a_key_that_is_not_utf8_is_shown_with_replacement_characters() {
        let mut out = Vec::new();
        write_window_count(&mut out, &[b'a', 0xff], 0, 1);
        assert_eq!(out, "a\u{fffd}\t0\t1".as_bytes());
    }

    #[test]
    fn late_records_are_logged_at_the_first_and_at_every_doubling() {
        let logged: Vec<u64> = (1..=20u64)
            .filter(|&n| crosses_power_of_two(n - 1, n))
            .collect();
        assert_eq!(logged, [1, 2, 4, 8, 16]);
        assert!(
            crosses_power_of_two(3, 100),
            "a jump past several powers logs once"
        );
        assert!(!crosses_power_of_two(7, 7));
        assert!(!crosses_power_of_two(0, 0));
    }
}
