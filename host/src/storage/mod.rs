//! Checkpoint storage: where the bytes of a checkpoint go, and how they come back intact.
//!
//! This part owns the layout of a job's checkpoint directory and of a savepoint
//! directory, the atomic commit of a checkpoint (its `_metadata`, written last), and the
//! checksums that tell a complete checkpoint from a torn or corrupt one. It stores
//! opaque blobs: it may not know state formats or what the metadata says, nor decide
//! which checkpoint is complete in the protocol's sense, what retention keeps or what a
//! restore uses. Those are the coordinator's plain functions over
//! [`CheckpointListing`]s and [`FileHandle`]s. It never runs on a subtask's thread:
//! every method is async and is called from the tokio I/O runtime; blocking work goes to
//! the blocking pool.
//!
//! # Layout
//!
//! - `mod.rs`: the [`CheckpointStorage`] trait and its guarantees, [`FileHandle`],
//!   [`CheckpointListing`], [`open`], which picks the storage for a [`StorageUrl`], and
//!   [`open_savepoint`] and [`savepoint_at`], which do so for a savepoint.
//! - `error.rs`: [`StorageError`], whose fault and whether a retry helps.
//! - `layout.rs`: the names `chk-<n>`, `shared`, `_metadata`, `_finished`, `_lock`, and
//!   which names are valid; the two layouts, a job's checkpoints and a savepoint.
//! - `lock.rs`: [`JobLock`], the one-writer-per-job lock, and [`LockHolder`], who holds it.
//! - `checksum.rs`: CRC32C, and the frame that makes a torn `_metadata` detectable.
//! - `fs.rs`: [`FsStorage`], a local directory through cap-std.
//! - `memory.rs`: [`MemoryStorage`], the in-memory double with fault injection.
//! - `s3.rs`: [`S3Storage`], an S3 bucket (or an S3-compatible store) through aws-sdk-s3.
//! - `tests.rs`: the contract tests, run against every storage; `s3_tests.rs` runs them
//!   and the S3-only tests against a real S3-compatible server on loopback.
//!
//! # On disk
//!
//! As Flink's, below the configured directory:
//!
//! ```text
//! <base>/<job-id>/chk-<n>/<name>      data files of checkpoint n
//! <base>/<job-id>/chk-<n>/_metadata   the commit point of checkpoint n, written last
//! <base>/<job-id>/shared/<name>       files referenced by several checkpoints (incremental)
//! <base>/<job-id>/taskowned/          as in Flink; nothing writes there yet
//! <base>/<job-id>/_finished           the record of a job that finished (a JobRecord)
//! <base>/<job-id>/_checkpoint-stats   the job's checkpoint statistics (a JobRecord)
//! <base>/<job-id>/_lock               held by the one process running the job
//! ```
//!
//! A savepoint is one snapshot in a directory of its own, self-contained and
//! relocatable, as Flink's:
//!
//! ```text
//! <base>/savepoint-<job>-<n>/<name>      its data files; handle path `<name>`
//! <base>/savepoint-<job>-<n>/_metadata   its commit point, written last
//! ```
//!
//! Nothing else: no `chk-<n>/`, no `shared/`, no records, no lock. Every handle in its
//! `_metadata` is a bare file name relative to the savepoint directory, so the directory
//! can be moved, or copied to another disk, bucket or prefix, and opened where it lands
//! ([`savepoint_at`]). Writes, commit and reads are checksummed as a checkpoint's. On S3
//! the keys are the same below `s3://<bucket>/<prefix>/savepoint-<job>-<n>/`.

mod checksum;
mod error;
mod fs;
mod layout;
mod lock;
mod memory;
mod s3;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::job::{S3Settings, StorageUrl};
use crate::runtime::ids::CheckpointId;

pub use checksum::checksum;
pub use error::StorageError;
pub use fs::FsStorage;
pub use lock::{JobLock, LockHolder, LostSignal};
pub use memory::MemoryStorage;
pub use s3::{S3Options, S3Storage};

/// A stored data file: where it is and what it must read back as. Handles go into a
/// checkpoint's `_metadata`, so a restore can verify every file it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHandle {
    /// The path relative to the job directory, with `/`: `chk-7/count-2-state` or
    /// `shared/abc.sst`; in a savepoint, the bare file name relative to the savepoint
    /// directory: `count-2-state`.
    pub path: String,
    /// The length in bytes.
    pub size: u64,
    /// The CRC32C of the content (see [`checksum()`]).
    pub checksum: u32,
}

