//! Typed handles over the host's keyed state.
//!
//! The host stores bytes; these handles encode values (and map user keys) with
//! postcard, reusing one scratch buffer per handle so that a write allocates nothing
//! beyond what the call itself copies. Every state error becomes an [`Error`] that names
//! the state.

use std::any::type_name;
use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__bindings::weir::operator::state as wit;
use crate::__bindings::weir::operator::types::Blobs;
use crate::batch::{empty_blobs, item, push};
use crate::{Batch, Error, RecordRef, Result};

/// The distinct keys of a batch, in first-seen order, hashed with fixed keys:
/// `RandomState` would pull in `wasi:random` for protection against crafted keys that a
/// per-batch map does not need.
type KeyIndex<'a> = HashMap<&'a [u8], usize, foldhash::fast::FixedState>;

/// A state's name and its encoding buffer, shared by the three kinds of handle.
struct Named {
    name: String,
    /// Reused for every encode; `Cell` so that writes can take `&self`, as nothing
    /// else borrows it across a call.
    scratch: Cell<Vec<u8>>,
}

impl Named {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            scratch: Cell::new(Vec::new()),
        }
    }

    fn failed(&self, error: wit::StateError) -> Error {
        let name = &self.name;
        Error::new(match error {
            wit::StateError::ForeignKey(group) => format!(
                "state `{name}`: key belongs to key group {group}, which this subtask does not own \
                 (use keys of the records received through a key-by edge)"
            ),
            wit::StateError::KindMismatch(kind) => format!(
                "state `{name}`: this name was opened before as a different kind of state ({kind})"
            ),
            wit::StateError::NotOpening => {
                format!("state `{name}`: states can only be opened in `Operator::open`")
            }
            wit::StateError::Backend(message) => {
                format!("state `{name}`: the state backend failed: {message}")
            }
        })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| {
            Error::new(format!(
                "state `{}`: stored bytes do not decode as `{}`: {e}",
                self.name,
                type_name::<T>()
            ))
        })
    }

    /// Encodes `parts` one after another into the scratch buffer and calls `f` with the
    /// encoding of each.
    fn encode<R>(
        &self,
        parts: [&dyn ErasedSerialize; 2],
        f: impl FnOnce(&[u8], &[u8]) -> core::result::Result<R, wit::StateError>,
    ) -> Result<R> {
        let mut buf = self.scratch.take();
        buf.clear();
        let mut ends = [0; 2];
        for (part, end) in parts.into_iter().zip(&mut ends) {
            buf = part.encode_into(buf).map_err(|e| {
                Error::new(format!(
                    "state `{}`: a value does not encode: {e}",
                    self.name
                ))
            })?;
            *end = buf.len();
        }
        let result = f(&buf[..ends[0]], &buf[ends[0]..ends[1]]);
        self.scratch.set(buf);
        result.map_err(|e| self.failed(e))
    }
}

impl Named {
    /// Appends the encoding of `value` to `blobs` as one item.
    fn encode_item<T: Serialize + ?Sized>(&self, blobs: &mut Blobs, value: &T) -> Result<()> {
        let bytes = std::mem::take(&mut blobs.bytes);
        blobs.bytes = postcard::to_extend(value, bytes).map_err(|e| {
            Error::new(format!(
                "state `{}`: a value does not encode: {e}",
                self.name
            ))
        })?;
        blobs
            .ends
            .push(u32::try_from(blobs.bytes.len()).unwrap_or(u32::MAX));
        Ok(())
    }
}

impl Named {
    /// The keys, and the encoding of the item paired with each, as flat blobs.
    fn keyed<'k, 'v, T: Serialize + 'v>(
        &self,
        entries: impl IntoIterator<Item = (&'k [u8], &'v T)>,
    ) -> Result<(Blobs, Blobs)> {
        let (mut keys, mut items) = (empty_blobs(), empty_blobs());
        for (key, item) in entries {
            push(&mut keys, key);
            self.encode_item(&mut items, item)?;
        }
        Ok((keys, items))
    }
}

/// `keys` as flat blobs.
fn flat<'k>(keys: impl IntoIterator<Item = &'k [u8]>) -> Blobs {
    let mut blobs = empty_blobs();
    for key in keys {
        push(&mut blobs, key);
    }
    blobs
}

/// Serialisation through a trait object, so that [`Named::encode`] takes values of
/// different types in one array.
trait ErasedSerialize {
    fn encode_into(&self, buf: Vec<u8>) -> postcard::Result<Vec<u8>>;
}

