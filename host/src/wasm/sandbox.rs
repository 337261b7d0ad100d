//! The sandbox a guest runs in: what the host meters (fuel, a wall-clock deadline per
//! call, memory, output per call) and what it grants (WASI capabilities).
//!
//! The decisions here are plain functions over plain data (budgets, deadlines, which
//! limit a trap hit); the operator applies them to its store around every guest call.
//!
//! - **Fuel** counts WebAssembly instructions. A batch of *n* records gets
//!   `fuel-per-record × n`, so a record may use more than its budget when the others of
//!   its batch use less: one record is bounded by its budget plus the batch's slack,
//!   `(n − 1) × fuel-per-record`.
//! - **Epoch interruption** bounds every call's wall time: one ticker thread per engine
//!   increments the epoch every [`EPOCH_TICK`], and each call may last its
//!   `call-timeout` rounded up to a tick, plus one tick. The ticks are counted by Weir
//!   (the profiler's `Epochs`) and the store's epoch callback ends the call when the
//!   count reaches its deadline ([`epoch_step`]), so that the profiler may stop a call
//!   on the way to sample it without moving its deadline.
//! - **Host-side waits** do not run WebAssembly, so no epoch check stops them. The only
//!   blocking wait the host offers a guest is a monotonic-clock pollable (sleeping);
//!   [`add_capped_clock`] replaces those with ones that wake by the call's deadline.
//! - **Memory** is capped per instance, all linear memories together, by a
//!   [`ResourceLimiter`]; growing past the cap traps with [`MemoryCapExceeded`].

use crate::job::{SandboxSpec, format_size};
use crate::wasm::host::GuestState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, Resource};
use wasmtime::{ResourceLimiter, Trap};
use wasmtime_wasi::clocks::HostMonotonicClock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{FsPerms, WasiCtx};

/// How often the epoch advances. A deadline is enforced to within one tick, so ten
/// milliseconds keeps the smallest allowed `call-timeout` (100 ms) within 10 %; a
/// thread waking a hundred times a second costs nothing measurable, and a guest's epoch
/// check is a load and compare whatever the tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Fuel for a call that has no per-record budget (`open`, `close`, notifications,
/// `snapshot-state`): unlimited, so that only the call timeout bounds it. wasmtime keeps
/// fuel beyond `i64::MAX` in a reserve, so this never runs out.
pub const UNLIMITED_FUEL: u64 = u64::MAX;

/// The most table elements an instance may have: far beyond what a compiler emits for
/// function tables, far below what would hurt the host (8 bytes each).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Which kinds of metering an engine compiles into guest code. Both cost guest
/// throughput (see the `sandbox` benchmark), so each combination is its own engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Metering {
    /// Count fuel: per-record budgets and `sync-phase-fuel`.
    pub fuel: bool,
    /// Epoch interruption: `call-timeout`.
    pub epoch: bool,
}

impl Metering {
    /// What an operator with `sandbox` needs: epochs always (no call without a
    /// deadline), fuel unless `fuel-per-record = 0`.
    pub fn of(sandbox: &SandboxSpec) -> Self {
        Self {
            fuel: sandbox.fuel_per_record.is_some(),
            epoch: true,
        }
    }

    /// Everything on: what the job file's defaults need.
    pub const FULL: Self = Self {
        fuel: true,
        epoch: true,
    };
}

/// The fuel of a call that processes `records` records at `per_record` each.
pub fn batch_fuel(per_record: u64, records: usize) -> u64 {
    per_record.saturating_mul(u64::try_from(records.max(1)).unwrap_or(u64::MAX))
}

/// The epoch ticks a call with `timeout` gets: the timeout in whole ticks, rounded up,
/// plus one because the first tick may come at once. The call traps within
/// `[timeout, timeout + EPOCH_TICK]` (plus the ticker's scheduling delay).
pub fn epoch_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = timeout.as_nanos().div_ceil(tick) + 1;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// The next step of a call's epoch deadline at `epoch` (by Weir's count of ticks): `None`
/// once its deadline `deadline` is reached, and the call is interrupted; else `wish`
/// ticks, but at least one and never past the deadline.
pub fn epoch_step(epoch: u64, deadline: u64, wish: u64) -> Option<u64> {
    let left = deadline.checked_sub(epoch).filter(|&left| left > 0)?;
    Some(wish.clamp(1, left))
}

