//! Expands a graph of nodes into subtasks and channels, runs every subtask on its own
//! thread, and reports how the run ended.

use crate::checkpoint::AlignMode;
use crate::checkpoint::coordinator::TaskRef;
use crate::checkpoint::driver::{CheckpointDriver, CheckpointFailure, DriverSetup, DriverTask};
use crate::exchange::{ExchangeError, Link, LocalWorkers};
use crate::runtime::chain::{Chain, Member};
use crate::runtime::channel::{ChannelReceiver, ChannelSender, ControlSender, Wake};
use crate::runtime::input::InputGate;
use crate::runtime::metrics::{MetricsSlot, NodeMetrics, SubtaskMetrics, TaskTimes};
use crate::runtime::output::{Output, OutputEdge};
use crate::runtime::record::Control;
use crate::runtime::task::{Restore, TaskContext, run_operator, run_source};
use crate::runtime::{
    CANCEL_POLL, ChannelState, Operator, Source, SubtaskIndex, TaskError, TaskInfo,
};
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use crate::runtime::input::Debloat;
pub use crate::runtime::output::Partitioner;

/// How the channels between subtasks are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    /// Batches a channel holds before its producer blocks.
    pub channel_capacity: usize,
    /// Buffer debloating, when on.
    pub debloat: Option<Debloat>,
    /// Workers the subtasks are placed on in this process; channels between
    /// subtasks on different workers go through the exchange over 127.0.0.1.
    pub local_workers: usize,
}

impl Network {
    /// Batches a channel holds by default. Two would keep both sides busy with one batch
    /// in flight; four absorb jitter in a guest's batch time, and the memory a job can
    /// buffer stays `channels × 4 × batch-size` records.
    pub const CHANNEL_CAPACITY: usize = 4;
}

impl Default for Network {
    fn default() -> Self {
        Self {
            channel_capacity: Self::CHANNEL_CAPACITY,
            debloat: None,
            local_workers: 1,
        }
    }
}

/// How often the executor logs the progress of a running job.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Creates the source instance of one subtask.
pub type SourceFactory = Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Source>, TaskError> + Send + Sync>;
/// Creates the operator (or sink) instance of one subtask, on the subtask's thread.
pub type OperatorFactory =
    Arc<dyn Fn(&TaskInfo) -> Result<Box<dyn Operator>, TaskError> + Send + Sync>;

/// What a node does.
#[derive(Clone)]
pub enum NodeBody {
    /// A source.
    Source(SourceFactory),
    /// An operator or sink.
    Operator(OperatorFactory),
}

/// An input of a node.
#[derive(Clone, Copy, Debug)]
pub struct NodeEdge {
    /// The index of the upstream node in [`Graph::nodes`].
    pub from: usize,
    /// How records are spread over this node's subtasks.
    pub partitioner: Partitioner,
}

/// A node of the graph to run.
#[derive(Clone)]
pub struct GraphNode {
    /// The node's id, used in logs and errors.
    pub id: String,
    /// How many subtasks run it.
    pub parallelism: u32,
    /// Its inputs.
    pub inputs: Vec<NodeEdge>,
    /// What it does.
    pub body: NodeBody,
    /// How many records go into one batch on its input channels: for an operator, the
    /// records per guest call.
    pub batch_size: usize,
    /// Whether it may share a thread with the node before or after it (Flink's
    /// operator chaining): `chaining = false` on the node or in `[job]` turns it off.
    pub chaining: bool,
}

/// A job's nodes, every node after its inputs.
#[derive(Clone)]
pub struct Graph {
    /// The nodes.
    pub nodes: Vec<GraphNode>,
    /// The job's number of key groups.
    pub max_parallelism: u32,
    /// How its channels are made.
    pub network: Network,
}

