//! `weir`: the command line of the Weir host.

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use weir::connectors::ExistingOutput;
use weir::job::{self, Override};
use weir::launch::{FromCheckpoint, JobOutcome, LaunchError, RunRequest, build_graph, run_job};
use weir::observe::{JobState, LiveJob};
use weir::runtime::CancelToken;
use weir::wasm::{CompileCache, WasmRuntime};

/// Records are allocated on one subtask's thread and freed on another's; mimalloc
/// handles that pattern far better than the system allocator (it was a third of the
/// profile of a stateless pipeline).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of a job file or component that is invalid (as clap's usage errors).
const EXIT_INVALID: u8 = 2;
/// Exit code of a job that failed while running.
const EXIT_FAILED: u8 = 1;
/// Exit code after Ctrl-C, as a shell reports a process ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// Between two polls of a savepoint's status: a small savepoint's location is printed
/// within a fifth of a second of its completion, and five requests a second are nothing
/// for the server.
const SAVEPOINT_POLL: Duration = Duration::from_millis(200);
/// How long a job that ended keeps its REST server up until each savepoint's outcome was
/// read once: `weir savepoint` and `weir stop` poll every [`SAVEPOINT_POLL`], so they
/// read it within a fraction of this, as does a script polling every few seconds. It
/// delays the exit only when whoever asked for a savepoint stopped asking how it went.
const SAVEPOINT_OUTCOME_GRACE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Run stream-processing jobs whose operators are WebAssembly components.",
    long_about = "Run stream-processing jobs whose operators are WebAssembly components.\n\n\
        A job file (TOML) names sources, operators (.wasm components built against the \
        weir:operator WIT contract) and sinks. Logs go to stderr; set WEIR_LOG (e.g. \
        WEIR_LOG=debug) to change their detail."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job until its input ends (bounded sources) or Ctrl-C.
    Run {
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        start: StartArgs,
    },
    /// Coordinate a job on a cluster: wait for `--workers` workers to attach, run the
    /// job's subtasks on them, and checkpoint, restart and recover it as `weir run` does.
    ///
    /// Subtask i of every node runs on worker i mod n. Checkpoints must be in storage
    /// every worker reaches (s3:// or a shared directory): workers write their state
    /// there, the coordinator the metadata. When a worker is lost (its connection
    /// breaks, or no heartbeat for --heartbeat-timeout), the job restarts from its latest
    /// checkpoint as its restart strategy allows, once --workers workers are attached
    /// again. With --from-checkpoint latest, a restarted coordinator recovers the job.
    /// Every worker must see the job file and its .wasm files at the same paths.
    Coordinator {
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        start: StartArgs,
        /// How many workers the job runs on.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        workers: u32,
        /// Where workers attach (gRPC), as Flink's jobmanager.rpc.port.
        #[arg(long, value_name = "ADDRESS", default_value = "0.0.0.0:6123")]
        listen: std::net::SocketAddr,
        /// How often workers send a heartbeat (Flink's heartbeat.interval).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
        heartbeat_interval: Duration,
        /// How long without a heartbeat before a worker is lost (Flink's
        /// heartbeat.timeout).
        #[arg(long, value_name = "DURATION", default_value = "50s", value_parser = duration)]
        heartbeat_timeout: Duration,
    },
    /// Run the subtasks a coordinator assigns, until Ctrl-C.
    ///
    /// Attaches to the coordinator over gRPC, trying for --connect-timeout, and again
    /// whenever the connection breaks (its subtasks stop then: the coordinator restarts
    /// the job). Exits 1 when the coordinator cannot be reached in time.
    Worker {
        /// The coordinator, `host:port` (e.g. the Kubernetes Service name and port).
        #[arg(long, value_name = "HOST:PORT", env = "WEIR_COORDINATOR")]
        coordinator: String,
        /// Where to listen for the data of other workers, as Flink's
        /// taskmanager.data.port.
        #[arg(long, value_name = "ADDRESS", default_value = "0.0.0.0:6121")]
        data_bind: std::net::SocketAddr,
        /// The `host:port` other workers reach this one's data port at; by default
        /// this machine's address towards the coordinator and the bound port.
        #[arg(long, value_name = "HOST:PORT", env = "WEIR_DATA_ADDRESS")]
        data_address: Option<String>,
        /// How long to try to reach the coordinator before giving up.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
        connect_timeout: Duration,
    },
    /// Check a job file and its components without running it, and print the plan.
    Validate(JobArgs),
    /// Inspect a job's checkpoints and their statistics.
    #[command(subcommand)]
    Checkpoints(CheckpointsCommand),
    /// Print what every subtask of a running job does now: whether its thread is busy,
    /// idle or back-pressured, and its guest's own stack (WebAssembly function names,
    /// innermost first) when it is inside guest code — a thread dump of the job.
    Stack {
        /// The running job: its job file (its [rest] address and ports are searched for
        /// the server of the job with that name) or its REST address as logged at
        /// start, e.g. http://127.0.0.1:8081.
        #[arg(value_name = "JOB.toml|URL")]
        target: String,
    },
    /// Take a savepoint of a running job and print where it is; or delete one
    /// (`weir savepoint dispose <PATH>`).
    ///
    /// Asks the job through its REST API (`POST /jobs/:id/savepoints`, found as `weir
    /// stack` finds it), then polls until the savepoint is complete, showing a dot a
    /// second on stderr. Prints the savepoint's location on stdout and exits 0; when the
    /// savepoint fails, prints why and exits 1. The job keeps running.
    ///
    /// Changing the job through a server that listens beyond loopback needs its token:
    /// the job file's [rest] token, or WEIR_REST_TOKEN.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Savepoint(SavepointArgs),
    /// Stop a running job with a savepoint (Flink's stop-with-savepoint) and print where
    /// the savepoint is.
    ///
    /// Asks the job through its REST API (`POST /jobs/:id/stop`, found as `weir stack`
    /// finds it): the job takes a savepoint and stops once it is complete, without
    /// ending its input first (Weir does not drain). Polls until then, showing a dot a
    /// second on stderr; prints the location on stdout and exits 0. When the savepoint
    /// fails the job keeps running, and this prints why and exits 1.
    Stop {
        /// Where to write the savepoint: a directory or an s3:// URL (a relative path
        /// is taken from the current directory). Without it, or with --savepoint alone,
        /// the job's [checkpointing] savepoint-dir. `weir stop --savepoint JOB` takes
        /// the one value as the job.
        #[arg(long, value_name = "DIR", num_args = 0..=1)]
        savepoint: Option<Option<String>>,
        #[command(flatten)]
        format: SavepointTypeArg,
        /// The running job, as for `weir stack`: its job file or its REST address, e.g.
        /// http://127.0.0.1:8081.
        #[arg(value_name = "JOB.toml|URL")]
        target: Option<String>,
    },
}

