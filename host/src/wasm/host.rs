//! The host side of the WIT imports: what a guest's state, output, timer and log calls
//! do. All of it works on [`GuestState`], the data of one subtask's store.
//!
//! Flat buffers from the guest (`blobs`, `batch`) are moved, not copied, into the host's
//! [`Blobs`] and [`Batch`], and checked before use: a guest that sends ends out of range
//! traps with a sentence instead of reaching the host's indexing. A `-many` state call
//! computes every key's key group once, and changes nothing if any key is foreign.

use crate::runtime::batch::{BlobLists, Malformed, MaybeBlobs};
use crate::runtime::keygroup::{KeyGroupRange, key_group_of};
use crate::runtime::{Batch, Blobs, KeyGroup, now_ms};
use crate::state::{self, Domain, GroupedKeys, KeyedStateBackend, StateId, StateKind, Timers};
use crate::wasm::bindings::TimeDomain;
use crate::wasm::bindings::weir::operator::{log, output, state as wit_state, timers, types};
use crate::wasm::sandbox::{
    CallDeadline, GuestClock, MemoryLimiter, OutputCapExceeded, StateCapExceeded,
};
use std::sync::Arc;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wit_state::StateError;

/// The value behind a guest's `value-state` handle.
#[derive(Debug)]
pub struct ValueStateHandle(StateId);
/// The value behind a guest's `list-state` handle.
#[derive(Debug)]
pub struct ListStateHandle(StateId);
/// The value behind a guest's `map-state` handle.
#[derive(Debug)]
pub struct MapStateHandle(StateId);

/// Everything the host keeps for one guest instance.
pub struct GuestState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) backend: Box<dyn KeyedStateBackend>,
    pub(crate) groups: KeyGroupRange,
    pub(crate) max_parallelism: u32,
    /// What the guest emitted during the current call.
    pub(crate) out: Batch,
    pub(crate) timers: Timers,
    pub(crate) watermark: Option<i64>,
    /// States may only be opened while the guest is in `open`.
    pub(crate) opening: bool,
    /// Records may only be emitted from `process`, `on-timer`, `on-watermark` and
    /// `close`: a record emitted while snapshotting would belong to no checkpoint.
    pub(crate) emitting: bool,
    /// Caps the instance's linear memory at `memory-limit`.
    pub(crate) limiter: MemoryLimiter,
    /// The deadline of the call in progress, for waits the host does on its behalf and
    /// for the epoch callback.
    pub(crate) deadline: CallDeadline,
    /// The host's call into the guest in progress (`process`), for the profiler.
    pub(crate) call: &'static str,
    /// The guest's monotonic clock, to turn its instants into deadlines.
    pub(crate) clock: Arc<GuestClock>,
    /// Bytes emitted during the current call, and the most one call may emit (the
    /// memory limit: what the guest could hold itself).
    pub(crate) out_bytes: u64,
    pub(crate) out_limit: u64,
    /// The key groups of the keys of the `-many` call in progress, reused between calls.
    key_groups: Vec<KeyGroup>,
    /// State handles the guest holds.
    open_handles: u32,
    /// The most timers the subtask may have pending (`[state] timer-limit`).
    timer_limit: u64,
}

/// What a record costs the host besides its key and value: its ends, timestamp and
/// flags in the batch's buffers.
const RECORD_OVERHEAD: u64 = 13;

impl GuestState {
    /// The state of a new instance of the subtask that owns `groups`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        wasi: WasiCtx,
        backend: Box<dyn KeyedStateBackend>,
        groups: KeyGroupRange,
        max_parallelism: u32,
        timers: Timers,
        watermark: Option<i64>,
        limiter: MemoryLimiter,
        clock: Arc<GuestClock>,
        out_limit: u64,
        timer_limit: u64,
    ) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            backend,
            groups,
            max_parallelism,
            out: Batch::new(),
            timers,
            watermark,
            opening: false,
            emitting: false,
            limiter,
            deadline: CallDeadline::default(),
            call: "instantiate",
            clock,
            out_bytes: 0,
            out_limit,
            key_groups: Vec::new(),
            open_handles: 0,
            timer_limit,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A malformed buffer from the guest: a trap, since the guest's own bindings built it