/// One checkpoint directory, as [`CheckpointStorage::list`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointListing {
    /// The checkpoint, from the directory's name `chk-<n>`; 0 for a savepoint, whose
    /// directory holds one snapshot and does not say which checkpoint it was.
    pub checkpoint: CheckpointId,
    /// Whether its `_metadata` exists. Without it the checkpoint was never committed
    /// (or is being deleted) and must not be restored; with it, it is committed, which
    /// [`read_metadata`](CheckpointStorage::read_metadata) still verifies.
    pub has_metadata: bool,
}

/// A small file about the job as a whole, kept beside its checkpoints and outliving
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobRecord {
    /// `_finished`: the job's input ended and everything was committed. Written before
    /// retention deletes the checkpoints, so that a resume can tell a finished job from
    /// one that never ran.
    Finished,
    /// `_checkpoint-stats`: the job's checkpoint statistics (counts, recent history,
    /// failure reasons), rewritten after every checkpoint, so that a resumed job and
    /// `weir checkpoints list` show what happened before.
    Statistics,
}

impl JobRecord {
    /// The record's file name in the job directory.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Finished => layout::FINISHED,
            Self::Statistics => layout::STATISTICS,
        }
    }
}

/// Where a job's checkpoints are stored: opaque blobs in the layout of the module docs.
///
/// # Guarantees
///
/// Every implementation keeps these, and the contract tests in `tests.rs` check them:
///
/// - **Atomic create.** A file is absent or complete: a reader never sees a partial file
///   under its name, whatever crash happens during a write.
/// - **Read after write.** Once `write`, `write_shared` or `commit` returned `Ok`, every
///   later call (from this process or a restarted one) sees the file.
/// - **One commit.** [`commit`](Self::commit) creates `_metadata` only if it does not
///   exist: of two commits of a checkpoint, exactly one succeeds; the other gets
///   [`StorageError::AlreadyCommitted`]. A committed checkpoint never changes: writing
///   a data file into it is refused the same way.
/// - **Durable commit.** When `commit` returns `Ok`, the metadata, every file written
///   for that checkpoint and every shared file written before survive a crash or a
///   power loss.
/// - **Verified reads.** `read` checks size and CRC32C against the handle,
///   `read_metadata` checks the frame written by `commit`; a mismatch is
///   [`StorageError::Corrupt`] naming the file.
/// - **Safe deletes.** Deleting a checkpoint removes its `_metadata` first, so a
///   half-deleted checkpoint is never restorable. Deleting what is not there succeeds.
/// - **Confinement.** Names are single path components (no `/`, `..` or leading `.`),
///   and handle paths are checked on read: nothing outside the job directory is reached.
/// - **Retries.** Retrying a failed `write`, `write_shared` or delete is safe. After a
///   transient failure of `commit`, an earlier attempt may have committed after all: a
///   retry then gets `AlreadyCommitted`, and `read_metadata` tells whether it is ours.
///
/// Call [`check`](Self::check) once at job start: it creates the job directory, and
/// until then every other call fails with [`StorageError::NotFound`].
///
/// # In a savepoint
///
/// Opened by [`open_savepoint`] or [`savepoint_at`], a storage's root is one savepoint
/// directory (see the module docs), and the guarantees above hold for its one snapshot:
///
/// - `write(_, name, _)` stores `<root>/<name>`, handle path `name`; `commit(_, _)`
///   creates `<root>/_metadata`, once; `read_metadata(_)` reads it back verified. The
///   checkpoint id is ignored: a savepoint directory holds exactly one snapshot.
/// - `read` accepts only a bare file name as the handle's path.
/// - `list` shows nothing while the savepoint holds no file, else one listing, as
///   checkpoint 0, with whether `_metadata` exists.
/// - `delete_checkpoint(_)` disposes of the savepoint: `_metadata` first, then every
///   other file, then the directory itself (the S3 marker). Afterwards the savepoint
///   is gone, and calls fail with `NotFound` until a `check`.
/// - `check` creates the savepoint directory, and nothing in it.
/// - `describe` and `checkpoint_url` are the savepoint directory's URL.
/// - There are no shared files, records or lock: `write_shared`, `write_record` and
///   `lock` are refused with [`StorageError::NotInSavepoint`]; `list_shared` is empty
///   and `read_record` is `None` (`NotFound` where the savepoint directory is not);
///   `delete_shared` and `delete_record` succeed removing nothing, wherever.
#[async_trait]
pub trait CheckpointStorage: Send + Sync + std::fmt::Debug {
    /// The job directory as a URL, for messages: `file:///var/lib/weir/checkpoints/<job>`.
    fn describe(&self) -> String;

