//! Expands a graph of nodes into subtasks and channels, runs every subtask on its own
//! thread, and reports how the run ended.

use crate::checkpoint::AlignMode;
use crate::checkpoint::coordinator::TaskRef;
use crate::checkpoint::driver::CoordinatorMessage;
use crate::checkpoint::driver::{CheckpointDriver, CheckpointFailure, DriverSetup, DriverTask};
use crate::exchange::{ExchangeError, Link, Workers};
use crate::runtime::chain::{Chain, Member};
use crate::runtime::channel::{ChannelReceiver, ChannelSender, ControlSender, Wake};
use crate::runtime::input::InputGate;
use crate::runtime::metrics::{MetricsSlot, NodeMetrics, SubtaskMetrics, TaskTimes};
use crate::runtime::output::{Output, OutputEdge};
use crate::runtime::record::Control;
use crate::runtime::task::{Restore, TaskContext, run_operator, run_source};
use crate::runtime::{
    CANCEL_POLL, ChannelState, CheckpointId, CheckpointSink, Operator, Source, SubtaskIndex,
    TaskError, TaskInfo,
};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
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
    /// A worker failed or was lost.
    #[error("worker {worker}: {message}")]
    Worker {
        /// The worker, by its name and address.
        worker: String,
        /// What happened, as a sentence.
        message: String,
    },
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
    /// The snapshot `restore` and `channel_state` come from, for workers in other
    /// processes, which read it themselves.
    pub restore_point: Option<RestorePoint>,
}

/// Runs graphs: in this process, or on a cluster of workers.
pub struct Executor {
    cancel: CancelToken,
    cluster: Option<Arc<dyn Cluster>>,
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

/// A graph's channels and control channels, before its subtasks start.
struct Wired {
    wiring: Wiring,
    workers: Workers,
    /// Per node, per subtask: the receiving end of its control channel, for the
    /// subtasks placed here.
    receivers: Vec<Vec<Option<Receiver<Control>>>>,
    /// The sending ends, by subtask.
    controls: HashMap<TaskRef, ControlSender>,
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

/// What the supervising loop of a run hears about its subtasks, wherever they run.
#[derive(Debug)]
pub enum TaskEvent {
    /// A subtask's thread ended.
    Ended {
        /// The subtask, by its thread's name (`node (i/n)`, or a chain's).
        task: String,
        /// How it ended.
        result: Result<(), TaskError>,
    },
    /// A subtask on another worker reported to the checkpoint coordinator.
    Report(CoordinatorMessage),
    /// What carries the subtasks failed: a link, a worker.
    Failed(RunError),
}

/// Workers in other processes that run a job's subtasks (`weir coordinator`): the
/// executor plans and supervises, the cluster carries the plan and the controls.
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// Starts `attempt` of the job on the workers, restoring `restore`: waits until
    /// enough are registered, gives each its share and sends what happens from then on
    /// to `events`. `tasks(w, n)` is how many subtasks worker `w` of `n` runs, so that a
    /// worker that is lost, or ends its attempt early, has them accounted as ended.
    /// Returns how many workers take part; gives up when `cancel` is cancelled.
    fn start_attempt(
        &self,
        attempt: u64,
        restore: Option<&RestorePoint>,
        tasks: &dyn Fn(usize, usize) -> usize,
        events: Sender<TaskEvent>,
        cancel: &CancelToken,
    ) -> Result<usize, RunError>;
    /// Sends `control` to subtask `task` on worker `worker` of the current attempt.
    fn control(&self, worker: usize, task: TaskRef, control: Control);
    /// Ends the current attempt on every worker: their subtasks stop.
    fn stop_attempt(&self);
}

/// The snapshot a run restores, as a worker finds it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestorePoint {
    /// A completed checkpoint in the job's checkpoint storage.
    Checkpoint(CheckpointId),
    /// A retained checkpoint or a savepoint at this location (`weir run -s`).
    At(String),
}

