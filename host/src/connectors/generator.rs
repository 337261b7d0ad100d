//! The `generator` source: deterministic records from a seed, for demos, tests and
//! benchmarks.
//!
//! Subtask `i` of `p` produces the sequence numbers `i, i + p, i + 2p, …` below `count`.
//! Record `n` has the key `key-<h(seed, n) mod keys>` and as value the decimal `n` (or
//! `value-size` bytes), so any run with the same settings produces the same records,
//! whatever the parallelism.
//!
//! # Checkpoints
//! The offset is the subtask's next sequence number: a snapshot records it, and a
//! restored generator continues from it, so the records before and after a restore
//! together are exactly the uninterrupted sequence.

use crate::connectors::rate::Pacer;
use crate::runtime::{
    Batch, CheckpointId, Fault, SnapshotWriter, Source, SourcePoll, TaskError, TaskInfo,
};
use serde::{Deserialize, Serialize};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GeneratorSettings {
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

/// What a generator's snapshot holds.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct GeneratorState {
    /// The sequence number of the next record.
    next: u64,
}

/// One subtask of a generator.
pub struct Generator {
    settings: GeneratorSettings,
    next: u64,
    step: u64,
    /// The first sequence number of this subtask: every one it produces is congruent to
    /// it modulo `step`, which lets `open` reject the state of another subtask.
    first: u64,
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
    /// The generator of subtask `info`.
    pub fn new(settings: GeneratorSettings, info: &TaskInfo) -> Self {
        let pacer = Pacer::new(settings.rate);
        let keys = if settings.keys <= PRERENDERED_KEYS {
            (0..settings.keys.max(1))
                .map(|k| decimal(b"key-", k))
                .collect()
        } else {
            Vec::new()
        };
        let first = u64::from(info.subtask.0);
        Self {
            settings,
            next: first,
            step: u64::from(info.parallelism.max(1)),
            first,
            pacer,
            keys,
        }
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
        let Some(bytes) = restored.and_then(|b| b.into_iter().next()) else {
            return Ok(());
        };
        let state: GeneratorState = postcard::from_bytes(&bytes).map_err(|e| {
            TaskError::failed(
                Fault::Host,
                format!("cannot decode the generator's restored offset: {e}"),
            )
        })?;
        if state.next % self.step != self.first % self.step {
            return Err(TaskError::failed(
                Fault::Host,
                format!(
                    "the restored offset {} belongs to another generator subtask (this one \
                     produces {} + {}k)",
                    state.next, self.first, self.step
                ),
            ));
        }
        self.next = state.next;
        Ok(())
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<SnapshotWriter, TaskError> {
        let state = GeneratorState { next: self.next };
        Ok(Box::new(move || {
            postcard::to_allocvec(&state).map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!("cannot encode the generator's offset: {e}"),
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
        while produced < allowed {
            if self.settings.count.is_some_and(|c| self.next >= c) {
                self.pacer.record(produced);
                return Ok(SourcePoll::Finished);
            }
            let n = self.next;
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
            self.next += self.step;
            produced += 1;
        }
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

    fn settings(count: u64) -> GeneratorSettings {
        GeneratorSettings {
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
    fn a_generator_refuses_the_offset_of_another_subtask() -> Result<(), TaskError> {
        let state = Generator::new(settings(10), &info(0, 2)).snapshot(CheckpointId(1))?()?;
        let mut other = Generator::new(settings(10), &info(1, 2));
        assert!(other.open(Some(vec![state])).is_err());
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
