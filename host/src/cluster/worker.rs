//! `weir worker`: attaches to a coordinator and runs the shares of the attempts it is
//! given, until the process is stopped.
//!
//! The worker listens on its data port from the start, registers with the address its
//! peers reach it at, and sends a heartbeat at the interval the coordinator asks for.
//! An attempt runs on its own thread: it reads the job the coordinator sent, restores
//! its subtasks from shared checkpoint storage, connects to its peers and runs; what its
//! subtasks report goes back on the stream. When the stream to the coordinator breaks,
//! the worker stops its subtasks (their output is committed only on the coordinator's
//! word) and attaches again.

use super::proto::{
    self, CoordinatorCommand, WorkerMessage, coordinator_client::CoordinatorClient,
    coordinator_command::Kind as Command, worker_message::Kind as Message,
};
use crate::checkpoint::AlignMode;
use crate::checkpoint::coordinator::TaskRef;
use crate::checkpoint::driver::SnapshotUploader;
use crate::connectors::ExistingOutput;
use crate::job::{self, Override};
use crate::launch::{self, build_graph};
use crate::runtime::channel::ControlSender;
use crate::runtime::executor::{
    Placement, RestorePoint, RunOptions, Share, TaskEvent, start_share,
};
use crate::runtime::{
    CANCEL_POLL, CancelToken, CheckpointId, Control, Fault, SubtaskIndex, TaskError,
};
use crate::wasm::{Profiler, WasmRuntime};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;

/// How a worker finds its coordinator and is found by its peers.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The coordinator's control address, `host:port` or `http://host:port`.
    pub coordinator: String,
    /// Where to listen for the data of other workers.
    pub data_bind: SocketAddr,
    /// The `host:port` other workers reach the data port at; by default the address
    /// this machine reaches the coordinator from, with the bound port.
    pub data_address: Option<String>,
    /// How long to keep trying to reach the coordinator, at start and after losing it.
    pub connect_timeout: Duration,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The data port could not be opened.
    #[error("cannot listen on {address} for the data of other workers: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The coordinator did not answer in time.
    #[error("cannot reach the coordinator at {address} within {timeout:?}: {why}")]
    Unreachable {
        /// Its address.
        address: String,
        /// How long the worker tried.
        timeout: Duration,
        /// The last error.
        why: String,
    },
    /// The coordinator refused the worker.
    #[error("the coordinator at {address} refused this worker: {why}")]
    Refused {
        /// Its address.
        address: String,
        /// What it said.
        why: String,
    },
}

