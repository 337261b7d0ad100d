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
//! would write those records a second time, so [`FileSink::restore`] refuses, naming the
//! files, unless the job runs with [`ExistingOutput::Append`]. A fresh start into a
//! directory that already holds committed files of the subtask is the same case with
//! nothing restored.
//!
//! # Rescaling
//! A restore at another parallelism hands every new subtask the states of all old
//! subtasks. New subtask `i` of `p` takes over the part files of every old subtask `j`
//! with `j mod p = i` (its own among them, when it existed): it commits `j`'s pending
//! files of the restored checkpoint, deletes `j`'s hidden files and refuses `j`'s output
//! committed after the checkpoint, all with `j`'s state, so each old subtask's files are
//! recovered by exactly one new subtask. Only subtask `i` writes `part-i-*` files again;
//! the indices at or past `p` are never written to again. Their final sequence numbers
//! are carried forward in the state of the subtask that took them over (its "retired"
//! indices), and are taken over by the same rule at the next restore: after a scale from
//! 4 to 2 and back to 4, new subtask 2 finds index 2 in the state of old subtask 0, so
//! `part-2-*`, committed before the restore point, are not mistaken for output
//! committed after it. A subtask index that no restored state names starts from
//! sequence number 0, as on a fresh start: its committed files are refused.