/// wrong and nothing it could handle went wrong.
fn malformed(e: Malformed) -> wasmtime::Error {
    wasmtime::Error::msg(format!("the operator passed a malformed buffer: {e}"))
}

/// The guest's `blobs`, moved into the host's type and checked.
fn blobs(b: types::BlobsResult, what: &str) -> wasmtime::Result<Blobs> {
    let blobs = Blobs {
        bytes: b.bytes,
        ends: b.ends,
    };
    blobs.check(what).map_err(malformed)?;
    Ok(blobs)
}

fn to_wit_blobs(b: Blobs) -> types::BlobsResult {
    types::BlobsResult {
        bytes: b.bytes,
        ends: b.ends,
    }
}

fn to_wit_maybe(m: MaybeBlobs) -> types::MaybeBlobs {
    types::MaybeBlobs {
        items: to_wit_blobs(m.items),
        present: m.present,
    }
}

/// Checks that `items` has one item per key.
fn same_length(keys: &Blobs, items: &Blobs, what: &str) -> wasmtime::Result<()> {
    if keys.len() != items.len() {
        wasmtime::bail!(
            "the operator passed {} keys but {} {what} to a `-many` state call",
            keys.len(),
            items.len()
        );
    }
    Ok(())
}

impl GuestState {
    /// The key group of `key`, if this subtask owns it.
    fn owned_group(&self, key: &[u8]) -> Result<KeyGroup, StateError> {
        let group = key_group_of(key, self.max_parallelism);
        if self.groups.contains(group) {
            Ok(group)
        } else {
            Err(StateError::ForeignKey(u32::from(group.0)))
        }
    }

    /// Computes the key group of every key into `key_groups`, or names the first key
    /// this subtask does not own.
    fn group_keys(&mut self, keys: &Blobs) -> Result<(), StateError> {
        let mut groups = std::mem::take(&mut self.key_groups);
        groups.clear();
        let result = keys.iter().try_for_each(|key| {
            groups.push(self.owned_group(key)?);
            Ok(())
        });
        self.key_groups = groups;
        result
    }

    /// Runs a `-many` call over `keys`: groups them, then calls `f` with them.
    fn many<R>(
        &mut self,
        keys: &Blobs,
        f: impl FnOnce(&mut dyn KeyedStateBackend, GroupedKeys<'_>) -> Result<R, state::StateError>,
    ) -> wasmtime::Result<Result<R, StateError>> {
        if let Err(e) = self.group_keys(keys) {
            return Ok(Err(e));
        }
        let grouped = GroupedKeys {
            keys,
            groups: &self.key_groups,
        };
        lift(f(self.backend.as_mut(), grouped))
    }

    fn open_state(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if !self.opening {
            return Err(StateError::NotOpening);
        }
        if self.open_handles >= MAX_STATE_HANDLES {
            return Err(StateError::Backend(format!(
                "cannot open state `{name}`: this operator instance holds {MAX_STATE_HANDLES} open state handles, the most one may. Open each state once in `open` and keep its handle (states are distinguished by keys, not by handles)"
            )));
        }
        let id = self.backend.open_state(name, kind).map_err(to_wit)?;
        self.open_handles += 1;
        Ok(id)
    }

    /// The guest dropped a state handle.
    fn closed_handle(&mut self) {
        self.open_handles = self.open_handles.saturating_sub(1);
    }
}

/// The most state handles one instance may hold open. Far more than an operator needs
/// (one per state it uses), and far below wasmtime's limit for all the handles of a
/// store (100,000, which WASI's streams count against too).
pub(crate) const MAX_STATE_HANDLES: u32 = 10_000;

fn to_wit(error: state::StateError) -> StateError {
    match error {
        e @ state::StateError::KindMismatch { .. } => StateError::KindMismatch(e.to_string()),
        other => StateError::Backend(other.to_string()),
    }
}

/// A backend's answer for the guest: a state over its limit traps, as a runaway (the
/// guest grew it); every other failure is the guest's to handle.
fn lift<R>(result: Result<R, state::StateError>) -> wasmtime::Result<Result<R, StateError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e @ state::StateError::OverLimit { .. }) => Err(StateCapExceeded(e.to_string()).into()),
        Err(e) => Ok(Err(to_wit(e))),
    }
}