/// When the epoch deadline of a call armed at `armed` with `ticks` has certainly
/// passed (if the ticker is on time): a capped wait wakes then, so that the guest traps
/// at its next epoch check.
pub fn deadline_after(armed: Instant, ticks: u64) -> Instant {
    let wait = EPOCH_TICK.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX));
    armed.checked_add(wait).unwrap_or(armed)
}

/// The resource limit a guest call ran into: its runaway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runaway {
    /// It used up its fuel.
    Fuel,
    /// It ran (or waited) past its `call-timeout`.
    Deadline,
    /// It grew its memory past `memory-limit`.
    Memory,
    /// It exhausted its call stack (deep recursion).
    Stack,
    /// It emitted more than `memory-limit` bytes of records in one call.
    Output,
    /// It grew its keyed state past `[state] heap-limit`, or its timers past
    /// `[state] timer-limit`.
    State,
}

impl Runaway {
    /// Which limit a failed call hit, if it hit one: the trap code or the host's typed
    /// error, never the message text. `cut` says a wait was cut short at the deadline.
    pub fn of(error: &wasmtime::Error, cut: bool) -> Option<Self> {
        if error.downcast_ref::<MemoryCapExceeded>().is_some() {
            return Some(Self::Memory);
        }
        if error.downcast_ref::<OutputCapExceeded>().is_some() {
            return Some(Self::Output);
        }
        if error.downcast_ref::<StateCapExceeded>().is_some() {
            return Some(Self::State);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Some(Self::Fuel),
            Some(Trap::Interrupt) => Some(Self::Deadline),
            Some(Trap::StackOverflow) => Some(Self::Stack),
            _ if cut => Some(Self::Deadline),
            _ => None,
        }
    }

    /// What happened, as a sentence fragment after "`process` " (e.g. "ran out of fuel").
    pub fn describe(self, limits: &CallLimits) -> String {
        match self {
            Self::Fuel => match limits.fuel {
                Some(fuel) if limits.records > 1 => format!(
                    "ran out of fuel (fuel exhausted: {fuel} for {} records, fuel-per-record {})",
                    limits.records,
                    fuel / u64::try_from(limits.records).unwrap_or(1).max(1)
                ),
                Some(fuel) => format!("ran out of fuel (fuel exhausted: {fuel})"),
                None => "ran out of fuel (fuel exhausted)".to_owned(),
            },
            Self::Deadline => format!(
                "ran past its call-timeout of {:?} (deadline exceeded)",
                limits.timeout
            ),
            Self::Memory => format!(
                "grew its memory past memory-limit ({})",
                format_size(limits.memory)
            ),
            Self::Stack => "exhausted its call stack (stack overflow, e.g. deep recursion)".into(),
            Self::Output => format!(
                "emitted more than memory-limit ({}) of records in one call",
                format_size(limits.memory)
            ),
            Self::State => "went over a state limit".to_owned(),
        }
    }
}

/// The limits of one guest call, for its error message.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// The fuel it was given, when metered.
    pub fuel: Option<u64>,
    /// The records it was given (1 for calls without records).
    pub records: usize,
    /// `call-timeout`.
    pub timeout: Duration,
    /// `memory-limit`.
    pub memory: u64,
}

/// The trap of a guest that grew its memory past `memory-limit`.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory-limit exceeded: the guest asked for {} of linear memory in all, over its memory-limit of {}",
    format_size(*.wanted),
    format_size(*.limit)
)]
pub struct MemoryCapExceeded {
    /// Bytes of all its memories had the growth been allowed.
    pub wanted: u64,
    /// `memory-limit`.
    pub limit: u64,
}

