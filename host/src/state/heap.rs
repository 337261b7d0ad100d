//! The heap backend: every state is a set of hash maps, one per key group the subtask
//! owns, each behind an [`Arc`].
//!
//! A snapshot clones the `Arc`s — O(key groups), whatever the size of the state — and
//! hands them to the asynchronous phase, which serialises them off the subtask's thread.
//! The first write to a key group after a snapshot copies that group's map
//! (`Arc::make_mut`), so the copying is spread over the processing that follows instead
//! of stalling the synchronous phase: copy-on-write at key-group granularity.
//!
//! The bytes the state holds are counted as it grows (keys, values and a fixed cost per
//! entry), and a write that would take them past `[state] heap-limit` fails with
//! [`StateError::OverLimit`]: a guest cannot grow the host without bound. A key group
//! being copied after a snapshot briefly exists twice; the limit counts it once.

use crate::checkpoint::snapshot::{
    EntryValue, KeyedSections, KeyedState, SectionWriter, SnapshotType, StateDecl, entries,
};
use crate::runtime::batch::{Blobs, MaybeBlobs};
use crate::runtime::ids::CheckpointId;
use crate::runtime::ids::KeyGroup;
use crate::runtime::keygroup::KeyGroupRange;
use crate::state::{
    BackendSnapshot, GroupedKeys, KeyedStateBackend, MapEntries, RestoredState, StateError,
    StateId, StateKind, StateWriter,
};
use std::collections::HashMap;
use std::sync::Arc;

/// foldhash: fast on short keys, and the maps are never iterated in an order that
/// matters, so a per-process seed is fine.
type Map<V> = HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

/// The maps of one state, one per key group of the subtask.
type Groups<V> = Vec<Arc<Map<V>>>;

#[derive(Clone)]
enum Table {
    Value(Groups<Vec<u8>>),
    List(Groups<Vec<Vec<u8>>>),
    Map(Groups<Map<Vec<u8>>>),
}

/// `n` empty maps, all one shared allocation until a write copies its own
/// (`Arc::make_mut`): opening a state allocates its vector, not a map per key group.
fn groups<V>(n: usize) -> Groups<V> {
    let empty = Arc::new(Map::default());
    vec![empty; n]
}

