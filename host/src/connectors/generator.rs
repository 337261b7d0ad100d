//! The `generator` source: deterministic records from a seed, for demos, tests and
//! benchmarks.
//!
//! Record `n` has the key `key-<h(seed, n) mod keys>` and as value the decimal `n` (or
//! `value-size` bytes), so any run with the same settings produces the same records,
//! whatever the parallelism. With a `count`, the sequence numbers are those below it.
//!
//! # Splits
//! The sequence numbers are divided into `max-parallelism` splits: split `k` holds the
//! numbers `k + m · max-parallelism` for `m = 0, 1, 2, …` (its `m`-th number is on row
//! `m`). Subtask `i` of `p` owns the contiguous splits that it would own as key groups
//! ([`KeyGroupRange::for_subtask`]) and emits their numbers in increasing order, row by
//! row, so one subtask emits `0, 1, 2, …`.
//!
//! # Checkpoints
//! A snapshot records, for each owned split, the row of its next number: run-length
//! encoded, because the splits of a subtask that was never rescaled stand on at most two
//! rows (those it has passed in the current row, and the rest). A restore takes each
//! owned split's row from whichever restored state has it, so after a change of
//! parallelism the new subtasks together continue every split exactly where it stood.
//! A restored subtask whose splits stand on different rows (it took over subtasks that
//! had come different distances) emits the lagging splits' numbers until they catch up,
//! still in increasing order. The records before and after a restore together are
//! exactly the uninterrupted sequence.

use crate::connectors::SourceConnector;
use crate::connectors::rate::Pacer;
use crate::job::{JobError, Scope};
use crate::runtime::executor::SourceFactory;
use crate::runtime::keygroup::KeyGroupRange;
use crate::runtime::{
    Batch, CheckpointId, Fault, SnapshotWriter, Source, SourcePoll, SubtaskIndex, TaskError,
    TaskInfo,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `keys` when the job file sets none.
const DEFAULT_KEYS: u64 = 1000;

/// `[[source]]` with `kind = "generator"`: its own keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GeneratorConfig {
    count: Option<u64>,
    keys: Option<u64>,
    seed: Option<u64>,
    rate: Option<u64>,
    value_size: Option<usize>,
}

impl SourceConnector for GeneratorSpec {
    const KIND: &'static str = "generator";
    const TIMESTAMPS: bool = false;
    type Config = GeneratorConfig;

    fn validate(config: GeneratorConfig, scope: &Scope<'_>) -> Result<Self, JobError> {
        let keys = config.keys.unwrap_or(DEFAULT_KEYS);
        if keys == 0 {
            return Err(scope.invalid(
                "keys",
                format!(
                    "{}: `keys` is 0, but every record needs a key. Set keys = 1 or more.",
                    scope.label()
                ),
            ));
        }
        Ok(Self {
            count: config.count,
            keys,
            seed: config.seed.unwrap_or(0),
            rate: config.rate.unwrap_or(0),
            value_size: config.value_size.unwrap_or(0),
        })
    }

    fn factory(&self) -> SourceFactory {
        let spec = self.clone();
        Arc::new(move |info| Ok(Box::new(Generator::new(spec.clone(), info)) as Box<dyn Source>))
    }
}

/// What to generate: a generator source's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorSpec {
    /// How many records in all subtasks together; `None` is unbounded.
    pub count: Option<u64>,
    /// How many distinct keys.
    pub keys: u64,
    /// The seed of the key sequence.
    pub seed: u64,
    /// Records per second per subtask; 0 is as fast as possible.
    pub rate: u64,
    /// Bytes per value; 0 makes the value the decimal sequence number.
    pub value_size: usize,
}

/// Up to this many keys are rendered once up front; a record then copies its key
/// instead of formatting it (formatting dominated the generator's cost).
const PRERENDERED_KEYS: u64 = 1 << 20;

/// The most bytes `n`'s decimal digits take.
const MAX_DIGITS: usize = 20;

/// Splits `first..end` whose next numbers are all on row `row`: split `k`'s is
/// `k + row · max-parallelism`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SplitRun {
    first: u32,
    end: u32,
    row: u64,
}

