//! The heap backend: every state is a set of persistent hash maps, one per key group
//! the subtask owns.
//!
//! The maps are hash array mapped tries (`imbl`): cloning one is O(1) and a write after
//! a clone copies only the path to the entry it changes. That is what makes a snapshot
//! cheap for the subtask (clone the maps of every key group, hand the clones to the
//! asynchronous phase) without a stop-the-world copy of the state.

use crate::runtime::ids::KeyGroup;
use crate::runtime::keygroup::KeyGroupRange;
use crate::state::{KeyedStateBackend, MapEntries, StateError, StateId, StateKind};
use bytes::Bytes;
use imbl::shared_ptr::DefaultSharedPtr;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// A persistent map with a fast, fixed hash. Keys and values are [`Bytes`], so a clone
/// of a map node copies reference counts, not payloads.
type Map<V> = imbl::GenericHashMap<Bytes, V, Xxh3DefaultBuilder, DefaultSharedPtr>;

/// The contents of one state, one map per key group of the subtask.
#[derive(Clone)]
enum Table {
    Value(Vec<Map<Bytes>>),
    List(Vec<Map<imbl::Vector<Bytes>>>),
    Map(Vec<Map<Map<Bytes>>>),
}

impl Table {
    fn new(kind: StateKind, groups: usize) -> Self {
        match kind {
            StateKind::Value => Self::Value(vec![Map::default(); groups]),
            StateKind::List => Self::List(vec![Map::default(); groups]),
            StateKind::Map => Self::Map(vec![Map::default(); groups]),
        }
    }

    fn kind(&self) -> StateKind {
        match self {
            Self::Value(_) => StateKind::Value,
            Self::List(_) => StateKind::List,
            Self::Map(_) => StateKind::Map,
        }
    }
}

struct NamedTable {
    name: String,
    table: Table,
}

/// Keyed state on the heap of the host process.
pub struct HeapBackend {
    groups: KeyGroupRange,
    states: Vec<NamedTable>,
}

impl HeapBackend {
    /// An empty backend for the key groups in `groups`.
    pub fn new(groups: KeyGroupRange) -> Self {
        Self {
            groups,
            states: Vec::new(),
        }
    }

    fn table(&self, state: StateId) -> Result<&Table, StateError> {
        usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get(i))
            .map(|named| &named.table)
            .ok_or(StateError::UnknownState(state))
    }

    fn table_mut(&mut self, state: StateId) -> Result<&mut Table, StateError> {
        usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get_mut(i))
            .map(|named| &mut named.table)
            .ok_or(StateError::UnknownState(state))
    }

    /// The position of `group` in the per-group vectors. The caller checked ownership, so
    /// a group outside the range is a host bug; it maps to an index that fails cleanly.
    fn slot(&self, group: KeyGroup) -> usize {
        self.groups.offset(group).unwrap_or(usize::MAX)
    }
}

fn group_of<V>(maps: &[V], slot: usize, state: StateId) -> Result<&V, StateError> {
    maps.get(slot).ok_or(StateError::UnknownState(state))
}

fn group_of_mut<V>(maps: &mut [V], slot: usize, state: StateId) -> Result<&mut V, StateError> {
    maps.get_mut(slot).ok_or(StateError::UnknownState(state))
}

impl KeyedStateBackend for HeapBackend {
    fn open_state(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if let Some(i) = self.states.iter().position(|s| s.name == name) {
            let existing = self.states[i].table.kind();
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(StateId(u32::try_from(i).unwrap_or(u32::MAX)));
        }
        self.states.push(NamedTable {
            name: name.to_owned(),
            table: Table::new(kind, self.groups.len()),
        });
        Ok(StateId(
            u32::try_from(self.states.len() - 1).unwrap_or(u32::MAX),
        ))
    }

