//! `weir coordinator`: the gRPC server workers attach to, and the [`Cluster`] the
//! executor places a job's attempts on.
//!
//! Workers register and stay attached on one stream each. An attempt takes the first
//! registered workers up to the wanted number (any others wait as standbys), gives each
//! its number and everyone's data address, and from then on turns what they report into
//! the executor's [`TaskEvent`]s. A worker whose stream breaks, or that sends no
//! heartbeat within the timeout, is lost: the attempt fails and the subtasks it ran are
//! accounted as ended, so that the executor's run ends and the restart strategy takes
//! over, on the workers registered by then.

use super::proto::{
    self, CoordinatorCommand, WorkerMessage, coordinator_command::Kind as Command,
    coordinator_server::CoordinatorServer, worker_message::Kind as Message,
};
use crate::checkpoint::coordinator::TaskRef;
use crate::runtime::executor::{Cluster, RestorePoint, TaskEvent};
use crate::runtime::{CancelToken, Control, Fault, RunError, TaskError};
use crossbeam_channel::Sender;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// What workers are told to run: the job as the coordinator read it.
#[derive(Clone, Debug)]
pub struct JobFile {
    /// Its path, absolute: where its relative paths resolve on every worker.
    pub path: String,
    /// Its text.
    pub text: String,
    /// The `-D` overrides, `key=value`.
    pub overrides: Vec<String>,
    /// `--allow-non-restored-state`.
    pub allow_non_restored_state: bool,
    /// `--allow-duplicates`.
    pub allow_duplicates: bool,
}

/// How the coordinator treats its workers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How many workers an attempt runs on.
    pub workers: usize,
    /// How often workers send a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long without one before a worker is lost.
    pub heartbeat_timeout: Duration,
}

/// The workers attached to this coordinator and the attempt they run.
#[derive(Debug)]
pub struct Coordinator {
    job: JobFile,
    settings: Settings,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// The attached workers, by registration: the oldest first.
    workers: BTreeMap<u64, Attached>,
    attempt: Option<Attempt>,
}

#[derive(Debug)]
struct Attached {
    /// `name at address`, for logs and errors.
    name: String,
    data_address: SocketAddr,
    commands: UnboundedSender<Result<CoordinatorCommand, Status>>,
    last_heartbeat: Instant,
}

/// The attempt running now.
#[derive(Debug)]
struct Attempt {
    id: u64,
    /// Its workers' registrations, by worker number.
    members: Vec<u64>,
    /// Per member: how many subtasks it runs, how many have ended, whether its share
    /// is over (ended or lost).
    expected: Vec<usize>,
    ended: Vec<usize>,
    over: Vec<bool>,
    events: Sender<TaskEvent>,
    cancelled: bool,
}

