//! The REST server of a running job: Flink's REST API (paths, field names, the
//! `{"errors": [...]}` shape of failures), Prometheus text at `/metrics`, the OpenAPI
//! document at `/openapi.json`.
//!
//! It listens on `[rest] address` (loopback by default) and the first free port of
//! `[rest] port`. Reading is open to whoever reaches the address. The endpoints that
//! change the job (`PATCH /jobs/:id`, which cancels it, and the savepoint triggers
//! `POST /jobs/:id/savepoints` and `POST /jobs/:id/stop`) are open on loopback; on any
//! other address they need `Authorization: Bearer <token>` with the token of
//! `[rest] token` or `WEIR_REST_TOKEN`, and without a token they are refused.
//!
//! A savepoint is an asynchronous operation, as in Flink: a trigger queues a
//! [`SavepointRequest`] for the checkpoint coordinator and answers a trigger id at once;
//! `GET /jobs/:id/savepoints/:triggerid` tells how it went. When the job ends, the server
//! answers the requests nobody took and stays up until each outcome was read once (a
//! stop-with-savepoint ends the job, and its asker still has to learn the location).
//!
//! # Layout
//! - `mod.rs`: binding, routing, authorisation, errors, the savepoint operations.
//! - `client.rs`: a bare HTTP client for `weir stack` and the tests.
//! - `views.rs`: the JSON bodies, pure functions of what the job published.
//! - `prometheus.rs`: the text of `/metrics`.
//! - `rates.rs`: busy, idle and back-pressured time per second over a sliding window.
//! - `openapi.json`: the API's description, checked against the server in a test.
//! - `web.rs`, `web/`: the page at `/`, which polls the API.

pub mod client;
mod prometheus;
mod rates;
pub mod views;
mod web;

use crate::job::RestConfig;
use crate::observe::LoadError;
use crate::observe::live::{ENDED_FIRST, LiveJob, SavepointRequest, hex_id};
use crate::runtime::CheckpointId;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rates::Rates;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use views::{BodyError, Now, SavepointTrigger};

/// The environment variable that holds the token when the job file does not.
pub const TOKEN_ENV: &str = "WEIR_REST_TOKEN";

/// The OpenAPI document of this API.
const OPENAPI: &str = include_str!("openapi.json");

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// No port of the range could be bound. The user's to fix (another port, or stop
    /// what holds it); a retry helps only if that goes away.
    #[error(
        "the REST server cannot listen on {address} port {ports}: {reason}. Set [rest] port to a free port, or port = 0 for any"
    )]
    Bind {
        /// The address.
        address: std::net::IpAddr,
        /// The port or range, as the user wrote it.
        ports: String,
        /// What the operating system said (of the last port tried).
        reason: String,
    },
}

/// A running server.
#[derive(Debug)]
pub struct RestServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    io: Handle,
    job: Arc<LiveJob>,
    savepoints: Arc<Savepoints>,
    /// Tells the server to stop accepting and finish the requests it is answering.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// How long [`RestServer::close`] lets the requests in flight finish: an answer of this