impl Table {
    fn new(kind: StateKind, n: usize) -> Self {
        match kind {
            StateKind::Value => Self::Value(groups(n)),
            StateKind::List => Self::List(groups(n)),
            StateKind::Map => Self::Map(groups(n)),
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

#[derive(Clone)]
struct NamedTable {
    name: String,
    table: Table,
}

/// Keyed state on the heap of the host process.
pub struct HeapBackend {
    groups: KeyGroupRange,
    states: Vec<NamedTable>,
    /// The id of every state, by name: opening a state is one lookup.
    ids: HashMap<String, StateId>,
    budget: Budget,
}

/// What a hash-map entry costs beside its key and value bytes: the two `Vec` headers
/// (24 bytes each) and the table's slot and control byte, rounded up.
const ENTRY_COST: u64 = 64;

/// What a list element costs beside its bytes: its `Vec` header.
const ELEMENT_COST: u64 = 24;

fn len(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// The bytes one entry of each kind of state holds.
fn value_cost(key: &[u8], value: &[u8]) -> u64 {
    ENTRY_COST + len(key) + len(value)
}

fn list_cost(key: &[u8], values: &[Vec<u8>]) -> u64 {
    ENTRY_COST + len(key) + values.iter().map(|v| ELEMENT_COST + len(v)).sum::<u64>()
}

fn map_cost(key: &[u8], inner: &Map<Vec<u8>>) -> u64 {
    ENTRY_COST + len(key) + inner.iter().map(|(k, v)| value_cost(k, v)).sum::<u64>()
}

/// The bytes the state holds, and the most it may.
#[derive(Clone, Copy, Debug)]
struct Budget {
    used: u64,
    limit: u64,
}

impl Budget {
    /// Accounts a write that adds `add` bytes and frees `free`, or refuses it if it would
    /// end over the limit. Shrinking is always allowed.
    fn charge(&mut self, state: &str, add: u64, free: u64) -> Result<(), StateError> {
        let wanted = self.used.saturating_sub(free).saturating_add(add);
        if add > free && wanted > self.limit {
            return Err(StateError::OverLimit {
                state: state.to_owned(),
                wanted,
                limit: self.limit,
            });
        }
        self.used = wanted;
        Ok(())
    }
}

impl HeapBackend {
    /// An empty backend for the key groups in `groups`, holding at most `limit` bytes.
    pub fn new(groups: KeyGroupRange, limit: u64) -> Self {
        Self {
            groups,
            states: Vec::new(),
            ids: HashMap::new(),
            budget: Budget { used: 0, limit },
        }
    }

    /// The table of `state` for writing, its name and the budget.
    fn table_and_budget(
        &mut self,
        state: StateId,
    ) -> Result<(&mut Table, &str, &mut Budget), StateError> {
        let named = usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get_mut(i))
            .ok_or(StateError::UnknownState(state))?;
        Ok((&mut named.table, named.name.as_str(), &mut self.budget))
    }

    fn table(&self, state: StateId) -> Result<&Table, StateError> {
        usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get(i))
            .map(|named| &named.table)
            .ok_or(StateError::UnknownState(state))
    }

    /// The position of `group` in the per-group vectors. The caller checked ownership, so
    /// a group outside the range is a host bug; it maps to an index that fails cleanly.
    fn slot(&self, group: KeyGroup) -> usize {
        self.groups.offset(group).unwrap_or(usize::MAX)
    }
}

fn map_of<V>(maps: &[Arc<Map<V>>], slot: usize, state: StateId) -> Result<&Map<V>, StateError> {
    maps.get(slot)
        .map(Arc::as_ref)
        .ok_or(StateError::UnknownState(state))
}

/// The map of one key group, for writing: copies it first if a snapshot still holds it.
fn map_of_mut<V: Clone>(
    maps: &mut [Arc<Map<V>>],
    slot: usize,
    state: StateId,
) -> Result<&mut Map<V>, StateError> {
    maps.get_mut(slot)
        .map(Arc::make_mut)
        .ok_or(StateError::UnknownState(state))
}

impl KeyedStateBackend for HeapBackend {
    fn open_state(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if let Some(&id) = self.ids.get(name) {
            let existing = self.table(id)?.kind();
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(id);
        }
        let id = StateId(u32::try_from(self.states.len()).map_err(|_| {
            StateError::Corrupt(format!("cannot open state `{name}`: too many states"))
        })?);
        self.states.push(NamedTable {
            name: name.to_owned(),
            table: Table::new(kind, self.groups.len()),
        });
        self.ids.insert(name.to_owned(), id);
        Ok(id)
    }

    fn value_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        match self.table(state)? {
            Table::Value(maps) => Ok(map_of(maps, self.slot(group), state)?.get(key).cloned()),
            _ => Err(StateError::WrongKind(state, StateKind::Value)),
        }
    }

    fn value_get_many(
        &self,
        state: StateId,
        keys: GroupedKeys<'_>,
        out: &mut MaybeBlobs,
    ) -> Result<(), StateError> {
        let Table::Value(maps) = self.table(state)? else {
            return Err(StateError::WrongKind(state, StateKind::Value));
        };
        for (group, key) in keys.iter() {
            out.push(
                map_of(maps, self.slot(group), state)?
                    .get(key)
                    .map(Vec::as_slice),
            );
        }
        Ok(())
    }

    fn value_set_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        values: &Blobs,
    ) -> Result<(), StateError> {
        let slots: Vec<usize> = keys.groups.iter().map(|&g| self.slot(g)).collect();
        let (Table::Value(maps), name, budget) = self.table_and_budget(state)? else {
            return Err(StateError::WrongKind(state, StateKind::Value));
        };
        for (i, (_, key)) in keys.iter().enumerate() {
            let map = map_of_mut(maps, slots[i], state)?;
            let value = values.get(i);
            // An existing value is overwritten in place: no allocation when it fits.
            match map.get_mut(key) {
                Some(existing) => {
                    budget.charge(name, len(value), len(existing))?;
                    existing.clear();
                    existing.extend_from_slice(value);
                }
                None => {
                    budget.charge(name, value_cost(key, value), 0)?;
                    map.insert(key.to_vec(), value.to_vec());
                }
            }
        }
        Ok(())
    }

