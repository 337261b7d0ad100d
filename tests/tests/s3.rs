//! Checkpoints on S3 end to end: the real `weir` binary against a real S3-compatible
//! server (s3s-fs) on 127.0.0.1, with a fault-injecting proxy in front of it. Server
//! errors and stalls are retried, a checkpoint whose upload still fails is aborted while
//! the job goes on, a server that dies and comes back costs checkpoints but never data,
//! and a wrong endpoint or bucket fails the job at start with a message that says where.
//!
//! The crash test with S3 storage is in `crash.rs`.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use weir_tests::s3::{BUCKET, Fault, FaultProxy, Logged, Outcome, S3Server};
use weir_tests::{RunningJob, Scratch, describe, guest, toml_path};

/// Records the job's generator produces.
const RECORDS: u64 = 24_000;

/// A keyed counter over a paced generator into an exactly-once file sink, checkpointing
/// to S3 every 200 ms. Failed checkpoints are tolerated, so that storage faults abort
/// checkpoints without failing the job.
fn job() -> String {
    format!(
        r#"[job]
name = "s3-job"

[checkpointing]
interval = "200ms"
dir = "s3://{BUCKET}/checkpoints"
tolerable-failed = 1000
num-retained = 2
retention = "retain-on-cancellation"

[checkpointing.s3]
# A killed run leaves its lease behind, and a resume waits until it is stale.
lease-timeout = "1s"

[state]
backend = "rocksdb"
dir = "state"

[[source]]
id = "gen"
kind = "generator"
count = {RECORDS}
keys = 50
rate = 6000

[[operator]]
id = "count"
wasm = "{counter}"
inputs = ["gen"]
partition = "key-by"

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["count"]
"#,
        counter = toml_path(&guest("word_count_counter")),
    )
}

/// Checks the committed output of the counter is exactly-once: for every key, the
/// counts 1..n each exactly once, and the counts add up to every record.
fn assert_exactly_once(scratch: &Scratch) {
    let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in scratch.committed_lines("out") {
        let (key, count) = line.split_once('\t').expect("a `key<TAB>count` line");
        counts
            .entry(key.to_owned())
            .or_default()
            .push(count.parse().expect("a count"));
    }
    let mut total = 0;
    for (key, mut seen) in counts {
        seen.sort_unstable();
        let n = seen.len() as u64;
        assert!(
            seen.iter().copied().eq(1..=n),
            "key {key}: counts are not 1..={n} exactly once: {:?}",
            &seen[..seen.len().min(20)]
        );
        total += n;
    }
    assert_eq!(total, RECORDS, "records lost or duplicated");
}

fn start(scratch: &Scratch, endpoint: &str, server: &S3Server, args: &[&str]) -> Child {
    scratch
        .weir(args)
        .envs(server.env_with_endpoint(endpoint))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts")
}