/// Stops a running job from another thread (Ctrl-C, a failure, a test).
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks every subtask to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A subtask failed; the other subtasks were stopped.
    #[error("{task} failed: {error}")]
    TaskFailed {
        /// The failing subtask, as `node (i/n)`.
        task: String,
        /// What went wrong.
        error: TaskError,
    },
    /// The job was cancelled before its input ended.
    #[error("the job was cancelled")]
    Cancelled,
    /// Too many checkpoints failed (`tolerable-failed`).
    #[error("checkpointing failed: {0}")]
    Checkpointing(CheckpointFailure),
    /// The exchange between workers failed.
    #[error("the exchange between workers failed: {0}")]
    Exchange(#[from] ExchangeError),
    /// A subtask's thread could not be started.
    #[error("could not start a thread for {task}: {source}")]
    Spawn {
        /// The subtask.
        task: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl RunError {
    /// Whether running the job again may get past this failure. A job file and data
    /// that do not fit together, or a bug in Weir, fail the same way every time.
    pub fn retry_can_help(&self) -> bool {
        !matches!(
            self,
            Self::TaskFailed {
                error: TaskError::Failed {
                    fault: crate::runtime::Fault::User | crate::runtime::Fault::Host,
                    ..
                },
                ..
            }
        )
    }
}

/// The outcome of a run that finished.
#[derive(Debug)]
pub struct RunReport {
    /// Wall time from start to the end of the last subtask.
    pub elapsed: Duration,
    /// Per node, in graph order: its counters.
    pub nodes: Vec<Arc<NodeMetrics>>,
    /// Where the savepoint is, when the job stopped with one (not finished).
    pub stopped_with_savepoint: Option<String>,
}

/// How a run checkpoints and what it restores.
#[derive(Default)]
pub struct RunOptions {
    /// The checkpoint coordinator's setup; `None` runs without checkpoints.
    pub checkpointing: Option<DriverSetup>,
    /// Aligned (exactly-once) or not.
    pub mode: Option<AlignMode>,
    /// What each subtask restores, by node id and subtask index.
    pub restore: HashMap<(String, u32), Restore>,
    /// The channel state each operator subtask replays before any new input, by node
    /// id and subtask index.
    pub channel_state: HashMap<(String, u32), ChannelState>,
    /// Where the run publishes its counters, when someone reads them.
    pub metrics: Option<MetricsSlot>,
}

/// Runs graphs.
pub struct Executor {
    cancel: CancelToken,
}

/// The nodes that run in one subtask thread, upstream first: a node joins the chain of
/// its input when the edge is `forward` with equal parallelism, it is that input's only
/// consumer and the input its only one, and both allow chaining (as Flink's
/// `StreamingJobGraphGenerator.isChainable`, without its operator-level strategies).
/// Every node is in exactly one chain, and chains come in graph order.
pub fn chains(graph: &Graph) -> Vec<Vec<usize>> {
    let consumers = |u: usize| {
        graph
            .nodes
            .iter()
            .map(|n| n.inputs.iter().filter(|e| e.from == u).count())
            .sum::<usize>()
    };
    let mut chain_of: Vec<usize> = Vec::with_capacity(graph.nodes.len());
    let mut chains: Vec<Vec<usize>> = Vec::new();
    for (d, node) in graph.nodes.iter().enumerate() {
        let joins = match node.inputs.as_slice() {
            [edge] => {
                let up = &graph.nodes[edge.from];
                // With one consumer, the input is the last node of its chain so far.
                (edge.partitioner == Partitioner::Forward
                    && up.parallelism == node.parallelism
                    && up.chaining
                    && node.chaining
                    && consumers(edge.from) == 1)
                    .then_some(chain_of[edge.from])
            }
            _ => None,
        };
        match joins {
            Some(c) => {
                chains[c].push(d);
                chain_of.push(c);
            }
            None => {
                chain_of.push(chains.len());
                chains.push(vec![d]);
            }
        }
    }
    chains
}

struct Wiring {
    /// Per node, per subtask: the receivers of its input channels.
    inputs: Vec<Vec<Vec<ChannelReceiver>>>,
    /// Per node, per subtask: what wakes it when its input channels or its control
    /// channel have something.
    wakes: Vec<Vec<Arc<Wake>>>,
    /// Per node, per subtask: its output edges.
    outputs: Vec<Vec<Vec<OutputEdge>>>,
}

impl Executor {
    /// An executor whose runs stop when `cancel` is cancelled.
    pub fn new(cancel: CancelToken) -> Self {
        Self { cancel }
    }

    /// Runs `graph` until every subtask has finished, or until the first failure.
    pub fn run(&self, graph: &Graph, mut options: RunOptions) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let chains = chains(graph);
        let (mut wiring, workers) = wire(graph, &chains);
        let links = workers.connect(session_id())?;
        if !links.is_empty() {
            let connections = links.len() / 2;
            tracing::info!(
                "{} workers in this process, {connections} connection{} between them on 127.0.0.1",
                graph.network.local_workers,
                if connections == 1 { "" } else { "s" }
            );
        }
        let metrics = node_metrics(graph, &chains);
        if let Some(slot) = &options.metrics {
            slot.publish(metrics.iter().cloned().collect());
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        // This run's stop flag: set on the first failure, or when the user cancels. The
        // user's token stays as the user left it, so a restart can tell the two apart.
        let stop = Arc::new(AtomicBool::new(false));
        let cancel = &stop;

        // Every subtask gets a control channel; the coordinator holds the senders.
        let mut controls = Vec::new();
        let mut driver_tasks = Vec::new();
        for (n, node) in graph.nodes.iter().enumerate() {
            let mut node_controls = Vec::new();
            for s in 0..node.parallelism {
                let (tx, rx) = ControlSender::new(wiring.wakes[n][s as usize].clone());
                let task = TaskRef {
                    node: n,
                    subtask: SubtaskIndex(s),
                };
                driver_tasks.push(DriverTask {
                    task,
                    control: tx,
                    is_source: matches!(node.body, NodeBody::Source(_)),
                    parallelism: node.parallelism,
                });
                node_controls.push(rx);
            }
            controls.push(node_controls);
        }
        let node_ids: Arc<[String]> = graph.nodes.iter().map(|n| n.id.clone()).collect();
        let (mut driver, sink) = match options.checkpointing.take() {
            Some(setup) => {
                let (driver, sink) = CheckpointDriver::new(setup, driver_tasks, node_ids, started);
                (Some(driver), Some(sink))
            }
            // Without a coordinator the control senders go away at once; nothing waits on
            // them because no subtask outlives its input.
            None => (None, None),
        };
        let mode = options.mode.unwrap_or(AlignMode::ExactlyOnce);

        let mut running = 0usize;
        for chain in &chains {
            let (head, tail) = (chain[0], chain[chain.len() - 1]);
            let inputs = std::mem::take(&mut wiring.inputs[head]);
            let outputs = std::mem::take(&mut wiring.outputs[tail]);
            let head_controls = std::mem::take(&mut controls[head]);
            let wakes = std::mem::take(&mut wiring.wakes[head]);
            for (s, (((receivers, edges), control), wake)) in inputs
                .into_iter()
                .zip(outputs)
                .zip(head_controls)
                .zip(wakes)
                .enumerate()
            {
                let index = u32::try_from(s).unwrap_or(u32::MAX);
                let infos: Vec<TaskInfo> = chain
                    .iter()
                    .map(|&n| TaskInfo {
                        node: graph.nodes[n].id.clone(),
                        subtask: SubtaskIndex(index),
                        parallelism: graph.nodes[n].parallelism,
                        max_parallelism: graph.max_parallelism,
                        metrics: metrics[n].subtasks[s].clone(),
                    })
                    .collect();
                let name = thread_name(&infos);
                let head_name = infos[0].name();
                let replay = options
                    .channel_state
                    .remove(&(graph.nodes[head].id.clone(), index))
                    .unwrap_or_default();
                let restores: Vec<Restore> = chain
                    .iter()
                    .map(|&n| {
                        options
                            .restore
                            .remove(&(graph.nodes[n].id.clone(), index))
                            .unwrap_or_default()
                    })
                    .collect();
                let ctx = TaskContext {
                    task: TaskRef {
                        node: head,
                        subtask: SubtaskIndex(index),
                    },
                    checkpoints: sink.clone(),
                    mode,
                    metrics: metrics[head].subtasks[s].clone(),
                    wake: wake.clone(),
                    cancel: cancel.clone(),
                };
                let bodies: Vec<(usize, NodeBody, usize)> = chain
                    .iter()
                    .map(|&n| (n, graph.nodes[n].body.clone(), graph.nodes[n].batch_size))
                    .collect();
                let times = metrics[head].subtasks[s].times.clone();
                let mut output = Output::new(edges, cancel.clone(), times.clone());
                let mut gate = InputGate::new(
                    receivers,
                    control.clone(),
                    wake,
                    cancel.clone(),
                    times.clone(),
                );
                if let Some(debloat) = graph.network.debloat {
                    gate.debloat(debloat);
                }
                let done = done_tx.clone();
                let task_name = name.clone();
                let spawned = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        // The head's name; every chained member enters its own span.
                        let span = tracing::info_span!("task", task = %head_name);
                        let _entered = span.enter();
                        let (failed, result) = run_chain(
                            bodies,
                            &infos,
                            restores,
                            replay,
                            &mut gate,
                            &mut output,
                            &control,
                            &ctx,
                        );
                        // Channels close here, so neighbours blocked on this subtask wake up.
                        drop((output, gate));
                        times.end();
                        let _ = done.send((failed.unwrap_or(task_name), result));
                    });
                if let Err(source) = spawned {
                    stop.store(true, Ordering::Relaxed);
                    return Err(RunError::Spawn { task: name, source });
                }
                running += 1;
            }
            // The chained members' own control channels: the coordinator tells every
            // subtask the same, so the head's channel serves the whole chain.
            for &n in &chain[1..] {
                drop(std::mem::take(&mut controls[n]));
            }
        }
        drop(done_tx);
        drop(sink);

        let mut first_failure: Option<RunError> = None;
        let mut last_progress = Instant::now();
        let never = crossbeam_channel::never();
        let never_savepoint = crossbeam_channel::never();
        while running > 0 {
            let now = Instant::now();
            if self.cancel.is_cancelled() {
                stop.store(true, Ordering::Relaxed);
            }
            let wake = driver
                .as_ref()
                .and_then(CheckpointDriver::next_deadline)
                .map_or(now + CANCEL_POLL, |d| d.min(now + CANCEL_POLL));
            let messages = driver.as_ref().map_or(&never, |d| d.messages());
            let savepoints = driver
                .as_ref()
                .map_or(&never_savepoint, |d| d.savepoint_requests());
            crossbeam_channel::select! {
                recv(done_rx) -> finished => {
                    let Ok((task, result)) = finished else { break };
                    running -= 1;
                    match result {
                        Ok(()) => tracing::debug!(task = %task, "subtask finished"),
                        Err(TaskError::Disconnected | TaskError::Cancelled) => {}
                        Err(error) => {
                            if first_failure.is_none() {
                                tracing::error!(task = %task, "{error}");
                                stop.store(true, Ordering::Relaxed);
                                if let Some(driver) = driver.as_mut() {
                                    driver.on_task_failure();
                                }
                                first_failure = Some(RunError::TaskFailed { task, error });
                            }
                        }
                    }
                }
                recv(messages) -> message => {
                    if let (Ok(message), Some(d)) = (message, driver.as_mut())
                        && first_failure.is_none()
                        && let Err(failure) = d.on_message(message, Instant::now())
                    {
                        stop.store(true, Ordering::Relaxed);
                        first_failure = Some(RunError::Checkpointing(failure));
                    }
                }
                recv(savepoints) -> request => {
                    if let (Ok(request), Some(d)) = (request, driver.as_mut()) {
                        d.on_savepoint_request(request);
                    }
                }
                default(wake.saturating_duration_since(now)) => {}
            }
            if first_failure.is_none()
                && let Some(d) = driver.as_mut()
                && let Err(failure) = d.on_tick(Instant::now())
            {
                stop.store(true, Ordering::Relaxed);
                first_failure = Some(RunError::Checkpointing(failure));
            }
            if first_failure.is_none()
                && let Some(error) = links.iter().find_map(Link::take_failure)
            {
                tracing::error!("{error}");
                stop.store(true, Ordering::Relaxed);
                if let Some(driver) = driver.as_mut() {
                    driver.on_task_failure();
                }
                first_failure = Some(RunError::Exchange(error));
            }
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                log_progress(graph, &metrics, started);
                last_progress = Instant::now();
            }
        }
        if !links.is_empty() {
            let written: u64 = links.iter().map(Link::bytes_written).sum();
            tracing::info!(
                "the exchange between workers carried {:.1} MiB",
                written as f64 / f64::from(1 << 20)
            );
        }
        // Every channel has closed at both ends once every subtask has finished, so the
        // links end too; one that fails to was cut, and the run with it.
        for link in links {
            if let Err(error) = link.join()
                && first_failure.is_none()
            {
                first_failure = Some(RunError::Exchange(error));
            }
        }
        let stopped_with_savepoint = driver.and_then(CheckpointDriver::finish);
        if let Some(failure) = first_failure {
            return Err(failure);
        }
        if self.cancel.is_cancelled() {
            return Err(RunError::Cancelled);
        }
        Ok(RunReport {
            elapsed: started.elapsed(),
            nodes: metrics,
            stopped_with_savepoint,
        })
    }
}

