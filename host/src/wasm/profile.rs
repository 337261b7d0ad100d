//! Sampling the guest's own stack: flame graphs of one operator and a stack dump of every
//! subtask, taken at the epoch checks the sandbox already compiles into guest code.
//!
//! One [`Profiler`] serves a job run. Every WASM operator subtask registers a probe when
//! it instantiates (a restarted or dead-letter-rebuilt instance takes the same slot), and
//! its store gets an epoch-deadline callback that keeps the call's deadline and, when the
//! probe is asked, captures the guest's backtrace. [`Profiler::sample`] samples one
//! node's subtasks for a while and folds the stacks into Flink's flame-graph JSON;
//! [`Profiler::stacks`] asks every subtask once for its current stack, like a thread
//! dump. Both block; the REST server calls them from a blocking thread.
//!
//! # What it costs
//! - **Nobody asking: nothing measurable.** `arm` reads one word of the engine's
//!   [`Epochs`] with a relaxed load (Weir's count of ticks, and how many probes of the
//!   engine are asked) and arms the call with its whole deadline, as it did without a
//!   profiler: no callback runs before the deadline, unless the call-timeout is over
//!   [`IDLE_STEP`] ticks (a minute), where a running call gets one callback a minute.
//! - **Someone asking:** wasmtime's epoch (not Weir's count) is advanced by
//!   [`IDLE_STEP`] at once, so that every call running on the engine reaches its
//!   callback at its next epoch check, however far its deadline; a long or looping call
//!   is the one a user wants to see. From then on the asked subtasks stop every sampling
//!   interval (a dump: at the next tick) for a stack walk. The other subtasks of the
//!   engine pay one callback each and go back to their whole deadline. Each flame graph
//!   says what its samples cost the subtasks ([`FlameGraph::cost`]); the `sandbox`
//!   benchmark measures the throughput while sampling continuously.
//!
//! # The deadline is kept
//! A call armed at epoch *e* (by Weir's count) with *t* ticks of call-timeout ends at
//! *e + t*, whatever steps wasmtime's deadline took meanwhile: the callback returns
//! [`UpdateDeadline::Interrupt`] once the count reaches it, which wasmtime raises as
//! `Trap::Interrupt`, exactly as without a callback, so
//! [`Runaway::of`](crate::wasm::sandbox::Runaway::of) still says `Deadline`. The
//! stepping itself is [`epoch_step`](crate::wasm::sandbox::epoch_step). A call armed
//! just as a tick lands may count from either side of it, which is the tolerance of a
//! tick that the deadline always had (`call-timeout` plus up to one tick).
//!
//! # What a sample sees
//! The guest's frames at an epoch check (function entries and loop back-edges), with the
//! host's call into the guest (`weir: process`, `weir: snapshot-state`, …) as the
//! outermost frame. Time in the host (a state call, a wait) is counted at the guest
//! function that called it, when it returns; a subtask that is not in a guest call at a
//! tick is not sampled: the flame graph is the guest's own time.

use crate::runtime::{SubtaskIndex, TaskInfo, now_ms};
use crate::wasm::BACKTRACE_FRAMES;
use crate::wasm::host::GuestState;
use crate::wasm::sandbox::{EPOCH_TICK, epoch_step};
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::{Engine, EngineWeak, FrameInfo, Store, UpdateDeadline, WasmBacktrace};

/// The most ticks a call's epoch deadline is set ahead: a minute. Longer than any
/// sensible `call-timeout` (10 s by default), so that a call nobody asks about is armed
/// with its whole deadline; and how far a request advances wasmtime's epoch to bring
/// every running call to its callback, which is this many atomic increments (well under
/// a millisecond).
const IDLE_STEP: u64 = 6000;

/// The low bits of an [`Epochs`] word count the asked probes (up to a million), the
/// high bits the ticks (2⁴⁴ ticks of 10 ms: five thousand years).
const ASKED_BITS: u32 = 20;
const ASKED_MASK: u64 = (1 << ASKED_BITS) - 1;
const ONE_TICK: u64 = 1 << ASKED_BITS;

/// How long a stack dump waits for the subtasks' answers: a running call answers at its
/// next epoch check, a call that starts meanwhile at its first tick; two ticks, and a
/// margin for the scheduling of a busy machine.
const DUMP_WAIT: Duration = EPOCH_TICK
    .saturating_mul(2)
    .saturating_add(Duration::from_millis(30));

/// The frame that stands for the outer frames of a stack cut at [`BACKTRACE_FRAMES`].
const CUT_FRAME: &str = "[outer frames not captured]";

/// One engine's epoch as Weir's ticker counts it, and how many probes of the engine's
/// subtasks are asked for something, in one word, so that `arm` learns both from one
/// relaxed load.
///
/// Each tick advances this count and wasmtime's epoch; a request advances wasmtime's
/// alone ([`Epochs::wake`]), so deadlines are counted here.
pub(crate) struct Epochs {
    word: AtomicU64,
    engine: EngineWeak,
}