/// How a run starts: from what, and what it tolerates.
#[derive(clap::Args)]
struct StartArgs {
    /// Resume from a checkpoint: `latest` (the newest complete checkpoint in the
    /// job's checkpoint dir; older ones are tried when it is corrupt) or a checkpoint
    /// directory `<dir>/<job>/chk-<n>`.
    ///
    /// A job that finished leaves a record of it, and `latest` then says so and
    /// exits 0 without running anything.
    #[arg(long, value_name = "latest|PATH", conflicts_with = "from_savepoint")]
    from_checkpoint: Option<FromCheckpoint>,
    /// Restore from a savepoint (`…/savepoint-<job>-<n>`, local or s3://) or a
    /// retained checkpoint (`<dir>/<job>/chk-<n>`), as Flink's `-s`.
    ///
    /// Any node may run with another parallelism than the snapshot's: keyed state
    /// moves by key group, operator state goes to every new subtask (union), sources
    /// take over the splits they now own. A canonical savepoint restores into either
    /// state backend. max-parallelism cannot change.
    #[arg(short = 's', long, value_name = "PATH")]
    from_savepoint: Option<String>,
    /// Restore although the snapshot holds state of operators the job no longer
    /// has (matched by id): that state is skipped. Without this flag such a restore
    /// is refused, naming the operator.
    #[arg(long)]
    allow_non_restored_state: bool,
    /// With --from-checkpoint latest: when the job's checkpoint storage holds
    /// checkpoints but none can be restored (all corrupt or incompatible), start the
    /// job without state instead of failing. For when the state is the problem; the
    /// checkpoints stay where they are.
    #[arg(long)]
    start_without_state: bool,
    /// Run although a file sink's directory holds output committed after the point
    /// this run starts from (after the restored checkpoint, or any committed output
    /// on a fresh start). The records in it are written again: duplicates. Without
    /// this flag such a run is refused, naming the files.
    #[arg(long)]
    allow_duplicates: bool,
}

