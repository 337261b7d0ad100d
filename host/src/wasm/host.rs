//! The host side of the WIT imports: what a guest's state, output, timer and log calls
//! do. All of it works on [`GuestState`], the data of one subtask's store.

use crate::runtime::keygroup::{KeyGroupRange, key_group_of};
use crate::runtime::{KeyGroup, Record, now_ms};
use crate::state::{self, Domain, KeyedStateBackend, StateId, StateKind, Timers};
use crate::wasm::bindings::weir::operator::{log, output, state as wit_state, timers, types};
use crate::wasm::bindings::{self, TimeDomain};
use crate::wasm::sandbox::{CallDeadline, GuestClock, MemoryLimiter, OutputCapExceeded};
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
    pub(crate) out: Vec<Record>,
    pub(crate) timers: Timers,
    pub(crate) watermark: Option<i64>,
    /// States may only be opened while the guest is in `open`.
    pub(crate) opening: bool,
    /// Records may only be emitted from `process`, `on-timer`, `on-watermark` and
    /// `close`: a record emitted while snapshotting would belong to no checkpoint.
    pub(crate) emitting: bool,
    /// Caps the instance's linear memory at `memory-limit`.
    pub(crate) limiter: MemoryLimiter,
    /// The deadline of the call in progress, for waits the host does on its behalf.
    pub(crate) deadline: CallDeadline,
    /// The guest's monotonic clock, to turn its instants into deadlines.
    pub(crate) clock: Arc<GuestClock>,
    /// Bytes emitted during the current call, and the most one call may emit (the
    /// memory limit: what the guest could hold itself).
    pub(crate) out_bytes: u64,
    pub(crate) out_limit: u64,
}

/// What a record costs the host besides its key and value: the `Record` and the two
/// `Vec` headers, as an estimate.
const RECORD_OVERHEAD: u64 = 64;

/// The bytes a record occupies on the host, for the output cap.
fn footprint(record: &bindings::Record) -> u64 {
    let key = record.key.as_ref().map_or(0, Vec::len);
    u64::try_from(key + record.value.len()).unwrap_or(u64::MAX) + RECORD_OVERHEAD
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
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

    fn open_state(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if !self.opening {
            return Err(StateError::NotOpening);
        }
        self.backend.open_state(name, kind).map_err(to_wit)
    }
}

fn to_wit(error: state::StateError) -> StateError {
    match error {
        e @ state::StateError::KindMismatch { .. } => StateError::KindMismatch(e.to_string()),
        other => StateError::Backend(other.to_string()),
    }
}

/// Runs a state call for `key`: checks the key group, then calls `f` with it.
macro_rules! keyed {
    ($self:ident, $handle:expr, $key:expr, |$id:ident, $group:ident| $body:expr) => {{
        let $id = $self.table.get(&$handle)?.0;
        Ok(match $self.owned_group(&$key) {
            Ok($group) => $body.map_err(to_wit),
            Err(e) => Err(e),
        })
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

    fn drop(&mut self, this: Resource<ValueStateHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
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

    fn drop(&mut self, this: Resource<ListStateHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
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

    fn drop(&mut self, this: Resource<MapStateHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl types::Host for GuestState {}

impl output::Host for GuestState {
    fn emit(&mut self, records: Vec<bindings::Record>) -> wasmtime::Result<()> {
        if !self.emitting {
            wasmtime::bail!(
                "the operator emitted records outside `process`, `on-timer`, `on-watermark` and `close`; records emitted elsewhere would belong to no checkpoint"
            );
        }
        self.out_bytes = records
            .iter()
            .map(footprint)
            .fold(self.out_bytes, u64::saturating_add);
        if self.out_bytes > self.out_limit {
            // Freed at once: the call fails and nothing of it is kept.
            self.out = Vec::new();
            return Err(OutputCapExceeded {
                limit: self.out_limit,
            }
            .into());
        }
        if self.out.is_empty() {
            // Same layout on both sides: this collects in place, without a new allocation.
            self.out = records.into_iter().map(Record::from).collect();
        } else {
            self.out.extend(records.into_iter().map(Record::from));
        }
        Ok(())
    }
}

fn domain(d: TimeDomain) -> Domain {
    match d {
        TimeDomain::EventTime => Domain::EventTime,
        TimeDomain::ProcessingTime => Domain::ProcessingTime,
    }
}

impl timers::Host for GuestState {
    fn register(&mut self, d: TimeDomain, key: Vec<u8>, timestamp: i64) -> wasmtime::Result<()> {
        if let Err(StateError::ForeignKey(group)) = self.owned_group(&key) {
            wasmtime::bail!(
                "the guest registered a timer for a key of key group {group}, which this subtask does not own"
            );
        }
        self.timers.register(domain(d), key, timestamp);
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

impl From<bindings::Record> for Record {
    fn from(r: bindings::Record) -> Self {
        Self {
            key: r.key,
            value: r.value,
            timestamp: r.timestamp,
        }
    }
}

impl From<Record> for bindings::Record {
    fn from(r: Record) -> Self {
        Self {
            key: r.key,
            value: r.value,
            timestamp: r.timestamp,
        }
    }
}