/// The trap of a guest that emitted more than `memory-limit` bytes in one call.
#[derive(Debug, thiserror::Error)]
#[error(
    "output limit exceeded: the guest emitted over {} of records in one call (the memory-limit); emit less per record, or raise memory-limit",
    format_size(*.limit)
)]
pub struct OutputCapExceeded {
    /// `memory-limit`.
    pub limit: u64,
}

/// The trap of a guest whose state or timers would grow past their limit; the message
/// names the state and the limit, and says how to raise it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateCapExceeded(pub String);

/// The resource limiter of one instance: all its memories together stay within the
/// limit. The size of every memory passes through [`ResourceLimiter::memory_growing`]
/// (its creation is a growth from 0), so the running total is exact.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    used: u64,
    /// What the last allowed growth added, taken back if the growth then failed.
    last_growth: u64,
}

impl MemoryLimiter {
    /// A limiter for `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: 0,
            last_growth: 0,
        }
    }

    /// Bytes of linear memory the instance has.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used
    }

    /// Whether a memory may grow from `current` to `desired` bytes; on yes, counts it.
    pub fn grow(&mut self, current: usize, desired: usize) -> Result<(), MemoryCapExceeded> {
        let growth = u64::try_from(desired.saturating_sub(current)).unwrap_or(u64::MAX);
        let wanted = self.used.saturating_add(growth);
        if wanted > self.limit {
            return Err(MemoryCapExceeded {
                wanted,
                limit: self.limit,
            });
        }
        self.used = wanted;
        self.last_growth = growth;
        Ok(())
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // An error, not `Ok(false)`: most guests abort on a failed allocation with a
        // bare `unreachable`, while this traps at the allocation with a clear cause.
        self.grow(current, desired)?;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used = self.used.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The guest's monotonic clock: nanoseconds since the instance was created. The host
/// keeps the same origin to turn the guest's instants into deadlines.
pub struct GuestClock {
    origin: Instant,
}

impl GuestClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// The instant the guest calls `at`.
    pub fn instant(&self, at: u64) -> Option<Instant> {
        self.origin.checked_add(Duration::from_nanos(at))
    }
}

impl Default for GuestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The deadline of the call in progress, shared between the store and the pollables it
/// hands out.
#[derive(Clone, Debug, Default)]
pub struct CallDeadline {
    /// When waits must end: the epoch deadline has passed by then.
    pub at: Option<Instant>,
    /// Set when a wait was cut short at `at`: the call overran even if the guest then
    /// returned before its next epoch check.
    pub cut: Arc<AtomicBool>,
    /// The epoch, by Weir's count of ticks, at which the call is interrupted.
    pub epoch: u64,
}

impl CallDeadline {
    /// Arms the deadline for a new call: waits end `at`, guest code at `epoch`.
    pub fn arm(&mut self, at: Option<Instant>, epoch: u64) {
        self.at = at;
        self.epoch = epoch;
        self.cut.store(false, Ordering::Relaxed);
    }

    /// Whether a wait of the current call was cut short.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

/// A guest's sleep: wakes when asked or at the call's deadline, whichever is first.
struct CappedSleep {
    until: tokio::time::Instant,
    /// Set on waking when the deadline cut the sleep short.
    cut: Option<Arc<AtomicBool>>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedSleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.until).await;
        if let Some(cut) = &self.cut {
            cut.store(true, Ordering::Relaxed);
        }
    }
}

/// When a wait asked to last until `requested` (`None`: forever) ends, given the call's
/// `deadline`, and whether the deadline cut it short.
fn wake_at(requested: Option<Instant>, deadline: Option<Instant>) -> (Instant, bool) {
    match (requested, deadline) {
        (Some(requested), Some(deadline)) if requested <= deadline => (requested, false),
        (_, Some(deadline)) => (deadline, true),
        (Some(requested), None) => (requested, false),
        // No deadline (an engine without epochs, in benchmarks) and no end: a year.
        (None, None) => (Instant::now() + Duration::from_secs(365 * 24 * 3600), false),
    }
}