/// Runs a state call for `key`: checks the key group, then calls `f` with it.
macro_rules! keyed {
    ($self:ident, $handle:expr, $key:expr, |$id:ident, $group:ident| $body:expr) => {{
        let $id = $self.table.get(&$handle)?.0;
        match $self.owned_group(&$key) {
            Ok($group) => lift($body),
            Err(e) => Ok(Err(e)),
        }
    }};
}

impl wit_state::Host for GuestState {}

impl wit_state::HostValueState for GuestState {
    fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ValueStateHandle>, StateError>> {
        match self.open_state(&name, StateKind::Value) {
            Ok(id) => Ok(Ok(self.table.push(ValueStateHandle(id))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn get(
        &mut self,
        this: Resource<ValueStateHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .value_get(id, group, &key))
    }

    fn set(
        &mut self,
        this: Resource<ValueStateHandle>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .value_set(id, group, key, value))
    }

    fn clear(
        &mut self,
        this: Resource<ValueStateHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .clear(id, group, &key))
    }

    fn get_many(
        &mut self,
        this: Resource<ValueStateHandle>,
        keys: types::BlobsResult,
    ) -> wasmtime::Result<Result<types::MaybeBlobs, StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `value-state.get-many`")?;
        let mut out = MaybeBlobs::default();
        Ok(self
            .many(&keys, |backend, keys| {
                backend.value_get_many(id, keys, &mut out)
            })?
            .map(|()| to_wit_maybe(out)))
    }

    fn set_many(
        &mut self,
        this: Resource<ValueStateHandle>,
        keys: types::BlobsResult,
        values: types::BlobsResult,
    ) -> wasmtime::Result<Result<(), StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `value-state.set-many`")?;
        let values = blobs(values, "the values of `value-state.set-many`")?;
        same_length(&keys, &values, "values")?;
        self.many(&keys, |backend, keys| {
            backend.value_set_many(id, keys, &values)
        })
    }

    fn clear_many(
        &mut self,
        this: Resource<ValueStateHandle>,
        keys: types::BlobsResult,
    ) -> wasmtime::Result<Result<(), StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `value-state.clear-many`")?;
        self.many(&keys, |backend, keys| backend.clear_many(id, keys))
    }

    fn drop(&mut self, this: Resource<ValueStateHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.closed_handle();
        Ok(())
    }
}

impl wit_state::HostListState for GuestState {
    fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<ListStateHandle>, StateError>> {
        match self.open_state(&name, StateKind::List) {
            Ok(id) => Ok(Ok(self.table.push(ListStateHandle(id))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn get(
        &mut self,
        this: Resource<ListStateHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .list_get(id, group, &key))
    }

    fn add(
        &mut self,
        this: Resource<ListStateHandle>,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .list_add(id, group, key, value))
    }

    fn update(
        &mut self,
        this: Resource<ListStateHandle>,
        key: Vec<u8>,
        values: Vec<Vec<u8>>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .list_update(id, group, key, values))
    }

    fn clear(
        &mut self,
        this: Resource<ListStateHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .clear(id, group, &key))
    }

    fn get_many(
        &mut self,
        this: Resource<ListStateHandle>,
        keys: types::BlobsResult,
    ) -> wasmtime::Result<Result<types::BlobLists, StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `list-state.get-many`")?;
        let mut out = BlobLists::default();
        Ok(self
            .many(&keys, |backend, keys| {
                backend.list_get_many(id, keys, &mut out)
            })?
            .map(|()| types::BlobLists {
                items: to_wit_blobs(out.items),
                counts: out.counts,
            }))
    }

    fn add_many(
        &mut self,
        this: Resource<ListStateHandle>,
        keys: types::BlobsResult,
        values: types::BlobsResult,
    ) -> wasmtime::Result<Result<(), StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `list-state.add-many`")?;
        let values = blobs(values, "the values of `list-state.add-many`")?;
        same_length(&keys, &values, "values")?;
        self.many(&keys, |backend, keys| {
            backend.list_add_many(id, keys, &values)
        })
    }

    fn drop(&mut self, this: Resource<ListStateHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.closed_handle();
        Ok(())
    }
}