impl<T: Serialize + ?Sized> ErasedSerialize for T {
    fn encode_into(&self, buf: Vec<u8>) -> postcard::Result<Vec<u8>> {
        postcard::to_extend(self, buf)
    }
}

/// Encodes to nothing: fills the unused slot of [`Named::encode`].
const NOTHING: &() = &();

/// One value of type `T` per key.
///
/// ```no_run
/// use weir_sdk::ValueState;
///
/// // In `Operator::open`:
/// let totals: ValueState<u64> = ValueState::open("totals")?;
/// // Later, for the key of a record:
/// let total = totals.get(b"river")?.unwrap_or(0);
/// totals.set(b"river", &(total + 1))?;
/// totals.clear(b"weir")?;
/// # Ok::<(), weir_sdk::Error>(())
/// ```
pub struct ValueState<T> {
    named: Named,
    handle: wit::ValueState,
    _values: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    /// Opens (or creates) the value state `name`. Only possible in
    /// [`crate::Operator::open`]; the same name opens the same state after a restore.
    ///
    /// ```no_run
    /// let seen: weir_sdk::ValueState<bool> = weir_sdk::ValueState::open("seen")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<Self> {
        let named = Named::new(name);
        let handle = wit::ValueState::open(name).map_err(|e| named.failed(e))?;
        Ok(Self {
            named,
            handle,
            _values: PhantomData,
        })
    }

    /// The value of `key`, if there is one.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ValueState<u64> = weir_sdk::ValueState::open("count")?;
    /// let count: Option<u64> = state.get(b"river")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get(&self, key: &[u8]) -> Result<Option<T>> {
        match self.handle.get(key).map_err(|e| self.named.failed(e))? {
            Some(bytes) => self.named.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets the value of `key`.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ValueState<u64> = weir_sdk::ValueState::open("count")?;
    /// state.set(b"river", &7)?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn set(&self, key: &[u8], value: &T) -> Result<()> {
        self.named
            .encode([value, NOTHING], |value, _| self.handle.set(key, value))
    }

    /// Removes the value of `key`.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ValueState<u64> = weir_sdk::ValueState::open("count")?;
    /// state.clear(b"river")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn clear(&self, key: &[u8]) -> Result<()> {
        self.handle.clear(key).map_err(|e| self.named.failed(e))
    }

    /// The values of `keys`, in order, in one host call.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ValueState<u64> = weir_sdk::ValueState::open("count")?;
    /// let counts: Vec<Option<u64>> = state.get_many([&b"river"[..], b"weir"])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<Vec<Option<T>>> {
        let found = self
            .handle
            .get_many(&flat(keys))
            .map_err(|e| self.named.failed(e))?;
        (0..found.present.len())
            .map(|i| match found.present[i] {
                0 => Ok(None),
                _ => self.named.decode(item(&found.items, i)).map(Some),
            })
            .collect()
    }

    /// Sets the value of each key, in one host call.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ValueState<u64> = weir_sdk::ValueState::open("count")?;
    /// state.set_many([(&b"river"[..], &3), (b"weir", &1)])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn set_many<'k, 'v>(
        &self,
        entries: impl IntoIterator<Item = (&'k [u8], &'v T)>,
    ) -> Result<()>
    where
        T: 'v,
    {
        let (keys, values) = self.named.keyed(entries)?;
        if keys.ends.is_empty() {
            return Ok(());
        }
        self.handle
            .set_many(&keys, &values)
            .map_err(|e| self.named.failed(e))
    }

    /// Removes the values of `keys`, in one host call.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ValueState<u64> = weir_sdk::ValueState::open("count")?;
    /// state.clear_many([&b"river"[..], b"weir"])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn clear_many<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<()> {
        let keys = flat(keys);
        if keys.ends.is_empty() {
            return Ok(());
        }
        self.handle
            .clear_many(&keys)
            .map_err(|e| self.named.failed(e))
    }

    /// The usual pattern of a keyed operator, in three host calls however long the batch
    /// is: reads the values of the batch's distinct keys at once, calls `f` for every
    /// record in order with the record, its key and the key's value (as the records
    /// before it in the batch left it), then writes back the values of every key at
    /// once — set where `f` left `Some`, cleared where it left `None` a value that
    /// existed. A record without a key is an error that says to key the input.
    ///
    /// ```no_run
    /// # use weir_sdk::{Batch, Output, ValueState};
    /// # fn process(counts: &ValueState<u64>, batch: &Batch, out: &mut Output) -> weir_sdk::Result<()> {
    /// counts.update_each(batch, |record, key, count| {
    ///     let n = count.unwrap_or(0) + 1;
    ///     *count = Some(n);
    ///     out.emit_with(Some(key), record.timestamp, |v| v.extend_from_slice(&n.to_le_bytes()));
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub fn update_each(
        &self,
        batch: &Batch,
        mut f: impl FnMut(RecordRef<'_>, &[u8], &mut Option<T>) -> Result<()>,
    ) -> Result<()> {
        // Sized for the batch up front: growing the index rehashes every key seen so far.
        let mut index =
            KeyIndex::with_capacity_and_hasher(batch.len(), foldhash::fast::FixedState::default());
        let mut keys: Vec<&[u8]> = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        for record in batch.iter() {
            let key = record.key.ok_or_else(|| {
                Error::new(format!(
                    "state `{}`: a record without a key; keyed state needs keyed input: set partition = \"key-by\" on this operator",
                    self.named.name
                ))
            })?;
            let next = keys.len();
            let slot = *index.entry(key).or_insert(next);
            if slot == next {
                keys.push(key);
            }
            slots.push(slot);
        }
        let mut values = self.get_many(keys.iter().copied())?;
        let existed: Vec<bool> = values.iter().map(Option::is_some).collect();
        for (record, &slot) in batch.iter().zip(&slots) {
            f(record, keys[slot], &mut values[slot])?;
        }
        let set = keys
            .iter()
            .zip(&values)
            .filter_map(|(key, value)| value.as_ref().map(|v| (*key, v)));
        self.set_many(set)?;
        let cleared = keys
            .iter()
            .zip(values.iter().zip(existed))
            .filter(|(_, (value, existed))| value.is_none() && *existed)
            .map(|(key, _)| *key);
        self.clear_many(cleared)
    }
}

