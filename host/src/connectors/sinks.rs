//! The stateless sinks: `stdout` and `blackhole`. Each can be paced to a number of
//! records per second (to try out backpressure).
//!
//! # Checkpoints
//! Neither has anything to commit: a snapshot is empty and a restore ignores it. Output
//! to stdout is therefore at-least-once across a restore (the records after the restored
//! checkpoint are printed again).

use crate::checkpoint::snapshot::SnapshotType;
use crate::connectors::rate::Pacer;
use crate::connectors::{SinkConnector, SinkContext};
use crate::job::{JobError, Scope};
use crate::runtime::executor::OperatorFactory;
use crate::runtime::{Batch, CheckpointId, Fault, Operator, RestoredParts, Snapshot, TaskError};
use serde::Deserialize;
use std::io::{BufWriter, Write};
use std::sync::Arc;

/// The own keys of a sink that has none but the common ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoKeys {}

/// `kind = "stdout"`: prints each record's value on a line of the host's stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StdoutSpec;

impl SinkConnector for StdoutSpec {
    const KIND: &'static str = "stdout";
    type Config = NoKeys;

    fn validate(_: NoKeys, _: &Scope<'_>) -> Result<Self, JobError> {
        Ok(Self)
    }

    fn factory(&self, context: SinkContext) -> OperatorFactory {
        Arc::new(move |_| Ok(Box::new(StdoutSink::new(context.rate)) as Box<dyn Operator>))
    }
}

/// `kind = "blackhole"`: discards records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlackholeSpec;

impl SinkConnector for BlackholeSpec {
    const KIND: &'static str = "blackhole";
    type Config = NoKeys;

    fn validate(_: NoKeys, _: &Scope<'_>) -> Result<Self, JobError> {
        Ok(Self)
    }

    fn factory(&self, context: SinkContext) -> OperatorFactory {
        Arc::new(move |_| Ok(Box::new(BlackholeSink::new(context.rate)) as Box<dyn Operator>))
    }
}

/// Writes each record's value followed by a newline. Does not flush, so that the caller
/// decides when a batch of writes reaches the file.
pub(super) fn write_lines(writer: &mut impl Write, batch: &Batch) -> std::io::Result<()> {
    for value in batch.values.iter() {
        writer.write_all(value)?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// The snapshot of a sink without state.
pub(super) fn empty_snapshot() -> Snapshot {
    Snapshot::State(Box::new(|| Ok(Vec::new())))
}

/// Writes values to the host's stdout, one line per record.
pub struct StdoutSink {
    pacer: Pacer,
}

impl StdoutSink {
    /// A stdout sink paced to `rate` records per second (0: unpaced).
    pub fn new(rate: u64) -> Self {
        Self {
            pacer: Pacer::new(rate),
        }
    }
}

impl Operator for StdoutSink {
    fn open(&mut self, _restored: Option<RestoredParts>) -> Result<(), TaskError> {
        Ok(())
    }

    fn process(&mut self, batch: &Batch, _out: &mut Batch) -> Result<(), TaskError> {
        self.pacer.record(batch.len());
        let stdout = std::io::stdout();
        let mut writer = BufWriter::new(stdout.lock());
        write_lines(&mut writer, batch)
            .and_then(|()| writer.flush())
            .map_err(|e| {
                TaskError::failed(Fault::External, format!("cannot write to stdout: {e}"))
            })?;
        self.pacer.wait();
        Ok(())
    }

    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        Ok(empty_snapshot())
    }

    fn close(&mut self, _out: &mut Batch) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Discards records, counting them.
pub struct BlackholeSink {
    pacer: Pacer,
}

impl BlackholeSink {
    /// A blackhole paced to `rate` records per second (0: unpaced).
    pub fn new(rate: u64) -> Self {
        Self {
            pacer: Pacer::new(rate),
        }
    }
}

impl Operator for BlackholeSink {
    fn open(&mut self, _restored: Option<RestoredParts>) -> Result<(), TaskError> {
        Ok(())
    }

    fn process(&mut self, batch: &Batch, _out: &mut Batch) -> Result<(), TaskError> {
        self.pacer.record(batch.len());
        self.pacer.wait();
        Ok(())
    }

    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        Ok(empty_snapshot())
    }

    fn close(&mut self, _out: &mut Batch) -> Result<(), TaskError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Record;

    #[test]
    fn write_lines_ends_every_value_with_a_newline() -> std::io::Result<()> {
        let mut out = Vec::new();
        write_lines(
            &mut out,
            &[Record::new("a"), Record::new(""), Record::new("b")]
                .iter()
                .collect(),
        )?;
        assert_eq!(out, b"a\n\nb\n");
        Ok(())
    }

    #[test]
    fn a_stateless_sink_snapshots_nothing_and_restores_from_nothing() -> Result<(), TaskError> {
        let mut sink = BlackholeSink::new(0);
        let Snapshot::State(writer) = sink.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?
        else {
            return Err(TaskError::failed(Fault::Host, "a blackhole finished"));
        };
        let state = writer()?;
        assert!(state.is_empty());
        let mut restored = BlackholeSink::new(0);
        restored.open(Some(RestoredParts {
            operator: vec![state],
            ..RestoredParts::default()
        }))?;
        restored.process(&[Record::new("a")].iter().collect(), &mut Batch::new())?;
        restored.close(&mut Batch::new())
    }
}