impl StartArgs {
    fn request(self) -> RunRequest {
        RunRequest {
            from: self
                .from_savepoint
                .as_deref()
                .map(FromCheckpoint::snapshot_at)
                .or(self.from_checkpoint),
            allow_duplicates: self.allow_duplicates,
            allow_non_restored_state: self.allow_non_restored_state,
            start_without_state: self.start_without_state,
            cluster: None,
        }
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    job::parse_duration(text)
}

#[derive(clap::Args)]
struct SavepointArgs {
    #[command(subcommand)]
    command: Option<SavepointCommand>,
    /// The running job, as for `weir stack`: its job file (its [rest] address and ports
    /// are searched for the server of the job with that name) or its REST address as
    /// logged at start, e.g. http://127.0.0.1:8081.
    #[arg(value_name = "JOB.toml|URL", required = true)]
    target: Option<String>,
    /// Where to write the savepoint: a directory or an s3:// URL (a relative path is
    /// taken from the current directory); by default the job's [checkpointing]
    /// savepoint-dir.
    #[arg(value_name = "DIR")]
    directory: Option<String>,
    #[command(flatten)]
    format: SavepointTypeArg,
}

#[derive(Subcommand)]
enum SavepointCommand {
    /// Delete a savepoint: the directory `weir savepoint` or `weir stop` printed.
    ///
    /// Refuses a directory that holds no `_metadata`, which is not a savepoint. Exits 0
    /// once it is deleted, 1 when it cannot be.
    Dispose {
        /// The savepoint's location, as printed when it was taken.
        path: String,
    },
}

#[derive(clap::Args)]
struct SavepointTypeArg {
    /// The savepoint's format: canonical, which any state backend restores, or native,
    /// the state backend's own files (faster to take and restore, restored only by the
    /// same backend).
    #[arg(long = "type", value_name = "TYPE", value_enum, default_value_t = SavepointType::Canonical)]
    kind: SavepointType,
}

/// `--type`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SavepointType {
    Canonical,
    Native,
}

impl From<SavepointType> for weir::checkpoint::driver::SavepointFormat {
    fn from(kind: SavepointType) -> Self {
        match kind {
            SavepointType::Canonical => Self::Canonical,
            SavepointType::Native => Self::Native,
        }
    }
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// List the checkpoints in a directory, newest first.
    List {
        /// The job's checkpoint directory (`<dir>/<job>`), or the `dir` of the job file
        /// when it holds one job. On S3: `s3://<bucket>/<prefix>/<job>`.
        dir: String,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Show one checkpoint's statistics per subtask; the slowest subtask of each stage
    /// is marked.
    Show {
        /// The job's checkpoint directory, as for `list`.
        dir: String,
        /// The checkpoint's id.
        id: u64,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Say why a checkpoint was slow: its slowest subtask and stage, and what that stage
    /// points to.
    ///
    /// Does what Flink's checkpoint troubleshooting guides tell a person to do: find the
    /// operator, subtask and stage that took longest, and read the stage as a cause.
    ///
    /// - start delay (trigger to barrier): backpressure upstream of that operator; the
    ///   barrier queued behind in-flight records. Shown with each node's start delay.
    ///
    /// - alignment (first barrier to last): one slow input of that operator, or skew
    ///   across the subtasks that feed it. Shown with the data processed meanwhile.
    ///
    /// - sync (the phase that blocks the subtask): the guest's `snapshot-state` or the
    ///   state backend's snapshot. Shown with the fuel the guest spent.
    ///
    /// - async (the upload): a large state or slow storage. Shown with the bytes written
    ///   and the bytes per second.
    ///
    /// Every stage of 100ms or more is listed, longest first; then every subtask with at
    /// least twice the median state of its operator's subtasks (and at least 1 MiB), which
    /// is key skew whatever the slowest stage is. A fast, even checkpoint says nothing
    /// stands out. Finished subtasks take no part.
    ///
    /// Exits 0 with a diagnosis, 1 when the checkpoint cannot be read (incomplete,
    /// corrupt, missing: the error says which and what the directory holds).
    Diagnose {
        /// The job's checkpoint directory, as for `list`.
        dir: String,
        /// The checkpoint's id; by default the latest completed checkpoint (newer
        /// incomplete or corrupt ones are named on stderr and skipped).
        id: Option<u64>,
        /// Print the diagnosis as JSON, for programs: camelCase field names, durations
        /// in milliseconds, sizes in bytes.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        s3: S3Args,
    },
}

/// How to reach an `s3://` directory; credentials come from the AWS chain
/// (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ...).
#[derive(clap::Args)]
struct S3Args {
    /// The endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000 (path-style
    /// addressing); the AWS chain's (`AWS_ENDPOINT_URL`) or AWS's own by default.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The region, instead of the AWS chain's.
    #[arg(long)]
    region: Option<String>,
}

#[derive(clap::Args)]
struct JobArgs {
    /// The job file.
    job: PathBuf,
    /// Override a job-file setting, as Flink's -D: `-D job.parallelism=4`,
    /// `-D checkpointing.interval=500ms`, `-D operator.count.parallelism=2`.
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    overrides: Vec<Override>,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { job, start } => run(&job, start.request(), None),
        Command::Coordinator {
            job,
            start,
            workers,
            listen,
            heartbeat_interval,
            heartbeat_timeout,
        } => {
            let cluster = ClusterArgs {
                listen,
                settings: weir::cluster::Settings {
                    workers: workers as usize,
                    heartbeat_interval,
                    heartbeat_timeout,
                },
            };
            run(&job, start.request(), Some(cluster))
        }
        Command::Worker {
            coordinator,
            data_bind,
            data_address,
            connect_timeout,
        } => worker(&weir::cluster::WorkerOptions {
            coordinator,
            data_bind,
            data_address,
            connect_timeout,
        }),
        Command::Validate(args) => validate(&args),
        Command::Stack { target } => outcome(stack(&target)),
        Command::Savepoint(SavepointArgs {
            command: Some(SavepointCommand::Dispose { path }),
            ..
        }) => outcome(dispose(&path)),
        Command::Savepoint(SavepointArgs {
            command: None,
            target,
            directory,
            format,
        }) => outcome(take_savepoint(
            target.as_deref().unwrap_or_default(),
            directory,
            format.kind,
            false,
        )),
        Command::Stop {
            savepoint,
            format,
            target,
        } => {
            // `--savepoint` takes an optional value, so `weir stop --savepoint JOB` reads
            // the job as the directory: one value alone is the job.
            let (target, directory) = match (target, savepoint.flatten()) {
                (Some(target), directory) => (target, directory),
                (None, Some(target)) => (target, None),
                (None, None) => {
                    let mut cli = Cli::command();
                    cli.build();
                    let mut stop = cli.find_subcommand("stop").cloned().unwrap_or(cli);
                    stop.error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "name the running job: its job file or its REST address",
                    )
                    .exit()
                }
            };
            outcome(take_savepoint(&target, directory, format.kind, true))
        }
        Command::Checkpoints(command) => outcome(checkpoints(command)),
    }
}