/// The thread's name: Flink's name of its subtask, `count (2/4)`, or of a chain's,
/// `source → tokenize (2/4)`.
fn thread_name(infos: &[TaskInfo]) -> String {
    match infos {
        [one] => one.name(),
        many => {
            let ids: Vec<&str> = many.iter().map(|i| i.node.as_str()).collect();
            let head = &many[0];
            format!(
                "{} ({}/{})",
                ids.join(" → "),
                head.subtask.0 + 1,
                head.parallelism
            )
        }
    }
}

/// Runs one subtask of a chain on the current thread: makes every member's logic from
/// its factory, then drives the chain from its head. A failure comes with the name of
/// the chained member that failed, when it was one.
#[allow(clippy::too_many_arguments)]
fn run_chain(
    bodies: Vec<(usize, NodeBody, usize)>,
    infos: &[TaskInfo],
    mut restores: Vec<Restore>,
    replay: ChannelState,
    gate: &mut InputGate,
    output: &mut Output,
    control: &Receiver<Control>,
    ctx: &TaskContext,
) -> (Option<String>, Result<(), TaskError>) {
    let mut chain = match chain_members(bodies, infos) {
        Ok((source, chain)) => (source, chain),
        Err(e) => return (None, Err(e)),
    };
    let result = match chain.0.as_mut() {
        Some(source) => {
            let restore = restores.remove(0);
            run_source(
                source.as_mut(),
                &mut chain.1,
                output,
                control,
                ctx,
                restore,
                restores,
            )
        }
        None => run_operator(&mut chain.1, gate, output, ctx, restores, replay),
    };
    (chain.1.failed_member().map(str::to_owned), result)
}