/// What a generator's snapshot holds.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct GeneratorState {
    /// The number of splits the positions are of.
    max_parallelism: u32,
    /// The positions of the subtask's splits, by split, adjacent runs on different rows.
    runs: Vec<SplitRun>,
}

/// Joins adjacent runs on the same row, so that a state stays as short as it can.
fn merged(runs: impl IntoIterator<Item = SplitRun>) -> Vec<SplitRun> {
    let mut out: Vec<SplitRun> = Vec::new();
    for run in runs {
        match out.last_mut() {
            Some(last) if last.end == run.first && last.row == run.row => last.end = run.end,
            _ => out.push(run),
        }
    }
    out
}

/// The positions of the splits of `owned`, from the restored states of every subtask
/// that had them (one state at an unchanged parallelism, all of them after a rescale).
/// Each owned split must be in exactly one state: one in none would have to start
/// again from row 0 and emit its numbers twice, one in two is a corrupt checkpoint.
fn restored_runs(
    owned: KeyGroupRange,
    max_parallelism: u32,
    states: &[GeneratorState],
) -> Result<Vec<SplitRun>, String> {
    let (start, end) = (u32::from(owned.start), u32::from(owned.end));
    let mut runs = Vec::new();
    for state in states {
        if state.max_parallelism != max_parallelism {
            return Err(format!(
                "its positions are of {} splits (max-parallelism), but the job has {}",
                state.max_parallelism, max_parallelism
            ));
        }
        for run in &state.runs {
            if run.first >= run.end || run.end > max_parallelism {
                return Err(format!(
                    "its positions name splits {}..{}, which are not among the {} splits",
                    run.first, run.end, max_parallelism
                ));
            }
            let last_number = run
                .row
                .checked_mul(u64::from(max_parallelism))
                .and_then(|base| base.checked_add(u64::from(run.end)));
            if last_number.is_none() {
                return Err(format!(
                    "the position of splits {}..{} (row {}) is past the last sequence number",
                    run.first, run.end, run.row
                ));
            }
            let (first, last) = (run.first.max(start), run.end.min(end));
            if first < last {
                runs.push(SplitRun {
                    first,
                    end: last,
                    row: run.row,
                });
            }
        }
    }
    runs.sort_unstable_by_key(|r| r.first);
    let mut covered = start;
    for run in &runs {
        if run.first > covered {
            return Err(format!(
                "no restored state has the position of split {covered}"
            ));
        }
        if run.first < covered {
            return Err(format!(
                "two restored states have the position of split {}",
                run.first
            ));
        }
        covered = run.end;
    }
    if covered < end {
        return Err(format!(
            "no restored state has the position of split {covered}"
        ));
    }
    Ok(merged(runs))
}

/// Where a subtask stands in its splits, in the form its poll loop reads fast.
///
/// Every owned number below the frontier `next` has been emitted, except those of the
/// splits that are `ahead`: further on than the frontier, because a restore joined
/// subtasks that had come different distances. A split's position is the later of the
/// frontier's and its own in `ahead`; a split in `ahead` rejoins the frontier when the
/// frontier reaches its row. Without a rescale `ahead` is empty, and the poll loop only
/// counts up to `stop` (the end of the row, or the count) and jumps to the next row.
#[derive(Debug)]
struct Cursor {
    /// The number of splits.
    modulus: u64,
    /// The owned splits, `first..end`.
    first: u64,
    end: u64,
    /// Numbers from here on are not emitted (the count; `u64::MAX` when unbounded).
    limit: u64,
    /// The row of `next`, and its first number (`row · modulus`) and the end of its
    /// owned numbers (`row · modulus + end`), kept so that a jump to the next row is
    /// three additions.
    row: u64,
    base: u64,
    row_end: u64,
    /// The next number to emit, unless it is `stop`.
    next: u64,
    /// The numbers `next..stop` are emitted without further thought; at `stop` the
    /// cursor moves on with [`Cursor::advance`].
    stop: u64,
    /// Runs of splits further on than the frontier, by split.
    ahead: Vec<SplitRun>,
    /// The first run of `ahead` that the frontier has not passed in its row.
    ahead_at: usize,
}