/// Exit 0, or report the error and exit 1.
fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// A running job's REST server, as a job file or a URL names it.
struct Server {
    /// `host:port`.
    address: String,
    /// The job's id or name.
    job: String,
    /// The token to change the job with, when one is known: the job file's `[rest]
    /// token`, else `WEIR_REST_TOKEN`.
    token: Option<String>,
}

/// Finds the server of the running job `target` names: a URL, or a job file whose
/// `[rest]` ports are searched for the job of that name.
fn find_server(target: &str) -> anyhow::Result<Server> {
    use weir::observe::rest::client::request;
    let env_token = std::env::var(weir::observe::rest::TOKEN_ENV).ok();
    if let Some(rest) = target.strip_prefix("http://") {
        let address = rest.trim_end_matches('/').to_owned();
        let (status, body) = request(&address, "GET", "/jobs", &[])
            .with_context(|| format!("no REST server answers at {target}"))?;
        let jobs: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{target} answered /jobs with {status}: {body}"))?;
        let id = jobs["jobs"][0]["id"]
            .as_str()
            .with_context(|| format!("{target} runs no job"))?
            .to_owned();
        Ok(Server {
            address,
            job: id,
            token: env_token,
        })
    } else {
        let spec = job::load(Path::new(target), &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (first, last) = spec.rest.ports;
        if first == 0 {
            anyhow::bail!(
                "job `{}` listens on any free port ([rest] port = 0): pass the address from its log instead of the job file, e.g. http://127.0.0.1:PORT",
                spec.name
            );
        }
        let host = if spec.rest.address.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            spec.rest.address.to_string()
        };
        let path = format!("/jobs/{}", spec.name);
        let found = (first..=last)
            .map(|port| format!("{host}:{port}"))
            .find(|address| matches!(request(address, "GET", &path, &[]), Ok((200, _))));
        let address = found.with_context(|| {
            format!(
                "no server on {host} ports {first}-{last} runs job `{}`: is it running?",
                spec.name
            )
        })?;
        Ok(Server {
            address,
            job: spec.name,
            token: spec.rest.token.or(env_token),
        })
    }
}