/// The source (when the chain starts with one) and the chain of operators of one
/// subtask, made from their factories.
fn chain_members(
    bodies: Vec<(usize, NodeBody, usize)>,
    infos: &[TaskInfo],
) -> Result<(Option<Box<dyn Source>>, Chain), TaskError> {
    let shared = bodies.len() > 1;
    let mut bodies = bodies;
    let source = match bodies.first() {
        Some((_, NodeBody::Source(factory), _)) => {
            let source = factory(&infos[0])?;
            bodies.remove(0);
            Some(source)
        }
        _ => None,
    };
    let skip = usize::from(source.is_some());
    let mut members = Vec::new();
    for ((n, body, batch_size), info) in bodies.into_iter().zip(&infos[skip..]) {
        let NodeBody::Operator(factory) = body else {
            return Err(TaskError::failed(
                crate::runtime::Fault::Host,
                format!("source `{}` was chained after another node", info.node),
            ));
        };
        let task = TaskRef {
            node: n,
            subtask: info.subtask,
        };
        members.push(Member::new(
            factory(info)?,
            task,
            info.metrics.clone(),
            info.name(),
            batch_size,
        ));
    }
    Ok((source, Chain::new(members, shared)))
}

fn log_progress(graph: &Graph, metrics: &[Arc<NodeMetrics>], started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    for (node, m) in graph.nodes.iter().zip(metrics) {
        let (records_in, records_out) = (m.records_in(), m.records_out());
        tracing::info!(
            node = %node.id,
            records_in,
            records_out,
            "progress: {:.0} records/s in, {:.0} records/s out",
            records_in as f64 / secs,
            records_out as f64 / secs,
        );
    }
}