/// What `arm` reads of [`Epochs`].
#[derive(Clone, Copy, Debug)]
struct Reading {
    epoch: u64,
    asked: bool,
}

impl Epochs {
    /// The count of `engine`, at zero as its epoch.
    pub(crate) fn new(engine: &Engine) -> Self {
        Self {
            word: AtomicU64::new(0),
            engine: engine.weak(),
        }
    }

    /// One tick of the ticker: this count first, so that a guest that sees wasmtime's new
    /// epoch finds the count advanced (the fence pairs with the one in [`Epochs::now`]).
    pub(crate) fn tick(&self, engine: &Engine) {
        self.word.fetch_add(ONE_TICK, Ordering::Relaxed);
        fence(Ordering::Release);
        engine.increment_epoch();
    }

    fn read(&self) -> Reading {
        let word = self.word.load(Ordering::Relaxed);
        Reading {
            epoch: word >> ASKED_BITS,
            asked: word & ASKED_MASK != 0,
        }
    }

    /// The count, in an epoch callback (after wasmtime's epoch reached a deadline).
    fn now(&self) -> u64 {
        fence(Ordering::Acquire);
        self.word.load(Ordering::Relaxed) >> ASKED_BITS
    }

    fn ask(&self) {
        self.word.fetch_add(1, Ordering::Relaxed);
    }

    fn unask(&self) {
        self.word.fetch_sub(1, Ordering::Relaxed);
    }

    /// Brings every call running on the engine to its epoch callback at its next check:
    /// no store's deadline is set more than [`IDLE_STEP`] ticks ahead of wasmtime's
    /// epoch. The callbacks go by this count, which does not move.
    fn wake(&self) {
        if let Some(engine) = self.engine.upgrade() {
            for _ in 0..IDLE_STEP {
                engine.increment_epoch();
            }
        }
    }
}

/// Ticks until an asked subtask should next stop, at `epoch`: at the next tick for a
/// dump; when sampling every `every` ticks, at the next multiple of `every`, so that all
/// subtasks sample the same ticks and a short call is caught as often as its share of
/// time; else [`IDLE_STEP`]. Never more than [`IDLE_STEP`], how far a wake reaches.
fn wish(epoch: u64, every: u64, dump: bool) -> u64 {
    if dump {
        1
    } else if every > 0 {
        (every - epoch % every).min(IDLE_STEP)
    } else {
        IDLE_STEP
    }
}

/// The name of a guest frame: the function's name, demangled (Rust, then C++), without
/// Rust's hash; the module and index when the guest has no name for it.
fn frame_name(frame: &FrameInfo) -> String {
    match frame.func_name() {
        Some(name) => demangle(name),
        None => format!(
            "{}!<wasm function {}>",
            frame.module().name().unwrap_or("<unnamed module>"),
            frame.func_index()
        ),
    }
}

fn demangle(name: &str) -> String {
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        return format!("{rust:#}");
    }
    if let Ok(symbol) = cpp_demangle::Symbol::new(name)
        && let Ok(cpp) = symbol.demangle()
    {
        return cpp;
    }
    name.to_owned()
}

/// The host's frame for its call `call` into the guest, the outermost of a stack.
fn host_frame(call: &str) -> String {
    format!("weir: {call}")
}

/// The frames of `trace` (innermost first) in the call `call`: the guest's, a mark where
/// the capture cut the outer ones, and the host's call.
fn stack_of(trace: &WasmBacktrace, call: &str) -> Vec<String> {
    let mut frames: Vec<String> = trace.frames().iter().map(frame_name).collect();
    if frames.len() >= BACKTRACE_FRAMES {
        frames.push(CUT_FRAME.to_owned());
    }
    frames.push(host_frame(call));
    frames
}

/// What is asked of one subtask, and what it answered.
#[derive(Default)]
struct Asked {
    sampling: Option<Sampling>,
    /// The number of the newest dump request.
    round: u64,
    /// The dump requests still waiting.
    waiting: usize,
    /// The last stack captured for a dump, and the round it answers.
    answer: Option<(u64, Vec<String>)>,
}

impl Asked {
    /// Whether a waiting dump request has no answer yet.
    fn dump_open(&self) -> bool {
        self.waiting > 0 && self.answer.as_ref().is_none_or(|(r, _)| *r < self.round)
    }
}

/// One sampling session of a subtask.
struct Sampling {
    /// Ticks between samples.
    every: u64,
    /// The epoch of the last sample.
    last: Option<u64>,
    /// The stacks seen (innermost frame first), and how often.
    seen: HashMap<Vec<String>, u64>,
    /// The time the samples took the subtask.
    cost: Duration,
}

impl Sampling {
    fn new(every: u64) -> Self {
        Self {
            every,
            last: None,
            seen: HashMap::new(),
            cost: Duration::ZERO,
        }
    }

    /// Whether a sample is due at `epoch`: the first one, or a multiple of `every` was
    /// passed since the last. A callback late by several ticks (the guest was in the
    /// host) takes one sample, not one per tick it missed.
    fn due(&self, epoch: u64) -> bool {
        self.last
            .is_none_or(|last| epoch / self.every > last / self.every)
    }