/// Where this process's subtasks sit among a job's workers.
pub enum Placement {
    /// All of them, on the `[network] local-workers` workers of this process.
    InProcess,
    /// Those of one worker (`weir worker`).
    Worker {
        /// This worker.
        me: usize,
        /// Every worker's data address, by worker.
        peers: Vec<SocketAddr>,
        /// This worker's data listener, where the workers above it connect.
        listener: Arc<TcpListener>,
        /// The attempt, which every connection between workers names.
        session: u64,
    },
}

impl Placement {
    /// The workers of `graph`, as seen from here.
    fn workers(&self, graph: &Graph) -> Workers {
        match self {
            Self::InProcess => Workers::in_process(graph.network.local_workers),
            Self::Worker { me, peers, .. } => Workers::one_of(peers.len(), *me),
        }
    }
}

/// The subtasks of a graph that run in this process, started.
pub struct Share {
    /// Every subtask's control channel here, chained members included.
    pub controls: HashMap<TaskRef, ControlSender>,
    links: Vec<Link>,
    done: Receiver<TaskEvent>,
    running: usize,
    stop: Arc<AtomicBool>,
}

impl Share {
    /// Asks every subtask here to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The first failure of a link, once.
    fn link_failure(&self) -> Option<RunError> {
        self.links
            .iter()
            .find_map(Link::take_failure)
            .map(RunError::Exchange)
    }