/// A sleep of the current call until `requested`, capped at the call's deadline.
fn capped_sleep(state: &GuestState, requested: Option<Instant>) -> CappedSleep {
    let (until, cut) = wake_at(requested, state.deadline.at);
    CappedSleep {
        until: tokio::time::Instant::from_std(until),
        cut: cut.then(|| state.deadline.cut.clone()),
    }
}

fn push_sleep(
    state: &mut GuestState,
    requested: Option<Instant>,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let sleep = capped_sleep(state, requested);
    let resource = state.table.push(sleep)?;
    Ok((subscribe(&mut state.table, resource)?,))
}

/// The `wasi:clocks/monotonic-clock` interface as wasmtime-wasi 48 registers it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces WASI's `subscribe-duration` and `subscribe-instant` (what `sleep` and
/// `poll` with a timeout use) with versions whose pollables wake by the call's
/// deadline. Without this a guest sleeping in a host wait is out of reach of epoch
/// interruption.
pub fn add_capped_clock(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: wasmtime::StoreContextMut<'_, GuestState>, (nanos,): (u64,)| {
            let requested = Instant::now().checked_add(Duration::from_nanos(nanos));
            push_sleep(store.data_mut(), requested)
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: wasmtime::StoreContextMut<'_, GuestState>, (at,): (u64,)| {
            let state = store.data_mut();
            let requested = state.clock.instant(at);
            push_sleep(state, requested)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The WASI context of a guest: stdio into the log, the monotonic clock `clock`, the
/// granted directories and environment, and nothing else: no network, no name lookup,
/// no inherited stdio, arguments or environment.
pub fn wasi_ctx(
    sandbox: &SandboxSpec,
    stdout: crate::wasm::stdio::LogStream,
    stderr: crate::wasm::stdio::LogStream,
    clock: Arc<GuestClock>,
) -> Result<WasiCtx, String> {
    let mut builder = WasiCtx::builder();
    builder
        .stdout(stdout)
        .stderr(stderr)
        .monotonic_clock(SharedClock(clock))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    for (name, value) in &sandbox.env {
        builder.env(name, value);
    }
    for grant in &sandbox.dirs {
        let perms = if grant.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        // wasmtime-wasi opens the directory with cap-std: every path the guest uses is
        // resolved beneath it, refusing `..` and symlinks that lead out.
        builder
            .preopened_dir(&grant.host, &grant.guest, perms)
            .map_err(|e| {
                format!(
                    "cannot open the granted directory {} (for {}): {e:#}",
                    grant.host.display(),
                    grant.guest
                )
            })?;
    }
    Ok(builder.build())
}

/// [`GuestClock`] behind an `Arc`, so that the host keeps the origin.
struct SharedClock(Arc<GuestClock>);

impl HostMonotonicClock for SharedClock {
    fn resolution(&self) -> u64 {
        self.0.resolution()
    }

    fn now(&self) -> u64 {
        self.0.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gets_the_per_record_budget_times_its_length() {
        assert_eq!(batch_fuel(1000, 64), 64_000);
        assert_eq!(batch_fuel(1000, 0), 1000, "a call without records gets one");
        assert_eq!(batch_fuel(u64::MAX / 2, 3), u64::MAX, "saturates");
    }

    #[test]
    fn a_deadline_is_rounded_up_to_whole_ticks_plus_one() {
        assert_eq!(epoch_ticks(Duration::from_millis(100)), 11);
        assert_eq!(epoch_ticks(Duration::from_millis(101)), 12);
        assert_eq!(epoch_ticks(Duration::ZERO), 1);
    }

    #[test]
    fn a_deadline_is_stepped_as_wished_but_never_past_it() {
        assert_eq!(
            epoch_step(100, 1101, 6000),
            Some(1001),
            "the whole deadline"
        );
        assert_eq!(epoch_step(100, 1101, 1), Some(1));
        assert_eq!(epoch_step(1100, 1101, 5), Some(1), "the last tick");
        assert_eq!(epoch_step(100, 1101, 0), Some(1), "at least a tick");
        assert_eq!(epoch_step(1101, 1101, 1), None, "reached: interrupted");
        assert_eq!(epoch_step(1200, 1101, 1), None, "passed while in the host");
    }

    #[test]
    fn a_capped_wait_ends_when_the_epoch_deadline_has_passed() {
        let armed = Instant::now();
        let ticks = epoch_ticks(Duration::from_millis(250));
        assert_eq!(
            deadline_after(armed, ticks),
            armed + Duration::from_millis(260)
        );
    }

    #[test]
    fn the_limiter_allows_growth_up_to_the_limit_over_all_memories() {
        let mut limiter = MemoryLimiter::new(4 << 20);
        assert!(limiter.grow(0, 2 << 20).is_ok(), "a first memory");
        assert!(limiter.grow(0, 1 << 20).is_ok(), "a second memory");
        assert!(
            limiter.grow(1 << 20, 2 << 20).is_ok(),
            "exactly at the limit"
        );
        assert_eq!(limiter.used(), 4 << 20);
        let refused = limiter.grow(2 << 20, (2 << 20) + 65536);
        assert!(
            matches!(refused, Err(MemoryCapExceeded { wanted, limit }) if wanted == (4 << 20) + 65536 && limit == 4 << 20)
        );
        assert_eq!(limiter.used(), 4 << 20, "a refused growth is not counted");
    }

    #[test]
    fn a_growth_that_failed_after_being_allowed_is_taken_back() {
        let mut limiter = MemoryLimiter::new(4 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).is_ok());
        assert!(limiter.memory_growing(1 << 20, 3 << 20, None).is_ok());
        assert!(
            limiter
                .memory_grow_failed(wasmtime::Error::msg("mmap failed"))
                .is_ok()
        );
        assert_eq!(limiter.used(), 1 << 20);
    }

    #[test]
    fn growing_past_the_limit_is_a_typed_trap_not_a_failed_grow() {
        let mut limiter = MemoryLimiter::new(1 << 20);
        let error = limiter
            .memory_growing(0, 2 << 20, None)
            .expect_err("a trap");
        assert_eq!(Runaway::of(&error, false), Some(Runaway::Memory));
        assert!(error.to_string().contains("memory-limit"), "{error}");
    }

    #[test]
    fn traps_are_classified_by_their_code() {
        let fuel = wasmtime::Error::new(Trap::OutOfFuel);
        assert_eq!(Runaway::of(&fuel, false), Some(Runaway::Fuel));
        let epoch = wasmtime::Error::new(Trap::Interrupt);
        assert_eq!(Runaway::of(&epoch, false), Some(Runaway::Deadline));
        let stack = wasmtime::Error::new(Trap::StackOverflow);
        assert_eq!(Runaway::of(&stack, false), Some(Runaway::Stack));
        let output = wasmtime::Error::new(OutputCapExceeded { limit: 1 });
        assert_eq!(Runaway::of(&output, false), Some(Runaway::Output));
        let panic = wasmtime::Error::new(Trap::UnreachableCodeReached);
        assert_eq!(Runaway::of(&panic, false), None, "a panic is no runaway");
        assert_eq!(
            Runaway::of(&panic, true),
            Some(Runaway::Deadline),
            "unless a wait was cut at the deadline"
        );
    }

    #[test]
    fn a_sleep_within_the_deadline_is_kept_and_a_longer_one_is_cut() {
        let now = Instant::now();
        let deadline = Some(now + Duration::from_millis(100));
        let short = now + Duration::from_millis(10);
        assert_eq!(wake_at(Some(short), deadline), (short, false));
        let long = now + Duration::from_secs(3600);
        assert_eq!(
            wake_at(Some(long), deadline),
            (now + Duration::from_millis(100), true)
        );
        assert_eq!(
            wake_at(None, deadline),
            (now + Duration::from_millis(100), true)
        );
        assert_eq!(wake_at(Some(long), None), (long, false));
    }
}