    fn record(&mut self, epoch: u64, stack: Vec<String>, cost: Duration) {
        self.last = Some(epoch);
        *self.seen.entry(stack).or_insert(0) += 1;
        self.cost += cost;
    }
}

/// One subtask's slot in the profiler: what is asked of it, and what it answered. Its
/// store's epoch callback holds it; the profiler asks through it from other threads.
pub(crate) struct Probe {
    node: String,
    subtask: SubtaskIndex,
    /// Flink's name of the subtask, `count (2/4)`.
    name: String,
    /// The engine's epochs; `None` for an engine without epoch interruption.
    epochs: Option<Arc<Epochs>>,
    /// Whether anything is asked of the subtask. This and the two below are read, lock
    /// free, by `arm` and the callback only while the engine says some probe is asked.
    asked: AtomicBool,
    /// The sampling interval in ticks; 0 when not sampling.
    every: AtomicU64,
    /// Whether a dump waits for an answer.
    dump: AtomicBool,
    /// Live instances of the subtask: none once it finished, or while it restarts.
    instances: AtomicUsize,
    state: Mutex<Asked>,
    answered: Condvar,
}

/// A live instance of a probe's subtask, counted while it exists.
pub(crate) struct Attached(Arc<Probe>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.instances.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Probe {
    fn new(info: &TaskInfo, epochs: Option<Arc<Epochs>>) -> Self {
        Self {
            node: info.node.clone(),
            subtask: info.subtask,
            name: info.name(),
            epochs,
            asked: AtomicBool::new(false),
            every: AtomicU64::new(0),
            dump: AtomicBool::new(false),
            instances: AtomicUsize::new(0),
            state: Mutex::new(Asked::default()),
            answered: Condvar::new(),
        }
    }

    /// Counts a new instance of the subtask, until the result is dropped.
    pub(crate) fn attach(self: &Arc<Self>) -> Attached {
        self.instances.fetch_add(1, Ordering::Relaxed);
        Attached(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Asked> {
        // What is asked stays consistent under a panic elsewhere: every change is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `state` to the lock-free flags, and the engine's count of asked probes
    /// when that changed; true when the subtask became asked, so that the caller wakes
    /// the engine once it has let go of the lock.
    fn publish(&self, state: &Asked) -> bool {
        let every = state.sampling.as_ref().map_or(0, |s| s.every);
        let dump = state.dump_open();
        self.every.store(every, Ordering::Relaxed);
        self.dump.store(dump, Ordering::Relaxed);
        let asked = every > 0 || dump;
        if self.asked.swap(asked, Ordering::Relaxed) == asked {
            return false;
        }
        let Some(epochs) = &self.epochs else {
            return false;
        };
        if asked {
            epochs.ask();
        } else {
            epochs.unask();
        }
        asked
    }

    /// Changes what is asked with `change`, then publishes it and wakes the engine's
    /// running calls if the subtask became asked.
    fn change<R>(&self, change: impl FnOnce(&mut Asked) -> R) -> R {
        let mut state = self.lock();
        let result = change(&mut state);
        let woke = self.publish(&state);
        drop(state);
        if woke && let Some(epochs) = &self.epochs {
            epochs.wake();
        }
        result
    }

    /// The ticks until the subtask should stop, at `epoch`, from the lock-free flags.
    fn wish(&self, epoch: u64) -> u64 {
        wish(
            epoch,
            self.every.load(Ordering::Relaxed),
            self.dump.load(Ordering::Relaxed),
        )
    }

    /// Arms the epoch deadline of a call with `ticks` of call-timeout on `epochs`: the
    /// epoch (by Weir's count) at which the call ends, and the ticks to its first
    /// callback. Nobody asking, that is the whole deadline; the check is the one relaxed
    /// load of [`Epochs::read`].
    pub(crate) fn arm(&self, epochs: &Epochs, ticks: u64) -> (u64, u64) {
        let now = epochs.read();
        let deadline = now.epoch.saturating_add(ticks);
        let wish = if now.asked {
            self.wish(now.epoch)
        } else {
            IDLE_STEP
        };
        let step = epoch_step(now.epoch, deadline, wish).unwrap_or(1);
        (deadline, step)
    }

    /// A visit of the epoch callback at `epoch` during the call `call`: captures the
    /// guest's stack when a sample or a dump is due; the ticks until the next visit.
    fn visit(&self, store: &wasmtime::StoreContextMut<'_, GuestState>, epoch: u64) -> u64 {
        if !self.asked.load(Ordering::Relaxed) {
            return IDLE_STEP;
        }
        let call = store.data().call;
        self.change(|state| {
            let sample = state.sampling.as_ref().is_some_and(|s| s.due(epoch));
            let dump = state.dump_open();
            if !sample && !dump {
                return;
            }
            let started = Instant::now();
            let stack = stack_of(&WasmBacktrace::force_capture(store), call);
            if dump {
                state.answer = Some((state.round, stack.clone()));
                self.answered.notify_all();
            }
            if sample && let Some(sampling) = &mut state.sampling {
                sampling.record(epoch, stack, started.elapsed());
            }
        });
        self.wish(epoch)
    }

    /// Starts sampling every `every` ticks.
    fn start(&self, every: u64) {
        self.change(|state| state.sampling = Some(Sampling::new(every)));
    }

    /// Stops sampling; the stacks seen, and what the samples cost.
    fn stop(&self) -> (HashMap<Vec<String>, u64>, Duration) {
        self.change(|state| state.sampling.take())
            .map(|s| (s.seen, s.cost))
            .unwrap_or_default()
    }

    /// Asks for a dump; the round whose answer to wait for.
    fn ask_dump(&self) -> u64 {
        self.change(|state| {
            state.round += 1;
            state.waiting += 1;
            state.round
        })
    }

    /// Waits until `until` for the answer to dump `round` (or a later one), then
    /// withdraws the request.
    fn await_dump(&self, round: u64, until: Instant) -> Option<Vec<String>> {
        let mut state = self.lock();
        let answer = loop {
            if let Some((answered, stack)) = &state.answer
                && *answered >= round
            {
                break Some(stack.clone());
            }
            let now = Instant::now();
            if now >= until {
                break None;
            }
            state = match self.answered.wait_timeout(state, until - now) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        state.waiting = state.waiting.saturating_sub(1);
        // Withdrawing a request never makes the subtask asked: no wake to do.
        self.publish(&state);
        answer
    }
}

/// Installs the epoch-deadline callback of a subtask's store: it ends the call at its
/// deadline by Weir's count (with `Interrupt`, as wasmtime does without a callback), and
/// on the way stops where the probe wants a stack.
pub(crate) fn watch(store: &mut Store<GuestState>, probe: &Arc<Probe>, epochs: &Arc<Epochs>) {
    let probe = probe.clone();
    let epochs = epochs.clone();
    store.epoch_deadline_callback(move |store| {
        let epoch = epochs.now();
        let deadline = store.data().deadline.epoch;
        if epoch_step(epoch, deadline, 1).is_none() {
            return Ok(UpdateDeadline::Interrupt);
        }
        let wish = probe.visit(&store, epoch);
        Ok(match epoch_step(epoch, deadline, wish) {
            Some(step) => UpdateDeadline::Continue(step),
            None => UpdateDeadline::Interrupt,
        })
    });
}

/// Flink's flame graph of a vertex (`VertexFlameGraph`): when sampling ended, and the
/// tree of frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlameGraph {
    /// When sampling ended, in milliseconds since the Unix epoch.
    pub end_timestamp: i64,
    /// The root, named `root`, whose value is the number of samples.
    pub data: FlameNode,
    /// What taking the samples (stack walks and names) cost the sampled subtasks'
    /// threads, all together; not in Flink's JSON.
    #[serde(skip)]
    pub cost: Duration,
}

/// A frame of a [`FlameGraph`]: its name, the samples whose stack passes through it,
/// and the frames it called, the heaviest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlameNode {
    /// The frame: a guest function's demangled name, or the host's call (`weir: process`).
    pub name: String,
    /// Samples through this frame: at least the sum of its children's, more by the
    /// samples that stopped in this frame itself.
    pub value: u64,
    /// The frames called from this one, by value, the highest first, then by name.
    pub children: Vec<FlameNode>,
}

/// A frame being folded: its samples and callees.
#[derive(Default)]
struct Branch {
    value: u64,
    children: BTreeMap<String, Branch>,
}

impl Branch {
    fn into_node(self, name: String) -> FlameNode {
        let mut children: Vec<FlameNode> = self
            .children
            .into_iter()
            .map(|(name, branch)| branch.into_node(name))
            .collect();
        // Stable, over the names' order: ties stay by name.
        children.sort_by_key(|child| std::cmp::Reverse(child.value));
        FlameNode {
            name,
            value: self.value,
            children,
        }
    }
}

impl FlameGraph {
    /// Folds `stacks` (each innermost frame first, as a backtrace, with how many samples
    /// saw it) into the tree under `root`, outermost frame first, as Flink folds thread
    /// samples.
    pub fn fold<'a>(
        end_timestamp: i64,
        stacks: impl IntoIterator<Item = (&'a [String], u64)>,
    ) -> Self {
        let mut root = Branch::default();
        for (stack, count) in stacks {
            root.value += count;
            let mut at = &mut root;
            for frame in stack.iter().rev() {
                at = at.children.entry(frame.clone()).or_default();
                at.value += count;
            }
        }
        Self {
            end_timestamp,
            data: root.into_node("root".to_owned()),
            cost: Duration::ZERO,
        }
    }
}

/// One subtask's answer to [`Profiler::stacks`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskStack {
    /// The node's id in the job file.
    pub node: String,
    /// Which subtask of the node.
    #[serde(serialize_with = "subtask_number")]
    pub subtask: SubtaskIndex,
    /// Flink's name of the subtask, `count (2/4)`.
    pub name: String,
    /// Where it was.
    pub stack: GuestStack,
}

fn subtask_number<S: Serializer>(subtask: &SubtaskIndex, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_u32(subtask.0)
}

/// Where a subtask was when its stack was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum GuestStack {
    /// In a guest call: the frames, innermost first, the last one the host's call into
    /// the guest (`weir: process`).
    InGuest {
        /// Demangled function names.
        frames: Vec<String>,
    },
    /// Not in guest code at its next ticks: between calls (waiting for input, or in the
    /// host's own work), or in a host call the guest made (a state call, a wait).
    NotInGuest,
    /// No live instance: the subtask finished, or is being restarted.
    NoInstance,
    /// Its engine has no epoch interruption, which stack sampling rides on.
    NoEpochs,
}

/// Why a flame graph could not be sampled. None of them is the host's fault.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The request names a node the job does not have (the caller's mistake).
    #[error("the job has no node `{node}`; its nodes are {}", list(.known))]
    UnknownNode {
        /// The node asked for.
        node: String,
        /// The nodes the job has, in the job file's order.
        known: Vec<String>,
    },
    /// The node is a source or sink, which the host runs natively (the caller's mistake).
    #[error(
        "`{node}` is a source or sink that the host runs natively: only WebAssembly operators have guest stacks to sample"
    )]
    NotWasm {
        /// The node asked for.
        node: String,
    },
    /// The node's engine has no epoch interruption (the run's setup; no retry helps).
    #[error(
        "`{node}` runs on an engine without epoch interruption, which stack sampling rides on: this run cannot sample it"
    )]
    NoEpochs {
        /// The node asked for.
        node: String,
    },
    /// The node is being sampled for another request; a retry once that ends can help.
    #[error("`{node}` is being sampled already; retry once that flame graph is done")]
    Busy {
        /// The node asked for.
        node: String,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none yet".to_owned();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node of the job, as the profiler knows it.
struct Node {
    name: String,
    /// Whether it is a source or sink, run by the host.
    native: bool,
    /// A WebAssembly operator's probes, one per subtask, by index.
    probes: Vec<Arc<Probe>>,
    /// Whether a flame graph of it is being sampled.
    sampling: bool,
}

impl Node {
    fn new(name: &str, native: bool) -> Self {
        Self {
            name: name.to_owned(),
            native,
            probes: Vec::new(),
            sampling: false,
        }
    }
}

/// The stack sampler of one job run, shared by all its WebAssembly operator subtasks
/// and cheap to clone. See the module doc for what it costs.
#[derive(Clone, Default)]
pub struct Profiler {
    nodes: Arc<Mutex<Vec<Node>>>,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = self.lock();
        f.debug_list()
            .entries(nodes.iter().map(|n| &n.name))
            .finish()
    }
}

