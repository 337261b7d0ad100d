//! What the benchmarks share: a generator → operator → blackhole pipeline on one
//! subtask per node, and the measurement of its throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use weir::connectors::{BlackholeSink, Generator, GeneratorSettings};
use weir::runtime::executor::{OperatorFactory, Partitioner};
use weir::runtime::{
    CancelToken, CheckpointId, Executor, Graph, GraphNode, NodeBody, NodeEdge, Operator, Record,
    RunOptions, Snapshot, Source, TaskError,
};

/// Records per batch on every edge.
pub const BATCH: usize = 1024;
/// Key groups of the benchmark jobs.
pub const MAX_PARALLELISM: u32 = 128;

pub fn graph(
    records: u64,
    keys: u64,
    operator: OperatorFactory,
    partitioner: Partitioner,
) -> Graph {
    let settings = GeneratorSettings {
        count: Some(records),
        keys,
        seed: 1,
        rate: 0,
        value_size: 0,
    };
    let source = NodeBody::Source(Arc::new(move |info| {
        Ok(Box::new(Generator::new(settings.clone(), info)) as Box<dyn Source>)
    }));
    let sink = NodeBody::Operator(Arc::new(|_| {
        Ok(Box::new(BlackholeSink::new(0)) as Box<dyn Operator>)
    }));
    let node = |id: &str, body, inputs: Vec<NodeEdge>| GraphNode {
        id: id.to_owned(),
        parallelism: 1,
        inputs,
        body,
        batch_size: BATCH,
    };
    Graph {
        nodes: vec![
            node("gen", source, vec![]),
            node(
                "op",
                NodeBody::Operator(operator),
                vec![NodeEdge {
                    from: 0,
                    partitioner,
                }],
            ),
            node(
                "sink",
                sink,
                vec![NodeEdge {
                    from: 1,
                    partitioner: Partitioner::Forward,
                }],
            ),
        ],
        max_parallelism: MAX_PARALLELISM,
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
    fn open(&mut self, restored: Option<Vec<u8>>) -> Result<(), TaskError> {
        self.inner.open(restored)
    }
    fn process(&mut self, batch: Vec<Record>, out: &mut Vec<Record>) -> Result<(), TaskError> {
        let started = Instant::now();
        let result = self.inner.process(batch, out);
        let spent = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(spent, Ordering::Relaxed);
        result
    }
    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<Snapshot, TaskError> {
        self.inner.snapshot(checkpoint)
    }
    fn close(&mut self, out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.inner.close(out)
    }
}

/// Runs the graph built around `operator` and measures it.
pub fn measure(
    records: u64,
    keys: u64,
    operator: OperatorFactory,
    partitioner: Partitioner,
) -> Figures {
    let nanos = Arc::new(AtomicU64::new(0));
    let counted = nanos.clone();
    let timed: OperatorFactory = Arc::new(move |info| {
        Ok(Box::new(Timed {
            inner: operator(info)?,
            nanos: counted.clone(),
        }) as Box<dyn Operator>)
    });
    let graph = graph(records, keys, timed, partitioner);
    let report = Executor::new(CancelToken::default())
        .run(&graph, RunOptions::default())
        .expect("the benchmark job runs");
    let through = report.nodes[1].1.records_in();
    assert_eq!(through, records, "every record reached the operator");
    Figures {
        pipeline: records as f64 / report.elapsed.as_secs_f64(),
        operator: records as f64 / (nanos.load(Ordering::Relaxed) as f64 / 1e9),
    }
}
