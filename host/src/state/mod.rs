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
//! - `timers`: keyed event-time and processing-time timers.

mod heap;
mod timers;

pub use heap::HeapBackend;
pub use timers::{Domain, Timers};

use crate::runtime::ids::KeyGroup;

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
}

/// The asynchronous half of a backend snapshot: encodes the state captured by
/// [`KeyedStateBackend::snapshot`], off the subtask's thread.
pub type StateWriter = Box<dyn FnOnce() -> Result<Vec<u8>, StateError> + Send>;

/// The entries of one key's map state: user key and value.
pub type MapEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The keyed state of one subtask.
///
/// Every call names the key group of `key`; the caller has checked it belongs to the
/// subtask. Values are opaque bytes.
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

    /// The synchronous phase of a snapshot: captures a consistent view of every state
    /// without copying it, and returns how to encode it.
    fn snapshot(&self) -> StateWriter;

    /// Replaces all state with what a [`KeyedStateBackend::snapshot`] encoded, keeping
    /// the key groups this backend owns.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError>;
}