    /// Waits until every subtask here has ended and hands each end to `events`, with
    /// a link's failure; stops them all when `cancel` is cancelled or a link fails.
    /// Once every subtask here has finished, the links end when the peers have closed
    /// their channels too, unless `cancel` comes first; after a failure or a cancel
    /// they are cut at once, for a peer may be out of reach.
    pub fn wait(self, cancel: &CancelToken, events: &mut dyn FnMut(TaskEvent)) {
        let mut running = self.running;
        let mut failed = false;
        let mut finished = true;
        while running > 0 {
            if cancel.is_cancelled() {
                finished = false;
                self.stop();
            }
            match self.done.recv_timeout(CANCEL_POLL) {
                Ok(event) => {
                    running -= 1;
                    if let TaskEvent::Ended { result: Err(_), .. } = &event {
                        finished = false;
                    }
                    events(event);
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            if !failed && let Some(error) = self.link_failure() {
                (failed, finished) = (true, false);
                self.stop();
                events(TaskEvent::Failed(error));
            }
        }
        // A peer that was cut off never closes its channels: a cancel from the
        // coordinator, which lost it, cuts the links instead.
        while finished && !self.links.iter().all(Link::is_finished) {
            finished = !cancel.is_cancelled();
            std::thread::sleep(CANCEL_POLL);
        }
        if !finished {
            return;
        }
        for link in self.links {
            if let Err(error) = link.join()
                && !failed
            {
                failed = true;
                events(TaskEvent::Failed(RunError::Exchange(error)));
            }
        }
    }
}

impl Executor {
    /// An executor whose runs stop when `cancel` is cancelled.
    pub fn new(cancel: CancelToken) -> Self {
        Self {
            cancel,
            cluster: None,
        }
    }

    /// An executor whose runs place their subtasks on `cluster`'s workers.
    pub fn on_cluster(cancel: CancelToken, cluster: Arc<dyn Cluster>) -> Self {
        Self {
            cancel,
            cluster: Some(cluster),
        }
    }

    /// Runs `graph` until every subtask has finished, or until the first failure: in
    /// this process, or on the executor's cluster.
    pub fn run(&self, graph: &Graph, options: RunOptions) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let chains = chains(graph);
        let metrics = node_metrics(graph, &chains);
        if let Some(slot) = &options.metrics {
            slot.publish(metrics.iter().cloned().collect());
        }
        let run = Run {
            graph,
            chains: &chains,
            metrics: &metrics,
            started,
        };
        let (failure, driver) = match &self.cluster {
            None => self.run_here(&run, options)?,
            Some(cluster) => self.run_on(cluster, &run, options)?,
        };
        let stopped_with_savepoint = driver.and_then(CheckpointDriver::finish);
        if let Some(failure) = failure {
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

    /// Runs every subtask in this process; returns the first failure and the driver.
    fn run_here(&self, run: &Run<'_>, mut options: RunOptions) -> Result<Ran, RunError> {
        let graph = run.graph;
        let wired = wire(graph, run.chains, Placement::InProcess.workers(graph));
        let (mut driver, sink) = match options.checkpointing.take() {
            Some(setup) => {
                let tasks = driver_tasks(graph, |task| wired.controls[&task].clone());
                let (driver, sink) =
                    CheckpointDriver::new(setup, tasks, node_ids(graph), run.started);
                (Some(driver), Some(sink))
            }
            None => (None, None),
        };
        let share = start(
            graph,
            run.chains,
            run.metrics,
            wired,
            &Placement::InProcess,
            &mut options,
            sink,
        )?;
        let mut failure = self.supervise(
            run,
            share.running,
            &share.done,
            &mut driver,
            &|| share.stop(),
            &|| share.link_failure(),
        );
        log_exchanged(&share.links);
        // Every channel has closed at both ends once every subtask has finished, so the
        // links end too; one that fails to was cut, and the run with it.
        for link in share.links {
            if let Err(error) = link.join()
                && failure.is_none()
            {
                failure = Some(RunError::Exchange(error));
            }
        }
        Ok((failure, driver))
    }

    /// Runs the subtasks on `cluster`'s workers: subtask `i` of every node on worker `i
    /// mod n`. Returns the first failure and the driver.
    fn run_on(
        &self,
        cluster: &Arc<dyn Cluster>,
        run: &Run<'_>,
        mut options: RunOptions,
    ) -> Result<Ran, RunError> {
        let graph = run.graph;
        let heads: Vec<usize> = run.chains.iter().map(|c| c[0]).collect();
        let tasks = |worker: usize, workers: usize| {
            heads
                .iter()
                .map(|&head| {
                    (0..graph.nodes[head].parallelism as usize)
                        .filter(|s| s % workers == worker)
                        .count()
                })
                .sum()
        };
        let (events_tx, events) = crossbeam_channel::unbounded();
        let workers = cluster.start_attempt(
            session_id(),
            options.restore_point.as_ref(),
            &tasks,
            events_tx,
            &self.cancel,
        )?;
        let mut driver = options.checkpointing.take().map(|setup| {
            let tasks = driver_tasks(graph, |task| {
                let cluster = cluster.clone();
                let worker = task.subtask.0 as usize % workers;
                ControlSender::remote(move |control| cluster.control(worker, task, control))
            });
            // Its sink stays unused: the workers store their snapshots themselves.
            CheckpointDriver::new(setup, tasks, node_ids(graph), run.started).0
        });
        let running = heads
            .iter()
            .map(|&h| graph.nodes[h].parallelism as usize)
            .sum();
        let failure = self.supervise(
            run,
            running,
            &events,
            &mut driver,
            &|| cluster.stop_attempt(),
            &|| None,
        );
        cluster.stop_attempt();
        Ok((failure, driver))
    }

    /// Watches a run's subtasks until every one has ended: drives the checkpoint
    /// coordinator, and on the first failure stops the rest with `stop`. `link_failure`
    /// tells of a failed link between workers of this process. Returns the first
    /// failure.
    fn supervise(
        &self,
        run: &Run<'_>,
        mut running: usize,
        events: &Receiver<TaskEvent>,
        driver: &mut Option<CheckpointDriver>,
        stop: &dyn Fn(),
        link_failure: &dyn Fn() -> Option<RunError>,
    ) -> Option<RunError> {
        let mut first_failure: Option<RunError> = None;
        // The first failure stops the rest and fails the checkpoints in progress.
        let fail = |error: RunError, driver: &mut Option<CheckpointDriver>| {
            tracing::error!("{error}");
            stop();
            if let Some(driver) = driver.as_mut() {
                driver.on_task_failure();
            }
            Some(error)
        };
        let mut last_progress = Instant::now();
        let never = crossbeam_channel::never();
        let never_savepoint = crossbeam_channel::never();
        while running > 0 {
            let now = Instant::now();
            if self.cancel.is_cancelled() {
                stop();
            }
            let wake = driver
                .as_ref()
                .and_then(CheckpointDriver::next_deadline)
                .map_or(now + CANCEL_POLL, |d| d.min(now + CANCEL_POLL));
            let messages = driver.as_ref().map_or(&never, |d| d.messages());
            let savepoints = driver
                .as_ref()
                .map_or(&never_savepoint, |d| d.savepoint_requests());
            let mut message = None;
            crossbeam_channel::select! {
                recv(events) -> event => match event {
                    Ok(TaskEvent::Ended { task, result }) => {
                        running -= 1;
                        match result {
                            Ok(()) => tracing::debug!(task = %task, "subtask finished"),
                            Err(TaskError::Disconnected | TaskError::Cancelled) => {}
                            Err(error) if first_failure.is_none() => {
                                first_failure = fail(RunError::TaskFailed { task, error }, driver);
                            }
                            Err(_) => {}
                        }
                    }
                    Ok(TaskEvent::Report(report)) => message = Some(report),
                    Ok(TaskEvent::Failed(error)) if first_failure.is_none() => {
                        first_failure = fail(error, driver);
                    }
                    Ok(TaskEvent::Failed(_)) => {}
                    Err(_) => break,
                },
                recv(messages) -> received => message = received.ok(),
                recv(savepoints) -> request => match (request, driver.as_mut()) {
                    (Ok(request), Some(_)) if self.cluster.is_some() => {
                        let _ = request.reply.send(Err(
                            "savepoints of a job on a cluster are not supported yet: its workers store every snapshot in the checkpoint storage. Take a retained checkpoint instead ([checkpointing] retention = \"retain-on-cancellation\")".to_owned(),
                        ));
                    }
                    (Ok(request), Some(d)) => d.on_savepoint_request(request),
                    _ => {}
                },
                default(wake.saturating_duration_since(now)) => {}
            }
            if let (Some(message), Some(d)) = (message, driver.as_mut())
                && first_failure.is_none()
                && let Err(failure) = d.on_message(message, Instant::now())
            {
                first_failure = fail(RunError::Checkpointing(failure), driver);
            }
            if first_failure.is_none()
                && let Some(d) = driver.as_mut()
                && let Err(failure) = d.on_tick(Instant::now())
            {
                first_failure = fail(RunError::Checkpointing(failure), driver);
            }
            if first_failure.is_none()
                && let Some(error) = link_failure()
            {
                first_failure = fail(error, driver);
            }
            if last_progress.elapsed() >= PROGRESS_INTERVAL {
                log_progress(run.graph, run.metrics, run.started);
                last_progress = Instant::now();
            }
        }
        first_failure
    }
}

/// Starts this process's share of `graph` (`weir worker`): its subtasks, their
/// snapshots going to `sink`, and its connections to the other workers.
pub fn start_share(
    graph: &Graph,
    mut options: RunOptions,
    sink: Option<Arc<dyn CheckpointSink>>,
    placement: &Placement,
) -> Result<Share, RunError> {
    let chains = chains(graph);
    let metrics = node_metrics(graph, &chains);
    if let Some(slot) = &options.metrics {
        slot.publish(metrics.iter().cloned().collect());
    }
    let wired = wire(graph, &chains, placement.workers(graph));
    start(
        graph,
        &chains,
        &metrics,
        wired,
        placement,
        &mut options,
        sink,
    )
}

/// What every part of one run of a graph reads.
struct Run<'a> {
    graph: &'a Graph,
    chains: &'a [Vec<usize>],
    metrics: &'a [Arc<NodeMetrics>],
    started: Instant,
}

/// How a run ended: its first failure, and its checkpoint driver to finish.
type Ran = (Option<RunError>, Option<CheckpointDriver>);

/// Every node's id, in graph order.
fn node_ids(graph: &Graph) -> Arc<[String]> {
    graph.nodes.iter().map(|n| n.id.clone()).collect()
}

/// Every subtask as the checkpoint coordinator addresses it, through `control_of`.
fn driver_tasks(graph: &Graph, control_of: impl Fn(TaskRef) -> ControlSender) -> Vec<DriverTask> {
    let mut tasks = Vec::new();
    for (n, node) in graph.nodes.iter().enumerate() {
        for s in 0..node.parallelism {
            let task = TaskRef {
                node: n,
                subtask: SubtaskIndex(s),
            };
            tasks.push(DriverTask {
                task,
                control: control_of(task),
                is_source: matches!(node.body, NodeBody::Source(_)),
                parallelism: node.parallelism,
            });
        }
    }
    tasks
}

/// Logs how much the links between workers of this process carried.
fn log_exchanged(links: &[Link]) {
    if !links.is_empty() {
        let written: u64 = links.iter().map(Link::bytes_written).sum();
        tracing::info!(
            "the exchange between workers carried {:.1} MiB",
            written as f64 / f64::from(1 << 20)
        );
    }
}

/// Connects the workers of `wired` and starts every subtask placed here on its own
/// thread, restoring what `options` holds for it; each sends its end to the share.
fn start(
    graph: &Graph,
    chains: &[Vec<usize>],
    metrics: &[Arc<NodeMetrics>],
    wired: Wired,
    placement: &Placement,
    options: &mut RunOptions,
    sink: Option<Arc<dyn CheckpointSink>>,
) -> Result<Share, RunError> {
    let Wired {
        mut wiring,
        workers,
        mut receivers,
        controls,
    } = wired;
    let here: Vec<bool> = (0..graph.nodes.iter().map(|n| n.parallelism).max().unwrap_or(0))
        .map(|s| workers.is_here(s as usize))
        .collect();
    let links = match placement {
        Placement::InProcess => workers.connect_in_process(session_id())?,
        Placement::Worker {
            peers,
            listener,
            session,
            ..
        } => workers.connect_to_peers(*session, listener, peers)?,
    };
    if !links.is_empty() && matches!(placement, Placement::InProcess) {
        let connections = links.len() / 2;
        tracing::info!(
            "{} workers in this process, {connections} connection{} between them on 127.0.0.1",
            graph.network.local_workers,
            if connections == 1 { "" } else { "s" }
        );
    }
    let (done_tx, done) = crossbeam_channel::unbounded();
    // This run's stop flag: set on the first failure, or when the user cancels. The
    // user's token stays as the user left it, so a restart can tell the two apart.
    let stop = Arc::new(AtomicBool::new(false));
    let cancel = &stop;
    let mode = options.mode.unwrap_or(AlignMode::ExactlyOnce);
    let mut running = 0usize;
    for chain in chains {
        let (head, tail) = (chain[0], chain[chain.len() - 1]);
        let inputs = std::mem::take(&mut wiring.inputs[head]);
        let outputs = std::mem::take(&mut wiring.outputs[tail]);
        let head_controls = std::mem::take(&mut receivers[head]);
        let wakes = std::mem::take(&mut wiring.wakes[head]);
        for (s, (((receivers, edges), control), wake)) in inputs
            .into_iter()
            .zip(outputs)
            .zip(head_controls)
            .zip(wakes)
            .enumerate()
        {
            // A subtask of another worker: its ends of the channels go away unused.
            let Some(control) = control.filter(|_| here[s]) else {
                continue;
            };
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
                    let _ = done.send(TaskEvent::Ended {
                        task: failed.unwrap_or(task_name),
                        result,
                    });
                });
            if let Err(source) = spawned {
                stop.store(true, Ordering::Relaxed);
                return Err(RunError::Spawn { task: name, source });
            }
            running += 1;
        }
    }
    Ok(Share {
        controls,
        links,
        done,
        running,
        stop,
    })
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
/// connections carry those between subtasks on different workers, and the control
/// channels of the subtasks placed here.
fn wire(graph: &Graph, chains: &[Vec<usize>], mut workers: Workers) -> Wired {
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
    let mut controls = HashMap::new();
    let receivers = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            (0..node.parallelism)
                .map(|s| {
                    workers.is_here(s as usize).then(|| {
                        let (tx, rx) = ControlSender::new(wakes[n][s as usize].clone());
                        let task = TaskRef {
                            node: n,
                            subtask: SubtaskIndex(s),
                        };
                        controls.insert(task, tx);
                        rx
                    })
                })
                .collect()
        })
        .collect();
    Wired {
        wiring: Wiring {
            inputs,
            wakes,
            outputs,
        },
        workers,
        receivers,
        controls,
    }
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
