//! Keyed state: the [`KeyedStateBackend`] trait that operators' state calls go through,
//! and its implementations.
//!
//! A backend belongs to one subtask and holds the value, list and map states the
//! operator opened, for the key groups the subtask owns. It knows nothing of WASM,
//! channels or checkpoint storage; callers pass the key group with every call so the
//! backend never hashes a key itself.
//!
//! # Layout
//! - `heap`: states in hash maps on the heap, one copy-on-write map per key group.
//! - `rocksdb`: states in an embedded RocksDB instance, one column family per state,
//!   written behind an in-memory buffer; snapshots are RocksDB's native checkpoints,
//!   taken in the asynchronous phase and uploaded incrementally.
//! - `timers`: keyed event-time and processing-time timers.

mod heap;
mod rocksdb;
mod timers;

pub use heap::HeapBackend;
pub use rocksdb::{RocksDbBackend, RocksDbOptions};
pub use timers::{Domain, Timers};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checkpoint::snapshot::{EntryKind, KeyedSections, KeyedState, SnapshotType};
use crate::runtime::batch::{BlobLists, Blobs, MaybeBlobs};
use crate::runtime::ids::{CheckpointId, KeyGroup};
use crate::storage::FileHandle;

/// The kind of a state, fixed when it is first opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// One value per key.
    Value,
    /// A list of values per key.
    List,
    /// A map of user keys to values per key.
    Map,
}

impl From<StateKind> for EntryKind {
    fn from(kind: StateKind) -> Self {
        match kind {
            StateKind::Value => Self::Value,
            StateKind::List => Self::List,
            StateKind::Map => Self::Map,
        }
    }
}

impl From<EntryKind> for StateKind {
    fn from(kind: EntryKind) -> Self {
        match kind {
            EntryKind::Value => Self::Value,
            EntryKind::List => Self::List,
            EntryKind::Map => Self::Map,
        }
    }
}

/// A state opened on a backend: an index into the backend's states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateId(pub u32);

/// Why a state call failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The operator's code opened a state under two kinds.
    #[error(
        "state `{name}` was opened as {existing:?} state and cannot be opened as {requested:?} state"
    )]
    KindMismatch {
        /// The state's name.
        name: String,
        /// The kind it has.
        existing: StateKind,
        /// The kind asked for.
        requested: StateKind,
    },
    /// A call named a state id the backend never handed out: a host bug.
    #[error("no state with id {0:?} is open (host bug)")]
    UnknownState(StateId),
    /// A call used a state as another kind than it was opened as: a host bug.
    #[error("state id {0:?} is not a {1:?} state (host bug)")]
    WrongKind(StateId, StateKind),
    /// A snapshot could not be encoded or decoded.
    #[error("{0}")]
    Corrupt(String),
    /// A write would grow the heap backend's state past its limit. The guest's doing:
    /// a runaway, as running out of fuel is.
    #[error(
        "keyed state `{state}` would take this subtask's state on the heap past [state] heap-limit = \"{}\" (to {}). Raise heap-limit, or set [state] backend = \"rocksdb\", which keeps state on disk",
        crate::job::format_size(*.limit).replace(' ', ""),
        crate::observe::human_size(*.wanted)
    )]
    OverLimit {
        /// The state written.
        state: String,
        /// Bytes the state would hold after the write.
        wanted: u64,
        /// `[state] heap-limit`.
        limit: u64,
    },
}

/// The asynchronous half of a backend snapshot: writes the state captured by
/// [`KeyedStateBackend::snapshot`] in the canonical format, off the subtask's thread.
pub type StateWriter = Box<dyn FnOnce() -> Result<KeyedState, StateError> + Send>;

/// The entries of one key's map state: user key and value.
pub type MapEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The keys of a bulk state call, each with its key group, which the caller computed
/// once and checked belongs to the subtask.
#[derive(Clone, Copy, Debug)]
pub struct GroupedKeys<'a> {
    /// The keys.
    pub keys: &'a Blobs,
    /// Key `i`'s key group; one per key.
    pub groups: &'a [KeyGroup],
}

impl<'a> GroupedKeys<'a> {
    /// The keys with their groups, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (KeyGroup, &'a [u8])> + 'a {
        let keys = self.keys;
        self.groups
            .iter()
            .enumerate()
            .map(move |(i, &group)| (group, keys.get(i)))
    }
}

