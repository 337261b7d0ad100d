//! The REST server of a running job: Flink's REST API (paths, field names, the
//! `{"errors": [...]}` shape of failures), Prometheus text at `/metrics`, the OpenAPI
//! document at `/openapi.json`.
//!
//! It listens on `[rest] address` (loopback by default) and the first free port of
//! `[rest] port`. Reading is open to whoever reaches the address. The endpoints that
//! change the job (today `PATCH /jobs/:id`, which cancels it) are open on loopback; on
//! any other address they need `Authorization: Bearer <token>` with the token of
//! `[rest] token` or `WEIR_REST_TOKEN`, and without a token they are refused.
//!
//! # Layout
//! - `mod.rs`: binding, routing, authorisation, errors.
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
use crate::observe::live::LiveJob;
use crate::runtime::CheckpointId;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rates::Rates;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use views::Now;

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
}

impl RestServer {
    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
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
    let app = App {
        job,
        rates,
        access,
        flames: Arc::default(),
    };
    let sampler = app.rates.clone();
    let router = router(app);
    let _guard = io.enter();
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| bind_error(config, &e.to_string()))?;
    let task = io.spawn(async move {
        let sampling = async move {
            let mut every = tokio::time::interval(rates::SAMPLE_EVERY);
            loop {
                every.tick().await;
                sampler.sample();
            }
        };
        let serving = axum::serve(listener, router);
        tokio::select! {
            () = sampling => {}
            served = serving => {
                if let Err(e) = served {
                    tracing::warn!("the REST server stopped: {e}");
                }
            }
        }
    });
    Ok(RestServer { address, task })
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
            "/metrics",
            "/openapi.json",
            "/",
            "/web/{file}",
        ] {
            assert!(paths.contains_key(path), "openapi.json lacks {path}");
        }
    }
}