/// Runs a worker until `cancel` is cancelled (Ctrl-C) or the coordinator stays out of
/// reach for `connect_timeout`.
pub fn run_worker(
    options: &WorkerOptions,
    wasm: &WasmRuntime,
    io: &Handle,
    cancel: &CancelToken,
) -> Result<(), WorkerError> {
    let listener = TcpListener::bind(options.data_bind).map_err(|source| WorkerError::Listen {
        address: options.data_bind,
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| WorkerError::Listen {
            address: options.data_bind,
            source,
        })?
        .port();
    let listener = Arc::new(listener);
    let endpoint = if options.coordinator.contains("://") {
        options.coordinator.clone()
    } else {
        format!("http://{}", options.coordinator)
    };
    loop {
        let attached = attach(options, &endpoint, port, io)?;
        tracing::info!("attached to the coordinator at {endpoint}");
        serve(attached, &listener, wasm, io, cancel);
        if cancel.is_cancelled() {
            return Ok(());
        }
        tracing::warn!("lost the coordinator at {endpoint}; attaching again");
    }
}

/// A worker's stream to the coordinator.
struct Attached {
    commands: crossbeam_channel::Receiver<Command>,
    out: UnboundedSender<WorkerMessage>,
}

/// Connects and registers, trying again until the connect timeout.
fn attach(
    options: &WorkerOptions,
    endpoint: &str,
    port: u16,
    io: &Handle,
) -> Result<Attached, WorkerError> {
    let deadline = Instant::now() + options.connect_timeout;
    let unreachable = |why: String| WorkerError::Unreachable {
        address: options.coordinator.clone(),
        timeout: options.connect_timeout,
        why,
    };
    let host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .trim_end_matches('/')
        .to_owned();
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| unreachable(format!("it is not an address: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10));
    loop {
        let data_address = match &options.data_address {
            Some(address) => Ok(address.clone()),
            None => local_address_towards(&host).map(|ip| SocketAddr::new(ip, port).to_string()),
        };
        let attempt = data_address
            .and_then(|data_address| io.block_on(register(channel.clone(), &name, &data_address)));
        match attempt {
            Ok(attached) => return Ok(attached),
            Err(Attach::Refused(why)) => {
                return Err(WorkerError::Refused {
                    address: options.coordinator.clone(),
                    why,
                });
            }
            Err(Attach::Failed(why)) if Instant::now() >= deadline => return Err(unreachable(why)),
            Err(Attach::Failed(why)) => {
                tracing::debug!("the coordinator is not reachable yet: {why}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Why one try to attach failed.
enum Attach {
    /// Trying again may help.
    Failed(String),
    /// The coordinator said no.
    Refused(String),
}

impl From<String> for Attach {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

/// The IP address this machine reaches `host` (`name:port`) from: no packet is sent.
fn local_address_towards(host: &str) -> Result<std::net::IpAddr, Attach> {
    let target = host
        .to_socket_addrs()
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} names no address"))?;
    let unspecified: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(unspecified).map_err(|e| e.to_string())?;
    socket
        .connect(target)
        .map_err(|e| format!("no route to {host}: {e}"))?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.ip())
}

/// Opens the stream, registers and waits for the welcome; then pumps the commands to
/// a channel the worker's thread reads, and sends heartbeats.
async fn register(
    channel: tonic::transport::Endpoint,
    name: &str,
    data_address: &str,
) -> Result<Attached, Attach> {
    let channel = channel
        .connect()
        .await
        .map_err(|e| format!("{e}: {}", source_chain(&e)))?;
    let (out, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let _ = out.send(message(Message::Register(proto::Register {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        data_address: data_address.to_owned(),
        name: name.to_owned(),
    })));
    let mut client = CoordinatorClient::new(channel);
    let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing);
    let mut inbound = match client.attach(stream).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            return Err(Attach::Failed(status.message().to_owned()));
        }
        Err(status) => return Err(Attach::Refused(status.message().to_owned())),
    };
    let interval = match inbound.message().await {
        Ok(Some(CoordinatorCommand {
            kind: Some(Command::Welcome(welcome)),
        })) => Duration::from_millis(welcome.heartbeat_interval_ms.max(10)),
        Ok(_) => return Err(Attach::Refused("it did not welcome the worker".to_owned())),
        Err(status) => return Err(Attach::Refused(status.message().to_owned())),
    };
    let (commands_tx, commands) = crossbeam_channel::unbounded();
    tokio::spawn(async move {
        loop {
            match inbound.message().await {
                Ok(Some(CoordinatorCommand {
                    kind: Some(command),
                })) => {
                    if commands_tx.send(command).is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(status) => {
                    tracing::warn!(
                        "the stream from the coordinator ended: {}",
                        status.message()
                    );
                    return;
                }
            }
        }
    });
    let beat = out.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            if beat
                .send(message(Message::Heartbeat(proto::Heartbeat {})))
                .is_err()
            {
                return;
            }
        }
    });
    Ok(Attached { commands, out })
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}

fn message(kind: Message) -> WorkerMessage {
    WorkerMessage { kind: Some(kind) }
}

/// The controls of the attempt running here: held until its subtasks exist.
#[derive(Default)]
struct Controls(Mutex<ControlsState>);

#[derive(Default)]
struct ControlsState {
    senders: Option<HashMap<TaskRef, ControlSender>>,
    pending: Vec<(TaskRef, Control)>,
}

impl Controls {
    fn send(&self, task: TaskRef, control: Control) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &state.senders {
            Some(senders) => {
                if let Some(sender) = senders.get(&task) {
                    sender.send(control);
                }
            }
            None => state.pending.push((task, control)),
        }
    }

    fn started(&self, senders: HashMap<TaskRef, ControlSender>) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (task, control) in std::mem::take(&mut state.pending) {
            if let Some(sender) = senders.get(&task) {
                sender.send(control);
            }
        }
        state.senders = Some(senders);
    }
}

/// An attempt's share running on its thread.
struct Running<'scope> {
    attempt: u64,
    cancel: CancelToken,
    controls: Arc<Controls>,
    thread: std::thread::ScopedJoinHandle<'scope, ()>,
}

