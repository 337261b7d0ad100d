//! The contents of a checkpoint's `_metadata`: which checkpoint, of which job, and for
//! every subtask where its state is and how its checkpoint went. Storage frames and
//! checksums the bytes; this file only says what they mean.
//!
//! JSON, so that a person (and `weir checkpoints show`) can read it; it is small, since
//! the state itself lives in the data files it points to.

use crate::checkpoint::coordinator::SubtaskStats;
use crate::checkpoint::retention::{CheckpointFiles, SharedFile};
use crate::checkpoint::snapshot::{KeyedPart, StateParts};
use crate::runtime::CheckpointId;
use crate::storage::FileHandle;
use serde::{Deserialize, Serialize};

/// The version of this format; a reader refuses versions it does not know. Version 2
/// describes every subtask's state by its parts ([`StateParts`]).
pub const FORMAT_VERSION: u32 = 2;

/// Whether a snapshot is a periodic checkpoint or a savepoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    /// A checkpoint, owned by the job and deleted by retention.
    #[default]
    Checkpoint,
    /// A savepoint, owned by the user: self-contained, never deleted by Weir.
    Savepoint,
}

/// What `_metadata` records about one completed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckpointMetadata {
    /// [`FORMAT_VERSION`] when written.
    pub version: u32,
    /// The job's name.
    pub job: String,
    /// The checkpoint's id.
    pub checkpoint: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// The job's number of key groups, which a restore may not change.
    pub max_parallelism: u32,
    /// The state backend that wrote the keyed state ("heap" or "rocksdb").
    pub backend: String,
    /// "exactly-once" or "at-least-once".
    pub mode: String,
    /// When the coordinator triggered it, in milliseconds since the Unix epoch.
    pub triggered_at_ms: i64,
    /// When the last subtask acknowledged it, in milliseconds since the Unix epoch.
    pub completed_at_ms: i64,
    /// Every subtask of every node.
    pub tasks: Vec<TaskEntry>,
}

/// One subtask in a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TaskEntry {
    /// The node's id in the job file.
    pub node: String,
    /// Which subtask.
    pub subtask: u32,
    /// The node's parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// Where the subtask's state is.
    pub state: TaskState,
    /// Where its channel state is: the in-flight data an unaligned checkpoint
    /// persisted, replayed before any new input on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_state: Option<FileHandle>,
    /// How the subtask's part of the checkpoint went.
    pub stats: SubtaskStats,
}

/// Where a subtask's state is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// The subtask had finished: on restore it is passed through, not run again.
    Finished,
    /// Its snapshot's parts.
    Parts(StateParts),
}

impl TaskState {
    /// The files under `shared/` this state references.
    pub fn shared_files(&self) -> impl Iterator<Item = SharedFile> + '_ {
        let files = match self {
            TaskState::Parts(StateParts {
                keyed: Some(KeyedPart::Native { files, .. }),
                ..
            }) => files.as_slice(),
            TaskState::Finished | TaskState::Parts(_) => &[],
        };
        files
            .iter()
            .filter_map(|f| f.handle.path.strip_prefix("shared/"))
            .map(|name| SharedFile(name.to_owned()))
    }
}