/// `weir stack`: finds the job's server and prints its stack dump.
fn stack(target: &str) -> anyhow::Result<()> {
    use weir::observe::rest::client::request;
    let Server { address, job, .. } = find_server(target)?;
    let (status, body) = request(&address, "GET", &format!("/jobs/{job}/stacks"), &[])
        .with_context(|| format!("the server at {address} stopped answering"))?;
    let dump: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("{address} answered the stack dump with {status}: {body}"))?;
    match dump["text"].as_str() {
        Some(text) => print!("{text}"),
        None => anyhow::bail!("{address} answered the stack dump with {status}: {body}"),
    }
    Ok(())
}

/// The sentence of an error answer (`{"errors": [...]}`), or the answer itself.
fn refusal(status: u16, body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("the server answered {status}: {body}"))
}

/// `weir savepoint <JOB> [DIR]` and, with `stop`, `weir stop`: triggers a savepoint
/// through the job's REST API, polls until it is complete and prints its location.
fn take_savepoint(
    target: &str,
    directory: Option<String>,
    kind: SavepointType,
    stop: bool,
) -> anyhow::Result<()> {
    use weir::observe::rest::client::{request, request_with_body};
    let server = find_server(target)?;
    let directory = directory.map(|d| target_directory(&d)).transpose()?;
    // Flink's `formatType`, as the REST API reads it.
    let format = weir::checkpoint::driver::SavepointFormat::from(kind);
    let (path, body) = if stop {
        (
            format!("/jobs/{}/stop", server.job),
            serde_json::json!({
                "targetDirectory": directory,
                "drain": false,
                "formatType": format,
            }),
        )
    } else {
        (
            format!("/jobs/{}/savepoints", server.job),
            serde_json::json!({
                "target-directory": directory,
                "cancel-job": false,
                "formatType": format,
            }),
        )
    };
    let authorization = server.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(authorization) = &authorization {
        headers.push(("Authorization", authorization));
    }
    let address = &server.address;
    let (status, answer) = request_with_body(address, "POST", &path, &headers, &body.to_string())
        .with_context(|| format!("the server at {address} stopped answering"))?;
    if status != 202 {
        let why = refusal(status, &answer);
        if status == 401 {
            anyhow::bail!(
                "{why}: set [rest] token in the job file or {}",
                weir::observe::rest::TOKEN_ENV
            );
        }
        anyhow::bail!("{why}");
    }
    let answer: serde_json::Value = serde_json::from_str(&answer)
        .with_context(|| format!("{address} answered the trigger with {answer}"))?;
    let trigger = answer["request-id"]
        .as_str()
        .with_context(|| format!("{address} answered the trigger without a request-id: {answer}"))?
        .to_owned();
    let into = directory.as_deref().unwrap_or("the job's savepoint-dir");
    eprint!(
        "savepoint {trigger} of job `{}` into {into} triggered{}; waiting",
        server.job,
        if stop {
            ", the job stops once it is complete"
        } else {
            ""
        }
    );
    let started = Instant::now();
    let mut dots = 0;
    let status_path = format!("/jobs/{}/savepoints/{trigger}", server.job);
    let outcome = loop {
        std::thread::sleep(SAVEPOINT_POLL);
        let elapsed = started.elapsed().as_secs();
        while dots < elapsed {
            eprint!(".");
            dots += 1;
        }
        let (status, body) = match request(address, "GET", &status_path, &[]) {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!();
                anyhow::bail!(
                    "job `{}` ended before the savepoint completed: its server at {address} stopped answering ({e})",
                    server.job
                );
            }
        };
        if status != 200 {
            eprintln!();
            anyhow::bail!("{}", refusal(status, &body));
        }
        let body: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{address} answered the savepoint's status with {body}"))?;
        if body["status"]["id"] == "COMPLETED" {
            break body;
        }
    };
    eprintln!(" {:.1}s", started.elapsed().as_secs_f64());
    let operation = &outcome["operation"];
    if let Some(location) = operation["location"].as_str() {
        println!("{location}");
        return Ok(());
    }
    let cause = &operation["failure-cause"];
    let why = cause["message"]
        .as_str()
        .or_else(|| cause["stack-trace"].as_str())
        .map_or_else(|| outcome.to_string(), str::to_owned);
    anyhow::bail!("the savepoint failed: {why}");
}

