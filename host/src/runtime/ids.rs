//! Newtypes for the ids on the protocol path, so that a subtask index is never mistaken
//! for a key group or a checkpoint id. Checkpoint ids and subtask indexes serialise as
//! their bare numbers, as they appear in the statistics served to people.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A checkpoint's id. Ids grow monotonically, across restarts too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(pub u64);

/// Which parallel instance of a node a subtask is, from 0 to `parallelism - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubtaskIndex(pub u32);

/// A key group: the unit in which keyed state is partitioned and redistributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyGroup(pub u16);

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SubtaskIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for KeyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl SubtaskIndex {
    /// The index as a `usize`, for indexing per-subtask vectors.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}