use crate::checkpoint::snapshot::SnapshotType;
use crate::connectors::rate::Pacer;
use crate::connectors::sinks::write_lines;
use crate::connectors::{SinkConnector, SinkContext};
use crate::job::{JobError, Scope};
use crate::runtime::executor::OperatorFactory;
use crate::runtime::{
    Batch, CheckpointId, Fault, Operator, RestoredParts, Snapshot, SubtaskIndex, TaskError,
    TaskInfo,
};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[[sink]]` with `kind = "file"`: its own keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileSinkConfig {
    path: Option<String>,
}

/// A file sink's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkSpec {
    /// The output directory, absolute; created by the sink if missing.
    pub path: PathBuf,
}

impl SinkConnector for FileSinkSpec {
    const KIND: &'static str = "file";
    type Config = FileSinkConfig;

    /// `path`: present, and not an existing non-directory.
    fn validate(config: FileSinkConfig, scope: &Scope<'_>) -> Result<Self, JobError> {
        let Some(given) = config.path else {
            return Err(scope.invalid(
                "path",
                format!(
                    "{} has no `path`. Set path = \"out/\", a directory relative to the job file (created if missing).",
                    scope.table()
                ),
            ));
        };
        let resolved = scope.resolve(&given);
        if resolved.exists() && !resolved.is_dir() {
            return Err(scope.invalid(
                "path",
                format!(
                    "{}: `path` {given} is a file (resolved to {}), but the file sink writes a directory of files. Point path at a directory; it is created if missing.",
                    scope.label(),
                    resolved.display()
                ),
            ));
        }
        Ok(Self { path: resolved })
    }

    fn factory(&self, context: SinkContext) -> OperatorFactory {
        let dir = self.path.clone();
        Arc::new(move |info| {
            Ok(Box::new(FileSink::new(
                &dir,
                info,
                context.rate,
                context.transactional,
                context.existing,
            )) as Box<dyn Operator>)
        })
    }
}

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

/// Lets the state hold a [`SubtaskIndex`], which the runtime does not make
/// deserialisable.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SubtaskIndex")]
struct SubtaskIndexDef(u32);

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

/// A subtask index whose part files a sink took over at a rescale and never writes
/// again: where its files end, carried forward for the next restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Retired {
    #[serde(with = "SubtaskIndexDef")]
    subtask: SubtaskIndex,
    /// Past its last committed file.
    next_seq: u64,
}

/// What the sink's snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SinkState {
    /// The checkpoint whose snapshot this is (0 before the first), for messages.
    checkpoint: u64,
    /// The subtask whose snapshot this is: the index in the names of its part files.
    #[serde(with = "SubtaskIndexDef")]
    subtask: SubtaskIndex,
    /// The parallelism of its run, to tell a rescale's states from its own.
    parallelism: u32,
    /// The sequence number of the next in-progress file.
    next_seq: u64,
    /// Every pending file not yet committed, oldest first.
    pending: Vec<Pending>,
    /// The indices it took over at a rescale and no longer writes, by index.
    retired: Vec<Retired>,
}

/// What a restore knows about a subtask index it takes over, for the messages of a
/// refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Basis {
    /// Nothing was restored.
    Fresh,
    /// The state of checkpoint `0` names the index.
    Restored(u64),
    /// No state of checkpoint `0` names the index (a rescale to a larger parallelism
    /// than any run that carried it forward): it starts from sequence number 0.
    Unaccounted(u64),
}

/// The part files of one subtask index, as a restore takes them over.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Writer {
    subtask: SubtaskIndex,
    /// Where the restored checkpoint stands in its files: a committed file at or past
    /// it holds records that came after the checkpoint.
    next_seq: u64,
    /// Its pending files in the restored checkpoint: they are committed.
    pending: Vec<u64>,
    basis: Basis,
}

/// Which subtask indices subtask `own` of `parallelism` takes over on a restore from
/// `states`: none is a fresh start; one, its own, is a restore at an unchanged
/// parallelism; all, in the order of the old subtasks, is a rescale. It takes every
/// index `j` that a state names (as its writer or as retired) with
/// `j mod parallelism = own`, and always its own index, by index. Any other set of
/// states is refused, as is an index two states name.
fn take_over(
    own: SubtaskIndex,
    parallelism: u32,
    states: &[SinkState],
) -> Result<Vec<Writer>, String> {
    let Some(first) = states.first() else {
        return Ok(vec![Writer {
            subtask: own,
            next_seq: 0,
            pending: Vec::new(),
            basis: Basis::Fresh,
        }]);
    };
    let (checkpoint, old_parallelism) = (first.checkpoint, first.parallelism);
    for state in states {
        if (state.checkpoint, state.parallelism) != (checkpoint, old_parallelism) {
            return Err(format!(
                "the restored states are of different runs (checkpoint {} at parallelism {}, \
                 checkpoint {} at parallelism {})",
                checkpoint, old_parallelism, state.checkpoint, state.parallelism
            ));
        }
    }
    let all = usize::try_from(old_parallelism).is_ok_and(|p| p == states.len());
    if all {
        for (k, state) in states.iter().enumerate() {
            if state.subtask.as_usize() != k {
                return Err(format!(
                    "restored state {k} of a rescale is subtask {}'s; they must come in the \
                     order of the old subtasks",
                    state.subtask
                ));
            }
        }
    } else if states.len() == 1 && old_parallelism == parallelism {
        if first.subtask != own {
            return Err(format!(
                "the restored state is subtask {}'s, not this subtask's",
                first.subtask
            ));
        }
    } else {
        return Err(format!(
            "{} restored states of a run at parallelism {old_parallelism}: a restore gets its \
             own state or, after a rescale, those of all old subtasks",
            states.len()
        ));
    }
    let mut named: Vec<Writer> = Vec::new();
    for state in states {
        named.push(Writer {
            subtask: state.subtask,
            next_seq: state.next_seq,
            pending: state.pending.iter().map(|p| p.seq).collect(),
            basis: Basis::Restored(checkpoint),
        });
        named.extend(state.retired.iter().map(|r| Writer {
            subtask: r.subtask,
            next_seq: r.next_seq,
            pending: Vec::new(),
            basis: Basis::Restored(checkpoint),
        }));
    }
    named.sort_by_key(|w| w.subtask);
    if let Some(pair) = named.windows(2).find(|w| w[0].subtask == w[1].subtask) {
        return Err(format!(
            "two restored states account for the part files of subtask {}",
            pair[0].subtask
        ));
    }
    let mut taken: Vec<Writer> = named
        .into_iter()
        .filter(|w| w.subtask.0 % parallelism.max(1) == own.0)
        .collect();
    if !taken.iter().any(|w| w.subtask == own) {
        taken.push(Writer {
            subtask: own,
            next_seq: 0,
            pending: Vec::new(),
            basis: Basis::Unaccounted(checkpoint),
        });
        taken.sort_by_key(|w| w.subtask);
    }
    Ok(taken)
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

/// The refusal of a start that would write committed records a second time: `found`
/// holds, for each index taken over that has them, its committed files from after the
/// point the start restores.
fn refuse_duplicates(dir: &Path, own: SubtaskIndex, found: &[(&Writer, Vec<u64>)]) -> TaskError {
    let mut held = Vec::new();
    let mut causes: Vec<&str> = Vec::new();
    let mut start = "starts from the beginning".to_owned();
    for (writer, seqs) in found {
        let subtask = writer.subtask;
        let name = |seq| PartName::new(subtask, seq, Stage::Committed).file_name();
        let files = match seqs.as_slice() {
            [one] => name(*one),
            [first, .., last] => {
                format!("{} files, {} to {}", seqs.len(), name(*first), name(*last))
            }
            [] => String::new(),
        };
        let whose = if subtask == own {
            "this subtask".to_owned()
        } else {
            format!("subtask {subtask}, which this one takes over,")
        };
        let (what, cause) = match writer.basis {
            Basis::Fresh => (
                format!("already holds committed output of {whose}"),
                "Remove them or choose another path to start afresh, resume with \
                 --from-checkpoint latest, or run with --allow-duplicates to keep them and \
                 write after them",
            ),
            Basis::Restored(checkpoint) => {
                start = format!("restores checkpoint {checkpoint}");
                (
                    format!("holds output of {whose} committed after that checkpoint"),
                    "Newer checkpoints that committed them are unusable (see the warnings \
                     above) or an older checkpoint was chosen. Remove those files to have them \
                     written again exactly once, or run with --allow-duplicates to keep them \
                     and accept the duplicates",
                )
            }
            Basis::Unaccounted(checkpoint) => {
                start = format!("restores checkpoint {checkpoint}");
                (
                    format!(
                        "holds committed output of {whose} that no state of that checkpoint \
                         accounts for"
                    ),
                    "The checkpoint is of a run at another parallelism, and neither it nor a \
                     run before it that carried the index forward wrote those files. Remove \
                     them, choose another path, or run with --allow-duplicates to keep them \
                     and write after them",
                )
            }
        };
        held.push(format!("{what} ({files})"));
        if !causes.contains(&cause) {
            causes.push(cause);
        }
    }
    let its = if held.len() == 1 { "its" } else { "their" };
    TaskError::failed(
        Fault::User,
        format!(
            "the file sink into {} (subtask {own}) {start}, but the directory {}: {its} \
             records would be written a second time. {}.",
            dir.display(),
            held.join(", and "),
            causes.join(". ")
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

/// What a restore does after committing the pending files of the indices it took over.
#[derive(Debug, PartialEq, Eq)]
struct Takeover {
    /// The hidden files of those indices (see [`plan_cleanup`]).
    delete: Vec<PartName>,
    /// The sequence number of this subtask's next in-progress file.
    next_seq: u64,
    /// The indices other than its own, which it never writes again, by index.
    retired: Vec<Retired>,
}

/// Plans the cleanup of every index in `writers` (its hidden files go, and its next
/// sequence number skips past its committed files) for subtask `own`.
fn plan_takeover(own: SubtaskIndex, writers: &[Writer], parts: &[PartName]) -> Takeover {
    let mut takeover = Takeover {
        delete: Vec::new(),
        next_seq: plan_cleanup(own, 0, parts).next_seq,
        retired: Vec::new(),
    };
    for writer in writers {
        let cleanup = plan_cleanup(writer.subtask, writer.next_seq, parts);
        takeover.delete.extend(cleanup.delete);
        if writer.subtask == own {
            takeover.next_seq = cleanup.next_seq;
        } else {
            takeover.retired.push(Retired {
                subtask: writer.subtask,
                next_seq: cleanup.next_seq,
            });
        }
    }
    takeover
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
    parallelism: u32,
    transactional: bool,
    existing: ExistingOutput,
    pacer: Pacer,
    /// The sequence number of the next in-progress file.
    next_seq: u64,
    /// The in-progress file, created with the first record after a snapshot.
    current: Option<InProgress>,
    /// Pending files not yet committed, oldest first.
    pending: Vec<Pending>,
    /// The indices taken over at a rescale, carried forward in every snapshot.
    retired: Vec<Retired>,
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
            parallelism: info.parallelism.max(1),
            transactional,
            existing,
            pacer: Pacer::new(rate),
            next_seq: 0,
            current: None,
            pending: Vec::new(),
            retired: Vec::new(),
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

    /// Restores from the checkpointed blobs: its own at the same parallelism, every old
    /// subtask's after a rescale; none is a fresh start. Recovers the part files of every
    /// index it takes over (see the module docs): refuses their output committed after
    /// the restored checkpoint, commits their pending files of that checkpoint, deletes
    /// their other hidden files (on a fresh start too: they are left by a run that never
    /// completed a checkpoint).
    pub fn restore(&mut self, states: &[Vec<u8>]) -> Result<(), TaskError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| external("create", &self.dir, &e))?;
        let refuse = |why: String| {
            TaskError::failed(
                Fault::Host,
                format!(
                    "the file sink into {} (subtask {}) cannot restore its state: {why}",
                    self.dir.display(),
                    self.subtask
                ),
            )
        };
        let decoded = states
            .iter()
            .map(|bytes| postcard::from_bytes::<SinkState>(bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refuse(format!("a restored state does not decode ({e})")))?;
        let writers = take_over(self.subtask, self.parallelism, &decoded).map_err(refuse)?;
        let parts = self.list_parts()?;
        let after: Vec<(&Writer, Vec<u64>)> = writers
            .iter()
            .map(|w| (w, committed_after(w.subtask, w.next_seq, &parts)))
            .filter(|(_, seqs)| !seqs.is_empty())
            .collect();
        if !after.is_empty() {
            if self.existing == ExistingOutput::Refuse {
                return Err(refuse_duplicates(&self.dir, self.subtask, &after));
            }
            tracing::warn!(
                "the file sink into {} (subtask {}) keeps {} files committed after the point it starts from, as --allow-duplicates asks: their records are written again",
                self.dir.display(),
                self.subtask,
                after.iter().map(|(_, seqs)| seqs.len()).sum::<usize>()
            );
        }
        let mut committed = false;
        for writer in &writers {
            for &seq in &writer.pending {
                commit(&self.dir, writer.subtask, seq)?;
                committed = true;
            }
        }
        let takeover = plan_takeover(self.subtask, &writers, &self.list_parts()?);
        for part in &takeover.delete {
            let path = self.dir.join(part.file_name());
            std::fs::remove_file(&path).map_err(|e| external("delete", &path, &e))?;
        }
        if committed || !takeover.delete.is_empty() {
            sync_dir(&self.dir)?;
        }
        self.next_seq = takeover.next_seq;
        self.retired = takeover.retired;
        self.current = None;
        self.pending = Vec::new();
        Ok(())
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
    /// Restores from the one restored state, or starts afresh: see
    /// [`FileSink::restore`].
    fn open(&mut self, restored: Option<RestoredParts>) -> Result<(), TaskError> {
        self.restore(restored.map(|r| r.operator).as_deref().unwrap_or_default())
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
            subtask: self.subtask,
            parallelism: self.parallelism,
            next_seq: self.next_seq,
            pending: self.pending.clone(),
            retired: self.retired.clone(),
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
        restored.open(Some(RestoredParts {
            operator: vec![state],
            ..RestoredParts::default()
        }))?;
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
        restored.open(Some(RestoredParts {
            operator: vec![state],
            ..RestoredParts::default()
        }))?;
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
        restored.open(Some(RestoredParts {
            operator: vec![state],
            ..RestoredParts::default()
        }))?;
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
        restored.open(Some(RestoredParts {
            operator: vec![state],
            ..RestoredParts::default()
        }))?;
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
        restored.open(Some(RestoredParts {
            operator: vec![state],
            ..RestoredParts::default()
        }))?;
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
        sink(dir.path(), 0).open(Some(RestoredParts {
            operator: vec![older],
            ..RestoredParts::default()
        }))?;
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
        sink(dir.path(), 0).open(Some(RestoredParts {
            operator: vec![latest],
            ..RestoredParts::default()
        }))?;
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
        let Err(TaskError::Failed { fault, message }) =
            sink(dir.path(), 0).open(Some(RestoredParts {
                operator: vec![state],
                ..RestoredParts::default()
            }))
        else {
            return Err("restored without its pending file".into());
        };
        assert_eq!(fault, Fault::External);
        assert!(message.contains(".part-0-0.pending"), "{message}");
        Ok(())
    }

    fn sink_of(dir: &Path, subtask: u32, parallelism: u32) -> FileSink {
        let mut info = info(subtask);
        info.parallelism = parallelism;
        FileSink::new(dir, &info, 0, true, ExistingOutput::Refuse)
    }

    fn state(subtask: u32, parallelism: u32, next_seq: u64, pending: &[u64]) -> SinkState {
        SinkState {
            checkpoint: 5,
            subtask: SubtaskIndex(subtask),
            parallelism,
            next_seq,
            pending: pending
                .iter()
                .map(|&seq| Pending {
                    checkpoint: CheckpointId(5),
                    seq,
                })
                .collect(),
            retired: Vec::new(),
        }
    }

    fn retired(subtask: u32, next_seq: u64) -> Retired {
        Retired {
            subtask: SubtaskIndex(subtask),
            next_seq,
        }
    }

    /// The indices subtask `own` of `parallelism` takes over, with where each stands.
    fn taken(
        own: u32,
        parallelism: u32,
        states: &[SinkState],
    ) -> Result<Vec<(u32, u64, Basis)>, String> {
        Ok(take_over(SubtaskIndex(own), parallelism, states)?
            .into_iter()
            .map(|w| (w.subtask.0, w.next_seq, w.basis))
            .collect())
    }

    #[test]
    fn a_fresh_start_takes_over_only_its_own_index() -> Result<(), String> {
        assert_eq!(taken(2, 4, &[])?, vec![(2, 0, Basis::Fresh)]);
        Ok(())
    }

    #[test]
    fn at_an_unchanged_parallelism_a_subtask_takes_its_state_and_its_retired_indices()
    -> Result<(), String> {
        let mut own = state(1, 2, 7, &[6]);
        own.retired = vec![retired(3, 4), retired(5, 9)];
        let writers = take_over(SubtaskIndex(1), 2, &[own])?;
        assert_eq!(writers[0].pending, vec![6]);
        assert_eq!(
            taken(1, 2, &[state(1, 2, 7, &[6])])?,
            vec![(1, 7, Basis::Restored(5))]
        );
        let subtasks: Vec<u32> = writers.iter().map(|w| w.subtask.0).collect();
        assert_eq!(subtasks, vec![1, 3, 5]);
        Ok(())
    }

    #[test]
    fn from_two_to_one_the_subtask_takes_over_both() -> Result<(), String> {
        let states = [state(0, 2, 3, &[2]), state(1, 2, 8, &[6, 7])];
        let writers = take_over(SubtaskIndex(0), 1, &states)?;
        assert_eq!(writers.len(), 2);
        assert_eq!(
            (writers[1].subtask, writers[1].next_seq),
            (SubtaskIndex(1), 8)
        );
        assert_eq!(writers[1].pending, vec![6, 7]);
        Ok(())
    }

    #[test]
    fn from_two_to_three_or_four_the_new_subtasks_start_their_own_index_from_zero()
    -> Result<(), String> {
        let states = [state(0, 2, 3, &[]), state(1, 2, 8, &[])];
        for parallelism in [3, 4] {
            assert_eq!(
                taken(0, parallelism, &states)?,
                vec![(0, 3, Basis::Restored(5))]
            );
            assert_eq!(
                taken(1, parallelism, &states)?,
                vec![(1, 8, Basis::Restored(5))]
            );
            for own in 2..parallelism {
                assert_eq!(
                    taken(own, parallelism, &states)?,
                    vec![(own, 0, Basis::Unaccounted(5))]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_retired_index_is_taken_over_by_the_subtask_that_has_it_again() -> Result<(), String> {
        // 4 → 2: subtask 0 took over 2, subtask 1 took over 3.
        let mut zero = state(0, 2, 3, &[]);
        zero.retired = vec![retired(2, 4)];
        let mut one = state(1, 2, 5, &[]);
        one.retired = vec![retired(3, 1)];
        let states = [zero, one];
        // 2 → 4: each index goes back to its own subtask.
        assert_eq!(taken(2, 4, &states)?, vec![(2, 4, Basis::Restored(5))]);
        assert_eq!(taken(3, 4, &states)?, vec![(3, 1, Basis::Restored(5))]);
        // 2 → 3: index 3 goes to subtask 0 (3 mod 3), index 2 stays retired with 2.
        assert_eq!(
            taken(0, 3, &states)?,
            vec![(0, 3, Basis::Restored(5)), (3, 1, Basis::Restored(5))]
        );
        assert_eq!(taken(2, 3, &states)?, vec![(2, 4, Basis::Restored(5))]);
        Ok(())
    }

    #[test]
    fn every_old_index_and_pending_file_is_taken_over_by_exactly_one_new_subtask()
    -> Result<(), String> {
        for old in 1..9u32 {
            // Old subtask j has pending file j·10 and, when j is even, the retired index
            // j + old + 20 (an index from an earlier, larger run).
            let states: Vec<SinkState> = (0..old)
                .map(|j| {
                    let mut s = state(j, old, u64::from(j) * 10 + 1, &[u64::from(j) * 10]);
                    if j % 2 == 0 {
                        s.retired = vec![retired(j + old + 20, 3)];
                    }
                    s
                })
                .collect();
            let mut expected: Vec<u32> = (0..old)
                .chain((0..old).filter(|j| j % 2 == 0).map(|j| j + old + 20))
                .collect();
            expected.sort_unstable();
            for new in 1..12u32 {
                let mut indices = Vec::new();
                let mut pending = Vec::new();
                for own in 0..new {
                    for w in take_over(SubtaskIndex(own), new, &states)? {
                        assert_eq!(w.subtask.0 % new, own);
                        if w.basis != Basis::Unaccounted(5) {
                            indices.push(w.subtask.0);
                        }
                        pending.extend(w.pending);
                    }
                }
                indices.sort_unstable();
                pending.sort_unstable();
                assert_eq!(indices, expected, "{old} → {new}");
                let all: Vec<u64> = (0..old).map(|j| u64::from(j) * 10).collect();
                assert_eq!(pending, all, "{old} → {new}");
            }
        }
        Ok(())
    }

    #[test]
    fn states_that_are_not_one_restore_are_refused() {
        let cases = [
            (
                vec![state(1, 2, 0, &[])],
                "is subtask 1's, not this subtask's",
            ),
            (
                vec![state(1, 2, 0, &[]), state(0, 2, 0, &[])],
                "restored state 0 of a rescale is subtask 1's",
            ),
            (
                vec![state(0, 3, 0, &[]), state(1, 3, 0, &[])],
                "2 restored states of a run at parallelism 3",
            ),
            (
                vec![
                    state(0, 2, 0, &[]),
                    SinkState {
                        checkpoint: 6,
                        ..state(1, 2, 0, &[])
                    },
                ],
                "different runs",
            ),
            (
                vec![
                    state(0, 2, 0, &[]),
                    SinkState {
                        retired: vec![retired(0, 1)],
                        ..state(1, 2, 0, &[])
                    },
                ],
                "two restored states account for the part files of subtask 0",
            ),
        ];
        for (states, expected) in cases {
            match take_over(SubtaskIndex(0), 2, &states) {
                Err(message) => assert!(message.contains(expected), "{message}"),
                Ok(w) => panic!("took over {w:?}, expected a refusal: {expected}"),
            }
        }
    }

    #[test]
    fn a_takeover_deletes_the_hidden_files_of_every_index_taken_and_retires_the_others()
    -> Result<(), String> {
        let writers = take_over(
            SubtaskIndex(0),
            2,
            &[
                state(0, 4, 2, &[]),
                state(1, 4, 0, &[]),
                state(2, 4, 1, &[]),
                state(3, 4, 0, &[]),
            ],
        )?;
        let parts = [
            part(0, 1, Stage::Committed),
            part(0, 2, Stage::InProgress),
            part(1, 0, Stage::Pending),
            part(2, 0, Stage::Committed),
            part(2, 3, Stage::Committed),
            part(2, 4, Stage::Pending),
            part(4, 0, Stage::InProgress),
        ];
        let takeover = plan_takeover(SubtaskIndex(0), &writers, &parts);
        assert_eq!(
            takeover.delete,
            vec![part(0, 2, Stage::InProgress), part(2, 4, Stage::Pending)]
        );
        assert_eq!(takeover.next_seq, 2);
        // Index 2 skips past its committed files (kept by --allow-duplicates).
        assert_eq!(takeover.retired, vec![retired(2, 4)]);
        Ok(())
    }

    /// The state a snapshot wrote, decoded.
    fn decoded(bytes: &[u8]) -> Result<SinkState, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// `parallelism` sinks of a run: each writes a record and completes checkpoint 1,
    /// writes another and snapshots checkpoint 2 (not notified), then writes a third
    /// (in progress); returns the states of checkpoint 2.
    fn run_and_crash(dir: &Path, parallelism: u32) -> Result<Vec<Vec<u8>>, TaskError> {
        let mut states = Vec::new();
        for j in 0..parallelism {
            let mut s = sink_of(dir, j, parallelism);
            s.open(None)?;
            write(&mut s, &[&format!("{j}-a")])?;
            snapshot(&mut s, 1)?;
            complete(&mut s, 1)?;
            write(&mut s, &[&format!("{j}-b")])?;
            states.push(snapshot(&mut s, 2)?);
            write(&mut s, &[&format!("{j}-lost")])?;
        }
        Ok(states)
    }

    #[test]
    fn from_two_to_one_the_pending_files_of_both_are_committed_and_the_other_is_retired()
    -> TestResult {
        let dir = tempfile::tempdir()?;
        let states = run_and_crash(dir.path(), 2)?;
        let mut s = sink_of(dir.path(), 0, 1);
        s.restore(&states)?;
        assert_eq!(
            names(dir.path())?,
            vec!["part-0-0", "part-0-1", "part-1-0", "part-1-1"]
        );
        assert_eq!(output(dir.path(), 1)?, "1-a\n1-b\n");
        write(&mut s, &["new"])?;
        let state = decoded(&snapshot(&mut s, 3)?)?;
        complete(&mut s, 3)?;
        assert_eq!(output(dir.path(), 0)?, "0-a\n0-b\nnew\n");
        assert_eq!(state.retired, vec![retired(1, 2)]);
        assert_eq!(state.next_seq, 3);
        Ok(())
    }

    #[test]
    fn from_two_to_three_or_four_each_pending_file_is_committed_by_one_new_subtask() -> TestResult {
        for parallelism in [3, 4] {
            let dir = tempfile::tempdir()?;
            let states = run_and_crash(dir.path(), 2)?;
            let mut sinks = Vec::new();
            for i in 0..parallelism {
                let mut s = sink_of(dir.path(), i, parallelism);
                s.restore(&states)?;
                sinks.push(s);
            }
            assert_eq!(
                names(dir.path())?,
                vec!["part-0-0", "part-0-1", "part-1-0", "part-1-1"]
            );
            for (i, s) in (0..).zip(sinks.iter_mut()) {
                write(s, &[&format!("{i}-new")])?;
                let state = decoded(&snapshot(s, 3)?)?;
                assert!(state.retired.is_empty());
                complete(s, 3)?;
            }
            assert_eq!(output(dir.path(), 1)?, "1-a\n1-b\n1-new\n");
            assert_eq!(output(dir.path(), 2)?, "2-new\n");
            assert_eq!(names(dir.path())?.len(), 4 + usize::try_from(parallelism)?);
        }
        Ok(())
    }

    /// Runs `parallelism` sinks restored from `states`; each writes one record and
    /// completes `checkpoint`; returns their states.
    fn rescaled_run(
        dir: &Path,
        parallelism: u32,
        states: &[Vec<u8>],
        checkpoint: u64,
    ) -> Result<Vec<Vec<u8>>, TaskError> {
        let mut next = Vec::new();
        for i in 0..parallelism {
            let mut s = sink_of(dir, i, parallelism);
            s.restore(states)?;
            write(&mut s, &[&format!("{i}@{checkpoint}")])?;
            next.push(snapshot(&mut s, checkpoint)?);
            complete(&mut s, checkpoint)?;
        }
        Ok(next)
    }

    #[test]
    fn from_four_to_two_and_back_the_retired_indices_output_is_not_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let four = rescaled_run(dir.path(), 4, &[], 1)?;
        let two = rescaled_run(dir.path(), 2, &four, 2)?;
        assert_eq!(decoded(&two[0])?.retired, vec![retired(2, 1)]);
        assert_eq!(decoded(&two[1])?.retired, vec![retired(3, 1)]);
        rescaled_run(dir.path(), 4, &two, 3)?;
        assert_eq!(output(dir.path(), 0)?, "0@1\n0@2\n0@3\n");
        // Index 2 was not written in the run at 2, and goes on after its last file.
        assert_eq!(output(dir.path(), 2)?, "2@1\n2@3\n");
        assert_eq!(
            names(dir.path())?
                .iter()
                .filter(|n| n.starts_with("part-2-"))
                .count(),
            2
        );
        Ok(())
    }

    #[test]
    fn without_the_retired_indices_their_output_would_be_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let four = rescaled_run(dir.path(), 4, &[], 1)?;
        let two = rescaled_run(dir.path(), 2, &four, 2)?;
        let forgetful: Vec<Vec<u8>> = two
            .iter()
            .map(|bytes| {
                let mut state = decoded(bytes)?;
                state.retired.clear();
                postcard::to_allocvec(&state)
            })
            .collect::<Result<_, _>>()?;
        let message = refusal(sink_of(dir.path(), 2, 4).restore(&forgetful))?;
        assert!(
            message.contains("(subtask 2) restores checkpoint 2"),
            "{message}"
        );
        assert!(
            message.contains("no state of that checkpoint accounts for"),
            "{message}"
        );
        assert!(message.contains("(part-2-0)"), "{message}");
        Ok(())
    }

    #[test]
    fn output_committed_after_the_restore_point_is_refused_after_a_rescale() -> TestResult {
        let dir = tempfile::tempdir()?;
        let first = rescaled_run(dir.path(), 2, &[], 1)?;
        // A later checkpoint commits more of subtask 1's output.
        let mut one = sink_of(dir.path(), 1, 2);
        one.restore(std::slice::from_ref(&first[1]))?;
        write(&mut one, &["later"])?;
        snapshot(&mut one, 2)?;
        complete(&mut one, 2)?;
        drop(one);
        let message = refusal(sink_of(dir.path(), 0, 1).restore(&first))?;
        assert!(
            message.contains("(subtask 0) restores checkpoint 1"),
            "{message}"
        );
        assert!(
            message.contains("subtask 1, which this one takes over, committed after that"),
            "{message}"
        );
        assert!(message.contains("(part-1-1)"), "{message}");
        assert!(message.contains("--allow-duplicates"), "{message}");
        // Nothing was touched, and without the later file the restore goes on.
        assert_eq!(names(dir.path())?, vec!["part-0-0", "part-1-0", "part-1-1"]);
        std::fs::remove_file(dir.path().join("part-1-1"))?;
        sink_of(dir.path(), 0, 1).restore(&first)?;
        Ok(())
    }

    #[test]
    fn a_restore_at_an_unchanged_parallelism_carries_the_retired_indices_forward() -> TestResult {
        let dir = tempfile::tempdir()?;
        let four = rescaled_run(dir.path(), 4, &[], 1)?;
        let two = rescaled_run(dir.path(), 2, &four, 2)?;
        let mut s = sink_of(dir.path(), 0, 2);
        s.restore(std::slice::from_ref(&two[0]))?;
        let state = decoded(&snapshot(&mut s, 3)?)?;
        assert_eq!(state.retired, vec![retired(2, 1)]);
        assert_eq!((state.subtask, state.parallelism), (SubtaskIndex(0), 2));
        Ok(())
    }

    #[test]
    fn a_corrupt_state_is_refused_naming_the_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let Err(TaskError::Failed { fault, message }) =
            sink(dir.path(), 0).restore(&[vec![0xff; 3]])
        else {
            return Err("restored a corrupt state".into());
        };
        assert_eq!(fault, Fault::Host);
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("does not decode"), "{message}");
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