impl Cursor {
    /// A cursor at `runs`, the positions of every split of `owned`, by split (as
    /// [`restored_runs`] checked them).
    fn new(owned: KeyGroupRange, max_parallelism: u32, limit: u64, runs: &[SplitRun]) -> Self {
        let modulus = u64::from(max_parallelism);
        let number =
            |split: u32, row: u64| row.saturating_mul(modulus).saturating_add(u64::from(split));
        // The frontier is the earliest next number of any split: no split is behind it.
        let frontier = runs
            .iter()
            .map(|r| number(r.first, r.row))
            .min()
            .unwrap_or(u64::MAX);
        let (row, column) = (frontier / modulus, frontier % modulus);
        // Behind the frontier's column the frontier has passed its row; from it on, not.
        // The parts stay apart (never merged across the column), so that no run ahead
        // holds the frontier's own split.
        let mut ahead = Vec::new();
        for run in runs {
            let (first, end) = (u64::from(run.first), u64::from(run.end));
            let parts = [
                (first, end.min(column), row.saturating_add(1)),
                (first.max(column), end, row),
            ];
            for (from, to, frontier_row) in parts {
                if from < to && run.row > frontier_row {
                    ahead.push(SplitRun {
                        first: u32::try_from(from).unwrap_or(u32::MAX),
                        end: u32::try_from(to).unwrap_or(u32::MAX),
                        row: run.row,
                    });
                }
            }
        }
        let ahead_at = ahead
            .iter()
            .position(|r| u64::from(r.first) >= column)
            .unwrap_or(ahead.len());
        let mut cursor = Self {
            modulus,
            first: u64::from(owned.start),
            end: u64::from(owned.end),
            limit,
            row,
            base: row.saturating_mul(modulus),
            row_end: row
                .saturating_mul(modulus)
                .saturating_add(u64::from(owned.end)),
            next: frontier,
            stop: frontier,
            ahead,
            ahead_at,
        };
        cursor.advance();
        cursor
    }

    /// A cursor at the start of every split of `owned`.
    fn fresh(owned: KeyGroupRange, max_parallelism: u32, limit: u64) -> Self {
        let start = SplitRun {
            first: u32::from(owned.start),
            end: u32::from(owned.end),
            row: 0,
        };
        let runs: &[SplitRun] = if owned.is_empty() { &[] } else { &[start] };
        Self::new(owned, max_parallelism, limit, runs)
    }

    /// Called at `stop`: moves `next` to the next number to emit (past the end of the
    /// row, past splits that are ahead) and sets `stop`; false when no number is left.
    /// Inlined for the common case, the jump to the next row: a subtask that owns one
    /// split comes here for every record.
    #[inline(always)]
    fn advance(&mut self) -> bool {
        if !self.ahead.is_empty() || self.first == self.end {
            return self.advance_among_runs();
        }
        if self.next >= self.row_end {
            self.row = self.row.saturating_add(1);
            self.base = self.base.saturating_add(self.modulus);
            self.row_end = self.row_end.saturating_add(self.modulus);
            self.next = self.base.saturating_add(self.first);
        }
        self.stop = self.row_end.min(self.limit);
        self.next < self.limit
    }

    /// [`Cursor::advance`] when some splits are ahead (or none is owned). Its loop
    /// turns once per row and per run ahead that it passes.
    #[inline(never)]
    fn advance_among_runs(&mut self) -> bool {
        if self.first == self.end {
            self.next = u64::MAX;
            self.stop = u64::MAX;
            return false;
        }
        let mut base = self.row.saturating_mul(self.modulus);
        loop {
            if self.next >= base.saturating_add(self.end) {
                self.row = self.row.saturating_add(1);
                base = self.row.saturating_mul(self.modulus);
                self.next = base.saturating_add(self.first);
                self.ahead_at = 0;
                if self.next >= self.limit {
                    break;
                }
                continue;
            }
            match self.ahead.get(self.ahead_at) {
                Some(run) if base.saturating_add(u64::from(run.first)) == self.next => {
                    if run.row > self.row {
                        self.next = base.saturating_add(u64::from(run.end));
                        self.ahead_at += 1;
                    } else {
                        // The frontier caught up with the run: it rejoins.
                        self.ahead.remove(self.ahead_at);
                    }
                }
                _ => break,
            }
        }
        let row_end = base.saturating_add(self.end);
        (self.base, self.row_end) = (base, row_end);
        let run_start = self
            .ahead
            .get(self.ahead_at)
            .map_or(row_end, |r| base.saturating_add(u64::from(r.first)));
        self.stop = row_end.min(run_start).min(self.limit);
        self.next < self.limit
    }

