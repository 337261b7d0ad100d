//! The `file` source: the lines of one or more files, as records without a key.
//!
//! File `j` of the list is read by subtask `j mod parallelism`, one file after the
//! other in the order of the list. The source tracks the byte offset after the last
//! line it emitted, so that a checkpoint can record where to resume and a replay starts
//! on a line boundary.
//!
//! # Checkpoints
//! A snapshot holds a [`FilePosition`] for every file of the subtask, named by its index
//! in the job's list: the offset of its next line, or that it has been read to its end.
//! A restore takes the position of each file it reads from whichever restored state has
//! it: at an unchanged parallelism that is its own, after a rescale the states of all
//! old subtasks (a file then often changes hands, and its new reader resumes it where
//! its old reader stood). The lines before and after a restore together are every line
//! exactly once. The files must not change between the run and its restore (the offset
//! is a byte offset), and neither may the list.

use crate::connectors::SourceConnector;
use crate::job::{FileRole, JobError, Scope, StringList};
use crate::runtime::executor::SourceFactory;
use crate::runtime::{
    Batch, CheckpointId, Fault, RecordRef, SnapshotWriter, Source, SourcePoll, SubtaskIndex,
    TaskError, TaskInfo,
};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

/// `[[source]]` with `kind = "file"`: its own keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileSourceConfig {
    path: Option<StringList>,
}

/// A file source's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSourceSpec {
    /// The input files, absolute; each existed when the job file was loaded.
    pub paths: Vec<PathBuf>,
}

impl SourceConnector for FileSourceSpec {
    const KIND: &'static str = "file";
    const TIMESTAMPS: bool = false;
    type Config = FileSourceConfig;

    fn validate(config: FileSourceConfig, scope: &Scope<'_>) -> Result<Self, JobError> {
        let paths = match config.path {
            Some(paths) if !paths.0.is_empty() => paths,
            _ => {
                return Err(scope.invalid(
                    "path",
                    format!(
                        "{} has no input. Set path = \"input.txt\" or path = [\"a.txt\", \"b.txt\"], relative to the job file.",
                        scope.table()
                    ),
                ));
            }
        };
        let paths = scope.existing_files("path", &paths, FileRole::SourceInput)?;
        Ok(Self { paths })
    }

    fn factory(&self) -> SourceFactory {
        let paths = self.paths.clone();
        Arc::new(move |info| Ok(Box::new(FileSource::new(&paths, info)) as Box<dyn Source>))
    }
}

/// How far a file source has read one file of the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// The file's index in the job's list (not among the subtask's files), so that it
    /// names the file to whichever subtask reads it after a rescale.
    pub file: usize,
    /// The byte offset of the file's next line; `None` once it has been read to its end.
    pub offset: Option<u64>,
}

/// What a file source's snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SourceState {
    /// How many files the job's list has, to refuse a restore with another list.
    listed: usize,
    /// A position for every file of the subtask, in the order of the list.
    files: Vec<FilePosition>,
}

/// The offsets of the files `owned` (indices into a list of `listed` files), taken from
/// the restored states of every subtask that read them. Each owned file must be in
/// exactly one state: one in none would be read again from its start (its lines twice),
/// one in two is a corrupt checkpoint. Whether the fault is the user's (another list of
/// files) or not is in the error.
fn restored_offsets(
    owned: &[usize],
    listed: usize,
    states: &[SourceState],
) -> Result<Vec<Option<u64>>, (Fault, String)> {
    let mut by_file: Vec<Option<Option<u64>>> = vec![None; listed];
    for state in states {
        if state.listed != listed {
            return Err((
                Fault::User,
                format!(
                    "the checkpoint is of a list of {} files, but the job lists {listed}: \
                     the list must not change between a run and its restore",
                    state.listed
                ),
            ));
        }
        for position in &state.files {
            let slot = by_file.get_mut(position.file).ok_or_else(|| {
                (
                    Fault::Host,
                    format!(
                        "a restored state names file {}, but the list has {listed}",
                        position.file
                    ),
                )
            })?;
            if slot.replace(position.offset).is_some() {
                return Err((
                    Fault::Host,
                    format!(
                        "two restored states have the position of file {}",
                        position.file
                    ),
                ));
            }
        }
    }
    owned
        .iter()
        .map(|&j| {
            by_file.get(j).copied().flatten().ok_or_else(|| {
                (
                    Fault::Host,
                    format!("no restored state has the position of file {j}"),
                )
            })
        })
        .collect()
}