    /// Where checkpoint `checkpoint` is, as a URL for the user.
    fn checkpoint_url(&self, checkpoint: CheckpointId) -> String {
        format!("{}/{}", self.describe(), layout::checkpoint_dir(checkpoint))
    }

    /// Creates the job directory (and `shared/`, `taskowned/`) if missing and proves it
    /// writable, so that a bad location fails the job at start, not at its first
    /// checkpoint. Repeatable.
    async fn check(&self) -> Result<(), StorageError>;

    /// Stores `bytes` as data file `name` of `checkpoint`, replacing a file of that name.
    /// Refused for a committed checkpoint.
    async fn write(
        &self,
        checkpoint: CheckpointId,
        name: &str,
        bytes: Bytes,
    ) -> Result<FileHandle, StorageError>;

    /// Stores `bytes` as `shared/<name>`, for files that several checkpoints reference.
    /// A shared name identifies its content: writing an existing name with the same
    /// content succeeds without rewriting, with different content fails with
    /// [`StorageError::Conflict`].
    async fn write_shared(&self, name: &str, bytes: Bytes) -> Result<FileHandle, StorageError>;

    /// The content of the file `handle` describes, verified against its size and
    /// checksum.
    async fn read(&self, handle: &FileHandle) -> Result<Bytes, StorageError>;

    /// Commits `checkpoint`: writes its `_metadata` atomically, framed with a checksum.
    /// This is the commit point; call it after every file of the checkpoint is written.
    async fn commit(&self, checkpoint: CheckpointId, metadata: Bytes) -> Result<(), StorageError>;

    /// The metadata `commit` stored for `checkpoint`, verified; `NotFound` if it was
    /// never committed.
    async fn read_metadata(&self, checkpoint: CheckpointId) -> Result<Bytes, StorageError>;

    /// Every checkpoint directory, committed or not, oldest first. Other entries
    /// (`shared`, leftover temporary files) are not listed.
    async fn list(&self) -> Result<Vec<CheckpointListing>, StorageError>;

    /// Removes `checkpoint`'s directory, `_metadata` first. Shared files stay: which are
    /// still referenced is the caller's decision.
    async fn delete_checkpoint(&self, checkpoint: CheckpointId) -> Result<(), StorageError>;

    /// Removes these files of `shared/`. Every name is validated before anything is
    /// removed.
    async fn delete_shared(&self, names: &[String]) -> Result<(), StorageError>;

    /// The names of every file in `shared/`, in no particular order (leftover temporary
    /// files are not listed).
    async fn list_shared(&self) -> Result<Vec<String>, StorageError>;

    /// Stores `record` atomically and durably, replacing an older one, framed with a
    /// checksum as `_metadata` is.
    async fn write_record(&self, record: JobRecord, bytes: Bytes) -> Result<(), StorageError>;

    /// The content of `record`, verified; `None` if there is none.
    async fn read_record(&self, record: JobRecord) -> Result<Option<Bytes>, StorageError>;

    /// Removes `record`; removing what is not there succeeds.
    async fn delete_record(&self, record: JobRecord) -> Result<(), StorageError>;

    /// Takes the job's lock for `holder`, so that one process at a time writes the job's
    /// checkpoints, or fails with [`StorageError::Locked`] naming the process that holds
    /// it. A lock left by a process that died is recognised as stale and taken over
    /// (file storage: at once, as the operating system releases it; S3: once its lease
    /// has not been renewed for its lease timeout).
    async fn lock(&self, holder: &LockHolder) -> Result<JobLock, StorageError>;
}

