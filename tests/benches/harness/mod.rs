//! What the benchmarks share: a source → operators → blackhole pipeline on one subtask
//! per node, and the measurement of its throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use weir::checkpoint::snapshot::SnapshotType;
use weir::connectors::{BlackholeSink, FileSource, Generator, GeneratorSpec};
use weir::runtime::executor::{OperatorFactory, Partitioner};
use weir::runtime::{
    Batch, CancelToken, CheckpointId, Executor, Graph, GraphNode, NodeBody, NodeEdge, Operator,
    RestoredParts, RunOptions, Snapshot, Source, TaskError,
};

/// Records per batch on every edge.
pub const BATCH: usize = 1024;
/// Key groups of the benchmark jobs.
pub const MAX_PARALLELISM: u32 = 128;

/// Where the benchmark's records come from.
pub enum Input {
    /// The generator: `records` records over `keys` keys, values the sequence numbers.
    Generator {
        /// How many records.
        records: u64,
        /// How many distinct keys.
        keys: u64,
    },
    /// The lines of these files.
    #[allow(dead_code, reason = "the sandbox benchmark reads only the generator")]
    Files(Vec<std::path::PathBuf>),
}

/// A source → operators → blackhole pipeline on one subtask per node; each operator is
/// reached through its partitioner (forward edges chain, as in a job).
pub fn graph(input: &Input, operators: Vec<(OperatorFactory, Partitioner)>) -> Graph {
    let source = match input {
        Input::Generator { records, keys } => {
            let settings = GeneratorSpec {
                count: Some(*records),
                keys: *keys,
                seed: 1,
                rate: 0,
                value_size: 0,
            };
            NodeBody::Source(Arc::new(move |info| {
                Ok(Box::new(Generator::new(settings.clone(), info)) as Box<dyn Source>)
            }))
        }
        Input::Files(paths) => {
            let paths = paths.clone();
            NodeBody::Source(Arc::new(move |info| {
                Ok(Box::new(FileSource::new(&paths, info)) as Box<dyn Source>)
            }))
        }
    };
    let sink = NodeBody::Operator(Arc::new(|_| {
        Ok(Box::new(BlackholeSink::new(0)) as Box<dyn Operator>)
    }));
    let node = |id: String, body, inputs: Vec<NodeEdge>| GraphNode {
        id,
        parallelism: 1,
        inputs,
        body,
        batch_size: BATCH,
        chaining: true,
    };
    let mut nodes = vec![node("source".into(), source, vec![])];
    for (i, (operator, partitioner)) in operators.into_iter().enumerate() {
        nodes.push(node(
            format!("op{i}"),
            NodeBody::Operator(operator),
            vec![NodeEdge {
                from: i,
                partitioner,
            }],
        ));
    }
    let last = nodes.len() - 1;
    nodes.push(node(
        "sink".into(),
        sink,
        vec![NodeEdge {
            from: last,
            partitioner: Partitioner::Forward,
        }],
    ));
    Graph {
        nodes,
        max_parallelism: MAX_PARALLELISM,
        network: weir::runtime::executor::Network::default(),
    }
}

/// Throughput of one run: of the whole pipeline (three threads sharing the cores), and
/// of the operator alone (records over the time spent inside its `process` calls: what
/// one core running only the operator would do).
pub struct Figures {
    /// Records per second through the whole pipeline.
    pub pipeline: f64,
    /// Records per second of the operator's own time.
    pub operator: f64,
}

/// Wraps an operator to add up the time spent in `process`.
struct Timed {
    inner: Box<dyn Operator>,
    nanos: Arc<AtomicU64>,
}

impl Operator for Timed {
    fn open(&mut self, restored: Option<RestoredParts>) -> Result<(), TaskError> {
        self.inner.open(restored)
    }
    fn process(&mut self, batch: &Batch, out: &mut Batch) -> Result<(), TaskError> {
        let started = Instant::now();
        let result = self.inner.process(batch, out);
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(spent, Ordering::Relaxed);
        result
    }
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        self.inner.snapshot(checkpoint, kind)
    }
    fn close(&mut self, out: &mut Batch) -> Result<(), TaskError> {
        self.inner.close(out)
    }
}

/// Runs the generator → `operator` → blackhole graph and measures it.
pub fn measure(
    records: u64,
    keys: u64,
    operator: OperatorFactory,
    partitioner: Partitioner,
) -> Figures {
    measure_stages(
        &Input::Generator { records, keys },
        vec![(operator, partitioner)],
    )
}

/// Runs the `input` → `operators` → blackhole graph and measures it: records are those
/// the first operator received, and the operators' time is that of all of them.
pub fn measure_stages(input: &Input, operators: Vec<(OperatorFactory, Partitioner)>) -> Figures {
    let nanos = Arc::new(AtomicU64::new(0));
    let timed = operators
        .into_iter()
        .map(|(operator, partitioner)| {
            let counted = nanos.clone();
            let timed: OperatorFactory = Arc::new(move |info| {
                Ok(Box::new(Timed {
                    inner: operator(info)?,
                    nanos: counted.clone(),
                }) as Box<dyn Operator>)
            });
            (timed, partitioner)
        })
        .collect();
    let graph = graph(input, timed);
    let report = Executor::new(CancelToken::default())
        .run(&graph, RunOptions::default())
        .expect("the benchmark job runs");
    let records = report.nodes[1].records_in();
    if let Input::Generator { records: count, .. } = input {
        assert_eq!(records, *count, "every record reached the operator");
    }
    Figures {
        pipeline: records as f64 / report.elapsed.as_secs_f64(),
        operator: records as f64 / (nanos.load(Ordering::Relaxed) as f64 / 1e9),
    }
}
