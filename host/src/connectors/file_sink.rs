//! The `file` sink: exactly-once output through a two-phase commit, as Flink's
//! `FileSink`.
//!
//! Subtask `s` writes its records (the value and a newline each) into part files of the
//! output directory, numbered by a sequence number `q` that only grows:
//!
//! - `.part-<s>-<q>.inprogress`: being written. Hidden, so readers of the output never
//!   see it.
//! - `.part-<s>-<q>.pending`: sealed by the snapshot of a checkpoint (the pre-commit);
//!   still hidden. The sink's state lists every pending file with its checkpoint.
//! - `part-<s>-<q>`: committed, once a checkpoint at or after its own is complete. The
//!   output is the committed files, and a committed file is never deleted or rewritten.
//!
//! Every step is a rename within the directory, so a crash leaves each file under
//! exactly one of its names. On recovery from checkpoint `n` the sink commits the pending
//! files in `n`'s state (the checkpoint is complete, whether or not its notification
//! arrived) and deletes the rest of its own hidden files: they hold records after `n`,
//! which the sources replay.
//!
//! Without checkpointing (`transactional` false) nothing seals the in-progress file, and
//! [`Operator::close`] commits it directly.
//!
//! **Output committed after the restore point.** A committed file of this subtask whose
//! sequence number is at or past the restored `next_seq` holds records that came after
//! the restored checkpoint: a later checkpoint committed it, and that checkpoint is not
//! the one being restored (it is unusable, or the user chose an older one). The replay
//! would write those records a second time, so [`Operator::open`] refuses, naming the
//! files, unless the job runs with [`ExistingOutput::Append`]. A fresh start into a
//! directory that already holds committed files of the subtask is the same case with
//! nothing restored.

use crate::connectors::rate::Pacer;
use crate::connectors::sinks::write_lines;
use crate::checkpoint::snapshot::SnapshotType;
use crate::runtime::{
    Batch, CheckpointId, Fault, Operator, RestoredParts, Snapshot, SubtaskIndex, TaskError,
    TaskInfo,
};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What a part file's name says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// `.part-<s>-<q>.inprogress`.
    InProgress,
    /// `.part-<s>-<q>.pending`.
    Pending,
    /// `part-<s>-<q>`.
    Committed,
}

/// A part file of the output directory, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartName {
    subtask: SubtaskIndex,
    seq: u64,
    stage: Stage,
}

/// Digits only: `u64::from_str` would also take a leading `+`, and then two names
/// could denote one part.
fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl PartName {
    fn new(subtask: SubtaskIndex, seq: u64, stage: Stage) -> Self {
        Self {
            subtask,
            seq,
            stage,
        }
    }

    /// The part a file name denotes; `None` for every other file.
    fn parse(name: &str) -> Option<Self> {
        let (stage, numbers) = if let Some(hidden) = name.strip_prefix(".part-") {
            if let Some(numbers) = hidden.strip_suffix(".inprogress") {
                (Stage::InProgress, numbers)
            } else {
                (Stage::Pending, hidden.strip_suffix(".pending")?)
            }
        } else {
            (Stage::Committed, name.strip_prefix("part-")?)
        };
        let (subtask, seq) = numbers.split_once('-')?;
        Some(Self {
            subtask: SubtaskIndex(u32::try_from(parse_number(subtask)?).ok()?),
            seq: parse_number(seq)?,
            stage,
        })
    }

    fn file_name(self) -> String {
        let Self { subtask, seq, .. } = self;
        match self.stage {
            Stage::InProgress => format!(".part-{subtask}-{seq}.inprogress"),
            Stage::Pending => format!(".part-{subtask}-{seq}.pending"),
            Stage::Committed => format!("part-{subtask}-{seq}"),
        }
    }

    fn is_hidden(self) -> bool {
        self.stage != Stage::Committed
    }
}

/// Lets the state hold a [`CheckpointId`], which the runtime does not make serialisable.
#[derive(Serialize, Deserialize)]
#[serde(remote = "CheckpointId")]
struct CheckpointIdDef(u64);

/// A pending file: sealed by the snapshot of `checkpoint`, committed when that
/// checkpoint or a later one completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    #[serde(with = "CheckpointIdDef")]
    checkpoint: CheckpointId,
    seq: u64,
}