/// server is written in well under a millisecond, so this only bounds a client that
/// stopped reading.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl RestServer {
    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes the server once the job ended: answers the savepoint requests no
    /// coordinator took with [`ENDED_FIRST`]; waits, for at most `readers`, until every
    /// savepoint operation has finished and its outcome was read once (but for those
    /// that failed without stopping the job, whose askers lose nothing), then stops
    /// after finishing the requests in flight, so that the last answer reaches its
    /// reader.
    ///
    /// Blocks; call it outside the I/O runtime.
    pub fn close(mut self, readers: Duration) {
        self.job.savepoints.refuse_pending();
        if !self.savepoints.wait_until_read(readers) {
            tracing::warn!(
                "nobody read the outcome of a savepoint within {readers:?}; the REST server stops anyway"
            );
        }
        if let Some(stop) = self.stop.take() {
            // The server may have stopped by itself; then there is nothing to tell.
            let _ = stop.send(());
        }
        let task = &mut self.task;
        let finished = self
            .io
            .block_on(async { tokio::time::timeout(CLOSE_GRACE, task).await });
        if finished.is_err() {
            tracing::warn!("the REST server did not finish its requests within {CLOSE_GRACE:?}");
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Who may change the job.
#[derive(Clone, Debug)]
enum Access {
    /// Anyone who reaches the server: it listens on loopback only.
    Open,
    /// Whoever sends this token.
    Token(String),
    /// Nobody: the server is reachable from elsewhere and has no token.
    Closed,
}

#[derive(Clone)]
struct App {
    job: Arc<LiveJob>,
    rates: Rates,
    access: Access,
    /// Per vertex, its latest flame graph or the sampling that makes it.
    flames: Arc<Mutex<HashMap<usize, Flame>>>,
    /// The savepoint operations triggered through this server.
    savepoints: Arc<Savepoints>,
}

/// Finished savepoint operations kept for their status (in progress ones are all
/// kept): far more than anyone polls at once, and each is a trigger id and a sentence,
/// so they weigh nothing. Flink keeps them for a time (`rest.async.store-duration`); a
/// count bounds memory whatever the rate of triggers.
const FINISHED_SAVEPOINTS_KEPT: usize = 64;

/// One savepoint operation.
#[derive(Debug)]
struct Operation {
    /// Its trigger id.
    id: String,
    /// `None` while in progress, else the location or why it failed.
    outcome: Option<Result<String, String>>,
    /// Whether the job stops once it is complete.
    stop: bool,
    /// Whether its outcome was served once.
    read: bool,
}

impl Operation {
    /// Whether its asker may still need the server once the job ended: until its
    /// outcome was read, unless it is a savepoint that was not taken and would not have
    /// stopped the job, whose asker loses nothing when the server is gone.
    fn awaits_reader(&self) -> bool {
        match &self.outcome {
            None => true,
            Some(_) if self.read => false,
            Some(Ok(_)) => true,
            Some(Err(_)) => self.stop,
        }
    }
}

/// The savepoint operations, in trigger order: plain bookkeeping.
#[derive(Debug)]
struct Operations {
    entries: VecDeque<Operation>,
    /// Makes this server's trigger ids differ from another run's of the same job.
    run: String,
    /// Triggers so far, which makes each trigger id new.
    triggered: u64,
}

impl Operations {
    fn new(run: String) -> Self {
        Self {
            entries: VecDeque::new(),
            run,
            triggered: 0,
        }
    }

    /// A new operation, in progress, which stops the job if `stop`; its trigger id, 32
    /// hexadecimal digits as Flink's.
    fn trigger(&mut self, stop: bool) -> String {
        self.triggered += 1;
        let id = hex_id(&[&self.run, &self.triggered.to_string()]);
        self.entries.push_back(Operation {
            id: id.clone(),
            outcome: None,
            stop,
            read: false,
        });
        id
    }

    /// Operation `id` ended with `outcome`; the oldest finished ones beyond
    /// [`FINISHED_SAVEPOINTS_KEPT`] are forgotten.
    fn finish(&mut self, id: &str, outcome: Result<String, String>) {
        if let Some(operation) = self.entries.iter_mut().find(|o| o.id == id) {
            operation.outcome = Some(outcome);
        }
        let finished = self.entries.iter().filter(|o| o.outcome.is_some()).count();
        let mut excess = finished.saturating_sub(FINISHED_SAVEPOINTS_KEPT);
        self.entries.retain(|o| {
            let forget = excess > 0 && o.outcome.is_some();
            excess -= usize::from(forget);
            !forget
        });
    }

    /// Operation `id`'s outcome so far (`Some(None)` while in progress), which counts as
    /// read once it is finished; `None` for an unknown id.
    fn read(&mut self, id: &str) -> Option<Option<Result<String, String>>> {
        let operation = self.entries.iter_mut().find(|o| o.id == id)?;
        operation.read |= operation.outcome.is_some();
        Some(operation.outcome.clone())
    }

    /// How many operations' askers may still need the server.
    fn awaiting_readers(&self) -> usize {
        self.entries.iter().filter(|o| o.awaits_reader()).count()
    }
}

/// The operations, shared by the handlers, the tasks that wait for the coordinator's
/// answers, and [`RestServer::close`], which waits on `changed`.
#[derive(Debug)]
struct Savepoints {
    operations: Mutex<Operations>,
    changed: Condvar,
}

impl Savepoints {
    fn new(job: &str) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let run = format!("{job}/{}/{started}", std::process::id());
        Self {
            operations: Mutex::new(Operations::new(run)),
            changed: Condvar::new(),
        }
    }

    /// The operations. Each change to them is one whole assignment or removal, so a
    /// panic elsewhere while the lock was held cannot have left them half-changed, and a
    /// poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, Operations> {
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, id: &str, outcome: Result<String, String>) {
        self.lock().finish(id, outcome);
        self.changed.notify_all();
    }

    fn read(&self, id: &str) -> Option<Option<Result<String, String>>> {
        let outcome = self.lock().read(id);
        self.changed.notify_all();
        outcome
    }

    /// Waits until no operation's asker needs the server any more, for at most
    /// `within`; whether none does.
    fn wait_until_read(&self, within: Duration) -> bool {
        let operations = self.lock();
        let awaiting = operations.awaiting_readers();
        if awaiting > 0 {
            tracing::info!(
                "waiting up to {within:?} for the outcome of {awaiting} savepoint operation(s) to be read"
            );
        }
        let (operations, _) = self
            .changed
            .wait_timeout_while(operations, within, |o| o.awaiting_readers() > 0)
            .unwrap_or_else(PoisonError::into_inner);
        operations.awaiting_readers() == 0
    }
}

