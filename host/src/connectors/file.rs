//! The `file` source: the lines of one or more files, as records without a key.
//!
//! File `j` of the list is read by subtask `j mod parallelism`. The source tracks the
//! byte offset after the last line it emitted, so that a checkpoint can record where to
//! resume and a replay starts on a line boundary.
//!
//! # Checkpoints
//! A snapshot is the [`FilePosition`]: which of the subtask's files it reads and the
//! offset of its next line. A restored source opens that file at that offset, so the
//! lines before and after a restore together are every line exactly once. The files must
//! not change between the run and its restore (the offset is a byte offset).

use crate::runtime::{
    Batch, CheckpointId, Fault, RecordRef, SnapshotWriter, Source, SourcePoll, TaskError, TaskInfo,
};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

/// Where a file source stands: the file it reads and the offset of its next line. This
/// is what the source's snapshot holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// Index into the subtask's files.
    pub file: usize,
    /// Byte offset of the next line in that file.
    pub offset: u64,
}

/// One subtask of a file source.
pub struct FileSource {
    files: Vec<PathBuf>,
    position: FilePosition,
    reader: Option<BufReader<File>>,
    line: Vec<u8>,
}

impl FileSource {
    /// The source of subtask `info` over `paths`.
    pub fn new(paths: &[PathBuf], info: &TaskInfo) -> Self {
        let parallelism = usize::try_from(info.parallelism.max(1)).unwrap_or(1);
        let files = paths
            .iter()
            .enumerate()
            .filter(|(j, _)| j % parallelism == info.subtask.as_usize())
            .map(|(_, p)| p.clone())
            .collect();
        Self {
            files,
            position: FilePosition::default(),
            reader: None,
            line: Vec::new(),
        }
    }

    /// Where the source stands.
    pub fn position(&self) -> FilePosition {
        self.position
    }

    /// Opens the current file at the current offset, unless it is open already; false
    /// when every file has been read.
    fn open_current(&mut self) -> Result<bool, TaskError> {
        if self.reader.is_none() {
            let Some(path) = self.files.get(self.position.file) else {
                return Ok(false);
            };
            let io_error = |e: std::io::Error| {
                TaskError::failed(
                    Fault::External,
                    format!("cannot read {}: {e}", path.display()),
                )
            };
            let mut file = File::open(path).map_err(io_error)?;
            file.seek(SeekFrom::Start(self.position.offset))
                .map_err(io_error)?;
            self.reader = Some(BufReader::with_capacity(256 * 1024, file));
        }
        Ok(true)
    }
}

