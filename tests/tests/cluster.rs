//! Beyond one machine: `weir coordinator` and three `weir worker` processes on
//! 127.0.0.1 run the word count, exactly once, with workers killed at random moments.
//!
//! Every process is the real binary. The workers exchange batches over TCP; the
//! checkpoints go to a local directory, or to the S3-compatible server of the S3 tests.
//! `WEIR_CRASH_KILLS` sets the number of kills (default 20, at least 10 here);
//! `WEIR_CRASH_SEED` replays a run.

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use weir_tests::{
    Scratch, XorShift, counted_lines, crash_kills, crash_seed, word_count_operators, word_text,
};

/// The fewest kills that must land mid-run.
const MIN_KILLS: u32 = 10;

/// How long a run of the job may take at most, kills included.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The word count's input: three files.
const FILE_SOURCE: &str = r#"[[source]]
id = "lines"
kind = "file"
path = ["a.txt", "b.txt", "c.txt"]"#;

/// `source` → tokenize → count (key-by) → an exactly-once file sink paced at `rate`
/// records/s per subtask, at parallelism 3, checkpointing into `checkpoints`.
fn job(source: &str, checkpoints: &str, rate: u32) -> String {
    format!(
        r#"[job]
name = "cluster"
parallelism = 3

[checkpointing]
interval = "100ms"
num-retained = 2
{checkpoints}

[restart]
strategy = "fixed-delay"
attempts = 1000
delay = "100ms"

{source}

{operators}

[[sink]]
id = "out"
kind = "file"
path = "out"
inputs = ["count"]
rate = {rate}
"#,
        operators = word_count_operators(),
    )
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A coordinator and its workers, each logging to a file in the scratch directory.
struct Cluster {
    scratch: Scratch,
    env: Vec<(String, String)>,
    /// The coordinator's address.
    address: String,
    coordinator: Child,
    /// The coordinator's arguments, to start it again.
    coordinator_args: Vec<String>,
    /// Coordinator processes started so far, for their log files' names.
    coordinators: usize,
    workers: Vec<Child>,
    /// Worker processes started so far, for their log files' names.
    started: usize,
}

/// How the coordinator is started.
struct Options<'a> {
    /// The host it listens on.
    host: &'a str,
    workers: usize,
    heartbeat_timeout: &'a str,
}

const LOOPBACK: Options<'static> = Options {
    host: "127.0.0.1",
    workers: 3,
    heartbeat_timeout: "5s",
};

impl Cluster {
    /// Starts the coordinator; the workers are the caller's to start.
    fn coordinator(scratch: Scratch, env: Vec<(String, String)>, options: &Options<'_>) -> Self {
        let address = format!("{}:{}", options.host, free_port());
        let coordinator_args: Vec<String> = [
            "coordinator",
            "job.toml",
            "--workers",
            &options.workers.to_string(),
            "--listen",
            &address,
            "--heartbeat-interval",
            "200ms",
            "--heartbeat-timeout",
            options.heartbeat_timeout,
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        let args: Vec<&str> = coordinator_args.iter().map(String::as_str).collect();
        let coordinator = spawn(&scratch, &env, None, &args, "coordinator.log");
        Self {
            scratch,
            env,
            address,
            coordinator,
            coordinator_args,
            coordinators: 1,
            workers: Vec::new(),
            started: 0,
        }
    }

    /// Kills the coordinator with SIGKILL and starts it again, resuming the job from its
    /// latest checkpoint, as a Deployment would.
    fn restart_coordinator(&mut self) {
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
        self.coordinators += 1;
        let mut args: Vec<&str> = self.coordinator_args.iter().map(String::as_str).collect();
        args.extend(["--from-checkpoint", "latest"]);
        let log = format!("coordinator-{}.log", self.coordinators);
        self.coordinator = spawn(&self.scratch, &self.env, None, &args, &log);
    }

    /// The coordinators' logs, oldest first, as one.
    fn coordinator_log(&self) -> String {
        let mut log = self.log("coordinator.log");
        for i in 2..=self.coordinators {
            log.push_str(&self.log(&format!("coordinator-{i}.log")));
        }
        log
    }

    /// Kills a random worker, or with `coordinator` set every third time the
    /// coordinator, `kills` times at random moments while the job runs; returns how
    /// many kills landed, at least [`MIN_KILLS`] or the test has nothing to show.
    fn kill_at_random(
        &mut self,
        rng: &mut XorShift,
        kills: u32,
        coordinator: bool,
        seed: u64,
    ) -> u32 {
        let mut landed = 0;
        for kill in 0..kills {
            // A random moment: this is the point of the test, not an ordering of events.
            std::thread::sleep(Duration::from_millis(300 + rng.below(900)));
            if self.coordinator.try_wait().ok().flatten().is_some() {
                break;
            }
            if coordinator && kill % 3 == 2 {
                self.restart_coordinator();
            } else {
                let victim = rng.below(self.workers.len() as u64) as usize;
                self.replace_worker(victim);
            }
            landed += 1;
        }
        println!("{landed} kills landed before the job finished");
        assert!(
            landed >= MIN_KILLS,
            "only {landed} kills landed mid-run (seed {seed}): the job finished too soon to test anything"
        );
        landed
    }

    /// A coordinator and three workers on 127.0.0.1.
    fn start(scratch: Scratch, env: Vec<(String, String)>) -> Self {
        let mut cluster = Self::coordinator(scratch, env, &LOOPBACK);
        for _ in 0..LOOPBACK.workers {
            let worker = cluster.spawn_worker(None);
            cluster.workers.push(worker);
        }
        cluster
    }

    /// Starts a worker, in network namespace `netns` when given.
    fn spawn_worker(&mut self, netns: Option<&str>) -> Child {
        self.started += 1;
        let bind = if netns.is_some() {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        };
        spawn(
            &self.scratch,
            &self.env,
            netns,
            &[
                "worker",
                "--coordinator",
                &self.address,
                "--data-bind",
                bind,
            ],
            &format!("worker-{}.log", self.started),
        )
    }

    /// Kills worker `w` with SIGKILL and starts a replacement, as Kubernetes would.
    fn replace_worker(&mut self, w: usize) {
        let _ = self.workers[w].kill();
        let _ = self.workers[w].wait();
        self.workers[w] = self.spawn_worker(None);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.scratch.path().join(name)).unwrap_or_default()
    }