fn finish(child: Child) -> (bool, String) {
    let output = child.wait_with_output().expect("weir is waited for");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A child's stderr, read as it is written, so that a test can wait for a log line.
struct Tail {
    text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Tail {
    /// Takes `child`'s piped stderr and reads it on a thread until it closes.
    fn of(child: &mut Child) -> Self {
        use std::io::BufRead;
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let into = text.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut text = into
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self { text }
    }

    /// What was read so far.
    fn text(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How long a test waits for something the job does at once.
const WAIT: Duration = Duration::from_secs(30);

/// Requests the proxy answered with a fault.
fn faulted(log: &[Logged]) -> usize {
    log.iter()
        .filter(|l| matches!(l.outcome, Outcome::Faulted(_)))
        .count()
}

/// The newest checkpoint of the job committed in the server's store.
fn newest_committed(server: &S3Server) -> Option<u64> {
    std::fs::read_dir(server.object_path("checkpoints/s3-job"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("_metadata").exists())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
        .max()
}

/// Polls `done` until it holds; false after [`WAIT`].
fn eventually(done: impl Fn() -> bool) -> bool {
    weir_tests::eventually(WAIT, done)
}

/// Kills `child` (a run of `job`), resumes the job from its latest checkpoint and waits
/// for the resumed run, which must succeed; its stderr.
fn resume_after_kill(mut child: Child, scratch: &Scratch, server: &S3Server, job: &str) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let resumed = start(
        scratch,
        &server.endpoint(),
        server,
        &["run", job, "--from-checkpoint", "latest"],
    );
    let (ok, stderr) = finish(resumed);
    assert!(ok, "the resumed job failed:\n{stderr}");
    stderr
}

/// How many checkpoints completed, from the log.
fn completed(stderr: &str) -> usize {
    stderr.matches("checkpoint completed").count()
}

#[test]
fn server_errors_and_stalls_are_retried_then_abort_a_checkpoint_and_the_job_goes_on() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.addr());
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job());
    let child = start(
        &scratch,
        &proxy.endpoint(),
        &server,
        &["run", job.to_str().unwrap_or_default()],
    );
    // Once the first checkpoint is committed, fault in turn: a few 500s (retried away),
    // then a run of throttling that outlasts the retries, then stalls. Each phase ends
    // when the proxy has answered that many requests with it.
    assert!(
        proxy.wait_until(WAIT, |log| log.iter().any(|l| {
            l.request_line.starts_with("PUT ") && l.request_line.contains("/_metadata")
        })),
        "no checkpoint was committed"
    );
    for (n, fault) in [
        (2, Fault::InternalError),
        (12, Fault::SlowDown),
        (3, Fault::Stall),
    ] {
        let before = faulted(&proxy.log());
        proxy.fail_next(n, fault);
        assert!(
            proxy.wait_until(WAIT, |log| faulted(log) >= before + n),
            "the job stopped sending requests before {n} {fault:?} faults"
        );
    }
    proxy.pass_through();
    let (ok, stderr) = finish(child);
    assert!(ok, "the job failed:\n{stderr}");
    let counts = proxy.counts();
    println!("{counts:?}");
    assert!(counts.failed > 0, "no faults were injected");
    assert!(
        stderr.contains("checkpoint aborted") || stderr.contains("checkpoint declined"),
        "no checkpoint was aborted by the faults:\n{stderr}"
    );
    assert!(
        completed(&stderr) >= 2,
        "checkpoints did not recover:\n{stderr}"
    );
    assert_exactly_once(&scratch);
    assert!(
        server.pending_uploads().is_empty(),
        "multipart uploads were left behind: {:?}",
        server.pending_uploads()
    );
}

#[test]
fn a_server_killed_mid_run_costs_checkpoints_not_data_and_restore_works() {
    let mut server = S3Server::start();
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job());
    let job = job.to_str().unwrap_or_default().to_owned();
    let endpoint = server.endpoint();
    let mut child = start(&scratch, &endpoint, &server, &["run", &job]);
    let log = Tail::of(&mut child);
    assert!(
        eventually(|| newest_committed(&server).is_some()),
        "no checkpoint completed"
    );
    server.kill();
    // The outage lasts until a checkpoint triggered in it has failed; the job keeps
    // processing meanwhile.
    let failed_in_outage = || {
        let text = log.text();
        text.contains("checkpoint aborted") || text.contains("checkpoint declined")
    };
    assert!(
        eventually(failed_in_outage),
        "no checkpoint failed while the server was down:\n{}",
        log.text()
    );
    server.restart();
    // A checkpoint completes again after the outage; then weir is killed and resumed.
    let before = newest_committed(&server);
    assert!(
        eventually(|| newest_committed(&server) > before),
        "no checkpoint completed after the server came back"
    );
    assert!(
        child.try_wait().ok().flatten().is_none(),
        "the job ended while the server was down"
    );
    let stderr = resume_after_kill(child, &scratch, &server, &job);
    assert!(
        stderr.contains("restoring from checkpoint"),
        "it did not restore:\n{stderr}"
    );
    assert_exactly_once(&scratch);
}

#[test]
fn a_missing_bucket_fails_at_start_naming_the_bucket_and_endpoint() {
    let server = S3Server::start();
    let scratch = Scratch::new();
    let job = scratch.write(
        "job.toml",
        job().replace(&format!("s3://{BUCKET}/"), "s3://no-such-bucket/"),
    );
    let started = Instant::now();
    let output = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .envs(server.env_with_endpoint(&server.endpoint()))
        .output()
        .expect("weir runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Exit code 2, as for every job that cannot start as configured.
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        stderr.contains("no-such-bucket") && stderr.contains(&server.endpoint()),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn an_unreachable_endpoint_fails_at_start_naming_it() {
    let server = S3Server::start();
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job());
    // A port nothing listens on.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        format!("http://{}", listener.local_addr().expect("an address"))
    };
    let output = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .envs(server.env_with_endpoint(&dead))
        .output()
        .expect("weir runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr.contains(&dead), "{stderr}");
}

#[test]
fn checkpoints_on_s3_are_listed_and_shown_by_the_cli() {
    let server = S3Server::start();
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job().replace("rate = 6000", "rate = 20000"));
    let output = scratch
        .weir(&["run", job.to_str().unwrap_or_default()])
        .envs(server.env_with_endpoint(&server.endpoint()))
        .output()
        .expect("weir runs");
    assert!(output.status.success(), "{}", describe(&output));
    let location = format!("s3://{BUCKET}/checkpoints/s3-job");
    let list = scratch
        .weir(&["checkpoints", "list", &location])
        .envs(server.env_with_endpoint(&server.endpoint()))
        .output()
        .expect("weir runs");
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{}", describe(&list));
    let newest: u64 = table
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoint listed:\n{table}"));
    let show = scratch
        .weir(&["checkpoints", "show", &location, &newest.to_string()])
        .envs(server.env_with_endpoint(&server.endpoint()))
        .output()
        .expect("weir runs");
    assert!(show.status.success(), "{}", describe(&show));
    assert!(String::from_utf8_lossy(&show.stdout).contains("count"));
}