/// A savepoint directory the job can find: a URL as it is, a path made absolute here,
/// since the job may run from another directory.
fn target_directory(directory: &str) -> anyhow::Result<String> {
    if directory.contains("://") {
        return Ok(directory.to_owned());
    }
    let absolute = std::path::absolute(directory)
        .with_context(|| format!("{directory} cannot be made an absolute path"))?;
    absolute
        .to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", absolute.display()))
}

/// `weir savepoint dispose <PATH>`: deletes the savepoint at `location` (its directory
/// with `_metadata`, as `weir savepoint` printed it, local or s3://), refusing a
/// location that is not a savepoint. S3 is configured from the environment.
fn dispose(location: &str) -> anyhow::Result<()> {
    use weir::runtime::CheckpointId;
    let storage = weir::storage::savepoint_at(location, &job::S3Settings::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the I/O runtime could not start")?;
    runtime.block_on(async {
        storage.read_metadata(CheckpointId(0)).await.with_context(|| {
            format!("{location} is not a savepoint (it holds no readable _metadata), so it was not deleted")
        })?;
        storage
            .delete_checkpoint(CheckpointId(0))
            .await
            .with_context(|| format!("the savepoint at {location} could not be deleted"))
    })?;
    eprintln!("savepoint {location} deleted");
    Ok(())
}

/// Starts the control plane of `weir coordinator` for the job of `args`.
fn coordinate(
    args: &JobArgs,
    request: &RunRequest,
    cluster: ClusterArgs,
    io: &tokio::runtime::Handle,
) -> Result<std::sync::Arc<dyn weir::runtime::Cluster>, ExitCode> {
    let path = std::path::absolute(&args.job).unwrap_or_else(|_| args.job.clone());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", path.display());
        ExitCode::from(EXIT_INVALID)
    })?;
    let listener = io
        .block_on(tokio::net::TcpListener::bind(cluster.listen))
        .map_err(|e| {
            eprintln!(
                "error: cannot listen on {} for workers: {e}",
                cluster.listen
            );
            ExitCode::from(EXIT_FAILED)
        })?;
    let address = listener.local_addr().map_or(cluster.listen, |a| a);
    let coordinator = weir::cluster::Coordinator::new(
        weir::cluster::JobFile {
            path: path.display().to_string(),
            text,
            overrides: args.overrides.iter().map(ToString::to_string).collect(),
            allow_non_restored_state: request.allow_non_restored_state,
            allow_duplicates: request.allow_duplicates,
        },
        cluster.settings.clone(),
    );
    coordinator.serve(listener, io);
    tracing::info!(
        "coordinator listening for workers on {address}; the job runs on {} worker{}",
        cluster.settings.workers,
        if cluster.settings.workers == 1 {
            ""
        } else {
            "s"
        }
    );
    Ok(coordinator)
}

/// `weir worker`: runs the subtasks a coordinator assigns until Ctrl-C.
fn worker(options: &weir::cluster::WorkerOptions) -> ExitCode {
    let wasm = match WasmRuntime::new(CompileCache::default_location()) {
        Ok(wasm) => wasm,
        Err(e) => {
            report(&anyhow::Error::new(e).context("the WebAssembly engine could not start"));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let cancel = CancelToken::default();
    let io = match io_runtime(&cancel, "worker") {
        Ok(io) => io,
        Err(code) => return code,
    };
    match weir::cluster::run_worker(options, &wasm, io.handle(), &cancel) {
        Ok(()) => ExitCode::from(EXIT_INTERRUPTED),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Prints an error the way the user should read it: one sentence per cause.
fn report(error: &anyhow::Error) {
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

fn load_spec(args: &JobArgs) -> Result<(job::JobSpec, WasmRuntime), ExitCode> {
    let spec = job::load(&args.job, &args.overrides).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_INVALID)
    })?;
    let wasm = WasmRuntime::new(CompileCache::default_location())
        .context("the WebAssembly engine could not start")
        .map_err(|e| {
            report(&e);
            ExitCode::from(EXIT_FAILED)
        })?;
    Ok((spec, wasm))
}

fn load(args: &JobArgs) -> Result<(job::JobSpec, weir::runtime::Graph), ExitCode> {
    let (spec, wasm) = load_spec(args)?;
    let profiler = weir::wasm::Profiler::default();
    let graph = build_graph(&spec, &wasm, ExistingOutput::Refuse, &profiler).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_INVALID)
    })?;
    Ok((spec, graph))
}