/// The keyed state of one subtask.
///
/// Every call names the key group of `key`; the caller has checked it belongs to the
/// subtask. Values are opaque bytes.
///
/// The `_many` calls work on many keys at once: item `i` of every argument belongs
/// together, and results are appended to `out` in key order. Their default bodies loop
/// over the single-key calls; backends override them with bulk paths. A `_many` call
/// that fails may have appended to `out`, but the caller discards it.
pub trait KeyedStateBackend: Send {
    /// Opens the state called `name`, creating it if needed.
    fn open_state(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError>;

    /// The value of `key` in value state `state`.
    fn value_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError>;
    /// Sets the value of `key`.
    fn value_set(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError>;

    /// The list of `key` in list state `state`, oldest first.
    fn list_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateError>;
    /// Appends `value` to the list of `key`.
    fn list_add(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError>;
    /// Replaces the list of `key`.
    fn list_update(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        values: Vec<Vec<u8>>,
    ) -> Result<(), StateError>;

    /// The value under `user_key` in the map of `key`.
    fn map_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError>;
    /// Puts `value` under `user_key` in the map of `key`.
    fn map_put(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        user_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError>;
    /// Removes `user_key` from the map of `key`.
    fn map_remove(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<(), StateError>;
    /// All entries of the map of `key`.
    fn map_entries(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<MapEntries, StateError>;

    /// Removes everything `key` has in `state`, whatever its kind.
    fn clear(&mut self, state: StateId, group: KeyGroup, key: &[u8]) -> Result<(), StateError>;

    /// The values of `keys` in value state `state`.
    fn value_get_many(
        &self,
        state: StateId,
        keys: GroupedKeys<'_>,
        out: &mut MaybeBlobs,
    ) -> Result<(), StateError> {
        for (group, key) in keys.iter() {
            out.push(self.value_get(state, group, key)?.as_deref());
        }
        Ok(())
    }
    /// Sets the value of each key to the same item of `values`.
    fn value_set_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        values: &Blobs,
    ) -> Result<(), StateError> {
        for (i, (group, key)) in keys.iter().enumerate() {
            self.value_set(state, group, key.to_vec(), values.get(i).to_vec())?;
        }
        Ok(())
    }
    /// Removes everything `keys` have in `state`, whatever its kind.
    fn clear_many(&mut self, state: StateId, keys: GroupedKeys<'_>) -> Result<(), StateError> {
        for (group, key) in keys.iter() {
            self.clear(state, group, key)?;
        }
        Ok(())
    }
    /// The lists of `keys` in list state `state`.
    fn list_get_many(
        &self,
        state: StateId,
        keys: GroupedKeys<'_>,
        out: &mut BlobLists,
    ) -> Result<(), StateError> {
        for (group, key) in keys.iter() {
            let list = self.list_get(state, group, key)?;
            out.push(list.iter().map(Vec::as_slice));
        }
        Ok(())
    }
    /// Appends each item of `values` to the list of the same key, in order.
    fn list_add_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        values: &Blobs,
    ) -> Result<(), StateError> {
        for (i, (group, key)) in keys.iter().enumerate() {
            self.list_add(state, group, key.to_vec(), values.get(i).to_vec())?;
        }
        Ok(())
    }
    /// For each `i`, the value under `user_keys` item `i` in the map of key `i`.
    fn map_get_many(
        &self,
        state: StateId,
        keys: GroupedKeys<'_>,
        user_keys: &Blobs,
        out: &mut MaybeBlobs,
    ) -> Result<(), StateError> {
        for (i, (group, key)) in keys.iter().enumerate() {
            out.push(
                self.map_get(state, group, key, user_keys.get(i))?
                    .as_deref(),
            );
        }
        Ok(())
    }
    /// For each `i`, puts `values` item `i` under `user_keys` item `i` in the map of
    /// key `i`.
    fn map_put_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        user_keys: &Blobs,
        values: &Blobs,
    ) -> Result<(), StateError> {
        for (i, (group, key)) in keys.iter().enumerate() {
            self.map_put(
                state,
                group,
                key.to_vec(),
                user_keys.get(i).to_vec(),
                values.get(i).to_vec(),
            )?;
        }
        Ok(())
    }
    /// For each `i`, removes `user_keys` item `i` from the map of key `i`.
    fn map_remove_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        user_keys: &Blobs,
    ) -> Result<(), StateError> {
        for (i, (group, key)) in keys.iter().enumerate() {
            self.map_remove(state, group, key, user_keys.get(i))?;
        }
        Ok(())
    }

    /// The synchronous phase of a snapshot for `checkpoint`: captures a consistent view
    /// of every state, as cheaply as the backend can, and returns what the asynchronous
    /// phase stores. A canonical savepoint must come back as
    /// [`BackendSnapshot::Encoded`]; a native one as files that are all
    /// [`Upload::Private`] (a savepoint is self-contained) and that later checkpoints
    /// never refer to.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        kind: SnapshotType,
    ) -> Result<BackendSnapshot, StateError>;

    /// Replaces all state with what snapshots stored, keeping the key groups this
    /// backend owns: one old subtask's at the same parallelism, several after a
    /// rescale.
    fn restore(&mut self, restored: RestoredState) -> Result<(), StateError>;

    /// `checkpoint` completed: files it uploaded may be referenced by later snapshots.
    fn checkpoint_complete(&mut self, _checkpoint: CheckpointId) {}

    /// `checkpoint` was aborted: what it uploaded must not be referenced.
    fn checkpoint_aborted(&mut self, _checkpoint: CheckpointId) {}
}

/// What a backend's synchronous snapshot phase captured.
pub enum BackendSnapshot {
    /// State to write in the canonical format off the subtask's thread; it is stored in
    /// the subtask's state file (the heap backend; any backend in a canonical savepoint).
    Encoded(StateWriter),
    /// A native checkpoint in a local directory, whose files are uploaded (RocksDB).
    Files(LocalSnapshot),
}

/// A backend's checkpoint for local disk, which the asynchronous phase makes and then
/// stores.
pub struct LocalSnapshot {
    /// Makes the files, off the subtask's thread: the asynchronous phase runs it first.
    /// The backend may wait for it (it keeps one in flight), so it must be run or
    /// dropped soon. Dropping it unrun discards the snapshot (a declined one): nothing
    /// is on disk yet, and the backend keeps the state it captured as live state.
    pub prepare: PrepareFiles,
    /// Called with where every file went, once all are stored, so that later
    /// incremental snapshots can refer to them once the checkpoint completes.
    pub uploaded: UploadedCallback,
}

/// What a [`LocalSnapshot`] runs to make its files.
pub type PrepareFiles = Box<dyn FnOnce() -> Result<LocalFiles, StateError> + Send>;

/// What a [`LocalSnapshot`] calls with where its files went.
pub type UploadedCallback = Box<dyn FnOnce(&[StoredFile]) + Send>;

/// The files a [`LocalSnapshot`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFiles {
    /// The directory holding the files. The asynchronous phase removes it once the
    /// files are stored (or storing them failed).
    pub dir: PathBuf,
    /// Every file the restore needs.
    pub files: Vec<LocalFile>,
}