/// Carries out the coordinator's commands until the stream ends or `cancel`.
fn serve(
    attached: Attached,
    listener: &Arc<TcpListener>,
    wasm: &WasmRuntime,
    io: &Handle,
    cancel: &CancelToken,
) {
    let Attached { commands, out } = attached;
    fn stop(running: Option<Running<'_>>) {
        if let Some(r) = running {
            r.cancel.cancel();
            let _ = r.thread.join();
        }
    }
    std::thread::scope(|scope| {
        let mut running: Option<Running<'_>> = None;
        loop {
            match commands.recv_timeout(CANCEL_POLL) {
                Ok(Command::Assign(assign)) => {
                    stop(running.take());
                    let (cancel, controls) = (CancelToken::default(), Arc::<Controls>::default());
                    let attempt = assign.attempt;
                    let (out, listener) = (out.clone(), listener.clone());
                    let (c, k) = (cancel.clone(), controls.clone());
                    let thread = scope.spawn(move || {
                        run_attempt(&assign, &listener, wasm, io, &out, &c, &k);
                    });
                    running = Some(Running {
                        attempt,
                        cancel,
                        controls,
                        thread,
                    });
                }
                Ok(Command::Control(control)) => {
                    if let Some(r) = running.as_ref().filter(|r| r.attempt == control.attempt)
                        && let Ok(decoded) = serde_json::from_slice::<Control>(&control.control)
                    {
                        let task = TaskRef {
                            node: control.node as usize,
                            subtask: SubtaskIndex(control.subtask),
                        };
                        r.controls.send(task, decoded);
                    }
                }
                Ok(Command::Cancel(c)) => {
                    if let Some(r) = running.as_ref().filter(|r| r.attempt == c.attempt) {
                        r.cancel.cancel();
                    }
                }
                Ok(Command::Welcome(_)) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if cancel.is_cancelled() {
                        break;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        stop(running.take());
    });
}

/// Runs this worker's share of one attempt and reports it; ends with `AttemptEnded`.
fn run_attempt(
    assign: &proto::Assign,
    listener: &Arc<TcpListener>,
    wasm: &WasmRuntime,
    io: &Handle,
    out: &UnboundedSender<WorkerMessage>,
    cancel: &CancelToken,
    controls: &Controls,
) {
    let attempt = assign.attempt;
    let report = |kind: proto::report::Kind| {
        let _ = out.send(message(Message::Report(proto::Report {
            attempt,
            kind: Some(kind),
        })));
    };
    tracing::info!(
        "running attempt {attempt:x} as worker {} of {}",
        assign.index + 1,
        assign.peers.len()
    );
    match prepare(assign, listener, wasm, io, out, cancel) {
        Ok(share) => {
            controls.started(share.controls.clone());
            share.wait(cancel, &mut |event| match event {
                TaskEvent::Ended { task, result } => {
                    let _ = out.send(message(Message::TaskEnded(task_ended(
                        attempt, task, &result,
                    ))));
                }
                TaskEvent::Report(_) => {}
                TaskEvent::Failed(error) => report(proto::report::Kind::Failure(error.to_string())),
            });
        }
        Err(why) => {
            tracing::error!("attempt {attempt:x} cannot start here: {why}");
            report(proto::report::Kind::Failure(why));
        }
    }
    let _ = out.send(message(Message::AttemptEnded(proto::AttemptEnded {
        attempt,
    })));
}

pub(super) fn task_ended(
    attempt: u64,
    task: String,
    result: &Result<(), TaskError>,
) -> proto::TaskEnded {
    let (ending, fault, message) = match result {
        Ok(()) => (proto::Ending::Finished, Fault::Host, String::new()),
        Err(TaskError::Disconnected) => (proto::Ending::Disconnected, Fault::Host, String::new()),
        Err(TaskError::Cancelled) => (proto::Ending::Cancelled, Fault::Host, String::new()),
        Err(TaskError::Failed { fault, message }) => {
            (proto::Ending::Failed, *fault, message.clone())
        }
    };
    let fault = match fault {
        Fault::Guest => proto::Fault::Guest,
        Fault::User => proto::Fault::User,
        Fault::External => proto::Fault::External,
        Fault::Host => proto::Fault::Host,
    };
    proto::TaskEnded {
        attempt,
        task,
        ending: ending as i32,
        fault: fault as i32,
        message,
    }
}

/// Reads the job, restores this worker's subtasks and starts them, connected to the
/// other workers.
fn prepare(
    assign: &proto::Assign,
    listener: &Arc<TcpListener>,
    wasm: &WasmRuntime,
    io: &Handle,
    out: &UnboundedSender<WorkerMessage>,
    cancel: &CancelToken,
) -> Result<Share, String> {
    let overrides = assign
        .overrides
        .iter()
        .map(|o| o.parse::<Override>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let path = Path::new(&assign.job_path);
    let spec = job::parse(&assign.job_text, path, &overrides).map_err(|e| e.to_string())?;
    let existing = if assign.allow_duplicates {
        ExistingOutput::Append
    } else {
        ExistingOutput::Refuse
    };
    let graph =
        build_graph(&spec, wasm, existing, &Profiler::default()).map_err(|e| e.to_string())?;
    let point = match (assign.restore_checkpoint, assign.restore_at.as_str()) {
        (0, "") => None,
        (0, location) => Some(RestorePoint::At(location.to_owned())),
        (id, _) => Some(RestorePoint::Checkpoint(CheckpointId(id))),
    };
    let (restore, channel_state) = match &point {
        Some(point) => launch::restore_share(&spec, point, assign.allow_non_restored_state, io)
            .map_err(|e| e.to_string())?,
        None => Default::default(),
    };
    let mut options = RunOptions {
        restore,
        channel_state,
        ..RunOptions::default()
    };
    let sink = match &spec.checkpointing {
        Some(config) => {
            let storage = crate::storage::open(&config.dir, &launch::job_id(&spec), &config.s3)
                .map_err(|e| e.to_string())?;
            options.mode = Some(AlignMode::from(config.mode));
            let (tx, rx) = crossbeam_channel::unbounded();
            let forward = out.clone();
            let attempt = assign.attempt;
            // Ends when the uploader and every upload in flight have gone.
            std::thread::Builder::new()
                .name("weir-reports".to_owned())
                .spawn(move || {
                    for m in rx {
                        let bytes = serde_json::to_vec(&m).unwrap_or_default();
                        let _ = forward.send(message(Message::Report(proto::Report {
                            attempt,
                            kind: Some(proto::report::Kind::Checkpoint(bytes)),
                        })));
                    }
                })
                .map_err(|e| format!("cannot start a thread: {e}"))?;
            let node_ids = graph.nodes.iter().map(|n| n.id.clone()).collect();
            let uploader: Arc<dyn crate::runtime::CheckpointSink> =
                Arc::new(SnapshotUploader::new(
                    tx,
                    storage,
                    io.clone(),
                    node_ids,
                    launch::backend_name(spec.state.backend).to_owned(),
                ));
            Some(uploader)
        }
        None => None,
    };
    let peers = assign
        .peers
        .iter()
        .map(|p| {
            p.parse::<SocketAddr>()
                .map_err(|e| format!("the coordinator sent the address \"{p}\": {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cancel.is_cancelled() {
        return Err("the attempt was cancelled before it started".to_owned());
    }
    let placement = Placement::Worker {
        me: assign.index as usize,
        peers,
        listener: listener.clone(),
        session: assign.attempt,
    };
    start_share(&graph, options, sink, &placement).map_err(|e| e.to_string())
}