fn checkpoints(command: CheckpointsCommand) -> anyhow::Result<()> {
    let (CheckpointsCommand::List { dir, s3 }
    | CheckpointsCommand::Show { dir, s3, .. }
    | CheckpointsCommand::Diagnose { dir, s3, .. }) = &command;
    // Reading only: `check()` would create directories, so it is not called.
    let storage = checkpoint_storage(dir, s3)?;
    let io = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        CheckpointsCommand::List { .. } => {
            let rows = io.block_on(weir::observe::load(storage.as_ref()))?;
            print!("{}", weir::observe::list_table(&rows));
        }
        CheckpointsCommand::Show { id, .. } => {
            let metadata = io.block_on(weir::observe::load_one(
                storage.as_ref(),
                weir::runtime::CheckpointId(id),
            ))?;
            print!("{}", weir::observe::show_table(&metadata));
        }
        CheckpointsCommand::Diagnose { id, json, .. } => {
            let metadata = match id {
                Some(id) => io.block_on(weir::observe::load_one(
                    storage.as_ref(),
                    weir::runtime::CheckpointId(id),
                ))?,
                None => {
                    let latest = io.block_on(weir::observe::load_latest(storage.as_ref()))?;
                    for skipped in &latest.newer {
                        eprintln!(
                            "note: skipping checkpoint {}, which is {}; diagnosing checkpoint \
                             {}, the latest completed one",
                            skipped.checkpoint,
                            not_completed(&skipped.status),
                            latest.metadata.checkpoint
                        );
                    }
                    latest.metadata
                }
            };
            let diagnosis = weir::observe::diagnose(&metadata);
            if json {
                println!("{}", serde_json::to_string_pretty(&diagnosis)?);
            } else {
                print!("{}", weir::observe::diagnosis_text(&diagnosis));
            }
        }
    }
    Ok(())
}

/// Why a listed checkpoint is not a completed one, for a note.
fn not_completed(status: &weir::observe::ListedStatus) -> String {
    match status {
        weir::observe::ListedStatus::Completed(_) => "completed".to_owned(),
        weir::observe::ListedStatus::Incomplete => "incomplete (no _metadata)".to_owned(),
        weir::observe::ListedStatus::Corrupt(reason) => format!("corrupt ({reason})"),
        weir::observe::ListedStatus::Failed(reason) => format!("failed ({reason})"),
    }
}

/// The storage of the job checkpoint directory `dir`: a local path, or
/// `s3://<bucket>/<prefix>/<job>`.
fn checkpoint_storage(
    dir: &str,
    s3: &S3Args,
) -> anyhow::Result<std::sync::Arc<dyn weir::storage::CheckpointStorage>> {
    if !dir.starts_with("s3://") {
        let (base, job) = weir::observe::open_dir(Path::new(dir)).map_err(anyhow::Error::msg)?;
        return Ok(std::sync::Arc::new(weir::storage::FsStorage::new(
            base, &job,
        )?));
    }
    let url = job::storage_url(dir, Path::new(".")).map_err(|e| anyhow::anyhow!("{dir}: {e}"))?;
    let job::StorageUrl::S3 { bucket, prefix } = url else {
        anyhow::bail!("{dir} is not an s3:// URL");
    };
    let (prefix, job) = prefix.rsplit_once('/').unwrap_or(("", prefix.as_str()));
    if job.is_empty() {
        anyhow::bail!("{dir} names no job: write s3://<bucket>/<prefix>/<job>");
    }
    let settings = job::S3Settings {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        force_path_style: s3.endpoint.is_some(),
        ..job::S3Settings::default()
    };
    Ok(weir::storage::open(
        &job::StorageUrl::S3 {
            bucket,
            prefix: prefix.to_owned(),
        },
        job,
        &settings,
    )?)
}