#[test]
fn a_second_run_of_a_running_job_is_refused_and_a_killed_runs_lease_is_taken_over() {
    let server = S3Server::start();
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", job());
    let job = job.to_str().unwrap_or_default().to_owned();
    let endpoint = server.endpoint();
    let mut first = start(&scratch, &endpoint, &server, &["run", &job]);
    assert!(
        eventually(|| newest_committed(&server).is_some()),
        "no checkpoint completed"
    );
    // The first renews its lease while the second watches it: the second is refused.
    let second = start(
        &scratch,
        &endpoint,
        &server,
        &["run", &job, "--from-checkpoint", "latest"],
    );
    let output = second.wait_with_output().expect("weir is waited for");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("is locked by weir pid {}", first.id())),
        "{stderr}"
    );
    assert!(stderr.contains("its lease was renewed"), "{stderr}");
    assert!(
        first.try_wait().ok().flatten().is_none(),
        "the refused run stopped the first"
    );
    // Killed, the first leaves its lease behind; the resume takes it over once stale.
    let stderr = resume_after_kill(first, &scratch, &server, &job);
    assert!(
        stderr.contains("taking over the stale lease of weir pid"),
        "{stderr}"
    );
    assert_exactly_once(&scratch);
    assert!(
        !server.object_path("checkpoints/s3-job/_lock").exists(),
        "the finished job did not release its lease"
    );
}

#[test]
fn a_stop_with_a_savepoint_on_s3_resumes_from_it_at_another_parallelism_exactly_once() {
    let server = S3Server::start();
    let scratch = Scratch::new();
    let job = scratch.write("job.toml", format!("{}\n[rest]\nport = 0\n", job()));
    let job = job.to_str().unwrap_or_default().to_owned();
    let mut command = scratch.weir(&["run", &job]);
    command.envs(server.env_with_endpoint(&server.endpoint()));
    let running = RunningJob::spawn(command);
    assert!(
        eventually(
            || scratch.path().join("out").is_dir() && scratch.committed_lines("out").len() > 2_000
        ),
        "nothing was committed:\n{}",
        running.log()
    );
    let directory = format!("s3://{BUCKET}/savepoints");
    let stopped = scratch.run(&["stop", "--savepoint", &directory, &running.url("")]);
    assert!(
        stopped.status.success(),
        "{}\n--- the job's log ---\n{}",
        describe(&stopped),
        running.log()
    );
    let location = String::from_utf8_lossy(&stopped.stdout).trim().to_owned();
    assert!(
        location.starts_with(&format!("{directory}/savepoint-s3-job-")),
        "the stop printed {location:?}, not a savepoint in {directory}"
    );
    let (status, log) = running.finish(WAIT);
    assert!(
        status.success(),
        "a stop with a savepoint exits 0: {status}\n{log}"
    );
    let committed = scratch.committed_lines("out").len() as u64;
    assert!(
        committed < RECORDS,
        "the job had ended before the stop:\n{log}"
    );
    let key = location.trim_start_matches(&format!("s3://{BUCKET}/"));
    assert!(
        server.object_path(&format!("{key}/_metadata")).is_file(),
        "no _metadata in the bucket at {key}"
    );

    let resumed = start(
        &scratch,
        &server.endpoint(),
        &server,
        &["run", &job, "-s", &location, "-D", "job.parallelism=3"],
    );
    let (ok, stderr) = finish(resumed);
    assert!(ok, "the resume from {location} failed:\n{stderr}");
    assert!(
        stderr.contains("rescaling `count` from parallelism 1 to 3"),
        "the resume did not rescale:\n{stderr}"
    );
    assert_exactly_once(&scratch);
}