/// Every node's counters, per subtask. The members of a chain share their thread's
/// times.
fn node_metrics(graph: &Graph, chains: &[Vec<usize>]) -> Vec<Arc<NodeMetrics>> {
    let mut subtasks: Vec<Vec<Arc<SubtaskMetrics>>> = vec![Vec::new(); graph.nodes.len()];
    for chain in chains {
        for _ in 0..graph.nodes[chain[0]].parallelism {
            let times = Arc::new(TaskTimes::default());
            for &n in chain {
                subtasks[n].push(Arc::new(SubtaskMetrics::new(times.clone())));
            }
        }
    }
    graph
        .nodes
        .iter()
        .zip(subtasks)
        .map(|(node, subtasks)| {
            Arc::new(NodeMetrics {
                id: node.id.clone(),
                subtasks,
            })
        })
        .collect()
}

/// What tells this run's connections between workers from any other's.
fn session_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// Creates every channel of the graph but those inside a chain, with the workers whose
/// connections carry those between subtasks on different workers.
fn wire(graph: &Graph, chains: &[Vec<usize>]) -> (Wiring, LocalWorkers) {
    let mut workers = LocalWorkers::new(graph.network.local_workers);
    let chained = |from: usize, to: usize| {
        chains
            .iter()
            .any(|c| c.windows(2).any(|w| w[0] == from && w[1] == to))
    };
    let wakes: Vec<Vec<Arc<Wake>>> = graph
        .nodes
        .iter()
        .map(|n| (0..n.parallelism).map(|_| Arc::default()).collect())
        .collect();
    let capacity = graph.network.channel_capacity;
    // A channel's producer is the thread of the chain its node is in: the chain's head.
    let mut head_of = vec![0; graph.nodes.len()];
    for chain in chains {
        for &n in chain {
            head_of[n] = chain[0];
        }
    }
    let mut inputs: Vec<Vec<Vec<ChannelReceiver>>> = graph
        .nodes
        .iter()
        .map(|n| (0..n.parallelism).map(|_| Vec::new()).collect())
        .collect();
    let mut outputs: Vec<Vec<Vec<OutputEdge>>> = graph
        .nodes
        .iter()
        .map(|n| (0..n.parallelism).map(|_| Vec::new()).collect())
        .collect();
    for (d, node) in graph.nodes.iter().enumerate() {
        for edge in &node.inputs {
            if chained(edge.from, d) {
                continue;
            }
            let upstream = &graph.nodes[edge.from];
            for u in 0..upstream.parallelism as usize {
                let batch_size = node.batch_size;
                let producer = &wakes[head_of[edge.from]][u];
                let mut connect = |s: usize| {
                    let (from, to) = (workers.worker_of(u), workers.worker_of(s));
                    let (tx, rx) =
                        workers.channel(from, to, capacity, wakes[d][s].clone(), producer.clone());
                    inputs[d][s].push(rx);
                    tx
                };
                let channels: Vec<ChannelSender> = if edge.partitioner == Partitioner::Forward {
                    vec![connect(u)]
                } else {
                    (0..node.parallelism as usize).map(connect).collect()
                };
                outputs[edge.from][u].push(OutputEdge::new(
                    node.id.clone(),
                    edge.partitioner,
                    channels,
                    batch_size,
                ));
            }
        }
    }
    (
        Wiring {
            inputs,
            wakes,
            outputs,
        },
        workers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, parallelism: u32, inputs: &[(usize, Partitioner)]) -> GraphNode {
        let body = NodeBody::Operator(Arc::new(|_| {
            Err(TaskError::failed(crate::runtime::Fault::Host, "not run"))
        }));
        GraphNode {
            id: id.to_owned(),
            parallelism,
            inputs: inputs
                .iter()
                .map(|&(from, partitioner)| NodeEdge { from, partitioner })
                .collect(),
            body,
            batch_size: 1,
            chaining: true,
        }
    }

    fn graph(nodes: Vec<GraphNode>) -> Graph {
        Graph {
            nodes,
            max_parallelism: 128,
            network: Network::default(),
        }
    }

    const FORWARD: Partitioner = Partitioner::Forward;
    const KEY_BY: Partitioner = Partitioner::KeyBy {
        max_parallelism: 128,
    };

    #[test]
    fn forward_edges_of_equal_parallelism_chain_and_key_by_edges_do_not() {
        let g = graph(vec![
            node("source", 2, &[]),
            node("tokenize", 2, &[(0, FORWARD)]),
            node("count", 2, &[(1, KEY_BY)]),
            node("sink", 2, &[(2, FORWARD)]),
        ]);
        assert_eq!(chains(&g), [vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn a_node_that_turns_chaining_off_runs_alone_on_both_sides() {
        let mut nodes = vec![
            node("source", 1, &[]),
            node("map", 1, &[(0, FORWARD)]),
            node("sink", 1, &[(1, FORWARD)]),
        ];
        nodes[1].chaining = false;
        assert_eq!(chains(&graph(nodes)), [vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn a_node_with_two_consumers_ends_its_chain() {
        let g = graph(vec![
            node("source", 1, &[]),
            node("a", 1, &[(0, FORWARD)]),
            node("b", 1, &[(0, FORWARD)]),
        ]);
        assert_eq!(chains(&g), [vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn a_node_with_two_inputs_starts_a_chain() {
        let g = graph(vec![
            node("left", 1, &[]),
            node("right", 1, &[]),
            node("join", 1, &[(0, FORWARD), (1, FORWARD)]),
            node("sink", 1, &[(2, FORWARD)]),
        ]);
        assert_eq!(chains(&g), [vec![0], vec![1], vec![2, 3]]);
    }

    #[test]
    fn a_change_of_parallelism_breaks_the_chain() {
        let g = graph(vec![
            node("source", 2, &[]),
            node("sink", 1, &[(0, Partitioner::Rebalance)]),
        ]);
        assert_eq!(chains(&g), [vec![0], vec![1]]);
    }
}
