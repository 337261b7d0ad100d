//! The sinks: `stdout`, `file` and `blackhole`. Each writes a record's value followed by
//! a newline, and can be paced to a number of records per second (to try out
//! backpressure).

use crate::connectors::rate::Pacer;
use crate::runtime::{Fault, Operator, Record, TaskError, TaskInfo};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

fn write_lines(writer: &mut impl Write, batch: &[Record]) -> std::io::Result<()> {
    for record in batch {
        writer.write_all(&record.value)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
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
    fn open(&mut self) -> Result<(), TaskError> {
        Ok(())
    }

    fn process(&mut self, batch: Vec<Record>, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.pacer.record(batch.len());
        let stdout = std::io::stdout();
        let mut writer = BufWriter::new(stdout.lock());
        write_lines(&mut writer, &batch).map_err(|e| {
            TaskError::failed(Fault::External, format!("cannot write to stdout: {e}"))
        })?;
        self.pacer.wait();
        Ok(())
    }

    fn close(&mut self, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Writes values to `<dir>/part-<subtask>`, one line per record.
pub struct FileSink {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    pacer: Pacer,
}

impl FileSink {
    /// The sink of subtask `info`, writing into directory `dir`.
    pub fn new(dir: &Path, info: &TaskInfo, rate: u64) -> Self {
        Self {
            path: dir.join(format!("part-{}", info.subtask.0)),
            writer: None,
            pacer: Pacer::new(rate),
        }
    }

    fn io_error(&self, e: std::io::Error) -> TaskError {
        TaskError::failed(
            Fault::External,
            format!("cannot write {}: {e}", self.path.display()),
        )
    }
}

impl Operator for FileSink {
    fn open(&mut self) -> Result<(), TaskError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io_error(e))?;
        }
        let file = File::create(&self.path).map_err(|e| self.io_error(e))?;
        self.writer = Some(BufWriter::with_capacity(256 * 1024, file));
        Ok(())
    }

    fn process(&mut self, batch: Vec<Record>, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.pacer.record(batch.len());
        let Some(writer) = self.writer.as_mut() else {
            return Err(TaskError::failed(Fault::Host, "file sink used before open"));
        };
        let result = write_lines(writer, &batch);
        result.map_err(|e| self.io_error(e))?;
        self.pacer.wait();
        Ok(())
    }

    fn close(&mut self, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        if let Some(writer) = self.writer.take() {
            let file = writer
                .into_inner()
                .map_err(|e| self.io_error(e.into_error()))?;
            file.sync_all().map_err(|e| self.io_error(e))?;
        }
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
    fn open(&mut self) -> Result<(), TaskError> {
        Ok(())
    }

    fn process(&mut self, batch: Vec<Record>, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.pacer.record(batch.len());
        self.pacer.wait();
        Ok(())
    }

    fn close(&mut self, _out: &mut Vec<Record>) -> Result<(), TaskError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SubtaskIndex;

    #[test]
    fn the_file_sink_writes_one_line_per_record_into_its_part_file()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let info = TaskInfo {
            node: "out".into(),
            subtask: SubtaskIndex(2),
            parallelism: 3,
            max_parallelism: 128,
        };
        let mut sink = FileSink::new(&dir.path().join("out"), &info, 0);
        sink.open()?;
        sink.process(vec![Record::new("a"), Record::new("b")], &mut Vec::new())?;
        sink.close(&mut Vec::new())?;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/part-2"))?,
            "a\nb\n"
        );
        Ok(())
    }
}