/// Flink's `rest.flamegraph.refresh-interval`: a flame graph is served this long before
/// a request samples anew.
const FLAME_GRAPH_REFRESH: Duration = Duration::from_secs(60);
/// One flame graph's sampling: as Flink's defaults, 100 samples 50 ms apart.
const FLAME_GRAPH_SAMPLING: Duration = Duration::from_secs(5);
/// Between two samples of one subtask (Flink's `rest.flamegraph.delay-between-samples`).
const FLAME_GRAPH_INTERVAL: Duration = Duration::from_millis(50);

/// What a vertex's flame graph is.
#[derive(Clone, Debug)]
enum Flame {
    /// Being sampled; `previous` is served meanwhile.
    Sampling { previous: Option<Value> },
    /// Sampled at `at`.
    Done { at: Instant, graph: Value },
    /// The sampling failed; said once, then tried again.
    Failed(String),
}

impl App {
    fn now(&self) -> Now<'_> {
        Now {
            job: &self.job,
            status: self.job.status(),
            stats: self.job.stats.snapshot(),
            metrics: self
                .job
                .metrics
                .current()
                .map(|m| m.to_vec())
                .unwrap_or_default(),
            rates: self.rates.current(),
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.access {
            Access::Open => Ok(()),
            Access::Closed => Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "this server listens beyond this machine and no token is set, so nothing may change the job through it: set [rest] token or {TOKEN_ENV}"
                ),
            )),
            Access::Token(token) => {
                let sent = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match sent {
                    Some(sent) if constant_time_eq(sent.as_bytes(), token.as_bytes()) => Ok(()),
                    Some(_) => Err(ApiError(
                        StatusCode::FORBIDDEN,
                        "the token does not match".into(),
                    )),
                    None => Err(ApiError(
                        StatusCode::UNAUTHORIZED,
                        "changing the job needs `Authorization: Bearer <token>`".into(),
                    )),
                }
            }
        }
    }

    /// Queues a savepoint as `trigger` says and answers its trigger id; a task records
    /// the coordinator's answer when it comes.
    fn trigger_savepoint(&self, trigger: SavepointTrigger) -> Result<Response, ApiError> {
        let state = self.job.status().state;
        if state.is_terminal() {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "job {} has ended ({}): there is nothing left to take a savepoint of",
                    self.job.name,
                    format!("{state:?}").to_ascii_uppercase()
                ),
            ));
        }
        if self.job.checkpointing.is_none() {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "job {} runs without checkpointing, and savepoints are taken by the checkpoint coordinator: set [checkpointing] interval in the job file",
                    self.job.name
                ),
            ));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let id = self.savepoints.lock().trigger(trigger.stop);
        let request = SavepointRequest {
            directory: trigger.directory.clone(),
            format: trigger.format,
            stop: trigger.stop,
            reply,
        };
        tracing::info!(
            trigger = %id,
            directory = trigger.directory.as_deref().unwrap_or("the job's savepoint-dir"),
            format = ?trigger.format,
            stop = trigger.stop,
            "savepoint requested through the REST API"
        );
        if let Err(refused) = self.job.savepoints.send(request) {
            // Its reply goes with it: the task below records that the job ended first.
            drop(refused);
        }
        let savepoints = self.savepoints.clone();
        let task_id = id.clone();
        tokio::spawn(async move {
            let outcome = answer.await.unwrap_or_else(|_| Err(ENDED_FIRST.to_owned()));
            match &outcome {
                Ok(location) => {
                    tracing::info!(trigger = %task_id, "savepoint completed at {location}")
                }
                Err(why) => tracing::warn!(trigger = %task_id, "savepoint failed: {why}"),
            }
            savepoints.finish(&task_id, outcome);
        });
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(views::savepoint_triggered(&id)),
        )
            .into_response())
    }

    fn job_named(&self, id: &str) -> Result<(), ApiError> {
        if self.job.is(id) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "there is no job {id}: this server runs job {} ({})",
                self.job.id, self.job.name
            )))
        }
    }

    fn vertex(&self, job: &str, vertex: &str) -> Result<usize, ApiError> {
        self.job_named(job)?;
        self.job.vertex(vertex).map(|(v, _)| v).ok_or_else(|| {
            let known: Vec<String> = self
                .job
                .vertices
                .iter()
                .map(|v| format!("{} ({})", v.id, v.name))
                .collect();
            ApiError::not_found(format!(
                "job {} has no vertex {vertex}; its vertices are {}",
                self.job.name,
                known.join(", ")
            ))
        })
    }
}

/// Compares without stopping at the first difference, so that the time taken does not
/// tell how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A failed request, as Flink answers one: a status and `{"errors": [...]}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn not_found(message: String) -> Self {
        Self(StatusCode::NOT_FOUND, message)
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let status = match e {
            BodyError::NotJson(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        Self(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "errors": [self.1] }))).into_response()
    }
}

type Reply = Result<axum::Json<Value>, ApiError>;