impl Attempt {
    /// The member number of registration `id`.
    fn member(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|&m| m == id)
    }

    /// Ends member `w`'s share: the subtasks it did not report end here, disconnected.
    fn close(&mut self, w: usize, name: &str) {
        if std::mem::replace(&mut self.over[w], true) {
            return;
        }
        for _ in self.ended[w]..self.expected[w] {
            let _ = self.events.send(TaskEvent::Ended {
                task: format!("a subtask on worker {name}"),
                result: Err(TaskError::Disconnected),
            });
        }
        self.ended[w] = self.expected[w];
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Coordinator {
    /// A coordinator of `job` without workers yet.
    pub fn new(job: JobFile, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            job,
            settings,
            state: Mutex::default(),
            changed: Condvar::new(),
        })
    }

    /// Serves the control plane on `listener` until the process ends, and declares
    /// silent workers lost.
    pub fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener, io: &tokio::runtime::Handle) {
        let service = CoordinatorServer::new(Service(self.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        io.spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!("the coordinator's gRPC server stopped: {e}");
            }
        });
        let watched = self.clone();
        io.spawn(async move {
            let period = watched
                .settings
                .heartbeat_interval
                .min(Duration::from_secs(1));
            loop {
                tokio::time::sleep(period).await;
                watched.expire_silent();
            }
        });
    }

    /// Declares lost every worker whose last heartbeat is older than the timeout.
    fn expire_silent(&self) {
        let timeout = self.settings.heartbeat_timeout;
        let silent: Vec<u64> = lock(&self.state)
            .workers
            .iter()
            .filter(|(_, w)| w.last_heartbeat.elapsed() > timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in silent {
            self.lost(id, &format!("it sent no heartbeat for {timeout:?}"));
        }
    }

    /// Registration `id` is gone: detaches it and fails its attempt.
    fn lost(&self, id: u64, why: &str) {
        let mut state = lock(&self.state);
        let Some(worker) = state.workers.remove(&id) else {
            return;
        };
        tracing::warn!("worker {} is lost: {why}", worker.name);
        // Ending its stream tells the worker, if it still runs, to stop its subtasks.
        let _ = worker.commands.send(Err(Status::aborted(format!(
            "the coordinator declared this worker lost: {why}"
        ))));
        if let Some(attempt) = state.attempt.as_mut()
            && let Some(w) = attempt.member(id)
            && !attempt.over[w]
        {
            let _ = attempt.events.send(TaskEvent::Failed(RunError::Worker {
                worker: worker.name.clone(),
                message: format!("lost: {why}"),
            }));
            attempt.close(w, &worker.name);
        }
        self.changed.notify_all();
    }

    /// What registration `id` reported.
    fn on_message(&self, id: u64, message: Message) {
        let mut state = lock(&self.state);
        let State {
            workers, attempt, ..
        } = &mut *state;
        let Some(worker) = workers.get_mut(&id) else {
            return;
        };
        worker.last_heartbeat = Instant::now();
        let name = worker.name.clone();
        match message {
            Message::Register(_) => {}
            Message::Heartbeat(_) => {}
            Message::TaskEnded(ended) => {
                if let Some(a) = current(attempt, ended.attempt)
                    && let Some(w) = a.member(id)
                    && !a.over[w]
                {
                    a.ended[w] += 1;
                    let _ = a.events.send(TaskEvent::Ended {
                        task: ended.task.clone(),
                        result: task_result(&ended),
                    });
                }
            }
            Message::Report(report) => {
                let Some(a) = current(attempt, report.attempt) else {
                    return;
                };
                let event = match report.kind {
                    Some(proto::report::Kind::Checkpoint(bytes)) => {
                        match serde_json::from_slice(&bytes) {
                            Ok(message) => TaskEvent::Report(message),
                            Err(e) => TaskEvent::Failed(RunError::Worker {
                                worker: name,
                                message: format!(
                                    "it sent a checkpoint report this coordinator cannot read: {e}"
                                ),
                            }),
                        }
                    }
                    Some(proto::report::Kind::Failure(message)) => {
                        TaskEvent::Failed(RunError::Worker {
                            worker: name,
                            message,
                        })
                    }
                    None => return,
                };
                let _ = a.events.send(event);
            }
            Message::AttemptEnded(ended) => {
                if let Some(a) = current(attempt, ended.attempt)
                    && let Some(w) = a.member(id)
                {
                    a.close(w, &name);
                }
            }
        }
    }

    pub(super) fn register(
        &self,
        register: &proto::Register,
        peer: Option<SocketAddr>,
        commands: UnboundedSender<Result<CoordinatorCommand, Status>>,
    ) -> Result<u64, Status> {
        let version = env!("CARGO_PKG_VERSION");
        if register.version != version {
            return Err(Status::failed_precondition(format!(
                "this coordinator runs weir {version} and the worker weir {}: run the same weir on every machine",
                register.version
            )));
        }
        let data_address = resolve(&register.data_address).map_err(|e| {
            Status::invalid_argument(format!(
                "the worker's data address \"{}\" does not resolve: {e}",
                register.data_address
            ))
        })?;
        let name = match peer {
            Some(peer) => format!("{} at {peer}", register.name),
            None => register.name.clone(),
        };
        let welcome = Command::Welcome(proto::Welcome {
            heartbeat_interval_ms: self.settings.heartbeat_interval.as_millis() as u64,
        });
        let _ = commands.send(Ok(CoordinatorCommand {
            kind: Some(welcome),
        }));
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        tracing::info!(
            "worker {name} registered, data at {data_address} ({} attached)",
            state.workers.len() + 1
        );
        state.workers.insert(
            id,
            Attached {
                name,
                data_address,
                commands,
                last_heartbeat: Instant::now(),
            },
        );
        self.changed.notify_all();
        Ok(id)
    }
}

/// The attempt running now, when it is attempt `id`: reports of an earlier one are late.
fn current(attempt: &mut Option<Attempt>, id: u64) -> Option<&mut Attempt> {
    attempt.as_mut().filter(|a| a.id == id)
}

/// A subtask's end as a worker reported it.
pub(super) fn task_result(ended: &proto::TaskEnded) -> Result<(), TaskError> {
    match proto::Ending::try_from(ended.ending) {
        Ok(proto::Ending::Finished) => Ok(()),
        Ok(proto::Ending::Disconnected) => Err(TaskError::Disconnected),
        Ok(proto::Ending::Cancelled) => Err(TaskError::Cancelled),
        Ok(proto::Ending::Failed) | Err(_) => {
            let fault = match proto::Fault::try_from(ended.fault) {
                Ok(proto::Fault::Guest) => Fault::Guest,
                Ok(proto::Fault::User) => Fault::User,
                Ok(proto::Fault::External) => Fault::External,
                Ok(proto::Fault::Host) | Err(_) => Fault::Host,
            };
            Err(TaskError::failed(fault, ended.message.clone()))
        }
    }
}

/// The first address `host:port` names.
fn resolve(address: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "it names no address"))
}

fn send(commands: &UnboundedSender<Result<CoordinatorCommand, Status>>, command: Command) {
    let _ = commands.send(Ok(CoordinatorCommand {
        kind: Some(command),
    }));
}

