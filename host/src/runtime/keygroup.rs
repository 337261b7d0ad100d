//! Keys → key groups → subtasks, as Flink does it: a key hashes to one of
//! `max-parallelism` key groups, and each subtask owns a contiguous range of them. State
//! is partitioned by key group so that a job can later change its parallelism by moving
//! whole key groups.

use crate::runtime::ids::{KeyGroup, SubtaskIndex};
use xxhash_rust::xxh3::xxh3_64;

/// The largest number of key groups; Flink's bound, and what fits a `u16` key group.
pub const MAX_KEY_GROUPS: u32 = 32_768;

/// The key group of `key`. The hash (XXH3, seed 0) is fixed by its specification, so a
/// key lands in the same key group on every machine and in every version of Weir — a
/// checkpoint depends on that.
pub fn key_group_of(key: &[u8], max_parallelism: u32) -> KeyGroup {
    let group = xxh3_64(key) % u64::from(max_parallelism.clamp(1, MAX_KEY_GROUPS));
    KeyGroup(u16::try_from(group).unwrap_or(u16::MAX))
}

/// The subtask that owns `group` (Flink's `computeOperatorIndexForKeyGroup`).
pub fn subtask_for(group: KeyGroup, max_parallelism: u32, parallelism: u32) -> SubtaskIndex {
    let index = u64::from(group.0) * u64::from(parallelism) / u64::from(max_parallelism);
    SubtaskIndex(u32::try_from(index).unwrap_or(u32::MAX))
}

/// A contiguous, inclusive-exclusive range of key groups owned by one subtask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyGroupRange {
    /// The first key group of the range.
    pub start: u16,
    /// One past the last key group of the range.
    pub end: u16,
}

impl KeyGroupRange {
    /// The key groups subtask `index` of `parallelism` owns (Flink's
    /// `computeKeyGroupRangeForOperatorIndex`), consistent with [`subtask_for`].
    pub fn for_subtask(index: SubtaskIndex, parallelism: u32, max_parallelism: u32) -> Self {
        let (i, p, m) = (
            u64::from(index.0),
            u64::from(parallelism),
            u64::from(max_parallelism),
        );
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m).div_ceil(p);
        Self {
            start: u16::try_from(start).unwrap_or(u16::MAX),
            end: u16::try_from(end).unwrap_or(u16::MAX),
        }
    }

    /// Whether `group` is in the range.
    pub fn contains(self, group: KeyGroup) -> bool {
        (self.start..self.end).contains(&group.0)
    }

    /// How many key groups the range holds.
    pub fn len(self) -> usize {
        usize::from(self.end - self.start)
    }

    /// Whether the range holds no key group.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }

    /// The position of `group` within the range, if it is in it.
    pub fn offset(self, group: KeyGroup) -> Option<usize> {
        self.contains(group)
            .then(|| usize::from(group.0 - self.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_group_belongs_to_exactly_the_subtask_that_routes_to_it() {
        for (parallelism, max) in [(1, 128), (3, 128), (4, 128), (7, 10), (128, 128)] {
            for group in 0..max {
                let group = KeyGroup(u16::try_from(group).unwrap_or(0));
                let owner = subtask_for(group, max, parallelism);
                for subtask in 0..parallelism {
                    let range = KeyGroupRange::for_subtask(SubtaskIndex(subtask), parallelism, max);
                    assert_eq!(range.contains(group), owner == SubtaskIndex(subtask));
                }
            }
        }
    }

    #[test]
    fn the_ranges_of_all_subtasks_cover_all_key_groups() {
        let total: usize = (0..5)
            .map(|i| KeyGroupRange::for_subtask(SubtaskIndex(i), 5, 128).len())
            .sum();
        assert_eq!(total, 128);
    }

    #[test]
    fn a_key_always_hashes_to_the_same_key_group() {
        // Pinned values: changing the hash would orphan the state in every checkpoint.
        // The empty key's XXH3-64 is the specification's 0x2d06800538d394c2.
        assert_eq!(key_group_of(b"", 128), KeyGroup(66));
        assert_eq!(key_group_of(b"", 32_768), KeyGroup(5314));
        assert_eq!(key_group_of(b"weir", 128), KeyGroup(24));
        assert_eq!(key_group_of(b"weir", 32_768), KeyGroup(28_952));
        assert_eq!(key_group_of(b"river", 128), KeyGroup(3));
        assert_eq!(key_group_of(b"key-42", 128), KeyGroup(58));
        assert!(key_group_of(b"anything", 1) == KeyGroup(0));
    }
}