impl wit_state::HostMapState for GuestState {
    fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<MapStateHandle>, StateError>> {
        match self.open_state(&name, StateKind::Map) {
            Ok(id) => Ok(Ok(self.table.push(MapStateHandle(id))?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn get(
        &mut self,
        this: Resource<MapStateHandle>,
        key: Vec<u8>,
        user_key: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .map_get(id, group, &key, &user_key))
    }

    fn put(
        &mut self,
        this: Resource<MapStateHandle>,
        key: Vec<u8>,
        user_key: Vec<u8>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .map_put(id, group, key, user_key, value))
    }

    fn remove(
        &mut self,
        this: Resource<MapStateHandle>,
        key: Vec<u8>,
        user_key: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .map_remove(id, group, &key, &user_key))
    }

    fn entries(
        &mut self,
        this: Resource<MapStateHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<(Vec<u8>, Vec<u8>)>, StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .map_entries(id, group, &key))
    }

    fn clear(
        &mut self,
        this: Resource<MapStateHandle>,
        key: Vec<u8>,
    ) -> wasmtime::Result<Result<(), StateError>> {
        keyed!(self, this, key, |id, group| self
            .backend
            .clear(id, group, &key))
    }

    fn get_many(
        &mut self,
        this: Resource<MapStateHandle>,
        keys: types::BlobsResult,
        user_keys: types::BlobsResult,
    ) -> wasmtime::Result<Result<types::MaybeBlobs, StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `map-state.get-many`")?;
        let user_keys = blobs(user_keys, "the user keys of `map-state.get-many`")?;
        same_length(&keys, &user_keys, "user keys")?;
        let mut out = MaybeBlobs::default();
        Ok(self
            .many(&keys, |backend, keys| {
                backend.map_get_many(id, keys, &user_keys, &mut out)
            })?
            .map(|()| to_wit_maybe(out)))
    }

    fn put_many(
        &mut self,
        this: Resource<MapStateHandle>,
        keys: types::BlobsResult,
        user_keys: types::BlobsResult,
        values: types::BlobsResult,
    ) -> wasmtime::Result<Result<(), StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `map-state.put-many`")?;
        let user_keys = blobs(user_keys, "the user keys of `map-state.put-many`")?;
        let values = blobs(values, "the values of `map-state.put-many`")?;
        same_length(&keys, &user_keys, "user keys")?;
        same_length(&keys, &values, "values")?;
        self.many(&keys, |backend, keys| {
            backend.map_put_many(id, keys, &user_keys, &values)
        })
    }

    fn remove_many(
        &mut self,
        this: Resource<MapStateHandle>,
        keys: types::BlobsResult,
        user_keys: types::BlobsResult,
    ) -> wasmtime::Result<Result<(), StateError>> {
        let id = self.table.get(&this)?.0;
        let keys = blobs(keys, "the keys of `map-state.remove-many`")?;
        let user_keys = blobs(user_keys, "the user keys of `map-state.remove-many`")?;
        same_length(&keys, &user_keys, "user keys")?;
        self.many(&keys, |backend, keys| {
            backend.map_remove_many(id, keys, &user_keys)
        })
    }

    fn drop(&mut self, this: Resource<MapStateHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.closed_handle();
        Ok(())
    }
}

impl types::Host for GuestState {}