    /// Every log, for a failure's message.
    fn logs(&self) -> String {
        let mut names = vec!["coordinator.log".to_owned()];
        names.extend((2..=self.coordinators).map(|i| format!("coordinator-{i}.log")));
        names.extend((1..=self.started).map(|i| format!("worker-{i}.log")));
        names
            .iter()
            .map(|n| {
                let log = self.log(n);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {n} (last lines)\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the coordinator to end the job.
    fn wait(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + RUN_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.coordinator.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain([&mut self.coordinator]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `weir` with `args` in the scratch directory, in network namespace `netns`
/// when given, its log going to the file `log` there.
fn spawn(
    scratch: &Scratch,
    env: &[(String, String)],
    netns: Option<&str>,
    args: &[&str],
    log: &str,
) -> Child {
    let log = std::fs::File::create(scratch.path().join(log)).expect("a log file");
    let mut command = scratch.weir(args);
    if let Some(netns) = netns {
        let weir = weir_tests::weir_bin();
        let mut inside = Command::new("ip");
        inside.args(["netns", "exec", netns]).arg(weir).args(args);
        for (k, v) in command.get_envs() {
            if let Some(v) = v {
                inside.env(k, v);
            }
        }
        inside.current_dir(scratch.path());
        command = inside;
    }
    command
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("weir starts")
}

/// Writes the input and the job; returns the failure-free output.
fn prepare(
    scratch: &Scratch,
    seed: u64,
    lines: usize,
    checkpoints: &str,
    rate: u32,
) -> Vec<String> {
    let mut rng = XorShift(seed);
    let texts: Vec<String> = (0..3).map(|_| word_text(&mut rng, lines)).collect();
    for (name, text) in ["a.txt", "b.txt", "c.txt"].iter().zip(&texts) {
        scratch.write(name, text);
    }
    scratch.write("job.toml", job(FILE_SOURCE, checkpoints, rate));
    counted_lines(&texts)
}

fn assert_output(cluster: &mut Cluster, expected: &[String], seed: u64) {
    let status = cluster.wait();
    assert!(
        status.is_some_and(|s| s.success()),
        "the coordinator did not finish the job (seed {seed}), {status:?}:\n{}",
        cluster.logs()
    );
    let lines = cluster.scratch.committed_lines("out");
    if lines != expected {
        let missing = expected
            .iter()
            .filter(|l| lines.binary_search(l).is_err())
            .count();
        let extra = lines.len() + missing - expected.len();
        panic!(
            "committed output differs from the failure-free output (seed {seed}): {missing} lines missing, {extra} extra\n{}",
            cluster.logs()
        );
    }
}

#[test]
fn a_coordinator_and_three_workers_count_words_exactly_once() {
    let seed = crash_seed();
    let scratch = Scratch::new();
    let expected = prepare(&scratch, seed, 20_000, "dir = \"checkpoints\"", 1_000_000);
    let mut cluster = Cluster::start(scratch, Vec::new());
    assert_output(&mut cluster, &expected, seed);
    let coordinator = cluster.log("coordinator.log");
    assert!(
        coordinator.contains("runs on workers"),
        "the coordinator never started an attempt:\n{coordinator}"
    );
    for w in 1..=3 {
        let log = cluster.log(&format!("worker-{w}.log"));
        assert!(
            log.contains("running attempt") && log.contains(" of 3"),
            "worker {w} ran no share of the job:\n{log}"
        );
    }
    // Retention removes a finished job's checkpoints; the log keeps them.
    assert!(
        coordinator.contains("checkpoint completed"),
        "the run completed no checkpoint:\n{}",
        cluster.logs()
    );
}

#[test]
fn output_is_exactly_once_when_workers_are_killed_at_random_moments_with_checkpoints_on_s3() {
    let seed = crash_seed();
    let mut rng = XorShift(seed ^ 0x9e37_79b9_7f4a_7c15);
    let server = weir_tests::s3::S3Server::start();
    let scratch = Scratch::new();
    let checkpoints = format!(
        "dir = \"s3://{}/checkpoints\"\n[checkpointing.s3]\nlease-timeout = \"2s\"\n",
        server.bucket()
    );
    let expected = prepare(&scratch, seed, 30_000, &checkpoints, 40_000);
    let env: Vec<(String, String)> = server
        .env_with_endpoint(&server.endpoint())
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut cluster = Cluster::start(scratch, env);
    let landed = cluster.kill_at_random(&mut rng, crash_kills().max(MIN_KILLS), false, seed);
    assert_output(&mut cluster, &expected, seed);
    let lost = cluster.coordinator_log().matches("is lost").count();
    assert!(
        lost >= MIN_KILLS as usize,
        "the coordinator noticed {lost} lost workers of {landed} killed (seed {seed}):\n{}",
        cluster.logs()
    );
}

#[test]
fn unaligned_checkpoints_across_workers_keep_the_output_exactly_once_when_any_process_is_killed() {
    // The sinks are paced below what the tokenizers emit, so the channels into the
    // counters, half of them over TCP, are full and checkpoints persist them. Kills
    // hit the workers and the coordinator, which resumes from its latest checkpoint.
    let seed = crash_seed();
    let mut rng = XorShift(seed ^ 0x5851_f42d_4c95_7f2d);
    let scratch = Scratch::new();
    let checkpoints = "dir = \"checkpoints\"\nunaligned = true";
    let expected = prepare(&scratch, seed, 30_000, checkpoints, 25_000);
    let mut cluster = Cluster::start(scratch, Vec::new());
    cluster.kill_at_random(&mut rng, (crash_kills() / 2).max(MIN_KILLS), true, seed);
    assert_output(&mut cluster, &expected, seed);
    let log = cluster.coordinator_log();
    assert!(
        log.contains("unaligned=true"),
        "no checkpoint was unaligned (seed {seed}):\n{}",
        cluster.logs()
    );
    let recovered = (2..=cluster.coordinators).any(|i| {
        cluster
            .log(&format!("coordinator-{i}.log"))
            .contains("restoring from checkpoint")
    });
    assert!(
        recovered,
        "no restarted coordinator recovered the job from its checkpoint (seed {seed}):\n{}",
        cluster.logs()
    );
}

#[test]
fn kafka_to_a_file_sink_on_three_workers_is_exactly_once_when_workers_are_killed() {
    let seed = crash_seed();
    let mut rng = XorShift(seed);
    let broker = weir_tests::kafka::KafkaBroker::start();
    broker.create_topic("lines", 3);
    let text = word_text(&mut rng, 60_000);
    broker.produce_lines("lines", &text.lines().collect::<Vec<_>>(), 3);
    let scratch = Scratch::new();
    let source = format!(
        r#"[[source]]
id = "lines"
kind = "kafka"
bootstrap-servers = "{}"
topic = "lines"
group-id = "weir-cluster"
bounded = true"#,
        broker.bootstrap()
    );
    scratch.write("job.toml", job(&source, "dir = \"checkpoints\"", 25_000));
    let expected = counted_lines(&[text]);
    let mut cluster = Cluster::start(scratch, Vec::new());
    cluster.kill_at_random(&mut rng, MIN_KILLS, false, seed);
    assert_output(&mut cluster, &expected, seed);
}

#[test]
fn a_worker_that_cannot_reach_its_coordinator_fails_with_a_clear_error() {
    let port = free_port();
    let coordinator = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let output = Command::new(weir_tests::weir_bin())
        .args([
            "worker",
            "--coordinator",
            &coordinator,
            "--data-bind",
            "127.0.0.1:0",
            "--connect-timeout",
            "1s",
        ])
        .output()
        .expect("weir starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot reach the coordinator at {coordinator} within 1s"
        )),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the worker tried for {:?}",
        started.elapsed()
    );
}

/// Network namespaces joined by veth pairs to a bridge in this one, as machines on a
/// switch: `10.231.0.1` here, `10.231.0.1<i>` in namespace `i`.
struct Network {
    namespaces: Vec<String>,
    bridge: String,
    /// The bridge-side end of each namespace's veth pair.
    links: Vec<String>,
}

/// Runs `ip` with `args`, panicking with what it said when it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        output.status.success(),
        "ip {} failed: {}. This test needs root (CAP_NET_ADMIN) and iproute2, as scripts/setup.sh installs",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

impl Network {
    const HOST: &'static str = "10.231.0.1";

    fn new(namespaces: usize) -> Self {
        Self::remove_leftovers();
        let tag = std::process::id() % 10_000;
        let bridge = format!("wbr{tag}");
        let mut network = Self {
            namespaces: Vec::new(),
            bridge: bridge.clone(),
            links: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", Self::HOST), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 1..=namespaces {
            let netns = format!("weir{tag}-{i}");
            let (outside, inside) = (format!("wh{tag}-{i}"), format!("wn{tag}-{i}"));
            ip(&["netns", "add", &netns]);
            network.namespaces.push(netns.clone());
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            network.links.push(outside.clone());
            ip(&["link", "set", &inside, "netns", &netns]);
            ip(&["link", "set", &outside, "master", &bridge, "up"]);
            let address = format!("10.231.0.1{i}/24");
            ip(&["-n", &netns, "addr", "add", &address, "dev", &inside]);
            ip(&["-n", &netns, "link", "set", &inside, "up"]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
        }
        network
    }
}

impl Network {
    /// Removes what an earlier run that was killed left behind: its bridge would take
    /// this run's subnet.
    fn remove_leftovers() {
        let listed = |args: &[&str]| {
            let output = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2) runs");
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        for netns in listed(&["netns", "list"]).lines() {
            let name = netns.split_whitespace().next().unwrap_or_default();
            if name.starts_with("weir") && name.contains('-') {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
        for link in listed(&["-br", "link"]).lines() {
            let name = link.split(['@', ' ']).next().unwrap_or_default();
            if name.starts_with("wbr") || (name.starts_with("wh") && name.contains('-')) {
                let _ = Command::new("ip").args(["link", "del", name]).output();
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for netns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", netns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[test]
fn a_worker_cut_off_by_its_link_going_down_is_replaced_and_the_output_stays_exactly_once() {
    let seed = crash_seed();
    let network = Network::new(4);
    let scratch = Scratch::new();
    // Paced so that the job takes about 24 s, well past the cut and its detection.
    let expected = prepare(&scratch, seed, 30_000, "dir = \"checkpoints\"", 10_000);
    let options = Options {
        host: Network::HOST,
        workers: 3,
        heartbeat_timeout: "2s",
    };
    let mut cluster = Cluster::coordinator(scratch, Vec::new(), &options);
    for netns in &network.namespaces[..3] {
        let worker = cluster.spawn_worker(Some(netns));
        cluster.workers.push(worker);
    }
    // Mid-run, once a checkpoint is complete: worker 2's cable is pulled.
    let started = weir_tests::eventually(Duration::from_secs(60), || {
        cluster
            .log("coordinator.log")
            .contains("checkpoint completed")
    });
    assert!(started, "no checkpoint completed:\n{}", cluster.logs());
    assert!(
        cluster.coordinator.try_wait().ok().flatten().is_none(),
        "the job ended before the cut:\n{}",
        cluster.logs()
    );
    ip(&["link", "set", &network.links[1], "down"]);
    let noticed = weir_tests::eventually(Duration::from_secs(30), || {
        cluster.log("coordinator.log").contains("no heartbeat")
    });
    assert!(
        noticed,
        "the coordinator did not notice the cut-off worker:\n{}",
        cluster.logs()
    );
    // A replacement in the fourth namespace takes its place.
    let replacement = cluster.spawn_worker(Some(&network.namespaces[3]));
    cluster.workers.push(replacement);
    assert_output(&mut cluster, &expected, seed);
    let restarted = cluster
        .log("coordinator.log")
        .matches("runs on workers")
        .count();
    assert!(
        restarted >= 2,
        "the job did not restart on the replacement:\n{}",
        cluster.logs()
    );
}