/// What a sink does with output already committed after the point it starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExistingOutput {
    /// Refuse to start, naming the files: their records would be written again.
    #[default]
    Refuse,
    /// Keep them and write after them (`weir run --allow-duplicates`).
    Append,
}

/// What the sink's snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SinkState {
    /// The checkpoint whose snapshot this is (0 before the first), for messages.
    checkpoint: u64,
    /// The sequence number of the next in-progress file.
    next_seq: u64,
    /// Every pending file not yet committed, oldest first.
    pending: Vec<Pending>,
}

/// What recovery does after committing the restored pending files.
#[derive(Debug, PartialEq, Eq)]
struct Cleanup {
    /// This subtask's hidden files: written after the restored checkpoint (or by a run
    /// that never completed one), so their records are replayed.
    delete: Vec<PartName>,
    /// The sequence number of the next in-progress file.
    next_seq: u64,
}

/// The committed parts of `subtask` from after the point a run starts from: at or past
/// the restored `next_seq`, in order.
fn committed_after(subtask: SubtaskIndex, restored_next_seq: u64, parts: &[PartName]) -> Vec<u64> {
    let mut seqs: Vec<u64> = parts
        .iter()
        .filter(|p| p.subtask == subtask && !p.is_hidden() && p.seq >= restored_next_seq)
        .map(|p| p.seq)
        .collect();
    seqs.sort_unstable();
    seqs
}

/// The refusal of a start that would write committed records a second time.
fn refuse_duplicates(
    dir: &Path,
    subtask: SubtaskIndex,
    checkpoint: u64,
    seqs: &[u64],
) -> TaskError {
    let name = |seq| PartName::new(subtask, seq, Stage::Committed).file_name();
    let files = match seqs {
        [one] => name(*one),
        [first, .., last] => format!("{} files, {} to {}", seqs.len(), name(*first), name(*last)),
        [] => String::new(),
    };
    let start = if checkpoint == 0 {
        "starts from the beginning".to_owned()
    } else {
        format!("restores checkpoint {checkpoint}")
    };
    let cause = if checkpoint == 0 {
        "Remove them or choose another path to start afresh, resume with --from-checkpoint \
         latest, or run with --allow-duplicates to keep them and write after them"
    } else {
        "Newer checkpoints that committed them are unusable (see the warnings above) or an \
         older checkpoint was chosen. Remove those files to have them written again exactly \
         once, or run with --allow-duplicates to keep them and accept the duplicates"
    };
    let held = if checkpoint == 0 {
        "already holds committed output of this subtask"
    } else {
        "holds output of this subtask committed after that checkpoint"
    };
    TaskError::failed(
        Fault::User,
        format!(
            "the file sink into {} (subtask {subtask}) {start}, but the directory {held} \
             ({files}): its records would be written a second time. {cause}.",
            dir.display()
        ),
    )
}

/// Decides what recovery deletes, given the restored `next_seq` and the parts in the
/// directory. Other subtasks' files and committed files are never deleted. The next
/// sequence number also skips past every committed file of this subtask, so that a
/// commit can never overwrite one (there are such files when the job restores from an
/// older checkpoint than the latest completed one, or starts afresh in a used directory).
fn plan_cleanup(subtask: SubtaskIndex, restored_next_seq: u64, parts: &[PartName]) -> Cleanup {
    let ours = parts.iter().filter(|p| p.subtask == subtask);
    let delete = ours.clone().filter(|p| p.is_hidden()).copied().collect();
    let next_seq = ours
        .filter(|p| !p.is_hidden())
        .map(|p| p.seq.saturating_add(1))
        .fold(restored_next_seq, u64::max);
    Cleanup { delete, next_seq }
}

/// A failure of the file system, naming the file.
fn external(action: &str, path: &Path, e: &std::io::Error) -> TaskError {
    TaskError::failed(
        Fault::External,
        format!("cannot {action} {}: {e}", path.display()),
    )
}

/// Makes the directory's entries (creations, renames, deletions) durable.
fn sync_dir(dir: &Path) -> Result<(), TaskError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| external("sync directory", dir, &e))
}

