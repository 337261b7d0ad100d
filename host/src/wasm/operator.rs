//! [`WasmOperator`]: one guest instance, driven by one subtask.
//!
//! Each call hands the guest a whole batch and collects what it emitted from the store
//! afterwards; the subtask routes it. Every call is metered (see `sandbox`): fuel for
//! the batch, a wall-clock deadline, memory and output caps. A trap ends the instance:
//! it is reported with the guest's backtrace and never called again, unless the
//! operator dead-letters runaway records, in which case a new instance takes its place
//! (see `dead_letter`).

use crate::checkpoint::snapshot::{SnapshotParts, SnapshotType};
use crate::job::{RunawayPolicy, SandboxSpec};
use crate::runtime::keygroup::KeyGroupRange;
use crate::runtime::{
    Batch, Blobs, CheckpointId, Fault, Operator, PartsWriter, Record, RestoredParts, Snapshot,
    TaskError, TaskInfo, now_ms,
};
use crate::state::{
    BackendSnapshot, Domain, HeapBackend, KeyedStateBackend, RestoredState, Timers,
};
use crate::wasm::OperatorComponent;
use crate::wasm::bindings::weir::operator::types as wit;
use crate::wasm::bindings::{self, GuestError, TimeDomain};
use crate::wasm::dead_letter::{DeadLetter, DeadLetterFile, ReplayLog, Replayed, RestorePoint};
use crate::wasm::host::GuestState;
use crate::wasm::profile::{self, Attached, Probe, Profiler};
use crate::wasm::sandbox::{
    CallLimits, GuestClock, MemoryLimiter, Runaway, UNLIMITED_FUEL, batch_fuel, deadline_after,
    epoch_ticks, wasi_ctx,
};
use crate::wasm::stdio::{LogStream, Stream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, WasmBacktrace};

/// What an operator's subtasks are instantiated with.
#[derive(Clone, Debug)]
pub struct GuestSettings {
    /// The config string handed to the guest's `open`.
    pub config: String,
    /// Limits and grants.
    pub sandbox: SandboxSpec,
    /// Whether the keyed state backend restores from its encoded snapshot in memory
    /// (the heap backend does; RocksDB keeps files): `dead-letter` needs it.
    pub local_restore: bool,
    /// The most timers the subtask may have pending (`[state] timer-limit`).
    pub timer_limit: u64,
    /// The run's stack sampler, where each subtask registers.
    pub profiler: Profiler,
}

/// The most backtrace frames a message shows: a stack overflow has thousands, and the
/// innermost are the ones that tell.
const MAX_FRAMES: usize = 40;

/// The most distinct keys an error names for a batch.
const MAX_KEYS: usize = 3;

/// The guest's view of `batch`: slices of the host's buffers, lowered without a copy
/// into owned values first.
fn lower(batch: &Batch) -> wit::BatchParam<'_> {
    wit::BatchParam {
        keys: blobs_param(&batch.keys),
        values: blobs_param(&batch.values),
        timestamps: &batch.timestamps,
        flags: &batch.flags,
    }
}

fn blobs_param(blobs: &Blobs) -> wit::BlobsParam<'_> {
    wit::BlobsParam {
        bytes: &blobs.bytes,
        ends: &blobs.ends,
    }
}

/// A guest instance and its store.
struct Instance {
    store: Store<GuestState>,
    guest: bindings::Operator,
    /// The guest's stderr, whose last lines go into the error of a call that traps.
    stderr: LogStream,
    /// Counts this instance as live in its subtask's probe while it exists.
    _attached: Attached,
}

/// A guest call that did not succeed.
#[derive(Debug)]
enum CallFailure {
    /// The guest returned an error; the instance is usable.
    Returned(String),
    /// The instance trapped (or overran its deadline in a host wait) and is gone.
    Trapped {
        /// The limit it hit, if that was the cause.
        runaway: Option<Runaway>,
        /// What happened, a sentence.
        message: String,
        /// The guest's backtrace with function names, when there is one.
        backtrace: String,
        /// What the guest wrote to stderr during the call: a panic's message.
        said: Vec<String>,
    },
}

impl CallFailure {
    fn runaway(&self) -> Option<Runaway> {
        match self {
            CallFailure::Trapped { runaway, .. } => *runaway,
            CallFailure::Returned(_) => None,
        }
    }
}

/// The records a failed call was given: where they are in the subtask's input.
struct Span<'a> {
    first: u64,
    records: &'a Batch,
}