/// Starts the server of `job` on the I/O runtime, as `config` says, with `env_token`
/// (the environment's) when the job file sets none.
pub fn start(
    config: &RestConfig,
    env_token: Option<String>,
    job: Arc<LiveJob>,
    io: &Handle,
) -> Result<RestServer, RestError> {
    let listener = bind(config)?;
    let address = listener
        .local_addr()
        .map_err(|e| bind_error(config, &e.to_string()))?;
    let token = config.token.clone().or(env_token).filter(|t| !t.is_empty());
    let access = match (config.is_loopback(), token) {
        (true, _) => Access::Open,
        (false, Some(token)) => Access::Token(token),
        (false, None) => {
            tracing::warn!(
                "the REST server listens on {address}, beyond this machine, without a token: it only reads. Set [rest] token or {TOKEN_ENV} to allow cancelling through it"
            );
            Access::Closed
        }
    };
    let rates = Rates::new(job.metrics.clone());
    let savepoints = Arc::new(Savepoints::new(&job.id));
    let app = App {
        job: job.clone(),
        rates,
        access,
        flames: Arc::default(),
        savepoints: savepoints.clone(),
    };
    let sampler = app.rates.clone();
    let router = router(app);
    let _guard = io.enter();
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| bind_error(config, &e.to_string()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = io.spawn(async move {
        let sampling = async move {
            let mut every = tokio::time::interval(rates::SAMPLE_EVERY);
            loop {
                every.tick().await;
                sampler.sample();
            }
        };
        let serving = axum::serve(listener, router).with_graceful_shutdown(async {
            // Sent or dropped: either way the server is done.
            let _ = stopped.await;
        });
        tokio::select! {
            () = sampling => {}
            served = serving => {
                if let Err(e) = served {
                    tracing::warn!("the REST server stopped: {e}");
                }
            }
        }
    });
    Ok(RestServer {
        address,
        task,
        io: io.clone(),
        job,
        savepoints,
        stop: Some(stop),
    })
}

fn bind_error(config: &RestConfig, reason: &str) -> RestError {
    let (first, last) = config.ports;
    RestError::Bind {
        address: config.address,
        ports: if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        },
        reason: reason.to_owned(),
    }
}

/// The first port of the range that is free.
fn bind(config: &RestConfig) -> Result<std::net::TcpListener, RestError> {
    let (first, last) = config.ports;
    let mut reason = String::new();
    for port in first..=last {
        match std::net::TcpListener::bind((config.address, port)) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| bind_error(config, &e.to_string()))?;
                return Ok(listener);
            }
            Err(e) => reason = e.to_string(),
        }
    }
    Err(bind_error(config, &reason))
}

fn router(app: App) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/overview", get(overview))
        .route("/jobs", get(jobs))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{jobid}", get(job).patch(cancel))
        .route("/jobs/{jobid}/metrics", get(job_metrics))
        .route("/jobs/{jobid}/checkpoints", get(checkpoints))
        .route("/jobs/{jobid}/checkpoints/config", get(checkpoint_config))
        .route(
            "/jobs/{jobid}/checkpoints/details/{checkpointid}",
            get(checkpoint_details),
        )
        .route(
            "/jobs/{jobid}/checkpoints/details/{checkpointid}/subtasks/{vertexid}",
            get(checkpoint_subtasks),
        )
        .route(
            "/jobs/{jobid}/checkpoints/details/{checkpointid}/diagnosis",
            get(checkpoint_diagnosis),
        )
        .route("/jobs/{jobid}/vertices/{vertexid}", get(vertex))
        .route(
            "/jobs/{jobid}/vertices/{vertexid}/backpressure",
            get(backpressure),
        )
        .route(
            "/jobs/{jobid}/vertices/{vertexid}/metrics",
            get(vertex_metrics),
        )
        .route(
            "/jobs/{jobid}/vertices/{vertexid}/flamegraph",
            get(flamegraph),
        )
        .route("/jobs/{jobid}/stacks", get(stacks))
        .route("/jobs/{jobid}/savepoints", post(trigger_savepoint))
        .route(
            "/jobs/{jobid}/savepoints/{triggerid}",
            get(savepoint_status),
        )
        .route("/jobs/{jobid}/stop", post(stop_with_savepoint))
        .route("/metrics", get(prometheus_metrics))
        .merge(web::web_routes())
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_rejections))
        .with_state(app)
}

/// Axum answers a path or query it cannot parse (`/checkpoints/details/-1`, a repeated
/// `get`) itself, in plain text; this gives those answers the API's shape,
/// `{"errors": [...]}`, as Flink gives its own.
async fn json_rejections(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    let status = response.status();
    if !(status.is_client_error() && plain) {
        return response;
    }
    // Axum's rejection texts are a line; the limit only bounds what a bug could send.
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_owned(),
    };
    ApiError(status, text).into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "there is no endpoint {}; /openapi.json lists them",
        uri.path()
    ))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn overview(State(app): State<App>) -> Reply {
    Ok(axum::Json(views::overview(&app.now())))
}

async fn jobs(State(app): State<App>) -> Reply {
    Ok(axum::Json(views::jobs(&app.now())))
}

async fn jobs_overview(State(app): State<App>) -> Reply {
    Ok(axum::Json(views::jobs_overview(&app.now())))
}