/// How often the coordinator says which workers it still waits for.
const WAITING_LOG: Duration = Duration::from_secs(5);

impl Cluster for Coordinator {
    fn start_attempt(
        &self,
        attempt: u64,
        restore: Option<&RestorePoint>,
        tasks: &dyn Fn(usize, usize) -> usize,
        events: Sender<TaskEvent>,
        cancel: &CancelToken,
    ) -> Result<usize, RunError> {
        let wanted = self.settings.workers;
        let mut state = lock(&self.state);
        let mut logged: Option<Instant> = None;
        while state.workers.len() < wanted {
            if cancel.is_cancelled() {
                return Err(RunError::Cancelled);
            }
            if logged.is_none_or(|at| at.elapsed() >= WAITING_LOG) {
                tracing::info!(
                    "waiting for workers: {} of {wanted} registered",
                    state.workers.len()
                );
                logged = Some(Instant::now());
            }
            state = self
                .changed
                .wait_timeout(state, crate::runtime::CANCEL_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let members: Vec<u64> = state.workers.keys().copied().take(wanted).collect();
        let peers: Vec<String> = members
            .iter()
            .map(|id| state.workers[id].data_address.to_string())
            .collect();
        let (restore_checkpoint, restore_at) = match restore {
            None => (0, String::new()),
            Some(RestorePoint::Checkpoint(id)) => (id.0, String::new()),
            Some(RestorePoint::At(location)) => (0, location.clone()),
        };
        for (index, id) in members.iter().enumerate() {
            let assign = proto::Assign {
                attempt,
                job_path: self.job.path.clone(),
                job_text: self.job.text.clone(),
                overrides: self.job.overrides.clone(),
                index: index as u32,
                peers: peers.clone(),
                restore_checkpoint,
                restore_at: restore_at.clone(),
                allow_non_restored_state: self.job.allow_non_restored_state,
                allow_duplicates: self.job.allow_duplicates,
            };
            send(&state.workers[id].commands, Command::Assign(assign));
        }
        let names: Vec<&str> = members
            .iter()
            .map(|id| state.workers[id].name.as_str())
            .collect();
        tracing::info!("attempt {attempt:x} runs on workers {}", names.join(", "));
        state.attempt = Some(Attempt {
            id: attempt,
            expected: (0..wanted).map(|w| tasks(w, wanted)).collect(),
            ended: vec![0; wanted],
            over: vec![false; wanted],
            members,
            events,
            cancelled: false,
        });
        Ok(wanted)
    }

    fn control(&self, worker: usize, task: TaskRef, control: Control) {
        let state = lock(&self.state);
        let Some(attempt) = &state.attempt else {
            return;
        };
        let Some(attached) = attempt
            .members
            .get(worker)
            .and_then(|id| state.workers.get(id))
        else {
            return;
        };
        let control = proto::TaskControl {
            attempt: attempt.id,
            node: task.node as u32,
            subtask: task.subtask.0,
            control: serde_json::to_vec(&control).unwrap_or_default(),
        };
        send(&attached.commands, Command::Control(control));
    }

    fn stop_attempt(&self) {
        let mut state = lock(&self.state);
        let State {
            workers, attempt, ..
        } = &mut *state;
        let Some(attempt) = attempt.as_mut().filter(|a| !a.cancelled) else {
            return;
        };
        attempt.cancelled = true;
        for id in &attempt.members {
            if let Some(worker) = workers.get(id) {
                send(
                    &worker.commands,
                    Command::Cancel(proto::Cancel {
                        attempt: attempt.id,
                    }),
                );
            }
        }
    }
}

type Commands = UnboundedReceiverStream<Result<CoordinatorCommand, Status>>;

/// The gRPC service: the coordinator, shared with the tasks that read workers' streams.
struct Service(Arc<Coordinator>);

#[tonic::async_trait]
impl proto::coordinator_server::Coordinator for Service {
    type AttachStream = Commands;

    async fn attach(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Commands>, Status> {
        let coordinator = self.0.clone();
        let peer = request.remote_addr();
        let mut messages = request.into_inner();
        let register = match messages.message().await? {
            Some(WorkerMessage {
                kind: Some(Message::Register(register)),
            }) => register,
            _ => return Err(Status::invalid_argument("a worker registers first")),
        };
        let (commands, outgoing) = tokio::sync::mpsc::unbounded_channel();
        let id = coordinator.register(&register, peer, commands)?;
        tokio::spawn(async move {
            let why = loop {
                match messages.message().await {
                    Ok(Some(WorkerMessage {
                        kind: Some(message),
                    })) => coordinator.on_message(id, message),
                    Ok(Some(_)) => {}
                    Ok(None) => break "it detached".to_owned(),
                    Err(status) => break format!("its connection failed: {}", status.message()),
                };
            };
            coordinator.lost(id, &why);
        });
        Ok(Response::new(UnboundedReceiverStream::new(outgoing)))
    }
}
