//! Guest stack sampling with a real guest: the `hostile` guest burns or spins in functions
//! of known names (`hostile::burn`, `hostile::spin`), and the profiler must find them, in
//! a flame graph of the operator and in a stack dump, while the call timeout still stops
//! a spinning call as a deadline runaway, and a rebuilt instance keeps its slot.
//!
//! These drive `weir::wasm` directly, one operator subtask per thread of the test: the
//! REST server that will call the profiler in a running `weir` is not there yet.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;
use weir::job::{RunawayPolicy, SandboxSpec};
use weir::runtime::keygroup::KeyGroupRange;
use weir::runtime::{Batch, Operator, Record, SubtaskIndex, TaskError, TaskInfo};
use weir::state::HeapBackend;
use weir::wasm::{
    EPOCH_TICK, FlameNode, GuestSettings, GuestStack, Metering, Profiler, WasmOperator, WasmRuntime,
};
use weir_tests::{eventually, guest};

/// The operator's node id.
const NODE: &str = "hostile";

/// An opened instance of the hostile guest with `config` and `sandbox`, subtask `subtask`
/// of two, registered with `profiler`.
fn hostile(
    runtime: &WasmRuntime,
    profiler: &Profiler,
    config: &str,
    sandbox: SandboxSpec,
    subtask: u32,
) -> WasmOperator {
    let component = runtime
        .load(&guest("hostile"), Metering::of(&sandbox))
        .expect("hostile.wasm loads");
    let settings = Arc::new(GuestSettings {
        config: config.to_owned(),
        sandbox,
        local_restore: true,
        timer_limit: u64::MAX,
        profiler: profiler.clone(),
    });
    let info = TaskInfo {
        node: NODE.to_owned(),
        subtask: SubtaskIndex(subtask),
        parallelism: 2,
        max_parallelism: 128,
        metrics: Default::default(),
    };
    let backend = Box::new(HeapBackend::new(
        KeyGroupRange::for_subtask(info.subtask, info.parallelism, info.max_parallelism),
        u64::MAX,
    ));
    let mut operator = component
        .instantiate(&info, &settings, backend)
        .expect("the hostile guest instantiates");
    operator.open(None).expect("open");
    operator
}

/// A batch of one unkeyed record with `value`.
fn one(value: &str) -> Batch {
    [Record::new(value)].iter().collect()
}

/// No fuel, so that only `call-timeout` stops a call.
fn unfuelled(call_timeout: Duration) -> SandboxSpec {
    SandboxSpec {
        fuel_per_record: None,
        call_timeout,
        ..SandboxSpec::default()
    }
}

/// The node named `name` anywhere under `node`.
fn find<'a>(node: &'a FlameNode, name: &str) -> Option<&'a FlameNode> {
    if node.name == name {
        return Some(node);
    }
    node.children.iter().find_map(|c| find(c, name))
}

/// Asserts that every frame holds at least the samples of its callees.
fn assert_counts_add_up(node: &FlameNode) {
    let below: u64 = node.children.iter().map(|c| c.value).sum();
    assert!(
        node.value >= below,
        "`{}` has {} samples, its callees {below}",
        node.name,
        node.value
    );
    node.children.iter().for_each(assert_counts_add_up);
}

/// Asserts that `result` is the deadline runaway of a spinning `process`.
fn assert_deadline_runaway(result: Result<(), TaskError>, timeout: &str) {
    let error = result
        .expect_err("the spinning call is stopped")
        .to_string();
    assert!(
        error.contains(&format!(
            "`process` ran past its call-timeout of {timeout} (deadline exceeded)"
        )),
        "{error}"
    );
    assert!(error.contains("hostile::spin"), "{error}");
}

#[test]
fn a_flame_graph_of_a_burning_guest_shows_the_burning_function_and_its_counts_add_up() {
    let runtime = WasmRuntime::new(None).expect("the engine starts");
    let profiler = Profiler::default();
    // Fuel on, as by default, with room for the burn: the engine a job file gets.
    let sandbox = SandboxSpec {
        fuel_per_record: Some(1 << 40),
        ..SandboxSpec::default()
    };
    let config = r#"{"process": "burn", "burn": 20000000}"#;
    let mut operator = hostile(&runtime, &profiler, config, sandbox, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut out = Batch::new();
            while !stop.load(Ordering::Relaxed) {
                operator.process(&one("x"), &mut out).expect("a burn ends");
                out.clear();
            }
        })
    };
    let graph = profiler
        .sample(NODE, Duration::from_secs(1), EPOCH_TICK)
        .expect("the operator is sampled");
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("the worker ends");

    let root = &graph.data;
    assert_eq!(root.name, "root");
    assert!(root.value > 0, "no samples: {graph:#?}");
    assert_eq!(
        root.value,
        root.children.iter().map(|c| c.value).sum::<u64>(),
        "every sample starts with the host's call"
    );
    assert_counts_add_up(root);
    let names: Vec<&str> = root.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["weir: process"], "{graph:#?}");
    let burn = find(root, "hostile::burn").unwrap_or_else(|| panic!("no burn: {graph:#?}"));
    assert!(
        burn.value * 2 > root.value,
        "the guest spends its time burning: {graph:#?}"
    );
    assert!(graph.end_timestamp > 0);
}

