//! A Kafka-compatible broker on loopback, and an independent client for it, for
//! end-to-end tests of the Kafka source and sink: the test writes a topic with a client
//! that shares no code with `weir` (confluent-kafka, i.e. librdkafka driven from Python)
//! and reads back what `weir` wrote with it.
//!
//! # Layout
//!
//! - [`KafkaBroker`]: runs `tansu` (found by [`tansu_bin`]) on 127.0.0.1 on a free port;
//!   can be killed and restarted on the same port. Its log (topics, records, group
//!   offsets) lives in an [`S3Server`] over a temporary directory, so a restart keeps
//!   it, as a real broker's disk would; tansu 0.6.0 has no storage engine on local files.
//! - [`KafkaRecord`]: one record as the client writes and reads it.
//! - `tests/kafka/client.py`: the client, one subcommand per helper of [`KafkaBroker`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::s3::S3Server;
use crate::{describe, eventually, repo};

/// The version of tansu the tests are written against.
pub const TANSU_VERSION: &str = "0.6.0";

/// How long the broker may take to answer its first metadata request. It takes well
/// under a second; a loaded test machine may be slow, and a broker that never starts
/// must fail the test, not hang it.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many free ports to try on the first start: another process may take the port
/// between the probe that found it free and the broker binding it.
const PORT_ATTEMPTS: usize = 3;

/// The cluster id the broker runs with; a restart must use the same one to find its
/// data again (tansu keeps a cluster's objects under `clusters/<id>/`).
const CLUSTER_ID: &str = "weir-tests";

/// One record of a topic, as `tests/kafka/client.py` writes and reads it.
///
/// Writing, `partition` and `timestamp` are optional (the client's partitioner and the
/// clock choose) and `offset` is ignored; reading, all three are the broker's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord {
    /// The key, UTF-8; none for a record without one.
    pub key: Option<String>,
    /// The value, UTF-8.
    pub value: String,
    /// The partition it is (to be) in.
    pub partition: Option<i32>,
    /// Its offset in the partition; only read.
    pub offset: Option<i64>,
    /// Its timestamp, milliseconds since the epoch (the producer's create time).
    pub timestamp: Option<i64>,
}

/// The `tansu` binary: `$WEIR_TANSU`, or `tansu` on `PATH`.
///
/// # Panics
/// When neither exists, with the command that installs it: a test that needs the broker
/// fails rather than skips.
pub fn tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_TANSU") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "WEIR_TANSU is {}, which is not a file: point it at the tansu binary, or unset \
             it and install tansu with scripts/setup.sh",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "tansu, the Kafka-compatible broker the Kafka tests run against, is not \
             installed: run scripts/setup.sh (it runs cargo install tansu --version \
             {TANSU_VERSION} --locked --features dynostore), or set WEIR_TANSU to its path"
        )
    })
}

/// A `tansu` broker on 127.0.0.1, a single node whose storage is an S3 server of its
/// own. Killed when dropped (its S3 server with it).
pub struct KafkaBroker {
    bin: PathBuf,
    storage: S3Server,
    /// The broker's working directory, empty: tansu reads a `.env` file from there (and
    /// its parents), which must not be the repository's.
    work: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// What the broker printed, for failure messages.
    log: Arc<Mutex<String>>,
}

impl KafkaBroker {
    /// Starts a broker on a free port.
    ///
    /// # Panics
    /// When `tansu` or `s3s-fs` is missing (see [`tansu_bin`]) or the broker does not
    /// start.
    pub fn start() -> Self {
        let mut broker = KafkaBroker {
            bin: tansu_bin(),
            storage: S3Server::start(),
            work: tempfile::tempdir().expect("a working directory for the broker"),
            port: 0,
            child: None,
            log: Arc::default(),
        };
        for attempt in 1..=PORT_ATTEMPTS {
            broker.port = free_port();
            match broker.spawn() {
                Ok(()) => return broker,
                Err(why) if attempt == PORT_ATTEMPTS => panic!("{why}"),
                Err(_) => {}
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The bootstrap servers a client is given, `127.0.0.1:<port>`; the broker
    /// advertises the same address in its metadata.
    pub fn bootstrap(&self) -> String {
        self.addr().to_string()
    }

    /// The address the broker listens on (also while it is killed: a restart reuses it).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What the broker printed so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .map(|log| log.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Kills the broker at once (SIGKILL), as a crash would: requests in flight break
    /// off. What it acknowledged is in its storage, which stays up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is as good as killed.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same data, after a
    /// [`kill`](Self::kill) (or kills it first).
    ///
    /// # Panics
    /// When the broker does not start, e.g. because the port was taken meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn() {
            panic!("{why}");
        }
    }

    /// Creates `topic` with `partitions` partitions.
    ///
    /// # Panics
    /// When the broker refuses, e.g. because the topic exists.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let partitions = partitions.to_string();
        self.client(
            &[
                "create-topic",
                "--topic",
                topic,
                "--partitions",
                &partitions,
            ],
            None,
        );
    }