/// One file of a [`LocalSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// Its name in the backend's directory (`000012.sst`, `MANIFEST-000005`); a
    /// restore puts it back under this name.
    pub name: String,
    /// Where it is now.
    pub path: PathBuf,
    /// How to store it.
    pub upload: Upload,
}

/// How the asynchronous phase stores a [`LocalFile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upload {
    /// It is already stored, by a completed checkpoint: refer to it, upload nothing.
    Reuse(FileHandle),
    /// Store it as `shared/<name>`, where later checkpoints can refer to it. The name
    /// is unique to the content.
    Shared(String),
    /// Store it with this checkpoint only.
    Private,
}

/// Where one file of a backend's snapshot is stored: recorded in `_metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StoredFile {
    /// Its name in the backend's directory.
    pub name: String,
    /// Where it is stored.
    pub handle: FileHandle,
}

/// What a backend restores from.
#[derive(Debug)]
pub enum RestoredState {
    /// Canonical sections, per old subtask, of the key groups the backend owns.
    Canonical(Vec<KeyedSections>),
    /// The native files of every old subtask whose key groups overlap the backend's,
    /// downloaded and verified; the backend keeps only the key groups it owns.
    Files(Vec<RestoredFiles>),
}

/// The files of a backend's snapshot, downloaded and verified into `dir` under their
/// names. The backend takes the directory over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredFiles {
    /// Where the files are.
    pub dir: PathBuf,
    /// Where each was stored, so that an incremental backend can refer to the shared
    /// ones again instead of uploading them anew.
    pub files: Vec<StoredFile>,
}