/// A list of values of type `T` per key.
///
/// ```no_run
/// use weir_sdk::ListState;
///
/// let recent: ListState<String> = ListState::open("recent")?;
/// recent.add(b"river", &"spring flood".to_owned())?;
/// let all: Vec<String> = recent.get(b"river")?;
/// recent.update(b"river", &all[all.len().saturating_sub(10)..])?;
/// # Ok::<(), weir_sdk::Error>(())
/// ```
pub struct ListState<T> {
    named: Named,
    handle: wit::ListState,
    _values: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// Opens (or creates) the list state `name`. Only possible in
    /// [`crate::Operator::open`].
    ///
    /// ```no_run
    /// let events: weir_sdk::ListState<i64> = weir_sdk::ListState::open("events")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<Self> {
        let named = Named::new(name);
        let handle = wit::ListState::open(name).map_err(|e| named.failed(e))?;
        Ok(Self {
            named,
            handle,
            _values: PhantomData,
        })
    }

    /// All values of `key`, oldest first; empty when there are none.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ListState<i64> = weir_sdk::ListState::open("events")?;
    /// let events: Vec<i64> = state.get(b"river")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get(&self, key: &[u8]) -> Result<Vec<T>> {
        let values = self.handle.get(key).map_err(|e| self.named.failed(e))?;
        values
            .iter()
            .map(|bytes| self.named.decode(bytes))
            .collect()
    }

    /// Appends `value` to the list of `key`.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ListState<i64> = weir_sdk::ListState::open("events")?;
    /// state.add(b"river", &1_700_000_000_000)?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn add(&self, key: &[u8], value: &T) -> Result<()> {
        self.named
            .encode([value, NOTHING], |value, _| self.handle.add(key, value))
    }

    /// Replaces the list of `key` with `values`.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ListState<i64> = weir_sdk::ListState::open("events")?;
    /// state.update(b"river", &[1, 2, 3])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn update(&self, key: &[u8], values: &[T]) -> Result<()> {
        let encoded = values
            .iter()
            .map(|value| {
                postcard::to_allocvec(value).map_err(|e| {
                    Error::new(format!(
                        "state `{}`: a value does not encode: {e}",
                        self.named.name
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.handle
            .update(key, &encoded)
            .map_err(|e| self.named.failed(e))
    }

    /// Removes the list of `key`.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ListState<i64> = weir_sdk::ListState::open("events")?;
    /// state.clear(b"river")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn clear(&self, key: &[u8]) -> Result<()> {
        self.handle.clear(key).map_err(|e| self.named.failed(e))
    }

    /// The lists of `keys`, in order, in one host call.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ListState<i64> = weir_sdk::ListState::open("events")?;
    /// let lists: Vec<Vec<i64>> = state.get_many([&b"river"[..], b"weir"])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<Vec<Vec<T>>> {
        let lists = self
            .handle
            .get_many(&flat(keys))
            .map_err(|e| self.named.failed(e))?;
        let mut next = 0;
        lists
            .counts
            .iter()
            .map(|&count| {
                let list = (next..next + count as usize)
                    .map(|i| self.named.decode(item(&lists.items, i)))
                    .collect();
                next += count as usize;
                list
            })
            .collect()
    }

    /// Appends each value to the list of its key, in order, in one host call.
    ///
    /// ```no_run
    /// # let state: weir_sdk::ListState<i64> = weir_sdk::ListState::open("events")?;
    /// state.add_many([(&b"river"[..], &1), (b"river", &2)])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn add_many<'k, 'v>(
        &self,
        entries: impl IntoIterator<Item = (&'k [u8], &'v T)>,
    ) -> Result<()>
    where
        T: 'v,
    {
        let (keys, values) = self.named.keyed(entries)?;
        if keys.ends.is_empty() {
            return Ok(());
        }
        self.handle
            .add_many(&keys, &values)
            .map_err(|e| self.named.failed(e))
    }
}

/// A map from user keys of type `K` to values of type `V`, per key.
///
/// User keys are compared by their postcard encoding.
///
/// ```no_run
/// use weir_sdk::MapState;
///
/// let per_hour: MapState<u32, u64> = MapState::open("per-hour")?;
/// let n = per_hour.get(b"river", &13)?.unwrap_or(0);
/// per_hour.put(b"river", &13, &(n + 1))?;
/// for (hour, count) in per_hour.entries(b"river")? {
///     println!("{hour}: {count}");
/// }
/// # Ok::<(), weir_sdk::Error>(())
/// ```
pub struct MapState<K, V> {
    named: Named,
    handle: wit::MapState,
    _entries: PhantomData<fn() -> (K, V)>,
}

impl<K, V> MapState<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// Opens (or creates) the map state `name`. Only possible in
    /// [`crate::Operator::open`].
    ///
    /// ```no_run
    /// let m: weir_sdk::MapState<String, u64> = weir_sdk::MapState::open("by-word")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<Self> {
        let named = Named::new(name);
        let handle = wit::MapState::open(name).map_err(|e| named.failed(e))?;
        Ok(Self {
            named,
            handle,
            _entries: PhantomData,
        })
    }

    /// The value under `user_key` in the map of `key`.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<String, u64> = weir_sdk::MapState::open("by-word")?;
    /// let n: Option<u64> = m.get(b"river", &"weir".to_owned())?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get(&self, key: &[u8], user_key: &K) -> Result<Option<V>> {
        match self.named.encode([user_key, NOTHING], |user_key, _| {
            self.handle.get(key, user_key)
        })? {
            Some(bytes) => self.named.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Puts `value` under `user_key` in the map of `key`.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<String, u64> = weir_sdk::MapState::open("by-word")?;
    /// m.put(b"river", &"weir".to_owned(), &3)?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn put(&self, key: &[u8], user_key: &K, value: &V) -> Result<()> {
        self.named.encode([user_key, value], |user_key, value| {
            self.handle.put(key, user_key, value)
        })
    }

    /// Removes `user_key` from the map of `key`.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<String, u64> = weir_sdk::MapState::open("by-word")?;
    /// m.remove(b"river", &"weir".to_owned())?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn remove(&self, key: &[u8], user_key: &K) -> Result<()> {
        self.named.encode([user_key, NOTHING], |user_key, _| {
            self.handle.remove(key, user_key)
        })
    }

    /// All entries of the map of `key`, in no particular order.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<String, u64> = weir_sdk::MapState::open("by-word")?;
    /// let total: u64 = m.entries(b"river")?.into_iter().map(|(_, n)| n).sum();
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn entries(&self, key: &[u8]) -> Result<Vec<(K, V)>> {
        let entries = self.handle.entries(key).map_err(|e| self.named.failed(e))?;
        entries
            .iter()
            .map(|(user_key, value)| Ok((self.named.decode(user_key)?, self.named.decode(value)?)))
            .collect()
    }

    /// Removes the whole map of `key`.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<String, u64> = weir_sdk::MapState::open("by-word")?;
    /// m.clear(b"river")?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn clear(&self, key: &[u8]) -> Result<()> {
        self.handle.clear(key).map_err(|e| self.named.failed(e))
    }

    /// For each pair, the value under the user key in the map of the key, in one host
    /// call.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<u32, u64> = weir_sdk::MapState::open("per-hour")?;
    /// let found: Vec<Option<u64>> = m.get_many([(&b"river"[..], &13), (b"weir", &14)])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn get_many<'k, 'u>(
        &self,
        entries: impl IntoIterator<Item = (&'k [u8], &'u K)>,
    ) -> Result<Vec<Option<V>>>
    where
        K: 'u,
    {
        let (keys, user_keys) = self.named.keyed(entries)?;
        let found = self
            .handle
            .get_many(&keys, &user_keys)
            .map_err(|e| self.named.failed(e))?;
        (0..found.present.len())
            .map(|i| match found.present[i] {
                0 => Ok(None),
                _ => self.named.decode(item(&found.items, i)).map(Some),
            })
            .collect()
    }

    /// For each triple, puts the value under the user key in the map of the key, in one
    /// host call.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<u32, u64> = weir_sdk::MapState::open("per-hour")?;
    /// m.put_many([(&b"river"[..], &13, &2), (b"weir", &14, &1)])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn put_many<'k, 'u, 'v>(
        &self,
        entries: impl IntoIterator<Item = (&'k [u8], &'u K, &'v V)>,
    ) -> Result<()>
    where
        K: 'u,
        V: 'v,
    {
        let (mut keys, mut user_keys, mut values) = (empty_blobs(), empty_blobs(), empty_blobs());
        for (key, user_key, value) in entries {
            push(&mut keys, key);
            self.named.encode_item(&mut user_keys, user_key)?;
            self.named.encode_item(&mut values, value)?;
        }
        if keys.ends.is_empty() {
            return Ok(());
        }
        self.handle
            .put_many(&keys, &user_keys, &values)
            .map_err(|e| self.named.failed(e))
    }

    /// For each pair, removes the user key from the map of the key, in one host call.
    ///
    /// ```no_run
    /// # let m: weir_sdk::MapState<u32, u64> = weir_sdk::MapState::open("per-hour")?;
    /// m.remove_many([(&b"river"[..], &13)])?;
    /// # Ok::<(), weir_sdk::Error>(())
    /// ```
    pub fn remove_many<'k, 'u>(
        &self,
        entries: impl IntoIterator<Item = (&'k [u8], &'u K)>,
    ) -> Result<()>
    where
        K: 'u,
    {
        let (keys, user_keys) = self.named.keyed(entries)?;
        if keys.ends.is_empty() {
            return Ok(());
        }
        self.handle
            .remove_many(&keys, &user_keys)
            .map_err(|e| self.named.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_key_error_names_the_state_and_the_key_group() {
        let error = Named::new("count").failed(wit::StateError::ForeignKey(17));
        assert!(error.message().starts_with(
            "state `count`: key belongs to key group 17, which this subtask does not own"
        ));
    }

    #[test]
    fn encoding_two_parts_hands_over_each_encoding_separately() {
        let named = Named::new("m");
        let parts = named
            .encode([&"ab".to_owned(), &300u32], |a, b| {
                Ok((a.to_vec(), b.to_vec()))
            })
            .ok();
        let expected = (
            postcard::to_allocvec("ab").ok(),
            postcard::to_allocvec(&300u32).ok(),
        );
        assert_eq!(parts.map(|(a, b)| (Some(a), Some(b))), Some(expected));
    }

    #[test]
    fn the_scratch_buffer_keeps_its_room_after_an_encode() {
        let named = Named::new("v");
        let first = named.encode([&vec![7u8; 64], NOTHING], |a, _| Ok(a.len()));
        let capacity = named.scratch.take().capacity();
        assert_eq!(first.ok(), Some(65));
        assert!(capacity >= 65);
    }

    #[test]
    fn undecodable_bytes_name_the_state_and_the_type() {
        let error = Named::new("count").decode::<u64>(&[0xff]).err();
        assert!(
            error.is_some_and(
                |e| e.message().contains("state `count`") && e.message().contains("u64")
            )
        );
    }
}