impl output::Host for GuestState {
    fn emit(&mut self, records: types::BatchResult) -> wasmtime::Result<()> {
        if !self.emitting {
            wasmtime::bail!(
                "the operator emitted records outside `process`, `on-timer`, `on-watermark` and `close`; records emitted elsewhere would belong to no checkpoint"
            );
        }
        let mut batch = Batch {
            keys: blobs(records.keys, "the keys of `output.emit`")?,
            values: blobs(records.values, "the values of `output.emit`")?,
            timestamps: records.timestamps,
            flags: records.flags,
        };
        batch
            .check("the batch of `output.emit`")
            .map_err(malformed)?;
        let records = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        self.out_bytes = self
            .out_bytes
            .saturating_add(u64::try_from(batch.payload_bytes()).unwrap_or(u64::MAX))
            .saturating_add(records.saturating_mul(RECORD_OVERHEAD));
        if self.out_bytes > self.out_limit {
            // Freed at once: the call fails and nothing of it is kept.
            self.out = Batch::new();
            return Err(OutputCapExceeded {
                limit: self.out_limit,
            }
            .into());
        }
        self.out.take_from(&mut batch);
        Ok(())
    }
}

fn domain(d: TimeDomain) -> Domain {
    match d {
        TimeDomain::EventTime => Domain::EventTime,
        TimeDomain::ProcessingTime => Domain::ProcessingTime,
    }
}

impl GuestState {
    /// Traps, as a runaway, when a new timer would take the pending ones past the limit.
    fn check_timer_room(&self, d: Domain, key: &[u8], timestamp: i64) -> wasmtime::Result<()> {
        let pending = u64::try_from(self.timers.len()).unwrap_or(u64::MAX);
        if pending >= self.timer_limit && !self.timers.contains(d, key, timestamp) {
            return Err(StateCapExceeded(format!(
                "a new timer would take this subtask's pending timers past [state] timer-limit = {}. Raise timer-limit, or register fewer timers (one per key and window, deleting those no longer needed)",
                self.timer_limit
            ))
            .into());
        }
        Ok(())
    }
}

impl timers::Host for GuestState {
    fn register(&mut self, d: TimeDomain, key: Vec<u8>, timestamp: i64) -> wasmtime::Result<()> {
        if let Err(StateError::ForeignKey(group)) = self.owned_group(&key) {
            wasmtime::bail!(
                "the guest registered a timer for a key of key group {group}, which this subtask does not own"
            );
        }
        self.check_timer_room(domain(d), &key, timestamp)?;
        self.timers.register(domain(d), key, timestamp);
        Ok(())
    }

    fn register_many(
        &mut self,
        d: TimeDomain,
        keys: types::BlobsResult,
        timestamps: Vec<i64>,
    ) -> wasmtime::Result<()> {
        let keys = blobs(keys, "the keys of `timers.register-many`")?;
        if keys.len() != timestamps.len() {
            wasmtime::bail!(
                "the operator passed {} keys but {} timestamps to `timers.register-many`",
                keys.len(),
                timestamps.len()
            );
        }
        if let Err(StateError::ForeignKey(group)) = self.group_keys(&keys) {
            wasmtime::bail!(
                "the guest registered a timer for a key of key group {group}, which this subtask does not own"
            );
        }
        for (key, timestamp) in keys.iter().zip(timestamps) {
            self.check_timer_room(domain(d), key, timestamp)?;
            self.timers.register(domain(d), key.to_vec(), timestamp);
        }
        Ok(())
    }

    fn delete(&mut self, d: TimeDomain, key: Vec<u8>, timestamp: i64) -> wasmtime::Result<()> {
        self.timers.delete(domain(d), key, timestamp);
        Ok(())
    }

    fn current_watermark(&mut self) -> wasmtime::Result<Option<i64>> {
        Ok(self.watermark)
    }

    fn current_processing_time(&mut self) -> wasmtime::Result<i64> {
        Ok(now_ms())
    }
}

impl log::Host for GuestState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        // The subtask's span names the operator and subtask.
        match level {
            log::Level::Trace => tracing::trace!(target: "weir::guest", "{message}"),
            log::Level::Debug => tracing::debug!(target: "weir::guest", "{message}"),
            log::Level::Info => tracing::info!(target: "weir::guest", "{message}"),
            log::Level::Warn => tracing::warn!(target: "weir::guest", "{message}"),
            log::Level::Error => tracing::error!(target: "weir::guest", "{message}"),
        }
        Ok(())
    }
}