    /// The positions of the owned splits, for a snapshot: the later of the frontier's
    /// and the run ahead's, by split.
    fn runs(&self) -> Vec<SplitRun> {
        if self.first == self.end {
            return Vec::new();
        }
        let base = self.row.saturating_mul(self.modulus);
        let column = self.next.saturating_sub(base).clamp(self.first, self.end);
        let at = |k: u64| if k < column { self.row + 1 } else { self.row };
        let mut cuts = vec![self.first, column, self.end];
        for run in &self.ahead {
            cuts.push(u64::from(run.first));
            cuts.push(u64::from(run.end));
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut runs = Vec::with_capacity(cuts.len());
        let mut ahead = self.ahead.iter().peekable();
        for pair in cuts.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            while ahead.next_if(|r| u64::from(r.end) <= from).is_some() {}
            let own = ahead
                .peek()
                .filter(|r| u64::from(r.first) <= from)
                .map_or(0, |r| r.row);
            runs.push(SplitRun {
                first: u32::try_from(from).unwrap_or(u32::MAX),
                end: u32::try_from(to).unwrap_or(u32::MAX),
                row: at(from).max(own),
            });
        }
        merged(runs)
    }
}

/// One subtask of a generator.
pub struct Generator {
    settings: GeneratorSpec,
    subtask: SubtaskIndex,
    parallelism: u32,
    max_parallelism: u32,
    owned: KeyGroupRange,
    cursor: Cursor,
    pacer: Pacer,
    keys: Vec<Vec<u8>>,
}

/// Appends the decimal digits of `n` to `out`.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; MAX_DIGITS];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `prefix` followed by the decimal digits of `n`.
fn decimal(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + MAX_DIGITS);
    out.extend_from_slice(prefix);
    write_decimal(&mut out, n);
    out
}

impl Generator {
    /// The generator of subtask `info`, at the start of its splits.
    pub fn new(settings: GeneratorSpec, info: &TaskInfo) -> Self {
        let pacer = Pacer::new(settings.rate);
        let keys = if settings.keys <= PRERENDERED_KEYS {
            (0..settings.keys.max(1))
                .map(|k| decimal(b"key-", k))
                .collect()
        } else {
            Vec::new()
        };
        let parallelism = info.parallelism.max(1);
        let max_parallelism = info.max_parallelism.max(1);
        let owned = KeyGroupRange::for_subtask(info.subtask, parallelism, max_parallelism);
        let cursor = Cursor::fresh(owned, max_parallelism, settings.count.unwrap_or(u64::MAX));
        Self {
            settings,
            subtask: info.subtask,
            parallelism,
            max_parallelism,
            owned,
            cursor,
            pacer,
            keys,
        }
    }