impl CheckpointMetadata {
    /// The metadata as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data into a vector cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses stored metadata.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version = serde_json::from_slice::<Version>(bytes)
            .map_err(|e| format!("the metadata does not parse: {e}"))?
            .version;
        if version != FORMAT_VERSION {
            return Err(format!(
                "the metadata has format version {version}, this weir reads version {FORMAT_VERSION}{}",
                if version < FORMAT_VERSION {
                    " (an earlier Weir wrote it, before snapshots had parts per key group); restore it with that version"
                } else {
                    ""
                }
            ));
        }
        let metadata: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("the metadata does not parse: {e}"))?;
        Ok(metadata)
    }

    /// End-to-end duration in milliseconds: trigger to the last acknowledgement.
    pub fn end_to_end_ms(&self) -> i64 {
        self.completed_at_ms - self.triggered_at_ms
    }

    /// Bytes of state over all subtasks.
    pub fn state_size(&self) -> u64 {
        self.tasks.iter().map(|t| t.stats.state_size).sum()
    }

    /// Bytes this checkpoint uploaded over all subtasks: less than
    /// [`state_size`](Self::state_size) when it is incremental.
    pub fn checkpointed_size(&self) -> u64 {
        self.tasks.iter().map(|t| t.stats.checkpointed_size).sum()
    }

    /// Whether any subtask took it unaligned.
    pub fn is_unaligned(&self) -> bool {
        self.tasks.iter().any(|t| t.stats.unaligned)
    }

    /// Bytes of in-flight data persisted as channel state, over all subtasks.
    pub fn persisted_in_flight(&self) -> u64 {
        self.tasks.iter().map(|t| t.stats.persisted_in_flight).sum()
    }

    /// This checkpoint with the shared files it references, for retention.
    pub fn files(&self) -> CheckpointFiles {
        CheckpointFiles {
            id: CheckpointId(self.checkpoint),
            shared: self
                .tasks
                .iter()
                .flat_map(|t| t.state.shared_files())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StoredFile;

    fn sample() -> CheckpointMetadata {
        CheckpointMetadata {
            version: FORMAT_VERSION,
            job: "wc".into(),
            checkpoint: 7,
            kind: SnapshotKind::Checkpoint,
            max_parallelism: 128,
            backend: "heap".into(),
            mode: "exactly-once".into(),
            triggered_at_ms: 1_000,
            completed_at_ms: 1_250,
            tasks: vec![TaskEntry {
                node: "count".into(),
                subtask: 0,
                parallelism: 1,
                state: TaskState::Parts(StateParts {
                    file: Some(FileHandle {
                        path: "chk-7/count-0".into(),
                        size: 10,
                        checksum: 42,
                    }),
                    ..StateParts::default()
                }),
                channel_state: None,
                stats: SubtaskStats {
                    state_size: 10,
                    ..SubtaskStats::default()
                },
            }],
        }
    }

    #[test]
    fn metadata_survives_a_round_trip() -> Result<(), String> {
        let m = sample();
        assert_eq!(CheckpointMetadata::from_bytes(&m.to_bytes())?, m);
        assert_eq!(m.end_to_end_ms(), 250);
        assert_eq!(m.state_size(), 10);
        Ok(())
    }

    #[test]
    fn a_checkpoint_references_the_shared_files_of_its_backend_files() -> Result<(), String> {
        let mut m = sample();
        let handle = |path: &str| FileHandle {
            path: path.into(),
            size: 1,
            checksum: 1,
        };
        m.tasks[0].state = TaskState::Parts(StateParts {
            file: Some(handle("chk-7/count-0")),
            keyed: Some(KeyedPart::Native {
                backend: "rocksdb".into(),
                key_groups: crate::checkpoint::snapshot::GroupRange { start: 0, end: 128 },
                files: vec![
                    StoredFile {
                        name: "000009.sst".into(),
                        handle: handle("shared/count-0-ab-000009.sst"),
                    },
                    StoredFile {
                        name: "MANIFEST-000004".into(),
                        handle: handle("chk-7/count-0-MANIFEST-000004"),
                    },
                ],
            }),
            ..StateParts::default()
        });
        let m = CheckpointMetadata::from_bytes(&m.to_bytes())?;
        assert_eq!(
            m.files().shared.into_iter().collect::<Vec<_>>(),
            [SharedFile("count-0-ab-000009.sst".into())]
        );
        Ok(())
    }

    #[test]
    fn metadata_of_an_unknown_version_is_refused() {
        let mut m = sample();
        m.version = 99;
        let err = CheckpointMetadata::from_bytes(&m.to_bytes())
            .err()
            .unwrap_or_default();
        assert!(err.contains("version 99"), "{err}");
    }
}