async fn job(State(app): State<App>, Path(jobid): Path<String>) -> Reply {
    app.job_named(&jobid)?;
    Ok(axum::Json(views::job(&app.now())))
}

#[derive(serde::Deserialize)]
struct CancelQuery {
    mode: Option<String>,
}

/// `PATCH /jobs/:jobid`: cancels the job (Flink's only mode, `cancel`).
async fn cancel(
    State(app): State<App>,
    Path(jobid): Path<String>,
    Query(query): Query<CancelQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.job_named(&jobid)?;
    app.authorize(&headers)?;
    match query.mode.as_deref() {
        None | Some("cancel") => {}
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("mode `{other}` is not supported: the only mode is `cancel`"),
            ));
        }
    }
    tracing::warn!("cancelled through the REST API");
    app.job.cancel.cancel();
    Ok((StatusCode::ACCEPTED, axum::Json(json!({}))).into_response())
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("a type that is not text"))
}

/// `POST /jobs/:jobid/savepoints`: triggers a savepoint, and with `cancel-job` stops the
/// job once it is complete. Answers a trigger id for `GET .../savepoints/:triggerid`.
async fn trigger_savepoint(
    State(app): State<App>,
    Path(jobid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.job_named(&jobid)?;
    app.authorize(&headers)?;
    let trigger = views::savepoint_trigger(content_type(&headers), &body)?;
    app.trigger_savepoint(trigger)
}

/// `POST /jobs/:jobid/stop`: stops the job with a savepoint. Answers a trigger id for
/// `GET .../savepoints/:triggerid`.
async fn stop_with_savepoint(
    State(app): State<App>,
    Path(jobid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.job_named(&jobid)?;
    app.authorize(&headers)?;
    let trigger = views::stop_trigger(content_type(&headers), &body)?;
    app.trigger_savepoint(trigger)
}

/// `GET /jobs/:jobid/savepoints/:triggerid`: how a savepoint triggered here went.
async fn savepoint_status(
    State(app): State<App>,
    Path((jobid, triggerid)): Path<(String, String)>,
) -> Reply {
    app.job_named(&jobid)?;
    let outcome = app.savepoints.read(&triggerid).ok_or_else(|| {
        ApiError::not_found(format!(
            "job {} has no savepoint operation {triggerid}: trigger ids are those POST .../savepoints and POST .../stop answered, and only the last {FINISHED_SAVEPOINTS_KEPT} finished ones are kept",
            app.job.name
        ))
    })?;
    Ok(axum::Json(views::savepoint_status(outcome.as_ref())))
}

#[derive(serde::Deserialize)]
struct MetricsQuery {
    get: Option<String>,
}

async fn job_metrics(
    State(app): State<App>,
    Path(jobid): Path<String>,
    Query(query): Query<MetricsQuery>,
) -> Reply {
    app.job_named(&jobid)?;
    let metrics: Vec<(String, f64)> = views::job_metrics(&app.now())
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
    Ok(axum::Json(views::metric_list(
        &metrics,
        query.get.as_deref(),
    )))
}

async fn vertex_metrics(
    State(app): State<App>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<MetricsQuery>,
) -> Reply {
    let v = app.vertex(&jobid, &vertexid)?;
    let now = app.now();
    let mut metrics = Vec::new();
    for s in 0..app.job.vertices[v].parallelism as usize {
        for (name, value) in views::subtask_metrics(&now, v, s) {
            metrics.push((format!("{s}.{name}"), value));
        }
    }
    Ok(axum::Json(views::metric_list(
        &metrics,
        query.get.as_deref(),
    )))
}

async fn checkpoints(State(app): State<App>, Path(jobid): Path<String>) -> Reply {
    app.job_named(&jobid)?;
    Ok(axum::Json(views::checkpoints(
        &app.job,
        &app.job.stats.snapshot(),
    )))
}

async fn checkpoint_config(State(app): State<App>, Path(jobid): Path<String>) -> Reply {
    app.job_named(&jobid)?;
    views::checkpoint_config(&app.job)
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "job {} does not checkpoint: it has no [checkpointing] interval",
                app.job.name
            ))
        })
}

fn find_checkpoint(
    app: &App,
    stats: &crate::checkpoint::stats::CheckpointStats,
    id: u64,
) -> Result<crate::checkpoint::stats::CheckpointRecord, ApiError> {
    stats.get(id).cloned().ok_or_else(|| {
        let held: Vec<String> = stats.history.iter().map(|c| c.id.to_string()).collect();
        ApiError::not_found(format!(
            "job {} has no statistics of checkpoint {id}; the history holds {}",
            app.job.name,
            if held.is_empty() {
                "none".to_owned()
            } else {
                held.join(", ")
            }
        ))
    })
}

async fn checkpoint_details(
    State(app): State<App>,
    Path((jobid, checkpointid)): Path<(String, u64)>,
) -> Reply {
    app.job_named(&jobid)?;
    let stats = app.job.stats.snapshot();
    let c = find_checkpoint(&app, &stats, checkpointid)?;
    Ok(axum::Json(views::checkpoint(&app.job, &c)))
}