/// Commits pending file `seq` of `subtask`. Idempotent: a pending file that is gone
/// while its committed name exists was committed already (by a notification before a
/// crash, or by an earlier recovery).
fn commit(dir: &Path, subtask: SubtaskIndex, seq: u64) -> Result<(), TaskError> {
    let from = dir.join(PartName::new(subtask, seq, Stage::Pending).file_name());
    let to = dir.join(PartName::new(subtask, seq, Stage::Committed).file_name());
    let exists = |path: &Path| {
        path.try_exists()
            .map_err(|e| external("look for", path, &e))
    };
    if exists(&to)? {
        if exists(&from)? {
            return Err(TaskError::failed(
                Fault::External,
                format!(
                    "cannot commit {}: {} exists already, and a committed file is never \
                     overwritten",
                    from.display(),
                    to.display()
                ),
            ));
        }
        return Ok(());
    }
    std::fs::rename(&from, &to).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TaskError::failed(
                Fault::External,
                format!(
                    "cannot commit {}: it is missing, and {} does not exist either, so its \
                     records are lost",
                    from.display(),
                    to.display()
                ),
            )
        } else {
            external(&format!("commit {} as", from.display()), &to, &e)
        }
    })
}

/// The asynchronous phase of a snapshot: makes every pending file the state names
/// durable, data and name, before the state (and so the checkpoint) can be. A file may
/// have been committed meanwhile by the notification of an earlier checkpoint.
fn make_durable(dir: &Path, subtask: SubtaskIndex, pending: &[Pending]) -> Result<(), TaskError> {
    if pending.is_empty() {
        return Ok(());
    }
    for p in pending {
        let mut path = dir.join(PartName::new(subtask, p.seq, Stage::Pending).file_name());
        let file = match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                path = dir.join(PartName::new(subtask, p.seq, Stage::Committed).file_name());
                File::open(&path)
            }
            opened => opened,
        }
        .map_err(|e| external("open", &path, &e))?;
        file.sync_all().map_err(|e| external("sync", &path, &e))?;
    }
    sync_dir(dir)
}

/// The in-progress file being written.
struct InProgress {
    seq: u64,
    path: PathBuf,
    writer: BufWriter<File>,
}

/// Bytes buffered before a write to the in-progress file, so that a write system call
/// carries many records.
const WRITE_BUFFER: usize = 256 * 1024;

/// One subtask of the `file` sink, writing part files into a directory.
pub struct FileSink {
    dir: PathBuf,
    subtask: SubtaskIndex,
    transactional: bool,
    existing: ExistingOutput,
    pacer: Pacer,
    /// The sequence number of the next in-progress file.
    next_seq: u64,
    /// The in-progress file, created with the first record after a snapshot.
    current: Option<InProgress>,
    /// Pending files not yet committed, oldest first.
    pending: Vec<Pending>,
}

impl FileSink {
    /// The sink of subtask `info`, writing into directory `dir`, paced to `rate` records
    /// per second (0: unpaced). `transactional` is true when the job checkpoints: files
    /// are then committed by checkpoints, not by [`Operator::close`]. `existing` says
    /// what to do with output committed after the point the run starts from.
    pub fn new(
        dir: &Path,
        info: &TaskInfo,
        rate: u64,
        transactional: bool,
        existing: ExistingOutput,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            subtask: info.subtask,
            transactional,
            existing,
            pacer: Pacer::new(rate),
            next_seq: 0,
            current: None,
            pending: Vec::new(),
        }
    }

    fn path(&self, seq: u64, stage: Stage) -> PathBuf {
        self.dir
            .join(PartName::new(self.subtask, seq, stage).file_name())
    }

    /// The in-progress file, created if there is none.
    fn current(&mut self) -> Result<&mut InProgress, TaskError> {
        if self.current.is_none() {
            let seq = self.next_seq;
            let path = self.path(seq, Stage::InProgress);
            let file = File::create(&path).map_err(|e| external("create", &path, &e))?;
            self.next_seq += 1;
            self.current = Some(InProgress {
                seq,
                path,
                writer: BufWriter::with_capacity(WRITE_BUFFER, file),
            });
        }
        self.current
            .as_mut()
            .ok_or_else(|| TaskError::failed(Fault::Host, "the in-progress file vanished"))
    }

    /// Flushes the in-progress file, if any, and closes it; its sequence number and file.
    fn finish_current(&mut self) -> Result<Option<(u64, File)>, TaskError> {
        let Some(InProgress { seq, path, writer }) = self.current.take() else {
            return Ok(None);
        };
        let file = writer
            .into_inner()
            .map_err(|e| external("write", &path, e.error()))?;
        Ok(Some((seq, file)))
    }

    /// The parts in the output directory.
    fn list_parts(&self) -> Result<Vec<PartName>, TaskError> {
        let mut parts = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| external("list", &self.dir, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| external("list", &self.dir, &e))?;
            if let Some(part) = entry.file_name().to_str().and_then(PartName::parse) {
                parts.push(part);
            }
        }
        Ok(parts)
    }
}