    /// Writes `records` to `topic` and waits until the broker acknowledged every one.
    ///
    /// # Panics
    /// When a record is not delivered.
    pub fn produce(&self, topic: &str, records: &[KafkaRecord]) {
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record).expect("a record serializes");
            lines.push(b'\n');
        }
        self.client(&["produce", "--topic", topic], Some(&lines));
    }

    /// Writes `lines` as records without keys, spread over the topic's first
    /// `partitions` partitions in turn.
    ///
    /// # Panics
    /// When a record is not delivered.
    pub fn produce_lines<S: AsRef<str>>(&self, topic: &str, lines: &[S], partitions: i32) {
        let records: Vec<KafkaRecord> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| KafkaRecord {
                value: line.as_ref().to_owned(),
                partition: Some(i32::try_from(i).unwrap_or(0) % partitions),
                ..KafkaRecord::default()
            })
            .collect();
        self.produce(topic, &records);
    }

    /// Every record in `topic` when the call starts, partition by partition in offset
    /// order. Commits nothing.
    ///
    /// # Panics
    /// When the topic cannot be read.
    pub fn consume(&self, topic: &str) -> Vec<KafkaRecord> {
        let output = self.client(&["consume", "--topic", topic], None);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("client.py printed `{line}`, not a record: {e}"))
            })
            .collect()
    }

    /// The offsets consumer group `group` committed for the partitions of `topic`: the
    /// next offset to read, by partition; a partition without a commit is absent.
    ///
    /// # Panics
    /// When the offsets cannot be read.
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let output = self.client(&["committed", "--group", group, "--topic", topic], None);
        let text = String::from_utf8_lossy(&output.stdout);
        let by_name: BTreeMap<String, i64> = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("client.py printed `{text}`, not offsets: {e}"));
        by_name
            .into_iter()
            .map(|(partition, offset)| {
                let partition = partition
                    .parse()
                    .unwrap_or_else(|e| panic!("`{partition}` is not a partition: {e}"));
                (partition, offset)
            })
            .collect()
    }

    /// Runs `client.py <args> --bootstrap <this broker>` with `stdin`.
    ///
    /// # Panics
    /// When it fails, with its output and the broker's log.
    fn client(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let output = run_client(&self.bootstrap(), args, stdin);
        assert!(
            output.status.success(),
            "client.py {} failed\n{}\n--- tansu ---\n{}",
            args.join(" "),
            describe(&output),
            self.log()
        );
        output
    }

    /// Runs the binary on `self.port` and waits until it answers a metadata request.
    /// On failure the broker is killed and the error says why.
    fn spawn(&mut self) -> Result<(), String> {
        let bin = self.bin.clone();
        let url = format!("tcp://{}", self.addr());
        let storage = format!("s3://{}/", self.storage.bucket());
        let mut command = Command::new(&bin);
        // The object store client takes every `AWS_*` variable it finds (a profile, a
        // session token): the broker gets only the test server's.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .current_dir(self.work.path())
            .args(["broker", "--cluster-id", CLUSTER_ID])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .envs(self.storage.env())
            .env("AWS_ENDPOINT_URL", self.storage.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", bin.display()));
        if let Ok(mut log) = self.log.lock() {
            log.push_str(&format!("--- started on {url} ---\n"));
        }
        drain(child.stdout.take(), &self.log);
        drain(child.stderr.take(), &self.log);
        let addr = self.addr();
        let child = RefCell::new(child);
        let exited = || child.borrow_mut().try_wait().ok().flatten();
        let listening = eventually(START_TIMEOUT, || {
            exited().is_some() || TcpStream::connect(addr).is_ok()
        });
        let mut child = child.into_inner();
        let why = if let Ok(Some(status)) = child.try_wait() {
            Some(format!("exited ({status})"))
        } else if !listening {
            Some(format!("did not listen within {START_TIMEOUT:?}"))
        } else {
            let answer = run_client(&self.bootstrap(), &["metadata"], None);
            (!answer.status.success())
                .then(|| format!("answered no metadata request\n{}", describe(&answer)))
        };
        match why {
            None => {
                self.child = Some(child);
                Ok(())
            }
            Some(why) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "{} on {addr} {why}; is the port taken?\n--- tansu ---\n{}",
                    bin.display(),
                    self.log()
                ))
            }
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago: the broker must be told its port, since it
/// advertises it to clients, so it cannot be given port 0.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port on 127.0.0.1")
}

/// Appends what `stream` says to `log` on a thread of its own, so the broker never
/// blocks on a full pipe.
fn drain(stream: Option<impl Read + Send + 'static>, log: &Arc<Mutex<String>>) {
    let Some(stream) = stream else { return };
    let log = Arc::clone(log);
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// Runs `tests/kafka/client.py <args> --bootstrap <bootstrap>`, feeding it `stdin`.
fn run_client(bootstrap: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/kafka/client.py"))
        .args(args)
        .args(["--bootstrap", bootstrap])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A client that exits early closes the pipe; its exit status says why.
        let _ = pipe.write_all(input);
    }
    child.wait_with_output().expect("client.py's output")
}