/// The storage for `url` and job `job_id`, not yet checked: call
/// [`CheckpointStorage::check`] at job start. `s3` says how to reach an `s3://` URL.
pub fn open(
    url: &StorageUrl,
    job_id: &str,
    s3: &S3Settings,
) -> Result<Arc<dyn CheckpointStorage>, StorageError> {
    match url {
        StorageUrl::File(base) => Ok(Arc::new(FsStorage::new(base.clone(), job_id)?)),
        StorageUrl::S3 { bucket, prefix } => Ok(Arc::new(S3Storage::new(
            bucket,
            prefix,
            job_id,
            s3_options(s3),
        )?)),
    }
}

/// The savepoint directory `name` under `url` (`savepoint-<job>-<n>`), not yet checked.
///
/// Call [`CheckpointStorage::check`] before writing a new savepoint; an existing one is
/// read without it. `s3` says how to reach an `s3://` URL. Fails if `name` is not one
/// valid directory name.
pub fn open_savepoint(
    url: &StorageUrl,
    name: &str,
    s3: &S3Settings,
) -> Result<Arc<dyn CheckpointStorage>, StorageError> {
    match url {
        StorageUrl::File(base) => Ok(Arc::new(FsStorage::savepoint(base.clone(), name)?)),
        StorageUrl::S3 { bucket, prefix } => Ok(Arc::new(S3Storage::savepoint(
            bucket,
            prefix,
            name,
            s3_options(s3),
        )?)),
    }
}

/// The savepoint at `location` (its directory or its `_metadata`), local or `s3://`.
///
/// `location` is a path (relative to the current directory), a `file://` URL or an
/// `s3://<bucket>/<prefix>/<savepoint>` URL, read as a checkpoint directory in a job file
/// is; the savepoint is wherever it was moved or copied to, whatever its directory is
/// called now. `s3` says how to reach an `s3://` URL. Nothing is read here: a location
/// where no savepoint is fails at the first read, with [`StorageError::NotFound`].
pub fn savepoint_at(
    location: &str,
    s3: &S3Settings,
) -> Result<Arc<dyn CheckpointStorage>, StorageError> {
    let invalid = |reason: String| StorageError::InvalidLocation {
        location: location.to_owned(),
        reason,
    };
    let cwd = std::env::current_dir().map_err(|e| {
        StorageError::io(location.to_owned(), "finding the current directory for", e)
    })?;
    let url = crate::job::storage_url(savepoint_directory(location), &cwd).map_err(invalid)?;
    let no_directory = || {
        invalid(
            "it names no savepoint directory. Write the savepoint's directory, e.g. \
             /var/lib/weir/savepoints/savepoint-word-count-3 or \
             s3://my-bucket/savepoints/savepoint-word-count-3, or its `_metadata`"
                .to_owned(),
        )
    };
    match url {
        StorageUrl::File(path) => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(no_directory());
            };
            let Some(name) = name.to_str() else {
                return Err(invalid(
                    "the savepoint directory's name is not valid UTF-8".to_owned(),
                ));
            };
            open_savepoint(&StorageUrl::File(parent.to_path_buf()), name, s3)
        }
        StorageUrl::S3 { bucket, prefix } => {
            let (prefix, name) = prefix.rsplit_once('/').unwrap_or(("", prefix.as_str()));
            if name.is_empty() {
                return Err(no_directory());
            }
            let parent = StorageUrl::S3 {
                bucket,
                prefix: prefix.to_owned(),
            };
            open_savepoint(&parent, name, s3)
        }
    }
}

/// The savepoint directory of `location`: without a trailing `/_metadata` or `/`.
fn savepoint_directory(location: &str) -> &str {
    let directory = match location
        .trim_end_matches('/')
        .strip_suffix(layout::METADATA)
    {
        Some("") => ".",
        Some(rest) if rest.ends_with('/') => rest,
        _ => location,
    };
    match directory.trim_end_matches('/') {
        "" if !directory.is_empty() => "/",
        trimmed => trimmed,
    }
}

/// The options that reach the store `s3` describes; the rest are [`S3Options`]'
/// defaults.
fn s3_options(s3: &S3Settings) -> S3Options {
    let defaults = S3Options::default();
    S3Options {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        force_path_style: s3.force_path_style,
        part_size: s3.part_size.unwrap_or(defaults.part_size),
        upload_concurrency: s3
            .upload_concurrency
            .map_or(defaults.upload_concurrency, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        lease_timeout: s3.lease_timeout.unwrap_or(defaults.lease_timeout),
        ..defaults
    }
}