impl Span<'_> {
    /// "record 41 of this subtask's input (key "poison")", or a range with some keys.
    fn describe(&self) -> String {
        let show = |key: Option<&[u8]>| match key {
            Some(key) => {
                let text = String::from_utf8_lossy(key);
                let short: String = text.chars().take(40).collect();
                format!("\"{short}\"")
            }
            None => "none".to_owned(),
        };
        match self.records.len() {
            1 => format!(
                "record {} of this subtask's input (key {})",
                self.first,
                show(self.records.key(0))
            ),
            len => {
                let mut keys: Vec<Option<&[u8]>> = Vec::new();
                for i in 0..len {
                    let key = self.records.key(i);
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                let shown: Vec<String> = keys.iter().take(MAX_KEYS).map(|k| show(*k)).collect();
                let more = match keys.len().saturating_sub(MAX_KEYS) {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                let last = self.first + u64::try_from(len).unwrap_or(1) - 1;
                format!(
                    "records {}..={last} of this subtask's input (keys {}{more}; with batch-size = 1 the error names the one record)",
                    self.first,
                    shown.join(", ")
                )
            }
        }
    }
}

/// What `dead-letter` keeps: where letters go, the restore point and the log since.
struct Recovery {
    file: DeadLetterFile,
    log: ReplayLog,
    point: Option<RestorePoint>,
    /// Why there is no restore point, when there is none.
    unavailable: String,
}

/// A guest operator instance of one subtask.
pub struct WasmOperator {
    component: OperatorComponent,
    info: TaskInfo,
    settings: Arc<GuestSettings>,
    /// The subtask's slot in the profiler, kept by every instance it gets.
    probe: Arc<Probe>,
    instance: Instance,
    context: OpenContext,
    /// Set once the instance trapped: it must not be entered again.
    trapped: bool,
    /// Set once `close` returned: the operator is finished.
    closed: bool,
    /// Records this subtask has taken in, counted across restores: the position of the
    /// next record.
    position: u64,
    /// Fuel the guest used in the last synchronous phase.
    sync_fuel: Option<u64>,
    /// With `on-runaway = "dead-letter"`.
    recovery: Option<Recovery>,
}

/// What `open` tells the guest.
#[derive(Clone, Debug)]
struct OpenContext {
    operator_id: String,
    config: String,
    subtask_index: u32,
    parallelism: u32,
    max_parallelism: u32,
    restored: bool,
}

/// A new instance of `component` for subtask `info`, with its keyed state in `backend`
/// and its stack in `probe`.
fn instantiate(
    component: &OperatorComponent,
    info: &TaskInfo,
    settings: &GuestSettings,
    probe: &Arc<Probe>,
    backend: Box<dyn KeyedStateBackend>,
    timers: Timers,
    watermark: Option<i64>,
) -> Result<Instance, TaskError> {
    let sandbox = &settings.sandbox;
    let task: Arc<str> = Arc::from(info.name());
    let clock = Arc::new(GuestClock::new());
    let stderr = LogStream::new(task.clone(), Stream::Stderr);
    let wasi = wasi_ctx(
        sandbox,
        LogStream::new(task, Stream::Stdout),
        stderr.clone(),
        clock.clone(),
    )
    .map_err(|message| TaskError::failed(Fault::External, message))?;
    let state = GuestState::new(
        wasi,
        backend,
        KeyGroupRange::for_subtask(info.subtask, info.parallelism, info.max_parallelism),
        info.max_parallelism,
        timers,
        watermark,
        MemoryLimiter::new(sandbox.memory_limit),
        clock,
        sandbox.memory_limit,
        settings.timer_limit,
    );
    let mut store = Store::new(&component.engine, state);
    store.limiter(|state| &mut state.limiter);
    if let Some(epochs) = &component.epochs {
        profile::watch(&mut store, probe, epochs);
    }
    // What one call may copy from the guest to the host. The guest cannot pass more
    // than its memory holds, so `memory-limit` is the bound that counts; twice it leaves
    // room for the copy's own accounting (a string's transcoding, a list's lengths).
    store.set_hostcall_fuel(
        usize::try_from(sandbox.memory_limit.saturating_mul(2)).unwrap_or(usize::MAX),
    );
    arm(
        &mut store,
        component,
        probe,
        sandbox,
        UNLIMITED_FUEL,
        "instantiate",
    );
    let guest = component.pre.instantiate(&mut store).map_err(|e| {
        let path = component.path.display();
        match Runaway::of(&e, false) {
            Some(Runaway::Memory) => TaskError::failed(
                Fault::User,
                format!(
                    "could not instantiate {path}: {e}. The guest needs more memory just to start; raise memory-limit."
                ),
            ),
            _ => TaskError::failed(Fault::Guest, format!("could not instantiate {path}: {e:?}")),
        }
    })?;
    Ok(Instance {
        store,
        guest,
        stderr,
        _attached: probe.attach(),
    })
}

/// Arms the metering for the next guest call `call`: its fuel, its epoch deadline (the
/// whole of it unless the profiler asks for the subtask's stack), and fresh output and
/// wait accounting.
fn arm(
    store: &mut Store<GuestState>,
    component: &OperatorComponent,
    probe: &Probe,
    sandbox: &SandboxSpec,
    fuel: u64,
    call: &'static str,
) {
    if component.metering.fuel {
        // Cannot fail: the engine meters fuel.
        let _ = store.set_fuel(fuel);
    }
    let (deadline, epoch) = match &component.epochs {
        Some(epochs) => {
            let ticks = epoch_ticks(sandbox.call_timeout);
            let (epoch, step) = probe.arm(epochs, ticks);
            store.set_epoch_deadline(step);
            (Some(deadline_after(Instant::now(), ticks)), epoch)
        }
        None => (None, u64::MAX),
    };
    let data = store.data_mut();
    data.deadline.arm(deadline, epoch);
    data.call = call;
    data.out_bytes = 0;
}

/// The guest's backtrace in `error`, at most [`MAX_FRAMES`] frames.
fn backtrace(error: &wasmtime::Error) -> String {
    let Some(trace) = error.downcast_ref::<WasmBacktrace>() else {
        return String::new();
    };
    let text = trace.to_string();
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= MAX_FRAMES + 1 {
        return text;
    }
    let mut shown = lines[..=MAX_FRAMES].join("\n");
    shown.push_str(&format!(
        "\n  … {} more lines (outer frames)",
        lines.len() - MAX_FRAMES - 1
    ));
    shown
}

/// The trap's own words: the root cause, without the backtrace wasmtime wraps it in.
fn root_cause(error: &wasmtime::Error) -> String {
    error.root_cause().to_string()
}

impl WasmOperator {
    pub(crate) fn new(
        component: &OperatorComponent,
        info: &TaskInfo,
        settings: Arc<GuestSettings>,
        backend: Box<dyn KeyedStateBackend>,
    ) -> Result<Self, TaskError> {
        let sandbox = &settings.sandbox;
        let probe = settings.profiler.probe(info, component.epochs.as_ref());
        let instance = instantiate(
            component,
            info,
            &settings,
            &probe,
            backend,
            Timers::default(),
            None,
        )?;
        let context = OpenContext {
            operator_id: info.node.clone(),
            config: settings.config.clone(),
            subtask_index: info.subtask.0,
            parallelism: info.parallelism,
            max_parallelism: info.max_parallelism,
            restored: false,
        };
        let recovery = match &sandbox.on_runaway {
            RunawayPolicy::Fail => None,
            RunawayPolicy::DeadLetter { dir, replay_limit } => Some(Recovery {
                file: DeadLetterFile::new(dir, &info.node),
                log: ReplayLog::new(*replay_limit),
                point: None,
                unavailable: if settings.local_restore {
                    "the operator has not started yet".to_owned()
                } else {
                    "it needs a state backend that restores in memory (heap); this job's backend keeps its state in files".to_owned()
                },
            }),
        };
        Ok(Self {
            component: component.clone(),
            info: info.clone(),
            settings,
            probe,
            instance,
            context,
            trapped: false,
            closed: false,
            position: 0,
            sync_fuel: None,
            recovery,
        })
    }

    fn sandbox(&self) -> &SandboxSpec {
        &self.settings.sandbox
    }

    /// Arms the metering for the call `call` with `fuel`; returns its limits for
    /// messages.
    fn arm(&mut self, call: &'static str, fuel: u64, records: usize) -> CallLimits {
        arm(
            &mut self.instance.store,
            &self.component,
            &self.probe,
            &self.settings.sandbox,
            fuel,
            call,
        );
        self.instance.stderr.forget();
        let sandbox = self.sandbox();
        CallLimits {
            fuel: self.component.metering.fuel.then_some(fuel),
            records,
            timeout: sandbox.call_timeout,
            memory: sandbox.memory_limit,
        }
    }

    /// Arms the call `call` that processes `records` records: their fuel budget.
    fn arm_records(&mut self, call: &'static str, records: usize) -> CallLimits {
        let fuel = match self.sandbox().fuel_per_record {
            Some(per_record) => batch_fuel(per_record, records),
            None => UNLIMITED_FUEL,
        };
        self.arm(call, fuel, records)
    }

    /// Turns the outcome of a guest call into a value or a [`CallFailure`].
    fn outcome<T>(
        &mut self,
        function: &str,
        limits: &CallLimits,
        result: wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, CallFailure> {
        if let Some(armed) = limits.fuel {
            let left = self.instance.store.get_fuel().unwrap_or(0);
            self.info.metrics.add_fuel(armed.saturating_sub(left));
        }
        let cut = self.instance.store.data().deadline.was_cut();
        match result {
            Ok(Ok(_)) if cut => {
                self.trapped = true;
                Err(CallFailure::Trapped {
                    runaway: Some(Runaway::Deadline),
                    message: format!(
                        "`{function}` {}: it was still waiting for the host when the deadline came",
                        Runaway::Deadline.describe(limits)
                    ),
                    backtrace: String::new(),
                    said: self.instance.stderr.recent(),
                })
            }
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CallFailure::Returned(format!(
                "the operator returned an error from `{function}`: {}",
                error.message
            ))),
            Err(trap) => {
                self.trapped = true;
                let runaway = Runaway::of(&trap, cut);
                let message = match runaway {
                    Some(runaway) => format!(
                        "`{function}` {} ({})",
                        runaway.describe(limits),
                        root_cause(&trap)
                    ),
                    None => format!(
                        "the operator trapped in `{function}`: {}",
                        root_cause(&trap)
                    ),
                };
                Err(CallFailure::Trapped {
                    runaway,
                    message,
                    backtrace: backtrace(&trap),
                    said: self.instance.stderr.recent(),
                })
            }
        }
    }

    /// The subtask's error for a failed call, naming the records it had, if any.
    fn task_error(failure: CallFailure, span: Option<&Span<'_>>, extra: &str) -> TaskError {
        let (message, backtrace, said) = match failure {
            CallFailure::Returned(message) => (message, String::new(), Vec::new()),
            CallFailure::Trapped {
                message,
                backtrace,
                said,
                ..
            } => (message, backtrace, said),
        };
        let mut text = message;
        if let Some(span) = span {
            text.push_str(&format!(", on {}", span.describe()));
        }
        text.push_str(extra);
        if !said.is_empty() {
            text.push_str(".\nThe guest wrote to stderr before it trapped:");
            for line in &said {
                text.push_str(&format!("\n  {line}"));
            }
        }
        if !backtrace.is_empty() {
            text.push_str(&format!(".\n{backtrace}"));
        }
        TaskError::failed(Fault::Guest, text)
    }

    /// Runs a guest call that is not about records and fails the subtask if it fails.
    fn call<T>(
        &mut self,
        function: &'static str,
        call: impl FnOnce(&mut Instance) -> wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, TaskError> {
        let limits = self.arm(function, UNLIMITED_FUEL, 1);
        let result = call(&mut self.instance);
        self.outcome(function, &limits, result)
            .map_err(|f| Self::task_error(f, None, ""))
    }

    fn entered(&self) -> Result<(), TaskError> {
        if self.trapped {
            return Err(TaskError::failed(
                Fault::Host,
                "a trapped guest instance was called again",
            ));
        }
        Ok(())
    }

    /// The guest's `open`, then `restore-state` with each blob of `operator_state`: its
    /// own at the same parallelism, every old subtask's after a rescale.
    fn open_guest(&mut self, operator_state: &[Vec<u8>]) -> Result<(), TaskError> {
        self.instance.store.data_mut().opening = true;
        let c = self.context.clone();
        let context = wit::Context {
            operator_id: &c.operator_id,
            config: &c.config,
            subtask_index: c.subtask_index,
            parallelism: c.parallelism,
            max_parallelism: c.max_parallelism,
            restored: c.restored,
        };
        let result = self.call("open", |i| {
            i.guest
                .weir_operator_handler()
                .call_open(&mut i.store, context)
        });
        self.instance.store.data_mut().opening = false;
        result?;
        for state in operator_state {
            self.call("restore-state", |i| {
                i.guest
                    .weir_operator_handler()
                    .call_restore_state(&mut i.store, state)
            })?;
        }
        Ok(())
    }

    /// One `process` call with `batch`, output left in the store.
    fn process_batch(&mut self, batch: &Batch) -> Result<(), CallFailure> {
        let limits = self.arm_records("process", batch.len());
        let instance = &mut self.instance;
        instance.store.data_mut().emitting = true;
        let result = instance
            .guest
            .weir_operator_handler()
            .call_process(&mut instance.store, lower(batch));
        instance.store.data_mut().emitting = false;
        self.outcome("process", &limits, result)
    }

    /// Fires the timers of `domain` due at `time`, in one guest call; whether any were.
    fn fire(&mut self, domain: Domain, time: i64) -> Result<bool, TaskError> {
        let due = self.instance.store.data_mut().timers.take_due(domain, time);
        if due.is_empty() {
            return Ok(false);
        }
        let wit_domain = match domain {
            Domain::EventTime => TimeDomain::EventTime,
            Domain::ProcessingTime => TimeDomain::ProcessingTime,
        };
        let keys: Blobs = due.iter().map(|(_, key)| key.as_slice()).collect();
        let timestamps: Vec<i64> = due.iter().map(|(timestamp, _)| *timestamp).collect();
        let timers = wit::FiredTimers {
            domain: wit_domain,
            keys: blobs_param(&keys),
            timestamps: &timestamps,
        };
        let limits = self.arm_records("on-timer", timestamps.len());
        let instance = &mut self.instance;
        instance.store.data_mut().emitting = true;
        let result = instance
            .guest
            .weir_operator_handler()
            .call_on_timer(&mut instance.store, timers);
        instance.store.data_mut().emitting = false;
        self.outcome("on-timer", &limits, result)
            .map_err(|f| Self::task_error(f, None, ""))?;
        Ok(true)
    }

    /// The watermark advanced: due event-time timers, then `on-watermark`.
    fn advance_watermark(&mut self, watermark: i64) -> Result<(), TaskError> {
        self.fire(Domain::EventTime, watermark)?;
        self.instance.store.data_mut().watermark = Some(watermark);
        let limits = self.arm_records("on-watermark", 1);
        let instance = &mut self.instance;
        instance.store.data_mut().emitting = true;
        let result = instance
            .guest
            .weir_operator_handler()
            .call_on_watermark(&mut instance.store, watermark);
        instance.store.data_mut().emitting = false;
        self.outcome("on-watermark", &limits, result)
            .map_err(|f| Self::task_error(f, None, ""))
    }

    /// Tells the guest how `checkpoint` ended.
    fn notify_guest(&mut self, checkpoint: CheckpointId, complete: bool) -> Result<(), TaskError> {
        if complete {
            self.call("notify-checkpoint-complete", |i| {
                i.guest
                    .weir_operator_handler()
                    .call_notify_checkpoint_complete(&mut i.store, checkpoint.0)
            })
        } else {
            self.call("notify-checkpoint-aborted", |i| {
                i.guest
                    .weir_operator_handler()
                    .call_notify_checkpoint_aborted(&mut i.store, checkpoint.0)
            })
        }
    }

    /// Tells the state backend and an open guest how `checkpoint` ended; a closed guest
    /// has nothing to commit.
    fn notify(&mut self, checkpoint: CheckpointId, complete: bool) -> Result<(), TaskError> {
        let backend = &mut self.instance.store.data_mut().backend;
        if complete {
            backend.checkpoint_complete(checkpoint);
        } else {
            backend.checkpoint_aborted(checkpoint);
        }
        if self.closed {
            return Ok(());
        }
        self.entered()?;
        self.notify_guest(checkpoint, complete)?;
        self.log(Replayed::Notified {
            checkpoint,
            complete,
        });
        Ok(())
    }

    /// Appends a successful guest call to the replay log of `dead-letter`.
    fn log(&mut self, event: Replayed) {
        if let Some(recovery) = &mut self.recovery {
            recovery.log.push(event);
        }
    }

    fn take_output(&mut self, out: &mut Batch) {
        out.take_from(&mut self.instance.store.data_mut().out);
    }

    /// The synchronous phase's overrun of `sync-phase-timeout` or `sync-phase-fuel`.
    fn sync_overrun(
        &self,
        checkpoint: CheckpointId,
        elapsed: Duration,
        fuel: Option<u64>,
    ) -> Option<String> {
        let sandbox = self.sandbox();
        let what = match (sandbox.sync_phase_timeout, sandbox.sync_phase_fuel, fuel) {
            (Some(limit), _, _) if elapsed > limit => {
                format!("took {elapsed:?}, over its sync-phase-timeout of {limit:?}")
            }
            (_, Some(limit), Some(used)) if used > limit => {
                format!("used {used} fuel in `snapshot-state`, over its sync-phase-fuel of {limit}")
            }
            _ => return None,
        };
        Some(format!(
            "operator `{}`, subtask {}/{}: the synchronous phase of checkpoint {} {what}; the checkpoint is declined and the operator's snapshot discarded",
            self.info.node,
            self.info.subtask.0 + 1,
            self.info.parallelism,
            checkpoint.0
        ))
    }

    /// Makes the state at this moment the restore point of `dead-letter`: the operator
    /// state the guest returned, a second copy-on-write capture of the keyed state, the
    /// timers and the watermark. The replay log starts again.
    fn set_restore_point(&mut self, checkpoint: CheckpointId, operator: Vec<Vec<u8>>) {
        let local_restore = self.settings.local_restore;
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        recovery.log.reset();
        if !local_restore {
            return;
        }
        let data = self.instance.store.data_mut();
        match data.backend.snapshot(checkpoint, SnapshotType::Checkpoint) {
            Ok(BackendSnapshot::Encoded(capture)) => {
                recovery.point = Some(RestorePoint::new(
                    capture,
                    operator,
                    data.timers.clone(),
                    data.watermark,
                ));
            }
            Ok(BackendSnapshot::Files(unmade)) => {
                // Dropped unmade: nothing is on disk, and the backend keeps its state.
                drop(unmade);
                recovery.point = None;
                recovery.unavailable =
                    "its state backend keeps its snapshots in files, which cannot be restored in memory".to_owned();
            }
            Err(e) => {
                recovery.point = None;
                recovery.unavailable = format!("capturing the keyed state failed: {e}");
            }
        }
    }

    /// Builds a new instance from the restore point and replays the log into it, with
    /// the output thrown away.
    fn rebuild(&mut self) -> Result<(), String> {
        let recovery = self.recovery.as_mut().ok_or("no dead-letter recovery")?;
        let Some(events) = recovery.log.events() else {
            return Err(format!(
                "the input since the last snapshot exceeded replay-limit ({})",
                crate::job::format_size(recovery.log.limit())
            ));
        };
        let events = events.to_vec();
        let Some(point) = recovery.point.as_mut() else {
            return Err(recovery.unavailable.clone());
        };
        let keyed = point.keyed().map_err(|e| e.to_string())?;
        let (operator, timers, watermark) = (
            point.operator.clone(),
            point.timers.clone(),
            point.watermark,
        );
        let groups = self.instance.store.data().groups;
        let mut backend = std::mem::replace(
            &mut self.instance.store.data_mut().backend,
            // A placeholder while the real backend restores; it never holds state.
            Box::new(HeapBackend::new(groups, 0)),
        );
        backend
            .restore(RestoredState::Canonical(vec![keyed]))
            .map_err(|e| format!("restoring the keyed state failed: {e}"))?;
        self.instance = instantiate(
            &self.component,
            &self.info,
            &self.settings,
            &self.probe,
            backend,
            timers,
            watermark,
        )
        .map_err(|e| e.to_string())?;
        self.trapped = false;
        self.context.restored = !operator.is_empty();
        self.open_guest(&operator).map_err(|e| e.to_string())?;
        for event in events {
            self.replay(event).map_err(|e| {
                format!("replaying the input since the last snapshot failed ({e}); dead-letter needs a deterministic guest")
            })?;
        }
        Ok(())
    }

    /// Replays one logged call, throwing its output away.
    fn replay(&mut self, event: Replayed) -> Result<(), TaskError> {
        match event {
            Replayed::Batch(batch) => {
                self.process_batch(&batch)
                    .map_err(|f| Self::task_error(f, None, ""))?;
            }
            Replayed::Watermark(watermark) => self.advance_watermark(watermark)?,
            Replayed::ProcessingTime(time) => {
                self.fire(Domain::ProcessingTime, time)?;
            }
            Replayed::Notified {
                checkpoint,
                complete,
            } => self.notify_guest(checkpoint, complete)?,
        }
        self.instance.store.data_mut().out.clear();
        Ok(())
    }

    /// A record of `batch` (at `first` in the input) overran its limits: rebuild the
    /// instance, then process the batch one record at a time, dead-lettering those that
    /// overrun again.
    fn isolate(
        &mut self,
        batch: &Batch,
        first: u64,
        failure: CallFailure,
        out: &mut Batch,
    ) -> Result<(), TaskError> {
        let span = Span {
            first,
            records: batch,
        };
        if let Err(why) = self.rebuild() {
            let extra = format!(" (on-runaway = \"dead-letter\" could not apply: {why})");
            return Err(Self::task_error(failure, Some(&span), &extra));
        }
        for offset in 0..batch.len() {
            let position = first + u64::try_from(offset).unwrap_or(u64::MAX);
            let mut single = Batch::new();
            single.extend_from(batch, offset..offset + 1);
            match self.process_batch(&single) {
                Ok(()) => {
                    self.take_output(out);
                    self.log(Replayed::Batch(single));
                }
                Err(CallFailure::Trapped {
                    runaway: Some(_),
                    message,
                    backtrace,
                    ..
                }) => {
                    let record = Record::from(batch.get(offset));
                    self.dead_letter(&record, position, &message, &backtrace)?;
                    if let Err(why) = self.rebuild() {
                        return Err(TaskError::failed(
                            Fault::Guest,
                            format!(
                                "after dead-lettering record {position}, the operator could not be rebuilt: {why}"
                            ),
                        ));
                    }
                }
                Err(failure) => {
                    let span = Span {
                        first: position,
                        records: &single,
                    };
                    return Err(Self::task_error(failure, Some(&span), ""));
                }
            }
        }
        Ok(())
    }

    /// Appends `record` to the dead-letter file.
    fn dead_letter(
        &mut self,
        record: &Record,
        position: u64,
        error: &str,
        backtrace: &str,
    ) -> Result<(), TaskError> {
        let Some(recovery) = &self.recovery else {
            return Ok(());
        };
        let letter = DeadLetter {
            record,
            position,
            function: "process",
            error,
            backtrace,
        };
        recovery.file.append(&self.info, &letter).map_err(|e| {
            TaskError::failed(
                Fault::External,
                format!(
                    "cannot write the dead-letter file {}: {e}",
                    recovery.file.path().display()
                ),
            )
        })?;
        self.info.metrics.add_dead_letter();
        tracing::warn!(
            position,
            file = %recovery.file.path().display(),
            "dead-lettered a record: {error}"
        );
        Ok(())
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> TaskError {
    TaskError::failed(
        Fault::External,
        format!("the checkpointed {what} cannot be restored: {e}"),
    )
}

impl Operator for WasmOperator {
    fn open(&mut self, restored: Option<RestoredParts>) -> Result<(), TaskError> {
        self.entered()?;
        let operator_state = match restored {
            Some(parts) => {
                let data = self.instance.store.data_mut();
                if let Some(keyed) = parts.keyed {
                    data.backend
                        .restore(keyed)
                        .map_err(|e| corrupt("keyed state", e))?;
                }
                data.timers
                    .restore_sections(&parts.timers)
                    .map_err(|e| corrupt("timers", e))?;
                self.context.restored = true;
                self.position = parts.records_in;
                parts.operator
            }
            None => Vec::new(),
        };
        // Before `open`: a rebuilt instance is opened on this state again.
        self.set_restore_point(CheckpointId(0), operator_state.clone());
        self.open_guest(&operator_state)
    }

    fn process(&mut self, batch: &Batch, out: &mut Batch) -> Result<(), TaskError> {
        self.entered()?;
        let first = self.position;
        self.position += u64::try_from(batch.len()).unwrap_or(u64::MAX);
        match self.process_batch(batch) {
            Ok(()) => {
                self.take_output(out);
                if self.recovery.is_some() {
                    self.log(Replayed::Batch(batch.clone()));
                }
                Ok(())
            }
            Err(failure) if failure.runaway().is_some() && self.recovery.is_some() => {
                self.instance.store.data_mut().out.clear();
                self.isolate(batch, first, failure, out)
            }
            Err(failure) => {
                let span = Span {
                    first,
                    records: batch,
                };
                Err(Self::task_error(failure, Some(&span), ""))
            }
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Batch) -> Result<(), TaskError> {
        self.entered()?;
        self.advance_watermark(watermark)?;
        self.log(Replayed::Watermark(watermark));
        self.take_output(out);
        Ok(())
    }

    fn next_processing_timer(&self) -> Option<Instant> {
        let at = self.instance.store.data().timers.next_processing_time()?;
        let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
        Some(Instant::now() + Duration::from_millis(wait))
    }

    fn on_processing_time(&mut self, _now: Instant, out: &mut Batch) -> Result<(), TaskError> {
        self.entered()?;
        let time = now_ms();
        if self.fire(Domain::ProcessingTime, time)? {
            self.log(Replayed::ProcessingTime(time));
        }
        self.take_output(out);
        Ok(())
    }

    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        self.sync_fuel = None;
        if self.closed {
            return Ok(Snapshot::Finished);
        }
        self.entered()?;
        // Measure, then decline: the guest may finish its snapshot (up to the call
        // timeout, which stops it for good), and an overrun only discards it. Stopping
        // it at the limit instead would lose the instance and fail the job.
        let started = Instant::now();
        let operator = self.call("snapshot-state", |i| {
            i.guest
                .weir_operator_handler()
                .call_snapshot_state(&mut i.store, checkpoint.0)
        });
        if self.component.metering.fuel {
            let left = self.instance.store.get_fuel().unwrap_or(0);
            self.sync_fuel = Some(UNLIMITED_FUEL - left);
        }
        let operator = operator?;
        if let Some(why) = self.sync_overrun(checkpoint, started.elapsed(), self.sync_fuel) {
            return Ok(Snapshot::Declined(why));
        }
        let data = self.instance.store.data_mut();
        let keyed = data.backend.snapshot(checkpoint, kind).map_err(|e| {
            TaskError::failed(
                Fault::External,
                format!("the state backend could not take its snapshot: {e}"),
            )
        })?;
        let timers = data.timers.clone();
        let data_groups = data.groups;
        if let Some(why) = self.sync_overrun(checkpoint, started.elapsed(), self.sync_fuel) {
            // Dropped: a backend's files are not made yet, and it keeps its state.
            drop(keyed);
            return Ok(Snapshot::Declined(why));
        }
        self.set_restore_point(checkpoint, vec![operator.clone()]);
        let position = self.position;
        let groups = data_groups;
        let max_parallelism = self.info.max_parallelism;
        let (encode_keyed, files) = match keyed {
            BackendSnapshot::Encoded(writer) => (Some(writer), None),
            BackendSnapshot::Files(files) => (None, Some(files)),
        };
        let writer: PartsWriter = Box::new(move || {
            let keyed = match encode_keyed {
                Some(encode) => Some(encode().map_err(|e| {
                    TaskError::failed(Fault::Host, format!("cannot encode the keyed state: {e}"))
                })?),
                None => None,
            };
            Ok(SnapshotParts {
                operator: Some(operator),
                keyed,
                timers: Some(timers.to_sections(max_parallelism)),
                key_groups: Some(groups),
                records_in: position,
            })
        });
        Ok(match files {
            Some(files) => Snapshot::PartsAndFiles(writer, files),
            None => Snapshot::Parts(writer),
        })
    }

    fn sync_fuel(&self) -> Option<u64> {
        self.sync_fuel
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        self.notify(checkpoint, true)
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        self.notify(checkpoint, false)
    }

    fn close(&mut self, out: &mut Batch) -> Result<(), TaskError> {
        self.entered()?;
        self.instance.store.data_mut().emitting = true;
        let result = self.call("close", |i| {
            i.guest.weir_operator_handler().call_close(&mut i.store)
        });
        self.instance.store.data_mut().emitting = false;
        result?;
        self.closed = true;
        self.take_output(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(keys: &[&str]) -> Batch {
        let records: Vec<Record> = keys.iter().map(|k| Record::new("v").with_key(*k)).collect();
        records.iter().collect()
    }

    #[test]
    fn a_single_record_is_named_by_its_position_and_key() {
        let records = batch(&["poison"]);
        let span = Span {
            first: 41,
            records: &records,
        };
        assert_eq!(
            span.describe(),
            "record 41 of this subtask's input (key \"poison\")"
        );
    }

    #[test]
    fn a_batch_is_named_by_its_range_and_first_distinct_keys() {
        let records = batch(&["a", "b", "a", "c", "d", "e"]);
        let span = Span {
            first: 100,
            records: &records,
        };
        let text = span.describe();
        assert!(
            text.starts_with(
                "records 100..=105 of this subtask's input (keys \"a\", \"b\", \"c\" and 2 more"
            ),
            "{text}"
        );
    }
}