/// A sampling interval in whole ticks, rounded up; at least one.
fn interval_ticks(interval: Duration) -> u64 {
    let ticks = interval.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

impl Profiler {
    fn lock(&self) -> MutexGuard<'_, Vec<Node>> {
        // The node list stays whole under a panic elsewhere: every change is one push.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the profiler about a source or sink of the job, so that a request for it is
    /// refused as such, not as an unknown node. WebAssembly operators need no telling:
    /// their subtasks register when they instantiate.
    pub fn declare_native(&self, node: &str) {
        let mut nodes = self.lock();
        if !nodes.iter().any(|n| n.name == node) {
            nodes.push(Node::new(node, true));
        }
    }

    /// The probe of subtask `info`, whose engine has `epochs` (`None` without epoch
    /// interruption). A subtask instantiated again (a restart, a dead-letter rebuild)
    /// gets its slot back; one on another engine gets a new probe in the slot.
    pub(crate) fn probe(&self, info: &TaskInfo, epochs: Option<&Arc<Epochs>>) -> Arc<Probe> {
        let mut nodes = self.lock();
        let index = match nodes.iter().position(|n| n.name == info.node) {
            Some(index) => index,
            None => {
                nodes.push(Node::new(&info.node, false));
                nodes.len() - 1
            }
        };
        let node = &mut nodes[index];
        node.native = false;
        let probes = &mut node.probes;
        let same_engine = |p: &Probe| match (&p.epochs, epochs) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        match probes.iter().position(|p| p.subtask == info.subtask) {
            Some(at) if same_engine(&probes[at]) => probes[at].clone(),
            found => {
                let probe = Arc::new(Probe::new(info, epochs.cloned()));
                match found {
                    Some(at) => probes[at] = probe.clone(),
                    None => {
                        probes.push(probe.clone());
                        probes.sort_by_key(|p| p.subtask);
                    }
                }
                probe
            }
        }
    }

    /// The probes of `node`, marked as being sampled; the error when it cannot be.
    fn begin(&self, node: &str) -> Result<Vec<Arc<Probe>>, ProfileError> {
        let mut nodes = self.lock();
        let known: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let Some(found) = nodes.iter_mut().find(|n| n.name == node) else {
            return Err(ProfileError::UnknownNode {
                node: node.to_owned(),
                known,
            });
        };
        if found.native {
            return Err(ProfileError::NotWasm {
                node: node.to_owned(),
            });
        }
        if found.probes.iter().all(|p| p.epochs.is_none()) {
            return Err(ProfileError::NoEpochs {
                node: node.to_owned(),
            });
        }
        if found.sampling {
            return Err(ProfileError::Busy {
                node: node.to_owned(),
            });
        }
        found.sampling = true;
        Ok(found.probes.clone())
    }

    fn end(&self, node: &str) {
        let mut nodes = self.lock();
        if let Some(found) = nodes.iter_mut().find(|n| n.name == node) {
            found.sampling = false;
        }
    }

    /// Samples the guest stacks of every subtask of `node` every `interval` (rounded up
    /// to whole epoch ticks of 10 ms) for `duration`, and folds them into Flink's flame
    /// graph: `root`, then the host's call into the guest, then the guest's frames
    /// outermost first. Blocks for `duration`: call it from a blocking thread.
    pub fn sample(
        &self,
        node: &str,
        duration: Duration,
        interval: Duration,
    ) -> Result<FlameGraph, ProfileError> {
        let probes = self.begin(node)?;
        let every = interval_ticks(interval);
        for probe in &probes {
            probe.start(every);
        }
        std::thread::sleep(duration);
        let (seen, costs): (Vec<_>, Vec<_>) = probes.iter().map(|p| p.stop()).unzip();
        self.end(node);
        let stacks = seen
            .iter()
            .flat_map(|s| s.iter().map(|(stack, count)| (stack.as_slice(), *count)));
        let mut graph = FlameGraph::fold(now_ms(), stacks);
        graph.cost = costs.iter().sum();
        Ok(graph)
    }

    /// Every registered subtask's current stack, in the job's order of nodes, like a
    /// thread dump: each is asked at once and answers at its next epoch check; one that
    /// does not within [`DUMP_WAIT`] (50 ms) is not in guest code. Blocks that long at
    /// most: call it from a blocking thread.
    pub fn stacks(&self) -> Vec<SubtaskStack> {
        let probes: Vec<Arc<Probe>> = self.lock().iter().flat_map(|n| n.probes.clone()).collect();
        let asked: Vec<Option<u64>> = probes
            .iter()
            .map(|p| {
                let live = p.epochs.is_some() && p.instances.load(Ordering::Relaxed) > 0;
                live.then(|| p.ask_dump())
            })
            .collect();
        let until = Instant::now() + DUMP_WAIT;
        probes
            .iter()
            .zip(asked)
            .map(|(probe, round)| {
                let stack = match round {
                    Some(round) => match probe.await_dump(round, until) {
                        Some(frames) => GuestStack::InGuest { frames },
                        None => GuestStack::NotInGuest,
                    },
                    None if probe.epochs.is_none() => GuestStack::NoEpochs,
                    None => GuestStack::NoInstance,
                };
                SubtaskStack {
                    node: probe.node.clone(),
                    subtask: probe.subtask,
                    name: probe.name.clone(),
                    stack,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| (*f).to_owned()).collect()
    }

    fn info(node: &str, subtask: u32) -> TaskInfo {
        TaskInfo {
            node: node.to_owned(),
            subtask: SubtaskIndex(subtask),
            parallelism: 2,
            max_parallelism: 128,
            metrics: Default::default(),
        }
    }

    fn names(node: &FlameNode) -> Vec<&str> {
        node.children.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn stacks_fold_into_a_tree_from_the_outermost_frame() {
        let spin = stack(&["hostile::spin", "hostile::process", "weir: process"]);
        let burn = stack(&["hostile::burn", "hostile::process", "weir: process"]);
        let snapshot = stack(&["hostile::snapshot", "weir: snapshot-state"]);
        let graph = FlameGraph::fold(7, [(&spin[..], 3), (&burn[..], 5), (&snapshot[..], 1)]);
        let root = &graph.data;
        assert_eq!((root.name.as_str(), root.value), ("root", 9));
        assert_eq!(names(root), ["weir: process", "weir: snapshot-state"]);
        let process = &root.children[0];
        assert_eq!(process.value, 8);
        assert_eq!(names(process), ["hostile::process"]);
        let inner = &process.children[0];
        assert_eq!(names(inner), ["hostile::burn", "hostile::spin"]);
        assert_eq!(inner.children[0].value, 5);
        assert!(inner.children[0].children.is_empty());
    }

    #[test]
    fn a_frame_counts_the_samples_that_stopped_in_it_besides_its_callees() {
        let inner = stack(&["g::leaf", "g::outer", "weir: process"]);
        let outer = stack(&["g::outer", "weir: process"]);
        let graph = FlameGraph::fold(0, [(&inner[..], 2), (&outer[..], 3)]);
        let g_outer = &graph.data.children[0].children[0];
        assert_eq!(g_outer.value, 5);
        assert_eq!(g_outer.children[0].value, 2);
    }

    #[test]
    fn children_are_ordered_by_value_then_by_name() {
        let a = stack(&["a", "weir: process"]);
        let b = stack(&["b", "weir: process"]);
        let c = stack(&["c", "weir: process"]);
        let graph = FlameGraph::fold(0, [(&c[..], 1), (&b[..], 4), (&a[..], 1)]);
        assert_eq!(names(&graph.data.children[0]), ["b", "a", "c"]);
    }

    #[test]
    fn no_samples_is_a_root_of_value_zero() {
        let graph = FlameGraph::fold(1, std::iter::empty());
        assert_eq!(graph.data.value, 0);
        assert!(graph.data.children.is_empty());
    }

    #[test]
    fn the_json_has_flinks_field_names() {
        let s = stack(&["g::f", "weir: process"]);
        let graph = FlameGraph::fold(1_700_000_000_000, [(&s[..], 2)]);
        let json = serde_json::to_value(&graph).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "endTimestamp": 1_700_000_000_000_i64,
                "data": {
                    "name": "root",
                    "value": 2,
                    "children": [{
                        "name": "weir: process",
                        "value": 2,
                        "children": [{"name": "g::f", "value": 2, "children": []}]
                    }]
                }
            })
        );
    }

    #[test]
    fn a_stack_dump_serialises_with_its_state() {
        let dump = SubtaskStack {
            node: "count".to_owned(),
            subtask: SubtaskIndex(1),
            name: "count (2/2)".to_owned(),
            stack: GuestStack::InGuest {
                frames: stack(&["g::f", "weir: process"]),
            },
        };
        let json = serde_json::to_value(&dump).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "node": "count",
                "subtask": 1,
                "name": "count (2/2)",
                "stack": {"state": "in-guest", "frames": ["g::f", "weir: process"]}
            })
        );
        let idle = serde_json::to_value(GuestStack::NotInGuest).expect("serialises");
        assert_eq!(idle, serde_json::json!({"state": "not-in-guest"}));
    }

    #[test]
    fn rust_and_cpp_names_are_demangled_without_the_hash() {
        assert_eq!(
            demangle("_ZN7hostile4spin17h0123456789abcdefE"),
            "hostile::spin"
        );
        assert_eq!(
            demangle("_ZN2js9RunScriptEP9JSContext"),
            "js::RunScript(JSContext*)"
        );
        assert_eq!(demangle("PyEval_EvalCode"), "PyEval_EvalCode");
    }

    #[test]
    fn a_dump_stops_at_the_next_tick_and_sampling_at_the_next_multiple_of_its_interval() {
        assert_eq!(wish(42, 0, true), 1);
        assert_eq!(wish(42, 5, true), 1, "a dump goes first");
        assert_eq!(wish(42, 5, false), 3);
        assert_eq!(wish(45, 5, false), 5);
        assert_eq!(wish(42, 1, false), 1);
        assert_eq!(wish(42, 0, false), IDLE_STEP);
        assert_eq!(
            wish(1, 10 * IDLE_STEP, false),
            IDLE_STEP,
            "never past a wake"
        );
    }

    #[test]
    fn a_sample_is_due_once_per_interval_even_after_a_late_callback() {
        let mut sampling = Sampling::new(5);
        assert!(sampling.due(3), "the first visit samples");
        sampling.record(3, stack(&["f"]), Duration::from_micros(20));
        assert!(!sampling.due(4));
        assert!(sampling.due(5));
        sampling.record(17, stack(&["f"]), Duration::from_micros(30));
        assert!(!sampling.due(19), "a late visit counts once");
        assert!(sampling.due(20));
        assert_eq!(sampling.seen[&stack(&["f"])], 2);
        assert_eq!(sampling.cost, Duration::from_micros(50));
    }

    #[test]
    fn an_interval_is_whole_ticks_rounded_up() {
        assert_eq!(interval_ticks(Duration::from_millis(10)), 1);
        assert_eq!(interval_ticks(Duration::from_millis(11)), 2);
        assert_eq!(interval_ticks(Duration::ZERO), 1);
        assert_eq!(interval_ticks(Duration::from_secs(1)), 100);
    }

    #[test]
    fn the_epoch_word_keeps_ticks_and_asked_probes_apart() {
        let engine = Engine::default();
        let epochs = Epochs::new(&engine);
        epochs.tick(&engine);
        epochs.tick(&engine);
        epochs.ask();
        let now = epochs.read();
        assert_eq!((now.epoch, now.asked), (2, true));
        epochs.unask();
        assert!(!epochs.read().asked);
        assert_eq!(epochs.now(), 2);
    }

    #[test]
    fn nobody_asking_a_call_is_armed_with_its_whole_deadline() {
        let engine = Engine::default();
        let epochs = Arc::new(Epochs::new(&engine));
        let profiler = Profiler::default();
        let probe = profiler.probe(&info("count", 0), Some(&epochs));
        for _ in 0..7 {
            epochs.tick(&engine);
        }
        assert_eq!(probe.arm(&epochs, 1001), (1008, 1001));
        assert_eq!(
            probe.arm(&epochs, 100_000),
            (100_007, IDLE_STEP),
            "a call-timeout over a minute is stepped"
        );
    }

    #[test]
    fn a_probe_asked_for_a_dump_arms_for_the_next_tick_until_withdrawn() {
        let engine = Engine::default();
        let epochs = Arc::new(Epochs::new(&engine));
        let probe = Profiler::default().probe(&info("count", 0), Some(&epochs));
        let round = probe.ask_dump();
        assert!(epochs.read().asked);
        assert_eq!(probe.arm(&epochs, 1001), (1001, 1));
        assert_eq!(probe.await_dump(round, Instant::now()), None, "no answer");
        assert!(!epochs.read().asked, "withdrawn");
        assert_eq!(probe.arm(&epochs, 1001), (1001, 1001));
    }

    #[test]
    fn sampling_steps_to_the_next_multiple_and_stops_cleanly() {
        let engine = Engine::default();
        let epochs = Arc::new(Epochs::new(&engine));
        let probe = Profiler::default().probe(&info("count", 0), Some(&epochs));
        for _ in 0..3 {
            epochs.tick(&engine);
        }
        probe.start(5);
        assert_eq!(probe.arm(&epochs, 1001), (1004, 2));
        assert_eq!(
            probe.stop(),
            (HashMap::new(), Duration::ZERO),
            "nothing ran"
        );
        assert!(!epochs.read().asked);
    }

    #[test]
    fn a_subtask_instantiated_again_gets_its_slot_back() {
        let engine = Engine::default();
        let epochs = Arc::new(Epochs::new(&engine));
        let profiler = Profiler::default();
        let first = profiler.probe(&info("count", 1), Some(&epochs));
        let again = profiler.probe(&info("count", 1), Some(&epochs));
        assert!(Arc::ptr_eq(&first, &again));
        let other = profiler.probe(&info("count", 0), Some(&epochs));
        assert!(!Arc::ptr_eq(&first, &other));
        let elsewhere = Arc::new(Epochs::new(&engine));
        let moved = profiler.probe(&info("count", 1), Some(&elsewhere));
        assert!(!Arc::ptr_eq(&first, &moved), "another engine, a new probe");
        let stacks = profiler.stacks();
        let subtasks: Vec<u32> = stacks.iter().map(|s| s.subtask.0).collect();
        assert_eq!(subtasks, [0, 1], "one slot per subtask, in order");
        assert!(stacks.iter().all(|s| s.stack == GuestStack::NoInstance));
    }

    #[test]
    fn an_attached_instance_is_counted_while_it_lives() {
        let engine = Engine::default();
        let epochs = Arc::new(Epochs::new(&engine));
        let probe = Profiler::default().probe(&info("count", 0), Some(&epochs));
        let attached = probe.attach();
        assert_eq!(probe.instances.load(Ordering::Relaxed), 1);
        drop(attached);
        assert_eq!(probe.instances.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unknown_node_is_refused_with_the_nodes_there_are() {
        let profiler = Profiler::default();
        profiler.declare_native("numbers");
        profiler.probe(
            &info("count", 0),
            Some(&Arc::new(Epochs::new(&Engine::default()))),
        );
        profiler.declare_native("out");
        let error = profiler
            .sample("cuont", Duration::ZERO, EPOCH_TICK)
            .expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "the job has no node `cuont`; its nodes are `numbers`, `count`, `out`"
        );
    }

    #[test]
    fn a_source_or_sink_is_refused_as_native() {
        let profiler = Profiler::default();
        profiler.declare_native("numbers");
        let error = profiler
            .sample("numbers", Duration::ZERO, EPOCH_TICK)
            .expect_err("native");
        assert!(matches!(error, ProfileError::NotWasm { .. }), "{error}");
    }

    #[test]
    fn an_engine_without_epochs_cannot_be_sampled_and_says_so() {
        let profiler = Profiler::default();
        profiler.probe(&info("count", 0), None);
        let error = profiler
            .sample("count", Duration::ZERO, EPOCH_TICK)
            .expect_err("no epochs");
        assert!(
            error.to_string().contains("without epoch interruption"),
            "{error}"
        );
        assert_eq!(profiler.stacks()[0].stack, GuestStack::NoEpochs);
    }

    #[test]
    fn a_node_being_sampled_refuses_a_second_sampling_until_it_ends() {
        let engine = Engine::default();
        let epochs = Arc::new(Epochs::new(&engine));
        let profiler = Profiler::default();
        profiler.probe(&info("count", 0), Some(&epochs));
        assert!(profiler.begin("count").is_ok(), "the first sampling");
        let busy = profiler.sample("count", Duration::ZERO, EPOCH_TICK);
        assert!(matches!(busy, Err(ProfileError::Busy { .. })));
        profiler.end("count");
        let graph = profiler
            .sample("count", Duration::ZERO, EPOCH_TICK)
            .expect("a sampling once the first ended");
        assert_eq!(graph.data.value, 0, "no instance ran");
    }
}