fn validate(args: &JobArgs) -> ExitCode {
    let (spec, graph) = match load(args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    println!(
        "job `{}` is valid: {} nodes, {} key groups",
        spec.name,
        graph.nodes.len(),
        graph.max_parallelism
    );
    for node in &graph.nodes {
        let inputs: Vec<String> = node
            .inputs
            .iter()
            .map(|e| format!("{} ({:?})", graph.nodes[e.from].id, e.partitioner))
            .collect();
        println!(
            "  {:<16} parallelism {:<3} inputs: {}",
            node.id,
            node.parallelism,
            if inputs.is_empty() {
                "-".to_owned()
            } else {
                inputs.join(", ")
            }
        );
    }
    ExitCode::SUCCESS
}

/// What `weir coordinator` adds to a run.
struct ClusterArgs {
    listen: std::net::SocketAddr,
    settings: weir::cluster::Settings,
}

impl ClusterArgs {
    /// Why these settings cannot coordinate `spec`, if they cannot.
    fn refusal(&self, spec: &job::JobSpec) -> Result<(), String> {
        let settings = &self.settings;
        if settings.heartbeat_timeout <= settings.heartbeat_interval {
            return Err(format!(
                "--heartbeat-timeout ({:?}) must be longer than --heartbeat-interval ({:?}), or every worker would be lost between two heartbeats",
                settings.heartbeat_timeout, settings.heartbeat_interval
            ));
        }
        if spec.network.local_workers > 1 {
            return Err(format!(
                "[network] local-workers = {} places workers in one process, which weir coordinator does not do: its workers are the `weir worker` processes (--workers). Remove local-workers from the job file",
                spec.network.local_workers
            ));
        }
        Ok(())
    }
}

/// The I/O runtime, with Ctrl-C cancelling `cancel` (a second one exits at once).
fn io_runtime(
    cancel: &CancelToken,
    what: &'static str,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weir-io")
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the I/O runtime: {e}");
            ExitCode::from(EXIT_FAILED)
        })?;
    let on_interrupt = cancel.clone();
    io.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: stopping the {what} (press Ctrl-C again to exit at once)");
            on_interrupt.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        }
    });
    Ok(io)
}

fn run(args: &JobArgs, mut request: RunRequest, cluster: Option<ClusterArgs>) -> ExitCode {
    let (spec, wasm) = match load_spec(args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let live = std::sync::Arc::new(LiveJob::new(&spec, CancelToken::default()));
    let cancel = live.cancel.clone();
    let io = match io_runtime(&cancel, "job") {
        Ok(io) => io,
        Err(code) => return code,
    };
    if let Some(cluster) = cluster {
        if let Err(refusal) = cluster.refusal(&spec) {
            eprintln!("error: {refusal}");
            return ExitCode::from(EXIT_INVALID);
        }
        match coordinate(args, &request, cluster, io.handle()) {
            Ok(coordinator) => request.cluster = Some(coordinator),
            Err(code) => return code,
        }
    }

    let token = std::env::var(weir::observe::rest::TOKEN_ENV).ok();
    let server = match weir::observe::rest::start(&spec.rest, token, live.clone(), io.handle()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    tracing::info!(
        job = %spec.name,
        nodes = spec.nodes.len(),
        "starting job; REST API and metrics at http://{}/",
        server.address()
    );
    let outcome = run_job(&spec, &wasm, io.handle(), &live, &request);
    live.set_state(match &outcome {
        Ok(JobOutcome::Finished(_) | JobOutcome::AlreadyFinished(_)) => JobState::Finished,
        Ok(JobOutcome::Cancelled) => JobState::Canceled,
        Ok(JobOutcome::Stopped(_)) => JobState::Finished,
        Err(_) => JobState::Failed,
    });
    server.close(SAVEPOINT_OUTCOME_GRACE);
    match outcome {
        Ok(JobOutcome::Finished(report)) => {
            tracing::info!(job = %spec.name, elapsed = ?report.elapsed, "job finished");
            // On a cluster the records are counted where they flow: on the workers.
            for metrics in report.nodes.iter().filter(|_| request.cluster.is_none()) {
                tracing::info!(node = %metrics.id, records_in = metrics.records_in(), records_out = metrics.records_out(), "node totals");
            }
            ExitCode::SUCCESS
        }
        Ok(JobOutcome::AlreadyFinished(record)) => {
            let last = record
                .final_checkpoint
                .map_or_else(String::new, |n| format!(", with checkpoint {n}"));
            tracing::info!(
                job = %spec.name,
                "job `{}` finished at {} UTC{last}: there is nothing to resume. Run it without --from-checkpoint to start it again from the beginning",
                spec.name,
                weir::observe::utc_time(record.finished_at_ms)
            );
            ExitCode::SUCCESS
        }
        Ok(JobOutcome::Cancelled) => {
            tracing::warn!(job = %spec.name, "job cancelled");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Ok(JobOutcome::Stopped(location)) => {
            tracing::info!(
                job = %spec.name,
                savepoint = %location,
                "job stopped with a savepoint at {location}; resume it with `weir run {} -s {location}`",
                args.job.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ (LaunchError::Wasm(_) | LaunchError::Storage(_) | LaunchError::Restore(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(e) => {
            eprintln!("error: job `{}` failed: {e}", spec.name);
            ExitCode::from(EXIT_FAILED)
        }
    }
}