/// A file that the subtask reads.
struct OwnedFile {
    /// Its index in the job's list.
    index: usize,
    path: PathBuf,
    /// The offset of its next line; `None` once it has been read to its end.
    offset: Option<u64>,
}

/// One subtask of a file source.
pub struct FileSource {
    subtask: SubtaskIndex,
    listed: usize,
    /// The subtask's files, in the order of the list.
    files: Vec<OwnedFile>,
    /// The file being read: those before it have been read to their end.
    current: usize,
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
            .map(|(index, path)| OwnedFile {
                index,
                path: path.clone(),
                offset: Some(0),
            })
            .collect();
        Self {
            subtask: info.subtask,
            listed: paths.len(),
            files,
            current: 0,
            reader: None,
            line: Vec::new(),
        }
    }

    /// Where the source stands in each of its files, as a snapshot records it.
    pub fn positions(&self) -> Vec<FilePosition> {
        self.files
            .iter()
            .map(|f| FilePosition {
                file: f.index,
                offset: f.offset,
            })
            .collect()
    }

    /// Restores from the checkpointed blobs: its own at the same parallelism, every old
    /// subtask's after a rescale (it takes the positions of the files it reads now). No
    /// blob at all is a fresh start.
    pub fn restore(&mut self, states: &[Vec<u8>]) -> Result<(), TaskError> {
        self.reader = None;
        self.current = 0;
        if states.is_empty() {
            for file in &mut self.files {
                file.offset = Some(0);
            }
            return Ok(());
        }
        let refuse = |fault: Fault, why: String| {
            let first = self.files.first().map_or_else(
                || "no file".to_owned(),
                |f| format!("{} and the rest of its files", f.path.display()),
            );
            TaskError::failed(
                fault,
                format!(
                    "the file source (subtask {}, reading {first}) cannot restore its \
                     positions: {why}",
                    self.subtask
                ),
            )
        };
        let decoded = states
            .iter()
            .map(|bytes| postcard::from_bytes::<SourceState>(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                refuse(
                    Fault::Host,
                    format!("a restored state does not decode ({e})"),
                )
            })?;
        let owned: Vec<usize> = self.files.iter().map(|f| f.index).collect();
        let offsets = restored_offsets(&owned, self.listed, &decoded)
            .map_err(|(fault, why)| refuse(fault, why))?;
        for (file, offset) in self.files.iter_mut().zip(offsets) {
            file.offset = offset;
        }
        Ok(())
    }

    /// Opens the first file not read to its end at its offset, unless it is open
    /// already; false when every file has been read.
    fn open_current(&mut self) -> Result<bool, TaskError> {
        if self.reader.is_none() {
            let (path, offset) = loop {
                let Some(file) = self.files.get(self.current) else {
                    return Ok(false);
                };
                match file.offset {
                    Some(offset) => break (&file.path, offset),
                    None => self.current += 1,
                }
            };
            let io_error = |e: std::io::Error| {
                TaskError::failed(
                    Fault::External,
                    format!("cannot read {}: {e}", path.display()),
                )
            };
            let mut file = File::open(path).map_err(io_error)?;
            file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
            self.reader = Some(BufReader::with_capacity(256 * 1024, file));
        }
        Ok(true)
    }
}

impl Source for FileSource {
    fn open(&mut self, restored: Option<Vec<Vec<u8>>>) -> Result<(), TaskError> {
        self.restore(restored.as_deref().unwrap_or_default())
    }