    fn value_set(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let slot = self.slot(group);
        match self.table_and_budget(state)? {
            (Table::Value(maps), name, budget) => {
                let map = map_of_mut(maps, slot, state)?;
                match map.get_mut(key.as_slice()) {
                    Some(existing) => {
                        budget.charge(name, len(&value), len(existing))?;
                        *existing = value;
                    }
                    None => {
                        budget.charge(name, value_cost(&key, &value), 0)?;
                        map.insert(key, value);
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
        match self.table(state)? {
            Table::List(maps) => Ok(map_of(maps, self.slot(group), state)?
                .get(key)
                .cloned()
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
        match self.table_and_budget(state)? {
            (Table::List(maps), name, budget) => {
                let map = map_of_mut(maps, slot, state)?;
                let new_key = if map.contains_key(key.as_slice()) {
                    0
                } else {
                    ENTRY_COST + len(&key)
                };
                budget.charge(name, new_key + ELEMENT_COST + len(&value), 0)?;
                map.entry(key).or_default().push(value);
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
        match self.table_and_budget(state)? {
            (Table::List(maps), name, budget) => {
                let map = map_of_mut(maps, slot, state)?;
                let old = map
                    .get(key.as_slice())
                    .map_or(0, |old| list_cost(&key, old));
                if values.is_empty() {
                    budget.charge(name, 0, old)?;
                    map.remove(key.as_slice());
                } else {
                    budget.charge(name, list_cost(&key, &values), old)?;
                    map.insert(key, values);
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
        match self.table(state)? {
            Table::Map(maps) => Ok(map_of(maps, self.slot(group), state)?
                .get(key)
                .and_then(|inner| inner.get(user_key))
                .cloned()),
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
        match self.table_and_budget(state)? {
            (Table::Map(maps), name, budget) => {
                let map = map_of_mut(maps, slot, state)?;
                let (add, free) = match map.get(key.as_slice()) {
                    None => (ENTRY_COST + len(&key) + value_cost(&user_key, &value), 0),
                    Some(inner) => match inner.get(user_key.as_slice()) {
                        None => (value_cost(&user_key, &value), 0),
                        Some(old) => (len(&value), len(old)),
                    },
                };
                budget.charge(name, add, free)?;
                map.entry(key).or_default().insert(user_key, value);
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
        match self.table_and_budget(state)? {
            (Table::Map(maps), name, budget) => {
                let map = map_of_mut(maps, slot, state)?;
                let Some(inner) = map.get_mut(key) else {
                    return Ok(());
                };
                if let Some(old) = inner.remove(user_key) {
                    budget.charge(name, 0, value_cost(user_key, &old))?;
                }
                if inner.is_empty() {
                    budget.charge(name, 0, ENTRY_COST + len(key))?;
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
        match self.table(state)? {
            Table::Map(maps) => Ok(map_of(maps, self.slot(group), state)?
                .get(key)
                .map(|inner| inner.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()),
            _ => Err(StateError::WrongKind(state, StateKind::Map)),
        }
    }

    fn clear(&mut self, state: StateId, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
        let slot = self.slot(group);
        let (table, name, budget) = self.table_and_budget(state)?;
        let freed = match table {
            Table::Value(maps) => map_of_mut(maps, slot, state)?
                .remove(key)
                .map(|v| value_cost(key, &v)),
            Table::List(maps) => map_of_mut(maps, slot, state)?
                .remove(key)
                .map(|l| list_cost(key, &l)),
            Table::Map(maps) => map_of_mut(maps, slot, state)?
                .remove(key)
                .map(|m| map_cost(key, &m)),
        };
        budget.charge(name, 0, freed.unwrap_or(0))
    }

    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _kind: SnapshotType,
    ) -> Result<BackendSnapshot, StateError> {
        Ok(BackendSnapshot::Encoded(self.encoder()))
    }

    fn restore(&mut self, restored: RestoredState) -> Result<(), StateError> {
        match restored {
            RestoredState::Canonical(sections) => self.decode(&sections),
            RestoredState::Files(_) => Err(StateError::Corrupt(
                "the snapshot holds RocksDB's native files, which the heap backend cannot read; restore it with the rocksdb backend, or take a canonical savepoint"
                    .to_owned(),
            )),
        }
    }
}

impl HeapBackend {
    /// Captures every state (one `Arc` clone per key group) and returns its encoder,
    /// which writes the canonical format key group by key group.
    fn encoder(&self) -> StateWriter {
        // Cloning the tables clones one `Arc` per key group and state: the whole
        // synchronous cost, independent of how many keys there are.
        let frozen = self.states.clone();
        let range = self.groups;
        Box::new(move || {
            let states = frozen
                .iter()
                .map(|named| StateDecl {
                    name: named.name.clone(),
                    kind: named.table.kind().into(),
                })
                .collect();
            let mut out = SectionWriter::new();
            for (slot, group) in (range.start..range.end).enumerate() {
                out.group(KeyGroup(group));
                for (id, named) in (0u32..).zip(&frozen) {
                    match &named.table {
                        Table::Value(maps) => {
                            for (k, v) in maps[slot].iter() {
                                out.value(id, k, v);
                            }
                        }
                        Table::List(maps) => {
                            for (k, l) in maps[slot].iter() {
                                out.list(id, k, l.iter().map(Vec::as_slice));
                            }
                        }
                        Table::Map(maps) => {
                            for (k, m) in maps[slot].iter() {
                                out.map(id, k, m.iter().map(|(u, v)| (u.as_slice(), v.as_slice())));
                            }
                        }
                    }
                }
            }
            Ok(KeyedState {
                states,
                sections: out.finish(),
            })
        })
    }

    /// Replaces every state with the key groups this subtask owns of `restored`, which
    /// may come from several old subtasks (a rescale).
    fn decode(&mut self, restored: &[KeyedSections]) -> Result<(), StateError> {
        let range = self.groups;
        self.states.clear();
        self.ids.clear();
        for old in restored {
            let ids = old
                .states
                .iter()
                .map(|decl| self.open_state(&decl.name, decl.kind.into()))
                .collect::<Result<Vec<_>, _>>()?;
            for (group, section) in &old.groups {
                let Some(slot) = range.offset(*group) else {
                    continue;
                };
                for entry in entries(&old.states, section) {
                    let entry = entry
                        .map_err(|e| StateError::Corrupt(format!("key group {}: {e}", group.0)))?;
                    let id = ids[entry.state as usize];
                    let table = &mut self.states[id.0 as usize].table;
                    match (table, entry.value) {
                        (Table::Value(maps), EntryValue::Value(v)) => {
                            Arc::make_mut(&mut maps[slot]).insert(entry.key.to_vec(), v.to_vec());
                        }
                        (Table::List(maps), EntryValue::List(l)) => {
                            Arc::make_mut(&mut maps[slot]).insert(
                                entry.key.to_vec(),
                                l.into_iter().map(<[u8]>::to_vec).collect(),
                            );
                        }
                        (Table::Map(maps), EntryValue::Map(m)) => {
                            Arc::make_mut(&mut maps[slot]).insert(
                                entry.key.to_vec(),
                                m.into_iter()
                                    .map(|(u, v)| (u.to_vec(), v.to_vec()))
                                    .collect(),
                            );
                        }
                        _ => {
                            return Err(StateError::Corrupt(format!(
                                "state `{}` has an inconsistent kind",
                                old.states[entry.state as usize].name
                            )));
                        }
                    }
                }
            }
        }
        // A restored state over the limit stays: the next write that grows it fails, and
        // says why, instead of the restore.
        self.budget.used = self.states.iter().map(|n| table_cost(&n.table)).sum();
        Ok(())
    }
}

/// The bytes every entry of `table` holds.
fn table_cost(table: &Table) -> u64 {
    fn sum<V>(maps: &[Arc<Map<V>>], cost: impl Fn(&[u8], &V) -> u64) -> u64 {
        maps.iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| cost(k, v))
            .sum()
    }
    match table {
        Table::Value(maps) => sum(maps, |k, v| value_cost(k, v)),
        Table::List(maps) => sum(maps, |k, l| list_cost(k, l)),
        Table::Map(maps) => sum(maps, map_cost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_value_calls_read_and_write_what_single_calls_do() -> Result<(), StateError> {
        let mut b = HeapBackend::new(KeyGroupRange { start: 0, end: 128 }, u64::MAX);
        let id = b.open_state("v", StateKind::Value)?;
        b.value_set(id, KeyGroup(3), b"a".to_vec(), b"old".to_vec())?;
        let keys: Blobs = [&b"a"[..], b"b", b""].into_iter().collect();
        let key_groups = [KeyGroup(3), KeyGroup(9), KeyGroup(0)];
        let grouped = GroupedKeys {
            keys: &keys,
            groups: &key_groups,
        };
        let mut found = MaybeBlobs::default();
        b.value_get_many(id, grouped, &mut found)?;
        assert_eq!(
            (found.get(0), found.get(1), found.get(2)),
            (Some(&b"old"[..]), None, None)
        );
        let values: Blobs = [&b"new and longer"[..], b"2", b""].into_iter().collect();
        b.value_set_many(id, grouped, &values)?;
        assert_eq!(
            b.value_get(id, KeyGroup(3), b"a")?,
            Some(b"new and longer".to_vec())
        );
        assert_eq!(b.value_get(id, KeyGroup(9), b"b")?, Some(b"2".to_vec()));
        assert_eq!(b.value_get(id, KeyGroup(0), b"")?, Some(Vec::new()));
        Ok(())
    }
    use crate::runtime::ids::SubtaskIndex;

    #[test]
    fn a_write_past_the_limit_fails_and_what_is_freed_can_be_written_again()
    -> Result<(), StateError> {
        // Room for one entry of a 1-byte key and a 100-byte value, not two.
        let mut b = HeapBackend::new(KeyGroupRange { start: 0, end: 1 }, 2 * ENTRY_COST + 150);
        let s = b.open_state("v", StateKind::Value)?;
        let g = KeyGroup(0);
        b.value_set(s, g, b"a".to_vec(), vec![0; 100])?;
        assert!(matches!(
            b.value_set(s, g, b"b".to_vec(), vec![0; 100]),
            Err(StateError::OverLimit { ref state, .. }) if state == "v"
        ));
        assert_eq!(b.value_get(s, g, b"b")?, None);
        // Overwriting with a shorter value, and shrinking, are always allowed.
        b.value_set(s, g, b"a".to_vec(), vec![0; 10])?;
        b.value_set(s, g, b"b".to_vec(), vec![0; 10])?;
        b.clear(s, g, b"a")?;
        b.clear(s, g, b"b")?;
        b.value_set(s, g, b"c".to_vec(), vec![0; 100])?;
        Ok(())
    }

    fn backend() -> HeapBackend {
        HeapBackend::new(KeyGroupRange::for_subtask(SubtaskIndex(0), 1, 8), u64::MAX)
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

    #[test]
    fn a_snapshot_sees_the_state_as_it_was_when_taken() -> Result<(), StateError> {
        let mut b = backend();
        let v = b.open_state("v", StateKind::Value)?;
        let l = b.open_state("l", StateKind::List)?;
        let m = b.open_state("m", StateKind::Map)?;
        b.value_set(v, KeyGroup(1), b"k".to_vec(), b"before".to_vec())?;
        b.list_add(l, KeyGroup(2), b"k".to_vec(), b"x".to_vec())?;
        b.map_put(m, KeyGroup(3), b"k".to_vec(), b"u".to_vec(), b"1".to_vec())?;
        let writer = b.encoder();
        b.value_set(v, KeyGroup(1), b"k".to_vec(), b"after".to_vec())?;
        b.value_set(v, KeyGroup(4), b"new".to_vec(), b"after".to_vec())?;
        let bytes = writer()?.into_sections();

        let mut restored = backend();
        restored.decode(&[bytes])?;
        let v = restored.open_state("v", StateKind::Value)?;
        let l = restored.open_state("l", StateKind::List)?;
        let m = restored.open_state("m", StateKind::Map)?;
        assert_eq!(
            restored.value_get(v, KeyGroup(1), b"k")?,
            Some(b"before".to_vec())
        );
        assert_eq!(restored.value_get(v, KeyGroup(4), b"new")?, None);
        assert_eq!(
            restored.list_get(l, KeyGroup(2), b"k")?,
            vec![b"x".to_vec()]
        );
        assert_eq!(
            restored.map_get(m, KeyGroup(3), b"k", b"u")?,
            Some(b"1".to_vec())
        );
        Ok(())
    }

    #[test]
    fn a_restore_keeps_only_the_key_groups_the_subtask_owns() -> Result<(), StateError> {
        let mut all = backend();
        let v = all.open_state("v", StateKind::Value)?;
        for g in 0..8 {
            all.value_set(
                v,
                KeyGroup(g),
                vec![u8::try_from(g).unwrap_or(0)],
                b"x".to_vec(),
            )?;
        }
        let bytes = all.encoder()()?.into_sections();
        let mut half =
            HeapBackend::new(KeyGroupRange::for_subtask(SubtaskIndex(1), 2, 8), u64::MAX);
        half.decode(&[bytes])?;
        let v = half.open_state("v", StateKind::Value)?;
        assert_eq!(half.value_get(v, KeyGroup(5), &[5])?, Some(b"x".to_vec()));
        // Snapshot the half again and look at it from a backend that owns everything.
        let mut back = backend();
        back.decode(&[half.encoder()()?.into_sections()])?;
        let v = back.open_state("v", StateKind::Value)?;
        for g in 0..8u8 {
            let expected = (g >= 4).then(|| b"x".to_vec());
            assert_eq!(
                back.value_get(v, KeyGroup(u16::from(g)), &[g])?,
                expected,
                "key group {g}"
            );
        }
        Ok(())
    }

    #[test]
    fn garbage_is_refused_as_corrupt() {
        let mut b = backend();
        let garbage = KeyedSections {
            states: vec![StateDecl {
                name: "v".into(),
                kind: crate::checkpoint::snapshot::EntryKind::Value,
            }],
            groups: vec![(KeyGroup(0), bytes::Bytes::from_static(b"\x00\xff\xff"))],
        };
        assert!(matches!(b.decode(&[garbage]), Err(StateError::Corrupt(_))));
    }
}