#[test]
fn a_stack_dump_shows_the_loop_a_subtask_is_stuck_in_and_an_idle_one_as_not_in_guest_code() {
    let runtime = WasmRuntime::new(None).expect("the engine starts");
    let profiler = Profiler::default();
    let timeout = Duration::from_secs(2);
    let mut stuck = hostile(
        &runtime,
        &profiler,
        r#"{"process": "spin"}"#,
        unfuelled(timeout),
        0,
    );
    let idle = hostile(&runtime, &profiler, "{}", unfuelled(timeout), 1);
    // The call starts before anyone asks: the dump must reach a call already running.
    let worker = thread::spawn(move || stuck.process(&one("x"), &mut Batch::new()));
    let last = RefCell::new(Vec::new());
    let found = eventually(timeout, || {
        let stacks = profiler.stacks();
        // The call lowers its arguments (`cabi_realloc`) before it spins.
        let in_guest = matches!(
            &stacks[0].stack,
            GuestStack::InGuest { frames } if frames.first().is_some_and(|f| f == "hostile::spin")
        );
        *last.borrow_mut() = stacks;
        in_guest
    });
    let seen = last.into_inner();
    assert!(found, "the stuck subtask never showed its stack: {seen:#?}");
    let GuestStack::InGuest { frames } = &seen[0].stack else {
        panic!("not in guest code: {seen:#?}")
    };
    assert_eq!(frames[0], "hostile::spin", "innermost first: {frames:#?}");
    assert_eq!(frames.last().map(String::as_str), Some("weir: process"));
    assert_eq!(seen[0].name, "hostile (1/2)");
    assert_eq!(seen[1].name, "hostile (2/2)");
    assert_eq!(seen[1].stack, GuestStack::NotInGuest, "{seen:#?}");
    assert_deadline_runaway(worker.join().expect("the worker ends"), "2s");
    drop(idle);
}

#[test]
fn a_call_past_its_timeout_while_sampled_is_still_a_deadline_runaway() {
    let runtime = WasmRuntime::new(None).expect("the engine starts");
    let profiler = Profiler::default();
    let mut operator = hostile(
        &runtime,
        &profiler,
        r#"{"process": "spin"}"#,
        unfuelled(Duration::from_secs(1)),
        0,
    );
    let worker = thread::spawn(move || operator.process(&one("x"), &mut Batch::new()));
    // Longer than the call-timeout: the deadline comes while sampling is on.
    let graph = profiler
        .sample(NODE, Duration::from_secs(2), EPOCH_TICK)
        .expect("the operator is sampled");
    assert_deadline_runaway(worker.join().expect("the worker ends"), "1s");
    assert!(
        find(&graph.data, "hostile::spin").is_some(),
        "sampling overlapped the spinning call: {graph:#?}"
    );
}

#[test]
fn an_instance_rebuilt_after_a_dead_letter_keeps_its_subtasks_slot() {
    let runtime = WasmRuntime::new(None).expect("the engine starts");
    let profiler = Profiler::default();
    let letters = tempfile::tempdir().expect("a temporary directory");
    let sandbox = SandboxSpec {
        fuel_per_record: Some(100_000),
        on_runaway: RunawayPolicy::DeadLetter {
            dir: letters.path().to_owned(),
            replay_limit: 1 << 20,
        },
        ..SandboxSpec::default()
    };
    let config = r#"{"process": "spin", "poison-value": "poison"}"#;
    let mut operator = hostile(&runtime, &profiler, config, sandbox, 0);
    let batch: Batch = [Record::new("a"), Record::new("poison"), Record::new("b")]
        .iter()
        .collect();
    let mut out = Batch::new();
    operator
        .process(&batch, &mut out)
        .expect("the poison record is dead-lettered");
    let stacks = profiler.stacks();
    assert_eq!(stacks.len(), 1, "{stacks:#?}");
    assert_eq!(
        stacks[0].stack,
        GuestStack::NotInGuest,
        "the rebuilt instance is live, the trapped one gone"
    );
    drop(operator);
    assert_eq!(profiler.stacks()[0].stack, GuestStack::NoInstance);
}