    fn snapshot(&mut self, _checkpoint: CheckpointId) -> Result<SnapshotWriter, TaskError> {
        let state = SourceState {
            listed: self.listed,
            files: self.positions(),
        };
        let subtask = self.subtask;
        Ok(Box::new(move || {
            postcard::to_allocvec(&state).map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!("cannot encode the file source's positions (subtask {subtask}): {e}"),
                )
            })
        }))
    }

    fn poll(&mut self, out: &mut Batch, max: usize) -> Result<SourcePoll, TaskError> {
        for _ in 0..max {
            if !self.open_current()? {
                return Ok(SourcePoll::Finished);
            }
            let (Some(reader), Some(file)) =
                (self.reader.as_mut(), self.files.get_mut(self.current))
            else {
                return Ok(SourcePoll::Finished);
            };
            self.line.clear();
            let read = reader.read_until(b'\n', &mut self.line).map_err(|e| {
                TaskError::failed(
                    Fault::External,
                    format!("cannot read {}: {e}", file.path.display()),
                )
            })?;
            if read == 0 {
                self.reader = None;
                file.offset = None;
                self.current += 1;
                continue;
            }
            if let Some(offset) = file.offset.as_mut() {
                *offset += u64::try_from(read).unwrap_or(u64::MAX);
            }
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
        assert_eq!(first.positions()[0], at(0, None));
        assert!(first.positions()[1].offset > Some(0));
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
        assert_eq!(
            first.positions(),
            vec![at(0, None), at(1, Some(0)), at(2, Some(0))]
        );
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
    fn a_position_past_the_list_of_files_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 1)?;
        let state = postcard::to_allocvec(&SourceState {
            listed: 3,
            files: vec![at(0, None), at(4, Some(0))],
        })?;
        let mut source = FileSource::new(&paths, &info(0, 1));
        let message = refusal(source.open(Some(vec![state])));
        assert!(
            message.contains("names file 4, but the list has 3"),
            "{message}"
        );
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
        assert_eq!(source.positions(), vec![at(0, Some(3))]);
        Ok(())
    }

    fn at(file: usize, offset: Option<u64>) -> FilePosition {
        FilePosition { file, offset }
    }

    /// The message of a refused restore.
    fn refusal(result: Result<(), TaskError>) -> String {
        match result {
            Err(TaskError::Failed { message, .. }) => message,
            other => format!("not refused: {other:?}"),
        }
    }

    fn state(listed: usize, files: &[FilePosition]) -> SourceState {
        SourceState {
            listed,
            files: files.to_vec(),
        }
    }

    /// Seven files of different lengths; `p_old` subtasks each read their own number of
    /// lines (some to the end, some mid-file, some none), snapshot, and `p_new` subtasks
    /// restore from all the snapshots and read to the end. Every line must come out once.
    fn rescale(p_old: u32, p_new: u32, seed: usize) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut paths = Vec::new();
        let mut expected = Vec::new();
        for f in 0..7 {
            let path = dir.path().join(format!("{f}.txt"));
            let lines: Vec<String> = (0..f * 3 + 1).map(|l| format!("{f}-{l}")).collect();
            std::fs::write(
                &path,
                lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
            )?;
            expected.extend(lines.into_iter().map(String::into_bytes));
            paths.push(path);
        }
        let mut seen = Vec::new();
        let mut states = Vec::new();
        for s in 0..p_old {
            let mut source = FileSource::new(&paths, &info(s, p_old));
            source.open(None)?;
            let mut out = Batch::new();
            let lines = (seed * 7 + usize::try_from(s)? * 11) % 40;
            for _ in 0..lines {
                source.poll(&mut out, 1)?;
            }
            seen.extend(out.values.iter().map(<[u8]>::to_vec));
            states.push(source.snapshot(CheckpointId(1))?()?);
        }
        for s in 0..p_new {
            let mut source = FileSource::new(&paths, &info(s, p_new));
            source.restore(&states)?;
            seen.extend(drain(&mut source, 3)?);
        }
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected, "{p_old}→{p_new}, {seed}");
        Ok(())
    }

    #[test]
    fn after_a_rescale_every_line_comes_out_exactly_once() -> Result<(), Box<dyn std::error::Error>>
    {
        for (p_old, p_new) in [(2, 1), (1, 3), (2, 3), (3, 2), (4, 7), (7, 2), (3, 8)] {
            for seed in 0..5 {
                rescale(p_old, p_new, seed)?;
            }
        }
        Ok(())
    }

    #[test]
    fn a_file_that_changes_hands_resumes_where_its_old_reader_stood()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 3)?;
        // File 1 was subtask 1's of 2, read up to its second line ("1-0\n" is 4 bytes).
        let states = [
            postcard::to_allocvec(&state(3, &[at(0, None), at(2, Some(0))]))?,
            postcard::to_allocvec(&state(3, &[at(1, Some(4))]))?,
        ];
        let mut source = FileSource::new(&paths, &info(0, 1));
        source.restore(&states)?;
        let lines = drain(&mut source, 2)?;
        let expected: Vec<Vec<u8>> = ["1-1", "1-2", "2-0", "2-1", "2-2"]
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect();
        assert_eq!(lines, expected);
        Ok(())
    }

    #[test]
    fn no_blob_at_all_is_a_fresh_start() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 2)?;
        let mut source = FileSource::new(&paths, &info(0, 1));
        source.poll(&mut Batch::new(), 3)?;
        source.restore(&[])?;
        assert_eq!(drain(&mut source, 4)?.len(), 6);
        Ok(())
    }

    #[test]
    fn a_file_in_no_restored_state_is_refused_not_read_again()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 1)?;
        // Subtask 0 of 2's state alone: file 1 was subtask 1's.
        let states = [postcard::to_allocvec(&state(
            3,
            &[at(0, None), at(2, Some(0))],
        ))?];
        let message = refusal(FileSource::new(&paths, &info(0, 1)).restore(&states));
        assert!(
            message.contains("no restored state has the position of file 1"),
            "{message}"
        );
        assert!(message.contains("0.txt"), "{message}");
        Ok(())
    }

    #[test]
    fn a_file_in_two_restored_states_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 1)?;
        let states = [
            postcard::to_allocvec(&state(3, &[at(0, None), at(1, None)]))?,
            postcard::to_allocvec(&state(3, &[at(1, Some(0)), at(2, None)]))?,
        ];
        let message = refusal(FileSource::new(&paths, &info(0, 1)).restore(&states));
        assert!(
            message.contains("two restored states have the position of file 1"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn a_restore_with_another_list_of_files_is_the_users_fault()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 1)?;
        let states = [postcard::to_allocvec(&state(
            2,
            &[at(0, None), at(1, None)],
        ))?];
        let result = FileSource::new(&paths, &info(0, 1)).restore(&states);
        let Err(TaskError::Failed { fault, message }) = result else {
            return Err("restored with another list".into());
        };
        assert_eq!(fault, Fault::User);
        assert!(
            message.contains("a list of 2 files, but the job lists 3"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn a_corrupt_state_is_refused_naming_the_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let paths = three_files(dir.path(), 1)?;
        // The format before rescaling: the subtask's file index and offset.
        let old = postcard::to_allocvec(&(1usize, 7u64))?;
        for bytes in [vec![0xff; 4], old] {
            let message = refusal(FileSource::new(&paths, &info(0, 1)).restore(&[bytes]));
            assert!(message.contains("does not decode"), "{message}");
            assert!(message.contains("0.txt"), "{message}");
        }
        Ok(())
    }

    #[test]
    fn the_offsets_of_owned_files_come_from_whichever_state_has_them() {
        let states = [
            state(4, &[at(0, None), at(2, Some(9))]),
            state(4, &[at(1, Some(3)), at(3, None)]),
        ];
        assert_eq!(
            restored_offsets(&[1, 2], 4, &states),
            Ok(vec![Some(3), Some(9)])
        );
        assert_eq!(restored_offsets(&[], 4, &states), Ok(vec![]));
    }
}
