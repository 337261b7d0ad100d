//! The composition root: turns a validated [`JobSpec`] into a runtime [`Graph`] by
//! choosing, for every node, its connector or WASM component and its state backend.
//! This is the only place that knows all the parts; each part stays ignorant of the
//! others.

use crate::connectors::{
    BlackholeSink, FileSink, FileSource, Generator, GeneratorSettings, StdoutSink,
};
use crate::job::{JobSpec, NodeKind, Partition, SinkKind, SourceKind};
use crate::runtime::executor::{OperatorFactory, Partitioner};
use crate::runtime::keygroup::KeyGroupRange;
use crate::runtime::{Graph, GraphNode, NodeBody, NodeEdge, Operator, Source};
use crate::state::HeapBackend;
use crate::wasm::{WasmError, WasmRuntime};
use std::sync::Arc;

/// Records per batch on the input of a sink. Sinks pay per batch (a lock, a write
/// call), so larger is cheaper; 1024 matches the default guest batch.
const SINK_BATCH: usize = 1024;

/// Builds the graph of `spec`, loading (and compiling or fetching from the cache) every
/// operator's component once.
pub fn build_graph(spec: &JobSpec, wasm: &WasmRuntime) -> Result<Graph, WasmError> {
    let mut nodes = Vec::with_capacity(spec.nodes.len());
    for node in &spec.nodes {
        let (body, batch_size) = match &node.kind {
            NodeKind::Source(source) => (source_body(source), SINK_BATCH),
            NodeKind::Operator(op) => {
                let component = Arc::new(wasm.load(&op.wasm)?);
                let config = op.config.clone();
                let factory: OperatorFactory = Arc::new(move |info| {
                    let groups = KeyGroupRange::for_subtask(
                        info.subtask,
                        info.parallelism,
                        info.max_parallelism,
                    );
                    let backend = Box::new(HeapBackend::new(groups));
                    let operator = component.instantiate(info, &config, backend)?;
                    Ok(Box::new(operator) as Box<dyn Operator>)
                });
                (NodeBody::Operator(factory), op.batch_size)
            }
            NodeKind::Sink(sink) => {
                let rate = sink.rate;
                let factory: OperatorFactory = match &sink.kind {
                    SinkKind::Stdout => {
                        Arc::new(move |_| Ok(Box::new(StdoutSink::new(rate)) as Box<dyn Operator>))
                    }
                    SinkKind::Blackhole => Arc::new(move |_| {
                        Ok(Box::new(BlackholeSink::new(rate)) as Box<dyn Operator>)
                    }),
                    SinkKind::File { path } => {
                        let dir = path.clone();
                        Arc::new(move |info| {
                            Ok(Box::new(FileSink::new(&dir, info, rate)) as Box<dyn Operator>)
                        })
                    }
                };
                (NodeBody::Operator(factory), SINK_BATCH)
            }
        };
        let inputs = node
            .inputs
            .iter()
            .map(|&from| NodeEdge {
                from,
                partitioner: partitioner(node.partition, spec.max_parallelism),
            })
            .collect();
        nodes.push(GraphNode {
            id: node.id.clone(),
            parallelism: node.parallelism,
            inputs,
            body,
            batch_size,
        });
    }
    Ok(Graph {
        nodes,
        max_parallelism: spec.max_parallelism,
    })
}

fn source_body(source: &SourceKind) -> NodeBody {
    match source {
        SourceKind::Generator(g) => {
            let settings = GeneratorSettings {
                count: g.count,
                keys: g.keys,
                seed: g.seed,
                rate: g.rate,
                value_size: g.value_size,
            };
            NodeBody::Source(Arc::new(move |info| {
                Ok(Box::new(Generator::new(settings.clone(), info)) as Box<dyn Source>)
            }))
        }
        SourceKind::File(f) => {
            let paths = f.paths.clone();
            NodeBody::Source(Arc::new(move |info| {
                Ok(Box::new(FileSource::new(&paths, info)) as Box<dyn Source>)
            }))
        }
    }
}

fn partitioner(partition: Partition, max_parallelism: u32) -> Partitioner {
    match partition {
        Partition::Forward => Partitioner::Forward,
        Partition::Rebalance => Partitioner::Rebalance,
        Partition::Broadcast => Partitioner::Broadcast,
        Partition::KeyBy => Partitioner::KeyBy { max_parallelism },
    }
}