async fn checkpoint_subtasks(
    State(app): State<App>,
    Path((jobid, checkpointid, vertexid)): Path<(String, u64, String)>,
) -> Reply {
    let v = app.vertex(&jobid, &vertexid)?;
    let stats = app.job.stats.snapshot();
    let c = find_checkpoint(&app, &stats, checkpointid)?;
    Ok(axum::Json(views::checkpoint_subtasks(
        &c,
        &app.job.vertices[v],
    )))
}

/// `GET .../checkpoints/details/:checkpointid/diagnosis`: what `weir checkpoints
/// diagnose` says of a retained checkpoint, from its `_metadata`, with its text.
async fn checkpoint_diagnosis(
    State(app): State<App>,
    Path((jobid, checkpointid)): Path<(String, u64)>,
) -> Reply {
    app.job_named(&jobid)?;
    let Some(storage) = app.job.storage.get() else {
        return Err(ApiError::not_found(format!(
            "job {} keeps no checkpoints to diagnose",
            app.job.name
        )));
    };
    let metadata = crate::observe::load_one(storage.as_ref(), CheckpointId(checkpointid))
        .await
        .map_err(|e| match e {
            LoadError::Storage(e) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            e => ApiError::not_found(e.to_string()),
        })?;
    let diagnosis = crate::observe::diagnose(&metadata);
    let mut body = serde_json::to_value(&diagnosis)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    body["text"] = Value::String(crate::observe::diagnosis_text(&diagnosis));
    Ok(axum::Json(body))
}

async fn vertex(State(app): State<App>, Path((jobid, vertexid)): Path<(String, String)>) -> Reply {
    let v = app.vertex(&jobid, &vertexid)?;
    Ok(axum::Json(views::vertex(&app.now(), v)))
}

async fn backpressure(
    State(app): State<App>,
    Path((jobid, vertexid)): Path<(String, String)>,
) -> Reply {
    let v = app.vertex(&jobid, &vertexid)?;
    Ok(axum::Json(views::backpressure(&app.now(), v)))
}

#[derive(serde::Deserialize)]
struct FlameQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `GET /jobs/:jobid/vertices/:vertexid/flamegraph`, as Flink's: the first request
/// starts sampling the vertex's guests and answers "waiting" (`endTimestamp` -3, as
/// Flink's), later ones the graph, which is sampled anew once it is older than
/// [`FLAME_GRAPH_REFRESH`]. Only time in guest code is sampled, so `type` is `full` or
/// `on_cpu`, which are the same here.
async fn flamegraph(
    State(app): State<App>,
    Path((jobid, vertexid)): Path<(String, String)>,
    Query(query): Query<FlameQuery>,
) -> Reply {
    let v = app.vertex(&jobid, &vertexid)?;
    match query.kind.as_deref() {
        None | Some("full" | "on_cpu") => {}
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "type `{other}` is not supported: Weir samples the guest's own stack while it runs, so the graph is on-CPU (`full` and `on_cpu` are the same)"
                ),
            ));
        }
    }
    let waiting = || json!({ "endTimestamp": -3, "data": null });
    let mut flames = app.flames.lock().map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the flame graphs' lock is poisoned".into(),
        )
    })?;
    let previous = match flames.remove(&v) {
        Some(Flame::Done { at, graph }) if at.elapsed() < FLAME_GRAPH_REFRESH => {
            flames.insert(
                v,
                Flame::Done {
                    at,
                    graph: graph.clone(),
                },
            );
            return Ok(axum::Json(graph));
        }
        Some(Flame::Sampling { previous }) => {
            let answer = previous.clone().unwrap_or_else(waiting);
            flames.insert(v, Flame::Sampling { previous });
            return Ok(axum::Json(answer));
        }
        Some(Flame::Failed(why)) => return Err(ApiError(StatusCode::CONFLICT, why)),
        Some(Flame::Done { graph, .. }) => Some(graph),
        None => None,
    };
    flames.insert(
        v,
        Flame::Sampling {
            previous: previous.clone(),
        },
    );
    drop(flames);
    let (node, profiler, store) = (
        app.job.vertices[v].name.clone(),
        app.job.profiler.clone(),
        app.flames.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let outcome = match profiler.sample(&node, FLAME_GRAPH_SAMPLING, FLAME_GRAPH_INTERVAL) {
            Ok(graph) => serde_json::to_value(&graph)
                .map(|graph| Flame::Done {
                    at: Instant::now(),
                    graph,
                })
                .unwrap_or_else(|e| Flame::Failed(e.to_string())),
            Err(e) => Flame::Failed(e.to_string()),
        };
        if let Ok(mut flames) = store.lock() {
            flames.insert(v, outcome);
        }
    });
    Ok(axum::Json(previous.unwrap_or_else(waiting)))
}