impl Source for FileSource {
    fn open(&mut self, restored: Option<Vec<Vec<u8>>>) -> Result<(), TaskError> {
        let Some(bytes) = restored.and_then(|b| b.into_iter().next()) else {
            return Ok(());
        };
        let position: FilePosition = postcard::from_bytes(&bytes).map_err(|e| {
            TaskError::failed(
                Fault::Host,
                format!("cannot decode the file source's restored position: {e}"),
            )
        })?;
        // One past the last file is where a finished source stands.
        if position.file > self.files.len() {
            return Err(TaskError::failed(
                Fault::Host,
                format!(
                    "the restored position names file {} but this subtask reads {} files",
                    position.file,
                    self.files.len()
                ),
            ));
        }
        self.position = position;
        self.reader = None;
        Ok(())
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<SnapshotWriter, TaskError> {
        let position = self.position;
        Ok(Box::new(move || {
            postcard::to_allocvec(&position).map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!("cannot encode the file source's position: {e}"),
                )
            })
        }))
    }

    fn poll(&mut self, out: &mut Batch, max: usize) -> Result<SourcePoll, TaskError> {
        for _ in 0..max {
            let file = self.position.file;
            if !self.open_current()? {
                return Ok(SourcePoll::Finished);
            }
            let Some(reader) = self.reader.as_mut() else {
                return Ok(SourcePoll::Finished);
            };
            self.line.clear();
            let read = reader.read_until(b'\n', &mut self.line).map_err(|e| {
                TaskError::failed(
                    Fault::External,
                    format!("cannot read {}: {e}", self.files[file].display()),
                )
            })?;
            if read == 0 {
                self.reader = None;
                self.position = FilePosition {
                    file: file + 1,
                    offset: 0,
                };
                continue;
            }
            self.position.offset += u64::try_from(read).unwrap_or(u64::MAX);
            let mut line = self.line.as_slice();
            if let Some(rest) = line.strip_suffix(b"\n") {
                line = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            out.push(RecordRef {
                value: line,
                ..RecordRef::default()
            });
        }
        Ok(SourcePoll::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SubtaskIndex;

    fn info(subtask: u32, parallelism: u32) -> TaskInfo {
        TaskInfo {
            node: "lines".into(),
            subtask: SubtaskIndex(subtask),
            parallelism,
            max_parallelism: 128,
            metrics: Default::default(),
        }
    }

    #[test]
    fn every_line_of_every_file_comes_out_once_without_its_newline()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        std::fs::write(&a, "one\ntwo\r\n\nthree")?;
        std::fs::write(&b, "four\n")?;
        let mut source = FileSource::new(&[a, b], &info(0, 1));
        let mut out = Batch::new();
        while source.poll(&mut out, 2)? != SourcePoll::Finished {}
        let lines: Vec<&[u8]> = out.iter().map(|r| r.value).collect();
        assert_eq!(lines, vec![&b"one"[..], b"two", b"", b"three", b"four"]);
        Ok(())
    }

    #[test]
    fn files_are_split_between_subtasks() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("{i}.txt")))
            .collect();
        for (i, p) in paths.iter().enumerate() {
            std::fs::write(p, format!("{i}\n"))?;
        }
        let mut seen = Vec::new();
        for s in 0..2 {
            let mut source = FileSource::new(&paths, &info(s, 2));
            let mut out = Batch::new();
            while source.poll(&mut out, 10)? != SourcePoll::Finished {}
            seen.extend(out.values.iter().map(<[u8]>::to_vec));
        }
        seen.sort();
        assert_eq!(seen, vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
        Ok(())
    }

    fn drain(source: &mut FileSource, max: usize) -> Result<Vec<Vec<u8>>, TaskError> {
        let mut out = Batch::new();
        while source.poll(&mut out, max)? != SourcePoll::Finished {}
        Ok(out.values.iter().map(<[u8]>::to_vec).collect())
    }

    /// Three files of `lines` lines each, named after their index.
    fn three_files(
        dir: &std::path::Path,
        lines: usize,
    ) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
        let mut paths = Vec::new();
        for f in 0..3 {
            let path = dir.join(format!("{f}.txt"));
            let text: String = (0..lines).map(|l| format!("{f}-{l}\n")).collect();
            std::fs::write(&path, text)?;
            paths.push(path);
        }
        Ok(paths)
    }

    #[test]
    fn a_source_restored_mid_file_emits_exactly_the_remaining_lines()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 10)?;
        let uninterrupted = drain(&mut FileSource::new(&paths, &info(0, 1)), 4)?;
        let mut first = FileSource::new(&paths, &info(0, 1));
        first.open(None)?;
        let mut before = Batch::new();
        first.poll(&mut before, 14)?;
        let state = first.snapshot(CheckpointId(1))?()?;
        assert_eq!(first.position().file, 1);
        assert!(first.position().offset > 0);
        first.poll(&mut Batch::new(), 5)?;
        let mut second = FileSource::new(&paths, &info(0, 1));
        second.open(Some(vec![state]))?;
        let mut all: Vec<Vec<u8>> = before.values.iter().map(<[u8]>::to_vec).collect();
        all.extend(drain(&mut second, 4)?);
        assert_eq!(all.len(), 30);
        assert_eq!(all, uninterrupted);
        Ok(())
    }

    #[test]
    fn a_source_restored_between_files_starts_the_next_file_at_its_first_line()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 2)?;
        let mut first = FileSource::new(&paths, &info(0, 1));
        let mut before = Batch::new();
        // Two lines, then the end of the first file moves the position to the second.
        first.poll(&mut before, 3)?;
        assert_eq!(first.position(), FilePosition { file: 1, offset: 0 });
        let state = first.snapshot(CheckpointId(2))?()?;
        let mut second = FileSource::new(&paths, &info(0, 1));
        second.open(Some(vec![state]))?;
        let after = drain(&mut second, 1)?;
        assert_eq!(
            after,
            vec![
                b"1-0".to_vec(),
                b"1-1".to_vec(),
                b"2-0".to_vec(),
                b"2-1".to_vec()
            ]
        );
        Ok(())
    }

    #[test]
    fn a_finished_source_restores_as_finished() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 2)?;
        let mut first = FileSource::new(&paths, &info(0, 1));
        drain(&mut first, 10)?;
        let state = first.snapshot(CheckpointId(3))?()?;
        let mut second = FileSource::new(&paths, &info(0, 1));
        second.open(Some(vec![state]))?;
        assert_eq!(second.poll(&mut Batch::new(), 10)?, SourcePoll::Finished);
        Ok(())
    }

    #[test]
    fn a_position_past_the_subtasks_files_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 1)?;
        let state = postcard::to_allocvec(&FilePosition { file: 4, offset: 0 })?;
        let mut source = FileSource::new(&paths, &info(0, 1));
        assert!(source.open(Some(vec![state])).is_err());
        Ok(())
    }

    #[test]
    fn the_position_points_after_the_last_emitted_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "ab\ncd\n")?;
        let mut source = FileSource::new(&[a], &info(0, 1));
        let mut out = Batch::new();
        source.poll(&mut out, 1)?;
        assert_eq!(source.position(), FilePosition { file: 0, offset: 3 });
        Ok(())
    }
}