    fn value_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let slot = self.slot(group);
        match self.table(state)? {
            Table::Value(maps) => Ok(group_of(maps, slot, state)?.get(key).map(|v| v.to_vec())),
            _ => Err(StateError::WrongKind(state, StateKind::Value)),
        }
    }

    fn value_set(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let slot = self.slot(group);
        match self.table_mut(state)? {
            Table::Value(maps) => {
                let map = group_of_mut(maps, slot, state)?;
                match map.get_mut(key.as_slice()) {
                    Some(existing) => *existing = Bytes::from(value),
                    None => {
                        map.insert(Bytes::from(key), Bytes::from(value));
                    }
                }
                Ok(())
            }
            _ => Err(StateError::WrongKind(state, StateKind::Value)),
        }
    }

    fn list_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let slot = self.slot(group);
        match self.table(state)? {
            Table::List(maps) => Ok(group_of(maps, slot, state)?
                .get(key)
                .map(|list| list.iter().map(|v| v.to_vec()).collect())
                .unwrap_or_default()),
            _ => Err(StateError::WrongKind(state, StateKind::List)),
        }
    }

    fn list_add(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let slot = self.slot(group);
        match self.table_mut(state)? {
            Table::List(maps) => {
                let map = group_of_mut(maps, slot, state)?;
                match map.get_mut(key.as_slice()) {
                    Some(list) => list.push_back(Bytes::from(value)),
                    None => {
                        map.insert(Bytes::from(key), imbl::Vector::unit(Bytes::from(value)));
                    }
                }
                Ok(())
            }
            _ => Err(StateError::WrongKind(state, StateKind::List)),
        }
    }

    fn list_update(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        values: Vec<Vec<u8>>,
    ) -> Result<(), StateError> {
        let slot = self.slot(group);
        match self.table_mut(state)? {
            Table::List(maps) => {
                let map = group_of_mut(maps, slot, state)?;
                if values.is_empty() {
                    map.remove(key.as_slice());
                } else {
                    map.insert(
                        Bytes::from(key),
                        values.into_iter().map(Bytes::from).collect(),
                    );
                }
                Ok(())
            }
            _ => Err(StateError::WrongKind(state, StateKind::List)),
        }
    }

    fn map_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let slot = self.slot(group);
        match self.table(state)? {
            Table::Map(maps) => Ok(group_of(maps, slot, state)?
                .get(key)
                .and_then(|inner| inner.get(user_key))
                .map(|v| v.to_vec())),
            _ => Err(StateError::WrongKind(state, StateKind::Map)),
        }
    }

    fn map_put(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        user_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let slot = self.slot(group);
        match self.table_mut(state)? {
            Table::Map(maps) => {
                let map = group_of_mut(maps, slot, state)?;
                match map.get_mut(key.as_slice()) {
                    Some(inner) => {
                        inner.insert(Bytes::from(user_key), Bytes::from(value));
                    }
                    None => {
                        let mut inner = Map::default();
                        inner.insert(Bytes::from(user_key), Bytes::from(value));
                        map.insert(Bytes::from(key), inner);
                    }
                }
                Ok(())
            }
            _ => Err(StateError::WrongKind(state, StateKind::Map)),
        }
    }

    fn map_remove(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<(), StateError> {
        let slot = self.slot(group);
        match self.table_mut(state)? {
            Table::Map(maps) => {
                let map = group_of_mut(maps, slot, state)?;
                let now_empty = map.get_mut(key).is_some_and(|inner| {
                    inner.remove(user_key);
                    inner.is_empty()
                });
                if now_empty {
                    map.remove(key);
                }
                Ok(())
            }
            _ => Err(StateError::WrongKind(state, StateKind::Map)),
        }
    }

    fn map_entries(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<MapEntries, StateError> {
        let slot = self.slot(group);
        match self.table(state)? {
            Table::Map(maps) => Ok(group_of(maps, slot, state)?
                .get(key)
                .map(|inner| {
                    inner
                        .iter()
                        .map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .collect()
                })
                .unwrap_or_default()),
            _ => Err(StateError::WrongKind(state, StateKind::Map)),
        }
    }

    fn clear(&mut self, state: StateId, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
        let slot = self.slot(group);
        match self.table_mut(state)? {
            Table::Value(maps) => {
                group_of_mut(maps, slot, state)?.remove(key);
            }
            Table::List(maps) => {
                group_of_mut(maps, slot, state)?.remove(key);
            }
            Table::Map(maps) => {
                group_of_mut(maps, slot, state)?.remove(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ids::SubtaskIndex;

    fn backend() -> HeapBackend {
        HeapBackend::new(KeyGroupRange::for_subtask(SubtaskIndex(0), 1, 8))
    }

    #[test]
    fn a_value_set_is_read_back_and_cleared() -> Result<(), StateError> {
        let mut b = backend();
        let s = b.open_state("count", StateKind::Value)?;
        assert_eq!(b.value_get(s, KeyGroup(3), b"k")?, None);
        b.value_set(s, KeyGroup(3), b"k".to_vec(), b"1".to_vec())?;
        b.value_set(s, KeyGroup(3), b"k".to_vec(), b"2".to_vec())?;
        assert_eq!(b.value_get(s, KeyGroup(3), b"k")?, Some(b"2".to_vec()));
        b.clear(s, KeyGroup(3), b"k")?;
        assert_eq!(b.value_get(s, KeyGroup(3), b"k")?, None);
        Ok(())
    }

    #[test]
    fn reopening_a_state_by_name_gives_the_same_state() -> Result<(), StateError> {
        let mut b = backend();
        let first = b.open_state("s", StateKind::List)?;
        assert_eq!(b.open_state("s", StateKind::List)?, first);
        assert!(matches!(
            b.open_state("s", StateKind::Map),
            Err(StateError::KindMismatch { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_list_keeps_its_order_and_can_be_replaced() -> Result<(), StateError> {
        let mut b = backend();
        let s = b.open_state("l", StateKind::List)?;
        for v in [b"a", b"b", b"c"] {
            b.list_add(s, KeyGroup(0), b"k".to_vec(), v.to_vec())?;
        }
        assert_eq!(
            b.list_get(s, KeyGroup(0), b"k")?,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        b.list_update(s, KeyGroup(0), b"k".to_vec(), vec![b"z".to_vec()])?;
        assert_eq!(b.list_get(s, KeyGroup(0), b"k")?, vec![b"z".to_vec()]);
        Ok(())
    }

    #[test]
    fn a_map_holds_entries_per_key_and_drops_empty_maps() -> Result<(), StateError> {
        let mut b = backend();
        let s = b.open_state("m", StateKind::Map)?;
        b.map_put(s, KeyGroup(1), b"k".to_vec(), b"x".to_vec(), b"1".to_vec())?;
        b.map_put(s, KeyGroup(1), b"k".to_vec(), b"y".to_vec(), b"2".to_vec())?;
        b.map_put(
            s,
            KeyGroup(1),
            b"other".to_vec(),
            b"x".to_vec(),
            b"3".to_vec(),
        )?;
        let mut entries = b.map_entries(s, KeyGroup(1), b"k")?;
        entries.sort();
        assert_eq!(
            entries,
            vec![
                (b"x".to_vec(), b"1".to_vec()),
                (b"y".to_vec(), b"2".to_vec())
            ]
        );
        b.map_remove(s, KeyGroup(1), b"k", b"x")?;
        b.map_remove(s, KeyGroup(1), b"k", b"y")?;
        assert!(b.map_entries(s, KeyGroup(1), b"k")?.is_empty());
        assert_eq!(
            b.map_get(s, KeyGroup(1), b"other", b"x")?,
            Some(b"3".to_vec())
        );
        Ok(())
    }

    #[test]
    fn the_same_key_in_two_key_groups_is_two_entries() -> Result<(), StateError> {
        let mut b = backend();
        let s = b.open_state("v", StateKind::Value)?;
        b.value_set(s, KeyGroup(0), b"k".to_vec(), b"a".to_vec())?;
        b.value_set(s, KeyGroup(1), b"k".to_vec(), b"b".to_vec())?;
        assert_eq!(b.value_get(s, KeyGroup(0), b"k")?, Some(b"a".to_vec()));
        assert_eq!(b.value_get(s, KeyGroup(1), b"k")?, Some(b"b".to_vec()));
        Ok(())
    }

    #[test]
    fn using_a_state_as_another_kind_is_refused() -> Result<(), StateError> {
        let mut b = backend();
        let s = b.open_state("v", StateKind::Value)?;
        assert!(matches!(
            b.list_get(s, KeyGroup(0), b"k"),
            Err(StateError::WrongKind(..))
        ));
        Ok(())
    }
}