impl Operator for FileSink {
    /// Recovers the directory: refuses output committed after the restored checkpoint
    /// (see the module docs), commits the pending files of the restored checkpoint,
    /// deletes this subtask's other hidden files (on a fresh start too: they are left by
    /// a run that never completed a checkpoint).
    fn open(&mut self, restored: Option<RestoredParts>) -> Result<(), TaskError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| external("create", &self.dir, &e))?;
        let state = match restored.and_then(|r| r.operator.into_iter().next()) {
            Some(bytes) => postcard::from_bytes::<SinkState>(&bytes).map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!(
                        "cannot decode the restored state of the file sink into {}: {e}",
                        self.dir.display()
                    ),
                )
            })?,
            None => SinkState::default(),
        };
        let parts = self.list_parts()?;
        let after = committed_after(self.subtask, state.next_seq, &parts);
        if !after.is_empty() {
            if self.existing == ExistingOutput::Refuse {
                return Err(refuse_duplicates(
                    &self.dir,
                    self.subtask,
                    state.checkpoint,
                    &after,
                ));
            }
            tracing::warn!(
                "the file sink into {} (subtask {}) keeps {} files committed after the point it starts from, as --allow-duplicates asks: their records are written again",
                self.dir.display(),
                self.subtask,
                after.len()
            );
        }
        for p in &state.pending {
            commit(&self.dir, self.subtask, p.seq)?;
        }
        let cleanup = plan_cleanup(self.subtask, state.next_seq, &self.list_parts()?);
        for part in &cleanup.delete {
            let path = self.dir.join(part.file_name());
            std::fs::remove_file(&path).map_err(|e| external("delete", &path, &e))?;
        }
        if !state.pending.is_empty() || !cleanup.delete.is_empty() {
            sync_dir(&self.dir)?;
        }
        self.next_seq = cleanup.next_seq;
        self.current = None;
        self.pending = Vec::new();
        Ok(())
    }

    fn process(&mut self, batch: &Batch, _out: &mut Batch) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.pacer.record(batch.len());
        let current = self.current()?;
        write_lines(&mut current.writer, batch)
            .map_err(|e| external("write", &current.path, &e))?;
        self.pacer.wait();
        Ok(())
    }

    /// The pre-commit: seals the in-progress file as pending for `checkpoint`. The sync
    /// phase only flushes and renames; the writer syncs the pending files and the
    /// directory, so they are durable before the checkpoint can complete.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        _kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        if let Some((seq, file)) = self.finish_current()? {
            drop(file);
            let from = self.path(seq, Stage::InProgress);
            let to = self.path(seq, Stage::Pending);
            std::fs::rename(&from, &to)
                .map_err(|e| external(&format!("seal {} as", from.display()), &to, &e))?;
            self.pending.push(Pending { checkpoint, seq });
        }
        let state = SinkState {
            checkpoint: checkpoint.0,
            next_seq: self.next_seq,
            pending: self.pending.clone(),
        };
        let dir = self.dir.clone();
        let subtask = self.subtask;
        Ok(Snapshot::State(Box::new(move || {
            make_durable(&dir, subtask, &state.pending)?;
            postcard::to_allocvec(&state).map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!(
                        "cannot encode the state of the file sink into {}: {e}",
                        dir.display()
                    ),
                )
            })
        })))
    }

    /// The commit: every pending file of `checkpoint` or an earlier one becomes
    /// visible. Earlier ones are there when their checkpoint was aborted or its
    /// notification was skipped: they are part of every later checkpoint's state, so a
    /// later completion commits them.
    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        let mut committed = false;
        while let Some(i) = self.pending.iter().position(|p| p.checkpoint <= checkpoint) {
            commit(&self.dir, self.subtask, self.pending[i].seq)?;
            self.pending.remove(i);
            committed = true;
        }
        if committed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Nothing to undo: the aborted checkpoint's pending files stay in the state and are
    /// committed by the next checkpoint that completes (as Flink's `FileSink`).
    fn notify_checkpoint_aborted(&mut self, _checkpoint: CheckpointId) -> Result<(), TaskError> {
        Ok(())
    }

    /// Transactional: flushes the in-progress file, which the final checkpoint seals and
    /// commits. Otherwise: commits the in-progress file at once.
    fn close(&mut self, _out: &mut Batch) -> Result<(), TaskError> {
        if self.transactional {
            if let Some(current) = self.current.as_mut() {
                current
                    .writer
                    .flush()
                    .map_err(|e| external("write", &current.path, &e))?;
            }
            return Ok(());
        }
        if let Some((seq, file)) = self.finish_current()? {
            let from = self.path(seq, Stage::InProgress);
            file.sync_all().map_err(|e| external("sync", &from, &e))?;
            drop(file);
            let to = self.path(seq, Stage::Committed);
            std::fs::rename(&from, &to)
                .map_err(|e| external(&format!("commit {} as", from.display()), &to, &e))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn info(subtask: u32) -> TaskInfo {
        TaskInfo {
            node: "out".into(),
            subtask: SubtaskIndex(subtask),
            parallelism: 4,
            max_parallelism: 128,
            metrics: Default::default(),
        }
    }

    fn part(subtask: u32, seq: u64, stage: Stage) -> PartName {
        PartName::new(SubtaskIndex(subtask), seq, stage)
    }

    fn sink(dir: &Path, subtask: u32) -> FileSink {
        FileSink::new(dir, &info(subtask), 0, true, ExistingOutput::Refuse)
    }

    fn write(sink: &mut FileSink, values: &[&str]) -> Result<(), TaskError> {
        let records: Vec<crate::runtime::Record> = values
            .iter()
            .map(|v| crate::runtime::Record::new(*v))
            .collect();
        sink.process(&records.iter().collect(), &mut Batch::new())
    }

    /// Takes the snapshot of `checkpoint` and runs its writer, as the runtime would.
    fn snapshot(sink: &mut FileSink, checkpoint: u64) -> Result<Vec<u8>, TaskError> {
        match sink.snapshot(CheckpointId(checkpoint), SnapshotType::Checkpoint)? {
            Snapshot::State(writer) => writer(),
            _ => Err(TaskError::failed(Fault::Host, "no state")),
        }
    }

    fn complete(sink: &mut FileSink, checkpoint: u64) -> Result<(), TaskError> {
        sink.notify_checkpoint_complete(CheckpointId(checkpoint))
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Result<Vec<String>, std::io::Error> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// What a reader of the output sees from `subtask`: its committed files, in order.
    fn output(dir: &Path, subtask: u32) -> Result<String, std::io::Error> {
        let mut parts: Vec<PartName> = names(dir)?
            .iter()
            .filter_map(|n| PartName::parse(n))
            .filter(|p| p.subtask == SubtaskIndex(subtask) && !p.is_hidden())
            .collect();
        parts.sort_by_key(|p| p.seq);
        let mut text = String::new();
        for p in parts {
            text.push_str(&std::fs::read_to_string(dir.join(p.file_name()))?);
        }
        Ok(text)
    }

    #[test]
    fn part_names_round_trip_through_their_file_names() {
        for stage in [Stage::InProgress, Stage::Pending, Stage::Committed] {
            let p = part(3, 17, stage);
            assert_eq!(PartName::parse(&p.file_name()), Some(p));
        }
        assert_eq!(
            part(3, 17, Stage::Pending).file_name(),
            ".part-3-17.pending"
        );
        assert_eq!(
            part(3, 17, Stage::InProgress).file_name(),
            ".part-3-17.inprogress"
        );
        assert_eq!(part(3, 17, Stage::Committed).file_name(), "part-3-17");
    }

    #[test]
    fn files_that_are_not_parts_are_not_parsed_as_parts() {
        for name in [
            "_SUCCESS",
            "part-1",
            "part-1-",
            "part--1",
            "part-+1-2",
            "part-1-2.txt",
            ".part-1-2",
            ".part-1-2.tmp",
            "part-1-2.pending",
            "part-99999999999-0",
        ] {
            assert_eq!(PartName::parse(name), None, "{name}");
        }
    }

    #[test]
    fn a_subtask_number_is_never_read_as_the_prefix_of_another() {
        assert_eq!(
            PartName::parse("part-12-3"),
            Some(part(12, 3, Stage::Committed))
        );
    }

    #[test]
    fn cleanup_deletes_the_subtasks_hidden_files_and_nothing_else() {
        let parts = [
            part(1, 0, Stage::Committed),
            part(1, 1, Stage::Pending),
            part(1, 2, Stage::InProgress),
            part(2, 5, Stage::Pending),
            part(2, 6, Stage::InProgress),
            part(11, 3, Stage::InProgress),
        ];
        let cleanup = plan_cleanup(SubtaskIndex(1), 1, &parts);
        assert_eq!(
            cleanup.delete,
            vec![part(1, 1, Stage::Pending), part(1, 2, Stage::InProgress)]
        );
        assert_eq!(cleanup.next_seq, 1);
    }

    #[test]
    fn the_next_sequence_number_skips_past_committed_files() {
        let parts = [part(0, 7, Stage::Committed), part(1, 20, Stage::Committed)];
        assert_eq!(plan_cleanup(SubtaskIndex(0), 3, &parts).next_seq, 8);
        assert_eq!(plan_cleanup(SubtaskIndex(0), 9, &parts).next_seq, 9);
    }

    #[test]
    fn hidden_files_never_raise_the_next_sequence_number() {
        let parts = [part(0, 7, Stage::Pending), part(0, 8, Stage::InProgress)];
        assert_eq!(plan_cleanup(SubtaskIndex(0), 3, &parts).next_seq, 3);
    }

    #[test]
    fn records_are_invisible_until_their_checkpoint_completes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a", "b"])?;
        assert_eq!(names(dir.path())?, vec![".part-0-0.inprogress"]);
        snapshot(&mut s, 1)?;
        assert_eq!(names(dir.path())?, vec![".part-0-0.pending"]);
        assert_eq!(output(dir.path(), 0)?, "");
        complete(&mut s, 1)?;
        assert_eq!(names(dir.path())?, vec!["part-0-0"]);
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        Ok(())
    }

    #[test]
    fn records_before_a_completed_checkpoint_are_committed_exactly_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a"])?;
        let state = snapshot(&mut s, 1)?;
        complete(&mut s, 1)?;
        complete(&mut s, 1)?;
        write(&mut s, &["b"])?;
        snapshot(&mut s, 2)?;
        complete(&mut s, 2)?;
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        // A restore from checkpoint 1, told to keep what checkpoint 2 committed, commits
        // its pending file again: a no-op.
        drop(s);
        let mut restored = FileSink::new(dir.path(), &info(0), 0, true, ExistingOutput::Append);
        restored.open(Some(RestoredParts { operator: vec![state], ..RestoredParts::default() }))?;
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        assert_eq!(names(dir.path())?, vec!["part-0-0", "part-0-1"]);
        Ok(())
    }

    #[test]
    fn records_after_the_last_completed_checkpoint_never_become_visible_after_a_crash() -> TestResult
    {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a", "b"])?;
        let state = snapshot(&mut s, 1)?;
        complete(&mut s, 1)?;
        write(&mut s, &["c"])?;
        snapshot(&mut s, 2)?;
        write(&mut s, &["d"])?;
        drop(s);
        assert_eq!(
            names(dir.path())?,
            vec![".part-0-1.pending", ".part-0-2.inprogress", "part-0-0"]
        );
        let mut restored = sink(dir.path(), 0);
        restored.open(Some(RestoredParts { operator: vec![state], ..RestoredParts::default() }))?;
        assert_eq!(names(dir.path())?, vec!["part-0-0"]);
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        // The replayed records go to new files.
        write(&mut restored, &["c", "d"])?;
        snapshot(&mut restored, 3)?;
        complete(&mut restored, 3)?;
        assert_eq!(output(dir.path(), 0)?, "a\nb\nc\nd\n");
        Ok(())
    }

    #[test]
    fn pending_files_of_a_checkpoint_completed_without_notification_are_committed_on_restore()
    -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a"])?;
        snapshot(&mut s, 1)?;
        write(&mut s, &["b"])?;
        let state = snapshot(&mut s, 2)?;
        write(&mut s, &["c"])?;
        // Checkpoint 2's metadata was committed, then the process died before notifying.
        drop(s);
        let mut restored = sink(dir.path(), 0);
        restored.open(Some(RestoredParts { operator: vec![state], ..RestoredParts::default() }))?;
        assert_eq!(names(dir.path())?, vec!["part-0-0", "part-0-1"]);
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        Ok(())
    }

    #[test]
    fn an_aborted_checkpoints_pending_file_is_committed_by_the_next_completion() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a"])?;
        snapshot(&mut s, 1)?;
        s.notify_checkpoint_aborted(CheckpointId(1))?;
        assert_eq!(output(dir.path(), 0)?, "");
        write(&mut s, &["b"])?;
        snapshot(&mut s, 2)?;
        write(&mut s, &["c"])?;
        snapshot(&mut s, 3)?;
        complete(&mut s, 2)?;
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        assert_eq!(
            names(dir.path())?,
            vec![".part-0-2.pending", "part-0-0", "part-0-1"]
        );
        Ok(())
    }

    #[test]
    fn a_snapshot_writer_finds_a_file_committed_while_it_waited() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a"])?;
        snapshot(&mut s, 1)?;
        write(&mut s, &["b"])?;
        let Snapshot::State(writer) = s.snapshot(CheckpointId(2), SnapshotType::Checkpoint)? else {
            return Err("no state".into());
        };
        complete(&mut s, 1)?;
        let state = writer()?;
        drop(s);
        let mut restored = sink(dir.path(), 0);
        restored.open(Some(RestoredParts { operator: vec![state], ..RestoredParts::default() }))?;
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        Ok(())
    }

    #[test]
    fn recovery_never_touches_another_subtasks_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut other = sink(dir.path(), 10);
        other.open(None)?;
        write(&mut other, &["x"])?;
        snapshot(&mut other, 1)?;
        complete(&mut other, 1)?;
        write(&mut other, &["y"])?;
        snapshot(&mut other, 2)?;
        write(&mut other, &["z"])?;
        let theirs = names(dir.path())?;

        let mut s = sink(dir.path(), 1);
        s.open(None)?;
        write(&mut s, &["a"])?;
        let state = snapshot(&mut s, 1)?;
        write(&mut s, &["b"])?;
        snapshot(&mut s, 2)?;
        drop(s);
        let mut restored = sink(dir.path(), 1);
        restored.open(Some(RestoredParts { operator: vec![state], ..RestoredParts::default() }))?;
        let mut expected = theirs;
        expected.push("part-1-0".into());
        expected.sort();
        assert_eq!(names(dir.path())?, expected);
        Ok(())
    }

    /// The message of a refused `open`.
    fn refusal(result: Result<(), TaskError>) -> Result<String, Box<dyn std::error::Error>> {
        match result {
            Err(TaskError::Failed {
                fault: Fault::User,
                message,
            }) => Ok(message),
            other => Err(format!("expected a refusal, got {other:?}").into()),
        }
    }

    #[test]
    fn a_fresh_start_into_committed_output_of_the_subtask_is_refused_naming_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("part-0-4"), "old\n")?;
        std::fs::write(dir.path().join("part-1-0"), "other\n")?;
        let message = refusal(sink(dir.path(), 0).open(None))?;
        assert!(message.contains("starts from the beginning"), "{message}");
        assert!(message.contains("part-0-4"), "{message}");
        assert!(message.contains("--allow-duplicates"), "{message}");
        // Subtask 2 has no committed output there, and starts.
        sink(dir.path(), 2).open(None)?;
        Ok(())
    }

    #[test]
    fn restoring_a_checkpoint_older_than_committed_output_is_refused_naming_both() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a"])?;
        let older = snapshot(&mut s, 1)?;
        complete(&mut s, 1)?;
        write(&mut s, &["b"])?;
        snapshot(&mut s, 2)?;
        write(&mut s, &["c"])?;
        snapshot(&mut s, 3)?;
        complete(&mut s, 3)?;
        drop(s);
        let message = refusal(sink(dir.path(), 0).open(Some(RestoredParts {
            operator: vec![older.clone()],
            ..RestoredParts::default()
        })))?;
        assert!(message.contains("restores checkpoint 1"), "{message}");
        assert!(
            message.contains("2 files, part-0-1 to part-0-2"),
            "{message}"
        );
        assert_eq!(names(dir.path())?, vec!["part-0-0", "part-0-1", "part-0-2"]);
        // Without the files committed after it, the restore goes on: they are replayed.
        std::fs::remove_file(dir.path().join("part-0-1"))?;
        std::fs::remove_file(dir.path().join("part-0-2"))?;
        sink(dir.path(), 0).open(Some(RestoredParts { operator: vec![older], ..RestoredParts::default() }))?;
        Ok(())
    }

    #[test]
    fn restoring_the_latest_checkpoint_is_never_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a"])?;
        snapshot(&mut s, 1)?;
        complete(&mut s, 1)?;
        write(&mut s, &["b"])?;
        let latest = snapshot(&mut s, 2)?;
        complete(&mut s, 2)?;
        write(&mut s, &["lost"])?;
        drop(s);
        sink(dir.path(), 0).open(Some(RestoredParts { operator: vec![latest], ..RestoredParts::default() }))?;
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        Ok(())
    }

    #[test]
    fn a_fresh_start_told_to_append_deletes_leftover_hidden_files_and_keeps_committed_ones()
    -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("part-0-4"), "old\n")?;
        std::fs::write(dir.path().join(".part-0-5.pending"), "lost\n")?;
        std::fs::write(dir.path().join(".part-0-6.inprogress"), "lost\n")?;
        let mut s = FileSink::new(dir.path(), &info(0), 0, true, ExistingOutput::Append);
        s.open(None)?;
        assert_eq!(names(dir.path())?, vec!["part-0-4"]);
        write(&mut s, &["new"])?;
        snapshot(&mut s, 1)?;
        complete(&mut s, 1)?;
        assert_eq!(names(dir.path())?, vec!["part-0-4", "part-0-5"]);
        assert_eq!(output(dir.path(), 0)?, "old\nnew\n");
        Ok(())
    }

    #[test]
    fn a_checkpoint_without_new_records_seals_no_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        s.process(&Batch::new(), &mut Batch::new())?;
        snapshot(&mut s, 1)?;
        complete(&mut s, 1)?;
        assert!(names(dir.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn a_transactional_sink_commits_its_last_records_through_the_final_checkpoint() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a", "b"])?;
        s.close(&mut Batch::new())?;
        assert_eq!(output(dir.path(), 0)?, "");
        snapshot(&mut s, 1)?;
        complete(&mut s, 1)?;
        assert_eq!(output(dir.path(), 0)?, "a\nb\n");
        Ok(())
    }

    #[test]
    fn a_non_transactional_sink_commits_its_file_on_close() -> TestResult {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("out");
        let mut s = FileSink::new(&out, &info(2), 0, false, ExistingOutput::Refuse);
        s.open(None)?;
        write(&mut s, &["a", "b"])?;
        s.close(&mut Batch::new())?;
        assert_eq!(names(&out)?, vec!["part-2-0"]);
        assert_eq!(std::fs::read_to_string(out.join("part-2-0"))?, "a\nb\n");
        Ok(())
    }

    #[test]
    fn a_missing_pending_file_is_an_error_naming_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), 0);
        s.open(None)?;
        write(&mut s, &["a"])?;
        let state = snapshot(&mut s, 1)?;
        drop(s);
        std::fs::remove_file(dir.path().join(".part-0-0.pending"))?;
        let Err(TaskError::Failed { fault, message }) = sink(dir.path(), 0).open(Some(RestoredParts { operator: vec![state], ..RestoredParts::default() }))
        else {
            return Err("restored without its pending file".into());
        };
        assert_eq!(fault, Fault::External);
        assert!(message.contains(".part-0-0.pending"), "{message}");
        Ok(())
    }

    #[test]
    fn a_commit_never_overwrites_a_committed_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(".part-0-0.pending"), "new\n")?;
        std::fs::write(dir.path().join("part-0-0"), "old\n")?;
        assert!(commit(dir.path(), SubtaskIndex(0), 0).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("part-0-0"))?,
            "old\n"
        );
        Ok(())
    }
}