    /// Restores from the checkpointed blobs: its own at the same parallelism, every old
    /// subtask's after a rescale (it takes the positions of the splits it owns now). No
    /// blob at all is a fresh start.
    pub fn restore(&mut self, states: &[Vec<u8>]) -> Result<(), TaskError> {
        let limit = self.settings.count.unwrap_or(u64::MAX);
        if states.is_empty() {
            self.cursor = Cursor::fresh(self.owned, self.max_parallelism, limit);
            return Ok(());
        }
        let refuse = |why: String| {
            TaskError::failed(
                Fault::Host,
                format!(
                    "the generator (subtask {} of {}) cannot restore its positions: {why}",
                    self.subtask, self.parallelism
                ),
            )
        };
        let decoded = states
            .iter()
            .map(|bytes| postcard::from_bytes::<GeneratorState>(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refuse(format!("a restored state does not decode ({e})")))?;
        let runs = restored_runs(self.owned, self.max_parallelism, &decoded).map_err(refuse)?;
        self.cursor = Cursor::new(self.owned, self.max_parallelism, limit, &runs);
        Ok(())
    }
}

/// SplitMix64: a fixed, well-mixed function of the seed and the sequence number.
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Source for Generator {
    fn open(&mut self, restored: Option<Vec<Vec<u8>>>) -> Result<(), TaskError> {
        self.restore(restored.as_deref().unwrap_or_default())
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<SnapshotWriter, TaskError> {
        let state = GeneratorState {
            max_parallelism: self.max_parallelism,
            runs: self.cursor.runs(),
        };
        let (subtask, parallelism) = (self.subtask, self.parallelism);
        Ok(Box::new(move || {
            postcard::to_allocvec(&state).map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!(
                        "cannot encode the positions of the generator (subtask {subtask} of \
                         {parallelism}): {e}"
                    ),
                )
            })
        }))
    }

    fn poll(&mut self, out: &mut Batch, max: usize) -> Result<SourcePoll, TaskError> {
        let allowed = self.pacer.allowance(max);
        if allowed == 0 {
            return Ok(SourcePoll::Idle(self.pacer.next_due()));
        }
        let keys = self.settings.keys.max(1);
        let mut produced = 0;
        // The cursor's hot fields in locals: `out` is borrowed mutably in the loop, and
        // the compiler would otherwise reload and store them around every push.
        let (mut next, mut stop) = (self.cursor.next, self.cursor.stop);
        while produced < allowed {
            if next >= stop {
                self.cursor.next = next;
                let more = self.cursor.advance();
                (next, stop) = (self.cursor.next, self.cursor.stop);
                if !more {
                    self.pacer.record(produced);
                    return Ok(SourcePoll::Finished);
                }
            }
            let n = next;
            let k = mix(self.settings.seed, n) % keys;
            let rendered;
            let key = match usize::try_from(k).ok().and_then(|i| self.keys.get(i)) {
                Some(key) => key.as_slice(),
                None => {
                    rendered = decimal(b"key-", k);
                    rendered.as_slice()
                }
            };
            let value_size = self.settings.value_size;
            out.push_with(Some(key), None, |value| {
                if value_size == 0 {
                    write_decimal(value, n);
                } else {
                    let digits = n.to_le_bytes();
                    value.extend((0..value_size).map(|i| digits[i % 8] | b'@'));
                }
            });
            next += 1;
            produced += 1;
        }
        self.cursor.next = next;
        self.pacer.record(produced);
        Ok(SourcePoll::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Record, SubtaskIndex};

    fn info(subtask: u32, parallelism: u32) -> TaskInfo {
        TaskInfo {
            node: "gen".into(),
            subtask: SubtaskIndex(subtask),
            parallelism,
            max_parallelism: 128,
            metrics: Default::default(),
        }
    }

    fn settings(count: u64) -> GeneratorSpec {
        GeneratorSpec {
            count: Some(count),
            keys: 10,
            seed: 7,
            rate: 0,
            value_size: 0,
        }
    }

    fn drain(g: &mut Generator) -> Result<Vec<Record>, TaskError> {
        let mut out = Batch::new();
        while g.poll(&mut out, 64)? != SourcePoll::Finished {}
        Ok(out.to_records())
    }

    #[test]
    fn parallel_subtasks_together_produce_the_same_records_as_one() -> Result<(), TaskError> {
        let mut one = drain(&mut Generator::new(settings(1000), &info(0, 1)))?;
        let mut three = Vec::new();
        for s in 0..3 {
            three.extend(drain(&mut Generator::new(settings(1000), &info(s, 3)))?);
        }
        one.sort_by(|a, b| a.value.cmp(&b.value));
        three.sort_by(|a, b| a.value.cmp(&b.value));
        assert_eq!(one.len(), 1000);
        assert_eq!(one, three);
        Ok(())
    }

    #[test]
    fn keys_stay_within_the_cardinality() -> Result<(), TaskError> {
        let records = drain(&mut Generator::new(settings(500), &info(0, 1)))?;
        let keys: std::collections::HashSet<_> =
            records.iter().filter_map(|r| r.key.clone()).collect();
        assert_eq!(keys.len(), 10);
        Ok(())
    }

    #[test]
    fn a_restored_generator_produces_exactly_the_records_after_its_snapshot()
    -> Result<(), TaskError> {
        let uninterrupted = drain(&mut Generator::new(settings(1000), &info(1, 3)))?;
        let mut first = Generator::new(settings(1000), &info(1, 3));
        first.open(None)?;
        let mut polled = Batch::new();
        first.poll(&mut polled, 100)?;
        let mut before = polled.to_records();
        let state = first.snapshot(CheckpointId(1))?()?;
        first.poll(&mut Batch::new(), 50)?;
        let mut second = Generator::new(settings(1000), &info(1, 3));
        second.open(Some(vec![state]))?;
        let after = drain(&mut second)?;
        assert_eq!(before.len(), 100);
        before.extend(after);
        assert_eq!(before, uninterrupted);
        Ok(())
    }

    #[test]
    fn a_finished_generator_restores_as_finished() -> Result<(), TaskError> {
        let mut first = Generator::new(settings(10), &info(0, 1));
        drain(&mut first)?;
        let state = first.snapshot(CheckpointId(4))?()?;
        let mut second = Generator::new(settings(10), &info(0, 1));
        second.open(Some(vec![state]))?;
        assert_eq!(second.poll(&mut Batch::new(), 64)?, SourcePoll::Finished);
        Ok(())
    }

    #[test]
    fn a_generator_refuses_the_positions_of_another_subtask() -> Result<(), TaskError> {
        let state = Generator::new(settings(10), &info(0, 2)).snapshot(CheckpointId(1))?()?;
        let mut other = Generator::new(settings(10), &info(1, 2));
        assert!(other.open(Some(vec![state])).is_err());
        Ok(())
    }

    fn state(max_parallelism: u32, runs: &[(u32, u32, u64)]) -> Vec<u8> {
        let runs = runs
            .iter()
            .map(|&(first, end, row)| SplitRun { first, end, row })
            .collect();
        postcard::to_allocvec(&GeneratorState {
            max_parallelism,
            runs,
        })
        .unwrap_or_default()
    }

    fn numbers(records: &[Record]) -> Vec<u64> {
        records
            .iter()
            .filter_map(|r| std::str::from_utf8(&r.value).ok()?.parse().ok())
            .collect()
    }

    /// The message of a refused restore.
    fn refusal(result: Result<(), TaskError>) -> String {
        match result {
            Err(TaskError::Failed { message, .. }) => message,
            other => format!("not refused: {other:?}"),
        }
    }

    /// Runs `parallelism` subtasks restored from `states` (none: a fresh start), each for
    /// its own number of records (some to the end, some not at all), and snapshots them
    /// all: what they emitted, and their states.
    fn run_partially(
        count: u64,
        parallelism: u32,
        states: &[Vec<u8>],
        seed: u64,
    ) -> Result<(Vec<u64>, Vec<Vec<u8>>), TaskError> {
        let mut emitted = Vec::new();
        let mut next = Vec::new();
        for s in 0..parallelism {
            let mut g = Generator::new(settings(count), &info(s, parallelism));
            g.restore(states)?;
            let mut out = Batch::new();
            let mut budget = mix(seed, u64::from(s)) % (2 * count / u64::from(parallelism) + 2);
            while budget > 0 {
                let take = usize::try_from(budget.min(37)).unwrap_or(37);
                if g.poll(&mut out, take)? == SourcePoll::Finished {
                    break;
                }
                budget -= u64::try_from(take).unwrap_or(0);
            }
            emitted.extend(numbers(&out.to_records()));
            next.push(g.snapshot(CheckpointId(1))?()?);
        }
        Ok((emitted, next))
    }

    /// Runs the subtasks of each parallelism of `chain` partially, each restored from
    /// all the states of the one before, and the last to the end. Checks that every
    /// subtask emits in increasing order and all together every number exactly once.
    fn rescale(count: u64, chain: &[u32], seed: u64) -> Result<(), TaskError> {
        let mut all = Vec::new();
        let mut states = Vec::new();
        let Some((last, hops)) = chain.split_last() else {
            return Ok(());
        };
        for (hop, &parallelism) in (0..).zip(hops) {
            let (emitted, next) = run_partially(count, parallelism, &states, seed * 31 + hop)?;
            all.extend(emitted);
            states = next;
        }
        for s in 0..*last {
            let mut g = Generator::new(settings(count), &info(s, *last));
            g.restore(&states)?;
            let emitted = numbers(&drain(&mut g)?);
            assert!(emitted.windows(2).all(|w| w[0] < w[1]), "{chain:?}");
            all.extend(emitted);
        }
        all.sort_unstable();
        assert_eq!(all, (0..count).collect::<Vec<_>>(), "{chain:?}, {seed}");
        Ok(())
    }

    #[test]
    fn one_subtask_emits_the_sequence_numbers_in_order() -> Result<(), TaskError> {
        let records = drain(&mut Generator::new(settings(1000), &info(0, 1)))?;
        assert_eq!(numbers(&records), (0..1000).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn a_subtask_emits_the_numbers_of_its_splits_in_increasing_order() -> Result<(), TaskError> {
        let range = KeyGroupRange::for_subtask(SubtaskIndex(1), 3, 128);
        let expected: Vec<u64> = (0..1000)
            .filter(|n| (range.start..range.end).contains(&u16::try_from(n % 128).unwrap_or(0)))
            .collect();
        let records = drain(&mut Generator::new(settings(1000), &info(1, 3)))?;
        assert_eq!(numbers(&records), expected);
        Ok(())
    }

    #[test]
    fn after_a_rescale_the_new_subtasks_emit_exactly_the_numbers_not_yet_emitted()
    -> Result<(), TaskError> {
        for (p_old, p_new) in [(2, 1), (1, 4), (3, 2), (2, 5), (4, 3), (5, 128), (128, 3)] {
            for seed in 0..4 {
                rescale(1000, &[p_old, p_new], seed)?;
            }
        }
        Ok(())
    }

    #[test]
    fn rescales_one_after_the_other_lose_and_repeat_nothing() -> Result<(), TaskError> {
        for chain in [[3, 2, 5, 1], [1, 7, 2, 2], [4, 128, 9, 3], [2, 2, 3, 3]] {
            for seed in 0..4 {
                rescale(3000, &chain, seed)?;
            }
        }
        Ok(())
    }

    #[test]
    fn a_subtask_that_took_over_splits_at_different_rows_lets_the_laggards_catch_up()
    -> Result<(), TaskError> {
        // Splits 0..64 stand on row 3, splits 64..128 on row 1 (the slower old subtask).
        let mut g = Generator::new(settings(600), &info(0, 1));
        g.restore(&[state(128, &[(0, 64, 3)]), state(128, &[(64, 128, 1)])])?;
        let expected: Vec<u64> = (192..600)
            .filter(|n| n % 128 >= 64 || n / 128 >= 3)
            .collect();
        let mut emitted = Vec::new();
        loop {
            let mut out = Batch::new();
            let finished = g.poll(&mut out, 50)? == SourcePoll::Finished;
            emitted.extend(numbers(&out.to_records()));
            // A snapshot in the middle of the catch-up restores to the same place.
            let mut copy = Generator::new(settings(600), &info(0, 1));
            copy.restore(&[g.snapshot(CheckpointId(2))?()?])?;
            let mut rest = emitted.clone();
            rest.extend(numbers(&drain(&mut copy)?));
            assert_eq!(rest, expected);
            if finished {
                break;
            }
        }
        assert_eq!(emitted, expected);
        Ok(())
    }

    #[test]
    fn positions_survive_a_snapshot_and_a_restore_unchanged() {
        let owned = KeyGroupRange::for_subtask(SubtaskIndex(0), 1, 16);
        for runs in [
            vec![SplitRun {
                first: 0,
                end: 16,
                row: 0,
            }],
            vec![
                SplitRun {
                    first: 0,
                    end: 5,
                    row: 8,
                },
                SplitRun {
                    first: 5,
                    end: 16,
                    row: 7,
                },
            ],
            vec![
                SplitRun {
                    first: 0,
                    end: 3,
                    row: 2,
                },
                SplitRun {
                    first: 3,
                    end: 9,
                    row: 9,
                },
                SplitRun {
                    first: 9,
                    end: 10,
                    row: 1,
                },
                SplitRun {
                    first: 10,
                    end: 16,
                    row: 4,
                },
            ],
        ] {
            assert_eq!(Cursor::new(owned, 16, u64::MAX, &runs).runs(), runs);
        }
    }

    #[test]
    fn a_finished_generator_restores_as_finished_at_another_parallelism() -> Result<(), TaskError> {
        let mut states = Vec::new();
        for s in 0..2 {
            let mut g = Generator::new(settings(300), &info(s, 2));
            drain(&mut g)?;
            states.push(g.snapshot(CheckpointId(1))?()?);
        }
        for s in 0..3 {
            let mut g = Generator::new(settings(300), &info(s, 3));
            g.restore(&states)?;
            assert_eq!(g.poll(&mut Batch::new(), 64)?, SourcePoll::Finished);
        }
        Ok(())
    }

    #[test]
    fn no_blob_at_all_is_a_fresh_start() -> Result<(), TaskError> {
        let mut g = Generator::new(settings(10), &info(0, 1));
        g.poll(&mut Batch::new(), 5)?;
        g.restore(&[])?;
        assert_eq!(numbers(&drain(&mut g)?), (0..10).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn a_split_in_no_restored_state_is_refused_not_restarted() -> Result<(), TaskError> {
        let message = refusal(
            Generator::new(settings(10), &info(0, 1)).restore(&[state(128, &[(0, 64, 2)])]),
        );
        assert!(message.contains("generator (subtask 0 of 1)"), "{message}");
        assert!(
            message.contains("no restored state has the position of split 64"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn a_split_in_two_restored_states_is_refused() {
        let states = [state(128, &[(0, 70, 2)]), state(128, &[(64, 128, 2)])];
        let message = refusal(Generator::new(settings(10), &info(0, 1)).restore(&states));
        assert!(
            message.contains("two restored states have the position of split 64"),
            "{message}"
        );
    }

    #[test]
    fn a_state_of_another_max_parallelism_is_refused() {
        let message = refusal(
            Generator::new(settings(10), &info(0, 1)).restore(&[state(256, &[(0, 256, 0)])]),
        );
        assert!(
            message.contains("256 splits (max-parallelism), but the job has 128"),
            "{message}"
        );
    }

    #[test]
    fn corrupt_states_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let mut g = Generator::new(settings(10), &info(0, 1));
        // The format before splits: the bare next sequence number.
        let old = postcard::to_allocvec(&17u64)?;
        for bytes in [
            vec![0xff; 3],
            old,
            state(128, &[(0, 200, 0)]),
            state(128, &[(5, 5, 0)]),
        ] {
            let message = refusal(g.restore(&[bytes]));
            assert!(
                message.contains("the generator (subtask 0 of 1)"),
                "{message}"
            );
        }
        let huge = state(128, &[(0, 128, u64::MAX / 64)]);
        assert!(refusal(g.restore(&[huge])).contains("past the last sequence number"));
        Ok(())
    }

    #[test]
    fn the_state_stays_small_with_the_most_splits() -> Result<(), TaskError> {
        let mut info = info(0, 1);
        info.max_parallelism = 32_768;
        let mut g = Generator::new(settings(1_000_000), &info);
        g.poll(&mut Batch::new(), 50_000)?;
        let state = g.snapshot(CheckpointId(1))?()?;
        assert!(state.len() < 32, "{} bytes", state.len());
        Ok(())
    }

    #[test]
    fn decimal_renders_like_display() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            assert_eq!(decimal(b"k-", n), format!("k-{n}").into_bytes());
        }
    }

    #[test]
    fn values_have_the_requested_size() -> Result<(), TaskError> {
        let mut s = settings(5);
        s.value_size = 100;
        let records = drain(&mut Generator::new(s, &info(0, 1)))?;
        assert!(records.iter().all(|r| r.value.len() == 100));
        Ok(())
    }
}