/// `GET /jobs/:jobid/stacks`: what every subtask does now, host and guest: the host's
/// view (busy, idle, back-pressured) and the guest's stack, innermost first. `text` is
/// what `weir stack` prints.
async fn stacks(State(app): State<App>, Path(jobid): Path<String>) -> Reply {
    app.job_named(&jobid)?;
    let profiler = app.job.profiler.clone();
    let guests = tokio::task::spawn_blocking(move || profiler.stacks())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let metrics = app.job.metrics.current();
    Ok(axum::Json(views::stacks(
        &app.job,
        metrics.as_deref(),
        &guests,
    )))
}

async fn prometheus_metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus::render(&app.now()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn a_triggered_operation_is_in_progress_until_it_finishes() {
        let mut operations = Operations::new("run".into());
        let id = operations.trigger(false);
        assert_eq!(id.len(), 32);
        assert_eq!(operations.read(&id), Some(None));
        assert_eq!(operations.awaiting_readers(), 1, "in progress is not read");
        operations.finish(&id, Ok("/sp/1".into()));
        assert_eq!(
            operations.awaiting_readers(),
            1,
            "finished but not read yet"
        );
        assert_eq!(operations.read(&id), Some(Some(Ok("/sp/1".into()))));
        assert_eq!(operations.awaiting_readers(), 0);
        assert_eq!(operations.read("0123"), None);
    }

    #[test]
    fn a_failed_savepoint_that_would_not_have_stopped_the_job_keeps_no_reader_waiting() {
        let mut operations = Operations::new("run".into());
        let savepoint = operations.trigger(false);
        let stop = operations.trigger(true);
        operations.finish(&savepoint, Err("the job ended".into()));
        operations.finish(&stop, Err("the job ended".into()));
        assert_eq!(operations.awaiting_readers(), 1, "only the stop's asker");
        assert!(operations.read(&stop).is_some());
        assert_eq!(operations.awaiting_readers(), 0);
    }

    #[test]
    fn trigger_ids_differ_between_triggers_and_between_runs() {
        let mut first = Operations::new("job/1/100".into());
        let mut second = Operations::new("job/1/200".into());
        let a = first.trigger(false);
        let b = first.trigger(false);
        assert_ne!(a, b);
        assert_ne!(a, second.trigger(false));
    }

    #[test]
    fn only_the_newest_finished_operations_are_kept_and_none_in_progress_is_forgotten() {
        let mut operations = Operations::new("run".into());
        let pending = operations.trigger(true);
        let ids: Vec<String> = (0..FINISHED_SAVEPOINTS_KEPT + 3)
            .map(|_| operations.trigger(false))
            .collect();
        for id in &ids {
            operations.finish(id, Err("no".into()));
        }
        assert_eq!(operations.read(&pending), Some(None));
        for forgotten in &ids[..3] {
            assert_eq!(operations.read(forgotten), None);
        }
        for kept in &ids[3..] {
            assert!(operations.read(kept).is_some());
        }
    }

    /// A job of a generator into a blackhole, and its server on a free loopback port.
    fn serve(io: &tokio::runtime::Runtime) -> (Arc<LiveJob>, RestServer) {
        let text = "[job]\nname = \"sp\"\n[checkpointing]\ninterval = \"1h\"\ndir = \"ckpt\"\n[rest]\nport = 0\n[[source]]\nid = \"gen\"\nkind = \"generator\"\n[[sink]]\nid = \"out\"\nkind = \"blackhole\"\ninputs = [\"gen\"]\n";
        let spec = crate::job::parse(text, std::path::Path::new("sp.toml"), &[]).expect("a job");
        let job = Arc::new(LiveJob::new(&spec, crate::runtime::CancelToken::default()));
        let server = start(&spec.rest, None, job.clone(), io.handle()).expect("a server");
        (job, server)
    }

    fn post(server: &RestServer, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = client::request_with_body(
            &server.address().to_string(),
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body,
        )
        .expect("an answer");
        (status, serde_json::from_str(&body).expect("JSON"))
    }

    fn get(server: &RestServer, path: &str) -> (u16, Value) {
        let (status, body) =
            client::request(&server.address().to_string(), "GET", path, &[]).expect("an answer");
        (status, serde_json::from_str(&body).expect("JSON"))
    }

    /// Waits until the server recorded an answer to every operation.
    fn until_answered(server: &RestServer) {
        let (operations, waited) = server
            .savepoints
            .changed
            .wait_timeout_while(server.savepoints.lock(), Duration::from_secs(10), |o| {
                o.entries.iter().any(|o| o.outcome.is_none())
            })
            .unwrap_or_else(PoisonError::into_inner);
        drop(operations);
        assert!(!waited.timed_out(), "no answer was recorded");
    }

    fn io() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn a_savepoint_is_queued_for_the_coordinator_and_its_location_served_once_answered() {
        let io = io();
        let (job, server) = serve(&io);
        let queue = job.savepoints.receiver();
        let (status, body) = post(
            &server,
            "/jobs/sp/savepoints",
            r#"{"target-directory": "/sp", "formatType": "NATIVE"}"#,
        );
        assert_eq!(status, 202, "{body}");
        let trigger = body["request-id"]
            .as_str()
            .expect("a request id")
            .to_owned();
        let request = queue.try_recv().expect("a queued request");
        assert_eq!(request.directory.as_deref(), Some("/sp"));
        assert_eq!(
            request.format,
            crate::observe::live::SavepointFormat::Native
        );
        assert!(!request.stop);
        let path = format!("/jobs/sp/savepoints/{trigger}");
        assert_eq!(get(&server, &path).1["status"]["id"], "IN_PROGRESS");
        assert!(request.reply.send(Ok("/sp/savepoint-1".into())).is_ok());
        until_answered(&server);
        let (status, body) = get(&server, &path);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["operation"]["location"], "/sp/savepoint-1");
        server.close(Duration::from_secs(10));
    }

    #[test]
    fn a_stop_is_a_savepoint_that_stops_and_a_dropped_reply_says_the_job_ended_first() {
        let io = io();
        let (job, server) = serve(&io);
        let queue = job.savepoints.receiver();
        let (status, body) = post(&server, "/jobs/sp/stop", "{}");
        assert_eq!(status, 202, "{body}");
        let trigger = body["request-id"]
            .as_str()
            .expect("a request id")
            .to_owned();
        let request = queue.try_recv().expect("a queued request");
        assert!(request.stop);
        assert_eq!(request.directory, None);
        drop(request);
        let path = format!("/jobs/sp/savepoints/{trigger}");
        until_answered(&server);
        let (_, body) = get(&server, &path);
        assert_eq!(body["status"]["id"], "COMPLETED");
        assert_eq!(
            body["operation"]["failure-cause"]["stack-trace"],
            ENDED_FIRST
        );
        server.close(Duration::from_secs(10));
    }

    #[test]
    fn malformed_triggers_drains_and_unknown_trigger_ids_are_refused_as_json_sentences() {
        let io = io();
        let (job, server) = serve(&io);
        for (path, body, expected) in [
            ("/jobs/sp/savepoints", "{", 400),
            ("/jobs/sp/savepoints", r#"{"cancel-job": 1}"#, 400),
            ("/jobs/sp/stop", r#"{"drain": true}"#, 400),
            ("/jobs/nope/stop", "{}", 404),
        ] {
            let (status, answer) = post(&server, path, body);
            assert_eq!(status, expected, "{path} {body}: {answer}");
            assert!(answer["errors"][0].is_string(), "{answer}");
        }
        assert!(
            job.savepoints.receiver().try_recv().is_err(),
            "nothing was queued"
        );
        let (status, answer) = get(
            &server,
            "/jobs/sp/savepoints/0123456789abcdef0123456789abcdef",
        );
        assert_eq!(status, 404);
        assert!(answer["errors"][0].is_string(), "{answer}");
        server.close(Duration::from_secs(10));
    }

    #[test]
    fn closing_answers_the_stops_nobody_took_and_waits_until_their_outcome_is_read() {
        let io = io();
        let (_job, server) = serve(&io);
        let (_, body) = post(&server, "/jobs/sp/stop", "");
        let trigger = body["request-id"]
            .as_str()
            .expect("a request id")
            .to_owned();
        let address = server.address().to_string();
        let path = format!("/jobs/sp/savepoints/{trigger}");
        let reader = std::thread::spawn(move || {
            loop {
                let (_, body) = client::request(&address, "GET", &path, &[]).expect("an answer");
                let body: Value = serde_json::from_str(&body).expect("JSON");
                if body["status"]["id"] == "COMPLETED" {
                    return body;
                }
                std::thread::yield_now();
            }
        });
        server.close(Duration::from_secs(30));
        let body = reader.join().expect("the reader");
        assert_eq!(body["operation"]["failure-cause"]["message"], ENDED_FIRST);
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for path in [
            "/overview",
            "/jobs",
            "/jobs/overview",
            "/jobs/{jobid}",
            "/jobs/{jobid}/metrics",
            "/jobs/{jobid}/checkpoints",
            "/jobs/{jobid}/checkpoints/config",
            "/jobs/{jobid}/checkpoints/details/{checkpointid}",
            "/jobs/{jobid}/checkpoints/details/{checkpointid}/subtasks/{vertexid}",
            "/jobs/{jobid}/checkpoints/details/{checkpointid}/diagnosis",
            "/jobs/{jobid}/vertices/{vertexid}",
            "/jobs/{jobid}/vertices/{vertexid}/backpressure",
            "/jobs/{jobid}/vertices/{vertexid}/metrics",
            "/jobs/{jobid}/vertices/{vertexid}/flamegraph",
            "/jobs/{jobid}/stacks",
            "/jobs/{jobid}/savepoints",
            "/jobs/{jobid}/savepoints/{triggerid}",
            "/jobs/{jobid}/stop",
            "/metrics",
            "/openapi.json",
            "/",
            "/web/{file}",
        ] {
            assert!(paths.contains_key(path), "openapi.json lacks {path}");
        }
    }
}
